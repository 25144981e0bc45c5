//! A fake Slack for tests (never part of the product): the Web API methods Hangar calls,
//! with Slack's documented shapes (<https://api.slack.com/web>) — `{"ok": true, …}`,
//! `{"ok": false, "error": "channel_not_found"}` with HTTP 200, rate limits as HTTP 429
//! with `Retry-After` and `{"ok": false, "error": "ratelimited"}`, `not_authed` /
//! `invalid_auth` for a missing or wrong bot token — and deliveries signed exactly as Slack
//! signs them (`X-Slack-Signature: v0=hex(HMAC-SHA256(secret, "v0:{ts}:{body}"))`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// A message in the fake workspace.
#[derive(Clone, Debug)]
pub struct Posted {
    /// Its channel.
    pub channel: String,
    /// Its ts.
    pub ts: String,
    /// Its thread, when it is a reply.
    pub thread_ts: Option<String>,
    /// Its author: a user id, or `bot` for messages Hangar posted.
    pub user: String,
    /// Its current text.
    pub text: String,
    /// Its current blocks.
    pub blocks: Value,
    /// How many times `chat.update` changed it.
    pub updates: usize,
}

/// A Web API call as the fake saw it.
#[derive(Clone, Debug)]
pub struct Call {
    /// The method, e.g. `chat.postMessage`.
    pub method: String,
    /// Its arguments (JSON body or query parameters as an object).
    pub args: Value,
    /// What the fake answered (`ok` or the error code).
    pub answer: String,
}

/// A scripted failure of the next call to a method.
#[derive(Clone, Debug)]
pub enum Failure {
    /// `{"ok": false, "error": code}`.
    Error(String),
    /// HTTP 429 with `Retry-After: secs`.
    RateLimited(u64),
    /// Slack's own trouble: this HTTP status with a non-JSON body.
    Unavailable(u16),
}

#[derive(Default)]
struct World {
    channels: HashMap<String, String>,
    users: HashMap<String, String>,
    messages: Vec<Posted>,
    reactions: Vec<(String, String, String)>,
    calls: Vec<Call>,
    failures: HashMap<String, VecDeque<Failure>>,
    next_ts: u64,
}

#[derive(Clone)]
struct Shared {
    token: String,
    world: Arc<Mutex<World>>,
}

/// A running fake Slack Web API.
pub struct FakeSlack {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Shared,
}

impl FakeSlack {
    /// Starts a fake accepting `token` as the bot token.
    pub async fn start(token: &str) -> FakeSlack {
        let shared = Shared {
            token: token.to_string(),
            world: Arc::new(Mutex::new(World {
                next_ts: 1_700_000_000_000_100,
                ..World::default()
            })),
        };
        let app = axum::Router::new()
            .route("/api/{method}", axum::routing::any(handle))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeSlack { addr, shared }
    }

    /// The Web API base URL (`…/api`).
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.shared.world.lock().unwrap()
    }

    /// Adds a channel (`C…`) with its name; direct messages (`D…`) need none.
    pub fn add_channel(&self, id: &str, name: &str) {
        self.world().channels.insert(id.into(), name.into());
    }

    /// Adds a person.
    pub fn add_user(&self, id: &str, name: &str) {
        self.world().users.insert(id.into(), name.into());
    }

    /// A person writes a message (so that `conversations.replies` sees it); returns its ts.
    pub fn say(&self, channel: &str, user: &str, text: &str, thread_ts: Option<&str>) -> String {
        let mut w = self.world();
        let ts = next_ts(&mut w);
        w.messages.push(Posted {
            channel: channel.into(),
            ts: ts.clone(),
            thread_ts: thread_ts.map(str::to_string),
            user: user.into(),
            text: text.into(),
            blocks: Value::Null,
            updates: 0,
        });
        ts
    }

    /// Makes the next call to `method` fail this way (queued: call again for more).
    pub fn fail_next(&self, method: &str, failure: Failure) {
        self.world()
            .failures
            .entry(method.into())
            .or_default()
            .push_back(failure);
    }

    /// Every message, in order.
    pub fn messages(&self) -> Vec<Posted> {
        self.world().messages.clone()
    }

    /// Messages Hangar posted in a thread.
    pub fn bot_replies(&self, channel: &str, thread_ts: &str) -> Vec<Posted> {
        self.messages()
            .into_iter()
            .filter(|m| {
                m.user == "bot" && m.channel == channel && m.thread_ts.as_deref() == Some(thread_ts)
            })
            .collect()
    }

    /// Every call, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.world().calls.clone()
    }

    /// Calls of one method.
    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }

    /// Reactions added: `(channel, ts, name)`.
    pub fn reactions(&self) -> Vec<(String, String, String)> {
        self.world().reactions.clone()
    }
}

