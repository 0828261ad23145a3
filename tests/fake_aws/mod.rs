//! A fake AWS endpoint on 127.0.0.1 for the real SDK: it records every call
//! and answers each with what the test decides, in the wire format of the
//! service: JSON errors (`__type`, `message`) for the JSON protocol services
//! (SSM), XML `ErrorResponse`s for the query protocol (STS). It shows what
//! moto cannot: AWS refusing a call with its own wordy message, which names
//! the account, role ARNs and carries an encoded authorization message.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use aws_config::SdkConfig;
use aws_sdk_ssm::config::Credentials;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use passport::adapters::aws::sdk::sdk_loader;
use passport::adapters::aws::AwsSettings;

/// What AWS says when the bot's role may not do something: the account,
/// the bot's role, the resource and an encoded authorization message, none
/// of which a requester may see.
pub const REFUSAL: &str = "User: arn:aws:sts::123456789012:assumed-role/passport-bot/i-0feedfacefeedface is not authorized to perform: ssm:SendCommand on resource: arn:aws:ssm:eu-west-1:123456789012:document/Passport-GrantLinux because no identity-based policy allows the ssm:SendCommand action. Encoded authorization failure message: 4Zbq8nQkXyPtW2vRr7Lk";

/// What STS says when the bot's role may not assume the session role.
pub const STS_REFUSAL: &str = "User: arn:aws:sts::123456789012:assumed-role/passport-bot/i-0feedfacefeedface is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::123456789012:role/ops/passport-session";

/// Pieces of the refusals above that must never reach a person.
pub const LEAKS: [&str; 6] = [
    "123456789012",
    "arn:aws",
    "passport-bot",
    "passport-session",
    "Encoded authorization",
    "4Zbq8nQkXyPtW2vRr7Lk",
];

/// One call as it arrived.
#[derive(Debug, Clone)]
pub struct Call {
    /// `X-Amz-Target` of the JSON protocol, e.g. `AmazonSSM.SendCommand`.
    pub target: Option<String>,
    pub body: String,
}

impl Call {
    /// The operation: the JSON protocol's target, else the query's `Action`.
    pub fn operation(&self) -> String {
        if let Some(target) = &self.target {
            return target.rsplit('.').next().unwrap_or_default().to_owned();
        }
        serde_urlencoded::from_str::<Vec<(String, String)>>(&self.body)
            .unwrap_or_default()
            .into_iter()
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| v)
            .unwrap_or_default()
    }
}

/// An answer in AWS's wire format.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    /// A JSON protocol (SSM) error.
    pub fn json_error(status: u16, code: &str, message: &str) -> Self {
        Self {
            status,
            content_type: "application/x-amz-json-1.1",
            body: serde_json::json!({ "__type": code, "message": message }).to_string(),
        }
    }

    /// A query protocol (STS) error.
    pub fn query_error(status: u16, code: &str, message: &str) -> Self {
        Self {
            status,
            content_type: "text/xml",
            body: format!(
                "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
                 <Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>\
                 <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>"
            ),
        }
    }
}

type Answering = Arc<dyn Fn(&Call) -> Answer + Send + Sync>;

#[derive(Clone)]
struct Shared {
    calls: Arc<Mutex<Vec<Call>>>,
    answer: Answering,
}

#[derive(Clone)]
pub struct FakeAws {
    pub url: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeAws {
    /// Listens on a free loopback port and answers every call with `answer`.
    pub async fn start(answer: impl Fn(&Call) -> Answer + Send + Sync + 'static) -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            calls: calls.clone(),
            answer: Arc::new(answer),
        };
        let router = Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { url, calls }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The settings of an AWS provisioner or broker talking to this endpoint.
    pub fn settings(&self) -> AwsSettings {
        AwsSettings {
            region: Some("eu-west-1".into()),
            endpoint_url: Some(self.url.clone()),
            // DescribeInstanceInformation is not what these tests are about.
            check_ssm_online: false,
            sdk_attempts: 1,
            retries: 0,
            ..AwsSettings::default()
        }
    }

    /// The SDK configuration for [`Self::settings`], with static credentials.
    pub async fn sdk(&self) -> SdkConfig {
        sdk_loader(&self.settings())
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .load()
            .await
    }
}

async fn handle(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let call = Call {
        target: headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    shared.calls.lock().unwrap().push(call.clone());
    let answer = (shared.answer)(&call);
    (
        StatusCode::from_u16(answer.status).unwrap(),
        [("content-type", answer.content_type)],
        answer.body,
    )
        .into_response()
}
