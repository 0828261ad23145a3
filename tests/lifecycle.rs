//! Lifecycle beyond the basic round: extensions that need an approver, retry
//! of failed instances, reconciliation, the digest and checkpoints, scheduled
//! jobs, the scheduler lease, and crashes at every step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use passport::adapters::clock::ManualClock;
use passport::app::jobs::{Job, JobKind, Jobs};
use passport::app::ports::Store;
use passport::domain::logbook::Checkpoint;
use passport::domain::request::{GrantState, RequestState};
use passport::domain::time::{Span, Timestamp};
use passport::domain::values::InstanceId;
use passport::scheduler::{Scheduler, LEASE_TTL};

fn mins(m: i64) -> Span {
    Span::from_minutes(m)
}

/// A prod request (2 approvals from sre-leads, extensions past 1h need an approver), active.
async fn active_prod(app: &TestApp, duration: &str) -> passport::domain::values::RequestId {
    let id = app
        .new_request(PROD, &format!("{duration} INC-1 outage"))
        .await;
    assert!(app.run("sre1", &format!("approve {id}")).await.ok);
    assert!(app.run("sre2", &format!("approve {id}")).await.ok);
    assert_eq!(app.request(id).await.state, RequestState::Active);
    id
}

#[tokio::test]
async fn extensions_past_the_threshold_wait_for_an_approver() {
    let (app, _dir) = TestApp::spawn().await;
    let id = active_prod(&app, "1h").await;
    let first_expiry = app.request(id).await.expires_at.unwrap();
    // Within the threshold: at once.
    let r = app.run_in_thread("dev1", id, "extend 30m").await;
    assert!(r.ok && r.text.contains("extended by 30m"), "{}", r.text);
    // Past it (30m + 1h > 1h): waits, and the thread asks the approvers.
    let r = app.run_in_thread("dev1", id, "extend 1h").await;
    assert!(
        r.ok && r.text.contains("waiting for an approver"),
        "{}",
        r.text
    );
    let req = app.request(id).await;
    assert_eq!(
        req.expires_at,
        Some(first_expiry.plus(mins(30))),
        "nothing moves before approval"
    );
    let ask = app
        .surface
        .all()
        .into_iter()
        .rev()
        .find_map(|p| match p {
            Posted::Thread(_, text, actions) if text.contains("asks to extend") => Some(actions),
            _ => None,
        })
        .unwrap();
    // The button names the extension it was shown for.
    assert_eq!(ask[0].command, format!("approve {id} @extension-1"));
    assert_eq!(ask[1].command, format!("deny {id} @extension-1"));
    let r = app.run_in_thread("dev1", id, "extend 10m").await;
    assert!(!r.ok && r.text.contains("already waiting"), "{}", r.text);
    let r = app.run_in_thread("dev1", id, "approve").await;
    assert!(!r.ok && r.text.contains("your own extension"), "{}", r.text);
    let r = app.run_in_thread("lead1", id, "approve").await;
    assert!(!r.ok, "only the request's approvers: {}", r.text);
    let grants_before = app.provisioner.grants().len();
    // prod needs 2 sre-leads, and so does an extension past its threshold.
    let r = app.run_in_thread("sre1", id, "approve").await;
    assert!(
        r.ok && r.text.contains("still needs 1 more approval"),
        "{}",
        r.text
    );
    assert_eq!(
        app.request(id).await.expires_at,
        Some(first_expiry.plus(mins(30)))
    );
    let r = app.run_in_thread("sre1", id, &ask[0].command).await;
    assert!(!r.ok && r.text.contains("already approved"), "{}", r.text);
    let r = app.run_in_thread("sre3", id, &ask[0].command).await;
    assert!(r.ok, "{}", r.text);
    assert_eq!(
        app.request(id).await.expires_at,
        Some(first_expiry.plus(mins(90)))
    );
    assert_eq!(
        app.provisioner.grants().len(),
        grants_before + 1,
        "on-instance expiry moved"
    );
    assert!(app
        .surface
        .directs("dev1")
        .iter()
        .any(|d| d.contains("extension of") && d.contains("approved by sre3")));
    assert_eq!(app.count(id, "extension_requested").await, 1);
    assert_eq!(app.count(id, "extension_approval_recorded").await, 1);
}

#[tokio::test]
async fn an_old_extension_button_cannot_approve_a_later_extension() {
    let (app, _dir) = TestApp::spawn().await;
    let id = active_prod(&app, "1h").await;
    assert!(app.run_in_thread("dev1", id, "extend 90m").await.ok);
    let old = app
        .surface
        .all()
        .into_iter()
        .find_map(|p| match p {
            Posted::Thread(_, text, actions) if text.contains("asks to extend by 1h30m") => {
                Some(actions[0].command.clone())
            }
            _ => None,
        })
        .unwrap();
    assert!(app.run_in_thread("sre1", id, "deny not now").await.ok);
    assert!(app.run_in_thread("dev1", id, "extend 3h").await.ok);
    let expiry = app.request(id).await.expires_at;
    // A click on the +1h30m prompt's button is refused while +3h waits.
    for approver in ["sre2", "sre3"] {
        let r = app.run_in_thread(approver, id, &old).await;
        assert!(!r.ok, "{}", r.text);
        assert!(r.text.contains("this prompt is out of date"), "{}", r.text);
        assert!(
            r.text.contains("the current one is the extension by 3h"),
            "{}",
            r.text
        );
    }
    assert_eq!(app.request(id).await.expires_at, expiry);
    assert!(app
        .request(id)
        .await
        .pending_extension
        .unwrap()
        .approvals
        .is_empty());
    // Without anything pending, the old button says so too.
    assert!(app.run_in_thread("sre1", id, "deny no").await.ok);
    let r = app.run_in_thread("sre2", id, &old).await;
    assert!(!r.ok && r.text.contains("no longer waiting"), "{}", r.text);
}

