//! Wiring: builds the engine and dispatcher from validated settings, and runs
//! the background loops (timers and outbox delivery) and the console.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::adapters::aws::{CommandStore, LateCommandStore, PgCommandStore, SqliteCommandStore};
use crate::adapters::chat::mentions::Mentions;
use crate::adapters::chat_retry::Peer;
use crate::adapters::checkpoint_file::CheckpointFile;
use crate::adapters::clock::OffsetClock;
use crate::adapters::console::{ConsoleSurface, Output};
use crate::adapters::directory::StaticDirectory;
use crate::adapters::discord::gateway::Gateway;
use crate::adapters::discord::{
    DiscordApi, DiscordDirectory, DiscordMode, DiscordSettings, DiscordSurface,
    Inbound as DiscordInbound,
};
use crate::adapters::dry_run::{DryRunLabel, DryRunProvisioner, Sink};
use crate::adapters::password_courier::{CourierWiring, PasswordCourier};
use crate::adapters::postgres::{PgOptions, PgStore};
use crate::adapters::slack::socket::SocketMode;
use crate::adapters::slack::{
    Inbound, People, SlackApi, SlackDirectory, SlackMode, SlackSettings, SlackSurface,
};
use crate::adapters::sqlite::{KeyAdoption, SqliteStore};
use crate::app::dispatch::Dispatcher;
use crate::app::engine::{Actor, Engine, EngineSettings, Ports};
use crate::app::ports::{
    ChatSurface, Clock, Directory, Provisioner, SessionBroker, Store, StoreError,
};
use crate::config::{Settings, StoreLocation};
use crate::domain::logbook::ChainKeys;
use crate::domain::policy::Policy;
use crate::domain::time::{Span, Timestamp};
use crate::domain::values::{Person, RequestId, UserId};
use crate::http::ready::{DiscordProbe, Probe, Readiness, SlackProbe};
use crate::http::{self, DiscordEndpoints, HttpState, SlackEndpoints};
use crate::scheduler::Scheduler;

/// The running application: one engine, one dispatcher, shared state.
#[derive(Clone)]
pub struct App {
    pub engine: Arc<Engine>,
    pub dispatcher: Arc<Dispatcher>,
    /// The store every use case, loop and handler works through.
    pub store: Arc<dyn Store>,
    /// The same store as the adapter it is, for what only the adapter can
    /// give (the AWS provisioner's command store).
    pub database: Database,
    pub scheduler: Arc<Scheduler>,
    pub clock: Arc<dyn Clock>,
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the AWS provisioner cannot start: {0}")]
    Aws(#[from] crate::adapters::aws::AwsStartError),
    #[error("the SSH CA cannot start: {0}")]
    SshCa(#[from] crate::adapters::ssh_ca::CaError),
    #[error(transparent)]
    SlackWorkspace(#[from] crate::adapters::slack::workspace::WorkspaceError),
}

/// The AWS provisioner when `[aws]` is configured (after checking that the SSM
/// documents are installed and current), else the dry-run provisioner printing
/// to `sink`. With AWS, also what the provisioner needs from the application
/// once it is built ([`AwsParts`]): give it with [`attach_aws`].
pub async fn provisioner(
    settings: &Settings,
    sink: Option<Sink>,
) -> Result<(Arc<dyn Provisioner>, Option<AwsParts>), StartError> {
    match &settings.aws {
        Some(aws) => {
            let parts = AwsParts {
                courier: Arc::new(PasswordCourier::new()),
                commands: LateCommandStore::unattached(),
            };
            let passwords: Arc<dyn crate::adapters::aws::PasswordSink> =
                Arc::new(parts.courier.clone());
            let p = crate::adapters::aws::serve_provisioner(
                aws,
                parts.commands.clone(),
                Some(passwords),
            )
            .await?;
            Ok((Arc::new(p), Some(parts)))
        }
        None => Ok((
            Arc::new(DryRunProvisioner::new(
                settings.dry_run_instances.clone(),
                sink,
            )),
            None,
        )),
    }
}

/// The store `[store]` chose, opened: a SQLite file or a PostgreSQL
/// database. Both are the same [`Store`]; this names which one it is, for
/// what only the adapter knows (closing, the AWS command store).
#[derive(Clone)]
pub enum Database {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Database {
    /// The store as the application holds it.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(s) => Arc::new(s.clone()),
            Self::Postgres(s) => Arc::new(s.clone()),
        }
    }

    /// Where the AWS provisioner records its commands: the same database,
    /// in the same kind of write as the application's own.
    pub fn commands(&self) -> Arc<dyn CommandStore> {
        match self {
            Self::Sqlite(s) => Arc::new(SqliteCommandStore::new(s.clone())),
            Self::Postgres(s) => Arc::new(PgCommandStore::new(s.clone())),
        }
    }

    /// Waits for the writes in flight, then closes the file or the pool.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::Postgres(s) => s.close().await,
        }
    }

