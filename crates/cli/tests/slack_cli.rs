//! The Slack app end to end: the real `hangar serve` with `[slack]`, a fake Slack Web API
//! and a fake classifier model on real sockets, deliveries signed as Slack signs them, the
//! scripted stand-in agent answering prompts, and `hangar slack link` linking accounts.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use hangar_testkit::fake_model::{FakeModel, Reply, anthropic};
use hangar_testkit::fake_slack::{Failure, FakeSlack, now, signature};
use serde_json::{Value, json};

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const TOKEN: &str = "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy";
const TEAM: &str = "T1";

mod common;
use common::{Server, hangar};

/// Waits (up to 20 s) until `f` gives something; the test fails naming `what` otherwise.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

struct Harness {
    server: Server,
    toml: String,
    slack: FakeSlack,
    model: FakeModel,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    async fn start_with(customise: impl FnOnce(&mut String)) -> Harness {
        let dir = hangar_testkit::scratch_dir();
        let slack = FakeSlack::start(TOKEN).await;
        slack.add_channel("C1", "general");
        slack.add_channel("C2", "api-dev");
        slack.add_user("U1", "alice");
        slack.add_user("U2", "carol");
        let model = FakeModel::start(Vec::new()).await;
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(secrets.join("bot-token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(secrets.join("signing-secret"), format!("{SECRET}\n")).unwrap();
        let mut toml = format!(
            r#"[sessions]
executor = "scripted"
scripted_delay_ms = 10

[slack]
bot_token_file = "{secrets}/bot-token"
signing_secret_file = "{secrets}/signing-secret"
team_ids = ["{TEAM}"]
api_base_url = "{api}"
public_url = "https://hangar.example.com"
update_interval_ms = 100

[slack.classifier]
provider = "anthropic"
base_url = "{model}"
model = "fast"

[[slack.repos]]
name = "acme/app"
description = "The customer web app"
keywords = ["checkout", "footer"]
channels = ["app-dev"]

[[slack.repos]]
name = "acme/api"
description = "The REST API and billing"
keywords = ["billing"]
channels = ["api-dev"]

[[slack.repos]]
name = "acme/infra"
description = "Terraform for every environment"
keywords = ["terraform"]
"#,
            secrets = secrets.display(),
            api = slack.api_url(),
            model = model.url(),
        );
        customise(&mut toml);
        let server = Server::start_with_config(&dir.path().join("data"), &toml);
        Harness {
            server,
            toml,
            slack,
            model,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// Kills the server (`kill -9`) and starts it again on the same data.
    fn restart(&mut self) {
        self.server.kill9();
        let token = self.server.admin_token.clone();
        self.server = Server::start_again(&self.server.data_dir.clone(), &self.toml, token);
    }

    /// POSTs `body` to `path` signed as Slack signs it, `age` seconds ago.
    async fn deliver_aged(
        &self,
        path: &str,
        body: &str,
        content_type: &str,
        age: i64,
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        let ts = (now() - age).to_string();
        let mut req = self
            .http
            .post(format!("{}{path}", self.server.url))
            .header("content-type", content_type)
            .header("x-slack-request-timestamp", &ts)
            .header("x-slack-signature", signature(SECRET, &ts, body))
            .body(body.to_string());
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    async fn event(&self, body: &Value, extra: &[(&str, &str)]) -> reqwest::Response {
        self.deliver_aged(
            "/slack/events",
            &body.to_string(),
            "application/json",
            0,
            extra,
        )
        .await
    }

    /// A person writes `text` in `channel` (in a thread, or starting one) and Slack
    /// delivers it as `kind` (`app_mention` or `message`). Returns the message's ts.
    async fn person_says(
        &self,
        kind: &str,
        event_id: &str,
        channel: &str,
        user: &str,
        text: &str,
        thread_ts: Option<&str>,
    ) -> String {
        let ts = self.slack.say(channel, user, text, thread_ts);
        let resp = self
            .event(
                &event_body(kind, event_id, TEAM, channel, user, text, &ts, thread_ts),
                &[],
            )
            .await;
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        ts
    }

    /// Links Slack user `user` with the code the bot sent them, through `hangar slack link`.
    async fn link(&self, user: &str) {
        let text = eventually("a link code sent to the Slack user", || {
            self.slack
                .calls_of("chat.postEphemeral")
                .into_iter()
                .rev()
                .find(|c| c.args["user"] == user)
                .map(|c| c.args["text"].as_str().unwrap().to_string())
        })
        .await;
        let code = text
            .split("hangar slack link ")
            .nth(1)
            .unwrap()
            .split('`')
            .next()
            .unwrap()
            .to_string();
        let out = hangar(&self.server.data_dir)
            .args([
                "slack",
                "link",
                &code,
                "--server",
                &self.server.url,
                "--token",
                self.server.admin_token.as_deref().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("linked Slack user {user}"))
        );
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.server.url))
            .bearer_auth(self.server.admin_token.as_deref().unwrap());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn sessions(&self) -> Vec<Value> {
        let (status, list) = self.api(reqwest::Method::GET, "/api/sessions", None).await;
        assert_eq!(status, 200);
        list.as_array().unwrap().clone()
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        let (_, events) = self
            .api(
                reqwest::Method::GET,
                &format!("/api/sessions/{id}/events"),
                None,
            )
            .await;
        events.as_array().unwrap().clone()
    }

    /// Waits for the session started in a thread, and returns its id.
    async fn session_of_thread(&self, channel: &str, thread_ts: &str) -> String {
        let reply = eventually("the bot's \"working on it\" reply", || {
            self.slack
                .bot_replies(channel, thread_ts)
                .into_iter()
                .find(|m| m.text.contains("Working on it in"))
        })
        .await;
        reply
            .text
            .split("https://hangar.example.com/sessions/")
            .nth(1)
            .unwrap()
            .split('|')
            .next()
            .unwrap()
            .to_string()
    }

    /// Waits until the thread has `n` results (`:white_check_mark:`, `:x:`, …).
    async fn results(&self, channel: &str, thread_ts: &str, n: usize) -> Vec<String> {
        eventually(&format!("{n} results in the thread"), || {
            let results: Vec<String> = self
                .slack
                .bot_replies(channel, thread_ts)
                .into_iter()
                .filter(|m| {
                    [":white_check_mark:", ":octagonal_sign:", ":x:"]
                        .iter()
                        .any(|p| m.text.starts_with(p))
                })
                .map(|m| m.text)
                .collect();
            (results.len() >= n).then_some(results)
        })
        .await
    }

    fn classifier_says(&self, repo: &str, confidence: f64) {
        let answer = json!({"repo": repo, "confidence": confidence}).to_string();
        self.model
            .push(Reply::sse(anthropic(&[&answer], &[], "end_turn")));
    }
}

#[allow(clippy::too_many_arguments)]
fn event_body(
    kind: &str,
    event_id: &str,
    team: &str,
    channel: &str,
    user: &str,
    text: &str,
    ts: &str,
    thread_ts: Option<&str>,
) -> Value {
    let mut event = json!({
        "type": kind,
        "user": user,
        "text": text,
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
        "channel_type": if channel.starts_with('D') { "im" } else { "channel" },
    });
    if let Some(t) = thread_ts {
        event["thread_ts"] = json!(t);
    }
    json!({
        "token": "unused-verification-token",
        "team_id": team,
        "api_app_id": "A1",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": now(),
        "authorizations": [{"team_id": team, "user_id": "UBOT", "is_bot": true}],
    })
}

fn interaction_body(
    user: &str,
    channel: &str,
    message_ts: &str,
    thread_ts: &str,
    action_id: &str,
    value: &str,
) -> String {
    let payload = json!({
        "type": "block_actions",
        "team": {"id": TEAM, "domain": "acme"},
        "user": {"id": user, "username": "x", "team_id": TEAM},
        "api_app_id": "A1",
        "channel": {"id": channel, "name": "general"},
        "message": {"type": "message", "ts": message_ts, "thread_ts": thread_ts, "text": "x"},
        "actions": [{"action_id": action_id, "block_id": "b1", "value": value, "type": "button", "action_ts": "1.2"}],
        "trigger_id": "1.2.3",
        "response_url": "https://hooks.slack.com/actions/T1/1/x",
    });
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_naming_a_repository_starts_a_session_that_the_thread_follows() {
    let h = Harness::start().await;
    let ts = h
        .person_says(
            "app_mention",
            "Ev1",
            "C1",
            "U1",
            "<@UBOT> fix the footer in acme/app deltas=4",
            None,
        )
        .await;
    // alice is not linked yet: she alone gets a code, and nothing starts.
    let ephemeral = eventually("the link code", || {
        h.slack.calls_of("chat.postEphemeral").pop()
    })
    .await;
    let text = ephemeral.args["text"].as_str().unwrap();
    assert!(text.starts_with("Hi alice,"), "{text}");
    assert!(
        text.contains("https://hangar.example.com/api/slack/link"),
        "{text}"
    );
    assert_eq!(ephemeral.args["thread_ts"], ts.as_str());
    assert!(h.sessions().await.is_empty());
    let code = text
        .split("hangar slack link ")
        .nth(1)
        .unwrap()
        .split('`')
        .next()
        .unwrap();
    assert!(
        h.slack.messages().iter().all(|m| !m.text.contains(code)),
        "the code is never posted where others see it"
    );
    h.link("U1").await;
    let id = h.session_of_thread("C1", &ts).await;
    let session = h
        .sessions()
        .await
        .into_iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap();
    assert_eq!(session["repo"], "acme/app");
    assert_eq!(session["title"], "fix the footer in acme/app deltas=4");
    let results = h.results("C1", &ts, 1).await;
    assert!(
        results[0].starts_with(":white_check_mark: Done (asked by admin)."),
        "{results:?}"
    );
    assert!(
        results[0].contains("part 3 of the answer to prompt 1"),
        "{results:?}"
    );
    // The progress message was edited in place to its final state, without a Stop button.
    let progress = eventually("the final progress", || {
        h.slack
            .bot_replies("C1", &ts)
            .into_iter()
            .find(|m| m.text.contains("Working on it in") && m.text.contains("Idle after 1 prompt"))
    })
    .await;
    assert!(progress.updates >= 1);
    assert_eq!(progress.blocks.as_array().unwrap().len(), 1);
    assert!(
        h.slack
            .reactions()
            .contains(&("C1".into(), ts.clone(), "eyes".into()))
    );
    // Named: the classifier model was not asked.
    assert!(h.model.requests().is_empty());
    // The prompt is the request without the mention, attributed to the linked user.
    let events = h.events(&id).await;
    let queued = events
        .iter()
        .find(|e| e["type"] == "prompt.queued")
        .unwrap();
    assert_eq!(
        queued["data"]["prompt"]["text"],
        "fix the footer in acme/app deltas=4"
    );
    assert_eq!(queued["data"]["prompt"]["author"]["login"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_hint_picks_the_repository() {
    let h = Harness::start().await;
    h.classifier_says("acme/api", 0.9);
    let ts = h
        .person_says(
            "app_mention",
            "Ev1",
            "C2",
            "U1",
            "<@UBOT> the totals are rounded wrong",
            None,
        )
        .await;
    h.link("U1").await;
    let id = h.session_of_thread("C2", &ts).await;
    let session = h
        .sessions()
        .await
        .into_iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap();
    assert_eq!(session["repo"], "acme/api");
    let asked = h.model.requests();
    assert_eq!(asked.len(), 1);
    let question = asked[0].body["messages"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    for needle in [
        "Channel: #api-dev",
        "acme/api: The REST API and billing (keywords: billing) (channels: #api-dev)",
        "acme/infra: Terraform for every environment",
        "Request: the totals are rounded wrong",
    ] {
        assert!(question.contains(needle), "{needle:?} not in {question}");
    }
    assert_eq!(asked[0].body["model"], "fast");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_threads_earlier_messages_decide() {
    let h = Harness::start().await;
    h.classifier_says("acme/infra", 0.85);
    let root = h
        .slack
        .say("C1", "U2", "The terraform plan fails on staging", None);
    h.slack.say("C1", "U2", "since this morning", Some(&root));
    let ts = h
        .person_says(
            "app_mention",
            "Ev1",
            "C1",
            "U1",
            "<@UBOT> can you fix this?",
            Some(&root),
        )
        .await;
    h.link("U1").await;
    let id = h.session_of_thread("C1", &root).await;
    let session = h
        .sessions()
        .await
        .into_iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap();
    assert_eq!(session["repo"], "acme/infra");
    let question = h.model.requests()[0].body["messages"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        question.contains("> The terraform plan fails on staging\n> since this morning\n"),
        "{question}"
    );
    assert!(!question.contains("> can you fix this?"), "{question}");
    assert!(
        h.slack
            .reactions()
            .contains(&("C1".into(), ts, "eyes".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsure_classifier_asks_with_buttons_and_the_choice_starts_the_session() {
    let h = Harness::start().await;
    h.classifier_says("unknown", 0.3);
    let ts = h
        .person_says(
            "app_mention",
            "Ev1",
            "C1",
            "U1",
            "<@UBOT> the billing page is slow",
            None,
        )
        .await;
    h.link("U1").await;
    let question = eventually("the repository question", || {
        h.slack
            .bot_replies("C1", &ts)
            .into_iter()
            .find(|m| m.text == "Which repository is this about?")
    })
    .await;
    assert!(
        h.sessions().await.is_empty(),
        "nothing starts before the choice"
    );
    let buttons = question.blocks[1]["elements"].as_array().unwrap().clone();
    let labels: Vec<&str> = buttons
        .iter()
        .map(|b| b["text"]["text"].as_str().unwrap())
        .collect();
    // "billing" points to acme/api; then the rest in their order.
    assert_eq!(labels, ["acme/api", "acme/app", "acme/infra"]);
    // carol is not linked: her click changes nothing.
    let carol = interaction_body(
        "U2",
        "C1",
        &question.ts,
        &ts,
        buttons[0]["action_id"].as_str().unwrap(),
        buttons[0]["value"].as_str().unwrap(),
    );
    let resp = h
        .deliver_aged(
            "/slack/interactivity",
            &carol,
            "application/x-www-form-urlencoded",
            0,
            &[],
        )
        .await;
    assert_eq!(resp.status(), 200);
    eventually("carol's click ignored", || {
        h.server
            .stderr()
            .contains("repository choice from an unlinked Slack user ignored")
            .then_some(())
    })
    .await;
    let body = interaction_body(
        "U1",
        "C1",
        &question.ts,
        &ts,
        buttons[0]["action_id"].as_str().unwrap(),
        buttons[0]["value"].as_str().unwrap(),
    );
    let resp = h
        .deliver_aged(
            "/slack/interactivity",
            &body,
            "application/x-www-form-urlencoded",
            0,
            &[],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let id = h.session_of_thread("C1", &ts).await;
    let session = h
        .sessions()
        .await
        .into_iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap();
    assert_eq!(session["repo"], "acme/api");
    let chosen = eventually("the question replaced by the choice", || {
        h.slack
            .bot_replies("C1", &ts)
            .into_iter()
            .find(|m| m.ts == question.ts && m.text.starts_with("Repository: *acme/api*"))
    })
    .await;
    assert!(chosen.text.contains("chosen by <@U1>"));
    // A second click on the same question starts nothing more.
    let again = h
        .deliver_aged(
            "/slack/interactivity",
            &body,
            "application/x-www-form-urlencoded",
            0,
            &[],
        )
        .await;
    assert_eq!(again.status(), 200);
    h.results("C1", &ts, 1).await;
    assert_eq!(h.sessions().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_and_stale_timestamps_are_refused_and_start_nothing() {
    let h = Harness::start().await;
    let ts = h.slack.say("C1", "U1", "<@UBOT> fix acme/app", None);
    let body = event_body(
        "app_mention",
        "Ev1",
        TEAM,
        "C1",
        "U1",
        "<@UBOT> fix acme/app",
        &ts,
        None,
    )
    .to_string();
    let url = format!("{}/slack/events", h.server.url);
    let fresh = now().to_string();
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no headers", vec![]),
        (
            "wrong secret",
            vec![
                ("x-slack-request-timestamp", fresh.clone()),
                (
                    "x-slack-signature",
                    signature("another-secret", &fresh, &body),
                ),
            ],
        ),
        (
            "signature of another body",
            vec![
                ("x-slack-request-timestamp", fresh.clone()),
                ("x-slack-signature", signature(SECRET, &fresh, "{}")),
            ],
        ),
        (
            "garbage signature",
            vec![
                ("x-slack-request-timestamp", fresh.clone()),
                ("x-slack-signature", "v0=zz".into()),
            ],
        ),
    ];
    for (what, headers) in cases {
        let mut req = h
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{what}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], "unauthorized", "{what}");
    }
    // Correctly signed, but six minutes old: a replay.
    let stale = h
        .deliver_aged("/slack/events", &body, "application/json", 360, &[])
        .await;
    assert_eq!(stale.status(), 401);
    assert!(stale.text().await.unwrap().contains("5 minutes"));
    for path in ["/slack/commands", "/slack/interactivity"] {
        let resp = h
            .deliver_aged(
                path,
                "payload=x",
                "application/x-www-form-urlencoded",
                400,
                &[],
            )
            .await;
        assert_eq!(resp.status(), 401, "{path}");
    }
    // Signed but undecodable: 400.
    for (path, body) in [
        ("/slack/events", "not json"),
        ("/slack/commands", "text=no+team"),
        ("/slack/interactivity", "payload=%7Bnope"),
    ] {
        let resp = h
            .deliver_aged(path, body, "application/x-www-form-urlencoded", 0, &[])
            .await;
        assert_eq!(resp.status(), 400, "{path}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], "bad_request");
    }
    // A bad link code is refused clearly.
    let (status, err) = h
        .api(
            reqwest::Method::POST,
            "/api/slack/link",
            Some(json!({"code": "0123"})),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "link_code_not_found");
    let (status, _) = h
        .api(
            reqwest::Method::POST,
            "/api/slack/link",
            Some(json!({"cod": 1})),
        )
        .await;
    assert_eq!(status, 400);
    let out = hangar(&h.server.data_dir)
        .args([
            "slack",
            "link",
            "0123",
            "--server",
            &h.server.url,
            "--token",
            h.server.admin_token.as_deref().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("hangar: ") && err.contains("no such link code"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.sessions().await.is_empty());
    assert!(h.slack.calls().is_empty(), "{:?}", h.slack.calls());
    assert!(h.server.stderr().contains("Slack request refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_verification_is_answered_with_the_challenge() {
    let h = Harness::start().await;
    let body = json!({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"});
    let resp = h.event(&body, &[]).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(
        answer["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_delivery_and_the_mentions_second_event_start_one_session() {
    let h = Harness::start().await;
    let ts = h
        .person_says(
            "app_mention",
            "Ev1",
            "C1",
            "U1",
            "<@UBOT> tidy acme/app",
            None,
        )
        .await;
    h.link("U1").await;
    let id = h.session_of_thread("C1", &ts).await;
    // Slack retries the same delivery, and also sends the channel `message` event of the
    // same mention under another event id.
    let body = event_body(
        "app_mention",
        "Ev1",
        TEAM,
        "C1",
        "U1",
        "<@UBOT> tidy acme/app",
        &ts,
        None,
    );
    for n in ["1", "2"] {
        let resp = h
            .event(
                &body,
                &[
                    ("x-slack-retry-num", n),
                    ("x-slack-retry-reason", "http_timeout"),
                ],
            )
            .await;
        assert_eq!(resp.status(), 200);
    }
    let message = event_body(
        "message",
        "Ev2",
        TEAM,
        "C1",
        "U1",
        "<@UBOT> tidy acme/app",
        &ts,
        None,
    );
    assert_eq!(h.event(&message, &[]).await.status(), 200);
    h.results("C1", &ts, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sessions = h.sessions().await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["id"], id.as_str());
    let prompts = h
        .events(&id)
        .await
        .into_iter()
        .filter(|e| e["type"] == "prompt.queued")
        .count();
    assert_eq!(prompts, 1);
    assert!(h.server.stderr().contains("already handled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_workspace_is_ignored_with_a_log_line() {
    let h = Harness::start().await;
    let ts = h.slack.say("C1", "U1", "<@UBOT> fix acme/app", None);
    let body = event_body(
        "app_mention",
        "Ev1",
        "T999",
        "C1",
        "U1",
        "<@UBOT> fix acme/app",
        &ts,
        None,
    );
    assert_eq!(h.event(&body, &[]).await.status(), 200);
    let command = "team_id=T999&channel_id=C1&channel_name=general&user_id=U1&command=%2Fhangar&text=fix+acme%2Fapp";
    let resp = h
        .deliver_aged(
            "/slack/commands",
            command,
            "application/x-www-form-urlencoded",
            0,
            &[],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert!(answer["text"].as_str().unwrap().contains("not connected"));
    eventually("the log line", || {
        h.server
            .stderr()
            .contains("Slack event from an unknown workspace ignored")
            .then_some(())
    })
    .await;
    assert!(h.server.stderr().contains("T999"));
    assert!(h.sessions().await.is_empty());
    assert!(h.slack.calls().is_empty(), "{:?}", h.slack.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_errors_and_rate_limits_are_waited_out_or_logged_never_looped() {
    let h = Harness::start().await;
    let ts = h
        .person_says(
            "app_mention",
            "Ev1",
            "C1",
            "U1",
            "<@UBOT> fix acme/app",
            None,
        )
        .await;
    h.link("U1").await;
    // The first answer is rate limited once, then meets a 503: it goes out after the
    // Retry-After and a backoff.
    h.slack
        .fail_next("chat.postMessage", Failure::RateLimited(1));
    h.slack
        .fail_next("chat.postMessage", Failure::Unavailable(503));
    let id = h.session_of_thread("C1", &ts).await;
    h.results("C1", &ts, 1).await;
    let posts = h.slack.calls_of("chat.postMessage");
    assert_eq!(posts[0].answer, "ratelimited");
    assert_eq!(posts[1].answer, "503");
    assert_eq!(posts[2].answer, "ok");
    assert!(h.server.stderr().contains("Slack rate limit"));
    assert!(h.server.stderr().contains("Slack failed, retrying"));

    // Slack refuses every answer in a thread (the bot was removed from the channel): the
    // session still runs, the failure is logged once per message, nothing loops.
    h.slack.fail_next(
        "chat.postMessage",
        Failure::Error("channel_not_found".into()),
    );
    h.slack
        .fail_next("chat.update", Failure::Error("channel_not_found".into()));
    let reply = h
        .person_says("message", "Ev2", "C1", "U1", "and the header", Some(&ts))
        .await;
    eventually("the failed result post logged", || {
        h.server
            .stderr()
            .contains("cannot post a result in Slack")
            .then_some(())
    })
    .await;
    let finished = h
        .events(&id)
        .await
        .into_iter()
        .filter(|e| e["type"] == "prompt.finished")
        .count();
    assert_eq!(finished, 2);
    // Let the last throttled edit go out, then nothing more may come.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls_then = h.slack.calls().len();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(h.slack.calls().len(), calls_then, "no retry loop");
    assert!(h.server.stderr().contains("channel_not_found"));
    assert!(
        h.slack
            .reactions()
            .contains(&("C1".into(), reply, "eyes".into()))
    );

    // Rate limited on every attempt: given up after a bounded number, the server lives on.
    for _ in 0..4 {
        h.slack
            .fail_next("chat.postMessage", Failure::RateLimited(0));
    }
    let root = h
        .person_says(
            "app_mention",
            "Ev3",
            "C1",
            "U1",
            "<@UBOT> again in acme/app",
            None,
        )
        .await;
    eventually("giving up", || {
        h.server
            .stderr()
            .contains("gave up after 4 attempts")
            .then_some(())
    })
    .await;
    assert_eq!(h.sessions().await.len(), 2, "the session runs anyway");
    let resp = h
        .http
        .get(format!("{}/healthz", h.server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = root;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_replies_queue_follow_ups_and_prompts_from_the_web_show_in_the_thread() {
    let h = Harness::start().await;
    let ts = h
        .person_says(
            "app_mention",
            "Ev1",
            "C1",
            "U1",
            "<@UBOT> rework acme/app delay_ms=60 deltas=10",
            None,
        )
        .await;
    h.link("U1").await;
    let id = h.session_of_thread("C1", &ts).await;
    // While the agent works, a reply in the thread is queued behind the running prompt.
    h.person_says(
        "message",
        "Ev2",
        "C1",
        "U1",
        "also update the docs deltas=1",
        Some(&ts),
    )
    .await;
    let queued = eventually("the follow-up queued", || {
        let rt = tokio::runtime::Handle::current();
        let events = tokio::task::block_in_place(|| rt.block_on(h.events(&id)));
        events
            .into_iter()
            .find(|e| e["type"] == "prompt.queued" && e["data"]["prompt"]["id"] == 2)
    })
    .await;
    assert_eq!(
        queued["data"]["prompt"]["text"],
        "also update the docs deltas=1"
    );
    assert_eq!(queued["data"]["prompt"]["status"], "queued");
    // Another client (the web UI, the CLI) prompts the same session as another user.
    let out = hangar(&h.server.data_dir)
        .args(["user", "add", "bob", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let bob: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bob_token = bob["token"].as_str().unwrap();
    let resp = h
        .http
        .post(format!("{}/api/sessions/{id}/prompts", h.server.url))
        .bearer_auth(bob_token)
        .json(&json!({"text": "and the changelog delay_ms=60 deltas=6"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    eventually("bob's prompt in the thread's progress", || {
        h.slack
            .bot_replies("C1", &ts)
            .into_iter()
            .find(|m| m.text.contains("Working on a prompt by bob"))
    })
    .await;
    let results = h.results("C1", &ts, 3).await;
    assert!(results[0].contains("asked by admin"), "{results:?}");
    assert!(
        results[1].contains("asked by admin") && results[1].contains("answer to prompt 2"),
        "{results:?}"
    );
    assert!(
        results[2].contains("asked by bob") && results[2].contains("answer to prompt 3"),
        "{results:?}"
    );
    assert_eq!(h.sessions().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_button_stops_the_running_prompt() {
    let h = Harness::start().await;
    let ts = h
        .person_says(
            "app_mention",
            "Ev1",
            "C1",
            "U1",
            "<@UBOT> long job in acme/app delay_ms=100 deltas=500",
            None,
        )
        .await;
    h.link("U1").await;
    let id = h.session_of_thread("C1", &ts).await;
    let progress = eventually("the Stop button", || {
        h.slack
            .bot_replies("C1", &ts)
            .into_iter()
            .find(|m| m.blocks[1]["elements"][0]["action_id"] == "stop")
    })
    .await;
    // Someone not linked to Hangar cannot stop it.
    let body = interaction_body("U2", "C1", &progress.ts, &ts, "stop", &id);
    let resp = h
        .deliver_aged(
            "/slack/interactivity",
            &body,
            "application/x-www-form-urlencoded",
            0,
            &[],
        )
        .await;
    assert_eq!(resp.status(), 200);
    eventually("the refusal logged", || {
        h.server
            .stderr()
            .contains("Stop from an unlinked Slack user ignored")
            .then_some(())
    })
    .await;
    let body = interaction_body("U1", "C1", &progress.ts, &ts, "stop", &id);
    let resp = h
        .deliver_aged(
            "/slack/interactivity",
            &body,
            "application/x-www-form-urlencoded",
            0,
            &[],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let results = h.results("C1", &ts, 1).await;
    assert_eq!(results[0], ":octagonal_sign: Stopped (asked by admin).");
    let finished = h
        .events(&id)
        .await
        .into_iter()
        .find(|e| e["type"] == "prompt.finished")
        .unwrap();
    assert_eq!(finished["data"]["outcome"], "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slash_command_and_a_direct_message_start_sessions() {
    let h = Harness::start().await;
    let command = "token=x&team_id=T1&team_domain=acme&channel_id=C1&channel_name=general&user_id=U1&user_name=alice&command=%2Fhangar&text=fix+the+footer+in+acme%2Fapp&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2F1&trigger_id=1";
    let resp = h
        .deliver_aged(
            "/slack/commands",
            command,
            "application/x-www-form-urlencoded",
            0,
            &[],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["response_type"], "ephemeral");
    let root = eventually("the command's message in the channel", || {
        h.slack.messages().into_iter().find(|m| {
            m.user == "bot"
                && m.thread_ts.is_none()
                && m.text == "<@U1> asked: fix the footer in acme/app"
        })
    })
    .await;
    h.link("U1").await;
    let id = h.session_of_thread("C1", &root.ts).await;
    h.results("C1", &root.ts, 1).await;
    // Slack's certificate check of the command URL.
    let resp = h
        .deliver_aged(
            "/slack/commands",
            "ssl_check=1&token=x",
            "application/x-www-form-urlencoded",
            0,
            &[],
        )
        .await;
    assert_eq!(resp.status(), 200);
    // Help for an empty command.
    let resp = h
        .deliver_aged(
            "/slack/commands",
            "team_id=T1&channel_id=C1&user_id=U1&command=%2Fhangar&text=",
            "application/x-www-form-urlencoded",
            0,
            &[],
        )
        .await;
    let answer: Value = resp.json().await.unwrap();
    assert!(answer["text"].as_str().unwrap().contains("Mention me"));
    // A direct message, from the now linked user, in a DM channel.
    let dm = h
        .person_says(
            "message",
            "Ev9",
            "D1",
            "U1",
            "bump the deps in acme/app",
            None,
        )
        .await;
    let dm_session = h.session_of_thread("D1", &dm).await;
    assert_ne!(dm_session, id);
    h.results("D1", &dm, 1).await;
    assert_eq!(h.sessions().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_slack_configured_the_routes_say_so_and_the_document_lists_them() {
    let dir = hangar_testkit::scratch_dir();
    let server = Server::start_with_config(
        &dir.path().join("data"),
        "[sessions]\nexecutor = \"scripted\"\n",
    );
    let http = reqwest::Client::new();
    for path in ["/slack/events", "/slack/commands", "/slack/interactivity"] {
        let resp = http
            .post(format!("{}{path}", server.url))
            .header("x-slack-request-timestamp", now().to_string())
            .header("x-slack-signature", "v0=00")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], "slack_not_configured", "{path}");
    }
    let resp = http
        .post(format!("{}/api/slack/link", server.url))
        .json(&json!({"code": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "linking needs a Hangar token");
    let doc: Value = http
        .get(format!("{}/openapi.json", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/slack/events",
        "/slack/commands",
        "/slack/interactivity",
        "/api/slack/link",
    ] {
        assert!(
            doc["paths"][path]["post"].is_object(),
            "{path} missing from openapi.json"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_repositories_and_their_hints_are_offered_to_the_classifier() {
    let h = Harness::start().await;
    h.slack.add_channel("C3", "web-dev");
    let (status, _) = h
        .api(
            reqwest::Method::POST,
            "/api/repos",
            Some(json!({
                "name": "acme/web",
                "url": "https://git.example.com/acme/web.git",
                "description": "The marketing site",
                "hints": ["#web-dev", "landing page"],
            })),
        )
        .await;
    assert_eq!(status, 201);
    h.classifier_says("acme/web", 0.95);
    let ts = h
        .person_says(
            "app_mention",
            "Ev1",
            "C3",
            "U1",
            "<@UBOT> the hero image is blurry",
            None,
        )
        .await;
    h.link("U1").await;
    let id = h.session_of_thread("C3", &ts).await;
    let session = h
        .sessions()
        .await
        .into_iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap();
    assert_eq!(session["repo"], "acme/web");
    let question = h.model.requests()[0].body["messages"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        question
            .contains("acme/web: The marketing site (keywords: landing page) (channels: #web-dev)"),
        "{question}"
    );
    assert!(
        question.contains("acme/app: The customer web app"),
        "{question}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_thread_says_the_prompt_was_interrupted() {
    let mut h = Harness::start().await;
    let ts = h
        .person_says(
            "app_mention",
            "Ev1",
            "C1",
            "U1",
            "<@UBOT> long job in acme/app delay_ms=100 deltas=500",
            None,
        )
        .await;
    h.link("U1").await;
    let id = h.session_of_thread("C1", &ts).await;
    eventually("the agent at work", || {
        h.slack
            .bot_replies("C1", &ts)
            .into_iter()
            .find(|m| m.text.contains("Working on a prompt by admin"))
    })
    .await;
    h.restart();
    let note = eventually("the interruption in the thread", || {
        h.slack
            .bot_replies("C1", &ts)
            .into_iter()
            .find(|m| m.text.starts_with(":warning: Interrupted"))
    })
    .await;
    assert_eq!(
        note.text,
        ":warning: Interrupted (asked by admin): Hangar restarted while it ran."
    );
    eventually("the progress message showing it", || {
        h.slack.bot_replies("C1", &ts).into_iter().find(|m| {
            m.text.contains("Working on it in")
                && m.text.contains(":warning: Interrupted; reply to go on.")
        })
    })
    .await;
    // A reply in the thread goes on in the same session.
    h.person_says("message", "Ev2", "C1", "U1", "go on deltas=2", Some(&ts))
        .await;
    let results = h.results("C1", &ts, 1).await;
    assert!(results[0].contains("answer to prompt 2"), "{results:?}");
    assert_eq!(h.sessions().await.len(), 1);
    assert_eq!(h.sessions().await[0]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_compatible_classifier_works_too() {
    let h = Harness::start_with(|toml| {
        *toml = toml.replace("provider = \"anthropic\"", "provider = \"openai\"");
    })
    .await;
    let answer = json!({"repo": "acme/api", "confidence": 0.8}).to_string();
    h.model.push(Reply::sse(hangar_testkit::fake_model::openai(
        &[&answer],
        &[],
        "stop",
    )));
    let ts = h
        .person_says(
            "app_mention",
            "Ev1",
            "C2",
            "U1",
            "<@UBOT> invoices are late",
            None,
        )
        .await;
    h.link("U1").await;
    let id = h.session_of_thread("C2", &ts).await;
    let session = h
        .sessions()
        .await
        .into_iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap();
    assert_eq!(session["repo"], "acme/api");
    let asked = h.model.requests();
    assert!(
        asked[0].path.ends_with("/chat/completions"),
        "{}",
        asked[0].path
    );
    assert!(asked[0].body.to_string().contains("Channel: #api-dev"));
}
