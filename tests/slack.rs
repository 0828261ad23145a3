//! Slack, end to end over real HTTP: the real application on port 0 with a
//! fresh SQLite file, Slack's requests signed exactly as Slack signs them, and
//! a fake Slack Web API on 127.0.0.1 that records what Passport posts.
//! Time is the engine's hand-moved clock; nothing sleeps to wait for a timer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake_aws;
mod fake_slack;
#[path = "common/postgres.rs"]
mod postgres;
mod windows_passwords;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use common::chat_app::{
    assert_warned, card_of, chat_config, clock_at_now, contains, deliver_everything, events_of,
    eventually, fresh_db, outbox, password_deletion_due, run_doctor, set_password_message_ttl,
    slack_options, slow_request_creation, state_of, unique, Lanes, PROD, WEB, WIN,
};
use common::http_client::{self, Answer, HttpClient};
use fake_aws::FakeAws;
use fake_slack::{FakeSlack, BOT_TOKEN, SIGNING_SECRET as SECRET};
use passport::adapters::aws::api::{ApiError, Ec2Api, Ec2Instance};
use passport::adapters::aws::sdk::SdkSsm;
use passport::adapters::aws::{AwsProvisioner, MemoryCommandStore};
use passport::adapters::clock::ManualClock;
use passport::adapters::slack::blocks::{clip, escape, MAX_TEXT};
use passport::adapters::slack::SlackConfig;
use passport::app::ports::{Clock, Provisioner};
use passport::config::{Config, RuleConfig, Secret};
use passport::domain::notice::Notice;
use passport::domain::request::{Platform, RequestState};
use passport::domain::time::Span;
use passport::domain::values::{InstanceId, RequestId};
use passport::http::verify::sign;
use passport::startup::{self, ChatOptions};
use windows_passwords::WindowsPasswords;

/// The content type of Slack's commands and interactions.
const FORM: &str = "application/x-www-form-urlencoded";
const APPROVALS: &str = "C0APPROVALS";
const AUDIT: &str = "C0AUDIT";

const DEV: &str = "U0DEV1";
const LEAD1: &str = "U0LEAD1";
const LEAD2: &str = "U0LEAD2";
const SRE1: &str = "U0SRE1";
const SRE2: &str = "U0SRE2";
const OTHER: &str = "U0OTHER";

struct TestApp {
    base: String,
    fake: FakeSlack,
    built: startup::App,
    /// What the start warned about.
    warnings: Vec<String>,
    /// The provisioner: the dry run, with Windows passwords sent through the courier.
    passwords: Arc<WindowsPasswords>,
    /// `aws.password_message_ttl`, when the test sets one.
    ttl: Option<String>,
    clock: ManualClock,
    db: PathBuf,
    server: tokio::task::JoinHandle<()>,
    http: HttpClient,
    _dir: Option<tempfile::TempDir>,
}

impl Answer {
    /// The text of an answer to Slack.
    fn text(&self) -> String {
        self.json()["text"].as_str().unwrap_or_default().to_owned()
    }
}

/// approvers: U0LEAD1, U0LEAD2 (configured ids); sre-leads: the Slack user
/// group S0SRELEADS (U0SRE1, U0SRE2); env=prod needs 2 sre-leads approvals.
fn config(db: &Path, fake: &FakeSlack) -> Config {
    let mut c = chat_config(db);
    c.groups = BTreeMap::from([
        ("approvers".into(), vec![LEAD1.into(), LEAD2.into()]),
        ("admins".into(), vec!["U0BOSS".into()]),
    ]);
    c.policy.rules = vec![RuleConfig {
        name: "prod".into(),
        tags: BTreeMap::from([("env".into(), "prod".into())]),
        approvers: vec!["group:sre-leads".into()],
        approvals: 2,
        ..RuleConfig::default()
    }];
    c.slack = Some(SlackConfig {
        usergroups: BTreeMap::from([("sre-leads".into(), "S0SRELEADS".into())]),
        ..fake.passport_settings()
    });
    c
}

fn fresh_fake_people(fake: &FakeSlack) {
    for (id, name) in [
        (DEV, "dev1"),
        (LEAD1, "lead1"),
        (LEAD2, "lead2"),
        (SRE1, "sre1"),
        (SRE2, "sre2"),
        (OTHER, "other"),
    ] {
        fake.add_user(id, name);
    }
    fake.set_usergroup("S0SRELEADS", &[SRE1, SRE2]);
}

async fn spawn_app() -> TestApp {
    spawn_app_with(Duration::from_millis(2500)).await
}

async fn spawn_app_with(deadline: Duration) -> TestApp {
    spawn_app_on(|_| {}, deadline, Extras::default()).await
}

/// Like [`spawn_app`], with the configuration changed by `edit` first.
async fn spawn_app_configured(edit: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on(edit, Duration::from_millis(2500), Extras::default()).await
}

/// Like [`spawn_app`], started with `extras`.
async fn spawn_app_with_extras(extras: Extras) -> TestApp {
    spawn_app_on(|_| {}, Duration::from_millis(2500), extras).await
}

async fn spawn_app_on(
    edit: impl FnOnce(&mut Config),
    deadline: Duration,
    extras: Extras,
) -> TestApp {
    let (fake, dir, db) = fresh_slack().await;
    let mut config = config(&db, &fake);
    edit(&mut config);
    let mut app = start_on(config, &fake, &db, clock_at_now(), deadline, extras).await;
    app._dir = Some(dir);
    app
}

/// A fake Slack with Passport's people in it, and a fresh database.
async fn fresh_slack() -> (FakeSlack, tempfile::TempDir, PathBuf) {
    startup::install_crypto_provider();
    let fake = FakeSlack::start().await;
    fresh_fake_people(&fake);
    let (dir, db) = fresh_db();
    (fake, dir, db)
}

/// Starts the application on an existing database (a restart).
async fn start(fake: &FakeSlack, db: &Path, clock: ManualClock, deadline: Duration) -> TestApp {
    start_with(config(db, fake), fake, db, clock, deadline, None).await
}

/// Starts the application with `config`, and `aws.password_message_ttl` set
/// to `ttl` if given.
async fn start_with(
    config: Config,
    fake: &FakeSlack,
    db: &Path,
    clock: ManualClock,
    deadline: Duration,
    ttl: Option<String>,
) -> TestApp {
    let extras = Extras {
        ttl,
        ..Extras::default()
    };
    start_on(config, fake, db, clock, deadline, extras).await
}

/// What a test may start the application with besides its configuration.
#[derive(Default)]
struct Extras {
    /// `aws.password_message_ttl`.
    ttl: Option<String>,
    /// Instead of the dry run.
    provisioner: Option<Arc<dyn Provisioner>>,
    /// Label cards and messages DRY RUN as `serve` decides it from the
    /// configuration, rather than never.
    labelled: bool,
}

/// Like [`start_with`], with `extras`.
async fn start_on(
    mut config: Config,
    fake: &FakeSlack,
    db: &Path,
    clock: ManualClock,
    deadline: Duration,
    extras: Extras,
) -> TestApp {
    let Extras {
        ttl,
        provisioner,
        labelled,
    } = extras;
    if let Some(ttl) = &ttl {
        set_password_message_ttl(&mut config, ttl);
    }
    let settings = config.validate().unwrap();
    let slack = settings.slack.clone().unwrap();
    let provisioner = provisioner.unwrap_or_else(|| startup::logged_dry_run(&settings));
    let passwords = Arc::new(WindowsPasswords::new(provisioner));
    let built = startup::slack_app(
        &settings,
        &slack,
        ChatOptions {
            clock: Arc::new(clock.clone()),
            provisioner: passwords.clone(),
            ack_deadline: deadline,
            dry_run_label: labelled && settings.dry_run_label,
            probes: Vec::new(),
        },
    )
    .await
    .unwrap();
    startup::attach_courier(&passwords.courier, &built.app, &built.surface, &settings);
    let (base, server) = http_client::serve(built.router).await;
    TestApp {
        base,
        fake: fake.clone(),
        built: built.app,
        warnings: built.warnings,
        passwords,
        ttl,
        clock,
        db: db.to_path_buf(),
        server,
        http: http_client::client(),
        _dir: None,
    }
}

impl TestApp {
    /// `GET path`: the status and the body as text.
    async fn get(&self, path: &str) -> (u16, String) {
        let answer = http_client::get(&self.http, &format!("{}{path}", self.base)).await;
        (answer.status, answer.body)
    }

    fn now_secs(&self) -> i64 {
        self.clock.now().as_millis() / 1000
    }

    async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
        headers: &[(&str, String)],
    ) -> Answer {
        let url = format!("{}{path}", self.base);
        http_client::post(&self.http, &url, content_type, body, headers).await
    }

    /// Signs `body` as Slack does, at the application's clock.
    fn signed(&self, body: &str) -> Vec<(&'static str, String)> {
        self.signed_at(body, 0)
    }

    /// Signs `body` as Slack does, `skew` seconds before the application's clock.
    fn signed_at(&self, body: &str, skew: i64) -> Vec<(&'static str, String)> {
        FakeSlack::signature_headers(body, self.now_secs() - skew)
    }

    fn command_body(&self, user: &str, text: &str) -> String {
        self.fake.command_body(user, text)
    }

    async fn command(&self, user: &str, text: &str) -> Answer {
        let body = self.command_body(user, text);
        let headers = self.signed(&body);
        self.post("/slack/commands", FORM, &body, &headers).await
    }

    /// A request of web-1 by DEV, its card delivered: the card's channel and ts.
    async fn requested(&self) -> (String, String) {
        self.command(DEV, &format!("request {WEB} 1h ticket#1 x"))
            .await;
        self.settle().await;
        self.card(1).await
    }

    /// [`Self::requested`], approved by LEAD1 with a click on its card.
    async fn approved_request(&self) -> (String, String) {
        let (channel, ts) = self.requested().await;
        self.click(LEAD1, "approve AR-1", &channel, &ts).await;
        self.settle().await;
        (channel, ts)
    }

    /// Whether no request was made at all.
    async fn no_request_yet(&self) -> bool {
        let first = RequestId::parse("AR-1").unwrap();
        self.built.store.get(first).await.unwrap().is_none()
    }

    /// Posts the Events API `body`, signed.
    async fn post_event(&self, body: &str) -> Answer {
        self.post(
            "/slack/events",
            "application/json",
            body,
            &self.signed(body),
        )
        .await
    }

    fn click_body(
        &self,
        user: &str,
        value: &str,
        channel: &str,
        ts: &str,
        thread_ts: Option<&str>,
    ) -> String {
        self.fake.click_body(user, value, channel, ts, thread_ts)
    }

    /// Clicks the button with `value` on the message `ts` in `channel`.
    async fn click(&self, user: &str, value: &str, channel: &str, ts: &str) -> Answer {
        let body = self.click_body(user, value, channel, ts, None);
        let headers = self.signed(&body);
        self.post("/slack/interactions", FORM, &body, &headers)
            .await
    }

    fn event_body(
        &self,
        event_id: &str,
        user: &str,
        channel: &str,
        thread_ts: &str,
        text: &str,
    ) -> String {
        json!({
            "token": "legacy-verification-token",
            "team_id": "T0TEAM",
            "api_app_id": "A0PASSPORT",
            "type": "event_callback",
            "event_id": event_id,
            "event_time": self.now_secs(),
            "event": {
                "type": "message", "channel": channel, "user": user, "text": text,
                "ts": format!("1700001111.{:06}", unique()), "thread_ts": thread_ts,
                "channel_type": "channel", "event_ts": "1700001111.000001"
            }
        })
        .to_string()
    }

    /// `user` writes `text` in the thread of the message `thread_ts`.
    async fn say_in_thread(
        &self,
        user: &str,
        channel: &str,
        thread_ts: &str,
        text: &str,
    ) -> Answer {
        let body = self.event_body(&format!("Ev{}", unique()), user, channel, thread_ts, text);
        self.post_event(&body).await
    }

    async fn settle(&self) {
        self.built.scheduler.settle().await.unwrap();
    }

    /// Delivers until the outbox is empty, moving the clock past each Retry-After.
    async fn deliver_everything(&self) {
        deliver_everything(&self.built, &self.clock).await;
    }

    /// The card of `request`: (channel, ts) of its first post.
    async fn card(&self, request: u64) -> (String, String) {
        card_of(&self.built, "slack", request).await
    }

    async fn state(&self, request: u64) -> RequestState {
        state_of(&self.built, request).await
    }

    async fn events(&self, request: u64, action: &str) -> usize {
        events_of(&self.built, request, action).await
    }

    async fn stop(self) -> (FakeSlack, PathBuf, ManualClock) {
        self.server.abort();
        self.built.store.close().await;
        (self.fake, self.db, self.clock)
    }

    /// Every notice in the outbox, in the order they were queued.
    fn outbox(&self) -> Vec<(String, Notice, bool)> {
        outbox(&self.db)
    }

    /// Checks that Slack got every notice exactly once, in order within each
    /// lane: each request's thread, each person's direct messages, the audit channel.
    async fn assert_delivered_in_order(&self) {
        let lanes = Lanes::delivered(&self.built, &self.db, |t| clip(&escape(t), MAX_TEXT)).await;
        for (request, expected) in &lanes.threads {
            let (_, ts) = self.card(*request).await;
            assert_eq!(&self.fake.thread(&ts), expected, "thread of AR-{request}");
        }
        let audit = self.fake.posts_in(AUDIT).iter().map(|c| c.text()).collect();
        lanes.assert_dms_and_audit(|user| self.fake.dms(user), audit);
    }
}

