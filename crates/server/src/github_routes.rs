//! GitHub over HTTP: sign-in (`/auth/github/login` redirects to GitHub, the callback
//! answers with a Hangar API token), the webhook (`POST /webhooks/github`, authenticated by
//! its signature, not by a Hangar token), a session's pull request (opened with the
//! caller's own GitHub token) and the pull request stats. The work is `hangar-github`'s;
//! this module decodes requests and maps its errors.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hangar_github::{GitHub, GitHubError};
use hangar_protocol::session::EventBody;
use hangar_store::{PrStats, PullRequest};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::Me;
use crate::auth::Caller;
use crate::error::ErrorResponse;
use crate::extract::JsonBody;
use crate::{ApiError, AppState};

impl From<GitHubError> for ApiError {
    fn from(e: GitHubError) -> Self {
        let message = e.to_string();
        match e {
            GitHubError::Invalid(_) => ApiError::invalid("invalid_request", message),
            GitHubError::NotConfigured(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "github_not_configured",
                message,
            ),
            GitHubError::NotInstalled { .. } => {
                ApiError::invalid("github_app_not_installed", message)
            }
            GitHubError::SignInRequired(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "github_sign_in_required", message)
            }
            GitHubError::Forbidden { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "github_forbidden", message)
            }
            GitHubError::NotFound { .. } => ApiError::not_found(message),
            GitHubError::Rejected { .. } => ApiError::invalid("github_rejected", message),
            GitHubError::Unauthorized { .. }
            | GitHubError::Api { .. }
            | GitHubError::Transport { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "github_error", message)
            }
            GitHubError::OAuth(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "sign_in_failed", message)
            }
            GitHubError::BadSignature => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", message)
            }
            GitHubError::Replayed(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "replayed_delivery", message)
            }
            GitHubError::Store(e) => e.into(),
            _ => ApiError::internal(message),
        }
    }
}

fn github(state: &AppState) -> Result<&Arc<GitHub>, ApiError> {
    state.github.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "github_not_configured",
            "GitHub is not configured on this server: add a [github] section (docs/github.md)",
        )
    })
}

/// `GET /auth/github/callback` parameters.
#[derive(Debug, Deserialize, IntoParams)]
pub struct CallbackQuery {
    /// The code to exchange.
    pub code: Option<String>,
    /// The `state` Hangar issued.
    pub state: Option<String>,
    /// Set by GitHub when the person refused.
    pub error: Option<String>,
    /// GitHub's explanation of `error`.
    pub error_description: Option<String>,
}

/// A completed sign-in.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignInView {
    /// The Hangar user linked to the GitHub account.
    pub user: Me,
    /// A new Hangar API token, shown only this once.
    pub token: String,
    /// True when this sign-in created the user.
    pub created: bool,
}

/// `POST /api/sessions/{id}/pr`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenPrBody {
    /// Title; the session's title by default.
    #[serde(default)]
    pub title: Option<String>,
    /// Description.
    #[serde(default)]
    pub body: Option<String>,
    /// Branch to merge into; the repository's default branch by default.
    #[serde(default)]
    pub base: Option<String>,
}

/// A session's pull request and what happened to it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PullRequestView {
    /// `owner/name`.
    pub repo: String,
    /// Number.
    pub number: i64,
    /// Web address.
    pub url: String,
    /// Title.
    pub title: String,
    /// `open`, `closed` or `merged`.
    pub state: String,
    /// The branch it merges (`hangar/<session id>`).
    pub head_branch: String,
    /// The session.
    pub session_id: Option<String>,
    /// The Hangar user who opened it.
    pub author_user_id: Option<i64>,
    /// Milliseconds since the Unix epoch.
    pub opened_at_ms: i64,
    /// When merged.
    pub merged_at_ms: Option<i64>,
    /// When closed.
    pub closed_at_ms: Option<i64>,
    /// When first reviewed.
    pub first_review_at_ms: Option<i64>,
    /// Reviews submitted.
    pub reviews: i64,
    /// Approvals.
    pub approvals: i64,
    /// Pushes after the first review.
    pub revisions: i64,
    /// Lines the agent added (its commits on the session's branch), when known.
    pub agent_lines: Option<i64>,
    /// Lines added in total (GitHub's count at merge), when known.
    pub total_lines: Option<i64>,
    /// True when it existed already (opening it again returned it).
    #[serde(default)]
    pub existed: bool,
}

