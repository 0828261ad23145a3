//! Passport's SSH certificate authority: the CA key (ed25519, or RSA 4096
//! signing with `rsa-sha2-512`), its file on disk, and user certificates signed
//! with the RustCrypto `ssh-key` crate's builder. What a certificate says is
//! decided by the domain (`domain/certificate.rs`); this module only encodes
//! and signs it.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use ssh_key::certificate::{Builder, CertType};
use ssh_key::private::{KeypairData, RsaKeypair};
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};

use serde::{Deserialize, Serialize};

use crate::app::ports::{CertificateSigner, SignError};
use crate::config::Secret;
use crate::domain::certificate::CertificateSpec;
use crate::domain::time::{parse_setting_within, Span};
use crate::domain::values::SshPublicKey;

/// The comment of a CA key Passport created, shown by `ca show`.
const COMMENT: &str = "passport-ca";

/// Bits of an RSA CA key. Fleets choose RSA only for old sshd; 4096 bits keep
/// it strong for the CA's lifetime.
pub const RSA_BITS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKeyType {
    Ed25519,
    Rsa,
}

impl CaKeyType {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ed25519" => Some(Self::Ed25519),
            "rsa" => Some(Self::Rsa),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the CA key is not usable: {0}")]
    Key(String),
}

fn file_error(path: &Path, reason: impl Into<String>) -> CaError {
    CaError::File {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// A CA key that can sign user certificates.
pub struct CertificateAuthority {
    key: PrivateKey,
    /// The RSA signer, for an RSA key (see [`RsaSigner`]).
    rsa: Option<RsaSigner>,
    public_line: String,
}

/// Signs with RSA PKCS#1 v1.5 over SHA-512 (`rsa-sha2-512`) for ssh-key's
/// certificate builder, which encodes everything else. ssh-key 0.6 builds
/// its RSA private key from the first prime twice, so its own RSA signing
/// fails; this signer builds the key from both primes.
struct RsaSigner {
    key: rsa::pkcs1v15::SigningKey<sha2::Sha512>,
    public: ssh_key::public::KeyData,
}

impl RsaSigner {
    fn new(pair: &RsaKeypair) -> Result<Self, CaError> {
        let big = |m: &ssh_key::Mpint| {
            rsa::BigUint::from_bytes_be(m.as_positive_bytes().unwrap_or_default())
        };
        let private = rsa::RsaPrivateKey::from_components(
            big(&pair.public.n),
            big(&pair.public.e),
            big(&pair.private.d),
            vec![big(&pair.private.p), big(&pair.private.q)],
        )
        .and_then(|key| key.validate().map(|()| key))
        .map_err(|e| CaError::Key(format!("the RSA key is inconsistent: {e}")))?;
        Ok(Self {
            key: rsa::pkcs1v15::SigningKey::new(private),
            public: ssh_key::public::KeyData::Rsa(pair.public.clone()),
        })
    }
}

impl signature::Signer<ssh_key::Signature> for RsaSigner {
    fn try_sign(&self, message: &[u8]) -> signature::Result<ssh_key::Signature> {
        let signed = signature::Signer::<rsa::pkcs1v15::Signature>::try_sign(&self.key, message)?;
        ssh_key::Signature::new(
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            signature::SignatureEncoding::to_vec(&signed),
        )
        .map_err(|_| signature::Error::new())
    }
}

impl From<&RsaSigner> for ssh_key::public::KeyData {
    fn from(signer: &RsaSigner) -> Self {
        signer.public.clone()
    }
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private half.
        f.debug_struct("CertificateAuthority")
            .field("public", &self.public_line)
            .finish()
    }
}

impl CertificateAuthority {
    /// A new CA key.
    pub fn generate(kind: CaKeyType) -> Result<Self, CaError> {
        let mut key = match kind {
            CaKeyType::Ed25519 => PrivateKey::random(&mut OsRng, Algorithm::Ed25519),
            CaKeyType::Rsa => RsaKeypair::random(&mut OsRng, RSA_BITS)
                .and_then(|pair| PrivateKey::new(KeypairData::from(pair), COMMENT)),
        }
        .map_err(|e| CaError::Key(e.to_string()))?;
        key.set_comment(COMMENT);
        Self::from_key(key)
    }

    /// Reads an unencrypted OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`).
    pub fn from_openssh(text: &str) -> Result<Self, CaError> {
        let key = PrivateKey::from_openssh(text.trim().as_bytes()).map_err(|e| {
            CaError::Key(format!(
                "not an OpenSSH private key ({e}): create one with `passport ca init`"
            ))
        })?;
        if key.is_encrypted() {
            return Err(CaError::Key(
                "the key is encrypted with a passphrase, which Passport cannot type: keep it unencrypted in a file only Passport's user can read, or in a secret".into(),
            ));
        }
        Self::from_key(key)
    }

    fn from_key(key: PrivateKey) -> Result<Self, CaError> {
        let mut rsa = None;
        match key.algorithm() {
            Algorithm::Ed25519 => {}
            Algorithm::Rsa { .. } => {
                let bits = match key.key_data() {
                    KeypairData::Rsa(pair) => pair.public.n.as_positive_bytes().map_or(0, |n| {
                        n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize)
                    }),
                    _ => 0,
                };
                if bits < 3072 {
                    return Err(CaError::Key(format!(
                        "an RSA CA key of {bits} bits is too weak: use ed25519, or RSA of 3072 bits or more (`passport ca init --type rsa` makes 4096)"
                    )));
                }
                if let KeypairData::Rsa(pair) = key.key_data() {
                    rsa = Some(RsaSigner::new(pair)?);
                }
            }
            other => {
                return Err(CaError::Key(format!(
                    "{other} CA keys are not supported: use ed25519 or RSA (`passport ca init`)"
                )))
            }
        }
        let public_line = public_line(key.public_key())?;
        Ok(Self {
            key,
            rsa,
            public_line,
        })
    }

    /// Reads the CA key from `path`, refusing a file that group or others may
    /// read: whoever reads it can log in anywhere Passport can.
    pub fn load(path: &Path) -> Result<Self, CaError> {
        let meta = fs::metadata(path).map_err(|e| {
            file_error(
                path,
                format!("cannot read the SSH CA key ({e}): create it with `passport ca init`"),
            )
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(file_error(
                path,
                format!(
                    "the SSH CA key is readable by group or others (mode {mode:04o}): run `chmod 600 {}`",
                    path.display()
                ),
            ));
        }
        let text = fs::read_to_string(path)
            .map_err(|e| file_error(path, format!("cannot read the SSH CA key: {e}")))?;
        Self::from_openssh(&text).map_err(|e| file_error(path, e.to_string()))
    }

    /// Writes the key to a new file that only its owner can read. Never
    /// replaces an existing file.
    pub fn save_new(&self, path: &Path) -> Result<(), CaError> {
        let text = self
            .key
            .to_openssh(LineEnding::LF)
            .map_err(|e| CaError::Key(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .map_err(|e| file_error(dir, format!("cannot create the directory: {e}")))?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => file_error(
                    path,
                    "a key already exists here; Passport never overwrites a CA key (see `passport ca rotate`)",
                ),
                _ => file_error(path, format!("cannot create the key file: {e}")),
            })?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| file_error(path, format!("cannot write the key file: {e}")))
    }

    /// `<type> <base64> passport-ca`, the line instances trust.
    pub fn public_key_line(&self) -> &str {
        &self.public_line
    }

    /// The key's OpenSSH fingerprint, `SHA256:…`.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// Signs a user certificate for `key` and returns it as an OpenSSH
    /// certificate line (`ssh-ed25519-cert-v01@openssh.com AAAA… AR-n`).
    /// Extensions: `permit-pty`, and `permit-port-forwarding` only when the
    /// spec allows it; never agent or X11 forwarding or user rc.
    pub fn sign(
        &self,
        spec: &CertificateSpec,
        key: &SshPublicKey,
        source_address: Option<&str>,
    ) -> Result<String, SignError> {
        let subject = PublicKey::from_openssh(key.as_str())
            .map_err(|e| SignError::BadKey(format!("the public key cannot be read: {e}")))?;
        let secs = |ms: i64| u64::try_from(ms.div_euclid(1000)).unwrap_or(0);
        let valid_after = secs(spec.valid_after.as_millis());
        let valid_before = secs(spec.valid_before.as_millis());
        if valid_before <= valid_after {
            return Err(SignError::BadKey("the access has already ended".into()));
        }
        let failed = |e: ssh_key::Error| SignError::Failed(e.to_string());
        let mut builder = Builder::new_with_random_nonce(
            &mut OsRng,
            subject.key_data().clone(),
            valid_after,
            valid_before,
        )
        .map_err(failed)?;
        builder
            .serial(spec.serial)
            .and_then(|b| b.cert_type(CertType::User))
            .and_then(|b| b.key_id(spec.key_id.clone()))
            .and_then(|b| b.valid_principal(spec.principal.clone()))
            .and_then(|b| b.extension("permit-pty", ""))
            .and_then(|b| b.comment(spec.key_id.split(' ').next().unwrap_or_default()))
            .map_err(failed)?;
        if spec.port_forwarding {
            builder
                .extension("permit-port-forwarding", "")
                .map_err(failed)?;
        }
        if let Some(addresses) = source_address {
            builder
                .critical_option("source-address", addresses)
                .map_err(failed)?;
        }
        let cert = match &self.rsa {
            Some(rsa) => builder.sign(rsa),
            None => builder.sign(&self.key),
        }
        .map_err(failed)?;
        cert.to_openssh().map_err(failed)
    }
}

