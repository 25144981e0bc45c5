//! Session handlers (`/api/sessions/...`, `/api/shares/...`) and their authentication,
//! which accepts API tokens and share-link tokens. Each handler checks what the caller may
//! do ([`Access::check`]), makes one call on [`hangar_session::Sessions`], and encodes the
//! answer. The WebSocket lives in [`crate::session_ws`].

use axum::Extension;
use axum::Json;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hangar_session::MAX_EVENTS_PAGE;
use hangar_store::SHARE_TOKEN_PREFIX;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Caller, bearer};
use crate::error::ErrorResponse;
use crate::extract::JsonBody;
use crate::session_api::{
    Access, CreateSession, CreateShare, Need, PromptBody, PromptView, SessionView, ShareView,
    StopResult, check_after_seq, events_query, query_token,
};
use crate::{ApiError, AppState};

/// Middleware: an API token (`hgr_…`) or a share-link token (`hgs_…`), from
/// `Authorization: Bearer` or, on the WebSocket route only (browsers cannot set headers
/// there), from `?token=`. Puts an [`Access`] in the request.
pub async fn require_access(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = match bearer(&req) {
        Ok(t) => t.to_string(),
        Err(e) => {
            let from_query = req.uri().path().ends_with("/ws")
                && req.headers().get(header::AUTHORIZATION).is_none();
            match req.uri().query().and_then(query_token) {
                Some(t) if from_query => t,
                _ => return e.into_response(),
            }
        }
    };
    let store = state.store.clone();
    let verified = tokio::task::spawn_blocking(move || {
        if token.starts_with(SHARE_TOKEN_PREFIX) {
            match store.verify_share(&token) {
                Ok(link) => Ok(Access::Share(link)),
                // Environments have share links of their own.
                Err(hangar_store::StoreError::InvalidToken) => store
                    .verify_environment_share(&token)
                    .map(|(id, env_id)| Access::EnvShare { id, env_id }),
                Err(e) => Err(e),
            }
        } else {
            store
                .verify_token(&token)
                .map(|(user, token)| Access::User(Caller { user, token }))
        }
    })
    .await;
    match verified {
        Ok(Ok(access)) => {
            req.extensions_mut().insert(access);
            next.run(req).await
        }
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(e) => ApiError::internal(format!("token check failed: {e}")).into_response(),
    }
}

/// Sessions, newest first (at most 100). Users only.
#[utoipa::path(get, path = "/api/sessions", tag = "sessions", security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<SessionView>),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "A share link cannot list sessions", body = ErrorResponse)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    access.check(None, Need::Manage)?;
    let store = state.sessions.store().clone();
    let (list, users) = tokio::task::spawn_blocking(move || {
        Ok::<_, hangar_store::StoreError>((store.sessions(100)?, store.users()?))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let logins: std::collections::HashMap<i64, String> =
        users.into_iter().map(|u| (u.id, u.login)).collect();
    Ok(Json(
        list.into_iter()
            .map(|r| {
                let login = logins.get(&r.created_by).cloned();
                SessionView::new(r, None).with_login(login)
            })
            .collect(),
    ))
}

/// Creates a session, and starts its first prompt when one is given.
#[utoipa::path(post, path = "/api/sessions", tag = "sessions", security(("bearer" = [])),
    request_body = CreateSession,
    responses(
        (status = 201, body = SessionView),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 413, body = ErrorResponse),
        (status = 422, body = ErrorResponse)))]
pub async fn create_session(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    JsonBody(req): JsonBody<CreateSession>,
) -> Result<Response, ApiError> {
    access.check(None, Need::Manage)?;
    let Access::User(caller) = &access else {
        return Err(ApiError::forbidden("only users create sessions"));
    };
    let (repo, title) = req.validate()?;
    if let Some(github) = &state.github {
        // A repository the GitHub App cannot reach is refused before anything starts.
        let url = state
            .store
            .repo(&repo)
            .map(|r| r.url)
            .unwrap_or_else(|_| repo.clone());
        github.check_before_start(&url).await?;
    }
    let record = state.sessions.create(caller.user.id, &repo, &title).await?;
    if let Some(text) = req.prompt {
        state
            .sessions
            .prompt(&record.id, access.author(), text)
            .await?;
    }
    let info = state.sessions.info(&record.id).await?;
    let record = state.sessions.record(&record.id)?;
    tracing::info!(session = %record.id, user = %caller.user.login, "session created");
    let location = format!("/api/sessions/{}", record.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(SessionView::new(record, Some(info)).with_login(Some(caller.user.login.clone()))),
    )
        .into_response())
}

