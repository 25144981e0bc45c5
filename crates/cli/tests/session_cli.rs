//! Sessions end to end: the real `hangar serve`, real sockets, real WebSocket clients, the
//! scripted stand-in agent, and `kill -9` of the server during heavy event traffic.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_see_the_same_events_in_order_and_a_second_prompt_queues_under_its_author() {
    let (_dir, data) = scratch();
    let server = Server::start(&data, "scripted_delay_ms = 5");
    let alice_token = server.admin_token.clone().unwrap();
    let bob_token = add_user(&data, "bob");
    let alice = Api::new(&server, &alice_token);
    let id = alice.create_session().await;

    let mut ws_a = connect(&server, &alice_token, &id, 0).await;
    let mut ws_b = connect(&server, &bob_token, &id, 0).await;
    let first = alice.prompt(&id, "deltas=30 delay_ms=5").await;
    assert_eq!(first["status"], "running");
    assert_eq!(first["author"]["login"], "admin");
    ws_b.send(Message::Text(
        json!({"type": "prompt", "text": "and add tests deltas=3"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    ws_b.send(Message::Text(json!({"type": "typing"}).to_string().into()))
        .await
        .unwrap();

    let limit = Duration::from_secs(30);
    let (a, b) = tokio::join!(
        read_until(&mut ws_a, limit, is_idle),
        read_until(&mut ws_b, limit, is_idle)
    );
    let last = *a.seqs().last().unwrap();
    assert_contiguous(&a.seqs(), 1);
    assert_contiguous(&b.seqs(), 1);
    assert_eq!(
        a.raw, b.raw,
        "both clients saw the same events, byte for byte"
    );
    assert_eq!(
        alice.all_events(&id).await.len() as u64,
        last,
        "and they are the log"
    );

    // Bob's prompt was queued behind Alice's, under his name, and ran after it.
    let bobs = a
        .events
        .iter()
        .find(|e| e["type"] == "prompt.queued" && e["data"]["prompt"]["author"]["login"] == "bob")
        .expect("bob's prompt");
    let bob_id = bobs["data"]["prompt"]["id"].clone();
    assert!(
        a.events.iter().any(|e| e["type"] == "queue.updated"
            && e["data"]["queue"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["id"] == bob_id && p["author"]["login"] == "bob")),
        "visible in the queue while Alice's ran"
    );
    let order: Vec<&Value> = a
        .events
        .iter()
        .filter(|e| e["type"] == "prompt.started")
        .map(|e| &e["data"]["author"]["login"])
        .collect();
    assert_eq!(order, [&json!("admin"), &json!("bob")]);
    assert!(
        a.events.iter().any(
            |e| e["type"] == "participant.joined" && e["data"]["participant"]["login"] == "bob"
        )
    );
    // Presence is live: Alice saw Bob connected.
    assert!(a.presence.iter().any(|p| {
        p["data"]["participants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["participant"]["login"] == "bob")
    }));

    // Bob leaves: that is logged, and Alice sees it live.
    ws_b.close(None).await.unwrap();
    let left = read_until(&mut ws_a, limit, |e| e["type"] == "participant.left").await;
    assert_eq!(
        left.events.last().unwrap()["data"]["participant"]["login"],
        "bob"
    );
    assert_eq!(left.events[0]["seq"].as_u64().unwrap(), last + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_after_seq_gets_exactly_the_missed_events() {
    let (_dir, data) = scratch();
    let server = Server::start(&data, "scripted_delay_ms = 5");
    let token = server.admin_token.clone().unwrap();
    let api = Api::new(&server, &token);
    let id = api.create_session().await;
    api.prompt(&id, "deltas=40 delay_ms=10").await;

    let mut ws = connect(&server, &token, &id, 0).await;
    let part = read_until(&mut ws, Duration::from_secs(10), |e| {
        e["type"] == "model.delta" && e["seq"].as_u64() > Some(10)
    })
    .await;
    drop(ws);
    let k = *part.seqs().last().unwrap();
    assert_contiguous(&part.seqs(), 1);
    // Missed while away: the rest of this run and a whole second prompt.
    api.prompt(&id, "more deltas=5").await;
    let log = api.wait_idle(&id).await;

    let mut ws = connect(&server, &token, &id, k).await;
    let rest = read_until(&mut ws, Duration::from_secs(10), is_idle).await;
    assert_eq!(rest.seqs().first(), Some(&(k + 1)));
    assert_contiguous(&rest.seqs(), k + 1);
    let from_log: Vec<&Value> = log.iter().skip(k as usize).collect();
    let got: Vec<&Value> = rest.events.iter().collect();
    assert_eq!(got.len(), from_log.len());
    assert_eq!(got, from_log);

    // after_seq at the end: nothing old, then live events.
    let end = log.len() as u64 + 1; // the reconnect above logged nothing new but may join
    let (_, s) = api.get(&format!("/api/sessions/{id}")).await;
    let last = s["last_seq"].as_u64().unwrap();
    assert!(last >= end - 1);
    let mut ws2 = connect(&server, &token, &id, last).await;
    api.prompt(&id, "again deltas=1").await;
    let live = read_until(&mut ws2, Duration::from_secs(10), is_idle).await;
    assert_eq!(live.seqs().first(), Some(&(last + 1)));
    assert_contiguous(&live.seqs(), last + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_prompts_are_edited_and_cancelled_only_by_their_author_and_stop_moves_on() {
    let (_dir, data) = scratch();
    let server = Server::start(&data, "scripted_delay_ms = 5");
    let alice = Api::new(&server, server.admin_token.as_ref().unwrap());
    let bob = Api::new(&server, &add_user(&data, "bob"));
    let id = alice.create_session().await;
    let running = alice.prompt(&id, "deltas=100000 delay_ms=10").await;
    let bobs = bob.prompt(&id, "bob's first").await;
    let bobs2 = bob.prompt(&id, "bob's second").await;
    assert_eq!(bobs["status"], "queued");
    assert_eq!(bobs["author"]["login"], "bob");
    let (_, queue) = alice.get(&format!("/api/sessions/{id}/queue")).await;
    let ids: Vec<&Value> = queue.as_array().unwrap().iter().map(|p| &p["id"]).collect();
    assert_eq!(ids, [&bobs["id"], &bobs2["id"]]);

    let q = |p: &Value| format!("/api/sessions/{id}/queue/{}", p["id"]);
    assert_error(
        alice
            .send("PATCH", &q(&bobs), json!({"text": "mine now"}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        alice.raw("DELETE", &q(&bobs), None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, edited) = bob
        .send(
            "PATCH",
            &q(&bobs),
            json!({"text": "bob's first, edited deltas=2"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["text"], "bob's first, edited deltas=2");
    let (status, cancelled) = bob.raw("DELETE", &q(&bobs2), None).await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    assert_error(
        bob.raw("DELETE", &q(&bobs2), None).await,
        StatusCode::CONFLICT,
        "not_queued",
    );
    assert_error(
        alice
            .send("PATCH", &q(&running), json!({"text": "too late"}))
            .await,
        StatusCode::CONFLICT,
        "not_queued",
    );
    assert_error(
        alice
            .send(
                "PATCH",
                &format!("/api/sessions/{id}/queue/999"),
                json!({"text": "x"}),
            )
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        bob.send("PATCH", &q(&bobs), json!({"text": "  "})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );

    // Stop: the running prompt ends at once as stopped, and Bob's (edited) prompt runs.
    let t = Instant::now();
    let (status, stop) = bob
        .send("POST", &format!("/api/sessions/{id}/stop"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{stop}");
    assert_eq!(stop["stopped"], running["id"]);
    assert!(t.elapsed() < Duration::from_secs(2));
    let events = alice.wait_idle(&id).await;
    let finished: Vec<(Value, Value)> = events
        .iter()
        .filter(|e| e["type"] == "prompt.finished")
        .map(|e| (e["data"]["prompt_id"].clone(), e["data"]["outcome"].clone()))
        .collect();
    assert_eq!(
        finished,
        [
            (running["id"].clone(), json!("stopped")),
            (bobs["id"].clone(), json!("done"))
        ]
    );
    let started_bob = events
        .iter()
        .find(|e| e["type"] == "prompt.started" && e["data"]["prompt_id"] == bobs["id"])
        .unwrap();
    assert_eq!(started_bob["data"]["author"]["login"], "bob");
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "prompt.started" && e["data"]["prompt_id"] == bobs2["id"])
    );
    let (_, stop) = alice
        .send("POST", &format!("/api/sessions/{id}/stop"), json!({}))
        .await;
    assert_eq!(stop["stopped"], Value::Null, "nothing to stop");

    // A share link is revoked by its creator or an admin, not by another user.
    let (_, link) = bob
        .send("POST", &format!("/api/sessions/{id}/shares"), json!({}))
        .await;
    let carol = Api::new(&server, &add_user(&data, "carol"));
    assert_error(
        carol
            .raw("DELETE", &format!("/api/shares/{}", link["id"]), None)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, _) = bob
        .raw("DELETE", &format!("/api/shares/{}", link["id"]), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

async fn metric(api: &Api, what: &str) -> i64 {
    let text = api
        .client
        .get(format!("{}/metrics", api.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let key = format!("hangar_sessions{{what=\"{what}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("{key} missing:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Waits (up to 10 s, for loaded CI machines) until a session gauge reads `want`.
async fn wait_metric(api: &Api, what: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = metric(api, what).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "hangar_sessions{{what={what:?}}} stayed {got}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_hibernate_and_come_back_on_the_next_request() {
    let (_dir, data) = scratch();
    let server = Server::start(&data, "scripted_delay_ms = 2\nidle_unload_ms = 300");
    let token = server.admin_token.clone().unwrap();
    let api = Api::new(&server, &token);
    let id = api.create_session().await;
    api.prompt(&id, "deltas=5").await;
    let before = api.wait_idle(&id).await;
    assert_eq!(metric(&api, "loaded").await, 1);
    wait_metric(&api, "loaded", 0).await;
    assert!(metric(&api, "unloads").await >= 1);

    // Transparent: the same events, then a subscription and a prompt on the woken session.
    assert_eq!(api.all_events(&id).await, before);
    assert_eq!(metric(&api, "loaded").await, 1);
    wait_metric(&api, "loaded", 0).await;
    let last = before.len() as u64;
    let mut ws = connect(&server, &token, &id, last).await;
    // A connection keeps the session loaded past the idle time.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(metric(&api, "loaded").await, 1);
    api.prompt(&id, "deltas=2").await;
    let seen = read_until(&mut ws, Duration::from_secs(10), is_idle).await;
    assert_eq!(seen.seqs().first(), Some(&(last + 1)));
    assert_contiguous(&seen.seqs(), last + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_heavy_traffic_loses_nothing_a_client_received() {
    let (_dir, data) = scratch();
    let mut server = Server::start(&data, "scripted_delay_ms = 0");
    let token = server.admin_token.clone().unwrap();
    let api = Api::new(&server, &token);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = api.create_session().await;
        api.prompt(&id, "deltas=100000000 tools=0 delay_ms=0").await;
        ids.push(id);
    }
    let mut readers = Vec::new();
    for id in &ids {
        let ws = connect(&server, &token, id, 0).await;
        readers.push(tokio::spawn(async move {
            let mut ws = ws;
            read_until(&mut ws, Duration::from_secs(60), |_| false).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    let mut received = Vec::new();
    for r in readers {
        received.push(r.await.unwrap());
    }
    for seen in &received {
        assert!(
            seen.events.len() > 100,
            "heavy traffic: {}",
            seen.events.len()
        );
        assert_contiguous(&seen.seqs(), 1);
    }

    let server = Server::start(&data, "scripted_delay_ms = 0");
    assert!(server.admin_token.is_none());
    assert!(
        server.printed("marked 3 session(s) interrupted"),
        "{}",
        server.stderr()
    );
    let api = Api::new(&server, &token);
    for (id, seen) in ids.iter().zip(&received) {
        let (_, s) = api.get(&format!("/api/sessions/{id}")).await;
        assert_eq!(s["status"], "interrupted", "{s}");
        let log = api.all_events(id).await;
        let seqs: Vec<u64> = log.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_contiguous(&seqs, 1);
        // Every event a client received is in the log, byte for byte.
        for (seq, raw) in &seen.raw {
            let logged: Value = serde_json::from_str(raw).unwrap();
            assert_eq!(log[*seq as usize - 1], logged, "seq {seq}");
        }
        eprintln!(
            "{id}: client received {} events before kill -9, log has {}",
            seen.events.len(),
            log.len()
        );
        let tail: Vec<&Value> = log.iter().rev().take(2).collect();
        assert_eq!(tail[0]["type"], "status");
        assert_eq!(tail[0]["data"]["status"], "interrupted");
        assert_eq!(tail[1]["type"], "prompt.finished");
        assert_eq!(tail[1]["data"]["outcome"], "interrupted");
        let file = data.join("sessions").join(format!("{id}.db"));
        let check = hangar_session::SessionLog::open(&file, Default::default(), false).unwrap();
        assert!(check.integrity_ok().unwrap(), "{id} is not corrupt");

        // The client reconnects where it stopped and gets the rest, then live events.
        let k = *seen.seqs().last().unwrap();
        let mut ws = connect(&server, &token, id, k).await;
        let rest = read_until(&mut ws, Duration::from_secs(10), |e| {
            e["type"] == "status" && e["data"]["status"] == "interrupted"
        })
        .await;
        assert_contiguous(&rest.seqs(), k + 1);
        assert_eq!(*rest.seqs().last().unwrap(), log.len() as u64);
    }
    // An interrupted session resumes with the next prompt.
    api.prompt(&ids[0], "carry on deltas=2 delay_ms=1").await;
    api.wait_idle(&ids[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_bad_frames_close_with_a_code() {
    let (_dir, data) = scratch();
    let server = Server::start(&data, "scripted_delay_ms = 5");
    let token = server.admin_token.clone().unwrap();
    let api = Api::new(&server, &token);
    let id = api.create_session().await;
    let other = api.create_session().await;

    // Bodies.
    assert_error(
        api.raw(
            "POST",
            &format!("/api/sessions/{id}/prompts"),
            Some(b"{\"text\": ".to_vec()),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        api.send(
            "POST",
            &format!("/api/sessions/{id}/prompts"),
            json!({"text": 5}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let big = json!({"text": "x".repeat(2 << 20)})
        .to_string()
        .into_bytes();
    assert_error(
        api.raw("POST", &format!("/api/sessions/{id}/prompts"), Some(big))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert_error(
        api.send("POST", "/api/sessions", json!({"repo": ""})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    // Unknown sessions.
    for path in [
        "/api/sessions/ses-0000000000000000",
        "/api/sessions/..%2F..%2Findex/events",
        "/api/sessions/nope/queue",
    ] {
        assert_error(api.get(path).await, StatusCode::NOT_FOUND, "not_found");
    }
    // after_seq.
    for q in ["after_seq=-1", "after_seq=abc", "after_seq=99", "limit=0"] {
        let msg = assert_error(
            api.get(&format!("/api/sessions/{id}/events?{q}")).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
        assert!(msg.contains(q.split('=').next().unwrap()), "{q}: {msg}");
    }
    let resp = reqwest::Client::new()
        .get(format!("{}/api/sessions/{id}/ws?after_seq=99", server.url))
        .bearer_auth(&token)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("after_seq 99"),
        "{body}"
    );

    // Share links: scoped to one session and one scope, revocable.
    let (status, view) = api
        .send(
            "POST",
            &format!("/api/sessions/{id}/shares"),
            json!({"scope": "view"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    let (_, prompt_link) = api
        .send(
            "POST",
            &format!("/api/sessions/{id}/shares"),
            json!({"scope": "prompt"}),
        )
        .await;
    let viewer = Api::new(&server, view["token"].as_str().unwrap());
    let guest = Api::new(&server, prompt_link["token"].as_str().unwrap());
    let (status, _) = viewer.get(&format!("/api/sessions/{id}/events")).await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        viewer
            .send(
                "POST",
                &format!("/api/sessions/{id}/prompts"),
                json!({"text": "hi"}),
            )
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        guest.get(&format!("/api/sessions/{other}/events")).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        guest.get("/api/sessions").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        guest.get("/api/sandboxes").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let p = guest.prompt(&id, "from a guest deltas=1").await;
    assert_eq!(p["author"]["login"], format!("share-{}", prompt_link["id"]));
    assert_eq!(p["author"]["user_id"], Value::Null);
    // A browser passes the token in the query, on the WebSocket only.
    let url = format!(
        "{}&token={}",
        server.ws_url(&id, 0),
        view["token"].as_str().unwrap()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = read_until(&mut ws, Duration::from_secs(5), |_| true).await;
    assert_eq!(first.seqs(), [1]);
    // A view link cannot prompt over the WebSocket either: 1008.
    ws.send(Message::Text(
        json!({"type": "prompt", "text": "hi"}).to_string().into(),
    ))
    .await
    .unwrap();
    let closed = read_until(&mut ws, Duration::from_secs(5), |_| false).await;
    assert_eq!(
        closed.close.as_ref().map(|c| c.0),
        Some(1008),
        "{:?}",
        closed.close
    );
    let (status, revoked) = api
        .raw("DELETE", &format!("/api/shares/{}", view["id"]), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(revoked["revoked_at_ms"].is_i64());
    assert_error(
        viewer.get(&format!("/api/sessions/{id}/events")).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_error(
        api.raw("DELETE", "/api/shares/9999", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Invalid frames close with a code that says why.
    for (frame, code) in [
        (Message::Binary(vec![1, 2, 3].into()), 1003),
        (Message::Text("{not json".into()), 1007),
        (Message::Text(r#"{"type":"dance"}"#.into()), 1007),
        (Message::Text(r#"{"type":"prompt"}"#.into()), 1007),
        (Message::Text("x".repeat(200 * 1024).into()), 1009),
    ] {
        let mut ws = connect(&server, &token, &id, 0).await;
        ws.send(frame).await.unwrap();
        let seen = read_until(&mut ws, Duration::from_secs(5), |_| false).await;
        let got = seen.close.as_ref().map(|c| c.0);
        assert_eq!(got, Some(code), "{:?}", seen.close);
        assert!(!seen.close.unwrap().1.is_empty());
    }
    let _ = CloseCode::Normal;
}

/// Polls until `n` prompts of the session have finished.
#[tokio::test]
async fn with_a_model_configured_prompts_run_the_agent_in_a_sandbox() {
    use hangar_testkit::fake_model::{FakeModel, Reply, anthropic};
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(
            &["Looking."],
            &[(
                "t1",
                "shell",
                &[r#"{"command": "echo from-the-sandbox; hostname"}"#],
            )],
            "tool_use",
        )),
        Reply::sse(anthropic(&["All good."], &[], "end_turn")),
    ])
    .await;
    let (_dir, data) = scratch();
    let key_file = data.parent().unwrap().join("model.key");
    std::fs::write(&key_file, "sk-test\n").unwrap();
    let server = Server::start_with_config(
        &data,
        &format!(
            "[model]\nprovider = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"claude-test\"\napi_key_file = {:?}\n",
            fake.url(),
            key_file
        ),
    );
    let api = Api::new(&server, server.admin_token.as_deref().unwrap());
    let id = api.create_session().await;
    api.prompt(&id, "check the sandbox").await;
    let events = wait_finished(&api, &id, 1).await;
    let finished = events
        .iter()
        .find(|e| e["type"] == "prompt.finished")
        .unwrap();
    assert_eq!(finished["data"]["outcome"], "done", "{finished}");
    let output: String = events
        .iter()
        .filter(|e| e["type"] == "tool.output")
        .map(|e| e["data"]["text"].as_str().unwrap().to_string())
        .collect();
    assert!(
        output.starts_with("from-the-sandbox\nsb-"),
        "ran in a sandbox: {output:?}"
    );
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "model.delta")
        .map(|e| e["data"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "Looking.All good.");
    let req = &fake.requests()[0];
    assert_eq!(req.headers["x-api-key"], "sk-test");
    assert_eq!(req.body["model"], "claude-test");
    assert!(
        !server.stderr().contains("sk-test"),
        "the key is never logged"
    );
}

/// The read with `call_id` (e.g. `p2-t2`) returned the note written in the first prompt.
fn assert_read_the_note(events: &[Value], call_id: &str) {
    let read = events
        .iter()
        .find(|e| e["type"] == "tool.output" && e["data"]["call_id"] == call_id)
        .unwrap_or_else(|| panic!("no output of the read {call_id}: {events:#?}"));
    assert!(
        read["data"]["text"]
            .as_str()
            .unwrap()
            .contains("kept across sandboxes"),
        "{read}"
    );
}

#[tokio::test]
async fn a_session_continues_in_its_sandbox_after_a_restart_and_from_its_last_snapshot_when_the_sandbox_died()
 {
    use hangar_testkit::fake_model::{FakeModel, Reply, anthropic};
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(
            &["Writing."],
            &[(
                "t1",
                "write_file",
                &[r#"{"path": "notes/untracked.txt", "content": "kept across sandboxes\n"}"#],
            )],
            "tool_use",
        )),
        Reply::sse(anthropic(&["Written."], &[], "end_turn")),
        Reply::sse(anthropic(
            &["Reading."],
            &[("t2", "read_file", &[r#"{"path": "notes/untracked.txt"}"#])],
            "tool_use",
        )),
        Reply::sse(anthropic(&["Read."], &[], "end_turn")),
        Reply::sse(anthropic(
            &["Again."],
            &[("t3", "read_file", &[r#"{"path": "notes/untracked.txt"}"#])],
            "tool_use",
        )),
        Reply::sse(anthropic(&["Still there."], &[], "end_turn")),
        Reply::sse(anthropic(
            &["Once more."],
            &[("t4", "read_file", &[r#"{"path": "notes/untracked.txt"}"#])],
            "tool_use",
        )),
        Reply::sse(anthropic(&["Kept."], &[], "end_turn")),
    ])
    .await;
    let (_dir, data) = scratch();
    let toml = format!(
        "[model]\nprovider = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"m\"\n\n[pool]\nmin = 0\n\n[images]\nrebuild_every_s = 0\ngc_every_s = 1\n",
        fake.url()
    );
    let mut server = Server::start_with_config(&data, &toml);
    let api = Api::new(&server, server.admin_token.as_deref().unwrap());
    let id = api.create_session().await;
    api.prompt(&id, "write a note, do not commit it").await;
    wait_finished(&api, &id, 1).await;

    // The snapshot is taken after the prompt, in the background.
    let nth_snapshot = |api: Api, n: usize| {
        let id = id.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let events = api.all_events(&id).await;
                let outcomes: Vec<&Value> = events
                    .iter()
                    .filter(|e| e["type"] == "snapshot.taken" || e["type"] == "snapshot.failed")
                    .collect();
                if let Some(e) = outcomes.get(n - 1) {
                    assert_eq!(e["type"], "snapshot.taken", "{e}");
                    return e["data"]["image"].as_str().unwrap().to_string();
                }
                assert!(Instant::now() < deadline, "no snapshot {n}: {events:#?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let image = nth_snapshot(api.clone(), 1).await;

    // The session's sandbox (the one holding the file; the pool keeps a warm one beside
    // it) dies: its init is killed from the host.
    let has_note = |sb: String| {
        let api = api.clone();
        async move {
            let (status, out) = api
                .send(
                    "POST",
                    &format!("/api/sandboxes/{sb}/exec"),
                    json!({"shell": "test -f /workspace/notes/untracked.txt"}),
                )
                .await;
            status == StatusCode::OK && out["exit_code"] == 0
        }
    };
    let (_, sandboxes) = api.get("/api/sandboxes").await;
    let mut session_sandbox = None;
    for s in sandboxes.as_array().unwrap() {
        let id = s["id"].as_str().unwrap().to_string();
        if s["status"] == "running" && has_note(id.clone()).await {
            session_sandbox = Some(id);
        }
    }
    let sb = session_sandbox.unwrap_or_else(|| panic!("no sandbox has the note: {sandboxes}"));
    // Kills a sandbox's init from the host (`kill -9`), as a crash would; returns its pid.
    let kill_init = |sb: &str| {
        let record: Value = serde_json::from_slice(
            &std::fs::read(data.join("sandboxes").join(sb).join("sandbox.json")).unwrap(),
        )
        .unwrap();
        let pid = record["init"]["pid"].as_u64().unwrap();
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        pid
    };
    kill_init(&sb);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, view) = api.get(&format!("/api/sandboxes/{sb}")).await;
        if view["status"] == "dead" {
            break;
        }
        assert!(Instant::now() < deadline, "never dead: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The next prompt runs in a sandbox restored from the snapshot: the file is there.
    api.prompt(&id, "read the note").await;
    let events = wait_finished(&api, &id, 2).await;
    let finished: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "prompt.finished")
        .collect();
    assert_eq!(finished[1]["data"]["outcome"], "done", "{events:#?}");
    let restored = events
        .iter()
        .find(|e| e["type"] == "sandbox.restored")
        .unwrap_or_else(|| panic!("no sandbox.restored: {events:#?}"));
    assert_eq!(restored["data"]["snapshot"], image.as_str(), "{restored}");
    let reason = restored["data"]["reason"].as_str().unwrap();
    assert!(reason.contains("died"), "{reason}");
    assert_read_the_note(&events, "p2-t2");
    let (_, view) = api.get(&format!("/api/sandboxes/{sb}")).await;
    assert_ne!(
        view["status"], "running",
        "the dead sandbox was replaced: {view}"
    );

    // A restart does not cost the session its sandbox: the server takes the running one
    // back, and the next prompt runs there with no restore.
    let second = nth_snapshot(api.clone(), 2).await;
    assert_ne!(second, image);
    // The first snapshot was released; the server's periodic gc removes its manifest (its
    // layers stay while a sandbox runs on them).
    let blobs = data.join("images/blobs/sha256");
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::fs::read_dir(&blobs)
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().starts_with(&image))
    {
        assert!(
            Instant::now() < deadline,
            "the released snapshot {image} was never collected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let session_sandbox = |api: Api| {
        let id = id.clone();
        async move {
            let (_, all) = api.get("/api/sandboxes").await;
            let mine: Vec<String> = all
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["session_id"] == id.as_str() && s["status"] == "running")
                .map(|s| s["id"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(
                mine.len(),
                1,
                "one running sandbox serves the session: {all}"
            );
            mine[0].clone()
        }
    };
    let before = session_sandbox(api.clone()).await;
    server.kill9();
    let mut server = Server::start_again(&data, &toml, server.admin_token.clone());
    assert!(
        server.printed("continue in their running sandboxes"),
        "{}",
        server.stderr()
    );
    let api = Api::new(&server, server.admin_token.as_deref().unwrap());
    api.prompt(&id, "read it again").await;
    let events = wait_finished(&api, &id, 3).await;
    let restored = events
        .iter()
        .filter(|e| e["type"] == "sandbox.restored")
        .count();
    assert_eq!(restored, 1, "only the first restore: {events:#?}");
    assert_read_the_note(&events, "p3-t3");
    assert_eq!(
        session_sandbox(api.clone()).await,
        before,
        "the same sandbox"
    );

    // The latest snapshot outlives the server: when the sandbox is gone too (its init
    // killed while the server was down), the session continues from the snapshot.
    let third = nth_snapshot(api.clone(), 3).await;
    server.kill9();
    let pid = kill_init(&before);
    // Gone before the server starts again (a restart that still saw it alive would take it
    // back, and then find it dead).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "init {pid} outlived kill -9");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server = Server::start_again(&data, &toml, server.admin_token.clone());
    let api = Api::new(&server, server.admin_token.as_deref().unwrap());
    api.prompt(&id, "and again").await;
    let events = wait_finished(&api, &id, 4).await;
    let restored: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "sandbox.restored")
        .collect();
    assert_eq!(restored.len(), 2, "{events:#?}");
    assert_eq!(restored[1]["data"]["snapshot"], third.as_str());
    assert_eq!(restored[1]["data"]["reason"], "the server restarted");
    assert_read_the_note(&events, "p4-t4");
    let (_, view) = api.get(&format!("/api/sandboxes/{before}")).await;
    assert_ne!(view["status"], "running", "{view}");
}

#[tokio::test]
async fn without_a_model_a_prompt_fails_saying_how_to_configure_one() {
    let (_dir, data) = scratch();
    let server = Server::start_with_config(&data, "");
    assert!(
        server.printed("no [model] configured"),
        "{}",
        server.stderr()
    );
    let api = Api::new(&server, server.admin_token.as_deref().unwrap());
    let id = api.create_session().await;
    api.prompt(&id, "hello?").await;
    let events = wait_finished(&api, &id, 1).await;
    let finished = events
        .iter()
        .find(|e| e["type"] == "prompt.finished")
        .unwrap();
    assert_eq!(finished["data"]["outcome"], "failed", "{finished}");
    assert!(
        finished["data"]["error"]
            .as_str()
            .unwrap()
            .contains("add a [model] section"),
        "{finished}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_never_slows_the_session_or_other_clients() {
    let (_dir, data) = scratch();
    let server = Server::start(&data, "scripted_delay_ms = 0");
    let token = server.admin_token.clone().unwrap();
    let bob = add_user(&data, "bob");
    let api = Api::new(&server, &token);
    let id = api.create_session().await;

    // Bob connects and then reads nothing; Alice reads everything.
    let mut stalled = connect(&server, &bob, &id, 0).await;
    let mut ws = connect(&server, &token, &id, 0).await;
    api.prompt(&id, "deltas=150000 tools=0 delay_ms=0").await;
    let t = Instant::now();
    let seen = read_until(&mut ws, Duration::from_secs(60), |e| {
        e["type"] == "prompt.finished"
    })
    .await;
    let fast = t.elapsed();
    assert_contiguous(&seen.seqs(), 1);
    assert_eq!(seen.events.last().unwrap()["data"]["outcome"], "done");
    assert!(seen.events.len() > 150_000);

    // The server gives up on Bob once a write has waited 10 s: his leaving is logged, with
    // nothing lost for anyone (he can reconnect with after_seq).
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let events = api.all_events(&id).await;
        if events
            .iter()
            .any(|e| e["type"] == "participant.left" && e["data"]["participant"]["login"] == "bob")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled client was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // What Bob's socket had buffered is still a gapless prefix of the log.
    let late = read_until(&mut stalled, Duration::from_secs(20), |_| false).await;
    assert!(!late.events.is_empty());
    assert_contiguous(&late.seqs(), 1);
    if let Some((code, reason)) = &late.close {
        assert_eq!(*code, 4008, "{reason}");
    }
    eprintln!(
        "fast client: {} events in {fast:?}; stalled client had {} buffered",
        seen.events.len(),
        late.events.len()
    );
}

#[tokio::test]
async fn the_openapi_document_describes_the_session_api() {
    let (_dir, data) = scratch();
    let server = Server::start(&data, "");
    let doc: Value = reqwest::get(format!("{}/openapi.json", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/sessions", "get"),
        ("/api/sessions", "post"),
        ("/api/sessions/{id}", "get"),
        ("/api/sessions/{id}/prompts", "post"),
        ("/api/sessions/{id}/queue", "get"),
        ("/api/sessions/{id}/queue/{prompt_id}", "patch"),
        ("/api/sessions/{id}/queue/{prompt_id}", "delete"),
        ("/api/sessions/{id}/stop", "post"),
        ("/api/sessions/{id}/events", "get"),
        ("/api/sessions/{id}/ws", "get"),
        ("/api/sessions/{id}/shares", "post"),
        ("/api/shares/{id}", "delete"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from openapi.json"
        );
    }
    // Every event type has its schema, defined once in the protocol crate.
    let schemas = &doc["components"]["schemas"];
    for name in [
        "Event",
        "EventBody",
        "PresenceUpdate",
        "ClientMessage",
        "Prompt",
        "Author",
    ] {
        assert!(schemas[name].is_object(), "{name} missing");
    }
    let bodies = schemas["EventBody"].to_string();
    for kind in [
        "prompt.queued",
        "model.delta",
        "file.changed",
        "git.committed",
        "git.pushed",
        "pr.opened",
        "session.spawned",
    ] {
        assert!(bodies.contains(kind), "{kind} has no schema: {bodies}");
    }
}

#[test]
fn the_session_commands_run_list_attach_stop_and_share() {
    let (_dir, data) = scratch();
    let server = Server::start(&data, "scripted_delay_ms = 2");
    let token = server.admin_token.clone().unwrap();

    // run --json: one document once the prompt finished.
    let out = client(
        &server,
        &token,
        &["run", "add tests deltas=3", "--repo", "acme/app", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["outcome"], "done", "{doc}");
    assert!(
        doc["text"]
            .as_str()
            .unwrap()
            .contains("part 2 of the answer")
    );
    let id = doc["id"].as_str().unwrap().to_string();

    // run streams text; a failing prompt exits non-zero.
    let out = client(
        &server,
        &token,
        &["run", "fail deltas=1", "--repo", "acme/app"],
    );
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("part 0 of the answer") && text.contains("failed"),
        "{text}"
    );

    let out = client(&server, &token, &["sessions", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);

    // --detach returns at once; stop ends the running prompt.
    let out = client(
        &server,
        &token,
        &[
            "run",
            "deltas=100000 delay_ms=10",
            "--repo",
            "acme/app",
            "--detach",
        ],
    );
    let long = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(long.starts_with("ses-"), "{long}");
    let out = client(&server, &token, &["stop", &long]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped prompt #1"));

    // share --json gives a token that opens that session only.
    let out = client(
        &server,
        &token,
        &["share", &id, "--scope", "view", "--json"],
    );
    let link: Value = serde_json::from_slice(&out.stdout).unwrap();
    let share = link["token"].as_str().unwrap();
    assert!(share.starts_with("hgs_"));
    assert!(link["ws_url"].as_str().unwrap().contains("token=hgs_"));
    let out = client(&server, share, &["stop", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
    // And a wrong server is one clear line.
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args([
            "sessions",
            "--server",
            "http://127.0.0.1:9",
            "--token",
            &token,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is it running?"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_promptly_with_clients_connected() {
    let (_dir, data) = scratch();
    let mut server = Server::start(&data, "scripted_delay_ms = 5");
    let token = server.admin_token.clone().unwrap();
    let api = Api::new(&server, &token);
    let id = api.create_session().await;
    api.prompt(&id, "deltas=100000 delay_ms=5").await;
    let mut ws = connect(&server, &token, &id, 0).await;
    read_until(&mut ws, Duration::from_secs(5), |e| {
        e["type"] == "model.delta"
    })
    .await;
    // SAFETY: kill has no memory effects; the pid is our own child's.
    unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status}: {}", server.stderr());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rest = read_until(&mut ws, Duration::from_secs(5), |_| false).await;
    assert_eq!(
        rest.close.as_ref().map(|c| c.0),
        Some(1001),
        "{:?}",
        rest.close
    );
    assert_contiguous(&rest.seqs(), rest.seqs().first().copied().unwrap_or(1));
    // The next start finds the prompt interrupted, like after a crash.
    let server = Server::start(&data, "scripted_delay_ms = 5");
    let api = Api::new(&server, &token);
    let (_, s) = api.get(&format!("/api/sessions/{id}")).await;
    assert_eq!(s["status"], "interrupted", "{s}");
}

#[tokio::test]
async fn configured_plugins_guard_every_sessions_agent() {
    use hangar_testkit::fake_model::{FakeModel, Reply, anthropic};
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(
            &[],
            &[("t1", "shell", &[r#"{"command": "rm -rf / "}"#])],
            "tool_use",
        )),
        Reply::sse(anthropic(&["Refused, fine."], &[], "end_turn")),
    ])
    .await;
    let guard = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/guard.py");
    let (_dir, data) = scratch();
    let server = Server::start_with_config(
        &data,
        &format!(
            "[model]\nprovider = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"m\"\n\n[[plugins]]\ncommand = [\"python3\", {:?}]\n",
            fake.url(),
            guard
        ),
    );
    let api = Api::new(&server, server.admin_token.as_deref().unwrap());
    let id = api.create_session().await;
    api.prompt(&id, "clean up").await;
    wait_finished(&api, &id, 1).await;
    let result = &fake.requests()[1].body["messages"][2]["content"][0];
    assert_eq!(result["is_error"], true);
    assert!(
        result["content"]
            .as_str()
            .unwrap()
            .contains("blocked by plugin guard: recursive deletes from / are not allowed"),
        "{result}"
    );
    assert!(
        fake.requests()[0].body["system"]
            .as_str()
            .unwrap()
            .contains("House rule")
    );
}

#[test]
fn a_plugin_that_cannot_start_stops_the_server_with_one_line() {
    let (_dir, data) = scratch();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("hangar.toml"),
        "[model]\nprovider = \"anthropic\"\nbase_url = \"http://127.0.0.1:9\"\nmodel = \"m\"\n\n[[plugins]]\ncommand = [\"/no/such/plugin\"]\n",
    )
    .unwrap();
    let out = hangar(&data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("hangar: ") && last.contains("cannot start plugin /no/such/plugin"),
        "{err}"
    );
}

#[tokio::test]
async fn typing_warms_a_sandbox_that_the_prompt_then_uses() {
    use hangar_testkit::fake_model::{FakeModel, Reply, anthropic};
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(
            &[],
            &[("t1", "shell", &[r#"{"command": "hostname"}"#])],
            "tool_use",
        )),
        Reply::sse(anthropic(&["Done."], &[], "end_turn")),
    ])
    .await;
    let (_dir, data) = scratch();
    let server = Server::start_with_config(
        &data,
        &format!(
            "[model]\nprovider = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"m\"\n\n[pool]\nmin = 0\n",
            fake.url()
        ),
    );
    let token = server.admin_token.clone().unwrap();
    let api = Api::new(&server, &token);
    let id = api.create_session().await;
    let mut ws = connect(&server, &token, &id, 0).await;
    ws.send(Message::Text(json!({"type": "typing"}).to_string().into()))
        .await
        .unwrap();
    // The warm-up reserves a sandbox for the draft before any prompt.
    let deadline = Instant::now() + Duration::from_secs(10);
    let warmed = loop {
        let (_, pool) = api.get("/api/pool").await;
        if let Some(sandbox) = pool["drafts"][0]["sandbox"].as_str() {
            assert_eq!(pool["drafts"][0]["repo"], "acme/app", "{pool}");
            break sandbox.to_string();
        }
        assert!(Instant::now() < deadline, "no sandbox reserved: {pool}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    api.prompt(&id, "where am I?").await;
    let events = wait_finished(&api, &id, 1).await;
    let host: String = events
        .iter()
        .filter(|e| e["type"] == "tool.output")
        .map(|e| e["data"]["text"].as_str().unwrap().trim().to_string())
        .collect();
    assert_eq!(host, warmed, "the prompt ran in the sandbox warmed for it");
    // The pool's figures, in the API and on /metrics.
    let (status, pool) = api.get("/api/pool").await;
    assert_eq!(status, StatusCode::OK, "{pool}");
    assert_eq!(pool["reservations"], 0, "the reservation was taken: {pool}");
    assert_eq!(pool["drafts"], json!([]), "{pool}");
    assert_eq!(
        pool["hits"].as_u64().unwrap() + pool["misses"].as_u64().unwrap(),
        1,
        "{pool}"
    );
    assert_eq!(pool["idle"][0]["repo"], "acme/app", "{pool}");
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hangar_pool{repo=\"acme/app\",what=\"idle\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hangar_pool{repo=\"\",what=\"reservations\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn repositories_are_registered_listed_shown_and_removed() {
    let (_dir, data) = scratch();
    // No scheduled builds: the URLs registered here lead nowhere.
    let server = Server::start_with_config(
        &data,
        "[sessions]\nexecutor = \"scripted\"\n\n[images]\nrebuild_every_s = 0\n",
    );
    let token = server.admin_token.clone().unwrap();
    let api = Api::new(&server, &token);

    let (status, repo) = api
        .send(
            "POST",
            "/api/repos",
            json!({"name": "acme/app", "url": "https://git.example.com/acme/app.git",
                   "description": "The shop", "hints": ["checkout", "#shop-dev"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{repo}");
    assert_eq!(repo["default_branch"], "main");
    assert_eq!(repo["recipe"], Value::Null);
    let (status, got) = api.get("/api/repos/acme/app").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, repo);

    // A recipe is checked before it is stored.
    let recipe = "base = \"host\"\n[[setup]]\nrun = \"make\"\n";
    let (status, with) = api
        .raw("PUT", "/api/repos/acme/app/recipe", Some(recipe.into()))
        .await;
    assert_eq!(status, StatusCode::OK, "{with}");
    assert_eq!(with["recipe"], recipe);
    let message = assert_error(
        api.raw(
            "PUT",
            "/api/repos/acme/app/recipe",
            Some(b"base = 3".to_vec()),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_recipe",
    );
    assert!(message.contains("acme/app"), "{message}");
    assert_eq!(api.get("/api/repos/acme/app").await.1["recipe"], recipe);

    // Bad input: each a clear error, nothing stored.
    for (body, status, code) in [
        (
            json!({"name": "app", "url": "/srv/app"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"name": "acme/x", "url": "https://me:secret@git.example.com/x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"name": "acme/x", "url": "relative/path"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"name": "acme/x", "url": "/srv/x", "default_branch": "a..b"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"name": "acme/x", "url": "/srv/x", "colour": "red"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            json!({"name": "acme/app", "url": "/srv/app"}),
            StatusCode::CONFLICT,
            "conflict",
        ),
    ] {
        let message = assert_error(
            api.send("POST", "/api/repos", body.clone()).await,
            status,
            code,
        );
        assert!(!message.contains("secret"), "{message}");
    }
    assert_error(
        api.get("/api/repos/acme/nope").await,
        StatusCode::NOT_FOUND,
        "unknown_repo",
    );
    let (_, list) = api.get("/api/repos").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // The CLI over the same API.
    let cli = |args: &[&str]| client(&server, &token, args);
    let out = cli(&[
        "repo", "add", "acme/api", "/srv/api", "--branch", "trunk", "--hint", "api",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["repo", "ls", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme/api", "acme/app"]);
    assert_eq!(list[0]["default_branch"], "trunk");
    let out = cli(&["repo", "show", "acme/app"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("The shop") && text.contains("run = \"make\""),
        "{text}"
    );
    for args in [
        &["repo", "show", "not-a-name"][..],
        &["repo", "show", "acme/nope"],
        &["repo", "add", "acme/api", "/srv/api"],
    ] {
        let out = cli(args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("hangar: "), "{err}");
    }
    let out = cli(&["repo", "rm", "acme/api"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, list) = api.get("/api/repos").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}
