//! Bearer-token authentication for everything under `/api`. The verified caller is put in
//! the request's extensions as a [`Caller`]; tokens never reach a log.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hangar_store::{ApiToken, User};

use crate::{ApiError, AppState};

/// Who is making the request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The user.
    pub user: User,
    /// The token they used.
    pub token: ApiToken,
}

/// The token from `Authorization: Bearer TOKEN`, or why there is none.
pub(crate) fn bearer(req: &Request) -> Result<&str, ApiError> {
    let value = req.headers().get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("send an API token as `Authorization: Bearer TOKEN`")
    })?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::unauthorized(
            "the Authorization header must be `Bearer TOKEN`",
        )),
    }
}

/// Middleware: rejects the request with 401 unless it carries a valid token.
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = match bearer(&req) {
        Ok(t) => t.to_string(),
        Err(e) => return e.into_response(),
    };
    let store = state.store.clone();
    // SQLite is synchronous; a lookup by primary-key hash takes microseconds, but keep it
    // off the async threads so a busy database cannot stall them.
    let verified = tokio::task::spawn_blocking(move || store.verify_token(&token)).await;
    match verified {
        Ok(Ok((user, token))) => {
            req.extensions_mut().insert(Caller { user, token });
            next.run(req).await
        }
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(e) => ApiError::internal(format!("token check failed: {e}")).into_response(),
    }
}
