//! The use cases end to end on a real SQLite file, with a hand-moved clock,
//! a recording chat surface and a provisioner fake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use passport::app::ports::{ChatError, Store};
use passport::domain::request::{GrantState, RequestState};
use passport::domain::time::Span;

fn mins(m: i64) -> Span {
    Span::from_minutes(m)
}

#[tokio::test]
async fn a_whole_round_request_approve_extend_complete() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(WEB, "2h ticket#123 disk full").await;
    let card = app.surface.card(id).unwrap();
    assert_eq!(card.state, RequestState::Pending);
    assert_eq!(
        card.actions
            .iter()
            .map(|a| a.command.as_str())
            .collect::<Vec<_>>(),
        [
            format!("approve {id} @request"),
            format!("deny {id} @request")
        ]
    );
    assert_eq!(card.instances[0].name.as_deref(), Some("web-1"));

    let reply = app.run("lead1", &format!("approve {id}")).await;
    assert!(reply.ok, "{}", reply.text);
    let req = app.request(id).await;
    assert_eq!(req.state, RequestState::Active);
    assert_eq!(
        req.activated_at,
        Some(app.engine.now()),
        "the clock starts when access is active"
    );
    assert_eq!(
        req.expires_at,
        Some(app.engine.now().plus(Span::from_hours(2)))
    );
    let grants = app.provisioner.grants();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].username, "pp-dev1-1");
    // The card never shows stale buttons and says who approved.
    let card = app.surface.card(id).unwrap();
    assert_eq!(card.state, RequestState::Active);
    assert!(card.actions.is_empty());
    assert_eq!(card.approved_by, ["lead1"]);
    // The requester hears the outcome and how to connect, with both private IPs.
    let dms = app.surface.directs("dev1").join("\n");
    assert!(dms.contains("approved by lead1"), "{dms}");
    assert!(
        dms.contains("AWS-StartSSHSession") && dms.contains("10.0.2.5"),
        "{dms}"
    );

    app.advance(mins(30)).await;
    let reply = app.run_in_thread("dev1", id, "extend 1h").await;
    assert!(reply.ok, "{}", reply.text);
    assert_eq!(
        app.request(id).await.expires_at,
        Some(app.engine.now().plus(Span::from_minutes(150)))
    );
    // The extension moved the on-instance expiry by running the grant again.
    assert_eq!(app.provisioner.grants().len(), 2);

    let reply = app.run_in_thread("dev1", id, "done").await;
    assert!(reply.ok, "{}", reply.text);
    let req = app.request(id).await;
    assert_eq!(req.state, RequestState::Completed);
    assert!(req.grants.iter().all(|g| g.state == GrantState::Removed));
    assert_eq!(app.provisioner.revokes().len(), 1);
    assert!(app
        .surface
        .directs("dev1")
        .last()
        .unwrap()
        .contains("has ended"));
    assert_eq!(
        app.actions(id).await,
        [
            "requested",
            "approved",
            "provisioning",
            "granted",
            "active",
            "extended",
            "refreshed",
            "completed",
            "removed"
        ]
    );
    // Every Logbook event was posted to the audit channel.
    assert_eq!(app.surface.audits().len(), app.events(id).await.len());
}

#[tokio::test]
async fn approve_by_requester_is_refused() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(WEB, "ticket#1").await;
    let before = app.events(id).await.len();
    let reply = app.run("dev1", &format!("approve {id}")).await;
    assert!(!reply.ok);
    assert!(
        reply.text.contains("cannot approve your own request"),
        "{}",
        reply.text
    );
    assert_eq!(app.request(id).await.state, RequestState::Pending);
    assert_eq!(
        app.events(id).await.len(),
        before,
        "a refusal writes nothing"
    );
}

#[tokio::test]
async fn approve_by_non_approver_is_refused() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(WEB, "ticket#1").await;
    let reply = app.run("mallory", &format!("approve {id}")).await;
    assert!(!reply.ok);
    assert!(reply.text.contains("not an approver"), "{}", reply.text);
    // An SRE lead is not an approver of a request that needs the approvers group.
    let reply = app.run("sre1", &format!("approve {id}")).await;
    assert!(!reply.ok);
}

