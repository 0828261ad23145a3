//! The AWS provisioner: EC2 discovery and SSM Run Command that create and
//! remove the short-lived users, behind the `Provisioner` port.
//!
//! - [`config`]: the `[aws]` configuration section and its validation.
//! - [`api`]: the EC2 and SSM calls Passport makes, as two small traits;
//!   [`sdk`] implements them on the AWS SDK.
//! - [`provisioner`]: [`AwsProvisioner`], discovery, batching, polling.
//! - [`store`]: where sent command ids are kept so a restart resumes them.
//! - [`documents`]: the built-in SSM documents, `ssm install` and the check
//!   `serve` makes before provisioning.
//! - [`password`]: one-time keys that bring Windows passwords back encrypted.
//! - [`sessions`]: [`StsSessionBroker`], Session Manager credentials scoped to
//!   one request (STS AssumeRole with a session policy) and the ending of
//!   the sessions opened with them.
//! - [`wiring`]: what start-up and the command line call.
//!
//! **Invariant:** nothing a person typed reaches an instance except as an SSM
//! document parameter, which the documents hand to their scripts as
//! environment variables; no script text is ever built here.

pub mod api;
pub mod config;
pub mod documents;
pub mod password;
pub mod provisioner;
pub mod sdk;
pub mod sessions;
pub mod store;
pub mod wiring;

pub use config::{AwsConfig, AwsSettings, DocumentNames, InstanceTag, InstanceTagConfig, RoleArn};
pub use documents::{
    built_document, check_documents, install_documents, passport_documents, DocumentsError,
    InstallAction, PinnedVersions,
};
pub use password::PasswordSink;
pub use provisioner::{AwsProvisioner, SSM_UNREACHABLE};
pub use sessions::StsSessionBroker;
pub use store::{
    CommandStore, LateCommandStore, MemoryCommandStore, PgCommandStore, SqliteCommandStore,
};
pub use wiring::{
    caller_identity, serve_provisioner, session_broker, ssm_check, ssm_install, AwsProbe,
    AwsStartError,
};
