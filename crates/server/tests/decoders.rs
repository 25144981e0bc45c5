//! Property tests over the request decoders: whatever bytes or JSON arrive as the body of
//! `POST /api/sandboxes` or `POST /api/sandboxes/{id}/exec`, the server answers with success
//! or a 4xx JSON error, never a 5xx and never a panic. The router runs in-process against an
//! in-memory runtime, so thousands of cases take a second.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use hangar_protocol::session::Author;
use hangar_sandbox::{
    EnvdClient, Limits, Rootfs, Runtime, Sandbox, SandboxError, SandboxSpec, Status, Usage,
};
use hangar_server::{AppState, Backend};
use hangar_session::{ScriptedExecutor, Sessions, SessionsConfig};
use hangar_store::Store;
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

const KNOWN: &str = "sb-fake00000001";

/// A runtime that keeps sandboxes in memory and has no envd: exec answers 409.
#[derive(Default)]
struct FakeRuntime {
    sandboxes: Mutex<Vec<Sandbox>>,
}

impl FakeRuntime {
    fn with_known() -> FakeRuntime {
        let rt = FakeRuntime::default();
        rt.sandboxes.lock().unwrap().push(Sandbox {
            id: KNOWN.into(),
            status: Status::Running,
            spec: SandboxSpec {
                rootfs: Rootfs::HostRoot,
                limits: DEFAULTS,
                network: Default::default(),
            },
            created_at_ms: 1,
            init_pid: None,
            socket: "/nonexistent".into(),
        });
        rt
    }

    fn find(&self, id: &str) -> Result<Sandbox, SandboxError> {
        self.sandboxes
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.id == id)
            .cloned()
            .ok_or_else(|| SandboxError::NotFound(id.into()))
    }
}

const DEFAULTS: Limits = Limits {
    memory_bytes: 1 << 30,
    pids: 256,
    cpus: 1.0,
};

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, SandboxError> {
        if spec.limits.memory_bytes < (8 << 20) || spec.limits.pids < 4 {
            return Err(SandboxError::InvalidSpec("limits too small".into()));
        }
        // Created sandboxes are not kept: the property runs thousands of cases.
        Ok(Sandbox {
            id: "sb-new".into(),
            status: Status::Running,
            spec,
            created_at_ms: 2,
            init_pid: None,
            socket: "/nonexistent".into(),
        })
    }
    async fn envd(&self, id: &str) -> Result<EnvdClient, SandboxError> {
        self.find(id)?;
        Err(SandboxError::NotRunning {
            id: id.into(),
            state: "fake".into(),
        })
    }
    async fn stop(&self, id: &str) -> Result<(), SandboxError> {
        self.find(id).map(|_| ())
    }
    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        self.find(id).map(|_| ())
    }
    async fn get(&self, id: &str) -> Result<Sandbox, SandboxError> {
        self.find(id)
    }
    async fn list(&self) -> Result<Vec<Sandbox>, SandboxError> {
        Ok(self.sandboxes.lock().unwrap().clone())
    }
    async fn stats(&self, id: &str) -> Result<Usage, SandboxError> {
        self.find(id).map(|_| Usage::default())
    }
}

struct Harness {
    app: axum::Router,
    token: String,
    rt: tokio::runtime::Runtime,
    /// A session that exists, with a prompt queued behind a long-running one.
    session: String,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_memory().unwrap());
        let (admin, token) = store.ensure_admin().unwrap().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sessions = Sessions::new(
            SessionsConfig::new(dir.path().join("sessions")),
            Arc::clone(&store),
            Arc::new(ScriptedExecutor::default()),
        )
        .unwrap();
        let session = rt.block_on(async {
            let s = sessions.create(admin.id, "acme/app", "t").await.unwrap();
            let me = Author {
                user_id: Some(admin.id),
                login: admin.login.clone(),
                share_id: None,
            };
            sessions
                .prompt(&s.id, me.clone(), "deltas=1000000 delay_ms=60000".into())
                .await
                .unwrap();
            sessions.prompt(&s.id, me, "queued".into()).await.unwrap();
            s.id
        });
        let backend = Backend::new(
            Arc::new(FakeRuntime::with_known()),
            DEFAULTS,
            Arc::new(|arg: &str| match arg {
                "host" => Ok(Rootfs::HostRoot),
                other => Err(SandboxError::InvalidSpec(format!(
                    "rootfs {other}: missing"
                ))),
            }),
        );
        let state = AppState::new(backend, store, sessions).unwrap();
        Harness {
            app: hangar_server::app(state),
            token: token.expose().to_string(),
            rt,
            session,
            _dir: dir,
        }
    }

    fn post(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        self.send("POST", path, body)
    }

    fn send(&self, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        self.rt.block_on(async {
            let resp = self.app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("{path}: {status} with a non-JSON body ({e}): {bytes:?}")
            });
            (status, value)
        })
    }
}

