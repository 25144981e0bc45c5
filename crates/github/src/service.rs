//! [`GitHub`]: what the server asks of GitHub, with the index behind it. Sign-in (state,
//! code exchange, linking the account to a Hangar user, storing the sealed token, issuing
//! a Hangar API token), pull requests opened with the user's token and recorded, and
//! webhook deliveries verified, applied once and turned into session events.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use hangar_protocol::session::{Author, EventBody};
use hangar_store::{
    NewPullRequest, NewUser, PrStats, PrUpdate, PullRequest, SealedGitHubToken, SessionRecord,
    Store, StoreError, TokenSecret, User,
};

use crate::pulls::{self, OpenPullRequest, PullRequestRef};
use crate::webhook::{self, PullRequestAction, ReviewState, WebhookEvent};
use crate::{Api, GitHubApp, GitHubError, OAuthApp, RepoName, Secret, TokenSeal, now_secs};

/// How long a sign-in may take between the redirect to GitHub and the callback.
const STATE_TTL_MS: i64 = 10 * 60 * 1000;

/// The branch a session's work is pushed to.
pub fn session_branch(session_id: &str) -> String {
    format!("hangar/{session_id}")
}

/// The outcome of a sign-in.
#[derive(Debug)]
pub struct SignedIn {
    /// The Hangar user, linked to the GitHub account.
    pub user: User,
    /// A new Hangar API token for them; shown once.
    pub token: TokenSecret,
    /// True when the user was created by this sign-in.
    pub created: bool,
}

/// What a webhook delivery means for Hangar.
#[derive(Debug, Default)]
pub struct WebhookOutcome {
    /// The session the pull request belongs to, if Hangar knows it.
    pub session_id: Option<String>,
    /// Events to append to that session's log.
    pub events: Vec<EventBody>,
    /// A follow-up prompt for that session (a review comment, where the repository opted
    /// in and the commenter is a linked user).
    pub follow_up: Option<(Author, String)>,
    /// The pull request record after the change.
    pub pull_request: Option<PullRequest>,
}

/// GitHub as the server uses it.
pub struct GitHub {
    store: Arc<Store>,
    api: Api,
    web_host: String,
    app: Option<Arc<GitHubApp>>,
    oauth: Option<OAuthApp>,
    webhook_secret: Option<Secret>,
    seal: TokenSeal,
    prompt_repos: HashSet<String>,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub")
            .field("api", &self.api)
            .field("app", &self.app)
            .field("oauth", &self.oauth)
            .finish_non_exhaustive()
    }
}

impl GitHub {
    /// GitHub at `api` (repositories on `web_host`), with users' tokens sealed by `seal` and
    /// kept in `store`. Add the App, the OAuth client and the webhook secret as configured.
    pub fn new(store: Arc<Store>, api: Api, web_host: &str, seal: TokenSeal) -> GitHub {
        GitHub {
            store,
            api,
            web_host: web_host.to_ascii_lowercase(),
            app: None,
            oauth: None,
            webhook_secret: None,
            seal,
            prompt_repos: HashSet::new(),
        }
    }

    /// GitHub as configured: the App when `app_id` is set, sign-in when `client_id` is,
    /// webhooks when a secret is; users' tokens sealed with the key in
    /// `<data dir>/github-tokens.key` (created on first use). Call inside a Tokio runtime.
    pub fn from_settings(
        settings: &hangar_config::GitHubSettings,
        data_dir: &std::path::Path,
        store: Arc<Store>,
    ) -> Result<GitHub, GitHubError> {
        let config = |e: hangar_config::ConfigError| GitHubError::NotConfigured(e.to_string());
        let api = Api::new(&settings.api_url)?;
        let seal = TokenSeal::open_or_create(&data_dir.join("github-tokens.key"))?;
        let web_host = settings.web_host().to_string();
        let mut github = GitHub::new(store, api.clone(), &web_host, seal)
            .with_review_comment_prompts(settings.review_comment_prompts.iter().cloned());
        if let Some(app_id) = settings.app_id {
            let key = settings.private_key().map_err(config)?.ok_or_else(|| {
                GitHubError::NotConfigured(
                    "github.app_id is set but github.private_key_file is not".into(),
                )
            })?;
            let app = GitHubApp::new(api.clone(), app_id, &key, &web_host)?
                .with_refresh_margin(settings.token_refresh_margin_secs);
            github = github.with_app(app);
        }
        if let Some(client_id) = &settings.client_id {
            let secret = settings.client_secret().map_err(config)?.ok_or_else(|| {
                GitHubError::NotConfigured(
                    "github.client_id is set but neither github.client_secret_env nor github.client_secret_file".into(),
                )
            })?;
            github = github.with_oauth(OAuthApp::new(
                Api::web(&settings.web_url)?,
                api,
                client_id,
                Secret(secret),
                settings.callback_url.clone(),
            ));
        }
        if let Some(secret) = settings.webhook_secret().map_err(config)? {
            github = github.with_webhook_secret(Secret(secret));
        }
        Ok(github)
    }

