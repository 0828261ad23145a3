//! [`SlackSurface`]: the chat surface on Slack. Cards go to the approvals
//! channel (or the rule's channel) and are edited in place; thread replies go
//! under the card; direct messages through `conversations.open`; audit lines to
//! the audit channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::app::ports::{ChatError, ChatSurface, MessageRef};
use crate::domain::notice::{Action, CardView};
use crate::domain::values::UserId;

use super::api::SlackApi;
use super::blocks::{audit_content, card_content, text_content, Mentions};

/// The name notices and chat references use for Slack.
pub const SURFACE: &str = "slack";

pub struct SlackSurface {
    api: Arc<SlackApi>,
    approvals_channel: String,
    audit_channel: String,
    mentions: Mentions,
    /// User id → direct-message channel id.
    dm_channels: Mutex<HashMap<String, String>>,
}

impl SlackSurface {
    pub fn new(
        api: Arc<SlackApi>,
        approvals_channel: String,
        audit_channel: String,
        mentions: Mentions,
    ) -> Self {
        Self {
            api,
            approvals_channel,
            audit_channel,
            mentions,
            dm_channels: Mutex::new(HashMap::new()),
        }
    }

    async fn dm_channel(&self, user: &UserId) -> Result<String, ChatError> {
        let cached = self
            .dm_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user.as_str())
            .cloned();
        if let Some(c) = cached {
            return Ok(c);
        }
        let channel = self.api.open_dm(user.as_str()).await?;
        self.dm_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.as_str().to_owned(), channel.clone());
        Ok(channel)
    }
}

#[async_trait]
impl ChatSurface for SlackSurface {
    fn name(&self) -> &str {
        SURFACE
    }

    async fn post_card(&self, card: &CardView) -> Result<MessageRef, ChatError> {
        let channel = card
            .channel
            .as_deref()
            .filter(|c| !c.trim().is_empty())
            .unwrap_or(&self.approvals_channel);
        let content = card_content(card, &self.mentions.of(&card.approvers));
        let posted = self.api.post_message(channel, content, None).await?;
        // Slack answers with the channel's id even when it was named, and
        // chat.update needs the id.
        Ok(MessageRef {
            channel: posted.channel,
            message: posted.ts,
        })
    }

    async fn update_card(&self, at: &MessageRef, card: &CardView) -> Result<(), ChatError> {
        let content = card_content(card, &self.mentions.of(&card.approvers));
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
    ) -> Result<(), ChatError> {
        let channel = self.dm_channel(user).await?;
        self.api
            .post_message(&channel, text_content(text, actions), None)
            .await
            .map(|_| ())
    }

    async fn post_audit(&self, line: &str) -> Result<(), ChatError> {
        self.api
            .post_message(&self.audit_channel, audit_content(line), None)
            .await
            .map(|_| ())
    }
}
