//! How fast Passport acknowledges `/passport request` over HTTP, open loop.
//!
//! Run with `cargo bench --bench slack_ack` (release build). Requests are sent
//! at a fixed rate whatever the answers, each a unique slash command signed as
//! Slack signs it; latency runs from the moment each request is issued to its
//! answer. The application is the real one (`startup::slack_app` and its
//! router, a fresh SQLite file, the dry-run provisioner) with a tiny stand-in
//! for Slack's Web API, which it asks only for the requester's name (once,
//! then cached). Every request is committed before it is answered; at the end
//! the number of stored requests is checked against the answers. Each rate is
//! preceded by 3 unmeasured seconds at that rate (`PASSPORT_BENCH_TIMELINE=1`
//! prints p99 and max per second of the run, `PASSPORT_BENCH_TIMELINE_MS=200`
//! per 200 ms: stalls that come back at a fixed period show there). The
//! generator sends over a fixed set of keep-alive connections
//! (`PASSPORT_BENCH_CONNECTIONS`, default 256), as a load balancer in front of
//! Passport would; a request waits for a free one, and its latency counts
//! from the moment the generator issued it, waiting included. The
//! generator's timer wakes on whole milliseconds, so a
//! request is issued up to about a millisecond after it was due; that delay is
//! the generator's own and is printed apart, as how far behind its schedule
//! it fell (p99 and max), so that a generator starved of CPU shows.
//!
//! Settings: `PASSPORT_BENCH_RATES` (default `500,2000,10000` requests per
//! second), `PASSPORT_BENCH_SECS` (default 10 per rate; the figure for
//! 10,000 req/s is over 30 s), `PASSPORT_BENCH_COMMAND=help` (acknowledge
//! `/passport help` instead: signature, parsing and answer, no engine). The server and the load generator run on
//! separate runtimes in this one process, on the same machine; the peak memory
//! printed is that of the whole process.
//!
//! `PASSPORT_BENCH_SLACK=down` points the Web API at a closed loopback port
//! (connections refused), `PASSPORT_BENCH_SLACK=stalled` at a port that
//! accepts connections and never answers: acknowledgements must not depend on
//! Slack's health. `PASSPORT_BENCH_REQUESTERS` (default 1, or 1000 with Slack
//! unreachable) spreads the requests over that many distinct people, so that
//! each name look-up misses the cache at least once.
//!
//! The server runs with `serve`'s default `[http]` limits;
//! `PASSPORT_BENCH_MAX_CONNECTIONS` overrides its connection cap.
//!
//! `PASSPORT_BENCH_LOG=warn` writes the application's log lines at that level
//! to stderr (not with `PASSPORT_BENCH_OBSERVE`).
//!
//! `PASSPORT_BENCH_STORE=postgres` runs the application on a fresh
//! PostgreSQL database instead (a throwaway server started as the tests start
//! theirs, `tests/common/postgres.rs`, with PostgreSQL's durable defaults:
//! fsync and synchronous_commit on, as on a managed database), and
//! `PASSPORT_BENCH_REPLICAS=2` starts that many applications on it, each with
//! its own pool and its own port, as replicas behind a load balancer; the
//! generator sends request after request to each in turn (round robin), over
//! its own share of the connections. The count of stored requests is read from
//! the one database all of them write.
//!
//! `PASSPORT_BENCH_OBSERVE=1` runs every rate twice in the one process: first
//! as above, then with what observability costs in `serve`: the Prometheus
//! recorder installed, `/metrics` scraped every second, and every log line at
//! `info` written as JSON (`PASSPORT_BENCH_SCRAPE_SECS`, default 1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/machine.rs"]
mod machine;
#[path = "../tests/common/postgres.rs"]
mod postgres;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::any;
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use passport::adapters::clock::SystemClock;
use passport::adapters::slack::SlackConfig;
use passport::app::ports::Clock;
use passport::config::{Config, DatabaseUrl, Secret};
use passport::http::verify::sign;
use passport::startup::{self, ChatOptions};

/// The allocator of the `passport` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const USER: &str = "U0BENCH";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Answers every Web API call with success; `users.info` with a name.
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

/// The applications of a run, all on one database.
struct Servers {
    /// Each application's address, in the order requests go round.
    bases: Vec<String>,
    apps: Vec<startup::App>,
    /// The SQLite file's folder, when the store is SQLite.
    dir: Option<tempfile::TempDir>,
}

/// The store the applications run on (`PASSPORT_BENCH_STORE`).
fn store_kind() -> String {
    env_or("PASSPORT_BENCH_STORE", "sqlite")
}

