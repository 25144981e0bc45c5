//! Runs session prompts with the agent: [`AgentExecutor`] implements the session crate's
//! `Executor`. Each session gets a sandbox on its first prompt (kept for its next ones) and
//! a conversation that lives across prompts; the agent's events go into the session's log.
//!
//! This crate is the glue between `hangar-session` (which knows nothing of agents or
//! sandboxes) and `hangar-agent` (which knows nothing of sessions). Stopping a prompt
//! aborts the run; a drop guard then cancels the agent, which ends its model stream and
//! kills its running command, and every pending tool call gets a result, so the
//! conversation stays valid for the next prompt.

mod indexed;
mod repo_plugins;
mod subsessions;
mod worktree;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use hangar_agent::{
    Agent, AgentEvent, Message, Plugin, Provider, RepoContext, SyncGate, SyncState, Tools,
};
use hangar_images::Snapshots;
use hangar_pool::{Pool, PoolError};
use hangar_protocol::session::{Author, EventBody, OutputStream};
use hangar_sandbox::{Runtime, SandboxSpec};
use hangar_session::{Executor, PromptRun, RunFuture, Sessions};
pub use indexed::IndexedRuntime;
pub use repo_plugins::PluginsForRepo;
pub use subsessions::{Family, MAX_CHILDREN, MAX_DEPTH, SessionReport, SpawnSession};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
pub use worktree::{FileDiff, GitSyncer, Identity, SessionDiff, Worktrees, branch_of};

/// The executor of a deployment with no model configured: every prompt fails, saying how
/// to configure one.
pub struct NoModel;

impl Executor for NoModel {
    fn run(&self, _run: PromptRun) -> RunFuture {
        Box::pin(async {
            Err(
                "no model is configured: add a [model] section to hangar.toml \
                 (provider, base_url, model, api_key_env) and restart"
                    .to_string(),
            )
        })
    }
}

/// The agent's standing instructions.
pub const SYSTEM_PROMPT: &str = "You are a coding agent working in an isolated sandbox on a \
checkout of the user's repository. Read before you change; keep changes small and focused; \
run the project's tests before you say you are done; say plainly what you changed and what \
you could not do.";

/// One session's agent state.
#[derive(Default)]
struct SessionState {
    sandbox: Option<String>,
    conversation: Arc<Mutex<Vec<Message>>>,
    /// Authors of prompts whose changes are not committed yet (a stopped prompt's work is
    /// committed with the next one, crediting both).
    uncommitted_authors: Vec<Identity>,
    /// The repository's plugins, running in this sandbox.
    repo_plugins: Option<(String, Vec<Arc<dyn Plugin>>)>,
    /// Held while a snapshot of the session is taken and recorded: one at a time, so an
    /// older one never replaces a newer one.
    snapshotting: Arc<Mutex<()>>,
}

struct Inner {
    runtime: Arc<dyn Runtime>,
    provider: Provider,
    spec: SandboxSpec,
    workdir: String,
    max_tokens: std::sync::atomic::AtomicU32,
    context_limit: std::sync::atomic::AtomicU64,
    sessions: Mutex<HashMap<String, SessionState>>,
    /// The session service, for sub-sessions (set once it exists: it is built with this
    /// executor).
    service: OnceLock<Sessions>,
    /// Where session sandboxes come from, when there is a warm pool.
    pool: OnceLock<Pool>,
    /// Where conversations are kept (`<id>.conversation.json`), so they outlive the server.
    conversations: OnceLock<PathBuf>,
    /// Who spawned whom (sub-session limits).
    family: Arc<Family>,
    /// Plugins of the deployment, shared by every session's agent.
    plugins: OnceLock<Vec<Arc<dyn Plugin>>>,
    /// Git for registered repositories: sync, commit as the author, push.
    worktrees: OnceLock<Arc<Worktrees>>,
    /// A repository's current image, when it has one (else sessions use `spec`).
    images: OnceLock<SpecForRepo>,
    /// A repository's own plugins, from its current image's recipe.
    repo_plugins: OnceLock<PluginsForRepo>,
    /// Live snapshots after each prompt, and restoring from them.
    snapshots: OnceLock<Snapshots>,
}

