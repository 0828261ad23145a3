//! Timers and jobs: approval timeouts, expiry warnings, expiry, provisioning,
//! refreshing on-instance expiries after an extension, and removal with retries.
//!
//! Timers are rows. [`Engine::run_due`] runs everything due at the clock's
//! `now`, so tests drive time by hand and a restart fires overdue timers at once.

use std::collections::BTreeMap;

use serde_json::json;

use crate::domain::notice::Notice;
use crate::domain::request::{
    AccessRequest, GrantState, InstanceInfo, InstanceOutcome, RefusalKind, RequestState,
};
use crate::domain::time::{Span, Timestamp};
use crate::domain::values::{InstanceId, RequestId};

use super::effects::{Effects, NewTimer, Timer, TimerKind};
use super::engine::{end_access, schedule_expiry, summarise, Engine};
use super::messages;
use super::ports::{GrantSpec, ProvisionError, RevokeSpec, StoreError};
use super::retry::Backoff;

/// Provisioning is given up after this many attempts with the control plane unreachable.
const MAX_PROVISION_ATTEMPTS: u32 = 8;
/// After this many failed removals, people are told which instance still holds the user.
const REMOVAL_ALERT_AFTER: u32 = 3;
/// Grants sent at the same time; more wait for a slot.
pub(super) const CONCURRENT_GRANTS: usize = 64;
/// Removals sent at the same time, apart from the grants' slots.
pub(super) const CONCURRENT_REVOKES: usize = 64;

/// Retries of timers and jobs: exponential backoff from 30 s, capped at 10 minutes.
const TIMER_BACKOFF: Backoff = Backoff::new(Span::from_secs(30), Span::from_minutes(10));

pub fn backoff(attempts: u32) -> Span {
    TIMER_BACKOFF.after(attempts)
}

fn stale(id: RequestId, what: &str) -> RefusalKind {
    RefusalKind::WrongState(format!("{id}: {what}"))
}

/// The outcome of a provisioner call that failed as a whole: every instance failed, with its error.
fn all_failed(instances: &[InstanceInfo], error: &ProvisionError) -> Vec<InstanceOutcome> {
    instances
        .iter()
        .map(|i| InstanceOutcome {
            instance: i.id.clone(),
            ok: false,
            detail: Some(error.to_string()),
        })
        .collect()
}

/// A request whose timers a pass of `run_due` runs; free again when dropped,
/// also when a timer panics (a request left marked would never run again).
struct Busy<'a> {
    engine: &'a Engine,
    request: RequestId,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.engine
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.request);
        // Timers of this request that came due while it ran can go now.
        self.engine.wake.notify_waiters();
    }
}

impl Engine {
    /// Runs every timer due now and waits for them. Timers of one request run
    /// one after another, in due order, and never beside another pass's
    /// timers of that request; different requests run side by side, each on
    /// its own, so a slow grant delays no other request's expiry or removal.
    /// Requests another pass is still running are left to a later pass.
    /// Returns how many timers ran.
    pub async fn run_due(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let due = self.store.due_timers(now, 5000).await?;
        let mut by_request: BTreeMap<RequestId, Vec<Timer>> = BTreeMap::new();
        let chains: Vec<(Busy<'_>, Vec<Timer>)> = {
            let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
            for t in due.into_iter().filter(|t| !busy.contains(&t.request)) {
                by_request.entry(t.request).or_default().push(t);
            }
            by_request
                .into_iter()
                .map(|(request, timers)| {
                    busy.insert(request);
                    (
                        Busy {
                            engine: self,
                            request,
                        },
                        timers,
                    )
                })
                .collect()
        };
        let count = chains.iter().map(|(_, timers)| timers.len()).sum();
        futures::future::join_all(chains.into_iter().map(|(busy, timers)| async move {
            let _busy = busy;
            for t in timers {
                if let Err(e) = self.fire(&t).await {
                    // Not at once: a failure that repeats would spin the scheduler.
                    let again = self.clock.now().plus(backoff(t.attempts));
                    tracing::error!(request = %t.request, timer = t.kind.encode(), error = %e, retry_at = %again, "timer failed; it will run again");
                    if let Err(e) = self.store.reschedule_timer(t.id, again).await {
                        tracing::error!(request = %t.request, error = %e, "cannot put off a failed timer");
                    }
                }
            }
        }))
        .await;
        Ok(count)
    }

