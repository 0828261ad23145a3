//! How promptly the scheduler ends access, on a fresh SQLite file with real time.
//!
//! Run with `cargo bench --bench scheduler` (release build; about 7 minutes).
//! Sizes: `PASSPORT_BENCH_ACTIVE` (default 10000), `PASSPORT_BENCH_SPREAD_SECS`
//! (default 300), `PASSPORT_BENCH_OVERDUE` (default 1000).
//!
//! 1. Expiry latency: that many active requests whose expiries are spread over
//!    the spread window; a provisioner fake records when each revocation is
//!    issued; reported as percentiles of (issued − expiry).
//! 2. Restart: that many overdue active requests in a database whose process
//!    died; time from opening the store to the last revocation issued.
//! 3. Idle: CPU time and memory of the scheduler over 30 s with the active
//!    requests far from expiry.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use passport::adapters::clock::{OffsetClock, SystemClock};
use passport::adapters::console::NullSurface;
use passport::adapters::directory::StaticDirectory;
use passport::adapters::dry_run::DryRunProvisioner;
use passport::adapters::sqlite::{Durability, SqliteStore};
use passport::app::dispatch::Dispatcher;
use passport::app::engine::{Actor, Engine, EngineSettings, Ports};
use passport::app::jobs::Jobs;
use passport::app::ports::{
    ChatSurface, Clock, Described, GrantSpec, ProvisionError, Provisioner, RevokeSpec, Store,
};
use passport::config::Config;
use passport::domain::command::{Command, RequestSpec};
use passport::domain::request::{InstanceOutcome, RequestState};
use passport::domain::time::{Span, Timestamp};
use passport::domain::values::{
    DurationLimits, GrantDuration, InstanceId, InstanceIds, Person, RequestId, Ticket, TicketRules,
    UserId,
};
use passport::scheduler::Scheduler;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Records when each request's revocation was issued.
struct Recorder {
    inner: DryRunProvisioner,
    clock: Arc<dyn Clock>,
    revoked: Mutex<HashMap<RequestId, Timestamp>>,
}

#[async_trait]
impl Provisioner for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    async fn describe(&self, ids: &[InstanceId]) -> Result<Vec<Described>, ProvisionError> {
        self.inner.describe(ids).await
    }
    async fn grant(&self, spec: &GrantSpec) -> Result<Vec<InstanceOutcome>, ProvisionError> {
        self.inner.grant(spec).await
    }
    async fn revoke(&self, spec: &RevokeSpec) -> Result<Vec<InstanceOutcome>, ProvisionError> {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(spec.request)
            .or_insert(self.clock.now());
        self.inner.revoke(spec).await
    }
}

struct Rig {
    engine: Arc<Engine>,
    scheduler: Arc<Scheduler>,
    store: Arc<SqliteStore>,
    recorder: Arc<Recorder>,
}

async fn rig(db: &Path, clock: Arc<dyn Clock>) -> anyhow::Result<Rig> {
    let mut config = Config::default();
    config.policy.default.approvals = 0; // auto-approve: the setup goes straight to Active
    config.policy.default.approvers = Vec::new();
    let settings = config.validate()?;
    let store = Arc::new(SqliteStore::open(db, Durability::Normal).await?);
    let recorder = Arc::new(Recorder {
        inner: DryRunProvisioner::new(Vec::new(), None),
        clock: clock.clone(),
        revoked: Mutex::new(HashMap::new()),
    });
    let surface: Arc<dyn ChatSurface> = Arc::new(NullSurface::default());
    let engine = Arc::new(Engine::new(
        Ports {
            store: store.clone(),
            provisioner: recorder.clone(),
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
            surfaces: vec![surface.name().to_owned()],
            ..EngineSettings::default()
        },
    ));
    let dispatcher = Arc::new(Dispatcher::new(store.clone(), clock, vec![surface]));
    let scheduler = Arc::new(Scheduler::new(engine.clone(), dispatcher, Jobs::default()));
    Ok(Rig {
        engine,
        scheduler,
        store,
        recorder,
    })
}

/// Creates `n` auto-approved requests; request i lasts `duration(i)`.
async fn fill(rig: &Rig, n: usize, duration: impl Fn(usize) -> Span) -> anyhow::Result<()> {
    let limits = DurationLimits {
        min: Span::from_secs(1),
        ..DurationLimits::default()
    };
    let tickets = TicketRules::default();
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let engine = rig.engine.clone();
            let spec = RequestSpec {
                instances: InstanceIds::parse([format!("i-{:08x}", i).as_str()], 10)?,
                duration: GrantDuration::within(duration(i), &limits)
                    .map_err(|e| anyhow::anyhow!(e.0))?,
                ticket: Ticket::parse("ticket#1", &tickets).map_err(|e| anyhow::anyhow!(e.0))?,
                reason: None,
            };
            let actor = Actor {
                person: Person {
                    id: UserId::parse(&format!("u{i}")).map_err(|e| anyhow::anyhow!(e.0))?,
                    handle: format!("u{i}"),
                },
                surface: "null".into(),
            };
            tasks.push(tokio::spawn(async move {
                engine.handle(&actor, Command::Request(spec)).await
            }));
        }
        for t in tasks {
            let reply = t.await?;
            anyhow::ensure!(reply.ok, "request refused: {}", reply.text);
        }
        rig.engine.run_due().await?; // provision: the requests become active
    }
    Ok(())
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn proc_status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l.trim_start_matches(field).trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// CPU seconds (user + system) used by this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of /proc/self/stat (11 and 12 after the name).
    (ticks(11) + ticks(12)) / 100.0
}

