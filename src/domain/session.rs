//! What a request may open over AWS Session Manager, decided from the access
//! request alone. The credentials themselves come from an adapter
//! (`adapters/aws/sessions.rs`): this module decides whether they may be
//! issued, for which instances, which session documents, and until when.

use super::request::{AccessRequest, GrantState, Platform, RefusalKind};
use super::time::Timestamp;
use super::values::{InstanceId, RequestId, UserId, Username};

/// The reach of one set of Session Manager credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionScope {
    pub request: RequestId,
    /// The request's username: the `RoleSessionName`, so CloudTrail and the
    /// instance agree on who it was.
    pub username: Username,
    /// The requester's chat id: the `SourceIdentity`.
    pub requester: UserId,
    /// The requester's handle, for session tags.
    pub handle: String,
    /// Instances whose access is active now, and only those.
    pub instances: Vec<InstanceId>,
    /// `AWS-StartSSHSession`: when a Linux instance is among them.
    pub ssh: bool,
    /// `AWS-StartPortForwardingSession`: when the rules allow port forwarding,
    /// or a Windows instance is among them (RDP reaches it this way).
    pub port_forwarding: bool,
    /// `AWS-StartPortForwardingSessionToRemoteHost`: only when every rule allows it.
    pub remote_port_forwarding: bool,
    /// The end of the access: no credential may outlive it.
    pub not_after: Timestamp,
}

impl AccessRequest {
    /// The Session Manager reach of this request for `who` at `now`: only the
    /// requester of an active request, only the instances with an active grant,
    /// and of those only `only` when named (what the client connects to).
    pub fn session_scope(
        &self,
        who: &UserId,
        now: Timestamp,
        only: Option<&InstanceId>,
    ) -> Result<SessionScope, RefusalKind> {
        let not_after = self.requester_access_ends(
            who,
            now,
            "connect with it",
            "you can connect only while access is active",
        )?;
        let mut active = self.instances_in(GrantState::Active);
        if let Some(only) = only {
            active.retain(|i| &i.id == only);
            if active.is_empty() {
                return Err(RefusalKind::WrongState(format!(
                    "{only} is not an instance of {} with active access: `show {}` lists them",
                    self.id, self.id
                )));
            }
        }
        if active.is_empty() {
            return Err(RefusalKind::WrongState(format!(
                "{} has no instance with active access: `retry {}` sets up the ones that failed",
                self.id, self.id
            )));
        }
        Ok(SessionScope {
            request: self.id,
            username: self.username.clone(),
            requester: self.requester.id.clone(),
            handle: self.requester.handle.clone(),
            instances: active.iter().map(|i| i.id.clone()).collect(),
            ssh: active.iter().any(|i| i.platform == Platform::Linux),
            port_forwarding: self.requirement.port_forwarding
                || active.iter().any(|i| i.platform == Platform::Windows),
            remote_port_forwarding: self.requirement.remote_port_forwarding,
            not_after,
        })
    }
}
