//! The store on SQLite: WAL mode, a busy timeout, foreign keys, migrations
//! from `migrations/` applied on open.
//!
//! All writes go through one connection and start with `BEGIN IMMEDIATE`, so
//! changes to a request are serialized: two approvers clicking at once, or a
//! completion racing the expiry, produce exactly one transition. Reads use a
//! separate small pool and never wait for writers (WAL).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};

use crate::app::effects::{Effects, Timer, TimerId, TimerKind};
use crate::app::ports::{
    Creation, MessageRef, Mutation, OutboxCounts, Pending, Store, StoreError, Verification,
};
use crate::domain::command::ListFilter;
use crate::domain::logbook::{chain_hash, check_link, Hash, LogEvent, GENESIS};
use crate::domain::notice::Notice;
use crate::domain::request::{AccessRequest, Refusal, RequestState};
use crate::domain::time::Timestamp;
use crate::domain::values::{RequestId, UserId};

/// How durable each commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Survives a crash of the process; a power cut may lose the last commits.
    Normal,
    /// Every commit is synced to disk before it is answered.
    Full,
}

#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

fn db_error(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        let code = db.code().unwrap_or_default();
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
        if let Ok(n) = code.parse::<i64>() {
            if n & 0xff == 5 || n & 0xff == 6 {
                return StoreError::Busy;
            }
        }
    }
    StoreError::Other(e.to_string())
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn to_id(n: i64) -> Result<RequestId, StoreError> {
    u64::try_from(n)
        .ok()
        .and_then(RequestId::new)
        .ok_or_else(|| StoreError::Corrupt(format!("bad request id {n}")))
}

