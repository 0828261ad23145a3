//! The HTTP server: Slack's endpoints, Discord's interactions endpoint,
//! `/healthz` (alive), `/readyz` (the database takes writes), `/metrics`, and
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

pub use error::HttpError;

/// Slack's and Discord's payloads are a few KiB; anything much larger is not from them.
pub const MAX_BODY: usize = 64 * 1024;

/// What `[http]` in `passport.toml` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and port the HTTP server listens on.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
        }
    }
}

/// The validated `[http]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    pub listen: SocketAddr,
}

impl HttpConfig {
    pub fn validate(&self) -> Result<HttpSettings, Vec<String>> {
        match self.listen.trim().parse() {
            Ok(listen) => Ok(HttpSettings { listen }),
            Err(_) => Err(vec![format!(
                "http.listen: {:?} is not an address and port: use a form like 0.0.0.0:8080 or 127.0.0.1:3000",
                self.listen
            )]),
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
        use crate::domain::time::Span;
        match crate::domain::values::parse_span(&self.token_ttl) {
            Some(ttl) if ttl >= Span::from_minutes(5) && ttl <= Span::from_hours(30 * 24) => {
                Ok(ApiSettings { token_ttl: ttl })
            }
            _ => Err(vec![format!(
                "api.token_ttl: {:?} is not a lifetime for API tokens: use forms like 30m, 12h or 168h (from 5m to 720h)",
                self.token_ttl
            )]),
        }
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
}

pub fn router(state: HttpState) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(metrics::metrics).with_state(metrics::MetricsState {
                store: state.store.clone(),
                clock: state.clock.clone(),
            }),
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

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The API records the address a sign-in starts from.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
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

/// How long `/readyz` waits for the database writer.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Readiness: the database's writer commits a transaction within
/// [`READY_WITHIN`]. A pod whose writer is wedged or whose database is locked
/// by another process is taken out of the Service until it recovers.
async fn readyz(State(state): State<HttpState>) -> Result<Response, HttpError> {
    match tokio::time::timeout(READY_WITHIN, state.store.ping_writer()).await {
        Ok(Ok(())) => Ok(Json(json!({ "status": "ready" })).into_response()),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "readiness check cannot write to the database");
            Err(HttpError::Unavailable("database not writable".into()))
        }
        Err(_) => {
            tracing::warn!("readiness check: the database writer did not answer within 2s");
            Err(HttpError::Unavailable("database writer busy".into()))
        }
    }
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
