//! Session Manager credentials through the engine, and the ending of the
//! sessions opened with them when access ends (complete, revoke, expiry),
//! with a fake `SessionBroker` behind the port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::*;
use passport::app::engine::AppError;
use passport::app::ports::{ProvisionError, SessionBroker, SessionCredentials};
use passport::domain::request::RequestState;
use passport::domain::session::SessionScope;
use passport::domain::time::{Span, Timestamp};
use passport::domain::values::{InstanceId, RequestId, Username};

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const TOKEN: &str = "FwoGZXIvYXdzEXAMPLETOKEN";

/// Sessions open per username, and what was asked.
#[derive(Default)]
struct FakeBroker {
    open: Mutex<BTreeMap<String, Vec<String>>>,
    issued: Mutex<Vec<SessionScope>>,
    ended: Mutex<Vec<(String, Vec<InstanceId>)>>,
    /// `end_sessions` fails this many more times.
    failures: Mutex<u32>,
}

impl FakeBroker {
    fn open_session(&self, username: &str, id: &str) {
        self.open
            .lock()
            .unwrap()
            .entry(username.into())
            .or_default()
            .push(id.into());
    }

    fn end_calls(&self) -> Vec<(String, Vec<InstanceId>)> {
        self.ended.lock().unwrap().clone()
    }
}

#[async_trait]
impl SessionBroker for FakeBroker {
    async fn credentials(
        &self,
        scope: &SessionScope,
        now: Timestamp,
    ) -> Result<SessionCredentials, ProvisionError> {
        self.issued.lock().unwrap().push(scope.clone());
        Ok(SessionCredentials {
            access_key_id: format!("ASIA{}", scope.request.number()),
            secret_access_key: SECRET.to_owned().into(),
            session_token: TOKEN.to_owned().into(),
            expiration: now.plus(Span::from_minutes(15)),
            region: "eu-west-1".into(),
        })
    }

    async fn end_sessions(
        &self,
        username: &Username,
        instances: &[InstanceId],
    ) -> Result<Vec<String>, ProvisionError> {
        self.ended
            .lock()
            .unwrap()
            .push((username.to_string(), instances.to_vec()));
        {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(ProvisionError::Unavailable(
                    "ending Session Manager sessions: AWS is not answering (error 1a2b3c4d)".into(),
                ));
            }
        }
        Ok(self
            .open
            .lock()
            .unwrap()
            .remove(username.as_str())
            .unwrap_or_default())
    }
}

async fn spawn_with_broker() -> (TestApp, Arc<FakeBroker>, tempfile::TempDir) {
    let (app, dir) = TestApp::spawn().await;
    let broker = Arc::new(FakeBroker::default());
    let app = app.with_sessions(broker.clone());
    (app, broker, dir)
}

async fn credentials(
    app: &TestApp,
    user: &str,
    id: RequestId,
) -> Result<SessionCredentials, AppError> {
    app.engine
        .session_credentials(&TestApp::actor(user), id, None)
        .await
        .map(|(credentials, _)| credentials)
}

fn session_events(details: &[(String, String)]) -> Vec<String> {
    details
        .iter()
        .filter(|(a, _)| a.starts_with("session_"))
        .map(|(a, d)| format!("{a} {d}"))
        .collect()
}

async fn details(app: &TestApp, id: RequestId) -> Vec<(String, String)> {
    app.events(id)
        .await
        .into_iter()
        .map(|e| (e.action, e.details))
        .collect()
}

#[tokio::test]
async fn credentials_are_issued_to_the_requester_and_logged_without_the_secret() {
    let (app, broker, _dir) = spawn_with_broker().await;
    let id = app.active_request("1h").await;
    let c = credentials(&app, "dev1", id).await.unwrap();
    assert_eq!(c.access_key_id, format!("ASIA{}", id.number()));
    let scope = broker.issued.lock().unwrap()[0].clone();
    assert_eq!(scope.instances, vec![InstanceId::parse(WEB).unwrap()]);
    assert_eq!(Some(scope.not_after), app.request(id).await.expires_at);
    let events = app.events(id).await;
    let issued: Vec<_> = events
        .iter()
        .filter(|e| e.action == "session_credentials_issued")
        .collect();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].actor, "dev1");
    assert!(issued[0].details.contains(&c.access_key_id));
    for e in &events {
        assert!(!e.details.contains(SECRET) && !e.details.contains(TOKEN));
    }
    assert!(!format!("{c:?}").contains(SECRET) && !format!("{c:?}").contains(TOKEN));
}

#[tokio::test]
async fn credentials_are_refused_for_someone_elses_request() {
    let (app, broker, _dir) = spawn_with_broker().await;
    let id = app.active_request("1h").await;
    let e = credentials(&app, "dev2", id).await.unwrap_err().to_string();
    assert_eq!(e, format!("only the requester of {id} can connect with it"));
    assert!(broker.issued.lock().unwrap().is_empty());
    assert_eq!(app.count(id, "session_credentials_issued").await, 0);
}

#[tokio::test]
async fn credentials_are_refused_before_approval_and_after_the_end() {
    let (app, broker, _dir) = spawn_with_broker().await;
    let pending = app.new_request(WEB, "1h ticket#1 work").await;
    let e = credentials(&app, "dev1", pending)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("you can connect only while access is active"),
        "{e}"
    );

    let id = app.active_request("1h").await;
    assert!(app.run("dev1", &format!("complete {id}")).await.ok);
    let e = credentials(&app, "dev1", id).await.unwrap_err().to_string();
    assert!(
        e.contains("you can connect only while access is active"),
        "{e}"
    );
    assert!(broker.issued.lock().unwrap().is_empty());

    let e = credentials(&app, "dev1", ar(99))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("AR-99 does not exist"), "{e}");
}

