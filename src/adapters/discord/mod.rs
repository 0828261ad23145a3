//! Discord: the chat surface (cards with buttons, a thread per card, direct
//! messages, audit lines), identity (roles), and what Discord sends Passport
//! (`/passport` commands, button clicks, thread messages) over the gateway
//! or the HTTP interactions endpoint.
//!
//! - [`config`]: the `[discord]` section and its validation.
//! - [`api`]: the REST calls, on serenity's HTTP client, errors mapped to `ChatError`.
//! - [`render`]: notices rendered as messages within Discord's limits.
//! - [`surface`]: [`DiscordSurface`], the `ChatSurface`.
//! - [`identity`]: [`DiscordDirectory`] (groups from roles).
//! - [`commands`]: the `/passport` command definition and its options → command lines.
//! - [`inbound`]: [`Inbound`], interactions → engine commands → answers.
//! - [`gateway`]: gateway mode, on serenity's client.
//!
//! The HTTP endpoint itself (signature check, body limit) is in `crate::http`.

pub mod api;
pub mod commands;
pub mod config;
pub mod gateway;
pub mod identity;
pub mod inbound;
pub mod render;
pub mod surface;

pub use api::DiscordApi;
pub use config::{CommandScope, DiscordConfig, DiscordMode, DiscordSettings};
pub use identity::DiscordDirectory;
pub use inbound::Inbound;
pub use surface::{DiscordSurface, SURFACE};

use std::time::Duration;

/// Registers `/passport` where `[discord] commands` says, retrying with
/// backoff until it succeeds or is refused.
pub async fn register_commands(api: std::sync::Arc<DiscordApi>, settings: &DiscordSettings) {
    use crate::app::ports::ChatError;
    let guild = match settings.commands {
        CommandScope::Off => return,
        CommandScope::Guild => Some(settings.guild_id),
        CommandScope::Global => None,
    };
    let definitions = commands::definitions();
    let mut wait = Duration::from_secs(1);
    loop {
        match api.register_commands(guild, &definitions).await {
            Ok(()) => {
                tracing::info!(scope = ?settings.commands, "registered /passport");
                return;
            }
            Err(ChatError::RateLimited { retry_after_ms }) => {
                tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
            }
            Err(ChatError::Transient(e)) => {
                tracing::warn!(error = %e, "cannot register /passport yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(300));
            }
            Err(e) => {
                tracing::error!(error = %e, "Discord refused to register /passport: check discord.application_id, discord.guild_id and that the bot was invited with the applications.commands scope");
                return;
            }
        }
    }
}
