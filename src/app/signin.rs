//! Signing in from a terminal through chat, and the API tokens it yields.
//!
//! `passport login` starts an attempt ([`Engine::start_login`]) and shows a
//! one-time code. The person types `login CODE` in chat; Passport answers in a
//! direct message with where the sign-in comes from and Confirm and Cancel
//! buttons (each carries its command line, `login CODE confirm`). Only the
//! person who typed the code can confirm it. The terminal polls
//! ([`Engine::poll_login`]) and, once confirmed, receives a token that is made
//! at that poll: the store keeps only its hash, so the token exists in the
//! clear only in that one answer.
//!
//! Unknown codes count against the person who typed them (in memory, like the
//! per-person command limit), and sign-in starts against the address they come
//! from, so neither guessing nor filling the table gets far.

use std::collections::HashMap;
use std::sync::Mutex;

use ring::rand::{SecureRandom as _, SystemRandom};
use serde_json::json;

use crate::domain::command::LoginStep;
use crate::domain::notice::{Action, ActionStyle, Notice};
use crate::domain::request::RefusalKind;
use crate::domain::signin::{
    terminal_text, ApiToken, ChatIdentity, LoginAttempt, LoginCode, LoginId, LoginState,
    LogoutScope, PollOutcome, PollSecret, TokenProblem, TokenRecord, CODE_TTL,
};
use crate::domain::time::{Span, Timestamp};
use crate::domain::values::{InputError, RequestId, UserId};

use super::effects::Effects;
use super::engine::{Actor, AppError, Engine};
use super::ports::{IssuedToken, StoreError};

/// Unknown codes one person may type per window before being told to wait.
pub const GUESSES: (u32, Span) = (5, Span::from_minutes(10));
/// Sign-ins one address may start per window.
pub const STARTS: (u32, Span) = (20, Span::from_minutes(10));
/// How often the terminal should poll.
pub const POLL_INTERVAL_SECONDS: u64 = 2;

/// What the sign-in use cases need beyond the engine's ports.
pub struct SignIn {
    /// How long an API token lives.
    pub token_ttl: Span,
    guesses: Window,
    starts: Window,
}

impl SignIn {
    pub fn new(token_ttl: Span) -> Self {
        Self {
            token_ttl,
            guesses: Window::new(GUESSES.0, GUESSES.1),
            starts: Window::new(STARTS.0, STARTS.1),
        }
    }
}

impl Default for SignIn {
    fn default() -> Self {
        Self::new(Span::from_hours(12))
    }
}

/// Counts events per key in a fixed window (in memory: a restart forgives,
/// which a limit against guessing and flooding can afford).
struct Window {
    limit: u32,
    span: Span,
    counts: Mutex<HashMap<String, (Timestamp, u32)>>,
}

impl Window {
    fn new(limit: u32, span: Span) -> Self {
        Self {
            limit,
            span,
            counts: Mutex::default(),
        }
    }

