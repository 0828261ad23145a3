//! Gateway mode: Passport connects to Discord's gateway with serenity and
//! receives interactions and messages over it, so no public URL is needed.
//! Events go to the same handlers as the HTTP endpoint ([`Inbound`]).
//!
//! Intents: guilds, guild messages and message content (a privileged
//! intent: turn on "Message Content Intent" under Bot in the Developer
//! Portal), so that `extend 1h` or `done` written in a request's thread acts.

use std::sync::Arc;

use serenity::all::{
    Client, Context, EventHandler, GatewayIntents, Interaction as GatewayInteraction, Message,
    Ready,
};

use super::config::DiscordSettings;
use super::inbound::{
    Inbound, Interaction, UserPayload, APPLICATION_COMMAND, MESSAGE_COMPONENT, PING,
};
use crate::app::retry::Backoff;
use crate::domain::time::Span;

/// The wait before reconnecting after the gateway client stopped: 1 s after
/// a clean end, doubling with each failure in a row, at most a minute.
const RECONNECT: Backoff = Backoff::new(Span::from_secs(1), Span::from_minutes(1));

/// The intents Passport asks for.
pub fn intents() -> GatewayIntents {
    GatewayIntents::GUILDS | GatewayIntents::GUILD_MESSAGES | GatewayIntents::MESSAGE_CONTENT
}

/// An interaction from serenity's model, as the handlers read it. The
/// gateway sends interactions in the same JSON as the HTTP endpoint, so this
/// goes through that JSON (serenity leaves out the `type`, which its enum
/// variant carries).
pub fn from_gateway(i: &GatewayInteraction) -> Option<Interaction> {
    let kind = match i {
        GatewayInteraction::Ping(_) => PING,
        GatewayInteraction::Command(_) => APPLICATION_COMMAND,
        GatewayInteraction::Component(_) => MESSAGE_COMPONENT,
        // Autocomplete, modal submissions and kinds added later: not Passport's.
        _ => return None,
    };
    let mut value = serde_json::to_value(i).ok()?;
    value.as_object_mut()?.insert("type".into(), kind.into());
    serde_json::from_value(value).ok()
}

/// The author of a message as the handlers read it.
pub fn author_of(message: &Message) -> UserPayload {
    UserPayload {
        id: message.author.id.to_string(),
        username: Some(message.author.name.clone()),
        global_name: message.author.global_name.clone(),
        bot: Some(message.author.bot),
    }
}

struct Handler {
    inbound: Arc<Inbound>,
}

#[serenity::async_trait]
impl EventHandler for Handler {
    async fn ready(&self, _ctx: Context, ready: Ready) {
        tracing::info!(user = %ready.user.name, guilds = ready.guilds.len(), "connected to the Discord gateway");
    }

    async fn interaction_create(&self, _ctx: Context, interaction: GatewayInteraction) {
        match from_gateway(&interaction) {
            Some(i) => {
                let inbound = self.inbound.clone();
                tokio::spawn(async move { inbound.over_gateway(i).await });
            }
            None => tracing::warn!("an interaction from the gateway could not be read"),
        }
    }

    async fn message(&self, _ctx: Context, message: Message) {
        // Only messages in server channels: a thread belongs to a server
        // (and Passport serves one, which `thread_message` checks).
        let Some(guild) = message.guild_id else {
            return;
        };
        let inbound = self.inbound.clone();
        tokio::spawn(async move {
            inbound
                .thread_message(
                    &guild.to_string(),
                    author_of(&message),
                    &message.channel_id.to_string(),
                    &message.id.to_string(),
                    &message.content,
                )
                .await;
        });
    }
}

/// The gateway connection, started with [`Gateway::spawn`].
pub struct Gateway {
    settings: DiscordSettings,
    inbound: Arc<Inbound>,
}

impl Gateway {
    pub fn new(settings: DiscordSettings, inbound: Arc<Inbound>) -> Self {
        Self { settings, inbound }
    }

    /// Connects and keeps reconnecting with backoff until aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut failures = 0;
            loop {
                // serenity's own client, rate limiter on: the gateway talks to Discord itself.
                let built = Client::builder(self.settings.bot_token.expose(), intents())
                    .event_handler(Handler {
                        inbound: self.inbound.clone(),
                    });
                match built.await {
                    Ok(mut client) => {
                        if let Err(e) = client.start().await {
                            tracing::warn!(error = %e, "the Discord gateway connection ended; reconnecting");
                        } else {
                            failures = 0;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot set up the Discord gateway client")
                    }
                }
                tokio::time::sleep(RECONNECT.wait_after(failures)).await;
                failures += 1;
            }
        })
    }
}
