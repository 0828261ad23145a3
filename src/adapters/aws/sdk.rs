//! [`Ec2Api`], [`SsmApi`], [`SessionsApi`] and [`StsApi`] on the AWS SDK, and the SDK's configuration:
//! the usual credential chain, adaptive retries, an optional endpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, Region, SdkConfig};
use aws_sdk_ec2::types::Filter;
use aws_sdk_ssm::config::http::HttpResponse;
use aws_sdk_ssm::config::SharedHttpClient;
use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::types::{
    DocumentFormat, DocumentType, InstanceInformationStringFilter, SessionFilter, SessionFilterKey,
    SessionState,
};
use aws_smithy_http_client::tls;

use super::api::{
    ApiError, AssumeRoleRequest, AssumedCredentials, CommandRequest, DocumentState,
    DocumentVersions, Ec2Api, Ec2Instance, Invocation, InvocationStatus, ManagedInstance,
    SessionInfo, SessionsApi, SsmApi, StsApi,
};
use super::config::AwsSettings;
use crate::domain::request::Platform;
use crate::domain::values::InstanceId;

/// Values per filter EC2 accepts in one DescribeInstances call.
const EC2_FILTER_VALUES: usize = 200;
/// Instance ids per DescribeInstanceInformation call.
const SSM_FILTER_VALUES: usize = 50;

/// The SDK configuration for `settings`, before loading: the default
/// credential chain (environment, profile, web identity, container and
/// instance roles), adaptive retries and short per-attempt timeouts. Tests
/// add static credentials before calling `load`.
pub fn sdk_loader(settings: &AwsSettings) -> ConfigLoader {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(https_client())
        .retry_config(
            RetryConfig::adaptive()
                .with_max_attempts(settings.sdk_attempts)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        );
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    // Without an explicit endpoint the loader reads `AWS_ENDPOINT_URL` (and the
    // per-service `AWS_ENDPOINT_URL_SSM`/`_EC2`) and the profile's `endpoint_url`.
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader
}

/// The SDK's HTTP client on rustls with ring, the crypto provider of every
/// other TLS connection in the process; it speaks plain HTTP to an `http://`
/// endpoint (a local AWS-compatible server).
pub fn https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// EC2 through the SDK.
#[derive(Clone, Debug)]
pub struct SdkEc2 {
    client: aws_sdk_ec2::Client,
}

/// SSM through the SDK.
#[derive(Clone, Debug)]
pub struct SdkSsm {
    client: aws_sdk_ssm::Client,
}

impl SdkEc2 {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            client: aws_sdk_ec2::Client::new(config),
        }
    }
}

impl SdkSsm {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            client: aws_sdk_ssm::Client::new(config),
        }
    }

    /// SSM for a readiness probe: one attempt, no retries, and every attempt
    /// bounded by `within`, so a probe answers in time whatever AWS does.
    pub fn for_probes(config: &SdkConfig, within: Duration) -> Self {
        let conf = aws_sdk_ssm::config::Builder::from(config)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(within)
                    .operation_timeout(within)
                    .build(),
            )
            .build();
        Self {
            client: aws_sdk_ssm::Client::from_conf(conf),
        }
    }
}

/// STS through the SDK.
#[derive(Clone, Debug)]
pub struct SdkSts {
    client: aws_sdk_sts::Client,
}

impl SdkSts {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            client: aws_sdk_sts::Client::new(config),
        }
    }

    /// The ARN of the identity the credentials belong to
    /// (`sts:GetCallerIdentity`, which needs no permission).
    pub async fn caller_identity(&self) -> Result<String, ApiError> {
        let out = self
            .client
            .get_caller_identity()
            .send()
            .await
            .map_err(classify)?;
        Ok(out.arn().unwrap_or("an unnamed identity").to_owned())
    }
}

/// Error codes AWS services use for "slow down".
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "EC2ThrottledException",
    "PriorRequestNotComplete",
    "BandwidthLimitExceeded",
];

/// Sorts an SDK error into what the caller can do about it.
fn classify<E>(err: SdkError<E, HttpResponse>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = DisplayErrorContext(&err).to_string();
    let sorted = match &err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown").to_owned();
            let message = service
                .err()
                .message()
                .map(str::to_owned)
                .unwrap_or_else(|| text.clone());
            if THROTTLING_CODES.contains(&code.as_str()) {
                ApiError::Throttled(format!("{code}: {message}"))
            } else if service.raw().status().as_u16() >= 500 {
                ApiError::Transient(format!("{code}: {message}"))
            } else {
                ApiError::Service { code, message }
            }
        }
        SdkError::ConstructionFailure(_) => ApiError::Service {
            code: "InvalidRequest".into(),
            message: text,
        },
        _ => ApiError::Transient(text),
    };
    sorted.log()
}

