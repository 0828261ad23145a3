//! Slack: the chat surface (cards, threads, direct messages, audit lines),
//! identity (handles and user groups), and what Slack sends Passport (slash
//! commands, button clicks, thread messages) over HTTP or Socket Mode.
//!
//! - [`config`]: the `[slack]` section and its validation.
//! - [`api`]: the Web API calls, on `slack-morphism`, errors mapped to `ChatError`.
//! - [`blocks`]: notices rendered as Block Kit within Slack's limits.
//! - [`surface`]: [`SlackSurface`], the `ChatSurface`.
//! - [`identity`]: [`People`] (handles) and [`SlackDirectory`] (groups).
//! - [`inbound`]: [`Inbound`], payloads → engine commands → answers.
//! - [`socket`]: Socket Mode.
//! - [`workspace`]: the workspace, enterprise and app Passport serves, and the
//!   check every payload passes before it is read further.
//!
//! The HTTP endpoints themselves (signature check, body limit) are in `crate::http`.

pub mod api;
pub mod blocks;
pub mod config;
pub mod identity;
pub mod inbound;
pub mod socket;
pub mod surface;
pub mod workspace;

pub use api::SlackApi;
pub use config::{SlackConfig, SlackMode, SlackSettings};
pub use identity::{People, SlackDirectory};
pub use inbound::{Ack, Answer, Inbound};
pub use surface::{SlackSurface, SURFACE};
pub use workspace::Workspace;
