//! The use cases: commands from people (request, approve, deny, cancel,
//! complete, extend, revoke, and the read-only list/show/audit/help).
//!
//! Each command resolves what it needs from the outside world first (groups,
//! instance descriptions), then makes its change through [`Store::update`],
//! where the domain decides and the change, its Logbook events, notices and
//! timers commit together. The answer is sent only after that commit.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::{Notify, Semaphore};

use crate::domain::certificate::CertificateSpec;
use crate::domain::command::{help_text, Command, Grammar, ListFilter, RequestSpec, Shown};
use crate::domain::notice::Notice;
use crate::domain::policy::{Membership, Policy};
use crate::domain::request::{
    AccessRequest, ApprovalOutcome, ExtensionApproval, NewRequest, Refusal, RefusalKind,
    RequestState,
};
use crate::domain::time::{Span, Timestamp};
use crate::domain::values::{
    GrantDuration, InputError, InstanceId, Person, Reason, RequestId, SshPublicKey, UserId,
};

use super::effects::{Effects, Signed, TimerKind};
use super::messages;
use super::ports::{
    CertificateSigner, CheckpointSink, Clock, Described, Directory, Mutation, ProvisionError,
    Provisioner, SessionBroker, SessionCredentials, Slot, Store, StoreError,
};

/// Settings the use cases need beyond the policy and grammar.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// How long before expiry to warn, e.g. 15m and 5m.
    pub warnings: Vec<Span>,
    /// Names of the chat surfaces notices go to.
    pub surfaces: Vec<String>,
    /// How long the on-instance expiry outlasts Passport's own, so the
    /// instance's dead-man removal never cuts access before the bot does.
    pub on_instance_grace: Span,
    pub limits: PersonLimits,
    /// Delivered notices older than this are pruned by reconciliation.
    pub outbox_retention: Span,
}

/// What one person may do, so nobody can push everyone else's cards past
/// their approval window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersonLimits {
    /// Pending requests one requester may have at once; 0 for no cap.
    pub max_pending: u32,
    /// Commands that change something, per person per minute; 0 for no limit.
    pub commands_per_minute: u32,
}

impl Default for PersonLimits {
    fn default() -> Self {
        Self {
            max_pending: 5,
            commands_per_minute: 60,
        }
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            warnings: vec![Span::from_minutes(15), Span::from_minutes(5)],
            surfaces: vec!["console".into()],
            on_instance_grace: Span::from_minutes(5),
            limits: PersonLimits::default(),
            outbox_retention: Span::from_hours(720),
        }
    }
}

/// The person acting and the surface they acted on.
#[derive(Debug, Clone)]
pub struct Actor {
    pub person: Person,
    pub surface: String,
}

/// The reply to a command's result; `id` is the request the command named.
fn reply_of(result: Result<(String, Option<RequestId>), AppError>, id: Option<RequestId>) -> Reply {
    match result {
        Ok((text, request)) => Reply::ok(text, request.or(id)),
        Err(AppError::Store(e)) => {
            tracing::error!(error = %e, "store failure while handling a command");
            Reply::error(STORE_FAILED.into(), id)
        }
        Err(e) => Reply::error(e.to_string(), id),
    }
}

/// Who acts and when, resolved once at the start of a use case that decides
/// by group: the person, their groups from the directory, whether those make
/// them an admin, and the time the command is decided at.
pub(super) struct Caller {
    pub(super) person: Person,
    pub(super) who: Membership,
    pub(super) is_admin: bool,
    pub(super) now: Timestamp,
}

impl Caller {
    /// Records `action` on request `id` in the Logbook, as done by this person now.
    fn log(
        &self,
        fx: &mut Effects,
        id: RequestId,
        action: &str,
        summary: String,
        details: serde_json::Value,
    ) {
        let by = self.person.id.as_str();
        fx.log(self.now, by, Some(id), action, summary, details);
    }

    /// Logs a decision that may give a reason ("denied", "revoked") as
    /// "denied by Ann: the reason"; returns that sentence.
    fn log_decision(
        &self,
        fx: &mut Effects,
        id: RequestId,
        action: &str,
        reason: Option<&Reason>,
    ) -> String {
        let summary = format!(
            "{action} by {}{}",
            self.person.handle,
            Reason::suffix(reason)
        );
        let details = json!({ "reason": reason.map(|r| r.as_str()) });
        self.log(fx, id, action, summary.clone(), details);
        summary
    }
}

/// What a command that may change something answers: its text and the
/// request it created or acted on.
type Answer = Result<(String, Option<RequestId>), AppError>;

/// The answer to a command, shown only to the person who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub ok: bool,
    pub text: String,
    /// The request the command created or acted on.
    pub request: Option<RequestId>,
}

impl Reply {
    fn ok(text: String, request: Option<RequestId>) -> Self {
        Self {
            ok: true,
            text,
            request,
        }
    }

    fn error(text: String, request: Option<RequestId>) -> Self {
        Self {
            ok: false,
            text,
            request,
        }
    }
}

/// A certificate issued by [`Engine::certificate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The OpenSSH certificate line.
    pub certificate: String,
    /// The login it is valid for: the request's username.
    pub principal: String,
    pub serial: u64,
    pub valid_before: Timestamp,
    /// What to tell the person: the certificate and how to connect with it.
    pub answer: String,
}

/// Whether a requester with `pending` requests waiting may not add another
/// under a cap of `cap` (0: no cap).
fn over_pending_cap(cap: u32, pending: u64) -> bool {
    cap > 0 && pending >= u64::from(cap)
}

fn too_many_pending(cap: u32) -> Refusal {
    RefusalKind::NotAllowed(format!(
        "you already have {cap} requests waiting for approval: cancel one (`list mine`, then `cancel AR-n`) or wait for a decision"
    ))
}

/// What a person is told when the database failed them.
pub const STORE_FAILED: &str = "Passport could not save that change, so nothing was done: try again in a minute, and tell your admins if it keeps failing";

/// Why a command failed, grouped by what the person can do about it.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Refused(#[from] RefusalKind),
    #[error("{0} does not exist: check the number, or `list` your requests")]
    NotFound(RequestId),
    /// Someone else's request, for something only its requester may do: the
    /// text says so in chat, and the API answers as for a missing one.
    #[error("{1}")]
    NotYours(RequestId, String),
    /// Too many commands too fast: the text says how long to wait.
    #[error("{0}")]
    Limited(String),
    #[error("cannot reach AWS right now ({0}): try again in a few minutes")]
    Unavailable(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => AppError::NotFound(id),
            other => AppError::Store(other),
        }
    }
}