    async fn adopt_logbook_key(&self, now: Timestamp) -> Result<KeyAdoption, StoreError> {
        match self {
            Self::Sqlite(s) => s.adopt_logbook_key(now).await,
            Self::Postgres(s) => s.adopt_logbook_key(now).await,
        }
    }
}

/// Opens the database `location` names with the Logbook's `keys`, applying
/// its migrations, and nothing more: what commands that read or copy it use.
/// `clock` is the time PostgreSQL's outbox claims are taken and run out by.
pub async fn connect(
    location: &StoreLocation,
    keys: ChainKeys,
    clock: Arc<dyn Clock>,
) -> Result<Database, StoreError> {
    match location {
        StoreLocation::Sqlite { path, durability } => Ok(Database::Sqlite(
            SqliteStore::open_with_keys(path, *durability, keys).await?,
        )),
        StoreLocation::Postgres { url } => {
            let options = PgOptions {
                keys,
                ..PgOptions::new(clock)
            };
            Ok(Database::Postgres(
                PgStore::connect(url.expose(), options).await?,
            ))
        }
    }
}

/// Opens the store `[store]` chose with the Logbook's keys (`[audit]`) and
/// brings the Logbook under the configured key: a keyed Logbook without its
/// key, or with another key that is not a rotation from it, refuses to start.
pub async fn open_store(
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> Result<Database, StartError> {
    let now = clock.now();
    let store = connect(&settings.store, settings.audit.keys.clone(), clock).await?;
    match store.adopt_logbook_key(now).await {
        Ok(KeyAdoption::Plain) => {}
        Ok(KeyAdoption::Kept { key, since }) => {
            tracing::info!(key_id = %key, since, "the Logbook is keyed (HMAC) with the configured key");
        }
        Ok(KeyAdoption::Switched { key, from, seq }) => match from {
            None => {
                tracing::info!(key_id = %key, seq, "the Logbook is keyed (HMAC) from now on: the switch is event {seq}")
            }
            Some(from) => {
                tracing::info!(key_id = %key, previous_key_id = %from, seq, "the Logbook's key was rotated: the switch, signed by the previous key, is event {seq}")
            }
        },
        Err(e) => {
            store.close().await;
            return Err(e.into());
        }
    }
    Ok(store)
}

/// What `/readyz` asks AWS when `[aws]` is configured
/// ([`crate::adapters::aws::AwsProbe`]); nothing otherwise.
pub async fn readiness_probes(settings: &Settings) -> Vec<Arc<dyn Probe>> {
    match &settings.aws {
        Some(aws) => vec![Arc::new(crate::adapters::aws::AwsProbe::connect(aws).await)],
        None => Vec::new(),
    }
}

/// Builds the console application: the store `[store]` chose, console surface, and the
/// provisioner from [`provisioner`].
pub async fn console_app(
    settings: &Settings,
    out: Output,
    clock: Arc<dyn Clock>,
) -> Result<App, StartError> {
    let store = open_store(settings, clock.clone()).await?;
    let sink_out = out.clone();
    let sink: Sink = Arc::new(move |line: &str| {
        let mut o = sink_out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(o, "{line}");
    });
    let (provisioner, aws) = provisioner(settings, Some(sink)).await?;
    let surface: Arc<dyn ChatSurface> = Arc::new(ConsoleSurface::new(out));
    let app = assemble(
        settings,
        store,
        surface.clone(),
        Arc::new(StaticDirectory::new(&settings.groups)),
        AwsPorts {
            provisioner,
            sessions: None,
        },
        clock,
        // The console's output reads in the order things happened.
        Dispatcher::one_lane_at_a_time,
    )
    .await?;
    if let Some(aws) = &aws {
        attach_aws(aws, &app, &surface, settings);
    }
    Ok(app)
}

/// What the AWS provisioner is built with before the application exists, and
/// is given the application's store through: the courier that takes Windows
/// passwords to the requester, and the store of its command ids, which is
/// given the application's database once it is open.
pub struct AwsParts {
    pub courier: Arc<PasswordCourier>,
    pub commands: LateCommandStore,
}

/// Gives the AWS provisioner's parts the built application: its store to the
/// command store, its store and chat surface to the courier. Before this no
/// command can be recorded, so it comes before the application runs anything.
pub fn attach_aws(
    parts: &AwsParts,
    app: &App,
    surface: &Arc<dyn ChatSurface>,
    settings: &Settings,
) {
    parts.commands.attach(app.database.commands());
    attach_courier(&parts.courier, app, surface, settings);
}

/// Attaches the Windows password courier to the built application: its store,
/// chat surface and clock, and how long password messages stay in the chat
/// (`aws.password_message_ttl`).
pub fn attach_courier(
    courier: &PasswordCourier,
    app: &App,
    surface: &Arc<dyn ChatSurface>,
    settings: &Settings,
) {
    let ttl = settings
        .aws
        .as_ref()
        .map(|aws| aws.password_message_ttl)
        .unwrap_or_else(|| crate::adapters::aws::AwsSettings::default().password_message_ttl);
    courier.attach(CourierWiring {
        store: app.store.clone(),
        surfaces: vec![surface.clone()],
        clock: app.clock.clone(),
        password_message_ttl: Span::from_millis(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
    });
}

/// Runs everything due now and delivers every notice that can go, until
/// nothing is left to do at this moment (when this process holds the lease).
pub async fn settle(app: &App) -> Result<(), StoreError> {
    app.scheduler.settle().await
}

/// One console line: `<user>: <command>`, or `<user> in AR-n: <command>` to
/// type in a request's thread, or `!advance <duration>` to move the clock.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsoleLine {
    Command {
        user: UserId,
        thread: Option<RequestId>,
        text: String,
    },
    Advance(Span),
    Blank,
}

pub fn parse_console_line(line: &str) -> Result<ConsoleLine, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(ConsoleLine::Blank);
    }
    if let Some(rest) = line.strip_prefix("!advance") {
        return Span::parse(rest.trim())
            .map(ConsoleLine::Advance)
            .ok_or_else(|| "`!advance` needs a duration such as 50m or 2h".to_owned());
    }
    let Some((who, text)) = line.split_once(':') else {
        return Err("write `<user>: <command>`, e.g. `dev1: /passport request i-0123456789abcdef0 2h ticket#123 disk full`".into());
    };
    let (who, thread) = match who.split_once(" in ") {
        Some((user, thread)) => (
            user,
            Some(RequestId::parse(thread.trim()).map_err(|e| e.0)?),
        ),
        None => (who, None),
    };
    let user = UserId::parse(who).map_err(|e| e.0)?;
    Ok(ConsoleLine::Command {
        user,
        thread,
        text: text.trim().to_owned(),
    })
}

