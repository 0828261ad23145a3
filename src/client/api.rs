//! The client side of `/api/v1`: one `reqwest` client (rustls) with timeouts
//! on every call, the wire types of [`crate::api`], and errors a person can
//! act on. The token is sent as a bearer header and appears nowhere else.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    ApiErrorBody, CertificateIssued, CertificateRequest, Credentials, Extend, LoginPoll,
    LoginStart, LoginStarted, LoginStatus, Me, NewRequest, RequestList, RequestView, PREFIX,
};
use crate::domain::values::RequestId;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the Passport server at {server} ({detail}): check the address and your network, then try again")]
    Unreachable { server: String, detail: String },
    #[error("the Passport server at {server} no longer accepts your sign-in (it expired or was revoked): run `passport login {server}` again")]
    SignedOut { server: String },
    /// 404: the thing does not exist, or is someone else's.
    #[error("{0}")]
    NotFound(String),
    /// 410 while signing in: the code expired, was refused or was used.
    #[error("{0}")]
    Gone(String),
    /// Any other refusal, with the server's words.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("the Passport server at {server} gave an answer this client does not understand ({detail}): is it the same version as `passport --version`?")]
    Protocol { server: String, detail: String },
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::NotFound(_) => Some(404),
            ApiError::Gone(_) => Some(410),
            ApiError::SignedOut { .. } => Some(401),
            ApiError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A connection to one Passport server, signed in or not.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    server: String,
    token: Option<SecretString>,
}

impl Api {
    /// `server` is the base URL as the person typed it (without `/api/v1`).
    pub fn new(server: &str, token: Option<SecretString>) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .user_agent(concat!("passport/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Unreachable {
                server: server.to_owned(),
                detail: format!("cannot set up TLS: {e}"),
            })?;
        Ok(Self {
            http,
            server: server.trim_end_matches('/').to_owned(),
            token,
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        let url = format!("{}{PREFIX}{path}", self.server);
        let mut request = self
            .http
            .request(method, &url)
            .header("accept", "application/json");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body).map_err(|e| self.protocol(e))?;
            request = request
                .header("content-type", "application/json")
                .body(bytes);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        if status.is_success() {
            // 204 No Content (logout) has no body: read it as JSON null.
            let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(body).map_err(|e| self.protocol(e));
        }
        let message = serde_json::from_slice::<ApiErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| {
                format!(
                    "the Passport server answered {status}{}",
                    status
                        .canonical_reason()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                )
            });
        Err(match status {
            StatusCode::UNAUTHORIZED if self.token.is_some() => ApiError::SignedOut {
                server: self.server.clone(),
            },
            StatusCode::NOT_FOUND => ApiError::NotFound(message),
            StatusCode::GONE => ApiError::Gone(message),
            _ => ApiError::Refused {
                status: status.as_u16(),
                message,
            },
        })
    }

    fn unreachable(&self, e: &reqwest::Error) -> ApiError {
        // reqwest's text names the URL, never a header, so it holds no token.
        let detail = if e.is_timeout() {
            "no answer in time".to_owned()
        } else if e.is_connect() {
            "connection failed".to_owned()
        } else {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        };
        ApiError::Unreachable {
            server: self.server.clone(),
            detail,
        }
    }

    fn protocol(&self, e: impl std::fmt::Display) -> ApiError {
        ApiError::Protocol {
            server: self.server.clone(),
            detail: e.to_string(),
        }
    }

    pub async fn login_start(&self, start: &LoginStart) -> Result<LoginStarted, ApiError> {
        self.call(Method::POST, "/login", Some(start)).await
    }

    pub async fn login_poll(&self, poll: &LoginPoll) -> Result<LoginStatus, ApiError> {
        self.call(Method::POST, "/login/poll", Some(poll)).await
    }

    pub async fn logout(&self) -> Result<(), ApiError> {
        self.call::<(), serde_json::Value>(Method::POST, "/logout", None)
            .await
            .map(|_| ())
    }

    pub async fn me(&self) -> Result<Me, ApiError> {
        self.call::<(), _>(Method::GET, "/me", None).await
    }

    pub async fn requests(&self) -> Result<RequestList, ApiError> {
        self.call::<(), _>(Method::GET, "/requests", None).await
    }

    pub async fn request(&self, id: RequestId) -> Result<RequestView, ApiError> {
        self.call::<(), _>(Method::GET, &format!("/requests/{id}"), None)
            .await
    }

    pub async fn create(&self, new: &NewRequest) -> Result<RequestView, ApiError> {
        self.call(Method::POST, "/requests", Some(new)).await
    }

    pub async fn extend(&self, id: RequestId, by: &Extend) -> Result<RequestView, ApiError> {
        self.call(Method::POST, &format!("/requests/{id}/extend"), Some(by))
            .await
    }

    /// `complete` or `cancel`.
    pub async fn act(&self, id: RequestId, action: &str) -> Result<RequestView, ApiError> {
        self.call::<(), _>(Method::POST, &format!("/requests/{id}/{action}"), None)
            .await
    }

    pub async fn certificate(
        &self,
        id: RequestId,
        request: &CertificateRequest,
    ) -> Result<CertificateIssued, ApiError> {
        self.call(
            Method::POST,
            &format!("/requests/{id}/certificate"),
            Some(request),
        )
        .await
    }

    /// Credentials for `instance` only: each set names just the instance it
    /// is for, so a request of any size fits STS's session-policy limit.
    pub async fn credentials(
        &self,
        id: RequestId,
        instance: &str,
    ) -> Result<Credentials, ApiError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/requests/{id}/credentials?instance={instance}"),
            None,
        )
        .await
    }
}

/// Checks the server address a person typed: an `https` URL, or `http` on
/// this machine only (a token never crosses a network in clear text).
pub fn parse_server(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text.trim()).map_err(|_| {
        format!("{text:?} is not a server address: use the form https://passport.example.com")
    })?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "{text:?} is plain http: use https:// (only a server on this machine may use http)"
            ))
        }
        other => {
            return Err(format!(
                "{other}: is not a server address scheme: use the form https://passport.example.com"
            ))
        }
    }
    if url.host().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{text:?} is not a server address: use the form https://passport.example.com"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{text:?} has a query or fragment: give only the server's address"
        ));
    }
    let mut base = url.to_string();
    while base.ends_with('/') {
        base.pop();
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_are_https_or_local_http() {
        assert_eq!(
            parse_server("https://passport.example.com/").as_deref(),
            Ok("https://passport.example.com")
        );
        assert_eq!(
            parse_server("http://127.0.0.1:8080").as_deref(),
            Ok("http://127.0.0.1:8080")
        );
        assert_eq!(
            parse_server("https://example.com/passport/").as_deref(),
            Ok("https://example.com/passport")
        );
        for bad in [
            "http://passport.example.com",
            "passport.example.com",
            "ftp://x",
            "https://u:p@x.example.com",
            "https://x.example.com/?a=b",
        ] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
    }
}
