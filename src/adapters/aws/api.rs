//! The slice of the EC2 and SSM APIs Passport uses, as two small traits over
//! plain types. The SDK implements them in [`super::sdk`]; tests put fakes
//! behind them to show what a local AWS-compatible server cannot (failed
//! scripts, offline instances, throttling).

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::domain::request::Platform;
use crate::domain::values::InstanceId;

/// An error from an AWS call, sorted by what the caller can do about it.
///
/// Its `Display` is what people may see: the error code and an error id, never
/// AWS's message, which can name the account, role ARNs or carry an encoded
/// authorization message. [`ApiError::detail`] has everything, for the log,
/// which records it under the same id ([`ApiError::log`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The service asked us to slow down; worth retrying after a pause.
    #[error("throttled by AWS (error {})", self.id())]
    Throttled(String),
    /// A network failure, a timeout or a server error (5xx); worth retrying.
    #[error("AWS is not answering (error {})", self.id())]
    Transient(String),
    /// The service refused the call; `code` is its error code, e.g.
    /// `InvocationDoesNotExist`, `InvalidDocument`, `AccessDeniedException`.
    #[error("{code} (error {})", self.id())]
    Service { code: String, message: String },
}

impl ApiError {
    /// Everything AWS said, for the log only.
    pub fn detail(&self) -> String {
        match self {
            Self::Throttled(text) => format!("throttled: {text}"),
            Self::Transient(text) => format!("not answering: {text}"),
            Self::Service { code, message } => format!("{code}: {message}"),
        }
    }

    /// A short id that ties what a person is shown to the logged detail.
    pub fn id(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(self.detail().as_bytes())[..4])
    }

    /// Logs the detail under the error's id, once, where the error arises.
    pub fn log(self) -> Self {
        tracing::warn!(error_id = %self.id(), detail = %self.detail(), "AWS call failed");
        self
    }

    pub fn service(code: &str, message: &str) -> Self {
        Self::Service {
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }

    /// The service's error code, when the service answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Throttled(_) | Self::Transient(_))
    }

    pub fn is_access_denied(&self) -> bool {
        matches!(
            self.code(),
            Some("AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation")
        )
    }
}

