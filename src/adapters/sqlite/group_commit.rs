//! Group commit: one thread owns the write connection and commits the writes
//! waiting for it together.
//!
//! A caller queues a job and waits. The thread takes every job waiting (up to
//! [`MAX_GROUP`]), opens one transaction, runs each job inside its own
//! SAVEPOINT, commits, and only then answers the callers. A job that fails
//! rolls back to its savepoint, so nothing of it is written while the others
//! in its group still commit. If the commit itself fails, every job of the
//! group is answered with that error and nothing of the group is written.
//!
//! A savepoint costs: every page a job changes is first copied aside for its
//! undo. A job that checks everything that can refuse it before its first
//! write (a request's creation or update) runs without one
//! ([`Writer::run_checked`]): when it fails having changed nothing, it is
//! answered alone as any other; when it fails after a write (a disk error,
//! a bug), its group fails as a failed commit does.
//!
//! Why: a commit costs about as much for one small change as for a hundred
//! (WAL frames, locks), so sharing it lets throughput grow with load. And
//! because jobs run one after another on one connection, changes are
//! serialized exactly as with one transaction each: every job sees the writes
//! of the jobs before it.
//!
//! Checkpoints (copying the write-ahead log back into the database file) run
//! on a second thread with a connection of its own, so the writer thread,
//! through which every change passes, spends its time on changes, except
//! for the last few groups' pages when the log is made to start over under
//! writes that never pause ([`Passes`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch};

use crate::adapters::store_metrics::{record_group_size, timed_phase, StoreKind::Sqlite};
use crate::app::ports::StoreError;
use crate::domain::logbook::ChainKeys;

/// The write connection, as every write sees it: the connection itself and
/// the Logbook's keys, which appending events needs and nothing else does.
/// It dereferences to the connection.
pub(crate) struct WriteConn {
    conn: Connection,
    pub(crate) keys: ChainKeys,
    /// The connection's own `synchronous` level (1 NORMAL, 2 FULL, 3 EXTRA),
    /// which a group without synced jobs commits with.
    synchronous: i64,
    /// Whether a write of the group being committed queued notices.
    queued_notices: std::cell::Cell<bool>,
}

impl WriteConn {
    /// Notes that this group queues notices: once it commits, the store's
    /// `notices_queued` counter moves on.
    pub(crate) fn queues_notices(&self) {
        self.queued_notices.set(true);
    }
}

impl std::ops::Deref for WriteConn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

/// At most this many jobs share a transaction, so that a burst is answered in
/// several commits rather than holding its first callers until the last job ran.
const MAX_GROUP: usize = 256;
/// Groups committed between two checkpoints: few enough that the log stays
/// small, enough that a page changed by many groups is copied back once.
const CHECKPOINT_EVERY: u64 = 32;
/// Past this many frames in the log (64 MiB of 4 KiB pages), the log is
/// made to start over while writes go on (see [`Passes`]).
const RESTART_FRAMES: u64 = 16_384;
/// A pass that copied the whole log it saw and began at most this many
/// groups ago leaves so little behind that the writer copies the rest
/// itself: two groups of 44 creations are about 300 frames, and syncing 150
/// pages written at random took 4 to 6.5 ms on the benchmark machine.
const CATCH_UP_GROUPS: u64 = 2;

/// What the writer and the checkpointing thread tell each other so that the
/// log starts over while writes never stop.
///
/// SQLite starts the log over when a write begins with all of it copied
/// back into the database. Under writes that never pause, the checkpoint
/// that began after some group never finishes before the next group, so
/// the log grows without bound (gigabytes in a minute at 10,000 requests a
/// second), every frame landing on a block the file did not have yet.
///
/// So once the log passes `restart_frames`, the checkpointing thread runs
/// its passes one after another: each copies what was written during the
/// one before, so they get shorter. When a pass copied all it saw and began
/// at most [`CATCH_UP_GROUPS`] groups ago, or when passes stop getting
/// shorter, the writer copies what is left itself, between two groups, and
/// its next group starts the log over (unless a reader still uses the log:
/// then the next long log tries again). The checkpointing thread runs no
/// pass meanwhile, and none back to back while a reader keeps its passes
/// from copying everything. The writer's checkpoint syncs as
/// every checkpoint does, so nothing changes for durability; a thread of its
/// own syncs what the passes copied ahead of it ([`SyncAhead`]), and once the
/// log is long the checkpointing thread syncs what each short pass copied
/// ([`SYNC_HERE_BELOW`]) before it hands over, so that the writer's sync,
/// which every caller waits for, has only the pages the writer copied
/// itself. Left to the thread's sync, at most every 100 ms, up to 100 ms of
/// passes were still to sync: the writer's catch-ups took 14 to 32 ms late
/// in a run of 10,000 requests a second (1,000 requesters, Slack down),
/// against 2 to 6 ms synced first.
struct Passes {
    /// Groups the writer has committed.
    groups: AtomicU64,
    /// Set by the checkpointing thread: the writer should copy the rest.
    catch_up: AtomicBool,
    /// The log's length, in frames, past which it is made to start over.
    restart_frames: u64,
    /// Passes the checkpointing thread has run.
    runs: AtomicU64,
    /// Passes of a long log copying at most this many frames are synced on
    /// the checkpointing thread ([`SYNC_HERE_BELOW`]).
    sync_here_frames: u64,
    /// Times the writer was told to copy the rest, and how many of those
    /// came after the last pass's pages were synced.
    hand_overs: AtomicU64,
    synced_hand_overs: AtomicU64,
}

