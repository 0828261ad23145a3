//! Passport's own SSM documents (`manifests/ssm/*.yaml`, built into the
//! binary): installing them (`passport ssm install`) and checking that what
//! SSM holds is exactly what this build expects, so `serve` can refuse to
//! provision with outdated scripts. The check yields the version numbers it
//! verified ([`PinnedVersions`]); every SendCommand names one of them, never
//! `$DEFAULT` or `$LATEST`.

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest, Sha256};

use super::api::{ApiError, SsmApi};
use super::config::DocumentNames;

/// One document: the name it has in SSM and the content it should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentSource {
    pub name: String,
    pub content: String,
}

impl DocumentSource {
    /// The SHA-256 of the content, ignoring line endings and trailing blanks,
    /// which SSM may not keep as sent.
    pub fn hash(&self) -> String {
        content_hash(&self.content)
    }
}

/// The documents this build renders (see `build.rs`), in the order of
/// [`DocumentNames`]' fields: grant and revoke, Linux then Windows.
const BUILT: [&str; 4] = [
    include_str!(concat!(env!("OUT_DIR"), "/Passport-GrantLinux.yaml")),
    include_str!(concat!(env!("OUT_DIR"), "/Passport-RevokeLinux.yaml")),
    include_str!(concat!(env!("OUT_DIR"), "/Passport-GrantWindows.yaml")),
    include_str!(concat!(env!("OUT_DIR"), "/Passport-RevokeWindows.yaml")),
];

/// The text of a document this build runs, by its default name
/// (`Passport-GrantLinux`, …), as `passport ssm install` sends it.
pub fn built_document(default_name: &str) -> Option<String> {
    passport_documents(&DocumentNames::default())
        .into_iter()
        .find(|d| d.name == default_name)
        .map(|d| d.content)
}

/// The four documents this build runs, under the configured names.
pub fn passport_documents(names: &DocumentNames) -> Vec<DocumentSource> {
    let configured = [
        &names.grant_linux,
        &names.revoke_linux,
        &names.grant_windows,
        &names.revoke_windows,
    ];
    configured
        .into_iter()
        .zip(BUILT)
        .map(|(name, content)| DocumentSource {
            name: name.clone(),
            content: content.to_owned(),
        })
        .collect()
}

/// SHA-256 (hex) of a document's content after normalising line endings and
/// trailing whitespace.
pub fn content_hash(content: &str) -> String {
    let lines: Vec<&str> = content.lines().map(str::trim_end).collect();
    let normalised = lines.join("\n");
    hex::encode(Sha256::digest(normalised.trim_end().as_bytes()))
}

