//! What `passport ssh` adds before the Session Manager plugin starts: from
//! the start of the `passport ssh AR-1 -- true` process to the moment ssh's
//! `ProxyCommand` (`passport proxy`) hands over to `session-manager-plugin`.
//! AWS round trips are excluded: the API and SSM answer from stubs on
//! loopback, and a stand-in plugin notes the time it starts and exits.
//!
//! Two cases: the first connection of a request (a new key pair, a
//! certificate and credentials from the API) and a later one (both reused
//! from the client directory).
//!
//! Run with `cargo bench --bench client_ssh`. `PASSPORT_BENCH_RUNS` (default
//! 50) sets the runs per case; `PASSPORT_BENCH_BIN` measures another build of
//! `passport` than the one cargo built for the benchmark.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use passport::adapters::ssh_ca::{CaKeyType, CertificateAuthority};
use passport::api::{
    Allows, CertificateIssued, CertificateRequest, Credentials, InstanceView, Me, RequestList,
    RequestView,
};
use passport::client::store::{ClientDir, Session};
use passport::domain::certificate::CertificateSpec;
use passport::domain::time::{Span, Timestamp};
use passport::domain::values::SshPublicKey;
use secrecy::SecretString;

const INSTANCE: &str = "i-0123456789abcdef0";
const USER: &str = "pp-bench-1";

fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp::from_millis(ms)
}

fn view() -> RequestView {
    RequestView {
        id: "AR-1".into(),
        state: "active".into(),
        username: USER.into(),
        instances: vec![InstanceView {
            id: INSTANCE.into(),
            name: Some("web-1".into()),
            platform: "linux".into(),
            status: "granted".into(),
        }],
        duration: "2h".into(),
        ticket: "ticket#1".into(),
        reason: None,
        created_at: now().rfc3339(),
        expires_at: Some(now().plus(Span::from_minutes(120)).rfc3339()),
        allows: Allows {
            ssh: true,
            port_forwarding: false,
            remote_port_forwarding: false,
        },
        message: None,
    }
}

async fn certificate(
    State(ca): State<Arc<CertificateAuthority>>,
    Json(asked): Json<CertificateRequest>,
) -> Result<Json<CertificateIssued>, axum::http::StatusCode> {
    let key =
        SshPublicKey::parse(&asked.public_key).map_err(|_| axum::http::StatusCode::BAD_REQUEST)?;
    let now = now();
    let spec = CertificateSpec {
        serial: 1 << 20 | 1,
        principal: USER.into(),
        key_id: "AR-1 bench".into(),
        valid_after: now.minus(Span::from_minutes(2)),
        valid_before: now.plus(Span::from_minutes(120)),
        port_forwarding: false,
    };
    let line = ca
        .sign(&spec, &key, None)
        .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(Json(CertificateIssued {
        certificate: line,
        principal: USER.into(),
        serial: spec.serial,
        valid_before: spec.valid_before.rfc3339(),
    }))
}

async fn credentials() -> Json<Credentials> {
    Json(Credentials {
        access_key_id: "ASIABENCHBENCHBENCH".into(),
        secret_access_key: "bench-secret".into(),
        session_token: "bench-session-token".into(),
        expiration: now().plus(Span::from_minutes(15)).rfc3339(),
        region: "eu-west-1".into(),
        access_ends_at: now().plus(Span::from_minutes(120)).rfc3339(),
    })
}

async fn start_session(_body: Bytes) -> impl axum::response::IntoResponse {
    (
        [("content-type", "application/x-amz-json-1.1")],
        r#"{"SessionId":"bench-0123456789abcdef0","TokenValue":"bench-token","StreamUrl":"wss://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/bench"}"#,
    )
}

async fn serve(router: Router) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(url)
}

/// The stand-in plugin: answers `--version`, else writes the time it
/// started (ns since the epoch) and exits, which ends the ssh attempt.
const PLUGIN: &str = r#"#!/bin/sh
if [ "$1" = "--version" ]; then echo 1.2.707.0; exit 0; fi
date +%s%N >"$BENCH_PLUGIN_STARTED"
exit 1
"#;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn run_once(
    exe: &str,
    dir: &Path,
    env: &[(String, String)],
    mark: &Path,
) -> anyhow::Result<Duration> {
    let _ = fs::remove_file(mark);
    let started = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let out = Command::new(exe)
        .args(["ssh", "AR-1", "--", "-o", "BatchMode=yes", "true"])
        .env("PASSPORT_CLIENT_DIR", dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()?;
    let Ok(text) = fs::read_to_string(mark) else {
        anyhow::bail!(
            "the plugin never started: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let at = Duration::from_nanos(text.trim().parse()?);
    Ok(at.saturating_sub(started))
}

fn report(name: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name}: {} runs; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        times.len(),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(times[times.len() - 1]),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    passport::startup::install_crypto_provider();
    let runs: usize = std::env::var("PASSPORT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        .max(1);
    let exe = std::env::var("PASSPORT_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_passport").to_owned());

    let ca = Arc::new(CertificateAuthority::generate(CaKeyType::Ed25519)?);
    let api = Router::new()
        .route(
            "/api/v1/requests",
            get(|| async {
                Json(RequestList {
                    requests: vec![view()],
                })
            }),
        )
        .route("/api/v1/requests/{id}", get(|| async { Json(view()) }))
        .route("/api/v1/requests/{id}/certificate", post(certificate))
        .route("/api/v1/requests/{id}/credentials", post(credentials))
        .with_state(ca);
    let api_url = serve(api).await?;
    let ssm_url = serve(Router::new().route("/", post(start_session))).await?;

    let temp = tempfile::tempdir()?;
    let bin = temp.path().join("bin");
    fs::create_dir_all(&bin)?;
    let plugin = bin.join("session-manager-plugin");
    fs::write(&plugin, PLUGIN)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&plugin, fs::Permissions::from_mode(0o755))?;
    }
    let client: PathBuf = temp.path().join("client");
    let dir = ClientDir::new(client.clone());
    dir.save_session(&Session {
        server: api_url,
        token: SecretString::from("pp_bench_token".to_owned()),
        expires_at: now().plus(Span::from_minutes(720)).rfc3339(),
        user: Me {
            id: "U0BENCH".into(),
            handle: "bench".into(),
            surface: "slack".into(),
            token_expires_at: now().plus(Span::from_minutes(720)).rfc3339(),
        },
    })?;
    let mark = temp.path().join("plugin-started");
    let path = std::env::var("PATH").unwrap_or_default();
    let env = vec![
        ("PATH".to_owned(), format!("{}:{path}", bin.display())),
        ("AWS_ENDPOINT_URL_SSM".to_owned(), ssm_url),
        (
            "BENCH_PLUGIN_STARTED".to_owned(),
            mark.display().to_string(),
        ),
    ];

    let exe2 = exe.clone();
    let (first, later) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        // One run to warm the page cache for the binary.
        run_once(&exe2, &client, &env, &mark)?;
        let mut first = Vec::with_capacity(runs);
        for _ in 0..runs {
            let _ = fs::remove_dir_all(client.join("requests"));
            first.push(run_once(&exe2, &client, &env, &mark)?);
        }
        let mut later = Vec::with_capacity(runs);
        for _ in 0..runs {
            later.push(run_once(&exe2, &client, &env, &mark)?);
        }
        Ok((first, later))
    })
    .await??;
    println!("passport ssh until the plugin starts ({exe}), API and SSM on loopback stubs:");
    report(
        "first connection (key pair, certificate, credentials)",
        first,
    );
    report(
        "later connection (certificate and credentials reused)",
        later,
    );
    Ok(())
}
