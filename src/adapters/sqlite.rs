//! The store on SQLite: WAL mode, a busy timeout, foreign keys, migrations
//! from `migrations/` applied on open (with `sqlx::migrate!`).
//!
//! All writes go through one connection owned by one thread, which commits
//! them in groups (see [`group_commit`]). Each change runs in a savepoint of
//! its own, so a refused or failing change writes nothing while the others
//! commit; changes run one after another, so changes to a request are
//! serialized (two approvers clicking at once, or a completion racing the
//! expiry, produce exactly one transition); and no caller is answered before
//! its change is committed. Reads use a small pool of other connections and
//! never wait for the writer (WAL).
//!
//! Statements run through rusqlite, synchronously, on the thread that owns the
//! connection. A transition is a dozen small statements; handing each one to a
//! driver thread and back, as an async driver does, costs several times more
//! than running it.

pub mod backup;
mod group_commit;
mod housekeeping;
mod password_messages;
mod signin;
mod verify;

#[doc(hidden)]
pub use verify::rehash_plainly;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection as _};
use tokio::sync::Semaphore;

use crate::adapters::store_rows::{
    adoption, corrupt, decode_for_change, decode_request, due_timer, encode_request, id_of,
    key_switch, known_timer_kinds, listed_request, log_event, next_linking, pending_notice,
    readable, refuse_key_switches, to_id, Adoption, Columns, LastSwitch, Unknown,
    LOG_EVENT_COLUMNS,
};
use crate::app::effects::{Effects, Timer, TimerId, TimerKind};
use crate::app::ports::{
    Creation, Gauges, IssuedToken, MessageRef, Miss, Mutation, OutboxCounts, PasswordMessage,
    Pending, PendingDeletion, Recording, RequestFilter, SetAside, Slot, Store, StoreError,
    Verification, REMOVAL_GRACE,
};
use crate::domain::command::ListFilter;
use crate::domain::logbook::{
    chain_link, ChainKeys, Hash, Linking, LogEvent, NewEvent, GENESIS, KEY_SWITCH,
};
use crate::domain::request::{AccessRequest, Refusal, RefusalKind, RequestState};
use crate::domain::signin::{
    LoginAttempt, LoginId, LoginState, LogoutScope, SecretHash, TokenRecord,
};
use crate::domain::time::{Span, Timestamp};
use crate::domain::values::{RequestId, SshPublicKey, UserId};

use group_commit::{WriteConn, Writer};

/// How durable each commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Survives a crash of the process; a power cut may lose the last commits.
    Normal,
    /// Every commit is synced to disk before it is answered.
    Full,
}

/// How long a statement waits for a lock held by another process (another
/// `passport` command on the same file) before giving up with `Busy`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Undelivered notices one read of the outbox looks at, at most: past a lane
/// holding more than this many, the lanes behind it wait for it to shrink.
const PENDING_SCAN: usize = 100_000;
/// How long the keys of chat deliveries are kept: far longer than any
/// platform redelivers (Slack retries an event for about an hour).
const DELIVERIES_KEPT: Span = Span::from_hours(24);
/// Read connections, and so reads running at once.
const READERS: usize = 4;
/// Prepared statements kept per connection; the store uses about thirty.
const STATEMENT_CACHE: usize = 64;

#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    writer: Writer,
    /// The Logbook's keys, for verification (the writer holds its own copy).
    keys: ChainKeys,
    /// Moved on by the writer after each commit that queued notices.
    notices_queued: tokio::sync::watch::Receiver<u64>,
    /// One permit per read connection: reads beyond that wait for one to be
    /// free rather than open (and then close) more connections.
    read_permits: Arc<Semaphore>,
    idle_readers: Mutex<Vec<Connection>>,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy,
            _ => StoreError::Other(e.to_string()),
        }
    }
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.get(i)?)
    }
    fn maybe_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.get(i)?)
    }
    fn maybe_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.get(i)?)
    }
    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.get::<_, i64>(i)? != 0)
    }
    fn maybe_flag(&self, i: usize) -> Result<Option<bool>, StoreError> {
        Ok(self.get::<_, Option<i64>>(i)?.map(|n| n != 0))
    }
}

/// The Logbook events of request `?1` (when `by_request`) at or after `?2`
/// (when `by_time`), in order. One statement per case, so each can use its
/// index; `x IS NULL OR …` would read the whole Logbook every time. By time
/// alone, SQLite would rather walk the whole table in `seq` order than sort
/// what the index finds, so the index is named.
fn audit_query(by_request: bool, by_time: bool) -> String {
    let (table, filter) = match (by_request, by_time) {
        (true, true) => ("logbook", "request = ?1 AND at >= ?2"),
        (true, false) => ("logbook", "request = ?1 AND ?2 IS NULL"),
        (false, true) => (
            "logbook INDEXED BY logbook_by_time",
            "?1 IS NULL AND at >= ?2",
        ),
        (false, false) => ("logbook", "?1 IS NULL AND ?2 IS NULL"),
    };
    format!("SELECT {LOG_EVENT_COLUMNS} FROM {table} WHERE {filter} ORDER BY seq")
}

/// Applies the migrations with sqlx, which records them in `_sqlx_migrations`,
/// when this Passport may run on the database ([`crate::adapters::schema`]).
async fn migrate(path: &Path) -> Result<(), StoreError> {
    let sqlx_error = |e: sqlx::Error| StoreError::Other(format!("cannot open the database: {e}"));
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        // WAL is a property of the file: set once here, it holds for every connection.
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        .connect()
        .await
        .map_err(sqlx_error)?;
    crate::adapters::schema::migrate(&mut conn, sqlx::migrate!("./migrations")).await?;
    conn.close().await.map_err(sqlx_error)
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.execute_batch("PRAGMA foreign_keys = ON")?;
    Ok(conn)
}

fn connect_writer(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let conn = connect(path)?;
    conn.execute_batch(match durability {
        Durability::Normal => "PRAGMA synchronous = NORMAL",
        Durability::Full => "PRAGMA synchronous = FULL",
    })?;
    Ok(conn)
}