pub struct Engine {
    pub(super) store: Arc<dyn Store>,
    pub(super) provisioner: Arc<dyn Provisioner>,
    pub(super) directory: Arc<dyn Directory>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) policy: Policy,
    pub(super) grammar: Grammar,
    pub(super) settings: EngineSettings,
    /// Wakes the scheduler and the outbox dispatcher after a commit.
    pub wake: Arc<Notify>,
    /// Requests whose timers are running: a request's timers run one at a
    /// time, so a removal never overlaps the grant it undoes.
    pub(super) busy: Mutex<HashSet<RequestId>>,
    /// Grants running at once, and removals: separate, so a backlog of slow
    /// grants never holds up a removal.
    pub(super) grant_slots: Semaphore,
    pub(super) revoke_slots: Semaphore,
    /// Passport's SSH CA, when configured.
    pub(super) certificates: Option<Certificates>,
    /// Scoped Session Manager credentials, when `[aws] session_role_arn` is set.
    pub(super) sessions: Option<Arc<dyn SessionBroker>>,
    /// Where checkpoints are kept besides the audit channel (`[audit] checkpoint_file`).
    pub(super) checkpoint_sink: Option<Arc<dyn CheckpointSink>>,
    /// Commands counted per person in the current minute (in memory: a
    /// restart forgives, which a limit against floods can afford).
    pub(super) recent:
        Mutex<std::collections::HashMap<crate::domain::values::UserId, (Timestamp, u32)>>,
    /// Signing in from terminals: the token lifetime and the limits on guessing.
    pub(super) signin: super::signin::SignIn,
}

/// The SSH CA and how far back certificates are dated.
#[derive(Clone)]
pub(super) struct Certificates {
    pub(super) signer: Arc<dyn CertificateSigner>,
    /// `valid_after` is this much before issue, for clocks running behind.
    pub(super) backdate: Span,
}

pub struct Ports {
    pub store: Arc<dyn Store>,
    pub provisioner: Arc<dyn Provisioner>,
    pub directory: Arc<dyn Directory>,
    pub clock: Arc<dyn Clock>,
}

impl Engine {
    pub fn new(ports: Ports, policy: Policy, grammar: Grammar, settings: EngineSettings) -> Self {
        Self {
            store: ports.store,
            provisioner: ports.provisioner,
            directory: ports.directory,
            clock: ports.clock,
            policy,
            grammar,
            settings,
            wake: Arc::new(Notify::new()),
            busy: Mutex::new(HashSet::new()),
            grant_slots: Semaphore::new(super::lifecycle::CONCURRENT_GRANTS),
            revoke_slots: Semaphore::new(super::lifecycle::CONCURRENT_REVOKES),
            certificates: None,
            sessions: None,
            checkpoint_sink: None,
            recent: Mutex::default(),
            signin: super::signin::SignIn::default(),
        }
    }

    /// API tokens from `passport login` live `ttl` (12h by default).
    pub fn with_token_ttl(mut self, ttl: Span) -> Self {
        self.signin = super::signin::SignIn::new(ttl);
        self
    }

    /// Counts one command of `user` at `now`; refuses when the person has
    /// sent `commands_per_minute` already in the last minute's window.
    fn count_command(
        &self,
        user: &crate::domain::values::UserId,
        now: Timestamp,
    ) -> Result<(), AppError> {
        let limit = self.settings.limits.commands_per_minute;
        if limit == 0 {
            return Ok(());
        }
        let window = Span::from_minutes(1);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() > 10_000 {
            recent.retain(|_, (start, _)| now.since(*start) < window);
        }
        let entry = recent.entry(user.clone()).or_insert((now, 0));
        if now.since(entry.0) >= window {
            *entry = (now, 0);
        }
        if entry.1 >= limit {
            let wait = window
                .saturating_sub(now.since(entry.0))
                .to_nearest_minute();
            let wait = if wait < Span::from_minutes(1) {
                "a minute".to_owned()
            } else {
                wait.to_string()
            };
            return Err(AppError::Limited(format!(
                "slow down: at most {limit} commands a minute; try again in {wait}"
            )));
        }
        entry.1 += 1;
        Ok(())
    }

    /// Issues certificates from `signer` (`cert AR-n`) and has Linux grants
    /// trust its keys instead of installing the requester's key.
    pub fn with_certificates(mut self, signer: Arc<dyn CertificateSigner>, backdate: Span) -> Self {
        self.certificates = Some(Certificates { signer, backdate });
        self
    }

    /// Hands out Session Manager credentials scoped to a request
    /// (`session_credentials`) and ends its sessions when access ends.
    pub fn with_sessions(mut self, broker: Arc<dyn SessionBroker>) -> Self {
        self.sessions = Some(broker);
        self
    }

    /// Keeps every Logbook checkpoint in `sink` too, besides the audit channel.
    pub fn with_checkpoint_sink(mut self, sink: Arc<dyn CheckpointSink>) -> Self {
        self.checkpoint_sink = Some(sink);
        self
    }

    /// The session broker, when one is configured.
    pub fn sessions(&self) -> Option<&Arc<dyn SessionBroker>> {
        self.sessions.as_ref()
    }

    /// AWS credentials that can open Session Manager sessions only to the
    /// active instances of `id`, only with the documents its rules allow, and
    /// only until its access ends. Recorded in the Logbook (the access key
    /// id, never the secret).
    pub async fn session_credentials(
        &self,
        actor: &Actor,
        id: RequestId,
        only: Option<&InstanceId>,
    ) -> Result<(SessionCredentials, Timestamp), AppError> {
        let Some(broker) = self.sessions.clone() else {
            return Err(RefusalKind::NotAllowed(
                "this Passport hands out no Session Manager credentials (`[aws] session_role_arn` is not set): ask your admins".into(),
            )
            .into());
        };
        let now = self.clock.now();
        let req = self.store.get(id).await?.ok_or(AppError::NotFound(id))?;
        if !req.is_requester(&actor.person.id) {
            return Err(AppError::NotYours(
                id,
                format!("only the requester of {id} can connect with it"),
            ));
        }
        let scope = req.session_scope(&actor.person.id, now, only)?;
        let credentials = broker.credentials(&scope, now).await.map_err(|e| match e {
            ProvisionError::Unavailable(why) => AppError::Unavailable(why),
            ProvisionError::Rejected(why) => RefusalKind::NotAllowed(format!(
                "AWS refused Session Manager credentials for {id} ({why}): tell your admins"
            ))
            .into(),
        })?;
        // Recorded in a change of the request, which refuses when the access
        // ended while STS was answering: so every credential handed out is in
        // the Logbook before the end, where the removal looks for them to end
        // their sessions (`lifecycle.rs`), and none is handed out after it.
        let who = actor.person.clone();
        let issued = credentials.clone();
        let instances: Vec<String> = scope
            .instances
            .iter()
            .map(|i| i.as_str().to_owned())
            .collect();
        let (ssh, port_forwarding, remote) = (
            scope.ssh,
            scope.port_forwarding,
            scope.remote_port_forwarding,
        );
        let not_after = scope.not_after;
        let record = self.mutation(move |req, fx| {
            if req.state != RequestState::Active {
                return Err(RefusalKind::WrongState(format!(
                    "{id} ended while the credentials were being made: request access again"
                )));
            }
            fx.log(
                now,
                who.id.as_str(),
                Some(id),
                "session_credentials_issued",
                format!(
                    "Session Manager credentials {} issued to {} for {} instance(s) until {}",
                    issued.access_key_id,
                    who.handle,
                    instances.len(),
                    issued.expiration,
                ),
                json!({
                    "access_key_id": issued.access_key_id,
                    "instances": instances,
                    "ssh": ssh,
                    "port_forwarding": port_forwarding,
                    "remote_port_forwarding": remote,
                    "expiration": issued.expiration.rfc3339(),
                    "access_ends_at": not_after.rfc3339(),
                }),
            );
            Ok(())
        });
        let (req, _) = self.store.update(id, None, record).await??;
        Ok((credentials, req.expires_at.unwrap_or(not_after)))
    }

