//! The Slack Web API calls Passport makes, on `slack-morphism`'s hyper client,
//! with errors mapped to [`ChatError`] and messages to one channel paced.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::app::ports::ChatError;
use crate::config::Secret;

type Connector = SlackClientHyperConnector<HttpsConnector<HttpConnector>>;

/// A bot-token client for the Web API at a configurable base URL.
pub struct SlackApi {
    client: SlackClient<Connector>,
    token: SlackApiToken,
    /// `scheme://host[:port]` of the Web API, so `response_url`s pointing
    /// there (a test server) are accepted besides Slack's own.
    api_origin: String,
    pacer: Pacer,
    /// The deadline of every call: a stalled Slack delays only the call.
    call_timeout: Duration,
}

impl std::fmt::Debug for SlackApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackApi")
            .field("api_origin", &self.api_origin)
            .finish_non_exhaustive()
    }
}

/// Builds the hyper connector: HTTPS with the system's roots, and plain HTTP
/// too so that `api_url` may point at a server on this machine.
fn connector(api_url: &str) -> Connector {
    let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "no system root certificates found; HTTPS calls to Slack will fail until ca-certificates is installed");
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let https = builder.https_or_http().enable_http1().build();
    SlackClientHyperConnector::with_connector(https).with_slack_api_url(api_url)
}

fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let host = rest.split('/').next().unwrap_or_default();
    format!("{scheme}://{host}/")
}

/// Maps a Slack client error to what the outbox can act on. The message names
/// Slack's error code or the HTTP status, never a token or a response body.
pub fn chat_error(e: &SlackClientError) -> ChatError {
    match e {
        SlackClientError::RateLimitError(r) => ChatError::RateLimited {
            retry_after_ms: r
                .retry_after
                .map(|d| d.as_millis() as u64)
                .unwrap_or(1000)
                .max(1),
        },
        SlackClientError::ApiError(a) => match a.code.as_str() {
            "ratelimited" | "rate_limited" => ChatError::RateLimited {
                retry_after_ms: 1000,
            },
            "internal_error"
            | "fatal_error"
            | "service_unavailable"
            | "request_timeout"
            | "team_added_to_org" => ChatError::Transient(format!("Slack answered {}", a.code)),
            code => ChatError::Permanent(format!("Slack refused the call: {code}")),
        },
        SlackClientError::HttpError(h) => {
            let status = h.status_code;
            if status.is_server_error() || status.as_u16() == 408 {
                ChatError::Transient(format!("Slack answered HTTP {status}"))
            } else {
                ChatError::Permanent(format!("Slack answered HTTP {status}"))
            }
        }
        SlackClientError::HttpProtocolError(_)
        | SlackClientError::EndOfStream(_)
        | SlackClientError::SystemError(_)
        | SlackClientError::SocketModeProtocolError(_) => {
            ChatError::Transient("cannot reach Slack".into())
        }
        SlackClientError::ProtocolError(_) => {
            ChatError::Transient("Slack's answer could not be read".into())
        }
    }
}

/// Paces messages: at most one per `every` to one channel. Slack allows about
/// one message per second per channel and answers 429 beyond short bursts.
struct Pacer {
    every: Duration,
    next: Mutex<HashMap<String, Instant>>,
}

impl Pacer {
    async fn wait(&self, channel: &str) {
        if self.every.is_zero() {
            return;
        }
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            if next.len() > 10_000 {
                next.retain(|_, at| *at > now);
            }
            let slot = next.get(channel).copied().unwrap_or(now).max(now);
            next.insert(channel.to_owned(), slot + self.every);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// What `auth.test` says about the bot token.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Whoami {
    pub team_id: String,
    #[serde(default)]
    pub enterprise_id: Option<String>,
    #[serde(default)]
    pub bot_id: Option<String>,
}

/// Where a posted message lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub channel: String,
    pub ts: String,
}

