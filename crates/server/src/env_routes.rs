//! Environments (`/api/environments`): create (builds or reuses the image, starts the
//! sandbox; the answer waits for both), list, show, remove; their files
//! (`/api/environments/{id}/files`, through envd's file API) and checkout
//! (`/api/environments/{id}/repo`, git run in the sandbox); and
//! `GET /api/environments/{id}/ws`, a terminal: each connection gets its own shell on a
//! PTY in the environment's sandbox (envd's PTY exec), and everyone connected to an
//! environment sees who else is there.
//!
//! Terminal frames: binary frames carry the terminal's bytes both ways; text frames are
//! JSON: from the client `{"type": "resize", "cols", "rows"}`; from the server
//! `{"type": "presence", "participants": [{"login", "terminals"}]}` and, when the shell
//! ends, `{"type": "exit", "code"}` before the close. Other text closes with 1007.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Extension;
use axum::Json;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hangar_envd_client::ExecEvent;
use hangar_envs::{EnvError, Environments, NewEnvironment};
use hangar_protocol::envd::{ExecRequest, PtySize};
use hangar_store::EnvironmentRecord;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ErrorResponse;
use crate::extract::JsonBody;
use crate::session_api::Access;
use crate::{ApiError, AppState};

/// `POST /api/environments`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvironment {
    /// A unique name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// `3.9` (Debian bullseye) or `3.11` (bookworm, the default), or an exact release.
    #[serde(default)]
    pub python: Option<String>,
    /// A repository to check out at `/workspace` (a server path, `file://` or `https://`).
    #[serde(default)]
    pub repo: Option<String>,
}

/// An environment.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The Python it runs (e.g. `3.9.2`).
    pub python: String,
    /// The Debian suite of its image.
    pub suite: String,
    /// The repository checked out at `/workspace`, if any.
    pub repo: Option<String>,
    /// The image it started from.
    pub image: String,
    /// Its sandbox.
    pub sandbox: String,
    /// `running`, or `stopped` when its sandbox is gone or stopped.
    pub status: String,
    /// The user who created it.
    pub created_by: i64,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Its page in the web UI, relative to the server.
    pub path: String,
    /// Its page with a share link's token (`/envs/ID#share=hgs_…`), relative to the server:
    /// opens the environment without an API token. Only in the answer that created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_path: Option<String>,
}

impl EnvironmentView {
    fn new(r: EnvironmentRecord, running: bool) -> EnvironmentView {
        EnvironmentView {
            path: format!("/envs/{}", r.id),
            id: r.id,
            name: r.name,
            python: r.python,
            suite: r.suite,
            repo: r.repo,
            image: r.image,
            sandbox: r.sandbox,
            status: if running { "running" } else { "stopped" }.into(),
            created_by: r.created_by,
            created_at_ms: r.created_at_ms,
            share_path: None,
        }
    }
}

impl From<EnvError> for ApiError {
    fn from(e: EnvError) -> Self {
        let message = e.to_string();
        match e {
            EnvError::InvalidName(_) => ApiError::invalid("invalid_request", message),
            EnvError::PythonUnavailable { .. } => ApiError::invalid("python_unavailable", message),
            EnvError::Store(e) => e.into(),
            EnvError::Sandbox(e) => e.into(),
            EnvError::Envd(e) => e.into(),
            EnvError::Build(_) => ApiError::invalid("build_failed", message),
            _ => ApiError::internal(message),
        }
    }
}

fn environments(state: &AppState) -> Result<&Environments, ApiError> {
    state.envs.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "environments_unavailable",
            "this server has no local sandbox backend for environments",
        )
    })
}

async fn view(envs: &Environments, r: EnvironmentRecord) -> EnvironmentView {
    let running = envs.running(&r).await;
    EnvironmentView::new(r, running)
}

