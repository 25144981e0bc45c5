//! The session server's HTTP API: health, Prometheus metrics, the OpenAPI document, bearer
//! token auth, the sandbox endpoints ([`routes`]), and sessions: REST (`session_routes`),
//! the WebSocket stream (`session_ws`) and share links, GitHub (`github_routes`: sign-in,
//! the webhook, a session's pull request, stats), the Slack app's endpoints
//! (`slack_routes`, authenticated by Slack's request signature), environments and their
//! terminals (`env_routes`), and the embedded web UI (`web`), which answers every other GET.
//!
//! **API boundary:** HTTP stops here. Handlers decode and validate requests ([`api`]), call
//! the sandbox [`Runtime`] or the [`Store`], and turn every failure into
//! `{"error": {"code", "message"}}` with the right status ([`error`]). Neither the runtime
//! nor the store knows about HTTP.

#![deny(missing_docs)]

pub mod api;
mod auth;
pub mod builds;
pub mod env_routes;
pub mod error;
mod extract;
pub mod github_routes;
mod image_routes;
mod metrics;
mod repo_routes;
mod routes;
pub mod session_api;
mod session_routes;
mod session_ws;
pub mod slack_routes;
mod web;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hangar_sandbox::{Limits, LocalRuntime, Rootfs, Runtime, SandboxError};
use hangar_session::Sessions;
use hangar_store::Store;
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use metrics::Metrics;
pub use web::embedded as web_ui_embedded;

/// The largest request body accepted; larger ones get 413.
pub const BODY_LIMIT: usize = 1 << 20;

/// Turns a `rootfs` argument (`host` or a server path) into a [`Rootfs`]; may unpack a
/// tarball, so it is called off the async threads.
pub type RootfsResolver = dyn Fn(&str) -> Result<Rootfs, SandboxError> + Send + Sync;

/// The sandbox backend the API drives: a [`Runtime`] plus the deployment's defaults.
#[derive(Clone)]
pub struct Backend {
    runtime: Arc<dyn Runtime>,
    default_limits: Limits,
    resolve_rootfs: Arc<RootfsResolver>,
}

impl Backend {
    /// The embedded Linux backend.
    pub fn local(runtime: LocalRuntime) -> Backend {
        let runtime = Arc::new(runtime);
        let resolver = Arc::clone(&runtime);
        Backend {
            default_limits: runtime.default_limits(),
            runtime,
            resolve_rootfs: Arc::new(move |arg: &str| resolver.prepare_rootfs(arg)),
        }
    }