#[tokio::test]
async fn prod_needs_two_distinct_sre_leads() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(PROD, "2h INC-7 outage").await;
    let card = app.surface.card(id).unwrap();
    assert_eq!(card.required, "2 approvals from group sre-leads");
    let r = app.run("lead1", &format!("approve {id}")).await;
    assert!(!r.ok, "a member of another group does not count");
    let r = app.run("sre1", &format!("approve {id}")).await;
    assert!(
        r.ok && r.text.contains("still needs 1 more approval"),
        "{}",
        r.text
    );
    let r = app.run("sre1", &format!("approve {id}")).await;
    assert!(
        !r.ok && r.text.contains("already approved"),
        "one approver counts once: {}",
        r.text
    );
    assert_eq!(app.request(id).await.state, RequestState::Pending);
    let r = app.run("sre2", &format!("approve {id}")).await;
    assert!(r.ok, "{}", r.text);
    assert_eq!(app.request(id).await.state, RequestState::Active);
    assert!(app
        .surface
        .threads(id)
        .iter()
        .any(|t| t.contains("approved by sre1, sre2")));
}

#[tokio::test]
async fn prod_refuses_more_than_its_maximum() {
    let (app, _dir) = TestApp::spawn().await;
    let r = app.run("dev1", &format!("request {PROD} 6h INC-7")).await;
    assert!(!r.ok);
    assert!(r.text.contains("at most 4h"), "{}", r.text);
}

#[tokio::test]
async fn dev_auto_approves_with_sudo() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(DEV, "30m ticket#9").await;
    assert_eq!(app.request(id).await.state, RequestState::Active);
    assert!(app.provisioner.grants()[0].sudo);
    assert!(app
        .events(id)
        .await
        .iter()
        .any(|e| e.actor == "passport" && e.action == "approved"));
}

#[tokio::test]
async fn mixing_dev_and_prod_takes_the_strictest_rule() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(&format!("{DEV},{PROD}"), "1h INC-1").await;
    let req = app.request(id).await;
    assert_eq!(
        req.state,
        RequestState::Pending,
        "prod's approvals are not waived by dev's auto-approval"
    );
    assert!(!req.requirement.sudo);
    assert_eq!(req.requirement.max_duration, Span::from_hours(4));
}

#[tokio::test]
async fn unknown_and_stopped_instances_are_named() {
    let (app, _dir) = TestApp::spawn().await;
    let r = app
        .run(
            "dev1",
            "request i-0ddddddddddddddd4 i-0ccccccccccccccc3 ticket#1",
        )
        .await;
    assert!(!r.ok);
    assert!(
        r.text.contains("i-0ddddddddddddddd4: no such instance"),
        "{}",
        r.text
    );
    assert!(
        r.text
            .contains("i-0ccccccccccccccc3: the instance is stopped"),
        "{}",
        r.text
    );
    assert!(app
        .store
        .list(
            passport::domain::command::ListFilter::Pending,
            &TestApp::actor("dev1").person.id,
            10
        )
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn two_approvers_racing_produce_one_transition() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(WEB, "ticket#1").await;
    let (lead1, lead2, line) = (
        TestApp::actor("lead1"),
        TestApp::actor("lead2"),
        format!("approve {id}"),
    );
    let (a, b) = tokio::join!(
        app.engine.handle_line(&lead1, &line, None),
        app.engine.handle_line(&lead2, &line, None),
    );
    assert!(a.ok ^ b.ok, "exactly one approval wins: {a:?} {b:?}");
    app.settle().await;
    assert_eq!(app.count(id, "approved").await, 1);
    assert_eq!(app.count(id, "provisioning").await, 1);
    assert_eq!(app.provisioner.grants().len(), 1, "one grant");
    // One revocation schedule: expiry removes the user once.
    app.advance(Span::from_hours(1)).await;
    app.advance(mins(5)).await;
    assert_eq!(app.provisioner.revokes().len(), 1);
}

#[tokio::test]
async fn double_click_and_repeated_delivery_cause_one_effect() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(WEB, "ticket#1").await;
    let line = format!("approve {id}");
    let actor = TestApp::actor("lead1");
    let (a, b, c) = tokio::join!(
        app.engine.handle_line(&actor, &line, None),
        app.engine.handle_line(&actor, &line, None),
        app.engine.handle_line(&actor, &line, None),
    );
    assert_eq!([a.ok, b.ok, c.ok].iter().filter(|ok| **ok).count(), 1);
    app.settle().await;
    assert_eq!(app.count(id, "approved").await, 1);
    assert_eq!(app.provisioner.grants().len(), 1);
}

