//! The `[aws]` section of the configuration and its validated form.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::time::parse_setting;

/// SSM limits a command to 50 instance ids when they are listed explicitly.
pub const MAX_BATCH_SIZE: usize = 50;

/// What `[aws]` in `passport.toml` says. Durations are written in the one
/// grammar ([`crate::domain::time::Span::parse`]), like `500ms`, `30s`, `5m` or `1h`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// The region of the instances, e.g. `eu-west-1`. When absent, the usual
    /// sources apply (`AWS_REGION`, the profile, instance metadata).
    pub region: Option<String>,
    /// Sends every EC2 and SSM call to this endpoint instead of AWS (a VPC
    /// endpoint, or a local test server). When absent, `AWS_ENDPOINT_URL` and
    /// the profile's `endpoint_url` are honoured.
    pub endpoint_url: Option<String>,
    pub documents: DocumentNames,
    /// How long SSM tries to deliver a command to an instance that is offline.
    pub delivery_timeout: String,
    /// How long the scripts may run once delivered; Passport stops waiting for
    /// an answer after the delivery timeout plus this.
    pub execution_timeout: String,
    /// Instance ids per SendCommand call (at most 50).
    pub batch_size: usize,
    /// SendCommand batches in flight at once.
    pub concurrency: usize,
    /// First wait before asking SSM for a command's result; it grows from there.
    pub poll_initial: String,
    /// Longest wait between two polls of the same command.
    pub poll_max: String,
    /// Attempts per AWS call made by the SDK itself (adaptive retry mode).
    pub sdk_attempts: u32,
    /// Further attempts Passport makes when a call is still throttled or fails
    /// with a server error after the SDK's own attempts.
    pub retries: u32,
    /// Asks SSM whether each instance is managed and online before anyone is
    /// asked to approve. Only test servers that lack `DescribeInstanceInformation`
    /// need this off.
    pub check_ssm_online: bool,
    /// After a restart, a grant command still in flight is resumed rather than
    /// sent again when its expiry differs from the wanted one by at most this.
    pub resume_tolerance: String,
    /// How long `InvocationDoesNotExist` is taken to mean "not yet" after a send.
    pub invocation_grace: String,
    /// UIDs for Passport's Linux users, `FIRST-LAST`. Each instance counts
    /// upwards through it and never gives a UID out twice. It must not overlap
    /// any other account or subordinate id range (/etc/subuid) on the fleet.
    pub uid_range: String,
    /// How long the direct message carrying a Windows password stays in the
    /// chat before Passport deletes it (1m to 24h).
    pub password_message_ttl: String,
    /// The IAM role Passport assumes to hand out Session Manager credentials
    /// scoped to one request (`arn:aws:iam::123456789012:role/passport-session`).
    /// Unset: Passport hands out no credentials.
    pub session_role_arn: Option<String>,
    /// The tag that opens an instance to Passport. Instances without it are
    /// refused before anyone is asked to approve, and the bot's IAM policy
    /// (`manifests/iam/passport-bot-policy.json`) refuses SendCommand on them.
    pub instance_tag: InstanceTagConfig,
}

/// `[aws.instance_tag]`: the tag key and the value it must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceTagConfig {
    pub key: String,
    pub value: String,
}

impl Default for InstanceTagConfig {
    fn default() -> Self {
        let tag = InstanceTag::default();
        Self {
            key: tag.key,
            value: tag.value,
        }
    }
}

/// The validated access tag: an EC2 tag key and the exact value it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTag {
    key: String,
    value: String,
}

impl Default for InstanceTag {
    /// `passport:access = allowed`, as the bot policy in manifests/iam/ says.
    fn default() -> Self {
        Self {
            key: "passport:access".into(),
            value: "allowed".into(),
        }
    }
}

