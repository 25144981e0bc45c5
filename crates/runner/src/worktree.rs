//! A session's git working tree: brought up to date with the repository's base branch
//! when its sandbox is claimed, and after each prompt committed on the session's branch
//! (`hangar/<session id>`) as the person who asked, then pushed.
//!
//! Credentials never enter a sandbox. The server keeps a bare mirror of each repository
//! (`<data dir>/git/<owner>/<name>.git`) and does every fetch and push there, on the host;
//! commits cross between mirror and sandbox as git bundles over envd. Repositories not in
//! the registry have no git: their sessions work in a plain directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_agent::SyncState;
use hangar_envd_client::ChangeKind;
use hangar_envd_client::{EnvdClient as Envd, ExecRequest};
use hangar_images::git::{Credentials, Git, GitError};
use hangar_pool::Synced;
use hangar_protocol::session::{Author, EventBody, FileChange};
use hangar_sandbox::Runtime;
use hangar_store::{Repo, Store, StoreError};
use tokio::sync::{Mutex, watch};

/// How much of a git command's output is kept (bundles are read whole, up to this).
const OUTPUT_LIMIT: usize = 512 << 20;
/// Where a bundle is put inside the sandbox's repository while it is fetched.
const SANDBOX_BUNDLE: &str = ".git/hangar-sync.bundle";

/// Who a commit is attributed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Display name.
    pub name: String,
    /// Email.
    pub email: String,
}

impl Identity {
    fn trailer(&self) -> String {
        format!("Co-authored-by: {} <{}>", self.name, self.email)
    }
}

/// The session's branch.
pub fn branch_of(session_id: &str) -> String {
    format!("hangar/{session_id}")
}

/// What a prompt's end left in git.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Events to append to the session's log, in order.
    pub events: Vec<EventBody>,
}

/// A session's changes: its branch against the base branch.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SessionDiff {
    /// The session's branch.
    pub branch: String,
    /// The base branch.
    pub base: String,
    /// The branch's last commit, once it has one.
    pub head: Option<String>,
    /// Changed files.
    pub files: Vec<FileDiff>,
    /// The unified diff (cut at 1 MiB).
    pub patch: String,
    /// True when the patch was cut.
    pub truncated: bool,
}

/// One changed file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileDiff {
    /// Path in the repository.
    pub path: String,
    /// Lines added (`None` for a binary file).
    pub additions: Option<u64>,
    /// Lines removed (likewise).
    pub deletions: Option<u64>,
}

/// The largest patch returned.
const PATCH_LIMIT: usize = 1 << 20;

/// Git for sessions: mirrors, syncs, commits and pushes.
pub struct Worktrees {
    store: Arc<Store>,
    mirrors: PathBuf,
    credentials: Arc<dyn Credentials>,
    workdir: String,
    committer: Identity,
    /// One git operation per mirror at a time: concurrent fetches would race on its refs.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Each mirror's base tip at its last fetch, and when that was.
    tips: std::sync::Mutex<HashMap<String, (String, Instant)>>,
    /// How long a fetched base counts as the latest (see [`Worktrees::fresh`]).
    fresh_for: Duration,
}

impl Worktrees {
    /// Git for the registered repositories in `store`, mirrors under `mirrors`, the
    /// checkout at `workdir` in sandboxes.
    pub fn new(
        store: Arc<Store>,
        mirrors: PathBuf,
        credentials: Arc<dyn Credentials>,
        workdir: impl Into<String>,
    ) -> Worktrees {
        Worktrees {
            store,
            mirrors,
            credentials,
            workdir: workdir.into(),
            committer: Identity {
                name: "Hangar".into(),
                email: "hangar@localhost".into(),
            },
            locks: Mutex::default(),
            tips: std::sync::Mutex::default(),
            fresh_for: Duration::from_secs(30),
        }
    }

    /// Sets how long a fetched base counts as the latest: a pool sandbox synced to it is
    /// handed out without another fetch for that long.
    pub fn with_freshness(mut self, fresh_for: Duration) -> Worktrees {
        self.fresh_for = fresh_for;
        self
    }

