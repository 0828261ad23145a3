//! The traits through which use cases reach the outside world. Adapters
//! implement them; use cases hold them as `Arc<dyn …>`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::command::ListFilter;
use crate::domain::logbook::{ChainBreak, Checkpoint, Keying, LogEvent};
use crate::domain::notice::{Action, CardView, Notice};
use crate::domain::policy::GroupSource;
use crate::domain::request::{AccessRequest, InstanceInfo, InstanceOutcome, Refusal, RequestState};
use crate::domain::session::SessionScope;
use crate::domain::signin::{
    ChatIdentity, LoginAttempt, LoginId, LoginState, LogoutScope, SecretHash, TokenRecord,
};
use crate::domain::time::{Span, Timestamp};
use crate::domain::values::{InstanceId, RequestId, SshPublicKey, UserId, Username};

use super::effects::{Effects, Timer, TimerId, TimerKind};

// ---------------------------------------------------------------------------
// Clock

pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

// ---------------------------------------------------------------------------
// Checkpoints kept outside the database

/// Why a checkpoint could not be kept.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CheckpointError(pub String);

/// A place outside the database that keeps Logbook checkpoints, besides the
/// audit channel (the checkpoint file).
#[async_trait]
pub trait CheckpointSink: Send + Sync {
    /// Keeps `checkpoint` for good: answers only once it is durable.
    async fn keep(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError>;
    /// Where checkpoints go, for log lines.
    fn describe(&self) -> String;
}

// ---------------------------------------------------------------------------
// Chat surfaces

/// Where a posted message lives, so it can be edited or replied to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    pub channel: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The platform asked us to wait; try again after this many milliseconds.
    #[error("rate limited; retry after {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    /// A network error or server error: worth retrying with backoff.
    #[error("temporary failure: {0}")]
    Transient(String),
    /// The platform refused the message (unknown channel, bad token…): retrying will not help.
    #[error("refused: {0}")]
    Permanent(String),
}

#[async_trait]
pub trait ChatSurface: Send + Sync {
    /// A short stable name, e.g. `slack`, `discord`, `console`.
    fn name(&self) -> &str;
    async fn post_card(&self, card: &CardView) -> Result<MessageRef, ChatError>;
    async fn update_card(&self, at: &MessageRef, card: &CardView) -> Result<(), ChatError>;
    async fn reply_in_thread(
        &self,
        at: &MessageRef,
        text: &str,
        actions: &[Action],
    ) -> Result<(), ChatError>;
    /// Sends a direct message and answers where it landed, so that it can
    /// be deleted later (the Windows password courier does).
    async fn direct_message(
        &self,
        user: &UserId,
        text: &str,
        actions: &[Action],
    ) -> Result<MessageRef, ChatError>;
    async fn post_audit(&self, line: &str) -> Result<(), ChatError>;
    /// Deletes a message this bot posted. A message that is gone already
    /// counts as deleted.
    async fn delete_message(&self, at: &MessageRef) -> Result<(), ChatError>;
}

// ---------------------------------------------------------------------------
// Provisioner

/// What describing one instance found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Described {
    Usable(InstanceInfo),
    /// The instance cannot be used; the reason is shown to the requester.
    Unusable {
        id: InstanceId,
        reason: String,
    },
}

/// What to create on the instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantSpec {
    pub request: RequestId,
    pub username: Username,
    pub instances: Vec<InstanceInfo>,
    pub expires_at: Timestamp,
    pub sudo: bool,
    /// The requester's registered OpenSSH public key, installed for Linux
    /// users when Passport has no SSH CA (`trusted_ca_keys` is empty).
    pub ssh_public_key: Option<String>,
    /// `<type> <base64>` of the CA keys Linux instances trust for Passport's
    /// users, the signing key first. Empty without an SSH CA.
    pub trusted_ca_keys: Vec<String>,
    /// Whether the user may forward ports over SSH.
    pub port_forwarding: bool,
}

/// What to remove from the instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeSpec {
    pub request: RequestId,
    pub username: Username,
    pub instances: Vec<InstanceInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    /// The control plane could not be reached or refused the call; try again later.
    #[error("provisioner unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (e.g. missing documents); retrying will not help.
    #[error("{0}")]
    Rejected(String),
}

