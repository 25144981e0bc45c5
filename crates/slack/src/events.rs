//! What Slack sends: Events API envelopes (<https://api.slack.com/apis/events-api>), slash
//! commands (form-encoded, <https://api.slack.com/interactivity/slash-commands>) and
//! interactivity payloads (`payload=` JSON, <https://api.slack.com/reference/interaction-payloads/block-actions>).
//! Pure decoding: no I/O. Fields Hangar does not use are ignored, as Slack adds fields
//! over time.

use serde::Deserialize;

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// An Events API delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type")]
pub enum Envelope {
    /// Slack checks the Request URL: answer with the challenge.
    #[serde(rename = "url_verification")]
    UrlVerification {
        /// Echoed back.
        challenge: String,
    },
    /// An event.
    #[serde(rename = "event_callback")]
    EventCallback(Box<Callback>),
    /// Anything else (e.g. `app_rate_limited`): acknowledged, not acted on.
    #[serde(other)]
    Other,
}

/// An `event_callback` envelope.
#[derive(Debug, Clone, Deserialize)]
pub struct Callback {
    /// The workspace.
    pub team_id: String,
    /// Unique per event; a retry carries the same id.
    pub event_id: String,
    /// The event.
    pub event: Event,
}

/// The events Hangar acts on.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// The bot was mentioned in a channel.
    #[serde(rename = "app_mention")]
    AppMention(Message),
    /// A message in a channel the bot is in, or a direct message.
    #[serde(rename = "message")]
    Message(Message),
    /// Anything else.
    #[serde(other)]
    Other,
}

/// A message, as both `app_mention` and `message` carry it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Message {
    /// Who wrote it (absent for some bot and system messages).
    #[serde(default)]
    pub user: Option<String>,
    /// Set when a bot wrote it (Hangar itself included).
    #[serde(default)]
    pub bot_id: Option<String>,
    /// Set for edits, deletions, joins, bot messages…: none of them is a request.
    #[serde(default)]
    pub subtype: Option<String>,
    /// Its text, with mentions as `<@U…>`.
    #[serde(default)]
    pub text: String,
    /// The channel (`C…`, `G…`, or `D…` for a direct message).
    pub channel: String,
    /// `im` for direct messages; `channel`, `group`, `mpim` otherwise.
    #[serde(default)]
    pub channel_type: Option<String>,
    /// Its timestamp, the message's id within the channel.
    pub ts: String,
    /// The thread's root when it is a reply.
    #[serde(default)]
    pub thread_ts: Option<String>,
}

impl Message {
    /// A person wrote it, as a plain message (not an edit, a join or a bot's message). A
    /// thread reply also sent to the channel and a message with files count as plain.
    pub fn is_from_person(&self) -> bool {
        self.user.is_some()
            && self.bot_id.is_none()
            && matches!(
                self.subtype.as_deref(),
                None | Some("thread_broadcast") | Some("file_share")
            )
    }

    /// A direct message to the bot.
    pub fn is_direct(&self) -> bool {
        self.channel_type.as_deref() == Some("im") || self.channel.starts_with('D')
    }

    /// The thread it belongs to: its root, or itself when it starts one.
    pub fn thread(&self) -> &str {
        self.thread_ts.as_deref().unwrap_or(&self.ts)
    }

    /// It replies in an existing thread.
    pub fn is_reply(&self) -> bool {
        self.thread_ts.as_deref().is_some_and(|t| t != self.ts)
    }
}

/// Decodes an Events API body.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, DecodeError> {
    serde_json::from_slice(body).map_err(|e| DecodeError(format!("not an Events API body: {e}")))
}

