//! The `passport` client end to end, with no AWS: the real `passport` binary
//! against the real server (engine and `/api/v1` on port 0, a fresh SQLite
//! file, an SSH CA and a stub Session Manager broker handing out fixed
//! scoped credentials), a fake SSM endpoint on loopback that answers
//! `AmazonSSM.StartSession`, and a fake `session-manager-plugin` first on the
//! PATH that checks the argument contract of the real one and then connects
//! its stdin/stdout to a real `sshd -i` inside the instance-script sandbox
//! (the user made by the real grant script of manifests/ssm, trusting the
//! server's CA), or forwards a local port. ssh and scp are the real OpenSSH
//! client.
//!
//! The connection tests need root for the sandbox (scripts/test runs them as
//! root in CI); without it they print why and return early.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/sandbox.rs"]
mod sandbox;
mod ssm_documents;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use common::http_client;
use common::process;
use common::{fake_provisioner, test_config, RecordingSurface, TestApp, WEB};
use passport::adapters::clock::{ManualClock, SystemClock};
use passport::adapters::ssh_ca::{CaKeyType, CertificateAuthority, SshCa};
use passport::app::ports::{Clock, ProvisionError, SessionBroker, SessionCredentials};
use passport::domain::session::SessionScope;
use passport::domain::time::{Span, Timestamp};
use passport::domain::values::{InstanceId, RequestId, Username};
use sandbox::{enter_sh, text, PATH};

const ACCESS_KEY: &str = "ASIACLIENTTESTKEY01";
const SECRET_KEY: &str = "client-test-secret-key";
const SESSION_TOKEN: &str = "client-test-session-token";
const REGION: &str = "eu-west-1";
const TOKEN_VALUE: &str = "fake-ssm-token-value";

// ---------------------------------------------------------------------------
// The server: the real engine and API, with an SSH CA and a stub broker

struct StubBroker;

