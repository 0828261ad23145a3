//! The `[slack]` section of the configuration and its validated form.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::domain::time::{parse_setting_within, Span};

/// What `[slack]` in `passport.toml` says. Its presence (in the file or
/// through a `PASSPORT_SLACK__…` variable) turns Slack on and the console off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    /// `http`: Slack calls Passport's `/slack/…` endpoints (needs a public URL).
    /// `socket`: Passport opens a Socket Mode connection to Slack (needs `app_token`).
    pub mode: String,
    /// Signs every request Slack sends to the HTTP endpoints (Basic Information → Signing Secret).
    pub signing_secret: Option<Secret>,
    /// The bot token, `xoxb-…` (OAuth & Permissions).
    pub bot_token: Option<Secret>,
    /// The app-level token for Socket Mode, `xapp-…`, with `connections:write`.
    pub app_token: Option<Secret>,
    /// Where request cards go, unless a policy rule names its own channel.
    pub approvals_channel: String,
    /// Where every Logbook event is posted as one line.
    pub audit_channel: String,
    /// The Web API base URL.
    pub api_url: String,
    /// Passport group name → Slack user group id (`S…`): members of the Slack
    /// user group count as members of the Passport group.
    pub usergroups: BTreeMap<String, String>,
    /// How long Slack user group members and user names are remembered.
    pub cache_ttl: String,
    /// The least time between two messages to one channel.
    pub channel_pace: String,
    /// How long one Web API call may take before it counts as failed.
    pub call_timeout: String,
    /// The workspace (`T…`) Passport serves. Empty: the bot token's, from `auth.test`.
    pub team_id: String,
    /// The Enterprise Grid organization (`E…`) of that workspace, if any.
    /// Empty: from `auth.test` (or none when `team_id` and `app_id` are set).
    pub enterprise_id: String,
    /// Passport's Slack app (`A…`). Empty: the bot's, from `bots.info`.
    pub app_id: String,
}

impl Default for SlackConfig {
    fn default() -> Self {
        Self {
            mode: "http".into(),
            signing_secret: None,
            bot_token: None,
            app_token: None,
            approvals_channel: String::new(),
            audit_channel: String::new(),
            api_url: DEFAULT_API_URL.into(),
            usergroups: BTreeMap::new(),
            cache_ttl: "60s".into(),
            channel_pace: "1s".into(),
            call_timeout: "10s".into(),
            team_id: String::new(),
            enterprise_id: String::new(),
            app_id: String::new(),
        }
    }
}

pub const DEFAULT_API_URL: &str = "https://slack.com/api";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlackMode {
    Http,
    Socket,
}

/// The validated `[slack]` section.
#[derive(Debug, Clone)]
pub struct SlackSettings {
    pub mode: SlackMode,
    /// Present in HTTP mode (required there); optional in Socket Mode.
    pub signing_secret: Option<Secret>,
    pub bot_token: Secret,
    /// Present in Socket Mode.
    pub app_token: Option<Secret>,
    pub approvals_channel: String,
    pub audit_channel: String,
    /// Without a trailing slash.
    pub api_url: String,
    pub usergroups: BTreeMap<String, String>,
    pub cache_ttl: Duration,
    pub channel_pace: Duration,
    pub call_timeout: Duration,
    /// The workspace, enterprise and app requests must come from, where the
    /// configuration names them; the rest is learnt at start.
    pub team_id: Option<String>,
    pub enterprise_id: Option<String>,
    pub app_id: Option<String>,
}

fn is_channel(text: &str) -> bool {
    let t = text.strip_prefix('#').unwrap_or(text);
    !t.is_empty()
        && t.len() <= 80
        && t.chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_' || c == '.')
}