/// Reads console lines until end of input, answering each and printing every
/// notice; at the end, finishes what is due and returns.
pub async fn run_console<R: AsyncBufRead + Unpin>(
    app: &App,
    input: R,
    out: &Output,
    clock: Option<&OffsetClock>,
) -> Result<(), StoreError> {
    let print = |text: &str| {
        let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(o, "{text}");
        let _ = o.flush();
    };
    let mut lines = input.lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                print(&format!("[error] cannot read input: {e}"));
                break;
            }
        };
        match parse_console_line(&line) {
            Ok(ConsoleLine::Blank) => continue,
            Ok(ConsoleLine::Advance(by)) => match clock {
                Some(c) => {
                    c.advance(by);
                    print(&format!("[clock] now {}", app.engine.now()));
                }
                None => print("[error] the clock cannot be moved here"),
            },
            Ok(ConsoleLine::Command { user, thread, text }) => {
                let actor = Actor {
                    person: Person {
                        handle: user.to_string(),
                        id: user.clone(),
                    },
                    surface: "console".into(),
                };
                let reply = app.engine.handle_line(&actor, &text, thread).await;
                let mark = if reply.ok { "" } else { "error: " };
                print(&format!(
                    "[reply to {user}] {mark}{}",
                    reply.text.replace('\n', "\n    ")
                ));
            }
            Err(e) => print(&format!("[error] {e}")),
        }
        settle(app).await?;
    }
    settle(app).await?;
    finish_deliveries(app, FINISH_DELIVERIES_WITHIN).await
}

