//! [`InboundCore`]: what happens to a person's line once a chat adapter has
//! read it from its wire format, the same on Slack and Discord.
//!
//! - Repeated deliveries are recognised in memory ([`InboundCore::first_delivery`])
//!   and, before anything acts, in the database, which remembers past a
//!   restart ([`InboundCore::first_signed`]; a new access request records its
//!   key in the transaction that creates it, [`InboundCore::run_signed`]).
//! - The line runs as the person who typed it, within the request whose card
//!   or thread it came from ([`InboundCore::run`], [`InboundCore::request_of`]);
//!   a message written in a card's thread acts only when it reads as a
//!   command ([`InboundCore::thread_command`], [`looks_like_command`]).
//! - The answer waits for the work at most the adapter's deadline
//!   ([`InboundCore::answer_by`]); work that outlives it is answered later
//!   ([`InboundCore::answer_of`]) and sent with retries through the
//!   platform's breaker ([`InboundCore::deliver`]). While the platform is
//!   failing, the answer is queued in the outbox as a direct message, which
//!   goes out once the platform is back.
//!
//! Each adapter keeps its payloads, its acknowledgements and the calls that
//! send an answer; [`Voice`] is how its answers read.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use crate::adapters::chat_retry::{self, Peer};
use crate::adapters::seen::{Seen, DEDUPE_TTL};
use crate::app::effects::Signed;
use crate::app::engine::{Actor, Engine, Reply, STORE_FAILED};
use crate::app::ports::{ChatError, StoreError};
use crate::domain::command::COMMANDS;
use crate::domain::time::Span;
use crate::domain::values::{Person, RequestId, UserId};

/// How long an answer waits for the work, by default: Slack and Discord each
/// give 3 s before they call an interaction failed.
pub const ACK_DEADLINE: Duration = Duration::from_millis(2500);

/// Whether a thread message is meant as a command, so that ordinary
/// conversation in a card's thread gets no answer.
pub fn looks_like_command(text: &str) -> bool {
    let t = text.trim();
    let t = t
        .strip_prefix("/passport")
        .map(str::trim_start)
        .unwrap_or(t);
    let Some(first) = t.split_whitespace().next() else {
        return false;
    };
    let first = first.to_ascii_lowercase();
    first == "done"
        || (first.starts_with('+') && Span::parse(&first).is_some())
        || COMMANDS.iter().any(|c| c.name == first)
}

/// How a platform's answers read, and what it is called.
pub struct Voice {
    /// The platform's name in logs: `Slack`, `Discord`.
    pub platform: &'static str,
    /// The chat surface's name (notices, chat references, delivery keys).
    pub surface: &'static str,
    /// The mark before a refusal or a failure.
    pub warning: &'static str,
    /// How a person types `list` there.
    pub list: &'static str,
}

impl Voice {
    /// The answer to a command: its text, marked when it was refused.
    pub fn reply_text(&self, reply: &Reply) -> String {
        if reply.ok {
            reply.text.clone()
        } else {
            format!("{} {}", self.warning, reply.text)
        }
    }

    /// The answer when the work itself failed (it panicked or was cancelled).
    pub fn failed(&self) -> String {
        format!(
            "{} Passport hit an internal error and may not have acted: check with `{}`, and tell your admins if it happens again",
            self.warning, self.list
        )
    }
}

/// Where the work behind an answer stands when the answer must go.
pub enum Outcome {
    /// Finished: the answer's text, or `None` when there is nothing to say
    /// (a replayed delivery).
    Done(Option<String>),
    /// Still running: it is answered later.
    Running(JoinHandle<Option<String>>),
}

pub struct InboundCore {
    pub engine: Arc<Engine>,
    pub voice: Voice,
    seen: Seen,
    /// The platform as the answers sent outside the outbox see it: they count
    /// towards the breaker the dispatcher keeps for it, and wait while it is open.
    peer: Peer,
    /// How long an answer waits for the work.
    pub deadline: Duration,
}

impl InboundCore {
    pub fn new(engine: Arc<Engine>, peer: Peer, voice: Voice, deadline: Duration) -> Self {
        Self {
            engine,
            voice,
            seen: Seen::default(),
            peer,
            deadline,
        }
    }

    /// Whether the delivery `key` of `kind` is seen for the first time
    /// lately; one without a key always is.
    pub fn first_delivery(&self, kind: &str, key: Option<&str>) -> bool {
        match key.filter(|k| !k.is_empty()) {
            Some(k) => self.seen.first(&format!("{kind}:{k}")),
            None => true,
        }
    }

