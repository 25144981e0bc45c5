//! Session events and WebSocket messages: what a session's clients see.
//!
//! Every logged [`Event`] has the JSON form `{"seq": 42, "type": "tool.output", "at":
//! "2026-11-24T12:00:00.123Z", "data": {...}}`: `seq` is the session's monotonic sequence
//! number (1, 2, 3, … without gaps), `type` names the [`EventBody`] variant and `data` holds
//! its fields. Presence is live state, not history: a [`PresenceUpdate`] has the same shape
//! without `seq` and is never stored. Clients send [`ClientMessage`]s.
//!
//! These JSON forms are a public contract (API.md); the tests at the bottom pin them.

use serde::{Deserialize, Serialize};

/// Who wrote a prompt or joined a session: a user, or a guest holding a share link.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Author {
    /// The user's id; `None` for a guest who came through a share link.
    pub user_id: Option<i64>,
    /// The user's login, or `share-<id>` for a guest.
    pub login: String,
    /// The share link a guest came through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_id: Option<i64>,
}

/// Where a prompt is in its life.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptStatus {
    /// Waiting for the prompts before it; its author may edit or cancel it.
    Queued,
    /// The agent is working on it.
    Running,
    /// The agent finished it.
    Done,
    /// Someone stopped it while it ran.
    Stopped,
    /// The agent failed; `prompt.finished` says why.
    Failed,
    /// Its author cancelled it while it was queued.
    Cancelled,
    /// The server died while it ran.
    Interrupted,
}

impl PromptStatus {
    /// True once the prompt will never run (again).
    pub fn is_final(self) -> bool {
        !matches!(self, PromptStatus::Queued | PromptStatus::Running)
    }

    /// The word stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            PromptStatus::Queued => "queued",
            PromptStatus::Running => "running",
            PromptStatus::Done => "done",
            PromptStatus::Stopped => "stopped",
            PromptStatus::Failed => "failed",
            PromptStatus::Cancelled => "cancelled",
            PromptStatus::Interrupted => "interrupted",
        }
    }

    /// The status a stored word names.
    pub fn parse(word: &str) -> Option<PromptStatus> {
        [
            PromptStatus::Queued,
            PromptStatus::Running,
            PromptStatus::Done,
            PromptStatus::Stopped,
            PromptStatus::Failed,
            PromptStatus::Cancelled,
            PromptStatus::Interrupted,
        ]
        .into_iter()
        .find(|s| s.as_str() == word)
    }
}

/// A prompt: what someone asked the session's agent to do.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    /// Its id, unique within the session (1, 2, 3, … in the order they arrived).
    pub id: i64,
    /// Who asked.
    pub author: Author,
    /// What they asked.
    pub text: String,
    /// Where it is.
    pub status: PromptStatus,
    /// When it arrived, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// A session's state as a whole.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// Nothing running; ready for a prompt.
    Idle,
    /// The agent is working on a prompt.
    Running,
    /// The server died while the agent worked; the next prompt resumes the queue.
    Interrupted,
}

impl SessionStatus {
    /// The word stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Idle => "idle",
            SessionStatus::Running => "running",
            SessionStatus::Interrupted => "interrupted",
        }
    }

    /// The status a stored word names.
    pub fn parse(word: &str) -> Option<SessionStatus> {
        match word {
            "idle" => Some(SessionStatus::Idle),
            "running" => Some(SessionStatus::Running),
            "interrupted" => Some(SessionStatus::Interrupted),
            _ => None,
        }
    }
}

/// How a prompt's run ended.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptOutcome {
    /// The agent finished.
    Done,
    /// Someone stopped it.
    Stopped,
    /// The agent failed.
    Failed,
    /// The server died while it ran.
    Interrupted,
}

impl PromptOutcome {
    /// The prompt status this outcome leaves.
    pub fn status(self) -> PromptStatus {
        match self {
            PromptOutcome::Done => PromptStatus::Done,
            PromptOutcome::Stopped => PromptStatus::Stopped,
            PromptOutcome::Failed => PromptStatus::Failed,
            PromptOutcome::Interrupted => PromptStatus::Interrupted,
        }
    }
}

