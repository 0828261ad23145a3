//! What a state change causes: Logbook events, notices and timers, written in
//! the same transaction as the change itself.

use serde_json::{json, Value};

use crate::domain::logbook::NewEvent;
use crate::domain::notice::Notice;
use crate::domain::time::{Span, Timestamp};
use crate::domain::values::RequestId;

pub type TimerId = i64;

/// What a timer does when it comes due. Jobs (provisioning, removal) are
/// timers due at once, so a restart resumes them like any other timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerKind {
    ApprovalTimeout,
    /// A warning this long before expiry.
    Warning(Span),
    Expiry,
    /// Create the users (again, after an extension, to move on-instance expiries).
    Provision,
    /// Run the grant again on active instances to move their on-instance expiry.
    Refresh,
    /// Remove the users from every grant marked for removal.
    Remove,
    /// End the Session Manager sessions still open with this request's
    /// credentials: a retry after a failure, and a last sweep once every
    /// credential issued for it has expired.
    EndSessions,
}

impl TimerKind {
    pub fn encode(self) -> String {
        match self {
            Self::ApprovalTimeout => "approval_timeout".into(),
            Self::Warning(before) => format!("warning:{}", before.as_millis()),
            Self::Expiry => "expiry".into(),
            Self::Provision => "provision".into(),
            Self::Refresh => "refresh".into(),
            Self::Remove => "remove".into(),
            Self::EndSessions => "end_sessions".into(),
        }
    }

    pub fn decode(text: &str) -> Option<Self> {
        Some(match text {
            "approval_timeout" => Self::ApprovalTimeout,
            "expiry" => Self::Expiry,
            "provision" => Self::Provision,
            "refresh" => Self::Refresh,
            "remove" => Self::Remove,
            "end_sessions" => Self::EndSessions,
            other => Self::Warning(Span::from_millis(
                other.strip_prefix("warning:")?.parse().ok()?,
            )),
        })
    }

    /// One timer of each kind, for tests that must cover every kind.
    #[cfg(test)]
    pub(crate) const EACH: [TimerKind; 7] = [
        TimerKind::ApprovalTimeout,
        TimerKind::Warning(Span::from_minutes(15)),
        TimerKind::Expiry,
        TimerKind::Provision,
        TimerKind::Refresh,
        TimerKind::Remove,
        TimerKind::EndSessions,
    ];

    /// Timers that follow the expiry time and move when it moves.
    pub fn follows_expiry(self) -> bool {
        matches!(self, Self::Warning(_) | Self::Expiry)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub id: TimerId,
    pub request: RequestId,
    pub kind: TimerKind,
    pub due: Timestamp,
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTimer {
    pub kind: TimerKind,
    pub due: Timestamp,
    pub attempts: u32,
}

/// Everything a change writes besides the request itself.
#[derive(Debug, Default, Clone)]
pub struct Effects {
    pub events: Vec<NewEvent>,
    /// Notices with the surfaces they go to, filled in by [`Effects::route`].
    pub outbox: Vec<(String, Notice)>,
    pub notices: Vec<Notice>,
    pub timers: Vec<NewTimer>,
    /// Kinds of this request's timers to delete.
    pub cancel: Vec<TimerKind>,
    /// Delete every timer of the request.
    pub cancel_all: bool,
    /// Delete the request's warning and expiry timers.
    pub cancel_expiry: bool,
    /// The answer for the person who acted.
    pub reply: String,
    /// The signed chat request that asked for the change: its replay key is
    /// recorded with the change, and a key seen before fails the whole
    /// change with `StoreError::Replayed`.
    pub signed: Option<Signed>,
}

/// A signed chat request's replay key (`slack:trigger:…`), remembered until
/// its signature window has closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub key: String,
    pub until: Timestamp,
}

impl Effects {
    /// Records a Logbook event and its one-line audit notice. `summary` is the
    /// readable sentence; `details` adds structured fields.
    pub fn log(
        &mut self,
        at: Timestamp,
        actor: &str,
        request: Option<RequestId>,
        action: &str,
        summary: String,
        mut details: Value,
    ) {
        if let Value::Object(map) = &mut details {
            map.insert("summary".into(), Value::String(summary.clone()));
        } else {
            details = json!({ "summary": summary });
        }
        let prefix = request.map(|r| format!("{r} ")).unwrap_or_default();
        self.notices.push(Notice::Audit {
            text: format!("{prefix}{summary}"),
        });
        self.events.push(NewEvent {
            at,
            actor: actor.to_owned(),
            request: request.map(|r| r.to_string()),
            action: action.to_owned(),
            details,
        });
    }

    pub fn notify(&mut self, notice: Notice) {
        self.notices.push(notice);
    }

    pub fn schedule(&mut self, kind: TimerKind, due: Timestamp) {
        self.timers.push(NewTimer {
            kind,
            due,
            attempts: 0,
        });
    }

    /// Sends each notice to the surfaces it belongs on: direct messages go to
    /// the surface the person used, everything else to every surface.
    pub fn route(&mut self, surfaces: &[String], origin: &str) {
        for notice in self.notices.drain(..) {
            match &notice {
                Notice::Direct { .. } => {
                    let target = surfaces
                        .iter()
                        .find(|s| s.as_str() == origin)
                        .or_else(|| surfaces.first());
                    if let Some(s) = target {
                        self.outbox.push((s.clone(), notice));
                    }
                }
                _ => {
                    for s in surfaces {
                        self.outbox.push((s.clone(), notice.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_kinds_round_trip() {
        for kind in TimerKind::EACH {
            // A new kind fails to compile here until it is in `EACH` too.
            match kind {
                TimerKind::ApprovalTimeout
                | TimerKind::Warning(_)
                | TimerKind::Expiry
                | TimerKind::Provision
                | TimerKind::Refresh
                | TimerKind::Remove
                | TimerKind::EndSessions => {}
            }
            assert_eq!(TimerKind::decode(&kind.encode()), Some(kind));
        }
        assert_eq!(TimerKind::decode("warning:x"), None);
        assert_eq!(TimerKind::decode("nap"), None);
    }
}
