//! Group commit on PostgreSQL: the changes of requests (creations, updates,
//! and events of no request) that wait at the same time commit in one
//! transaction.
//!
//! Every such change appends to the Logbook, whose one chain admits one
//! writer at a time, and that writer holds the Logbook's lock through its
//! commit's flush to disk. One change per transaction therefore meant one
//! flush and a dozen round trips per change, one after the other across all
//! processes. Here the store's writer takes every change waiting (up to
//! [`MAX_GROUP`]) into one transaction. Its first round trip begins it,
//! takes the creation lock and the Logbook's, and reads the Logbook's head,
//! the next request number, the pending counts and the rows the changes
//! update ([`Group::begin_and_read`]). The changes then run in memory one
//! after another (each sees what those before it left, as with one
//! transaction each); their replay keys and everything they left, with
//! their events linked in memory, are written in a second ([`writes_of`],
//! [`Writes`]); the commit is the third, and only then are the callers
//! answered. Every round trip here is spent under the Logbook's lock, which
//! the groups of every process wait for.
//!
//! A replay key kept before fails the second round trip's statement; the
//! group then goes back to a savepoint set in the first, learns which keys
//! were replays, and writes the rest without them: two round trips more, for
//! a group that holds a replay only.
//!
//! Taking both locks first keeps the order of locks the same everywhere: a
//! group waits for row locks only while it holds the Logbook's, and every
//! other writer of those rows either belongs to a group or never waits for
//! the Logbook's lock while holding them. Groups of several processes run
//! one at a time.
//!
//! A change that fails before it is written (a refusal, a replayed signed
//! request, a corrupt row, a Logbook key this process does not hold) is
//! answered alone and the group goes on; a later change that ran on what a
//! replayed one left is asked to try again. A failure of the database
//! aborts the whole transaction: every change of the group is answered with
//! it and nothing of the group is written, as when a commit fails.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::TryStreamExt;
use sqlx::postgres::PgConnectOptions;
use sqlx::Either;
use sqlx::{Connection, PgConnection};
use tokio::sync::{mpsc, oneshot};

use std::collections::{HashMap, HashSet};

use sqlx::Row;

use super::logbook::{creation_and_logbook_locks, Appender, HEAD_COLUMNS, HEAD_FROM};
use super::statement::Writes;
use super::{bump, change_time, no_timers, OutboxRows, Updated};
use crate::adapters::store_metrics::{record_group_phase, record_group_size, StoreKind};
use crate::adapters::store_rows::{decode_for_change, encode_request, id_of, to_id, Unknown};
use crate::app::effects::{Effects, TimerId};
use crate::app::ports::{Creation, Mutation, Slot, StoreError};
use crate::domain::logbook::ChainKeys;
use crate::domain::request::{AccessRequest, Refusal, RefusalKind, RequestState};
use crate::domain::time::Timestamp;
use crate::domain::values::RequestId;

/// At most this many changes share a transaction, so that a burst is
/// answered in several commits rather than holding its first callers until
/// the last change ran.
const MAX_GROUP: usize = 64;
/// How long the writer waits for a new connection.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Changes waiting for a group, beyond which callers wait to queue.
const QUEUE: usize = 4096;

/// A change, as a caller hands it over.
pub(super) enum Work {
    Create {
        requester: String,
        pending_cap: u32,
        build: Creation,
    },
    Update {
        id: RequestId,
        fired: Option<TimerId>,
        change: Mutation,
    },
    Record {
        fx: Effects,
        at: Timestamp,
    },
}

/// What became of a change.
pub(super) enum Done {
    Created(Box<Result<(AccessRequest, Effects), Refusal>>),
    Updated(Updated),
    /// Whether notices were queued.
    Recorded(bool),
}

impl Done {
    fn queued_notices(&self) -> bool {
        match self {
            Done::Created(created) => created
                .as_ref()
                .as_ref()
                .is_ok_and(|(_, fx)| !fx.outbox.is_empty()),
            Done::Updated(Updated::Changed(changed)) => !changed.1.outbox.is_empty(),
            Done::Recorded(queued) => *queued,
            _ => false,
        }
    }
}

/// The answer for a change of another kind than asked: cannot happen.
pub(super) fn mixed_up() -> StoreError {
    StoreError::Other("the store answered a change with another's result".into())
}

struct Job {
    work: Work,
    answer: oneshot::Sender<Result<Done, StoreError>>,
}

