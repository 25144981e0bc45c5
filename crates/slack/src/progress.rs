//! A thread's view of a session, built from the session's events: the progress message
//! (edited in place, at most once per interval) and the results posted when prompts end.
//! Pure: [`Progress::apply`] takes events and says what to post; the bot does the I/O.

use std::time::{Duration, Instant};

use hangar_protocol::session::{EventBody, PromptOutcome, SessionStatus};
use serde_json::{Value, json};

/// The longest summary posted; Slack messages stay readable (and under its limits).
const MAX_SUMMARY: usize = 2500;

/// What an event asks the thread to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// Nothing new.
    Nothing,
    /// The progress message changed.
    Progress,
    /// Post this message in the thread (a prompt's result, a pull request).
    Post(String),
}

/// A session as its thread shows it.
#[derive(Debug, Clone)]
pub struct Progress {
    repo: String,
    url: String,
    session_id: String,
    status: SessionStatus,
    running: Option<Running>,
    queued: usize,
    finished: u32,
    pr: Option<String>,
    pushed: Option<(String, String)>,
}

#[derive(Debug, Clone)]
struct Running {
    id: i64,
    author: String,
    tool_calls: u32,
    last_tool: Option<String>,
    text: String,
}

impl Progress {
    /// A session in `repo`, opened in the web UI at `url`.
    pub fn new(session_id: &str, repo: &str, url: &str) -> Progress {
        Progress {
            repo: repo.to_string(),
            url: url.to_string(),
            session_id: session_id.to_string(),
            status: SessionStatus::Idle,
            running: None,
            queued: 0,
            finished: 0,
            pr: None,
            pushed: None,
        }
    }

    /// Takes one event into account.
    pub fn apply(&mut self, event: &EventBody) -> Shown {
        match event {
            EventBody::PromptStarted { prompt_id, author } => {
                self.running = Some(Running {
                    id: *prompt_id,
                    author: author.login.clone(),
                    tool_calls: 0,
                    last_tool: None,
                    text: String::new(),
                });
                self.status = SessionStatus::Running;
                Shown::Progress
            }
            EventBody::ModelDelta { prompt_id, text } => match &mut self.running {
                Some(r) if r.id == *prompt_id => {
                    r.text.push_str(text);
                    Shown::Progress
                }
                _ => Shown::Nothing,
            },
            EventBody::ToolStarted {
                prompt_id, tool, ..
            } => match &mut self.running {
                Some(r) if r.id == *prompt_id => {
                    r.tool_calls += 1;
                    r.last_tool = Some(tool.clone());
                    Shown::Progress
                }
                _ => Shown::Nothing,
            },
            EventBody::QueueUpdated { queue } => {
                self.queued = queue.len();
                Shown::Progress
            }
            EventBody::Status { status } => {
                self.status = *status;
                Shown::Progress
            }
            EventBody::PrOpened { url, title, .. } => {
                self.pr = Some(url.clone());
                Shown::Post(format!(
                    ":link: Pull request opened: <{url}|{}>",
                    escape(title)
                ))
            }
            EventBody::GitPushed { branch, commit } => {
                self.pushed = Some((branch.clone(), commit.chars().take(7).collect()));
                Shown::Progress
            }
            EventBody::GitPushFailed { branch, reason } => Shown::Post(format!(
                ":warning: Pushing `{}` failed: {}",
                escape(branch),
                escape(reason)
            )),
            EventBody::PromptFinished {
                prompt_id,
                outcome,
                error,
            } => {
                let running = self.running.take().filter(|r| r.id == *prompt_id);
                self.finished += 1;
                let who = running
                    .as_ref()
                    .map(|r| format!(" (asked by {})", r.author))
                    .unwrap_or_default();
                let summary = running
                    .map(|r| truncate(r.text.trim(), MAX_SUMMARY))
                    .filter(|s| !s.is_empty());
                let text = match outcome {
                    PromptOutcome::Done => format!(
                        ":white_check_mark: Done{who}.\n{}",
                        summary.unwrap_or_else(|| "(no summary)".into())
                    ),
                    PromptOutcome::Stopped => format!(":octagonal_sign: Stopped{who}."),
                    PromptOutcome::Failed => format!(
                        ":x: Failed{who}: {}",
                        escape(error.as_deref().unwrap_or("no reason given"))
                    ),
                    PromptOutcome::Interrupted => {
                        format!(":warning: Interrupted{who}: Hangar restarted while it ran.")
                    }
                };
                Shown::Post(text)
            }
            _ => Shown::Nothing,
        }
    }

    /// Whether the agent is working (or has work queued).
    pub fn busy(&self) -> bool {
        self.running.is_some() || self.queued > 0
    }

