//! The HTTP API for the `passport` client, under [`PREFIX`] (`/api/v1`):
//! signing in through chat, the caller's own requests, certificates and
//! Session Manager credentials. The wire types are `crate::api`'s; the
//! document describing them is [`openapi`](super::openapi).
//!
//! Every call but the sign-in ones carries `Authorization: Bearer pp_…`; the
//! caller is the person the token is bound to, on the chat surface it was
//! bound on. Commands run through [`Engine::execute`], so the API has the
//! same grammar values, policy, checks and chat notices as chat.
//!
//! **Invariant:** someone else's request answers 404 exactly like a missing
//! one, so the API tells nobody which requests exist.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::api::{
    Allows, ApiErrorBody, CertificateIssued, CertificateRequest, Credentials, Extend, InstanceView,
    LoginPoll, LoginStart, LoginStarted, LoginStatus, Me, NewRequest, RequestList, RequestView,
    PREFIX,
};
use crate::app::engine::{AppError, Engine};
use crate::app::signin::{ApiSession, Polled, SignInError, POLL_INTERVAL_SECONDS};
use crate::domain::command::{Command, ListFilter, RequestSpec};
use crate::domain::request::{AccessRequest, GrantState, Platform, RefusalKind, RequestState};
use crate::domain::signin::ChatIdentity;
use crate::domain::values::{
    GrantDuration, InputError, InstanceId, InstanceIds, Reason, RequestId, Ticket,
};

/// What went wrong with an API call. [`IntoResponse`] is the one place that
/// turns it into a status and an [`ApiErrorBody`]; internals stay in the log.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("request body is over {0} bytes: send less")]
    TooLarge(usize),
    #[error("send the body as JSON, with content-type: application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    TooMany(String),
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Gone(_) => StatusCode::GONE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn not_found(id: &str) -> Self {
        Self::NotFound(format!(
            "{id} does not exist or is not yours: `GET {PREFIX}/requests` lists your requests"
        ))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status(),
            Json(ApiErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if matches!(self, Self::Unauthorized(_)) {
            res.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        Self::BadRequest(e.0)
    }
}

const DATABASE_UNAVAILABLE: &str =
    "Passport cannot reach its database right now: try again in a minute";

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Input(e) => Self::BadRequest(e.0),
            AppError::Refused(RefusalKind::NotAllowed(why)) => Self::Forbidden(why),
            AppError::Refused(RefusalKind::WrongState(why) | RefusalKind::AlreadyDone(why)) => {
                Self::Conflict(why)
            }
            AppError::NotFound(id) | AppError::NotYours(id, _) => Self::not_found(&id.to_string()),
            AppError::Limited(why) => Self::TooMany(why),
            AppError::Unavailable(why) => Self::Unavailable(why),
            AppError::Store(e) => {
                tracing::error!(error = %e, "store failure in an API call");
                Self::Unavailable(DATABASE_UNAVAILABLE.into())
            }
        }
    }
}

