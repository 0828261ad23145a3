//! The Logbook's hash chain, as pure functions.
//!
//! Each event's link is computed over the previous event's link followed by
//! the event's canonical serialization: fixed-width big-endian integers and
//! length-prefixed UTF-8 strings, so no two different events serialize alike.
//! The first event chains from 32 zero bytes.
//!
//! A plain link is SHA-256 of that input, which anyone holding the database
//! file can recompute. A keyed link is HMAC-SHA256 under a key kept outside
//! the database ([`ChainKey`]), which nobody without the key can. Which one an
//! event uses is itself recorded in the chain: a [`KEY_SWITCH`] event names
//! the key (by its [`KeyId`], never the key) and every event after it is
//! keyed with that key, until the next switch. The switch event is linked
//! like the events before it (plain, or under the key it replaces), so a
//! rotation is signed by the old key.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::digest::Update;
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

/// The action of the event that switches the chain to a key: its details
/// are `{"key_id": "…"}` (and `"previous_key_id"` on a rotation).
pub const KEY_SWITCH: &str = "logbook_keyed";

/// What a key's id is the HMAC of: a fixed text, so the id says which key it
/// is without saying anything about the key.
const KEY_ID_INPUT: &[u8] = b"passport-logbook-key-id";

/// A key's public name: the first 8 bytes of HMAC(key, "passport-logbook-key-id"),
/// as 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// A key id as written in a switch event: 16 lower-case hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key for the chain's links. `Debug` shows only its id.
#[derive(Clone)]
pub struct ChainKey {
    mac: Hmac<Sha256>,
    id: KeyId,
}

impl ChainKey {
    /// The key made of `secret`'s bytes (any length: HMAC takes any).
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of every length, so this never fails.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        let mut named = mac.clone();
        Mac::update(&mut named, KEY_ID_INPUT);
        let id = KeyId(hex::encode(&named.finalize().into_bytes()[..8]));
        Self { mac, id }
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainKey({})", self.id)
    }
}

/// The keys a process holds: the one new events are keyed with, and earlier
/// ones, to check (and rotate away from) events keyed before a rotation.
#[derive(Debug, Clone, Default)]
pub struct ChainKeys {
    pub current: Option<ChainKey>,
    pub previous: Vec<ChainKey>,
}

impl ChainKeys {
    /// No key: a plain hash chain.
    pub fn none() -> Self {
        Self::default()
    }

    /// The key named `id`, current or previous.
    pub fn find(&self, id: &KeyId) -> Option<&ChainKey> {
        self.current
            .iter()
            .chain(&self.previous)
            .find(|k| k.id() == id)
    }
}

/// How a link is computed.
#[derive(Debug, Clone, Copy)]
pub enum Linking<'a> {
    /// SHA-256: anyone can recompute it.
    Plain,
    /// HMAC-SHA256 under the key.
    Keyed(&'a ChainKey),
}

fn put_str(h: &mut dyn Update, s: &str) {
    h.update(&(s.len() as u64).to_be_bytes());
    h.update(s.as_bytes());
}

/// The link of `event` chained after `prev`, plain or keyed.
#[allow(clippy::too_many_arguments)]
pub fn chain_link(
    linking: Linking<'_>,
    prev: &Hash,
    seq: u64,
    at: Timestamp,
    actor: &str,
    request: Option<&str>,
    action: &str,
    details: &str,
) -> Hash {
    // The link's input: the previous link, then the event's canonical serialization.
    let feed = |h: &mut dyn Update| {
        h.update(prev);
        h.update(&seq.to_be_bytes());
        h.update(&at.as_millis().to_be_bytes());
        put_str(h, actor);
        match request {
            Some(r) => {
                h.update(&[1]);
                put_str(h, r);
            }
            None => h.update(&[0]),
        }
        put_str(h, action);
        put_str(h, details);
    };
    match linking {
        Linking::Plain => {
            let mut h = Sha256::new();
            feed(&mut h);
            h.finalize().into()
        }
        Linking::Keyed(key) => {
            let mut h = key.mac.clone();
            feed(&mut h);
            h.finalize().into_bytes().into()
        }
    }
}

impl LogEvent {
    pub fn hash_after(&self, prev: &Hash) -> Hash {
        self.link_after(Linking::Plain, prev)
    }

    pub fn link_after(&self, linking: Linking<'_>, prev: &Hash) -> Hash {
        chain_link(
            linking,
            prev,
            self.seq,
            self.at,
            &self.actor,
            self.request.as_deref(),
            &self.action,
            &self.details,
        )
    }

