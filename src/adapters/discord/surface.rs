//! [`DiscordSurface`]: the chat surface on Discord. Cards go to the approvals
//! channel (or the rule's channel) and are edited in place; each card gets a
//! thread (whose channel id is the card's message id) for the lifecycle;
//! direct messages go through a DM channel; audit lines to the audit channel.

use async_trait::async_trait;

use crate::adapters::chat::channels::Surface;
use crate::app::ports::{ChatError, ChatSurface, MessageRef};
use crate::domain::notice::{Action, CardView};
use crate::domain::values::UserId;

use super::api::DiscordApi;
use super::render::{audit_message, card_message, text_message, thread_name};

/// The name notices and chat references use for Discord.
pub const SURFACE: &str = "discord";

pub type DiscordSurface = Surface<DiscordApi>;

#[async_trait]
impl ChatSurface for DiscordSurface {
    fn name(&self) -> &str {
        SURFACE
    }

    async fn post_card(&self, card: &CardView) -> Result<MessageRef, ChatError> {
        let channel = self.channels.of_card(card).to_owned();
        let message = self
            .api
            .post_message(&channel, &card_message(card, &self.mentions))
            .await?;
        // The card is posted, so this never fails the delivery (which would
        // post a second card); a reply starts the thread if this did not.
        if let Err(e) = self
            .api
            .start_thread(&channel, &message, &thread_name(card))
            .await
        {
            tracing::warn!(request = %card.request, error = %e, "cannot start the card's thread yet");
        }
        Ok(MessageRef { channel, message })
    }

    async fn update_card(&self, at: &MessageRef, card: &CardView) -> Result<(), ChatError> {
        self.api
            .edit_message(
                &at.channel,
                &at.message,
                &card_message(card, &self.mentions),
            )
            .await
    }

    async fn reply_in_thread(
        &self,
        at: &MessageRef,
        text: &str,
        actions: &[Action],
    ) -> Result<(), ChatError> {
        // Starting the thread with the card may have failed: this starts it then.
        self.api
            .post_in_thread(&at.channel, &at.message, &text_message(text, actions))
            .await
    }

    async fn direct_message(
        &self,
        user: &UserId,
        text: &str,
        actions: &[Action],
    ) -> Result<MessageRef, ChatError> {
        let open = || self.api.open_dm(user.as_str());
        let channel = self.channels.dms.of(user, open).await?;
        let message = self
            .api
            .post_message(&channel, &text_message(text, actions))
            .await?;
        Ok(MessageRef { channel, message })
    }

    async fn post_audit(&self, line: &str) -> Result<(), ChatError> {
        self.api
            .post_message(&self.channels.audit, &audit_message(line))
            .await
            .map(|_| ())
    }

    async fn delete_message(&self, at: &MessageRef) -> Result<(), ChatError> {
        self.api.delete_message(&at.channel, &at.message).await
    }
}