/// Creates an environment: builds or reuses its image (the first use of a Debian suite
/// takes a minute or two), starts its sandbox and checks its Python. Answers when it is
/// ready.
#[utoipa::path(post, path = "/api/environments", tag = "environments", security(("bearer" = [])),
    request_body = CreateEnvironment,
    responses(
        (status = 201, body = EnvironmentView),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 409, description = "The name is taken", body = ErrorResponse),
        (status = 422, description = "Bad name, Python not available (the message lists what is), or the image build failed", body = ErrorResponse),
        (status = 503, description = "No local sandbox backend", body = ErrorResponse)))]
pub async fn create_environment(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<CreateEnvironment>,
) -> Result<Response, ApiError> {
    let envs = environments(&state)?;
    let req = NewEnvironment {
        name: body.name,
        python: body.python,
        repo: body.repo,
    };
    let record = envs.create(&req, caller.user.id).await?;
    tracing::info!(env = %record.id, name = %record.name, user = %caller.user.login, "environment created");
    let (_, token) = state
        .store
        .create_environment_share(&record.id, caller.user.id)?;
    let mut view = view(envs, record).await;
    view.share_path = Some(format!("{}#share={}", view.path, token.expose()));
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Every environment, newest first.
#[utoipa::path(get, path = "/api/environments", tag = "environments", security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<EnvironmentView>),
        (status = 401, body = ErrorResponse),
        (status = 503, body = ErrorResponse)))]
pub async fn list_environments(
    State(state): State<AppState>,
) -> Result<Json<Vec<EnvironmentView>>, ApiError> {
    let envs = environments(&state)?;
    let mut out = Vec::new();
    for r in envs.list()? {
        out.push(view(envs, r).await);
    }
    Ok(Json(out))
}

/// One environment, by id or name. Also with the environment's share link.
#[utoipa::path(get, path = "/api/environments/{id}", tag = "environments", security(("bearer" = [])),
    params(("id" = String, Path, description = "Environment id or name")),
    responses(
        (status = 200, body = EnvironmentView),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "Another environment's share link", body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn get_environment(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Json<EnvironmentView>, ApiError> {
    let envs = environments(&state)?;
    let r = envs.get(&id)?;
    access.check_env(&r.id)?;
    Ok(Json(view(envs, r).await))
}

/// Removes an environment: destroys its sandbox (closing its terminals) and forgets it
/// and its share links. Users only.
#[utoipa::path(delete, path = "/api/environments/{id}", tag = "environments", security(("bearer" = [])),
    params(("id" = String, Path, description = "Environment id or name")),
    responses(
        (status = 200, body = EnvironmentView),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "A share link cannot remove it", body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn delete_environment(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Json<EnvironmentView>, ApiError> {
    let Access::User(caller) = access else {
        return Err(ApiError::forbidden(
            "share links cannot remove environments; use an API token",
        ));
    };
    let envs = environments(&state)?;
    let r = envs.remove(&id).await?;
    tracing::info!(env = %r.id, user = %caller.user.login, "environment removed");
    Ok(Json(EnvironmentView::new(r, false)))
}

/// The largest file `GET /api/environments/{id}/files` shows.
pub const MAX_FILE_VIEW: u64 = 1 << 20;

/// `GET /api/environments/{id}/files` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    /// A path inside the environment: absolute, or relative to its working directory
    /// (`/workspace` with a repository, else `/root`), which is the default. `..` is
    /// refused.
    #[serde(default)]
    pub path: Option<String>,
}

/// A directory's entries or a file's text.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FilesView {
    /// A directory.
    Directory {
        /// The absolute path inside the environment.
        path: String,
        /// Its entries, sorted by name.
        entries: Vec<FileEntryView>,
    },
    /// A regular file (up to 1 MiB).
    File {
        /// The absolute path inside the environment.
        path: String,
        /// Its size in bytes.
        size: u64,
        /// Its text; absent when it is not UTF-8 (`binary`).
        text: Option<String>,
        /// True when the file is not UTF-8 text.
        binary: bool,
    },
}

/// One directory entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileEntryView {
    /// Its name.
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
    /// A symlink's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

impl From<hangar_protocol::envd::FileInfo> for FileEntryView {
    fn from(f: hangar_protocol::envd::FileInfo) -> Self {
        use hangar_protocol::envd::FileKind;
        FileEntryView {
            name: f.name,
            kind: match f.kind {
                FileKind::File => "file",
                FileKind::Dir => "dir",
                FileKind::Symlink => "symlink",
                FileKind::Other => "other",
            },
            size: f.size,
            mtime_ms: f.mtime_ms,
            link_target: f.link_target,
        }
    }
}

/// The absolute path inside the environment that `raw` names: absolute, or relative to
/// `workdir` (the default). `.` and empty components drop out; `..` is refused, so a path
/// says plainly where it is (envd would keep it inside the sandbox anyway).
fn env_path(workdir: &str, raw: Option<&str>) -> Result<String, ApiError> {
    let raw = raw.unwrap_or("");
    let bad = |why: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!(
                "path {raw:?} {why}; give a path inside the environment, absolute or relative to {workdir}"
            ),
        )
    };
    if raw.len() > 4096 {
        return Err(bad("is longer than 4096 bytes"));
    }
    if raw.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let joined = if raw.starts_with('/') {
        raw.to_string()
    } else {
        format!("{workdir}/{raw}")
    };
    let mut parts = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(bad("goes up with `..`")),
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// An envd failure on `path`, for the files view.
fn file_error(path: &str, e: hangar_envd_client::Error) -> ApiError {
    match e.code() {
        Some("not_found") => {
            ApiError::not_found(format!("no file or directory {path} in this environment"))
        }
        Some("not_a_directory") => ApiError::invalid(
            "not_a_directory",
            format!("{path}: a component of the path is a file, not a directory"),
        ),
        Some("permission_denied") => {
            ApiError::forbidden(format!("{path}: the sandbox may not read it"))
        }
        Some("escapes_root") => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("{path}: a symlink loop or a link out of the sandbox"),
        ),
        Some("bad_request") => ApiError::invalid(
            "not_a_file",
            format!("{path} is neither a directory nor a regular file (a device, socket or pipe)"),
        ),
        _ => e.into(),
    }
}