impl InstanceTag {
    /// EC2's rules for tag keys (1 to 128 characters, not starting with
    /// `aws:`) and values (up to 256); IAM's `ssm:resourceTag/<key>` takes
    /// the same characters. The value may not be empty, so that the tag is
    /// set on purpose.
    pub fn parse(key: &str, value: &str) -> Result<Self, String> {
        let allowed = |c: char| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c);
        if key.is_empty() || key.chars().count() > 128 || !key.chars().all(allowed) {
            return Err(format!(
                "aws.instance_tag.key: {key:?} is not an EC2 tag key: use 1 to 128 letters, digits, spaces or _.:/=+-@, e.g. \"passport:access\""
            ));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(format!(
                "aws.instance_tag.key: {key:?} starts with aws:, which AWS reserves: use a key of your own, e.g. \"passport:access\""
            ));
        }
        if value.is_empty() || value.chars().count() > 256 || !value.chars().all(allowed) {
            return Err(format!(
                "aws.instance_tag.value: {value:?} is not an EC2 tag value Passport accepts: use 1 to 256 letters, digits, spaces or _.:/=+-@, e.g. \"allowed\""
            ));
        }
        Ok(Self {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether an instance with these tags carries the access tag.
    pub fn is_on(&self, tags: &std::collections::BTreeMap<String, String>) -> bool {
        tags.get(&self.key).is_some_and(|v| v == &self.value)
    }
}

impl std::fmt::Display for InstanceTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// Names of the SSM documents Passport runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DocumentNames {
    pub grant_linux: String,
    pub revoke_linux: String,
    pub grant_windows: String,
    pub revoke_windows: String,
}

impl Default for DocumentNames {
    fn default() -> Self {
        Self {
            grant_linux: "Passport-GrantLinux".into(),
            revoke_linux: "Passport-RevokeLinux".into(),
            grant_windows: "Passport-GrantWindows".into(),
            revoke_windows: "Passport-RevokeWindows".into(),
        }
    }
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            documents: DocumentNames::default(),
            delivery_timeout: "5m".into(),
            execution_timeout: "10m".into(),
            batch_size: MAX_BATCH_SIZE,
            concurrency: 4,
            poll_initial: "1s".into(),
            poll_max: "15s".into(),
            sdk_attempts: 3,
            retries: 4,
            check_ssm_online: true,
            resume_tolerance: "2m".into(),
            invocation_grace: "2m".into(),
            uid_range: UidRange::DEFAULT.to_string(),
            password_message_ttl: "10m".into(),
            session_role_arn: None,
            instance_tag: InstanceTagConfig::default(),
        }
    }
}

/// The validated `[aws]` section: what the provisioner runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub documents: DocumentNames,
    pub delivery_timeout: Duration,
    pub execution_timeout: Duration,
    pub batch_size: usize,
    pub concurrency: usize,
    pub poll_initial: Duration,
    pub poll_max: Duration,
    pub sdk_attempts: u32,
    pub retries: u32,
    pub check_ssm_online: bool,
    pub resume_tolerance: Duration,
    pub invocation_grace: Duration,
    pub uid_range: UidRange,
    pub password_message_ttl: Duration,
    /// The role Session Manager credentials are assumed from, when set.
    pub session_role: Option<RoleArn>,
    /// The tag an instance must carry for Passport to touch it.
    pub instance_tag: InstanceTag,
}

/// An IAM role's ARN, `arn:<partition>:iam::<account>:role/<path/name>`,
/// split into the parts the session policy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleArn {
    arn: String,
    partition: String,
    account: String,
    /// The name without its path: what `assumed-role/<name>/…` says.
    name: String,
}

impl RoleArn {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "{text:?} is not an IAM role ARN ({why}): use arn:<partition>:iam::<12-digit account>:role/<path/name>, e.g. \"arn:aws:iam::123456789012:role/passport-session\""
            )
        };
        let mut parts = text.splitn(6, ':');
        let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad(
                "it must start with arn:<partition>:iam:: and name an account",
            ));
        };
        let known = matches!(partition, "aws" | "aws-cn" | "aws-us-gov")
            || (partition.starts_with("aws-iso")
                && partition
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-'));
        if !known {
            return Err(bad("unknown partition: use aws, aws-cn or aws-us-gov"));
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the account must be 12 digits"));
        }
        let Some(path_and_name) = resource.strip_prefix("role/") else {
            return Err(bad("the resource must be role/<name>"));
        };
        // IAM: names of 1 to 64 of [\w+=,.@-], paths of the same characters and `/`.
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b);
        let name = path_and_name.rsplit('/').next().unwrap_or("");
        if name.is_empty()
            || name.len() > 64
            || path_and_name.len() > 512 + 64
            || !path_and_name.bytes().all(|b| allowed(b) || b == b'/')
            || path_and_name.contains("//")
        {
            return Err(bad(
                "the role name must be 1 to 64 of letters, digits and +=,.@_-",
            ));
        }
        Ok(Self {
            arn: text.to_owned(),
            partition: partition.to_owned(),
            account: account.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.arn
    }

    pub fn partition(&self) -> &str {
        &self.partition
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// The role's name without its path.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for RoleArn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.arn)
    }
}

