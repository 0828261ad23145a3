//! The HTTP server: Slack's endpoints, Discord's interactions endpoint,
//! `/healthz` (alive), `/readyz` (the database takes writes, the chat
//! platform and AWS answer: [`ready`]), `/metrics`, and
//! the API for the `passport` client (`/api/v1`, [`api`]), on axum.
//!
//! Every `/slack/…` and `/discord/…` request is read up to [`MAX_BODY`] bytes
//! (more is 413) and its signature checked ([`verify`]) before anything
//! parses it (a bad one is 401, logged without the body). Errors become statuses in one place
//! ([`error::HttpError`]).

pub mod api;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod ready;
pub mod server;
pub mod verify;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::adapters::discord::inbound::Interaction as DiscordInteraction;
use crate::adapters::discord::Inbound as DiscordInbound;
use crate::adapters::slack::inbound::{EventBody, Interaction, SlashCommand};
use crate::adapters::slack::{Ack, Answer, Inbound};
use crate::app::engine::Engine;
use crate::app::ports::{Clock, Store};
use crate::config::Secret;
use crate::domain::time::{parse_setting_within, Span};

pub use error::HttpError;
pub use server::ServerLimits;

/// Slack's and Discord's payloads are a few KiB; anything much larger is not from them.
pub const MAX_BODY: usize = 64 * 1024;

/// What `[http]` in `passport.toml` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and port the HTTP server listens on.
    pub listen: String,
    /// How long a request's head may take from its first byte, e.g. `10s`.
    pub header_timeout: String,
    /// How long a request's body may take after its head, e.g. `30s`.
    pub body_timeout: String,
    /// How long a connection with no request in flight stays open, e.g. `60s`.
    pub idle_timeout: String,
    /// Connections open at once; more wait until one closes.
    pub max_connections: usize,
    /// How long `serve` takes to stop after SIGTERM, e.g. `10s`.
    pub shutdown_grace: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            header_timeout: "10s".into(),
            body_timeout: "30s".into(),
            idle_timeout: "60s".into(),
            max_connections: 1024,
            shutdown_grace: "10s".into(),
        }
    }
}

/// The validated `[http]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub limits: ServerLimits,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            limits: ServerLimits::default(),
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<HttpSettings, Vec<String>> {
        use std::time::Duration;
        let mut errors = Vec::new();
        let listen = match self.listen.trim().parse() {
            Ok(listen) => Some(listen),
            Err(_) => {
                errors.push(format!(
                    "http.listen: {:?} is not an address and port: use a form like 0.0.0.0:8080 or 127.0.0.1:3000",
                    self.listen
                ));
                None
            }
        };
        let mut duration = |field: &str, text: &str, max: Duration| {
            let max = Span::from_millis(max.as_millis() as i64);
            match parse_setting_within(&format!("http.{field}"), text, Span::from_millis(1), max) {
                Ok(span) => span.to_std(),
                Err(e) => {
                    errors.push(e);
                    Duration::from_secs(1)
                }
            }
        };
        let limits = ServerLimits {
            header_timeout: duration(
                "header_timeout",
                &self.header_timeout,
                Duration::from_secs(300),
            ),
            body_timeout: duration("body_timeout", &self.body_timeout, Duration::from_secs(600)),
            idle_timeout: duration(
                "idle_timeout",
                &self.idle_timeout,
                Duration::from_secs(3600),
            ),
            shutdown_grace: duration(
                "shutdown_grace",
                &self.shutdown_grace,
                Duration::from_secs(600),
            ),
            max_connections: self.max_connections,
        };
        if !(1..=1_000_000).contains(&self.max_connections) {
            errors.push(format!(
                "http.max_connections: {} is out of range: use a number from 1 to 1000000, e.g. 1024",
                self.max_connections
            ));
        }
        match listen {
            Some(listen) if errors.is_empty() => Ok(HttpSettings { listen, limits }),
            _ => Err(errors),
        }
    }
}

/// What `[api]` in `passport.toml` says: the API for the `passport` client,
/// served on the `[http]` listener whenever a chat platform is configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// How long a token from `passport login` works, e.g. `12h`.
    pub token_ttl: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            token_ttl: "12h".into(),
        }
    }
}

/// The validated `[api]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiSettings {
    pub token_ttl: crate::domain::time::Span,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            token_ttl: crate::domain::time::Span::from_hours(12),
        }
    }
}