    pub fn grammar(&self) -> &Grammar {
        &self.grammar
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Queues `text` for `user` as a direct message on `surface`, through the
    /// outbox: how an answer that could not be sent at once because its
    /// platform is failing still reaches the person once the platform is back.
    pub async fn answer_later(
        &self,
        user: &UserId,
        surface: &str,
        text: &str,
    ) -> Result<(), StoreError> {
        let mut fx = Effects::default();
        fx.notify(Notice::direct(user.clone(), None, text.to_owned()));
        fx.route(&[surface.to_owned()], surface);
        self.store.record(fx, self.clock.now()).await?;
        self.wake.notify_waiters();
        Ok(())
    }

    /// Parses and runs one line typed by `actor`, in the thread of `thread` if any.
    pub async fn handle_line(&self, actor: &Actor, line: &str, thread: Option<RequestId>) -> Reply {
        match self.grammar.parse_in_context(line, thread) {
            Ok(command) => self.handle(actor, command).await,
            Err(e) => Reply::error(e.0, thread),
        }
    }

    pub async fn handle(&self, actor: &Actor, command: Command) -> Reply {
        let id = command.request_id();
        reply_of(self.execute(actor, command).await, id)
    }

    /// Runs `line` from a signed chat request whose replay key the store has
    /// not been asked about: `Ok(None)` when it saw the request before, and
    /// nothing acted. A new access request records the key in the
    /// transaction that creates it (one commit, where asking first would
    /// take two); any other line has its key recorded before it runs. An
    /// answer only ever goes out once the key is known to be new.
    pub async fn handle_signed(
        &self,
        actor: &Actor,
        line: &str,
        thread: Option<RequestId>,
        signed: Signed,
    ) -> Result<Option<Reply>, StoreError> {
        let first = |signed: Signed| async move {
            self.store.first_signed(&signed.key, signed.until).await
        };
        match self.grammar.parse_in_context(line, thread) {
            Ok(command @ Command::Request(_)) => {
                match self
                    .execute_signed(actor, command, Some(signed.clone()))
                    .await
                {
                    Err(AppError::Store(StoreError::Replayed)) => Ok(None),
                    // Committed with its key.
                    Ok(done) => Ok(Some(reply_of(Ok(done), None))),
                    // Refused or failed before its commit: the answer says
                    // what is wrong, but only to the request's first delivery.
                    Err(e) if first(signed).await? => Ok(Some(reply_of(Err(e), None))),
                    Err(_) => Ok(None),
                }
            }
            parsed => {
                if !first(signed).await? {
                    return Ok(None);
                }
                Ok(Some(match parsed {
                    Ok(command) => self.handle(actor, command).await,
                    Err(e) => Reply::error(e.0, thread),
                }))
            }
        }
    }

    /// Runs one command: its answer and the request it created or acted on,
    /// or why it failed, for callers that answer each kind of failure
    /// differently (the HTTP API). [`Engine::handle`] turns this into a reply.
    pub async fn execute(
        &self,
        actor: &Actor,
        command: Command,
    ) -> Result<(String, Option<RequestId>), AppError> {
        self.execute_signed(actor, command, None).await
    }

    /// [`Engine::execute`], for a new access request asked for by the signed
    /// chat request `signed`, whose replay key the creation records.
    async fn execute_signed(
        &self,
        actor: &Actor,
        command: Command,
        signed: Option<Signed>,
    ) -> Result<(String, Option<RequestId>), AppError> {
        // Only a command that may have committed something gives the
        // scheduler new work (timers, notices) to look at.
        let reads_only = matches!(
            command,
            Command::List(_)
                | Command::Show(_)
                | Command::Audit(_)
                | Command::KeyShow
                | Command::Help
        );
        if !reads_only {
            self.count_command(&actor.person.id, self.clock.now())?;
        }
        let result = match command {
            Command::Request(spec) => self.request(actor, spec, signed).await,
            Command::Approve(id) => self.approve(actor, id, None).await,
            Command::ApproveShown(id, shown) => self.approve(actor, id, Some(shown)).await,
            Command::Deny(id, reason) => self.deny(actor, id, reason, None).await,
            Command::DenyShown(id, shown, reason) => {
                self.deny(actor, id, reason, Some(shown)).await
            }
            Command::Cancel(id) => self.cancel(actor, id).await,
            Command::Complete(id) => self.complete(actor, id).await,
            Command::Extend(id, by) => self.extend(actor, id, by).await,
            Command::Revoke(id, reason) => self.revoke(actor, id, reason).await,
            Command::List(filter) => self.list(actor, filter).await.map(|t| (t, None)),
            Command::Show(id) => self.show(actor, id).await.map(|t| (t, Some(id))),
            Command::Audit(id) => self.audit(actor, id).await.map(|t| (t, Some(id))),
            Command::Retry(id) => self.retry(actor, id).await,
            Command::Cert(id) => self
                .certificate(actor, id, None)
                .await
                .map(|issued| (issued.answer, Some(id))),
            Command::KeySet(key) => self.key(actor, KeyCommand::Set(key)).await,
            Command::KeyShow => self.key(actor, KeyCommand::Show).await,
            Command::KeyRemove => self.key(actor, KeyCommand::Remove).await,
            Command::Login(code, step) => self.login_command(actor, code, step).await,
            Command::Logout(user) => self.logout_command(actor, user).await,
            Command::Help => Ok((help_text("/passport "), None)),
        };
        if result.is_ok() && !reads_only {
            self.wake.notify_waiters();
        }
        result
    }

    pub(super) async fn membership(&self, person: &Person) -> Membership {
        Membership::new(
            person.id.clone(),
            self.directory.groups_of(&person.id).await,
        )
    }

    /// The opening of every use case that decides by group: the groups are
    /// looked up once, and the clock read after them.
    async fn caller(&self, actor: &Actor) -> Caller {
        let who = self.membership(&actor.person).await;
        Caller {
            person: actor.person.clone(),
            is_admin: self.policy.is_admin(&who),
            who,
            now: self.clock.now(),
        }
    }

    /// Wraps a change so that the card is refreshed whenever the request
    /// changed, and notices are routed to the surfaces.
    pub(super) fn mutation<F>(&self, f: F) -> Mutation
    where
        F: FnOnce(&mut AccessRequest, &mut Effects) -> Result<(), Refusal> + Send + 'static,
    {
        let tickets = self.grammar.tickets.clone();
        let surfaces = self.settings.surfaces.clone();
        let now = self.clock.now();
        Box::new(move |req: &mut AccessRequest| {
            let before = fingerprint(req);
            let mut fx = Effects::default();
            f(req, &mut fx)?;
            if fingerprint(req) != before {
                fx.notify(Notice::Card(Box::new(messages::card(req, &tickets, now))));
            }
            fx.route(&surfaces, &req.origin);
            Ok(fx)
        })
    }

    async fn change<F>(&self, id: RequestId, f: F) -> Answer
    where
        F: FnOnce(&mut AccessRequest, &mut Effects) -> Result<(), Refusal> + Send + 'static,
    {
        match self.store.update(id, None, self.mutation(f)).await? {
            Ok((_, fx)) => Ok((fx.reply, Some(id))),
            Err(refusal) => Err(refusal.into()),
        }
    }

    /// Changes request `id` for `actor`, resolved once (groups, admin, time)
    /// before the change: the opening of every decision.
    async fn change_as<F>(&self, actor: &Actor, id: RequestId, f: F) -> Answer
    where
        F: FnOnce(&mut AccessRequest, &mut Effects, &Caller) -> Result<(), Refusal>
            + Send
            + 'static,
    {
        let caller = self.caller(actor).await;
        self.change(id, move |req, fx| f(req, fx, &caller)).await
    }

    // -----------------------------------------------------------------------
    // request

    async fn request(&self, actor: &Actor, spec: RequestSpec, signed: Option<Signed>) -> Answer {
        let caller = self.caller(actor).await;
        if !self.policy.may_request(&caller.who) {
            return Err(RefusalKind::NotAllowed(
                "you are not allowed to request access: ask a Passport admin to add you to the requesters".into(),
            )
            .into());
        }
        // Checked here too so that someone at the cap is answered before the
        // instances are described; the check that holds is in the store's
        // transaction below, where concurrent requests cannot both pass it.
        let cap = self.settings.limits.max_pending;
        if over_pending_cap(cap, self.store.pending_count(&actor.person.id, cap).await?) {
            return Err(too_many_pending(cap).into());
        }
        let described = self
            .provisioner
            .describe(spec.instances.as_slice())
            .await
            .map_err(|e| AppError::Unavailable(e.to_string()))?;
        let mut instances = Vec::new();
        let mut problems = Vec::new();
        for d in described {
            match d {
                Described::Usable(info) => instances.push(info),
                Described::Unusable { id, reason } => problems.push(format!("{id}: {reason}")),
            }
        }
        if !problems.is_empty() {
            return Err(InputError::new(format!(
                "cannot request access to {}: fix or leave out these instances and ask again",
                problems.join("; ")
            ))
            .into());
        }
        // With a CA, Linux logins use certificates and no key is installed.
        if self.certificates.is_none()
            && self.provisioner.requires_ssh_key()
            && instances
                .iter()
                .any(|i| i.platform == crate::domain::request::Platform::Linux)
            && self.store.ssh_key(&actor.person.id).await?.is_none()
        {
            return Err(RefusalKind::NotAllowed(
                "register your SSH public key first, once: `/passport key set ssh-ed25519 AAAA… you@laptop` \
                 (Linux instances are reached with SSH through Session Manager)"
                    .into(),
            )
            .into());
        }
        let requirement = self.policy.requirement_for(&instances);
        if spec.duration.span() > requirement.max_duration {
            return Err(RefusalKind::NotAllowed(format!(
                "these instances allow access for at most {}: ask for {} or less",
                requirement.max_duration, requirement.max_duration
            ))
            .into());
        }
        let Caller { person, now, .. } = caller;
        let origin = actor.surface.clone();
        let approval_window = self.policy.approval_window;
        let tickets = self.grammar.tickets.clone();
        let surfaces = self.settings.surfaces.clone();
        let created = self
            .store
            .create(&actor.person.id, cap, Box::new(move |Slot { id, pending }| {
                if over_pending_cap(cap, pending) {
                    return Err(too_many_pending(cap));
                }
                let mut req = AccessRequest::new(NewRequest {
                    id,
                    requester: person.clone(),
                    origin,
                    instances,
                    duration: spec.duration,
                    ticket: spec.ticket,
                    reason: spec.reason,
                    requirement,
                    approval_window,
                    now,
                });
                let mut fx = Effects { signed, ..Effects::default() };
                let names: Vec<String> = req.instances.iter().map(|i| messages::instance_label(&req, &i.id)).collect();
                fx.log(
                    now,
                    person.id.as_str(),
                    Some(id),
                    "requested",
                    format!(
                        "requested by {} for {} on {}, {}{}",
                        person.handle,
                        req.duration,
                        summarise(&names, 5),
                        req.ticket,
                        Reason::suffix(req.reason.as_ref())
                    ),
                    json!({
                        "instances": req.instances.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
                        "duration": req.duration.to_string(),
                        "ticket": req.ticket.as_str(),
                        "reason": req.reason.as_ref().map(|r| r.as_str()),
                        "requires": req.requirement.describe(),
                        "username": req.username.as_str(),
                    }),
                );
                if req.requirement.auto_approved() {
                    req.auto_approve()?;
                    let rules: Vec<&str> = req.requirement.rules.iter().map(|r| r.rule.as_str()).collect();
                    fx.log(
                        now,
                        "passport",
                        Some(id),
                        "approved",
                        format!("auto-approved by policy ({})", rules.join(", ")),
                        json!({ "auto": true }),
                    );
                    start_provisioning(&mut req, &mut fx, now)?;
                    fx.reply = format!(
                        "{id} is auto-approved: setting up `{}` on {} instance(s); connection details follow by direct message",
                        req.username,
                        req.instances.len()
                    );
                } else {
                    fx.schedule(TimerKind::ApprovalTimeout, req.approval_deadline);
                    fx.reply = format!(
                        "request {id} received: waiting for {} (the request times out at {})",
                        req.still_needed(),
                        req.approval_deadline
                    );
                }
                fx.notify(Notice::Card(Box::new(messages::card(&req, &tickets, now))));
                fx.route(&surfaces, &req.origin);
                Ok((req, fx))
            }))
            .await?;
        match created {
            Ok((req, fx)) => Ok((fx.reply, Some(req.id))),
            Err(refusal) => Err(refusal.into()),
        }
    }

    // -----------------------------------------------------------------------
    // decisions

    /// Approves a pending request, or its pending extension. `shown` is the
    /// decision a button was shown for: approving then needs that decision to
    /// be the one waiting (see [`out_of_date`]).
    async fn approve(&self, actor: &Actor, id: RequestId, shown: Option<Shown>) -> Answer {
        let warnings = self.settings.warnings.clone();
        self.change_as(actor, id, move |req, fx, caller| {
            if let Some(stale) = shown.and_then(|shown| out_of_date(req, shown)) {
                return Err(stale);
            }
            if req.has_pending_extension() {
                return approve_extension(req, fx, caller, &warnings);
            }
            let (handle, now) = (&caller.person.handle, caller.now);
            let outcome = req.approve(&caller.who, handle, now)?;
            // How this approver qualified, for the Logbook: which rule entry
            // matched and where the group membership was read from.
            let (qualified, counts_for) = req
                .approvals
                .last()
                .map(|a| (a.qualified.clone(), a.counts_for.clone()))
                .unwrap_or_default();
            match outcome {
                ApprovalOutcome::Recorded { still_needed } => {
                    let summary = format!("approval by {handle} recorded; still needs {still_needed}");
                    let details = json!({ "qualified": qualified, "counts_for": counts_for });
                    caller.log(fx, id, "approval_recorded", summary.clone(), details);
                    fx.notify(Notice::thread(id, format!("✅ {summary}")));
                    fx.reply = format!("your approval of {id} is recorded; it still needs {still_needed}");
                }
                ApprovalOutcome::Approved => {
                    let names: Vec<&str> = req.approvals.iter().map(|a| a.handle.as_str()).collect();
                    let summary = format!("approved by {}", names.join(", "));
                    let details = json!({ "approvers": names, "qualified": qualified, "counts_for": counts_for });
                    caller.log(fx, id, "approved", summary.clone(), details);
                    metrics::histogram!("passport_time_to_approval_seconds")
                        .record(now.since(req.created_at).as_millis() as f64 / 1000.0);
                    fx.cancel.push(TimerKind::ApprovalTimeout);
                    let setting_up = format!("setting up `{}` on {} instance(s)", req.username, req.instances.len());
                    fx.notify(Notice::thread(id, format!("✅ {summary}: {setting_up}")));
                    fx.notify(Notice::to_requester(
                        req,
                        format!("Your request {id} was {summary}. Setting up access now; connection details follow."),
                    ));
                    start_provisioning(req, fx, now)?;
                    fx.reply = format!("{id} approved: setting up access for {}", req.requester.handle);
                }
            }
            Ok(())
        })
        .await
    }

    async fn deny(
        &self,
        actor: &Actor,
        id: RequestId,
        reason: Option<Reason>,
        shown: Option<Shown>,
    ) -> Answer {
        self.change_as(actor, id, move |req, fx, caller| {
            if let Some(stale) = shown.and_then(|shown| out_of_date(req, shown)) {
                return Err(stale);
            }
            if req.has_pending_extension() {
                return deny_extension(req, fx, caller, reason.as_ref());
            }
            let (who, handle) = (&caller.who, &caller.person.handle);
            req.deny(who, handle, caller.is_admin, reason.clone(), caller.now)?;
            let summary = caller.log_decision(fx, id, "denied", reason.as_ref());
            fx.cancel_all = true;
            fx.notify(Notice::thread(id, format!("⛔ {summary}")));
            let told = format!("Your request {id} was {summary}.");
            fx.notify(Notice::to_requester(req, told));
            fx.reply = format!("{id} denied");
            Ok(())
        })
        .await
    }

    /// Cancels a request: only its requester may, so no groups are looked up.
    async fn cancel(&self, actor: &Actor, id: RequestId) -> Answer {
        let person = actor.person.clone();
        let now = self.clock.now();
        self.change(id, move |req, fx| {
            req.cancel(&person.id, &person.handle, now)?;
            let summary = format!("cancelled by {}", person.handle);
            let by = person.id.as_str();
            fx.log(now, by, Some(id), "cancelled", summary.clone(), json!({}));
            fx.cancel_all = true;
            fx.notify(Notice::thread(id, summary));
            fx.reply = format!("{id} cancelled");
            Ok(())
        })
        .await
    }

    async fn complete(&self, actor: &Actor, id: RequestId) -> Answer {
        self.change_as(actor, id, move |req, fx, caller| {
            let Person { id: user, handle } = &caller.person;
            let to_remove = req.complete(user, handle, caller.is_admin, caller.now)?;
            let summary = format!("completed by {handle}");
            caller.log(fx, id, "completed", summary.clone(), json!({}));
            end_access(req, fx, caller.now, &to_remove);
            let removing = format!(
                "removing `{}` from {} instance(s)",
                req.username,
                to_remove.len()
            );
            fx.notify(Notice::thread(id, format!("🏁 {summary}: {removing}")));
            fx.reply = format!("{id} completed: access is being removed now");
            Ok(())
        })
        .await
    }

    async fn revoke(&self, actor: &Actor, id: RequestId, reason: Option<Reason>) -> Answer {
        self.change_as(actor, id, move |req, fx, caller| {
            let (who, handle) = (&caller.who, &caller.person.handle);
            let to_remove = req.revoke(who, handle, caller.is_admin, reason.clone(), caller.now)?;
            let summary = caller.log_decision(fx, id, "revoked", reason.as_ref());
            end_access(req, fx, caller.now, &to_remove);
            fx.notify(Notice::thread(id, format!("🛑 {summary}: removing access")));
            let told = format!(
                "Your access {id} was {summary}. The user `{}` is being removed.",
                req.username
            );
            fx.notify(Notice::to_requester(req, told));
            fx.reply = format!("{id} revoked: access is being removed now");
            Ok(())
        })
        .await
    }

    /// Extends active access, or asks an approver when the policy wants one:
    /// only the requester may, so no groups are looked up.
    async fn extend(&self, actor: &Actor, id: RequestId, by: GrantDuration) -> Answer {
        let person = actor.person.clone();
        let now = self.clock.now();
        let warnings = self.settings.warnings.clone();
        // A certificate ends where the access ended before; say how to get one to the new end.
        let certificate_hint = if self.certificates.is_some() {
            format!("; `cert {id}` gives you a certificate valid to the new end")
        } else {
            String::new()
        };
        self.change(id, move |req, fx| {
            if req.has_pending_extension() {
                return Err(RefusalKind::AlreadyDone(format!(
                    "an extension of {id} is already waiting for an approver; ask them in the request's thread"
                )));
            }
            if req.extension_needs_approval(by) {
                let asked = req.ask_extension(&person.id, by, now)?;
                let summary = format!(
                    "{} asks to extend by {asked}; the policy needs an approver for extensions past {}",
                    person.handle,
                    req.requirement.extension_approval_over.unwrap_or(Span::ZERO)
                );
                fx.log(now, person.id.as_str(), Some(id), "extension_requested", summary.clone(), json!({ "asked": asked.to_string() }));
                fx.notify(Notice::Thread {
                    request: id,
                    text: format!("⏳ {summary}"),
                    actions: messages::approve_deny_extension(req),
                });
                fx.reply = format!(
                    "the extension of {id} by {asked} is waiting for an approver: they have been asked in the request's thread"
                );
                return Ok(());
            }
            let ext = req.extend(&person.id, by, now)?;
            let capped = if ext.capped {
                format!(" (asked for {by}; the maximum is {})", req.requirement.max_duration)
            } else {
                String::new()
            };
            let summary = format!("extended by {} by {}, now until {}{capped}", ext.added, person.handle, ext.new_expiry);
            apply_extension(fx, id, person.id.as_str(), Applied { ext: &ext, summary: &summary, approval: None }, now, &warnings);
            let room = if ext.remaining_allowance < Span::from_minutes(1) {
                "that is the maximum".to_owned()
            } else {
                format!("{} more can be added", ext.remaining_allowance)
            };
            fx.reply = format!("{id} extended by {}{capped}: access now ends at {} ({room}){certificate_hint}", ext.added, ext.new_expiry);
            Ok(())
        })
        .await
    }

    async fn retry(&self, actor: &Actor, id: RequestId) -> Answer {
        self.change_as(actor, id, move |req, fx, caller| {
            let again = req.retry_failed(&caller.who, caller.is_admin)?;
            let labels: Vec<String> = again
                .iter()
                .map(|i| messages::instance_label(req, i))
                .collect();
            let summary = format!(
                "{} retries {}",
                caller.person.handle,
                summarise(&labels, 10)
            );
            let details =
                json!({ "instances": again.iter().map(|i| i.as_str()).collect::<Vec<_>>() });
            caller.log(fx, id, "retry", summary.clone(), details);
            fx.schedule(TimerKind::Provision, caller.now);
            fx.notify(Notice::thread(id, format!("🔁 {summary}")));
            fx.reply = format!(
                "setting up `{}` again on {} instance(s) of {id}",
                req.username,
                again.len()
            );
            Ok(())
        })
        .await
    }

    /// Signs a certificate for `key` (an OpenSSH public key line, or the
    /// person's registered key when `None`) valid until the access of `id`
    /// ends, and records it in the Logbook in the same transaction that
    /// numbers it.
    pub async fn certificate(
        &self,
        actor: &Actor,
        id: RequestId,
        key: Option<&str>,
    ) -> Result<IssuedCertificate, AppError> {
        let Some(ca) = self.certificates.clone() else {
            return Err(RefusalKind::NotAllowed(
                "this Passport has no SSH certificate authority: your registered key logs in as it is (`key show`)".into(),
            )
            .into());
        };
        // Checked again in the transaction; first so that nobody else learns
        // whether the requester has a key.
        let req = self.store.get(id).await?.ok_or(AppError::NotFound(id))?;
        if !req.is_requester(&actor.person.id) {
            return Err(AppError::NotYours(
                id,
                format!("only the requester of {id} can get a certificate for it"),
            ));
        }
        // The key is read only once the request is known to be the caller's,
        // so someone else's answers the same whatever the key.
        let key = match key {
            Some(text) => SshPublicKey::parse(text)?,
            None => self.store.ssh_key(&actor.person.id).await?.ok_or_else(|| {
                RefusalKind::NotAllowed(
                    "you have no SSH key registered: `key set <your public key>` registers one, then ask for the certificate again".into(),
                )
            })?,
        };
        let person = actor.person.clone();
        let now = self.clock.now();
        // The serial is taken and the Logbook event written in the request's
        // transaction; signing happens after the commit, so a slow (RSA) CA
        // never holds the database writer. A certificate therefore never exists
        // without its Logbook record.
        let reserved: Arc<Mutex<Option<CertificateSpec>>> = Arc::default();
        let slot = Arc::clone(&reserved);
        let fingerprint = key.fingerprint();
        let ca_fingerprint = ca.signer.fingerprint();
        let mutation = self.mutation(move |req, fx| {
            let spec = req.issue_certificate(&person.id, now, ca.backdate)?;
            fx.log(
                now,
                person.id.as_str(),
                Some(id),
                "certificate_issued",
                format!(
                    "certificate {} issued to {} for `{}` until {} (key {fingerprint})",
                    spec.serial, person.handle, spec.principal, spec.valid_before,
                ),
                json!({
                    "serial": spec.serial,
                    "key_id": spec.key_id,
                    "principal": spec.principal,
                    "fingerprint": fingerprint,
                    "ca": ca_fingerprint,
                    "valid_after": spec.valid_after.rfc3339(),
                    "valid_before": spec.valid_before.rfc3339(),
                    "port_forwarding": spec.port_forwarding,
                }),
            );
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(spec);
            }
            Ok(())
        });
        let (req, _) = self.store.update(id, None, mutation).await??;
        let spec = reserved
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
            .ok_or_else(|| AppError::Store(StoreError::Other("the certificate was lost".into())))?;
        let line = ca.signer.sign(&spec, &key).map_err(|e| {
            tracing::error!(request = %id, serial = spec.serial, error = %e, "a recorded certificate could not be signed");
            RefusalKind::NotAllowed(format!("no certificate was issued: {e}"))
        })?;
        Ok(IssuedCertificate {
            answer: messages::certificate_answer(&req, &line, &key, spec.serial),
            certificate: line,
            principal: spec.principal.clone(),
            serial: spec.serial,
            valid_before: spec.valid_before,
        })
    }