impl From<SignInError> for ApiError {
    fn from(e: SignInError) -> Self {
        match e {
            SignInError::Input(e) => Self::BadRequest(e.0),
            SignInError::Limited(why) => Self::TooMany(why),
            SignInError::NotFound => Self::NotFound(SignInError::NotFound.to_string()),
            SignInError::Gone(why) => Self::Gone(why),
            SignInError::Unauthorized(why) => Self::Unauthorized(why),
            SignInError::Store(e) => {
                tracing::error!(error = %e, "store failure in a sign-in call");
                Self::Unavailable(DATABASE_UNAVAILABLE.into())
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The API's routes, relative to [`PREFIX`].
pub fn routes(engine: Arc<Engine>) -> Router {
    let p = |path: &str| path.to_owned();
    Router::new()
        .route(&p("/openapi.json"), get(openapi))
        .route(&p("/login"), post(login_start))
        .route(&p("/login/poll"), post(login_poll))
        .route(&p("/logout"), post(logout))
        .route(&p("/me"), get(me))
        .route(&p("/requests"), get(list).post(create))
        .route(&p("/requests/{id}"), get(show))
        .route(&p("/requests/{id}/extend"), post(extend))
        .route(
            &p("/requests/{id}/complete"),
            post(|s: State<_>, h: HeaderMap, id: Path<_>| simply(s, h, id, Command::Complete)),
        )
        .route(
            &p("/requests/{id}/cancel"),
            post(|s: State<_>, h: HeaderMap, id: Path<_>| simply(s, h, id, Command::Cancel)),
        )
        .route(&p("/requests/{id}/certificate"), post(certificate))
        .route(&p("/requests/{id}/credentials"), post(credentials))
        .fallback(not_found)
        .with_state(engine)
}

async fn not_found() -> ApiError {
    ApiError::NotFound(format!(
        "no such API path: `GET {PREFIX}/openapi.json` describes them"
    ))
}

async fn openapi() -> Response {
    Json(super::openapi::document()).into_response()
}

// ---------------------------------------------------------------------------
// Reading requests

/// Reads a JSON body within [`MAX_BODY`], refusing other content types.
async fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> ApiResult<T> {
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes = super::read_body("/api/v1", headers, body)
        .await
        .map_err(|e| match e {
            super::HttpError::TooLarge(n) => ApiError::TooLarge(n),
            _ => ApiError::BadRequest("cannot read the request body".into()),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        // serde's message names the field and what it expected; its position
        // in the body is of no use to a person.
        let text = e.to_string();
        let text = text.split(" at line ").next().unwrap_or(&text).to_owned();
        ApiError::BadRequest(format!("the body is not what this call takes: {text}"))
    })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn session(engine: &Engine, headers: &HeaderMap) -> ApiResult<ApiSession> {
    Ok(engine.authenticate(bearer(headers)).await?)
}

/// `AR-12` (or `12`), or the same 404 as a missing request.
fn request_id(text: &str) -> ApiResult<RequestId> {
    let with_prefix = if text.bytes().all(|b| b.is_ascii_digit()) {
        format!("AR-{text}")
    } else {
        text.to_owned()
    };
    RequestId::parse(&with_prefix).map_err(|_| ApiError::not_found(text))
}

/// The caller's own request `id`: anyone else's answers like a missing one.
async fn own_request(
    engine: &Engine,
    session: &ApiSession,
    id: RequestId,
) -> ApiResult<AccessRequest> {
    match engine.store().get(id).await {
        Ok(Some(req)) if req.is_requester(&session.actor.person.id) => Ok(req),
        Ok(_) => Err(ApiError::not_found(&id.to_string())),
        Err(e) => Err(AppError::from(e).into()),
    }
}

// ---------------------------------------------------------------------------
// Views

fn platform(p: Platform) -> &'static str {
    match p {
        Platform::Linux => "linux",
        Platform::Windows => "windows",
    }
}

fn grant_status(state: GrantState) -> &'static str {
    match state {
        GrantState::Active => "granted",
        GrantState::Pending | GrantState::Provisioning => "pending",
        GrantState::Failed => "failed",
        GrantState::Removing | GrantState::Removed | GrantState::RemovalFailed => "removed",
    }
}

/// The API's view of a request, with `message` the answer chat would give.
pub fn view(req: &AccessRequest, message: Option<String>) -> RequestView {
    let instances = req
        .instances
        .iter()
        .map(|i| InstanceView {
            id: i.id.to_string(),
            name: i.name.clone(),
            platform: platform(i.platform).into(),
            status: req
                .grants
                .iter()
                .find(|g| g.instance == i.id)
                .map(|g| grant_status(g.state))
                .unwrap_or("pending")
                .into(),
        })
        .collect();
    let linux = req.instances.iter().any(|i| i.platform == Platform::Linux);
    let windows = req
        .instances
        .iter()
        .any(|i| i.platform == Platform::Windows);
    RequestView {
        id: req.id.to_string(),
        state: req.state.as_str().into(),
        username: req.username.to_string(),
        instances,
        duration: req.duration.to_string(),
        ticket: req.ticket.as_str().into(),
        reason: req.reason.as_ref().map(|r| r.as_str().to_owned()),
        created_at: req.created_at.rfc3339(),
        expires_at: req.expires_at.map(|t| t.rfc3339()),
        allows: Allows {
            ssh: linux,
            port_forwarding: req.requirement.port_forwarding || windows,
            remote_port_forwarding: req.requirement.remote_port_forwarding,
        },
        message,
    }
}

fn me_of(owner: &ChatIdentity, expires_at: crate::domain::time::Timestamp) -> Me {
    Me {
        id: owner.person.id.to_string(),
        handle: owner.person.handle.clone(),
        surface: owner.surface.clone(),
        token_expires_at: expires_at.rfc3339(),
    }
}

// ---------------------------------------------------------------------------
// Signing in

async fn login_start(State(engine): State<Arc<Engine>>, req: Request) -> ApiResult<Response> {
    let address = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let (parts, body) = req.into_parts();
    let start: LoginStart = json_body(&parts.headers, body).await?;
    let started = engine
        .start_login(&start.host, &start.client, &address)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(LoginStarted {
            login_id: started.id.to_string(),
            poll_secret: started.secret.expose().to_owned(),
            code: started.code.to_string(),
            expires_at: started.expires_at.rfc3339(),
            poll_interval_seconds: POLL_INTERVAL_SECONDS,
        }),
    )
        .into_response())
}

async fn login_poll(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<LoginStatus>> {
    let poll: LoginPoll = json_body(&headers, body).await?;
    Ok(Json(
        match engine.poll_login(&poll.login_id, &poll.poll_secret).await? {
            Polled::Pending { expires_at } => LoginStatus::Pending {
                expires_at: expires_at.rfc3339(),
            },
            Polled::Confirmed {
                token,
                expires_at,
                owner,
            } => LoginStatus::Confirmed {
                token: token.expose().to_owned(),
                expires_at: expires_at.rfc3339(),
                user: me_of(&owner, expires_at),
            },
        },
    ))
}

async fn logout(State(engine): State<Arc<Engine>>, headers: HeaderMap) -> ApiResult<StatusCode> {
    let session = session(&engine, &headers).await?;
    engine.logout_session(&session).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(State(engine): State<Arc<Engine>>, headers: HeaderMap) -> ApiResult<Json<Me>> {
    let session = session(&engine, &headers).await?;
    let owner = ChatIdentity {
        person: session.actor.person.clone(),
        surface: session.actor.surface.clone(),
    };
    Ok(Json(me_of(&owner, session.expires_at)))
}

// ---------------------------------------------------------------------------
// Requests

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    state: Option<String>,
}

async fn list(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<RequestList>> {
    let session = session(&engine, &headers).await?;
    let Query(query) = query.map_err(|_| {
        ApiError::BadRequest(
            "unknown query: the only one is `?state=active` (or another state)".into(),
        )
    })?;
    let state = match query.state.as_deref() {
        None => None,
        Some(s) => Some(RequestState::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown state {}: use one of {}",
                crate::domain::values::quote(s),
                RequestState::ALL.map(RequestState::as_str).join(", ")
            ))
        })?),
    };
    let rows = engine
        .store()
        .list(ListFilter::Mine, &session.actor.person.id, 200)
        .await
        .map_err(AppError::from)?;
    Ok(Json(RequestList {
        requests: rows
            .iter()
            .filter(|r| r.is_requester(&session.actor.person.id))
            .filter(|r| state.is_none_or(|s| r.state == s))
            .map(|r| view(r, None))
            .collect(),
    }))
}

