//! A fake Slack Web API on 127.0.0.1 that speaks Slack's HTTP protocol:
//! it records every call (`chat.postMessage`, `chat.update`, `chat.delete`,
//! `chat.postEphemeral`, `conversations.open`, `users.info`, `auth.test`,
//! `bots.info`,
//! `conversations.list`, `conversations.info`,
//! `usergroups.users.list`, `views.open`, and posts to `response_url`s),
//! refuses payloads over Slack's limits the way Slack does, can answer
//! 429 with `Retry-After`, and can refuse a method with an error code.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use serde_json::{json, Value};

pub const BOT_TOKEN: &str = "xoxb-fake-bot-token";
/// The signing secret Passport is given in the tests: Slack signs with it.
pub const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
/// The workspace the bot token belongs to, as `auth.test` says.
pub const TEAM: &str = "T0TEAM";
/// The bot's app, as `bots.info` says.
pub const APP: &str = "A0PASSPORT";

/// The channels `conversations.list`/`conversations.info` know: id, name,
/// and whether the bot is a member.
pub const FAKE_CHANNELS: [(&str, &str, bool); 3] = [
    ("C0APPROVALS", "access-requests", true),
    ("C0AUDIT", "passport-audit", true),
    ("C0LEFT", "not-joined", false),
];

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub params: Value,
    /// `None` when the call succeeded, else Slack's error code.
    pub error: Option<String>,
    /// For messages: the channel id and ts Slack gave them.
    pub channel: Option<String>,
    pub ts: Option<String>,
}

impl Call {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    pub fn text(&self) -> String {
        self.params["text"].as_str().unwrap_or_default().to_owned()
    }

    pub fn thread_ts(&self) -> Option<String> {
        self.params["thread_ts"].as_str().map(str::to_owned)
    }

    /// Every button value in the message's blocks.
    pub fn button_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(blocks) = self.params["blocks"].as_array() {
            for b in blocks {
                if let Some(elements) = b["elements"].as_array() {
                    for e in elements {
                        if e["type"] == "button" {
                            out.push(e["value"].as_str().unwrap_or_default().to_owned());
                        }
                    }
                }
            }
        }
        out
    }
}

/// A number for a trigger id or `response_url` no other call in this test
/// binary answers: counted from 2^32, clear of `common::chat_app::unique`.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1 << 32);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

#[derive(Default)]
struct Inner {
    calls: Mutex<Vec<Call>>,
    next_ts: AtomicU64,
    /// Calls still to answer with 429, and the Retry-After to send.
    rate_limited: Mutex<(u32, u64)>,
    /// Methods the 429s apply to; empty means every method.
    rate_limited_methods: Mutex<Vec<String>>,
    users: Mutex<HashMap<String, String>>,
    usergroups: Mutex<HashMap<String, Vec<String>>>,
    /// Messages that exist, by (channel, ts).
    messages: Mutex<HashSet<(String, String)>>,
    /// Socket Mode: the WebSocket URL `apps.connections.open` hands out.
    socket_url: Mutex<String>,
    /// Socket Mode: what to do on the current connection.
    socket_tx: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Option<String>>>>,
    socket_connections: AtomicU64,
    /// Methods to refuse, with the error code Slack would give.
    failing: Mutex<HashMap<String, String>>,
    /// Every call answered 503 (the Web API is down).
    down: std::sync::atomic::AtomicBool,
    /// Calls naming one of these channels are never answered (a stall).
    stalled_channels: Mutex<HashSet<String>>,
    /// Calls of these methods are held unanswered until released.
    stalled_methods: Mutex<HashSet<String>>,
    /// The Enterprise Grid organization `auth.test` names, if any.
    enterprise: Mutex<Option<String>>,
}

#[derive(Clone)]
pub struct FakeSlack {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    inner: Arc<Inner>,
}