    /// Uses this App for installation tokens.
    pub fn with_app(mut self, app: GitHubApp) -> GitHub {
        self.app = Some(Arc::new(app));
        self
    }

    /// Signs users in with this OAuth client.
    pub fn with_oauth(mut self, oauth: OAuthApp) -> GitHub {
        self.oauth = Some(oauth);
        self
    }

    /// Accepts webhooks signed with this secret.
    pub fn with_webhook_secret(mut self, secret: Secret) -> GitHub {
        self.webhook_secret = Some(secret);
        self
    }

    /// Review comments on these repositories' pull requests (`owner/name`) become
    /// follow-up prompts of the session.
    pub fn with_review_comment_prompts(
        mut self,
        repos: impl IntoIterator<Item = String>,
    ) -> GitHub {
        self.prompt_repos = repos.into_iter().map(|r| r.to_ascii_lowercase()).collect();
        self
    }

    /// The App, for git's credentials and the installation check.
    pub fn app(&self) -> Option<&Arc<GitHubApp>> {
        self.app.as_ref()
    }

    fn app_or_err(&self) -> Result<&Arc<GitHubApp>, GitHubError> {
        self.app.as_ref().ok_or_else(|| {
            GitHubError::NotConfigured(
                "no GitHub App is configured: set [github] app_id and private_key_file".into(),
            )
        })
    }

    /// Checks that the App is installed on `repo`, before a sandbox is started for it.
    pub async fn check_installed(&self, repo: &str) -> Result<RepoName, GitHubError> {
        self.app_or_err()?.check_installed(repo).await
    }

    /// Before anything is started for a repository cloned from `url`: when it is a
    /// repository on this GitHub and an App is configured, the App must be installed on it
    /// ([`GitHubError::NotInstalled`] otherwise). Other remotes pass.
    pub async fn check_before_start(&self, url: &str) -> Result<(), GitHubError> {
        let (Some(app), true) = (&self.app, url.contains("://")) else {
            return Ok(());
        };
        match RepoName::parse(url, &self.web_host) {
            Ok(_) => app.check_installed(url).await.map(|_| ()),
            Err(_) => Ok(()),
        }
    }

    fn oauth_or_err(&self) -> Result<&OAuthApp, GitHubError> {
        self.oauth.as_ref().ok_or_else(|| {
            GitHubError::NotConfigured(
                "GitHub sign-in is not configured: set [github] client_id and client_secret_env or client_secret_file".into(),
            )
        })
    }

    /// Where to send a person to sign in: GitHub's authorize page with a new `state`.
    pub fn login_url(&self) -> Result<String, GitHubError> {
        let oauth = self.oauth_or_err()?;
        let state = self.store.create_oauth_state(STATE_TTL_MS)?;
        Ok(oauth.authorize_url(&state))
    }

    /// Completes a sign-in from GitHub's callback: checks and consumes `state`, exchanges
    /// `code`, links the GitHub account to a Hangar user (created on the first sign-in),
    /// stores the user's token sealed, and issues a Hangar API token.
    pub async fn sign_in(&self, code: &str, state: &str) -> Result<SignedIn, GitHubError> {
        let oauth = self.oauth_or_err()?;
        if !self.store.take_oauth_state(state)? {
            return Err(GitHubError::OAuth(
                "the sign-in state is unknown, expired or used already; start again from /auth/github/login".into(),
            ));
        }
        let token = oauth.exchange(code).await?;
        let gh = oauth.user(&token.token).await?;
        let (user, created) = match self.store.user_by_github_id(gh.id)? {
            Some(u) => (u, false),
            None => (self.create_user_for(&gh)?, true),
        };
        let user = self.store.link_github(user.id, gh.id, &gh.login)?;
        let sealed = SealedGitHubToken {
            ciphertext: self.seal.seal(user.id, &token.token)?,
            expires_at_ms: token.expires_at.map(|s| s * 1000),
        };
        self.store.set_github_token(user.id, &sealed)?;
        let (_, api_token) = self.store.create_token(user.id, "GitHub sign-in")?;
        tracing::info!(user = %user.login, github = %gh.login, created, "signed in with GitHub");
        Ok(SignedIn {
            user,
            token: api_token,
            created,
        })
    }

