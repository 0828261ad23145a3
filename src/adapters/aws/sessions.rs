//! [`StsSessionBroker`], the `SessionBroker` port on STS and Session Manager:
//! credentials assumed from `[aws] session_role_arn` with an inline session
//! policy built from the request's [`SessionScope`], and the ending of the
//! sessions opened with them.
//!
//! The session policy ([`session_policy`]) is a pure function: what the
//! credentials can do is decided here and tested without AWS. The role's own
//! policy (`manifests/iam/passport-session-role-policy.json`) is the ceiling;
//! the session policy narrows it to one request, and the effective
//! permissions are what both allow.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::api::{ApiError, AssumeRoleRequest, SessionsApi, StsApi};
use super::config::RoleArn;
use crate::app::ports::{ProvisionError, SessionBroker, SessionCredentials};
use crate::domain::session::SessionScope;
use crate::domain::time::Timestamp;
use crate::domain::values::{InstanceId, Username};

/// How long the credentials live: the least STS allows. The client asks
/// again while the access lasts.
pub const CREDENTIAL_SECONDS: i32 = 900;

/// STS refuses an inline session policy longer than this (plain text,
/// whitespace included; ours has none).
pub const SESSION_POLICY_LIMIT: usize = 2048;

/// The AWS-owned session documents a scope can allow.
pub const SSH_DOCUMENT: &str = "AWS-StartSSHSession";
pub const PORT_FORWARDING_DOCUMENT: &str = "AWS-StartPortForwardingSession";
pub const REMOTE_PORT_FORWARDING_DOCUMENT: &str = "AWS-StartPortForwardingSessionToRemoteHost";

/// Where the credentials reach: the role's partition and account, and the
/// region of the instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPlace<'a> {
    pub role: &'a RoleArn,
    pub region: &'a str,
}

/// Why a session policy cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionPolicyError {
    #[error("the session policy for {instances} instances would be {chars} characters, more than the {SESSION_POLICY_LIMIT} STS accepts (at most {fits} instances fit): ask for one instance's credentials (`?instance=i-…`, as the passport client does)")]
    TooLarge {
        instances: usize,
        chars: usize,
        fits: usize,
    },
}

/// The inline session policy for `scope`, as compact JSON:
///
/// - `ssm:StartSession` on exactly the scope's instances and the session
///   documents it needs, with `ssm:SessionDocumentAccessCheck` (so a session
///   without a document, the default shell, is refused) and
///   `aws:CurrentTime` before the end of the access (so credentials that STS
///   lets live 15 minutes cannot start a session after the access ended);
/// - `ssm:TerminateSession` and `ssm:ResumeSession` on this request's own
///   sessions only.
///
/// Session Manager names a session `<caller>-<suffix>`, where the caller of
/// an assumed role is its role session name: the AWS guide shows session
/// ARNs as `session/JohnDoe-1a2b3c4d5eEXAMPLE` ("Control session access to
/// managed nodes"), and `${aws:userid}` (`AROA…:<session name>`) or
/// `${aws:username}` (absent for roles) do not match that prefix for
/// assumed roles (a known trap, re:Post "policy variable for IAM Identity
/// Center user"). The role session name is the request's username, so the
/// policy names `session/<username>-*` literally. Because a handle may
/// itself contain `-` and end in digits, `pp-ann-1-*` would also match the
/// sessions of `pp-ann-1-5`; the random suffix has no `-`, so a Deny on
/// `session/<username>-*-*` keeps each request to its own sessions.
pub fn session_policy(
    place: &PolicyPlace<'_>,
    scope: &SessionScope,
) -> Result<String, SessionPolicyError> {
    let text = policy_json(place, scope).to_string();
    if text.len() > SESSION_POLICY_LIMIT {
        return Err(SessionPolicyError::TooLarge {
            instances: scope.instances.len(),
            chars: text.len(),
            fits: instances_that_fit(place),
        });
    }
    Ok(text)
}

