//! The Logbook's hash chain, as pure functions.
//!
//! Each event's hash is SHA-256 over the previous event's hash followed by the
//! event's canonical serialization: fixed-width big-endian integers and
//! length-prefixed UTF-8 strings, so no two different events serialize alike.
//! The first event chains from 32 zero bytes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::time::Timestamp;

pub type Hash = [u8; 32];

pub const GENESIS: Hash = [0; 32];

/// One Logbook event as it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    pub seq: u64,
    pub at: Timestamp,
    pub actor: String,
    pub request: Option<String>,
    pub action: String,
    /// A JSON object, as text.
    pub details: String,
}

/// An event to append; the store gives it its sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub at: Timestamp,
    pub actor: String,
    pub request: Option<String>,
    pub action: String,
    pub details: serde_json::Value,
}

fn put_str(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_be_bytes());
    h.update(s.as_bytes());
}

/// The hash of `event` chained after `prev`.
pub fn chain_hash(
    prev: &Hash,
    seq: u64,
    at: Timestamp,
    actor: &str,
    request: Option<&str>,
    action: &str,
    details: &str,
) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(at.as_millis().to_be_bytes());
    put_str(&mut h, actor);
    match request {
        Some(r) => {
            h.update([1]);
            put_str(&mut h, r);
        }
        None => h.update([0]),
    }
    put_str(&mut h, action);
    put_str(&mut h, details);
    h.finalize().into()
}

impl LogEvent {
    pub fn hash_after(&self, prev: &Hash) -> Hash {
        chain_hash(
            prev,
            self.seq,
            self.at,
            &self.actor,
            self.request.as_deref(),
            &self.action,
            &self.details,
        )
    }
}

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// Sequence numbers must run 1, 2, 3, … without gaps.
    Gap { expected: u64, found: u64 },
    /// The stored hash does not match the event and its predecessor.
    Mismatch { seq: u64 },
}

impl ChainBreak {
    pub fn seq(&self) -> u64 {
        match self {
            Self::Gap { expected, .. } => *expected,
            Self::Mismatch { seq } => *seq,
        }
    }
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gap { expected, found } => write!(
                f,
                "event {expected} is missing (found {found} in its place): events were deleted or reordered"
            ),
            Self::Mismatch { seq } => write!(f, "event {seq} does not match its hash: it or an earlier event was modified"),
        }
    }
}

/// Checks one link: `event` with `stored` hash follows `prev` (the previous
/// event's stored hash) and comes right after `prev_seq`.
pub fn check_link(
    prev_seq: u64,
    prev: &Hash,
    event: &LogEvent,
    stored: &Hash,
) -> Result<(), ChainBreak> {
    if event.seq != prev_seq + 1 {
        return Err(ChainBreak::Gap {
            expected: prev_seq + 1,
            found: event.seq,
        });
    }
    if &event.hash_after(prev) != stored {
        return Err(ChainBreak::Mismatch { seq: event.seq });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, action: &str) -> LogEvent {
        LogEvent {
            seq,
            at: Timestamp::from_millis(1000 * seq as i64),
            actor: "dev1".into(),
            request: Some("AR-1".into()),
            action: action.into(),
            details: "{}".into(),
        }
    }

    #[test]
    fn a_chain_verifies_link_by_link_and_breaks_where_edited() {
        let events = [ev(1, "requested"), ev(2, "approved"), ev(3, "completed")];
        let mut hashes = Vec::new();
        let mut prev = GENESIS;
        for e in &events {
            prev = e.hash_after(&prev);
            hashes.push(prev);
        }
        let mut prev = (0, GENESIS);
        for (e, h) in events.iter().zip(&hashes) {
            assert_eq!(check_link(prev.0, &prev.1, e, h), Ok(()));
            prev = (e.seq, *h);
        }
        let mut edited = events[1].clone();
        edited.action = "denied".into();
        assert_eq!(
            check_link(1, &hashes[0], &edited, &hashes[1]),
            Err(ChainBreak::Mismatch { seq: 2 })
        );
        assert_eq!(
            check_link(1, &hashes[0], &events[2], &hashes[2]),
            Err(ChainBreak::Gap {
                expected: 2,
                found: 3
            })
        );
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let a = chain_hash(
            &GENESIS,
            1,
            Timestamp::from_millis(0),
            "ab",
            None,
            "c",
            "{}",
        );
        let b = chain_hash(
            &GENESIS,
            1,
            Timestamp::from_millis(0),
            "a",
            None,
            "bc",
            "{}",
        );
        let c = chain_hash(
            &GENESIS,
            1,
            Timestamp::from_millis(0),
            "a",
            Some(""),
            "bc",
            "{}",
        );
        assert_ne!(a, b);
        assert_ne!(b, c);
    }
}
