//! What Slack sends Passport: slash commands, button clicks and thread
//! messages, whether over HTTP or Socket Mode.
//!
//! Payloads are read into the few fields Passport uses, so fields or block
//! types Slack adds later never make a click fail. Each one becomes a line of
//! the command grammar, typed by the person who sent it, and goes through
//! [`Engine::handle_line`]; a button's value is the command it stands for.
//!
//! Slack wants an answer within 3 seconds. The work runs in its own task; the
//! answer waits for it at most [`Inbound::deadline`], then goes out anyway,
//! and the result follows through `response_url` or `chat.postEphemeral`. A
//! slow AWS or Slack call therefore never holds the answer.
//!
//! **Invariant:** one delivery, one effect. Slack retries events it thinks
//! were not answered (`X-Slack-Retry-Num`), and a signed request can be
//! replayed within the 5-minute signature window: deliveries are remembered
//! by `event_id` or `trigger_id` for longer than that window and repeats are
//! acknowledged without acting. Thread commands from events are also
//! recorded in the database before they act, so a redelivery after a restart
//! acts once too. Double clicks carry distinct trigger ids and
//! are made idempotent by the engine (`you already approved AR-1`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::adapters::chat::inbound::{InboundCore, Outcome, Voice, ACK_DEADLINE};
use crate::adapters::chat_retry::Peer;
use crate::app::engine::{Engine, Reply};
use crate::app::ports::ChatSurface;
use crate::domain::command::help_text;
use crate::domain::values::{GrantDuration, InstanceIds, Reason, RequestId, Ticket, UserId};

use super::api::SlackApi;
use super::blocks::{request_form, text_content, REQUEST_FORM};
use super::identity::People;
use super::surface::SURFACE;
use super::workspace::{Origin, Workspace};

// ---------------------------------------------------------------------------
// Payloads

/// A slash command (`application/x-www-form-urlencoded`).
#[derive(Debug, Clone, Deserialize)]
pub struct SlashCommand {
    pub command: String,
    #[serde(default)]
    pub text: String,
    pub user_id: String,
    #[serde(default)]
    pub user_name: Option<String>,
    #[serde(default)]
    pub channel_id: Option<String>,
    #[serde(default)]
    pub response_url: Option<String>,
    #[serde(default)]
    pub trigger_id: Option<String>,
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(default)]
    pub enterprise_id: Option<String>,
    #[serde(default)]
    pub api_app_id: Option<String>,
}

