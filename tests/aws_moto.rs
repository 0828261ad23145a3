//! The AWS provisioner against a real `moto` server (a local AWS-compatible
//! server) through the real SDK: discovery, SendCommand wiring and batching,
//! command ids kept across a restart, the SSM documents, and the STS
//! AssumeRole that scoped Session Manager credentials come from (through a
//! recording proxy, since moto neither evaluates nor echoes session policies).
//!
//! moto answers every command with `Success` at once and lacks
//! DescribeInstanceInformation, so these tests turn the SSM-online check off;
//! tests/aws_fake.rs covers both. The tests skip, loudly, only when no
//! `moto_server` can be found and `CI` is not set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/aws.rs"]
mod aws;
#[path = "common/process.rs"]
mod process;

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws::{grant_spec, revoke_spec};
use aws_config::SdkConfig;
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use aws_sdk_ssm::config::Credentials;
use passport::adapters::aws::documents::{
    check_documents, install_documents, passport_documents, DocumentSource, InstallAction,
};
use passport::adapters::aws::sdk::{sdk_loader, SdkSsm};
use passport::adapters::aws::store::{CommandStore, Operation};
use passport::adapters::aws::AwsProbe;
use passport::adapters::aws::{
    AwsProvisioner, AwsSettings, DocumentNames, DocumentsError, SqliteCommandStore,
};
use passport::adapters::clock::ManualClock;
use passport::adapters::sqlite::{Durability, SqliteStore};
use passport::app::ports::{Described, GrantSpec, Provisioner};
use passport::domain::request::{InstanceInfo, Platform};
use passport::domain::time::Timestamp;
use passport::domain::values::{InstanceId, RequestId, Username};
use passport::http::ready::{Readiness, Report, PROBE_DEADLINE};

const LINUX_AMI: &str = "ami-1e749f67";
const WINDOWS_AMI: &str = "ami-03cf127a";
const REGION: &str = "eu-west-1";

// ---------------------------------------------------------------------------
// The server

/// A moto server on a free loopback port, stopped when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn executable(path: &Path) -> Option<PathBuf> {
    path.is_file().then(|| path.to_path_buf())
}

/// `PASSPORT_MOTO_SERVER`, else the virtualenv beside the build output that
/// scripts/test makes, else `moto_server` on the PATH.
fn moto_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PASSPORT_MOTO_SERVER") {
        let found = executable(Path::new(&path));
        if found.is_none() {
            eprintln!(
                "PASSPORT_MOTO_SERVER={} is not a file",
                Path::new(&path).display()
            );
        }
        return found;
    }
    let mut candidates = Vec::new();
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(target).join("../moto-venv/bin/moto_server"));
    }
    // The test binary lives in <target>/debug/deps/.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.ancestors().nth(3) {
            candidates.push(target.join("../moto-venv/bin/moto_server"));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/passport/moto-venv/bin/moto_server"));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&paths).map(|p| p.join("moto_server")));
    }
    candidates.iter().find_map(|c| executable(c))
}