/// `<type> <base64> <comment>` of a public key.
fn public_line(key: &PublicKey) -> Result<String, CaError> {
    key.to_openssh().map_err(|e| CaError::Key(e.to_string()))
}

/// Checks a configured public key line (`previous_public_keys`,
/// `next_public_keys`) and returns it as `<type> <base64>`.
pub fn parse_public_line(text: &str) -> Result<String, String> {
    let key = PublicKey::from_openssh(text.trim()).map_err(|e| {
        format!("not an OpenSSH public key ({e}): copy the line `passport ca show` printed")
    })?;
    match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Rsa { .. } => {}
        other => {
            return Err(format!(
                "{other} CA keys are not supported: use ed25519 or RSA"
            ))
        }
    }
    let mut plain = key;
    plain.set_comment("");
    plain
        .to_openssh()
        .map(|line| line.trim().to_owned())
        .map_err(|e| e.to_string())
}

/// The CA as the use cases see it: the signing key, the public keys instances
/// trust beside it during a rotation, and the optional `source-address`.
#[derive(Debug)]
pub struct SshCa {
    authority: CertificateAuthority,
    /// Keys staged for the next rotation: trusted, not yet signing.
    next: Vec<String>,
    /// Keys that signed before the last rotation: trusted until their
    /// certificates have run out.
    previous: Vec<String>,
    source_address: Option<String>,
}

