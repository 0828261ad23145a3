//! Moving a deployment from SQLite to PostgreSQL (`passport store copy`):
//! every row of the SQLite file, read in one read transaction (one
//! consistent snapshot, even while another process has the file open),
//! written into a PostgreSQL database that holds no Passport data, in one
//! transaction: all of it or nothing.
//!
//! This is the one place that knows both schemas side by side: [`TABLES`]
//! maps each SQLite table, column by column, onto its PostgreSQL twin
//! (`migrations/` after its last migration, `migrations/postgres/`). A file
//! whose tables or columns differ from it is refused before anything is
//! written, so a migration that adds a table or column on one side and not
//! here cannot be copied past silently.
//!
//! What is copied is the database as it is: requests with their bodies as
//! stored, the Logbook with its sequence numbers and hashes (so the chain,
//! plain or keyed, verifies on the other side with the same keys), timers,
//! the outbox with its attempts and set-aside notices, and the rest. The
//! sequences PostgreSQL numbers rows with are set past the highest number
//! SQLite ever gave (for its AUTOINCREMENT tables, including rows already
//! deleted), so no id is given twice. Leases are not copied: a lease belongs
//! to a process that held the SQLite file; on PostgreSQL the first `serve`
//! takes its own. A live scheduler lease refuses the copy: the file is
//! still being written.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};

use crate::domain::time::Timestamp;

/// Rows sent to PostgreSQL per statement (at most 12 columns each: far below
/// the 65,535 parameters a statement may carry).
const BATCH: usize = 1000;
/// How long the read waits for a lock on the SQLite file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a copy did not happen, or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Something the operator must change first; the text says what.
    #[error("{0}")]
    Refused(String),
    /// The SQLite file holds something Passport never writes.
    #[error(
        "the SQLite database is damaged: {0}: run `passport audit verify` and restore a backup"
    )]
    Corrupt(String),
    /// Reading or writing failed.
    #[error("{0}")]
    Failed(String),
}

impl From<rusqlite::Error> for CopyError {
    fn from(e: rusqlite::Error) -> Self {
        CopyError::Failed(format!("reading the SQLite file failed: {e}"))
    }
}

impl From<sqlx::Error> for CopyError {
    fn from(e: sqlx::Error) -> Self {
        CopyError::Failed(format!("writing to PostgreSQL failed: {e}"))
    }
}

/// How a column is written on PostgreSQL.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Int,
    Text,
    Bytes,
    /// SQLite keeps 0 or 1 (INTEGER); PostgreSQL a BOOLEAN.
    Bool,
}

#[derive(Debug)]
struct Column {
    /// Its name on SQLite (`rowid` for SQLite's own row number).
    from: &'static str,
    /// Its name on PostgreSQL, quoted where it is a reserved word.
    to: &'static str,
    kind: Kind,
}

const fn col(name: &'static str, kind: Kind) -> Column {
    Column {
        from: name,
        to: name,
        kind,
    }
}

/// One table, the same on both sides.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    columns: &'static [Column],
    /// The order rows are read in (and so inserted in).
    order: &'static str,
    /// False for `leases` alone, which belongs to the processes of one database.
    copied: bool,
    /// The column a PostgreSQL sequence numbers (BIGSERIAL), when there is one.
    serial: Option<&'static str>,
}

use Kind::{Bool, Bytes, Int, Text};