/// A directory's entries or a file's text, read through envd inside the environment's
/// sandbox (paths resolve inside its root; symlinks are followed there). Files over 1 MiB
/// are refused: read those in a terminal.
#[utoipa::path(get, path = "/api/environments/{id}/files", tag = "environments", security(("bearer" = [])),
    params(("id" = String, Path, description = "Environment id or name"), FilesQuery),
    responses(
        (status = 200, body = FilesView),
        (status = 400, description = "A path with `..`, a NUL byte or over 4096 bytes", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "Another environment's share link, or a file the sandbox may not read", body = ErrorResponse),
        (status = 404, description = "No such environment, file or directory", body = ErrorResponse),
        (status = 409, description = "The environment's sandbox is not running", body = ErrorResponse),
        (status = 422, description = "`file_too_large` (over 1 MiB), `not_a_directory`, `not_a_file`", body = ErrorResponse)))]
pub async fn env_files(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<FilesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FilesView>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!("{}; the only parameter is path", e.body_text()))
    })?;
    let envs = environments(&state)?;
    let env = envs.get(&id)?;
    access.check_env(&env.id)?;
    let path = env_path(hangar_envs::workdir(&env), q.path.as_deref())?;
    let envd = envs.envd(&env).await?;
    match envd.list_dir(&path).await {
        Ok(entries) => {
            return Ok(Json(FilesView::Directory {
                path,
                entries: entries.into_iter().map(FileEntryView::from).collect(),
            }));
        }
        Err(e) if e.code() == Some("not_a_directory") => {}
        Err(e) => return Err(file_error(&path, e)),
    }
    // Not a directory: a file (or a path through one, which reading reports).
    let data = envd
        .read_file(&path, 0, Some(MAX_FILE_VIEW))
        .await
        .map_err(|e| file_error(&path, e))?;
    if data.size > MAX_FILE_VIEW {
        return Err(ApiError::invalid(
            "file_too_large",
            format!(
                "{path} is {} bytes; the file view shows files up to {} bytes (1 MiB): read it in a terminal",
                data.size, MAX_FILE_VIEW
            ),
        ));
    }
    let (text, binary) = match String::from_utf8(data.data) {
        Ok(t) => (Some(t), false),
        Err(_) => (None, true),
    };
    Ok(Json(FilesView::File {
        path,
        size: data.size,
        text,
        binary,
    }))
}