/// Starts moto, or returns `None` after saying loudly why the test is skipped.
fn start_moto() -> Option<Moto> {
    let Some(binary) = moto_binary() else {
        assert!(
            !under_ci(),
            "moto_server was not found and CI is set: run scripts/test, or set PASSPORT_MOTO_SERVER to a moto_server binary"
        );
        eprintln!(
            "\n!!! SKIPPED: moto_server was not found. These tests need moto: run scripts/test, \
             or `python3 -m venv ~/.cache/passport/moto-venv && ~/.cache/passport/moto-venv/bin/pip install 'moto[server]>=5,<6'`, \
             or set PASSPORT_MOTO_SERVER. !!!\n"
        );
        return None;
    };
    // One start at a time: between finding a free port and moto listening on it,
    // another test must not be handed the same port.
    static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _starting = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let child = Command::new(&binary)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let mut moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = moto.child.try_wait() {
            panic!("{} exited at start: {status}", binary.display());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "moto did not start listening within a minute"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Something answered on the port; make sure it is our moto, still running.
    std::thread::sleep(Duration::from_millis(100));
    if let Ok(Some(status)) = moto.child.try_wait() {
        panic!("{} exited at start: {status}", binary.display());
    }
    Some(moto)
}

macro_rules! moto_or_skip {
    () => {
        match start_moto() {
            Some(moto) => moto,
            None => return,
        }
    };
}

fn settings(moto: &Moto) -> AwsSettings {
    AwsSettings {
        region: Some(REGION.into()),
        endpoint_url: Some(moto.url.clone()),
        // moto does not implement DescribeInstanceInformation.
        check_ssm_online: false,
        poll_initial: Duration::from_millis(10),
        poll_max: Duration::from_millis(50),
        ..AwsSettings::default()
    }
}

async fn sdk(settings: &AwsSettings) -> SdkConfig {
    sdk_loader(settings)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .load()
        .await
}

struct Rig {
    _moto: Moto,
    _dir: tempfile::TempDir,
    db: PathBuf,
    settings: AwsSettings,
    sdk: SdkConfig,
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
}

async fn rig(moto: Moto) -> Rig {
    let settings = settings(&moto);
    let sdk = sdk(&settings).await;
    let dir = tempfile::tempdir().unwrap();
    Rig {
        db: dir.path().join("passport.db"),
        _dir: dir,
        ec2: aws_sdk_ec2::Client::new(&sdk),
        ssm: aws_sdk_ssm::Client::new(&sdk),
        settings,
        sdk,
        _moto: moto,
    }
}

impl Rig {
    /// A provisioner as `serve` has it: the documents installed and checked,
    /// so that its commands run the versions the check verified.
    async fn provisioner(&self, settings: &AwsSettings) -> AwsProvisioner {
        self.provisioner_on(&self.sdk, settings).await
    }

    async fn provisioner_on(&self, sdk: &SdkConfig, settings: &AwsSettings) -> AwsProvisioner {
        let database = SqliteStore::open(&self.db, Durability::Normal)
            .await
            .unwrap();
        let store = Arc::new(SqliteCommandStore::new(database));
        let provisioner = AwsProvisioner::from_sdk_config(sdk, settings, store).unwrap();
        provisioner.install_documents().await.unwrap();
        provisioner.check_documents().await.unwrap();
        provisioner
    }

    /// Runs `count` instances of `ami` with a Name tag, one more tag and the
    /// tag that opens them to Passport.
    async fn run(&self, ami: &str, count: i32, name: &str) -> Vec<InstanceId> {
        self.run_tagged(ami, count, name, true).await
    }

    async fn run_tagged(&self, ami: &str, count: i32, name: &str, open: bool) -> Vec<InstanceId> {
        let mut tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(Tag::builder().key("Name").value(name).build())
            .tags(Tag::builder().key("env").value("prod").build());
        if open {
            tags = tags.tags(
                Tag::builder()
                    .key("passport:access")
                    .value("allowed")
                    .build(),
            );
        }
        let out = self
            .ec2
            .run_instances()
            .image_id(ami)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(count)
            .max_count(count)
            .tag_specifications(tags.build())
            .send()
            .await
            .unwrap();
        out.instances()
            .iter()
            .map(|i| InstanceId::parse(i.instance_id().unwrap()).unwrap())
            .collect()
    }

    /// SendCommand calls moto has recorded, oldest first.
    async fn commands(&self) -> Vec<aws_sdk_ssm::types::Command> {
        self.ssm
            .list_commands()
            .send()
            .await
            .unwrap()
            .commands()
            .to_vec()
    }
}

fn linux(ids: &[InstanceId]) -> Vec<InstanceInfo> {
    ids.iter()
        .map(|id| InstanceInfo::assumed(id.clone(), Platform::Linux))
        .collect()
}

// ---------------------------------------------------------------------------
// Discovery

#[tokio::test]
async fn discovery_reports_tags_platforms_every_interface_and_each_bad_id() {
    let rig = rig(moto_or_skip!()).await;
    let web = rig.run(LINUX_AMI, 1, "web-1").await.remove(0);
    let win = rig.run(WINDOWS_AMI, 1, "rdp-1").await.remove(0);
    let stopped = rig.run(LINUX_AMI, 1, "old").await.remove(0);
    let gone = rig.run(LINUX_AMI, 1, "gone").await.remove(0);
    rig.ec2
        .stop_instances()
        .instance_ids(stopped.as_str())
        .send()
        .await
        .unwrap();
    rig.ec2
        .terminate_instances()
        .instance_ids(gone.as_str())
        .send()
        .await
        .unwrap();

    // A second network interface, with a secondary address, on the web instance.
    let subnet = rig.ec2.describe_subnets().send().await.unwrap().subnets()[0]
        .subnet_id()
        .unwrap()
        .to_owned();
    let eni = rig
        .ec2
        .create_network_interface()
        .subnet_id(&subnet)
        .secondary_private_ip_address_count(1)
        .send()
        .await
        .unwrap();
    let eni = eni.network_interface().unwrap();
    let eni_ips: Vec<String> = eni
        .private_ip_addresses()
        .iter()
        .filter_map(|a| a.private_ip_address().map(str::to_owned))
        .collect();
    assert_eq!(eni_ips.len(), 2, "{eni_ips:?}");
    rig.ec2
        .attach_network_interface()
        .network_interface_id(eni.network_interface_id().unwrap())
        .instance_id(web.as_str())
        .device_index(1)
        .send()
        .await
        .unwrap();

    let unknown = InstanceId::parse("i-0123456789abcdef0").unwrap();
    let asked = vec![
        web.clone(),
        win.clone(),
        stopped.clone(),
        gone.clone(),
        unknown.clone(),
    ];
    let provisioner = rig.provisioner(&rig.settings).await;
    let described = provisioner.describe(&asked).await.unwrap();
    assert_eq!(described.len(), 5);

    let Described::Usable(w) = &described[0] else {
        panic!("{:?}", described[0])
    };
    assert_eq!(w.id, web);
    assert_eq!(w.name.as_deref(), Some("web-1"));
    assert_eq!(w.platform, Platform::Linux);
    assert_eq!(w.state, "running");
    assert_eq!(w.tags.get("env").map(String::as_str), Some("prod"));
    assert_eq!(
        w.private_ips.len(),
        3,
        "primary interface and both addresses of the second: {:?}",
        w.private_ips
    );
    for ip in &eni_ips {
        assert!(
            w.private_ips.contains(ip),
            "{ip} missing from {:?}",
            w.private_ips
        );
    }
    assert!(
        !eni_ips.contains(&w.private_ips[0]),
        "the primary interface comes first"
    );

    let Described::Usable(r) = &described[1] else {
        panic!("{:?}", described[1])
    };
    assert_eq!(r.platform, Platform::Windows);
    assert_eq!(r.name.as_deref(), Some("rdp-1"));

    let reasons: Vec<(InstanceId, String)> = described[2..]
        .iter()
        .map(|d| match d {
            Described::Unusable { id, reason } => (id.clone(), reason.clone()),
            other => panic!("{other:?} should be unusable"),
        })
        .collect();
    assert_eq!(reasons[0].0, stopped);
    assert!(
        reasons[0].1.starts_with("the instance is stopp"),
        "{}",
        reasons[0].1
    );
    assert_eq!(reasons[1].0, gone);
    assert!(
        reasons[1].1.contains("terminated") || reasons[1].1.contains("shutting-down"),
        "{}",
        reasons[1].1
    );
    assert_eq!(reasons[2].0, unknown);
    assert_eq!(
        reasons[2].1,
        "no such instance in eu-west-1: check the id (instances in other regions or accounts cannot be used)"
    );
}

#[tokio::test]
async fn an_instance_without_the_access_tag_is_refused_and_a_tagged_one_granted() {
    let rig = rig(moto_or_skip!()).await;
    let open = rig.run(LINUX_AMI, 1, "open").await.remove(0);
    let closed = rig
        .run_tagged(LINUX_AMI, 1, "closed", false)
        .await
        .remove(0);
    let provisioner = rig.provisioner(&rig.settings).await;

    let described = provisioner
        .describe(&[open.clone(), closed.clone()])
        .await
        .unwrap();
    let Described::Usable(usable) = &described[0] else {
        panic!("{:?}", described[0])
    };
    assert_eq!(usable.id, open);
    match &described[1] {
        Described::Unusable { id, reason } => {
            assert_eq!(id, &closed);
            assert_eq!(
                reason,
                "Passport may not manage this instance: it lacks the tag passport:access=allowed that opens an instance to Passport; ask the instance's owners to add it if it should be reachable this way"
            );
        }
        other => panic!("{other:?} should be refused"),
    }

    let outcomes = provisioner
        .grant(&grant_spec(45, vec![usable.clone()]))
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].instance, open);
    assert!(outcomes[0].ok, "{outcomes:?}");
    // (moto lists every instance of the region as a command's targets, so
    // the command's own target list cannot show which one was asked for.)
    assert_eq!(rig.commands().await.len(), 1);
}

