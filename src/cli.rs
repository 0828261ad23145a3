//! The command line: the server's `serve`, `console`, `migrate`, `check-config`,
//! `ssm`, `ca`, `audit`, and the client's commands (`login`, `ssh`, … in
//! [`crate::client`]), which need no configuration or database.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::adapters::clock::{OffsetClock, SystemClock};
use crate::adapters::console::stdout_output;
use crate::adapters::ssh_ca::{CaKeySource, CaKeyType, CertificateAuthority};
use crate::app::engine::timeline;
use crate::app::ports::{Store, Verification};
use crate::config::{Config, DatabaseUrl, Loaded, LogFormat, Settings, StoreLocation};
use crate::domain::logbook::{ChainKeys, Checkpoint};
use crate::domain::time::Timestamp;
use crate::domain::values::RequestId;
use crate::startup;

#[derive(Debug, Parser)]
#[command(
    name = "passport",
    version,
    about = "Just-in-time access to EC2 instances, approved in chat"
)]
pub struct Cli {
    /// Configuration file (default: ./passport.toml when it exists). Environment
    /// variables PASSPORT_… override it, with __ for nesting (PASSPORT_STORE__PATH).
    #[arg(long, global = true, value_name = "FILE", env = "PASSPORT_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bot: chat surfaces, timers and outbox delivery. With no chat
    /// platform configured, reads commands from this terminal like `console`.
    Serve,
    /// Type commands as any user, e.g. `dev1: /passport request i-0123456789abcdef0 2h ticket#123 disk full`,
    /// and see every card, thread reply, direct message and audit line. Exits at end of input.
    Console,
    /// Create the database (SQLite or PostgreSQL, as [store] says) or bring it
    /// up to date, then exit.
    Migrate,
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig,
    /// Manage Passport's SSM documents (install and check need an [aws] section).
    Ssm {
        #[command(subcommand)]
        command: SsmCommand,
    },
    /// Passport's SSH certificate authority: create, show and rotate its key.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Check this deployment from the inside: configuration, database and its
    /// file system, SSH CA key, chat token and channels, groups, AWS identity
    /// and SSM documents. Exits 1 when something is wrong, saying how to fix it.
    Doctor,
    /// Ask the running server's /readyz (or /healthz) and exit 0 when it
    /// answers 200: a container HEALTHCHECK that needs no curl in the image.
    Healthcheck {
        /// The URL to ask. Default: /healthz on [http] listen, reached over loopback.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Copy the live SQLite database consistently (SQLite's online backup, safe
    /// while `serve` runs) to a new FILE, then verify the copy's Logbook. Needs
    /// only [store]. On PostgreSQL, use snapshots or pg_dump instead.
    Backup {
        /// The new file to write; an existing file is never overwritten.
        file: PathBuf,
    },
    /// Put a backup in place of the SQLite database (`serve` must be stopped). The
    /// backup's Logbook is verified first; the current database is kept beside
    /// it as <path>.before-restore-<time>. Needs only [store].
    Restore {
        /// A file written by `passport backup`.
        file: PathBuf,
    },
    /// The database as a whole: move a deployment from SQLite to PostgreSQL.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Chat notices set aside after the platform refused them repeatedly:
    /// list them, or put them back in line. Needs only [store].
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Inspect the Logbook, the hash-chained audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

/// The client's commands: they run on an engineer's machine and talk to a
/// Passport server over `/api/v1`. Files live in the platform's configuration
/// directory (`passport login` says where), or in PASSPORT_CLIENT_DIR.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Sign in to a Passport server: shows a code to type in Slack or Discord.
    Login {
        /// The server's address, e.g. https://passport.example.com
        server: String,
    },
    /// Sign out: ends the token on the server and deletes it (and every
    /// request's keys and credentials) here.
    Logout,
    /// Who the saved sign-in belongs to.
    Whoami,
    /// Ask for access, as in chat: `passport request i-… [i-…] 2h ticket#123 reason words…`.
    Request {
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true, value_name = "WORDS")]
        words: Vec<String>,
    },
    /// Your requests.
    List,
    /// One request (default: your active one).
    Show {
        #[arg(value_name = "AR-n")]
        request: Option<String>,
    },
    /// Extend an active request: `passport extend [AR-n] 1h`.
    Extend {
        #[arg(required = true, num_args = 1..=2, value_name = "[AR-n] DURATION")]
        args: Vec<String>,
    },
    /// End an active request's access now.
    Complete {
        #[arg(value_name = "AR-n")]
        request: Option<String>,
    },
    /// Withdraw a request that is not active yet.
    Cancel {
        #[arg(value_name = "AR-n")]
        request: Option<String>,
    },
    /// ssh to an instance over Session Manager: `passport ssh [AR-n] [INSTANCE] [-- ssh args]`.
    /// INSTANCE is an instance id or its Name tag; either may be left out when only one fits.
    Ssh {
        #[arg(num_args = 0..=2, value_name = "[AR-n] [INSTANCE]")]
        target: Vec<String>,
        /// Passed to ssh after the host: options, then the remote command.
        #[arg(last = true, value_name = "SSH ARGS")]
        ssh_args: Vec<String>,
    },
    /// Copy files with scp: `passport scp [AR-n] [scp options] SRC… DST`, remote files as INSTANCE:path.
    Scp {
        #[arg(required = true, num_args = 2.., allow_hyphen_values = true, value_name = "[AR-n] ARGS")]
        args: Vec<String>,
    },
    /// Forward a local port to a port on an instance (or, with --remote-host, on a host it reaches).
    Forward {
        #[arg(required = true, num_args = 2..=3, value_name = "[AR-n] INSTANCE LOCAL:REMOTE")]
        args: Vec<String>,
        /// Forward to this host through the instance (when the request allows it).
        #[arg(long, value_name = "HOST")]
        remote_host: Option<String>,
    },
    /// Remote Desktop to a Windows instance: forwards a free local port to 3389.
    Rdp {
        #[arg(num_args = 0..=2, value_name = "[AR-n] [INSTANCE]")]
        target: Vec<String>,
    },
    /// Print ssh Host blocks (i-….passport) for plain ssh, scp, sftp, rsync and editors.
    SshConfig,
    /// What ssh's ProxyCommand runs: a Session Manager session to HOST:PORT on stdin/stdout.
    #[command(hide = true)]
    Proxy {
        /// The client directory (default: the platform's).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        #[arg(long, value_name = "AR-n")]
        request: String,
        host: String,
        port: u16,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy the SQLite database [store] path names into an empty PostgreSQL
    /// database: every table, in one transaction, the Logbook with its ids and
    /// hashes. Stop `serve` first. The SQLite Logbook is verified before
    /// anything is written, and the copy's after, with the same [audit] keys.
    /// Then set [store] url to the new database (and remove path). Needs only
    /// [store] and [audit].
    Copy {
        /// The PostgreSQL database to fill, postgres://USER:PASSWORD@HOST:PORT/DATABASE;
        /// it must hold no Passport data. Prefer the variable: an address given
        /// here, password included, is visible to every user of this machine (ps).
        #[arg(
            long,
            value_name = "URL",
            env = "PASSPORT_STORE_COPY_TO",
            hide_env_values = true
        )]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Print the set-aside notices, oldest first, with why the platform refused them.
    List,
    /// Send these set-aside notices again (by id from `list`), or all of them
    /// with --all; the running `serve` delivers them.
    Retry {
        ids: Vec<i64>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SsmCommand {
    /// Create or update the grant and revoke documents in SSM.
    Install,
    /// Check that the documents in SSM are this version's; exits 1 when missing or outdated.
    Check,
    /// Write the documents this version runs into DIR as `<name>.yaml`, under the
    /// names [aws] configures (or the default names), for review or for installing
    /// them with other tools. Needs no AWS access.
    Export {
        /// Where to write them (created when missing; files of the same names are replaced).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA key (never replacing one) and print its public key line.
    Init {
        /// ed25519 (default), or rsa (4096 bits, signing with rsa-sha2-512) for old sshd.
        #[arg(long = "type", value_name = "TYPE", default_value = "ed25519")]
        kind: String,
        /// Where to write it (default: [ssh_ca] key_path).
        #[arg(long, value_name = "FILE")]
        key_path: Option<PathBuf>,
    },
    /// Print the public key lines instances trust: the signing key, then keys of a rotation.
    Show,
    /// Start a rotation: create the next CA key and print the steps that move to
    /// it without a moment where logins fail.
    Rotate {
        /// Where to write the new key.
        #[arg(long, value_name = "FILE")]
        key_path: PathBuf,
        /// ed25519 (default) or rsa.
        #[arg(long = "type", value_name = "TYPE", default_value = "ed25519")]
        kind: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; exits 1 naming the first bad event, 3 when keyed
    /// events could not be checked because [audit] key is not set.
    Verify {
        /// Also check against a checkpoint posted to the audit channel, as SEQ:HASH;
        /// this catches events deleted from the end and a chain rewritten wholesale.
        #[arg(long, value_name = "SEQ:HASH")]
        checkpoint: Vec<String>,
        /// Also check every line of a checkpoint file ([audit] checkpoint_file).
        #[arg(long, value_name = "FILE")]
        checkpoints_from: Vec<PathBuf>,
    },
    /// Print events as JSON lines.
    Export {
        /// Only events at or after this time (RFC 3339, or a date like 2026-11-25).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only events of this request (AR-n).
        #[arg(long, value_name = "AR-n")]
        request: Option<String>,
    },
    /// Print a readable timeline of one request.
    Show {
        /// The request, e.g. AR-12.
        request: String,
    },
}

fn load(path: Option<&std::path::Path>) -> anyhow::Result<(Loaded, Settings)> {
    let loaded = Config::load(path)?;
    let settings = loaded.config.validate()?;
    Ok((loaded, settings))
}

/// The database (`[store]`) and the Logbook's keys, alone: commands that
/// only read or copy the database (audit, outbox, backup, restore) work with
/// a copy of it and no chat secrets, so they validate nothing else.
fn store_only(path: Option<&std::path::Path>) -> anyhow::Result<StoreOnly> {
    let loaded = Config::load(path)?;
    let audit = loaded
        .config
        .audit
        .validate()
        .map_err(crate::config::ConfigErrors)?;
    let location = loaded
        .config
        .store
        .location()
        .map_err(|e| crate::config::ConfigErrors(vec![e]))?;
    Ok(StoreOnly {
        location,
        keys: audit.keys,
    })
}

struct StoreOnly {
    location: StoreLocation,
    keys: ChainKeys,
}

impl StoreOnly {
    /// Opens the store with the Logbook's keys, switching nothing.
    async fn open(&self) -> anyhow::Result<startup::Database> {
        startup::connect(&self.location, self.keys.clone(), Arc::new(SystemClock))
            .await
            .with_context(|| format!("cannot open the database {}", self.location))
    }

    /// The SQLite file, for the commands that copy it; on PostgreSQL, an
    /// error saying what `what` is there instead.
    fn file(&self, command: &str, instead: &str) -> anyhow::Result<&std::path::Path> {
        match self.location.sqlite_path() {
            Some(path) => Ok(path),
            None => bail!("`passport {command}` copies a SQLite file, and [store] url names a PostgreSQL database ({}): {instead}", self.location),
        }
    }
}

/// Prints what a verification found; the exit code: 0 verified, 1 broken or
/// not keyed as configured, 3 keyed events left unchecked.
/// `what` names the Logbook as the line starts: `Logbook`, or `the copy's Logbook is`.
fn print_verification(what: &str, verification: &Verification, keys: &ChainKeys) -> i32 {
    match verification {
        Verification::Intact {
            events,
            head,
            keying,
        } => {
            let report = crate::doctor::keying_report(keying, keys);
            let code = match &report.problem {
                None => {
                    println!("{what} intact: {events} events, head {head}");
                    0
                }
                Some((problem, code)) => {
                    println!("{what} {problem}");
                    println!("{events} events, head {head}");
                    *code
                }
            };
            println!("mode: {}", report.mode);
            code
        }
        Verification::Broken(brk) => {
            println!("{what} broken at event {}: {brk}", brk.seq());
            1
        }
    }
}

/// Reads a checkpoint file: each line's number and checkpoint; blank lines
/// and `#` comments are skipped.
fn read_checkpoint_file(file: &std::path::Path) -> anyhow::Result<Vec<(usize, Checkpoint)>> {
    let text = std::fs::read_to_string(file).with_context(|| {
        format!(
            "cannot read the checkpoint file {}: check the path given to --checkpoints-from",
            file.display()
        )
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match Checkpoint::parse(line) {
            Ok(c) => out.push((i + 1, c)),
            Err(e) => bail!(
                "{} line {}: {e}: a checkpoint line reads TIME SEQ HASH, as Passport writes it",
                file.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

async fn outbox(store: &dyn Store, command: OutboxCommand) -> anyhow::Result<i32> {
    match command {
        OutboxCommand::List => {
            let notices = store.set_aside(1000).await?;
            if notices.is_empty() {
                println!("no notice is set aside");
            }
            for n in notices {
                println!(
                    "{}\t{}\t{}\t{}\tqueued {}, set aside {} after {} attempt(s), {} refused: {}",
                    n.id,
                    n.surface,
                    n.lane,
                    n.request
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "-".into()),
                    n.created_at,
                    n.set_aside_at,
                    n.attempts,
                    n.refusals,
                    n.last_error
                );
            }
            Ok(0)
        }
        OutboxCommand::Retry { ids, all } => {
            if ids.is_empty() && !all {
                bail!("name the notices to send again (ids from `passport outbox list`), or --all");
            }
            let now = crate::app::ports::Clock::now(&SystemClock);
            let n = store.revive((!all).then_some(ids), now).await?;
            println!("{n} notice(s) put back in line: the running `passport serve` sends them");
            Ok(0)
        }
    }
}

async fn backup(
    database: &std::path::Path,
    file: &std::path::Path,
    keys: &ChainKeys,
) -> anyhow::Result<i32> {
    let (from, to) = (database.to_owned(), file.to_owned());
    let bytes =
        tokio::task::spawn_blocking(move || crate::adapters::sqlite::backup::backup(&from, &to))
            .await
            .context("the backup stopped")??;
    println!(
        "copied {} to {} ({bytes} bytes)",
        database.display(),
        file.display()
    );
    let verification = crate::adapters::sqlite::verify_logbook_file(file, keys).await?;
    let code = print_verification("the copy's Logbook is", &verification, keys);
    if matches!(verification, Verification::Broken(_)) {
        println!("the database itself needs `passport audit verify`");
    }
    Ok(code)
}

async fn restore(
    file: &std::path::Path,
    database: &std::path::Path,
    keys: &ChainKeys,
) -> anyhow::Result<i32> {
    let verification = crate::adapters::sqlite::verify_logbook_file(file, keys)
        .await
        .with_context(|| format!("{} is not a Passport database", file.display()))?;
    let code = print_verification("the backup's Logbook is", &verification, keys);
    if code != 0 {
        println!("nothing was restored");
        return Ok(code);
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (from, to) = (file.to_owned(), database.to_owned());
    let kept = tokio::task::spawn_blocking(move || {
        crate::adapters::sqlite::backup::restore(&from, &to, now)
    })
    .await
    .context("the restore stopped")??;
    if let Some(kept) = kept {
        println!("the database it replaced is kept as {}", kept.display());
    }
    println!(
        "restored {} from {}: start `passport serve` again",
        database.display(),
        file.display()
    );
    Ok(0)
}

/// `passport store copy`: the SQLite file's Logbook verified, every table
/// copied into the empty PostgreSQL database `to`, the copy's Logbook
/// verified and its rows counted. 0 when all of it holds; 1 when a Logbook
/// does not verify (3 when keyed events could not be checked for want of
/// their key), or the copy differs; errors say what was wrong and whether
/// anything was written.
async fn store_copy(only: &StoreOnly, to: DatabaseUrl) -> anyhow::Result<i32> {
    use crate::adapters::postgres::{PgOptions, PgStore};
    use crate::adapters::store_copy;
    let Some(source) = only.location.sqlite_path() else {
        bail!("`passport store copy` moves a SQLite database, and [store] url names a PostgreSQL database ({}): set [store] path (or PASSPORT_STORE__PATH) to the SQLite file to copy, and give the PostgreSQL database with --to or PASSPORT_STORE_COPY_TO", only.location);
    };
    to.check_postgres("--to", "").map_err(anyhow::Error::msg)?;
    if !source.is_file() {
        bail!(
            "{} is not a database file: check [store] path (or PASSPORT_STORE__PATH)",
            source.display()
        );
    }
    // Before anything is written: a broken or tampered Logbook is not moved,
    // where it would look as good as new.
    let verification = crate::adapters::sqlite::verify_logbook_file(source, &only.keys)
        .await
        .with_context(|| format!("{} is not a Passport database", source.display()))?;
    let code = print_verification("the SQLite Logbook is", &verification, &only.keys);
    let Verification::Intact {
        events: source_events,
        head: source_head,
        ..
    } = &verification
    else {
        println!("nothing was copied: `passport audit verify` on the SQLite database says more");
        return Ok(code);
    };
    if code != 0 {
        println!("nothing was copied");
        return Ok(code);
    }

    let options = PgOptions {
        keys: only.keys.clone(),
        ..PgOptions::new(Arc::new(SystemClock))
    };
    // Connecting applies the migrations, as `passport migrate` does.
    let target = PgStore::connect(to.expose(), options)
        .await
        .with_context(|| format!("cannot open the database {to}"))?;
    let now = crate::app::ports::Clock::now(&SystemClock);
    let copied =
        match store_copy::copy(source, target.pool(), crate::scheduler::LEASE_NAME, now).await {
            Ok(copied) => copied,
            Err(e) => {
                target.close().await;
                return Err(anyhow::Error::new(e).context(format!("nothing was copied to {to}")));
            }
        };
    println!("copied {} to {to}:", source.display());
    for (table, rows) in &copied.tables {
        println!("  {table:<18} {rows:>9} row(s)");
    }
    println!("  (leases are not copied: the first `serve` on PostgreSQL takes its own)");

    let mut code = 0;
    match store_copy::recount(target.pool(), &copied).await {
        Ok(differ) => {
            for (table, copied, found) in &differ {
                println!("{table}: {copied} row(s) copied, but {found} there now: is a Passport process already running on the new database? Stop it and check");
                code = 1;
            }
        }
        Err(e) => {
            println!("the rows could not be counted again: {e}");
            code = 1;
        }
    }
    let verified = target.verify_logbook().await;
    target.close().await;
    let verified = verified.with_context(|| format!("cannot verify the Logbook on {to}"))?;
    code = code.max(print_verification(
        "the PostgreSQL Logbook is",
        &verified,
        &only.keys,
    ));
    if let Verification::Intact { events, head, .. } = &verified {
        if (events, head) != (source_events, source_head) {
            println!("the PostgreSQL Logbook ends at event {events} ({head}), the SQLite one at event {source_events} ({source_head}): is a Passport process already writing to the new database?");
            code = 1;
        }
    }
    if code == 0 {
        println!("next: set [store] url (or PASSPORT_STORE__URL) to the new database, remove [store] path, and start `passport serve`; keep the SQLite file as it is");
    }
    Ok(code)
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PASSPORT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .try_init(),
        // One object per line with the event's fields at the top level
        // (`request`, `surface`, `seq`, …) and the current span's fields.
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

/// Opens the store as a process that writes: with the Logbook's key, which
/// a keyed Logbook requires (see [`startup::open_store`]).
async fn open_store(settings: &Settings) -> anyhow::Result<startup::Database> {
    startup::open_store(settings, Arc::new(SystemClock))
        .await
        .with_context(|| format!("cannot open the database {}", settings.store))
}

/// Writes the SSM documents this build runs into `dir`, one `<name>.yaml` per
/// document, each through a temporary file renamed into place; returns the paths.
fn export_documents(
    names: &crate::adapters::aws::DocumentNames,
    dir: &std::path::Path,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create {}: check the path and its permissions",
            dir.display()
        )
    })?;
    let mut written = Vec::new();
    for document in crate::adapters::aws::passport_documents(names) {
        let path = dir.join(format!("{}.yaml", document.name));
        let temporary = dir.join(format!(".{}.yaml.tmp", document.name));
        std::fs::write(&temporary, &document.content)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .with_context(|| {
                format!(
                    "cannot write {}: check the directory's permissions",
                    path.display()
                )
            })?;
        written.push(path);
    }
    Ok(written)
}

/// Runs the command line; the exit code is 0 on success.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Client(command) => client(command).await,
        Command::Ssm { command } => {
            let (_, settings) = load(cli.config.as_deref())?;
            init_logging("warn", LogFormat::Text);
            let aws = || {
                settings.aws.as_ref().context(
                    "no [aws] section in the configuration: add one (see manifests/iam/README.md) before installing or checking the SSM documents",
                )
            };
            match command {
                SsmCommand::Install => {
                    for line in crate::adapters::aws::ssm_install(aws()?).await? {
                        println!("{line}");
                    }
                    Ok(0)
                }
                SsmCommand::Check => match crate::adapters::aws::ssm_check(aws()?).await {
                    Ok(pinned) => {
                        println!("the SSM documents are installed and current");
                        for (document, version) in pinned.iter() {
                            println!("{document}: version {version} (what `serve` runs)");
                        }
                        Ok(0)
                    }
                    Err(e) => {
                        println!("{e}");
                        Ok(1)
                    }
                },
                SsmCommand::Export { dir } => {
                    let names = settings
                        .aws
                        .as_ref()
                        .map(|aws| aws.documents.clone())
                        .unwrap_or_default();
                    for path in export_documents(&names, &dir)? {
                        println!("{}", path.display());
                    }
                    Ok(0)
                }
            }
        }
        Command::CheckConfig => {
            let loaded = Config::load(cli.config.as_deref())?;
            let from = loaded
                .file
                .as_ref()
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| "built-in defaults".into());
            match loaded.config.validate() {
                Ok(_) => {
                    println!("# configuration from {from} and PASSPORT_… variables: valid");
                    print!("{}", loaded.config.to_toml());
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(2)
                }
            }
        }
        Command::Migrate => {
            let (_, settings) = load(cli.config.as_deref())?;
            init_logging("warn", LogFormat::Text);
            let store = open_store(&settings).await?;
            store.close().await;
            println!("database {} is up to date", settings.store);
            Ok(0)
        }
        Command::Console => {
            let (loaded, settings) = load(cli.config.as_deref())?;
            init_logging(&loaded.config.log.level, loaded.config.log.format);
            console(&loaded, &settings, false).await
        }
        Command::Serve => {
            let (loaded, settings) = load(cli.config.as_deref())?;
            init_logging(&loaded.config.log.level, loaded.config.log.format);
            // Before anything counts: what happens before the first scrape of
            // `/metrics` is counted too.
            crate::http::metrics::recorder();
            match (&settings.slack, &settings.discord) {
                (Some(slack), _) => serve_slack(&loaded, &settings, slack).await,
                (None, Some(discord)) => serve_discord(&loaded, &settings, discord).await,
                (None, None) => console(&loaded, &settings, true).await,
            }
        }
        Command::Ca { command } => {
            let (_, settings) = load(cli.config.as_deref())?;
            init_logging("warn", LogFormat::Text);
            ca(&settings, command)
        }
        Command::Doctor => {
            let loaded = Config::load(cli.config.as_deref())?;
            let settings = match loaded.config.validate() {
                Ok(settings) => settings,
                Err(e) => {
                    println!("FAIL  configuration: {e}");
                    return Ok(1);
                }
            };
            // Warnings too: a failed AWS call is shown by its error id, and
            // what AWS said is logged under that id (to standard error).
            init_logging("warn", LogFormat::Text);
            println!(
                "ok    configuration: {}",
                loaded
                    .file
                    .as_ref()
                    .map(|f| f.display().to_string())
                    .unwrap_or_else(|| "built-in defaults and PASSPORT_ variables".into())
            );
            let findings = crate::doctor::run(&settings).await;
            for f in &findings {
                println!(
                    "{}  {}: {}",
                    if f.ok { "ok  " } else { "FAIL" },
                    f.check,
                    f.text
                );
            }
            let failed = findings.iter().filter(|f| !f.ok).count();
            if failed > 0 {
                println!("{failed} problem(s) found");
                Ok(1)
            } else {
                println!("no problem found");
                Ok(0)
            }
        }
        Command::Healthcheck { url } => {
            let url = match url {
                Some(url) => url,
                None => {
                    let (_, settings) = load(cli.config.as_deref())?;
                    let mut addr = settings.http.listen;
                    if addr.ip().is_unspecified() {
                        addr.set_ip(if addr.is_ipv4() {
                            std::net::Ipv4Addr::LOCALHOST.into()
                        } else {
                            std::net::Ipv6Addr::LOCALHOST.into()
                        });
                    }
                    format!("http://{addr}/healthz")
                }
            };
            healthcheck(&url).await
        }
        Command::Outbox { command } => {
            let only = store_only(cli.config.as_deref())?;
            init_logging("warn", LogFormat::Text);
            let database = only.open().await?;
            let code = outbox(database.store().as_ref(), command).await;
            database.close().await;
            code
        }
        Command::Backup { file } => {
            let only = store_only(cli.config.as_deref())?;
            init_logging("warn", LogFormat::Text);
            let database = only.file("backup", "back it up with your provider's snapshots or point-in-time recovery (RDS, Aurora, Cloud SQL), or with pg_dump; `passport audit verify` checks its Logbook")?;
            backup(database, &file, &only.keys).await
        }
        Command::Restore { file } => {
            let only = store_only(cli.config.as_deref())?;
            init_logging("warn", LogFormat::Text);
            let database = only.file("restore", "restore a snapshot or a pg_dump with your provider's tools or pg_restore, then run `passport audit verify`")?;
            restore(&file, database, &only.keys).await
        }
        Command::Store {
            command: StoreCommand::Copy { to },
        } => {
            let only = store_only(cli.config.as_deref())?;
            init_logging("warn", LogFormat::Text);
            store_copy(&only, DatabaseUrl::new(to)).await
        }
        Command::Audit { command } => {
            let only = store_only(cli.config.as_deref())?;
            init_logging("warn", LogFormat::Text);
            let database = only.open().await?;
            let code = audit(database.store().as_ref(), &only.keys, command).await;
            database.close().await;
            code
        }
    }
}

/// GETs `url` within 5 seconds: 0 on 200, 1 otherwise, saying why.
async fn healthcheck(url: &str) -> anyhow::Result<i32> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .context("cannot build an HTTP client")?;
    match client.get(url).send().await {
        Ok(answer) if answer.status().is_success() => {
            println!("{url}: {}", answer.status());
            Ok(0)
        }
        Ok(answer) => {
            println!("{url}: {}", answer.status());
            Ok(1)
        }
        Err(e) => {
            println!("{url}: no answer ({e})");
            Ok(1)
        }
    }
}

/// The client's commands: no configuration, no database, no log output
/// (nothing the client knows belongs in a log).
async fn client(command: ClientCommand) -> anyhow::Result<i32> {
    use crate::client;
    if let ClientCommand::Proxy {
        dir,
        request,
        host,
        port,
    } = command
    {
        let dir = client::client_dir(dir)?;
        return client::proxy(&dir, &request, &host, port).await;
    }
    let dir = client::client_dir(None)?;
    match command {
        ClientCommand::Login { server } => client::login(&dir, &server).await,
        ClientCommand::Logout => client::logout(&dir).await,
        ClientCommand::Whoami => client::whoami(&dir).await,
        ClientCommand::Request { words } => client::request(&dir, &words).await,
        ClientCommand::List => client::list(&dir).await,
        ClientCommand::Show { request } => client::show(&dir, request.as_deref()).await,
        ClientCommand::Extend { args } => client::extend(&dir, &args).await,
        ClientCommand::Complete { request } => {
            client::finish(&dir, request.as_deref(), "complete").await
        }
        ClientCommand::Cancel { request } => {
            client::finish(&dir, request.as_deref(), "cancel").await
        }
        ClientCommand::Ssh { target, ssh_args } => {
            client::ssh_command(&dir, &target, &ssh_args).await
        }
        ClientCommand::Scp { args } => client::scp_command(&dir, &args).await,
        ClientCommand::Forward { args, remote_host } => {
            client::forward(&dir, &args, remote_host.as_deref()).await
        }
        ClientCommand::Rdp { target } => client::rdp(&dir, &target).await,
        ClientCommand::SshConfig => client::ssh_config(&dir).await,
        ClientCommand::Proxy { .. } => Ok(2),
    }
}

fn ca_kind(text: &str) -> anyhow::Result<CaKeyType> {
    CaKeyType::parse(text)
        .with_context(|| format!("--type {text:?} is not a CA key type: use ed25519 or rsa"))
}

fn ca(settings: &Settings, command: CaCommand) -> anyhow::Result<i32> {
    match command {
        CaCommand::Init { kind, key_path } => {
            let kind = ca_kind(&kind)?;
            let path = match (key_path, settings.ssh_ca.as_ref().map(|c| &c.key)) {
                (Some(path), _) => path,
                (None, Some(CaKeySource::File(path))) => path.clone(),
                (None, Some(CaKeySource::Secret(_))) => bail!("the CA key comes from PASSPORT_SSH_CA__KEY here: pass --key-path to write a new key to a file, then put that file's contents in the secret"),
                (None, None) => bail!("where should the key go? pass --key-path FILE, or set [ssh_ca] key_path"),
            };
            let authority = CertificateAuthority::generate(kind)?;
            authority.save_new(&path)?;
            println!(
                "# SSH CA key written to {} (mode 0600), {}",
                path.display(),
                authority.fingerprint()
            );
            println!("{}", authority.public_key_line());
            Ok(0)
        }
        CaCommand::Show => {
            let Some(ca) = &settings.ssh_ca else {
                bail!("no [ssh_ca] section in the configuration: create a key with `passport ca init --key-path FILE` and set [ssh_ca] key_path");
            };
            let authority = ca.authority()?;
            println!("# signing key, {}", authority.fingerprint());
            println!("{}", authority.public_key_line());
            for line in &ca.next_public_keys {
                println!("# next key (trusted, not yet signing)\n{line}");
            }
            for line in &ca.previous_public_keys {
                println!("# previous key (trusted until its certificates run out)\n{line}");
            }
            Ok(0)
        }
        CaCommand::Rotate { key_path, kind } => {
            let kind = ca_kind(&kind)?;
            let Some(ca) = &settings.ssh_ca else {
                bail!("no [ssh_ca] section in the configuration: there is no CA to rotate yet; `passport ca init` creates the first key");
            };
            let current = ca.authority()?;
            let next = CertificateAuthority::generate(kind)?;
            next.save_new(&key_path)?;
            let plain = |line: &str| line.split(' ').take(2).collect::<Vec<_>>().join(" ");
            // The longest access is 12h; an hour on top covers the on-instance grace and clock skew.
            let wait = "13h";
            println!(
                "# new SSH CA key written to {} (mode 0600), {}",
                key_path.display(),
                next.fingerprint()
            );
            println!("# 1. Trust it everywhere first: add to [ssh_ca] and restart Passport:");
            println!(
                "#      next_public_keys = [\"{}\"]",
                plain(next.public_key_line())
            );
            println!(
                "#    Every grant and extension from then on installs both keys on its instances."
            );
            println!("# 2. After {wait} (the longest access granted before step 1 has ended), sign with it:");
            println!("#      key_path = \"{}\"", key_path.display());
            println!(
                "#      previous_public_keys = [\"{}\"]",
                plain(current.public_key_line())
            );
            println!("#    and remove it from next_public_keys; restart Passport.");
            println!(
                "# 3. After another {wait} (every certificate of the old key has run out), remove"
            );
            println!("#    previous_public_keys and delete the old key file.");
            Ok(0)
        }
    }
}

/// Checks the checkpoint of event `seq` with link `hash` against the
/// Logbook of `events` events: `None` when it matches, else what it shows.
async fn check_checkpoint(
    store: &dyn Store,
    seq: u64,
    hash: &str,
    events: u64,
) -> anyhow::Result<Option<String>> {
    Ok(match store.logbook_hash_at(seq).await? {
        Some(stored) if stored == hash => None,
        Some(_) => Some(format!(
            "does not match: the Logbook was rewritten up to event {seq}"
        )),
        None => Some(format!(
            "missing: the Logbook ends at event {events}, so events were deleted from its end"
        )),
    })
}

async fn audit(store: &dyn Store, keys: &ChainKeys, command: AuditCommand) -> anyhow::Result<i32> {
    match command {
        AuditCommand::Verify {
            checkpoint,
            checkpoints_from,
        } => {
            let mut checkpoints = Vec::new();
            for c in &checkpoint {
                let parsed = c
                    .split_once(':')
                    .and_then(|(seq, hash)| {
                        Some((
                            seq.trim().parse::<u64>().ok()?,
                            hash.trim().to_ascii_lowercase(),
                        ))
                    })
                    .filter(|(_, hash)| {
                        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
                    });
                match parsed {
                    Some(p) => checkpoints.push(p),
                    None => bail!("--checkpoint {c:?} is not SEQ:HASH: copy it from a checkpoint line, e.g. 1234:9f86d0…(64 hex digits)"),
                }
            }
            let mut from_files = Vec::new();
            for file in &checkpoints_from {
                from_files.push((file, read_checkpoint_file(file)?));
            }
            let verification = store.verify_logbook().await?;
            let code = print_verification("Logbook", &verification, keys);
            let Verification::Intact { events, .. } = verification else {
                return Ok(code);
            };
            for (seq, hash) in checkpoints {
                if let Some(found) = check_checkpoint(store, seq, &hash, events).await? {
                    println!("checkpoint {seq}: {found}");
                    return Ok(1);
                }
                println!("checkpoint {seq}: matches");
            }
            for (file, lines) in from_files {
                let mut last = None;
                for (line, c) in &lines {
                    if let Some(found) = check_checkpoint(store, c.seq, c.hash(), events).await? {
                        println!(
                            "{} line {line}: checkpoint {} of {}: {found}",
                            file.display(),
                            c.seq,
                            c.at
                        );
                        return Ok(1);
                    }
                    last = Some(c);
                }
                match last {
                    Some(c) => println!(
                        "{}: all {} checkpoints match (the latest: event {} at {})",
                        file.display(),
                        lines.len(),
                        c.seq,
                        c.at
                    ),
                    None => println!("{}: holds no checkpoint yet", file.display()),
                }
            }
            Ok(code)
        }
        AuditCommand::Export { since, request } => {
            let since = match since {
                Some(s) => match Timestamp::parse_rfc3339(&s) {
                    Some(t) => Some(t),
                    None => bail!("--since {s:?} is not a time: use RFC 3339 (2026-11-25T10:00:00Z) or a date (2026-11-25)"),
                },
                None => None,
            };
            let request = request
                .map(|r| RequestId::parse(&r))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--request: {e}"))?;
            let events = store.audit_events(request, since).await?;
            use std::io::Write;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for e in events {
                let details: serde_json::Value = serde_json::from_str(&e.details)
                    .unwrap_or(serde_json::Value::String(e.details.clone()));
                let line = serde_json::json!({
                    "seq": e.seq,
                    "at": e.at.to_string(),
                    "actor": e.actor,
                    "request": e.request,
                    "action": e.action,
                    "details": details,
                });
                writeln!(out, "{line}")?;
            }
            out.flush()?;
            Ok(0)
        }
        AuditCommand::Show { request } => {
            let id = RequestId::parse(&request).map_err(|e| anyhow::anyhow!("{e}"))?;
            let events = store.audit_events(Some(id), None).await?;
            if events.is_empty() {
                println!("no Logbook events for {id}: check the number");
                return Ok(1);
            }
            println!("{}", timeline(&events));
            Ok(0)
        }
    }
}

async fn console(loaded: &Loaded, settings: &Settings, serve: bool) -> anyhow::Result<i32> {
    let out = stdout_output();
    let clock = OffsetClock::default();
    let clock_arc: Arc<dyn crate::app::ports::Clock> = if serve {
        Arc::new(SystemClock)
    } else {
        Arc::new(clock.clone())
    };
    let app = match startup::console_app(settings, out.clone(), clock_arc).await {
        Ok(app) => app,
        // The AWS error says what failed; only the store's needs the file named.
        Err(startup::StartError::Store(e)) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot open the database {}", settings.store)))
        }
        Err(e) => return Err(e.into()),
    };
    let approvers = settings
        .groups
        .get("approvers")
        .map(|m| m.join(", "))
        .unwrap_or_default();
    let config_from = loaded
        .file
        .as_ref()
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    let json_logs = loaded.config.log.format == LogFormat::Json;
    if json_logs {
        // Standard error carries only JSON lines for the log collector.
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            database = %settings.store,
            config = %config_from,
            surface = "console",
            provisioner = provisioner_label(settings),
            "Passport started"
        );
    } else {
        eprintln!(
        "Passport {} · database {} · config {} · console (no Slack or Discord configured) · {}\n\
         Type `<user>: <command>`, e.g. `dev1: /passport request i-0123456789abcdef0 2h ticket#123 disk full`, then `lead1: /passport approve AR-1`.{}\n\
         `<user> in AR-n: <command>` types in a request's thread; `/passport help` lists the commands. See passport.example.toml to configure groups, policy and instances.",
        env!("CARGO_PKG_VERSION"),
        settings.store,
        config_from,
        provisioner_label(settings),
        if approvers.is_empty() { String::new() } else { format!(" Approvers: {approvers}.") },
    );
    }
    // `serve` runs timers in real time in the background; `console` runs them
    // only after each line (and its clock moves with `!advance`), so its output
    // is the same on every run.
    let background = serve.then(|| app.scheduler.clone().spawn());
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let result =
        startup::run_console(&app, stdin, &out, if serve { None } else { Some(&clock) }).await;
    if serve && result.is_ok() {
        // Input ended but the bot keeps running its timers until stopped.
        tracing::info!(
            "input closed; Passport keeps running timers and deliveries until stopped (Ctrl-C)"
        );
        startup::shutdown_signal().await;
    }
    if let Some(background) = background {
        background.abort();
    }
    app.scheduler.release().await;
    app.database.close().await;
    result?;
    Ok(0)
}

