//! The Kubernetes manifests in manifests/kubernetes/: each overlay renders with
//! `kubectl kustomize`, every object validates against the Kubernetes schemas
//! (`kubernetes-validate`, offline, strict: unknown fields are errors), the pod
//! runs locked down, and the passport.toml each overlay ships is one Passport
//! accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_passport");
const OVERLAYS: [&str; 2] = ["slack", "discord"];
/// The oldest Kubernetes minor the manifests promise to work on.
const KUBERNETES: &str = "1.29.0";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `PASSPORT_KUBERNETES_VALIDATE`, else the virtualenv scripts/test makes.
fn validator() -> PathBuf {
    if let Some(path) = std::env::var_os("PASSPORT_KUBERNETES_VALIDATE") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    let venv = Path::new(&home).join(".cache/passport/k8s-venv/bin/kubernetes-validate");
    assert!(
        venv.is_file(),
        "kubernetes-validate is not installed: run scripts/test, or \
         `python3 -m venv ~/.cache/passport/k8s-venv && ~/.cache/passport/k8s-venv/bin/pip install kubernetes-validate`"
    );
    venv
}

fn render(overlay: &str) -> String {
    let dir = repo().join("manifests/kubernetes/overlays").join(overlay);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl is installed (its built-in kustomize renders the manifests)");
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_object_of_every_overlay_validates_against_the_kubernetes_schemas() {
    let validate = validator();
    for overlay in OVERLAYS {
        let rendered = render(overlay);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, &rendered).unwrap();
        let out = Command::new(&validate)
            .args(["--strict", "--no-warn", "-k", KUBERNETES])
            .arg(&file)
            .output()
            .expect("kubernetes-validate runs");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{overlay}: {report}");
        for kind in [
            "ServiceAccount",
            "ConfigMap",
            "Service",
            "StatefulSet",
            "NetworkPolicy",
        ] {
            assert!(
                rendered.contains(&format!("kind: {kind}\n")),
                "{overlay} renders no {kind}"
            );
        }
        // Every object passed, none was skipped for an unknown kind.
        let objects = rendered
            .lines()
            .filter(|line| line.starts_with("kind: "))
            .count();
        let passed = report.matches(" passed for resource ").count();
        assert_eq!(passed, objects, "{overlay}: {report}");
    }
}

#[test]
fn the_pod_runs_as_a_numeric_non_root_user_on_a_read_only_root() {
    for overlay in OVERLAYS {
        let rendered = render(overlay);
        for needle in [
            "replicas: 1\n",
            "runAsNonRoot: true",
            "runAsUser: 10001",
            "readOnlyRootFilesystem: true",
            "allowPrivilegeEscalation: false",
            "- ALL",
            "type: RuntimeDefault",
            "enableServiceLinks: false",
            "automountServiceAccountToken: false",
            "path: /healthz",
            "ReadWriteOnce",
            "name: PASSPORT_CONFIG",
            "secretKeyRef",
        ] {
            assert!(
                rendered.contains(needle),
                "{overlay}: no {needle:?} in\n{rendered}"
            );
        }
        // Secrets are referenced, never written into the manifests.
        assert!(
            !rendered.contains("kind: Secret\n"),
            "{overlay} ships a Secret"
        );
    }
}

/// The passport.toml of each overlay, with its secrets as the Secret would
/// provide them, is a configuration `passport check-config` accepts.
#[test]
fn each_overlay_ships_a_configuration_passport_accepts() {
    for overlay in OVERLAYS {
        let dir = tempfile::tempdir().unwrap();
        let toml = repo()
            .join("manifests/kubernetes/overlays")
            .join(overlay)
            .join("passport.toml");
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&toml)
            .arg("check-config")
            .current_dir(dir.path())
            // The pod's volume is not here; only the path changes.
            .env("PASSPORT_STORE__PATH", dir.path().join("passport.db"))
            .env_remove("PASSPORT_LOG");
        match overlay {
            "slack" => cmd.env("PASSPORT_SLACK__BOT_TOKEN", "xoxb-0000-test").env(
                "PASSPORT_SLACK__SIGNING_SECRET",
                "0123456789abcdef0123456789abcdef",
            ),
            _ => cmd.env(
                "PASSPORT_DISCORD__BOT_TOKEN",
                "MTIzNDU2Nzg5MDEyMzQ1Njc4.Gabcde.test-part",
            ),
        };
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{overlay}/passport.toml is refused: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