// ---------------------------------------------------------------------------
// SendCommand

#[tokio::test]
async fn grant_and_revoke_send_our_documents_with_parameters_and_targets() {
    let rig = rig(moto_or_skip!()).await;
    // The only instances in the region (see the batching test for why that matters).
    let ids = rig.run(LINUX_AMI, 2, "web").await;
    let provisioner = rig.provisioner(&rig.settings).await;

    let mut spec = grant_spec(41, linux(&ids));
    spec.sudo = true;
    let outcomes = provisioner.grant(&spec).await.unwrap();
    assert_eq!(outcomes.len(), 2);
    assert!(outcomes.iter().all(|o| o.ok), "{outcomes:?}");

    let revoked = provisioner
        .revoke(&revoke_spec(41, linux(&ids)))
        .await
        .unwrap();
    assert!(revoked.iter().all(|o| o.ok), "{revoked:?}");

    let commands = rig.commands().await;
    assert_eq!(commands.len(), 2);
    let grant = &commands[0];
    assert_eq!(grant.document_name(), Some("Passport-GrantLinux"));
    assert_eq!(grant.comment(), Some("Passport AR-41: grant pp-alice-41"));
    assert_eq!(grant.timeout_seconds(), Some(300), "the delivery timeout");
    let targets: BTreeSet<&str> = grant.instance_ids().iter().map(String::as_str).collect();
    assert_eq!(targets, ids.iter().map(InstanceId::as_str).collect());
    let params = grant.parameters().unwrap();
    let one = |name: &str| params.get(name).map(|v| v.join(","));
    assert_eq!(one("Username").as_deref(), Some("pp-alice-41"));
    assert_eq!(one("RequestId").as_deref(), Some("AR-41"));
    assert_eq!(one("ExpiresAt").as_deref(), Some("1790003600"));
    assert_eq!(one("Sudo").as_deref(), Some("true"));
    assert_eq!(
        one("SshPublicKey").as_deref(),
        Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkVm1fN7nG8kqzZ1d8dQkPZ5QF1sW7bqkUu1YpJt0dx")
    );
    assert_eq!(one("TrustedCaKeys").as_deref(), Some("none"));
    assert_eq!(one("PortForwarding").as_deref(), Some("false"));
    assert_eq!(one("UidRange").as_deref(), Some("10000000-19999999"));
    assert_eq!(params.len(), 8);

    let revoke = &commands[1];
    assert_eq!(revoke.document_name(), Some("Passport-RevokeLinux"));
    assert_eq!(revoke.comment(), Some("Passport AR-41: revoke pp-alice-41"));
    let params = revoke.parameters().unwrap();
    assert_eq!(params.len(), 2);
    assert_eq!(params["Username"], ["pp-alice-41"]);
}