impl PullRequestView {
    fn new(pr: PullRequest, existed: bool) -> PullRequestView {
        PullRequestView {
            repo: pr.repo,
            number: pr.number,
            url: pr.url,
            title: pr.title,
            state: pr.state,
            head_branch: pr.head_branch,
            session_id: pr.session_id,
            author_user_id: pr.author_user_id,
            opened_at_ms: pr.opened_at_ms,
            merged_at_ms: pr.merged_at_ms,
            closed_at_ms: pr.closed_at_ms,
            first_review_at_ms: pr.first_review_at_ms,
            reviews: pr.reviews,
            approvals: pr.approvals,
            revisions: pr.pushes_after_review,
            agent_lines: pr.agent_lines,
            total_lines: pr.total_lines,
            existed,
        }
    }
}

/// Pull request figures.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatsFigures {
    /// Pull requests opened.
    pub prs_opened: u64,
    /// Merged.
    pub prs_merged: u64,
    /// Closed without merging.
    pub prs_closed_unmerged: u64,
    /// Median time from opening to merging, seconds.
    pub median_time_to_merge_secs: Option<f64>,
    /// Of the reviewed pull requests, the share approved at least once.
    pub approval_rate: Option<f64>,
    /// Pushes after the first review, summed.
    pub revisions: u64,
    /// In merged pull requests with known counts, lines added by the agent over all lines
    /// added.
    pub agent_code_share: Option<f64>,
}

impl From<&PrStats> for StatsFigures {
    fn from(s: &PrStats) -> Self {
        StatsFigures {
            prs_opened: s.opened,
            prs_merged: s.merged,
            prs_closed_unmerged: s.closed_unmerged,
            median_time_to_merge_secs: s.median_time_to_merge_secs,
            approval_rate: s.approval_rate,
            revisions: s.revisions,
            agent_code_share: s.agent_code_share,
        }
    }
}

/// `GET /api/stats`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatsView {
    /// All repositories together.
    pub overall: StatsFigures,
    /// Per repository (`owner/name`).
    pub repos: BTreeMap<String, StatsFigures>,
    /// From sessions to merged pull requests, and activity per day.
    pub usage: UsageView,
    /// The people who added a prompt in the last five minutes (logins, sorted). Counted
    /// since this server started.
    pub prompting_now: Vec<String>,
}

/// How many days of activity `GET /api/stats` shows.
pub const USAGE_DAYS: u32 = 30;

/// From sessions to merged pull requests, and activity per UTC day.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    /// Sessions ever started.
    pub sessions: u64,
    /// ... of which opened a pull request.
    pub sessions_with_pr: u64,
    /// ... of which had a pull request merged.
    pub sessions_merged: u64,
    /// The last 30 UTC days, oldest first, quiet days included.
    pub days: Vec<UsageDayView>,
}

/// One UTC day's activity.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageDayView {
    /// The day's start, milliseconds since the Unix epoch.
    pub day_ms: i64,
    /// Sessions started.
    pub sessions: u64,
    /// Pull requests opened.
    pub prs_opened: u64,
    /// Pull requests merged.
    pub prs_merged: u64,
}

impl From<hangar_store::Usage> for UsageView {
    fn from(u: hangar_store::Usage) -> Self {
        UsageView {
            sessions: u.sessions,
            sessions_with_pr: u.sessions_with_pr,
            sessions_merged: u.sessions_merged,
            days: u
                .days
                .into_iter()
                .map(|d| UsageDayView {
                    day_ms: d.day_ms,
                    sessions: d.sessions,
                    prs_opened: d.prs_opened,
                    prs_merged: d.prs_merged,
                })
                .collect(),
        }
    }
}