impl SshCa {
    pub fn new(
        authority: CertificateAuthority,
        next: Vec<String>,
        previous: Vec<String>,
        source_address: Option<String>,
    ) -> Self {
        Self {
            authority,
            next,
            previous,
            source_address,
        }
    }

    pub fn authority(&self) -> &CertificateAuthority {
        &self.authority
    }
}

impl CertificateSigner for SshCa {
    fn trusted_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for line in std::iter::once(self.authority.public_key_line())
            .chain(self.next.iter().map(String::as_str))
            .chain(self.previous.iter().map(String::as_str))
        {
            let plain = line.split(' ').take(2).collect::<Vec<_>>().join(" ");
            if !keys.contains(&plain) {
                keys.push(plain);
            }
        }
        keys
    }

    fn fingerprint(&self) -> String {
        self.authority.fingerprint()
    }

    fn sign(&self, spec: &CertificateSpec, key: &SshPublicKey) -> Result<String, SignError> {
        self.authority
            .sign(spec, key, self.source_address.as_deref())
    }
}

// ---------------------------------------------------------------------------
// Configuration

/// `[ssh_ca]`: Passport's SSH certificate authority.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshCaConfig {
    /// The CA's private key (OpenSSH format), readable only by Passport's user.
    /// Created by `passport ca init`.
    pub key_path: Option<PathBuf>,
    /// The CA's private key itself, from a secret (`PASSPORT_SSH_CA__KEY`),
    /// instead of `key_path`.
    pub key: Option<Secret>,
    /// Public keys of a rotation's next CA key: trusted on instances from the
    /// next grant on, not yet signing.
    pub next_public_keys: Vec<String>,
    /// Public keys of CA keys that signed before the last rotation: still
    /// trusted, until every certificate they signed has run out.
    pub previous_public_keys: Vec<String>,
    /// Addresses or CIDR blocks certificates may be used from (the
    /// `source-address` option). Empty: from anywhere.
    pub source_address: Vec<String>,
    /// How long before issue a certificate becomes valid, for instance clocks
    /// running behind Passport's.
    pub backdate: String,
}

