//! Configuration: defaults in code, then a TOML file, then `PASSPORT_…`
//! environment variables (`__` separates nesting, e.g. `PASSPORT_STORE__PATH`).
//!
//! [`Config`] is what the file says; [`Config::validate`] turns it into
//! [`Settings`], the typed values the application runs on, naming every bad
//! field and why.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::adapters::aws::{AwsConfig, AwsSettings};
use crate::adapters::discord::{DiscordConfig, DiscordSettings};
use crate::adapters::slack::{SlackConfig, SlackSettings};
use crate::adapters::sqlite::Durability;
use crate::adapters::ssh_ca::{SshCaConfig, SshCaSettings};
use crate::app::engine::PersonLimits;
use crate::app::jobs::{Job, JobKind, Jobs};
use crate::domain::command::Grammar;
use crate::domain::logbook::{ChainKey, ChainKeys};
use crate::domain::policy::{Policy, Principal, Rule};
use crate::domain::request::{InstanceInfo, Platform};
use crate::domain::time::{parse_setting, Span};
use crate::domain::values::{DurationLimits, InstanceId, TicketRules};
use crate::http::{ApiConfig, ApiSettings, HttpConfig, HttpSettings};

/// `PASSPORT_…` variables that are not configuration: the log filter, the
/// configuration file's path and `store copy`'s target read by the CLI, and the test and benchmark
/// settings. Every other one is a field, so a misspelt field is reported
/// rather than ignored.
fn is_tool_variable(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "log"
        || key == "config"
        || key == "moto_server"
        || key == "schemathesis"
        || key == "kubernetes_validate"
        || key == "test_bin"
        // Where the tests find PostgreSQL's server binaries (tests/common/postgres.rs).
        || key == "pg_bin"
        // The client's directory (`passport login`, `ssh`, …), never the server's.
        || key == "client_dir"
        // The PostgreSQL database `passport store copy` fills: an argument, not a setting.
        || key == "store_copy_to"
        || key.starts_with("bench_")
}

/// The variables Kubernetes injects into every pod of a namespace that has a
/// Service named `passport` (service links): `PASSPORT_SERVICE_HOST`,
/// `PASSPORT_SERVICE_PORT`, `PASSPORT_SERVICE_PORT_<NAME>`, `PASSPORT_PORT`,
/// `PASSPORT_PORT_<N>_<PROTO>` and `PASSPORT_PORT_<N>_<PROTO>_{PROTO,PORT,ADDR}`.
/// They are not configuration, and only these exact shapes are skipped so that
/// a misspelt field is still reported. `key` is the part after `PASSPORT_`.
fn is_service_link(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    if matches!(key.as_str(), "SERVICE_HOST" | "SERVICE_PORT" | "PORT") {
        return true;
    }
    if let Some(name) = key.strip_prefix("SERVICE_PORT_") {
        // A named port: an IANA service name, upper-cased with `-` as `_`.
        return !name.is_empty()
            && !name.contains("__")
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    }
    let Some(rest) = key.strip_prefix("PORT_") else {
        return false;
    };
    let mut parts = rest.split('_');
    let number = parts.next().unwrap_or_default();
    let protocol = parts.next().unwrap_or_default();
    let detail = parts.next();
    !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
        && matches!(protocol, "TCP" | "UDP" | "SCTP")
        && matches!(detail, None | Some("PROTO" | "PORT" | "ADDR"))
        && parts.next().is_none()
}

/// `PASSPORT_…` variables that are never read as configuration.
fn is_ignored_variable(key: &str) -> bool {
    is_tool_variable(key) || is_service_link(key)
}

const ENV_PREFIX: &str = "PASSPORT_";

/// The `PASSPORT_…` variable that sets the field at `path` (`["slack", "bot_token"]`).
fn variable_name(path: &[String]) -> String {
    format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase())
}

/// Every field path the configuration has, each as its segments, and whether
/// the field is a map with names of the operator's choosing (`groups`, `tags`,
/// `slack.usergroups`): below those, any name is valid. Optional sections are
/// listed with their defaults so that their fields count too.
fn known_paths() -> Vec<(Vec<String>, bool)> {
    fn walk(
        value: &serde_json::Value,
        prefix: &mut Vec<String>,
        out: &mut Vec<(Vec<String>, bool)>,
    ) {
        if let serde_json::Value::Object(map) = value {
            for (key, child) in map {
                prefix.push(key.clone());
                // Structs always have fields; an empty object is a map.
                let is_map = matches!(child, serde_json::Value::Object(m) if m.is_empty());
                out.push((prefix.clone(), is_map));
                walk(child, prefix, out);
                prefix.pop();
            }
        }
    }
    let full = Config {
        aws: Some(AwsConfig::default()),
        slack: Some(SlackConfig::default()),
        discord: Some(DiscordConfig::default()),
        ssh_ca: Some(SshCaConfig::default()),
        ..Config::default()
    };
    let mut out = Vec::new();
    if let Ok(value) = serde_json::to_value(&full) {
        walk(&value, &mut Vec::new(), &mut out);
    }
    out
}

