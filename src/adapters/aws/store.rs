//! Where the AWS provisioner remembers the Run Commands it sent, so that a
//! restart resumes polling a command in flight instead of sending it again,
//! and a repeated call does not redo what already succeeded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use rusqlite::params;

use crate::adapters::postgres::PgStore;
use crate::adapters::sqlite::SqliteStore;
use crate::adapters::store_rows::Columns;
use crate::app::ports::StoreError;
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

/// The most recent command sent to one instance for a request, as it was
/// sent, and how it ended there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCommand {
    pub command: SentCommand,
    /// `None` while the command may still be running.
    pub settled: Option<Settled>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot record SSM commands: {0}")]
pub struct CommandStoreError(pub String);

impl From<StoreError> for CommandStoreError {
    fn from(e: StoreError) -> Self {
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
// Given late

/// The command store of the application's database, given once that database
/// is open: `serve` builds the provisioner before it opens the store, so the
/// store is given later ([`Self::attach`]); until then every call fails.
#[derive(Clone, Default)]
pub struct LateCommandStore {
    store: Arc<OnceLock<Arc<dyn CommandStore>>>,
}

impl std::fmt::Debug for LateCommandStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LateCommandStore")
            .field("attached", &self.store.get().is_some())
            .finish()
    }
}

impl LateCommandStore {
    /// A command store whose database is given later, with [`Self::attach`].
    pub fn unattached() -> Self {
        Self::default()
    }

    /// Gives the store its database; later calls change nothing.
    pub fn attach(&self, store: Arc<dyn CommandStore>) {
        let _ = self.store.set(store);
    }

    fn store(&self) -> Result<&Arc<dyn CommandStore>, CommandStoreError> {
        self.store.get().ok_or_else(|| {
            CommandStoreError(
                "the database is not open yet (the command store is not attached)".into(),
            )
        })
    }
}

#[async_trait]
impl CommandStore for LateCommandStore {
    async fn record_sent(&self, command: &SentCommand) -> Result<(), CommandStoreError> {
        self.store()?.record_sent(command).await
    }

    async fn record_settled(
        &self,
        command_id: &str,
        instance: &InstanceId,
        settled: &Settled,
    ) -> Result<(), CommandStoreError> {
        self.store()?
            .record_settled(command_id, instance, settled)
            .await
    }

    async fn last_commands(
        &self,
        request: RequestId,
        instances: &[InstanceId],
    ) -> Result<BTreeMap<InstanceId, LastCommand>, CommandStoreError> {
        self.store()?.last_commands(request, instances).await
    }

    async fn prune(&self, before_ms: i64) -> Result<u64, CommandStoreError> {
        self.store()?.prune(before_ms).await
    }
}

// ---------------------------------------------------------------------------
// SQLite

/// The command store in Passport's SQLite database
/// (`migrations/0003_ssm_commands.sql`), written through the store's one
/// writer. Every write is synced to disk before it is answered, whatever
/// `[store] durability` says: a command id lost to a power cut would be sent
/// again after the restart.
#[derive(Clone)]
pub struct SqliteCommandStore {
    store: SqliteStore,
}

impl std::fmt::Debug for SqliteCommandStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteCommandStore").finish_non_exhaustive()
    }
}

impl SqliteCommandStore {
    /// The command store on `store`, the application's own (opened with its
    /// migrations applied).
    pub fn new(store: SqliteStore) -> Self {
        Self { store }
    }

    fn store(&self) -> Result<&SqliteStore, CommandStoreError> {
        Ok(&self.store)
    }
}

/// The commands sent before `?1` whose every invocation has settled: what
/// pruning forgets.
const SETTLED_BEFORE: &str = "SELECT command_id FROM ssm_commands c
     WHERE c.sent_at < ?1
       AND NOT EXISTS (SELECT 1 FROM ssm_invocations i
                       WHERE i.command_id = c.command_id AND i.status IS NULL)";

#[async_trait]
impl CommandStore for SqliteCommandStore {
    async fn prune(&self, before_ms: i64) -> Result<u64, CommandStoreError> {
        let gone = self
            .store()?
            .write_synced(move |conn| {
                let ids: Vec<String> = conn
                    .prepare(SETTLED_BEFORE)?
                    .query_map([before_ms], |row| row.get(0))?
                    .collect::<Result<_, _>>()?;
                for id in &ids {
                    conn.execute("DELETE FROM ssm_invocations WHERE command_id = ?1", [id])?;
                    conn.execute("DELETE FROM ssm_commands WHERE command_id = ?1", [id])?;
                }
                Ok(ids.len() as u64)
            })
            .await?;
        Ok(gone)
    }