    /// When the next timer of a request not already running is due. Timers
    /// of running requests wait for them to finish, which wakes the scheduler.
    pub async fn next_timer_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let limit = u32::try_from(busy.len())
            .unwrap_or(u32::MAX)
            .saturating_mul(4)
            .saturating_add(1)
            .min(5000);
        let upcoming = self
            .store
            .due_timers(Timestamp::from_millis(i64::MAX), limit)
            .await?;
        let full = upcoming.len() >= limit as usize;
        Ok(
            match upcoming.into_iter().find(|t| !busy.contains(&t.request)) {
                Some(t) => Some(t.due),
                // Every timer looked at belongs to a running request: look again
                // shortly rather than reading the whole table.
                None if full => Some(self.clock.now().plus(Span::from_secs(1))),
                None => None,
            },
        )
    }

    async fn fire(&self, t: &Timer) -> Result<(), StoreError> {
        match t.kind {
            TimerKind::ApprovalTimeout => self.approval_timeout(t).await,
            TimerKind::Warning(before) => self.warn(t, before).await,
            TimerKind::Expiry => self.expire(t).await,
            TimerKind::Provision | TimerKind::Refresh => self.provision(t).await,
            TimerKind::Remove => self.remove(t).await,
            TimerKind::EndSessions => self.end_sessions_job(t).await,
        }
    }

    /// Applies a timer's change; a refusal only means the timer is stale.
    async fn apply<F>(&self, t: &Timer, f: F) -> Result<(), StoreError>
    where
        F: FnOnce(&mut AccessRequest, &mut Effects) -> Result<(), RefusalKind> + Send + 'static,
    {
        match self
            .store
            .update(t.request, Some(t.id), self.mutation(f))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(why)) => {
                tracing::debug!(request = %t.request, timer = t.kind.encode(), %why, "stale timer dropped");
                Ok(())
            }
            Err(StoreError::NotFound(_)) => self.store.delete_timer(t.id).await,
            Err(e) => Err(e),
        }
    }

    async fn approval_timeout(&self, t: &Timer) -> Result<(), StoreError> {
        let now = self.clock.now();
        let id = t.request;
        self.apply(t, move |req, fx| {
            req.time_out(now)?;
            let summary = format!("no decision before {}: the request timed out", req.approval_deadline);
            fx.log(now, "passport", Some(id), "approval_timed_out", summary.clone(), json!({}));
            fx.cancel_all = true;
            fx.notify(Notice::thread(id, format!("⌛ {summary}")));
            fx.notify(Notice::to_requester(
                req,
                format!("Your request {id} got no decision in time and has timed out. Ask again if you still need access."),
            ));
            Ok(())
        })
        .await
    }

    async fn warn(&self, t: &Timer, before: Span) -> Result<(), StoreError> {
        let now = self.clock.now();
        let id = t.request;
        let due = t.due;
        self.apply(t, move |req, fx| {
            let expires = match (req.state, req.expires_at) {
                (RequestState::Active, Some(e)) => e,
                _ => return Err(stale(id, "not active")),
            };
            // A warning for an expiry that an extension has moved is not sent.
            if now >= expires || expires.minus(before) > due.plus(Span::from_secs(1)) {
                return Err(stale(id, "warning no longer applies"));
            }
            let left = expires.since(now).to_nearest_minute();
            let summary = format!("access ends at {expires} (in {left})");
            fx.log(now, "passport", Some(id), "expiry_warning", summary.clone(), json!({ "expires_at": expires.to_string() }));
            let actions = messages::extend_complete(req);
            fx.notify(Notice::Thread { request: id, text: format!("⏰ {summary}: extend or complete"), actions: actions.clone() });
            fx.notify(Notice::Direct {
                user: req.requester.id.clone(),
                request: Some(id),
                text: format!("Your access {id} ends at {expires} (in {left}). Extend it, or complete it if you are done."),
                actions,
            });
            Ok(())
        })
        .await
    }

    async fn expire(&self, t: &Timer) -> Result<(), StoreError> {
        let now = self.clock.now();
        let id = t.request;
        self.apply(t, move |req, fx| {
            let to_remove = req.expire(now)?;
            let summary = format!(
                "access expired: removing `{}` from {} instance(s)",
                req.username,
                to_remove.len()
            );
            fx.log(
                now,
                "passport",
                Some(id),
                "expired",
                summary.clone(),
                json!({}),
            );
            end_access(req, fx, now, &to_remove);
            fx.notify(Notice::thread(id, format!("⌛ {summary}")));
            fx.notify(Notice::to_requester(
                req,
                format!(
                    "Your access {id} has expired; `{}` is being removed.",
                    req.username
                ),
            ));
            Ok(())
        })
        .await
    }

    async fn provision(&self, t: &Timer) -> Result<(), StoreError> {
        let Some(req) = self.store.get(t.request).await? else {
            return self.store.delete_timer(t.id).await;
        };
        let now = self.clock.now();
        let grace = self.settings.on_instance_grace;
        let (wanted, expires_at) = match t.kind {
            TimerKind::Provision if req.state == RequestState::Provisioning => (
                GrantState::Provisioning,
                now.plus(req.duration.span()).plus(grace),
            ),
            // A retry of failed instances while the others are active.
            TimerKind::Provision if req.state == RequestState::Active => match req.expires_at {
                Some(e) => (GrantState::Provisioning, e.plus(grace)),
                None => return self.store.delete_timer(t.id).await,
            },
            TimerKind::Refresh if req.state == RequestState::Active => match req.expires_at {
                Some(e) => (GrantState::Active, e.plus(grace)),
                None => return self.store.delete_timer(t.id).await,
            },
            _ => return self.store.delete_timer(t.id).await,
        };
        let was_active = req.state == RequestState::Active;
        let instances = req.instances_in(wanted);
        if instances.is_empty() {
            return self.store.delete_timer(t.id).await;
        }
        // With a CA, instances trust its keys and people log in with
        // certificates; without one, the registered key is installed.
        let (trusted_ca_keys, ssh_public_key) = match &self.certificates {
            Some(ca) => (ca.signer.trusted_keys(), None),
            None => (
                Vec::new(),
                self.store
                    .ssh_key(&req.requester.id)
                    .await?
                    .map(|k| k.as_str().to_owned()),
            ),
        };
        let spec = GrantSpec {
            request: req.id,
            username: req.username.clone(),
            instances,
            expires_at,
            sudo: req.requirement.sudo,
            ssh_public_key,
            trusted_ca_keys,
            port_forwarding: req.requirement.port_forwarding,
        };
        let granted = {
            let _slot = self.grant_slots.acquire().await;
            self.provisioner.grant(&spec).await
        };
        let outcomes = match granted {
            Ok(outcomes) => outcomes,
            Err(ProvisionError::Unavailable(e)) if t.attempts + 1 < MAX_PROVISION_ATTEMPTS => {
                tracing::warn!(request = %req.id, attempt = t.attempts + 1, error = %e, "provisioner unavailable; will retry");
                return self
                    .store
                    .reschedule_timer(t.id, now.plus(backoff(t.attempts)))
                    .await;
            }
            Err(e) => all_failed(&spec.instances, &e),
        };
        let id = req.id;
        let warnings = self.settings.warnings.clone();
        let certificates = self.certificates.is_some();
        // The access clock starts when the grant has come back, not when it was sent.
        let now = self.clock.now();
        let on_instance_until = expires_at;
        if t.kind == TimerKind::Refresh {
            return self
                .apply(t, move |req, fx| {
                    record_refresh(req, fx, &outcomes, now);
                    Ok(())
                })
                .await;
        }
        self.apply(t, move |req, fx| {
            let to_remove = req.record_provisioning(&outcomes, now)?;
            for o in &outcomes {
                Work::Grant.log(fx, req, o, now);
            }
            let report = messages::provisioning_report(req);
            match req.state {
                RequestState::Active if was_active => {
                    fx.notify(Notice::thread(id, format!("🔁 {report}")));
                    if outcomes.iter().any(|o| o.ok) {
                        fx.notify(Notice::Direct {
                            user: req.requester.id.clone(),
                            request: Some(id),
                            text: messages::connection_details(req, certificates),
                            actions: messages::certificate_action(req, certificates)
                                .into_iter()
                                .collect(),
                        });
                    }
                }
                RequestState::Active => {
                    let expires = req.expires_at.unwrap_or(now);
                    fx.log(
                        now,
                        "passport",
                        Some(id),
                        "active",
                        format!("access active until {expires}"),
                        json!({ "expires_at": expires.to_string() }),
                    );
                    schedule_expiry(fx, expires, now, &warnings);
                    if expires > on_instance_until.minus(Span::from_millis(grace.as_millis() / 2)) {
                        // Provisioning took so long that the on-instance expiry would come
                        // (nearly) before Passport's own: move it.
                        fx.schedule(TimerKind::Refresh, now);
                    }
                    let details = messages::connection_details(req, certificates);
                    let failed = req.grants.iter().any(|g| g.state == GrantState::Failed);
                    let retry_hint = if failed {
                        "\nFix the failed instances, then retry them."
                    } else {
                        ""
                    };
                    fx.notify(Notice::Thread {
                        request: id,
                        text: format!("🟢 {report}\n{details}{retry_hint}"),
                        actions: if failed {
                            vec![messages::retry_action(req)]
                        } else {
                            Vec::new()
                        },
                    });
                    fx.notify(Notice::Direct {
                        user: req.requester.id.clone(),
                        request: Some(id),
                        text: format!(
                            "{details}\nReply `extend {id} 1h` or `complete {id}` at any time."
                        ),
                        actions: messages::certificate_action(req, certificates)
                            .into_iter()
                            .chain(messages::extend_complete(req))
                            .collect(),
                    });
                }
                RequestState::Failed => {
                    fx.log(
                        now,
                        "passport",
                        Some(id),
                        "failed",
                        "provisioning failed on every instance".into(),
                        json!({}),
                    );
                    fx.notify(Notice::thread(id, format!("❌ {report}")));
                    fx.notify(Notice::to_requester(
                        req,
                        format!("Access for {id} could not be set up.\n{report}"),
                    ));
                }
                _ => {
                    fx.log(
                        now,
                        "passport",
                        Some(id),
                        "provisioned_after_end",
                        format!(
                            "provisioning finished after the request was {}: removing",
                            req.state.label().to_lowercase()
                        ),
                        json!({}),
                    );
                }
            }
            if !to_remove.is_empty() {
                fx.schedule(TimerKind::Remove, now);
            }
            Ok(())
        })
        .await
    }

    async fn remove(&self, t: &Timer) -> Result<(), StoreError> {
        let Some(req) = self.store.get(t.request).await? else {
            return self.store.delete_timer(t.id).await;
        };
        let pending = req.pending_removals();
        if pending.is_empty() {
            return self.store.delete_timer(t.id).await;
        }
        let instances: Vec<_> = pending
            .iter()
            .filter_map(|i| req.instance(i).cloned())
            .collect();
        let spec = RevokeSpec {
            request: req.id,
            username: req.username.clone(),
            instances,
        };
        // The first removal also ends the Session Manager sessions opened
        // with the request's credentials, alongside the revoke and bounded,
        // so it never holds the removal up; it retries on its own timer.
        let sessions = if t.attempts == 0 {
            self.credentials_issued(&req).await?
        } else {
            None
        };
        let revoke = async {
            let _slot = self.revoke_slots.acquire().await;
            self.provisioner.revoke(&spec).await
        };
        let (revoked, ended) = match sessions {
            Some(latest) => {
                let (revoked, ended) = tokio::join!(revoke, self.end_sessions_bounded(&req));
                (revoked, Some((ended, latest)))
            }
            None => (revoke.await, None),
        };
        let outcomes = match revoked {
            Ok(outcomes) => outcomes,
            Err(e) => all_failed(&spec.instances, &e),
        };
        let now = self.clock.now();
        let id = req.id;
        let attempts = t.attempts + 1;
        self.apply(t, move |req, fx| {
            if let Some((ended, latest)) = &ended {
                record_sessions_ended(req, fx, now, ended, 1);
                schedule_sweep(fx, now, *latest);
            }
            req.record_removal(&outcomes);
            let mut removed = Vec::new();
            for o in &outcomes {
                if let (label, None) = (Work::Removal { attempt: attempts }).log(fx, req, o, now) {
                    removed.push(label);
                }
            }
            if !removed.is_empty() {
                fx.notify(Notice::thread(
                    id,
                    format!(
                        "🧹 `{}` removed from {}",
                        req.username,
                        summarise(&removed, 10)
                    ),
                ));
            }
            let still = req.pending_removals();
            if still.is_empty() {
                fx.notify(Notice::to_requester(
                    req,
                    format!(
                        "Your access {id} has ended: `{}` was removed from every instance.",
                        req.username
                    ),
                ));
            } else {
                fx.timers.push(NewTimer {
                    kind: TimerKind::Remove,
                    due: now.plus(backoff(attempts)),
                    attempts,
                });
                if attempts == REMOVAL_ALERT_AFTER
                    || (attempts > REMOVAL_ALERT_AFTER && attempts.is_multiple_of(10))
                {
                    alert_removal_failing(req, fx, &still, attempts);
                }
            }
            Ok(())
        })
        .await
    }
}

