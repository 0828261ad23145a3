//! Which request and which instance a connection command means, from what the
//! person typed and their requests. Plain functions: no IO, so the rules are
//! unit-tested; asking on a terminal happens in the caller.
//!
//! `INSTANCE` is an instance id (`i-…`) or the `Name` tag of an instance in
//! the request (exact match). Without `AR-n`: the one active request, or the
//! one active request that holds the instance; when several do, the person
//! chooses.

use crate::api::{InstanceView, RequestView};
use crate::domain::values::RequestId;

/// What an instance is used for: ssh needs Linux, RDP Windows; forwarding
/// takes either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Ssh,
    Rdp,
    Forward,
}

impl Purpose {
    fn fits(self, instance: &InstanceView) -> bool {
        match self {
            Purpose::Ssh => instance.platform != "windows",
            Purpose::Rdp => instance.platform == "windows",
            Purpose::Forward => true,
        }
    }
}

/// The outcome of choosing: done, or a question with its choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice<T> {
    One(T),
    /// Several fit: `question` and the choices as (value, label).
    Ask {
        question: String,
        choices: Vec<(T, String)>,
    },
}

pub fn is_active(r: &RequestView) -> bool {
    r.state == "active"
}

/// Whether `word` names `instance`: its id, or its Name tag.
pub fn names(instance: &InstanceView, word: &str) -> bool {
    instance.id == word || instance.name.as_deref() == Some(word)
}

fn label(r: &RequestView) -> String {
    let instances: Vec<String> = r.instances.iter().map(instance_label).collect();
    format!(
        "{} ({}, {}{})",
        r.id,
        r.state,
        instances.join(", "),
        r.expires_at
            .as_deref()
            .map(|e| format!(", until {e}"))
            .unwrap_or_default()
    )
}

pub fn instance_label(i: &InstanceView) -> String {
    match &i.name {
        Some(name) => format!("{} ({name})", i.id),
        None => i.id.clone(),
    }
}

/// The request among `requests` (the person's), given `named` (AR-n typed) and
/// `instance` (INSTANCE typed, if any).
pub fn request(
    requests: &[RequestView],
    named: Option<RequestId>,
    instance: Option<&str>,
) -> Result<Choice<RequestId>, String> {
    if let Some(id) = named {
        return Ok(Choice::One(id));
    }
    let active: Vec<&RequestView> = requests.iter().filter(|r| is_active(r)).collect();
    let fitting: Vec<&RequestView> = match instance {
        Some(word) => active
            .iter()
            .copied()
            .filter(|r| r.instances.iter().any(|i| names(i, word)))
            .collect(),
        None => active.clone(),
    };
    match (fitting.as_slice(), instance) {
        ([one], _) => parse_id(&one.id).map(Choice::One),
        ([], Some(word)) if active.is_empty() => Err(format!(
            "you have no active request, so nothing reaches {word}: ask with `passport request {word} 1h TICKET reason`"
        )),
        ([], Some(word)) => Err(format!(
            "none of your active requests ({}) holds an instance {word}: give its id (i-…) or Name tag, or `passport list` to see them",
            active.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", ")
        )),
        ([], None) => Err(
            "you have no active request: ask with `passport request i-… 1h TICKET reason`, or see `passport list`"
                .to_owned(),
        ),
        (several, _) => {
            let choices = several
                .iter()
                .map(|r| parse_id(&r.id).map(|id| (id, label(r))))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Choice::Ask {
                question: match instance {
                    Some(word) => format!("{word} is in several active requests: which one?"),
                    None => "you have several active requests: which one?".to_owned(),
                },
                choices,
            })
        }
    }
}

/// The instance of `request` for `purpose`, given `typed` (INSTANCE, if any).
pub fn instance(
    request: &RequestView,
    typed: Option<&str>,
    purpose: Purpose,
) -> Result<Choice<InstanceView>, String> {
    if let Some(word) = typed {
        let found: Vec<&InstanceView> = request
            .instances
            .iter()
            .filter(|i| names(i, word))
            .collect();
        return match found.as_slice() {
            [] => Err(format!(
                "{} holds no instance {word}: it has {}",
                request.id,
                list(&request.instances)
            )),
            [one] => check(request, one, purpose).map(|()| Choice::One((*one).clone())),
            several => Ok(Choice::Ask {
                question: format!(
                    "several instances of {} are named {word}: which one?",
                    request.id
                ),
                choices: several
                    .iter()
                    .map(|i| ((*i).clone(), instance_label(i)))
                    .collect(),
            }),
        };
    }
    let usable: Vec<&InstanceView> = request
        .instances
        .iter()
        .filter(|i| purpose.fits(i) && i.status == "granted")
        .collect();
    match usable.as_slice() {
        [one] => Ok(Choice::One((*one).clone())),
        [] => Err(format!(
            "{} has no instance you can reach {} now: it has {}",
            request.id,
            match purpose {
                Purpose::Ssh => "with ssh (a Linux instance with access granted)",
                Purpose::Rdp => "with RDP (a Windows instance with access granted)",
                Purpose::Forward => "(one with access granted)",
            },
            list(&request.instances)
        )),
        several => Ok(Choice::Ask {
            question: format!("{} has several instances: which one?", request.id),
            choices: several
                .iter()
                .map(|i| ((*i).clone(), instance_label(i)))
                .collect(),
        }),
    }
}