/// The `PASSPORT_…` variables in `vars` that name no configuration field, each
/// as a message naming the variable and, when one is close, the valid name
/// that was probably meant. Returns the rejected keys (as figment sees them,
/// after the prefix) with the messages.
fn unknown_variables(vars: impl Iterator<Item = String>) -> (Vec<String>, Vec<String>) {
    let known = known_paths();
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for name in vars {
        let Some(key) = name
            .get(..ENV_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
            .map(|_| &name[ENV_PREFIX.len()..])
        else {
            continue;
        };
        if key.is_empty() || is_ignored_variable(key) {
            continue;
        }
        let path: Vec<String> = key.split("__").map(|s| s.to_ascii_lowercase()).collect();
        let valid = known.iter().any(|(field, is_map)| {
            *field == path || (*is_map && path.len() > field.len() && path.starts_with(field))
        });
        if valid {
            continue;
        }
        let upper = name.to_ascii_uppercase();
        let closest = known
            .iter()
            .map(|(field, _)| variable_name(field))
            .map(|candidate| (edit_distance(&upper, &candidate), candidate))
            .min();
        let hint = match closest {
            Some((d, candidate)) if d <= 2.max(key.len() / 4) => {
                format!("did you mean {candidate}?")
            }
            _ => "name a field with __ between levels, e.g. PASSPORT_STORE__PATH (passport.example.toml lists every field)".to_owned(),
        };
        errors.push(format!(
            "{name}: not a configuration variable (it would set {}): {hint}",
            path.join(".")
        ));
        keys.push(key.to_ascii_lowercase());
    }
    (keys, errors)
}

/// Levenshtein distance between two short ASCII names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// A secret from configuration. `Debug`, `Display` and serialization never show it.
///
/// **Invariant:** what is validated is what is used (HMAC keys, tokens). A
/// secret copied from a file (a Kubernetes or Docker secret, `$(cat file)`
/// kept verbatim) often ends with `\n` or `\r\n`; every secret is built
/// through [`Secret::new`], which drops that one line ending. Any other space,
/// line break or control character is something copying added, and the
/// settings refuse it by name ([`Secret::flaw`]).
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// The secret `value`, without the one line ending it may end with.
    pub fn new(value: impl Into<String>) -> Self {
        let mut value: String = value.into();
        let ending = if value.ends_with("\r\n") {
            2
        } else {
            usize::from(value.ends_with('\n'))
        };
        value.truncate(value.len() - ending);
        Self(SecretString::from(value))
    }

    /// What is wrong with a token or signing secret that holds a space, a
    /// line break (beyond the one dropped) or a control character: no real
    /// one does, and Slack or Discord would refuse it. Said without the value.
    pub fn flaw(&self) -> Option<&'static str> {
        let value = self.expose();
        if value.contains(['\n', '\r']) {
            Some("contains a line break (only one at the very end is dropped)")
        } else if value.chars().any(char::is_control) {
            Some("contains a control character")
        } else if value.chars().any(char::is_whitespace) {
            Some("contains a space")
        } else {
            None
        }
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Takes text only. Serde's own messages for other types quote the
        /// value, so each of those is refused without showing it.
        struct Text;

        fn not_text<E: serde::de::Error>() -> E {
            E::custom("a secret must be text (its value is not shown)")
        }

        impl serde::de::Visitor<'_> for Text {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret as text")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }

            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(not_text())
            }

            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(not_text())
            }

            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(not_text())
            }

            fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<Secret, E> {
                Err(not_text())
            }

            fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<Secret, E> {
                Err(not_text())
            }

            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(not_text())
            }

            fn visit_char<E: serde::de::Error>(self, _: char) -> Result<Secret, E> {
                Err(not_text())
            }
        }

        // `any`, not `string`: some formats refuse a non-string for `string`
        // themselves, with a message that quotes the value.
        deserializer.deserialize_any(Text)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// The address of a PostgreSQL database, `postgres://USER:PASSWORD@HOST/DB`.
/// It may hold a password, so it is a secret: `Debug`, `Display` and
/// serialization show it with the password (in the user part or a
/// `password=` parameter) replaced by `[redacted]`.
#[derive(Clone)]
pub struct DatabaseUrl(Secret);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(Secret::new(url))
    }

    /// The whole address, password included: only for connecting.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The address with its password replaced by `[redacted]`.
    pub fn redacted(&self) -> String {
        redact_url(self.expose())
    }

    /// Whether this is a PostgreSQL address that can be connected to; the
    /// error names `field` and ends with `otherwise`.
    pub fn check_postgres(&self, field: &str, otherwise: &str) -> Result<(), String> {
        let text = self.expose();
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err(format!("{field}: {self} is not a PostgreSQL address: use postgres://USER:PASSWORD@HOST:PORT/DATABASE{otherwise}"));
        }
        if let Err(e) = text.parse::<sqlx::postgres::PgConnectOptions>() {
            return Err(format!("{field}: {self} cannot be read ({e}): use postgres://USER:PASSWORD@HOST:PORT/DATABASE, with special characters of the password percent-encoded"));
        }
        Ok(())
    }
}

/// `url` with the password of its user part, and any `password` parameter,
/// replaced by `[redacted]`. Text that is not an address is redacted whole.
fn redact_url(url: &str) -> String {
    const HIDDEN: &str = "[redacted]";
    let Some((scheme, rest)) = url.split_once("://") else {
        return HIDDEN.into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:{HIDDEN}@{host}"),
            None => format!("{user}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}={HIDDEN}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Secret::deserialize(d).map(Self)
    }
}

/// Where Passport keeps its state, as `[store]` chose.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// A SQLite file: one process.
    Sqlite {
        path: PathBuf,
        durability: Durability,
    },
    /// A PostgreSQL database: one or more processes (replicas).
    Postgres { url: DatabaseUrl },
}

impl StoreLocation {
    /// The SQLite file, when the store is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Self::Sqlite { path, .. } => Some(path),
            Self::Postgres { .. } => None,
        }
    }
}

/// The file's path, or the address without its password: what logs and
/// messages name the database by.
impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite { path, .. } => write!(f, "{}", path.display()),
            Self::Postgres { url } => write!(f, "{url}"),
        }
    }
}

impl StoreConfig {
    /// The SQLite file when no `url` is given (`./passport.db` by default),
    /// PostgreSQL when `url` is; both at once is refused, naming both.
    pub fn location(&self) -> Result<StoreLocation, String> {
        match (&self.path, &self.url) {
            (Some(_), Some(_)) => Err("store.path, store.url: both are set, and Passport uses one database: keep path for SQLite (one process) or url for PostgreSQL (replicas), and remove the other (check PASSPORT_STORE__PATH and PASSPORT_STORE__URL too)".into()),
            (path, None) => Ok(StoreLocation::Sqlite {
                path: path.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATABASE)),
                durability: self.durability,
            }),
            (None, Some(url)) => {
                url.check_postgres("store.url", " (or set path for a SQLite file)")?;
                Ok(StoreLocation::Postgres { url: url.clone() })
            }
        }
    }
}

/// The SQLite file when `[store]` names no database.
pub const DEFAULT_DATABASE: &str = "./passport.db";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub store: StoreConfig,
    pub requests: RequestsConfig,
    pub policy: PolicyConfig,
    /// Group name → member user ids. Built-in local groups are used when no
    /// group is configured and no chat platform is set up (see README).
    pub groups: BTreeMap<String, Vec<String>>,
    /// `"aws"` or `"dry-run"`. Unset: AWS when `[aws]` is configured, else the
    /// dry-run provisioner, which a chat platform accepts only when it is
    /// written here explicitly.
    pub provisioner: Option<ProvisionerChoice>,
    pub dry_run: DryRunConfig,
    pub log: LogConfig,
    pub jobs: JobsConfig,
    /// AWS; absent means the dry-run provisioner, which changes nothing.
    pub aws: Option<AwsConfig>,
    /// Slack; absent means no Slack (the console is used when no chat platform is configured).
    pub slack: Option<SlackConfig>,
    /// Discord; absent means no Discord.
    pub discord: Option<DiscordConfig>,
    pub http: HttpConfig,
    /// The API for the `passport` client.
    pub api: ApiConfig,
    /// Passport's SSH certificate authority; absent means Linux users log in
    /// with the requester's registered key.
    pub ssh_ca: Option<SshCaConfig>,
    /// What protects the Logbook beyond the database file.
    pub audit: AuditConfig,
}

