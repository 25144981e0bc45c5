//! A fake GitHub for tests (never part of the product). It serves, on one address, the
//! REST endpoints Hangar uses and the OAuth web host's token exchange, with GitHub's
//! documented paths, JSON shapes and statuses:
//!
//! - `GET /repos/{owner}/{repo}/installation` and
//!   `POST /app/installations/{id}/access_tokens`: only with a valid App JWT (RS256,
//!   checked with the App's public key; `iss` the App id; at most 10 minutes long), 401
//!   otherwise, 404 when the App is not installed;
//! - `POST /login/oauth/access_token`: a JSON answer only with `Accept: application/json`,
//!   and failures as 200 with `error`, like GitHub;
//! - `GET /user`, `GET /user/emails`, `GET /repos/{owner}/{repo}`,
//!   `POST|GET /repos/{owner}/{repo}/pulls`: only with a user's OAuth token (401 "Bad
//!   credentials" otherwise), 422 "A pull request already exists", and 403 with
//!   `X-Accepted-GitHub-Permissions` when a test makes the repository refuse.
//!
//! Every request is recorded with its `Authorization` header.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// A request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Accept` header, if any.
    pub accept: Option<String>,
}

/// A GitHub account the fake knows.
#[derive(Clone, Debug)]
pub struct FakeUser {
    /// Account id.
    pub id: i64,
    /// Login.
    pub login: String,
    /// Display name.
    pub name: Option<String>,
    /// Public email (`None`: hidden, so `/user/emails` is needed).
    pub email: Option<String>,
    /// Primary verified email.
    pub primary_email: String,
}

/// A pull request the fake holds.
#[derive(Clone, Debug)]
pub struct FakePull {
    /// `owner/repo`.
    pub repo: String,
    /// Number.
    pub number: i64,
    /// Head branch.
    pub head: String,
    /// Base branch.
    pub base: String,
    /// Title.
    pub title: String,
    /// The login of the user whose token opened it.
    pub author: String,
    /// `open` or `closed`.
    pub state: String,
}

#[derive(Default)]
struct Inner {
    app_id: u64,
    public_key_pem: String,
    installations: HashMap<String, u64>,
    token_ttl_secs: i64,
    installation_tokens: HashMap<String, (u64, i64)>,
    token_requests: usize,
    client_id: String,
    client_secret: String,
    codes: HashMap<String, String>,
    users: HashMap<String, FakeUser>,
    user_tokens: HashMap<String, String>,
    repos: HashMap<String, String>,
    pulls: Vec<FakePull>,
    forbidden: HashMap<String, String>,
    seen: Vec<Seen>,
    counter: u64,
}

type Shared = Arc<Mutex<Inner>>;

/// A running fake GitHub.
pub struct FakeGitHub {
    /// Where it listens.
    pub addr: SocketAddr,
    inner: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A fresh RSA key pair for a test App, `(private PKCS#1 PEM, public PEM)`, made with the
/// `openssl` command (as GitHub's downloaded keys are PKCS#1).
pub fn app_key_pair() -> (String, String) {
    let dir = crate::scratch_dir();
    let key = dir.path().join("app.pem");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("openssl is needed for GitHub App tests ({e}); run scripts/install-deps.sh")
            });
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    run(&[
        "genrsa",
        "-traditional",
        "-out",
        key.to_str().unwrap(),
        "2048",
    ]);
    let public = run(&["rsa", "-in", key.to_str().unwrap(), "-pubout"]);
    (
        std::fs::read_to_string(&key).unwrap(),
        String::from_utf8(public).unwrap(),
    )
}

fn gh_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(
            json!({"message": message, "documentation_url": "https://docs.github.com/rest"}),
        ),
    )
        .into_response()
}

fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        .then(|| token.to_string())
}

