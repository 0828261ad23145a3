//! Throughput and memory of the engine and the Logbook on a fresh SQLite
//! file, and of the engine on a fresh PostgreSQL database in the same run.
//!
//! Run with `cargo bench --bench engine` (release build, about a minute).
//! Sizes: `PASSPORT_BENCH_REQUESTS` (default 20000), `PASSPORT_BENCH_WORKERS`
//! (256), `PASSPORT_BENCH_APPENDS` (200000), `PASSPORT_BENCH_VERIFY_EVENTS`
//! (1500000).
//!
//! - Engine: wired like `startup::console_app`, but with the null chat surface
//!   as the only surface and the dry-run provisioner without output, so what is
//!   measured is the engine and the store. Workers each drive requests through
//!   their whole life (request, approve, activation by the provisioning timer,
//!   complete, removal by the removal timer), many at once. Every transition is
//!   committed with its Logbook events, outbox rows and timers before it is
//!   answered. One task runs due timers and another delivers the outbox all
//!   the while, as the scheduler does.
//! - The same engine run on PostgreSQL: a throwaway server started as the
//!   tests start theirs (`tests/common/postgres.rs`, found through
//!   `PASSPORT_PG_BIN` or `/usr/lib/postgresql/*/bin`), but with PostgreSQL's
//!   durable defaults, as a managed database has them (fsync and
//!   synchronous_commit on), and the store opened as `startup` opens it
//!   (`startup::open_store`, its default pool). Loopback, so the figure is
//!   the database's work and Passport's, not a network's.
//! - Logbook: single events appended (`Store::record`) by concurrent callers,
//!   each answered after its commit; then the Logbook is filled up in batches
//!   and verified (`Store::verify_logbook`, what `audit verify` runs).
//! - Outbox read with a backlog: `PASSPORT_BENCH_BACKLOG` (100000) notices
//!   waiting in lanes of ten (direct messages to as many people), as after
//!   a chat platform's outage; then the dispatcher's read
//!   (`Store::pending_notices`, 2,000 notices, at most 100 a lane) timed on
//!   each store: the first read, and the mean of ten more by the same
//!   process (which, on PostgreSQL, holds what the first one claimed).
//! - Baseline: `benches/baseline.py`, the SQLite work of a transition done by a
//!   plain Python loop, when `python3` is available.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "common/machine.rs"]
mod machine;
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "../tests/common/postgres.rs"]
mod postgres;

use anyhow::{bail, Context};
use async_trait::async_trait;
use tokio::sync::{oneshot, Notify};

use passport::adapters::clock::ManualClock;
use passport::adapters::console::NullSurface;
use passport::adapters::directory::StaticDirectory;
use passport::adapters::dry_run::DryRunProvisioner;
use passport::adapters::sqlite::{Durability, SqliteStore};
use passport::app::dispatch::{Dispatcher, PER_LANE, READ_LIMIT};
use passport::app::effects::Effects;
use passport::app::engine::{Actor, Engine, EngineSettings, Ports};
use passport::app::ports::{
    ChatSurface, Clock, Described, GrantSpec, ProvisionError, Provisioner, RevokeSpec, Store,
    StoreError, Verification,
};
use passport::config::{Config, DatabaseUrl};
use passport::domain::logbook::NewEvent;
use passport::domain::notice::Notice;
use passport::domain::request::InstanceOutcome;
use passport::domain::time::Timestamp;
use passport::domain::values::{InstanceId, Person, RequestId, UserId};
use passport::startup::{self, Database};