/// A queued job, with its result type erased so that one queue holds them all.
trait Task: Send {
    /// Runs the job inside the group's transaction. `false` asks for its
    /// writes to be rolled back.
    fn run(&mut self, conn: &WriteConn) -> bool;
    /// Answers the caller once the group is committed, or failed with `group`.
    fn answer(self: Box<Self>, group: Result<(), StoreError>);
    /// Whether the group must be synced to disk before this job is answered.
    fn synced(&self) -> bool;
    /// Whether the job runs in a savepoint of its own (see [`Writer::run_checked`]).
    fn guarded(&self) -> bool;
}

struct Job<T, F> {
    work: Option<F>,
    synced: bool,
    guarded: bool,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Task for Job<T, F>
where
    T: Send,
    F: FnOnce(&WriteConn) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &WriteConn) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = work(conn);
        let keep = result.is_ok();
        self.result = Some(result);
        keep
    }

    fn answer(self: Box<Self>, group: Result<(), StoreError>) {
        let outcome = match self.result {
            // A job's own error wins: its writes were rolled back whatever the group did.
            Some(result) => result.and_then(|value| group.map(|()| value)),
            // Not run (the group failed first) or panicked (and was rolled back).
            None => Err(group.err().unwrap_or_else(|| {
                StoreError::Other("the change failed unexpectedly and was not saved".into())
            })),
        };
        // The caller may have given up waiting; then there is no one to tell.
        let _ = self.reply.send(outcome);
    }

    fn synced(&self) -> bool {
        self.synced
    }

    fn guarded(&self) -> bool {
        self.guarded
    }
}

enum Message {
    Job(Box<dyn Task>),
    /// Finish what is queued before this, close the connection, then answer.
    Close(oneshot::Sender<()>),
}

pub(super) struct Writer {
    queue: mpsc::UnboundedSender<Message>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// What the tests read of the checkpoints.
    #[cfg(test)]
    passes: Arc<Passes>,
}

fn closed() -> StoreError {
    StoreError::Other("the store is closed".into())
}

impl Writer {
    /// Starts the writer thread on `conn`, which must be the only connection
    /// that writes to the database, and the checkpointing thread on
    /// `checkpoints`. Writes append Logbook events with `keys`. `queued`
    /// moves on after each commit of a group that queued notices.
    pub(super) fn start(
        conn: Connection,
        checkpoints: Connection,
        keys: ChainKeys,
        queued: watch::Sender<u64>,
    ) -> Result<Self, StoreError> {
        Self::start_restarting(
            conn,
            checkpoints,
            keys,
            queued,
            RESTART_FRAMES,
            RESTART_FRAMES / SYNC_HERE_BELOW,
        )
    }