/// How long the console waits at the end of input for notices being retried.
pub const FINISH_DELIVERIES_WITHIN: Duration = Duration::from_secs(30);

/// Delivers what is still in the outbox, waiting for retries, for at most `within`.
/// Anything left stays in the outbox for the next start.
pub async fn finish_deliveries(app: &App, within: Duration) -> Result<(), StoreError> {
    if !app.scheduler.hold_lease().await? {
        // Another process delivers.
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let report = app.dispatcher.deliver_due().await?;
        let Some(next) = report.next_retry else {
            return Ok(());
        };
        let wait = next
            .since(app.engine.now())
            .to_std()
            .max(Duration::from_millis(20));
        if tokio::time::Instant::now() + wait > deadline {
            tracing::warn!("some notices could not be delivered yet; they stay in the outbox for the next start");
            return Ok(());
        }
        tokio::time::sleep(wait).await;
    }
}

/// Delivers what is still in the outbox until shortly before `deadline`
/// (a stopping `serve`'s), then stops delivering ([`Dispatcher::finish`]):
/// every notice that went, this pass's or the scheduler's still running, is
/// recorded as delivered before the store closes. One cut off between its
/// send and its record would go again at the next start. Sends stop a
/// quarter of the time left, at most 1 s, before `deadline`; what was not
/// sent stays in the outbox. Logs what it could not do.
///
/// [`Dispatcher::finish`]: crate::app::dispatch::Dispatcher::finish
pub async fn last_deliveries(app: &App, deadline: tokio::time::Instant) {
    let within = deadline.saturating_duration_since(tokio::time::Instant::now());
    let stop_sending = deadline - (within / 4).min(Duration::from_secs(1));
    let finishing = finish_deliveries(app, within);
    tokio::pin!(finishing);
    let early = tokio::time::timeout_at(stop_sending, &mut finishing)
        .await
        .ok();
    let stopped = async {
        let (delivered, recorded) = tokio::join!(
            async {
                match early {
                    Some(done) => done,
                    None => (&mut finishing).await,
                }
            },
            app.dispatcher.finish(),
        );
        delivered.and(recorded.map(drop))
    };
    match tokio::time::timeout_at(deadline, stopped).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not deliver or record the last notices; they stay in the outbox for the next start"),
        Err(_) => tracing::warn!("the shutdown grace period ended with a notice still being sent; it and the undelivered ones stay in the outbox for the next start"),
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

// ---------------------------------------------------------------------------
// Slack

/// Installs the process's one TLS crypto provider, ring (every client,
/// the AWS SDK's included, is built on it). rustls would pick it by itself
/// while it is the only provider linked in; installing it keeps that so if a
/// dependency ever brings another, where rustls would panic at the first TLS
/// set-up. Call it first thing in `main` and in every test binary that sets
/// up TLS; later calls do nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What `slack_app` and `discord_app` need beyond the settings.
#[derive(Clone)]
pub struct ChatOptions {
    pub clock: Arc<dyn Clock>,
    pub provisioner: Arc<dyn Provisioner>,
    /// How long an answer to the platform waits for the work (both allow 3 s;
    /// [`crate::adapters::chat::inbound::ACK_DEADLINE`] by default).
    pub ack_deadline: Duration,
    /// Mark every card and message DRY RUN (`provisioner = "dry-run"`).
    pub dry_run_label: bool,
    /// What `/readyz` asks besides the database and the chat platform: AWS
    /// when configured ([`readiness_probes`]).
    pub probes: Vec<Arc<dyn Probe>>,
}

/// The application with Slack as its chat surface.
pub struct SlackApp {
    pub app: App,
    /// The Slack chat surface, e.g. for the Windows password courier.
    pub surface: Arc<dyn ChatSurface>,
    /// `/slack/…` (in HTTP mode, or when a signing secret is set) and `/healthz`.
    pub router: axum::Router,
    /// The Socket Mode connection to start, in Socket Mode.
    pub socket: Option<SocketMode>,
    /// What the start warned about (also logged).
    pub warnings: Vec<String>,
}

/// `surface`, marking everything DRY RUN when `dry_run` is set.
fn labelled(surface: Arc<dyn ChatSurface>, dry_run: bool) -> Arc<dyn ChatSurface> {
    if dry_run {
        Arc::new(DryRunLabel::new(surface))
    } else {
        surface
    }
}

/// The dry-run provisioner, its lines logged: what `serve` uses while no AWS
/// provisioner is configured.
pub fn logged_dry_run(settings: &Settings) -> Arc<dyn Provisioner> {
    let sink: Sink = Arc::new(|line: &str| tracing::info!(target: "passport::dry_run", "{line}"));
    Arc::new(DryRunProvisioner::new(
        settings.dry_run_instances.clone(),
        Some(sink),
    ))
}

/// What reaches AWS: the provisioner and, when configured, the broker of
/// Session Manager credentials.
struct AwsPorts {
    provisioner: Arc<dyn Provisioner>,
    sessions: Option<Arc<dyn SessionBroker>>,
}

/// The engine, dispatcher (as `delivery` tunes it) and scheduler on
/// `store`, with `surface` as the one chat surface: what the console and every
/// chat platform share.
async fn assemble(
    settings: &Settings,
    database: Database,
    surface: Arc<dyn ChatSurface>,
    directory: Arc<dyn Directory>,
    aws: AwsPorts,
    clock: Arc<dyn Clock>,
    delivery: fn(Dispatcher) -> Dispatcher,
) -> Result<App, StartError> {
    let AwsPorts {
        provisioner,
        sessions,
    } = aws;
    let store = database.store();
    let engine = Engine::new(
        Ports {
            store: store.clone(),
            provisioner,
            directory,
            clock: clock.clone(),
        },
        settings.policy.clone(),
        settings.grammar.clone(),
        EngineSettings {
            warnings: settings.warnings.clone(),
            surfaces: vec![surface.name().to_owned()],
            limits: settings.limits,
            outbox_retention: settings.outbox_retention,
            ..EngineSettings::default()
        },
    );
    let engine = engine.with_token_ttl(settings.api.token_ttl);
    let engine = match &settings.ssh_ca {
        Some(ca) => engine.with_certificates(Arc::new(ca.load()?), ca.backdate),
        None => engine,
    };
    // A broker handed in (a test's) wins; otherwise `[aws] session_role_arn`'s.
    let sessions = match (sessions, &settings.aws) {
        (Some(broker), _) => Some(broker),
        (None, Some(aws)) => crate::adapters::aws::session_broker(aws)
            .await
            .map(|broker| Arc::new(broker) as Arc<dyn SessionBroker>),
        (None, None) => None,
    };
    let engine = match sessions {
        Some(broker) => engine.with_sessions(broker),
        None => engine,
    };
    let engine = Arc::new(match &settings.audit.checkpoint_file {
        Some(path) => engine.with_checkpoint_sink(Arc::new(CheckpointFile::new(path.clone()))),
        None => engine,
    });
    let dispatcher = Arc::new(delivery(Dispatcher::new(
        store.clone(),
        clock.clone(),
        vec![surface],
    )));
    let scheduler = Arc::new(Scheduler::new(
        engine.clone(),
        dispatcher.clone(),
        settings.jobs.clone(),
    ));
    Ok(App {
        engine,
        dispatcher,
        store,
        database,
        scheduler,
        clock,
    })
}

/// The groups read from the chat platform (`platform`: Passport group →
/// Slack user group or Discord role) that approve or administer, with what
/// they may do. Whoever can change their membership holds that power, so
/// start-up warns about each; a group that may only request is not worth a
/// warning.
fn to_lock_down<'a>(
    policy: &Policy,
    platform: &'a BTreeMap<String, String>,
) -> Vec<(&'a str, &'a str, String)> {
    let powers = policy.groups_in_power();
    platform
        .iter()
        .filter_map(|(group, there)| {
            powers
                .get(group)
                .map(|what| (group.as_str(), there.as_str(), what.join(", ")))
        })
        .collect()
}