/// The Logbook's key and the second place its checkpoints go.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The key of the Logbook's links (HMAC-SHA256), kept outside the
    /// database. Unset: a plain hash chain. Once a Logbook is keyed, Passport
    /// refuses to write to it without this key.
    pub key: Option<Secret>,
    /// Keys the Logbook was keyed with before `key`: they verify older events
    /// and sign the switch to `key` (a rotation).
    pub previous_keys: Vec<Secret>,
    /// A file every checkpoint is also appended to, one line each.
    pub checkpoint_file: Option<PathBuf>,
}

/// The shortest Logbook key accepted, in bytes.
const MIN_AUDIT_KEY: usize = 32;

impl AuditConfig {
    /// The validated keys, or what is wrong with each by setting name (never its value).
    pub fn keys(&self) -> Result<ChainKeys, Vec<String>> {
        let mut errors = Vec::new();
        let mut check = |name: String, secret: &Secret| {
            let value = secret.expose();
            if let Some(flaw) = secret.flaw() {
                errors.push(format!("{name}: {flaw}"));
                None
            } else if value.len() < MIN_AUDIT_KEY {
                errors.push(format!(
                    "{name}: too short ({} characters): use at least {MIN_AUDIT_KEY} random characters, e.g. the output of `openssl rand -hex 32`",
                    value.len()
                ));
                None
            } else {
                Some(ChainKey::new(value.as_bytes()))
            }
        };
        let current = self.key.as_ref().and_then(|k| check("audit.key".into(), k));
        let previous: Vec<ChainKey> = self
            .previous_keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| check(format!("audit.previous_keys[{i}]"), k))
            .collect();
        if errors.is_empty() {
            Ok(ChainKeys { current, previous })
        } else {
            Err(errors)
        }
    }

    pub fn validate(&self) -> Result<AuditSettings, Vec<String>> {
        let keys = self.keys();
        let file = match &self.checkpoint_file {
            Some(f) if f.as_os_str().is_empty() => Err(vec![
                "audit.checkpoint_file: empty: name a file, or leave it out to post checkpoints to the audit channel only".to_owned(),
            ]),
            f => Ok(f.clone()),
        };
        match (keys, file) {
            (Ok(keys), Ok(checkpoint_file)) => Ok(AuditSettings {
                keys,
                checkpoint_file,
            }),
            (keys, file) => Err(keys
                .err()
                .into_iter()
                .flatten()
                .chain(file.err().into_iter().flatten())
                .collect()),
        }
    }
}

/// The validated `[audit]` section.
#[derive(Debug, Clone, Default)]
pub struct AuditSettings {
    pub keys: ChainKeys,
    pub checkpoint_file: Option<PathBuf>,
}

/// Scheduled jobs: cron expressions with a seconds field, in UTC; `""` or
/// `"off"` disables a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Retry failing removals; re-check that ended requests left no user behind.
    pub reconcile: String,
    /// A summary of active requests, failures and failing removals to the audit channel.
    pub digest: String,
    /// The Logbook's head (sequence number and hash) to the audit channel.
    pub checkpoint: String,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            reconcile: "0 */10 * * * *".into(),
            digest: "0 0 8 * * *".into(),
            checkpoint: "0 0 * * * *".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite database file. Unset: `./passport.db`, unless `url` is set.
    pub path: Option<PathBuf>,
    /// A PostgreSQL database (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`)
    /// instead of the SQLite file: what several replicas share. A secret:
    /// it may hold a password.
    pub url: Option<DatabaseUrl>,
    /// SQLite only: `normal` survives a crash of the process; `full` also a power cut, at some speed.
    pub durability: Durability,
    /// Delivered chat notices older than this are deleted by reconciliation
    /// (the Logbook keeps what happened for good).
    pub outbox_retention: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestsConfig {
    pub default_duration: String,
    pub min_duration: String,
    pub max_duration: String,
    pub max_instances: usize,
    pub ticket_pattern: String,
    pub ticket_url: Option<String>,
    pub approval_window: String,
    pub warnings: Vec<String>,
    /// Pending requests one requester may have open at once; 0 for no cap.
    pub max_pending_per_requester: u32,
    /// Commands that change something one person may send per minute; 0 for no limit.
    pub commands_per_minute: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub requesters: Vec<String>,
    pub admins: Vec<String>,
    pub default: RuleConfig,
    pub rules: Vec<RuleConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    /// Instance ids the rule is pinned to: it matches exactly these, whatever
    /// their tags. A rule names tags or instances, not both.
    pub instances: Vec<String>,
    pub approvers: Vec<String>,
    pub approvals: u32,
    pub max_duration: Option<String>,
    pub sudo: bool,
    /// Certificates for this rule's instances carry `permit-port-forwarding`.
    pub port_forwarding: bool,
    /// Session Manager may forward to other hosts through this rule's instances.
    pub remote_port_forwarding: bool,
    pub channel: Option<String>,
    /// Extensions adding more than this in total wait for an approver's click.
    pub extension_approval_over: Option<String>,
}

/// Which provisioner `provisioner = "…"` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProvisionerChoice {
    Aws,
    DryRun,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DryRunConfig {
    pub instances: Vec<DryRunInstance>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DryRunInstance {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_platform")]
    pub platform: String,
    #[serde(default = "default_state")]
    pub state: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub private_ips: Vec<String>,
}

fn default_platform() -> String {
    "linux".into()
}

fn default_state() -> String {
    "running".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `passport=debug`.
    pub level: String,
    /// `text` (readable lines) or `json` (one JSON object per line, for log
    /// collectors; fields such as `request` and `surface` become keys).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: None,
            url: None,
            durability: Durability::Normal,
            outbox_retention: "720h".into(),
        }
    }
}

impl Default for RequestsConfig {
    fn default() -> Self {
        Self {
            default_duration: "1h".into(),
            min_duration: "5m".into(),
            max_duration: "12h".into(),
            max_instances: 200,
            ticket_pattern: TicketRules::DEFAULT_PATTERN.into(),
            ticket_url: None,
            approval_window: "1h".into(),
            warnings: vec!["15m".into(), "5m".into()],
            max_pending_per_requester: 5,
            commands_per_minute: 60,
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            requesters: vec!["*".into()],
            admins: vec!["group:admins".into()],
            default: RuleConfig {
                name: "default".into(),
                approvers: vec!["group:approvers".into()],
                approvals: 1,
                ..RuleConfig::default()
            },
            rules: Vec::new(),
        }
    }
}

