//! Git end to end: a registered repository's session starts from its latest base commit,
//! each prompt's changes are committed on the session's branch as the person who asked,
//! and the branch is pushed to the real remote (a bare repository); a rejected push is a
//! session event, not a retry loop.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;
use common::*;

/// A bare remote with two commits on `main`, made through a work clone.
fn remote_with_history(root: &Path) -> std::path::PathBuf {
    let remote = root.join("remote.git");
    let work = root.join("work");
    git(
        root,
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
        root,
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
    std::fs::write(work.join("VERSION"), "2\n").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "second"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    remote
}

#[tokio::test]
async fn prompts_are_committed_as_their_authors_and_the_branch_is_pushed() {
    use hangar_testkit::fake_model::{FakeModel, Reply, anthropic};
    let (dir, data) = scratch();
    let remote = remote_with_history(dir.path());
    let main_tip = git(&remote, &["rev-parse", "main"]);
    let w1 = json!({"path": "hello.txt", "content": "hello\n"}).to_string();
    let r1 = json!({"path": "VERSION"}).to_string();
    let w2 = json!({"path": "bob.txt", "content": "from bob\n"}).to_string();
    let w3 = json!({"path": "third.txt", "content": "refused\n"}).to_string();
    let fake = FakeModel::start(vec![
        // Prompt 1 (admin): read a file of the latest commit, write one.
        Reply::sse(anthropic(
            &[],
            &[("t1", "read_file", &[&r1]), ("t2", "write_file", &[&w1])],
            "tool_use",
        )),
        Reply::sse(anthropic(&["Done."], &[], "end_turn")),
        // Prompt 2 (bob).
        Reply::sse(anthropic(&[], &[("t3", "write_file", &[&w2])], "tool_use")),
        Reply::sse(anthropic(&["Done."], &[], "end_turn")),
        // Prompt 3 (admin), pushed to a remote that now refuses it.
        Reply::sse(anthropic(&[], &[("t4", "write_file", &[&w3])], "tool_use")),
        Reply::sse(anthropic(&["Done."], &[], "end_turn")),
    ])
    .await;
    let server = Server::start_with_config(
        &data,
        &format!(
            "[model]\nprovider = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"m\"\n\n[pool]\nmin = 0\n\n[images]\nrebuild_every_s = 0\n",
            fake.url()
        ),
    );
    let token = server.admin_token.clone().unwrap();
    let api = Api::new(&server, &token);
    let (status, repo) = api
        .send(
            "POST",
            "/api/repos",
            json!({"name": "acme/app", "url": remote.to_str().unwrap()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{repo}");
    let bob = add_user(&data, "bob");
    let bob_api = Api::new(&server, &bob);

    let id = api.create_session().await;
    api.prompt(&id, "add a greeting\n\nwith details").await;
    let events = wait_finished(&api, &id, 1).await;
    let branch = format!("hangar/{id}");
    let of = |events: &[Value], kind: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["type"] == kind)
            .cloned()
            .collect()
    };
    // The checkout is the latest base commit: the read saw the second commit's file.
    let outputs: String = of(&events, "tool.output")
        .iter()
        .map(|e| e["data"]["text"].as_str().unwrap().to_string())
        .collect();
    assert!(outputs.contains('2'), "{outputs}");
    // The write was seen as it happened; git's own files and the sync's checkout are not
    // reported.
    let changed = of(&events, "file.changed");
    assert!(
        changed.iter().any(|e| e["data"]["path"] == "hello.txt"),
        "{changed:#?}"
    );
    assert!(
        changed.iter().all(|e| {
            let p = e["data"]["path"].as_str().unwrap();
            !p.starts_with(".git") && !p.ends_with(".tmp") && p != "README.md"
        }),
        "{changed:#?}"
    );
    let committed = of(&events, "git.committed");
    assert_eq!(committed.len(), 1, "{events:#?}");
    assert_eq!(committed[0]["data"]["branch"], branch.as_str());
    assert_eq!(committed[0]["data"]["author"], "Administrator");
    let pushed = of(&events, "git.pushed");
    assert_eq!(pushed.len(), 1, "{events:#?}");
    let first = pushed[0]["data"]["commit"].as_str().unwrap().to_string();
    assert_eq!(git(&remote, &["rev-parse", &branch]), first);
    assert_eq!(git(&remote, &["rev-parse", &format!("{first}^")]), main_tip);
    let log = git(&remote, &["log", "-1", "--format=%an|%ae|%cn|%s", &first]);
    assert_eq!(
        log, "Administrator|admin@users.noreply.hangar|Hangar|add a greeting",
        "{log}"
    );
    assert_eq!(
        git(&remote, &["show", &format!("{first}:hello.txt")]),
        "hello"
    );

    // A second person's prompt: their own commit on the same branch.
    let (status, p) = bob_api
        .send(
            "POST",
            &format!("/api/sessions/{id}/prompts"),
            json!({"text": "bob's part"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    let events = wait_finished(&api, &id, 2).await;
    let pushed = of(&events, "git.pushed");
    assert_eq!(pushed.len(), 2, "{events:#?}");
    let second = pushed[1]["data"]["commit"].as_str().unwrap().to_string();
    assert_eq!(git(&remote, &["rev-parse", &branch]), second);
    let log = git(&remote, &["log", "-1", "--format=%an|%s", &second]);
    assert_eq!(log, "bob|bob's part");
    assert_eq!(git(&remote, &["rev-parse", &format!("{second}^")]), first);

    // The session's changes against its base, for clients.
    let (status, diff) = api.get(&format!("/api/sessions/{id}/diff")).await;
    assert_eq!(status, StatusCode::OK, "{diff}");
    assert_eq!(diff["head"], second.as_str());
    assert_eq!(diff["base"], "main");
    let files: Vec<(&str, u64)> = diff["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap(),
                f["additions"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(files, [("bob.txt", 1), ("hello.txt", 1)], "{diff}");
    assert!(
        diff["patch"].as_str().unwrap().contains("+from bob"),
        "{diff}"
    );
    assert_error(
        api.get("/api/sessions/ses-0000000000000000/diff").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (_, other) = api
        .send(
            "POST",
            "/api/sessions",
            json!({"repo": "acme/unregistered"}),
        )
        .await;
    let message = assert_error(
        api.get(&format!(
            "/api/sessions/{}/diff",
            other["id"].as_str().unwrap()
        ))
        .await,
        StatusCode::CONFLICT,
        "no_git",
    );
    assert!(message.contains("acme/unregistered"), "{message}");

    // The index says which sandbox serves which session.
    let (_, sandboxes) = api.get("/api/sandboxes").await;
    assert!(
        sandboxes
            .as_array()
            .unwrap()
            .iter()
            .any(|sb| sb["purpose"] == "session"
                && sb["session_id"] == id.as_str()
                && sb["repo"] == "acme/app"),
        "{sandboxes}"
    );
    // The session's sandbox dies: the next prompt gets a new one, on the session's branch.
    for sb in sandboxes.as_array().unwrap() {
        let (status, body) = api
            .raw(
                "DELETE",
                &format!("/api/sandboxes/{}", sb["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }

    // The remote refuses pushes from now on: a clear event, nothing retried.
    let hook = remote.join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\necho 'branch is protected' >&2\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    api.prompt(&id, "a third change").await;
    let events = wait_finished(&api, &id, 3).await;
    let failed = of(&events, "git.push_failed");
    assert_eq!(failed.len(), 1, "{events:#?}");
    let reason = failed[0]["data"]["reason"].as_str().unwrap();
    assert!(reason.contains("branch is protected"), "{reason}");
    let committed = of(&events, "git.committed");
    assert_eq!(committed.len(), 3);
    // Committed on top of the branch restored into the new sandbox.
    let third = committed[2]["data"]["commit"].as_str().unwrap();
    let mirror = data.join("git/acme/app.git");
    assert_eq!(git(&mirror, &["rev-parse", &format!("{third}^")]), second);
    assert_eq!(
        git(&remote, &["rev-parse", &branch]),
        second,
        "nothing was pushed"
    );
    let finished = of(&events, "prompt.finished");
    assert_eq!(
        finished[2]["data"]["outcome"], "done",
        "a push failure does not fail the prompt"
    );
}

#[tokio::test]
async fn a_token_protected_http_remote_is_used_without_the_token_reaching_the_sandbox() {
    use hangar_testkit::fake_model::{FakeModel, Reply, anthropic};
    use hangar_testkit::git_http::GitHttp;
    const TOKEN: &str = "tok-3c1d9e7a5b";
    let (dir, data) = scratch();
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let remote = remote_with_history(&served);
    let http = GitHttp::start(&served, Some(("x-access-token", TOKEN))).await;
    let url = http.url("remote.git");
    let token_file = dir.path().join("git.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();

    let write = json!({"path": "notes.txt", "content": "over http\n"}).to_string();
    let shell = json!({"command": "git config --list --show-origin; env"}).to_string();
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(
            &[],
            &[("t1", "write_file", &[&write]), ("t2", "shell", &[&shell])],
            "tool_use",
        )),
        Reply::sse(anthropic(&["Done."], &[], "end_turn")),
    ])
    .await;
    let server = Server::start_with_config(
        &data,
        &format!(
            "[model]\nprovider = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"m\"\n\n[pool]\nmin = 0\n\n[images]\nrebuild_every_s = 0\n\n\
             [[git.credentials]]\nurl_prefix = \"{}\"\nusername = \"x-access-token\"\npassword_file = \"{}\"\n",
            fake.url(),
            http.url(""),
            token_file.display()
        ),
    );
    let token = server.admin_token.clone().unwrap();
    let api = Api::new(&server, &token);
    let (status, repo) = api
        .send(
            "POST",
            "/api/repos",
            json!({"name": "acme/app", "url": url}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{repo}");
    let id = api.create_session().await;
    api.prompt(&id, "write notes").await;
    let events = wait_finished(&api, &id, 1).await;
    let pushed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "git.pushed")
        .collect();
    assert_eq!(pushed.len(), 1, "{events:#?}");
    let commit = pushed[0]["data"]["commit"].as_str().unwrap();
    assert_eq!(
        git(&remote, &["rev-parse", &format!("hangar/{id}")]),
        commit
    );
    assert!(
        http.users().iter().any(|u| u == "x-access-token"),
        "{:?}",
        http.users()
    );

    // An image build clones over the same authenticated HTTP.
    api.raw(
        "PUT",
        "/api/repos/acme/app/recipe",
        Some(b"base = \"host\"\n".to_vec()),
    )
    .await;
    let (status, build) = api
        .send("POST", "/api/images/builds", json!({"repo": "acme/app"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{build}");
    let build = wait_build(&api, build["id"].as_str().unwrap()).await;
    assert_eq!(build["status"], "succeeded", "{build}");

    // The token is nowhere but the file it came from: not in the log (which holds the
    // sandbox's git config and environment), the server's output, the data directory
    // (mirrors, sandboxes' files, image layers, databases).
    let log = serde_json::to_string(&events).unwrap();
    assert!(
        log.contains("GIT_") || log.contains("core."),
        "the shell ran: {log}"
    );
    assert!(!log.contains(TOKEN));
    assert!(!server.stderr().contains(TOKEN));
    let found = Command::new("grep")
        .args(["-r", "-l", "--binary-files=text", TOKEN])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "the token leaked into {}",
        String::from_utf8_lossy(&found.stdout)
    );
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_a_clear_error() {
    use hangar_testkit::fake_model::{FakeModel, Reply, anthropic};
    use hangar_testkit::git_http::GitHttp;
    let (dir, data) = scratch();
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let remote = remote_with_history(&served);
    let http = GitHttp::start(&served, Some(("x-access-token", "the-right-one"))).await;
    let model = |url: &str| {
        format!(
            "[model]\nprovider = \"anthropic\"\nbase_url = \"{url}\"\nmodel = \"m\"\n\n[pool]\nmin = 0\n\n[images]\nrebuild_every_s = 0\n\n"
        )
    };

    // A token variable that is not set: the server does not start, and says which setting.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("hangar.toml"),
        format!(
            "{}[[git.credentials]]\nurl_prefix = \"{}\"\nusername = \"x-access-token\"\npassword_env = \"HANGAR_TEST_UNSET_TOKEN\"\n",
            model("http://127.0.0.1:9"),
            http.url("")
        ),
    )
    .unwrap();
    let out = hangar(&data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("HANGAR_TEST_UNSET_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("git.credentials.password_env") && err.contains("HANGAR_TEST_UNSET_TOKEN"),
        "{err}"
    );

    // A wrong token: the sync fails, so the write is refused with the reason, and nothing
    // reaches the remote.
    let token_file = dir.path().join("git.token");
    std::fs::write(&token_file, "a-wrong-one\n").unwrap();
    let write = json!({"path": "a.txt", "content": "x"}).to_string();
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(
            &[],
            &[("t1", "write_file", &[&write])],
            "tool_use",
        )),
        Reply::sse(anthropic(&["Could not."], &[], "end_turn")),
    ])
    .await;
    let server = Server::start_with_config(
        &data,
        &format!(
            "{}[[git.credentials]]\nurl_prefix = \"{}\"\nusername = \"x-access-token\"\npassword_file = \"{}\"\n",
            model(&fake.url()),
            http.url(""),
            token_file.display()
        ),
    );
    let api = Api::new(&server, server.admin_token.as_ref().unwrap());
    let (status, repo) = api
        .send(
            "POST",
            "/api/repos",
            json!({"name": "acme/app", "url": http.url("remote.git")}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{repo}");
    let id = api.create_session().await;
    api.prompt(&id, "write").await;
    let events = wait_finished(&api, &id, 1).await;
    let refused: String = events
        .iter()
        .filter(|e| e["type"] == "tool.output")
        .map(|e| e["data"]["text"].as_str().unwrap().to_string())
        .collect();
    assert!(
        refused.contains("could not be synced") && refused.contains("acme/app"),
        "{refused}"
    );
    assert!(!refused.contains("a-wrong-one"), "{refused}");
    assert!(
        events.iter().all(|e| e["type"] != "git.pushed"),
        "{events:#?}"
    );
    let branches = git(&remote, &["branch", "--list", "hangar/*"]);
    assert!(branches.is_empty(), "{branches}");
}

/// Polls a build until it ends.
async fn wait_build(api: &Api, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let (status, b) = api.get(&format!("/api/images/builds/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{b}");
        if b["status"] != "running" {
            return b;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "build never ended: {b}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sessions_start_from_the_image_built_through_the_api() {
    use hangar_testkit::fake_model::{FakeModel, Reply, anthropic};
    let (dir, data) = scratch();
    let remote = remote_with_history(dir.path());
    let main_tip = git(&remote, &["rev-parse", "main"]);
    let shell = json!({"command": "cat /marker/built; git log -1 --format=%s"}).to_string();
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(&[], &[("t1", "shell", &[&shell])], "tool_use")),
        Reply::sse(anthropic(&["Done."], &[], "end_turn")),
    ])
    .await;
    let server = Server::start_with_config(
        &data,
        &format!(
            "[model]\nprovider = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"m\"\n\n[pool]\nmin = 0\n\n[images]\nrebuild_every_s = 0\n",
            fake.url()
        ),
    );
    let api = Api::new(&server, server.admin_token.as_ref().unwrap());
    let (status, _) = api
        .send(
            "POST",
            "/api/repos",
            json!({"name": "acme/app", "url": remote.to_str().unwrap()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let recipe = "base = \"host\"\n[[setup]]\nrun = \"mkdir -p /marker && echo built-by-recipe > /marker/built\"\n";
    let (status, r) = api
        .raw("PUT", "/api/repos/acme/app/recipe", Some(recipe.into()))
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");

    let (status, build) = api
        .send("POST", "/api/images/builds", json!({"repo": "acme/app"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{build}");
    // One build per repository at a time.
    assert_error(
        api.send("POST", "/api/images/builds", json!({"repo": "acme/app"}))
            .await,
        StatusCode::CONFLICT,
        "build_running",
    );
    let build = wait_build(&api, build["id"].as_str().unwrap()).await;
    assert_eq!(build["status"], "succeeded", "{build}");
    assert_eq!(build["commit"], main_tip.as_str());
    assert!(build["steps"].as_array().unwrap().len() >= 2, "{build}");
    let image = build["image"].as_str().unwrap().to_string();
    let (_, images) = api.get("/api/images").await;
    let current: Vec<&Value> = images
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["current"] == true)
        .collect();
    assert_eq!(current.len(), 1, "{images}");
    assert_eq!(current[0]["id"], image.as_str());

    // A session starts from that image: the recipe's work and the checkout are there.
    let id = api.create_session().await;
    api.prompt(&id, "look around").await;
    let events = wait_finished(&api, &id, 1).await;
    let out: String = events
        .iter()
        .filter(|e| e["type"] == "tool.output")
        .map(|e| e["data"]["text"].as_str().unwrap().to_string())
        .collect();
    assert!(
        out.contains("built-by-recipe") && out.contains("second"),
        "{out}"
    );

    // A failing step: the build says which step and why; the image stays current.
    let broken = "base = \"host\"\n[[setup]]\nname = \"compile\"\nrun = \"echo compiler exploded; exit 3\"\n";
    api.raw("PUT", "/api/repos/acme/app/recipe", Some(broken.into()))
        .await;
    let (_, build) = api
        .send("POST", "/api/images/builds", json!({"repo": "acme/app"}))
        .await;
    let build = wait_build(&api, build["id"].as_str().unwrap()).await;
    assert_eq!(build["status"], "failed", "{build}");
    let error = build["error"].as_str().unwrap();
    assert!(
        error.contains("compile") && error.contains("compiler exploded"),
        "{error}"
    );
    let (_, images) = api.get("/api/images").await;
    let still: Vec<&Value> = images
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["current"] == true)
        .collect();
    assert_eq!(still[0]["id"], image.as_str(), "{images}");

    // Bad input.
    assert_error(
        api.send("POST", "/api/images/builds", json!({"repo": "acme/nope"}))
            .await,
        StatusCode::NOT_FOUND,
        "unknown_repo",
    );
    assert_error(
        api.send(
            "POST",
            "/api/images/builds",
            json!({"repo": "acme/app", "ref": "a..b"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    assert_error(
        api.send("POST", "/api/images/builds", json!({"repo": 7}))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        api.get("/api/images/builds/bld-000000000000").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn registered_repositories_are_built_before_anyone_asks_and_rebuilt_when_their_branch_moves()
{
    let (dir, data) = scratch();
    let remote = remote_with_history(dir.path());
    let server = Server::start_with_config(
        &data,
        "[sessions]\nexecutor = \"scripted\"\n\n[images]\nrebuild_every_s = 1\n",
    );
    let api = Api::new(&server, server.admin_token.as_ref().unwrap());
    let (status, _) = api
        .send(
            "POST",
            "/api/repos",
            json!({"name": "acme/app", "url": remote.to_str().unwrap()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let recipe = "base = \"host\"\n";
    api.raw("PUT", "/api/repos/acme/app/recipe", Some(recipe.into()))
        .await;

    // Waits for a scheduled build of `commit` to succeed.
    let built = |commit: String| {
        let api = api.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            loop {
                let (_, builds) = api.get("/api/images/builds").await;
                let done = builds.as_array().unwrap().iter().find(|b| {
                    b["trigger"] == "schedule"
                        && b["commit"] == commit.as_str()
                        && b["status"] != "running"
                });
                if let Some(b) = done {
                    assert_eq!(b["status"], "succeeded", "{b}");
                    return b.clone();
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no scheduled build of {commit}: {builds}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    let first = built(git(&remote, &["rev-parse", "main"])).await;

    // A new commit upstream: rebuilt on the next look, and only then.
    let work = dir.path().join("work");
    std::fs::write(work.join("VERSION"), "3\n").unwrap();
    git(&work, &["commit", "-q", "-am", "third"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let second = built(git(&remote, &["rev-parse", "main"])).await;
    assert_ne!(first["image"], second["image"]);
    let (_, images) = api.get("/api/images").await;
    let current: Vec<&Value> = images
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["current"] == true)
        .collect();
    assert_eq!(current.len(), 1, "{images}");
    assert_eq!(current[0]["id"], second["image"], "{images}");
    // Unchanged since: no further build, though the schedule looks every second.
    let (_, before) = api.get("/api/images/builds").await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (_, after) = api.get("/api/images/builds").await;
    assert_eq!(before, after);
}

// Multi-threaded: the fake model runs in this process while `hangar run` blocks a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangar_run_ends_with_the_changes_and_ctrl_c_detaches() {
    use hangar_testkit::fake_model::{FakeModel, Reply, anthropic};
    let (dir, data) = scratch();
    let remote = remote_with_history(dir.path());
    let write = json!({"path": "cli.txt", "content": "a\nb\n"}).to_string();
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(
            &[],
            &[("t1", "write_file", &[&write])],
            "tool_use",
        )),
        Reply::sse(anthropic(&["Done."], &[], "end_turn")),
        // The second run's model takes its time: Ctrl-C comes first.
        Reply::Sse {
            events: anthropic(&["late"], &[], "end_turn"),
            ttft: std::time::Duration::from_secs(30),
            gap: std::time::Duration::ZERO,
            cut_after: None,
        },
    ])
    .await;
    let server = Server::start_with_config(
        &data,
        &format!(
            "[model]\nprovider = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"m\"\n\n[pool]\nmin = 0\n\n[images]\nrebuild_every_s = 0\n",
            fake.url()
        ),
    );
    let token = server.admin_token.clone().unwrap();
    let api = Api::new(&server, &token);
    api.send(
        "POST",
        "/api/repos",
        json!({"name": "acme/app", "url": remote.to_str().unwrap()}),
    )
    .await;

    let out = client(
        &server,
        &token,
        &["run", "add cli.txt", "--repo", "acme/app", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["outcome"], "done", "{doc}");
    assert_eq!(doc["diff"]["files"][0]["path"], "cli.txt", "{doc}");
    assert_eq!(doc["diff"]["files"][0]["additions"], 2, "{doc}");

    // Ctrl-C without a terminal: detach, the agent keeps working, exit 0.
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["run", "think slowly", "--repo", "acme/app"])
        .env("HANGAR_SERVER", &server.url)
        .env("HANGAR_TOKEN", &token)
        .env("XDG_CONFIG_HOME", dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the session is running, interrupt.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, list) = api.get("/api/sessions").await;
        if list
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["status"] == "running")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // SAFETY: kill with a valid pid and signal has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        (status, err)
    })
    .await
    .unwrap();
    assert!(out.0.success(), "{}", out.1);
    assert!(
        out.1.contains("detached") && out.1.contains("hangar attach"),
        "{}",
        out.1
    );
    let (_, list) = api.get("/api/sessions").await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|s| s["status"] == "running"),
        "the agent still works: {list}"
    );
}

#[tokio::test]
async fn a_repositorys_own_plugin_runs_inside_its_session_sandbox() {
    use hangar_testkit::fake_model::{FakeModel, Reply, anthropic};
    let (dir, data) = scratch();
    let remote = remote_with_history(dir.path());
    // The repository carries its plugin: it names the sandbox's init in its context (so
    // the test sees where it runs) and refuses writes to files named secret*.
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join(".hangar")).unwrap();
    std::fs::write(
        work.join(".hangar/guard.py"),
        r#"import json, sys
init = open("/proc/1/comm").read().strip()
for line in sys.stdin:
    msg = json.loads(line)
    out = {"id": msg.get("id")}
    if msg.get("hook") == "hello":
        out.update(name="repo-guard", hooks=["tool.execute.before", "context"])
    elif msg.get("hook") == "context":
        out["context"] = "Repository rule from a plugin under " + init + "."
    elif msg.get("hook") == "tool.execute.before":
        path = msg["call"]["input"].get("path", "")
        if path.startswith("secret"):
            out.update(decision="block", reason="this repository keeps secret* files by hand")
        else:
            out["decision"] = "allow"
    if out["id"] is not None:
        print(json.dumps(out), flush=True)
"#,
    )
    .unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "plugin"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);

    let secret = json!({"path": "secret.txt", "content": "x\n"}).to_string();
    let fine = json!({"path": "fine.txt", "content": "y\n"}).to_string();
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(
            &[],
            &[
                ("t1", "write_file", &[&secret]),
                ("t2", "write_file", &[&fine]),
            ],
            "tool_use",
        )),
        Reply::sse(anthropic(&["Done."], &[], "end_turn")),
    ])
    .await;
    let server = Server::start_with_config(
        &data,
        &format!(
            "[model]\nprovider = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"m\"\n\n[pool]\nmin = 0\n\n[images]\nrebuild_every_s = 0\n",
            fake.url()
        ),
    );
    let api = Api::new(&server, server.admin_token.as_ref().unwrap());
    let (status, _) = api
        .send(
            "POST",
            "/api/repos",
            json!({"name": "acme/app", "url": remote.to_str().unwrap()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // A recipe whose plugin has no command is refused, naming the problem.
    let (status, r) = api
        .raw(
            "PUT",
            "/api/repos/acme/app/recipe",
            Some("base = \"host\"\n[[plugins]]\ncommand = []\n".into()),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{r}");
    assert!(r.to_string().contains("command is empty"), "{r}");
    let recipe = "base = \"host\"\n[[plugins]]\ncommand = [\"python3\", \".hangar/guard.py\"]\ntimeout = \"5s\"\n";
    let (status, r) = api
        .raw("PUT", "/api/repos/acme/app/recipe", Some(recipe.into()))
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let (status, build) = api
        .send("POST", "/api/images/builds", json!({"repo": "acme/app"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{build}");
    let build = wait_build(&api, build["id"].as_str().unwrap()).await;
    assert_eq!(build["status"], "succeeded", "{build}");

    let id = api.create_session().await;
    api.prompt(&id, "write two files").await;
    let events = wait_finished(&api, &id, 1).await;
    // Its context reached the model, from inside the sandbox (pid 1 there is envd).
    let requests = fake.requests();
    let system = requests[0].body["system"].to_string();
    assert!(
        system.contains("Repository rule from a plugin under envd."),
        "{system}"
    );
    // It blocked one write and let the other through.
    let finished: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "tool.finished")
        .collect();
    assert_eq!(finished.len(), 2, "{events:#?}");
    let results = requests[1].body["messages"].to_string();
    assert!(
        results.contains("this repository keeps secret* files by hand"),
        "{results}"
    );
    let (_, diff) = api.get(&format!("/api/sessions/{id}/diff")).await;
    let paths: Vec<&str> = diff["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"fine.txt"), "{diff}");
    assert!(!paths.contains(&"secret.txt"), "{diff}");
}