fn check(request: &RequestView, i: &InstanceView, purpose: Purpose) -> Result<(), String> {
    if !purpose.fits(i) {
        return Err(match purpose {
            Purpose::Ssh => format!(
                "{} is a Windows instance: use `passport rdp {} {}`",
                i.id, request.id, i.id
            ),
            Purpose::Rdp => format!(
                "{} is a Linux instance: use `passport ssh {} {}`",
                i.id, request.id, i.id
            ),
            Purpose::Forward => String::new(),
        });
    }
    if i.status != "granted" {
        return Err(format!(
            "access to {} under {} is {}, not granted: see `passport show {}`",
            i.id, request.id, i.status, request.id
        ));
    }
    Ok(())
}

fn list(instances: &[InstanceView]) -> String {
    if instances.is_empty() {
        return "none".to_owned();
    }
    instances
        .iter()
        .map(|i| format!("{} [{}, {}]", instance_label(i), i.platform, i.status))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_id(text: &str) -> Result<RequestId, String> {
    RequestId::parse(text).map_err(|e| format!("the server sent {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Allows;

    fn inst(id: &str, name: Option<&str>, platform: &str) -> InstanceView {
        InstanceView {
            id: id.into(),
            name: name.map(str::to_owned),
            platform: platform.into(),
            status: "granted".into(),
        }
    }

    fn req(n: u64, state: &str, instances: Vec<InstanceView>) -> RequestView {
        RequestView {
            id: format!("AR-{n}"),
            state: state.into(),
            username: format!("pp-dev1-{n}"),
            instances,
            duration: "1h".into(),
            ticket: "T-1".into(),
            reason: None,
            created_at: "2026-12-01T19:00:00Z".into(),
            expires_at: Some("2026-12-01T20:00:00Z".into()),
            allows: Allows::default(),
            message: None,
        }
    }

    const A: &str = "i-0123456789abcdef0";
    const B: &str = "i-0fedcba9876543210";

    fn id(n: u64) -> RequestId {
        RequestId::new(n).unwrap_or_else(|| unreachable!())
    }

    #[test]
    fn one_active_request_needs_no_id() {
        let rs = vec![
            req(1, "completed", vec![inst(A, None, "linux")]),
            req(2, "active", vec![inst(A, Some("web-1"), "linux")]),
        ];
        assert_eq!(request(&rs, None, None), Ok(Choice::One(id(2))));
        assert_eq!(request(&rs, None, Some("web-1")), Ok(Choice::One(id(2))));
        assert!(request(&rs, None, Some(B)).is_err());
        assert!(request(&rs[..1], None, None).is_err());
    }

    #[test]
    fn an_instance_in_several_active_requests_is_a_question() {
        let rs = vec![
            req(1, "active", vec![inst(A, None, "linux")]),
            req(
                2,
                "active",
                vec![inst(A, None, "linux"), inst(B, None, "linux")],
            ),
        ];
        match request(&rs, None, Some(A)) {
            Ok(Choice::Ask { choices, .. }) => {
                assert_eq!(
                    choices.iter().map(|c| c.0).collect::<Vec<_>>(),
                    [id(1), id(2)]
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(request(&rs, None, Some(B)), Ok(Choice::One(id(2))));
        assert_eq!(request(&rs, Some(id(1)), Some(B)), Ok(Choice::One(id(1))));
    }

    #[test]
    fn the_instance_is_implied_when_one_fits_the_purpose() {
        let r = req(
            3,
            "active",
            vec![inst(A, Some("web"), "linux"), inst(B, None, "windows")],
        );
        assert_eq!(
            instance(&r, None, Purpose::Ssh).map(|c| matches!(c, Choice::One(i) if i.id == A)),
            Ok(true)
        );
        assert_eq!(
            instance(&r, None, Purpose::Rdp).map(|c| matches!(c, Choice::One(i) if i.id == B)),
            Ok(true)
        );
        assert!(matches!(
            instance(&r, None, Purpose::Forward),
            Ok(Choice::Ask { .. })
        ));
        assert!(matches!(
            instance(&r, Some("web"), Purpose::Ssh),
            Ok(Choice::One(_))
        ));
        let refused = instance(&r, Some(B), Purpose::Ssh).unwrap_err();
        assert!(refused.contains("passport rdp AR-3"), "{refused}");
        assert!(instance(&r, Some("db"), Purpose::Ssh)
            .unwrap_err()
            .contains("holds no instance db"));
    }

    #[test]
    fn an_instance_not_granted_is_refused_with_where_to_look() {
        let mut i = inst(A, None, "linux");
        i.status = "failed".into();
        let r = req(4, "active", vec![i]);
        assert!(instance(&r, Some(A), Purpose::Ssh)
            .unwrap_err()
            .contains("passport show AR-4"));
        assert!(instance(&r, None, Purpose::Ssh).is_err());
    }
}
