#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The instance side of provisioning: the SSM documents built from `manifests/ssm/`
//! and the scripts they run.
//!
//! The document checks run anywhere. The script tests run the Linux scripts as the
//! documents carry them (with the shared removal logic of `revoke-core.sh` in place) as
//! root through `tests/sandbox/enter.sh`, which gives every call private mount, PID and
//! network namespaces over copies of /etc, /home, /root, /run, /tmp, /var/lib, /var/log,
//! /var/mail and /var/spool/cron, so the host's users, sudoers and at queue are never
//! touched. Without root (or without the tools scripts/test installs) they print why
//! and return early.
//!
//! Logins go through a real sshd started inside the sandbox on its private loopback,
//! reading the sandbox's copy of the machine's sshd_config (and the Match block the
//! grant put there), with keys and certificates made by the real `ssh-keygen`.
//!
//! There is no systemd in the sandbox, so most tests see the scripts take their `at`
//! branch for the removal at expiry: atd runs inside the sandbox, the tests read the
//! queued job with `atq`/`at -c`, and run the job's own text to see it remove the user,
//! instead of waiting for the clock. The systemd branch runs against stand-in
//! `systemctl` and `loginctl` commands that record their calls (ARCHITECTURE.md says why
//! a real systemd cannot run here); the unit files it writes are checked on disk and
//! with `systemd-analyze verify`. The Windows scripts cannot run here; their documents,
//! patterns and shared removal logic are checked.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use passport::adapters::ssh_ca::{CaKeyType, CertificateAuthority};
use passport::domain::certificate::CertificateSpec;
use passport::domain::time::Timestamp;
use passport::domain::values::{RequestId, SshPublicKey, Username};
use regex::Regex;
use sandbox::{enter_sh, have, text, PATH};
use ssm_documents::{read_ssm, rendered_script, run_command, unquote};

#[path = "common/sandbox.rs"]
mod sandbox;
mod ssm_documents;

/// The documents, the script each one embeds, and the plugin that runs it.
const DOCUMENTS: [(&str, &str, &str); 4] = [
    (
        "Passport-GrantLinux.yaml",
        "grant-linux.sh",
        "aws:runShellScript",
    ),
    (
        "Passport-RevokeLinux.yaml",
        "revoke-linux.sh",
        "aws:runShellScript",
    ),
    (
        "Passport-GrantWindows.yaml",
        "grant-windows.ps1",
        "aws:runPowerShellScript",
    ),
    (
        "Passport-RevokeWindows.yaml",
        "revoke-windows.ps1",
        "aws:runPowerShellScript",
    ),
];

/// The `parameters:` block: name → property → value.
fn parameters(doc: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut inside = false;
    for line in doc.lines() {
        if line == "parameters:" {
            inside = true;
            continue;
        }
        if !inside || line.starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            break;
        }
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
            if !name.starts_with(' ') {
                current = Some(name.to_string());
                out.entry(name.to_string()).or_default();
                continue;
            }
        }
        let (key, value) = line
            .trim()
            .split_once(": ")
            .unwrap_or_else(|| panic!("unexpected parameter line {line:?}"));
        let name = current.clone().expect("a parameter name first");
        out.get_mut(&name)
            .unwrap()
            .insert(key.to_string(), unquote(value));
    }
    out
}

/// The compiled allowedPattern of a document's parameter.
fn pattern(doc: &str, param: &str) -> Regex {
    let params = parameters(&read_ssm(doc));
    let p = &params[param]["allowedPattern"];
    Regex::new(p).unwrap_or_else(|e| panic!("{doc} {param}: {e}"))
}