impl Default for SshCaConfig {
    fn default() -> Self {
        Self {
            key_path: None,
            key: None,
            next_public_keys: Vec::new(),
            previous_public_keys: Vec::new(),
            source_address: Vec::new(),
            backdate: "2m".into(),
        }
    }
}

/// Where the CA key comes from.
#[derive(Debug, Clone)]
pub enum CaKeySource {
    File(PathBuf),
    Secret(Secret),
}

/// `[ssh_ca]`, checked. Reading the key is left to [`SshCaSettings::load`],
/// at start-up.
#[derive(Debug, Clone)]
pub struct SshCaSettings {
    pub key: CaKeySource,
    pub next_public_keys: Vec<String>,
    pub previous_public_keys: Vec<String>,
    pub source_address: Option<String>,
    pub backdate: Span,
}

impl SshCaConfig {
    /// Checks every field and names each bad one (`ssh_ca.backdate: …`).
    pub fn validate(&self) -> Result<SshCaSettings, Vec<String>> {
        let mut errors = Vec::new();
        let key = match (&self.key_path, &self.key) {
            (Some(path), None) => CaKeySource::File(path.clone()),
            (None, Some(secret)) => CaKeySource::Secret(secret.clone()),
            (Some(_), Some(_)) => {
                errors.push("ssh_ca: set key_path or key (PASSPORT_SSH_CA__KEY), not both".into());
                CaKeySource::File(PathBuf::new())
            }
            (None, None) => {
                errors.push("ssh_ca.key_path: the CA key is needed: create one with `passport ca init` and set key_path, or pass it as PASSPORT_SSH_CA__KEY".into());
                CaKeySource::File(PathBuf::new())
            }
        };
        let mut lines = |field: &str, list: &[String]| -> Vec<String> {
            list.iter()
                .enumerate()
                .filter_map(|(i, line)| match parse_public_line(line) {
                    Ok(plain) => Some(plain),
                    Err(e) => {
                        errors.push(format!("ssh_ca.{field}[{i}]: {e}"));
                        None
                    }
                })
                .collect()
        };
        let next_public_keys = lines("next_public_keys", &self.next_public_keys);
        let previous_public_keys = lines("previous_public_keys", &self.previous_public_keys);
        if next_public_keys.len() + previous_public_keys.len() > 3 {
            errors.push("ssh_ca: at most 3 next and previous public keys together (instances trust at most 4 CA keys): finish one rotation before starting another".into());
        }
        for (i, address) in self.source_address.iter().enumerate() {
            if !is_address_or_cidr(address) {
                errors.push(format!(
                    "ssh_ca.source_address[{i}]: {address:?} is not an address or CIDR block: use forms like 10.0.0.0/8 or 2001:db8::/32"
                ));
            }
        }
        let backdate = match parse_setting_within(
            "ssh_ca.backdate",
            &self.backdate,
            Span::ZERO,
            Span::from_hours(1),
        ) {
            Ok(span) => span,
            Err(e) => {
                errors.push(e);
                Span::ZERO
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(SshCaSettings {
            key,
            next_public_keys,
            previous_public_keys,
            source_address: (!self.source_address.is_empty())
                .then(|| self.source_address.join(",")),
            backdate,
        })
    }
}

impl SshCaSettings {
    /// Reads the CA key: from its file, refusing one that group or others
    /// may read, or from the secret.
    pub fn authority(&self) -> Result<CertificateAuthority, CaError> {
        match &self.key {
            CaKeySource::File(path) => CertificateAuthority::load(path),
            CaKeySource::Secret(secret) => CertificateAuthority::from_openssh(secret.expose()),
        }
    }

    /// The CA as the use cases see it.
    pub fn load(&self) -> Result<SshCa, CaError> {
        Ok(SshCa::new(
            self.authority()?,
            self.next_public_keys.clone(),
            self.previous_public_keys.clone(),
            self.source_address.clone(),
        ))
    }
}

/// An IPv4 or IPv6 address, with an optional prefix length.
fn is_address_or_cidr(text: &str) -> bool {
    let (address, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let Ok(ip) = address.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::time::Timestamp;

    fn spec() -> CertificateSpec {
        CertificateSpec {
            serial: 1 << 20 | 1,
            principal: "pp-dev1-1".into(),
            key_id: "AR-1 dev1 ticket#123".into(),
            valid_after: Timestamp::from_millis(1_800_000_000_000),
            valid_before: Timestamp::from_millis(1_800_003_600_000),
            port_forwarding: false,
        }
    }

    fn user_key() -> SshPublicKey {
        let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap();
        SshPublicKey::parse(&key.public_key().to_openssh().unwrap()).unwrap()
    }

    #[test]
    fn a_certificate_says_what_the_spec_says() {
        let ca = CertificateAuthority::generate(CaKeyType::Ed25519).unwrap();
        let line = ca.sign(&spec(), &user_key(), Some("10.0.0.0/8")).unwrap();
        let cert = ssh_key::Certificate::from_openssh(&line).unwrap();
        assert_eq!(cert.serial(), 1 << 20 | 1);
        assert_eq!(cert.cert_type(), CertType::User);
        assert_eq!(cert.key_id(), "AR-1 dev1 ticket#123");
        assert_eq!(cert.valid_principals(), ["pp-dev1-1".to_owned()]);
        assert_eq!(cert.valid_after(), 1_800_000_000);
        assert_eq!(cert.valid_before(), 1_800_003_600);
        assert_eq!(cert.extensions().keys().collect::<Vec<_>>(), ["permit-pty"]);
        assert_eq!(
            cert.critical_options()
                .get("source-address")
                .map(String::as_str),
            Some("10.0.0.0/8")
        );
        assert_eq!(
            cert.signature_key()
                .fingerprint(HashAlg::Sha256)
                .to_string(),
            ca.fingerprint()
        );
    }

    #[test]
    fn port_forwarding_is_added_only_when_allowed() {
        let ca = CertificateAuthority::generate(CaKeyType::Ed25519).unwrap();
        let mut spec = spec();
        spec.port_forwarding = true;
        let cert = ssh_key::Certificate::from_openssh(&ca.sign(&spec, &user_key(), None).unwrap())
            .unwrap();
        assert_eq!(
            cert.extensions().keys().collect::<Vec<_>>(),
            ["permit-port-forwarding", "permit-pty"]
        );
        assert!(cert.critical_options().is_empty());
    }

    #[test]
    fn a_saved_key_loads_back_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca/key");
        let ca = CertificateAuthority::generate(CaKeyType::Ed25519).unwrap();
        ca.save_new(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = CertificateAuthority::load(&path).unwrap();
        assert_eq!(back.public_key_line(), ca.public_key_line());
        let again = CertificateAuthority::generate(CaKeyType::Ed25519).unwrap();
        let err = again.save_new(&path).unwrap_err().to_string();
        assert!(err.contains("never overwrites"), "{err}");
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        CertificateAuthority::generate(CaKeyType::Ed25519)
            .unwrap()
            .save_new(&path)
            .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = CertificateAuthority::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("readable by group or others (mode 0640)"),
            "{err}"
        );
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn the_trusted_set_is_signing_key_then_next_then_previous_without_comments() {
        let a = CertificateAuthority::generate(CaKeyType::Ed25519).unwrap();
        let b = CertificateAuthority::generate(CaKeyType::Ed25519).unwrap();
        let c = CertificateAuthority::generate(CaKeyType::Ed25519).unwrap();
        let plain = |ca: &CertificateAuthority| parse_public_line(ca.public_key_line()).unwrap();
        let ca = SshCa::new(
            a,
            vec![b.public_key_line().to_owned()],
            vec![plain(&c)],
            None,
        );
        let trusted = ca.trusted_keys();
        assert_eq!(trusted.len(), 3);
        assert_eq!(trusted[0], plain(ca.authority()));
        assert_eq!(trusted[1], plain(&b));
        assert_eq!(trusted[2], plain(&c));
        assert!(trusted.iter().all(|k| k.split(' ').count() == 2));
    }
}