impl SlackApi {
    pub fn new(
        api_url: &str,
        bot_token: &Secret,
        channel_pace: Duration,
        call_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            client: SlackClient::new(connector(api_url)),
            token: SlackApiToken::new(bot_token.expose().to_owned().into()),
            api_origin: origin_of(api_url),
            pacer: Pacer {
                every: channel_pace,
                next: Mutex::new(HashMap::new()),
            },
            call_timeout,
        })
    }

    /// Runs one Web API call within the call deadline; a call past it is a
    /// temporary failure (Slack may still act on it, as after a lost answer).
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, SlackClientError>>,
    ) -> Result<T, SlackClientError> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(answer) => answer,
            Err(_) => Err(SlackClientError::EndOfStream(
                slack_morphism::errors::SlackClientEndOfStreamError::new(),
            )),
        }
    }

    fn session(&self) -> SlackClientSession<'_, Connector> {
        self.client.open_session(&self.token)
    }

    pub async fn post_message(
        &self,
        channel: &str,
        content: SlackMessageContent,
        thread_ts: Option<&str>,
    ) -> Result<Posted, ChatError> {
        self.pacer.wait(channel).await;
        let req = SlackApiChatPostMessageRequest::new(channel.into(), content)
            .opt_thread_ts(thread_ts.map(|t| t.into()))
            .with_unfurl_links(false)
            .with_unfurl_media(false);
        let res = self
            .bounded(self.session().chat_post_message(&req))
            .await
            .map_err(|e| chat_error(&e))?;
        Ok(Posted {
            channel: res.channel.to_string(),
            ts: res.ts.to_string(),
        })
    }

    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        content: SlackMessageContent,
    ) -> Result<(), ChatError> {
        let req = SlackApiChatUpdateRequest::new(channel.into(), content, ts.into());
        self.bounded(self.session().chat_update(&req))
            .await
            .map(|_| ())
            .map_err(|e| chat_error(&e))
    }

    /// Deletes a message the bot posted (`chat.delete`). One that is gone
    /// already (`message_not_found`) counts as deleted.
    pub async fn delete_message(&self, channel: &str, ts: &str) -> Result<(), ChatError> {
        let req = SlackApiChatDeleteRequest::new(channel.into(), ts.into());
        match self.bounded(self.session().chat_delete(&req)).await {
            Ok(_) => Ok(()),
            Err(SlackClientError::ApiError(a)) if a.code == "message_not_found" => Ok(()),
            Err(e) => Err(chat_error(&e)),
        }
    }

    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        content: SlackMessageContent,
        thread_ts: Option<&str>,
    ) -> Result<(), ChatError> {
        let req = SlackApiChatPostEphemeralRequest::new(channel.into(), user.into(), content)
            .opt_thread_ts(thread_ts.map(|t| t.into()));
        self.bounded(self.session().chat_post_ephemeral(&req))
            .await
            .map(|_| ())
            .map_err(|e| chat_error(&e))
    }

    /// The direct-message channel with `user`.
    pub async fn open_dm(&self, user: &str) -> Result<String, ChatError> {
        let req = SlackApiConversationsOpenRequest::new().with_users(vec![user.into()]);
        let res = self
            .bounded(self.session().conversations_open(&req))
            .await
            .map_err(|e| chat_error(&e))?;
        Ok(res.channel.id.to_string())
    }

    /// The person's Slack username (`name`), or their display name.
    pub async fn user_name(&self, user: &str) -> Result<Option<String>, ChatError> {
        let res = self
            .bounded(
                self.session()
                    .users_info(&SlackApiUsersInfoRequest::new(user.into())),
            )
            .await
            .map_err(|e| chat_error(&e))?;
        let u = res.user;
        let display = u
            .profile
            .as_ref()
            .and_then(|p| p.display_name.clone())
            .filter(|d| !d.trim().is_empty());
        Ok(u.name.filter(|n| !n.trim().is_empty()).or(display))
    }

    pub async fn usergroup_members(&self, usergroup: &str) -> Result<Vec<String>, ChatError> {
        let res = self
            .bounded(
                self.session()
                    .usergroups_users_list(&SlackApiUserGroupsUsersListRequest::new(
                        usergroup.into(),
                    )),
            )
            .await
            .map_err(|e| chat_error(&e))?;
        Ok(res.users.into_iter().map(|u| u.to_string()).collect())
    }

    /// `auth.test`: the workspace and bot user the token belongs to.
    pub async fn auth_test(&self) -> Result<(String, String), ChatError> {
        let res = self
            .bounded(self.session().auth_test())
            .await
            .map_err(|e| chat_error(&e))?;
        Ok((
            format!("{} ({})", res.team, res.team_id),
            res.user.unwrap_or_else(|| res.user_id.to_string()),
        ))
    }

    /// `auth.test` read for the ids Passport binds to: the workspace, its
    /// enterprise (Enterprise Grid only) and the bot. Read as JSON here because
    /// the client's own type leaves out `enterprise_id`.
    pub async fn whoami(&self) -> Result<Whoami, ChatError> {
        let params: Vec<(&str, Option<&str>)> = Vec::new();
        self.session()
            .http_session_api
            .http_get::<Whoami, _, _>("auth.test", &params, None)
            .await
            .map_err(|e| chat_error(&e))
    }

    /// The app a bot belongs to (`bots.info`).
    pub async fn app_of_bot(&self, bot: &str) -> Result<String, ChatError> {
        let res = self
            .session()
            .bots_info(&SlackApiBotsInfoRequest::new().with_bot(bot.to_owned()))
            .await
            .map_err(|e| chat_error(&e))?;
        Ok(res.bot.app_id)
    }

    /// Whether the bot is a member of `channel` (an id, or `#name`): `None`
    /// when no such channel is visible to it.
    pub async fn is_member(&self, channel: &str) -> Result<Option<bool>, ChatError> {
        let session = self.session();
        if let Some(name) = channel.strip_prefix('#') {
            let mut cursor = None;
            // Pages of 200 channels; a workspace with more than 20,000 is
            // answered "not found" rather than read forever.
            for _ in 0..100 {
                let mut req = SlackApiConversationsListRequest::new()
                    .with_limit(200)
                    .with_exclude_archived(true)
                    .with_types(vec![
                        SlackConversationType::Public,
                        SlackConversationType::Private,
                    ]);
                if let Some(c) = cursor.take() {
                    req = req.with_cursor(c);
                }
                let res = self
                    .bounded(session.conversations_list(&req))
                    .await
                    .map_err(|e| chat_error(&e))?;
                if let Some(found) = res
                    .channels
                    .iter()
                    .find(|c| c.name.as_deref() == Some(name))
                {
                    return Ok(Some(found.flags.is_member.unwrap_or(false)));
                }
                match res.response_metadata.and_then(|m| m.next_cursor) {
                    Some(next) if !next.0.is_empty() => cursor = Some(next),
                    _ => return Ok(None),
                }
            }
            return Ok(None);
        }
        match self
            .bounded(
                session.conversations_info(&SlackApiConversationsInfoRequest::new(channel.into())),
            )
            .await
        {
            Ok(res) => Ok(Some(res.channel.flags.is_member.unwrap_or(false))),
            Err(SlackClientError::ApiError(e)) if e.code == "channel_not_found" => Ok(None),
            Err(e) => Err(chat_error(&e)),
        }
    }

    /// Opens a modal for the person whose action gave `trigger_id` (valid for 3 s).
    pub async fn open_view(&self, trigger_id: &str, view: SlackView) -> Result<(), ChatError> {
        self.bounded(
            self.session()
                .views_open(&SlackApiViewsOpenRequest::new(trigger_id.into(), view)),
        )
        .await
        .map(|_| ())
        .map_err(|e| chat_error(&e))
    }

    /// Whether Passport may post to this `response_url`: Slack's own hooks, or
    /// the configured Web API's host. Anything else could be a forged target.
    pub fn response_url_allowed(&self, url: &str) -> bool {
        url.starts_with("https://hooks.slack.com/") || url.starts_with(&self.api_origin)
    }

    /// Posts an ephemeral answer through a `response_url`.
    pub async fn respond(&self, response_url: &str, text: &str) -> Result<(), ChatError> {
        if !self.response_url_allowed(response_url) {
            return Err(ChatError::Permanent(
                "response_url is not a Slack URL".into(),
            ));
        }
        let url: url::Url = response_url
            .parse()
            .map_err(|_| ChatError::Permanent("response_url is not a URL".into()))?;
        let req = SlackApiPostWebhookMessageRequest::new(super::blocks::text_content(text, &[]))
            .with_replace_original(false);
        self.bounded(self.client.post_webhook_message(&url, &req))
            .await
            .map(|_| ())
            .map_err(|e| chat_error(&e))
    }

    /// A Socket Mode WebSocket URL, from `apps.connections.open` with the app-level token.
    pub async fn socket_url(&self, app_token: &Secret) -> Result<String, ChatError> {
        let token = SlackApiToken::new(app_token.expose().to_owned().into());
        let session = self.client.open_session(&token);
        let res = self
            .bounded(session.apps_connections_open(&SlackApiAppsConnectionOpenRequest::new()))
            .await
            .map_err(|e| chat_error(&e))?;
        Ok(res.url.0.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_keep_scheme_host_and_port() {
        assert_eq!(
            origin_of("http://127.0.0.1:4567/api"),
            "http://127.0.0.1:4567/"
        );
        assert_eq!(origin_of("https://slack.com/api"), "https://slack.com/");
    }

    #[test]
    fn slack_errors_map_to_what_the_outbox_can_act_on() {
        use slack_morphism::errors::*;
        let limited = SlackClientError::RateLimitError(
            SlackRateLimitError::new().with_retry_after(Duration::from_secs(3)),
        );
        assert_eq!(
            chat_error(&limited),
            ChatError::RateLimited {
                retry_after_ms: 3000
            }
        );
        let api = |code: &str| {
            chat_error(&SlackClientError::ApiError(SlackClientApiError::new(
                code.into(),
            )))
        };
        assert!(
            matches!(api("channel_not_found"), ChatError::Permanent(m) if m.contains("channel_not_found"))
        );
        assert!(matches!(api("internal_error"), ChatError::Transient(_)));
        assert!(matches!(api("ratelimited"), ChatError::RateLimited { .. }));
        let http = |status: u16| {
            chat_error(&SlackClientError::HttpError(SlackClientHttpError::new(
                axum::http::StatusCode::from_u16(status).unwrap(),
            )))
        };
        assert!(matches!(http(503), ChatError::Transient(_)));
        assert!(matches!(http(404), ChatError::Permanent(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn one_channel_is_paced_and_others_are_not() {
        let pacer = Pacer {
            every: Duration::from_secs(1),
            next: Mutex::new(HashMap::new()),
        };
        let start = Instant::now();
        pacer.wait("C1").await;
        pacer.wait("C2").await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        pacer.wait("C1").await;
        pacer.wait("C1").await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
