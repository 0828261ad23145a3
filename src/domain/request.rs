//! The access request, its grants, and the state machine they move through.
//!
//! ```text
//! Pending ─► Approved ─► Provisioning ─► Active ─► Completed | Expired | Revoked
//!    ├─► Denied / Cancelled / ApprovalTimedOut
//!    Approved / Provisioning ─► Revoked;  Provisioning ─► Failed
//! ```
//!
//! Every method checks the current state and returns an error for an illegal
//! transition; none panics. The access clock starts when the request becomes
//! Active, and total active time never exceeds the request's maximum (at most 12h).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::policy::{Membership, Qualification, Requirement};
use super::time::{Span, Timestamp};
use super::values::{
    DurationLimits, GrantDuration, InstanceId, Person, Reason, RequestId, Ticket, UserId, Username,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    Pending,
    Approved,
    Provisioning,
    Active,
    Completed,
    Expired,
    Revoked,
    Denied,
    Cancelled,
    ApprovalTimedOut,
    Failed,
}

impl RequestState {
    pub const ALL: [RequestState; 11] = [
        Self::Pending,
        Self::Approved,
        Self::Provisioning,
        Self::Active,
        Self::Completed,
        Self::Expired,
        Self::Revoked,
        Self::Denied,
        Self::Cancelled,
        Self::ApprovalTimedOut,
        Self::Failed,
    ];

    /// The transition table. Everything not listed is illegal.
    pub fn can_become(self, next: RequestState) -> bool {
        use RequestState::*;
        matches!(
            (self, next),
            (Pending, Approved | Denied | Cancelled | ApprovalTimedOut)
                | (Approved, Provisioning | Revoked)
                | (Provisioning, Active | Failed | Revoked)
                | (Active, Completed | Expired | Revoked)
        )
    }

    /// No further transition is possible.
    pub fn is_final(self) -> bool {
        Self::ALL.iter().all(|next| !self.can_become(*next))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Provisioning => "provisioning",
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Denied => "denied",
            Self::Cancelled => "cancelled",
            Self::ApprovalTimedOut => "approval_timed_out",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Pending => "Pending approval",
            Self::Approved => "Approved",
            Self::Provisioning => "Provisioning",
            Self::Active => "Active",
            Self::Completed => "Completed",
            Self::Expired => "Expired",
            Self::Revoked => "Revoked",
            Self::Denied => "Denied",
            Self::Cancelled => "Cancelled",
            Self::ApprovalTimedOut => "Approval timed out",
            Self::Failed => "Failed",
        }
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    Pending,
    Provisioning,
    Active,
    Failed,
    Removing,
    Removed,
    RemovalFailed,
}

impl GrantState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Provisioning => "provisioning",
            Self::Active => "active",
            Self::Failed => "failed",
            Self::Removing => "removing",
            Self::Removed => "removed",
            Self::RemovalFailed => "removal_failed",
        }
    }

    /// The user may exist on the instance in this state.
    pub fn may_hold_user(self) -> bool {
        matches!(
            self,
            Self::Provisioning | Self::Active | Self::Removing | Self::RemovalFailed
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    Linux,
    Windows,
}

/// What is known about an instance when the request is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: InstanceId,
    pub name: Option<String>,
    pub platform: Platform,
    pub state: String,
    pub tags: BTreeMap<String, String>,
    /// Private IPs of every network interface.
    pub private_ips: Vec<String>,
}

impl InstanceInfo {
    /// A running instance with nothing else known about it.
    pub fn assumed(id: InstanceId, platform: Platform) -> Self {
        Self {
            id,
            name: None,
            platform,
            state: "running".into(),
            tags: BTreeMap::new(),
            private_ips: Vec::new(),
        }
    }
}

/// The short-lived user on one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub instance: InstanceId,
    pub state: GrantState,
    /// The last failure, if any, in a form fit to show people.
    pub detail: Option<String>,
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub by: UserId,
    pub handle: String,
    pub at: Timestamp,
    /// The rules this approver's approval counts towards.
    pub counts_for: Vec<String>,
    /// How the approver qualified for each of those rules (empty in approvals
    /// stored before this was recorded).
    #[serde(default)]
    pub qualified: Vec<Qualification>,
}

/// Who ended or decided a request, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub by: Option<UserId>,
    pub handle: String,
    pub at: Timestamp,
    pub reason: Option<Reason>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    pub id: RequestId,
    pub requester: Person,
    /// The chat surface the request came from.
    pub origin: String,
    pub instances: Vec<InstanceInfo>,
    pub duration: GrantDuration,
    pub ticket: Ticket,
    pub reason: Option<Reason>,
    pub requirement: Requirement,
    pub username: Username,
    pub state: RequestState,
    pub approvals: Vec<Approval>,
    pub grants: Vec<Grant>,
    pub created_at: Timestamp,
    pub approval_deadline: Timestamp,
    pub activated_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    /// Time added by extensions, in total.
    pub extended_by: Span,
    /// The denial, cancellation, completion, revocation or expiry.
    pub decision: Option<Decision>,
    /// An extension waiting for an approver, when the policy asks for one.
    #[serde(default)]
    pub pending_extension: Option<PendingExtension>,
    /// Reconciliation ran the removal again after the request ended and found nothing left.
    #[serde(default)]
    pub removal_verified: bool,
    /// Certificates issued so far from Passport's SSH CA; numbers their serials.
    #[serde(default)]
    pub certificates_issued: u32,
    /// Extensions asked for that waited for an approver, so far; numbers them,
    /// so that a prompt's buttons name the one extension they were shown for.
    #[serde(default)]
    pub extensions_asked: u32,
}

/// An extension asked for but not yet approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingExtension {
    /// Which of the request's guarded extensions this is (1, 2, …); 0 in
    /// requests stored before extensions were numbered.
    #[serde(default)]
    pub seq: u32,
    pub by: Span,
    pub asked_at: Timestamp,
    /// What must approve it: the rules whose extension threshold it passes,
    /// each with its own approvals. Empty in requests stored before this was
    /// recorded; those fall back to every rule that needs approvals.
    #[serde(default)]
    pub requirement: Option<Requirement>,
    /// Approvals recorded for this extension so far.
    #[serde(default)]
    pub approvals: Vec<Approval>,
}

/// What approving a pending extension did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionApproval {
    /// Recorded; more approvals are still needed.
    Recorded { still_needed: String },
    /// Approved: the access is extended.
    Extended(Extension),
}

/// Why a command cannot be carried out; the message is shown to the person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusalKind {
    #[error("{0}")]
    NotAllowed(String),
    #[error("{0}")]
    WrongState(String),
    #[error("{0}")]
    AlreadyDone(String),
}

pub type Refusal = RefusalKind;

/// What an approval did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalOutcome {
    /// Recorded; more approvals are still needed.
    Recorded { still_needed: String },
    /// The request is now approved.
    Approved,
}

/// What an extension did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub added: Span,
    pub new_expiry: Timestamp,
    /// True when less than asked was added because of the maximum.
    pub capped: bool,
    pub remaining_allowance: Span,
}

/// The result of provisioning or removing on one instance, as reported by a provisioner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceOutcome {
    pub instance: InstanceId,
    pub ok: bool,
    pub detail: Option<String>,
}

pub struct NewRequest {
    pub id: RequestId,
    pub requester: Person,
    pub origin: String,
    pub instances: Vec<InstanceInfo>,
    pub duration: GrantDuration,
    pub ticket: Ticket,
    pub reason: Option<Reason>,
    pub requirement: Requirement,
    pub approval_window: Span,
    pub now: Timestamp,
}

impl AccessRequest {
    /// A new pending request. The requested duration is cut to the requirement's
    /// maximum by the caller before this is called, so this cannot fail.
    pub fn new(n: NewRequest) -> Self {
        let grants = n
            .instances
            .iter()
            .map(|i| Grant {
                instance: i.id.clone(),
                state: GrantState::Pending,
                detail: None,
                attempts: 0,
            })
            .collect();
        Self {
            username: Username::for_request(&n.requester.handle, n.id),
            id: n.id,
            requester: n.requester,
            origin: n.origin,
            instances: n.instances,
            duration: n.duration,
            ticket: n.ticket,
            reason: n.reason,
            requirement: n.requirement,
            state: RequestState::Pending,
            approvals: Vec::new(),
            grants,
            created_at: n.now,
            approval_deadline: n.now.plus(n.approval_window),
            activated_at: None,
            expires_at: None,
            certificates_issued: 0,
            extensions_asked: 0,
            extended_by: Span::ZERO,
            decision: None,
            pending_extension: None,
            removal_verified: false,
        }
    }

    fn become_(&mut self, next: RequestState) -> Result<(), Refusal> {
        if self.state.can_become(next) {
            self.state = next;
            Ok(())
        } else {
            Err(RefusalKind::WrongState(format!(
                "{} is {}, so it cannot become {}",
                self.id,
                self.state.label().to_lowercase(),
                next.label().to_lowercase()
            )))
        }
    }

    fn state_refusal(&self, action: &str) -> Refusal {
        let hint = match self.state {
            RequestState::Pending => "",
            RequestState::Approved | RequestState::Provisioning => {
                " (access is being set up; try again in a moment)"
            }
            RequestState::Active => " (access is active)",
            _ => " (it is closed; make a new request if you still need access)",
        };
        RefusalKind::WrongState(format!(
            "cannot {action} {}: it is {}{hint}",
            self.id,
            self.state.label().to_lowercase()
        ))
    }

    pub fn is_requester(&self, user: &UserId) -> bool {
        &self.requester.id == user
    }

    /// The person may approve or deny at least one of this request's rules.
    pub fn is_approver(&self, who: &Membership) -> bool {
        who.user != self.requester.id && !self.requirement.rules_for(who).is_empty()
    }