    /// [`Self::start`], with the log made to start over past
    /// `restart_frames` frames, passes of at most `sync_here_frames` synced
    /// on the checkpointing thread ([`Passes`]).
    fn start_restarting(
        conn: Connection,
        checkpoints: Connection,
        keys: ChainKeys,
        queued: watch::Sender<u64>,
        restart_frames: u64,
        sync_here_frames: u64,
    ) -> Result<Self, StoreError> {
        // Each job's savepoint keeps the pages it changes for undo; in a
        // temporary file that would be a system call per page.
        conn.execute_batch("PRAGMA temp_store = MEMORY")?;
        // No checkpoints on this thread: the checkpointing thread runs them.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
        // A log grown large under a burst is cut back to 256 MiB once a
        // checkpoint has let it start over.
        conn.execute_batch("PRAGMA journal_size_limit = 268435456")?;
        // SQLite's default page cache (2 MiB) stays: with 64 MiB, commits
        // got slower at 10,000 requests a second, the profile showing time
        // in `pcache1TruncateUnsafe`, which walks the whole cache.
        let synchronous = conn.query_row("PRAGMA synchronous", [], |row| row.get(0))?;
        let spawn_error =
            |e: std::io::Error| StoreError::Other(format!("cannot start the store's threads: {e}"));
        let (due, checkpoints_due) = std::sync::mpsc::sync_channel(1);
        let passes = Arc::new(Passes {
            groups: AtomicU64::new(0),
            catch_up: AtomicBool::new(false),
            restart_frames,
            runs: AtomicU64::new(0),
            sync_here_frames,
            hand_overs: AtomicU64::new(0),
            synced_hand_overs: AtomicU64::new(0),
        });
        let checkpointer = {
            let passes = passes.clone();
            std::thread::Builder::new()
                .name("store-checkpoint".into())
                .spawn(move || checkpoint(checkpoints, checkpoints_due, &passes))
                .map_err(spawn_error)?
        };
        let (queue, jobs) = mpsc::unbounded_channel();
        let for_writer = passes.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let conn = WriteConn {
                    conn,
                    keys,
                    synchronous,
                    queued_notices: std::cell::Cell::new(false),
                };
                serve(conn, jobs, due, checkpointer, for_writer, queued)
            })
            .map_err(spawn_error)?;
        Ok(Self {
            queue,
            thread: Mutex::new(Some(thread)),
            #[cfg(test)]
            passes,
        })
    }

    /// Runs `work` in the next group and returns its result once that group
    /// has committed. An error from `work` rolls back only what `work` wrote.
    pub(super) async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteConn) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(work, false, true).await
    }

    /// Like [`Self::run`], without a savepoint, for a job that checks
    /// everything that can refuse or fail it before its first write: an
    /// error before that write is answered alone, one after it fails the
    /// whole group (nothing of the group is written, every caller hears of it).
    pub(super) async fn run_checked<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteConn) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(work, false, false).await
    }

    /// Like [`Self::run`], but the group `work` commits in is synced to disk
    /// (`synchronous = FULL`) before it is answered, whatever the
    /// connection's own level: for writes that must survive a power cut.
    pub(super) async fn run_synced<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteConn) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(work, true, true).await
    }

    async fn submit<T, F>(&self, work: F, synced: bool, guarded: bool) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteConn) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            work: Some(work),
            synced,
            guarded,
            result: None,
            reply,
        };
        self.queue
            .send(Message::Job(Box::new(job)))
            .map_err(|_| closed())?;
        // The reply is dropped unanswered only when the store closed before the job ran.
        answer.await.map_err(|_| closed())?
    }

    /// Lets the jobs already queued finish, then closes the connection.
    /// Jobs queued afterwards fail with "the store is closed".
    pub(super) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.queue.send(Message::Close(done)).is_ok() {
            let _ = closed.await;
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// The writer thread: groups whatever is waiting and commits it, until the
/// store is closed or dropped.
fn serve(
    conn: WriteConn,
    mut queue: mpsc::UnboundedReceiver<Message>,
    checkpoint_due: std::sync::mpsc::SyncSender<()>,
    checkpointer: JoinHandle<()>,
    passes: Arc<Passes>,
    queued: watch::Sender<u64>,
) {
    let mut group: Vec<Box<dyn Task>> = Vec::with_capacity(MAX_GROUP);
    let mut close = None;
    while close.is_none() {
        let Some(first) = queue.blocking_recv() else {
            break;
        };
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Job(task) => group.push(task),
                Message::Close(done) => close = Some(done),
            }
            if close.is_none() && group.len() < MAX_GROUP {
                next = queue.try_recv().ok();
            }
        }
        if !group.is_empty() {
            let outcome = commit_group(&conn, &mut group);
            // Before the answers, so that whoever hears of a commit can find its notices.
            if conn.queued_notices.take() && outcome.is_ok() {
                queued.send_modify(|n| *n = n.wrapping_add(1));
            }
            for task in group.drain(..) {
                task.answer(outcome.clone());
            }
            let groups = passes.groups.fetch_add(1, Ordering::Release) + 1;
            if passes.catch_up.load(Ordering::Acquire) {
                // A few groups' pages, while the checkpointing thread waits.
                // Tried once: when a reader keeps it from copying them all,
                // the log starts over another time.
                passive_checkpoint(&conn);
                passes.catch_up.store(false, Ordering::Release);
            }
            if groups.is_multiple_of(CHECKPOINT_EVERY) {
                // Full means one is already due: the checkpoint will cover this too.
                let _ = checkpoint_due.try_send(());
            }
        }
    }
    // Refuse new jobs, and drop the ones queued after `Close` so their callers
    // hear that the store is closed.
    queue.close();
    drop(queue);
    drop(conn);
    drop(checkpoint_due);
    let _ = checkpointer.join();
    if let Some(done) = close {
        let _ = done.send(());
    }
}

