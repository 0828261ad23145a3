//! The one mapping from what went wrong with an HTTP request to its status.
//! Bodies say what was wrong in a few words and never show internals.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::verify::VerifyError;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("request body is over {0} bytes")]
    TooLarge(usize),
    #[error("request signature refused: {0}")]
    Unauthorized(#[from] VerifyError),
    /// Signed, but from another Slack workspace, enterprise or app.
    #[error("request refused: not from the Slack workspace and app Passport serves")]
    Foreign,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the request body did not arrive in time")]
    TimedOut,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            HttpError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {limit} bytes"),
            ),
            // Which check failed is logged, not told to the caller.
            HttpError::Unauthorized(_) => {
                (StatusCode::UNAUTHORIZED, "invalid request signature".into())
            }
            HttpError::Foreign => (StatusCode::UNAUTHORIZED, self.to_string()),
            HttpError::BadRequest(what) => (StatusCode::BAD_REQUEST, what.clone()),
            HttpError::Unavailable(what) => (StatusCode::SERVICE_UNAVAILABLE, what.clone()),
            HttpError::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time: send it whole, at once".into(),
            ),
        };
        (status, body).into_response()
    }
}