    /// For a [`KEY_SWITCH`] event, the key it switches to; `None` for any
    /// other event. A switch that names no valid key is a break.
    pub fn key_switch(&self) -> Option<Result<KeyId, ChainBreak>> {
        (self.action == KEY_SWITCH)
            .then(|| switched_key(&self.details).ok_or(ChainBreak::BadKeySwitch { seq: self.seq }))
    }
}

/// The key a [`KEY_SWITCH`] event's `details` name, if they name a valid one.
pub fn switched_key(details: &str) -> Option<KeyId> {
    serde_json::from_str::<serde_json::Value>(details)
        .ok()
        .and_then(|d| d.get("key_id")?.as_str().and_then(KeyId::parse))
}

/// The details of a switch to `key`, from `previous` (on a rotation).
pub fn key_switch_details(key: &KeyId, previous: Option<&KeyId>) -> serde_json::Value {
    match previous {
        None => serde_json::json!({ "key_id": key }),
        Some(p) => serde_json::json!({ "key_id": key, "previous_key_id": p }),
    }
}

/// A switch to a key, as found in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySwitch {
    /// The switch event; the events after it are keyed.
    pub seq: u64,
    pub key: KeyId,
}

/// Events whose keyed links could not be checked, because their key was not given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unchecked {
    pub key: KeyId,
    pub first: u64,
    pub last: u64,
}

/// How the events of a verified chain are linked, and what could not be checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keying {
    /// Every switch to a key, in order; none for a plain hash chain.
    pub switches: Vec<KeySwitch>,
    /// The keyed events that went unchecked, in order, adjacent runs of one key joined.
    pub unchecked: Vec<Unchecked>,
}

impl Keying {
    /// Adds unchecked event `seq` of `key`, joining it to the run before when it follows it.
    pub fn skip(&mut self, key: &KeyId, seq: u64) {
        match self.unchecked.last_mut() {
            Some(run) if run.key == *key && run.last + 1 == seq => run.last = seq,
            _ => self.unchecked.push(Unchecked {
                key: key.clone(),
                first: seq,
                last: seq,
            }),
        }
    }

    /// Appends what a later part of the chain found.
    pub fn extend(&mut self, later: Keying) {
        self.switches.extend(later.switches);
        for run in later.unchecked {
            match self.unchecked.last_mut() {
                Some(last) if last.key == run.key && last.last + 1 == run.first => {
                    last.last = run.last
                }
                _ => self.unchecked.push(run),
            }
        }
    }

    /// The key in force after the last switch, if any.
    pub fn current(&self) -> Option<&KeySwitch> {
        self.switches.last()
    }
}

/// What bringing the Logbook under the configured key found and did, at
/// the start of a process that writes (each store's `adopt_logbook_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAdoption {
    /// No key configured and the Logbook was never keyed: a plain hash chain.
    Plain,
    /// The Logbook was keyed with the configured key already, since event `since`.
    Kept { key: KeyId, since: u64 },
    /// The switch to the configured key was recorded as event `seq`, signed
    /// under `from` (a rotation) or plainly hashed (the first key).
    Switched {
        key: KeyId,
        from: Option<KeyId>,
        seq: u64,
    },
}

/// The Logbook's head at some moment, as kept outside the database: posted
/// to the audit channel and appended to the checkpoint file, one line each:
/// `TIME SEQ HASH` (RFC 3339, the event's number, its link in hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub at: Timestamp,
    pub seq: u64,
    /// 64 lower-case hex digits.
    hash: String,
}

impl Checkpoint {
    /// A checkpoint of event `seq` whose stored link is `hash` (hex).
    pub fn new(at: Timestamp, seq: u64, hash: &str) -> Option<Self> {
        let hash = hash.trim().to_ascii_lowercase();
        (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(Self {
            at,
            seq,
            hash,
        })
    }

    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The line of the checkpoint file, without its line ending.
    pub fn line(&self) -> String {
        format!("{} {} {}", self.at, self.seq, self.hash)
    }

    /// Reads a line of the checkpoint file.
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut fields = line.split_whitespace();
        let (Some(at), Some(seq), Some(hash), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err("is not TIME SEQ HASH (three fields separated by spaces)".into());
        };
        let at = Timestamp::parse_rfc3339(at)
            .ok_or_else(|| format!("{at:?} is not an RFC 3339 time"))?;
        let seq = seq
            .parse::<u64>()
            .map_err(|_| format!("{seq:?} is not an event number"))?;
        Self::new(at, seq, hash).ok_or_else(|| format!("{hash:?} is not 64 hex digits"))
    }
}

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// Sequence numbers must run 1, 2, 3, … without gaps.
    Gap { expected: u64, found: u64 },
    /// The stored hash does not match the event and its predecessor.
    Mismatch { seq: u64 },
    /// A switch to a key that names no valid key id.
    BadKeySwitch { seq: u64 },
}

