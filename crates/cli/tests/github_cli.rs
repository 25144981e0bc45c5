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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_pr_and_merge_webhook_through_the_real_server() {
    let scratch = hangar_testkit::scratch_dir();
    let (private, public) = app_key_pair();
    let fake = FakeGitHub::start(7, &public, "Iv1.client", "client-secret").await;
    fake.install("acme/app");
    let toml = github_toml(&fake.url(), scratch.path(), &private);
    let data = scratch.path().join("data");
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