/// Hands changes to the store's writer: a thread of its own with its own
/// connection. On the process's runtime, among hundreds of busy tasks, the
/// writer waited for its turn after every statement; every change waits for
/// the writer, so its statements alone run on a thread that does nothing else.
pub(super) struct Committer {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    stopped: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl Committer {
    /// Starts the writer, which connects with `connect` (again after a
    /// failure) and moves `queued` on after each commit that queued notices.
    pub(super) fn start(
        connect: PgConnectOptions,
        keys: ChainKeys,
        queued: Arc<Mutex<Option<tokio::sync::watch::Sender<u64>>>>,
    ) -> Result<Self, StoreError> {
        let (jobs, waiting) = mpsc::channel(QUEUE);
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Other(format!("cannot start the database writer: {e}")))?;
        std::thread::Builder::new()
            .name("passport-pg-writer".into())
            .spawn(move || {
                runtime.block_on(run(connect, keys, queued, waiting));
                let _ = stop.send(());
            })
            .map_err(|e| StoreError::Other(format!("cannot start the database writer: {e}")))?;
        Ok(Self {
            jobs: Mutex::new(Some(jobs)),
            stopped: tokio::sync::Mutex::new(Some(stopped)),
        })
    }

    /// Runs `work` in the next group, and answers once that group committed.
    pub(super) async fn run(&self, work: Work) -> Result<Done, StoreError> {
        let closed = || StoreError::Other("the store is closed".into());
        let jobs = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(closed)?;
        let (answer, answered) = oneshot::channel();
        jobs.send(Job { work, answer })
            .await
            .map_err(|_| closed())?;
        answered
            .await
            .map_err(|_| StoreError::Other("the store stopped before saving the change".into()))?
    }

    /// Answers the changes queued, then closes the writer's connection.
    pub(super) async fn close(&self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(stopped) = self.stopped.lock().await.take() {
            let _ = stopped.await;
        }
    }
}

async fn run(
    connect: PgConnectOptions,
    keys: ChainKeys,
    queued: Arc<Mutex<Option<tokio::sync::watch::Sender<u64>>>>,
    mut waiting: mpsc::Receiver<Job>,
) {
    let mut conn: Option<PgConnection> = None;
    let mut group = Vec::with_capacity(MAX_GROUP);
    while waiting.recv_many(&mut group, MAX_GROUP).await > 0 {
        // A caller that gave up (its request timed out) has been told the
        // change may not be saved; it is not made now.
        group.retain(|job: &Job| !job.answer.is_closed());
        if group.is_empty() {
            continue;
        }
        record_group_size(StoreKind::Postgres, group.len());
        let answers = match connected(&mut conn, &connect).await {
            Ok(c) => {
                let (answers, failed) = commit(c, &keys, std::mem::take(&mut group)).await;
                if failed {
                    // Whatever broke, the next group starts on a new connection.
                    conn = None;
                }
                answers
            }
            Err(e) => std::mem::take(&mut group)
                .into_iter()
                .map(|job| (job.answer, Err(e.clone())))
                .collect(),
        };
        if answers
            .iter()
            .any(|(_, done)| done.as_ref().is_ok_and(Done::queued_notices))
        {
            bump(&queued);
        }
        for (answer, done) in answers {
            let _ = answer.send(done);
        }
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}

/// The writer's connection, made when there is none.
async fn connected<'c>(
    conn: &'c mut Option<PgConnection>,
    connect: &PgConnectOptions,
) -> Result<&'c mut PgConnection, StoreError> {
    let c = match conn.take() {
        Some(c) => c,
        // As long as the pool waits for a connection: a database that does
        // not answer fails the group rather than holding every change.
        None => tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(connect))
            .await
            .map_err(|_| {
                StoreError::Other("cannot connect to PostgreSQL: no answer within 10 s".into())
            })??,
    };
    Ok(conn.insert(c))
}

type Answers = Vec<(
    oneshot::Sender<Result<Done, StoreError>>,
    Result<Done, StoreError>,
)>;

/// Runs `jobs` in one transaction and commits it; returns each job's
/// answer, and whether the group failed.
async fn commit(conn: &mut PgConnection, keys: &ChainKeys, jobs: Vec<Job>) -> (Answers, bool) {
    let (answers, works): (Vec<_>, Vec<_>) = jobs.into_iter().map(|j| (j.answer, j.work)).unzip();
    match run_group(conn, keys, works).await {
        Ok(dones) => (answers.into_iter().zip(dones).collect(), false),
        // Nothing of the group was written: every change gets the failure.
        Err(failed) => (
            answers
                .into_iter()
                .map(|answer| (answer, Err(failed.clone())))
                .collect(),
            true,
        ),
    }
}

/// What a statement of [`Group::begin_and_read`] reads.
enum Read {
    Nothing,
    Head,
    Pending,
    Requests,
    Timers,
}

