//! Verifying the Logbook's hash chain on every core.
//!
//! A link only needs its event and the *stored* hash of the event before it.
//! So the events are cut into consecutive parts, each cut right after an
//! existing event, and each part is read and checked by a thread of its own
//! (with a connection of its own), starting from the stored hash at its cut:
//! the link across a cut is checked by the part after it. The break reported
//! is the first one of the earliest broken part, which is exactly the break a
//! check from the first event onwards would report.
//!
//! Keyed links (after a switch to a key, see [`crate::domain::logbook`]) are
//! checked with the key the switch names when it was given; without it, only
//! the order of those events is checked, and they are reported as unchecked.
//! A part learns the mode it starts in from the switches before its cut, and
//! follows the switches it meets itself.

use std::sync::atomic::{AtomicUsize, Ordering};

use rusqlite::{Connection, OptionalExtension};

use crate::adapters::store_rows::{key_switch, log_event, LastSwitch, LOG_EVENT_COLUMNS};
use crate::app::ports::{StoreError, Verification};
use crate::domain::logbook::{
    ChainBreak, ChainCheck, ChainKeys, Hash, Keying, LogEvent, GENESIS, KEY_SWITCH,
};

/// A thread stops early, once an earlier part is known to be broken, at most
/// this many events later.
const STOP_CHECK_EVERY: usize = 4096;

/// Checks the chain of every event committed when it starts, on a
/// connection from `open` per core, keyed links with `keys`.
pub(super) fn verify<F>(open: F, keys: &ChainKeys) -> Result<Verification, StoreError>
where
    F: Fn() -> Result<Connection, StoreError> + Sync,
{
    let parts = std::thread::available_parallelism().map_or(1, |n| n.get());
    verify_in_parts(open, keys, parts.clamp(1, 8))
}

/// The Logbook's switches to a key, each with the key it names (`None` when
/// it names none). Read apart from the chain only to tell each part the mode
/// it starts in; the parts check the switches themselves as chain events.
fn switches(conn: &Connection) -> Result<Vec<LastSwitch>, StoreError> {
    // Written out, not bound, so that SQLite uses the partial index
    // `logbook_key_switches` where it exists (migration 0012).
    debug_assert_eq!(KEY_SWITCH, "logbook_keyed");
    let mut stmt = conn
        .prepare("SELECT seq, details FROM logbook WHERE action = 'logbook_keyed' ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(key_switch(row.get(0)?, &row.get::<_, String>(1)?));
    }
    Ok(out)
}

/// Where a part starts: after event `seq`, whose stored hash is `hash`; the
/// first part starts before the first event (`None`), from the genesis hash.
#[derive(Clone, Copy)]
struct Start {
    seq: Option<i64>,
    hash: Hash,
}

fn verify_in_parts<F>(open: F, keys: &ChainKeys, parts: usize) -> Result<Verification, StoreError>
where
    F: Fn() -> Result<Connection, StoreError> + Sync,
{
    let conn = open()?;
    let (first, last): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT MIN(seq), MAX(seq) FROM logbook", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(Verification::Intact {
            events: 0,
            head: hex::encode(GENESIS),
            keying: Keying::default(),
        });
    };
    let switches = switches(&conn)?;
    // Parts of about equal numbers of events (sequence numbers are dense in an
    // intact Logbook). Part i covers the events after starts[i] up to the next start.
    let mut starts = vec![Start {
        seq: None,
        hash: GENESIS,
    }];
    for i in 1..parts {
        let target = first as i128 + (last as i128 - first as i128) * i as i128 / parts as i128;
        let cut: Option<(i64, Vec<u8>)> = conn
            .query_row(
                "SELECT seq, hash FROM logbook WHERE seq <= ?1 ORDER BY seq DESC LIMIT 1",
                [target as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((seq, hash)) = cut {
            if starts
                .last()
                .is_some_and(|s| s.seq.is_some_and(|p| p >= seq))
                || seq >= last
            {
                continue;
            }
            // A malformed hash is reported by the part holding its event, which
            // comes first; the part after it only needs some value to start from.
            let hash = Hash::try_from(hash.as_slice()).unwrap_or(GENESIS);
            starts.push(Start {
                seq: Some(seq),
                hash,
            });
        }
    }
    drop(conn);

    // The lowest part found broken so far: later parts may stop.
    let broken = AtomicUsize::new(usize::MAX);
    let outcomes: Vec<Result<Part, StoreError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = starts
            .iter()
            .enumerate()
            .map(|(index, start)| {
                let end = starts.get(index + 1).and_then(|s| s.seq).unwrap_or(last);
                let (open, broken, start, switches) = (&open, &broken, *start, &switches);
                scope.spawn(move || {
                    let check =
                        ChainCheck::after(keys, switches, start.seq.map(|s| s as u64), start.hash);
                    check_part(&open()?, check, index, start, end, broken)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(StoreError::Other("a verification thread failed".into()))
                })
            })
            .collect()
    });

    let mut head = (0u64, GENESIS);
    let mut keying = Keying::default();
    for outcome in outcomes {
        match outcome? {
            Part::Broken(brk) => return Ok(Verification::Broken(brk)),
            Part::Stopped => break,
            Part::Intact {
                last_seq,
                last_hash,
                keying: found,
            } => {
                head = (last_seq, last_hash);
                keying.extend(found);
            }
        }
    }
    Ok(Verification::Intact {
        events: head.0,
        head: hex::encode(head.1),
        keying,
    })
}

