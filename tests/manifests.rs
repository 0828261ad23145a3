//! The Kubernetes manifests in manifests/kubernetes/: each overlay renders with
//! `kubectl kustomize`, every object validates against the Kubernetes schemas
//! (`kubernetes-validate`, offline, strict: unknown fields are errors), the pod
//! runs locked down, and the passport.toml each overlay ships is one Passport
//! accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_passport");
const OVERLAYS: [&str; 3] = ["slack", "discord", "slack-postgres"];
/// The overlays that run several replicas on PostgreSQL; the others keep one
/// pod on a SQLite volume.
const REPLICATED: [&str; 1] = ["slack-postgres"];

/// The workload an overlay runs Passport as.
fn workload(overlay: &str) -> &'static str {
    if REPLICATED.contains(&overlay) {
        "Deployment"
    } else {
        "StatefulSet"
    }
}
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
            workload(overlay),
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
            "runAsNonRoot: true",
            "runAsUser: 10001",
            "readOnlyRootFilesystem: true",
            "allowPrivilegeEscalation: false",
            "- ALL",
            "type: RuntimeDefault",
            "enableServiceLinks: false",
            "automountServiceAccountToken: false",
            "path: /healthz",
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

/// The NetworkPolicy lets the pod reach the cluster's DNS: its rule selects
/// the DNS pods by their own label alone, without Passport's labels (which a
/// kustomize label transformer would add to every selector).
#[test]
fn the_dns_rule_selects_the_cluster_dns_pods_only() {
    for overlay in OVERLAYS {
        let rendered = render(overlay);
        let rule = "      podSelector:\n        matchLabels:\n          k8s-app: kube-dns\n";
        assert!(
            rendered.contains(rule),
            "{overlay}: no {rule:?} in\n{rendered}"
        );
    }
}

#[test]
fn sqlite_overlays_run_one_pod_on_its_own_volume() {
    for overlay in OVERLAYS.iter().filter(|o| !REPLICATED.contains(o)) {
        let rendered = render(overlay);
        for needle in [
            "kind: StatefulSet\n",
            "replicas: 1\n",
            "ReadWriteOnce",
            "mountPath: /var/lib/passport",
        ] {
            assert!(
                rendered.contains(needle),
                "{overlay}: no {needle:?} in\n{rendered}"
            );
        }
        assert!(!rendered.contains("kind: Deployment\n"), "{overlay}");
    }
}

/// Two replicas on PostgreSQL: a Deployment with the StatefulSet's locked-down
/// pod but no volume, a PodDisruptionBudget over its pods, the database URL
/// from a Secret, and PostgreSQL's port open for egress.
#[test]
fn the_postgres_overlay_runs_two_replicas_with_a_disruption_budget() {
    for overlay in REPLICATED {
        let rendered = render(overlay);
        for needle in [
            "kind: Deployment\n",
            "replicas: 2\n",
            "maxUnavailable: 0\n",
            "kind: PodDisruptionBudget\n",
            "minAvailable: 1\n",
            "name: PASSPORT_STORE__URL\n",
            "name: passport-postgres\n",
            "port: 5432\n",
            "topologyKey: kubernetes.io/hostname\n",
            // The pod template copied from the base, with its probes.
            "path: /readyz\n",
            "terminationGracePeriodSeconds: 30\n",
        ] {
            assert!(
                rendered.contains(needle),
                "{overlay}: no {needle:?} in\n{rendered}"
            );
        }
        for absent in [
            "kind: StatefulSet\n",
            "volumeClaimTemplates",
            "/var/lib/passport",
            "name: data\n",
            "passport-headless",
        ] {
            assert!(
                !rendered.contains(absent),
                "{overlay}: {absent:?} in\n{rendered}"
            );
        }
        // The Deployment, the budget and the NetworkPolicy select the same pods.
        let selector = "matchLabels:\n      app.kubernetes.io/component: bot\n      \
                        app.kubernetes.io/name: passport\n      app.kubernetes.io/part-of: passport\n";
        assert_eq!(rendered.matches(selector).count(), 3, "{rendered}");
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
            .env_remove("PASSPORT_LOG");
        if REPLICATED.contains(&overlay) {
            // As the Secret passport-postgres provides it.
            cmd.env(
                "PASSPORT_STORE__URL",
                "postgres://passport:secret@db.example.internal:5432/passport?sslmode=verify-full",
            );
        } else {
            // The pod's volume is not here; only the path changes.
            cmd.env("PASSPORT_STORE__PATH", dir.path().join("passport.db"));
        }
        match overlay {
            "slack" | "slack-postgres" => {
                cmd.env("PASSPORT_SLACK__BOT_TOKEN", "xoxb-0000-test").env(
                    "PASSPORT_SLACK__SIGNING_SECRET",
                    "0123456789abcdef0123456789abcdef",
                )
            }
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
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(!printed.contains("secret@"), "{overlay}: {printed}");
    }
}