/// The sandbox spec of a repository's current image, `None` when it has none.
pub type SpecForRepo = Arc<dyn Fn(&str) -> Option<SandboxSpec> + Send + Sync>;

/// Drives prompts with the agent in a sandbox per session.
#[derive(Clone)]
pub struct AgentExecutor {
    inner: Arc<Inner>,
}

impl AgentExecutor {
    /// An executor creating session sandboxes from `spec` through `runtime`, with the
    /// repository at `workdir` inside them.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        provider: Provider,
        spec: SandboxSpec,
        workdir: impl Into<String>,
    ) -> AgentExecutor {
        AgentExecutor {
            inner: Arc::new(Inner {
                runtime,
                provider,
                spec,
                workdir: workdir.into(),
                max_tokens: 8192.into(),
                context_limit: 200_000.into(),
                sessions: Mutex::default(),
                service: OnceLock::new(),
                pool: OnceLock::new(),
                conversations: OnceLock::new(),
                plugins: OnceLock::new(),
                worktrees: OnceLock::new(),
                images: OnceLock::new(),
                repo_plugins: OnceLock::new(),
                snapshots: OnceLock::new(),
                family: Arc::default(),
            }),
        }
    }

    /// Sets the model's limits (for every clone of this executor).
    pub fn with_limits(self, max_tokens: u32, context_limit: u64) -> AgentExecutor {
        use std::sync::atomic::Ordering::Relaxed;
        self.inner.max_tokens.store(max_tokens, Relaxed);
        self.inner.context_limit.store(context_limit, Relaxed);
        self
    }

    /// Lets agents start and follow sessions of their own (`spawn_session`,
    /// `session_status`, `session_result`).
    pub fn enable_sub_sessions(&self, sessions: Sessions) {
        let _ = self.inner.service.set(sessions);
    }

    /// Takes session sandboxes from `pool` (a reservation made while the author typed, or
    /// a warm sandbox of the session's repository) instead of starting them.
    pub fn use_pool(&self, pool: Pool) {
        let _ = self.inner.pool.set(pool);
    }

    /// Adds the deployment's plugins to every session's agent (after the built-in ones).
    pub fn use_plugins(&self, plugins: Vec<Arc<dyn Plugin>>) {
        let _ = self.inner.plugins.set(plugins);
    }

    /// Starts a repository's first sessions from its current image, when `images` knows
    /// one (later images reach the pool through `Pool::set_image`).
    pub fn use_images(&self, images: SpecForRepo) {
        let _ = self.inner.images.set(images);
    }

    /// Runs each repository's own plugins (its recipe's `[[plugins]]`) inside its
    /// sessions' sandboxes, before the deployment's plugins, which so see every call last.
    pub fn use_repo_plugins(&self, plugins: PluginsForRepo) {
        let _ = self.inner.repo_plugins.set(plugins);
    }

    /// Syncs session checkouts of registered repositories and, after each prompt, commits
    /// the agent's changes as the prompt's author and pushes the session's branch.
    pub fn use_git(&self, worktrees: Arc<Worktrees>) {
        let _ = self.inner.worktrees.set(worktrees);
    }

    /// After each prompt, takes a live snapshot of the session's sandbox in the background
    /// (`snapshot.taken`, or `snapshot.failed` without failing the prompt) and records it
    /// as the session's latest in the index, releasing the one before; a session whose
    /// sandbox is gone continues in a sandbox restored from it (`sandbox.restored`).
    /// Needs the session service ([`AgentExecutor::enable_sub_sessions`]) to record them.
    pub fn use_snapshots(&self, snapshots: Snapshots) {
        let _ = self.inner.snapshots.set(snapshots);
    }

    /// Keeps each session's conversation in `dir` (written after every prompt, read when a
    /// session first runs after a restart).
    pub fn persist_conversations(&self, dir: PathBuf) {
        let _ = self.inner.conversations.set(dir);
    }

    /// Makes `sandbox` the sandbox of `session` (one prepared elsewhere, e.g. restored from
    /// a snapshot or holding a checkout).
    pub async fn adopt_sandbox(&self, session: &str, sandbox: &str) {
        let mut sessions = self.inner.sessions.lock().await;
        self.inner.state(&mut sessions, session).sandbox = Some(sandbox.to_string());
    }

    /// After a restart: every session whose sandbox is still running (the index says which
    /// sandbox serves which session) gets it back, its working tree as it was, so that its
    /// next prompt neither starts nor restores another. Sandboxes the index lists as serving
    /// a session that no longer exists, or that a newer sandbox of the same session replaced,
    /// are destroyed, and so are warm-pool sandboxes indexed before `started_at_ms` (this
    /// process's start: their pool is gone); entries of sandboxes that are gone are closed.
    /// Returns the `(session, sandbox)` pairs taken back.
    pub async fn readopt_sandboxes(
        &self,
        started_at_ms: i64,
    ) -> Result<Vec<(String, String)>, String> {
        let Some(service) = self.inner.service.get() else {
            return Ok(Vec::new());
        };
        let store = service.store();
        // Newest first: a session's newest running sandbox is the one it was using.
        let records = store
            .sandbox_records(false, usize::MAX >> 1)
            .map_err(|e| e.to_string())?;
        let mut sessions = self.inner.sessions.lock().await;
        let mut adopted = Vec::new();
        for record in records {
            // The session a live sandbox may go back to; `None` for an orphaned pool one.
            let session = match (record.purpose.as_str(), record.session_id) {
                ("session", Some(session)) => Some(session),
                ("pool", _) if record.created_at_ms < started_at_ms => None,
                _ => continue,
            };
            let running = matches!(
                self.inner.runtime.get(&record.id).await.map(|s| s.status),
                Ok(hangar_sandbox::Status::Running)
            );
            let taker = session.filter(|s| {
                running
                    && store.session(s).is_ok()
                    && sessions.get(s).is_none_or(|state| state.sandbox.is_none())
            });
            match taker {
                Some(session) => {
                    self.inner.state(&mut sessions, &session).sandbox = Some(record.id.clone());
                    adopted.push((session, record.id));
                }
                // Also closes the index entry of one already gone.
                None => {
                    if let Err(e) = self.inner.runtime.destroy(&record.id).await
                        && !matches!(e, hangar_sandbox::SandboxError::NotFound(_))
                    {
                        tracing::warn!(sandbox = %record.id, "could not remove a stale sandbox: {e}");
                    }
                }
            }
        }
        Ok(adopted)
    }

    /// The session that spawned `session`, if an agent did.
    pub fn parent_of(&self, session: &str) -> Option<String> {
        Family::parent_of(self.inner.service.get()?.store(), session)
    }

    /// The sandbox of `session`, if it has one.
    pub async fn sandbox_of(&self, session: &str) -> Option<String> {
        self.inner
            .sessions
            .lock()
            .await
            .get(session)
            .and_then(|s| s.sandbox.clone())
    }
}

