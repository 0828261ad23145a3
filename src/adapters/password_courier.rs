//! Delivers Windows passwords to the requester by direct message.
//!
//! A password must never be written down: not in the outbox (the database),
//! not in the Logbook, not in a log. So it does not take the outbox path; it
//! goes straight to the chat surface the requester used, with a few retries
//! held in memory. If it cannot be delivered (the chat platform is down for
//! long, or the process stops first), the requester gets a new password by
//! running the grant again (`retry AR-n` for a failed instance, or an
//! extension), since every grant sets a new one.
//!
//! Nor does the password stay in the chat: where the direct message landed
//! (never what it said) is recorded in `password_messages`, and the
//! dispatcher deletes the message once `password_message_ttl` has passed,
//! after a restart too, with a note in the request's thread.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use secrecy::{ExposeSecret, SecretString};

use crate::adapters::aws::password::PasswordOwner;
use crate::adapters::aws::PasswordSink;
use crate::adapters::chat_retry::with_retries;
use crate::app::ports::{ChatError, ChatSurface, Clock, PasswordMessage, Store};
use crate::app::retry::{retry, Backoff, RetryPolicy, Verdict};
use crate::domain::time::Span;
use crate::domain::values::{InstanceId, RequestId, Username};

/// The store, the chat surfaces and the clock, attached once they exist (the
/// provisioner that uses the courier is built before them).
struct Attached {
    store: Arc<dyn Store>,
    surfaces: HashMap<String, Arc<dyn ChatSurface>>,
    clock: Arc<dyn Clock>,
    /// How long a password message stays in the chat.
    ttl: Span,
}

/// What the courier needs once the application is built.
pub struct CourierWiring {
    pub store: Arc<dyn Store>,
    pub surfaces: Vec<Arc<dyn ChatSurface>>,
    pub clock: Arc<dyn Clock>,
    /// How long a password message stays in the chat before it is deleted.
    pub password_message_ttl: Span,
}

#[derive(Default)]
pub struct PasswordCourier {
    attached: OnceLock<Attached>,
}

impl PasswordCourier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn attach(&self, wiring: CourierWiring) {
        let _ = self.attached.set(Attached {
            store: wiring.store,
            surfaces: wiring
                .surfaces
                .iter()
                .map(|s| (s.name().to_owned(), s.clone()))
                .collect(),
            clock: wiring.clock,
            ttl: wiring.password_message_ttl,
        });
    }

    /// Sends the message and records where it landed, for its deletion once
    /// the ttl has passed; errors name the request and instance, never the
    /// password.
    pub async fn send(
        &self,
        request: RequestId,
        instance: &InstanceId,
        username: &Username,
        password: &SecretString,
    ) -> Result<(), String> {
        let Attached {
            store,
            surfaces,
            clock,
            ttl,
        } = self.attached.get().ok_or("Passport is still starting")?;
        let req = store
            .get(request)
            .await
            .map_err(|e| format!("cannot read {request}: {e}"))?
            .ok_or_else(|| format!("{request} does not exist"))?;
        let surface = surfaces
            .get(&req.origin)
            .or_else(|| surfaces.values().next())
            .ok_or("no chat surface is configured")?;
        let text = format!(
            "Password for `{username}` on {instance} ({request}): {}\nUse it over RDP while the access lasts. This message is deleted in {ttl}. Passport keeps no copy; a new one is set whenever access is granted again.",
            password.expose_secret()
        );
        let at = with_retries("a Windows password", || {
            surface.direct_message(&req.requester.id, &text, &[])
        })
        .await
        .map_err(|e| match e {
            ChatError::Permanent(e) => format!("the chat platform refused the message: {e}"),
            e => e.to_string(),
        })?;
        let sent_at = clock.now();
        let message = PasswordMessage {
            request,
            instance: instance.clone(),
            username: username.clone(),
            surface: surface.name().to_owned(),
            at,
            sent_at,
            due: sent_at.plus(*ttl),
        };
        // The message is out; only its deletion is at stake now. A busy
        // database is worth five more tries, 0.4 s apart and doubling.
        let policy = RetryPolicy {
            backoff: Backoff::new(Span::from_millis(400), Span::from_millis(6400)),
            attempts: Some(6),
            jitter: false,
        };
        retry(
            &format!("recording the password message of {request} on {instance}"),
            policy,
            || store.save_password_message(&message),
            |_| Verdict::Backoff,
        )
        .await
        .map_err(|e| {
            format!(
                "the password was sent, but its message could not be recorded for deletion ({e}): delete it from the chat by hand"
            )
        })
    }
}