/// One EC2 instance as DescribeInstances reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Instance {
    pub id: InstanceId,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down` or `terminated`.
    pub state: String,
    pub platform: Platform,
    pub tags: BTreeMap<String, String>,
    /// Private IPv4 addresses of every network interface, primary interface first.
    pub private_ips: Vec<String>,
}

/// One instance as SSM's DescribeInstanceInformation reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedInstance {
    pub id: InstanceId,
    /// `Online`, `ConnectionLost` or `Inactive`.
    pub ping_status: String,
}

/// A Run Command to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRequest {
    pub document: String,
    /// The document version to run: the one checked at start, never
    /// `$DEFAULT` or `$LATEST`, so a document changed since runs nowhere.
    pub document_version: String,
    pub instances: Vec<InstanceId>,
    /// Document parameters. SSM hands them to the script as environment
    /// variables; they are never pasted into script text.
    pub parameters: BTreeMap<String, Vec<String>>,
    /// Shown in the SSM console and command history; at most 100 characters.
    pub comment: String,
    /// How long SSM tries to deliver the command (SendCommand's `TimeoutSeconds`).
    pub delivery_timeout_secs: i32,
}

/// The status of a command on one instance (GetCommandInvocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvocationStatus {
    Pending,
    InProgress,
    Delayed,
    Success,
    Cancelled,
    Cancelling,
    TimedOut,
    Failed,
    Other(String),
}

impl InvocationStatus {
    pub fn parse(text: &str) -> Self {
        match text {
            "Pending" => Self::Pending,
            "InProgress" => Self::InProgress,
            "Delayed" => Self::Delayed,
            "Success" => Self::Success,
            "Cancelled" => Self::Cancelled,
            "Cancelling" => Self::Cancelling,
            "TimedOut" => Self::TimedOut,
            "Failed" => Self::Failed,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Delayed => "Delayed",
            Self::Success => "Success",
            Self::Cancelled => "Cancelled",
            Self::Cancelling => "Cancelling",
            Self::TimedOut => "TimedOut",
            Self::Failed => "Failed",
            Self::Other(s) => s,
        }
    }

    /// The command has finished on the instance and will not change again.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Success | Self::Cancelled | Self::TimedOut | Self::Failed
        )
    }
}

/// What GetCommandInvocation says about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub status: InvocationStatus,
    /// Finer detail, e.g. `Undeliverable`, `DeliveryTimedOut`, `ExecutionTimedOut`.
    pub status_details: String,
    /// The script's exit code; -1 when it did not run.
    pub response_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A document as SSM holds it (its default version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentState {
    pub content: String,
    /// `Creating`, `Active`, `Updating`, `Deleting` or `Failed`.
    pub status: String,
    pub version: String,
}

/// Which versions of a document exist (DescribeDocument).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentVersions {
    pub default_version: String,
    pub latest_version: String,
}

#[async_trait]
pub trait Ec2Api: Send + Sync {
    /// Describes the given instances. Ids EC2 does not know in this region
    /// are left out of the answer rather than failing the call.
    async fn describe_instances(&self, ids: &[InstanceId]) -> Result<Vec<Ec2Instance>, ApiError>;
}

#[async_trait]
pub trait SsmApi: Send + Sync {
    /// The given instances that SSM manages; unmanaged ones are left out.
    async fn managed_instances(&self, ids: &[InstanceId])
        -> Result<Vec<ManagedInstance>, ApiError>;
    /// Sends a command and returns its id.
    async fn send_command(&self, command: &CommandRequest) -> Result<String, ApiError>;
    async fn get_invocation(
        &self,
        command_id: &str,
        instance: &InstanceId,
    ) -> Result<Invocation, ApiError>;
    /// A document's default version, or a given version; `None` when the document does not exist.
    async fn get_document(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<DocumentState>, ApiError>;
    async fn describe_document(&self, name: &str) -> Result<Option<DocumentVersions>, ApiError>;
    async fn create_document(&self, name: &str, content: &str) -> Result<(), ApiError>;
    /// Adds a version and returns its number; the default version is unchanged.
    async fn update_document(&self, name: &str, content: &str) -> Result<String, ApiError>;
    async fn set_default_version(&self, name: &str, version: &str) -> Result<(), ApiError>;
}

/// A Session Manager session as DescribeSessions reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: String,
    pub target: String,
    /// Who started it: for an assumed role,
    /// `arn:<partition>:sts::<account>:assumed-role/<role name>/<role session name>`.
    pub owner: String,
}

/// What Passport asks STS for (AssumeRole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRoleRequest {
    pub role_arn: String,
    pub role_session_name: String,
    pub source_identity: String,
    /// The inline session policy, JSON.
    pub policy: String,
    pub duration_seconds: i32,
    /// Session tags, in order.
    pub tags: Vec<(String, String)>,
}

/// Temporary credentials from AssumeRole. The secret and the token never
/// appear in `Debug`.
#[derive(Clone)]
pub struct AssumedCredentials {
    pub access_key_id: String,
    pub secret_access_key: secrecy::SecretString,
    pub session_token: secrecy::SecretString,
    /// Milliseconds since the epoch.
    pub expiration_ms: i64,
}

impl std::fmt::Debug for AssumedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssumedCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration_ms", &self.expiration_ms)
            .finish_non_exhaustive()
    }
}

/// The Session Manager calls that end sessions: a separate trait from
/// [`SsmApi`] so that a session broker needs nothing of Run Command.
#[async_trait]
pub trait SessionsApi: Send + Sync {
    /// The sessions in state `Active` whose target is `target` (DescribeSessions).
    async fn active_sessions(&self, target: &InstanceId) -> Result<Vec<SessionInfo>, ApiError>;
    /// Ends a session for good (TerminateSession). Ending one that has ended
    /// already succeeds.
    async fn terminate_session(&self, session_id: &str) -> Result<(), ApiError>;
}

#[async_trait]
pub trait StsApi: Send + Sync {
    async fn assume_role(
        &self,
        request: &AssumeRoleRequest,
    ) -> Result<AssumedCredentials, ApiError>;
}