/// The checkpointing thread: a passive checkpoint whenever one is due, until
/// the writer thread stops. A passive checkpoint never waits for the writer or
/// readers; what it cannot copy yet, the next one does. Past
/// [`RESTART_FRAMES`], passes follow one another until the writer can copy
/// the rest ([`Passes`]).
fn checkpoint(conn: Connection, due: std::sync::mpsc::Receiver<()>, passes: &Passes) {
    let mut ahead = SyncAhead::start(&conn, SYNC_AHEAD_EVERY);
    let mut converging = false;
    let mut last_log = 0;
    // Frames of the log copied back by the last pass.
    let mut last_copied = 0;
    // How many groups behind the last pass ended, while converging.
    let mut last_behind = u64::MAX;
    loop {
        if converging {
            if let Err(std::sync::mpsc::TryRecvError::Disconnected) = due.try_recv() {
                break;
            }
        } else if due.recv().is_err() {
            break;
        }
        if passes.catch_up.load(Ordering::Acquire) {
            // The writer copies the rest; a pass now would keep it from that.
            continue;
        }
        let began = passes.groups.load(Ordering::Acquire);
        passes.runs.fetch_add(1, Ordering::Relaxed);
        let Some(Pass { log, copied, whole }) = passive_checkpoint(&conn) else {
            converging = false;
            continue;
        };
        let long = log >= passes.restart_frames;
        // Frames this pass copied (the count starts over with the log).
        let this_pass = copied.checked_sub(last_copied).unwrap_or(copied);
        let mut synced = false;
        match ahead.as_ref().filter(|_| copied != last_copied) {
            Some(syncing) if long && this_pass <= passes.sync_here_frames => {
                // The writer copies the rest soon and syncs the file while
                // every caller waits: what this pass copied is synced now,
                // here, so that its sync has only its own few pages left.
                // Counted in `behind`: the groups committed meanwhile are
                // the writer's to copy, or the next pass's.
                synced = syncing.now();
                if !synced {
                    // A failed sync ends syncing ahead, as on the thread.
                    if let Some(failed) = ahead.take() {
                        failed.finish();
                    }
                }
            }
            Some(syncing) => {
                // Full means a sync is due already: it will cover this pass too.
                let _ = syncing.copied.try_send(());
            }
            None => {}
        }
        last_copied = copied;
        let behind = passes.groups.load(Ordering::Acquire).saturating_sub(began);
        // Passes that stopped getting shorter leave the rest to the writer
        // too, however much: the log must start over some time.
        if long && whole && (behind <= CATCH_UP_GROUPS || (converging && behind >= last_behind)) {
            if synced {
                passes.synced_hand_overs.fetch_add(1, Ordering::Relaxed);
            }
            passes.hand_overs.fetch_add(1, Ordering::Relaxed);
            passes.catch_up.store(true, Ordering::Release);
            converging = false;
        } else {
            // One pass after another while the log is long and grows; a
            // writer that stopped lets the log start over by itself, and
            // a pass a reader kept from copying everything waits for the
            // next one due, rather than spin while that reader reads.
            converging = long && whole && log > last_log;
        }
        last_behind = if converging { behind } else { u64::MAX };
        last_log = log;
    }
    if let Some(ahead) = ahead {
        ahead.finish();
    }
}

/// How often at most the database file is synced ahead of the writer.
const SYNC_AHEAD_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// While the log is long, a pass that copied at most this fraction (an
/// eighth) of the log's length before it starts over (2,048 frames, 8 MiB,
/// in `serve`) has its pages synced on the checkpointing thread itself.
/// Longer passes mean the writes outrun the passes: a sync there would slow
/// them until they stop getting shorter, and the log would grow (with
/// every long pass synced, the log-restart test, whose writes outrun its
/// passes over a 1 MiB log, peaked at 80 MiB in a full run, against 110
/// never made to start over).
const SYNC_HERE_BELOW: u64 = 8;

/// The thread that syncs the database file ahead of the writer, at most
/// once an interval ([`SYNC_AHEAD_EVERY`]) while checkpoints copy pages into it.
///
/// SQLite syncs the database only after a pass that copied the whole log.
/// Under writes that never pause that pass is the writer's catch-up, so its
/// sync flushed every page copied since the log last started over, while
/// every caller waited: 7 to 20 ms every 1.5 s at 2,000 requests a second.
/// Synced here, on a thread of its own, those pages are on disk already and
/// the checkpointing thread's passes do not wait for them. Once the log is
/// long, the checkpointing thread syncs each short pass's pages itself
/// through the same descriptor ([`SyncAhead::now`]): the writer copies the
/// rest soon, and its sync must not find up to an interval of pages waiting.
///
/// It runs only where the kernel reports a failed write-back to every
/// descriptor of the file (Linux 4.13 and later): an older kernel reports
/// it to the first sync only, and a failure this thread heard of would let
/// SQLite's own sync succeed and the log start over on pages that never
/// reached the disk. A failed sync ends the thread; SQLite's next sync of
/// the file fails too, and the log keeps what it holds.
struct SyncAhead {
    /// Told after each pass that copied pages.
    copied: std::sync::mpsc::SyncSender<()>,
    thread: JoinHandle<()>,
    file: &'static std::fs::File,
}

impl SyncAhead {
    /// Starts the thread for `conn`'s database file; nothing if the file or
    /// the kernel does not allow it (the writer's checkpoint then syncs
    /// every page, as SQLite would).
    fn start(conn: &Connection, every: std::time::Duration) -> Option<Self> {
        if !write_errors_reach_every_descriptor() {
            tracing::info!("the database file is not synced ahead of the writer: the kernel is older than Linux 4.13 or not Linux");
            return None;
        }
        let path = conn.path().filter(|path| !path.is_empty())?;
        let file = kept_open(std::path::Path::new(path))?;
        let (copied, syncs) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || sync_while_told(&syncs, file, every))
            .inspect_err(|e| tracing::warn!(error = %e, "cannot start the thread that syncs the database file ahead of the writer"))
            .ok()?;
        Some(Self {
            copied,
            thread,
            file,
        })
    }

    /// Syncs the file on the calling thread, now: false when that failed,
    /// which it logs; the file is then no longer synced ahead of the writer.
    fn now(&self) -> bool {
        sync_file(self.file)
    }

    /// Ends the thread, once the checkpointing thread is done.
    fn finish(self) {
        drop(self.copied);
        let _ = self.thread.join();
    }
}

