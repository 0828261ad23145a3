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

/// Registers `/passport` where `[discord] commands` says, retrying with
/// backoff until it succeeds or is refused.
pub async fn register_commands(api: std::sync::Arc<DiscordApi>, settings: &DiscordSettings) {
    use crate::app::retry::{retry, Backoff, RetryPolicy, Verdict};
    use crate::domain::time::Span;
    let guild = match settings.commands {
        CommandScope::Off => return,
        CommandScope::Guild => Some(settings.guild_id),
        CommandScope::Global => None,
    };
    let definitions = commands::definitions();
    // Until it succeeds or is refused; temporary failures wait 1 s, doubling, at most 5 minutes.
    let policy = RetryPolicy {
        backoff: Backoff::new(Span::from_secs(1), Span::from_minutes(5)),
        attempts: None,
        jitter: false,
    };
    let registered = retry(
        "registering /passport",
        policy,
        || api.register_commands(guild, &definitions),
        Verdict::of_chat,
    )
    .await;
    match registered {
        Ok(()) => tracing::info!(scope = ?settings.commands, "registered /passport"),
        Err(e) => {
            tracing::error!(error = %e, "Discord refused to register /passport: check discord.application_id, discord.guild_id and that the bot was invited with the applications.commands scope");
        }
    }
}