/// How long ending a request's sessions may take before it counts as failed
/// (and is retried on its own timer).
const SESSION_END_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Ending sessions is given up (and the audit channel told) after this many attempts.
const MAX_SESSION_END_ATTEMPTS: u32 = 8;
/// The last sweep runs this long after the last credential expired, for
/// clocks that differ.
const SWEEP_MARGIN: Span = Span::from_minutes(1);

/// Ended states: only their sessions are ended.
fn has_ended(state: RequestState) -> bool {
    matches!(
        state,
        RequestState::Completed
            | RequestState::Expired
            | RequestState::Revoked
            | RequestState::Failed
    )
}

impl Engine {
    /// When the last Session Manager credential issued for `req` expires,
    /// if any was and a broker is configured. Every credential handed out is
    /// in the Logbook, written in a transaction that saw the request active
    /// (`Engine::session_credentials`), so one issued before the end is found
    /// here and none can be issued after it.
    async fn credentials_issued(
        &self,
        req: &AccessRequest,
    ) -> Result<Option<Timestamp>, StoreError> {
        if self.sessions.is_none() {
            return Ok(None);
        }
        let events = self.store.audit_events(Some(req.id), None).await?;
        Ok(events
            .iter()
            .filter(|e| e.action == "session_credentials_issued")
            .map(|e| {
                serde_json::from_str::<serde_json::Value>(&e.details)
                    .ok()
                    .and_then(|d| {
                        d.get("expiration")?
                            .as_str()
                            .and_then(Timestamp::parse_rfc3339)
                    })
                    // Unreadable: at most the longest STS credential from its issue.
                    .unwrap_or_else(|| e.at.plus(Span::from_hours(12)))
            })
            .max())
    }

