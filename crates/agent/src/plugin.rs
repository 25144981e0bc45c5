//! Plugins: hooks around every tool call (`tool.execute.before`, `tool.execute.after`) and
//! context injection into the system prompt. Built-in plugins implement [`Plugin`] in Rust.

use async_trait::async_trait;
use serde_json::Value;

use crate::tools::ToolOutcome;

/// A tool call as plugins see it.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// The call's id.
    pub id: String,
    /// The tool.
    pub name: String,
    /// Its arguments.
    pub input: Value,
}

/// What `tool.execute.before` decides.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Run it as it is.
    Allow,
    /// Do not run it; the model is told this reason.
    Block(String),
    /// Run it with these arguments instead.
    Rewrite(Value),
}

/// A tool added by the embedding service rather than run in the sandbox (e.g. starting
/// sub-sessions). It goes through the same plugin hooks as the built-in tools.
#[async_trait]
pub trait ExtraTool: Send + Sync {
    /// What the model is told about it.
    fn spec(&self) -> crate::model::ToolSpec;

    /// True when it changes nothing (it may run beside other reads).
    fn read_only(&self) -> bool {
        false
    }

    /// Runs it.
    async fn run(&self, input: &Value) -> ToolOutcome;
}

/// A plugin. Every hook has a default that does nothing.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// Its name, shown when it blocks a call.
    fn name(&self) -> &str;

    /// `tool.execute.before`: allow, block or rewrite a call. It may also wait (e.g. until
    /// the checkout is synced) before answering.
    async fn before_tool(&self, _call: &ToolCall) -> Decision {
        Decision::Allow
    }

    /// `tool.execute.after`: inspect or amend a result.
    async fn after_tool(&self, _call: &ToolCall, _outcome: &mut ToolOutcome) {}

    /// Text added to the system prompt.
    async fn context(&self) -> Option<String> {
        None
    }
}

/// Built-in: puts the repository's instructions for agents (`AGENTS.md`, and `CLAUDE.md`
/// where present) and a few facts (branch, last commit, top-level entries) into the system
/// prompt, read fresh from the sandbox at each prompt.
pub struct RepoContext {
    envd: hangar_envd_client::EnvdClient,
    workdir: String,
}

/// Most bytes of each instructions file put into the prompt.
const INSTRUCTIONS_LIMIT: u64 = 32 * 1024;

impl RepoContext {
    /// Context of the repository checked out at `workdir` in the sandbox behind `envd`.
    pub fn new(envd: hangar_envd_client::EnvdClient, workdir: impl Into<String>) -> RepoContext {
        RepoContext {
            envd,
            workdir: workdir.into(),
        }
    }
}

#[async_trait]
impl Plugin for RepoContext {
    fn name(&self) -> &str {
        "repo-context"
    }

    async fn context(&self) -> Option<String> {
        let root = self.workdir.trim_end_matches('/');
        let mut out = format!("The repository is checked out at {root}.");
        let facts = self
            .envd
            .output(
                hangar_protocol::envd::ExecRequest {
                    argv: vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        "git -C \"$1\" rev-parse --abbrev-ref HEAD 2>/dev/null; git -C \"$1\" log -1 --format='%h %s' 2>/dev/null; ls -A \"$1\" | head -n 50 | tr '\\n' ' '"
                            .into(),
                        "sh".into(),
                        root.to_string(),
                    ],
                    timeout_ms: Some(10_000),
                    ..Default::default()
                },
                16 * 1024,
            )
            .await;
        if let Ok(facts) = facts {
            let text = String::from_utf8_lossy(&facts.stdout);
            let mut lines = text.lines();
            if let (Some(branch), Some(commit)) = (lines.next(), lines.next()) {
                out.push_str(&format!(" Branch {branch}, last commit {commit}."));
            }
            if let Some(entries) = lines.next() {
                out.push_str(&format!(" Top-level entries: {}.", entries.trim()));
            }
        }
        for name in ["AGENTS.md", "CLAUDE.md"] {
            let path = format!("{root}/{name}");
            if let Ok(data) = self
                .envd
                .read_file(&path, 0, Some(INSTRUCTIONS_LIMIT))
                .await
            {
                out.push_str(&format!(
                    "\n\nInstructions from the repository's {name}:\n{}",
                    String::from_utf8_lossy(&data.data)
                ));
                if !data.eof {
                    out.push_str("\n[truncated]");
                }
            }
        }
        Some(out)
    }
}

/// Where the sandbox's checkout is relative to the latest base branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// Fetching and updating; the checkout is the image's (slightly older) commit.
    Syncing,
    /// Up to date.
    Synced,
    /// The sync failed, with why.
    Failed(String),
}

/// Built-in `tool.execute.before`: reads, listing and search run at once against the
/// image's checkout; writes, edits and shell commands not declared read-only wait until
/// the checkout is synced to the latest base commit, and are refused if the sync failed.
/// So the agent starts researching while the sync runs, and never edits a stale tree.
pub struct SyncGate {
    state: tokio::sync::watch::Receiver<SyncState>,
}

impl SyncGate {
    /// A gate following `state` (its sender is the sync's).
    pub fn new(state: tokio::sync::watch::Receiver<SyncState>) -> SyncGate {
        SyncGate { state }
    }
}

#[async_trait]
impl Plugin for SyncGate {
    fn name(&self) -> &str {
        "sync-gate"
    }

    async fn before_tool(&self, call: &ToolCall) -> Decision {
        if crate::tools::is_read_only(&call.name, &call.input) {
            return Decision::Allow;
        }
        let mut state = self.state.clone();
        let settled = state.wait_for(|s| *s != SyncState::Syncing).await;
        match settled.as_deref() {
            Ok(SyncState::Synced) => Decision::Allow,
            Ok(SyncState::Failed(why)) => Decision::Block(format!(
                "the checkout could not be synced to the latest base commit ({why}); changes are refused until it is"
            )),
            // The sync's sender is gone without an answer.
            Ok(SyncState::Syncing) | Err(_) => Decision::Block(
                "the checkout's sync ended without a result; changes are refused".into(),
            ),
        }
    }
}
