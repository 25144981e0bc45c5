//! The GitHub App: an RS256 JWT signed with the App's private key
//! (<https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app>)
//! finds the repository's installation and mints an installation access token scoped to
//! that repository. Tokens are cached until shortly before their `expires_at`, then
//! replaced. They are what git uses to clone, fetch and push.

use std::collections::HashMap;
use std::sync::Mutex;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::{Api, GitHubError, RepoName, Secret, now_secs};

/// How long before its expiry a cached installation token is replaced (GitHub's tokens
/// live an hour; a git operation started with a token must not outlive it).
pub const DEFAULT_REFRESH_MARGIN_SECS: i64 = 300;

/// An installation access token.
#[derive(Clone, Debug)]
pub struct InstallationToken {
    /// The token (`ghs_…`).
    pub token: Secret,
    /// When GitHub says it expires, seconds since the Unix epoch.
    pub expires_at: i64,
    /// The installation it belongs to.
    pub installation_id: u64,
}

/// A GitHub App, as Hangar authenticates to GitHub.
pub struct GitHubApp {
    api: Api,
    app_id: u64,
    key: EncodingKey,
    web_host: String,
    refresh_margin_secs: i64,
    cache: Mutex<HashMap<RepoName, InstallationToken>>,
}

impl std::fmt::Debug for GitHubApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubApp")
            .field("app_id", &self.app_id)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims {
    iat: i64,
    exp: i64,
    iss: String,
}

#[derive(Deserialize)]
struct Installation {
    id: u64,
}

#[derive(Deserialize)]
struct AccessToken {
    token: String,
    expires_at: chrono::DateTime<chrono::Utc>,
}

impl GitHubApp {
    /// The App `app_id` with its private key (the PEM file GitHub lets you download);
    /// `web_host` is where its repositories live (`github.com`), to recognise their URLs.
    pub fn new(
        api: Api,
        app_id: u64,
        private_key_pem: &str,
        web_host: &str,
    ) -> Result<GitHubApp, GitHubError> {
        let key = EncodingKey::from_rsa_pem(private_key_pem.as_bytes()).map_err(|e| {
            GitHubError::Key(format!(
                "the GitHub App private key is not an RSA key in PEM form ({e}); use the .pem file GitHub generated for the App"
            ))
        })?;
        Ok(GitHubApp {
            api,
            app_id,
            key,
            web_host: web_host.to_ascii_lowercase(),
            refresh_margin_secs: DEFAULT_REFRESH_MARGIN_SECS,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces cached tokens this many seconds before they expire.
    pub fn with_refresh_margin(mut self, secs: i64) -> GitHubApp {
        self.refresh_margin_secs = secs;
        self
    }

    /// The App's id.
    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    /// A fresh JWT for the App: issued 60 s in the past (clock drift), valid 9 minutes
    /// (GitHub allows at most 10).
    pub fn jwt(&self) -> Result<Secret, GitHubError> {
        let now = now_secs();
        let claims = Claims {
            iat: now - 60,
            exp: now + 9 * 60,
            iss: self.app_id.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map(Secret)
            .map_err(|e| GitHubError::Key(format!("signing the GitHub App JWT: {e}")))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RepoName, InstallationToken>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, repo: &RepoName) -> Option<InstallationToken> {
        let now = now_secs();
        self.lock()
            .get(repo)
            .filter(|t| t.expires_at - self.refresh_margin_secs > now)
            .cloned()
    }

    /// The installation of the App on `repo`, or [`GitHubError::NotInstalled`].
    pub async fn installation_id(&self, repo: &RepoName) -> Result<u64, GitHubError> {
        let what = format!("finding the GitHub App's installation on {repo}");
        let jwt = self.jwt()?;
        let answer = self
            .api
            .get(
                jwt.expose(),
                &format!("/repos/{}/{}/installation", repo.owner, repo.name),
                &what,
            )
            .await?;
        match answer.status {
            404 => Err(GitHubError::NotInstalled {
                repo: repo.to_string(),
            }),
            401 => Err(GitHubError::Unauthorized {
                what,
                message: format!(
                    "{}; check github.app_id ({}) and github.private_key_file",
                    answer.message(),
                    self.app_id
                ),
            }),
            _ => Ok(answer.decode::<Installation>(&what)?.id),
        }
    }

    /// Checks that the App is installed on `repo` (`owner/name` or its URL) before anything
    /// is started for it.
    pub async fn check_installed(&self, repo: &str) -> Result<RepoName, GitHubError> {
        let repo = RepoName::parse(repo, &self.web_host)?;
        if self.cached(&repo).is_none() {
            self.installation_id(&repo).await?;
        }
        Ok(repo)
    }

    /// An installation token for `repo`, from the cache while it has more than the refresh
    /// margin left, else a new one scoped to that repository.
    pub async fn installation_token(
        &self,
        repo: &RepoName,
    ) -> Result<InstallationToken, GitHubError> {
        if let Some(t) = self.cached(repo) {
            return Ok(t);
        }
        let installation_id = self.installation_id(repo).await?;
        let what = format!("creating an installation token for {repo}");
        let jwt = self.jwt()?;
        let body = serde_json::json!({ "repositories": [repo.name] });
        let answer = self
            .api
            .post(
                jwt.expose(),
                &format!("/app/installations/{installation_id}/access_tokens"),
                &body,
                &what,
            )
            .await?;
        let t: AccessToken = answer.decode(&what)?;
        let token = InstallationToken {
            token: Secret(t.token),
            expires_at: t.expires_at.timestamp(),
            installation_id,
        };
        self.lock().insert(repo.clone(), token.clone());
        Ok(token)
    }

    /// The token git uses for `repo` (`owner/name` or its URL): hand it to the git
    /// command only, as the password of user `x-access-token`.
    pub async fn token_for(&self, repo: &str) -> Result<Secret, GitHubError> {
        let repo = RepoName::parse(repo, &self.web_host)?;
        Ok(self.installation_token(&repo).await?.token)
    }

    /// Drops the cached token of `repo` (GitHub refused it: the installation changed).
    pub fn invalidate(&self, repo: &RepoName) {
        self.lock().remove(repo);
    }
}

/// git asks synchronously; a cached token answers at once. A new one needs GitHub: on a
/// multi-threaded Tokio runtime the calling worker blocks in place while it is fetched,
/// outside any runtime a small one is started. A single-threaded runtime cannot do either
/// without deadlocking; there, call [`GitHubApp::token_for`] before starting git.
impl hangar_images::git::Credentials for GitHubApp {
    fn credential(&self, url: &str) -> Result<Option<hangar_images::git::GitCredential>, String> {
        let Ok(repo) = RepoName::parse(url, &self.web_host) else {
            return Ok(None);
        };
        if !url.contains("://") {
            return Ok(None);
        }
        let token = match self.cached(&repo) {
            Some(t) => t,
            None => {
                let fetch = self.installation_token(&repo);
                let result = match tokio::runtime::Handle::try_current() {
                    Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                        tokio::task::block_in_place(|| h.block_on(fetch))
                    }
                    Ok(_) => {
                        return Err(format!(
                            "no cached GitHub token for {repo}: fetch it with token_for first on a single-threaded runtime"
                        ));
                    }
                    Err(_) => tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?
                        .block_on(fetch),
                };
                result.map_err(|e| e.to_string())?
            }
        };
        Ok(Some(hangar_images::git::GitCredential {
            username: "x-access-token".into(),
            password: token.token.expose().to_string(),
        }))
    }
}