/// What a chat platform brings to `serve`.
struct Chat {
    app: startup::App,
    surface: Arc<dyn crate::app::ports::ChatSurface>,
    router: axum::Router,
    /// How the platform reaches Passport, for the start-up banner.
    mode: &'static str,
    /// Starts the platform's own tasks (Socket Mode, the gateway, command
    /// registration) once the HTTP server can listen.
    start: Box<dyn FnOnce() -> Vec<tokio::task::JoinHandle<()>> + Send>,
}

/// What `serve` builds a chat platform's application with: the provisioner
/// (AWS when configured, with the parts that need the application's store,
/// else the dry run, logged), the system clock, the default acknowledgement
/// deadline and the readiness probes.
async fn serve_options(
    settings: &Settings,
) -> anyhow::Result<(startup::ChatOptions, Option<startup::AwsParts>)> {
    let (provisioner, aws) = if settings.aws.is_some() {
        startup::provisioner(settings, None).await?
    } else {
        (startup::logged_dry_run(settings), None)
    };
    let options = startup::ChatOptions {
        clock: Arc::new(SystemClock),
        provisioner,
        ack_deadline: crate::adapters::chat::inbound::ACK_DEADLINE,
        dry_run_label: settings.dry_run_label,
        probes: startup::readiness_probes(settings).await,
    };
    Ok((options, aws))
}