#[async_trait]
pub trait Provisioner: Send + Sync {
    fn name(&self) -> &str;
    /// Linux grants log in with the requester's SSH key, so a request without one is refused.
    fn requires_ssh_key(&self) -> bool {
        false
    }
    async fn describe(&self, ids: &[InstanceId]) -> Result<Vec<Described>, ProvisionError>;
    /// Creates (or, when run again, refreshes the expiry of) the user on every instance.
    /// Idempotent. Returns one outcome per instance.
    async fn grant(&self, spec: &GrantSpec) -> Result<Vec<InstanceOutcome>, ProvisionError>;
    /// Removes the user from every instance. Idempotent: an absent user is success.
    async fn revoke(&self, spec: &RevokeSpec) -> Result<Vec<InstanceOutcome>, ProvisionError>;
    /// Forgets the provisioner's own records of work sent before `before`
    /// that has finished (housekeeping, from reconciliation). Returns how
    /// many it forgot; work still running is kept.
    async fn forget_finished(&self, _before: Timestamp) -> Result<u64, ProvisionError> {
        Ok(0)
    }
}

// ---------------------------------------------------------------------------
// Sessions

/// AWS credentials that can open Session Manager sessions only within one
/// [`SessionScope`], and only until it ends.
#[derive(Clone)]
pub struct SessionCredentials {
    pub access_key_id: String,
    pub secret_access_key: secrecy::SecretString,
    pub session_token: secrecy::SecretString,
    /// When AWS stops honouring them (never after the scope's `not_after`
    /// for starting sessions: the session policy says so).
    pub expiration: Timestamp,
    pub region: String,
}

impl std::fmt::Debug for SessionCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// Issues scoped Session Manager credentials and ends the sessions opened
/// with them.
#[async_trait]
pub trait SessionBroker: Send + Sync {
    /// Credentials for `scope`, living as short as AWS allows.
    async fn credentials(
        &self,
        scope: &SessionScope,
        now: Timestamp,
    ) -> Result<SessionCredentials, ProvisionError>;
    /// Terminates the Session Manager sessions still open on `instances` that
    /// were started with this request's credentials (`username` is their role
    /// session name). Returns the ids of the sessions it ended.
    async fn end_sessions(
        &self,
        username: &Username,
        instances: &[InstanceId],
    ) -> Result<Vec<String>, ProvisionError>;
}

// ---------------------------------------------------------------------------
// Directory

/// Resolves which groups a chat identity belongs to, and where each
/// membership was read from (kept with approvals in the Logbook).
#[async_trait]
pub trait Directory: Send + Sync {
    async fn groups_of(&self, user: &UserId) -> BTreeMap<String, GroupSource>;
}

// ---------------------------------------------------------------------------
// Store

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("request {0} does not exist")]
    NotFound(RequestId),
    #[error("the database is busy; try again")]
    Busy,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Other(String),
    /// The Logbook is keyed with a key this process does not hold (or holds
    /// a different one): the text says which and what to set.
    #[error("{0}")]
    LogbookKey(String),
    /// The database was migrated by a newer Passport that this one cannot
    /// run beside: the text says which migrations and what to run instead.
    #[error("{0}")]
    Schema(String),
    /// The signed chat request behind a change was seen before (a replay):
    /// nothing of the change was written.
    #[error("this signed request was seen before, so it is not acted on again")]
    Replayed,
}

/// Changes a request inside the store's transaction. Returning a refusal rolls
/// everything back.
pub type Mutation = Box<dyn FnOnce(&mut AccessRequest) -> Result<Effects, Refusal> + Send>;

/// Builds a new request in the place the store assigns it. Returning a
/// refusal rolls everything back.
pub type Creation = Box<dyn FnOnce(Slot) -> Result<(AccessRequest, Effects), Refusal> + Send>;

/// A new request's place, read inside the transaction that inserts it, so
/// that limits checked against it hold however many requests arrive at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The number the request gets.
    pub id: RequestId,
    /// How many requests of its requester wait for approval already, counted
    /// up to the cap the creation names.
    pub pending: u64,
}

/// Builds what a change records once the store knows a number it assigns
/// (a token's id, how many tokens a logout ended), in the same transaction.
pub type Recording = Box<dyn FnOnce(i64) -> Effects + Send>;

