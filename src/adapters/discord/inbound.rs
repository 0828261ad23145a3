//! What Discord sends Passport: `/passport` commands, button clicks and (over
//! the gateway) messages in request threads, whether they arrive at
//! `/discord/interactions` or over the gateway.
//!
//! Interactions are read into the few fields Passport uses, so fields Discord
//! adds later never make a click fail. Each becomes a line of the command
//! grammar typed by the person who sent it, and goes through
//! [`Engine::handle_line`]; a button's custom id is the command it stands for.
//!
//! Discord wants an answer within 3 seconds. The work runs in its own task;
//! the answer waits for it at most [`Inbound::deadline`]: then it carries the
//! result, or else it is a deferred answer that the result replaces later
//! (`PATCH …/messages/@original`). Answers to commands and clicks are shown
//! only to the person (ephemeral).
//!
//! **Invariant:** one interaction, one effect. A signed request replayed
//! within the 5-minute signature window is recognised by its interaction id
//! and acknowledged without acting. Double clicks are distinct interactions
//! and are made idempotent by the engine (`you already approved AR-1`).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::adapters::chat::inbound::{InboundCore, Outcome, Voice, ACK_DEADLINE};
use crate::adapters::chat_retry::Peer;
use crate::app::engine::{Engine, Reply};
use crate::domain::command::help_text;
use crate::domain::values::{Person, RequestId};

use super::api::DiscordApi;
use super::commands::{command_line, SubmittedOption};
use super::identity::DiscordDirectory;
use super::render::{text_message, CUSTOM_ID_PREFIX};
use super::surface::SURFACE;

/// Interaction types.
pub const PING: u8 = 1;
pub const APPLICATION_COMMAND: u8 = 2;
pub const MESSAGE_COMPONENT: u8 = 3;

/// Interaction callback types.
const PONG: u8 = 1;
const CHANNEL_MESSAGE: u8 = 4;
const DEFERRED_CHANNEL_MESSAGE: u8 = 5;
const DEFERRED_UPDATE_MESSAGE: u8 = 6;
/// Message flag: shown only to the person who acted.
const EPHEMERAL: u64 = 64;