    async fn key(&self, actor: &Actor, command: KeyCommand) -> Answer {
        let person = &actor.person;
        let now = self.clock.now();
        match command {
            KeyCommand::Show => Ok((
                match self.store.ssh_key(&person.id).await? {
                    Some(key) => format!(
                        "your registered key is {} {}",
                        key.kind(),
                        key.fingerprint()
                    ),
                    None => {
                        "you have no SSH key registered: `key set <your public key>` registers one"
                            .into()
                    }
                },
                None,
            )),
            KeyCommand::Set(key) => {
                let mut fx = Effects::default();
                let summary = format!(
                    "{} registered SSH key {} {}",
                    person.handle,
                    key.kind(),
                    key.fingerprint()
                );
                fx.log(
                    now,
                    person.id.as_str(),
                    None,
                    "key_registered",
                    summary,
                    json!({ "fingerprint": key.fingerprint() }),
                );
                fx.route(&self.settings.surfaces, &actor.surface);
                self.store
                    .set_ssh_key(&person.id, Some(&key), fx, now)
                    .await?;
                Ok((
                    format!(
                        "key {} {} registered: your next Linux access uses it",
                        key.kind(),
                        key.fingerprint()
                    ),
                    None,
                ))
            }
            KeyCommand::Remove => {
                let mut fx = Effects::default();
                fx.log(
                    now,
                    person.id.as_str(),
                    None,
                    "key_removed",
                    format!("{} removed their SSH key", person.handle),
                    json!({}),
                );
                fx.route(&self.settings.surfaces, &actor.surface);
                self.store.set_ssh_key(&person.id, None, fx, now).await?;
                Ok(("your SSH key is removed; access already granted keeps the key it was granted with until it ends".into(), None))
            }
        }
    }

