//! The client's files: where they live, and how they are written so that
//! nobody else can read them.
//!
//! ```text
//! <dir>/                      0700
//!   session.json              0600  server URL, API token, its expiry, who
//!   known_hosts                     host keys of instances, by instance id
//!   requests/AR-n/            0700  one directory per request
//!     id_ed25519              0600  the request's own key pair
//!     id_ed25519.pub
//!     id_ed25519-cert.pub           its certificate from Passport's SSH CA
//!     credentials-<instance>.json
//!                             0600  AWS credentials scoped to that instance, reused until near expiry
//! ```

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::api::Me;
use crate::domain::values::RequestId;

/// Names the directory the client keeps its files in (tests use it).
pub const DIR_VARIABLE: &str = "PASSPORT_CLIENT_DIR";

/// The platform's configuration directory for Passport: `PASSPORT_CLIENT_DIR`
/// when set; else `$XDG_CONFIG_HOME/passport` or `~/.config/passport` on Linux,
/// `~/Library/Application Support/passport` on macOS, `%APPDATA%\passport` on
/// Windows.
pub fn default_dir() -> Result<PathBuf, String> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var(DIR_VARIABLE) {
        return Ok(PathBuf::from(dir));
    }
    if cfg!(windows) {
        return var("APPDATA")
            .map(|d| PathBuf::from(d).join("passport"))
            .ok_or_else(|| {
                format!(
                    "%APPDATA% is not set: set {DIR_VARIABLE} to a directory for Passport's files"
                )
            });
    }
    let home = var("HOME").map(PathBuf::from);
    if cfg!(target_os = "macos") {
        return home
            .map(|h| h.join("Library/Application Support/passport"))
            .ok_or_else(|| {
                format!("$HOME is not set: set {DIR_VARIABLE} to a directory for Passport's files")
            });
    }
    if let Some(xdg) = var("XDG_CONFIG_HOME").map(PathBuf::from) {
        // The XDG specification says to ignore a relative path.
        if xdg.is_absolute() {
            return Ok(xdg.join("passport"));
        }
    }
    home.map(|h| h.join(".config/passport")).ok_or_else(|| {
        format!("$HOME is not set: set {DIR_VARIABLE} to a directory for Passport's files")
    })
}

/// Creates `dir` (and its parents) private to the user: 0700 on Unix.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)?;
    // An existing directory keeps its mode with `recursive`: tighten it, since
    // it is Passport's own.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically, in a file that is created readable and
/// writable by the user only (mode 0600 from its creation on Unix, never
/// loosened then tightened). The directory must exist.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&temp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    match written.and_then(|()| fs::rename(&temp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// What `passport login` saved.
#[derive(Clone)]
pub struct Session {
    /// The server's base URL, e.g. `https://passport.example.com`.
    pub server: String,
    pub token: SecretString,
    pub expires_at: String,
    pub user: Me,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("server", &self.server)
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("user", &self.user)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct SessionFile {
    server: String,
    token: String,
    expires_at: String,
    user: Me,
}

/// The client directory and the files in it.
#[derive(Debug, Clone)]
pub struct ClientDir {
    root: PathBuf,
}

impl ClientDir {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn session_path(&self) -> PathBuf {
        self.root.join("session.json")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.root.join("known_hosts")
    }

    fn requests_dir(&self) -> PathBuf {
        self.root.join("requests")
    }

    /// The directory of one request's key, certificate and credentials.
    pub fn request_dir(&self, id: RequestId) -> PathBuf {
        self.requests_dir().join(id.to_string())
    }

    /// Creates the directory of one request (0700), and the client directory.
    pub fn ensure_request_dir(&self, id: RequestId) -> io::Result<PathBuf> {
        create_private_dir(&self.root)?;
        create_private_dir(&self.requests_dir())?;
        let dir = self.request_dir(id);
        create_private_dir(&dir)?;
        Ok(dir)
    }