impl Inner {
    /// The session's sandbox (taken on first use) and conversation, with the sync state of
    /// a sandbox that has just been taken. A session whose sandbox is gone (it died, or the
    /// server restarted) continues from its latest snapshot when it has one, else from the
    /// image with its branch restored.
    async fn session(&self, id: &str, author: &Author) -> Result<SessionSandbox, String> {
        let mut sessions = self.sessions.lock().await;
        let state = self.state(&mut sessions, id);
        let conversation = state.conversation.clone();
        let mut replaced = None;
        if let Some(sb) = &state.sandbox {
            let why = match self.runtime.get(sb).await.map(|s| s.status) {
                Ok(hangar_sandbox::Status::Running) => {
                    let envd = self.runtime.envd(sb).await.map_err(|e| e.to_string())?;
                    return Ok(SessionSandbox {
                        sandbox: sb.clone(),
                        envd,
                        new: false,
                        conversation,
                        sync: None,
                        restored: None,
                    });
                }
                Ok(hangar_sandbox::Status::Dead { reason, .. }) => {
                    format!("the session's sandbox died ({reason})")
                }
                Ok(status) => format!("the session's sandbox is {status:?}").to_lowercase(),
                Err(e) => format!("the session's sandbox is gone ({e})"),
            };
            // It is replaced below; nothing of it is reused.
            tracing::warn!(session = %id, sandbox = %sb, "{why}; starting another");
            let _ = self.runtime.destroy(sb).await;
            replaced = Some(why);
        }
        let (sandbox, upstream, restored) = match self.sandbox_from_snapshot(id).await {
            Ok(Some((sandbox, image))) => {
                let restored = SandboxRestored {
                    reason: replaced.unwrap_or_else(|| "the server restarted".into()),
                    snapshot: Some(image),
                };
                (sandbox, None, Some(restored))
            }
            outcome => {
                let reason = match (replaced, outcome) {
                    (Some(why), Err(e)) => Some(format!("{why}; its snapshot: {e}")),
                    (None, Err(e)) => Some(format!("the session's snapshot: {e}")),
                    (why, _) => why,
                };
                let (sandbox, sync) = self.take_sandbox(id, author).await?;
                let restored = reason.map(|reason| SandboxRestored {
                    reason,
                    snapshot: None,
                });
                (sandbox, sync, restored)
            }
        };
        if let Some(service) = self.service.get() {
            // Off the prompt's path: the index only says whom the sandbox serves.
            let (store, sandbox, id, repo) = (
                service.store().clone(),
                sandbox.clone(),
                id.to_string(),
                self.repo_of(id),
            );
            tokio::task::spawn_blocking(move || {
                if let Err(e) = store.sandbox_serves_session(&sandbox, &id, repo.as_deref()) {
                    tracing::warn!(%sandbox, "could not index the sandbox's session: {e}");
                }
            });
        }
        let envd = self
            .runtime
            .envd(&sandbox)
            .await
            .map_err(|e| e.to_string())?;
        // A session that already committed work continues on its branch in the new
        // sandbox (after a restart, or when its sandbox died); one restored from a
        // snapshot has it, unless a later commit is missing from an older snapshot.
        let from_snapshot = restored.as_ref().is_some_and(|r| r.snapshot.is_some());
        let sync = match (self.worktrees.get(), self.repo_of(id), upstream) {
            (Some(worktrees), Some(repo), upstream) if upstream.is_some() || from_snapshot => {
                let (tx, rx) = watch::channel(SyncState::Syncing);
                let (worktrees, envd, id) = (worktrees.clone(), envd.clone(), id.to_string());
                tokio::spawn(async move {
                    let settled = match upstream {
                        Some(mut upstream) => SyncState::settled(&mut upstream).await,
                        None => Ok(()),
                    };
                    let state = match settled {
                        Ok(()) => match worktrees.restore_branch(&repo, &envd, &id).await {
                            Ok(()) => SyncState::Synced,
                            Err(why) => SyncState::Failed(why),
                        },
                        Err(why) => SyncState::Failed(why),
                    };
                    let _ = tx.send(state);
                });
                Some(rx)
            }
            (_, _, sync) => sync,
        };
        state.sandbox = Some(sandbox.clone());
        Ok(SessionSandbox {
            sandbox,
            envd,
            new: true,
            conversation,
            sync,
            restored,
        })
    }