enum Part {
    Intact {
        last_seq: u64,
        last_hash: Hash,
        keying: Keying,
    },
    Broken(ChainBreak),
    /// Gave up because an earlier part is broken.
    Stopped,
}

/// Checks the events after `start` up to `end`, in order, with `check`
/// (which starts there).
fn check_part(
    conn: &Connection,
    mut check: ChainCheck<'_>,
    index: usize,
    start: Start,
    end: i64,
    broken: &AtomicUsize,
) -> Result<Part, StoreError> {
    let columns = format!("SELECT {}, hash FROM logbook", LOG_EVENT_COLUMNS);
    let mut stmt;
    let mut rows = match start.seq {
        None => {
            stmt = conn.prepare(&format!("{columns} WHERE seq <= ?1 ORDER BY seq"))?;
            stmt.query([end])?
        }
        Some(after) => {
            stmt = conn.prepare(&format!(
                "{columns} WHERE seq > ?1 AND seq <= ?2 ORDER BY seq"
            ))?;
            stmt.query([after, end])?
        }
    };
    let mut read = 0usize;
    while let Some(row) = rows.next()? {
        read += 1;
        if read.is_multiple_of(STOP_CHECK_EVERY) && broken.load(Ordering::Relaxed) < index {
            return Ok(Part::Stopped);
        }
        // The hash follows the event's columns.
        let event = log_event(row)?;
        let stored = row.get_ref(6)?.as_blob().map_err(rusqlite::Error::from)?;
        if let Err(brk) = check.check(&event, stored) {
            broken.fetch_min(index, Ordering::Relaxed);
            return Ok(Part::Broken(brk));
        }
    }
    let (last_seq, last_hash, keying) = check.finish();
    Ok(Part::Intact {
        last_seq,
        last_hash,
        keying,
    })
}

