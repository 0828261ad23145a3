//! [`with_retries`]: how a direct answer to a person (an ephemeral reply, a
//! `response_url`, a deferred interaction answer) is sent outside the outbox:
//! rate limits are waited out, temporary failures retried with backoff, and
//! a refusal given up on at once.

use std::future::Future;
use std::time::Duration;

use crate::app::ports::ChatError;

/// Attempts before giving up; the backoff between temporary failures doubles from 1 s.
const ATTEMPTS: u32 = 5;

/// Runs `send` until it succeeds, is refused, or has failed [`ATTEMPTS`]
/// times; `what` names the answer in logs. Answers what `send` answered
/// (e.g. where the message landed), or the last error.
pub async fn with_retries<T, F, Fut>(what: &str, mut send: F) -> Result<T, ChatError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ChatError>>,
{
    let mut last = ChatError::Transient("not sent".into());
    for attempt in 0..ATTEMPTS {
        match send().await {
            Ok(sent) => return Ok(sent),
            Err(ChatError::RateLimited { retry_after_ms }) => {
                tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
                last = ChatError::RateLimited { retry_after_ms };
            }
            Err(ChatError::Transient(e)) => {
                tracing::warn!(error = %e, attempt, "cannot send {what}; retrying");
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                last = ChatError::Transient(e);
            }
            Err(refused) => return Err(refused),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

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
}
