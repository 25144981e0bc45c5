//! Webhooks: the `X-Hub-Signature-256` check
//! (<https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries>:
//! `sha256=` and the hex HMAC-SHA256 of the raw body with the webhook secret, compared in
//! constant time) and the payloads Hangar acts on, parsed into [`WebhookEvent`]s. Pure
//! functions: no I/O.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::GitHubError;

/// Checks `signature` (the `X-Hub-Signature-256` header) against `body` and `secret`.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    signature: Option<&str>,
) -> Result<(), GitHubError> {
    let hex = signature
        .and_then(|s| s.trim().strip_prefix("sha256="))
        .ok_or(GitHubError::BadSignature)?;
    let presented = decode_hex(hex).ok_or(GitHubError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| GitHubError::BadSignature)?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&presented)
        .map_err(|_| GitHubError::BadSignature)
}

/// The `X-Hub-Signature-256` value for `body` (what GitHub sends; tests sign with it).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC accepts keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut s = String::from("sha256=");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What happened to a pull request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullRequestAction {
    /// Opened.
    Opened,
    /// Closed, merged or not.
    Closed {
        /// True when merged.
        merged: bool,
    },
    /// Reopened.
    Reopened,
    /// New commits on its branch.
    Synchronize,
}

/// A submitted review's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReviewState {
    /// Approved.
    Approved,
    /// Changes requested.
    ChangesRequested,
    /// Commented only.
    Commented,
}

impl ReviewState {
    /// The word used in events and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewState::Approved => "approved",
            ReviewState::ChangesRequested => "changes_requested",
            ReviewState::Commented => "commented",
        }
    }
}

/// The pull request a webhook is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequestInfo {
    /// `owner/name`.
    pub repo: String,
    /// Its number.
    pub number: i64,
    /// Its web address.
    pub url: String,
    /// Its title.
    pub title: String,
    /// Its branch.
    pub head_branch: String,
    /// Lines added, when the payload says.
    pub additions: Option<i64>,
}

/// A webhook delivery Hangar understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookEvent {
    /// `pull_request`: opened, closed (merged or not), reopened, synchronize.
    PullRequest {
        /// What happened.
        action: PullRequestAction,
        /// The pull request.
        pr: PullRequestInfo,
        /// When, milliseconds since the Unix epoch.
        at_ms: i64,
    },
    /// `pull_request_review` submitted.
    Review {
        /// The verdict.
        state: ReviewState,
        /// The pull request.
        pr: PullRequestInfo,
        /// The reviewer's GitHub login.
        reviewer: String,
        /// The review's text, if any.
        body: Option<String>,
        /// When.
        at_ms: i64,
    },
    /// `pull_request_review_comment` created.
    ReviewComment {
        /// The pull request.
        pr: PullRequestInfo,
        /// The commenter's GitHub login.
        author: String,
        /// The commenter's GitHub account id.
        author_id: i64,
        /// The file commented on.
        path: String,
        /// The line, when on one.
        line: Option<i64>,
        /// The comment.
        body: String,
        /// Its web address.
        url: String,
        /// When.
        at_ms: i64,
    },
    /// `ping`, sent when the webhook is created.
    Ping,
    /// Any other event or action: acknowledged, nothing to do.
    Ignored {
        /// The event name.
        event: String,
    },
}

#[derive(Deserialize)]
struct Account {
    login: String,
    #[serde(default)]
    id: i64,
}

#[derive(Deserialize)]
struct Repo {
    full_name: String,
}

#[derive(Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    name: String,
}

#[derive(Deserialize)]
struct Pull {
    number: i64,
    html_url: String,
    title: String,
    #[serde(default)]
    merged: Option<bool>,
    #[serde(default)]
    merged_at: Option<String>,
    #[serde(default)]
    closed_at: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
    head: Branch,
    #[serde(default)]
    additions: Option<i64>,
}

#[derive(Deserialize)]
struct PullRequestPayload {
    action: String,
    pull_request: Pull,
    repository: Repo,
}

#[derive(Deserialize)]
struct Review {
    user: Account,
    #[serde(default)]
    body: Option<String>,
    state: String,
    #[serde(default)]
    submitted_at: Option<String>,
}

#[derive(Deserialize)]
struct ReviewPayload {
    action: String,
    review: Review,
    pull_request: Pull,
    repository: Repo,
}