    /// A new sandbox from the session's latest snapshot, with the snapshot's id; `None`
    /// when it has none (or snapshots are off).
    async fn sandbox_from_snapshot(&self, id: &str) -> Result<Option<(String, String)>, String> {
        let (Some(snapshots), Some(service)) = (self.snapshots.get(), self.service.get()) else {
            return Ok(None);
        };
        let Some(image) = service
            .store()
            .session_snapshot(id)
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let base = match self.repo_of(id) {
            Some(repo) => self.spec_for(&repo),
            None => self.spec.clone(),
        };
        // Unpacking a layer the first time reads its whole blob: off the async threads.
        let (s, i) = (snapshots.clone(), image.clone());
        let spec = tokio::task::spawn_blocking(move || s.restore_spec(&i, base))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("could not restore snapshot {image}: {e}"))?;
        let sandbox = self
            .runtime
            .create(spec)
            .await
            .map_err(|e| format!("could not start a sandbox from snapshot {image}: {e}"))?;
        tracing::info!(session = %id, snapshot = %image, sandbox = %sandbox.id, "restored the session's sandbox from its snapshot");
        Ok(Some((sandbox.id, image)))
    }

    /// Takes a live snapshot of the session's sandbox after a prompt, in the background,
    /// records it as the session's latest and releases the one it replaces. The outcome
    /// is an event; a failure never reaches the prompt.
    fn snapshot_after_prompt(self: &Arc<Self>, id: &str, sandbox: &str) {
        let (Some(snapshots), Some(service)) = (self.snapshots.get(), self.service.get()) else {
            return;
        };
        let (snapshots, service) = (snapshots.clone(), service.clone());
        let (inner, id, sandbox) = (self.clone(), id.to_string(), sandbox.to_string());
        tokio::spawn(async move {
            let one_at_a_time = {
                let mut sessions = inner.sessions.lock().await;
                inner.state(&mut sessions, &id).snapshotting.clone()
            };
            let _held = one_at_a_time.lock().await;
            let body = match snapshots.take(&sandbox).await {
                Ok(image) => match service.store().set_session_snapshot(&id, &image.id) {
                    Ok(previous) => {
                        if let Some(previous) = previous
                            && let Err(e) = snapshots.release(&previous)
                        {
                            tracing::warn!(session = %id, "could not release snapshot {previous}: {e}");
                        }
                        EventBody::SnapshotTaken { image: image.id }
                    }
                    Err(e) => {
                        let _ = snapshots.release(&image.id);
                        EventBody::SnapshotFailed {
                            reason: format!("could not record the snapshot: {e}"),
                        }
                    }
                },
                Err(e) => EventBody::SnapshotFailed {
                    reason: e.to_string(),
                },
            };
            if let EventBody::SnapshotFailed { reason } = &body {
                tracing::warn!(session = %id, sandbox = %sandbox, "{reason}");
            }
            if let Err(e) = service.append_event(&id, body).await {
                tracing::warn!(session = %id, "could not log the snapshot: {e}");
            }
        });
    }

    /// The state of session `id`, its conversation loaded from disk the first time.
    fn state<'a>(
        &self,
        sessions: &'a mut HashMap<String, SessionState>,
        id: &str,
    ) -> &'a mut SessionState {
        sessions
            .entry(id.to_string())
            .or_insert_with(|| SessionState {
                sandbox: None,
                conversation: Arc::new(Mutex::new(self.load_conversation(id))),
                uncommitted_authors: Vec::new(),
                repo_plugins: None,
                snapshotting: Arc::default(),
            })
    }

    fn conversation_path(&self, id: &str) -> Option<PathBuf> {
        self.conversations
            .get()
            .map(|d| d.join(format!("{id}.conversation.json")))
    }

    fn load_conversation(&self, id: &str) -> Vec<Message> {
        let Some(path) = self.conversation_path(id) else {
            return Vec::new();
        };
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), "unreadable conversation, starting afresh: {e}");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        }
    }

    /// Writes the conversation atomically (temporary file, then rename).
    fn save_conversation(&self, id: &str, conversation: &[Message]) {
        let Some(path) = self.conversation_path(id) else {
            return;
        };
        let tmp = path.with_extension("json.tmp");
        let result = serde_json::to_vec(conversation)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), "could not save the conversation: {e}");
        }
    }

    /// A sandbox for a session: the author's warm-up reservation, a warm one from the pool,
    /// or a new one.
    async fn take_sandbox(
        &self,
        id: &str,
        author: &Author,
    ) -> Result<(String, Option<watch::Receiver<SyncState>>), String> {
        let started =
            |e: &dyn std::fmt::Display| format!("could not start the session's sandbox: {e}");
        let repo = self.repo_of(id);
        if let (Some(pool), Some(repo)) = (self.pool.get(), repo.clone()) {
            if let Some(claim) = pool.take_reservation(&author.login, &repo).await {
                return Ok((claim.sandbox, Some(claim.sync)));
            }
            let claim = match pool.claim(&repo).await {
                Err(PoolError::UnknownRepo(_)) => {
                    // First session of this repository: it gets its image and a pool.
                    pool.set_image(&repo, self.spec_for(&repo)).await;
                    pool.claim(&repo).await
                }
                other => other,
            }
            .map_err(|e| started(&e))?;
            return Ok((claim.sandbox, Some(claim.sync)));
        }
        let spec = match &repo {
            Some(r) => self.spec_for(r),
            None => self.spec.clone(),
        };
        let sandbox = self.runtime.create(spec).await.map_err(|e| started(&e))?;
        // Without a pool, the sync starts here, as a claim would start it.
        let sync = match (self.worktrees.get(), repo) {
            (Some(worktrees), Some(repo)) => {
                let syncer = Arc::new(GitSyncer {
                    worktrees: worktrees.clone(),
                    runtime: self.runtime.clone(),
                });
                Some(hangar_pool::start_sync(syncer, &repo, &sandbox.id))
            }
            _ => None,
        };
        Ok((sandbox.id, sync))
    }

    /// The repository's plugins for the session, started in `sandbox` on its first prompt
    /// there and kept for the next ones.
    async fn repo_plugins(
        &self,
        session: &str,
        sandbox: &str,
        envd: &hangar_envd_client::EnvdClient,
    ) -> Vec<Arc<dyn Plugin>> {
        let Some(for_repo) = self.repo_plugins.get() else {
            return Vec::new();
        };
        {
            let mut sessions = self.sessions.lock().await;
            if let Some((sb, plugins)) = &self.state(&mut sessions, session).repo_plugins
                && sb == sandbox
            {
                return plugins.clone();
            }
        }
        let configured = self
            .repo_of(session)
            .map(|r| for_repo(&r))
            .unwrap_or_default();
        let started = repo_plugins::start(&configured, envd, &self.workdir).await;
        let mut sessions = self.sessions.lock().await;
        self.state(&mut sessions, session).repo_plugins =
            Some((sandbox.to_string(), started.clone()));
        started
    }

    /// The spec of `repo`'s sessions: its current image, else the default.
    fn spec_for(&self, repo: &str) -> SandboxSpec {
        self.images
            .get()
            .and_then(|f| f(repo))
            .unwrap_or_else(|| self.spec.clone())
    }

    /// The repository of session `id`.
    fn repo_of(&self, id: &str) -> Option<String> {
        self.service
            .get()
            .and_then(|s| s.record(id).ok())
            .map(|r| r.repo)
    }

    /// Commits what the prompt changed as its author (crediting the authors of earlier
    /// uncommitted prompts) and pushes; the outcome goes into the log as git events. A
    /// git failure never fails the prompt: it is reported as an event.
    async fn commit_prompt(&self, run: &PromptRun, envd: &hangar_envd_client::EnvdClient) {
        let (Some(worktrees), Some(service)) = (self.worktrees.get(), self.service.get()) else {
            return;
        };
        let Some(repo) = self.repo_of(&run.session_id) else {
            return;
        };
        let author = worktree::identity_of(service.store(), &run.prompt.author);
        let co_authors = {
            let mut sessions = self.sessions.lock().await;
            let state = self.state(&mut sessions, &run.session_id);
            std::mem::take(&mut state.uncommitted_authors)
        };
        let result = worktrees
            .commit_and_push(
                &repo,
                envd,
                &run.session_id,
                &author,
                &co_authors,
                &run.prompt.text,
            )
            .await;
        let events = match result {
            Ok(outcome) => outcome.events,
            Err(reason) => {
                tracing::warn!(session = %run.session_id, "git: {reason}");
                vec![EventBody::GitPushFailed {
                    branch: branch_of(&run.session_id),
                    reason,
                }]
            }
        };
        for body in events {
            if let Err(e) = run.events.emit(body).await {
                tracing::warn!(session = %run.session_id, "could not log a git event: {e}");
            }
        }
    }
}