#[tokio::test]
async fn one_hundred_and_twenty_instances_take_three_commands() {
    let rig = rig(moto_or_skip!()).await;
    // Not launched: moto adds every instance of the region to a command sent
    // without targets, which would hide the batching. SendCommand does not
    // check that the ids exist.
    let ids: Vec<InstanceId> = (1..=120u32)
        .map(|n| InstanceId::parse(&format!("i-{n:017x}")).unwrap())
        .collect();
    let provisioner = rig.provisioner(&rig.settings).await;

    let outcomes = provisioner
        .grant(&grant_spec(42, linux(&ids)))
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 120);
    assert!(outcomes.iter().all(|o| o.ok));

    let commands = rig.commands().await;
    assert_eq!(commands.len(), 3);
    let mut sizes: Vec<usize> = commands.iter().map(|c| c.instance_ids().len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [20, 50, 50]);
    let targeted: BTreeSet<&str> = commands
        .iter()
        .flat_map(|c| c.instance_ids())
        .map(String::as_str)
        .collect();
    assert_eq!(targeted, ids.iter().map(InstanceId::as_str).collect());
}

// ---------------------------------------------------------------------------
// Restart

#[tokio::test]
async fn command_ids_are_kept_and_a_restart_resumes_instead_of_sending_again() {
    let rig = rig(moto_or_skip!()).await;
    let ids = rig.run(LINUX_AMI, 3, "db").await;
    let spec = grant_spec(43, linux(&ids));

    // The first process sends, then stops before it polls even once.
    let patient = AwsSettings {
        poll_initial: Duration::from_secs(60),
        poll_max: Duration::from_secs(60),
        ..rig.settings.clone()
    };
    let first = rig.provisioner(&patient).await;
    let running = tokio::spawn({
        let spec = spec.clone();
        async move { first.grant(&spec).await }
    });
    let watcher_db = SqliteStore::open(&rig.db, Durability::Normal)
        .await
        .unwrap();
    let watcher = SqliteCommandStore::new(watcher_db.clone());
    let started = Instant::now();
    let sent = loop {
        let last = watcher.last_commands(spec.request, &ids).await.unwrap();
        if last.len() == ids.len() {
            break last;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the command was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    running.abort();
    let _ = running.await;

    let commands = rig.commands().await;
    assert_eq!(commands.len(), 1);
    let command_id = commands[0].command_id().unwrap().to_owned();
    for last in sent.values() {
        assert_eq!(
            last.command.command_id, command_id,
            "the id SSM gave is what was recorded"
        );
        assert_eq!(last.command.operation, Operation::Grant);
        assert_eq!(last.command.document, "Passport-GrantLinux");
        assert_eq!(last.command.expires_at, Some(1_790_003_600));
        assert!(last.settled.is_none());
    }

    // A new process on the same database is asked again (with an expiry a few
    // seconds later, as the engine computes it anew): it polls the recorded
    // command and sends nothing.
    let second = rig.provisioner(&rig.settings).await;
    let again = GrantSpec {
        expires_at: Timestamp::from_millis(spec.expires_at.as_millis() + 5_000),
        ..spec.clone()
    };
    let outcomes = second.grant(&again).await.unwrap();
    assert!(outcomes.iter().all(|o| o.ok), "{outcomes:?}");
    assert_eq!(rig.commands().await.len(), 1, "nothing was sent again");

    let settled = watcher.last_commands(spec.request, &ids).await.unwrap();
    for last in settled.values() {
        let s = last.settled.as_ref().expect("settled and recorded");
        assert!(s.ok);
        assert_eq!(s.status, "Success");
    }
    watcher_db.close().await;
}

// ---------------------------------------------------------------------------
// Documents

#[tokio::test]
async fn documents_are_installed_checked_updated_and_rolled_back() {
    let rig = rig(moto_or_skip!()).await;
    let ssm = SdkSsm::new(&rig.sdk);
    let docs = passport_documents(&DocumentNames::default());

    match check_documents(&ssm, &docs).await {
        Err(DocumentsError::NotReady(text)) => {
            assert!(text.contains("Passport-GrantLinux is missing"), "{text}");
            assert!(text.contains("Passport-RevokeWindows is missing"), "{text}");
            assert!(text.contains("passport ssm install"), "{text}");
        }
        other => panic!("{other:?}"),
    }

    let installed = install_documents(&ssm, &docs).await.unwrap();
    assert_eq!(installed.len(), 4);
    assert!(
        installed.iter().all(|(_, a)| *a == InstallAction::Created),
        "{installed:?}"
    );
    check_documents(&ssm, &docs).await.unwrap();
    let provisioner = rig.provisioner(&rig.settings).await;
    provisioner.check_documents().await.unwrap();

    let again = install_documents(&ssm, &docs).await.unwrap();
    assert!(
        again.iter().all(|(_, a)| *a == InstallAction::Unchanged),
        "{again:?}"
    );

    // Another build with a changed grant script updates that document only.
    let mut newer = docs.clone();
    newer[0] = DocumentSource {
        name: newer[0].name.clone(),
        content: newer[0].content.replace("umask 077", "umask 0077"),
    };
    assert_ne!(newer[0].content, docs[0].content);
    let updated = install_documents(&ssm, &newer).await.unwrap();
    assert_eq!(
        updated[0],
        (
            "Passport-GrantLinux".to_owned(),
            InstallAction::Updated {
                version: "2".into()
            }
        )
    );
    assert!(updated[1..]
        .iter()
        .all(|(_, a)| *a == InstallAction::Unchanged));

    // This build now sees its grant document as outdated and refuses.
    match check_documents(&ssm, &docs).await {
        Err(DocumentsError::NotReady(text)) => {
            assert!(text.contains("Passport-GrantLinux is outdated"), "{text}");
            assert!(!text.contains("RevokeLinux"), "{text}");
        }
        other => panic!("{other:?}"),
    }

    // Installing this build again brings back version 1, which has its content.
    let rolled_back = install_documents(&ssm, &docs).await.unwrap();
    assert_eq!(
        rolled_back[0],
        (
            "Passport-GrantLinux".to_owned(),
            InstallAction::Updated {
                version: "1".into()
            }
        )
    );
    check_documents(&ssm, &docs).await.unwrap();
}

// ---------------------------------------------------------------------------
// Session Manager credentials (STS AssumeRole)

/// An HTTP proxy on a free loopback port that forwards everything to
/// `upstream` and keeps each request's body, to see exactly what the SDK sent.
struct RecordingProxy {
    url: String,
    bodies: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn recording_proxy(upstream: &str) -> RecordingProxy {
    use axum::body::Body;
    use axum::extract::{Request, State};
    use axum::response::Response;

    #[derive(Clone)]
    struct Forward {
        upstream: String,
        client: reqwest::Client,
        bodies: Arc<std::sync::Mutex<Vec<String>>>,
    }

    async fn forward(State(f): State<Forward>, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        f.bodies
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&bytes).into_owned());
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut headers = parts.headers.clone();
        headers.remove(axum::http::header::HOST);
        let answer = f
            .client
            .request(parts.method, format!("{}{path}", f.upstream))
            .headers(headers)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let mut response = Response::builder().status(answer.status());
        for (name, value) in answer.headers() {
            if name != axum::http::header::TRANSFER_ENCODING {
                response = response.header(name, value);
            }
        }
        response
            .body(Body::from(answer.bytes().await.unwrap()))
            .unwrap()
    }

    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let state = Forward {
        upstream: upstream.to_owned(),
        client: reqwest::Client::new(),
        bodies: bodies.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(forward).with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    RecordingProxy { url, bodies }
}

#[tokio::test]
async fn send_command_names_the_version_checked_at_start_even_after_an_update() {
    let rig = rig(moto_or_skip!()).await;
    let ids = rig.run(LINUX_AMI, 1, "pinned").await;
    // moto keeps no DocumentVersion with a command: read what the SDK sent.
    let proxy = recording_proxy(rig.settings.endpoint_url.as_deref().unwrap()).await;
    let through = AwsSettings {
        endpoint_url: Some(proxy.url.clone()),
        ..rig.settings.clone()
    };
    let provisioner = rig.provisioner_on(&sdk(&through).await, &through).await;
    provisioner
        .grant(&grant_spec(46, linux(&ids)))
        .await
        .unwrap();

    // Someone installs other content after the check: version 2 becomes the default.
    let ssm = SdkSsm::new(&rig.sdk);
    let mut newer = passport_documents(&DocumentNames::default());
    newer[0].content = newer[0].content.replace("umask 077", "umask 0077");
    install_documents(&ssm, &newer).await.unwrap();
    let described = rig
        .ssm
        .describe_document()
        .name("Passport-GrantLinux")
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.document().and_then(|d| d.default_version()),
        Some("2")
    );
    provisioner
        .grant(&grant_spec(47, linux(&ids)))
        .await
        .unwrap();

    let sends: Vec<serde_json::Value> = proxy
        .bodies
        .lock()
        .unwrap()
        .iter()
        .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        .filter(|b| b.get("DocumentName").is_some() && b.get("InstanceIds").is_some())
        .collect();
    assert_eq!(sends.len(), 2, "{sends:?}");
    for body in &sends {
        assert_eq!(body["DocumentName"], "Passport-GrantLinux");
        assert_eq!(body["DocumentVersion"], "1", "{body}");
    }
}

#[tokio::test]
async fn assume_role_asks_for_the_role_duration_identity_tags_and_exact_policy() {
    use passport::adapters::aws::sdk::SdkSts;
    use passport::adapters::aws::sessions::{owned_by, StsSessionBroker};
    use passport::adapters::aws::RoleArn;
    use passport::app::ports::SessionBroker;
    use passport::domain::session::SessionScope;
    use passport::domain::values::UserId;
    use secrecy::ExposeSecret;

    let moto = moto_or_skip!();
    let proxy = recording_proxy(&moto.url).await;
    let settings = AwsSettings {
        endpoint_url: Some(proxy.url.clone()),
        ..settings(&moto)
    };
    let sdk = sdk(&settings).await;
    let role = RoleArn::parse("arn:aws:iam::123456789012:role/passport-session").unwrap();
    let broker = StsSessionBroker::new(
        Arc::new(SdkSts::new(&sdk)),
        Arc::new(SdkSsm::new(&sdk)),
        role.clone(),
        REGION.into(),
    );
    let request = RequestId::new(42).unwrap();
    let username = Username::for_request("ann", request);
    let a = InstanceId::parse("i-0123456789abcdef0").unwrap();
    let b = InstanceId::parse("i-0fedcba9876543210").unwrap();
    let now = Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    );
    let scope = SessionScope {
        request,
        username: username.clone(),
        requester: UserId::parse("U024BE7LH").unwrap(),
        handle: "ann <ops>".into(),
        instances: vec![a.clone(), b.clone()],
        ssh: true,
        port_forwarding: true,
        remote_port_forwarding: false,
        not_after: Timestamp::parse_rfc3339("2030-01-02T03:04:05Z").unwrap(),
    };

    let credentials = broker.credentials(&scope, now).await.unwrap();
    assert!(!credentials.access_key_id.is_empty());
    assert!(!credentials.secret_access_key.expose_secret().is_empty());
    assert!(!credentials.session_token.expose_secret().is_empty());
    assert_eq!(credentials.region, REGION);
    let lives = credentials.expiration.as_millis() - now.as_millis();
    assert!((850_000..=960_000).contains(&lives), "{lives} ms");

    // What the SDK sent, decoded.
    let bodies = proxy.bodies.lock().unwrap().clone();
    let sent: Vec<(String, String)> = bodies
        .iter()
        .map(|b| serde_urlencoded::from_str::<Vec<(String, String)>>(b).unwrap())
        .find(|form| form.iter().any(|(k, v)| k == "Action" && v == "AssumeRole"))
        .expect("an AssumeRole call");
    let field = |name: &str| {
        sent.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} not sent: {sent:?}"))
    };
    assert_eq!(field("RoleArn"), role.as_str());
    assert_eq!(field("RoleSessionName"), "pp-ann-42");
    assert_eq!(field("SourceIdentity"), "U024BE7LH");
    assert_eq!(field("DurationSeconds"), "900");
    assert_eq!(field("Tags.member.1.Key"), "passport:request");
    assert_eq!(field("Tags.member.1.Value"), "AR-42");
    assert_eq!(field("Tags.member.2.Key"), "passport:requester");
    assert_eq!(field("Tags.member.2.Value"), "ann _ops_");
    assert!(!sent.iter().any(|(k, _)| k.starts_with("TransitiveTagKeys")));
    let policy: serde_json::Value = serde_json::from_str(&field("Policy")).unwrap();
    let start = &policy["Statement"][0];
    assert_eq!(start["Action"], "ssm:StartSession");
    assert_eq!(
        start["Resource"],
        serde_json::json!([
            "arn:aws:ec2:eu-west-1:123456789012:instance/i-0123456789abcdef0",
            "arn:aws:ec2:eu-west-1:123456789012:instance/i-0fedcba9876543210",
            "arn:aws:ssm:eu-west-1::document/AWS-StartSSHSession",
            "arn:aws:ssm:eu-west-1::document/AWS-StartPortForwardingSession",
        ])
    );
    assert_eq!(
        start["Condition"]["DateLessThan"]["aws:CurrentTime"],
        "2030-01-02T03:04:05Z"
    );
    assert_eq!(
        policy["Statement"][1]["Resource"],
        "arn:aws:ssm:eu-west-1:123456789012:session/pp-ann-42-*"
    );

    // The credentials work, and are the role session whose sessions
    // `end_sessions` recognises as this request's.
    let assumed = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(passport::adapters::aws::sdk::https_client())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(&moto.url)
        .credentials_provider(Credentials::new(
            credentials.access_key_id.clone(),
            credentials.secret_access_key.expose_secret().to_owned(),
            Some(credentials.session_token.expose_secret().to_owned()),
            None,
            "assumed",
        ))
        .load()
        .await;
    let me = aws_sdk_sts::Client::new(&assumed)
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    let arn = me.arn().unwrap();
    assert!(owned_by(arn, &role, &username), "{arn}");
}