/// Statements sent as one simple query, and what each of them reads, in
/// the order they run.
#[derive(Default)]
struct Batch {
    sql: String,
    reads: Vec<Read>,
}

impl Batch {
    fn add(&mut self, statement: &str, read: Read) {
        self.sql.push_str(statement);
        self.sql.push_str("; ");
        self.reads.push(read);
    }
}

/// The savepoint a group's writes start from: a replay key seen before
/// fails the statement that writes the keys, and the group goes on from here.
const REPLAY_SAVEPOINT: &str = "replay_keys";

/// `numbers` as a list for `IN (…)`.
fn numbers(numbers: &[i64]) -> String {
    numbers
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A request read for the group, as the group's changes leave it.
struct Loaded {
    req: Result<AccessRequest, StoreError>,
    /// `version` as read: the update is written only over it.
    version: i64,
    updated_at: Timestamp,
    /// The time of the last change run on it in this group, if any.
    changed_at: Option<Timestamp>,
    /// Its stored fields this release does not know, written back as read.
    unknown: Unknown,
}

/// A change that will be written, unless its signed request turns out to be
/// a replay.
struct Written {
    done: Done,
    /// The request it changes or creates.
    request: Option<RequestId>,
    created: bool,
    at: Timestamp,
    fired: Option<TimerId>,
    outbox: OutboxRows,
    /// The effects of a change of no request.
    record: Option<Effects>,
}

impl Written {
    fn effects(&self) -> Option<&Effects> {
        match &self.done {
            Done::Created(created) => created.as_ref().as_ref().ok().map(|(_, fx)| fx),
            Done::Updated(Updated::Changed(changed)) => Some(&changed.1),
            _ => None,
        }
    }
}

/// What a change came to before anything is written.
enum Outcome {
    /// Answered as it is; `fired` is the timer its answer consumed, if any.
    Answered(Result<Done, StoreError>, Option<TimerId>),
    Written(Box<Written>),
}

/// The group, in memory: the rows read, and the state the changes run so far
/// have left.
struct Group {
    loaded: HashMap<RequestId, Loaded>,
    /// Fired timers still there (locked), until a change consumes them.
    timers: HashSet<TimerId>,
    next_id: i64,
    /// Pending requests per requester, as the changes so far leave them
    /// (only for requesters whose creations count them).
    pending: HashMap<String, i64>,
}

impl Group {
    /// Begins the group's transaction and, in the same round trip, takes
    /// the creation lock and the Logbook's, reads the Logbook's head, the
    /// next request number, the pending counts and every row the changes
    /// need, locking the requests they change and the timers that fired
    /// them, and sets the savepoint a replayed key rolls back to
    /// ([`REPLAY_SAVEPOINT`]).
    ///
    /// Every statement after the locks reads what was committed when it
    /// started, so after the lock holder before. The statements go as one
    /// simple query, which takes no parameters: the numbers are written into
    /// it, and each requester as the hexadecimal of its bytes, which cannot
    /// end a literal whatever it holds.
    async fn begin_and_read<'k>(
        conn: &mut PgConnection,
        keys: &'k ChainKeys,
        works: &[Work],
    ) -> Result<(Appender<'k>, Self), StoreError> {
        let mut ids = Vec::new();
        let mut fired = Vec::new();
        let mut counted = Vec::new();
        for w in works {
            match w {
                Work::Update { id, fired: f, .. } => {
                    ids.push(id_of(*id));
                    fired.extend(*f);
                }
                Work::Create {
                    requester,
                    pending_cap,
                    ..
                } if *pending_cap > 0 => counted.push(requester.clone()),
                Work::Create { .. } | Work::Record { .. } => {}
            }
        }
        let mut batch = Batch::default();
        batch.add("BEGIN", Read::Nothing);
        // Hashes come back as text: in hexadecimal whatever the server's default.
        batch.add("SET LOCAL bytea_output = 'hex'", Read::Nothing);
        batch.add(&creation_and_logbook_locks(), Read::Nothing);
        batch.add(
            &format!(
                "SELECT {HEAD_COLUMNS}, (SELECT COALESCE(MAX(id), 0) + 1 FROM requests) {HEAD_FROM}"
            ),
            Read::Head,
        );
        if !counted.is_empty() {
            let requesters: Vec<String> = counted
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    format!(
                        "({i}, convert_from(decode('{}', 'hex'), 'UTF8'))",
                        hex::encode(r)
                    )
                })
                .collect();
            batch.add(
                &format!(
                    "SELECT (SELECT COUNT(*) FROM requests q \
                             WHERE q.requester = c.requester AND q.state = 'pending') \
                     FROM (VALUES {}) AS c (i, requester) ORDER BY c.i",
                    requesters.join(", ")
                ),
                Read::Pending,
            );
        }
        if !ids.is_empty() {
            // The rows stay locked to the commit. NO KEY: rows that only
            // refer to a request (a card's place, a password message) are
            // written meanwhile without waiting.
            batch.add(
                &format!(
                    "SELECT id, body, updated_at, version FROM requests \
                     WHERE id IN ({}) ORDER BY id FOR NO KEY UPDATE",
                    numbers(&ids)
                ),
                Read::Requests,
            );
        }
        if !fired.is_empty() {
            batch.add(
                &format!(
                    "SELECT id FROM timers WHERE id IN ({}) ORDER BY id FOR UPDATE",
                    numbers(&fired)
                ),
                Read::Timers,
            );
        }
        batch.add(&format!("SAVEPOINT {REPLAY_SAVEPOINT}"), Read::Nothing);
        let Batch { sql, reads } = batch;

        let mut log = None;
        let mut next_id = None;
        let mut counts = Vec::new();
        let mut loaded = HashMap::new();
        let mut timers = HashSet::new();
        let mut statement = 0;
        let mut results = sqlx::raw_sql(&sql).fetch_many(&mut *conn);
        while let Some(result) = results.try_next().await? {
            let row = match result {
                Either::Left(_) => {
                    statement += 1;
                    continue;
                }
                Either::Right(row) => row,
            };
            match reads.get(statement) {
                Some(Read::Head) => {
                    log = Some(Appender::after_row(&row, keys)?);
                    next_id = Some(row.try_get::<i64, _>(5)?);
                }
                Some(Read::Pending) => counts.push(row.try_get::<i64, _>(0)?),
                Some(Read::Requests) => {
                    let id = to_id(row.try_get(0)?)?;
                    let (req, unknown) = match decode_for_change(row.try_get(1)?) {
                        Ok((req, unknown)) => (Ok(req), unknown),
                        Err(e) => (Err(e), Unknown::default()),
                    };
                    loaded.insert(
                        id,
                        Loaded {
                            req,
                            updated_at: Timestamp::from_millis(row.try_get(2)?),
                            version: row.try_get(3)?,
                            changed_at: None,
                            unknown,
                        },
                    );
                }
                Some(Read::Timers) => {
                    timers.insert(row.try_get::<i64, _>(0)?);
                }
                Some(Read::Nothing) | None => {}
            }
        }
        drop(results);
        let unread = || StoreError::Other("PostgreSQL did not answer the group's reads".into());
        if statement != reads.len() || counts.len() != counted.len() {
            return Err(unread());
        }
        let (Some(log), Some(next_id)) = (log, next_id) else {
            return Err(unread());
        };
        let pending: HashMap<String, i64> = counted.into_iter().zip(counts).collect();
        let group = Self {
            loaded,
            timers,
            next_id,
            pending,
        };
        Ok((log, group))
    }

    /// Notes that a request of `requester` went from `before` to `after`.
    fn moved(&mut self, requester: &str, before: Option<RequestState>, after: RequestState) {
        if let Some(n) = self.pending.get_mut(requester) {
            *n += i64::from(after == RequestState::Pending)
                - i64::from(before == Some(RequestState::Pending));
        }
    }

    /// Runs a change in memory, in order: it sees the changes before it.
    fn run(&mut self, log: &Appender<'_>, work: Work) -> Outcome {
        match work {
            Work::Create {
                requester,
                pending_cap,
                build,
            } => self.create(log, &requester, pending_cap, build),
            Work::Update { id, fired, change } => self.update(log, id, fired, change),
            Work::Record { fx, at } => {
                if let Err(e) = no_timers(&fx) {
                    return Outcome::Answered(Err(e), None);
                }
                let outbox = match log.check(&fx.events).and_then(|()| OutboxRows::of(&fx, at)) {
                    Ok(rows) => rows,
                    Err(e) => return Outcome::Answered(Err(e), None),
                };
                let queued = !fx.outbox.is_empty();
                Outcome::Written(Box::new(Written {
                    done: Done::Recorded(queued),
                    request: None,
                    created: false,
                    at,
                    fired: None,
                    outbox,
                    record: Some(fx),
                }))
            }
        }
    }

    fn create(
        &mut self,
        log: &Appender<'_>,
        requester: &str,
        pending_cap: u32,
        build: Creation,
    ) -> Outcome {
        let answered = |e| Outcome::Answered(Err(e), None);
        let id = match to_id(self.next_id) {
            Ok(id) => id,
            Err(e) => return answered(e),
        };
        let counted = self.pending.get(requester).copied().unwrap_or(0);
        let pending = if pending_cap == 0 {
            0
        } else {
            u64::try_from(counted)
                .unwrap_or(0)
                .min(u64::from(pending_cap))
        };
        let (req, fx) = match build(Slot { id, pending }) {
            Ok(built) => built,
            Err(refusal) => {
                return Outcome::Answered(Ok(Done::Created(Box::new(Err(refusal)))), None)
            }
        };
        if req.id != id || req.requester.id.as_str() != requester {
            return answered(StoreError::Other(format!(
                "request built as {} of {} instead of {id} of {requester}",
                req.id, req.requester.id
            )));
        }
        let at = change_time(&fx, req.created_at);
        let outbox = match log.check(&fx.events).and_then(|()| OutboxRows::of(&fx, at)) {
            Ok(rows) => rows,
            Err(e) => return answered(e),
        };
        self.next_id += 1;
        self.moved(requester, None, req.state);
        Outcome::Written(Box::new(Written {
            done: Done::Created(Box::new(Ok((req, fx)))),
            request: Some(id),
            created: true,
            at,
            fired: None,
            outbox,
            record: None,
        }))
    }

    fn update(
        &mut self,
        log: &Appender<'_>,
        id: RequestId,
        fired: Option<TimerId>,
        change: Mutation,
    ) -> Outcome {
        let Some(loaded) = self.loaded.get(&id) else {
            let consumed = fired.filter(|t| self.timers.remove(t));
            return Outcome::Answered(Ok(Done::Updated(Updated::Missing)), consumed);
        };
        if let Some(timer) = fired {
            if !self.timers.contains(&timer) {
                // A timer acts at most once: gone means it ran or was cancelled.
                let stale = RefusalKind::AlreadyDone(format!(
                    "{id}: this timer has already run or was cancelled"
                ));
                return Outcome::Answered(Ok(Done::Updated(Updated::Refused(stale))), None);
            }
        }
        let mut req = match &loaded.req {
            Ok(req) => req.clone(),
            Err(e) => return Outcome::Answered(Err(e.clone()), None),
        };
        let before = req.state;
        let fx = match change(&mut req) {
            Ok(fx) => fx,
            Err(refusal) => {
                // A refusal consumes the timer that fired it.
                let consumed = fired.filter(|t| self.timers.remove(t));
                return Outcome::Answered(Ok(Done::Updated(Updated::Refused(refusal))), consumed);
            }
        };
        let at = change_time(&fx, loaded.changed_at.unwrap_or(loaded.updated_at));
        let outbox = match log.check(&fx.events).and_then(|()| OutboxRows::of(&fx, at)) {
            Ok(rows) => rows,
            Err(e) => return Outcome::Answered(Err(e), None),
        };
        if let Some(t) = fired {
            self.timers.remove(&t);
        }
        let requester = req.requester.id.as_str().to_owned();
        self.moved(&requester, Some(before), req.state);
        if let Some(loaded) = self.loaded.get_mut(&id) {
            loaded.req = Ok(req.clone());
            loaded.changed_at = Some(at);
        }
        Outcome::Written(Box::new(Written {
            done: Done::Updated(Updated::Changed(Box::new((req, fx)))),
            request: Some(id),
            created: false,
            at,
            fired,
            outbox,
            record: None,
        }))
    }
}

