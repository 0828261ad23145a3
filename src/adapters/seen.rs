//! [`Seen`]: keys of chat deliveries seen recently, so that a repeated
//! delivery (a platform's retry, or a signed request replayed within its
//! signature window) is acknowledged without acting twice.
//!
//! It stays cheap however many deliveries arrive: keys are kept as 128-bit
//! keyed hashes in 64 shards, each with its own lock, and forgotten by
//! generation (a shard's current set becomes its previous one every
//! time to live, and the previous one is dropped), so no single step ever
//! walks or rehashes every key while deliveries wait.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long deliveries are remembered at least: a signed request is accepted
/// while its timestamp is within 5 minutes of now, so it may arrive over a
/// span of 10 minutes.
pub const DEDUPE_TTL: Duration = Duration::from_secs(10 * 60);

const SHARDS: usize = 64;

struct Shard {
    current: HashSet<u128>,
    previous: HashSet<u128>,
    rotated_at: Instant,
}

pub struct Seen {
    ttl: Duration,
    /// Two independently keyed hashers make a 128-bit key: two deliveries
    /// are mistaken for one with a chance of about n²/2¹²⁹.
    hashers: (RandomState, RandomState),
    shards: Vec<Mutex<Shard>>,
}

impl Default for Seen {
    fn default() -> Self {
        Self::new(DEDUPE_TTL)
    }
}

impl Seen {
    /// Keys are remembered for at least `ttl` and at most twice that.
    pub fn new(ttl: Duration) -> Self {
        let now = Instant::now();
        Self {
            ttl,
            hashers: (RandomState::new(), RandomState::new()),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        current: HashSet::new(),
                        previous: HashSet::new(),
                        rotated_at: now,
                    })
                })
                .collect(),
        }
    }

    /// True the first time `key` is seen within the time to live.
    pub fn first(&self, key: &str) -> bool {
        let hash = (u128::from(self.hashers.0.hash_one(key)) << 64)
            | u128::from(self.hashers.1.hash_one(key));
        let now = Instant::now();
        let mut shard = self.shards[(hash as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let age = now.duration_since(shard.rotated_at);
        if age >= self.ttl {
            let current = std::mem::take(&mut shard.current);
            shard.previous = if age >= self.ttl * 2 {
                HashSet::new()
            } else {
                current
            };
            shard.rotated_at = now;
        }
        if shard.previous.contains(&hash) {
            return false;
        }
        shard.current.insert(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_seen_once() {
        let seen = Seen::new(Duration::from_secs(60));
        assert!(seen.first("event:Ev1"));
        assert!(!seen.first("event:Ev1"));
        assert!(seen.first("event:Ev2"));
        for i in 0..300_000 {
            assert!(seen.first(&format!("trigger:{i}.bench")), "{i}");
        }
        for i in 0..300_000 {
            assert!(!seen.first(&format!("trigger:{i}.bench")));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_kept_for_the_time_to_live_then_forgotten() {
        let seen = Seen::new(Duration::from_secs(60));
        assert!(seen.first("a"));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!seen.first("a"), "within the time to live");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!seen.first("a"), "kept one generation more");
        tokio::time::advance(Duration::from_secs(121)).await;
        assert!(seen.first("a"), "forgotten after two generations");
    }
}