#[async_trait]
impl SessionBroker for StubBroker {
    async fn credentials(
        &self,
        scope: &SessionScope,
        now: Timestamp,
    ) -> Result<SessionCredentials, ProvisionError> {
        // The client asks for the credentials of the one instance it connects to.
        if scope.instances.len() != 1 {
            return Err(ProvisionError::Rejected(format!(
                "credentials asked for {} instances, not the one being reached",
                scope.instances.len()
            )));
        }
        Ok(SessionCredentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.to_owned().into(),
            session_token: SESSION_TOKEN.to_owned().into(),
            expiration: now.plus(Span::from_minutes(15)).min(scope.not_after),
            region: REGION.into(),
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

struct Server {
    app: TestApp,
    base: String,
    /// "ssh-ed25519 <base64>": what instances trust.
    ca_key: String,
    _dir: tempfile::TempDir,
}

/// The real application on port 0, its clock at the real time (certificates
/// are checked by a real sshd), the default rule allowing port forwarding.
async fn start_server() -> Server {
    passport::startup::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("passport.db");
    let mut config = test_config();
    config.policy.default.port_forwarding = true;
    let authority = CertificateAuthority::generate(CaKeyType::Ed25519).unwrap();
    let ca_key = authority
        .public_key_line()
        .split(' ')
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let app = TestApp::open_configured(
        &db,
        config,
        Arc::new(fake_provisioner()),
        ManualClock::new(SystemClock.now()),
        Arc::new(RecordingSurface::default()),
    )
    .await
    .with_certificates(
        Arc::new(SshCa::new(authority, vec![], vec![], None)),
        Span::from_minutes(2),
    )
    .with_sessions(Arc::new(StubBroker));
    let router = Router::new().nest(
        passport::api::PREFIX,
        passport::http::api::routes(app.engine.clone()),
    );
    let (base, _) = http_client::serve(router).await;
    Server {
        app,
        base,
        ca_key,
        _dir: dir,
    }
}

// ---------------------------------------------------------------------------
// A fake SSM endpoint: answers StartSession and records each call

#[derive(Debug, Clone)]
struct SsmCall {
    target: String,
    /// The access key id in the SigV4 Authorization header.
    access_key: String,
    body: Value,
}

#[derive(Clone, Default)]
struct FakeSsm {
    calls: Arc<Mutex<Vec<SsmCall>>>,
}

async fn fake_ssm_call(
    State(ssm): State<FakeSsm>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let authorization = header("authorization");
    let access_key = authorization
        .split("Credential=")
        .nth(1)
        .and_then(|c| c.split('/').next())
        .unwrap_or_default()
        .to_owned();
    let target = header("x-amz-target");
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = {
        let mut calls = ssm.calls.lock().unwrap();
        calls.push(SsmCall {
            target: target.clone(),
            access_key,
            body,
        });
        calls.len()
    };
    let content = [("content-type", "application/x-amz-json-1.1")];
    if target != "AmazonSSM.StartSession" {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            content,
            json!({"__type": "UnknownOperationException", "message": target}).to_string(),
        )
            .into_response();
    }
    let id = format!("dev1-{n:017x}");
    (
        content,
        json!({
            "SessionId": id,
            "TokenValue": TOKEN_VALUE,
            "StreamUrl": format!("wss://ssmmessages.{REGION}.amazonaws.com/v1/data-channel/{id}?role=publish_subscribe"),
        })
        .to_string(),
    )
        .into_response()
}

async fn start_fake_ssm() -> (FakeSsm, String) {
    let ssm = FakeSsm::default();
    let router = Router::new()
        .route("/", post(fake_ssm_call))
        .with_state(ssm.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (ssm, url)
}

// ---------------------------------------------------------------------------
// The fake session-manager-plugin

/// Checks what it is given as the real plugin reads it
/// (`ValidateInputAndStartSession`), records it, then connects.
const FAKE_PLUGIN: &str = r#"#!/usr/bin/env python3
import json, os, socket, sys, threading, time

args = sys.argv[1:]
if args == ["--version"]:
    print(os.environ.get("FAKE_PLUGIN_VERSION", "1.2.707.0"))
    sys.exit(0)

def fail(message):
    sys.stderr.write("fake session-manager-plugin: " + message + "\n")
    sys.exit(3)

env_names = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
             "AWS_REGION", "AWS_PROFILE", "AWS_SSM_START_SESSION_RESPONSE"]
record = {"args": args, "env": {k: os.environ.get(k) for k in env_names}}
path = os.path.join(os.environ["FAKE_PLUGIN_RECORD"], "%d-%d.json" % (time.time_ns(), os.getpid()))
with open(path, "w") as f:
    json.dump(record, f)

if len(args) != 6:
    fail("6 arguments expected, got %d" % len(args))
first, region, operation, profile, parameters, endpoint = args
response = os.environ.get(first) if first.startswith("AWS_SSM_START_SESSION_RESPONSE") else first
if operation != "StartSession":
    fail("operation " + operation)
if profile != "":
    fail("a profile was passed: " + profile)
if region != os.environ["FAKE_EXPECT_REGION"]:
    fail("region " + region)
if endpoint != os.environ["FAKE_EXPECT_ENDPOINT"]:
    fail("endpoint " + endpoint)
try:
    response = json.loads(response or "")
except ValueError:
    fail("the response is not JSON")
for key in ["SessionId", "TokenValue", "StreamUrl"]:
    if not isinstance(response.get(key), str) or not response[key]:
        fail("the response has no " + key)
if response["TokenValue"] != os.environ["FAKE_EXPECT_TOKEN_VALUE"]:
    fail("TokenValue is not StartSession's")
try:
    request = json.loads(parameters)
except ValueError:
    fail("the parameters are not JSON")
if not request.get("Target", "").startswith("i-"):
    fail("no Target")
params = request.get("Parameters")
if not isinstance(params, dict) or not all(isinstance(v, list) for v in params.values()):
    fail("Parameters is not a map of lists")
for name, want in [("AWS_ACCESS_KEY_ID", "FAKE_EXPECT_ACCESS_KEY"),
                   ("AWS_SECRET_ACCESS_KEY", "FAKE_EXPECT_SECRET_KEY"),
                   ("AWS_SESSION_TOKEN", "FAKE_EXPECT_SESSION_TOKEN"),
                   ("AWS_REGION", "FAKE_EXPECT_REGION")]:
    if os.environ.get(name) != os.environ[want]:
        fail(name + " is not the scoped credential")
if "AWS_PROFILE" in os.environ:
    fail("AWS_PROFILE is set")

document = request.get("DocumentName")
if document == "AWS-StartSSHSession":
    if params.get("portNumber") != ["22"]:
        fail("portNumber %r" % params.get("portNumber"))
    # stdin/stdout are ssh's: hand them to a real sshd in the sandbox.
    os.execvp("sh", ["sh", os.environ["FAKE_ENTER"], os.environ["FAKE_SANDBOX"],
        "/usr/sbin/sshd", "-i", "-o", "UsePAM=no", "-o", "PasswordAuthentication=no",
        "-o", "KbdInteractiveAuthentication=no", "-o", "PubkeyAuthentication=yes",
        "-o", "StrictModes=yes", "-o", "LogLevel=VERBOSE", "-E", "/tmp/sshd.log"])
elif document in ("AWS-StartPortForwardingSession", "AWS-StartPortForwardingSessionToRemoteHost"):
    local = int(params["localPortNumber"][0])
    remote = int(params["portNumber"][0])
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", local))
    server.listen(8)
    print("\nStarting session with SessionId: " + response["SessionId"])
    print("Port %d opened for sessionId %s." % (local, response["SessionId"]))
    print("Waiting for connections...", flush=True)

    def pump(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    while True:
        conn, _ = server.accept()
        upstream = socket.create_connection(("127.0.0.1", remote))
        threading.Thread(target=pump, args=(conn, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
else:
    fail("DocumentName %r" % document)
"#;

// ---------------------------------------------------------------------------
// The instance-script sandbox (tests/sandbox/enter.sh), as tests/instance_scripts.rs uses it

/// Why this machine cannot run the connection tests, if it cannot.
fn sandbox_unavailable() -> Option<&'static str> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(|| {
        sandbox::unavailable(
            "the connection tests log in to a real sshd in a sandbox and need root (scripts/test runs them as root in CI)",
            &[
            "unshare", "useradd", "usermod", "userdel", "getent", "setpriv", "flock", "sshd",
            "ssh", "scp", "python3",
        ],
        )
    })
    .as_deref()
}

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("passport-client-sandbox-")
            .tempdir()
            .unwrap();
        let sb = Sandbox { dir };
        sb.run(&[], "true"); // fills the sandbox
        ssm_documents::write_linux_scripts(&sb.host("root/ssm"));
        sb
    }

