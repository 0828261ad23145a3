//! `StsSessionBroker::end_sessions` with a fake behind `SessionsApi`, for what
//! moto lacks (DescribeSessions, TerminateSession): only this request's role
//! session's sessions are ended, on every instance, and failures are reported
//! with what was ended before them and without AWS's own text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use passport::adapters::aws::api::{
    ApiError, AssumeRoleRequest, AssumedCredentials, SessionInfo, SessionsApi, StsApi,
};
use passport::adapters::aws::{RoleArn, StsSessionBroker};
use passport::app::ports::{ProvisionError, SessionBroker};
use passport::domain::values::{InstanceId, RequestId, Username};

const ROLE: &str = "arn:aws:iam::123456789012:role/ops/passport-session";
const A: &str = "i-0123456789abcdef0";
const B: &str = "i-0fedcba9876543210";

#[derive(Default)]
struct FakeSessions {
    /// Active sessions: (id, target, owner).
    open: Mutex<Vec<SessionInfo>>,
    described: Mutex<Vec<String>>,
    terminated: Mutex<Vec<String>>,
    fail_describe_on: Mutex<Option<String>>,
    fail_terminate: Mutex<Option<String>>,
}

impl FakeSessions {
    fn open(&self, id: &str, target: &str, owner: &str) {
        self.open.lock().unwrap().push(SessionInfo {
            id: id.into(),
            target: target.into(),
            owner: owner.into(),
        });
    }
}

#[async_trait]
impl SessionsApi for FakeSessions {
    async fn active_sessions(&self, target: &InstanceId) -> Result<Vec<SessionInfo>, ApiError> {
        self.described.lock().unwrap().push(target.to_string());
        if self.fail_describe_on.lock().unwrap().as_deref() == Some(target.as_str()) {
            return Err(ApiError::service(
                "AccessDeniedException",
                "User: arn:aws:sts::123456789012:assumed-role/passport-bot/x is not authorized",
            ));
        }
        Ok(self
            .open
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.target == target.as_str())
            .cloned()
            .collect())
    }

    async fn terminate_session(&self, session_id: &str) -> Result<(), ApiError> {
        if self.fail_terminate.lock().unwrap().as_deref() == Some(session_id) {
            return Err(ApiError::Throttled("Rate exceeded".into()));
        }
        self.open.lock().unwrap().retain(|s| s.id != session_id);
        self.terminated.lock().unwrap().push(session_id.into());
        Ok(())
    }
}

struct NoSts;

#[async_trait]
impl StsApi for NoSts {
    async fn assume_role(&self, _: &AssumeRoleRequest) -> Result<AssumedCredentials, ApiError> {
        Err(ApiError::service("AccessDenied", "not in these tests"))
    }
}

fn broker(fake: &Arc<FakeSessions>) -> StsSessionBroker {
    StsSessionBroker::new(
        Arc::new(NoSts),
        fake.clone(),
        RoleArn::parse(ROLE).unwrap(),
        "eu-west-1".into(),
    )
}

fn user(n: u64) -> Username {
    Username::for_request("ann", RequestId::new(n).unwrap())
}

fn ids(list: &[&str]) -> Vec<InstanceId> {
    list.iter().map(|i| InstanceId::parse(i).unwrap()).collect()
}

fn owner(session: &str) -> String {
    format!("arn:aws:sts::123456789012:assumed-role/passport-session/{session}")
}

#[tokio::test]
async fn only_this_requests_sessions_are_ended_on_every_instance() {
    let fake = Arc::new(FakeSessions::default());
    fake.open("pp-ann-7-0aaaaaaaaaaaaaaa1", A, &owner("pp-ann-7"));
    fake.open("pp-ann-7-0aaaaaaaaaaaaaaa2", B, &owner("pp-ann-7"));
    // Another request of the same person, a longer name, another role, a person.
    fake.open("pp-ann-70-0bbbbbbbbbbbbbbb1", A, &owner("pp-ann-70"));
    fake.open("pp-ann-7-1-0bbbbbbbbbbbbbbb2", A, &owner("pp-ann-7-1"));
    fake.open(
        "pp-ann-7-0bbbbbbbbbbbbbbb3",
        A,
        "arn:aws:sts::123456789012:assumed-role/admin/pp-ann-7",
    );
    fake.open(
        "alice-0bbbbbbbbbbbbbbb4",
        B,
        "arn:aws:iam::123456789012:user/alice",
    );

    let ended = broker(&fake)
        .end_sessions(&user(7), &ids(&[A, B]))
        .await
        .unwrap();
    assert_eq!(
        ended,
        vec!["pp-ann-7-0aaaaaaaaaaaaaaa1", "pp-ann-7-0aaaaaaaaaaaaaaa2"]
    );
    let mut described = fake.described.lock().unwrap().clone();
    described.sort();
    assert_eq!(described, vec![A, B]);
    assert_eq!(fake.open.lock().unwrap().len(), 4, "the others stay open");

    // Nothing left: ending again is a no-op.
    let again = broker(&fake).end_sessions(&user(7), &ids(&[A, B])).await;
    assert_eq!(again, Ok(Vec::new()));
}

#[tokio::test]
async fn a_failure_says_what_was_ended_before_it_and_never_what_aws_said() {
    let fake = Arc::new(FakeSessions::default());
    fake.open("pp-ann-7-0aaaaaaaaaaaaaaa1", A, &owner("pp-ann-7"));
    fake.open("pp-ann-7-0aaaaaaaaaaaaaaa2", B, &owner("pp-ann-7"));
    *fake.fail_describe_on.lock().unwrap() = Some(B.into());
    match broker(&fake).end_sessions(&user(7), &ids(&[A, B])).await {
        Err(ProvisionError::Rejected(why)) => {
            assert!(
                why.contains("ended pp-ann-7-0aaaaaaaaaaaaaaa1 before the failure"),
                "{why}"
            );
            assert!(why.contains("AccessDeniedException"), "{why}");
            assert!(!why.contains("arn:aws:sts"), "AWS's message leaked: {why}");
        }
        other => panic!("{other:?}"),
    }

    *fake.fail_describe_on.lock().unwrap() = None;
    *fake.fail_terminate.lock().unwrap() = Some("pp-ann-7-0aaaaaaaaaaaaaaa2".into());
    match broker(&fake).end_sessions(&user(7), &ids(&[A, B])).await {
        Err(ProvisionError::Unavailable(why)) => {
            assert!(why.contains("throttled by AWS"), "{why}");
            assert!(!why.contains("Rate exceeded"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}
