//! The scheduler: runs due timers and jobs, delivers the outbox, and sleeps
//! until the next thing is due or a commit wakes it.
//!
//! Only one process may schedule on a database: the scheduler holds a lease
//! row (renewed well before it expires) and stands by while another process
//! holds it, so a rolling deploy never revokes or notifies twice.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use crate::app::dispatch::Dispatcher;
use crate::app::engine::Engine;
use crate::app::jobs::Jobs;
use crate::app::ports::StoreError;
use crate::domain::time::{Span, Timestamp};

pub const LEASE_NAME: &str = "scheduler";
/// How long a lease lasts without renewal: a crashed holder is replaced after this.
pub const LEASE_TTL: Span = Span::from_secs(15);
/// The longest the loop sleeps, so the lease is renewed in time.
const MAX_SLEEP: Span = Span::from_secs(5);
/// How often a standby asks for the lease: a holder that died is replaced
/// within a second of its lease running out, not up to `MAX_SLEEP` later.
const STANDBY_POLL: Span = Span::from_secs(1);

/// Clears a "pass running" flag when the pass ends, also when it panics, so
/// that a panicking pass never stops the next one.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

pub struct Scheduler {
    engine: Arc<Engine>,
    dispatcher: Arc<Dispatcher>,
    jobs: Jobs,
    holder: String,
    held: AtomicBool,
    jobs_running: Arc<AtomicBool>,
    delivering: Arc<AtomicBool>,
    /// When a notice waiting for a retry, or a password message to delete, is
    /// due, as the last delivery pass found.
    next_retry: Arc<Mutex<Option<Timestamp>>>,
}

