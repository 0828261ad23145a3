//! What the end-to-end tests of the chat adapters (Slack, Discord) set up
//! alike: the configuration they start from, the dry-run fleet, the clock,
//! `passport doctor` run as a process, and what the start warned about.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use passport::adapters::aws::AwsConfig;
use passport::adapters::clock::{ManualClock, SystemClock};
use passport::app::ports::Clock;
use passport::config::{Config, DryRunInstance, ProvisionerChoice, Settings};
use passport::domain::notice::Notice;
use passport::domain::request::RequestState;
use passport::domain::time::{Span, Timestamp};
use passport::domain::values::RequestId;
use passport::startup::{self, ChatOptions};

pub use super::{PROD, WEB};

/// The Windows instance of [`fleet`].
pub const WIN: &str = "i-0ccccccccccccccc3";

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A number no other call in this test binary answers (ids, tokens).
pub fn unique() -> u64 {
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// A configuration on the database `db` with every scheduled job off and
/// the dry run as provisioner.
pub fn quiet_config(db: &Path) -> Config {
    let mut c = Config::default();
    c.store.path = Some(db.to_path_buf());
    c.jobs.reconcile = "off".into();
    c.jobs.digest = "off".into();
    c.jobs.checkpoint = "off".into();
    c.provisioner = Some(ProvisionerChoice::DryRun);
    c
}

/// [`quiet_config`] with ticket links and the dry run describing [`fleet`].
pub fn chat_config(db: &Path) -> Config {
    let mut c = quiet_config(db);
    c.requests.ticket_url = Some("https://tickets.example.com/browse/{ticket}".into());
    c.dry_run.instances = fleet();
    c
}

/// web-1 (staging), db-prod-1 (env=prod) and win-1 (staging, Windows).
pub fn fleet() -> Vec<DryRunInstance> {
    let instance = |id: &str, name: &str, platform: &str, env: &str, ip: &str| DryRunInstance {
        id: id.into(),
        name: Some(name.into()),
        platform: platform.into(),
        state: "running".into(),
        tags: BTreeMap::from([("env".into(), env.into())]),
        private_ips: vec![ip.into()],
    };
    vec![
        instance(WEB, "web-1", "linux", "staging", "10.0.1.15"),
        instance(PROD, "db-prod-1", "linux", "prod", "10.1.1.20"),
        instance(WIN, "win-1", "windows", "staging", "10.0.1.30"),
    ]
}

/// Sets `aws.password_message_ttl` to `ttl`. The provisioner stays the
/// test's own: `[aws]` only carries the ttl.
pub fn set_password_message_ttl(config: &mut Config, ttl: &str) {
    config.provisioner = None;
    config.aws = Some(AwsConfig {
        password_message_ttl: ttl.into(),
        ..AwsConfig::default()
    });
}

/// A hand-moved clock that starts at the real time (Slack and Discord check
/// request timestamps against it).
pub fn clock_at_now() -> ManualClock {
    ManualClock::new(SystemClock.now())
}

/// What the tests start the Slack application with unless they say
/// otherwise: the clock `clock`, the logged dry run, answers within 2.5 s
/// (Slack allows 3 s), nothing labelled DRY RUN, no readiness probes.
pub fn slack_options(clock: &ManualClock, settings: &Settings) -> ChatOptions {
    ChatOptions {
        clock: Arc::new(clock.clone()),
        provisioner: startup::logged_dry_run(settings),
        ack_deadline: Duration::from_millis(2500),
        dry_run_label: false,
        probes: Vec::new(),
    }
}

/// A fresh directory and the database path in it.
pub fn fresh_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("passport.db");
    (dir, db)
}

/// Makes saving a new request in `db` take a while (it first counts to a
/// million), so that work creating one cannot finish before an
/// acknowledgement due at once.
pub fn slow_request_creation(db: &Path) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER slow BEFORE INSERT ON requests BEGIN \
             SELECT count(*) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL \
             SELECT i + 1 FROM n WHERE i < 1000000) SELECT i FROM n); END;",
        )
        .unwrap();
}

/// Waits until `done`, polling every 10 ms for up to 5 s, then fails
/// naming `what`: for what the application does on its own tasks.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

pub use super::process::bin as passport_bin;

/// How a `passport` process ended.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `passport doctor` in a fresh directory with the configuration file
/// `toml` makes from the database path there, and the environment `env`
/// (the secrets).
pub async fn run_doctor(toml: impl FnOnce(&Path) -> String, env: &[(&str, &str)]) -> Ran {
    let (dir, db) = fresh_db();
    let config = dir.path().join("passport.toml");
    std::fs::write(&config, toml(&db)).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(passport_bin())
            .arg("--config")
            .arg(&config)
            .arg("doctor")
            .current_dir(dir.path())
            .env_remove("PASSPORT_CONFIG")
            .env_remove("PASSPORT_LOG")
            .envs(env)
            .output()
            .unwrap();
        drop(dir);
        out
    })
    .await
    .unwrap();
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether any of `texts` contains `needle`.
pub fn contains(texts: &[String], needle: &str) -> bool {
    texts.iter().any(|t| t.contains(needle))
}

