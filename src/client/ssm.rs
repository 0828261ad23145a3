//! Opening a Session Manager session with the request's scoped credentials
//! and handing it to AWS's `session-manager-plugin`, exactly as the AWS CLI's
//! `aws ssm start-session` does (`awscli/customizations/sessionmanager.py`;
//! the plugin reads its arguments in `ValidateInputAndStartSession`,
//! `src/sessionmanagerplugin/session/session.go`):
//!
//! ```text
//! session-manager-plugin RESPONSE REGION StartSession PROFILE PARAMETERS ENDPOINT
//! ```
//!
//! - RESPONSE: the StartSession answer as JSON (`SessionId`, `TokenValue`,
//!   `StreamUrl`); or, for plugins newer than 1.2.497.0, the name of the
//!   environment variable `AWS_SSM_START_SESSION_RESPONSE` holding that JSON,
//!   so the session token never shows in the process list;
//! - REGION: the region of the credentials;
//! - PROFILE: empty: the plugin then takes its credentials (for its own
//!   `ResumeSession`/`TerminateSession` calls) from `AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` in its environment;
//! - PARAMETERS: the StartSession request as JSON (`Target`, `DocumentName`,
//!   `Parameters`, `Reason`);
//! - ENDPOINT: the SSM endpoint URL the session was started at.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_ssm::config::endpoint::{DefaultResolver, Params, ResolveEndpoint as _};
use aws_sdk_ssm::config::{BehaviorVersion, Credentials as AwsCredentials, Region};
use aws_sdk_ssm::error::ProvideErrorMetadata as _;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use serde_json::json;

use super::api::{Api, ApiError};
use super::store::write_private;
use crate::api::Credentials;
use crate::domain::time::Timestamp;
use crate::domain::values::RequestId;

/// Where people get the plugin.
pub const PLUGIN_DOCS: &str = "https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html";

const PLUGIN: &str = if cfg!(windows) {
    "session-manager-plugin.exe"
} else {
    "session-manager-plugin"
};

/// The last plugin version that needs the response itself as its argument.
const LAST_PLUGIN_VERSION_WITHOUT_ENV_VAR: [u64; 4] = [1, 2, 497, 0];
pub const RESPONSE_VARIABLE: &str = "AWS_SSM_START_SESSION_RESPONSE";

/// Credentials are renewed when fewer than this many seconds remain.
const RENEW_BEFORE_MS: i64 = 120_000;

/// `credentials-<instance>.json` in the request's directory.
pub fn credentials_file(instance: &str) -> String {
    format!("credentials-{instance}.json")
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the Session Manager plugin (session-manager-plugin) is not installed or not on your PATH: install it from {PLUGIN_DOCS}")]
    NoPlugin,
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Local(String),
}

fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp::from_millis(ms)
}

/// Whether saved credentials may still be used at `now`: more than two
/// minutes left, and never past the access's end.
pub fn still_usable(creds: &Credentials, now: Timestamp) -> bool {
    let (Some(expires), Some(ends)) = (
        Timestamp::parse_rfc3339(&creds.expiration),
        Timestamp::parse_rfc3339(&creds.access_ends_at),
    ) else {
        return false;
    };
    expires.as_millis() - now.as_millis() > RENEW_BEFORE_MS && now < ends
}

/// The request's credentials scoped to `instance`: the saved ones while they
/// last, else new ones from the server (saved 0600 in `dir`).
pub async fn credentials(
    api: &Api,
    dir: &Path,
    request: RequestId,
    instance: &str,
) -> Result<Credentials, SessionError> {
    if !instance
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(SessionError::Local(format!(
            "{instance:?} is not an instance id"
        )));
    }
    let path = dir.join(credentials_file(instance));
    let now = now();
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(saved) = serde_json::from_slice::<Credentials>(&bytes) {
            if still_usable(&saved, now) {
                return Ok(saved);
            }
        }
    }
    let fresh = api.credentials(request, instance).await?;
    if Timestamp::parse_rfc3339(&fresh.access_ends_at).is_none_or(|end| now >= end) {
        return Err(SessionError::Refused(format!(
            "{request}'s access has ended: request access again"
        )));
    }
    let bytes = serde_json::to_vec(&fresh).map_err(|e| SessionError::Local(e.to_string()))?;
    write_private(&path, &bytes)
        .map_err(|e| SessionError::Local(format!("cannot write {}: {e}", path.display())))?;
    Ok(fresh)
}

