//! [`DmChannels`]: the direct-message channel of each user, opened once
//! (`conversations.open` on Slack, `POST /users/@me/channels` on Discord)
//! and remembered.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use crate::app::ports::ChatError;
use crate::domain::values::UserId;

#[derive(Default)]
pub struct DmChannels {
    /// User id → direct-message channel id.
    known: Mutex<HashMap<String, String>>,
}

impl DmChannels {
    /// The channel of `user`, opened with `open` the first time.
    pub async fn of<F, Fut>(&self, user: &UserId, open: F) -> Result<String, ChatError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, ChatError>>,
    {
        let known = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user.as_str())
            .cloned();
        if let Some(channel) = known {
            return Ok(channel);
        }
        let channel = open().await?;
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.as_str().to_owned(), channel.clone());
        Ok(channel)
    }
}