#[tokio::test]
async fn warnings_come_15_and_5_minutes_before_expiry_then_expiry_removes_once() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.active_request("1h").await;
    app.advance(mins(44)).await;
    assert_eq!(app.count(id, "expiry_warning").await, 0);
    app.advance(mins(1)).await;
    assert_eq!(app.count(id, "expiry_warning").await, 1);
    let warning = app
        .surface
        .threads(id)
        .into_iter()
        .find(|t| t.contains("access ends"))
        .unwrap();
    assert!(warning.contains("in 15m"), "{warning}");
    let dm = app.surface.all().into_iter().rev().find_map(|p| match p {
        Posted::Direct(u, _, actions) if u == "dev1" => Some(actions),
        _ => None,
    });
    let commands: Vec<String> = dm.unwrap().into_iter().map(|a| a.command).collect();
    assert_eq!(
        commands,
        [
            format!("extend {id} 1h"),
            format!("extend {id} 2h"),
            format!("complete {id}")
        ]
    );
    app.advance(mins(10)).await;
    assert_eq!(app.count(id, "expiry_warning").await, 2);
    app.advance(Span::from_millis(4 * 60_000 + 59_999)).await;
    assert_eq!(
        app.request(id).await.state,
        RequestState::Active,
        "not a millisecond early"
    );
    app.advance(Span::from_millis(1)).await;
    let req = app.request(id).await;
    assert_eq!(req.state, RequestState::Expired);
    assert!(req.grants.iter().all(|g| g.state == GrantState::Removed));
    app.advance(Span::from_hours(1)).await;
    assert_eq!(app.count(id, "expired").await, 1);
    assert_eq!(app.provisioner.revokes().len(), 1, "exactly one revocation");
    assert_eq!(app.surface.card(id).unwrap().state, RequestState::Expired);
}

#[tokio::test]
async fn no_warning_for_an_expiry_an_extension_moved() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.active_request("1h").await;
    app.advance(mins(40)).await;
    assert!(app.run("dev1", &format!("extend {id} 1h")).await.ok);
    // The old 15-minute warning (at 45m) and 5-minute warning (at 55m) must not come.
    app.advance(mins(20)).await;
    assert_eq!(app.count(id, "expiry_warning").await, 0);
    assert_eq!(app.request(id).await.state, RequestState::Active);
    app.advance(mins(45)).await; // 1h45m: 15 minutes before the new expiry
    assert_eq!(app.count(id, "expiry_warning").await, 1);
    app.advance(mins(15)).await;
    assert_eq!(app.request(id).await.state, RequestState::Expired);
}

#[tokio::test]
async fn extension_is_bounded_by_the_maximum() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.active_request("11h").await;
    let r = app.run("dev1", &format!("extend {id} 2h")).await;
    assert!(r.ok, "{}", r.text);
    assert!(
        r.text.contains("extended by 1h") && r.text.contains("asked for 2h"),
        "{}",
        r.text
    );
    let req = app.request(id).await;
    assert_eq!(
        req.expires_at,
        Some(req.activated_at.unwrap().plus(Span::from_hours(12)))
    );
    let r = app.run("dev1", &format!("extend {id} 30m")).await;
    assert!(!r.ok && r.text.contains("maximum"), "{}", r.text);
}

