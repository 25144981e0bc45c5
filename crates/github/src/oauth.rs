//! Users' sign-in with GitHub's OAuth web flow
//! (<https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps#web-application-flow>):
//! the authorize URL carries a `state` Hangar issued, the callback's `code` is exchanged at
//! `POST /login/oauth/access_token` on the web host, and `GET /user` (with `/user/emails`
//! when the profile hides the address) says who signed in.

use serde::Deserialize;

use crate::{Api, GitHubError, Secret, now_secs};

/// The OAuth client (the GitHub App's own client id and secret, or an OAuth App's).
pub struct OAuthApp {
    web: Api,
    api: Api,
    client_id: String,
    client_secret: Secret,
    redirect_url: Option<String>,
}

impl std::fmt::Debug for OAuthApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthApp")
            .field("client_id", &self.client_id)
            .field("web", &self.web)
            .finish_non_exhaustive()
    }
}

/// A user's access token, as GitHub issued it.
#[derive(Clone, Debug)]
pub struct UserToken {
    /// The token.
    pub token: Secret,
    /// When it expires (tokens of Apps with expiring user tokens), Unix seconds.
    pub expires_at: Option<i64>,
}

/// Who signed in.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct GitHubUser {
    /// GitHub's account id (stable across renames).
    pub id: i64,
    /// The login.
    pub login: String,
    /// Display name, if set.
    #[serde(default)]
    pub name: Option<String>,
    /// Email: the public one, else the primary verified one.
    #[serde(default)]
    pub email: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct Email {
    email: String,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    verified: bool,
}

impl OAuthApp {
    /// The client `client_id`/`client_secret` on the web host `web` (for the exchange) and
    /// the API `api` (for the user's profile). GitHub sends people back to `redirect_url`,
    /// or to the callback URL registered with the client when it is `None`.
    pub fn new(
        web: Api,
        api: Api,
        client_id: &str,
        client_secret: Secret,
        redirect_url: Option<String>,
    ) -> OAuthApp {
        OAuthApp {
            web,
            api,
            client_id: client_id.to_string(),
            client_secret,
            redirect_url,
        }
    }

    /// Where to send a person to sign in, carrying `state`.
    pub fn authorize_url(&self, state: &str) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("client_id", &self.client_id);
        if let Some(r) = &self.redirect_url {
            q.append_pair("redirect_uri", r);
        }
        q.append_pair("state", state);
        format!("{}/login/oauth/authorize?{}", self.web.base(), q.finish())
    }

    /// Exchanges the callback's `code` for the user's token.
    pub async fn exchange(&self, code: &str) -> Result<UserToken, GitHubError> {
        if code.is_empty() || code.len() > 512 {
            return Err(GitHubError::OAuth(
                "the callback carries no usable code".into(),
            ));
        }
        let what = "exchanging the sign-in code";
        let mut body = serde_json::json!({
            "client_id": self.client_id,
            "client_secret": self.client_secret.expose(),
            "code": code,
        });
        if let Some(r) = &self.redirect_url {
            body["redirect_uri"] = r.clone().into();
        }
        let answer = self
            .web
            .post_anonymous("/login/oauth/access_token", &body, what)
            .await?;
        if answer.status == 401 || answer.status == 404 {
            return Err(GitHubError::OAuth(format!(
                "GitHub refused the OAuth client ({}); check github.client_id and the client secret",
                answer.message()
            )));
        }
        // Failures come back as 200 with an `error` field.
        let t: TokenAnswer = answer.decode(what)?;
        match (t.access_token, t.error) {
            (Some(token), None) if !token.is_empty() => Ok(UserToken {
                token: Secret(token),
                expires_at: t.expires_in.map(|s| now_secs() + s),
            }),
            (_, error) => Err(GitHubError::OAuth(format!(
                "{} ({}); start again from /auth/github/login",
                t.error_description
                    .unwrap_or_else(|| "GitHub issued no token".into()),
                error.unwrap_or_default()
            ))),
        }
    }

    /// The account a user token belongs to, with its email.
    pub async fn user(&self, token: &Secret) -> Result<GitHubUser, GitHubError> {
        let answer = self
            .api
            .get(token.expose(), "/user", "reading the GitHub user")
            .await?;
        if answer.status == 401 {
            return Err(GitHubError::SignInRequired(format!(
                "GitHub refused the user's token ({})",
                answer.message()
            )));
        }
        let mut user: GitHubUser = answer.decode("reading the GitHub user")?;
        if user.email.as_deref().is_none_or(str::is_empty) {
            let what = "reading the GitHub user's emails";
            let answer = self.api.get(token.expose(), "/user/emails", what).await?;
            // Without the email permission the address stays unknown; that is no failure.
            if answer.status == 200 {
                let emails: Vec<Email> = answer.decode(what)?;
                user.email = emails
                    .into_iter()
                    .find(|e| e.primary && e.verified)
                    .map(|e| e.email);
            }
        }
        Ok(user)
    }
}