/// How wide each slice of the timeline is, in milliseconds; `None` when no
/// timeline is asked for.
fn timeline_ms() -> Option<u64> {
    match std::env::var("PASSPORT_BENCH_TIMELINE_MS") {
        Ok(ms) => Some(ms.parse::<u64>().unwrap().max(1)),
        Err(_) => std::env::var("PASSPORT_BENCH_TIMELINE")
            .is_ok()
            .then_some(1000),
    }
}

/// How many applications share the database (`PASSPORT_BENCH_REPLICAS`);
/// more than one needs PostgreSQL.
fn replicas() -> usize {
    let n: usize = env_or("PASSPORT_BENCH_REPLICAS", "1").parse().unwrap();
    assert!(
        n == 1 || store_kind() == "postgres",
        "PASSPORT_BENCH_REPLICAS={n}: replicas share a PostgreSQL database; set PASSPORT_BENCH_STORE=postgres"
    );
    n.max(1)
}

/// How the Web API behaves during the run (`PASSPORT_BENCH_SLACK`).
fn slack_health() -> String {
    env_or("PASSPORT_BENCH_SLACK", "healthy")
}

/// Distinct requesters the requests come from (`PASSPORT_BENCH_REQUESTERS`).
fn requesters() -> u64 {
    let default = if slack_health() == "healthy" {
        "1"
    } else {
        "1000"
    };
    env_or("PASSPORT_BENCH_REQUESTERS", default)
        .parse::<u64>()
        .unwrap()
        .max(1)
}

/// A Web API address for `PASSPORT_BENCH_SLACK`: the stand-in, a closed port,
/// or a port that takes connections and never answers.
async fn web_api() -> String {
    match slack_health().as_str() {
        "healthy" => stand_in_for_slack().await,
        "down" => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/api", listener.local_addr().unwrap());
            drop(listener);
            url
        }
        "stalled" => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/api", listener.local_addr().unwrap());
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((conn, _)) = listener.accept().await {
                    held.push(conn);
                }
            });
            url
        }
        other => panic!("PASSPORT_BENCH_SLACK={other}: use healthy, down or stalled"),
    }
}

/// Starts the applications of a run on a fresh database.
async fn start_servers() -> Servers {
    let api_url = web_api().await;
    let mut c = Config::default();
    let dir = match store_kind().as_str() {
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            c.store.path = Some(dir.path().join("passport.db"));
            Some(dir)
        }
        "postgres" => {
            let url = postgres::durable_server().fresh_database().await;
            c.store.url = Some(DatabaseUrl::new(url));
            None
        }
        other => panic!("PASSPORT_BENCH_STORE={other}: use sqlite or postgres"),
    };
    c.groups = BTreeMap::from([
        ("approvers".into(), vec!["U0LEAD".into()]),
        ("admins".into(), vec!["U0BOSS".into()]),
    ]);
    c.jobs.reconcile = "off".into();
    c.jobs.digest = "off".into();
    c.jobs.checkpoint = "off".into();
    // The generator sends far more per requester than any person would.
    c.requests.max_pending_per_requester = 0;
    c.requests.commands_per_minute = 0;
    c.provisioner = Some(passport::config::ProvisionerChoice::DryRun);
    c.slack = Some(SlackConfig {
        signing_secret: Some(Secret::from(SECRET)),
        bot_token: Some(Secret::from("xoxb-bench")),
        approvals_channel: "C0APPROVALS".into(),
        audit_channel: "C0AUDIT".into(),
        api_url,
        // Named, so the stand-in need not answer auth.test.
        team_id: "T0BENCH".into(),
        app_id: "A0BENCH".into(),
        ..SlackConfig::default()
    });
    let settings = c.validate().unwrap();
    let (mut bases, mut apps) = (Vec::new(), Vec::new());
    for _ in 0..replicas() {
        let (base, app) = start_server(&settings).await;
        bases.push(base);
        apps.push(app);
    }
    Servers { bases, apps, dir }
}

