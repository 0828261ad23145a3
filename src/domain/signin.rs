//! Signing in from a terminal through chat: the one-time code a person types,
//! the API token the terminal receives, and the rules of one sign-in attempt.
//!
//! Plain values. Randomness comes from the caller (as bytes) and hashing is a
//! pure function, so nothing here does IO. The server keeps only hashes of
//! codes, poll secrets and tokens (`*Hash`), never the values themselves.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::request::RefusalKind;
use super::time::{Span, Timestamp};
use super::values::{quote, InputError, Person, UserId};

/// How long a code may be typed and confirmed.
pub const CODE_TTL: Span = Span::from_minutes(5);
/// How long after the code's expiry a confirmed sign-in may still be collected
/// by the terminal (it polls every few seconds; this covers a slow network).
pub const COLLECT_GRACE: Span = Span::from_minutes(2);

/// Letters and digits nobody confuses when reading them aloud or off a
/// screen: no `0`/`O`, `1`/`I`/`L`.
pub const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 8;

/// The SHA-256 of a secret value, in hex: what the store keeps instead of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretHash(String);

impl SecretHash {
    fn of(domain: &str, value: &str) -> Self {
        let mut h = Sha256::new();
        h.update(domain.as_bytes());
        h.update([0]);
        h.update(value.as_bytes());
        Self(hex::encode(h.finalize()))
    }

    /// A hash read back from the store.
    pub fn from_stored(hex: String) -> Self {
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A one-time sign-in code as people see and type it: `ABCD-EFGH`.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginCode(String);

impl LoginCode {
    /// A code from random bytes: each byte below the largest multiple of the
    /// alphabet's size picks a character, so every character is equally likely.
    /// `next` is asked for bytes until the code is complete.
    pub fn generate(mut next: impl FnMut() -> u8) -> Self {
        let n = CODE_ALPHABET.len();
        let limit = 256 - 256 % n;
        let mut out = String::with_capacity(CODE_LEN);
        while out.len() < CODE_LEN {
            let b = usize::from(next());
            if b < limit {
                out.push(char::from(CODE_ALPHABET[b % n]));
            }
        }
        Self(out)
    }

    /// Reads a code as typed: case, dashes and spaces do not matter.
    pub fn parse(text: &str) -> Result<Self, InputError> {
        let clean: String = text
            .chars()
            .filter(|c| *c != '-' && !c.is_whitespace())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if clean.len() == CODE_LEN && clean.bytes().all(|b| CODE_ALPHABET.contains(&b)) {
            Ok(Self(clean))
        } else {
            Err(InputError::new(format!(
                "{} is not a sign-in code: type the code `passport login` shows, e.g. `login ABCD-EFGH`",
                quote(text)
            )))
        }
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of("passport login code", &self.0)
    }
}

impl fmt::Display for LoginCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = self.0.split_at(CODE_LEN / 2);
        write!(f, "{a}-{b}")
    }
}

impl fmt::Debug for LoginCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoginCode(…)")
    }
}

/// A random secret of 32 bytes in base64url behind a prefix: API tokens
/// (`pp_…`) and poll secrets (`ps_…`).
#[derive(Clone, PartialEq, Eq)]
struct Secret32(String);

impl Secret32 {
    fn from_bytes(prefix: &str, bytes: [u8; 32]) -> Self {
        Self(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    fn parse(prefix: &str, text: &str) -> Option<Self> {
        let body = text.trim().strip_prefix(prefix)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).ok()?;
        (bytes.len() == 32).then(|| Self(format!("{prefix}{body}")))
    }
}

/// An API token: `pp_` and 32 random bytes in base64url. It exists in the
/// clear only in the answer that hands it to the terminal; the server keeps
/// its [`SecretHash`].
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(Secret32);

impl ApiToken {
    const PREFIX: &'static str = "pp_";

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Secret32::from_bytes(Self::PREFIX, bytes))
    }

    /// Reads a bearer token; `None` when it cannot be one of Passport's.
    pub fn parse(text: &str) -> Option<Self> {
        Secret32::parse(Self::PREFIX, text).map(Self)
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of("passport api token", &self.0 .0)
    }

    /// The token itself, for the one answer that hands it out.
    pub fn expose(&self) -> &str {
        &self.0 .0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(…)")
    }
}

/// The secret a terminal polls with: `ps_` and 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct PollSecret(Secret32);

impl PollSecret {
    const PREFIX: &'static str = "ps_";

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Secret32::from_bytes(Self::PREFIX, bytes))
    }

    pub fn parse(text: &str) -> Option<Self> {
        Secret32::parse(Self::PREFIX, text).map(Self)
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of("passport poll secret", &self.0 .0)
    }

    pub fn expose(&self) -> &str {
        &self.0 .0
    }
}

