//! Store operations for keys, leases, scheduled jobs, reconciliation and
//! Logbook checkpoints, run on the store's connections like the rest.

use rusqlite::{params, Connection, OptionalExtension};

use crate::app::effects::{Effects, TimerKind};
use crate::app::ports::{RequestFilter, StoreError};
use crate::domain::request::{AccessRequest, RequestState};
use crate::domain::time::{Span, Timestamp};
use crate::domain::values::{RequestId, SshPublicKey, UserId};

use super::{append_events, id_of, insert_outbox, keep_signed, requests, to_id, WriteConn};

/// Events and notices that belong to no request.
pub(super) fn record(conn: &WriteConn, fx: &Effects, at: Timestamp) -> Result<(), StoreError> {
    if !fx.timers.is_empty() || fx.cancel_all || fx.cancel_expiry || !fx.cancel.is_empty() {
        return Err(StoreError::Other(
            "timers belong to a request: use update".into(),
        ));
    }
    keep_signed(conn, fx)?;
    if !fx.events.is_empty() {
        append_events(conn, &fx.events)?;
    }
    insert_outbox(conn, fx, at)
}

pub(super) fn ssh_key(
    conn: &Connection,
    user: &UserId,
) -> Result<Option<SshPublicKey>, StoreError> {
    let key: Option<String> = conn
        .prepare_cached("SELECT key FROM ssh_keys WHERE user = ?1")?
        .query_row([user.as_str()], |r| r.get(0))
        .optional()?;
    key.map(|k| {
        SshPublicKey::parse(&k)
            .map_err(|e| StoreError::Corrupt(format!("stored SSH key of {user}: {e}")))
    })
    .transpose()
}

pub(super) fn set_ssh_key(
    conn: &WriteConn,
    user: &UserId,
    key: Option<&SshPublicKey>,
    fx: &Effects,
    now: Timestamp,
) -> Result<(), StoreError> {
    match key {
        Some(key) => {
            conn.prepare_cached(
                "INSERT INTO ssh_keys (user, key) VALUES (?1, ?2) \
                 ON CONFLICT (user) DO UPDATE SET key = excluded.key",
            )?
            .execute(params![user.as_str(), key.as_str()])?;
        }
        None => {
            conn.prepare_cached("DELETE FROM ssh_keys WHERE user = ?1")?
                .execute([user.as_str()])?;
        }
    }
    record(conn, fx, now)
}

/// Takes lease `name` for `holder` until `now + ttl`: without `from`, when
/// it is free, expired or `holder`'s already (a renewal); with `from`, from
/// that holder, expired or not. True when taken.
pub(super) fn claim_lease(
    conn: &Connection,
    name: &str,
    holder: &str,
    from: Option<&str>,
    now: Timestamp,
    ttl: Span,
) -> Result<bool, StoreError> {
    let until = now.plus(ttl).as_millis();
    let changed = match from {
        None => conn
            .prepare_cached(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4",
            )?
            .execute(params![name, holder, until, now.as_millis()])?,
        Some(stale) => conn
            .prepare_cached(
                "UPDATE leases SET holder = ?2, expires_at = ?3 WHERE name = ?1 AND holder = ?4",
            )?
            .execute(params![name, holder, until, stale])?,
    };
    Ok(changed > 0)
}

pub(super) fn release_lease(conn: &Connection, name: &str, holder: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM leases WHERE name = ?1 AND holder = ?2")?
        .execute(params![name, holder])?;
    Ok(())
}

pub(super) fn lease_holder(conn: &Connection, name: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT holder FROM leases WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?)
}

pub(super) fn job_next_run(
    conn: &Connection,
    name: &str,
    schedule: &str,
) -> Result<Option<Timestamp>, StoreError> {
    let next: Option<i64> = conn
        .prepare_cached("SELECT next_run FROM jobs WHERE name = ?1 AND schedule = ?2")?
        .query_row(params![name, schedule], |r| r.get(0))
        .optional()?;
    Ok(next.map(Timestamp::from_millis))
}

pub(super) fn set_job_next_run(
    conn: &Connection,
    name: &str,
    schedule: &str,
    next: Timestamp,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO jobs (name, schedule, next_run) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET schedule = excluded.schedule, next_run = excluded.next_run",
    )?
    .execute(params![name, schedule, next.as_millis()])?;
    Ok(())
}

pub(super) fn requests_in(
    conn: &Connection,
    states: &[RequestState],
    filter: RequestFilter,
    limit: u32,
) -> Result<Vec<AccessRequest>, StoreError> {
    let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    let list = serde_json::to_string(&names).map_err(|e| StoreError::Other(e.to_string()))?;
    requests(
        conn,
        "SELECT body FROM requests WHERE state IN (SELECT value FROM json_each(?1)) \
         AND updated_at >= ?2 AND (?3 = 0 OR open_grants > 0) ORDER BY id LIMIT ?4",
        params![
            list,
            filter.changed_since.map_or(i64::MIN, Timestamp::as_millis),
            filter.holding_users,
            i64::from(limit)
        ],
    )
}

pub(super) fn ended_unverified(
    conn: &Connection,
    since: Timestamp,
    limit: u32,
) -> Result<Vec<AccessRequest>, StoreError> {
    requests(
        conn,
        "SELECT body FROM requests \
         WHERE state IN ('completed', 'expired', 'revoked', 'failed') AND open_grants = 0 \
           AND updated_at >= ?1 AND COALESCE(json_extract(body, '$.removal_verified'), 0) = 0 \
         ORDER BY id LIMIT ?2",
        params![since.as_millis(), i64::from(limit)],
    )
}

pub(super) fn has_timer(
    conn: &Connection,
    request: RequestId,
    kind: TimerKind,
) -> Result<bool, StoreError> {
    let found: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM timers WHERE request = ?1 AND kind = ?2 LIMIT 1")?
        .query_row(params![id_of(request), kind.encode()], |r| r.get(0))
        .optional()?;
    Ok(found.is_some())
}

pub(super) fn logbook_head(conn: &Connection) -> Result<Option<(u64, String)>, StoreError> {
    Ok(super::logbook_head(conn)?.map(|(seq, hash)| (seq as u64, hex::encode(hash))))
}

pub(super) fn request_for_message(
    conn: &Connection,
    surface: &str,
    channel: Option<&str>,
    message: &str,
) -> Result<Option<RequestId>, StoreError> {
    let id: Option<i64> = match channel {
        Some(channel) => conn
            .prepare_cached(
                "SELECT request FROM chat_refs WHERE surface = ?1 AND channel = ?2 AND message = ?3",
            )?
            .query_row(params![surface, channel, message], |r| r.get(0))
            .optional()?,
        None => conn
            .prepare_cached("SELECT request FROM chat_refs WHERE surface = ?1 AND message = ?2")?
            .query_row(params![surface, message], |r| r.get(0))
            .optional()?,
    };
    id.map(to_id).transpose()
}

pub(super) fn logbook_hash_at(conn: &Connection, seq: u64) -> Result<Option<String>, StoreError> {
    let hash: Option<Vec<u8>> = conn
        .prepare_cached("SELECT hash FROM logbook WHERE seq = ?1")?
        .query_row([seq as i64], |r| r.get(0))
        .optional()?;
    Ok(hash.map(hex::encode))
}