#[tokio::test]
async fn only_the_requester_extends() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.active_request("1h").await;
    let r = app.run_in_thread("lead1", id, "extend 1h").await;
    assert!(!r.ok && r.text.contains("only the requester"), "{}", r.text);
    let r = app.run_in_thread("mallory", id, "+30m").await;
    assert!(!r.ok);
    assert_eq!(app.count(id, "extended").await, 0);
}

#[tokio::test]
async fn complete_racing_expiry_revokes_exactly_once() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.active_request("1h").await;
    app.clock.advance(Span::from_hours(1));
    let actor = TestApp::actor("dev1");
    let line = format!("complete {id}");
    let (reply, ran) = tokio::join!(
        app.engine.handle_line(&actor, &line, None),
        app.engine.run_due()
    );
    ran.unwrap();
    app.settle().await;
    let req = app.request(id).await;
    assert!(
        matches!(req.state, RequestState::Completed | RequestState::Expired),
        "{:?} {reply:?}",
        req.state
    );
    assert_eq!(
        app.count(id, "completed").await + app.count(id, "expired").await,
        1
    );
    assert_eq!(app.provisioner.revokes().len(), 1);
}

#[tokio::test]
async fn revoke_by_admin_ends_access_at_once() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.active_request("2h").await;
    let r = app.run("dev1", &format!("revoke {id}")).await;
    assert!(!r.ok && r.text.contains("complete"), "{}", r.text);
    let r = app
        .run("boss", &format!("revoke {id} suspicious activity"))
        .await;
    assert!(r.ok, "{}", r.text);
    assert_eq!(app.request(id).await.state, RequestState::Revoked);
    assert_eq!(app.provisioner.revokes().len(), 1);
    assert!(app
        .surface
        .directs("dev1")
        .iter()
        .any(|d| d.contains("revoked by boss: suspicious activity")));
}

#[tokio::test]
async fn revoke_while_provisioning_creates_nothing() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(WEB, "ticket#1").await;
    // Approve without running timers: the request waits in Provisioning.
    let r = app
        .engine
        .handle_line(&TestApp::actor("lead1"), &format!("approve {id}"), None)
        .await;
    assert!(r.ok);
    assert_eq!(app.request(id).await.state, RequestState::Provisioning);
    let r = app
        .engine
        .handle_line(&TestApp::actor("boss"), &format!("revoke {id}"), None)
        .await;
    assert!(r.ok, "{}", r.text);
    app.settle().await;
    assert!(app.provisioner.grants().is_empty());
    assert_eq!(app.request(id).await.state, RequestState::Revoked);
}

#[tokio::test]
async fn pending_requests_time_out() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(WEB, "ticket#1").await;
    app.advance(mins(59)).await;
    assert_eq!(app.request(id).await.state, RequestState::Pending);
    app.advance(mins(1)).await;
    assert_eq!(app.request(id).await.state, RequestState::ApprovalTimedOut);
    let card = app.surface.card(id).unwrap();
    assert!(card.actions.is_empty(), "the buttons are removed");
    assert!(app
        .surface
        .directs("dev1")
        .iter()
        .any(|d| d.contains("timed out")));
    let r = app.run("lead1", &format!("approve {id}")).await;
    assert!(!r.ok && r.text.contains("approval timed out"), "{}", r.text);
}

#[tokio::test]
async fn deny_and_cancel() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(WEB, "ticket#1").await;
    let r = app.run("dev1", &format!("deny {id}")).await;
    assert!(!r.ok && r.text.contains("cancel"), "{}", r.text);
    let r = app
        .run("lead2", &format!("deny {id} use the runbook"))
        .await;
    assert!(r.ok);
    assert!(app
        .surface
        .directs("dev1")
        .iter()
        .any(|d| d.contains("denied by lead2: use the runbook")));
    let card = app.surface.card(id).unwrap();
    assert!(card.status.contains("denied by lead2"));
    assert!(card.actions.is_empty());

    let id2 = app.new_request(WEB, "ticket#2").await;
    assert!(!app.run("lead1", &format!("cancel {id2}")).await.ok);
    assert!(app.run("dev1", &format!("cancel {id2}")).await.ok);
    assert_eq!(app.request(id2).await.state, RequestState::Cancelled);
    // No timer is left behind for closed requests.
    app.advance(Span::from_hours(2)).await;
    assert_eq!(app.count(id2, "approval_timed_out").await, 0);
}

