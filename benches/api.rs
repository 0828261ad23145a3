//! How fast the API hands a signed-in terminal what `passport ssh` needs: a
//! certificate and Session Manager credentials for an active request, open
//! loop.
//!
//! Run with `cargo bench --bench api` (release build). Pairs of calls
//! (`POST /api/v1/requests/AR-1/certificate`, then `…/credentials`) start at a
//! fixed rate whatever the answers, over real HTTP, with a real bearer token;
//! latency runs from the moment a pair starts to its second answer. The
//! application is the real one (`startup::slack_app_with_sessions`, a fresh
//! SQLite file, an ed25519 SSH CA, the dry-run provisioner) with a stand-in
//! for Slack's Web API and a stub Session Manager broker that answers at once
//! (the figure is Passport's own cost, not AWS's). Each certificate and each
//! credential is committed to the Logbook before it is answered.
//!
//! Settings: `PASSPORT_BENCH_RATE` (pairs per second, default 200),
//! `PASSPORT_BENCH_SECS` (default 10, after 2 unmeasured seconds).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::routing::any;
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use passport::adapters::clock::SystemClock;
use passport::adapters::slack::SlackConfig;
use passport::adapters::ssh_ca::{CaKeyType, CertificateAuthority, SshCaConfig};
use passport::app::engine::Actor;
use passport::app::ports::{ProvisionError, SessionBroker, SessionCredentials};
use passport::app::signin::Polled;
use passport::config::{Config, DryRunInstance, Secret};
use passport::domain::session::SessionScope;
use passport::domain::time::{Span, Timestamp};
use passport::domain::values::{InstanceId, Person, UserId, Username};
use passport::startup::{self, ChatOptions};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USER: &str = "U0BENCH";
const WEB: &str = "i-0123456789abcdef0";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

struct StubBroker;

#[async_trait]
impl SessionBroker for StubBroker {
    async fn credentials(
        &self,
        scope: &SessionScope,
        now: Timestamp,
    ) -> Result<SessionCredentials, ProvisionError> {
        Ok(SessionCredentials {
            access_key_id: "ASIABENCHBENCHBENCH".into(),
            secret_access_key: "bench-secret".to_owned().into(),
            session_token: "bench-token".to_owned().into(),
            expiration: now.plus(Span::from_minutes(15)).min(scope.not_after),
            region: "eu-west-1".into(),
        })
    }

    async fn end_sessions(
        &self,
        _username: &Username,
        _instances: &[InstanceId],
    ) -> Result<Vec<String>, ProvisionError> {
        Ok(vec![])
    }
}

