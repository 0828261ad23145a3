//! Sign-in attempts and API tokens. Codes, poll secrets and tokens arrive
//! here already hashed; no statement ever sees one of them in the clear.

use rusqlite::{params, Connection};

use crate::app::effects::Effects;
use crate::app::ports::{IssuedToken, Recording, StoreError};
use crate::domain::signin::{
    LoginAttempt, LoginId, LoginState, LogoutScope, SecretHash, TokenRecord,
};
use crate::domain::time::Timestamp;

use super::{housekeeping, WriteConn};
use crate::adapters::store_rows::{login_of, token_of, LOGIN_COLUMNS, TOKEN_COLUMNS};

pub(super) fn start(
    conn: &WriteConn,
    login: &LoginAttempt,
    code: &SecretHash,
    secret: &SecretHash,
    fx: &Effects,
    now: Timestamp,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO logins (id, code_hash, secret_hash, host, client, address, started_at, expires_at, state) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        login.id.as_str(),
        code.as_str(),
        secret.as_str(),
        login.host,
        login.client,
        login.address,
        login.started_at.as_millis(),
        login.expires_at.as_millis(),
        login.state.as_str(),
    ])?;
    housekeeping::record(conn, fx, now)
}

pub(super) fn by_code(
    conn: &Connection,
    code: &SecretHash,
) -> Result<Option<LoginAttempt>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {LOGIN_COLUMNS} FROM logins WHERE code_hash = ?1 ORDER BY started_at DESC LIMIT 1"
    ))?;
    let mut rows = stmt.query([code.as_str()])?;
    match rows.next()? {
        Some(row) => Ok(Some(login_of(row)?.0)),
        None => Ok(None),
    }
}

pub(super) fn by_id(
    conn: &Connection,
    id: &LoginId,
) -> Result<Option<(LoginAttempt, SecretHash)>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {LOGIN_COLUMNS} FROM logins WHERE id = ?1"))?;
    let mut rows = stmt.query([id.as_str()])?;
    match rows.next()? {
        Some(row) => Ok(Some(login_of(row)?)),
        None => Ok(None),
    }
}

pub(super) fn save(
    conn: &WriteConn,
    login: &LoginAttempt,
    was: LoginState,
    fx: &Effects,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let claim = login.claimed_by.as_ref();
    let changed = conn
        .prepare_cached(
            "UPDATE logins SET state = ?1, claimed_by = ?2, claimed_handle = ?3, claimed_surface = ?4 \
             WHERE id = ?5 AND state = ?6 \
             AND (claimed_by IS NULL OR (claimed_by = ?2 AND claimed_surface = ?4))",
        )?
        .execute(params![
            login.state.as_str(),
            claim.map(|c| c.person.id.as_str()),
            claim.map(|c| c.person.handle.as_str()),
            claim.map(|c| c.surface.as_str()),
            login.id.as_str(),
            was.as_str(),
        ])?;
    if changed == 0 {
        return Ok(false);
    }
    housekeeping::record(conn, fx, now)?;
    Ok(true)
}

pub(super) fn collect(
    conn: &WriteConn,
    issued: &IssuedToken,
    record: Recording,
    now: Timestamp,
) -> Result<Option<i64>, StoreError> {
    let IssuedToken {
        login: id,
        hash: token,
        owner,
        expires_at,
    } = issued;
    let changed = conn
        .prepare_cached(
            "UPDATE logins SET state = 'collected' WHERE id = ?1 AND state = 'confirmed'",
        )?
        .execute([id.as_str()])?;
    if changed == 0 {
        return Ok(None);
    }
    conn.prepare_cached(
        "INSERT INTO api_tokens (token_hash, login, user_id, handle, surface, issued_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        token.as_str(),
        id.as_str(),
        owner.person.id.as_str(),
        owner.person.handle,
        owner.surface,
        now.as_millis(),
        expires_at.as_millis(),
    ])?;
    let token_id = conn.last_insert_rowid();
    housekeeping::record(conn, &record(token_id), now)?;
    Ok(Some(token_id))
}

pub(super) fn token(
    conn: &Connection,
    hash: &SecretHash,
) -> Result<Option<TokenRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ?1"
    ))?;
    let mut rows = stmt.query([hash.as_str()])?;
    rows.next()?.map(token_of).transpose()
}

pub(super) fn refused(
    conn: &WriteConn,
    id: i64,
    fx: &Effects,
    now: Timestamp,
) -> Result<(), StoreError> {
    let first = conn
        .prepare_cached(
            "UPDATE api_tokens SET refusal_recorded = 1 WHERE id = ?1 AND refusal_recorded = 0",
        )?
        .execute([id])?;
    if first == 0 {
        return Ok(());
    }
    housekeeping::record(conn, fx, now)
}

pub(super) fn revoke(
    conn: &WriteConn,
    scope: &LogoutScope,
    record: Recording,
    now: Timestamp,
) -> Result<u64, StoreError> {
    // Tokens that expired already need no revoking; they stay as they were.
    let n = match scope {
        LogoutScope::Token(id) => conn
            .prepare_cached(
                "UPDATE api_tokens SET revoked_at = ?1 \
                 WHERE id = ?2 AND revoked_at IS NULL AND expires_at > ?1",
            )?
            .execute(params![now.as_millis(), id])?,
        LogoutScope::User(user) => conn
            .prepare_cached(
                "UPDATE api_tokens SET revoked_at = ?1 \
                 WHERE user_id = ?2 AND revoked_at IS NULL AND expires_at > ?1",
            )?
            .execute(params![now.as_millis(), user.as_str()])?,
    };
    let n = n as u64;
    housekeeping::record(conn, &record(n as i64), now)?;
    Ok(n)
}