    // -----------------------------------------------------------------------
    // read-only

    fn may_see(&self, who: &Membership, req: &AccessRequest) -> bool {
        req.is_requester(&who.user) || self.policy.is_admin(who) || req.is_approver(who)
    }

    async fn load_visible(&self, actor: &Actor, id: RequestId) -> Result<AccessRequest, AppError> {
        let req = self.store.get(id).await?.ok_or(AppError::NotFound(id))?;
        if !self.may_see(&self.membership(&actor.person).await, &req) {
            return Err(RefusalKind::NotAllowed(format!(
                "only the requester, its approvers and admins can see {id}"
            ))
            .into());
        }
        Ok(req)
    }

    async fn list(&self, actor: &Actor, filter: ListFilter) -> Result<String, AppError> {
        let rows = self.store.list(filter, &actor.person.id, 200).await?;
        // Groups are resolved once, not once per row (a directory lookup may be remote).
        let who = self.membership(&actor.person).await;
        let mut lines = Vec::new();
        let now = self.clock.now();
        for req in rows {
            if lines.len() >= 20 {
                break;
            }
            if self.may_see(&who, &req) {
                lines.push(format!(
                    "{} · {} · {} · {} instance(s) · {} · {}",
                    req.id,
                    req.state.label(),
                    req.requester.handle,
                    req.instances.len(),
                    req.ticket,
                    messages::status_line(&req, now)
                ));
            }
        }
        if lines.is_empty() {
            return Ok("no requests to show".into());
        }
        Ok(lines.join("\n"))
    }

