//! What Passport tells people, independent of any chat platform.
//!
//! Notices are written to the outbox in the same transaction as the change
//! that causes them; each chat surface renders them in its own format.

use serde::{Deserialize, Serialize};

use super::request::{AccessRequest, RequestState};
use super::values::{RequestId, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStyle {
    Primary,
    Danger,
    Plain,
}

/// A button. `command` is the exact command text a click stands for, so a
/// click and a typed command are handled the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub label: String,
    pub command: String,
    pub style: ActionStyle,
}

impl Action {
    pub fn new(label: &str, command: String, style: ActionStyle) -> Self {
        Self {
            label: label.to_owned(),
            command,
            style,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardInstance {
    pub id: String,
    pub name: Option<String>,
    pub platform: String,
    pub env: Option<String>,
}

/// The request card shown to approvers, edited in place at every state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardView {
    pub request: RequestId,
    pub state: RequestState,
    pub requester_id: UserId,
    pub requester: String,
    pub instances: Vec<CardInstance>,
    pub duration: String,
    pub ticket: String,
    pub ticket_url: Option<String>,
    pub reason: Option<String>,
    pub required: String,
    /// Who is asked to approve, as configured (user ids and `group:NAME`s).
    pub approvers: Vec<String>,
    pub approved_by: Vec<String>,
    /// One line on where the request stands: who decided, when it expires, what is left.
    pub status: String,
    pub actions: Vec<Action>,
    /// The approvals channel named by a policy rule, if any.
    pub channel: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Notice {
    /// Post the card, or update it when it was posted before.
    Card(Box<CardView>),
    /// A reply in the card's thread.
    Thread {
        request: RequestId,
        text: String,
        actions: Vec<Action>,
    },
    /// A direct message.
    Direct {
        user: UserId,
        request: Option<RequestId>,
        text: String,
        actions: Vec<Action>,
    },
    /// One line for the audit channel.
    Audit { text: String },
}

/// The lane of audit-channel notices.
pub const AUDIT_LANE: &str = "audit";

impl Notice {
    /// A reply in the thread of `request`, with no buttons.
    pub fn thread(request: RequestId, text: String) -> Self {
        Notice::Thread {
            request,
            text,
            actions: Vec::new(),
        }
    }

    /// A direct message to `user` about `request`, with no buttons.
    pub fn direct(user: UserId, request: Option<RequestId>, text: String) -> Self {
        Notice::Direct {
            user,
            request,
            text,
            actions: Vec::new(),
        }
    }

    /// A direct message to the requester of `req` about it, with no buttons.
    pub fn to_requester(req: &AccessRequest, text: String) -> Self {
        Self::direct(req.requester.id.clone(), Some(req.id), text)
    }

    /// Notices in one lane are delivered strictly in order; lanes are independent.
    /// A request's card and thread share a lane so replies never overtake the card.
    pub fn lane(&self) -> String {
        match self {
            Notice::Card(card) => format!("request:{}", card.request.number()),
            Notice::Thread { request, .. } => format!("request:{}", request.number()),
            Notice::Direct { user, .. } => format!("user:{user}"),
            Notice::Audit { .. } => AUDIT_LANE.to_owned(),
        }
    }

    pub fn request(&self) -> Option<RequestId> {
        match self {
            Notice::Card(card) => Some(card.request),
            Notice::Thread { request, .. } => Some(*request),
            Notice::Direct { request, .. } => *request,
            Notice::Audit { .. } => None,
        }
    }
}