/// The token handed out for a confirmed sign-in, as the store keeps it: by
/// its hash, with whom it belongs to and until when it works.
#[derive(Clone)]
pub struct IssuedToken {
    /// The sign-in attempt it was handed out for.
    pub login: LoginId,
    pub hash: SecretHash,
    pub owner: ChatIdentity,
    pub expires_at: Timestamp,
}

/// A notice waiting in the outbox.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub surface: String,
    pub lane: String,
    pub notice: Notice,
    /// Failed attempts that counted (not rate limits): they set the backoff.
    pub attempts: u32,
    /// Of those, the platform's refusals: they set the notice aside.
    pub refusals: u32,
    pub next_attempt_at: Timestamp,
}

/// How a delivery attempt failed, as the outbox counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The platform only asked to wait (a rate limit), or the notice's
    /// surface is not configured: nothing is counted.
    Waited,
    /// A temporary failure: counted in `attempts`, which sets the backoff.
    Failed,
    /// A refusal: counted in `attempts` and in `refusals`, which set the
    /// notice aside once there are enough.
    Refused,
}

impl Miss {
    /// What the attempt adds to `attempts` and to `refusals`.
    pub fn counts(self) -> (i64, i64) {
        match self {
            Miss::Waited => (0, 0),
            Miss::Failed => (1, 0),
            Miss::Refused => (1, 1),
        }
    }
}

/// A notice the chat platform kept refusing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub id: i64,
    pub surface: String,
    pub lane: String,
    pub request: Option<RequestId>,
    pub created_at: Timestamp,
    pub set_aside_at: Timestamp,
    pub attempts: u32,
    /// Of `attempts`, those the platform refused.
    pub refusals: u32,
    pub last_error: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Gauges {
    /// Requests per state (`pending`, `active`, …).
    pub requests: Vec<(String, u64)>,
    /// Requests whose users should be gone from their instances by now and
    /// may not be: ended (or past expiry) more than [`REMOVAL_GRACE`] ago with
    /// grants still open. The alert that matters most.
    pub removals_overdue: u64,
    /// Notices not yet delivered, and how old the oldest is.
    pub outbox_pending: u64,
    pub outbox_oldest_seconds: f64,
    /// Notices set aside after repeated failures.
    pub outbox_set_aside: u64,
    /// Timers due more than [`REMOVAL_GRACE`] ago that have not run.
    pub timers_overdue: u64,
}

/// How late a removal or a timer may be before it counts as overdue.
pub const REMOVAL_GRACE: Span = Span::from_minutes(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxCounts {
    pub pending: u64,
    pub delivered: u64,
    pub dead: u64,
}

/// A direct message that carried a Windows password, to be deleted from the
/// chat at `due`. It says where the message is, never what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordMessage {
    pub request: RequestId,
    pub instance: InstanceId,
    pub username: Username,
    /// The chat surface it was sent on, and where.
    pub surface: String,
    pub at: MessageRef,
    pub sent_at: Timestamp,
    pub due: Timestamp,
}

/// A stored [`PasswordMessage`] waiting to be deleted. Deleting it needs
/// only where it is; whose password it carried is for the record, and a row
/// whose user or instance this release cannot read (a newer release's value
/// during a rolling upgrade, or a damaged row) is deleted all the same: a
/// password never stays in the chat for want of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDeletion {
    pub id: i64,
    pub request: RequestId,
    pub surface: String,
    pub at: MessageRef,
    pub sent_at: Timestamp,
    pub due: Timestamp,
    /// The user the password is for and the instance, or why they cannot be
    /// read.
    pub whose: Result<(Username, InstanceId), String>,
    /// Failed deletions so far.
    pub attempts: u32,
}

/// The result of verifying the Logbook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every link that could be checked holds; `keying` says which events are
    /// keyed and which of those went unchecked for want of their key.
    Intact {
        events: u64,
        head: String,
        keying: Keying,
    },
    Broken(ChainBreak),
}

