//! Passport's SSH CA through the use cases: `cert AR-n` on a real SQLite
//! store, the certificate read back by OpenSSH's own `ssh-keygen -L`, the
//! Logbook record of every certificate, and grants that trust the CA instead of
//! installing a key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use passport::adapters::ssh_ca::{CaKeyType, CertificateAuthority, SshCa};
use passport::domain::time::Span;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkVm1fN7nG8kqzZ1d8dQkPZ5QF1sW7bqkUu1YpJt0dx dev1@laptop";

fn ca(kind: CaKeyType) -> Arc<SshCa> {
    Arc::new(SshCa::new(
        CertificateAuthority::generate(kind).unwrap(),
        Vec::new(),
        Vec::new(),
        None,
    ))
}

async fn app_with(ca: Arc<SshCa>) -> (TestApp, tempfile::TempDir) {
    let (app, dir) = TestApp::spawn().await;
    (app.with_certificates(ca, Span::from_minutes(2)), dir)
}

/// The certificate line inside an answer.
fn certificate_in(answer: &str) -> String {
    let start = answer.find("printf '%s\\n' '").expect("a save line") + "printf '%s\\n' '".len();
    let end = answer[start..].find('\'').unwrap();
    answer[start..start + end].to_owned()
}

/// `ssh-keygen -L` of a certificate: OpenSSH's own reading of it.
fn keygen_list(dir: &Path, cert: &str) -> String {
    let path = dir.join("cert.pub");
    std::fs::write(&path, format!("{cert}\n")).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("ssh-keygen (OpenSSH) is installed");
    assert!(
        out.status.success(),
        "ssh-keygen -L refused the certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn cert_gives_the_requester_a_certificate_that_ssh_keygen_reads() {
    let (app, dir) = app_with(ca(CaKeyType::Ed25519)).await;
    assert!(app.run("dev1", &format!("key set {KEY}")).await.ok);
    let id = app.active_request("2h").await;
    let req = app.request(id).await;

    let reply = app.run("dev1", &format!("cert {id}")).await;
    assert!(reply.ok, "{}", reply.text);
    assert!(reply.text.contains("ProxyCommand"), "{}", reply.text);
    assert!(
        reply
            .text
            .contains(&format!("pp-dev1-{}@{WEB}", id.number())),
        "{}",
        reply.text
    );
    let listed = keygen_list(dir.path(), &certificate_in(&reply.text));
    assert!(
        listed.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("Key ID: \"{id} dev1 ticket#1\"")),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("Serial: {}", id.number() << 20 | 1)),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("                pp-dev1-{}\n", id.number())),
        "{listed}"
    );
    assert!(listed.contains("permit-pty"), "{listed}");
    for never in [
        "permit-agent-forwarding",
        "permit-X11-forwarding",
        "permit-user-rc",
        "permit-port-forwarding",
    ] {
        assert!(!listed.contains(never), "{never} in {listed}");
    }
    // Valid until the access ends, from two minutes before it was issued.
    let expires = req.expires_at.unwrap();
    let to = time_of(expires.as_millis());
    assert!(
        listed.contains(&format!(" to {to}")),
        "want {to} in {listed}"
    );
    let from = time_of(T0 - 120_000);
    assert!(
        listed.contains(&format!("from {from}")),
        "want {from} in {listed}"
    );
    app.close().await;
}

/// `ssh-keygen -L` prints times in the local zone as YYYY-MM-DDTHH:MM:SS;
/// the tests run with TZ unset, which is UTC here.
fn time_of(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).unwrap();
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    t.format(&f).unwrap()
}

#[tokio::test]
async fn an_rsa_ca_signs_with_rsa_sha2_512() {
    let (app, dir) = app_with(ca(CaKeyType::Rsa)).await;
    assert!(app.run("dev1", &format!("key set {KEY}")).await.ok);
    let id = app.active_request("1h").await;
    let reply = app.run("dev1", &format!("cert {id}")).await;
    assert!(reply.ok, "{}", reply.text);
    let listed = keygen_list(dir.path(), &certificate_in(&reply.text));
    assert!(listed.contains("Signing CA: RSA SHA256:"), "{listed}");
    assert!(listed.contains("(using rsa-sha2-512)"), "{listed}");
    app.close().await;
}

#[tokio::test]
async fn every_certificate_is_in_the_logbook_with_a_new_serial() {
    let ca = ca(CaKeyType::Ed25519);
    let (app, _dir) = app_with(ca.clone()).await;
    assert!(app.run("dev1", &format!("key set {KEY}")).await.ok);
    let id = app.active_request("2h").await;
    let first = app.run("dev1", &format!("cert {id}")).await;
    assert!(first.ok, "{}", first.text);
    // Typed in the request's thread, the id may be left out.
    let second = app.run_in_thread("dev1", id, "cert").await;
    assert!(second.ok, "{}", second.text);

    let events: Vec<_> = app
        .events(id)
        .await
        .into_iter()
        .filter(|e| e.action == "certificate_issued")
        .collect();
    assert_eq!(events.len(), 2);
    let details: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::from_str(&e.details).unwrap())
        .collect();
    let serials: Vec<u64> = details
        .iter()
        .map(|d| d["serial"].as_u64().unwrap())
        .collect();
    assert_eq!(serials, [id.number() << 20 | 1, id.number() << 20 | 2]);
    let key = passport::domain::values::SshPublicKey::parse(KEY).unwrap();
    for d in &details {
        assert_eq!(d["fingerprint"], key.fingerprint());
        assert_eq!(d["principal"], format!("pp-dev1-{}", id.number()));
        assert_eq!(
            d["ca"],
            passport::app::ports::CertificateSigner::fingerprint(&*ca)
        );
        assert!(d["valid_before"].as_str().is_some());
    }
    // `audit AR-n` shows them.
    let audit = app.run("dev1", &format!("audit {id}")).await;
    assert!(audit.text.contains("certificate"), "{}", audit.text);
    app.close().await;
}

