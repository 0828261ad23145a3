//! Certificate signing by Passport's SSH CA on one core: ed25519 and RSA 4096
//! CA keys, each signing certificates for an ed25519 user key as `cert AR-n`
//! does (`CertificateAuthority::sign`, the certificate encoded as its line).
//!
//! Run with `cargo bench --bench ssh_ca`. Sizes: `PASSPORT_BENCH_CERTS`
//! (default 20000 for ed25519; RSA signs a tenth of that).

use std::time::{Duration, Instant};

use passport::adapters::ssh_ca::{CaKeyType, CertificateAuthority};
use passport::domain::certificate::CertificateSpec;
use passport::domain::time::Timestamp;
use passport::domain::values::SshPublicKey;

const USER_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkVm1fN7nG8kqzZ1d8dQkPZ5QF1sW7bqkUu1YpJt0dx";

fn spec(n: u64) -> CertificateSpec {
    CertificateSpec {
        serial: 1 << 20 | n,
        principal: "pp-dev1-1".into(),
        key_id: "AR-1 dev1 ticket#123".into(),
        valid_after: Timestamp::from_millis(1_800_000_000_000),
        valid_before: Timestamp::from_millis(1_800_043_200_000),
        port_forwarding: false,
    }
}

fn run(kind: CaKeyType, name: &str, count: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let ca = CertificateAuthority::generate(kind)?;
    let keygen = started.elapsed();
    let key = SshPublicKey::parse(USER_KEY).map_err(|e| anyhow::anyhow!(e.0))?;
    let mut latencies = Vec::with_capacity(count as usize);
    let started = Instant::now();
    let mut bytes = 0;
    for n in 0..count {
        let one = Instant::now();
        let line = ca
            .sign(&spec(n), &key, None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        latencies.push(one.elapsed());
        bytes += line.len();
    }
    let total = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name}: {count} certificates in {:.2} s = {:.0}/s on one core; p50 {:.0} µs, p99 {:.0} µs; {} bytes per line; CA key generated in {:.2} s",
        total.as_secs_f64(),
        count as f64 / total.as_secs_f64(),
        micros(pct(0.5)),
        micros(pct(0.99)),
        bytes / count.max(1) as usize,
        keygen.as_secs_f64(),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let count: u64 = std::env::var("PASSPORT_BENCH_CERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    run(CaKeyType::Ed25519, "ed25519 CA", count)?;
    run(
        CaKeyType::Rsa,
        "RSA 4096 CA (rsa-sha2-512)",
        (count / 10).max(1),
    )?;
    Ok(())
}
