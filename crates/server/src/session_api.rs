//! Request and response bodies of the session endpoints, who may do what, and the pure
//! parsing of their query strings. No I/O: everything here is unit-tested.

use hangar_protocol::session::{Author, Prompt};
use hangar_session::{SessionError, SessionInfo};
use hangar_store::{SessionRecord, ShareLink, ShareScope};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ApiError;

/// Longest repository name or title.
const MAX_NAME: usize = 512;

/// `POST /api/sessions`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// The repository the session works on (`owner/name` or a git URL).
    pub repo: String,
    /// A title for people; the first prompt's first line by default.
    #[serde(default)]
    pub title: Option<String>,
    /// A first prompt, started at once.
    #[serde(default)]
    pub prompt: Option<String>,
}

impl CreateSession {
    /// The repository and title, checked.
    pub fn validate(&self) -> Result<(String, String), ApiError> {
        let repo = self.repo.trim();
        if repo.is_empty() || repo.len() > MAX_NAME || repo.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "invalid_request",
                format!("repo must be 1-{MAX_NAME} characters without control characters"),
            ));
        }
        let title = match (&self.title, &self.prompt) {
            (Some(t), _) => t.trim().to_string(),
            (None, Some(p)) => p.lines().next().unwrap_or_default().trim().to_string(),
            (None, None) => String::new(),
        };
        let title: String = title
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        Ok((repo.to_string(), title))
    }
}

/// A prompt's author as the API shows it (same as in events).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuthorView {
    /// The user's id; null for a guest who came through a share link.
    pub user_id: Option<i64>,
    /// The user's login, or `share-<id>` for a guest.
    pub login: String,
    /// The share link a guest came through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_id: Option<i64>,
}

/// A prompt.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PromptView {
    /// Its id within the session.
    pub id: i64,
    /// Who asked.
    pub author: AuthorView,
    /// What they asked.
    pub text: String,
    /// `queued`, `running`, `done`, `stopped`, `failed`, `cancelled` or `interrupted`.
    pub status: String,
    /// When it arrived, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

impl From<Prompt> for PromptView {
    fn from(p: Prompt) -> Self {
        PromptView {
            id: p.id,
            author: AuthorView {
                user_id: p.author.user_id,
                login: p.author.login,
                share_id: p.author.share_id,
            },
            text: p.text,
            status: p.status.as_str().to_string(),
            created_at_ms: p.created_at_ms,
        }
    }
}

/// A session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// Its id.
    pub id: String,
    /// Its repository.
    pub repo: String,
    /// Its title.
    pub title: String,
    /// `idle`, `running` or `interrupted`.
    pub status: String,
    /// The user who created it.
    pub created_by: i64,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Last status change.
    pub updated_at_ms: i64,
    /// The seq of its last event (present when the session was loaded to answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// The prompt being worked on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<PromptView>,
    /// Prompts waiting, next first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<Vec<PromptView>>,
    /// The session whose agent started this one (a sub-session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// The sub-sessions its agent started, oldest first (when asked for one session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<String>>,
}

impl SessionView {
    /// The index entry, with the live state when known.
    pub fn new(r: SessionRecord, info: Option<SessionInfo>) -> SessionView {
        let mut view = SessionView {
            id: r.id,
            repo: r.repo,
            title: r.title,
            status: r.status,
            created_by: r.created_by,
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
            last_seq: None,
            running: None,
            queue: None,
            parent_id: r.parent_id,
            children: None,
        };
        if let Some(info) = info {
            view.status = info.status.as_str().to_string();
            view.last_seq = Some(info.last_seq);
            view.running = info.running.map(PromptView::from);
            view.queue = Some(info.queue.into_iter().map(PromptView::from).collect());
        }
        view
    }
}

/// `POST /api/sessions/{id}/prompts` and `PATCH .../queue/{prompt_id}`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptBody {
    /// What to do.
    pub text: String,
}

/// `POST /api/sessions/{id}/stop`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StopResult {
    /// The prompt that was stopped, if one ran.
    pub stopped: Option<i64>,
}

/// `POST /api/sessions/{id}/shares`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateShare {
    /// `view` (watch) or `prompt` (watch and prompt); `view` by default.
    #[serde(default)]
    pub scope: Option<String>,
}

impl CreateShare {
    /// The scope asked for.
    pub fn scope(&self) -> Result<ShareScope, ApiError> {
        match self.scope.as_deref() {
            None => Ok(ShareScope::View),
            Some(w) => ShareScope::parse(w).ok_or_else(|| {
                ApiError::invalid(
                    "invalid_request",
                    format!("scope {w:?} must be \"view\" or \"prompt\""),
                )
            }),
        }
    }
}

/// A share link; `token` only in the answer that created it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShareView {
    /// Its id (to revoke it).
    pub id: i64,
    /// The session it opens.
    pub session_id: String,
    /// `view` or `prompt`.
    pub scope: String,
    /// The token (`hgs_…`), shown once: use it as a bearer token, or as `?token=` on the
    /// WebSocket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<i64>,
}

impl ShareView {
    /// The view of a link, with its token when just created.
    pub fn new(link: ShareLink, token: Option<String>) -> ShareView {
        ShareView {
            id: link.id,
            session_id: link.session_id,
            scope: link.scope.as_str().to_string(),
            token,
            revoked_at_ms: link.revoked_at_ms,
        }
    }
}

/// What a request may do in a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Read it (events, queue, WebSocket).
    View,
    /// Prompt, edit or cancel own prompts, stop.
    Prompt,
    /// Manage it (share links): users only.
    Manage,
}

/// Who is calling a session endpoint: a user with an API token, or the holder of a share
/// link.
#[derive(Clone, Debug)]
pub enum Access {
    /// A user.
    User(Caller),
    /// A share link's holder.
    Share(ShareLink),
}