/// The buttons under each "asks to extend" prompt of `id`, oldest first.
fn extension_prompts(app: &TestApp) -> Vec<Vec<passport::domain::notice::Action>> {
    app.surface
        .all()
        .into_iter()
        .filter_map(|p| match p {
            Posted::Thread(_, text, actions) if text.contains("asks to extend") => Some(actions),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_old_prompt_cannot_decide_a_later_extension_of_the_same_length() {
    let (app, _dir) = TestApp::spawn().await;
    let id = active_prod(&app, "1h").await;
    assert!(app.run_in_thread("dev1", id, "extend 2h").await.ok);
    assert!(app.run_in_thread("sre1", id, "deny not yet").await.ok);
    assert!(app.run_in_thread("dev1", id, "extend 2h").await.ok);
    let prompts = extension_prompts(&app);
    assert_eq!(prompts.len(), 2);
    let expiry = app.request(id).await.expires_at;
    // Approve and Deny under the first +2h prompt act on nothing.
    for (who, button) in [("sre2", &prompts[0][0]), ("sre3", &prompts[0][1])] {
        let r = app.run_in_thread(who, id, &button.command).await;
        assert!(!r.ok, "{}: {}", button.command, r.text);
        assert!(
            r.text
                .contains("this prompt is out of date: it was for extension 1 of"),
            "{}",
            r.text
        );
        assert!(r.text.contains("the current one is the extension by 2h"));
    }
    let req = app.request(id).await;
    assert_eq!(req.expires_at, expiry);
    let pending = req.pending_extension.unwrap();
    assert_eq!(pending.seq, 2);
    assert!(pending.approvals.is_empty(), "the stale click counted");
    // The current prompt's buttons work.
    assert!(
        app.run_in_thread("sre2", id, &prompts[1][0].command)
            .await
            .ok
    );
    assert!(
        app.run_in_thread("sre3", id, &prompts[1][0].command)
            .await
            .ok
    );
    assert!(app.request(id).await.pending_extension.is_none());
    assert_eq!(
        app.request(id).await.expires_at,
        expiry.map(|e| e.plus(Span::from_hours(2)))
    );
}

#[tokio::test]
async fn the_cards_buttons_cannot_decide_an_extension() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(PROD, "1h INC-1 outage").await;
    app.settle().await;
    // The card as first posted, with Approve and Deny, before anyone clicked.
    let card = app
        .surface
        .all()
        .into_iter()
        .find_map(|p| match p {
            Posted::Card(c) if c.request == id => Some(c),
            _ => None,
        })
        .unwrap();
    assert_eq!(card.actions[0].command, format!("approve {id} @request"));
    assert_eq!(card.actions[1].command, format!("deny {id} @request"));
    assert!(app.run("sre1", &card.actions[0].command).await.ok);
    assert!(app.run("sre2", &card.actions[0].command).await.ok);
    assert_eq!(app.request(id).await.state, RequestState::Active);
    assert!(app.run_in_thread("dev1", id, "extend 2h").await.ok);
    // A card that was never refreshed still shows Approve and Deny.
    for (who, button) in [("sre3", &card.actions[0]), ("sre3", &card.actions[1])] {
        let r = app.run(who, &button.command).await;
        assert!(!r.ok, "{}: {}", button.command, r.text);
        assert!(
            r.text.contains(&format!(
                "this prompt is out of date: it was for the approval of {id} itself"
            )),
            "{}",
            r.text
        );
    }
    let pending = app.request(id).await.pending_extension.unwrap();
    assert!(pending.approvals.is_empty());
}

#[tokio::test]
async fn one_approver_of_a_weaker_rule_cannot_approve_a_guarded_extension() {
    // A request on prod (2 sre-leads, extensions past 1h need them again) and a
    // plain instance (1 approver): the plain rule's approver alone is not enough.
    let (app, _dir) = TestApp::spawn().await;
    let id = app
        .new_request(&format!("{PROD},{WEB}"), "1h INC-2 both")
        .await;
    for who in ["sre1", "sre2", "lead1"] {
        let r = app.run(who, &format!("approve {id}")).await;
        assert!(r.ok, "{who}: {}", r.text);
    }
    assert_eq!(app.request(id).await.state, RequestState::Active);
    assert!(app.run_in_thread("dev1", id, "extend 2h").await.ok);
    let r = app.run_in_thread("lead1", id, "approve").await;
    assert!(!r.ok, "{}", r.text);
    assert!(
        r.text.contains("not an approver for the extension"),
        "{}",
        r.text
    );
    assert!(app.run_in_thread("sre1", id, "approve").await.ok);
    assert!(app.request(id).await.pending_extension.is_some());
    assert!(app.run_in_thread("sre2", id, "approve").await.ok);
    assert!(app.request(id).await.pending_extension.is_none());
}

#[tokio::test]
async fn a_denied_extension_keeps_the_expiry() {
    let (app, _dir) = TestApp::spawn().await;
    let id = active_prod(&app, "1h").await;
    let expiry = app.request(id).await.expires_at;
    assert!(app.run_in_thread("dev1", id, "extend 2h").await.ok);
    let r = app
        .run_in_thread("sre1", id, "deny not during the freeze")
        .await;
    assert!(r.ok, "{}", r.text);
    let req = app.request(id).await;
    assert_eq!(req.expires_at, expiry);
    assert!(req.pending_extension.is_none());
    assert_eq!(
        req.state,
        RequestState::Active,
        "denying an extension does not end access"
    );
    // The request still expires on time.
    app.advance(Span::from_hours(1)).await;
    assert_eq!(app.request(id).await.state, RequestState::Expired);
}

#[tokio::test]
async fn failed_instances_can_be_retried() {
    let (app, _dir) = TestApp::spawn().await;
    let db1 = InstanceId::parse(DB1).unwrap();
    app.provisioner
        .fail_grant
        .lock()
        .unwrap()
        .insert(db1.clone());
    let id = app
        .new_request(&format!("{WEB},{DB1}"), "2h ticket#1")
        .await;
    assert!(app.run("lead1", &format!("approve {id}")).await.ok);
    let thread = app.surface.all().into_iter().find_map(|p| match p {
        Posted::Thread(_, text, actions) if text.contains("1 of 2") => Some(actions),
        _ => None,
    });
    assert_eq!(thread.unwrap()[0].command, format!("retry {id}"));
    let expiry = app.request(id).await.expires_at;
    app.provisioner.fail_grant.lock().unwrap().clear();
    app.advance(mins(10)).await;
    let r = app.run_in_thread("dev1", id, "retry").await;
    assert!(r.ok, "{}", r.text);
    let req = app.request(id).await;
    assert!(req.grants.iter().all(|g| g.state == GrantState::Active));
    assert_eq!(req.expires_at, expiry, "a retry does not restart the clock");
    let last = app.provisioner.grants().last().cloned().unwrap();
    assert_eq!(last.instance, db1);
    let r = app.run_in_thread("dev1", id, "retry").await;
    assert!(!r.ok && r.text.contains("no failed instance"), "{}", r.text);
    app.advance(Span::from_hours(2)).await;
    assert_eq!(
        app.provisioner.revokes().len(),
        2,
        "both users removed at expiry"
    );
}

#[tokio::test]
async fn reconciliation_finds_and_removes_a_leftover_user() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.active_request("1h").await;
    assert!(app.run("dev1", &format!("complete {id}")).await.ok);
    // The instance came back from a snapshot with the user still there: the next removal fails once.
    app.provisioner.fail_revokes_on(WEB, 2);
    let report = app.engine.reconcile().await.unwrap();
    assert_eq!(report.leftovers, 1);
    app.settle().await;
    assert_eq!(
        app.request(id).await.grants[0].state,
        GrantState::RemovalFailed
    );
    assert!(app
        .surface
        .audits()
        .iter()
        .any(|a| a.contains("may still hold a user")));
    app.advance(mins(1)).await;
    assert_eq!(app.request(id).await.grants[0].state, GrantState::Removed);
    let report = app.engine.reconcile().await.unwrap();
    assert_eq!(report.verified, 1);
    app.settle().await;
    assert!(app.request(id).await.removal_verified);
    // Verified requests are not checked again.
    let revokes = app.provisioner.revokes().len();
    assert_eq!(app.engine.reconcile().await.unwrap(), Default::default());
    assert_eq!(app.provisioner.revokes().len(), revokes);
    // Each pass lets the provisioner forget its records of work finished over a week ago.
    let forgotten = app.provisioner.forgotten_before.lock().unwrap().clone();
    assert_eq!(forgotten.len(), 3);
    assert_eq!(
        app.engine.now().since(*forgotten.last().unwrap()),
        passport::app::jobs::PROVISIONER_RECORDS_KEPT
    );
}

#[tokio::test]
async fn reconciliation_reschedules_a_lost_removal_job() {
    let (app, _dir) = TestApp::spawn().await;
    app.provisioner.fail_revokes_on(WEB, 1);
    let id = app.active_request("1h").await;
    assert!(app.run("dev1", &format!("complete {id}")).await.ok);
    assert_eq!(
        app.request(id).await.grants[0].state,
        GrantState::RemovalFailed
    );
    // Lose the retry job, as a bug or a manual edit might.
    let out = std::process::Command::new("sqlite3")
        .arg(&app.db)
        .arg("DELETE FROM timers;")
        .output()
        .unwrap();
    assert!(out.status.success());
    let report = app.engine.reconcile().await.unwrap();
    assert_eq!(report.removals_rescheduled, 1);
    app.settle().await;
    assert_eq!(app.request(id).await.grants[0].state, GrantState::Removed);
}

#[tokio::test]
async fn the_digest_lists_active_failed_and_failing() {
    let (app, _dir) = TestApp::spawn().await;
    let active = app.active_request("2h").await;
    app.provisioner.fail_grants_on(DB1);
    let failed = app.new_request(DB1, "ticket#2").await;
    assert!(app.run("lead1", &format!("approve {failed}")).await.ok);
    app.engine.digest().await.unwrap();
    app.settle().await;
    let digest = app
        .surface
        .audits()
        .into_iter()
        .find(|a| a.contains("Passport digest"))
        .unwrap();
    assert!(digest.contains("1 active, 1 failed"), "{digest}");
    assert!(digest.contains(&format!("{active} dev1")), "{digest}");
    assert!(digest.contains(&format!("{failed} failed")), "{digest}");
}

#[tokio::test]
async fn checkpoints_post_the_logbook_head() {
    let (app, _dir) = TestApp::spawn().await;
    app.active_request("1h").await;
    app.engine.checkpoint().await.unwrap();
    app.settle().await;
    let (seq, hash) = app.store.logbook_head().await.unwrap().unwrap();
    let line = app
        .surface
        .audits()
        .into_iter()
        .find(|a| a.contains("checkpoint"))
        .unwrap();
    assert!(
        line.contains(&format!("--checkpoint {seq}:{hash}")),
        "{line}"
    );
}

#[tokio::test]
async fn checkpoints_are_appended_to_the_checkpoint_file_too() {
    let (app, dir) = TestApp::spawn().await;
    let file = dir.path().join("checkpoints.log");
    let app = app.with_checkpoint_file(&file);
    app.active_request("1h").await;
    app.engine.checkpoint().await.unwrap();
    let (first_seq, first_hash) = app.store.logbook_head().await.unwrap().unwrap();
    app.advance(mins(10)).await;
    app.engine.checkpoint().await.unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<_> = text
        .lines()
        .map(|l| Checkpoint::parse(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "one line per checkpoint, appended: {text}");
    assert_eq!(
        (lines[0].at, lines[0].seq, lines[0].hash()),
        (Timestamp::from_millis(T0), first_seq, first_hash.as_str())
    );
    assert_eq!(lines[1].at, Timestamp::from_millis(T0).plus(mins(10)));
    let (seq, hash) = app.store.logbook_head().await.unwrap().unwrap();
    assert_eq!((lines[1].seq, lines[1].hash()), (seq, hash.as_str()));
}

#[tokio::test]
async fn a_checkpoint_file_that_cannot_be_written_holds_up_nothing() {
    let (app, dir) = TestApp::spawn().await;
    let app = app.with_checkpoint_file(&dir.path().join("missing-directory/checkpoints.log"));
    app.active_request("1h").await;
    app.engine.checkpoint().await.unwrap();
    app.settle().await;
    assert!(
        app.surface
            .audits()
            .iter()
            .any(|a| a.contains("Logbook checkpoint")),
        "the audit channel still has it"
    );
    // Nor the Logbook: changes are recorded as before.
    let before = app.store.logbook_head().await.unwrap().unwrap().0;
    app.new_request(DB1, "30m ticket#2 more work").await;
    assert!(app.store.logbook_head().await.unwrap().unwrap().0 > before);
}

#[tokio::test]
async fn jobs_run_on_their_cron_schedule() {
    let (mut app, _dir) = TestApp::spawn().await;
    app.clock
        .set(Timestamp::parse_rfc3339("2026-11-25T10:03:00Z").unwrap());
    app.jobs = Jobs {
        jobs: vec![
            Job::new(JobKind::Checkpoint, "0 0 * * * *").unwrap(),
            Job::new(JobKind::Digest, "0 0 8 * * *").unwrap(),
        ],
    };
    app.active_request("1h").await;
    let checkpoints = |app: &TestApp| {
        app.surface
            .audits()
            .iter()
            .filter(|a| a.contains("Logbook checkpoint"))
            .count()
    };
    assert_eq!(checkpoints(&app), 0, "the first run waits for its time");
    app.advance(mins(56)).await; // 10:59
    assert_eq!(checkpoints(&app), 0);
    app.advance(mins(1)).await; // 11:00
    assert_eq!(checkpoints(&app), 1);
    app.advance(mins(30)).await;
    assert_eq!(checkpoints(&app), 1, "once per hour");
    app.advance(Span::from_hours(2)).await; // 13:30, after a gap: one catch-up run, not two
    assert_eq!(checkpoints(&app), 2);
}

#[tokio::test]
async fn only_one_scheduler_runs_on_a_database() {
    let (app, _dir) = TestApp::spawn().await;
    let other = TestApp::open(
        &app.db,
        app.provisioner.clone(),
        app.clock.clone(),
        Arc::new(RecordingSurface::default()),
    )
    .await;
    let a = Scheduler::new(
        app.engine.clone(),
        Arc::new(passport::app::dispatch::Dispatcher::new(
            app.store.clone(),
            Arc::new(app.clock.clone()),
            vec![app.surface.clone()],
        )),
        Jobs::default(),
    );
    let b = Scheduler::new(
        other.engine.clone(),
        Arc::new(passport::app::dispatch::Dispatcher::new(
            other.store.clone(),
            Arc::new(other.clock.clone()),
            vec![other.surface.clone()],
        )),
        Jobs::default(),
    );
    assert_ne!(a.holder(), b.holder());
    assert!(a.hold_lease().await.unwrap());
    assert!(
        !b.hold_lease().await.unwrap(),
        "the second process stands by"
    );
    // b does nothing while a holds the lease.
    let id = app.new_request(WEB, "ticket#1").await;
    b.settle().await.unwrap();
    assert!(other.surface.all().is_empty());
    // a renews; b still waits.
    app.clock.advance(Span::from_secs(10));
    assert!(a.hold_lease().await.unwrap());
    app.clock.advance(Span::from_secs(10));
    assert!(!b.hold_lease().await.unwrap());
    // a dies without releasing: after the lease runs out, b takes over and works.
    app.clock.advance(LEASE_TTL);
    assert!(b.hold_lease().await.unwrap());
    assert!(!a.hold_lease().await.unwrap());
    assert!(other.run("lead1", &format!("approve {id}")).await.ok);
    b.settle().await.unwrap();
    assert_eq!(other.request(id).await.state, RequestState::Active);
    b.release().await;
    assert!(
        a.hold_lease().await.unwrap(),
        "a released lease is free at once"
    );
}

/// Every step of a lifecycle, with the process "killed" right after each
/// commit (nothing run, nothing delivered) and started again on the same
/// database: no grant is lost, the revocation happens exactly once, and every
/// notice arrives exactly once.
#[tokio::test]
async fn a_crash_after_any_step_loses_and_repeats_nothing() {
    let steps: &[&str] = &[
        "dev1: request i-0123456789abcdef0 1h ticket#7 crash",
        "lead1: approve AR-1",
        "+40m",
        "dev1 in AR-1: extend 30m",
        "+36m", // the 15-minute warning
        "+10m", // the 5-minute warning
        "+5m",  // expiry
    ];
    for crash_after in 0..steps.len() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("passport.db");
        let clock = ManualClock::new(Timestamp::from_millis(T0));
        let provisioner = Arc::new(fake_provisioner());
        let surface = Arc::new(RecordingSurface::default());
        let mut app = TestApp::open(&db, provisioner.clone(), clock.clone(), surface.clone()).await;
        for (i, step) in steps.iter().enumerate() {
            if let Some(by) = step.strip_prefix('+') {
                clock.advance(passport::domain::time::Span::parse(by).unwrap());
            } else {
                let (who, line) = step.split_once(": ").unwrap();
                let (user, thread) = match who.split_once(" in ") {
                    Some((u, t)) => (
                        u,
                        Some(passport::domain::values::RequestId::parse(t).unwrap()),
                    ),
                    None => (who, None),
                };
                let reply = app
                    .engine
                    .handle_line(&TestApp::actor(user), line, thread)
                    .await;
                assert!(reply.ok, "step {i}: {}", reply.text);
            }
            if i == crash_after {
                app.close().await;
                app = TestApp::open(&db, provisioner.clone(), clock.clone(), surface.clone()).await;
            }
            app.settle().await;
        }
        let id = ar(1);
        let req = app.request(id).await;
        assert_eq!(
            req.state,
            RequestState::Expired,
            "crash after step {crash_after}"
        );
        assert_eq!(
            req.expires_at,
            req.activated_at.map(|a| a.plus(Span::from_minutes(90)))
        );
        assert_eq!(
            provisioner.revokes().len(),
            1,
            "crash after step {crash_after}: one revocation"
        );
        assert!(!provisioner.grants().is_empty());
        let posted = surface.all();
        let cards = posted
            .iter()
            .filter(|p| matches!(p, Posted::Card(_)))
            .count();
        assert_eq!(cards, 1, "crash after step {crash_after}: one card");
        let mut audits = surface.audits();
        let total = audits.len();
        audits.dedup();
        assert_eq!(
            audits.len(),
            total,
            "crash after step {crash_after}: no audit line twice"
        );
        assert_eq!(
            total,
            app.events(id).await.len(),
            "crash after step {crash_after}: every event posted once"
        );
        let warnings = surface
            .threads(id)
            .iter()
            .filter(|t| t.contains("access ends"))
            .count();
        assert_eq!(warnings, 2, "crash after step {crash_after}");
        assert_eq!(app.store.outbox_counts().await.unwrap().pending, 0);
        app.close().await;
    }
}

#[tokio::test]
async fn a_timer_that_fails_is_put_off_rather_than_retried_at_once() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(WEB, "1h ticket#1 x").await;
    // The stored request can no longer be read, so its approval timeout fails.
    rusqlite::Connection::open(&app.db)
        .unwrap()
        .execute("UPDATE requests SET body = 'not json'", [])
        .unwrap();
    app.clock.advance(Span::from_hours(25));
    assert_eq!(app.engine.run_due().await.unwrap(), 1);
    // Put off by the backoff, not due again at once.
    assert_eq!(app.engine.run_due().await.unwrap(), 0);
    let next = app.engine.next_timer_due().await.unwrap().unwrap();
    assert!(next > app.engine.now(), "{next} for {id}");
}

