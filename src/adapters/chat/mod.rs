//! What the Slack and Discord adapters share, so that each keeps only its
//! wire format: on the way in, [`inbound::InboundCore`] runs a person's line
//! and sees the answer through (repeated deliveries, the request a thread
//! belongs to, waiting briefly for the work, answers sent later or queued);
//! on the way out, [`channels::Channels`] says where cards, audit lines and
//! direct messages go, and [`mentions::Mentions`] whom a card notifies.

pub mod card;
pub mod channels;
pub mod inbound;
pub mod mentions;

#[cfg(test)]
pub mod fixtures;
