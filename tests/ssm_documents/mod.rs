//! Passport's SSM documents as the tests read them: the documents this build renders
//! (`build.rs`) and runs, the source files of `manifests/ssm/`, and the script a
//! document runs, taken from its `runCommand` (what SSM runs on the instance, with the
//! shared fragments in place).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

pub fn ssm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/ssm")
}

/// A built document by file name (`Passport-GrantLinux.yaml`: what `passport ssm install`
/// sends), or a source file of `manifests/ssm/` (`grant-linux.sh`).
pub fn read_ssm(name: &str) -> String {
    if let Some(document) = name.strip_suffix(".yaml").filter(|n| !n.ends_with(".head")) {
        return passport::adapters::aws::built_document(document)
            .unwrap_or_else(|| panic!("no built document {document}"));
    }
    fs::read_to_string(ssm_dir().join(name)).unwrap_or_else(|e| panic!("manifests/ssm/{name}: {e}"))
}

/// Unquotes a YAML single-quoted scalar ('' is the only escape).
pub fn unquote(value: &str) -> String {
    match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => {
            assert!(
                !inner.replace("''", "").contains('\''),
                "unpaired quote in {value:?}"
            );
            inner.replace("''", "'")
        }
        None => value.to_string(),
    }
}

/// The runCommand lines of a document. Every line after `runCommand:` must be one
/// single-quoted list item (`build.rs` writes them that way).
pub fn run_command(doc: &str) -> Vec<String> {
    let mut lines = doc.lines();
    lines
        .by_ref()
        .find(|l| *l == "      runCommand:")
        .expect("a '      runCommand:' line");
    lines
        .map(|l| {
            let item = l
                .strip_prefix("        - ")
                .filter(|i| i.len() >= 2 && i.starts_with('\'') && i.ends_with('\''))
                .unwrap_or_else(|| panic!("not a single-quoted runCommand item: {l:?}"));
            unquote(item)
        })
        .collect()
}

/// The script the document `doc` (e.g. `Passport-GrantLinux.yaml`) runs, as a file's text.
pub fn rendered_script(doc: &str) -> String {
    let mut script = run_command(&read_ssm(doc)).join("\n");
    script.push('\n');
    script
}

/// Writes the scripts of the Linux documents into `dir` as `grant-linux.sh` and
/// `revoke-linux.sh`, where the sandboxed tests run them.
pub fn write_linux_scripts(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for (doc, script) in [
        ("Passport-GrantLinux.yaml", "grant-linux.sh"),
        ("Passport-RevokeLinux.yaml", "revoke-linux.sh"),
    ] {
        fs::write(dir.join(script), rendered_script(doc)).unwrap();
    }
}
