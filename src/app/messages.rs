//! The words Passport uses: the request card and the texts of notices and
//! answers, built from a request's state.

use crate::domain::command::Shown;
use crate::domain::notice::{Action, ActionStyle, CardInstance, CardView};
use crate::domain::policy::Principal;
use crate::domain::request::{AccessRequest, GrantState, Platform, RequestState};
use crate::domain::time::{Span, Timestamp};
use crate::domain::values::{InstanceId, Reason, SshPublicKey, TicketRules, Username};

/// Approve and Deny on a pending request's card. Both name the request's own
/// approval (`@request`), so a click on a card that has not been updated yet
/// never decides an extension asked for later.
pub fn approve_deny(req: &AccessRequest) -> Vec<Action> {
    decision_buttons(req, Shown::Request)
}

fn decision_buttons(req: &AccessRequest, shown: Shown) -> Vec<Action> {
    let id = req.id;
    vec![
        Action::new(
            "Approve",
            format!("approve {id} {shown}"),
            ActionStyle::Primary,
        ),
        Action::new("Deny", format!("deny {id} {shown}"), ActionStyle::Danger),
    ]
}

/// The Retry button for instances that failed to provision.
pub fn retry_action(req: &AccessRequest) -> Action {
    Action::new(
        "Retry failed",
        format!("retry {}", req.id),
        ActionStyle::Plain,
    )
}

/// Approve and Deny under an extension prompt. Both name the extension by its
/// number (`@extension-2`), so they cannot decide a later, different one.
pub fn approve_deny_extension(req: &AccessRequest) -> Vec<Action> {
    let seq = req.pending_extension.as_ref().map_or(0, |p| p.seq);
    decision_buttons(req, Shown::Extension(seq))
}

/// Extend and Complete buttons for an active request.
pub fn extend_complete(req: &AccessRequest) -> Vec<Action> {
    let id = req.id;
    vec![
        Action::new(
            "Extend +1h",
            format!("extend {id} 1h"),
            ActionStyle::Primary,
        ),
        Action::new("Extend +2h", format!("extend {id} 2h"), ActionStyle::Plain),
        Action::new("Complete", format!("complete {id}"), ActionStyle::Danger),
    ]
}

pub fn instance_label(req: &AccessRequest, id: &crate::domain::values::InstanceId) -> String {
    match req.instance(id).and_then(|i| i.name.as_deref()) {
        Some(name) => format!("{id} ({name})"),
        None => id.to_string(),
    }
}

/// The one-line status shown on the card.
pub fn status_line(req: &AccessRequest, now: Timestamp) -> String {
    let by = |verb: &str| match &req.decision {
        Some(d) => {
            let reason = Reason::suffix(d.reason.as_ref());
            format!("{verb} by {} at {}{reason}", d.handle, d.at)
        }
        None => verb.to_owned(),
    };
    let approved_by = if req.approvals.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = req.approvals.iter().map(|a| a.handle.as_str()).collect();
        format!("approved by {}", names.join(", "))
    };
    let removal = || {
        let left = req
            .grants
            .iter()
            .filter(|g| matches!(g.state, GrantState::Removing | GrantState::RemovalFailed))
            .count();
        let failed = req
            .grants
            .iter()
            .filter(|g| g.state == GrantState::RemovalFailed)
            .count();
        match (left, failed) {
            (0, _) => "; access removed".to_owned(),
            (n, 0) => format!("; removing access from {n} instance(s)"),
            (_, f) => format!("; removal failing on {f} instance(s), retrying"),
        }
    };
    match req.state {
        RequestState::Pending => {
            let mut s = format!(
                "waiting for {} (until {})",
                req.still_needed(),
                req.approval_deadline
            );
            if !approved_by.is_empty() {
                s = format!("{approved_by}; {s}");
            }
            s
        }
        RequestState::Approved | RequestState::Provisioning => {
            let who = if approved_by.is_empty() {
                "auto-approved".to_owned()
            } else {
                approved_by
            };
            format!("{who}; setting up access")
        }
        RequestState::Active => {
            let who = if approved_by.is_empty() {
                "auto-approved".to_owned()
            } else {
                approved_by
            };
            let until = req
                .expires_at
                .map(|e| {
                    format!(
                        "; active until {e} ({} left)",
                        e.since(now).to_nearest_minute()
                    )
                })
                .unwrap_or_default();
            format!("{who}{until}")
        }
        RequestState::Completed => format!("{}{}", by("completed"), removal()),
        RequestState::Expired => {
            format!("expired at {}{}", req.expires_at.unwrap_or(now), removal())
        }
        RequestState::Revoked => format!("{}{}", by("revoked"), removal()),
        RequestState::Denied => by("denied"),
        RequestState::Cancelled => by("cancelled"),
        RequestState::ApprovalTimedOut => {
            format!("no decision before {}: timed out", req.approval_deadline)
        }
        RequestState::Failed => format!("provisioning failed on every instance{}", removal()),
    }
}