#[tokio::test]
async fn partial_provisioning_failure_keeps_the_rest_active() {
    let (app, _dir) = TestApp::spawn().await;
    app.provisioner.fail_grants_on(DB1);
    let id = app.new_request(&format!("{WEB} {DB1}"), "ticket#1").await;
    assert!(app.run("lead1", &format!("approve {id}")).await.ok);
    let req = app.request(id).await;
    assert_eq!(req.state, RequestState::Active);
    let states: Vec<GrantState> = req.grants.iter().map(|g| g.state).collect();
    assert_eq!(states, [GrantState::Active, GrantState::Failed]);
    let thread = app.surface.threads(id).join("\n");
    assert!(
        thread.contains("1 of 2") && thread.contains("useradd: exit status 1"),
        "{thread}"
    );
}

#[tokio::test]
async fn total_provisioning_failure_fails_and_leaves_nothing_behind() {
    let (app, _dir) = TestApp::spawn().await;
    app.provisioner.fail_grants_on(WEB);
    let id = app.active_request("1h").await;
    let req = app.request(id).await;
    assert_eq!(req.state, RequestState::Failed);
    assert!(req.grants.iter().all(|g| g.state == GrantState::Removed));
    assert_eq!(
        app.provisioner.revokes().len(),
        1,
        "a half-created user is removed"
    );
}

#[tokio::test]
async fn failing_removal_is_retried_until_it_succeeds_and_people_are_told() {
    let (app, _dir) = TestApp::spawn().await;
    app.provisioner.fail_revokes_on(WEB, 4);
    let id = app.active_request("1h").await;
    assert!(app.run("dev1", &format!("complete {id}")).await.ok);
    let req = app.request(id).await;
    assert_eq!(req.grants[0].state, GrantState::RemovalFailed);
    assert!(app
        .surface
        .card(id)
        .unwrap()
        .status
        .contains("removal failing"));
    for _ in 0..6 {
        app.advance(mins(10)).await;
    }
    assert_eq!(app.provisioner.revokes().len(), 5);
    assert_eq!(app.request(id).await.grants[0].state, GrantState::Removed);
    assert!(app
        .surface
        .audits()
        .iter()
        .any(|a| a.contains("still present") && a.contains("web-1")));
    assert!(
        app.surface
            .directs("lead1")
            .iter()
            .any(|d| d.contains("still present")),
        "the approver is told"
    );
}

#[tokio::test]
async fn an_unreachable_control_plane_is_retried() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(WEB, "ticket#1").await;
    *app.provisioner.unavailable.lock().unwrap() = true;
    assert!(app.run("lead1", &format!("approve {id}")).await.ok);
    assert_eq!(app.request(id).await.state, RequestState::Provisioning);
    *app.provisioner.unavailable.lock().unwrap() = false;
    app.advance(mins(1)).await;
    assert_eq!(app.request(id).await.state, RequestState::Active);
}

#[tokio::test]
async fn bad_input_gets_one_line_and_writes_nothing() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(WEB, "ticket#1").await;
    let before = app.store.audit_events(None, None).await.unwrap().len();
    for (line, expect) in [
        ("approve AR-99", "AR-99 does not exist"),
        ("request i-123 ticket#1", "invalid instance id"),
        (
            "request i-0123456789abcdef0 2hrs ticket#1",
            "unknown duration \"2hrs\"",
        ),
        ("extend AR-1 forever", "unknown duration"),
        ("complete AR-1", "cannot complete AR-1"),
        ("show AR-x", "invalid request id"),
        ("launch the missiles", "unknown command"),
    ] {
        let r = app.run("dev1", line).await;
        assert!(!r.ok, "{line}");
        assert!(r.text.contains(expect), "{line}: {}", r.text);
        assert!(!r.text.contains('\n'), "one line: {}", r.text);
    }
    assert_eq!(
        app.store.audit_events(None, None).await.unwrap().len(),
        before
    );
    assert_eq!(app.request(id).await.state, RequestState::Pending);
}

