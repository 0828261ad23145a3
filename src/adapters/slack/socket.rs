//! Socket Mode: for workspaces without a public URL, Passport opens a
//! WebSocket to Slack (`apps.connections.open` with the app-level token) and
//! receives the same slash commands, clicks and events there.
//!
//! Slash commands and events are acknowledged before they are handled, so
//! Slack never redelivers because a handler was slow; a slash command's
//! answer goes through its `response_url`. Clicks and form submissions are
//! acknowledged with the handler's answer, which waits for the work at most
//! the 2.5-second deadline, because a form's field errors travel in the
//! acknowledgement. The handlers are those of HTTP mode ([`Inbound`]).
//! A dropped connection, a `disconnect` notice (Slack refreshes connections
//! every few hours) or a silent one is replaced, with exponential backoff
//! between failed attempts.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::app::retry::{jitter, Backoff};
use crate::config::Secret;
use crate::domain::time::Span;

use super::api::SlackApi;
use super::inbound::{Ack, Answer, EventBody, Inbound, Interaction, SlashCommand};

/// The sending half of a connection, shared by the tasks that acknowledge.
type Writer = Arc<
    tokio::sync::Mutex<
        futures::stream::SplitSink<
            tokio_tungstenite::WebSocketStream<
                tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
            >,
            Message,
        >,
    >,
>;

/// A connection that has said nothing for this long is taken as dead (Slack
/// pings every few seconds).
const SILENCE: Duration = Duration::from_secs(120);
/// Reconnecting after failed connections in a row: 1 s, doubling, at most a minute, jittered.
const RECONNECT: Backoff = Backoff::new(Span::from_secs(1), Span::from_minutes(1));

#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    envelope_id: Option<String>,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    reason: Option<String>,
}

pub struct SocketMode {
    api: Arc<SlackApi>,
    app_token: Secret,
    inbound: Arc<Inbound>,
}

/// Why a session ended.
enum Ended {
    /// Slack asked us to reconnect, or closed the connection after a hello.
    Reconnect,
}

impl SocketMode {
    pub fn new(api: Arc<SlackApi>, app_token: Secret, inbound: Arc<Inbound>) -> Self {
        Self {
            api,
            app_token,
            inbound,
        }
    }

    /// Keeps a connection open until the task is aborted.
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut failures = 0;
            loop {
                match self.session().await {
                    Ok(Ended::Reconnect) => {
                        failures = 0;
                        continue;
                    }
                    Err(e) => {
                        let wait = jitter(RECONNECT.wait_after(failures));
                        failures += 1;
                        tracing::warn!(error = %e, retry_in = ?wait, "Socket Mode connection failed");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        })
    }

    async fn session(&self) -> Result<Ended, String> {
        let url = self
            .api
            .socket_url(&self.app_token)
            .await
            .map_err(|e| format!("apps.connections.open: {e}"))?;
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| format!("cannot open the WebSocket: {e}"))?;
        let (write, mut read) = ws.split();
        let write: Writer = Arc::new(tokio::sync::Mutex::new(write));
        let mut greeted = false;
        loop {
            let next = match tokio::time::timeout(SILENCE, read.next()).await {
                Ok(next) => next,
                Err(_) => return Err("no message from Slack for two minutes".into()),
            };
            let text = match next {
                None | Some(Ok(Message::Close(_))) if greeted => return Ok(Ended::Reconnect),
                None | Some(Ok(Message::Close(_))) => {
                    return Err("Slack closed the connection before saying hello".into())
                }
                Some(Err(e)) if greeted => {
                    tracing::info!(error = %e, "Socket Mode connection dropped; reconnecting");
                    return Ok(Ended::Reconnect);
                }
                Some(Err(e)) => return Err(format!("WebSocket error: {e}")),
                Some(Ok(Message::Text(t))) => t.to_string(),
                Some(Ok(Message::Ping(p))) => {
                    let _ = write.lock().await.send(Message::Pong(p)).await;
                    continue;
                }
                Some(Ok(_)) => continue,
            };
            let envelope: Envelope = match serde_json::from_str(&text) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable Socket Mode message ignored");
                    continue;
                }
            };
            match envelope.kind.as_str() {
                "hello" => {
                    greeted = true;
                    tracing::info!("Socket Mode connected");
                }
                "disconnect" => {
                    tracing::info!(reason = ?envelope.reason, "Slack asked to reconnect");
                    return Ok(Ended::Reconnect);
                }
                "interactive" => self.interact(envelope, write.clone()),
                kind => {
                    // Acknowledge first: the handler may take longer than Slack waits.
                    if let Some(id) = &envelope.envelope_id {
                        let ack = json!({ "envelope_id": id }).to_string();
                        if let Err(e) = write.lock().await.send(Message::Text(ack.into())).await {
                            return Err(format!("cannot acknowledge an envelope: {e}"));
                        }
                    }
                    self.dispatch(kind, envelope.payload);
                }
            }
        }
    }

    /// A click or form submission: handled first (within the deadline), then
    /// acknowledged with the handler's answer, e.g. a form's field errors.
    fn interact(&self, envelope: Envelope, write: Writer) {
        let inbound = self.inbound.clone();
        tokio::spawn(async move {
            let answer = match envelope.payload.map(serde_json::from_value::<Interaction>) {
                Some(Ok(i)) => inbound.interaction(i).await,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Socket Mode interaction not understood; ignored");
                    Ack::Empty
                }
                None => Ack::Empty,
            };
            let Some(id) = envelope.envelope_id else {
                return;
            };
            let ack = match answer {
                Ack::Json(payload) => json!({ "envelope_id": id, "payload": payload }),
                Ack::Empty | Ack::Refused => json!({ "envelope_id": id }),
            };
            let sent = write
                .lock()
                .await
                .send(Message::Text(ack.to_string().into()))
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "cannot acknowledge an interaction");
            }
        });
    }

    fn dispatch(&self, kind: &str, payload: Option<Value>) {
        let Some(payload) = payload else { return };
        let inbound = self.inbound.clone();
        let kind = kind.to_owned();
        tokio::spawn(async move {
            let understood = match kind.as_str() {
                "slash_commands" => match serde_json::from_value::<SlashCommand>(payload) {
                    Ok(cmd) => {
                        inbound.command(cmd, Answer::Later).await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                "events_api" => match serde_json::from_value::<EventBody>(payload) {
                    Ok(e) => {
                        inbound.event(e).await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                _ => Ok(()),
            };
            if let Err(e) = understood {
                tracing::warn!(kind, error = %e, "Socket Mode payload not understood; ignored");
            }
        });
    }
}