    async fn show(&self, actor: &Actor, id: RequestId) -> Result<String, AppError> {
        let req = self.load_visible(actor, id).await?;
        let now = self.clock.now();
        let mut out = format!(
            "{} · {} · requested by {} for {} · {}{}\n{}\nrequires {} · user `{}`",
            req.id,
            req.state.label(),
            req.requester.handle,
            req.duration,
            req.ticket,
            req.reason
                .as_ref()
                .map(|r| format!(" · {r}"))
                .unwrap_or_default(),
            messages::status_line(&req, now),
            req.requirement.describe(),
            req.username
        );
        for g in &req.grants {
            let info = req.instance(&g.instance);
            let detail = g
                .detail
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            out.push_str(&format!(
                "\n• {} [{}{}] {}{detail}",
                messages::instance_label(&req, &g.instance),
                info.map(|i| messages::platform_name(i.platform))
                    .unwrap_or("?"),
                info.map(|i| if i.private_ips.is_empty() {
                    String::new()
                } else {
                    format!(" {}", i.private_ips.join(","))
                })
                .unwrap_or_default(),
                g.state.as_str()
            ));
        }
        Ok(out)
    }

    async fn audit(&self, actor: &Actor, id: RequestId) -> Result<String, AppError> {
        let req = self.load_visible(actor, id).await?;
        let events = self.store.audit_events(Some(req.id), None).await?;
        Ok(timeline(&events))
    }
}