impl ApiConfig {
    pub fn validate(&self) -> Result<ApiSettings, Vec<String>> {
        use crate::domain::time::{parse_setting_within, Span};
        parse_setting_within(
            "api.token_ttl",
            &self.token_ttl,
            Span::from_minutes(5),
            Span::from_hours(30 * 24),
        )
        .map(|token_ttl| ApiSettings { token_ttl })
        .map_err(|e| vec![e])
    }
}

/// What Slack's endpoints need.
#[derive(Clone)]
pub struct SlackEndpoints {
    pub inbound: Arc<Inbound>,
    pub signing_secret: Secret,
    /// Signature timestamps are checked against this clock.
    pub clock: Arc<dyn Clock>,
}

/// What Discord's interactions endpoint needs.
#[derive(Clone)]
pub struct DiscordEndpoints {
    pub inbound: Arc<DiscordInbound>,
    pub public_key: ed25519_dalek::VerifyingKey,
    /// Signature timestamps are checked against this clock.
    pub clock: Arc<dyn Clock>,
}

#[derive(Clone)]
pub struct HttpState {
    pub store: Arc<dyn Store>,
    /// What `/metrics` reads "overdue" against.
    pub clock: Arc<dyn Clock>,
    /// Present when Slack calls Passport over HTTP.
    pub slack: Option<SlackEndpoints>,
    /// Present when Discord calls Passport over HTTP.
    pub discord: Option<DiscordEndpoints>,
    /// The API for the `passport` client, when a chat platform is configured
    /// (signing in needs one).
    pub api: Option<Arc<Engine>>,
    /// What `/readyz` checks.
    pub readiness: Arc<ready::Readiness>,
}

pub fn router(state: HttpState) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(metrics::metrics).with_state(metrics::MetricsState::new(
                state.store.clone(),
                state.clock.clone(),
            )),
        );
    if state.slack.is_some() {
        router = router
            .route("/slack/commands", post(commands))
            .route("/slack/interactions", post(interactions))
            .route("/slack/events", post(events));
    }
    if state.discord.is_some() {
        router = router.route("/discord/interactions", post(discord_interactions));
    }
    let api = state.api.clone();
    let router = router.with_state(state);
    let router = match api {
        Some(engine) => router.nest(crate::api::PREFIX, api::routes(engine)),
        None => router,
    };
    // Outermost, so every route (and unmatched paths) is timed.
    router.layer(axum::middleware::from_fn(metrics::track))
}

/// Serves `router` on `listener` with the default [`ServerLimits`] until
/// `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::serve(listener, router, ServerLimits::default(), shutdown).await
}

/// Liveness: the process answers and its database does. It is unauthenticated
/// and polled often, so it costs the same whatever the tables hold; it used to
/// count the whole outbox, which is never pruned.
async fn healthz(State(state): State<HttpState>) -> Result<Response, HttpError> {
    match state.store.ping().await {
        Ok(()) => Ok(Json(json!({ "status": "ok" })).into_response()),
        Err(e) => {
            tracing::error!(error = %e, "health check cannot read the database");
            Err(HttpError::Unavailable("database unavailable".into()))
        }
    }
}

/// Readiness: the database's writer commits, the chat platform answers for
/// the bot's token and AWS answers (when configured), each within
/// [`ready::PROBE_DEADLINE`]. A pod that cannot do its work is taken out of
/// the Service until it recovers; the answer names each check, and what to
/// do about a failing one.
async fn readyz(State(state): State<HttpState>) -> Response {
    let report = state.readiness.check().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report.to_json())).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Reads the body within [`MAX_BODY`].
async fn read_body(path: &str, headers: &HeaderMap, body: Body) -> Result<Bytes, HttpError> {
    let declared = header(headers, "content-length").and_then(|l| l.parse::<usize>().ok());
    if declared.is_some_and(|l| l > MAX_BODY) {
        tracing::warn!(path, length = declared, "request refused: body too large");
        return Err(HttpError::TooLarge(MAX_BODY));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            tracing::warn!(path, "request refused: body too large");
            HttpError::TooLarge(MAX_BODY)
        } else if server::is_body_timeout(&e) {
            tracing::warn!(path, "request refused: the body did not arrive in time");
            HttpError::TimedOut
        } else {
            HttpError::BadRequest("cannot read the request body".into())
        }
    })?;
    Ok(bytes)
}

/// Reads the body within [`MAX_BODY`] and checks Slack's signature over it.
async fn verified(
    state: &HttpState,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, Arc<Inbound>), HttpError> {
    let slack = slack_endpoints(state)?;
    let bytes = read_body(path, headers, body).await?;
    let inbound = verify_slack(slack, path, headers, &bytes)?;
    Ok((bytes, inbound))
}

