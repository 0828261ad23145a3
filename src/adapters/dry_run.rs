//! The dry-run provisioner: used when no AWS configuration is present. It
//! treats every well-formed instance id as a running Linux instance (or as
//! described in configuration) and reports what it would send to each one.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::app::ports::{Described, GrantSpec, ProvisionError, Provisioner, RevokeSpec};
use crate::domain::request::{InstanceInfo, InstanceOutcome, Platform};
use crate::domain::values::InstanceId;

pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

pub struct DryRunProvisioner {
    known: BTreeMap<InstanceId, InstanceInfo>,
    sink: Option<Sink>,
}

impl DryRunProvisioner {
    /// `known` describes instances by id; `sink` receives one line per command
    /// that would be sent (none when `None`).
    pub fn new(known: Vec<InstanceInfo>, sink: Option<Sink>) -> Self {
        Self {
            known: known.into_iter().map(|i| (i.id.clone(), i)).collect(),
            sink,
        }
    }

    fn say(&self, line: String) {
        if let Some(sink) = &self.sink {
            sink(&line);
        }
    }
}

#[async_trait]
impl Provisioner for DryRunProvisioner {
    fn name(&self) -> &str {
        "dry-run"
    }

    async fn describe(&self, ids: &[InstanceId]) -> Result<Vec<Described>, ProvisionError> {
        Ok(ids
            .iter()
            .map(|id| match self.known.get(id) {
                Some(info) if info.state != "running" => Described::Unusable {
                    id: id.clone(),
                    reason: format!("the instance is {}, not running", info.state),
                },
                Some(info) => Described::Usable(info.clone()),
                None => Described::Usable(InstanceInfo::assumed(id.clone(), Platform::Linux)),
            })
            .collect())
    }

    async fn grant(&self, spec: &GrantSpec) -> Result<Vec<InstanceOutcome>, ProvisionError> {
        Ok(spec
            .instances
            .iter()
            .map(|i| {
                let document = match i.platform {
                    Platform::Linux => "Passport-GrantLinux",
                    Platform::Windows => "Passport-GrantWindows",
                };
                let login = if spec.trusted_ca_keys.is_empty() || i.platform != Platform::Linux {
                    String::new()
                } else {
                    format!(
                        " login=certificate ({} CA keys)",
                        spec.trusted_ca_keys.len()
                    )
                };
                self.say(format!(
                    "[dry-run] {} → {}: {document} username={} expires={} sudo={}{login}",
                    spec.request,
                    i.id,
                    spec.username,
                    spec.expires_at,
                    if spec.sudo { "yes" } else { "no" }
                ));
                InstanceOutcome {
                    instance: i.id.clone(),
                    ok: true,
                    detail: None,
                }
            })
            .collect())
    }

    async fn revoke(&self, spec: &RevokeSpec) -> Result<Vec<InstanceOutcome>, ProvisionError> {
        Ok(spec
            .instances
            .iter()
            .map(|i| {
                let document = match i.platform {
                    Platform::Linux => "Passport-RevokeLinux",
                    Platform::Windows => "Passport-RevokeWindows",
                };
                self.say(format!(
                    "[dry-run] {} → {}: {document} username={}",
                    spec.request, i.id, spec.username
                ));
                InstanceOutcome {
                    instance: i.id.clone(),
                    ok: true,
                    detail: None,
                }
            })
            .collect())
    }
}
