//! Where the AWS provisioner remembers the Run Commands it sent, so that a
//! restart resumes polling a command in flight instead of sending it again,
//! and a repeated call does not redo what already succeeded.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use crate::domain::values::{InstanceId, RequestId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Grant,
    Revoke,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Revoke => "revoke",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "grant" => Some(Self::Grant),
            "revoke" => Some(Self::Revoke),
            _ => None,
        }
    }
}

/// A command as it was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentCommand {
    pub command_id: String,
    pub request: RequestId,
    pub operation: Operation,
    pub document: String,
    /// A hash of what was asked (document, user, options), without the expiry.
    pub fingerprint: String,
    /// The `ExpiresAt` sent with a grant, in unix seconds.
    pub expires_at: Option<i64>,
    /// Milliseconds since the epoch.
    pub sent_at_ms: i64,
    pub instances: Vec<InstanceId>,
}

/// How a command ended on one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The invocation's final status, e.g. `Success`, `Failed`, `TimedOut`.
    pub status: String,
    pub ok: bool,
    /// Why it failed, in words fit to show people.
    pub detail: Option<String>,
}

/// The most recent command sent to one instance for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCommand {
    pub command_id: String,
    pub operation: Operation,
    pub document: String,
    pub fingerprint: String,
    pub expires_at: Option<i64>,
    pub sent_at_ms: i64,
    /// `None` while the command may still be running.
    pub settled: Option<Settled>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot record SSM commands: {0}")]
pub struct CommandStoreError(pub String);

impl From<sqlx::Error> for CommandStoreError {
    fn from(e: sqlx::Error) -> Self {
        Self(e.to_string())
    }
}

#[async_trait]
pub trait CommandStore: Send + Sync {
    async fn record_sent(&self, command: &SentCommand) -> Result<(), CommandStoreError>;
    async fn record_settled(
        &self,
        command_id: &str,
        instance: &InstanceId,
        settled: &Settled,
    ) -> Result<(), CommandStoreError>;
    /// For each of `instances`, the last command sent to it for `request`.
    async fn last_commands(
        &self,
        request: RequestId,
        instances: &[InstanceId],
    ) -> Result<BTreeMap<InstanceId, LastCommand>, CommandStoreError>;
    /// Forgets commands sent before `before_ms` whose every invocation has
    /// settled; returns how many. Commands still open are kept so they can be resumed.
    async fn prune(&self, before_ms: i64) -> Result<u64, CommandStoreError>;
}

fn request_key(request: RequestId) -> Result<i64, CommandStoreError> {
    i64::try_from(request.number())
        .map_err(|_| CommandStoreError(format!("{request} is too large")))
}

// ---------------------------------------------------------------------------
// SQLite

/// The command store in Passport's SQLite database (`migrations/0003_ssm_commands.sql`).
#[derive(Clone, Debug)]
pub struct SqliteCommandStore {
    pool: SqlitePool,
}

