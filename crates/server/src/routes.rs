//! Handlers: each decodes its request, makes one call on the runtime or the store, and
//! encodes the answer. The `#[utoipa::path]` attributes are the OpenAPI document.

use std::time::{Duration, Instant};

use axum::Extension;
use axum::Json;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hangar_sandbox::SandboxSpec;

use crate::api::{
    self, CreateSandbox, ExecBody, ExecResult, Health, Me, SandboxView, valid_sandbox_id,
};
use crate::auth::Caller;
use crate::error::ErrorResponse;
use crate::extract::JsonBody;
use crate::session_api::{TypingBody, TypingView, valid_repo};
use crate::{ApiError, AppState};

/// Middleware: counts every answered request by method, route template and status.
pub async fn track_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    state.metrics.observe_request(
        &method,
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

/// Liveness: answers as long as the server runs.
#[utoipa::path(get, path = "/healthz", tag = "server",
    responses((status = 200, description = "The server is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "server",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let list = state.backend.runtime.list().await?;
    let mut counts = [("creating", 0), ("running", 0), ("stopped", 0), ("dead", 0)];
    for sb in &list {
        let i = match SandboxView::from(sb).status {
            api::SandboxState::Creating => 0,
            api::SandboxState::Running => 1,
            api::SandboxState::Stopped => 2,
            api::SandboxState::Dead => 3,
        };
        counts[i].1 += 1;
    }
    state.metrics.set_sandboxes(&counts);
    let (loads, unloads) = state.sessions.load_counts();
    state
        .metrics
        .set_sessions(state.sessions.loaded(), loads, unloads);
    if let Some(pool) = &state.pool {
        state.metrics.set_pool(&pool.stats().await);
    }
    let (per_repo, overall) = state.store.pr_stats()?;
    state.metrics.set_pull_requests(&per_repo, &overall);
    let text = state.metrics.render().map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The warm pool: idle sandboxes per repository, hits, misses, mean claim time, drafts
/// holding a reserved sandbox.
#[utoipa::path(get, path = "/api/pool", tag = "sandboxes", security(("bearer" = [])),
    responses(
        (status = 200, body = api::PoolView),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse)))]
pub async fn pool_stats(State(state): State<AppState>) -> Json<api::PoolView> {
    let stats = match &state.pool {
        Some(pool) => pool.stats().await,
        None => hangar_pool::PoolStats::default(),
    };
    Json(api::PoolView::from(&stats))
}

/// The user the token belongs to.
#[utoipa::path(get, path = "/api/me", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, body = Me),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse)))]
pub async fn me(Extension(caller): Extension<Caller>) -> Json<Me> {
    Json(Me::new(caller.user, caller.token.name))
}

/// Predictive warm-up for a draft that has no session yet (the new-session form): the
/// caller is typing a prompt for `repo`, so the warm pool reserves a sandbox for them,
/// which their session's first prompt then takes. Answers at once; the reservation is
/// made in the background and released if no prompt follows.
#[utoipa::path(post, path = "/api/typing", tag = "sessions", security(("bearer" = [])),
    request_body = TypingBody,
    responses(
        (status = 202, body = TypingView),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 422, body = ErrorResponse)))]
pub async fn typing(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<TypingBody>,
) -> Result<Response, ApiError> {
    let repo = valid_repo(&body.repo)?.to_string();
    let warming = match state.pool.clone() {
        Some(pool) => {
            let login = caller.user.login.clone();
            tokio::spawn(async move {
                match pool.typing(&login, &repo).await {
                    Ok(()) => {}
                    // No image yet: the session's first prompt registers one.
                    Err(hangar_pool::PoolError::UnknownRepo(_)) => {}
                    Err(e) => tracing::warn!(%repo, "warm-up for a draft failed: {e}"),
                }
            });
            true
        }
        None => false,
    };
    Ok((StatusCode::ACCEPTED, Json(TypingView { warming })).into_response())
}

/// All sandboxes, oldest first, with what each serves. Index entries of sandboxes that
/// are gone (removed outside the server) are closed here.
#[utoipa::path(get, path = "/api/sandboxes", tag = "sandboxes", security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<SandboxView>),
        (status = 401, body = ErrorResponse)))]