#[async_trait]
impl Ec2Api for SdkEc2 {
    async fn describe_instances(&self, ids: &[InstanceId]) -> Result<Vec<Ec2Instance>, ApiError> {
        let mut found = Vec::new();
        // Filtering by `instance-id` (rather than passing InstanceIds) makes EC2
        // leave unknown ids out instead of failing the whole call with
        // InvalidInstanceID.NotFound, so every other id still gets described.
        for chunk in ids.chunks(EC2_FILTER_VALUES) {
            let filter = Filter::builder()
                .name("instance-id")
                .set_values(Some(chunk.iter().map(|i| i.as_str().to_owned()).collect()))
                .build();
            // The SDK's paginator follows NextToken until it is empty or repeats.
            let mut reservations = self
                .client
                .describe_instances()
                .filters(filter)
                .into_paginator()
                .items()
                .send();
            while let Some(reservation) = reservations.next().await {
                let reservation = reservation.map_err(classify)?;
                found.extend(reservation.instances().iter().filter_map(ec2_instance));
            }
        }
        Ok(found)
    }
}

fn ec2_instance(instance: &aws_sdk_ec2::types::Instance) -> Option<Ec2Instance> {
    let id = InstanceId::parse(instance.instance_id()?).ok()?;
    let state = instance
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_owned())
        .unwrap_or_else(|| "unknown".into());
    // EC2 answers `windows` in lower case where the SDK's enum expects
    // `Windows`, so compare the text; PlatformDetails says `Windows…` too.
    let windows = instance
        .platform()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case("windows"))
        || instance
            .platform_details()
            .is_some_and(|d| d.to_ascii_lowercase().starts_with("windows"));
    let platform = if windows {
        Platform::Windows
    } else {
        Platform::Linux
    };
    let tags: BTreeMap<String, String> = instance
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
        .collect();
    let mut interfaces: Vec<_> = instance.network_interfaces().iter().collect();
    interfaces.sort_by_key(|n| {
        n.attachment()
            .and_then(|a| a.device_index())
            .unwrap_or(i32::MAX)
    });
    let mut private_ips: Vec<String> = Vec::new();
    for interface in interfaces {
        let addresses: Vec<&str> = if interface.private_ip_addresses().is_empty() {
            interface.private_ip_address().into_iter().collect()
        } else {
            interface
                .private_ip_addresses()
                .iter()
                .filter_map(|a| a.private_ip_address())
                .collect()
        };
        for address in addresses {
            if !private_ips.iter().any(|known| known == address) {
                private_ips.push(address.to_owned());
            }
        }
    }
    if private_ips.is_empty() {
        private_ips.extend(instance.private_ip_address().map(str::to_owned));
    }
    Some(Ec2Instance {
        id,
        state,
        platform,
        tags,
        private_ips,
    })
}

fn not_found(err: &ApiError) -> bool {
    matches!(err.code(), Some("InvalidDocument"))
}

#[async_trait]
impl SsmApi for SdkSsm {
    async fn managed_instances(
        &self,
        ids: &[InstanceId],
    ) -> Result<Vec<ManagedInstance>, ApiError> {
        let mut found = Vec::new();
        for chunk in ids.chunks(SSM_FILTER_VALUES) {
            let filter = InstanceInformationStringFilter::builder()
                .key("InstanceIds")
                .set_values(Some(chunk.iter().map(|i| i.as_str().to_owned()).collect()))
                .build()
                .map_err(|e| ApiError::service("InvalidRequest", &e.to_string()).log())?;
            let mut infos = self
                .client
                .describe_instance_information()
                .filters(filter)
                .max_results(50)
                .into_paginator()
                .items()
                .send();
            while let Some(info) = infos.next().await {
                let info = info.map_err(classify)?;
                let Some(id) = info.instance_id().and_then(|i| InstanceId::parse(i).ok()) else {
                    continue;
                };
                found.push(ManagedInstance {
                    id,
                    ping_status: info
                        .ping_status()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_else(|| "Unknown".into()),
                });
            }
        }
        Ok(found)
    }