/// A readable timeline of Logbook events, one per line.
pub fn timeline(events: &[crate::domain::logbook::LogEvent]) -> String {
    let mut out = Vec::new();
    for e in events {
        let summary = serde_json::from_str::<serde_json::Value>(&e.details)
            .ok()
            .and_then(|v| v.get("summary").and_then(|s| s.as_str()).map(str::to_owned))
            .unwrap_or_else(|| e.action.clone());
        out.push(format!(
            "#{} {} {} {}: {}",
            e.seq,
            e.at,
            e.request.as_deref().unwrap_or("-"),
            e.action,
            summary
        ));
    }
    if out.is_empty() {
        "no Logbook events".into()
    } else {
        out.join("\n")
    }
}

/// What changes on the card when a request changes.
fn fingerprint(
    req: &AccessRequest,
) -> (
    RequestState,
    usize,
    Option<Timestamp>,
    Vec<crate::domain::request::GrantState>,
) {
    (
        req.state,
        req.approvals.len(),
        req.expires_at,
        req.grants.iter().map(|g| g.state).collect(),
    )
}

/// "a, b, c and 4 more".
pub fn summarise(items: &[String], show: usize) -> String {
    if items.len() <= show {
        return items.join(", ");
    }
    format!(
        "{} and {} more",
        items[..show].join(", "),
        items.len() - show
    )
}

pub(super) fn start_provisioning(
    req: &mut AccessRequest,
    fx: &mut Effects,
    now: Timestamp,
) -> Result<(), Refusal> {
    req.begin_provisioning()?;
    fx.log(
        now,
        "passport",
        Some(req.id),
        "provisioning",
        format!(
            "creating `{}` on {} instance(s)",
            req.username,
            req.grants.len()
        ),
        json!({ "username": req.username.as_str() }),
    );
    fx.schedule(TimerKind::Provision, now);
    Ok(())
}