impl Inner {
    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// True when the request carries a valid App JWT.
    fn app_authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = bearer(headers) else {
            return false;
        };
        let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(self.public_key_pem.as_bytes())
        else {
            return false;
        };
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_required_spec_claims(&["exp", "iat", "iss"]);
        v.set_issuer(&[self.app_id.to_string()]);
        let Ok(data) = jsonwebtoken::decode::<Value>(&token, &key, &v) else {
            return false;
        };
        let (iat, exp) = (data.claims["iat"].as_i64(), data.claims["exp"].as_i64());
        matches!((iat, exp), (Some(i), Some(e)) if e - i <= 600 && i <= now())
    }

    fn user_of(&self, headers: &HeaderMap) -> Option<FakeUser> {
        let token = bearer(headers)?;
        let login = self.user_tokens.get(&token)?;
        self.users.get(login).cloned()
    }

    fn pull_json(&self, p: &FakePull, base_url: &str) -> Value {
        let owner = p.repo.split('/').next().unwrap_or("");
        let user = self.users.get(&p.author);
        json!({
            "id": 1000 + p.number,
            "number": p.number,
            "state": p.state,
            "title": p.title,
            "html_url": format!("{base_url}/{}/pull/{}", p.repo, p.number),
            "url": format!("{base_url}/repos/{}/pulls/{}", p.repo, p.number),
            "user": {"login": p.author, "id": user.map(|u| u.id).unwrap_or(0)},
            "head": {"ref": p.head, "label": format!("{owner}:{}", p.head), "sha": "0123456789abcdef0123456789abcdef01234567"},
            "base": {"ref": p.base, "label": format!("{owner}:{}", p.base)},
            "merged": false,
            "draft": false,
        })
    }
}

impl FakeGitHub {
    /// Starts a fake for App `app_id` whose public key is `public_key_pem`, with OAuth
    /// client `client_id`/`client_secret`. Installation tokens live an hour.
    pub async fn start(
        app_id: u64,
        public_key_pem: &str,
        client_id: &str,
        client_secret: &str,
    ) -> FakeGitHub {
        let inner: Shared = Arc::new(Mutex::new(Inner {
            app_id,
            public_key_pem: public_key_pem.to_string(),
            token_ttl_secs: 3600,
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            ..Inner::default()
        }));
        let app = Router::new()
            .route("/repos/{owner}/{repo}/installation", get(installation))
            .route("/app/installations/{id}/access_tokens", post(access_token))
            .route("/login/oauth/access_token", post(oauth_token))
            .route("/user", get(user))
            .route("/user/emails", get(user_emails))
            .route("/repos/{owner}/{repo}", get(repository))
            .route(
                "/repos/{owner}/{repo}/pulls",
                post(create_pull).get(list_pulls),
            )
            .fallback(|| async { gh_error(StatusCode::NOT_FOUND, "Not Found") })
            .layer(axum::middleware::from_fn_with_state(inner.clone(), record))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGitHub { addr, inner, task }
    }

    /// `http://ADDR`: both the API base and the web base.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// Installs the App on `repo` (`owner/name`, default branch `main`).
    pub fn install(&self, repo: &str) -> u64 {
        let mut s = self.lock();
        let id = 100 + s.next();
        s.installations.insert(repo.to_string(), id);
        s.repos.insert(repo.to_string(), "main".into());
        id
    }

    /// Makes installation tokens issued from now on live `secs`.
    pub fn set_token_ttl(&self, secs: i64) {
        self.lock().token_ttl_secs = secs;
    }

    /// How many installation tokens were issued.
    pub fn token_requests(&self) -> usize {
        self.lock().token_requests
    }

    /// Adds a GitHub account and returns a one-time OAuth code that signs it in.
    pub fn add_user(&self, user: FakeUser) -> String {
        let mut s = self.lock();
        let code = format!("code{}", s.next());
        s.codes.insert(code.clone(), user.login.clone());
        s.users.insert(user.login.clone(), user);
        code
    }

    /// A new one-time OAuth code for an existing account.
    pub fn code_for(&self, login: &str) -> String {
        let mut s = self.lock();
        let code = format!("code{}", s.next());
        s.codes.insert(code.clone(), login.to_string());
        code
    }

    /// Revokes every OAuth token of `login` (GitHub answers 401 to them from now on).
    pub fn revoke_user_tokens(&self, login: &str) {
        self.lock().user_tokens.retain(|_, l| l != login);
    }