    /// The saved sign-in, if any.
    pub fn load_session(&self) -> io::Result<Option<Session>> {
        let text = match fs::read(self.session_path()) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let file: SessionFile = serde_json::from_slice(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is damaged ({e}): run `passport login <url>` again",
                    self.session_path().display()
                ),
            )
        })?;
        Ok(Some(Session {
            server: file.server,
            token: SecretString::from(file.token),
            expires_at: file.expires_at,
            user: file.user,
        }))
    }

    /// Saves a sign-in (0600). Signing in to another server forgets every
    /// request's keys and credentials: request ids are the server's.
    pub fn save_session(&self, session: &Session) -> io::Result<()> {
        create_private_dir(&self.root)?;
        if let Ok(Some(old)) = self.load_session() {
            if old.server != session.server {
                self.forget_requests()?;
            }
        }
        let file = SessionFile {
            server: session.server.clone(),
            token: session.token.expose_secret().to_owned(),
            expires_at: session.expires_at.clone(),
            user: session.user.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        write_private(&self.session_path(), &bytes)
    }

    /// Deletes the sign-in and every request's keys, certificates and credentials.
    pub fn forget_session(&self) -> io::Result<()> {
        match fs::remove_file(self.session_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.forget_requests()
    }

    fn forget_requests(&self) -> io::Result<()> {
        match fs::remove_dir_all(self.requests_dir()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes one request's key, certificate and credentials.
    pub fn forget_request(&self, id: RequestId) -> io::Result<()> {
        match fs::remove_dir_all(self.request_dir(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes the files of requests not in `keep` (requests that ended).
    pub fn forget_requests_except(&self, keep: &[RequestId]) -> io::Result<()> {
        let entries = match fs::read_dir(self.requests_dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Ok(id) = RequestId::parse(&name.to_string_lossy()) else {
                continue;
            };
            if !keep.contains(&id) {
                self.forget_request(id)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn me() -> Me {
        Me {
            id: "U1".into(),
            handle: "dev1".into(),
            surface: "slack".into(),
            token_expires_at: "2026-12-01T20:00:00Z".into(),
        }
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_session_is_saved_private_and_read_back() {
        let temp = tempfile::tempdir().unwrap();
        let dir = ClientDir::new(temp.path().join("passport"));
        assert!(dir.load_session().unwrap().is_none());
        let session = Session {
            server: "https://passport.example.com".into(),
            token: SecretString::from("pp_secret_token".to_string()),
            expires_at: "2026-12-01T20:00:00Z".into(),
            user: me(),
        };
        dir.save_session(&session).unwrap();
        let back = dir.load_session().unwrap().unwrap();
        assert_eq!(back.token.expose_secret(), "pp_secret_token");
        assert_eq!(back.user, me());
        assert!(!format!("{back:?}").contains("pp_secret_token"));
        #[cfg(unix)]
        {
            assert_eq!(mode(&dir.session_path()), 0o600);
            assert_eq!(mode(dir.root()), 0o700);
        }
    }

    #[test]
    fn another_server_forgets_the_requests_and_logout_forgets_everything() {
        let temp = tempfile::tempdir().unwrap();
        let dir = ClientDir::new(temp.path().to_path_buf());
        let mut session = Session {
            server: "https://a.example.com".into(),
            token: SecretString::from("t".to_string()),
            expires_at: String::new(),
            user: me(),
        };
        dir.save_session(&session).unwrap();
        let ar1 = RequestId::new(1).unwrap();
        let req = dir.ensure_request_dir(ar1).unwrap();
        write_private(&req.join("credentials.json"), b"{}").unwrap();
        dir.save_session(&session).unwrap();
        assert!(req.exists(), "the same server keeps them");
        session.server = "https://b.example.com".into();
        dir.save_session(&session).unwrap();
        assert!(
            !req.exists(),
            "another server's request ids mean nothing here"
        );
        dir.ensure_request_dir(ar1).unwrap();
        dir.forget_session().unwrap();
        assert!(!dir.session_path().exists());
        assert!(!req.exists());
    }

    #[test]
    fn ended_requests_lose_their_files() {
        let temp = tempfile::tempdir().unwrap();
        let dir = ClientDir::new(temp.path().to_path_buf());
        let (a, b) = (RequestId::new(1).unwrap(), RequestId::new(2).unwrap());
        dir.ensure_request_dir(a).unwrap();
        dir.ensure_request_dir(b).unwrap();
        dir.forget_requests_except(&[b]).unwrap();
        assert!(!dir.request_dir(a).exists());
        assert!(dir.request_dir(b).exists());
    }
}
