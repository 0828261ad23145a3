//! [`SlackSurface`]: the chat surface on Slack. Cards go to the approvals
//! channel (or the rule's channel) and are edited in place; thread replies go
//! under the card; direct messages through `conversations.open`; audit lines to
//! the audit channel. A message is deleted with `chat.delete`.

use async_trait::async_trait;

use crate::adapters::chat::channels::Surface;
use crate::app::ports::{ChatError, ChatSurface, MessageRef};
use crate::domain::notice::{Action, CardView};
use crate::domain::values::UserId;

use super::api::SlackApi;
use super::blocks::{audit_content, card_content, mention_text, text_content};

/// The name notices and chat references use for Slack.
pub const SURFACE: &str = "slack";

pub type SlackSurface = Surface<SlackApi>;

#[async_trait]
impl ChatSurface for SlackSurface {
    fn name(&self) -> &str {
        SURFACE
    }

    async fn post_card(&self, card: &CardView) -> Result<MessageRef, ChatError> {
        let channel = self.channels.of_card(card);
        let content = card_content(card, &mention_text(&self.mentions, &card.approvers));
        let posted = self.api.post_message(channel, content, None).await?;
        // Slack answers with the channel's id even when it was named, and
        // chat.update needs the id.
        Ok(MessageRef {
            channel: posted.channel,
            message: posted.ts,
        })
    }

    async fn update_card(&self, at: &MessageRef, card: &CardView) -> Result<(), ChatError> {
        let content = card_content(card, &mention_text(&self.mentions, &card.approvers));
        self.api
            .update_message(&at.channel, &at.message, content)
            .await
    }

    async fn reply_in_thread(
        &self,
        at: &MessageRef,
        text: &str,
        actions: &[Action],
    ) -> Result<(), ChatError> {
        self.api
            .post_message(&at.channel, text_content(text, actions), Some(&at.message))
            .await
            .map(|_| ())
    }

    async fn direct_message(
        &self,
        user: &UserId,
        text: &str,
        actions: &[Action],
    ) -> Result<MessageRef, ChatError> {
        let open = || self.api.open_dm(user.as_str());
        let channel = self.channels.dms.of(user, open).await?;
        let posted = self
            .api
            .post_message(&channel, text_content(text, actions), None)
            .await?;
        Ok(MessageRef {
            channel: posted.channel,
            message: posted.ts,
        })
    }

    async fn post_audit(&self, line: &str) -> Result<(), ChatError> {
        self.api
            .post_message(&self.channels.audit, audit_content(line), None)
            .await
            .map(|_| ())
    }

    async fn delete_message(&self, at: &MessageRef) -> Result<(), ChatError> {
        self.api.delete_message(&at.channel, &at.message).await
    }
}