/// Queues `n` audit lines, "line 0" onwards, in one commit.
async fn queue_audit_lines(app: &TestApp, n: usize) {
    use passport::app::effects::Effects;
    use passport::domain::notice::Notice;

    let mut fx = Effects::default();
    for i in 0..n {
        fx.notify(Notice::Audit {
            text: format!("line {i}"),
        });
    }
    fx.route(&["test".to_owned()], "");
    app.store.record(fx, app.engine.now()).await.unwrap();
}

/// The `n` lines of [`queue_audit_lines`] reached the audit channel once
/// each, in order.
fn assert_audit_lines_went_once_in_order(app: &TestApp, n: usize) {
    let lines: Vec<String> = app
        .surface
        .audits()
        .into_iter()
        .filter(|l| l.starts_with("line "))
        .collect();
    let expected: Vec<String> = (0..n).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, expected);
}

#[tokio::test]
async fn a_long_waiting_lane_does_not_hide_newer_notices() {
    use passport::app::ports::ChatError;

    let (app, _dir) = TestApp::spawn().await;
    // The audit channel rate-limits for a long while, with 2,100 lines waiting.
    queue_audit_lines(&app, 2100).await;
    app.surface.fail_next(vec![ChatError::RateLimited {
        retry_after_ms: 3_600_000,
    }]);
    app.dispatcher.deliver_due().await.unwrap();
    // A request made now still gets its card at once.
    let id = app.new_request(WEB, "1h ticket#1 x").await;
    app.dispatcher.deliver_due().await.unwrap();
    assert!(
        app.surface.card(id).is_some(),
        "the card waited behind the audit lane"
    );
}