fn id_of(id: RequestId) -> i64 {
    id.number() as i64
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub async fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db_error)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Normal => SqliteSynchronous::Normal,
                Durability::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .statement_cache_capacity(256);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await
            .map_err(db_error)?;
        sqlx::migrate!("./migrations")
            .run(&writer)
            .await
            .map_err(|e| StoreError::Other(format!("migrations failed: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(db_error)?;
        Ok(Self { writer, reader })
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    async fn write_request(
        tx: &mut Transaction<'_, Sqlite>,
        req: &AccessRequest,
        insert: bool,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(req).map_err(corrupt)?;
        let expires = req.expires_at.map(Timestamp::as_millis);
        let q = if insert {
            sqlx::query(
                "INSERT INTO requests (id, state, requester, created_at, updated_at, expires_at, open_grants, body) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(id_of(req.id))
            .bind(req.state.as_str())
            .bind(req.requester.id.as_str())
            .bind(req.created_at.as_millis())
            .bind(at.as_millis())
            .bind(expires)
            .bind(req.open_grants() as i64)
            .bind(body)
        } else {
            sqlx::query("UPDATE requests SET state = ?, updated_at = ?, expires_at = ?, open_grants = ?, body = ? WHERE id = ?")
                .bind(req.state.as_str())
                .bind(at.as_millis())
                .bind(expires)
                .bind(req.open_grants() as i64)
                .bind(body)
                .bind(id_of(req.id))
        };
        q.execute(&mut **tx).await.map_err(db_error)?;
        Ok(())
    }

    async fn write_effects(
        tx: &mut Transaction<'_, Sqlite>,
        request: RequestId,
        fx: &Effects,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let rid = id_of(request);
        if !fx.events.is_empty() {
            let head: Option<(i64, Vec<u8>)> =
                sqlx::query_as("SELECT seq, hash FROM logbook ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db_error)?;
            let (mut seq, mut prev) = match head {
                Some((seq, hash)) => (
                    seq as u64,
                    <Hash>::try_from(hash.as_slice()).map_err(|_| {
                        StoreError::Corrupt(format!("Logbook event {seq} has a bad hash"))
                    })?,
                ),
                None => (0, GENESIS),
            };
            for e in &fx.events {
                seq += 1;
                let details = e.details.to_string();
                let hash = chain_hash(
                    &prev,
                    seq,
                    e.at,
                    &e.actor,
                    e.request.as_deref(),
                    &e.action,
                    &details,
                );
                sqlx::query("INSERT INTO logbook (seq, at, actor, request, action, details, hash) VALUES (?, ?, ?, ?, ?, ?, ?)")
                    .bind(seq as i64)
                    .bind(e.at.as_millis())
                    .bind(&e.actor)
                    .bind(e.request.as_deref())
                    .bind(&e.action)
                    .bind(&details)
                    .bind(&hash[..])
                    .execute(&mut **tx)
                    .await
                    .map_err(db_error)?;
                prev = hash;
            }
        }
        for (surface, notice) in &fx.outbox {
            let text = serde_json::to_string(notice).map_err(corrupt)?;
            sqlx::query(
                "INSERT INTO outbox (surface, lane, request, notice, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(surface)
            .bind(notice.lane())
            .bind(notice.request().map(id_of))
            .bind(text)
            .bind(at.as_millis())
            .bind(at.as_millis())
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
        }
        if fx.cancel_all {
            sqlx::query("DELETE FROM timers WHERE request = ?")
                .bind(rid)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
        }
        if fx.cancel_expiry {
            sqlx::query("DELETE FROM timers WHERE request = ? AND (kind = 'expiry' OR kind LIKE 'warning:%')")
                .bind(rid)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
        }
        for kind in &fx.cancel {
            sqlx::query("DELETE FROM timers WHERE request = ? AND kind = ?")
                .bind(rid)
                .bind(kind.encode())
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
        }
        for t in &fx.timers {
            sqlx::query("INSERT INTO timers (request, kind, due_at, attempts) VALUES (?, ?, ?, ?)")
                .bind(rid)
                .bind(t.kind.encode())
                .bind(t.due.as_millis())
                .bind(i64::from(t.attempts))
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    fn change_time(fx: &Effects, fallback: Timestamp) -> Timestamp {
        fx.events.first().map(|e| e.at).unwrap_or(fallback)
    }
}

async fn delete_timer_in(
    tx: &mut Transaction<'_, Sqlite>,
    id: Option<TimerId>,
) -> Result<(), StoreError> {
    if let Some(id) = id {
        sqlx::query("DELETE FROM timers WHERE id = ?")
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
    }
    Ok(())
}

fn decode_request(body: &str) -> Result<AccessRequest, StoreError> {
    serde_json::from_str(body).map_err(corrupt)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(
        &self,
        build: Creation,
    ) -> Result<Result<(AccessRequest, Effects), Refusal>, StoreError> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)?;
        let (next,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) + 1 FROM requests")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        let id = to_id(next)?;
        match build(id) {
            Err(refusal) => {
                tx.rollback().await.map_err(db_error)?;
                Ok(Err(refusal))
            }
            Ok((req, fx)) => {
                if req.id != id {
                    return Err(StoreError::Other(format!(
                        "request built as {} instead of {id}",
                        req.id
                    )));
                }
                let at = Self::change_time(&fx, req.created_at);
                Self::write_request(&mut tx, &req, true, at).await?;
                Self::write_effects(&mut tx, id, &fx, at).await?;
                tx.commit().await.map_err(db_error)?;
                Ok(Ok((req, fx)))
            }
        }
    }

    async fn update(
        &self,
        id: RequestId,
        fired: Option<TimerId>,
        change: Mutation,
    ) -> Result<Result<(AccessRequest, Effects), Refusal>, StoreError> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)?;
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT body, updated_at FROM requests WHERE id = ?")
                .bind(id_of(id))
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        let Some((body, updated_at)) = row else {
            if fired.is_some() {
                delete_timer_in(&mut tx, fired).await?;
                tx.commit().await.map_err(db_error)?;
            }
            return Err(StoreError::NotFound(id));
        };
        let mut req = decode_request(&body)?;
        match change(&mut req) {
            Err(refusal) => {
                if fired.is_some() {
                    delete_timer_in(&mut tx, fired).await?;
                    tx.commit().await.map_err(db_error)?;
                } else {
                    tx.rollback().await.map_err(db_error)?;
                }
                Ok(Err(refusal))
            }
            Ok(fx) => {
                let at = Self::change_time(&fx, Timestamp::from_millis(updated_at));
                Self::write_request(&mut tx, &req, false, at).await?;
                if fired.is_some() {
                    delete_timer_in(&mut tx, fired).await?;
                }
                Self::write_effects(&mut tx, id, &fx, at).await?;
                tx.commit().await.map_err(db_error)?;
                Ok(Ok((req, fx)))
            }
        }
    }

    async fn get(&self, id: RequestId) -> Result<Option<AccessRequest>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT body FROM requests WHERE id = ?")
            .bind(id_of(id))
            .fetch_optional(&self.reader)
            .await
            .map_err(db_error)?;
        row.map(|(body,)| decode_request(&body)).transpose()
    }

    async fn list(
        &self,
        filter: ListFilter,
        user: &UserId,
        limit: u32,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        let active = [
            RequestState::Approved,
            RequestState::Provisioning,
            RequestState::Active,
        ];
        let q = match filter {
            ListFilter::Default => sqlx::query_as::<_, (String,)>(
                "SELECT body FROM requests WHERE requester = ? OR state IN ('pending', 'approved', 'provisioning', 'active') ORDER BY id DESC LIMIT ?",
            )
            .bind(user.as_str()),
            ListFilter::Mine => sqlx::query_as("SELECT body FROM requests WHERE requester = ? ORDER BY id DESC LIMIT ?").bind(user.as_str()),
            ListFilter::Pending => sqlx::query_as("SELECT body FROM requests WHERE state = ? ORDER BY id DESC LIMIT ?").bind(RequestState::Pending.as_str()),
            ListFilter::Active => sqlx::query_as("SELECT body FROM requests WHERE state IN (?, ?, ?) ORDER BY id DESC LIMIT ?")
                .bind(active[0].as_str())
                .bind(active[1].as_str())
                .bind(active[2].as_str()),
        };
        let rows = q
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        rows.iter().map(|(body,)| decode_request(body)).collect()
    }

    async fn due_timers(&self, now: Timestamp, limit: u32) -> Result<Vec<Timer>, StoreError> {
        let rows: Vec<(i64, i64, String, i64, i64)> =
            sqlx::query_as("SELECT id, request, kind, due_at, attempts FROM timers WHERE due_at <= ? ORDER BY due_at, id LIMIT ?")
                .bind(now.as_millis())
                .bind(i64::from(limit))
                .fetch_all(&self.writer)
                .await
                .map_err(db_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, request, kind, due, attempts) in rows {
            let Some(kind) = TimerKind::decode(&kind) else {
                return Err(StoreError::Corrupt(format!("unknown timer kind {kind:?}")));
            };
            out.push(Timer {
                id,
                request: to_id(request)?,
                kind,
                due: Timestamp::from_millis(due),
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            });
        }
        Ok(out)
    }

    async fn next_timer_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let row: (Option<i64>,) = sqlx::query_as("SELECT MIN(due_at) FROM timers")
            .fetch_one(&self.reader)
            .await
            .map_err(db_error)?;
        Ok(row.0.map(Timestamp::from_millis))
    }

    async fn reschedule_timer(&self, id: TimerId, due: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE timers SET due_at = ?, attempts = attempts + 1 WHERE id = ?")
            .bind(due.as_millis())
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn delete_timer(&self, id: TimerId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM timers WHERE id = ?")
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn pending_notices(&self, limit: u32) -> Result<Vec<Pending>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, surface, lane, notice, attempts, next_attempt_at FROM outbox \
             WHERE delivered_at IS NULL AND dead_at IS NULL ORDER BY id LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|r| {
                let notice: Notice = serde_json::from_str(r.get::<&str, _>(3)).map_err(corrupt)?;
                Ok(Pending {
                    id: r.get(0),
                    surface: r.get(1),
                    lane: r.get(2),
                    notice,
                    attempts: u32::try_from(r.get::<i64, _>(4)).unwrap_or(u32::MAX),
                    next_attempt_at: Timestamp::from_millis(r.get(5)),
                })
            })
            .collect()
    }

    async fn mark_delivered(&self, id: i64, now: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET delivered_at = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?")
            .bind(now.as_millis())
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn mark_retry(
        &self,
        id: i64,
        next_attempt_at: Timestamp,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET next_attempt_at = ?, attempts = attempts + 1, last_error = ? WHERE id = ?")
            .bind(next_attempt_at.as_millis())
            .bind(error)
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn mark_dead(&self, id: i64, now: Timestamp, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET dead_at = ?, attempts = attempts + 1, last_error = ? WHERE id = ?",
        )
        .bind(now.as_millis())
        .bind(error)
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let (pending, delivered, dead): (i64, i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(delivered_at IS NULL AND dead_at IS NULL), 0), \
                    COALESCE(SUM(delivered_at IS NOT NULL), 0), COALESCE(SUM(dead_at IS NOT NULL), 0) FROM outbox",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(db_error)?;
        Ok(OutboxCounts {
            pending: pending as u64,
            delivered: delivered as u64,
            dead: dead as u64,
        })
    }

    async fn chat_ref(
        &self,
        request: RequestId,
        surface: &str,
    ) -> Result<Option<MessageRef>, StoreError> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT channel, message FROM chat_refs WHERE request = ? AND surface = ?",
        )
        .bind(id_of(request))
        .bind(surface)
        .fetch_optional(&self.writer)
        .await
        .map_err(db_error)?;
        Ok(row.map(|(channel, message)| MessageRef { channel, message }))
    }

    async fn save_chat_ref(
        &self,
        request: RequestId,
        surface: &str,
        at: &MessageRef,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT OR REPLACE INTO chat_refs (request, surface, channel, message) VALUES (?, ?, ?, ?)")
            .bind(id_of(request))
            .bind(surface)
            .bind(&at.channel)
            .bind(&at.message)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn audit_events(
        &self,
        request: Option<RequestId>,
        since: Option<Timestamp>,
    ) -> Result<Vec<LogEvent>, StoreError> {
        let rows: Vec<(i64, i64, String, Option<String>, String, String)> = sqlx::query_as(
            "SELECT seq, at, actor, request, action, details FROM logbook \
             WHERE (?1 IS NULL OR request = ?1) AND (?2 IS NULL OR at >= ?2) ORDER BY seq",
        )
        .bind(request.map(|r| r.to_string()))
        .bind(since.map(Timestamp::as_millis))
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(seq, at, actor, request, action, details)| LogEvent {
                seq: seq as u64,
                at: Timestamp::from_millis(at),
                actor,
                request,
                action,
                details,
            })
            .collect())
    }

    async fn verify_logbook(&self) -> Result<Verification, StoreError> {
        let mut rows =
            sqlx::query_as::<_, (i64, i64, String, Option<String>, String, String, Vec<u8>)>(
                "SELECT seq, at, actor, request, action, details, hash FROM logbook ORDER BY seq",
            )
            .fetch(&self.reader);
        let (mut prev_seq, mut prev) = (0u64, GENESIS);
        while let Some((seq, at, actor, request, action, details, hash)) =
            rows.try_next().await.map_err(db_error)?
        {
            let event = LogEvent {
                seq: seq as u64,
                at: Timestamp::from_millis(at),
                actor,
                request,
                action,
                details,
            };
            let Ok(stored) = <Hash>::try_from(hash.as_slice()) else {
                return Ok(Verification::Broken(
                    crate::domain::logbook::ChainBreak::Mismatch { seq: event.seq },
                ));
            };
            if let Err(brk) = check_link(prev_seq, &prev, &event, &stored) {
                return Ok(Verification::Broken(brk));
            }
            prev_seq = event.seq;
            prev = stored;
        }
        Ok(Verification::Intact {
            events: prev_seq,
            head: hex::encode(prev),
        })
    }
}