    /// Makes creating pull requests on `repo` answer 403 naming `permission`.
    pub fn forbid_pulls(&self, repo: &str, permission: &str) {
        self.lock()
            .forbidden
            .insert(repo.to_string(), permission.to_string());
    }

    /// The pull requests opened.
    pub fn pulls(&self) -> Vec<FakePull> {
        self.lock().pulls.clone()
    }

    /// Every request received, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// The user tokens issued to `login`.
    pub fn tokens_of(&self, login: &str) -> Vec<String> {
        self.lock()
            .user_tokens
            .iter()
            .filter(|(_, l)| *l == login)
            .map(|(t, _)| t.clone())
            .collect()
    }
}

async fn record(
    State(s): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let h = req.headers();
    let seen = Seen {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        authorization: h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        accept: h
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
    };
    s.lock().unwrap().seen.push(seen);
    next.run(req).await
}

async fn installation(
    State(s): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let s = s.lock().unwrap();
    if !s.app_authorized(&headers) {
        return gh_error(
            StatusCode::UNAUTHORIZED,
            "A JSON web token could not be decoded",
        );
    }
    match s.installations.get(&format!("{owner}/{repo}")) {
        Some(id) => axum::Json(json!({
            "id": id,
            "app_id": s.app_id,
            "account": {"login": owner},
            "repository_selection": "selected",
            "access_tokens_url": format!("/app/installations/{id}/access_tokens"),
            "permissions": {"contents": "write", "pull_requests": "write", "metadata": "read"},
        }))
        .into_response(),
        None => gh_error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn access_token(
    State(s): State<Shared>,
    Path(id): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = s.lock().unwrap();
    if !s.app_authorized(&headers) {
        return gh_error(
            StatusCode::UNAUTHORIZED,
            "A JSON web token could not be decoded",
        );
    }
    if !s.installations.values().any(|i| *i == id) {
        return gh_error(StatusCode::NOT_FOUND, "Not Found");
    }
    let repos: Vec<Value> = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b["repositories"].as_array().cloned())
        .unwrap_or_default();
    s.token_requests += 1;
    let token = format!("ghs_fake{}", s.next());
    let expires = now() + s.token_ttl_secs;
    s.installation_tokens.insert(token.clone(), (id, expires));
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "token": token,
            "expires_at": rfc3339(expires),
            "permissions": {"contents": "write", "pull_requests": "write", "metadata": "read"},
            "repository_selection": "selected",
            "repositories": repos.iter().map(|r| json!({"name": r})).collect::<Vec<_>>(),
        })),
    )
        .into_response()
}

async fn oauth_token(
    State(s): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let mut s = s.lock().unwrap();
    // GitHub takes the parameters as JSON, a form or the query string.
    let mut params: HashMap<String, String> = HashMap::new();
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&body) {
        for (k, v) in m {
            if let Some(v) = v.as_str() {
                params.insert(k, v.to_string());
            }
        }
    }
    for part in std::str::from_utf8(&body)
        .unwrap_or("")
        .split('&')
        .chain(uri.query().unwrap_or("").split('&'))
    {
        if let Some((k, v)) = part.split_once('=') {
            params.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
    }
    let answer = |v: Value| -> Response {
        let wants_json = headers
            .get("accept")
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("application/json"));
        if wants_json {
            axum::Json(v).into_response()
        } else {
            let form: Vec<String> = v
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            (
                [("content-type", "application/x-www-form-urlencoded")],
                form.join("&"),
            )
                .into_response()
        }
    };
    if params.get("client_id") != Some(&s.client_id)
        || params.get("client_secret") != Some(&s.client_secret)
    {
        return answer(json!({"error": "incorrect_client_credentials",
            "error_description": "The client_id and/or client_secret passed are incorrect.",
            "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#incorrect-client-credentials"}));
    }
    let Some(login) = params.get("code").and_then(|c| s.codes.remove(c)) else {
        return answer(json!({"error": "bad_verification_code",
            "error_description": "The code passed is incorrect or expired.",
            "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#bad-verification-code"}));
    };
    let token = format!("gho_fake{}", s.next());
    s.user_tokens.insert(token.clone(), login);
    answer(json!({"access_token": token, "token_type": "bearer", "scope": ""}))
}

