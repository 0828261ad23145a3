//! [`Channels`]: where a chat surface posts. Cards go to the rule's channel
//! or else the approvals channel, audit lines to the audit channel, and
//! direct messages to the DM channel opened once per person. [`Surface`]
//! is a platform's chat surface: its API, where it posts and whom it notifies.

use std::sync::Arc;

use crate::adapters::chat::mentions::Mentions;
use crate::adapters::dm_channels::DmChannels;
use crate::domain::notice::CardView;

pub struct Channels {
    pub approvals: String,
    pub audit: String,
    pub dms: DmChannels,
}

impl Channels {
    pub fn new(approvals: String, audit: String) -> Self {
        Self {
            approvals,
            audit,
            dms: DmChannels::default(),
        }
    }

    /// The channel `card` goes to: its rule's, when set, else the approvals channel.
    pub fn of_card<'a>(&'a self, card: &'a CardView) -> &'a str {
        card.channel
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .unwrap_or(&self.approvals)
    }
}

/// A chat surface on the platform `Api` speaks to: each platform implements
/// `ChatSurface` for its own `Surface<…>`.
pub struct Surface<Api> {
    pub api: Arc<Api>,
    pub channels: Channels,
    pub mentions: Mentions,
}

impl<Api> Surface<Api> {
    pub fn new(
        api: Arc<Api>,
        approvals_channel: String,
        audit_channel: String,
        mentions: Mentions,
    ) -> Self {
        Self {
            api,
            channels: Channels::new(approvals_channel, audit_channel),
            mentions,
        }
    }
}