/// Requests driven through their whole life.
const REQUESTS: usize = 20_000;
/// Requests in flight at once, each driven by a task of its own.
const WORKERS: usize = 256;
/// Transitions counted per request: request, approve, activate, complete.
const TRANSITIONS_PER_REQUEST: usize = 4;
/// Single events appended, and the callers appending them at once.
const APPENDS: usize = 200_000;
const APPENDERS: usize = 64;
/// Events in the Logbook that is verified.
const VERIFY_EVENTS: usize = 1_500_000;
/// Notices waiting when the outbox read is timed, and in lanes of how many.
const BACKLOG: usize = 100_000;
const BACKLOG_LANE: usize = 10;
/// Reads timed after the first.
const LATER_READS: u32 = 10;
/// Rows per call when filling a store up: Logbook events for verification,
/// notices for the backlog read.
const FILL_BATCH: usize = 1_000;
/// How often a worker asks again to complete a request whose activation is
/// not committed yet (see `lifecycle`).
const COMPLETE_ATTEMPTS: u32 = 1_000;

fn setting(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

struct Row {
    measure: &'static str,
    value: String,
    how: String,
}

async fn run() -> anyhow::Result<()> {
    let requests = setting("PASSPORT_BENCH_REQUESTS", REQUESTS)?.max(1);
    let workers = setting("PASSPORT_BENCH_WORKERS", WORKERS)?.clamp(1, requests);
    let appends = setting("PASSPORT_BENCH_APPENDS", APPENDS)?;
    let verify_events = setting("PASSPORT_BENCH_VERIFY_EVENTS", VERIFY_EVENTS)?.max(appends);
    let backlog = setting("PASSPORT_BENCH_BACKLOG", BACKLOG)?;
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    let rate = |n: f64, d: Duration| format!("{:.0}", n / d.as_secs_f64());

    let sqlite = Database::Sqlite(
        SqliteStore::open(&dir.path().join("engine.db"), Durability::Normal).await?,
    );
    let before = machine::cpu_times();
    let engine = engine_throughput(sqlite, start_clock(), requests, workers).await?;
    let stolen = machine::stolen_share(before, machine::cpu_times());
    engine_rows(&mut rows, "SQLite", &engine, workers, stolen);
    let clock = start_clock();
    let postgres = postgres_store(clock.clone()).await?;
    let before = machine::cpu_times();
    let engine = engine_throughput(postgres, clock, requests, workers).await?;
    let stolen = machine::stolen_share(before, machine::cpu_times());
    engine_rows(&mut rows, "PostgreSQL", &engine, workers, stolen);

    let sqlite = Database::Sqlite(
        SqliteStore::open(&dir.path().join("backlog.db"), Durability::Normal).await?,
    );
    let reads = [
        ("SQLite", outbox_reads(sqlite, backlog).await?),
        (
            "PostgreSQL",
            outbox_reads(postgres_store(start_clock()).await?, backlog).await?,
        ),
    ];
    for (kind, read) in reads {
        rows.push(Row {
            measure: "outbox read, first / later ms",
            value: format!(
                "{:.1} / {:.1}",
                read.first.as_secs_f64() * 1e3,
                read.later.as_secs_f64() * 1e3
            ),
            how: format!(
                "{kind}: {backlog} waiting in lanes of {BACKLOG_LANE}, {} notices a read",
                read.answered
            ),
        });
    }

    let logbook =
        logbook_throughput(&dir.path().join("logbook.db"), appends, verify_events).await?;
    rows.push(Row {
        measure: "Logbook append events/s",
        value: rate(logbook.appended as f64, logbook.append_elapsed),
        how: format!(
            "{} single-event appends by {APPENDERS} callers in {:.2} s",
            logbook.appended,
            logbook.append_elapsed.as_secs_f64()
        ),
    });
    rows.push(Row {
        measure: "Logbook batch append events/s",
        value: rate(logbook.filled as f64, logbook.fill_elapsed),
        how: format!(
            "{} events in calls of {FILL_BATCH}, one caller",
            logbook.filled
        ),
    });
    rows.push(Row {
        measure: "audit verify events/s",
        value: rate(logbook.verified as f64, logbook.verify_elapsed),
        how: format!(
            "{} events in {:.2} s",
            logbook.verified,
            logbook.verify_elapsed.as_secs_f64()
        ),
    });

    let (value, how) = match python_baseline() {
        Ok(found) => found,
        Err(e) => ("-".to_owned(), format!("not run: {e:#}")),
    };
    rows.push(Row {
        measure: "Python baseline tx/s",
        value,
        how,
    });
    rows.push(Row {
        measure: "peak RSS",
        value: peak_rss_kib().map_or("?".to_owned(), |k| format!("{} MiB", k / 1024)),
        how: "VmHWM of this process, all of the above".to_owned(),
    });
    rows.push(Row {
        measure: "machine",
        value: format!(
            "{} cores",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        how: "release build; SQLite durability normal (WAL, synchronous=NORMAL); \
              PostgreSQL on loopback, fsync and synchronous_commit on"
            .to_owned(),
    });
    print_table(&rows);
    Ok(())
}

/// The engine's rows for the run on `store`, during which the hypervisor
/// gave `stolen` percent of the machine's CPU time to others.
fn engine_rows(
    rows: &mut Vec<Row>,
    store: &str,
    run: &EngineRun,
    workers: usize,
    stolen: Option<f64>,
) {
    let rate = |n: f64, d: Duration| format!("{:.0}", n / d.as_secs_f64());
    let stolen = stolen.map_or(String::new(), |s| format!(", {s:.0} % of CPU stolen"));
    rows.push(Row {
        measure: "engine transitions/s",
        value: rate(run.transitions as f64, run.elapsed),
        how: format!(
            "{store}: {} requests x {TRANSITIONS_PER_REQUEST} in {:.2} s, {workers} at once{stolen}",
            run.requests,
            run.elapsed.as_secs_f64()
        ),
    });
    rows.push(Row {
        measure: "outbox notices delivered/s",
        value: rate(run.delivered as f64, run.delivery_elapsed),
        how: format!(
            "{store}: {} notices, the last delivered {:.2} s after the start{}",
            run.delivered,
            run.delivery_elapsed.as_secs_f64(),
            match run.failed_passes {
                0 => String::new(),
                n => format!(", {n} failed passes of timers or delivery run again"),
            }
        ),
    });
}

/// A fresh database on a throwaway PostgreSQL server that keeps its data as
/// a managed one does, opened as `startup` opens the store `[store] url` names.
async fn postgres_store(clock: Arc<ManualClock>) -> anyhow::Result<Database> {
    let url = postgres::durable_server().fresh_database().await;
    let mut config = Config::default();
    config.store.url = Some(DatabaseUrl::new(url));
    let settings = config.validate()?;
    Ok(startup::open_store(&settings, clock).await?)
}

/// The engine's clock: it does not move, the timers the workers wait for are
/// due at once.
fn start_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(Timestamp::from_millis(1_790_000_000_000)))
}

