//! A provisioner for the chat tests that hands each Windows grant's password
//! to the real [`PasswordCourier`], as the AWS provisioner does once it has
//! decrypted it: the dry run creates nothing, and the courier sends the
//! password by direct message over the chat platform's real HTTP API.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use passport::adapters::password_courier::PasswordCourier;
use passport::app::ports::{Described, GrantSpec, ProvisionError, Provisioner, RevokeSpec};
use passport::domain::request::{InstanceOutcome, Platform};
use passport::domain::values::InstanceId;
use secrecy::SecretString;

pub struct WindowsPasswords {
    pub inner: Arc<dyn Provisioner>,
    pub courier: Arc<PasswordCourier>,
    /// Every password sent, in order.
    pub sent: Mutex<Vec<String>>,
}

impl WindowsPasswords {
    pub fn new(inner: Arc<dyn Provisioner>) -> Self {
        Self {
            inner,
            courier: Arc::new(PasswordCourier::new()),
            sent: Mutex::new(Vec::new()),
        }
    }

    pub fn sent(&self) -> Vec<String> {
        self.sent.lock().unwrap().clone()
    }
}

#[async_trait]
impl Provisioner for WindowsPasswords {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn describe(&self, ids: &[InstanceId]) -> Result<Vec<Described>, ProvisionError> {
        self.inner.describe(ids).await
    }

    async fn grant(&self, spec: &GrantSpec) -> Result<Vec<InstanceOutcome>, ProvisionError> {
        let outcomes = self.inner.grant(spec).await?;
        for o in outcomes.iter().filter(|o| o.ok) {
            let windows = spec
                .instances
                .iter()
                .any(|i| i.id == o.instance && i.platform == Platform::Windows);
            if !windows {
                continue;
            }
            let password = {
                let mut sent = self.sent.lock().unwrap();
                let p = format!("Pw{}x{}-Secret!", spec.request.number(), sent.len() + 1);
                sent.push(p.clone());
                p
            };
            self.courier
                .send(
                    spec.request,
                    &o.instance,
                    &spec.username,
                    &SecretString::from(password),
                )
                .await
                .map_err(ProvisionError::Unavailable)?;
        }
        Ok(outcomes)
    }

    async fn revoke(&self, spec: &RevokeSpec) -> Result<Vec<InstanceOutcome>, ProvisionError> {
        self.inner.revoke(spec).await
    }
}
