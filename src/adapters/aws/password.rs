//! Passwords of short-lived Windows users. The instance makes the password
//! and returns it only encrypted to a one-time RSA key Passport generates for
//! the command (RSA-OAEP with SHA-256), so it never appears in clear in SSM's
//! command history or logs. Passport decrypts it and hands it to a
//! [`PasswordSink`], which delivers it to the requester by direct message only.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rsa::pkcs8::EncodePublicKey as _;
use rsa::rand_core::OsRng;
use rsa::{Oaep, RsaPrivateKey};
use secrecy::SecretString;
use sha2::Sha256;

use crate::domain::values::{InstanceId, RequestId, Username};

/// The start of the one stdout line that carries the encrypted password.
pub const PASSWORD_PREFIX: &str = "PASSPORT-PASSWORD-RSA-OAEP-SHA256:";

/// Whose a password is: the Windows user made on one instance for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordOwner {
    pub request: RequestId,
    pub instance: InstanceId,
    pub username: Username,
}

/// Receives each decrypted Windows password. Implementations must deliver it
/// to the requester by direct message and must not log or store it in clear.
pub trait PasswordSink: Send + Sync {
    fn deliver(&self, owner: PasswordOwner, password: SecretString);
}

/// A key pair made for one command and kept only in memory.
///
/// Decryption is the `rsa` crate's, whose timing is not constant (the Marvin
/// attack): that needs many chosen ciphertexts against one key, and a key
/// here decrypts at most the answers of one command's instances, which only
/// the instances (or whoever controls SSM's output) can write.
pub struct OneTimeKey {
    private: RsaPrivateKey,
    public_base64: String,
}

impl std::fmt::Debug for OneTimeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneTimeKey").finish_non_exhaustive()
    }
}

impl OneTimeKey {
    pub fn generate() -> Result<Self, String> {
        let private = RsaPrivateKey::new(&mut OsRng, 2048)
            .map_err(|_| "cannot generate a one-time RSA key".to_owned())?;
        let der = private
            .to_public_key()
            .to_public_key_der()
            .map_err(|_| "cannot encode the one-time RSA key".to_owned())?;
        let public_base64 = STANDARD.encode(der.as_bytes());
        Ok(Self {
            private,
            public_base64,
        })
    }

    /// Base64 of the DER SubjectPublicKeyInfo: the documents' `PublicKey` parameter.
    pub fn public_key_base64(&self) -> &str {
        &self.public_base64
    }

    /// Finds the password line in a grant's standard output and decrypts it.
    pub fn read_password(&self, stdout: &str) -> Result<SecretString, String> {
        let encoded = stdout
            .lines()
            .filter_map(|line| line.trim().strip_prefix(PASSWORD_PREFIX))
            .next_back()
            .ok_or_else(|| "the instance returned no password".to_owned())?;
        let ciphertext = STANDARD
            .decode(encoded.trim())
            .map_err(|_| "the instance returned a password that is not base64".to_owned())?;
        let mut plaintext = self
            .private
            .decrypt(Oaep::new::<Sha256>(), &ciphertext)
            .map_err(|_| "the instance returned a password for another key".to_owned())?;
        let password = std::str::from_utf8(&plaintext)
            .map(SecretString::from)
            .map_err(|_| "the instance returned a password that is not UTF-8".to_owned());
        plaintext.fill(0);
        password
    }
}

#[cfg(test)]
mod tests {
    use rsa::pkcs8::DecodePublicKey as _;
    use rsa::RsaPublicKey;
    use secrecy::ExposeSecret;

    use super::*;

    fn encrypt_for(key: &OneTimeKey, text: &str) -> String {
        let der = STANDARD.decode(key.public_key_base64()).unwrap();
        let public = RsaPublicKey::from_public_key_der(&der).unwrap();
        let ciphertext = public
            .encrypt(&mut OsRng, Oaep::new::<Sha256>(), text.as_bytes())
            .unwrap();
        STANDARD.encode(ciphertext)
    }

    #[test]
    fn the_public_key_is_what_the_windows_document_accepts() {
        let key = OneTimeKey::generate().unwrap();
        let b64 = key.public_key_base64();
        // The grant script's pattern: \A[A-Za-z0-9+/]{300,1400}={0,2}\z
        let body = b64.trim_end_matches('=');
        assert!((300..=1400).contains(&body.len()), "{}", body.len());
        assert!(body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'));
        assert!(b64.len() - body.len() <= 2);
    }

    #[test]
    fn a_password_encrypted_by_the_instance_is_read_back() {
        let key = OneTimeKey::generate().unwrap();
        let stdout = format!(
            "user pp-alice-3 ready\r\n{PASSWORD_PREFIX}{}\r\n",
            encrypt_for(&key, "S3cret-Pässword!")
        );
        assert_eq!(
            key.read_password(&stdout).unwrap().expose_secret(),
            "S3cret-Pässword!"
        );
    }

    #[test]
    fn a_password_for_another_key_or_none_at_all_is_refused() {
        let key = OneTimeKey::generate().unwrap();
        let other = OneTimeKey::generate().unwrap();
        let stdout = format!("{PASSWORD_PREFIX}{}", encrypt_for(&other, "x"));
        assert!(key.read_password(&stdout).is_err());
        assert!(key.read_password("done\n").is_err());
        assert!(key
            .read_password(&format!("{PASSWORD_PREFIX}not base64!"))
            .is_err());
    }
}