async fn stand_in_for_slack() -> String {
    let router = Router::new().route(
        "/api/{method}",
        any(|| async {
            Json(json!({
                "ok": true,
                "user": { "id": USER, "name": "bench" },
                "users": [],
                "channel": { "id": "D0BENCH" },
                "ts": "1700000000.000001",
                "message": { "ts": "1700000000.000001", "text": "" },
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let rate: u64 = env_or("PASSPORT_BENCH_RATE", "200").parse().unwrap();
    let secs: u64 = env_or("PASSPORT_BENCH_SECS", "10").parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(rate, secs));
}

async fn run(rate: u64, secs: u64) {
    startup::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca_key = dir.path().join("ca_key");
    CertificateAuthority::generate(CaKeyType::Ed25519)
        .unwrap()
        .save_new(&ca_key)
        .unwrap();
    let mut c = Config::default();
    c.store.path = Some(dir.path().join("passport.db"));
    c.groups = [("approvers".to_owned(), vec!["U0LEAD".to_owned()])].into();
    c.policy.rules = vec![];
    c.dry_run.instances = vec![DryRunInstance {
        id: WEB.into(),
        name: Some("web-1".into()),
        platform: "linux".into(),
        state: "running".into(),
        tags: Default::default(),
        private_ips: vec!["10.0.1.15".into()],
    }];
    c.jobs.reconcile = "off".into();
    c.jobs.digest = "off".into();
    c.jobs.checkpoint = "off".into();
    c.provisioner = Some(passport::config::ProvisionerChoice::DryRun);
    c.ssh_ca = Some(SshCaConfig {
        key_path: Some(ca_key),
        ..SshCaConfig::default()
    });
    c.slack = Some(SlackConfig {
        signing_secret: Some(Secret::from("bench-signing-secret")),
        bot_token: Some(Secret::from("xoxb-bench")),
        approvals_channel: "C0APPROVALS".into(),
        audit_channel: "C0AUDIT".into(),
        api_url: stand_in_for_slack().await,
        channel_pace: "0".into(),
        // Named, so the stand-in need not answer auth.test.
        team_id: "T0BENCH".into(),
        app_id: "A0BENCH".into(),
        ..SlackConfig::default()
    });
    let settings = c.validate().unwrap();
    let slack = settings.slack.clone().unwrap();
    let built = startup::slack_app_with_sessions(
        &settings,
        &slack,
        ChatOptions {
            clock: Arc::new(SystemClock),
            provisioner: startup::logged_dry_run(&settings),
            ack_deadline: Duration::from_millis(2500),
            dry_run_label: false,
            probes: Vec::new(),
        },
        Some(Arc::new(StubBroker)),
    )
    .await
    .unwrap();
    let app = built.app;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = built.router;
    tokio::spawn(async move {
        passport::http::serve(listener, router, std::future::pending())
            .await
            .unwrap()
    });

    // An active request of the bench user, and a token for them.
    let person = |id: &str, handle: &str| Actor {
        person: Person {
            id: UserId::parse(id).unwrap(),
            handle: handle.into(),
        },
        surface: "slack".into(),
    };
    let (dev, lead) = (person(USER, "bench"), person("U0LEAD", "lead"));
    let reply = app
        .engine
        .handle_line(&dev, &format!("request {WEB} 12h ticket#1 bench"), None)
        .await;
    assert!(reply.ok, "{}", reply.text);
    let reply = app.engine.handle_line(&lead, "approve AR-1", None).await;
    assert!(reply.ok, "{}", reply.text);
    app.scheduler.settle().await.unwrap();
    let started = app
        .engine
        .start_login("bench", "passport/bench", "127.0.0.1")
        .await
        .unwrap();
    for step in ["", " confirm"] {
        let r = app
            .engine
            .handle_line(&dev, &format!("login {}{step}", started.code), None)
            .await;
        assert!(r.ok, "{}", r.text);
    }
    let Polled::Confirmed { token, .. } = app
        .engine
        .poll_login(&started.id.to_string(), started.secret.expose())
        .await
        .unwrap()
    else {
        panic!("the sign-in was not confirmed")
    };
    let token = token.expose().to_owned();
    let key = CertificateAuthority::generate(CaKeyType::Ed25519)
        .unwrap()
        .public_key_line()
        .to_owned();

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let call = {
        let (client, base, token, key) = (client.clone(), base.clone(), token.clone(), key.clone());
        move || {
            let (client, base, token, key) =
                (client.clone(), base.clone(), token.clone(), key.clone());
            async move {
                let t0 = Instant::now();
                let mut ok = true;
                let mut each = [Duration::ZERO; 2];
                for (i, (path, body)) in [
                    ("certificate", json!({ "public_key": key }).to_string()),
                    ("credentials", String::new()),
                ]
                .into_iter()
                .enumerate()
                {
                    let started = Instant::now();
                    let req = axum::http::Request::builder()
                        .method("POST")
                        .uri(format!("{base}/api/v1/requests/AR-1/{path}"))
                        .header("content-type", "application/json")
                        .header("authorization", format!("Bearer {token}"))
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    match client.request(req).await {
                        Ok(res) => {
                            ok &= res.status().is_success();
                            let _ = res.into_body().collect().await;
                        }
                        Err(_) => ok = false,
                    }
                    each[i] = started.elapsed();
                }
                (t0.elapsed(), each, ok)
            }
        }
    };

    println!("api: open-loop certificate + credentials for one active request, {rate} pairs/s");
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    for (measured, run_secs) in [(false, 2), (true, secs)] {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::new();
        for _ in 0..rate * run_secs {
            tick.tick().await;
            tasks.push(tokio::spawn(call()));
        }
        if !measured {
            for t in tasks {
                let _ = t.await;
            }
            continue;
        }
        let (mut pairs, mut certificates, mut credentials) = (Vec::new(), Vec::new(), Vec::new());
        let mut errors = 0;
        for t in tasks {
            let (d, [certificate, credential], ok) = t.await.unwrap();
            pairs.push(d);
            certificates.push(certificate);
            credentials.push(credential);
            errors += u64::from(!ok);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
            "call", "per s", "p50 ms", "p99 ms", "max ms", "sent", "errors"
        );
        for (name, mut latencies) in [
            ("pair", pairs),
            ("certificate", certificates),
            ("credentials", credentials),
        ] {
            latencies.sort();
            println!(
                "{:>12} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>7}",
                name,
                rate,
                ms(percentile(&latencies, 0.5)),
                ms(percentile(&latencies, 0.99)),
                ms(latencies.last().copied().unwrap_or_default()),
                latencies.len(),
                errors
            );
        }
    }
}
