//! What the system `ssh` and `scp` are given: the request's key pair and
//! certificate, a Passport `known_hosts`, and `passport proxy` as the
//! `ProxyCommand`; and the `Host` blocks of `passport ssh-config`.
//!
//! Host keys: instances are reached by id through Session Manager, which
//! already authenticates the instance (AWS routes the session to that
//! instance id over TLS, under IAM). So the first key an instance shows is
//! accepted and pinned under its id (`HostKeyAlias`, `StrictHostKeyChecking
//! accept-new`) in Passport's own `known_hosts`; a changed key afterwards is
//! refused by ssh as usual, and the person's own `known_hosts` is untouched.

use std::fs;
use std::path::{Path, PathBuf};

use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, Certificate, LineEnding, PrivateKey};

use super::store::write_private;
use crate::domain::values::RequestId;

pub const KEY_FILE: &str = "id_ed25519";
pub const CERT_FILE: &str = "id_ed25519-cert.pub";

/// A certificate is renewed when it ends within this many seconds.
const RENEW_BEFORE_SECS: u64 = 120;

/// The request's key pair in `dir`, made on first use (0600). Returns the
/// public key line.
pub fn ensure_key(dir: &Path, request: RequestId) -> Result<String, String> {
    let path = dir.join(KEY_FILE);
    if let Ok(text) = fs::read_to_string(&path) {
        if let Ok(key) = PrivateKey::from_openssh(&text) {
            return key
                .public_key()
                .to_openssh()
                .map_err(|e| format!("cannot encode the public key: {e}"));
        }
    }
    let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
        .map_err(|e| format!("cannot make a key pair: {e}"))?;
    key.set_comment(format!("passport {request}"));
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| format!("cannot encode the key pair: {e}"))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| format!("cannot encode the public key: {e}"))?;
    // A stale certificate belongs to the old key.
    let _ = fs::remove_file(dir.join(CERT_FILE));
    write_private(&path, private.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let pub_path = dir.join(format!("{KEY_FILE}.pub"));
    write_private(&pub_path, format!("{public}\n").as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", pub_path.display()))?;
    Ok(public)
}

/// Whether the certificate saved in `dir` can be used now: it parses, is for
/// `public` and `principal`, ends more than two minutes from `now_secs`, and
/// not before `access_ends_secs` (an extension needs a new one).
pub fn cached_certificate_fits(
    dir: &Path,
    public: &str,
    principal: &str,
    now_secs: u64,
    access_ends_secs: Option<u64>,
) -> bool {
    let Ok(text) = fs::read_to_string(dir.join(CERT_FILE)) else {
        return false;
    };
    let Ok(cert) = Certificate::from_openssh(text.trim()) else {
        return false;
    };
    let Ok(key) = ssh_key::PublicKey::from_openssh(public) else {
        return false;
    };
    cert.public_key() == key.key_data()
        && cert.valid_principals().iter().any(|p| p == principal)
        && cert.valid_before() > now_secs + RENEW_BEFORE_SECS
        && access_ends_secs.is_none_or(|end| cert.valid_before() + 60 >= end)
}

pub fn save_certificate(dir: &Path, line: &str) -> Result<(), String> {
    let path = dir.join(CERT_FILE);
    write_private(&path, format!("{}\n", line.trim()).as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// How ssh proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The request's key and its certificate from Passport's CA.
    Certificate { key: PathBuf, certificate: PathBuf },
    /// The server has no SSH CA: the person's registered key, from their own
    /// ssh configuration and agent.
    OwnKey,
}

/// Everything that makes one connection.
#[derive(Debug, Clone)]
pub struct Target {
    /// This `passport` executable.
    pub exe: PathBuf,
    pub client_dir: PathBuf,
    pub known_hosts: PathBuf,
    pub request: RequestId,
    pub instance: String,
    pub user: String,
    pub identity: Identity,
}

/// `%` starts a token in ssh's file and command options.
fn percent(text: &str) -> String {
    text.replace('%', "%%")
}

/// A value for an ssh configuration line: quoted when it must be.
fn config_value(text: &str) -> String {
    if !text.is_empty()
        && !text
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '#'))
    {
        return text.to_owned();
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// One word for the shell that runs a `ProxyCommand` (`sh -c` on Unix; on
/// Windows ssh starts the command itself, which reads double quotes).
pub fn shell_word(text: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@,".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        return text.to_owned();
    }
    if cfg!(windows) {
        format!("\"{}\"", text.replace('"', "\\\""))
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// The `ProxyCommand`: `passport proxy` for this request, with ssh's own
/// `%h` (the instance id) and `%p` (the port).
pub fn proxy_command(exe: &Path, client_dir: &Path, request: RequestId) -> String {
    percent(&format!(
        "{} proxy --dir {} --request {request}",
        shell_word(&exe.to_string_lossy()),
        shell_word(&client_dir.to_string_lossy()),
    )) + " %h %p"
}

/// The `-o` options for ssh and scp, as (name, value) pairs.
pub fn options(t: &Target, host_key_alias: bool) -> Vec<(&'static str, String)> {
    let path = |p: &Path| config_value(&percent(&p.to_string_lossy()));
    let mut o = vec![("User", t.user.clone())];
    if let Identity::Certificate { key, certificate } = &t.identity {
        o.push(("IdentityFile", path(key)));
        o.push(("CertificateFile", path(certificate)));
        o.push(("IdentitiesOnly", "yes".to_owned()));
    }
    o.push(("UserKnownHostsFile", path(&t.known_hosts)));
    if host_key_alias {
        o.push(("HostKeyAlias", t.instance.clone()));
    }
    o.push(("StrictHostKeyChecking", "accept-new".to_owned()));
    o.push((
        "ProxyCommand",
        proxy_command(&t.exe, &t.client_dir, t.request),
    ));
    o
}

/// `-o Name=value …` for the command line.
pub fn option_args(options: &[(&'static str, String)]) -> Vec<String> {
    options
        .iter()
        .flat_map(|(name, value)| ["-o".to_owned(), format!("{name}={value}")])
        .collect()
}

/// ssh's arguments: our options, the instance id, then the person's own
/// arguments (OpenSSH reads options after the destination too, and the first
/// other word starts the remote command).
pub fn ssh_args(t: &Target, extra: &[String]) -> Vec<String> {
    let mut args = option_args(&options(t, true));
    args.push(t.instance.clone());
    args.extend(extra.iter().cloned());
    args
}

/// One `Host` block of `passport ssh-config`.
pub fn host_block(t: &Target, aliases: &[String], comment: &str) -> String {
    let mut out = format!("# {comment}\nHost {}\n", aliases.join(" "));
    out.push_str(&format!("    HostName {}\n", t.instance));
    for (name, value) in options(t, true) {
        out.push_str(&format!("    {name} {value}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn target(identity: Identity) -> Target {
        Target {
            exe: PathBuf::from("/opt/pass port/passport"),
            client_dir: PathBuf::from("/home/dev/.config/passport"),
            known_hosts: PathBuf::from("/home/dev/.config/passport/known_hosts"),
            request: RequestId::new(7).unwrap(),
            instance: "i-0123456789abcdef0".into(),
            user: "pp-dev1-7".into(),
            identity,
        }
    }

    #[test]
    fn ssh_gets_the_key_certificate_known_hosts_and_proxy() {
        let t = target(Identity::Certificate {
            key: "/d/AR-7/id_ed25519".into(),
            certificate: "/d/AR-7/id_ed25519-cert.pub".into(),
        });
        let args = ssh_args(&t, &["id".into(), "-un".into()]);
        let joined = args.join(" ");
        for want in [
            "-o User=pp-dev1-7",
            "-o IdentityFile=/d/AR-7/id_ed25519",
            "-o CertificateFile=/d/AR-7/id_ed25519-cert.pub",
            "-o IdentitiesOnly=yes",
            "-o HostKeyAlias=i-0123456789abcdef0",
            "-o StrictHostKeyChecking=accept-new",
            "i-0123456789abcdef0 id -un",
        ] {
            assert!(joined.contains(want), "{want} in {joined}");
        }
        let proxy = args
            .iter()
            .find(|a| a.starts_with("ProxyCommand="))
            .unwrap();
        if cfg!(unix) {
            assert_eq!(
                proxy,
                "ProxyCommand='/opt/pass port/passport' proxy --dir /home/dev/.config/passport --request AR-7 %h %p"
            );
        }
    }

    #[test]
    fn without_a_ca_ssh_uses_the_persons_own_keys() {
        let args = ssh_args(&target(Identity::OwnKey), &[]).join(" ");
        assert!(!args.contains("IdentityFile") && !args.contains("IdentitiesOnly"));
        assert!(args.contains("ProxyCommand="));
    }

    #[test]
    fn odd_paths_are_quoted_and_percent_escaped() {
        assert_eq!(config_value("/a b/%k"), "\"/a b/%k\"");
        assert_eq!(config_value(r#"C:\x"y"#), r#""C:\\x\"y""#);
        assert_eq!(percent("/x/%h"), "/x/%%h");
        if cfg!(unix) {
            assert_eq!(shell_word("it's"), "'it'\\''s'");
        }
    }

    #[test]
    fn the_key_is_made_once_private_and_a_certificate_must_fit() {
        let temp = tempfile::tempdir().unwrap();
        let ar = RequestId::new(1).unwrap();
        let public = ensure_key(temp.path(), ar).unwrap();
        assert!(public.starts_with("ssh-ed25519 "));
        assert_eq!(ensure_key(temp.path(), ar).unwrap(), public);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(temp.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!cached_certificate_fits(
            temp.path(),
            &public,
            "pp-a-1",
            0,
            None
        ));
    }
}