    /// Records an approval. Refuses the requester, people who are not approvers
    /// of a rule that still needs approvals, and repeated approvals.
    pub fn approve(
        &mut self,
        who: &Membership,
        handle: &str,
        now: Timestamp,
    ) -> Result<ApprovalOutcome, Refusal> {
        if self.state != RequestState::Pending {
            if self.state != RequestState::Denied && self.approvals.iter().any(|a| a.by == who.user)
            {
                return Err(RefusalKind::AlreadyDone(format!(
                    "you already approved {}",
                    self.id
                )));
            }
            // A late click (or two at the same moment) must not be told to try again.
            if matches!(
                self.state,
                RequestState::Approved | RequestState::Provisioning | RequestState::Active
            ) {
                return Err(RefusalKind::AlreadyDone(format!(
                    "{} is already approved",
                    self.id
                )));
            }
            return Err(self.state_refusal("approve"));
        }
        if self.is_requester(&who.user) {
            return Err(RefusalKind::NotAllowed(format!(
                "you cannot approve your own request {}: ask an approver ({})",
                self.id,
                self.requirement.describe()
            )));
        }
        if self.approvals.iter().any(|a| a.by == who.user) {
            return Err(RefusalKind::AlreadyDone(format!(
                "you already approved {}; it still needs {}",
                self.id,
                self.still_needed()
            )));
        }
        let counts_for = self.requirement.still_open_for(who, &self.approvals);
        if counts_for.is_empty() {
            return Err(RefusalKind::NotAllowed(format!(
                "you are not an approver for {}: it needs {}",
                self.id,
                self.still_needed()
            )));
        }
        self.approvals.push(Approval {
            by: who.user.clone(),
            handle: handle.to_owned(),
            at: now,
            qualified: self.requirement.qualifications(who, &counts_for),
            counts_for,
        });
        if self.requirement.satisfied(&self.approvals) {
            self.become_(RequestState::Approved)?;
            Ok(ApprovalOutcome::Approved)
        } else {
            Ok(ApprovalOutcome::Recorded {
                still_needed: self.still_needed(),
            })
        }
    }

    /// Approves a request whose requirement needs no approval.
    pub fn auto_approve(&mut self) -> Result<(), Refusal> {
        if !self.requirement.auto_approved() {
            return Err(RefusalKind::NotAllowed(format!(
                "{} needs {}",
                self.id,
                self.requirement.describe()
            )));
        }
        self.become_(RequestState::Approved)
    }

    /// An active request whose extension waits for an approver: then
    /// approving or denying decides the extension, not the request.
    pub fn has_pending_extension(&self) -> bool {
        self.state == RequestState::Active && self.pending_extension.is_some()
    }

    /// When the access of `who` ends, for what only the requester may do
    /// while access is active and unexpired (a certificate, Session Manager
    /// credentials). `requester_may` finishes "only the requester of AR-n can
    /// …"; `only_while_active` is what an ended request's refusal says.
    pub fn requester_access_ends(
        &self,
        who: &UserId,
        now: Timestamp,
        requester_may: &str,
        only_while_active: &str,
    ) -> Result<Timestamp, Refusal> {
        if !self.is_requester(who) {
            return Err(RefusalKind::NotAllowed(format!(
                "only the requester of {} can {requester_may}",
                self.id
            )));
        }
        match (self.state, self.expires_at) {
            (RequestState::Active, Some(at)) if at > now => Ok(at),
            (RequestState::Active, _) => Err(RefusalKind::WrongState(format!(
                "{}'s access has run out: request access again",
                self.id
            ))),
            (state, _) => Err(RefusalKind::WrongState(format!(
                "{} is {}: {only_while_active}",
                self.id,
                state.label()
            ))),
        }
    }

    /// What approvals are still missing, e.g. "1 more approval from group sre-leads".
    pub fn still_needed(&self) -> String {
        self.requirement.still_needed(&self.approvals)
    }

    pub fn deny(
        &mut self,
        who: &Membership,
        handle: &str,
        is_admin: bool,
        reason: Option<Reason>,
        now: Timestamp,
    ) -> Result<(), Refusal> {
        if self.is_requester(&who.user) {
            return Err(RefusalKind::NotAllowed(format!(
                "you cannot deny your own request: use `cancel {}` to withdraw it",
                self.id
            )));
        }
        if !is_admin && !self.is_approver(who) {
            return Err(RefusalKind::NotAllowed(format!(
                "you are not an approver for {}: it needs {}",
                self.id,
                self.requirement.describe()
            )));
        }
        if self.state != RequestState::Pending {
            return Err(self.state_refusal("deny"));
        }
        self.become_(RequestState::Denied)?;
        self.decide(Some(&who.user), handle, now, reason);
        Ok(())
    }

    pub fn cancel(&mut self, who: &UserId, handle: &str, now: Timestamp) -> Result<(), Refusal> {
        if !self.is_requester(who) {
            return Err(RefusalKind::NotAllowed(format!(
                "only the requester can cancel {}; approvers can `deny {}`",
                self.id, self.id
            )));
        }
        if self.state != RequestState::Pending {
            if self.state == RequestState::Active {
                return Err(RefusalKind::WrongState(format!(
                    "{} is already active: use `complete {}` to give access back",
                    self.id, self.id
                )));
            }
            return Err(self.state_refusal("cancel"));
        }
        self.become_(RequestState::Cancelled)?;
        self.decide(Some(who), handle, now, None);
        Ok(())
    }

    /// Pending past the approval window: the request times out.
    pub fn time_out(&mut self, now: Timestamp) -> Result<(), Refusal> {
        if now < self.approval_deadline {
            return Err(RefusalKind::WrongState(format!(
                "{} is not past its approval deadline",
                self.id
            )));
        }
        self.become_(RequestState::ApprovalTimedOut)?;
        self.decide(None, "passport", now, None);
        Ok(())
    }

    /// Approved → Provisioning: every pending grant starts provisioning.
    pub fn begin_provisioning(&mut self) -> Result<(), Refusal> {
        self.become_(RequestState::Provisioning)?;
        for g in &mut self.grants {
            g.state = GrantState::Provisioning;
            g.attempts += 1;
        }
        Ok(())
    }

    /// Records provisioning results. While Provisioning, the request becomes
    /// Active if any instance succeeded (the clock starts now) or Failed if
    /// none did. If the request was revoked meanwhile, every grant that
    /// succeeded is marked for removal. Returns the instances to remove.
    pub fn record_provisioning(
        &mut self,
        outcomes: &[InstanceOutcome],
        now: Timestamp,
    ) -> Result<Vec<InstanceId>, Refusal> {
        for outcome in outcomes {
            if let Some(g) = self
                .grants
                .iter_mut()
                .find(|g| g.instance == outcome.instance && g.state == GrantState::Provisioning)
            {
                g.state = if outcome.ok {
                    GrantState::Active
                } else {
                    GrantState::Failed
                };
                g.detail = outcome.detail.clone();
            }
        }
        // Instances the provisioner did not report on count as failed: the user may or may not
        // exist, so they are removed like the others to leave nothing behind.
        for g in self
            .grants
            .iter_mut()
            .filter(|g| g.state == GrantState::Provisioning)
        {
            g.state = GrantState::Failed;
            g.detail = Some("no result from the provisioner".into());
        }
        match self.state {
            RequestState::Provisioning => {
                if self.grants.iter().any(|g| g.state == GrantState::Active) {
                    self.become_(RequestState::Active)?;
                    self.activated_at = Some(now);
                    self.expires_at = Some(now.plus(self.duration.span()));
                    Ok(Vec::new())
                } else {
                    self.become_(RequestState::Failed)?;
                    Ok(self.mark_removing())
                }
            }
            RequestState::Revoked => Ok(self.mark_removing()),
            // A retry of failed instances while access is active: only the grants change.
            RequestState::Active => Ok(Vec::new()),
            _ => Err(self.state_refusal("record provisioning for")),
        }
    }

    /// Marks every grant that may hold a user for removal, including failed
    /// ones (a failed grant may have half-created the user). Returns their instances.
    pub fn mark_removing(&mut self) -> Vec<InstanceId> {
        let mut out = Vec::new();
        for g in &mut self.grants {
            let needs = match g.state {
                GrantState::Active
                | GrantState::Failed
                | GrantState::RemovalFailed
                | GrantState::Removing => true,
                GrantState::Provisioning => self.state != RequestState::Revoked,
                GrantState::Pending | GrantState::Removed => false,
            };
            if g.state == GrantState::Pending {
                g.state = GrantState::Removed;
            }
            if needs {
                g.state = GrantState::Removing;
                out.push(g.instance.clone());
            }
        }
        out
    }

    /// Records removal results; failures stay visible as `removal_failed`.
    pub fn record_removal(&mut self, outcomes: &[InstanceOutcome]) {
        for outcome in outcomes {
            if let Some(g) = self.grants.iter_mut().find(|g| {
                g.instance == outcome.instance
                    && matches!(g.state, GrantState::Removing | GrantState::RemovalFailed)
            }) {
                if outcome.ok {
                    g.state = GrantState::Removed;
                    g.detail = None;
                } else {
                    g.state = GrantState::RemovalFailed;
                    g.detail = outcome.detail.clone();
                    g.attempts += 1;
                }
            }
        }
    }

    /// Records a refresh of on-instance expiries. A user that a refresh
    /// re-created after the request ended (an extension racing a completion)
    /// is marked for removal again; returns those instances.
    pub fn record_refresh(&mut self, outcomes: &[InstanceOutcome]) -> Vec<InstanceId> {
        if self.state == RequestState::Active {
            return Vec::new();
        }
        let mut again = Vec::new();
        for o in outcomes.iter().filter(|o| o.ok) {
            if let Some(g) = self.grants.iter_mut().find(|g| g.instance == o.instance) {
                g.state = GrantState::Removing;
                again.push(g.instance.clone());
            }
        }
        again
    }