#[tokio::test]
async fn an_extension_moves_the_next_certificates_end() {
    let (app, dir) = app_with(ca(CaKeyType::Ed25519)).await;
    assert!(app.run("dev1", &format!("key set {KEY}")).await.ok);
    let id = app.active_request("1h").await;
    let before = app.request(id).await.expires_at.unwrap();
    assert!(app.run("dev1", &format!("extend {id} 1h")).await.ok);
    let after = app.request(id).await.expires_at.unwrap();
    assert!(after > before);
    let reply = app.run("dev1", &format!("cert {id}")).await;
    let listed = keygen_list(dir.path(), &certificate_in(&reply.text));
    assert!(
        listed.contains(&format!(" to {}", time_of(after.as_millis()))),
        "{listed}"
    );
    app.close().await;
}

#[tokio::test]
async fn certificates_are_refused_to_others_before_activation_and_without_a_key() {
    let (app, _dir) = app_with(ca(CaKeyType::Ed25519)).await;
    // No key registered yet.
    let id = app.active_request("1h").await;
    let reply = app.run("dev1", &format!("cert {id}")).await;
    assert!(!reply.ok);
    assert!(reply.text.contains("key set"), "{}", reply.text);

    assert!(app.run("dev1", &format!("key set {KEY}")).await.ok);
    let reply = app.run("lead1", &format!("cert {id}")).await;
    assert!(!reply.ok);
    assert!(reply.text.contains("only the requester"), "{}", reply.text);

    let pending = app.new_request(WEB, "1h ticket#2 later").await;
    let reply = app.run("dev1", &format!("cert {pending}")).await;
    assert!(!reply.ok);
    assert!(
        reply.text.contains("only while access is active"),
        "{}",
        reply.text
    );

    assert!(app.run("dev1", &format!("complete {id}")).await.ok);
    let reply = app.run("dev1", &format!("cert {id}")).await;
    assert!(!reply.ok, "{}", reply.text);
    assert_eq!(app.count(id, "certificate_issued").await, 0);
    app.close().await;
}

#[tokio::test]
async fn without_a_ca_cert_says_so() {
    let (app, _dir) = TestApp::spawn().await;
    assert!(app.run("dev1", &format!("key set {KEY}")).await.ok);
    let id = app.active_request("1h").await;
    let reply = app.run("dev1", &format!("cert {id}")).await;
    assert!(!reply.ok);
    assert!(
        reply.text.contains("no SSH certificate authority"),
        "{}",
        reply.text
    );
    app.close().await;
}

#[tokio::test]
async fn with_a_ca_grants_trust_its_keys_and_install_no_personal_key() {
    let ca = ca(CaKeyType::Ed25519);
    let (app, _dir) = app_with(ca.clone()).await;
    assert!(app.run("dev1", &format!("key set {KEY}")).await.ok);
    app.active_request("1h").await;
    let grants = app.provisioner.grants();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].ssh_public_key, None);
    assert_eq!(
        grants[0].trusted_ca_keys,
        passport::app::ports::CertificateSigner::trusted_keys(&*ca)
    );
    assert!(
        !grants[0].port_forwarding,
        "port forwarding is off by default"
    );
    app.close().await;
}

#[tokio::test]
async fn without_a_ca_grants_install_the_registered_key() {
    let (app, _dir) = TestApp::spawn().await;
    assert!(app.run("dev1", &format!("key set {KEY}")).await.ok);
    app.active_request("1h").await;
    let grants = app.provisioner.grants();
    assert_eq!(
        grants[0].ssh_public_key.as_deref(),
        Some(KEY.rsplit_once(' ').unwrap().0)
    );
    assert!(grants[0].trusted_ca_keys.is_empty());
    app.close().await;
}

#[tokio::test]
async fn the_access_message_offers_a_certificate_and_the_ssh_line_uses_it() {
    let (app, _dir) = app_with(ca(CaKeyType::Ed25519)).await;
    assert!(app.run("dev1", &format!("key set {KEY}")).await.ok);
    let id = app.active_request("1h").await;
    let (text, actions) = app
        .surface
        .all()
        .into_iter()
        .find_map(|p| match p {
            Posted::Direct(user, text, actions) if user == "dev1" && text.contains("is active") => {
                Some((text, actions))
            }
            _ => None,
        })
        .expect("the connection details by direct message");
    assert!(text.contains(&format!("`/passport cert {id}`")), "{text}");
    assert!(
        text.contains(&format!(
            "ssh -o CertificateFile=~/.ssh/passport-{id}-cert.pub"
        )),
        "{text}"
    );
    let button = actions
        .iter()
        .find(|a| a.label == "Get SSH certificate")
        .expect("a certificate button");
    // The button is the command: clicking it issues the certificate.
    let reply = app.run("dev1", &button.command).await;
    assert!(reply.ok, "{}", reply.text);
    assert_eq!(app.count(id, "certificate_issued").await, 1);
    app.close().await;
}
