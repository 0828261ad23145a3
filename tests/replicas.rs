//! Several `passport serve` processes on one PostgreSQL database, as a
//! deployment runs them: the real binary, each with its own passport.toml
//! (its own port, the same `[store] url`), Slack's requests signed as Slack
//! signs them and sent over HTTP, and the fake Slack Web API of
//! `tests/fake_slack` in this test process recording what Passport posts.
//!
//! The processes run on the system clock, so nothing here can move their
//! time: the tests wait for conditions with a deadline, and make an access
//! end by moving its end into the past in the database (see
//! [`end_access_now`]). Processes are frozen with SIGSTOP and killed with
//! SIGKILL, so that a kill falls exactly where the test wants it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake_slack;
#[path = "common/postgres.rs"]
mod postgres;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

use common::chat_app::passport_bin;
use common::http_client::{self, Answer, HttpClient};
use fake_slack::FakeSlack;

const FORM: &str = "application/x-www-form-urlencoded";
const APPROVALS: &str = "C0APPROVALS";
const AUDIT: &str = "C0AUDIT";
const WEB: &str = common::WEB;

const DEV: &str = "U0DEV1";
const LEAD1: &str = "U0LEAD1";
const LEAD2: &str = "U0LEAD2";

/// How long a condition may take: a takeover waits for the survivor's next
/// pass (at most 5 s apart), everything else for a few round trips.
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The processes

/// A `passport serve` process and what the test knows of it.
struct Replica {
    name: String,
    child: Child,
    /// `http://127.0.0.1:PORT`
    base: String,
    config: PathBuf,
    /// Its standard output and error.
    log: PathBuf,
}

/// A free loopback port (free when asked: the process binds it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `passport <args>` with the configuration `config` and nothing from this
/// process's `PASSPORT_…` variables (the build's own would be read as settings).
fn passport(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(passport_bin());
    c.arg("--config").arg(config).args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PASSPORT_") {
            c.env_remove(name);
        }
    }
    c
}

/// Writes the configuration of replica `name` in `dir`: listening on `port`,
/// on the database `store` names (its `[store]` setting: `url = "…"` or
/// `path = "…"`), talking to `fake`, provisioning with the dry run.
/// approvers: U0LEAD1 and U0LEAD2, one approval needed; no per-person limits
/// (the load test sends many commands per person); scheduled jobs off.
fn write_config(dir: &Path, name: &str, store: &str, fake: &FakeSlack, port: u16) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let toml = format!(
        r#"provisioner = "dry-run"

[store]
{store}

[requests]
max_pending_per_requester = 0
commands_per_minute = 0

[groups]
approvers = ["{LEAD1}", "{LEAD2}"]
admins = ["U0BOSS"]

[[dry_run.instances]]
id = "{WEB}"
name = "web-1"
tags = {{ env = "staging" }}
private_ips = ["10.0.1.15"]

[jobs]
reconcile = "off"
digest = "off"
checkpoint = "off"

[log]
level = "info"

[http]
listen = "127.0.0.1:{port}"
shutdown_grace = "2s"

[slack]
signing_secret = "{secret}"
bot_token = "{token}"
approvals_channel = "{APPROVALS}"
audit_channel = "{AUDIT}"
api_url = "{api}"
channel_pace = "0"
team_id = "{team}"
app_id = "{app}"
"#,
        secret = fake_slack::SIGNING_SECRET,
        token = fake_slack::BOT_TOKEN,
        api = fake.api_url(),
        team = fake_slack::TEAM,
        app = fake_slack::APP,
    );
    std::fs::write(&path, toml).unwrap();
    path
}