fn connect_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = connect(path)?;
    conn.execute_batch("PRAGMA query_only = ON")?;
    Ok(conn)
}

/// Verifies the Logbook of the database file at `path` without changing it
/// (no migration, read-only), keyed links with `keys`: how a backup is checked.
pub async fn verify_logbook_file(
    path: &Path,
    keys: &ChainKeys,
) -> Result<Verification, StoreError> {
    let (path, keys) = (path.to_owned(), keys.clone());
    tokio::task::spawn_blocking(move || {
        verify::verify(
            || {
                let conn = Connection::open_with_flags(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                Ok(conn)
            },
            &keys,
        )
    })
    .await
    .map_err(|e| StoreError::Other(format!("verification failed: {e}")))?
}

impl Shared {
    /// Runs `read` on an idle read connection (or a new one), then keeps the
    /// connection for the next read unless the store is closing. The caller
    /// holds a read permit.
    fn with_reader<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self
            .idle_readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => connect_reader(&self.path)?,
        };
        let result = read(&conn);
        if !self.read_permits.is_closed() {
            self.idle_readers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
        result
    }
}

/// What [`SqliteStore::adopt_logbook_key`] found and did (the same for every store).
pub use crate::domain::logbook::KeyAdoption;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies
    /// migrations, with no Logbook key: events are appended to a plain chain,
    /// and refused once the Logbook is keyed.
    pub async fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        Self::open_with_keys(path, durability, ChainKeys::none()).await
    }

    /// Opens the database like [`Self::open`], appending Logbook events with
    /// the key its last switch names when `keys` holds it, and verifying with
    /// `keys`. Nothing is switched: see [`Self::adopt_logbook_key`].
    pub async fn open_with_keys(
        path: &Path,
        durability: Durability,
        keys: ChainKeys,
    ) -> Result<Self, StoreError> {
        migrate(path).await?;
        let (queued, notices_queued) = tokio::sync::watch::channel(0);
        let writer = Writer::start(
            connect_writer(path, durability)?,
            connect(path)?,
            keys.clone(),
            queued,
        )?;
        Ok(Self {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                writer,
                keys,
                notices_queued,
                read_permits: Arc::new(Semaphore::new(READERS)),
                idle_readers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Brings the Logbook under the configured key, at start-up of a process
    /// that writes: refuses a keyed Logbook without its key or with another
    /// key, records the first switch to a key, and records a rotation (the
    /// Logbook's key among the previous keys, signing the switch to the new one).
    pub async fn adopt_logbook_key(&self, now: Timestamp) -> Result<KeyAdoption, StoreError> {
        self.write(move |conn| adopt_key(conn, now)).await
    }

    /// Finishes the writes already queued and closes every connection.
    pub async fn close(&self) {
        self.shared.read_permits.close();
        self.shared.writer.close().await;
        self.shared
            .idle_readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Runs `read` on an idle read connection, on the blocking pool so that a
    /// long read never holds up the async tasks.
    async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = self.shared.clone();
        let permit = shared
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Other("the store is closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let result = shared.with_reader(read);
            drop(permit);
            result
        })
        .await
        .map_err(|e| StoreError::Other(format!("a read failed: {e}")))?
    }

    /// Runs a point read (a row or a few, found by an index) on the calling
    /// task. It takes tens of microseconds and, in WAL mode, never waits for
    /// the writer, so sending it to the blocking pool and back would cost
    /// more than the read: two thread hand-offs on every API call and
    /// acknowledgement. Scans and anything that may take long use
    /// [`Self::read`].
    pub(crate) async fn look_up<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError>,
    {
        let _permit = self
            .shared
            .read_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Other("the store is closed".into()))?;
        self.shared.with_reader(read)
    }

    /// Keeps `key` until `until` (`seen_keys`): true the first time, and
    /// when it was kept only until before `expired_before`; false otherwise.
    async fn remember_key(
        &self,
        key: &str,
        until: Timestamp,
        expired_before: Timestamp,
    ) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.write(move |conn| remember_key(conn, &key, until, expired_before))
            .await
    }

    /// Runs `write` through the one writer (see [`group_commit`]) and
    /// answers once it is committed.
    pub(crate) async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteConn) -> Result<T, StoreError> + Send + 'static,
    {
        self.shared.writer.run(write).await
    }

    /// Like [`Self::write`], but answers only once the commit is synced to
    /// disk, whatever the store's [`Durability`]: for records that must
    /// survive a power cut (the AWS provisioner's command ids).
    pub(crate) async fn write_synced<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteConn) -> Result<T, StoreError> + Send + 'static,
    {
        self.shared.writer.run_synced(write).await
    }
}

// ---------------------------------------------------------------------------
// Writing, on the writer thread, inside a savepoint of the group's transaction

/// Keeps `key` until `until` (`seen_keys`), in the caller's transaction:
/// true the first time, and when it was kept only until before
/// `expired_before`; false otherwise.
fn remember_key(
    conn: &Connection,
    key: &str,
    until: Timestamp,
    expired_before: Timestamp,
) -> Result<bool, StoreError> {
    let changed = conn
        .prepare_cached(
            "INSERT INTO seen_keys (key, expires_at) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at \
             WHERE seen_keys.expires_at < ?3",
        )?
        .execute(params![key, until.as_millis(), expired_before.as_millis()])?;
    Ok(changed == 1)
}

/// Keeps the replay key of the signed chat request behind `fx`, if any; one
/// seen before fails the change with [`StoreError::Replayed`], so that its job
/// rolls back to its savepoint and nothing of it is written.
fn keep_signed(conn: &Connection, fx: &Effects) -> Result<(), StoreError> {
    let Some(signed) = &fx.signed else {
        return Ok(());
    };
    let never = Timestamp::from_millis(i64::MIN);
    if remember_key(conn, &signed.key, signed.until, never)? {
        Ok(())
    } else {
        Err(StoreError::Replayed)
    }
}

