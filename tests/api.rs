//! The API for the `passport` client, end to end over real HTTP: the real
//! application on port 0 with a fresh SQLite file, Slack's requests signed as
//! Slack signs them, a fake Slack Web API, an SSH CA and a stub Session
//! Manager broker. Time is the engine's hand-moved clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake_aws;
mod fake_slack;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use serde_json::{json, Value};

use common::chat_app::{clock_at_now, fleet, quiet_config, slack_options, unique, WEB};
use common::http_client::{self, Answer, HttpClient};
use fake_aws::FakeAws;
use fake_slack::FakeSlack;
use passport::adapters::aws::api::ApiError as AwsError;
use passport::adapters::aws::sdk::{SdkSsm, SdkSts};
use passport::adapters::aws::{RoleArn, StsSessionBroker};
use passport::adapters::clock::ManualClock;
use passport::adapters::ssh_ca::{CaKeyType, CertificateAuthority, SshCaConfig};
use passport::app::ports::{Clock, ProvisionError, SessionBroker, SessionCredentials};
use passport::config::Config;
use passport::domain::session::SessionScope;
use passport::domain::time::{Span, Timestamp};
use passport::domain::values::{InstanceId, Username};
use passport::startup;

const APPROVALS: &str = "C0APPROVALS";
const AUDIT: &str = "C0AUDIT";

const DEV: &str = "U0DEV1";
const LEAD1: &str = "U0LEAD1";
const OTHER: &str = "U0OTHER";
const BOSS: &str = "U0BOSS";

// ---------------------------------------------------------------------------
// The process's log output, kept to check that no secret reaches it.

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buffer
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------------------
// A stub Session Manager broker

#[derive(Default)]
struct StubBroker {
    issued: Mutex<Vec<SessionScope>>,
}