impl SlackConfig {
    /// Checks every field and names each bad one (`slack.bot_token: …`). The
    /// values of secrets are never part of a message.
    pub fn validate(&self) -> Result<SlackSettings, Vec<String>> {
        let mut errors = Vec::new();
        let mode = match self.mode.as_str() {
            "http" => SlackMode::Http,
            "socket" => SlackMode::Socket,
            other => {
                errors.push(format!(
                    "slack.mode: {other:?} is not a mode: use \"http\" (Slack calls /slack/… on a public URL) or \"socket\" (Socket Mode, with slack.app_token)"
                ));
                SlackMode::Http
            }
        };
        // A line ending a secret file adds is already gone (`Secret::new`);
        // anything else would be sent to Slack as part of the secret.
        for (field, secret) in [
            ("bot_token", &self.bot_token),
            ("signing_secret", &self.signing_secret),
            ("app_token", &self.app_token),
        ] {
            if let Some(flaw) = secret.as_ref().and_then(Secret::flaw) {
                errors.push(format!(
                    "slack.{field}: {flaw}: copy it again without it (the value is not shown)"
                ));
            }
        }
        let flawed = |s: &Secret| s.flaw().is_some();
        let bot_token = match &self.bot_token {
            Some(t) if flawed(t) => None,
            Some(t) if t.expose().starts_with("xoxb-") => Some(t.clone()),
            Some(_) => {
                errors.push("slack.bot_token: not a bot token: copy the one starting with xoxb- from OAuth & Permissions".into());
                None
            }
            None => {
                errors.push("slack.bot_token: missing: set it (or PASSPORT_SLACK__BOT_TOKEN) to the xoxb- token from OAuth & Permissions".into());
                None
            }
        };
        let signing_secret = match &self.signing_secret {
            Some(s) if flawed(s) => None,
            Some(s) if s.expose().len() < 16 => {
                errors.push("slack.signing_secret: too short to be a signing secret: copy it from Basic Information → App Credentials".into());
                None
            }
            Some(s) => Some(s.clone()),
            None if mode == SlackMode::Http => {
                errors.push("slack.signing_secret: missing: HTTP mode needs it to check that requests come from Slack (Basic Information → App Credentials; or PASSPORT_SLACK__SIGNING_SECRET)".into());
                None
            }
            None => None,
        };
        let app_token = match &self.app_token {
            Some(t) if flawed(t) => None,
            Some(t) if !t.expose().starts_with("xapp-") => {
                errors.push("slack.app_token: not an app-level token: create one starting with xapp- with the connections:write scope (Basic Information → App-Level Tokens)".into());
                None
            }
            Some(t) => Some(t.clone()),
            None if mode == SlackMode::Socket => {
                errors.push("slack.app_token: missing: Socket Mode needs an app-level token starting with xapp- (or PASSPORT_SLACK__APP_TOKEN)".into());
                None
            }
            None => None,
        };
        for (field, value) in [
            ("approvals_channel", &self.approvals_channel),
            ("audit_channel", &self.audit_channel),
        ] {
            if value.trim().is_empty() {
                errors.push(format!(
                    "slack.{field}: missing: name a channel the bot is in, by id (C0123456789) or name (#access-requests)"
                ));
            } else if !is_channel(value.trim()) {
                errors.push(format!(
                    "slack.{field}: {value:?} is not a channel: use an id such as C0123456789 or a name such as #access-requests"
                ));
            }
        }
        let api_url = self.api_url.trim().trim_end_matches('/').to_owned();
        if !(api_url.starts_with("https://") || api_url.starts_with("http://"))
            || api_url.contains(char::is_whitespace)
        {
            errors.push(format!(
                "slack.api_url: {:?} is not an http(s) URL: leave it out to use {DEFAULT_API_URL}",
                self.api_url
            ));
        }
        for (name, id) in &self.usergroups {
            let ok = id.starts_with('S')
                && id.len() >= 2
                && id.len() <= 32
                && id.chars().all(|c| c.is_ascii_alphanumeric());
            if !ok {
                errors.push(format!(
                    "slack.usergroups.{name}: {id:?} is not a Slack user group id: use the id starting with S (from the group's URL or usergroups.list)"
                ));
            }
        }
        let mut slack_id = |field: &str, value: &str, first: char, what: &str| {
            let value = value.trim();
            if value.is_empty() {
                return None;
            }
            let ok = value.starts_with(first)
                && value.len() >= 2
                && value.len() <= 32
                && value.chars().all(|c| c.is_ascii_alphanumeric());
            if !ok {
                errors.push(format!(
                    "slack.{field}: {value:?} is not a Slack {what} id: use the id starting with {first}, or leave it out to learn it from the bot token"
                ));
            }
            Some(value.to_owned())
        };
        let team_id = slack_id("team_id", &self.team_id, 'T', "workspace");
        let enterprise_id = slack_id("enterprise_id", &self.enterprise_id, 'E', "Enterprise Grid");
        let app_id = slack_id("app_id", &self.app_id, 'A', "app");
        let mut duration = |field: &str, text: &str, max: Span| match parse_setting_within(
            &format!("slack.{field}"),
            text,
            Span::ZERO,
            max,
        ) {
            Ok(span) => span.to_std(),
            Err(e) => {
                errors.push(e);
                Duration::ZERO
            }
        };
        let cache_ttl = duration("cache_ttl", &self.cache_ttl, Span::from_hours(1));
        let channel_pace = duration("channel_pace", &self.channel_pace, Span::from_secs(10));
        let call_timeout = duration("call_timeout", &self.call_timeout, Span::from_secs(60));
        if call_timeout.is_zero() && !errors.iter().any(|e| e.starts_with("slack.call_timeout")) {
            errors.push(
                "slack.call_timeout: must be more than 0: use forms like 500ms or 10s".into(),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let Some(bot_token) = bot_token else {
            return Err(vec!["slack.bot_token: missing".into()]);
        };
        Ok(SlackSettings {
            mode,
            signing_secret,
            bot_token,
            app_token,
            approvals_channel: self.approvals_channel.trim().to_owned(),
            audit_channel: self.audit_channel.trim().to_owned(),
            api_url,
            usergroups: self.usergroups.clone(),
            cache_ttl,
            channel_pace,
            call_timeout,
            team_id,
            enterprise_id,
            app_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> SlackConfig {
        SlackConfig {
            signing_secret: Some(Secret::from("8f742231b10e8888abcd99yyyzzz85a5")),
            bot_token: Some(Secret::from("xoxb-1-2-abc")),
            approvals_channel: "C0APPROVALS".into(),
            audit_channel: "#passport-audit".into(),
            ..SlackConfig::default()
        }
    }

    #[test]
    fn a_complete_section_validates() {
        let s = valid().validate().unwrap();
        assert_eq!(s.mode, SlackMode::Http);
        assert_eq!(s.api_url, DEFAULT_API_URL);
        assert_eq!(s.channel_pace, Duration::from_secs(1));
    }

    #[test]
    fn every_bad_field_is_named_without_its_secret() {
        let c = SlackConfig {
            mode: "socket".into(),
            bot_token: Some(Secret::from("xoxp-user-token-secret")),
            app_token: None,
            approvals_channel: String::new(),
            audit_channel: "not a channel".into(),
            api_url: "slack.com".into(),
            usergroups: BTreeMap::from([("approvers".into(), "approvers".into())]),
            channel_pace: "fast".into(),
            ..valid()
        };
        let errs = c.validate().unwrap_err().join("\n");
        for field in [
            "slack.bot_token",
            "slack.app_token",
            "slack.approvals_channel",
            "slack.audit_channel",
            "slack.api_url",
            "slack.usergroups.approvers",
            "slack.channel_pace",
        ] {
            assert!(errs.contains(field), "{field} missing in {errs}");
        }
        assert!(!errs.contains("xoxp-user-token-secret"), "{errs}");
    }

    #[test]
    fn http_mode_needs_the_signing_secret() {
        let c = SlackConfig {
            signing_secret: None,
            ..valid()
        };
        let errs = c.validate().unwrap_err().join("\n");
        assert!(errs.contains("slack.signing_secret: missing"), "{errs}");
    }

    #[test]
    fn durations_are_read_in_the_one_grammar_and_bounded() {
        let with = |cache_ttl: &str, channel_pace: &str| {
            SlackConfig {
                cache_ttl: cache_ttl.into(),
                channel_pace: channel_pace.into(),
                ..valid()
            }
            .validate()
        };
        let s = with("2m", "250ms").unwrap();
        assert_eq!(s.cache_ttl, Duration::from_secs(120));
        assert_eq!(s.channel_pace, Duration::from_millis(250));
        assert_eq!(with("0", "0").unwrap().channel_pace, Duration::ZERO);
        let errs = with("1.5s", "11s").unwrap_err().join("\n");
        assert!(
            errs.contains("slack.cache_ttl: \"1.5s\" is not a duration"),
            "{errs}"
        );
        assert!(
            errs.contains("slack.channel_pace: \"11s\" must be from 0s to 10s"),
            "{errs}"
        );
    }
}