    fn host(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, env: &[(&str, String)], script: &str) -> Output {
        let out = Command::new("sh")
            .arg(enter_sh())
            .arg(self.dir.path())
            .args(["/bin/sh", "-c", script])
            .env_clear()
            .env("PATH", PATH)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sandbox: {script}\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    /// The real grant script in certificate mode, as the SSM Agent runs it.
    fn grant(&self, user: &str, request: &str, ca_key: &str, expires_at: u64) {
        let values = [
            ("SSM_Username", user.to_owned()),
            ("SSM_RequestId", request.to_owned()),
            ("SSM_ExpiresAt", expires_at.to_string()),
            ("SSM_Sudo", "false".to_owned()),
            ("SSM_SshPublicKey", "none".to_owned()),
            ("SSM_TrustedCaKeys", ca_key.to_owned()),
            ("SSM_PortForwarding", "false".to_owned()),
            ("SSM_UidRange", "10000000-19999999".to_owned()),
        ];
        self.run(&values, "sh /root/ssm/grant-linux.sh");
    }
}

// ---------------------------------------------------------------------------
// Running the client

/// One terminal: its client directory, the fake plugin first on its PATH
/// and the fake SSM endpoint.
struct Terminal {
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
}

impl Terminal {
    fn new(ssm_url: &str, sandbox: Option<&Sandbox>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let record = dir.path().join("plugin-calls");
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&record).unwrap();
        let plugin = bin.join("session-manager-plugin");
        fs::write(&plugin, FAKE_PLUGIN).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&plugin, fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::var("PATH").unwrap_or_else(|_| PATH.into());
        let mut env = BTreeMap::from([
            (
                "PASSPORT_CLIENT_DIR".to_owned(),
                dir.path().join("client").display().to_string(),
            ),
            ("PATH".to_owned(), format!("{}:{path}", bin.display())),
            ("AWS_ENDPOINT_URL_SSM".to_owned(), ssm_url.to_owned()),
            (
                "FAKE_PLUGIN_RECORD".to_owned(),
                record.display().to_string(),
            ),
            ("FAKE_EXPECT_REGION".to_owned(), REGION.to_owned()),
            ("FAKE_EXPECT_ENDPOINT".to_owned(), ssm_url.to_owned()),
            ("FAKE_EXPECT_TOKEN_VALUE".to_owned(), TOKEN_VALUE.to_owned()),
            ("FAKE_EXPECT_ACCESS_KEY".to_owned(), ACCESS_KEY.to_owned()),
            ("FAKE_EXPECT_SECRET_KEY".to_owned(), SECRET_KEY.to_owned()),
            (
                "FAKE_EXPECT_SESSION_TOKEN".to_owned(),
                SESSION_TOKEN.to_owned(),
            ),
            ("FAKE_ENTER".to_owned(), enter_sh().display().to_string()),
        ]);
        if let Some(sb) = sandbox {
            env.insert("FAKE_SANDBOX".into(), sb.dir.path().display().to_string());
        }
        Self { dir, env }
    }

