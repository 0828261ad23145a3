//! Talking to the application under test over real HTTP: its router served
//! on a loopback port, and a plain client that answers status and body.

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// What the application answered: the status and the body as text.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// The body as JSON, or `null` when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Serves `router` with Passport's HTTP server on 127.0.0.1, port 0; answers
/// its base URL and the serving task.
pub async fn serve(router: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        passport::http::serve(listener, router, std::future::pending())
            .await
            .unwrap();
    });
    (base, server)
}

/// `GET url`.
pub async fn get(http: &HttpClient, url: &str) -> Answer {
    request(http, "GET", url, None, "", &[]).await
}

/// `POST url` with `body` of `content_type` and the extra `headers`.
pub async fn post(
    http: &HttpClient,
    url: &str,
    content_type: &str,
    body: &str,
    headers: &[(&str, String)],
) -> Answer {
    request(http, "POST", url, Some(content_type), body, headers).await
}

/// `method url` with `body`, of `content_type` when given, and the extra `headers`.
pub async fn request(
    http: &HttpClient,
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &str,
    headers: &[(&str, String)],
) -> Answer {
    let mut req = axum::http::Request::builder().method(method).uri(url);
    if let Some(content_type) = content_type {
        req = req.header("content-type", content_type);
    }
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let res = http.request(req).await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}