    async fn send_command(&self, command: &CommandRequest) -> Result<String, ApiError> {
        let out = self
            .client
            .send_command()
            .document_name(&command.document)
            .document_version(&command.document_version)
            .set_instance_ids(Some(
                command
                    .instances
                    .iter()
                    .map(|i| i.as_str().to_owned())
                    .collect(),
            ))
            .set_parameters(Some(
                command
                    .parameters
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ))
            .comment(&command.comment)
            .timeout_seconds(command.delivery_timeout_secs)
            // Every instance runs at once and one failure stops none of the others.
            .max_concurrency("100%")
            .max_errors("100%")
            .send()
            .await
            .map_err(classify)?;
        out.command()
            .and_then(|c| c.command_id())
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::Transient("SendCommand answered without a command id".into()).log()
            })
    }

    async fn get_invocation(
        &self,
        command_id: &str,
        instance: &InstanceId,
    ) -> Result<Invocation, ApiError> {
        let out = self
            .client
            .get_command_invocation()
            .command_id(command_id)
            .instance_id(instance.as_str())
            .send()
            .await
            .map_err(classify)?;
        Ok(Invocation {
            status: out
                .status()
                .map(|s| InvocationStatus::parse(s.as_str()))
                .unwrap_or(InvocationStatus::Pending),
            status_details: out.status_details().unwrap_or("").to_owned(),
            response_code: out.response_code(),
            stdout: out.standard_output_content().unwrap_or("").to_owned(),
            stderr: out.standard_error_content().unwrap_or("").to_owned(),
        })
    }

    async fn get_document(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<DocumentState>, ApiError> {
        let result = self
            .client
            .get_document()
            .name(name)
            .set_document_version(version.map(str::to_owned))
            .document_format(DocumentFormat::Yaml)
            .send()
            .await
            .map_err(classify);
        match result {
            Ok(out) => Ok(Some(DocumentState {
                content: out.content().unwrap_or("").to_owned(),
                status: out
                    .status()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_else(|| "Unknown".into()),
                version: out.document_version().unwrap_or("").to_owned(),
            })),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn describe_document(&self, name: &str) -> Result<Option<DocumentVersions>, ApiError> {
        let result = self
            .client
            .describe_document()
            .name(name)
            .send()
            .await
            .map_err(classify);
        match result {
            Ok(out) => Ok(out.document().map(|d| DocumentVersions {
                default_version: d.default_version().unwrap_or("").to_owned(),
                latest_version: d.latest_version().unwrap_or("").to_owned(),
            })),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create_document(&self, name: &str, content: &str) -> Result<(), ApiError> {
        self.client
            .create_document()
            .name(name)
            .content(content)
            .document_type(DocumentType::Command)
            .document_format(DocumentFormat::Yaml)
            .target_type("/AWS::EC2::Instance")
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn update_document(&self, name: &str, content: &str) -> Result<String, ApiError> {
        let out = self
            .client
            .update_document()
            .name(name)
            .content(content)
            .document_version("$LATEST")
            .document_format(DocumentFormat::Yaml)
            .target_type("/AWS::EC2::Instance")
            .send()
            .await
            .map_err(classify)?;
        out.document_description()
            .and_then(|d| d.document_version())
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::Transient("UpdateDocument answered without a version".into()).log()
            })
    }

    async fn set_default_version(&self, name: &str, version: &str) -> Result<(), ApiError> {
        self.client
            .update_document_default_version()
            .name(name)
            .document_version(version)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}

#[async_trait]
impl SessionsApi for SdkSsm {
    async fn active_sessions(&self, target: &InstanceId) -> Result<Vec<SessionInfo>, ApiError> {
        let filter = SessionFilter::builder()
            .key(SessionFilterKey::TargetId)
            .value(target.as_str())
            .build()
            .map_err(|e| ApiError::service("InvalidRequest", &e.to_string()).log())?;
        let mut found = Vec::new();
        let mut sessions = self
            .client
            .describe_sessions()
            .state(SessionState::Active)
            .filters(filter)
            .into_paginator()
            .items()
            .send();
        while let Some(session) = sessions.next().await {
            let session = session.map_err(classify)?;
            let Some(id) = session.session_id() else {
                continue;
            };
            found.push(SessionInfo {
                id: id.to_owned(),
                target: session.target().unwrap_or("").to_owned(),
                owner: session.owner().unwrap_or("").to_owned(),
            });
        }
        Ok(found)
    }

    async fn terminate_session(&self, session_id: &str) -> Result<(), ApiError> {
        self.client
            .terminate_session()
            .session_id(session_id)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}

#[async_trait]
impl StsApi for SdkSts {
    async fn assume_role(
        &self,
        request: &AssumeRoleRequest,
    ) -> Result<AssumedCredentials, ApiError> {
        let mut call = self
            .client
            .assume_role()
            .role_arn(&request.role_arn)
            .role_session_name(&request.role_session_name)
            .source_identity(&request.source_identity)
            .policy(&request.policy)
            .duration_seconds(request.duration_seconds);
        for (key, value) in &request.tags {
            let tag = aws_sdk_sts::types::Tag::builder()
                .key(key)
                .value(value)
                .build()
                .map_err(|e| ApiError::service("InvalidRequest", &e.to_string()).log())?;
            call = call.tags(tag);
        }
        let out = call.send().await.map_err(classify)?;
        // The answer holds the secret: only the fields below leave this
        // function, and none of them is ever logged whole.
        let credentials = out.credentials().ok_or_else(|| {
            ApiError::Transient("AssumeRole answered without credentials".into()).log()
        })?;
        let expiration = credentials.expiration();
        let expiration_ms = expiration
            .secs()
            .saturating_mul(1000)
            .saturating_add(i64::from(expiration.subsec_nanos() / 1_000_000));
        Ok(AssumedCredentials {
            access_key_id: credentials.access_key_id().to_owned(),
            secret_access_key: credentials.secret_access_key().to_owned().into(),
            session_token: credentials.session_token().to_owned().into(),
            expiration_ms,
        })
    }
}
