//! The Discord REST calls Passport makes, on serenity's HTTP client.
//!
//! Requests are built with serenity's routes and, against Discord itself, go
//! through serenity's rate limiter, which keeps to each route's bucket
//! (`X-RateLimit-*`) and waits out 429s (`Retry-After`, global limits). When
//! `api_url` points elsewhere, serenity requires its limiter off; a 429 from
//! there becomes [`ChatError::RateLimited`] with the server's `Retry-After`,
//! and the outbox waits that long before trying again.
//!
//! Responses are read into the few fields Passport uses, so fields Discord
//! adds later never make a call fail.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use serenity::http::{Http, HttpBuilder, LightMethod, Request, Route};
use serenity::model::id::{
    ApplicationId, ChannelId, GuildId, InteractionId, MessageId, UserId as DiscordUserId,
};

use crate::app::ports::ChatError;

use super::config::{snowflake, DiscordSettings};

/// How long one REST call may take before it counts as a temporary failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Discord's error code for "a thread has already been created for this message".
const THREAD_EXISTS: i64 = 160_004;
/// Discord's error code for "Unknown Member".
const UNKNOWN_MEMBER: i64 = 10_007;
/// Discord's error code for "Unknown Channel" (also: a thread not started yet).
const UNKNOWN_CHANNEL: i64 = 10_003;
/// Discord's error code for "Unknown Message".
const UNKNOWN_MESSAGE: i64 = 10_008;

/// A failed call: how the outbox should treat it, and Discord's JSON error
/// code when Discord refused it, so callers decide on the code, not on text.
struct Failure {
    error: ChatError,
    code: Option<i64>,
}

impl From<ChatError> for Failure {
    fn from(error: ChatError) -> Self {
        Self { error, code: None }
    }
}

/// A guild member as Passport needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub username: String,
    pub roles: Vec<String>,
}

pub struct DiscordApi {
    http: Arc<Http>,
    client: reqwest::Client,
    application_id: u64,
}

fn id(text: &str) -> Result<u64, ChatError> {
    snowflake(text).ok_or_else(|| ChatError::Permanent(format!("{text:?} is not a Discord id")))
}

/// The time to wait after a 429: `Retry-After`, else `X-RateLimit-Reset-After`,
/// else the body's `retry_after`, else one second.
fn retry_after_ms(headers: &reqwest::header::HeaderMap, body: &Value) -> u64 {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let secs = header("retry-after")
        .or_else(|| header("x-ratelimit-reset-after"))
        .or_else(|| body["retry_after"].as_f64())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(1.0);
    // At most ten minutes: a longer wait is a misbehaving server.
    (secs.min(600.0) * 1000.0).ceil() as u64
}