    /// Whether the database, too, sees this signed request for the first
    /// time (it remembers past a restart). Asked before anything acts;
    /// `Err` is the answer to give when the database cannot say, since acting
    /// then could act twice.
    pub async fn first_signed(&self, kind: &str, key: Option<&str>) -> Result<bool, String> {
        let Some(signed) = self.signed(kind, key) else {
            return Ok(true);
        };
        let first = self
            .engine
            .store()
            .first_signed(&signed.key, signed.until)
            .await;
        self.seen_in_store(first)
    }

    /// The key under which the database remembers the signed request `key`
    /// of `kind` until its signature window has closed; none without a key.
    fn signed(&self, kind: &str, key: Option<&str>) -> Option<Signed> {
        let k = key.filter(|k| !k.is_empty())?;
        let kept = Span::from_millis(DEDUPE_TTL.as_millis() as i64);
        Some(Signed {
            key: format!("{}:{kind}:{k}", self.voice.surface),
            until: self.engine.now().plus(kept),
        })
    }

    /// What the database said of a signed request: whether it is new (one
    /// seen before is logged), or when it could not say, the answer to give,
    /// since acting then could act twice.
    fn seen_in_store(&self, first: Result<bool, StoreError>) -> Result<bool, String> {
        let platform = self.voice.platform;
        match first {
            Ok(true) => Ok(true),
            Ok(false) => {
                tracing::info!("signed {platform} request seen before (replayed, or delivered again after a restart); ignored");
                Ok(false)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record a signed {platform} request, so it is not acted on");
                Err(format!("{} {STORE_FAILED}", self.voice.warning))
            }
        }
    }

    /// Runs `line` as [`run`](Self::run) does, for the signed request `key`
    /// of `kind` that the database has not been asked about yet (see
    /// [`Engine::handle_signed`]): `Ok(None)` when it was seen before, `Err`
    /// with the answer to give when the database cannot say.
    pub async fn run_signed<F, Fut>(
        &self,
        (kind, key): (&str, Option<&str>),
        user: &str,
        person: F,
        line: &str,
        thread: Option<RequestId>,
    ) -> Result<Option<Reply>, String>
    where
        F: FnOnce(UserId) -> Fut,
        Fut: Future<Output = Person>,
    {
        let Some(signed) = self.signed(kind, key) else {
            return Ok(Some(self.run(user, person, line, thread).await));
        };
        let actor = match self.actor(user, person).await {
            Ok(actor) => actor,
            // Nothing acts on a malformed id, so its key need not be kept.
            Err(reply) => return Ok(Some(reply)),
        };
        match self
            .engine
            .handle_signed(&actor, line, thread, signed)
            .await
        {
            Ok(Some(reply)) => Ok(Some(reply)),
            seen => self.seen_in_store(seen.map(|_| false)).map(|_| None),
        }
    }

    /// Runs `line` as the person with the chat id `user`, named by `person`,
    /// within `thread` when given.
    pub async fn run<F, Fut>(
        &self,
        user: &str,
        person: F,
        line: &str,
        thread: Option<RequestId>,
    ) -> Reply
    where
        F: FnOnce(UserId) -> Fut,
        Fut: Future<Output = Person>,
    {
        match self.actor(user, person).await {
            Ok(actor) => self.engine.handle_line(&actor, line, thread).await,
            Err(refused) => refused,
        }
    }