/// The repository view of an environment's checkout.
#[derive(Debug, Serialize, ToSchema)]
pub struct RepoStatusView {
    /// The checkout's top directory inside the environment.
    pub path: String,
    /// The current branch; absent when HEAD is detached.
    pub branch: Option<String>,
    /// The upstream branch it tracks, if any (`origin/main`).
    pub upstream: Option<String>,
    /// `git status --short` lines (`XY path`).
    pub status: Vec<String>,
    /// The last commits, newest first (at most 20).
    pub commits: Vec<CommitView>,
}

/// One commit.
#[derive(Debug, PartialEq, Serialize, ToSchema)]
pub struct CommitView {
    /// The full hash.
    pub hash: String,
    /// The author's name.
    pub author: String,
    /// Author time, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The first line of the message.
    pub subject: String,
}

/// The branch and upstream from `git status --short --branch`'s first line
/// (`## main...origin/main [ahead 1]`, `## No commits yet on main`, `## HEAD (no branch)`).
fn parse_branch_line(line: &str) -> (Option<String>, Option<String>) {
    let Some(rest) = line.strip_prefix("## ") else {
        return (None, None);
    };
    let rest = rest
        .strip_prefix("No commits yet on ")
        .or_else(|| rest.strip_prefix("Initial commit on "))
        .unwrap_or(rest);
    if rest.starts_with("HEAD (no branch)") {
        return (None, None);
    }
    let rest = rest.split(" [").next().unwrap_or(rest);
    match rest.split_once("...") {
        Some((branch, upstream)) => (Some(branch.to_string()), Some(upstream.to_string())),
        None => (Some(rest.to_string()), None),
    }
}

/// Commits from `git log --format=%H%x1f%an%x1f%at%x1f%s`.
fn parse_log(out: &str) -> Vec<CommitView> {
    out.lines()
        .filter_map(|line| {
            let mut f = line.splitn(4, '\u{1f}');
            let (hash, author, at, subject) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some(CommitView {
                hash: hash.to_string(),
                author: author.to_string(),
                at_ms: at.parse::<i64>().ok()? * 1000,
                subject: subject.to_string(),
            })
        })
        .collect()
}

/// Runs git in the environment's working directory; its output, or why it failed.
async fn git_in(
    envd: &hangar_envd_client::EnvdClient,
    workdir: &str,
    args: &[&str],
) -> Result<hangar_envd_client::Output, ApiError> {
    let mut argv: Vec<String> = ["git", "-c", "safe.directory=*", "-c", "color.ui=never"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.extend(args.iter().map(|s| s.to_string()));
    envd.output(
        ExecRequest {
            argv,
            cwd: Some(workdir.into()),
            // A view must not take the index lock from someone's `git commit`.
            env: [("GIT_OPTIONAL_LOCKS".to_string(), "0".to_string())].into(),
            timeout_ms: Some(15_000),
            ..Default::default()
        },
        1 << 20,
    )
    .await
    .map_err(|e| match e.code() {
        Some("not_found") => ApiError::invalid(
            "no_repository",
            format!("git is not installed in this environment, or {workdir} is gone"),
        ),
        _ => e.into(),
    })
}

/// The environment's checkout (its working directory): current branch, `git status
/// --short`, the last 20 commits. Read by running git in the sandbox.
#[utoipa::path(get, path = "/api/environments/{id}/repo", tag = "environments", security(("bearer" = [])),
    params(("id" = String, Path, description = "Environment id or name")),
    responses(
        (status = 200, body = RepoStatusView),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "Another environment's share link", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "The environment's sandbox is not running", body = ErrorResponse),
        (status = 422, description = "`no_repository`: the working directory is not a git checkout", body = ErrorResponse)))]