/// A lane longer than one read goes on with its own next notices and takes
/// turns with the rest: one pass sends all of it, once each, in order.
#[tokio::test]
async fn a_long_lane_goes_out_in_order_across_its_reads() {
    let (app, _dir) = TestApp::spawn().await;
    queue_audit_lines(&app, 2_500).await;
    let id = app.new_request(WEB, "1h ticket#1 x").await;
    let report = app.dispatcher.deliver_due().await.unwrap();
    assert_eq!(report.retried + report.dead, 0, "{report:?}");
    assert_audit_lines_went_once_in_order(&app, 2_500);
    assert!(app.surface.card(id).is_some());
    assert_eq!(app.store.outbox_counts().await.unwrap().pending, 0);
}

/// A notice that fails in the middle of a lane: the ones sent before it
/// stay delivered (their deliveries are recorded before its retry is), it
/// waits for its retry, and the lane goes on from it: nothing twice,
/// nothing lost, nothing out of order.
#[tokio::test]
async fn a_lane_failing_midway_keeps_what_went_and_resumes_from_the_failure() {
    use passport::app::ports::ChatError;

    let (app, _dir) = TestApp::spawn().await;
    queue_audit_lines(&app, 5).await;
    app.surface
        .fail_after(3, vec![ChatError::Transient("gateway timeout".into())]);
    let report = app.dispatcher.deliver_due().await.unwrap();
    assert_eq!((report.delivered, report.retried), (3, 1), "{report:?}");
    assert_eq!(app.store.outbox_counts().await.unwrap().pending, 2);
    app.advance(Span::from_secs(2)).await;
    assert_audit_lines_went_once_in_order(&app, 5);
    assert_eq!(app.store.outbox_counts().await.unwrap().pending, 0);
}