impl FakeSlack {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let router = Router::new()
            .route("/api/{method}", any(api))
            .route("/response/{id}", post(response_url))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        let sockets = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        *inner.socket_url.lock().unwrap() =
            format!("ws://{}/link/?ticket=fake", sockets.local_addr().unwrap());
        tokio::spawn(socket_mode(sockets, inner.clone()));
        Self { base, inner }
    }

    /// Answers every later call of `method` with `{"ok": false, "error": code}`
    /// (e.g. `auth.test` with `invalid_auth`, as for a revoked token).
    pub fn fail_method(&self, method: &str, code: &str) {
        self.inner
            .failing
            .lock()
            .unwrap()
            .insert(method.to_owned(), code.to_owned());
    }

    /// Answers every later call of `method` in `channel` with `code`, e.g.
    /// `chat.postMessage` in the approvals channel with `channel_not_found`.
    pub fn fail_in_channel(&self, method: &str, channel: &str, code: &str) {
        self.inner
            .failing
            .lock()
            .unwrap()
            .insert(format!("{method} {channel}"), code.to_owned());
    }

    /// Answers `method` normally again.
    pub fn heal_method(&self, method: &str) {
        self.inner.failing.lock().unwrap().remove(method);
    }

    /// Puts the workspace in an Enterprise Grid organization, for `auth.test`.
    pub fn set_enterprise(&self, enterprise: &str) {
        *self.inner.enterprise.lock().unwrap() = Some(enterprise.to_owned());
    }

    /// Socket Mode connections accepted so far.
    pub fn socket_connections(&self) -> u64 {
        self.inner.socket_connections.load(Ordering::SeqCst)
    }

    /// Sends an envelope on the current Socket Mode connection.
    pub fn socket_send(&self, envelope: &Value) {
        let tx = self.inner.socket_tx.lock().unwrap().clone().unwrap();
        tx.send(Some(envelope.to_string())).unwrap();
    }

    /// Closes the current Socket Mode connection, as Slack does now and then.
    pub fn socket_close(&self) {
        let tx = self.inner.socket_tx.lock().unwrap().clone().unwrap();
        let _ = tx.send(None);
    }

    /// The Web API base URL to configure as `slack.api_url`.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.base)
    }

    /// The headers Slack sends with `body` at `timestamp` (Unix seconds),
    /// signed with [`SIGNING_SECRET`].
    pub fn signature_headers(body: &str, timestamp: i64) -> Vec<(&'static str, String)> {
        let ts = timestamp.to_string();
        vec![
            (
                "x-slack-signature",
                passport::http::verify::sign(SIGNING_SECRET.as_bytes(), &ts, body.as_bytes()),
            ),
            ("x-slack-request-timestamp", ts),
        ]
    }

    /// A slash command `/passport text` typed by `user` in #general of
    /// [`TEAM`], as Slack posts it to `/slack/commands` (form-encoded), its
    /// `response_url` pointing at this fake.
    pub fn command_body(&self, user: &str, text: &str) -> String {
        let n = next_id();
        serde_urlencoded::to_string([
            ("token", "legacy-verification-token"),
            ("team_id", TEAM),
            ("team_domain", "example"),
            ("channel_id", "C0GENERAL"),
            ("channel_name", "general"),
            ("user_id", user),
            ("user_name", "from-payload"),
            ("command", "/passport"),
            ("text", text),
            ("api_app_id", APP),
            ("response_url", &format!("{}/response/{n}", self.base)),
            ("trigger_id", &format!("{n}.1234.abcdef")),
        ])
        .unwrap()
    }

    /// A click by `user` on the button with `value` of the message `ts` in
    /// `channel` (in the thread of `thread_ts` when given), as Slack posts it
    /// to `/slack/interactions`.
    pub fn click_body(
        &self,
        user: &str,
        value: &str,
        channel: &str,
        ts: &str,
        thread_ts: Option<&str>,
    ) -> String {
        let n = next_id();
        let mut message = json!({ "type": "message", "ts": ts, "text": "…", "blocks": [] });
        if let Some(t) = thread_ts {
            message["thread_ts"] = json!(t);
        }
        let payload = json!({
            "type": "block_actions",
            "team": { "id": TEAM, "domain": "example" },
            "user": { "id": user, "username": "from-payload", "team_id": TEAM },
            "api_app_id": APP,
            "token": "legacy-verification-token",
            "container": { "type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": false },
            "trigger_id": format!("{n}.5678.fedcba"),
            "channel": { "id": channel, "name": "access" },
            "message": message,
            "response_url": format!("{}/response/{n}", self.base),
            "actions": [{
                "type": "button", "action_id": "passport:0", "block_id": "b1",
                "text": { "type": "plain_text", "text": "Approve" },
                "value": value, "action_ts": "1700000000.1"
            }]
        });
        serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
    }

    /// Passport's `[slack]` settings against this fake: its Web API, the bot
    /// token and [`SIGNING_SECRET`], approvals in C0APPROVALS and the audit
    /// in C0AUDIT, and no pause between posts to one channel.
    pub fn passport_settings(&self) -> passport::adapters::slack::SlackConfig {
        passport::adapters::slack::SlackConfig {
            signing_secret: Some(passport::config::Secret::from(SIGNING_SECRET)),
            bot_token: Some(passport::config::Secret::from(BOT_TOKEN)),
            approvals_channel: "C0APPROVALS".into(),
            audit_channel: "C0AUDIT".into(),
            api_url: self.api_url(),
            channel_pace: "0".into(),
            ..Default::default()
        }
    }

    pub fn add_user(&self, id: &str, name: &str) {
        self.inner
            .users
            .lock()
            .unwrap()
            .insert(id.into(), name.into());
    }

    pub fn set_usergroup(&self, id: &str, members: &[&str]) {
        self.inner
            .usergroups
            .lock()
            .unwrap()
            .insert(id.into(), members.iter().map(|m| (*m).to_owned()).collect());
    }

    /// Forgets user group `id`: `usergroups.users.list` then answers
    /// `no_such_subteam`, as Slack does for a deleted or unreachable group.
    pub fn drop_usergroup(&self, id: &str) {
        self.inner.usergroups.lock().unwrap().remove(id);
    }

    /// Answers the next `calls` calls with 429 and `Retry-After: retry_after_secs`.
    pub fn rate_limit_next(&self, calls: u32, retry_after_secs: u64) {
        self.rate_limit_next_of(&[], calls, retry_after_secs);
    }

    /// Like [`FakeSlack::rate_limit_next`], counting only calls of `methods`.
    pub fn rate_limit_next_of(&self, methods: &[&str], calls: u32, retry_after_secs: u64) {
        *self.inner.rate_limited_methods.lock().unwrap() =
            methods.iter().map(|m| (*m).to_owned()).collect();
        *self.inner.rate_limited.lock().unwrap() = (calls, retry_after_secs);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.calls.lock().unwrap().clone()
    }

    pub fn ok_calls(&self, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method && c.ok())
            .collect()
    }

    /// Top-level messages posted to `channel` (not thread replies).
    pub fn posts_in(&self, channel: &str) -> Vec<Call> {
        self.ok_calls("chat.postMessage")
            .into_iter()
            .filter(|c| c.channel.as_deref() == Some(channel) && c.thread_ts().is_none())
            .collect()
    }

    /// Replies in the thread of the message `ts`, in the order Slack got them.
    pub fn thread(&self, ts: &str) -> Vec<String> {
        self.ok_calls("chat.postMessage")
            .into_iter()
            .filter(|c| c.thread_ts().as_deref() == Some(ts))
            .map(|c| c.text())
            .collect()
    }

    /// Updates of the message `ts`, in order.
    pub fn updates(&self, ts: &str) -> Vec<Call> {
        self.ok_calls("chat.update")
            .into_iter()
            .filter(|c| c.params["ts"].as_str() == Some(ts))
            .collect()
    }

    /// Messages deleted with `chat.delete`, as (channel, ts), in order.
    pub fn deleted(&self) -> Vec<(String, String)> {
        self.ok_calls("chat.delete")
            .into_iter()
            .filter_map(|c| Some((c.channel?, c.ts?)))
            .collect()
    }

    /// Whether the message `ts` in `channel` exists (was posted, not deleted).
    pub fn message_exists(&self, channel: &str, ts: &str) -> bool {
        self.inner
            .messages
            .lock()
            .unwrap()
            .contains(&(channel.to_owned(), ts.to_owned()))
    }

    /// Removes a message as its reader would, without a call being recorded.
    pub fn remove_message(&self, channel: &str, ts: &str) {
        self.inner
            .messages
            .lock()
            .unwrap()
            .remove(&(channel.to_owned(), ts.to_owned()));
    }

    /// Direct messages to `user` as calls, with the channel and ts Slack gave them.
    pub fn dm_calls(&self, user: &str) -> Vec<Call> {
        self.posts_in(&format!("D{user}"))
    }

    /// Ephemeral messages shown to `user`.
    pub fn ephemerals(&self, user: &str) -> Vec<String> {
        self.ok_calls("chat.postEphemeral")
            .into_iter()
            .filter(|c| c.params["user"].as_str() == Some(user))
            .map(|c| c.text())
            .collect()
    }

    /// Direct messages to `user` (posted to the channel conversations.open gave).
    pub fn dms(&self, user: &str) -> Vec<String> {
        let dm = format!("D{user}");
        self.posts_in(&dm).into_iter().map(|c| c.text()).collect()
    }

    /// Posts to `response_url`s, in order.
    /// Answers every call 503 while `down`, as when Slack's Web API is down.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// Never answers calls that name `channel` (they are still recorded).
    /// Holds every call of `method` unanswered (Slack accepts the connection
    /// and says nothing) until [`Self::release_method`].
    pub fn stall_method(&self, method: &str) {
        self.inner
            .stalled_methods
            .lock()
            .unwrap()
            .insert(method.to_owned());
    }

    /// Lets the held calls of `method`, and later ones, be answered.
    pub fn release_method(&self, method: &str) {
        self.inner.stalled_methods.lock().unwrap().remove(method);
    }

    pub fn stall_channel(&self, channel: &str) {
        self.inner
            .stalled_channels
            .lock()
            .unwrap()
            .insert(channel.to_owned());
    }

    pub fn responses(&self) -> Vec<String> {
        self.ok_calls("response_url")
            .into_iter()
            .map(|c| c.text())
            .collect()
    }

    pub fn clear(&self) {
        self.inner.calls.lock().unwrap().clear();
    }
}

