//! A fake Discord REST API (v10) on 127.0.0.1 that speaks Discord's HTTP
//! protocol the way serenity expects it: it records every call (messages
//! created, edited and deleted, threads started from messages, DM channels opened,
//! the bot's own user (`GET /users/@me`), channels looked up
//! (`GET /channels/{id}`, 403 `50001 Missing Access` for a channel the bot
//! cannot view), the guild's roles (`GET /guilds/{id}/roles`),
//! guild members looked up, application commands overwritten, interaction
//! callbacks, edits of the original interaction response and follow-ups),
//! refuses payloads over Discord's limits with Discord's error bodies
//! (`50035 Invalid Form Body` with the nested `errors` tree, `50006`, ...),
//! answers unknown channels, messages and members with Discord's 404 codes,
//! sends Discord's rate-limit headers, and can answer 429 the way Discord
//! does.
//!
//! Point serenity at it with
//! `HttpBuilder::new(BOT_TOKEN).proxy(fake.proxy()).ratelimiter_disabled(true)`:
//! serenity then sends `{base}/api/v10/...` with `Authorization: Bot <token>`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

pub const BOT_TOKEN: &str = "fake-discord-bot-token";
pub const BOT_USER_ID: &str = "1100000000000000001";
pub const APPLICATION_ID: &str = "1200000000000000001";
pub const GUILD_ID: &str = "1300000000000000001";
/// The channel the messages of interaction responses (the original response
/// and follow-ups) are said to be in.
pub const INTERACTION_CHANNEL_ID: &str = "1300000000000000002";
/// The bot's username, as Discord reports it in `author`.
pub const BOT_USERNAME: &str = "Passport";

/// The first snowflake the fake hands out (messages, DM channels, commands).
const FIRST_ID: u64 = 1_400_000_000_000_000_001;
/// `joined_at` of every member.
const JOINED_AT: &str = "2024-01-01T00:00:00.000000+00:00";
const MESSAGE_FLAG_HAS_THREAD: u64 = 1 << 5;
const MESSAGE_FLAG_LOADING: u64 = 1 << 7;
const MESSAGE_FLAG_COMPONENTS_V2: u64 = 1 << 15;
const THREAD_ARCHIVE_DURATIONS: [u64; 4] = [60, 1440, 4320, 10080];

/// One request the fake answered.
#[derive(Debug, Clone)]
pub struct Call {
    /// `create_message`, `edit_message`, `delete_message`, `start_thread`, `open_dm`,
    /// `get_me`, `get_channel`, `get_roles`, `get_member`, `put_guild_commands`, `put_global_commands`,
    /// `interaction_callback`, `edit_original`, `followup` or `unknown`.
    pub route: String,
    pub method: String,
    pub path: String,
    /// The channel of the path (for `open_dm`: the DM channel opened).
    pub channel: Option<String>,
    /// The id of the message created or edited (for `start_thread`: the
    /// message the thread was started from).
    pub message: Option<String>,
    /// The JSON body sent (`Null` when there was none).
    pub body: Value,
    pub status: u16,
    /// When the fake answered.
    pub at: Instant,
    /// For calls answered 429: the `retry_after` the fake asked for.
    pub retry_after: Option<Duration>,
}

impl Call {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The message part of the body: the body itself, or the `data` of an
    /// interaction callback.
    pub fn payload(&self) -> &Value {
        if self.route == "interaction_callback" {
            &self.body["data"]
        } else {
            &self.body
        }
    }