pub fn card(req: &AccessRequest, tickets: &TicketRules, now: Timestamp) -> CardView {
    let mut approvers: Vec<String> = Vec::new();
    for rule in req.requirement.rules.iter().filter(|r| r.approvals > 0) {
        for p in &rule.approvers {
            let text = match p {
                Principal::Anyone => "anyone".to_owned(),
                Principal::User(u) => u.to_string(),
                Principal::Group(g) => format!("group:{g}"),
            };
            if !approvers.contains(&text) {
                approvers.push(text);
            }
        }
    }
    CardView {
        request: req.id,
        state: req.state,
        requester_id: req.requester.id.clone(),
        requester: req.requester.handle.clone(),
        instances: req
            .instances
            .iter()
            .map(|i| CardInstance {
                id: i.id.to_string(),
                name: i.name.clone(),
                platform: platform_name(i.platform).into(),
                env: i.tags.get("env").cloned(),
            })
            .collect(),
        duration: req.duration.to_string(),
        ticket: req.ticket.to_string(),
        ticket_url: tickets.url_for(&req.ticket),
        reason: req.reason.as_ref().map(ToString::to_string),
        required: req.requirement.describe(),
        approvers,
        approved_by: req.approvals.iter().map(|a| a.handle.clone()).collect(),
        status: status_line(req, now),
        actions: if req.state == RequestState::Pending {
            approve_deny(req)
        } else {
            Vec::new()
        },
        channel: req.requirement.channel.clone(),
    }
}

pub fn platform_name(p: Platform) -> &'static str {
    match p {
        Platform::Linux => "linux",
        Platform::Windows => "windows",
    }
}

/// The "Get SSH certificate" button, when Passport has a CA and the request
/// has a Linux instance with active access.
pub fn certificate_action(req: &AccessRequest, certificates: bool) -> Option<Action> {
    let linux = req
        .instances_in(GrantState::Active)
        .iter()
        .any(|i| i.platform == Platform::Linux);
    let command = format!("cert {}", req.id);
    (certificates && linux)
        .then(|| Action::new("Get SSH certificate", command, ActionStyle::Primary))
}

/// How to connect, for the thread and the requester's direct message. With
/// `certificates`, Linux logins use a certificate from `cert AR-n`.
pub fn connection_details(req: &AccessRequest, certificates: bool) -> String {
    let user = &req.username;
    let mut out = format!(
        "Access to {} is active until {} as user `{user}`.",
        req.id,
        req.expires_at.map(|e| e.to_string()).unwrap_or_default()
    );
    let certificate = if certificates {
        format!(" -o CertificateFile=~/.ssh/passport-{}-cert.pub", req.id)
    } else {
        String::new()
    };
    if certificate_action(req, certificates).is_some() {
        out.push_str(&format!(
            " Linux logins use an SSH certificate that ends with the access: `/passport cert {}` gives you one for your registered key.",
            req.id
        ));
    }
    for g in req.grants.iter().filter(|g| g.state == GrantState::Active) {
        let Some(info) = req.instance(&g.instance) else {
            continue;
        };
        let ips = if info.private_ips.is_empty() {
            String::new()
        } else {
            format!(" (private IPs: {})", info.private_ips.join(", "))
        };
        let how = match info.platform {
            Platform::Linux => format!(
                "ssh{certificate} -o ProxyCommand='aws ssm start-session --target %h --document-name AWS-StartSSHSession --parameters portNumber=%p' {user}@{}",
                info.id
            ),
            Platform::Windows => format!(
                "aws ssm start-session --target {} --document-name AWS-StartPortForwardingSession --parameters portNumber=3389,localPortNumber=13389, then RDP to localhost:13389 as {user} with the password Passport sends you by direct message",
                info.id
            ),
        };
        out.push_str(&format!(
            "\n• {}{ips}: `{how}`",
            instance_label(req, &g.instance)
        ));
    }
    out
}