/// Aborts a task when dropped (when the prompt's run ends or is aborted).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A session's sandbox and conversation.
struct SessionSandbox {
    sandbox: String,
    envd: hangar_envd_client::EnvdClient,
    /// The session's first prompt in this sandbox.
    new: bool,
    conversation: Arc<Mutex<Vec<Message>>>,
    sync: Option<watch::Receiver<SyncState>>,
    /// Set when the sandbox replaces one that is gone.
    restored: Option<SandboxRestored>,
}

/// Why a session got a new sandbox, and the snapshot it came from.
struct SandboxRestored {
    reason: String,
    snapshot: Option<String>,
}

impl Executor for AgentExecutor {
    /// Predictive warm-up: reserve a sandbox for the author's draft and start its sync,
    /// unless the session already has a sandbox.
    fn typing(&self, session_id: &str, author: &Author) {
        let inner = self.inner.clone();
        let (session_id, login) = (session_id.to_string(), author.login.clone());
        tokio::spawn(async move {
            let (Some(pool), Some(service)) = (inner.pool.get(), inner.service.get()) else {
                return;
            };
            if inner
                .sessions
                .lock()
                .await
                .get(&session_id)
                .is_some_and(|s| s.sandbox.is_some())
            {
                return;
            }
            let Ok(record) = service.record(&session_id) else {
                return;
            };
            let mut result = pool.typing(&login, &record.repo).await;
            if let Err(PoolError::UnknownRepo(_)) = result {
                pool.set_image(&record.repo, inner.spec_for(&record.repo))
                    .await;
                result = pool.typing(&login, &record.repo).await;
            }
            if let Err(e) = result {
                tracing::warn!(session = %session_id, "warm-up failed: {e}");
            }
        });
    }