    /// The progress message: text, and blocks with a Stop button while the agent works.
    pub fn render(&self) -> (String, Value) {
        let head = format!(
            "Working on it in *{}* · <{}|Open {} in Hangar>",
            self.repo, self.url, self.session_id
        );
        let mut lines = vec![head];
        match &self.running {
            Some(r) => {
                let mut line = format!(
                    ":hourglass_flowing_sand: Working on a prompt by {}",
                    r.author
                );
                if r.tool_calls > 0 {
                    line.push_str(&format!(
                        " · {} tool call{} (last: {})",
                        r.tool_calls,
                        if r.tool_calls == 1 { "" } else { "s" },
                        r.last_tool.as_deref().unwrap_or("?")
                    ));
                }
                lines.push(line);
                if let Some(last) = r.text.trim().lines().last() {
                    lines.push(format!("> {}", escape(&truncate(last, 300))));
                }
            }
            None => lines.push(match self.status {
                SessionStatus::Interrupted => ":warning: Interrupted; reply to go on.".into(),
                _ => format!(
                    "Idle after {} prompt{} · reply in this thread to ask for more.",
                    self.finished,
                    if self.finished == 1 { "" } else { "s" }
                ),
            }),
        }
        if self.queued > 0 {
            lines.push(format!("{} more queued", self.queued));
        }
        if let Some((branch, commit)) = &self.pushed {
            lines.push(format!("Branch `{}` pushed ({commit})", escape(branch)));
        }
        if let Some(pr) = &self.pr {
            lines.push(format!("Pull request: {pr}"));
        }
        let text = lines.join("\n");
        let mut blocks = vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})];
        if self.running.is_some() {
            blocks.push(json!({
                "type": "actions",
                "elements": [{
                    "type": "button",
                    "action_id": "stop",
                    "style": "danger",
                    "text": {"type": "plain_text", "text": "Stop"},
                    "value": self.session_id,
                }]
            }));
        }
        (text, Value::Array(blocks))
    }
}

/// Slack's three control characters in text.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Edits at most once per interval: the first change goes out at once, later ones wait for
/// the interval to pass and go out together.
#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    dirty: bool,
}

impl Throttle {
    /// A throttle of one edit per `interval`.
    pub fn new(interval: Duration) -> Throttle {
        Throttle {
            interval,
            last: None,
            dirty: false,
        }
    }

    /// Something changed.
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// When the pending change may go out (`None`: nothing pending).
    pub fn due(&self) -> Option<Instant> {
        if !self.dirty {
            return None;
        }
        Some(match self.last {
            Some(at) => at + self.interval,
            None => Instant::now(),
        })
    }

    /// The change went out at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.dirty = false;
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hangar_protocol::session::Author;

    fn bob() -> Author {
        Author {
            user_id: Some(2),
            login: "bob".into(),
            share_id: None,
        }
    }

    #[test]
    fn a_prompt_shows_its_work_then_its_summary() {
        let mut p = Progress::new("ses-1", "acme/app", "http://h/sessions/ses-1");
        assert_eq!(
            p.apply(&EventBody::PromptStarted {
                prompt_id: 1,
                author: bob()
            }),
            Shown::Progress
        );
        p.apply(&EventBody::ToolStarted {
            prompt_id: 1,
            call_id: "c1".into(),
            tool: "shell".into(),
            input: json!({}),
        });
        p.apply(&EventBody::ModelDelta {
            prompt_id: 1,
            text: "Fixed the <footer>.".into(),
        });
        let (text, blocks) = p.render();
        assert!(
            text.contains("prompt by bob · 1 tool call (last: shell)"),
            "{text}"
        );
        assert!(text.contains("> Fixed the &lt;footer&gt;."), "{text}");
        assert_eq!(blocks[1]["elements"][0]["action_id"], "stop");
        let shown = p.apply(&EventBody::PromptFinished {
            prompt_id: 1,
            outcome: PromptOutcome::Done,
            error: None,
        });
        assert_eq!(
            shown,
            Shown::Post(":white_check_mark: Done (asked by bob).\nFixed the <footer>.".into())
        );
        let (text, blocks) = p.render();
        assert!(text.contains("Idle after 1 prompt"), "{text}");
        assert_eq!(
            blocks.as_array().unwrap().len(),
            1,
            "no Stop button when idle"
        );
    }

    #[test]
    fn failures_stops_and_pull_requests_are_posted() {
        let mut p = Progress::new("ses-1", "acme/app", "u");
        p.apply(&EventBody::PromptStarted {
            prompt_id: 1,
            author: bob(),
        });
        assert_eq!(
            p.apply(&EventBody::PromptFinished {
                prompt_id: 1,
                outcome: PromptOutcome::Stopped,
                error: None
            }),
            Shown::Post(":octagonal_sign: Stopped (asked by bob).".into())
        );
        assert_eq!(
            p.apply(&EventBody::PrOpened {
                number: 3,
                url: "https://gh/pr/3".into(),
                title: "Fix".into()
            }),
            Shown::Post(":link: Pull request opened: <https://gh/pr/3|Fix>".into())
        );
        assert!(p.render().0.contains("Pull request: https://gh/pr/3"));
        assert_eq!(
            p.apply(&EventBody::GitPushed {
                branch: "hangar/ses-1".into(),
                commit: "0123456789abcdef".into()
            }),
            Shown::Progress
        );
        assert!(
            p.render()
                .0
                .contains("Branch `hangar/ses-1` pushed (0123456)")
        );
        assert_eq!(
            p.apply(&EventBody::GitPushFailed {
                branch: "hangar/ses-1".into(),
                reason: "rejected <non-fast-forward>".into()
            }),
            Shown::Post(
                ":warning: Pushing `hangar/ses-1` failed: rejected &lt;non-fast-forward&gt;".into()
            )
        );
    }

    #[test]
    fn the_throttle_sends_the_first_change_at_once_and_batches_the_rest() {
        let mut t = Throttle::new(Duration::from_secs(2));
        assert_eq!(t.due(), None);
        t.touch();
        let first = t.due().unwrap();
        assert!(first <= Instant::now());
        t.sent(first);
        t.touch();
        t.touch();
        assert_eq!(t.due(), Some(first + Duration::from_secs(2)));
    }
}