    /// How long `key` must wait, if it is at the limit at `now`.
    fn wait(&self, key: &str, now: Timestamp) -> Option<Span> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        match counts.get(key) {
            Some((start, n)) if *n >= self.limit && now.since(*start) < self.span => {
                Some(self.span.saturating_sub(now.since(*start)))
            }
            _ => None,
        }
    }

    /// Counts one event of `key` at `now`.
    fn hit(&self, key: &str, now: Timestamp) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() > 10_000 {
            counts.retain(|_, (start, _)| now.since(*start) < self.span);
        }
        let entry = counts.entry(key.to_owned()).or_insert((now, 0));
        if now.since(entry.0) >= self.span {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// Why a sign-in or token call failed, grouped by the answer it gets.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error(transparent)]
    Input(#[from] InputError),
    /// Too many attempts from here: wait.
    #[error("{0}")]
    Limited(String),
    /// No such sign-in, or the poll secret does not match (told apart from
    /// nothing, so the id alone reveals nothing).
    #[error("no sign-in matches: run `passport login <server url>` again")]
    NotFound,
    /// Expired, cancelled or collected already.
    #[error("{0}")]
    Gone(String),
    /// No token, or one that does not work.
    #[error("{0}")]
    Unauthorized(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A sign-in just started: what the terminal is told.
#[derive(Debug)]
pub struct Started {
    pub id: LoginId,
    pub secret: PollSecret,
    pub code: LoginCode,
    pub expires_at: Timestamp,
}

/// What a poll found.
#[derive(Debug)]
pub enum Polled {
    Pending {
        expires_at: Timestamp,
    },
    Confirmed {
        token: ApiToken,
        expires_at: Timestamp,
        owner: ChatIdentity,
    },
}

/// The caller of an API call: who the token is bound to, on the chat surface
/// it was bound on (so notices go there).
#[derive(Debug, Clone)]
pub struct ApiSession {
    pub token: i64,
    pub actor: Actor,
    pub expires_at: Timestamp,
}

/// Random bytes from the operating system. The one source of randomness the
/// use cases have: values made from it are parsed types (`LoginCode`,
/// `ApiToken`), and tests never need to predict them.
fn random<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Other("the system's random source failed".into()))?;
    Ok(bytes)
}

fn new_code() -> Result<LoginCode, StoreError> {
    // 64 bytes for 8 characters: each byte is kept with probability 31/32,
    // so running out is not a practical possibility.
    let pool: [u8; 64] = random()?;
    let mut bytes = pool.into_iter();
    Ok(LoginCode::generate(|| bytes.next().unwrap_or(0)))
}

fn wait_text(wait: Span) -> String {
    let rounded = wait.to_nearest_minute();
    if rounded < Span::from_minutes(1) {
        "a minute".into()
    } else {
        rounded.to_string()
    }
}

fn where_from(login: &LoginAttempt) -> String {
    format!(
        "host `{}` at address {} ({}), started {}",
        login.host,
        login.address,
        login.client,
        login.started_at.rfc3339()
    )
}

impl Engine {
    /// A terminal starts signing in from `address`.
    pub async fn start_login(
        &self,
        host: &str,
        client: &str,
        address: &str,
    ) -> Result<Started, SignInError> {
        let now = self.clock.now();
        let host = terminal_text(host, "host")?;
        let client = terminal_text(client, "client")?;
        if let Some(wait) = self.signin.starts.wait(address, now) {
            tracing::warn!(address, "sign-in start refused: too many from this address");
            return Err(SignInError::Limited(format!(
                "too many sign-ins started from this address: try again in {}",
                wait_text(wait)
            )));
        }
        self.signin.starts.hit(address, now);
        let login = LoginAttempt {
            id: LoginId::from_bytes(random()?),
            host,
            client,
            address: address.to_owned(),
            started_at: now,
            expires_at: now.plus(CODE_TTL),
            state: LoginState::Pending,
            claimed_by: None,
        };
        let code = new_code()?;
        let secret = PollSecret::from_bytes(random()?);
        // A start is not a Logbook event: anyone may start one, and the
        // Logbook records what people did. The log line names the attempt.
        self.store
            .login_start(
                &login,
                &code.hash(),
                &secret.hash(),
                Effects::default(),
                now,
            )
            .await?;
        tracing::info!(login = %login.id, host = %login.host, address, "sign-in started");
        Ok(Started {
            id: login.id,
            secret,
            code,
            expires_at: login.expires_at,
        })
    }

    /// The terminal asks whether its sign-in was confirmed; the first poll
    /// after the confirmation receives the token.
    pub async fn poll_login(&self, id: &str, secret: &str) -> Result<Polled, SignInError> {
        let now = self.clock.now();
        let (Some(id), Some(secret)) = (LoginId::parse(id), PollSecret::parse(secret)) else {
            return Err(SignInError::NotFound);
        };
        let Some((login, stored)) = self.store.login_by_id(&id).await? else {
            return Err(SignInError::NotFound);
        };
        if stored != secret.hash() {
            tracing::warn!(login = %id, "sign-in poll refused: wrong poll secret");
            return Err(SignInError::NotFound);
        }
        match login.poll(now) {
            PollOutcome::Pending => Ok(Polled::Pending {
                expires_at: login.expires_at,
            }),
            PollOutcome::Gone(why) => Err(SignInError::Gone(why)),
            PollOutcome::Collect(owner) => {
                let token = ApiToken::from_bytes(random()?);
                let expires_at = now.plus(self.signin.token_ttl);
                let surfaces = self.settings.surfaces.clone();
                let (who, login_id, host) = (owner.clone(), id.clone(), login.host.clone());
                let record = Box::new(move |token_id: i64| {
                    let mut fx = Effects::default();
                    fx.log(
                        now,
                        who.person.id.as_str(),
                        None,
                        "token_issued",
                        format!(
                            "API token {token_id} issued to {} for the terminal on `{host}` until {}",
                            who.person.handle,
                            expires_at.rfc3339()
                        ),
                        json!({
                            "token": token_id,
                            "login": login_id.as_str(),
                            "surface": who.surface,
                            "expires_at": expires_at.rfc3339(),
                        }),
                    );
                    fx.route(&surfaces, &who.surface);
                    fx
                });
                let collected = self
                    .store
                    .login_collect(
                        &IssuedToken {
                            login: id.clone(),
                            hash: token.hash(),
                            owner: owner.clone(),
                            expires_at,
                        },
                        record,
                        now,
                    )
                    .await?;
                match collected {
                    Some(token_id) => {
                        tracing::info!(login = %id, token = token_id, "API token issued");
                        self.wake.notify_waiters();
                        Ok(Polled::Confirmed {
                            token,
                            expires_at,
                            owner,
                        })
                    }
                    None => Err(SignInError::Gone(
                        "the token of this sign-in was handed out already: run `passport login` again"
                            .into(),
                    )),
                }
            }
        }
    }

    /// Who a bearer token belongs to. Refusals of a token that exists but
    /// expired or was revoked are recorded in the Logbook (once per token).
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<ApiSession, SignInError> {
        let Some(bearer) = bearer else {
            return Err(SignInError::Unauthorized(
                "no API token: sign in with `passport login <server url>`".into(),
            ));
        };
        let unknown = || {
            SignInError::Unauthorized(
                "unknown API token: sign in again with `passport login <server url>`".into(),
            )
        };
        let token = ApiToken::parse(bearer).ok_or_else(unknown)?;
        let record = self.store.token(&token.hash()).await?.ok_or_else(unknown)?;
        let now = self.clock.now();
        match record.check(now) {
            Ok(()) => Ok(ApiSession {
                token: record.id,
                actor: Actor {
                    person: record.owner.person.clone(),
                    surface: record.owner.surface.clone(),
                },
                expires_at: record.expires_at,
            }),
            Err(problem) => {
                let (why, text) = match problem {
                    TokenProblem::Expired => (
                        "expired",
                        format!(
                            "your sign-in expired at {}: run `passport login <server url>` again",
                            record.expires_at.rfc3339()
                        ),
                    ),
                    TokenProblem::Revoked => (
                        "revoked",
                        "your sign-in was ended (logout): run `passport login <server url>` again"
                            .to_owned(),
                    ),
                };
                if !record.refusal_recorded {
                    self.record_token_refusal(&record, why, now).await?;
                }
                Err(SignInError::Unauthorized(text))
            }
        }
    }

    async fn record_token_refusal(
        &self,
        record: &TokenRecord,
        why: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut fx = Effects::default();
        fx.log(
            now,
            record.owner.person.id.as_str(),
            None,
            "token_refused",
            format!(
                "API token {} of {} refused: {why}",
                record.id, record.owner.person.handle
            ),
            json!({ "token": record.id, "reason": why }),
        );
        fx.route(&self.settings.surfaces, &record.owner.surface);
        self.store.token_refused(record.id, fx, now).await?;
        self.wake.notify_waiters();
        Ok(())
    }

    /// `POST /api/v1/logout`: ends the token the call was made with.
    pub async fn logout_session(&self, session: &ApiSession) -> Result<(), SignInError> {
        self.end_tokens(
            &session.actor,
            LogoutScope::Token(session.token),
            &session.actor.person.id,
        )
        .await?;
        Ok(())
    }

    async fn end_tokens(
        &self,
        actor: &Actor,
        scope: LogoutScope,
        whose: &UserId,
    ) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let surfaces = self.settings.surfaces.clone();
        let (by, origin, whose_text) = (
            actor.person.clone(),
            actor.surface.clone(),
            whose.to_string(),
        );
        let what = match &scope {
            LogoutScope::Token(id) => format!("API token {id}"),
            LogoutScope::User(_) => "API tokens".to_owned(),
        };
        let record = Box::new(move |n: i64| {
            let mut fx = Effects::default();
            let summary = if by.id.as_str() == whose_text {
                format!("{} signed out: {n} {what} ended", by.handle)
            } else {
                format!("{} signed out {whose_text}: {n} {what} ended", by.handle)
            };
            fx.log(
                now,
                by.id.as_str(),
                None,
                "logout",
                summary,
                json!({ "user": whose_text, "by": by.id.as_str(), "tokens": n }),
            );
            fx.route(&surfaces, &origin);
            fx
        });
        let n = self.store.revoke_tokens(&scope, record, now).await?;
        self.wake.notify_waiters();
        Ok(n)
    }

    /// `logout [@user]` in chat.
    pub(super) async fn logout_command(
        &self,
        actor: &Actor,
        target: Option<UserId>,
    ) -> Result<(String, Option<RequestId>), AppError> {
        let whose = target.unwrap_or_else(|| actor.person.id.clone());
        if whose != actor.person.id {
            let who = self.membership(&actor.person).await;
            if !self.policy.is_admin(&who) {
                return Err(RefusalKind::NotAllowed(
                    "only admins can end someone else's sign-ins: `logout` alone ends yours".into(),
                )
                .into());
            }
        }
        let n = self
            .end_tokens(actor, LogoutScope::User(whose.clone()), &whose)
            .await?;
        let tokens = if n == 1 { "sign-in" } else { "sign-ins" };
        Ok((
            if whose == actor.person.id {
                format!("signed out: {n} terminal {tokens} ended")
            } else {
                format!("{n} terminal {tokens} of {whose} ended")
            },
            None,
        ))
    }

    /// `login CODE [confirm|cancel]` in chat.
    pub(super) async fn login_command(
        &self,
        actor: &Actor,
        code: LoginCode,
        step: LoginStep,
    ) -> Result<(String, Option<RequestId>), AppError> {
        let now = self.clock.now();
        let key = format!("{}:{}", actor.surface, actor.person.id);
        if let Some(wait) = self.signin.guesses.wait(&key, now) {
            return Err(AppError::Limited(format!(
                "too many unknown sign-in codes: wait {} before typing another",
                wait_text(wait)
            )));
        }
        let who = ChatIdentity {
            person: actor.person.clone(),
            surface: actor.surface.clone(),
        };
        let Some(mut login) = self.store.login_by_code(&code.hash()).await? else {
            self.signin.guesses.hit(&key, now);
            self.login_refused(actor, None, "unknown code", now).await?;
            return Err(RefusalKind::NotAllowed(
                "no sign-in has this code: check it against your terminal, or run `passport login` again for a new one".into(),
            )
            .into());
        };
        let was = login.state;
        let outcome = match step {
            LoginStep::Show => login.claim(&who, now),
            LoginStep::Confirm => login.confirm(&who, now),
            LoginStep::Cancel => login.cancel(&who, now),
        };
        if let Err(refusal) = outcome {
            let why = match &refusal {
                RefusalKind::NotAllowed(_) => "not the person who typed the code",
                RefusalKind::AlreadyDone(_) => "code used already",
                RefusalKind::WrongState(_) if login.state == LoginState::Cancelled => "cancelled",
                RefusalKind::WrongState(_) => "code expired",
            };
            self.login_refused(actor, Some(&login), why, now).await?;
            return Err(refusal.into());
        }
        let mut fx = Effects::default();
        let person = &actor.person;
        let details = json!({
            "login": login.id.as_str(),
            "host": login.host,
            "address": login.address,
            "client": login.client,
            "surface": actor.surface,
        });
        let reply = match step {
            LoginStep::Show => {
                fx.log(
                    now,
                    person.id.as_str(),
                    None,
                    "login_claimed",
                    format!(
                        "{} typed the code of sign-in {} from {}",
                        person.handle,
                        login.id,
                        where_from(&login)
                    ),
                    details,
                );
                fx.notify(Notice::Direct {
                    user: person.id.clone(),
                    request: None,
                    text: format!(
                        "Sign-in request from {}. Confirm only if this is your own terminal and you started it just now: whoever holds it acts as you in Passport until the sign-in ends. If someone sent you this code, click Cancel.",
                        where_from(&login)
                    ),
                    actions: vec![
                        Action {
                            label: "Confirm".into(),
                            command: format!("login {code} confirm"),
                            style: ActionStyle::Primary,
                        },
                        Action {
                            label: "Cancel".into(),
                            command: format!("login {code} cancel"),
                            style: ActionStyle::Danger,
                        },
                    ],
                });
                format!(
                    "sign-in from {}: confirm it in the direct message Passport just sent you, only if it is your terminal",
                    where_from(&login)
                )
            }
            LoginStep::Confirm => {
                fx.log(
                    now,
                    person.id.as_str(),
                    None,
                    "login_confirmed",
                    format!(
                        "{} confirmed sign-in {} from {}",
                        person.handle,
                        login.id,
                        where_from(&login)
                    ),
                    details,
                );
                format!(
                    "confirmed: the terminal on `{}` is signed in as you; `/passport logout` ends it",
                    login.host
                )
            }
            LoginStep::Cancel => {
                fx.log(
                    now,
                    person.id.as_str(),
                    None,
                    "login_cancelled",
                    format!(
                        "{} cancelled sign-in {} from {}",
                        person.handle,
                        login.id,
                        where_from(&login)
                    ),
                    details,
                );
                "cancelled: that terminal is not signed in".into()
            }
        };
        fx.route(&self.settings.surfaces, &actor.surface);
        if !self.store.login_save(&login, was, fx, now).await? {
            return Err(RefusalKind::WrongState(
                "this sign-in changed meanwhile: run `passport login` again for a new code".into(),
            )
            .into());
        }
        Ok((reply, None))
    }

    async fn login_refused(
        &self,
        actor: &Actor,
        login: Option<&LoginAttempt>,
        why: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut fx = Effects::default();
        let summary = match login {
            Some(l) => format!(
                "sign-in {} refused for {}: {why}",
                l.id, actor.person.handle
            ),
            None => format!("sign-in code refused for {}: {why}", actor.person.handle),
        };
        fx.log(
            now,
            actor.person.id.as_str(),
            None,
            "login_refused",
            summary,
            json!({
                "login": login.map(|l| l.id.as_str()),
                "reason": why,
                "surface": actor.surface,
            }),
        );
        fx.route(&self.settings.surfaces, &actor.surface);
        self.store.record(fx, now).await
    }
}