/// Syncs `file` each time `syncs` says a pass copied pages, at most once
/// `every`, until the sender is gone or a sync fails.
fn sync_while_told(
    syncs: &std::sync::mpsc::Receiver<()>,
    file: &std::fs::File,
    every: std::time::Duration,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut due = syncs.recv().is_ok();
    while due {
        let began = Instant::now();
        if !sync_file(file) {
            return;
        }
        // Told meanwhile: one more sync once the interval is over.
        due = false;
        let next = began + every;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match syncs.recv_timeout(left) {
                Ok(()) => due = true,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if !due {
            due = syncs.recv().is_ok();
        }
    }
}

/// Syncs `file`: false when that failed, which it logs.
fn sync_file(file: &std::fs::File) -> bool {
    file.sync_data()
        .inspect_err(|e| tracing::error!(error = %e, "syncing the database file failed: it is no longer synced ahead of the writer, and SQLite's own sync fails too, so the write-ahead log keeps its pages; check the disk"))
        .is_ok()
}

/// Whether the kernel reports a failed write-back of a file to every
/// descriptor open on it, not to the first sync alone: Linux 4.13 and later.
fn write_errors_reach_every_descriptor() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    kernel_at_least(&release, (4, 13))
}

/// Whether a kernel release string (`6.1.0-13-amd64`) is at least `version`.
fn kernel_at_least(release: &str, version: (u32, u32)) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= version,
        _ => false,
    }
}

/// Descriptors of database files opened to sync them, one per file, by
/// device and inode.
static KEPT_OPEN: Mutex<std::collections::BTreeMap<(u64, u64), &'static std::fs::File>> =
    Mutex::new(std::collections::BTreeMap::new());

/// The database file at `path`, opened once in the process and never closed:
/// closing any descriptor of a file drops every POSIX lock the process holds
/// on it, and SQLite's connections to the file rely on theirs. Nothing,
/// logged, if it cannot be opened. One descriptor per database file a store
/// opens: `serve` opens one; a deleted file keeps its blocks until the
/// process ends.
fn kept_open(path: &std::path::Path) -> Option<&'static std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let id = |meta: std::fs::Metadata| (meta.dev(), meta.ino());
    let cannot = |e: &std::io::Error| {
        tracing::warn!(error = %e, "cannot open the database file to sync it ahead of the writer");
    };
    let mut kept = KEPT_OPEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(file) = kept.get(&id(std::fs::metadata(path).inspect_err(cannot).ok()?)) {
        return Some(*file);
    }
    // Leaked, never dropped: see above.
    let file: &'static std::fs::File = Box::leak(Box::new(
        std::fs::File::open(path).inspect_err(cannot).ok()?,
    ));
    // The file's own identity, should the path have been replaced meanwhile.
    let opened = id(file.metadata().inspect_err(cannot).ok()?);
    Some(*kept.entry(opened).or_insert(file))
}

/// What a passive checkpoint found: the frames in the log, how many of them
/// are copied back, and whether that is all of them (no reader held the log
/// back).
struct Pass {
    log: u64,
    copied: u64,
    whole: bool,
}

/// Runs a passive checkpoint on `conn`; nothing when it failed, which it logs.
fn passive_checkpoint(conn: &Connection) -> Option<Pass> {
    let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    match pass {
        Ok((busy, log, copied)) => Some(Pass {
            log: u64::try_from(log).unwrap_or(0),
            copied: u64::try_from(copied).unwrap_or(0),
            whole: busy == 0 && log == copied,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "checkpoint failed; the write-ahead log grows until one succeeds");
            None
        }
    }
}

/// Runs every task of `group` in one transaction, each in its own savepoint
/// unless it checks before writing, synced to disk when one of them asks for it.
fn commit_group(conn: &WriteConn, group: &mut [Box<dyn Task>]) -> Result<(), StoreError> {
    const FULL: i64 = 2;
    let raise = conn.synchronous < FULL && group.iter().any(|task| task.synced());
    let outcome = run_group(conn, group, raise);
    if outcome.is_err() && !conn.is_autocommit() {
        // Best effort: if even this fails, the next BEGIN reports the problem.
        let _ = conn.execute_batch("ROLLBACK");
    }
    if raise {
        // Best effort: a level left at FULL costs time, never data.
        let _ = conn.execute_batch(&format!("PRAGMA synchronous = {}", conn.synchronous));
    }
    outcome
}

/// Runs the group's changes and commits them, synced to disk if `raise`,
/// recording how long each of the two took and whether it failed, under the
/// names PostgreSQL's groups use.
fn run_group(conn: &WriteConn, group: &mut [Box<dyn Task>], raise: bool) -> Result<(), StoreError> {
    record_group_size(Sqlite, group.len());
    timed_phase(Sqlite, "writes", || run_changes(conn, group, raise))?;
    timed_phase(Sqlite, "commit", || {
        conn.prepare_cached("COMMIT")
            .and_then(|mut commit| commit.execute([]))
    })?;
    Ok(())
}