/// Every Passport table, in an order that inserts a row after the rows it
/// refers to.
pub const TABLES: &[Table] = &[
    Table {
        name: "requests",
        columns: &[
            col("id", Int),
            col("state", Text),
            col("requester", Text),
            col("created_at", Int),
            col("updated_at", Int),
            col("expires_at", Int),
            col("open_grants", Int),
            // Text as stored, byte for byte; `version` starts again at 0.
            col("body", Text),
        ],
        order: "id",
        copied: true,
        serial: None,
    },
    Table {
        name: "logbook",
        columns: &[
            col("seq", Int),
            col("at", Int),
            col("actor", Text),
            col("request", Text),
            col("action", Text),
            col("details", Text),
            col("hash", Bytes),
        ],
        order: "seq",
        copied: true,
        serial: None,
    },
    Table {
        name: "outbox",
        columns: &[
            col("id", Int),
            col("surface", Text),
            col("lane", Text),
            col("request", Int),
            col("notice", Text),
            col("created_at", Int),
            col("attempts", Int),
            col("refusals", Int),
            col("next_attempt_at", Int),
            col("delivered_at", Int),
            col("dead_at", Int),
            col("last_error", Text),
        ],
        order: "id",
        copied: true,
        serial: Some("id"),
    },
    Table {
        name: "timers",
        columns: &[
            col("id", Int),
            col("request", Int),
            col("kind", Text),
            col("due_at", Int),
            col("attempts", Int),
        ],
        order: "id",
        copied: true,
        serial: Some("id"),
    },
    Table {
        name: "chat_refs",
        columns: &[
            col("request", Int),
            col("surface", Text),
            col("channel", Text),
            col("message", Text),
        ],
        order: "request, surface",
        copied: true,
        serial: None,
    },
    Table {
        name: "ssh_keys",
        columns: &[
            Column {
                from: "user",
                to: "\"user\"",
                kind: Text,
            },
            col("key", Text),
        ],
        order: "user",
        copied: true,
        serial: None,
    },
    Table {
        name: "leases",
        columns: &[
            col("name", Text),
            col("holder", Text),
            col("expires_at", Int),
        ],
        order: "name",
        copied: false,
        serial: None,
    },
    Table {
        name: "jobs",
        columns: &[
            col("name", Text),
            col("schedule", Text),
            col("next_run", Int),
        ],
        order: "name",
        copied: true,
        serial: None,
    },
    Table {
        name: "ssm_commands",
        columns: &[
            // The order commands were recorded in: SQLite's row number,
            // PostgreSQL's `seq`.
            Column {
                from: "rowid",
                to: "seq",
                kind: Int,
            },
            col("command_id", Text),
            col("request", Int),
            col("operation", Text),
            col("document", Text),
            col("fingerprint", Text),
            col("expires_at", Int),
            col("sent_at", Int),
        ],
        order: "rowid",
        copied: true,
        serial: Some("seq"),
    },
    Table {
        name: "ssm_invocations",
        columns: &[
            col("command_id", Text),
            col("instance", Text),
            col("status", Text),
            col("ok", Bool),
            col("detail", Text),
        ],
        order: "command_id, instance",
        copied: true,
        serial: None,
    },
    Table {
        name: "password_messages",
        columns: &[
            col("id", Int),
            col("request", Int),
            col("instance", Text),
            col("username", Text),
            col("surface", Text),
            col("channel", Text),
            col("message", Text),
            col("sent_at", Int),
            col("due_at", Int),
            col("attempts", Int),
        ],
        order: "id",
        copied: true,
        serial: Some("id"),
    },
    Table {
        name: "logins",
        columns: &[
            col("id", Text),
            col("code_hash", Text),
            col("secret_hash", Text),
            col("host", Text),
            col("client", Text),
            col("address", Text),
            col("started_at", Int),
            col("expires_at", Int),
            col("state", Text),
            col("claimed_by", Text),
            col("claimed_handle", Text),
            col("claimed_surface", Text),
        ],
        order: "id",
        copied: true,
        serial: None,
    },
    Table {
        name: "api_tokens",
        columns: &[
            col("id", Int),
            col("token_hash", Text),
            col("login", Text),
            col("user_id", Text),
            col("handle", Text),
            col("surface", Text),
            col("issued_at", Int),
            col("expires_at", Int),
            col("revoked_at", Int),
            col("refusal_recorded", Bool),
        ],
        order: "id",
        copied: true,
        serial: Some("id"),
    },
    Table {
        name: "seen_keys",
        columns: &[col("key", Text), col("expires_at", Int)],
        order: "key",
        copied: true,
        serial: None,
    },
];

/// What was copied: rows per table, in [`TABLES`]' order (without `leases`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub tables: Vec<(&'static str, u64)>,
}

/// One value as SQLite holds it (its STRICT tables hold no REAL here).
#[derive(Debug)]
enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn read(value: ValueRef<'_>, table: &str, column: &str) -> Result<Self, CopyError> {
        Ok(match value {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(n) => Value::Int(n),
            ValueRef::Text(bytes) => {
                Value::Text(String::from_utf8(bytes.to_vec()).map_err(|_| {
                    CopyError::Corrupt(format!("{table}.{column} holds text that is not UTF-8"))
                })?)
            }
            ValueRef::Blob(bytes) => Value::Blob(bytes.to_vec()),
            ValueRef::Real(_) => {
                return Err(CopyError::Corrupt(format!(
                    "{table}.{column} holds a real number"
                )))
            }
        })
    }
}

