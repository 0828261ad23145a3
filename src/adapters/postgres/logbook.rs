//! Logbook appends, the switch to a key, and verification on PostgreSQL.
//!
//! Several processes append to one chain. Each append takes a transaction
//! advisory lock ([`LOGBOOK_LOCK`]) and only then reads the head, so the
//! next writer waits until this transaction has committed or rolled back and
//! reads the head it left: sequence numbers run without gaps (a rolled-back
//! append leaves nothing to skip) and no two events link after the same one
//! (no forks). The lock is the last thing a change takes, right before its
//! events, so it is held only for the appends and the commit.

use futures::TryStreamExt;
use sqlx::{PgConnection, PgPool, Row};

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

/// Takes the Logbook's lock for the rest of the transaction and reads its
/// head and last switch to a key, in one statement after the lock (a
/// statement reads what was committed when it started).
async fn lock_head(conn: &mut PgConnection) -> Result<Head, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOGBOOK_LOCK)
        .execute(&mut *conn)
        .await?;
    // The action is written out, not bound, so that the partial index
    // `logbook_key_switches` serves it.
    debug_assert_eq!(KEY_SWITCH, "logbook_keyed");
    let row = sqlx::query(
        "SELECT h.seq, h.hash, s.seq AS switch_seq, s.details AS switch_details \
         FROM (SELECT 1) AS one \
         LEFT JOIN (SELECT seq, hash FROM logbook ORDER BY seq DESC LIMIT 1) AS h ON TRUE \
         LEFT JOIN (SELECT seq, details FROM logbook WHERE action = 'logbook_keyed' \
                    ORDER BY seq DESC LIMIT 1) AS s ON TRUE",
    )
    .fetch_one(&mut *conn)
    .await?;
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

/// Inserts `events` as the events after `head`, linked with `linking`, in
/// one statement.
async fn insert_events(
    conn: &mut PgConnection,
    linking: Linking<'_>,
    head: &Head,
    events: &[NewEvent],
) -> Result<u64, StoreError> {
    let (mut seq, mut prev) = (head.seq, head.hash);
    let n = events.len();
    let (mut seqs, mut ats, mut actors, mut requests, mut actions, mut details, mut hashes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for e in events {
        seq += 1;
        let text = e.details.to_string();
        prev = chain_link(
            linking,
            &prev,
            seq,
            e.at,
            &e.actor,
            e.request.as_deref(),
            &e.action,
            &text,
        );
        seqs.push(seq as i64);
        ats.push(e.at.as_millis());
        actors.push(e.actor.clone());
        requests.push(e.request.clone());
        actions.push(e.action.clone());
        details.push(text);
        hashes.push(prev.to_vec());
    }
    sqlx::query(
        "INSERT INTO logbook (seq, at, actor, request, action, details, hash) \
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
                              $6::text[], $7::bytea[])",
    )
    .bind(seqs)
    .bind(ats)
    .bind(actors)
    .bind(requests)
    .bind(actions)
    .bind(details)
    .bind(hashes)
    .execute(&mut *conn)
    .await?;
    Ok(seq)
}

/// Chains `events` after the Logbook's head, linked as its last key switch
/// says, inside the caller's transaction. Returns the last sequence number.
pub(super) async fn append(
    conn: &mut PgConnection,
    keys: &ChainKeys,
    events: &[NewEvent],
) -> Result<u64, StoreError> {
    refuse_key_switches(events)?;
    if events.is_empty() {
        return Ok(0);
    }
    let head = lock_head(conn).await?;
    let linking = next_linking(head.switch.as_ref(), keys)?;
    let last = insert_events(conn, linking, &head, events).await?;
    for e in events {
        // Counted before the commit, as on SQLite: a failed commit may count twice.
        metrics::counter!("passport_logbook_events_total", "action" => e.action.clone())
            .increment(1);
    }
    Ok(last)
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
            let seq = insert_events(
                conn,
                switch.linking,
                &head,
                std::slice::from_ref(&switch.event),
            )
            .await?;
            metrics::counter!("passport_logbook_events_total", "action" => KEY_SWITCH).increment(1);
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

/// The Logbook events of `request` at or after `since` (each when given),
/// in order.
pub(super) async fn events(
    pool: &PgPool,
    request: Option<String>,
    since: Option<Timestamp>,
) -> Result<Vec<LogEvent>, StoreError> {
    let columns = format!("SELECT {LOG_EVENT_COLUMNS} FROM logbook");
    // One statement per case, so each can use its index.
    let query = match (&request, since) {
        (Some(_), Some(_)) => format!("{columns} WHERE request = $1 AND at >= $2 ORDER BY seq"),
        (Some(_), None) => {
            format!("{columns} WHERE request = $1 AND $2::bigint IS NULL ORDER BY seq")
        }
        (None, Some(_)) => format!("{columns} WHERE $1::text IS NULL AND at >= $2 ORDER BY seq"),
        (None, None) => {
            format!("{columns} WHERE $1::text IS NULL AND $2::bigint IS NULL ORDER BY seq")
        }
    };
    let rows = sqlx::query(&query)
        .bind(request)
        .bind(since.map(Timestamp::as_millis))
        .fetch_all(pool)
        .await?;
    rows.iter().map(log_event).collect()
}
