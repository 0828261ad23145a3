//! Delivers Windows passwords to the requester by direct message.
//!
//! A password must never be written down: not in the outbox (the database),
//! not in the Logbook, not in a log. So it does not take the outbox path; it
//! goes straight to the chat surface the requester used, with a few retries
//! held in memory. If it cannot be delivered (the chat platform is down for
//! long, or the process stops first), the requester gets a new password by
//! running the grant again (`retry AR-n` for a failed instance, or an
//! extension), since every grant sets a new one.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use secrecy::{ExposeSecret, SecretString};

use crate::adapters::aws::PasswordSink;
use crate::adapters::chat_retry::with_retries;
use crate::app::ports::{ChatError, ChatSurface, Store};
use crate::domain::values::{InstanceId, RequestId, Username};

/// The store and the chat surfaces, attached once they exist (the provisioner
/// that uses the courier is built before them).
struct Attached {
    store: Arc<dyn Store>,
    surfaces: HashMap<String, Arc<dyn ChatSurface>>,
}

#[derive(Default)]
pub struct PasswordCourier {
    attached: OnceLock<Attached>,
}

impl PasswordCourier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn attach(&self, store: Arc<dyn Store>, surfaces: &[Arc<dyn ChatSurface>]) {
        let _ = self.attached.set(Attached {
            store,
            surfaces: surfaces
                .iter()
                .map(|s| (s.name().to_owned(), s.clone()))
                .collect(),
        });
    }

    /// Sends the message; errors name the request and instance, never the password.
    pub async fn send(
        &self,
        request: RequestId,
        instance: &InstanceId,
        username: &Username,
        password: &SecretString,
    ) -> Result<(), String> {
        let Attached { store, surfaces } =
            self.attached.get().ok_or("Passport is still starting")?;
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
            "Password for `{username}` on {instance} ({request}): {}\nUse it over RDP while the access lasts. Passport keeps no copy; a new one is set whenever access is granted again.",
            password.expose_secret()
        );
        with_retries("a Windows password", || {
            surface.direct_message(&req.requester.id, &text, &[])
        })
        .await
        .map_err(|e| match e {
            ChatError::Permanent(e) => format!("the chat platform refused the message: {e}"),
            e => e.to_string(),
        })
    }
}

impl PasswordSink for Arc<PasswordCourier> {
    fn deliver(
        &self,
        request: RequestId,
        instance: &InstanceId,
        username: &Username,
        password: SecretString,
    ) {
        let (courier, instance, username) = (self.clone(), instance.clone(), username.clone());
        tokio::spawn(async move {
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
    use crate::adapters::sqlite::{Durability, SqliteStore};
    use crate::app::effects::Effects;
    use crate::app::ports::MessageRef;
    use crate::domain::notice::{Action, CardView};
    use crate::domain::policy::Requirement;
    use crate::domain::request::{AccessRequest, InstanceInfo, NewRequest, Platform};
    use crate::domain::time::{Span, Timestamp};
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
        ) -> Result<(), ChatError> {
            let mut fail = self.fail_first.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(ChatError::RateLimited { retry_after_ms: 1 });
            }
            self.sent
                .lock()
                .unwrap()
                .push((user.to_string(), text.to_owned()));
            Ok(())
        }
        async fn post_audit(&self, _: &str) -> Result<(), ChatError> {
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
            .create(Box::new(move |id| {
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
                        channel: None,
                        extension_approval_over: None,
                    },
                    approval_window: Span::from_hours(1),
                    now: Timestamp::from_millis(0),
                });
                Ok((req, Effects::default()))
            }))
            .await
            .unwrap()
            .unwrap();
        let id = created.0.id;
        let dms = Arc::new(Dms::default());
        *dms.fail_first.lock().unwrap() = 2;
        let courier = PasswordCourier::new();
        courier.attach(store.clone(), &[dms.clone() as Arc<dyn ChatSurface>]);
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
        // Nothing of it in the database: not in the outbox, not in the Logbook.
        store.close().await;
        let raw = std::fs::read(dir.path().join("p.db")).unwrap();
        let wal = std::fs::read(dir.path().join("p.db-wal")).unwrap_or_default();
        for bytes in [raw, wal] {
            assert!(!bytes.windows(9).any(|w| w == b"Corr3ct-H"));
        }
    }
}