/// Builds the Slack application: the store `[store]` chose, Slack surface and directory,
/// the engine, dispatcher and scheduler, the inbound handlers and the router.
pub async fn slack_app(
    settings: &Settings,
    slack: &SlackSettings,
    options: ChatOptions,
) -> Result<SlackApp, StartError> {
    slack_app_with_sessions(settings, slack, options, None).await
}

/// [`slack_app`] with `sessions` handing out Session Manager credentials.
pub async fn slack_app_with_sessions(
    settings: &Settings,
    slack: &SlackSettings,
    options: ChatOptions,
    sessions: Option<Arc<dyn SessionBroker>>,
) -> Result<SlackApp, StartError> {
    let api = SlackApi::new(
        &slack.api_url,
        &slack.bot_token,
        slack.channel_pace,
        slack.call_timeout,
    );
    // Before anything else: without it no request could be admitted.
    let workspace = crate::adapters::slack::workspace::learn(&api, slack).await?;
    tracing::info!(
        team = %workspace.team_id,
        enterprise = workspace.enterprise_id.as_deref().unwrap_or("-"),
        app = %workspace.app_id,
        "Slack requests are accepted only from this workspace and app"
    );
    let store = open_store(settings, options.clock.clone()).await?;
    let mentions = Mentions {
        platform_groups: slack.usergroups.clone(),
        groups: settings.groups.clone(),
    };
    let surface: Arc<dyn ChatSurface> = Arc::new(SlackSurface::new(
        api.clone(),
        slack.approvals_channel.clone(),
        slack.audit_channel.clone(),
        mentions,
    ));
    let mut warnings = Vec::new();
    for (group, usergroup, powers) in to_lock_down(&settings.policy, &slack.usergroups) {
        let warning = format!("Passport group {group} ({powers}) is the Slack user group {usergroup}: unless an admin restricted it, any member of the workspace can edit user groups and so make themselves a member; limit who may manage user groups (workspace settings), or list the members under [groups]");
        tracing::warn!(group = %group, usergroup = %usergroup, "{warning}");
        warnings.push(warning);
    }
    let directory = Arc::new(SlackDirectory::new(
        &settings.groups,
        api.clone(),
        slack.usergroups.clone(),
        slack.cache_ttl,
    ));
    let app = assemble(
        settings,
        store,
        labelled(surface.clone(), options.dry_run_label),
        directory,
        AwsPorts {
            provisioner: options.provisioner,
            sessions,
        },
        options.clock.clone(),
        std::convert::identity,
    )
    .await?;
    let people = Arc::new(People::new(api.clone()));
    let inbound = Arc::new(
        Inbound::new(
            app.engine.clone(),
            api.clone(),
            people,
            surface.clone(),
            workspace,
            Peer::new(
                surface.name(),
                app.dispatcher.peers(),
                options.clock.clone(),
            ),
        )
        .with_deadline(options.ack_deadline),
    );
    let endpoints = slack.signing_secret.clone().map(|secret| SlackEndpoints {
        inbound: inbound.clone(),
        signing_secret: secret,
        clock: options.clock.clone(),
    });
    let readiness = options.probes.into_iter().fold(
        Readiness::new(app.store.clone(), app.clock.clone())
            .with_probe(Arc::new(SlackProbe(api.clone()))),
        Readiness::with_probe,
    );
    let router = http::router(HttpState {
        store: app.store.clone(),
        clock: app.clock.clone(),
        slack: endpoints,
        discord: None,
        api: Some(app.engine.clone()),
        readiness: Arc::new(readiness),
    });
    let socket = match (slack.mode, &slack.app_token) {
        (SlackMode::Socket, Some(token)) => Some(SocketMode::new(api, token.clone(), inbound)),
        _ => None,
    };
    Ok(SlackApp {
        surface,
        app,
        router,
        socket,
        warnings,
    })
}

