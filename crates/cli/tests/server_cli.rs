//! `hangar serve` and `hangar login` end to end: the real binary, a real socket, real
//! sandboxes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

/// A running `hangar serve`.
struct Server {
    child: Child,
    url: String,
    /// The admin token, when this start created the admin.
    admin_token: Option<String>,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("HANGAR_DATA_DIR", data_dir)
            .env_remove("HANGAR_CONFIG")
            .env_remove("HANGAR_LISTEN")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start hangar serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut admin_token = None;
        let mut printed = String::new();
        let url = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("hangar serve exited before listening; it printed:\n{printed}");
            };
            printed.push_str(&line);
            printed.push('\n');
            if let Some(rest) = line.trim().strip_prefix("hangar login --server ") {
                let token = rest.split("--token ").nth(1).unwrap().trim();
                admin_token = Some(token.to_string());
            }
            if let Some(url) = line.strip_prefix("hangar listening on ") {
                break url.trim().to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            url,
            admin_token,
        }
    }

    /// SIGTERM, and the server must exit cleanly.
    fn stop(mut self) {
        // SAFETY: kill has no memory effects; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "graceful shutdown exits 0: {status}");
                return;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Removes a sandbox through the CLI even when an assertion fails first.
struct SandboxGuard<'a> {
    data_dir: &'a Path,
    id: String,
}

impl Drop for SandboxGuard<'_> {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(["sandbox", "rm", &self.id])
            .env("HANGAR_DATA_DIR", self.data_dir)
            .env_remove("HANGAR_CONFIG")
            .stderr(Stdio::null())
            .output();
    }
}

struct Api {
    client: Client,
    url: String,
    token: String,
}

impl Api {
    fn new(server: &Server, token: &str) -> Api {
        Api {
            client: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            url: server.url.clone(),
            token: token.to_string(),
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().unwrap();
        let status = resp.status();
        let text = resp.text().unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text:?}"))
        };
        (status, value)
    }

    fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send("GET", path, None)
    }

    fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send("POST", path, Some(body.to_string().into_bytes()))
    }
}

/// An error response: this status, this code, and a message.
fn assert_error(got: (StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

fn create_sandbox<'a>(api: &Api, data_dir: &'a Path) -> SandboxGuard<'a> {
    let (status, sb) = api.post("/api/sandboxes", json!({"memory": "256MiB", "pids": 128}));
    assert_eq!(status, StatusCode::CREATED, "{sb}");
    assert_eq!(sb["status"], "running");
    assert_eq!(sb["memory_bytes"], 256u64 << 20);
    SandboxGuard {
        data_dir,
        id: sb["id"].as_str().unwrap().to_string(),
    }
}

