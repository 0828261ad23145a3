//! The AWS provisioner against a fake EC2 and SSM behind its own traits, for
//! what a local AWS-compatible server cannot show: scripts that fail, time out
//! or cannot be delivered, offline instances, throttling storms and the
//! `InvocationDoesNotExist` race right after a send.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/aws.rs"]
mod aws;
mod fake_aws;
#[path = "common/postgres.rs"]
mod postgres;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws::{grant_spec, revoke_spec};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use passport::adapters::aws::api::{
    ApiError, CommandRequest, DocumentState, DocumentVersions, Ec2Api, Ec2Instance, Invocation,
    InvocationStatus, ManagedInstance, SsmApi,
};
use passport::adapters::aws::documents::passport_documents;
use passport::adapters::aws::password::{PasswordOwner, PASSWORD_PREFIX};
use passport::adapters::aws::sdk::SdkSsm;
use passport::adapters::aws::CommandStore as _;
use passport::adapters::aws::{
    AwsProvisioner, AwsSettings, DocumentNames, MemoryCommandStore, PasswordSink, PgCommandStore,
    SqliteCommandStore, SSM_UNREACHABLE,
};
use passport::adapters::clock::SystemClock;
use passport::adapters::postgres::{PgOptions, PgStore};
use passport::adapters::sqlite::{Durability, SqliteStore};
use passport::app::ports::{Described, GrantSpec, ProvisionError, Provisioner};
use passport::domain::request::{InstanceInfo, InstanceOutcome, Platform};
use passport::domain::time::Timestamp;
use passport::domain::values::{InstanceId, RequestId, Username};
use rsa::pkcs8::DecodePublicKey as _;
use rsa::rand_core::OsRng;
use rsa::{Oaep, RsaPublicKey};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

// ---------------------------------------------------------------------------
// The fake

/// How a command ends on one instance.
#[derive(Clone, Debug)]
enum End {
    Success,
    Failed {
        code: i32,
        stderr: &'static str,
    },
    /// A final status with details, e.g. `TimedOut`/`DeliveryTimedOut`.
    Final {
        status: InvocationStatus,
        details: &'static str,
    },
    /// Stays `InProgress` for ever.
    Running,
    /// Succeeds and prints the password encrypted to the command's PublicKey.
    Password(&'static str),
}

#[derive(Clone, Debug)]
struct Script {
    /// `InvocationDoesNotExist` answers before the invocation appears.
    missing: u32,
    /// `InProgress` answers before the end.
    running: u32,
    end: End,
}

impl Script {
    fn ends(end: End) -> Self {
        Self {
            missing: 0,
            running: 1,
            end,
        }
    }
}

#[derive(Default)]
struct FakeAws {
    instances: Mutex<Vec<Ec2Instance>>,
    managed: Mutex<BTreeMap<InstanceId, String>>,
    scripts: Mutex<BTreeMap<InstanceId, Script>>,
    /// Instances SendCommand refuses with `InvalidInstanceId`.
    refused: Mutex<BTreeSet<InstanceId>>,
    /// Every accepted SendCommand, with the id it was given.
    sends: Mutex<Vec<(String, CommandRequest)>>,
    send_attempts: AtomicU32,
    polls: Mutex<BTreeMap<(String, InstanceId), u32>>,
    poll_calls: AtomicU32,
    /// The next this many calls of each kind are throttled.
    throttle_sends: AtomicU32,
    throttle_polls: AtomicU32,
    throttle_describes: AtomicU32,
    /// Every SendCommand fails with this.
    send_error: Mutex<Option<ApiError>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Documents as SSM holds them (their default version), by name; the
    /// built-in documents at version 3 when absent.
    documents: Mutex<BTreeMap<String, DocumentState>>,
}

/// The version the fake holds Passport's documents at, unless a test changes it.
const DOCUMENT_VERSION: &str = "3";

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn throttled() -> ApiError {
    ApiError::Throttled("ThrottlingException: Rate exceeded".into())
}

impl FakeAws {
    fn add(&self, id: &str, platform: Platform, state: &str, ping: Option<&str>) -> InstanceId {
        let id = InstanceId::parse(id).unwrap();
        self.instances.lock().unwrap().push(Ec2Instance {
            id: id.clone(),
            state: state.into(),
            platform,
            tags: BTreeMap::from([
                ("Name".to_owned(), format!("host-{}", &id.as_str()[2..6])),
                ("passport:access".to_owned(), "allowed".to_owned()),
            ]),
            private_ips: vec!["10.0.0.5".into(), "10.0.1.5".into()],
        });
        if let Some(ping) = ping {
            self.managed.lock().unwrap().insert(id.clone(), ping.into());
        }
        id
    }

    fn script(&self, id: &InstanceId, script: Script) {
        self.scripts.lock().unwrap().insert(id.clone(), script);
    }

    fn sent(&self) -> Vec<CommandRequest> {
        self.sends
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }
}

#[async_trait]
impl Ec2Api for FakeAws {
    async fn describe_instances(&self, ids: &[InstanceId]) -> Result<Vec<Ec2Instance>, ApiError> {
        if take(&self.throttle_describes) {
            return Err(throttled());
        }
        Ok(self
            .instances
            .lock()
            .unwrap()
            .iter()
            .filter(|i| ids.contains(&i.id))
            .cloned()
            .collect())
    }
}

#[async_trait]
impl SsmApi for FakeAws {
    async fn managed_instances(
        &self,
        ids: &[InstanceId],
    ) -> Result<Vec<ManagedInstance>, ApiError> {
        Ok(self
            .managed
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| ids.contains(id))
            .map(|(id, ping)| ManagedInstance {
                id: id.clone(),
                ping_status: ping.clone(),
            })
            .collect())
    }