pub async fn list_sandboxes(
    State(state): State<AppState>,
) -> Result<Json<Vec<SandboxView>>, ApiError> {
    let list = state.backend.runtime.list().await?;
    let mut records: std::collections::HashMap<String, hangar_store::SandboxRecord> = state
        .store
        .sandbox_records(false, 100_000)?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let views = list
        .iter()
        .map(|sb| SandboxView::from(sb).with_record(records.remove(&sb.id)))
        .collect();
    for gone in records.keys() {
        state.store.sandbox_ended(gone)?;
    }
    Ok(Json(views))
}

/// Creates and starts a sandbox; answers once it can run commands.
#[utoipa::path(post, path = "/api/sandboxes", tag = "sandboxes", security(("bearer" = [])),
    request_body = CreateSandbox,
    responses(
        (status = 201, description = "Running", body = SandboxView),
        (status = 400, description = "Malformed JSON or wrong types", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 413, body = ErrorResponse),
        (status = 422, description = "Impossible spec (bad size, missing rootfs, ...)", body = ErrorResponse)))]
pub async fn create_sandbox(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<CreateSandbox>,
) -> Result<Response, ApiError> {
    let (limits, network) = req.limits_and_network(state.backend.default_limits)?;
    let arg = req.rootfs_arg().to_string();
    if arg != "host" && !arg.starts_with('/') {
        return Err(ApiError::invalid(
            "invalid_spec",
            format!("rootfs {arg:?}: use \"host\" or an absolute path on the server"),
        ));
    }
    let resolve = state.backend.resolve_rootfs.clone();
    let rootfs = tokio::task::spawn_blocking(move || resolve(&arg))
        .await
        .map_err(|e| ApiError::internal(format!("preparing the rootfs: {e}")))??;
    let sb = state
        .backend
        .runtime
        .create(SandboxSpec {
            rootfs,
            limits,
            network,
        })
        .await?;
    tracing::info!(sandbox = %sb.id, user = %caller.user.login, "sandbox created");
    state
        .store
        .record_sandbox(&sb.id, "api", None, Some(caller.user.id))?;
    let location = format!("/api/sandboxes/{}", sb.id);
    let view = SandboxView::from(&sb).with_record(state.store.sandbox_record(&sb.id)?);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if valid_sandbox_id(id) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no sandbox with id {id}")))
    }
}

/// One sandbox.
#[utoipa::path(get, path = "/api/sandboxes/{id}", tag = "sandboxes", security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, body = SandboxView),
        (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn get_sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SandboxView>, ApiError> {
    check_id(&id)?;
    let sb = state.backend.runtime.get(&id).await?;
    Ok(Json(
        SandboxView::from(&sb).with_record(state.store.sandbox_record(&id)?),
    ))
}

/// Stops a sandbox and removes everything it had.
#[utoipa::path(delete, path = "/api/sandboxes/{id}", tag = "sandboxes", security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 204, description = "Gone"),
        (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn delete_sandbox(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_id(&id)?;
    state.backend.runtime.destroy(&id).await?;
    state.store.sandbox_ended(&id)?;
    tracing::info!(sandbox = %id, user = %caller.user.login, "sandbox destroyed");
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a command to its end and returns its exit status and output (each stream capped
/// at 1 MiB). Streaming exec comes with the WebSocket API.
#[utoipa::path(post, path = "/api/sandboxes/{id}/exec", tag = "sandboxes", security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ExecBody,
    responses(
        (status = 200, description = "The command ran (whatever its exit code)", body = ExecResult),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 409, description = "The sandbox is not running", body = ErrorResponse),
        (status = 422, description = "Invalid request, or the program or cwd does not exist", body = ErrorResponse)))]
pub async fn exec(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ExecBody>,
) -> Result<Json<ExecResult>, ApiError> {
    check_id(&id)?;
    let req = body.to_envd()?;
    // envd enforces the timeout; this guard only covers envd itself hanging.
    let guard = Duration::from_millis(req.timeout_ms.unwrap_or(0)) + Duration::from_secs(10);
    let envd = state.backend.runtime.envd(&id).await?;
    let out = tokio::time::timeout(guard, envd.output(req, api::EXEC_OUTPUT_LIMIT))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "envd did not answer within the command's timeout",
            )
        })??;
    Ok(Json(ExecResult::from(out)))
}
