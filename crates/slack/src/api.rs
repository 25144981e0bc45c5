//! A client for the few Slack Web API methods Hangar uses
//! (<https://api.slack.com/web>): `chat.postMessage`, `chat.postEphemeral`, `chat.update`, `reactions.add`,
//! `users.info`, `conversations.info`, `conversations.replies`.
//!
//! Every answer is `{"ok": true, …}` or `{"ok": false, "error": "…"}`. Rate limits are HTTP
//! 429 with `Retry-After` (seconds); they are retried after that wait, at most
//! [`MAX_ATTEMPTS`] times in all and never waiting more than [`MAX_WAIT`] at once, so a
//! throttled workspace slows Hangar down instead of making it loop. Slack's own failures
//! (5xx, a connection that cannot be made) are retried the same way with a doubling wait.
//! Other errors are returned to the caller, which reports or logs them.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

/// Attempts per call, the first included.
pub const MAX_ATTEMPTS: u32 = 4;

/// The longest single wait for a rate limit.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Why a Web API call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Slack answered `{"ok": false, "error": code}`.
    #[error("Slack's {method} answered {code}")]
    Slack {
        /// The method called.
        method: &'static str,
        /// Slack's error code, e.g. `channel_not_found`.
        code: String,
    },
    /// Still rate limited (or failing on Slack's side) after every attempt.
    #[error(
        "Slack's {method} is rate limited or unavailable; gave up after {MAX_ATTEMPTS} attempts"
    )]
    RateLimited {
        /// The method called.
        method: &'static str,
    },
    /// Slack could not be reached or answered something that is not the Web API.
    #[error("cannot use Slack's {method}: {message}")]
    Transport {
        /// The method called.
        method: &'static str,
        /// What failed.
        message: String,
    },
}

/// A Slack Web API client with the bot token. `Debug` never shows the token.
#[derive(Clone)]
pub struct SlackClient {
    base_url: String,
    token: String,
    http: reqwest::Client,
    first_wait: Duration,
}

impl std::fmt::Debug for SlackClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackClient")
            .field("base_url", &self.base_url)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A message to post or an update to one.
#[derive(Debug, Clone, Default)]
pub struct Post {
    /// The channel.
    pub channel: String,
    /// The thread to reply in.
    pub thread_ts: Option<String>,
    /// The text (also the notification text when there are blocks).
    pub text: String,
    /// Block Kit blocks, when the message has buttons.
    pub blocks: Option<Value>,
}

/// What `users.info` says about a person.
#[derive(Debug, Clone, Deserialize)]
pub struct SlackUser {
    /// Their id.
    pub id: String,
    /// Their handle.
    #[serde(default)]
    pub name: String,
    /// Set for bots.
    #[serde(default)]
    pub is_bot: bool,
    /// Set for deactivated accounts.
    #[serde(default)]
    pub deleted: bool,
}

/// One message of a thread.
#[derive(Debug, Clone, Deserialize)]
pub struct ThreadMessage {
    /// Its author (absent for some bot messages).
    #[serde(default)]
    pub user: Option<String>,
    /// Set when a bot wrote it.
    #[serde(default)]
    pub bot_id: Option<String>,
    /// Its text.
    #[serde(default)]
    pub text: String,
    /// Its timestamp.
    pub ts: String,
}