/// The timers kind `cancel_expiry` deletes.
fn expiry_like(kind: &str) -> bool {
    kind == "expiry" || kind.starts_with("warning:")
}

/// Runs a group's `phase` and records how long it took, and whether it
/// failed (`passport_store_group_seconds{phase, outcome}`): a phase that
/// times out or loses its connection is the one an operator looks for.
/// Taking the locks includes waiting for other processes' groups, so a
/// growing `lock_and_read` shows replicas waiting for one another under the
/// Logbook's lock; `writes` includes the two round trips more of a group
/// that holds a replay.
async fn timed<T>(
    phase: &'static str,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let since = Instant::now();
    let done = work.await;
    record_group_phase(StoreKind::Postgres, phase, since, done.is_ok());
    done
}

/// Runs the group: reads, runs every change in memory, keeps the replay keys,
/// and writes what the changes left in a few statements.
async fn run_group(
    conn: &mut PgConnection,
    keys: &ChainKeys,
    works: Vec<Work>,
) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
    // The transaction is this connection's alone: a failure drops the
    // connection (see `run`), which rolls it back.
    let (log, mut group) =
        timed("lock_and_read", Group::begin_and_read(conn, keys, &works)).await?;
    let mut outcomes: Vec<Outcome> = works.into_iter().map(|w| group.run(&log, w)).collect();

    // Replay keys: one seen earlier in this group fails its change at once.
    let mut signed = Vec::new();
    let mut seen = HashSet::new();
    let mut replayed = Vec::new();
    for (i, o) in outcomes.iter().enumerate() {
        if let Outcome::Written(w) = o {
            let fx = w.effects().or(w.record.as_ref());
            if let Some(key) = fx.and_then(|fx| fx.signed.as_ref()) {
                if seen.insert(key.key.clone()) {
                    signed.push((i, key.key.clone(), key.until.as_millis()));
                } else {
                    replayed.push(i);
                }
            }
        }
    }
    if !replayed.is_empty() {
        undo_replays(&mut outcomes, replayed);
        signed.retain(|(i, _, _)| matches!(outcomes[*i], Outcome::Written(_)));
    }
    // The keys are written with everything else, in one statement, which a
    // key kept before fails. Then, from the savepoint, the keys kept before
    // are found, their changes fail, and the rest is written without them.
    let fresh = log.clone();
    let (writes, updates) = writes_of(log, &group, &outcomes, &signed)?;
    let (updated, to_update) = timed("writes", async {
        Ok(match writes.run(conn).await {
            Err(e) if is_kept_key(&e) => {
                sqlx::raw_sql(&format!("ROLLBACK TO SAVEPOINT {REPLAY_SAVEPOINT}"))
                    .execute(&mut *conn)
                    .await?;
                let (keys, until) = key_columns(&signed);
                let kept: HashSet<String> = sqlx::query_scalar(
                    "INSERT INTO seen_keys (key, expires_at) \
                     SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
                     ON CONFLICT (key) DO NOTHING RETURNING key",
                )
                .bind(keys)
                .bind(until)
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .collect();
                let replayed: Vec<usize> = signed
                    .iter()
                    .filter(|(_, k, _)| !kept.contains(k))
                    .map(|(i, _, _)| *i)
                    .collect();
                if !replayed.is_empty() {
                    undo_replays(&mut outcomes, replayed);
                }
                let (writes, updates) = writes_of(fresh, &group, &outcomes, &[])?;
                (writes.run(conn).await?, updates)
            }
            done => (done?, updates),
        })
    })
    .await?;
    if updated != to_update {
        // Cannot happen while the rows are locked.
        return Err(StoreError::Busy);
    }
    timed("commit", async {
        sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
        Ok(())
    })
    .await?;
    Ok(outcomes
        .into_iter()
        .map(|o| match o {
            Outcome::Answered(done, _) => done,
            Outcome::Written(w) => Ok(w.done),
        })
        .collect())
}

