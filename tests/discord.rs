//! Discord, end to end over real HTTP: the real application on port 0 with a
//! fresh SQLite file, interactions signed with an Ed25519 key exactly as
//! Discord signs them, and a fake Discord REST API on 127.0.0.1 that records
//! what Passport posts. Time is the engine's hand-moved clock; nothing sleeps
//! to wait for a timer. The gateway shares the handlers; its mapping from
//! serenity's types is tested directly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake_discord;
mod windows_passwords;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};

use common::chat_app::{
    assert_warned, card_of, chat_config, clock_at_now, contains, deliver_everything, events_of,
    eventually, fresh_db, password_deletion_due, run_doctor, set_password_message_ttl,
    slow_request_creation, state_of, unique, Lanes, Ran, PROD, WEB, WIN,
};
use common::http_client::{self, Answer, HttpClient};
use fake_discord::{FakeDiscord, APPLICATION_ID, BOT_TOKEN, GUILD_ID};
use passport::adapters::clock::ManualClock;
use passport::adapters::discord::gateway::from_gateway;
use passport::adapters::discord::inbound::UserPayload;
use passport::adapters::discord::DiscordConfig;
use passport::app::ports::Clock;
use passport::config::{Config, RuleConfig, Secret};
use passport::domain::request::RequestState;
use passport::domain::time::Span;
use passport::domain::values::RequestId;
use passport::startup::{self, ChatOptions};
use windows_passwords::WindowsPasswords;

const APPROVALS: &str = "1500000000000000001";
const AUDIT: &str = "1500000000000000002";
const GENERAL: &str = "1500000000000000003";
const APPROVER_ROLE: &str = "1600000000000000001";
const SRE_ROLE: &str = "1600000000000000002";

const DEV: &str = "1700000000000000001";
const LEAD1: &str = "1700000000000000002";
const LEAD2: &str = "1700000000000000003";
const SRE1: &str = "1700000000000000004";
const SRE2: &str = "1700000000000000005";
const OTHER: &str = "1700000000000000009";

const SEED: [u8; 32] = [7; 32];

struct TestApp {
    base: String,
    fake: FakeDiscord,
    built: startup::DiscordApp,
    /// The provisioner: the dry run, with Windows passwords sent through the courier.
    passwords: Arc<WindowsPasswords>,
    clock: ManualClock,
    db: PathBuf,
    server: tokio::task::JoinHandle<()>,
    http: HttpClient,
    _dir: Option<tempfile::TempDir>,
}

impl Answer {
    /// The text of an immediate answer (type 4).
    fn text(&self) -> String {
        let v = self.json();
        let content = v["data"]["content"].as_str().unwrap_or_default();
        let embed = v["data"]["embeds"][0]["description"]
            .as_str()
            .unwrap_or_default();
        format!("{content}{embed}")
    }
}

fn handle_of(user: &str) -> &'static str {
    match user {
        DEV => "dev1",
        LEAD1 => "lead1",
        LEAD2 => "lead2",
        SRE1 => "sre1",
        SRE2 => "sre2",
        _ => "other",
    }
}

fn roles_of(user: &str) -> Vec<&'static str> {
    match user {
        LEAD1 | LEAD2 => vec![APPROVER_ROLE],
        SRE1 | SRE2 => vec![SRE_ROLE],
        _ => vec![],
    }
}

/// approvers: the role APPROVER_ROLE (LEAD1, LEAD2); sre-leads: the role
/// SRE_ROLE (SRE1, SRE2); env=prod needs 2 sre-leads approvals, and again
/// for extensions past 1h.
fn config(db: &Path, fake: &FakeDiscord, mode: &str) -> Config {
    let mut c = chat_config(db);
    c.groups = BTreeMap::from([("admins".into(), vec!["1700000000000000100".into()])]);
    c.policy.requesters = vec!["*".into()];
    c.policy.rules = vec![RuleConfig {
        name: "prod".into(),
        tags: BTreeMap::from([("env".into(), "prod".into())]),
        approvers: vec!["group:sre-leads".into()],
        approvals: 2,
        extension_approval_over: Some("1h".into()),
        ..RuleConfig::default()
    }];
    c.policy.default.approvers = vec!["group:approvers".into()];
    c.discord = Some(DiscordConfig {
        mode: mode.into(),
        bot_token: Some(Secret::from(BOT_TOKEN)),
        application_id: APPLICATION_ID.into(),
        public_key: hex::encode(SigningKey::from_bytes(&SEED).verifying_key().to_bytes()),
        guild_id: GUILD_ID.into(),
        approvals_channel: APPROVALS.into(),
        audit_channel: AUDIT.into(),
        api_url: fake.api_url(),
        roles: BTreeMap::from([
            ("approvers".into(), APPROVER_ROLE.into()),
            ("sre-leads".into(), SRE_ROLE.into()),
        ]),
        ..DiscordConfig::default()
    });
    c
}

async fn spawn_app() -> TestApp {
    spawn_app_with(Duration::from_millis(2500)).await
}

async fn spawn_app_with(deadline: Duration) -> TestApp {
    spawn_app_on(|_| {}, deadline, None, false).await
}

/// Like [`spawn_app`], with the configuration changed by `edit` first.
async fn spawn_app_configured(edit: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on(edit, Duration::from_millis(2500), None, false).await
}

/// Starts the application on a fresh database: see [`start_on`].
async fn spawn_app_on(
    edit: impl FnOnce(&mut Config),
    deadline: Duration,
    ttl: Option<&str>,
    labelled: bool,
) -> TestApp {
    let (fake, dir, db) = fresh_discord().await;
    let mut config = config(&db, &fake, "http");
    edit(&mut config);
    let mut app = start_on(config, &fake, &db, clock_at_now(), deadline, ttl, labelled).await;
    app._dir = Some(dir);
    app
}

/// A fake Discord with Passport's channels and members, and a fresh database.
async fn fresh_discord() -> (FakeDiscord, tempfile::TempDir, PathBuf) {
    startup::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    for c in [APPROVALS, AUDIT, GENERAL] {
        fake.add_channel(c);
    }
    for u in [DEV, LEAD1, LEAD2, SRE1, SRE2, OTHER] {
        fake.add_member(u, handle_of(u), &roles_of(u));
    }
    let (dir, db) = fresh_db();
    (fake, dir, db)
}

/// Starts the application on an existing database (a restart).
async fn start(fake: &FakeDiscord, db: &Path, clock: ManualClock, deadline: Duration) -> TestApp {
    let config = config(db, fake, "http");
    start_on(config, fake, db, clock, deadline, None, false).await
}

