//! Logbook appends, the switch to a key, and verification on PostgreSQL.
//!
//! Several processes append to one chain. Each append takes a transaction
//! advisory lock ([`LOGBOOK_LOCK`]) and only then reads the head, so the
//! next writer waits until this transaction has committed or rolled back and
//! reads the head it left: sequence numbers run without gaps (a rolled-back
//! append leaves nothing to skip) and no two events link after the same one
//! (no forks). A single change takes the lock last, right before its events;
//! a group of changes ([`super::group_commit`]) takes it first, links all its
//! events in memory ([`Appender`]) and writes them in one statement.

use futures::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use super::statement::Writes;
use crate::adapters::store_rows::{
    adoption, key_switch, log_event, next_linking, refuse_key_switches, Adoption, LastSwitch,
    LOG_EVENT_COLUMNS,
};
use crate::app::ports::{StoreError, Verification};
use crate::domain::logbook::{
    chain_link, ChainCheck, ChainKeys, Hash, KeyAdoption, Linking, LogEvent, NewEvent, GENESIS,
    KEY_SWITCH,
};
use crate::domain::time::Timestamp;

/// The advisory lock that serialises Logbook appends (any number, the same
/// in every process: "passport" in ASCII).
pub(crate) const LOGBOOK_LOCK: i64 = 0x7061_7373_706f_7274;

/// The chain's end as a writer holding the lock sees it.
struct Head {
    seq: u64,
    hash: Hash,
    /// The last switch to a key: its number and the key it names.
    switch: Option<LastSwitch>,
}

/// Takes the creation lock and then the Logbook's, for the rest of the
/// transaction: what a group of changes takes first, and `store copy` too,
/// in this one order everywhere.
pub(crate) async fn lock_creations_and_logbook(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(&creation_and_logbook_locks())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The statement that takes the creation lock and then the Logbook's.
pub(super) fn creation_and_logbook_locks() -> String {
    // A target list is evaluated left to right.
    format!(
        "SELECT pg_advisory_xact_lock({}), pg_advisory_xact_lock({LOGBOOK_LOCK})",
        super::CREATE_LOCK
    )
}

/// The Logbook's head, its last switch to a key and the oldest release that
/// may write here, as the first five columns of a statement
/// `SELECT {HEAD_COLUMNS}, … {HEAD_FROM}` run after the Logbook's lock (a
/// statement reads what was committed when it started). Every write that
/// links Logbook events reads them, so a replica a newer release outdated
/// while it ran (`passport_schema.compatible_from` raised past its newest
/// migration) writes nothing more, not only after its readiness fails.
pub(super) const HEAD_COLUMNS: &str = "h.seq, h.hash, s.seq AS switch_seq, \
     s.details AS switch_details, (SELECT compatible_from FROM passport_schema)";
/// See [`HEAD_COLUMNS`]. The action is written out, not bound, so that the
/// partial index `logbook_key_switches` serves it.
pub(super) const HEAD_FROM: &str = "FROM (SELECT 1) AS one \
     LEFT JOIN (SELECT seq, hash FROM logbook ORDER BY seq DESC LIMIT 1) AS h ON TRUE \
     LEFT JOIN (SELECT seq, details FROM logbook WHERE action = 'logbook_keyed' \
                ORDER BY seq DESC LIMIT 1) AS s ON TRUE";

/// Takes the Logbook's lock for the rest of the transaction, and then reads
/// its head and last switch to a key, in one statement after the lock.
async fn lock_head(conn: &mut PgConnection) -> Result<Head, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOGBOOK_LOCK)
        .execute(&mut *conn)
        .await?;
    debug_assert_eq!(KEY_SWITCH, "logbook_keyed");
    let row = sqlx::query(&format!("SELECT {HEAD_COLUMNS} {HEAD_FROM}"))
        .fetch_one(&mut *conn)
        .await?;
    head_of(&row)
}