fn spec_of(engine: &Engine, new: &NewRequest) -> Result<RequestSpec, InputError> {
    let grammar = engine.grammar();
    let instances = InstanceIds::parse(
        new.instances.iter().map(String::as_str),
        grammar.max_instances,
    )?;
    let duration = if new.duration.trim().is_empty() {
        GrantDuration::within(grammar.durations.default, &grammar.durations)?
    } else {
        GrantDuration::parse(&new.duration, &grammar.durations)?
    };
    let ticket = Ticket::parse(&new.ticket, &grammar.tickets)?;
    let reason = match &new.reason {
        Some(r) => Reason::parse(r)?,
        None => None,
    };
    Ok(RequestSpec {
        instances,
        duration,
        ticket,
        reason,
    })
}

async fn create(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let session = session(&engine, &headers).await?;
    let new: NewRequest = json_body(&headers, body).await?;
    let spec = spec_of(&engine, &new)?;
    let (message, id) = engine
        .execute(&session.actor, Command::Request(spec))
        .await?;
    let id = id.ok_or_else(|| ApiError::Unavailable(DATABASE_UNAVAILABLE.into()))?;
    let req = own_request(&engine, &session, id).await?;
    Ok((StatusCode::CREATED, Json(view(&req, Some(message)))).into_response())
}