impl Access {
    /// The author of what this caller does.
    pub fn author(&self) -> Author {
        match self {
            Access::User(c) => Author {
                user_id: Some(c.user.id),
                login: c.user.login.clone(),
                share_id: None,
            },
            Access::Share(s) => Author {
                user_id: None,
                login: format!("share-{}", s.id),
                share_id: Some(s.id),
            },
        }
    }

    /// Checks the caller may do `need` in session `session_id`. Users may use every
    /// session of the server (sessions belong to the team, not to one author); a share link
    /// opens its own session only, within its scope.
    pub fn check(&self, session_id: Option<&str>, need: Need) -> Result<(), ApiError> {
        let Access::Share(link) = self else {
            return Ok(());
        };
        if session_id != Some(link.session_id.as_str()) {
            return Err(ApiError::forbidden(
                "this share link is for another session",
            ));
        }
        match (need, link.scope) {
            (Need::View, _) | (Need::Prompt, ShareScope::Prompt) => Ok(()),
            (Need::Prompt, ShareScope::View) => Err(ApiError::forbidden(
                "this share link lets its holder watch the session, not prompt it",
            )),
            (Need::Manage, _) => Err(ApiError::forbidden(
                "share links cannot manage sessions; use an API token",
            )),
        }
    }
}

/// The `after_seq` and `limit` of an events query, with clear answers for bad values.
/// `limit` defaults to and is capped at `max_limit`.
pub fn events_query(
    raw: Option<&str>,
    max_limit: usize,
) -> Result<(u64, usize, Option<String>), ApiError> {
    let mut after = 0u64;
    let mut limit = max_limit;
    let mut token = None;
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "after_seq" => {
                after = v.parse::<u64>().ok().filter(|n| *n <= i64::MAX as u64).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "after_seq must be a whole number from 0 (the start of the log) up, got {v:?}"
                    ))
                })?
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=max_limit).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be a whole number from 1 to {max_limit}, got {v:?}"
                        ))
                    })?
            }
            "token" => token = Some(v.to_string()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}; use after_seq and limit"
                )));
            }
        }
    }
    Ok((after, limit, token))
}

/// A seq the log has not reached yet is a client error, named as such.
pub fn check_after_seq(after: u64, last_seq: u64) -> Result<(), ApiError> {
    if after > last_seq {
        return Err(ApiError::bad_request(format!(
            "after_seq {after} is beyond this session's last event ({last_seq}); reconnect with an after_seq you received"
        )));
    }
    Ok(())
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        use axum::http::StatusCode;
        let message = e.to_string();
        match e {
            SessionError::NotFound(_) | SessionError::PromptNotFound { .. } => {
                ApiError::not_found(message)
            }
            SessionError::NotQueued { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_queued", message)
            }
            SessionError::NotAuthor { .. } => ApiError::forbidden(message),
            SessionError::Invalid(_) => ApiError::invalid("invalid_request", message),
            SessionError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            SessionError::Index(e) => e.into(),
            _ => ApiError::internal(message),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn share(scope: ShareScope) -> Access {
        Access::Share(ShareLink {
            id: 4,
            session_id: "ses-0000000000000001".into(),
            scope,
            created_by: 1,
            created_at_ms: 0,
            revoked_at_ms: None,
        })
    }

    #[test]
    fn share_links_open_their_session_within_their_scope() {
        let mine = Some("ses-0000000000000001");
        let other = Some("ses-0000000000000002");
        let view = share(ShareScope::View);
        let prompt = share(ShareScope::Prompt);
        assert!(view.check(mine, Need::View).is_ok());
        assert_eq!(view.check(mine, Need::Prompt).unwrap_err().status, 403);
        assert!(prompt.check(mine, Need::Prompt).is_ok());
        assert_eq!(prompt.check(other, Need::View).unwrap_err().status, 403);
        assert_eq!(prompt.check(mine, Need::Manage).unwrap_err().status, 403);
        assert_eq!(prompt.check(None, Need::View).unwrap_err().status, 403);
        assert_eq!(view.author().login, "share-4");
    }

    #[test]
    fn events_queries_say_what_is_wrong() {
        assert_eq!(events_query(None, 1000).unwrap(), (0, 1000, None));
        assert_eq!(
            events_query(Some("after_seq=5&limit=10"), 1000).unwrap(),
            (5, 10, None)
        );
        for bad in [
            "after_seq=-1",
            "after_seq=x",
            "after_seq=",
            "after_seq=99999999999999999999",
            "limit=0",
            "limit=1001",
            "colour=red",
        ] {
            let e = events_query(Some(bad), 1000).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert!(
                e.message.contains(bad.split('=').next().unwrap()),
                "{bad}: {}",
                e.message
            );
        }
        assert!(check_after_seq(3, 3).is_ok());
        assert_eq!(check_after_seq(4, 3).unwrap_err().status, 400);
    }

    #[test]
    fn create_session_checks_repo_and_derives_a_title() {
        let req = CreateSession {
            repo: " acme/app ".into(),
            title: None,
            prompt: Some("fix the build\nplease".into()),
        };
        assert_eq!(
            req.validate().unwrap(),
            ("acme/app".into(), "fix the build".into())
        );
        for repo in ["", "a\nb", &"x".repeat(513)] {
            let req = CreateSession {
                repo: repo.into(),
                ..CreateSession::default()
            };
            assert_eq!(req.validate().unwrap_err().status, 422);
        }
        assert_eq!(
            CreateShare {
                scope: Some("admin".into())
            }
            .scope()
            .unwrap_err()
            .status,
            422
        );
    }
}
