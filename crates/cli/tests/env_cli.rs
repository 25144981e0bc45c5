//! Environments end to end through the real binary: `hangar env create` builds a Debian
//! bullseye image with mmdebstrap (the base tarball is shared through the test cache),
//! starts a sandbox running Python 3.9.2 and prints one JSON document; `env ls` and
//! `env rm`; a terminal over the WebSocket; its files and repository over HTTP; and every
//! bad input as one JSON error with a non-zero exit.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

mod common;
use common::*;

/// Shares Debian base tarballs between runs (mmdebstrap takes a minute or two).
fn share_base_cache(data: &Path) {
    let cache = std::env::var_os("HANGAR_TEST_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/cache/hangar-test".into())
        .join("bases");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(data.join("images")).unwrap();
    std::os::unix::fs::symlink(&cache, data.join("images/bases")).unwrap();
}

fn json_out(out: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs `env create` and checks that a failure is one JSON error and one stderr line.
fn create_fails(server: &Server, token: &str, args: &[&str]) -> String {
    let mut all = vec!["env", "create"];
    all.extend_from_slice(args);
    let out = client(server, token, &all);
    assert!(!out.status.success(), "{args:?} succeeded");
    let doc = json_out(&out);
    assert_eq!(doc["status"], "error", "{doc}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("hangar: ") && stderr.trim_end().lines().count() == 1,
        "{stderr}"
    );
    doc["message"].as_str().unwrap().to_string()
}

#[test]
fn env_create_runs_python_3_9_and_env_ls_and_rm_manage_it() {
    let (_dir, data) = scratch();
    share_base_cache(&data);
    let server = Server::start(&data, "");
    let token = server.admin_token.clone().unwrap();

    let out = client(
        &server,
        &token,
        &["env", "create", "--name", "collab-py", "--python", "3.9"],
    );
    let doc = json_out(&out);
    assert!(out.status.success(), "{doc} {}", server.stderr());
    assert_eq!(doc["status"], "success");
    assert_eq!(doc["name"], "collab-py");
    assert_eq!(doc["python"], "3.9.2");
    assert_eq!(doc["suite"], "bullseye");
    let id = doc["id"].as_str().unwrap();
    assert_eq!(doc["url"], format!("{}/envs/{id}", server.url));
    let share_url = doc["share_url"].as_str().unwrap();
    let share_token = share_url
        .strip_prefix(&format!("{}/envs/{id}#share=", server.url))
        .unwrap_or_else(|| panic!("{share_url}"))
        .to_string();
    assert!(share_token.starts_with("hgs_"), "{share_url}");

    // The sandbox is real and runs that Python.
    let sandbox = doc["sandbox"].as_str().unwrap();
    let out = hangar(&data)
        .args(["sandbox", "exec", sandbox, "--", "python3", "--version"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Python 3.9.2");

    // A terminal: a shell on a PTY, bytes both ways.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!(
            "{}/api/environments/collab-py/ws?cols=100&rows=30",
            server.url.replace("http://", "ws://")
        );
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(Message::Binary(
            b"echo $((6*7))-$COLUMNS; exit 3\n".to_vec().into(),
        ))
        .await
        .unwrap();
        let (mut screen, mut presence, mut exit) = (String::new(), None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline.into(), ws.next()).await {
            match msg {
                Message::Binary(b) => screen.push_str(&String::from_utf8_lossy(&b)),
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    match v["type"].as_str() {
                        Some("presence") => presence = Some(v),
                        Some("exit") => exit = Some(v),
                        _ => panic!("unexpected {v}"),
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        assert!(screen.contains("42-100"), "{screen}");
        assert_eq!(
            presence.unwrap()["participants"],
            serde_json::json!([{"login": "admin", "terminals": 1}])
        );
        assert_eq!(exit.unwrap()["code"], 3);

        // Text that is not a resize closes with 1007.
        let mut req = format!(
            "{}/api/environments/{id}/ws?token={token}",
            server.url.replace("http://", "ws://")
        )
        .into_client_request()
        .unwrap();
        req.headers_mut().remove("authorization");
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(Message::Text("hello".into())).await.unwrap();
        let code = loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => break u16::from(f.code),
                Ok(Some(Ok(_))) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        };
        assert_eq!(code, 1007);
    });

    // The share link opens this environment (page and terminal) and nothing else.
    let api = Api::new(&server, &share_token);
    rt.block_on(async {
        let (status, body) = api.get(&format!("/api/environments/{id}")).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        assert_eq!(body["name"], "collab-py");
        assert_error(
            api.get("/api/sessions").await,
            reqwest::StatusCode::FORBIDDEN,
            "forbidden",
        );
        assert_error(
            api.get("/api/environments").await,
            reqwest::StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        let url = format!(
            "{}/api/environments/{id}/ws?token={share_token}",
            server.url.replace("http://", "ws://")
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut who = None;
        while who.is_none() {
            match tokio::time::timeout_at(deadline.into(), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    who = v["participants"][0]["login"].as_str().map(str::to_string);
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("no presence: {other:?}"),
            }
        }
        assert!(who.unwrap().starts_with("guest-"));
    });

    // Its files and its repository, read through envd in the sandbox.
    let sh = |script: &str| {
        let out = hangar(&data)
            .args(["sandbox", "exec", sandbox, "--", "sh", "-c", script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
    };
    sh("cd && mkdir -p proj && printf 'print(1)\\n' > proj/a.py \
        && printf '\\377\\376' > proj/b.bin \
        && head -c 1048577 /dev/zero > big && head -c 1048576 /dev/zero > fits");
    let admin = Api::new(&server, &token);
    rt.block_on(async {
        let files = |q: &str| {
            let path = format!("/api/environments/{id}/files{q}");
            let admin = &admin;
            async move { admin.get(&path).await }
        };
        // The working directory by default (/root without a repository), sorted.
        let (status, home) = files("").await;
        assert_eq!(status, reqwest::StatusCode::OK, "{home}");
        assert_eq!(
            (&home["kind"], &home["path"]),
            (&"directory".into(), &"/root".into())
        );
        let names: Vec<&str> = home["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"proj") && names.contains(&"big"), "{home}");
        // Absolute paths below, built from the home directory the API just reported.
        let home_dir = home["path"].as_str().unwrap().to_string();
        let (_, proj) = files("?path=proj").await;
        assert_eq!(proj["entries"][0]["name"], "a.py", "{proj}");
        assert_eq!(proj["entries"][0]["kind"], "file");
        assert_eq!(proj["entries"][0]["size"], 9);
        let (status, file) = files(&format!("?path={home_dir}/proj/./a.py")).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{file}");
        assert_eq!(file["kind"], "file");
        assert_eq!(file["path"], format!("{home_dir}/proj/a.py"));
        assert_eq!(file["text"], "print(1)\n");
        let (_, bin) = files("?path=proj/b.bin").await;
        assert_eq!(
            (&bin["binary"], &bin["text"]),
            (&true.into(), &Value::Null),
            "{bin}"
        );
        let (_, root) = files("?path=/").await;
        assert!(
            root["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "etc")
        );
        let (status, fits) = files("?path=fits").await;
        assert_eq!(
            (status, &fits["size"]),
            (reqwest::StatusCode::OK, &1_048_576.into())
        );

        // Bad input: each a clear error.
        let msg = assert_error(
            files("?path=big").await,
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
            "file_too_large",
        );
        assert!(
            msg.contains("1048577 bytes") && msg.contains("terminal"),
            "{msg}"
        );
        let msg = assert_error(
            files("?path=../../etc/passwd").await,
            reqwest::StatusCode::BAD_REQUEST,
            "invalid_path",
        );
        assert!(msg.contains(".."), "{msg}");
        assert_error(
            files(&format!("?path={home_dir}/%2e%2e/etc")).await,
            reqwest::StatusCode::BAD_REQUEST,
            "invalid_path",
        );
        assert_error(
            files("?path=a%00b").await,
            reqwest::StatusCode::BAD_REQUEST,
            "invalid_path",
        );
        let msg = assert_error(
            files("?path=proj/a.py/inside").await,
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
            "not_a_directory",
        );
        assert!(
            msg.contains(&format!("{home_dir}/proj/a.py/inside")),
            "{msg}"
        );
        let msg = assert_error(
            files("?path=nothing-here").await,
            reqwest::StatusCode::NOT_FOUND,
            "not_found",
        );
        assert!(msg.contains(&format!("{home_dir}/nothing-here")), "{msg}");
        assert_error(
            files("?path=/dev/null").await,
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
            "not_a_file",
        );
        assert_error(
            files("?bogus=1").await,
            reqwest::StatusCode::BAD_REQUEST,
            "bad_request",
        );
        assert_error(
            admin.get("/api/environments/no-such-env/files").await,
            reqwest::StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_error(
            admin.get("/api/environments/no-such-env/repo").await,
            reqwest::StatusCode::NOT_FOUND,
            "not_found",
        );

        // No repository yet: a clear error; then one, with a change and two commits.
        let msg = assert_error(
            admin.get(&format!("/api/environments/{id}/repo")).await,
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
            "no_repository",
        );
        assert!(msg.contains("no git repository at /root"), "{msg}");
    });
    sh("cd /root && git init -q -b trunk && git add proj \
        && git -c user.name=Ann -c user.email=a@example.com commit -qm 'First commit' \
        && echo x >> proj/a.py && git add proj && git -c user.name=Bo -c user.email=b@example.com commit -qm 'Second' \
        && echo y >> proj/a.py");
    rt.block_on(async {
        let (status, repo) = admin.get(&format!("/api/environments/{id}/repo")).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{repo}");
        assert_eq!(repo["path"], "/root");
        assert_eq!(repo["branch"], "trunk");
        assert_eq!(repo["upstream"], Value::Null);
        let status_lines: Vec<&str> = repo["status"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert!(status_lines.contains(&" M proj/a.py"), "{repo}");
        assert!(status_lines.contains(&"?? big"), "{repo}");
        assert_eq!(repo["commits"][0]["subject"], "Second");
        assert_eq!(repo["commits"][0]["author"], "Bo");
        assert_eq!(repo["commits"][1]["subject"], "First commit");
        assert_eq!(repo["commits"][0]["hash"].as_str().unwrap().len(), 40);
        assert!(repo["commits"][0]["at_ms"].as_i64().unwrap() > 1_600_000_000_000);
        // The share link opens them too (for its own environment only).
        let (status, _) = api.get(&format!("/api/environments/{id}/repo")).await;
        assert_eq!(status, reqwest::StatusCode::OK);
        let (status, _) = api
            .get(&format!("/api/environments/{id}/files?path=proj"))
            .await;
        assert_eq!(status, reqwest::StatusCode::OK);
        assert_error(
            Api::new(&server, "hgr_nope")
                .get(&format!("/api/environments/{id}/files"))
                .await,
            reqwest::StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    });

    // The name is taken now.
    let msg = create_fails(&server, &token, &["--name", "collab-py", "--python", "3.9"]);
    assert!(msg.contains("exists already"), "{msg}");

    let out = client(&server, &token, &["env", "ls", "--json"]);
    let list = json_out(&out);
    assert_eq!(list[0]["name"], "collab-py");
    assert_eq!(list[0]["status"], "running");
    let out = client(&server, &token, &["env", "ls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("collab-py"));

    let out = client(&server, &token, &["env", "rm", "collab-py"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = hangar(&data)
        .args(["sandbox", "ls", "--json"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(sandbox));
    let out = client(&server, &token, &["env", "rm", "collab-py"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no environment \"collab-py\""));
}

#[test]
fn env_create_bad_input_is_one_json_error() {
    let (_dir, data) = scratch();
    let server = Server::start(&data, "");
    let token = server.admin_token.clone().unwrap();

    let msg = create_fails(&server, &token, &["--name", "x", "--python", "3.8"]);
    assert!(
        msg.contains("Python 3.8 is not available; available: 3.9 (3.9.2, Debian bullseye), 3.11 (3.11.2, Debian bookworm)"),
        "{msg}"
    );
    let msg = create_fails(&server, &token, &["--name", "no spaces", "--python", "3.9"]);
    assert!(msg.contains("environment name"), "{msg}");
    let msg = create_fails(
        &server,
        &token,
        &[
            "--name",
            "x",
            "--python",
            "3.9",
            "--repo",
            "/nonexistent/repo",
        ],
    );
    assert!(msg.contains("/nonexistent/repo"), "{msg}");
    let msg = create_fails(&server, "hgr_not_a_token", &["--name", "x"]);
    assert!(msg.contains("401"), "{msg}");

    // No server at all.
    let home = hangar_testkit::scratch_dir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["env", "create", "--name", "x"])
        .env("HANGAR_SERVER", "http://127.0.0.1:1")
        .env("HANGAR_TOKEN", &token)
        .env("XDG_CONFIG_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let doc = json_out(&out);
    assert!(
        doc["message"].as_str().unwrap().contains("is it running?"),
        "{doc}"
    );

    // Nothing was left behind by the failures.
    let out = client(&server, &token, &["env", "ls", "--json"]);
    assert_eq!(json_out(&out), serde_json::json!([]));
    let out = hangar(&data)
        .args(["sandbox", "ls", "--json"])
        .output()
        .unwrap();
    assert_eq!(json_out(&out), serde_json::json!([]));
}