impl ChainBreak {
    pub fn seq(&self) -> u64 {
        match self {
            Self::Gap { expected, .. } => *expected,
            Self::Mismatch { seq } | Self::BadKeySwitch { seq } => *seq,
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
            Self::BadKeySwitch { seq } => write!(f, "event {seq} switches the Logbook to a key but names no valid key id: it was modified"),
        }
    }
}

/// Checks one plain link: `event` with `stored` hash follows `prev` (the
/// previous event's stored hash) and comes right after `prev_seq`.
pub fn check_link(
    prev_seq: u64,
    prev: &Hash,
    event: &LogEvent,
    stored: &Hash,
) -> Result<(), ChainBreak> {
    check_link_with(Some(Linking::Plain), prev_seq, prev, event, stored)
}

/// Checks one link computed as `linking` says; with `None` (a keyed link
/// whose key was not given) only that the event comes right after `prev_seq`.
pub fn check_link_with(
    linking: Option<Linking<'_>>,
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
    match linking {
        Some(linking) if &event.link_after(linking, prev) != stored => {
            Err(ChainBreak::Mismatch { seq: event.seq })
        }
        _ => Ok(()),
    }
}

/// How the links after some point of a chain are computed, as the switches
/// before it say.
#[derive(Clone, Debug)]
enum Mode {
    Plain,
    Keyed(KeyId),
    /// After a switch that names no valid key: the check that met that
    /// switch reports it, so the events after it need no check.
    Unknown,
}

/// Checks a chain event by event, in order, from the genesis or from a
/// stored event: the one verification every store runs, whatever it reads
/// the events from. Keyed links are checked with the key their switch names
/// when `keys` holds it; otherwise only their order is, and they are
/// reported as unchecked.
#[derive(Debug)]
pub struct ChainCheck<'k> {
    keys: &'k ChainKeys,
    mode: Mode,
    prev_seq: u64,
    prev: Hash,
    keying: Keying,
}

impl<'k> ChainCheck<'k> {
    /// A check from the first event on.
    pub fn new(keys: &'k ChainKeys) -> Self {
        Self::after(keys, &[], None, GENESIS)
    }

    /// A check of the events after event `seq` (none: from the first),
    /// whose stored hash is `hash`, given the chain's switches to a key
    /// (each with the key it names, `None` when it names none).
    pub fn after(
        keys: &'k ChainKeys,
        switches: &[(u64, Option<KeyId>)],
        seq: Option<u64>,
        hash: Hash,
    ) -> Self {
        let mode = match seq.and_then(|seq| switches.iter().rev().find(|(s, _)| *s <= seq)) {
            None => Mode::Plain,
            Some((_, Some(key))) => Mode::Keyed(key.clone()),
            Some((_, None)) => Mode::Unknown,
        };
        Self {
            keys,
            mode,
            prev_seq: seq.unwrap_or(0),
            prev: hash,
            keying: Keying::default(),
        }
    }

    /// Checks the next event and its `stored` hash.
    pub fn check(&mut self, event: &LogEvent, stored: &[u8]) -> Result<(), ChainBreak> {
        let linking = match &self.mode {
            Mode::Plain => Some(Linking::Plain),
            Mode::Keyed(id) => self.keys.find(id).map(Linking::Keyed),
            Mode::Unknown => None,
        };
        let stored = Hash::try_from(stored).map_err(|_| ChainBreak::Mismatch { seq: event.seq })?;
        check_link_with(linking, self.prev_seq, &self.prev, event, &stored)?;
        let switch = event.key_switch().transpose()?;
        if let (None, Mode::Keyed(id)) = (linking, &self.mode) {
            self.keying.skip(id, event.seq);
        }
        if let Some(key) = switch {
            self.keying.switches.push(KeySwitch {
                seq: event.seq,
                key: key.clone(),
            });
            self.mode = Mode::Keyed(key);
        }
        (self.prev_seq, self.prev) = (event.seq, stored);
        Ok(())
    }

