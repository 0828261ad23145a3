//! The store on PostgreSQL, for several Passport processes sharing one
//! database: the same [`Store`] as [`crate::adapters::sqlite::SqliteStore`],
//! with the same guarantees, on a pool of connections, with migrations from
//! `migrations/postgres/` applied on connect (`sqlx::migrate!`, which
//! serialises concurrent migrators with an advisory lock of its own).
//!
//! Every change is one transaction: the request, its Logbook events, its
//! notices and its timers commit together or not at all. What SQLite gets
//! from its single writer, PostgreSQL gets from locks held to the end of the
//! transaction:
//!
//! - the changes of requests commit in groups ([`group_commit`]), which take
//!   the creation lock and the Logbook's lock first
//!   ([`lock_creations_and_logbook`]): groups of all processes run one at a
//!   time, so request numbers (`MAX(id) + 1`), pending counts and the
//!   Logbook's head cannot race; a group locks the rows it changes, and
//!   writes each request only over the `version` it read;
//! - sign-in and token changes append to the Logbook after their own rows,
//!   taking its lock last ([`logbook`]);
//! - the outbox is claimed lane by lane ([`outbox`]);
//! - leases, seen keys and sign-in states change in single conditional
//!   statements (`INSERT … ON CONFLICT … WHERE`, `UPDATE … WHERE`).
//!
//! `notices_queued` moves on after each commit of this store that queued
//! notices, and whenever the database says another process's commit did
//! (LISTEN on `passport_outbox`, which a trigger on the outbox notifies), so
//! the process delivering starts new lanes at once whoever committed them.

mod group_commit;
mod logbook;
mod outbox;
mod signin;
mod statement;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};

use crate::adapters::store_rows::{
    corrupt, decode_request, due_timer, id_of, known_timer_kinds, listed_request, pending_deletion,
    to_id, Columns, DELETION_COLUMNS,
};
use crate::app::effects::{Effects, Timer, TimerId, TimerKind};
use crate::app::ports::{
    Clock, Creation, Gauges, IssuedToken, MessageRef, Miss, Mutation, OutboxCounts,
    PasswordMessage, Pending, PendingDeletion, Recording, RequestFilter, SetAside, Store,
    StoreError, Verification, REMOVAL_GRACE,
};
use crate::app::retry::Backoff;
use crate::domain::command::ListFilter;
use crate::domain::logbook::{ChainKeys, KeyAdoption, LogEvent};
use crate::domain::request::{AccessRequest, Refusal, RequestState};
use crate::domain::signin::{
    LoginAttempt, LoginId, LoginState, LogoutScope, SecretHash, TokenRecord,
};
use crate::domain::time::{Span, Timestamp};
use crate::domain::values::{RequestId, SshPublicKey, UserId};

use group_commit::{Committer, Done, Work};
pub use logbook::audit_query;
pub(crate) use logbook::lock_creations_and_logbook;
use logbook::Appender;
use outbox::LaneClaims;
use statement::Writes;

/// The advisory lock a creation holds ("passport" + 1).
pub(crate) const CREATE_LOCK: i64 = logbook::LOGBOOK_LOCK + 1;
/// The channel the outbox's trigger notifies when notices are queued.
const OUTBOX_CHANNEL: &str = "passport_outbox";
/// How long the listener waits before asking again after errors in a row:
/// 1 s, doubling, at most 5 s (each wait ends with a wake-up of the dispatcher,
/// since notifications sent meanwhile are lost).
const LISTEN_RETRY: Backoff = Backoff::new(Span::from_secs(1), Span::from_secs(5));
/// How long the keys of chat deliveries are kept (as on SQLite).
const DELIVERIES_KEPT: Span = Span::from_hours(24);

/// How a [`PgStore`] connects and behaves.
#[derive(Clone)]
pub struct PgOptions {
    /// The Logbook's keys: appends link with the one its last switch names.
    pub keys: ChainKeys,
    /// The time outbox claims are taken and run out by (the application's clock).
    pub clock: Arc<dyn Clock>,
    /// How long a claim on an outbox lane lasts without progress: a process
    /// that dies mid-delivery leaves its lanes to others after this long.
    pub claim_for: Span,
    /// Connections in the pool.
    pub max_connections: u32,
}

impl PgOptions {
    /// The defaults, with `clock` and no Logbook key.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            keys: ChainKeys::none(),
            clock,
            claim_for: Span::from_minutes(2),
            max_connections: 16,
        }
    }
}

#[derive(Clone)]
pub struct PgStore {
    shared: Arc<Shared>,
}

struct Shared {
    pool: PgPool,
    keys: ChainKeys,
    clock: Arc<dyn Clock>,
    claim_for: Span,
    /// This process's name on outbox claims: unique per store.
    holder: String,
    /// Until when this process's outbox claims last.
    held: outbox::Held,
    /// Takes the outbox's statistics again after a slow claim.
    statistics: outbox::Statistics,
    /// Notices this process cannot read, passed over by its claims.
    unread: outbox::Unread,
    queued: Arc<Mutex<Option<tokio::sync::watch::Sender<u64>>>>,
    notices_queued: tokio::sync::watch::Receiver<u64>,
    /// Runs the changes of requests, in groups.
    committer: Committer,
    /// Dropped with the store: the listener stops.
    _listening: tokio::sync::watch::Sender<()>,
}