/// Which output stream a tool wrote to.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// What happened to a file.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileChange {
    /// It was created.
    Created,
    /// Its content changed.
    Modified,
    /// It was removed.
    Deleted,
}

/// What happened, by type. Serialized as `"type"` plus `"data"` inside an [`Event`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
#[non_exhaustive]
pub enum EventBody {
    /// A prompt arrived and waits in the queue (it may start at once).
    #[serde(rename = "prompt.queued")]
    PromptQueued {
        /// The prompt, with its author.
        prompt: Prompt,
    },
    /// The agent started working on a prompt.
    #[serde(rename = "prompt.started")]
    PromptStarted {
        /// Which prompt.
        prompt_id: i64,
        /// Who asked for it.
        author: Author,
    },
    /// The agent stopped working on a prompt.
    #[serde(rename = "prompt.finished")]
    PromptFinished {
        /// Which prompt.
        prompt_id: i64,
        /// How it ended.
        outcome: PromptOutcome,
        /// Why it failed, when it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A piece of the model's answer.
    #[serde(rename = "model.delta")]
    ModelDelta {
        /// The prompt being answered.
        prompt_id: i64,
        /// The text.
        text: String,
    },
    /// The agent called a tool.
    #[serde(rename = "tool.started")]
    ToolStarted {
        /// The prompt it works on.
        prompt_id: i64,
        /// The call's id, unique within the session.
        call_id: String,
        /// The tool's name (`shell`, `read`, `edit`, …).
        tool: String,
        /// Its arguments.
        input: serde_json::Value,
    },
    /// Output of a running tool, in full (the model may see it truncated).
    #[serde(rename = "tool.output")]
    ToolOutput {
        /// The call.
        call_id: String,
        /// Which stream.
        stream: OutputStream,
        /// The text.
        text: String,
    },
    /// A tool call ended.
    #[serde(rename = "tool.finished")]
    ToolFinished {
        /// The call.
        call_id: String,
        /// True when it succeeded.
        ok: bool,
        /// A command's exit code, when the tool ran one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
    /// A file in the session's working tree changed.
    #[serde(rename = "file.changed")]
    FileChanged {
        /// The path, relative to the repository root.
        path: String,
        /// What happened.
        change: FileChange,
    },
    /// The session's status changed.
    #[serde(rename = "status")]
    Status {
        /// The new status.
        status: SessionStatus,
    },
    /// Someone opened the session (their first connection).
    #[serde(rename = "participant.joined")]
    ParticipantJoined {
        /// Who.
        participant: Author,
    },
    /// Someone closed their last connection to the session.
    #[serde(rename = "participant.left")]
    ParticipantLeft {
        /// Who.
        participant: Author,
    },
    /// The queue changed (a prompt was queued, edited, cancelled, started): the whole
    /// queue of prompts still waiting, in the order they will run.
    #[serde(rename = "queue.updated")]
    QueueUpdated {
        /// Waiting prompts, next first.
        queue: Vec<Prompt>,
    },
    /// The agent's changes for a prompt were committed on the session's branch.
    #[serde(rename = "git.committed")]
    GitCommitted {
        /// The session's branch.
        branch: String,
        /// The new commit.
        commit: String,
        /// The commit's author: the person whose prompt produced it.
        author: String,
        /// Their email.
        author_email: String,
        /// Others whose prompts the commit also holds (credited in `Co-authored-by`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        co_authors: Vec<String>,
    },
    /// A push of the session's branch failed; it is not retried until the next commit.
    #[serde(rename = "git.push_failed")]
    GitPushFailed {
        /// The branch.
        branch: String,
        /// Why (the remote's words for a rejection).
        reason: String,
    },
    /// A branch was pushed.
    #[serde(rename = "git.pushed")]
    GitPushed {
        /// The branch.
        branch: String,
        /// The commit pushed.
        commit: String,
    },
    /// A pull request was opened.
    #[serde(rename = "pr.opened")]
    PrOpened {
        /// Its number.
        number: u64,
        /// Its web address.
        url: String,
        /// Its title.
        title: String,
    },
    /// A pull request changed state (reviewed, merged, closed).
    #[serde(rename = "pr.updated")]
    PrUpdated {
        /// Its number.
        number: u64,
        /// Its web address.
        url: String,
        /// `open`, `merged`, `closed`, …
        state: String,
    },
    /// A review of a pull request was submitted.
    #[serde(rename = "pr.reviewed")]
    PrReviewed {
        /// The pull request's number.
        number: u64,
        /// Its web address.
        url: String,
        /// The reviewer's GitHub login.
        reviewer: String,
        /// `approved`, `changes_requested` or `commented`.
        state: String,
        /// The review's text, when it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
    /// Someone commented on a line of a pull request's diff.
    #[serde(rename = "pr.review_comment")]
    PrReviewComment {
        /// The pull request's number.
        number: u64,
        /// The comment's web address.
        url: String,
        /// The commenter's GitHub login.
        author: String,
        /// The file commented on.
        path: String,
        /// The line, when the comment is on one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        line: Option<i64>,
        /// The comment.
        body: String,
    },
    /// The agent started a sub-session.
    #[serde(rename = "session.spawned")]
    SessionSpawned {
        /// The new session.
        session_id: String,
        /// Its repository.
        repo: String,
    },
    /// After a prompt, the session's sandbox was snapshotted while it kept running; a
    /// sandbox that is gone later is restored from the latest snapshot.
    #[serde(rename = "snapshot.taken")]
    SnapshotTaken {
        /// The snapshot's image id.
        image: String,
    },
    /// A snapshot after a prompt failed (the prompt's outcome is not affected).
    #[serde(rename = "snapshot.failed")]
    SnapshotFailed {
        /// Why.
        reason: String,
    },
    /// The session's sandbox was gone (it died, or the server restarted) and the session
    /// continues in a new one.
    #[serde(rename = "sandbox.restored")]
    SandboxRestored {
        /// Why a new sandbox was needed.
        reason: String,
        /// The snapshot it was restored from; absent when the session had none, and the
        /// new sandbox started from the image with the session's branch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot: Option<String>,
    },
}

impl EventBody {
    /// The `type` word of this event.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventBody::PromptQueued { .. } => "prompt.queued",
            EventBody::PromptStarted { .. } => "prompt.started",
            EventBody::PromptFinished { .. } => "prompt.finished",
            EventBody::ModelDelta { .. } => "model.delta",
            EventBody::ToolStarted { .. } => "tool.started",
            EventBody::ToolOutput { .. } => "tool.output",
            EventBody::ToolFinished { .. } => "tool.finished",
            EventBody::FileChanged { .. } => "file.changed",
            EventBody::Status { .. } => "status",
            EventBody::ParticipantJoined { .. } => "participant.joined",
            EventBody::ParticipantLeft { .. } => "participant.left",
            EventBody::QueueUpdated { .. } => "queue.updated",
            EventBody::GitCommitted { .. } => "git.committed",
            EventBody::GitPushFailed { .. } => "git.push_failed",
            EventBody::GitPushed { .. } => "git.pushed",
            EventBody::PrOpened { .. } => "pr.opened",
            EventBody::PrUpdated { .. } => "pr.updated",
            EventBody::PrReviewed { .. } => "pr.reviewed",
            EventBody::PrReviewComment { .. } => "pr.review_comment",
            EventBody::SessionSpawned { .. } => "session.spawned",
            EventBody::SnapshotTaken { .. } => "snapshot.taken",
            EventBody::SnapshotFailed { .. } => "snapshot.failed",
            EventBody::SandboxRestored { .. } => "sandbox.restored",
        }
    }
}

/// One entry of a session's event log.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the session's log: 1, 2, 3, … without gaps.
    pub seq: u64,
    /// When it was recorded, RFC 3339 in UTC with milliseconds.
    pub at: String,
    /// What happened.
    #[serde(flatten)]
    pub body: EventBody,
}

