//! Shared test helpers: an engine on a fresh SQLite file with a hand-moved
//! clock, a chat surface that records what it is asked to post, and a
//! provisioner whose outcomes the test decides. [`chat_app`] and
//! [`http_client`] hold what the Slack and Discord tests over real HTTP set
//! up alike; [`process`] runs the `passport` binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod chat_app;
pub mod http_client;
pub mod process;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use passport::adapters::clock::ManualClock;
use passport::adapters::directory::StaticDirectory;
use passport::adapters::sqlite::{Durability, SqliteStore};
use passport::app::dispatch::Dispatcher;
use passport::app::engine::{Actor, Engine, EngineSettings, Ports, Reply};
use passport::app::ports::{
    ChatError, ChatSurface, Described, GrantSpec, MessageRef, ProvisionError, Provisioner,
    RevokeSpec, Store,
};
use passport::config::{Config, RuleConfig};
use passport::domain::logbook::LogEvent;
use passport::domain::notice::{Action, CardView};
use passport::domain::request::{AccessRequest, InstanceInfo, InstanceOutcome, Platform};
use passport::domain::time::{Span, Timestamp};
use passport::domain::values::{InstanceId, Person, RequestId, UserId};

pub const T0: i64 = 1_790_000_000_000;
pub const WEB: &str = "i-0123456789abcdef0";
pub const DB1: &str = "i-0fedcba9876543210";
pub const PROD: &str = "i-0aaaaaaaaaaaaaaa1";
pub const DEV: &str = "i-0bbbbbbbbbbbbbbb2";

// ---------------------------------------------------------------------------
// Recording chat surface

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    Card(CardView),
    CardUpdate(String, CardView),
    Thread(String, String, Vec<Action>),
    Direct(String, String, Vec<Action>),
    Audit(String),
    Deleted(MessageRef),
}

#[derive(Default)]
pub struct RecordingSurface {
    pub posted: Mutex<Vec<Posted>>,
    /// Errors to return for the next calls, in order.
    pub failures: Mutex<Vec<ChatError>>,
    /// Calls that succeed before those errors begin.
    pub passes: Mutex<u32>,
    pub attempts: Mutex<u32>,
}

impl RecordingSurface {
    pub fn fail_next(&self, errors: Vec<ChatError>) {
        self.fail_after(0, errors);
    }

    /// Lets `passes` calls succeed, then answers the calls after them with
    /// `errors`, in order.
    pub fn fail_after(&self, passes: u32, errors: Vec<ChatError>) {
        *self.passes.lock().unwrap() = passes;
        *self.failures.lock().unwrap() = errors;
    }

    fn gate(&self) -> Result<(), ChatError> {
        *self.attempts.lock().unwrap() += 1;
        let mut f = self.failures.lock().unwrap();
        let mut passes = self.passes.lock().unwrap();
        if f.is_empty() {
            Ok(())
        } else if *passes > 0 {
            *passes -= 1;
            Ok(())
        } else {
            Err(f.remove(0))
        }
    }

    fn push(&self, p: Posted) {
        self.posted.lock().unwrap().push(p);
    }

    pub fn all(&self) -> Vec<Posted> {
        self.posted.lock().unwrap().clone()
    }

    pub fn threads(&self, request: RequestId) -> Vec<String> {
        let key = request.to_string();
        self.all()
            .into_iter()
            .filter_map(|p| match p {
                Posted::Thread(at, text, _) if at == key => Some(text),
                _ => None,
            })
            .collect()
    }

    pub fn directs(&self, user: &str) -> Vec<String> {
        self.all()
            .into_iter()
            .filter_map(|p| match p {
                Posted::Direct(u, text, _) if u == user => Some(text),
                _ => None,
            })
            .collect()
    }