#[tokio::test]
async fn without_a_session_role_no_credentials_are_handed_out() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.active_request("1h").await;
    let e = credentials(&app, "dev1", id).await.unwrap_err().to_string();
    assert!(e.contains("`[aws] session_role_arn` is not set"), "{e}");
    assert!(app.run("dev1", &format!("complete {id}")).await.ok);
    assert_eq!(app.request(id).await.state, RequestState::Completed);
}

#[tokio::test]
async fn completing_ends_the_sessions_and_sweeps_once_the_credentials_expired() {
    let (app, broker, _dir) = spawn_with_broker().await;
    let id = app.active_request("1h").await;
    let username = app.request(id).await.username.to_string();
    credentials(&app, "dev1", id).await.unwrap();
    broker.open_session(&username, &format!("{username}-0a1b2c3d4e5f60001"));
    broker.open_session(&username, &format!("{username}-0a1b2c3d4e5f60002"));

    assert!(app.run("dev1", &format!("complete {id}")).await.ok);
    assert_eq!(app.provisioner.revokes().len(), 1, "the user is removed");
    assert_eq!(
        broker.end_calls(),
        vec![(username.clone(), vec![InstanceId::parse(WEB).unwrap()])]
    );
    let logged = session_events(&details(&app, id).await);
    assert_eq!(logged.len(), 3, "{logged:?}");
    assert!(logged[1].starts_with("session_terminated") && logged[1].contains("0a1b2c3d4e5f60001"));
    assert!(logged[2].starts_with("session_terminated") && logged[2].contains("0a1b2c3d4e5f60002"));
    let removed = app.actions(id).await;
    assert!(removed.contains(&"removed".to_owned()));

    // A credential issued before the end could still start a session until it
    // expires: one more sweep then ends that one too.
    broker.open_session(&username, &format!("{username}-0a1b2c3d4e5f60003"));
    app.advance(Span::from_minutes(10)).await;
    assert_eq!(
        broker.end_calls().len(),
        1,
        "not before the credentials expired"
    );
    app.advance(Span::from_minutes(10)).await;
    assert_eq!(broker.end_calls().len(), 2);
    let logged = session_events(&details(&app, id).await);
    assert!(
        logged.last().unwrap().contains("0a1b2c3d4e5f60003"),
        "{logged:?}"
    );
    app.advance(Span::from_hours(2)).await;
    assert_eq!(broker.end_calls().len(), 2, "nothing more runs");
}

#[tokio::test]
async fn revoking_ends_the_sessions() {
    let (app, broker, _dir) = spawn_with_broker().await;
    let id = app.active_request("1h").await;
    let username = app.request(id).await.username.to_string();
    credentials(&app, "dev1", id).await.unwrap();
    broker.open_session(&username, &format!("{username}-0a1b2c3d4e5f60001"));
    assert!(app.run("boss", &format!("revoke {id} leaving")).await.ok);
    assert_eq!(app.request(id).await.state, RequestState::Revoked);
    assert_eq!(broker.end_calls().len(), 1);
    assert_eq!(app.count(id, "session_terminated").await, 1);
}

#[tokio::test]
async fn expiry_ends_the_sessions() {
    let (app, broker, _dir) = spawn_with_broker().await;
    let id = app.active_request("1h").await;
    let username = app.request(id).await.username.to_string();
    credentials(&app, "dev1", id).await.unwrap();
    broker.open_session(&username, &format!("{username}-0a1b2c3d4e5f60001"));
    app.advance(Span::from_minutes(61)).await;
    assert_eq!(app.request(id).await.state, RequestState::Expired);
    assert_eq!(app.count(id, "removed").await, 1);
    assert_eq!(broker.end_calls().len(), 1);
    assert_eq!(app.count(id, "session_terminated").await, 1);
}

#[tokio::test]
async fn a_failing_end_still_removes_the_user_on_time_and_is_logged_and_retried() {
    let (app, broker, _dir) = spawn_with_broker().await;
    let id = app.active_request("1h").await;
    let username = app.request(id).await.username.to_string();
    credentials(&app, "dev1", id).await.unwrap();
    broker.open_session(&username, &format!("{username}-0a1b2c3d4e5f60001"));
    *broker.failures.lock().unwrap() = 1;

    assert!(app.run("dev1", &format!("complete {id}")).await.ok);
    assert_eq!(
        app.count(id, "removed").await,
        1,
        "removed at once all the same"
    );
    let failed: Vec<_> = details(&app, id)
        .await
        .into_iter()
        .filter(|(a, _)| a == "session_termination_failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]
            .1
            .contains("AWS is not answering (error 1a2b3c4d)"),
        "{failed:?}"
    );
    assert!(failed[0].1.contains("trying again at"), "{failed:?}");
    assert_eq!(app.count(id, "session_terminated").await, 0);

    // The retry, on its own timer.
    app.advance(Span::from_secs(30)).await;
    assert_eq!(broker.end_calls().len(), 2);
    assert_eq!(app.count(id, "session_terminated").await, 1);
    assert_eq!(
        app.count(id, "removed").await,
        1,
        "the removal is not repeated"
    );
}

#[tokio::test]
async fn a_request_that_never_had_credentials_asks_aws_nothing() {
    let (app, broker, _dir) = spawn_with_broker().await;
    let id = app.active_request("1h").await;
    assert!(app.run("dev1", &format!("complete {id}")).await.ok);
    app.advance(Span::from_hours(1)).await;
    assert_eq!(app.count(id, "removed").await, 1);
    assert!(broker.end_calls().is_empty());
}