fn next_ts(w: &mut World) -> String {
    w.next_ts += 100;
    format!("{}.{:06}", w.next_ts / 1_000_000, w.next_ts % 1_000_000)
}

fn ok(extra: Value) -> Value {
    let mut v = json!({"ok": true});
    if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in extra {
            v.insert(k.clone(), x.clone());
        }
    }
    v
}

fn err(code: &str) -> Value {
    json!({"ok": false, "error": code})
}

async fn handle(
    State(s): State<Shared>,
    Path(method): Path<String>,
    http_method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let args: Value = if http_method == Method::GET {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
        Value::Object(pairs.into_iter().map(|(k, v)| (k, json!(v))).collect())
    } else {
        let is_json = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if is_json {
            serde_json::from_slice(&body).unwrap_or(Value::Null)
        } else {
            let pairs: Vec<(String, String)> =
                serde_urlencoded::from_bytes(&body).unwrap_or_default();
            Value::Object(pairs.into_iter().map(|(k, v)| (k, json!(v))).collect())
        }
    };
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut w = s.world.lock().unwrap();
    let (status, retry_after, answer) = answer(&mut w, &s.token, &method, auth, &args);
    if status.is_server_error() {
        w.calls.push(Call {
            method,
            args,
            answer: status.as_u16().to_string(),
        });
        return (status, "upstream unavailable").into_response();
    }
    let code = if answer["ok"] == true {
        "ok".to_string()
    } else {
        answer["error"].as_str().unwrap_or("?").to_string()
    };
    w.calls.push(Call {
        method,
        args,
        answer: code,
    });
    drop(w);
    let mut resp = (status, axum::Json(answer)).into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert("retry-after", secs.to_string().parse().unwrap());
    }
    resp
}