impl DiscordApi {
    pub fn new(settings: &DiscordSettings) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(CALL_TIMEOUT)
            .build()
            .unwrap_or_default();
        let mut builder = HttpBuilder::new(settings.bot_token.expose())
            .client(client.clone())
            .application_id(ApplicationId::new(settings.application_id));
        if !settings.is_discord() {
            let origin = settings.api_url.trim_end_matches("/api");
            builder = builder.proxy(origin).ratelimiter_disabled(true);
        }
        Arc::new(Self {
            http: Arc::new(builder.build()),
            client,
            application_id: settings.application_id,
        })
    }

    /// serenity's client, for the gateway.
    pub fn serenity(&self) -> Arc<Http> {
        self.http.clone()
    }

    async fn call(
        &self,
        route: Route<'_>,
        method: LightMethod,
        body: Option<&Value>,
    ) -> Result<Value, ChatError> {
        self.request(route, method, body).await.map_err(|f| f.error)
    }

    async fn request(
        &self,
        route: Route<'_>,
        method: LightMethod,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ChatError::Permanent(format!("cannot encode the request: {e}")))?;
        let request = Request::new(route, method).body(body);
        let sent = match &self.http.ratelimiter {
            Some(limiter) => limiter.perform(request).await,
            None => {
                match request.build(&self.client, self.http.token(), self.http.proxy.as_deref()) {
                    Ok(built) => match built.build() {
                        Ok(r) => self.client.execute(r).await.map_err(Into::into),
                        Err(e) => Err(e.into()),
                    },
                    Err(e) => Err(e),
                }
            }
        };
        let response =
            sent.map_err(|e| ChatError::Transient(format!("Discord unreachable: {e}")))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ChatError::Transient(format!("Discord's answer was cut off: {e}")))?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            return Ok(body);
        }
        if status.as_u16() == 429 {
            return Err(ChatError::RateLimited {
                retry_after_ms: retry_after_ms(&headers, &body),
            }
            .into());
        }
        let code = body["code"].as_i64();
        let detail = format!(
            "Discord answered {} (code {}: {})",
            status.as_u16(),
            code.unwrap_or(0),
            body["message"].as_str().unwrap_or("no message")
        );
        let error = if status.is_server_error() {
            ChatError::Transient(detail)
        } else {
            ChatError::Permanent(detail)
        };
        Err(Failure { error, code })
    }

    /// `GET /users/@me`: the bot's own user name, which answers only for a
    /// valid bot token.
    pub async fn current_user(&self) -> Result<String, ChatError> {
        let me = self.call(Route::UserMe, LightMethod::Get, None).await?;
        Ok(me["username"].as_str().unwrap_or_default().to_owned())
    }

    /// Posts a message; answers its id.
    pub async fn post_message(&self, channel: &str, message: &Value) -> Result<String, ChatError> {
        let route = Route::ChannelMessages {
            channel_id: ChannelId::new(id(channel)?),
        };
        let posted = self.call(route, LightMethod::Post, Some(message)).await?;
        posted["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ChatError::Transient("Discord's answer has no message id".into()))
    }

    pub async fn edit_message(
        &self,
        channel: &str,
        message_id: &str,
        message: &Value,
    ) -> Result<(), ChatError> {
        let route = Route::ChannelMessage {
            channel_id: ChannelId::new(id(channel)?),
            message_id: MessageId::new(id(message_id)?),
        };
        self.call(route, LightMethod::Patch, Some(message))
            .await
            .map(|_| ())
    }

    /// Deletes a message the bot posted (204 No Content). One that is gone
    /// already (404, `10008 Unknown Message`) counts as deleted.
    pub async fn delete_message(&self, channel: &str, message_id: &str) -> Result<(), ChatError> {
        let route = Route::ChannelMessage {
            channel_id: ChannelId::new(id(channel)?),
            message_id: MessageId::new(id(message_id)?),
        };
        match self.request(route, LightMethod::Delete, None).await {
            Ok(_) => Ok(()),
            Err(f) if f.code == Some(UNKNOWN_MESSAGE) => Ok(()),
            Err(f) => Err(f.error),
        }
    }

    /// Starts the thread of a message (its id becomes the thread's channel
    /// id). A thread that exists already is fine.
    pub async fn start_thread(
        &self,
        channel: &str,
        message_id: &str,
        name: &str,
    ) -> Result<(), ChatError> {
        let route = Route::ChannelMessageThreads {
            channel_id: ChannelId::new(id(channel)?),
            message_id: MessageId::new(id(message_id)?),
        };
        let body = json!({ "name": name, "auto_archive_duration": 10080 });
        match self.request(route, LightMethod::Post, Some(&body)).await {
            Ok(_) => Ok(()),
            Err(f) if f.code == Some(THREAD_EXISTS) => Ok(()),
            Err(f) => Err(f.error),
        }
    }

    /// Posts in the thread of the card `card` in `channel` (the thread's
    /// channel id is the card's message id), starting the thread first if
    /// it does not exist yet.
    pub async fn post_in_thread(
        &self,
        channel: &str,
        card: &str,
        message: &Value,
    ) -> Result<(), ChatError> {
        let route = || -> Result<Route<'static>, ChatError> {
            Ok(Route::ChannelMessages {
                channel_id: ChannelId::new(id(card)?),
            })
        };
        match self
            .request(route()?, LightMethod::Post, Some(message))
            .await
        {
            Ok(_) => Ok(()),
            Err(f) if f.code == Some(UNKNOWN_CHANNEL) => {
                self.start_thread(channel, card, "Passport access request")
                    .await?;
                self.call(route()?, LightMethod::Post, Some(message))
                    .await
                    .map(|_| ())
            }
            Err(f) => Err(f.error),
        }
    }

    /// The direct-message channel with `user`.
    pub async fn open_dm(&self, user: &str) -> Result<String, ChatError> {
        let body = json!({ "recipient_id": user });
        let channel = self
            .call(Route::UserMeDmChannels, LightMethod::Post, Some(&body))
            .await?;
        channel["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ChatError::Transient("Discord's answer has no channel id".into()))
    }

    /// A member of `guild`, or `None` when they are not one.
    pub async fn member(&self, guild: u64, user: &str) -> Result<Option<MemberInfo>, ChatError> {
        let route = Route::GuildMember {
            guild_id: GuildId::new(guild),
            user_id: DiscordUserId::new(id(user)?),
        };
        match self.request(route, LightMethod::Get, None).await {
            Ok(m) => Ok(Some(MemberInfo {
                username: m["user"]["username"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                roles: m["roles"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            })),
            Err(f) if f.code == Some(UNKNOWN_MEMBER) => Ok(None),
            Err(f) => Err(f.error),
        }
    }

    /// Replaces the application's commands, in `guild` or globally.
    pub async fn register_commands(
        &self,
        guild: Option<u64>,
        commands: &Value,
    ) -> Result<(), ChatError> {
        let application_id = ApplicationId::new(self.application_id);
        let route = match guild {
            Some(g) => Route::GuildCommands {
                application_id,
                guild_id: GuildId::new(g),
            },
            None => Route::Commands { application_id },
        };
        self.call(route, LightMethod::Put, Some(commands))
            .await
            .map(|_| ())
    }

    /// Answers an interaction that came over the gateway.
    pub async fn interaction_callback(
        &self,
        interaction_id: &str,
        token: &str,
        response: &Value,
    ) -> Result<(), ChatError> {
        let route = Route::InteractionResponse {
            interaction_id: InteractionId::new(id(interaction_id)?),
            token,
        };
        self.call(route, LightMethod::Post, Some(response))
            .await
            .map(|_| ())
    }

    /// Replaces the answer to an interaction (after a deferred answer).
    /// Interaction tokens are good for 15 minutes.
    pub async fn edit_original(&self, token: &str, message: &Value) -> Result<(), ChatError> {
        let route = Route::WebhookOriginalInteractionResponse {
            application_id: ApplicationId::new(self.application_id),
            token,
        };
        self.call(route, LightMethod::Patch, Some(message))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn waits_follow_the_server() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after_ms(&h, &Value::Null), 1000);
        assert_eq!(retry_after_ms(&h, &json!({"retry_after": 0.25})), 250);
        h.insert("x-ratelimit-reset-after", HeaderValue::from_static("1.5"));
        assert_eq!(retry_after_ms(&h, &json!({"retry_after": 0.25})), 1500);
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after_ms(&h, &Value::Null), 3000);
        h.insert("retry-after", HeaderValue::from_static("99999"));
        assert_eq!(retry_after_ms(&h, &Value::Null), 600_000);
    }
}