/// The statement that writes what the changes left and keeps their replay
/// keys (`signed`: the change's place, the key, until when), and how many
/// requests it must update.
fn writes_of(
    mut log: Appender<'_>,
    group: &Group,
    outcomes: &[Outcome],
    signed: &[(usize, String, i64)],
) -> Result<(Writes, u64), StoreError> {
    let mut writes = Writes::default();
    if !signed.is_empty() {
        let (keys, until) = key_columns(signed);
        let keys = writes.bind(keys, "text[]")?;
        let until = writes.bind(until, "bigint[]")?;
        writes.push(format!(
            "INSERT INTO seen_keys (key, expires_at) SELECT * FROM UNNEST({keys}, {until})"
        ));
    }
    let updates = write(&mut writes, &mut log, group, outcomes)?;
    log.queue(&mut writes)?;
    Ok((writes, updates))
}

/// The replay keys of `signed` (the change's place, the key, until when)
/// and until when each is kept, as columns for `UNNEST`.
fn key_columns(signed: &[(usize, String, i64)]) -> (Vec<String>, Vec<i64>) {
    signed.iter().map(|(_, k, u)| (k.clone(), *u)).unzip()
}

/// Whether `e` is a replay key kept before, refused by `seen_keys`.
fn is_kept_key(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23505") && db.constraint() == Some("seen_keys_pkey"))
}

