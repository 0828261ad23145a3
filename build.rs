//! Build steps Passport needs before it compiles:
//!
//! - Rebuild when a migration is added: `sqlx::migrate!` embeds the files of
//!   `migrations/` at compile time, and cargo does not watch that folder by itself.
//! - Render the SSM documents (`manifests/ssm/README.md`) into `OUT_DIR`, where
//!   `src/adapters/aws/documents.rs` embeds them. A document is its head file
//!   (`Passport-X.head.yaml`, everything up to `      runCommand:`) followed by its
//!   script, one YAML single-quoted string per line (a quote is doubled, nothing else is
//!   escaped). In the script every line `# passport-include FILE` is replaced by FILE
//!   from its first `# >>> ` line on (the lines above it describe the fragment), so the
//!   code that grant and revoke share is written once. The output depends only on the
//!   sources, so the content hash Passport uses to spot outdated installed documents
//!   changes only when they do.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs, process};

/// Each document and the script it runs, both in `manifests/ssm/`.
const SSM_DOCUMENTS: [(&str, &str); 4] = [
    ("Passport-GrantLinux", "grant-linux.sh"),
    ("Passport-RevokeLinux", "revoke-linux.sh"),
    ("Passport-GrantWindows", "grant-windows.ps1"),
    ("Passport-RevokeWindows", "revoke-windows.ps1"),
];

const RUN_COMMAND: &str = "      runCommand:";
const INCLUDE: &str = "# passport-include ";

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=manifests/ssm");
    let sources = Path::new("manifests/ssm");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_else(|| fail("OUT_DIR is not set")));
    for (document, script) in SSM_DOCUMENTS {
        let text = render(sources, document, script).unwrap_or_else(|e| fail(&e));
        let path = out.join(format!("{document}.yaml"));
        fs::write(&path, text).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    process::exit(1)
}

fn read(dir: &Path, file: &str) -> Result<String, String> {
    fs::read_to_string(dir.join(file)).map_err(|e| format!("manifests/ssm/{file}: {e}"))
}

/// One document: its head, then the script with its fragments in place.
fn render(dir: &Path, document: &str, script: &str) -> Result<String, String> {
    let head_file = format!("{document}.head.yaml");
    let head = read(dir, &head_file)?;
    if head.lines().last() != Some(RUN_COMMAND) || !head.ends_with('\n') {
        return Err(format!(
            "manifests/ssm/{head_file} must end with the line {RUN_COMMAND:?}"
        ));
    }
    let mut text = head;
    for line in script_lines(dir, script)? {
        if line.contains(['\t', '\r']) {
            return Err(format!(
                "manifests/ssm/{script}: a tab or carriage return in {line:?}; use spaces and LF"
            ));
        }
        let _ = writeln!(text, "        - '{}'", line.replace('\'', "''"));
    }
    Ok(text)
}

/// The lines of a script with every `# passport-include FILE` replaced by FILE from its
/// `# >>> ` line on.
fn script_lines(dir: &Path, script: &str) -> Result<Vec<String>, String> {
    let source = read(dir, script)?;
    if !source.ends_with('\n') {
        return Err(format!("manifests/ssm/{script} must end with a newline"));
    }
    let mut lines = Vec::new();
    for line in source.lines() {
        let Some(file) = line.strip_prefix(INCLUDE) else {
            lines.push(line.to_owned());
            continue;
        };
        let named_simply = !file.is_empty()
            && file
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !named_simply {
            return Err(format!(
                "manifests/ssm/{script}: {line:?} must name a file beside it"
            ));
        }
        let fragment = read(dir, file)?;
        let Some(start) = fragment.lines().position(|l| l.starts_with("# >>> ")) else {
            return Err(format!(
                "manifests/ssm/{script} includes {file}, which has no \"# >>> \" line"
            ));
        };
        lines.extend(fragment.lines().skip(start).map(str::to_owned));
    }
    Ok(lines)
}
