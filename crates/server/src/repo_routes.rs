//! The repository registry over HTTP: `/api/repos`. A repository is named `owner/name`,
//! so its routes take the two parts as GitHub's do (`/api/repos/{owner}/{name}`).

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hangar_store::NewRepo;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ErrorResponse;
use crate::extract::JsonBody;
use crate::{ApiError, AppState};

/// A registered repository.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RepoView {
    /// `owner/name`.
    pub name: String,
    /// Where it is cloned from (a path, `file://`, `https://` or `ssh://` URL).
    pub url: String,
    /// The branch sessions start from.
    pub default_branch: String,
    /// What it is.
    pub description: String,
    /// Words and channels that point at it (used to pick a repository for a request).
    pub hints: Vec<String>,
    /// The recipe registered for it (TOML), if any; otherwise the repository's own
    /// `hangar.toml` is used.
    pub recipe: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Last change, likewise.
    pub updated_at_ms: i64,
}

impl From<hangar_store::Repo> for RepoView {
    fn from(r: hangar_store::Repo) -> RepoView {
        RepoView {
            name: r.name,
            url: r.url,
            default_branch: r.default_branch,
            description: r.description,
            hints: r.hints,
            recipe: r.recipe,
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
        }
    }
}

/// What registering a repository takes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRepo {
    /// `owner/name`.
    pub name: String,
    /// Clone URL or path on the server; credentials never go in it.
    pub url: String,
    /// Defaults to `main`.
    #[serde(default)]
    pub default_branch: Option<String>,
    /// What it is.
    #[serde(default)]
    pub description: String,
    /// Words and channels that point at it.
    #[serde(default)]
    pub hints: Vec<String>,
}

/// Registered repositories, by name.
#[utoipa::path(get, path = "/api/repos", tag = "repos", security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<RepoView>),
        (status = 401, body = ErrorResponse)))]
pub async fn list_repos(State(state): State<AppState>) -> Result<Json<Vec<RepoView>>, ApiError> {
    let repos = state.store.repos()?;
    Ok(Json(repos.into_iter().map(RepoView::from).collect()))
}

/// Registers a repository.
#[utoipa::path(post, path = "/api/repos", tag = "repos", security(("bearer" = [])),
    request_body = CreateRepo,
    responses(
        (status = 201, body = RepoView),
        (status = 400, description = "Malformed JSON or wrong types", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 409, description = "A repository of this name is registered", body = ErrorResponse),
        (status = 422, description = "Bad name, URL or branch", body = ErrorResponse)))]
pub async fn create_repo(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<CreateRepo>,
) -> Result<Response, ApiError> {
    check_url(&req.url)?;
    let repo = state.store.add_repo(&NewRepo {
        name: req.name,
        url: req.url,
        default_branch: req.default_branch.unwrap_or_default(),
        description: req.description,
        hints: req.hints,
        created_by: Some(caller.user.id),
    })?;
    tracing::info!(repo = %repo.name, user = %caller.user.login, "repository registered");
    if let Some(builds) = &state.builds {
        builds.look_now(&repo.name);
    }
    let location = format!("/api/repos/{}", repo.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(RepoView::from(repo)),
    )
        .into_response())
}

/// A clone URL must name a remote git understands and carry no credentials: Hangar
/// supplies those from its credential source, so they never reach a log or a sandbox.
fn check_url(url: &str) -> Result<(), ApiError> {
    let invalid = |why: &str| ApiError::invalid("invalid_request", format!("url {url:?}: {why}"));
    if let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    {
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() {
            return Err(invalid("names no host"));
        }
        if authority.contains('@') {
            // The URL itself is not repeated: it holds a secret.
            return Err(ApiError::invalid(
                "invalid_request",
                "url: put no credentials in the URL; Hangar supplies them from its credential source",
            ));
        }
        return Ok(());
    }
    if url.starts_with("file://") || url.starts_with("ssh://") || url.starts_with('/') {
        return Ok(());
    }
    Err(invalid(
        "expected an https://, http://, ssh:// or file:// URL, or an absolute path on the server",
    ))
}

/// One repository.
#[utoipa::path(get, path = "/api/repos/{owner}/{name}", tag = "repos", security(("bearer" = [])),
    params(("owner" = String, Path), ("name" = String, Path)),
    responses(
        (status = 200, body = RepoView),
        (status = 401, body = ErrorResponse),
        (status = 404, description = "Not registered", body = ErrorResponse)))]
pub async fn get_repo(
    State(state): State<AppState>,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<RepoView>, ApiError> {
    Ok(Json(state.store.repo(&format!("{owner}/{name}"))?.into()))
}

/// Removes a repository from the registry; its sessions stay.
#[utoipa::path(delete, path = "/api/repos/{owner}/{name}", tag = "repos", security(("bearer" = [])),
    params(("owner" = String, Path), ("name" = String, Path)),
    responses(
        (status = 200, description = "What was removed", body = RepoView),
        (status = 401, body = ErrorResponse),
        (status = 404, description = "Not registered", body = ErrorResponse)))]
pub async fn delete_repo(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<RepoView>, ApiError> {
    let repo = state.store.remove_repo(&format!("{owner}/{name}"))?;
    tracing::info!(repo = %repo.name, user = %caller.user.login, "repository removed");
    Ok(Json(repo.into()))
}

/// Registers the repository's recipe (the body is the recipe's TOML, as in
/// `hangar.toml`); it is checked before it is stored.
#[utoipa::path(put, path = "/api/repos/{owner}/{name}/recipe", tag = "repos", security(("bearer" = [])),
    params(("owner" = String, Path), ("name" = String, Path)),
    request_body(content = String, content_type = "application/toml", description = "The recipe"),
    responses(
        (status = 200, body = RepoView),
        (status = 401, body = ErrorResponse),
        (status = 404, description = "Not registered", body = ErrorResponse),
        (status = 413, body = ErrorResponse),
        (status = 422, description = "Not a valid recipe; the message says where", body = ErrorResponse)))]
pub async fn put_recipe(
    State(state): State<AppState>,
    Path((owner, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<RepoView>, ApiError> {
    let name = format!("{owner}/{name}");
    state.store.repo(&name)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::invalid("invalid_recipe", "the recipe is not UTF-8 text"))?;
    hangar_images::Recipe::parse(text, Some(&format!("the recipe of {name}")))
        .map_err(|e| ApiError::invalid("invalid_recipe", e.to_string()))?;
    let repo = state.store.set_repo_recipe(&name, Some(text))?;
    if let Some(builds) = &state.builds {
        builds.look_now(&repo.name);
    }
    Ok(Json(repo.into()))
}

/// Removes the registered recipe: builds use the repository's own `hangar.toml` again.
#[utoipa::path(delete, path = "/api/repos/{owner}/{name}/recipe", tag = "repos", security(("bearer" = [])),
    params(("owner" = String, Path), ("name" = String, Path)),
    responses(
        (status = 200, body = RepoView),
        (status = 401, body = ErrorResponse),
        (status = 404, description = "Not registered", body = ErrorResponse)))]
pub async fn delete_recipe(
    State(state): State<AppState>,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<RepoView>, ApiError> {
    Ok(Json(
        state
            .store
            .set_repo_recipe(&format!("{owner}/{name}"), None)?
            .into(),
    ))
}