    async fn send_command(&self, command: &CommandRequest) -> Result<String, ApiError> {
        self.send_attempts.fetch_add(1, Ordering::SeqCst);
        if take(&self.throttle_sends) {
            return Err(throttled());
        }
        if let Some(e) = self.send_error.lock().unwrap().clone() {
            return Err(e);
        }
        assert!(
            command.instances.len() <= 50,
            "SSM takes at most 50 instance ids"
        );
        assert!(
            command.comment.chars().count() <= 100,
            "SSM takes at most 100 characters"
        );
        if command
            .instances
            .iter()
            .any(|i| self.refused.lock().unwrap().contains(i))
        {
            return Err(ApiError::service(
                "InvalidInstanceId",
                "Instances [[i-...]] not in a valid state for account",
            ));
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut sends = self.sends.lock().unwrap();
        let id = format!("00000000-0000-4000-8000-{:012}", sends.len() + 1);
        sends.push((id.clone(), command.clone()));
        Ok(id)
    }

    async fn get_invocation(
        &self,
        command_id: &str,
        instance: &InstanceId,
    ) -> Result<Invocation, ApiError> {
        self.poll_calls.fetch_add(1, Ordering::SeqCst);
        if take(&self.throttle_polls) {
            return Err(throttled());
        }
        let command = self
            .sends
            .lock()
            .unwrap()
            .iter()
            .find(|(id, _)| id == command_id)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| ApiError::service("InvalidCommandId", "no such command"))?;
        let not_there = || ApiError::service("InvocationDoesNotExist", "no such invocation");
        if !command.instances.contains(instance) {
            return Err(not_there());
        }
        let script = self
            .scripts
            .lock()
            .unwrap()
            .get(instance)
            .cloned()
            .unwrap_or_else(|| Script::ends(End::Success));
        let n = {
            let mut polls = self.polls.lock().unwrap();
            let n = polls
                .entry((command_id.to_owned(), instance.clone()))
                .or_insert(0);
            *n += 1;
            *n
        };
        if n <= script.missing {
            return Err(not_there());
        }
        let invocation = |status: InvocationStatus, details: &str, code: i32| Invocation {
            status,
            status_details: details.into(),
            response_code: code,
            stdout: String::new(),
            stderr: String::new(),
        };
        if n <= script.missing + script.running {
            return Ok(invocation(InvocationStatus::InProgress, "InProgress", -1));
        }
        Ok(match script.end {
            End::Success => invocation(InvocationStatus::Success, "Success", 0),
            End::Failed { code, stderr } => Invocation {
                stderr: stderr.into(),
                ..invocation(InvocationStatus::Failed, "Failed", code)
            },
            End::Final { status, details } => invocation(status, details, -1),
            End::Running => invocation(InvocationStatus::InProgress, "InProgress", -1),
            End::Password(password) => {
                let der = STANDARD
                    .decode(&command.parameters["PublicKey"][0])
                    .unwrap();
                let key = RsaPublicKey::from_public_key_der(&der).unwrap();
                let sealed = key
                    .encrypt(&mut OsRng, Oaep::new::<Sha256>(), password.as_bytes())
                    .unwrap();
                Invocation {
                    stdout: format!(
                        "created\r\n{PASSWORD_PREFIX}{}\r\n",
                        STANDARD.encode(sealed)
                    ),
                    ..invocation(InvocationStatus::Success, "Success", 0)
                }
            }
        })
    }

    async fn get_document(
        &self,
        name: &str,
        _version: Option<&str>,
    ) -> Result<Option<DocumentState>, ApiError> {
        if let Some(held) = self.documents.lock().unwrap().get(name) {
            return Ok(Some(held.clone()));
        }
        Ok(passport_documents(&DocumentNames::default())
            .into_iter()
            .find(|d| d.name == name)
            .map(|d| DocumentState {
                content: d.content,
                status: "Active".into(),
                version: DOCUMENT_VERSION.into(),
            }))
    }

    async fn describe_document(&self, _name: &str) -> Result<Option<DocumentVersions>, ApiError> {
        Ok(None)
    }

    async fn create_document(&self, _name: &str, _content: &str) -> Result<(), ApiError> {
        Ok(())
    }

    async fn update_document(&self, _name: &str, _content: &str) -> Result<String, ApiError> {
        Ok("2".into())
    }

    async fn set_default_version(&self, _name: &str, _version: &str) -> Result<(), ApiError> {
        Ok(())
    }
}

/// Collects passwords as the chat surface would receive them.
#[derive(Default)]
struct Passwords(Mutex<Vec<(RequestId, InstanceId, String, SecretString)>>);

