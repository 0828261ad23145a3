//! `passport doctor`: checks a deployment from the inside and says what is
//! wrong and how to fix it. Each check is independent: one failing does not
//! hide the others.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::adapters::aws::api::ApiError;
use crate::adapters::aws::wiring::AwsStartError;
use crate::adapters::aws::{AwsSettings, DocumentsError};
use crate::adapters::discord::api::DiscordApi;
use crate::adapters::slack::api::SlackApi;
use crate::app::ports::{StoreError, Verification};
use crate::config::{Settings, StoreLocation};
use crate::domain::logbook::{ChainKeys, Keying};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub check: String,
    /// What was found; for a failure, what is wrong and what to do.
    pub text: String,
}

impl Finding {
    fn ok(check: &str, text: impl Into<String>) -> Self {
        Self {
            ok: true,
            check: check.into(),
            text: text.into(),
        }
    }

    fn fail(check: &str, text: impl Into<String>) -> Self {
        Self {
            ok: false,
            check: check.into(),
            text: text.into(),
        }
    }
}

/// File systems SQLite must not live on: their locks (and shared memory for
/// WAL) are not reliable, and a broken lock can corrupt the database.
const NETWORK_FILE_SYSTEMS: [&str; 14] = [
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "afs",
    "ceph",
    "glusterfs",
    "lustre",
    "gpfs",
    "fuse.sshfs",
    "fuse.s3fs",
    "fuse.rclone",
];

/// The file system type of the mount holding `path`, from the text of
/// `/proc/mounts` (the longest mount point that is a prefix of `path`).
pub fn file_system_of(mounts: &str, path: &Path) -> Option<String> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            // Spaces in mount points are written as \040.
            let point = fields.next()?.replace("\\040", " ");
            let kind = fields.next()?;
            Some((PathBuf::from(point), kind.to_owned()))
        })
        .filter(|(point, _)| path.starts_with(point))
        .max_by_key(|(point, _)| point.as_os_str().len())
        .map(|(_, kind)| kind)
}

/// Whether `kind` is a network file system.
pub fn is_network_file_system(kind: &str) -> bool {
    NETWORK_FILE_SYSTEMS.contains(&kind)
}

/// Runs every check that applies to `settings`.
pub async fn run(settings: &Settings) -> Vec<Finding> {
    let mut findings = database(settings).await;
    if let Some(ca) = &settings.ssh_ca {
        findings.push(match ca.load() {
            Ok(loaded) => {
                use crate::app::ports::CertificateSigner;
                Finding::ok("ssh ca", format!("signing key {}", loaded.fingerprint()))
            }
            Err(e) => Finding::fail("ssh ca", e.to_string()),
        });
    }
    if let Some(slack) = &settings.slack {
        findings.extend(slack_checks(settings, slack).await);
    }
    if let Some(discord) = &settings.discord {
        findings.extend(discord_checks(settings, discord).await);
    }
    if let Some(aws) = &settings.aws {
        findings.extend(aws_checks(aws).await);
    }
    findings
}

/// How long each AWS check may take. The SDK's own attempts and per-attempt
/// timeouts are made for `serve`, where waiting is cheap; someone running
/// `doctor` against an endpoint that does not answer should hear so soon.
pub const AWS_CHECK_WITHIN: Duration = Duration::from_secs(15);