// ---------------------------------------------------------------------------
// Discord

/// The application with Discord as its chat surface.
pub struct DiscordApp {
    pub app: App,
    /// The Discord chat surface, e.g. for the Windows password courier.
    pub surface: Arc<dyn ChatSurface>,
    pub api: Arc<DiscordApi>,
    pub inbound: Arc<DiscordInbound>,
    /// `/discord/interactions` (when a public key is set) and `/healthz`.
    pub router: axum::Router,
    /// The gateway connection to start, in gateway mode.
    pub gateway: Option<Gateway>,
    /// What the start warned about (also logged).
    pub warnings: Vec<String>,
}

/// Builds the Discord application: the store `[store]` chose, Discord surface and
/// directory, the engine, dispatcher and scheduler, the inbound handlers and
/// the router. Registering `/passport` is left to the caller
/// ([`crate::adapters::discord::register_commands`]).
pub async fn discord_app(
    settings: &Settings,
    discord: &DiscordSettings,
    options: ChatOptions,
) -> Result<DiscordApp, StartError> {
    let store = open_store(settings, options.clock.clone()).await?;
    let api = DiscordApi::new(discord);
    let mentions = Mentions {
        platform_groups: discord.roles.clone(),
        groups: settings.groups.clone(),
    };
    let surface: Arc<dyn ChatSurface> = Arc::new(DiscordSurface::new(
        api.clone(),
        discord.approvals_channel.clone(),
        discord.audit_channel.clone(),
        mentions,
    ));
    let mut warnings = Vec::new();
    for (group, role, powers) in to_lock_down(&settings.policy, &discord.roles) {
        let warning = format!("Passport group {group} ({powers}) is the Discord role {role}: whoever may manage roles above it can give it to anyone; keep it above every role with Manage Roles, or list the members under [groups]");
        tracing::warn!(group = %group, role = %role, "{warning}");
        warnings.push(warning);
    }
    let directory = Arc::new(DiscordDirectory::new(
        &settings.groups,
        api.clone(),
        discord.guild_id,
        discord.roles.clone(),
        discord.cache_ttl,
    ));
    let app = assemble(
        settings,
        store,
        labelled(surface.clone(), options.dry_run_label),
        directory.clone(),
        AwsPorts {
            provisioner: options.provisioner,
            sessions: None,
        },
        options.clock.clone(),
        std::convert::identity,
    )
    .await?;
    let inbound = Arc::new(
        DiscordInbound::new(
            app.engine.clone(),
            api.clone(),
            directory,
            discord.guild_id,
            Peer::new(
                surface.name(),
                app.dispatcher.peers(),
                options.clock.clone(),
            ),
        )
        .with_deadline(options.ack_deadline),
    );
    let endpoints = discord
        .public_key
        .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).ok())
        .map(|public_key| DiscordEndpoints {
            inbound: inbound.clone(),
            public_key,
            clock: options.clock.clone(),
        });
    let readiness = options.probes.into_iter().fold(
        Readiness::new(app.store.clone(), app.clock.clone())
            .with_probe(Arc::new(DiscordProbe(api.clone()))),
        Readiness::with_probe,
    );
    let router = http::router(HttpState {
        store: app.store.clone(),
        clock: app.clock.clone(),
        slack: None,
        discord: endpoints,
        api: Some(app.engine.clone()),
        readiness: Arc::new(readiness),
    });
    let gateway = (discord.mode == DiscordMode::Gateway)
        .then(|| Gateway::new(discord.clone(), inbound.clone()));
    Ok(DiscordApp {
        surface,
        app,
        api,
        inbound,
        router,
        gateway,
        warnings,
    })
}
