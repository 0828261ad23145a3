//! Consistent copies of a live database with SQLite's online backup API, and
//! putting one back.
//!
//! A file copy of a database in WAL mode taken while `serve` writes can miss
//! the write-ahead log or tear a page; the backup API copies a consistent
//! snapshot page by page, and starts over by itself when the source changes
//! mid-copy. It copies in small steps with a pause between them, so `serve`'s
//! writer is never held up for long.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::app::ports::StoreError;

/// Pages copied per step (4 KiB each), and the pause after each.
const PAGES_PER_STEP: std::os::raw::c_int = 256;
const PAUSE: Duration = Duration::from_millis(5);

fn other(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("{what}: {e}"))
}

/// Copies the database at `source` to a new file `dest` (which must not
/// exist), consistently even while another process writes to `source`.
/// Returns the size of the copy in bytes.
pub fn backup(source: &Path, dest: &Path) -> Result<u64, StoreError> {
    if !source.is_file() {
        return Err(StoreError::Other(format!(
            "{} is not a database file: check [store] path (or PASSPORT_STORE__PATH)",
            source.display()
        )));
    }
    if dest.exists() {
        return Err(StoreError::Other(format!(
            "{} already exists: name a new file, so that no backup is overwritten",
            dest.display()
        )));
    }
    let from = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| other("cannot open the database", e))?;
    from.busy_timeout(Duration::from_secs(10))
        .map_err(|e| other("cannot set a busy timeout", e))?;
    // Written next to the destination and renamed at the end, so a copy that
    // fails half-way never looks like a backup.
    let partial = partial_path(dest);
    let _ = std::fs::remove_file(&partial);
    let result = copy(&from, &partial).and_then(|()| {
        std::fs::rename(&partial, dest).map_err(|e| other("cannot move the copy into place", e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result?;
    std::fs::metadata(dest)
        .map(|m| m.len())
        .map_err(|e| other("cannot read the copy", e))
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

fn copy(from: &Connection, to_path: &Path) -> Result<(), StoreError> {
    let mut to = Connection::open(to_path).map_err(|e| other("cannot create the copy", e))?;
    {
        let backup = Backup::new(from, &mut to).map_err(|e| other("cannot start the backup", e))?;
        loop {
            match backup
                .step(PAGES_PER_STEP)
                .map_err(|e| other("the backup failed", e))?
            {
                StepResult::Done => break,
                StepResult::More => std::thread::sleep(PAUSE),
                // The source is being written to or locked: wait and go on.
                StepResult::Busy | StepResult::Locked => std::thread::sleep(PAUSE * 10),
                _ => std::thread::sleep(PAUSE),
            }
        }
    }
    // The copy is a plain database file (no -wal beside it) that opens anywhere.
    to.execute_batch("PRAGMA journal_mode = DELETE;")
        .map_err(|e| other("cannot finish the copy", e))?;
    to.close()
        .map_err(|(_, e)| other("cannot close the copy", e))
}

/// Puts the backup `from` in place of the database at `dest`, which no
/// process may have open: the current file (if any) is kept beside it as
/// `<dest>.before-restore-<unix time>`. Returns that path, if there was one.
pub fn restore(from: &Path, dest: &Path, now_unix: i64) -> Result<Option<PathBuf>, StoreError> {
    if !from.is_file() {
        return Err(StoreError::Other(format!(
            "{} is not a file: name a backup made by `passport backup`",
            from.display()
        )));
    }
    let kept = if dest.exists() {
        // In WAL mode every open connection holds a shared lock for as long
        // as it is open, even when idle; exclusive locking mode is refused
        // while any other process (a running `serve`) has the database open.
        let conn = Connection::open(dest).map_err(|e| other("cannot open the database", e))?;
        conn.busy_timeout(Duration::from_millis(500))
            .map_err(|e| other("cannot set a busy timeout", e))?;
        conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; SELECT count(*) FROM sqlite_master; COMMIT;").map_err(|_| {
            StoreError::Other(format!(
                "{} is in use: stop `passport serve` (every replica) before restoring",
                dest.display()
            ))
        })?;
        // Folds the write-ahead log into the file, so moving the file moves everything.
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(|e| other("cannot checkpoint the database", e))?;
        drop(conn);
        let mut name = dest.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".before-restore-{now_unix}"));
        let aside = dest.with_file_name(name);
        std::fs::rename(dest, &aside)
            .map_err(|e| other("cannot move the current database aside", e))?;
        for suffix in ["-wal", "-shm"] {
            let mut side = dest.as_os_str().to_os_string();
            side.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(side));
        }
        Some(aside)
    } else {
        None
    };
    let source = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| other("cannot open the backup", e))?;
    let partial = partial_path(dest);
    let _ = std::fs::remove_file(&partial);
    copy(&source, &partial)?;
    std::fs::rename(&partial, dest)
        .map_err(|e| other("cannot move the restored database into place", e))?;
    Ok(kept)
}