/// A session, with its live state (status, last seq, running prompt, queue).
#[utoipa::path(get, path = "/api/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, body = SessionView),
        (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn get_session(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    access.check(Some(&id), Need::View)?;
    let record = state.sessions.record(&id)?;
    let info = state.sessions.info(&id).await?;
    let login = state.store.user(record.created_by).ok().map(|u| u.login);
    let mut view = SessionView::new(record, Some(info)).with_login(login);
    view.children = Some(
        state
            .store
            .session_children(&id)?
            .into_iter()
            .map(|c| c.id)
            .collect(),
    );
    Ok(Json(view))
}

/// Adds a prompt, attributed to the caller: it starts at once, or queues while the agent
/// works (`status` says which).
#[utoipa::path(post, path = "/api/sessions/{id}/prompts", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    request_body = PromptBody,
    responses(
        (status = 201, body = PromptView),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "A view-only share link, or another session's", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 413, body = ErrorResponse),
        (status = 422, body = ErrorResponse)))]
pub async fn create_prompt(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PromptBody>,
) -> Result<Response, ApiError> {
    access.check(Some(&id), Need::Prompt)?;
    let mut prompt = state
        .sessions
        .prompt(&id, access.author(), body.text)
        .await?;
    let info = state.sessions.info(&id).await?;
    if let Some(running) = info.running.filter(|r| r.id == prompt.id) {
        prompt.status = running.status;
    }
    Ok((StatusCode::CREATED, Json(PromptView::from(prompt))).into_response())
}

/// The prompts waiting, next first.
#[utoipa::path(get, path = "/api/sessions/{id}/queue", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, body = Vec<PromptView>),
        (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn get_queue(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Json<Vec<PromptView>>, ApiError> {
    access.check(Some(&id), Need::View)?;
    let queue = state.sessions.queue(&id).await?;
    Ok(Json(queue.into_iter().map(PromptView::from).collect()))
}

/// Edits a queued prompt's text. Only its author may; a prompt that started is 409.
#[utoipa::path(patch, path = "/api/sessions/{id}/queue/{prompt_id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id"), ("prompt_id" = i64, Path, description = "Prompt id")),
    request_body = PromptBody,
    responses(
        (status = 200, body = PromptView),
        (status = 400, body = ErrorResponse),
        (status = 403, description = "Not the prompt's author", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "No longer queued", body = ErrorResponse),
        (status = 422, body = ErrorResponse)))]
pub async fn edit_prompt(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path((id, prompt_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<PromptBody>,
) -> Result<Json<PromptView>, ApiError> {
    access.check(Some(&id), Need::Prompt)?;
    let prompt_id = parse_prompt_id(&prompt_id)?;
    let p = state
        .sessions
        .edit_prompt(&id, prompt_id, access.author(), body.text)
        .await?;
    Ok(Json(PromptView::from(p)))
}

/// Cancels a queued prompt. Only its author may; a prompt that started is 409.
#[utoipa::path(delete, path = "/api/sessions/{id}/queue/{prompt_id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id"), ("prompt_id" = i64, Path, description = "Prompt id")),
    responses(
        (status = 200, description = "Cancelled", body = PromptView),
        (status = 403, description = "Not the prompt's author", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "No longer queued", body = ErrorResponse)))]
pub async fn cancel_prompt(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path((id, prompt_id)): Path<(String, String)>,
) -> Result<Json<PromptView>, ApiError> {
    access.check(Some(&id), Need::Prompt)?;
    let prompt_id = parse_prompt_id(&prompt_id)?;
    let p = state
        .sessions
        .cancel_prompt(&id, prompt_id, access.author())
        .await?;
    Ok(Json(PromptView::from(p)))
}

fn parse_prompt_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::not_found(format!("no prompt {text:?} in this session")))
}

/// Stops the running prompt at once (its model stream and tool are cancelled) and records
/// it as `stopped`; the queue then goes on with the next prompt.
#[utoipa::path(post, path = "/api/sessions/{id}/stop", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, body = StopResult),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn stop_session(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Json<StopResult>, ApiError> {
    access.check(Some(&id), Need::Prompt)?;
    let stopped = state.sessions.stop(&id).await?;
    Ok(Json(StopResult { stopped }))
}