    /// Any runtime (tests use an in-memory one).
    pub fn new(
        runtime: Arc<dyn Runtime>,
        default_limits: Limits,
        resolve_rootfs: Arc<RootfsResolver>,
    ) -> Backend {
        Backend {
            runtime,
            default_limits,
            resolve_rootfs,
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    backend: Backend,
    store: Arc<Store>,
    sessions: Sessions,
    metrics: Metrics,
    /// The warm pool, when sessions take sandboxes from one.
    pool: Option<hangar_pool::Pool>,
    /// GitHub, when configured: sign-in, pull requests, webhooks.
    github: Option<Arc<hangar_github::GitHub>>,
    /// Image builds, when this server builds images.
    pub(crate) builds: Option<Arc<builds::Builds>>,
    /// Sessions' git (branches, diffs), when sessions have it.
    worktrees: Option<Arc<hangar_runner::Worktrees>>,
    /// The Slack app, when configured.
    slack: Option<hangar_slack::SlackBot>,
    /// Set when the server begins to stop: WebSocket connections close with 1001.
    closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// Environments, when the server runs the local sandbox backend.
    envs: Option<hangar_envs::Environments>,
    /// Who has terminals open on which environment.
    terminals: env_routes::Terminals,
}

impl AppState {
    /// The state of one server. `sessions` records its sessions in the same `store`.
    pub fn new(
        backend: Backend,
        store: Arc<Store>,
        sessions: Sessions,
    ) -> Result<AppState, prometheus::Error> {
        Ok(AppState {
            backend,
            store,
            sessions,
            metrics: Metrics::new()?,
            pool: None,
            github: None,
            builds: None,
            worktrees: None,
            slack: None,
            closing: Arc::new(tokio::sync::watch::channel(false).0),
            envs: None,
            terminals: env_routes::Terminals::default(),
        })
    }

    /// Serves environments (`/api/environments`) from `envs`.
    pub fn with_envs(mut self, envs: hangar_envs::Environments) -> AppState {
        self.envs = Some(envs);
        self
    }

    /// Serves GitHub sign-in, pull requests and webhooks with `github`.
    pub fn with_github(mut self, github: Arc<hangar_github::GitHub>) -> AppState {
        self.github = Some(github);
        self
    }

    /// Serves sessions' diffs from `worktrees`.
    pub fn with_git(mut self, worktrees: Arc<hangar_runner::Worktrees>) -> AppState {
        self.worktrees = Some(worktrees);
        self
    }

    /// Serves `/api/images` and builds from `builds`.
    pub fn with_builds(mut self, builds: Arc<builds::Builds>) -> AppState {
        self.builds = Some(builds);
        self
    }

    /// Serves the Slack app's endpoints with `bot`.
    pub fn with_slack(mut self, bot: hangar_slack::SlackBot) -> AppState {
        self.slack = Some(bot);
        self
    }

    /// Shows `pool`'s figures at `/api/pool` and on `/metrics`.
    pub fn with_pool(mut self, pool: hangar_pool::Pool) -> AppState {
        self.pool = Some(pool);
        self
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hangar API",
        description = "Self-hosted background coding agents and sandboxes. Everything under /api needs `Authorization: Bearer TOKEN`; errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    modifiers(&BearerAuth),
    components(schemas(
        error::ErrorResponse,
        error::ErrorBody,
        hangar_protocol::session::Event,
        hangar_protocol::session::EventBody,
        hangar_protocol::session::PresenceUpdate,
        hangar_protocol::session::ClientMessage
    ))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of this server, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    parts().3
}

/// The routes of one part of the API.
type Part = Router<AppState>;

/// The public routes, the routes that need an API token, the session routes (an API token
/// or a share link's token), and the document describing them all.
fn parts() -> (Part, Part, Part, utoipa::openapi::OpenApi) {
    let (public, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::healthz))
        .routes(routes!(routes::metrics))
        .routes(routes!(github_routes::github_login))
        .routes(routes!(github_routes::github_callback))
        .routes(routes!(github_routes::github_webhook))
        .routes(routes!(slack_routes::events))
        .routes(routes!(slack_routes::commands))
        .routes(routes!(slack_routes::interactivity))
        .split_for_parts();
    let (api, api_doc) = OpenApiRouter::new()
        .routes(routes!(routes::me))
        .routes(routes!(routes::list_sandboxes, routes::create_sandbox))
        .routes(routes!(routes::get_sandbox, routes::delete_sandbox))
        .routes(routes!(routes::exec))
        .routes(routes!(routes::pool_stats))
        .routes(routes!(routes::typing))
        .routes(routes!(
            env_routes::list_environments,
            env_routes::create_environment
        ))
        .routes(routes!(github_routes::open_pr, github_routes::get_pr))
        .routes(routes!(github_routes::stats))
        .routes(routes!(repo_routes::list_repos, repo_routes::create_repo))
        .routes(routes!(repo_routes::get_repo, repo_routes::delete_repo))
        .routes(routes!(repo_routes::put_recipe, repo_routes::delete_recipe))
        .routes(routes!(image_routes::list_images))
        .routes(routes!(
            image_routes::list_builds,
            image_routes::start_build
        ))
        .routes(routes!(image_routes::get_build))
        .routes(routes!(slack_routes::link))
        .split_for_parts();
    doc.merge(api_doc);
    let (sessions, sessions_doc) = OpenApiRouter::new()
        .routes(routes!(
            session_routes::list_sessions,
            session_routes::create_session
        ))
        .routes(routes!(session_routes::get_session))
        .routes(routes!(session_routes::create_prompt))
        .routes(routes!(session_routes::get_queue))
        .routes(routes!(
            session_routes::edit_prompt,
            session_routes::cancel_prompt
        ))
        .routes(routes!(session_routes::stop_session))
        .routes(routes!(session_routes::get_events))
        .routes(routes!(session_routes::get_diff))
        .routes(routes!(session_routes::create_share))
        .routes(routes!(session_routes::delete_share))
        .routes(routes!(session_ws::session_ws))
        .routes(routes!(
            env_routes::get_environment,
            env_routes::delete_environment
        ))
        .routes(routes!(env_routes::terminal_ws))
        .routes(routes!(env_routes::env_files))
        .routes(routes!(env_routes::env_repo))
        .split_for_parts();
    doc.merge(sessions_doc);
    (public, api, sessions, doc)
}

/// The whole HTTP application, ready to serve or to call in-process.
pub fn app(state: AppState) -> Router {
    let (public, api, sessions, doc) = parts();
    let doc_json = Arc::new(doc.to_json().unwrap_or_else(|_| "{}".into()));
    let public = public.route(
        "/openapi.json",
        axum::routing::get(move || {
            let doc = Arc::clone(&doc_json);
            async move { ([(header::CONTENT_TYPE, "application/json")], (*doc).clone()) }
        }),
    );
    let api = api.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    let sessions = sessions.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        session_routes::require_access,
    ));
    public
        .merge(api)
        .merge(sessions)
        .fallback(web::fallback)
        .method_not_allowed_fallback(|| async {
            ApiError::from_status(StatusCode::METHOD_NOT_ALLOWED)
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::track_request,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Bodies declared larger than this are not read to the end before the 413: the
/// connection is closed instead.
const DRAIN_LIMIT: u64 = 16 << 20;

/// A body declared larger than [`BODY_LIMIT`] is refused with 413, after reading (and
/// dropping) the rest of it: a client still sending would otherwise see the connection
/// reset instead of the answer.
async fn refuse_oversized(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(n) if n > BODY_LIMIT as u64 => {
            if n <= DRAIN_LIMIT {
                use futures_util::StreamExt;
                let mut body = req.into_body().into_data_stream();
                while let Some(Ok(_)) = body.next().await {}
            }
            ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE).into_response()
        }
        _ => next.run(req).await,
    }
}

/// Every error leaves as JSON, whoever produced it (the router's own 404/405, a body limit,
/// a caught panic): clients parse one shape.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let allow = resp.headers().get(header::ALLOW).cloned();
        let mut out = ApiError::from_status(status).into_response();
        if let Some(allow) = allow {
            out.headers_mut().insert(header::ALLOW, allow);
        }
        return out;
    }
    resp
}

/// Serves the API on `listener` until `shutdown` completes, then finishes the requests in
/// flight. Sandboxes outlive the server: they are not stopped.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = Arc::clone(&state.closing);
    let signal = Arc::clone(&closing);
    let result = axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            // WebSocket connections were handed off by the HTTP server, which no longer
            // waits for them: tell them to close, with 1001 "going away".
            signal.send_replace(true);
        })
        .await;
    // Give them a moment to send their close frames.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while closing.receiver_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    result
}
