//! The `[discord]` section of the configuration and its validated form.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::domain::time::{parse_setting_within, Span};

/// What `[discord]` in `passport.toml` says. Its presence (in the file or
/// through a `PASSPORT_DISCORD__…` variable) turns Discord on and the console off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscordConfig {
    /// `gateway`: Passport connects to Discord's gateway (no public URL needed).
    /// `http`: Discord calls Passport's `/discord/interactions` (Interactions Endpoint URL).
    pub mode: String,
    /// The bot token (Developer Portal → Bot → Reset Token).
    pub bot_token: Option<Secret>,
    /// The application id (Developer Portal → General Information).
    #[serde(deserialize_with = "id_text")]
    pub application_id: String,
    /// The application's public key, 64 hex digits: checks the signature of
    /// every interaction Discord sends to `/discord/interactions`.
    pub public_key: String,
    /// The server (guild) Passport works in; its commands are registered there.
    #[serde(deserialize_with = "id_text")]
    pub guild_id: String,
    /// Where request cards go (a channel id), unless a policy rule names its own channel.
    #[serde(deserialize_with = "id_text")]
    pub approvals_channel: String,
    /// Where every Logbook event is posted as one line (a channel id).
    #[serde(deserialize_with = "id_text")]
    pub audit_channel: String,
    /// The REST API base URL.
    pub api_url: String,
    /// Passport group name → Discord role id: members with the role count as
    /// members of the Passport group.
    #[serde(deserialize_with = "id_texts")]
    pub roles: BTreeMap<String, String>,
    /// Where `/passport` is registered at start: `guild` (at once, in
    /// `guild_id`), `global` (every server the bot is in) or `off`.
    pub commands: String,
    /// How long members' roles are remembered.
    pub cache_ttl: String,
}

impl Default for DiscordConfig {
    fn default() -> Self {
        Self {
            mode: "gateway".into(),
            bot_token: None,
            application_id: String::new(),
            public_key: String::new(),
            guild_id: String::new(),
            approvals_channel: String::new(),
            audit_channel: String::new(),
            api_url: DEFAULT_API_URL.into(),
            roles: BTreeMap::new(),
            commands: "guild".into(),
            cache_ttl: "60s".into(),
        }
    }
}

pub const DEFAULT_API_URL: &str = "https://discord.com/api";

/// A Discord id as written: `"123…"` in TOML, or a bare number (which is what
/// an environment variable of digits becomes).
#[derive(Deserialize)]
#[serde(untagged)]
enum IdText {
    Text(String),
    Number(u64),
}

impl IdText {
    fn into_text(self) -> String {
        match self {
            IdText::Text(t) => t,
            IdText::Number(n) => n.to_string(),
        }
    }
}

fn id_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    IdText::deserialize(d).map(IdText::into_text)
}

fn id_texts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let map = BTreeMap::<String, IdText>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.into_text())).collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscordMode {
    Gateway,
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandScope {
    Guild,
    Global,
    Off,
}

/// The validated `[discord]` section.
#[derive(Debug, Clone)]
pub struct DiscordSettings {
    pub mode: DiscordMode,
    pub bot_token: Secret,
    pub application_id: u64,
    /// The Ed25519 public key (checked to be a valid point); required in HTTP mode.
    pub public_key: Option<[u8; 32]>,
    pub guild_id: u64,
    pub approvals_channel: String,
    pub audit_channel: String,
    /// Without a trailing slash, ending in `/api`.
    pub api_url: String,
    pub roles: BTreeMap<String, String>,
    pub commands: CommandScope,
    pub cache_ttl: Duration,
}

impl DiscordSettings {
    /// True when the REST API is Discord's own. Otherwise requests go to
    /// `api_url`, which serenity allows only with its rate limiter off; the
    /// server there is then trusted to answer 429 with `Retry-After`.
    pub fn is_discord(&self) -> bool {
        self.api_url == DEFAULT_API_URL
    }
}

/// A Discord id: a snowflake, up to 20 digits.
pub fn snowflake(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok().filter(|n| *n > 0)
}

pub fn parse_public_key(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.trim()).ok()?;
    let key: [u8; 32] = bytes.try_into().ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(&key).ok()?;
    Some(key)
}

