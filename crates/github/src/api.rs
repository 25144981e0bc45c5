//! The transport: one octocrab client pointed at the configured API base, a bearer token
//! per call, and GitHub's error answers (`{"message", "errors", "documentation_url"}` plus
//! `X-Accepted-GitHub-Permissions`) turned into [`GitHubError`]s.

use octocrab::Octocrab;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::GitHubError;

/// A GitHub API client for one API base (`https://api.github.com`, a GitHub Enterprise
/// Server's `https://HOST/api/v3`, or a test server). Cheap to clone.
#[derive(Clone)]
pub struct Api {
    octo: Octocrab,
    base: String,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish()
    }
}

/// An answer from GitHub, not yet judged.
pub(crate) struct Answer {
    pub status: u16,
    pub permission: Option<String>,
    pub body: String,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

impl Answer {
    /// GitHub's `message`, with the messages of its validation `errors`.
    pub fn message(&self) -> String {
        match serde_json::from_str::<ErrorBody>(&self.body) {
            Ok(b) => {
                let details: Vec<String> = b
                    .errors
                    .iter()
                    .filter_map(|e| e.get("message").and_then(|m| m.as_str()).map(String::from))
                    .collect();
                if details.is_empty() {
                    b.message
                } else {
                    format!("{} ({})", b.message, details.join("; "))
                }
            }
            Err(_) => self.body.chars().take(200).collect(),
        }
    }

    /// The error this answer means, for `what`.
    pub fn error(&self, what: &str) -> GitHubError {
        let what = what.to_string();
        let message = self.message();
        match self.status {
            401 => GitHubError::Unauthorized { what, message },
            403 => GitHubError::Forbidden {
                what,
                message,
                permission: self.permission.clone(),
            },
            404 => GitHubError::NotFound { what },
            422 => GitHubError::Rejected { what, message },
            status => GitHubError::Api {
                what,
                status,
                message,
            },
        }
    }

    /// The body decoded, or the error this answer means.
    pub fn decode<T: DeserializeOwned>(self, what: &str) -> Result<T, GitHubError> {
        if !(200..300).contains(&self.status) {
            return Err(self.error(what));
        }
        serde_json::from_str(&self.body).map_err(|e| GitHubError::Transport {
            what: what.to_string(),
            message: format!("undecodable answer from GitHub: {e}"),
        })
    }
}

impl Api {
    /// A client for the REST API at `base` (no trailing slash needed). Must be called
    /// inside a Tokio runtime.
    pub fn new(base: &str) -> Result<Api, GitHubError> {
        Api::with_accept(base, "application/vnd.github+json")
    }

    /// A client for the web host (`https://github.com`), whose OAuth endpoints answer JSON
    /// only when asked with `Accept: application/json`.
    pub fn web(base: &str) -> Result<Api, GitHubError> {
        Api::with_accept(base, "application/json")
    }

    fn with_accept(base: &str, accept: &str) -> Result<Api, GitHubError> {
        let base = base.trim_end_matches('/').to_string();
        let octo = Octocrab::builder()
            .add_header(http::header::ACCEPT, accept.to_string())
            .base_uri(base.as_str())
            .map_err(|e| GitHubError::Invalid(format!("GitHub API URL {base:?}: {e}")))?
            .build()
            .map_err(|e| GitHubError::Invalid(format!("GitHub client: {e}")))?;
        Ok(Api { octo, base })
    }

    /// The API base.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn as_bearer(&self, token: &str, what: &str) -> Result<Octocrab, GitHubError> {
        self.octo
            .user_access_token(token.to_string())
            .map_err(|e| transport(what, e))
    }

    /// `GET path` with `token` as the bearer.
    pub(crate) async fn get(
        &self,
        token: &str,
        path: &str,
        what: &str,
    ) -> Result<Answer, GitHubError> {
        let octo = self.as_bearer(token, what)?;
        let resp = octo._get(path).await.map_err(|e| transport(what, e))?;
        answer(&octo, resp, what).await
    }

    /// `POST path` with a JSON body and `token` as the bearer.
    pub(crate) async fn post<B: Serialize + ?Sized>(
        &self,
        token: &str,
        path: &str,
        body: &B,
        what: &str,
    ) -> Result<Answer, GitHubError> {
        let octo = self.as_bearer(token, what)?;
        let resp = octo
            ._post(path, Some(body))
            .await
            .map_err(|e| transport(what, e))?;
        answer(&octo, resp, what).await
    }

    /// `POST path` without a bearer, with a JSON body.
    pub(crate) async fn post_anonymous<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
        what: &str,
    ) -> Result<Answer, GitHubError> {
        let resp = self
            .octo
            ._post(path, Some(body))
            .await
            .map_err(|e| transport(what, e))?;
        answer(&self.octo, resp, what).await
    }
}

async fn answer(
    octo: &Octocrab,
    resp: http_response::Response,
    what: &str,
) -> Result<Answer, GitHubError> {
    let status = resp.status().as_u16();
    let permission = resp
        .headers()
        .get("x-accepted-github-permissions")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string());
    let body = octo
        .body_to_string(resp)
        .await
        .map_err(|e| transport(what, e))?;
    Ok(Answer {
        status,
        permission,
        body,
    })
}

mod http_response {
    /// What octocrab's raw calls answer.
    pub type Response =
        http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, octocrab::Error>>;
}

fn transport(what: &str, e: octocrab::Error) -> GitHubError {
    GitHubError::Transport {
        what: what.to_string(),
        message: format!("cannot reach GitHub: {e}"),
    }
}