/// Recomputes every stored hash as the plain SHA-256 chain over the events as
/// they stand, as someone with write access to the database but without the
/// Logbook's key would after rewriting events. Tests use it to show what a
/// keyed Logbook catches and a plain one cannot; Passport never calls it.
#[doc(hidden)]
pub fn rehash_plainly(conn: &Connection) -> Result<(), StoreError> {
    let mut events: Vec<LogEvent> = Vec::new();
    {
        let mut stmt = conn.prepare(&format!(
            "SELECT {LOG_EVENT_COLUMNS} FROM logbook ORDER BY seq"
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            events.push(log_event(row)?);
        }
    }
    let mut prev = GENESIS;
    for e in events {
        prev = e.hash_after(&prev);
        conn.execute(
            "UPDATE logbook SET hash = ?1 WHERE seq = ?2",
            rusqlite::params![&prev[..], e.seq as i64],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use proptest::prelude::*;

    use super::*;
    use crate::domain::logbook::KeyId;
    use crate::domain::logbook::{
        chain_link, check_link_with, key_switch_details, ChainKey, KeySwitch, Linking,
    };
    use crate::domain::time::Timestamp;

    fn key() -> ChainKey {
        ChainKey::new(b"0123456789abcdef0123456789abcdef")
    }

    fn with_key() -> ChainKeys {
        ChainKeys {
            current: Some(key()),
            previous: Vec::new(),
        }
    }

    /// A database with the Logbook as the first migration creates it, without
    /// the triggers that refuse edits, holding `n` chained events.
    fn logbook(n: u64) -> (tempfile::TempDir, PathBuf) {
        logbook_keyed(n, None)
    }

    /// Like [`logbook`], with event `switch` (when given) switching to [`key`].
    fn logbook_keyed(n: u64, switch: Option<u64>) -> (tempfile::TempDir, PathBuf) {
        let key = key();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logbook.db");
        let conn = Connection::open(&path).unwrap();
        // Nothing here needs to survive a crash.
        conn.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
            .unwrap();
        conn.execute_batch(include_str!("../../../migrations/0001_init.sql"))
            .unwrap();
        conn.execute_batch(
            "DROP TRIGGER logbook_refuses_update; DROP TRIGGER logbook_refuses_delete; BEGIN;",
        )
        .unwrap();
        let mut prev = GENESIS;
        let mut linking = Linking::Plain;
        for seq in 1..=n {
            let at = Timestamp::from_millis(1_000 * seq as i64);
            let actor = format!("dev{}", seq % 3);
            let request = (seq % 4 != 0).then(|| format!("AR-{}", seq / 5 + 1));
            let (action, details) = if switch == Some(seq) {
                (KEY_SWITCH, key_switch_details(key.id(), None).to_string())
            } else {
                ("approved", format!("{{\"summary\":\"event {seq}\"}}"))
            };
            let hash = chain_link(
                linking,
                &prev,
                seq,
                at,
                &actor,
                request.as_deref(),
                action,
                &details,
            );
            conn.execute(
                "INSERT INTO logbook (seq, at, actor, request, action, details, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![seq as i64, at.as_millis(), actor, request, action, details, &hash[..]],
            )
            .unwrap();
            prev = hash;
            if switch == Some(seq) {
                linking = Linking::Keyed(&key);
            }
        }
        conn.execute_batch("COMMIT").unwrap();
        (dir, path)
    }

    fn in_parts(path: &Path, parts: usize) -> Verification {
        in_parts_with(path, &ChainKeys::none(), parts)
    }

    fn in_parts_with(path: &Path, keys: &ChainKeys, parts: usize) -> Verification {
        verify_in_parts(|| Ok(Connection::open(path)?), keys, parts).unwrap()
    }

    fn one_by_one(path: &Path) -> Verification {
        one_by_one_with(path, &ChainKeys::none())
    }

    /// The plain check, from the first event to the last, to compare with.
    fn one_by_one_with(path: &Path, keys: &ChainKeys) -> Verification {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT seq, at, actor, request, action, details, hash FROM logbook ORDER BY seq",
            )
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        let (mut prev_seq, mut prev) = (0, GENESIS);
        let mut keyed: Option<KeyId> = None;
        let mut keying = Keying::default();
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
            let linking = match &keyed {
                None => Some(Linking::Plain),
                Some(id) => keys.find(id).map(Linking::Keyed),
            };
            if let Err(brk) = check_link_with(linking, prev_seq, &prev, &event, &stored) {
                return Verification::Broken(brk);
            }
            if let (None, Some(id)) = (linking, &keyed) {
                keying.skip(id, event.seq);
            }
            match event.key_switch() {
                Some(Err(brk)) => return Verification::Broken(brk),
                Some(Ok(id)) => {
                    keying.switches.push(KeySwitch {
                        seq: event.seq,
                        key: id.clone(),
                    });
                    keyed = Some(id);
                }
                None => {}
            }
            (prev_seq, prev) = (event.seq, stored);
        }
        Verification::Intact {
            events: prev_seq,
            head: hex::encode(prev),
            keying,
        }
    }

    #[derive(Debug, Clone)]
    enum Tamper {
        Edit(u64),
        Delete(u64),
        /// Swaps two neighbours, each keeping its stored hash.
        Swap(u64),
        BadHash(u64),
        /// Moves an event before the first.
        Negative(u64),
    }

    impl Tamper {
        fn apply(&self, path: &Path) {
            let sql = match self {
                Tamper::Edit(k) => format!("UPDATE logbook SET details = '{{}}' WHERE seq = {k}"),
                Tamper::Delete(k) => format!("DELETE FROM logbook WHERE seq = {k}"),
                Tamper::Swap(k) => format!(
                    "UPDATE logbook SET seq = -1000 WHERE seq = {k}; UPDATE logbook SET seq = {k} WHERE seq = {k} + 1; \
                     UPDATE logbook SET seq = {k} + 1 WHERE seq = -1000;"
                ),
                Tamper::BadHash(k) => format!("UPDATE logbook SET hash = X'00' WHERE seq = {k}"),
                Tamper::Negative(k) => format!("UPDATE logbook SET seq = -{k} WHERE seq = {k}"),
            };
            let conn = Connection::open(path).unwrap();
            conn.execute_batch("PRAGMA synchronous = OFF").unwrap();
            conn.execute_batch(&sql).unwrap();
        }
    }

    #[test]
    fn an_intact_chain_verifies_in_parts() {
        let (_dir, path) = logbook(1_001);
        let found = in_parts(&path, 4);
        assert_eq!(found, one_by_one(&path));
        assert!(matches!(found, Verification::Intact { events: 1_001, .. }));
        let (_dir, empty) = logbook(0);
        assert_eq!(
            in_parts(&empty, 4),
            Verification::Intact {
                events: 0,
                head: hex::encode(GENESIS),
                keying: Keying::default(),
            }
        );
    }

    #[test]
    fn the_earliest_break_is_named_whichever_part_finds_one_first() {
        let (_dir, path) = logbook(20_000);
        // The last part breaks at once; the first only near its end.
        Tamper::Edit(15_001).apply(&path);
        Tamper::Delete(4_999).apply(&path);
        assert_eq!(
            in_parts(&path, 4),
            Verification::Broken(ChainBreak::Gap {
                expected: 4_999,
                found: 5_000
            })
        );
    }

    #[test]
    fn a_keyed_chain_verifies_in_parts_with_its_key_and_is_left_unchecked_without() {
        let (_dir, path) = logbook_keyed(1_001, Some(300));
        let found = in_parts_with(&path, &with_key(), 4);
        assert_eq!(found, one_by_one_with(&path, &with_key()));
        let Verification::Intact { events, keying, .. } = found else {
            panic!("{found:?}")
        };
        assert_eq!(events, 1_001);
        assert_eq!(
            keying.switches,
            vec![KeySwitch {
                seq: 300,
                key: key().id().clone()
            }]
        );
        assert!(keying.unchecked.is_empty());
        let Verification::Intact { keying, .. } = in_parts(&path, 4) else {
            panic!("the order of keyed events is still checked")
        };
        assert_eq!(
            keying.unchecked,
            vec![crate::domain::logbook::Unchecked {
                key: key().id().clone(),
                first: 301,
                last: 1_001
            }]
        );
    }

    #[test]
    fn a_keyed_chain_rehashed_plainly_breaks_at_its_first_keyed_link() {
        let (_dir, path) = logbook_keyed(50, Some(10));
        Tamper::Edit(5).apply(&path);
        // Recompute every link plainly, as someone without the key would.
        rehash_plainly(&Connection::open(&path).unwrap()).unwrap();
        assert_eq!(
            in_parts_with(&path, &with_key(), 4),
            Verification::Broken(ChainBreak::Mismatch { seq: 11 })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]

        #[test]
        fn checking_in_parts_names_the_break_a_plain_check_names(
            n in 0u64..40,
            parts in 1usize..9,
            tampers in proptest::collection::vec((0usize..5, 0u64..40), 0..3),
            switch in proptest::option::of(1u64..40),
            keyed in any::<bool>(),
        ) {
            let keys = if keyed { with_key() } else { ChainKeys::none() };
            let (_dir, path) = logbook_keyed(n, switch);
            for (kind, k) in tampers {
                let k = 1 + k % n.max(1);
                let tamper = match kind {
                    0 => Tamper::Edit(k),
                    1 => Tamper::Delete(k),
                    2 if k < n => Tamper::Swap(k),
                    3 => Tamper::Negative(k),
                    _ => Tamper::BadHash(k),
                };
                tamper.apply(&path);
            }
            prop_assert_eq!(in_parts_with(&path, &keys, parts), one_by_one_with(&path, &keys));
        }
    }
}