/// Begins writing the change `fx` of a request so that whatever can fail it
/// fails before anything is written (creations and updates run without a
/// savepoint, `Writer::run_checked`): a key switch among its events, a
/// Logbook keyed with a key this process lacks, then a replay of its signed
/// request, whose key is kept by this first write (a replay changes
/// nothing). Answers how its events are linked, for [`write_effects`].
fn begin_writing<'k>(conn: &'k WriteConn, fx: &Effects) -> Result<Option<Linking<'k>>, StoreError> {
    let linking = if fx.events.is_empty() {
        None
    } else {
        refuse_key_switches(&fx.events)?;
        Some(next_linking(last_key_switch(conn)?.as_ref(), &conn.keys)?)
    };
    keep_signed(conn, fx)?;
    Ok(linking)
}

/// What became of an update.
enum Updated {
    Changed(Box<(AccessRequest, Effects)>),
    Refused(Refusal),
    Missing,
}

fn create(
    conn: &WriteConn,
    requester: &str,
    pending_cap: u32,
    build: Creation,
) -> Result<Result<(AccessRequest, Effects), Refusal>, StoreError> {
    let next: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(id), 0) + 1 FROM requests")?
        .query_row([], |r| r.get(0))?;
    let id = to_id(next)?;
    let pending = count_pending(conn, requester, pending_cap)?;
    let (req, fx) = match build(Slot { id, pending }) {
        Ok(built) => built,
        Err(refusal) => return Ok(Err(refusal)),
    };
    if req.id != id || req.requester.id.as_str() != requester {
        return Err(StoreError::Other(format!(
            "request built as {} of {} instead of {id} of {requester}",
            req.id, req.requester.id
        )));
    }
    let linking = begin_writing(conn, &fx)?;
    let at = change_time(&fx, req.created_at);
    conn.prepare_cached(
        "INSERT INTO requests (id, state, requester, created_at, updated_at, expires_at, open_grants, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        id_of(req.id),
        req.state.as_str(),
        req.requester.id.as_str(),
        req.created_at.as_millis(),
        at.as_millis(),
        req.expires_at.map(Timestamp::as_millis),
        req.open_grants() as i64,
        encode_request(&req, &Unknown::default())?,
    ])?;
    write_effects(conn, id, &fx, at, linking)?;
    Ok(Ok((req, fx)))
}

/// How many requests of `requester` wait for approval, counted up to
/// `up_to` (0: not counted), on whichever connection (and so inside whichever
/// transaction) asks. Every creation asks, so neither the person's past
/// requests nor a pile of pending ones may make it slower: the count stops at
/// the cap, and the state is written out, not bound, so that SQLite can use
/// the partial index `requests_pending_by_requester`.
const COUNT_PENDING: &str = "SELECT COUNT(*) FROM \
     (SELECT 1 FROM requests WHERE requester = ?1 AND state = 'pending' LIMIT ?2)";