    /// Records reconciliation's second removal of an ended request: with no
    /// failure the removal is verified; instances that failed may still hold
    /// the user and go back to `removal_failed`.
    pub fn record_removal_check(&mut self, failed: &[InstanceOutcome]) {
        if failed.is_empty() {
            self.removal_verified = true;
            return;
        }
        for o in failed {
            if let Some(g) = self.grants.iter_mut().find(|g| g.instance == o.instance) {
                g.state = GrantState::RemovalFailed;
                g.detail = o.detail.clone();
            }
        }
    }

    /// Grants whose user still needs removing.
    pub fn pending_removals(&self) -> Vec<InstanceId> {
        self.grants
            .iter()
            .filter(|g| matches!(g.state, GrantState::Removing | GrantState::RemovalFailed))
            .map(|g| g.instance.clone())
            .collect()
    }

    /// The requester gives access back early.
    pub fn complete(
        &mut self,
        who: &UserId,
        handle: &str,
        is_admin: bool,
        now: Timestamp,
    ) -> Result<Vec<InstanceId>, Refusal> {
        if !self.is_requester(who) && !is_admin {
            return Err(RefusalKind::NotAllowed(format!(
                "only the requester can complete {}; approvers and admins can `revoke {}`",
                self.id, self.id
            )));
        }
        if self.state != RequestState::Active {
            return Err(self.state_refusal("complete"));
        }
        self.become_(RequestState::Completed)?;
        self.decide(Some(who), handle, now, None);
        Ok(self.mark_removing())
    }

    /// Access time is up.
    pub fn expire(&mut self, now: Timestamp) -> Result<Vec<InstanceId>, Refusal> {
        match self.expires_at {
            Some(at) if now >= at => {}
            _ => {
                return Err(RefusalKind::WrongState(format!(
                    "{} has not reached its expiry",
                    self.id
                )))
            }
        }
        self.become_(RequestState::Expired)?;
        self.decide(None, "passport", now, None);
        Ok(self.mark_removing())
    }

    /// An approver of the request or an admin ends access now.
    pub fn revoke(
        &mut self,
        who: &Membership,
        handle: &str,
        is_admin: bool,
        reason: Option<Reason>,
        now: Timestamp,
    ) -> Result<Vec<InstanceId>, Refusal> {
        if !is_admin && !self.is_approver(who) {
            let hint = if self.is_requester(&who.user) {
                format!("; to give your access back use `complete {}`", self.id)
            } else {
                String::new()
            };
            return Err(RefusalKind::NotAllowed(format!(
                "only an approver of {} or an admin can revoke it{hint}",
                self.id
            )));
        }
        if !matches!(
            self.state,
            RequestState::Approved | RequestState::Provisioning | RequestState::Active
        ) {
            if self.state == RequestState::Pending {
                return Err(RefusalKind::WrongState(format!(
                    "{} is still pending: use `deny {}` instead",
                    self.id, self.id
                )));
            }
            return Err(self.state_refusal("revoke"));
        }
        let was_provisioning = self.state == RequestState::Provisioning;
        self.become_(RequestState::Revoked)?;
        self.decide(Some(&who.user), handle, now, reason);
        if was_provisioning {
            // Provisioning is in flight: its results decide what to remove (see record_provisioning).
            return Ok(Vec::new());
        }
        Ok(self.mark_removing())
    }

    /// Adds time while Active, bounded so that total active time never exceeds
    /// the request's maximum. Asking for more than remains adds what remains.
    pub fn extend(
        &mut self,
        who: &UserId,
        by: GrantDuration,
        now: Timestamp,
    ) -> Result<Extension, Refusal> {
        if !self.is_requester(who) {
            return Err(RefusalKind::NotAllowed(format!(
                "only the requester can extend {}",
                self.id
            )));
        }
        if self.state != RequestState::Active {
            return Err(self.state_refusal("extend"));
        }
        let (Some(activated), Some(expires)) = (self.activated_at, self.expires_at) else {
            return Err(self.state_refusal("extend"));
        };
        if now >= expires {
            return Err(RefusalKind::WrongState(format!(
                "{} has already expired",
                self.id
            )));
        }
        // The hard cap holds even for a requirement that allows more.
        let max = self.requirement.max_duration.min(DurationLimits::HARD_MAX);
        let cap = activated.plus(max);
        let allowance = cap.since(expires);
        if allowance < Span::from_minutes(1) {
            return Err(RefusalKind::NotAllowed(format!(
                "{} already runs to the {} maximum (until {}): make a new request if you need more time",
                self.id, max, expires
            )));
        }
        let added = by.span().min(allowance);
        let new_expiry = expires.plus(added);
        self.expires_at = Some(new_expiry);
        self.extended_by = Span::from_millis(self.extended_by.as_millis() + added.as_millis());
        Ok(Extension {
            added,
            new_expiry,
            capped: added < by.span(),
            remaining_allowance: cap.since(new_expiry),
        })
    }

    /// True when adding `by` takes the extensions past the policy's threshold,
    /// so the extension has to wait for an approver.
    pub fn extension_needs_approval(&self, by: GrantDuration) -> bool {
        match self.requirement.extension_approval_over {
            Some(threshold) => {
                self.extended_by.as_millis() + by.span().as_millis() > threshold.as_millis()
            }
            None => false,
        }
    }

    /// Records an extension that waits for an approver. The same checks as
    /// [`AccessRequest::extend`] apply; nothing moves until it is approved.
    pub fn ask_extension(
        &mut self,
        who: &UserId,
        by: GrantDuration,
        now: Timestamp,
    ) -> Result<Span, Refusal> {
        if self.pending_extension.is_some() {
            return Err(RefusalKind::AlreadyDone(format!(
                "an extension of {} is already waiting for an approver",
                self.id
            )));
        }
        // Dry-run the extension on a copy to apply every check and the cap.
        let mut probe = self.clone();
        let ext = probe.extend(who, by, now)?;
        let total = Span::from_millis(self.extended_by.as_millis() + by.span().as_millis());
        self.extensions_asked += 1;
        self.pending_extension = Some(PendingExtension {
            seq: self.extensions_asked,
            by: ext.added,
            asked_at: now,
            requirement: Some(self.requirement.for_extension(total)),
            approvals: Vec::new(),
        });
        Ok(ext.added)
    }

    /// An approver approves the waiting extension.
    /// Records `who`'s approval of the pending extension. It is granted once
    /// every rule whose extension threshold it passes has its own approvals
    /// (N of M each), never by one approver of any rule of the request.
    pub fn approve_extension(
        &mut self,
        who: &Membership,
        handle: &str,
        now: Timestamp,
    ) -> Result<(Approval, ExtensionApproval), Refusal> {
        let Some(mut pending) = self.pending_extension.clone() else {
            return Err(RefusalKind::WrongState(format!(
                "{} has no extension waiting for approval",
                self.id
            )));
        };
        let needs = match &pending.requirement {
            Some(needs) if !needs.rules.is_empty() => needs.clone(),
            _ => Requirement {
                rules: self
                    .requirement
                    .rules
                    .iter()
                    .filter(|r| r.approvals > 0)
                    .cloned()
                    .collect(),
                ..self.requirement.clone()
            },
        };
        if self.is_requester(&who.user) {
            return Err(RefusalKind::NotAllowed(format!(
                "you cannot approve your own extension of {}: ask an approver ({})",
                self.id,
                needs.describe()
            )));
        }
        if pending.approvals.iter().any(|a| a.by == who.user) {
            return Err(RefusalKind::AlreadyDone(format!(
                "you already approved the extension of {}; it still needs {}",
                self.id,
                needs.still_needed(&pending.approvals)
            )));
        }
        let counts_for = needs.still_open_for(who, &pending.approvals);
        if counts_for.is_empty() {
            return Err(RefusalKind::NotAllowed(format!(
                "you are not an approver for the extension of {}: it needs {}",
                self.id,
                needs.still_needed(&pending.approvals)
            )));
        }
        let approval = Approval {
            by: who.user.clone(),
            handle: handle.to_owned(),
            at: now,
            qualified: needs.qualifications(who, &counts_for),
            counts_for,
        };
        pending.approvals.push(approval.clone());
        if !needs.satisfied(&pending.approvals) {
            let still_needed = needs.still_needed(&pending.approvals);
            self.pending_extension = Some(pending);
            return Ok((approval, ExtensionApproval::Recorded { still_needed }));
        }
        let requester = self.requester.id.clone();
        let by = GrantDuration::within(
            pending.by,
            &DurationLimits {
                min: Span::ZERO,
                ..DurationLimits::default()
            },
        )
        .map_err(|e| RefusalKind::WrongState(e.0))?;
        let ext = self.extend(&requester, by, now)?;
        self.pending_extension = None;
        Ok((approval, ExtensionApproval::Extended(ext)))
    }

    /// An approver turns the waiting extension down; access keeps its expiry.
    pub fn deny_extension(&mut self, who: &Membership, is_admin: bool) -> Result<Span, Refusal> {
        let Some(pending) = self.pending_extension.clone() else {
            return Err(RefusalKind::WrongState(format!(
                "{} has no extension waiting for approval",
                self.id
            )));
        };
        if self.is_requester(&who.user) {
            return Err(RefusalKind::NotAllowed(format!(
                "you cannot deny your own extension; it lapses when {} expires",
                self.id
            )));
        }
        if !is_admin && !self.is_approver(who) {
            return Err(RefusalKind::NotAllowed(format!(
                "you are not an approver for {}",
                self.id
            )));
        }
        self.pending_extension = None;
        Ok(pending.by)
    }

