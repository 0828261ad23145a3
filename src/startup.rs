//! Wiring: builds the engine and dispatcher from validated settings, and runs
//! the background loops (timers and outbox delivery) and the console.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::task::JoinHandle;

use crate::adapters::clock::OffsetClock;
use crate::adapters::console::{ConsoleSurface, Output};
use crate::adapters::directory::StaticDirectory;
use crate::adapters::dry_run::{DryRunProvisioner, Sink};
use crate::adapters::sqlite::SqliteStore;
use crate::app::dispatch::Dispatcher;
use crate::app::engine::{Actor, Engine, EngineSettings, Ports};
use crate::app::ports::{ChatSurface, Clock, StoreError};
use crate::config::Settings;
use crate::domain::time::Span;
use crate::domain::values::{parse_span, Person, RequestId, UserId};

/// The running application: one engine, one dispatcher, shared state.
#[derive(Clone)]
pub struct App {
    pub engine: Arc<Engine>,
    pub dispatcher: Arc<Dispatcher>,
    pub store: Arc<SqliteStore>,
}

/// Builds the console application: SQLite store, console surface, dry-run provisioner.
pub async fn console_app(
    settings: &Settings,
    out: Output,
    clock: Arc<dyn Clock>,
) -> Result<App, StoreError> {
    let store = Arc::new(SqliteStore::open(&settings.store_path, settings.durability).await?);
    let sink_out = out.clone();
    let sink: Sink = Arc::new(move |line: &str| {
        let mut o = sink_out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(o, "{line}");
    });
    let surfaces: Vec<Arc<dyn ChatSurface>> = vec![Arc::new(ConsoleSurface::new(out))];
    let engine = Engine::new(
        Ports {
            store: store.clone(),
            provisioner: Arc::new(DryRunProvisioner::new(
                settings.dry_run_instances.clone(),
                Some(sink),
            )),
            directory: Arc::new(StaticDirectory::new(&settings.groups)),
            clock: clock.clone(),
        },
        settings.policy.clone(),
        settings.grammar.clone(),
        EngineSettings {
            warnings: settings.warnings.clone(),
            surfaces: surfaces.iter().map(|s| s.name().to_owned()).collect(),
            ..EngineSettings::default()
        },
    );
    let dispatcher = Dispatcher::new(store.clone(), clock, surfaces).one_lane_at_a_time();
    Ok(App {
        engine: Arc::new(engine),
        dispatcher: Arc::new(dispatcher),
        store,
    })
}

/// Runs timers as they come due and delivers the outbox, until the task is aborted.
/// Sleeps until the next timer or notice is due, or until a commit wakes it.
pub fn spawn_background(app: &App) -> JoinHandle<()> {
    let app = app.clone();
    tokio::spawn(async move {
        loop {
            let wake = app.engine.wake.clone();
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let engine = app.engine.clone();
            // Jobs such as provisioning may take minutes; they run in their own
            // task so a slow one never delays an expiry.
            tokio::spawn(async move {
                if let Err(e) = engine.run_due().await {
                    tracing::error!(error = %e, "could not run due timers");
                }
            });
            let mut next_retry = None;
            match app.dispatcher.deliver_due().await {
                Ok(report) => next_retry = report.next_retry,
                Err(e) => tracing::error!(error = %e, "could not deliver notices"),
            }
            let now = app.engine.now();
            let next_timer = app.engine.store().next_timer_due().await.ok().flatten();
            let wait = [next_timer, next_retry]
                .into_iter()
                .flatten()
                .map(|t| t.since(now))
                .min()
                .unwrap_or(Span::from_secs(30))
                .min(Span::from_secs(30))
                .max(Span::from_millis(5));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait.to_std()) => {}
            }
        }
    })
}

/// Runs everything due now and delivers every notice that can go, repeatedly,
/// until nothing is left to do at this moment.
pub async fn settle(app: &App) -> Result<(), StoreError> {
    for _ in 0..100 {
        let ran = app.engine.run_due().await?;
        let report = app.dispatcher.deliver_due().await?;
        if ran == 0 && report.delivered == 0 {
            return Ok(());
        }
    }
    Ok(())
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
        return parse_span(rest.trim())
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

/// How long to wait for in-flight work on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