impl SqliteCommandStore {
    /// Opens the database at `path` (normally the store's own file), creating
    /// it when missing, and applies the migrations.
    pub async fn open(path: &Path) -> Result<Self, CommandStoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| CommandStoreError(format!("migrations failed: {e}")))?;
        Ok(Self { pool })
    }

    async fn prune_settled(&self, before_ms: i64) -> Result<u64, CommandStoreError> {
        let done = "SELECT command_id FROM ssm_commands c
                    WHERE c.sent_at < ?1
                      AND NOT EXISTS (SELECT 1 FROM ssm_invocations i
                                      WHERE i.command_id = c.command_id AND i.status IS NULL)";
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "DELETE FROM ssm_invocations WHERE command_id IN ({done})"
        ))
        .bind(before_ms)
        .execute(&mut *tx)
        .await?;
        let gone = sqlx::query(
            "DELETE FROM ssm_commands
             WHERE sent_at < ?1
               AND NOT EXISTS (SELECT 1 FROM ssm_invocations i
                               WHERE i.command_id = ssm_commands.command_id)",
        )
        .bind(before_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl CommandStore for SqliteCommandStore {
    async fn prune(&self, before_ms: i64) -> Result<u64, CommandStoreError> {
        self.prune_settled(before_ms).await
    }

    async fn record_sent(&self, command: &SentCommand) -> Result<(), CommandStoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO ssm_commands
                 (command_id, request, operation, document, fingerprint, expires_at, sent_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(&command.command_id)
        .bind(request_key(command.request)?)
        .bind(command.operation.as_str())
        .bind(&command.document)
        .bind(&command.fingerprint)
        .bind(command.expires_at)
        .bind(command.sent_at_ms)
        .execute(&mut *tx)
        .await?;
        for instance in &command.instances {
            sqlx::query("INSERT INTO ssm_invocations (command_id, instance) VALUES (?1, ?2)")
                .bind(&command.command_id)
                .bind(instance.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn record_settled(
        &self,
        command_id: &str,
        instance: &InstanceId,
        settled: &Settled,
    ) -> Result<(), CommandStoreError> {
        let now = now_ms();
        sqlx::query(
            "UPDATE ssm_invocations SET status = ?3, ok = ?4, detail = ?5, settled_at = ?6
             WHERE command_id = ?1 AND instance = ?2",
        )
        .bind(command_id)
        .bind(instance.as_str())
        .bind(&settled.status)
        .bind(settled.ok)
        .bind(&settled.detail)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn last_commands(
        &self,
        request: RequestId,
        instances: &[InstanceId],
    ) -> Result<BTreeMap<InstanceId, LastCommand>, CommandStoreError> {
        let rows = sqlx::query(
            "SELECT i.instance, c.command_id, c.operation, c.document, c.fingerprint,
                    c.expires_at, c.sent_at, i.status, i.ok, i.detail
             FROM ssm_invocations i JOIN ssm_commands c ON c.command_id = i.command_id
             WHERE c.request = ?1
             ORDER BY c.sent_at, c.rowid",
        )
        .bind(request_key(request)?)
        .fetch_all(&self.pool)
        .await?;
        let mut last = BTreeMap::new();
        for row in rows {
            let instance: String = row.try_get("instance")?;
            let Ok(instance) = InstanceId::parse(&instance) else {
                continue;
            };
            if !instances.contains(&instance) {
                continue;
            }
            let operation: String = row.try_get("operation")?;
            let operation = Operation::parse(&operation).ok_or_else(|| {
                CommandStoreError(format!("unknown operation {operation:?} in ssm_commands"))
            })?;
            let status: Option<String> = row.try_get("status")?;
            let settled = match status {
                Some(status) => Some(Settled {
                    status,
                    ok: row.try_get::<Option<bool>, _>("ok")?.unwrap_or(false),
                    detail: row.try_get("detail")?,
                }),
                None => None,
            };
            last.insert(
                instance,
                LastCommand {
                    command_id: row.try_get("command_id")?,
                    operation,
                    document: row.try_get("document")?,
                    fingerprint: row.try_get("fingerprint")?,
                    expires_at: row.try_get("expires_at")?,
                    sent_at_ms: row.try_get("sent_at")?,
                    settled,
                },
            );
        }
        Ok(last)
    }
}

// ---------------------------------------------------------------------------
// Memory

/// A command store that forgets everything when dropped: for tests and for
/// tools that never restart.
#[derive(Debug, Default)]
pub struct MemoryCommandStore {
    commands: Mutex<Vec<Remembered>>,
}

/// A command and, per instance, how it ended (`None` while running).
type Remembered = (SentCommand, BTreeMap<InstanceId, Option<Settled>>);

impl MemoryCommandStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every command sent so far, oldest first.
    pub fn sent(&self) -> Vec<SentCommand> {
        self.lock().iter().map(|(c, _)| c.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Remembered>> {
        self.commands.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl CommandStore for MemoryCommandStore {
    async fn prune(&self, before_ms: i64) -> Result<u64, CommandStoreError> {
        let mut commands = self.lock();
        let before = commands.len();
        commands.retain(|(c, invocations)| {
            c.sent_at_ms >= before_ms || invocations.values().any(Option::is_none)
        });
        Ok((before - commands.len()) as u64)
    }

    async fn record_sent(&self, command: &SentCommand) -> Result<(), CommandStoreError> {
        let invocations = command
            .instances
            .iter()
            .map(|i| (i.clone(), None))
            .collect();
        self.lock().push((command.clone(), invocations));
        Ok(())
    }

    async fn record_settled(
        &self,
        command_id: &str,
        instance: &InstanceId,
        settled: &Settled,
    ) -> Result<(), CommandStoreError> {
        let mut commands = self.lock();
        if let Some((_, invocations)) = commands
            .iter_mut()
            .find(|(c, _)| c.command_id == command_id)
        {
            if let Some(slot) = invocations.get_mut(instance) {
                *slot = Some(settled.clone());
            }
        }
        Ok(())
    }

    async fn last_commands(
        &self,
        request: RequestId,
        instances: &[InstanceId],
    ) -> Result<BTreeMap<InstanceId, LastCommand>, CommandStoreError> {
        let mut last = BTreeMap::new();
        for (command, invocations) in self.lock().iter().filter(|(c, _)| c.request == request) {
            for (instance, settled) in invocations {
                if instances.contains(instance) {
                    last.insert(
                        instance.clone(),
                        LastCommand {
                            command_id: command.command_id.clone(),
                            operation: command.operation,
                            document: command.document.clone(),
                            fingerprint: command.fingerprint.clone(),
                            expires_at: command.expires_at,
                            sent_at_ms: command.sent_at_ms,
                            settled: settled.clone(),
                        },
                    );
                }
            }
        }
        Ok(last)
    }
}

/// Milliseconds since the epoch by the system clock.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