async fn show(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<RequestView>> {
    let session = session(&engine, &headers).await?;
    let req = own_request(&engine, &session, request_id(&id)?).await?;
    Ok(Json(view(&req, None)))
}

/// Runs `command` on the caller's own request `id` and answers its view.
async fn act(
    engine: &Engine,
    session: &ApiSession,
    id: RequestId,
    command: Command,
) -> ApiResult<Json<RequestView>> {
    own_request(engine, session, id).await?;
    let (message, _) = engine.execute(&session.actor, command).await?;
    let req = own_request(engine, session, id).await?;
    Ok(Json(view(&req, Some(message))))
}

async fn extend(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Json<RequestView>> {
    let session = session(&engine, &headers).await?;
    let id = request_id(&id)?;
    let extend: Extend = json_body(&headers, body).await?;
    let by = engine.grammar().extension(&extend.duration)?;
    act(&engine, &session, id, Command::Extend(id, by)).await
}

/// `complete` and `cancel`: the commands that name the request and nothing else.
async fn simply(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    command: fn(RequestId) -> Command,
) -> ApiResult<Json<RequestView>> {
    let session = session(&engine, &headers).await?;
    let id = request_id(&id)?;
    act(&engine, &session, id, command(id)).await
}

async fn certificate(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Json<CertificateIssued>> {
    let session = session(&engine, &headers).await?;
    let id = request_id(&id)?;
    let asked: CertificateRequest = json_body(&headers, body).await?;
    let issued = engine
        .certificate(&session.actor, id, Some(&asked.public_key))
        .await?;
    Ok(Json(CertificateIssued {
        certificate: issued.certificate,
        principal: issued.principal,
        serial: issued.serial,
        valid_before: issued.valid_before.rfc3339(),
    }))
}

#[derive(Debug, Deserialize)]
struct CredentialsQuery {
    #[serde(default)]
    instance: Option<String>,
}

async fn credentials(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<CredentialsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Credentials>> {
    let session = session(&engine, &headers).await?;
    let id = request_id(&id)?;
    let Query(query) = query.map_err(|_| {
        ApiError::BadRequest(
            "unknown query: the only one is `?instance=i-…` (one instance of the request)".into(),
        )
    })?;
    let only = match query.instance.as_deref() {
        None => None,
        Some(text) => Some(InstanceId::parse(text)?),
    };
    let (c, access_ends_at) = engine
        .session_credentials(&session.actor, id, only.as_ref())
        .await?;
    Ok(Json(Credentials {
        access_key_id: c.access_key_id,
        secret_access_key: c.secret_access_key.expose_secret().to_owned(),
        session_token: c.session_token.expose_secret().to_owned(),
        expiration: c.expiration.rfc3339(),
        region: c.region,
        access_ends_at: access_ends_at.rfc3339(),
    }))
}
