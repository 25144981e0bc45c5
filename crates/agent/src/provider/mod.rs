//! Streaming model providers: the Anthropic Messages API and OpenAI-compatible Chat
//! Completions, behind one [`Provider`].
//!
//! A response is a stream of [`ModelEvent`]s. Requests that fail before anything streamed
//! (connection errors, 429, 5xx, Anthropic's 529 "overloaded", a connection dropped before
//! the first event) are retried with exponential backoff and jitter, honouring
//! `retry-after`. Dropping the stream cancels the request at once: the connection closes.

mod anthropic;
mod openai;

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::model::{ModelEvent, ModelRequest};

/// Which wire protocol a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Anthropic Messages API (`POST {base_url}/v1/messages`).
    Anthropic,
    /// OpenAI-compatible Chat Completions (`POST {base_url}/chat/completions`; the base URL
    /// usually ends in `/v1`). Also Ollama, vLLM and llama.cpp's server.
    OpenAi,
}

/// How to reach one model.
#[derive(Clone, Deserialize)]
pub struct ProviderConfig {
    /// The wire protocol.
    pub kind: ProviderKind,
    /// Where the API is, e.g. `https://api.anthropic.com` or `https://api.openai.com/v1`.
    pub base_url: String,
    /// The model name.
    pub model: String,
    /// The API key; read by the caller from the environment or a secret file.
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Retries after the first attempt.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// First backoff; it doubles per retry (with jitter), up to 30 s.
    #[serde(default = "default_backoff", with = "millis")]
    pub initial_backoff: Duration,
}

fn default_retries() -> u32 {
    4
}

fn default_backoff() -> Duration {
    Duration::from_millis(500)
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

// The key must never reach a log.
impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

/// Why a model request failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The provider could not be reached, or the connection broke.
    #[error("cannot reach the model provider: {0}")]
    Connect(String),
    /// The provider answered with an error status.
    #[error("the model provider answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
        /// `retry-after`, when given.
        retry_after: Option<Duration>,
    },
    /// An error event in the stream (e.g. Anthropic's `overloaded_error`).
    #[error("the model provider reported {kind}: {message}")]
    Stream {
        /// The provider's error type.
        kind: String,
        /// Its message.
        message: String,
    },
    /// The stream ended or broke before the response was complete.
    #[error("the model's response was cut off: {0}")]
    Incomplete(String),
    /// The provider sent something that does not follow its protocol.
    #[error("the model provider sent an invalid response: {0}")]
    Protocol(String),
}