    /// Ends the sessions of `req` on all its instances, within [`SESSION_END_TIMEOUT`].
    async fn end_sessions_bounded(&self, req: &AccessRequest) -> Result<Vec<String>, String> {
        let Some(broker) = &self.sessions else {
            return Ok(Vec::new());
        };
        let instances: Vec<InstanceId> = req.instances.iter().map(|i| i.id.clone()).collect();
        match tokio::time::timeout(
            SESSION_END_TIMEOUT,
            broker.end_sessions(&req.username, &instances),
        )
        .await
        {
            Ok(Ok(ended)) => Ok(ended),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "AWS did not answer within {}s",
                SESSION_END_TIMEOUT.as_secs()
            )),
        }
    }

    /// The `EndSessions` timer: a retry after a failure, or the last sweep
    /// once the request's credentials have expired.
    async fn end_sessions_job(&self, t: &Timer) -> Result<(), StoreError> {
        let req = match (&self.sessions, self.store.get(t.request).await?) {
            (Some(_), Some(req)) if has_ended(req.state) => req,
            _ => return self.store.delete_timer(t.id).await,
        };
        let ended = self.end_sessions_bounded(&req).await;
        let now = self.clock.now();
        let attempts = t.attempts + 1;
        self.apply(t, move |req, fx| {
            record_sessions_ended(req, fx, now, &ended, attempts);
            Ok(())
        })
        .await
    }
}