/// One application on `settings`, serving on a port of its own: its address.
async fn start_server(settings: &passport::config::Settings) -> (String, startup::App) {
    let built = startup::slack_app(
        settings,
        settings.slack.as_ref().unwrap(),
        ChatOptions {
            clock: Arc::new(SystemClock),
            provisioner: Arc::new(passport::adapters::dry_run::DryRunProvisioner::new(
                Vec::new(),
                None,
            )),
            ack_deadline: Duration::from_millis(2500),
            dry_run_label: false,
            probes: Vec::new(),
        },
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = built.router;
    tokio::spawn(async move {
        // The limits `serve` runs with, unless the run names another cap.
        let mut limits = passport::http::ServerLimits::default();
        if let Ok(cap) = std::env::var("PASSPORT_BENCH_MAX_CONNECTIONS") {
            limits.max_connections = cap.parse().unwrap();
        }
        passport::http::server::serve(listener, router, limits, std::future::pending())
            .await
            .unwrap()
    });
    (base, built.app)
}

/// How many requests the run's database holds.
async fn stored(servers: &Servers) -> u64 {
    match (&servers.dir, &servers.apps[0].database) {
        (Some(dir), _) => rusqlite::Connection::open(dir.path().join("passport.db"))
            .and_then(|c| c.query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0)))
            .unwrap_or(0),
        (None, startup::Database::Postgres(pg)) => {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM requests")
                .fetch_one(pg.pool())
                .await
                .map_or(0, |n| n as u64)
        }
        (None, startup::Database::Sqlite(_)) => 0,
    }
}

static NEXT: AtomicU64 = AtomicU64::new(1);
/// Seconds at the measured rate before each measured run.
const WARM_UP_SECS: u64 = 3;
static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn help_only() -> bool {
    std::env::var("PASSPORT_BENCH_COMMAND").is_ok_and(|c| c == "help")
}

/// The command sent: a new request by default. `PASSPORT_BENCH_COMMAND=help`
/// measures the acknowledgement without the engine and the database.
fn command_text(n: u64) -> String {
    if help_only() {
        "help".into()
    } else {
        format!("request i-0123456789abcdef0 1h ticket#{n} load test")
    }
}

fn signed_request(host: &str) -> axum::http::Request<Full<Bytes>> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let body = serde_urlencoded::to_string([
        ("team_id", "T0BENCH"),
        ("api_app_id", "A0BENCH"),
        ("channel_id", "C0GENERAL"),
        ("user_id", &format!("{USER}{}", n % requesters())),
        ("user_name", "bench"),
        ("command", "/passport"),
        ("text", &command_text(n)),
        (
            "response_url",
            "https://hooks.slack.com/commands/T0BENCH/1/x",
        ),
        ("trigger_id", &format!("{n}.bench")),
    ])
    .unwrap();
    let ts = (SystemClock.now().as_millis() / 1000).to_string();
    axum::http::Request::post("/slack/commands")
        .header("host", host)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", &ts)
        .header(
            "x-slack-signature",
            sign(SECRET.as_bytes(), &ts, body.as_bytes()),
        )
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

struct Outcome {
    latencies: Vec<Duration>,
    /// When each request was due, from the start of the run.
    sent_at: Vec<Duration>,
    /// How long after it was due each request was issued.
    behind: Vec<Duration>,
    errors: u64,
    acknowledged: u64,
}

/// Connections the generator keeps open and sends over
/// (`PASSPORT_BENCH_CONNECTIONS`, default 256), as a load balancer in front
/// of Passport keeps its own. With a fixed set, the run measures Passport
/// rather than the kernel's search for a free port when a growing client
/// opens new connections under load.
fn connections() -> usize {
    env_or("PASSPORT_BENCH_CONNECTIONS", "256").parse().unwrap()
}

/// A request issued at `issued`, due `offset` after the run's start.
struct Due {
    issued: Instant,
    offset: Duration,
    /// How long after it was due it was issued.
    behind: Duration,
    request: axum::http::Request<Full<Bytes>>,
}

/// What became of one request.
struct Sent {
    /// From its issue to its answer.
    latency: Duration,
    acknowledged: bool,
    /// When it was due, from the start of the run.
    offset: Duration,
    /// How long after it was due it was issued.
    behind: Duration,
}

