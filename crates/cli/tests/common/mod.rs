//! The fixture shared by the CLI's end-to-end suites: a real `hangar serve` on a scratch
//! data directory, an HTTP client for its API, WebSocket helpers, and `hangar` as a client.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A running `hangar serve` on a data directory.
pub struct Server {
    pub child: Child,
    pub data_dir: PathBuf,
    pub url: String,
    pub admin_token: Option<String>,
    pub printed: std::sync::Arc<std::sync::Mutex<String>>,
}

pub fn hangar(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hangar"));
    cmd.env("HANGAR_DATA_DIR", data_dir)
        .env_remove("HANGAR_CONFIG")
        .env_remove("HANGAR_LISTEN")
        .env_remove("HANGAR_SERVER")
        .env_remove("HANGAR_TOKEN")
        .env("HOME", data_dir);
    cmd
}

impl Server {
    /// Starts the server with `[sessions]` settings written to `<data dir>/hangar.toml`; the
    /// scripted stand-in answers prompts, exercising the session machinery without a model.
    pub fn start(data_dir: &Path, sessions_toml: &str) -> Server {
        Server::start_with_config(
            data_dir,
            &format!("[sessions]\nexecutor = \"scripted\"\n{sessions_toml}\n"),
        )
    }

    /// Starts the server with `toml` as `<data dir>/hangar.toml`.
    pub fn start_with_config(data_dir: &Path, toml: &str) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        std::fs::write(data_dir.join("hangar.toml"), toml).unwrap();
        let mut child = hangar(data_dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hangar serve");
        let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = BufReader::new(child.stderr.take().unwrap());
        let p = printed.clone();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let mut p = p.lock().unwrap();
                p.push_str(&line);
                p.push('\n');
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut admin_token = None;
        let url = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!(
                    "hangar serve exited before listening:\n{}",
                    printed.lock().unwrap()
                );
            };
            if let Some(rest) = line.trim().strip_prefix("hangar login --server ") {
                admin_token = Some(rest.split("--token ").nth(1).unwrap().trim().to_string());
            }
            if let Some(url) = line.strip_prefix("hangar listening on ") {
                break url.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            data_dir: data_dir.to_path_buf(),
            url,
            admin_token,
            printed,
        }
    }

    /// Starts the server again on the same data directory (after `kill9`); the admin's
    /// token, printed only by the first start, is carried over.
    pub fn start_again(data_dir: &Path, toml: &str, admin_token: Option<String>) -> Server {
        let mut server = Server::start_with_config(data_dir, toml);
        if server.admin_token.is_none() {
            server.admin_token = admin_token;
        }
        server
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn stderr(&self) -> String {
        self.printed.lock().unwrap().clone()
    }

    /// Whether the server printed `needle` on stderr, waiting a little: stderr is read by
    /// another thread, which may not have caught up with the stdout line we waited for.
    pub fn printed(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn ws_url(&self, id: &str, after: u64) -> String {
        format!(
            "{}/api/sessions/{id}/ws?after_seq={after}",
            self.url.replace("http://", "ws://")
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Sandboxes outlive the server by design; the test's own go with it.
        hangar_testkit::remove_sandboxes(&self.data_dir);
    }
}

/// Creates a user with `hangar user add` and returns their token.
pub fn add_user(data_dir: &Path, login: &str) -> String {
    let out = hangar(data_dir)
        .args(["user", "add", login, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_string()
}

#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub url: String,
    pub token: String,
}

impl Api {
    pub fn new(server: &Server, token: &str) -> Api {
        Api {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            url: server.url.clone(),
            token: token.to_string(),
        }
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text:?}"))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.raw("GET", path, None).await
    }

    pub async fn send(&self, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.raw(method, path, Some(body.to_string().into_bytes()))
            .await
    }

    pub async fn create_session(&self) -> String {
        let (status, s) = self
            .send("POST", "/api/sessions", json!({"repo": "acme/app"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{s}");
        s["id"].as_str().unwrap().to_string()
    }

    pub async fn prompt(&self, id: &str, text: &str) -> Value {
        let (status, p) = self
            .send(
                "POST",
                &format!("/api/sessions/{id}/prompts"),
                json!({"text": text}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{p}");
        p
    }

    /// Every event of a session, paging through the log.
    pub async fn all_events(&self, id: &str) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        loop {
            let after = out.last().map_or(0, |e| e["seq"].as_u64().unwrap());
            let (status, page) = self
                .get(&format!("/api/sessions/{id}/events?after_seq={after}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let page = page.as_array().unwrap().clone();
            if page.is_empty() {
                return out;
            }
            out.extend(page);
        }
    }

    pub async fn wait_idle(&self, id: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, s) = self.get(&format!("/api/sessions/{id}")).await;
            if s["status"] == "idle" {
                return self.all_events(id).await;
            }
            assert!(Instant::now() < deadline, "never idle: {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn assert_error((status, body): (StatusCode, Value), want: StatusCode, code: &str) -> String {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"]["message"].as_str().unwrap().to_string()
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(server: &Server, token: &str, id: &str, after: u64) -> Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = server.ws_url(id, after).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws
}

/// What a client saw: logged events (by arrival) and presence updates.
#[derive(Default)]
pub struct Seen {
    pub events: Vec<Value>,
    pub raw: BTreeMap<u64, String>,
    pub presence: Vec<Value>,
    pub close: Option<(u16, String)>,
}

impl Seen {
    pub fn seqs(&self) -> Vec<u64> {
        self.events
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    }
}

/// Reads until `stop` says so for an event, the socket closes, or `limit` passes.
pub async fn read_until(ws: &mut Socket, limit: Duration, stop: impl Fn(&Value) -> bool) -> Seen {
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return seen,
            Ok(None) | Ok(Some(Err(_))) => return seen,
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "presence" {
                    assert!(v.get("seq").is_none(), "presence has no seq: {v}");
                    seen.presence.push(v);
                    continue;
                }
                let seq = v["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {v}"));
                seen.raw.insert(seq, t.as_str().to_string());
                let done = stop(&v);
                seen.events.push(v);
                if done {
                    return seen;
                }
            }
            Message::Close(frame) => {
                seen.close = frame.map(|f| (u16::from(f.code), f.reason.as_str().to_string()));
                return seen;
            }
            _ => {}
        }
    }
}

pub fn is_idle(v: &Value) -> bool {
    v["type"] == "status" && v["data"]["status"] == "idle"
}

pub fn assert_contiguous(seqs: &[u64], from: u64) {
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(*s, from + i as u64, "gap or duplicate at {i}: {seqs:?}");
    }
}

pub fn scratch() -> (tempfile::TempDir, PathBuf) {
    hangar_testkit::require_root();
    let dir = hangar_testkit::scratch_dir();
    let data = dir.path().join("data");
    (dir, data)
}

/// `hangar` as a client of `server`, with HANGAR_SERVER/HANGAR_TOKEN set.
pub fn client(server: &Server, token: &str, args: &[&str]) -> std::process::Output {
    let home = hangar_testkit::scratch_dir();
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env("HANGAR_SERVER", &server.url)
        .env("HANGAR_TOKEN", token)
        .env("XDG_CONFIG_HOME", home.path())
        .output()
        .unwrap()
}

pub async fn wait_finished(api: &Api, id: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = api.all_events(id).await;
        let done = events
            .iter()
            .filter(|e| e["type"] == "prompt.finished")
            .count();
        if done >= n || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs git in `dir` as a fixed upstream identity, failing the test on an error; its
/// stdout, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Upstream")
        .env("GIT_AUTHOR_EMAIL", "upstream@example.com")
        .env("GIT_COMMITTER_NAME", "Upstream")
        .env("GIT_COMMITTER_EMAIL", "upstream@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