pub async fn env_repo(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Json<RepoStatusView>, ApiError> {
    let envs = environments(&state)?;
    let env = envs.get(&id)?;
    access.check_env(&env.id)?;
    let workdir = hangar_envs::workdir(&env);
    let envd = envs.envd(&env).await?;
    let top = git_in(&envd, workdir, &["rev-parse", "--show-toplevel"]).await?;
    if top.status.code != Some(0) {
        let why = String::from_utf8_lossy(&top.stderr);
        return Err(ApiError::invalid(
            "no_repository",
            format!(
                "environment {} has no git repository at {workdir} ({}); create it with a repository, or run git init there",
                env.name,
                why.lines().next().unwrap_or("git failed").trim()
            ),
        ));
    }
    let status = git_in(&envd, workdir, &["status", "--short", "--branch"]).await?;
    let status_text = String::from_utf8_lossy(&status.stdout);
    let mut lines = status_text.lines();
    let (branch, upstream) = lines.next().map(parse_branch_line).unwrap_or((None, None));
    let changes = lines.map(str::to_string).collect();
    // A repository without commits has no log: that is an empty list, not an error.
    let log = git_in(
        &envd,
        workdir,
        &["log", "-n", "20", "--format=%H%x1f%an%x1f%at%x1f%s"],
    )
    .await?;
    let commits = if log.status.code == Some(0) {
        parse_log(&String::from_utf8_lossy(&log.stdout))
    } else {
        Vec::new()
    };
    Ok(Json(RepoStatusView {
        path: String::from_utf8_lossy(&top.stdout).trim().to_string(),
        branch,
        upstream,
        status: changes,
        commits,
    }))
}

/// Who has terminals open on each environment.
#[derive(Clone, Default)]
pub struct Terminals {
    inner: Arc<Mutex<HashMap<String, Room>>>,
}

struct Room {
    logins: BTreeMap<String, u32>,
    tx: broadcast::Sender<String>,
}

/// One open terminal: leaves its room when dropped.
struct Seat {
    terminals: Terminals,
    env: String,
    login: String,
}

/// `{"type": "presence", ...}` for a room.
fn presence_json(logins: &BTreeMap<String, u32>) -> String {
    let participants: Vec<_> = logins
        .iter()
        .map(|(login, n)| serde_json::json!({"login": login, "terminals": n}))
        .collect();
    serde_json::json!({"type": "presence", "participants": participants}).to_string()
}

impl Terminals {
    fn join(&self, env: &str, login: &str) -> (Seat, broadcast::Receiver<String>) {
        let mut rooms = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = rooms.entry(env.to_string()).or_insert_with(|| Room {
            logins: BTreeMap::new(),
            tx: broadcast::channel(64).0,
        });
        *room.logins.entry(login.to_string()).or_default() += 1;
        let rx = room.tx.subscribe();
        let _ = room.tx.send(presence_json(&room.logins));
        (
            Seat {
                terminals: self.clone(),
                env: env.to_string(),
                login: login.to_string(),
            },
            rx,
        )
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut rooms = self
            .terminals
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(room) = rooms.get_mut(&self.env) {
            if let Some(n) = room.logins.get_mut(&self.login) {
                *n -= 1;
                if *n == 0 {
                    room.logins.remove(&self.login);
                }
            }
            if room.logins.is_empty() {
                rooms.remove(&self.env);
            } else {
                let _ = room.tx.send(presence_json(&room.logins));
            }
        }
    }
}

/// The terminal size asked for in the query (`cols`, `rows`; 80×24 by default). The
/// token (`token`) is read by the authentication layer.
fn terminal_query(raw: Option<&str>) -> Result<PtySize, ApiError> {
    let mut size = PtySize { rows: 24, cols: 80 };
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n = || {
            v.parse::<u16>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{k} must be a whole number from 1 to 1000, got {v:?}"
                    ))
                })
        };
        match k {
            "cols" => size.cols = n()?,
            "rows" => size.rows = n()?,
            "token" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}; use cols and rows"
                )));
            }
        }
    }
    Ok(size)
}

