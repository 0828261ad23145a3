//! The dry-run provisioner: used when no AWS configuration is present. It
//! treats every well-formed instance id as a running Linux instance (or as
//! described in configuration) and reports what it would send to each one.
//! With a chat platform, [`DryRunLabel`] marks everything people see as a dry run.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::app::ports::{
    ChatError, ChatSurface, Described, GrantSpec, MessageRef, ProvisionError, Provisioner,
    RevokeSpec,
};
use crate::domain::notice::{Action, CardView};
use crate::domain::request::{InstanceInfo, InstanceOutcome, Platform};
use crate::domain::values::{InstanceId, UserId};

pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

pub struct DryRunProvisioner {
    known: BTreeMap<InstanceId, InstanceInfo>,
    sink: Option<Sink>,
}

impl DryRunProvisioner {
    /// `known` describes instances by id; `sink` receives one line per command
    /// that would be sent (none when `None`).
    pub fn new(known: Vec<InstanceInfo>, sink: Option<Sink>) -> Self {
        Self {
            known: known.into_iter().map(|i| (i.id.clone(), i)).collect(),
            sink,
        }
    }

    fn say(&self, line: String) {
        if let Some(sink) = &self.sink {
            sink(&line);
        }
    }
}

#[async_trait]
impl Provisioner for DryRunProvisioner {
    fn name(&self) -> &str {
        "dry-run"
    }

    async fn describe(&self, ids: &[InstanceId]) -> Result<Vec<Described>, ProvisionError> {
        Ok(ids
            .iter()
            .map(|id| match self.known.get(id) {
                Some(info) if info.state != "running" => Described::Unusable {
                    id: id.clone(),
                    reason: format!("the instance is {}, not running", info.state),
                },
                Some(info) => Described::Usable(info.clone()),
                None => Described::Usable(InstanceInfo::assumed(id.clone(), Platform::Linux)),
            })
            .collect())
    }

    async fn grant(&self, spec: &GrantSpec) -> Result<Vec<InstanceOutcome>, ProvisionError> {
        Ok(spec
            .instances
            .iter()
            .map(|i| {
                let document = match i.platform {
                    Platform::Linux => "Passport-GrantLinux",
                    Platform::Windows => "Passport-GrantWindows",
                };
                let login = if spec.trusted_ca_keys.is_empty() || i.platform != Platform::Linux {
                    String::new()
                } else {
                    format!(
                        " login=certificate ({} CA keys)",
                        spec.trusted_ca_keys.len()
                    )
                };
                self.say(format!(
                    "[dry-run] {} → {}: {document} username={} expires={} sudo={}{login}",
                    spec.request,
                    i.id,
                    spec.username,
                    spec.expires_at,
                    if spec.sudo { "yes" } else { "no" }
                ));
                InstanceOutcome {
                    instance: i.id.clone(),
                    ok: true,
                    detail: None,
                }
            })
            .collect())
    }

    async fn revoke(&self, spec: &RevokeSpec) -> Result<Vec<InstanceOutcome>, ProvisionError> {
        Ok(spec
            .instances
            .iter()
            .map(|i| {
                let document = match i.platform {
                    Platform::Linux => "Passport-RevokeLinux",
                    Platform::Windows => "Passport-RevokeWindows",
                };
                self.say(format!(
                    "[dry-run] {} → {}: {document} username={}",
                    spec.request, i.id, spec.username
                ));
                InstanceOutcome {
                    instance: i.id.clone(),
                    ok: true,
                    detail: None,
                }
            })
            .collect())
    }
}

/// A chat surface that marks everything it shows as a dry run. A chat
/// platform runs on the dry-run provisioner only when the configuration says
/// `provisioner = "dry-run"`, and then no card, thread reply, direct message or
/// audit line may look as if access was granted.
pub struct DryRunLabel {
    inner: Arc<dyn ChatSurface>,
}

/// What every labelled text starts with.
pub const DRY_RUN: &str = "🧪 DRY RUN (nothing is created on any instance)";

impl DryRunLabel {
    pub fn new(inner: Arc<dyn ChatSurface>) -> Self {
        Self { inner }
    }

    fn card(card: &CardView) -> CardView {
        let mut card = card.clone();
        card.status = format!("{DRY_RUN} · {}", card.status);
        card
    }

    fn text(text: &str) -> String {
        format!("{DRY_RUN} · {text}")
    }
}

#[async_trait]
impl ChatSurface for DryRunLabel {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn post_card(&self, card: &CardView) -> Result<MessageRef, ChatError> {
        self.inner.post_card(&Self::card(card)).await
    }

    async fn update_card(&self, at: &MessageRef, card: &CardView) -> Result<(), ChatError> {
        self.inner.update_card(at, &Self::card(card)).await
    }

    async fn reply_in_thread(
        &self,
        at: &MessageRef,
        text: &str,
        actions: &[Action],
    ) -> Result<(), ChatError> {
        self.inner
            .reply_in_thread(at, &Self::text(text), actions)
            .await
    }

    async fn direct_message(
        &self,
        user: &UserId,
        text: &str,
        actions: &[Action],
    ) -> Result<MessageRef, ChatError> {
        self.inner
            .direct_message(user, &Self::text(text), actions)
            .await
    }

    async fn post_audit(&self, line: &str) -> Result<(), ChatError> {
        self.inner.post_audit(&Self::text(line)).await
    }

    async fn delete_message(&self, at: &MessageRef) -> Result<(), ChatError> {
        self.inner.delete_message(at).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::adapters::console::ConsoleSurface;
    use crate::domain::request::RequestState;
    use crate::domain::values::RequestId;

    #[tokio::test]
    async fn everything_a_person_sees_says_dry_run() {
        let out: Arc<Mutex<Vec<u8>>> = Arc::default();
        let surface = DryRunLabel::new(Arc::new(ConsoleSurface::new(out.clone())));
        let user = UserId::parse("dev1").unwrap();
        let card = CardView {
            request: RequestId::new(1).unwrap(),
            state: RequestState::Active,
            requester_id: user.clone(),
            requester: "dev1".into(),
            instances: Vec::new(),
            duration: "1h".into(),
            ticket: "ticket#1".into(),
            ticket_url: None,
            reason: None,
            required: "1 approval".into(),
            approvers: Vec::new(),
            approved_by: Vec::new(),
            status: "active until 10:00".into(),
            actions: Vec::new(),
            channel: None,
        };
        let at = surface.post_card(&card).await.unwrap();
        surface.update_card(&at, &card).await.unwrap();
        surface
            .reply_in_thread(&at, "🟢 provisioned", &[])
            .await
            .unwrap();
        surface.direct_message(&user, "ssh …", &[]).await.unwrap();
        surface.post_audit("AR-1 granted").await.unwrap();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        for said in [
            "active until 10:00",
            "🟢 provisioned",
            "ssh …",
            "AR-1 granted",
        ] {
            let line = text
                .lines()
                .find(|l| l.contains(said))
                .unwrap_or_else(|| panic!("{said} not in {text}"));
            assert!(line.contains("DRY RUN"), "{line}");
        }
    }
}