/// What the reader hands over, in order.
enum Read {
    Rows {
        table: usize,
        rows: Vec<Vec<Value>>,
    },
    /// Everything is read: per table with a sequence, the highest number
    /// SQLite gave it.
    Done {
        serials: Vec<(usize, i64)>,
    },
}

/// Copies every table of the SQLite file at `source` into the PostgreSQL
/// database `target` (already migrated), as of one snapshot of the file, in
/// one transaction, and answers the rows copied per table. Refuses, writing
/// nothing, when any Passport table of `target` holds a row, when a process
/// holds the file's lease `lease` (the scheduler's) at `now`, or when the
/// file's schema is not the one this Passport writes.
pub async fn copy(
    source: &Path,
    target: &PgPool,
    lease: &'static str,
    now: Timestamp,
) -> Result<Copied, CopyError> {
    let mut tx = target.begin().await?;
    // The locks a Passport process on the target takes to create a request
    // and to append to the Logbook, in the same order: should one be running
    // already, its writes wait for the copy and then see its rows.
    crate::adapters::postgres::lock_creations_and_logbook(&mut tx).await?;
    refuse_unless_empty(&mut tx).await?;

    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Result<Read, CopyError>>(4);
    let path = source.to_owned();
    let reader = tokio::task::spawn_blocking(move || {
        if let Err(e) = read(&path, lease, now, &sender) {
            let _ = sender.blocking_send(Err(e));
        }
    });
    let mut counts = vec![0u64; TABLES.len()];
    let serials = loop {
        match receiver.recv().await {
            Some(Ok(Read::Rows { table, rows })) => {
                insert(&mut tx, &TABLES[table], &rows).await?;
                counts[table] += rows.len() as u64;
            }
            Some(Ok(Read::Done { serials })) => break serials,
            Some(Err(e)) => return Err(e),
            None => {
                return Err(CopyError::Failed(
                    "reading the SQLite file stopped before the end".into(),
                ))
            }
        }
    };
    reader
        .await
        .map_err(|e| CopyError::Failed(format!("reading the SQLite file stopped: {e}")))?;
    for (table, highest) in serials {
        let table = &TABLES[table];
        let Some(column) = table.serial else { continue };
        // setval(…, 1, false): the next number is 1, as in a new table.
        sqlx::query("SELECT setval(pg_get_serial_sequence($1, $2), $3, $4)")
            .bind(table.name)
            .bind(column)
            .bind(highest.max(1))
            .bind(highest > 0)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Copied {
        tables: TABLES
            .iter()
            .zip(counts)
            .filter(|(t, _)| t.copied)
            .map(|(t, n)| (t.name, n))
            .collect(),
    })
}

/// Counts the rows of each copied table on `target` now, and names every
/// table whose count differs from `copied`: `(table, copied, found)`.
pub async fn recount(
    target: &PgPool,
    copied: &Copied,
) -> Result<Vec<(&'static str, u64, u64)>, CopyError> {
    let mut differ = Vec::new();
    for (table, n) in &copied.tables {
        let found: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(target)
            .await?;
        if found as u64 != *n {
            differ.push((*table, *n, found as u64));
        }
    }
    Ok(differ)
}

/// Refuses when any Passport table of the target holds a row, naming the first.
async fn refuse_unless_empty(tx: &mut PgConnection) -> Result<(), CopyError> {
    for table in TABLES {
        let used: bool =
            sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {})", table.name))
                .fetch_one(&mut *tx)
                .await?;
        if used {
            return Err(CopyError::Refused(format!(
                "the PostgreSQL database already holds Passport data (table {} has rows), and a copy only goes into a database with none: create a new, empty database (CREATE DATABASE …) and give its address instead",
                table.name
            )));
        }
    }
    Ok(())
}