fn answer(
    w: &mut World,
    token: &str,
    method: &str,
    auth: Option<String>,
    args: &Value,
) -> (StatusCode, Option<u64>, Value) {
    match auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")) {
        None => return (StatusCode::OK, None, err("not_authed")),
        Some(t) if t != token => return (StatusCode::OK, None, err("invalid_auth")),
        Some(_) => {}
    }
    if let Some(f) = w.failures.get_mut(method).and_then(VecDeque::pop_front) {
        return match f {
            Failure::Error(code) => (StatusCode::OK, None, err(&code)),
            Failure::RateLimited(secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                Some(secs),
                err("ratelimited"),
            ),
            Failure::Unavailable(code) => (
                StatusCode::from_u16(code).unwrap(),
                None,
                err("service_unavailable"),
            ),
        };
    }
    let arg = |k: &str| args[k].as_str().unwrap_or("").to_string();
    let known = |w: &World, c: &str| c.starts_with('D') || w.channels.contains_key(c);
    let value = match method {
        "chat.postMessage" => {
            let channel = arg("channel");
            if !known(w, &channel) {
                return (StatusCode::OK, None, err("channel_not_found"));
            }
            if arg("text").is_empty() && args["blocks"].is_null() {
                return (StatusCode::OK, None, err("no_text"));
            }
            let ts = next_ts(w);
            let thread_ts = args["thread_ts"].as_str().map(str::to_string);
            w.messages.push(Posted {
                channel: channel.clone(),
                ts: ts.clone(),
                thread_ts,
                user: "bot".into(),
                text: arg("text"),
                blocks: args["blocks"].clone(),
                updates: 0,
            });
            ok(
                json!({"channel": channel, "ts": ts, "message": {"type": "message", "text": arg("text"), "bot_id": "B1", "ts": ts}}),
            )
        }
        "chat.postEphemeral" => {
            if !known(w, &arg("channel")) {
                return (StatusCode::OK, None, err("channel_not_found"));
            }
            if !w.users.contains_key(&arg("user")) {
                return (StatusCode::OK, None, err("user_not_in_channel"));
            }
            ok(json!({"message_ts": next_ts(w)}))
        }
        "chat.update" => {
            let (channel, ts) = (arg("channel"), arg("ts"));
            if !known(w, &channel) {
                return (StatusCode::OK, None, err("channel_not_found"));
            }
            let Some(m) = w
                .messages
                .iter_mut()
                .find(|m| m.channel == channel && m.ts == ts)
            else {
                return (StatusCode::OK, None, err("message_not_found"));
            };
            if m.user != "bot" {
                return (StatusCode::OK, None, err("cant_update_message"));
            }
            m.text = arg("text");
            m.blocks = args["blocks"].clone();
            m.updates += 1;
            ok(json!({"channel": channel, "ts": ts, "text": m.text}))
        }
        "reactions.add" => {
            let (channel, ts, name) = (arg("channel"), arg("timestamp"), arg("name"));
            if !w
                .messages
                .iter()
                .any(|m| m.channel == channel && m.ts == ts)
            {
                return (StatusCode::OK, None, err("message_not_found"));
            }
            let r = (channel, ts, name);
            if w.reactions.contains(&r) {
                return (StatusCode::OK, None, err("already_reacted"));
            }
            w.reactions.push(r);
            ok(json!({}))
        }
        "users.info" => match w.users.get(&arg("user")) {
            Some(name) => ok(
                json!({"user": {"id": arg("user"), "team_id": "T1", "name": name, "deleted": false, "is_bot": false, "real_name": name, "profile": {"display_name": name}}}),
            ),
            None => err("user_not_found"),
        },
        "conversations.info" => {
            let id = arg("channel");
            if id.starts_with('D') {
                ok(json!({"channel": {"id": id, "is_im": true, "user": "U1"}}))
            } else {
                match w.channels.get(&id) {
                    Some(name) => ok(
                        json!({"channel": {"id": id, "name": name, "is_channel": true, "is_member": true}}),
                    ),
                    None => err("channel_not_found"),
                }
            }
        }
        "conversations.replies" => {
            let (channel, ts) = (arg("channel"), arg("ts"));
            if !known(w, &channel) {
                return (StatusCode::OK, None, err("channel_not_found"));
            }
            let messages: Vec<Value> = w
                .messages
                .iter()
                .filter(|m| {
                    m.channel == channel && (m.ts == ts || m.thread_ts.as_deref() == Some(&ts))
                })
                .map(|m| {
                    let mut v =
                        json!({"type": "message", "text": m.text, "ts": m.ts, "thread_ts": ts});
                    if m.user == "bot" {
                        v["bot_id"] = json!("B1");
                    } else {
                        v["user"] = json!(m.user);
                    }
                    v
                })
                .collect();
            if messages.is_empty() {
                return (StatusCode::OK, None, err("thread_not_found"));
            }
            ok(json!({"messages": messages, "has_more": false}))
        }
        _ => err("unknown_method"),
    };
    (StatusCode::OK, None, value)
}

/// The `X-Slack-Signature` Slack sends for `body` at `timestamp`.
pub fn signature(secret: &str, timestamp: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{timestamp}:{body}").as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("v0={hex}")
}

/// The current Unix time in seconds, as Slack puts it in `X-Slack-Request-Timestamp`.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