/// The lines between the `# >>> passport-revoke-core` and `# <<< passport-revoke-core` markers.
fn revoke_core(script: &str) -> Vec<String> {
    let lines: Vec<&str> = script.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == "# >>> passport-revoke-core")
        .expect("a core start marker");
    let end = lines
        .iter()
        .position(|l| *l == "# <<< passport-revoke-core")
        .expect("a core end marker");
    assert_eq!(
        lines
            .iter()
            .filter(|l| **l == "# >>> passport-revoke-core")
            .count(),
        1
    );
    lines[start..=end].iter().map(|l| l.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// The documents

/// Each built document is its head file followed by its script, one quoted line per
/// script line, with the shared fragment in place of the include line; and
/// `passport ssm export` writes exactly the documents the binary installs.
#[test]
fn documents_are_rendered_from_their_scripts() {
    for (doc, script, _) in DOCUMENTS {
        let built = read_ssm(doc);
        let head = read_ssm(&doc.replace(".yaml", ".head.yaml"));
        assert!(
            built.starts_with(&head),
            "{doc} does not start with its head file"
        );
        assert!(head.ends_with("      runCommand:\n"), "{doc}'s head file");
        let mut expected = Vec::new();
        for line in read_ssm(script).lines() {
            match line.strip_prefix("# passport-include ") {
                Some(fragment) => {
                    let fragment = read_ssm(fragment);
                    let from = fragment.find("\n# >>> ").expect("a '# >>> ' line") + 1;
                    expected.extend(fragment[from..].lines().map(str::to_string));
                }
                None => expected.push(line.to_string()),
            }
        }
        assert_eq!(run_command(&built), expected, "{doc} does not run {script}");
        assert!(built.ends_with('\n'), "{doc}");
    }

    let out = tempfile::tempdir().unwrap();
    let export = Command::new(env!("CARGO_BIN_EXE_passport"))
        .args(["ssm", "export"])
        .arg(out.path().join("documents"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(out.path())
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "ssm export: {}",
        text(&export.stderr)
    );
    for (doc, _, _) in DOCUMENTS {
        let path = out.path().join("documents").join(doc);
        assert!(text(&export.stdout).contains(&path.display().to_string()));
        assert_eq!(fs::read_to_string(&path).unwrap(), read_ssm(doc), "{doc}");
    }
}

#[test]
fn documents_pass_every_parameter_as_a_checked_environment_variable() {
    let ssm_var = Regex::new(r"SSM_([A-Za-z0-9]+)").unwrap();
    for (doc, script, action) in DOCUMENTS {
        let text = read_ssm(doc);
        assert!(
            text.len() < 64 * 1024,
            "{doc} is over the 64 KB document limit"
        );
        assert!(
            !text.contains("{{"),
            "{doc} must not interpolate parameters into the script text"
        );
        assert!(!text.contains('\t') && !text.contains('\r'), "{doc}");
        assert!(text.contains("\nschemaVersion: '2.2'\n"), "{doc}");
        assert!(text.contains(&format!("\n  - action: {action}\n")), "{doc}");
        assert_eq!(text.matches("\n  - action: ").count(), 1, "{doc}: one step");

        let params = parameters(&text);
        assert!(!params.is_empty(), "{doc} has parameters");
        for (name, props) in &params {
            assert_eq!(
                props.get("type").map(String::as_str),
                Some("String"),
                "{doc} {name}"
            );
            assert_eq!(
                props.get("interpolationType").map(String::as_str),
                Some("ENV_VAR"),
                "{doc} {name}"
            );
            assert!(!props.contains_key("default"), "{doc} {name} is required");
            let p = props
                .get("allowedPattern")
                .unwrap_or_else(|| panic!("{doc} {name} has no allowedPattern"));
            assert!(
                p.starts_with('^') && p.ends_with('$'),
                "{doc} {name}: anchored pattern"
            );
            assert!(
                !p.contains(".*") && !p.contains(".+") && !p.contains("\\s") && !p.contains("\\d"),
                "{doc} {name}: no wildcards, whitespace or Unicode digit classes in {p}"
            );
            Regex::new(p).unwrap_or_else(|e| panic!("{doc} {name}: {e}"));
        }

        // The script reads exactly the parameters the document declares.
        let source = rendered_script(doc);
        let used: std::collections::BTreeSet<String> = ssm_var
            .captures_iter(&source)
            .map(|c| c[1].to_string())
            .filter(|n| n != "name")
            .collect();
        let declared: std::collections::BTreeSet<String> = params.keys().cloned().collect();
        assert_eq!(used, declared, "{script} vs the parameters of {doc}");
    }
}

#[test]
fn allowed_patterns_accept_what_passport_sends() {
    let user = pattern("Passport-GrantLinux.yaml", "Username");
    let long = "a".repeat(100);
    for (handle, n) in [
        ("dev1", 42),
        ("Zoë O'Brien; rm -rf /", 7),
        ("日本", 1),
        ("--x--", 3),
        (long.as_str(), 123_456_789_012_345_678),
    ] {
        let id = RequestId::new(n).unwrap();
        let name = Username::for_request(handle, id);
        assert!(user.is_match(name.as_str()), "{name}");
        assert!(name.as_str().len() <= 32, "{name}");
        assert!(
            pattern("Passport-GrantLinux.yaml", "RequestId").is_match(&id.to_string()),
            "{id}"
        );
    }
    let win_user = pattern("Passport-GrantWindows.yaml", "Username");
    assert!(win_user.is_match("pp-dev1-42"));
    assert!(pattern("Passport-GrantLinux.yaml", "ExpiresAt").is_match("1790000000"));
    for doc in ["Passport-GrantLinux.yaml", "Passport-GrantWindows.yaml"] {
        let sudo = pattern(doc, "Sudo");
        assert!(sudo.is_match("true") && sudo.is_match("false"));
    }
    let key = pattern("Passport-GrantLinux.yaml", "SshPublicKey");
    assert!(key.is_match(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXthqazVISHQdDO8LIgiwgcsuk+C87AXoiNFj0/qNN4"
    ));
    assert!(key.is_match("none"));
    let ca = pattern("Passport-GrantLinux.yaml", "TrustedCaKeys");
    let ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXthqazVISHQdDO8LIgiwgcsuk+C87AXoiNFj0/qNN4";
    // A 4096-bit RSA public key is 716 base64 characters; 1400 leaves room for 8192 bits.
    let rsa = format!("ssh-rsa AAAAB3NzaC1yc2E{}", "A".repeat(1385));
    assert!(ca.is_match("none"));
    assert!(ca.is_match(ed));
    assert!(ca.is_match(&format!("{ed},{rsa}")));
    assert!(ca.is_match(&[ed; 4].join(",")));
    let forwarding = pattern("Passport-GrantLinux.yaml", "PortForwarding");
    assert!(forwarding.is_match("true") && forwarding.is_match("false"));
    let uids = pattern("Passport-GrantLinux.yaml", "UidRange");
    assert!(uids.is_match("10000000-19999999"));
    assert!(uids.is_match("1000-4294967294"));
    // A 2048-bit and a 4096-bit SubjectPublicKeyInfo, as base64 (392 and 736 characters).
    let spki = pattern("Passport-GrantWindows.yaml", "PublicKey");
    assert!(spki.is_match(&format!(
        "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA{}",
        "A".repeat(348)
    )));
    assert!(spki.is_match(&format!("{}==", "A".repeat(734))));
}

/// Values that no pattern or script may let through, for each grant parameter. Each
/// would create /tmp/pwned if any shell ever evaluated it.
fn hostile_values(valid: &BTreeMap<&'static str, String>) -> Vec<(&'static str, String)> {
    let payloads = [
        "'; touch /tmp/pwned; '",
        "\"; touch /tmp/pwned; \"",
        "$(touch /tmp/pwned)",
        "`touch /tmp/pwned`",
        "; touch /tmp/pwned",
        "&& touch /tmp/pwned",
        "| touch /tmp/pwned",
        "\ntouch /tmp/pwned",
        "\r\ntouch /tmp/pwned",
        ">/tmp/pwned",
        "${IFS}touch${IFS}/tmp/pwned",
        "\\ntouch /tmp/pwned",
    ];
    let mut out = Vec::new();
    for (param, base) in valid {
        for p in payloads {
            out.push((*param, format!("{base}{p}")));
            out.push((*param, p.to_string()));
        }
        out.push((*param, String::new()));
        out.push((*param, format!(" {base}")));
        out.push((*param, format!("{base} ")));
        out.push((*param, format!("{base}\n")));
        out.push((*param, format!("{base}{}", "A".repeat(100_000))));
    }
    let more: [(&str, &str); 27] = [
        // Look-alikes: Cyrillic р and а, a fullwidth 7, a Unicode hyphen, a zero-width space.
        ("Username", "рp-alice-7"),
        ("Username", "pp-аlice-7"),
        ("Username", "pp-alice-７"),
        ("Username", "pp‐alice-7"),
        ("Username", "pp-alice-7\u{200b}"),
        ("Username", "root"),
        ("Username", "PP-alice-7"),
        ("Username", "pp-alice-7/../../etc"),
        ("Username", "pp-../../root-7"),
        ("RequestId", "ar-7"),
        ("RequestId", "AR-７"),
        ("RequestId", "AR-7$(touch /tmp/pwned)"),
        ("ExpiresAt", "１７９００００００００"),
        ("ExpiresAt", "-1790000000"),
        ("ExpiresAt", "0x6AB3F800"),
        ("ExpiresAt", "1.79e9"),
        ("Sudo", "TRUE"),
        ("Sudo", "yes"),
        ("Sudo", "1"),
        ("Sudo", "tru\u{0435}"),
        ("SshPublicKey", "ssh-dss AAAAB3NzaC1kc3MAAACBAP"),
        ("SshPublicKey", "command=\"touch /tmp/pwned\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXthqazVISHQdDO8LIgiwgcsuk+C87AXoiNFj0/qNN4"),
        ("SshPublicKey", "expiry-time=\"29991231\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXthqazVISHQdDO8LIgiwgcsuk+C87AXoiNFj0/qNN4"),
        ("SshPublicKey", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXthqazVISHQdDO8LIgiwgcsuk+C87AXoiNFj0/qNN4 laptop"),
        ("SshPublicKey", "ssh-ed25519  AAAAC3NzaC1lZDI1NTE5AAAAIBXthqazVISHQdDO8LIgiwgcsuk+C87AXoiNFj0/qNN4"),
        ("SshPublicKey", "ssh-ed25519\tAAAAC3NzaC1lZDI1NTE5AAAAIBXthqazVISHQdDO8LIgiwgcsuk+C87AXoiNFj0/qNN4"),
        ("SshPublicKey", "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAI"),
    ];
    for (param, value) in more {
        out.push((param, value.to_string()));
    }
    let key = &valid["SshPublicKey"];
    out.push(("SshPublicKey", format!("{key}\n{key}")));
    out.push(("SshPublicKey", format!("ssh-ed25519 {}", "A".repeat(8193))));
    out.extend(hostile_ca_keys(key));
    for value in [
        "TRUE",
        "yes",
        "1",
        "true,false",
        "tru\u{0435}",
        "10000000-19999999",
    ] {
        out.push(("PortForwarding", value.to_string()));
    }
    for value in [
        "10000000",
        "10000000-",
        "-19999999",
        "10000000--19999999",
        "10000000:19999999",
        "10000000 - 19999999",
        "10000000-19999999-3",
        "0x1000-0x2000",
        "１0000000-19999999",
        "10000000-199999999999",
        "-1-19999999",
        "10000000-1e9",
    ] {
        out.push(("UidRange", value.to_string()));
    }
    out
}

/// TrustedCaKeys values no pattern or script may accept (`key` is a valid public key).
fn hostile_ca_keys(key: &str) -> Vec<(&'static str, String)> {
    let body = key.split(' ').nth(1).unwrap();
    [
        format!("{key},"),
        format!(",{key}"),
        format!("{key},,{key}"),
        format!("{key}, {key}"),
        format!("{key} ,{key}"),
        format!("{key};{key}"),
        format!("{key}\n{key}"),
        format!("none,{key}"),
        format!("{key},none"),
        [key; 5].join(","),
        format!("ssh-ed25519 {}", "A".repeat(1401)),
        format!("cert-authority {key}"),
        format!("@cert-authority * {key}"),
        format!("{key} passport-ca"),
        format!("ssh-dss {body}"),
        format!("ssh-ed25519-cert-v01@openssh.com {body}"),
        format!("sk-ssh-ed25519@openssh.com {body}"),
        "NONE".to_string(),
        "none ".to_string(),
    ]
    .into_iter()
    .map(|v| ("TrustedCaKeys", v))
    .collect()
}

/// Values the patterns cannot rule out but the scripts refuse: they would not inject
/// anything, but they are still wrong.
fn refused_by_the_script_only(
    valid: &BTreeMap<&'static str, String>,
) -> Vec<(&'static str, String)> {
    let ed25519_body = valid["SshPublicKey"].split(' ').nth(1).unwrap().to_string();
    vec![
        // 35 characters: the pattern cannot count the whole name, the script does.
        ("Username", format!("pp-{}-7777", "a".repeat(27))),
        // Not the request's number.
        ("Username", "pp-alice-07".to_string()),
        ("RequestId", "AR-8".to_string()),
        ("ExpiresAt", "1000000000".to_string()),
        ("ExpiresAt", (now() + 3 * 86400).to_string()),
        ("SshPublicKey", "ssh-ed25519 AAAA".to_string()),
        ("SshPublicKey", format!("ssh-rsa {ed25519_body}")),
        // Key mode with a CA as well: exactly one of the two must be none.
        ("TrustedCaKeys", valid["SshPublicKey"].clone()),
        ("UidRange", "999-19999999".to_string()),
        ("UidRange", "0-19999999".to_string()),
        ("UidRange", "20000000-19999999".to_string()),
        ("UidRange", "10000000-4294967295".to_string()),
        ("UidRange", "10000000-9999999999".to_string()),
    ]
}

/// Certificate-mode values the patterns cannot rule out but the scripts refuse.
fn refused_in_certificate_mode(
    valid: &BTreeMap<&'static str, String>,
) -> Vec<(&'static str, String)> {
    let key = valid["TrustedCaKeys"]
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let body = key.split(' ').nth(1).unwrap().to_string();
    vec![
        // Both none: no way in at all.
        ("TrustedCaKeys", "none".to_string()),
        ("TrustedCaKeys", "ssh-ed25519 AAAA".to_string()),
        ("TrustedCaKeys", format!("{key},ssh-ed25519 AAAA")),
        ("TrustedCaKeys", format!("ssh-rsa {body}")),
    ]
}

#[test]
fn allowed_patterns_reject_hostile_input() {
    let valid = valid_grant_values("pp-alice-7", "AR-7", &test_key());
    for (param, value) in hostile_values(&valid) {
        assert!(
            !pattern("Passport-GrantLinux.yaml", param).is_match(&value),
            "the Linux {param} pattern accepts {value:?}"
        );
        if !matches!(
            param,
            "SshPublicKey" | "TrustedCaKeys" | "PortForwarding" | "UidRange"
        ) {
            assert!(
                !pattern("Passport-GrantWindows.yaml", param).is_match(&value),
                "the Windows {param} pattern accepts {value:?}"
            );
        }
    }
    // A NUL cannot even be handed to a process as an environment variable, and no
    // pattern admits one.
    assert!(Command::new("true")
        .env("SSM_Username", "pp-alice-7\0x")
        .status()
        .is_err());
    assert!(!pattern("Passport-GrantLinux.yaml", "Username").is_match("pp-alice-7\0x"));
    assert!(!pattern("Passport-GrantWindows.yaml", "Username").is_match("pp-a\0-7"));
    assert!(!pattern("Passport-GrantWindows.yaml", "PublicKey")
        .is_match(&format!("{}\0", "A".repeat(400))));
    // Windows account names stop at 20 characters.
    assert!(!pattern("Passport-GrantWindows.yaml", "Username").is_match("pp-abcdefghijklmnop-7"));
}

#[test]
fn the_removal_logic_is_written_once_and_run_by_grant_and_revoke() {
    for (fragment, grant, revoke) in [
        (
            "revoke-core.sh",
            "Passport-GrantLinux.yaml",
            "Passport-RevokeLinux.yaml",
        ),
        (
            "revoke-core.ps1",
            "Passport-GrantWindows.yaml",
            "Passport-RevokeWindows.yaml",
        ),
    ] {
        let core = revoke_core(&read_ssm(fragment));
        for doc in [grant, revoke] {
            assert_eq!(
                revoke_core(&rendered_script(doc)),
                core,
                "{doc} does not run the removal logic of {fragment}"
            );
        }
    }
    for (_, script, _) in DOCUMENTS {
        let includes: Vec<String> = read_ssm(script)
            .lines()
            .filter(|l| l.starts_with("# passport-include "))
            .map(str::to_string)
            .collect();
        let fragment = if script.ends_with(".sh") {
            "revoke-core.sh"
        } else {
            "revoke-core.ps1"
        };
        assert_eq!(
            includes,
            [format!("# passport-include {fragment}")],
            "{script} takes the removal logic from {fragment}, once"
        );
        assert!(
            !read_ssm(script).contains("# >>> passport-revoke-core"),
            "{script} carries a copy of the removal logic instead of including {fragment}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The Windows password and PowerShell logging
//
// Module logging (event 4103) records the value bound to every parameter of every command,
// and script-block logging (4104) the script text. So the plain password may live only in
// variables named `$password…`, which may be read only inside the parentheses of .NET
// method calls or copied by plain assignment; never on a line that runs a command, pipes,
// or builds a double-quoted (interpolating) string.

/// Why a line of PowerShell exposes the plain password to logging, if it does.
fn password_exposure(line: &str) -> Option<String> {
    let code = line.trim();
    if code.starts_with('#') {
        return None;
    }
    if code.to_ascii_lowercase().contains("-asplaintext") {
        return Some("uses -AsPlainText".into());
    }
    let var = Regex::new(r"(?i)\$password\w*").unwrap();
    if !var.is_match(code) {
        return None;
    }
    // A command (Verb-Noun, or a call with & or a pipeline) binds what follows it.
    let command = Regex::new(r"(^|[\s(;{=])[A-Za-z]+-[A-Za-z]+($|[\s(])").unwrap();
    if command.is_match(code) || code.contains('&') || code.contains('|') {
        return Some("a plain password variable on a line that runs a command".into());
    }
    if code.contains('"') {
        return Some("a plain password variable near a double-quoted string".into());
    }
    // `$x = $y`, `$x[$i] = $y[$j]`: a copy, nothing is bound or printed.
    let copy = Regex::new(r"^\$[\w:]+(\[\$?\w+\])?\s*=\s*(\$[\w:]+(\[\$?\w+\])?|\[char\]0|\[\w+\[\]\]::new\(\$?\w+\))$")
        .unwrap();
    if copy.is_match(code) {
        return None;
    }
    let method = Regex::new(r"(\.|::)[A-Za-z]+$").unwrap();
    let assigned_from = Regex::new(r"^\$[\w:]+\s*=\s*$").unwrap();
    let assigned_to = Regex::new(r"^(\[\$?\w+\])?\s*=").unwrap();
    for m in var.find_iter(code) {
        let before = &code[..m.start()];
        if assigned_from.is_match(before) {
            // Assigned the value of a method call, checked as the rest of the line.
            continue;
        }
        if m.start() == 0 {
            let rest = &code[m.end()..];
            if assigned_to.is_match(rest) {
                continue;
            }
        }
        // The innermost parenthesis still open before the variable must be a method's.
        let mut depth = 0i32;
        let mut open = None;
        for (i, c) in before.char_indices().rev() {
            match c {
                ')' => depth += 1,
                '(' if depth == 0 => {
                    open = Some(i);
                    break;
                }
                '(' => depth -= 1,
                _ => {}
            }
        }
        let in_method = open.is_some_and(|i| method.is_match(&before[..i]));
        if !in_method {
            return Some(format!(
                "{} is used outside the arguments of a .NET method call",
                m.as_str()
            ));
        }
    }
    None
}

#[test]
fn the_windows_password_is_never_bound_to_a_cmdlet_or_written_in_script_text() {
    let script = rendered_script("Passport-GrantWindows.yaml");
    let exposed: Vec<String> = script
        .lines()
        .enumerate()
        .filter_map(|(n, line)| {
            password_exposure(line).map(|why| format!("line {}: {why}: {}", n + 1, line.trim()))
        })
        .collect();
    assert!(
        exposed.is_empty(),
        "grant-windows.ps1 would let PowerShell logging record the password:\n{}",
        exposed.join("\n")
    );
    assert!(!script.contains("ConvertTo-SecureString"));
    // The password reaches the account cmdlets only as the SecureString.
    for line in script.lines().filter(|l| l.contains("-Password ")) {
        assert!(line.contains("-Password $secure "), "{line}");
    }
    // It is made in a buffer, copied into the SecureString, encrypted and zeroed.
    for needed in [
        "$passwordChars = [char[]]::new(",
        ".AppendChar($passwordChars[$i])",
        "$passwordBytes = [Text.Encoding]::UTF8.GetBytes($passwordChars)",
        "$rsa.Encrypt($passwordBytes, ",
        "[Array]::Clear($passwordChars, ",
        "[Array]::Clear($passwordBytes, ",
        "Write-Output ('PASSPORT-PASSWORD-RSA-OAEP-SHA256:' + [Convert]::ToBase64String(",
    ] {
        assert!(script.contains(needed), "grant-windows.ps1 lacks {needed}");
    }
}

#[test]
fn the_password_check_catches_what_logging_would_record() {
    for exposing in [
        "$secure = ConvertTo-SecureString -String $password -AsPlainText -Force",
        "$secure = ConvertTo-SecureString $passwordText -AsPlainText -Force",
        "Set-LocalUser -Name $u -Password $passwordChars",
        "New-LocalUser -Name $u -Password (New-Secure $passwordBytes)",
        "Write-Output $password",
        "$line = \"password: $passwordChars\"",
        "$passwordChars | Out-Null",
        "& $send $passwordBytes",
        "Protect-Password $passwordBytes",
        "$x = Get-Hash($passwordBytes)",
        "if ($passwordChars.Length -gt 0) { }",
        "$passwordText = -join $passwordChars",
    ] {
        assert!(
            password_exposure(exposing).is_some(),
            "not caught: {exposing}"
        );
    }
    for safe in [
        "$passwordChars[$i] = $set[$k]",
        "$passwordSwap = $passwordChars[$i]",
        "$passwordChars[$i] = $passwordChars[$j]",
        "$passwordSwap = [char]0",
        "$passwordChars = [char[]]::new($charCount)",
        "$passwordBytes = [Text.Encoding]::UTF8.GetBytes($passwordChars)",
        "$c = $rsa.Encrypt($passwordBytes, [System.Security.Cryptography.RSAEncryptionPadding]::OaepSHA256)",
        "[Array]::Clear($passwordBytes, 0, $passwordBytes.Length)",
        "# a comment may say -AsPlainText and $password",
    ] {
        assert_eq!(password_exposure(safe), None, "{safe}");
    }
}

#[test]
fn linux_scripts_parse_in_sh_and_bash_and_pass_shellcheck() {
    let rendered = tempfile::tempdir().unwrap();
    ssm_documents::write_linux_scripts(rendered.path());
    for script in ["grant-linux.sh", "revoke-linux.sh"] {
        let path = rendered.path().join(script);
        for shell in ["sh", "bash"] {
            let out = Command::new(shell).arg("-n").arg(&path).output().unwrap();
            assert!(
                out.status.success(),
                "{shell} -n {script}: {}",
                text(&out.stderr)
            );
        }
        if have("shellcheck") {
            for dialect in ["sh", "bash"] {
                let out = Command::new("shellcheck")
                    .args(["-s", dialect])
                    .arg(&path)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "shellcheck -s {dialect} {script}:\n{}",
                    text(&out.stdout)
                );
            }
        } else {
            eprintln!("shellcheck is not installed; skipped linting {script}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The sandbox

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Why this machine cannot run the sandbox, if it cannot.
fn sandbox_unavailable() -> Option<&'static str> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(|| {
        sandbox::unavailable(
            "the instance script tests create real users and need root (scripts/test runs them as root in CI)",
            &[
            "unshare", "useradd", "usermod", "userdel", "groupadd", "getent", "setpriv", "flock",
            "pkill", "visudo", "sudo", "at", "atd", "atq", "sshd", "ssh", "ssh-keygen", "ip",
        ],
        )
    })
    .as_deref()
}

/// A throw-away copy of the machine's user database and friends, and a requester key.
struct Sandbox {
    dir: tempfile::TempDir,
    /// The requester's public key, "ssh-ed25519 <base64>".
    key: String,
}

/// Starts a sandbox, or prints why it cannot and returns None.
fn sandbox(test: &str) -> Option<Sandbox> {
    if let Some(why) = sandbox_unavailable() {
        eprintln!("{test}: skipped: {why}");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("passport-sandbox-")
        .tempdir()
        .unwrap();
    let sb = Sandbox {
        dir,
        key: String::new(),
    };
    sb.ok("true"); // fills the sandbox
    ssm_documents::write_linux_scripts(&sb.host("root/ssm"));
    let key = make_key(&sb.host("root/id"), "ed25519", None);
    Some(Sandbox { key, ..sb })
}

/// Makes a key pair at `path` and returns the public key as "<type> <base64>".
fn make_key(path: &Path, kind: &str, bits: Option<&str>) -> String {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", "requester", "-f"])
        .arg(path);
    if let Some(bits) = bits {
        cmd.args(["-b", bits]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "ssh-keygen: {}", text(&out.stderr));
    let public = fs::read_to_string(path.with_extension("pub")).unwrap();
    let mut parts = public.split_whitespace();
    format!("{} {}", parts.next().unwrap(), parts.next().unwrap())
}

/// A key for the tests that need no sandbox.
fn test_key() -> String {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| {
        if have("ssh-keygen") {
            let dir = tempfile::tempdir().unwrap();
            make_key(&dir.path().join("id"), "ed25519", None)
        } else {
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXthqazVISHQdDO8LIgiwgcsuk+C87AXoiNFj0/qNN4"
                .to_string()
        }
    })
    .clone()
}

/// Passport's default UID range.
const UID_RANGE: &str = "10000000-19999999";

/// Key mode: the requester's key, no CA.
fn valid_grant_values(user: &str, req: &str, key: &str) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("Username", user.to_string()),
        ("RequestId", req.to_string()),
        ("ExpiresAt", (now() + 7200).to_string()),
        ("Sudo", "false".to_string()),
        ("SshPublicKey", key.to_string()),
        ("TrustedCaKeys", "none".to_string()),
        ("PortForwarding", "false".to_string()),
        ("UidRange", UID_RANGE.to_string()),
    ])
}

/// Certificate mode: no key, the CA key `ca` (or several, joined by commas).
fn valid_certificate_grant_values(
    user: &str,
    req: &str,
    ca: &str,
) -> BTreeMap<&'static str, String> {
    let mut values = valid_grant_values(user, req, "none");
    values.insert("TrustedCaKeys", ca.to_string());
    values
}

impl Sandbox {
    /// The host path of a file inside the sandbox ("etc/shadow").
    fn host(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs `script` with /bin/sh inside the sandbox, with only PATH and `env` set.
    fn run_with(&self, env: &[(&str, &str)], script: &str) -> Output {
        Command::new("sh")
            .arg(enter_sh())
            .arg(self.dir.path())
            .args(["/bin/sh", "-c", script])
            .env_clear()
            .env("PATH", PATH)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    /// Runs `script` inside the sandbox, asserts it succeeded and returns its stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.run_with(&[], script);
        assert!(
            out.status.success(),
            "sandbox script failed: {script}\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs grant-linux.sh with these SSM_* values, as the SSM Agent would.
    fn grant_env(&self, shell: &str, values: &BTreeMap<&str, String>) -> Output {
        let env: Vec<(String, String)> = values
            .iter()
            .map(|(k, v)| (format!("SSM_{k}"), v.clone()))
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.run_with(&env, &format!("{shell} /root/ssm/grant-linux.sh"))
    }

    fn grant(&self, g: &Grant) -> Output {
        self.grant_env("sh", &g.values(&self.key))
    }

    fn grant_ok(&self, g: &Grant) -> String {
        let out = self.grant(g);
        assert!(
            out.status.success(),
            "grant failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn revoke_in(&self, shell: &str, user: &str, req: &str) -> Output {
        self.run_with(
            &[("SSM_Username", user), ("SSM_RequestId", req)],
            &format!("{shell} /root/ssm/revoke-linux.sh"),
        )
    }

    fn revoke(&self, user: &str, req: &str) -> Output {
        self.revoke_in("sh", user, req)
    }

    fn revoke_ok(&self, user: &str, req: &str) -> String {
        let out = self.revoke(user, req);
        assert!(
            out.status.success(),
            "revoke failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn file(&self, rel: &str) -> String {
        fs::read_to_string(self.host(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// The colon-separated fields of `user`'s line in etc/passwd, etc/shadow or etc/group.
    fn entry(&self, db: &str, user: &str) -> Option<Vec<String>> {
        self.file(db)
            .lines()
            .find(|l| l.split(':').next() == Some(user))
            .map(|l| l.split(':').map(str::to_string).collect())
    }

    /// The at queue: (job id, run time in unix seconds, queue letter).
    fn at_jobs(&self) -> Vec<(String, u64, String)> {
        self.ok(
            r#"atq | while read -r id wd mon day time year queue owner; do
                     printf '%s %s %s\n' "$id" "$(date -d "$wd $mon $day $time $year" +%s)" "$queue"
                   done"#,
        )
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].to_string(), f[1].parse().unwrap(), f[2].to_string())
        })
        .collect()
    }

    /// The single Passport expiry job: (id, run time, the job's text).
    fn expiry_job(&self) -> (String, u64, String) {
        let jobs = self.at_jobs();
        assert_eq!(jobs.len(), 1, "exactly one at job: {jobs:?}");
        let (id, at, _) = jobs[0].clone();
        let body = self.ok(&format!("at -c {id}"));
        (id, at, body)
    }

    /// The minute `t` falls in, as sshd's expiry-time reads it (system time zone).
    fn local_minute(&self, t: u64) -> String {
        self.ok(&format!("date -d @{t} +%Y%m%d%H%M"))
            .trim()
            .to_string()
    }

    /// Logs in over SSH as `user` with the requester's key and runs `command`.
    fn ssh(&self, user: &str, command: &str) -> Output {
        self.login(user, "/root/id", command)
    }

    /// Logs in over SSH as `user` with the private key at `identity` (a path inside the
    /// sandbox; ssh also offers `<identity>-cert.pub` when it exists), through an sshd
    /// started in the sandbox on its private loopback with the sandbox's own
    /// /etc/ssh/sshd_config (so with what the grant wrote there), and runs `command`.
    /// Exit code 97: sshd could not start.
    fn login(&self, user: &str, identity: &str, command: &str) -> Output {
        self.login_with(user, identity, "-T", command)
    }

    /// `login` with one more ssh option (`-tt` asks for a terminal).
    fn login_with(&self, user: &str, identity: &str, option: &str, command: &str) -> Output {
        self.run_with(
            &[
                ("LOGIN", user),
                ("IDENTITY", identity),
                ("OPTION", option),
                ("COMMAND", command),
            ],
            r#"
            set -e
            mkdir -p /run/sshd
            rm -f /run/passport_test_sshd.pid
            : >/tmp/sshd.log
            if ! /usr/sbin/sshd -o Port=2222 -o ListenAddress=127.0.0.1 \
                -o PidFile=/run/passport_test_sshd.pid -o UsePAM=no \
                -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no \
                -o PubkeyAuthentication=yes -o StrictModes=yes -o LogLevel=VERBOSE \
                -E /tmp/sshd.log; then
                echo "sshd cannot start:" >&2
                cat /tmp/sshd.log >&2
                exit 97
            fi
            # sshd detaches before it listens; it writes its pid file once it does.
            i=0
            while [ ! -s /run/passport_test_sshd.pid ]; do
                i=$((i + 1))
                if [ "$i" -gt 200 ]; then
                    echo "sshd cannot start: it never listened" >&2
                    cat /tmp/sshd.log >&2
                    exit 97
                fi
                sleep 0.05
            done
            set +e
            ssh -F /dev/null "$OPTION" -i "$IDENTITY" -p 2222 -o BatchMode=yes -o IdentitiesOnly=yes \
                -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
                -o ConnectTimeout=10 -o LogLevel=ERROR "$LOGIN@127.0.0.1" "$COMMAND"
            rc=$?
            echo "--- sshd log" >&2
            cat /tmp/sshd.log >&2
            exit $rc
            "#,
        )
    }

    /// Whether sshd can start in this sandbox; prints why not when it cannot.
    fn sshd_works(&self, test: &str) -> bool {
        let out = self.ssh("nobody", "true");
        if out.status.code() == Some(97) {
            eprintln!(
                "{test}: skipped: sshd cannot start in this sandbox: {}",
                text(&out.stderr)
            );
            return false;
        }
        assert!(!out.status.success(), "a login without any key");
        true
    }

    /// Asserts nothing of Passport's is on the sandbox's machine: no pp- account, home,
    /// drop-in, state or at job, and the canary of the hostile inputs was never made.
    fn assert_untouched(&self, context: &str) {
        for db in ["etc/passwd", "etc/shadow", "etc/group"] {
            assert!(
                !self.file(db).lines().any(|l| l.starts_with("pp-")),
                "{context}: a pp- entry in {db}"
            );
        }
        assert_eq!(
            fs::read_dir(self.host("home")).unwrap().count(),
            0,
            "{context}: something in /home"
        );
        assert!(
            !fs::read_dir(self.host("etc/sudoers.d")).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("passport")),
            "{context}: a Passport sudoers drop-in"
        );
        assert!(
            !self.host("var/lib/passport/users").exists()
                || fs::read_dir(self.host("var/lib/passport/users"))
                    .unwrap()
                    .count()
                    == 0,
            "{context}: Passport state left"
        );
        assert_no_canary(self, context);
    }
}

fn assert_no_canary(sb: &Sandbox, context: &str) {
    assert!(
        !sb.host("tmp/pwned").exists(),
        "{context}: an injected command ran inside the sandbox"
    );
    assert!(
        !Path::new("/tmp/pwned").exists(),
        "{context}: /tmp/pwned exists on the host"
    );
}

/// One grant. In key mode (no `ca_keys`) the key is `key` or else the sandbox's
/// requester key; with `ca_keys` it is certificate mode and SshPublicKey is none.
#[derive(Clone)]
struct Grant {
    user: String,
    req: String,
    expires: u64,
    sudo: bool,
    key: Option<String>,
    ca_keys: Option<String>,
    forwarding: bool,
    uid_range: String,
}

impl Grant {
    fn new(user: &str, req: &str) -> Self {
        Self {
            user: user.to_string(),
            req: req.to_string(),
            expires: now() + 7200,
            sudo: false,
            key: None,
            ca_keys: None,
            forwarding: false,
            uid_range: UID_RANGE.to_string(),
        }
    }

    /// A certificate-mode grant trusting the CA keys `ca_keys` ("<type> <base64>",
    /// joined by commas).
    fn certificate(user: &str, req: &str, ca_keys: &str) -> Self {
        Self {
            ca_keys: Some(ca_keys.to_string()),
            ..Self::new(user, req)
        }
    }

    fn values(&self, key: &str) -> BTreeMap<&'static str, String> {
        let key = match &self.ca_keys {
            Some(_) => "none".to_string(),
            None => self.key.clone().unwrap_or_else(|| key.to_string()),
        };
        BTreeMap::from([
            ("Username", self.user.clone()),
            ("RequestId", self.req.clone()),
            ("ExpiresAt", self.expires.to_string()),
            ("Sudo", self.sudo.to_string()),
            ("SshPublicKey", key),
            (
                "TrustedCaKeys",
                self.ca_keys.clone().unwrap_or_else(|| "none".to_string()),
            ),
            ("PortForwarding", self.forwarding.to_string()),
            ("UidRange", self.uid_range.clone()),
        ])
    }
}

fn mode(path: &Path) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

/// Asserts the full state of a granted user.
fn assert_granted(sb: &Sandbox, g: &Grant) {
    let passwd = sb.entry("etc/passwd", &g.user).expect("a passwd entry");
    assert_eq!(passwd[4], format!("passport {}", g.req), "GECOS marker");
    assert_eq!(passwd[5], format!("/home/{}", g.user));
    assert_eq!(passwd[6], "/bin/bash");
    let uid: u32 = passwd[2].parse().unwrap();
    let gid: u32 = passwd[3].parse().unwrap();
    let (first, last) = g.uid_range.split_once('-').unwrap();
    assert!(
        (first.parse().unwrap()..=last.parse().unwrap()).contains(&uid),
        "uid {uid} from the range {}",
        g.uid_range
    );
    assert_eq!(gid, uid, "the user's group has the same number");
    assert_eq!(
        sb.entry("etc/group", &g.user).expect("a user group")[2],
        passwd[3]
    );
    assert_eq!(
        fs::metadata(sb.host("var/log/lastlog")).unwrap().len(),
        0,
        "no lastlog entry (useradd -l), which would be a sparse file as large as the UID"
    );

    let shadow = sb.entry("etc/shadow", &g.user).expect("a shadow entry");
    assert_eq!(
        shadow[1], "*",
        "no password, but not locked for sshd without PAM"
    );
    let expire_day = g.expires.div_ceil(86_400);
    assert_eq!(
        shadow[7],
        expire_day.to_string(),
        "account expiry, the coarse backstop: the day after ExpiresAt's day"
    );

    let home = sb.host(&format!("home/{}", g.user));
    assert_eq!(mode(&home), (0o700, uid, gid), "home");
    // Nothing of Passport's in the home: whatever is there is the user's own.
    if let Ok(m) = fs::symlink_metadata(home.join(".ssh/authorized_keys")) {
        assert_eq!(
            m.uid(),
            uid,
            "an authorized_keys in the home not made by the user"
        );
    }

    // sshd reads Passport users' keys and principals from root's files only.
    assert_passport_sshd_config(sb);
    for dir in [
        "etc/ssh/passport",
        "etc/ssh/passport/principals",
        "etc/ssh/passport/authorized_keys",
    ] {
        assert_eq!(mode(&sb.host(dir)), (0o755, 0, 0), "{dir}");
    }
    let ca_file = sb.file("etc/ssh/passport/ca.pub");
    assert_eq!(mode(&sb.host("etc/ssh/passport/ca.pub")), (0o644, 0, 0));
    let principals = sb.host(&format!("etc/ssh/passport/principals/{}", g.user));
    let keys = sb.host(&format!("etc/ssh/passport/authorized_keys/{}", g.user));
    let options = if g.forwarding {
        "restrict,pty,port-forwarding"
    } else {
        "restrict,pty"
    };
    match &g.ca_keys {
        Some(ca_keys) => {
            let expected: String = ca_keys.split(',').map(|k| format!("{k}\n")).collect();
            assert_eq!(ca_file, expected, "the CA keys Passport sent, one a line");
            assert_eq!(mode(&principals), (0o644, 0, 0), "principals");
            assert_eq!(
                fs::read_to_string(&principals).unwrap(),
                format!("{options} {}\n", g.user),
                "the username is the only principal"
            );
            assert!(!keys.exists(), "no key file in certificate mode");
        }
        None => {
            assert_eq!(ca_file, "", "no CA is trusted in key mode");
            let key = g.key.clone().unwrap_or_else(|| sb.key.clone());
            assert_eq!(mode(&keys), (0o644, 0, 0), "authorized_keys");
            assert_eq!(
                fs::read_to_string(&keys).unwrap(),
                format!(
                    "{options},expiry-time=\"{}\" {key}\n",
                    sb.local_minute(g.expires / 60 * 60)
                )
            );
            assert!(!principals.exists(), "no principals file in key mode");
        }
    }

    let state_file = format!("var/lib/passport/users/{}", g.user);
    let state = sb.file(&state_file);
    assert_eq!(
        state,
        format!("request={}\nexpires={}\nuid={uid}\n", g.req, g.expires)
    );
    assert_eq!(mode(&sb.host(&state_file)), (0o600, 0, 0));
    assert_eq!(mode(&sb.host("var/lib/passport")), (0o700, 0, 0));
    assert_eq!(mode(&sb.host("var/lib/passport/users")), (0o700, 0, 0));
    assert_eq!(
        mode(&sb.host("var/lib/passport/revoke-user.sh")),
        (0o700, 0, 0)
    );
    let counter: u32 = sb.file("var/lib/passport/next-uid").trim().parse().unwrap();
    assert!(counter > uid, "the counter is past every UID given");
    assert_eq!(mode(&sb.host("var/lib/passport/next-uid")), (0o600, 0, 0));

    let dropin = sb.host(&format!("etc/sudoers.d/passport-{}", g.user));
    assert_eq!(
        dropin.exists(),
        g.sudo,
        "sudo drop-in present iff Sudo=true"
    );

    // The sweep, for when the at job is lost (no systemd in the sandbox: cron).
    let sweep = sb.file("etc/cron.d/passport-sweep");
    assert_eq!(mode(&sb.host("etc/cron.d/passport-sweep")), (0o644, 0, 0));
    for line in [
        "@reboot root /bin/sh /var/lib/passport/revoke-user.sh --sweep",
        "*/5 * * * * root /bin/sh /var/lib/passport/revoke-user.sh --sweep",
    ] {
        assert!(sweep.lines().any(|l| l == line), "{line:?} in {sweep}");
    }

    let (_, run_at, body) = sb.expiry_job();
    assert_eq!(
        run_at,
        g.expires.div_ceil(60) * 60,
        "the at job runs at ExpiresAt, rounded up to the minute"
    );
    let lines: Vec<&str> = body.lines().collect();
    assert!(
        lines.contains(&format!("# passport-expire {}", g.user).as_str()),
        "{body}"
    );
    assert!(
        lines.contains(
            &format!(
                "/bin/sh /var/lib/passport/revoke-user.sh {} {} {}",
                g.user, g.req, g.expires
            )
            .as_str()
        ),
        "{body}"
    );
}

/// Passport's Match block for pp- users, the first drop-in sshd reads.
const SSHD_BLOCK: &str = "# Passport: managed by Passport-GrantLinux; do not edit
Match User pp-*
    TrustedUserCAKeys /etc/ssh/passport/ca.pub
    AuthorizedPrincipalsFile /etc/ssh/passport/principals/%u
    AuthorizedKeysFile /etc/ssh/passport/authorized_keys/%u
    AllowAgentForwarding no
    X11Forwarding no
    PermitUserRC no
    PermitTunnel no
Match all
";

fn assert_passport_sshd_config(sb: &Sandbox) {
    let dropin = "etc/ssh/sshd_config.d/00-passport.conf";
    assert_eq!(sb.file(dropin), SSHD_BLOCK);
    assert_eq!(mode(&sb.host(dropin)), (0o644, 0, 0));
}

fn assert_revoked(sb: &Sandbox, user: &str) {
    for db in ["etc/passwd", "etc/shadow", "etc/group", "etc/gshadow"] {
        assert!(sb.entry(db, user).is_none(), "{user} still in {db}");
    }
    for file in [
        format!("etc/ssh/passport/principals/{user}"),
        format!("etc/ssh/passport/authorized_keys/{user}"),
    ] {
        assert!(!sb.host(&file).exists(), "{file} left");
    }
    assert!(!sb.host(&format!("home/{user}")).exists(), "home left");
    assert!(
        !sb.host(&format!("etc/sudoers.d/passport-{user}")).exists(),
        "drop-in left"
    );
    assert!(
        !sb.host(&format!("var/lib/passport/users/{user}")).exists(),
        "state left"
    );
    assert!(sb.at_jobs().is_empty(), "at job left: {:?}", sb.at_jobs());
}

// ---------------------------------------------------------------------------------------
// The Linux scripts, for real

#[test]
fn grant_creates_the_user_with_expiring_account_key_and_removal_job() {
    let Some(sb) = sandbox("grant_creates_the_user_with_expiring_account_key_and_removal_job")
    else {
        return;
    };
    let g = Grant::new("pp-alice-7", "AR-7");
    let out = sb.grant_ok(&g);
    assert!(out.contains("pp-alice-7 created for AR-7"), "{out}");
    assert!(out.contains("removal by at job"), "{out}");
    assert_granted(&sb, &g);
    assert_no_canary(&sb, "grant");
}

#[test]
fn grant_twice_is_harmless() {
    let Some(sb) = sandbox("grant_twice_is_harmless") else {
        return;
    };
    let g = Grant::new("pp-alice-7", "AR-7");
    sb.grant_ok(&g);
    let passwd = sb.file("etc/passwd");
    let shadow = sb.file("etc/shadow");
    let out = sb.grant_ok(&g);
    assert!(out.contains("pp-alice-7 extended for AR-7"), "{out}");
    assert_eq!(sb.file("etc/passwd"), passwd);
    assert_eq!(sb.file("etc/shadow"), shadow);
    assert_granted(&sb, &g);
}

#[test]
fn extension_moves_all_three_expiries() {
    let Some(sb) = sandbox("extension_moves_all_three_expiries") else {
        return;
    };
    let mut g = Grant::new("pp-alice-7", "AR-7");
    g.expires = now() + 1800;
    sb.grant_ok(&g);
    // Make the account expiry stale, so the rerun must really write it.
    sb.ok("usermod --expiredate 2000-01-01 pp-alice-7");
    g.expires = now() + 20 * 3600;
    sb.grant_ok(&g);
    assert_granted(&sb, &g);
}

#[test]
fn sudo_on_adds_a_valid_drop_in_and_sudo_off_removes_it() {
    let Some(sb) = sandbox("sudo_on_adds_a_valid_drop_in_and_sudo_off_removes_it") else {
        return;
    };
    let mut g = Grant::new("pp-bob-8", "AR-8");
    g.sudo = true;
    sb.grant_ok(&g);
    assert_granted(&sb, &g);
    let dropin = "etc/sudoers.d/passport-pp-bob-8";
    assert_eq!(mode(&sb.host(dropin)), (0o440, 0, 0));
    assert!(sb
        .file(dropin)
        .lines()
        .any(|l| l == "pp-bob-8 ALL=(ALL:ALL) NOPASSWD: ALL"));
    sb.ok("visudo -c -q && visudo -c -q -f /etc/sudoers.d/passport-pp-bob-8");
    // No half-written temp file is left behind.
    assert!(!fs::read_dir(sb.host("etc/sudoers.d")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".passport")));
    let as_user =
        "setpriv --reuid=pp-bob-8 --regid=pp-bob-8 --init-groups sudo -n id -u 2>/dev/null";
    assert_eq!(sb.ok(as_user).trim(), "0", "the user can sudo");

    g.sudo = false;
    sb.grant_ok(&g);
    assert_granted(&sb, &g);
    assert!(!sb.host(dropin).exists());
    assert!(!sb.run_with(&[], as_user).status.success(), "sudo is gone");
}

#[test]
fn revoke_removes_user_home_drop_in_state_and_job() {
    let Some(sb) = sandbox("revoke_removes_user_home_drop_in_state_and_job") else {
        return;
    };
    let mut g = Grant::new("pp-carol-9", "AR-9");
    g.sudo = true;
    sb.grant_ok(&g);
    let out = sb.revoke_ok("pp-carol-9", "AR-9");
    assert!(out.contains("pp-carol-9 removed (AR-9)"), "{out}");
    assert_revoked(&sb, "pp-carol-9");
    sb.assert_untouched("after revoke");
}

#[test]
fn revoke_when_the_user_is_absent_succeeds() {
    let Some(sb) = sandbox("revoke_when_the_user_is_absent_succeeds") else {
        return;
    };
    let out = sb.revoke_ok("pp-dave-10", "AR-10");
    assert!(out.contains("pp-dave-10 was already absent"), "{out}");
    let g = Grant::new("pp-dave-10", "AR-10");
    sb.grant_ok(&g);
    sb.revoke_ok("pp-dave-10", "AR-10");
    let out = sb.revoke_ok("pp-dave-10", "AR-10");
    assert!(out.contains("was already absent"), "{out}");
    sb.assert_untouched("after two revokes");
}

#[test]
fn revoke_ends_the_users_running_processes() {
    let Some(sb) = sandbox("revoke_ends_the_users_running_processes") else {
        return;
    };
    sb.grant_ok(&Grant::new("pp-erin-11", "AR-11"));
    // One call: the sandbox's processes die with it.
    let out = sb.ok(
        r#"
        ( setpriv --reuid=pp-erin-11 --regid=pp-erin-11 --init-groups sleep 600 & )
        ( setpriv --reuid=pp-erin-11 --regid=pp-erin-11 --init-groups sh -c 'trap "" TERM HUP; sleep 600' & )
        uid=$(id -u pp-erin-11)
        # count N: waits up to 10 s for the user to have N processes, then prints them.
        count() {
            i=0
            while [ "$(pgrep -u "$uid" | wc -l)" -ne "$1" ] && [ "$i" -lt 200 ]; do
                i=$((i + 1))
                sleep 0.05
            done
            pgrep -u "$uid" | wc -l
        }
        echo "before: $(count 3)"
        SSM_Username=pp-erin-11 SSM_RequestId=AR-11 sh /root/ssm/revoke-linux.sh >/dev/null
        echo "after: $(count 0)"
        "#,
    );
    assert!(out.contains("before: 3"), "{out}");
    assert!(out.contains("after: 0"), "{out}");
    assert_revoked(&sb, "pp-erin-11");
}

#[test]
fn an_account_passport_did_not_create_is_left_alone() {
    let Some(sb) = sandbox("an_account_passport_did_not_create_is_left_alone") else {
        return;
    };
    sb.ok("useradd --create-home --comment 'Frank, platform team' pp-frank-12");
    let passwd = sb.file("etc/passwd");
    // Left over from a grant under that name: whatever the account is, Passport's own
    // access files for the name go.
    sb.ok("echo 'pp-frank-12 ALL=(ALL:ALL) NOPASSWD: ALL' >/etc/sudoers.d/passport-pp-frank-12 && chmod 0440 /etc/sudoers.d/passport-pp-frank-12");
    sb.ok("mkdir -p /etc/ssh/passport/principals && echo pp-frank-12 >/etc/ssh/passport/principals/pp-frank-12");

    let out = sb.revoke("pp-frank-12", "AR-12");
    assert!(!out.status.success());
    assert!(
        !sb.host("etc/sudoers.d/passport-pp-frank-12").exists(),
        "the sudoers drop-in of a refused account is removed"
    );
    assert!(!sb.host("etc/ssh/passport/principals/pp-frank-12").exists());
    assert!(
        text(&out.stderr).contains("was not created by Passport for AR-12; leaving it alone"),
        "{}",
        text(&out.stderr)
    );

    let out = sb.grant(&Grant::new("pp-frank-12", "AR-12"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("was not created by Passport for AR-12; refusing to touch it"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(sb.file("etc/passwd"), passwd);
    assert!(sb.host("home/pp-frank-12").is_dir());
    assert!(!sb.host("home/pp-frank-12/.ssh").exists());
    assert!(sb.at_jobs().is_empty());

    // Nor one made by Passport for another request.
    sb.ok("useradd --comment 'passport AR-99' pp-gina-13");
    let out = sb.revoke("pp-gina-13", "AR-13");
    assert!(!out.status.success());
    assert!(sb.entry("etc/passwd", "pp-gina-13").is_some());
}

#[test]
fn a_leftover_home_without_its_account_is_not_adopted() {
    let Some(sb) = sandbox("a_leftover_home_without_its_account_is_not_adopted") else {
        return;
    };
    sb.ok("mkdir -p /home/pp-hal-14/.ssh && echo 'ssh-ed25519 AAAAplanted' >/home/pp-hal-14/.ssh/authorized_keys");
    let out = sb.grant(&Grant::new("pp-hal-14", "AR-14"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/home/pp-hal-14 exists but account pp-hal-14 does not"));
    assert!(sb.entry("etc/passwd", "pp-hal-14").is_none());
}

#[test]
fn hostile_inputs_are_refused_and_never_executed() {
    let Some(sb) = sandbox("hostile_inputs_are_refused_and_never_executed") else {
        return;
    };
    let valid = valid_grant_values("pp-alice-7", "AR-7", &sb.key);
    let mut cases = hostile_values(&valid);
    cases.extend(refused_by_the_script_only(&valid));
    for (param, value) in &cases {
        let mut values = valid.clone();
        values.insert(param, value.clone());
        let out = sb.grant_env("sh", &values);
        let stderr = text(&out.stderr);
        let context = format!("grant with {param}={value:.80?}");
        assert!(!out.status.success(), "{context} succeeded");
        assert!(
            stderr.starts_with("passport grant: "),
            "{context}: {stderr}"
        );
        assert!(
            stderr.contains(param),
            "{context}: the error names {param}: {stderr}"
        );
        assert!(
            !stderr.contains("pwned"),
            "{context}: the error echoes the input"
        );
        assert_eq!(stderr.lines().count(), 1, "{context}: one line: {stderr}");
        sb.assert_untouched(&context);
    }
    let ca = make_key(&sb.host("root/ca"), "ed25519", None);
    let valid_cert = valid_certificate_grant_values("pp-alice-7", "AR-7", &ca);
    for (param, value) in refused_in_certificate_mode(&valid_cert) {
        let mut values = valid_cert.clone();
        values.insert(param, value.clone());
        let out = sb.grant_env("sh", &values);
        let stderr = text(&out.stderr);
        let context = format!("certificate grant with {param}={value:.80?}");
        assert!(!out.status.success(), "{context} succeeded");
        assert!(stderr.contains(param), "{context}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{context}: one line: {stderr}");
        sb.assert_untouched(&context);
    }
    assert!(sb.at_jobs().is_empty());
    assert!(
        !sb.host("var/lib/passport").exists(),
        "refused before taking the lock"
    );
    assert!(
        !sb.host("etc/ssh/passport").exists(),
        "sshd untouched by a refused grant"
    );

    // The same corpus against revoke, with a real user in place who must survive it.
    let g = Grant::new("pp-alice-7", "AR-7");
    sb.grant_ok(&g);
    for (param, value) in cases
        .iter()
        .filter(|(p, _)| *p == "Username" || *p == "RequestId")
    {
        let (user, req) = if *param == "Username" {
            (value.as_str(), "AR-7")
        } else {
            ("pp-alice-7", value.as_str())
        };
        let out = sb.revoke(user, req);
        let context = format!("revoke with {param}={value:.80?}");
        assert!(!out.status.success(), "{context} succeeded");
        assert!(
            text(&out.stderr).starts_with("passport revoke: "),
            "{context}"
        );
        assert_no_canary(&sb, &context);
    }
    assert_granted(&sb, &g);
}

#[test]
fn sshd_accepts_the_key_until_revoke() {
    let Some(sb) = sandbox("sshd_accepts_the_key_until_revoke") else {
        return;
    };
    if !sb.sshd_works("sshd_accepts_the_key_until_revoke") {
        return;
    }
    let mut g = Grant::new("pp-ivy-15", "AR-15");
    g.sudo = true;
    sb.grant_ok(&g);
    let out = sb.ssh(
        "pp-ivy-15",
        "id -un; sudo -n id -u 2>/dev/null; stat -c %a ~",
    );
    assert!(out.status.success(), "login refused: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pp-ivy-15\n0\n700\n");

    // Another requester's key is not let in.
    let other = make_key(&sb.host("root/other"), "ed25519", None);
    let mut g2 = g.clone();
    g2.key = Some(other);
    sb.grant_ok(&g2);
    let out = sb.ssh("pp-ivy-15", "true");
    assert!(!out.status.success(), "the old key still logs in");
    sb.grant_ok(&g);

    sb.revoke_ok("pp-ivy-15", "AR-15");
    let out = sb.ssh("pp-ivy-15", "true");
    assert!(!out.status.success(), "login still works after revoke");
    assert!(
        text(&out.stderr).contains("Invalid user pp-ivy-15"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn in_key_mode_the_user_cannot_stretch_or_widen_the_key() {
    let test = "in_key_mode_the_user_cannot_stretch_or_widen_the_key";
    let Some(sb) = sandbox(test) else {
        return;
    };
    if !sb.sshd_works(test) {
        return;
    }
    let g = Grant::new("pp-kit-30", "AR-30");
    sb.grant_ok(&g);
    let keys = "etc/ssh/passport/authorized_keys/pp-kit-30";
    let line = sb.file(keys);
    assert!(
        line.starts_with("restrict,pty,expiry-time=\""),
        "restrict and the expiry come first: {line}"
    );
    // restrict takes the terminal away; pty gives it back for interactive work.
    let out = sb.login_with("pp-kit-30", "/root/id", "-tt", "tty");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("/dev/pts/"),
        "{}",
        text(&out.stdout)
    );

    // Whatever the user writes in their home, including an authorized_keys without the
    // expiry for their own key and for a second key they hold, sshd never reads it.
    let second = make_key(&sb.host("root/second"), "ed25519", None);
    let out = sb.ssh(
        "pp-kit-30",
        &format!(
            "set -e; mkdir -p ~/.ssh; printf '%s\\n%s\\n' '{}' '{second}' >~/.ssh/authorized_keys; \
             cp ~/.ssh/authorized_keys ~/.ssh/authorized_keys2; chmod 600 ~/.ssh/*; \
             rm -f /etc/ssh/passport/authorized_keys/pp-kit-30 2>/dev/null || true; \
             (echo x >>/etc/ssh/passport/authorized_keys/pp-kit-30) 2>/dev/null || true; \
             (echo x >/etc/ssh/passport/ca.pub) 2>/dev/null || true; echo done",
            sb.key
        ),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "done\n");
    assert_eq!(sb.file(keys), line, "the root-owned key file is untouched");
    assert_eq!(sb.file("etc/ssh/passport/ca.pub"), "");
    let out = sb.login("pp-kit-30", "/root/second", "true");
    assert!(
        !out.status.success(),
        "a key the user added in their home logs in"
    );

    // No ~/.ssh/rc runs (restrict, PermitUserRC no).
    let out = sb.ssh(
        "pp-kit-30",
        "echo 'touch /tmp/rc-ran' >~/.ssh/rc && chmod 700 ~/.ssh/rc",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = sb.ssh("pp-kit-30", "true");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!sb.host("tmp/rc-ran").exists(), "~/.ssh/rc ran");

    // Past the minute of expiry-time the key is refused: the same file with an expiry
    // in the past (written as the grant writes it) stands for waiting.
    let past = sb.local_minute(now() - 120);
    let expired = line.replacen(
        &format!("expiry-time=\"{}\"", sb.local_minute(g.expires / 60 * 60)),
        &format!("expiry-time=\"{past}\""),
        1,
    );
    assert_ne!(expired, line);
    fs::write(sb.host(keys), expired).unwrap();
    let out = sb.ssh("pp-kit-30", "true");
    assert!(!out.status.success(), "an expired key logs in");
}

#[test]
fn port_forwarding_follows_the_grant() {
    let test = "port_forwarding_follows_the_grant";
    let Some(sb) = sandbox(test) else {
        return;
    };
    if !sb.sshd_works(test) {
        return;
    }
    let mut g = Grant::new("pp-lou-31", "AR-31");
    sb.grant_ok(&g);
    let forward = |sb: &Sandbox| {
        // A remote forward: the server must open it before the command runs, and
        // ExitOnForwardFailure makes its refusal fail the login.
        sb.run_with(
            &[],
            r#"
            mkdir -p /run/sshd
            /usr/sbin/sshd -o Port=2222 -o ListenAddress=127.0.0.1 -o UsePAM=no \
                -o PidFile=/run/passport_test_sshd.pid -E /tmp/sshd.log
            i=0
            while [ ! -s /run/passport_test_sshd.pid ] && [ "$i" -lt 200 ]; do i=$((i + 1)); sleep 0.05; done
            ssh -F /dev/null -i /root/id -p 2222 -o BatchMode=yes -o IdentitiesOnly=yes \
                -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
                -o ExitOnForwardFailure=yes -o LogLevel=ERROR \
                -R 127.0.0.1:2224:127.0.0.1:2222 pp-lou-31@127.0.0.1 true
            "#,
        )
    };
    assert!(
        !forward(&sb).status.success(),
        "port forwarding with PortForwarding=false"
    );
    g.forwarding = true;
    sb.grant_ok(&g);
    assert_granted(&sb, &g);
    let out = forward(&sb);
    assert!(
        out.status.success(),
        "no port forwarding with PortForwarding=true: {}",
        text(&out.stderr)
    );
}

#[test]
fn every_supported_key_type_is_installed() {
    let Some(sb) = sandbox("every_supported_key_type_is_installed") else {
        return;
    };
    let mut g = Grant::new("pp-jo-16", "AR-16");
    for (kind, bits) in [
        ("ecdsa", Some("256")),
        ("ecdsa", Some("384")),
        ("ecdsa", Some("521")),
        ("rsa", Some("3072")),
        ("ed25519", None),
    ] {
        let path = sb.host(&format!("root/id_{kind}_{}", bits.unwrap_or("")));
        g.key = Some(make_key(&path, kind, bits));
        sb.grant_ok(&g);
        assert_granted(&sb, &g);
    }
}

#[test]
fn the_expiry_job_removes_the_user_when_it_runs() {
    let Some(sb) = sandbox("the_expiry_job_removes_the_user_when_it_runs") else {
        return;
    };
    let mut g = Grant::new("pp-kim-17", "AR-17");
    g.sudo = true;
    sb.grant_ok(&g);
    let (id, _, _) = sb.expiry_job();
    // What atd would run at the time, run now.
    let out = sb.ok(&format!("at -c {id} | sh"));
    assert!(out.contains("pp-kim-17 removed (AR-17)"), "{out}");
    assert_revoked(&sb, "pp-kim-17");
}

#[test]
fn an_old_expiry_job_stands_down_after_an_extension() {
    let Some(sb) = sandbox("an_old_expiry_job_stands_down_after_an_extension") else {
        return;
    };
    let mut g = Grant::new("pp-lee-18", "AR-18");
    g.expires = now() + 1800;
    sb.grant_ok(&g);
    let (_, _, old_job) = sb.expiry_job();
    g.expires = now() + 5 * 3600;
    sb.grant_ok(&g);
    // The old job already fired and was waiting for the lock when the extension landed.
    fs::write(sb.host("root/old-job"), old_job).unwrap();
    let out = sb.ok("sh /root/old-job");
    assert!(out.contains("pp-lee-18 was extended"), "{out}");
    assert_granted(&sb, &g);
}

#[test]
fn without_a_scheduler_grant_fails_before_changing_anything() {
    let Some(sb) = sandbox("without_a_scheduler_grant_fails_before_changing_anything") else {
        return;
    };
    let g = Grant::new("pp-max-19", "AR-19");
    let values = g.values(&sb.key);
    let env: Vec<(String, String)> = values
        .iter()
        .map(|(k, v)| (format!("SSM_{k}"), v.clone()))
        .collect();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("SANDBOX_NO_ATD", "1"));
    let out = sb.run_with(&env, "sh /root/ssm/grant-linux.sh");
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        "passport grant: cannot schedule the removal at expiry: systemd is not running and atd is not running (start atd)\n"
    );
    sb.assert_untouched("grant without a scheduler");
}

#[test]
fn links_planted_in_the_home_lead_nowhere() {
    let Some(sb) = sandbox("links_planted_in_the_home_lead_nowhere") else {
        return;
    };
    let mut g = Grant::new("pp-ned-20", "AR-20");
    sb.grant_ok(&g);
    let passwd = sb.file("etc/passwd");
    let as_user = "setpriv --reuid=pp-ned-20 --regid=pp-ned-20 --init-groups sh -c";

    // ~/.ssh as a link to /etc, authorized_keys in it as a link to /etc/passwd: the
    // grant writes nothing in the home, so an extension follows none of them.
    sb.ok(&format!(
        "{as_user} 'cd /home/pp-ned-20 && rm -rf .ssh && mkdir .ssh && ln -s /etc/passwd .ssh/authorized_keys && ln -s /etc .ssh2'"
    ));
    g.expires += 600;
    sb.grant_ok(&g);
    assert_eq!(sb.file("etc/passwd"), passwd);
    assert!(!sb.host("etc/authorized_keys").exists());
    assert_granted(&sb, &g);
    sb.revoke_ok("pp-ned-20", "AR-20");
    assert_eq!(
        sb.file("etc/passwd")
            .lines()
            .filter(|l| !l.starts_with("pp-"))
            .count(),
        passwd.lines().count() - 1,
        "revoke followed no link out of the home"
    );
    assert_revoked(&sb, "pp-ned-20");
}

#[test]
fn the_scripts_also_run_under_bash() {
    let Some(sb) = sandbox("the_scripts_also_run_under_bash") else {
        return;
    };
    let mut g = Grant::new("pp-oz-21", "AR-21");
    g.sudo = true;
    let out = sb.grant_env("bash", &g.values(&sb.key));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_granted(&sb, &g);
    let mut values = g.values(&sb.key);
    values.insert("Username", "pp-oz-21$(touch /tmp/pwned)".to_string());
    assert!(!sb.grant_env("bash", &values).status.success());
    let out = sb.revoke_in("bash", "pp-oz-21", "AR-21");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_revoked(&sb, "pp-oz-21");
    assert_no_canary(&sb, "bash");
}

#[test]
fn the_longest_username_passport_makes_works() {
    let Some(sb) = sandbox("the_longest_username_passport_makes_works") else {
        return;
    };
    let id = RequestId::new(123_456_789_012_345_678).unwrap();
    let user = Username::for_request(&"x".repeat(40), id);
    // 20 characters for any realistic request number; the largest ids make it longer.
    assert_eq!(user.as_str(), "pp-x-123456789012345678");
    let g = Grant::new(user.as_str(), &id.to_string());
    sb.grant_ok(&g);
    assert_granted(&sb, &g);
    sb.revoke_ok(user.as_str(), &id.to_string());
    assert_revoked(&sb, user.as_str());
}

// ---------------------------------------------------------------------------------------
// Certificates, UIDs, clean-up and the persistent removal

/// Signs the public key `<key>.pub` (a host path inside the sandbox) with the CA private
/// key `ca`, for `principal`, valid over `validity` (ssh-keygen -V syntax). ssh offers
/// the resulting `<key>-cert.pub` with `-i <key>`.
fn sign(ca: &Path, key: &Path, principal: &str, validity: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca)
        .args(["-I", "passport-test", "-n", principal, "-V", validity])
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen -s: {}", text(&out.stderr));
}

/// A user key pair at root/<name> in the sandbox with a certificate from `ca` for
/// `principal`, valid from a minute ago for an hour. Returns the path ssh is given.
fn user_with_certificate(sb: &Sandbox, name: &str, ca: &str, principal: &str) -> String {
    make_key(&sb.host(&format!("root/{name}")), "ed25519", None);
    sign(
        &sb.host(&format!("root/{ca}")),
        &sb.host(&format!("root/{name}")),
        principal,
        "-1m:+1h",
    );
    format!("/root/{name}")
}

/// What Passport sends as TrustedCaKeys for its CA: the public key line without its
/// comment.
fn passport_ca_key(ca: &CertificateAuthority) -> String {
    ca.public_key_line()
        .split(' ')
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A user key pair at root/<name> in the sandbox with a certificate that Passport's
/// own CA signed for `principal`, valid from a minute ago for an hour, saved where ssh
/// finds it (`<key>-cert.pub`). Returns the path ssh is given and the certificate line.
fn user_with_passport_certificate(
    sb: &Sandbox,
    name: &str,
    ca: &CertificateAuthority,
    principal: &str,
) -> (String, String) {
    let public = make_key(&sb.host(&format!("root/{name}")), "ed25519", None);
    let now_ms = i64::try_from(now()).unwrap() * 1000;
    let spec = CertificateSpec {
        serial: 1,
        principal: principal.to_string(),
        key_id: "AR-40 tester".to_string(),
        valid_after: Timestamp::from_millis(now_ms - 60_000),
        valid_before: Timestamp::from_millis(now_ms + 3_600_000),
        port_forwarding: false,
    };
    let line = ca
        .sign(&spec, &SshPublicKey::parse(&public).unwrap(), None)
        .unwrap();
    fs::write(
        sb.host(&format!("root/{name}-cert.pub")),
        format!("{line}\n"),
    )
    .unwrap();
    (format!("/root/{name}"), line)
}

#[test]
fn a_certificate_from_the_trusted_ca_logs_in_as_its_principal_only() {
    let test = "a_certificate_from_the_trusted_ca_logs_in_as_its_principal_only";
    let Some(sb) = sandbox(test) else {
        return;
    };
    if !sb.sshd_works(test) {
        return;
    }
    // Passport's own CA signs the real certificates; ssh-keygen makes the other CA.
    let passport_ca = CertificateAuthority::generate(CaKeyType::Ed25519).unwrap();
    let ca = passport_ca_key(&passport_ca);
    let other_ca = make_key(&sb.host("root/other_ca"), "ed25519", None);
    let cat = Grant::certificate("pp-cat-40", "AR-40", &ca);
    let out = sb.grant_ok(&cat);
    assert!(out.contains("certificate login"), "{out}");
    assert_granted(&sb, &cat);
    sb.grant_ok(&Grant::certificate("pp-dog-41", "AR-41", &ca));

    let (cat_id, _) = user_with_passport_certificate(&sb, "cat", &passport_ca, "pp-cat-40");
    let out = sb.login("pp-cat-40", &cat_id, "id -un");
    assert!(out.status.success(), "login refused: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pp-cat-40\n");

    let out = sb.login("pp-dog-41", &cat_id, "true");
    assert!(
        !out.status.success(),
        "a certificate for pp-cat-40 logs in as pp-dog-41"
    );
    let forged = user_with_certificate(&sb, "forged", "other_ca", "pp-cat-40");
    let out = sb.login("pp-cat-40", &forged, "true");
    assert!(
        !out.status.success(),
        "a certificate from another CA logs in"
    );
    // A bare key is not a certificate: nothing in key mode was installed.
    assert!(!sb.ssh("pp-cat-40", "true").status.success());

    // The user rewrites everything in their home that sshd could read: an
    // authorized_keys (and authorized_keys2) with a key they hold and the other CA as a
    // cert-authority, and principals files. None of it opens a door.
    let forged_key = fs::read_to_string(sb.host("root/forged.pub")).unwrap();
    let forged_key = forged_key.split_whitespace().take(2).collect::<Vec<_>>();
    let script = format!(
        "set -e; mkdir -p ~/.ssh; \
         printf '%s\\n%s\\n' '{k}' 'cert-authority,principals=\"pp-cat-40\" {o}' >~/.ssh/authorized_keys; \
         cp ~/.ssh/authorized_keys ~/.ssh/authorized_keys2; echo pp-cat-40 >~/.ssh/authorized_principals; \
         chmod 700 ~/.ssh; chmod 600 ~/.ssh/*; echo done",
        k = forged_key.join(" "),
        o = other_ca
    );
    let out = sb.login("pp-cat-40", &cat_id, &script);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "done\n");
    fs::remove_file(sb.host("root/forged-cert.pub")).unwrap();
    let out = sb.login("pp-cat-40", &forged, "true");
    assert!(
        !out.status.success(),
        "a key from the user's own authorized_keys logs in"
    );
    sign(
        &sb.host("root/other_ca"),
        &sb.host("root/forged"),
        "pp-cat-40",
        "-1m:+1h",
    );
    let out = sb.login("pp-cat-40", &forged, "true");
    assert!(
        !out.status.success(),
        "a CA from the user's own authorized_keys is trusted"
    );

    sb.revoke_ok("pp-cat-40", "AR-40");
    assert_revoked_but_others(&sb, "pp-cat-40");
    let out = sb.login("pp-cat-40", &cat_id, "true");
    assert!(
        !out.status.success(),
        "the certificate logs in after revoke"
    );
}

/// Like assert_revoked, when other users (with their at jobs) are still granted.
fn assert_revoked_but_others(sb: &Sandbox, user: &str) {
    for db in ["etc/passwd", "etc/shadow", "etc/group", "etc/gshadow"] {
        assert!(sb.entry(db, user).is_none(), "{user} still in {db}");
    }
    assert!(!sb.host(&format!("home/{user}")).exists(), "home left");
    for file in [
        format!("etc/ssh/passport/principals/{user}"),
        format!("etc/ssh/passport/authorized_keys/{user}"),
        format!("etc/sudoers.d/passport-{user}"),
        format!("var/lib/passport/users/{user}"),
    ] {
        assert!(!sb.host(&file).exists(), "{file} left");
    }
    for (id, _, _) in sb.at_jobs() {
        let body = sb.ok(&format!("at -c {id}"));
        assert!(
            !body
                .lines()
                .any(|l| l == format!("# passport-expire {user}")),
            "the removal job of {user} is left"
        );
    }
}

#[test]
fn a_certificate_is_refused_after_its_valid_before() {
    let test = "a_certificate_is_refused_after_its_valid_before";
    let Some(sb) = sandbox(test) else {
        return;
    };
    if !sb.sshd_works(test) {
        return;
    }
    let ca = make_key(&sb.host("root/ca"), "ed25519", None);
    sb.grant_ok(&Grant::certificate("pp-eve-42", "AR-42", &ca));
    make_key(&sb.host("root/eve"), "ed25519", None);
    // sshd checks valid_before against the real clock, so this test waits for it: a
    // certificate valid for 5 seconds, used at once and after it ran out.
    sign(
        &sb.host("root/ca"),
        &sb.host("root/eve"),
        "pp-eve-42",
        "-1m:+5s",
    );
    let signed = now();
    let out = sb.login("pp-eve-42", "/root/eve", "true");
    assert!(
        out.status.success() || now() > signed + 4,
        "a fresh certificate is refused: {}",
        text(&out.stderr)
    );
    while now() <= signed + 6 {
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let out = sb.login("pp-eve-42", "/root/eve", "true");
    assert!(!out.status.success(), "an expired certificate logs in");
    assert!(
        text(&out.stderr).contains("expired") || text(&out.stderr).contains("invalid"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn during_a_ca_rotation_both_cas_log_in_and_afterwards_only_the_new_one() {
    let test = "during_a_ca_rotation_both_cas_log_in_and_afterwards_only_the_new_one";
    let Some(sb) = sandbox(test) else {
        return;
    };
    if !sb.sshd_works(test) {
        return;
    }
    let old = make_key(&sb.host("root/old_ca"), "ed25519", None);
    let new = make_key(&sb.host("root/new_ca"), "rsa", Some("3072"));
    let mut g = Grant::certificate("pp-rot-43", "AR-43", &format!("{old},{new}"));
    sb.grant_ok(&g);
    assert_granted(&sb, &g);
    let by_old = user_with_certificate(&sb, "by_old", "old_ca", "pp-rot-43");
    let by_new = user_with_certificate(&sb, "by_new", "new_ca", "pp-rot-43");
    for id in [&by_old, &by_new] {
        let out = sb.login("pp-rot-43", id, "true");
        assert!(
            out.status.success(),
            "{id} refused during the rotation: {}",
            text(&out.stderr)
        );
    }
    g.ca_keys = Some(new.clone());
    sb.grant_ok(&g);
    assert_granted(&sb, &g);
    assert!(
        !sb.login("pp-rot-43", &by_old, "true").status.success(),
        "the old CA is still trusted"
    );
    let out = sb.login("pp-rot-43", &by_new, "true");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn switching_modes_leaves_only_the_new_way_in() {
    let test = "switching_modes_leaves_only_the_new_way_in";
    let Some(sb) = sandbox(test) else {
        return;
    };
    if !sb.sshd_works(test) {
        return;
    }
    let ca = make_key(&sb.host("root/ca"), "ed25519", None);
    let mut g = Grant::new("pp-sw-44", "AR-44");
    sb.grant_ok(&g);
    g.ca_keys = Some(ca);
    sb.grant_ok(&g);
    assert_granted(&sb, &g);
    assert!(
        !sb.ssh("pp-sw-44", "true").status.success(),
        "the key of key mode still logs in"
    );
    let id = user_with_certificate(&sb, "sw", "ca", "pp-sw-44");
    assert!(sb.login("pp-sw-44", &id, "true").status.success());
    g.ca_keys = None;
    sb.grant_ok(&g);
    assert_granted(&sb, &g);
    assert!(
        !sb.login("pp-sw-44", &id, "true").status.success(),
        "a certificate logs in in key mode"
    );
    assert!(sb.ssh("pp-sw-44", "true").status.success());
}

#[test]
fn three_grants_get_three_new_uids_and_revoke_leaves_nothing_behind() {
    let Some(sb) = sandbox("three_grants_get_three_new_uids_and_revoke_leaves_nothing_behind")
    else {
        return;
    };
    let mut uids = Vec::new();
    for n in 50..53 {
        let user = format!("pp-cyc-{n}");
        let req = format!("AR-{n}");
        let g = Grant::new(&user, &req);
        sb.grant_ok(&g);
        assert_granted(&sb, &g);
        let uid: u32 = sb.entry("etc/passwd", &user).unwrap()[2].parse().unwrap();
        uids.push(uid);
        // What a user could leave behind, then the revoke, in one sandbox call (its
        // processes die with the call).
        let out = sb.ok(&format!(
            r#"
            as_user="setpriv --reuid={uid} --regid={uid} --clear-groups"
            $as_user sh -c 'cp /bin/sh /var/tmp/sh-{n} && chmod 4755 /var/tmp/sh-{n}'
            $as_user sh -c 'cp /bin/sh /tmp/sh-{n} && chmod 6755 /tmp/sh-{n}'
            $as_user sh -c 'mkdir -p /tmp/dir-{n}/sub && echo x >/tmp/dir-{n}/sub/f && echo y >/dev/shm/shm-{n}'
            $as_user sh -c 'echo "touch /tmp/at-ran-{n}" | at now + 30 minutes' 2>/dev/null
            cd /tmp && $as_user setsid nohup sleep 1000 >/dev/null 2>&1 </dev/null &
            i=0
            while [ "$(pgrep -u {uid} | wc -l)" -lt 1 ] && [ "$i" -lt 100 ]; do i=$((i + 1)); sleep 0.05; done
            echo "before: $(pgrep -u {uid} | wc -l) processes, $(atq | wc -l) at jobs"
            SSM_Username={user} SSM_RequestId={req} sh /root/ssm/revoke-linux.sh
            echo "after: $(pgrep -u {uid} | wc -l) processes, $(atq | wc -l) at jobs"
            echo "files: $(find / -xdev -user {uid} 2>/dev/null | wc -l) on /, $(find /dev/shm -user {uid} | wc -l) in /dev/shm"
            "#
        ));
        assert!(
            out.contains("before: 1 processes, 2 at jobs"),
            "a process and an at job of the user, and the removal job: {out}"
        );
        assert!(out.contains(&format!("{user} removed ({req})")), "{out}");
        assert!(out.contains("after: 0 processes, 0 at jobs"), "{out}");
        assert!(out.contains("files: 0 on /, 0 in /dev/shm"), "{out}");
        for left in [
            format!("var/tmp/sh-{n}"),
            format!("tmp/sh-{n}"),
            format!("tmp/dir-{n}"),
        ] {
            assert!(!sb.host(&left).exists(), "{left} outlived the revoke");
        }
        assert_revoked(&sb, &user);
    }
    assert!(
        uids.windows(2).all(|w| w[0] < w[1]),
        "a new, higher UID each time: {uids:?}"
    );
    assert!(uids.iter().all(|u| (10_000_000..=19_999_999).contains(u)));
    // The counter survives the users.
    assert_eq!(
        sb.file("var/lib/passport/next-uid").trim(),
        (uids[2] + 1).to_string()
    );
}

#[test]
fn uids_come_from_the_range_above_every_account_in_it() {
    let Some(sb) = sandbox("uids_come_from_the_range_above_every_account_in_it") else {
        return;
    };
    // Someone else's account in the range: Passport starts above it.
    sb.ok("useradd -u 10000005 -l -M someone");
    let g = Grant::new("pp-fl-45", "AR-45");
    sb.grant_ok(&g);
    assert_eq!(sb.entry("etc/passwd", "pp-fl-45").unwrap()[2], "10000006");
    // A group holding the next number is skipped too.
    sb.ok("groupadd -g 10000007 taken");
    sb.grant_ok(&Grant::new("pp-fl-46", "AR-46"));
    assert_eq!(sb.entry("etc/passwd", "pp-fl-46").unwrap()[2], "10000008");
}

#[test]
fn a_used_up_uid_range_is_refused_and_never_recycled() {
    let Some(sb) = sandbox("a_used_up_uid_range_is_refused_and_never_recycled") else {
        return;
    };
    let small = |user: &str, req: &str| {
        let mut g = Grant::new(user, req);
        g.uid_range = "20000-20001".to_string();
        g
    };
    sb.grant_ok(&small("pp-u-46", "AR-46"));
    sb.grant_ok(&small("pp-u-47", "AR-47"));
    sb.revoke_ok("pp-u-46", "AR-46");
    let out = sb.grant(&small("pp-u-48", "AR-48"));
    assert!(!out.status.success(), "a UID was given twice");
    assert_eq!(
        text(&out.stderr),
        "passport grant: UidRange 20000-20001 is used up on this instance (UIDs are never given twice); configure a range above 20001\n"
    );
    assert!(sb.entry("etc/passwd", "pp-u-48").is_none());
    assert!(sb.entry("etc/group", "pp-u-48").is_none());
}

#[test]
fn a_uid_range_overlapping_subordinate_ids_is_refused() {
    let Some(sb) = sandbox("a_uid_range_overlapping_subordinate_ids_is_refused") else {
        return;
    };
    sb.ok("echo 'builder:19990000:65536' >>/etc/subgid");
    let out = sb.grant(&Grant::new("pp-sub-47", "AR-47"));
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        "passport grant: UidRange 10000000-19999999 overlaps the subordinate ids 19990000-20055535 of builder in /etc/subgid; configure another range\n"
    );
    sb.assert_untouched("grant over subordinate ids");
}

#[test]
fn the_sweep_removes_exactly_the_users_whose_access_has_ended() {
    let Some(sb) = sandbox("the_sweep_removes_exactly_the_users_whose_access_has_ended") else {
        return;
    };
    sb.grant_ok(&Grant::new("pp-old-48", "AR-48"));
    let young = Grant::new("pp-new-49", "AR-49");
    sb.grant_ok(&young);
    // The machine was off when pp-old-48's access ended and its at job is gone.
    let state = "var/lib/passport/users/pp-old-48";
    let past = now() - 60;
    let text_before = sb.file(state);
    let expires_line = text_before
        .lines()
        .find(|l| l.starts_with("expires="))
        .unwrap()
        .to_string();
    fs::write(
        sb.host(state),
        text_before.replace(&expires_line, &format!("expires={past}")),
    )
    .unwrap();
    for (id, _, _) in sb.at_jobs() {
        if sb
            .ok(&format!("at -c {id}"))
            .contains("# passport-expire pp-old-48")
        {
            sb.ok(&format!("atrm {id}"));
        }
    }
    // What cron runs at boot and every 5 minutes.
    let sweep = sb.file("etc/cron.d/passport-sweep");
    let command = sweep
        .lines()
        .find_map(|l| l.strip_prefix("@reboot root "))
        .unwrap();
    let out = sb.ok(command);
    assert!(out.contains("pp-old-48 removed (AR-48)"), "{out}");
    assert_revoked_but_others(&sb, "pp-old-48");
    assert_granted(&sb, &young);
    // Nothing to do is success, and quiet.
    assert_eq!(sb.ok(command), "");
}

#[test]
fn without_an_include_the_block_goes_at_the_end_of_sshd_config_once() {
    let test = "without_an_include_the_block_goes_at_the_end_of_sshd_config_once";
    let Some(sb) = sandbox(test) else {
        return;
    };
    sb.ok("sed -i '/^Include /d' /etc/ssh/sshd_config");
    let before = sb.file("etc/ssh/sshd_config");
    let g = Grant::new("pp-inc-50", "AR-50");
    sb.grant_ok(&g);
    sb.grant_ok(&Grant::new("pp-inc-51", "AR-51"));
    let after = sb.file("etc/ssh/sshd_config");
    assert_eq!(
        after,
        format!("{before}# >>> Passport: managed by Passport-GrantLinux; do not edit\n{SSHD_BLOCK}# <<< Passport\n"),
        "one block, appended, kept in place by later grants"
    );
    assert_eq!(mode(&sb.host("etc/ssh/sshd_config")), (0o644, 0, 0));
    assert!(!sb.host("etc/ssh/sshd_config.d/00-passport.conf").exists());
    if sb.sshd_works(test) {
        let out = sb.ssh("pp-inc-50", "id -un");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

#[test]
fn an_earlier_match_block_that_overrides_passports_is_named_and_refused() {
    let Some(sb) = sandbox("an_earlier_match_block_that_overrides_passports_is_named_and_refused")
    else {
        return;
    };
    sb.ok("printf 'Match User pp-*\\n    AuthorizedKeysFile .ssh/authorized_keys\\n' >/etc/ssh/sshd_config.d/00-aaa.conf");
    let out = sb.grant(&Grant::new("pp-ovr-52", "AR-52"));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("authorizedkeysfile .ssh/authorized_keys for pp-ovr-52")
            && stderr.contains("/etc/ssh/sshd_config.d/00-aaa.conf"),
        "{stderr}"
    );
    assert!(
        !sb.host("etc/ssh/sshd_config.d/00-passport.conf").exists(),
        "the old configuration is back"
    );
    assert!(sb.entry("etc/passwd", "pp-ovr-52").is_none());
}

#[test]
fn a_configuration_sshd_rejects_is_put_back() {
    let Some(sb) = sandbox("a_configuration_sshd_rejects_is_put_back") else {
        return;
    };
    sb.ok("echo 'NoSuchKeyword yes' >/etc/ssh/sshd_config.d/50-broken.conf");
    let before = sb.file("etc/ssh/sshd_config");
    let out = sb.grant(&Grant::new("pp-bad-53", "AR-53"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).starts_with("passport grant: sshd rejects the configuration"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(sb.file("etc/ssh/sshd_config"), before);
    assert!(!sb.host("etc/ssh/sshd_config.d/00-passport.conf").exists());
    assert!(sb.entry("etc/passwd", "pp-bad-53").is_none());
}

/// Stand-ins for systemd's commands, mounted over /usr/local/sbin, the first directory
/// of the scripts' PATH: each call is recorded in /var/log/systemd-calls, and no unit is
/// active. With /run/systemd/system present, the scripts take their systemd branch.
fn fake_systemd(sb: &Sandbox) {
    let bin = sb.host("usr-local-sbin");
    fs::create_dir_all(&bin).unwrap();
    for tool in ["systemctl", "loginctl"] {
        let path = bin.join(tool);
        fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{tool} $*\" >>/var/log/systemd-calls\n[ \"$1\" != is-active ] || exit 3\nexit 0\n"
            ),
        )
        .unwrap();
        let mut perms = fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        fs::set_permissions(&path, perms).unwrap();
    }
    fs::create_dir_all(sb.host("run/systemd/system")).unwrap();
}

#[test]
fn under_systemd_the_removal_is_a_persistent_timer_on_disk_with_a_sweep() {
    let Some(sb) = sandbox("under_systemd_the_removal_is_a_persistent_timer_on_disk_with_a_sweep")
    else {
        return;
    };
    fake_systemd(&sb);
    let mut g = Grant::new("pp-sys-54", "AR-54");
    g.sudo = true;
    let out = sb.grant_ok(&g);
    let when = sb
        .ok(&format!(
            "date -u -d @{} '+%Y-%m-%d %H:%M:%S UTC'",
            g.expires
        ))
        .trim()
        .to_string();
    assert!(
        out.contains(&format!(
            "removal by systemd timer passport-expire-pp-sys-54.timer at {when}"
        )),
        "{out}"
    );
    assert!(sb.at_jobs().is_empty(), "no at job under systemd");
    let units = "etc/systemd/system";
    let timer = format!("{units}/passport-expire-pp-sys-54.timer");
    let service = format!("{units}/passport-expire-pp-sys-54.service");
    assert_eq!(
        sb.file(&timer),
        format!(
            "[Unit]\nDescription=Passport: remove pp-sys-54 (AR-54) at expiry\n\n[Timer]\nOnCalendar={when}\nPersistent=true\nAccuracySec=1s\nUnit=passport-expire-pp-sys-54.service\n\n[Install]\nWantedBy=timers.target\n"
        )
    );
    assert_eq!(
        sb.file(&service),
        format!(
            "[Unit]\nDescription=Passport: remove pp-sys-54 (AR-54) at expiry\n\n[Service]\nType=oneshot\nExecStart=/bin/sh /var/lib/passport/revoke-user.sh pp-sys-54 AR-54 {}\n",
            g.expires
        )
    );
    let sweep_service = sb.file(&format!("{units}/passport-sweep.service"));
    assert!(
        sweep_service.contains("\nExecStart=/bin/sh /var/lib/passport/revoke-user.sh --sweep\n")
    );
    assert!(sweep_service.contains("\nWantedBy=multi-user.target\n"));
    let sweep_timer = sb.file(&format!("{units}/passport-sweep.timer"));
    assert!(
        sweep_timer.contains("\nOnUnitActiveSec=5min\n"),
        "{sweep_timer}"
    );
    for unit in [
        &timer,
        &service,
        &format!("{units}/passport-sweep.service"),
        &format!("{units}/passport-sweep.timer"),
    ] {
        assert_eq!(mode(&sb.host(unit)), (0o644, 0, 0), "{unit}");
    }
    let calls = sb.file("var/log/systemd-calls");
    for call in [
        "systemctl daemon-reload",
        "systemctl enable passport-expire-pp-sys-54.timer",
        "systemctl restart passport-expire-pp-sys-54.timer",
        "systemctl enable passport-sweep.service passport-sweep.timer",
        "systemctl start passport-sweep.timer",
    ] {
        assert!(calls.lines().any(|l| l == call), "{call:?} in {calls}");
    }

    // systemd itself reads the units, when its analyzer is installed.
    if have("systemd-analyze") {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(sb.host(&timer))
            .arg(sb.host(&service))
            .arg(sb.host(&format!("{units}/passport-sweep.service")))
            .arg(sb.host(&format!("{units}/passport-sweep.timer")))
            .env("SYSTEMD_LOG_LEVEL", "warning")
            .output()
            .unwrap();
        let complaints: Vec<String> = text(&out.stderr)
            .lines()
            .filter(|l| l.contains("passport"))
            .map(str::to_string)
            .collect();
        assert!(
            out.status.success() && complaints.is_empty(),
            "systemd-analyze verify: {}",
            text(&out.stderr)
        );
        let out = Command::new("systemd-analyze")
            .args(["calendar", &when])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    // What the timer runs at expiry removes the user and its own units.
    fs::write(sb.host("var/log/systemd-calls"), "").unwrap();
    let exec = sb
        .file(&service)
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap()
        .to_string();
    let out = sb.ok(&exec);
    assert!(out.contains("pp-sys-54 removed (AR-54)"), "{out}");
    assert_revoked(&sb, "pp-sys-54");
    assert!(!sb.host(&timer).exists() && !sb.host(&service).exists());
    assert!(sb.host(&format!("{units}/passport-sweep.timer")).exists());
    let calls = sb.file("var/log/systemd-calls");
    for call in [
        "loginctl terminate-user pp-sys-54",
        "systemctl stop passport-expire-pp-sys-54.timer",
        "systemctl disable passport-expire-pp-sys-54.timer",
        "systemctl daemon-reload",
    ] {
        assert!(calls.lines().any(|l| l == call), "{call:?} in {calls}");
    }
    assert!(
        !calls.contains("stop passport-expire-pp-sys-54.service"),
        "the running removal is not stopped from within: {calls}"
    );
}

#[test]
fn a_running_sshd_is_reloaded_only_when_the_block_changes() {
    let test = "a_running_sshd_is_reloaded_only_when_the_block_changes";
    let Some(sb) = sandbox(test) else {
        return;
    };
    if !sb.sshd_works(test) {
        return;
    }
    let g1 = Grant::new("pp-hup-55", "AR-55");
    let g2 = Grant::new("pp-hup-56", "AR-56");
    let env = |g: &Grant, prefix: &str| -> String {
        g.values(&sb.key)
            .iter()
            .map(|(k, v)| format!("{prefix}{k}='{v}'"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    // One sandbox call: sshd (with the pid file of the configuration, which the grant
    // reads) runs while two grants happen; only the first one changes the block.
    let out = sb.ok(&format!(
        r#"
        mkdir -p /run/sshd
        /usr/sbin/sshd -o Port=2222 -o ListenAddress=127.0.0.1 -o UsePAM=no -E /tmp/sshd.log
        i=0
        while [ ! -s /run/sshd.pid ] && [ "$i" -lt 200 ]; do i=$((i + 1)); sleep 0.05; done
        env {} sh /root/ssm/grant-linux.sh >/dev/null
        sleep 1
        echo "after the first grant: $(grep -c 'Received SIGHUP' /tmp/sshd.log)"
        env {} sh /root/ssm/grant-linux.sh >/dev/null
        sleep 1
        echo "after the second grant: $(grep -c 'Received SIGHUP' /tmp/sshd.log)"
        "#,
        env(&g1, "SSM_"),
        env(&g2, "SSM_")
    ));
    assert!(out.contains("after the first grant: 1"), "{out}");
    assert!(out.contains("after the second grant: 1"), "{out}");
    assert_granted_but_others(&sb, &g1);
}

/// assert_granted without the at-queue check (other users have jobs too).
fn assert_granted_but_others(sb: &Sandbox, g: &Grant) {
    let passwd = sb.entry("etc/passwd", &g.user).expect("a passwd entry");
    assert_eq!(passwd[4], format!("passport {}", g.req));
    assert!(sb
        .host(&format!("etc/ssh/passport/authorized_keys/{}", g.user))
        .exists());
    assert_passport_sshd_config(sb);
}

#[test]
fn revoke_cleans_up_after_a_uid_whose_account_is_already_gone() {
    let Some(sb) = sandbox("revoke_cleans_up_after_a_uid_whose_account_is_already_gone") else {
        return;
    };
    sb.grant_ok(&Grant::new("pp-gone-57", "AR-57"));
    let uid = sb.entry("etc/passwd", "pp-gone-57").unwrap()[2].clone();
    // The account was removed by hand, its setuid shell in /var/tmp was not.
    sb.ok(&format!(
        "setpriv --reuid={uid} --regid={uid} --clear-groups sh -c 'cp /bin/sh /var/tmp/kept && chmod 4755 /var/tmp/kept' && userdel pp-gone-57"
    ));
    assert!(sb.host("var/tmp/kept").exists());
    let out = sb.revoke_ok("pp-gone-57", "AR-57");
    assert!(
        out.contains("pp-gone-57 was already absent (AR-57)"),
        "{out}"
    );
    assert!(
        !sb.host("var/tmp/kept").exists(),
        "the UID's setuid file outlived the revoke"
    );
    assert_revoked(&sb, "pp-gone-57");
}

#[test]
fn a_setuid_file_revoke_cannot_remove_fails_it_and_a_retry_finishes() {
    let test = "a_setuid_file_revoke_cannot_remove_fails_it_and_a_retry_finishes";
    let Some(sb) = sandbox(test) else {
        return;
    };
    sb.grant_ok(&Grant::new("pp-imm-58", "AR-58"));
    let uid = sb.entry("etc/passwd", "pp-imm-58").unwrap()[2].clone();
    sb.ok(&format!(
        "setpriv --reuid={uid} --regid={uid} --clear-groups sh -c 'cp /bin/sh /var/tmp/imm && chmod 4755 /var/tmp/imm'"
    ));
    // An immutable file stands for one root cannot delete (not every file system has
    // the attribute).
    if !sb.run_with(&[], "chattr +i /var/tmp/imm").status.success() {
        eprintln!("{test}: skipped: chattr +i does not work here");
        return;
    }
    let out = sb.revoke("pp-imm-58", "AR-58");
    assert!(
        !out.status.success(),
        "revoke succeeded with a setuid file left"
    );
    assert_eq!(
        text(&out.stderr),
        format!(
            "passport revoke: could not remove the setuid/setgid files of uid {uid}: /var/tmp/imm\n"
        )
    );
    // The state keeps the UID, so the retry Passport makes cleans up after it.
    sb.ok("chattr -i /var/tmp/imm");
    let out = sb.revoke_ok("pp-imm-58", "AR-58");
    assert!(out.contains("pp-imm-58 was already absent"), "{out}");
    assert!(!sb.host("var/tmp/imm").exists());
    assert_revoked(&sb, "pp-imm-58");
}

#[test]
fn a_certificate_from_passports_rsa_ca_is_read_by_ssh_keygen_and_logs_in() {
    let test = "a_certificate_from_passports_rsa_ca_is_read_by_ssh_keygen_and_logs_in";
    let Some(sb) = sandbox(test) else {
        return;
    };
    let ca = CertificateAuthority::generate(CaKeyType::Rsa).unwrap();
    let trusted = passport_ca_key(&ca);
    assert!(trusted.starts_with("ssh-rsa "), "{trusted}");
    let g = Grant::certificate("pp-rsa-59", "AR-59", &trusted);
    sb.grant_ok(&g);
    assert_granted(&sb, &g);
    let (id, _) = user_with_passport_certificate(&sb, "rsa_user", &ca, "pp-rsa-59");

    // OpenSSH's own reading of the certificate.
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(sb.host("root/rsa_user-cert.pub"))
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen -L: {}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(
        listing.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"),
        "{listing}"
    );
    assert!(listing.contains("(using rsa-sha2-512)"), "{listing}");
    assert!(
        listing
            .lines()
            .skip_while(|l| !l.contains("Principals:"))
            .nth(1)
            .map(str::trim)
            == Some("pp-rsa-59"),
        "{listing}"
    );

    if !sb.sshd_works(test) {
        return;
    }
    let out = sb.login("pp-rsa-59", &id, "id -un");
    assert!(out.status.success(), "login refused: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pp-rsa-59\n");
}