/// `serve` with Slack: the HTTP server (and in Socket Mode the Socket Mode
/// connection), timers and outbox delivery, until Ctrl-C or SIGTERM.
async fn serve_slack(
    loaded: &Loaded,
    settings: &Settings,
    slack: &crate::adapters::slack::SlackSettings,
) -> anyhow::Result<i32> {
    use crate::adapters::slack::SlackMode;
    let (options, aws) = serve_options(settings).await?;
    let built = startup::slack_app(settings, slack, options)
        .await
        .map_err(|e| match e {
            startup::StartError::Store(_) => anyhow::Error::new(e)
                .context(format!("cannot open the database {}", settings.store)),
            other => anyhow::Error::new(other),
        })?;
    let socket = built.socket;
    let chat = Chat {
        app: built.app,
        surface: built.surface,
        router: built.router,
        mode: match slack.mode {
            SlackMode::Http => {
                "Slack over HTTP (/slack/commands, /slack/interactions, /slack/events)"
            }
            SlackMode::Socket => "Slack over Socket Mode",
        },
        start: Box::new(move || socket.into_iter().map(|s| s.spawn()).collect()),
    };
    serve_chat(loaded, settings, chat, aws).await
}

/// `serve` with Discord: the gateway connection (or the HTTP interactions
/// endpoint), timers and outbox delivery, until Ctrl-C or SIGTERM.
async fn serve_discord(
    loaded: &Loaded,
    settings: &Settings,
    discord: &crate::adapters::discord::DiscordSettings,
) -> anyhow::Result<i32> {
    use crate::adapters::discord::DiscordMode;
    let (options, aws) = serve_options(settings).await?;
    let built = startup::discord_app(settings, discord, options)
        .await
        .with_context(|| format!("cannot open the database {}", settings.store))?;
    let (api, gateway, discord) = (built.api, built.gateway, discord.clone());
    let chat = Chat {
        app: built.app,
        surface: built.surface,
        router: built.router,
        mode: match discord.mode {
            DiscordMode::Gateway => "Discord over the gateway",
            DiscordMode::Http => "Discord over HTTP (/discord/interactions)",
        },
        start: Box::new(move || {
            let registering = tokio::spawn(async move {
                crate::adapters::discord::register_commands(api, &discord).await;
            });
            std::iter::once(registering)
                .chain(gateway.map(|g| g.spawn()))
                .collect()
        }),
    };
    serve_chat(loaded, settings, chat, aws).await
}