/// The UIDs Passport's Linux users are given, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

impl UidRange {
    pub const DEFAULT: Self = Self {
        first: 10_000_000,
        last: 19_999_999,
    };

    /// `FIRST-LAST`, at least 1000 UIDs, all above the system and ordinary
    /// user ranges (60000 and up) and below the 32-bit "nobody" values.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not a UID range: use FIRST-LAST with 60000 <= FIRST, at least 1000 UIDs and LAST < 4294967294, e.g. \"10000000-19999999\""
            )
        };
        let (first, last) = text.trim().split_once('-').ok_or_else(bad)?;
        let first: u32 = first.trim().parse().map_err(|_| bad())?;
        let last: u32 = last.trim().parse().map_err(|_| bad())?;
        if first < 60_000 || last >= 4_294_967_294 || last < first.saturating_add(999) {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl Default for AwsSettings {
    /// The same values as [`AwsConfig::default`], already validated.
    fn default() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            documents: DocumentNames::default(),
            delivery_timeout: Duration::from_secs(300),
            execution_timeout: Duration::from_secs(600),
            batch_size: MAX_BATCH_SIZE,
            concurrency: 4,
            poll_initial: Duration::from_secs(1),
            poll_max: Duration::from_secs(15),
            sdk_attempts: 3,
            retries: 4,
            check_ssm_online: true,
            resume_tolerance: Duration::from_secs(120),
            invocation_grace: Duration::from_secs(120),
            uid_range: UidRange::DEFAULT,
            password_message_ttl: Duration::from_secs(600),
            session_role: None,
            instance_tag: InstanceTag::default(),
        }
    }
}

impl AwsConfig {
    /// Checks every field and names each bad one (`aws.batch_size: …`).
    pub fn validate(&self) -> Result<AwsSettings, Vec<String>> {
        let mut errors = Vec::new();
        let mut duration =
            |field: &str, text: &str| match parse_setting(&format!("aws.{field}"), text) {
                Ok(span) => span.to_std(),
                Err(e) => {
                    errors.push(e);
                    Duration::ZERO
                }
            };
        let delivery_timeout = duration("delivery_timeout", &self.delivery_timeout);
        let execution_timeout = duration("execution_timeout", &self.execution_timeout);
        let poll_initial = duration("poll_initial", &self.poll_initial);
        let poll_max = duration("poll_max", &self.poll_max);
        let resume_tolerance = duration("resume_tolerance", &self.resume_tolerance);
        let invocation_grace = duration("invocation_grace", &self.invocation_grace);
        let password_message_ttl = duration("password_message_ttl", &self.password_message_ttl);

        // SendCommand accepts a delivery timeout of 30 seconds to 30 days.
        if !(Duration::from_secs(30)..=Duration::from_secs(2_592_000)).contains(&delivery_timeout) {
            errors.push(format!(
                "aws.delivery_timeout: {:?} is outside what SSM accepts: use 30s to 720h",
                self.delivery_timeout
            ));
        }
        // Long enough to read and copy the password; never kept in the chat past a day.
        if !(Duration::from_secs(60)..=Duration::from_secs(86_400)).contains(&password_message_ttl)
        {
            errors.push(format!(
                "aws.password_message_ttl: {:?} must be between 1m and 24h",
                self.password_message_ttl
            ));
        }
        if execution_timeout.is_zero() {
            errors.push("aws.execution_timeout: must be longer than zero".into());
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            errors.push(format!(
                "aws.batch_size: {} must be between 1 and {MAX_BATCH_SIZE} (SSM's limit per command)",
                self.batch_size
            ));
        }
        if !(1..=32).contains(&self.concurrency) {
            errors.push(format!(
                "aws.concurrency: {} must be between 1 and 32",
                self.concurrency
            ));
        }
        if poll_initial.is_zero() || poll_initial > poll_max {
            errors.push(format!(
                "aws.poll_initial: {:?} must be longer than zero and at most aws.poll_max ({:?})",
                self.poll_initial, self.poll_max
            ));
        }
        if !(1..=10).contains(&self.sdk_attempts) {
            errors.push(format!(
                "aws.sdk_attempts: {} must be between 1 and 10",
                self.sdk_attempts
            ));
        }
        if self.retries > 20 {
            errors.push(format!("aws.retries: {} must be at most 20", self.retries));
        }
        if let Some(region) = &self.region {
            let ok = !region.is_empty()
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                errors.push(format!(
                    "aws.region: {region:?} is not a region name: use a form like eu-west-1"
                ));
            }
        }
        if let Some(url) = &self.endpoint_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                errors.push(format!(
                    "aws.endpoint_url: {url:?} is not a URL: use a form like https://ssm.eu-west-1.amazonaws.com"
                ));
            }
        }
        let uid_range = UidRange::parse(&self.uid_range).unwrap_or_else(|e| {
            errors.push(format!("aws.uid_range: {e}"));
            UidRange::DEFAULT
        });
        let names = [
            ("grant_linux", &self.documents.grant_linux),
            ("revoke_linux", &self.documents.revoke_linux),
            ("grant_windows", &self.documents.grant_windows),
            ("revoke_windows", &self.documents.revoke_windows),
        ];
        for (field, name) in names {
            if !is_document_name(name) {
                errors.push(format!(
                    "aws.documents.{field}: {name:?} is not an SSM document name: use 3 to 128 letters, digits, '_', '-' or '.', not starting with AWS or Amazon"
                ));
            }
        }

        let session_role = match self.session_role_arn.as_deref().map(RoleArn::parse) {
            Some(Ok(role)) => Some(role),
            Some(Err(e)) => {
                errors.push(format!("aws.session_role_arn: {e}"));
                None
            }
            None => None,
        };
        if session_role.is_some() && self.region.is_none() {
            errors.push("aws.session_role_arn: needs aws.region too, because the session policy names the instances by their ARN, which holds the region: set region, e.g. \"eu-west-1\"".into());
        }

        let instance_tag = InstanceTag::parse(&self.instance_tag.key, &self.instance_tag.value)
            .unwrap_or_else(|e| {
                errors.push(e);
                InstanceTag::default()
            });

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(AwsSettings {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            documents: self.documents.clone(),
            delivery_timeout,
            execution_timeout,
            batch_size: self.batch_size,
            concurrency: self.concurrency,
            poll_initial,
            poll_max,
            sdk_attempts: self.sdk_attempts,
            retries: self.retries,
            check_ssm_online: self.check_ssm_online,
            resume_tolerance,
            invocation_grace,
            uid_range,
            password_message_ttl,
            session_role,
            instance_tag,
        })
    }
}