    /// A message `text` that `user` (named by `person`) wrote in the thread
    /// of the card `card` (in `channel`, where message ids are per channel):
    /// when it reads as a command and the card is a request's, it runs
    /// within that request and its reply is returned; anything else is
    /// conversation (`None`). `(kind, key)` names this delivery (Slack's
    /// event id, Discord's message id): it is remembered in memory and in the
    /// database, so a delivery repeated, also after a restart, acts once.
    pub async fn thread_command<F, Fut>(
        &self,
        (kind, key): (&str, Option<&str>),
        user: &str,
        person: F,
        (channel, card): (Option<&str>, &str),
        text: &str,
    ) -> Option<Reply>
    where
        F: FnOnce(UserId) -> Fut,
        Fut: Future<Output = Person>,
    {
        if !looks_like_command(text) || !self.first_delivery(kind, key) {
            return None;
        }
        let request = self.request_of(channel, card).await?;
        if let Some(key) = key.filter(|k| !k.is_empty()) {
            let key = format!("{}:{kind}:{key}", self.voice.surface);
            let platform = self.voice.platform;
            match self
                .engine
                .store()
                .first_delivery(&key, self.engine.now())
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(
                        "{platform} thread message delivered again after a restart; ignored"
                    );
                    return None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record a {platform} thread message's delivery")
                }
            }
        }
        Some(self.run(user, person, text, Some(request)).await)
    }

    /// Sends with `send`, retrying on rate limits and temporary failures
    /// through the platform's breaker (`what` names it in logs); the error
    /// once it gives up, for the caller to try another way.
    pub async fn attempt<T, F, Fut>(&self, what: &str, send: F) -> Result<T, ChatError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ChatError>>,
    {
        chat_retry::answer(what, &self.peer, send).await
    }

    /// The person with the chat id `user`, named by `person`, acting here;
    /// the reply refusing a malformed id.
    async fn actor<F, Fut>(&self, user: &str, person: F) -> Result<Actor, Reply>
    where
        F: FnOnce(UserId) -> Fut,
        Fut: Future<Output = Person>,
    {
        let id = UserId::parse(user).map_err(|e| Reply {
            ok: false,
            text: e.0,
            request: None,
        })?;
        Ok(Actor {
            person: person(id).await,
            surface: self.voice.surface.into(),
        })
    }

    /// The request whose card (or card thread) is `message` (in `channel`,
    /// where message ids are per channel).
    pub async fn request_of(&self, channel: Option<&str>, message: &str) -> Option<RequestId> {
        let store = self.engine.store();
        match store
            .request_for_message(self.voice.surface, channel, message)
            .await
        {
            Ok(found) => found,
            Err(e) => {
                let platform = self.voice.platform;
                tracing::warn!(error = %e, "cannot look up the request of a {platform} thread");
                None
            }
        }
    }

    /// Waits for `work` until `until`: its answer if it finished, else the
    /// work still running.
    pub async fn answer_by(&self, until: Instant, mut work: JoinHandle<Option<String>>) -> Outcome {
        match tokio::time::timeout_at(until, &mut work).await {
            Ok(done) => Outcome::Done(self.text_of(done)),
            Err(_) => Outcome::Running(work),
        }
    }

    /// The answer of work that outlived the acknowledgement, once it is done.
    pub async fn answer_of(&self, work: JoinHandle<Option<String>>) -> Option<String> {
        self.text_of(work.await)
    }

    fn text_of(&self, done: Result<Option<String>, JoinError>) -> Option<String> {
        done.unwrap_or_else(|_| Some(self.voice.failed()))
    }

    /// Sends the answer `text` for `user` with `send`, retrying on rate
    /// limits and temporary failures (`what` names it in logs). A refused
    /// answer is dropped; one the platform cannot take now because it is
    /// failing goes as a direct message once it is back.
    pub async fn deliver<T, F, Fut>(&self, what: &str, user: &str, text: &str, send: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ChatError>>,
    {
        match self.attempt(what, send).await {
            Ok(_) => {}
            Err(ChatError::Permanent(e)) => {
                tracing::warn!(error = %e, "cannot send {what}: refused")
            }
            Err(e) => self.answer_later(user, text, &e).await,
        }
    }

    /// An answer the platform could not take now because it is failing
    /// (`why`): queued as a direct message in the outbox, which delivers it
    /// once the platform is back.
    async fn answer_later(&self, user: &str, text: &str, why: &ChatError) {
        let queued = match UserId::parse(user) {
            Ok(id) => self
                .engine
                .answer_later(&id, self.voice.surface, text)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.0),
        };
        let platform = self.voice.platform;
        match queued {
            Ok(()) => {
                tracing::info!(error = %why, "{platform} is failing; the answer goes as a direct message once it is back")
            }
            Err(e) => {
                tracing::warn!(error = %why, queue_error = %e, "{platform} is failing and the answer could not be queued; it is lost")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_commands_are_told_from_conversation() {
        for yes in [
            "extend 1h",
            "+30m",
            "done",
            "Complete",
            "/passport extend 2h",
            "show",
        ] {
            assert!(looks_like_command(yes), "{yes}");
        }
        for no in ["thanks!", "+1", "looks good", "", "doneness is relative"] {
            assert!(!looks_like_command(no), "{no}");
        }
    }

    const SLACK: Voice = Voice {
        platform: "Slack",
        surface: "slack",
        warning: ":warning:",
        list: "list",
    };

    #[test]
    fn refusals_and_failures_are_marked() {
        let refused = Reply {
            ok: false,
            text: "you cannot approve your own request".into(),
            request: None,
        };
        assert_eq!(
            SLACK.reply_text(&refused),
            ":warning: you cannot approve your own request"
        );
        let done = Reply {
            ok: true,
            ..refused
        };
        assert_eq!(
            SLACK.reply_text(&done),
            "you cannot approve your own request"
        );
        assert_eq!(
            SLACK.failed(),
            ":warning: Passport hit an internal error and may not have acted: check with `list`, and tell your admins if it happens again"
        );
    }
}