    /// The last event checked (0 and the genesis hash for none, or where the
    /// check started) and what was found of the keying.
    pub fn finish(self) -> (u64, Hash, Keying) {
        (self.prev_seq, self.prev, self.keying)
    }
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
    fn a_keyed_link_cannot_be_recomputed_without_the_key() {
        let key = ChainKey::new(b"0123456789abcdef0123456789abcdef");
        let event = ev(1, "requested");
        let keyed = event.link_after(Linking::Keyed(&key), &GENESIS);
        assert_ne!(keyed, event.hash_after(&GENESIS));
        let other = ChainKey::new(b"0123456789abcdef0123456789abcdeF");
        assert_ne!(keyed, event.link_after(Linking::Keyed(&other), &GENESIS));
        assert_eq!(
            check_link_with(Some(Linking::Keyed(&key)), 0, &GENESIS, &event, &keyed),
            Ok(())
        );
        // Someone without the key edits the event and recomputes its hash.
        let mut edited = event.clone();
        edited.action = "denied".into();
        let forged = edited.hash_after(&GENESIS);
        assert_eq!(check_link(0, &GENESIS, &edited, &forged), Ok(()));
        assert_eq!(
            check_link_with(Some(Linking::Keyed(&key)), 0, &GENESIS, &edited, &forged),
            Err(ChainBreak::Mismatch { seq: 1 })
        );
        // Without the key only the order is checked.
        assert_eq!(check_link_with(None, 0, &GENESIS, &edited, &forged), Ok(()));
    }

    #[test]
    fn a_key_is_named_by_an_id_that_does_not_show_it() {
        let key = ChainKey::new(b"0123456789abcdef0123456789abcdef");
        let id = key.id().as_str().to_owned();
        assert_eq!(id.len(), 16);
        assert_eq!(
            ChainKey::new(b"0123456789abcdef0123456789abcdef")
                .id()
                .as_str(),
            id
        );
        assert_ne!(
            ChainKey::new(b"another key entirely, 32 bytes!!")
                .id()
                .as_str(),
            id
        );
        assert!(!format!("{key:?}").contains("0123"));
        let switch = LogEvent {
            action: KEY_SWITCH.into(),
            details: key_switch_details(key.id(), None).to_string(),
            ..ev(4, "")
        };
        assert_eq!(switch.key_switch(), Some(Ok(key.id().clone())));
        let broken = LogEvent {
            details: r#"{"key_id":"nope"}"#.into(),
            ..switch
        };
        assert_eq!(
            broken.key_switch(),
            Some(Err(ChainBreak::BadKeySwitch { seq: 4 }))
        );
        assert_eq!(ev(5, "approved").key_switch(), None);
    }

    #[test]
    fn a_checkpoint_line_reads_back_as_written() {
        let hash = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
        let c = Checkpoint::new(Timestamp::from_millis(1_764_640_800_000), 42, hash).unwrap();
        assert_eq!(c.hash(), hash.to_ascii_lowercase());
        assert_eq!(Checkpoint::parse(&c.line()), Ok(c.clone()));
        assert!(Checkpoint::parse("42 abc")
            .unwrap_err()
            .contains("TIME SEQ HASH"));
        assert!(Checkpoint::parse(&format!("yesterday 42 {hash}"))
            .unwrap_err()
            .contains("RFC 3339"));
        assert!(Checkpoint::new(c.at, 1, "abc").is_none());
    }

    #[test]
    fn unchecked_runs_of_one_key_join() {
        let a = KeyId::parse("00112233445566aa").unwrap();
        let b = KeyId::parse("00112233445566bb").unwrap();
        let mut first = Keying::default();
        first.skip(&a, 3);
        first.skip(&a, 4);
        let mut later = Keying::default();
        later.skip(&a, 5);
        later.skip(&b, 7);
        first.extend(later);
        assert_eq!(
            first.unchecked,
            vec![
                Unchecked {
                    key: a,
                    first: 3,
                    last: 5
                },
                Unchecked {
                    key: b,
                    first: 7,
                    last: 7
                },
            ]
        );
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let link = |actor, request, action| {
            let at = Timestamp::from_millis(0);
            chain_link(
                Linking::Plain,
                &GENESIS,
                1,
                at,
                actor,
                request,
                action,
                "{}",
            )
        };
        let a = link("ab", None, "c");
        let b = link("a", None, "bc");
        let c = link("a", Some(""), "bc");
        assert_ne!(a, b);
        assert_ne!(b, c);
    }
}