/// How a document in SSM compares with the one this build expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentStatus {
    /// The default version has this build's content; `version` is its number.
    Current {
        version: String,
    },
    Missing,
    /// SSM's default version has other content.
    Outdated {
        version: String,
    },
    /// The document exists but cannot run yet (e.g. `Creating`, `Failed`).
    NotActive {
        status: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallAction {
    Created,
    /// A new version was added (or an earlier identical one restored) and made the default.
    Updated {
        version: String,
    },
    Unchanged,
}

impl fmt::Display for InstallAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Created => f.write_str("created"),
            Self::Updated { version } => {
                write!(f, "updated (version {version} is now the default)")
            }
            Self::Unchanged => f.write_str("already up to date"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentsError {
    /// Some documents are missing, outdated or not active: `passport ssm install` fixes it.
    #[error("{0}")]
    NotReady(String),
    /// SSM could not be asked (network, throttling, permissions).
    #[error("cannot check the SSM documents: {0}")]
    Unavailable(ApiError),
}

/// Compares each document in SSM with the expected content.
pub async fn document_statuses(
    ssm: &dyn SsmApi,
    documents: &[DocumentSource],
) -> Result<Vec<(String, DocumentStatus)>, ApiError> {
    let mut statuses = Vec::new();
    for doc in documents {
        let status = match ssm.get_document(&doc.name, None).await? {
            None => DocumentStatus::Missing,
            Some(held) if held.status != "Active" => DocumentStatus::NotActive {
                status: held.status,
            },
            Some(held) if content_hash(&held.content) == doc.hash() => DocumentStatus::Current {
                version: held.version,
            },
            Some(held) => DocumentStatus::Outdated {
                version: held.version,
            },
        };
        statuses.push((doc.name.clone(), status));
    }
    Ok(statuses)
}

/// The version of each document that [`check_documents`] found to hold this
/// build's content, by document name. Only that check makes one, so holding
/// one proves the versions were verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinnedVersions(BTreeMap<String, String>);

impl PinnedVersions {
    /// The verified version of the document called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// Succeeds when every document is installed, active and current, with the
/// version of each that was checked; otherwise says which are not and what
/// to run.
pub async fn check_documents(
    ssm: &dyn SsmApi,
    documents: &[DocumentSource],
) -> Result<PinnedVersions, DocumentsError> {
    let statuses = document_statuses(ssm, documents)
        .await
        .map_err(DocumentsError::Unavailable)?;
    readiness(&statuses)
}

/// Turns the statuses of [`document_statuses`] into the verdict of [`check_documents`].
pub fn readiness(statuses: &[(String, DocumentStatus)]) -> Result<PinnedVersions, DocumentsError> {
    let problems: Vec<String> = statuses
        .iter()
        .filter_map(|(name, status)| match status {
            // SSM numbers versions from 1; without a number nothing can be pinned.
            DocumentStatus::Current { version } if version.is_empty() => {
                Some(format!("SSM did not say which version of {name} it holds"))
            }
            DocumentStatus::Current { .. } => None,
            DocumentStatus::Missing => Some(format!("{name} is missing")),
            DocumentStatus::Outdated { version } => Some(format!(
                "{name} is outdated (its default version {version} differs from this build)"
            )),
            DocumentStatus::NotActive { status } => {
                Some(format!("{name} is not active (status {status})"))
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(PinnedVersions(
            statuses
                .iter()
                .filter_map(|(name, status)| match status {
                    DocumentStatus::Current { version } => Some((name.clone(), version.clone())),
                    _ => None,
                })
                .collect(),
        ))
    } else {
        Err(DocumentsError::NotReady(format!(
            "the SSM documents are not ready: {}; run `passport ssm install` with the install policy (manifests/iam/passport-install-policy.json), then restart Passport",
            problems.join(", ")
        )))
    }
}

/// Creates missing documents and updates outdated ones, making the new
/// version the default. Running it again changes nothing.
pub async fn install_documents(
    ssm: &dyn SsmApi,
    documents: &[DocumentSource],
) -> Result<Vec<(String, InstallAction)>, ApiError> {
    let mut actions = Vec::new();
    for (doc, (_, status)) in documents
        .iter()
        .zip(document_statuses(ssm, documents).await?)
    {
        let action = match status {
            DocumentStatus::Current { .. } => InstallAction::Unchanged,
            DocumentStatus::Missing => {
                ssm.create_document(&doc.name, &doc.content).await?;
                InstallAction::Created
            }
            DocumentStatus::Outdated { .. } | DocumentStatus::NotActive { .. } => {
                let version = match ssm.update_document(&doc.name, &doc.content).await {
                    Ok(version) => version,
                    // SSM refuses a version whose content an earlier version already
                    // has (a rollback): find that version and make it the default.
                    Err(e) if e.code() == Some("DuplicateDocumentContent") => {
                        match earlier_version_with(ssm, doc).await? {
                            Some(version) => version,
                            None => return Err(e),
                        }
                    }
                    Err(e) => return Err(e),
                };
                ssm.set_default_version(&doc.name, &version).await?;
                InstallAction::Updated { version }
            }
        };
        actions.push((doc.name.clone(), action));
    }
    Ok(actions)
}

/// The newest version of `doc` in SSM whose content is `doc`'s, if any.
async fn earlier_version_with(
    ssm: &dyn SsmApi,
    doc: &DocumentSource,
) -> Result<Option<String>, ApiError> {
    let Some(versions) = ssm.describe_document(&doc.name).await? else {
        return Ok(None);
    };
    let latest: u32 = versions.latest_version.parse().unwrap_or(0);
    let wanted = doc.hash();
    for n in (1..=latest).rev() {
        let version = n.to_string();
        if let Some(held) = ssm.get_document(&doc.name, Some(&version)).await? {
            if content_hash(&held.content) == wanted {
                return Ok(Some(version));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_ignores_line_endings_and_trailing_blanks() {
        let a = content_hash("schemaVersion: '2.2'\nmainSteps: []\n");
        let b = content_hash("schemaVersion: '2.2'  \r\nmainSteps: []\r\n\r\n");
        let c = content_hash("schemaVersion: '2.2'\nmainSteps: [x]\n");
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn every_document_is_built_in_under_its_configured_name() {
        let docs = passport_documents(&DocumentNames::default());
        let names: Vec<&str> = docs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Passport-GrantLinux",
                "Passport-RevokeLinux",
                "Passport-GrantWindows",
                "Passport-RevokeWindows"
            ]
        );
        for doc in &docs {
            assert!(
                doc.content.contains("schemaVersion"),
                "{} is empty",
                doc.name
            );
        }
    }
}