    async fn record_sent(&self, command: &SentCommand) -> Result<(), CommandStoreError> {
        let request = request_key(command.request)?;
        let command = command.clone();
        self.store()?
            .write_synced(move |conn| {
                conn.execute(
                    "INSERT INTO ssm_commands
                         (command_id, request, operation, document, fingerprint, expires_at, sent_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        command.command_id,
                        request,
                        command.operation.as_str(),
                        command.document,
                        command.fingerprint,
                        command.expires_at,
                        command.sent_at_ms,
                    ],
                )?;
                for instance in &command.instances {
                    conn.execute(
                        "INSERT INTO ssm_invocations (command_id, instance) VALUES (?1, ?2)",
                        params![command.command_id, instance.as_str()],
                    )?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn record_settled(
        &self,
        command_id: &str,
        instance: &InstanceId,
        settled: &Settled,
    ) -> Result<(), CommandStoreError> {
        let (command_id, instance, settled) =
            (command_id.to_owned(), instance.clone(), settled.clone());
        self.store()?
            .write_synced(move |conn| {
                conn.execute(
                    "UPDATE ssm_invocations SET status = ?3, ok = ?4, detail = ?5
                     WHERE command_id = ?1 AND instance = ?2",
                    params![
                        command_id,
                        instance.as_str(),
                        settled.status,
                        settled.ok,
                        settled.detail,
                    ],
                )?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn last_commands(
        &self,
        request: RequestId,
        instances: &[InstanceId],
    ) -> Result<BTreeMap<InstanceId, LastCommand>, CommandStoreError> {
        let key = request_key(request)?;
        let history = self
            .store()?
            .look_up(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {HISTORY_COLUMNS}
                     FROM ssm_invocations i JOIN ssm_commands c ON c.command_id = i.command_id
                     WHERE c.request = ?1
                     ORDER BY c.sent_at, c.rowid"
                ))?;
                let mut rows = stmt.query([key])?;
                let mut history = Vec::new();
                while let Some(row) = rows.next()? {
                    history.push(invocation(row)?);
                }
                Ok(history)
            })
            .await?;
        last_of_history(request, history, instances)
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL

/// The command store in Passport's PostgreSQL database (the `ssm_commands`
/// and `ssm_invocations` of `migrations/postgres/`), shared by every replica:
/// a command one replica sent, another resumes after it dies. Each write is
/// one transaction committed with `synchronous_commit = on`, whatever the
/// server or database default is, so a command id is on the primary's disk
/// (and, with synchronous replication, its standby's) before it is answered:
/// a command id lost to a crash or a failover would be sent again.
#[derive(Clone)]
pub struct PgCommandStore {
    store: PgStore,
}

impl std::fmt::Debug for PgCommandStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCommandStore").finish_non_exhaustive()
    }
}

impl PgCommandStore {
    /// The command store on `store`, the application's own (connected with
    /// its migrations applied).
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }

    /// A transaction whose commit waits until it is durable.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, CommandStoreError> {
        let mut tx = self.store.pool().begin().await.map_err(pg)?;
        sqlx::query("SET LOCAL synchronous_commit = on")
            .execute(&mut *tx)
            .await
            .map_err(pg)?;
        Ok(tx)
    }
}

fn pg(e: sqlx::Error) -> CommandStoreError {
    CommandStoreError::from(StoreError::from(e))
}

#[async_trait]
impl CommandStore for PgCommandStore {
    async fn prune(&self, before_ms: i64) -> Result<u64, CommandStoreError> {
        let mut tx = self.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT command_id FROM ssm_commands c
             WHERE c.sent_at < $1
               AND NOT EXISTS (SELECT 1 FROM ssm_invocations i
                               WHERE i.command_id = c.command_id AND i.status IS NULL)
             FOR UPDATE SKIP LOCKED",
        )
        .bind(before_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(pg)?;
        sqlx::query("DELETE FROM ssm_invocations WHERE command_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(pg)?;
        sqlx::query("DELETE FROM ssm_commands WHERE command_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(ids.len() as u64)
    }

    async fn record_sent(&self, command: &SentCommand) -> Result<(), CommandStoreError> {
        let request = request_key(command.request)?;
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO ssm_commands
                 (command_id, request, operation, document, fingerprint, expires_at, sent_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&command.command_id)
        .bind(request)
        .bind(command.operation.as_str())
        .bind(&command.document)
        .bind(&command.fingerprint)
        .bind(command.expires_at)
        .bind(command.sent_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(pg)?;
        let instances: Vec<&str> = command.instances.iter().map(InstanceId::as_str).collect();
        sqlx::query(
            "INSERT INTO ssm_invocations (command_id, instance)
             SELECT $1, instance FROM UNNEST($2::TEXT[]) AS instance",
        )
        .bind(&command.command_id)
        .bind(&instances)
        .execute(&mut *tx)
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(())
    }

    async fn record_settled(
        &self,
        command_id: &str,
        instance: &InstanceId,
        settled: &Settled,
    ) -> Result<(), CommandStoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE ssm_invocations SET status = $3, ok = $4, detail = $5
             WHERE command_id = $1 AND instance = $2",
        )
        .bind(command_id)
        .bind(instance.as_str())
        .bind(&settled.status)
        .bind(settled.ok)
        .bind(&settled.detail)
        .execute(&mut *tx)
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(())
    }

    async fn last_commands(
        &self,
        request: RequestId,
        instances: &[InstanceId],
    ) -> Result<BTreeMap<InstanceId, LastCommand>, CommandStoreError> {
        let key = request_key(request)?;
        let query = format!(
            "SELECT {HISTORY_COLUMNS}
             FROM ssm_invocations i JOIN ssm_commands c ON c.command_id = i.command_id
             WHERE c.request = $1
             ORDER BY c.sent_at, c.seq, i.instance"
        );
        let rows = sqlx::query(&query)
            .bind(key)
            .fetch_all(self.store.pool())
            .await
            .map_err(pg)?;
        let history = rows.iter().map(invocation).collect::<Result<Vec<_>, _>>()?;
        last_of_history(request, history, instances)
    }
}

/// One row of a request's history: an invocation and the command it belongs to.
struct Invocation {
    instance: String,
    command_id: String,
    operation: String,
    document: String,
    fingerprint: String,
    expires_at: Option<i64>,
    sent_at_ms: i64,
    settled: Option<Settled>,
}

/// The columns of a request's history, as [`invocation`] reads them.
const HISTORY_COLUMNS: &str = "i.instance, c.command_id, c.operation, c.document, c.fingerprint, \
     c.expires_at, c.sent_at, i.status, i.ok, i.detail";

/// The invocation in a row of [`HISTORY_COLUMNS`].
fn invocation(row: &impl Columns) -> Result<Invocation, StoreError> {
    let settled = match row.maybe_text(7)? {
        Some(status) => Some(Settled {
            status,
            ok: row.maybe_flag(8)?.unwrap_or(false),
            detail: row.maybe_text(9)?,
        }),
        None => None,
    };
    Ok(Invocation {
        instance: row.text(0)?,
        command_id: row.text(1)?,
        operation: row.text(2)?,
        document: row.text(3)?,
        fingerprint: row.text(4)?,
        expires_at: row.maybe_int(5)?,
        sent_at_ms: row.int(6)?,
        settled,
    })
}

/// For each of `instances`, the last command of a request's `history`
/// (invocations oldest first, one command's together) sent to it.
fn last_of_history(
    request: RequestId,
    history: Vec<Invocation>,
    instances: &[InstanceId],
) -> Result<BTreeMap<InstanceId, LastCommand>, CommandStoreError> {
    let mut commands: Vec<Remembered> = Vec::new();
    for row in history {
        let Ok(instance) = InstanceId::parse(&row.instance) else {
            continue;
        };
        if commands
            .last()
            .is_none_or(|(c, _)| c.command_id != row.command_id)
        {
            let operation = Operation::parse(&row.operation).ok_or_else(|| {
                CommandStoreError(format!(
                    "unknown operation {:?} in ssm_commands",
                    row.operation
                ))
            })?;
            let command = SentCommand {
                command_id: row.command_id,
                request,
                operation,
                document: row.document,
                fingerprint: row.fingerprint,
                expires_at: row.expires_at,
                sent_at_ms: row.sent_at_ms,
                instances: Vec::new(),
            };
            commands.push((command, BTreeMap::new()));
        }
        if let Some((command, settled)) = commands.last_mut() {
            command.instances.push(instance.clone());
            settled.insert(instance, row.settled);
        }
    }
    Ok(last_per_instance(&commands, instances))
}

/// For each of `instances`, the last of `commands` (oldest first) sent to it.
fn last_per_instance<'a>(
    commands: impl IntoIterator<Item = &'a Remembered>,
    instances: &[InstanceId],
) -> BTreeMap<InstanceId, LastCommand> {
    let mut last = BTreeMap::new();
    for (command, invocations) in commands {
        for (instance, settled) in invocations {
            if instances.contains(instance) {
                last.insert(
                    instance.clone(),
                    LastCommand {
                        command: command.clone(),
                        settled: settled.clone(),
                    },
                );
            }
        }
    }
    last
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
        let commands = self.lock();
        Ok(last_per_instance(
            commands.iter().filter(|(c, _)| c.request == request),
            instances,
        ))
    }
}

/// Milliseconds since the epoch by the system clock.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