impl Scheduler {
    pub fn new(engine: Arc<Engine>, dispatcher: Arc<Dispatcher>, jobs: Jobs) -> Self {
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let holder = format!(
            "{}:{}:{}-{n}",
            this_host(),
            std::process::id(),
            engine.now().as_millis()
        );
        Self {
            engine,
            dispatcher,
            jobs,
            holder,
            held: AtomicBool::new(false),
            jobs_running: Arc::new(AtomicBool::new(false)),
            delivering: Arc::new(AtomicBool::new(false)),
            next_retry: Arc::new(Mutex::new(None)),
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes or renews the lease. False while another live process holds it.
    pub async fn hold_lease(&self) -> Result<bool, StoreError> {
        let store = self.engine.store();
        let now = self.engine.now();
        let mut held = store
            .try_lease(LEASE_NAME, &self.holder, now, LEASE_TTL)
            .await?;
        if !held {
            // A holder on this machine whose process is gone (killed, crashed) need
            // not be waited out: restarting after a crash resumes at once.
            if let Some(stale) = store
                .lease_holder(LEASE_NAME)
                .await?
                .filter(|h| died_here(h))
            {
                held = store
                    .take_over_lease(LEASE_NAME, &stale, &self.holder, now, LEASE_TTL)
                    .await?;
                if held {
                    tracing::info!(previous = %stale, "took over the scheduler lease from a process that is gone");
                }
            }
        }
        let was = self.held.swap(held, Ordering::SeqCst);
        if held && !was {
            tracing::info!(holder = %self.holder, "holding the scheduler lease");
        } else if !held && was {
            tracing::warn!(holder = %self.holder, "lost the scheduler lease; standing by");
        }
        Ok(held)
    }

    pub async fn release(&self) {
        if let Err(e) = self
            .engine
            .store()
            .release_lease(LEASE_NAME, &self.holder)
            .await
        {
            tracing::warn!(error = %e, "could not release the scheduler lease");
        }
        self.held.store(false, Ordering::SeqCst);
    }

    /// Runs everything due now, jobs included, and delivers every notice that
    /// can go, until nothing is left to do at this moment. Does nothing when
    /// another process holds the lease.
    pub async fn settle(&self) -> Result<(), StoreError> {
        if !self.hold_lease().await? {
            return Ok(());
        }
        for _ in 0..100 {
            let ran = self.engine.run_due().await? + self.engine.run_jobs_due(&self.jobs).await?;
            let report = self.dispatcher.deliver_due().await?;
            if ran == 0 && report.delivered == 0 && report.deleted == 0 {
                return Ok(());
            }
        }
        Ok(())
    }

    /// One pass of the loop; returns when the next thing is due.
    async fn tick(&self) -> Result<Timestamp, StoreError> {
        let now = self.engine.now();
        if !self.hold_lease().await? {
            return Ok(now.plus(STANDBY_POLL));
        }
        // Timers (provisioning may take minutes) and jobs run in their own tasks
        // so a slow one never delays an expiry or a delivery.
        let engine = self.engine.clone();
        tokio::spawn(async move {
            if let Err(e) = engine.run_due().await {
                tracing::error!(error = %e, "could not run due timers");
            }
        });
        if !self.jobs_running.swap(true, Ordering::SeqCst) {
            let (engine, jobs, running) = (
                self.engine.clone(),
                self.jobs.clone(),
                self.jobs_running.clone(),
            );
            tokio::spawn(async move {
                let _running = Running(running);
                if let Err(e) = engine.run_jobs_due(&jobs).await {
                    tracing::error!(error = %e, "could not run scheduled jobs");
                }
            });
        }
        // Deliveries too: a backlog of notices must not hold up the next expiry.
        if !self.delivering.swap(true, Ordering::SeqCst) {
            let (dispatcher, delivering, next_retry, wake) = (
                self.dispatcher.clone(),
                self.delivering.clone(),
                self.next_retry.clone(),
                self.engine.wake.clone(),
            );
            tokio::spawn(async move {
                let running = Running(delivering);
                let progressed = match dispatcher.deliver_due().await {
                    Ok(report) => {
                        // A password message due for deletion wakes the loop like a retry.
                        *next_retry.lock().unwrap_or_else(|e| e.into_inner()) =
                            [report.next_retry, report.next_deletion]
                                .into_iter()
                                .flatten()
                                .min();
                        report.delivered + report.dead + report.deleted > 0
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not deliver notices");
                        false
                    }
                };
                drop(running);
                if progressed {
                    // Notices may have arrived while this pass ran: look again.
                    wake.notify_waiters();
                }
            });
        }
        let retry = *self.next_retry.lock().unwrap_or_else(|e| e.into_inner());
        let candidates = [
            self.engine.next_timer_due().await?,
            retry,
            self.engine.next_job_due(&self.jobs).await?,
        ];
        let next = candidates
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now.plus(MAX_SLEEP));
        Ok(next.min(now.plus(MAX_SLEEP)))
    }

    /// Runs the loop until the task is aborted.
    pub fn spawn(self: Arc<Self>) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let wake = self.engine.wake.clone();
                let notified = wake.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let next = match self.tick().await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::error!(error = %e, "scheduler pass failed; retrying shortly");
                        self.engine.now().plus(Span::from_secs(1))
                    }
                };
                let wait = next.since(self.engine.now()).max(Span::from_millis(2));
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(wait.to_std()) => {}
                }
            }
        })
    }
}

/// This machine's name, as holders record it.
fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// True when `holder` (`host:pid:…`) names a process of this machine that no
/// longer runs. Elsewhere, or when unsure, the lease is waited out.
fn died_here(holder: &str) -> bool {
    let mut parts = holder.split(':');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    host == this_host()
        && pid != std::process::id()
        && std::path::Path::new("/proc/self").exists()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_processes_of_this_machine_are_taken_over() {
        let me = format!("{}:{}:1", this_host(), std::process::id());
        assert!(!died_here(&me), "this very process is alive");
        assert!(
            died_here(&format!("{}:4194304:1", this_host())),
            "pids above the kernel's maximum never run"
        );
        assert!(!died_here("another-host:4194304:1"));
        assert!(!died_here("garbage"));
    }
}
