//! Verifying the Logbook's hash chain: one thread reads the events in order
//! while the other cores check the links.
//!
//! A link only needs its event and the *stored* hash of the event before it,
//! so the chain is cut into chunks that each carry the stored hash preceding
//! them, and chunks are checked in parallel. The break reported is the first
//! one of the earliest broken chunk, which is exactly what a check from the
//! first event onwards would report.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use rusqlite::Connection;

use crate::app::ports::{StoreError, Verification};
use crate::domain::logbook::{check_link, ChainBreak, Hash, LogEvent, GENESIS};
use crate::domain::time::Timestamp;

/// Events per chunk: large enough that handing a chunk over costs nothing
/// next to checking it, small enough that a few in flight use little memory.
const CHUNK: usize = 4096;
/// Chunks queued per checking thread before the reader waits.
const QUEUED: usize = 2;

struct Chunk {
    index: usize,
    prev_seq: u64,
    prev: Hash,
    events: Vec<(LogEvent, Vec<u8>)>,
}

impl Chunk {
    fn new(index: usize, prev_seq: u64, prev: Hash, size: usize) -> Self {
        Self {
            index,
            prev_seq,
            prev,
            events: Vec::with_capacity(size),
        }
    }

    fn check(&self) -> Result<(), ChainBreak> {
        let (mut prev_seq, mut prev) = (self.prev_seq, self.prev);
        for (event, stored) in &self.events {
            let Ok(stored) = Hash::try_from(stored.as_slice()) else {
                return Err(ChainBreak::Mismatch { seq: event.seq });
            };
            check_link(prev_seq, &prev, event, &stored)?;
            prev_seq = event.seq;
            prev = stored;
        }
        Ok(())
    }
}

/// Checks the whole chain of the Logbook read through `conn`.
pub(super) fn verify(conn: &Connection) -> Result<Verification, StoreError> {
    verify_in_chunks(conn, CHUNK)
}

fn verify_in_chunks(conn: &Connection, chunk_size: usize) -> Result<Verification, StoreError> {
    // The reading thread takes a core of its own; the rest check.
    let checkers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let broken = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (results, outcomes) = mpsc::channel();
        let mut queues = Vec::with_capacity(checkers);
        for _ in 0..checkers {
            let (queue, chunks) = mpsc::sync_channel::<Chunk>(QUEUED);
            let results = results.clone();
            let broken = &broken;
            scope.spawn(move || {
                for chunk in chunks {
                    let outcome = chunk.check();
                    let failed = outcome.is_err();
                    let _ = results.send((chunk.index, outcome));
                    if failed {
                        // Later chunks of this queue cannot hold an earlier break.
                        broken.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            });
            queues.push(queue);
        }
        drop(results);
        let read = read_chunks(conn, chunk_size, &queues, &broken);
        drop(queues);
        let first = outcomes
            .iter()
            .filter_map(|(index, outcome)| outcome.err().map(|brk| (index, brk)))
            .min_by_key(|(index, _)| *index);
        if let Some((_, brk)) = first {
            return Ok(Verification::Broken(brk));
        }
        let (events, head) = read?;
        Ok(Verification::Intact {
            events,
            head: hex::encode(head),
        })
    })
}