/// The head in the first five columns of `row` ([`HEAD_COLUMNS`]), or why
/// this release may not write here any more.
fn head_of(row: &PgRow) -> Result<Head, StoreError> {
    if let Some(outdated) = super::outdated(row.try_get(4)?) {
        return Err(outdated);
    }
    let seq: Option<i64> = row.try_get(0)?;
    let hash: Option<Vec<u8>> = row.try_get(1)?;
    let switch_seq: Option<i64> = row.try_get(2)?;
    let switch_details: Option<String> = row.try_get(3)?;
    let (seq, hash) = match (seq, hash) {
        (Some(seq), Some(hash)) => (
            seq as u64,
            Hash::try_from(hash.as_slice())
                .map_err(|_| StoreError::Corrupt(format!("Logbook event {seq} has a bad hash")))?,
        ),
        _ => (0, GENESIS),
    };
    let switch = switch_seq.map(|s| key_switch(s, switch_details.as_deref().unwrap_or_default()));
    Ok(Head { seq, hash, switch })
}

/// Events linked in memory after a head read under the Logbook's lock, and
/// written in one statement: a group of changes links all its events with
/// one read of the head and one insert.
#[derive(Clone)]
pub(super) struct Appender<'k> {
    /// How the next event links, or why no event may be appended.
    linking: Result<Linking<'k>, StoreError>,
    seq: u64,
    prev: Hash,
    rows: EventRows,
}

/// The logbook's columns, one vector each, for `UNNEST`.
#[derive(Clone, Default)]
struct EventRows {
    seqs: Vec<i64>,
    ats: Vec<i64>,
    actors: Vec<String>,
    requests: Vec<Option<String>>,
    actions: Vec<String>,
    details: Vec<String>,
    hashes: Vec<Vec<u8>>,
}