impl PasswordSink for Passwords {
    fn deliver(&self, owner: PasswordOwner, password: SecretString) {
        self.0.lock().unwrap().push((
            owner.request,
            owner.instance,
            owner.username.to_string(),
            password,
        ));
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn fast() -> AwsSettings {
    AwsSettings {
        poll_initial: Duration::from_millis(1),
        poll_max: Duration::from_millis(4),
        retries: 10,
        invocation_grace: Duration::from_millis(300),
        ..AwsSettings::default()
    }
}

struct Rig {
    fake: Arc<FakeAws>,
    store: Arc<MemoryCommandStore>,
    provisioner: AwsProvisioner,
}

async fn rig(settings: AwsSettings) -> Rig {
    let fake = Arc::new(FakeAws::default());
    let store = Arc::new(MemoryCommandStore::new());
    let provisioner = provisioner_on(&fake, &store, settings).await;
    Rig {
        fake,
        store,
        provisioner,
    }
}

/// A provisioner on the fake that has checked the documents, as `serve` does.
async fn provisioner_on(
    fake: &Arc<FakeAws>,
    store: &Arc<MemoryCommandStore>,
    settings: AwsSettings,
) -> AwsProvisioner {
    let provisioner = AwsProvisioner::new(
        fake.clone(),
        fake.clone(),
        store.clone(),
        settings,
        "eu-west-1",
    );
    provisioner.check_documents().await.unwrap();
    provisioner
}

fn id(n: u32) -> String {
    format!("i-{n:017x}")
}

fn info(id: &InstanceId, platform: Platform) -> InstanceInfo {
    InstanceInfo {
        platform,
        ..InstanceInfo::assumed(id.clone(), platform)
    }
}

fn linux_fleet(rig: &Rig, n: u32) -> Vec<InstanceInfo> {
    (1..=n)
        .map(|i| {
            let id = rig.online(i, Platform::Linux);
            info(&id, Platform::Linux)
        })
        .collect()
}

fn detail(outcome: &InstanceOutcome) -> &str {
    outcome.detail.as_deref().unwrap_or("")
}

/// Asserts that what `outcome` tells people contains `text`.
fn assert_detail(outcome: &InstanceOutcome, text: &str) {
    assert!(detail(outcome).contains(text), "{}", detail(outcome));
}

async fn rig_with(edit: impl FnOnce(&mut AwsSettings)) -> Rig {
    let mut settings = fast();
    edit(&mut settings);
    rig(settings).await
}

impl Rig {
    /// Sending commands fails with `error` from now on (`None`: works again).
    fn fail_sends(&self, error: Option<ApiError>) {
        *self.fake.send_error.lock().unwrap() = error;
    }

    /// A running instance number `n` of `platform`, online in SSM.
    fn online(&self, n: u32, platform: Platform) -> InstanceId {
        self.fake.add(&id(n), platform, "running", Some("Online"))
    }

    /// Another provisioner on this rig's fake and store, handing Windows
    /// passwords to `sink`.
    async fn with_passwords(&self, sink: Arc<Passwords>) -> AwsProvisioner {
        provisioner_on(&self.fake, &self.store, fast())
            .await
            .with_password_sink(sink)
    }

    /// The command on `instance` ends with `status`, SSM saying `details`.
    fn ends_finally(&self, instance: &InstanceId, status: InvocationStatus, details: &'static str) {
        self.fake
            .script(instance, Script::ends(End::Final { status, details }));
    }
}

// ---------------------------------------------------------------------------
// Outcomes

#[tokio::test]
async fn each_final_status_becomes_an_outcome_people_can_read() {
    let rig = rig(fast()).await;
    let fleet = linux_fleet(&rig, 6);
    let ids: Vec<InstanceId> = fleet.iter().map(|i| i.id.clone()).collect();
    rig.fake.script(
        &ids[1],
        Script::ends(End::Failed {
            code: 1,
            stderr: "passport grant: useradd failed:\nuseradd: cannot lock /etc/passwd; try again later.\n",
        }),
    );
    rig.ends_finally(&ids[2], InvocationStatus::TimedOut, "DeliveryTimedOut");
    rig.ends_finally(&ids[3], InvocationStatus::Failed, "Undeliverable");
    rig.ends_finally(&ids[4], InvocationStatus::Cancelled, "Cancelled");
    rig.ends_finally(&ids[5], InvocationStatus::TimedOut, "ExecutionTimedOut");

    let outcomes = rig.provisioner.grant(&grant_spec(7, fleet)).await.unwrap();

    let got: Vec<&InstanceId> = outcomes.iter().map(|o| &o.instance).collect();
    assert_eq!(
        got,
        ids.iter().collect::<Vec<_>>(),
        "one outcome per instance, in order"
    );
    assert!(outcomes[0].ok && outcomes[0].detail.is_none());
    assert!(!outcomes[1].ok);
    assert_eq!(
        detail(&outcomes[1]),
        "the script failed (exit code 1): passport grant: useradd failed: useradd: cannot lock /etc/passwd; try again later."
    );
    assert_detail(&outcomes[2], "did not pick up the command within 5m");
    assert!(detail(&outcomes[2]).contains(SSM_UNREACHABLE));
    assert_detail(&outcomes[3], "could not be delivered");
    assert_eq!(detail(&outcomes[4]), "the command was cancelled");
    assert_eq!(detail(&outcomes[5]), "the script did not finish in time");
    assert_eq!(rig.fake.sent().len(), 1, "six instances fit in one command");
}

#[tokio::test]
async fn a_long_stderr_is_cut_to_its_end() {
    let rig = rig(fast()).await;
    let fleet = linux_fleet(&rig, 1);
    let noise: &'static str =
        Box::leak(format!("{}\nthe real reason\n", "noise ".repeat(200)).into_boxed_str());
    rig.fake.script(
        &fleet[0].id,
        Script::ends(End::Failed {
            code: 2,
            stderr: noise,
        }),
    );
    let outcomes = rig.provisioner.grant(&grant_spec(8, fleet)).await.unwrap();
    let text = detail(&outcomes[0]);
    assert!(text.ends_with("the real reason"), "{text}");
    assert!(text.chars().count() < 400, "{}", text.chars().count());
}

#[tokio::test]
async fn invocation_does_not_exist_right_after_sending_means_not_yet() {
    let rig = rig(fast()).await;
    let fleet = linux_fleet(&rig, 3);
    for i in &fleet {
        rig.fake.script(
            &i.id,
            Script {
                missing: 5,
                running: 2,
                end: End::Success,
            },
        );
    }
    let outcomes = rig.provisioner.grant(&grant_spec(9, fleet)).await.unwrap();
    assert!(outcomes.iter().all(|o| o.ok), "{outcomes:?}");
}

#[tokio::test]
async fn an_invocation_that_never_appears_is_undeliverable_after_the_grace() {
    let rig = rig_with(|s| s.invocation_grace = Duration::from_millis(50)).await;
    let fleet = linux_fleet(&rig, 2);
    rig.fake.script(
        &fleet[1].id,
        Script {
            missing: u32::MAX,
            running: 0,
            end: End::Success,
        },
    );
    let outcomes = rig.provisioner.grant(&grant_spec(10, fleet)).await.unwrap();
    assert!(outcomes[0].ok);
    assert!(!outcomes[1].ok);
    assert_detail(&outcomes[1], SSM_UNREACHABLE);
}

// ---------------------------------------------------------------------------
// Throttling and outages

#[tokio::test]
async fn a_throttling_storm_while_polling_is_ridden_out() {
    let rig = rig(fast()).await;
    let fleet = linux_fleet(&rig, 20);
    rig.fake.throttle_polls.store(150, Ordering::SeqCst);
    let outcomes = rig.provisioner.grant(&grant_spec(11, fleet)).await.unwrap();
    assert!(outcomes.iter().all(|o| o.ok), "{outcomes:?}");
    assert!(rig.fake.poll_calls.load(Ordering::SeqCst) > 150);
    assert_eq!(rig.fake.sent().len(), 1, "throttled polls never resend");
}

#[tokio::test]
async fn throttled_sends_are_retried() {
    let rig = rig(fast()).await;
    let fleet = linux_fleet(&rig, 2);
    rig.fake.throttle_sends.store(4, Ordering::SeqCst);
    rig.fake.throttle_describes.store(3, Ordering::SeqCst);
    let described = rig
        .provisioner
        .describe(&[fleet[0].id.clone()])
        .await
        .unwrap();
    assert!(matches!(described[0], Described::Usable(_)));
    let outcomes = rig.provisioner.grant(&grant_spec(12, fleet)).await.unwrap();
    assert!(outcomes.iter().all(|o| o.ok), "{outcomes:?}");
    assert_eq!(rig.fake.send_attempts.load(Ordering::SeqCst), 5);
    assert_eq!(rig.fake.sent().len(), 1);
}

#[tokio::test]
async fn an_ssm_outage_is_unavailable_and_the_retry_sends_once() {
    let rig = rig_with(|s| s.retries = 2).await;
    let fleet = linux_fleet(&rig, 3);
    rig.fail_sends(Some(ApiError::Transient(
        "InternalServerError: try again".into(),
    )));
    let spec = revoke_spec(13, fleet);

    let err = rig.provisioner.revoke(&spec).await.unwrap_err();
    assert!(matches!(err, ProvisionError::Unavailable(_)), "{err:?}");
    assert_eq!(
        rig.fake.send_attempts.load(Ordering::SeqCst),
        3,
        "one try and two retries"
    );
    assert!(rig.store.sent().is_empty());

    rig.fail_sends(None);
    let outcomes = rig.provisioner.revoke(&spec).await.unwrap();
    assert!(outcomes.iter().all(|o| o.ok));
    assert_eq!(rig.fake.sent().len(), 1);
}

#[tokio::test]
async fn a_throttled_describe_that_never_recovers_is_unavailable() {
    let rig = rig_with(|s| s.retries = 1).await;
    let fleet = linux_fleet(&rig, 1);
    rig.fake.throttle_describes.store(100, Ordering::SeqCst);
    let err = rig
        .provisioner
        .describe(&[fleet[0].id.clone()])
        .await
        .unwrap_err();
    assert!(matches!(err, ProvisionError::Unavailable(_)), "{err:?}");
}

// ---------------------------------------------------------------------------
// Discovery

#[tokio::test]
async fn offline_stopped_and_unknown_instances_are_refused_naming_why() {
    let rig = rig(fast()).await;
    let online = rig.online(1, Platform::Linux);
    let lost = rig
        .fake
        .add(&id(2), Platform::Linux, "running", Some("ConnectionLost"));
    let unmanaged = rig.fake.add(&id(3), Platform::Windows, "running", None);
    let stopped = rig
        .fake
        .add(&id(4), Platform::Linux, "stopped", Some("ConnectionLost"));
    let terminated = rig.fake.add(&id(5), Platform::Linux, "terminated", None);
    let unknown = InstanceId::parse(&id(6)).unwrap();
    let asked = [
        online.clone(),
        lost.clone(),
        unmanaged.clone(),
        stopped.clone(),
        terminated.clone(),
        unknown.clone(),
    ];

    let described = rig.provisioner.describe(&asked).await.unwrap();

    let reason = |i: usize| match &described[i] {
        Described::Unusable { id, reason } => {
            assert_eq!(id, &asked[i]);
            reason.clone()
        }
        Described::Usable(info) => panic!("{} should be unusable", info.id),
    };
    match &described[0] {
        Described::Usable(info) => {
            assert_eq!(info.id, online);
            assert_eq!(info.name.as_deref(), Some("host-0000"));
            assert_eq!(info.private_ips, ["10.0.0.5", "10.0.1.5"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        reason(1).starts_with("not reachable through SSM (agent status ConnectionLost)"),
        "{}",
        reason(1)
    );
    assert_eq!(reason(2), SSM_UNREACHABLE);
    assert_eq!(
        reason(3),
        "the instance is stopped: start it, then ask again"
    );
    assert_eq!(reason(4), "the instance is terminated and cannot be used");
    assert!(
        reason(5).starts_with("no such instance in eu-west-1"),
        "{}",
        reason(5)
    );
}

#[tokio::test]
async fn an_instance_without_the_access_tag_is_refused_naming_the_tag() {
    let rig = rig(fast()).await;
    let open = rig.online(1, Platform::Linux);
    let closed = rig.online(2, Platform::Linux);
    let wrong = rig.online(3, Platform::Linux);
    {
        let mut instances = rig.fake.instances.lock().unwrap();
        instances[1].tags.remove("passport:access");
        instances[2]
            .tags
            .insert("passport:access".into(), "denied".into());
    }
    let described = rig
        .provisioner
        .describe(&[open.clone(), closed.clone(), wrong.clone()])
        .await
        .unwrap();
    assert!(matches!(&described[0], Described::Usable(i) if i.id == open));
    for d in &described[1..] {
        match d {
            Described::Unusable { reason, .. } => assert_eq!(
                reason,
                "Passport may not manage this instance: it lacks the tag passport:access=allowed that opens an instance to Passport; ask the instance's owners to add it if it should be reachable this way"
            ),
            other => panic!("{other:?}"),
        }
    }

    // Another configured tag is the one asked for.
    let custom = rig_with_tag("team:jit", "yes").await;
    let id = custom.online(4, Platform::Linux);
    let described = custom.provisioner.describe(&[id]).await.unwrap();
    match &described[0] {
        Described::Unusable { reason, .. } => {
            assert!(reason.contains("the tag team:jit=yes"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

async fn rig_with_tag(key: &str, value: &str) -> Rig {
    rig_with(|s| s.instance_tag = passport::adapters::aws::InstanceTag::parse(key, value).unwrap())
        .await
}

#[tokio::test]
async fn the_online_check_can_be_left_to_servers_that_lack_it() {
    let rig = rig_with(|s| s.check_ssm_online = false).await;
    let unmanaged = rig.fake.add(&id(1), Platform::Linux, "running", None);
    let described = rig.provisioner.describe(&[unmanaged]).await.unwrap();
    assert!(matches!(described[0], Described::Usable(_)));
}

// ---------------------------------------------------------------------------
// Sending

#[tokio::test]
async fn batches_of_at_most_fifty_run_a_few_at_a_time() {
    let rig = rig_with(|s| s.concurrency = 3).await;
    let fleet = linux_fleet(&rig, 120);
    let outcomes = rig
        .provisioner
        .grant(&grant_spec(14, fleet.clone()))
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 120);
    assert!(outcomes.iter().all(|o| o.ok));

    let sent = rig.fake.sent();
    let mut sizes: Vec<usize> = sent.iter().map(|c| c.instances.len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [20, 50, 50]);
    let mut all: Vec<&InstanceId> = sent.iter().flat_map(|c| &c.instances).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 120, "every instance exactly once");
    let most = rig.fake.max_in_flight.load(Ordering::SeqCst);
    assert!((2..=3).contains(&most), "{most} sends in flight");
}

#[tokio::test]
async fn an_instance_ssm_refuses_does_not_hold_up_its_batch() {
    let rig = rig(fast()).await;
    let fleet = linux_fleet(&rig, 5);
    rig.fake.refused.lock().unwrap().insert(fleet[3].id.clone());
    let outcomes = rig.provisioner.grant(&grant_spec(15, fleet)).await.unwrap();
    for (i, o) in outcomes.iter().enumerate() {
        if i == 3 {
            assert!(!o.ok);
            assert_eq!(detail(o), SSM_UNREACHABLE);
        } else {
            assert!(o.ok, "{o:?}");
        }
    }
}

#[tokio::test]
async fn a_missing_document_is_rejected_saying_what_to_run() {
    let rig = rig(fast()).await;
    let fleet = linux_fleet(&rig, 2);
    rig.fail_sends(Some(ApiError::service(
        "InvalidDocument",
        "Document Passport-GrantLinux does not exist",
    )));
    let err = rig
        .provisioner
        .grant(&grant_spec(16, fleet))
        .await
        .unwrap_err();
    match err {
        ProvisionError::Rejected(text) => assert!(text.contains("passport ssm install"), "{text}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn every_command_runs_the_document_version_checked_at_start() {
    let rig = rig(fast()).await;
    let fleet = linux_fleet(&rig, 2);
    rig.provisioner
        .grant(&grant_spec(30, fleet.clone()))
        .await
        .unwrap();

    // Someone makes another version the default after the check.
    let grant = passport_documents(&DocumentNames::default()).remove(0);
    rig.fake.documents.lock().unwrap().insert(
        grant.name.clone(),
        DocumentState {
            content: format!("{}\n# changed", grant.content),
            status: "Active".into(),
            version: "4".into(),
        },
    );
    rig.provisioner
        .grant(&grant_spec(31, fleet.clone()))
        .await
        .unwrap();
    rig.provisioner
        .revoke(&revoke_spec(31, fleet))
        .await
        .unwrap();

    let sent = rig.fake.sent();
    assert_eq!(sent.len(), 3);
    for command in &sent {
        assert_eq!(
            command.document_version, DOCUMENT_VERSION,
            "{} ran another version",
            command.document
        );
    }

    // Checking again (a restart) now refuses the changed document.
    let err = rig.provisioner.check_documents().await.unwrap_err();
    assert!(
        err.to_string().contains("Passport-GrantLinux is outdated"),
        "{err}"
    );
}

#[tokio::test]
async fn nothing_is_sent_before_the_documents_are_checked() {
    let fake = Arc::new(FakeAws::default());
    let unchecked = AwsProvisioner::new(
        fake.clone(),
        fake.clone(),
        Arc::new(MemoryCommandStore::new()),
        fast(),
        "eu-west-1",
    );
    let id = fake.add(&id(1), Platform::Linux, "running", Some("Online"));
    let err = unchecked
        .grant(&grant_spec(32, vec![info(&id, Platform::Linux)]))
        .await
        .unwrap_err();
    match err {
        ProvisionError::Rejected(text) => assert!(
            text.contains("Passport runs only SSM document versions it has checked")
                && text.contains("restart Passport"),
            "{text}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.send_attempts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_checked_version_deleted_since_is_rejected_saying_what_to_do() {
    let rig = rig(fast()).await;
    let fleet = linux_fleet(&rig, 1);
    rig.fail_sends(Some(ApiError::service(
        "InvalidDocumentVersion",
        "Document version 3 does not exist",
    )));
    match rig.provisioner.grant(&grant_spec(33, fleet)).await.unwrap_err() {
        ProvisionError::Rejected(text) => assert!(
            text.starts_with("version 3 of the SSM document Passport-GrantLinux, which Passport checked at start, is gone")
                && text.contains("passport ssm install")
                && text.contains("restart Passport"),
            "{text}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn aws_error_text_never_reaches_people() {
    let rig = rig(fast()).await;
    let fleet = linux_fleet(&rig, 1);
    let secret = "User: arn:aws:sts::123456789012:assumed-role/passport-bot/i-0abc is not authorized to perform: ssm:SendCommand. Encoded authorization failure message: AbCdEf123";
    for code in ["AccessDeniedException", "ValidationException"] {
        rig.fail_sends(Some(ApiError::service(code, secret)));
        let shown = match rig.provisioner.grant(&grant_spec(18, fleet.clone())).await {
            Ok(outcomes) => outcomes
                .iter()
                .map(|o| detail(o).to_owned())
                .collect::<Vec<_>>()
                .join("; "),
            Err(e) => e.to_string(),
        };
        assert!(shown.contains(code), "{shown}");
        let id = ApiError::service(code, secret).id();
        assert!(
            shown.contains(&format!("error {id}")),
            "the error id ties it to the log: {shown}"
        );
        for leak in [
            "123456789012",
            "arn:aws",
            "passport-bot",
            "AbCdEf123",
            "not authorized",
        ] {
            assert!(!shown.contains(leak), "{leak} shown in {shown}");
        }
    }
}

#[tokio::test]
async fn an_answer_missing_what_aws_always_sends_is_logged_under_the_id_people_see() {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_ansi(false)
        .with_writer(move || LogSink(writer.clone()))
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // SSM accepts SendCommand through the real SDK but names no command.
    let endpoint = fake_aws::FakeAws::start(|_| fake_aws::Answer {
        status: 200,
        content_type: "application/x-amz-json-1.1",
        body: "{}".into(),
    })
    .await;
    let ssm = SdkSsm::new(&endpoint.sdk().await);
    let err = ssm
        .send_command(&CommandRequest {
            document: "Passport-GrantLinux".into(),
            document_version: "1".into(),
            instances: vec![InstanceId::parse(&id(1)).unwrap()],
            parameters: BTreeMap::new(),
            comment: "AR-1".into(),
            delivery_timeout_secs: 600,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("AWS is not answering (error {})", err.id())
    );
    let log = String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("error_id={}", err.id()))
                && l.contains("SendCommand answered without a command id")),
        "{log}"
    );
}

#[derive(Clone)]
struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn parameters_and_documents_follow_the_platform() {
    let rig = rig(fast()).await;
    let passwords = Arc::new(Passwords::default());
    let provisioner = rig.with_passwords(passwords.clone()).await;
    let linux = rig.online(1, Platform::Linux);
    let windows = rig.online(2, Platform::Windows);
    rig.fake.script(&windows, Script::ends(End::Password("pw")));
    let mut spec = grant_spec(
        17,
        vec![
            info(&linux, Platform::Linux),
            info(&windows, Platform::Windows),
        ],
    );
    spec.sudo = true;
    let outcomes = provisioner.grant(&spec).await.unwrap();
    assert!(outcomes.iter().all(|o| o.ok), "{outcomes:?}");

    let mut sent = rig.fake.sent();
    sent.sort_by(|a, b| a.document.cmp(&b.document));
    assert_eq!(sent.len(), 2);
    let (l, w) = (&sent[0], &sent[1]);
    assert_eq!(l.document, "Passport-GrantLinux");
    assert_eq!(l.instances, std::slice::from_ref(&linux));
    assert_eq!(l.comment, "Passport AR-17: grant pp-alice-17");
    assert_eq!(l.delivery_timeout_secs, 300);
    let names = |c: &CommandRequest| c.parameters.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(l),
        [
            "ExpiresAt",
            "PortForwarding",
            "RequestId",
            "SshPublicKey",
            "Sudo",
            "TrustedCaKeys",
            "UidRange",
            "Username"
        ]
    );
    // Without a CA: the key is installed, no CA is trusted.
    assert_eq!(l.parameters["TrustedCaKeys"], ["none"]);
    assert_eq!(l.parameters["PortForwarding"], ["false"]);
    assert_eq!(l.parameters["UidRange"], ["10000000-19999999"]);
    assert_eq!(l.parameters["Username"], ["pp-alice-17"]);
    assert_eq!(l.parameters["RequestId"], ["AR-17"]);
    assert_eq!(l.parameters["ExpiresAt"], ["1790003600"]);
    assert_eq!(l.parameters["Sudo"], ["true"]);
    assert_eq!(
        l.parameters["SshPublicKey"],
        ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkVm1fN7nG8kqzZ1d8dQkPZ5QF1sW7bqkUu1YpJt0dx"],
        "the comment is left out"
    );
    assert_eq!(w.document, "Passport-GrantWindows");
    assert_eq!(w.instances, std::slice::from_ref(&windows));
    assert_eq!(
        names(w),
        ["ExpiresAt", "PublicKey", "RequestId", "Sudo", "Username"]
    );

    rig.fake.script(&windows, Script::ends(End::Success));
    let revoke = provisioner
        .revoke(&revoke_spec(
            17,
            vec![
                info(&linux, Platform::Linux),
                info(&windows, Platform::Windows),
            ],
        ))
        .await
        .unwrap();
    assert!(revoke.iter().all(|o| o.ok));
    let mut sent = rig.fake.sent().split_off(2);
    sent.sort_by(|a, b| a.document.cmp(&b.document));
    assert_eq!(sent[0].document, "Passport-RevokeLinux");
    assert_eq!(sent[1].document, "Passport-RevokeWindows");
    for c in &sent {
        assert_eq!(names(c), ["RequestId", "Username"]);
        assert_eq!(c.comment, "Passport AR-17: revoke pp-alice-17");
    }

    // With a CA: its keys are trusted and no personal key is sent.
    rig.fake.script(&linux, Script::ends(End::Success));
    let ca_keys = vec![
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkVm1fN7nG8kqzZ1d8dQkPZ5QF1sW7bqkUu1YpJt0dx"
            .to_owned(),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
            .to_owned(),
    ];
    let mut with_ca = grant_spec(19, vec![info(&linux, Platform::Linux)]);
    with_ca.trusted_ca_keys = ca_keys.clone();
    with_ca.port_forwarding = true;
    assert!(provisioner
        .grant(&with_ca)
        .await
        .unwrap()
        .iter()
        .all(|o| o.ok));
    let sent = rig.fake.sent();
    let c = sent.last().unwrap();
    assert_eq!(c.parameters["SshPublicKey"], ["none"]);
    assert_eq!(c.parameters["TrustedCaKeys"], [ca_keys.join(",")]);
    assert_eq!(c.parameters["PortForwarding"], ["true"]);
}

#[tokio::test]
async fn a_linux_grant_without_a_registered_key_is_refused_without_sending() {
    let rig = rig(fast()).await;
    let fleet = linux_fleet(&rig, 2);
    let mut spec = grant_spec(18, fleet);
    spec.ssh_public_key = None;
    let outcomes = rig.provisioner.grant(&spec).await.unwrap();
    assert!(outcomes
        .iter()
        .all(|o| !o.ok && detail(o).contains("/passport key set")));
    assert!(rig.fake.sent().is_empty());
}

// ---------------------------------------------------------------------------
// Windows passwords

#[tokio::test]
async fn a_windows_password_reaches_the_sink_and_nothing_else() {
    let rig = rig(fast()).await;
    let passwords = Arc::new(Passwords::default());
    let provisioner = rig.with_passwords(passwords.clone()).await;
    let windows = rig.online(1, Platform::Windows);
    rig.fake
        .script(&windows, Script::ends(End::Password("Tr0ub4dor&3-x")));

    let outcomes = provisioner
        .grant(&grant_spec(19, vec![info(&windows, Platform::Windows)]))
        .await
        .unwrap();

    assert!(outcomes[0].ok && outcomes[0].detail.is_none());
    let got = passwords.0.lock().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, RequestId::new(19).unwrap());
    assert_eq!(got[0].1, windows);
    assert_eq!(got[0].2, "pp-alice-19");
    assert_eq!(got[0].3.expose_secret(), "Tr0ub4dor&3-x");
    let sent = rig.fake.sent();
    assert!(!format!("{sent:?}{outcomes:?}{:?}", rig.store.sent()).contains("Tr0ub4dor"));
}

#[tokio::test]
async fn a_windows_grant_that_returns_no_password_fails() {
    let rig = rig(fast()).await;
    let provisioner = rig.with_passwords(Arc::new(Passwords::default())).await;
    let windows = rig.online(1, Platform::Windows);
    let outcomes = provisioner
        .grant(&grant_spec(20, vec![info(&windows, Platform::Windows)]))
        .await
        .unwrap();
    assert!(!outcomes[0].ok);
    assert_detail(&outcomes[0], "no password");
}

#[tokio::test]
async fn windows_grants_are_refused_when_passwords_cannot_be_delivered() {
    let rig = rig(fast()).await;
    let windows = rig.online(1, Platform::Windows);
    let outcomes = rig
        .provisioner
        .grant(&grant_spec(21, vec![info(&windows, Platform::Windows)]))
        .await
        .unwrap();
    assert!(!outcomes[0].ok);
    assert!(rig.fake.sent().is_empty());
}

#[tokio::test]
async fn a_windows_username_longer_than_windows_allows_is_refused() {
    let rig = rig(fast()).await;
    let provisioner = rig.with_passwords(Arc::new(Passwords::default())).await;
    let windows = rig.online(1, Platform::Windows);
    // Stored before usernames were capped at 20 characters, say.
    let long: Username = serde_json::from_str("\"pp-a-very-long-handle-indeed-22\"").unwrap();
    let spec = GrantSpec {
        username: long,
        ..grant_spec(22, vec![info(&windows, Platform::Windows)])
    };
    let outcomes = provisioner.grant(&spec).await.unwrap();
    assert!(!outcomes[0].ok);
    assert_detail(&outcomes[0], "20 characters");
    assert!(rig.fake.sent().is_empty());
}

// ---------------------------------------------------------------------------
// Resuming

#[tokio::test]
async fn a_command_still_running_at_the_deadline_is_resumed_not_sent_again() {
    let short = AwsSettings {
        delivery_timeout: Duration::from_millis(30),
        execution_timeout: Duration::from_millis(30),
        ..fast()
    };
    let rig = rig(short.clone()).await;
    let fleet = linux_fleet(&rig, 2);
    for i in &fleet {
        rig.fake.script(&i.id, Script::ends(End::Running));
    }
    let spec = grant_spec(23, fleet.clone());

    let first = rig.provisioner.grant(&spec).await.unwrap();
    assert!(
        first
            .iter()
            .all(|o| !o.ok && detail(o).contains("no result from SSM")),
        "{first:?}"
    );
    assert_eq!(rig.fake.sent().len(), 1);

    // The command finishes while Passport restarts with the same store; the
    // engine asks again, with an expiry a little later.
    for i in &fleet {
        rig.fake.script(&i.id, Script::ends(End::Success));
    }
    let restarted = provisioner_on(&rig.fake, &rig.store, short).await;
    let again = GrantSpec {
        expires_at: Timestamp::from_millis(spec.expires_at.as_millis() + 20_000),
        ..spec.clone()
    };
    let second = restarted.grant(&again).await.unwrap();
    assert!(second.iter().all(|o| o.ok), "{second:?}");
    assert_eq!(rig.fake.sent().len(), 1, "resumed, not sent again");

    // Asked once more (the answer was lost before it was recorded): the
    // settled results are returned without sending.
    let third = restarted.grant(&again).await.unwrap();
    assert!(third.iter().all(|o| o.ok));
    assert_eq!(rig.fake.sent().len(), 1);

    // An extension moves the expiry by more than the tolerance: sent again.
    let extended = GrantSpec {
        expires_at: Timestamp::from_millis(spec.expires_at.as_millis() + 3_600_000),
        ..spec
    };
    let fourth = restarted.grant(&extended).await.unwrap();
    assert!(fourth.iter().all(|o| o.ok));
    assert_eq!(rig.fake.sent().len(), 2);
    assert_eq!(rig.fake.sent()[1].parameters["ExpiresAt"], ["1790007200"]);
}

#[tokio::test]
async fn a_revoke_is_sent_again_only_where_it_failed() {
    let rig = rig(fast()).await;
    let fleet = linux_fleet(&rig, 3);
    rig.ends_finally(&fleet[1].id, InvocationStatus::TimedOut, "DeliveryTimedOut");
    let spec = revoke_spec(24, fleet.clone());
    let first = rig.provisioner.revoke(&spec).await.unwrap();
    assert_eq!(
        first.iter().map(|o| o.ok).collect::<Vec<_>>(),
        [true, false, true]
    );

    rig.fake.script(&fleet[1].id, Script::ends(End::Success));
    let second = rig.provisioner.revoke(&spec).await.unwrap();
    assert!(second.iter().all(|o| o.ok));
    let sent = rig.fake.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].instances, [fleet[1].id.clone()]);
}

#[tokio::test]
async fn a_grant_after_a_revoke_is_sent_again() {
    let rig = rig(fast()).await;
    let fleet = linux_fleet(&rig, 1);
    let grant = grant_spec(25, fleet.clone());
    rig.provisioner.grant(&grant).await.unwrap();
    rig.provisioner
        .revoke(&revoke_spec(25, fleet))
        .await
        .unwrap();
    rig.provisioner.grant(&grant).await.unwrap();
    let documents: Vec<String> = rig.fake.sent().into_iter().map(|c| c.document).collect();
    assert_eq!(
        documents,
        [
            "Passport-GrantLinux",
            "Passport-RevokeLinux",
            "Passport-GrantLinux"
        ]
    );
}

#[tokio::test]
async fn commands_recorded_in_sqlite_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("passport.db");
    let short = AwsSettings {
        delivery_timeout: Duration::from_millis(30),
        execution_timeout: Duration::from_millis(30),
        ..fast()
    };
    let fake = Arc::new(FakeAws::default());
    let id = fake.add(&id(1), Platform::Linux, "running", Some("Online"));
    fake.script(&id, Script::ends(End::Running));
    let spec = revoke_spec(26, vec![info(&id, Platform::Linux)]);

    let database = SqliteStore::open(&db, Durability::Normal).await.unwrap();
    let first = AwsProvisioner::new(
        fake.clone(),
        fake.clone(),
        Arc::new(SqliteCommandStore::new(database.clone())),
        short.clone(),
        "eu-west-1",
    );
    first.check_documents().await.unwrap();
    let outcomes = first.revoke(&spec).await.unwrap();
    assert!(!outcomes[0].ok);
    database.close().await;
    drop(first);

    fake.script(&id, Script::ends(End::Success));
    let reopened = SqliteStore::open(&db, Durability::Normal).await.unwrap();
    let second = AwsProvisioner::new(
        fake.clone(),
        fake.clone(),
        Arc::new(SqliteCommandStore::new(reopened)),
        short,
        "eu-west-1",
    );
    second.check_documents().await.unwrap();
    let outcomes = second.revoke(&spec).await.unwrap();
    assert!(outcomes[0].ok, "{outcomes:?}");
    assert_eq!(
        fake.sent().len(),
        1,
        "resumed from the database, not sent again"
    );
}

#[tokio::test]
async fn pruning_forgets_only_old_settled_commands() {
    let dir = tempfile::tempdir().unwrap();
    let database = SqliteStore::open(&dir.path().join("passport.db"), Durability::Normal)
        .await
        .unwrap();
    prunes_only_old_settled_commands(&SqliteCommandStore::new(database)).await;
    prunes_only_old_settled_commands(&passport::adapters::aws::MemoryCommandStore::new()).await;
}

/// A store on a fresh database of the throwaway PostgreSQL server.
async fn fresh_pg() -> PgStore {
    let url = postgres::fresh_database().await;
    PgStore::connect(&url, PgOptions::new(Arc::new(SystemClock)))
        .await
        .unwrap()
}

#[tokio::test]
async fn commands_recorded_in_postgres_survive_a_restart_and_reach_another_replica() {
    let short = AwsSettings {
        delivery_timeout: Duration::from_millis(30),
        execution_timeout: Duration::from_millis(30),
        ..fast()
    };
    let fake = Arc::new(FakeAws::default());
    let id = fake.add(&id(1), Platform::Linux, "running", Some("Online"));
    fake.script(&id, Script::ends(End::Running));
    let spec = revoke_spec(26, vec![info(&id, Platform::Linux)]);

    let url = postgres::fresh_database().await;
    let database = PgStore::connect(&url, PgOptions::new(Arc::new(SystemClock)))
        .await
        .unwrap();
    let first = AwsProvisioner::new(
        fake.clone(),
        fake.clone(),
        Arc::new(PgCommandStore::new(database.clone())),
        short.clone(),
        "eu-west-1",
    );
    first.check_documents().await.unwrap();
    let outcomes = first.revoke(&spec).await.unwrap();
    assert!(!outcomes[0].ok);
    // The command id was committed before the call returned: a process that
    // dies now leaves it to the next.
    database.close().await;
    drop(first);

    // Another process (a second replica, or this one restarted) on the same
    // database resumes the command rather than sending it again.
    fake.script(&id, Script::ends(End::Success));
    let other = PgStore::connect(&url, PgOptions::new(Arc::new(SystemClock)))
        .await
        .unwrap();
    let second = AwsProvisioner::new(
        fake.clone(),
        fake.clone(),
        Arc::new(PgCommandStore::new(other.clone())),
        short,
        "eu-west-1",
    );
    second.check_documents().await.unwrap();
    let outcomes = second.revoke(&spec).await.unwrap();
    assert!(outcomes[0].ok, "{outcomes:?}");
    assert_eq!(
        fake.sent().len(),
        1,
        "resumed from the database, not sent again"
    );
    other.close().await;
}

#[tokio::test]
async fn pruning_on_postgres_forgets_only_old_settled_commands() {
    let database = fresh_pg().await;
    prunes_only_old_settled_commands(&PgCommandStore::new(database.clone())).await;
    database.close().await;
}

#[tokio::test]
async fn commands_sent_in_one_millisecond_keep_their_order_on_postgres() {
    use passport::adapters::aws::store::{Operation, SentCommand};

    let database = fresh_pg().await;
    let store = PgCommandStore::new(database.clone());
    let request = RequestId::new(28).unwrap();
    let a = InstanceId::parse(&id(1)).unwrap();
    // Named against their order, so only the recording order can tell.
    for command in ["z-first", "m-second", "a-third"] {
        store
            .record_sent(&SentCommand {
                command_id: command.into(),
                request,
                operation: Operation::Grant,
                document: "Passport-GrantLinux".into(),
                fingerprint: "f".into(),
                expires_at: Some(1),
                sent_at_ms: 5_000,
                instances: vec![a.clone()],
            })
            .await
            .unwrap();
    }
    let last = store
        .last_commands(request, std::slice::from_ref(&a))
        .await
        .unwrap();
    assert_eq!(last[&a].command.command_id, "a-third");
    database.close().await;
}

async fn prunes_only_old_settled_commands(store: &dyn passport::adapters::aws::CommandStore) {
    use passport::adapters::aws::store::{Operation, SentCommand, Settled};

    let request = RequestId::new(27).unwrap();
    let a = InstanceId::parse(&id(1)).unwrap();
    let b = InstanceId::parse(&id(2)).unwrap();
    let sent = |command: &str, at: i64| SentCommand {
        command_id: command.into(),
        request,
        operation: Operation::Revoke,
        document: "Passport-RevokeLinux".into(),
        fingerprint: "f".into(),
        expires_at: None,
        sent_at_ms: at,
        instances: vec![a.clone(), b.clone()],
    };
    let ok = Settled {
        status: "Success".into(),
        ok: true,
        detail: None,
    };
    store.record_sent(&sent("old-done", 1_000)).await.unwrap();
    store.record_sent(&sent("old-open", 2_000)).await.unwrap();
    store.record_sent(&sent("new-done", 9_000)).await.unwrap();
    for command in ["old-done", "new-done"] {
        store.record_settled(command, &a, &ok).await.unwrap();
        store.record_settled(command, &b, &ok).await.unwrap();
    }
    store.record_settled("old-open", &a, &ok).await.unwrap();

    assert_eq!(store.prune(5_000).await.unwrap(), 1);
    let last = store
        .last_commands(request, &[a.clone(), b.clone()])
        .await
        .unwrap();
    assert_eq!(last[&a].command.command_id, "new-done");
    // Pruning again keeps the command still open on b.
    assert_eq!(store.prune(10_000).await.unwrap(), 1);
    let last = store.last_commands(request, &[a, b.clone()]).await.unwrap();
    assert_eq!(last[&b].command.command_id, "old-open");
    assert!(last[&b].settled.is_none());
}