/// Runs a chat platform: the HTTP server, the platform's own tasks, timers
/// and outbox delivery, until Ctrl-C or SIGTERM; then delivers what it can
/// within the grace period and closes the database.
async fn serve_chat(
    loaded: &Loaded,
    settings: &Settings,
    chat: Chat,
    aws: Option<startup::AwsParts>,
) -> anyhow::Result<i32> {
    if let Some(aws) = &aws {
        startup::attach_aws(aws, &chat.app, &chat.surface, settings);
    }
    let listener = tokio::net::TcpListener::bind(settings.http.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (http.listen): is another process using it?",
                settings.http.listen
            )
        })?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        database = %settings.store,
        config = %loaded
            .file
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "built-in defaults".into()),
        mode = %chat.mode,
        listen = %listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        provisioner = provisioner_label(settings),
        "Passport started"
    );
    let app = chat.app;
    let background = app.scheduler.clone().spawn();
    let tasks = (chat.start)();
    let grace = settings.http.limits.shutdown_grace;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut server = tokio::spawn(crate::http::server::serve(
        listener,
        chat.router,
        settings.http.limits,
        async move {
            let mut stopping = stopping;
            let _ = stopping.wait_for(|stop| *stop).await;
        },
    ));
    // The server only ends early when it fails.
    let early = tokio::select! {
        _ = startup::shutdown_signal() => None,
        served = &mut server => Some(served),
    };
    // From here everything is bounded by one deadline, whatever is queued or
    // stalled: the HTTP drain and the last deliveries run side by side.
    let deadline = tokio::time::Instant::now() + grace;
    tracing::info!(grace = ?grace, "stopping");
    let _ = stop.send(true);
    for task in tasks {
        task.abort();
    }
    background.abort();
    // Deliver what the last commands queued, briefly, and record what went;
    // the rest waits in the outbox. Also when the server failed: the
    // scheduler's delivery pass may still be sending.
    let drained = async {
        if let Some(served) = early {
            return served;
        }
        let margin = std::time::Duration::from_millis(500);
        match tokio::time::timeout_at(deadline + margin, &mut server).await {
            Ok(served) => served,
            Err(_) => {
                server.abort();
                Ok(Ok(()))
            }
        }
    };
    let ((), served) = tokio::join!(startup::last_deliveries(&app, deadline), drained);
    // Tasks still stalled on a peer hold nothing these wait for, but a bound
    // costs nothing.
    let closing = async {
        app.scheduler.release().await;
        app.database.close().await;
    };
    if tokio::time::timeout(std::time::Duration::from_secs(2), closing)
        .await
        .is_err()
    {
        tracing::warn!(
            "the database did not close within 2s; what was committed stays, and SQLite recovers the file at the next start"
        );
    }
    served
        .context("the HTTP server stopped unexpectedly")?
        .context("the HTTP server failed")?;
    Ok(0)
}

/// How instances are provisioned, for the start-up banner.
fn provisioner_label(settings: &Settings) -> String {
    match &settings.aws {
        Some(aws) => format!(
            "AWS provisioner (SSM Run Command, region {})",
            aws.region.as_deref().unwrap_or("from the environment")
        ),
        None => "dry-run provisioner (no AWS configured)".into(),
    }
}