/// Moves `notices_queued` on, unless the store is closed.
fn bump(queued: &Mutex<Option<tokio::sync::watch::Sender<u64>>>) {
    if let Some(sender) = queued.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        sender.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Moves `queued` on at each notification that notices were queued, and
/// after every reconnection (notifications sent meanwhile are lost), until
/// the pool closes or `stop`'s sender is dropped.
async fn listen(
    mut listener: PgListener,
    queued: Arc<Mutex<Option<tokio::sync::watch::Sender<u64>>>>,
    mut stop: tokio::sync::watch::Receiver<()>,
) {
    let mut failures = 0;
    loop {
        let next = tokio::select! {
            next = listener.try_recv() => next,
            _ = stop.changed() => return,
        };
        match next {
            // A notification, or a lost connection, reconnected already.
            Ok(_) => {
                failures = 0;
                bump(&queued)
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                let wait = LISTEN_RETRY.wait_after(failures);
                failures += 1;
                tracing::warn!(error = %e, retry_in = ?wait, "not hearing of notices other processes queue; retrying");
                tokio::select! {
                    () = tokio::time::sleep(wait) => bump(&queued),
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut => StoreError::Busy,
            sqlx::Error::Database(db)
                // serialization_failure, deadlock_detected, lock_not_available
                if matches!(db.code().as_deref(), Some("40001" | "40P01" | "55P03")) =>
            {
                StoreError::Busy
            }
            _ => StoreError::Other(e.to_string()),
        }
    }
}

impl Columns for sqlx::postgres::PgRow {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn maybe_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn maybe_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn maybe_flag(&self, i: usize) -> Result<Option<bool>, StoreError> {
        Ok(self.try_get(i)?)
    }
}

/// A name for this store's outbox claims, unique among processes and stores.
fn holder_name() -> String {
    let mut bytes = [0u8; 6];
    // Uniqueness, not secrecy: the time serves when the system's random fails.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes.copy_from_slice(&nanos.to_be_bytes()[10..]);
    }
    format!("pid{}-{}", std::process::id(), hex::encode(bytes))
}

/// Why this release may not write here any more, when a newer release
/// raised `passport_schema.compatible_from` past this one's newest migration
/// after it started.
fn outdated(compatible_from: i64) -> Option<StoreError> {
    let newest = newest_migration();
    (compatible_from > newest).then(|| {
        StoreError::Schema(format!(
            "a newer Passport has migrated the database to a schema releases older than migration {compatible_from} cannot run beside, and this Passport knows migrations up to {newest}: replace this replica with the newer release"
        ))
    })
}

/// The newest of this release's PostgreSQL migrations.
fn newest_migration() -> i64 {
    static NEWEST: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
        crate::adapters::schema::newest(&sqlx::migrate!("./migrations/postgres"))
    });
    *NEWEST
}

/// What became of an update.
enum Updated {
    Changed(Box<(AccessRequest, Effects)>),
    Refused(Refusal),
    Missing,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://…`) and applies the
    /// migrations of `migrations/postgres/`.
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        let connect: PgConnectOptions = url.parse().map_err(|e| {
            StoreError::Other(format!(
                "[store] url is not a PostgreSQL address ({e}): use postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            ))
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect.clone())
            .await
            .map_err(|e| StoreError::Other(format!("cannot connect to PostgreSQL: {e}")))?;
        {
            let mut conn = pool
                .acquire()
                .await
                .map_err(|e| StoreError::Other(format!("cannot connect to PostgreSQL: {e}")))?;
            let migrated = crate::adapters::schema::migrate(
                &mut *conn,
                sqlx::migrate!("./migrations/postgres"),
            )
            .await;
            if migrated.is_err() {
                // Closing waits for every connection back, this one too.
                drop(conn);
                pool.close().await;
            }
            migrated?;
        }
        let (queued, notices_queued) = tokio::sync::watch::channel(0);
        let queued = Arc::new(Mutex::new(Some(queued)));
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(|e| StoreError::Other(format!("cannot listen to PostgreSQL: {e}")))?;
        listener
            .listen(OUTBOX_CHANNEL)
            .await
            .map_err(|e| StoreError::Other(format!("cannot listen to PostgreSQL: {e}")))?;
        let (listening, stop) = tokio::sync::watch::channel(());
        tokio::spawn(listen(listener, queued.clone(), stop));
        let committer = Committer::start(connect, options.keys.clone(), queued.clone())?;
        Ok(Self {
            shared: Arc::new(Shared {
                pool,
                keys: options.keys,
                clock: options.clock,
                claim_for: options.claim_for,
                holder: holder_name(),
                held: outbox::Held::default(),
                statistics: outbox::Statistics::default(),
                unread: outbox::Unread::default(),
                queued,
                notices_queued,
                committer,
                _listening: listening,
            }),
        })
    }

    /// Brings the Logbook under the configured key, at start-up of a process
    /// that writes (see [`crate::adapters::sqlite::SqliteStore::adopt_logbook_key`]).
    pub async fn adopt_logbook_key(&self, now: Timestamp) -> Result<KeyAdoption, StoreError> {
        let mut tx = self.begin().await?;
        let adopted = logbook::adopt_key(&mut tx, &self.shared.keys, now).await?;
        tx.commit().await?;
        Ok(adopted)
    }

    /// Closes the pool, and with it `notices_queued`.
    pub async fn close(&self) {
        self.shared.committer.close().await;
        self.shared
            .queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.shared.pool.close().await;
    }

    /// The pool, for tests and tools that read the database directly.
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.shared.pool.begin().await?)
    }

    /// Commits `tx`, then, when it queued notices, moves `notices_queued` on.
    async fn commit(
        &self,
        tx: Transaction<'static, Postgres>,
        queued: bool,
    ) -> Result<(), StoreError> {
        tx.commit().await?;
        // The notification comes too, a moment later: this is for the
        // dispatcher of this process, which need not wait for it.
        if queued {
            bump(&self.shared.queued);
        }
        Ok(())
    }

