//! The Slack app's endpoints. `/slack/events`, `/slack/commands` and `/slack/interactivity`
//! are called by Slack and authenticated by its request signature, not by Hangar tokens:
//! the raw body is verified before anything is decoded, and a bad signature or a stale
//! timestamp is 401 with nothing started. `POST /api/slack/link` links a Slack user to the
//! calling Hangar user with a one-time code the bot gave them. What the bot does lives in
//! `hangar-slack`; HTTP stops here.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hangar_slack::{EventsAnswer, LinkError, SlackBot};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ErrorResponse;
use crate::extract::JsonBody;
use crate::{ApiError, AppState};

/// `POST /api/slack/link`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkBody {
    /// The code the bot sent in Slack.
    pub code: String,
}

/// A Slack user now linked to the caller.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LinkView {
    /// The Slack workspace.
    pub team_id: String,
    /// The Slack user.
    pub slack_user: String,
}

/// The bot, once the request's signature checks out.
fn verified(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<SlackBot, ApiError> {
    let bot = state.slack.clone().ok_or_else(not_configured)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    bot.verify(
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        body,
    )
    .map_err(|e| {
        tracing::warn!("Slack request refused: {e}");
        ApiError::unauthorized(e.to_string())
    })?;
    Ok(bot)
}

fn not_configured() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "slack_not_configured",
        "Slack is not configured on this server ([slack] in hangar.toml)",
    )
}

/// Events API deliveries (`url_verification`, `event_callback`). Answered at once; the
/// work goes on in the background. A retry (`X-Slack-Retry-Num`) of a delivery already
/// handled is acknowledged and dropped.
#[utoipa::path(post, path = "/slack/events", tag = "slack",
    request_body(content = String, content_type = "application/json",
        description = "An Events API envelope, signed with X-Slack-Signature"),
    responses(
        (status = 200, description = "Acknowledged; for url_verification, `{\"challenge\"}`"),
        (status = 400, body = ErrorResponse),
        (status = 401, description = "Bad signature or stale timestamp", body = ErrorResponse),
        (status = 404, description = "Slack is not configured", body = ErrorResponse)))]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let bot = verified(&state, &headers, &body)?;
    if let Some(n) = headers
        .get("x-slack-retry-num")
        .and_then(|v| v.to_str().ok())
    {
        let reason = headers
            .get("x-slack-retry-reason")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        tracing::info!(retry = n, reason, "Slack redelivered an event");
    }
    match bot
        .on_events(&body)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?
    {
        EventsAnswer::Challenge(challenge) => {
            Ok(Json(serde_json::json!({ "challenge": challenge })).into_response())
        }
        EventsAnswer::Ack => Ok(StatusCode::OK.into_response()),
    }
}

/// The `/hangar` slash command (form-encoded). The answer is shown to its author only.
#[utoipa::path(post, path = "/slack/commands", tag = "slack",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "A slash command, signed with X-Slack-Signature"),
    responses(
        (status = 200, description = "`{\"response_type\": \"ephemeral\", \"text\"}`"),
        (status = 400, body = ErrorResponse),
        (status = 401, description = "Bad signature or stale timestamp", body = ErrorResponse),
        (status = 404, description = "Slack is not configured", body = ErrorResponse)))]
pub async fn commands(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let bot = verified(&state, &headers, &body)?;
    let text = bot
        .on_command(&body)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(serde_json::json!({"response_type": "ephemeral", "text": text})).into_response())
}

/// Button clicks (`payload=` JSON, `block_actions`): Stop, and the repository choice.
#[utoipa::path(post, path = "/slack/interactivity", tag = "slack",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "`payload=` with an interaction's JSON, signed with X-Slack-Signature"),
    responses(
        (status = 200, description = "Acknowledged"),
        (status = 400, body = ErrorResponse),
        (status = 401, description = "Bad signature or stale timestamp", body = ErrorResponse),
        (status = 404, description = "Slack is not configured", body = ErrorResponse)))]
pub async fn interactivity(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let bot = verified(&state, &headers, &body)?;
    bot.on_interaction(&body)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(StatusCode::OK.into_response())
}

/// Links the Slack user who was given `code` to the caller; the request they made in Slack
/// then starts, as the caller.
#[utoipa::path(post, path = "/api/slack/link", tag = "slack", security(("bearer" = [])),
    request_body = LinkBody,
    responses(
        (status = 200, body = LinkView),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 404, description = "Unknown, used or expired code; or Slack is not configured", body = ErrorResponse)))]
pub async fn link(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<LinkBody>,
) -> Result<Json<LinkView>, ApiError> {
    let bot = state.slack.clone().ok_or_else(not_configured)?;
    match bot.link(&body.code, caller.user).await {
        Ok(l) => Ok(Json(LinkView {
            team_id: l.team_id,
            slack_user: l.slack_user,
        })),
        Err(LinkError::UnknownCode) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "link_code_not_found",
            LinkError::UnknownCode.to_string(),
        )),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}