async fn expiry_latency(dir: &Path, active: usize, spread: Span) -> anyhow::Result<()> {
    let rig = rig(&dir.join("latency.db"), Arc::new(SystemClock)).await?;
    let started = Instant::now();
    // Expiries start a minute after the setup began, then spread evenly.
    let lead = Span::from_secs(60);
    fill(&rig, active, |i| {
        Span::from_millis(lead.as_millis() + spread.as_millis() * i as i64 / active as i64)
    })
    .await?;
    println!(
        "setup: {active} active requests in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let expiries: HashMap<RequestId, Timestamp> = rig
        .store
        .requests_in(
            &[RequestState::Active],
            Default::default(),
            active as u32 + 10,
        )
        .await?
        .into_iter()
        .filter_map(|r| Some((r.id, r.expires_at?)))
        .collect();
    anyhow::ensure!(
        expiries.len() == active,
        "only {} requests are active",
        expiries.len()
    );
    let last = expiries
        .values()
        .max()
        .copied()
        .unwrap_or(Timestamp::from_millis(0));
    let cpu_before = cpu_seconds();
    let loop_task = rig.scheduler.clone().spawn();
    let deadline =
        Instant::now() + last.since(SystemClock.now()).to_std() + Duration::from_secs(30);
    while rig.recorder.revoked.lock().map(|r| r.len()).unwrap_or(0) < active
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    loop_task.abort();
    let revoked = rig
        .recorder
        .revoked
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    let mut lat: Vec<i64> = expiries
        .iter()
        .filter_map(|(id, exp)| revoked.get(id).map(|t| t.as_millis() - exp.as_millis()))
        .collect();
    lat.sort_unstable();
    println!(
        "expiry latency over {} revocations (expiries spread over {spread}): p50 {} ms, p99 {} ms, max {} ms, missing {}; CPU {:.1} s over the window; peak RSS {}",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0),
        active - lat.len(),
        cpu_seconds() - cpu_before,
        proc_status("VmHWM:")
    );
    rig.store.close().await;
    Ok(())
}

async fn restart(dir: &Path, overdue: usize) -> anyhow::Result<()> {
    let db = dir.join("restart.db");
    {
        let first = rig(&db, Arc::new(SystemClock)).await?;
        fill(&first, overdue, |_| Span::from_minutes(5)).await?;
        first.store.close().await;
        // The process is gone: no scheduler ran, nothing was released.
    }
    // It comes back ten minutes later, past every expiry.
    let clock = OffsetClock::default();
    clock.advance(Span::from_minutes(10));
    let started = Instant::now();
    let second = rig(&db, Arc::new(clock)).await?;
    let loop_task = second.scheduler.clone().spawn();
    while second.recorder.revoked.lock().map(|r| r.len()).unwrap_or(0) < overdue
        && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    loop_task.abort();
    let n = second.recorder.revoked.lock().map(|r| r.len()).unwrap_or(0);
    println!(
        "restart: {n} of {overdue} overdue revocations issued {:.0} ms after start",
        took.as_secs_f64() * 1000.0
    );
    second.store.close().await;
    Ok(())
}

async fn idle(dir: &Path, active: usize) -> anyhow::Result<()> {
    let rig = rig(&dir.join("idle.db"), Arc::new(SystemClock)).await?;
    fill(&rig, active, |_| Span::from_hours(2)).await?;
    // Let the setup's own work (deliveries) finish before measuring.
    rig.scheduler.settle().await?;
    let loop_task = rig.scheduler.clone().spawn();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let cpu = cpu_seconds() - cpu_before;
    loop_task.abort();
    println!(
        "idle with {active} active requests: {:.3} s CPU over 30 s ({:.2} %), RSS {}",
        cpu,
        cpu / 30.0 * 100.0,
        proc_status("VmRSS:")
    );
    rig.store.close().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let active = setting("PASSPORT_BENCH_ACTIVE", 10_000);
    let spread = Span::from_secs(setting("PASSPORT_BENCH_SPREAD_SECS", 300) as i64);
    let overdue = setting("PASSPORT_BENCH_OVERDUE", 1_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    runtime.block_on(async {
        idle(dir.path(), active).await?;
        restart(dir.path(), overdue).await?;
        expiry_latency(dir.path(), active, spread).await
    })
}
