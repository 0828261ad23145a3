//! The instance-script sandbox (tests/sandbox/enter.sh): where it is, the
//! PATH the scripts run with inside it, and whether this machine can run it.

// Each test binary that includes this file uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The PATH commands run with in the sandbox.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `bytes` as text, any invalid UTF-8 replaced.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether `tool` is a command on [`PATH`].
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", "command -v \"$1\" >/dev/null 2>&1", "have", tool])
        .env("PATH", PATH)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The script that runs a command inside a fresh sandbox.
pub fn enter_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sandbox/enter.sh")
}

/// Why this machine cannot run the sandbox with `tools` in it, if it cannot:
/// `needs_root` when this is not root, else the first tool missing, else
/// why a sandbox would not start.
pub fn unavailable(needs_root: &str, tools: &[&str]) -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if text(&uid.stdout).trim() != "0" {
        return Some(needs_root.to_string());
    }
    for tool in tools {
        if !have(tool) {
            return Some(format!(
                "{tool} is not installed; scripts/test installs the sandbox packages"
            ));
        }
    }
    let probe = tempfile::tempdir().ok()?;
    let out = Command::new("sh")
        .arg(enter_sh())
        .arg(probe.path().join("probe"))
        .arg("true")
        .output()
        .ok()?;
    if !out.status.success() {
        return Some(format!(
            "the sandbox cannot start here (namespaces unavailable?): {}",
            text(&out.stderr).trim()
        ));
    }
    None
}
