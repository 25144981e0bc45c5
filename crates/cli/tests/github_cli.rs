//! GitHub end to end with the real `hangar serve` configured by `[github]` against the fake
//! GitHub of the test kit: sign-in through the browser routes, a session's pull request
//! opened as the signed-in user, a signed merge webhook reflected in the PR, the session's
//! log, `/api/stats` and `/metrics`; a broken `[github]` stops the start with one line.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use hangar_testkit::fake_github::{FakeGitHub, FakeUser, app_key_pair};
use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;
use common::*;

fn github_toml(fake_url: &str, dir: &std::path::Path, private_pem: &str) -> String {
    let key = dir.join("app.pem");
    std::fs::write(&key, private_pem).unwrap();
    let client_secret = dir.join("client-secret");
    std::fs::write(&client_secret, "client-secret\n").unwrap();
    let webhook_secret = dir.join("webhook-secret");
    std::fs::write(&webhook_secret, "whsec\n").unwrap();
    format!(
        "[sessions]\nexecutor = \"scripted\"\n\n[github]\napi_url = {fake_url:?}\nweb_url = {fake_url:?}\napp_id = 7\nprivate_key_file = {key:?}\nclient_id = \"Iv1.client\"\nclient_secret_file = {client_secret:?}\nwebhook_secret_file = {webhook_secret:?}\n"
    )
}