// ---------------------------------------------------------------------------
// The whole lifecycle

#[tokio::test]
async fn a_request_goes_from_slash_command_to_final_card() {
    let app = spawn_app().await;

    // Request.
    let answer = app
        .command(
            DEV,
            &format!("request {WEB} 2h ticket#123 disk <!channel> full"),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["response_type"], "ephemeral");
    assert!(answer.text().contains("AR-1"), "{}", answer.body);
    app.settle().await;

    // The card: in the approvals channel, mentioning the approvers, with
    // Approve and Deny buttons that carry the command text.
    let cards = app.fake.posts_in(APPROVALS);
    assert_eq!(cards.len(), 1, "{cards:?}");
    let card = &cards[0];
    let (channel, ts) = app.card(1).await;
    assert_eq!(
        (card.channel.clone().unwrap(), card.ts.clone().unwrap()),
        (channel.clone(), ts.clone())
    );
    let values = card.button_values();
    // Bound to the request's own approval, never to a later extension.
    assert_eq!(values, ["approve AR-1 @request", "deny AR-1 @request"]);
    let text = card.text();
    assert!(
        text.contains(&format!("<@{LEAD1}>")) && text.contains(&format!("<@{LEAD2}>")),
        "{text}"
    );
    let blocks = card.params["blocks"].to_string();
    assert!(
        blocks.contains("web-1") && blocks.contains("env staging"),
        "{blocks}"
    );
    assert!(
        blocks.contains("<https://tickets.example.com/browse/123|ticket#123>"),
        "{blocks}"
    );
    assert!(
        blocks.contains("&lt;!channel&gt;"),
        "people's text is escaped: {blocks}"
    );
    assert!(app
        .fake
        .ok_calls("users.info")
        .iter()
        .any(|c| c.params["user"] == DEV));

    // An approver clicks Approve.
    let answer = app.click(LEAD1, "approve AR-1", &channel, &ts).await;
    assert_eq!(answer.status, 200);
    assert!(
        contains(&app.fake.ephemerals(LEAD1), "AR-1 approved"),
        "{:?}",
        app.fake.ephemerals(LEAD1)
    );
    app.settle().await;
    assert_eq!(app.state(1).await, RequestState::Active);

    // The card was edited in place; its last version has no buttons and says who approved.
    let updates = app.fake.updates(&ts);
    assert!(!updates.is_empty());
    let last = updates.last().unwrap();
    assert!(
        last.button_values().is_empty(),
        "no stale buttons: {:?}",
        last.params
    );
    assert!(
        last.params["blocks"].to_string().contains("lead1"),
        "{:?}",
        last.params
    );
    // The thread carries the lifecycle, and the requester was told directly.
    let thread = app.fake.thread(&ts);
    assert!(contains(&thread, "approved"), "{thread:?}");
    assert!(!app.fake.dms(DEV).is_empty());
    assert!(app
        .fake
        .ok_calls("conversations.open")
        .iter()
        .any(|c| c.params["users"].to_string().contains(DEV)));

    // The requester extends from the thread; someone else may not.
    let answer = app.say_in_thread(DEV, &channel, &ts, "extend 1h").await;
    assert_eq!(answer.status, 200);
    assert!(
        contains(&app.fake.ephemerals(DEV), "AR-1 extended by 1h"),
        "{:?}",
        app.fake.ephemerals(DEV)
    );
    let answer = app.say_in_thread(OTHER, &channel, &ts, "extend 1h").await;
    assert_eq!(answer.status, 200);
    let refusals = app.fake.ephemerals(OTHER);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(refusals[0].starts_with(":warning:"), "{refusals:?}");
    assert_eq!(app.events(1, "extended").await, 1);
    // Conversation in the thread gets no answer.
    app.say_in_thread(OTHER, &channel, &ts, "thanks, looks good")
        .await;
    assert_eq!(app.fake.ephemerals(OTHER).len(), 1);
    app.settle().await;

    // `done` in the thread completes it.
    app.say_in_thread(DEV, &channel, &ts, "done").await;
    app.settle().await;
    assert_eq!(app.state(1).await, RequestState::Completed);
    let last = app.fake.updates(&ts).last().cloned().unwrap();
    assert!(
        last.params["blocks"].to_string().contains("Completed"),
        "{:?}",
        last.params
    );
    assert!(last.button_values().is_empty());

    // Every Logbook event reached the audit channel, and every notice its lane, in order.
    assert!(!app.fake.posts_in(AUDIT).is_empty());
    app.assert_delivered_in_order().await;
    // Nothing Passport sent broke Slack's limits.
    let refused: Vec<_> = app.fake.calls().into_iter().filter(|c| !c.ok()).collect();
    assert!(refused.is_empty(), "{refused:?}");
}

#[tokio::test]
async fn a_prod_request_needs_two_members_of_the_slack_user_group() {
    let app = spawn_app().await;
    app.command(DEV, &format!("request {PROD} 1h ticket#9 migrate"))
        .await;
    app.settle().await;
    let (channel, ts) = app.card(1).await;
    let card = &app.fake.posts_in(APPROVALS)[0];
    assert!(
        card.text().contains("<!subteam^S0SRELEADS>"),
        "{}",
        card.text()
    );

    // LEAD1 is an approver of other things, not of prod.
    app.click(LEAD1, "approve AR-1", &channel, &ts).await;
    assert!(app.fake.ephemerals(LEAD1)[0].starts_with(":warning:"));
    app.click(SRE1, "approve AR-1", &channel, &ts).await;
    assert_eq!(app.state(1).await, RequestState::Pending);
    app.click(SRE2, "approve AR-1", &channel, &ts).await;
    assert_ne!(app.state(1).await, RequestState::Pending);
    assert!(!app.fake.ok_calls("usergroups.users.list").is_empty());
    // Looked up once and cached.
    assert_eq!(app.fake.ok_calls("usergroups.users.list").len(), 1);
}

#[tokio::test]
async fn an_approval_records_that_the_approver_qualified_through_the_slack_user_group() {
    let app = spawn_app().await;
    app.command(DEV, &format!("request {PROD} 1h ticket#9 migrate"))
        .await;
    app.command(DEV, &format!("request {WEB} 1h ticket#9 look"))
        .await;
    app.settle().await;
    let (channel, ts) = app.card(1).await;
    app.click(SRE1, "approve AR-1 @request", &channel, &ts)
        .await;
    let (channel2, ts2) = app.card(2).await;
    app.click(LEAD1, "approve AR-2 @request", &channel2, &ts2)
        .await;
    let details = |request: u64, action: &'static str| {
        let store = app.built.store.clone();
        async move {
            let id = RequestId::parse(&format!("AR-{request}")).unwrap();
            let events = store.audit_events(Some(id), None).await.unwrap();
            let event = events.iter().find(|e| e.action == action).unwrap();
            serde_json::from_str::<Value>(&event.details).unwrap()
        }
    };
    let recorded = details(1, "approval_recorded").await;
    assert_eq!(
        recorded["qualified"],
        json!([{
            "rule": "prod",
            "via": "group:sre-leads",
            "source": { "from": "slack_user_group", "id": "S0SRELEADS" }
        }]),
        "{recorded}"
    );
    let approved = details(2, "approved").await;
    assert_eq!(
        approved["qualified"],
        json!([{ "rule": "default", "via": "group:approvers", "source": { "from": "config" } }]),
        "{approved}"
    );
}

#[tokio::test]
async fn a_click_under_an_old_extension_prompt_is_refused_in_slack() {
    let app = spawn_app_configured(|c| {
        c.policy.rules[0].extension_approval_over = Some("1h".into());
    })
    .await;
    app.command(DEV, &format!("request {PROD} 1h ticket#9 migrate"))
        .await;
    app.settle().await;
    let (channel, ts) = app.card(1).await;
    let card = app.fake.posts_in(APPROVALS)[0].button_values();
    app.click(SRE1, &card[0], &channel, &ts).await;
    app.click(SRE2, &card[0], &channel, &ts).await;
    app.settle().await;
    assert_eq!(app.state(1).await, RequestState::Active);
    let prompts = || {
        app.fake
            .ok_calls("chat.postMessage")
            .into_iter()
            .filter(|c| c.thread_ts().as_deref() == Some(ts.as_str()))
            .map(|c| c.button_values())
            .filter(|v| v.iter().any(|v| v.contains("@extension-")))
            .collect::<Vec<_>>()
    };
    app.say_in_thread(DEV, &channel, &ts, "extend 2h").await;
    app.settle().await;
    let first = prompts();
    assert_eq!(
        first,
        [["approve AR-1 @extension-1", "deny AR-1 @extension-1"]]
    );
    app.say_in_thread(SRE1, &channel, &ts, "deny not yet").await;
    app.say_in_thread(DEV, &channel, &ts, "extend 2h").await;
    app.settle().await;
    // The Approve button under the first prompt, clicked in the thread.
    let body = app.click_body(SRE2, &first[0][0], &channel, "9.000001", Some(&ts));
    let headers = app.signed(&body);
    app.post("/slack/interactions", FORM, &body, &headers).await;
    let said = app.fake.ephemerals(SRE2);
    assert!(
        said.last()
            .is_some_and(|t| t.contains("this prompt is out of date")
                && t.contains("the current one is the extension by 2h")),
        "{said:?}"
    );
    let req = app
        .built
        .store
        .get(RequestId::parse("AR-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    let pending = req.pending_extension.unwrap();
    assert_eq!(pending.seq, 2);
    assert!(pending.approvals.is_empty());
}

#[tokio::test]
async fn user_group_membership_fails_closed_once_the_cache_has_run_out() {
    // A ttl of 0: every look-up asks Slack, so the cache has always run out.
    let app = spawn_app_configured(|c| c.slack.as_mut().unwrap().cache_ttl = "0".into()).await;
    app.command(DEV, &format!("request {PROD} 1h ticket#9 migrate"))
        .await;
    app.settle().await;
    let (channel, ts) = app.card(1).await;
    app.click(SRE1, "approve AR-1", &channel, &ts).await;
    assert_eq!(app.events(1, "approval_recorded").await, 1);
    // Slack can no longer say who is in the group: nobody counts as a member,
    // although SRE2 was one the last time Slack answered.
    app.fake.drop_usergroup("S0SRELEADS");
    app.click(SRE2, "approve AR-1", &channel, &ts).await;
    assert!(
        app.fake.ephemerals(SRE2)[0].starts_with(":warning:"),
        "{:?}",
        app.fake.ephemerals(SRE2)
    );
    assert_eq!(app.state(1).await, RequestState::Pending);
}

// ---------------------------------------------------------------------------
// Acknowledgement and help

#[tokio::test]
async fn passport_with_no_arguments_or_help_shows_usage() {
    let app = spawn_app().await;
    for text in ["", "help"] {
        let answer = app.command(DEV, text).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()["response_type"], "ephemeral");
        let usage = answer.text();
        assert!(usage.contains("/passport request"), "{usage}");
        assert!(usage.contains("/passport extend"), "{usage}");
    }
}

#[tokio::test]
async fn slow_work_is_acknowledged_at_once_and_answered_through_response_url() {
    let app = spawn_app_with(Duration::ZERO).await;
    // The work cannot finish before the answer, due at once.
    slow_request_creation(&app.db);
    let answer = app
        .command(DEV, &format!("request {WEB} 1h ticket#5 slow day"))
        .await;
    assert_eq!(answer.status, 200);
    assert!(answer.text().contains("working on it"), "{}", answer.body);
    eventually("the answer through response_url", || {
        !app.fake.responses().is_empty()
    })
    .await;
    let responses = app.fake.responses();
    assert_eq!(responses.len(), 1, "{responses:?}");
    assert!(responses[0].contains("AR-1"), "{responses:?}");
}

#[tokio::test]
async fn the_events_url_check_is_answered_with_its_challenge() {
    let app = spawn_app().await;
    let body = json!({ "token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification" }).to_string();
    let answer = app.post_event(&body).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json()["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
}

/// `/healthz` is unauthenticated and polled often, so it must not cost more as
/// the outbox (never pruned) grows: with a large outbox, and then with the
/// outbox table gone altogether, it still answers at once.
#[tokio::test]
async fn health_answers_without_reading_the_outbox() {
    let app = spawn_app().await;
    let get_health = || async {
        let (status, body) = app.get("/healthz").await;
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
        )
    };
    let conn = rusqlite::Connection::open(&app.db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000) \
         INSERT INTO outbox (surface, lane, notice, created_at, next_attempt_at, delivered_at) \
         SELECT 'slack', 'audit', '{}', 0, 0, 0 FROM n;",
    )
    .unwrap();
    let (status, body) = get_health().await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "status": "ok" }));
    // Any query of the outbox would now fail, and the answer be 503.
    conn.execute_batch("ALTER TABLE outbox RENAME TO outbox_elsewhere;")
        .unwrap();
    let (status, body) = get_health().await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
}