#[tokio::test]
async fn show_and_audit_are_for_the_people_involved() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.active_request("1h").await;
    let r = app.run("dev1", &format!("show {id}")).await;
    assert!(
        r.ok && r.text.contains("pp-dev1-1") && r.text.contains("web-1"),
        "{}",
        r.text
    );
    let r = app.run("lead1", &format!("audit {id}")).await;
    assert!(r.ok && r.text.contains("approved by lead1"), "{}", r.text);
    let r = app.run("mallory", &format!("audit {id}")).await;
    assert!(!r.ok, "{}", r.text);
    let r = app.run("dev1", "list mine").await;
    assert!(r.ok && r.text.contains(&id.to_string()), "{}", r.text);
}

#[tokio::test]
async fn overlapping_requests_get_their_own_users() {
    let (app, _dir) = TestApp::spawn().await;
    let a = app.active_request("1h").await;
    let b = app.active_request("2h").await;
    let users: Vec<String> = app
        .provisioner
        .grants()
        .into_iter()
        .map(|g| g.username)
        .collect();
    assert_eq!(users, ["pp-dev1-1", "pp-dev1-2"]);
    app.advance(Span::from_hours(1)).await;
    assert_eq!(app.request(a).await.state, RequestState::Expired);
    assert_eq!(
        app.request(b).await.state,
        RequestState::Active,
        "expiry of one never cuts off the other"
    );
    assert_eq!(app.provisioner.revokes()[0].username, "pp-dev1-1");
}

#[tokio::test]
async fn rate_limited_notices_are_retried_in_order() {
    let (app, _dir) = TestApp::spawn().await;
    app.surface.fail_next(vec![
        ChatError::RateLimited {
            retry_after_ms: 3000,
        },
        ChatError::RateLimited {
            retry_after_ms: 3000,
        },
        ChatError::Transient("connection reset".into()),
    ]);
    let id = app.active_request("1h").await;
    assert!(
        app.surface.card(id).is_none(),
        "nothing delivered while rate limited"
    );
    for _ in 0..10 {
        app.advance(Span::from_secs(3)).await;
    }
    let all = app.surface.all();
    // Nothing lost: the card first, then its thread in order.
    assert!(matches!(
        all.iter()
            .find(|p| !matches!(p, Posted::Audit(_) | Posted::Direct(..))),
        Some(Posted::Card(_))
    ));
    let thread = app.surface.threads(id);
    assert!(
        thread[0].contains("approved by lead1") && thread[1].contains("Provisioned"),
        "{thread:?}"
    );
    let counts = app.store.outbox_counts().await.unwrap();
    assert_eq!(counts.pending, 0);
    assert_eq!(counts.dead, 0);
}

#[tokio::test]
async fn a_restart_between_commit_and_delivery_delivers_once() {
    // First life: the command commits, but the process stops before delivering anything.
    let (first, _dir) = TestApp::spawn().await;
    let id = first.request_unsettled(WEB, "ticket#5 crash test").await;
    assert!(first.surface.all().is_empty());
    // Second life: the notices go out once.
    let surface = Arc::new(RecordingSurface::default());
    let second = first.restart(Span::ZERO, surface.clone()).await;
    second.settle().await;
    let delivered = surface.all();
    assert_eq!(
        delivered
            .iter()
            .filter(|p| matches!(p, Posted::Card(_)))
            .count(),
        1
    );
    assert_eq!(
        delivered
            .iter()
            .filter(|p| matches!(p, Posted::Audit(_)))
            .count(),
        1
    );
    second.dispatcher.deliver_due().await.unwrap();
    assert_eq!(surface.all().len(), delivered.len(), "nothing twice");
    // Third life: still nothing twice, and the request goes on.
    let surface = Arc::new(RecordingSurface::default());
    let third = second.restart(Span::ZERO, surface.clone()).await;
    third.settle().await;
    assert!(surface.all().is_empty());
    assert!(third.run("lead1", &format!("approve {id}")).await.ok);
    assert_eq!(third.request(id).await.state, RequestState::Active);
}

