//! The wire format of Passport's HTTP API (`/api/v1`), shared by the server
//! (`http::api`) and the `passport` client (`client`), so the two cannot
//! drift apart. Plain serde types: no IO here.
//!
//! Times are RFC 3339 strings in UTC (`2026-12-01T19:30:00Z`); request ids are
//! `AR-n`; durations use the chat grammar (`30m`, `2h`, `1h30m`).

use serde::{Deserialize, Serialize};

/// Every path of the API starts with this.
pub const PREFIX: &str = "/api/v1";

/// The body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// Says what was wrong and what to do, for a person to read.
    pub error: String,
}

// ---------------------------------------------------------------------------
// Signing in: POST /api/v1/login, POST /api/v1/login/poll, POST /api/v1/logout

/// `POST /api/v1/login` (no token): a terminal starts signing in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginStart {
    /// The client machine's host name, shown to the person before they confirm.
    pub host: String,
    /// `passport/<version>`.
    pub client: String,
}

/// Answer to [`LoginStart`] (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginStarted {
    /// Identifies this sign-in when polling.
    pub login_id: String,
    /// Known only to the terminal: a poll must carry it, so the code alone
    /// (which is typed in chat) never yields the token.
    pub poll_secret: String,
    /// What the person types: `/passport login CODE`.
    pub code: String,
    pub expires_at: String,
    /// How long the client waits between polls.
    pub poll_interval_seconds: u64,
}

/// `POST /api/v1/login/poll` (no token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginPoll {
    pub login_id: String,
    pub poll_secret: String,
}

/// Answer to [`LoginPoll`]: 200 with `pending` or `confirmed` (the token is
/// handed out exactly once); 410 with an [`ApiErrorBody`] once the code
/// expired, was refused or its token was already collected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LoginStatus {
    Pending {
        expires_at: String,
    },
    Confirmed {
        token: String,
        expires_at: String,
        user: Me,
    },
}

/// `GET /api/v1/me`: who the token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    /// The chat user id (`U…` on Slack, a snowflake on Discord).
    pub id: String,
    pub handle: String,
    /// `slack` or `discord`.
    pub surface: String,
    /// When the token stops working.
    pub token_expires_at: String,
}

// ---------------------------------------------------------------------------
// Requests

/// `POST /api/v1/requests`: the same fields, grammar, policy and checks as
/// `/passport request i-… 2h ticket#123 reason` in chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRequest {
    pub instances: Vec<String>,
    pub duration: String,
    pub ticket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /api/v1/requests/{id}/extend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extend {
    pub duration: String,
}

/// One request as the API shows it to its requester.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestView {
    /// `AR-n`.
    pub id: String,
    /// `pending`, `approved`, `provisioning`, `active`, `completed`,
    /// `expired`, `revoked`, `denied`, `cancelled`, `approval_timed_out`, `failed`.
    pub state: String,
    /// The short-lived user on the instances (`pp-<handle>-<n>`).
    pub username: String,
    pub instances: Vec<InstanceView>,
    /// As asked, e.g. `2h`.
    pub duration: String,
    pub ticket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// What may be opened over Session Manager while the access lasts.
    pub allows: Allows,
    /// The answer chat would have given to the command that produced this
    /// view (create, extend, complete, cancel); absent on reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `linux` or `windows`.
    pub platform: String,
    /// Whether the user exists on it now: `granted`, `pending`, `failed`, `removed`.
    pub status: String,
}

/// What a request's rules allow over Session Manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Allows {
    pub ssh: bool,
    /// Forwarding a local port to a port on the instance.
    pub port_forwarding: bool,
    /// Forwarding to another host through the instance.
    pub remote_port_forwarding: bool,
}

/// `GET /api/v1/requests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestList {
    pub requests: Vec<RequestView>,
}

// ---------------------------------------------------------------------------
// Certificates and credentials

/// `POST /api/v1/requests/{id}/certificate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRequest {
    /// An OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub public_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateIssued {
    /// The OpenSSH certificate line (`ssh-ed25519-cert-v01@openssh.com …`).
    pub certificate: String,
    /// The user to log in as.
    pub principal: String,
    pub serial: u64,
    pub valid_before: String,
}

/// `POST /api/v1/requests/{id}/credentials`: AWS credentials that can only
/// open Session Manager sessions to this request's instances, until
/// `expiration` (never after the access ends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: String,
    pub region: String,
    /// The access's end: the client stops renewing here.
    pub access_ends_at: String,
}