impl Default for RuleConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            tags: BTreeMap::new(),
            instances: Vec::new(),
            approvers: Vec::new(),
            approvals: 1,
            max_duration: None,
            sudo: false,
            port_forwarding: false,
            remote_port_forwarding: false,
            channel: None,
            extension_approval_over: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Every problem found in a configuration, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// Where the configuration came from, for the banner and `check-config`.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub file: Option<PathBuf>,
}

impl Config {
    /// Loads defaults, then `file` (or `./passport.toml` when it exists), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Loaded, ConfigErrors> {
        let default_file = Path::new("passport.toml");
        let chosen = match file {
            Some(f) if !f.exists() => {
                return Err(ConfigErrors(vec![format!(
                    "config file {} does not exist: check the --config path (or PASSPORT_CONFIG)",
                    f.display()
                )]))
            }
            Some(f) => Some(f.to_path_buf()),
            None if default_file.exists() => Some(default_file.to_path_buf()),
            None => None,
        };
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = &chosen {
            fig = fig.merge(Toml::file(f));
        }
        // Variables that are not configuration are skipped (is_ignored_variable);
        // those that name no field are reported by their own name, not by the
        // field figment would make of them.
        let (unknown, mut errors) =
            unknown_variables(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()));
        fig = fig.merge(
            Env::prefixed(ENV_PREFIX)
                .filter(move |key| {
                    let key = key.as_str();
                    !is_ignored_variable(key)
                        && !unknown.iter().any(|u| u.eq_ignore_ascii_case(key))
                })
                .split("__"),
        );
        let extracted: Result<Config, _> = fig.extract();
        let config = match extracted {
            Ok(config) if errors.is_empty() => config,
            Ok(_) => return Err(ConfigErrors(errors)),
            Err(e) => {
                errors.extend(e.into_iter().map(|e| {
                    let path = e.path.join(".");
                    let field = if path.is_empty() {
                        String::new()
                    } else {
                        format!("{path}: ")
                    };
                    format!("{field}{}", e.kind)
                }));
                return Err(ConfigErrors(errors));
            }
        };
        Ok(Loaded {
            config,
            file: chosen,
        })
    }

    /// True when no chat platform is configured, so the console is the surface.
    pub fn console_only(&self) -> bool {
        self.slack.is_none() && self.discord.is_none()
    }

    /// The groups in force: the configured ones, or the built-in local demo
    /// groups when none are configured, only the console is in use and
    /// nothing is provisioned for real (no `[aws]`).
    pub fn effective_groups(&self) -> BTreeMap<String, Vec<String>> {
        if self.groups.is_empty() && self.console_only() && self.aws.is_none() {
            BTreeMap::from([
                (
                    "approvers".to_owned(),
                    vec!["lead1".to_owned(), "lead2".to_owned()],
                ),
                ("admins".to_owned(), vec!["admin".to_owned()]),
            ])
        } else {
            self.groups.clone()
        }
    }

    pub fn validate(&self) -> Result<Settings, ConfigErrors> {
        let mut errors = Vec::new();
        match (self.provisioner, self.aws.is_some()) {
            (Some(ProvisionerChoice::Aws), false) => errors.push("provisioner: \"aws\" needs an [aws] section (see manifests/iam/README.md)".into()),
            (Some(ProvisionerChoice::DryRun), true) => errors.push("provisioner: \"dry-run\" and an [aws] section contradict each other: remove one".into()),
            (None, false) if !self.console_only() => errors.push("provisioner: a chat platform is configured but no [aws] section, so Passport would only pretend to grant access: add [aws] (see manifests/iam/README.md), or write provisioner = \"dry-run\" to try Passport without AWS (every card and message then says DRY RUN)".into()),
            _ => {}
        }
        if self.aws.is_some() && self.groups.is_empty() {
            errors.push("groups: [aws] provisions real users, so the approvers and admins must be configured: add a [groups] section (the built-in demo groups approvers = lead1, lead2 and admins = admin exist only without [aws])".into());
        }
        let mut span = |field: &str, text: &str| -> Span {
            match parse_setting(field, text) {
                Ok(s) if s > Span::ZERO => s,
                Ok(_) => {
                    errors.push(format!(
                        "{field}: {text:?} must be longer than zero: use forms like 30m, 2h, 1h30m"
                    ));
                    Span::ZERO
                }
                Err(e) => {
                    errors.push(e);
                    Span::ZERO
                }
            }
        };
        let r = &self.requests;
        let default = span("requests.default_duration", &r.default_duration);
        let min = span("requests.min_duration", &r.min_duration);
        let max = span("requests.max_duration", &r.max_duration);
        let approval_window = span("requests.approval_window", &r.approval_window);
        let outbox_retention = span("store.outbox_retention", &self.store.outbox_retention);
        let warnings: Vec<Span> = r
            .warnings
            .iter()
            .enumerate()
            .map(|(i, w)| span(&format!("requests.warnings[{i}]"), w))
            .collect();
        let rule_max: Vec<Option<Span>> = self
            .policy
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                rule.max_duration
                    .as_ref()
                    .map(|m| span(&format!("policy.rules[{i}].max_duration"), m))
            })
            .collect();
        let default_max = self
            .policy
            .default
            .max_duration
            .as_ref()
            .map(|m| span("policy.default.max_duration", m));
        if max > DurationLimits::HARD_MAX {
            errors.push(format!(
                "requests.max_duration: {max} is above the 12h cap: use 12h or less"
            ));
        }
        if min > max && max > Span::ZERO {
            errors.push(format!(
                "requests.min_duration: {min} is longer than requests.max_duration ({max})"
            ));
        }
        if (default < min || default > max) && default > Span::ZERO && max > Span::ZERO {
            errors.push(format!(
                "requests.default_duration: {default} is outside {min}..{max}"
            ));
        }
        if r.max_instances == 0 || r.max_instances > 1000 {
            errors.push(format!(
                "requests.max_instances: {} must be between 1 and 1000",
                r.max_instances
            ));
        }
        let tickets = match TicketRules::new(&r.ticket_pattern, r.ticket_url.clone()) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!(
                    "requests.ticket_pattern: not a valid regular expression: {e}"
                ));
                TicketRules::default()
            }
        };
        if let Some(url) = &r.ticket_url {
            if !url.contains("{ticket}")
                || !(url.starts_with("https://") || url.starts_with("http://"))
            {
                errors
                    .push("requests.ticket_url: must be an http(s) URL containing {ticket}".into());
            }
        }

        let mut principals = |field: &str, list: &[String]| -> Vec<Principal> {
            list.iter()
                .enumerate()
                .filter_map(|(i, p)| match Principal::parse(p) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        errors.push(format!("{field}[{i}]: {e}"));
                        None
                    }
                })
                .collect()
        };
        let requesters = principals("policy.requesters", &self.policy.requesters);
        let admins = principals("policy.admins", &self.policy.admins);
        let groups = self.effective_groups();
        let build_rule = |field: &str,
                          rc: &RuleConfig,
                          max_duration: Option<Span>,
                          errors: &mut Vec<String>|
         -> Rule {
            let approvers: Vec<Principal> = rc
                .approvers
                .iter()
                .enumerate()
                .filter_map(|(i, p)| match Principal::parse(p) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        errors.push(format!("{field}.approvers[{i}]: {e}"));
                        None
                    }
                })
                .collect();
            if rc.approvals > 0 && approvers.is_empty() {
                errors.push(format!(
                    "{field}.approvers: a rule that needs {} approval(s) must name its approvers",
                    rc.approvals
                ));
            }
            if approvers.contains(&Principal::Anyone) {
                errors.push(format!(
                    "{field}.approvers: \"*\" would let anyone approve: name users or groups"
                ));
            }
            for p in &approvers {
                if let Principal::Group(g) = p {
                    let slack_group = self
                        .slack
                        .as_ref()
                        .is_some_and(|s| s.usergroups.contains_key(g));
                    let discord_group = self
                        .discord
                        .as_ref()
                        .is_some_and(|d| d.roles.contains_key(g));
                    if !groups.contains_key(g) && !slack_group && !discord_group {
                        errors.push(format!(
                            "{field}.approvers: group {g:?} is not defined under [groups], [slack.usergroups] or [discord.roles]"
                        ));
                    }
                }
            }
            if rc.approvals > 20 {
                errors.push(format!(
                    "{field}.approvals: {} is more than 20",
                    rc.approvals
                ));
            }
            let extension_approval_over = rc.extension_approval_over.as_ref().and_then(|text| {
                match parse_setting(&format!("{field}.extension_approval_over"), text) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                }
            });
            let rule_name = if rc.name.trim().is_empty() {
                "default"
            } else {
                rc.name.trim()
            };
            if extension_approval_over.is_some() && rc.approvals == 0 {
                errors.push(format!(
                    "{field}.extension_approval_over: rule {rule_name:?} approves automatically (approvals = 0), so nobody could approve its extensions: set approvals to 1 or more, or remove extension_approval_over"
                ));
            }
            if let Some(possible) = possible_approvers(&approvers, &groups, |g| {
                self.slack
                    .as_ref()
                    .is_some_and(|s| s.usergroups.contains_key(g))
                    || self
                        .discord
                        .as_ref()
                        .is_some_and(|d| d.roles.contains_key(g))
            }) {
                let needed = rc.approvals as usize;
                if needed > 0 && possible.len() < needed {
                    let what = if extension_approval_over.is_some() {
                        "its requests and guarded extensions"
                    } else {
                        "its requests"
                    };
                    let names = if possible.is_empty() {
                        "nobody".to_owned()
                    } else {
                        possible.iter().cloned().collect::<Vec<_>>().join(", ")
                    };
                    errors.push(format!(
                        "{field}.approvals: rule {rule_name:?} needs {needed} approvals from different people, but its approvers are only {} ({names}), so {what} could never be approved: lower approvals or add approvers",
                        possible.len()
                    ));
                }
            }
            let instances = rc
                .instances
                .iter()
                .enumerate()
                .filter_map(|(i, id)| match InstanceId::parse(id) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        errors.push(format!("{field}.instances[{i}]: {e}"));
                        None
                    }
                })
                .collect();
            Rule {
                name: rc.name.clone(),
                tags: rc.tags.clone(),
                instances,
                approvers,
                approvals: rc.approvals,
                max_duration,
                sudo: rc.sudo,
                port_forwarding: rc.port_forwarding,
                remote_port_forwarding: rc.remote_port_forwarding,
                channel: rc.channel.clone(),
                extension_approval_over,
            }
        };
        let mut default_rule = build_rule(
            "policy.default",
            &self.policy.default,
            default_max,
            &mut errors,
        );
        if default_rule.name.is_empty() {
            default_rule.name = "default".into();
        }
        if !self.policy.default.instances.is_empty() {
            errors.push("policy.default.instances: the default rule applies to every instance no other rule matches: pin instances in a [[policy.rules]] entry instead".into());
        }
        let mut rules = Vec::new();
        for (i, rc) in self.policy.rules.iter().enumerate() {
            let field = format!("policy.rules[{i}]");
            if rc.name.trim().is_empty() {
                errors.push(format!("{field}.name: every rule needs a name"));
            }
            if rc.tags.is_empty() && rc.instances.is_empty() {
                errors.push(format!("{field}.tags: a rule must match at least one tag or name its instances; use [policy.default] for everything else"));
            }
            if !rc.tags.is_empty() && !rc.instances.is_empty() {
                errors.push(format!("{field}.instances: a rule pinned to instance ids matches them whatever their tags: remove its tags, or its instances"));
            }
            if self.policy.rules[..i].iter().any(|o| o.name == rc.name) {
                errors.push(format!(
                    "{field}.name: {:?} is used by another rule",
                    rc.name
                ));
            }
            rules.push(build_rule(
                &field,
                rc,
                rule_max.get(i).copied().flatten(),
                &mut errors,
            ));
        }
        for (name, members) in &groups {
            if members
                .iter()
                .any(|m| m.trim().is_empty() || m.chars().any(char::is_whitespace))
            {
                errors.push(format!("groups.{name}: member ids must be single words"));
            }
        }

        let mut known = Vec::new();
        for (i, d) in self.dry_run.instances.iter().enumerate() {
            let field = format!("dry_run.instances[{i}]");
            let id = match InstanceId::parse(&d.id) {
                Ok(id) => id,
                Err(e) => {
                    errors.push(format!("{field}.id: {e}"));
                    continue;
                }
            };
            let platform = match d.platform.as_str() {
                "linux" => Platform::Linux,
                "windows" => Platform::Windows,
                other => {
                    errors.push(format!(
                        "{field}.platform: {other:?} is not linux or windows"
                    ));
                    Platform::Linux
                }
            };
            known.push(InstanceInfo {
                id,
                name: d.name.clone(),
                platform,
                state: d.state.clone(),
                tags: d.tags.clone(),
                private_ips: d.private_ips.clone(),
            });
        }
        let aws = match self.aws.as_ref().map(AwsConfig::validate) {
            Some(Ok(aws)) => {
                // Requests may have more instances than one session policy can
                // name (STS takes 2,048 characters): the client asks for the
                // credentials of the one instance it connects to.
                Some(aws)
            }
            Some(Err(problems)) => {
                errors.extend(problems);
                None
            }
            None => None,
        };
        let mut jobs = Jobs::default();
        for (kind, field, expression) in [
            (JobKind::Reconcile, "jobs.reconcile", &self.jobs.reconcile),
            (JobKind::Digest, "jobs.digest", &self.jobs.digest),
            (
                JobKind::Checkpoint,
                "jobs.checkpoint",
                &self.jobs.checkpoint,
            ),
        ] {
            let expression = expression.trim();
            if expression.is_empty() || expression.eq_ignore_ascii_case("off") {
                continue;
            }
            match Job::new(kind, expression) {
                Ok(job) => jobs.jobs.push(job),
                Err(e) => errors.push(format!("{field}: {e}")),
            }
        }
        let slack = match self.slack.as_ref().map(SlackConfig::validate) {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                errors.extend(e);
                None
            }
            None => None,
        };
        let discord = match self.discord.as_ref().map(DiscordConfig::validate) {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                errors.extend(e);
                None
            }
            None => None,
        };
        let ssh_ca = match self.ssh_ca.as_ref().map(SshCaConfig::validate) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                errors.extend(e);
                None
            }
            None => None,
        };
        if self.slack.is_some() && self.discord.is_some() {
            errors.push("slack, discord: both are configured: Passport serves one chat platform; run a second Passport with its own [store] path for the other".into());
        }
        let http = match self.http.validate() {
            Ok(h) => Some(h),
            Err(e) => {
                errors.extend(e);
                None
            }
        };
        let api = match self.api.validate() {
            Ok(a) => a,
            Err(e) => {
                errors.extend(e);
                ApiSettings::default()
            }
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            errors.push(format!("log.level: {e}"));
        }
        let audit = match self.audit.validate() {
            Ok(a) => a,
            Err(e) => {
                errors.extend(e);
                AuditSettings::default()
            }
        };
        let store = self.store.location().unwrap_or_else(|e| {
            errors.push(e);
            StoreLocation::Sqlite {
                path: PathBuf::from(DEFAULT_DATABASE),
                durability: self.store.durability,
            }
        });

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let limits = DurationLimits { default, min, max };
        let mut warnings = warnings;
        warnings.sort_by(|a, b| b.cmp(a));
        warnings.dedup();
        Ok(Settings {
            grammar: Grammar {
                durations: limits,
                tickets,
                max_instances: r.max_instances,
            },
            policy: Policy {
                requesters,
                admins,
                default_rule,
                rules,
                approval_window,
                max_duration: max,
            },
            warnings,
            groups,
            limits: PersonLimits {
                max_pending: r.max_pending_per_requester,
                commands_per_minute: r.commands_per_minute,
            },
            dry_run_instances: known,
            dry_run_label: self.aws.is_none() && !self.console_only(),
            jobs,
            aws,
            slack,
            discord,
            http: http.unwrap_or_default(),
            api,
            ssh_ca,
            store,
            outbox_retention,
            audit,
        })
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot show the configuration: {e}\n"))
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub grammar: Grammar,
    pub policy: Policy,
    pub warnings: Vec<Span>,
    pub groups: BTreeMap<String, Vec<String>>,
    pub dry_run_instances: Vec<InstanceInfo>,
    pub limits: PersonLimits,
    /// A chat platform runs on the dry-run provisioner (asked for explicitly):
    /// every card and message says DRY RUN.
    pub dry_run_label: bool,
    pub jobs: Jobs,
    pub aws: Option<AwsSettings>,
    /// Present when Slack is configured.
    pub slack: Option<SlackSettings>,
    /// Present when Discord is configured.
    pub discord: Option<DiscordSettings>,
    pub http: HttpSettings,
    pub api: ApiSettings,
    /// Present when the SSH CA is configured.
    pub ssh_ca: Option<SshCaSettings>,
    /// The database: a SQLite file or PostgreSQL.
    pub store: StoreLocation,
    pub outbox_retention: Span,
    pub audit: AuditSettings,
}