/// Events after `after_seq` (default 0: from the start), at most `limit` (1-1000, default
/// 1000), in seq order. Page by passing the last seq received as the next `after_seq`.
#[utoipa::path(get, path = "/api/sessions/{id}/events", tag = "sessions", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "Session id"),
        ("after_seq" = Option<u64>, Query, description = "Only events with a larger seq"),
        ("limit" = Option<u32>, Query, description = "At most this many (1-1000)")),
    responses(
        (status = 200, body = Vec<hangar_protocol::session::Event>),
        (status = 400, description = "Bad after_seq or limit", body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn get_events(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    access.check(Some(&id), Need::View)?;
    let (after, limit, _) = events_query(query.as_deref(), MAX_EVENTS_PAGE)?;
    let info = state.sessions.info(&id).await?;
    check_after_seq(after, info.last_seq)?;
    let events = state.sessions.events(&id, after, limit).await?;
    // The log keeps each event's JSON as sent: the body is those texts in an array.
    let mut body =
        String::with_capacity(events.iter().map(|e| e.json.len() + 1).sum::<usize>() + 2);
    body.push('[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&e.json);
    }
    body.push(']');
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Creates a share link: a token that opens this session only, to watch (`view`) or to
/// watch and prompt (`prompt`). The token is shown once. Users only.
#[utoipa::path(post, path = "/api/sessions/{id}/shares", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    request_body = CreateShare,
    responses(
        (status = 201, body = ShareView),
        (status = 400, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 422, body = ErrorResponse)))]
pub async fn create_share(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CreateShare>,
) -> Result<Response, ApiError> {
    access.check(Some(&id), Need::Manage)?;
    let Access::User(caller) = &access else {
        return Err(ApiError::forbidden("only users create share links"));
    };
    let scope = body.scope()?;
    state.sessions.record(&id)?;
    let (link, token) = state
        .sessions
        .store()
        .create_share(&id, scope, caller.user.id)?;
    tracing::info!(session = %id, share = link.id, user = %caller.user.login, "share link created");
    Ok((
        StatusCode::CREATED,
        Json(ShareView::new(link, Some(token.expose().to_string()))),
    )
        .into_response())
}

/// Revokes a share link; its token stops working at once. Its creator or an admin only.
#[utoipa::path(delete, path = "/api/shares/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Share link id")),
    responses(
        (status = 200, body = ShareView),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn delete_share(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Json<ShareView>, ApiError> {
    access.check(None, Need::Manage)?;
    let Access::User(caller) = &access else {
        return Err(ApiError::forbidden("only users revoke share links"));
    };
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("no share link {id:?}")))?;
    let store = state.sessions.store();
    let link = store.share(id)?;
    if link.created_by != caller.user.id && !caller.user.is_admin {
        return Err(ApiError::forbidden(
            "only the share link's creator or an admin may revoke it",
        ));
    }
    let link = store.revoke_share(id)?;
    tracing::info!(share = id, user = %caller.user.login, "share link revoked");
    Ok(Json(ShareView::new(link, None)))
}

/// A session's changes: what its branch holds against the base branch (each prompt's work
/// is committed when the prompt ends).
#[derive(Debug, Serialize, ToSchema)]
pub struct DiffView {
    /// The session's branch (`hangar/<id>`).
    pub branch: String,
    /// The base branch.
    pub base: String,
    /// The branch's last commit; absent before the first commit.
    pub head: Option<String>,
    /// Changed files.
    pub files: Vec<FileDiffView>,
    /// The unified diff, cut at 1 MiB.
    pub patch: String,
    /// True when the patch was cut.
    pub truncated: bool,
}

/// One changed file.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileDiffView {
    /// Path in the repository.
    pub path: String,
    /// Lines added; absent for a binary file.
    pub additions: Option<u64>,
    /// Lines removed; absent for a binary file.
    pub deletions: Option<u64>,
}

/// The session's changes against its base branch.
#[utoipa::path(get, path = "/api/sessions/{id}/diff", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, body = DiffView),
        (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, description = "No such session", body = ErrorResponse),
        (status = 409, description = "The session's repository is not registered: it has no git", body = ErrorResponse)))]
pub async fn get_diff(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Json<DiffView>, ApiError> {
    access.check(Some(&id), Need::View)?;
    let record = state.sessions.record(&id)?;
    let no_git = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_git",
            format!(
                "session {id} works on {}, which is not a registered repository: it has no branch",
                record.repo
            ),
        )
    };
    let worktrees = state.worktrees.as_ref().ok_or_else(no_git)?;
    let diff = worktrees
        .diff(&record.repo, &id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(no_git)?;
    Ok(Json(DiffView {
        branch: diff.branch,
        base: diff.base,
        head: diff.head,
        files: diff
            .files
            .into_iter()
            .map(|f| FileDiffView {
                path: f.path,
                additions: f.additions,
                deletions: f.deletions,
            })
            .collect(),
        patch: diff.patch,
        truncated: diff.truncated,
    }))
}