/// `AWS_ENDPOINT_URL_SSM`, else `AWS_ENDPOINT_URL`, unless
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true` (the SDKs' own rules). The
/// client builds its SSM configuration from the scoped credentials alone, so
/// it reads these itself rather than through a profile.
pub fn endpoint_override() -> Option<String> {
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
    if var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    var("AWS_ENDPOINT_URL_SSM").or_else(|| var("AWS_ENDPOINT_URL"))
}

/// The SSM endpoint for `region`: the override, else AWS's own.
pub async fn endpoint(region: &str) -> Result<String, SessionError> {
    if let Some(url) = endpoint_override() {
        return Ok(url);
    }
    let params = Params::builder()
        .region(region)
        .build()
        .map_err(|e| SessionError::Local(format!("no SSM endpoint for {region}: {e}")))?;
    DefaultResolver::new()
        .resolve_endpoint(&params)
        .await
        .map(|e| e.url().to_owned())
        .map_err(|e| SessionError::Local(format!("no SSM endpoint for {region}: {e}")))
}

/// A StartSession call.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    pub target: String,
    pub document: &'static str,
    pub parameters: BTreeMap<String, Vec<String>>,
    pub reason: String,
}

impl SessionRequest {
    /// The request as the plugin's PARAMETERS argument.
    pub fn to_json(&self) -> String {
        json!({
            "Target": self.target,
            "DocumentName": self.document,
            "Parameters": self.parameters,
            "Reason": self.reason,
        })
        .to_string()
    }
}

/// `AWS-StartSSHSession` to `port`.
pub fn ssh_session(target: &str, port: u16, request: RequestId) -> SessionRequest {
    SessionRequest {
        target: target.to_owned(),
        document: "AWS-StartSSHSession",
        parameters: BTreeMap::from([("portNumber".to_owned(), vec![port.to_string()])]),
        reason: format!("Passport {request}"),
    }
}

/// `AWS-StartPortForwardingSession`, or the remote-host variant with `host`.
pub fn forwarding_session(
    target: &str,
    local: u16,
    remote: u16,
    host: Option<&str>,
    request: RequestId,
) -> SessionRequest {
    let mut parameters = BTreeMap::from([
        ("portNumber".to_owned(), vec![remote.to_string()]),
        ("localPortNumber".to_owned(), vec![local.to_string()]),
    ]);
    let document = match host {
        Some(host) => {
            parameters.insert("host".to_owned(), vec![host.to_owned()]);
            "AWS-StartPortForwardingSessionToRemoteHost"
        }
        None => "AWS-StartPortForwardingSession",
    };
    SessionRequest {
        target: target.to_owned(),
        document,
        parameters,
        reason: format!("Passport {request}"),
    }
}

/// Calls StartSession with the scoped credentials; answers the response JSON.
pub async fn start_session(
    creds: &Credentials,
    endpoint: &str,
    request: &SessionRequest,
) -> Result<String, SessionError> {
    let expiry = Timestamp::parse_rfc3339(&creds.expiration)
        .and_then(|t| u64::try_from(t.as_millis()).ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    let config = aws_sdk_ssm::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        // rustls with ring, as every TLS connection of the process.
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                .build_https(),
        )
        .region(Region::new(creds.region.clone()))
        .credentials_provider(AwsCredentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.clone(),
            Some(creds.session_token.clone()),
            expiry,
            "passport",
        ))
        .endpoint_url(endpoint)
        .timeout_config(
            aws_sdk_ssm::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .build();
    let client = aws_sdk_ssm::Client::from_conf(config);
    let answer = client
        .start_session()
        .target(&request.target)
        .document_name(request.document)
        .set_parameters(Some(request.parameters.clone().into_iter().collect()))
        .reason(&request.reason)
        .send()
        .await
        .map_err(|e| {
            let code = e.code().unwrap_or("");
            SessionError::Refused(match code {
                "TargetNotConnected" => format!(
                    "Session Manager cannot reach {}: its SSM Agent is not connected (is the instance running, with an instance profile that allows Session Manager?)",
                    request.target
                ),
                "AccessDeniedException" => format!(
                    "AWS refused a {} session to {}: the request may not allow it (see `passport show`), or its access has just ended",
                    request.document, request.target
                ),
                "" => format!(
                    "cannot start a Session Manager session at {endpoint}: {}",
                    aws_sdk_ssm::error::DisplayErrorContext(&e)
                ),
                code => format!(
                    "AWS refused the Session Manager session to {}: {code}: {}",
                    request.target,
                    e.message().unwrap_or("")
                ),
            })
        })?;
    let (Some(id), Some(token), Some(url)) = (
        answer.session_id(),
        answer.token_value(),
        answer.stream_url(),
    ) else {
        return Err(SessionError::Refused(
            "StartSession answered without a session id, token or stream URL".to_owned(),
        ));
    };
    Ok(json!({"SessionId": id, "TokenValue": token, "StreamUrl": url}).to_string())
}

fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// The plugin: first on the PATH, else where AWS's installers put it.
pub fn find_plugin() -> Result<PathBuf, SessionError> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let installed: &[&str] = if cfg!(windows) {
        &[r"C:\Program Files\Amazon\SessionManagerPlugin\bin"]
    } else {
        &["/usr/local/sessionmanagerplugin/bin", "/usr/local/bin"]
    };
    on_path
        .into_iter()
        .chain(installed.iter().map(PathBuf::from))
        .map(|dir| dir.join(PLUGIN))
        .find(|p| is_executable(p))
        .ok_or(SessionError::NoPlugin)
}

/// `session-manager-plugin --version`, trimmed.
pub fn plugin_version(plugin: &Path) -> Result<String, SessionError> {
    let out = Command::new(plugin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SessionError::NoPlugin,
            _ => SessionError::Local(format!("cannot run {}: {e}", plugin.display())),
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether the plugin reads the response from the environment: a version
/// above 1.2.497.0, compared as the AWS CLI does.
pub fn takes_response_from_env(version: &str) -> bool {
    let clean: String = version.chars().filter(|c| !c.is_whitespace()).collect();
    let parts: Option<Vec<u64>> = clean.split('.').map(|p| p.parse().ok()).collect();
    let Some(mut parts) = parts.filter(|p| (1..=4).contains(&p.len())) else {
        return false;
    };
    parts.resize(4, 0);
    parts.as_slice() > LAST_PLUGIN_VERSION_WITHOUT_ENV_VAR.as_slice()
}

/// The plugin's command line and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginCall {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

pub fn plugin_call(
    version: &str,
    response: &str,
    creds: &Credentials,
    request: &SessionRequest,
    endpoint: &str,
) -> PluginCall {
    let mut env = vec![
        ("AWS_ACCESS_KEY_ID".to_owned(), creds.access_key_id.clone()),
        (
            "AWS_SECRET_ACCESS_KEY".to_owned(),
            creds.secret_access_key.clone(),
        ),
        ("AWS_SESSION_TOKEN".to_owned(), creds.session_token.clone()),
        ("AWS_REGION".to_owned(), creds.region.clone()),
        ("AWS_DEFAULT_REGION".to_owned(), creds.region.clone()),
    ];
    let first = if takes_response_from_env(version) {
        env.push((RESPONSE_VARIABLE.to_owned(), response.to_owned()));
        RESPONSE_VARIABLE.to_owned()
    } else {
        response.to_owned()
    };
    PluginCall {
        args: vec![
            first,
            creds.region.clone(),
            "StartSession".to_owned(),
            String::new(),
            request.to_json(),
            endpoint.to_owned(),
        ],
        env,
    }
}

/// Runs the plugin with this process's stdin, stdout and stderr: on Unix it
/// replaces this process, so ssh's pipes reach the plugin untouched.
/// Returns only on failure (or, elsewhere, with the plugin's exit code).
pub fn run_plugin(plugin: &Path, call: &PluginCall) -> Result<i32, SessionError> {
    let mut command = Command::new(plugin);
    command
        .args(&call.args)
        .envs(call.env.iter().map(|(k, v)| (k, v)))
        // A profile in the environment must not replace the scoped credentials.
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_DEFAULT_PROFILE");
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let e = command.exec();
        Err(match e.kind() {
            std::io::ErrorKind::NotFound => SessionError::NoPlugin,
            _ => SessionError::Local(format!("cannot run {}: {e}", plugin.display())),
        })
    }
    #[cfg(not(unix))]
    {
        let status = command.status().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SessionError::NoPlugin,
            _ => SessionError::Local(format!("cannot run {}: {e}", plugin.display())),
        })?;
        Ok(status.code().unwrap_or(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(expiration: &str, ends: &str) -> Credentials {
        Credentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: "secret".into(),
            session_token: "token".into(),
            expiration: expiration.into(),
            region: "eu-west-1".into(),
            access_ends_at: ends.into(),
        }
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap_or_else(|| unreachable!())
    }

    #[test]
    fn saved_credentials_are_reused_only_with_time_left_and_never_past_the_access() {
        let c = creds("2026-12-01T20:15:00Z", "2026-12-01T21:00:00Z");
        assert!(still_usable(&c, at("2026-12-01T20:00:00Z")));
        assert!(
            !still_usable(&c, at("2026-12-01T20:13:30Z")),
            "under two minutes left"
        );
        let ending = creds("2026-12-01T20:15:00Z", "2026-12-01T20:05:00Z");
        assert!(
            !still_usable(&ending, at("2026-12-01T20:06:00Z")),
            "past the access"
        );
        assert!(!still_usable(
            &creds("soon", "later"),
            at("2026-12-01T20:00:00Z")
        ));
    }

    #[test]
    fn plugin_versions_compare_like_the_aws_cli() {
        assert!(takes_response_from_env("1.2.707.0\n"));
        assert!(takes_response_from_env("1.3"));
        assert!(!takes_response_from_env("1.2.497.0"));
        assert!(!takes_response_from_env("1.2.463.0"));
        assert!(!takes_response_from_env("dev"));
        assert!(!takes_response_from_env(""));
    }

    #[test]
    fn the_plugin_gets_the_aws_cli_arguments_and_the_credentials_in_its_environment() {
        let c = creds("2026-12-01T20:15:00Z", "2026-12-01T21:00:00Z");
        let r = ssh_session(
            "i-0123456789abcdef0",
            22,
            RequestId::new(7).unwrap_or_else(|| unreachable!()),
        );
        let response = r#"{"SessionId":"s","TokenValue":"t","StreamUrl":"wss://x"}"#;
        let call = plugin_call(
            "1.2.707.0",
            response,
            &c,
            &r,
            "https://ssm.eu-west-1.amazonaws.com",
        );
        assert_eq!(call.args[0], RESPONSE_VARIABLE);
        assert_eq!(&call.args[1..4], ["eu-west-1", "StartSession", ""]);
        assert_eq!(call.args[5], "https://ssm.eu-west-1.amazonaws.com");
        let params: serde_json::Value = serde_json::from_str(&call.args[4]).unwrap_or_default();
        assert_eq!(params["Target"], "i-0123456789abcdef0");
        assert_eq!(params["DocumentName"], "AWS-StartSSHSession");
        assert_eq!(params["Parameters"]["portNumber"][0], "22");
        assert!(call
            .env
            .contains(&(RESPONSE_VARIABLE.into(), response.into())));
        assert!(call
            .env
            .contains(&("AWS_SESSION_TOKEN".into(), "token".into())));
        let old = plugin_call("1.2.497.0", response, &c, &r, "e");
        assert_eq!(old.args[0], response);
    }

    #[test]
    fn forwarding_to_a_remote_host_uses_its_own_document() {
        let id = RequestId::new(1).unwrap_or_else(|| unreachable!());
        let local = forwarding_session("i-0123456789abcdef0", 8080, 80, None, id);
        assert_eq!(local.document, "AWS-StartPortForwardingSession");
        assert!(!local.parameters.contains_key("host"));
        let remote = forwarding_session("i-0123456789abcdef0", 5432, 5432, Some("db.internal"), id);
        assert_eq!(
            remote.document,
            "AWS-StartPortForwardingSessionToRemoteHost"
        );
        assert_eq!(remote.parameters["host"], ["db.internal"]);
        assert_eq!(remote.parameters["localPortNumber"], ["5432"]);
    }
}