impl<'k> Appender<'k> {
    /// Takes the Logbook's lock for the rest of the transaction and reads
    /// the head the next events link after.
    pub(super) async fn lock(
        conn: &mut PgConnection,
        keys: &'k ChainKeys,
    ) -> Result<Appender<'k>, StoreError> {
        let head = lock_head(conn).await?;
        Ok(Self::after(head, keys))
    }

    /// Links the next events after the head in the first columns of `row`
    /// ([`HEAD_COLUMNS`]), read under the Logbook's lock.
    pub(super) fn after_row(row: &PgRow, keys: &'k ChainKeys) -> Result<Appender<'k>, StoreError> {
        Ok(Self::after(head_of(row)?, keys))
    }

    fn after(head: Head, keys: &'k ChainKeys) -> Appender<'k> {
        Self {
            linking: next_linking(head.switch.as_ref(), keys),
            seq: head.seq,
            prev: head.hash,
            rows: EventRows::default(),
        }
    }

    /// Whether `events` may be appended: no key switches, and a key to link
    /// them with. Checked before a change writes anything, so that a change
    /// refused here leaves its group's transaction clean.
    pub(super) fn check(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        refuse_key_switches(events)?;
        if events.is_empty() {
            return Ok(());
        }
        self.linking.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// Links `events` after those pushed before ([`Self::check`] first).
    pub(super) fn push(&mut self, events: &[NewEvent]) -> Result<(), StoreError> {
        self.check(events)?;
        self.link(events);
        Ok(())
    }

    /// Links `events`, unchecked: nothing when there is no way to link.
    fn link(&mut self, events: &[NewEvent]) {
        let Ok(linking) = self.linking.as_ref() else {
            return;
        };
        let rows = &mut self.rows;
        for e in events {
            self.seq += 1;
            let text = e.details.to_string();
            self.prev = chain_link(
                *linking,
                &self.prev,
                self.seq,
                e.at,
                &e.actor,
                e.request.as_deref(),
                &e.action,
                &text,
            );
            rows.seqs.push(self.seq as i64);
            rows.ats.push(e.at.as_millis());
            rows.actors.push(e.actor.clone());
            rows.requests.push(e.request.clone());
            rows.actions.push(e.action.clone());
            rows.details.push(text);
            rows.hashes.push(self.prev.to_vec());
        }
    }

    /// Inserts the events pushed, in one statement. Returns the last
    /// sequence number.
    pub(super) async fn write(self, conn: &mut PgConnection) -> Result<u64, StoreError> {
        let mut writes = Writes::default();
        let seq = self.queue(&mut writes)?;
        writes.run(conn).await?;
        Ok(seq)
    }

    /// Adds the insert of the events pushed to `writes`. Returns the last
    /// sequence number.
    pub(super) fn queue(self, writes: &mut Writes) -> Result<u64, StoreError> {
        let rows = self.rows;
        if rows.seqs.is_empty() {
            return Ok(self.seq);
        }
        for action in &rows.actions {
            // Counted before the commit, as on SQLite: a failed commit may count twice.
            metrics::counter!("passport_logbook_events_total", "action" => action.clone())
                .increment(1);
        }
        let from = [
            writes.bind(rows.seqs, "bigint[]")?,
            writes.bind(rows.ats, "bigint[]")?,
            writes.bind(rows.actors, "text[]")?,
            writes.bind(rows.requests, "text[]")?,
            writes.bind(rows.actions, "text[]")?,
            writes.bind(rows.details, "text[]")?,
            writes.bind(rows.hashes, "bytea[]")?,
        ]
        .join(", ");
        writes.push(format!(
            "INSERT INTO logbook (seq, at, actor, request, action, details, hash) \
             SELECT * FROM UNNEST({from})"
        ));
        Ok(self.seq)
    }
}

/// Records the switch to the configured key when the Logbook is not keyed
/// with it yet, inside the caller's transaction (see
/// [`super::PgStore::adopt_logbook_key`]).
pub(super) async fn adopt_key(
    conn: &mut PgConnection,
    keys: &ChainKeys,
    now: Timestamp,
) -> Result<KeyAdoption, StoreError> {
    let head = lock_head(conn).await?;
    match adoption(head.switch.as_ref(), keys, now)? {
        Adoption::Settled(adopted) => Ok(adopted),
        Adoption::Switch(switch) => {
            let mut appender = Appender {
                linking: Ok(switch.linking),
                seq: head.seq,
                prev: head.hash,
                rows: EventRows::default(),
            };
            // Pushed past `check`: this is the one place a switch is written.
            appender.link(std::slice::from_ref(&switch.event));
            let seq = appender.write(conn).await?;
            Ok(switch.done(seq))
        }
    }
}

/// Checks the chain of every event committed when it starts (one statement,
/// so one snapshot), streamed in order through the domain's [`ChainCheck`].
pub(super) async fn verify(pool: &PgPool, keys: &ChainKeys) -> Result<Verification, StoreError> {
    let mut check = ChainCheck::new(keys);
    let query = format!("SELECT {LOG_EVENT_COLUMNS}, hash FROM logbook ORDER BY seq");
    let mut rows = sqlx::query(&query).fetch(pool);
    while let Some(row) = rows.try_next().await? {
        let event = log_event(&row)?;
        let stored: &[u8] = row.try_get(6)?;
        if let Err(brk) = check.check(&event, stored) {
            return Ok(Verification::Broken(brk));
        }
    }
    let (events, head, keying) = check.finish();
    Ok(Verification::Intact {
        events,
        head: hex::encode(head),
        keying,
    })
}

/// The statement that reads the Logbook for `audit show`/`export`, by request
/// and from a time as asked (`$1` the request, `$2` the time in milliseconds):
/// one statement per case, so each can use its index (`logbook_by_request`,
/// `logbook_by_time`).
pub fn audit_query(by_request: bool, since: bool) -> String {
    let columns = format!("SELECT {LOG_EVENT_COLUMNS} FROM logbook");
    match (by_request, since) {
        (true, true) => format!("{columns} WHERE request = $1 AND at >= $2 ORDER BY seq"),
        (true, false) => {
            format!("{columns} WHERE request = $1 AND $2::bigint IS NULL ORDER BY seq")
        }
        (false, true) => format!("{columns} WHERE $1::text IS NULL AND at >= $2 ORDER BY seq"),
        (false, false) => {
            format!("{columns} WHERE $1::text IS NULL AND $2::bigint IS NULL ORDER BY seq")
        }
    }
}

/// The Logbook events of `request` at or after `since` (each when given),
/// in order.
pub(super) async fn events(
    pool: &PgPool,
    request: Option<String>,
    since: Option<Timestamp>,
) -> Result<Vec<LogEvent>, StoreError> {
    let query = audit_query(request.is_some(), since.is_some());
    let rows = sqlx::query(&query)
        .bind(request)
        .bind(since.map(Timestamp::as_millis))
        .fetch_all(pool)
        .await?;
    rows.iter().map(log_event).collect()
}
