//! `/metrics` in Prometheus' text format, and the HTTP latency of every
//! endpoint.
//!
//! Counters and histograms are recorded where things happen through the
//! `metrics` facade (Logbook events by action in the store, chat deliveries in
//! the outbox, HTTP here); what lives in the database (requests by state,
//! removals overdue, the outbox, timers) is read from it, so a restart loses
//! none of it, but at most once per [`GAUGES_MAX_AGE`] whatever the scrape
//! interval, so frequent scrapes cost the service nothing more than rendering.
//! The exposition itself is `metrics-exporter-prometheus`'s.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::ports::{Clock, Gauges, Store};
use crate::domain::request::RequestState;
use crate::domain::time::{Span, Timestamp};

use super::HttpError;

/// Buckets of the quick latencies, from half a millisecond to Slack's 3 s:
/// `passport_http_request_duration_seconds` (acknowledgements take well under
/// a millisecond) and `passport_store_group_seconds` (each phase of a group
/// of changes).
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0,
];
/// Buckets of `passport_store_group_size`: changes per transaction (at most
/// 64 on PostgreSQL, 256 on SQLite).
const GROUP_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 48.0, 64.0, 128.0, 256.0];
/// Buckets of the other histograms (seconds: SSM commands, time to approval).
const SLOW_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

/// The process's Prometheus recorder, installed on first use. `metrics`
/// allows one global recorder per process; every server in it shares this one.
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("passport_http_request_duration_seconds".into()),
                &LATENCY_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("passport_store_group_size".into()),
                    &GROUP_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("passport_store_group_seconds".into()),
                    &LATENCY_BUCKETS,
                )
            })
            .and_then(|b| b.set_buckets(&SLOW_BUCKETS));
        let recorder = match builder {
            Ok(builder) => builder.build_recorder(),
            // Only reachable with empty bucket lists, which these are not.
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        // Another recorder may already be installed (a library user's own):
        // then this handle renders only what Passport reads at scrape time.
        if metrics::set_global_recorder(recorder).is_ok() {
            describe();
        }
        handle
    })
}

/// Help texts, and a zero for the SSM and checkpoint file counters alerts use,
/// so that their series exist (and `rate()` works) before the first command.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "passport_logbook_events_total",
        "Logbook events by action: requests, approvals, grants and removals by outcome"
    );
    describe_counter!(
        "passport_checkpoint_file_failures_total",
        "Logbook checkpoints the checkpoint file ([audit] checkpoint_file) could not keep"
    );
    describe_counter!(
        "passport_chat_deliveries_total",
        "Chat notices by surface and outcome (delivered, rate_limited, transient_error, refused)"
    );
    describe_counter!(
        "passport_ssm_invocations_total",
        "SSM Run Command results per instance, by final status"
    );
    describe_histogram!(
        "passport_ssm_invocation_seconds",
        Unit::Seconds,
        "From SendCommand to the instance's final status"
    );
    describe_histogram!(
        "passport_time_to_approval_seconds",
        Unit::Seconds,
        "From a request to its last needed approval"
    );
    describe_histogram!(
        "passport_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP answers by route template, method and status"
    );
    describe_histogram!(
        "passport_store_group_size",
        Unit::Count,
        "Changes committed together in one transaction, by store"
    );
    describe_histogram!(
        "passport_store_group_seconds",
        Unit::Seconds,
        "Each phase of a group of changes, by store: writes, commit, and on PostgreSQL lock_and_read (waiting for other replicas' groups included); outcome ok or failed"
    );
    describe_gauge!("passport_requests", "Requests by state");
    describe_gauge!(
        "passport_removals_overdue",
        "Requests whose users should have been removed more than 5 minutes ago and may still exist"
    );
    describe_gauge!("passport_outbox_pending", "Chat notices not yet delivered");
    describe_gauge!(
        "passport_outbox_oldest_pending_seconds",
        Unit::Seconds,
        "Age of the oldest undelivered chat notice"
    );
    describe_gauge!(
        "passport_outbox_set_aside",
        "Chat notices set aside after repeated refusals"
    );
    describe_gauge!(
        "passport_timers_overdue",
        "Timers (expiries, warnings, retries) more than 5 minutes late"
    );
    describe_gauge!("passport_up", "1 while Passport answers /metrics");
    for status in ["Success", "Failed", "TimedOut"] {
        metrics::counter!("passport_ssm_invocations_total", "status" => status).increment(0);
    }
    metrics::counter!("passport_checkpoint_file_failures_total").increment(0);
}

/// How old the database gauges may be when scraped. Counting requests by
/// state reads an index that grows with every request ever made: a scrape
/// every second must not pay that each time. Prometheus' usual 15 s or more
/// always sees a fresh count.
pub const GAUGES_MAX_AGE: Span = Span::from_secs(10);

/// What `/metrics` needs.
#[derive(Clone)]
pub struct MetricsState {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// The last gauges read and when; the lock also makes concurrent scrapes
    /// of stale gauges share one read.
    pub gauges: Arc<tokio::sync::Mutex<Option<(Timestamp, Gauges)>>>,
}

impl MetricsState {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            gauges: Arc::default(),
        }
    }

    /// The gauges, read again when older than [`GAUGES_MAX_AGE`].
    async fn gauges(&self) -> Result<Gauges, HttpError> {
        let mut cached = self.gauges.lock().await;
        let now = self.clock.now();
        if let Some((at, gauges)) = cached.as_ref() {
            if now.since(*at) < GAUGES_MAX_AGE && *at <= now {
                return Ok(gauges.clone());
            }
        }
        let gauges = self.store.gauges(now).await.map_err(|e| {
            tracing::error!(error = %e, "metrics cannot read the database");
            HttpError::Unavailable("database unavailable".into())
        })?;
        *cached = Some((now, gauges.clone()));
        Ok(gauges)
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<MetricsState>) -> Result<Response, HttpError> {
    let handle = recorder();
    let gauges = state.gauges().await?;
    // Every state, so a state whose last request moved on reads 0 rather
    // than its last count.
    for state in RequestState::ALL.map(RequestState::as_str) {
        let n = gauges
            .requests
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |(_, n)| *n);
        metrics::gauge!("passport_requests", "state" => state).set(n as f64);
    }
    metrics::gauge!("passport_removals_overdue").set(gauges.removals_overdue as f64);
    metrics::gauge!("passport_outbox_pending").set(gauges.outbox_pending as f64);
    metrics::gauge!("passport_outbox_oldest_pending_seconds").set(gauges.outbox_oldest_seconds);
    metrics::gauge!("passport_outbox_set_aside").set(gauges.outbox_set_aside as f64);
    metrics::gauge!("passport_timers_overdue").set(gauges.timers_overdue as f64);
    metrics::gauge!("passport_up").set(1.0);
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        handle.render(),
    )
        .into_response())
}

/// Records every request's latency by route template (never the raw path,
/// which would make a series per request id), method and status.
pub async fn track(request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::histogram!(
        "passport_http_request_duration_seconds",
        "endpoint" => endpoint,
        "method" => method,
        "status" => response.status().as_u16().to_string(),
    )
    .record(started.elapsed().as_secs_f64());
    response
}
