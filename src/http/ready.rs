//! `/readyz`: whether this process can do its work now. Ready means the
//! database's writer commits, the chat platform answers for the bot's token,
//! and AWS answers when `[aws]` is configured. (The scheduler lease lives in
//! the same database, so a writable database is all it needs.)
//!
//! Kubelets and load balancers ask every few seconds, so each remote check
//! ([`Probe`]) has a deadline ([`PROBE_DEADLINE`]) and its outcome is kept for
//! [`PROBE_FRESH`]: a probe never waits on the network longer than the
//! deadline, and Slack, Discord and AWS are asked at most once per
//! [`PROBE_FRESH`] whatever the polling rate.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::adapters::aws::AwsProbe;
use crate::adapters::discord::api::DiscordApi;
use crate::adapters::slack::api::SlackApi;
use crate::app::ports::{Clock, Store};
use crate::domain::time::{Span, Timestamp};

/// How long one check may take before it counts as failed.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(2);

/// How long a remote check's outcome is reused.
pub const PROBE_FRESH: Span = Span::from_secs(5);

/// One remote dependency `/readyz` asks about.
#[async_trait]
pub trait Probe: Send + Sync {
    /// The check's name in `/readyz`'s answer: `slack`, `discord`, `aws`.
    fn name(&self) -> &'static str;
    /// `Ok` when the dependency answered as it should; otherwise what is
    /// wrong and what to do, without secrets.
    async fn check(&self) -> Result<(), String>;
}

/// Slack answers `auth.test` for the bot token.
pub struct SlackProbe(pub Arc<SlackApi>);

#[async_trait]
impl Probe for SlackProbe {
    fn name(&self) -> &'static str {
        "slack"
    }

    async fn check(&self) -> Result<(), String> {
        self.0.auth_test().await.map(|_| ()).map_err(|e| {
            format!("auth.test failed ({e}): check PASSPORT_SLACK__BOT_TOKEN and that Slack is reachable from this pod")
        })
    }
}

/// Discord answers `GET /users/@me` for the bot token.
pub struct DiscordProbe(pub Arc<DiscordApi>);

#[async_trait]
impl Probe for DiscordProbe {
    fn name(&self) -> &'static str {
        "discord"
    }

    async fn check(&self) -> Result<(), String> {
        self.0.current_user().await.map(|_| ()).map_err(|e| {
            format!("GET /users/@me failed ({e}): check PASSPORT_DISCORD__BOT_TOKEN and that Discord is reachable from this pod")
        })
    }
}

#[async_trait]
impl Probe for AwsProbe {
    fn name(&self) -> &'static str {
        "aws"
    }

    async fn check(&self) -> Result<(), String> {
        AwsProbe::check(self).await
    }
}

/// A probe and its last outcome.
struct Cached {
    probe: Arc<dyn Probe>,
    /// Held while the probe runs, so that concurrent callers share one call.
    last: tokio::sync::Mutex<Option<(Timestamp, Result<(), String>)>>,
}

/// The checks `/readyz` runs.
pub struct Readiness {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    probes: Vec<Cached>,
    deadline: Duration,
}

/// What `/readyz` answers: each check by name, and whether all passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub ready: bool,
    /// `(name, Ok | Err(what to do))`, the database first.
    pub checks: Vec<(&'static str, Result<(), String>)>,
}

impl Report {
    /// The JSON body: `{"status": "ready"|"not ready", "checks": {name:
    /// {"state": "ok"|"failing", "message": …}}, "message": …}`.
    pub fn to_json(&self) -> Value {
        let mut checks = Map::new();
        for (name, outcome) in &self.checks {
            checks.insert(
                (*name).to_owned(),
                match outcome {
                    Ok(()) => json!({ "state": "ok" }),
                    Err(message) => json!({ "state": "failing", "message": message }),
                },
            );
        }
        let mut body = json!({
            "status": if self.ready { "ready" } else { "not ready" },
            "checks": checks,
        });
        if !self.ready {
            let failing: Vec<String> = self
                .checks
                .iter()
                .filter_map(|(name, outcome)| {
                    outcome.as_ref().err().map(|m| format!("{name}: {m}"))
                })
                .collect();
            body["message"] = Value::String(failing.join("; "));
        }
        body
    }
}

impl Readiness {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            probes: Vec::new(),
            deadline: PROBE_DEADLINE,
        }
    }

    #[must_use]
    pub fn with_probe(mut self, probe: Arc<dyn Probe>) -> Self {
        self.probes.push(Cached {
            probe,
            last: tokio::sync::Mutex::new(None),
        });
        self
    }

    /// Runs every check at once, each within the deadline.
    pub async fn check(&self) -> Report {
        let store = self.store_check();
        let remote = futures::future::join_all(self.probes.iter().map(|c| self.remote(c)));
        let (store, remote) = tokio::join!(store, remote);
        let checks: Vec<_> = std::iter::once(("store", store)).chain(remote).collect();
        Report {
            ready: checks.iter().all(|(_, outcome)| outcome.is_ok()),
            checks,
        }
    }

    /// The database's writer commits within the deadline. Local and cheap,
    /// so asked every time: a locked database shows at once.
    async fn store_check(&self) -> Result<(), String> {
        match tokio::time::timeout(self.deadline, self.store.ping_writer()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "readiness check cannot write to the database");
                Err("the database does not take writes: check that no other process holds it (a second replica?) and that its disk is not full".into())
            }
            Err(_) => {
                tracing::warn!(
                    within_ms = self.deadline.as_millis() as u64,
                    "readiness check: the database writer did not answer in time"
                );
                Err(format!(
                    "the database writer did not answer within {}: check that no other process holds the database and that its disk is not slow or full",
                    Span::from_millis(self.deadline.as_millis() as i64)
                ))
            }
        }
    }

    /// A remote check's outcome, asked again only once the last is older
    /// than [`PROBE_FRESH`].
    async fn remote(&self, cached: &Cached) -> (&'static str, Result<(), String>) {
        let name = cached.probe.name();
        let mut last = cached.last.lock().await;
        let now = self.clock.now();
        if let Some((at, outcome)) = last.as_ref() {
            // A clock that went back does not make an old outcome fresh.
            let age = now.as_millis() - at.as_millis();
            if (0..PROBE_FRESH.as_millis()).contains(&age) {
                return (name, outcome.clone());
            }
        }
        let outcome = match tokio::time::timeout(self.deadline, cached.probe.check()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "no answer within {}: check that {name} is reachable from this pod (network, proxy, DNS)",
                Span::from_millis(self.deadline.as_millis() as i64)
            )),
        };
        if let Err(message) = &outcome {
            tracing::warn!(check = name, %message, "readiness check failed");
        }
        *last = Some((now, outcome.clone()));
        (name, outcome)
    }
}