fn slack_endpoints(state: &HttpState) -> Result<&SlackEndpoints, HttpError> {
    state
        .slack
        .as_ref()
        .ok_or_else(|| HttpError::Unavailable("Slack is not configured".into()))
}

/// Checks Slack's signature over a body already read.
fn verify_slack(
    slack: &SlackEndpoints,
    path: &str,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<Arc<Inbound>, HttpError> {
    let now_secs = slack.clock.now().as_millis().div_euclid(1000);
    verify::verify(
        slack.signing_secret.expose().as_bytes(),
        header(headers, "x-slack-request-timestamp"),
        header(headers, "x-slack-signature"),
        bytes,
        now_secs,
    )
    .map_err(|e| {
        tracing::warn!(path, reason = %e, "request refused: not signed by Slack");
        HttpError::Unauthorized(e)
    })?;
    if let Some(retry) = header(headers, "x-slack-retry-num") {
        tracing::info!(
            path,
            retry,
            reason = header(headers, "x-slack-retry-reason").unwrap_or("-"),
            "Slack redelivery"
        );
    }
    Ok(slack.inbound.clone())
}

fn answer(ack: Ack) -> Response {
    match ack {
        Ack::Empty => StatusCode::OK.into_response(),
        Ack::Json(v) => Json(v).into_response(),
        // The adapter logged which id did not match.
        Ack::Refused => HttpError::Foreign.into_response(),
    }
}

async fn commands(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    const PATH: &str = "/slack/commands";
    let slack = slack_endpoints(&state)?;
    let bytes = read_body(PATH, &headers, body).await?;
    // Slack checks the certificate of a slash command's URL with a POST of
    // `ssl_check=1`, which may come unsigned, and wants a 200 with nothing in
    // it. Such a request carries no command, so answering it acts on nothing.
    if is_ssl_check(&bytes) {
        return Ok(StatusCode::OK.into_response());
    }
    let inbound = verify_slack(slack, PATH, &headers, &bytes)?;
    let cmd: SlashCommand = serde_urlencoded::from_bytes(&bytes)
        .map_err(|_| HttpError::BadRequest("not a slash command payload".into()))?;
    Ok(answer(inbound.command(cmd, Answer::InlineOrLater).await))
}

/// Whether a form body is Slack's certificate check (`ssl_check=1`).
fn is_ssl_check(bytes: &[u8]) -> bool {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes)
        .is_ok_and(|form| form.iter().any(|(k, v)| k == "ssl_check" && v == "1"))
}

#[derive(Deserialize)]
struct InteractionForm {
    payload: String,
}

async fn interactions(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let (bytes, inbound) = verified(&state, "/slack/interactions", &headers, body).await?;
    let form: InteractionForm = serde_urlencoded::from_bytes(&bytes)
        .map_err(|_| HttpError::BadRequest("no payload field".into()))?;
    let interaction: Interaction = serde_json::from_str(&form.payload)
        .map_err(|_| HttpError::BadRequest("payload is not an interaction".into()))?;
    Ok(answer(inbound.interaction(interaction).await))
}

async fn events(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let (bytes, inbound) = verified(&state, "/slack/events", &headers, body).await?;
    let event: EventBody = serde_json::from_slice(&bytes)
        .map_err(|_| HttpError::BadRequest("not an Events API payload".into()))?;
    Ok(answer(inbound.event(event).await))
}

/// `POST /discord/interactions`: checks Discord's Ed25519 signature, then
/// answers the interaction (PING with PONG).
async fn discord_interactions(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    const PATH: &str = "/discord/interactions";
    let Some(discord) = &state.discord else {
        return Err(HttpError::Unavailable("Discord is not configured".into()));
    };
    let bytes = read_body(PATH, &headers, body).await?;
    let now_secs = discord.clock.now().as_millis().div_euclid(1000);
    verify::verify_discord(
        &discord.public_key,
        header(&headers, "x-signature-timestamp"),
        header(&headers, "x-signature-ed25519"),
        &bytes,
        now_secs,
    )
    .map_err(|e| {
        tracing::warn!(path = PATH, reason = %e, "request refused: not signed by Discord");
        HttpError::Unauthorized(e)
    })?;
    let interaction: DiscordInteraction = serde_json::from_slice(&bytes)
        .map_err(|_| HttpError::BadRequest("not an interaction".into()))?;
    let inbound = discord.inbound.clone();
    let (answer, pending) = inbound.interaction(interaction).await;
    if let Some(p) = pending {
        tokio::spawn(async move { inbound.finish(p).await });
    }
    Ok(Json(answer).into_response())
}