impl fmt::Debug for PollSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PollSecret(…)")
    }
}

/// Names one sign-in attempt (`lg_` and 16 random bytes in base64url). Not a
/// secret: it appears in logs and the Logbook.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LoginId(String);

impl LoginId {
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(format!("lg_{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    pub fn parse(text: &str) -> Option<Self> {
        let body = text.trim().strip_prefix("lg_")?;
        let bytes = URL_SAFE_NO_PAD.decode(body).ok()?;
        (bytes.len() == 16).then(|| Self(format!("lg_{body}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LoginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Short text from the terminal (its host name, its client string), kept to
/// one printable line of at most 100 characters.
pub fn terminal_text(text: &str, field: &str) -> Result<String, InputError> {
    let t = text.trim();
    if t.is_empty() || t.chars().count() > 100 || t.chars().any(char::is_control) {
        return Err(InputError::new(format!(
            "{field} must be one line of 1 to 100 characters"
        )));
    }
    Ok(t.to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginState {
    /// Started; nobody has typed the code yet, or they have but not confirmed.
    Pending,
    /// Confirmed in chat; the terminal has not collected its token yet.
    Confirmed,
    /// The terminal has its token.
    Collected,
    /// Cancelled by the person who typed the code.
    Cancelled,
}

impl LoginState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Collected => "collected",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Confirmed,
            Self::Collected,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A chat identity: a person on one chat surface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatIdentity {
    pub person: Person,
    pub surface: String,
}

/// One sign-in attempt, from `passport login` to the token's collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginAttempt {
    pub id: LoginId,
    /// The terminal's host name and client string, as it told them.
    pub host: String,
    pub client: String,
    /// The address the terminal connected from.
    pub address: String,
    pub started_at: Timestamp,
    pub expires_at: Timestamp,
    pub state: LoginState,
    /// The person who typed the code: only they may confirm it.
    pub claimed_by: Option<ChatIdentity>,
}

/// What the terminal learns when it polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    Pending,
    /// Confirmed by this person: hand out a token now.
    Collect(ChatIdentity),
    /// Expired, cancelled or collected already (the text says which).
    Gone(String),
}

impl LoginAttempt {
    /// `who` typed the code at `now`: the first person to do so claims the
    /// attempt; anyone else is refused.
    pub fn claim(&mut self, who: &ChatIdentity, now: Timestamp) -> Result<(), RefusalKind> {
        self.check_open(now)?;
        match &self.claimed_by {
            None => {
                self.claimed_by = Some(who.clone());
                Ok(())
            }
            Some(c) if c.person.id == who.person.id && c.surface == who.surface => Ok(()),
            Some(_) => Err(RefusalKind::NotAllowed(
                "this code was typed by someone else already: ask whoever started the sign-in to run `passport login` again".into(),
            )),
        }
    }

    /// `who` clicked Confirm: only the person who typed the code may.
    pub fn confirm(&mut self, who: &ChatIdentity, now: Timestamp) -> Result<(), RefusalKind> {
        self.check_open(now)?;
        self.check_claimer(who)?;
        self.state = LoginState::Confirmed;
        Ok(())
    }

    /// `who` clicked Cancel: only the person who typed the code may.
    pub fn cancel(&mut self, who: &ChatIdentity, now: Timestamp) -> Result<(), RefusalKind> {
        self.check_open(now)?;
        self.check_claimer(who)?;
        self.state = LoginState::Cancelled;
        Ok(())
    }

    /// The terminal polls at `now`.
    pub fn poll(&self, now: Timestamp) -> PollOutcome {
        match (self.state, &self.claimed_by) {
            (LoginState::Pending, _) if now < self.expires_at => PollOutcome::Pending,
            (LoginState::Pending, _) => PollOutcome::Gone(
                "the sign-in code expired before it was confirmed: run `passport login` again"
                    .into(),
            ),
            (LoginState::Confirmed, Some(who)) if now < self.expires_at.plus(COLLECT_GRACE) => {
                PollOutcome::Collect(who.clone())
            }
            (LoginState::Confirmed, _) => PollOutcome::Gone(
                "the sign-in was confirmed but not collected in time: run `passport login` again"
                    .into(),
            ),
            (LoginState::Collected, _) => PollOutcome::Gone(
                "the token of this sign-in was handed out already: run `passport login` again"
                    .into(),
            ),
            (LoginState::Cancelled, _) => PollOutcome::Gone(
                "the sign-in was cancelled in chat: run `passport login` again if you meant it"
                    .into(),
            ),
        }
    }

    fn check_open(&self, now: Timestamp) -> Result<(), RefusalKind> {
        match self.state {
            LoginState::Pending if now < self.expires_at => Ok(()),
            LoginState::Pending => Err(RefusalKind::WrongState(
                "this sign-in code has expired: run `passport login` again for a new one".into(),
            )),
            LoginState::Confirmed | LoginState::Collected => Err(RefusalKind::AlreadyDone(
                "this sign-in code was used already: each code works once; run `passport login` again for a new one".into(),
            )),
            LoginState::Cancelled => Err(RefusalKind::WrongState(
                "this sign-in was cancelled: run `passport login` again for a new code".into(),
            )),
        }
    }

    fn check_claimer(&self, who: &ChatIdentity) -> Result<(), RefusalKind> {
        match &self.claimed_by {
            Some(c) if c.person.id == who.person.id && c.surface == who.surface => Ok(()),
            _ => Err(RefusalKind::NotAllowed(
                "only the person who typed this sign-in code can confirm or cancel it".into(),
            )),
        }
    }
}

/// Who a token belongs to, and whether it still works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The row id: names the token in logs and the Logbook (`token 7`).
    pub id: i64,
    pub owner: ChatIdentity,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    /// A refusal of this token is in the Logbook already (recorded once).
    pub refusal_recorded: bool,
}

/// Why a presented token does not work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    Expired,
    Revoked,
}

impl TokenRecord {
    pub fn check(&self, now: Timestamp) -> Result<(), TokenProblem> {
        if self.revoked_at.is_some() {
            Err(TokenProblem::Revoked)
        } else if now >= self.expires_at {
            Err(TokenProblem::Expired)
        } else {
            Ok(())
        }
    }
}

/// Whose tokens a logout ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogoutScope {
    /// The one token the call was made with.
    Token(i64),
    /// Every token of this person.
    User(UserId),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(id: &str) -> ChatIdentity {
        ChatIdentity {
            person: Person {
                id: UserId::parse(id).unwrap_or_else(|e| panic!("{e}")),
                handle: id.to_lowercase(),
            },
            surface: "slack".into(),
        }
    }

    fn attempt() -> LoginAttempt {
        LoginAttempt {
            id: LoginId::from_bytes([7; 16]),
            host: "laptop".into(),
            client: "passport/1".into(),
            address: "127.0.0.1".into(),
            started_at: Timestamp::from_millis(0),
            expires_at: Timestamp::from_millis(0).plus(CODE_TTL),
            state: LoginState::Pending,
            claimed_by: None,
        }
    }

    #[test]
    fn codes_read_back_however_they_are_typed() {
        let mut bytes = (0u8..=255).cycle();
        let code = LoginCode::generate(|| bytes.next().unwrap_or(0));
        let shown = code.to_string();
        assert_eq!(shown.len(), 9);
        assert_eq!(LoginCode::parse(&shown).ok(), Some(code.clone()));
        assert_eq!(
            LoginCode::parse(&shown.to_lowercase().replace('-', " ")).ok(),
            Some(code)
        );
        assert!(LoginCode::parse("ABCD-EFG0")
            .unwrap_err()
            .0
            .contains("not a sign-in code"));
    }

    #[test]
    fn tokens_parse_only_in_their_own_form() {
        let t = ApiToken::from_bytes([1; 32]);
        assert!(t.expose().starts_with("pp_"));
        assert_eq!(ApiToken::parse(t.expose()), Some(t.clone()));
        assert_eq!(ApiToken::parse("pp_short"), None);
        assert_eq!(ApiToken::parse(&t.expose().replace("pp_", "ps_")), None);
        assert_ne!(t.hash(), ApiToken::from_bytes([2; 32]).hash());
        assert_eq!(format!("{t:?}"), "ApiToken(…)");
    }

    #[test]
    fn only_the_person_who_typed_the_code_confirms_it_once() {
        let mut a = attempt();
        let now = Timestamp::from_millis(1000);
        a.claim(&person("U1"), now)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(a.claim(&person("U2"), now).is_err());
        assert!(a.confirm(&person("U2"), now).is_err());
        a.confirm(&person("U1"), now)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            a.confirm(&person("U1"), now),
            Err(RefusalKind::AlreadyDone(_))
        ));
        assert_eq!(a.poll(now), PollOutcome::Collect(person("U1")));
    }

    #[test]
    fn an_expired_code_cannot_be_claimed_and_its_poll_is_gone() {
        let mut a = attempt();
        let late = a.expires_at;
        assert!(a.claim(&person("U1"), late).is_err());
        assert!(matches!(a.poll(late), PollOutcome::Gone(_)));
    }
}