/// Asserts that the start warned exactly once for each of `expected` (each
/// a part of one warning) and about none of `unnamed`.
pub fn assert_warned(warned: &[String], expected: &[String], unnamed: &[&str]) {
    assert_eq!(warned.len(), expected.len(), "{warned:#?}");
    for expected in expected {
        assert!(
            warned.iter().any(|l| l.contains(expected.as_str())),
            "{expected}: {warned:#?}"
        );
    }
    assert!(
        !warned.iter().any(|l| unnamed.iter().any(|u| l.contains(u))),
        "{warned:#?}"
    );
}

/// Runs what is due and delivers until the outbox of `app` is empty, moving
/// `clock` past each Retry-After.
pub async fn deliver_everything(app: &startup::App, clock: &ManualClock) {
    for _ in 0..200 {
        app.scheduler.settle().await.unwrap();
        let counts = app.store.outbox_counts().await.unwrap();
        if counts.pending == 0 {
            return;
        }
        clock.advance(Span::from_secs(1));
    }
    panic!("the outbox never emptied");
}

fn request_id(request: u64) -> RequestId {
    RequestId::parse(&format!("AR-{request}")).unwrap()
}

/// Where the card of request `request` was posted on `surface`: the
/// channel and the message.
pub async fn card_of(app: &startup::App, surface: &str, request: u64) -> (String, String) {
    let at = app
        .store
        .chat_ref(request_id(request), surface)
        .await
        .unwrap()
        .expect("the card was posted");
    (at.channel, at.message)
}

pub async fn state_of(app: &startup::App, request: u64) -> RequestState {
    let id = request_id(request);
    app.store.get(id).await.unwrap().unwrap().state
}

/// How many Logbook events of request `request` are `action`.
pub async fn events_of(app: &startup::App, request: u64, action: &str) -> usize {
    let events = app
        .store
        .audit_events(Some(request_id(request)), None)
        .await
        .unwrap();
    events.iter().filter(|e| e.action == action).count()
}

/// Every notice in the outbox of the database `db`, in the order they were
/// queued: its lane, the notice, and whether it was delivered.
pub fn outbox(db: &Path) -> Vec<(String, Notice, bool)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT lane, notice, delivered_at IS NOT NULL FROM outbox ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        let notice: String = r.get(1)?;
        Ok((r.get(0)?, serde_json::from_str(&notice).unwrap(), r.get(2)?))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// What the chat platform must have been sent, lane by lane, once every
/// notice in the outbox went out: each text as Passport shows it there.
pub struct Lanes {
    pub threads: BTreeMap<u64, Vec<String>>,
    pub dms: BTreeMap<String, Vec<String>>,
    pub audit: Vec<String>,
}

impl Lanes {
    /// The lanes of the outbox of `app` (on the database `db`), after
    /// asserting that every notice in it was delivered; `shown` is how the
    /// platform shows a text.
    pub async fn delivered(app: &startup::App, db: &Path, shown: impl Fn(&str) -> String) -> Self {
        let counts = app.store.outbox_counts().await.unwrap();
        assert_eq!((counts.pending, counts.dead), (0, 0), "{counts:?}");
        let mut lanes = Lanes {
            threads: BTreeMap::new(),
            dms: BTreeMap::new(),
            audit: Vec::new(),
        };
        for (_, notice, delivered) in outbox(db) {
            assert!(delivered);
            match notice {
                Notice::Thread { request, text, .. } => lanes
                    .threads
                    .entry(request.number())
                    .or_default()
                    .push(shown(&text)),
                Notice::Direct { user, text, .. } => lanes
                    .dms
                    .entry(user.to_string())
                    .or_default()
                    .push(shown(&text)),
                Notice::Audit { text } => lanes.audit.push(shown(&text)),
                Notice::Card(_) => {}
            }
        }
        lanes
    }

    /// Asserts that each person got their direct messages (`dms_to`) and
    /// the audit channel its lines (`audit`), each once and in order.
    pub fn assert_dms_and_audit(&self, dms_to: impl Fn(&str) -> Vec<String>, audit: Vec<String>) {
        for (user, expected) in &self.dms {
            // Windows passwords go straight to the person, never through the outbox.
            let posted: Vec<String> = dms_to(user.as_str())
                .into_iter()
                .filter(|t| !t.starts_with("Password for"))
                .collect();
            assert_eq!(&posted, expected, "direct messages to {user}");
        }
        assert_eq!(audit, self.audit, "audit channel");
    }
}

/// When the one password message of `app` waiting for deletion is due.
pub async fn password_deletion_due(app: &startup::App) -> Timestamp {
    let due = app
        .store
        .due_password_messages(Timestamp::from_millis(i64::MAX), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1, "{due:?}");
    due[0].due
}