/// Opens the group's transaction (after raising the sync level if `raise`)
/// and runs each change in it.
fn run_changes(
    conn: &WriteConn,
    group: &mut [Box<dyn Task>],
    raise: bool,
) -> Result<(), StoreError> {
    if raise {
        conn.execute_batch("PRAGMA synchronous = FULL")?;
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut savepoint = conn.prepare_cached("SAVEPOINT job")?;
    let mut rollback = conn.prepare_cached("ROLLBACK TO job")?;
    let mut release = conn.prepare_cached("RELEASE job")?;
    for task in group.iter_mut() {
        // A change that checks before writing runs without a savepoint.
        let guarded = task.guarded();
        if guarded {
            savepoint.execute([])?;
        }
        let before = conn.total_changes();
        // A panicking change is contained like a failing one: its caller is
        // told; the writer thread carries on.
        let keep = catch_unwind(AssertUnwindSafe(|| task.run(conn))).unwrap_or(false);
        // On a full disk or an I/O error SQLite may roll back the whole
        // transaction, not only the failing statement; the changes after
        // it would then each commit on their own.
        if conn.is_autocommit() {
            return Err(StoreError::Other(
                "the database rolled back the changes saved together with this one (a full disk or an I/O error), so none of them was kept; try again".into(),
            ));
        }
        if guarded {
            if !keep {
                rollback.execute([])?;
            }
            release.execute([])?;
        } else if !keep && conn.total_changes() != before {
            return Err(StoreError::Other(
                "a change failed after writing part of it, so nothing of the changes saved with it was kept; try again".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn open(dir: &tempfile::TempDir) -> (Writer, Connection) {
        let path = dir.path().join("group.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE counter (n INTEGER NOT NULL);
             INSERT INTO counter VALUES (0);
             CREATE TABLE items (v TEXT NOT NULL UNIQUE);
             CREATE TABLE parents (id INTEGER PRIMARY KEY);
             CREATE TABLE children (
                 parent INTEGER NOT NULL REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
             );",
        )
        .unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        (start(conn, &path), Connection::open(&path).unwrap())
    }

    /// The descriptor that syncs a database file ahead of the writer is
    /// opened once per file and stays open: a second store on the file
    /// shares it, and a file put in its place gets one of its own.
    #[test]
    fn a_database_file_is_opened_once_to_sync_it_and_never_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kept.db");
        std::fs::write(&path, b"first").unwrap();
        let first = kept_open(&path).unwrap();
        assert!(std::ptr::eq(first, kept_open(&path).unwrap()));
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"second").unwrap();
        let second = kept_open(&path).unwrap();
        assert!(!std::ptr::eq(first, second));
        // The first file's descriptor is still open, though the file is gone.
        assert_eq!(first.metadata().unwrap().len(), 5);
        first.sync_data().unwrap();
    }

    /// The database is synced ahead of the writer only where the kernel
    /// reports a failed write-back to every descriptor (Linux 4.13 on).
    #[test]
    fn kernel_releases_are_compared_by_major_and_minor() {
        for (release, newer) in [
            ("6.1.0-13-amd64\n", true),
            ("4.13.0", true),
            ("5.4.0-1045-aws", true),
            ("4.12.14-lp150.12.82-default", false),
            ("3.10.0-1160.el7.x86_64", false),
            ("", false),
            ("Linux", false),
        ] {
            assert_eq!(kernel_at_least(release, (4, 13)), newer, "{release:?}");
        }
    }

    /// The sync thread ends with the checkpointing thread even in the middle
    /// of its interval: with an interval of an hour, a thread that waited it
    /// out would keep the store's close waiting that long.
    #[test]
    fn the_sync_thread_ends_when_the_checkpoints_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("synced.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER)").unwrap();
        let hour = std::time::Duration::from_secs(3600);
        let Some(ahead) = SyncAhead::start(&conn, hour) else {
            assert!(!write_errors_reach_every_descriptor());
            return;
        };
        // The second send waits until the thread took the first: it has
        // synced, or is syncing, and its interval has begun.
        ahead.copied.send(()).unwrap();
        ahead.copied.send(()).unwrap();
        let (ended, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            ahead.finish();
            let _ = ended.send(());
        });
        assert!(
            finished
                .recv_timeout(std::time::Duration::from_secs(60))
                .is_ok(),
            "the sync thread waited out its interval before ending"
        );
    }

    /// A writer on `conn`, with its checkpoints on another connection to `path`.
    fn start(conn: Connection, path: &std::path::Path) -> Writer {
        Writer::start(
            conn,
            Connection::open(path).unwrap(),
            ChainKeys::none(),
            watch::channel(0).0,
        )
        .unwrap()
    }

    /// A writer on a fresh database whose log is made to start over past
    /// `restart_frames` frames, with a reader connection to it.
    fn open_restarting(dir: &tempfile::TempDir, restart_frames: u64) -> (Arc<Writer>, Connection) {
        open_syncing_here(dir, restart_frames, restart_frames / SYNC_HERE_BELOW)
    }

    /// [`open_restarting`], with passes of a long log of at most
    /// `sync_here_frames` synced on the checkpointing thread.
    fn open_syncing_here(
        dir: &tempfile::TempDir,
        restart_frames: u64,
        sync_here_frames: u64,
    ) -> (Arc<Writer>, Connection) {
        let path = dir.path().join("log.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE blobs (b BLOB NOT NULL);",
        )
        .unwrap();
        let writer = Writer::start_restarting(
            conn,
            Connection::open(&path).unwrap(),
            ChainKeys::none(),
            watch::channel(0).0,
            restart_frames,
            sync_here_frames,
        )
        .unwrap();
        (Arc::new(writer), Connection::open(&path).unwrap())
    }

    /// Eight callers write 96 MiB, 16 KiB at a time, so that the writer
    /// never waits for work.
    async fn write_without_pause(writer: &Arc<Writer>) {
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    for _ in 0..768 {
                        writer
                            .run(|conn| {
                                conn.execute("INSERT INTO blobs (b) VALUES (zeroblob(16384))", [])?;
                                Ok(())
                            })
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
    }

    /// The longest the log grew (its file is cut back only past 256 MiB)
    /// under [`write_without_pause`], made to start over past
    /// `restart_frames` frames.
    async fn longest_log(restart_frames: u64) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _) = open_restarting(&dir, restart_frames);
        write_without_pause(&writer).await;
        std::fs::metadata(dir.path().join("log.db-wal"))
            .unwrap()
            .len()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_starts_over_under_writes_that_never_pause() {
        let mib = |n: u64| n / (1 << 20);
        // 1 MiB of 4 KiB pages.
        let restarting = longest_log(256).await;
        let growing = longest_log(u64::MAX).await;
        assert!(
            growing >= 64 << 20,
            "the log grew only to {} MiB: the writer waited for work",
            mib(growing)
        );
        assert!(
            restarting <= growing / 2,
            "the log grew to {} MiB, against {} MiB never made to start over",
            mib(restarting),
            mib(growing)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_copies_the_rest_after_the_passes_pages_are_synced() {
        let dir = tempfile::tempdir().unwrap();
        // Every pass of a long log synced: with the eighth `serve` uses, none
        // of this log's hand-overs followed a synced pass in eight runs, its
        // writes outrunning its passes over a 1 MiB log.
        let (writer, _reader) = open_syncing_here(&dir, 256, u64::MAX);
        write_without_pause(&writer).await;
        let hand_overs = writer.passes.hand_overs.load(Ordering::Relaxed);
        let synced = writer.passes.synced_hand_overs.load(Ordering::Relaxed);
        assert!(hand_overs > 0, "the log was never made to start over");
        if write_errors_reach_every_descriptor() {
            assert!(
                synced > 0,
                "none of {hand_overs} hand-overs came after a sync of the last pass's pages"
            );
        } else {
            assert_eq!(synced, 0, "synced ahead on a kernel that does not allow it");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_holding_the_log_does_not_make_checkpoints_run_back_to_back() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open_restarting(&dir, 256);
        // A long read (a backup, `audit verify`) keeps its view of the log.
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM blobs;")
            .unwrap();
        write_without_pause(&writer).await;
        let groups = writer.passes.groups.load(Ordering::Acquire);
        let runs = writer.passes.runs.load(Ordering::Relaxed);
        assert!(
            runs <= groups / CHECKPOINT_EVERY + 2,
            "{runs} passes for {groups} groups"
        );
        reader.execute_batch("COMMIT").unwrap();
    }

    fn items(conn: &Connection) -> Vec<String> {
        let mut stmt = conn.prepare("SELECT v FROM items ORDER BY v").unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    fn insert(
        v: &'static str,
    ) -> impl FnOnce(&WriteConn) -> Result<(), StoreError> + Send + 'static {
        move |conn| {
            conn.execute("INSERT INTO items (v) VALUES (?1)", [v])?;
            Ok(())
        }
    }

    /// Holds the writer thread for a moment, so that the jobs queued
    /// meanwhile share the next group.
    fn hold_writer(writer: &Arc<Writer>) -> tokio::task::JoinHandle<Result<(), StoreError>> {
        let writer = writer.clone();
        let held = tokio::spawn(async move {
            writer
                .run(|_| {
                    std::thread::sleep(Duration::from_millis(100));
                    Ok(())
                })
                .await
        });
        std::thread::sleep(Duration::from_millis(20));
        held
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_changes_are_serialized_and_none_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        let writer = Arc::new(writer);
        let tasks: Vec<_> = (0..500)
            .map(|_| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    writer
                        .run(|conn| {
                            let n: i64 =
                                conn.query_row("SELECT n FROM counter", [], |r| r.get(0))?;
                            conn.execute("UPDATE counter SET n = ?1", [n + 1])?;
                            Ok(n)
                        })
                        .await
                })
            })
            .collect();
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap().unwrap());
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..500).collect::<Vec<i64>>());
        // Every caller was answered after its commit, so all of it is visible.
        let n: i64 = reader
            .query_row("SELECT n FROM counter", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 500);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_change_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        let writer = Arc::new(writer);
        let held = hold_writer(&writer);
        let (a, refused, duplicate, c) = tokio::join!(
            writer.run(insert("a")),
            writer.run(|conn| {
                conn.execute("INSERT INTO items (v) VALUES ('b')", [])?;
                Err::<(), _>(StoreError::Other("refused after writing".into()))
            }),
            writer.run(|conn| {
                conn.execute("INSERT INTO items (v) VALUES ('d')", [])?;
                conn.execute("INSERT INTO items (v) VALUES ('a')", [])?;
                Ok(())
            }),
            writer.run(insert("c")),
        );
        held.await.unwrap().unwrap();
        assert!(a.is_ok() && c.is_ok());
        assert!(matches!(refused, Err(StoreError::Other(m)) if m == "refused after writing"));
        assert!(matches!(duplicate, Err(StoreError::Other(m)) if m.contains("UNIQUE")));
        assert_eq!(items(&reader), ["a", "c"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_fails_its_whole_group_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        let writer = Arc::new(writer);
        let held = hold_writer(&writer);
        // The orphan passes its own statement (the key is checked at commit),
        // so the commit of the group holding it fails.
        let (a, orphan) = tokio::join!(
            writer.run(insert("a")),
            writer.run(|conn| {
                conn.execute("INSERT INTO children (parent) VALUES (42)", [])?;
                Ok(())
            }),
        );
        held.await.unwrap().unwrap();
        assert!(matches!(a, Err(StoreError::Other(m)) if m.contains("FOREIGN KEY")));
        assert!(orphan.is_err());
        assert!(items(&reader).is_empty());
        // The writer carries on with the next group.
        writer.run(insert("b")).await.unwrap();
        assert_eq!(items(&reader), ["b"]);
    }

    /// A change that checks before writing runs without a savepoint: failing
    /// before its first write it is answered alone; failing after one it
    /// fails its group, which writes nothing, and the writer carries on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checked_change_fails_alone_before_writing_and_with_its_group_after() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        let writer = Arc::new(writer);
        let held = hold_writer(&writer);
        let (a, replayed, b) = tokio::join!(
            writer.run_checked(insert("a")),
            writer.run_checked(|_| Err::<(), _>(StoreError::Replayed)),
            writer.run(insert("b")),
        );
        held.await.unwrap().unwrap();
        assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
        assert!(matches!(replayed, Err(StoreError::Replayed)));
        assert_eq!(items(&reader), ["a", "b"]);

        let held = hold_writer(&writer);
        let (c, broken, d) = tokio::join!(
            writer.run(insert("c")),
            writer.run_checked(|conn| {
                conn.execute("INSERT INTO items (v) VALUES ('x')", [])?;
                Err::<(), _>(StoreError::Other("failed after writing".into()))
            }),
            writer.run_checked(insert("d")),
        );
        held.await.unwrap().unwrap();
        assert!(matches!(broken, Err(StoreError::Other(m)) if m == "failed after writing"));
        assert!(
            matches!(&c, Err(StoreError::Other(m)) if m.contains("after writing part of it")),
            "{c:?}"
        );
        assert!(d.is_err());
        assert_eq!(items(&reader), ["a", "b"]);
        writer.run_checked(insert("e")).await.unwrap();
        assert_eq!(items(&reader), ["a", "b", "e"]);
    }

    /// On a full disk or an I/O error SQLite may roll back the whole
    /// transaction. The changes after that must not commit on their own:
    /// the group fails, and nothing of it is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_the_database_rolled_back_fails_its_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        let writer = Arc::new(writer);
        let held = hold_writer(&writer);
        let (a, rolled_back, b, c) = tokio::join!(
            writer.run(insert("a")),
            // What SQLite does to the transaction on such an error, done here.
            writer.run_checked(|conn| {
                conn.execute_batch("ROLLBACK")?;
                Err::<(), _>(StoreError::Other("the disk is full".into()))
            }),
            writer.run_checked(insert("b")),
            writer.run(insert("c")),
        );
        held.await.unwrap().unwrap();
        assert!(
            matches!(&a, Err(StoreError::Other(m)) if m.contains("rolled back")),
            "{a:?}"
        );
        assert!(rolled_back.is_err() && b.is_err() && c.is_err());
        assert!(items(&reader).is_empty(), "{:?}", items(&reader));
        // The writer carries on with the next group.
        writer.run(insert("d")).await.unwrap();
        assert_eq!(items(&reader), ["d"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_change_is_contained() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        let panicked = writer
            .run(|conn| -> Result<(), StoreError> {
                conn.execute("INSERT INTO items (v) VALUES ('x')", [])?;
                panic!("a bug in a change")
            })
            .await;
        assert!(matches!(panicked, Err(StoreError::Other(m)) if m.contains("failed unexpectedly")));
        writer.run(insert("a")).await.unwrap();
        assert_eq!(items(&reader), ["a"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_finishes_queued_changes_and_refuses_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        let writer = Arc::new(writer);
        let held = hold_writer(&writer);
        let queued = {
            let writer = writer.clone();
            tokio::spawn(async move { writer.run(insert("a")).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        writer.close().await;
        held.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        assert!(
            matches!(writer.run(insert("b")).await, Err(StoreError::Other(m)) if m.contains("closed"))
        );
        assert_eq!(items(&reader), ["a"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_synced_change_commits_with_full_sync_and_the_level_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL")
            .unwrap();
        let writer = start(conn, &path);
        let level = |conn: &WriteConn| -> Result<i64, StoreError> {
            Ok(conn.query_row("PRAGMA synchronous", [], |row| row.get(0))?)
        };
        assert_eq!(writer.run(level).await.unwrap(), 1, "NORMAL");
        assert_eq!(writer.run_synced(level).await.unwrap(), 2, "FULL");
        assert_eq!(writer.run(level).await.unwrap(), 1, "NORMAL again");
    }
}