/// What a client may send as text.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum TerminalMessage {
    Resize { cols: u16, rows: u16 },
}

/// A terminal in the environment: a login shell on a PTY in its sandbox, over a
/// WebSocket. Authenticate with `Authorization: Bearer` or `?token=` (an API token, or the
/// environment's share link).
#[utoipa::path(get, path = "/api/environments/{id}/ws", tag = "environments", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "Environment id or name"),
        ("cols" = Option<u16>, Query, description = "Terminal width (default 80)"),
        ("rows" = Option<u16>, Query, description = "Terminal height (default 24)"),
        ("token" = Option<String>, Query, description = "The token, for clients that cannot set headers")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "Another environment's or a session's share link", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "The environment's sandbox is not running", body = ErrorResponse)))]
pub async fn terminal_ws(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let size = terminal_query(query.as_deref())?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::bad_request(format!(
            "this route speaks WebSocket only: {}",
            e.body_text()
        ))
    })?;
    let envs = environments(&state)?;
    let env = envs.get(&id)?;
    access.check_env(&env.id)?;
    let envd = envs.envd(&env).await?;
    // Started before the upgrade, so a sandbox that cannot run a shell is an HTTP error.
    let exec = envd
        .exec(ExecRequest {
            argv: vec!["/bin/bash".into(), "-l".into()],
            cwd: Some(hangar_envs::workdir(&env).into()),
            stdin: true,
            pty: Some(size),
            ..Default::default()
        })
        .await?;
    let (seat, presence) = state.terminals.join(&env.id, &access.author().login);
    let closing = state.closing.subscribe();
    Ok(upgrade.on_upgrade(move |socket| bridge(socket, exec, seat, presence, closing)))
}

/// Why a terminal ends.
enum TerminalEnd {
    /// The shell exited: tell the client how.
    Exited(Option<i32>),
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The client left.
    Gone,
}