fn policy_json(place: &PolicyPlace<'_>, scope: &SessionScope) -> Value {
    policy_for(
        place,
        scope.username.as_str(),
        scope.instances.iter().map(InstanceId::as_str),
        &documents(scope),
        scope.not_after,
    )
}

fn policy_for<'i>(
    place: &PolicyPlace<'_>,
    username: &str,
    instances: impl Iterator<Item = &'i str>,
    documents: &[&str],
    not_after: Timestamp,
) -> Value {
    let partition = place.role.partition();
    let account = place.role.account();
    let region = place.region;
    let mut resources: Vec<String> = instances
        .map(|i| format!("arn:{partition}:ec2:{region}:{account}:instance/{i}"))
        .collect();
    for document in documents {
        // AWS-owned documents have no account in their ARN.
        resources.push(format!("arn:{partition}:ssm:{region}::document/{document}"));
    }
    let sessions = format!("arn:{partition}:ssm:{region}:{account}:session/{username}-*");
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "StartOnGrantedInstances",
                "Effect": "Allow",
                "Action": "ssm:StartSession",
                "Resource": resources,
                "Condition": {
                    "BoolIfExists": { "ssm:SessionDocumentAccessCheck": "true" },
                    "DateLessThan": { "aws:CurrentTime": not_after.rfc3339() },
                },
            },
            {
                "Sid": "OwnSessions",
                "Effect": "Allow",
                "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
                "Resource": sessions,
            },
            {
                "Sid": "NotLongerNames",
                "Effect": "Deny",
                "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
                "Resource": format!("{sessions}-*"),
            },
        ],
    })
}

/// The session documents `scope` allows, in a fixed order.
pub fn documents(scope: &SessionScope) -> Vec<&'static str> {
    let mut documents = Vec::new();
    if scope.ssh {
        documents.push(SSH_DOCUMENT);
    }
    if scope.port_forwarding {
        documents.push(PORT_FORWARDING_DOCUMENT);
    }
    if scope.remote_port_forwarding {
        documents.push(REMOTE_PORT_FORWARDING_DOCUMENT);
    }
    documents
}

/// How many instances always fit in a session policy at `place`: the worst
/// case, with the longest username, instance ids and every document.
pub fn instances_that_fit(place: &PolicyPlace<'_>) -> usize {
    let username = "p".repeat(Username::MAX_LEN);
    let ids: Vec<String> = (0..=MAX_COUNTED).map(|k| format!("i-{k:017x}")).collect();
    let all = [
        SSH_DOCUMENT,
        PORT_FORWARDING_DOCUMENT,
        REMOTE_PORT_FORWARDING_DOCUMENT,
    ];
    // The longest time: every field two digits, like any other.
    let not_after = Timestamp::from_millis(253_402_300_799_000);
    let fits = |n: usize| {
        policy_for(
            place,
            &username,
            ids[..n].iter().map(String::as_str),
            &all,
            not_after,
        )
        .to_string()
        .len()
            <= SESSION_POLICY_LIMIT
    };
    (0..=MAX_COUNTED)
        .take_while(|n| fits(*n))
        .last()
        .unwrap_or(0)
}

/// More instances than could ever fit; [`instances_that_fit`] stops here.
const MAX_COUNTED: usize = 200;

/// A `SourceIdentity` STS accepts: 2 to 64 of `[\w+=,.@-]`. A chat id is
/// already such a word on Slack and Discord; anything else is replaced by
/// `_`, and a one-character id is padded, so the value stays recognisable.
pub fn source_identity(user: &str) -> String {
    let mut text: String = user
        .chars()
        .map(|c| if is_sts_word(c) { c } else { '_' })
        .take(64)
        .collect();
    while text.chars().count() < 2 {
        text.push('_');
    }
    text
}

fn is_sts_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

/// A session tag value STS accepts: at most 256 of letters, digits, spaces
/// and `_.:/=+-@`; anything else becomes `_`.
pub fn tag_value(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect()
}