/// Signs `login` in through the browser routes; returns their Hangar token.
async fn sign_in(
    browser: &reqwest::Client,
    server: &Server,
    fake: &FakeGitHub,
    login: &str,
    id: i64,
) -> String {
    let code = fake.add_user(FakeUser {
        id,
        login: login.into(),
        name: None,
        email: Some(format!("{login}@example.com")),
        primary_email: format!("{login}@example.com"),
    });
    let login_answer = browser
        .get(format!("{}/auth/github/login", server.url))
        .send()
        .await
        .unwrap();
    let location = login_answer.headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    let state = location.split("state=").nth(1).unwrap();
    let signed: Value = browser
        .get(format!(
            "{}/auth/github/callback?code={code}&state={state}",
            server.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    signed["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_written_share_counts_the_lines_of_the_sessions_branch() {
    use hangar_testkit::fake_model::{FakeModel, Reply, anthropic};
    let (dir, data) = scratch();
    let remote = dir.path().join("remote.git");
    let work = dir.path().join("work");
    git(
        dir.path(),
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            remote.to_str().unwrap(),
        ],
    );
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            remote.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    std::fs::write(work.join("README.md"), "# app\n").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let write = json!({"path": "hello.txt", "content": "one\ntwo\nthree\n"}).to_string();
    let model = FakeModel::start(vec![
        Reply::sse(anthropic(
            &[],
            &[("t1", "write_file", &[&write])],
            "tool_use",
        )),
        Reply::sse(anthropic(&["Done."], &[], "end_turn")),
    ])
    .await;
    let (private, public) = app_key_pair();
    let fake = FakeGitHub::start(7, &public, "Iv1.client", "client-secret").await;
    fake.install("acme/app");
    let toml = format!(
        "[model]\nprovider = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"m\"\n\n[pool]\nmin = 0\n\n[images]\nrebuild_every_s = 0\n\n{}",
        model.url(),
        github_toml(&fake.url(), dir.path(), &private)
            .replace("[sessions]\nexecutor = \"scripted\"\n", "")
    );
    let server = tokio::task::spawn_blocking(move || Server::start_with_config(&data, &toml))
        .await
        .unwrap();
    let admin = Api::new(&server, &server.admin_token.clone().unwrap());
    let (status, repo) = admin
        .send(
            "POST",
            "/api/repos",
            json!({"name": "acme/app", "url": remote.to_str().unwrap()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{repo}");
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let alice = Api::new(
        &server,
        &sign_in(&browser, &server, &fake, "alice", 1).await,
    );
    let id = alice.create_session().await;
    alice.prompt(&id, "add a greeting").await;
    wait_finished(&alice, &id, 1).await;
    let (status, pr) = alice
        .send("POST", &format!("/api/sessions/{id}/pr"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{pr}");
    let (_, pr) = alice.get(&format!("/api/sessions/{id}/pr")).await;
    assert_eq!(pr["agent_lines"], 3, "{pr}");

    // Someone adds three lines by hand before the merge: GitHub counts six.
    let payload = serde_json::to_vec(&json!({"action": "closed", "number": 1,
        "pull_request": {"number": 1, "title": "t", "state": "closed", "merged": true,
            "merged_at": "2026-11-24T13:00:00Z", "additions": 6, "html_url": pr["url"],
            "head": {"ref": format!("hangar/{id}")}, "base": {"ref": "main"}},
        "repository": {"full_name": "acme/app"}}))
    .unwrap();
    let merged = browser
        .post(format!("{}/webhooks/github", server.url))
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", "m-1")
        .header(
            "x-hub-signature-256",
            hangar_github::sign(b"whsec", &payload),
        )
        .body(payload)
        .send()
        .await
        .unwrap();
    assert_eq!(merged.status(), StatusCode::NO_CONTENT);
    let (_, stats) = alice.get("/api/stats").await;
    assert_eq!(
        stats["repos"]["acme/app"]["agent_code_share"], 0.5,
        "{stats}"
    );
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_pr_and_merge_webhook_through_the_real_server() {
    let (scratch, data) = scratch();
    let (private, public) = app_key_pair();
    let fake = FakeGitHub::start(7, &public, "Iv1.client", "client-secret").await;
    fake.install("acme/app");
    let toml = github_toml(&fake.url(), scratch.path(), &private);
    let server = tokio::task::spawn_blocking(move || Server::start_with_config(&data, &toml))
        .await
        .unwrap();

    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let code = fake.add_user(FakeUser {
        id: 1,
        login: "alice".into(),
        name: Some("Alice".into()),
        email: None,
        primary_email: "alice@example.com".into(),
    });
    let login = browser
        .get(format!("{}/auth/github/login", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::FOUND);
    let location = login.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&format!("{}/login/oauth/authorize?", fake.url())));
    let state = location.split("state=").nth(1).unwrap();
    let callback = format!(
        "{}/auth/github/callback?code={code}&state={state}",
        server.url
    );
    let signed: Value = browser
        .get(&callback)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(signed["user"]["login"], "alice");
    assert_eq!(signed["user"]["email"], "alice@example.com");
    let replay = browser.get(&callback).send().await.unwrap();
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);

    let api = Api::new(&server, signed["token"].as_str().unwrap());
    let (status, session) = api
        .send(
            "POST",
            "/api/sessions",
            json!({"repo": "acme/app", "title": "Fix it"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    let id = session["id"].as_str().unwrap().to_string();
    let (status, pr) = api
        .send("POST", &format!("/api/sessions/{id}/pr"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{pr}");
    assert_eq!(fake.pulls()[0].author, "alice");
    assert_eq!(fake.pulls()[0].head, format!("hangar/{id}"));

    let payload = serde_json::to_vec(&json!({"action": "closed", "number": 1,
        "pull_request": {"number": 1, "title": "Fix it", "state": "closed", "merged": true,
            "merged_at": "2026-11-24T13:00:00Z", "html_url": pr["url"],
            "head": {"ref": format!("hangar/{id}")}, "base": {"ref": "main"}},
        "repository": {"full_name": "acme/app"}}))
    .unwrap();
    let hook = |sig: String, delivery: &'static str| {
        browser
            .post(format!("{}/webhooks/github", server.url))
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sig)
            .body(payload.clone())
            .send()
    };
    let forged = hook(hangar_github::sign(b"guess", &payload), "d-1")
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let ok = hook(hangar_github::sign(b"whsec", &payload), "d-1")
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    let replayed = hook(hangar_github::sign(b"whsec", &payload), "d-1")
        .await
        .unwrap();
    assert_eq!(replayed.status(), StatusCode::UNAUTHORIZED);

    let (_, pr) = api.get(&format!("/api/sessions/{id}/pr")).await;
    assert_eq!(pr["state"], "merged");
    let (_, events) = api.get(&format!("/api/sessions/{id}/events")).await;
    let types: Vec<&str> = events
        .as_array()
        .or_else(|| events["events"].as_array())
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(
        types.contains(&"pr.opened") && types.contains(&"pr.updated"),
        "{types:?}"
    );
    let (_, stats) = api.get("/api/stats").await;
    assert_eq!(stats["overall"]["prs_merged"], 1);
    let metrics = browser
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hangar_pull_requests{repo=\"\",what=\"merged\"} 1"),
        "{metrics}"
    );
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
}

#[test]
fn a_missing_app_key_stops_the_start_with_one_line() {
    let scratch = hangar_testkit::scratch_dir();
    let data = scratch.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("hangar.toml"),
        "[github]\napp_id = 7\nprivate_key_file = \"/nonexistent/app.pem\"\n",
    )
    .unwrap();
    let out = hangar(&data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("hangar: ") && last.contains("/nonexistent/app.pem"),
        "{err}"
    );
    hangar_testkit::remove_sandboxes(&data);
}