    /// Provisions again the instances that failed, while access is active.
    /// Returns the instances to retry.
    pub fn retry_failed(
        &mut self,
        who: &Membership,
        is_admin: bool,
    ) -> Result<Vec<InstanceId>, Refusal> {
        if !self.is_requester(&who.user) && !is_admin && !self.is_approver(who) {
            return Err(RefusalKind::NotAllowed(format!(
                "only the requester, an approver or an admin can retry {}",
                self.id
            )));
        }
        if self.state != RequestState::Active {
            return Err(self.state_refusal("retry"));
        }
        let mut out = Vec::new();
        for g in self
            .grants
            .iter_mut()
            .filter(|g| g.state == GrantState::Failed)
        {
            g.state = GrantState::Provisioning;
            g.attempts += 1;
            out.push(g.instance.clone());
        }
        if out.is_empty() {
            return Err(RefusalKind::AlreadyDone(format!(
                "{} has no failed instance to retry",
                self.id
            )));
        }
        Ok(out)
    }

    fn decide(
        &mut self,
        by: Option<&UserId>,
        handle: &str,
        now: Timestamp,
        reason: Option<Reason>,
    ) {
        // A request that ends takes its waiting extension with it.
        self.pending_extension = None;
        self.decision = Some(Decision {
            by: by.cloned(),
            handle: handle.to_owned(),
            at: now,
            reason,
        });
    }

    /// The grants that are still holding a user or being removed.
    pub fn open_grants(&self) -> usize {
        self.grants
            .iter()
            .filter(|g| g.state.may_hold_user())
            .count()
    }

    pub fn instance(&self, id: &InstanceId) -> Option<&InstanceInfo> {
        self.instances.iter().find(|i| &i.id == id)
    }

