//! What drives a prompt: the [`Executor`] trait, and [`ScriptedExecutor`], which stands in
//! for the agent runtime (a later crate) in tests, benchmarks and until that runtime lands.
//!
//! An executor's run is a future the session's actor spawns as its own task; `stop` aborts
//! that task, so a run is cancelled at its next `.await` and must keep nothing it would
//! need to clean up beyond what drop does.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hangar_protocol::session::{Author, EventBody, OutputStream, Prompt};
use tokio::sync::mpsc;

use crate::actor::Command;

/// A boxed, sendable future: what [`Executor::run`] returns.
pub type RunFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Drives prompts. `run` returns the work for one prompt; `Err` is a failure reason shown
/// to the session's participants.
pub trait Executor: Send + Sync + 'static {
    /// The work for one prompt, emitting events through `run.events`.
    fn run(&self, run: PromptRun) -> RunFuture;

    /// `author` is typing in the session (a WebSocket `typing` message): a chance to warm
    /// up (claim a sandbox, fetch the base branch) before the prompt arrives. Called on the
    /// session's actor, so it must return at once; spawn any work. Does nothing by default.
    fn typing(&self, session_id: &str, author: &Author) {
        let _ = (session_id, author);
    }
}

/// One prompt to drive.
pub struct PromptRun {
    /// The session.
    pub session_id: String,
    /// The prompt (its author, its text).
    pub prompt: Prompt,
    /// Where the run's events go.
    pub events: EventSink,
}

/// The run's way to record events in its session's log. Emitting waits when the session is
/// busy (the channel is bounded), so a fast executor cannot outrun the log.
#[derive(Clone)]
pub struct EventSink {
    pub(crate) prompt_id: i64,
    pub(crate) tx: mpsc::Sender<Command>,
}

/// The session is gone (unloaded or the server is stopping).
#[derive(Debug, thiserror::Error)]
#[error("the session no longer accepts events")]
pub struct SinkClosed;

impl EventSink {
    /// Records an event of this run.
    pub async fn emit(&self, body: EventBody) -> Result<(), SinkClosed> {
        self.tx
            .send(Command::Emit {
                prompt_id: self.prompt_id,
                body,
            })
            .await
            .map_err(|_| SinkClosed)
    }
}

/// A stand-in agent: answers every prompt with a scripted stream of `model.delta` and tool
/// events, with a pause between them. Words in the prompt change the script:
/// `deltas=N` (model deltas, default 3), `tools=N` (tool calls, default 1), `delay_ms=N`
/// (the pause, default the executor's), `fail` (end with a failure).
#[derive(Clone, Debug)]
pub struct ScriptedExecutor {
    /// The pause between events when the prompt names none.
    pub delay: Duration,
}

impl Default for ScriptedExecutor {
    fn default() -> Self {
        ScriptedExecutor {
            delay: Duration::from_millis(20),
        }
    }
}

/// What a scripted run will do, read from the prompt's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// Model deltas.
    pub deltas: u32,
    /// Tool calls.
    pub tools: u32,
    /// Pause between events.
    pub delay: Duration,
    /// End with a failure.
    pub fail: bool,
}

impl Script {
    /// The script a prompt's text asks for.
    pub fn parse(text: &str, default_delay: Duration) -> Script {
        let mut s = Script {
            deltas: 3,
            tools: 1,
            delay: default_delay,
            fail: false,
        };
        for word in text.split_whitespace() {
            let (k, v) = word.split_once('=').unwrap_or((word, ""));
            let n = v.parse::<u64>().ok();
            match (k, n) {
                ("deltas", Some(n)) => s.deltas = n.min(1_000_000) as u32,
                ("tools", Some(n)) => s.tools = n.min(10_000) as u32,
                ("delay_ms", Some(n)) => s.delay = Duration::from_millis(n.min(60_000)),
                ("fail", _) => s.fail = true,
                _ => {}
            }
        }
        s
    }
}

impl Executor for ScriptedExecutor {
    fn run(&self, run: PromptRun) -> RunFuture {
        let script = Script::parse(&run.prompt.text, self.delay);
        Box::pin(async move {
            let id = run.prompt.id;
            let pause = || async {
                if !script.delay.is_zero() {
                    tokio::time::sleep(script.delay).await;
                }
            };
            let sink = &run.events;
            let closed = |_| "the session went away".to_string();
            for i in 0..script.deltas {
                pause().await;
                sink.emit(EventBody::ModelDelta {
                    prompt_id: id,
                    text: format!("part {i} of the answer to prompt {id}. "),
                })
                .await
                .map_err(closed)?;
            }
            for t in 0..script.tools {
                let call_id = format!("p{id}-c{t}");
                pause().await;
                sink.emit(EventBody::ToolStarted {
                    prompt_id: id,
                    call_id: call_id.clone(),
                    tool: "shell".into(),
                    input: serde_json::json!({"command": "echo working"}),
                })
                .await
                .map_err(closed)?;
                pause().await;
                sink.emit(EventBody::ToolOutput {
                    call_id: call_id.clone(),
                    stream: OutputStream::Stdout,
                    text: "working\n".into(),
                })
                .await
                .map_err(closed)?;
                sink.emit(EventBody::ToolFinished {
                    call_id,
                    ok: true,
                    exit_code: Some(0),
                })
                .await
                .map_err(closed)?;
            }
            if script.fail {
                return Err("the script asked to fail".into());
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_read_their_words() {
        let d = Duration::from_millis(5);
        assert_eq!(
            Script::parse("just do it", d),
            Script {
                deltas: 3,
                tools: 1,
                delay: d,
                fail: false
            }
        );
        assert_eq!(
            Script::parse("deltas=500 tools=0 delay_ms=0 fail deltas=x", d),
            Script {
                deltas: 500,
                tools: 0,
                delay: Duration::ZERO,
                fail: true
            }
        );
    }
}
