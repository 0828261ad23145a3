//! Scheduled jobs on cron schedules (UTC): reconciliation, the daily digest and
//! Logbook checkpoints. When each runs next is kept in the store, so a restart
//! neither skips nor repeats a run.

use std::str::FromStr;

use serde_json::json;

use crate::domain::logbook::Checkpoint;
use crate::domain::notice::Notice;
use crate::domain::request::{GrantState, RequestState};
use crate::domain::time::{Span, Timestamp};

use super::effects::{Effects, TimerKind};
use super::engine::{summarise, Engine};
use super::messages;
use super::ports::{CheckpointError, RequestFilter, RevokeSpec, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Retry failing removals and re-check that ended requests left no user behind.
    Reconcile,
    /// Active requests, failures and failing removals, to the audit channel.
    Digest,
    /// The Logbook's head to the audit channel, as an outside record to verify against.
    Checkpoint,
}

impl JobKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Reconcile => "reconcile",
            Self::Digest => "digest",
            Self::Checkpoint => "checkpoint",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub kind: JobKind,
    pub expression: String,
    schedule: cron::Schedule,
}

impl Job {
    /// Parses a cron expression with a seconds field, e.g. `0 */10 * * * *`.
    pub fn new(kind: JobKind, expression: &str) -> Result<Self, String> {
        let schedule = cron::Schedule::from_str(expression).map_err(|e| {
            format!("{expression:?} is not a cron expression ({e}): use six fields with seconds first, e.g. \"0 */10 * * * *\"")
        })?;
        if schedule.upcoming(chrono::Utc).next().is_none() {
            return Err(format!("{expression:?} never fires"));
        }
        Ok(Self {
            kind,
            expression: expression.to_owned(),
            schedule,
        })
    }

    /// The first run strictly after `now`, in UTC.
    pub fn next_after(&self, now: Timestamp) -> Option<Timestamp> {
        let now = chrono::DateTime::from_timestamp_millis(now.as_millis())?;
        self.schedule
            .after(&now)
            .next()
            .map(|t| Timestamp::from_millis(t.timestamp_millis()))
    }
}

/// The jobs in force; a job configured as `""` or `"off"` is left out.
#[derive(Debug, Clone, Default)]
pub struct Jobs {
    pub jobs: Vec<Job>,
}

/// What a reconciliation found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub removals_rescheduled: usize,
    pub verified: usize,
    pub leftovers: usize,
    /// The provisioner's records of finished work it forgot.
    pub forgotten: u64,
    /// Delivered notices past `outbox_retention`, deleted.
    pub pruned: u64,
    /// Signed chat requests whose signatures can no longer be accepted, forgotten.
    pub signed_forgotten: u64,
}

/// Delivered notices deleted per write transaction.
const PRUNE_BATCH: u64 = 5_000;

/// How long the provisioner keeps records of finished work (the Logbook keeps
/// the outcomes for good).
pub const PROVISIONER_RECORDS_KEPT: Span = Span::from_hours(7 * 24);

/// States of requests whose access has ended; their grants may still need removing.
const ENDED: [RequestState; 4] = [
    RequestState::Completed,
    RequestState::Expired,
    RequestState::Revoked,
    RequestState::Failed,
];

/// How far back reconciliation re-checks ended requests.
const RECHECK_WINDOW: Span = Span::from_hours(24 * 7);