impl Replica {
    /// Starts `passport serve` with `config`, writing its output to `log`
    /// (appended: a restarted replica keeps one log).
    fn spawn(name: &str, config: &Path, log: &Path) -> Self {
        let text = std::fs::read_to_string(config).unwrap();
        let listen = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap()
            .to_owned();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = passport(config, &["serve"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self {
            name: name.to_owned(),
            child,
            base: format!("http://{listen}"),
            config: config.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/readyz` answers 200 (the database takes writes, Slack
    /// answers).
    async fn ready(&mut self, http: &HttpClient) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited ({status}) before it was ready", self.name);
            }
            if self.readyz(http).await == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} was not ready within {PATIENCE:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The status `/readyz` answers, or `None` when nothing answers.
    async fn readyz(&self, http: &HttpClient) -> Option<u16> {
        let url: axum::http::Uri = format!("{}/readyz", self.base).parse().unwrap();
        let get = http.get(url);
        match tokio::time::timeout(Duration::from_secs(10), get).await {
            Ok(Ok(res)) => Some(res.status().as_u16()),
            _ => None,
        }
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {} failed", self.name);
    }

    /// Freezes the process: it holds its connections and its lease, and does nothing.
    fn freeze(&self) {
        self.signal("STOP");
    }

    /// Kills the process with SIGKILL and reaps it: until it is reaped its pid
    /// still exists, and the survivors would wait its lease out.
    fn kill(&mut self) {
        self.signal("KILL");
        self.child.wait().unwrap();
    }

    /// Posts `body` to `path`, signed as Slack signs it now.
    async fn post_signed(&self, http: &HttpClient, path: &str, body: &str) -> Answer {
        let headers = FakeSlack::signature_headers(body, unix_now());
        http_client::post(http, &format!("{}{path}", self.base), FORM, body, &headers).await
    }

    async fn command(&self, http: &HttpClient, fake: &FakeSlack, user: &str, text: &str) -> Answer {
        let body = fake.command_body(user, text);
        self.post_signed(http, "/slack/commands", &body).await
    }

    /// Clicks `value` on the card of request `n`, as `user`.
    async fn click(&self, c: &Cluster, user: &str, value: &str, n: i64) -> Answer {
        let (channel, ts) = c.card(n).await;
        let body = c.fake.click_body(user, value, &channel, &ts, None);
        self.post_signed(&c.http, "/slack/interactions", &body)
            .await
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {} (pid {}):", self.name, self.child.id());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Waits until `done` is true, asking every 100 ms, for at most `within`.
async fn until<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// The shared pieces: Slack, the database, and reading what happened

struct Cluster {
    fake: FakeSlack,
    url: String,
    db: PgPool,
    http: HttpClient,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// A fake Slack with Passport's people, and the database at `url`.
    async fn on(url: String) -> Self {
        let fake = FakeSlack::start().await;
        for (id, name) in [(DEV, "dev1"), (LEAD1, "lead1"), (LEAD2, "lead2")] {
            fake.add_user(id, name);
        }
        // The test's own reads survive a restart of PostgreSQL: a connection
        // is checked before use and replaced when it died.
        let db = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(&url)
            .unwrap();
        Self {
            fake,
            url,
            db,
            http: http_client::client(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The configuration of replica `name`, on a port of its own.
    fn config(&self, name: &str) -> PathBuf {
        write_config(
            self.dir.path(),
            name,
            &format!("url = \"{}\"", self.url),
            &self.fake,
            free_port(),
        )
    }

    /// Starts replica `name` with its configuration and waits until it is ready.
    async fn start(&self, name: &str, config: &Path) -> Replica {
        let log = self.dir.path().join(format!("{name}.log"));
        let mut replica = Replica::spawn(name, config, &log);
        replica.ready(&self.http).await;
        replica
    }

    /// The pid in the scheduler lease's holder (`host:pid:…`), if any.
    async fn lease_pid(&self) -> Option<u32> {
        let holder: Option<String> =
            sqlx::query_scalar("SELECT holder FROM leases WHERE name = 'scheduler'")
                .fetch_optional(&self.db)
                .await
                .unwrap();
        holder?.split(':').nth(1)?.parse().ok()
    }

    /// Waits until one of `replicas` holds the scheduler lease; answers its index.
    async fn holder(&self, replicas: &[&Replica]) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let pid = self.lease_pid().await;
            if let Some(found) = replicas.iter().position(|r| Some(r.pid()) == pid) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no replica holds the scheduler lease within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many Logbook events of `action` request `n` has.
    async fn events(&self, n: i64, action: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM logbook WHERE request = $1 AND action = $2")
            .bind(format!("AR-{n}"))
            .bind(action)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    async fn state(&self, n: i64) -> Option<String> {
        sqlx::query_scalar("SELECT state FROM requests WHERE id = $1")
            .bind(n)
            .fetch_optional(&self.db)
            .await
            .unwrap()
    }

    /// Notices not yet delivered (nor set aside).
    async fn undelivered(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL",
        )
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    /// The notices still waiting, for a failure's message.
    async fn waiting(&self) -> String {
        let rows = sqlx::query(
            "SELECT id, lane, attempts, next_attempt_at - $1, claimed_by, claimed_until - $1, \
                    COALESCE(last_error, ''), left(notice, 160) \
             FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL ORDER BY id LIMIT 20",
        )
        .bind(now_millis())
        .fetch_all(&self.db)
        .await
        .unwrap();
        rows.iter()
            .map(|r| {
                format!(
                    "#{} {} attempts={} due_in_ms={} claimed_by={:?} for_ms={:?} error={:?} {}\n",
                    r.get::<i64, _>(0),
                    r.get::<String, _>(1),
                    r.get::<i64, _>(2),
                    r.get::<i64, _>(3),
                    r.get::<Option<String>, _>(4),
                    r.get::<Option<i64>, _>(5),
                    r.get::<String, _>(6),
                    r.get::<String, _>(7),
                )
            })
            .collect()
    }

    /// Waits until every notice went out, naming those still waiting if not.
    async fn all_delivered(&self, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.undelivered().await > 0 {
            if Instant::now() > deadline {
                panic!("{what}: notices still waiting:\n{}", self.waiting().await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn set_aside(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL AND delivered_at IS NULL",
        )
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    /// The card of request `n` in Slack: its channel and ts, once posted.
    async fn posted_card(&self, n: i64) -> Option<(String, String)> {
        sqlx::query("SELECT channel, message FROM chat_refs WHERE request = $1")
            .bind(n)
            .fetch_optional(&self.db)
            .await
            .unwrap()
            .map(|row| (row.get(0), row.get(1)))
    }

    async fn card(&self, n: i64) -> (String, String) {
        self.posted_card(n)
            .await
            .unwrap_or_else(|| panic!("AR-{n} has no card yet"))
    }

    /// Waits until request `n` is in `state` and every notice went out.
    async fn settled_in(&self, n: i64, state: &str) {
        until(
            &format!("AR-{n} {state}, notices delivered"),
            PATIENCE,
            || async { self.state(n).await.as_deref() == Some(state) },
        )
        .await;
        self.all_delivered(&format!("AR-{n} {state}")).await;
    }

    /// Lines of the replicas' logs (every process that ran, killed ones
    /// included) in which the dry run did `document` for request `n`.
    fn dry_runs(&self, n: i64, document: &str) -> usize {
        let mut count = 0;
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                let log = std::fs::read_to_string(&path).unwrap();
                count += log
                    .lines()
                    .filter(|l| l.contains(&format!("[dry-run] AR-{n} → ")) && l.contains(document))
                    .count();
            }
        }
        count
    }

    /// `passport audit verify` with `config`, as a process: its exit code and output.
    fn audit_verify(&self, config: &Path) -> (Option<i32>, String) {
        let out = passport(config, &["audit", "verify"]).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }

    fn audit_lines(&self) -> Vec<String> {
        self.fake.posts_in(AUDIT).iter().map(|c| c.text()).collect()
    }
}

/// No text in `texts` twice: every notice arrived once.
fn each_once(what: &str, texts: &[String]) {
    let mut seen = HashSet::new();
    for t in texts {
        assert!(seen.insert(t), "{what}: {t:?} arrived twice in {texts:#?}");
    }
}

/// Ends the access of request `n` now, as if its time had run out.
///
/// The processes run on the system clock, and an access lasts at least five
/// minutes: rather than wait, or give the production binary a way to move
/// its time, the request's end is moved into the past where Passport keeps
/// it. That is the `expires_at` column, the same field of the request's JSON
/// `body` (a `Timestamp` is milliseconds since the epoch), and the due time
/// of its expiry and warning timers, moved back by as much so that they keep
/// their order. `version` moves on as with any change, so a process that
/// read the row before cannot write over this.
async fn end_access_now(db: &PgPool, n: i64) {
    let mut tx = db.begin().await.unwrap();
    let old: i64 = sqlx::query_scalar("SELECT expires_at FROM requests WHERE id = $1 FOR UPDATE")
        .bind(n)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let new = now_millis() - 1000;
    sqlx::query(
        "UPDATE requests SET expires_at = $2, version = version + 1, \
         body = jsonb_set(body::jsonb, '{expires_at}', to_jsonb($2::bigint))::text \
         WHERE id = $1",
    )
    .bind(n)
    .bind(new)
    .execute(&mut *tx)
    .await
    .unwrap();
    let moved = sqlx::query(
        "UPDATE timers SET due_at = due_at - $2 \
         WHERE request = $1 AND (kind = 'expiry' OR kind LIKE 'warning:%')",
    )
    .bind(n)
    .bind(old - new)
    .execute(&mut *tx)
    .await
    .unwrap()
    .rows_affected();
    assert!(moved >= 1, "AR-{n} has no expiry timer to move");
    tx.commit().await.unwrap();
}

// ---------------------------------------------------------------------------
// Kills

/// A request approved through one replica and expired under another, with
/// the lease holder killed twice: once between the approval's commit and its
/// delivery, once while the access is active and due to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_holder_killed_twice_in_a_lifecycle_loses_and_repeats_nothing() {
    let c = Cluster::on(postgres::fresh_database().await).await;
    let configs = [c.config("a"), c.config("b")];
    let a = c.start("a", &configs[0]).await;
    let b = c.start("b", &configs[1]).await;
    let held = c.holder(&[&a, &b]).await;
    let (mut holder, standby) = if held == 0 { (a, b) } else { (b, a) };

    // Requested through the standby; the holder posts the card.
    let answer = standby
        .command(
            &c.http,
            &c.fake,
            DEV,
            &format!("request {WEB} 1h ticket#1 x"),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    c.settled_in(1, "pending").await;
    let (_, ts) = c.card(1).await;

    // Between a commit and its delivery: with the holder frozen, the
    // approval commits through the standby, and its notices and the grant
    // wait for the scheduler. Then the holder dies without a word.
    holder.freeze();
    let answer = standby.click(&c, LEAD1, "approve AR-1", 1).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    until("the approval commits", PATIENCE, || async {
        c.events(1, "approved").await == 1
    })
    .await;
    assert!(c.undelivered().await > 0, "the approval's notices wait");
    assert_eq!(c.events(1, "granted").await, 0, "nobody provisions yet");
    holder.kill();

    // The survivor takes the lease over at once (the holder's pid is gone
    // from this machine), provisions once and delivers every notice once.
    let survivor = standby;
    until("the survivor takes the lease over", PATIENCE, || async {
        c.lease_pid().await == Some(survivor.pid())
    })
    .await;
    c.settled_in(1, "active").await;
    assert_eq!(c.events(1, "granted").await, 1);
    // The grant's notices out before the next kill: notices a holder has
    // claimed and not delivered wait out its claims (two minutes) when it
    // dies, longer than this test waits.
    c.all_delivered("the grant is announced").await;

    // In the middle of the lifecycle: the killed replica comes back (same
    // configuration, same port) and stands by; the new holder is frozen
    // while the access is active, its end is moved into the past, and the
    // holder is killed. The restarted replica expires it and removes the user.
    let again = format!("{}-again", holder.name);
    let mut restarted = c.start(&again, &holder.config).await;
    drop(holder);
    let mut holder = survivor;
    holder.freeze();
    end_access_now(&c.db, 1).await;
    holder.kill();
    until(
        "the restarted replica takes the lease over",
        PATIENCE,
        || async { c.lease_pid().await == Some(restarted.pid()) },
    )
    .await;
    c.settled_in(1, "expired").await;
    until("the user is removed", PATIENCE, || async {
        c.events(1, "removed").await == 1
    })
    .await;
    c.all_delivered("the user is removed").await;

    // Every grant and removal done once: in the Logbook and by the dry run.
    for (action, document, done) in [
        ("granted", "Passport-GrantLinux", "grant"),
        ("removed", "Passport-RevokeLinux", "removal"),
    ] {
        assert_eq!(c.events(1, action).await, 1, "one {action} event");
        assert_eq!(c.dry_runs(1, document), 1, "one {done} by the dry run");
    }
    assert_eq!(c.events(1, "approved").await, 1);
    assert_eq!(c.events(1, "expired").await, 1);

    // Every notice arrived once, whichever replica queued or delivered it.
    assert_eq!(c.fake.posts_in(APPROVALS).len(), 1, "one card");
    let thread = c.fake.thread(&ts);
    each_once("thread", &thread);
    assert!(thread.iter().any(|t| t.contains("approved")), "{thread:#?}");
    each_once("direct messages", &c.fake.dms(DEV));
    assert!(
        c.fake.dms(DEV).iter().any(|t| t.contains("has ended")),
        "{:#?}",
        c.fake.dms(DEV)
    );
    each_once("audit channel", &c.audit_lines());
    assert_eq!(c.set_aside().await, 0, "no notice set aside");

    let (code, out) = c.audit_verify(&restarted.config);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Logbook intact"), "{out}");
    assert_eq!(restarted.readyz(&c.http).await, Some(200));
    restarted.kill();
}

// ---------------------------------------------------------------------------
// Racing approvals

/// Two clicks on Approve at the same instant, one at each replica, for a
/// rule that needs one approval: by two approvers, or by one approver twice
/// (a double click that Slack sent to two replicas). One transition, one
/// grant, and the other click is told why nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_racing_at_two_replicas_make_one_transition() {
    const RACES: i64 = 20;
    let c = Cluster::on(postgres::fresh_database().await).await;
    let a = c.start("a", &c.config("a")).await;
    let b = c.start("b", &c.config("b")).await;
    for n in 1..=RACES {
        let via = if n % 2 == 0 { &a } else { &b };
        let answer = via
            .command(
                &c.http,
                &c.fake,
                DEV,
                &format!("request {WEB} 1h ticket#{n} race"),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.body.contains(&format!("AR-{n}")), "{}", answer.body);
    }
    let deadline = Instant::now() + PATIENCE;
    while c.posted_card(RACES).await.is_none() {
        if Instant::now() > deadline {
            let cards: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_refs")
                .fetch_one(&c.db)
                .await
                .unwrap();
            panic!(
                "AR-{RACES} has no card: {cards} cards recorded, {} posted, {} requests; waiting:\n{}",
                c.fake.posts_in(APPROVALS).len(),
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM requests")
                    .fetch_one(&c.db)
                    .await
                    .unwrap(),
                c.waiting().await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.all_delivered("every card is posted").await;

    let answers = |user: &str| c.fake.ephemerals(user);
    for n in 1..=RACES {
        let second = if n % 2 == 0 { LEAD1 } else { LEAD2 };
        let (channel, ts) = c.card(n).await;
        let value = format!("approve AR-{n}");
        let bodies = [
            c.fake.click_body(LEAD1, &value, &channel, &ts, None),
            c.fake.click_body(second, &value, &channel, &ts, None),
        ];
        let before = answers(LEAD1).len() + answers(LEAD2).len();
        // Both requests are on the wire before either is answered.
        let (x, y) = tokio::join!(
            a.post_signed(&c.http, "/slack/interactions", &bodies[0]),
            b.post_signed(&c.http, "/slack/interactions", &bodies[1]),
        );
        assert_eq!(
            (x.status, y.status),
            (200, 200),
            "AR-{n}: {} / {}",
            x.body,
            y.body
        );
        until(
            &format!("AR-{n}: both clicks are answered"),
            PATIENCE,
            || async { answers(LEAD1).len() + answers(LEAD2).len() >= before + 2 },
        )
        .await;
        let mut said: Vec<String> = answers(LEAD1);
        said.extend(answers(LEAD2));
        let said: Vec<&String> = said
            .iter()
            .filter(|s| s.contains(&format!("AR-{n}")))
            .collect();
        assert_eq!(said.len(), 2, "AR-{n}: {said:#?}");
        let refused: Vec<&&String> = said.iter().filter(|s| s.starts_with(":warning:")).collect();
        assert_eq!(refused.len(), 1, "AR-{n}: one click is refused: {said:#?}");
        assert!(
            refused[0].contains("already"),
            "AR-{n}: the refusal says why: {}",
            refused[0]
        );
        assert_eq!(c.events(n, "approved").await, 1, "AR-{n}: one transition");
    }

    until("every request is active and told", PATIENCE, || async {
        for n in 1..=RACES {
            if c.state(n).await.as_deref() != Some("active") {
                return false;
            }
        }
        true
    })
    .await;
    c.all_delivered("every request is active").await;
    for n in 1..=RACES {
        assert_eq!(c.events(n, "approved").await, 1, "AR-{n}");
        assert_eq!(c.events(n, "granted").await, 1, "AR-{n}");
        assert_eq!(c.dry_runs(n, "Passport-GrantLinux"), 1, "AR-{n}");
        let (_, ts) = c.card(n).await;
        each_once(&format!("thread of AR-{n}"), &c.fake.thread(&ts));
    }
    each_once("direct messages", &c.fake.dms(DEV));
    each_once("audit channel", &c.audit_lines());
    drop((a, b));
}

// ---------------------------------------------------------------------------
// PostgreSQL restarted

/// What became of one slash command sent during the load.
struct Sent {
    ticket: u32,
    status: u16,
    /// The answer in the acknowledgement.
    inline: String,
    /// The id of its `response_url` at the fake Slack, for a later answer.
    response_id: String,
}

/// The text of an answer to Slack.
fn text_of(answer: &Answer) -> String {
    answer.json()["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The request a reply says was made (`AR-n requested…` or the like), if any.
fn requested_in(text: &str) -> Option<i64> {
    if text.starts_with(":warning:") || text.starts_with("received:") {
        return None;
    }
    let at = text.find("AR-")?;
    let digits: String = text[at + 3..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// PostgreSQL stopped and started again under a stream of requests: every
/// request Passport said it made exists afterwards, every other command got
/// an answer saying it failed, and both replicas serve again without a
/// restart of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_loses_no_acknowledged_request() {
    const SENDERS: u32 = 6;
    const EACH: u32 = 40;
    let server = postgres::dedicated();
    let c = Cluster::on(server.fresh_database().await).await;
    let people: Vec<(String, String)> = (0..SENDERS)
        .map(|i| (format!("U0REQ{i}"), format!("req{i}")))
        .collect();
    for (id, name) in &people {
        c.fake.add_user(id, name);
    }
    let replicas = [
        c.start("a", &c.config("a")).await,
        c.start("b", &c.config("b")).await,
    ];

    // Senders in parallel, each a requester sending its commands one after
    // the other, alternately to each replica; PostgreSQL goes down for two
    // seconds a moment after they start.
    let started = Instant::now();
    let sent = {
        let senders = people.iter().enumerate().map(|(i, (user, _))| {
            let (c, replicas) = (&c, &replicas);
            async move {
                let mut sent = Vec::new();
                for k in 0..EACH {
                    let ticket = 1 + i as u32 * EACH + k;
                    let body = c
                        .fake
                        .command_body(user, &format!("request {WEB} 1h ticket#{ticket} load"));
                    let form: BTreeMap<String, String> = serde_urlencoded::from_str(&body).unwrap();
                    let response_id = form["response_url"].rsplit('/').next().unwrap().to_owned();
                    let replica = &replicas[(k as usize + i) % 2];
                    let answer = replica.post_signed(&c.http, "/slack/commands", &body).await;
                    sent.push(Sent {
                        ticket,
                        status: answer.status,
                        inline: text_of(&answer),
                        response_id,
                    });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                sent
            }
        });
        let restart = async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            tokio::task::block_in_place(|| server.stop());
            tokio::time::sleep(Duration::from_secs(2)).await;
            tokio::task::block_in_place(|| server.start_again());
        };
        let (sent, ()) = tokio::join!(futures::future::join_all(senders), restart);
        sent.into_iter().flatten().collect::<Vec<_>>()
    };
    let took = started.elapsed();

    // Every command is answered: in the acknowledgement, or later through
    // its response_url when the work outlasted Slack's 3 seconds.
    let later = |id: &str| -> Option<String> {
        c.fake
            .ok_calls("response_url")
            .into_iter()
            .find(|call| call.channel.as_deref() == Some(id))
            .map(|call| call.text())
    };
    until("every command is answered", PATIENCE, || async {
        sent.iter()
            .all(|s| !s.inline.starts_with("received:") || later(&s.response_id).is_some())
    })
    .await;

    let mut made = 0;
    let mut refused = Vec::new();
    for s in &sent {
        assert_eq!(s.status, 200, "ticket#{}: {}", s.ticket, s.inline);
        let answer = match later(&s.response_id) {
            Some(text) if s.inline.starts_with("received:") => text,
            _ => s.inline.clone(),
        };
        match requested_in(&answer) {
            Some(n) => {
                made += 1;
                // Acknowledged: the request exists, with this ticket.
                let body: Option<String> =
                    sqlx::query_scalar("SELECT body FROM requests WHERE id = $1")
                        .bind(n)
                        .fetch_optional(&c.db)
                        .await
                        .unwrap();
                let body = body.unwrap_or_else(|| {
                    panic!(
                        "ticket#{} was acknowledged as AR-{n}, which is lost",
                        s.ticket
                    )
                });
                assert!(
                    body.contains(&format!("\"ticket#{}\"", s.ticket)),
                    "AR-{n} is not ticket#{}: {body}",
                    s.ticket
                );
                assert_eq!(c.events(n, "requested").await, 1, "AR-{n}");
            }
            None => {
                assert!(
                    answer.starts_with(":warning:"),
                    "ticket#{}: {answer}",
                    s.ticket
                );
                refused.push(answer);
            }
        }
    }
    // Nothing was made that its requester was not told of.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM requests")
        .fetch_one(&c.db)
        .await
        .unwrap();
    assert_eq!(stored, made, "requests stored, and requests acknowledged");
    // The outage was felt: commands failed, or waited for the database
    // longer than Slack waits for an acknowledgement.
    let delayed = sent
        .iter()
        .filter(|s| s.inline.starts_with("received:"))
        .count();
    assert!(
        !refused.is_empty() || delayed > 0,
        "the outage held up nothing in {took:?}: it came too late to test anything"
    );
    eprintln!(
        "{} commands in {took:?}: {made} made ({delayed} answered later), {} refused: {:?}",
        sent.len(),
        refused.len(),
        refused.iter().collect::<HashSet<_>>()
    );

    // Both replicas recover without a restart: ready again, taking requests.
    for (i, replica) in replicas.iter().enumerate() {
        until(
            &format!("{} is ready again", replica.name),
            PATIENCE,
            || async { replica.readyz(&c.http).await == Some(200) },
        )
        .await;
        let ticket = 10_000 + i;
        let answer = replica
            .command(
                &c.http,
                &c.fake,
                DEV,
                &format!("request {WEB} 1h ticket#{ticket} after"),
            )
            .await;
        let text = text_of(&answer);
        assert!(requested_in(&text).is_some(), "{}: {text}", replica.name);
    }
    c.all_delivered("after the restart").await;
    assert_eq!(c.set_aside().await, 0, "no notice set aside");
    // Every request has its card. A notice whose delivery Slack took but
    // whose record PostgreSQL lost with the restart goes again: delivery is
    // at least once across an outage of the database, so cards and audit
    // lines are not counted here.
    let cards: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_refs")
        .fetch_one(&c.db)
        .await
        .unwrap();
    assert_eq!(cards, made + 2, "one card per request");
    assert!(c.fake.posts_in(APPROVALS).len() as i64 >= cards);
    drop(replicas);
}

/// SIGTERM while a backlog goes to a healthy Slack (one process, on SQLite):
/// the sends stop before the grace period ends and every notice Slack got
/// is recorded as delivered, so none goes again at the next start. Cut off
/// between its send and its record, a notice stayed undelivered in the
/// outbox although Slack had it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_delivery_records_every_notice_that_went() {
    let fake = FakeSlack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("passport.db");
    let config = write_config(
        dir.path(),
        "solo",
        &format!("path = \"{}\"", db.display()),
        &fake,
        free_port(),
    );
    let migrated = passport(&config, &["migrate"]).output().unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    const QUEUED: usize = 20_000;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {QUEUED}) \
             INSERT INTO outbox (surface, lane, request, notice, created_at, next_attempt_at) \
             SELECT 'slack', 'audit', NULL, json_object('type', 'audit', 'text', 'line ' || i), 0, 0 \
             FROM n;"
        ))
        .unwrap();
    let mut solo = Replica::spawn("solo", &config, &dir.path().join("solo.log"));
    until("the backlog being delivered", PATIENCE, || async {
        fake.posts_in(AUDIT).len() >= 500
    })
    .await;
    solo.signal("TERM");
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = solo.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(2 + 5),
            "serve did not stop within the grace period (2s) and a margin"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");

    let line = regex::Regex::new(r"line (\d+)").unwrap();
    let received: HashSet<u64> = fake
        .posts_in(AUDIT)
        .iter()
        .filter_map(|c| line.captures(&c.text()).map(|m| m[1].parse().unwrap()))
        .collect();
    assert!(
        received.len() < QUEUED,
        "the whole backlog went before the signal, so nothing was cut off"
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut delivered = conn
        .prepare(
            "SELECT CAST(substr(json_extract(notice, '$.text'), 6) AS INTEGER) \
             FROM outbox WHERE delivered_at IS NOT NULL",
        )
        .unwrap();
    let delivered: HashSet<u64> = delivered
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut unrecorded: Vec<_> = received.difference(&delivered).collect();
    unrecorded.sort_unstable();
    assert!(
        unrecorded.is_empty(),
        "{} of the {} notices Slack got are not recorded as delivered, so they would go again: {:?}",
        unrecorded.len(),
        received.len(),
        &unrecorded[..unrecorded.len().min(20)]
    );
}

/// Two processes deliver from one PostgreSQL outbox. One read two lanes
/// and, delivering one lane at a time, keeps the second waiting behind a
/// send that takes longer than its claim on it: the other process takes
/// that lane over and delivers it. When the first gets to the lane, it reads
/// it again instead of sending what it read before, so its notice goes
/// once. (A send that itself outlasts its claim is not covered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_whose_claim_ran_out_while_it_waited_is_not_sent_again() {
    use common::{PacedAudit, RecordingSurface};
    use passport::adapters::clock::ManualClock;
    use passport::adapters::postgres::{PgOptions, PgStore};
    use passport::app::dispatch::Dispatcher;
    use passport::app::ports::{ChatSurface, Clock, Store};
    use passport::domain::time::{Span, Timestamp};

    let url = postgres::fresh_database().await;
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_000_000)));
    let store = || async {
        let store = PgStore::connect(&url, PgOptions::new(clock.clone() as Arc<dyn Clock>))
            .await
            .unwrap();
        Arc::new(store) as Arc<dyn Store>
    };
    let (first_store, second_store) = (store().await, store().await);
    let db = PgPoolOptions::new().connect(&url).await.unwrap();
    // The audit line was queued first, so its lane is delivered first.
    for (lane, notice) in [
        (
            "audit",
            serde_json::json!({"type": "audit", "text": "line 1"}),
        ),
        (
            "user:U0SECOND",
            serde_json::json!({"type": "direct", "user": "U0SECOND", "request": null, "text": "hello", "actions": []}),
        ),
    ] {
        sqlx::query(
            "INSERT INTO outbox (surface, lane, request, notice, created_at, next_attempt_at) \
             VALUES ('test', $1, NULL, $2, 0, 0)",
        )
        .bind(lane)
        .bind(notice.to_string())
        .execute(&db)
        .await
        .unwrap();
    }
    // The first process's audit channel holds its line until released.
    let first_platform = Arc::new(PacedAudit::new(Arc::new(RecordingSurface::default())));
    let second_platform = Arc::new(RecordingSurface::default());
    let first = Arc::new(
        Dispatcher::new(
            first_store,
            clock.clone() as Arc<dyn Clock>,
            vec![first_platform.clone() as Arc<dyn ChatSurface>],
        )
        .one_lane_at_a_time(),
    );
    let second = Dispatcher::new(
        second_store,
        clock.clone() as Arc<dyn Clock>,
        vec![second_platform.clone() as Arc<dyn ChatSurface>],
    );
    let pass = tokio::spawn({
        let first = first.clone();
        async move { first.deliver_due().await }
    });
    // The first process holds both lanes, sending the audit line.
    first_platform.sending.notified().await;
    // Its claims run out; the second process takes both lanes over.
    clock.advance(Span::from_minutes(3));
    second.deliver_due().await.unwrap();
    assert_eq!(second_platform.directs("U0SECOND").len(), 1);
    first_platform.paced.add_permits(1);
    pass.await.unwrap().unwrap();
    assert_eq!(
        first_platform.inner.directs("U0SECOND").len() + second_platform.directs("U0SECOND").len(),
        1,
        "U0SECOND's notice was sent twice"
    );
}