/// Moves the expiry: new warning and expiry timers, the on-instance expiries
/// refreshed, the thread told.
/// Why a click on a button shown for `shown` must not act on `req` as it is
/// now: the decision it was shown for is no longer the one waiting. `None`
/// when it still is, or when nothing waits at all (then the ordinary checks
/// answer, e.g. "you already approved AR-1").
fn out_of_date(req: &AccessRequest, shown: Shown) -> Option<Refusal> {
    let id = req.id;
    let pending = req.pending_extension.as_ref();
    let current = pending.map(|p| {
        format!(
            "the current one is the extension by {}: decide it with the buttons under its prompt in the request's thread, or type `approve {id}` or `deny {id}`",
            p.by
        )
    });
    let stale = |was: String| {
        Some(RefusalKind::WrongState(match &current {
            Some(current) => format!("this prompt is out of date: it was for {was}; {current}"),
            None => format!(
                "this prompt is out of date: it was for {was}, which is no longer waiting for a decision (it was decided, or the access ended)"
            ),
        }))
    };
    match (shown, pending) {
        // The card's buttons: fine while the request itself waits.
        (Shown::Request, None) => None,
        (Shown::Request, Some(_)) => stale(format!("the approval of {id} itself")),
        (Shown::Extension(n), Some(p)) if p.seq == n => None,
        (Shown::Extension(n), _) => stale(format!("extension {n} of {id}")),
        (Shown::ExtensionOf(by), Some(p)) if p.by == by => None,
        (Shown::ExtensionOf(by), _) => stale(format!("an extension of {id} by {by}")),
    }
}

/// Approves the extension waiting on `req`, for [`Engine::approve`].
fn approve_extension(
    req: &mut AccessRequest,
    fx: &mut Effects,
    caller: &Caller,
    warnings: &[Span],
) -> Result<(), Refusal> {
    let (id, handle, now) = (req.id, &caller.person.handle, caller.now);
    let (approval, outcome) = req.approve_extension(&caller.who, handle, now)?;
    let qualified = json!({ "qualified": approval.qualified, "counts_for": approval.counts_for });
    let ext = match outcome {
        ExtensionApproval::Extended(ext) => ext,
        ExtensionApproval::Recorded { still_needed } => {
            let summary = format!(
                "approval of the extension by {handle} recorded; still needs {still_needed}"
            );
            caller.log(
                fx,
                id,
                "extension_approval_recorded",
                summary.clone(),
                qualified,
            );
            fx.notify(Notice::thread(id, format!("✅ {summary}")));
            fx.reply = format!(
                "your approval of the extension of {id} is recorded; it still needs {still_needed}"
            );
            return Ok(());
        }
    };
    let summary = format!(
        "extension by {} approved by {handle}, now until {}",
        ext.added, ext.new_expiry
    );
    let applied = Applied {
        ext: &ext,
        summary: &summary,
        approval: Some(qualified),
    };
    apply_extension(fx, id, caller.person.id.as_str(), applied, now, warnings);
    fx.notify(Notice::to_requester(
        req,
        format!(
            "Your extension of {id} was approved by {handle}: access now ends at {}.",
            ext.new_expiry
        ),
    ));
    fx.reply = format!(
        "extension of {id} approved: access now ends at {}",
        ext.new_expiry
    );
    Ok(())
}

/// Denies the extension waiting on `req`, for [`Engine::deny`]: the access
/// itself goes on.
fn deny_extension(
    req: &mut AccessRequest,
    fx: &mut Effects,
    caller: &Caller,
    reason: Option<&Reason>,
) -> Result<(), Refusal> {
    let id = req.id;
    let asked = req.deny_extension(&caller.who, caller.is_admin)?;
    let because = Reason::suffix(reason);
    let summary = format!(
        "extension by {asked} denied by {}{because}",
        caller.person.handle
    );
    caller.log(fx, id, "extension_denied", summary.clone(), json!({}));
    fx.notify(Notice::thread(id, format!("⛔ {summary}")));
    fx.notify(Notice::to_requester(
        req,
        format!(
            "Your extension of {id} was {summary}; access still ends at {}.",
            req.expires_at.unwrap_or(caller.now)
        ),
    ));
    fx.reply = format!("extension of {id} denied");
    Ok(())
}

/// An extension being applied: what it did, the words for it, and for one an
/// approver granted, how that approver qualified (for the Logbook).
struct Applied<'a> {
    ext: &'a crate::domain::request::Extension,
    summary: &'a str,
    approval: Option<serde_json::Value>,
}

fn apply_extension(
    fx: &mut Effects,
    id: RequestId,
    actor: &str,
    applied: Applied<'_>,
    now: Timestamp,
    warnings: &[Span],
) {
    let Applied {
        ext,
        summary,
        approval,
    } = applied;
    let mut details =
        json!({ "added": ext.added.to_string(), "expires_at": ext.new_expiry.to_string() });
    if let (Some(approval), serde_json::Value::Object(map)) = (approval, &mut details) {
        // The approval that granted it: how its approver qualified.
        map.insert("approval".into(), approval);
    }
    fx.log(
        now,
        actor,
        Some(id),
        "extended",
        summary.to_owned(),
        details,
    );
    fx.cancel_expiry = true;
    schedule_expiry(fx, ext.new_expiry, now, warnings);
    // Move the on-instance expiries too.
    fx.schedule(TimerKind::Refresh, now);
    fx.notify(Notice::thread(id, format!("⏱ {summary}")));
}

/// What a `key` command asks.
enum KeyCommand {
    Set(crate::domain::values::SshPublicKey),
    Show,
    Remove,
}

/// Warnings before `expiry` that are still in the future, and the expiry itself.
pub(super) fn schedule_expiry(
    fx: &mut Effects,
    expiry: Timestamp,
    now: Timestamp,
    warnings: &[Span],
) {
    for w in warnings {
        let at = expiry.minus(*w);
        if at > now {
            fx.schedule(TimerKind::Warning(*w), at);
        }
    }
    fx.schedule(TimerKind::Expiry, expiry);
}

/// Stops the clock: drops warnings, expiry and refreshes, and schedules removal.
pub(super) fn end_access(
    req: &AccessRequest,
    fx: &mut Effects,
    now: Timestamp,
    to_remove: &[crate::domain::values::InstanceId],
) {
    fx.cancel_expiry = true;
    fx.cancel.push(TimerKind::Refresh);
    fx.cancel.push(TimerKind::ApprovalTimeout);
    if !to_remove.is_empty() || !req.pending_removals().is_empty() {
        fx.schedule(TimerKind::Remove, now);
    }
}