// ---------------------------------------------------------------------------
// Payloads

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct UserPayload {
    pub id: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub global_name: Option<String>,
    #[serde(default)]
    pub bot: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct MemberPayload {
    #[serde(default)]
    pub user: Option<UserPayload>,
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ChannelPayload {
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: u8,
    #[serde(default)]
    pub parent_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct DataPayload {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub options: Vec<SubmittedOption>,
    #[serde(default)]
    pub custom_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct MessagePayload {
    pub id: String,
    #[serde(default)]
    pub channel_id: Option<String>,
}

/// An interaction, over HTTP or the gateway.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Interaction {
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub guild_id: Option<String>,
    #[serde(default)]
    pub channel_id: Option<String>,
    #[serde(default)]
    pub channel: Option<ChannelPayload>,
    #[serde(default)]
    pub member: Option<MemberPayload>,
    #[serde(default)]
    pub user: Option<UserPayload>,
    #[serde(default)]
    pub data: Option<DataPayload>,
    #[serde(default)]
    pub message: Option<MessagePayload>,
}

impl Interaction {
    /// Who acted: the member's user in a server, the user in a DM.
    pub fn actor(&self) -> Option<&UserPayload> {
        self.member
            .as_ref()
            .and_then(|m| m.user.as_ref())
            .or(self.user.as_ref())
    }

    fn channel(&self) -> Option<&str> {
        self.channel
            .as_ref()
            .map(|c| c.id.as_str())
            .or(self.channel_id.as_deref())
    }

    /// The command line this interaction stands for, if it stands for one.
    pub fn command_line(&self) -> Option<String> {
        let data = self.data.as_ref()?;
        match self.kind {
            APPLICATION_COMMAND => Some(command_line(&data.options)),
            MESSAGE_COMPONENT => data
                .custom_id
                .as_deref()
                .and_then(|id| id.strip_prefix(CUSTOM_ID_PREFIX))
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned),
            _ => None,
        }
    }
}

/// The result of work that outlived the answer: it replaces the deferred answer.
pub struct Pending {
    token: String,
    /// Who the answer is for: a direct message to them, through the outbox,
    /// when Discord is failing.
    user: String,
    work: tokio::task::JoinHandle<Option<String>>,
}

/// How Passport's answers read on Discord.
const VOICE: Voice = Voice {
    platform: "Discord",
    surface: SURFACE,
    warning: "⚠️",
    list: "/passport list",
};

fn ephemeral(text: &str) -> Value {
    let mut data = text_message(text, &[]);
    data["flags"] = json!(EPHEMERAL);
    json!({ "type": CHANNEL_MESSAGE, "data": data })
}

// ---------------------------------------------------------------------------
// Handling

pub struct Inbound {
    core: InboundCore,
    api: Arc<DiscordApi>,
    directory: Arc<DiscordDirectory>,
    guild: String,
}

impl Inbound {
    pub fn new(
        engine: Arc<Engine>,
        api: Arc<DiscordApi>,
        directory: Arc<DiscordDirectory>,
        guild: u64,
        peer: Peer,
    ) -> Self {
        Self {
            core: InboundCore::new(engine, peer, VOICE, ACK_DEADLINE),
            api,
            directory,
            guild: guild.to_string(),
        }
    }

    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.core.deadline = deadline;
        self
    }

    async fn run(&self, user: &UserPayload, text: &str, thread: Option<RequestId>) -> Reply {
        let handle = display_handle(user);
        let person = |id| async move { Person { id, handle } };
        self.core.run(&user.id, person, text, thread).await
    }

    /// The request whose card or thread has the id `message` (a thread's
    /// channel id is its card's message id).
    async fn request_of(&self, message: Option<&str>) -> Option<RequestId> {
        let message = message.filter(|m| !m.is_empty())?;
        self.core.request_of(None, message).await
    }

    /// Handles an interaction: answers what to send Discord at once and, when
    /// the work outlives that answer, the work whose result replaces it
    /// ([`Inbound::finish`]).
    pub async fn interaction(self: &Arc<Self>, i: Interaction) -> (Value, Option<Pending>) {
        if i.kind == PING {
            return (json!({ "type": PONG }), None);
        }
        if !matches!(i.kind, APPLICATION_COMMAND | MESSAGE_COMPONENT) {
            return (
                ephemeral("Passport does not handle this kind of interaction"),
                None,
            );
        }
        if !self.core.first_delivery("interaction", Some(&i.id)) {
            tracing::info!("repeated interaction ignored");
            return (json!({ "type": DEFERRED_UPDATE_MESSAGE }), None);
        }
        // The database remembers past a restart: asked before anything acts.
        match self.core.first_signed("interaction", Some(&i.id)).await {
            Ok(true) => {}
            Ok(false) => return (json!({ "type": DEFERRED_UPDATE_MESSAGE }), None),
            Err(text) => return (ephemeral(&text), None),
        }
        let elsewhere = match i.guild_id.as_deref() {
            Some(guild) => guild != self.guild,
            // Buttons on Passport's own direct messages come without a server;
            // a command typed outside the server (a DM, another app context) never may.
            None => i.kind == APPLICATION_COMMAND,
        };
        if elsewhere {
            tracing::warn!(
                guild = i.guild_id.as_deref().unwrap_or("-"),
                "a Discord interaction from outside the configured server refused"
            );
            return (
                ephemeral("Passport works only in the server it is set up for: ask there"),
                None,
            );
        }
        let Some(user) = i.actor().cloned() else {
            return (ephemeral("Passport cannot tell who you are"), None);
        };
        if let Some(member) = &i.member {
            self.directory.saw_member(&user.id, &member.roles);
        }
        let Some(line) = i.command_line() else {
            return (
                ephemeral("Passport does not know this button or command"),
                None,
            );
        };
        if i.kind == APPLICATION_COMMAND && line.eq_ignore_ascii_case("help") {
            return (ephemeral(&help_text("/passport ")), None);
        }
        let this = self.clone();
        let user_id = user.id.clone();
        let (channel, message) = (
            i.channel().map(str::to_owned),
            i.message.as_ref().map(|m| m.id.clone()),
        );
        let work = tokio::spawn(async move {
            // A command in a thread, or a click on a card or in its thread,
            // acts within that request.
            let thread = match this.request_of(message.as_deref()).await {
                Some(r) => Some(r),
                None => this.request_of(channel.as_deref()).await,
            };
            Some(VOICE.reply_text(&this.run(&user, &line, thread).await))
        });
        let until = tokio::time::Instant::now() + self.core.deadline;
        match self.core.answer_by(until, work).await {
            // The work above always has an answer.
            Outcome::Done(text) => (ephemeral(&text.unwrap_or_default()), None),
            Outcome::Running(work) => (
                json!({ "type": DEFERRED_CHANNEL_MESSAGE, "data": { "flags": EPHEMERAL } }),
                Some(Pending {
                    token: i.token.clone(),
                    user: user_id,
                    work,
                }),
            ),
        }
    }

    /// Waits for work that outlived its answer and puts its result in place
    /// of the deferred answer, retrying on rate limits and temporary failures;
    /// while Discord is failing, it goes as a direct message once Discord is back.
    pub async fn finish(&self, pending: Pending) {
        let Some(text) = self.core.answer_of(pending.work).await else {
            return;
        };
        let message = text_message(&text, &[]);
        self.core
            .deliver(
                "the answer to a deferred interaction",
                &pending.user,
                &text,
                || self.api.edit_original(&pending.token, &message),
            )
            .await;
    }

    /// An interaction that came over the gateway: the answer goes back
    /// through the REST callback.
    pub async fn over_gateway(self: &Arc<Self>, i: Interaction) {
        let (id, token) = (i.id.clone(), i.token.clone());
        let (answer, pending) = self.interaction(i).await;
        if let Err(e) = self.api.interaction_callback(&id, &token, &answer).await {
            tracing::warn!(error = %e, "cannot answer an interaction");
        }
        if let Some(p) = pending {
            self.finish(p).await;
        }
    }

    /// A message someone wrote in a channel (over the gateway). In a
    /// request's thread, a command (`extend 1h`, `+30m`, `done`) acts on that
    /// request and is answered in the thread; anything else is conversation
    /// and gets no answer. Messages in another server are ignored.
    pub async fn thread_message(
        self: &Arc<Self>,
        guild: &str,
        author: UserPayload,
        channel: &str,
        message: &str,
        text: &str,
    ) {
        if author.bot == Some(true) {
            return;
        }
        if guild != self.guild {
            tracing::warn!(guild, "a message in another Discord server ignored: Passport serves only its configured server");
            return;
        }
        let handle = display_handle(&author);
        let person = |id| async move { Person { id, handle } };
        // A thread's channel id is its card's message id.
        let Some(reply) = self
            .core
            .thread_command(
                ("message", Some(message)),
                &author.id,
                person,
                (None, channel),
                text,
            )
            .await
        else {
            return;
        };
        let mut answer = text_message(&VOICE.reply_text(&reply), &[]);
        answer["message_reference"] = json!({ "message_id": message, "fail_if_not_exists": false });
        if let Err(e) = self.api.post_message(channel, &answer).await {
            tracing::warn!(error = %e, "cannot answer in a request's thread");
        }
    }
}

/// How a Discord user is named in Passport: their username, else their id.
fn display_handle(user: &UserPayload) -> String {
    user.username
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| user.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_with_unknown_fields_parse() {
        let i: Interaction = serde_json::from_value(json!({
            "type": 3,
            "id": "1",
            "token": "t",
            "application_id": "2",
            "guild_id": "3",
            "channel": {"id": "4", "type": 11, "parent_id": "5", "brand_new": true},
            "member": {"user": {"id": "6", "username": "lead1"}, "roles": ["7"], "avatar": null},
            "message": {"id": "8", "channel_id": "4", "embeds": [{"type": "brand_new"}]},
            "data": {"custom_id": "passport:approve AR-1", "component_type": 2},
            "entitlements": [],
        }))
        .unwrap();
        assert_eq!(i.command_line().as_deref(), Some("approve AR-1"));
        assert_eq!(i.actor().unwrap().username.as_deref(), Some("lead1"));
        assert_eq!(i.channel(), Some("4"));
    }

    #[test]
    fn foreign_buttons_stand_for_nothing() {
        let i = Interaction {
            kind: MESSAGE_COMPONENT,
            data: Some(DataPayload {
                custom_id: Some("other-bot:approve AR-1".into()),
                ..DataPayload::default()
            }),
            ..Interaction::default()
        };
        assert_eq!(i.command_line(), None);
    }
}