fn print_table(rows: &[Row]) {
    let w0 = rows.iter().map(|r| r.measure.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.value.len()).max().unwrap_or(0);
    println!();
    println!("{:<w0$}  {:>w1$}  how", "measure", "value");
    println!("{:-<w0$}  {:->w1$}  {:-<40}", "", "", "");
    for r in rows {
        println!("{:<w0$}  {:>w1$}  {}", r.measure, r.value, r.how);
    }
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// Engine throughput

struct EngineRun {
    requests: usize,
    transitions: usize,
    elapsed: Duration,
    delivered: u64,
    delivery_elapsed: Duration,
    /// Passes of the timers or the delivery that failed and ran again.
    failed_passes: u64,
}

fn actor(user: &str) -> anyhow::Result<Actor> {
    let id = UserId::parse(user).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(Actor {
        person: Person {
            handle: user.to_owned(),
            id,
        },
        surface: "null".into(),
    })
}

async fn engine_throughput(
    database: Database,
    clock: Arc<ManualClock>,
    requests: usize,
    workers: usize,
) -> anyhow::Result<EngineRun> {
    let settings = Config::default().validate()?;
    let store = database.store();
    let provisioner = Arc::new(Watched::new(DryRunProvisioner::new(Vec::new(), None)));
    let null: Arc<dyn ChatSurface> = Arc::new(NullSurface::default());
    let engine = Arc::new(Engine::new(
        Ports {
            store: store.clone(),
            provisioner: provisioner.clone(),
            directory: Arc::new(StaticDirectory::new(&settings.groups)),
            clock: clock.clone(),
        },
        settings.policy.clone(),
        settings.grammar.clone(),
        EngineSettings {
            warnings: settings.warnings.clone(),
            // Load from a few simulated people: no per-person limits.
            limits: passport::app::engine::PersonLimits {
                max_pending: 0,
                commands_per_minute: 0,
            },
            surfaces: vec![null.name().to_owned()],
            ..EngineSettings::default()
        },
    ));
    let dispatcher = Arc::new(Dispatcher::new(store.clone(), clock.clone(), vec![null]));
    let (stop_timers, stop_delivery) = (Arc::new(Notify::new()), Arc::new(Notify::new()));

    let started = Instant::now();
    let timers = tokio::spawn(background(engine.clone(), stop_timers.clone(), "timers", {
        let engine = engine.clone();
        move || {
            let engine = engine.clone();
            async move { engine.run_due().await.map(|ran| ran > 0) }
        }
    }));
    let delivery = tokio::spawn(background(
        engine.clone(),
        stop_delivery.clone(),
        "delivery",
        {
            let dispatcher = dispatcher.clone();
            move || {
                let dispatcher = dispatcher.clone();
                async move { dispatcher.deliver_due().await.map(|r| r.delivered > 0) }
            }
        },
    ));

    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let count = requests / workers + usize::from(w < requests % workers);
            let (engine, provisioner) = (engine.clone(), provisioner.clone());
            tokio::spawn(async move { lifecycles(&engine, &provisioner, w, count).await })
        })
        .collect();
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    // Done when every removal is committed: its timer goes in the same transaction.
    while !store.due_timers(clock.now(), 1).await?.is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    stop_timers.notify_one();
    let mut failed_passes = timers.await??;

    while !store.pending_notices(1, 1).await?.is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivery_elapsed = started.elapsed();
    stop_delivery.notify_one();
    failed_passes += delivery.await??;

    let counts = store.outbox_counts().await?;
    if counts.dead > 0 {
        bail!("{} notices could not be delivered", counts.dead);
    }
    if let broken @ Verification::Broken(_) = store.verify_logbook().await? {
        bail!("the Logbook does not verify after the run: {broken:?}");
    }
    if provisioner.revoked.load(Ordering::Relaxed) != done as u64 {
        bail!(
            "{done} requests ran, but only {} were removed",
            provisioner.revoked.load(Ordering::Relaxed)
        );
    }
    database.close().await;
    Ok(EngineRun {
        requests: done,
        transitions: done * TRANSITIONS_PER_REQUEST,
        elapsed,
        delivered: counts.delivered,
        delivery_elapsed,
        failed_passes,
    })
}