/// Starts the application with `config`, and `aws.password_message_ttl` set
/// to `ttl` if given; `labelled` marks cards and messages DRY RUN as `serve`
/// decides it from the configuration, rather than never.
async fn start_on(
    mut config: Config,
    fake: &FakeDiscord,
    db: &Path,
    clock: ManualClock,
    deadline: Duration,
    ttl: Option<&str>,
    labelled: bool,
) -> TestApp {
    if let Some(ttl) = ttl {
        set_password_message_ttl(&mut config, ttl);
    }
    let settings = config.validate().unwrap();
    let discord = settings.discord.clone().unwrap();
    let passwords = Arc::new(WindowsPasswords::new(startup::logged_dry_run(&settings)));
    let built = startup::discord_app(
        &settings,
        &discord,
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
    assert!(built.gateway.is_none(), "HTTP mode starts no gateway");
    let (base, server) = http_client::serve(built.router.clone()).await;
    TestApp {
        base,
        fake: fake.clone(),
        built,
        passwords,
        clock,
        db: db.to_path_buf(),
        server,
        http: http_client::client(),
        _dir: None,
    }
}

fn member(user: &str) -> Value {
    json!({
        "user": {
            "id": user, "username": handle_of(user), "discriminator": "0",
            "global_name": handle_of(user).to_uppercase(), "avatar": null,
        },
        "roles": roles_of(user),
        "joined_at": "2024-01-01T00:00:00.000000+00:00",
        "deaf": false, "mute": false, "flags": 0, "pending": false,
        "permissions": "2248473465835073", "nick": null, "avatar": null,
    })
}

fn option(name: &str, value: &str) -> Value {
    json!({ "type": 3, "name": name, "value": value })
}

/// A `/passport <sub>` interaction in `channel` (with `parent` when it is a thread).
fn command_interaction(
    user: &str,
    channel: &str,
    parent: Option<&str>,
    sub: &str,
    options: &[(&str, &str)],
) -> Value {
    let n = unique();
    let mut ch = json!({ "id": channel, "type": 0, "guild_id": GUILD_ID, "name": "access" });
    if let Some(p) = parent {
        ch["type"] = json!(11);
        ch["parent_id"] = json!(p);
    }
    json!({
        "type": 2,
        "id": (1_800_000_000_000_000_000u64 + n).to_string(),
        "application_id": APPLICATION_ID,
        "token": format!("interaction-token-{n}"),
        "version": 1,
        "guild_id": GUILD_ID,
        "channel_id": channel,
        "channel": ch,
        "member": member(user),
        "app_permissions": "2248473465835073",
        "locale": "en-US",
        "guild_locale": "en-US",
        "entitlements": [],
        "attachment_size_limit": 10485760,
        "authorizing_integration_owners": { "0": GUILD_ID },
        "context": 0,
        "data": {
            "id": "1900000000000000001",
            "name": "passport",
            "type": 1,
            "guild_id": GUILD_ID,
            "options": [{
                "type": 1,
                "name": sub,
                "options": options.iter().map(|(k, v)| option(k, v)).collect::<Vec<_>>(),
            }],
        },
    })
}

/// A click on the button `custom_id` of `message` in `channel`.
fn click_interaction(user: &str, channel: &str, message: &str, custom_id: &str) -> Value {
    let n = unique();
    json!({
        "type": 3,
        "id": (1_800_000_000_000_000_000u64 + n).to_string(),
        "application_id": APPLICATION_ID,
        "token": format!("interaction-token-{n}"),
        "version": 1,
        "guild_id": GUILD_ID,
        "channel_id": channel,
        "channel": { "id": channel, "type": 0, "guild_id": GUILD_ID, "name": "access" },
        "member": member(user),
        "app_permissions": "2248473465835073",
        "locale": "en-US",
        "guild_locale": "en-US",
        "entitlements": [],
        "attachment_size_limit": 10485760,
        "message": {
            "id": message, "channel_id": channel, "type": 0, "content": "", "embeds": [],
            "components": [], "author": { "id": fake_discord::BOT_USER_ID, "username": "Passport", "discriminator": "0000", "avatar": null, "bot": true },
            "attachments": [], "mentions": [], "mention_roles": [], "pinned": false,
            "mention_everyone": false, "tts": false, "timestamp": "2026-11-25T10:00:00.000000+00:00",
            "edited_timestamp": null, "flags": 0,
        },
        "data": { "custom_id": custom_id, "component_type": 2 },
    })
}

impl TestApp {
    fn now_secs(&self) -> i64 {
        self.clock.now().as_millis() / 1000
    }

    async fn post_raw(&self, body: &str, headers: &[(&str, String)]) -> Answer {
        let url = format!("{}/discord/interactions", self.base);
        http_client::post(&self.http, &url, "application/json", body, headers).await
    }

    /// Signs `body` as Discord does, `skew` seconds before the application's clock.
    fn signed_at(&self, body: &str, skew: i64) -> Vec<(&'static str, String)> {
        let ts = (self.now_secs() - skew).to_string();
        let key = SigningKey::from_bytes(&SEED);
        let mut message = ts.as_bytes().to_vec();
        message.extend_from_slice(body.as_bytes());
        vec![
            (
                "x-signature-ed25519",
                hex::encode(key.sign(&message).to_bytes()),
            ),
            ("x-signature-timestamp", ts),
        ]
    }

    async fn send(&self, interaction: &Value) -> Answer {
        let body = interaction.to_string();
        let headers = self.signed_at(&body, 0);
        self.post_raw(&body, &headers).await
    }

    async fn command(&self, user: &str, sub: &str, options: &[(&str, &str)]) -> Answer {
        self.send(&command_interaction(user, GENERAL, None, sub, options))
            .await
    }

    /// `/passport <sub>` typed in the thread of the card `card`.
    async fn command_in_thread(
        &self,
        user: &str,
        card: &str,
        sub: &str,
        options: &[(&str, &str)],
    ) -> Answer {
        self.send(&command_interaction(
            user,
            card,
            Some(APPROVALS),
            sub,
            options,
        ))
        .await
    }

    async fn click(&self, user: &str, channel: &str, message: &str, command: &str) -> Answer {
        self.send(&click_interaction(
            user,
            channel,
            message,
            &format!("passport:{command}"),
        ))
        .await
    }

    async fn settle(&self) {
        self.built.app.scheduler.settle().await.unwrap();
    }

    /// A request of db-prod-1 by DEV, its card delivered: the card's
    /// channel and message.
    async fn prod_requested(&self) -> (String, String) {
        let options = [
            ("instances", PROD),
            ("ticket", "ticket#9"),
            ("reason", "migrate"),
        ];
        self.command(DEV, "request", &options).await;
        self.settle().await;
        self.card(1).await
    }

    /// Delivers until the outbox is empty, moving the clock past each Retry-After.
    async fn deliver_everything(&self) {
        deliver_everything(&self.built.app, &self.clock).await;
    }

    /// DEV asks for WEB in GENERAL, the first request: its card, once delivered.
    async fn first_request(&self) -> (String, String) {
        self.first_request_by(DEV).await
    }

    /// `who` asks for WEB in GENERAL, the first request: its card, once delivered.
    async fn first_request_by(&self, who: &str) -> (String, String) {
        self.command(
            who,
            "request",
            &[("instances", WEB), ("ticket", "ticket#1"), ("reason", "r")],
        )
        .await;
        self.settle().await;
        self.card(1).await
    }

    /// The card of `request`: (channel, message id) of its post.
    async fn card(&self, request: u64) -> (String, String) {
        card_of(&self.built.app, "discord", request).await
    }

    async fn state(&self, request: u64) -> RequestState {
        state_of(&self.built.app, request).await
    }

    async fn events(&self, request: u64, action: &str) -> usize {
        events_of(&self.built.app, request, action).await
    }

    async fn stop(self) -> (FakeDiscord, PathBuf, ManualClock, Option<tempfile::TempDir>) {
        self.server.abort();
        self.built.app.store.close().await;
        (self.fake, self.db, self.clock, self._dir)
    }

    /// Stops the server, closes the database and starts again on the same file.
    async fn restart(self) -> TestApp {
        let (fake, db, clock, dir) = self.stop().await;
        let mut app = start(&fake, &db, clock, Duration::from_millis(2500)).await;
        app._dir = dir;
        app
    }

    /// Checks that Discord got every notice exactly once, in order within
    /// each lane: each request's thread, each person's direct messages, the
    /// audit channel.
    async fn assert_delivered_in_order(&self) {
        // As Passport sends it: escaped but for its own code spans.
        let shown = |t: &str| {
            let t = passport::adapters::discord::render::escape_text(t);
            if t.chars().count() <= 2000 {
                t
            } else {
                t.lines().next().unwrap_or_default().to_owned()
            }
        };
        let lanes = Lanes::delivered(&self.built.app, &self.db, shown).await;
        for (request, expected) in &lanes.threads {
            let (_, message) = self.card(*request).await;
            assert_eq!(
                &self.fake.thread(&message),
                expected,
                "thread of AR-{request}"
            );
        }
        let audit = self
            .fake
            .posts_in(AUDIT)
            .iter()
            .map(|c| c.content())
            .collect();
        lanes.assert_dms_and_audit(|user| self.fake.dms(user), audit);
    }
}

fn is_ephemeral(answer: &Answer) -> bool {
    answer.json()["type"] == 4 && answer.json()["data"]["flags"] == 64
}

// ---------------------------------------------------------------------------
// The whole lifecycle

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_goes_from_slash_command_to_final_card() {
    let app = spawn_app().await;

    // Discord checks the endpoint with a PING.
    let ping = app.send(&json!({ "type": 1, "id": "1", "token": "t", "application_id": APPLICATION_ID, "version": 1 })).await;
    assert_eq!((ping.status, ping.json()), (200, json!({ "type": 1 })));

    // Request.
    let answer = app
        .command(
            DEV,
            "request",
            &[
                ("instances", WEB),
                ("duration", "2h"),
                ("ticket", "ticket#123"),
                ("reason", "disk **full** @everyone"),
            ],
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(is_ephemeral(&answer), "{}", answer.body);
    assert!(answer.text().contains("AR-1"), "{}", answer.body);
    app.settle().await;

    // The card: in the approvals channel, notifying the approver role only,
    // with Approve and Deny buttons that carry the command text.
    let cards = app.fake.posts_in(APPROVALS);
    assert_eq!(cards.len(), 1, "{cards:?}");
    let card = &cards[0];
    let (channel, message) = app.card(1).await;
    assert_eq!(channel, APPROVALS);
    assert_eq!(card.message.as_deref(), Some(message.as_str()));
    // Bound to the request's own approval, never to a later extension.
    assert_eq!(
        card.custom_ids(),
        [
            "passport:approve AR-1 @request",
            "passport:deny AR-1 @request"
        ]
    );
    assert!(
        card.content().contains(&format!("<@&{APPROVER_ROLE}>")),
        "{}",
        card.content()
    );
    assert_eq!(card.body["allowed_mentions"]["parse"], json!([]));
    assert_eq!(
        card.body["allowed_mentions"]["roles"],
        json!([APPROVER_ROLE])
    );
    let text = card.embed_text();
    assert!(
        text.contains("web-1") && text.contains("env staging"),
        "{text}"
    );
    assert!(
        text.contains("(https://tickets.example.com/browse/123)"),
        "{text}"
    );
    assert!(
        text.contains("\\*\\*full\\*\\* \\@everyone"),
        "people's text is escaped: {text}"
    );
    // The lifecycle thread hangs off the card.
    assert!(app.fake.has_thread(&message));

    // Someone without the role cannot approve; an approver clicks Approve.
    let answer = app.click(OTHER, &channel, &message, "approve AR-1").await;
    assert!(answer.text().starts_with("⚠️"), "{}", answer.body);
    let answer = app.click(LEAD1, &channel, &message, "approve AR-1").await;
    assert_eq!(answer.status, 200);
    assert!(is_ephemeral(&answer));
    assert!(answer.text().contains("AR-1 approved"), "{}", answer.body);
    app.settle().await;
    assert_eq!(app.state(1).await, RequestState::Active);

    // The card was edited in place; its last version has no buttons and says who approved.
    let edits = app.fake.edits(&message);
    assert!(!edits.is_empty());
    let last = edits.last().unwrap();
    assert!(
        last.custom_ids().is_empty(),
        "no stale buttons: {:?}",
        last.body
    );
    assert!(last.embed_text().contains("lead1"), "{:?}", last.body);
    assert!(last.body["allowed_mentions"]["roles"] == json!([]));
    // The thread carries the lifecycle, and the requester was told directly.
    let thread = app.fake.thread(&message);
    assert!(contains(&thread, "approved"), "{thread:?}");
    assert!(!app.fake.dms(DEV).is_empty());

    // The requester extends from the thread (no AR-n needed there); someone else may not.
    let answer = app
        .command_in_thread(DEV, &message, "extend", &[("duration", "1h")])
        .await;
    assert!(
        answer.text().contains("AR-1 extended by 1h"),
        "{}",
        answer.body
    );
    let answer = app
        .command_in_thread(OTHER, &message, "extend", &[("duration", "1h")])
        .await;
    assert!(answer.text().starts_with("⚠️"), "{}", answer.body);
    assert_eq!(app.events(1, "extended").await, 1);
    app.settle().await;

    // A warning in the thread has Extend and Complete buttons; Complete finishes.
    app.clock.advance(Span::from_minutes(170));
    app.settle().await;
    let warning = app
        .fake
        .posts_in(&message)
        .into_iter()
        .rev()
        .find(|c| !c.custom_ids().is_empty())
        .expect("a warning with buttons");
    let ids = warning.custom_ids();
    assert!(
        ids.contains(&"passport:extend AR-1 1h".to_owned()),
        "{ids:?}"
    );
    let answer = app
        .click(
            DEV,
            &message,
            warning.message.as_deref().unwrap(),
            "complete AR-1",
        )
        .await;
    assert!(answer.text().contains("AR-1"), "{}", answer.body);
    app.settle().await;
    assert_eq!(app.state(1).await, RequestState::Completed);
    let last = app.fake.edits(&message).last().cloned().unwrap();
    assert!(last.embed_text().contains("Completed"), "{:?}", last.body);
    assert!(last.custom_ids().is_empty());

    // Every Logbook event reached the audit channel, and every notice its lane, in order.
    assert!(!app.fake.posts_in(AUDIT).is_empty());
    app.assert_delivered_in_order().await;
    // Nothing Passport sent broke Discord's limits.
    let refused: Vec<_> = app.fake.calls().into_iter().filter(|c| !c.ok()).collect();
    assert!(refused.is_empty(), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prod_request_needs_two_members_of_the_role() {
    let app = spawn_app().await;
    let (channel, message) = app.prod_requested().await;
    let card = &app.fake.posts_in(APPROVALS)[0];
    assert!(
        card.content().contains(&format!("<@&{SRE_ROLE}>")),
        "{}",
        card.content()
    );

    // LEAD1 approves other things, not prod.
    let answer = app.click(LEAD1, &channel, &message, "approve AR-1").await;
    assert!(answer.text().starts_with("⚠️"), "{}", answer.body);
    app.click(SRE1, &channel, &message, "approve AR-1").await;
    assert_eq!(app.state(1).await, RequestState::Pending);
    app.click(SRE2, &channel, &message, "approve AR-1").await;
    assert_ne!(app.state(1).await, RequestState::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_under_an_old_prompt_is_refused_in_discord() {
    let app = spawn_app().await;
    let (channel, message) = app.prod_requested().await;
    let approve = "approve AR-1 @request";
    app.click(SRE1, &channel, &message, approve).await;
    app.click(SRE2, &channel, &message, approve).await;
    app.settle().await;
    assert_eq!(app.state(1).await, RequestState::Active);
    // How SRE1 qualified: the prod rule's group, through its Discord role.
    let id = RequestId::parse("AR-1").unwrap();
    let events = app
        .built
        .app
        .store
        .audit_events(Some(id), None)
        .await
        .unwrap();
    let recorded = events
        .iter()
        .find(|e| e.action == "approval_recorded")
        .unwrap();
    let details: Value = serde_json::from_str(&recorded.details).unwrap();
    assert_eq!(
        details["qualified"],
        json!([{
            "rule": "prod",
            "via": "group:sre-leads",
            "source": { "from": "discord_role", "id": SRE_ROLE }
        }]),
        "{details}"
    );

    app.command_in_thread(DEV, &message, "extend", &[("duration", "2h")])
        .await;
    app.settle().await;
    let prompt = app
        .fake
        .posts_in(&message)
        .into_iter()
        .find(|c| c.custom_ids().iter().any(|i| i.contains("@extension-1")))
        .expect("the extension prompt");
    assert_eq!(
        prompt.custom_ids(),
        [
            "passport:approve AR-1 @extension-1",
            "passport:deny AR-1 @extension-1"
        ]
    );
    let prompt_message = prompt.message.clone().unwrap();
    let answer = app
        .click(SRE1, &message, &prompt_message, "deny AR-1 @extension-1")
        .await;
    assert!(answer.text().contains("denied"), "{}", answer.body);
    app.command_in_thread(DEV, &message, "extend", &[("duration", "2h")])
        .await;
    app.settle().await;
    // The first prompt's Approve, and the card's, decide nothing now.
    let answer = app
        .click(SRE2, &message, &prompt_message, "approve AR-1 @extension-1")
        .await;
    assert!(
        answer.text().contains("this prompt is out of date")
            && answer
                .text()
                .contains("the current one is the extension by 2h"),
        "{}",
        answer.body
    );
    let answer = app.click(SRE2, &channel, &message, approve).await;
    assert!(
        answer
            .text()
            .contains("this prompt is out of date: it was for the approval of AR-1 itself"),
        "{}",
        answer.body
    );
    let pending = app
        .built
        .app
        .store
        .get(id)
        .await
        .unwrap()
        .unwrap()
        .pending_extension
        .unwrap();
    assert_eq!(pending.seq, 2);
    assert!(pending.approvals.is_empty());
}

// ---------------------------------------------------------------------------
// Refusals

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_badly_signed_and_stale_interactions_are_refused() {
    let app = spawn_app().await;
    let body = command_interaction(
        DEV,
        GENERAL,
        None,
        "request",
        &[("instances", WEB), ("ticket", "ticket#1")],
    )
    .to_string();

    let none = app.post_raw(&body, &[]).await;
    assert_eq!(none.status, 401);
    let mut headers = app.signed_at(&body, 0);
    // Another first byte: one that was "00" already (1 run in 256) would
    // leave the signature valid.
    let other = if headers[0].1.starts_with("00") {
        "ff"
    } else {
        "00"
    };
    headers[0].1.replace_range(0..2, other);
    assert_eq!(app.post_raw(&body, &headers).await.status, 401);
    let other_body = body.replace("ticket#1", "ticket#2");
    let headers = app.signed_at(&body, 0);
    assert_eq!(app.post_raw(&other_body, &headers).await.status, 401);
    let stale = app.signed_at(&body, 301);
    assert_eq!(app.post_raw(&body, &stale).await.status, 401);
    // Signed by another key.
    let ts = app.now_secs().to_string();
    let mut m = ts.as_bytes().to_vec();
    m.extend_from_slice(body.as_bytes());
    let forged = SigningKey::from_bytes(&[9; 32]).sign(&m);
    let headers = vec![
        ("x-signature-ed25519", hex::encode(forged.to_bytes())),
        ("x-signature-timestamp", ts),
    ];
    assert_eq!(app.post_raw(&body, &headers).await.status, 401);
    // Too large.
    let big = format!("{{\"type\":1,\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let headers = app.signed_at(&big, 0);
    assert_eq!(app.post_raw(&big, &headers).await.status, 413);

    app.settle().await;
    assert!(app.fake.posts_in(APPROVALS).is_empty(), "nothing acted");
    let fresh = app.signed_at(&body, 0);
    assert_eq!(app.post_raw(&body, &fresh).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_clicks_and_replays_cause_one_effect() {
    let app = spawn_app().await;
    let (channel, message) = app.first_request().await;

    // A replay of the very same signed interaction.
    let click = click_interaction(LEAD1, &channel, &message, "passport:approve AR-1");
    let first = app.send(&click).await;
    assert!(first.text().contains("approved"), "{}", first.body);
    let replay = app.send(&click).await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.json()["type"], 6, "acknowledged without acting");

    // Two clicks, and two approvers racing.
    let (a, b, c) = tokio::join!(
        app.click(LEAD1, &channel, &message, "approve AR-1"),
        app.click(LEAD2, &channel, &message, "approve AR-1"),
        app.click(LEAD1, &channel, &message, "approve AR-1"),
    );
    for x in [&a, &b, &c] {
        assert_eq!(x.status, 200);
    }
    app.settle().await;
    assert_eq!(app.events(1, "approved").await, 1);
    assert_eq!(app.state(1).await, RequestState::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_interaction_replayed_after_a_restart_is_refused() {
    let app = spawn_app().await;
    let request = command_interaction(
        DEV,
        GENERAL,
        None,
        "request",
        &[("instances", WEB), ("ticket", "ticket#1"), ("reason", "r")],
    );
    let body = request.to_string();
    let headers = app.signed_at(&body, 0);
    let first = app.post_raw(&body, &headers).await;
    assert!(first.text().contains("AR-1"), "{}", first.body);
    app.settle().await;
    // Restart on the same database file, then replay the same signed body.
    let app = app.restart().await;
    let replay = app.post_raw(&body, &headers).await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.json()["type"], 6, "acknowledged without acting");
    app.settle().await;
    let second = RequestId::parse("AR-2").unwrap();
    assert!(
        app.built.app.store.get(second).await.unwrap().is_none(),
        "the replayed command made a second request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_approves_their_own_request_and_other_servers_are_refused() {
    let app = spawn_app().await;
    let (channel, message) = app.first_request_by(LEAD1).await;
    let answer = app.click(LEAD1, &channel, &message, "approve AR-1").await;
    assert!(answer.text().starts_with("⚠️"), "{}", answer.body);
    assert_eq!(app.state(1).await, RequestState::Pending);

    let mut foreign = click_interaction(LEAD2, &channel, &message, "passport:approve AR-1");
    foreign["guild_id"] = json!("1399999999999999999");
    let answer = app.send(&foreign).await;
    assert!(
        answer.text().contains("only in the server"),
        "{}",
        answer.body
    );
    assert_eq!(app.state(1).await, RequestState::Pending);

    // A command from outside any server (a direct message to the app) is refused too.
    let mut direct = command_interaction(
        LEAD2,
        "1500000000000000099",
        None,
        "approve",
        &[("request", "AR-1")],
    );
    let who = direct["member"]["user"].clone();
    let body = direct.as_object_mut().unwrap();
    body.remove("guild_id");
    body.remove("member");
    body.insert("user".into(), who);
    body.insert(
        "channel".into(),
        json!({ "id": "1500000000000000099", "type": 1 }),
    );
    let answer = app.send(&direct).await;
    assert!(
        answer.text().contains("only in the server"),
        "{}",
        answer.body
    );
    assert_eq!(app.state(1).await, RequestState::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_and_bad_input_get_clear_answers() {
    let app = spawn_app().await;
    let help = app.command(DEV, "help", &[]).await;
    assert!(is_ephemeral(&help));
    assert!(help.text().contains("/passport request"), "{}", help.body);
    let bad = app
        .command(
            DEV,
            "request",
            &[("instances", "web-1"), ("ticket", "ticket#1")],
        )
        .await;
    assert!(bad.text().starts_with("⚠️"), "{}", bad.body);
    assert!(bad.text().contains("i-"), "says what to type: {}", bad.body);
    let outside = app.command(DEV, "extend", &[("duration", "1h")]).await;
    assert!(outside.text().contains("AR-12"), "{}", outside.body);
}

// ---------------------------------------------------------------------------
// Delivery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_loses_nothing_and_keeps_each_thread_in_order() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.command(
            DEV,
            "request",
            &[
                ("instances", WEB),
                ("ticket", &format!("ticket#{i}")),
                ("reason", "r"),
            ],
        )
        .await;
    }
    app.settle().await;
    for n in 1..=3 {
        let (channel, message) = app.card(n).await;
        app.click(LEAD1, &channel, &message, &format!("approve AR-{n}"))
            .await;
    }
    app.settle().await;
    // Every call for a while answers 429.
    app.fake.rate_limit_next(25, 2.0);
    for n in 1..=3 {
        let (_, message) = app.card(n).await;
        app.command_in_thread(DEV, &message, "complete", &[]).await;
    }
    // Nothing is retried before Retry-After has passed on the clock.
    app.settle().await;
    let limited = app
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.status == 429)
        .count();
    assert!(limited >= 1);
    app.settle().await;
    assert_eq!(
        app.fake
            .calls()
            .into_iter()
            .filter(|c| c.status == 429)
            .count(),
        limited,
        "a rate-limited lane waits for Retry-After"
    );
    app.deliver_everything().await;
    assert_eq!(
        app.fake
            .calls()
            .into_iter()
            .filter(|c| c.status == 429)
            .count(),
        25
    );
    app.assert_delivered_in_order().await;
    for n in 1..=3 {
        assert_eq!(app.state(n).await, RequestState::Completed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_commit_and_delivery_delivers_once() {
    let app = spawn_app().await;
    app.command(
        DEV,
        "request",
        &[("instances", WEB), ("ticket", "ticket#1"), ("reason", "r")],
    )
    .await;
    // Stop before anything was delivered.
    let (fake, db, clock, dir) = app.stop().await;
    assert!(fake.posts_in(APPROVALS).is_empty());
    let mut app = start(&fake, &db, clock, Duration::from_millis(2500)).await;
    app._dir = dir;
    app.deliver_everything().await;
    assert_eq!(app.fake.posts_in(APPROVALS).len(), 1);
    app.deliver_everything().await;
    assert_eq!(app.fake.posts_in(APPROVALS).len(), 1);
    app.assert_delivered_in_order().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_work_is_deferred_then_the_answer_replaces_it() {
    let app = spawn_app_with(Duration::ZERO).await;
    // The work cannot finish before the answer, due at once.
    slow_request_creation(&app.db);
    let answer = app
        .command(
            DEV,
            "request",
            &[("instances", WEB), ("ticket", "ticket#1"), ("reason", "r")],
        )
        .await;
    assert_eq!(answer.json(), json!({ "type": 5, "data": { "flags": 64 } }));
    eventually("the deferred answer's edit", || {
        !app.fake.original_edits().is_empty()
    })
    .await;
    let edits = app.fake.original_edits();
    assert_eq!(edits.len(), 1, "{edits:?}");
    assert!(edits[0].content().contains("AR-1"), "{:?}", edits[0].body);
}

// ---------------------------------------------------------------------------
// Commands and the gateway

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passport_registers_its_command_with_typed_options() {
    let app = spawn_app().await;
    let discord = config(&app.db, &app.fake, "http")
        .validate()
        .unwrap()
        .discord
        .unwrap();
    passport::adapters::discord::register_commands(app.built.api.clone(), &discord).await;
    let commands = app.fake.commands();
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert_eq!(commands[0]["name"], "passport");
    let subs: Vec<&str> = commands[0]["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    for s in [
        "request", "approve", "deny", "extend", "complete", "cancel", "revoke", "list", "show",
        "audit", "help",
    ] {
        assert!(subs.contains(&s), "{s} in {subs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_interactions_map_to_the_same_commands() {
    // As the gateway delivers them: serenity's own model types.
    let command: serenity::all::Interaction = serde_json::from_value(command_interaction(
        DEV,
        GENERAL,
        None,
        "request",
        &[
            ("instances", WEB),
            ("ticket", "ticket#1"),
            ("duration", "2h"),
            ("reason", "disk full"),
        ],
    ))
    .unwrap();
    let mapped = from_gateway(&command).unwrap();
    assert_eq!(
        mapped.command_line().as_deref(),
        Some(format!("request {WEB} 2h ticket#1 disk full").as_str())
    );
    assert_eq!(mapped.actor().unwrap().id, DEV);
    assert_eq!(mapped.member.as_ref().unwrap().roles, Vec::<String>::new());

    let click: serenity::all::Interaction = serde_json::from_value(click_interaction(
        LEAD1,
        APPROVALS,
        "1400000000000000001",
        "passport:approve AR-7",
    ))
    .unwrap();
    let mapped = from_gateway(&click).unwrap();
    assert_eq!(mapped.command_line().as_deref(), Some("approve AR-7"));
    assert_eq!(
        mapped.member.as_ref().unwrap().roles,
        vec![APPROVER_ROLE.to_owned()]
    );
    assert_eq!(mapped.message.as_ref().unwrap().id, "1400000000000000001");

    // Over the gateway the answer goes back through the callback route, and a
    // message written in a request's thread acts on that request.
    let app = spawn_app().await;
    let inbound = app.built.inbound.clone();
    inbound
        .over_gateway(
            from_gateway(
                &serde_json::from_value(command_interaction(
                    DEV,
                    GENERAL,
                    None,
                    "request",
                    &[("instances", WEB), ("ticket", "ticket#1"), ("reason", "r")],
                ))
                .unwrap(),
            )
            .unwrap(),
        )
        .await;
    let callbacks = app.fake.callbacks();
    assert_eq!(callbacks.len(), 1);
    assert!(
        callbacks[0].content().contains("AR-1"),
        "{:?}",
        callbacks[0].body
    );
    app.settle().await;
    let (channel, message) = app.card(1).await;
    app.click(LEAD1, &channel, &message, "approve AR-1").await;
    app.settle().await;
    let author = |id: &str| UserPayload {
        id: id.into(),
        username: Some(handle_of(id).into()),
        global_name: None,
        bot: Some(false),
    };
    // The same words in another server the bot is in do nothing.
    inbound
        .thread_message(
            "1399999999999999999",
            author(DEV),
            &message,
            "1990000000000000000",
            "extend 1h",
        )
        .await;
    inbound
        .thread_message(
            GUILD_ID,
            author(OTHER),
            &message,
            "1990000000000000001",
            "extend 1h",
        )
        .await;
    inbound
        .thread_message(
            GUILD_ID,
            author(DEV),
            &message,
            "1990000000000000002",
            "thanks, looks good",
        )
        .await;
    inbound
        .thread_message(
            GUILD_ID,
            author(DEV),
            &message,
            "1990000000000000003",
            "extend 1h",
        )
        .await;
    assert_eq!(app.events(1, "extended").await, 1);
    let thread = app.fake.thread(&message);
    assert!(
        contains(&thread, "⚠️"),
        "the refusal is answered: {thread:?}"
    );
    assert!(contains(&thread, "AR-1 extended by 1h"), "{thread:?}");
    assert!(!contains(&thread, "looks good"));
    inbound
        .thread_message(
            GUILD_ID,
            author(DEV),
            &message,
            "1990000000000000004",
            "done",
        )
        .await;
    assert_eq!(app.state(1).await, RequestState::Completed);
}

/// The gateway may deliver a message again after Passport restarted (a
/// resumed session replays what it missed): the thread command acts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_message_delivered_again_after_a_restart_acts_once() {
    let app = spawn_app().await;
    let (channel, message) = app.first_request().await;
    app.click(LEAD1, &channel, &message, "approve AR-1").await;
    app.settle().await;
    let dev = || UserPayload {
        id: DEV.into(),
        username: Some(handle_of(DEV).into()),
        global_name: None,
        bot: Some(false),
    };
    let said = "1990000000000000010";
    let inbound = app.built.inbound.clone();
    inbound
        .thread_message(GUILD_ID, dev(), &message, said, "extend 1h")
        .await;
    assert_eq!(app.events(1, "extended").await, 1);
    let app = app.restart().await;
    app.built
        .inbound
        .clone()
        .thread_message(GUILD_ID, dev(), &message, said, "extend 1h")
        .await;
    app.settle().await;
    assert_eq!(app.events(1, "extended").await, 1, "acted twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_that_could_not_start_with_its_card_starts_with_the_first_reply() {
    let app = spawn_app().await;
    app.fake.rate_limit_next_of(&["start_thread"], 1, 0.0);
    let (channel, message) = app.first_request().await;
    assert!(
        !app.fake.has_thread(&message),
        "the card went out without its thread"
    );
    app.click(LEAD1, &channel, &message, "approve AR-1").await;
    app.deliver_everything().await;
    assert!(app.fake.has_thread(&message));
    assert!(contains(&app.fake.thread(&message), "approved"));
    app.assert_delivered_in_order().await;
}

// ---------------------------------------------------------------------------
// Windows passwords: the direct message is deleted after its ttl

impl TestApp {
    /// Requests access to the Windows instance and approves it; the grant sends
    /// the password by direct message. Answers that message's (channel, id).
    async fn windows_grant(&self) -> (String, String) {
        let answer = self
            .command(
                DEV,
                "request",
                &[
                    ("instances", WIN),
                    ("ticket", "ticket#1"),
                    ("reason", "rdp"),
                ],
            )
            .await;
        assert!(answer.text().contains("AR-1"), "{}", answer.body);
        self.settle().await;
        let (channel, message) = self.card(1).await;
        self.click(LEAD1, &channel, &message, "approve AR-1").await;
        self.deliver_everything().await;
        assert_eq!(self.state(1).await, RequestState::Active);
        let sent = self.passwords.sent();
        assert_eq!(sent.len(), 1);
        let dm = self
            .fake
            .dm_calls(DEV)
            .into_iter()
            .find(|c| c.content().contains(&sent[0]))
            .expect("the password went to the requester's direct messages");
        let at = (dm.channel.unwrap(), dm.message.unwrap());
        assert!(self.fake.message_exists(&at.1));
        at
    }

    async fn deletion_due(&self) -> passport::domain::time::Timestamp {
        password_deletion_due(&self.built.app).await
    }

    /// The notes about deleted password messages in AR-1's thread.
    async fn deletion_notes(&self) -> Vec<String> {
        let (_, card) = self.card(1).await;
        self.fake
            .thread(&card)
            .into_iter()
            .filter(|t| t.starts_with("🧹 the password message"))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windows_password_message_is_deleted_after_ten_minutes_and_not_before() {
    let app = spawn_app().await;
    let sent_at = app.clock.now();
    let (channel, message) = app.windows_grant().await;
    let due = app.deletion_due().await;
    assert_eq!(due.since(sent_at), Span::from_minutes(10));

    app.clock.set(due.minus(Span::from_secs(1)));
    app.deliver_everything().await;
    assert!(app.fake.deleted().is_empty(), "deleted too early");

    app.clock.set(due.plus(Span::from_secs(1)));
    app.deliver_everything().await;
    assert_eq!(app.fake.deleted(), vec![(channel, message.clone())]);
    assert!(!app.fake.message_exists(&message));
    let note = app.deletion_notes().await;
    assert_eq!(note.len(), 1, "{note:?}");
    assert!(
        note[0].contains(&format!("on {WIN} was deleted from")) && note[0].contains("after 10m"),
        "{note:?}"
    );
    assert_eq!(app.events(1, "password_message_deleted").await, 1);
    app.clock.advance(Span::from_hours(1));
    app.deliver_everything().await;
    assert_eq!(app.fake.ok_calls("delete_message").len(), 1);
    app.assert_delivered_in_order().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_before_the_due_time_still_deletes_the_password_message() {
    let app = spawn_app().await;
    let (channel, message) = app.windows_grant().await;
    app.clock.advance(Span::from_minutes(5));
    app.settle().await;
    let app = app.restart().await;
    app.settle().await;
    assert!(app.fake.deleted().is_empty());

    app.clock.advance(Span::from_minutes(6));
    app.deliver_everything().await;
    assert_eq!(app.fake.deleted(), vec![(channel, message)]);
    assert_eq!(app.deletion_notes().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_ttl_a_429_and_a_message_already_gone_are_all_handled() {
    let app = spawn_app_on(|_| {}, Duration::from_millis(2500), Some("3m"), false).await;
    let sent_at = app.clock.now();
    let (channel, message) = app.windows_grant().await;
    assert!(app
        .fake
        .dms(DEV)
        .iter()
        .any(|t| t.contains("deleted in 3m")));
    let due = app.deletion_due().await;
    assert_eq!(due.since(sent_at), Span::from_minutes(3));

    // Discord answers 429 first: the deletion waits Retry-After, then happens.
    app.fake.rate_limit_next_of(&["delete_message"], 1, 20.0);
    app.clock.set(due.plus(Span::from_secs(1)));
    app.settle().await;
    assert!(app.fake.deleted().is_empty());
    assert!(app.deletion_notes().await.is_empty());
    app.clock.advance(Span::from_secs(21));
    app.deliver_everything().await;
    assert_eq!(app.fake.deleted(), vec![(channel, message)]);
    assert!(app.deletion_notes().await[0].contains("after 3m"));

    // A message already gone (404, 10008 Unknown Message) counts as deleted.
    app.command(DEV, "extend", &[("request", "AR-1"), ("duration", "30m")])
        .await;
    app.deliver_everything().await;
    assert_eq!(
        app.passwords.sent().len(),
        2,
        "a new password after the extension"
    );
    let last = app.fake.dm_calls(DEV).last().unwrap().clone();
    app.fake.remove_message(last.message.as_deref().unwrap());
    app.clock.advance(Span::from_minutes(4));
    app.deliver_everything().await;
    let unknown = app
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.route == "delete_message" && c.status == 404)
        .count();
    assert_eq!(unknown, 1);
    assert_eq!(app.deletion_notes().await.len(), 2);
    assert_eq!(app.events(1, "password_message_deleted").await, 2);
}

/// `/readyz` asks Discord for the bot's own user (`GET /users/@me`) and names
/// Discord in its answer; a token Discord refuses fails the check, saying
/// which setting to fix.
#[tokio::test]
async fn readiness_asks_discord_for_the_bot_user() {
    use passport::http::ready::{DiscordProbe, Probe};
    let app = spawn_app().await;
    let res = http_client::get(&app.http, &format!("{}/readyz", app.base)).await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.json(),
        json!({
            "status": "ready",
            "checks": { "store": { "state": "ok" }, "discord": { "state": "ok" } },
        })
    );
    assert!(app.fake.calls().iter().any(|c| c.route == "get_me"));

    let mut settings = config(&app.db, &app.fake, "http")
        .validate()
        .unwrap()
        .discord
        .unwrap();
    settings.bot_token = Secret::from("not-the-token");
    let probe = DiscordProbe(passport::adapters::discord::api::DiscordApi::new(&settings));
    let said = probe.check().await.unwrap_err();
    assert!(said.contains("401"), "{said}");
    assert!(said.contains("PASSPORT_DISCORD__BOT_TOKEN"), "{said}");
    assert!(!said.contains("not-the-token"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_is_escaped_in_threads_direct_messages_answers_and_audit_lines() {
    let app = spawn_app().await;
    let hostile = format!(
        "@everyone <@&{APPROVER_ROLE}> [log in](https://evil.example/x) ||spoiler|| **loud** -# small"
    );
    let answer = app
        .command(
            DEV,
            "request",
            &[
                ("instances", WEB),
                ("ticket", "ticket#1"),
                ("reason", &hostile),
            ],
        )
        .await;
    assert!(answer.text().contains("AR-1"), "{}", answer.body);
    app.settle().await;
    let (_, message) = app.card(1).await;
    let answer = app
        .command(LEAD1, "deny", &[("request", "AR-1"), ("reason", &hostile)])
        .await;
    assert!(answer.text().contains("denied"), "{}", answer.body);
    app.deliver_everything().await;

    let sent = [
        ("thread", app.fake.posts_in(&message)),
        ("direct message", app.fake.dm_calls(DEV)),
        ("audit", app.fake.posts_in(AUDIT)),
    ];
    for (place, calls) in &sent {
        assert!(
            calls.iter().any(|c| c.all_text().contains("evil.example")),
            "the reason reached the {place}: {calls:?}"
        );
        for c in calls {
            // What Discord would still parse: every escaped character blanked.
            let mut text = String::new();
            let mut chars = c.all_text().chars().collect::<Vec<_>>().into_iter();
            while let Some(ch) = chars.next() {
                if ch == '\\' {
                    chars.next();
                    text.push('\0');
                } else {
                    text.push(ch);
                }
            }
            for raw in [
                "@everyone",
                "<@&",
                "[log in](",
                "||spoiler||",
                "**loud**",
                "-# small",
            ] {
                assert!(!text.contains(raw), "{place}: {raw} unescaped in {text}");
            }
            assert_eq!(
                c.payload()["allowed_mentions"],
                json!({ "parse": [] }),
                "{place}"
            );
        }
    }
    // What the person typed is still shown as typed.
    let thread = app.fake.thread(&message).join("\n");
    assert!(
        thread.contains("\\[log in\\]\\(https://evil.example/x\\)"),
        "{thread}"
    );
}

// ---------------------------------------------------------------------------
// The dry run

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_marks_every_card_thread_reply_and_direct_message_dry_run() {
    // A chat platform, no [aws] and `provisioner = "dry-run"`, labelled as
    // `serve` decides it from the configuration.
    let edit = |config: &mut Config| assert!(config.aws.is_none());
    let app = spawn_app_on(edit, Duration::from_millis(2500), None, true).await;

    // A whole lifecycle: request, approval, extension, warning, completion.
    app.command(
        DEV,
        "request",
        &[
            ("instances", WEB),
            ("duration", "1h"),
            ("ticket", "ticket#5"),
            ("reason", "disk full"),
        ],
    )
    .await;
    app.settle().await;
    let (channel, message) = app.card(1).await;
    app.click(LEAD1, &channel, &message, "approve AR-1").await;
    app.settle().await;
    assert_eq!(app.state(1).await, RequestState::Active);
    app.command_in_thread(DEV, &message, "extend", &[("duration", "30m")])
        .await;
    app.settle().await;
    app.clock.advance(Span::from_minutes(80));
    app.settle().await;
    app.command_in_thread(DEV, &message, "complete", &[]).await;
    app.deliver_everything().await;
    assert_eq!(app.state(1).await, RequestState::Completed);

    // The card, as posted and as every edit left it.
    let mut cards: Vec<_> = app
        .fake
        .posts_in(APPROVALS)
        .into_iter()
        .filter(|c| c.message.as_deref() == Some(message.as_str()))
        .collect();
    assert_eq!(cards.len(), 1);
    cards.extend(app.fake.edits(&message));
    assert!(cards.len() > 2, "{cards:?}");
    for card in &cards {
        let text = card.embed_text();
        assert!(text.contains("🧪 DRY RUN"), "{text}");
    }
    // Every thread reply, direct message and audit line.
    let thread = app.fake.thread(&message);
    assert!(
        contains(&thread, "approved") && contains(&thread, "extended"),
        "{thread:?}"
    );
    let dms = app.fake.dms(DEV);
    assert!(dms.len() >= 3, "{dms:?}");
    let audit: Vec<String> = app
        .fake
        .posts_in(AUDIT)
        .iter()
        .map(|c| c.content())
        .collect();
    assert!(!audit.is_empty());
    for text in thread.iter().chain(&dms).chain(&audit) {
        assert!(text.starts_with("🧪 DRY RUN"), "not marked DRY RUN: {text}");
    }
}

// ---------------------------------------------------------------------------
// Start-up warnings

#[tokio::test]
async fn the_start_warns_only_about_roles_that_approve_or_administer() {
    let app = spawn_app_configured(|config| {
        // A role that may only request, and one nothing uses.
        let roles = &mut config.discord.as_mut().unwrap().roles;
        roles.insert("oncall".into(), "1600000000000000003".into());
        roles.insert("unused".into(), "1600000000000000004".into());
        config.policy.requesters = vec!["group:oncall".into()];
    })
    .await;
    // What the start warned about is what it logged at WARN.
    assert_warned(
        &app.built.warnings,
        &[
            format!("Passport group approvers (approves for rule \"default\") is the Discord role {APPROVER_ROLE}"),
            format!("Passport group sre-leads (approves for rule \"prod\") is the Discord role {SRE_ROLE}"),
        ],
        &["1600000000000000003", "1600000000000000004"],
    );
}

// ---------------------------------------------------------------------------
// passport doctor

/// A channel that exists but the bot may not view.
const HIDDEN: &str = "1500000000000000008";
/// A channel id no server has.
const GONE: &str = "1500000000000000009";
/// A role id the server does not have.
const NO_ROLE: &str = "1600000000000000099";

/// Runs `passport doctor` with a Discord configuration against `fake`: the
/// approvals and audit channels, a rule posting to `HIDDEN` and one to
/// `GONE`, and the roles `approvers` (which exists) and `sre-leads` (which
/// does not). Answers the exit code, standard output and standard error.
async fn doctor(fake: &FakeDiscord, token: &str) -> Ran {
    run_doctor(
        |db| {
            format!(
                "provisioner = \"dry-run\"\n\
                 [store]\npath = {db:?}\n\
                 [discord]\nmode = \"http\"\napplication_id = \"{APPLICATION_ID}\"\npublic_key = \"{key}\"\n\
                 guild_id = \"{GUILD_ID}\"\napprovals_channel = \"{APPROVALS}\"\naudit_channel = \"{AUDIT}\"\n\
                 api_url = {api:?}\ncommands = \"off\"\n\
                 [discord.roles]\napprovers = \"{APPROVER_ROLE}\"\nsre-leads = \"{NO_ROLE}\"\n\
                 [policy.default]\napprovers = [\"group:approvers\"]\n\
                 [[policy.rules]]\nname = \"prod\"\ntags = {{ env = \"prod\" }}\napprovers = [\"group:sre-leads\"]\nchannel = \"{HIDDEN}\"\n\
                 [[policy.rules]]\nname = \"pci\"\ntags = {{ env = \"pci\" }}\napprovers = [\"group:approvers\"]\nchannel = \"{GONE}\"\n",
                db = db.display().to_string(),
                key = hex::encode(SigningKey::from_bytes(&SEED).verifying_key().to_bytes()),
                api = fake.api_url(),
            )
        },
        &[("PASSPORT_DISCORD__BOT_TOKEN", token)],
    )
    .await
}

fn doctor_fake_discord(fake: &FakeDiscord) {
    fake.add_channel(APPROVALS);
    fake.add_channel(AUDIT);
    fake.add_hidden_channel(HIDDEN);
    fake.add_role(APPROVER_ROLE, "approvers");
    fake.add_role(SRE_ROLE, "sre-leads");
}

/// `passport doctor` against the fake Discord: the token, each channel
/// Passport posts to (one the bot may not view, one that does not exist),
/// and each configured role, one line each, with what to do for each
/// failure, and exit code 1.
#[tokio::test]
async fn doctor_names_channels_the_bot_cannot_see_and_roles_that_do_not_exist() {
    let fake = FakeDiscord::start().await;
    doctor_fake_discord(&fake);
    let Ran {
        code,
        stdout: text,
        stderr: errors,
    } = doctor(&fake, BOT_TOKEN).await;
    assert_eq!(code, Some(1), "{text}{errors}");
    for line in [
        "ok    discord token: bot passport\n".to_owned(),
        format!("ok    discord channel: {APPROVALS}: the bot can see it (#channel-{APPROVALS})\n"),
        format!("ok    discord channel: {AUDIT}: the bot can see it (#channel-{AUDIT})\n"),
        format!("FAIL  discord channel: {HIDDEN}: the bot cannot see it (Missing Access): give the bot View Channel and Send Messages in it\n"),
        format!("FAIL  discord channel: {GONE}: the bot cannot see it (Unknown Channel): no such channel in a server the bot is in: check the id (Developer Mode on, right-click the channel → Copy Channel ID)\n"),
        format!("ok    discord role: approvers = {APPROVER_ROLE} (@approvers)\n"),
        format!("FAIL  discord role: sre-leads = {NO_ROLE}: no such role in server {GUILD_ID}: copy the role's id (Server Settings → Roles, right-click the role → Copy Role ID)\n"),
        "ok    logbook: intact".to_owned(),
        "3 problem(s) found\n".to_owned(),
    ] {
        assert!(text.contains(&line), "no {line:?} in\n{text}");
    }
    assert!(
        !text.contains(BOT_TOKEN) && !errors.contains(BOT_TOKEN),
        "the token was printed"
    );
    // Each channel was asked for once, and the roles once.
    let asked: Vec<String> = fake
        .calls()
        .into_iter()
        .filter(|c| c.route == "get_channel")
        .filter_map(|c| c.channel)
        .collect();
    assert_eq!(asked, [APPROVALS, AUDIT, HIDDEN, GONE]);
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| c.route == "get_roles")
            .count(),
        1
    );
}

/// A token of the right shape that the fake Discord refuses.
const REFUSED: &str = "refused-discord-bot-token-0";

/// A token Discord refuses (401) is one failure naming the setting to fix;
/// nothing else is asked with it, and it is never printed.
#[tokio::test]
async fn doctor_names_the_setting_when_discord_refuses_the_token() {
    let fake = FakeDiscord::start().await;
    doctor_fake_discord(&fake);
    let Ran {
        code,
        stdout: text,
        stderr: errors,
    } = doctor(&fake, REFUSED).await;
    assert_eq!(code, Some(1), "{text}{errors}");
    for line in [
        "FAIL  discord token: Discord refused the token (401: Unauthorized): set PASSPORT_DISCORD__BOT_TOKEN to the bot's token (Developer Portal → Bot → Reset Token)\n",
        "1 problem(s) found\n",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    assert!(!text.contains("discord channel"), "{text}");
    assert!(
        !text.contains(REFUSED) && !errors.contains(REFUSED),
        "the token was printed"
    );
    let routes: Vec<String> = fake.calls().into_iter().map(|c| c.route).collect();
    assert_eq!(routes, ["get_me"]);
}