#[derive(Deserialize)]
struct Comment {
    user: Account,
    body: String,
    path: String,
    #[serde(default)]
    line: Option<i64>,
    html_url: String,
    #[serde(default)]
    created_at: Option<String>,
}

#[derive(Deserialize)]
struct CommentPayload {
    action: String,
    comment: Comment,
    pull_request: Pull,
    repository: Repo,
}

fn ms(ts: Option<&str>) -> i64 {
    ts.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
        .unwrap_or_else(|| crate::now_secs() * 1000)
}

fn info(p: &Pull, repo: &Repo) -> PullRequestInfo {
    PullRequestInfo {
        repo: repo.full_name.clone(),
        number: p.number,
        url: p.html_url.clone(),
        title: p.title.clone(),
        head_branch: p.head.name.clone(),
        additions: p.additions,
    }
}

fn bad(event: &str, e: serde_json::Error) -> GitHubError {
    GitHubError::Invalid(format!("undecodable {event} webhook payload: {e}"))
}

/// Parses a delivery of event `event` (the `X-GitHub-Event` header).
pub fn parse_event(event: &str, body: &[u8]) -> Result<WebhookEvent, GitHubError> {
    let ignored = || WebhookEvent::Ignored {
        event: event.to_string(),
    };
    match event {
        "ping" => Ok(WebhookEvent::Ping),
        "pull_request" => {
            let p: PullRequestPayload = serde_json::from_slice(body).map_err(|e| bad(event, e))?;
            let pr = &p.pull_request;
            let (action, at) = match p.action.as_str() {
                "opened" => (PullRequestAction::Opened, pr.created_at.as_deref()),
                "closed" => {
                    let merged = pr.merged.unwrap_or(false) || pr.merged_at.is_some();
                    let at = if merged {
                        pr.merged_at.as_deref()
                    } else {
                        pr.closed_at.as_deref()
                    };
                    (PullRequestAction::Closed { merged }, at)
                }
                "reopened" => (PullRequestAction::Reopened, pr.updated_at.as_deref()),
                "synchronize" => (PullRequestAction::Synchronize, pr.updated_at.as_deref()),
                _ => return Ok(ignored()),
            };
            Ok(WebhookEvent::PullRequest {
                action,
                pr: info(pr, &p.repository),
                at_ms: ms(at),
            })
        }
        "pull_request_review" => {
            let p: ReviewPayload = serde_json::from_slice(body).map_err(|e| bad(event, e))?;
            if p.action != "submitted" {
                return Ok(ignored());
            }
            let state = match p.review.state.to_ascii_lowercase().as_str() {
                "approved" => ReviewState::Approved,
                "changes_requested" => ReviewState::ChangesRequested,
                "commented" => ReviewState::Commented,
                _ => return Ok(ignored()),
            };
            Ok(WebhookEvent::Review {
                state,
                pr: info(&p.pull_request, &p.repository),
                reviewer: p.review.user.login,
                body: p.review.body.filter(|b| !b.is_empty()),
                at_ms: ms(p.review.submitted_at.as_deref()),
            })
        }
        "pull_request_review_comment" => {
            let p: CommentPayload = serde_json::from_slice(body).map_err(|e| bad(event, e))?;
            if p.action != "created" {
                return Ok(ignored());
            }
            Ok(WebhookEvent::ReviewComment {
                pr: info(&p.pull_request, &p.repository),
                author: p.comment.user.login,
                author_id: p.comment.user.id,
                path: p.comment.path,
                line: p.comment.line,
                body: p.comment.body,
                url: p.comment.html_url,
                at_ms: ms(p.comment.created_at.as_deref()),
            })
        }
        _ => Ok(ignored()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn pull(extra: serde_json::Value) -> serde_json::Value {
        let mut p = json!({"number": 7, "html_url": "https://github.com/acme/app/pull/7",
            "title": "Fix", "state": "open", "created_at": "2026-11-24T12:00:00Z",
            "updated_at": "2026-11-24T12:30:00Z",
            "head": {"ref": "hangar/ses-1", "sha": "abc"}, "base": {"ref": "main"},
            "user": {"login": "alice", "id": 1}});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    }

    #[test]
    fn signatures_are_checked() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let sig = sign(b"s3cret", body);
        assert!(sig.starts_with("sha256=") && sig.len() == 71);
        verify_signature(b"s3cret", body, Some(&sig)).unwrap();
        for bad in [
            None,
            Some(""),
            Some("sha1=abc"),
            Some("sha256=zz"),
            Some(&sign(b"other", body)[..]),
            Some(&sig[..70]),
        ] {
            assert!(verify_signature(b"s3cret", body, bad).is_err(), "{bad:?}");
        }
        assert!(
            verify_signature(b"s3cret", b"{}", Some(&sig)).is_err(),
            "another body"
        );
    }

    #[test]
    fn pull_request_actions_parse() {
        let body = |action: &str, extra| {
            serde_json::to_vec(
                &json!({"action": action, "number": 7, "pull_request": pull(extra),
                "repository": {"full_name": "acme/app"}, "sender": {"login": "bob", "id": 2}}),
            )
            .unwrap()
        };
        let merged = parse_event(
            "pull_request",
            &body(
                "closed",
                json!({"merged": true, "merged_at": "2026-11-24T13:00:00Z",
                "closed_at": "2026-11-24T13:00:00Z", "additions": 12}),
            ),
        )
        .unwrap();
        let WebhookEvent::PullRequest { action, pr, at_ms } = merged else {
            panic!("{merged:?}")
        };
        assert_eq!(action, PullRequestAction::Closed { merged: true });
        assert_eq!(
            (pr.repo.as_str(), pr.number, pr.additions),
            ("acme/app", 7, Some(12))
        );
        assert_eq!(pr.head_branch, "hangar/ses-1");
        // 2026-11-24T13:00:00Z: five days before 2026-11-29T12:00:00Z, plus an hour.
        assert_eq!(at_ms, 1_795_953_600_000 - 5 * 86_400_000 + 3_600_000);
        let closed =
            parse_event("pull_request", &body("closed", json!({"merged": false}))).unwrap();
        assert!(matches!(
            closed,
            WebhookEvent::PullRequest {
                action: PullRequestAction::Closed { merged: false },
                ..
            }
        ));
        for (a, want) in [
            ("opened", PullRequestAction::Opened),
            ("reopened", PullRequestAction::Reopened),
            ("synchronize", PullRequestAction::Synchronize),
        ] {
            let ev = parse_event("pull_request", &body(a, json!({}))).unwrap();
            assert!(
                matches!(ev, WebhookEvent::PullRequest { action, .. } if action == want),
                "{a}"
            );
        }
        assert!(matches!(
            parse_event("pull_request", &body("labeled", json!({}))).unwrap(),
            WebhookEvent::Ignored { .. }
        ));
        assert!(parse_event("pull_request", b"{}").is_err());
        assert!(parse_event("pull_request", b"not json").is_err());
        assert_eq!(parse_event("ping", b"{}").unwrap(), WebhookEvent::Ping);
        assert!(matches!(
            parse_event("star", b"{}").unwrap(),
            WebhookEvent::Ignored { .. }
        ));
    }

    #[test]
    fn reviews_and_review_comments_parse() {
        for (state, want) in [
            ("approved", ReviewState::Approved),
            ("changes_requested", ReviewState::ChangesRequested),
            ("commented", ReviewState::Commented),
        ] {
            let body = serde_json::to_vec(&json!({"action": "submitted",
                "review": {"id": 1, "user": {"login": "carol", "id": 3}, "body": "", "state": state,
                    "submitted_at": "2026-11-24T12:10:00Z"},
                "pull_request": pull(json!({})), "repository": {"full_name": "acme/app"}}))
            .unwrap();
            let ev = parse_event("pull_request_review", &body).unwrap();
            let WebhookEvent::Review {
                state,
                reviewer,
                body,
                ..
            } = ev
            else {
                panic!()
            };
            assert_eq!((state, reviewer.as_str(), body), (want, "carol", None));
        }
        let body = serde_json::to_vec(&json!({"action": "created",
            "comment": {"id": 5, "user": {"login": "carol", "id": 3}, "body": "use a constant",
                "path": "src/lib.rs", "line": 12, "html_url": "https://github.com/acme/app/pull/7#discussion_r5",
                "created_at": "2026-11-24T12:11:00Z"},
            "pull_request": pull(json!({})), "repository": {"full_name": "acme/app"}}))
        .unwrap();
        let ev = parse_event("pull_request_review_comment", &body).unwrap();
        let WebhookEvent::ReviewComment {
            author_id,
            path,
            line,
            body,
            ..
        } = ev
        else {
            panic!()
        };
        assert_eq!(
            (author_id, path.as_str(), line, body.as_str()),
            (3, "src/lib.rs", Some(12), "use a constant")
        );
    }
}
