//! `GET /api/sessions/{id}/ws?after_seq=N`: the session's events over a WebSocket.
//!
//! Order of work: subscribe to the live broadcast first, then send the backlog (events
//! after N) from the log, then live events, skipping any seq already sent; so the client
//! gets every event after N exactly once, in order. A client that falls behind the
//! session's bounded live buffer is resynced from the log; one that stops reading for
//! [`SEND_TIMEOUT`] is closed with code 4008 and a reason. The session never waits for a
//! client.
//!
//! Client messages are JSON text frames (`hangar_protocol::session::ClientMessage`). A
//! binary frame is closed with 1003, undecodable text with 1007, a prompt from a view-only
//! share link with 1008, a frame over [`MAX_CLIENT_FRAME`] with 1009 (beyond 1 MiB the
//! socket refuses to read it at all). A prompt the session refuses (empty, too long) is
//! answered with `{"type": "error", "error": {"code", "message"}}` and the connection
//! stays open.

use std::time::Duration;

use axum::Extension;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use futures_util::SinkExt;
use hangar_protocol::session::{ClientMessage, MAX_PRESENCE_STATE};
use hangar_session::{Live, MAX_EVENTS_PAGE, Sessions, Subscription};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::error::ErrorResponse;
use crate::session_api::{Access, Need, check_after_seq, events_query};
use crate::{ApiError, AppState};

/// Largest client frame accepted.
pub const MAX_CLIENT_FRAME: usize = 128 * 1024;
/// How long one send may wait for a client that does not read.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Most live messages written in one go.
const MAX_BURST: usize = 256;

/// Close code: the client did not read its events in time.
pub const CLOSE_TOO_SLOW: u16 = 4008;

/// Streams a session's events: the backlog after `after_seq`, then live events and
/// presence. Authenticate with `Authorization: Bearer` or `?token=` (an API token or a
/// share link's token).
#[utoipa::path(get, path = "/api/sessions/{id}/ws", tag = "sessions", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "Session id"),
        ("after_seq" = Option<u64>, Query, description = "Send events with a larger seq (default 0)"),
        ("token" = Option<String>, Query, description = "The token, for clients that cannot set headers")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol. The server sends `Event`s (each once durable, in `seq` order) and `PresenceUpdate`s; the client sends `ClientMessage`s."),
        (status = 400, description = "Bad after_seq, or not a WebSocket request", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn session_ws(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    access.check(Some(&id), Need::View)?;
    let (after, _, _) = events_query(query.as_deref(), MAX_EVENTS_PAGE)?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::bad_request(format!(
            "this route speaks WebSocket only: {}",
            e.body_text()
        ))
    })?;
    // Subscribing before the upgrade turns an unknown session or a bad after_seq into an
    // HTTP error the client can read.
    let sub = state.sessions.subscribe(&id, access.author()).await?;
    check_after_seq(after, sub.last_seq)?;
    let sessions = state.sessions.clone();
    let closing = state.closing.subscribe();
    Ok(upgrade
        .max_message_size(crate::BODY_LIMIT)
        .max_frame_size(crate::BODY_LIMIT)
        .on_upgrade(move |socket| async move {
            Connection {
                socket,
                sessions,
                id,
                access,
                sent: after,
                closing,
            }
            .serve(sub)
            .await
        }))
}

struct Connection {
    socket: WebSocket,
    sessions: Sessions,
    id: String,
    access: Access,
    /// The last seq sent.
    sent: u64,
    /// Turns true when the server stops.
    closing: tokio::sync::watch::Receiver<bool>,
}

/// Why a connection ends.
enum End {
    /// The client left or the socket failed: nothing more to say.
    Gone,
    /// Close with this code and reason.
    Close(u16, String),
}