/// Fails the replayed changes, which write nothing, and the later changes
/// that ran on what they left (of the same request, and creations, which
/// counted pending requests): those are asked to try again.
fn undo_replays(outcomes: &mut [Outcome], mut replayed: Vec<usize>) {
    replayed.sort_unstable();
    let first = replayed[0];
    let mut touched = HashSet::new();
    for (i, o) in outcomes.iter_mut().enumerate().skip(first) {
        let Outcome::Written(w) = o else { continue };
        if replayed.binary_search(&i).is_ok() {
            touched.extend(w.request);
            *o = Outcome::Answered(Err(StoreError::Replayed), None);
        } else if w.created || w.request.is_some_and(|r| touched.contains(&r)) {
            touched.extend(w.request);
            *o = Outcome::Answered(Err(StoreError::Busy), None);
        }
    }
}

/// Adds to `writes` what the changes left: fired timers deleted, requests
/// inserted and updated, notices queued, timers cancelled and scheduled; and
/// links their events. Returns how many requests the update must write.
fn write(
    writes: &mut Writes,
    log: &mut Appender<'_>,
    group: &Group,
    outcomes: &[Outcome],
) -> Result<u64, StoreError> {
    let mut fired = Vec::new();
    let mut outbox = OutboxRows::default();
    let mut created: Vec<&AccessRequest> = Vec::new();
    let mut created_at = Vec::new();
    // Each request changed: as its last change left it, and how many changed it.
    let mut updated: HashMap<RequestId, (&AccessRequest, Timestamp, i64)> = HashMap::new();
    // Timers: deletions of the rows there before the group (by request,
    // what: "*all", "*expiry" or a kind), then the new rows, in order.
    let mut cancels: Vec<(i64, String)> = Vec::new();
    let mut scheduled: Vec<(i64, String, i64, i64)> = Vec::new();
    for o in outcomes {
        let w = match o {
            Outcome::Answered(_, consumed) => {
                fired.extend(*consumed);
                continue;
            }
            Outcome::Written(w) => {
                fired.extend(w.fired);
                outbox.extend(&w.outbox);
                if let Some(fx) = &w.record {
                    log.push(&fx.events)?;
                    continue;
                }
                w
            }
        };
        let (Some(request), Some(fx)) = (w.request, w.effects()) else {
            continue;
        };
        match &w.done {
            Done::Created(built) => {
                if let Ok((req, _)) = built.as_ref() {
                    created.push(req);
                    created_at.push(w.at);
                }
            }
            Done::Updated(Updated::Changed(changed)) => {
                let last = updated.entry(request).or_insert((&changed.0, w.at, 0));
                *last = (&changed.0, w.at, last.2 + 1);
            }
            _ => {}
        }
        let rid = id_of(request);
        let mut cancel = |what: &str, gone: &dyn Fn(&str) -> bool| {
            cancels.push((rid, what.to_owned()));
            scheduled.retain(|(r, kind, _, _)| *r != rid || !gone(kind));
        };
        if fx.cancel_all {
            cancel("*all", &|_| true);
        }
        if fx.cancel_expiry {
            cancel("*expiry", &expiry_like);
        }
        for kind in &fx.cancel {
            let kind = kind.encode();
            cancel(&kind, &|k| k == kind);
        }
        for t in &fx.timers {
            scheduled.push((
                rid,
                t.kind.encode(),
                t.due.as_millis(),
                i64::from(t.attempts),
            ));
        }
        log.push(&fx.events)?;
    }
    if !fired.is_empty() {
        let fired = writes.bind(fired, "bigint[]")?;
        writes.push(format!("DELETE FROM timers WHERE id = ANY({fired})"));
    }
    if !created.is_empty() {
        insert_requests(writes, &created, &created_at)?;
    }
    let updates = update_requests(writes, group, &updated)?;
    outbox.queue(writes)?;
    if !cancels.is_empty() {
        // Of the rows there before the statement: those `scheduled` are not.
        let (requests, whats): (Vec<i64>, Vec<String>) = cancels.into_iter().unzip();
        let requests = writes.bind(requests, "bigint[]")?;
        let whats = writes.bind(whats, "text[]")?;
        writes.push(format!(
            "DELETE FROM timers t USING UNNEST({requests}, {whats}) AS c (request, what) \
             WHERE t.request = c.request AND (c.what = '*all' OR t.kind = c.what \
                OR (c.what = '*expiry' AND (t.kind = 'expiry' OR t.kind LIKE 'warning:%')))"
        ));
    }
    if !scheduled.is_empty() {
        let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (r, k, d, a) in scheduled {
            columns.0.push(r);
            columns.1.push(k);
            columns.2.push(d);
            columns.3.push(a);
        }
        let from = [
            writes.bind(columns.0, "bigint[]")?,
            writes.bind(columns.1, "text[]")?,
            writes.bind(columns.2, "bigint[]")?,
            writes.bind(columns.3, "bigint[]")?,
        ]
        .join(", ");
        // WITH ORDINALITY keeps the given order, and so the order of the ids.
        writes.push(format!(
            "INSERT INTO timers (request, kind, due_at, attempts) \
             SELECT r, k, d, a FROM UNNEST({from}) WITH ORDINALITY AS t (r, k, d, a, n) ORDER BY n"
        ));
    }
    Ok(updates)
}