/// Logs each session ended, or the failure; a failure is retried on an
/// `EndSessions` timer until [`MAX_SESSION_END_ATTEMPTS`], then reported.
fn record_sessions_ended(
    req: &AccessRequest,
    fx: &mut Effects,
    now: Timestamp,
    ended: &Result<Vec<String>, String>,
    attempts: u32,
) {
    let id = req.id;
    match ended {
        Ok(sessions) => {
            for session in sessions {
                fx.log(
                    now,
                    "passport",
                    Some(id),
                    "session_terminated",
                    format!(
                        "Session Manager session {session} of `{}` ended",
                        req.username
                    ),
                    json!({ "session_id": session }),
                );
            }
        }
        Err(why) => {
            let retry =
                (attempts < MAX_SESSION_END_ATTEMPTS).then(|| now.plus(backoff(attempts - 1)));
            let next = match retry {
                Some(at) => format!("trying again at {at}"),
                None => "giving up: end them in the Session Manager console".into(),
            };
            let summary = format!(
                "could not end the Session Manager sessions of `{}` (attempt {attempts}): {why}; {next}",
                req.username
            );
            fx.log(
                now,
                "passport",
                Some(id),
                "session_termination_failed",
                summary.clone(),
                json!({ "error": why, "attempt": attempts }),
            );
            match retry {
                Some(due) => fx.timers.push(NewTimer {
                    kind: TimerKind::EndSessions,
                    due,
                    attempts,
                }),
                None => fx.notify(Notice::Audit {
                    text: format!("🚨 {id}: {summary}"),
                }),
            }
        }
    }
}