/// Runs `pass` again and again, like the scheduler: at once while it finds
/// work, otherwise when a commit wakes it or after a short while, until `stop`
/// is notified. A pass that fails is reported and run again, as the
/// scheduler does (giving up instead left the run waiting for good for what
/// the pass would have done); answers how many failed.
async fn background<F, Fut>(
    engine: Arc<Engine>,
    stop: Arc<Notify>,
    what: &'static str,
    pass: F,
) -> anyhow::Result<u64>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<bool, StoreError>>,
{
    let stopped = stop.notified();
    tokio::pin!(stopped);
    let mut failed = 0;
    loop {
        let woken = engine.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        match pass().await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                failed += 1;
                eprintln!("a {what} pass failed and runs again: {e}");
            }
        }
        tokio::select! {
            _ = &mut stopped => return Ok(failed),
            _ = &mut woken => {}
            _ = tokio::time::sleep(Duration::from_millis(2)) => {}
        }
    }
}

/// One worker: `count` requests one after another, each through its whole life.
async fn lifecycles(
    engine: &Engine,
    provisioner: &Watched,
    worker: usize,
    count: usize,
) -> anyhow::Result<usize> {
    let requester = actor(&format!("dev{worker}"))?;
    let approver = actor(if worker.is_multiple_of(2) {
        "lead1"
    } else {
        "lead2"
    })?;
    let instance = format!("i-{:017x}", worker + 1);
    for _ in 0..count {
        let reply = engine
            .handle_line(
                &requester,
                &format!("/passport request {instance} 2h ticket#123 benchmark"),
                None,
            )
            .await;
        let Some(id) = reply.request.filter(|_| reply.ok) else {
            bail!("request refused: {}", reply.text);
        };
        let granted = provisioner.wait(Call::Grant, id);
        let reply = engine
            .handle_line(&approver, &format!("/passport approve {id}"), None)
            .await;
        if !reply.ok {
            bail!("approve refused: {}", reply.text);
        }
        granted.await?;
        // The provisioning timer queues the activation as soon as the grant
        // returns, so it nearly always commits before this completion; when
        // not, the completion is refused (and writes nothing) and is asked again.
        let revoked = provisioner.wait(Call::Revoke, id);
        let mut attempts = 0;
        loop {
            let reply = engine
                .handle_line(&requester, &format!("/passport complete {id}"), None)
                .await;
            if reply.ok {
                break;
            }
            attempts += 1;
            if attempts == COMPLETE_ATTEMPTS {
                bail!("complete refused: {}", reply.text);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        revoked.await?;
    }
    Ok(count)
}

// ---------------------------------------------------------------------------
// Watching the provisioner

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Call {
    Grant,
    Revoke,
}

/// The dry-run provisioner, telling the workers when the timers reached their
/// requests: the timer task activates requests and removes users, whichever
/// worker's they are. (Polling the store instead would add as many reads as
/// there are workers.)
struct Watched {
    inner: DryRunProvisioner,
    waiting: Mutex<HashMap<(Call, RequestId), oneshot::Sender<()>>>,
    revoked: AtomicU64,
}

impl Watched {
    fn new(inner: DryRunProvisioner) -> Self {
        Self {
            inner,
            waiting: Mutex::new(HashMap::new()),
            revoked: AtomicU64::new(0),
        }
    }

    /// Resolves when `call` is made for `id`. Call it before the command that
    /// leads there, so that the call cannot be missed.
    fn wait(&self, call: Call, id: RequestId) -> impl Future<Output = anyhow::Result<()>> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((call, id), tx);
        async move { rx.await.with_context(|| format!("{id}: no {call:?} came")) }
    }

    fn called(&self, call: Call, id: RequestId) {
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(call, id));
        if let Some(tx) = waiting {
            let _ = tx.send(());
        }
    }
}

