//! How a direct answer to a person (an ephemeral reply, a `response_url`, a
//! deferred interaction answer) is sent outside the outbox: rate limits are
//! waited out, temporary failures retried with backoff, and a refusal given
//! up on at once.
//!
//! [`answer`] sends through the [`Peer`]'s breaker, the one the dispatcher
//! keeps for the same platform: every temporary failure counts towards it,
//! and while it is open the answer fails at once without calling the
//! platform, so a platform that is down costs a bounded number of calls
//! whatever the number of answers. The caller then falls back as it would
//! on any failure (a direct message through the outbox, which goes out once
//! the platform is back). [`with_retries`] is the same without the breaker,
//! for what cannot wait in the outbox (a Windows password).

use std::future::Future;
use std::sync::Arc;

use crate::app::peers::{Admission, PeerHealth};
use crate::app::ports::{ChatError, Clock};
use crate::app::retry::{retry, Backoff, RetryPolicy, Verdict};
use crate::domain::time::Span;

/// Attempts before giving up; the backoff between temporary failures doubles
/// from 1 s (1, 2, 4, 8 s).
const POLICY: RetryPolicy = RetryPolicy {
    backoff: Backoff::new(Span::from_secs(1), Span::from_secs(8)),
    attempts: Some(5),
    jitter: false,
};

/// A chat platform as the answers sent to it see it: its name (the chat
/// surface's) and the health shared with the dispatcher.
#[derive(Clone)]
pub struct Peer {
    name: String,
    health: Arc<PeerHealth>,
    clock: Arc<dyn Clock>,
}

impl Peer {
    pub fn new(name: &str, health: Arc<PeerHealth>, clock: Arc<dyn Clock>) -> Self {
        Self {
            name: name.to_owned(),
            health,
            clock,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Runs `send` until it succeeds, is refused, or has failed five times
/// ([`POLICY`]); `what` names the answer in logs. Answers what `send` answered
/// (e.g. where the message landed), or the last error.
pub async fn with_retries<T, F, Fut>(what: &str, send: F) -> Result<T, ChatError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ChatError>>,
{
    retrying(what, None, send).await
}

/// [`with_retries`] through `peer`'s breaker: fails at once, without
/// calling, while the breaker is open (unless this call is its probe), and
/// stops retrying as soon as it opens.
pub async fn answer<T, F, Fut>(what: &str, peer: &Peer, send: F) -> Result<T, ChatError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ChatError>>,
{
    retrying(what, Some(peer), send).await
}

async fn retrying<T, F, Fut>(what: &str, peer: Option<&Peer>, mut send: F) -> Result<T, ChatError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ChatError>>,
{
    let call = || {
        let sent = match peer {
            Some(peer) => match peer.health.admit(&peer.name, peer.clock.now()) {
                Admission::Wait(until) => {
                    tracing::info!(peer = %peer.name, "{what} not sent: the chat platform has been failing");
                    Err(ChatError::Transient(format!(
                        "{} has been failing; not called again before {until}",
                        peer.name
                    )))
                }
                _ => Ok(send()),
            },
            None => Ok(send()),
        };
        async move {
            let sent = sent?.await;
            if let Some(peer) = peer {
                peer.health
                    .record(&peer.name, sent.as_ref().map(|_| ()), peer.clock.now());
            }
            sent
        }
    };
    retry(what, POLICY, call, |e| match e {
        // An open breaker (tripped by this answer or any other call) stops
        // the retries: the caller falls back to the outbox.
        ChatError::Transient(e) if peer.is_some_and(|p| p.health.is_open(&p.name)) => {
            tracing::warn!(error = %e, "cannot send {what}; the chat platform keeps failing, so not retrying");
            Verdict::Stop
        }
        e => Verdict::of_chat(e),
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::adapters::clock::ManualClock;
    use crate::app::peers::BREAKER_THRESHOLD;
    use crate::domain::time::{Span, Timestamp};

    #[tokio::test(start_paused = true)]
    async fn waits_out_rate_limits_and_gives_up_on_refusals() {
        let calls = AtomicU32::new(0);
        let sent = with_retries("an answer", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(ChatError::RateLimited {
                    retry_after_ms: 1500,
                }),
                1 => Err(ChatError::Transient("503".into())),
                _ => Ok(()),
            }
        })
        .await;
        assert_eq!(sent, Ok(()));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let refused: Result<(), ChatError> = with_retries("an answer", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(ChatError::Permanent("channel_not_found".into()))
        })
        .await;
        assert!(matches!(refused, Err(ChatError::Permanent(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_stop_at_the_shared_breaker_and_go_again_after_its_backoff() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        let health = Arc::new(PeerHealth::default());
        let peer = Peer::new("slack", health.clone(), Arc::new(clock.clone()));
        let calls = AtomicU32::new(0);
        let failing = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(ChatError::Transient("503".into()))
        };
        // The first answer fails until the breaker opens, not five times.
        assert!(answer("an answer", &peer, failing).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), BREAKER_THRESHOLD);
        // While it is open, answers fail without a call; so does the dispatcher.
        for _ in 0..10 {
            assert!(answer("an answer", &peer, failing).await.is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), BREAKER_THRESHOLD);
        assert!(matches!(
            health.admit("slack", clock.now()),
            Admission::Wait(_)
        ));
        // After the backoff one answer probes; its success closes the breaker.
        clock.advance(Span::from_secs(1));
        let sent = answer("an answer", &peer, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .await;
        assert_eq!(sent, Ok(()));
        assert_eq!(calls.load(Ordering::SeqCst), BREAKER_THRESHOLD + 1);
        assert!(!health.is_open("slack"));
    }
}
