//! Images and their builds over HTTP: `/api/images`, `/api/images/builds`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::builds::{BuildView, Builds};
use crate::error::ErrorResponse;
use crate::extract::JsonBody;
use crate::{ApiError, AppState};

/// An image in the layer store.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageView {
    /// Short id (12 hex digits of the manifest digest).
    pub id: String,
    /// The manifest digest.
    pub digest: String,
    /// The repository URL it was built from.
    pub repo: Option<String>,
    /// The commit.
    pub commit: Option<String>,
    /// The recipe's base.
    pub base: String,
    /// Creation time (RFC 3339).
    pub created: Option<String>,
    /// Total size of its layers, bytes.
    pub size: u64,
    /// How many layers.
    pub layers: usize,
    /// True when it is its repository's current image (sessions start from it).
    pub current: bool,
}

/// What starting a build takes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBuild {
    /// A registered repository (`owner/name`).
    pub repo: String,
    /// Branch, tag or commit; its default branch when absent.
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
}

fn builds(state: &AppState) -> Result<&Arc<Builds>, ApiError> {
    state.builds.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "images_unavailable",
            "this server builds no images",
        )
    })
}

/// Every image, with which are current.
#[utoipa::path(get, path = "/api/images", tag = "images", security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<ImageView>),
        (status = 401, body = ErrorResponse),
        (status = 503, description = "This server builds no images", body = ErrorResponse)))]
pub async fn list_images(State(state): State<AppState>) -> Result<Json<Vec<ImageView>>, ApiError> {
    let store = builds(&state)?.images().clone();
    let (images, repos) = tokio::task::spawn_blocking(move || {
        Ok::<_, hangar_images::StoreError>((store.images()?, store.repos()?))
    })
    .await
    .map_err(|e| ApiError::internal(format!("reading the image store: {e}")))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(
        images
            .into_iter()
            .map(|i| ImageView {
                current: repos.values().any(|r| r.current == i.digest),
                id: i.id,
                digest: i.digest,
                repo: i.meta.repo,
                commit: i.meta.commit,
                base: i.meta.base,
                created: i.created,
                size: i.size,
                layers: i.layers.len(),
            })
            .collect(),
    ))
}

/// Starts building a registered repository's image in the background; poll the build for
/// progress. On success the image becomes current and new sessions start from it.
#[utoipa::path(post, path = "/api/images/builds", tag = "images", security(("bearer" = [])),
    request_body = StartBuild,
    responses(
        (status = 202, description = "Started", body = BuildView),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 404, description = "Repository not registered", body = ErrorResponse),
        (status = 409, description = "A build of this repository is running", body = ErrorResponse),
        (status = 503, body = ErrorResponse)))]
pub async fn start_build(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<StartBuild>,
) -> Result<Response, ApiError> {
    let builds = builds(&state)?;
    let repo = state.store.repo(&req.repo)?;
    if let Some(r) = &req.reference {
        hangar_store::check_branch_name(r)?;
    }
    let view = builds.start(&repo, req.reference)?;
    let location = format!("/api/images/builds/{}", view.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

/// Builds, newest first.
#[utoipa::path(get, path = "/api/images/builds", tag = "images", security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<BuildView>),
        (status = 401, body = ErrorResponse),
        (status = 503, body = ErrorResponse)))]
pub async fn list_builds(State(state): State<AppState>) -> Result<Json<Vec<BuildView>>, ApiError> {
    Ok(Json(builds(&state)?.list()))
}

/// One build: its steps, log tail and outcome.
#[utoipa::path(get, path = "/api/images/builds/{id}", tag = "images", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = BuildView),
        (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 503, body = ErrorResponse)))]
pub async fn get_build(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BuildView>, ApiError> {
    builds(&state)?
        .get(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no build {id}")))
}