fn params(query: Option<String>, headers: &HeaderMap, body: &Bytes) -> Value {
    let mut map = serde_json::Map::new();
    if let Some(q) = query {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            map.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if ct.starts_with("application/json") {
        if let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) {
            map.extend(obj);
        }
    } else if !body.is_empty() {
        for (k, v) in url::form_urlencoded::parse(body) {
            map.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    Value::Object(map)
}

/// What Slack says about a message over its limits, or `None` when it is fine.
pub fn limit_error(p: &Value) -> Option<&'static str> {
    let text = p["text"].as_str().unwrap_or_default();
    let blocks = p["blocks"].as_array();
    if text.is_empty() && blocks.is_none_or(Vec::is_empty) {
        return Some("no_text");
    }
    if text.chars().count() > 4000 {
        return Some("msg_too_long");
    }
    let blocks = blocks?;
    if blocks.len() > 50 {
        return Some("invalid_blocks");
    }
    let len = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
    let mut action_ids = HashSet::new();
    for b in blocks {
        match b["type"].as_str() {
            Some("section") => {
                if len(&b["text"]["text"]) > 3000 {
                    return Some("invalid_blocks");
                }
                if let Some(fields) = b["fields"].as_array() {
                    if fields.len() > 10 || fields.iter().any(|f| len(&f["text"]) > 2000) {
                        return Some("invalid_blocks");
                    }
                }
            }
            Some("context") => {
                let elements = b["elements"].as_array()?;
                if elements.len() > 10 || elements.iter().any(|e| len(&e["text"]) > 2000) {
                    return Some("invalid_blocks");
                }
            }
            Some("actions") => {
                let elements = b["elements"].as_array()?;
                if elements.len() > 25 {
                    return Some("invalid_blocks");
                }
                for e in elements {
                    if len(&e["value"]) > 2000 || len(&e["text"]["text"]) > 75 {
                        return Some("invalid_blocks");
                    }
                    if let Some(id) = e["action_id"].as_str() {
                        if !action_ids.insert(id.to_owned()) {
                            return Some("invalid_blocks");
                        }
                    }
                }
            }
            Some("header") => {
                if len(&b["text"]["text"]) > 150 {
                    return Some("invalid_blocks");
                }
            }
            Some("divider") => {}
            _ => return Some("invalid_blocks"),
        }
    }
    None
}

fn channel_id(given: &str) -> String {
    match given.strip_prefix('#') {
        Some(name) => format!("C{}", name.to_uppercase().replace(['-', '_'], "")),
        None => given.to_owned(),
    }
}

fn slack_error(code: &str) -> Response {
    Json(json!({ "ok": false, "error": code })).into_response()
}

async fn api(
    State(inner): State<Arc<Inner>>,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(query, &headers, &body);
    let record = |error: Option<&str>, channel: Option<String>, ts: Option<String>| {
        inner.calls.lock().unwrap().push(Call {
            method: method.clone(),
            params: p.clone(),
            error: error.map(str::to_owned),
            channel,
            ts,
        });
    };
    if inner.down.load(Ordering::SeqCst) {
        record(Some("503"), None, None);
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let stalled = p["channel"]
        .as_str()
        .is_some_and(|c| inner.stalled_channels.lock().unwrap().contains(c));
    if stalled {
        record(Some("stalled"), None, None);
        std::future::pending::<()>().await;
    }
    if inner.stalled_methods.lock().unwrap().contains(&method) {
        record(Some("held"), None, None);
        while inner.stalled_methods.lock().unwrap().contains(&method) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    {
        let methods = inner.rate_limited_methods.lock().unwrap().clone();
        let applies = methods.is_empty() || methods.contains(&method);
        let mut limited = inner.rate_limited.lock().unwrap();
        if applies && limited.0 > 0 {
            limited.0 -= 1;
            let retry_after = limited.1;
            drop(limited);
            record(Some("ratelimited"), None, None);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", retry_after.to_string())],
                Json(json!({ "ok": false, "error": "ratelimited" })),
            )
                .into_response();
        }
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let token = auth.strip_prefix("Bearer ").unwrap_or_default();
    if token != BOT_TOKEN && !token.starts_with("xapp-") {
        record(Some("not_authed"), None, None);
        return slack_error("not_authed");
    }
    let failing = {
        let failing = inner.failing.lock().unwrap();
        let in_channel = format!(
            "{method} {}",
            channel_id(p["channel"].as_str().unwrap_or(""))
        );
        failing
            .get(&method)
            .or_else(|| failing.get(&in_channel))
            .cloned()
    };
    if let Some(code) = failing {
        record(Some(&code), None, None);
        return slack_error(&code);
    }
    let str_param = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
    match method.as_str() {
        "auth.test" => {
            record(None, None, None);
            let mut answer = json!({
                "ok": true, "url": "https://fake.slack.com/", "team": "Fake Workspace",
                "user": "passport", "team_id": TEAM, "user_id": "U0PASSPORT", "bot_id": "B0PASSPORT",
                "is_enterprise_install": false,
            });
            if let Some(e) = inner.enterprise.lock().unwrap().clone() {
                answer["enterprise_id"] = json!(e);
            }
            Json(answer).into_response()
        }
        "bots.info" => {
            if str_param("bot") != "B0PASSPORT" {
                record(Some("bot_not_found"), None, None);
                return slack_error("bot_not_found");
            }
            record(None, None, None);
            Json(json!({ "ok": true, "bot": {
                "id": "B0PASSPORT", "deleted": false, "name": "passport", "updated": 1_700_000_000,
                "app_id": APP, "user_id": "U0PASSPORT",
                "icons": { "image_36": "https://fake.slack.com/36.png" },
            } }))
            .into_response()
        }
        // The workspace's channels, and whether the bot is in each.
        "conversations.list" => {
            record(None, None, None);
            let channels: Vec<Value> = FAKE_CHANNELS
                .iter()
                .map(|(id, name, member)| json!({
                    "id": id, "name": name, "created": 1_700_000_000, "is_channel": true, "is_member": member,
                }))
                .collect();
            Json(json!({ "ok": true, "channels": channels, "response_metadata": { "next_cursor": "" } }))
                .into_response()
        }
        "conversations.info" => {
            let channel = str_param("channel");
            match FAKE_CHANNELS.iter().find(|(id, _, _)| *id == channel) {
                Some((id, name, member)) => {
                    record(None, None, None);
                    Json(json!({ "ok": true, "channel": {
                        "id": id, "name": name, "created": 1_700_000_000, "is_channel": true, "is_member": member,
                    } }))
                    .into_response()
                }
                None => {
                    record(Some("channel_not_found"), None, None);
                    slack_error("channel_not_found")
                }
            }
        }
        "chat.postMessage" => {
            let channel = str_param("channel");
            if channel.is_empty() {
                record(Some("channel_not_found"), None, None);
                return slack_error("channel_not_found");
            }
            if let Some(e) = limit_error(&p) {
                record(Some(e), None, None);
                return slack_error(e);
            }
            let channel = channel_id(&channel);
            let n = inner.next_ts.fetch_add(1, Ordering::SeqCst) + 1;
            let ts = format!("1700000000.{n:06}");
            inner
                .messages
                .lock()
                .unwrap()
                .insert((channel.clone(), ts.clone()));
            record(None, Some(channel.clone()), Some(ts.clone()));
            Json(json!({
                "ok": true,
                "channel": channel,
                "ts": ts,
                "message": { "ts": ts, "text": p["text"], "type": "message" },
            }))
            .into_response()
        }
        "chat.update" => {
            let (channel, ts) = (str_param("channel"), str_param("ts"));
            if !inner
                .messages
                .lock()
                .unwrap()
                .contains(&(channel.clone(), ts.clone()))
            {
                record(Some("message_not_found"), None, None);
                return slack_error("message_not_found");
            }
            if let Some(e) = limit_error(&p) {
                record(Some(e), None, None);
                return slack_error(e);
            }
            record(None, Some(channel.clone()), Some(ts.clone()));
            Json(json!({
                "ok": true, "channel": channel, "ts": ts,
                "message": { "text": p["text"] },
            }))
            .into_response()
        }
        // Form or JSON body with `channel` and `ts`; a message already deleted
        // (or never posted) is `message_not_found`, as Slack answers.
        "chat.delete" => {
            let (channel, ts) = (str_param("channel"), str_param("ts"));
            if !inner
                .messages
                .lock()
                .unwrap()
                .remove(&(channel.clone(), ts.clone()))
            {
                record(Some("message_not_found"), None, None);
                return slack_error("message_not_found");
            }
            record(None, Some(channel.clone()), Some(ts.clone()));
            Json(json!({ "ok": true, "channel": channel, "ts": ts })).into_response()
        }
        "chat.postEphemeral" => {
            if let Some(e) = limit_error(&p) {
                record(Some(e), None, None);
                return slack_error(e);
            }
            record(None, Some(str_param("channel")), None);
            Json(json!({ "ok": true, "message_ts": "1700000000.999999" })).into_response()
        }
        "conversations.open" => {
            let users = match &p["users"] {
                Value::Array(a) => a
                    .iter()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
                    .join(","),
                Value::String(s) => s.clone(),
                _ => String::new(),
            };
            if users.is_empty() || users.contains(',') {
                record(Some("invalid_users"), None, None);
                return slack_error("invalid_users");
            }
            record(None, None, None);
            Json(json!({ "ok": true, "channel": { "id": format!("D{users}") } })).into_response()
        }
        "users.info" => {
            let user = str_param("user");
            let name = inner.users.lock().unwrap().get(&user).cloned();
            match name {
                Some(name) => {
                    record(None, None, None);
                    Json(json!({
                        "ok": true,
                        "user": { "id": user, "name": name, "profile": { "display_name": name } },
                    }))
                    .into_response()
                }
                None => {
                    record(Some("user_not_found"), None, None);
                    slack_error("user_not_found")
                }
            }
        }
        "usergroups.users.list" => {
            let group = str_param("usergroup");
            let members = inner.usergroups.lock().unwrap().get(&group).cloned();
            match members {
                Some(users) => {
                    record(None, None, None);
                    Json(json!({ "ok": true, "users": users })).into_response()
                }
                None => {
                    record(Some("no_such_subteam"), None, None);
                    slack_error("no_such_subteam")
                }
            }
        }
        "apps.connections.open" => {
            if !token.starts_with("xapp-") {
                record(Some("not_allowed_token_type"), None, None);
                return slack_error("not_allowed_token_type");
            }
            record(None, None, None);
            let url = inner.socket_url.lock().unwrap().clone();
            Json(json!({ "ok": true, "url": url })).into_response()
        }
        "views.open" => {
            let view = &p["view"];
            if view["type"] != "modal" || view["blocks"].as_array().is_none_or(|b| b.len() > 100) {
                record(Some("invalid_arguments"), None, None);
                return slack_error("invalid_arguments");
            }
            record(None, None, None);
            let mut opened = view.clone();
            opened["id"] = json!("V0FAKE");
            opened["team_id"] = json!("T0TEAM");
            opened["hash"] = json!("1700000000.abcd");
            Json(json!({ "ok": true, "view": opened })).into_response()
        }
        _ => {
            record(Some("unknown_method"), None, None);
            slack_error("unknown_method")
        }
    }
}

async fn response_url(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(None, &headers, &body);
    let error = limit_error(&p);
    inner.calls.lock().unwrap().push(Call {
        method: "response_url".into(),
        params: p,
        error: error.map(str::to_owned),
        channel: Some(id),
        ts: None,
    });
    match error {
        Some(e) => (StatusCode::BAD_REQUEST, e).into_response(),
        None => (StatusCode::OK, "ok").into_response(),
    }
}

/// A Socket Mode server: says hello on each connection, sends what the test
/// queues, and records every message the client sends (its acknowledgements)
/// as a `socket.ack` call.
async fn socket_mode(listener: tokio::net::TcpListener, inner: Arc<Inner>) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
            continue;
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        *inner.socket_tx.lock().unwrap() = Some(tx);
        inner.socket_connections.fetch_add(1, Ordering::SeqCst);
        let hello = json!({ "type": "hello", "num_connections": 1, "connection_info": { "app_id": "A0PASSPORT" } });
        let _ = ws.send(Message::Text(hello.to_string().into())).await;
        let inner = inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    out = rx.recv() => match out {
                        Some(Some(text)) => {
                            if ws.send(Message::Text(text.into())).await.is_err() {
                                return;
                            }
                        }
                        _ => {
                            let _ = ws.close(None).await;
                            return;
                        }
                    },
                    incoming = ws.next() => match incoming {
                        Some(Ok(Message::Text(t))) => {
                            let params = serde_json::from_str(&t).unwrap_or(Value::Null);
                            inner.calls.lock().unwrap().push(Call {
                                method: "socket.ack".into(),
                                params,
                                error: None,
                                channel: None,
                                ts: None,
                            });
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                }
            }
        });
    }
}