    fn run(&self, run: PromptRun) -> RunFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            if let Some(pool) = inner.pool.get() {
                // The pool's refills wait until this prompt's first token is likely back.
                pool.hold_off_background();
            }
            let SessionSandbox {
                sandbox,
                envd,
                new,
                conversation,
                sync,
                restored,
            } = inner.session(&run.session_id, &run.prompt.author).await?;
            if let Some(SandboxRestored { reason, snapshot }) = restored {
                run.events
                    .emit(EventBody::SandboxRestored { reason, snapshot })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            if let (Some(_), Some(service)) = (inner.worktrees.get(), inner.service.get()) {
                // Recorded first: if this prompt is stopped, its work is credited later.
                let who = worktree::identity_of(service.store(), &run.prompt.author);
                let mut sessions = inner.sessions.lock().await;
                let pending = &mut inner
                    .state(&mut sessions, &run.session_id)
                    .uncommitted_authors;
                if !pending.contains(&who) {
                    pending.push(who);
                }
            }
            let mut agent = Agent::new(
                inner.provider.clone(),
                Tools::new(envd.clone(), inner.workdir.clone()),
                SYSTEM_PROMPT.to_string(),
            )
            .with_plugin(Arc::new(RepoContext::prefetch(
                envd.clone(),
                inner.workdir.clone(),
            )));
            if let Some(service) = inner.service.get() {
                agent = agent
                    .with_tool(Arc::new(SpawnSession {
                        sessions: service.clone(),
                        author: run.prompt.author.clone(),
                        parent: run.session_id.clone(),
                        parent_events: run.events.clone(),
                        family: inner.family.clone(),
                    }))
                    .with_tool(Arc::new(SessionReport {
                        sessions: service.clone(),
                        result: false,
                    }))
                    .with_tool(Arc::new(SessionReport {
                        sessions: service.clone(),
                        result: true,
                    }));
            }
            // From here to the first model request, round trips to the sandbox run side by
            // side where they can (the repository context's reads started above): each
            // waits for envd to be scheduled.
            //
            // Every change in the working tree during the prompt, whoever made it (a tool,
            // a build the agent ran), is logged as it happens; the watch ends with the
            // prompt. It starts once the sync is done (the sync's own checkout is not a
            // change of the session), and the gate opens only once it is watching.
            let checkout = format!("{}/.git", inner.workdir.trim_end_matches('/'));
            let gated = sync.is_some();
            let synced = sync
                .as_ref()
                .is_some_and(|s| *s.borrow() == SyncState::Synced);
            // A finished sync made the checkout; otherwise, whether the image has one.
            let has_checkout = async { synced || (gated && envd.stat(&checkout).await.is_ok()) };
            let in_workdir = async {
                if new {
                    envd.mkdir(&inner.workdir, true).await.map_err(|e| {
                        format!("could not create {} in the sandbox: {e}", inner.workdir)
                    })?;
                }
                Ok::<_, String>(tokio::join!(
                    inner.repo_plugins(&run.session_id, &sandbox, &envd),
                    worktree::watch_changes(&envd, &inner.workdir, run.events.clone(), sync),
                ))
            };
            let (in_workdir, has_checkout) = tokio::join!(in_workdir, has_checkout);
            let (repo_plugins, (watching, sync)) = in_workdir?;
            for plugin in repo_plugins {
                agent = agent.with_plugin(plugin);
            }
            let _watching = AbortOnDrop(watching.abort_handle());
            if let Some(sync) = sync {
                // Without a checkout in the image, the sync makes the first one: reads
                // wait for it too.
                let gate = if has_checkout {
                    SyncGate::new(sync)
                } else {
                    SyncGate::for_everything(sync)
                };
                agent = agent.with_plugin(Arc::new(gate));
            }
            for plugin in inner.plugins.get().into_iter().flatten() {
                agent = agent.with_plugin(plugin.clone());
            }
            agent.max_tokens = inner.max_tokens.load(std::sync::atomic::Ordering::Relaxed);
            agent.context_limit = inner
                .context_limit
                .load(std::sync::atomic::Ordering::Relaxed);

            // If this run is aborted (stop), the guard cancels the agent, which then ends
            // cleanly in its own task.
            let cancel = CancellationToken::new();
            let _stop_on_abort = cancel.clone().drop_guard();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let text = run.prompt.text.clone();
            let (saver, session_id) = (inner.clone(), run.session_id.clone());
            let task = tokio::spawn(async move {
                let mut conversation = conversation.lock().await;
                let outcome = agent.run(&mut conversation, &text, &tx, &cancel).await;
                saver.save_conversation(&session_id, &conversation);
                outcome
            });

            let prompt_id = run.prompt.id;
            let call_id = |id: &str| format!("p{prompt_id}-{id}");
            let mut streamed: HashSet<String> = HashSet::new();
            while let Some(event) = rx.recv().await {
                let bodies = match event {
                    AgentEvent::TextDelta(text) => vec![EventBody::ModelDelta { prompt_id, text }],
                    AgentEvent::ToolStarted { id, name, input } => vec![EventBody::ToolStarted {
                        prompt_id,
                        call_id: call_id(&id),
                        tool: name,
                        input,
                    }],
                    AgentEvent::ToolOutput { id, data } => {
                        streamed.insert(id.clone());
                        vec![EventBody::ToolOutput {
                            call_id: call_id(&id),
                            stream: OutputStream::Stdout,
                            text: data,
                        }]
                    }
                    AgentEvent::ToolFinished {
                        id,
                        output,
                        is_error,
                        ..
                    } => {
                        let mut out = Vec::new();
                        // Tools that do not stream still leave their whole output in the log.
                        if !streamed.contains(&id) && !output.is_empty() {
                            out.push(EventBody::ToolOutput {
                                call_id: call_id(&id),
                                stream: OutputStream::Stdout,
                                text: output,
                            });
                        }
                        out.push(EventBody::ToolFinished {
                            call_id: call_id(&id),
                            ok: !is_error,
                            exit_code: None,
                        });
                        out
                    }
                    AgentEvent::Usage(_) => Vec::new(),
                };
                for body in bodies {
                    run.events.emit(body).await.map_err(|e| e.to_string())?;
                }
            }
            let result = match task.await {
                Ok(Ok(_outcome)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("the agent failed: {e}")),
            };
            inner.commit_prompt(&run, &envd).await;
            inner.snapshot_after_prompt(&run.session_id, &sandbox);
            result
        })
    }
}
