//! What a certificate from Passport's SSH CA says, decided from the access
//! request alone. Signing is an adapter's job (`adapters/ssh_ca.rs`); this
//! module decides whether a certificate may be issued and with which contents.

use super::request::{AccessRequest, GrantState, Platform, Refusal, RefusalKind};
use super::time::{Span, Timestamp};
use super::values::UserId;

/// Serials are `request number << SERIAL_SHIFT | n`, with `n` counted per
/// request inside the request's own transaction, so no serial is ever issued
/// twice from one database, with no table or lock of its own.
pub const SERIAL_SHIFT: u32 = 20;
const MAX_PER_REQUEST: u32 = (1 << SERIAL_SHIFT) - 1;

/// The contents of one user certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSpec {
    pub serial: u64,
    /// The request's username: the only principal.
    pub principal: String,
    /// `AR-n <requester> <ticket>`, what sshd logs on every login.
    pub key_id: String,
    pub valid_after: Timestamp,
    /// The end of the access: the certificate ends with it whatever happens to Passport.
    pub valid_before: Timestamp,
    /// `permit-port-forwarding`, only when every rule of the request allows it.
    pub port_forwarding: bool,
}

impl AccessRequest {
    /// Issues the next certificate of this request to `who`, valid from
    /// `now - backdate` (clock skew between Passport and the instances) to the
    /// access's expiry. Only the requester of an active request with a Linux
    /// grant gets one.
    pub fn issue_certificate(
        &mut self,
        who: &UserId,
        now: Timestamp,
        backdate: Span,
    ) -> Result<CertificateSpec, Refusal> {
        let expires_at = self.requester_access_ends(
            who,
            now,
            "get a certificate for it",
            "a certificate is issued only while access is active",
        )?;
        let linux_active = self
            .instances_in(GrantState::Active)
            .iter()
            .any(|i| i.platform == Platform::Linux);
        if !linux_active {
            return Err(RefusalKind::WrongState(format!(
                "{} has no Linux instance with active access: certificates are for Linux logins (Windows uses its password)",
                self.id
            )));
        }
        let number = self.id.number();
        if self.certificates_issued >= MAX_PER_REQUEST || number >= 1 << (64 - SERIAL_SHIFT) {
            return Err(RefusalKind::NotAllowed(format!(
                "{} has issued all the certificates it can: request access again",
                self.id
            )));
        }
        self.certificates_issued += 1;
        Ok(CertificateSpec {
            serial: number << SERIAL_SHIFT | u64::from(self.certificates_issued),
            principal: self.username.as_str().to_owned(),
            key_id: format!("{} {} {}", self.id, self.requester.handle, self.ticket),
            valid_after: now.minus(backdate),
            valid_before: expires_at,
            port_forwarding: self.requirement.port_forwarding,
        })
    }
}