impl PasswordSink for Arc<PasswordCourier> {
    fn deliver(&self, owner: PasswordOwner, password: SecretString) {
        let courier = self.clone();
        tokio::spawn(async move {
            let PasswordOwner {
                request,
                instance,
                username,
            } = owner;
            match courier.send(request, &instance, &username, &password).await {
                Ok(()) => {
                    tracing::info!(%request, %instance, "Windows password sent to the requester")
                }
                Err(why) => tracing::error!(
                    %request, %instance, %why,
                    "could not send the Windows password; the requester gets a new one by granting again (retry or extend)"
                ),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::adapters::clock::ManualClock;
    use crate::adapters::sqlite::{Durability, SqliteStore};
    use crate::app::effects::Effects;
    use crate::app::ports::{MessageRef, Slot};
    use crate::domain::notice::{Action, CardView};
    use crate::domain::policy::Requirement;
    use crate::domain::request::{AccessRequest, InstanceInfo, NewRequest, Platform};
    use crate::domain::time::Timestamp;
    use crate::domain::values::{
        DurationLimits, GrantDuration, Person, Ticket, TicketRules, UserId,
    };

    #[derive(Default)]
    struct Dms {
        sent: Mutex<Vec<(String, String)>>,
        fail_first: Mutex<u32>,
    }

    #[async_trait]
    impl ChatSurface for Dms {
        fn name(&self) -> &str {
            "test"
        }
        async fn post_card(&self, _: &CardView) -> Result<MessageRef, ChatError> {
            Err(ChatError::Permanent("unused".into()))
        }
        async fn update_card(&self, _: &MessageRef, _: &CardView) -> Result<(), ChatError> {
            Ok(())
        }
        async fn reply_in_thread(
            &self,
            _: &MessageRef,
            _: &str,
            _: &[Action],
        ) -> Result<(), ChatError> {
            Ok(())
        }
        async fn direct_message(
            &self,
            user: &UserId,
            text: &str,
            _: &[Action],
        ) -> Result<MessageRef, ChatError> {
            let mut fail = self.fail_first.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(ChatError::RateLimited { retry_after_ms: 1 });
            }
            let mut sent = self.sent.lock().unwrap();
            sent.push((user.to_string(), text.to_owned()));
            Ok(MessageRef {
                channel: format!("D{user}"),
                message: sent.len().to_string(),
            })
        }
        async fn post_audit(&self, _: &str) -> Result<(), ChatError> {
            Ok(())
        }
        async fn delete_message(&self, _: &MessageRef) -> Result<(), ChatError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_password_goes_to_the_requester_only_and_is_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("p.db"), Durability::Normal)
                .await
                .unwrap(),
        );
        let instance = InstanceId::parse("i-0123456789abcdef0").unwrap();
        let created = store
            .create(
                &UserId::parse("dev1").unwrap(),
                0,
                Box::new(move |Slot { id, .. }| {
                    let req = AccessRequest::new(NewRequest {
                        id,
                        requester: Person {
                            id: UserId::parse("dev1").unwrap(),
                            handle: "dev1".into(),
                        },
                        origin: "test".into(),
                        instances: vec![InstanceInfo::assumed(instance, Platform::Windows)],
                        duration: GrantDuration::within(
                            Span::from_hours(1),
                            &DurationLimits::default(),
                        )
                        .unwrap(),
                        ticket: Ticket::parse("#1", &TicketRules::default()).unwrap(),
                        reason: None,
                        requirement: Requirement {
                            rules: Vec::new(),
                            max_duration: Span::from_hours(12),
                            sudo: false,
                            port_forwarding: false,
                            remote_port_forwarding: false,
                            channel: None,
                            extension_approval_over: None,
                        },
                        approval_window: Span::from_hours(1),
                        now: Timestamp::from_millis(0),
                    });
                    Ok((req, Effects::default()))
                }),
            )
            .await
            .unwrap()
            .unwrap();
        let id = created.0.id;
        let dms = Arc::new(Dms::default());
        *dms.fail_first.lock().unwrap() = 2;
        let courier = PasswordCourier::new();
        let clock = ManualClock::new(Timestamp::from_millis(1_000));
        courier.attach(CourierWiring {
            store: store.clone(),
            surfaces: vec![dms.clone() as Arc<dyn ChatSurface>],
            clock: Arc::new(clock),
            password_message_ttl: Span::from_minutes(10),
        });
        let secret = SecretString::from("Corr3ct-Horse-Battery".to_owned());
        courier
            .send(
                id,
                &InstanceId::parse("i-0123456789abcdef0").unwrap(),
                &created.0.username,
                &secret,
            )
            .await
            .unwrap();
        let sent = dms.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1, "delivered once, after the rate limits");
        assert_eq!(sent[0].0, "dev1");
        assert!(sent[0].1.contains("Corr3ct-Horse-Battery"));
        assert!(sent[0].1.contains("deleted in 10m"));
        // Where it landed is recorded for its deletion, due ten minutes later.
        let due = store
            .due_password_messages(Timestamp::from_millis(i64::MAX), 10)
            .await
            .unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].request, id);
        assert_eq!(due[0].surface, "test");
        assert_eq!(
            due[0].at,
            MessageRef {
                channel: "Ddev1".into(),
                message: "1".into()
            }
        );
        assert_eq!(
            due[0].due,
            Timestamp::from_millis(1_000).plus(Span::from_minutes(10))
        );
        // Nothing of it in the database: not in the outbox, not in the Logbook.
        store.close().await;
        let raw = std::fs::read(dir.path().join("p.db")).unwrap();
        let wal = std::fs::read(dir.path().join("p.db-wal")).unwrap_or_default();
        for bytes in [raw, wal] {
            assert!(!bytes.windows(9).any(|w| w == b"Corr3ct-H"));
        }
    }
}
