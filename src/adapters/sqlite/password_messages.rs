//! Password messages to delete: where each direct message that carried a
//! Windows password is, and when it is to be deleted. Each row is the timer of
//! its own deletion, deleted in the transaction that records it done.

use rusqlite::{params, Connection};

use crate::adapters::store_rows::{pending_deletion, DELETION_COLUMNS};
use crate::app::effects::Effects;
use crate::app::ports::{PasswordMessage, PendingDeletion, StoreError};
use crate::domain::time::Timestamp;

use super::{id_of, WriteConn};

pub(super) fn save(conn: &Connection, m: &PasswordMessage) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO password_messages \
         (request, instance, username, surface, channel, message, sent_at, due_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        id_of(m.request),
        m.instance.as_str(),
        m.username.as_str(),
        m.surface,
        m.at.channel,
        m.at.message,
        m.sent_at.as_millis(),
        m.due.as_millis(),
    ])?;
    Ok(())
}

pub(super) fn due(
    conn: &Connection,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<PendingDeletion>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DELETION_COLUMNS} FROM password_messages \
         WHERE due_at <= ?1 ORDER BY due_at, id LIMIT ?2"
    ))?;
    let mut rows = stmt.query(params![now.as_millis(), i64::from(limit)])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(pending_deletion(row)?);
    }
    Ok(out)
}

pub(super) fn retry(conn: &Connection, id: i64, due: Timestamp) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE password_messages SET due_at = ?1, attempts = attempts + 1 WHERE id = ?2",
    )?
    .execute(params![due.as_millis(), id])?;
    Ok(())
}

/// Deletes the row and writes `fx`; nothing when the row is gone already (a
/// pass that overlapped this one recorded the deletion).
pub(super) fn deleted(
    conn: &WriteConn,
    id: i64,
    fx: &Effects,
    now: Timestamp,
) -> Result<(), StoreError> {
    let gone = conn
        .prepare_cached("DELETE FROM password_messages WHERE id = ?1")?
        .execute([id])?;
    if gone == 0 {
        return Ok(());
    }
    super::housekeeping::record(conn, fx, now)
}