/// Who Passport is in AWS, and whether SSM holds this build's documents. The
/// two run side by side, each within [`AWS_CHECK_WITHIN`].
async fn aws_checks(aws: &AwsSettings) -> Vec<Finding> {
    let within = AWS_CHECK_WITHIN.as_secs();
    let (identity, documents) = tokio::join!(
        tokio::time::timeout(AWS_CHECK_WITHIN, crate::adapters::aws::caller_identity(aws)),
        tokio::time::timeout(AWS_CHECK_WITHIN, crate::adapters::aws::ssm_check(aws)),
    );
    let identity = match identity {
        Ok(Ok(arn)) => Finding::ok("aws identity", arn),
        Ok(Err(e)) => Finding::fail("aws identity", format!("{e}: {}", aws_fix(&e, "STS"))),
        Err(_) => Finding::fail(
            "aws identity",
            format!("AWS STS did not answer within {within}s: {}", REACH_AWS),
        ),
    };
    let documents = match documents {
        Ok(Ok(pinned)) => Finding::ok(
            "ssm documents",
            format!(
                "installed at this version ({})",
                pinned
                    .iter()
                    .map(|(document, version)| format!("{document} v{version}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        // Its text already says what is wrong and to run `passport ssm install`.
        Ok(Err(e @ AwsStartError::Documents(DocumentsError::NotReady(_)))) => {
            Finding::fail("ssm documents", e.to_string())
        }
        Ok(Err(AwsStartError::Documents(DocumentsError::Unavailable(e)))) => Finding::fail(
            "ssm documents",
            format!("cannot be checked: {e}: {}", aws_fix(&e, "SSM")),
        ),
        Ok(Err(e)) => Finding::fail("ssm documents", format!("cannot be checked: {e}")),
        Err(_) => Finding::fail(
            "ssm documents",
            format!("cannot be checked: AWS SSM did not answer within {within}s: {REACH_AWS}"),
        ),
    };
    vec![identity, documents]
}

/// What to do when AWS cannot be reached.
const REACH_AWS: &str = "check that Passport can reach AWS (network, proxy, [aws] region and endpoint_url or AWS_ENDPOINT_URL)";

/// What to do about a failed AWS call to `service`. AWS's own text is in the
/// log under the error's id, never here.
fn aws_fix(e: &ApiError, service: &str) -> String {
    match e {
        ApiError::Throttled(_) => "AWS is throttling Passport's calls: try again in a minute".into(),
        ApiError::Transient(_) => format!(
            "{REACH_AWS}, and that it has AWS credentials (an instance, task or pod role, or a profile); AWS's answer is logged under the error id"
        ),
        ApiError::Service { code, .. } if code.contains("AccessDenied") || code == "UnauthorizedOperation" => format!(
            "the credentials may not call AWS {service}: give Passport the bot policy of manifests/iam/ (see manifests/iam/README.md)"
        ),
        ApiError::Service { .. } => "give Passport valid AWS credentials (an instance, task or pod role, or a profile) and check [aws] region; AWS's answer is logged under the error id".into(),
    }
}

async fn database(settings: &Settings) -> Vec<Finding> {
    let mut findings = Vec::new();
    let fix = match &settings.store {
        StoreLocation::Sqlite { path, .. } => {
            findings.extend(file_system(path));
            "check [store] path and that its directory is writable by Passport"
        }
        StoreLocation::Postgres { .. } => "check [store] url (host, port, database, user and password) and that PostgreSQL accepts Passport's connections (pg_hba.conf, security groups, TLS)",
    };
    let shown = settings.store.to_string();
    let clock: std::sync::Arc<dyn crate::app::ports::Clock> =
        std::sync::Arc::new(crate::adapters::clock::SystemClock);
    match crate::startup::connect(&settings.store, settings.audit.keys.clone(), clock).await {
        Ok(database) => {
            let store = database.store();
            findings.push(match store.ping_writer().await {
                Ok(()) => Finding::ok("database", format!("{shown} opens and takes writes")),
                Err(e) => Finding::fail("database", format!("{shown} does not take writes ({e}): {}", match &settings.store {
                    StoreLocation::Sqlite { .. } => "is another process holding it, or the disk full?",
                    StoreLocation::Postgres { .. } => "is it a read-only standby, is the disk full, or may Passport's user not write?",
                })),
            });
            findings.push(match store.verify_logbook().await {
                Ok(Verification::Intact { events, keying, .. }) => {
                    let report = keying_report(&keying, &settings.audit.keys);
                    match report.problem {
                        None => Finding::ok("logbook", format!("intact, {events} events; {}", report.mode)),
                        Some((problem, _)) => Finding::fail("logbook", format!("{problem}; {}", report.mode)),
                    }
                }
                Ok(Verification::Broken(brk)) => Finding::fail(
                    "logbook",
                    format!("broken at event {}: {brk}; keep the database as evidence and see `passport audit verify`", brk.seq()),
                ),
                Err(e) => Finding::fail("logbook", format!("cannot be read: {e}")),
            });
            database.close().await;
        }
        // A newer release's schema is no connection problem: what to run
        // instead is in the refusal.
        Err(e @ StoreError::Schema(_)) => {
            findings.push(Finding::fail("database", format!("{shown}: {e}")))
        }
        Err(e) => findings.push(Finding::fail(
            "database",
            format!("{shown} cannot be opened ({e}): {fix}"),
        )),
    }
    findings
}

/// Whether the SQLite file at `path` is on a local file system.
fn file_system(path: &Path) -> Option<Finding> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let absolute = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    match std::fs::read_to_string("/proc/mounts")
        .ok()
        .and_then(|m| file_system_of(&m, &absolute))
    {
        Some(kind) if is_network_file_system(&kind) => Some(Finding::fail(
            "database file system",
            format!("{} is on {kind}, a network file system where SQLite's locks are not reliable: move the database to a local disk or block volume (EBS, a ReadWriteOnce volume)", absolute.display()),
        )),
        Some(kind) => Some(Finding::ok("database file system", format!("{} on {kind}", absolute.display()))),
        None => None,
    }
}

/// Every channel Passport posts to: the approvals and audit channels, and
/// each policy rule's own.
fn channels(settings: &Settings, approvals: &str, audit: &str) -> Vec<String> {
    let mut all = vec![approvals.to_owned(), audit.to_owned()];
    for rule in std::iter::once(&settings.policy.default_rule).chain(&settings.policy.rules) {
        if let Some(c) = &rule.channel {
            if !all.contains(c) {
                all.push(c.clone());
            }
        }
    }
    all
}

async fn slack_checks(
    settings: &Settings,
    slack: &crate::adapters::slack::config::SlackSettings,
) -> Vec<Finding> {
    let api = SlackApi::new(
        &slack.api_url,
        &slack.bot_token,
        slack.channel_pace,
        slack.call_timeout,
    );
    let mut findings = Vec::new();
    match api.auth_test().await {
        Ok((team, user)) => {
            findings.push(Finding::ok("slack token", format!("bot {user} in {team}")))
        }
        Err(e) => {
            findings.push(Finding::fail(
                "slack token",
                format!(
                    "{e}: set PASSPORT_SLACK__BOT_TOKEN to the app's Bot User OAuth Token (xoxb-…)"
                ),
            ));
            return findings;
        }
    }
    for channel in channels(settings, &slack.approvals_channel, &slack.audit_channel) {
        findings.push(match api.is_member(&channel).await {
            Ok(Some(true)) => Finding::ok("slack channel", format!("{channel}: the bot is a member")),
            Ok(Some(false)) => Finding::fail("slack channel", format!("{channel}: the bot is not a member: type /invite @Passport in it")),
            Ok(None) => Finding::fail("slack channel", format!("{channel}: not found (archived, misspelt, or private without the bot): check the name in the configuration")),
            Err(e) => Finding::fail("slack channel", format!("{channel}: cannot be checked ({e}); the app needs the channels:read and groups:read scopes of manifests/slack-app.yaml")),
        });
    }
    for (group, usergroup) in &slack.usergroups {
        findings.push(match api.usergroup_members(usergroup).await {
            Ok(members) => Finding::ok("slack user group", format!("{group} = {usergroup}: {} member(s)", members.len())),
            Err(e) => Finding::fail("slack user group", format!("{group} = {usergroup} cannot be read ({e}): check the id (S…) and the usergroups:read scope")),
        });
    }
    findings
}

/// The HTTP status and Discord's JSON error code of a call Discord refused.
fn discord_refusal(e: &serenity::Error) -> Option<(u16, isize)> {
    match e {
        serenity::Error::Http(serenity::http::HttpError::UnsuccessfulRequest(r)) => {
            Some((r.status_code.as_u16(), r.error.code))
        }
        _ => None,
    }
}

/// Discord's error code for "Unknown Channel".
const UNKNOWN_CHANNEL: isize = 10_003;
/// Discord's error code for "Unknown Guild".
const UNKNOWN_GUILD: isize = 10_004;
/// Discord's error code for "Missing Access" (the bot may not view it).
const MISSING_ACCESS: isize = 50_001;

async fn discord_checks(
    settings: &Settings,
    discord: &crate::adapters::discord::config::DiscordSettings,
) -> Vec<Finding> {
    use serenity::model::channel::Channel;
    use serenity::model::id::{ChannelId, GuildId};
    let api = DiscordApi::new(discord);
    let http = api.serenity();
    let mut findings = Vec::new();
    match http.get_current_user().await {
        Ok(user) => findings.push(Finding::ok("discord token", format!("bot {}", user.name))),
        Err(e) => {
            let text = match discord_refusal(&e) {
                Some((401, _)) => format!("Discord refused the token ({e}): set PASSPORT_DISCORD__BOT_TOKEN to the bot's token (Developer Portal → Bot → Reset Token)"),
                Some(_) => format!("Discord refused the bot's own user ({e}): check PASSPORT_DISCORD__BOT_TOKEN and [discord] api_url"),
                None => format!("Discord cannot be reached at {} ({e}): check the network and [discord] api_url", discord.api_url),
            };
            findings.push(Finding::fail("discord token", text));
            return findings;
        }
    }
    let guild = discord.guild_id;
    for channel in channels(settings, &discord.approvals_channel, &discord.audit_channel) {
        let Ok(id) = channel.parse::<u64>() else {
            findings.push(Finding::fail(
                "discord channel",
                format!("{channel} is not a channel id: copy it with Developer Mode on (right-click the channel → Copy Channel ID)"),
            ));
            continue;
        };
        findings.push(match http.get_channel(ChannelId::new(id)).await {
            Ok(Channel::Guild(c)) if c.guild_id.get() == guild => {
                Finding::ok("discord channel", format!("{channel}: the bot can see it (#{})", c.name))
            }
            Ok(Channel::Guild(c)) => Finding::fail("discord channel", format!("{channel}: in another server ({}), not [discord] guild_id {guild}: use a channel of that server", c.guild_id)),
            Ok(_) => Finding::fail("discord channel", format!("{channel}: not a server channel: use a text channel of server {guild}")),
            Err(e) => Finding::fail("discord channel", match discord_refusal(&e) {
                Some((403, MISSING_ACCESS)) => format!("{channel}: the bot cannot see it ({e}): give the bot View Channel and Send Messages in it"),
                Some((404, UNKNOWN_CHANNEL)) => format!("{channel}: the bot cannot see it ({e}): no such channel in a server the bot is in: check the id (Developer Mode on, right-click the channel → Copy Channel ID)"),
                _ => format!("{channel}: cannot be checked ({e}): check the network and [discord] api_url"),
            }),
        });
    }
    if !discord.roles.is_empty() {
        match http.get_guild_roles(GuildId::new(guild)).await {
            Ok(roles) => {
                for (group, role) in &discord.roles {
                    findings.push(match roles.iter().find(|r| r.id.get().to_string() == *role) {
                        Some(r) => Finding::ok("discord role", format!("{group} = {role} (@{})", r.name)),
                        None => Finding::fail(
                            "discord role",
                            format!("{group} = {role}: no such role in server {guild}: copy the role's id (Server Settings → Roles, right-click the role → Copy Role ID)"),
                        ),
                    });
                }
            }
            Err(e) => findings.push(Finding::fail(
                "discord role",
                match discord_refusal(&e) {
                    Some((403, MISSING_ACCESS) | (404, UNKNOWN_GUILD)) => format!("the roles of server {guild} cannot be read ({e}): check [discord] guild_id and that the bot is in that server"),
                    _ => format!("the roles of server {guild} cannot be read ({e}): check the network and [discord] api_url"),
                },
            )),
        }
    }
    findings
}

/// What a verification says about how the Logbook is keyed, and whether that
/// falls short of a full check.
pub struct KeyingReport {
    /// "plain hash chain (SHA-256)…" or "keyed (HMAC-SHA256) since event N, key id …".
    pub mode: String,
    /// What could not be checked or does not fit the configured key, with the
    /// exit code: 3 for keyed events left unchecked, 1 for a key mismatch.
    pub problem: Option<(String, i32)>,
}

pub fn keying_report(keying: &Keying, keys: &ChainKeys) -> KeyingReport {
    let mode = match keying.switches.split_first() {
        None => "plain hash chain (SHA-256): whoever can write the database file could recompute it; set [audit] key to key it".to_owned(),
        Some((first, rest)) => {
            let current = rest.last().unwrap_or(first);
            let mut mode = format!(
                "keyed (HMAC-SHA256) since event {}, key id {}",
                first.seq, current.key
            );
            if !rest.is_empty() {
                let rotations: Vec<String> = rest
                    .iter()
                    .map(|s| format!("event {} to key id {}", s.seq, s.key))
                    .collect();
                mode.push_str(&format!(
                    " (first key id {}; rotated at {})",
                    first.key,
                    rotations.join(", ")
                ));
            }
            mode
        }
    };
    let problem = if !keying.unchecked.is_empty() {
        let runs: Vec<String> = keying
            .unchecked
            .iter()
            .map(|u| format!("events {}-{} (key id {})", u.first, u.last, u.key))
            .collect();
        Some((
            format!(
                "NOT fully verified: {} could not be checked without their key: set [audit] key (or PASSPORT_AUDIT__KEY) to the key, older keys in [audit] previous_keys, and run again",
                runs.join(", ")
            ),
            3,
        ))
    } else {
        match (&keys.current, keying.current()) {
            (Some(key), None) => Some((
                format!(
                    "NOT verified: a key is configured (key id {}) but the Logbook is a plain hash chain: it was never started with this key (start `passport serve` once to key it), or it was rewritten without the key",
                    key.id()
                ),
                1,
            )),
            (Some(key), Some(last)) if &last.key != key.id() => Some((
                format!(
                    "NOT verified: the configured key (key id {}) is not the Logbook's: its last switch, event {}, names key id {}",
                    key.id(),
                    last.seq,
                    last.key
                ),
                1,
            )),
            _ => None,
        }
    };
    KeyingReport { mode, problem }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "/dev/vda / ext4 rw,relatime 0 0\n\
        proc /proc proc rw 0 0\n\
        fs-1.efs.eu-west-1.amazonaws.com:/ /var/lib/passport nfs4 rw 0 0\n\
        /dev/vdb /var/lib/passport/local ext4 rw 0 0\n\
        /dev/vdc /mnt/with\\040space xfs rw 0 0\n";

    #[test]
    fn the_longest_mount_point_decides_the_file_system() {
        let fs = |p: &str| file_system_of(MOUNTS, Path::new(p));
        assert_eq!(fs("/var/lib/passport").as_deref(), Some("nfs4"));
        assert_eq!(fs("/var/lib/passport/db").as_deref(), Some("nfs4"));
        assert_eq!(fs("/var/lib/passport/local").as_deref(), Some("ext4"));
        assert_eq!(fs("/var/lib/passportx").as_deref(), Some("ext4"));
        assert_eq!(fs("/mnt/with space/db").as_deref(), Some("xfs"));
    }

    #[test]
    fn network_file_systems_are_named() {
        assert!(is_network_file_system("nfs4"));
        assert!(is_network_file_system("cifs"));
        assert!(!is_network_file_system("ext4"));
        assert!(!is_network_file_system("xfs"));
        assert!(!is_network_file_system("overlay"));
    }
}
