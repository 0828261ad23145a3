//! Passport's one retry policy: how long to wait after failures in a row
//! ([`Backoff`]) and the loop that calls again until success, refusal or
//! the last attempt ([`retry`]).
//!
//! Each caller keeps its own numbers (first wait, cap, attempts) and says
//! what a failure means ([`Verdict`]); the rules are the same everywhere: the
//! wait doubles with each failure that asks for a backoff, a wait the other
//! side named (a rate limit's `retry_after`) is taken as given and does not
//! grow the backoff, a refusal stops at once, and nothing waits after the
//! last attempt. Timers that outlive the process (removal retries, outbox
//! deliveries) use [`Backoff`] alone: their waits are rows, not sleeps.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use super::ports::ChatError;
use crate::domain::time::Span;

/// Exponential backoff: `first` after the first failure, doubled after each
/// further one, never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Span,
    max: Span,
}

impl Backoff {
    pub const fn new(first: Span, max: Span) -> Self {
        Self { first, max }
    }

    /// The wait after `failures` earlier failures in a row (0: the first wait).
    pub fn after(self, failures: u32) -> Span {
        // 2^40 times any sensible first wait is past every cap, and cannot overflow.
        let grown = self
            .first
            .as_millis()
            .saturating_mul(1i64 << failures.min(40));
        Span::from_millis(grown).min(self.max)
    }

    /// [`Backoff::after`] as a `std` duration, for sleeping.
    pub fn wait_after(self, failures: u32) -> Duration {
        self.after(failures).to_std()
    }
}

/// Spreads a wait by ±25%, so that many callers that failed together do not
/// call again in step. The clock's nanoseconds are random enough for that.
pub fn jitter(wait: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    wait.mul_f64(0.75 + f64::from(nanos % 1000) / 2000.0)
}

/// What a failed call means for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Give up now and answer this error (a refusal, an open breaker).
    Stop,
    /// Call again after the policy's backoff.
    Backoff,
    /// Call again after exactly this long (the other side said so).
    After(Duration),
}

impl Verdict {
    /// What a chat platform's answer means: a rate limit waits as long as it
    /// says, a temporary failure backs off, a refusal stops.
    pub fn of_chat(error: &ChatError) -> Self {
        match error {
            ChatError::RateLimited { retry_after_ms } => {
                Verdict::After(Duration::from_millis(*retry_after_ms))
            }
            ChatError::Transient(_) => Verdict::Backoff,
            ChatError::Permanent(_) => Verdict::Stop,
        }
    }
}

/// How [`retry`] calls again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    /// Calls in all, the first included; `None`: until success or [`Verdict::Stop`].
    pub attempts: Option<u32>,
    /// Spread each backoff by ±25% ([`jitter`]).
    pub jitter: bool,
}

/// Calls `call` until it succeeds, `judge` says [`Verdict::Stop`], or the
/// policy's attempts are spent; answers the last result. `what` names the
/// call in logs.
pub async fn retry<T, E, F, Fut, J>(
    what: &str,
    policy: RetryPolicy,
    mut call: F,
    mut judge: J,
) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    J: FnMut(&E) -> Verdict,
{
    let mut calls: u32 = 0;
    let mut failures: u32 = 0;
    loop {
        let error = match call().await {
            Ok(done) => return Ok(done),
            Err(e) => e,
        };
        calls = calls.saturating_add(1);
        let verdict = judge(&error);
        if verdict == Verdict::Stop || policy.attempts.is_some_and(|n| calls >= n) {
            return Err(error);
        }
        let wait = match verdict {
            Verdict::After(wait) => {
                tracing::debug!(attempt = calls, error = %error, retry_in = ?wait, "{what}: waiting as asked");
                wait
            }
            _ => {
                let wait = policy.backoff.wait_after(failures);
                failures = failures.saturating_add(1);
                let wait = if policy.jitter { jitter(wait) } else { wait };
                tracing::warn!(attempt = calls, error = %error, retry_in = ?wait, "{what}: retrying");
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_wait_up_to_the_cap() {
        let b = Backoff::new(Span::from_secs(30), Span::from_minutes(10));
        let secs: Vec<i64> = (0..7).map(|n| b.after(n).as_millis() / 1000).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(b.after(u32::MAX), Span::from_minutes(10));
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        let w = jitter(Duration::from_secs(4));
        assert!(
            w >= Duration::from_secs(3) && w <= Duration::from_secs(5),
            "{w:?}"
        );
    }

    const POLICY: RetryPolicy = RetryPolicy {
        backoff: Backoff::new(Span::from_secs(1), Span::from_secs(4)),
        attempts: Some(4),
        jitter: false,
    };

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_waiting_the_backoff_between_calls() {
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let done: Result<u32, String> = retry(
            "a call",
            POLICY,
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    n @ 0..=2 => Err(format!("failure {n}")),
                    n => Ok(n),
                }
            },
            |_| Verdict::Backoff,
        )
        .await;
        assert_eq!(done, Ok(3));
        // 1 s + 2 s + 4 s.
        assert_eq!(start.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_named_wait_is_taken_as_given_and_does_not_grow_the_backoff() {
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let done: Result<(), String> = retry(
            "a call",
            POLICY,
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Err("slow down".to_owned()),
                    1 => Err("503".to_owned()),
                    _ => Ok(()),
                }
            },
            |e| match e.as_str() {
                "slow down" => Verdict::After(Duration::from_millis(1500)),
                _ => Verdict::Backoff,
            },
        )
        .await;
        assert_eq!(done, Ok(()));
        assert_eq!(start.elapsed(), Duration::from_millis(2500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_stops_at_once_and_the_last_attempt_waits_for_nothing() {
        let calls = AtomicU32::new(0);
        let refused: Result<(), String> = retry(
            "a call",
            POLICY,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("no".to_owned())
            },
            |_| Verdict::Stop,
        )
        .await;
        assert_eq!(refused, Err("no".to_owned()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let spent: Result<(), String> = retry(
            "a call",
            POLICY,
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                Err(format!("failure {n}"))
            },
            |_| Verdict::Backoff,
        )
        .await;
        assert_eq!(spent, Err("failure 3".to_owned()));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(start.elapsed(), Duration::from_secs(7));
    }
}