/// Reads every event in order into chunks, dealt round-robin to the checkers.
/// Stops early once a checker found a break. Returns the last event's
/// sequence number and stored hash.
fn read_chunks(
    conn: &Connection,
    chunk_size: usize,
    queues: &[mpsc::SyncSender<Chunk>],
    broken: &AtomicBool,
) -> Result<(u64, Hash), StoreError> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, request, action, details, hash FROM logbook ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let (mut last_seq, mut last_hash) = (0u64, GENESIS);
    let mut chunk = Chunk::new(0, last_seq, last_hash, chunk_size);
    let deal = |chunk: Chunk| -> bool {
        !broken.load(Ordering::Relaxed) && queues[chunk.index % queues.len()].send(chunk).is_ok()
    };
    while let Some(row) = rows.next()? {
        let event = LogEvent {
            seq: row.get::<_, i64>(0)? as u64,
            at: Timestamp::from_millis(row.get(1)?),
            actor: row.get(2)?,
            request: row.get(3)?,
            action: row.get(4)?,
            details: row.get(5)?,
        };
        let stored: Vec<u8> = row.get(6)?;
        last_seq = event.seq;
        // A malformed hash is reported by the chunk holding its event, which comes
        // first; the chunk after it only needs some value to start from.
        last_hash = Hash::try_from(stored.as_slice()).unwrap_or(GENESIS);
        chunk.events.push((event, stored));
        if chunk.events.len() >= chunk_size {
            let next = Chunk::new(chunk.index + 1, last_seq, last_hash, chunk_size);
            if !deal(std::mem::replace(&mut chunk, next)) {
                return Ok((last_seq, last_hash));
            }
        }
    }
    if !chunk.events.is_empty() {
        deal(chunk);
    }
    Ok((last_seq, last_hash))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::logbook::chain_hash;

    /// The Logbook as the first migration creates it, without the triggers
    /// that refuse edits, holding `n` chained events.
    fn logbook(n: u64) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(include_str!("../../../migrations/0001_init.sql"))
            .unwrap();
        conn.execute_batch(
            "DROP TRIGGER logbook_refuses_update; DROP TRIGGER logbook_refuses_delete;",
        )
        .unwrap();
        let mut prev = GENESIS;
        for seq in 1..=n {
            let at = Timestamp::from_millis(1_000 * seq as i64);
            let actor = format!("dev{}", seq % 3);
            let request = (seq % 4 != 0).then(|| format!("AR-{}", seq / 5 + 1));
            let details = format!("{{\"summary\":\"event {seq}\"}}");
            let hash = chain_hash(
                &prev,
                seq,
                at,
                &actor,
                request.as_deref(),
                "approved",
                &details,
            );
            conn.execute(
                "INSERT INTO logbook (seq, at, actor, request, action, details, hash) VALUES (?1, ?2, ?3, ?4, 'approved', ?5, ?6)",
                rusqlite::params![seq as i64, at.as_millis(), actor, request, details, &hash[..]],
            )
            .unwrap();
            prev = hash;
        }
        conn
    }

    /// The plain check, from the first event to the last, to compare with.
    fn one_by_one(conn: &Connection) -> Verification {
        let mut stmt = conn
            .prepare(
                "SELECT seq, at, actor, request, action, details, hash FROM logbook ORDER BY seq",
            )
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        let (mut prev_seq, mut prev) = (0, GENESIS);
        while let Some(row) = rows.next().unwrap() {
            let event = LogEvent {
                seq: row.get::<_, i64>(0).unwrap() as u64,
                at: Timestamp::from_millis(row.get(1).unwrap()),
                actor: row.get(2).unwrap(),
                request: row.get(3).unwrap(),
                action: row.get(4).unwrap(),
                details: row.get(5).unwrap(),
            };
            let stored: Vec<u8> = row.get(6).unwrap();
            let Ok(stored) = Hash::try_from(stored.as_slice()) else {
                return Verification::Broken(ChainBreak::Mismatch { seq: event.seq });
            };
            if let Err(brk) = check_link(prev_seq, &prev, &event, &stored) {
                return Verification::Broken(brk);
            }
            (prev_seq, prev) = (event.seq, stored);
        }
        Verification::Intact {
            events: prev_seq,
            head: hex::encode(prev),
        }
    }

    #[derive(Debug, Clone)]
    enum Tamper {
        Edit(u64),
        Delete(u64),
        /// Swaps two neighbours, each keeping its stored hash.
        Swap(u64),
        BadHash(u64),
    }

    impl Tamper {
        fn apply(&self, conn: &Connection) {
            let sql = match self {
                Tamper::Edit(k) => format!("UPDATE logbook SET details = '{{}}' WHERE seq = {k}"),
                Tamper::Delete(k) => format!("DELETE FROM logbook WHERE seq = {k}"),
                Tamper::Swap(k) => format!(
                    "UPDATE logbook SET seq = -1 WHERE seq = {k}; UPDATE logbook SET seq = {k} WHERE seq = {k} + 1; \
                     UPDATE logbook SET seq = {k} + 1 WHERE seq = -1;"
                ),
                Tamper::BadHash(k) => format!("UPDATE logbook SET hash = X'00' WHERE seq = {k}"),
            };
            conn.execute_batch(&sql).unwrap();
        }
    }

    #[test]
    fn an_intact_chain_verifies_across_chunks() {
        let conn = logbook(3 * CHUNK as u64 + 5);
        let found = verify(&conn).unwrap();
        assert_eq!(found, one_by_one(&conn));
        assert!(
            matches!(found, Verification::Intact { events, .. } if events == 3 * CHUNK as u64 + 5)
        );
        assert_eq!(
            verify(&logbook(0)).unwrap(),
            Verification::Intact {
                events: 0,
                head: hex::encode(GENESIS)
            }
        );
    }

    #[test]
    fn the_earliest_break_is_named_whichever_chunk_is_checked_first() {
        let conn = logbook(4 * CHUNK as u64);
        Tamper::Edit(3 * CHUNK as u64 + 7).apply(&conn);
        Tamper::Delete(CHUNK as u64 + 1).apply(&conn);
        assert_eq!(
            verify(&conn).unwrap(),
            Verification::Broken(ChainBreak::Gap {
                expected: CHUNK as u64 + 1,
                found: CHUNK as u64 + 2
            })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn chunked_verification_names_the_break_a_plain_check_names(
            n in 0u64..60,
            chunk in 1usize..9,
            tampers in proptest::collection::vec((0usize..4, 0u64..60), 0..3),
        ) {
            let conn = logbook(n);
            for (kind, k) in tampers {
                let k = 1 + k % n.max(1);
                let tamper = match kind {
                    0 => Tamper::Edit(k),
                    1 => Tamper::Delete(k),
                    2 if k < n => Tamper::Swap(k),
                    _ => Tamper::BadHash(k),
                };
                tamper.apply(&conn);
            }
            prop_assert_eq!(verify_in_chunks(&conn, chunk).unwrap(), one_by_one(&conn));
        }
    }
}