impl ProviderError {
    /// Whether trying again may succeed: connection problems, rate limits, overload and
    /// server errors. Client errors (bad request, bad key) are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Connect(_) | ProviderError::Incomplete(_) => true,
            ProviderError::Status { status, .. } => {
                matches!(status, 408 | 409 | 429 | 500..=599)
            }
            ProviderError::Stream { kind, .. } => {
                matches!(
                    kind.as_str(),
                    "overloaded_error" | "api_error" | "rate_limit_error"
                )
            }
            ProviderError::Protocol(_) => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A response in progress; dropping it cancels the request.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ModelEvent, ProviderError>> + Send>>;

/// A configured model provider.
#[derive(Clone, Debug)]
pub struct Provider {
    config: ProviderConfig,
    http: reqwest::Client,
}

impl Provider {
    /// A provider for `config`.
    pub fn new(config: ProviderConfig) -> Result<Provider, ProviderError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ProviderError::Connect(e.to_string()))?;
        Ok(Provider { config, http })
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.config.model
    }

    /// Starts a streaming request. Errors arrive as items of the stream.
    pub fn stream(&self, request: &ModelRequest) -> EventStream {
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        let request = request.clone();
        tokio::spawn(async move {
            let sink = Sink(tx.clone());
            tokio::select! {
                _ = this.run(&request, &sink) => {}
                // The consumer dropped the stream: stop at once, closing the connection.
                _ = tx.closed() => {}
            }
        });
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }

    async fn run(&self, request: &ModelRequest, sink: &Sink) {
        let mut attempt = 0u32;
        loop {
            let result = match self.config.kind {
                ProviderKind::Anthropic => anthropic::attempt(self, request, sink).await,
                ProviderKind::OpenAi => openai::attempt(self, request, sink).await,
            };
            let err = match result {
                Ok(()) => return,
                Err(Failure {
                    error,
                    after_events,
                }) => {
                    if after_events || !error.is_retryable() || attempt >= self.config.max_retries {
                        let _ = sink.0.send(Err(error)).await;
                        return;
                    }
                    error
                }
            };
            let wait = err
                .retry_after()
                .unwrap_or_else(|| backoff(self.config.initial_backoff, attempt));
            tracing::warn!(model = %self.config.model, attempt, ?wait, "model request failed, retrying: {err}");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// Exponential backoff with full jitter, capped at 30 s.
fn backoff(initial: Duration, attempt: u32) -> Duration {
    let cap = Duration::from_secs(30);
    let exp = initial.saturating_mul(1u32 << attempt.min(16)).min(cap);
    exp.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// Where an attempt sends its events; remembers whether any went out, since only an attempt
/// that has not streamed anything yet can be retried invisibly.
struct Sink(mpsc::Sender<Result<ModelEvent, ProviderError>>);

struct Failure {
    error: ProviderError,
    after_events: bool,
}

impl Sink {
    async fn send(&self, event: ModelEvent) {
        let _ = self.0.send(Ok(event)).await;
    }
}

/// Sends one JSON request and returns the response if its status is a success.
async fn post(
    provider: &Provider,
    url: &str,
    headers: &[(&str, String)],
    body: &serde_json::Value,
) -> Result<reqwest::Response, ProviderError> {
    let mut req = provider
        .http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| ProviderError::Connect(without_url(&e)))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(300.0)));
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| text.chars().take(500).collect());
    Err(ProviderError::Status {
        status: status.as_u16(),
        message,
        retry_after,
    })
}

/// Posts `body` and opens the response as a server-sent event stream; a failure here
/// comes before anything streamed, so it may be retried.
async fn open_events(
    provider: &Provider,
    url: &str,
    headers: &[(&str, String)],
    body: &serde_json::Value,
) -> Result<
    futures_util::stream::BoxStream<'static, Result<eventsource_stream::Event, String>>,
    Failure,
> {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let resp = post(provider, url, headers, body)
        .await
        .map_err(|error| Failure {
            error,
            after_events: false,
        })?;
    Ok(resp
        .bytes_stream()
        .eventsource()
        .map(|e| e.map_err(|e| e.to_string()))
        .boxed())
}

/// reqwest's error text without the URL (which may carry a key in a query string).
fn without_url(e: &reqwest::Error) -> String {
    let mut e = e.to_string();
    if let Some(i) = e.find(" for url") {
        e.truncate(i);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_classified() {
        let status = |s| ProviderError::Status {
            status: s,
            message: String::new(),
            retry_after: None,
        };
        assert!(status(429).is_retryable());
        assert!(status(529).is_retryable());
        assert!(status(503).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(401).is_retryable());
        let overloaded = ProviderError::Stream {
            kind: "overloaded_error".into(),
            message: String::new(),
        };
        assert!(overloaded.is_retryable());
        assert!(!ProviderError::Protocol("x".into()).is_retryable());
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let first = backoff(Duration::from_millis(100), 0);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let later = backoff(Duration::from_millis(100), 3);
        assert!(later >= Duration::from_millis(400) && later <= Duration::from_millis(800));
        assert!(backoff(Duration::from_secs(10), 10) <= Duration::from_secs(30));
    }

    #[test]
    fn the_key_is_not_in_debug_output() {
        let c = ProviderConfig {
            kind: ProviderKind::Anthropic,
            base_url: "http://x".into(),
            model: "m".into(),
            api_key: Some("sk-secret".into()),
            max_retries: 1,
            initial_backoff: Duration::from_millis(1),
        };
        assert!(!format!("{c:?}").contains("sk-secret"));
    }
}
