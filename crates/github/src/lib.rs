//! GitHub: the App's installation tokens for git (clone, fetch, push), users' sign-in with
//! the OAuth web flow (their token encrypted at rest), pull requests opened with the
//! **user's** token (so nobody approves their own agent's PR), and webhooks (signature
//! checked in constant time, each delivery applied once) turned into typed events, pull
//! request records and the figures of the stats page.
//!
//! [`GitHub`] is the entry point the server drives; [`GitHubApp`] also serves git as a
//! credential source ([`GitHubApp::token_for`], and [`hangar_images::git::Credentials`]).
//! Requests go through octocrab (base URL, auth header, retries, timeouts) against a
//! configurable API base, so GitHub Enterprise Server and the fake server of the tests work
//! the same; responses are decoded into this crate's own small types, which name exactly
//! the fields Hangar relies on. The OAuth code exchange is on the web host, not the API,
//! and octocrab has no call for it: a second client ([`Api::web`]) with the web host as
//! its base posts it.
//!
//! **Invariants:** no HTTP server code here (the server maps [`GitHubError`] onto
//! statuses); a token is never logged, printed by `Debug` or stored in clear; a webhook
//! changes nothing unless its signature is right and its delivery id is new.

#![deny(missing_docs)]

mod api;
mod app;
mod oauth;
mod pulls;
mod seal;
mod service;
mod webhook;

pub use api::Api;
pub use app::{GitHubApp, InstallationToken};
pub use oauth::{GitHubUser, OAuthApp, UserToken};
pub use pulls::{OpenPullRequest, PullRequestRef};
pub use seal::TokenSeal;
pub use service::{GitHub, SignedIn, WebhookOutcome, session_branch};
pub use webhook::{
    PullRequestAction, PullRequestInfo, ReviewState, WebhookEvent, parse_event, sign,
    verify_signature,
};

/// A secret value (a token, a key): its `Debug` form hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A repository on GitHub: `owner/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName {
    /// The account or organisation.
    pub owner: String,
    /// The repository.
    pub name: String,
}

impl RepoName {
    /// Parses `owner/name`, or a web or clone URL on `web_host` (`https://github.com/o/r`,
    /// with or without `.git`).
    pub fn parse(repo: &str, web_host: &str) -> Result<RepoName, GitHubError> {
        let trimmed = repo.trim().trim_end_matches('/');
        let path = match trimmed.split_once("://") {
            Some((_, rest)) => {
                let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                if !host.eq_ignore_ascii_case(web_host) {
                    return Err(GitHubError::Invalid(format!(
                        "{repo} is not a repository on {web_host}"
                    )));
                }
                path
            }
            None => trimmed,
        };
        let path = path.strip_suffix(".git").unwrap_or(path);
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        match path.split_once('/') {
            Some((owner, name)) if ok(owner) && ok(name) => Ok(RepoName {
                owner: owner.to_string(),
                name: name.to_string(),
            }),
            _ => Err(GitHubError::Invalid(format!(
                "{repo:?} is not a GitHub repository: use owner/name"
            ))),
        }
    }
}

impl std::fmt::Display for RepoName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// Why a GitHub operation failed. Messages say what failed and what to do; none contains
/// a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GitHubError {
    /// The input is unusable (a repository name, a missing parameter).
    #[error("{0}")]
    Invalid(String),
    /// GitHub is not configured for this (no App, no OAuth client, no webhook secret).
    #[error("{0}")]
    NotConfigured(String),
    /// The App is not installed on the repository.
    #[error(
        "the Hangar GitHub App is not installed on {repo}; install it on that repository (see docs/github.md) and try again"
    )]
    NotInstalled {
        /// The repository.
        repo: String,
    },
    /// GitHub refused the credentials (401).
    #[error("GitHub refused the credentials for {what}: {message}")]
    Unauthorized {
        /// What was being done.
        what: String,
        /// GitHub's words.
        message: String,
    },
    /// The user's GitHub token is missing, expired or revoked: they must sign in again.
    #[error("{0}; sign in with GitHub again (GET /auth/github/login)")]
    SignInRequired(String),
    /// GitHub refused the operation (403), naming the missing permission when it did.
    #[error("GitHub refused {what}: {message}{}", permission_hint(.permission))]
    Forbidden {
        /// What was being done.
        what: String,
        /// GitHub's words.
        message: String,
        /// The permission GitHub said is needed (`X-Accepted-GitHub-Permissions`).
        permission: Option<String>,
    },
    /// GitHub does not know the thing (404).
    #[error("GitHub has no {what}")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// GitHub rejected the request (422).
    #[error("GitHub rejected {what}: {message}")]
    Rejected {
        /// What was being done.
        what: String,
        /// GitHub's words (with the validation errors).
        message: String,
    },
    /// Any other answer GitHub gave.
    #[error("GitHub answered {status} to {what}: {message}")]
    Api {
        /// What was being done.
        what: String,
        /// The HTTP status.
        status: u16,
        /// GitHub's words.
        message: String,
    },
    /// GitHub could not be reached, or answered something undecodable.
    #[error("{what}: {message}")]
    Transport {
        /// What was being done.
        what: String,
        /// Why.
        message: String,
    },
    /// The OAuth sign-in failed (bad or expired code, state not issued here or used).
    #[error("GitHub sign-in failed: {0}")]
    OAuth(String),
    /// The webhook's signature is missing or wrong.
    #[error("webhook signature is missing or does not match the configured secret")]
    BadSignature,
    /// The webhook delivery was received before.
    #[error("webhook delivery {0} was received before")]
    Replayed(String),
    /// The App's key or the token encryption key is unusable.
    #[error("{0}")]
    Key(String),
    /// The index failed.
    #[error(transparent)]
    Store(#[from] hangar_store::StoreError),
}

fn permission_hint(permission: &Option<String>) -> String {
    match permission {
        Some(p) if !p.is_empty() => {
            format!("; the GitHub App needs the permission {p} (see docs/github.md)")
        }
        _ => String::new(),
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn random_bytes<const N: usize>() -> Result<[u8; N], GitHubError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| GitHubError::Key(format!("random source: {e}")))?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn repo_names_parse_from_short_and_url_forms() {
        let want = RepoName {
            owner: "acme".into(),
            name: "app".into(),
        };
        for ok in [
            "acme/app",
            "https://github.com/acme/app",
            "https://github.com/acme/app.git",
            "https://GitHub.com/acme/app/",
        ] {
            assert_eq!(RepoName::parse(ok, "github.com").unwrap(), want, "{ok}");
        }
        for bad in [
            "",
            "acme",
            "acme/app/x",
            "/abs/path",
            "../x",
            "https://gitlab.com/acme/app",
            "acme/a b",
        ] {
            assert!(RepoName::parse(bad, "github.com").is_err(), "{bad}");
        }
    }

    #[test]
    fn forbidden_names_the_permission() {
        let e = GitHubError::Forbidden {
            what: "opening a pull request".into(),
            message: "Resource not accessible by integration".into(),
            permission: Some("pull_requests=write".into()),
        };
        assert!(
            e.to_string()
                .contains("needs the permission pull_requests=write")
        );
        assert!(!format!("{:?}", Secret::new("ghs_x")).contains("ghs_x"));
    }
}