/// The columns of `requests` a change writes besides its body.
struct RequestRows {
    ids: Vec<i64>,
    states: Vec<&'static str>,
    requesters: Vec<String>,
    created: Vec<i64>,
    updated: Vec<i64>,
    expires: Vec<Option<i64>>,
    grants: Vec<i64>,
    bodies: Vec<String>,
}

impl RequestRows {
    /// The rows of `reqs`, each written with the stored fields this release
    /// does not know that were read with it.
    fn of<'r>(
        reqs: impl Iterator<Item = (&'r AccessRequest, Timestamp, &'r Unknown)>,
    ) -> Result<Self, StoreError> {
        let mut rows = RequestRows {
            ids: Vec::new(),
            states: Vec::new(),
            requesters: Vec::new(),
            created: Vec::new(),
            updated: Vec::new(),
            expires: Vec::new(),
            grants: Vec::new(),
            bodies: Vec::new(),
        };
        for (req, at, unknown) in reqs {
            rows.ids.push(id_of(req.id));
            rows.states.push(req.state.as_str());
            rows.requesters.push(req.requester.id.as_str().to_owned());
            rows.created.push(req.created_at.as_millis());
            rows.updated.push(at.as_millis());
            rows.expires.push(req.expires_at.map(Timestamp::as_millis));
            rows.grants.push(req.open_grants() as i64);
            rows.bodies.push(encode_request(req, unknown)?);
        }
        Ok(rows)
    }
}