    /// The instances whose grant is in `state`, in grant order.
    pub fn instances_in(&self, state: GrantState) -> Vec<InstanceInfo> {
        self.grants
            .iter()
            .filter(|g| g.state == state)
            .filter_map(|g| self.instance(&g.instance).cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::policy::{Principal, RuleRequirement};
    use crate::domain::values::TicketRules;
    use RefusalKind::{AlreadyDone, NotAllowed, WrongState};

    // ------------------------------------------------------------------
    // Fixtures

    const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

    /// `minutes` after the request was made.
    fn at(minutes: i64) -> Timestamp {
        T0.plus(Span::from_minutes(minutes))
    }

    fn uid(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    fn member(id: &str, groups: &[&str]) -> Membership {
        Membership::new(
            uid(id),
            groups
                .iter()
                .map(|g| ((*g).to_owned(), crate::domain::policy::GroupSource::Config))
                .collect(),
        )
    }

    /// The requester as an ordinary engineer.
    fn requester() -> Membership {
        member("dev1", &["eng"])
    }

    fn lead(n: u32) -> Membership {
        member(&format!("lead{n}"), &["sre-leads"])
    }

    fn security() -> Membership {
        member("sec1", &["security"])
    }

    fn stranger() -> Membership {
        member("eve", &["eng"])
    }

    /// Someone the policy names as admin; admin rights are passed to the methods as a flag.
    fn admin() -> Membership {
        member("root1", &["admins"])
    }

    fn rule(name: &str, group: &str, approvals: u32) -> RuleRequirement {
        RuleRequirement {
            rule: name.to_owned(),
            approvers: vec![Principal::Group(group.to_owned())],
            approvals,
            extension_approval_over: None,
        }
    }

    fn requirement(rules: Vec<RuleRequirement>, max_duration: Span) -> Requirement {
        Requirement {
            rules,
            max_duration,
            sudo: false,
            port_forwarding: false,
            remote_port_forwarding: false,
            channel: None,
            extension_approval_over: None,
        }
    }

    fn one_lead() -> Requirement {
        requirement(vec![rule("default", "sre-leads", 1)], Span::from_hours(12))
    }

    fn two_leads() -> Requirement {
        requirement(vec![rule("prod", "sre-leads", 2)], Span::from_hours(12))
    }

    fn lead_and_security() -> Requirement {
        requirement(
            vec![rule("prod", "sre-leads", 1), rule("pci", "security", 1)],
            Span::from_hours(12),
        )
    }

    fn no_approval() -> Requirement {
        requirement(vec![rule("dev", "sre-leads", 0)], Span::from_hours(12))
    }

    fn iid(n: u32) -> InstanceId {
        InstanceId::parse(&format!("i-{n:08x}")).unwrap()
    }

    fn duration(span: Span) -> GrantDuration {
        GrantDuration::within(span, &DurationLimits::default()).unwrap()
    }

    /// An extension as the grammar accepts it: at least a minute.
    fn by(span: Span) -> GrantDuration {
        let limits = DurationLimits {
            min: Span::from_minutes(1),
            ..DurationLimits::default()
        };
        GrantDuration::within(span, &limits).unwrap()
    }

    /// AR-7 by dev1 for `length` on instances 1..=`instances`, made at T0 with a one-hour approval window.
    fn request_for(requirement: Requirement, length: Span, instances: u32) -> AccessRequest {
        AccessRequest::new(NewRequest {
            id: RequestId::new(7).unwrap(),
            requester: Person {
                id: uid("dev1"),
                handle: "Dev One".to_owned(),
            },
            origin: "console".to_owned(),
            instances: (1..=instances)
                .map(|n| InstanceInfo::assumed(iid(n), Platform::Linux))
                .collect(),
            duration: duration(length),
            ticket: Ticket::parse("INC-42", &TicketRules::default()).unwrap(),
            reason: Reason::parse("disk full").unwrap(),
            requirement,
            approval_window: Span::from_hours(1),
            now: T0,
        })
    }

    /// Two instances for two hours, needing one approval from sre-leads.
    fn pending() -> AccessRequest {
        request_for(one_lead(), Span::from_hours(2), 2)
    }

    fn approved() -> AccessRequest {
        let mut r = pending();
        r.approve(&lead(1), "lead1", at(1)).unwrap();
        r
    }

    fn provisioning() -> AccessRequest {
        let mut r = approved();
        r.begin_provisioning().unwrap();
        r
    }

    /// Active from minute 2, so it expires at minute 122.
    fn active() -> AccessRequest {
        let mut r = provisioning();
        r.record_provisioning(&[ok(1), ok(2)], at(2)).unwrap();
        r
    }

    fn active_with(requirement: Requirement, length: Span) -> AccessRequest {
        let mut r = request_for(requirement, length, 1);
        r.approve(&lead(1), "lead1", at(1)).unwrap();
        r.begin_provisioning().unwrap();
        r.record_provisioning(&[ok(1)], at(2)).unwrap();
        r
    }

    /// A request before its access began (pending, approved, provisioning)
    /// and one after it ended (completed at minute 10).
    fn not_active() -> [AccessRequest; 4] {
        let mut completed = active();
        completed
            .complete(&uid("dev1"), "dev1", false, at(10))
            .unwrap();
        [pending(), approved(), provisioning(), completed]
    }

    /// Two hours active from minute 2, under one rule that allows `max` in all.
    fn two_hours_under(max: Span) -> AccessRequest {
        active_with(
            requirement(vec![rule("prod", "sre-leads", 1)], max),
            Span::from_hours(2),
        )
    }

    /// The requester extends `r` by `span` at `now`.
    fn requester_extends(
        r: &mut AccessRequest,
        span: Span,
        now: Timestamp,
    ) -> Result<Extension, Refusal> {
        r.extend(&uid("dev1"), by(span), now)
    }

    /// An approval recorded that still needs `still_needed`.
    fn recorded(still_needed: &str) -> Result<ApprovalOutcome, Refusal> {
        Ok(ApprovalOutcome::Recorded {
            still_needed: still_needed.to_owned(),
        })
    }

    fn ok(n: u32) -> InstanceOutcome {
        InstanceOutcome {
            instance: iid(n),
            ok: true,
            detail: None,
        }
    }

    fn failed(n: u32, why: &str) -> InstanceOutcome {
        InstanceOutcome {
            instance: iid(n),
            ok: false,
            detail: Some(why.to_owned()),
        }
    }

    fn grant_states(r: &AccessRequest) -> Vec<GrantState> {
        r.grants.iter().map(|g| g.state).collect()
    }

    /// The message `result` is refused with, once checked to be a refusal
    /// of the kind `kind` makes (e.g. `RefusalKind::WrongState`).
    fn refused<T: fmt::Debug>(result: Result<T, Refusal>, kind: fn(String) -> Refusal) -> String {
        let err = result.unwrap_err();
        let expected = std::mem::discriminant(&kind(String::new()));
        assert_eq!(std::mem::discriminant(&err), expected, "{err:?}");
        err.to_string()
    }

    // ------------------------------------------------------------------
    // The state table

    const Y: bool = true;
    const N: bool = false;

    /// May the state on the left become each state in `RequestState::ALL` order?
    #[rustfmt::skip]
    const TRANSITIONS: [(RequestState, [bool; 11]); 11] = [
        //                                Pend  Appr  Prov  Actv  Comp  Expd  Revk  Deny  Canc  TOut  Fail
        (RequestState::Pending,          [N,    Y,    N,    N,    N,    N,    N,    Y,    Y,    Y,    N]),
        (RequestState::Approved,         [N,    N,    Y,    N,    N,    N,    Y,    N,    N,    N,    N]),
        (RequestState::Provisioning,     [N,    N,    N,    Y,    N,    N,    Y,    N,    N,    N,    Y]),
        (RequestState::Active,           [N,    N,    N,    N,    Y,    Y,    Y,    N,    N,    N,    N]),
        (RequestState::Completed,        [N,    N,    N,    N,    N,    N,    N,    N,    N,    N,    N]),
        (RequestState::Expired,          [N,    N,    N,    N,    N,    N,    N,    N,    N,    N,    N]),
        (RequestState::Revoked,          [N,    N,    N,    N,    N,    N,    N,    N,    N,    N,    N]),
        (RequestState::Denied,           [N,    N,    N,    N,    N,    N,    N,    N,    N,    N,    N]),
        (RequestState::Cancelled,        [N,    N,    N,    N,    N,    N,    N,    N,    N,    N,    N]),
        (RequestState::ApprovalTimedOut, [N,    N,    N,    N,    N,    N,    N,    N,    N,    N,    N]),
        (RequestState::Failed,           [N,    N,    N,    N,    N,    N,    N,    N,    N,    N,    N]),
    ];

    #[test]
    fn transition_table_allows_exactly_the_documented_moves() {
        assert_eq!(
            TRANSITIONS.map(|(from, _)| from),
            RequestState::ALL,
            "the table's rows follow RequestState::ALL"
        );
        for (from, row) in TRANSITIONS {
            for (to, allowed) in RequestState::ALL.into_iter().zip(row) {
                assert_eq!(from.can_become(to), allowed, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn no_state_becomes_itself() {
        for state in RequestState::ALL {
            assert!(!state.can_become(state), "{state}");
        }
    }

    #[test]
    fn final_states_are_exactly_the_closed_ones() {
        use RequestState::*;
        let finals: Vec<RequestState> = RequestState::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(
            finals,
            [
                Completed,
                Expired,
                Revoked,
                Denied,
                Cancelled,
                ApprovalTimedOut,
                Failed
            ]
        );
        for open in [Pending, Approved, Provisioning, Active] {
            assert!(!open.is_final(), "{open}");
        }
    }

    #[test]
    fn state_names_round_trip_through_as_str_and_parse() {
        for state in RequestState::ALL {
            assert_eq!(RequestState::parse(state.as_str()), Some(state));
            assert_eq!(state.to_string(), state.as_str());
            // The stored JSON form and the column form are the same word.
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{}\"", state.as_str())
            );
        }
        let mut names: Vec<&str> = RequestState::ALL.iter().map(|s| s.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RequestState::ALL.len(), "names are distinct");
        for unknown in ["", "bogus", "pending ", " active", "timed_out"] {
            assert_eq!(RequestState::parse(unknown), None, "{unknown:?}");
        }
    }

    // ------------------------------------------------------------------
    // A new request

    #[test]
    fn instances_are_picked_by_the_state_of_their_grant() {
        let mut r = provisioning();
        let ids = |r: &AccessRequest, s| -> Vec<InstanceId> {
            r.instances_in(s).into_iter().map(|i| i.id).collect()
        };
        assert_eq!(ids(&r, GrantState::Provisioning), vec![iid(1), iid(2)]);
        let failed = InstanceOutcome {
            ok: false,
            detail: Some("no agent".into()),
            ..ok(2)
        };
        r.record_provisioning(&[ok(1), failed], at(2)).unwrap();
        assert_eq!(ids(&r, GrantState::Active), vec![iid(1)]);
        assert!(ids(&r, GrantState::Provisioning).is_empty());
    }

    #[test]
    fn new_request_is_pending_with_one_pending_grant_per_instance() {
        let r = pending();
        assert_eq!(r.state, RequestState::Pending);
        assert_eq!(grant_states(&r), [GrantState::Pending, GrantState::Pending]);
        assert_eq!(r.grants[1].instance, iid(2));
        assert_eq!(r.approval_deadline, at(60));
        assert_eq!(r.created_at, T0);
        assert_eq!(r.activated_at, None);
        assert_eq!(r.expires_at, None);
        assert_eq!(r.extended_by, Span::ZERO);
        assert_eq!(r.username.as_str(), "pp-devone-7");
        assert!(r.approvals.is_empty());
        assert!(r.decision.is_none());
        assert!(r.pending_removals().is_empty());
        assert_eq!(r.open_grants(), 0);
    }

    // ------------------------------------------------------------------
    // approve

    #[test]
    fn approve_by_requester_is_refused() {
        let mut r = pending();
        // Even when the requester is in the approvers' group.
        let me = member("dev1", &["sre-leads", "security"]);
        let err = refused(r.approve(&me, "dev1", at(1)), NotAllowed);
        assert!(err.contains("your own request AR-7"), "{err}");
        assert_eq!(r.state, RequestState::Pending);
        assert!(r.approvals.is_empty());
    }

    #[test]
    fn approve_by_requester_is_refused_even_when_anyone_may_approve() {
        let anyone = RuleRequirement {
            rule: "open".to_owned(),
            approvers: vec![Principal::Anyone],
            approvals: 1,
            extension_approval_over: None,
        };
        let mut r = request_for(
            requirement(vec![anyone], Span::from_hours(12)),
            Span::from_hours(1),
            1,
        );
        assert!(matches!(
            r.approve(&requester(), "dev1", at(1)),
            Err(RefusalKind::NotAllowed(_))
        ));
        assert!(!r.is_approver(&requester()));
        assert_eq!(
            r.approve(&stranger(), "eve", at(1)),
            Ok(ApprovalOutcome::Approved)
        );
    }

    #[test]
    fn approve_by_non_approver_is_refused() {
        let mut r = pending();
        let err = refused(r.approve(&stranger(), "eve", at(1)), NotAllowed);
        assert!(err.contains("not an approver"), "{err}");
        assert!(
            err.contains("1 more approval from group sre-leads"),
            "{err}"
        );
        assert_eq!(r.state, RequestState::Pending);
        assert!(r.approvals.is_empty());
    }

    #[test]
    fn approve_by_the_one_needed_approver_approves() {
        let mut r = pending();
        assert_eq!(
            r.approve(&lead(1), "lead1", at(3)),
            Ok(ApprovalOutcome::Approved)
        );
        assert_eq!(r.state, RequestState::Approved);
        assert_eq!(
            r.approvals,
            [Approval {
                by: uid("lead1"),
                handle: "lead1".to_owned(),
                at: at(3),
                counts_for: vec!["default".to_owned()],
                qualified: vec![Qualification {
                    rule: "default".to_owned(),
                    via: "group:sre-leads".to_owned(),
                    source: Some(crate::domain::policy::GroupSource::Config),
                }],
            }]
        );
        assert_eq!(r.still_needed(), "no more approvals");
        // Approval alone starts no clock.
        assert_eq!(r.activated_at, None);
        assert_eq!(grant_states(&r), [GrantState::Pending, GrantState::Pending]);
    }

    #[test]
    fn repeated_approval_by_the_same_approver_counts_once() {
        let mut r = request_for(two_leads(), Span::from_hours(1), 1);
        assert_eq!(
            r.approve(&lead(1), "lead1", at(1)),
            recorded("1 more approval from group sre-leads")
        );
        let err = refused(r.approve(&lead(1), "lead1", at(2)), AlreadyDone);
        assert!(err.contains("you already approved AR-7"), "{err}");
        assert!(err.contains("1 more approval"), "{err}");
        assert_eq!(r.approvals.len(), 1);
        assert_eq!(r.state, RequestState::Pending);
    }

    #[test]
    fn two_of_many_needs_two_distinct_approvers() {
        let mut r = request_for(two_leads(), Span::from_hours(1), 1);
        assert_eq!(r.still_needed(), "2 more approvals from group sre-leads");
        assert!(matches!(
            r.approve(&lead(1), "lead1", at(1)),
            Ok(ApprovalOutcome::Recorded { .. })
        ));
        assert_eq!(r.state, RequestState::Pending);
        assert_eq!(
            r.approve(&lead(2), "lead2", at(2)),
            Ok(ApprovalOutcome::Approved)
        );
        assert_eq!(r.state, RequestState::Approved);
        let by: Vec<&str> = r.approvals.iter().map(|a| a.by.as_str()).collect();
        assert_eq!(by, ["lead1", "lead2"]);
    }

    #[test]
    fn request_matching_two_rules_needs_both() {
        let mut r = request_for(lead_and_security(), Span::from_hours(1), 1);
        assert_eq!(
            r.approve(&lead(1), "lead1", at(1)),
            recorded("1 more approval from group security")
        );
        // A second lead adds nothing: the lead rule is already satisfied.
        let err = refused(r.approve(&lead(2), "lead2", at(2)), NotAllowed);
        assert!(err.contains("group security"), "{err}");
        assert_eq!(r.state, RequestState::Pending);
        assert_eq!(
            r.approve(&security(), "sec1", at(3)),
            Ok(ApprovalOutcome::Approved)
        );
        assert_eq!(r.approvals[1].counts_for, ["pci"]);
    }

    #[test]
    fn one_approval_counts_for_every_unsatisfied_rule_the_approver_belongs_to() {
        let mut r = request_for(lead_and_security(), Span::from_hours(1), 1);
        let both = member("boss", &["sre-leads", "security"]);
        assert_eq!(
            r.approve(&both, "boss", at(1)),
            Ok(ApprovalOutcome::Approved)
        );
        assert_eq!(r.approvals[0].counts_for, ["prod", "pci"]);
    }

    #[test]
    fn approve_after_approval_says_already_approved() {
        let mut r = approved();
        let err = refused(r.approve(&lead(1), "lead1", at(2)), AlreadyDone);
        assert!(err.contains("already approved"), "{err}");

        // Another approver clicking late (or at the same moment) is told the same,
        // not to try again.
        for mut late in [approved(), provisioning(), active()] {
            let before = late.clone();
            let err = refused(late.approve(&lead(2), "lead2", at(3)), AlreadyDone);
            assert!(err.contains("AR-7 is already approved"), "{err}");
            assert!(!err.contains("try again"), "{err}");
            assert_eq!(late, before);
        }
    }

    #[test]
    fn approve_after_denial_reports_the_denial_even_to_an_earlier_approver() {
        let mut r = request_for(two_leads(), Span::from_hours(1), 1);
        r.approve(&lead(1), "lead1", at(1)).unwrap();
        r.deny(&lead(2), "lead2", false, None, at(2)).unwrap();
        let err = refused(r.approve(&lead(1), "lead1", at(3)), WrongState);
        assert!(err.contains("denied"), "{err}");
    }

    #[test]
    fn approve_of_a_closed_request_is_refused() {
        let mut r = pending();
        r.cancel(&uid("dev1"), "dev1", at(1)).unwrap();
        let err = refused(r.approve(&lead(1), "lead1", at(2)), WrongState);
        assert!(err.contains("cancelled"), "{err}");
        assert!(r.approvals.is_empty());
    }

    // ------------------------------------------------------------------
    // auto_approve

    #[test]
    fn auto_approve_approves_when_no_rule_needs_approval() {
        let mut r = request_for(no_approval(), Span::from_hours(1), 1);
        assert_eq!(r.auto_approve(), Ok(()));
        assert_eq!(r.state, RequestState::Approved);
        assert!(r.approvals.is_empty());
        // Twice is a wrong state, not a second approval.
        assert!(matches!(r.auto_approve(), Err(RefusalKind::WrongState(_))));
    }

    #[test]
    fn auto_approve_is_refused_when_a_rule_needs_approval() {
        let mut r = request_for(lead_and_security(), Span::from_hours(1), 1);
        let err = refused(r.auto_approve(), NotAllowed);
        assert!(err.contains("1 approval from group sre-leads"), "{err}");
        assert_eq!(r.state, RequestState::Pending);
    }

    #[test]
    fn approvers_of_an_auto_approved_rule_cannot_approve() {
        let mut r = request_for(no_approval(), Span::from_hours(1), 1);
        assert!(!r.is_approver(&lead(1)));
        assert!(matches!(
            r.approve(&lead(1), "lead1", at(1)),
            Err(RefusalKind::NotAllowed(_))
        ));
        assert_eq!(r.state, RequestState::Pending);
    }

    // ------------------------------------------------------------------
    // deny

    #[test]
    fn deny_by_requester_is_refused_and_told_to_cancel() {
        let mut r = pending();
        // Not even an admin may deny their own request.
        let me = member("dev1", &["sre-leads"]);
        for is_admin in [false, true] {
            let err = refused(r.deny(&me, "dev1", is_admin, None, at(1)), NotAllowed);
            assert!(err.contains("`cancel AR-7`"), "{err}");
        }
        assert_eq!(r.state, RequestState::Pending);
        assert!(r.decision.is_none());
    }

    #[test]
    fn deny_by_non_approver_is_refused() {
        let mut r = pending();
        let err = refused(r.deny(&stranger(), "eve", false, None, at(1)), NotAllowed);
        assert!(err.contains("not an approver"), "{err}");
        assert_eq!(r.state, RequestState::Pending);
    }

    #[test]
    fn deny_by_approver_records_who_and_why() {
        let mut r = pending();
        let reason = Reason::parse("too broad").unwrap();
        r.deny(&lead(1), "lead1", false, reason.clone(), at(5))
            .unwrap();
        assert_eq!(r.state, RequestState::Denied);
        assert_eq!(
            r.decision,
            Some(Decision {
                by: Some(uid("lead1")),
                handle: "lead1".to_owned(),
                at: at(5),
                reason,
            })
        );
    }

    #[test]
    fn deny_by_admin_who_is_not_an_approver_is_allowed() {
        let mut r = pending();
        r.deny(&admin(), "root1", true, None, at(5)).unwrap();
        assert_eq!(r.state, RequestState::Denied);
        assert_eq!(r.decision.unwrap().by, Some(uid("root1")));
    }

    #[test]
    fn deny_after_approval_is_refused() {
        let mut r = approved();
        refused(r.deny(&lead(2), "lead2", false, None, at(5)), WrongState);
        assert_eq!(r.state, RequestState::Approved);
        assert!(r.decision.is_none());
    }

    // ------------------------------------------------------------------
    // cancel

    #[test]
    fn cancel_by_requester_while_pending_cancels() {
        let mut r = pending();
        r.cancel(&uid("dev1"), "dev1", at(4)).unwrap();
        assert_eq!(r.state, RequestState::Cancelled);
        let decision = r.decision.unwrap();
        assert_eq!(decision.by, Some(uid("dev1")));
        assert_eq!(decision.at, at(4));
    }

    #[test]
    fn cancel_by_anyone_but_the_requester_is_refused() {
        let mut r = pending();
        for who in [lead(1), admin(), stranger()] {
            let err = refused(r.cancel(&who.user, "x", at(1)), NotAllowed);
            assert!(err.contains("`deny AR-7`"), "{err}");
        }
        assert_eq!(r.state, RequestState::Pending);
    }

    #[test]
    fn cancel_after_approval_is_refused() {
        for mut r in [approved(), provisioning()] {
            refused(r.cancel(&uid("dev1"), "dev1", at(3)), WrongState);
            assert_ne!(r.state, RequestState::Cancelled);
        }
    }

    #[test]
    fn cancel_of_active_request_is_told_to_use_complete() {
        let mut r = active();
        let err = refused(r.cancel(&uid("dev1"), "dev1", at(10)), WrongState);
        assert!(err.contains("`complete AR-7`"), "{err}");
        assert_eq!(r.state, RequestState::Active);
    }

    // ------------------------------------------------------------------
    // time_out

    #[test]
    fn time_out_before_the_deadline_is_refused() {
        let mut r = pending();
        let almost = r.approval_deadline.minus(Span::from_millis(1));
        assert!(matches!(
            r.time_out(almost),
            Err(RefusalKind::WrongState(_))
        ));
        assert_eq!(r.state, RequestState::Pending);
        assert!(r.decision.is_none());
    }

    #[test]
    fn time_out_at_the_deadline_closes_the_request() {
        let mut r = pending();
        r.time_out(at(60)).unwrap();
        assert_eq!(r.state, RequestState::ApprovalTimedOut);
        let decision = r.decision.unwrap();
        assert_eq!(decision.by, None);
        assert_eq!(decision.handle, "passport");
        assert_eq!(decision.at, at(60));
    }

    #[test]
    fn time_out_after_approval_is_refused() {
        let mut r = approved();
        assert!(matches!(
            r.time_out(at(600)),
            Err(RefusalKind::WrongState(_))
        ));
        assert_eq!(r.state, RequestState::Approved);
    }

    // ------------------------------------------------------------------
    // begin_provisioning and record_provisioning

    #[test]
    fn begin_provisioning_starts_every_grant() {
        let mut r = approved();
        r.begin_provisioning().unwrap();
        assert_eq!(r.state, RequestState::Provisioning);
        assert_eq!(
            grant_states(&r),
            [GrantState::Provisioning, GrantState::Provisioning]
        );
        assert!(r.grants.iter().all(|g| g.attempts == 1));
        assert_eq!(r.open_grants(), 2);
    }

    #[test]
    fn begin_provisioning_needs_an_approved_request() {
        for mut r in [pending(), provisioning(), active()] {
            let before = r.clone();
            assert!(matches!(
                r.begin_provisioning(),
                Err(RefusalKind::WrongState(_))
            ));
            assert_eq!(r, before);
        }
    }

    #[test]
    fn provisioning_that_succeeds_everywhere_starts_the_clock() {
        let mut r = provisioning();
        let to_remove = r.record_provisioning(&[ok(2), ok(1)], at(9)).unwrap();
        assert!(to_remove.is_empty());
        assert_eq!(r.state, RequestState::Active);
        assert_eq!(grant_states(&r), [GrantState::Active, GrantState::Active]);
        assert_eq!(r.activated_at, Some(at(9)));
        assert_eq!(r.expires_at, Some(at(9).plus(Span::from_hours(2))));
    }

    #[test]
    fn provisioning_that_fails_on_some_instances_is_active_on_the_others() {
        let mut r = provisioning();
        let to_remove = r
            .record_provisioning(&[ok(1), failed(2, "ssm agent offline")], at(9))
            .unwrap();
        assert!(to_remove.is_empty());
        assert_eq!(r.state, RequestState::Active);
        assert_eq!(grant_states(&r), [GrantState::Active, GrantState::Failed]);
        assert_eq!(r.grants[1].detail.as_deref(), Some("ssm agent offline"));
        assert_eq!(r.activated_at, Some(at(9)));
        assert_eq!(r.expires_at, Some(at(129)));
    }

    #[test]
    fn instances_without_a_result_count_as_failed() {
        let mut r = provisioning();
        r.record_provisioning(&[ok(1)], at(9)).unwrap();
        assert_eq!(r.state, RequestState::Active);
        assert_eq!(r.grants[1].state, GrantState::Failed);
        assert_eq!(
            r.grants[1].detail.as_deref(),
            Some("no result from the provisioner")
        );
    }

    #[test]
    fn provisioning_that_fails_everywhere_fails_and_cleans_up() {
        let mut r = provisioning();
        let to_remove = r
            .record_provisioning(&[failed(1, "timeout"), failed(2, "denied")], at(9))
            .unwrap();
        assert_eq!(r.state, RequestState::Failed);
        // A failed attempt may have half-created the user, so both are removed.
        assert_eq!(to_remove, [iid(1), iid(2)]);
        assert_eq!(
            grant_states(&r),
            [GrantState::Removing, GrantState::Removing]
        );
        assert_eq!(r.pending_removals(), [iid(1), iid(2)]);
        assert_eq!(r.activated_at, None);
        assert_eq!(r.expires_at, None);
    }

    #[test]
    fn revoked_during_provisioning_removes_what_was_created() {
        let mut r = provisioning();
        let now_removed = r.revoke(&lead(1), "lead1", false, None, at(3)).unwrap();
        // Results are still in flight: nothing to remove yet, and nothing is forgotten.
        assert!(now_removed.is_empty());
        assert_eq!(r.state, RequestState::Revoked);
        assert_eq!(
            grant_states(&r),
            [GrantState::Provisioning, GrantState::Provisioning]
        );
        assert!(r.pending_removals().is_empty());

        let to_remove = r
            .record_provisioning(&[ok(1), failed(2, "timeout")], at(4))
            .unwrap();
        assert!(to_remove.contains(&iid(1)), "{to_remove:?}");
        assert_eq!(r.grants[0].state, GrantState::Removing);
        assert_eq!(r.state, RequestState::Revoked);
        assert_eq!(
            r.activated_at, None,
            "revoked access never starts its clock"
        );
        assert_eq!(r.pending_removals(), to_remove);
    }

    #[test]
    fn record_provisioning_outside_provisioning_is_refused() {
        // (Active accepts results: they are those of a retry of failed instances.)
        for mut r in [pending(), approved()] {
            let before = r.clone();
            refused(r.record_provisioning(&[ok(1), ok(2)], at(50)), WrongState);
            assert_eq!(r, before);
        }
    }

    // ------------------------------------------------------------------
    // complete

    #[test]
    fn complete_by_requester_ends_access_at_once() {
        let mut r = active();
        let to_remove = r.complete(&uid("dev1"), "dev1", false, at(30)).unwrap();
        assert_eq!(to_remove, [iid(1), iid(2)]);
        assert_eq!(r.state, RequestState::Completed);
        assert_eq!(
            grant_states(&r),
            [GrantState::Removing, GrantState::Removing]
        );
        let decision = r.decision.unwrap();
        assert_eq!(decision.by, Some(uid("dev1")));
        assert_eq!(decision.at, at(30));
    }

    #[test]
    fn complete_by_admin_is_allowed() {
        let mut r = active();
        let to_remove = r.complete(&admin().user, "root1", true, at(30)).unwrap();
        assert_eq!(to_remove.len(), 2);
        assert_eq!(r.state, RequestState::Completed);
    }

    #[test]
    fn complete_by_approver_is_refused_and_told_to_revoke() {
        let mut r = active();
        let err = refused(
            r.complete(&lead(1).user, "lead1", false, at(30)),
            NotAllowed,
        );
        assert!(err.contains("`revoke AR-7`"), "{err}");
        assert_eq!(r.state, RequestState::Active);
    }

    #[test]
    fn complete_is_only_for_active_requests() {
        for mut r in [pending(), approved(), provisioning()] {
            let before = r.clone();
            refused(r.complete(&uid("dev1"), "dev1", false, at(30)), WrongState);
            assert_eq!(r, before);
        }
    }

    // ------------------------------------------------------------------
    // expire

    #[test]
    fn expire_before_expiry_is_refused() {
        let mut r = active();
        let almost = at(122).minus(Span::from_millis(1));
        assert!(matches!(r.expire(almost), Err(RefusalKind::WrongState(_))));
        assert_eq!(r.state, RequestState::Active);
    }

    #[test]
    fn expire_at_or_after_expiry_ends_access() {
        for when in [at(122), at(5_000)] {
            let mut r = active();
            let to_remove = r.expire(when).unwrap();
            assert_eq!(to_remove, [iid(1), iid(2)]);
            assert_eq!(r.state, RequestState::Expired);
            let decision = r.decision.unwrap();
            assert_eq!(decision.by, None);
            assert_eq!(decision.handle, "passport");
        }
    }

    #[test]
    fn expire_follows_an_extension() {
        let mut r = active();
        requester_extends(&mut r, Span::from_hours(1), at(100)).unwrap();
        assert!(r.expire(at(122)).is_err());
        assert!(r.expire(at(182)).is_ok());
    }

    #[test]
    fn expire_without_active_access_is_refused() {
        for mut r in not_active() {
            let before = r.clone();
            assert!(matches!(
                r.expire(at(10_000)),
                Err(RefusalKind::WrongState(_))
            ));
            assert_eq!(r, before);
        }
    }

    // ------------------------------------------------------------------
    // revoke

    #[test]
    fn revoke_by_approver_ends_active_access() {
        let mut r = active();
        let reason = Reason::parse("incident over").unwrap();
        let to_remove = r
            .revoke(&lead(2), "lead2", false, reason.clone(), at(40))
            .unwrap();
        assert_eq!(to_remove, [iid(1), iid(2)]);
        assert_eq!(r.state, RequestState::Revoked);
        let decision = r.decision.unwrap();
        assert_eq!(decision.by, Some(uid("lead2")));
        assert_eq!(decision.reason, reason);
    }

    #[test]
    fn revoke_by_admin_is_allowed() {
        let mut r = active();
        assert_eq!(
            r.revoke(&admin(), "root1", true, None, at(40))
                .unwrap()
                .len(),
            2
        );
        assert_eq!(r.state, RequestState::Revoked);
    }

    #[test]
    fn revoke_by_non_approver_is_refused() {
        let mut r = active();
        let err = refused(
            r.revoke(&stranger(), "eve", false, None, at(40)),
            NotAllowed,
        );
        assert!(!err.contains("complete"), "{err}");
        assert_eq!(r.state, RequestState::Active);
    }

    #[test]
    fn revoke_by_requester_is_told_to_use_complete() {
        let mut r = active();
        // Being in the approvers' group does not make the requester an approver.
        let me = member("dev1", &["sre-leads"]);
        let err = refused(r.revoke(&me, "dev1", false, None, at(40)), NotAllowed);
        assert!(err.contains("`complete AR-7`"), "{err}");
        assert_eq!(r.state, RequestState::Active);
    }

    #[test]
    fn revoke_of_pending_request_is_told_to_deny() {
        let mut r = pending();
        let err = refused(r.revoke(&lead(1), "lead1", false, None, at(1)), WrongState);
        assert!(err.contains("`deny AR-7`"), "{err}");
        assert_eq!(r.state, RequestState::Pending);
    }

    #[test]
    fn revoke_before_provisioning_has_nothing_to_remove() {
        let mut r = approved();
        let to_remove = r.revoke(&lead(1), "lead1", false, None, at(2)).unwrap();
        assert!(to_remove.is_empty());
        assert_eq!(r.state, RequestState::Revoked);
        assert_eq!(grant_states(&r), [GrantState::Removed, GrantState::Removed]);
        assert!(r.pending_removals().is_empty());
    }

    #[test]
    fn revoke_of_closed_request_is_refused() {
        let mut r = active();
        r.complete(&uid("dev1"), "dev1", false, at(10)).unwrap();
        let before = r.clone();
        refused(r.revoke(&admin(), "root1", true, None, at(20)), WrongState);
        assert_eq!(r, before);
    }

    // ------------------------------------------------------------------
    // extend

    #[test]
    fn extend_adds_time_to_active_access() {
        let mut r = active();
        let ext = requester_extends(&mut r, Span::from_hours(1), at(100)).unwrap();
        assert_eq!(
            ext,
            Extension {
                added: Span::from_hours(1),
                new_expiry: at(182),
                capped: false,
                remaining_allowance: Span::from_hours(9),
            }
        );
        assert_eq!(r.expires_at, Some(at(182)));
        assert_eq!(r.extended_by, Span::from_hours(1));
        assert_eq!(
            r.activated_at,
            Some(at(2)),
            "extending does not restart the clock"
        );

        requester_extends(&mut r, Span::from_minutes(30), at(150)).unwrap();
        assert_eq!(r.extended_by, Span::from_minutes(90));
        assert_eq!(r.expires_at, Some(at(212)));
    }

    #[test]
    fn extend_by_anyone_but_the_requester_is_refused() {
        let mut r = active();
        for who in [lead(1), admin(), stranger()] {
            refused(
                r.extend(&who.user, by(Span::from_hours(1)), at(100)),
                NotAllowed,
            );
        }
        assert_eq!(r.expires_at, Some(at(122)));
    }

    #[test]
    fn extend_is_only_for_active_requests() {
        for mut r in not_active() {
            let before = r.clone();
            refused(
                requester_extends(&mut r, Span::from_hours(1), at(20)),
                WrongState,
            );
            assert_eq!(r, before);
        }
    }

    #[test]
    fn extend_after_expiry_is_refused() {
        let mut r = active();
        let err = refused(
            requester_extends(&mut r, Span::from_hours(1), at(122)),
            WrongState,
        );
        assert!(err.contains("already expired"), "{err}");
        assert_eq!(r.expires_at, Some(at(122)));
    }

    #[test]
    fn extend_is_capped_at_the_maximum_measured_from_activation() {
        // Four hours at most; two asked for, active from minute 2.
        let mut r = two_hours_under(Span::from_hours(4));
        let ext = requester_extends(&mut r, Span::from_hours(3), at(60)).unwrap();
        assert_eq!(ext.added, Span::from_hours(2));
        assert!(ext.capped);
        assert_eq!(ext.new_expiry, at(2).plus(Span::from_hours(4)));
        assert_eq!(ext.remaining_allowance, Span::ZERO);
        assert_eq!(r.expires_at, Some(ext.new_expiry));
    }

    #[test]
    fn extend_that_fits_exactly_is_not_capped() {
        let mut r = two_hours_under(Span::from_hours(4));
        let ext = requester_extends(&mut r, Span::from_hours(2), at(60)).unwrap();
        assert!(!ext.capped);
        assert_eq!(ext.remaining_allowance, Span::ZERO);
    }

    #[test]
    fn extend_is_refused_when_less_than_a_minute_of_allowance_remains() {
        let almost_none = Span::from_millis(Span::from_hours(2).as_millis() + 59_999);
        let mut r = two_hours_under(almost_none);
        let before = r.clone();
        let err = refused(
            requester_extends(&mut r, Span::from_minutes(1), at(60)),
            NotAllowed,
        );
        assert!(err.contains("make a new request"), "{err}");
        assert_eq!(r, before);
    }

    #[test]
    fn extend_with_exactly_a_minute_of_allowance_adds_that_minute() {
        let mut r = two_hours_under(Span::from_minutes(121));
        let ext = requester_extends(&mut r, Span::from_hours(1), at(60)).unwrap();
        assert_eq!(ext.added, Span::from_minutes(1));
        assert!(ext.capped);
    }

    #[test]
    fn extend_never_lets_total_active_time_exceed_twelve_hours() {
        // Even a requirement that claims more (e.g. one stored before the cap was
        // lowered) is held to the hard cap.
        for max in [Span::from_hours(12), Span::from_hours(24)] {
            let mut r = two_hours_under(max);
            let activated = r.activated_at.unwrap();
            let mut now = at(3);
            let mut refused = false;
            for _ in 0..10 {
                match requester_extends(&mut r, Span::from_hours(5), now) {
                    Ok(ext) => {
                        assert!(ext.new_expiry.since(activated) <= DurationLimits::HARD_MAX);
                        now = now.plus(Span::from_minutes(1));
                    }
                    Err(err) => {
                        assert!(matches!(err, RefusalKind::NotAllowed(_)), "{err:?}");
                        refused = true;
                        break;
                    }
                }
            }
            assert!(refused, "the cap must eventually refuse");
            assert_eq!(r.expires_at, Some(activated.plus(DurationLimits::HARD_MAX)));
            assert_eq!(r.extended_by, Span::from_hours(10));
        }
    }

    #[test]
    fn extend_of_access_granted_for_the_full_twelve_hours_is_refused() {
        let mut r = active_with(one_lead(), Span::from_hours(12));
        let err = refused(
            requester_extends(&mut r, Span::from_minutes(1), at(60)),
            NotAllowed,
        );
        assert!(err.contains("12h maximum"), "{err}");
    }

    // ------------------------------------------------------------------
    // Removal

    #[test]
    fn failed_removals_are_retried_until_they_succeed() {
        let mut r = active();
        r.complete(&uid("dev1"), "dev1", false, at(30)).unwrap();
        assert_eq!(r.pending_removals(), [iid(1), iid(2)]);

        r.record_removal(&[ok(1), failed(2, "instance stopped")]);
        assert_eq!(
            grant_states(&r),
            [GrantState::Removed, GrantState::RemovalFailed]
        );
        assert_eq!(r.grants[0].detail, None);
        assert_eq!(r.grants[1].detail.as_deref(), Some("instance stopped"));
        assert_eq!(
            r.grants[1].attempts, 2,
            "one provisioning, one removal attempt"
        );
        assert_eq!(r.pending_removals(), [iid(2)]);
        assert_eq!(r.open_grants(), 1);

        r.record_removal(&[failed(2, "still stopped")]);
        assert_eq!(r.grants[1].state, GrantState::RemovalFailed);
        assert_eq!(r.grants[1].attempts, 3);
        assert_eq!(r.pending_removals(), [iid(2)]);

        r.record_removal(&[ok(2)]);
        assert_eq!(grant_states(&r), [GrantState::Removed, GrantState::Removed]);
        assert_eq!(r.grants[1].detail, None);
        assert!(r.pending_removals().is_empty());
        assert_eq!(r.open_grants(), 0);
    }

    #[test]
    fn record_removal_ignores_grants_that_are_not_being_removed() {
        let mut r = active();
        let before = r.clone();
        r.record_removal(&[ok(1), failed(2, "x")]);
        assert_eq!(r, before);

        let mut removed = active();
        removed
            .complete(&uid("dev1"), "dev1", false, at(30))
            .unwrap();
        removed.record_removal(&[ok(1), ok(2)]);
        let done = removed.clone();
        removed.record_removal(&[failed(1, "late report")]);
        assert_eq!(removed, done, "a removed grant stays removed");
    }

    #[test]
    fn mark_removing_includes_failed_grants_and_skips_removed_ones() {
        let mut r = provisioning();
        r.record_provisioning(&[ok(1), failed(2, "timeout")], at(2))
            .unwrap();
        let to_remove = r.complete(&uid("dev1"), "dev1", false, at(30)).unwrap();
        assert_eq!(to_remove, [iid(1), iid(2)]);

        r.record_removal(&[ok(1), failed(2, "agent offline")]);
        // Asking again (e.g. after a restart) returns only what still holds a user.
        assert_eq!(r.mark_removing(), [iid(2)]);
        assert_eq!(
            grant_states(&r),
            [GrantState::Removed, GrantState::Removing]
        );
    }

    // ------------------------------------------------------------------
    // Every call in every state

    /// A request in every state it can reach, with how it got there.
    fn every_state() -> Vec<(&'static str, AccessRequest)> {
        let mut out = vec![
            ("pending", pending()),
            ("approved", approved()),
            ("provisioning", provisioning()),
            ("active", active()),
        ];
        let mut auto = request_for(no_approval(), Span::from_hours(1), 1);
        auto.auto_approve().unwrap();
        out.push(("auto-approved", auto));
        let mut partial = provisioning();
        partial
            .record_provisioning(&[ok(1), failed(2, "x")], at(2))
            .unwrap();
        out.push(("active on one instance", partial));
        let mut r = active();
        r.complete(&uid("dev1"), "dev1", false, at(10)).unwrap();
        out.push(("completed", r));
        let mut r = active();
        r.expire(at(122)).unwrap();
        out.push(("expired", r));
        let mut r = active();
        r.revoke(&lead(1), "lead1", false, None, at(10)).unwrap();
        out.push(("revoked while active", r));
        let mut r = provisioning();
        r.revoke(&lead(1), "lead1", false, None, at(2)).unwrap();
        out.push(("revoked while provisioning", r));
        let mut r = approved();
        r.revoke(&lead(1), "lead1", false, None, at(2)).unwrap();
        out.push(("revoked while approved", r));
        let mut r = pending();
        r.deny(&lead(1), "lead1", false, None, at(2)).unwrap();
        out.push(("denied", r));
        let mut r = pending();
        r.cancel(&uid("dev1"), "dev1", at(2)).unwrap();
        out.push(("cancelled", r));
        let mut r = pending();
        r.time_out(at(60)).unwrap();
        out.push(("timed out", r));
        let mut r = provisioning();
        r.record_provisioning(&[], at(2)).unwrap();
        out.push(("failed", r));
        out
    }

    type Call = fn(&mut AccessRequest, &Membership, bool, Timestamp) -> Result<(), Refusal>;

    fn every_call() -> Vec<(&'static str, Call)> {
        vec![
            ("approve", |r, w, _, now| r.approve(w, "h", now).map(drop)),
            ("auto_approve", |r, _, _, _| r.auto_approve()),
            ("deny", |r, w, admin, now| r.deny(w, "h", admin, None, now)),
            ("cancel", |r, w, _, now| r.cancel(&w.user, "h", now)),
            ("time_out", |r, _, _, now| r.time_out(now)),
            ("begin_provisioning", |r, _, _, _| r.begin_provisioning()),
            ("record_provisioning", |r, _, _, now| {
                r.record_provisioning(&[ok(1), failed(2, "x")], now)
                    .map(drop)
            }),
            ("complete", |r, w, admin, now| {
                r.complete(&w.user, "h", admin, now).map(drop)
            }),
            ("expire", |r, _, _, now| r.expire(now).map(drop)),
            ("revoke", |r, w, admin, now| {
                r.revoke(w, "h", admin, None, now).map(drop)
            }),
            ("extend", |r, w, _, now| {
                r.extend(&w.user, by(Span::from_minutes(30)), now).map(drop)
            }),
        ]
    }

    #[test]
    fn illegal_calls_return_errors_and_leave_the_request_unchanged() {
        let people = [requester(), lead(1), lead(2), stranger()];
        let times = [T0, at(60), at(122), at(100_000)];
        for (name, original) in every_state() {
            for (call_name, call) in every_call() {
                for who in &people {
                    for is_admin in [false, true] {
                        for now in times {
                            let mut r = original.clone();
                            let context = format!(
                                "{call_name} on {name} by {} (admin: {is_admin}) at {now}",
                                who.user
                            );
                            match call(&mut r, who, is_admin, now) {
                                Err(err) => {
                                    assert!(!err.to_string().is_empty(), "{context}");
                                    assert_eq!(r, original, "{context}: {err}");
                                }
                                Ok(()) => assert!(
                                    r.state == original.state || original.state.can_become(r.state),
                                    "{context}: {} -> {}",
                                    original.state,
                                    r.state
                                ),
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn closed_requests_never_change_state() {
        for (name, original) in every_state() {
            if !original.state.is_final() {
                continue;
            }
            for (call_name, call) in every_call() {
                let mut r = original.clone();
                let _ = call(&mut r, &admin(), true, at(100_000));
                assert_eq!(r.state, original.state, "{call_name} on {name}");
                assert_eq!(r.decision, original.decision, "{call_name} on {name}");
            }
        }
    }

    #[test]
    fn a_refresh_after_the_end_marks_the_recreated_user_for_removal() {
        let mut r = active();
        assert!(
            r.record_refresh(&[ok(1)]).is_empty(),
            "while active a refresh changes nothing"
        );
        r.state = RequestState::Completed;
        for g in &mut r.grants {
            g.state = GrantState::Removed;
        }
        assert_eq!(
            r.record_refresh(&[ok(1), failed(2, "offline")]),
            vec![iid(1)]
        );
        assert_eq!(r.grants[0].state, GrantState::Removing);
        assert_eq!(r.grants[1].state, GrantState::Removed);
    }

    #[test]
    fn a_removal_check_verifies_or_reopens_removal() {
        let mut r = active();
        r.record_removal_check(&[failed(2, "Undeliverable")]);
        assert_eq!(r.grants[1].state, GrantState::RemovalFailed);
        assert_eq!(r.grants[1].detail.as_deref(), Some("Undeliverable"));
        assert!(!r.removal_verified);
        r.record_removal_check(&[]);
        assert!(r.removal_verified);
    }
}
