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

use super::policy::{Membership, Requirement};
use super::time::{Span, Timestamp};
use super::values::{GrantDuration, InstanceId, Person, Reason, RequestId, Ticket, UserId, Username};

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
        matches!(self, Self::Provisioning | Self::Active | Self::Removing | Self::RemovalFailed)
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
            extended_by: Span::ZERO,
            decision: None,
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
            RequestState::Pending => " (it is still waiting for approval)",
            RequestState::Approved | RequestState::Provisioning => " (access is being set up; try again in a moment)",
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
    pub fn approve(&mut self, who: &Membership, handle: &str, now: Timestamp) -> Result<ApprovalOutcome, Refusal> {
        if self.state != RequestState::Pending {
            if self.state != RequestState::Denied && self.approvals.iter().any(|a| a.by == who.user) {
                return Err(RefusalKind::AlreadyDone(format!("you already approved {}", self.id)));
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
        let progress = self.requirement.progress(&self.approvals);
        let counts_for: Vec<String> = self
            .requirement
            .rules_for(who)
            .into_iter()
            .filter(|rule| progress.iter().any(|p| &p.rule.rule == rule && !p.satisfied()))
            .collect();
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
            return Err(RefusalKind::NotAllowed(format!("{} needs {}", self.id, self.requirement.describe())));
        }
        self.become_(RequestState::Approved)
    }

    /// What approvals are still missing, e.g. "1 more approval from group sre-leads".
    pub fn still_needed(&self) -> String {
        let parts: Vec<String> = self
            .requirement
            .progress(&self.approvals)
            .iter()
            .filter(|p| !p.satisfied())
            .map(|p| {
                let missing = p.rule.approvals - p.have;
                let who: Vec<String> = p.rule.approvers.iter().map(ToString::to_string).collect();
                let noun = if missing == 1 { "approval" } else { "approvals" };
                format!("{missing} more {noun} from {}", who.join(" or "))
            })
            .collect();
        if parts.is_empty() {
            "no more approvals".into()
        } else {
            parts.join(" and ")
        }
    }

    pub fn deny(&mut self, who: &Membership, handle: &str, is_admin: bool, reason: Option<Reason>, now: Timestamp) -> Result<(), Refusal> {
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
            return Err(RefusalKind::WrongState(format!("{} is not past its approval deadline", self.id)));
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
    pub fn record_provisioning(&mut self, outcomes: &[InstanceOutcome], now: Timestamp) -> Result<Vec<InstanceId>, Refusal> {
        for outcome in outcomes {
            if let Some(g) = self.grants.iter_mut().find(|g| g.instance == outcome.instance && g.state == GrantState::Provisioning) {
                g.state = if outcome.ok { GrantState::Active } else { GrantState::Failed };
                g.detail = outcome.detail.clone();
            }
        }
        // Instances the provisioner did not report on count as failed: the user may or may not
        // exist, so they are removed like the others to leave nothing behind.
        for g in self.grants.iter_mut().filter(|g| g.state == GrantState::Provisioning) {
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
            _ => Err(self.state_refusal("record provisioning for")),
        }
    }

    /// Marks every grant that may hold a user for removal, including failed
    /// ones (a failed grant may have half-created the user). Returns their instances.
    pub fn mark_removing(&mut self) -> Vec<InstanceId> {
        let mut out = Vec::new();
        for g in &mut self.grants {
            let needs = match g.state {
                GrantState::Active | GrantState::Failed | GrantState::RemovalFailed | GrantState::Removing => true,
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
            if let Some(g) = self
                .grants
                .iter_mut()
                .find(|g| g.instance == outcome.instance && matches!(g.state, GrantState::Removing | GrantState::RemovalFailed))
            {
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

    /// Grants whose user still needs removing.
    pub fn pending_removals(&self) -> Vec<InstanceId> {
        self.grants
            .iter()
            .filter(|g| matches!(g.state, GrantState::Removing | GrantState::RemovalFailed))
            .map(|g| g.instance.clone())
            .collect()
    }

    /// The requester gives access back early.
    pub fn complete(&mut self, who: &UserId, handle: &str, is_admin: bool, now: Timestamp) -> Result<Vec<InstanceId>, Refusal> {
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
            _ => return Err(RefusalKind::WrongState(format!("{} has not reached its expiry", self.id))),
        }
        self.become_(RequestState::Expired)?;
        self.decide(None, "passport", now, None);
        Ok(self.mark_removing())
    }

    /// An approver of the request or an admin ends access now.
    pub fn revoke(&mut self, who: &Membership, handle: &str, is_admin: bool, reason: Option<Reason>, now: Timestamp) -> Result<Vec<InstanceId>, Refusal> {
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
        if !matches!(self.state, RequestState::Approved | RequestState::Provisioning | RequestState::Active) {
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
    pub fn extend(&mut self, who: &UserId, by: GrantDuration, now: Timestamp) -> Result<Extension, Refusal> {
        if !self.is_requester(who) {
            return Err(RefusalKind::NotAllowed(format!("only the requester can extend {}", self.id)));
        }
        if self.state != RequestState::Active {
            return Err(self.state_refusal("extend"));
        }
        let (Some(activated), Some(expires)) = (self.activated_at, self.expires_at) else {
            return Err(self.state_refusal("extend"));
        };
        if now >= expires {
            return Err(RefusalKind::WrongState(format!("{} has already expired", self.id)));
        }
        let cap = activated.plus(self.requirement.max_duration);
        let allowance = cap.since(expires);
        if allowance < Span::from_minutes(1) {
            return Err(RefusalKind::NotAllowed(format!(
                "{} already runs to the {} maximum (until {}): make a new request if you need more time",
                self.id, self.requirement.max_duration, expires
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

    fn decide(&mut self, by: Option<&UserId>, handle: &str, now: Timestamp, reason: Option<Reason>) {
        self.decision = Some(Decision {
            by: by.cloned(),
            handle: handle.to_owned(),
            at: now,
            reason,
        });
    }

    /// The grants that are still holding a user or being removed.
    pub fn open_grants(&self) -> usize {
        self.grants.iter().filter(|g| g.state.may_hold_user()).count()
    }

    pub fn instance(&self, id: &InstanceId) -> Option<&InstanceInfo> {
        self.instances.iter().find(|i| &i.id == id)
    }
}