/// Everyone who could ever approve for `approvers`, when configuration alone
/// says who that is: user ids and the members of `[groups]`. `None` when a
/// group is also (or only) read from Slack or Discord (`from_platform`), whose
/// members are known only at run time.
fn possible_approvers(
    approvers: &[Principal],
    groups: &BTreeMap<String, Vec<String>>,
    from_platform: impl Fn(&str) -> bool,
) -> Option<BTreeSet<String>> {
    let mut people = BTreeSet::new();
    for p in approvers {
        match p {
            Principal::Anyone => return None,
            Principal::User(u) => {
                people.insert(u.as_str().to_owned());
            }
            Principal::Group(g) => {
                if from_platform(g) {
                    return None;
                }
                people.extend(groups.get(g).into_iter().flatten().cloned());
            }
        }
    }
    Some(people)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_role_works_with_requests_of_any_size() {
        let c = Config {
            aws: Some(AwsConfig {
                region: Some("eu-west-1".into()),
                session_role_arn: Some("arn:aws:iam::123456789012:role/passport-session".into()),
                ..AwsConfig::default()
            }),
            ..Config::default()
        };
        let errs = c
            .validate()
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert!(!errs.contains("aws.session_role_arn"), "{errs}");
    }

    #[test]
    fn the_api_token_lifetime_is_validated_and_named() {
        let mut c = Config::default();
        assert_eq!(
            c.validate().map(|s| s.api.token_ttl).ok(),
            Some(Span::from_hours(12))
        );
        c.api.token_ttl = "31d".into();
        let errs = c.validate().unwrap_err().to_string();
        assert!(
            errs.contains("api.token_ttl: \"31d\" must be from 5m to 720h"),
            "{errs}"
        );
        c.api.token_ttl = "2d".into();
        assert_eq!(
            c.validate().map(|s| s.api.token_ttl).ok(),
            Some(Span::from_hours(48))
        );
        c.api.token_ttl = "168h".into();
        assert_eq!(
            c.validate().map(|s| s.api.token_ttl).ok(),
            Some(Span::from_hours(168))
        );
    }

    #[test]
    fn with_aws_the_demo_approvers_never_apply() {
        let mut c = Config {
            aws: Some(AwsConfig::default()),
            ..Config::default()
        };
        assert!(c.effective_groups().is_empty());
        let errs = c.validate().unwrap_err().to_string();
        assert!(
            errs.contains("groups: [aws] provisions real users"),
            "{errs}"
        );
        c.groups = BTreeMap::from([
            ("approvers".into(), vec!["U0LEAD".into()]),
            ("admins".into(), vec!["U0BOSS".into()]),
        ]);
        let settings = c.validate().unwrap();
        assert_eq!(settings.groups["approvers"], vec!["U0LEAD".to_owned()]);
    }

    #[test]
    fn defaults_validate() {
        let s = Config::default().validate().unwrap();
        assert_eq!(s.grammar.durations, DurationLimits::default());
        assert_eq!(
            s.warnings,
            vec![Span::from_minutes(15), Span::from_minutes(5)]
        );
        assert!(s.groups.contains_key("approvers"));
    }

    #[test]
    fn an_extension_nobody_could_approve_is_a_configuration_error() {
        let mut c = Config::default();
        c.policy.rules.push(RuleConfig {
            name: "dev".into(),
            tags: BTreeMap::from([("env".into(), "dev".into())]),
            approvals: 0,
            extension_approval_over: Some("1h".into()),
            ..RuleConfig::default()
        });
        let errs = c.validate().unwrap_err().to_string();
        assert!(
            errs.contains(
                "policy.rules[0].extension_approval_over: rule \"dev\" approves automatically"
            ),
            "{errs}"
        );
    }

    #[test]
    fn a_rule_needing_more_approvals_than_it_has_approvers_is_a_configuration_error() {
        let mut c = Config {
            groups: BTreeMap::from([
                ("sre-leads".into(), vec!["U1".into(), "U2".into()]),
                ("approvers".into(), vec!["U1".into()]),
                ("admins".into(), vec!["U9".into()]),
            ]),
            ..Config::default()
        };
        c.policy.rules.push(RuleConfig {
            name: "prod".into(),
            tags: BTreeMap::from([("env".into(), "prod".into())]),
            approvers: vec!["group:sre-leads".into(), "U1".into()],
            approvals: 3,
            extension_approval_over: Some("1h".into()),
            ..RuleConfig::default()
        });
        let errs = c.validate().unwrap_err().to_string();
        assert!(
            errs.contains("policy.rules[0].approvals: rule \"prod\" needs 3 approvals from different people, but its approvers are only 2 (U1, U2), so its requests and guarded extensions could never be approved"),
            "{errs}"
        );
        // An empty group leaves nobody to approve.
        c.policy.rules[0].approvals = 1;
        c.groups.insert("sre-leads".into(), Vec::new());
        c.policy.rules[0].approvers = vec!["group:sre-leads".into()];
        let errs = c.validate().unwrap_err().to_string();
        assert!(errs.contains("its approvers are only 0 (nobody)"), "{errs}");
        // Enough people: accepted.
        c.groups
            .insert("sre-leads".into(), vec!["U1".into(), "U2".into()]);
        c.policy.rules[0].approvals = 2;
        c.validate().unwrap();
    }

    #[test]
    fn approvers_read_from_slack_are_not_counted_at_start() {
        let mut c = Config {
            provisioner: Some(ProvisionerChoice::DryRun),
            slack: Some(crate::adapters::slack::SlackConfig {
                usergroups: BTreeMap::from([("sre-leads".into(), "S1".into())]),
                ..Default::default()
            }),
            ..Config::default()
        };
        c.policy.rules.push(RuleConfig {
            name: "prod".into(),
            tags: BTreeMap::from([("env".into(), "prod".into())]),
            approvers: vec!["group:sre-leads".into()],
            approvals: 3,
            ..RuleConfig::default()
        });
        let errs = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!errs.contains("policy.rules[0].approvals"), "{errs}");
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut c = Config::default();
        c.requests.max_duration = "13h".into();
        c.requests.default_duration = "soon".into();
        c.requests.ticket_pattern = "(".into();
        c.policy.rules.push(RuleConfig {
            name: "prod".into(),
            tags: BTreeMap::from([("env".into(), "prod".into())]),
            approvers: vec!["group:nobody".into()],
            approvals: 2,
            ..RuleConfig::default()
        });
        let errs = c.validate().unwrap_err().0.join("\n");
        assert!(errs.contains("requests.max_duration"), "{errs}");
        assert!(errs.contains("requests.default_duration"), "{errs}");
        assert!(errs.contains("requests.ticket_pattern"), "{errs}");
        assert!(
            errs.contains("policy.rules[0].approvers: group \"nobody\""),
            "{errs}"
        );
    }

    #[test]
    fn rules_may_be_pinned_to_instance_ids_read_from_toml() {
        let c: Config = toml::from_str(
            r#"
            [groups]
            approvers = ["lead1"]
            sre-leads = ["lead1", "lead2"]
            [[policy.rules]]
            name = "databases"
            instances = ["i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2"]
            approvers = ["group:sre-leads"]
            approvals = 2
            "#,
        )
        .unwrap();
        let s = c.validate().unwrap();
        let pinned = &s.policy.rules[0];
        assert!(pinned.tags.is_empty());
        let ids: Vec<&str> = pinned.instances.iter().map(InstanceId::as_str).collect();
        assert_eq!(ids, ["i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2"]);
    }

    #[test]
    fn a_pinned_rule_names_ids_only_and_the_default_rule_pins_nothing() {
        let mut c = Config::default();
        c.policy.default.instances = vec!["i-0aaaaaaaaaaaaaaa1".into()];
        c.policy.rules.push(RuleConfig {
            name: "both".into(),
            tags: BTreeMap::from([("env".into(), "prod".into())]),
            instances: vec!["i-0aaaaaaaaaaaaaaa1".into()],
            approvals: 0,
            ..RuleConfig::default()
        });
        c.policy.rules.push(RuleConfig {
            name: "typo".into(),
            instances: vec!["web-1".into()],
            approvals: 0,
            ..RuleConfig::default()
        });
        let errs = c.validate().unwrap_err().0.join("\n");
        for expected in [
            "policy.default.instances: the default rule applies to every instance no other rule matches",
            "policy.rules[0].instances: a rule pinned to instance ids matches them whatever their tags",
            "policy.rules[1].instances[0]:",
        ] {
            assert!(errs.contains(expected), "{expected} not in:\n{errs}");
        }
        assert!(!errs.contains("policy.rules[1].tags"), "{errs}");
    }

    #[test]
    fn anyone_cannot_be_an_approver() {
        let mut c = Config::default();
        c.policy.default.approvers = vec!["*".into()];
        let errs = c.validate().unwrap_err().0.join("\n");
        assert!(errs.contains("would let anyone approve"), "{errs}");
    }

    #[test]
    fn a_database_url_never_shows_its_password() {
        let url = DatabaseUrl::new(
            "postgres://passport:s3cr%40t@db.example:5432/passport?sslmode=require&password=other",
        );
        for shown in [
            format!("{url:?}"),
            url.to_string(),
            serde_json::to_string(&url).unwrap(),
        ] {
            assert!(!shown.contains("s3cr"), "{shown}");
            assert!(!shown.contains("other"), "{shown}");
            assert!(shown.contains("postgres://passport:[redacted]@db.example:5432/passport?sslmode=require&password=[redacted]"), "{shown}");
        }
        assert_eq!(
            DatabaseUrl::new("postgres://db/passport").redacted(),
            "postgres://db/passport"
        );
        assert_eq!(DatabaseUrl::new("not a url").redacted(), "[redacted]");
        let c = Config {
            store: StoreConfig {
                url: Some(url),
                ..StoreConfig::default()
            },
            ..Config::default()
        };
        let shown = format!("{}{:?}", c.to_toml(), c.validate().unwrap());
        assert!(!shown.contains("s3cr"), "{shown}");
    }

    #[test]
    fn the_store_is_sqlite_unless_a_url_is_given_and_never_both() {
        let store = |path: Option<&str>, url: Option<&str>| StoreConfig {
            path: path.map(PathBuf::from),
            url: url.map(DatabaseUrl::new),
            ..StoreConfig::default()
        };
        assert!(matches!(
            store(None, None).location(),
            Ok(StoreLocation::Sqlite { path, .. }) if path == Path::new("./passport.db")
        ));
        assert!(matches!(
            store(Some("/var/lib/p.db"), None).location(),
            Ok(StoreLocation::Sqlite { path, .. }) if path == Path::new("/var/lib/p.db")
        ));
        assert!(matches!(
            store(None, Some("postgres://u:p@h/d")).location(),
            Ok(StoreLocation::Postgres { .. })
        ));
        let both = store(Some("./passport.db"), Some("postgres://u:pw@h/d"))
            .location()
            .unwrap_err();
        assert!(both.contains("store.path, store.url"), "{both}");
        assert!(!both.contains("pw"), "{both}");
        let wrong = store(None, Some("mysql://u:pw@h/d"))
            .location()
            .unwrap_err();
        assert!(
            wrong.contains("store.url") && wrong.contains("postgres://USER"),
            "{wrong}"
        );
        assert!(!wrong.contains(":pw@"), "{wrong}");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::from("xoxb-very-secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[redacted]\"");
        assert_eq!(s.expose(), "xoxb-very-secret");
    }

    #[test]
    fn kubernetes_service_links_are_not_configuration() {
        for key in [
            "SERVICE_HOST",
            "SERVICE_PORT",
            "SERVICE_PORT_HTTP",
            "SERVICE_PORT_METRICS_2",
            "PORT",
            "PORT_8080_TCP",
            "PORT_8080_TCP_PROTO",
            "PORT_8080_TCP_PORT",
            "PORT_8080_TCP_ADDR",
            "PORT_53_UDP",
        ] {
            assert!(is_service_link(key), "{key}");
        }
        for key in [
            "SERVICE",
            "SERVICE_HOSTNAME",
            "SERVICE_PORT_",
            "PORT_",
            "PORT_HTTP",
            "PORT_8080",
            "PORT_8080_TCP_HOST",
            "PORT_8080_TCP_ADDR_X",
            "PORTS",
            "SLACK__BOT_TOKEN",
        ] {
            assert!(!is_service_link(key), "{key}");
        }
    }

    #[test]
    fn the_target_of_store_copy_is_not_configuration() {
        let (keys, errors) = unknown_variables(
            ["PASSPORT_STORE_COPY_TO", "PASSPORT_STORE_COPY_TOO"]
                .iter()
                .map(|v| (*v).to_owned()),
        );
        assert_eq!(keys, vec!["store_copy_too"], "{errors:?}");
    }

    #[test]
    fn an_unknown_variable_is_named_with_the_closest_valid_one() {
        let vars = [
            "HOME",
            "PASSPORT_SLACK__BOT_TOKEN",
            "PASSPORT_GROUPS__ON_CALL",
            "PASSPORT_POLICY__DEFAULT__TAGS__ENV",
            "PASSPORT_AWS__REGION",
            "PASSPORT_LOG",
            "PASSPORT_SERVICE_HOST",
            "PASSPORT_SLACK_BOT_TOKEN",
            "PASSPORT_REQUESTS__MAX_DURATON",
            "PASSPORT_NOTHING_LIKE_IT_AT_ALL",
        ];
        let (keys, errors) = unknown_variables(vars.iter().map(|v| (*v).to_owned()));
        assert_eq!(
            keys,
            vec![
                "slack_bot_token",
                "requests__max_duraton",
                "nothing_like_it_at_all"
            ]
        );
        assert!(
            errors[0].starts_with("PASSPORT_SLACK_BOT_TOKEN: ")
                && errors[0].ends_with("did you mean PASSPORT_SLACK__BOT_TOKEN?"),
            "{errors:?}"
        );
        assert!(
            errors[1].ends_with("did you mean PASSPORT_REQUESTS__MAX_DURATION?"),
            "{errors:?}"
        );
        assert!(!errors[2].contains("did you mean"), "{errors:?}");
    }

    #[test]
    fn a_secret_loses_the_line_ending_of_its_file_and_nothing_else() {
        for written in ["abc\n", "abc\r\n", "abc"] {
            let s: Secret = serde_json::from_value(serde_json::json!(written)).unwrap();
            assert_eq!(s.expose(), "abc", "{written:?}");
        }
        assert_eq!(Secret::from("a b\n").expose(), "a b");
        // One line ending, not every one.
        assert_eq!(Secret::from("ab\n\n").expose(), "ab\n");
        assert_eq!(Secret::from("ab\r\n").flaw(), None);
        assert!(Secret::from("ab\n\n")
            .flaw()
            .unwrap()
            .contains("line break"));
        assert!(Secret::from("a\u{1}b").flaw().unwrap().contains("control"));
        assert!(Secret::from("a\tb").flaw().unwrap().contains("control"));
        assert!(Secret::from("a b").flaw().unwrap().contains("space"));
        let err = serde_json::from_value::<Secret>(serde_json::json!(123456789))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("must be text") && !err.contains("123456789"),
            "{err}"
        );
    }
}