impl AwsSettings {
    /// How long after sending a command Passport stops waiting for its result.
    pub fn settle_deadline(&self) -> Duration {
        // A few polls on top for SSM to report the final status (a minute by default).
        self.delivery_timeout + self.execution_timeout + self.poll_max * 4
    }
}

/// SSM's rule for names of documents we may create.
fn is_document_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    (3..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !lower.starts_with("aws")
        && !lower.starts_with("amazon")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_settings_defaults() {
        let settings = AwsConfig::default().validate().unwrap();
        assert_eq!(settings, AwsSettings::default());
    }

    #[test]
    fn every_bad_field_is_named() {
        let config = AwsConfig {
            region: Some("EU West".into()),
            endpoint_url: Some("localhost:5000".into()),
            delivery_timeout: "5 minutes".into(),
            password_message_ttl: "30s".into(),
            batch_size: 80,
            concurrency: 0,
            documents: DocumentNames {
                grant_linux: "AWS-RunShellScript".into(),
                ..DocumentNames::default()
            },
            session_role_arn: Some("arn:aws:iam::123:user/passport".into()),
            instance_tag: InstanceTagConfig {
                key: "aws:reserved".into(),
                value: "yes".into(),
            },
            ..AwsConfig::default()
        };
        let errors = config.validate().unwrap_err().join("\n");
        for field in [
            "aws.region",
            "aws.endpoint_url",
            "aws.delivery_timeout",
            "aws.password_message_ttl",
            "aws.batch_size",
            "aws.concurrency",
            "aws.documents.grant_linux",
            "aws.session_role_arn",
            "aws.instance_tag.key",
        ] {
            assert!(errors.contains(field), "{field} not named in:\n{errors}");
        }
    }

    #[test]
    fn session_role_arns_are_checked_and_split() {
        let role =
            RoleArn::parse("arn:aws-us-gov:iam::123456789012:role/ops/passport-session").unwrap();
        assert_eq!(role.partition(), "aws-us-gov");
        assert_eq!(role.account(), "123456789012");
        assert_eq!(role.name(), "passport-session");
        assert_eq!(
            role.as_str(),
            "arn:aws-us-gov:iam::123456789012:role/ops/passport-session"
        );
        for bad in [
            "",
            "passport-session",
            "arn:aws:iam::123456789012:user/passport",
            "arn:aws:iam::12345678901:role/passport",
            "arn:aws:iam:eu-west-1:123456789012:role/passport",
            "arn:aws:sts::123456789012:role/passport",
            "arn:nope:iam::123456789012:role/passport",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/has space",
            "arn:aws:iam::123456789012:role/a//b",
        ] {
            let e = RoleArn::parse(bad).unwrap_err();
            assert!(
                e.contains("arn:<partition>:iam::<12-digit account>:role/"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_access_tag_is_read_and_checked() {
        let config: AwsConfig = toml::from_str(
            r#"
            [instance_tag]
            key = "team:passport"
            value = "on"
            "#,
        )
        .unwrap();
        let tag = config.validate().unwrap().instance_tag;
        assert_eq!(tag.to_string(), "team:passport=on");
        let tags = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(tag.is_on(&tags(&[("team:passport", "on"), ("env", "dev")])));
        assert!(!tag.is_on(&tags(&[("team:passport", "off")])));
        assert!(!tag.is_on(&tags(&[("env", "dev")])));
        assert_eq!(
            AwsSettings::default().instance_tag.to_string(),
            "passport:access=allowed"
        );
        for (key, value, field) in [
            ("", "on", "aws.instance_tag.key"),
            ("AWS:thing", "on", "aws.instance_tag.key"),
            ("x{y}", "on", "aws.instance_tag.key"),
            ("passport:access", "", "aws.instance_tag.value"),
        ] {
            let e = InstanceTag::parse(key, value).unwrap_err();
            assert!(e.starts_with(field), "{key:?}={value:?}: {e}");
        }
    }

    #[test]
    fn a_session_role_needs_a_region() {
        let config = AwsConfig {
            session_role_arn: Some("arn:aws:iam::123456789012:role/passport-session".into()),
            ..AwsConfig::default()
        };
        let errors = config.validate().unwrap_err().join("\n");
        assert!(
            errors.contains("aws.session_role_arn: needs aws.region"),
            "{errors}"
        );
        let config = AwsConfig {
            region: Some("eu-west-1".into()),
            ..config
        };
        let settings = config.validate().unwrap();
        assert_eq!(
            settings
                .session_role
                .map(|r| r.name().to_owned())
                .as_deref(),
            Some("passport-session")
        );
    }

    #[test]
    fn delivery_timeout_must_be_what_ssm_accepts() {
        let config = AwsConfig {
            delivery_timeout: "10s".into(),
            ..AwsConfig::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn durations_are_read_in_the_one_grammar() {
        let with = |poll_initial: &str| {
            AwsConfig {
                poll_initial: poll_initial.into(),
                ..AwsConfig::default()
            }
            .validate()
        };
        assert_eq!(
            with("500ms").unwrap().poll_initial,
            Duration::from_millis(500)
        );
        assert_eq!(with("2s").unwrap().poll_initial, Duration::from_secs(2));
        let c = AwsConfig {
            poll_max: "1m30s".into(),
            ..AwsConfig::default()
        };
        assert_eq!(c.validate().unwrap().poll_max, Duration::from_secs(90));
        let errs = with("5").unwrap_err().join("\n");
        assert!(
            errs.contains("aws.poll_initial: \"5\" is not a duration: use forms like 90s"),
            "{errs}"
        );
        // Days, as everywhere else.
        let c = AwsConfig {
            delivery_timeout: "2d".into(),
            ..AwsConfig::default()
        };
        assert_eq!(
            c.validate().unwrap().delivery_timeout,
            Duration::from_secs(172_800)
        );
    }

    #[test]
    fn the_section_reads_from_toml() {
        let config: AwsConfig = toml::from_str(
            r#"
            region = "eu-west-1"
            delivery_timeout = "2m"
            password_message_ttl = "3m"
            [documents]
            grant_linux = "Acme-GrantLinux"
            "#,
        )
        .unwrap();
        let settings = config.validate().unwrap();
        assert_eq!(settings.region.as_deref(), Some("eu-west-1"));
        assert_eq!(settings.delivery_timeout, Duration::from_secs(120));
        assert_eq!(settings.password_message_ttl, Duration::from_secs(180));
        assert_eq!(settings.documents.grant_linux, "Acme-GrantLinux");
        assert_eq!(settings.documents.revoke_linux, "Passport-RevokeLinux");
    }
}
