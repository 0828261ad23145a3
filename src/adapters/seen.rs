//! [`Seen`]: keys of chat deliveries seen recently, so that a repeated
//! delivery (a platform's retry, or a signed request replayed within its
//! signature window) is acknowledged without acting twice.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long deliveries are remembered: longer than the 5-minute window in
/// which Slack and Discord signatures are accepted.
pub const DEDUPE_TTL: Duration = Duration::from_secs(10 * 60);

pub struct Seen {
    ttl: Duration,
    at: Mutex<HashMap<String, Instant>>,
}

impl Default for Seen {
    fn default() -> Self {
        Self::new(DEDUPE_TTL)
    }
}

impl Seen {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            at: Mutex::new(HashMap::new()),
        }
    }

    /// True the first time `key` is seen within the time to live.
    pub fn first(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        if at.len() >= 4096 && at.len().is_power_of_two() {
            at.retain(|_, seen| now.duration_since(*seen) < self.ttl);
        }
        match at.get(key) {
            Some(seen) if now.duration_since(*seen) < self.ttl => false,
            _ => {
                at.insert(key.to_owned(), now);
                true
            }
        }
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
    }
}