/// Who is looking at a session right now, and who is typing. Live state: never logged,
/// carries no `seq`; JSON `{"type": "presence", "at": ..., "data": {"participants": [...]}}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "presence")]
pub struct PresenceUpdate {
    /// When this state was current.
    pub at: String,
    /// The state.
    pub data: Presence,
}

/// The presence state of a session.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Everyone connected, by login.
    pub participants: Vec<PresenceEntry>,
}

/// One connected participant.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// Who.
    pub participant: Author,
    /// How many connections they have open.
    pub connections: u32,
    /// True while they are typing (for a few seconds after their last `typing`).
    pub typing: bool,
    /// What they last said about themselves (`{"type":"presence", "state": ...}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// Longest `state` a presence message may carry.
pub const MAX_PRESENCE_STATE: usize = 64;

/// A message from a client over the session's WebSocket.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// The person is typing a prompt (predictive warm-up, presence). A struct variant so
    /// unknown fields are refused like everywhere else.
    Typing {},
    /// The person's own presence state, e.g. `viewing` or `away`.
    Presence {
        /// At most [`MAX_PRESENCE_STATE`] bytes.
        #[serde(default)]
        state: Option<String>,
    },
    /// A prompt: starts at once, or queues while the agent works.
    Prompt {
        /// What to do.
        text: String,
    },
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC with milliseconds
/// (`2026-11-24T12:00:00.123Z`), the form of every `at`.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alice() -> Author {
        Author {
            user_id: Some(7),
            login: "alice".into(),
            share_id: None,
        }
    }

    fn event(seq: u64, body: EventBody) -> Event {
        Event {
            seq,
            at: rfc3339_ms(1_795_953_600_123),
            body,
        }
    }

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_953_600_123), "2026-11-29T12:00:00.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn event_json_form_is_seq_type_at_data() {
        let prompt = Prompt {
            id: 3,
            author: alice(),
            text: "fix the build".into(),
            status: PromptStatus::Queued,
            created_at_ms: 5,
        };
        let cases = [
            (
                EventBody::PromptQueued {
                    prompt: prompt.clone(),
                },
                json!({"seq": 1, "type": "prompt.queued", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"prompt": {"id": 3, "author": {"user_id": 7, "login": "alice"},
                        "text": "fix the build", "status": "queued", "created_at_ms": 5}}}),
            ),
            (
                EventBody::PromptStarted {
                    prompt_id: 3,
                    author: alice(),
                },
                json!({"seq": 1, "type": "prompt.started", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"prompt_id": 3, "author": {"user_id": 7, "login": "alice"}}}),
            ),
            (
                EventBody::PromptFinished {
                    prompt_id: 3,
                    outcome: PromptOutcome::Stopped,
                    error: None,
                },
                json!({"seq": 1, "type": "prompt.finished", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"prompt_id": 3, "outcome": "stopped"}}),
            ),
            (
                EventBody::ModelDelta {
                    prompt_id: 3,
                    text: "Hi".into(),
                },
                json!({"seq": 1, "type": "model.delta", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"prompt_id": 3, "text": "Hi"}}),
            ),
            (
                EventBody::ToolStarted {
                    prompt_id: 3,
                    call_id: "c1".into(),
                    tool: "shell".into(),
                    input: json!({"command": "ls"}),
                },
                json!({"seq": 1, "type": "tool.started", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"prompt_id": 3, "call_id": "c1", "tool": "shell",
                        "input": {"command": "ls"}}}),
            ),
            (
                EventBody::ToolOutput {
                    call_id: "c1".into(),
                    stream: OutputStream::Stderr,
                    text: "x".into(),
                },
                json!({"seq": 1, "type": "tool.output", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"call_id": "c1", "stream": "stderr", "text": "x"}}),
            ),
            (
                EventBody::ToolFinished {
                    call_id: "c1".into(),
                    ok: true,
                    exit_code: Some(0),
                },
                json!({"seq": 1, "type": "tool.finished", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"call_id": "c1", "ok": true, "exit_code": 0}}),
            ),
            (
                EventBody::FileChanged {
                    path: "src/main.rs".into(),
                    change: FileChange::Modified,
                },
                json!({"seq": 1, "type": "file.changed", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"path": "src/main.rs", "change": "modified"}}),
            ),
            (
                EventBody::Status {
                    status: SessionStatus::Interrupted,
                },
                json!({"seq": 1, "type": "status", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"status": "interrupted"}}),
            ),
            (
                EventBody::ParticipantJoined {
                    participant: Author {
                        user_id: None,
                        login: "share-4".into(),
                        share_id: Some(4),
                    },
                },
                json!({"seq": 1, "type": "participant.joined", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"participant": {"user_id": null, "login": "share-4", "share_id": 4}}}),
            ),
            (
                EventBody::ParticipantLeft {
                    participant: alice(),
                },
                json!({"seq": 1, "type": "participant.left", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"participant": {"user_id": 7, "login": "alice"}}}),
            ),
            (
                EventBody::QueueUpdated {
                    queue: vec![prompt],
                },
                json!({"seq": 1, "type": "queue.updated", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"queue": [{"id": 3, "author": {"user_id": 7, "login": "alice"},
                        "text": "fix the build", "status": "queued", "created_at_ms": 5}]}}),
            ),
            (
                EventBody::GitPushed {
                    branch: "hangar/fix".into(),
                    commit: "abc".into(),
                },
                json!({"seq": 1, "type": "git.pushed", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"branch": "hangar/fix", "commit": "abc"}}),
            ),
            (
                EventBody::PrOpened {
                    number: 9,
                    url: "u".into(),
                    title: "t".into(),
                },
                json!({"seq": 1, "type": "pr.opened", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"number": 9, "url": "u", "title": "t"}}),
            ),
            (
                EventBody::PrUpdated {
                    number: 9,
                    url: "u".into(),
                    state: "merged".into(),
                },
                json!({"seq": 1, "type": "pr.updated", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"number": 9, "url": "u", "state": "merged"}}),
            ),
            (
                EventBody::PrReviewed {
                    number: 9,
                    url: "u".into(),
                    reviewer: "carol".into(),
                    state: "approved".into(),
                    body: None,
                },
                json!({"seq": 1, "type": "pr.reviewed", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"number": 9, "url": "u", "reviewer": "carol", "state": "approved"}}),
            ),
            (
                EventBody::PrReviewComment {
                    number: 9,
                    url: "u".into(),
                    author: "carol".into(),
                    path: "src/lib.rs".into(),
                    line: Some(12),
                    body: "use a constant".into(),
                },
                json!({"seq": 1, "type": "pr.review_comment", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"number": 9, "url": "u", "author": "carol", "path": "src/lib.rs",
                        "line": 12, "body": "use a constant"}}),
            ),
            (
                EventBody::SessionSpawned {
                    session_id: "ses-1".into(),
                    repo: "r".into(),
                },
                json!({"seq": 1, "type": "session.spawned", "at": "2026-11-29T12:00:00.123Z",
                    "data": {"session_id": "ses-1", "repo": "r"}}),
            ),
        ];
        for (body, want) in cases {
            let name = body.type_name();
            let ev = event(1, body);
            let got = serde_json::to_value(&ev).unwrap();
            assert_eq!(got, want, "{name}");
            assert_eq!(got["type"], name);
            let back: Event = serde_json::from_value(want).unwrap();
            assert_eq!(back, ev, "{name} round trip");
        }
    }

    #[test]
    fn presence_has_no_seq() {
        let p = PresenceUpdate {
            at: rfc3339_ms(0),
            data: Presence {
                participants: vec![PresenceEntry {
                    participant: alice(),
                    connections: 2,
                    typing: true,
                    state: None,
                }],
            },
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"type": "presence", "at": "1970-01-01T00:00:00.000Z", "data": {"participants": [
                {"participant": {"user_id": 7, "login": "alice"}, "connections": 2, "typing": true}]}})
        );
    }

    #[test]
    fn client_messages_decode_and_reject_unknown_shapes() {
        let m: ClientMessage = serde_json::from_str(r#"{"type":"typing"}"#).unwrap();
        assert_eq!(m, ClientMessage::Typing {});
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"prompt","text":"add tests"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Prompt {
                text: "add tests".into()
            }
        );
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"presence","state":"viewing"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Presence {
                state: Some("viewing".into())
            }
        );
        for bad in [
            r#"{"type":"prompt"}"#,
            r#"{"type":"dance"}"#,
            r#"{"type":"typing","x":1}"#,
            r#"[]"#,
            "",
        ] {
            assert!(serde_json::from_str::<ClientMessage>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statuses_round_trip_through_their_words() {
        for s in [
            PromptStatus::Queued,
            PromptStatus::Running,
            PromptStatus::Done,
            PromptStatus::Stopped,
            PromptStatus::Failed,
            PromptStatus::Cancelled,
            PromptStatus::Interrupted,
        ] {
            assert_eq!(PromptStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        }
        for s in [
            SessionStatus::Idle,
            SessionStatus::Running,
            SessionStatus::Interrupted,
        ] {
            assert_eq!(SessionStatus::parse(s.as_str()), Some(s));
        }
    }

    /// The web UI's fixture (one message of every kind, read by its own tests) decodes
    /// with these types and covers every event type: the UI's hand-written types cannot
    /// drift from this file unnoticed. A new variant fails to compile here until the
    /// fixture and the UI learn it.
    #[test]
    fn web_ui_fixture_matches_the_protocol() {
        fn index(b: &EventBody) -> usize {
            match b {
                EventBody::PromptQueued { .. } => 0,
                EventBody::PromptStarted { .. } => 1,
                EventBody::PromptFinished { .. } => 2,
                EventBody::ModelDelta { .. } => 3,
                EventBody::ToolStarted { .. } => 4,
                EventBody::ToolOutput { .. } => 5,
                EventBody::ToolFinished { .. } => 6,
                EventBody::FileChanged { .. } => 7,
                EventBody::Status { .. } => 8,
                EventBody::ParticipantJoined { .. } => 9,
                EventBody::ParticipantLeft { .. } => 10,
                EventBody::QueueUpdated { .. } => 11,
                EventBody::GitPushed { .. } => 12,
                EventBody::PrOpened { .. } => 13,
                EventBody::PrUpdated { .. } => 14,
                EventBody::SessionSpawned { .. } => 15,
                EventBody::GitCommitted { .. } => 16,
                EventBody::GitPushFailed { .. } => 17,
                EventBody::PrReviewed { .. } => 18,
                EventBody::PrReviewComment { .. } => 19,
                EventBody::SnapshotTaken { .. } => 20,
                EventBody::SnapshotFailed { .. } => 21,
                EventBody::SandboxRestored { .. } => 22,
            }
        }
        let fixture: Vec<serde_json::Value> =
            serde_json::from_str(include_str!("../../../web/src/protocol.fixture.json")).unwrap();
        let mut seen = [false; 23];
        let mut presence = 0;
        for message in fixture {
            if message["type"] == "presence" {
                let p: PresenceUpdate = serde_json::from_value(message.clone()).unwrap();
                assert_eq!(serde_json::to_value(&p).unwrap(), message);
                presence += 1;
                continue;
            }
            let e: Event = serde_json::from_value(message.clone())
                .unwrap_or_else(|err| panic!("{message}: {err}"));
            assert_eq!(serde_json::to_value(&e).unwrap(), message, "round trip");
            seen[index(&e.body)] = true;
        }
        assert!(
            seen.iter().all(|s| *s),
            "event types missing from the fixture: {seen:?}"
        );
        assert!(presence > 0, "the fixture has no presence message");
    }
}
