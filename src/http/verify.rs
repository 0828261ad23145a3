//! Checks that a request comes from Slack or Discord.
//!
//! - Slack: `X-Slack-Signature` must be `v0=` + hex HMAC-SHA256 of
//!   `v0:{X-Slack-Request-Timestamp}:{raw body}` with the signing secret. The
//!   comparison takes the same time whatever the signature.
//! - Discord: `X-Signature-Ed25519` must be the hex Ed25519 signature of
//!   `{X-Signature-Timestamp}{raw body}` by the application's public key.
//!
//! Either way the timestamp must be within 5 minutes of now.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far the request's timestamp may be from now, in seconds.
pub const MAX_SKEW_SECS: i64 = 5 * 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    Missing(&'static str),
    #[error("the timestamp header is not a number")]
    BadTimestamp,
    #[error("timestamp is {0} s away from now (at most 300 s allowed)")]
    Stale(i64),
    #[error("signature does not match")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// The signature Slack sends for `body` at `timestamp`: `v0=` + 64 hex digits.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

fn check_timestamp(timestamp: &str, now_secs: i64) -> Result<(), VerifyError> {
    let at: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now_secs.saturating_sub(at);
    if skew.abs() > MAX_SKEW_SECS {
        return Err(VerifyError::Stale(skew));
    }
    Ok(())
}

/// Verifies a Discord interaction at `now_secs` (Unix time).
pub fn verify_discord(
    public_key: &ed25519_dalek::VerifyingKey,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), VerifyError> {
    let timestamp = timestamp.ok_or(VerifyError::Missing("X-Signature-Timestamp"))?;
    let signature = signature.ok_or(VerifyError::Missing("X-Signature-Ed25519"))?;
    check_timestamp(timestamp, now_secs)?;
    let bytes: [u8; 64] = hex::decode(signature.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(VerifyError::Mismatch)?;
    let signature = ed25519_dalek::Signature::from_bytes(&bytes);
    let mut message = Vec::with_capacity(timestamp.len() + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(body);
    public_key
        .verify_strict(&message, &signature)
        .map_err(|_| VerifyError::Mismatch)
}

/// Verifies a Slack request at `now_secs` (Unix time).
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), VerifyError> {
    let timestamp = timestamp.ok_or(VerifyError::Missing("X-Slack-Request-Timestamp"))?;
    let signature = signature.ok_or(VerifyError::Missing("X-Slack-Signature"))?;
    check_timestamp(timestamp, now_secs)?;
    let given = signature
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(VerifyError::Mismatch)?;
    mac(secret, timestamp, body)
        .verify_slice(&given)
        .map_err(|_| VerifyError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";

    #[test]
    fn slacks_documented_example_verifies() {
        // The example from Slack's "Verifying requests from Slack" guide.
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(sign(SECRET, "1531420618", body), sig);
        assert_eq!(
            verify(SECRET, Some("1531420618"), Some(sig), body, 1531420618 + 10),
            Ok(())
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let body = b"text=hello";
        let ts = "1700000000";
        let good = sign(SECRET, ts, body);
        let now = 1_700_000_000;
        assert_eq!(verify(SECRET, Some(ts), Some(&good), body, now), Ok(()));
        assert_eq!(
            verify(SECRET, Some(ts), Some(&good), b"text=hellO", now),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"another secret", Some(ts), Some(&good), body, now),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, Some(ts), Some(&good), body, now + 301),
            Err(VerifyError::Stale(301))
        );
        assert_eq!(
            verify(SECRET, Some(ts), Some("v0=zz"), body, now),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, Some(ts), Some(&good[3..]), body, now),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, None, Some(&good), body, now),
            Err(VerifyError::Missing("X-Slack-Request-Timestamp"))
        );
        assert_eq!(
            verify(SECRET, Some("soon"), Some(&good), body, now),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn discord_signatures_verify_and_nothing_else_does() {
        use ed25519_dalek::{Signer, SigningKey};
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key();
        let (ts, body) = ("1700000000", br#"{"type":1}"#.as_slice());
        let sign = |ts: &str, body: &[u8]| {
            let mut m = ts.as_bytes().to_vec();
            m.extend_from_slice(body);
            hex::encode(key.sign(&m).to_bytes())
        };
        let good = sign(ts, body);
        let now = 1_700_000_000;
        let check = |ts: Option<&str>, sig: Option<&str>, body: &[u8], now: i64| {
            verify_discord(&public, ts, sig, body, now)
        };
        assert_eq!(check(Some(ts), Some(&good), body, now + 299), Ok(()));
        assert_eq!(
            check(Some(ts), Some(&good), br#"{"type":2}"#, now),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check(Some("1700000001"), Some(&good), body, now),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check(Some(ts), Some(&good), body, now + 301),
            Err(VerifyError::Stale(301))
        );
        assert_eq!(
            check(Some(ts), Some("00"), body, now),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check(Some(ts), None, body, now),
            Err(VerifyError::Missing("X-Signature-Ed25519"))
        );
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert_eq!(
            verify_discord(&other, Some(ts), Some(&good), body, now),
            Err(VerifyError::Mismatch)
        );
    }
}