async fn user(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let s = s.lock().unwrap();
    match s.user_of(&headers) {
        Some(u) => axum::Json(json!({"login": u.login, "id": u.id, "type": "User",
            "name": u.name, "email": u.email}))
        .into_response(),
        None => gh_error(StatusCode::UNAUTHORIZED, "Bad credentials"),
    }
}

async fn user_emails(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let s = s.lock().unwrap();
    match s.user_of(&headers) {
        Some(u) => axum::Json(json!([
            {"email": format!("{}@users.noreply.example", u.login), "primary": false, "verified": true, "visibility": null},
            {"email": u.primary_email, "primary": true, "verified": true, "visibility": "private"},
        ]))
        .into_response(),
        None => gh_error(StatusCode::UNAUTHORIZED, "Bad credentials"),
    }
}

async fn repository(
    State(s): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let s = s.lock().unwrap();
    if s.user_of(&headers).is_none() {
        return gh_error(StatusCode::UNAUTHORIZED, "Bad credentials");
    }
    let full = format!("{owner}/{repo}");
    match s.repos.get(&full) {
        Some(default_branch) => axum::Json(json!({"id": 1, "name": repo, "full_name": full,
            "owner": {"login": owner}, "private": true, "default_branch": default_branch}))
        .into_response(),
        None => gh_error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn create_pull(
    State(s): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = s.lock().unwrap();
    let Some(u) = s.user_of(&headers) else {
        return gh_error(StatusCode::UNAUTHORIZED, "Bad credentials");
    };
    let full = format!("{owner}/{repo}");
    if !s.repos.contains_key(&full) {
        return gh_error(StatusCode::NOT_FOUND, "Not Found");
    }
    if let Some(permission) = s.forbidden.get(&full) {
        let mut r = gh_error(
            StatusCode::FORBIDDEN,
            "Resource not accessible by integration",
        );
        r.headers_mut()
            .insert("x-accepted-github-permissions", permission.parse().unwrap());
        return r;
    }
    let Ok(b) = serde_json::from_slice::<Value>(&body) else {
        return gh_error(StatusCode::BAD_REQUEST, "Problems parsing JSON");
    };
    let (Some(title), Some(head), Some(base)) =
        (b["title"].as_str(), b["head"].as_str(), b["base"].as_str())
    else {
        return gh_error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    };
    if s.pulls
        .iter()
        .any(|p| p.repo == full && p.head == head && p.base == base && p.state == "open")
    {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"message": "Validation Failed",
                "errors": [{"resource": "PullRequest", "code": "custom",
                    "message": format!("A pull request already exists for {owner}:{head}.")}],
                "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
                "status": "422"})),
        )
            .into_response();
    }
    let number = s.pulls.len() as i64 + 1;
    let pull = FakePull {
        repo: full,
        number,
        head: head.to_string(),
        base: base.to_string(),
        title: title.to_string(),
        author: u.login.clone(),
        state: "open".into(),
    };
    let base_url = format!(
        "http://{}",
        headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("github.test")
    );
    let body = s.pull_json(&pull, &base_url);
    s.pulls.push(pull);
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

async fn list_pulls(
    State(s): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let s = s.lock().unwrap();
    if s.user_of(&headers).is_none() {
        return gh_error(StatusCode::UNAUTHORIZED, "Bad credentials");
    }
    let full = format!("{owner}/{repo}");
    let base_url = format!(
        "http://{}",
        headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("github.test")
    );
    let state = q.get("state").map(String::as_str).unwrap_or("open");
    let list: Vec<Value> = s
        .pulls
        .iter()
        .filter(|p| p.repo == full)
        .filter(|p| state == "all" || p.state == state)
        .filter(|p| {
            q.get("head")
                .is_none_or(|h| *h == format!("{owner}:{}", p.head))
        })
        .filter(|p| q.get("base").is_none_or(|b| *b == p.base))
        .map(|p| s.pull_json(p, &base_url))
        .collect();
    axum::Json(Value::Array(list)).into_response()
}
