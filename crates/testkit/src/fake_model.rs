//! A fake model server for tests (never part of the product): it speaks the Anthropic Messages and OpenAI Chat
//! Completions streaming formats exactly (SSE event names, JSON shapes, status codes,
//! `retry-after`), replays scripted replies in order and records every request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

/// One scripted reply.
pub enum Reply {
    /// A `text/event-stream` body: events (`event:` name or none, `data:` JSON text),
    /// the first `ttft` after the request arrived, then one every `gap` (a zero gap sends the
    /// rest back to back). With `cut_after`, the connection is dropped after that many events.
    Sse {
        /// `(event name, data)` pairs.
        events: Vec<(Option<String>, String)>,
        /// Time to the first event.
        ttft: Duration,
        /// Time between events.
        gap: Duration,
        /// Drop the connection after this many events.
        cut_after: Option<usize>,
    },
    /// An error status with a JSON body and maybe `retry-after`.
    Status {
        /// HTTP status.
        code: u16,
        /// The `retry-after` header.
        retry_after: Option<String>,
        /// The JSON body.
        body: String,
    },
}

impl Reply {
    /// An event stream sent at once.
    pub fn sse(events: Vec<(Option<String>, String)>) -> Reply {
        Reply::Sse {
            events,
            ttft: Duration::ZERO,
            gap: Duration::ZERO,
            cut_after: None,
        }
    }
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The request path.
    pub path: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its JSON body (null when not JSON).
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
    /// When the first event of its reply was handed to the connection (unset until then, and
    /// for replies that are not event streams). `first_event - at` is the time to first token
    /// the server really gave, timer overshoot included.
    pub first_event: Arc<OnceLock<Instant>>,
}

#[derive(Clone)]
struct Shared {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    open_streams: Arc<AtomicUsize>,
}

/// A running fake model server.
pub struct FakeModel {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Shared,
}

impl FakeModel {
    /// Starts a server that answers requests with `replies`, in order.
    pub async fn start(replies: Vec<Reply>) -> FakeModel {
        let shared = Shared {
            replies: Arc::new(Mutex::new(replies.into())),
            requests: Arc::default(),
            open_streams: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeModel { addr, shared }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Streams whose body is still being sent (a dropped client closes its stream).
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::SeqCst)
    }

    /// Adds a reply at the end of the script.
    pub fn push(&self, reply: Reply) {
        self.shared.replies.lock().unwrap().push_back(reply);
    }
}

struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let at = Instant::now();
    let first_event = Arc::new(OnceLock::new());
    s.requests.lock().unwrap().push(Recorded {
        at,
        first_event: first_event.clone(),
        path: uri.path().to_string(),
        headers,
        body,
    });
    let reply = s.replies.lock().unwrap().pop_front();
    match reply {
        None => Response::builder()
            .status(500)
            .body(Body::from(r#"{"type":"error","error":{"type":"api_error","message":"no scripted reply left"}}"#))
            .unwrap(),
        Some(Reply::Status { code, retry_after, body }) => {
            let mut r = Response::builder().status(StatusCode::from_u16(code).unwrap()).header("content-type", "application/json");
            if let Some(ra) = retry_after {
                r = r.header("retry-after", ra);
            }
            r.body(Body::from(body)).unwrap()
        }
        Some(Reply::Sse { events, ttft, gap, cut_after }) => {
            s.open_streams.fetch_add(1, Ordering::SeqCst);
            let guard = OpenGuard(s.open_streams.clone());
            let timing = Timing { first_at: at + ttft, gap, first_event };
            let stream = async_stream(events, timing, cut_after, guard);
            Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

/// When a stream's events go out.
struct Timing {
    first_at: Instant,
    gap: Duration,
    first_event: Arc<OnceLock<Instant>>,
}

fn async_stream(
    events: Vec<(Option<String>, String)>,
    timing: Timing,
    cut_after: Option<usize>,
    guard: OpenGuard,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let state = (events.into_iter().enumerate(), guard, timing);
    futures_util::stream::unfold(state, move |(mut it, guard, timing)| async move {
        if timing.first_event.get().is_none() {
            tokio::time::sleep_until(timing.first_at.into()).await;
        } else if timing.gap.is_zero() {
            // Not a zero sleep, which waits for the timer's next tick (up to a millisecond),
            // but a yield: the server flushes each event on its own, as a provider does.
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(timing.gap).await;
        }
        let (i, (name, data)) = it.next()?;
        if cut_after.is_some_and(|n| i >= n) {
            // An error from the body stream makes the server drop the connection mid-body.
            return Some((Err(std::io::Error::other("cut")), (it, guard, timing)));
        }
        let mut frame = String::new();
        if let Some(name) = name {
            frame.push_str(&format!("event: {name}\n"));
        }
        frame.push_str(&format!("data: {data}\n\n"));
        let _ = timing.first_event.set(Instant::now());
        Some((Ok(Bytes::from(frame)), (it, guard, timing)))
    })
}

// Builders for exact provider event sequences.

fn ev(name: &str, data: Value) -> (Option<String>, String) {
    (Some(name.to_string()), data.to_string())
}

/// Anthropic: one message with text blocks and tool_use blocks, as the API streams it.
pub fn anthropic(
    text_parts: &[&str],
    tool_calls: &[(&str, &str, &[&str])],
    stop_reason: &str,
) -> Vec<(Option<String>, String)> {
    let mut out = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}),
    )];
    let mut index = 0;
    if !text_parts.is_empty() {
        out.push(ev("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})));
        out.push(ev("ping", json!({"type": "ping"})));
        for t in text_parts {
            out.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": t}})));
        }
        out.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    for (id, name, parts) in tool_calls {
        out.push(ev("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}})));
        for p in *parts {
            out.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": p}})));
        }
        out.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    out.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": 15}})));
    out.push(ev("message_stop", json!({"type": "message_stop"})));
    out
}

/// Anthropic: an `error` event.
pub fn anthropic_error(kind: &str, message: &str) -> Vec<(Option<String>, String)> {
    vec![ev(
        "error",
        json!({"type": "error", "error": {"type": kind, "message": message}}),
    )]
}

fn chunk(delta: Value, finish: Option<&str>) -> (Option<String>, String) {
    (None, json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-test", "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]}).to_string())
}

/// OpenAI: text deltas, then tool calls (arguments in parts), a finish reason, the usage
/// chunk and `[DONE]`.
pub fn openai(
    text_parts: &[&str],
    tool_calls: &[(&str, &str, &[&str])],
    finish: &str,
) -> Vec<(Option<String>, String)> {
    let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    for t in text_parts {
        out.push(chunk(json!({"content": t}), None));
    }
    for (i, (id, name, parts)) in tool_calls.iter().enumerate() {
        out.push(chunk(json!({"tool_calls": [{"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}), None));
        for p in *parts {
            out.push(chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": p}}]}),
                None,
            ));
        }
    }
    out.push(chunk(json!({}), Some(finish)));
    out.push((None, json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-test", "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}}).to_string()));
    out.push((None, "[DONE]".to_string()));
    out
}