/// Sends `rate` requests a second for `secs` seconds to the applications at
/// `bases`, to each in turn.
async fn load(bases: Vec<String>, rate: u64, secs: u64) -> Outcome {
    let hosts: Vec<String> = bases
        .iter()
        .map(|b| b.trim_start_matches("http://").to_owned())
        .collect();
    let total = rate * secs;
    // Requests queue for the next free connection to their application;
    // results come back over a channel, so the generator's own memory stays small.
    let (results, mut received) = tokio::sync::mpsc::unbounded_channel::<Sent>();
    let per_host = connections().div_ceil(hosts.len()).max(1);
    let mut queues = Vec::new();
    let mut senders = Vec::new();
    for host in &hosts {
        let (queue, waiting) = tokio::sync::mpsc::unbounded_channel::<Due>();
        let waiting = Arc::new(tokio::sync::Mutex::new(waiting));
        for _ in 0..per_host {
            senders.push(tokio::spawn(sender(
                host.clone(),
                waiting.clone(),
                results.clone(),
            )));
        }
        queues.push(queue);
    }
    drop(results);
    let start = tokio::time::Instant::now();
    for i in 0..total {
        // Open loop: request i is due at its time, answered or not, and its
        // latency counts from when it is issued, so time spent waiting for a
        // connection is measured too.
        let offset = Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(start + offset).await;
        let issued = Instant::now();
        let behind = issued.saturating_duration_since((start + offset).into_std());
        // Round robin, as a load balancer spreads requests.
        let to = (i % hosts.len() as u64) as usize;
        let request = signed_request(&hosts[to]);
        let _ = queues[to].send(Due {
            issued,
            offset,
            behind,
            request,
        });
    }
    drop(queues);
    let mut latencies = Vec::with_capacity(total as usize);
    let mut sent_at = Vec::with_capacity(total as usize);
    let mut behind = Vec::with_capacity(total as usize);
    let (mut errors, mut acknowledged) = (0, 0);
    while let Some(sent) = received.recv().await {
        latencies.push(sent.latency);
        sent_at.push(sent.offset);
        behind.push(sent.behind);
        if sent.acknowledged {
            acknowledged += 1;
        } else {
            errors += 1;
        }
    }
    for s in senders {
        let _ = s.await;
    }
    Outcome {
        latencies,
        sent_at,
        behind,
        errors,
        acknowledged,
    }
}

/// One connection of the generator: sends the requests it takes from
/// `waiting` one after another, and opens the connection again when the
/// server closed it.
async fn sender(
    host: String,
    waiting: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Due>>>,
    results: tokio::sync::mpsc::UnboundedSender<Sent>,
) {
    let mut conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    loop {
        let next = waiting.lock().await.recv().await;
        let Some(Due {
            issued,
            offset,
            behind,
            request,
        }) = next
        else {
            return;
        };
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            conn = connect(&host).await;
        }
        let ok = match conn.as_mut() {
            Some(c) => answered(c, request).await,
            None => false,
        };
        let _ = results.send(Sent {
            latency: issued.elapsed(),
            acknowledged: ok,
            offset,
            behind,
        });
    }
}

async fn connect(host: &str) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(host).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(send)
}

/// Sends `request` and reads its answer: whether it is a 200 that
/// acknowledges a request (or, for `help`, any 200).
async fn answered(
    conn: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    request: axum::http::Request<Full<Bytes>>,
) -> bool {
    if conn.ready().await.is_err() {
        return false;
    }
    match conn.send_request(request).await {
        Ok(res) if res.status() == 200 => {
            let body = res.into_body().collect().await.map(|b| b.to_bytes());
            let ok =
                matches!(&body, Ok(b) if help_only() || String::from_utf8_lossy(b).contains("AR-"));
            if !ok && !REPORTED.swap(true, Ordering::Relaxed) {
                if let Ok(b) = &body {
                    eprintln!("first failed answer: {}", String::from_utf8_lossy(b));
                }
            }
            ok
        }
        _ => false,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    startup::install_crypto_provider();
    let secs: u64 = env_or("PASSPORT_BENCH_SECS", "10").parse().unwrap();
    let rates: Vec<u64> = env_or("PASSPORT_BENCH_RATES", "500,2000,10000")
        .split(',')
        .map(|r| r.trim().parse().unwrap())
        .collect();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "slack_ack: open-loop signed /passport request, {secs} s per rate, Web API {}, {} requester(s), store {}, {} replica(s)",
        slack_health(),
        requesters(),
        store_kind(),
        replicas()
    );
    let observe = std::env::var("PASSPORT_BENCH_OBSERVE").is_ok();
    if let (Ok(filter), false) = (std::env::var("PASSPORT_BENCH_LOG"), observe) {
        // To see why answers fail: log lines at this level to stderr.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    if observe {
        println!("without metrics or logs:");
    }
    pass(&server_rt, &client_rt, &rates, secs, None);
    if observe {
        // What `serve` runs with `[log] format = "json"`: the Prometheus
        // recorder, JSON log lines at `info` (to a file here, as a log
        // collector would read them), and a scrape of `/metrics` every second
        // (Prometheus scrapes every 15 to 60 s).
        let logs = tempfile::NamedTempFile::new().unwrap();
        let writer = logs.reopen().unwrap();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::sync::Mutex::new(writer))
            .init();
        passport::http::metrics::recorder();
        let every: u64 = env_or("PASSPORT_BENCH_SCRAPE_SECS", "1").parse().unwrap();
        println!("with /metrics scraped every {every} s and JSON logs:");
        pass(
            &server_rt,
            &client_rt,
            &rates,
            secs,
            Some(Duration::from_secs(every)),
        );
        let lines = std::fs::read_to_string(logs.path())
            .map(|t| t.lines().count())
            .unwrap_or(0);
        println!("  ({lines} JSON log lines written)");
    }
    println!("peak memory (whole process): {:.1} MiB", peak_rss_mib());
}