/// Queues `lines` audit lines, starts a delivery pass through a
/// [`PacedAudit`] over `app`'s surface, and waits until the pass holds the
/// first of them.
async fn pass_holding_its_first_audit_line(
    app: &TestApp,
    lines: usize,
) -> (
    Arc<PacedAudit>,
    tokio::task::JoinHandle<
        Result<passport::app::dispatch::DeliveryReport, passport::app::ports::StoreError>,
    >,
) {
    let paced = Arc::new(PacedAudit::new(app.surface.clone()));
    let dispatcher = Arc::new(passport::app::dispatch::Dispatcher::new(
        app.store.clone(),
        Arc::new(app.clock.clone()),
        vec![paced.clone()],
    ));
    queue_audit_lines(app, lines).await;
    let pass = tokio::spawn(async move { dispatcher.deliver_due().await });
    paced.sending.notified().await;
    (paced, pass)
}

#[tokio::test]
async fn a_new_lane_starts_while_a_paced_lane_is_still_sending() {
    use std::time::Duration;

    let (app, _dir) = TestApp::spawn().await;
    let (paced, pass) = pass_holding_its_first_audit_line(&app, 3).await;
    // A request made while the audit channel is still sending its first line.
    let id = app.request_unsettled(WEB, "1h ticket#1 x").await;
    tokio::time::timeout(Duration::from_secs(10), paced.card_posted.notified())
        .await
        .expect("the card went out while the audit lane was still sending");
    assert!(app.surface.card(id).is_some());
    assert!(
        app.surface.audits().is_empty(),
        "the audit line is still held"
    );
    // Once the channel lets the lines go, the same pass delivers them too.
    paced.paced.add_permits(100);
    let report = pass.await.unwrap().unwrap();
    assert!(report.delivered >= 4, "{report:?}");
    let audits = app.surface.audits();
    assert!(audits.len() >= 4, "{audits:?}");
    assert_eq!(&audits[..3], ["line 0", "line 1", "line 2"], "in order");
}