async fn bridge(
    mut socket: WebSocket,
    mut exec: hangar_envd_client::Exec,
    _seat: Seat,
    mut presence: broadcast::Receiver<String>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let control = exec.control();
    // Output is read in its own task: reading is not cancel-safe, the select below is.
    let (out_tx, mut out_rx) = mpsc::channel::<ExecEvent>(64);
    let reader = tokio::spawn(async move {
        while let Ok(Some(ev)) = exec.next_event().await {
            let last = matches!(ev, ExecEvent::Exit(_));
            if out_tx.send(ev).await.is_err() || last {
                break;
            }
        }
        // Dropping `exec` closes the connection: envd kills the shell's process group.
    });
    let end = loop {
        tokio::select! {
            ev = out_rx.recv() => match ev {
                Some(ExecEvent::Stdout(d) | ExecEvent::Stderr(d)) => {
                    if socket.send(Message::Binary(d.into())).await.is_err() {
                        break TerminalEnd::Gone;
                    }
                }
                Some(ExecEvent::Exit(status)) => break TerminalEnd::Exited(status.code),
                None => break TerminalEnd::Close(1011, "the terminal's connection to the sandbox ended"),
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if control.send_stdin(&b).await.is_err() {
                        break TerminalEnd::Close(1011, "the sandbox stopped taking input");
                    }
                }
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<TerminalMessage>(&t) {
                    Ok(TerminalMessage::Resize { cols, rows }) if cols > 0 && rows > 0 => {
                        let _ = control.resize(PtySize { rows, cols }).await;
                    }
                    _ => break TerminalEnd::Close(1007, "send input as binary frames and {\"type\":\"resize\",\"cols\",\"rows\"} as text"),
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break TerminalEnd::Gone,
                Some(Ok(_)) => {}
            },
            p = presence.recv() => match p {
                Ok(text) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break TerminalEnd::Gone;
                    }
                }
                // Missed some: the next one carries the whole state anyway.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {}
            },
            _ = closing.changed() => break TerminalEnd::Close(1001, "the server is stopping"),
        }
    };
    reader.abort();
    let close = |code: u16, reason: &str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    match end {
        TerminalEnd::Exited(code) => {
            let msg = serde_json::json!({"type": "exit", "code": code}).to_string();
            let _ = socket.send(Message::Text(msg.into())).await;
            let _ = socket.send(close(1000, "the shell exited")).await;
        }
        TerminalEnd::Close(code, reason) => {
            let _ = socket.send(close(code, reason)).await;
        }
        TerminalEnd::Gone => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_sizes_are_checked() {
        assert_eq!(
            terminal_query(None).ok(),
            Some(PtySize { rows: 24, cols: 80 })
        );
        assert_eq!(
            terminal_query(Some("cols=120&rows=40&token=hgr_x")).ok(),
            Some(PtySize {
                rows: 40,
                cols: 120
            })
        );
        for bad in ["cols=0", "rows=x", "cols=1001", "size=3"] {
            assert!(terminal_query(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_paths_are_absolute_inside_the_environment_and_never_climb() {
        assert_eq!(env_path("/workspace", None).unwrap(), "/workspace");
        assert_eq!(env_path("/workspace", Some("")).unwrap(), "/workspace");
        assert_eq!(
            env_path("/workspace", Some("src/./a.py")).unwrap(),
            "/workspace/src/a.py"
        );
        assert_eq!(
            env_path("/root", Some("/etc//hostname/")).unwrap(),
            "/etc/hostname"
        );
        assert_eq!(env_path("/root", Some("/")).unwrap(), "/");
        for bad in ["../etc/passwd", "/workspace/../../etc", "a/..", "a\0b"] {
            let e = env_path("/workspace", Some(bad)).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_path"),
                "{bad}"
            );
        }
        assert!(env_path("/root", Some(&"a/".repeat(3000))).is_err());
    }

    #[test]
    fn git_status_branch_lines_and_logs_parse() {
        let b = |l: &str| parse_branch_line(l);
        assert_eq!(b("## main"), (Some("main".into()), None));
        assert_eq!(
            b("## main...origin/main [ahead 1, behind 2]"),
            (Some("main".into()), Some("origin/main".into()))
        );
        assert_eq!(
            b("## No commits yet on trunk"),
            (Some("trunk".into()), None)
        );
        assert_eq!(b("## HEAD (no branch)"), (None, None));
        assert_eq!(b("?? stray"), (None, None));
        let log = "abc\u{1f}Ann Author\u{1f}1700000000\u{1f}Fix: a | b\u{1f}c\nbroken line\n";
        assert_eq!(
            parse_log(log),
            [CommitView {
                hash: "abc".into(),
                author: "Ann Author".into(),
                at_ms: 1_700_000_000_000,
                subject: "Fix: a | b\u{1f}c".into(),
            }]
        );
    }

    #[test]
    fn presence_counts_terminals_per_login_and_clears() {
        let t = Terminals::default();
        let (a1, mut rx) = t.join("env-1", "alice");
        let (_a2, _) = t.join("env-1", "alice");
        let (b, _) = t.join("env-1", "bob");
        let mut last = String::new();
        while let Ok(m) = rx.try_recv() {
            last = m;
        }
        assert_eq!(
            last,
            r#"{"participants":[{"login":"alice","terminals":2},{"login":"bob","terminals":1}],"type":"presence"}"#
        );
        drop(b);
        assert!(
            rx.try_recv()
                .unwrap()
                .contains(r#"[{"login":"alice","terminals":2}]"#)
        );
        drop(a1);
        drop(_a2);
        assert!(t.inner.lock().unwrap().is_empty());
    }
}
