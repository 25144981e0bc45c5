//! The GitHub routes in-process against the fake GitHub of the test kit: sign-in with
//! state checks, a session's pull request opened with the caller's own token, webhooks
//! (forged and replayed ones refused, a merge recorded in the PR record, the session's log,
//! `/api/stats` and `/metrics`), and a review comment becoming a follow-up prompt.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use hangar_github::{Api, GitHub, GitHubApp, OAuthApp, Secret, TokenSeal, sign};
use hangar_sandbox::{
    EnvdClient, Limits, Rootfs, Runtime, Sandbox, SandboxError, SandboxSpec, Usage,
};
use hangar_server::{AppState, Backend};
use hangar_session::{MAX_EVENTS_PAGE, ScriptedExecutor, Sessions, SessionsConfig};
use hangar_store::Store;
use hangar_testkit::fake_github::{FakeGitHub, FakeUser, app_key_pair};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const SECRET: &str = "webhook-secret";

/// No sandboxes: these routes never touch one.
struct NoSandboxes;

#[async_trait::async_trait]
impl Runtime for NoSandboxes {
    async fn create(&self, _: SandboxSpec) -> Result<Sandbox, SandboxError> {
        Err(SandboxError::InvalidSpec("no sandboxes here".into()))
    }
    async fn envd(&self, id: &str) -> Result<EnvdClient, SandboxError> {
        Err(SandboxError::NotFound(id.into()))
    }
    async fn stop(&self, id: &str) -> Result<(), SandboxError> {
        Err(SandboxError::NotFound(id.into()))
    }
    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        Err(SandboxError::NotFound(id.into()))
    }
    async fn get(&self, id: &str) -> Result<Sandbox, SandboxError> {
        Err(SandboxError::NotFound(id.into()))
    }
    async fn list(&self) -> Result<Vec<Sandbox>, SandboxError> {
        Ok(Vec::new())
    }
    async fn stats(&self, id: &str) -> Result<Usage, SandboxError> {
        Err(SandboxError::NotFound(id.into()))
    }
}

struct Harness {
    app: axum::Router,
    fake: FakeGitHub,
    sessions: Sessions,
    store: Arc<Store>,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    json: Value,
    text: String,
}

impl Harness {
    async fn new() -> Harness {
        let dir = hangar_testkit::scratch_dir();
        let (private, public) = app_key_pair();
        let fake = FakeGitHub::start(7, &public, "Iv1.client", "client-secret").await;
        fake.install("acme/app");
        let store = Arc::new(Store::open_in_memory().unwrap());
        let api = Api::new(&fake.url()).unwrap();
        let github = GitHub::new(
            Arc::clone(&store),
            api.clone(),
            "github.com",
            TokenSeal::open_or_create(&dir.path().join("github-tokens.key")).unwrap(),
        )
        .with_app(GitHubApp::new(api.clone(), 7, &private, "github.com").unwrap())
        .with_oauth(OAuthApp::new(
            Api::web(&fake.url()).unwrap(),
            api,
            "Iv1.client",
            Secret::new("client-secret"),
            Some("http://hangar.test/auth/github/callback".into()),
        ))
        .with_webhook_secret(Secret::new(SECRET))
        .with_review_comment_prompts(["acme/app".to_string()]);
        let sessions = Sessions::new(
            SessionsConfig::new(dir.path().join("sessions")),
            Arc::clone(&store),
            Arc::new(ScriptedExecutor::default()),
        )
        .unwrap();
        let backend = Backend::new(
            Arc::new(NoSandboxes),
            Limits {
                memory_bytes: 1 << 30,
                pids: 256,
                cpus: 1.0,
            },
            Arc::new(|_: &str| Ok(Rootfs::HostRoot)),
        );
        let state = AppState::new(backend, Arc::clone(&store), sessions.clone())
            .unwrap()
            .with_github(Arc::new(github));
        Harness {
            app: hangar_server::app(state),
            fake,
            sessions,
            store,
            _dir: dir,
        }
    }