/// A notice queued into a lane while that lane is sending goes in the same
/// pass. A read made while the lane ran skips it (one lane at a time), and
/// when the lane ended during that read, the pass waited for the next commit
/// instead of reading again: with none coming, the notice and every later
/// one waited for good (seen on two replicas after a takeover, where the
/// removal's notices stayed claimed and unsent). Many rounds, because the
/// lane must end while the read is under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_queued_into_a_sending_lane_goes_in_the_same_pass() {
    use passport::app::effects::Effects;
    use passport::domain::notice::Notice;
    use std::time::Duration;

    for round in 0..30 {
        let (app, _dir) = TestApp::spawn().await;
        let (paced, pass) = pass_holding_its_first_audit_line(&app, 1).await;
        let mut fx = Effects::default();
        fx.notify(Notice::Audit {
            text: "line 1".into(),
        });
        fx.route(&["test".to_owned()], "");
        app.store.record(fx, app.engine.now()).await.unwrap();
        paced.paced.add_permits(100);
        let report = tokio::time::timeout(Duration::from_secs(10), pass)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the pass never ended"))
            .unwrap()
            .unwrap();
        assert_eq!(report.delivered, 2, "round {round}: {report:?}");
        assert_audit_lines_went_once_in_order(&app, 2);
    }
}

/// Delivered notices are deleted by reconciliation once older than
/// `outbox_retention` (30 days by default); undelivered ones never are.
#[tokio::test]
async fn reconciliation_prunes_delivered_notices_past_their_retention() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.active_request("1h").await;
    assert!(app.run("dev1", &format!("complete {id}")).await.ok);
    app.settle().await;
    let delivered = app.store.outbox_counts().await.unwrap().delivered;
    assert!(delivered > 0);
    // Young notices stay.
    assert_eq!(app.engine.reconcile().await.unwrap().pruned, 0);
    app.advance(Span::from_hours(721)).await;
    let report = app.engine.reconcile().await.unwrap();
    assert_eq!(report.pruned, delivered);
    // What was delivered since (the day's digest) is young and stays.
    assert_eq!(app.engine.reconcile().await.unwrap().pruned, 0);
    // The Logbook keeps everything.
    assert!(app.store.verify_logbook().await.is_ok());
}