    pub fn audits(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter_map(|p| match p {
                Posted::Audit(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    /// The last version of the card of `request`.
    pub fn card(&self, request: RequestId) -> Option<CardView> {
        self.all().into_iter().rev().find_map(|p| match p {
            Posted::Card(c) | Posted::CardUpdate(_, c) if c.request == request => Some(c),
            _ => None,
        })
    }
}

#[async_trait]
impl ChatSurface for RecordingSurface {
    fn name(&self) -> &str {
        "test"
    }

    async fn post_card(&self, card: &CardView) -> Result<MessageRef, ChatError> {
        self.gate()?;
        self.push(Posted::Card(card.clone()));
        Ok(MessageRef {
            channel: "approvals".into(),
            message: card.request.to_string(),
        })
    }

    async fn update_card(&self, at: &MessageRef, card: &CardView) -> Result<(), ChatError> {
        self.gate()?;
        self.push(Posted::CardUpdate(at.message.clone(), card.clone()));
        Ok(())
    }

    async fn reply_in_thread(
        &self,
        at: &MessageRef,
        text: &str,
        actions: &[Action],
    ) -> Result<(), ChatError> {
        self.gate()?;
        self.push(Posted::Thread(
            at.message.clone(),
            text.to_owned(),
            actions.to_vec(),
        ));
        Ok(())
    }

    async fn direct_message(
        &self,
        user: &UserId,
        text: &str,
        actions: &[Action],
    ) -> Result<MessageRef, ChatError> {
        self.gate()?;
        self.push(Posted::Direct(
            user.to_string(),
            text.to_owned(),
            actions.to_vec(),
        ));
        Ok(MessageRef {
            channel: format!("dm:{user}"),
            message: self.posted.lock().unwrap().len().to_string(),
        })
    }

    async fn post_audit(&self, line: &str) -> Result<(), ChatError> {
        self.gate()?;
        self.push(Posted::Audit(line.to_owned()));
        Ok(())
    }

    async fn delete_message(&self, at: &MessageRef) -> Result<(), ChatError> {
        self.gate()?;
        self.push(Posted::Deleted(at.clone()));
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Fake provisioner

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub request: RequestId,
    pub instance: InstanceId,
    pub username: String,
    pub expires_at: Option<Timestamp>,
    pub sudo: bool,
    /// Grants only: the key installed, or the CA keys trusted instead.
    pub ssh_public_key: Option<String>,
    pub trusted_ca_keys: Vec<String>,
    pub port_forwarding: bool,
}

#[derive(Default)]
pub struct FakeProvisioner {
    pub known: BTreeMap<InstanceId, InstanceInfo>,
    pub fail_grant: Mutex<HashSet<InstanceId>>,
    /// Removal fails on these instances this many more times.
    pub fail_revoke: Mutex<BTreeMap<InstanceId, u32>>,
    pub unavailable: Mutex<bool>,
    pub grants: Mutex<Vec<Call>>,
    pub revokes: Mutex<Vec<Call>>,
    /// The `before` of every request to forget finished work.
    pub forgotten_before: Mutex<Vec<Timestamp>>,
    /// When set, each grant waits for a permit of this gate (a slow SSM job);
    /// `grants_waiting` counts the grants waiting at it.
    pub grant_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    pub grants_waiting: std::sync::atomic::AtomicUsize,
}

impl FakeProvisioner {
    pub fn grants(&self) -> Vec<Call> {
        self.grants.lock().unwrap().clone()
    }

    pub fn revokes(&self) -> Vec<Call> {
        self.revokes.lock().unwrap().clone()
    }

    /// Grants on the instance `id` fail from now on.
    pub fn fail_grants_on(&self, id: &str) {
        let id = InstanceId::parse(id).unwrap();
        self.fail_grant.lock().unwrap().insert(id);
    }

    /// Removals from the instance `id` fail `times` more times.
    pub fn fail_revokes_on(&self, id: &str, times: u32) {
        let id = InstanceId::parse(id).unwrap();
        self.fail_revoke.lock().unwrap().insert(id, times);
    }
}

#[async_trait]
impl Provisioner for FakeProvisioner {
    fn name(&self) -> &str {
        "fake"
    }

    async fn forget_finished(&self, before: Timestamp) -> Result<u64, ProvisionError> {
        self.forgotten_before.lock().unwrap().push(before);
        Ok(0)
    }

    async fn describe(&self, ids: &[InstanceId]) -> Result<Vec<Described>, ProvisionError> {
        Ok(ids
            .iter()
            .map(|id| match self.known.get(id) {
                Some(i) if i.state != "running" => Described::Unusable {
                    id: id.clone(),
                    reason: format!("the instance is {}", i.state),
                },
                Some(i) => Described::Usable(i.clone()),
                None => Described::Unusable {
                    id: id.clone(),
                    reason: "no such instance".into(),
                },
            })
            .collect())
    }

    async fn grant(&self, spec: &GrantSpec) -> Result<Vec<InstanceOutcome>, ProvisionError> {
        let gate = self.grant_gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            use std::sync::atomic::Ordering;
            self.grants_waiting.fetch_add(1, Ordering::SeqCst);
            gate.acquire().await.unwrap().forget();
            self.grants_waiting.fetch_sub(1, Ordering::SeqCst);
        }
        if *self.unavailable.lock().unwrap() {
            return Err(ProvisionError::Unavailable("connection refused".into()));
        }
        let fail = self.fail_grant.lock().unwrap().clone();
        Ok(spec
            .instances
            .iter()
            .map(|i| {
                self.grants.lock().unwrap().push(Call {
                    request: spec.request,
                    instance: i.id.clone(),
                    username: spec.username.to_string(),
                    expires_at: Some(spec.expires_at),
                    sudo: spec.sudo,
                    ssh_public_key: spec.ssh_public_key.clone(),
                    trusted_ca_keys: spec.trusted_ca_keys.clone(),
                    port_forwarding: spec.port_forwarding,
                });
                let ok = !fail.contains(&i.id);
                InstanceOutcome {
                    instance: i.id.clone(),
                    ok,
                    detail: (!ok).then(|| "useradd: exit status 1".into()),
                }
            })
            .collect())
    }

    async fn revoke(&self, spec: &RevokeSpec) -> Result<Vec<InstanceOutcome>, ProvisionError> {
        if *self.unavailable.lock().unwrap() {
            return Err(ProvisionError::Unavailable("connection refused".into()));
        }
        let mut fails = self.fail_revoke.lock().unwrap();
        Ok(spec
            .instances
            .iter()
            .map(|i| {
                self.revokes.lock().unwrap().push(Call {
                    request: spec.request,
                    instance: i.id.clone(),
                    username: spec.username.to_string(),
                    expires_at: None,
                    sudo: false,
                    ssh_public_key: None,
                    trusted_ca_keys: Vec::new(),
                    port_forwarding: false,
                });
                let left = fails.entry(i.id.clone()).or_insert(0);
                let ok = *left == 0;
                if !ok {
                    *left -= 1;
                }
                InstanceOutcome {
                    instance: i.id.clone(),
                    ok,
                    detail: (!ok).then(|| "Undeliverable".into()),
                }
            })
            .collect())
    }
}

pub fn instance(id: &str, name: &str, tags: &[(&str, &str)]) -> InstanceInfo {
    InstanceInfo {
        id: InstanceId::parse(id).unwrap(),
        name: Some(name.into()),
        platform: Platform::Linux,
        state: "running".into(),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        private_ips: vec!["10.0.1.5".into(), "10.0.2.5".into()],
    }
}

// ---------------------------------------------------------------------------
// The application under test

pub struct TestApp {
    pub engine: Arc<Engine>,
    pub dispatcher: Dispatcher,
    pub store: Arc<SqliteStore>,
    pub clock: ManualClock,
    pub surface: Arc<RecordingSurface>,
    pub provisioner: Arc<FakeProvisioner>,
    pub db: PathBuf,
    pub jobs: passport::app::jobs::Jobs,
}

/// Groups: approvers (lead1, lead2), sre-leads (sre1, sre2, sre3), admins (boss).
/// Rules: env=prod needs 2 approvals from sre-leads, at most 4h; env=dev auto-approves with sudo.
pub fn test_config() -> Config {
    let mut c = Config {
        groups: BTreeMap::new(),
        ..Config::default()
    };
    c.groups = BTreeMap::from([
        ("approvers".into(), vec!["lead1".into(), "lead2".into()]),
        (
            "sre-leads".into(),
            vec!["sre1".into(), "sre2".into(), "sre3".into()],
        ),
        ("admins".into(), vec!["boss".into()]),
    ]);
    c.policy.rules = vec![
        RuleConfig {
            name: "prod".into(),
            tags: BTreeMap::from([("env".into(), "prod".into())]),
            approvers: vec!["group:sre-leads".into()],
            approvals: 2,
            max_duration: Some("4h".into()),
            extension_approval_over: Some("1h".into()),
            ..RuleConfig::default()
        },
        RuleConfig {
            name: "dev".into(),
            tags: BTreeMap::from([("env".into(), "dev".into())]),
            approvals: 0,
            sudo: true,
            ..RuleConfig::default()
        },
    ];
    c
}

pub fn fake_provisioner() -> FakeProvisioner {
    let mut p = FakeProvisioner::default();
    for i in [
        instance(WEB, "web-1", &[]),
        instance(DB1, "db-1", &[]),
        instance(PROD, "prod-api", &[("env", "prod")]),
        instance(DEV, "dev-box", &[("env", "dev")]),
    ] {
        p.known.insert(i.id.clone(), i);
    }
    let mut stopped = instance("i-0ccccccccccccccc3", "old", &[]);
    stopped.state = "stopped".into();
    p.known.insert(stopped.id.clone(), stopped);
    p
}

impl TestApp {
    pub async fn spawn() -> (Self, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("passport.db");
        let app = Self::open(
            &db,
            Arc::new(fake_provisioner()),
            ManualClock::new(Timestamp::from_millis(T0)),
            Arc::new(RecordingSurface::default()),
        )
        .await;
        (app, dir)
    }

    /// Opens an application on an existing database file, as a restart would.
    pub async fn open(
        db: &Path,
        provisioner: Arc<FakeProvisioner>,
        clock: ManualClock,
        surface: Arc<RecordingSurface>,
    ) -> Self {
        Self::open_configured(db, test_config(), provisioner, clock, surface).await
    }

    /// [`Self::open`] with `config` instead of [`test_config`].
    pub async fn open_configured(
        db: &Path,
        config: Config,
        provisioner: Arc<FakeProvisioner>,
        clock: ManualClock,
        surface: Arc<RecordingSurface>,
    ) -> Self {
        let settings = config.validate().unwrap();
        let store = Arc::new(SqliteStore::open(db, Durability::Normal).await.unwrap());
        let engine = Engine::new(
            Ports {
                store: store.clone(),
                provisioner: provisioner.clone(),
                directory: Arc::new(StaticDirectory::new(&settings.groups)),
                clock: Arc::new(clock.clone()),
            },
            settings.policy.clone(),
            settings.grammar.clone(),
            EngineSettings {
                warnings: settings.warnings.clone(),
                surfaces: vec!["test".into()],
                ..EngineSettings::default()
            },
        );
        let dispatcher = Dispatcher::new(
            store.clone(),
            Arc::new(clock.clone()),
            vec![surface.clone() as Arc<dyn ChatSurface>],
        );
        Self {
            engine: Arc::new(engine),
            dispatcher,
            store,
            clock,
            surface,
            provisioner,
            db: db.to_path_buf(),
            // Scheduled jobs are off unless a test turns them on.
            jobs: passport::app::jobs::Jobs::default(),
        }
    }

    /// The same application with Passport's SSH CA.
    pub fn with_certificates(
        mut self,
        signer: Arc<dyn passport::app::ports::CertificateSigner>,
        backdate: Span,
    ) -> Self {
        let engine = Arc::try_unwrap(self.engine)
            .ok()
            .expect("the engine is not shared yet");
        self.engine = Arc::new(engine.with_certificates(signer, backdate));
        self
    }

    /// The same application keeping every checkpoint in the file at `path` too.
    pub fn with_checkpoint_file(mut self, path: &Path) -> Self {
        let engine = Arc::try_unwrap(self.engine)
            .ok()
            .expect("the engine is not shared yet");
        self.engine = Arc::new(engine.with_checkpoint_sink(Arc::new(
            passport::adapters::checkpoint_file::CheckpointFile::new(path.to_path_buf()),
        )));
        self
    }

    /// The same application handing out Session Manager credentials from `broker`.
    pub fn with_sessions(mut self, broker: Arc<dyn passport::app::ports::SessionBroker>) -> Self {
        let engine = Arc::try_unwrap(self.engine)
            .ok()
            .expect("the engine is not shared yet");
        self.engine = Arc::new(engine.with_sessions(broker));
        self
    }

    pub async fn close(self) {
        self.store.close().await;
    }

    /// Stops the application and starts it again `down` later on the same
    /// database, provisioner and clock, posting to `surface`.
    pub async fn restart(self, down: Span, surface: Arc<RecordingSurface>) -> Self {
        let (db, provisioner, clock) = (
            self.db.clone(),
            self.provisioner.clone(),
            self.clock.clone(),
        );
        self.close().await;
        clock.advance(down);
        Self::open(&db, provisioner, clock, surface).await
    }

    pub fn actor(user: &str) -> Actor {
        Actor {
            person: Person {
                id: UserId::parse(user).unwrap(),
                handle: user.into(),
            },
            surface: "test".into(),
        }
    }

    /// Runs a command as `user`, then everything due and every delivery.
    pub async fn run(&self, user: &str, line: &str) -> Reply {
        let reply = self
            .engine
            .handle_line(&Self::actor(user), line, None)
            .await;
        self.settle().await;
        reply
    }

    pub async fn run_in_thread(&self, user: &str, request: RequestId, line: &str) -> Reply {
        let reply = self
            .engine
            .handle_line(&Self::actor(user), line, Some(request))
            .await;
        self.settle().await;
        reply
    }

    pub async fn settle(&self) {
        for _ in 0..50 {
            let ran = self.engine.run_due().await.unwrap()
                + self.engine.run_jobs_due(&self.jobs).await.unwrap();
            let delivered = self.dispatcher.deliver_due().await.unwrap().delivered;
            if ran == 0 && delivered == 0 {
                return;
            }
        }
        panic!("the application did not settle");
    }

    pub async fn advance(&self, by: Span) {
        self.clock.advance(by);
        self.settle().await;
    }

    pub async fn request(&self, id: RequestId) -> AccessRequest {
        self.store.get(id).await.unwrap().unwrap()
    }

    pub async fn events(&self, id: RequestId) -> Vec<LogEvent> {
        self.store.audit_events(Some(id), None).await.unwrap()
    }

    pub async fn actions(&self, id: RequestId) -> Vec<String> {
        self.events(id)
            .await
            .into_iter()
            .map(|e| e.action)
            .collect()
    }

    pub async fn count(&self, id: RequestId, action: &str) -> usize {
        self.actions(id)
            .await
            .iter()
            .filter(|a| *a == action)
            .count()
    }

    /// Requests `instances` as dev1 and returns the new request's id.
    pub async fn new_request(&self, instances: &str, rest: &str) -> RequestId {
        let reply = self
            .run("dev1", &format!("request {instances} {rest}"))
            .await;
        assert!(reply.ok, "request refused: {}", reply.text);
        reply.request.unwrap()
    }

    /// A request by dev1, created and nothing else: no timer runs and no
    /// notice goes out.
    pub async fn request_unsettled(&self, instances: &str, rest: &str) -> RequestId {
        let reply = self
            .engine
            .handle_line(
                &Self::actor("dev1"),
                &format!("request {instances} {rest}"),
                None,
            )
            .await;
        assert!(reply.ok, "request refused: {}", reply.text);
        reply.request.unwrap()
    }

    /// A request on web-1 for `duration`, approved by lead1 and active.
    pub async fn active_request(&self, duration: &str) -> RequestId {
        let id = self
            .new_request(WEB, &format!("{duration} ticket#1 work"))
            .await;
        let reply = self.run("lead1", &format!("approve {id}")).await;
        assert!(reply.ok, "{}", reply.text);
        id
    }
}

pub fn ar(n: u64) -> RequestId {
    RequestId::new(n).unwrap()
}

/// An audit channel whose each line waits until the test lets it go
/// (`paced.add_permits`), as a paced channel makes it wait; everything else
/// goes at once to the recording surface `inner`.
pub struct PacedAudit {
    pub inner: Arc<RecordingSurface>,
    /// Notified when a line's send begins.
    pub sending: tokio::sync::Notify,
    /// One permit lets one line go.
    pub paced: tokio::sync::Semaphore,
    /// Notified when a card is posted.
    pub card_posted: tokio::sync::Notify,
}

impl PacedAudit {
    pub fn new(inner: Arc<RecordingSurface>) -> Self {
        Self {
            inner,
            sending: tokio::sync::Notify::new(),
            paced: tokio::sync::Semaphore::new(0),
            card_posted: tokio::sync::Notify::new(),
        }
    }
}

#[async_trait::async_trait]
impl passport::app::ports::ChatSurface for PacedAudit {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn post_card(
        &self,
        card: &passport::domain::notice::CardView,
    ) -> Result<passport::app::ports::MessageRef, passport::app::ports::ChatError> {
        let at = self.inner.post_card(card).await;
        self.card_posted.notify_one();
        at
    }

    async fn update_card(
        &self,
        at: &passport::app::ports::MessageRef,
        card: &passport::domain::notice::CardView,
    ) -> Result<(), passport::app::ports::ChatError> {
        self.inner.update_card(at, card).await
    }

    async fn reply_in_thread(
        &self,
        at: &passport::app::ports::MessageRef,
        text: &str,
        actions: &[passport::domain::notice::Action],
    ) -> Result<(), passport::app::ports::ChatError> {
        self.inner.reply_in_thread(at, text, actions).await
    }

    async fn direct_message(
        &self,
        user: &passport::domain::values::UserId,
        text: &str,
        actions: &[passport::domain::notice::Action],
    ) -> Result<passport::app::ports::MessageRef, passport::app::ports::ChatError> {
        self.inner.direct_message(user, text, actions).await
    }

    async fn post_audit(&self, line: &str) -> Result<(), passport::app::ports::ChatError> {
        self.sending.notify_one();
        self.paced.acquire().await.unwrap().forget();
        self.inner.post_audit(line).await
    }

    async fn delete_message(
        &self,
        at: &passport::app::ports::MessageRef,
    ) -> Result<(), passport::app::ports::ChatError> {
        self.inner.delete_message(at).await
    }
}