impl Engine {
    /// Runs every job whose time has come, and schedules its next run.
    pub async fn run_jobs_due(&self, jobs: &Jobs) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let mut ran = 0;
        for job in &jobs.jobs {
            let name = job.kind.name();
            match self.store.job_next_run(name, &job.expression).await? {
                Some(next) if next > now => continue,
                Some(_) => {
                    // A failing job waits for its next slot and does not hold up the others.
                    match self.run_job(job.kind).await {
                        Ok(()) => ran += 1,
                        Err(e) => {
                            tracing::error!(job = name, error = %e, "scheduled job failed; it runs again at its next time")
                        }
                    }
                }
                // Newly configured (or rescheduled): first run at its next time.
                None => {}
            }
            if let Some(next) = job.next_after(now) {
                self.store
                    .set_job_next_run(name, &job.expression, next)
                    .await?;
            }
        }
        Ok(ran)
    }

    /// When the next job is due, for the scheduler's sleep.
    pub async fn next_job_due(&self, jobs: &Jobs) -> Result<Option<Timestamp>, StoreError> {
        let mut next: Option<Timestamp> = None;
        for job in &jobs.jobs {
            if let Some(t) = self
                .store
                .job_next_run(job.kind.name(), &job.expression)
                .await?
            {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        Ok(next)
    }

    pub async fn run_job(&self, kind: JobKind) -> Result<(), StoreError> {
        match kind {
            JobKind::Reconcile => self.reconcile().await.map(|_| ()),
            JobKind::Digest => self.digest().await,
            JobKind::Checkpoint => self.checkpoint().await,
        }
    }

    /// Makes sure no user is left behind: every ended request with removals
    /// still open has a removal job, and recently ended requests get their
    /// removal run once more (it is idempotent) to catch users an instance
    /// re-created or kept while it was offline.
    pub async fn reconcile(&self) -> Result<ReconcileReport, StoreError> {
        let mut report = ReconcileReport::default();
        let holding = RequestFilter {
            holding_users: true,
            ..RequestFilter::default()
        };
        for req in self.store.requests_in(&ENDED, holding, 1000).await? {
            if !req.pending_removals().is_empty()
                && !self.store.has_timer(req.id, TimerKind::Remove).await?
            {
                let now = self.clock.now();
                let id = req.id;
                let applied = self
                    .store
                    .update(
                        id,
                        None,
                        self.mutation(move |req, fx| {
                            if req.pending_removals().is_empty() {
                                return Err(crate::domain::request::RefusalKind::AlreadyDone(
                                    "removed meanwhile".into(),
                                ));
                            }
                            fx.log(
                                now,
                                "passport",
                                Some(id),
                                "removal_rescheduled",
                                "reconciliation: removal had no job; rescheduled".into(),
                                json!({}),
                            );
                            fx.schedule(TimerKind::Remove, now);
                            Ok(())
                        }),
                    )
                    .await?;
                if applied.is_ok() {
                    report.removals_rescheduled += 1;
                }
            }
        }
        let since = self.clock.now().minus(RECHECK_WINDOW);
        for req in self.store.ended_unverified(since, 200).await? {
            let spec = RevokeSpec {
                request: req.id,
                username: req.username.clone(),
                instances: req.instances_in(GrantState::Removed),
            };
            let outcomes = if spec.instances.is_empty() {
                Vec::new()
            } else {
                let revoked = {
                    let _slot = self.revoke_slots.acquire().await;
                    self.provisioner.revoke(&spec).await
                };
                match revoked {
                    Ok(outcomes) => outcomes,
                    Err(e) => {
                        tracing::warn!(request = %req.id, error = %e, "reconciliation could not reach the provisioner; will try again");
                        continue;
                    }
                }
            };
            let now = self.clock.now();
            let id = req.id;
            let failed: Vec<_> = outcomes.iter().filter(|o| !o.ok).cloned().collect();
            if failed.is_empty() {
                report.verified += 1;
            } else {
                report.leftovers += failed.len();
            }
            self.store
                .update(
                    id,
                    None,
                    self.mutation(move |req, fx| {
                        req.record_removal_check(&failed);
                        if failed.is_empty() {
                            fx.log(now, "passport", Some(id), "removal_verified", format!("reconciliation: `{}` is gone from every instance", req.username), json!({}));
                            return Ok(());
                        }
                        let labels: Vec<String> = failed
                            .iter()
                            .map(|o| messages::instance_label(req, &o.instance))
                            .collect();
                        let text = format!(
                            "reconciliation: `{}` could not be confirmed removed from {}; removal is being retried",
                            req.username,
                            summarise(&labels, 10)
                        );
                        fx.log(now, "passport", Some(id), "leftover_user", text.clone(), json!({ "instances": failed.iter().map(|o| o.instance.as_str()).collect::<Vec<_>>() }));
                        fx.notify(Notice::Thread { request: id, text: format!("🚨 {text}"), actions: Vec::new() });
                        fx.schedule(TimerKind::Remove, now);
                        Ok(())
                    }),
                )
                .await?
                .ok();
        }
        if report.leftovers > 0 || report.removals_rescheduled > 0 {
            let mut fx = Effects::default();
            fx.notify(Notice::Audit {
                text: format!(
                    "🚨 reconciliation: {} removal(s) had no job and were rescheduled; {} instance(s) may still hold a user and are being cleaned up",
                    report.removals_rescheduled, report.leftovers
                ),
            });
            fx.route(&self.settings.surfaces, "");
            self.store.record(fx, self.clock.now()).await?;
        }
        let before = self.clock.now().minus(PROVISIONER_RECORDS_KEPT);
        match self.provisioner.forget_finished(before).await {
            Ok(n) => report.forgotten = n,
            Err(e) => tracing::warn!(error = %e, "cannot forget the provisioner's old records"),
        }
        // In batches, so the writer is never held for long; what is left
        // goes at the next run.
        let before = self.clock.now().minus(self.settings.outbox_retention);
        for _ in 0..20 {
            let pruned = self.store.prune_delivered(before, PRUNE_BATCH).await?;
            report.pruned += pruned;
            if pruned < PRUNE_BATCH {
                break;
            }
        }
        let now = self.clock.now();
        for _ in 0..20 {
            let forgotten = self.store.prune_signed(now, PRUNE_BATCH).await?;
            report.signed_forgotten += forgotten;
            if forgotten < PRUNE_BATCH {
                break;
            }
        }
        Ok(report)
    }

    /// Posts a summary to the audit channel: active requests with their expiry,
    /// requests that failed in the last day, and removals still failing.
    pub async fn digest(&self) -> Result<(), StoreError> {
        let now = self.clock.now();
        let active = self
            .store
            .requests_in(&[RequestState::Active], RequestFilter::default(), 1000)
            .await?;
        let failed: Vec<_> = self
            .store
            .requests_in(
                &[RequestState::Failed],
                RequestFilter {
                    changed_since: Some(now.minus(Span::from_hours(24))),
                    ..RequestFilter::default()
                },
                1000,
            )
            .await?;
        let failing: Vec<_> = self
            .store
            .requests_in(
                &ENDED,
                RequestFilter {
                    holding_users: true,
                    ..RequestFilter::default()
                },
                1000,
            )
            .await?
            .into_iter()
            .filter(|r| {
                r.grants
                    .iter()
                    .any(|g| g.state == GrantState::RemovalFailed)
            })
            .collect();
        let mut lines = vec![format!(
            "📋 Passport digest {now}: {} active, {} failed in the last 24h, {} with removals failing",
            active.len(),
            failed.len(),
            failing.len()
        )];
        for r in active.iter().take(50) {
            lines.push(format!(
                "• {} {} on {} instance(s) until {} ({})",
                r.id,
                r.requester.handle,
                r.instances.len(),
                r.expires_at.unwrap_or(now),
                r.ticket
            ));
        }
        if active.len() > 50 {
            lines.push(format!("• … and {} more active", active.len() - 50));
        }
        for r in &failed {
            lines.push(format!(
                "• {} failed: {}",
                r.id,
                messages::provisioning_report(r).replace('\n', " ")
            ));
        }
        for r in &failing {
            let where_: Vec<String> = r
                .grants
                .iter()
                .filter(|g| g.state == GrantState::RemovalFailed)
                .map(|g| messages::instance_label(r, &g.instance))
                .collect();
            lines.push(format!(
                "• {} `{}` still on {}",
                r.id,
                r.username,
                summarise(&where_, 10)
            ));
        }
        let mut fx = Effects::default();
        // Audit lines stay short: one notice per block of lines.
        for chunk in lines.chunks(20) {
            fx.notify(Notice::Audit {
                text: chunk.join("\n"),
            });
        }
        fx.route(&self.settings.surfaces, "");
        self.store.record(fx, self.clock.now()).await
    }

    /// Posts the Logbook's head, so later tampering can be detected against
    /// this outside record, and appends it to the checkpoint file when one is
    /// configured. A checkpoint the file could not keep is logged as an error
    /// and counted (`passport_checkpoint_file_failures_total`); it never holds
    /// up the Logbook or the post.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let Some((seq, hash)) = self.store.logbook_head().await? else {
            return Ok(());
        };
        let now = self.clock.now();
        let mut fx = Effects::default();
        fx.notify(Notice::Audit {
            text: format!(
                "🔏 Logbook checkpoint: event {seq}, hash {hash}. Check with `passport audit verify --checkpoint {seq}:{hash}`"
            ),
        });
        fx.route(&self.settings.surfaces, "");
        let posted = self.store.record(fx, now).await;
        if let Some(sink) = &self.checkpoint_sink {
            let kept = match Checkpoint::new(now, seq, &hash) {
                Some(checkpoint) => sink.keep(&checkpoint).await,
                None => Err(CheckpointError(format!(
                    "the Logbook's head {seq} has a malformed hash: run `passport audit verify`"
                ))),
            };
            if let Err(e) = kept {
                metrics::counter!("passport_checkpoint_file_failures_total").increment(1);
                tracing::error!(
                    seq,
                    file = %sink.describe(),
                    error = %e,
                    "a Logbook checkpoint was NOT written to the checkpoint file: fix the file's \
                     directory, permissions or disk; the next checkpoint is written as usual"
                );
            }
        }
        posted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_expressions_need_seconds_and_run_in_utc() {
        let job = Job::new(JobKind::Reconcile, "0 */10 * * * *").unwrap();
        let t = Timestamp::parse_rfc3339("2026-11-25T10:03:00Z").unwrap();
        assert_eq!(
            job.next_after(t),
            Timestamp::parse_rfc3339("2026-11-25T10:10:00Z")
        );
        let daily = Job::new(JobKind::Digest, "0 0 8 * * *").unwrap();
        assert_eq!(
            daily.next_after(t),
            Timestamp::parse_rfc3339("2026-11-26T08:00:00Z")
        );
        assert!(
            Job::new(JobKind::Digest, "*/10 * * * *").is_err(),
            "five fields are refused"
        );
        assert!(Job::new(JobKind::Digest, "nonsense").is_err());
    }
}