/// Inserts `rows` of `table` in one statement.
async fn insert(
    tx: &mut PgConnection,
    table: &Table,
    rows: &[Vec<Value>],
) -> Result<(), CopyError> {
    if rows.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = table.columns.iter().map(|c| c.to).collect();
    let mut query: QueryBuilder<'_, Postgres> = QueryBuilder::new(format!(
        "INSERT INTO {} ({}) ",
        table.name,
        names.join(", ")
    ));
    let mut mismatch = None;
    query.push_values(rows, |mut row_values, row| {
        for (column, value) in table.columns.iter().zip(row) {
            match (column.kind, value) {
                (Int, Value::Null) => row_values.push_bind(None::<i64>),
                (Bool, Value::Null) => row_values.push_bind(None::<bool>),
                (Text, Value::Null) => row_values.push_bind(None::<&str>),
                (Bytes, Value::Null) => row_values.push_bind(None::<&[u8]>),
                (Int, Value::Int(n)) => row_values.push_bind(*n),
                (Bool, Value::Int(n)) => row_values.push_bind(*n != 0),
                (Text, Value::Text(s)) => row_values.push_bind(s.as_str()),
                (Bytes, Value::Blob(b)) => row_values.push_bind(b.as_slice()),
                (kind, value) => {
                    mismatch.get_or_insert_with(|| {
                        format!(
                            "{}.{} holds {value:?} where {kind:?} belongs",
                            table.name, column.from
                        )
                    });
                    row_values.push_bind(None::<i64>)
                }
            };
        }
    });
    if let Some(mismatch) = mismatch {
        return Err(CopyError::Corrupt(mismatch));
    }
    query.build().execute(&mut *tx).await?;
    Ok(())
}

/// Reads the file at `path` in one read transaction and hands its rows to
/// `sender` table by table; stops quietly when the receiver is gone (the
/// copy failed on the other side).
fn read(
    path: &Path,
    lease: &str,
    now: Timestamp,
    sender: &tokio::sync::mpsc::Sender<Result<Read, CopyError>>,
) -> Result<(), CopyError> {
    let conn = open(path)?;
    // Deferred: the first read fixes the snapshot every later read sees,
    // whatever another process commits meanwhile.
    conn.execute_batch("BEGIN")?;
    check_version(&conn)?;
    check_schema(&conn)?;
    check_lease(&conn, lease, now)?;
    for (index, table) in TABLES.iter().enumerate() {
        if !table.copied {
            continue;
        }
        let columns: Vec<&str> = table.columns.iter().map(|c| c.from).collect();
        let mut statement = conn.prepare(&format!(
            "SELECT {} FROM {} ORDER BY {}",
            columns.join(", "),
            table.name,
            table.order
        ))?;
        let mut rows = statement.query([])?;
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns.len());
            for (i, column) in columns.iter().enumerate() {
                values.push(Value::read(row.get_ref(i)?, table.name, column)?);
            }
            batch.push(values);
            if batch.len() == BATCH {
                let rows = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if sender
                    .blocking_send(Ok(Read::Rows { table: index, rows }))
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
        if !batch.is_empty()
            && sender
                .blocking_send(Ok(Read::Rows {
                    table: index,
                    rows: batch,
                }))
                .is_err()
        {
            return Ok(());
        }
    }
    let mut serials = Vec::new();
    for (index, table) in TABLES.iter().enumerate() {
        let Some(serial) = table.serial else { continue };
        let from = table
            .columns
            .iter()
            .find(|c| c.to == serial)
            .map_or(serial, |c| c.from);
        let highest: Option<i64> = conn.query_row(
            &format!("SELECT MAX({from}) FROM {}", table.name),
            [],
            |r| r.get(0),
        )?;
        // An AUTOINCREMENT table's highest number ever given, deleted rows
        // included: PostgreSQL must not give those out again either.
        let given: Option<i64> = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                [table.name],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        serials.push((index, highest.unwrap_or(0).max(given.unwrap_or(0))));
    }
    conn.execute_batch("COMMIT")?;
    let _ = sender.blocking_send(Ok(Read::Done { serials }));
    Ok(())
}

