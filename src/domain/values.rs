//! Typed values parsed from untrusted text at the edge.
//!
//! Each type has a private field and a `parse` constructor whose error says
//! what was wrong and what to type instead; holding a value is the proof that
//! it was checked.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::time::Span;

/// Why a piece of user input was refused. The message is shown to people as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

impl InputError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Shortens untrusted text before quoting it back, so answers stay one short line.
pub fn quote(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(40)
        .collect();
    if text.chars().count() > 40 {
        format!("\"{clean}…\"")
    } else {
        format!("\"{clean}\"")
    }
}

// ---------------------------------------------------------------------------
// Instance ids

/// An EC2 instance id: `i-` followed by 8 or 17 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(String);

impl InstanceId {
    pub fn parse(text: &str) -> Result<Self, InputError> {
        let digits = text.strip_prefix("i-").unwrap_or("");
        let hex_ok = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if text.starts_with("i-") && (digits.len() == 8 || digits.len() == 17) && hex_ok(digits) {
            return Ok(Self(text.to_owned()));
        }
        let hint = if text.starts_with("i-") && digits.bytes().any(|b| b.is_ascii_uppercase()) {
            " (instance ids are lowercase)"
        } else {
            ""
        };
        Err(InputError::new(format!(
            "invalid instance id {}{hint}: use the form i-0123456789abcdef0 (i- and 8 or 17 hex digits)",
            quote(text)
        )))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for InstanceId {
    type Error = InputError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<InstanceId> for String {
    fn from(value: InstanceId) -> Self {
        value.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One or more distinct instance ids, in the order first given, within the configured maximum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceIds(Vec<InstanceId>);

impl InstanceIds {
    /// Parses tokens that may each hold several ids separated by commas.
    pub fn parse<'a>(
        tokens: impl IntoIterator<Item = &'a str>,
        max: usize,
    ) -> Result<Self, InputError> {
        let mut ids: Vec<InstanceId> = Vec::new();
        for token in tokens {
            for part in token.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let id = InstanceId::parse(part)?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        if ids.is_empty() {
            return Err(InputError::new(
                "no instance given: name one or more instance ids, e.g. i-0123456789abcdef0",
            ));
        }
        if ids.len() > max {
            return Err(InputError::new(format!(
                "{} instances in one request is more than the limit of {max}: split it into several requests",
                ids.len()
            )));
        }
        Ok(Self(ids))
    }

    pub fn as_slice(&self) -> &[InstanceId] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// ---------------------------------------------------------------------------
// Durations

/// Bounds on how long access may be granted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurationLimits {
    pub default: Span,
    pub min: Span,
    pub max: Span,
}

impl DurationLimits {
    /// The hard cap on total access time, extensions included. Configuration can
    /// lower it but never raise it.
    pub const HARD_MAX: Span = Span::from_hours(12);
}

impl Default for DurationLimits {
    fn default() -> Self {
        Self {
            default: Span::from_hours(1),
            min: Span::from_minutes(5),
            max: Self::HARD_MAX,
        }
    }
}

/// A requested length of access, within the configured limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GrantDuration(Span);

impl GrantDuration {
    /// Parses `30m`, `2h`, `1h30m`, `90m` (a leading `+` is allowed) within
    /// `limits`: the one duration grammar ([`Span::parse`]), in whole minutes.
    pub fn parse(text: &str, limits: &DurationLimits) -> Result<Self, InputError> {
        let unknown = || {
            InputError::new(format!(
                "unknown duration {}: use forms like 30m, 2h, 1h30m (max {})",
                quote(text),
                limits.max
            ))
        };
        let span = Span::parse(text).ok_or_else(unknown)?;
        if span.as_millis() % 60_000 != 0 {
            return Err(InputError::new(format!(
                "duration {} is not in whole minutes: use forms like 30m, 2h, 1h30m (max {})",
                quote(text),
                limits.max
            )));
        }
        Self::within(span, limits)
    }

    /// Checks an already known span against `limits`.
    pub fn within(span: Span, limits: &DurationLimits) -> Result<Self, InputError> {
        if span < limits.min {
            return Err(InputError::new(format!(
                "duration {span} is too short: the minimum is {}",
                limits.min
            )));
        }
        if span > limits.max {
            return Err(InputError::new(format!(
                "duration {span} is too long: the maximum is {}",
                limits.max
            )));
        }
        Ok(Self(span))
    }

    pub fn span(self) -> Span {
        self.0
    }
}

impl fmt::Display for GrantDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// True for tokens a person most likely meant as a duration (`2hrs`, `90 min`),
/// so that a typo gets a duration error rather than a ticket error.
pub fn looks_like_duration(text: &str) -> bool {
    let t = text.strip_prefix('+').unwrap_or(text);
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_digit())
        && t.chars().any(|c| c.is_ascii_alphabetic())
        && t.chars().all(|c| c.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------
// Tickets

/// How tickets are recognised and linked; built from configuration.
#[derive(Debug, Clone)]
pub struct TicketRules {
    pattern: Regex,
    url_template: Option<String>,
}

impl TicketRules {
    /// Accepts `ticket#123`, `#123`, `INC-123`, `CHG0012345` and similar.
    pub const DEFAULT_PATTERN: &'static str = r"^(?i:ticket#[0-9]{1,12}|#[0-9]{1,12}|[a-z][a-z0-9]{1,9}-[0-9]{1,12}|[a-z]{2,5}[0-9]{4,12})$";

    pub fn new(pattern: &str, url_template: Option<String>) -> Result<Self, regex::Error> {
        Ok(Self {
            pattern: Regex::new(pattern)?,
            url_template,
        })
    }

    /// The link for a ticket, when a `ticket_url` template is configured. `{ticket}`
    /// is replaced by the ticket without a leading `ticket#` or `#`.
    pub fn url_for(&self, ticket: &Ticket) -> Option<String> {
        let template = self.url_template.as_ref()?;
        let key = ticket.key();
        let encoded: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c.to_string()
                } else {
                    format!("%{:02X}", c as u32)
                }
            })
            .collect();
        Some(template.replace("{ticket}", &encoded))
    }
}

impl Default for TicketRules {
    fn default() -> Self {
        Self {
            // The default pattern is a constant known to compile.
            pattern: Regex::new(Self::DEFAULT_PATTERN).unwrap_or_else(|_| unreachable_regex()),
            url_template: None,
        }
    }
}

fn unreachable_regex() -> Regex {
    // Only reached if the constant above stops compiling, which tests prevent.
    Regex::new("^$").unwrap_or_else(|_| unreachable_regex())
}

/// A ticket reference that matches the configured pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ticket(String);

impl Ticket {
    pub fn parse(text: &str, rules: &TicketRules) -> Result<Self, InputError> {
        if text.len() <= 64 && rules.pattern.is_match(text) {
            Ok(Self(text.to_owned()))
        } else {
            Err(InputError::new(format!(
                "unknown ticket {}: give a ticket reference such as ticket#123, #123, INC-123 or CHG0012345",
                quote(text)
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ticket without a leading `ticket#` or `#`.
    pub fn key(&self) -> &str {
        let lower = self.0.to_ascii_lowercase();
        if lower.starts_with("ticket#") {
            &self.0[7..]
        } else {
            self.0.strip_prefix('#').unwrap_or(&self.0)
        }
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------
// Request ids

/// The human-readable id of an access request, `AR-<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(u64);

impl RequestId {
    pub fn new(n: u64) -> Option<Self> {
        (n > 0).then_some(Self(n))
    }

    pub fn parse(text: &str) -> Result<Self, InputError> {
        let digits = text
            .strip_prefix("AR-")
            .or_else(|| text.strip_prefix("ar-"))
            .or_else(|| text.strip_prefix("Ar-"))
            .or_else(|| text.strip_prefix("aR-"));
        digits
            .filter(|d| !d.is_empty() && d.len() <= 18 && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .and_then(Self::new)
            .ok_or_else(|| {
                InputError::new(format!(
                    "invalid request id {}: use the form AR-12",
                    quote(text)
                ))
            })
    }

    pub fn number(self) -> u64 {
        self.0
    }
}

impl TryFrom<String> for RequestId {
    type Error = InputError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<RequestId> for String {
    fn from(value: RequestId) -> Self {
        value.to_string()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AR-{}", self.0)
    }
}

// ---------------------------------------------------------------------------
// Reasons

/// Free text explaining a request or a decision: trimmed, one line, at most 500 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Reason(String);

impl Reason {
    pub const MAX_CHARS: usize = 500;

    /// Returns `Ok(None)` for empty text.
    pub fn parse(text: &str) -> Result<Option<Self>, InputError> {
        let one_line: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let trimmed = one_line.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        let count = trimmed.chars().count();
        if count > Self::MAX_CHARS {
            return Err(InputError::new(format!(
                "the reason is {count} characters long: keep it to {} and link the ticket for details",
                Self::MAX_CHARS
            )));
        }
        Ok(Some(Self(trimmed.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `": the reason"`, to end a sentence such as "denied by Ann", or
    /// nothing when no reason was given.
    pub fn suffix(reason: Option<&Reason>) -> String {
        reason.map(|r| format!(": {r}")).unwrap_or_default()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------
// People

/// A chat identity: the platform's stable user id (Slack `U…`, a Discord
/// snowflake, or a console name). Opaque to the domain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(text: &str) -> Result<Self, InputError> {
        let t = text.trim();
        if t.is_empty() || t.len() > 128 || t.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(InputError::new(format!(
                "invalid user id {}: use a single word such as U024BE7LH or dev1",
                quote(text)
            )));
        }
        Ok(Self(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The person acting, as known to the chat surface they acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub id: UserId,
    /// Display handle, used for messages and to derive short-lived usernames.
    pub handle: String,
}

/// A short-lived Unix username, unique per request: `pp-<handle>-<n>`.
///
/// Always matches `[a-z_][a-z0-9_-]*`, is at most 32 characters, and ends in the
/// request number, so two requests never share a username (overlapping requests
/// cannot cut each other off) and no system account can be named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    pub const PREFIX: &'static str = "pp-";
    /// 20 is the longest name Windows accepts for a local user; Linux allows 32.
    pub const MAX_LEN: usize = 20;

    pub fn for_request(handle: &str, request: RequestId) -> Self {
        let suffix = format!("-{}", request.number());
        // At least one character of the handle, even for absurdly long request numbers.
        let room = Self::MAX_LEN
            .saturating_sub(Self::PREFIX.len() + suffix.len())
            .max(1);
        let mut stem: String = handle
            .chars()
            .flat_map(char::to_lowercase)
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
            .take(room)
            .collect();
        // Keep the stem from ending in '-' so the request number stays unambiguous to readers.
        while stem.ends_with('-') {
            stem.pop();
        }
        if stem.is_empty() {
            stem = "user".chars().take(room).collect();
        }
        Self(format!("{}{stem}{suffix}", Self::PREFIX))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------
// SSH public keys

/// An OpenSSH public key a requester registered: Ed25519, ECDSA, or RSA of at
/// least 2048 bits. Kept as `<type> <base64>` without the comment, so it is
/// safe to pass on as a parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SshPublicKey(String);

impl SshPublicKey {
    pub fn parse(text: &str) -> Result<Self, InputError> {
        use base64::Engine as _;
        let hint = "paste one line from your id_ed25519.pub (or an ECDSA key, or RSA of 2048 bits or more), e.g. `key set ssh-ed25519 AAAAC3Nza… you@laptop`";
        let mut parts = text.split_whitespace();
        let (Some(kind), Some(body)) = (parts.next(), parts.next()) else {
            return Err(InputError::new(format!(
                "that is not an OpenSSH public key: {hint}"
            )));
        };
        const KINDS: [&str; 5] = [
            "ssh-ed25519",
            "ecdsa-sha2-nistp256",
            "ecdsa-sha2-nistp384",
            "ecdsa-sha2-nistp521",
            "ssh-rsa",
        ];
        if !KINDS.contains(&kind) {
            return Err(InputError::new(format!(
                "key type {} is not accepted: {hint}",
                quote(kind)
            )));
        }
        if body.len() > 8192 {
            return Err(InputError::new(format!("the key is too long: {hint}")));
        }
        let blob = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| InputError::new(format!("the key's base64 part is damaged: {hint}")))?;
        let mut reader = SshReader(&blob);
        let damaged = || {
            InputError::new(format!(
                "the key data is damaged or of another type: {hint}"
            ))
        };
        let inner = reader.string().ok_or_else(damaged)?;
        if inner != kind.as_bytes() {
            return Err(damaged());
        }
        match kind {
            "ssh-ed25519" => {
                if reader.string().map(<[u8]>::len) != Some(32) {
                    return Err(damaged());
                }
            }
            "ssh-rsa" => {
                let _e = reader.string().ok_or_else(damaged)?;
                let n = reader.string().ok_or_else(damaged)?;
                let n = match n.iter().position(|b| *b != 0) {
                    Some(first) => &n[first..],
                    None => return Err(damaged()),
                };
                let bits = n.len() * 8 - n[0].leading_zeros() as usize;
                if bits < 2048 {
                    return Err(InputError::new(format!(
                        "this RSA key has {bits} bits: use 2048 or more, or better an Ed25519 key (ssh-keygen -t ed25519)"
                    )));
                }
            }
            _ => {
                let curve = reader.string().ok_or_else(damaged)?;
                if !kind.ends_with(std::str::from_utf8(curve).unwrap_or("?"))
                    || reader.string().is_none()
                {
                    return Err(damaged());
                }
            }
        }
        if !reader.0.is_empty() {
            return Err(damaged());
        }
        Ok(Self(format!("{kind} {body}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The OpenSSH fingerprint, `SHA256:…`.
    pub fn fingerprint(&self) -> String {
        use base64::Engine as _;
        use sha2::{Digest, Sha256};
        let blob = self
            .0
            .split_whitespace()
            .nth(1)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_default();
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(&blob))
        )
    }

    pub fn kind(&self) -> &str {
        self.0.split(' ').next().unwrap_or_default()
    }
}

/// Reads the length-prefixed strings of an SSH wire-format key blob.
struct SshReader<'a>(&'a [u8]);

impl<'a> SshReader<'a> {
    fn string(&mut self) -> Option<&'a [u8]> {
        let len_bytes: [u8; 4] = self.0.get(..4)?.try_into().ok()?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let value = self.0.get(4..4usize.checked_add(len)?)?;
        self.0 = &self.0[4 + len..];
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_accept_both_lengths_and_refuse_the_rest() {
        assert!(InstanceId::parse("i-0123456789abcdef0").is_ok());
        assert!(InstanceId::parse("i-01234567").is_ok());
        for bad in [
            "i-0123",
            "i-0123456789ABCDEF0",
            "x-01234567",
            "i-0123456g",
            "",
            "i-",
        ] {
            assert!(InstanceId::parse(bad).is_err(), "{bad}");
        }
        let err = InstanceId::parse("i-0123456789ABCDEF0").unwrap_err();
        assert!(err.0.contains("lowercase"), "{err}");
    }

    #[test]
    fn instance_lists_split_on_commas_and_collapse_duplicates() {
        let ids = InstanceIds::parse(["i-01234567,i-89abcdef", "i-01234567"], 200).unwrap();
        assert_eq!(ids.len(), 2);
        let err = InstanceIds::parse(["i-01234567,i-89abcdef"], 1).unwrap_err();
        assert!(err.0.contains("limit of 1"));
        assert!(InstanceIds::parse([","], 5).is_err());
    }

    #[test]
    fn durations_parse_in_every_documented_form() {
        let l = DurationLimits::default();
        let m = |s| GrantDuration::parse(s, &l).map(|d| d.span().whole_minutes());
        assert_eq!(m("30m"), Ok(30));
        assert_eq!(m("2h"), Ok(120));
        assert_eq!(m("1h30m"), Ok(90));
        assert_eq!(m("90m"), Ok(90));
        assert_eq!(m("+45m"), Ok(45));
        assert_eq!(m("2H"), Ok(120));
        assert!(m("4m").unwrap_err().0.contains("minimum is 5m"));
        assert!(m("13h").unwrap_err().0.contains("maximum is 12h"));
        assert_eq!(
            m("2hrs").unwrap_err().0,
            "unknown duration \"2hrs\": use forms like 30m, 2h, 1h30m (max 12h)"
        );
        for bad in [
            "", "h", "m", "1m30h", "1.5h", "-1h", "999999h", "0", "1h30s",
        ] {
            assert!(m(bad).is_err(), "{bad}");
        }
        assert!(m("90s").unwrap_err().0.contains("whole minutes"));
        // The one grammar's other units, within the limits.
        assert_eq!(m("300s"), Ok(5));
        assert!(m("1d").unwrap_err().0.contains("maximum is 12h"));
    }

    #[test]
    fn tickets_follow_the_default_pattern_and_link() {
        let rules = TicketRules::new(
            TicketRules::DEFAULT_PATTERN,
            Some("https://tickets.example.com/{ticket}".into()),
        )
        .unwrap();
        for good in ["ticket#123", "#123", "INC-123", "CHG0012345", "PROJ-42"] {
            assert!(Ticket::parse(good, &rules).is_ok(), "{good}");
        }
        for bad in ["123", "ticket", "a;b", "#", "INC-", "$(id)"] {
            assert!(Ticket::parse(bad, &rules).is_err(), "{bad}");
        }
        let t = Ticket::parse("ticket#123", &rules).unwrap();
        assert_eq!(
            rules.url_for(&t).unwrap(),
            "https://tickets.example.com/123"
        );
        assert!(TicketRules::default().url_for(&t).is_none());
    }

    #[test]
    fn request_ids_round_trip() {
        let id = RequestId::parse("AR-42").unwrap();
        assert_eq!(id.to_string(), "AR-42");
        assert_eq!(RequestId::parse("ar-42").unwrap(), id);
        for bad in ["AR-0", "AR-", "42", "AR-x", "AR--1"] {
            assert!(RequestId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reasons_are_one_trimmed_line_of_bounded_length() {
        assert_eq!(
            Reason::parse("  disk full\n now ")
                .unwrap()
                .unwrap()
                .as_str(),
            "disk full  now"
        );
        assert_eq!(Reason::parse("   ").unwrap(), None);
        assert!(Reason::parse(&"x".repeat(501)).is_err());
        assert!(Reason::parse(&"é".repeat(500)).is_ok());
    }

    fn ssh_blob(parts: &[&[u8]]) -> String {
        use base64::Engine as _;
        let mut blob = Vec::new();
        for p in parts {
            blob.extend_from_slice(&(p.len() as u32).to_be_bytes());
            blob.extend_from_slice(p);
        }
        base64::engine::general_purpose::STANDARD.encode(blob)
    }

    #[test]
    fn ssh_keys_are_checked_and_stripped_of_comments() {
        let ed = format!("ssh-ed25519 {}", ssh_blob(&[b"ssh-ed25519", &[7u8; 32]]));
        let key = SshPublicKey::parse(&format!("{ed} dev1@laptop; rm -rf /")).unwrap();
        assert_eq!(key.as_str(), ed);
        assert_eq!(key.kind(), "ssh-ed25519");
        assert!(key.fingerprint().starts_with("SHA256:"));
        let mut n = vec![0u8];
        n.extend(std::iter::repeat_n(0xffu8, 128)); // 1024 bits
        let weak = format!("ssh-rsa {}", ssh_blob(&[b"ssh-rsa", &[1, 0, 1], &n]));
        assert!(SshPublicKey::parse(&weak)
            .unwrap_err()
            .0
            .contains("1024 bits"));
        let mut n = vec![0u8];
        n.extend(std::iter::repeat_n(0xffu8, 256)); // 2048 bits
        let rsa = format!("ssh-rsa {}", ssh_blob(&[b"ssh-rsa", &[1, 0, 1], &n]));
        assert!(SshPublicKey::parse(&rsa).is_ok());
        let ec = format!(
            "ecdsa-sha2-nistp256 {}",
            ssh_blob(&[b"ecdsa-sha2-nistp256", b"nistp256", &[4u8; 65]])
        );
        assert!(SshPublicKey::parse(&ec).is_ok());
        for bad in [
            "ssh-dss AAAA",
            "ssh-ed25519",
            "ssh-ed25519 !!!",
            &format!("ssh-rsa {}", ssh_blob(&[b"ssh-ed25519", &[7u8; 32]])),
            &format!("ssh-ed25519 {}", ssh_blob(&[b"ssh-ed25519", &[7u8; 31]])),
            "$(reboot)",
        ] {
            assert!(SshPublicKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usernames_are_safe_unique_and_short() {
        let id = RequestId::new(42).unwrap();
        assert_eq!(Username::for_request("dev1", id).as_str(), "pp-dev1-42");
        assert_eq!(
            Username::for_request("Zoë O'Brien; rm -rf /", id).as_str(),
            "pp-zoobrienrm-rf-42"
        );
        assert_eq!(Username::for_request("日本", id).as_str(), "pp-user-42");
        let long = Username::for_request(&"a".repeat(100), RequestId::new(u64::MAX / 2).unwrap());
        assert!(long.as_str().len() <= 32, "{long}");
        let re = Regex::new("^[a-z_][a-z0-9_-]*$").unwrap();
        assert!(re.is_match(long.as_str()));
    }
}