impl SlackClient {
    /// A client for the Web API at `base_url` (`https://slack.com/api`) with `token`.
    pub fn new(base_url: &str, token: String) -> Result<SlackClient, ApiError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ApiError::Transport {
                method: "client",
                message: e.to_string(),
            })?;
        Ok(SlackClient {
            base_url: base_url.trim_end_matches('/').to_string(),
            token,
            http,
            first_wait: Duration::from_secs(1),
        })
    }

    /// Posts a message; returns its `ts`.
    pub async fn post_message(&self, post: &Post) -> Result<String, ApiError> {
        let mut body = json!({"channel": post.channel, "text": post.text});
        if let Some(t) = &post.thread_ts {
            body["thread_ts"] = json!(t);
        }
        if let Some(b) = &post.blocks {
            body["blocks"] = b.clone();
        }
        let answer = self.call("chat.postMessage", Some(&body), &[]).await?;
        Ok(answer["ts"].as_str().unwrap_or_default().to_string())
    }

    /// Replaces the text (and blocks: none when `post.blocks` is `None`) of message `ts`.
    pub async fn update(&self, post: &Post, ts: &str) -> Result<(), ApiError> {
        let body = json!({
            "channel": post.channel,
            "ts": ts,
            "text": post.text,
            "blocks": post.blocks.clone().unwrap_or_else(|| json!([])),
        });
        self.call("chat.update", Some(&body), &[]).await.map(drop)
    }

    /// Posts a message only `body["user"]` sees (`chat.postEphemeral`).
    pub async fn post_ephemeral(&self, body: &Value) -> Result<(), ApiError> {
        self.call("chat.postEphemeral", Some(body), &[])
            .await
            .map(drop)
    }

    /// Adds the reaction `name` (without colons) to message `ts`; one already there is fine.
    pub async fn react(&self, channel: &str, ts: &str, name: &str) -> Result<(), ApiError> {
        let body = json!({"channel": channel, "timestamp": ts, "name": name});
        match self.call("reactions.add", Some(&body), &[]).await {
            Err(ApiError::Slack { code, .. }) if code == "already_reacted" => Ok(()),
            other => other.map(drop),
        }
    }

    /// A person's profile.
    pub async fn user(&self, id: &str) -> Result<SlackUser, ApiError> {
        let answer = self.call("users.info", None, &[("user", id)]).await?;
        serde_json::from_value(answer["user"].clone()).map_err(|e| ApiError::Transport {
            method: "users.info",
            message: format!("unexpected answer: {e}"),
        })
    }

    /// A channel's name (`None` for direct messages, which have none).
    pub async fn channel_name(&self, channel: &str) -> Result<Option<String>, ApiError> {
        let answer = self
            .call("conversations.info", None, &[("channel", channel)])
            .await?;
        Ok(answer["channel"]["name"].as_str().map(str::to_string))
    }

    /// The messages of the thread rooted at `ts`, oldest first (at most 50).
    pub async fn thread(&self, channel: &str, ts: &str) -> Result<Vec<ThreadMessage>, ApiError> {
        let answer = self
            .call(
                "conversations.replies",
                None,
                &[("channel", channel), ("ts", ts), ("limit", "50")],
            )
            .await?;
        serde_json::from_value(answer["messages"].clone()).map_err(|e| ApiError::Transport {
            method: "conversations.replies",
            message: format!("unexpected answer: {e}"),
        })
    }

    /// Calls `method`: a JSON POST for write methods, a GET with `query` for read methods
    /// (which do not accept JSON bodies). Returns the answer when `ok`.
    async fn call(
        &self,
        method: &'static str,
        body: Option<&Value>,
        query: &[(&str, &str)],
    ) -> Result<Value, ApiError> {
        let url = format!("{}/{method}", self.base_url);
        let transport = |message: String| ApiError::Transport { method, message };
        let mut wait = self.first_wait;
        for attempt in 1..=MAX_ATTEMPTS {
            let req = match body {
                Some(b) => self.http.post(&url).json(b),
                None => self.http.get(&url).query(query),
            };
            let resp = match req.bearer_auth(&self.token).send().await {
                Ok(resp) => resp,
                // Slack unreachable for a moment: wait and try again, like a rate limit.
                Err(e) if attempt < MAX_ATTEMPTS && (e.is_connect() || e.is_timeout()) => {
                    tracing::warn!(
                        method,
                        attempt,
                        ?wait,
                        "cannot reach Slack, retrying: {}",
                        e.without_url()
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_WAIT);
                    continue;
                }
                Err(e) => return Err(transport(e.without_url().to_string())),
            };
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let answer: Value = if status.as_u16() == 429 {
                json!({"ok": false, "error": "ratelimited"})
            } else if status.is_server_error() {
                // Slack's own trouble (500, 503): retried like a rate limit.
                json!({"ok": false, "error": "ratelimited", "status": status.as_u16()})
            } else {
                resp.json()
                    .await
                    .map_err(|e| transport(format!("HTTP {status}: {}", e.without_url())))?
            };
            if answer["ok"].as_bool() == Some(true) {
                return Ok(answer);
            }
            let code = answer["error"]
                .as_str()
                .unwrap_or("unknown_error")
                .to_string();
            if code != "ratelimited" {
                return Err(ApiError::Slack { method, code });
            }
            if attempt == MAX_ATTEMPTS {
                break;
            }
            let pause = retry_after.unwrap_or(wait).min(MAX_WAIT);
            match answer["status"].as_u64() {
                Some(status) => {
                    tracing::warn!(method, attempt, ?pause, status, "Slack failed, retrying")
                }
                None => tracing::warn!(method, attempt, ?pause, "Slack rate limit, waiting"),
            }
            tokio::time::sleep(pause).await;
            wait = (wait * 2).min(MAX_WAIT);
        }
        Err(ApiError::RateLimited { method })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let client =
            SlackClient::new("https://slack.com/api/", "xoxb-secret-value".into()).unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("xoxb-secret-value"), "{shown}");
        assert!(shown.contains("https://slack.com/api"));
    }
}