/// One run per rate against a fresh server, scraping its `/metrics` every
/// `scrape` if given.
fn pass(
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    rates: &[u64],
    secs: u64,
    scrape: Option<Duration>,
) {
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8}",
        "req/s", "p50 ms", "p99 ms", "max ms", "sent", "errors", "stored", "ack/s"
    );
    for &rate in rates {
        let servers = server_rt.block_on(start_servers());
        let bases = servers.bases.clone();
        let scrapers: Vec<_> = scrape
            .into_iter()
            .flat_map(|every| {
                bases
                    .iter()
                    .map(move |base| client_rt.spawn(scrape_metrics(base.clone(), every)))
            })
            .collect();
        // Warm up, unmeasured: the first requests fetch the requester's
        // name; then 3 s at the rate.
        client_rt.block_on(load(bases.clone(), 50, 1));
        let warm_up = client_rt.block_on(load(bases.clone(), rate, WARM_UP_SECS));
        let cpu_before = machine::cpu_times();
        let outcome = client_rt.block_on(load(bases, rate, secs));
        let stolen = machine::stolen_share(cpu_before, machine::cpu_times());
        let stored = server_rt.block_on(stored(&servers));
        let mut sorted = outcome.latencies.clone();
        sorted.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        // Achieved: acknowledgements per second, from the first request due
        // to the last answer.
        let span = outcome
            .latencies
            .iter()
            .zip(&outcome.sent_at)
            .zip(&outcome.behind)
            .map(|((l, at), behind)| *l + *at + *behind)
            .max()
            .unwrap_or_default();
        let achieved = outcome.acknowledged as f64 / span.as_secs_f64().max(f64::EPSILON);
        println!(
            "{:>8} {:>10.2} {:>10.2} {:>10.2} {:>10} {:>8} {:>8} {:>8.0}",
            rate,
            ms(percentile(&sorted, 0.50)),
            ms(percentile(&sorted, 0.99)),
            ms(sorted.last().copied().unwrap_or_default()),
            sorted.len(),
            outcome.errors,
            stored,
            achieved,
        );
        let mut behind = outcome.behind.clone();
        behind.sort();
        println!(
            "{:>8} generator behind its schedule: p99 {:.2} ms, max {:.2} ms",
            "",
            ms(percentile(&behind, 0.99)),
            ms(behind.last().copied().unwrap_or_default()),
        );
        if let Some(stolen) = stolen {
            println!(
                "{:>8} CPU time the hypervisor gave to others (steal): {stolen:.0} %",
                ""
            );
        }
        if let Some(width) = timeline_ms() {
            // p99 and max of the requests sent in each slice of the run.
            let mut slices: BTreeMap<u64, Vec<Duration>> = BTreeMap::new();
            for (l, at) in outcome.latencies.iter().zip(&outcome.sent_at) {
                slices
                    .entry(at.as_millis() as u64 / width)
                    .or_default()
                    .push(*l);
            }
            for (slice, mut ls) in slices {
                ls.sort();
                println!(
                    "  at {:>7.1} s: p99 {:>8.2} ms, max {:>8.2} ms",
                    (slice * width) as f64 / 1000.0,
                    ms(percentile(&ls, 0.99)),
                    ms(ls.last().copied().unwrap_or_default())
                );
            }
        }
        // Warm-up requests are stored too: every acknowledged one must be.
        let acknowledged = outcome.acknowledged + warm_up.acknowledged + 50;
        if !help_only() && stored < acknowledged {
            println!("  LOST: {acknowledged} requests were acknowledged but only {stored} stored");
        }
        for scraper in scrapers {
            scraper.abort();
        }
        for app in &servers.apps {
            server_rt.block_on(app.database.close());
        }
    }
}

/// Scrapes `{base}/metrics` every `every`, as Prometheus would.
async fn scrape_metrics(base: String, every: Duration) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let req = axum::http::Request::get(format!("{base}/metrics"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        if let Ok(res) = client.request(req).await {
            assert!(
                res.status().is_success(),
                "/metrics answered {}",
                res.status()
            );
            let _ = res.into_body().collect().await;
        }
    }
}