impl Connection {
    async fn serve(mut self, mut sub: Subscription) {
        let end = match self.run(&mut sub).await {
            Ok(()) => End::Gone,
            Err(end) => end,
        };
        if let End::Close(code, reason) = end {
            let frame = Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from(truncate(reason)),
            }));
            let _ = tokio::time::timeout(Duration::from_secs(1), self.socket.send(frame)).await;
        }
        // Dropping the subscription tells the session this connection left.
        drop(sub);
    }

    /// Sends messages as one write: queued, then flushed once (one syscall for a burst
    /// instead of one per event per client).
    async fn send_all(&mut self, texts: Vec<Utf8Bytes>) -> Result<(), End> {
        if texts.is_empty() {
            return Ok(());
        }
        let socket = &mut self.socket;
        let write = async move {
            for t in texts {
                socket.feed(Message::Text(t)).await?;
            }
            socket.flush().await
        };
        match tokio::time::timeout(SEND_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(End::Close(
                CLOSE_TOO_SLOW,
                "client too slow: events were not read in time; reconnect with after_seq".into(),
            )),
        }
    }

    /// Sends everything the log has after `self.sent`.
    async fn catch_up(&mut self) -> Result<(), End> {
        loop {
            let page = self
                .sessions
                .events(&self.id, self.sent, MAX_EVENTS_PAGE)
                .await
                .map_err(|e| End::Close(1011, format!("reading the session's log: {e}")))?;
            let full = page.len() == MAX_EVENTS_PAGE;
            if let Some(last) = page.last() {
                self.sent = last.seq;
            }
            self.send_all(
                page.iter()
                    .map(|e| Utf8Bytes::from(e.json.as_str()))
                    .collect(),
            )
            .await?;
            if !full {
                return Ok(());
            }
        }
    }

    async fn run(&mut self, sub: &mut Subscription) -> Result<(), End> {
        self.catch_up().await?;
        let mut closing = self.closing.clone();
        let stopping = *closing.borrow_and_update();
        if stopping {
            return Err(End::Close(
                1001,
                "the server is stopping; reconnect with after_seq".into(),
            ));
        }
        loop {
            tokio::select! {
                live = sub.receiver.recv() => {
                    // Take the whole burst waiting for this client, then write it at once.
                    let mut burst = vec![live];
                    while burst.len() < MAX_BURST {
                        match sub.receiver.try_recv() {
                            Ok(l) => burst.push(Ok(l)),
                            Err(TryRecvError::Lagged(n)) => {
                                burst.push(Err(RecvError::Lagged(n)));
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let mut out = Vec::with_capacity(burst.len());
                    for live in burst {
                        match live {
                            Ok(Live::Event(e)) => {
                                if e.seq <= self.sent {
                                    continue;
                                }
                                if e.seq != self.sent + 1 {
                                    // Never skip: fill the hole from the log.
                                    self.send_all(std::mem::take(&mut out)).await?;
                                    self.catch_up().await?;
                                    if e.seq <= self.sent {
                                        continue;
                                    }
                                }
                                out.push(Utf8Bytes::from(e.json.as_str()));
                                self.sent = e.seq;
                            }
                            Ok(Live::Presence(p)) => out.push(Utf8Bytes::from(&*p)),
                            Err(RecvError::Lagged(_)) => {
                                // Behind the live buffer: the log has everything.
                                self.send_all(std::mem::take(&mut out)).await?;
                                self.catch_up().await?;
                            }
                            Err(RecvError::Closed) => {
                                return Err(End::Close(1012, "the session was unloaded; reconnect with after_seq".into()));
                            }
                        }
                    }
                    self.send_all(out).await?;
                }
                // The only change is to true (or the server gone): both mean stop.
                _ = closing.changed() => {
                    return Err(End::Close(1001, "the server is stopping; reconnect with after_seq".into()));
                }
                incoming = self.socket.recv() => match incoming {
                    None => return Ok(()),
                    // Beyond the socket's own limit the frame is not even read; say why
                    // if the socket still lets us.
                    Some(Err(e)) => return Err(End::Close(1009, format!("frame refused: {e}"))),
                    Some(Ok(msg)) => self.handle(msg, sub).await?,
                },
            }
        }
    }

    async fn handle(&mut self, msg: Message, sub: &Subscription) -> Result<(), End> {
        if let Message::Text(t) = &msg
            && t.len() > MAX_CLIENT_FRAME
        {
            return Err(End::Close(
                1009,
                format!("frames may be at most {MAX_CLIENT_FRAME} bytes"),
            ));
        }
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                return Err(End::Close(
                    1003,
                    "binary frames are not accepted; send JSON text".into(),
                ));
            }
            Message::Close(_) => return Err(End::Gone),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
        };
        let parsed: ClientMessage = serde_json::from_str(text.as_str()).map_err(|e| {
            End::Close(
                1007,
                truncate(format!(
                    "not a client message ({e}); send {{\"type\": \"typing\" | \"presence\" | \"prompt\"}}"
                )),
            )
        })?;
        let who = sub.who().clone();
        let result = match parsed {
            ClientMessage::Typing {} => self.sessions.typing(&self.id, who).await,
            ClientMessage::Presence { state } => {
                if state.as_ref().is_some_and(|s| s.len() > MAX_PRESENCE_STATE) {
                    return Err(End::Close(
                        1007,
                        format!("presence state is longer than {MAX_PRESENCE_STATE} bytes"),
                    ));
                }
                self.sessions.presence(&self.id, who, state).await
            }
            ClientMessage::Prompt { text } => {
                if let Err(e) = self.access.check(Some(&self.id), Need::Prompt) {
                    return Err(End::Close(1008, e.message));
                }
                self.sessions.prompt(&self.id, who, text).await.map(|_| ())
            }
        };
        if let Err(e) = result {
            let e = ApiError::from(e);
            let body = serde_json::json!({"type": "error", "error": {"code": e.code, "message": e.message}});
            self.send_all(vec![Utf8Bytes::from(body.to_string())])
                .await?;
        }
        Ok(())
    }
}

/// Close reasons must fit a control frame (123 bytes).
fn truncate(mut s: String) -> String {
    if s.len() > 120 {
        let mut cut = 120;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