    /// Where a sync of `repo` would bring a checkout now, if that is known without a fetch:
    /// `Nothing` for repositories without git, the base tip when it was fetched less than
    /// the freshness window ago; `None` when a sync must fetch first.
    pub fn fresh(&self, repo: &str) -> Option<Synced> {
        if self.repo(repo).ok()?.is_none() {
            return Some(Synced::Nothing);
        }
        let tips = self.tips.lock().ok()?;
        let (tip, fetched) = tips.get(repo)?;
        (fetched.elapsed() < self.fresh_for).then(|| Synced::At(tip.clone()))
    }

    /// Fetches `repo`'s base branch into its mirror (nothing for unregistered repositories).
    pub async fn refresh(&self, repo: &str) -> Result<(), String> {
        let Some(repo) = self.repo(repo)? else {
            return Ok(());
        };
        let lock = self.lock(&repo.name).await;
        let _held = lock.lock().await;
        let (git, _scratch) = self.git(&repo)?;
        self.fetch_base(&git.in_background(), &repo).await.map(drop)
    }

    /// Fetches the base branch into the mirror (the caller holds the mirror's lock) and
    /// remembers its tip.
    async fn fetch_base(&self, git: &Git, repo: &Repo) -> Result<String, String> {
        let tip = git
            .fetch_mirror(&self.mirror_dir(repo), &repo.default_branch)
            .await
            .map_err(|e| format!("fetching {}: {e}", repo.name))?;
        if let Ok(mut tips) = self.tips.lock() {
            tips.insert(repo.name.clone(), (tip.clone(), Instant::now()));
        }
        Ok(tip)
    }