fn open(path: &Path) -> Result<Connection, CopyError> {
    if !path.is_file() {
        return Err(CopyError::Refused(format!(
            "{} is not a database file: check [store] path (or PASSPORT_STORE__PATH)",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| {
        CopyError::Failed(format!(
            "cannot open the SQLite file {}: {e}",
            path.display()
        ))
    })?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Refuses a file whose last migration is not this Passport's last one.
fn check_version(conn: &Connection) -> Result<(), CopyError> {
    let expected = crate::adapters::schema::newest(&sqlx::migrate!("./migrations"));
    let found: Option<i64> = conn
        .query_row(
            "SELECT MAX(version) FROM _sqlx_migrations WHERE success",
            [],
            |r| r.get(0),
        )
        .map_err(|e| {
            CopyError::Refused(format!(
                "this is not a Passport database ({e}): check [store] path (or PASSPORT_STORE__PATH)"
            ))
        })?;
    let found = found.unwrap_or(0);
    if found < expected {
        return Err(CopyError::Refused(format!(
            "the SQLite database is at migration {found} and this Passport writes migration {expected}: run `passport migrate` on it first (with serve stopped), then copy"
        )));
    }
    if found > expected {
        return Err(CopyError::Refused(format!(
            "the SQLite database is at migration {found}, newer than this Passport (migration {expected}): copy it with the Passport version that wrote it"
        )));
    }
    Ok(())
}

/// Refuses a file whose tables or columns are not exactly [`TABLES`]. The
/// schema's own bookkeeping (`_sqlx_migrations`, `passport_schema`) is not
/// copied: PostgreSQL's migrations write their own.
fn check_schema(conn: &Connection) -> Result<(), CopyError> {
    let mut statement = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name NOT IN ('_sqlx_migrations', 'passport_schema') ORDER BY name",
    )?;
    let found: Vec<String> = statement
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for name in &found {
        let Some(table) = TABLES.iter().find(|t| t.name == name) else {
            return Err(CopyError::Refused(format!(
                "the SQLite database has a table `{name}` that this Passport does not know: copy it with the Passport version that wrote it"
            )));
        };
        let mut columns: Vec<String> = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{name}')"))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut expected: Vec<String> = table
            .columns
            .iter()
            .map(|c| c.from)
            .filter(|c| *c != "rowid")
            .map(str::to_owned)
            .collect();
        columns.sort();
        expected.sort();
        if columns != expected {
            return Err(CopyError::Refused(format!(
                "the SQLite table `{name}` has the columns {} where this Passport writes {}: copy it with the Passport version that wrote it",
                columns.join(", "),
                expected.join(", ")
            )));
        }
    }
    if let Some(missing) = TABLES.iter().find(|t| !found.iter().any(|f| f == t.name)) {
        return Err(CopyError::Refused(format!(
            "the SQLite database has no table `{}`: this is not a Passport database at this version; check [store] path, or run `passport migrate` on it first",
            missing.name
        )));
    }
    Ok(())
}

/// Refuses while a process holds the scheduler lease `lease`: `serve` (or
/// `console`) still runs on the file, and what it writes after the snapshot
/// would be lost.
fn check_lease(conn: &Connection, lease: &str, now: Timestamp) -> Result<(), CopyError> {
    let held: Option<(String, i64)> = conn
        .query_row(
            "SELECT holder, expires_at FROM leases WHERE name = ?1",
            [lease],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match held {
        Some((holder, until)) if until > now.as_millis() => Err(CopyError::Refused(format!(
            "a Passport process ({holder}) is running on this database (it holds the scheduler lease until {}): stop `passport serve` first, so that nothing is written after the copy is taken, then copy again (a process that died leaves its lease to run out within 15 s)",
            Timestamp::from_millis(until)
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::sqlite::{Durability, SqliteStore};

    /// The table list matches the SQLite schema after every migration: a
    /// migration that adds a table or a column fails here until the copy
    /// knows it.
    #[tokio::test]
    async fn the_tables_match_the_sqlite_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passport.db");
        let store = SqliteStore::open(&path, Durability::Normal).await.unwrap();
        store.close().await;
        let conn = open(&path).unwrap();
        check_version(&conn).unwrap();
        check_schema(&conn).unwrap();
    }

    #[tokio::test]
    async fn an_unknown_table_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passport.db");
        let store = SqliteStore::open(&path, Durability::Normal).await.unwrap();
        store.close().await;
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE extra (x INTEGER)")
            .unwrap();
        let err = check_schema(&open(&path).unwrap()).unwrap_err();
        assert!(err.to_string().contains("table `extra`"), "{err}");
    }

    #[test]
    fn only_leases_stay_behind() {
        let left: Vec<&str> = TABLES
            .iter()
            .filter(|t| !t.copied)
            .map(|t| t.name)
            .collect();
        assert_eq!(left, ["leases"]);
    }
}