/// The answer to `cert AR-n`: the certificate, a line that saves it next to
/// the person's key, and one ssh command per Linux instance that uses it.
pub fn certificate_answer(
    req: &AccessRequest,
    certificate: &str,
    key: &SshPublicKey,
    serial: u64,
) -> String {
    let identity = match key.kind() {
        "ssh-ed25519" => "~/.ssh/id_ed25519",
        "ssh-rsa" => "~/.ssh/id_rsa",
        _ => "~/.ssh/id_ecdsa",
    };
    let file = format!("~/.ssh/passport-{}-cert.pub", req.id);
    let mut out = format!(
        "SSH certificate {serial} for `{}` (key {}), valid until {}. Save it:\n`printf '%s\\n' '{certificate}' > {file}`",
        req.username,
        key.fingerprint(),
        req.expires_at.map(|e| e.to_string()).unwrap_or_default(),
    );
    for g in req.grants.iter().filter(|g| g.state == GrantState::Active) {
        let Some(info) = req.instance(&g.instance) else {
            continue;
        };
        if info.platform != Platform::Linux {
            continue;
        }
        out.push_str(&format!(
            "\n• {}: `ssh -i {identity} -o CertificateFile={file} -o ProxyCommand='aws ssm start-session --target %h --document-name AWS-StartSSHSession --parameters portNumber=%p' {}@{}`",
            instance_label(req, &g.instance),
            req.username,
            info.id
        ));
    }
    out.push_str("\nThe certificate ends with the access; after an extension, ask for a new one.");
    out
}

/// Per-instance provisioning results, failures with their reasons.
pub fn provisioning_report(req: &AccessRequest) -> String {
    let ok = req
        .grants
        .iter()
        .filter(|g| g.state == GrantState::Active)
        .count();
    let failed: Vec<String> = req
        .grants
        .iter()
        .filter(|g| {
            g.state == GrantState::Failed
                || (req.state == RequestState::Failed && g.detail.is_some())
        })
        .map(|g| {
            format!(
                "• {}: {}",
                instance_label(req, &g.instance),
                g.detail.as_deref().unwrap_or("failed")
            )
        })
        .collect();
    let mut out = format!(
        "Provisioned `{}` on {ok} of {} instance(s).",
        req.username,
        req.grants.len()
    );
    if !failed.is_empty() {
        out.push_str("\nFailed:\n");
        out.push_str(&failed.join("\n"));
    }
    out
}

/// The note, thread line and Logbook summary, for a password message deleted
/// `after` it was sent.
pub fn password_message_deleted(
    username: &Username,
    instance: &InstanceId,
    requester: &str,
    after: Span,
) -> String {
    format!(
        "the password message for `{username}` on {instance} was deleted from {requester}'s direct messages after {after}"
    )
}

/// The same, for a password message whose user and instance this release
/// cannot read.
pub fn password_message_deleted_unread(requester: &str, after: Span) -> String {
    format!("a password message was deleted from {requester}'s direct messages after {after}")
}

/// The audit line reporting notices set aside: how many, the last refusal,
/// and how to see and resend them.
pub fn set_aside_report(count: usize, attempts: u32, last_refusal: &str) -> String {
    let notices = if count == 1 {
        "1 notice".to_owned()
    } else {
        format!("{count} notices")
    };
    format!(
        "⚠️ {notices} could not be delivered and {were} set aside after {attempts} refused attempts (last: {last_refusal}). List them with `passport outbox list`; once the cause is fixed, send them again with `passport outbox retry`",
        were = if count == 1 { "was" } else { "were" },
    )
}