    /// A new user for a GitHub account. An existing Hangar login is never taken over:
    /// the GitHub login gets a suffix instead.
    fn create_user_for(&self, gh: &crate::GitHubUser) -> Result<User, GitHubError> {
        let candidates = [
            gh.login.clone(),
            format!("{}-github", gh.login),
            format!("github-{}", gh.id),
        ];
        for login in candidates {
            let new = NewUser {
                login,
                name: gh
                    .name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| gh.login.clone()),
                email: gh.email.clone(),
                is_admin: false,
            };
            match self.store.create_user(&new) {
                Ok(u) => return Ok(u),
                Err(StoreError::DuplicateLogin(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(GitHubError::Invalid(format!(
            "cannot find a free login for GitHub user {}",
            gh.login
        )))
    }

    /// The user's GitHub token, or why they must sign in (again).
    fn user_token(&self, user: &User) -> Result<Secret, GitHubError> {
        let sealed = self.store.github_token(user.id)?.ok_or_else(|| {
            GitHubError::SignInRequired(format!("{} has not signed in with GitHub", user.login))
        })?;
        if sealed.expires_at_ms.is_some_and(|e| e <= now_secs() * 1000) {
            return Err(GitHubError::SignInRequired(format!(
                "the GitHub token of {} expired",
                user.login
            )));
        }
        self.seal.open(user.id, &sealed.ciphertext)
    }

    /// Opens the pull request of `session`'s branch (`hangar/<session id>`) with `user`'s
    /// own token and records it; when one is open for the branch already, that one is
    /// returned (and recorded). A token GitHub refuses is forgotten.
    pub async fn open_pull_request(
        &self,
        user: &User,
        session: &SessionRecord,
        title: Option<String>,
        body: Option<String>,
        base: Option<String>,
    ) -> Result<(PullRequestRef, PullRequest), GitHubError> {
        let repo = RepoName::parse(&session.repo, &self.web_host)?;
        let token = self.user_token(user)?;
        let req = OpenPullRequest {
            repo: repo.clone(),
            head: session_branch(&session.id),
            base,
            title: title
                .filter(|t| !t.trim().is_empty())
                .unwrap_or_else(|| session.title.clone()),
            body: body.unwrap_or_else(|| format!("Opened by Hangar for session {}.", session.id)),
        };
        let opened = match pulls::open(&self.api, &token, &req).await {
            Err(e @ GitHubError::SignInRequired(_)) => {
                self.store.delete_github_token(user.id)?;
                return Err(e);
            }
            other => other?,
        };
        let record = self.store.record_pull_request(&NewPullRequest {
            repo: repo.to_string(),
            number: opened.number,
            session_id: Some(session.id.clone()),
            author_user_id: Some(user.id),
            head_branch: opened.head.clone(),
            url: opened.url.clone(),
            title: opened.title.clone(),
            opened_at_ms: now_secs() * 1000,
        })?;
        Ok((opened, record))
    }

    /// The session's pull request, if one was opened.
    pub fn session_pull_request(
        &self,
        session_id: &str,
    ) -> Result<Option<PullRequest>, GitHubError> {
        Ok(self.store.session_pull_request(session_id)?)
    }

    /// Pull request figures per repository and overall.
    pub fn stats(&self) -> Result<(BTreeMap<String, PrStats>, PrStats), GitHubError> {
        Ok(self.store.pr_stats()?)
    }

    /// Handles one webhook delivery: the signature must match, the delivery id must be
    /// new; then the pull request record is updated (with the delivery id, in one
    /// transaction) and the outcome says what the session should see.
    pub fn handle_webhook(
        &self,
        event: Option<&str>,
        delivery: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<WebhookOutcome, GitHubError> {
        let secret = self.webhook_secret.as_ref().ok_or_else(|| {
            GitHubError::NotConfigured(
                "webhooks are not configured: set [github] webhook_secret_env or webhook_secret_file".into(),
            )
        })?;
        webhook::verify_signature(secret.expose().as_bytes(), body, signature)?;
        let delivery = delivery
            .filter(|d| !d.is_empty() && d.len() <= 128)
            .ok_or_else(|| {
                GitHubError::Invalid("the X-GitHub-Delivery header is missing".into())
            })?;
        let event_name = event
            .filter(|e| !e.is_empty() && e.len() <= 64)
            .ok_or_else(|| GitHubError::Invalid("the X-GitHub-Event header is missing".into()))?;
        let parsed = webhook::parse_event(event_name, body)?;
        let (pr, update) = match &parsed {
            WebhookEvent::PullRequest { action, pr, at_ms } => {
                let update = match action {
                    PullRequestAction::Opened => match pr.head_branch.strip_prefix("hangar/") {
                        Some(session_id) => PrUpdate::Opened {
                            session_id: session_id.to_string(),
                            head_branch: pr.head_branch.clone(),
                            url: pr.url.clone(),
                            title: pr.title.clone(),
                            at_ms: *at_ms,
                        },
                        None => PrUpdate::Nothing,
                    },
                    PullRequestAction::Closed { merged } => PrUpdate::Closed {
                        merged: *merged,
                        at_ms: *at_ms,
                        total_lines: pr.additions,
                    },
                    PullRequestAction::Reopened => PrUpdate::Reopened,
                    PullRequestAction::Synchronize => PrUpdate::Pushed,
                };
                (Some(pr), update)
            }
            WebhookEvent::Review {
                state, pr, at_ms, ..
            } => (
                Some(pr),
                PrUpdate::Reviewed {
                    approved: *state == ReviewState::Approved,
                    at_ms: *at_ms,
                },
            ),
            WebhookEvent::ReviewComment { pr, .. } => (Some(pr), PrUpdate::Nothing),
            WebhookEvent::Ping | WebhookEvent::Ignored { .. } => (None, PrUpdate::Nothing),
        };
        let (repo, number) = pr.map(|p| (p.repo.as_str(), p.number)).unwrap_or(("", 0));
        let known_before = match pr {
            Some(_) => self.store.pull_request(repo, number)?.is_some(),
            None => false,
        };
        let record = match self
            .store
            .apply_webhook(delivery, event_name, repo, number, &update)
        {
            Err(StoreError::DuplicateDelivery(d)) => return Err(GitHubError::Replayed(d)),
            other => other?,
        };
        let mut outcome = WebhookOutcome {
            session_id: record.as_ref().and_then(|r| r.session_id.clone()),
            ..WebhookOutcome::default()
        };
        let Some(rec) = &record else {
            return Ok(outcome);
        };
        let number_u = rec.number.max(0) as u64;
        match parsed {
            WebhookEvent::PullRequest { action, .. } => match action {
                PullRequestAction::Opened if !known_before => {
                    outcome.events.push(EventBody::PrOpened {
                        number: number_u,
                        url: rec.url.clone(),
                        title: rec.title.clone(),
                    })
                }
                PullRequestAction::Opened | PullRequestAction::Synchronize => {}
                PullRequestAction::Closed { .. } | PullRequestAction::Reopened => {
                    outcome.events.push(EventBody::PrUpdated {
                        number: number_u,
                        url: rec.url.clone(),
                        state: rec.state.clone(),
                    })
                }
            },
            WebhookEvent::Review {
                state,
                reviewer,
                body,
                ..
            } => outcome.events.push(EventBody::PrReviewed {
                number: number_u,
                url: rec.url.clone(),
                reviewer,
                state: state.as_str().to_string(),
                body,
            }),
            WebhookEvent::ReviewComment {
                author,
                author_id,
                path,
                line,
                body,
                url,
                ..
            } => {
                if self.prompt_repos.contains(&rec.repo.to_ascii_lowercase())
                    && let Some(user) = self.store.user_by_github_id(author_id)?
                {
                    let place = match line {
                        Some(l) => format!("{path} line {l}"),
                        None => path.clone(),
                    };
                    outcome.follow_up = Some((
                        Author {
                            user_id: Some(user.id),
                            login: user.login.clone(),
                            share_id: None,
                        },
                        format!(
                            "Review comment from @{author} on {place} in pull request #{}:\n\n{body}\n\n({url})",
                            rec.number
                        ),
                    ));
                }
                outcome.events.push(EventBody::PrReviewComment {
                    number: number_u,
                    url,
                    author,
                    path,
                    line,
                    body,
                });
            }
            WebhookEvent::Ping | WebhookEvent::Ignored { .. } => {}
        }
        outcome.pull_request = record;
        Ok(outcome)
    }
}

/// The server awaits these on a multi-threaded runtime: their futures must stay `Send`.
#[allow(dead_code)]
fn futures_are_send(g: &GitHub, u: &User, s: &SessionRecord) {
    fn send<T: Send>(_: T) {}
    send(g.open_pull_request(u, s, None, None, None));
    send(g.sign_in("", ""));
    send(g.check_installed(""));
    send(g.check_before_start(""));
}