#[tokio::test]
async fn a_restart_fires_overdue_timers_at_once() {
    let (first, _dir) = TestApp::spawn().await;
    let id = first.active_request("1h").await;
    // Down for three hours, across the expiry.
    let surface = Arc::new(RecordingSurface::default());
    let second = first.restart(Span::from_hours(3), surface).await;
    second.settle().await;
    let req = second.request(id).await;
    assert_eq!(req.state, RequestState::Expired);
    assert_eq!(second.provisioner.revokes().len(), 1);
    assert_eq!(
        second.count(id, "expiry_warning").await,
        0,
        "no warning for an expiry already past"
    );
}

#[tokio::test]
async fn the_logbook_chain_verifies_after_a_busy_round() {
    let (app, _dir) = TestApp::spawn().await;
    for _ in 0..5 {
        let id = app.active_request("1h").await;
        app.run("dev1", &format!("complete {id}")).await;
    }
    match app.store.verify_logbook().await.unwrap() {
        passport::app::ports::Verification::Intact { events, .. } => {
            assert_eq!(events, 35, "seven events per round")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_requester_with_too_many_pending_requests_is_refused() {
    let (app, _dir) = TestApp::spawn().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.new_request(WEB, &format!("1h ticket#{n} work")).await);
    }
    let sixth = app
        .run("dev1", &format!("request {WEB} 1h ticket#6 more"))
        .await;
    assert!(!sixth.ok);
    assert!(
        sixth.text.contains("already have 5 requests waiting"),
        "{}",
        sixth.text
    );
    // Someone else is not held back by dev1's queue.
    let other = app
        .run("dev2", &format!("request {WEB} 1h ticket#7 mine"))
        .await;
    assert!(other.ok, "{}", other.text);
    // A decision frees a place.
    assert!(app.run("dev1", &format!("cancel {}", ids[0])).await.ok);
    assert!(
        app.run("dev1", &format!("request {WEB} 1h ticket#8 now"))
            .await
            .ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_from_one_person_never_pass_the_pending_cap() {
    let (app, _dir) = TestApp::spawn().await;
    // Twelve requests at once: every one of them passes any check made before
    // the store's transaction, so only the check inside it can hold the cap.
    let sends = (0..12).map(|n| {
        let engine = app.engine.clone();
        tokio::spawn(async move {
            engine
                .handle_line(
                    &TestApp::actor("dev1"),
                    &format!("request {WEB} 1h ticket#{n} work"),
                    None,
                )
                .await
        })
    });
    let replies: Vec<_> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    app.settle().await;
    let accepted = replies.iter().filter(|r| r.ok).count();
    assert_eq!(accepted, 5, "{replies:#?}");
    for refused in replies.iter().filter(|r| !r.ok) {
        assert!(
            refused.text.contains("already have 5 requests waiting"),
            "{}",
            refused.text
        );
    }
    assert_eq!(
        app.store
            .pending_count(
                &passport::domain::values::UserId::parse("dev1").unwrap(),
                100
            )
            .await
            .unwrap(),
        5
    );
}

#[tokio::test]
async fn one_person_sending_too_many_commands_is_slowed_down() {
    let (app, _dir) = TestApp::spawn().await;
    for _ in 0..60 {
        let r = app.run("dev1", "cancel AR-999").await;
        assert!(!r.text.contains("slow down"), "{}", r.text);
    }
    let r = app.run("dev1", "cancel AR-999").await;
    assert!(
        !r.ok && r.text.contains("slow down: at most 60 commands a minute"),
        "{}",
        r.text
    );
    // Reading is never limited, and others are not affected.
    assert!(app.run("dev1", "list").await.ok);
    assert!(!app
        .run("dev2", "cancel AR-999")
        .await
        .text
        .contains("slow down"));
    app.advance(Span::from_minutes(1)).await;
    assert!(!app
        .run("dev1", "cancel AR-999")
        .await
        .text
        .contains("slow down"));
}