    async fn call(&self, req: Request<Body>) -> Answer {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        Answer {
            status,
            headers,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text,
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut req = Request::get(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        self.call(req.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        let req = Request::post(path)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(body.to_string()))
            .unwrap();
        self.call(req).await
    }

    async fn webhook(
        &self,
        event: &str,
        delivery: &str,
        body: &Value,
        signature: Option<String>,
    ) -> Answer {
        let bytes = serde_json::to_vec(body).unwrap();
        let sig = signature.unwrap_or_else(|| sign(SECRET.as_bytes(), &bytes));
        let req = Request::post("/webhooks/github")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sig)
            .header("content-type", "application/json")
            .body(Body::from(bytes))
            .unwrap();
        self.call(req).await
    }

    /// Signs `login` in through the routes; returns their Hangar token.
    async fn sign_in(&self, login: &str, id: i64) -> String {
        let code = self.fake.add_user(FakeUser {
            id,
            login: login.into(),
            name: None,
            email: Some(format!("{login}@example.com")),
            primary_email: format!("{login}@example.com"),
        });
        let login_answer = self.get("/auth/github/login", None).await;
        assert_eq!(login_answer.status, StatusCode::FOUND);
        let location = login_answer.headers["location"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            location.contains("redirect_uri=http%3A%2F%2Fhangar.test%2Fauth%2Fgithub%2Fcallback"),
            "{location}"
        );
        let state = location.split("state=").nth(1).unwrap().to_string();
        let a = self
            .get(
                &format!("/auth/github/callback?code={code}&state={state}"),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.headers["cache-control"], "no-store");
        // The state is single use.
        let again = self
            .get(
                &format!(
                    "/auth/github/callback?code={}&state={state}",
                    self.fake.code_for(login)
                ),
                None,
            )
            .await;
        assert_eq!(again.status, StatusCode::BAD_REQUEST);
        assert_eq!(again.json["error"]["code"], "sign_in_failed");
        a.json["token"].as_str().unwrap().to_string()
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        self.sessions
            .events(id, 0, MAX_EVENTS_PAGE)
            .await
            .unwrap()
            .iter()
            .map(|e| serde_json::from_str(&e.json).unwrap())
            .collect()
    }
}

fn pull(action: &str, session: &str, extra: Value) -> Value {
    let mut pr = json!({"number": 1, "state": "open", "title": "t",
        "html_url": "https://github.com/acme/app/pull/1",
        "created_at": "2026-11-24T12:00:00Z", "updated_at": "2026-11-24T12:00:00Z",
        "head": {"ref": format!("hangar/{session}"), "sha": "abc"}, "base": {"ref": "main"}});
    for (k, v) in extra.as_object().unwrap() {
        pr[k] = v.clone();
    }
    json!({"action": action, "number": 1, "pull_request": pr,
        "repository": {"full_name": "acme/app"}, "sender": {"login": "bob", "id": 2}})
}

#[tokio::test]
async fn sign_in_then_a_pr_as_the_user_then_webhooks_update_record_log_and_stats() {
    let h = Harness::new().await;
    // Bad callbacks: no parameters, an unknown state, GitHub's refusal.
    for (query, status) in [
        ("", StatusCode::BAD_REQUEST),
        ("?code=x&state=hgo_forged", StatusCode::BAD_REQUEST),
        (
            "?error=access_denied&error_description=The+user+denied",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let a = h.get(&format!("/auth/github/callback{query}"), None).await;
        assert_eq!(a.status, status, "{query}: {}", a.text);
        assert!(a.json["error"]["message"].is_string());
    }
    let alice_token = h.sign_in("alice", 1).await;
    let me = h.get("/api/me", Some(&alice_token)).await;
    assert_eq!(me.json["github_login"], "alice");
    let alice_id = me.json["id"].as_i64().unwrap();

    let session = h
        .sessions
        .create(alice_id, "acme/app", "Fix the flaky test")
        .await
        .unwrap();
    let path = format!("/api/sessions/{}/pr", session.id);
    assert_eq!(
        h.get(&path, Some(&alice_token)).await.status,
        StatusCode::NOT_FOUND
    );
    let opened = h.post(&path, &alice_token, json!({})).await;
    assert_eq!(opened.status, StatusCode::CREATED, "{}", opened.text);
    assert_eq!(opened.json["number"], 1);
    assert_eq!(opened.json["head_branch"], format!("hangar/{}", session.id));
    assert_eq!(h.fake.pulls()[0].author, "alice");
    let again = h.post(&path, &alice_token, json!({"title": "x"})).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json["existed"], true);
    let bad = h.post(&path, &alice_token, json!({"titel": "typo"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let none = h
        .post(
            "/api/sessions/ses-ffffffffffffffff/pr",
            &alice_token,
            json!({}),
        )
        .await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    let log = h.events(&session.id).await;
    assert_eq!(log.iter().filter(|e| e["type"] == "pr.opened").count(), 1);

    // Forged: 401 and nothing changes.
    let merged = pull(
        "closed",
        &session.id,
        json!({"merged": true, "merged_at": "2026-11-24T13:00:00Z"}),
    );
    let forged = h
        .webhook("pull_request", "d-1", &merged, Some(sign(b"guess", b"{}")))
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    assert_eq!(forged.json["error"]["code"], "invalid_signature");
    assert_eq!(h.get(&path, Some(&alice_token)).await.json["state"], "open");
    assert_eq!(h.events(&session.id).await.len(), log.len());

    let ok = h.webhook("pull_request", "d-1", &merged, None).await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{}", ok.text);
    let pr = h.get(&path, Some(&alice_token)).await;
    assert_eq!(pr.json["state"], "merged");
    let last = h.events(&session.id).await.pop().unwrap();
    assert_eq!(last["type"], "pr.updated");
    assert_eq!(last["data"]["state"], "merged");

    // Replayed: 401, nothing changes.
    let replay = h
        .webhook(
            "pull_request",
            "d-1",
            &pull("reopened", &session.id, json!({})),
            None,
        )
        .await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert_eq!(replay.json["error"]["code"], "replayed_delivery");
    assert_eq!(
        h.get(&path, Some(&alice_token)).await.json["state"],
        "merged"
    );

    let stats = h.get("/api/stats", Some(&alice_token)).await;
    assert_eq!(stats.status, StatusCode::OK);
    assert_eq!(stats.json["overall"]["prs_opened"], 1);
    assert_eq!(stats.json["overall"]["prs_merged"], 1);
    assert_eq!(stats.json["repos"]["acme/app"]["prs_merged"], 1);
    // From sessions to merged pull requests, per day, and nobody has prompted yet.
    let usage = &stats.json["usage"];
    assert_eq!(
        (
            &usage["sessions"],
            &usage["sessions_with_pr"],
            &usage["sessions_merged"]
        ),
        (&json!(1), &json!(1), &json!(1)),
        "{usage}"
    );
    let days = usage["days"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    let today = days.last().unwrap();
    assert_eq!(
        (&today["sessions"], &today["prs_opened"]),
        (&json!(1), &json!(1)),
        "{today}"
    );
    // Merged on the day GitHub's payload says.
    let merged: u64 = days.iter().map(|d| d["prs_merged"].as_u64().unwrap()).sum();
    assert_eq!(merged, 1, "{usage}");
    assert_eq!(stats.json["prompting_now"], json!([]));
    let prompted = h
        .post(
            &format!("/api/sessions/{}/prompts", session.id),
            &alice_token,
            json!({"text": "one more thing"}),
        )
        .await;
    assert_eq!(prompted.status, StatusCode::CREATED, "{}", prompted.json);
    let stats = h.get("/api/stats", Some(&alice_token)).await;
    assert_eq!(stats.json["prompting_now"], json!(["alice"]));
    let metrics = h.get("/metrics", None).await.text;
    assert!(
        metrics.contains("hangar_pull_requests{repo=\"acme/app\",what=\"merged\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        h.get("/api/stats", None).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Missing headers and undecodable payloads are 400.
    let bytes = b"not json".to_vec();
    let req = Request::post("/webhooks/github")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", "d-2")
        .header("x-hub-signature-256", sign(SECRET.as_bytes(), &bytes))
        .body(Body::from(bytes))
        .unwrap();
    let a = h.call(req).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
}

#[tokio::test]
async fn a_review_comment_becomes_a_prompt_of_the_commenters_user() {
    let h = Harness::new().await;
    let alice_token = h.sign_in("alice", 1).await;
    let carol_token = h.sign_in("carol", 3).await;
    let alice_id = h.get("/api/me", Some(&alice_token)).await.json["id"]
        .as_i64()
        .unwrap();
    let carol_id = h.get("/api/me", Some(&carol_token)).await.json["id"]
        .as_i64()
        .unwrap();
    let session = h.sessions.create(alice_id, "acme/app", "t").await.unwrap();
    let path = format!("/api/sessions/{}/pr", session.id);
    assert_eq!(
        h.post(&path, &alice_token, json!({})).await.status,
        StatusCode::CREATED
    );
    let mut comment = pull("created", &session.id, json!({}));
    comment["comment"] = json!({"id": 11, "user": {"login": "carol", "id": 3},
        "body": "Name this constant", "path": "src/lib.rs", "line": 3,
        "html_url": "https://github.com/acme/app/pull/1#discussion_r11",
        "created_at": "2026-11-24T12:31:00Z"});
    let a = h
        .webhook("pull_request_review_comment", "c-1", &comment, None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let events = h.events(&session.id).await;
    assert!(events.iter().any(|e| e["type"] == "pr.review_comment"));
    let queued = events
        .iter()
        .find(|e| e["type"] == "prompt.queued")
        .expect("a follow-up prompt");
    assert_eq!(queued["data"]["prompt"]["author"]["user_id"], carol_id);
    assert!(
        queued["data"]["prompt"]["text"]
            .as_str()
            .unwrap()
            .contains("Name this constant")
    );
}

#[tokio::test]
async fn a_session_on_a_repository_the_app_is_not_installed_on_is_refused_before_it_starts() {
    let h = Harness::new().await;
    let token = h.sign_in("alice", 1).await;
    for (name, url) in [
        ("acme/app", "https://github.com/acme/app"),
        ("acme/other", "https://github.com/acme/other.git"),
    ] {
        h.store
            .add_repo(&hangar_store::NewRepo {
                name: name.into(),
                url: url.into(),
                default_branch: "main".into(),
                description: String::new(),
                hints: Vec::new(),
                created_by: None,
            })
            .unwrap();
    }
    let refused = h
        .post(
            "/api/sessions",
            &token,
            json!({"repo": "acme/other", "prompt": "fix it"}),
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    assert_eq!(refused.json["error"]["code"], "github_app_not_installed");
    assert!(
        refused.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("acme/other")
    );
    assert!(
        h.store.sessions(100).unwrap().is_empty(),
        "nothing was created"
    );
    let ok = h
        .post("/api/sessions", &token, json!({"repo": "acme/app"}))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
}

#[tokio::test]
async fn without_github_configured_the_routes_say_so() {
    let dir = hangar_testkit::scratch_dir();
    let store = Arc::new(Store::open_in_memory().unwrap());
    let sessions = Sessions::new(
        SessionsConfig::new(dir.path().join("sessions")),
        Arc::clone(&store),
        Arc::new(ScriptedExecutor::default()),
    )
    .unwrap();
    let backend = Backend::new(
        Arc::new(NoSandboxes),
        Limits {
            memory_bytes: 1 << 30,
            pids: 256,
            cpus: 1.0,
        },
        Arc::new(|_: &str| Ok(Rootfs::HostRoot)),
    );
    let app = hangar_server::app(AppState::new(backend, store, sessions).unwrap());
    let doc = hangar_server::openapi().to_json().unwrap();
    for path in [
        "/auth/github/login",
        "/auth/github/callback",
        "/webhooks/github",
        "/api/sessions/{id}/pr",
        "/api/stats",
    ] {
        assert!(
            doc.contains(&format!("\"{path}\"")),
            "{path} is in the OpenAPI document"
        );
    }
    for req in [
        Request::get("/auth/github/login")
            .body(Body::empty())
            .unwrap(),
        Request::post("/webhooks/github")
            .body(Body::from("{}"))
            .unwrap(),
    ] {
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "github_not_configured");
    }
}
