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

    /// Prompt events: `{"type": "prompt.started", "prompt": …}` before the first model
    /// request and `{"type": "prompt.finished", "outcome": …}` after the last; observe only.
    async fn on_event(&self, _event: &Value) {}
}

/// Built-in: puts the repository's instructions for agents (`AGENTS.md`, and `CLAUDE.md`
/// where present) and a few facts (branch, last commit, top-level entries) into the system
/// prompt, read fresh from the sandbox at each prompt.
pub struct RepoContext {
    envd: hangar_envd_client::EnvdClient,
    workdir: String,
    /// A read started ahead by [`RepoContext::prefetch`], used by the first `context` call.
    ahead: std::sync::Mutex<Option<tokio::task::JoinHandle<String>>>,
}

/// Most bytes of each instructions file put into the prompt.
const INSTRUCTIONS_LIMIT: u64 = 32 * 1024;

impl RepoContext {
    /// Context of the repository checked out at `workdir` in the sandbox behind `envd`.
    pub fn new(envd: hangar_envd_client::EnvdClient, workdir: impl Into<String>) -> RepoContext {
        RepoContext {
            envd,
            workdir: workdir.into(),
            ahead: std::sync::Mutex::new(None),
        }
    }

    /// As [`RepoContext::new`], with the read started now (on the current Tokio runtime),
    /// so that its round trips to envd overlap the rest of a prompt's set-up instead of
    /// delaying the first model request.
    pub fn prefetch(
        envd: hangar_envd_client::EnvdClient,
        workdir: impl Into<String>,
    ) -> RepoContext {
        let this = RepoContext::new(envd, workdir);
        let (envd, workdir) = (this.envd.clone(), this.workdir.clone());
        let read = tokio::spawn(async move { read_context(&envd, &workdir).await });
        *this.ahead.lock().unwrap_or_else(|p| p.into_inner()) = Some(read);
        this
    }
}

impl Drop for RepoContext {
    fn drop(&mut self) {
        if let Some(read) = self
            .ahead
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            read.abort();
        }
    }
}

// File reads only, side by side: this runs before the first model request of every
// prompt, and starting git (or any process) in the sandbox would cost milliseconds.
async fn read_context(envd: &hangar_envd_client::EnvdClient, workdir: &str) -> String {
    let root = workdir.trim_end_matches('/');
    let read = |name: String| async move {
        envd.read_file(&format!("{root}/{name}"), 0, Some(INSTRUCTIONS_LIMIT))
            .await
            .ok()
    };
    let (head, entries, agents, claude) = tokio::join!(
        read(".git/HEAD".into()),
        envd.list_dir(root),
        read("AGENTS.md".into()),
        read("CLAUDE.md".into()),
    );
    let mut out = format!("The repository is checked out at {root}.");
    let head = head.map(|h| String::from_utf8_lossy(&h.data).trim().to_string());
    match head.as_deref().map(|h| h.strip_prefix("ref: refs/heads/")) {
        Some(Some(branch)) => {
            let commit = read(format!(".git/refs/heads/{branch}")).await;
            let commit = commit.map(|c| {
                String::from_utf8_lossy(&c.data)
                    .trim()
                    .chars()
                    .take(12)
                    .collect::<String>()
            });
            match commit {
                Some(c) => out.push_str(&format!(" Branch {branch}, at commit {c}.")),
                None => out.push_str(&format!(" Branch {branch}.")),
            }
        }
        Some(None) => {
            let detached: String = head.unwrap_or_default().chars().take(12).collect();
            out.push_str(&format!(" Detached at commit {detached}."));
        }
        None => {}
    }
    if let Ok(entries) = entries {
        let names: Vec<&str> = entries.iter().take(50).map(|e| e.name.as_str()).collect();
        out.push_str(&format!(" Top-level entries: {}.", names.join(" ")));
    }
    for (name, data) in [("AGENTS.md", agents), ("CLAUDE.md", claude)] {
        if let Some(data) = data {
            out.push_str(&format!(
                "\n\nInstructions from the repository's {name}:\n{}",
                String::from_utf8_lossy(&data.data)
            ));
            if !data.eof {
                out.push_str("\n[truncated]");
            }
        }
    }
    out
}

#[async_trait]
impl Plugin for RepoContext {
    fn name(&self) -> &str {
        "repo-context"
    }

    async fn context(&self) -> Option<String> {
        let ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(read) = ahead
            && let Ok(text) = read.await
        {
            return Some(text);
        }
        Some(read_context(&self.envd, &self.workdir).await)
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

impl SyncState {
    /// Waits until the sync behind `state` has ended: `Ok` when synced, else why not (a
    /// sync whose sender went away without an answer counts as failed).
    pub async fn settled(
        state: &mut tokio::sync::watch::Receiver<SyncState>,
    ) -> Result<(), String> {
        match state
            .wait_for(|s| *s != SyncState::Syncing)
            .await
            .as_deref()
        {
            Ok(SyncState::Synced) => Ok(()),
            Ok(SyncState::Failed(why)) => Err(why.clone()),
            Ok(SyncState::Syncing) | Err(_) => Err("the sync ended without a result".into()),
        }
    }
}

/// Built-in `tool.execute.before`: reads, listing and search run at once against the
/// image's checkout; writes, edits and shell commands not declared read-only wait until
/// the checkout is synced to the latest base commit, and are refused if the sync failed.
/// So the agent starts researching while the sync runs, and never edits a stale tree.
pub struct SyncGate {
    state: tokio::sync::watch::Receiver<SyncState>,
    /// Reads wait too: there is no checkout to read before the sync makes one.
    reads_wait: bool,
}

impl SyncGate {
    /// A gate following `state` (its sender is the sync's).
    pub fn new(state: tokio::sync::watch::Receiver<SyncState>) -> SyncGate {
        SyncGate {
            state,
            reads_wait: false,
        }
    }

    /// A gate that holds every tool, reads included, until the sync ends: for a sandbox
    /// whose image has no checkout, so the sync makes the first one.
    pub fn for_everything(state: tokio::sync::watch::Receiver<SyncState>) -> SyncGate {
        SyncGate {
            state,
            reads_wait: true,
        }
    }
}

#[async_trait]
impl Plugin for SyncGate {
    fn name(&self) -> &str {
        "sync-gate"
    }

    async fn before_tool(&self, call: &ToolCall) -> Decision {
        if !self.reads_wait && crate::tools::is_read_only(&call.name, &call.input) {
            return Decision::Allow;
        }
        let mut state = self.state.clone();
        match SyncState::settled(&mut state).await {
            Ok(()) => Decision::Allow,
            Err(why) => Decision::Block(format!(
                "the checkout could not be synced to the latest base commit ({why}); changes are refused until it is"
            )),
        }
    }
}