/// `/readyz` answers 200 while the database takes writes, and 503 while
/// another process holds its write lock; `passport healthcheck` (the image's
/// HEALTHCHECK) reads the same answer.
#[tokio::test]
async fn readiness_follows_whether_the_database_takes_writes() {
    let app = spawn_app().await;
    let ready = || async { app.get("/readyz").await.0 };
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        json!({
            "status": "ready",
            "checks": { "store": { "state": "ok" }, "slack": { "state": "ok" } },
        })
    );
    let healthcheck = |url: String| async move {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_passport"))
                .args(["healthcheck", "--url", &url])
                .env_remove("PASSPORT_CONFIG")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let out = healthcheck(format!("{}/readyz", app.base)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let conn = rusqlite::Connection::open(&app.db).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE;").unwrap();
    assert_eq!(ready().await, 503);
    let out = healthcheck(format!("{}/readyz", app.base)).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    conn.execute_batch("ROLLBACK;").unwrap();
    // The writer gets the lock back once the other process lets go.
    let mut status = ready().await;
    for _ in 0..50 {
        if status == 200 {
            break;
        }
        tokio::task::yield_now().await;
        status = ready().await;
    }
    assert_eq!(status, 200);
}

/// `/readyz` asks Slack's `auth.test` for the bot token: a refused token
/// makes the pod not ready, and the answer names Slack and what to do. The
/// outcome is kept for a few seconds, so frequent probes ask Slack once; once
/// that time has passed (on the injected clock), a healed token is ready again.
#[tokio::test]
async fn readiness_names_slack_when_its_token_is_refused() {
    let app = spawn_app().await;
    let auth_tests = || {
        app.fake
            .calls()
            .iter()
            .filter(|c| c.method == "auth.test")
            .count()
    };
    let before = auth_tests();
    app.fake.fail_method("auth.test", "invalid_auth");
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "not ready");
    assert_eq!(body["checks"]["store"], json!({ "state": "ok" }));
    assert_eq!(body["checks"]["slack"]["state"], "failing");
    let said = body["checks"]["slack"]["message"].as_str().unwrap();
    assert!(said.contains("invalid_auth"), "{said}");
    assert!(said.contains("PASSPORT_SLACK__BOT_TOKEN"), "{said}");
    let message = body["message"].as_str().unwrap();
    assert!(message.starts_with("slack: "), "{message}");
    assert!(!message.contains(BOT_TOKEN), "{message}");

    // Probes within a few seconds reuse the outcome: Slack is asked once.
    app.fake.heal_method("auth.test");
    for _ in 0..5 {
        assert_eq!(app.get("/readyz").await.0, 503);
    }
    assert_eq!(auth_tests(), before + 1);
    app.clock.advance(Span::from_secs(4));
    assert_eq!(app.get("/readyz").await.0, 503);
    assert_eq!(auth_tests(), before + 1);

    // Once it is older than that, Slack is asked again, and the token works.
    app.clock.advance(Span::from_secs(2));
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(auth_tests(), before + 2);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["checks"]["slack"], json!({ "state": "ok" }));
    // The liveness check never asks Slack.
    assert_eq!(app.get("/healthz").await.0, 200);
    assert_eq!(auth_tests(), before + 2);
}