    pub fn content(&self) -> String {
        self.payload()["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn embeds(&self) -> Vec<Value> {
        self.payload()["embeds"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The component rows sent.
    pub fn components(&self) -> Vec<Value> {
        self.payload()["components"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every `custom_id` of the components sent (buttons and select menus),
    /// row by row.
    pub fn custom_ids(&self) -> Vec<String> {
        custom_ids_of(&self.payload()["components"])
    }

    /// All the text of the embeds sent (titles, descriptions, field names and
    /// values, footers, authors), one piece a line.
    pub fn embed_text(&self) -> String {
        embed_text_of(&self.payload()["embeds"])
    }

    /// Content and embed text together, for assertions that do not care
    /// where Passport put the words.
    pub fn all_text(&self) -> String {
        format!("{}\n{}", self.content(), self.embed_text())
    }
}

/// Every `custom_id` in a list of component rows.
pub fn custom_ids_of(components: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for row in components.as_array().into_iter().flatten() {
        if let Some(id) = row["custom_id"].as_str() {
            out.push(id.to_owned());
        }
        for c in row["components"].as_array().into_iter().flatten() {
            if let Some(id) = c["custom_id"].as_str() {
                out.push(id.to_owned());
            }
        }
    }
    out
}

/// The text of a list of embeds, one piece a line.
pub fn embed_text_of(embeds: &Value) -> String {
    let mut out = Vec::new();
    let mut push = |v: &Value| {
        if let Some(s) = v.as_str() {
            out.push(s.to_owned());
        }
    };
    for e in embeds.as_array().into_iter().flatten() {
        push(&e["author"]["name"]);
        push(&e["title"]);
        push(&e["description"]);
        for f in e["fields"].as_array().into_iter().flatten() {
            push(&f["name"]);
            push(&f["value"]);
        }
        push(&e["footer"]["text"]);
    }
    out.join("\n")
}

/// A call answered 429 and when the client tried again.
#[derive(Debug, Clone)]
pub struct RetryGap {
    pub route: String,
    pub path: String,
    /// The `retry_after` the fake asked for.
    pub retry_after: Duration,
    /// Time from the 429 to the next call to the same path, if there was one.
    pub gap: Option<Duration>,
}

impl RetryGap {
    /// The client retried, and not before `retry_after` had passed.
    pub fn waited(&self) -> bool {
        self.gap.is_some_and(|g| g >= self.retry_after)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelKind {
    Guild,
    Dm,
    Thread,
}

#[derive(Debug, Clone)]
struct Channel {
    kind: ChannelKind,
    /// Threads: the channel the thread's message is in.
    parent: Option<String>,
    /// DMs: the user.
    recipient: Option<String>,
    /// Threads: the name.
    name: String,
    auto_archive_duration: u64,
    created: String,
}

#[derive(Debug, Clone)]
struct Stored {
    channel: String,
    /// `content`, `embeds`, `components`, `flags`, `tts`, and when sent
    /// `nonce` and `message_reference`.
    body: Value,
    timestamp: String,
    edited: Option<String>,
    /// Sent through an interaction webhook.
    webhook: bool,
}

#[derive(Default)]
struct RateLimit {
    remaining: u32,
    secs: f64,
    /// Routes the 429s apply to; empty means every route.
    routes: Vec<String>,
}

#[derive(Default)]
struct Discord {
    calls: Vec<Call>,
    issued: u64,
    channels: HashMap<String, Channel>,
    messages: HashMap<String, Stored>,
    /// User id → DM channel id.
    dms: HashMap<String, String>,
    /// User id → (username, role ids).
    members: HashMap<String, (String, Vec<String>)>,
    /// Channels that exist but the bot may not view (no View Channel).
    hidden: HashSet<String>,
    /// The guild's roles besides `@everyone`, as (id, name), in position order.
    roles: Vec<(String, String)>,
    /// Last overwrite of the guild's commands, as sent.
    guild_commands: Vec<Value>,
    /// Last overwrite of the global commands, as sent.
    global_commands: Vec<Value>,
    /// (scope, type, name) → command id, kept across overwrites as Discord does.
    command_ids: HashMap<(String, u64, String), String>,
    /// Interactions already answered through the callback endpoint.
    acknowledged: HashSet<String>,
    /// Interaction token → id of the original response message.
    originals: HashMap<String, String>,
    rate_limit: RateLimit,
}

impl Discord {
    fn snowflake(&mut self) -> String {
        let id = FIRST_ID + self.issued;
        self.issued += 1;
        id.to_string()
    }

    fn is_dm(&self, channel: &str) -> bool {
        self.channels
            .get(channel)
            .is_some_and(|c| c.kind == ChannelKind::Dm)
    }

    fn username(&self, user: &str) -> String {
        self.members
            .get(user)
            .map_or_else(|| format!("user{user}"), |(name, _)| name.clone())
    }

    fn user_json(&self, user: &str) -> Value {
        json!({
            "id": user,
            "username": self.username(user),
            "discriminator": "0",
            "global_name": null,
            "avatar": null,
        })
    }

    fn last_message_in(&self, channel: &str) -> Option<String> {
        self.messages
            .iter()
            .filter(|(_, m)| m.channel == channel)
            .map(|(id, _)| id.clone())
            .max_by_key(|id| id.parse::<u64>().unwrap_or_default())
    }

    fn thread_json(&self, id: &str) -> Value {
        let t = &self.channels[id];
        let count = self.messages.values().filter(|m| m.channel == id).count();
        json!({
            "id": id,
            "type": 11,
            "guild_id": GUILD_ID,
            "parent_id": t.parent,
            "owner_id": BOT_USER_ID,
            "name": t.name,
            "last_message_id": self.last_message_in(id),
            "rate_limit_per_user": 0,
            "flags": 0,
            "message_count": count,
            "total_message_sent": count,
            "member_count": 1,
            "thread_metadata": {
                "archived": false,
                "auto_archive_duration": t.auto_archive_duration,
                "archive_timestamp": t.created,
                "locked": false,
                "create_timestamp": t.created,
            },
        })
    }

    fn dm_json(&self, id: &str) -> Value {
        let user = self.channels[id].recipient.clone().unwrap_or_default();
        json!({
            "id": id,
            "type": 1,
            "last_message_id": self.last_message_in(id),
            "flags": 0,
            "recipients": [self.user_json(&user)],
        })
    }

    fn member_json(&self, user: &str) -> Option<Value> {
        let (_, roles) = self.members.get(user)?;
        Some(json!({
            "user": self.user_json(user),
            "nick": null,
            "avatar": null,
            "banner": null,
            "roles": roles,
            "joined_at": JOINED_AT,
            "premium_since": null,
            "deaf": false,
            "mute": false,
            "flags": 0,
            "pending": false,
            "communication_disabled_until": null,
        }))
    }

    /// A guild text channel object, as `GET /channels/{id}` answers it.
    fn guild_channel_json(&self, id: &str) -> Value {
        let c = &self.channels[id];
        let position = self
            .channels
            .iter()
            .filter(|(other, o)| {
                o.kind == ChannelKind::Guild
                    && other.parse::<u64>().unwrap_or_default() < id.parse().unwrap_or_default()
            })
            .count();
        json!({
            "id": id,
            "type": 0,
            "guild_id": GUILD_ID,
            "name": c.name,
            "position": position,
            "permission_overwrites": [],
            "parent_id": null,
            "topic": null,
            "nsfw": false,
            "last_message_id": self.last_message_in(id),
            "rate_limit_per_user": 0,
            "flags": 0,
        })
    }

    /// The guild's role objects, `@everyone` (whose id is the guild's) first.
    fn roles_json(&self) -> Value {
        let everyone = (GUILD_ID.to_owned(), "@everyone".to_owned());
        let roles: Vec<Value> = std::iter::once(&everyone)
            .chain(&self.roles)
            .enumerate()
            .map(|(position, (id, name))| {
                json!({
                    "id": id,
                    "name": name,
                    "description": null,
                    "color": 0,
                    "colors": {
                        "primary_color": 0,
                        "secondary_color": null,
                        "tertiary_color": null,
                    },
                    "hoist": false,
                    "icon": null,
                    "unicode_emoji": null,
                    "position": position,
                    "permissions": "1071698660929",
                    "managed": false,
                    "mentionable": false,
                    "flags": 0,
                })
            })
            .collect();
        Value::Array(roles)
    }

    /// The full message object Discord answers with. `depth` limits how deep
    /// `referenced_message` goes (Discord gives one level).
    fn message_json(&self, id: &str, depth: u8) -> Value {
        let m = &self.messages[id];
        let body = &m.body;
        let thread = self
            .channels
            .get(id)
            .filter(|c| c.kind == ChannelKind::Thread)
            .map(|_| self.thread_json(id));
        let mut flags = body["flags"].as_u64().unwrap_or(0);
        if thread.is_some() {
            flags |= MESSAGE_FLAG_HAS_THREAD;
        }
        let embeds: Vec<Value> = body["embeds"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let mut e = e.clone();
                if let Some(obj) = e.as_object_mut() {
                    obj.entry("type").or_insert_with(|| json!("rich"));
                }
                e
            })
            .collect();
        let mut msg = json!({
            "id": id,
            "channel_id": m.channel,
            "author": {
                "id": BOT_USER_ID,
                "username": BOT_USERNAME,
                "discriminator": "0000",
                "global_name": null,
                "avatar": null,
                "bot": true,
            },
            "content": body["content"].as_str().unwrap_or_default(),
            "timestamp": m.timestamp,
            "edited_timestamp": m.edited,
            "tts": body["tts"].as_bool().unwrap_or(false),
            "mention_everyone": false,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": embeds,
            "components": body["components"].as_array().cloned().unwrap_or_default(),
            "pinned": false,
            "type": 0,
            "flags": flags,
        });
        if !self.is_dm(&m.channel) {
            msg["guild_id"] = json!(GUILD_ID);
        }
        if let Some(t) = thread {
            msg["thread"] = t;
        }
        if m.webhook {
            msg["webhook_id"] = json!(APPLICATION_ID);
            msg["application_id"] = json!(APPLICATION_ID);
        }
        if !body["nonce"].is_null() {
            msg["nonce"] = body["nonce"].clone();
        }
        let reference = &body["message_reference"];
        if reference.is_object() {
            let kind = reference["type"].as_u64().unwrap_or(0);
            let target = id_str(&reference["message_id"]);
            let channel = id_str(&reference["channel_id"]).unwrap_or_else(|| m.channel.clone());
            let mut r = json!({ "type": kind, "message_id": target, "channel_id": channel });
            if !self.is_dm(&channel) {
                r["guild_id"] = json!(GUILD_ID);
            }
            msg["message_reference"] = r;
            if kind == 0 {
                // A reply.
                msg["type"] = json!(19);
                msg["referenced_message"] = match target {
                    Some(t) if depth > 0 && t != id && self.messages.contains_key(&t) => {
                        self.message_json(&t, depth - 1)
                    }
                    _ => Value::Null,
                };
            }
        }
        msg
    }
}

/// A fake Discord REST API.
#[derive(Clone)]
pub struct FakeDiscord {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    inner: Arc<Mutex<Discord>>,
}

impl FakeDiscord {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Discord::default()));
        let router = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { base, inner }
    }

    fn lock(&self) -> MutexGuard<'_, Discord> {
        self.inner.lock().unwrap()
    }

    /// `http://127.0.0.1:PORT/api`, the stem of the REST API.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.base)
    }

    /// What to give serenity's `HttpBuilder::proxy`.
    pub fn proxy(&self) -> String {
        self.base.clone()
    }

    /// Makes `id` a guild text channel the bot can post in.
    pub fn add_channel(&self, id: &str) {
        self.lock().channels.insert(
            id.to_owned(),
            Channel {
                kind: ChannelKind::Guild,
                parent: None,
                recipient: None,
                name: format!("channel-{id}"),
                auto_archive_duration: 1440,
                created: now_rfc3339(),
            },
        );
    }

    /// Makes `id` a guild text channel the bot may not view: Discord answers
    /// 403 `50001 Missing Access` to reading it or posting in it.
    pub fn add_hidden_channel(&self, id: &str) {
        self.add_channel(id);
        self.lock().hidden.insert(id.to_owned());
    }

    /// Adds a role to the guild.
    pub fn add_role(&self, id: &str, name: &str) {
        self.lock().roles.push((id.to_owned(), name.to_owned()));
    }

    /// Makes `id` a member of the guild with these role ids.
    pub fn add_member(&self, id: &str, username: &str, roles: &[&str]) {
        self.lock().members.insert(
            id.to_owned(),
            (
                username.to_owned(),
                roles.iter().map(|r| (*r).to_owned()).collect(),
            ),
        );
    }

    /// Replaces the roles of a member added with [`FakeDiscord::add_member`].
    pub fn set_member_roles(&self, id: &str, roles: &[&str]) {
        let mut d = self.lock();
        let member = d.members.get_mut(id).expect("no such member");
        member.1 = roles.iter().map(|r| (*r).to_owned()).collect();
    }

    /// Answers the next `calls` requests with 429 and `retry_after_secs`.
    pub fn rate_limit_next(&self, calls: u32, retry_after_secs: f64) {
        self.rate_limit_next_of(&[], calls, retry_after_secs);
    }

    /// Like [`FakeDiscord::rate_limit_next`], counting only requests to
    /// `routes` (route names as in [`Call::route`]).
    pub fn rate_limit_next_of(&self, routes: &[&str], calls: u32, retry_after_secs: f64) {
        self.lock().rate_limit = RateLimit {
            remaining: calls,
            secs: retry_after_secs,
            routes: routes.iter().map(|r| (*r).to_owned()).collect(),
        };
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Successful calls of `route`, in order.
    pub fn ok_calls(&self, route: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.route == route && c.ok())
            .collect()
    }

    /// Calls the fake refused (4xx), in order.
    pub fn errors(&self) -> Vec<Call> {
        self.calls().into_iter().filter(|c| !c.ok()).collect()
    }

    /// Forgets the calls (not the channels, messages, members or threads).
    pub fn clear(&self) {
        self.lock().calls.clear();
    }

    /// Messages created in `channel`, in order.
    pub fn posts_in(&self, channel: &str) -> Vec<Call> {
        self.ok_calls("create_message")
            .into_iter()
            .filter(|c| c.channel.as_deref() == Some(channel))
            .collect()
    }

    /// Contents posted in the thread started from `message_id`, in order.
    pub fn thread(&self, message_id: &str) -> Vec<String> {
        self.posts_in(message_id)
            .into_iter()
            .map(|c| c.content())
            .collect()
    }

    pub fn has_thread(&self, message_id: &str) -> bool {
        self.lock()
            .channels
            .get(message_id)
            .is_some_and(|c| c.kind == ChannelKind::Thread)
    }

    /// The name of the thread started from `message_id`.
    pub fn thread_name(&self, message_id: &str) -> Option<String> {
        self.lock()
            .channels
            .get(message_id)
            .filter(|c| c.kind == ChannelKind::Thread)
            .map(|c| c.name.clone())
    }

    /// Successful edits of `message_id`, in order.
    pub fn edits(&self, message_id: &str) -> Vec<Call> {
        self.ok_calls("edit_message")
            .into_iter()
            .filter(|c| c.message.as_deref() == Some(message_id))
            .collect()
    }

    /// Messages deleted, as (channel, message id), in order.
    pub fn deleted(&self) -> Vec<(String, String)> {
        self.ok_calls("delete_message")
            .into_iter()
            .filter_map(|c| Some((c.channel?, c.message?)))
            .collect()
    }

    /// Whether the message `id` exists (was posted, not deleted).
    pub fn message_exists(&self, id: &str) -> bool {
        self.lock().messages.contains_key(id)
    }

    /// Removes a message as its reader would, without a call being recorded.
    pub fn remove_message(&self, id: &str) {
        self.lock().messages.remove(id);
    }

    /// The DM channel opened for `user_id`, if one was.
    pub fn dm_channel(&self, user_id: &str) -> Option<String> {
        self.lock().dms.get(user_id).cloned()
    }

    /// Contents of the messages posted to `user_id`'s DM channel, in order.
    pub fn dms(&self, user_id: &str) -> Vec<String> {
        self.dm_calls(user_id)
            .into_iter()
            .map(|c| c.content())
            .collect()
    }

    /// Messages posted to `user_id`'s DM channel, in order.
    pub fn dm_calls(&self, user_id: &str) -> Vec<Call> {
        match self.dm_channel(user_id) {
            Some(channel) => self.posts_in(&channel),
            None => Vec::new(),
        }
    }

    /// The guild's command list as last registered (as sent).
    pub fn commands(&self) -> Vec<Value> {
        self.lock().guild_commands.clone()
    }

    /// The global command list as last registered (as sent).
    pub fn global_commands(&self) -> Vec<Value> {
        self.lock().global_commands.clone()
    }

    /// Accepted interaction callbacks, in order.
    pub fn callbacks(&self) -> Vec<Call> {
        self.ok_calls("interaction_callback")
    }

    /// Accepted edits of original interaction responses, in order.
    pub fn original_edits(&self) -> Vec<Call> {
        self.ok_calls("edit_original")
    }

    /// Accepted follow-up messages, in order.
    pub fn followups(&self) -> Vec<Call> {
        self.ok_calls("followup")
    }

    /// `{content, embeds, components, flags}` of a message as it is now,
    /// after every edit.
    pub fn message_body(&self, id: &str) -> Option<Value> {
        let d = self.lock();
        let m = d.messages.get(id)?;
        Some(json!({
            "content": m.body["content"],
            "embeds": m.body["embeds"],
            "components": m.body["components"],
            "flags": m.body["flags"],
        }))
    }

    /// The full message object Discord would give for `id` now.
    pub fn message_json(&self, id: &str) -> Option<Value> {
        let d = self.lock();
        d.messages.contains_key(id).then(|| d.message_json(id, 1))
    }

    /// The id of the original response message of the interaction with
    /// `token`, once there is one.
    pub fn original_message(&self, token: &str) -> Option<String> {
        self.lock().originals.get(token).cloned()
    }

    /// For each call answered 429: how long until the next call to the same
    /// path (same route and channel, or same message, or same interaction).
    pub fn retry_gaps(&self) -> Vec<RetryGap> {
        let calls = self.calls();
        calls
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let retry_after = c.retry_after?;
                let next = calls[i + 1..]
                    .iter()
                    .find(|n| n.method == c.method && n.path == c.path);
                Some(RetryGap {
                    route: c.route.clone(),
                    path: c.path.clone(),
                    retry_after,
                    gap: next.map(|n| n.at.duration_since(c.at)),
                })
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Routing

#[derive(Debug, Clone)]
enum Route {
    CreateMessage { channel: String },
    EditMessage { channel: String, message: String },
    DeleteMessage { channel: String, message: String },
    StartThread { channel: String, message: String },
    OpenDm,
    GetMe,
    GetChannel { channel: String },
    GetRoles { guild: String },
    GetMember { guild: String, user: String },
    PutGuildCommands { app: String, guild: String },
    PutGlobalCommands { app: String },
    InteractionCallback { id: String, token: String },
    EditOriginal { app: String, token: String },
    Followup { app: String, token: String },
    Unknown,
}

impl Route {
    fn parse(method: &Method, path: &str) -> Self {
        let Some(rest) = path.strip_prefix("/api/v10/") else {
            return Self::Unknown;
        };
        let rest = rest.replace("%40", "@");
        let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let s = |x: &&str| (*x).to_owned();
        match (method.as_str(), segs.as_slice()) {
            ("POST", ["channels", c, "messages"]) => Self::CreateMessage { channel: s(c) },
            ("PATCH", ["channels", c, "messages", m]) => Self::EditMessage {
                channel: s(c),
                message: s(m),
            },
            ("DELETE", ["channels", c, "messages", m]) => Self::DeleteMessage {
                channel: s(c),
                message: s(m),
            },
            ("POST", ["channels", c, "messages", m, "threads"]) => Self::StartThread {
                channel: s(c),
                message: s(m),
            },
            ("POST", ["users", "@me", "channels"]) => Self::OpenDm,
            ("GET", ["users", "@me"]) => Self::GetMe,
            ("GET", ["channels", c]) => Self::GetChannel { channel: s(c) },
            ("GET", ["guilds", g, "roles"]) => Self::GetRoles { guild: s(g) },
            ("GET", ["guilds", g, "members", u]) => Self::GetMember {
                guild: s(g),
                user: s(u),
            },
            ("PUT", ["applications", a, "guilds", g, "commands"]) => Self::PutGuildCommands {
                app: s(a),
                guild: s(g),
            },
            ("PUT", ["applications", a, "commands"]) => Self::PutGlobalCommands { app: s(a) },
            ("POST", ["interactions", i, t, "callback"]) => Self::InteractionCallback {
                id: s(i),
                token: s(t),
            },
            ("PATCH", ["webhooks", a, t, "messages", "@original"]) => Self::EditOriginal {
                app: s(a),
                token: s(t),
            },
            ("POST", ["webhooks", a, t]) => Self::Followup {
                app: s(a),
                token: s(t),
            },
            _ => Self::Unknown,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::CreateMessage { .. } => "create_message",
            Self::EditMessage { .. } => "edit_message",
            Self::DeleteMessage { .. } => "delete_message",
            Self::StartThread { .. } => "start_thread",
            Self::OpenDm => "open_dm",
            Self::GetMe => "get_me",
            Self::GetChannel { .. } => "get_channel",
            Self::GetRoles { .. } => "get_roles",
            Self::GetMember { .. } => "get_member",
            Self::PutGuildCommands { .. } => "put_guild_commands",
            Self::PutGlobalCommands { .. } => "put_global_commands",
            Self::InteractionCallback { .. } => "interaction_callback",
            Self::EditOriginal { .. } => "edit_original",
            Self::Followup { .. } => "followup",
            Self::Unknown => "unknown",
        }
    }

    fn channel(&self) -> Option<String> {
        match self {
            Self::CreateMessage { channel }
            | Self::EditMessage { channel, .. }
            | Self::DeleteMessage { channel, .. }
            | Self::StartThread { channel, .. }
            | Self::GetChannel { channel } => Some(channel.clone()),
            _ => None,
        }
    }

    fn message(&self) -> Option<String> {
        match self {
            Self::EditMessage { message, .. }
            | Self::DeleteMessage { message, .. }
            | Self::StartThread { message, .. } => Some(message.clone()),
            _ => None,
        }
    }

    /// Interaction webhooks: Discord authenticates them by the token in the
    /// path, so a request without `Authorization` is fine there.
    fn is_webhook(&self) -> bool {
        matches!(
            self,
            Self::InteractionCallback { .. } | Self::EditOriginal { .. } | Self::Followup { .. }
        )
    }
}

/// What a route handler decided.
struct Outcome {
    status: u16,
    /// `None` for 204.
    body: Option<Value>,
    channel: Option<String>,
    message: Option<String>,
}

impl Outcome {
    fn ok(body: Value) -> Self {
        Self {
            status: 200,
            body: Some(body),
            channel: None,
            message: None,
        }
    }

    fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
            channel: None,
            message: None,
        }
    }

    fn error(status: u16, code: u64, message: &str) -> Self {
        Self {
            status,
            body: Some(json!({ "code": code, "message": message })),
            channel: None,
            message: None,
        }
    }

    fn channel(mut self, channel: &str) -> Self {
        self.channel = Some(channel.to_owned());
        self
    }

    fn message(mut self, message: &str) -> Self {
        self.message = Some(message.to_owned());
        self
    }
}

fn unknown_channel() -> Outcome {
    Outcome::error(404, 10003, "Unknown Channel")
}

fn unknown_message() -> Outcome {
    Outcome::error(404, 10008, "Unknown Message")
}

fn unknown_webhook() -> Outcome {
    Outcome::error(404, 10015, "Unknown Webhook")
}

fn empty_message() -> Outcome {
    Outcome::error(400, 50006, "Cannot send an empty message")
}

fn missing_access() -> Outcome {
    Outcome::error(403, 50001, "Missing Access")
}

async fn handle(
    State(inner): State<Arc<Mutex<Discord>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(&inner, &method, uri.path(), &headers, &body)
}

fn serve(
    inner: &Mutex<Discord>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    raw: &Bytes,
) -> Response {
    let route = Route::parse(method, path);
    let name = route.name();
    let parsed = parse_body(headers, raw);
    let mut d = inner.lock().unwrap();
    let record = |d: &mut Discord, o: &Outcome, retry_after: Option<Duration>| {
        d.calls.push(Call {
            route: name.to_owned(),
            method: method.to_string(),
            path: path.to_owned(),
            channel: o.channel.clone().or_else(|| route.channel()),
            message: o.message.clone().or_else(|| route.message()),
            body: parsed.clone().unwrap_or(Value::Null),
            status: o.status,
            at: Instant::now(),
            retry_after,
        });
    };

    if matches!(route, Route::Unknown) {
        let o = Outcome::error(404, 0, "404: Not Found");
        record(&mut d, &o, None);
        return respond(&o, name);
    }

    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let authorized = match auth {
        Some(a) => a == format!("Bot {BOT_TOKEN}"),
        None => route.is_webhook(),
    };
    if !authorized {
        let o = Outcome::error(401, 0, "401: Unauthorized");
        record(&mut d, &o, None);
        return respond(&o, name);
    }

    let limited = d.rate_limit.remaining > 0
        && (d.rate_limit.routes.is_empty() || d.rate_limit.routes.iter().any(|r| r == name));
    if limited {
        d.rate_limit.remaining -= 1;
        let secs = d.rate_limit.secs;
        let o = Outcome {
            status: 429,
            body: None,
            channel: None,
            message: None,
        };
        record(&mut d, &o, Some(Duration::from_secs_f64(secs)));
        return too_many_requests(secs, name);
    }

    let Some(body) = parsed.clone() else {
        let o = Outcome::error(400, 50109, "The request body contains invalid JSON.");
        record(&mut d, &o, None);
        return respond(&o, name);
    };

    let o = match &route {
        Route::CreateMessage { channel } => create_message(&mut d, channel, &body),
        Route::EditMessage { channel, message } => edit_message(&mut d, channel, message, &body),
        Route::DeleteMessage { channel, message } => delete_message(&mut d, channel, message),
        Route::StartThread { channel, message } => start_thread(&mut d, channel, message, &body),
        Route::OpenDm => open_dm(&mut d, &body),
        // The bot's own user, as Discord answers it for a bot token.
        Route::GetMe => Outcome::ok(json!({
            "id": APPLICATION_ID, "username": "passport", "discriminator": "0",
            "global_name": null, "avatar": null, "bot": true,
        })),
        Route::GetChannel { channel } => get_channel(&d, channel),
        Route::GetRoles { guild } => get_roles(&d, guild),
        Route::GetMember { guild, user } => get_member(&d, guild, user),
        Route::PutGuildCommands { app, guild } => {
            put_commands(&mut d, app, Some(guild.as_str()), &body)
        }
        Route::PutGlobalCommands { app } => put_commands(&mut d, app, None, &body),
        Route::InteractionCallback { id, token } => interaction_callback(&mut d, id, token, &body),
        Route::EditOriginal { app, token } => edit_original(&mut d, app, token, &body),
        Route::Followup { app, token } => followup(&mut d, app, token, &body),
        Route::Unknown => unreachable!(),
    };
    record(&mut d, &o, None);
    respond(&o, name)
}

// ---------------------------------------------------------------------------
// Routes

fn create_message(d: &mut Discord, channel: &str, body: &Value) -> Outcome {
    if !d.channels.contains_key(channel) {
        return unknown_channel();
    }
    if d.hidden.contains(channel) {
        return missing_access();
    }
    let mut errs = FormErrors::default();
    check_message(body, &mut errs);
    if let Some(o) = errs.outcome() {
        return o;
    }
    if is_empty(body) {
        return empty_message();
    }
    let id = d.snowflake();
    d.messages.insert(
        id.clone(),
        Stored {
            channel: channel.to_owned(),
            body: stored_body(body),
            timestamp: now_rfc3339(),
            edited: None,
            webhook: false,
        },
    );
    Outcome::ok(d.message_json(&id, 1))
        .channel(channel)
        .message(&id)
}

fn edit_message(d: &mut Discord, channel: &str, message: &str, body: &Value) -> Outcome {
    if !d.channels.contains_key(channel) {
        return unknown_channel();
    }
    let Some(stored) = d.messages.get(message).filter(|m| m.channel == channel) else {
        return unknown_message();
    };
    let mut errs = FormErrors::default();
    check_message(body, &mut errs);
    if let Some(o) = errs.outcome() {
        return o;
    }
    let merged = merge(&stored.body, body);
    if is_empty(&merged) {
        return empty_message();
    }
    let stored = d.messages.get_mut(message).unwrap();
    stored.body = merged;
    stored.edited = Some(now_rfc3339());
    Outcome::ok(d.message_json(message, 1))
        .channel(channel)
        .message(message)
}

/// `DELETE /channels/{channel}/messages/{message}`: 204 No Content, or 404
/// `10008 Unknown Message` when it is gone already (or in another channel).
fn delete_message(d: &mut Discord, channel: &str, message: &str) -> Outcome {
    if !d.channels.contains_key(channel) {
        return unknown_channel();
    }
    if d.messages.get(message).is_none_or(|m| m.channel != channel) {
        return unknown_message();
    }
    d.messages.remove(message);
    Outcome::no_content().channel(channel).message(message)
}

fn start_thread(d: &mut Discord, channel: &str, message: &str, body: &Value) -> Outcome {
    let Some(parent) = d.channels.get(channel) else {
        return unknown_channel();
    };
    if d.messages.get(message).is_none_or(|m| m.channel != channel) {
        return unknown_message();
    }
    if parent.kind != ChannelKind::Guild {
        return Outcome::error(400, 50024, "Cannot execute action on this channel type");
    }
    let mut errs = FormErrors::default();
    bad_length(&mut errs, &["name"], &body["name"], 1, 100);
    let duration = &body["auto_archive_duration"];
    if !duration.is_null()
        && !duration
            .as_u64()
            .is_some_and(|v| THREAD_ARCHIVE_DURATIONS.contains(&v))
    {
        errs.add(
            &["auto_archive_duration"],
            "BASE_TYPE_CHOICES",
            "Value must be one of {60, 1440, 4320, 10080}.",
        );
    }
    if let Some(o) = errs.outcome() {
        return o;
    }
    if d.channels.contains_key(message) {
        return Outcome::error(
            400,
            160_004,
            "A thread has already been created for this message",
        );
    }
    let auto_archive_duration = duration.as_u64().unwrap_or(parent.auto_archive_duration);
    d.channels.insert(
        message.to_owned(),
        Channel {
            kind: ChannelKind::Thread,
            parent: Some(channel.to_owned()),
            recipient: None,
            name: body["name"].as_str().unwrap_or_default().to_owned(),
            auto_archive_duration,
            created: now_rfc3339(),
        },
    );
    Outcome::ok(d.thread_json(message))
        .channel(channel)
        .message(message)
}

fn open_dm(d: &mut Discord, body: &Value) -> Outcome {
    let mut errs = FormErrors::default();
    let user = id_str(&body["recipient_id"]);
    match &user {
        None => errs.add(
            &["recipient_id"],
            "BASE_TYPE_REQUIRED",
            "This field is required",
        ),
        Some(u) if !is_snowflake(u) => errs.add(
            &["recipient_id"],
            "NUMBER_TYPE_COERCE",
            format!("Value \"{u}\" is not snowflake."),
        ),
        Some(_) => {}
    }
    if let Some(o) = errs.outcome() {
        return o;
    }
    let user = user.unwrap();
    let channel = match d.dms.get(&user) {
        Some(c) => c.clone(),
        None => {
            let c = d.snowflake();
            d.dms.insert(user.clone(), c.clone());
            d.channels.insert(
                c.clone(),
                Channel {
                    kind: ChannelKind::Dm,
                    parent: None,
                    recipient: Some(user.clone()),
                    name: String::new(),
                    auto_archive_duration: 0,
                    created: now_rfc3339(),
                },
            );
            c
        }
    };
    Outcome::ok(d.dm_json(&channel)).channel(&channel)
}

/// `GET /channels/{id}`: the channel object of its kind, 404 `10003 Unknown
/// Channel` when there is none, 403 `50001 Missing Access` when the bot may
/// not view it.
fn get_channel(d: &Discord, channel: &str) -> Outcome {
    let Some(c) = d.channels.get(channel) else {
        return unknown_channel();
    };
    if d.hidden.contains(channel) {
        return missing_access();
    }
    Outcome::ok(match c.kind {
        ChannelKind::Guild => d.guild_channel_json(channel),
        ChannelKind::Dm => d.dm_json(channel),
        ChannelKind::Thread => d.thread_json(channel),
    })
}

/// `GET /guilds/{id}/roles`: every role of the guild, `@everyone` included.
fn get_roles(d: &Discord, guild: &str) -> Outcome {
    if guild != GUILD_ID {
        return Outcome::error(404, 10004, "Unknown Guild");
    }
    Outcome::ok(d.roles_json())
}

fn get_member(d: &Discord, guild: &str, user: &str) -> Outcome {
    if guild != GUILD_ID {
        return Outcome::error(404, 10004, "Unknown Guild");
    }
    match d.member_json(user) {
        Some(m) => Outcome::ok(m),
        None => Outcome::error(404, 10007, "Unknown Member"),
    }
}

fn put_commands(d: &mut Discord, app: &str, guild: Option<&str>, body: &Value) -> Outcome {
    if app != APPLICATION_ID {
        return missing_access();
    }
    if guild.is_some_and(|g| g != GUILD_ID) {
        return missing_access();
    }
    let mut errs = FormErrors::default();
    let Some(commands) = body.as_array() else {
        errs.add(&[], "BASE_TYPE_ARRAY", "Must be an array.");
        return errs.outcome().unwrap();
    };
    if commands.len() > 100 {
        errs.add(
            &[],
            "BASE_TYPE_MAX_LENGTH",
            "Must be 100 or fewer in length.",
        );
    }
    let mut names = HashSet::new();
    for (i, c) in commands.iter().enumerate() {
        let i = i.to_string();
        check_command(c, &i, &mut errs);
        let kind = c["type"].as_u64().unwrap_or(1);
        if let Some(name) = c["name"].as_str() {
            if !names.insert((kind, name.to_owned())) {
                errs.add(
                    &[&i, "name"],
                    "APPLICATION_COMMANDS_DUPLICATE_NAME",
                    "Application command names must be unique",
                );
            }
        }
    }
    if let Some(o) = errs.outcome() {
        return o;
    }
    let scope = guild.map(str::to_owned).unwrap_or_default();
    let mut answered = Vec::new();
    for c in commands {
        let kind = c["type"].as_u64().unwrap_or(1);
        let name = c["name"].as_str().unwrap_or_default().to_owned();
        let key = (scope.clone(), kind, name);
        let id = match d.command_ids.get(&key) {
            Some(id) => id.clone(),
            None => {
                let id = d.snowflake();
                d.command_ids.insert(key, id.clone());
                id
            }
        };
        let version = d.snowflake();
        let mut out = c.clone();
        let obj = out.as_object_mut().unwrap();
        obj.insert("id".into(), json!(id));
        obj.insert("application_id".into(), json!(APPLICATION_ID));
        obj.insert("version".into(), json!(version));
        obj.insert("type".into(), json!(kind));
        obj.entry("description").or_insert_with(|| json!(""));
        obj.entry("default_member_permissions")
            .or_insert(Value::Null);
        obj.entry("nsfw").or_insert(json!(false));
        obj.entry("integration_types").or_insert(json!([0]));
        obj.entry("contexts").or_insert(Value::Null);
        if let Some(g) = guild {
            obj.insert("guild_id".into(), json!(g));
        }
        answered.push(out);
    }
    if guild.is_some() {
        d.guild_commands.clone_from(commands);
    } else {
        d.global_commands.clone_from(commands);
    }
    Outcome::ok(Value::Array(answered))
}

fn interaction_callback(d: &mut Discord, id: &str, token: &str, body: &Value) -> Outcome {
    if d.acknowledged.contains(id) {
        return Outcome::error(400, 40060, "Interaction has already been acknowledged.");
    }
    let mut errs = FormErrors::default();
    let data = &body["data"];
    let kind = body["type"].as_u64();
    match kind {
        Some(4 | 7) => {
            errs.prefix = vec!["data".into()];
            check_message(data, &mut errs);
            if errs.is_empty() && kind == Some(4) && is_empty(data) {
                return empty_message();
            }
        }
        Some(9) => {
            errs.prefix = vec!["data".into()];
            required_max(&mut errs, &["custom_id"], &data["custom_id"], 100);
            required_max(&mut errs, &["title"], &data["title"], 45);
            match data["components"].as_array() {
                None => errs.add(
                    &["components"],
                    "BASE_TYPE_REQUIRED",
                    "This field is required",
                ),
                Some(rows) if rows.is_empty() || rows.len() > 5 => errs.add(
                    &["components"],
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 5 in length.",
                ),
                Some(_) => {}
            }
        }
        Some(1 | 5 | 6 | 8 | 10 | 12) => {}
        _ => errs.add(
            &["type"],
            "BASE_TYPE_CHOICES",
            "Value must be one of {1, 4, 5, 6, 7, 8, 9, 10, 12}.",
        ),
    }
    if let Some(o) = errs.outcome() {
        return o;
    }
    d.acknowledged.insert(id.to_owned());
    match kind {
        Some(4) => {
            let msg = d.snowflake();
            d.messages.insert(
                msg.clone(),
                Stored {
                    channel: INTERACTION_CHANNEL_ID.to_owned(),
                    body: stored_body(data),
                    timestamp: now_rfc3339(),
                    edited: None,
                    webhook: true,
                },
            );
            d.originals.insert(token.to_owned(), msg.clone());
            Outcome::no_content().message(&msg)
        }
        Some(5) => {
            let msg = d.snowflake();
            let mut body = stored_body(&json!({}));
            body["flags"] = json!(data["flags"].as_u64().unwrap_or(0) | MESSAGE_FLAG_LOADING);
            d.messages.insert(
                msg.clone(),
                Stored {
                    channel: INTERACTION_CHANNEL_ID.to_owned(),
                    body,
                    timestamp: now_rfc3339(),
                    edited: None,
                    webhook: true,
                },
            );
            d.originals.insert(token.to_owned(), msg.clone());
            Outcome::no_content().message(&msg)
        }
        _ => Outcome::no_content(),
    }
}

fn edit_original(d: &mut Discord, app: &str, token: &str, body: &Value) -> Outcome {
    if app != APPLICATION_ID {
        return unknown_webhook();
    }
    let mut errs = FormErrors::default();
    check_message(body, &mut errs);
    if let Some(o) = errs.outcome() {
        return o;
    }
    let existing = d
        .originals
        .get(token)
        .and_then(|id| d.messages.get(id))
        .map(|m| m.body.clone());
    let mut merged = merge(&existing.unwrap_or_else(|| stored_body(&json!({}))), body);
    let flags = merged["flags"].as_u64().unwrap_or(0) & !MESSAGE_FLAG_LOADING;
    merged["flags"] = json!(flags);
    if is_empty(&merged) {
        return empty_message();
    }
    let id = match d.originals.get(token) {
        Some(id) => id.clone(),
        None => {
            let id = d.snowflake();
            d.originals.insert(token.to_owned(), id.clone());
            d.messages.insert(
                id.clone(),
                Stored {
                    channel: INTERACTION_CHANNEL_ID.to_owned(),
                    body: Value::Null,
                    timestamp: now_rfc3339(),
                    edited: None,
                    webhook: true,
                },
            );
            id
        }
    };
    let stored = d.messages.get_mut(&id).unwrap();
    stored.body = merged;
    stored.edited = Some(now_rfc3339());
    Outcome::ok(d.message_json(&id, 1)).message(&id)
}

fn followup(d: &mut Discord, app: &str, _token: &str, body: &Value) -> Outcome {
    if app != APPLICATION_ID {
        return unknown_webhook();
    }
    let mut errs = FormErrors::default();
    check_message(body, &mut errs);
    if let Some(o) = errs.outcome() {
        return o;
    }
    if is_empty(body) {
        return empty_message();
    }
    let id = d.snowflake();
    d.messages.insert(
        id.clone(),
        Stored {
            channel: INTERACTION_CHANNEL_ID.to_owned(),
            body: stored_body(body),
            timestamp: now_rfc3339(),
            edited: None,
            webhook: true,
        },
    );
    Outcome::ok(d.message_json(&id, 1)).message(&id)
}

// ---------------------------------------------------------------------------
// Discord's limits

/// Discord's `errors` tree of a 50035 answer: `{"embeds": {"0": {"title":
/// {"_errors": [{"code": ..., "message": ...}]}}}}`.
#[derive(Default)]
struct FormErrors {
    /// Where in the body the checked object sits (`data` of a callback).
    prefix: Vec<String>,
    tree: Map<String, Value>,
}

impl FormErrors {
    fn add(&mut self, path: &[&str], code: &str, message: impl Into<String>) {
        let mut node = &mut self.tree;
        for seg in self
            .prefix
            .iter()
            .map(String::as_str)
            .chain(path.iter().copied())
        {
            node = node
                .entry(seg.to_owned())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .unwrap();
        }
        node.entry("_errors")
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .unwrap()
            .push(json!({ "code": code, "message": message.into() }));
    }

    fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    fn outcome(self) -> Option<Outcome> {
        if self.tree.is_empty() {
            return None;
        }
        Some(Outcome {
            status: 400,
            body: Some(json!({
                "code": 50035,
                "message": "Invalid Form Body",
                "errors": self.tree,
            })),
            channel: None,
            message: None,
        })
    }
}

fn len(v: &Value) -> usize {
    v.as_str().map_or(0, |s| s.chars().count())
}

fn max_len(errs: &mut FormErrors, path: &[&str], v: &Value, max: usize) {
    if len(v) > max {
        errs.add(
            path,
            "BASE_TYPE_MAX_LENGTH",
            format!("Must be {max} or fewer in length."),
        );
    }
}

/// A string that must be there, non-empty, and at most `max` characters.
fn required_max(errs: &mut FormErrors, path: &[&str], v: &Value, max: usize) {
    if len(v) == 0 {
        errs.add(path, "BASE_TYPE_REQUIRED", "This field is required");
    } else {
        max_len(errs, path, v, max);
    }
}

fn bad_length(errs: &mut FormErrors, path: &[&str], v: &Value, min: usize, max: usize) {
    if v.is_null() {
        errs.add(path, "BASE_TYPE_REQUIRED", "This field is required");
    } else if !(min..=max).contains(&len(v)) {
        errs.add(
            path,
            "BASE_TYPE_BAD_LENGTH",
            format!("Must be between {min} and {max} in length."),
        );
    }
}

fn max_items(errs: &mut FormErrors, path: &[&str], items: &[Value], max: usize) {
    if items.len() > max {
        errs.add(
            path,
            "BASE_TYPE_MAX_LENGTH",
            format!("Must be {max} or fewer in length."),
        );
    }
}

/// Checks the message fields present in `body` against Discord's limits.
fn check_message(body: &Value, errs: &mut FormErrors) {
    let content = &body["content"];
    if !content.is_null() && !content.is_string() {
        errs.add(
            &["content"],
            "STRING_TYPE_CONVERT",
            "Could not interpret value as string.",
        );
    }
    max_len(errs, &["content"], content, 2000);
    if let Some(embeds) = body["embeds"].as_array() {
        check_embeds(embeds, errs);
    }
    let flags = body["flags"].as_u64().unwrap_or(0);
    if let Some(rows) = body["components"].as_array() {
        if flags & MESSAGE_FLAG_COMPONENTS_V2 == 0 {
            check_components(rows, errs);
        }
    }
}

fn check_embeds(embeds: &[Value], errs: &mut FormErrors) {
    max_items(errs, &["embeds"], embeds, 10);
    let mut total = 0;
    for (i, e) in embeds.iter().enumerate() {
        let i = i.to_string();
        max_len(errs, &["embeds", &i, "title"], &e["title"], 256);
        max_len(
            errs,
            &["embeds", &i, "description"],
            &e["description"],
            4096,
        );
        total += len(&e["title"]) + len(&e["description"]);
        if let Some(fields) = e["fields"].as_array() {
            max_items(errs, &["embeds", &i, "fields"], fields, 25);
            for (j, f) in fields.iter().enumerate() {
                let j = j.to_string();
                required_max(errs, &["embeds", &i, "fields", &j, "name"], &f["name"], 256);
                required_max(
                    errs,
                    &["embeds", &i, "fields", &j, "value"],
                    &f["value"],
                    1024,
                );
                total += len(&f["name"]) + len(&f["value"]);
            }
        }
        if e["footer"].is_object() {
            required_max(
                errs,
                &["embeds", &i, "footer", "text"],
                &e["footer"]["text"],
                2048,
            );
            total += len(&e["footer"]["text"]);
        }
        if e["author"].is_object() {
            required_max(
                errs,
                &["embeds", &i, "author", "name"],
                &e["author"]["name"],
                256,
            );
            total += len(&e["author"]["name"]);
        }
        if e["color"].as_u64().is_some_and(|c| c > 0xFF_FFFF) {
            errs.add(
                &["embeds", &i, "color"],
                "NUMBER_TYPE_MAX",
                "int value should be less than or equal to 16777215.",
            );
        }
    }
    if total > 6000 {
        errs.add(
            &["embeds"],
            "MAX_EMBED_SIZE_EXCEEDED",
            "Embed size exceeds maximum size of 6000",
        );
    }
}

fn check_components(rows: &[Value], errs: &mut FormErrors) {
    max_items(errs, &["components"], rows, 5);
    let mut seen = HashSet::new();
    for (i, row) in rows.iter().enumerate() {
        let i = i.to_string();
        if row["type"].as_u64() != Some(1) {
            errs.add(
                &["components", &i, "type"],
                "UNION_TYPE_CHOICES",
                "Value of field \"type\" must be one of (1,).",
            );
            continue;
        }
        let Some(items) = row["components"].as_array() else {
            errs.add(
                &["components", &i, "components"],
                "BASE_TYPE_REQUIRED",
                "This field is required",
            );
            continue;
        };
        if items.is_empty() {
            errs.add(
                &["components", &i, "components"],
                "BASE_TYPE_MIN_LENGTH",
                "Must be 1 or more in length.",
            );
        }
        max_items(errs, &["components", &i, "components"], items, 5);
        let selects = items
            .iter()
            .filter(|c| matches!(c["type"].as_u64(), Some(3 | 5 | 6 | 7 | 8)))
            .count();
        if selects > 0 && items.len() > 1 {
            errs.add(
                &["components", &i, "components"],
                "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                "The specified component exceeds the maximum width",
            );
        }
        for (j, c) in items.iter().enumerate() {
            let j = j.to_string();
            let at =
                |field: &'static str| ["components", i.as_str(), "components", j.as_str(), field];
            match c["type"].as_u64() {
                Some(2) => {
                    max_len(errs, &at("label"), &c["label"], 80);
                    match c["style"].as_u64() {
                        Some(1..=4) => {
                            if len(&c["custom_id"]) == 0 {
                                errs.add(
                                    &at("custom_id"),
                                    "BUTTON_COMPONENT_CUSTOM_ID_REQUIRED",
                                    "A custom id is required",
                                );
                            }
                        }
                        Some(5) => {
                            if len(&c["url"]) == 0 {
                                errs.add(
                                    &at("url"),
                                    "BUTTON_COMPONENT_URL_REQUIRED",
                                    "A url is required",
                                );
                            }
                        }
                        Some(6) => {}
                        _ => errs.add(
                            &at("style"),
                            "BASE_TYPE_CHOICES",
                            "Value must be one of {1, 2, 3, 4, 5, 6}.",
                        ),
                    }
                }
                Some(3 | 5 | 6 | 7 | 8) => {
                    if len(&c["custom_id"]) == 0 {
                        errs.add(
                            &at("custom_id"),
                            "BASE_TYPE_REQUIRED",
                            "This field is required",
                        );
                    }
                }
                _ => errs.add(
                    &at("type"),
                    "UNION_TYPE_CHOICES",
                    "Value of field \"type\" must be one of (2, 3, 5, 6, 7, 8).",
                ),
            }
            if let Some(id) = c["custom_id"].as_str() {
                max_len(errs, &at("custom_id"), &c["custom_id"], 100);
                if !seen.insert(id.to_owned()) {
                    errs.add(
                        &at("custom_id"),
                        "COMPONENT_CUSTOM_ID_DUPLICATED",
                        "Component custom id cannot be duplicated",
                    );
                }
            }
        }
    }
}

fn valid_command_name(name: &str) -> bool {
    (1..=32).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn check_command(c: &Value, i: &str, errs: &mut FormErrors) {
    let kind = c["type"].as_u64().unwrap_or(1);
    let name = c["name"].as_str().unwrap_or_default();
    if kind == 1 {
        if !valid_command_name(name) {
            errs.add(
                &[i, "name"],
                "APPLICATION_COMMAND_INVALID_NAME",
                "Command name is invalid",
            );
        }
        bad_length(errs, &[i, "description"], &c["description"], 1, 100);
    } else {
        bad_length(errs, &[i, "name"], &c["name"], 1, 32);
    }
    check_options(&c["options"], &[i, "options"], errs);
}

fn check_options(options: &Value, path: &[&str], errs: &mut FormErrors) {
    let Some(options) = options.as_array() else {
        return;
    };
    max_items(errs, path, options, 25);
    let mut names = HashSet::new();
    let mut optional_seen = false;
    for (j, o) in options.iter().enumerate() {
        let j = j.to_string();
        let at = |field: &'static str| {
            let mut p = path.to_vec();
            p.push(&j);
            p.push(field);
            p
        };
        let name = o["name"].as_str().unwrap_or_default();
        if !valid_command_name(name) {
            errs.add(
                &at("name"),
                "APPLICATION_COMMAND_INVALID_NAME",
                "Command name is invalid",
            );
        } else if !names.insert(name.to_owned()) {
            errs.add(
                &at("name"),
                "APPLICATION_COMMAND_OPTION_NAME_ALREADY_EXISTS",
                "Option names must be unique",
            );
        }
        bad_length(errs, &at("description"), &o["description"], 1, 100);
        let kind = o["type"].as_u64();
        if !kind.is_some_and(|k| (1..=11).contains(&k)) {
            errs.add(
                &at("type"),
                "BASE_TYPE_CHOICES",
                "Value must be one of {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}.",
            );
        }
        if let Some(choices) = o["choices"].as_array() {
            max_items(errs, &at("choices"), choices, 25);
        }
        if matches!(kind, Some(1 | 2)) {
            check_options(&o["options"], &at("options"), errs);
        } else if o["required"].as_bool().unwrap_or(false) {
            if optional_seen {
                errs.add(
                    path,
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                );
            }
        } else {
            optional_seen = true;
        }
    }
}

/// No content, embeds, components, stickers, attachments or poll.
fn is_empty(p: &Value) -> bool {
    let blank = |v: &Value| match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    [
        "content",
        "embeds",
        "components",
        "sticker_ids",
        "attachments",
    ]
    .iter()
    .all(|k| blank(&p[*k]))
        && p["poll"].is_null()
}

/// The parts of a message body the fake keeps.
fn stored_body(body: &Value) -> Value {
    let mut out = json!({
        "content": body["content"].as_str().unwrap_or_default(),
        "embeds": body["embeds"].as_array().cloned().unwrap_or_default(),
        "components": body["components"].as_array().cloned().unwrap_or_default(),
        "flags": body["flags"].as_u64().unwrap_or(0),
        "tts": body["tts"].as_bool().unwrap_or(false),
    });
    for key in ["nonce", "message_reference"] {
        if !body[key].is_null() {
            out[key] = body[key].clone();
        }
    }
    out
}

/// A stored message body after an edit carrying `edit`'s fields.
fn merge(stored: &Value, edit: &Value) -> Value {
    let mut out = if stored.is_object() {
        stored.clone()
    } else {
        stored_body(&json!({}))
    };
    let fresh = stored_body(edit);
    for key in ["content", "embeds", "components", "flags"] {
        if edit.get(key).is_some() {
            out[key] = fresh[key].clone();
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Wire helpers

/// The JSON body, `Null` when there is none, the `payload_json` part of a
/// multipart body, or `None` when the JSON does not parse.
fn parse_body(headers: &HeaderMap, raw: &Bytes) -> Option<Value> {
    if raw.is_empty() {
        return Some(Value::Null);
    }
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Some(boundary) = ct
        .strip_prefix("multipart/form-data")
        .and_then(|rest| rest.split("boundary=").nth(1))
    {
        let boundary = format!("--{}", boundary.trim_matches('"'));
        let text = String::from_utf8_lossy(raw);
        for part in text.split(boundary.as_str()) {
            let Some((head, body)) = part.split_once("\r\n\r\n") else {
                continue;
            };
            if head.contains("name=\"payload_json\"") {
                return serde_json::from_str(body.trim_end_matches("\r\n")).ok();
            }
        }
        return Some(json!({}));
    }
    serde_json::from_slice(raw).ok()
}

/// A snowflake given as a string or a number.
fn id_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn is_snowflake(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u64>().is_ok()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn epoch_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn bucket(route: &str) -> String {
    let mut h = DefaultHasher::new();
    route.hash(&mut h);
    format!("{:016x}", h.finish())
}

fn set_header(h: &mut HeaderMap, name: &'static str, value: &str) {
    h.insert(
        HeaderName::from_static(name),
        HeaderValue::from_str(value).unwrap(),
    );
}

fn respond(o: &Outcome, route: &str) -> Response {
    let status = StatusCode::from_u16(o.status).unwrap();
    let mut resp = match &o.body {
        Some(b) => (status, Json(b.clone())).into_response(),
        None => status.into_response(),
    };
    if o.status == 401 || route == "unknown" {
        return resp;
    }
    let h = resp.headers_mut();
    set_header(h, "x-ratelimit-limit", "5");
    set_header(h, "x-ratelimit-remaining", "4");
    set_header(
        h,
        "x-ratelimit-reset",
        &format!("{:.3}", epoch_secs() + 1.0),
    );
    set_header(h, "x-ratelimit-reset-after", "1.000");
    set_header(h, "x-ratelimit-bucket", &bucket(route));
    resp
}

/// Discord's 429: `Retry-After` in whole seconds (rounded up), the exact
/// wait in `X-RateLimit-Reset-After` and in the body's `retry_after`.
fn too_many_requests(secs: f64, route: &str) -> Response {
    let body = json!({
        "message": "You are being rate limited.",
        "retry_after": secs,
        "global": false,
    });
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    let h = resp.headers_mut();
    set_header(h, "retry-after", &format!("{}", secs.ceil() as u64));
    set_header(h, "x-ratelimit-limit", "5");
    set_header(h, "x-ratelimit-remaining", "0");
    set_header(
        h,
        "x-ratelimit-reset",
        &format!("{:.3}", epoch_secs() + secs),
    );
    set_header(h, "x-ratelimit-reset-after", &format!("{secs:.3}"));
    set_header(h, "x-ratelimit-bucket", &bucket(route));
    set_header(h, "x-ratelimit-scope", "user");
    resp
}