#[async_trait]
impl SessionBroker for StubBroker {
    async fn credentials(
        &self,
        scope: &SessionScope,
        now: Timestamp,
    ) -> Result<SessionCredentials, ProvisionError> {
        self.issued.lock().unwrap().push(scope.clone());
        Ok(SessionCredentials {
            access_key_id: "ASIASTUBSTUBSTUB".into(),
            secret_access_key: "stub-secret".to_owned().into(),
            session_token: "stub-session-token".to_owned().into(),
            expiration: now.plus(Span::from_minutes(15)).min(scope.not_after),
            region: "eu-west-1".into(),
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

// ---------------------------------------------------------------------------
// The application

struct TestApp {
    base: String,
    fake: FakeSlack,
    built: startup::App,
    broker: Arc<StubBroker>,
    clock: ManualClock,
    db: PathBuf,
    http: HttpClient,
    _dir: tempfile::TempDir,
}

impl Answer {
    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
    fn text(&self) -> String {
        self.json()["text"].as_str().unwrap_or_default().to_owned()
    }
}

fn config(db: &std::path::Path, fake: &FakeSlack, ca_key: PathBuf) -> Config {
    let mut c = quiet_config(db);
    c.groups = BTreeMap::from([
        ("approvers".into(), vec![LEAD1.into()]),
        ("admins".into(), vec![BOSS.into()]),
    ]);
    // web-1 alone.
    c.dry_run.instances = fleet().into_iter().take(1).collect();
    c.ssh_ca = Some(SshCaConfig {
        key_path: Some(ca_key),
        ..SshCaConfig::default()
    });
    c.slack = Some(fake.passport_settings());
    c
}

async fn spawn_app() -> TestApp {
    spawn_app_configured(|_| {}).await
}

async fn spawn_app_configured(edit: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_brokered(edit, None).await
}

/// Like [`spawn_app_configured`], handing out Session Manager credentials
/// through `broker` instead of the stub when given.
async fn spawn_app_brokered(
    edit: impl FnOnce(&mut Config),
    broker: Option<Arc<dyn SessionBroker>>,
) -> TestApp {
    logs();
    startup::install_crypto_provider();
    let fake = FakeSlack::start().await;
    for (id, name) in [
        (DEV, "dev1"),
        (LEAD1, "lead1"),
        (OTHER, "other"),
        (BOSS, "boss"),
    ] {
        fake.add_user(id, name);
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("passport.db");
    let ca_key = dir.path().join("ca_key");
    CertificateAuthority::generate(CaKeyType::Ed25519)
        .unwrap()
        .save_new(&ca_key)
        .unwrap();
    let clock = clock_at_now();
    let mut config = config(&db, &fake, ca_key);
    edit(&mut config);
    let settings = config.validate().unwrap();
    let slack = settings.slack.clone().unwrap();
    let stub = Arc::new(StubBroker::default());
    let sessions = broker.unwrap_or_else(|| stub.clone() as Arc<dyn SessionBroker>);
    let options = slack_options(&clock, &settings);
    let built = startup::slack_app_with_sessions(&settings, &slack, options, Some(sessions))
        .await
        .unwrap();
    let (base, _server) = http_client::serve(built.router).await;
    TestApp {
        base,
        fake,
        built: built.app,
        broker: stub,
        clock,
        db,
        http: http_client::client(),
        _dir: dir,
    }
}

impl TestApp {
    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &str,
        headers: &[(&str, String)],
    ) -> Answer {
        let url = format!("{}{path}", self.base);
        http_client::request(&self.http, method, &url, content_type, body, headers).await
    }

    /// A JSON call to the API, with `token` as the bearer if given.
    async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Answer {
        let headers: Vec<(&str, String)> = token
            .map(|t| vec![("authorization", format!("Bearer {t}"))])
            .unwrap_or_default();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.send(
            method,
            &format!("/api/v1{path}"),
            Some("application/json"),
            &body,
            &headers,
        )
        .await
    }

    fn signed(&self, body: &str) -> Vec<(&'static str, String)> {
        FakeSlack::signature_headers(body, self.clock.now().as_millis() / 1000)
    }

    /// `/passport <text>` typed by `user` in Slack.
    async fn command(&self, user: &str, text: &str) -> Answer {
        let n = unique();
        let body = serde_urlencoded::to_string([
            ("team_id", "T0TEAM"),
            ("api_app_id", "A0PASSPORT"),
            ("channel_id", "C0GENERAL"),
            ("user_id", user),
            ("user_name", "from-payload"),
            ("command", "/passport"),
            ("text", text),
            ("response_url", &format!("{}/response/{n}", self.fake.base)),
            ("trigger_id", &format!("{n}.1234.abcdef")),
        ])
        .unwrap();
        let headers = self.signed(&body);
        self.send(
            "POST",
            "/slack/commands",
            Some("application/x-www-form-urlencoded"),
            &body,
            &headers,
        )
        .await
    }

    /// `user` clicks the button carrying `value` on message `ts` in `channel`.
    async fn click(&self, user: &str, value: &str, channel: &str, ts: &str) -> Answer {
        let n = unique();
        let payload = json!({
            "type": "block_actions",
            "team": { "id": "T0TEAM", "domain": "example" },
            "api_app_id": "A0PASSPORT",
            "user": { "id": user, "username": "from-payload", "team_id": "T0TEAM" },
            "container": { "type": "message", "message_ts": ts, "channel_id": channel },
            "trigger_id": format!("{n}.5678.fedcba"),
            "channel": { "id": channel, "name": "dm" },
            "message": { "type": "message", "ts": ts, "text": "…" },
            "response_url": format!("{}/response/{n}", self.fake.base),
            "actions": [{ "type": "button", "action_id": "passport:0", "value": value }]
        });
        let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
        let headers = self.signed(&body);
        self.send(
            "POST",
            "/slack/interactions",
            Some("application/x-www-form-urlencoded"),
            &body,
            &headers,
        )
        .await
    }

    async fn settle(&self) {
        self.built.scheduler.settle().await.unwrap();
    }

    async fn start_login(&self) -> Value {
        let a = self
            .api(
                "POST",
                "/login",
                Some(json!({ "host": "laptop-7", "client": "passport/0.1.0" })),
                None,
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        a.json()
    }

    async fn poll(&self, started: &Value) -> Answer {
        self.api(
            "POST",
            "/login/poll",
            Some(json!({
                "login_id": started["login_id"],
                "poll_secret": started["poll_secret"],
            })),
            None,
        )
        .await
    }

    /// The last direct message to `user` with buttons: (ts, button values).
    fn last_dm_buttons(&self, user: &str) -> (String, Vec<String>) {
        let call = self
            .fake
            .dm_calls(user)
            .into_iter()
            .rev()
            .find(|c| !c.button_values().is_empty())
            .expect("a direct message with buttons");
        (call.ts.clone().unwrap(), call.button_values())
    }

    /// Signs `user` in end to end and answers the token.
    async fn sign_in(&self, user: &str) -> String {
        let started = self.start_login().await;
        let code = started["code"].as_str().unwrap().to_owned();
        let typed = self.command(user, &format!("login {code}")).await;
        assert!(typed.text().contains("laptop-7"), "{}", typed.body);
        self.settle().await;
        let (ts, buttons) = self.last_dm_buttons(user);
        assert_eq!(
            buttons,
            vec![
                format!("login {code} confirm"),
                format!("login {code} cancel")
            ]
        );
        let clicked = self
            .click(user, &buttons[0], &format!("D{user}"), &ts)
            .await;
        assert_eq!(clicked.status, 200);
        let polled = self.poll(&started).await;
        assert_eq!(polled.status, 200, "{}", polled.body);
        assert_eq!(polled.json()["status"], "confirmed", "{}", polled.body);
        polled.json()["token"].as_str().unwrap().to_owned()
    }

    async fn events(&self, action: &str) -> Vec<Value> {
        self.built
            .store
            .audit_events(None, None)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action == action)
            .map(|e| serde_json::from_str(&e.details).unwrap())
            .collect()
    }

    /// An active request of DEV's, created through the API.
    async fn active_request(&self, token: &str) -> String {
        let created = self
            .api(
                "POST",
                "/requests",
                Some(json!({ "instances": [WEB], "duration": "1h", "ticket": "OPS-1", "reason": "disk" })),
                Some(token),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.body);
        let id = created.json()["id"].as_str().unwrap().to_owned();
        self.settle().await;
        let card = self
            .fake
            .posts_in(APPROVALS)
            .into_iter()
            .next()
            .expect("the approvers' card");
        let approve = format!("approve {id} @request");
        assert!(card.button_values().contains(&approve));
        self.click(LEAD1, &approve, APPROVALS, card.ts.as_deref().unwrap())
            .await;
        self.settle().await;
        self.settle().await;
        let shown = self
            .api("GET", &format!("/requests/{id}"), None, Some(token))
            .await;
        assert_eq!(shown.json()["state"], "active", "{}", shown.body);
        id
    }

    /// Every byte the database holds, WAL included.
    fn database_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.db.clone().into_os_string();
            p.push(suffix);
            if let Ok(b) = std::fs::read(PathBuf::from(p)) {
                out.extend(b);
            }
        }
        out
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

// ---------------------------------------------------------------------------
// Signing in

#[tokio::test]
async fn a_terminal_signs_in_through_chat_and_receives_its_token_once() {
    let app = spawn_app().await;
    let started = app.start_login().await;
    let code = started["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 9, "{code}");
    assert_eq!(app.poll(&started).await.json()["status"], "pending");

    let typed = app.command(DEV, &format!("login {code}")).await;
    assert!(typed.text().contains("host `laptop-7`"), "{}", typed.body);
    assert!(typed.text().contains("127.0.0.1"), "{}", typed.body);
    app.settle().await;
    // Typing the code does not bind: the terminal still waits.
    assert_eq!(app.poll(&started).await.json()["status"], "pending");
    let (ts, buttons) = app.last_dm_buttons(DEV);
    let dm = app.fake.dms(DEV).join("\n");
    assert!(
        dm.contains("laptop-7") && dm.contains("passport/0.1.0"),
        "{dm}"
    );
    app.click(DEV, &buttons[0], &format!("D{DEV}"), &ts).await;

    let polled = app.poll(&started).await;
    assert_eq!(polled.status, 200);
    let body = polled.json();
    assert_eq!(body["status"], "confirmed");
    assert_eq!(body["user"]["id"], DEV);
    assert_eq!(body["user"]["surface"], "slack");
    let token = body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("pp_"));

    // Handed out exactly once.
    let again = app.poll(&started).await;
    assert_eq!(again.status, 410, "{}", again.body);
    assert!(again.error().contains("handed out already"));

    let me = app.api("GET", "/me", None, Some(&token)).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["id"], DEV);

    let confirmed = app.events("login_confirmed").await;
    assert_eq!(confirmed.len(), 1);
    assert_eq!(confirmed[0]["host"], "laptop-7");
    assert_eq!(confirmed[0]["address"], "127.0.0.1");
    assert_eq!(app.events("token_issued").await.len(), 1);

    // No token, poll secret or code hash anywhere: not in the database (the
    // Logbook included), not in the log output.
    app.settle().await;
    let db = app.database_bytes();
    let secret = started["poll_secret"].as_str().unwrap();
    assert!(!contains(&db, &token), "the token is in the database");
    assert!(!contains(&db, secret), "the poll secret is in the database");
    let logs = log_text();
    assert!(!logs.contains(&token), "the token is in the log output");
    assert!(
        !logs.contains(secret),
        "the poll secret is in the log output"
    );
    let audit = app.fake.posts_in(AUDIT);
    assert!(audit.iter().all(|c| !c.text().contains(&token)));
}

#[tokio::test]
async fn a_wrong_poll_secret_or_unknown_login_answers_404() {
    let app = spawn_app().await;
    let started = app.start_login().await;
    let mut wrong = started.clone();
    wrong["poll_secret"] = json!(format!("ps_{}", "A".repeat(43)));
    assert_eq!(app.poll(&wrong).await.status, 404);
    wrong["login_id"] = json!("lg_nope");
    assert_eq!(app.poll(&wrong).await.status, 404);
}

#[tokio::test]
async fn only_the_person_who_typed_the_code_can_confirm_it() {
    let app = spawn_app().await;
    let started = app.start_login().await;
    let code = started["code"].as_str().unwrap().to_owned();
    app.command(DEV, &format!("login {code}")).await;
    app.settle().await;
    let (ts, buttons) = app.last_dm_buttons(DEV);
    // Someone else clicks (or types) Confirm.
    let clicked = app.click(OTHER, &buttons[0], &format!("D{DEV}"), &ts).await;
    assert_eq!(clicked.status, 200);
    assert!(
        app.fake
            .ephemerals(OTHER)
            .iter()
            .any(|t| t.contains("only the person who typed this sign-in code")),
        "{:?}",
        app.fake.ephemerals(OTHER)
    );
    let typed = app.command(OTHER, &format!("login {code}")).await;
    assert!(
        typed.text().contains("typed by someone else"),
        "{}",
        typed.body
    );
    assert_eq!(app.poll(&started).await.json()["status"], "pending");
    let refused = app.events("login_refused").await;
    assert_eq!(refused.len(), 2, "{refused:?}");
}

#[tokio::test]
async fn a_code_works_once_and_not_after_it_expired() {
    let app = spawn_app().await;
    let token = app.sign_in(DEV).await;
    assert!(token.starts_with("pp_"));
    // The same code again: refused as used.
    let (_, buttons) = app.last_dm_buttons(DEV);
    let code = buttons[0].split_whitespace().nth(1).unwrap().to_owned();
    let again = app.command(DEV, &format!("login {code}")).await;
    assert!(again.text().contains("used already"), "{}", again.body);

    // A code typed after its 5 minutes: refused as expired, and the poll is gone.
    let started = app.start_login().await;
    app.clock.advance(Span::from_minutes(6));
    let late = app
        .command(DEV, &format!("login {}", started["code"].as_str().unwrap()))
        .await;
    assert!(late.text().contains("expired"), "{}", late.body);
    let polled = app.poll(&started).await;
    assert_eq!(polled.status, 410);
    assert!(polled.error().contains("expired"), "{}", polled.body);
}

#[tokio::test]
async fn guessed_codes_are_limited_per_person_and_recorded() {
    let app = spawn_app().await;
    for _ in 0..5 {
        let a = app.command(OTHER, "login ZZZZ-ZZZZ").await;
        assert!(a.text().contains("no sign-in has this code"), "{}", a.body);
    }
    let limited = app.command(OTHER, "login ZZZZ-ZZZY").await;
    assert!(
        limited
            .text()
            .contains("too many unknown sign-in codes: wait 10m"),
        "{}",
        limited.body
    );
    assert_eq!(app.events("login_refused").await.len(), 5);
    // Someone else is not held back, and the window passes.
    let started = app.start_login().await;
    let fine = app
        .command(DEV, &format!("login {}", started["code"].as_str().unwrap()))
        .await;
    assert!(fine.text().contains("laptop-7"), "{}", fine.body);
    app.clock.advance(Span::from_minutes(11));
    let later = app.command(OTHER, "login ZZZZ-ZZZZ").await;
    assert!(
        later.text().contains("no sign-in has this code"),
        "{}",
        later.body
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_and_recorded_once() {
    let app = spawn_app_configured(|c| c.api.token_ttl = "1h".into()).await;
    let token = app.sign_in(DEV).await;
    assert_eq!(app.api("GET", "/me", None, Some(&token)).await.status, 200);
    app.clock.advance(Span::from_minutes(61));
    for _ in 0..2 {
        let a = app.api("GET", "/me", None, Some(&token)).await;
        assert_eq!(a.status, 401);
        assert!(
            a.error().contains("expired") && a.error().contains("passport login"),
            "{}",
            a.body
        );
    }
    let refused = app.events("token_refused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["reason"], "expired");
    let none = app.api("GET", "/me", None, None).await;
    assert_eq!(none.status, 401);
    assert!(none.error().contains("passport login"), "{}", none.body);
    let unknown = app.api("GET", "/me", None, Some("pp_nothing")).await;
    assert_eq!(unknown.status, 401);
}

#[tokio::test]
async fn logout_ends_tokens_from_the_terminal_from_chat_and_by_an_admin() {
    let app = spawn_app().await;
    // From the terminal: that token only.
    let first = app.sign_in(DEV).await;
    let second = app.sign_in(DEV).await;
    assert_eq!(
        app.api("POST", "/logout", None, Some(&first)).await.status,
        204
    );
    let a = app.api("GET", "/me", None, Some(&first)).await;
    assert_eq!(a.status, 401);
    assert!(a.error().contains("ended"), "{}", a.body);
    assert_eq!(app.api("GET", "/me", None, Some(&second)).await.status, 200);

    // From chat: all of the caller's tokens.
    let answer = app.command(DEV, "logout").await;
    assert!(
        answer
            .text()
            .contains("signed out: 1 terminal sign-in ended"),
        "{}",
        answer.body
    );
    assert_eq!(app.api("GET", "/me", None, Some(&second)).await.status, 401);

    // Someone else's: admins only.
    let others = app.sign_in(OTHER).await;
    let refused = app.command(DEV, &format!("logout <@{OTHER}|other>")).await;
    assert!(refused.text().contains("only admins"), "{}", refused.body);
    assert_eq!(app.api("GET", "/me", None, Some(&others)).await.status, 200);
    let done = app.command(BOSS, &format!("logout <@{OTHER}>")).await;
    assert!(
        done.text().contains("1 terminal sign-in of U0OTHER ended"),
        "{}",
        done.body
    );
    assert_eq!(app.api("GET", "/me", None, Some(&others)).await.status, 401);

    let logouts = app.events("logout").await;
    assert_eq!(logouts.len(), 3, "{logouts:?}");
    assert_eq!(logouts[2]["user"], OTHER);
    assert_eq!(logouts[2]["by"], BOSS);
}

// ---------------------------------------------------------------------------
// Requests

#[tokio::test]
async fn requests_are_created_listed_extended_and_completed_through_the_api() {
    let app = spawn_app().await;
    let token = app.sign_in(DEV).await;
    let created = app
        .api(
            "POST",
            "/requests",
            Some(json!({ "instances": [WEB], "duration": "1h", "ticket": "OPS-1", "reason": "disk" })),
            Some(&token),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let view = created.json();
    assert_eq!(view["id"], "AR-1");
    assert_eq!(view["state"], "pending");
    assert!(view["message"]
        .as_str()
        .unwrap()
        .contains("request AR-1 received"));
    app.settle().await;
    // The same card for approvers as from chat.
    let card = app.fake.posts_in(APPROVALS);
    assert_eq!(card.len(), 1);
    assert!(card[0]
        .button_values()
        .contains(&"approve AR-1 @request".to_owned()));

    // Bad input: the parser's message.
    let bad = app
        .api(
            "POST",
            "/requests",
            Some(json!({ "instances": ["web01"], "duration": "1h", "ticket": "OPS-1" })),
            Some(&token),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.error().contains("invalid instance id"), "{}", bad.body);
    let hrs = app
        .api(
            "POST",
            "/requests",
            Some(json!({ "instances": [WEB], "duration": "2hrs", "ticket": "OPS-1" })),
            Some(&token),
        )
        .await;
    assert!(
        hrs.error().starts_with("unknown duration \"2hrs\""),
        "{}",
        hrs.body
    );
    let plain = app
        .send(
            "POST",
            "/api/v1/requests",
            Some("text/plain"),
            "{}",
            &[("authorization", format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(plain.status, 415);

    app.click(
        LEAD1,
        "approve AR-1 @request",
        APPROVALS,
        card[0].ts.as_deref().unwrap(),
    )
    .await;
    app.settle().await;
    app.settle().await;

    let list = app
        .api("GET", "/requests?state=active", None, Some(&token))
        .await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.json()["requests"][0]["id"], "AR-1");
    assert_eq!(
        list.json()["requests"][0]["instances"][0]["status"],
        "granted"
    );
    let none = app
        .api("GET", "/requests?state=pending", None, Some(&token))
        .await;
    assert_eq!(none.json()["requests"], json!([]));
    let wrong = app
        .api("GET", "/requests?state=nope", None, Some(&token))
        .await;
    assert_eq!(wrong.status, 400);

    let extended = app
        .api(
            "POST",
            "/requests/AR-1/extend",
            Some(json!({ "duration": "30m" })),
            Some(&token),
        )
        .await;
    assert_eq!(extended.status, 200, "{}", extended.body);
    assert!(
        extended.json()["message"]
            .as_str()
            .unwrap()
            .contains("extended"),
        "{}",
        extended.body
    );

    // Cancelling an active request is the wrong state.
    let cancel = app
        .api("POST", "/requests/1/cancel", None, Some(&token))
        .await;
    assert_eq!(cancel.status, 409, "{}", cancel.body);

    let completed = app
        .api("POST", "/requests/AR-1/complete", None, Some(&token))
        .await;
    assert_eq!(completed.status, 200, "{}", completed.body);
    assert_eq!(completed.json()["state"], "completed");

    // A second request, cancelled while pending.
    let second = app
        .api(
            "POST",
            "/requests",
            Some(json!({ "instances": [WEB], "duration": "", "ticket": "OPS-2" })),
            Some(&token),
        )
        .await;
    assert_eq!(second.json()["duration"], "1h");
    let cancelled = app
        .api("POST", "/requests/AR-2/cancel", None, Some(&token))
        .await;
    assert_eq!(cancelled.json()["state"], "cancelled", "{}", cancelled.body);
    let all = app.api("GET", "/requests", None, Some(&token)).await;
    let ids: Vec<String> = all.json()["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec!["AR-2", "AR-1"]);
}

#[tokio::test]
async fn someone_elses_request_answers_404_like_a_missing_one() {
    let app = spawn_app().await;
    let dev = app.sign_in(DEV).await;
    let other = app.sign_in(OTHER).await;
    let id = app.active_request(&dev).await;
    let missing = app.api("GET", "/requests/AR-99", None, Some(&other)).await;
    assert_eq!(missing.status, 404);
    for (method, path, body) in [
        ("GET", format!("/requests/{id}"), None),
        (
            "POST",
            format!("/requests/{id}/extend"),
            Some(json!({ "duration": "30m" })),
        ),
        ("POST", format!("/requests/{id}/complete"), None),
        ("POST", format!("/requests/{id}/cancel"), None),
        (
            "POST",
            format!("/requests/{id}/certificate"),
            Some(json!({ "public_key": "ssh-ed25519 AAAA x" })),
        ),
        ("POST", format!("/requests/{id}/credentials"), None),
    ] {
        let a = app.api(method, &path, body, Some(&other)).await;
        assert_eq!(a.status, 404, "{path}: {}", a.body);
        assert_eq!(
            a.error(),
            missing.error().replace("AR-99", &id),
            "{path}: the answer tells a foreign request from a missing one"
        );
    }
    let list = app.api("GET", "/requests", None, Some(&other)).await;
    assert_eq!(list.json()["requests"], json!([]));
    // Still active: nothing was done to it.
    let shown = app
        .api("GET", &format!("/requests/{id}"), None, Some(&dev))
        .await;
    assert_eq!(shown.json()["state"], "active");
}

#[tokio::test]
async fn a_certificate_and_credentials_for_an_active_request() {
    let app = spawn_app().await;
    let token = app.sign_in(DEV).await;
    let id = app.active_request(&token).await;
    let key = CertificateAuthority::generate(CaKeyType::Ed25519).unwrap();
    let cert = app
        .api(
            "POST",
            &format!("/requests/{id}/certificate"),
            Some(json!({ "public_key": format!("{} me@laptop", key.public_key_line()) })),
            Some(&token),
        )
        .await;
    assert_eq!(cert.status, 200, "{}", cert.body);
    let c = cert.json();
    assert!(c["certificate"]
        .as_str()
        .unwrap()
        .starts_with("ssh-ed25519-cert-v01@openssh.com "));
    assert_eq!(c["principal"], "pp-dev1-1");
    let bad = app
        .api(
            "POST",
            &format!("/requests/{id}/certificate"),
            Some(json!({ "public_key": "not a key" })),
            Some(&token),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);

    let creds = app
        .api(
            "POST",
            &format!("/requests/{id}/credentials"),
            None,
            Some(&token),
        )
        .await;
    assert_eq!(creds.status, 200, "{}", creds.body);
    let c = creds.json();
    assert_eq!(c["access_key_id"], "ASIASTUBSTUBSTUB");
    assert_eq!(c["secret_access_key"], "stub-secret");
    assert_eq!(c["region"], "eu-west-1");
    assert!(c["access_ends_at"].as_str().unwrap().ends_with('Z'));
    let issued = app.broker.issued.lock().unwrap().clone();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].instances[0].as_str(), WEB);

    // Scoped to the one instance named, as the client asks; an instance of
    // no active grant of this request, or no instance id, is refused.
    let one = app
        .api(
            "POST",
            &format!("/requests/{id}/credentials?instance={WEB}"),
            None,
            Some(&token),
        )
        .await;
    assert_eq!(one.status, 200, "{}", one.body);
    let issued = app.broker.issued.lock().unwrap().clone();
    assert_eq!(
        issued[1]
            .instances
            .iter()
            .map(|i| i.as_str())
            .collect::<Vec<_>>(),
        vec![WEB]
    );
    let other = app
        .api(
            "POST",
            &format!("/requests/{id}/credentials?instance=i-0aaaaaaaaaaaaaaa1"),
            None,
            Some(&token),
        )
        .await;
    assert_eq!(other.status, 409, "{}", other.body);
    assert!(
        other.body.contains("is not an instance of"),
        "{}",
        other.body
    );
    let junk = app
        .api(
            "POST",
            &format!("/requests/{id}/credentials?instance=web-1"),
            None,
            Some(&token),
        )
        .await;
    assert_eq!(junk.status, 400, "{}", junk.body);

    // Completed: no more credentials (wrong state).
    app.api(
        "POST",
        &format!("/requests/{id}/complete"),
        None,
        Some(&token),
    )
    .await;
    let late = app
        .api(
            "POST",
            &format!("/requests/{id}/credentials"),
            None,
            Some(&token),
        )
        .await;
    assert_eq!(late.status, 409, "{}", late.body);
}

#[tokio::test]
async fn credentials_refused_by_sts_answer_an_error_id_and_no_arn() {
    // STS refuses AssumeRole as AWS does, naming the account and both roles.
    let aws = FakeAws::start(|_| {
        fake_aws::Answer::query_error(403, "AccessDenied", fake_aws::STS_REFUSAL)
    })
    .await;
    let sdk = aws.sdk().await;
    let broker = StsSessionBroker::new(
        Arc::new(SdkSts::new(&sdk)),
        Arc::new(SdkSsm::new(&sdk)),
        RoleArn::parse("arn:aws:iam::123456789012:role/ops/passport-session").unwrap(),
        "eu-west-1".into(),
    );
    let app = spawn_app_brokered(|_| {}, Some(Arc::new(broker))).await;
    let token = app.sign_in(DEV).await;
    let id = app.active_request(&token).await;

    let refused = app
        .api(
            "POST",
            &format!("/requests/{id}/credentials"),
            None,
            Some(&token),
        )
        .await;
    assert!(
        aws.calls().iter().any(|c| c.operation() == "AssumeRole"),
        "{:?}",
        aws.calls()
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    let error_id = AwsError::service("AccessDenied", fake_aws::STS_REFUSAL).id();
    assert!(
        refused
            .body
            .contains(&format!("AccessDenied (error {error_id})")),
        "{}",
        refused.body
    );
    for leak in fake_aws::LEAKS {
        assert!(!refused.body.contains(leak), "{leak} in {}", refused.body);
    }
    // The log keeps AWS's whole answer under the same id.
    let log = log_text();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("error_id={error_id}")))
        .unwrap_or_else(|| panic!("no log line with error_id={error_id}"));
    assert!(
        line.contains("arn:aws:iam::123456789012:role/ops/passport-session"),
        "{line}"
    );
}

#[tokio::test]
async fn sign_in_starts_are_capped_per_address() {
    let app = spawn_app().await;
    for _ in 0..20 {
        app.start_login().await;
    }
    let capped = app
        .api(
            "POST",
            "/login",
            Some(json!({ "host": "h", "client": "c" })),
            None,
        )
        .await;
    assert_eq!(capped.status, 429, "{}", capped.body);
    assert!(capped.error().contains("try again in"), "{}", capped.body);
    let big = app
        .api(
            "POST",
            "/login",
            Some(json!({ "host": "h".repeat(70_000), "client": "c" })),
            None,
        )
        .await;
    assert_eq!(big.status, 413, "{}", big.body);
}

// ---------------------------------------------------------------------------
// The OpenAPI document, kept true

/// Validates `value` against `schema` (the subset of OpenAPI 3.0 schemas the
/// document uses), naming the first mismatch.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return validate(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let matching = options
            .iter()
            .filter(|o| validate(doc, o, value, at).is_ok())
            .count();
        return if matching == 1 {
            Ok(())
        } else {
            Err(format!("{at}: matches {matching} of oneOf"))
        };
    }
    if value.is_null() && schema["nullable"] == true {
        return Ok(());
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    let ok = match schema["type"].as_str() {
        Some("object") => {
            let Some(map) = value.as_object() else {
                return Err(format!("{at}: not an object"));
            };
            for r in schema["required"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap();
                if !map.contains_key(r) {
                    return Err(format!("{at}: `{r}` is missing"));
                }
            }
            for (k, v) in map {
                match schema["properties"].get(k) {
                    Some(s) => validate(doc, s, v, &format!("{at}.{k}"))?,
                    None => return Err(format!("{at}: `{k}` is not documented")),
                }
            }
            true
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                return Err(format!("{at}: not an array"));
            };
            for (i, v) in items.iter().enumerate() {
                validate(doc, &schema["items"], v, &format!("{at}[{i}]"))?;
            }
            true
        }
        Some("string") => {
            value.is_string()
                && (schema["format"] != "date-time"
                    || Timestamp::parse_rfc3339(value.as_str().unwrap()).is_some())
        }
        Some("integer") => value.as_u64().is_some() || value.as_i64().is_some(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{at}: {value} is not a {}", schema["type"]))
    }
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented() {
    let app = spawn_app().await;
    let doc = app.api("GET", "/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert_eq!(doc["openapi"], "3.0.3");
    let token = app.sign_in(DEV).await;
    let id = app.active_request(&token).await;
    let key = CertificateAuthority::generate(CaKeyType::Ed25519).unwrap();
    let started = app.start_login().await;
    let bodies: BTreeMap<&str, Value> = BTreeMap::from([
        (
            "startLogin",
            json!({ "host": "laptop", "client": "passport/0.1.0" }),
        ),
        (
            "pollLogin",
            json!({ "login_id": started["login_id"], "poll_secret": started["poll_secret"] }),
        ),
        (
            "createRequest",
            json!({ "instances": [WEB], "duration": "30m", "ticket": "OPS-9" }),
        ),
        ("extendRequest", json!({ "duration": "15m" })),
        (
            "issueCertificate",
            json!({ "public_key": key.public_key_line() }),
        ),
    ]);
    // Logging out and ending the access go last, so every other call still works.
    let order = |op: &str| match op {
        "logout" => 3,
        "completeRequest" | "cancelRequest" => 2,
        _ => 1,
    };
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push((path.clone(), method.clone(), op.clone()));
        }
    }
    ops.sort_by_key(|(_, _, op)| order(op["operationId"].as_str().unwrap()));
    assert_eq!(ops.len(), 12);
    let mut seen = Vec::new();
    // Cancelling needs a pending request: the one createRequest makes.
    let mut created = String::new();
    for (path, method, op) in ops {
        let name = op["operationId"].as_str().unwrap().to_owned();
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        let target = if name == "cancelRequest" {
            &created
        } else {
            &id
        };
        let url = path.trim_start_matches("/api/v1").replace("{id}", target);
        let body = bodies.get(name.as_str()).cloned();
        let check = |a: &Answer, why: &str| {
            let status = a.status.to_string();
            let documented = &op["responses"][&status];
            assert!(
                documented.is_object(),
                "{name} {why}: {status} is not documented: {}",
                a.body
            );
            if let Some(schema) = documented["content"]["application/json"]["schema"].as_object() {
                validate(&doc, &Value::Object(schema.clone()), &a.json(), &name)
                    .unwrap_or_else(|e| panic!("{name} {why}: {e}: {}", a.body));
            } else {
                assert!(
                    a.body.is_empty(),
                    "{name}: an undocumented body: {}",
                    a.body
                );
            }
        };
        let a = app
            .api(&method.to_uppercase(), &url, body.clone(), Some(&token))
            .await;
        assert!(a.status < 300, "{name}: {} {}", a.status, a.body);
        check(&a, "with a token");
        if name == "createRequest" {
            created = a.json()["id"].as_str().unwrap().to_owned();
        }
        if secured {
            let a = app
                .api(&method.to_uppercase(), &url, body.clone(), None)
                .await;
            assert_eq!(a.status, 401, "{name}");
            check(&a, "without a token");
        }
        if body.is_some() {
            let a = app
                .api(&method.to_uppercase(), &url, Some(json!([])), Some(&token))
                .await;
            assert_eq!(a.status, 400, "{name}");
            check(&a, "with a bad body");
        }
        seen.push(name);
    }
    assert_eq!(seen.len(), 12, "{seen:?}");
}

// ---------------------------------------------------------------------------
// schemathesis, an independent client of the document

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// `PASSPORT_SCHEMATHESIS` (set by scripts/test, which installs it), else
/// the virtualenv scripts/test makes.
fn schemathesis() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PASSPORT_SCHEMATHESIS") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "PASSPORT_SCHEMATHESIS={} is not a file: run scripts/test, which installs schemathesis",
            path.display()
        );
        return Some(path);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let venv = home.join(".cache/passport/schemathesis-venv/bin/st");
    venv.is_file().then_some(venv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_wrong_with_the_api() {
    let Some(st) = schemathesis() else {
        assert!(
            !under_ci(),
            "schemathesis was not found and CI is set: run scripts/test, or set PASSPORT_SCHEMATHESIS to its `st`"
        );
        eprintln!(
            "\n!!! SKIPPED: schemathesis was not found. Run scripts/test, or \
             `python3 -m venv ~/.cache/passport/schemathesis-venv && ~/.cache/passport/schemathesis-venv/bin/pip install 'schemathesis>=4,<5'`, \
             or set PASSPORT_SCHEMATHESIS. !!!\n"
        );
        return;
    };
    // No per-person command limit, so that more calls reach the use cases.
    let app = spawn_app_configured(|c| c.requests.commands_per_minute = 0).await;
    let token = app.sign_in(DEV).await;
    app.active_request(&token).await;
    let schema = format!("{}/api/v1/openapi.json", app.base);
    let work = tempfile::tempdir().unwrap();
    let args: Vec<String> = vec![
        "run".into(),
        schema,
        "--checks".into(),
        "all".into(),
        // Data valid by the schemas may still be refused by the policy (an
        // instance Passport does not know, a ticket of the wrong form, a
        // request in the wrong state): 4xx is the right answer there.
        "--exclude-checks".into(),
        "positive_data_acceptance".into(),
        // Logging out would end the token every other call uses.
        "--exclude-operation-id".into(),
        "logout".into(),
        "--header".into(),
        format!("Authorization: Bearer {token}"),
        "--max-examples".into(),
        "20".into(),
        "--workers".into(),
        "1".into(),
        "--seed".into(),
        "1".into(),
        "--generation-database".into(),
        "none".into(),
        "--no-color".into(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(st)
            .args(&args)
            .current_dir(work.path())
            .output()
    })
    .await
    .unwrap()
    .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    // The token never reaches the log output, whatever schemathesis sent.
    assert!(!log_text().contains(&token));
}