    /// Keeps `key` until `until` (`seen_keys`): true the first time, and
    /// when it was kept only until before `expired_before`.
    async fn remember_key(
        &self,
        key: &str,
        until: Timestamp,
        expired_before: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut conn = self.shared.pool.acquire().await?;
        remember_key(&mut conn, key, until, expired_before).await
    }

    async fn requests(
        &self,
        sql: &str,
        bind: impl FnOnce(
            sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
        ) -> sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        let rows = bind(sqlx::query(sql)).fetch_all(&self.shared.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.extend(listed_request(row.try_get::<&str, _>(0)?));
        }
        Ok(out)
    }

    /// Notes what a committed claim took: until when this process holds
    /// it, the notices it cannot read, and whether the claim was slow
    /// enough to take statistics again.
    fn claimed(&self, claimed: &outbox::Claimed, until: Timestamp, now: Timestamp) {
        self.shared
            .held
            .claimed(claimed.pending.iter().map(|p| p.id), until, now);
        self.shared.unread.add(&claimed.unread);
        self.shared
            .statistics
            .after_claim(claimed.took, &self.shared.pool);
    }

    /// How the end of `ids`, notices of one lane that goes on, moves the
    /// claims left on it: see [`outbox::Held`].
    fn lane_goes_on(&self, ids: &[i64]) -> LaneClaims {
        let shared = &self.shared;
        shared.held.ended(ids, shared.clock.now(), shared.claim_for)
    }