/// A credential issued before an early end (complete, revoke) may still
/// start sessions until it expires, since its policy allowed them until the
/// planned end: one more sweep when the last one has expired ends those too.
fn schedule_sweep(fx: &mut Effects, now: Timestamp, latest: Timestamp) {
    if latest > now {
        fx.schedule(TimerKind::EndSessions, latest.plus(SWEEP_MARGIN));
    }
}

/// Records a refresh; a user re-created on an instance after the request
/// ended (an extension racing a completion) is scheduled for removal again.
fn record_refresh(
    req: &mut AccessRequest,
    fx: &mut Effects,
    outcomes: &[InstanceOutcome],
    now: Timestamp,
) {
    let id = req.id;
    for o in outcomes {
        if let (label, Some(why)) = Work::Refresh.log(fx, req, o, now) {
            fx.notify(Notice::thread(
                id,
                format!("⚠️ could not move the on-instance expiry on {label} ({why}): access there may end at the earlier time"),
            ));
        }
    }
    if !req.record_refresh(outcomes).is_empty() {
        fx.schedule(TimerKind::Remove, now);
    }
}

/// The work a provisioner reports on each instance, as the Logbook words it.
#[derive(Debug, Clone, Copy)]
enum Work {
    Grant,
    Refresh,
    Removal { attempt: u32 },
}

impl Work {
    /// Logs, as Passport, how this work went on one instance: the instance's
    /// label, and the reason when it failed.
    fn log(
        self,
        fx: &mut Effects,
        req: &AccessRequest,
        o: &InstanceOutcome,
        now: Timestamp,
    ) -> (String, Option<String>) {
        let label = messages::instance_label(req, &o.instance);
        let user = &req.username;
        let instance = o.instance.as_str();
        let (action, summary, details, failed) = if o.ok {
            let (action, summary) = match self {
                Work::Grant => ("granted", format!("`{user}` created on {label}")),
                Work::Refresh => (
                    "refreshed",
                    format!("on-instance expiry of `{user}` moved on {label}"),
                ),
                Work::Removal { .. } => ("removed", format!("`{user}` removed from {label}")),
            };
            (action, summary, json!({ "instance": instance }), None)
        } else {
            let why = o.detail.clone().unwrap_or_else(|| "failed".into());
            let (action, summary, details) = match self {
                Work::Grant => (
                    "grant_failed",
                    format!("could not create `{user}` on {label}: {why}"),
                    json!({ "instance": instance, "error": why }),
                ),
                Work::Refresh => (
                    "refresh_failed",
                    format!("could not move the on-instance expiry on {label}: {why}"),
                    json!({ "instance": instance, "error": why }),
                ),
                Work::Removal { attempt } => (
                    "removal_failed",
                    format!("could not remove `{user}` from {label} (attempt {attempt}): {why}"),
                    json!({ "instance": instance, "error": why, "attempt": attempt }),
                ),
            };
            (action, summary, details, Some(why))
        };
        fx.log(now, "passport", Some(req.id), action, summary, details);
        (label, failed)
    }
}

/// Tells the audit channel, the thread and the approvers which instances still hold the user.
fn alert_removal_failing(
    req: &AccessRequest,
    fx: &mut Effects,
    still: &[InstanceId],
    attempts: u32,
) {
    let labels: Vec<String> = still
        .iter()
        .map(|i| messages::instance_label(req, i))
        .collect();
    let text = format!(
        "🚨 {}: `{}` is still present on {} after {attempts} removal attempts; Passport keeps retrying. Check the instance(s) and the SSM agent.",
        req.id,
        req.username,
        summarise(&labels, 10)
    );
    fx.notify(Notice::thread(req.id, text.clone()));
    fx.notify(Notice::Audit { text: text.clone() });
    for a in &req.approvals {
        fx.notify(Notice::direct(a.by.clone(), Some(req.id), text.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Span::from_secs(30));
        assert_eq!(backoff(1), Span::from_secs(60));
        assert_eq!(backoff(5), Span::from_secs(600));
        assert_eq!(backoff(40), Span::from_secs(600));
    }
}
