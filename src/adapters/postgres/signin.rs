//! Sign-in attempts and API tokens on PostgreSQL, by hash only. Each change
//! is one conditional statement, so processes racing on one attempt or
//! token find exactly one of them changed it.

use sqlx::{PgConnection, PgPool};

use crate::adapters::store_rows::{login_of, token_of, LOGIN_COLUMNS, TOKEN_COLUMNS};
use crate::app::ports::{IssuedToken, StoreError};
use crate::domain::signin::{
    LoginAttempt, LoginId, LoginState, LogoutScope, SecretHash, TokenRecord,
};
use crate::domain::time::Timestamp;

pub(super) async fn start(
    conn: &mut PgConnection,
    login: &LoginAttempt,
    code: &SecretHash,
    secret: &SecretHash,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO logins (id, code_hash, secret_hash, host, client, address, started_at, expires_at, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(login.id.as_str())
    .bind(code.as_str())
    .bind(secret.as_str())
    .bind(&login.host)
    .bind(&login.client)
    .bind(&login.address)
    .bind(login.started_at.as_millis())
    .bind(login.expires_at.as_millis())
    .bind(login.state.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn by_code(
    pool: &PgPool,
    code: &SecretHash,
) -> Result<Option<LoginAttempt>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {LOGIN_COLUMNS} FROM logins WHERE code_hash = $1 ORDER BY started_at DESC LIMIT 1"
    ))
    .bind(code.as_str())
    .fetch_optional(pool)
    .await?;
    row.map(|r| login_of(&r).map(|(login, _)| login))
        .transpose()
}

pub(super) async fn by_id(
    pool: &PgPool,
    id: &LoginId,
) -> Result<Option<(LoginAttempt, SecretHash)>, StoreError> {
    let row = sqlx::query(&format!("SELECT {LOGIN_COLUMNS} FROM logins WHERE id = $1"))
        .bind(id.as_str())
        .fetch_optional(pool)
        .await?;
    row.map(|r| login_of(&r)).transpose()
}

/// Saves `login`'s state and claim if its stored state is still `was` (and
/// its claim, if any, is the same person's). False when it was not.
pub(super) async fn save(
    conn: &mut PgConnection,
    login: &LoginAttempt,
    was: LoginState,
) -> Result<bool, StoreError> {
    let claim = login.claimed_by.as_ref();
    let changed = sqlx::query(
        "UPDATE logins SET state = $1, claimed_by = $2, claimed_handle = $3, claimed_surface = $4 \
         WHERE id = $5 AND state = $6 \
         AND (claimed_by IS NULL OR (claimed_by = $2 AND claimed_surface = $4))",
    )
    .bind(login.state.as_str())
    .bind(claim.map(|c| c.person.id.as_str()))
    .bind(claim.map(|c| c.person.handle.as_str()))
    .bind(claim.map(|c| c.surface.as_str()))
    .bind(login.id.as_str())
    .bind(was.as_str())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(changed > 0)
}

/// Marks the confirmed attempt collected and stores its token's hash;
/// answers the token's id, or `None` when it was not confirmed.
pub(super) async fn collect(
    conn: &mut PgConnection,
    issued: &IssuedToken,
    now: Timestamp,
) -> Result<Option<i64>, StoreError> {
    let IssuedToken {
        login: id,
        hash: token,
        owner,
        expires_at,
    } = issued;
    let changed =
        sqlx::query("UPDATE logins SET state = 'collected' WHERE id = $1 AND state = 'confirmed'")
            .bind(id.as_str())
            .execute(&mut *conn)
            .await?
            .rows_affected();
    if changed == 0 {
        return Ok(None);
    }
    let token_id: i64 = sqlx::query_scalar(
        "INSERT INTO api_tokens (token_hash, login, user_id, handle, surface, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(token.as_str())
    .bind(id.as_str())
    .bind(owner.person.id.as_str())
    .bind(&owner.person.handle)
    .bind(&owner.surface)
    .bind(now.as_millis())
    .bind(expires_at.as_millis())
    .fetch_one(&mut *conn)
    .await?;
    Ok(Some(token_id))
}

pub(super) async fn token(
    pool: &PgPool,
    hash: &SecretHash,
) -> Result<Option<TokenRecord>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1"
    ))
    .bind(hash.as_str())
    .fetch_optional(pool)
    .await?;
    row.map(|r| token_of(&r)).transpose()
}

/// Marks token `id`'s refusal recorded; false when it was already.
pub(super) async fn refused(conn: &mut PgConnection, id: i64) -> Result<bool, StoreError> {
    let first = sqlx::query(
        "UPDATE api_tokens SET refusal_recorded = TRUE WHERE id = $1 AND NOT refusal_recorded",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(first > 0)
}

/// Revokes the live tokens in `scope`; answers how many.
pub(super) async fn revoke(
    conn: &mut PgConnection,
    scope: &LogoutScope,
    now: Timestamp,
) -> Result<u64, StoreError> {
    // Tokens that expired already need no revoking; they stay as they were.
    let n = match scope {
        LogoutScope::Token(id) => {
            sqlx::query(
                "UPDATE api_tokens SET revoked_at = $1 \
                 WHERE id = $2 AND revoked_at IS NULL AND expires_at > $1",
            )
            .bind(now.as_millis())
            .bind(*id)
            .execute(&mut *conn)
            .await?
        }
        LogoutScope::User(user) => {
            sqlx::query(
                "UPDATE api_tokens SET revoked_at = $1 \
                 WHERE user_id = $2 AND revoked_at IS NULL AND expires_at > $1",
            )
            .bind(now.as_millis())
            .bind(user.as_str())
            .execute(&mut *conn)
            .await?
        }
    };
    Ok(n.rows_affected())
}