/// Starts a sign-in with GitHub: redirects to GitHub's authorize page with a new,
/// single-use `state`.
#[utoipa::path(get, path = "/auth/github/login", tag = "github",
    responses(
        (status = 302, description = "To GitHub's authorize page"),
        (status = 503, description = "GitHub sign-in is not configured", body = ErrorResponse)))]
pub async fn github_login(State(state): State<AppState>) -> Result<Response, ApiError> {
    let url = github(&state)?.login_url()?;
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, url),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
    )
        .into_response())
}

/// Where GitHub sends people back: checks and consumes `state`, exchanges `code`, links
/// the GitHub account to a Hangar user (created on first sign-in) and answers with a new
/// Hangar API token.
#[utoipa::path(get, path = "/auth/github/callback", tag = "github",
    params(CallbackQuery),
    responses(
        (status = 200, body = SignInView),
        (status = 400, description = "Unknown, used or expired state; bad code; refused", body = ErrorResponse),
        (status = 502, description = "GitHub failed", body = ErrorResponse),
        (status = 503, body = ErrorResponse)))]
pub async fn github_callback(
    State(state): State<AppState>,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let gh = github(&state)?;
    if let Some(error) = q.error {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "sign_in_failed",
            format!(
                "GitHub sign-in failed: {} ({error})",
                q.error_description.unwrap_or_default()
            ),
        ));
    }
    let (Some(code), Some(st)) = (q.code, q.state) else {
        return Err(ApiError::bad_request(
            "the callback needs the code and state parameters GitHub sends",
        ));
    };
    let signed = gh.sign_in(&code, &st).await?;
    let view = SignInView {
        user: Me::new(signed.user, "GitHub sign-in".into()),
        token: signed.token.expose().to_string(),
        created: signed.created,
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(view)).into_response())
}