impl SlashCommand {
    fn origin(&self) -> Origin<'_> {
        Origin {
            enterprise: self.enterprise_id.as_deref(),
            app: self.api_app_id.as_deref(),
            ..Origin::default()
        }
        .team(self.team_id.as_deref())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct InteractionUser {
    pub id: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// The person's own workspace.
    #[serde(default)]
    pub team_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Container {
    #[serde(default)]
    pub message_ts: Option<String>,
    #[serde(default)]
    pub channel_id: Option<String>,
    #[serde(default)]
    pub thread_ts: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MessageInfo {
    #[serde(default)]
    pub ts: Option<String>,
    #[serde(default)]
    pub thread_ts: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IdOnly {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ActionInfo {
    #[serde(default)]
    pub action_id: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StateValue {
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ViewState {
    /// Block id → action id → value.
    #[serde(default)]
    pub values: HashMap<String, HashMap<String, StateValue>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ViewInfo {
    #[serde(default)]
    pub callback_id: Option<String>,
    #[serde(default)]
    pub private_metadata: Option<String>,
    #[serde(default)]
    pub state: Option<ViewState>,
}

impl ViewInfo {
    /// The text typed in the input block `block`, trimmed.
    fn value(&self, block: &str) -> String {
        self.state
            .as_ref()
            .and_then(|s| s.values.get(block))
            .and_then(|actions| actions.values().find_map(|v| v.value.clone()))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

/// An interaction (the form field `payload`, JSON). Button clicks
/// (`block_actions`) and the request form (`view_submission`) act; other
/// types are acknowledged and ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Interaction {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub user: Option<InteractionUser>,
    #[serde(default)]
    pub trigger_id: Option<String>,
    #[serde(default)]
    pub response_url: Option<String>,
    #[serde(default)]
    pub channel: Option<IdOnly>,
    #[serde(default)]
    pub container: Option<Container>,
    #[serde(default)]
    pub message: Option<MessageInfo>,
    #[serde(default)]
    pub actions: Vec<ActionInfo>,
    #[serde(default)]
    pub view: Option<ViewInfo>,
    #[serde(default)]
    pub team: Option<IdOnly>,
    #[serde(default)]
    pub enterprise: Option<IdOnly>,
    #[serde(default)]
    pub api_app_id: Option<String>,
}

impl Interaction {
    fn origin(&self) -> Origin<'_> {
        Origin {
            enterprise: self.enterprise.as_ref().map(|e| e.id.as_str()),
            app: self.api_app_id.as_deref(),
            ..Origin::default()
        }
        .team(self.team.as_ref().map(|t| t.id.as_str()))
        .team(self.user.as_ref().and_then(|u| u.team_id.as_deref()))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MessageEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub subtype: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub bot_id: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub ts: Option<String>,
    #[serde(default)]
    pub thread_ts: Option<String>,
    /// The writer's own workspace, and the one the message was sent from
    /// (a Slack Connect partner's differ from Passport's).
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub user_team: Option<String>,
    #[serde(default)]
    pub source_team: Option<String>,
}

/// An Events API body (JSON).
#[derive(Debug, Clone, Deserialize)]
pub struct EventBody {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub challenge: Option<String>,
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default)]
    pub event: Option<MessageEvent>,
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(default)]
    pub enterprise_id: Option<String>,
    #[serde(default)]
    pub api_app_id: Option<String>,
}

impl EventBody {
    fn origin(&self) -> Origin<'_> {
        let event = self.event.as_ref();
        Origin {
            enterprise: self.enterprise_id.as_deref(),
            app: self.api_app_id.as_deref(),
            ..Origin::default()
        }
        .team(self.team_id.as_deref())
        .team(event.and_then(|e| e.team.as_deref()))
        .team(event.and_then(|e| e.user_team.as_deref()))
        .team(event.and_then(|e| e.source_team.as_deref()))
    }
}

/// What to answer Slack at once.
#[derive(Debug, Clone, PartialEq)]
pub enum Ack {
    /// An empty 200 (or a bare Socket Mode acknowledgement).
    Empty,
    /// A JSON body (or Socket Mode acknowledgement payload).
    Json(Value),
    /// Not from Passport's workspace, enterprise or app: nothing was done.
    /// Over HTTP a 401; over Socket Mode a bare acknowledgement.
    Refused,
}

/// How the answer to a slash command reaches the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// In the acknowledgement when the work finishes within the deadline,
    /// through `response_url` otherwise (HTTP).
    InlineOrLater,
    /// Always through `response_url`: the acknowledgement has gone already (Socket Mode).
    Later,
}

// ---------------------------------------------------------------------------
// Handling

pub struct Inbound {
    core: InboundCore,
    api: Arc<SlackApi>,
    people: Arc<People>,
    /// Direct messages go through the surface, which remembers each DM channel.
    surface: Arc<dyn ChatSurface>,
    /// What every payload must come from.
    workspace: Workspace,
}

/// How Passport's answers read on Slack.
const VOICE: Voice = Voice {
    platform: "Slack",
    surface: SURFACE,
    warning: ":warning:",
    list: "list",
};

fn ephemeral(text: &str) -> Value {
    let mut v = serde_json::to_value(text_content(text, &[])).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut v {
        map.insert("response_type".into(), json!("ephemeral"));
    }
    v
}

impl Inbound {
    pub fn new(
        engine: Arc<Engine>,
        api: Arc<SlackApi>,
        people: Arc<People>,
        surface: Arc<dyn ChatSurface>,
        workspace: Workspace,
        peer: Peer,
    ) -> Self {
        Self {
            core: InboundCore::new(engine, peer, VOICE, ACK_DEADLINE),
            api,
            people,
            surface,
            workspace,
        }
    }

    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.core.deadline = deadline;
        self
    }

    fn engine(&self) -> &Engine {
        &self.core.engine
    }

    /// Whether `origin` is Passport's workspace, enterprise and app; a
    /// refusal is logged with the ids that did not match (never the payload).
    fn admitted(&self, kind: &str, origin: &Origin<'_>) -> bool {
        match self.workspace.admit(origin) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(
                    kind,
                    teams = ?origin.teams,
                    enterprise = origin.enterprise.unwrap_or("-"),
                    app = origin.app.unwrap_or("-"),
                    "Slack {kind} refused: {why}, not from the workspace {} and app {} Passport serves",
                    self.workspace.team_id,
                    self.workspace.app_id,
                );
                false
            }
        }
    }

    async fn run(
        &self,
        user: &str,
        fallback_name: Option<&str>,
        text: &str,
        thread: Option<RequestId>,
    ) -> Reply {
        let person = |id| async move { self.people.person(&id, fallback_name).await };
        self.core.run(user, person, text, thread).await
    }

    /// The request whose card (or card thread) `ts` in `channel` belongs to.
    async fn thread_of(&self, channel: &str, ts: &str) -> Option<RequestId> {
        self.core.request_of(Some(channel), ts).await
    }

    /// Waits for `task` at most the deadline; it keeps running afterwards.
    async fn wait_briefly(&self, task: &mut tokio::task::JoinHandle<()>) {
        let _ = tokio::time::timeout(self.core.deadline, task).await;
    }

    /// `/passport …`.
    pub async fn command(self: &Arc<Self>, cmd: SlashCommand, answer: Answer) -> Ack {
        // One deadline for the whole answer, however many steps it waits on.
        let until = tokio::time::Instant::now() + self.core.deadline;
        if !self.admitted("slash command", &cmd.origin()) {
            return Ack::Refused;
        }
        if !self
            .core
            .first_delivery("trigger", cmd.trigger_id.as_deref())
        {
            tracing::info!("repeated slash command delivery ignored");
            return Ack::Empty;
        }
        let text = cmd.text.trim().to_owned();
        if text.is_empty() || text.eq_ignore_ascii_case("help") {
            let help = help_text(&format!("{} ", cmd.command.trim()));
            return match answer {
                Answer::InlineOrLater => Ack::Json(ephemeral(&help)),
                Answer::Later => {
                    self.respond_later(&cmd.user_id, cmd.response_url.as_deref(), help);
                    Ack::Empty
                }
            };
        }
        if text.eq_ignore_ascii_case("request") {
            if let Some(trigger) = cmd.trigger_id.as_deref() {
                let default = self.engine().grammar().durations.default.to_string();
                let form = request_form(&default, cmd.channel_id.as_deref());
                // The trigger is good for 3 s, so this cannot wait longer anyway.
                let opened =
                    tokio::time::timeout_at(until, self.api.open_view(trigger, form)).await;
                match opened {
                    Ok(Ok(())) => return Ack::Empty,
                    // Without the form, the usage message below says what to type.
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot open the request form"),
                    Err(_) => tracing::warn!("views.open took too long; showing the usage instead"),
                }
            }
        }
        let this = self.clone();
        // The answer's text, or `None` for a replay, which gets none.
        let work = {
            let cmd = cmd.clone();
            tokio::spawn(async move {
                let (people, name) = (&this.people, cmd.user_name.as_deref());
                let person = |id| async move { people.person(&id, name).await };
                let trigger = ("trigger", cmd.trigger_id.as_deref());
                match this
                    .core
                    .run_signed(trigger, &cmd.user_id, person, &text, None)
                    .await
                {
                    Ok(reply) => reply.map(|reply| VOICE.reply_text(&reply)),
                    Err(text) => Some(text),
                }
            })
        };
        match answer {
            Answer::Later => {
                self.respond_when_done(cmd, work);
                Ack::Empty
            }
            Answer::InlineOrLater => match self.core.answer_by(until, work).await {
                Outcome::Done(Some(text)) => Ack::Json(ephemeral(&text)),
                Outcome::Done(None) => Ack::Empty,
                Outcome::Running(work) => {
                    self.respond_when_done(cmd, work);
                    Ack::Json(ephemeral(
                        "received: Passport is working on it and will answer here shortly",
                    ))
                }
            },
        }
    }

    /// Answers `cmd` through its `response_url` once `work` is done.
    fn respond_when_done(
        self: &Arc<Self>,
        cmd: SlashCommand,
        work: tokio::task::JoinHandle<Option<String>>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Some(text) = this.core.answer_of(work).await {
                this.respond(&cmd.user_id, cmd.response_url.as_deref(), &text)
                    .await;
            }
        });
    }

    fn respond_later(self: &Arc<Self>, user: &str, response_url: Option<&str>, text: String) {
        let this = self.clone();
        let (user, url) = (user.to_owned(), response_url.map(str::to_owned));
        tokio::spawn(async move { this.respond(&user, url.as_deref(), &text).await });
    }

    /// Answers through `response_url`, retrying a few times on rate limits and
    /// temporary failures (a `response_url` is good for 30 minutes); while
    /// Slack is failing, as a direct message once it is back.
    async fn respond(&self, user: &str, response_url: Option<&str>, text: &str) {
        let Some(url) = response_url.filter(|u| !u.is_empty()) else {
            tracing::warn!("a slash command came without response_url; its answer is lost");
            return;
        };
        self.core
            .deliver("an answer through response_url", user, text, || {
                self.api.respond(url, text)
            })
            .await;
    }

    /// Shows `text` to `user` only: as an ephemeral message in `channel` (and
    /// thread) when given, retrying on rate limits; else, or when the bot
    /// cannot post there, as a direct message; while Slack is failing, as a
    /// direct message once it is back.
    async fn tell(&self, user: &str, channel: Option<&str>, thread_ts: Option<&str>, text: &str) {
        if let Some(channel) = channel.filter(|c| !c.is_empty()) {
            let sent = self
                .core
                .attempt("an ephemeral answer", || {
                    self.api
                        .post_ephemeral(channel, user, text_content(text, &[]), thread_ts)
                })
                .await;
            match sent {
                Ok(()) => return,
                Err(e) => {
                    tracing::info!(error = %e, "cannot answer in the channel; answering directly")
                }
            }
        }
        match UserId::parse(user) {
            Ok(id) => {
                self.core
                    .deliver("a direct answer", user, text, || {
                        self.surface.direct_message(&id, text, &[])
                    })
                    .await
            }
            Err(e) => {
                let why = e.0;
                tracing::warn!(error = %why, "cannot send an answer as a direct message")
            }
        }
    }

    /// The request form was submitted: each field is checked on its own so an
    /// error shows beside the field; then it runs as `request …` typed by the person.
    async fn form(self: &Arc<Self>, user: InteractionUser, view: ViewInfo) -> Ack {
        let grammar = self.engine().grammar();
        let (instances, duration, ticket, reason) = (
            view.value("instances"),
            view.value("duration"),
            view.value("ticket"),
            view.value("reason").replace(['\n', '\r'], " "),
        );
        let mut errors = serde_json::Map::new();
        if let Err(e) = InstanceIds::parse(instances.split_whitespace(), grammar.max_instances) {
            errors.insert("instances".into(), json!(e.0));
        } else if instances.is_empty() {
            errors.insert(
                "instances".into(),
                json!("name at least one instance, e.g. i-0123456789abcdef0"),
            );
        }
        if !duration.is_empty() {
            if let Err(e) = GrantDuration::parse(&duration, &grammar.durations) {
                errors.insert("duration".into(), json!(e.0));
            }
        }
        if let Err(e) = Ticket::parse(&ticket, &grammar.tickets) {
            errors.insert("ticket".into(), json!(e.0));
        }
        if let Err(e) = Reason::parse(&reason) {
            errors.insert("reason".into(), json!(e.0));
        }
        if !errors.is_empty() {
            return Ack::Json(json!({ "response_action": "errors", "errors": errors }));
        }
        let line = [instances.as_str(), &duration, &ticket, reason.trim()]
            .iter()
            .filter(|p| !p.is_empty())
            .fold(String::from("request"), |acc, p| format!("{acc} {p}"));
        let this = self.clone();
        let mut task = tokio::spawn(async move {
            let name = user.username.clone().or(user.name.clone());
            let reply = this.run(&user.id, name.as_deref(), &line, None).await;
            let channel = view.private_metadata.as_deref();
            this.tell(&user.id, channel, None, &VOICE.reply_text(&reply))
                .await;
        });
        self.wait_briefly(&mut task).await;
        // An empty answer closes the form.
        Ack::Empty
    }

    /// A button click (the button's value is typed by the person who clicked)
    /// or the request form.
    pub async fn interaction(self: &Arc<Self>, i: Interaction) -> Ack {
        if !self.admitted("interaction", &i.origin()) {
            return Ack::Refused;
        }
        if !matches!(i.kind.as_str(), "block_actions" | "view_submission") {
            return Ack::Empty;
        }
        if !self.core.first_delivery("trigger", i.trigger_id.as_deref()) {
            tracing::info!("repeated interaction delivery ignored");
            return Ack::Empty;
        }
        if i.kind == "view_submission" {
            // A form is submitted rarely, so its key is recorded before the
            // acknowledgement; Slack closes the form on an empty answer.
            match self
                .core
                .first_signed("trigger", i.trigger_id.as_deref())
                .await
            {
                Ok(true) => {}
                Ok(false) | Err(_) => return Ack::Empty,
            }
            return match (i.user, i.view) {
                (Some(user), Some(view)) if view.callback_id.as_deref() == Some(REQUEST_FORM) => {
                    self.form(user, view).await
                }
                _ => Ack::Empty,
            };
        }
        let Some(user) = i.user.clone() else {
            return Ack::Empty;
        };
        let Some(command) = i
            .actions
            .iter()
            .find_map(|a| a.value.clone())
            .filter(|v| !v.trim().is_empty())
        else {
            return Ack::Empty;
        };
        let container = i.container.clone().unwrap_or_default();
        let channel = container
            .channel_id
            .clone()
            .or_else(|| i.channel.as_ref().map(|c| c.id.clone()));
        let message = i.message.clone().unwrap_or_default();
        let message_ts = message.ts.clone().or(container.message_ts.clone());
        // Set only when the clicked message is a reply inside a thread.
        let thread_ts = message
            .thread_ts
            .clone()
            .or(container.thread_ts.clone())
            .filter(|t| Some(t) != message_ts.as_ref());
        let this = self.clone();
        let trigger = i.trigger_id.clone();
        let mut task = tokio::spawn(async move {
            let text = match this.core.first_signed("trigger", trigger.as_deref()).await {
                Ok(true) => {
                    // A click on the card or in its thread acts within that request.
                    let anchor = thread_ts.clone().or(message_ts.clone());
                    let thread = match (&channel, &anchor) {
                        (Some(c), Some(ts)) => this.thread_of(c, ts).await,
                        _ => None,
                    };
                    let name = user.username.clone().or(user.name.clone());
                    let reply = this.run(&user.id, name.as_deref(), &command, thread).await;
                    VOICE.reply_text(&reply)
                }
                Ok(false) => return,
                Err(text) => text,
            };
            match &channel {
                Some(c) => {
                    this.tell(&user.id, Some(c), thread_ts.as_deref(), &text)
                        .await
                }
                None => {
                    this.respond(&user.id, i.response_url.as_deref(), &text)
                        .await
                }
            }
        });
        self.wait_briefly(&mut task).await;
        Ack::Empty
    }

    /// An Events API body: the URL check, or a message in a card's thread.
    pub async fn event(self: &Arc<Self>, body: EventBody) -> Ack {
        match body.kind.as_str() {
            "url_verification" => {
                return Ack::Json(json!({ "challenge": body.challenge.unwrap_or_default() }))
            }
            "event_callback" => {}
            _ => return Ack::Empty,
        }
        if !self.admitted("event", &body.origin()) {
            return Ack::Refused;
        }
        let Some(event) = body.event else {
            return Ack::Empty;
        };
        // Only people's own messages in a thread; never the bot's (or any bot's),
        // edits, joins or other subtypes. A reply also sent to the channel
        // (`thread_broadcast`) is a thread reply like any other.
        let ordinary = match event.subtype.as_deref() {
            None | Some("thread_broadcast") => true,
            Some(_) => false,
        };
        if event.kind != "message" || !ordinary || event.bot_id.is_some() {
            return Ack::Empty;
        }
        let (Some(user), Some(channel), Some(thread_ts), Some(text)) =
            (event.user, event.channel, event.thread_ts, event.text)
        else {
            return Ack::Empty;
        };
        if event.ts.as_deref() == Some(thread_ts.as_str()) {
            return Ack::Empty;
        }
        let this = self.clone();
        let mut task = tokio::spawn(async move {
            // Slack redelivers an event it thinks went unanswered, also after
            // Passport restarted: the core remembers its id.
            let people = &this.people;
            let person = |id| async move { people.person(&id, None).await };
            let delivery = ("event", body.event_id.as_deref());
            let Some(reply) = this
                .core
                .thread_command(delivery, &user, person, (Some(&channel), &thread_ts), &text)
                .await
            else {
                return;
            };
            this.tell(
                &user,
                Some(&channel),
                Some(&thread_ts),
                &VOICE.reply_text(&reply),
            )
            .await;
        });
        self.wait_briefly(&mut task).await;
        Ack::Empty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_with_unknown_fields_parse() {
        let i: Interaction = serde_json::from_value(json!({
            "type": "block_actions",
            "user": {"id": "U1", "username": "lead1", "team_id": "T1"},
            "trigger_id": "1.2.3",
            "container": {"type": "message", "message_ts": "1.000100", "channel_id": "C1"},
            "message": {"ts": "1.000100", "blocks": [{"type": "brand_new_block"}]},
            "actions": [{"type": "button", "action_id": "passport:0", "value": "approve AR-1"}]
        }))
        .unwrap();
        assert_eq!(i.actions[0].value.as_deref(), Some("approve AR-1"));
    }
}