/// Signed chat requests are remembered until their signature window has
/// closed, then forgotten by reconciliation.
#[tokio::test]
async fn reconciliation_forgets_signed_requests_once_their_window_has_closed() {
    let (app, _dir) = TestApp::spawn().await;
    let now = app.engine.now();
    let until = now.plus(mins(10));
    assert!(app
        .store
        .first_signed("slack:trigger:1.2", until)
        .await
        .unwrap());
    assert!(!app
        .store
        .first_signed("slack:trigger:1.2", until)
        .await
        .unwrap());
    assert_eq!(app.engine.reconcile().await.unwrap().signed_forgotten, 0);
    app.advance(mins(11)).await;
    assert_eq!(app.engine.reconcile().await.unwrap().signed_forgotten, 1);
}

/// Waits (by yielding, not sleeping) until `n` grants hang at the fake's gate.
async fn until_grants_wait(app: &TestApp, n: usize) {
    use std::sync::atomic::Ordering;
    for _ in 0..100_000 {
        if app.provisioner.grants_waiting.load(Ordering::SeqCst) == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{n} grant(s) never reached the provisioner");
}

/// Runs passes until nothing more is due, without waiting for passes still running.
async fn run_until_quiet(app: &TestApp) {
    for _ in 0..20 {
        if app.engine.run_due().await.unwrap() == 0 {
            return;
        }
    }
    panic!("timers kept coming");
}

/// A dev request that approves itself, whose grant hangs at a gate as a stuck
/// SSM job would: the gate, the request, and the pass that waits on it.
async fn hanging_grant(
    app: &TestApp,
) -> (
    Arc<tokio::sync::Semaphore>,
    passport::domain::values::RequestId,
    tokio::task::JoinHandle<usize>,
) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *app.provisioner.grant_gate.lock().unwrap() = Some(gate.clone());
    let id = app.request_unsettled(DEV, "2h ticket#2 slow").await;
    let engine = app.engine.clone();
    let hanging = tokio::spawn(async move { engine.run_due().await.unwrap() });
    until_grants_wait(app, 1).await;
    (gate, id, hanging)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_grant_holds_up_no_other_requests_expiry_or_removal() {
    let (app, _dir) = TestApp::spawn().await;
    let early = app.active_request("1h").await;
    let (gate, slow, hanging) = hanging_grant(&app).await;

    // The first request's time runs out while that grant still hangs.
    app.clock.advance(mins(61));
    run_until_quiet(&app).await;
    assert_eq!(app.request(early).await.state, RequestState::Expired);
    assert!(
        app.provisioner.revokes().iter().any(|c| c.request == early),
        "the expired user is removed without waiting for another request's grant"
    );
    assert_eq!(app.request(slow).await.state, RequestState::Provisioning);

    gate.add_permits(1);
    assert_eq!(hanging.await.unwrap(), 1);
    assert_eq!(app.request(slow).await.state, RequestState::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_waits_for_the_grant_it_undoes() {
    let (app, _dir) = TestApp::spawn().await;
    let (gate, id, hanging) = hanging_grant(&app).await;

    // Revoked while the user is being created: the removal must not overtake
    // the grant, or the grant would leave the user behind.
    let reply = app
        .engine
        .handle_line(&TestApp::actor("boss"), &format!("revoke {id}"), None)
        .await;
    assert!(reply.ok, "{}", reply.text);
    run_until_quiet(&app).await;
    assert!(
        app.provisioner.revokes().is_empty(),
        "no removal while the grant runs"
    );

    gate.add_permits(1);
    hanging.await.unwrap();
    run_until_quiet(&app).await;
    let revokes = app.provisioner.revokes();
    assert_eq!(revokes.len(), 1, "{revokes:?}");
    assert_eq!(revokes[0].request, id);
    assert_eq!(app.request(id).await.state, RequestState::Revoked);
}

/// A database that fails while notices go out says nothing about the chat
/// platform: its breaker stays closed (answers outside the outbox would
/// otherwise be dropped as "the platform is failing"), and the notices go
/// out once the database is back.
#[tokio::test]
async fn a_store_failure_while_delivering_does_not_count_against_the_platform() {
    use passport::app::peers::BREAKER_THRESHOLD;

    let (app, _dir) = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..BREAKER_THRESHOLD + 2 {
        ids.push(
            app.new_request(WEB, &format!("1h ticket#{} x", i + 1))
                .await,
        );
    }
    app.dispatcher.deliver_due().await.unwrap();
    // A reply in each request's thread, whose card's place cannot be read:
    // its table is away.
    let mut fx = passport::app::effects::Effects::default();
    for &id in &ids {
        fx.notify(passport::domain::notice::Notice::thread(id, "later".into()));
    }
    fx.route(&["test".to_owned()], "");
    app.store.record(fx, app.engine.now()).await.unwrap();
    let side = rusqlite::Connection::open(&app.db).unwrap();
    side.execute_batch("ALTER TABLE chat_refs RENAME TO chat_refs_away")
        .unwrap();
    for _ in 0..=BREAKER_THRESHOLD {
        let _ = app.dispatcher.deliver_due().await;
    }
    assert!(
        !app.dispatcher.peers().is_open("test"),
        "the database's failures opened the chat platform's breaker"
    );
    side.execute_batch("ALTER TABLE chat_refs_away RENAME TO chat_refs")
        .unwrap();
    app.dispatcher.deliver_due().await.unwrap();
    for id in ids {
        assert!(
            app.surface.threads(id).iter().any(|text| text == "later"),
            "{id}: the reply did not go out"
        );
    }
}

/// A notice sent whose delivery the store could not record is recorded by
/// the next pass, not sent again.
#[tokio::test]
async fn a_delivery_the_store_failed_to_record_is_not_sent_again() {
    let (app, _dir) = TestApp::spawn().await;
    let id = app.new_request(WEB, "1h ticket#1 x").await;
    app.dispatcher.deliver_due().await.unwrap();
    let mut fx = passport::app::effects::Effects::default();
    fx.notify(passport::domain::notice::Notice::thread(id, "once".into()));
    fx.route(&["test".to_owned()], "");
    app.store.record(fx, app.engine.now()).await.unwrap();
    // Recording a delivery fails, after the platform took the notice.
    let side = rusqlite::Connection::open(&app.db).unwrap();
    side.execute_batch(
        "CREATE TRIGGER away BEFORE UPDATE OF delivered_at ON outbox \
         BEGIN SELECT RAISE(ABORT, 'the outbox is away'); END;",
    )
    .unwrap();
    assert!(app.dispatcher.deliver_due().await.is_err());
    let once = |app: &TestApp| {
        app.surface
            .threads(id)
            .iter()
            .filter(|text| *text == "once")
            .count()
    };
    assert_eq!(once(&app), 1);
    side.execute_batch("DROP TRIGGER away").unwrap();
    let report = app.dispatcher.deliver_due().await.unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");
    app.dispatcher.deliver_due().await.unwrap();
    assert_eq!(once(&app), 1, "the notice was sent again");
    assert_eq!(app.store.outbox_counts().await.unwrap().pending, 0);
}

#[tokio::test]
async fn a_card_whose_place_the_store_failed_to_save_is_not_posted_again() {
    let (app, _dir) = TestApp::spawn().await;
    // Saving a card's place fails, after the platform took the card.
    let side = rusqlite::Connection::open(&app.db).unwrap();
    side.execute_batch(
        "CREATE TRIGGER away BEFORE INSERT ON chat_refs \
         BEGIN SELECT RAISE(ABORT, 'chat_refs is away'); END;",
    )
    .unwrap();
    let id = app.request_unsettled(WEB, "1h ticket#1 x").await;
    assert!(app.dispatcher.deliver_due().await.is_err());
    let cards = |app: &TestApp| {
        app.surface
            .all()
            .iter()
            .filter(|p| matches!(p, Posted::Card(c) if c.request == id))
            .count()
    };
    assert_eq!(cards(&app), 1);
    side.execute_batch("DROP TRIGGER away").unwrap();
    app.dispatcher.deliver_due().await.unwrap();
    assert_eq!(cards(&app), 1, "the card was posted again");
    // Its place was kept: the request's next notice goes to its thread.
    let mut fx = passport::app::effects::Effects::default();
    fx.notify(passport::domain::notice::Notice::thread(
        id,
        "in the thread".into(),
    ));
    fx.route(&["test".to_owned()], "");
    app.store.record(fx, app.engine.now()).await.unwrap();
    app.dispatcher.deliver_due().await.unwrap();
    assert_eq!(app.surface.threads(id), ["in the thread"]);
    assert_eq!(cards(&app), 1);
    assert_eq!(app.store.outbox_counts().await.unwrap().pending, 0);
}

/// Only refusals count towards setting a notice aside: rate limits (the
/// platform asked to wait) and temporary failures (retried without limit)
/// do not. A notice rate-limited four times, failing four times, then
/// refused four times is still put back for a retry; its fifth refusal sets
/// it aside.
#[tokio::test]
async fn only_refusals_count_towards_setting_a_notice_aside() {
    use passport::app::ports::ChatError;

    let (app, _dir) = TestApp::spawn().await;
    queue_audit_lines(&app, 1).await;
    let missed = |e: ChatError| (0..4).map(move |_| e.clone());
    let before_the_last = missed(ChatError::RateLimited {
        retry_after_ms: 1_000,
    })
    .chain(missed(ChatError::Transient("HTTP 503".into())))
    .chain(missed(ChatError::Permanent("channel_not_found".into())));
    for (n, e) in before_the_last.enumerate() {
        app.surface.fail_next(vec![e.clone()]);
        let report = app.dispatcher.deliver_due().await.unwrap();
        assert_eq!(
            (report.retried, report.dead),
            (1, 0),
            "attempt {} ({e:?}): {report:?}",
            n + 1
        );
        // Past any backoff (at most five minutes).
        app.clock.advance(Span::from_minutes(10));
    }
    assert_eq!(app.store.outbox_counts().await.unwrap().dead, 0);
    app.surface
        .fail_next(vec![ChatError::Permanent("channel_not_found".into())]);
    let report = app.dispatcher.deliver_due().await.unwrap();
    assert_eq!((report.retried, report.dead), (0, 1), "{report:?}");
    let aside = app.store.set_aside(10).await.unwrap();
    assert_eq!(
        aside
            .iter()
            .map(|n| (n.attempts, n.refusals))
            .collect::<Vec<_>>(),
        vec![(9, 5)]
    );
}