    /// The registered repository, `None` when it is not registered.
    fn repo(&self, name: &str) -> Result<Option<Repo>, String> {
        match self.store.repo(name) {
            Ok(r) => Ok(Some(r)),
            Err(StoreError::RepoNotFound(_)) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn lock(&self, repo: &str) -> Arc<Mutex<()>> {
        self.locks
            .lock()
            .await
            .entry(repo.to_string())
            .or_default()
            .clone()
    }

    fn mirror_dir(&self, repo: &Repo) -> PathBuf {
        self.mirrors.join(format!("{}.git", repo.name))
    }

    /// Host-side git for `repo`'s remote, with its credential; the guard keeps the askpass
    /// helper's directory alive.
    fn git(&self, repo: &Repo) -> Result<(Git, tempfile::TempDir), String> {
        std::fs::create_dir_all(&self.mirrors)
            .map_err(|e| format!("creating {}: {e}", self.mirrors.display()))?;
        let scratch = tempfile::Builder::new()
            .prefix(".git-")
            .tempdir_in(&self.mirrors)
            .map_err(|e| format!("creating a scratch directory for git: {e}"))?;
        let git = Git::new(&repo.url, self.credentials.as_ref(), scratch.path())
            .map_err(|e| e.to_string())?;
        Ok((git, scratch))
    }

    /// Brings the checkout in the sandbox up to `repo`'s latest base commit (a fresh
    /// checkout when the sandbox has none) and says which that is. Nothing to do for
    /// unregistered repositories.
    pub async fn sync(&self, repo: &str, envd: &Envd) -> Result<Synced, String> {
        let Some(repo) = self.repo(repo)? else {
            return Ok(Synced::Nothing);
        };
        let lock = self.lock(&repo.name).await;
        let _held = lock.lock().await;
        // The sync may run beside a prompt's first model request: it yields the cores.
        let (git, _scratch) = self.git(&repo)?;
        let git = git.in_background();
        let mirror = self.mirror_dir(&repo);
        let tip = self.fetch_base(&git, &repo).await?;
        let head = self
            .sandbox_git(envd, "git rev-parse -q --verify HEAD", &[])
            .await;
        let head = head.ok().map(|h| h.trim().to_string());
        if head.as_deref() == Some(tip.as_str()) {
            return Ok(Synced::At(tip));
        }
        let tracking = format!("refs/remotes/origin/{}", repo.default_branch);
        let bundle = match git.bundle(&mirror, &tracking, head.as_deref()).await {
            Ok(b) => b,
            // The sandbox's commit is unknown upstream (rewritten history): send it all.
            Err(_) => git
                .bundle(&mirror, &tracking, None)
                .await
                .map_err(|e| e.to_string())?,
        };
        self.put_bundle(envd, &bundle).await?;
        self.sandbox_git(
            envd,
            r#"{ command -v renice && renice -n 10 -p $$; } >/dev/null 2>&1
               git fetch -q --no-tags "$HANGAR_BUNDLE" "+$HANGAR_REF:$HANGAR_REF" \
               && git checkout -q --detach "$HANGAR_TIP" && rm -f "$HANGAR_BUNDLE""#,
            &[
                ("HANGAR_BUNDLE", SANDBOX_BUNDLE),
                ("HANGAR_REF", &tracking),
                ("HANGAR_TIP", &tip),
            ],
        )
        .await
        .map_err(|e| format!("updating the checkout to {tip}: {e}"))?;
        Ok(Synced::At(tip))
    }

    /// Puts the session's branch, as last committed, into the sandbox and checks it out,
    /// when the mirror has it (the session committed before, in another sandbox). A
    /// sandbox restored from a snapshot usually has the branch checked out at its tip
    /// already, uncommitted work included, and is left alone; one from an older snapshot
    /// (a later one failed) is moved to the tip, whose commits hold that work.
    pub async fn restore_branch(
        &self,
        repo: &str,
        envd: &Envd,
        session_id: &str,
    ) -> Result<(), String> {
        let Some(repo) = self.repo(repo)? else {
            return Ok(());
        };
        let mirror = self.mirror_dir(&repo);
        if !mirror.join("HEAD").is_file() {
            return Ok(());
        }
        let branch = branch_of(session_id);
        let refname = format!("refs/heads/{branch}");
        let bundle = {
            let lock = self.lock(&repo.name).await;
            let _held = lock.lock().await;
            let (git, _scratch) = self.git(&repo)?;
            let Some(tip) = git
                .rev_parse(&mirror, &refname)
                .await
                .map_err(|e| e.to_string())?
            else {
                return Ok(());
            };
            let head = self
                .sandbox_git(envd, "git rev-parse -q --verify HEAD", &[])
                .await
                .ok();
            if head.as_deref().map(str::trim) == Some(tip.trim()) {
                let on = self
                    .sandbox_git(envd, "git symbolic-ref -q HEAD", &[])
                    .await
                    .ok();
                if on.as_deref().map(str::trim) == Some(refname.as_str()) {
                    return Ok(());
                }
            }
            git.bundle(&mirror, &refname, head.as_deref().map(str::trim))
                .await
                .map_err(|e| format!("bundling {branch}: {e}"))?
        };
        self.put_bundle(envd, &bundle).await?;
        self.sandbox_git(
            envd,
            r#"git fetch -q --no-tags --update-head-ok "$HANGAR_BUNDLE" "+$HANGAR_REF:$HANGAR_REF" \
               && if [ "$(git symbolic-ref -q HEAD)" = "$HANGAR_REF" ]; then git reset -q --hard; \
                  else git checkout -q "$HANGAR_BRANCH"; fi && rm -f "$HANGAR_BUNDLE""#,
            &[
                ("HANGAR_BUNDLE", SANDBOX_BUNDLE),
                ("HANGAR_REF", &refname),
                ("HANGAR_BRANCH", &branch),
            ],
        )
        .await
        .map_err(|e| format!("restoring {branch}: {e}"))?;
        tracing::info!(session = session_id, "restored {branch} in a new sandbox");
        Ok(())
    }

    /// Writes a bundle into the sandbox's repository (creating the repository if there is
    /// none), through a process's stdin so its size is not bounded by envd's frames.
    async fn put_bundle(&self, envd: &Envd, bundle: &[u8]) -> Result<(), String> {
        let req = ExecRequest {
            shell: Some(format!(
                "mkdir -p {wd} && cd {wd} && {{ [ -d .git ] || git init -q; }} && cat > {SANDBOX_BUNDLE}",
                wd = shell_quote(&self.workdir)
            )),
            stdin: true,
            ..Default::default()
        };
        let mut exec = envd.exec(req).await.map_err(|e| e.to_string())?;
        for chunk in bundle.chunks(256 << 10) {
            exec.send_stdin(chunk).await.map_err(|e| e.to_string())?;
        }
        exec.close_stdin().await.map_err(|e| e.to_string())?;
        let mut stderr = Vec::new();
        loop {
            match exec.next_event().await.map_err(|e| e.to_string())? {
                Some(hangar_envd_client::ExecEvent::Stderr(d)) => stderr.extend_from_slice(&d),
                Some(hangar_envd_client::ExecEvent::Stdout(_)) => {}
                Some(hangar_envd_client::ExecEvent::Exit(status)) => {
                    return if status.code == Some(0) {
                        Ok(())
                    } else {
                        Err(format!(
                            "writing into the sandbox's repository: {}",
                            String::from_utf8_lossy(&stderr).trim()
                        ))
                    };
                }
                None => return Err("envd closed the exec".into()),
            }
        }
    }

    /// Runs a git command line in the sandbox's checkout; its stdout, or why it failed.
    async fn sandbox_git(
        &self,
        envd: &Envd,
        script: &str,
        env: &[(&str, &str)],
    ) -> Result<String, String> {
        let out = self.sandbox_git_bytes(envd, script, env).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    async fn sandbox_git_bytes(
        &self,
        envd: &Envd,
        script: &str,
        env: &[(&str, &str)],
    ) -> Result<Vec<u8>, String> {
        let req = ExecRequest {
            shell: Some(script.to_string()),
            cwd: Some(self.workdir.clone()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let out = envd
            .output(req, OUTPUT_LIMIT)
            .await
            .map_err(|e| e.to_string())?;
        if out.status.code == Some(0) && !out.truncated {
            Ok(out.stdout)
        } else if out.status.code == Some(127) {
            Err(
                "git is not installed in the sandbox's image: add it to the recipe's packages"
                    .into(),
            )
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(err.trim().lines().last().unwrap_or("failed").to_string())
        }
    }

    /// Commits everything the prompt changed on the session's branch as `author`, with
    /// `co_authors` credited in trailers, then pushes the branch. Returns the events to
    /// log; `Ok` with no events when there was nothing to commit or no git.
    pub async fn commit_and_push(
        &self,
        repo: &str,
        envd: &Envd,
        session_id: &str,
        author: &Identity,
        co_authors: &[Identity],
        prompt: &str,
    ) -> Result<Outcome, String> {
        let Some(repo) = self.repo(repo)? else {
            return Ok(Outcome::default());
        };
        let branch = branch_of(session_id);
        let mut message = summary_line(prompt);
        message.push_str(&format!("\n\nRequested in Hangar session {session_id}.\n"));
        let trailers: Vec<String> = co_authors
            .iter()
            .filter(|c| *c != author)
            .map(Identity::trailer)
            .collect();
        if !trailers.is_empty() {
            message.push('\n');
            message.push_str(&trailers.join("\n"));
            message.push('\n');
        }
        let committed = self
            .sandbox_git(
                envd,
                r#"[ -d .git ] || exit 0
                   [ "$(git symbolic-ref -q --short HEAD)" = "$HANGAR_BRANCH" ] \
                     || git checkout -q -B "$HANGAR_BRANCH" || exit 1
                   git add -A || exit 1
                   git diff --cached --quiet && exit 0
                   git commit -q --no-verify -m "$HANGAR_MESSAGE" || exit 1
                   git rev-parse HEAD"#,
                &[
                    ("HANGAR_BRANCH", &branch),
                    ("HANGAR_MESSAGE", &message),
                    ("GIT_AUTHOR_NAME", &author.name),
                    ("GIT_AUTHOR_EMAIL", &author.email),
                    ("GIT_COMMITTER_NAME", &self.committer.name),
                    ("GIT_COMMITTER_EMAIL", &self.committer.email),
                ],
            )
            .await
            .map_err(|e| format!("committing on {branch}: {e}"))?;
        let commit = committed.trim().to_string();
        if commit.is_empty() {
            return Ok(Outcome::default());
        }
        let mut outcome = Outcome {
            events: vec![EventBody::GitCommitted {
                branch: branch.clone(),
                commit: commit.clone(),
                author: author.name.clone(),
                author_email: author.email.clone(),
                co_authors: co_authors
                    .iter()
                    .filter(|c| *c != author)
                    .map(|c| c.name.clone())
                    .collect(),
            }],
        };
        outcome
            .events
            .push(match self.push(&repo, envd, &branch).await {
                Ok(pushed) => EventBody::GitPushed {
                    branch,
                    commit: pushed,
                },
                Err(reason) => EventBody::GitPushFailed { branch, reason },
            });
        Ok(outcome)
    }

    /// What the session has committed so far (every prompt's work is committed when it
    /// ends), against its base branch; `None` for a repository with no git.
    pub async fn diff(&self, repo: &str, session_id: &str) -> Result<Option<SessionDiff>, String> {
        let Some(repo) = self.repo(repo)? else {
            return Ok(None);
        };
        let branch = branch_of(session_id);
        let mut out = SessionDiff {
            branch: branch.clone(),
            base: repo.default_branch.clone(),
            ..Default::default()
        };
        let mirror = self.mirror_dir(&repo);
        if !mirror.join("HEAD").is_file() {
            return Ok(Some(out));
        }
        let (git, _scratch) = self.git(&repo)?;
        let head_ref = format!("refs/heads/{branch}");
        let Some(head) = git
            .rev_parse(&mirror, &head_ref)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(Some(out));
        };
        let base_ref = format!("refs/remotes/origin/{}", repo.default_branch);
        let (files, patch, truncated) = git
            .diff(&mirror, &base_ref, &head_ref, PATCH_LIMIT)
            .await
            .map_err(|e| e.to_string())?;
        out.head = Some(head);
        out.files = files
            .into_iter()
            .map(|(path, additions, deletions)| FileDiff {
                path,
                additions,
                deletions,
            })
            .collect();
        out.patch = patch;
        out.truncated = truncated;
        Ok(Some(out))
    }

    /// Takes the session's branch out of the sandbox into the mirror and pushes it.
    async fn push(&self, repo: &Repo, envd: &Envd, branch: &str) -> Result<String, String> {
        // Everything the remote already has is left out; a shallow checkout's boundary
        // commits are upstream too.
        let bundle = self
            .sandbox_git_bytes(
                envd,
                r#"set -- "refs/heads/$HANGAR_BRANCH" --not --remotes=origin
                   [ -f .git/shallow ] && for c in $(cat .git/shallow); do set -- "$@" "$c"; done
                   git bundle create -q - "$@""#,
                &[("HANGAR_BRANCH", branch)],
            )
            .await
            .map_err(|e| format!("bundling {branch}: {e}"))?;
        let lock = self.lock(&repo.name).await;
        let _held = lock.lock().await;
        let (git, scratch) = self.git(repo)?;
        let mirror = self.mirror_dir(repo);
        // The mirror must hold the base the bundle leaves out.
        self.fetch_base(&git, repo).await?;
        let file = scratch.path().join("branch.bundle");
        std::fs::write(&file, &bundle).map_err(|e| format!("writing the bundle: {e}"))?;
        let refname = format!("refs/heads/{branch}");
        let commit = git
            .fetch_bundle(&mirror, &file, &refname)
            .await
            .map_err(|e| match e {
                GitError::Failed { stderr, .. } if stderr.contains("non-fast-forward") => format!(
                    "{branch} was rewritten in the sandbox (not a fast-forward of what was pushed before)"
                ),
                other => other.to_string(),
            })?;
        git.push(&mirror, branch).await.map_err(|e| match e {
            GitError::Rejected { reason, .. } => format!("the remote rejected the push: {reason}"),
            other => other.to_string(),
        })?;
        Ok(commit)
    }
}

/// The first line of a prompt, short enough for a commit's subject.
fn summary_line(prompt: &str) -> String {
    let line = prompt
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("Changes");
    if line.chars().count() <= 72 {
        line.to_string()
    } else {
        let mut s: String = line.chars().take(71).collect();
        s.push('…');
        s
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The commit identity of a prompt's author: the user's name and email from the index,
/// a no-reply address when they have none (or are a guest from a share link).
pub fn identity_of(store: &Store, author: &Author) -> Identity {
    let user = author.user_id.and_then(|id| store.user(id).ok());
    let noreply = format!("{}@users.noreply.hangar", author.login);
    match user {
        Some(u) => Identity {
            name: if u.name.is_empty() {
                u.login.clone()
            } else {
                u.name.clone()
            },
            email: u.email.unwrap_or(noreply),
        },
        None => Identity {
            name: author.login.clone(),
            email: noreply,
        },
    }
}

/// Logs `file.changed` for every change under `workdir` in the sandbox (git's own files
/// and envd's temporary files left out, a change repeated at once logged once), starting
/// once `sync` (if any) has settled. Returns the watching task and the sync state to gate
/// tools on: it settles only after the watch is in place, so no change made through the
/// gate is missed and the sync's own checkout is never reported.
pub async fn watch_changes(
    envd: &Envd,
    workdir: &str,
    events: hangar_session::EventSink,
    sync: Option<watch::Receiver<SyncState>>,
) -> (
    tokio::task::JoinHandle<()>,
    Option<watch::Receiver<SyncState>>,
) {
    let (envd, root) = (envd.clone(), workdir.to_string());
    let Some(mut upstream) = sync else {
        let watch = envd.watch(&root, true).await;
        return (tokio::spawn(forward_changes(watch, root, events)), None);
    };
    let (gated_tx, gated) = watch::channel(SyncState::Syncing);
    let task = tokio::spawn(async move {
        let settled = match SyncState::settled(&mut upstream).await {
            Ok(()) => SyncState::Synced,
            Err(why) => SyncState::Failed(why),
        };
        let watch = envd.watch(&root, true).await;
        let _ = gated_tx.send(settled);
        forward_changes(watch, root, events).await;
    });
    (task, Some(gated))
}

async fn forward_changes(
    watch: Result<hangar_envd_client::Watch, hangar_envd_client::Error>,
    workdir: String,
    events: hangar_session::EventSink,
) {
    let mut watch = match watch {
        Ok(w) => w,
        Err(e) => {
            tracing::debug!("no file change events: {e}");
            return;
        }
    };
    let root = format!("{}/", workdir.trim_end_matches('/'));
    let mut last: Option<(String, FileChange)> = None;
    while let Ok(change) = watch.next().await {
        let Some(path) = change.path.strip_prefix(&root) else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        let envd_temp = name.starts_with('.') && name.contains(".envd-") && name.ends_with(".tmp");
        if path == ".git" || path.starts_with(".git/") || envd_temp {
            continue;
        }
        let kind = match change.kind {
            ChangeKind::Created => FileChange::Created,
            ChangeKind::Modified => FileChange::Modified,
            ChangeKind::Removed => FileChange::Deleted,
        };
        let this = (path.to_string(), kind);
        if last.as_ref() == Some(&this) {
            continue;
        }
        last = Some(this.clone());
        let body = EventBody::FileChanged {
            path: this.0,
            change: this.1,
        };
        if events.emit(body).await.is_err() {
            return;
        }
    }
}

/// The pool's syncer: the sandbox's checkout brought to the base branch's tip.
pub struct GitSyncer {
    /// The git flow.
    pub worktrees: Arc<Worktrees>,
    /// Where sandboxes' envd is reached.
    pub runtime: Arc<dyn Runtime>,
}

#[async_trait::async_trait]
impl hangar_pool::Syncer for GitSyncer {
    async fn sync(&self, repo: &str, sandbox: &str) -> Result<Synced, String> {
        let envd = self
            .runtime
            .envd(sandbox)
            .await
            .map_err(|e| e.to_string())?;
        self.worktrees.sync(repo, &envd).await
    }

    async fn fresh(&self, repo: &str) -> Option<Synced> {
        self.worktrees.fresh(repo)
    }

    async fn refresh(&self, repo: &str) -> Result<(), String> {
        self.worktrees.refresh(repo).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_the_first_non_empty_line_shortened() {
        assert_eq!(
            summary_line("\n  fix the flaky test \nmore"),
            "fix the flaky test"
        );
        assert_eq!(summary_line(""), "Changes");
        let long = "x".repeat(100);
        assert_eq!(summary_line(&long).chars().count(), 72);
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