impl DiscordConfig {
    /// Checks every field and names each bad one (`discord.bot_token: …`). The
    /// values of secrets are never part of a message.
    pub fn validate(&self) -> Result<DiscordSettings, Vec<String>> {
        let mut errors = Vec::new();
        let mode = match self.mode.as_str() {
            "gateway" => DiscordMode::Gateway,
            "http" => DiscordMode::Http,
            other => {
                errors.push(format!(
                    "discord.mode: {other:?} is not a mode: use \"gateway\" (Passport connects to Discord) or \"http\" (Discord calls /discord/interactions on a public URL)"
                ));
                DiscordMode::Gateway
            }
        };
        let bot_token = match &self.bot_token {
            // A line ending a secret file adds is already gone (`Secret::new`).
            Some(t) if t.flaw().is_some() => {
                errors.push(format!(
                    "discord.bot_token: {}: copy it again without it (the value is not shown)",
                    t.flaw().unwrap_or_default()
                ));
                None
            }
            Some(t) if t.expose().len() < 20 => {
                errors.push("discord.bot_token: not a bot token: copy it from the Developer Portal (Bot → Reset Token)".into());
                None
            }
            Some(t) => Some(t.clone()),
            None => {
                errors.push("discord.bot_token: missing: set it (or PASSPORT_DISCORD__BOT_TOKEN) to the bot token from the Developer Portal (Bot → Reset Token)".into());
                None
            }
        };
        let mut id = |field: &str, value: &str, what: &str| match snowflake(value) {
            Some(n) => n,
            None => {
                errors.push(if value.trim().is_empty() {
                    format!("discord.{field}: missing: {what}")
                } else {
                    format!("discord.{field}: {value:?} is not a Discord id: {what}")
                });
                0
            }
        };
        let application_id = id(
            "application_id",
            &self.application_id,
            "copy the Application ID from the Developer Portal (General Information)",
        );
        let guild_id = id(
            "guild_id",
            &self.guild_id,
            "copy the server's id (Developer Mode on, right-click the server → Copy Server ID)",
        );
        id(
            "approvals_channel",
            &self.approvals_channel,
            "copy the channel's id (Developer Mode on, right-click the channel → Copy Channel ID)",
        );
        id(
            "audit_channel",
            &self.audit_channel,
            "copy the channel's id (Developer Mode on, right-click the channel → Copy Channel ID)",
        );
        for (name, role) in &self.roles {
            id(
                &format!("roles.{name}"),
                role,
                "copy the role's id (Server Settings → Roles → ⋯ → Copy Role ID)",
            );
        }
        let public_key = match parse_public_key(&self.public_key) {
            Some(k) => Some(k),
            None => {
                if mode == DiscordMode::Http || !self.public_key.trim().is_empty() {
                    errors.push(if self.public_key.trim().is_empty() {
                        "discord.public_key: missing: HTTP mode needs it to check that interactions come from Discord (Developer Portal → General Information → Public Key)".into()
                    } else {
                        "discord.public_key: not an Ed25519 public key: copy the 64 hex digits of Public Key from the Developer Portal (General Information)".into()
                    });
                }
                None
            }
        };
        let api_url = self.api_url.trim().trim_end_matches('/').to_owned();
        if !(api_url.starts_with("https://") || api_url.starts_with("http://"))
            || !api_url.ends_with("/api")
            || api_url.contains(char::is_whitespace)
        {
            errors.push(format!(
                "discord.api_url: {:?} is not an http(s) URL ending in /api: leave it out to use {DEFAULT_API_URL}",
                self.api_url
            ));
        }
        let commands = match self.commands.as_str() {
            "guild" => CommandScope::Guild,
            "global" => CommandScope::Global,
            "off" => CommandScope::Off,
            other => {
                errors.push(format!(
                    "discord.commands: {other:?} is not a choice: use \"guild\" (registered in guild_id at once), \"global\" (every server; can take an hour to appear) or \"off\""
                ));
                CommandScope::Off
            }
        };
        let cache_ttl = match parse_setting_within(
            "discord.cache_ttl",
            &self.cache_ttl,
            Span::ZERO,
            Span::from_hours(1),
        ) {
            Ok(span) => span.to_std(),
            Err(e) => {
                errors.push(e);
                Duration::ZERO
            }
        };
        let Some(bot_token) = bot_token.filter(|_| errors.is_empty()) else {
            return Err(errors);
        };
        Ok(DiscordSettings {
            mode,
            bot_token,
            application_id,
            public_key,
            guild_id,
            approvals_channel: self.approvals_channel.trim().to_owned(),
            audit_channel: self.audit_channel.trim().to_owned(),
            api_url,
            roles: self
                .roles
                .iter()
                .map(|(k, v)| (k.clone(), v.trim().to_owned()))
                .collect(),
            commands,
            cache_ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The public key of the secret key of all zeros.
    pub const KEY: &str = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";

    fn valid() -> DiscordConfig {
        DiscordConfig {
            bot_token: Some(Secret::from(
                "MTIzNDU2Nzg5MDEyMzQ1Njc4.Gabcde.very-secret-part",
            )),
            application_id: "1200000000000000001".into(),
            public_key: KEY.into(),
            guild_id: "1300000000000000001".into(),
            approvals_channel: "1500000000000000001".into(),
            audit_channel: "1500000000000000002".into(),
            roles: BTreeMap::from([("approvers".into(), "1600000000000000001".into())]),
            ..DiscordConfig::default()
        }
    }

    #[test]
    fn a_complete_section_validates() {
        let s = valid().validate().unwrap();
        assert_eq!(s.mode, DiscordMode::Gateway);
        assert_eq!(s.application_id, 1_200_000_000_000_000_001);
        assert!(s.is_discord());
        assert_eq!(s.commands, CommandScope::Guild);
    }

    #[test]
    fn every_bad_field_is_named_without_its_secret() {
        let c = DiscordConfig {
            mode: "webhook".into(),
            bot_token: Some(Secret::from("short secret")),
            application_id: "app".into(),
            public_key: "abcd".into(),
            guild_id: String::new(),
            approvals_channel: "#access".into(),
            api_url: "https://discord.com".into(),
            roles: BTreeMap::from([("approvers".into(), "@leads".into())]),
            commands: "everywhere".into(),
            cache_ttl: "forever".into(),
            ..valid()
        };
        let errs = c.validate().unwrap_err().join("\n");
        for field in [
            "discord.mode",
            "discord.bot_token",
            "discord.application_id",
            "discord.public_key",
            "discord.guild_id: missing",
            "discord.approvals_channel",
            "discord.api_url",
            "discord.roles.approvers",
            "discord.commands",
            "discord.cache_ttl",
        ] {
            assert!(errs.contains(field), "{field} missing in {errs}");
        }
        assert!(!errs.contains("short secret"), "{errs}");
    }

    #[test]
    fn http_mode_needs_the_public_key() {
        let c = DiscordConfig {
            mode: "http".into(),
            public_key: String::new(),
            ..valid()
        };
        let errs = c.validate().unwrap_err().join("\n");
        assert!(errs.contains("discord.public_key: missing"), "{errs}");
        let gateway = DiscordConfig {
            public_key: String::new(),
            ..valid()
        };
        assert!(gateway.validate().is_ok());
    }

    #[test]
    fn ids_may_be_written_as_numbers() {
        let c: DiscordConfig = toml::from_str(
            "guild_id = 1300000000000000001\napplication_id = \"1200000000000000001\"\n[roles]\napprovers = 1600000000000000001\n",
        )
        .unwrap();
        assert_eq!(c.guild_id, "1300000000000000001");
        assert_eq!(c.application_id, "1200000000000000001");
        assert_eq!(c.roles["approvers"], "1600000000000000001");
    }

    #[test]
    fn snowflakes_are_digits() {
        assert_eq!(snowflake(" 123 "), Some(123));
        for bad in ["", "0", "12a", "-1", "123456789012345678901"] {
            assert_eq!(snowflake(bad), None, "{bad}");
        }
    }
}