/// Records the lines the agent added on the session's branch (every commit there is the
/// agent's work, committed for the prompt's author) as the pull request's agent lines,
/// from the host mirror; GitHub's own count, at merge, is the total.
async fn record_agent_lines(state: &AppState, session_id: &str, repo: &str, number: i64) {
    let (Some(worktrees), Ok(session)) = (&state.worktrees, state.sessions.record(session_id))
    else {
        return;
    };
    match worktrees.diff(&session.repo, session_id).await {
        Ok(Some(diff)) => {
            let added: u64 = diff.files.iter().filter_map(|f| f.additions).sum();
            let added = i64::try_from(added).unwrap_or(i64::MAX);
            if let Err(e) = state.store.set_pr_lines(repo, number, added, None) {
                tracing::warn!(session = %session_id, "recording the agent's lines: {e}");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(session = %session_id, "reading the session's diff: {e}"),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// GitHub's webhook: `X-Hub-Signature-256` must match the configured secret and
/// `X-GitHub-Delivery` must be new. Pull request, review and review comment events update
/// the pull request's record and are appended to its session's log; a review comment can
/// become a follow-up prompt.
#[utoipa::path(post, path = "/webhooks/github", tag = "github",
    request_body(content = String, description = "GitHub's JSON payload, as sent", content_type = "application/json"),
    responses(
        (status = 204, description = "Applied (or nothing to do)"),
        (status = 400, description = "Missing headers or undecodable payload", body = ErrorResponse),
        (status = 401, description = "Bad signature, or a delivery received before", body = ErrorResponse),
        (status = 503, body = ErrorResponse)))]
pub async fn github_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let gh = github(&state)?.clone();
    let event = header_str(&headers, "x-github-event").map(String::from);
    let delivery = header_str(&headers, "x-github-delivery").map(String::from);
    let signature = header_str(&headers, "x-hub-signature-256").map(String::from);
    let outcome = tokio::task::spawn_blocking(move || {
        gh.handle_webhook(
            event.as_deref(),
            delivery.as_deref(),
            signature.as_deref(),
            &body,
        )
    })
    .await
    .map_err(|e| ApiError::internal(format!("handling the webhook: {e}")))?
    .map_err(|e| match e {
        GitHubError::Invalid(m) => ApiError::bad_request(m),
        e => e.into(),
    })?;
    if let Some(session) = &outcome.session_id {
        if let Some(pr) = outcome
            .pull_request
            .as_ref()
            .filter(|p| p.state == "merged")
        {
            record_agent_lines(&state, session, &pr.repo, pr.number).await;
        }
        for event in outcome.events {
            if let Err(e) = state.sessions.append_event(session, event).await {
                tracing::warn!(session = %session, "recording a pull request event: {e}");
            }
        }
        if let Some((author, text)) = outcome.follow_up
            && let Err(e) = state.sessions.prompt(session, author, text).await
        {
            tracing::warn!(session = %session, "queueing a review comment as a prompt: {e}");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Opens the pull request of the session's branch (`hangar/<session id>`) with the
/// caller's own GitHub token, so the caller cannot approve it themselves. When one is
/// open for the branch already, that one is returned (200).
#[utoipa::path(post, path = "/api/sessions/{id}/pr", tag = "github", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    request_body = OpenPrBody,
    responses(
        (status = 201, description = "Opened", body = PullRequestView),
        (status = 200, description = "It was open already", body = PullRequestView),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "Sign in with GitHub first, or the App lacks a permission", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 422, description = "Not a GitHub repository, or GitHub rejected it", body = ErrorResponse),
        (status = 503, body = ErrorResponse)))]
pub async fn open_pr(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<OpenPrBody>,
) -> Result<Response, ApiError> {
    let gh = github(&state)?;
    let session = state.sessions.record(&id)?;
    let (opened, record) = gh
        .open_pull_request(&caller.user, &session, body.title, body.body, body.base)
        .await?;
    record_agent_lines(&state, &id, &record.repo, record.number).await;
    if !opened.existed {
        let event = EventBody::PrOpened {
            number: opened.number.max(0) as u64,
            url: opened.url.clone(),
            title: opened.title.clone(),
        };
        if let Err(e) = state.sessions.append_event(&id, event).await {
            tracing::warn!(session = %id, "recording pr.opened: {e}");
        }
    }
    tracing::info!(session = %id, user = %caller.user.login, number = opened.number, "pull request opened");
    let status = if opened.existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(PullRequestView::new(record, opened.existed))).into_response())
}

/// The session's pull request, if one was opened.
#[utoipa::path(get, path = "/api/sessions/{id}/pr", tag = "github", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, body = PullRequestView),
        (status = 401, body = ErrorResponse),
        (status = 404, description = "No such session, or no pull request yet", body = ErrorResponse)))]
pub async fn get_pr(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PullRequestView>, ApiError> {
    state.sessions.record(&id)?;
    let pr = state
        .store
        .session_pull_request(&id)?
        .ok_or_else(|| ApiError::not_found(format!("session {id} has no pull request yet")))?;
    Ok(Json(PullRequestView::new(pr, false)))
}

/// Pull request figures, overall and per repository: opened, merged, median time to
/// merge, approval rate, revisions (pushes after the first review), agent-written share.
#[utoipa::path(get, path = "/api/stats", tag = "github", security(("bearer" = [])),
    responses(
        (status = 200, body = StatsView),
        (status = 401, body = ErrorResponse)))]
pub async fn stats(State(state): State<AppState>) -> Result<Json<StatsView>, ApiError> {
    let (per_repo, overall) = state.store.pr_stats()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let usage = state.store.usage(USAGE_DAYS, now)?;
    Ok(Json(StatsView {
        overall: StatsFigures::from(&overall),
        repos: per_repo
            .iter()
            .map(|(repo, s)| (repo.clone(), StatsFigures::from(s)))
            .collect(),
        usage: usage.into(),
        prompting_now: state.sessions.prompting_since(now - 5 * 60_000),
    }))
}