/// Success, or a client error in the API's error shape; never a server error.
fn assert_answered_well(what: &str, (status, body): (StatusCode, Value)) {
    assert!(!status.is_server_error(), "{what}: {status} {body}");
    if status.is_client_error() {
        let code = body["error"]["code"].as_str().unwrap_or_default();
        assert!(
            !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{what}: {status} {body}"
        );
        assert!(body["error"]["message"].is_string(), "{what}: {body}");
    } else {
        assert!(status.is_success(), "{what}: {status} {body}");
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,24}".prop_map(Value::from),
        prop_oneof![
            Just("host"),
            Just("none"),
            Just("egress"),
            Just("512MiB"),
            Just("0"),
            Just("-1G"),
            Just("/"),
            Just("echo"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects whose keys are mostly the real fields, with values of any type.
fn near_valid_body(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop_oneof![
            4 => prop::sample::select(keys).prop_map(str::to_string),
            1 => ".{0,8}",
        ],
        json_value(),
        0..6,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn body_bytes(keys: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => near_valid_body(keys).prop_map(|v| v.to_string().into_bytes()),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

const CREATE_KEYS: &[&str] = &["rootfs", "memory", "cpus", "pids", "network"];
const EXEC_KEYS: &[&str] = &["argv", "shell", "cwd", "env", "timeout_ms"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn create_sandbox_bodies_never_cause_server_errors(body in body_bytes(CREATE_KEYS)) {
        let h = HARNESS.with(|h| h.clone());
        assert_answered_well("POST /api/sandboxes", h.post("/api/sandboxes", body));
    }

    #[test]
    fn exec_bodies_never_cause_server_errors(
        body in body_bytes(EXEC_KEYS),
        id in prop_oneof![Just(KNOWN.to_string()), "[a-z0-9%.-]{0,16}"],
    ) {
        let h = HARNESS.with(|h| h.clone());
        let path = format!("/api/sandboxes/{id}/exec");
        let got = h.post(&path, body);
        if id != KNOWN {
            prop_assert!(got.0 == StatusCode::NOT_FOUND || got.0 == StatusCode::BAD_REQUEST
                || got.0 == StatusCode::UNPROCESSABLE_ENTITY, "{path}: {got:?}");
        }
        assert_answered_well(&path, got);
    }
}

const SESSION_KEYS: &[&str] = &["repo", "title", "prompt"];
const TYPING_KEYS: &[&str] = &["repo"];
const PROMPT_KEYS: &[&str] = &["text"];
const SHARE_KEYS: &[&str] = &["scope"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn create_session_bodies_never_cause_server_errors(body in body_bytes(SESSION_KEYS)) {
        let h = HARNESS.with(|h| h.clone());
        assert_answered_well("POST /api/sessions", h.post("/api/sessions", body));
    }

    #[test]
    fn prompt_bodies_never_cause_server_errors(
        body in body_bytes(PROMPT_KEYS),
        known in any::<bool>(),
        id in "[a-z0-9%.-]{0,20}",
    ) {
        let h = HARNESS.with(|h| h.clone());
        let id = if known { h.session.clone() } else { id };
        let path = format!("/api/sessions/{id}/prompts");
        let got = h.post(&path, body);
        if !known {
            prop_assert!(got.0 == StatusCode::NOT_FOUND || got.0 == StatusCode::BAD_REQUEST
                || got.0 == StatusCode::UNPROCESSABLE_ENTITY, "{path}: {got:?}");
        }
        assert_answered_well(&path, got);
    }

    #[test]
    fn queue_edits_never_cause_server_errors(
        body in body_bytes(PROMPT_KEYS),
        prompt_id in prop_oneof![Just("2".to_string()), "[a-z0-9%.-]{0,12}"],
        method in prop::sample::select(vec!["PATCH", "DELETE"]),
    ) {
        let h = HARNESS.with(|h| h.clone());
        let path = format!("/api/sessions/{}/queue/{prompt_id}", h.session);
        // Never cancel the one queued prompt: other cases edit it.
        let method = if prompt_id == "2" { "PATCH" } else { method };
        assert_answered_well(&path, h.send(method, &path, body));
    }

    #[test]
    fn typing_bodies_never_cause_server_errors(body in body_bytes(TYPING_KEYS)) {
        let h = HARNESS.with(|h| h.clone());
        assert_answered_well("POST /api/typing", h.post("/api/typing", body));
    }

    #[test]
    fn share_bodies_never_cause_server_errors(body in body_bytes(SHARE_KEYS)) {
        let h = HARNESS.with(|h| h.clone());
        let path = format!("/api/sessions/{}/shares", h.session);
        assert_answered_well(&path, h.post(&path, body));
    }

    #[test]
    fn event_queries_never_cause_server_errors(query in "[a-z_=&0-9%-]{0,40}") {
        let h = HARNESS.with(|h| h.clone());
        let path = format!("/api/sessions/{}/events?{query}", h.session);
        let got = h.send("GET", &path, Vec::new());
        assert!(got.0 == StatusCode::OK || got.0 == StatusCode::BAD_REQUEST, "{path}: {got:?}");
        assert_answered_well(&path, got);
    }
}

thread_local! {
    static HARNESS: Arc<Harness> = Arc::new(Harness::new());
}

#[test]
fn valid_bodies_succeed_against_the_fake() {
    let h = Harness::new();
    let (status, sb) = h.post(
        "/api/sandboxes",
        json!({"rootfs": "host", "memory": "64MiB", "cpus": 0.5, "pids": 16, "network": "none"})
            .to_string()
            .into_bytes(),
    );
    assert_eq!(status, StatusCode::CREATED, "{sb}");
    assert_eq!(
        (sb["memory_bytes"].as_u64(), sb["status"].as_str()),
        (Some(64 << 20), Some("running"))
    );
    let (status, _) = h.post("/api/sandboxes", Vec::new());
    assert_eq!(
        status,
        StatusCode::CREATED,
        "an empty body means all defaults"
    );
    let (status, body) = h.post(
        &format!("/api/sandboxes/{KNOWN}/exec"),
        json!({"argv": ["true"]}).to_string().into_bytes(),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("sandbox_not_running"))
    );
}

#[test]
fn typing_for_a_draft_is_accepted_and_bad_repos_refused() {
    let h = Harness::new();
    let (status, body) = h.post(
        "/api/typing",
        json!({"repo": "acme/app"}).to_string().into_bytes(),
    );
    assert_eq!(
        (status, body),
        (StatusCode::ACCEPTED, json!({"warming": false}))
    );
    let (status, body) = h.post("/api/typing", json!({"repo": " "}).to_string().into_bytes());
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = h.post(
        "/api/typing",
        json!({"repo": "a", "x": 1}).to_string().into_bytes(),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// The web UI's pages (or the placeholder, in a build without the UI) for every path that
/// is not the API's, and the JSON 404 for unknown API paths.
#[test]
fn the_web_ui_never_shadows_the_api() {
    let h = Harness::new();
    let get = |path: &str, method: &str| {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        h.rt.block_on(async {
            let resp = h.app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let kind = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, kind, String::from_utf8_lossy(&body).to_string())
        })
    };
    for path in ["/", "/sessions/ses-1", "/sign-in?next=/x", "/envs/e"] {
        let (status, kind, body) = get(path, "GET");
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(kind.starts_with("text/html"), "{path}: {kind}");
        assert!(body.contains("<title>Hangar</title>"), "{path}: {body}");
    }
    for path in [
        "/api/nope",
        "/api/sessions/x/nope",
        "/healthz/x",
        "/assets/gone-123.js",
    ] {
        let (status, kind, body) = get(path, "GET");
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(kind.starts_with("application/json"), "{path}: {kind}");
        assert!(body.contains("\"not_found\""), "{path}: {body}");
    }
    let (status, _, body) = get("/sessions/x", "POST");
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    let (status, kind, _) = get("/healthz", "GET");
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::OK, "application/json")
    );
    assert_eq!(
        hangar_server::web_ui_embedded(),
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../web/dist/index.html"
        ))
        .exists()
    );
}
