//! The health of each chat peer (the platform behind a chat surface, named
//! as the surface is), shared by everything that calls it: the outbox
//! dispatcher and the answers sent to people outside the outbox.
//!
//! A peer that is down costs bounded work: after a few temporary failures in
//! a row (whoever made the calls), its breaker opens and nothing is sent to it
//! until the backoff has passed; then one call probes, and only its success
//! lets the others go again. A single stalled channel among working ones
//! never opens it: any success closes it. An answer from the platform, even
//! a refusal or a rate limit, counts as a success: the peer is up.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::domain::time::{Span, Timestamp};

use super::ports::ChatError;
use super::retry::Backoff;

/// Temporary failures in a row on one peer that open its breaker.
pub const BREAKER_THRESHOLD: u32 = 3;
/// The longest a peer's breaker stays open between two probes.
pub const BREAKER_MAX: Span = Span::from_secs(60);
/// The wait before each probe while the breaker stays open: 1 s, doubling, at most [`BREAKER_MAX`].
const PROBE_BACKOFF: Backoff = Backoff::new(Span::from_secs(1), BREAKER_MAX);

/// One peer's breaker: how many temporary failures in a row, and until
/// when nothing but a probe may be sent.
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Timestamp>,
}

/// The breakers of every peer, one per peer.
#[derive(Debug, Default)]
pub struct PeerHealth(Mutex<HashMap<String, Breaker>>);

/// Whether a call to a peer may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Go,
    /// The breaker is open: wait until then.
    Wait(Timestamp),
    /// The breaker was open and its time has passed: this call alone probes.
    Probe,
}

impl PeerHealth {
    fn with<T>(&self, peer: &str, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(all.entry(peer.to_owned()).or_default())
    }

    /// Whether a call to `peer` may start at `now`. A probe moves the
    /// breaker's time on by the longest wait, so there is one probe at a time
    /// and a probe that never reports back is followed by another.
    pub fn admit(&self, peer: &str, now: Timestamp) -> Admission {
        self.with(peer, |b| match b.open_until {
            None => Admission::Go,
            Some(until) if now < until => Admission::Wait(until),
            Some(_) => {
                b.open_until = Some(now.plus(BREAKER_MAX));
                Admission::Probe
            }
        })
    }

    /// When every one of `peers` has its breaker open until later than
    /// `now`: the earliest of those times. `None` when any may be tried.
    pub fn all_waiting<'a>(
        &self,
        peers: impl IntoIterator<Item = &'a String>,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut earliest: Option<Timestamp> = None;
        for peer in peers {
            match all.get(peer.as_str()).and_then(|b| b.open_until) {
                Some(until) if now < until => {
                    earliest = Some(earliest.map_or(until, |e| e.min(until)));
                }
                _ => return None,
            }
        }
        earliest
    }

    /// Whether the breaker of `peer` is open (or a probe is out).
    pub fn is_open(&self, peer: &str) -> bool {
        self.with(peer, |b| b.open_until.is_some())
    }

    /// Records what a call to `peer` came to: only a temporary failure
    /// (unreachable, 5xx, a timeout) counts against it.
    pub fn record(&self, peer: &str, outcome: Result<(), &ChatError>, now: Timestamp) {
        match outcome {
            Err(ChatError::Transient(_)) => self.failed(peer, now),
            Ok(()) | Err(ChatError::Permanent(_) | ChatError::RateLimited { .. }) => {
                self.with(peer, |b| *b = Breaker::default())
            }
        }
    }

    fn failed(&self, peer: &str, now: Timestamp) {
        self.with(peer, |b| {
            b.failures = b.failures.saturating_add(1);
            if b.failures >= BREAKER_THRESHOLD {
                let wait = PROBE_BACKOFF.after(b.failures - BREAKER_THRESHOLD);
                if b.open_until.is_none() {
                    tracing::warn!(
                        peer,
                        "the chat platform keeps failing; calls to it pause and probe with backoff"
                    );
                }
                b.open_until = Some(now.plus(wait));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> ChatError {
        ChatError::Transient("503".into())
    }

    #[test]
    fn opens_after_failures_in_a_row_probes_once_and_closes_on_an_answer() {
        let health = PeerHealth::default();
        let t0 = Timestamp::from_millis(1_000_000);
        for _ in 0..BREAKER_THRESHOLD - 1 {
            assert_eq!(health.admit("slack", t0), Admission::Go);
            health.record("slack", Err(&down()), t0);
        }
        // A success in between starts the count again.
        health.record("slack", Ok(()), t0);
        for _ in 0..BREAKER_THRESHOLD {
            health.record("slack", Err(&down()), t0);
        }
        let until = t0.plus(Span::from_secs(1));
        assert_eq!(health.admit("slack", t0), Admission::Wait(until));
        // Each peer has its own breaker.
        assert_eq!(health.admit("discord", t0), Admission::Go);
        assert_eq!(health.admit("slack", until), Admission::Probe);
        assert!(matches!(health.admit("slack", until), Admission::Wait(_)));
        // The probe fails: twice the wait.
        health.record("slack", Err(&down()), until);
        assert_eq!(
            health.admit("slack", until),
            Admission::Wait(until.plus(Span::from_secs(2)))
        );
        let later = until.plus(Span::from_secs(2));
        assert_eq!(health.admit("slack", later), Admission::Probe);
        // A refusal is an answer: the platform is up.
        health.record("slack", Err(&ChatError::Permanent("no".into())), later);
        assert_eq!(health.admit("slack", later), Admission::Go);
        assert!(!health.is_open("slack"));
    }
}