/// Cards Slack keeps refusing are set aside after 5 attempts, and the audit
/// channel hears of it in one notice per pass, not one per card, saying how
/// many and how to list and resend them. Set-asides soon after a report wait
/// and are counted into the next, a few minutes later.
#[tokio::test]
async fn set_aside_notices_are_reported_once_in_the_audit_channel() {
    let app = &spawn_app().await;
    app.fake
        .fail_in_channel("chat.postMessage", APPROVALS, "channel_not_found");
    let reports = || {
        app.fake
            .posts_in(AUDIT)
            .into_iter()
            .filter(|c| c.ok() && c.text().contains("set aside"))
            .map(|c| c.text())
            .collect::<Vec<_>>()
    };
    // Retries 1 s, 2 s, 4 s and 8 s apart: 20 seconds covers them.
    let retry_for = |seconds: u64| async move {
        for _ in 0..seconds {
            app.settle().await;
            app.clock.advance(Span::from_secs(1));
        }
        app.settle().await;
    };

    for ticket in 1..=3 {
        let answer = app
            .command(DEV, &format!("request {PROD} 1h ticket#{ticket} migrate"))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    retry_for(20).await;
    assert_eq!(app.built.store.outbox_counts().await.unwrap().dead, 3);
    let said = reports();
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(said[0].contains("3 notices"), "{}", said[0]);
    assert!(said[0].contains("channel_not_found"), "{}", said[0]);
    assert!(said[0].contains("passport outbox list"), "{}", said[0]);
    assert!(said[0].contains("passport outbox retry"), "{}", said[0]);

    // A fourth, set aside within five minutes of that report, waits.
    let answer = app
        .command(LEAD1, &format!("request {PROD} 1h ticket#4 migrate"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    retry_for(20).await;
    assert_eq!(app.built.store.outbox_counts().await.unwrap().dead, 4);
    assert_eq!(reports().len(), 1);
    app.clock.advance(Span::from_minutes(5));
    app.settle().await;
    let said = reports();
    assert_eq!(said.len(), 2, "{said:#?}");
    assert!(said[1].contains("1 notice could not"), "{}", said[1]);
}

/// `/metrics` after one request's lifecycle: the Logbook counters, the chat
/// deliveries and the HTTP latencies moved, the database gauges are there,
/// and every metric the shipped alert rules use is exported.
#[tokio::test]
async fn metrics_move_through_a_lifecycle_and_cover_every_alert_rule() {
    let app = spawn_app().await;
    let scrape = || async {
        let (status, body) = app.get("/metrics").await;
        assert_eq!(status, 200);
        body
    };
    // Counters are per process and other tests run beside this one: compare.
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let before = scrape().await;
    let created = "passport_logbook_events_total{action=\"requested\"}";
    let approved = "passport_logbook_events_total{action=\"approved\"}";

    let answer = app
        .command(DEV, &format!("request {WEB} 1h ticket#1 metrics"))
        .await;
    assert_eq!(answer.status, 200);
    app.settle().await;
    app.command(LEAD1, "approve AR-1").await;
    app.deliver_everything().await;
    app.command(DEV, "complete AR-1").await;
    app.deliver_everything().await;

    // The database gauges are read at most once per GAUGES_MAX_AGE: still the
    // first scrape's until then.
    let cached = scrape().await;
    assert!(
        cached.contains("passport_requests{state=\"completed\"} 0"),
        "{cached}"
    );
    app.clock.advance(passport::http::metrics::GAUGES_MAX_AGE);
    let after = scrape().await;
    assert!(value(&after, created) > value(&before, created), "{after}");
    assert!(
        value(&after, approved) > value(&before, approved),
        "{after}"
    );
    assert!(
        after.contains("passport_chat_deliveries_total{surface=\"slack\",outcome=\"delivered\"}"),
        "{after}"
    );
    assert!(after.contains("passport_http_request_duration_seconds_bucket{endpoint=\"/slack/commands\",method=\"POST\",status=\"200\""), "{after}");
    assert!(
        after.contains("passport_time_to_approval_seconds_count"),
        "{after}"
    );
    assert!(
        after.contains("passport_requests{state=\"completed\"} 1"),
        "{after}"
    );
    assert!(after.contains("passport_removals_overdue 0"), "{after}");
    assert!(after.contains("passport_outbox_pending 0"), "{after}");

    // Each group of changes is timed, its two phases on SQLite.
    for phase in ["writes", "commit"] {
        assert!(
            group_phases(&after, "sqlite", phase, "ok") > 0,
            "{phase}: {after}"
        );
    }
    assert!(
        after.contains("passport_store_group_size_count{store=\"sqlite\"}"),
        "{after}"
    );

    // The shipped alert rules name only metrics that exist.
    let names = alerted_metrics();
    assert_exported(&after, &names);
    let checked = names.len();
    assert!(
        checked >= 9,
        "only {checked} metric names found in the alert rules"
    );

    // A group that fails is timed too, as failed: here a change that wrote
    // its request and then could not write its Logbook event.
    let failed_before = group_phases(&after, "sqlite", "writes", "failed");
    rusqlite::Connection::open(&app.db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER away BEFORE INSERT ON logbook BEGIN \
             SELECT RAISE(ABORT, 'the Logbook is away'); END;",
        )
        .unwrap();
    let answer = app
        .command(DEV, &format!("request {WEB} 1h ticket#2 metrics"))
        .await;
    assert!(answer.text().contains("could not save"), "{}", answer.body);
    let failed = scrape().await;
    assert!(
        group_phases(&failed, "sqlite", "writes", "failed") > failed_before,
        "{failed}"
    );
}

/// How many groups of changes on `store` had their `phase` end with
/// `outcome`, in the scrape `metrics`. The recorder is the process's, shared
/// with the other tests running at the same time, so counts are compared,
/// not looked for.
fn group_phases(metrics: &str, store: &str, phase: &str, outcome: &str) -> u64 {
    let count = format!(
        "passport_store_group_seconds_count{{store=\"{store}\",phase=\"{phase}\",outcome=\"{outcome}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&count))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Fails naming the first of `names` that the scrape `metrics` lacks.
fn assert_exported(metrics: &str, names: &[String]) {
    for name in names {
        assert!(
            metrics.lines().any(|l| l.starts_with(name.as_str())),
            "the alert rules use {name}, which /metrics does not export"
        );
    }
}

/// The metric names the shipped alert rules' expressions use.
fn alerted_metrics() -> Vec<String> {
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/prometheus/passport-alerts.yaml"),
    )
    .unwrap();
    let names = regex::Regex::new(r"passport_[a-z_]+").unwrap();
    rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .flat_map(|line| {
            names
                .find_iter(line)
                .map(|n| n.as_str().trim_end_matches("_bucket").to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `passport doctor` against the fake Slack: the token, each channel the bot
/// posts to (a rule's too), the user groups and the database are checked,
/// and a channel the bot was never invited to is named with the fix.
#[tokio::test]
async fn doctor_names_a_channel_the_bot_is_not_in() {
    let (fake, _dir, _) = fresh_slack().await;
    let ran = run_doctor(
        |db| {
            format!(
                "provisioner = \"dry-run\"\n\
                 [store]\npath = {db:?}\n\
                 [slack]\nmode = \"http\"\napprovals_channel = \"#access-requests\"\naudit_channel = \"C0AUDIT\"\n\
                 api_url = {api:?}\nchannel_pace = \"0\"\n\
                 [slack.usergroups]\nsre-leads = \"S0SRELEADS\"\n\
                 [groups]\napprovers = [\"{LEAD1}\"]\nadmins = [\"{LEAD2}\"]\n\
                 [[policy.rules]]\nname = \"prod\"\ntags = {{ env = \"prod\" }}\napprovers = [\"group:sre-leads\"]\nchannel = \"#not-joined\"\n",
                db = db.display().to_string(),
                api = fake.api_url(),
            )
        },
        &[
            ("PASSPORT_SLACK__BOT_TOKEN", BOT_TOKEN),
            ("PASSPORT_SLACK__SIGNING_SECRET", SECRET),
        ],
    )
    .await;
    let text = ran.stdout;
    assert_eq!(ran.code, Some(1), "{text}{}", ran.stderr);
    for line in [
        "ok    slack token: bot passport in Fake Workspace (T0TEAM)",
        "ok    slack channel: #access-requests: the bot is a member",
        "ok    slack channel: C0AUDIT: the bot is a member",
        "FAIL  slack channel: #not-joined: the bot is not a member: type /invite @Passport in it",
        "ok    slack user group: sre-leads = S0SRELEADS: 2 member(s)",
        "ok    logbook: intact",
        "1 problem(s) found",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    assert!(text.contains("ok    database: "), "{text}");
    assert!(!text.contains(BOT_TOKEN), "the token was printed");
}

// ---------------------------------------------------------------------------
// Verification

#[tokio::test]
async fn a_bad_signature_is_refused_and_nothing_happens() {
    let app = spawn_app().await;
    let body = app.command_body(DEV, &format!("request {WEB} 1h ticket#1 x"));
    let mut headers = app.signed(&body);
    headers[0].1 = sign(b"not the signing secret", &headers[1].1, body.as_bytes());
    let answer = app.post("/slack/commands", FORM, &body, &headers).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.body, "invalid request signature", "no internals");

    // A body changed after signing.
    let headers = app.signed(&body);
    let tampered = body.replace("1h", "9h");
    let answer = app.post("/slack/commands", FORM, &tampered, &headers).await;
    assert_eq!(answer.status, 401);

    // No signature at all.
    let answer = app.post("/slack/commands", FORM, &body, &[]).await;
    assert_eq!(answer.status, 401);

    app.settle().await;
    assert!(app.fake.posts_in(APPROVALS).is_empty());
    assert!(app.no_request_yet().await);
}

#[tokio::test]
async fn a_stale_timestamp_is_refused() {
    let app = spawn_app().await;
    let body = app.command_body(DEV, &format!("request {WEB} 1h ticket#1 x"));
    let headers = app.signed_at(&body, 301);
    let answer = app.post("/slack/commands", FORM, &body, &headers).await;
    assert_eq!(answer.status, 401);
    // Within the window it is fine.
    let headers = app.signed_at(&body, 200);
    let answer = app.post("/slack/commands", FORM, &body, &headers).await;
    assert_eq!(answer.status, 200);
}

// ---------------------------------------------------------------------------
// Only Passport's own workspace, enterprise and app

/// The log lines written on this test's thread while the guard lives (tests
/// run on a current-thread runtime, so the server's tasks log here too).
struct Logs {
    buffer: Arc<std::sync::Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> Self {
        let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = LogWriter(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        Self {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }
}

impl TestApp {
    /// Posts `body` to `path`, signed with Passport's own signing secret.
    async fn post_signed(&self, path: &str, content_type: &str, body: &str) -> Answer {
        self.post(path, content_type, body, &self.signed(body))
            .await
    }

    /// A slash command with the form field `field` set to `value`.
    fn command_body_with(&self, user: &str, text: &str, field: &str, value: &str) -> String {
        let mut form: Vec<(String, String)> =
            serde_urlencoded::from_str(&self.command_body(user, text)).unwrap();
        match form.iter_mut().find(|(k, _)| k == field) {
            Some(pair) => pair.1 = value.to_owned(),
            None => form.push((field.to_owned(), value.to_owned())),
        }
        serde_urlencoded::to_string(form).unwrap()
    }

    /// A click whose payload `edit` changed first.
    fn click_body_with(
        &self,
        user: &str,
        value: &str,
        channel: &str,
        ts: &str,
        edit: impl FnOnce(&mut Value),
    ) -> String {
        let form: Vec<(String, String)> =
            serde_urlencoded::from_str(&self.click_body(user, value, channel, ts, None)).unwrap();
        let mut payload: Value = serde_json::from_str(&form[0].1).unwrap();
        edit(&mut payload);
        serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
    }

    async fn requests_made(&self) -> usize {
        let mut n = 0;
        while self
            .built
            .store
            .get(RequestId::parse(&format!("AR-{}", n + 1)).unwrap())
            .await
            .unwrap()
            .is_some()
        {
            n += 1;
        }
        n
    }
}

const FOREIGN_REFUSAL: &str =
    "request refused: not from the Slack workspace and app Passport serves";

#[tokio::test]
async fn slash_commands_from_another_workspace_enterprise_or_app_are_refused() {
    let logs = Logs::capture();
    let app = spawn_app().await;
    let text = format!("request {WEB} 1h ticket#1 x");
    for (field, value) in [
        // The same app installed in another workspace signs with the same secret.
        ("team_id", "T0OTHERTEAM"),
        ("enterprise_id", "E0OTHERORG"),
        // Another app given the same signing secret.
        ("api_app_id", "A0OTHERAPP"),
        // Fields Slack always sends: their absence is no proof of anything.
        ("team_id", ""),
        ("api_app_id", ""),
    ] {
        let body = app.command_body_with(DEV, &text, field, value);
        let answer = app.post_signed("/slack/commands", FORM, &body).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (401, FOREIGN_REFUSAL),
            "{field}={value}"
        );
    }
    app.settle().await;
    assert_eq!(app.requests_made().await, 0, "nothing was created");
    assert!(app.fake.posts_in(APPROVALS).is_empty());
    assert!(app.fake.responses().is_empty(), "nobody was answered");
    let log = logs.text();
    for id in ["T0OTHERTEAM", "E0OTHERORG", "A0OTHERAPP"] {
        assert!(
            log.lines()
                .any(|l| l.contains("slash command refused") && l.contains(id)),
            "no refusal naming {id} in:\n{log}"
        );
    }
    for secret in [SECRET, BOT_TOKEN] {
        assert!(!log.contains(secret), "a secret reached the log");
    }

    // The workspace and app Passport learnt from auth.test and bots.info still get in.
    let answer = app.command(DEV, &text).await;
    assert_eq!(answer.status, 200);
    assert!(answer.text().contains("AR-1"), "{}", answer.body);
}

#[tokio::test]
async fn clicks_forms_and_thread_messages_from_elsewhere_are_refused() {
    let logs = Logs::capture();
    let app = spawn_app().await;
    let (channel, ts) = app.requested().await;

    type Edit = fn(&mut Value);
    let clicks: [(&str, Edit); 5] = [
        ("T0OTHERTEAM", |p| p["team"]["id"] = json!("T0OTHERTEAM")),
        // A Slack Connect partner clicking Approve on a card in a shared channel.
        ("T0PARTNER", |p| p["user"]["team_id"] = json!("T0PARTNER")),
        ("E0OTHERORG", |p| {
            p["enterprise"] = json!({ "id": "E0OTHERORG" })
        }),
        ("A0OTHERAPP", |p| p["api_app_id"] = json!("A0OTHERAPP")),
        ("no app", |p| {
            p.as_object_mut().unwrap().remove("api_app_id");
        }),
    ];
    for (what, edit) in clicks {
        let body = app.click_body_with(LEAD1, "approve AR-1", &channel, &ts, edit);
        let answer = app.post_signed("/slack/interactions", FORM, &body).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (401, FOREIGN_REFUSAL),
            "{what}"
        );
    }

    // The request form, submitted from another workspace.
    let form = json!({
        "type": "view_submission",
        "team": { "id": "T0OTHERTEAM" },
        "user": { "id": DEV, "username": "dev1", "team_id": "T0OTHERTEAM" },
        "api_app_id": "A0PASSPORT",
        "trigger_id": format!("{}.9.form", unique()),
        "view": {
            "id": "V0FAKE", "type": "modal", "callback_id": "passport_request",
            "private_metadata": "C0GENERAL", "blocks": [],
            "state": { "values": {
                "instances": { "value": { "type": "plain_text_input", "value": WEB } },
                "ticket": { "value": { "type": "plain_text_input", "value": "ticket#2" } },
                "reason": { "value": { "type": "plain_text_input", "value": "r" } }
            } }
        }
    });
    let body = serde_urlencoded::to_string([("payload", form.to_string())]).unwrap();
    let answer = app.post_signed("/slack/interactions", FORM, &body).await;
    assert_eq!(answer.status, 401);

    // Thread messages: from another workspace, for another app, and from a
    // Slack Connect partner writing in the card's thread in a shared channel.
    type EventEdit = fn(&mut Value);
    let events: [(&str, EventEdit); 4] = [
        ("T0OTHERTEAM", |b| b["team_id"] = json!("T0OTHERTEAM")),
        ("A0OTHERAPP", |b| b["api_app_id"] = json!("A0OTHERAPP")),
        ("E0OTHERORG", |b| b["enterprise_id"] = json!("E0OTHERORG")),
        ("T0PARTNER", |b| {
            b["event"]["user_team"] = json!("T0PARTNER")
        }),
    ];
    for (what, edit) in events {
        let mut body: Value = serde_json::from_str(&app.event_body(
            &format!("Ev{}", unique()),
            LEAD1,
            &channel,
            &ts,
            "approve",
        ))
        .unwrap();
        edit(&mut body);
        let body = body.to_string();
        let answer = app
            .post_signed("/slack/events", "application/json", &body)
            .await;
        assert_eq!(answer.status, 401, "{what}");
    }

    app.settle().await;
    assert_eq!(app.state(1).await, RequestState::Pending, "nobody approved");
    assert_eq!(app.events(1, "approved").await, 0);
    assert_eq!(app.requests_made().await, 1, "the form created nothing");
    assert!(app.fake.ephemerals(LEAD1).is_empty(), "nobody was answered");
    let log = logs.text();
    for id in ["T0OTHERTEAM", "T0PARTNER", "E0OTHERORG", "A0OTHERAPP"] {
        assert!(
            log.lines().any(|l| l.contains("refused") && l.contains(id)),
            "no refusal naming {id} in:\n{log}"
        );
    }

    // From Passport's own workspace and app, the click acts.
    let answer = app.click(LEAD1, "approve AR-1", &channel, &ts).await;
    assert_eq!(answer.status, 200);
    app.settle().await;
    assert_eq!(app.events(1, "approved").await, 1);
}

#[tokio::test]
async fn the_workspace_is_learnt_at_start_with_its_enterprise_unless_configured() {
    // In an Enterprise Grid organization: auth.test names it, and requests
    // must name the same one.
    let (fake, _dir, db) = fresh_slack().await;
    fake.set_enterprise("E0GRID");
    let clock = clock_at_now();
    let app = start(&fake, &db, clock.clone(), Duration::from_millis(2500)).await;
    assert!(fake.calls().iter().any(|c| c.method == "auth.test"));
    assert!(fake.calls().iter().any(|c| c.method == "bots.info"));
    let text = format!("request {WEB} 1h ticket#1 x");
    let ours = app.command_body_with(DEV, &text, "enterprise_id", "E0GRID");
    let answer = app.post_signed("/slack/commands", FORM, &ours).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let theirs = app.command_body_with(DEV, &text, "enterprise_id", "E0ELSEWHERE");
    let answer = app.post_signed("/slack/commands", FORM, &theirs).await;
    assert_eq!(answer.status, 401);
    app.built.store.close().await;
    app.server.abort();

    // Configured ids are used as they are, without asking Slack.
    let calls = fake.calls().len();
    let mut named = config(&db, &fake);
    if let Some(slack) = named.slack.as_mut() {
        slack.team_id = "T0TEAM".into();
        slack.app_id = "A0CONFIGURED".into();
    }
    let app = start_with(
        named,
        &fake,
        &db,
        clock.clone(),
        Duration::from_millis(2500),
        None,
    )
    .await;
    assert!(
        fake.calls()[calls..]
            .iter()
            .all(|c| c.method != "auth.test" && c.method != "bots.info"),
        "{:?}",
        fake.calls()
    );
    let body = app.command_body_with(DEV, "list", "api_app_id", "A0PASSPORT");
    let answer = app.post_signed("/slack/commands", FORM, &body).await;
    assert_eq!(answer.status, 401, "only the configured app is Passport's");
    let body = app.command_body_with(DEV, "list", "api_app_id", "A0CONFIGURED");
    let answer = app.post_signed("/slack/commands", FORM, &body).await;
    assert_eq!(answer.status, 200);
    app.built.store.close().await;
    app.server.abort();

    // A configured workspace the bot token does not belong to stops the start.
    let mut elsewhere = config(&db, &fake);
    if let Some(slack) = elsewhere.slack.as_mut() {
        slack.team_id = "T0ELSEWHERE".into();
    }
    let settings = elsewhere.validate().unwrap();
    let slack = settings.slack.as_ref().unwrap();
    let refused = startup::slack_app(&settings, slack, slack_options(&clock, &settings)).await;
    let Err(e) = refused else {
        panic!("started with a workspace the token does not belong to")
    };
    let e = e.to_string();
    assert!(
        e.contains("slack.team_id is T0ELSEWHERE") && e.contains("T0TEAM"),
        "{e}"
    );
}

#[tokio::test]
async fn a_body_over_64_kib_is_refused_with_413() {
    let app = spawn_app().await;
    let body = app.command_body(DEV, &"x".repeat(70 * 1024));
    let answer = app
        .post("/slack/commands", FORM, &body, &app.signed(&body))
        .await;
    assert_eq!(answer.status, 413);
}

// ---------------------------------------------------------------------------
// One delivery, one effect

#[tokio::test]
async fn a_replayed_delivery_acts_once() {
    let app = spawn_app().await;
    let body = app.command_body(DEV, &format!("request {WEB} 1h ticket#1 replay"));
    let headers = app.signed(&body);
    let first = app.post("/slack/commands", FORM, &body, &headers).await;
    let again = app.post("/slack/commands", FORM, &body, &headers).await;
    assert_eq!((first.status, again.status), (200, 200));
    assert!(first.text().contains("AR-1"));
    assert_eq!(again.body, "");
    app.settle().await;
    assert_eq!(app.fake.posts_in(APPROVALS).len(), 1);
    assert!(app
        .built
        .store
        .get(RequestId::parse("AR-2").unwrap())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_retried_event_acts_once() {
    let app = spawn_app().await;
    let (channel, ts) = app.approved_request().await;

    let body = app.event_body("Ev0RETRIED", DEV, &channel, &ts, "extend 30m");
    let answer = app.post_event(&body).await;
    assert_eq!(answer.status, 200);
    // Slack retries with a new signature and X-Slack-Retry-Num.
    let mut headers = app.signed(&body);
    headers.push(("x-slack-retry-num", "1".into()));
    headers.push(("x-slack-retry-reason", "http_timeout".into()));
    let answer = app
        .post("/slack/events", "application/json", &body, &headers)
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(app.events(1, "extended").await, 1);
    assert_eq!(app.fake.ephemerals(DEV).len(), 1);
}

#[tokio::test]
async fn a_double_click_approves_once() {
    let app = spawn_app().await;
    let (channel, ts) = app.requested().await;
    let (a, b) = tokio::join!(
        app.click(LEAD1, "approve AR-1", &channel, &ts),
        app.click(LEAD1, "approve AR-1", &channel, &ts)
    );
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(app.events(1, "approved").await, 1);
    let said = app.fake.ephemerals(LEAD1);
    assert_eq!(said.len(), 2, "{said:?}");
    assert_eq!(
        said.iter().filter(|s| s.starts_with(":warning:")).count(),
        1,
        "{said:?}"
    );
    app.settle().await;
    assert_eq!(
        app.fake
            .ok_calls("chat.postMessage")
            .iter()
            .filter(
                |c| c.thread_ts().as_deref() == Some(ts.as_str()) && c.text().contains("approved")
            )
            .count(),
        1
    );
}

#[tokio::test]
async fn two_approvers_racing_make_one_transition() {
    let app = spawn_app().await;
    let (channel, ts) = app.requested().await;
    let (a, b) = tokio::join!(
        app.click(LEAD1, "approve AR-1", &channel, &ts),
        app.click(LEAD2, "approve AR-1", &channel, &ts)
    );
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(app.events(1, "approved").await, 1);
    let refused = [LEAD1, LEAD2]
        .iter()
        .flat_map(|u| app.fake.ephemerals(u))
        .filter(|s| s.starts_with(":warning:"))
        .count();
    assert_eq!(refused, 1);
    app.settle().await;
    assert_eq!(app.state(1).await, RequestState::Active);
    app.assert_delivered_in_order().await;
}

#[tokio::test]
async fn the_requester_cannot_approve_their_own_request() {
    let app = spawn_app().await;
    // LEAD1 is an approver, but not of their own request.
    app.command(LEAD1, &format!("request {WEB} 1h ticket#1 x"))
        .await;
    app.settle().await;
    let (channel, ts) = app.card(1).await;
    app.click(LEAD1, "approve AR-1", &channel, &ts).await;
    let said = app.fake.ephemerals(LEAD1);
    assert_eq!(said.len(), 1);
    assert!(said[0].starts_with(":warning:"), "{said:?}");
    assert_eq!(app.state(1).await, RequestState::Pending);
    assert_eq!(app.events(1, "approved").await, 0);
}

// ---------------------------------------------------------------------------
// Delivery

#[tokio::test]
async fn a_429_storm_loses_nothing_and_keeps_each_thread_in_order() {
    let app = spawn_app().await;
    for n in 0..3 {
        app.command(DEV, &format!("request {WEB} 1h ticket#{n} storm {n}"))
            .await;
    }
    app.settle().await;
    // Every call the outbox makes is refused with 429 for a while. (Answers
    // to the person who acted are not in the outbox and are left alone here.)
    let outbox_calls = ["chat.postMessage", "chat.update", "conversations.open"];
    app.fake.rate_limit_next_of(&outbox_calls, 25, 1);
    for n in 1..=3u64 {
        let (channel, ts) = app.card(n).await;
        app.click(LEAD1, &format!("approve AR-{n}"), &channel, &ts)
            .await;
    }
    // Provisioning runs; its notices wait behind the 429s.
    app.settle().await;
    app.fake.rate_limit_next_of(&outbox_calls, 40, 2);
    for n in 1..=3u64 {
        let (channel, ts) = app.card(n).await;
        app.say_in_thread(DEV, &channel, &ts, "done").await;
    }
    app.deliver_everything().await;
    assert!(
        app.fake
            .calls()
            .iter()
            .filter(|c| c.error.as_deref() == Some("ratelimited"))
            .count()
            >= 40
    );
    for n in 1..=3 {
        assert_eq!(app.state(n).await, RequestState::Completed);
    }
    app.assert_delivered_in_order().await;
}

#[tokio::test]
async fn a_restart_between_commit_and_delivery_delivers_once() {
    let app = spawn_app().await;
    let answer = app
        .command(DEV, &format!("request {WEB} 1h ticket#1 restart"))
        .await;
    assert!(answer.text().contains("AR-1"));
    // Stopped after the commit, before anything was delivered.
    assert!(app.fake.posts_in(APPROVALS).is_empty());
    let app = app.restart().await;
    app.settle().await;
    app.settle().await;
    assert_eq!(app.fake.posts_in(APPROVALS).len(), 1);
    assert!(app.fake.ok_calls("chat.update").is_empty());
    app.assert_delivered_in_order().await;
}

#[tokio::test]
async fn an_event_redelivered_after_a_restart_acts_once() {
    let app = spawn_app().await;
    let (channel, ts) = app.approved_request().await;
    let body = app.event_body("Ev0RESTART", DEV, &channel, &ts, "extend 1h");
    app.post_event(&body).await;
    assert_eq!(app.events(1, "extended").await, 1);
    // Passport restarts (its memory of deliveries is gone), and Slack, which
    // saw no answer in time, delivers the same event again.
    let app = app.restart().await;
    let answer = app.post_event(&body).await;
    assert_eq!(answer.status, 200);
    assert_eq!(app.events(1, "extended").await, 1);
}

impl TestApp {
    /// Stops the server, closes the database and starts again on the same file.
    async fn restart(mut self) -> TestApp {
        let dir = self._dir.take();
        let ttl = self.ttl.clone();
        let (fake, db, clock) = self.stop().await;
        let mut app = start_with(
            config(&db, &fake),
            &fake,
            &db,
            clock,
            Duration::from_millis(2500),
            ttl,
        )
        .await;
        app._dir = dir;
        app
    }
}

#[tokio::test]
async fn a_signed_command_or_click_replayed_after_a_restart_is_refused() {
    let app = spawn_app().await;
    let command = app.command_body(DEV, &format!("request {WEB} 1h ticket#1 x"));
    let command_headers = app.signed(&command);
    let answer = app
        .post("/slack/commands", FORM, &command, &command_headers)
        .await;
    assert!(answer.text().contains("AR-1"), "{}", answer.body);
    app.settle().await;
    // Restart on the same database file, then replay the same signed body.
    let app = app.restart().await;
    let answer = app
        .post("/slack/commands", FORM, &command, &command_headers)
        .await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.body.is_empty(),
        "a replay gets no answer: {}",
        answer.body
    );
    app.settle().await;
    let second = RequestId::parse("AR-2").unwrap();
    assert!(
        app.built.store.get(second).await.unwrap().is_none(),
        "the replayed command made a second request"
    );
    // A click likewise: sent once, restart, replayed.
    let (channel, ts) = app.card(1).await;
    let click = app.click_body(LEAD1, "deny AR-1 @request", &channel, &ts, None);
    let click_headers = app.signed(&click);
    app.post("/slack/interactions", FORM, &click, &click_headers)
        .await;
    assert_eq!(app.state(1).await, RequestState::Denied);
    let answers = app.fake.ephemerals(LEAD1).len();
    let app = app.restart().await;
    app.post("/slack/interactions", FORM, &click, &click_headers)
        .await;
    app.settle().await;
    assert_eq!(app.events(1, "denied").await, 1);
    assert_eq!(
        app.fake.ephemerals(LEAD1).len(),
        answers,
        "the replayed click was answered, so it was looked at"
    );
}

/// A new request records its replay key in the transaction that creates it;
/// one refused before any commit has the key recorded before it is answered,
/// so its replay gets no answer either.
#[tokio::test]
async fn a_refused_request_replayed_after_a_restart_gets_no_answer() {
    let app = spawn_app_configured(|c| c.policy.rules[0].max_duration = Some("4h".into())).await;
    let command = app.command_body(DEV, &format!("request {PROD} 5h ticket#1 x"));
    let headers = app.signed(&command);
    let answer = app.post("/slack/commands", FORM, &command, &headers).await;
    assert!(answer.text().contains("at most 4h"), "{}", answer.body);
    let app = app.restart().await;
    let answer = app.post("/slack/commands", FORM, &command, &headers).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.body.is_empty(),
        "a replay gets no answer: {}",
        answer.body
    );
}

#[tokio::test]
async fn the_expiry_warning_offers_extend_buttons_that_work_from_the_direct_message() {
    let app = spawn_app().await;
    app.approved_request().await;
    app.clock.advance(Span::from_minutes(46));
    app.settle().await;
    let warning = app
        .fake
        .posts_in(&format!("D{DEV}"))
        .into_iter()
        .rev()
        .find(|c| !c.button_values().is_empty())
        .expect("a warning with buttons");
    let values = warning.button_values();
    let extend = values
        .iter()
        .find(|v| v.starts_with("extend AR-1"))
        .unwrap()
        .clone();
    app.click(
        DEV,
        &extend,
        &format!("D{DEV}"),
        warning.ts.as_deref().unwrap(),
    )
    .await;
    assert_eq!(app.events(1, "extended").await, 1);
    assert!(
        contains(&app.fake.ephemerals(DEV), "extended"),
        "{:?}",
        app.fake.ephemerals(DEV)
    );
}

// ---------------------------------------------------------------------------
// Answers outside the outbox share Slack's breaker

impl TestApp {
    /// Calls that carry an answer or a notice to people.
    fn answer_calls(&self) -> usize {
        self.fake
            .calls()
            .iter()
            .filter(|c| {
                matches!(
                    c.method.as_str(),
                    "chat.postEphemeral" | "chat.postMessage" | "conversations.open"
                )
            })
            .count()
    }

    /// Direct messages to `user` waiting in the outbox (or delivered from it).
    fn queued_dms(&self, user: &str) -> Vec<String> {
        self.outbox()
            .into_iter()
            .filter_map(|(_, notice, _)| match notice {
                Notice::Direct { user: to, text, .. } if to.as_str() == user => Some(text),
                _ => None,
            })
            .collect()
    }

    /// Waits (bounded) until `user` has `n` answers queued in the outbox.
    async fn until_queued(&self, user: &str, n: usize) {
        for _ in 0..1000 {
            if self.queued_dms(user).len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} answers never queued: {:?}", self.queued_dms(user));
    }
}

#[tokio::test]
async fn answers_stop_calling_a_failing_slack_once_its_breaker_is_open_and_arrive_later() {
    let app = spawn_app().await;
    app.command(DEV, &format!("request {WEB} 1h ticket#1 x"))
        .await;
    app.deliver_everything().await;
    let (channel, ts) = app.card(1).await;
    app.fake.set_down(true);
    app.fake.clear();

    // The first answer is tried until Slack's breaker opens, not five times;
    // the direct message it falls back to is not even tried, but queued.
    app.click(OTHER, "list", &channel, &ts).await;
    app.until_queued(OTHER, 1).await;
    assert_eq!(app.answer_calls(), 3, "{:?}", app.fake.calls());

    // While the breaker is open, answers do not call Slack at all, and
    // neither does the dispatcher: one breaker for Slack, whoever calls.
    for n in 2..=4 {
        app.click(OTHER, "list", &channel, &ts).await;
        app.until_queued(OTHER, n).await;
    }
    app.settle().await;
    assert_eq!(app.answer_calls(), 3, "{:?}", app.fake.calls());

    // After the backoff one answer probes; Slack still fails, so the breaker
    // opens again for longer and the answer is queued.
    app.clock.advance(Span::from_secs(1));
    app.click(OTHER, "list", &channel, &ts).await;
    app.until_queued(OTHER, 5).await;
    assert_eq!(app.answer_calls(), 4, "{:?}", app.fake.calls());

    // Slack is back: after the backoff the probe succeeds and answers go at
    // once again, ephemeral as usual.
    app.fake.set_down(false);
    app.clock.advance(Span::from_secs(2));
    app.click(OTHER, "list", &channel, &ts).await;
    app.click(OTHER, "list", &channel, &ts).await;
    assert_eq!(
        app.fake.ephemerals(OTHER).len(),
        2,
        "{:?}",
        app.fake.calls()
    );
    assert_eq!(app.queued_dms(OTHER).len(), 5);

    // The queued answers reach the person as direct messages.
    app.deliver_everything().await;
    assert_eq!(app.fake.dms(OTHER).len(), 5, "{:?}", app.fake.dms(OTHER));
}

// ---------------------------------------------------------------------------
// Socket Mode

#[tokio::test]
async fn socket_mode_acknowledges_first_and_reconnects() {
    let (fake, _dir, db) = fresh_slack().await;
    let mut config = config(&db, &fake);
    if let Some(slack) = config.slack.as_mut() {
        slack.mode = "socket".into();
        slack.signing_secret = None;
        slack.app_token = Some(Secret::from("xapp-1-A0PASSPORT-test"));
    }
    let settings = config.validate().unwrap();
    let clock = clock_at_now();
    let slack = settings.slack.as_ref().unwrap();
    let built = startup::slack_app(&settings, slack, slack_options(&clock, &settings))
        .await
        .unwrap();
    let socket = built.socket.expect("socket mode").spawn();
    eventually("a Socket Mode connection", || {
        fake.socket_connections() == 1
    })
    .await;

    // A slash command: acknowledged, then answered through response_url.
    fake.socket_send(&json!({
        "envelope_id": "env-1",
        "type": "slash_commands",
        "accepts_response_payload": true,
        "payload": {
            "token": "t", "team_id": "T0TEAM", "api_app_id": "A0PASSPORT", "channel_id": "C0GENERAL", "user_id": DEV,
            "command": "/passport", "text": format!("request {WEB} 1h ticket#3 over the socket"),
            "response_url": format!("{}/response/77", fake.base), "trigger_id": "77.1.a"
        }
    }));
    eventually("the answer", || !fake.responses().is_empty()).await;
    let calls = fake.calls();
    let ack = calls
        .iter()
        .position(|c| c.method == "socket.ack" && c.params["envelope_id"] == "env-1")
        .expect("the envelope was acknowledged");
    let answer = calls
        .iter()
        .position(|c| c.method == "response_url")
        .unwrap();
    assert!(ack < answer, "acknowledged before it was handled");
    assert!(
        fake.responses()[0].contains("AR-1"),
        "{:?}",
        fake.responses()
    );
    // The same command from another workspace is acknowledged and does nothing.
    fake.socket_send(&json!({
        "envelope_id": "env-foreign",
        "type": "slash_commands",
        "accepts_response_payload": true,
        "payload": {
            "token": "t", "team_id": "T0OTHERTEAM", "api_app_id": "A0PASSPORT", "channel_id": "C0GENERAL", "user_id": DEV,
            "command": "/passport", "text": format!("request {WEB} 1h ticket#9 from elsewhere"),
            "response_url": format!("{}/response/99", fake.base), "trigger_id": "99.1.z"
        }
    }));
    eventually("the acknowledgement of env-foreign", || {
        fake.calls()
            .iter()
            .any(|c| c.method == "socket.ack" && c.params["envelope_id"] == "env-foreign")
    })
    .await;
    built.app.scheduler.settle().await.unwrap();
    let card = fake.posts_in(APPROVALS)[0].clone();

    // Slack drops the connection; Passport connects again and goes on.
    fake.socket_close();
    eventually("a second connection", || fake.socket_connections() == 2).await;
    let payload = json!({
        "type": "block_actions",
        "team": { "id": "T0TEAM" },
        "api_app_id": "A0PASSPORT",
        "user": { "id": LEAD1, "username": "lead1" },
        "trigger_id": "78.1.b",
        "container": { "type": "message", "message_ts": card.ts, "channel_id": APPROVALS },
        "channel": { "id": APPROVALS },
        "message": { "ts": card.ts, "text": "…" },
        "actions": [{ "type": "button", "action_id": "passport:0", "value": "approve AR-1" }]
    });
    fake.socket_send(&json!({ "envelope_id": "env-2", "type": "interactive", "payload": payload }));
    eventually("the approval", || !fake.ephemerals(LEAD1).is_empty()).await;
    assert!(
        fake.ephemerals(LEAD1)[0].contains("AR-1 approved"),
        "{:?}",
        fake.ephemerals(LEAD1)
    );
    // The fake records the acknowledgement when its socket task reads it,
    // which under load can come after the reply it has already recorded.
    eventually("the acknowledgement of env-2", || {
        fake.calls()
            .iter()
            .any(|c| c.method == "socket.ack" && c.params["envelope_id"] == "env-2")
    })
    .await;
    assert!(fake
        .calls()
        .iter()
        .any(|c| c.method == "socket.ack" && c.params["envelope_id"] == "env-2"));

    // A form submitted with a bad field: the errors travel in the acknowledgement.
    let form = json!({
        "type": "view_submission",
        "team": { "id": "T0TEAM" },
        "api_app_id": "A0PASSPORT",
        "user": { "id": DEV, "username": "dev1" },
        "trigger_id": "79.1.c",
        "view": {
            "id": "V0FAKE", "type": "modal", "callback_id": "passport_request",
            "private_metadata": "C0GENERAL", "blocks": [],
            "state": { "values": {
                "instances": { "value": { "type": "plain_text_input", "value": "web-1" } },
                "ticket": { "value": { "type": "plain_text_input", "value": "ticket#4" } },
                "reason": { "value": { "type": "plain_text_input", "value": "r" } }
            } }
        }
    });
    fake.socket_send(&json!({ "envelope_id": "env-3", "type": "interactive", "payload": form }));
    let acked = || {
        fake.calls()
            .into_iter()
            .find(|c| c.method == "socket.ack" && c.params["envelope_id"] == "env-3")
    };
    eventually("the form's acknowledgement", || acked().is_some()).await;
    let ack = acked().unwrap();
    assert_eq!(
        ack.params["payload"]["response_action"], "errors",
        "{:?}",
        ack.params
    );
    assert!(ack.params["payload"]["errors"]["instances"].is_string());
    // Only Passport's own workspace was answered and made a request.
    assert_eq!(fake.responses().len(), 1, "{:?}", fake.responses());
    assert_eq!(fake.posts_in(APPROVALS).len(), 1);
    socket.abort();
    built.app.store.close().await;
}

#[test]
fn the_app_manifest_points_at_the_endpoints_with_the_least_scopes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/slack-app.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    for needed in [
        "command: /passport",
        "/slack/commands",
        "/slack/events",
        "/slack/interactions",
        "message.channels",
    ] {
        assert!(text.contains(needed), "the manifest lacks {needed}");
    }
    let scopes: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.trim().starts_with("bot:"))
        .skip(1)
        .take_while(|l| l.trim().starts_with("- "))
        .map(|l| l.trim().trim_start_matches("- "))
        .collect();
    assert_eq!(
        scopes,
        [
            "commands",
            "chat:write",
            "im:write",
            "users:read",
            "usergroups:read",
            "channels:history",
            "groups:history",
            // `passport doctor`: whether the bot is in each channel it posts to.
            "channels:read",
            "groups:read"
        ]
    );
}

// ---------------------------------------------------------------------------
// The request form

impl TestApp {
    /// Submits the request form as `user` with these field values.
    async fn submit_form(&self, user: &str, fields: &[(&str, &str)]) -> Answer {
        let values: serde_json::Map<String, Value> = fields
            .iter()
            .map(|(block, value)| {
                (
                    (*block).to_owned(),
                    json!({ "value": { "type": "plain_text_input", "value": value } }),
                )
            })
            .collect();
        let payload = json!({
            "type": "view_submission",
            "team": { "id": "T0TEAM", "domain": "example" },
            "user": { "id": user, "username": "from-payload", "team_id": "T0TEAM" },
            "api_app_id": "A0PASSPORT",
            "trigger_id": format!("{}.9.form", unique()),
            "view": {
                "id": "V0FAKE", "type": "modal", "callback_id": "passport_request",
                "private_metadata": "C0GENERAL", "blocks": [],
                "state": { "values": values }
            }
        });
        let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
        let headers = self.signed(&body);
        self.post("/slack/interactions", FORM, &body, &headers)
            .await
    }
}

#[tokio::test]
async fn request_with_no_arguments_opens_a_form_that_requests_access() {
    let app = spawn_app().await;
    let answer = app.command(DEV, "request").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, ""));
    let opened = app.fake.ok_calls("views.open");
    assert_eq!(opened.len(), 1);
    let view = opened[0].params["view"].to_string();
    for block in ["instances", "duration", "ticket", "reason"] {
        assert!(
            view.contains(&format!("\"block_id\":\"{block}\"")),
            "{view}"
        );
    }

    // Each bad field is named beside the field, and nothing is requested.
    let answer = app
        .submit_form(
            DEV,
            &[
                ("instances", "web-1"),
                ("duration", "2hrs"),
                ("ticket", "soon"),
            ],
        )
        .await;
    assert_eq!(answer.status, 200);
    let errors = &answer.json()["errors"];
    assert_eq!(answer.json()["response_action"], "errors");
    assert!(errors["instances"]
        .as_str()
        .unwrap()
        .contains("i-0123456789abcdef0"));
    assert!(errors["duration"].as_str().unwrap().contains("2hrs"));
    assert!(errors["ticket"].as_str().unwrap().contains("soon"));
    assert!(app.no_request_yet().await);

    let answer = app
        .submit_form(
            DEV,
            &[
                ("instances", WEB),
                ("duration", "2h"),
                ("ticket", "INC-42"),
                ("reason", "rotate\nlogs"),
            ],
        )
        .await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, ""),
        "the form closes"
    );
    assert!(
        contains(&app.fake.ephemerals(DEV), "AR-1"),
        "{:?}",
        app.fake.ephemerals(DEV)
    );
    let id = RequestId::parse("AR-1").unwrap();
    let req = app.built.store.get(id).await.unwrap().unwrap();
    assert_eq!(req.state, RequestState::Pending);
    assert_eq!(req.ticket.to_string(), "INC-42");
}

// ---------------------------------------------------------------------------
// Configuration

/// A secret as read from a file, line ending included.
fn secret_from_file(text: &str) -> Secret {
    serde_json::from_value(json!(text)).unwrap()
}

#[tokio::test]
async fn secrets_ending_in_a_newline_still_sign_and_authorize() {
    let app = spawn_app_configured(|c| {
        let slack = c.slack.as_mut().unwrap();
        slack.signing_secret = Some(secret_from_file(&format!("{SECRET}\n")));
        slack.bot_token = Some(secret_from_file(&format!("{BOT_TOKEN}\r\n")));
    })
    .await;
    // Signed with the secret itself, as Slack signs.
    let answer = app
        .command(DEV, &format!("request {WEB} 1h ticket#1 x"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.text().contains("AR-1"), "{}", answer.body);
    // The card went out with the bot token.
    app.settle().await;
    assert_eq!(app.fake.posts_in(APPROVALS).len(), 1);
}

// ---------------------------------------------------------------------------
// What Slack sends besides commands

#[tokio::test]
async fn the_certificate_check_is_answered_with_an_empty_200() {
    let app = spawn_app().await;
    let body = "ssl_check=1&token=legacy-verification-token";
    // Slack may send it unsigned.
    let unsigned = app.post("/slack/commands", FORM, body, &[]).await;
    assert_eq!((unsigned.status, unsigned.body.as_str()), (200, ""));
    let signed = app
        .post("/slack/commands", FORM, body, &app.signed(body))
        .await;
    assert_eq!((signed.status, signed.body.as_str()), (200, ""));
    // Anything else unsigned is still refused.
    let command = app.command_body(DEV, &format!("request {WEB} 1h ticket#1 x"));
    let forged = app.post("/slack/commands", FORM, &command, &[]).await;
    assert_eq!(forged.status, 401);
    app.settle().await;
    assert!(app.fake.posts_in(APPROVALS).is_empty());
}

#[tokio::test]
async fn a_thread_reply_also_sent_to_the_channel_is_a_thread_reply() {
    let app = spawn_app().await;
    let (channel, ts) = app.approved_request().await;

    let mut body: Value = serde_json::from_str(&app.event_body(
        &format!("Ev{}", unique()),
        DEV,
        &channel,
        &ts,
        "extend 30m",
    ))
    .unwrap();
    body["event"]["subtype"] = json!("thread_broadcast");
    body["event"]["root"] = json!({ "ts": ts, "text": "…", "user": "U0PASSPORT" });
    let body = body.to_string();
    let answer = app.post_event(&body).await;
    assert_eq!(answer.status, 200);
    assert_eq!(app.events(1, "extended").await, 1);
    assert!(
        contains(&app.fake.ephemerals(DEV), "AR-1 extended by 30m"),
        "{:?}",
        app.fake.ephemerals(DEV)
    );
}

// ---------------------------------------------------------------------------
// Windows passwords: the direct message is deleted after its ttl

impl TestApp {
    /// Requests access to the Windows instance and approves it; the grant sends
    /// the password by direct message. Answers the (channel, ts) of that message.
    async fn windows_grant(&self) -> (String, String) {
        let answer = self
            .command(DEV, &format!("request {WIN} 1h ticket#1 rdp"))
            .await;
        assert!(answer.text().contains("AR-1"), "{}", answer.body);
        self.settle().await;
        let (channel, ts) = self.card(1).await;
        self.click(LEAD1, "approve AR-1", &channel, &ts).await;
        self.deliver_everything().await;
        assert_eq!(self.state(1).await, RequestState::Active);
        let sent = self.passwords.sent();
        assert_eq!(sent.len(), 1);
        let dm = self
            .fake
            .dm_calls(DEV)
            .into_iter()
            .find(|c| c.text().contains(&sent[0]))
            .expect("the password went to the requester's direct messages");
        assert!(
            dm.text().contains("deleted in"),
            "the message says it will be deleted: {}",
            dm.text()
        );
        let at = (dm.channel.unwrap(), dm.ts.unwrap());
        assert!(self.fake.message_exists(&at.0, &at.1));
        at
    }

    /// When the password message waiting for deletion is due.
    async fn deletion_due(&self) -> passport::domain::time::Timestamp {
        password_deletion_due(&self.built).await
    }

    /// The notes about deleted password messages in AR-1's thread.
    async fn deletion_notes(&self) -> Vec<String> {
        let (_, ts) = self.card(1).await;
        self.fake
            .thread(&ts)
            .into_iter()
            .filter(|t| t.starts_with("🧹 the password message"))
            .collect()
    }
}

#[tokio::test]
async fn the_windows_password_message_is_deleted_after_ten_minutes_and_not_before() {
    let app = spawn_app().await;
    let sent_at = app.clock.now();
    let (channel, ts) = app.windows_grant().await;
    let due = app.deletion_due().await;
    assert_eq!(due.since(sent_at), Span::from_minutes(10));

    app.clock.set(due.minus(Span::from_secs(1)));
    app.deliver_everything().await;
    assert!(app.fake.deleted().is_empty(), "deleted too early");
    assert!(app.fake.message_exists(&channel, &ts));

    app.clock.set(due.plus(Span::from_secs(1)));
    app.deliver_everything().await;
    assert_eq!(app.fake.deleted(), vec![(channel.clone(), ts.clone())]);
    assert!(!app.fake.message_exists(&channel, &ts));
    let deletes = app.fake.ok_calls("chat.delete");
    assert_eq!(deletes[0].params["channel"], json!(channel));
    assert_eq!(deletes[0].params["ts"], json!(ts));
    assert_eq!(
        app.deletion_notes().await,
        vec![format!(
            "🧹 the password message for `pp-dev1-1` on {WIN} was deleted from dev1's direct messages after 10m; grant again for a new password"
        )]
    );
    assert_eq!(app.events(1, "password_message_deleted").await, 1);

    // Once only.
    app.clock.advance(Span::from_hours(1));
    app.deliver_everything().await;
    assert_eq!(app.fake.ok_calls("chat.delete").len(), 1);
    assert_eq!(app.deletion_notes().await.len(), 1);
    app.assert_delivered_in_order().await;

    // The database knows where the message was, never what it said.
    let password = app.passwords.sent()[0].clone();
    let db = app.db.clone();
    app.stop().await;
    for file in [db.clone(), db.with_extension("db-wal")] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "{} holds the password",
            file.display()
        );
    }
}

#[tokio::test]
async fn a_restart_before_the_due_time_still_deletes_the_password_message() {
    let app = spawn_app().await;
    let (channel, ts) = app.windows_grant().await;
    app.clock.advance(Span::from_minutes(5));
    app.settle().await;
    let app = app.restart().await;
    app.settle().await;
    assert!(app.fake.deleted().is_empty());

    app.clock.advance(Span::from_minutes(6));
    app.deliver_everything().await;
    assert_eq!(app.fake.deleted(), vec![(channel, ts)]);
    assert_eq!(app.deletion_notes().await.len(), 1);
    assert_eq!(app.events(1, "password_message_deleted").await, 1);
}

#[tokio::test]
async fn a_configured_password_message_ttl_is_honoured() {
    let app = spawn_app_with_extras(Extras {
        ttl: Some("3m".into()),
        ..Extras::default()
    })
    .await;
    let sent_at = app.clock.now();
    let (channel, ts) = app.windows_grant().await;
    assert!(app
        .fake
        .dms(DEV)
        .iter()
        .any(|t| t.contains("deleted in 3m")));
    let due = app.deletion_due().await;
    assert_eq!(due.since(sent_at), Span::from_minutes(3));

    app.clock.set(due.minus(Span::from_secs(1)));
    app.deliver_everything().await;
    assert!(app.fake.deleted().is_empty());
    app.clock.set(due.plus(Span::from_secs(1)));
    app.deliver_everything().await;
    assert_eq!(app.fake.deleted(), vec![(channel, ts)]);
    assert!(app.deletion_notes().await[0].contains("after 3m"));
}

/// A password message whose instance this Passport cannot read (a newer
/// release's form during a rolling upgrade, or a damaged row) leaves the chat
/// on time all the same, and the others with it.
#[tokio::test]
async fn a_password_message_that_cannot_be_read_fully_is_deleted_all_the_same() {
    let app = spawn_app().await;
    let (channel, ts) = app.windows_grant().await;
    rusqlite::Connection::open(&app.db)
        .unwrap()
        .execute(
            "UPDATE password_messages SET instance = 'vm/from-a-newer-release'",
            [],
        )
        .unwrap();
    app.clock.advance(Span::from_minutes(10));
    app.deliver_everything().await;
    assert_eq!(app.fake.deleted(), vec![(channel, ts)]);
    let (_, card) = app.card(1).await;
    let notes: Vec<String> = app
        .fake
        .thread(&card)
        .into_iter()
        .filter(|t| t.starts_with("🧹"))
        .collect();
    assert_eq!(
        notes,
        ["🧹 a password message was deleted from dev1's direct messages after 10m; grant again for a new password"]
    );
    assert_eq!(app.events(1, "password_message_deleted").await, 1);
    app.assert_delivered_in_order().await;

    // Nor does a request this release cannot read keep the next one from
    // leaving on time.
    app.command(DEV, "extend AR-1 30m").await;
    app.deliver_everything().await;
    assert_eq!(app.passwords.sent().len(), 2);
    let db = rusqlite::Connection::open(&app.db).unwrap();
    db.execute(
        "UPDATE requests SET body = '{\"id\":\"AR-1\",\"state\":\"from_a_newer_release\"}'",
        [],
    )
    .unwrap();
    app.clock.advance(Span::from_minutes(10));
    app.deliver_everything().await;
    assert_eq!(app.fake.deleted().len(), 2);
    assert_eq!(app.events(1, "password_message_deleted").await, 2);
    let left: i64 = db
        .query_row("SELECT COUNT(*) FROM password_messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_rate_limited_deletion_is_retried_and_a_message_already_gone_counts_as_deleted() {
    let app = spawn_app().await;
    let (channel, ts) = app.windows_grant().await;
    app.fake.rate_limit_next_of(&["chat.delete"], 2, 30);
    app.clock.advance(Span::from_minutes(10));
    app.settle().await;
    assert!(app.fake.deleted().is_empty(), "rate limited");
    assert!(app.deletion_notes().await.is_empty());
    // Retried after Retry-After, never dropped.
    app.clock.advance(Span::from_secs(31));
    app.settle().await;
    assert!(app.fake.deleted().is_empty(), "rate limited again");
    app.clock.advance(Span::from_secs(31));
    app.deliver_everything().await;
    assert_eq!(app.fake.deleted(), vec![(channel, ts)]);
    assert_eq!(app.deletion_notes().await.len(), 1);

    // The requester deleted the next one themselves: Slack answers
    // message_not_found, and that is as good as deleted.
    app.command(DEV, "extend AR-1 30m").await;
    app.deliver_everything().await;
    let (channel, ts) = {
        let last = app.fake.dm_calls(DEV).into_iter().rev().find(|c| {
            c.text()
                .contains(app.passwords.sent().last().unwrap().as_str())
        });
        let last = last.expect("a new password after the extension");
        (last.channel.unwrap(), last.ts.unwrap())
    };
    assert_eq!(app.passwords.sent().len(), 2);
    app.fake.remove_message(&channel, &ts);
    app.clock.advance(Span::from_minutes(11));
    app.deliver_everything().await;
    let refused: Vec<_> = app
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.method == "chat.delete" && c.error.as_deref() == Some("message_not_found"))
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(app.deletion_notes().await.len(), 2);
    assert_eq!(app.events(1, "password_message_deleted").await, 2);
}

// ---------------------------------------------------------------------------
// AWS refusing a grant

/// EC2 as the fleet describes it; SSM is the real SDK against [`FakeAws`].
struct Fleet(Vec<Ec2Instance>);

#[async_trait::async_trait]
impl Ec2Api for Fleet {
    async fn describe_instances(&self, ids: &[InstanceId]) -> Result<Vec<Ec2Instance>, ApiError> {
        Ok(self
            .0
            .iter()
            .filter(|i| ids.contains(&i.id))
            .cloned()
            .collect())
    }
}

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkVm1fN7nG8kqzZ1d8dQkPZ5QF1sW7bqkUu1YpJt0dx dev1@laptop";

#[tokio::test]
async fn an_aws_refusal_shows_people_its_code_and_error_id_and_the_log_its_detail() {
    let logs = Logs::capture();
    startup::install_crypto_provider();
    // SSM holds this build's documents, and refuses SendCommand as AWS does,
    // naming the account, the bot's role and an encoded authorization message.
    let documents: BTreeMap<String, String> =
        passport::adapters::aws::documents::passport_documents(&Default::default())
            .into_iter()
            .map(|d| (d.name, d.content))
            .collect();
    let aws = FakeAws::start(move |call| {
        let asked: serde_json::Value = serde_json::from_str(&call.body).unwrap_or_default();
        match (call.operation().as_str(), asked["Name"].as_str()) {
            ("GetDocument", Some(name)) if documents.contains_key(name) => fake_aws::Answer {
                status: 200,
                content_type: "application/x-amz-json-1.1",
                body: serde_json::json!({
                    "Name": name,
                    "DocumentVersion": "1",
                    "Status": "Active",
                    "DocumentFormat": "YAML",
                    "DocumentType": "Command",
                    "Content": documents[name],
                })
                .to_string(),
            },
            _ => fake_aws::Answer::json_error(400, "AccessDeniedException", fake_aws::REFUSAL),
        }
    })
    .await;
    let sdk = aws.sdk().await;
    let fleet = Fleet(vec![Ec2Instance {
        id: InstanceId::parse(WEB).unwrap(),
        state: "running".into(),
        platform: Platform::Linux,
        tags: BTreeMap::from([
            ("Name".to_owned(), "web-1".to_owned()),
            ("env".to_owned(), "staging".to_owned()),
            ("passport:access".to_owned(), "allowed".to_owned()),
        ]),
        private_ips: vec!["10.0.1.15".into()],
    }]);
    let provisioner = AwsProvisioner::new(
        Arc::new(fleet),
        Arc::new(SdkSsm::new(&sdk)),
        Arc::new(MemoryCommandStore::new()),
        aws.settings(),
        "eu-west-1",
    );
    // As `serve` does before it provisions anything.
    provisioner.check_documents().await.unwrap();
    let app = spawn_app_with_extras(Extras {
        provisioner: Some(Arc::new(provisioner)),
        ..Extras::default()
    })
    .await;

    let answer = app.command(DEV, &format!("key set {SSH_KEY}")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = app
        .command(DEV, &format!("request {WEB} 1h ticket#7 disk full"))
        .await;
    assert!(answer.text().contains("AR-1"), "{}", answer.body);
    app.settle().await;
    let (channel, ts) = app.card(1).await;
    app.click(LEAD1, "approve AR-1 @request", &channel, &ts)
        .await;
    app.deliver_everything().await;
    assert!(
        aws.calls().iter().any(|c| c.operation() == "SendCommand"),
        "{:?}",
        aws.calls()
    );

    // People see the error code and the error id, nothing of AWS's message.
    let id = ApiError::service("AccessDeniedException", fake_aws::REFUSAL).id();
    let reason = format!("AccessDeniedException (error {id})");
    let thread = app.fake.thread(&ts);
    assert!(contains(&thread, &reason), "{thread:?}");
    let dms = app.fake.dms(DEV);
    assert!(contains(&dms, &reason), "{dms:?}");
    // Everything Passport sent to Slack: cards, threads, direct messages,
    // audit lines and answers to the people who clicked or typed.
    let shown: Vec<String> = app
        .fake
        .calls()
        .iter()
        .map(|c| c.params.to_string())
        .collect();
    assert!(!shown.is_empty());
    for text in &shown {
        for leak in fake_aws::LEAKS {
            assert!(!text.contains(leak), "{leak} shown in {text}");
        }
    }
    // The Logbook keeps no more than people see.
    let details: Vec<String> = app
        .built
        .store
        .audit_events(None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.details)
        .collect();
    assert!(details.iter().any(|d| d.contains(&id)), "{details:?}");
    for d in &details {
        for leak in fake_aws::LEAKS {
            assert!(!d.contains(leak), "{leak} in the Logbook: {d}");
        }
    }

    // The log has the whole detail under the same id.
    let log = logs.text();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("error_id={id}")))
        .unwrap_or_else(|| panic!("no log line with error_id={id}:\n{log}"));
    assert!(
        line.contains("Encoded authorization failure message: 4Zbq8nQkXyPtW2vRr7Lk")
            && line.contains("arn:aws:sts::123456789012:assumed-role/passport-bot"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------
// The dry run

#[tokio::test]
async fn a_dry_run_marks_every_card_thread_reply_and_direct_message_dry_run() {
    // A chat platform, no [aws] and `provisioner = "dry-run"`, labelled as
    // `serve` decides it from the configuration.
    let app = spawn_app_on(
        |config| assert!(config.aws.is_none()),
        Duration::from_millis(2500),
        Extras {
            labelled: true,
            ..Extras::default()
        },
    )
    .await;

    // A whole lifecycle: request, approval, extension, warning, completion.
    app.command(DEV, &format!("request {WEB} 1h ticket#5 disk full"))
        .await;
    app.settle().await;
    let (channel, ts) = app.card(1).await;
    app.click(LEAD1, "approve AR-1 @request", &channel, &ts)
        .await;
    app.settle().await;
    assert_eq!(app.state(1).await, RequestState::Active);
    app.say_in_thread(DEV, &channel, &ts, "extend 30m").await;
    app.settle().await;
    app.clock.advance(Span::from_minutes(80));
    app.settle().await;
    app.say_in_thread(DEV, &channel, &ts, "done").await;
    app.deliver_everything().await;
    assert_eq!(app.state(1).await, RequestState::Completed);

    let marked = |text: &str| text.starts_with("🧪 DRY RUN");
    // The card, as posted and as every edit left it.
    let mut cards = app.fake.posts_in(APPROVALS);
    cards.retain(|c| c.thread_ts().is_none());
    assert_eq!(cards.len(), 1);
    cards.extend(app.fake.updates(&ts));
    assert!(cards.len() > 2, "{cards:?}");
    for card in &cards {
        let blocks = card.params["blocks"].to_string();
        assert!(blocks.contains("🧪 DRY RUN"), "{blocks}");
    }
    // Every thread reply, direct message and audit line.
    let thread = app.fake.thread(&ts);
    assert!(
        contains(&thread, "approved") && contains(&thread, "extended"),
        "{thread:?}"
    );
    let dms = app.fake.dms(DEV);
    assert!(dms.len() >= 3, "{dms:?}");
    let audit: Vec<String> = app.fake.posts_in(AUDIT).iter().map(|c| c.text()).collect();
    assert!(!audit.is_empty());
    for text in thread.iter().chain(&dms).chain(&audit) {
        assert!(marked(text), "not marked DRY RUN: {text}");
    }
}

// ---------------------------------------------------------------------------
// Start-up warnings

#[tokio::test]
async fn the_start_warns_only_about_user_groups_that_approve_or_administer() {
    let app = spawn_app_configured(|c| {
        let slack = c.slack.as_mut().unwrap();
        slack.usergroups.insert("bosses".into(), "S0BOSSES".into());
        slack.usergroups.insert("oncall".into(), "S0ONCALL".into());
        slack.usergroups.insert("unused".into(), "S0UNUSED".into());
        c.policy.admins = vec!["group:bosses".into()];
        c.policy.requesters = vec!["group:oncall".into()];
    })
    .await;
    // What the start warned about is what it logged at WARN. Requesting is
    // no power over access; an unused group none at all.
    assert_warned(
        &app.warnings,
        &[
            "Passport group sre-leads (approves for rule \"prod\") is the Slack user group S0SRELEADS".into(),
            "Passport group bosses (is admin) is the Slack user group S0BOSSES".into(),
        ],
        &["S0ONCALL", "S0UNUSED"],
    );
}

// ---------------------------------------------------------------------------
// A slow Slack does not hold acknowledgements

/// `users.info` accepts the connection and says nothing: the command is still
/// answered within the acknowledgement deadline (with the payload's name as
/// handle), only one look-up goes on as a probe while Slack is slow, and the
/// handle is learnt once Slack answers again.
#[tokio::test]
async fn a_stalled_users_info_holds_no_acknowledgement_and_is_asked_once() {
    let app = spawn_app_configured(|c| {
        c.slack.as_mut().unwrap().call_timeout = "30s".into();
    })
    .await;
    app.fake.stall_method("users.info");
    let users_info = |fake: &FakeSlack| {
        fake.calls()
            .iter()
            .filter(|c| c.method == "users.info")
            .map(|c| c.error.clone())
            .collect::<Vec<_>>()
    };

    let answer = app
        .command(DEV, &format!("request {WEB} 2h ticket#1 slow directory"))
        .await;
    assert!(answer.text().contains("AR-1"), "{}", answer.body);
    let answer = app
        .command(OTHER, &format!("request {WEB} 1h ticket#2 slow directory"))
        .await;
    assert!(answer.text().contains("AR-2"), "{}", answer.body);
    assert_eq!(
        users_info(&app.fake),
        [Some("held".to_owned())],
        "while the first look-up is out, nobody else asks"
    );
    let handle = |n: u64| {
        let store = app.built.store.clone();
        async move {
            store
                .get(RequestId::parse(&format!("AR-{n}")).unwrap())
                .await
                .unwrap()
                .unwrap()
                .requester
                .handle
        }
    };
    assert_eq!(handle(1).await, "from-payload");
    assert_eq!(handle(2).await, "from-payload");

    // Slack answers again: the probe's answer is cached, and look-ups resume
    // (at once for the one the probe learnt, as soon as the probe is done
    // for anyone else).
    app.fake.release_method("users.info");
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = 2;
    for (who, name) in [(DEV, "dev1"), (OTHER, "other")] {
        loop {
            n += 1;
            app.command(who, &format!("request {WEB} 1h ticket#{n} slow directory"))
                .await;
            if handle(n).await == name {
                break;
            }
            assert!(tokio::time::Instant::now() < until, "{name} never learnt");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Answers where the bot cannot post

/// Slack refuses an ephemeral answer in a channel the bot cannot post in
/// (`channel_not_found`) or to someone outside it (`user_not_in_channel`):
/// the person is answered by direct message instead, and nothing is lost.
#[tokio::test]
async fn a_refused_ephemeral_answer_goes_as_a_direct_message() {
    let app = spawn_app().await;
    app.command(DEV, &format!("request {WEB} 2h ticket#123 disk full"))
        .await;
    app.settle().await;
    let (channel, ts) = app.card(1).await;

    app.fake
        .fail_in_channel("chat.postEphemeral", &channel, "channel_not_found");
    let answer = app.click(LEAD1, "approve AR-1", &channel, &ts).await;
    assert_eq!(answer.status, 200);
    assert!(app.fake.ephemerals(LEAD1).is_empty());
    let dms = app.fake.dms(LEAD1);
    assert!(contains(&dms, "AR-1 approved"), "{dms:?}");
    let refused: Vec<_> = app
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.method == "chat.postEphemeral" && !c.ok())
        .collect();
    assert_eq!(refused.len(), 1, "refused once, not retried: {refused:?}");
    app.settle().await;
    assert_eq!(app.state(1).await, RequestState::Active);

    // The same for a command typed in the card's thread.
    app.fake
        .fail_in_channel("chat.postEphemeral", &channel, "user_not_in_channel");
    let answer = app.say_in_thread(DEV, &channel, &ts, "extend 1h").await;
    assert_eq!(answer.status, 200);
    assert!(app.fake.ephemerals(DEV).is_empty());
    let dms = app.fake.dms(DEV);
    assert!(contains(&dms, "AR-1 extended by 1h"), "{dms:?}");
}

// ---------------------------------------------------------------------------
// PostgreSQL: `serve`'s wiring on a shared database

/// [`config`] on the PostgreSQL database `url` instead of a SQLite file.
fn pg_config(url: &str, fake: &FakeSlack) -> Config {
    let mut c = config(Path::new("unused.db"), fake);
    c.store.path = None;
    c.store.url = Some(passport::config::DatabaseUrl::new(url));
    c
}

/// The Slack application on PostgreSQL at `url`, on `clock`: one replica.
async fn start_pg(url: &str, fake: &FakeSlack, clock: ManualClock) -> TestApp {
    start_on(
        pg_config(url, fake),
        fake,
        Path::new("unused.db"),
        clock,
        Duration::from_millis(2500),
        Extras::default(),
    )
    .await
}

/// No text in `texts` twice: every notice arrived once.
fn each_once(what: &str, texts: &[String]) {
    let mut seen = std::collections::HashSet::new();
    for t in texts {
        assert!(seen.insert(t), "{what}: {t:?} arrived twice in {texts:#?}");
    }
}

/// One pass over many lanes on PostgreSQL finishes: the outbox is read
/// again while lanes are under way, and a lane recording its delivery holds
/// outbox rows the read must wait for, so the lanes keep going meanwhile.
#[tokio::test]
async fn on_postgres_a_delivery_pass_over_many_lanes_finishes() {
    startup::install_crypto_provider();
    let fake = FakeSlack::start().await;
    fresh_fake_people(&fake);
    let url = postgres::fresh_database().await;
    let mut config = pg_config(&url, &fake);
    config.requests.max_pending_per_requester = 0;
    config.requests.commands_per_minute = 0;
    let app = start_on(
        config,
        &fake,
        Path::new("unused.db"),
        clock_at_now(),
        Duration::from_millis(2500),
        Extras::default(),
    )
    .await;
    const REQUESTS: u64 = 40;
    for n in 1..=REQUESTS {
        let answer = app
            .command(DEV, &format!("request {WEB} 1h ticket#{n} x"))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    tokio::time::timeout(Duration::from_secs(60), app.deliver_everything())
        .await
        .expect("the delivery pass finishes");
    assert_eq!(fake.posts_in(APPROVALS).len(), REQUESTS as usize);
}

#[tokio::test]
async fn on_postgres_a_request_is_approved_provisioned_expired_and_its_logbook_verifies() {
    startup::install_crypto_provider();
    let fake = FakeSlack::start().await;
    fresh_fake_people(&fake);
    let url = postgres::fresh_database().await;
    let app = start_pg(&url, &fake, clock_at_now()).await;
    assert!(matches!(app.built.database, startup::Database::Postgres(_)));
    // The first scrape installs the metrics recorder, as `serve` does at start.
    assert_eq!(app.get("/metrics").await.0, 200);

    let answer = app
        .command(DEV, &format!("request {WEB} 1h ticket#1 x"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    app.settle().await;
    let (channel, ts) = app.card(1).await;
    app.click(LEAD1, "approve AR-1", &channel, &ts).await;
    app.settle().await;
    assert_eq!(app.state(1).await, RequestState::Active);
    assert_eq!(app.events(1, "granted").await, 1);

    // The scheduler expires it at the injected time, and removes the user.
    app.clock.advance(Span::from_minutes(61));
    app.deliver_everything().await;
    assert_eq!(app.state(1).await, RequestState::Expired);
    assert_eq!(app.events(1, "removed").await, 1);
    assert!(
        contains(&app.fake.dms(DEV), "has ended"),
        "{:?}",
        app.fake.dms(DEV)
    );
    each_once("thread", &app.fake.thread(&ts));
    each_once("direct messages", &app.fake.dms(DEV));

    match app.built.store.verify_logbook().await.unwrap() {
        passport::app::ports::Verification::Intact { events, .. } => assert!(events >= 6),
        broken => panic!("{broken:?}"),
    }
    // Readiness asks PostgreSQL for a write.
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    // Each phase of the store's groups is timed.
    let (status, metrics) = app.get("/metrics").await;
    assert_eq!(status, 200);
    for phase in ["lock_and_read", "writes", "commit"] {
        assert!(
            group_phases(&metrics, "postgres", phase, "ok") > 0,
            "{phase}: {metrics}"
        );
    }
    let failed_before = group_phases(&metrics, "postgres", "writes", "failed");
    assert!(
        metrics.contains("passport_store_group_size_count{store=\"postgres\"}"),
        "{metrics}"
    );
    // A phase that fails is timed too, as failed.
    let mut side = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION away() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'requests are away'; END $$; \
         CREATE TRIGGER away BEFORE INSERT ON requests FOR EACH ROW EXECUTE FUNCTION away();",
    )
    .execute(&mut side)
    .await
    .unwrap();
    let answer = app
        .command(DEV, &format!("request {WEB} 1h ticket#2 y"))
        .await;
    assert!(answer.text().contains("could not save"), "{}", answer.body);
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        group_phases(&metrics, "postgres", "writes", "failed") > failed_before,
        "{metrics}"
    );
    // The alert rules' metrics are exported on PostgreSQL too.
    assert_exported(&metrics, &alerted_metrics());
    app.stop().await;
}

#[tokio::test]
async fn two_replicas_on_postgres_one_approves_the_other_expires_after_the_first_dies() {
    startup::install_crypto_provider();
    let fake = FakeSlack::start().await;
    fresh_fake_people(&fake);
    let url = postgres::fresh_database().await;
    let clock = clock_at_now();
    let first = start_pg(&url, &fake, clock.clone()).await;
    let second = start_pg(&url, &fake, clock.clone()).await;

    // The first replica takes the scheduler lease; the second stands by.
    first.settle().await;
    let answer = first
        .command(DEV, &format!("request {WEB} 1h ticket#1 x"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    second.settle().await;
    assert!(
        first.fake.posts_in(APPROVALS).is_empty(),
        "only the lease holder delivers"
    );
    first.settle().await;
    let (channel, ts) = first.card(1).await;

    // Approved through the second replica: the lease holder provisions.
    second.click(LEAD1, "approve AR-1", &channel, &ts).await;
    second.settle().await;
    assert_eq!(
        first.events(1, "granted").await,
        0,
        "the standby runs no job"
    );
    first.settle().await;
    assert_eq!(second.state(1).await, RequestState::Active);
    assert_eq!(first.events(1, "granted").await, 1);

    // The first replica dies without releasing its lease. Past the lease
    // time and the access's end, the second takes over and expires it.
    first.server.abort();
    let holder = first.built.scheduler.holder().to_owned();
    drop(first);
    clock.advance(Span::from_minutes(61));
    second.deliver_everything().await;
    assert_eq!(second.state(1).await, RequestState::Expired);
    assert_eq!(second.events(1, "granted").await, 1, "granted once");
    assert_eq!(second.events(1, "removed").await, 1, "removed once");
    assert_ne!(
        second
            .built
            .store
            .lease_holder(passport::scheduler::LEASE_NAME)
            .await
            .unwrap()
            .as_deref(),
        Some(holder.as_str())
    );

    // Every notice arrived once, whichever replica queued or delivered it.
    each_once("thread", &second.fake.thread(&ts));
    each_once("direct messages", &second.fake.dms(DEV));
    each_once(
        "audit channel",
        &second
            .fake
            .posts_in(AUDIT)
            .iter()
            .map(|c| c.text())
            .collect::<Vec<_>>(),
    );
    assert_eq!(second.fake.posts_in(APPROVALS).len(), 1, "one card");
    assert!(contains(&second.fake.dms(DEV), "has ended"));
    let counts = second.built.store.outbox_counts().await.unwrap();
    assert_eq!((counts.pending, counts.dead), (0, 0));
    assert!(matches!(
        second.built.store.verify_logbook().await.unwrap(),
        passport::app::ports::Verification::Intact { .. }
    ));
    second.stop().await;
}
