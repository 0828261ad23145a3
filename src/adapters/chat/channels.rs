//! [`Channels`]: where a chat surface posts. Cards go to the rule's channel
//! or else the approvals channel, audit lines to the audit channel, and
//! direct messages to the DM channel opened once per person.

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
