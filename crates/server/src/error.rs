//! The API's one error shape, `{"error": {"code", "message"}}`, and how every failure below
//! the HTTP layer (runtime, store, envd, request decoding) maps onto a status and a code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hangar_sandbox::SandboxError;
use hangar_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorBody,
}

/// What went wrong: a stable code for programs, a message for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable `snake_case` code, e.g. `not_found`, `bad_request`, `unauthorized`.
    pub code: String,
    /// What failed and what to do, for people.
    pub message: String,
}

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// The message.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request could not be decoded.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 422: the request decoded but asks for something impossible.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: authenticated, but not allowed to do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500; the details go to the log, not necessarily to the client.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The generic code of a status, for responses produced outside the handlers (the
    /// router's own 404/405, body limits, panics).
    pub fn from_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "this route does not accept that method",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ("unsupported_media_type", "send the body as JSON")
            }
            StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long"),
            StatusCode::UNAUTHORIZED => ("unauthorized", "authentication required"),
            StatusCode::FORBIDDEN => ("forbidden", "not allowed"),
            s if s.is_server_error() => ("internal", "internal server error"),
            _ => ("bad_request", "the request was not understood"),
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        let body = ErrorResponse {
            error: ErrorBody {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<SandboxError> for ApiError {
    fn from(e: SandboxError) -> Self {
        let message = e.to_string();
        match e {
            SandboxError::NotFound(_) => ApiError::not_found(message),
            SandboxError::NotRunning { .. } => {
                ApiError::new(StatusCode::CONFLICT, "sandbox_not_running", message)
            }
            SandboxError::InvalidSpec(_) => ApiError::invalid("invalid_spec", message),
            SandboxError::Unsupported(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unsupported", message)
            }
            SandboxError::StartFailed { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "start_failed", message)
            }
            _ => ApiError::internal(message),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::InvalidToken => ApiError::unauthorized(message),
            StoreError::NotFound { .. } => ApiError::not_found(message),
            StoreError::DuplicateLogin(_) | StoreError::DuplicateRepo(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            StoreError::RepoNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_repo", message)
            }
            StoreError::Invalid(_) => ApiError::invalid("invalid_request", message),
            _ => ApiError::internal(message),
        }
    }
}

impl From<hangar_envd_client::Error> for ApiError {
    fn from(e: hangar_envd_client::Error) -> Self {
        let message = e.to_string();
        match e.code() {
            // A missing program or working directory inside the sandbox.
            Some("not_found") => ApiError::invalid("command_not_found", message),
            // envd refused what was asked (permissions, not a directory, too large, ...).
            Some(code) if code != "io" => ApiError::invalid("exec_failed", message),
            _ => ApiError::new(StatusCode::BAD_GATEWAY, "envd_error", message),
        }
    }
}
