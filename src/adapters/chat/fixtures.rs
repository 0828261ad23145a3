//! A request card for the renderers' tests on every platform.

use crate::domain::notice::{Action, ActionStyle, CardInstance, CardView};
use crate::domain::request::RequestState;
use crate::domain::values::{RequestId, UserId};

/// AR-7, pending, on `instances` instances, with an Approve and a Deny
/// button; its reason and ticket carry characters every platform must escape.
pub fn card(instances: usize) -> CardView {
    CardView {
        request: RequestId::parse("AR-7").unwrap(),
        state: RequestState::Pending,
        requester_id: UserId::parse("U0REQ").unwrap(),
        requester: "dev1".into(),
        instances: (0..instances)
            .map(|i| CardInstance {
                id: format!("i-{i:017x}"),
                name: Some(format!("web-{i}")),
                platform: "linux".into(),
                env: Some("prod".into()),
            })
            .collect(),
        duration: "2h".into(),
        ticket: "ticket#123".into(),
        ticket_url: Some("https://t.example.com/browse/123?a=1&b=2".into()),
        reason: Some("<!channel> disk & more".into()),
        required: "1 approval from group approvers".into(),
        approvers: vec!["group:approvers".into(), "U0LEAD".into()],
        approved_by: vec![],
        status: "waiting for 1 approval".into(),
        actions: vec![
            Action {
                label: "Approve".into(),
                command: "approve AR-7".into(),
                style: ActionStyle::Primary,
            },
            Action {
                label: "Deny".into(),
                command: "deny AR-7".into(),
                style: ActionStyle::Danger,
            },
        ],
        channel: None,
    }
}