/// The AssumeRole call for `scope`.
pub fn assume_role_request(
    place: &PolicyPlace<'_>,
    scope: &SessionScope,
) -> Result<AssumeRoleRequest, SessionPolicyError> {
    Ok(AssumeRoleRequest {
        role_arn: place.role.as_str().to_owned(),
        // `pp-<handle>-<n>`: at most 20 of [a-z0-9_-], which STS accepts as is.
        role_session_name: scope.username.as_str().to_owned(),
        source_identity: source_identity(scope.requester.as_str()),
        policy: session_policy(place, scope)?,
        duration_seconds: CREDENTIAL_SECONDS,
        tags: vec![
            ("passport:request".into(), scope.request.to_string()),
            ("passport:requester".into(), tag_value(&scope.handle)),
        ],
    })
}

/// Whether a session's owner is this request's role session:
/// `arn:<partition>:sts::<account>:assumed-role/<role name>/<username>`.
pub fn owned_by(owner: &str, role: &RoleArn, username: &Username) -> bool {
    let expected = format!(
        "arn:{}:sts::{}:assumed-role/{}/{}",
        role.partition(),
        role.account(),
        role.name(),
        username.as_str()
    );
    owner == expected
}

/// The `SessionBroker` on STS (credentials) and Session Manager (ending
/// sessions).
pub struct StsSessionBroker {
    sts: Arc<dyn StsApi>,
    sessions: Arc<dyn SessionsApi>,
    role: RoleArn,
    region: String,
}

impl StsSessionBroker {
    pub fn new(
        sts: Arc<dyn StsApi>,
        sessions: Arc<dyn SessionsApi>,
        role: RoleArn,
        region: String,
    ) -> Self {
        Self {
            sts,
            sessions,
            role,
            region,
        }
    }