    /// Ends the outbox rows `ids`, notices of one lane, with `set` (their
    /// other columns), and moves this store's claims on that lane as
    /// `claims` says, in one transaction.
    ///
    /// The transaction runs on a task of its own, to its end whether or not
    /// the caller's future is polled meanwhile. The dispatcher polls its lanes
    /// (which end notices) from the same task that reads the outbox: a lane
    /// suspended between this UPDATE and the commit held its lane's rows
    /// locked while the read waited for those very locks, and delivery
    /// stopped for good.
    async fn end_notice(
        &self,
        ids: Vec<i64>,
        set: &str,
        bind: impl FnOnce(
                sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
            ) -> sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>
            + Send
            + 'static,
        claims: LaneClaims,
    ) -> Result<(), StoreError> {
        let Some(&last) = ids.last() else {
            return Ok(());
        };
        let sql = format!(
            "UPDATE outbox SET {set}, claimed_by = NULL, claimed_until = NULL \
             WHERE id = ANY($1)"
        );
        let (store, holder) = (self.clone(), self.shared.holder.clone());
        tokio::spawn(async move {
            let mut tx = store.begin().await?;
            // No claims' lock here: `outbox::after` skips the rows a claim
            // holds, so a claim and this record never wait for each other
            // in a circle, and deliveries do not queue behind claims.
            bind(sqlx::query(&sql).bind(ids)).execute(&mut *tx).await?;
            let extended = outbox::after(&mut tx, last, &holder, claims).await?;
            tx.commit().await?;
            if let LaneClaims::Extend(until) = claims {
                let now = store.shared.clock.now();
                store.shared.held.claimed(extended, until, now);
            }
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Other(format!("recording a notice's delivery stopped: {e}")))?
    }
}

// ---------------------------------------------------------------------------
// Writing, inside the caller's transaction

/// Keeps `key` until `until` (`seen_keys`) on `conn`: true the first time,
/// and when it was kept only until before `expired_before`.
async fn remember_key(
    conn: &mut PgConnection,
    key: &str,
    until: Timestamp,
    expired_before: Timestamp,
) -> Result<bool, StoreError> {
    let changed = sqlx::query(
        "INSERT INTO seen_keys (key, expires_at) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at \
         WHERE seen_keys.expires_at < $3",
    )
    .bind(key)
    .bind(until.as_millis())
    .bind(expired_before.as_millis())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Keeps the replay key of the signed chat request behind `fx`, if any; one
/// seen before fails the change with [`StoreError::Replayed`]. Each change
/// keeps its key before it writes anything else, so a replayed change
/// writes nothing.
async fn keep_signed(conn: &mut PgConnection, fx: &Effects) -> Result<(), StoreError> {
    let Some(signed) = &fx.signed else {
        return Ok(());
    };
    let never = Timestamp::from_millis(i64::MIN);
    if remember_key(conn, &signed.key, signed.until, never).await? {
        Ok(())
    } else {
        Err(StoreError::Replayed)
    }
}

/// Events and notices that belong to no request, in a transaction of their
/// own making (sign-in and tokens, whose rows no group of changes locks):
/// the notices and the events, linked after the head, in one statement.
async fn record(
    conn: &mut PgConnection,
    keys: &ChainKeys,
    fx: &Effects,
    at: Timestamp,
) -> Result<(), StoreError> {
    no_timers(fx)?;
    let mut log = Appender::lock(conn, keys).await?;
    log.push(&fx.events)?;
    let outbox = OutboxRows::of(fx, at)?;
    keep_signed(conn, fx).await?;
    let mut writes = Writes::default();
    outbox.queue(&mut writes)?;
    log.queue(&mut writes)?;
    writes.run(conn).await?;
    Ok(())
}

/// Refuses effects of no request that touch timers: timers belong to a request.
fn no_timers(fx: &Effects) -> Result<(), StoreError> {
    if !fx.timers.is_empty() || fx.cancel_all || fx.cancel_expiry || !fx.cancel.is_empty() {
        return Err(StoreError::Other(
            "timers belong to a request: use update".into(),
        ));
    }
    Ok(())
}

/// When a change happened: its first event's time, else `fallback`.
fn change_time(fx: &Effects, fallback: Timestamp) -> Timestamp {
    fx.events.first().map(|e| e.at).unwrap_or(fallback)
}

/// How many requests of `requester` wait for approval, counted up to `up_to`
/// (0: not counted), through the partial index of pending requests.
async fn count_pending(
    conn: &mut PgConnection,
    requester: &str,
    up_to: u32,
) -> Result<u64, StoreError> {
    if up_to == 0 {
        return Ok(0);
    }
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM \
         (SELECT 1 FROM requests WHERE requester = $1 AND state = 'pending' LIMIT $2) AS p",
    )
    .bind(requester)
    .bind(i64::from(up_to))
    .fetch_one(&mut *conn)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Notices to queue, serialised before anything is written.
#[derive(Default)]
struct OutboxRows {
    surfaces: Vec<String>,
    lanes: Vec<String>,
    requests: Vec<Option<i64>>,
    notices: Vec<String>,
    at: Vec<i64>,
}

impl OutboxRows {
    /// The notices of `fx`, queued at `at`.
    fn of(fx: &Effects, at: Timestamp) -> Result<Self, StoreError> {
        let mut rows = Self::default();
        for (surface, notice) in &fx.outbox {
            rows.surfaces.push(surface.clone());
            rows.lanes.push(notice.lane());
            rows.requests.push(notice.request().map(id_of));
            rows.notices
                .push(serde_json::to_string(notice).map_err(corrupt)?);
            rows.at.push(at.as_millis());
        }
        Ok(rows)
    }

    /// Adds `other`'s notices after these.
    fn extend(&mut self, other: &OutboxRows) {
        self.surfaces.extend_from_slice(&other.surfaces);
        self.lanes.extend_from_slice(&other.lanes);
        self.requests.extend_from_slice(&other.requests);
        self.notices.extend_from_slice(&other.notices);
        self.at.extend_from_slice(&other.at);
    }

    /// Adds the insert of these notices to `writes`, in the order given:
    /// ids (and so each lane's order) follow it.
    fn queue(self, writes: &mut Writes) -> Result<(), StoreError> {
        if self.notices.is_empty() {
            return Ok(());
        }
        let from = [
            writes.bind(self.surfaces, "text[]")?,
            writes.bind(self.lanes, "text[]")?,
            writes.bind(self.requests, "bigint[]")?,
            writes.bind(self.notices, "text[]")?,
            writes.bind(self.at, "bigint[]")?,
        ]
        .join(", ");
        writes.push(format!(
            "INSERT INTO outbox (surface, lane, request, notice, created_at, next_attempt_at) \
             SELECT s, l, r, n, a, a FROM UNNEST({from}) WITH ORDINALITY AS t (s, l, r, n, a, i) \
             ORDER BY i"
        ));
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The port

#[async_trait]
impl Store for PgStore {
    async fn create(
        &self,
        requester: &UserId,
        pending_cap: u32,
        build: Creation,
    ) -> Result<Result<(AccessRequest, Effects), Refusal>, StoreError> {
        let work = Work::Create {
            requester: requester.as_str().to_owned(),
            pending_cap,
            build,
        };
        match self.shared.committer.run(work).await? {
            Done::Created(created) => Ok(*created),
            _ => Err(group_commit::mixed_up()),
        }
    }

    async fn update(
        &self,
        id: RequestId,
        fired: Option<TimerId>,
        change: Mutation,
    ) -> Result<Result<(AccessRequest, Effects), Refusal>, StoreError> {
        // A refusal commits too: the fired timer's deletion is all it wrote.
        match self
            .shared
            .committer
            .run(Work::Update { id, fired, change })
            .await?
        {
            Done::Updated(Updated::Changed(changed)) => Ok(Ok(*changed)),
            Done::Updated(Updated::Refused(refusal)) => Ok(Err(refusal)),
            Done::Updated(Updated::Missing) => Err(StoreError::NotFound(id)),
            _ => Err(group_commit::mixed_up()),
        }
    }

    async fn get(&self, id: RequestId) -> Result<Option<AccessRequest>, StoreError> {
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM requests WHERE id = $1")
            .bind(id_of(id))
            .fetch_optional(&self.shared.pool)
            .await?;
        body.map(|b| decode_request(&b)).transpose()
    }

    async fn pending_count(&self, requester: &UserId, up_to: u32) -> Result<u64, StoreError> {
        let mut conn = self.shared.pool.acquire().await?;
        count_pending(&mut conn, requester.as_str(), up_to).await
    }

    async fn list(
        &self,
        filter: ListFilter,
        user: &UserId,
        limit: u32,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        let (user, limit) = (user.as_str().to_owned(), i64::from(limit));
        match filter {
            ListFilter::Default => {
                self.requests(
                    "SELECT body FROM requests WHERE requester = $1 \
                     OR state IN ('pending', 'approved', 'provisioning', 'active') \
                     ORDER BY id DESC LIMIT $2",
                    |q| q.bind(user).bind(limit),
                )
                .await
            }
            ListFilter::Mine => {
                self.requests(
                    "SELECT body FROM requests WHERE requester = $1 ORDER BY id DESC LIMIT $2",
                    |q| q.bind(user).bind(limit),
                )
                .await
            }
            ListFilter::Pending => {
                self.requests(
                    "SELECT body FROM requests WHERE state = $1 ORDER BY id DESC LIMIT $2",
                    |q| q.bind(RequestState::Pending.as_str()).bind(limit),
                )
                .await
            }
            ListFilter::Active => {
                self.requests(
                    "SELECT body FROM requests WHERE state IN ($1, $2, $3) ORDER BY id DESC LIMIT $4",
                    |q| {
                        q.bind(RequestState::Approved.as_str())
                            .bind(RequestState::Provisioning.as_str())
                            .bind(RequestState::Active.as_str())
                            .bind(limit)
                    },
                )
                .await
            }
        }
    }

    async fn due_timers(&self, now: Timestamp, limit: u32) -> Result<Vec<Timer>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT id, request, kind, due_at, attempts FROM timers WHERE due_at <= $1 AND ",
            known_timer_kinds!(),
            " ORDER BY due_at, id LIMIT $2"
        ))
        .bind(now.as_millis())
        .bind(i64::from(limit))
        .fetch_all(&self.shared.pool)
        .await?;
        let mut timers = Vec::with_capacity(rows.len());
        for row in &rows {
            timers.extend(due_timer(row)?);
        }
        Ok(timers)
    }

    async fn reschedule_timer(&self, id: TimerId, due: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE timers SET due_at = $1, attempts = attempts + 1 WHERE id = $2")
            .bind(due.as_millis())
            .bind(id)
            .execute(&self.shared.pool)
            .await?;
        Ok(())
    }

    async fn delete_timer(&self, id: TimerId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM timers WHERE id = $1")
            .bind(id)
            .execute(&self.shared.pool)
            .await?;
        Ok(())
    }

    async fn pending_notices(&self, limit: u32, per_lane: u32) -> Result<Vec<Pending>, StoreError> {
        loop {
            if let Some(ids) = self.shared.unread.to_prune() {
                let still = outbox::still_waiting(&self.shared.pool, &ids).await?;
                self.shared.unread.keep(&still);
            }
            let now = self.shared.clock.now();
            let until = now.plus(self.shared.claim_for);
            let unread = self.shared.unread.ids();
            let mut tx = self.begin().await?;
            let claimed = outbox::claim(
                &mut tx,
                &self.shared.holder,
                now,
                until,
                (limit, per_lane),
                &unread,
            )
            .await?;
            tx.commit().await?;
            self.claimed(&claimed, until, now);
            // Notices it cannot read took room the others can have: claim
            // again without them (this process's claims come back with it).
            if claimed.unread.is_empty() || claimed.pending.len() >= limit as usize {
                return Ok(claimed.pending);
            }
        }
    }

    async fn lane_notices(
        &self,
        surface: &str,
        lane: &str,
        limit: u32,
    ) -> Result<Vec<Pending>, StoreError> {
        let now = self.shared.clock.now();
        let until = now.plus(self.shared.claim_for);
        let mut tx = self.begin().await?;
        let claimed = outbox::claim_lane(
            &mut tx,
            &self.shared.holder,
            now,
            until,
            (surface, lane),
            limit,
        )
        .await?;
        tx.commit().await?;
        self.claimed(&claimed, until, now);
        Ok(claimed.pending)
    }

    fn notices_queued(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.notices_queued.clone()
    }

    async fn mark_delivered(&self, ids: &[i64], now: Timestamp) -> Result<(), StoreError> {
        let claims = self.lane_goes_on(ids);
        self.end_notice(
            ids.to_vec(),
            "delivered_at = $2, last_error = NULL, attempts = attempts + 1",
            move |q| q.bind(now.as_millis()),
            claims,
        )
        .await
    }

    async fn mark_retry(
        &self,
        id: i64,
        next_attempt_at: Timestamp,
        error: &str,
        miss: Miss,
    ) -> Result<(), StoreError> {
        let (attempts, refusals) = miss.counts();
        // The lane's claims end: this process forgets this one's, and the
        // others' are pruned from `held` once they have run out.
        self.shared.held.forget(&[id]);
        self.end_notice(
            vec![id],
            "next_attempt_at = $2, last_error = $3, attempts = attempts + $4, \
             refusals = refusals + $5",
            {
                let error = error.to_owned();
                move |q| {
                    q.bind(next_attempt_at.as_millis())
                        .bind(error)
                        .bind(attempts)
                        .bind(refusals)
                }
            },
            LaneClaims::Release,
        )
        .await
    }

    async fn mark_dead(&self, id: i64, now: Timestamp, error: &str) -> Result<(), StoreError> {
        // The last refusal counts as every refusal does.
        let (attempts, refusals) = Miss::Refused.counts();
        let claims = self.lane_goes_on(&[id]);
        self.end_notice(
            vec![id],
            "dead_at = $2, last_error = $3, attempts = attempts + $4, refusals = refusals + $5",
            {
                let error = error.to_owned();
                move |q| {
                    q.bind(now.as_millis())
                        .bind(error)
                        .bind(attempts)
                        .bind(refusals)
                }
            },
            claims,
        )
        .await
    }

    async fn set_aside(&self, limit: u32) -> Result<Vec<SetAside>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, surface, lane, request, created_at, dead_at, attempts, COALESCE(last_error, ''), \
             refusals FROM outbox WHERE dead_at IS NOT NULL AND delivered_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.shared.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SetAside {
                    id: row.try_get(0)?,
                    surface: row.try_get(1)?,
                    lane: row.try_get(2)?,
                    request: row.try_get::<Option<i64>, _>(3)?.map(to_id).transpose()?,
                    created_at: Timestamp::from_millis(row.try_get(4)?),
                    set_aside_at: Timestamp::from_millis(row.try_get(5)?),
                    attempts: u32::try_from(row.try_get::<i64, _>(6)?).unwrap_or(u32::MAX),
                    refusals: u32::try_from(row.try_get::<i64, _>(8)?).unwrap_or(u32::MAX),
                    last_error: row.try_get(7)?,
                })
            })
            .collect()
    }

    async fn revive(&self, ids: Option<Vec<i64>>, now: Timestamp) -> Result<u64, StoreError> {
        let query = match &ids {
            None => sqlx::query(
                "UPDATE outbox SET dead_at = NULL, attempts = 0, refusals = 0, next_attempt_at = $1, \
                 claimed_by = NULL, claimed_until = NULL \
                 WHERE dead_at IS NOT NULL AND delivered_at IS NULL AND $2::bigint[] IS NULL",
            ),
            Some(_) => sqlx::query(
                "UPDATE outbox SET dead_at = NULL, attempts = 0, refusals = 0, next_attempt_at = $1, \
                 claimed_by = NULL, claimed_until = NULL \
                 WHERE id = ANY($2) AND dead_at IS NOT NULL AND delivered_at IS NULL",
            ),
        };
        let n = query
            .bind(now.as_millis())
            .bind(ids)
            .execute(&self.shared.pool)
            .await?
            .rows_affected();
        Ok(n)
    }

    async fn prune_delivered(&self, before: Timestamp, limit: u64) -> Result<u64, StoreError> {
        let n = sqlx::query(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
             WHERE delivered_at IS NOT NULL AND delivered_at < $1 LIMIT $2)",
        )
        .bind(before.as_millis())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&self.shared.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE delivered_at IS NULL AND dead_at IS NULL), \
                    COUNT(*) FILTER (WHERE delivered_at IS NOT NULL), \
                    COUNT(*) FILTER (WHERE dead_at IS NOT NULL) FROM outbox",
        )
        .fetch_one(&self.shared.pool)
        .await?;
        Ok(OutboxCounts {
            pending: row.try_get::<i64, _>(0)?.max(0) as u64,
            delivered: row.try_get::<i64, _>(1)?.max(0) as u64,
            dead: row.try_get::<i64, _>(2)?.max(0) as u64,
        })
    }

    async fn gauges(&self, now: Timestamp) -> Result<Gauges, StoreError> {
        let late = now.minus(REMOVAL_GRACE).as_millis();
        let pool = &self.shared.pool;
        let requests = sqlx::query("SELECT state, COUNT(*) FROM requests GROUP BY state")
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>(0)?,
                    r.try_get::<i64, _>(1)?.max(0) as u64,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let row = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM requests WHERE open_grants > 0 \
                  AND ((expires_at IS NOT NULL AND expires_at < $1) \
                       OR (state IN ('completed', 'expired', 'revoked', 'cancelled', 'denied', \
                                     'approval_timed_out', 'failed') AND updated_at < $1))), \
               (SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL), \
               (SELECT MIN(created_at) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL), \
               (SELECT COUNT(*) FROM outbox WHERE dead_at IS NOT NULL AND delivered_at IS NULL), \
               (SELECT COUNT(*) FROM timers WHERE due_at < $1)",
        )
        .bind(late)
        .fetch_one(pool)
        .await?;
        let oldest: Option<i64> = row.try_get(2)?;
        Ok(Gauges {
            requests,
            removals_overdue: row.try_get::<i64, _>(0)?.max(0) as u64,
            outbox_pending: row.try_get::<i64, _>(1)?.max(0) as u64,
            outbox_oldest_seconds: oldest
                .map(|at| ((now.as_millis() - at).max(0) as f64) / 1000.0)
                .unwrap_or(0.0),
            outbox_set_aside: row.try_get::<i64, _>(3)?.max(0) as u64,
            timers_overdue: row.try_get::<i64, _>(4)?.max(0) as u64,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.shared.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        PgStore::close(self).await;
    }

    async fn ping_writer(&self) -> Result<(), StoreError> {
        // A standby (a failover's old primary, a read replica) answers
        // reads and refuses every write.
        let mut tx = self.begin().await?;
        let (standby, compatible_from): (bool, i64) = sqlx::query_as(
            "SELECT pg_is_in_recovery(), (SELECT compatible_from FROM passport_schema)",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        if standby {
            return Err(StoreError::Other(
                "the database is a read-only standby: point [store] url at the primary".into(),
            ));
        }
        outdated(compatible_from).map_or(Ok(()), Err)
    }

    async fn chat_ref(
        &self,
        request: RequestId,
        surface: &str,
    ) -> Result<Option<MessageRef>, StoreError> {
        let row = sqlx::query(
            "SELECT channel, message FROM chat_refs WHERE request = $1 AND surface = $2",
        )
        .bind(id_of(request))
        .bind(surface)
        .fetch_optional(&self.shared.pool)
        .await?;
        row.map(|r| {
            Ok(MessageRef {
                channel: r.try_get(0)?,
                message: r.try_get(1)?,
            })
        })
        .transpose()
    }

    async fn save_chat_ref(
        &self,
        request: RequestId,
        surface: &str,
        at: &MessageRef,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO chat_refs (request, surface, channel, message) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (request, surface) DO UPDATE \
             SET channel = EXCLUDED.channel, message = EXCLUDED.message",
        )
        .bind(id_of(request))
        .bind(surface)
        .bind(&at.channel)
        .bind(&at.message)
        .execute(&self.shared.pool)
        .await?;
        Ok(())
    }

    async fn audit_events(
        &self,
        request: Option<RequestId>,
        since: Option<Timestamp>,
    ) -> Result<Vec<LogEvent>, StoreError> {
        logbook::events(&self.shared.pool, request.map(|r| r.to_string()), since).await
    }

    async fn verify_logbook(&self) -> Result<Verification, StoreError> {
        logbook::verify(&self.shared.pool, &self.shared.keys).await
    }

    async fn record(&self, fx: Effects, now: Timestamp) -> Result<(), StoreError> {
        match self
            .shared
            .committer
            .run(Work::Record { fx, at: now })
            .await?
        {
            Done::Recorded(_) => Ok(()),
            _ => Err(group_commit::mixed_up()),
        }
    }

    async fn ssh_key(&self, user: &UserId) -> Result<Option<SshPublicKey>, StoreError> {
        let key: Option<String> =
            sqlx::query_scalar(r#"SELECT key FROM ssh_keys WHERE "user" = $1"#)
                .bind(user.as_str())
                .fetch_optional(&self.shared.pool)
                .await?;
        key.map(|k| {
            SshPublicKey::parse(&k)
                .map_err(|e| StoreError::Corrupt(format!("stored SSH key of {user}: {e}")))
        })
        .transpose()
    }

    async fn set_ssh_key(
        &self,
        user: &UserId,
        key: Option<&SshPublicKey>,
        fx: Effects,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        match key {
            Some(key) => {
                sqlx::query(
                    r#"INSERT INTO ssh_keys ("user", key) VALUES ($1, $2) ON CONFLICT ("user") DO UPDATE SET key = EXCLUDED.key"#,
                )
                .bind(user.as_str())
                .bind(key.as_str())
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query(r#"DELETE FROM ssh_keys WHERE "user" = $1"#)
                    .bind(user.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        record(&mut tx, &self.shared.keys, &fx, now).await?;
        self.commit(tx, !fx.outbox.is_empty()).await
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Span,
    ) -> Result<bool, StoreError> {
        // One statement: of callers racing for a free or expired lease, the
        // first to insert or update the row wins, and the others find it
        // held (ON CONFLICT waits for the winner's commit, then checks).
        // Neither taken nor renewed by a release older than the database's
        // `compatible_from` (a newer one raised it while this one ran): the
        // lease passes to a release that can run here within its time.
        let changed = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) \
             SELECT $1, $2, $3 WHERE (SELECT compatible_from FROM passport_schema) <= $5 \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
             WHERE (leases.holder = EXCLUDED.holder OR leases.expires_at <= $4) \
               AND (SELECT compatible_from FROM passport_schema) <= $5",
        )
        .bind(name)
        .bind(holder)
        .bind(now.plus(ttl).as_millis())
        .bind(now.as_millis())
        .bind(newest_migration())
        .execute(&self.shared.pool)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.shared.pool)
            .await?;
        Ok(())
    }

    async fn lease_holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT holder FROM leases WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.shared.pool)
                .await?,
        )
    }

    async fn take_over_lease(
        &self,
        name: &str,
        stale: &str,
        holder: &str,
        now: Timestamp,
        ttl: Span,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE leases SET holder = $2, expires_at = $3 WHERE name = $1 AND holder = $4",
        )
        .bind(name)
        .bind(holder)
        .bind(now.plus(ttl).as_millis())
        .bind(stale)
        .execute(&self.shared.pool)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn job_next_run(
        &self,
        name: &str,
        schedule: &str,
    ) -> Result<Option<Timestamp>, StoreError> {
        let next: Option<i64> =
            sqlx::query_scalar("SELECT next_run FROM jobs WHERE name = $1 AND schedule = $2")
                .bind(name)
                .bind(schedule)
                .fetch_optional(&self.shared.pool)
                .await?;
        Ok(next.map(Timestamp::from_millis))
    }

    async fn set_job_next_run(
        &self,
        name: &str,
        schedule: &str,
        next: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO jobs (name, schedule, next_run) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET schedule = EXCLUDED.schedule, next_run = EXCLUDED.next_run",
        )
        .bind(name)
        .bind(schedule)
        .bind(next.as_millis())
        .execute(&self.shared.pool)
        .await?;
        Ok(())
    }

    async fn requests_in(
        &self,
        states: &[RequestState],
        filter: RequestFilter,
        limit: u32,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        let names: Vec<String> = states.iter().map(|s| s.as_str().to_owned()).collect();
        self.requests(
            "SELECT body FROM requests WHERE state = ANY($1) AND updated_at >= $2 \
             AND (NOT $3 OR open_grants > 0) ORDER BY id LIMIT $4",
            |q| {
                q.bind(names)
                    .bind(filter.changed_since.map_or(i64::MIN, Timestamp::as_millis))
                    .bind(filter.holding_users)
                    .bind(i64::from(limit))
            },
        )
        .await
    }

    async fn ended_unverified(
        &self,
        since: Timestamp,
        limit: u32,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        self.requests(
            "SELECT body FROM requests \
             WHERE state IN ('completed', 'expired', 'revoked', 'failed') AND open_grants = 0 \
               AND updated_at >= $1 \
               AND NOT COALESCE((body::jsonb ->> 'removal_verified')::boolean, FALSE) \
             ORDER BY id LIMIT $2",
            |q| q.bind(since.as_millis()).bind(i64::from(limit)),
        )
        .await
    }

    async fn has_timer(&self, request: RequestId, kind: TimerKind) -> Result<bool, StoreError> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM timers WHERE request = $1 AND kind = $2 LIMIT 1")
                .bind(id_of(request))
                .bind(kind.encode())
                .fetch_optional(&self.shared.pool)
                .await?;
        Ok(found.is_some())
    }

    async fn logbook_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM logbook ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.shared.pool)
            .await?;
        row.map(|r| {
            let hash: Vec<u8> = r.try_get(1)?;
            Ok((r.try_get::<i64, _>(0)? as u64, hex::encode(hash)))
        })
        .transpose()
    }

    async fn logbook_hash_at(&self, seq: u64) -> Result<Option<String>, StoreError> {
        let hash: Option<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM logbook WHERE seq = $1")
            .bind(seq as i64)
            .fetch_optional(&self.shared.pool)
            .await?;
        Ok(hash.map(hex::encode))
    }

    async fn first_delivery(&self, key: &str, now: Timestamp) -> Result<bool, StoreError> {
        // A key whose day has passed counts as new, pruned yet or not.
        self.remember_key(key, now.plus(DELIVERIES_KEPT), now).await
    }

    async fn first_signed(&self, key: &str, until: Timestamp) -> Result<bool, StoreError> {
        // Past its window the signature is refused anyway: no key comes back.
        self.remember_key(key, until, Timestamp::from_millis(i64::MIN))
            .await
    }

    async fn prune_signed(&self, now: Timestamp, limit: u64) -> Result<u64, StoreError> {
        let n = sqlx::query(
            "DELETE FROM seen_keys WHERE key IN (SELECT key FROM seen_keys \
             WHERE expires_at < $1 LIMIT $2)",
        )
        .bind(now.as_millis())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&self.shared.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn request_for_message(
        &self,
        surface: &str,
        channel: Option<&str>,
        message: &str,
    ) -> Result<Option<RequestId>, StoreError> {
        let id: Option<i64> = match channel {
            Some(channel) => {
                sqlx::query_scalar(
                    "SELECT request FROM chat_refs WHERE surface = $1 AND channel = $2 AND message = $3",
                )
                .bind(surface)
                .bind(channel)
                .bind(message)
                .fetch_optional(&self.shared.pool)
                .await?
            }
            None => {
                sqlx::query_scalar(
                    "SELECT request FROM chat_refs WHERE surface = $1 AND message = $2 LIMIT 1",
                )
                .bind(surface)
                .bind(message)
                .fetch_optional(&self.shared.pool)
                .await?
            }
        };
        id.map(to_id).transpose()
    }

    async fn login_start(
        &self,
        login: &LoginAttempt,
        code: &SecretHash,
        secret: &SecretHash,
        fx: Effects,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        signin::start(&mut tx, login, code, secret).await?;
        record(&mut tx, &self.shared.keys, &fx, now).await?;
        self.commit(tx, !fx.outbox.is_empty()).await
    }

    async fn login_by_code(&self, code: &SecretHash) -> Result<Option<LoginAttempt>, StoreError> {
        signin::by_code(&self.shared.pool, code).await
    }

    async fn login_by_id(
        &self,
        id: &LoginId,
    ) -> Result<Option<(LoginAttempt, SecretHash)>, StoreError> {
        signin::by_id(&self.shared.pool, id).await
    }

    async fn login_save(
        &self,
        login: &LoginAttempt,
        was: LoginState,
        fx: Effects,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        if !signin::save(&mut tx, login, was).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        record(&mut tx, &self.shared.keys, &fx, now).await?;
        self.commit(tx, !fx.outbox.is_empty()).await?;
        Ok(true)
    }

    async fn login_collect(
        &self,
        issued: &IssuedToken,
        record_token: Recording,
        now: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.begin().await?;
        let Some(token_id) = signin::collect(&mut tx, issued, now).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
        let fx = record_token(token_id);
        record(&mut tx, &self.shared.keys, &fx, now).await?;
        self.commit(tx, !fx.outbox.is_empty()).await?;
        Ok(Some(token_id))
    }

    async fn token(&self, hash: &SecretHash) -> Result<Option<TokenRecord>, StoreError> {
        signin::token(&self.shared.pool, hash).await
    }

    async fn token_refused(&self, id: i64, fx: Effects, now: Timestamp) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        if !signin::refused(&mut tx, id).await? {
            tx.rollback().await?;
            return Ok(());
        }
        record(&mut tx, &self.shared.keys, &fx, now).await?;
        self.commit(tx, !fx.outbox.is_empty()).await
    }

    async fn revoke_tokens(
        &self,
        scope: &LogoutScope,
        record_count: Recording,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let n = signin::revoke(&mut tx, scope, now).await?;
        let fx = record_count(n as i64);
        record(&mut tx, &self.shared.keys, &fx, now).await?;
        self.commit(tx, !fx.outbox.is_empty()).await?;
        Ok(n)
    }

    async fn save_password_message(&self, m: &PasswordMessage) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO password_messages \
             (request, instance, username, surface, channel, message, sent_at, due_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id_of(m.request))
        .bind(m.instance.as_str())
        .bind(m.username.as_str())
        .bind(&m.surface)
        .bind(&m.at.channel)
        .bind(&m.at.message)
        .bind(m.sent_at.as_millis())
        .bind(m.due.as_millis())
        .execute(&self.shared.pool)
        .await?;
        Ok(())
    }

    async fn due_password_messages(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<PendingDeletion>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELETION_COLUMNS} FROM password_messages \
             WHERE due_at <= $1 ORDER BY due_at, id LIMIT $2"
        ))
        .bind(now.as_millis())
        .bind(i64::from(limit))
        .fetch_all(&self.shared.pool)
        .await?;
        rows.iter().map(pending_deletion).collect()
    }

    async fn retry_password_message(&self, id: i64, due: Timestamp) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE password_messages SET due_at = $1, attempts = attempts + 1 WHERE id = $2",
        )
        .bind(due.as_millis())
        .bind(id)
        .execute(&self.shared.pool)
        .await?;
        Ok(())
    }

    async fn password_message_deleted(
        &self,
        id: i64,
        fx: Effects,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let gone = sqlx::query("DELETE FROM password_messages WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            // Another pass recorded this deletion already.
            tx.rollback().await?;
            return Ok(());
        }
        record(&mut tx, &self.shared.keys, &fx, now).await?;
        self.commit(tx, !fx.outbox.is_empty()).await
    }
}