fn count_pending(conn: &Connection, requester: &str, up_to: u32) -> Result<u64, StoreError> {
    debug_assert_eq!(RequestState::Pending.as_str(), "pending");
    if up_to == 0 {
        return Ok(0);
    }
    let n: i64 = conn
        .prepare_cached(COUNT_PENDING)?
        .query_row(params![requester, up_to], |row| row.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn update(
    conn: &WriteConn,
    id: RequestId,
    fired: Option<TimerId>,
    change: Mutation,
) -> Result<Updated, StoreError> {
    let row: Option<(String, i64)> = conn
        .prepare_cached("SELECT body, updated_at FROM requests WHERE id = ?1")?
        .query_row([id_of(id)], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    // The fired timer goes whatever the change does: it has done its work by
    // asking. If it is gone already, it was fired before (by a pass that read
    // it at the same time as this one) or cancelled by a change since it was
    // read: either way this change is stale, and a timer acts at most once.
    // It is deleted only once nothing can fail the change any more (an
    // update runs without a savepoint, `Writer::run_checked`), so a change
    // that fails leaves its timer to fire again.
    if let Some(timer) = fired {
        if !timer_exists(conn, timer)? {
            return Ok(Updated::Refused(RefusalKind::AlreadyDone(format!(
                "{id}: this timer has already run or was cancelled"
            ))));
        }
    }
    let consume = |conn: &WriteConn| -> Result<(), StoreError> {
        if let Some(timer) = fired {
            delete_timer(conn, timer)?;
        }
        Ok(())
    };
    let Some((body, updated_at)) = row else {
        consume(conn)?;
        return Ok(Updated::Missing);
    };
    let (mut req, unknown) = decode_for_change(&body)?;
    let fx = match change(&mut req) {
        Ok(fx) => fx,
        Err(refusal) => {
            consume(conn)?;
            return Ok(Updated::Refused(refusal));
        }
    };
    let body = encode_request(&req, &unknown)?;
    let linking = begin_writing(conn, &fx)?;
    consume(conn)?;
    let at = change_time(&fx, Timestamp::from_millis(updated_at));
    conn.prepare_cached(
        "UPDATE requests SET state = ?1, updated_at = ?2, expires_at = ?3, open_grants = ?4, body = ?5 WHERE id = ?6",
    )?
    .execute(params![
        req.state.as_str(),
        at.as_millis(),
        req.expires_at.map(Timestamp::as_millis),
        req.open_grants() as i64,
        body,
        id_of(req.id),
    ])?;
    write_effects(conn, id, &fx, at, linking)?;
    Ok(Updated::Changed(Box::new((req, fx))))
}

/// When a change happened: its first event's time, else `fallback`.
fn change_time(fx: &Effects, fallback: Timestamp) -> Timestamp {
    fx.events.first().map(|e| e.at).unwrap_or(fallback)
}

/// Writes what the change `fx` of `request` left, after [`begin_writing`]
/// (with the `linking` it answered).
fn write_effects(
    conn: &WriteConn,
    request: RequestId,
    fx: &Effects,
    at: Timestamp,
    linking: Option<Linking<'_>>,
) -> Result<(), StoreError> {
    let rid = id_of(request);
    if let Some(linking) = linking {
        append_linked(conn, linking, &fx.events)?;
    }
    insert_outbox(conn, fx, at)?;
    if fx.cancel_all {
        conn.prepare_cached("DELETE FROM timers WHERE request = ?1")?
            .execute([rid])?;
    }
    if fx.cancel_expiry {
        conn.prepare_cached(
            "DELETE FROM timers WHERE request = ?1 AND (kind = 'expiry' OR kind LIKE 'warning:%')",
        )?
        .execute([rid])?;
    }
    if !fx.cancel.is_empty() {
        let mut cancel =
            conn.prepare_cached("DELETE FROM timers WHERE request = ?1 AND kind = ?2")?;
        for kind in &fx.cancel {
            cancel.execute(params![rid, kind.encode()])?;
        }
    }
    if !fx.timers.is_empty() {
        let mut insert = conn.prepare_cached(
            "INSERT INTO timers (request, kind, due_at, attempts) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for t in &fx.timers {
            insert.execute(params![
                rid,
                t.kind.encode(),
                t.due.as_millis(),
                i64::from(t.attempts)
            ])?;
        }
    }
    Ok(())
}

fn insert_outbox(conn: &WriteConn, fx: &Effects, at: Timestamp) -> Result<(), StoreError> {
    if fx.outbox.is_empty() {
        return Ok(());
    }
    conn.queues_notices();
    let mut insert = conn.prepare_cached(
        "INSERT INTO outbox (surface, lane, request, notice, created_at, next_attempt_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )?;
    for (surface, notice) in &fx.outbox {
        let text = serde_json::to_string(notice).map_err(corrupt)?;
        insert.execute(params![
            surface,
            notice.lane(),
            notice.request().map(id_of),
            text,
            at.as_millis()
        ])?;
    }
    Ok(())
}

/// The Logbook's last event: its sequence number and hash.
fn logbook_head(conn: &Connection) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT seq, hash FROM logbook ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// The Logbook's last switch to a key: its sequence number and the key it
/// names (`None` when it names none, which verification reports as a break).
fn last_key_switch(conn: &Connection) -> Result<Option<LastSwitch>, StoreError> {
    // The action is written out, not bound, so that SQLite uses the partial
    // index `logbook_key_switches` (migration 0012), which names it.
    debug_assert_eq!(KEY_SWITCH, "logbook_keyed");
    let row: Option<(i64, String)> = conn
        .prepare_cached(
            "SELECT seq, details FROM logbook WHERE action = 'logbook_keyed' ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.map(|(seq, details)| key_switch(seq, &details)))
}

/// The Logbook's head: its last sequence number and link.
fn head(conn: &Connection) -> Result<(u64, Hash), StoreError> {
    Ok(match logbook_head(conn)? {
        Some((seq, hash)) => (
            seq as u64,
            Hash::try_from(hash.as_slice())
                .map_err(|_| StoreError::Corrupt(format!("Logbook event {seq} has a bad hash")))?,
        ),
        None => (0, GENESIS),
    })
}

/// Inserts one event as `seq`, linked after `prev`; returns its link.
fn insert_event(
    conn: &Connection,
    linking: Linking<'_>,
    prev: &Hash,
    seq: u64,
    e: &NewEvent,
) -> Result<Hash, StoreError> {
    let details = e.details.to_string();
    let link = chain_link(
        linking,
        prev,
        seq,
        e.at,
        &e.actor,
        e.request.as_deref(),
        &e.action,
        &details,
    );
    conn.prepare_cached(
        "INSERT INTO logbook (seq, at, actor, request, action, details, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        seq as i64,
        e.at.as_millis(),
        e.actor,
        e.request,
        e.action,
        details,
        &link[..]
    ])?;
    Ok(link)
}

/// Records the switch to the configured key when the Logbook is not keyed
/// with it yet (see [`SqliteStore::adopt_logbook_key`]).
fn adopt_key(conn: &WriteConn, now: Timestamp) -> Result<KeyAdoption, StoreError> {
    let last = last_key_switch(conn)?;
    match adoption(last.as_ref(), &conn.keys, now)? {
        Adoption::Settled(adopted) => Ok(adopted),
        Adoption::Switch(switch) => {
            let (seq, prev) = head(conn)?;
            insert_event(conn, switch.linking, &prev, seq + 1, &switch.event)?;
            metrics::counter!("passport_logbook_events_total", "action" => KEY_SWITCH).increment(1);
            Ok(switch.done(seq + 1))
        }
    }
}

/// Chains `events` after the Logbook's head, linked as its last key switch
/// says. Returns the last sequence number.
fn append_events(conn: &WriteConn, events: &[NewEvent]) -> Result<u64, StoreError> {
    refuse_key_switches(events)?;
    let linking = next_linking(last_key_switch(conn)?.as_ref(), &conn.keys)?;
    append_linked(conn, linking, events)
}

/// Chains `events`, checked already, after the Logbook's head with
/// `linking`. Returns the last sequence number.
fn append_linked(
    conn: &WriteConn,
    linking: Linking<'_>,
    events: &[NewEvent],
) -> Result<u64, StoreError> {
    let (mut seq, mut prev) = head(conn)?;
    for e in events {
        seq += 1;
        // Every state change has its Logbook event, so counting events by
        // action counts requests, approvals, grants and removals by outcome.
        // (A group commit that fails after this is retried, and may count twice.)
        metrics::counter!("passport_logbook_events_total", "action" => e.action.clone())
            .increment(1);
        prev = insert_event(conn, linking, &prev, seq, e)?;
    }
    Ok(seq)
}

/// Whether timer `id` is still there.
fn timer_exists(conn: &Connection, id: TimerId) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM timers WHERE id = ?1")?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Deletes a timer; false if there was none.
fn delete_timer(conn: &Connection, id: TimerId) -> Result<bool, StoreError> {
    let deleted = conn
        .prepare_cached("DELETE FROM timers WHERE id = ?1")?
        .execute([id])?;
    Ok(deleted > 0)
}

// ---------------------------------------------------------------------------
// Reading

fn requests(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<AccessRequest>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.extend(listed_request(
            row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?,
        ));
    }
    Ok(out)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(
        &self,
        requester: &UserId,
        pending_cap: u32,
        build: Creation,
    ) -> Result<Result<(AccessRequest, Effects), Refusal>, StoreError> {
        let requester = requester.as_str().to_owned();
        // The hot path of every acknowledgement: it checks before its first
        // write, so it needs no savepoint of its own.
        self.shared
            .writer
            .run_checked(move |conn| create(conn, &requester, pending_cap, build))
            .await
    }

    async fn update(
        &self,
        id: RequestId,
        fired: Option<TimerId>,
        change: Mutation,
    ) -> Result<Result<(AccessRequest, Effects), Refusal>, StoreError> {
        // Checks before writing, like a creation: no savepoint of its own.
        match self
            .shared
            .writer
            .run_checked(move |conn| update(conn, id, fired, change))
            .await?
        {
            Updated::Changed(changed) => Ok(Ok(*changed)),
            Updated::Refused(refusal) => Ok(Err(refusal)),
            Updated::Missing => Err(StoreError::NotFound(id)),
        }
    }

    async fn get(&self, id: RequestId) -> Result<Option<AccessRequest>, StoreError> {
        self.look_up(move |conn| {
            let body: Option<String> = conn
                .prepare_cached("SELECT body FROM requests WHERE id = ?1")?
                .query_row([id_of(id)], |r| r.get(0))
                .optional()?;
            body.map(|b| decode_request(&b)).transpose()
        })
        .await
    }

    async fn pending_count(&self, requester: &UserId, up_to: u32) -> Result<u64, StoreError> {
        let requester = requester.as_str().to_owned();
        self.look_up(move |conn| count_pending(conn, &requester, up_to))
            .await
    }

    async fn list(
        &self,
        filter: ListFilter,
        user: &UserId,
        limit: u32,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        let user = user.as_str().to_owned();
        let limit = i64::from(limit);
        self.read(move |conn| match filter {
            ListFilter::Default => requests(
                conn,
                "SELECT body FROM requests WHERE requester = ?1 OR state IN ('pending', 'approved', 'provisioning', 'active') \
                 ORDER BY id DESC LIMIT ?2",
                params![user, limit],
            ),
            ListFilter::Mine => requests(
                conn,
                "SELECT body FROM requests WHERE requester = ?1 ORDER BY id DESC LIMIT ?2",
                params![user, limit],
            ),
            ListFilter::Pending => requests(
                conn,
                "SELECT body FROM requests WHERE state = ?1 ORDER BY id DESC LIMIT ?2",
                params![RequestState::Pending.as_str(), limit],
            ),
            ListFilter::Active => requests(
                conn,
                "SELECT body FROM requests WHERE state IN (?1, ?2, ?3) ORDER BY id DESC LIMIT ?4",
                params![
                    RequestState::Approved.as_str(),
                    RequestState::Provisioning.as_str(),
                    RequestState::Active.as_str(),
                    limit
                ],
            ),
        })
        .await
    }

    async fn due_timers(&self, now: Timestamp, limit: u32) -> Result<Vec<Timer>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(concat!(
                "SELECT id, request, kind, due_at, attempts FROM timers WHERE due_at <= ?1 AND ",
                known_timer_kinds!(),
                " ORDER BY due_at, id LIMIT ?2"
            ))?;
            let mut rows = stmt.query(params![now.as_millis(), i64::from(limit)])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.extend(due_timer(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn reschedule_timer(&self, id: TimerId, due: Timestamp) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE timers SET due_at = ?1, attempts = attempts + 1 WHERE id = ?2",
            )?
            .execute(params![due.as_millis(), id])?;
            Ok(())
        })
        .await
    }

    async fn delete_timer(&self, id: TimerId) -> Result<(), StoreError> {
        self.write(move |conn| delete_timer(conn, id).map(drop))
            .await
    }

    async fn pending_notices(&self, limit: u32, per_lane: u32) -> Result<Vec<Pending>, StoreError> {
        self.read(move |conn| {
            // A walk of the undelivered notices in id order (the partial
            // index), keeping at most `per_lane` of each lane, that stops at
            // `limit` kept: its cost is what it reads, not the backlog, which
            // ranking every undelivered notice by lane at each read made the
            // delivery's bottleneck once the backlog grew. A long lane is
            // read past, not waited behind, up to PENDING_SCAN notices.
            let mut stmt = conn.prepare_cached(
                "SELECT id, surface, lane, notice, attempts, next_attempt_at, refusals FROM outbox \
                 WHERE delivered_at IS NULL AND dead_at IS NULL ORDER BY id",
            )?;
            let mut rows = stmt.query([])?;
            // A notice this release cannot read stops its lane there and
            // takes no room: the lanes after it are read as if it were not.
            let mut taken: HashMap<(String, String), Option<u32>> = HashMap::new();
            let mut out = Vec::new();
            let (mut read, mut kept) = (0usize, 0usize);
            while let Some(row) = rows.next()? {
                read += 1;
                if kept >= limit as usize || read > PENDING_SCAN {
                    break;
                }
                let lane = taken.entry((row.get(1)?, row.get(2)?)).or_insert(Some(0));
                let Some(n) = lane.as_mut().filter(|n| **n < per_lane) else {
                    continue;
                };
                let notice = pending_notice(row)?;
                if notice.is_ok() {
                    *n += 1;
                    kept += 1;
                } else {
                    *lane = None;
                }
                out.push(notice);
            }
            Ok(readable(out))
        })
        .await
    }

    async fn lane_notices(
        &self,
        surface: &str,
        lane: &str,
        limit: u32,
    ) -> Result<Vec<Pending>, StoreError> {
        let (surface, lane) = (surface.to_owned(), lane.to_owned());
        self.read(move |conn| {
            // `outbox_lane`: the lane's own next notices, whatever the
            // backlog of the others.
            let mut stmt = conn.prepare_cached(
                "SELECT id, surface, lane, notice, attempts, next_attempt_at, refusals FROM outbox \
                 WHERE surface = ?1 AND lane = ?2 AND delivered_at IS NULL AND dead_at IS NULL \
                 ORDER BY id LIMIT ?3",
            )?;
            let mut rows = stmt.query(params![surface, lane, limit])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(pending_notice(row)?);
            }
            Ok(readable(out))
        })
        .await
    }

    fn notices_queued(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.notices_queued.clone()
    }

    async fn mark_delivered(&self, ids: &[i64], now: Timestamp) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.to_vec();
        self.write(move |conn| {
            let mut update = conn.prepare_cached(
                "UPDATE outbox SET delivered_at = ?1, attempts = attempts + 1, last_error = NULL WHERE id = ?2",
            )?;
            for id in ids {
                update.execute(params![now.as_millis(), id])?;
            }
            Ok(())
        })
        .await
    }

    async fn mark_retry(
        &self,
        id: i64,
        next_attempt_at: Timestamp,
        error: &str,
        miss: Miss,
    ) -> Result<(), StoreError> {
        let error = error.to_owned();
        let (attempts, refusals) = miss.counts();
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE outbox SET next_attempt_at = ?1, attempts = attempts + ?4, \
                 refusals = refusals + ?5, last_error = ?2 WHERE id = ?3",
            )?
            .execute(params![
                next_attempt_at.as_millis(),
                error,
                id,
                attempts,
                refusals
            ])?;
            Ok(())
        })
        .await
    }

    async fn mark_dead(&self, id: i64, now: Timestamp, error: &str) -> Result<(), StoreError> {
        let error = error.to_owned();
        // The last refusal counts as every refusal does.
        let (attempts, refusals) = Miss::Refused.counts();
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE outbox SET dead_at = ?1, attempts = attempts + ?4, refusals = refusals + ?5, \
                 last_error = ?2 WHERE id = ?3",
            )?
            .execute(params![now.as_millis(), error, id, attempts, refusals])?;
            Ok(())
        })
        .await
    }

    async fn set_aside(&self, limit: u32) -> Result<Vec<SetAside>, StoreError> {
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT id, surface, lane, request, created_at, dead_at, attempts, COALESCE(last_error, ''), \
                     refusals FROM outbox WHERE dead_at IS NOT NULL AND delivered_at IS NULL ORDER BY id LIMIT ?1",
                )?
                .query_map([i64::from(limit)], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, String>(7)?,
                        r.get::<_, i64>(8)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(id, surface, lane, request, created, dead, attempts, last_error, refusals)| {
                    Ok(SetAside {
                        id,
                        surface,
                        lane,
                        request: request.map(to_id).transpose()?,
                        created_at: Timestamp::from_millis(created),
                        set_aside_at: Timestamp::from_millis(dead),
                        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                        refusals: u32::try_from(refusals).unwrap_or(u32::MAX),
                        last_error,
                    })
                })
                .collect()
        })
        .await
    }

    async fn revive(&self, ids: Option<Vec<i64>>, now: Timestamp) -> Result<u64, StoreError> {
        self.write(move |conn| {
            let at = now.as_millis();
            let n = match ids {
                None => conn
                    .prepare_cached(
                        "UPDATE outbox SET dead_at = NULL, attempts = 0, refusals = 0, next_attempt_at = ?1 \
                         WHERE dead_at IS NOT NULL AND delivered_at IS NULL",
                    )?
                    .execute([at])?,
                Some(ids) => {
                    let mut one = conn.prepare_cached(
                        "UPDATE outbox SET dead_at = NULL, attempts = 0, refusals = 0, next_attempt_at = ?1 \
                         WHERE id = ?2 AND dead_at IS NOT NULL AND delivered_at IS NULL",
                    )?;
                    let mut n = 0;
                    for id in ids {
                        n += one.execute(params![at, id])?;
                    }
                    n
                }
            };
            Ok(n as u64)
        })
        .await
    }

    async fn prune_delivered(&self, before: Timestamp, limit: u64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
                     WHERE delivered_at IS NOT NULL AND delivered_at < ?1 LIMIT ?2)",
                )?
                .execute(params![
                    before.as_millis(),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ])?;
            Ok(n as u64)
        })
        .await
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        self.read(|conn| {
            let (pending, delivered, dead): (i64, i64, i64) = conn
                .prepare_cached(
                    "SELECT COALESCE(SUM(delivered_at IS NULL AND dead_at IS NULL), 0), \
                            COALESCE(SUM(delivered_at IS NOT NULL), 0), COALESCE(SUM(dead_at IS NOT NULL), 0) FROM outbox",
                )?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(OutboxCounts {
                pending: pending as u64,
                delivered: delivered as u64,
                dead: dead as u64,
            })
        })
        .await
    }

    async fn gauges(&self, now: Timestamp) -> Result<Gauges, StoreError> {
        let late = now.minus(REMOVAL_GRACE).as_millis();
        self.read(move |conn| {
            let requests = conn
                .prepare_cached("SELECT state, COUNT(*) FROM requests GROUP BY state")?
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .map(|row| row.map(|(state, n)| (state, n.max(0) as u64)))
                .collect::<Result<Vec<_>, _>>()?;
            // Past their expiry, or ended (updated_at is when) long enough ago,
            // and still holding a grant.
            let removals_overdue: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM requests WHERE open_grants > 0 \
                     AND ((expires_at IS NOT NULL AND expires_at < ?1) \
                          OR (state IN ('completed', 'expired', 'revoked', 'cancelled', 'denied', 'approval_timed_out', 'failed') AND updated_at < ?1))",
                )?
                .query_row([late], |r| r.get(0))?;
            let (outbox_pending, oldest): (i64, Option<i64>) = conn
                .prepare_cached(
                    "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL",
                )?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let outbox_set_aside: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM outbox WHERE dead_at IS NOT NULL AND delivered_at IS NULL",
                )?
                .query_row([], |r| r.get(0))?;
            let timers_overdue: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM timers WHERE due_at < ?1")?
                .query_row([late], |r| r.get(0))?;
            Ok(Gauges {
                requests,
                removals_overdue: removals_overdue.max(0) as u64,
                outbox_pending: outbox_pending.max(0) as u64,
                outbox_oldest_seconds: oldest
                    .map(|at| ((now.as_millis() - at).max(0) as f64) / 1000.0)
                    .unwrap_or(0.0),
                outbox_set_aside: outbox_set_aside.max(0) as u64,
                timers_overdue: timers_overdue.max(0) as u64,
            })
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A reader connection that answers a query touching no table: the
        // cost does not grow with the outbox or anything else.
        self.read(|conn| {
            conn.prepare_cached("SELECT 1")?
                .query_row([], |r| r.get::<_, i64>(0))?;
            Ok(())
        })
        .await
    }

    async fn close(&self) {
        SqliteStore::close(self).await;
    }

    async fn ping_writer(&self) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.prepare_cached("SELECT 1")?
                .query_row([], |r| r.get::<_, i64>(0))?;
            Ok(())
        })
        .await
    }

    async fn chat_ref(
        &self,
        request: RequestId,
        surface: &str,
    ) -> Result<Option<MessageRef>, StoreError> {
        let surface = surface.to_owned();
        self.look_up(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT channel, message FROM chat_refs WHERE request = ?1 AND surface = ?2",
                )?
                .query_row(params![id_of(request), surface], |r| {
                    Ok(MessageRef {
                        channel: r.get(0)?,
                        message: r.get(1)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn save_chat_ref(
        &self,
        request: RequestId,
        surface: &str,
        at: &MessageRef,
    ) -> Result<(), StoreError> {
        let (surface, at) = (surface.to_owned(), at.clone());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO chat_refs (request, surface, channel, message) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![id_of(request), surface, at.channel, at.message])?;
            Ok(())
        })
        .await
    }

    async fn audit_events(
        &self,
        request: Option<RequestId>,
        since: Option<Timestamp>,
    ) -> Result<Vec<LogEvent>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&audit_query(request.is_some(), since.is_some()))?;
            let mut rows = stmt.query(params![
                request.map(|r| r.to_string()),
                since.map(Timestamp::as_millis)
            ])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(log_event(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn verify_logbook(&self) -> Result<Verification, StoreError> {
        // Verification opens connections of its own, one per core (see
        // `verify`), rather than holding pooled ones for as long as it takes.
        let path = self.shared.path.clone();
        let keys = self.shared.keys.clone();
        tokio::task::spawn_blocking(move || verify::verify(|| connect_reader(&path), &keys))
            .await
            .map_err(|e| StoreError::Other(format!("verification failed: {e}")))?
    }

    async fn record(&self, fx: Effects, now: Timestamp) -> Result<(), StoreError> {
        self.write(move |conn| housekeeping::record(conn, &fx, now))
            .await
    }

    async fn login_start(
        &self,
        login: &LoginAttempt,
        code: &SecretHash,
        secret: &SecretHash,
        fx: Effects,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let (login, code, secret) = (login.clone(), code.clone(), secret.clone());
        self.write(move |conn| signin::start(conn, &login, &code, &secret, &fx, now))
            .await
    }

    async fn login_by_code(&self, code: &SecretHash) -> Result<Option<LoginAttempt>, StoreError> {
        let code = code.clone();
        self.look_up(move |conn| signin::by_code(conn, &code)).await
    }

    async fn login_by_id(
        &self,
        id: &LoginId,
    ) -> Result<Option<(LoginAttempt, SecretHash)>, StoreError> {
        let id = id.clone();
        self.look_up(move |conn| signin::by_id(conn, &id)).await
    }

    async fn login_save(
        &self,
        login: &LoginAttempt,
        was: LoginState,
        fx: Effects,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let login = login.clone();
        self.write(move |conn| signin::save(conn, &login, was, &fx, now))
            .await
    }

    async fn login_collect(
        &self,
        issued: &IssuedToken,
        record: Recording,
        now: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        let issued = issued.clone();
        self.write(move |conn| signin::collect(conn, &issued, record, now))
            .await
    }

    async fn token(&self, hash: &SecretHash) -> Result<Option<TokenRecord>, StoreError> {
        let hash = hash.clone();
        self.look_up(move |conn| signin::token(conn, &hash)).await
    }

    async fn token_refused(&self, id: i64, fx: Effects, now: Timestamp) -> Result<(), StoreError> {
        self.write(move |conn| signin::refused(conn, id, &fx, now))
            .await
    }

    async fn revoke_tokens(
        &self,
        scope: &LogoutScope,
        record: Recording,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let scope = scope.clone();
        self.write(move |conn| signin::revoke(conn, &scope, record, now))
            .await
    }

    async fn save_password_message(&self, message: &PasswordMessage) -> Result<(), StoreError> {
        let message = message.clone();
        self.write(move |conn| password_messages::save(conn, &message))
            .await
    }

    async fn due_password_messages(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<PendingDeletion>, StoreError> {
        self.read(move |conn| password_messages::due(conn, now, limit))
            .await
    }

    async fn retry_password_message(&self, id: i64, due: Timestamp) -> Result<(), StoreError> {
        self.write(move |conn| password_messages::retry(conn, id, due))
            .await
    }

    async fn password_message_deleted(
        &self,
        id: i64,
        fx: Effects,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.write(move |conn| password_messages::deleted(conn, id, &fx, now))
            .await
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
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "DELETE FROM seen_keys WHERE key IN (SELECT key FROM seen_keys \
                     WHERE expires_at < ?1 LIMIT ?2)",
                )?
                .execute(params![
                    now.as_millis(),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ])?;
            Ok(n as u64)
        })
        .await
    }

    async fn ssh_key(&self, user: &UserId) -> Result<Option<SshPublicKey>, StoreError> {
        let user = user.clone();
        self.look_up(move |conn| housekeeping::ssh_key(conn, &user))
            .await
    }

    async fn set_ssh_key(
        &self,
        user: &UserId,
        key: Option<&SshPublicKey>,
        fx: Effects,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let (user, key) = (user.clone(), key.cloned());
        self.write(move |conn| housekeeping::set_ssh_key(conn, &user, key.as_ref(), &fx, now))
            .await
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Span,
    ) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |conn| housekeeping::claim_lease(conn, &name, &holder, None, now, ttl))
            .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |conn| housekeeping::release_lease(conn, &name, &holder))
            .await
    }

    async fn lease_holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_owned();
        self.look_up(move |conn| housekeeping::lease_holder(conn, &name))
            .await
    }

    async fn take_over_lease(
        &self,
        name: &str,
        stale: &str,
        holder: &str,
        now: Timestamp,
        ttl: Span,
    ) -> Result<bool, StoreError> {
        let (name, stale, holder) = (name.to_owned(), stale.to_owned(), holder.to_owned());
        self.write(move |conn| {
            housekeeping::claim_lease(conn, &name, &holder, Some(&stale), now, ttl)
        })
        .await
    }

    async fn job_next_run(
        &self,
        name: &str,
        schedule: &str,
    ) -> Result<Option<Timestamp>, StoreError> {
        let (name, schedule) = (name.to_owned(), schedule.to_owned());
        self.look_up(move |conn| housekeeping::job_next_run(conn, &name, &schedule))
            .await
    }

    async fn set_job_next_run(
        &self,
        name: &str,
        schedule: &str,
        next: Timestamp,
    ) -> Result<(), StoreError> {
        let (name, schedule) = (name.to_owned(), schedule.to_owned());
        self.write(move |conn| housekeeping::set_job_next_run(conn, &name, &schedule, next))
            .await
    }

    async fn requests_in(
        &self,
        states: &[RequestState],
        filter: RequestFilter,
        limit: u32,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        let states = states.to_vec();
        self.read(move |conn| housekeeping::requests_in(conn, &states, filter, limit))
            .await
    }

    async fn ended_unverified(
        &self,
        since: Timestamp,
        limit: u32,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        self.read(move |conn| housekeeping::ended_unverified(conn, since, limit))
            .await
    }

    async fn has_timer(&self, request: RequestId, kind: TimerKind) -> Result<bool, StoreError> {
        self.look_up(move |conn| housekeeping::has_timer(conn, request, kind))
            .await
    }

    async fn logbook_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.look_up(housekeeping::logbook_head).await
    }

    async fn logbook_hash_at(&self, seq: u64) -> Result<Option<String>, StoreError> {
        self.look_up(move |conn| housekeeping::logbook_hash_at(conn, seq))
            .await
    }

    async fn request_for_message(
        &self,
        surface: &str,
        channel: Option<&str>,
        message: &str,
    ) -> Result<Option<RequestId>, StoreError> {
        let (surface, channel, message) = (
            surface.to_owned(),
            channel.map(str::to_owned),
            message.to_owned(),
        );
        self.look_up(move |conn| {
            housekeeping::request_for_message(conn, &surface, channel.as_deref(), &message)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("passport.db"), Durability::Normal)
            .await
            .unwrap();
        (dir, store)
    }

    /// The steps of SQLite's plan for `sql` (with two parameters), one a line.
    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let steps = stmt
            // The values do not change the plan; each query takes two.
            .query_map(params![rusqlite::types::Null, rusqlite::types::Null], |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        steps.join("\n")
    }

    #[tokio::test]
    async fn audit_export_since_searches_the_time_index() {
        let (dir, store) = store().await;
        store.close().await;
        let conn = Connection::open(dir.path().join("passport.db")).unwrap();
        let since = plan(&conn, &audit_query(false, true));
        assert!(since.contains("logbook_by_time (at>?)"), "{since}");
        assert!(!since.contains("SCAN logbook"), "{since}");
        let by_request = plan(&conn, &audit_query(true, true));
        assert!(by_request.contains("logbook_by_request"), "{by_request}");
        assert!(!by_request.contains("SCAN"), "{by_request}");
    }

    /// The per-person cap is counted at every creation: the count must go
    /// through the index of pending requests, not through every request the
    /// person ever made.
    #[tokio::test]
    async fn counting_pending_requests_reads_only_the_pending_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passport.db");
        let store = SqliteStore::open(&path, Durability::Normal).await.unwrap();
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {COUNT_PENDING}"))
            .unwrap()
            .query_map(params!["U1", 5], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("requests_pending_by_requester")),
            "{plan:?}"
        );
    }

    /// The count stops at the cap it is asked for, and only pending requests
    /// of that person count.
    #[tokio::test]
    async fn the_pending_count_stops_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passport.db");
        drop(SqliteStore::open(&path, Durability::Normal).await.unwrap());
        let conn = Connection::open(&path).unwrap();
        for (id, who, state) in [
            (1, "U1", "pending"),
            (2, "U1", "pending"),
            (3, "U1", "pending"),
            (4, "U1", "active"),
            (5, "U2", "pending"),
        ] {
            conn.execute(
                "INSERT INTO requests (id, state, requester, created_at, updated_at, body) \
                 VALUES (?1, ?2, ?3, 0, 0, '{}')",
                params![id, state, who],
            )
            .unwrap();
        }
        assert_eq!(count_pending(&conn, "U1", 10).unwrap(), 3);
        assert_eq!(count_pending(&conn, "U1", 2).unwrap(), 2);
        assert_eq!(count_pending(&conn, "U1", 0).unwrap(), 0);
        assert_eq!(count_pending(&conn, "U2", 10).unwrap(), 1);
    }
}