    fn place(&self) -> PolicyPlace<'_> {
        PolicyPlace {
            role: &self.role,
            region: &self.region,
        }
    }

    /// Ends this request's active sessions on one instance: the ids ended,
    /// and the first error.
    async fn end_on(
        &self,
        username: &Username,
        instance: &InstanceId,
    ) -> (Vec<String>, Option<ApiError>) {
        let found = match self.sessions.active_sessions(instance).await {
            Ok(found) => found,
            Err(e) => return (Vec::new(), Some(e)),
        };
        let mut ended = Vec::new();
        let mut failure = None;
        for session in found {
            if !owned_by(&session.owner, &self.role, username) {
                continue;
            }
            match self.sessions.terminate_session(&session.id).await {
                Ok(()) => ended.push(session.id),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        (ended, failure)
    }
}

#[async_trait]
impl SessionBroker for StsSessionBroker {
    async fn credentials(
        &self,
        scope: &SessionScope,
        _now: Timestamp,
    ) -> Result<SessionCredentials, ProvisionError> {
        let request = assume_role_request(&self.place(), scope)
            .map_err(|e| ProvisionError::Rejected(e.to_string()))?;
        let assumed = self
            .sts
            .assume_role(&request)
            .await
            .map_err(|e| match e.code() {
                Some("PackedPolicyTooLarge") => ProvisionError::Rejected(format!(
                    "the session policy and tags for {} instances are more than STS accepts ({e}): connect with a request for fewer instances",
                    scope.instances.len()
                )),
                _ => super::provisioner::provision_error("AssumeRole on the session role", e),
            })?;
        tracing::info!(
            request = %scope.request,
            access_key_id = %assumed.access_key_id,
            "Session Manager credentials assumed"
        );
        Ok(SessionCredentials {
            access_key_id: assumed.access_key_id,
            secret_access_key: assumed.secret_access_key,
            session_token: assumed.session_token,
            expiration: Timestamp::from_millis(assumed.expiration_ms),
            region: self.region.clone(),
        })
    }

    async fn end_sessions(
        &self,
        username: &Username,
        instances: &[InstanceId],
    ) -> Result<Vec<String>, ProvisionError> {
        // A request names at most as many instances as fit in a session
        // policy (about 20, checked at start-up), so they are asked at once.
        let results =
            futures::future::join_all(instances.iter().map(|i| self.end_on(username, i))).await;
        let mut ended = Vec::new();
        let mut failure = None;
        for (ids, error) in results {
            ended.extend(ids);
            if let Some(e) = error {
                failure.get_or_insert(e);
            }
        }
        ended.sort();
        match failure {
            None => Ok(ended),
            Some(e) => {
                let done = if ended.is_empty() {
                    String::new()
                } else {
                    format!("ended {} before the failure; ", ended.join(", "))
                };
                Err(
                    match super::provisioner::provision_error("ending Session Manager sessions", e)
                    {
                        ProvisionError::Unavailable(why) => {
                            ProvisionError::Unavailable(format!("{done}{why}"))
                        }
                        ProvisionError::Rejected(why) => {
                            ProvisionError::Rejected(format!("{done}{why}"))
                        }
                    },
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::values::{RequestId, UserId};

    fn role() -> RoleArn {
        RoleArn::parse("arn:aws:iam::123456789012:role/ops/passport-session").unwrap()
    }

    fn scope(instances: &[&str], ssh: bool, pf: bool, remote: bool) -> SessionScope {
        SessionScope {
            request: RequestId::new(7).unwrap(),
            username: Username::for_request("ann", RequestId::new(7).unwrap()),
            requester: UserId::parse("U024BE7LH").unwrap(),
            handle: "ann".into(),
            instances: instances
                .iter()
                .map(|i| InstanceId::parse(i).unwrap())
                .collect(),
            ssh,
            port_forwarding: pf,
            remote_port_forwarding: remote,
            not_after: Timestamp::parse_rfc3339("2026-12-01T20:30:00Z").unwrap(),
        }
    }

    fn policy(scope: &SessionScope) -> Value {
        let role = role();
        let place = PolicyPlace {
            role: &role,
            region: "eu-west-1",
        };
        serde_json::from_str(&session_policy(&place, scope).unwrap()).unwrap()
    }

    const A: &str = "i-0123456789abcdef0";
    const B: &str = "i-0fedcba9876543210";

    #[test]
    fn start_session_names_exactly_the_instances_and_the_needed_documents() {
        for ssh in [false, true] {
            for pf in [false, true] {
                for remote in [false, true] {
                    let p = policy(&scope(&[A, B], ssh, pf, remote));
                    let start = &p["Statement"][0];
                    assert_eq!(start["Effect"], "Allow");
                    assert_eq!(start["Action"], "ssm:StartSession");
                    let mut expected = vec![
                        format!("arn:aws:ec2:eu-west-1:123456789012:instance/{A}"),
                        format!("arn:aws:ec2:eu-west-1:123456789012:instance/{B}"),
                    ];
                    for (on, doc) in [
                        (ssh, "AWS-StartSSHSession"),
                        (pf, "AWS-StartPortForwardingSession"),
                        (remote, "AWS-StartPortForwardingSessionToRemoteHost"),
                    ] {
                        if on {
                            expected.push(format!("arn:aws:ssm:eu-west-1::document/{doc}"));
                        }
                    }
                    assert_eq!(
                        start["Resource"],
                        json!(expected),
                        "ssh={ssh} pf={pf} remote={remote}"
                    );
                    assert_eq!(
                        start["Condition"],
                        json!({
                            "BoolIfExists": { "ssm:SessionDocumentAccessCheck": "true" },
                            "DateLessThan": { "aws:CurrentTime": "2026-12-01T20:30:00Z" },
                        })
                    );
                }
            }
        }
    }

    #[test]
    fn only_the_requests_own_sessions_can_be_ended_or_resumed() {
        let p = policy(&scope(&[A], true, false, false));
        let statements = p["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 3);
        assert_eq!(
            statements[1],
            json!({
                "Sid": "OwnSessions",
                "Effect": "Allow",
                "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
                "Resource": "arn:aws:ssm:eu-west-1:123456789012:session/pp-ann-7-*",
            })
        );
        assert_eq!(
            statements[2],
            json!({
                "Sid": "NotLongerNames",
                "Effect": "Deny",
                "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
                "Resource": "arn:aws:ssm:eu-west-1:123456789012:session/pp-ann-7-*-*",
            })
        );
        assert!(statements
            .iter()
            .all(|s| s["Action"] != "*" && s["Resource"] != "*"));
    }

    #[test]
    fn the_partition_and_account_come_from_the_role() {
        let role = RoleArn::parse("arn:aws-cn:iam::210987654321:role/passport-session").unwrap();
        let place = PolicyPlace {
            role: &role,
            region: "cn-north-1",
        };
        let text = session_policy(&place, &scope(&[A], true, true, false)).unwrap();
        assert!(text.contains(&format!(
            "arn:aws-cn:ec2:cn-north-1:210987654321:instance/{A}"
        )));
        assert!(text.contains("arn:aws-cn:ssm:cn-north-1::document/AWS-StartSSHSession"));
        assert!(!text.contains("arn:aws:"));
    }

    #[test]
    fn the_policy_stays_within_what_sts_accepts_or_is_refused() {
        let role = role();
        let place = PolicyPlace {
            role: &role,
            region: "eu-west-1",
        };
        let fits = instances_that_fit(&place);
        assert!((15..=30).contains(&fits), "{fits}");
        let ids: Vec<String> = (0..fits + 1).map(|k| format!("i-{k:017x}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let longest = |ids: &[&str]| SessionScope {
            username: Username::for_request(&"x".repeat(40), RequestId::new(7).unwrap()),
            ..scope(ids, true, true, true)
        };
        assert_eq!(longest(&[]).username.as_str().len(), Username::MAX_LEN);
        let ok = session_policy(&place, &longest(&refs[..fits])).unwrap();
        assert!(ok.len() <= SESSION_POLICY_LIMIT);
        let e = session_policy(&place, &longest(&refs)).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("the session policy for"), "{text}");
        assert!(
            text.contains(&format!("at most {fits} instances fit")),
            "{text}"
        );
    }

    #[test]
    fn the_assume_role_call_names_the_person_and_the_request() {
        let role = role();
        let place = PolicyPlace {
            role: &role,
            region: "eu-west-1",
        };
        let mut s = scope(&[A], true, false, false);
        s.handle = "Ann Müller <ann>".into();
        let request = assume_role_request(&place, &s).unwrap();
        assert_eq!(
            request.role_arn,
            "arn:aws:iam::123456789012:role/ops/passport-session"
        );
        assert_eq!(request.role_session_name, "pp-ann-7");
        assert_eq!(request.source_identity, "U024BE7LH");
        assert_eq!(request.duration_seconds, 900);
        assert_eq!(
            request.tags,
            vec![
                ("passport:request".to_owned(), "AR-7".to_owned()),
                (
                    "passport:requester".to_owned(),
                    "Ann Müller _ann_".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn source_identities_are_what_sts_accepts() {
        assert_eq!(source_identity("U024BE7LH"), "U024BE7LH");
        assert_eq!(source_identity("123456789012345678"), "123456789012345678");
        assert_eq!(source_identity("a"), "a_");
        assert_eq!(source_identity("dev:1/é"), "dev_1__");
        assert_eq!(source_identity(&"x".repeat(100)).len(), 64);
        assert_eq!(tag_value(&"é".repeat(300)).chars().count(), 256);
    }

    #[test]
    fn sessions_belong_to_the_request_by_role_and_session_name() {
        let role = role();
        let user = Username::for_request("ann", RequestId::new(7).unwrap());
        assert!(owned_by(
            "arn:aws:sts::123456789012:assumed-role/passport-session/pp-ann-7",
            &role,
            &user
        ));
        for other in [
            "arn:aws:sts::123456789012:assumed-role/passport-session/pp-ann-70",
            "arn:aws:sts::123456789012:assumed-role/other-role/pp-ann-7",
            "arn:aws:sts::999999999999:assumed-role/passport-session/pp-ann-7",
            "arn:aws:iam::123456789012:user/pp-ann-7",
        ] {
            assert!(!owned_by(other, &role, &user), "{other}");
        }
    }
}
