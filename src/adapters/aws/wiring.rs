//! Entry points for start-up and the command line: building the provisioner
//! for `serve` (refusing when the SSM documents are not ready) and the
//! `passport ssm install` / `passport ssm check` commands, and the session
//! broker when `session_role_arn` is set.

use std::sync::Arc;

use super::api::{ApiError, SsmApi};
use super::config::AwsSettings;
use super::documents::{DocumentsError, PinnedVersions};
use super::password::PasswordSink;
use super::provisioner::AwsProvisioner;
use super::sdk::{sdk_loader, SdkSsm, SdkSts};
use super::sessions::StsSessionBroker;
use super::store::{LateCommandStore, MemoryCommandStore};
use crate::app::ports::ProvisionError;

/// Why the AWS provisioner could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AwsStartError {
    #[error("{0}")]
    Connect(#[from] ProvisionError),
    #[error("{0}")]
    Documents(#[from] DocumentsError),
    #[error("cannot install the SSM documents: {0}")]
    Install(ApiError),
}

/// The provisioner `serve` runs with when `[aws]` is configured: command ids
/// kept in `commands` (the application's database, attached once it is open),
/// the usual credential chain, and the SSM documents checked first, so that
/// `serve` refuses to start provisioning with missing or outdated documents.
pub async fn serve_provisioner(
    settings: &AwsSettings,
    commands: LateCommandStore,
    passwords: Option<Arc<dyn PasswordSink>>,
) -> Result<AwsProvisioner, AwsStartError> {
    let mut provisioner = AwsProvisioner::connect(settings, Arc::new(commands)).await?;
    if let Some(sink) = passwords {
        provisioner = provisioner.with_password_sink(sink);
    }
    provisioner.check_documents().await?;
    Ok(provisioner)
}

/// `passport ssm install`: creates or updates the documents and returns one
/// line per document for the operator, e.g. `Passport-GrantLinux: created`.
pub async fn ssm_install(settings: &AwsSettings) -> Result<Vec<String>, AwsStartError> {
    let provisioner =
        AwsProvisioner::connect(settings, Arc::new(MemoryCommandStore::new())).await?;
    let actions = provisioner
        .install_documents()
        .await
        .map_err(AwsStartError::Install)?;
    Ok(actions
        .iter()
        .map(|(name, action)| format!("{name}: {action}"))
        .collect())
}

/// `passport ssm check`: succeeds when the documents in SSM are this build's,
/// with the version of each that `serve` would run.
pub async fn ssm_check(settings: &AwsSettings) -> Result<PinnedVersions, AwsStartError> {
    let provisioner =
        AwsProvisioner::connect(settings, Arc::new(MemoryCommandStore::new())).await?;
    Ok(provisioner.check_documents().await?)
}

/// The session broker `serve` runs with when `session_role_arn` is set:
/// STS and Session Manager through the usual credential chain (the bot's
/// own role, which the session role trusts). `None` without a session role.
pub async fn session_broker(settings: &AwsSettings) -> Option<StsSessionBroker> {
    let role = settings.session_role.clone()?;
    // Validation makes a session role come with a region.
    let region = settings.region.clone()?;
    let sdk = sdk_loader(settings).load().await;
    Some(StsSessionBroker::new(
        Arc::new(SdkSts::new(&sdk)),
        Arc::new(SdkSsm::new(&sdk)),
        role,
        region,
    ))
}

/// Who the AWS credentials Passport runs with belong to (`sts:GetCallerIdentity`,
/// which needs no permission): what `passport doctor` shows. A failure is
/// shown by its code and id only; AWS's own text is logged under that id.
pub async fn caller_identity(settings: &AwsSettings) -> Result<String, ApiError> {
    let sdk = sdk_loader(settings).load().await;
    SdkSts::new(&sdk).caller_identity().await
}

/// How long one readiness question to AWS may take.
pub const PROBE_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// What `/readyz` asks AWS: `ssm:DescribeDocument` on the Linux grant
/// document, a call the bot's policy already allows
/// (`CheckPassportDocuments`). It answers only when AWS is reachable, the
/// credentials are valid and SSM holds Passport's documents: what
/// provisioning needs.
pub struct AwsProbe {
    ssm: Arc<dyn SsmApi>,
    document: String,
}

impl AwsProbe {
    /// The probe `serve` runs with: the usual credential chain, one attempt
    /// bounded by [`PROBE_WITHIN`].
    pub async fn connect(settings: &AwsSettings) -> Self {
        let sdk = sdk_loader(settings).load().await;
        Self::from_sdk(&sdk, settings)
    }

    /// The probe on an SDK configuration already loaded (tests give theirs
    /// static credentials).
    pub fn from_sdk(sdk: &aws_config::SdkConfig, settings: &AwsSettings) -> Self {
        Self::new(
            Arc::new(SdkSsm::for_probes(sdk, PROBE_WITHIN)),
            &settings.documents.grant_linux,
        )
    }

    pub fn new(ssm: Arc<dyn SsmApi>, document: &str) -> Self {
        Self {
            ssm,
            document: document.to_owned(),
        }
    }

    /// `Ok` when AWS answered with the document; otherwise what is wrong and
    /// what to do. AWS's own text goes to the log only (the SDK adapter logs
    /// it under the error's id).
    pub async fn check(&self) -> Result<(), String> {
        match self.ssm.describe_document(&self.document).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!(
                "the SSM document {} does not exist: run `passport ssm install`",
                self.document
            )),
            Err(e @ (ApiError::Transient(_) | ApiError::Throttled(_))) => Err(format!(
                "{e}: check that this pod reaches AWS SSM (network, region, endpoint)"
            )),
            Err(e) => Err(format!(
                "{e}: check Passport's AWS credentials and the bot policy of manifests/iam"
            )),
        }
    }
}
