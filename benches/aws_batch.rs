//! One request over 500 instances against a local AWS-compatible server (moto).
//!
//! Run with `cargo bench --bench aws_batch` after `scripts/test` has installed
//! moto (or with `PASSPORT_MOTO_SERVER` pointing at a `moto_server`). Size:
//! `PASSPORT_BENCH_INSTANCES` (default 500).
//!
//! The server's own time is that of the least work it can be asked for: every
//! SendCommand (batches of 50) and one GetCommandInvocation per instance, made
//! back to back with the same concurrency the provisioner uses. The
//! provisioner's time is one `grant` of the whole request, from the first call
//! until every invocation has settled; what Passport adds is the difference.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_ssm::config::Credentials;
use futures::stream::{self, StreamExt};

use passport::adapters::aws::sdk::sdk_loader;
use passport::adapters::aws::{AwsProvisioner, AwsSettings, MemoryCommandStore};
use passport::app::ports::{GrantSpec, Provisioner};
use passport::domain::request::{InstanceInfo, Platform};
use passport::domain::time::Timestamp;
use passport::domain::values::{InstanceId, RequestId, Username};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkVm1fN7nG8kqzZ1d8dQkPZ5QF1sW7bqkUu1YpJt0dx";

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> anyhow::Result<(Moto, String)> {
    let binary = std::env::var("PASSPORT_MOTO_SERVER").unwrap_or_else(|_| {
        format!(
            "{}/.cache/passport/moto-venv/bin/moto_server",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(&binary)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!("cannot start {binary}: run scripts/test first, or set PASSPORT_MOTO_SERVER")
        })?;
    let moto = Moto(child);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "moto did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((moto, format!("http://127.0.0.1:{port}")))
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l[6..].trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

fn main() -> anyhow::Result<()> {
    let count: usize = std::env::var("PASSPORT_BENCH_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (_moto, url) = start_moto()?;
        let settings = AwsSettings {
            region: Some("eu-west-1".into()),
            endpoint_url: Some(url),
            // moto does not implement DescribeInstanceInformation.
            check_ssm_online: false,
            poll_initial: Duration::from_millis(20),
            poll_max: Duration::from_millis(200),
            ..AwsSettings::default()
        };
        let sdk = sdk_loader(&settings)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "bench"))
            .load()
            .await;
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        let ssm = aws_sdk_ssm::Client::new(&sdk);
        let mut ids = Vec::new();
        while ids.len() < count {
            let n = (count - ids.len()).min(100) as i32;
            let out = ec2
                .run_instances()
                .image_id("ami-1e749f67")
                .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                .min_count(n)
                .max_count(n)
                .send()
                .await?;
            for i in out.instances() {
                ids.push(InstanceId::parse(i.instance_id().unwrap_or_default()).map_err(|e| anyhow::anyhow!(e.0))?);
            }
        }
        let provisioner = AwsProvisioner::from_sdk_config(&sdk, &settings, Arc::new(MemoryCommandStore::new()))?;
        provisioner.install_documents().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        // As `serve` does: what is sent runs the versions this check verified.
        provisioner.check_documents().await?;

        // The server's own time for the least work.
        let started = Instant::now();
        let batches: Vec<Vec<String>> = ids.chunks(settings.batch_size).map(|c| c.iter().map(|i| i.to_string()).collect()).collect();
        let sent: Vec<anyhow::Result<(String, Vec<String>)>> = stream::iter(batches)
            .map(|batch| {
                let ssm = ssm.clone();
                async move {
                    let out = ssm
                        .send_command()
                        .document_name("Passport-RevokeLinux")
                        .set_instance_ids(Some(batch.clone()))
                        .parameters("Username", vec!["pp-bench-1".into()])
                        .parameters("RequestId", vec!["AR-1".into()])
                        .send()
                        .await?;
                    Ok((out.command().and_then(|c| c.command_id()).unwrap_or_default().to_owned(), batch))
                }
            })
            .buffer_unordered(settings.concurrency)
            .collect()
            .await;
        let mut polls = Vec::new();
        for s in sent {
            let (command, batch) = s?;
            for instance in batch {
                polls.push((command.clone(), instance));
            }
        }
        let polled: Vec<anyhow::Result<()>> = stream::iter(polls)
            .map(|(command, instance)| {
                let ssm = ssm.clone();
                async move {
                    ssm.get_command_invocation().command_id(command).instance_id(instance).send().await?;
                    Ok(())
                }
            })
            .buffer_unordered(settings.concurrency)
            .collect()
            .await;
        for p in polled {
            p?;
        }
        let server = started.elapsed();

        // One grant of the whole request through the provisioner.
        let request = RequestId::new(2).context("request id")?;
        let spec = GrantSpec {
            request,
            username: Username::for_request("bench", request),
            instances: ids.iter().map(|i| InstanceInfo::assumed(i.clone(), Platform::Linux)).collect(),
            expires_at: Timestamp::from_millis(
                (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64) + 3_600_000,
            ),
            sudo: false,
            ssh_public_key: Some(KEY.into()),
            trusted_ca_keys: Vec::new(),
            port_forwarding: false,
        };
        let started = Instant::now();
        let outcomes = provisioner.grant(&spec).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let bot = started.elapsed();
        let ok = outcomes.iter().filter(|o| o.ok).count();
        println!(
            "{count} instances: {} SendCommand batches; server's own time {:.0} ms; provisioner grant {:.0} ms ({ok} of {} settled ok); Passport adds {:.0} ms; peak RSS {}",
            ids.len().div_ceil(settings.batch_size),
            server.as_secs_f64() * 1000.0,
            bot.as_secs_f64() * 1000.0,
            outcomes.len(),
            (bot.as_secs_f64() - server.as_secs_f64()) * 1000.0,
            peak_rss()
        );
        Ok(())
    })
}