fn insert_requests(
    writes: &mut Writes,
    created: &[&AccessRequest],
    at: &[Timestamp],
) -> Result<(), StoreError> {
    let none = Unknown::default();
    let rows = RequestRows::of(
        created
            .iter()
            .zip(at.iter())
            .map(|(req, at)| (*req, *at, &none)),
    )?;
    let from = [
        writes.bind(rows.ids, "bigint[]")?,
        writes.bind(rows.states, "text[]")?,
        writes.bind(rows.requesters, "text[]")?,
        writes.bind(rows.created, "bigint[]")?,
        writes.bind(rows.updated, "bigint[]")?,
        writes.bind(rows.expires, "bigint[]")?,
        writes.bind(rows.grants, "bigint[]")?,
        writes.bind(rows.bodies, "text[]")?,
    ]
    .join(", ");
    writes.push(format!(
        "INSERT INTO requests (id, state, requester, created_at, updated_at, expires_at, open_grants, body) \
         SELECT * FROM UNNEST({from})"
    ));
    Ok(())
}

/// Writes each request the group changed as its last change left it, over
/// the version read (never over a change the group did not see). Returns
/// how many rows it must write: the statement counts those it did.
fn update_requests(
    writes: &mut Writes,
    group: &Group,
    updated: &HashMap<RequestId, (&AccessRequest, Timestamp, i64)>,
) -> Result<u64, StoreError> {
    let changed: Vec<(&AccessRequest, Timestamp, &Loaded, i64)> = updated
        .iter()
        .filter_map(|(id, (req, at, changes))| {
            let read = group.loaded.get(id)?;
            Some((*req, *at, read, *changes))
        })
        .collect();
    if changed.is_empty() {
        return Ok(0);
    }
    let rows = RequestRows::of(
        changed
            .iter()
            .map(|(req, at, read, _)| (*req, *at, &read.unknown)),
    )?;
    let versions: Vec<i64> = changed.iter().map(|c| c.2.version).collect();
    let changes: Vec<i64> = changed.iter().map(|c| c.3).collect();
    let from = [
        writes.bind(rows.ids, "bigint[]")?,
        writes.bind(rows.states, "text[]")?,
        writes.bind(rows.updated, "bigint[]")?,
        writes.bind(rows.expires, "bigint[]")?,
        writes.bind(rows.grants, "bigint[]")?,
        writes.bind(rows.bodies, "text[]")?,
        writes.bind(versions, "bigint[]")?,
        writes.bind(changes, "bigint[]")?,
    ]
    .join(", ");
    writes.push_counted(format!(
        "UPDATE requests SET state = u.state, updated_at = u.updated_at, expires_at = u.expires_at, \
                open_grants = u.open_grants, body = u.body, version = requests.version + u.changes \
         FROM UNNEST({from}) AS u (id, state, updated_at, expires_at, open_grants, body, version, changes) \
         WHERE requests.id = u.id AND requests.version = u.version RETURNING 1"
    ));
    Ok(changed.len() as u64)
}