/// Narrows [`Store::requests_in`] in the database, so callers never load
/// every request of a state to keep a few.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestFilter {
    /// Only requests changed at or after this time.
    pub changed_since: Option<Timestamp>,
    /// Only requests with a grant that may still hold a user.
    pub holding_users: bool,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Builds a request of `requester` and writes it with its effects in one
    /// transaction; `build` must make a request of that requester. Its
    /// [`Slot::pending`] counts the requester's pending requests up to
    /// `pending_cap` (none when 0): enough to hold the cap, and never more
    /// work however many the person has.
    async fn create(
        &self,
        requester: &UserId,
        pending_cap: u32,
        build: Creation,
    ) -> Result<Result<(AccessRequest, Effects), Refusal>, StoreError>;
    /// Loads the request, applies `change`, and writes the request, its Logbook
    /// events, outbox notices and timers in one transaction. `fired` is the
    /// timer this change is the firing of: it is deleted in that transaction,
    /// whether or not the change is refused, and when it no longer exists (it
    /// already fired, or was cancelled) the change is refused as stale, so a
    /// timer acts at most once.
    async fn update(
        &self,
        id: RequestId,
        fired: Option<TimerId>,
        change: Mutation,
    ) -> Result<Result<(AccessRequest, Effects), Refusal>, StoreError>;
    async fn get(&self, id: RequestId) -> Result<Option<AccessRequest>, StoreError>;
    /// How many requests of `requester` wait for approval, counted up to
    /// `up_to` (outside any change: [`Slot::pending`] is the count a new
    /// request is held to).
    async fn pending_count(&self, requester: &UserId, up_to: u32) -> Result<u64, StoreError>;
    async fn list(
        &self,
        filter: ListFilter,
        user: &UserId,
        limit: u32,
    ) -> Result<Vec<AccessRequest>, StoreError>;

    async fn due_timers(&self, now: Timestamp, limit: u32) -> Result<Vec<Timer>, StoreError>;
    /// Moves a timer later and counts an attempt, e.g. to retry a job whose provisioner was unavailable.
    async fn reschedule_timer(&self, id: TimerId, due: Timestamp) -> Result<(), StoreError>;
    async fn delete_timer(&self, id: TimerId) -> Result<(), StoreError>;

    /// Undelivered notices, oldest first: at most `per_lane` of each lane and
    /// `limit` in all, so that one long lane cannot hide the others.
    async fn pending_notices(&self, limit: u32, per_lane: u32) -> Result<Vec<Pending>, StoreError>;
    /// The oldest undelivered notices of one lane, at most `limit`: a lane
    /// that delivered all it was given goes on with its own next notices
    /// instead of waiting for the next read of the whole outbox. On a
    /// shared store, empty while another process holds the lane.
    async fn lane_notices(
        &self,
        surface: &str,
        lane: &str,
        limit: u32,
    ) -> Result<Vec<Pending>, StoreError>;
    /// A counter that moves on after every commit that queued notices, so
    /// that the dispatcher starts their lanes while others are still
    /// sending. Closed when the store is.
    fn notices_queued(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Records the delivery of notices `ids`, all of one lane, in one commit.
    async fn mark_delivered(&self, ids: &[i64], now: Timestamp) -> Result<(), StoreError>;
    /// Puts a notice back in its lane until `next_attempt_at`, with `error`,
    /// counting the attempt as `miss` says.
    async fn mark_retry(
        &self,
        id: i64,
        next_attempt_at: Timestamp,
        error: &str,
        miss: Miss,
    ) -> Result<(), StoreError>;
    /// Sets a notice aside after its last refusal, counted as such.
    async fn mark_dead(&self, id: i64, now: Timestamp, error: &str) -> Result<(), StoreError>;
    /// Notices set aside after repeated refusals, oldest first.
    async fn set_aside(&self, limit: u32) -> Result<Vec<SetAside>, StoreError>;
    /// Puts set-aside notices (these ids, or all with `None`) back in line to
    /// be sent at `now`. Returns how many.
    async fn revive(&self, ids: Option<Vec<i64>>, now: Timestamp) -> Result<u64, StoreError>;
    /// Deletes up to `limit` notices delivered before `before`.
    async fn prune_delivered(&self, before: Timestamp, limit: u64) -> Result<u64, StoreError>;
    /// Counts the whole outbox: for tests, benchmarks and reports, never on a hot path.
    async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError>;
    /// What `/metrics` reports from the database, read at each scrape with
    /// indexed queries only.
    async fn gauges(&self, now: Timestamp) -> Result<Gauges, StoreError>;
    /// Whether the database answers at all, at a constant cost (`/healthz`).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Whether a write transaction goes through the writer and commits now
    /// (`/readyz`): a wedged writer or a locked database fails it.
    async fn ping_writer(&self) -> Result<(), StoreError>;
    /// Waits for the writes in flight, then closes the database: later calls
    /// fail. At the end of a process, so nothing is left half-written.
    async fn close(&self);
    async fn chat_ref(
        &self,
        request: RequestId,
        surface: &str,
    ) -> Result<Option<MessageRef>, StoreError>;
    async fn save_chat_ref(
        &self,
        request: RequestId,
        surface: &str,
        at: &MessageRef,
    ) -> Result<(), StoreError>;

    async fn audit_events(
        &self,
        request: Option<RequestId>,
        since: Option<Timestamp>,
    ) -> Result<Vec<LogEvent>, StoreError>;
    async fn verify_logbook(&self) -> Result<Verification, StoreError>;

    // -- housekeeping ---------------------------------------------------------

    /// Writes Logbook events and notices that belong to no request, in one transaction.
    async fn record(&self, fx: Effects, now: Timestamp) -> Result<(), StoreError>;
    async fn ssh_key(&self, user: &UserId) -> Result<Option<SshPublicKey>, StoreError>;
    /// Sets (or with `None` removes) a user's key, with its Logbook event, in one transaction.
    async fn set_ssh_key(
        &self,
        user: &UserId,
        key: Option<&SshPublicKey>,
        fx: Effects,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// Takes or renews the lease `name` for `holder` until `now + ttl`. False when
    /// another holder's lease has not expired.
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Span,
    ) -> Result<bool, StoreError>;
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;
    /// Who holds lease `name`, if anyone.
    async fn lease_holder(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Takes lease `name` from `stale`, known to be dead, before it expires.
    /// False when someone else took it meanwhile.
    async fn take_over_lease(
        &self,
        name: &str,
        stale: &str,
        holder: &str,
        now: Timestamp,
        ttl: Span,
    ) -> Result<bool, StoreError>;
    /// When job `name` runs next, if it was scheduled with this same `schedule`.
    async fn job_next_run(
        &self,
        name: &str,
        schedule: &str,
    ) -> Result<Option<Timestamp>, StoreError>;
    async fn set_job_next_run(
        &self,
        name: &str,
        schedule: &str,
        next: Timestamp,
    ) -> Result<(), StoreError>;
    /// Requests in any of `states` matching `filter`, oldest first.
    async fn requests_in(
        &self,
        states: &[RequestState],
        filter: RequestFilter,
        limit: u32,
    ) -> Result<Vec<AccessRequest>, StoreError>;
    /// Ended requests updated since `since` whose removal reconciliation has not checked yet.
    async fn ended_unverified(
        &self,
        since: Timestamp,
        limit: u32,
    ) -> Result<Vec<AccessRequest>, StoreError>;
    async fn has_timer(&self, request: RequestId, kind: TimerKind) -> Result<bool, StoreError>;
    /// The last event's sequence number and hash (hex), if any.
    async fn logbook_head(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// The stored hash (hex) of event `seq`, if it exists.
    async fn logbook_hash_at(&self, seq: u64) -> Result<Option<String>, StoreError>;
    /// Records the delivery `key` at `now`: true the first time, false when
    /// it was recorded before (within a day). The record is committed before
    /// this answers, so a redelivery after a restart is recognised.
    async fn first_delivery(&self, key: &str, now: Timestamp) -> Result<bool, StoreError>;
    /// Records the signed chat request `key` (a Slack trigger id, a Discord
    /// interaction id), kept until `until`, when its signature can no longer
    /// be accepted: true the first time, false when it was recorded before.
    /// Committed before this answers, so a replay after a restart is refused.
    async fn first_signed(&self, key: &str, until: Timestamp) -> Result<bool, StoreError>;
    /// Deletes at most `limit` keys (of signed requests and of deliveries)
    /// kept until before `now`.
    async fn prune_signed(&self, now: Timestamp, limit: u64) -> Result<u64, StoreError>;
    /// The request whose card is `message` in `channel` on `surface`, so a reply
    /// typed in that card's thread acts on it. Without `channel`, `message`
    /// alone must match (on surfaces whose message ids are unique everywhere).
    async fn request_for_message(
        &self,
        surface: &str,
        channel: Option<&str>,
        message: &str,
    ) -> Result<Option<RequestId>, StoreError>;

    // -- sign-in -------------------------------------------------------------

    /// Records a new sign-in attempt with the hashes of its code and poll
    /// secret, and `fx`, in one transaction.
    async fn login_start(
        &self,
        login: &LoginAttempt,
        code: &SecretHash,
        secret: &SecretHash,
        fx: Effects,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// The latest attempt whose code has this hash.
    async fn login_by_code(&self, code: &SecretHash) -> Result<Option<LoginAttempt>, StoreError>;
    /// The attempt `id` with the hash of its poll secret.
    async fn login_by_id(
        &self,
        id: &LoginId,
    ) -> Result<Option<(LoginAttempt, SecretHash)>, StoreError>;
    /// Saves `login`'s state and claim if its stored state is still `was`,
    /// with `fx`, in one transaction. False (and nothing written) when another
    /// change came first.
    async fn login_save(
        &self,
        login: &LoginAttempt,
        was: LoginState,
        fx: Effects,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Marks the confirmed attempt `issued.login` collected and stores the
    /// hash of the token handed out for it, with what `record` makes of the token's id,
    /// in one transaction. `None` when it was not confirmed (collected already).
    async fn login_collect(
        &self,
        issued: &IssuedToken,
        record: Recording,
        now: Timestamp,
    ) -> Result<Option<i64>, StoreError>;
    /// The token with this hash, if any.
    async fn token(&self, hash: &SecretHash) -> Result<Option<TokenRecord>, StoreError>;
    /// Records the first refusal of token `id` (`fx`); later ones write nothing,
    /// so a terminal retrying with a dead token cannot flood the Logbook.
    async fn token_refused(&self, id: i64, fx: Effects, now: Timestamp) -> Result<(), StoreError>;
    /// Revokes the live tokens in `scope`, writing what `record` makes of
    /// their number in the same transaction (who revoked them is said
    /// there). Answers how many it revoked.
    async fn revoke_tokens(
        &self,
        scope: &LogoutScope,
        record: Recording,
        now: Timestamp,
    ) -> Result<u64, StoreError>;

    // -- password messages ---------------------------------------------------

    /// Records a password message, to be deleted from the chat at its due time.
    async fn save_password_message(&self, message: &PasswordMessage) -> Result<(), StoreError>;
    /// Password messages due for deletion at `now`, earliest first.
    async fn due_password_messages(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<PendingDeletion>, StoreError>;
    /// Puts off a deletion that failed until `due`, counting an attempt (the
    /// failure itself is logged, not kept).
    async fn retry_password_message(&self, id: i64, due: Timestamp) -> Result<(), StoreError>;
    /// Forgets a deleted password message and writes `fx` (its Logbook event
    /// and notices) in the same transaction.
    async fn password_message_deleted(
        &self,
        id: i64,
        fx: Effects,
        now: Timestamp,
    ) -> Result<(), StoreError>;
}

// ---------------------------------------------------------------------------
// SSH certificate authority

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The key or the validity cannot go into a certificate; shown to the person.
    #[error("{0}")]
    BadKey(String),
    /// Signing itself failed.
    #[error("signing failed: {0}")]
    Failed(String),
}

/// Passport's SSH CA: signs user certificates and names the CA keys
/// instances must trust.
pub trait CertificateSigner: Send + Sync {
    /// `<type> <base64>` of every CA key instances trust, the signing key first,
    /// then keys staged for or retired by a rotation.
    fn trusted_keys(&self) -> Vec<String>;
    /// The signing key's fingerprint, `SHA256:…`.
    fn fingerprint(&self) -> String;
    /// The certificate line for `key`, signed now.
    fn sign(
        &self,
        spec: &crate::domain::certificate::CertificateSpec,
        key: &SshPublicKey,
    ) -> Result<String, SignError>;
}