#[async_trait]
impl Provisioner for Watched {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn requires_ssh_key(&self) -> bool {
        self.inner.requires_ssh_key()
    }

    async fn describe(&self, ids: &[InstanceId]) -> Result<Vec<Described>, ProvisionError> {
        self.inner.describe(ids).await
    }

    async fn grant(&self, spec: &GrantSpec) -> Result<Vec<InstanceOutcome>, ProvisionError> {
        let outcomes = self.inner.grant(spec).await;
        self.called(Call::Grant, spec.request);
        outcomes
    }

    async fn revoke(&self, spec: &RevokeSpec) -> Result<Vec<InstanceOutcome>, ProvisionError> {
        let outcomes = self.inner.revoke(spec).await;
        self.revoked.fetch_add(1, Ordering::Relaxed);
        self.called(Call::Revoke, spec.request);
        outcomes
    }
}

// ---------------------------------------------------------------------------
// Logbook

struct LogbookRun {
    appended: usize,
    append_elapsed: Duration,
    filled: usize,
    fill_elapsed: Duration,
    verified: u64,
    verify_elapsed: Duration,
}

fn at(n: usize) -> Timestamp {
    Timestamp::from_millis(1_790_000_000_000 + n as i64)
}

/// Events shaped like the engine's, numbered `ns` to make each unique, to
/// append with `Store::record` (the way for events of no request change).
fn logged(ns: std::ops::Range<usize>) -> Effects {
    Effects {
        events: ns.map(event).collect(),
        ..Effects::default()
    }
}