// ---------------------------------------------------------------------------
// Readiness

/// `/readyz`'s AWS check against moto: not ready while Passport's documents
/// are missing (saying to install them), ready once they are; against a
/// closed loopback port, and against one that accepts but never answers,
/// not ready, and within the deadline.
#[tokio::test]
async fn readiness_asks_aws_within_its_deadline() {
    let rig = rig(moto_or_skip!()).await;
    let store = Arc::new(
        SqliteStore::open(&rig.db, Durability::Normal)
            .await
            .unwrap(),
    );
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_800_000_000_000)));
    let readiness = |settings: &AwsSettings, sdk: &SdkConfig| {
        Readiness::new(store.clone(), clock.clone())
            .with_probe(Arc::new(AwsProbe::from_sdk(sdk, settings)))
    };
    let aws_check = |report: &Report| {
        report
            .checks
            .iter()
            .find(|(name, _)| *name == "aws")
            .map(|(_, outcome)| outcome.clone())
            .unwrap()
    };

    // moto loads its built-in SSM documents at the first SSM call, which takes
    // longer than a probe may; AWS itself answers at once.
    rig.ssm.list_documents().send().await.unwrap();
    let report = readiness(&rig.settings, &rig.sdk).check().await;
    assert!(!report.ready);
    let said = aws_check(&report).unwrap_err();
    assert!(said.contains("passport ssm install"), "{said}");
    assert_eq!(report.to_json()["checks"]["aws"]["state"], "failing");

    let ssm = SdkSsm::new(&rig.sdk);
    install_documents(&ssm, &passport_documents(&DocumentNames::default()))
        .await
        .unwrap();
    let report = readiness(&rig.settings, &rig.sdk).check().await;
    assert!(report.ready, "{report:?}");
    assert_eq!(
        report.to_json(),
        serde_json::json!({
            "status": "ready",
            "checks": { "store": { "state": "ok" }, "aws": { "state": "ok" } },
        })
    );

    // Nothing listens here.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    // This one accepts connections (the kernel completes them) but never
    // answers a request.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    for address in [closed, silent.local_addr().unwrap()] {
        let settings = AwsSettings {
            endpoint_url: Some(format!("http://{address}")),
            ..rig.settings.clone()
        };
        let sdk = sdk(&settings).await;
        let started = Instant::now();
        let report = readiness(&settings, &sdk).check().await;
        let took = started.elapsed();
        assert!(!report.ready, "{address}");
        let said = aws_check(&report).unwrap_err();
        assert!(said.contains("reach"), "{address}: {said}");
        assert!(
            took < PROBE_DEADLINE + Duration::from_secs(1),
            "{address}: {took:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// passport doctor

/// Runs the `passport` binary with `args` and a console-only configuration
/// whose `[aws]` sends every call to `endpoint`, with static test credentials
/// and nothing read from the environment's own AWS configuration. Answers
/// the exit code, standard output and standard error.
fn passport_with_aws(dir: &Path, endpoint: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let config = dir.join("passport.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = {db:?}\n\
             [groups]\napprovers = [\"lead1\", \"lead2\"]\nadmins = [\"admin\"]\n\
             [aws]\nregion = \"{REGION}\"\nendpoint_url = \"{endpoint}\"\ncheck_ssm_online = false\n",
            db = dir.join("passport.db").display().to_string(),
        ),
    )
    .unwrap();
    let mut command = Command::new(process::bin());
    command
        .arg("--config")
        .arg(&config)
        .args(args)
        .current_dir(dir)
        .env_remove("PASSPORT_CONFIG")
        .env_remove("PASSPORT_LOG")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for name in [
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_STS",
        "AWS_ENDPOINT_URL_SSM",
        "AWS_ENDPOINT_URL_EC2",
    ] {
        command.env_remove(name);
    }
    let out = command.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `passport doctor` with `[aws]` against moto: who Passport is (STS), and
/// that the SSM documents are missing, saying to run `passport ssm install`;
/// after `passport ssm install` against the same moto, no problem.
#[tokio::test]
async fn doctor_shows_the_identity_and_whether_the_documents_are_installed() {
    let rig = rig(moto_or_skip!()).await;
    // moto loads its built-in SSM documents at the first SSM call, which
    // takes longer than AWS ever does.
    rig.ssm.list_documents().send().await.unwrap();
    let dir = rig._dir.path();
    let url = rig.settings.endpoint_url.clone().unwrap();

    let (code, text, errors) = passport_with_aws(dir, &url, &["doctor"]);
    assert_eq!(code, Some(1), "{text}{errors}");
    let identity = text
        .lines()
        .find(|l| l.contains("aws identity"))
        .unwrap_or_default();
    assert!(
        identity.starts_with("ok    aws identity: arn:aws:"),
        "{text}"
    );
    let documents = text
        .lines()
        .find(|l| l.contains("ssm documents"))
        .unwrap_or_default();
    assert!(
        documents.starts_with("FAIL  ssm documents: the SSM documents are not ready: ")
            && documents.contains("Passport-GrantLinux")
            && documents.contains("run `passport ssm install`"),
        "{text}"
    );
    assert!(text.contains("\n1 problem(s) found\n"), "{text}");
    assert!(
        !text.contains("testing") && !errors.contains("testing"),
        "a credential was printed"
    );

    let (code, text, errors) = passport_with_aws(dir, &url, &["ssm", "install"]);
    assert_eq!(code, Some(0), "{text}{errors}");

    let (code, text, errors) = passport_with_aws(dir, &url, &["doctor"]);
    assert_eq!(code, Some(0), "{text}{errors}");
    assert!(text.contains("ok    aws identity: arn:aws:"), "{text}");
    assert!(
        text.contains("\nok    ssm documents: installed at this version (Passport-GrantLinux v1, "),
        "{text}"
    );
    assert!(text.ends_with("no problem found\n"), "{text}");
}

/// `passport doctor` against an endpoint nothing listens on, and one that
/// accepts connections but never answers: both AWS checks fail, saying what
/// to check, and doctor ends within its deadline for AWS. The error id shown
/// is the one AWS's answer is logged under.
#[tokio::test]
async fn doctor_says_soon_when_aws_cannot_be_reached() {
    use passport::doctor::AWS_CHECK_WITHIN;
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();

    let started = Instant::now();
    let (code, text, errors) =
        passport_with_aws(dir.path(), &format!("http://{closed}"), &["doctor"]);
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{text}{errors}");
    let identity = text
        .lines()
        .find(|l| l.contains("aws identity"))
        .unwrap_or_default();
    assert!(
        identity.starts_with("FAIL  aws identity: AWS is not answering (error ")
            && identity.contains("check that Passport can reach AWS"),
        "{text}"
    );
    let id = identity
        .split("(error ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap();
    assert!(
        errors.contains(id),
        "the error id {id} is not in the log:\n{errors}"
    );
    assert!(
        text.contains("FAIL  ssm documents: cannot be checked: "),
        "{text}"
    );
    assert!(text.contains("\n2 problem(s) found\n"), "{text}");
    // STS fails at once; SSM's check keeps retrying until doctor's deadline.
    assert!(
        took < AWS_CHECK_WITHIN + Duration::from_secs(10),
        "{took:?}"
    );

    let started = Instant::now();
    let (code, text, errors) = passport_with_aws(
        dir.path(),
        &format!("http://{}", silent.local_addr().unwrap()),
        &["doctor"],
    );
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{text}{errors}");
    let within = AWS_CHECK_WITHIN.as_secs();
    for line in [
        format!("FAIL  aws identity: AWS STS did not answer within {within}s: check that Passport can reach AWS"),
        format!("FAIL  ssm documents: cannot be checked: AWS SSM did not answer within {within}s: check that Passport can reach AWS"),
    ] {
        assert!(text.contains(&line), "no {line:?} in\n{text}");
    }
    // Both checks wait side by side, once.
    assert!(
        took < AWS_CHECK_WITHIN + Duration::from_secs(10),
        "{took:?}"
    );
}