    fn client_dir(&self) -> PathBuf {
        self.dir.path().join("client")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(process::bin());
        c.args(args)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_ENDPOINT_URL")
            .envs(&self.env)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    /// Runs `passport ARGS` to the end (off the async runtime).
    async fn run(&self, args: &[&str]) -> Output {
        let mut c = self.command(args);
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "passport {}: {}\n{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// What the fake plugin was called with, oldest first.
    fn plugin_calls(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = fs::read_dir(self.dir.path().join("plugin-calls"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| serde_json::from_str(&fs::read_to_string(f).unwrap()).unwrap())
            .collect()
    }

    /// `passport login`, confirmed in chat by `user` as a person would.
    async fn login(&self, server: &Server, user: &str) {
        let mut child = self
            .command(&["login", &server.base])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut printed = Vec::new();
        let code = loop {
            let line = tokio::task::block_in_place(|| rx.recv_timeout(Duration::from_secs(20)))
                .unwrap_or_else(|_| panic!("no code printed: {printed:?}"));
            printed.push(line.clone());
            if let Some(code) = line.strip_prefix("Your sign-in code: ") {
                break code.trim().to_owned();
            }
        };
        let typed = server.app.run(user, &format!("login {code}")).await;
        assert!(typed.ok, "{}", typed.text);
        let confirmed = server.app.run(user, &format!("login {code} confirm")).await;
        assert!(confirmed.ok, "{}", confirmed.text);
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        let rest: Vec<String> = rx.try_iter().collect();
        assert!(
            out.status.success(),
            "login: {printed:?} {rest:?} {}",
            text(&out.stderr)
        );
        assert!(
            rest.iter().any(|l| l.starts_with("Signed in to")),
            "{rest:?}"
        );
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file the client wrote that holds a secret is 0600, its directories 0700.
fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            assert_private(&path);
        } else if !name.ends_with(".pub") && name != "known_hosts" {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_request_and_ssh_config_that_ssh_reads() {
    let server = start_server().await;
    let (_ssm, ssm_url) = start_fake_ssm().await;
    let term = Terminal::new(&ssm_url, None);

    // Not signed in yet: a clear word on what to do.
    let out = term.run(&["list"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("passport login"),
        "{}",
        text(&out.stderr)
    );

    term.login(&server, "dev1").await;
    let session = term.client_dir().join("session.json");
    assert_eq!(mode(&session), 0o600);
    assert_eq!(mode(&term.client_dir()), 0o700);
    assert!(term.ok(&["whoami"]).await.contains("dev1"));

    let asked = term
        .ok(&["request", WEB, "1h", "ticket#123", "disk", "is", "full"])
        .await;
    assert!(
        asked.contains("AR-1") && asked.contains("pending"),
        "{asked}"
    );
    let approved = server.app.run("lead1", "approve AR-1").await;
    assert!(approved.ok, "{}", approved.text);
    let listed = term.ok(&["list"]).await;
    assert!(
        listed.contains("AR-1") && listed.contains("active"),
        "{listed}"
    );
    let shown = term.ok(&["show"]).await;
    assert!(
        shown.contains("pp-dev1-1") && shown.contains("web-1"),
        "{shown}"
    );

    // ssh-config: a block that ssh itself reads as intended.
    let config = term.ok(&["ssh-config"]).await;
    let file = term.dir.path().join("passport.conf");
    fs::write(&file, &config).unwrap();
    let host = format!("{WEB}.passport");
    let g = Command::new("ssh")
        .args(["-G", "-F"])
        .arg(&file)
        .arg(&host)
        .output()
        .unwrap();
    assert!(g.status.success(), "ssh -G: {}\n{config}", text(&g.stderr));
    let resolved = text(&g.stdout);
    let request_dir = term.client_dir().join("requests/AR-1");
    for want in [
        format!("hostname {WEB}"),
        "user pp-dev1-1".to_owned(),
        format!("identityfile {}", request_dir.join("id_ed25519").display()),
        format!(
            "certificatefile {}",
            request_dir.join("id_ed25519-cert.pub").display()
        ),
        "identitiesonly yes".to_owned(),
        format!("hostkeyalias {WEB}"),
        "stricthostkeychecking accept-new".to_owned(),
        format!(
            "userknownhostsfile {}",
            term.client_dir().join("known_hosts").display()
        ),
        format!(
            "proxycommand {} proxy --dir {} --request AR-1 %h %p",
            process::bin(),
            term.client_dir().display()
        ),
    ] {
        assert!(
            resolved.lines().any(|l| l == want),
            "{want:?} not in ssh -G:\n{resolved}"
        );
    }
    // The certificate the server issued is OpenSSH's, for this request's key.
    let listing = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(request_dir.join("id_ed25519-cert.pub"))
        .output()
        .unwrap();
    assert!(
        text(&listing.stdout).contains("pp-dev1-1"),
        "{}",
        text(&listing.stdout)
    );
    assert_private(&term.client_dir().join("requests"));

    // The token never reaches the terminal's output.
    let token: Value = serde_json::from_str(&fs::read_to_string(&session).unwrap()).unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    assert!(!config.contains(&token) && !listed.contains(&token));

    // Ending the request, then signing out, deletes what the client kept.
    let done = term.ok(&["complete"]).await;
    assert!(done.contains("completed"), "{done}");
    assert!(!request_dir.exists());
    term.ok(&["logout"]).await;
    assert!(!session.exists());
    let out = term.run(&["whoami"]).await;
    assert!(
        text(&out.stderr).contains("not signed in"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_says_to_sign_in_again() {
    let server = start_server().await;
    let term = Terminal::new("http://127.0.0.1:9", None);
    term.login(&server, "dev1").await;
    let out = server.app.run("dev1", "logout").await;
    assert!(out.ok, "{}", out.text);
    let out = term.run(&["list"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("run `passport login {}` again", server.base)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_named_and_logout_still_deletes_the_token() {
    let server = start_server().await;
    let term = Terminal::new("http://127.0.0.1:9", None);
    term.login(&server, "dev1").await;
    // Point the saved sign-in at a port nobody listens on.
    let session = term.client_dir().join("session.json");
    let mut saved: Value = serde_json::from_str(&fs::read_to_string(&session).unwrap()).unwrap();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    saved["server"] = json!(format!("http://{closed}"));
    fs::write(&session, saved.to_string()).unwrap();
    let out = term.run(&["list"]).await;
    assert!(
        text(&out.stderr).contains(&format!(
            "cannot reach the Passport server at http://{closed}"
        )),
        "{}",
        text(&out.stderr)
    );
    let out = term.run(&["logout"]).await;
    assert!(
        text(&out.stdout).contains("could not tell the server"),
        "{}",
        text(&out.stdout)
    );
    assert!(!session.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_plugin_is_a_clear_error() {
    let term = Terminal::new("http://127.0.0.1:9", None);
    let mut c = term.command(&["ssh", "AR-1", "--", "true"]);
    // No fake plugin: only the system's directories, which hold none.
    c.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    if Path::new("/usr/local/sessionmanagerplugin/bin/session-manager-plugin").exists()
        || Path::new("/usr/bin/session-manager-plugin").exists()
    {
        eprintln!("a_missing_plugin_is_a_clear_error: skipped: this machine has the real plugin");
        return;
    }
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("session-manager-plugin"), "{err}");
    assert!(
        err.contains("https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_scp_and_forward_reach_the_instance_through_the_plugin() {
    let test = "ssh_scp_and_forward_reach_the_instance_through_the_plugin";
    if let Some(why) = sandbox_unavailable() {
        eprintln!("{test}: skipped: {why}");
        return;
    }
    let server = start_server().await;
    let (ssm, ssm_url) = start_fake_ssm().await;
    let sandbox = Sandbox::new();
    let term = Terminal::new(&ssm_url, Some(&sandbox));
    term.login(&server, "dev1").await;
    let id: RequestId = server.app.active_request("1h").await;
    let view = server.app.request(id).await;
    let user = view.username.to_string();
    let ends = u64::try_from(view.expires_at.unwrap().as_millis() / 1000).unwrap();
    sandbox.grant(&user, &id.to_string(), &server.ca_key, ends + 300);

    // ssh: the request's username on the instance, through the real sshd.
    let out = term.run(&["ssh", &id.to_string(), "--", "id", "-un"]).await;
    assert!(
        out.status.success(),
        "passport ssh: {}\n{}\nsshd: {}",
        text(&out.stdout),
        text(&out.stderr),
        fs::read_to_string(sandbox.host("tmp/sshd.log")).unwrap_or_default()
    );
    assert_eq!(text(&out.stdout).trim(), user);
    // A second connection reuses the saved credentials and pinned host key.
    assert_eq!(term.ok(&["ssh", "--", "id", "-un"]).await.trim(), user);
    let known = fs::read_to_string(term.client_dir().join("known_hosts")).unwrap();
    assert_eq!(known.lines().count(), 1, "one pinned host key: {known}");

    // scp both ways.
    let local = term.dir.path().join("notes.txt");
    fs::write(&local, "from the laptop\n").unwrap();
    term.ok(&[
        "scp",
        &id.to_string(),
        "notes.txt",
        &format!("{WEB}:notes.txt"),
    ])
    .await;
    let on_instance = sandbox.host(&format!("home/{user}/notes.txt"));
    assert_eq!(
        fs::read_to_string(&on_instance).unwrap(),
        "from the laptop\n"
    );
    fs::write(&on_instance, "from the instance\n").unwrap();
    term.ok(&["scp", "web-1:notes.txt", "back.txt"]).await;
    assert_eq!(
        fs::read_to_string(term.dir.path().join("back.txt")).unwrap(),
        "from the instance\n"
    );

    // forward: a TCP connection to an echo server on loopback.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in echo.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let local_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut forward = term
        .command(&["forward", WEB, &format!("{local_port}:{echo_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut conn = loop {
        match TcpStream::connect(("127.0.0.1", local_port)) {
            Ok(c) => break c,
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                if let Ok(Some(status)) = forward.try_wait() {
                    let mut err = String::new();
                    forward
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut err)
                        .unwrap();
                    panic!("passport forward ended: {status}: {err}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("nothing listens on {local_port}: {e}"),
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"ping through Session Manager\n").unwrap();
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line).unwrap();
    assert_eq!(line, "ping through Session Manager\n");
    forward.kill().unwrap();
    let _ = forward.wait();

    // What SSM was asked, and with which credentials.
    let calls = ssm.calls.lock().unwrap().clone();
    assert!(calls.len() >= 5, "{calls:?}");
    for call in &calls {
        assert_eq!(call.target, "AmazonSSM.StartSession");
        assert_eq!(call.access_key, ACCESS_KEY, "signed with the scoped key");
        assert_eq!(call.body["Target"], WEB);
    }
    assert_eq!(calls[0].body["DocumentName"], "AWS-StartSSHSession");
    assert_eq!(calls[0].body["Parameters"]["portNumber"], json!(["22"]));
    let last = &calls[calls.len() - 1].body;
    assert_eq!(last["DocumentName"], "AWS-StartPortForwardingSession");
    assert_eq!(
        last["Parameters"]["portNumber"],
        json!([echo_port.to_string()])
    );
    assert_eq!(
        last["Parameters"]["localPortNumber"],
        json!([local_port.to_string()])
    );

    // The plugin got the response through the environment (a current
    // plugin), so the session token never showed in the process list.
    let plugin_calls = term.plugin_calls();
    assert_eq!(plugin_calls.len(), calls.len());
    for call in &plugin_calls {
        assert_eq!(call["args"][0], "AWS_SSM_START_SESSION_RESPONSE");
        assert!(!call["args"].to_string().contains(TOKEN_VALUE));
        assert_eq!(call["env"]["AWS_ACCESS_KEY_ID"], ACCESS_KEY);
    }
    // The credentials were fetched once and kept private.
    let creds = term
        .client_dir()
        .join(format!("requests/{id}/credentials-{WEB}.json"));
    assert_eq!(mode(&creds), 0o600);
    assert_private(&term.client_dir());
}