/// The request text without mentions of anyone (the bot's own mention starts it) and
/// with Slack's escapes undone.
pub fn request_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<@") {
        out.push_str(&rest[..start]);
        match rest[start..].find('>') {
            Some(end) => rest = &rest[start + end + 1..],
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A slash command invocation.
#[derive(Debug, Clone, Deserialize)]
pub struct SlashCommand {
    /// The workspace.
    pub team_id: String,
    /// The channel it was typed in.
    pub channel_id: String,
    /// The channel's name (`directmessage` in a DM).
    #[serde(default)]
    pub channel_name: String,
    /// Who typed it.
    pub user_id: String,
    /// The command, e.g. `/hangar`.
    pub command: String,
    /// What followed the command.
    #[serde(default)]
    pub text: String,
}

/// Slack's periodic certificate check of a command URL (`ssl_check=1`): answered 200,
/// nothing to do.
pub fn is_ssl_check(body: &[u8]) -> bool {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .is_ok_and(|pairs| pairs.iter().any(|(k, v)| k == "ssl_check" && v == "1"))
}

/// Decodes a slash command's form body.
pub fn parse_command(body: &[u8]) -> Result<SlashCommand, DecodeError> {
    serde_urlencoded::from_bytes(body)
        .map_err(|e| DecodeError(format!("not a slash command body: {e}")))
}

/// A button click (`block_actions`), the only interaction Hangar offers.
#[derive(Debug, Clone, Deserialize)]
pub struct BlockActions {
    /// The workspace.
    pub team: IdOnly,
    /// Who clicked.
    pub user: IdOnly,
    /// Where the message with the button is.
    #[serde(default)]
    pub channel: Option<IdOnly>,
    /// The message with the button.
    #[serde(default)]
    pub message: Option<ActionMessage>,
    /// What was clicked.
    pub actions: Vec<Action>,
}

/// An object of which only the id matters.
#[derive(Debug, Clone, Deserialize)]
pub struct IdOnly {
    /// Its id.
    pub id: String,
}

/// The message carrying the buttons.
#[derive(Debug, Clone, Deserialize)]
pub struct ActionMessage {
    /// Its timestamp.
    pub ts: String,
    /// Its thread, when it is in one.
    #[serde(default)]
    pub thread_ts: Option<String>,
}

/// One clicked button.
#[derive(Debug, Clone, Deserialize)]
pub struct Action {
    /// Which button (`stop`, `choose_repo`).
    pub action_id: String,
    /// Its value.
    #[serde(default)]
    pub value: Option<String>,
}

/// An interactivity payload.
#[derive(Debug, Clone)]
pub enum Interaction {
    /// Buttons clicked.
    BlockActions(BlockActions),
    /// Anything else (shortcuts, view submissions): acknowledged, not acted on.
    Other(String),
}

/// Decodes an interactivity body: a form with one field, `payload`, holding JSON.
pub fn parse_interaction(body: &[u8]) -> Result<Interaction, DecodeError> {
    #[derive(Deserialize)]
    struct Form {
        payload: String,
    }
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: String,
    }
    let form: Form = serde_urlencoded::from_bytes(body)
        .map_err(|e| DecodeError(format!("not an interactivity body: {e}")))?;
    let kind: Kind = serde_json::from_str(&form.payload)
        .map_err(|e| DecodeError(format!("payload is not an interaction: {e}")))?;
    if kind.kind != "block_actions" {
        return Ok(Interaction::Other(kind.kind));
    }
    serde_json::from_str(&form.payload)
        .map(Interaction::BlockActions)
        .map_err(|e| DecodeError(format!("payload is not a block_actions interaction: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn url_verification_and_mentions_decode() {
        let v =
            parse_envelope(br#"{"token":"x","challenge":"3eZbrw1a","type":"url_verification"}"#)
                .unwrap();
        assert!(matches!(v, Envelope::UrlVerification { challenge } if challenge == "3eZbrw1a"));
        let body = br#"{"token":"x","team_id":"T1","api_app_id":"A1","type":"event_callback","event_id":"Ev1","event_time":1,
            "event":{"type":"app_mention","user":"U1","text":"<@UBOT> fix the login page","ts":"1.000100","channel":"C1","event_ts":"1.000100"}}"#;
        let Envelope::EventCallback(cb) = parse_envelope(body).unwrap() else {
            panic!("not a callback")
        };
        assert_eq!((cb.team_id.as_str(), cb.event_id.as_str()), ("T1", "Ev1"));
        let Event::AppMention(m) = cb.event else {
            panic!("not a mention")
        };
        assert!(m.is_from_person() && !m.is_direct() && !m.is_reply());
        assert_eq!(m.thread(), "1.000100");
        assert_eq!(request_text(&m.text), "fix the login page");
    }

    #[test]
    fn thread_replies_dms_and_bot_messages_are_told_apart() {
        let reply: Message = serde_json::from_str(
            r#"{"type":"message","user":"U1","text":"also the footer","ts":"2.0","thread_ts":"1.0","channel":"C1","channel_type":"channel"}"#,
        )
        .unwrap();
        assert!(reply.is_reply() && reply.thread() == "1.0");
        let dm: Message = serde_json::from_str(
            r#"{"type":"message","user":"U1","text":"hi","ts":"3.0","channel":"D1","channel_type":"im"}"#,
        )
        .unwrap();
        assert!(dm.is_direct() && dm.is_from_person());
        let bot: Message = serde_json::from_str(
            r#"{"type":"message","subtype":"bot_message","bot_id":"B1","text":"working","ts":"4.0","channel":"C1"}"#,
        )
        .unwrap();
        assert!(!bot.is_from_person());
        let broadcast: Message = serde_json::from_str(
            r#"{"type":"message","subtype":"thread_broadcast","user":"U1","text":"also here","ts":"5.0","thread_ts":"1.0","channel":"C1"}"#,
        )
        .unwrap();
        assert!(broadcast.is_from_person() && broadcast.is_reply());
        let edit: Message = serde_json::from_str(
            r#"{"type":"message","subtype":"message_changed","user":"U1","ts":"6.0","channel":"C1"}"#,
        )
        .unwrap();
        assert!(!edit.is_from_person());
        let other = parse_envelope(
            br#"{"type":"event_callback","team_id":"T1","event_id":"Ev2","event":{"type":"reaction_added","user":"U1"}}"#,
        )
        .unwrap();
        assert!(matches!(other, Envelope::EventCallback(cb) if matches!(cb.event, Event::Other)));
    }

    #[test]
    fn request_text_drops_mentions_and_unescapes() {
        assert_eq!(
            request_text("<@U1>   make a &lt; b &amp;&amp; c"),
            "make a < b && c"
        );
        assert_eq!(request_text("hey <@U1|bot> go"), "hey go");
        assert_eq!(request_text("broken <@U1"), "broken <@U1");
    }

    #[test]
    fn slash_commands_and_button_clicks_decode() {
        let c = parse_command(b"token=x&team_id=T1&channel_id=C1&channel_name=app-dev&user_id=U1&user_name=bob&command=%2Fhangar&text=fix+the+build&response_url=https%3A%2F%2Fhooks.slack.com%2Fx&trigger_id=1").unwrap();
        assert_eq!(
            (c.command.as_str(), c.text.as_str()),
            ("/hangar", "fix the build")
        );
        assert!(is_ssl_check(b"ssl_check=1&token=x"));
        assert!(!is_ssl_check(b"token=x&team_id=T1&text=ssl_check%3D1"));
        let payload = r#"{"type":"block_actions","team":{"id":"T1","domain":"acme"},"user":{"id":"U1","username":"bob"},"channel":{"id":"C1","name":"app-dev"},"message":{"type":"message","ts":"5.0","thread_ts":"1.0","text":"x"},"actions":[{"action_id":"stop","block_id":"b","value":"ses-0123456789abcdef","type":"button","action_ts":"6.0"}]}"#;
        let body = serde_urlencoded::to_string([("payload", payload)]).unwrap();
        let Interaction::BlockActions(a) = parse_interaction(body.as_bytes()).unwrap() else {
            panic!("not block_actions")
        };
        assert_eq!(a.actions[0].action_id, "stop");
        assert_eq!(a.message.unwrap().thread_ts.as_deref(), Some("1.0"));
        let body =
            serde_urlencoded::to_string([("payload", r#"{"type":"view_submission"}"#)]).unwrap();
        assert!(
            matches!(parse_interaction(body.as_bytes()).unwrap(), Interaction::Other(k) if k == "view_submission")
        );
    }

    #[test]
    fn garbage_is_a_decode_error() {
        for body in [&b"not json"[..], b"{}", b"{\"type\":\"event_callback\"}"] {
            assert!(parse_envelope(body).is_err(), "{body:?}");
        }
        assert!(parse_command(b"text=only").is_err());
        assert!(parse_interaction(b"payload=%7Bnope").is_err());
        assert!(parse_interaction(b"nothing=1").is_err());
    }
}

#[cfg(test)]
mod properties {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever a signed body holds, decoding answers; it never panics.
        #[test]
        fn decoders_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_envelope(&body);
            let _ = parse_command(&body);
            let _ = parse_interaction(&body);
            let _ = request_text(&String::from_utf8_lossy(&body));
        }

        /// Envelope-shaped JSON with arbitrary values decodes or fails cleanly.
        #[test]
        fn envelope_shaped_json_never_panics(
            kind in "(event_callback|url_verification|app_rate_limited|x)",
            event in "(app_mention|message|reaction_added)",
            text in ".{0,40}",
            ts in proptest::option::of("[0-9.]{0,12}"),
        ) {
            let body = serde_json::json!({
                "type": kind, "team_id": "T1", "event_id": "Ev1", "challenge": text,
                "event": {"type": event, "text": text, "channel": "C1", "ts": ts, "thread_ts": ts},
            });
            if let Ok(Envelope::EventCallback(cb)) = parse_envelope(body.to_string().as_bytes())
                && let Event::AppMention(m) | Event::Message(m) = cb.event
            {
                let _ = (m.thread(), m.is_reply(), m.is_direct(), request_text(&m.text));
            }
        }
    }
}