fn event(n: usize) -> NewEvent {
    let request = format!("AR-{}", n / 7 + 1);
    NewEvent {
        at: at(n),
        actor: format!("dev{}", n % 500),
        request: Some(request.clone()),
        action: "approved".into(),
        details: serde_json::json!({
            "summary": format!("approved by lead1 for dev{} on i-0123456789abcdef0 (ticket#{n})", n % 500),
            "approvers": ["lead1"],
            "request": request,
        }),
    }
}

async fn logbook_throughput(
    path: &Path,
    appends: usize,
    verify_events: usize,
) -> anyhow::Result<LogbookRun> {
    let store = Arc::new(SqliteStore::open(path, Durability::Normal).await?);

    let started = Instant::now();
    let tasks: Vec<_> = (0..APPENDERS)
        .map(|caller| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in (caller..appends).step_by(APPENDERS) {
                    store.record(logged(n..n + 1), at(n)).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let append_elapsed = started.elapsed();

    let started = Instant::now();
    for from in (appends..verify_events).step_by(FILL_BATCH) {
        let to = (from + FILL_BATCH).min(verify_events);
        store.record(logged(from..to), at(to)).await?;
    }
    let fill_elapsed = started.elapsed();

    let started = Instant::now();
    let verification = store.verify_logbook().await?;
    let verify_elapsed = started.elapsed();
    let Verification::Intact { events, .. } = verification else {
        bail!("the Logbook does not verify: {verification:?}");
    };
    if events != verify_events as u64 {
        bail!("verified {events} events, expected {verify_events}");
    }
    store.close().await;
    Ok(LogbookRun {
        appended: appends,
        append_elapsed,
        filled: verify_events - appends,
        fill_elapsed,
        verified: events,
        verify_elapsed,
    })
}

/// How long the dispatcher's read of the outbox took with a backlog.
struct OutboxReads {
    first: Duration,
    /// The mean of [`LATER_READS`] reads after the first.
    later: Duration,
    /// Notices the first read answered.
    answered: usize,
}

/// Fills `database`'s outbox with `backlog` direct messages in lanes of
/// [`BACKLOG_LANE`], then times the dispatcher's read of it.
async fn outbox_reads(database: Database, backlog: usize) -> anyhow::Result<OutboxReads> {
    let store = database.store();
    let people = backlog.div_ceil(BACKLOG_LANE).max(1);
    for from in (0..backlog).step_by(FILL_BATCH) {
        let to = (from + FILL_BATCH).min(backlog);
        let outbox = (from..to)
            .map(|n| {
                let user = UserId::parse(&format!("U{:07}", n % people))?;
                let text = format!("Access to i-0123456789abcdef0 ends in 10 minutes ({n})");
                Ok(("console".to_owned(), Notice::direct(user, None, text)))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let fx = Effects {
            outbox,
            ..Effects::default()
        };
        store.record(fx, at(to)).await?;
    }
    let started = Instant::now();
    let answered = store.pending_notices(READ_LIMIT, PER_LANE).await?.len();
    let first = started.elapsed();
    let started = Instant::now();
    for _ in 0..LATER_READS {
        store.pending_notices(READ_LIMIT, PER_LANE).await?;
    }
    let later = started.elapsed() / LATER_READS;
    database.close().await;
    Ok(OutboxReads {
        first,
        later,
        answered,
    })
}

/// Runs `benches/baseline.py`; returns its rate and what it did.
fn python_baseline() -> anyhow::Result<(String, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/baseline.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .output()
        .context("python3")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default().to_owned();
    let rate = line.split_whitespace().next().unwrap_or("?").to_owned();
    Ok((
        rate,
        format!("benches/baseline.py: {line}, 3 inserts + commit each"),
    ))
}