#[test]
fn serve_answers_health_auth_sandboxes_and_errors() {
    hangar_testkit::require_root();
    let dir = hangar_testkit::scratch_dir();
    let server = Server::start(dir.path());
    let token = server
        .admin_token
        .clone()
        .expect("first start prints a token");
    assert!(token.starts_with("hgr_"));
    let api = Api::new(&server, &token);
    let anonymous = Client::new();

    // Health needs no token.
    let health: Value = anonymous
        .get(format!("{}/healthz", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));

    // 401 without a token, with a wrong one, and with a malformed header.
    let resp = anonymous
        .get(format!("{}/api/me", server.url))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body: Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let wrong = Api::new(&server, &format!("hgr_{}", "0".repeat(64)));
    assert_error(
        wrong.get("/api/me"),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_error(
        wrong.get("/api/sandboxes"),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let resp = anonymous
        .get(format!("{}/api/me", server.url))
        .header("authorization", format!("Basic {token}"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let (status, me) = api.get("/api/me");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (me["login"].as_str(), me["is_admin"].as_bool()),
        (Some("admin"), Some(true))
    );

    // A sandbox's life through the API.
    let sb = create_sandbox(&api, dir.path());
    let (status, out) = api.post(
        &format!("/api/sandboxes/{}/exec", sb.id),
        json!({"argv": ["echo", "hi"]}),
    );
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["stdout"], "hi\n");
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["timed_out"], false);
    let (_, out) = api.post(
        &format!("/api/sandboxes/{}/exec", sb.id),
        json!({"shell": "echo $X >&2; exit 3", "env": {"X": "oops"}, "cwd": "/tmp"}),
    );
    assert_eq!(
        (out["exit_code"].as_i64(), out["stderr"].as_str()),
        (Some(3), Some("oops\n"))
    );
    let (_, out) = api.post(
        &format!("/api/sandboxes/{}/exec", sb.id),
        json!({"argv": ["sleep", "30"], "timeout_ms": 200}),
    );
    assert_eq!(out["timed_out"], true, "{out}");
    assert_error(
        api.post(
            &format!("/api/sandboxes/{}/exec", sb.id),
            json!({"argv": ["no-such-command"]}),
        ),
        StatusCode::UNPROCESSABLE_ENTITY,
        "command_not_found",
    );
    assert_error(
        api.post(&format!("/api/sandboxes/{}/exec", sb.id), json!({})),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    let (status, list) = api.get("/api/sandboxes");
    assert_eq!(status, StatusCode::OK);
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == sb.id.as_str())
        .unwrap_or_else(|| panic!("{list}"));
    // The index says what it serves and who asked for it.
    assert_eq!(listed["purpose"], "api", "{listed}");
    assert!(listed["created_by"].as_i64().is_some(), "{listed}");
    let (status, one) = api.get(&format!("/api/sandboxes/{}", sb.id));
    assert_eq!(
        (status, one["id"].as_str()),
        (StatusCode::OK, Some(sb.id.as_str()))
    );
    let (status, body) = api.send("DELETE", &format!("/api/sandboxes/{}", sb.id), None);
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_error(
        api.get(&format!("/api/sandboxes/{}", sb.id)),
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Errors: unknown things, bad bodies, wrong methods.
    assert_error(
        api.get("/api/sandboxes/sb-nope"),
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        api.send("DELETE", "/api/sandboxes/sb-nope", None),
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        api.post("/api/sandboxes/sb-nope/exec", json!({"argv": ["true"]})),
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        api.get("/api/sandboxes/..%2F..%2Fetc"),
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Other paths are the web UI's pages; the server's own stay JSON.
    assert_error(
        api.get("/metrics/no/such/route"),
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        api.get("/api/no-such-route"),
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        api.send("PUT", "/api/sandboxes", Some(b"{}".to_vec())),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_error(
        api.send("POST", "/api/sandboxes", Some(b"{\"memory\": ".to_vec())),
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        api.post("/api/sandboxes", json!({"memory": 512, "cpus": "two"})),
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        api.post("/api/sandboxes", json!({"unknown_field": true})),
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        api.post("/api/sandboxes/sb-nope/exec", json!({"argv": "echo hi"})),
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        api.post("/api/sandboxes", json!({"memory": "lots"})),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_spec",
    );
    assert_error(
        api.post("/api/sandboxes", json!({"rootfs": "/no/such/rootfs"})),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_spec",
    );
    let big = format!("{{\"rootfs\": \"{}\"}}", "x".repeat(2 << 20));
    assert_error(
        api.send("POST", "/api/sandboxes", Some(big.into_bytes())),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    // The OpenAPI document and the metrics need no token.
    let doc: Value = anonymous
        .get(format!("{}/openapi.json", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/healthz",
        "/metrics",
        "/api/me",
        "/api/sandboxes",
        "/api/sandboxes/{id}",
        "/api/sandboxes/{id}/exec",
        "/api/environments/{id}/files",
        "/api/environments/{id}/repo",
        "/api/images/builds/{id}",
        "/api/stats",
    ] {
        assert!(paths.contains_key(p), "{p} missing from openapi.json");
    }
    assert!(paths["/api/sandboxes"]["post"].is_object());
    let metrics = anonymous
        .get(format!("{}/metrics", server.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(
            "hangar_http_requests_total{method=\"POST\",route=\"/api/sandboxes/{id}/exec\",status=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("hangar_sandboxes{state=\"running\"} 0"),
        "{metrics}"
    );
    server.stop();
}

#[test]
fn restart_keeps_the_admin_and_adopts_running_sandboxes() {
    hangar_testkit::require_root();
    let dir = hangar_testkit::scratch_dir();
    let first = Server::start(dir.path());
    let token = first.admin_token.clone().unwrap();
    let sb = create_sandbox(&Api::new(&first, &token), dir.path());
    first.stop();

    let second = Server::start(dir.path());
    assert!(second.admin_token.is_none(), "no second admin on restart");
    let api = Api::new(&second, &token);
    let (status, me) = api.get("/api/me");
    assert_eq!(
        (status, me["login"].as_str()),
        (StatusCode::OK, Some("admin"))
    );
    let (status, view) = api.get(&format!("/api/sandboxes/{}", sb.id));
    assert_eq!(
        (status, view["status"].as_str()),
        (StatusCode::OK, Some("running"))
    );
    let (_, out) = api.post(
        &format!("/api/sandboxes/{}/exec", sb.id),
        json!({"shell": "echo still here"}),
    );
    assert_eq!(out["stdout"], "still here\n");
    let (status, _) = api.send("DELETE", &format!("/api/sandboxes/{}", sb.id), None);
    assert_eq!(status, StatusCode::NO_CONTENT);
    second.stop();
}

fn login(config_home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .arg("login")
        .args(args)
        .env("XDG_CONFIG_HOME", config_home)
        .env_remove("HANGAR_SERVER")
        .env_remove("HANGAR_TOKEN")
        .output()
        .unwrap()
}

fn one_line_error(out: &std::process::Output, needle: &str) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(
        err.starts_with("hangar: ") && err.contains(needle),
        "{err:?}"
    );
}

#[test]
fn login_checks_the_token_and_saves_it_privately() {
    use std::os::unix::fs::PermissionsExt;
    hangar_testkit::require_root();
    let dir = hangar_testkit::scratch_dir();
    let server = Server::start(&dir.path().join("data"));
    let token = server.admin_token.clone().unwrap();
    let config = dir.path().join("config");

    let out = login(&config, &["--server", &server.url, "--token", &token]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = config.join("hangar/credentials.toml");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let saved: toml::Value = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved["server"].as_str(), Some(server.url.as_str()));
    assert_eq!(saved["token"].as_str(), Some(token.as_str()));

    let wrong = format!("hgr_{}", "1".repeat(64));
    one_line_error(
        &login(&config, &["--server", &server.url, "--token", &wrong]),
        "refused the token",
    );
    let url = server.url.clone();
    server.stop();
    one_line_error(
        &login(&config, &["--server", &url, "--token", &token]),
        "is it running?",
    );
    // A failed login leaves the saved credentials alone.
    let again: toml::Value = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(again["token"].as_str(), Some(token.as_str()));
}
