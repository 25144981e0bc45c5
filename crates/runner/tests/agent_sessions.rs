//! Sessions driven by the agent end to end: a session's prompts run the agent (a fake
//! model) with tools in a real sandbox; the session log records the model's text and every
//! tool call with its output; a second prompt continues the same conversation in the same
//! sandbox; stop ends a running command and the next prompt still works.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_agent::{Provider, ProviderConfig, ProviderKind};
use hangar_protocol::session::Author;
use hangar_runner::AgentExecutor;
use hangar_sandbox::{LocalRuntime, Network, Rootfs, Runtime, SandboxSpec};
use hangar_session::{Sessions, SessionsConfig};
use hangar_store::{NewUser, Store};
use hangar_testkit::fake_model::{FakeModel, Reply, anthropic};
use serde_json::Value;

struct World {
    _dir: tempfile::TempDir,
    config: hangar_config::Config,
    sessions: Sessions,
    executor: AgentExecutor,
    alice: Author,
}

impl World {
    fn new(fake: &FakeModel) -> World {
        hangar_testkit::require_root();
        let dir = hangar_testkit::scratch_dir();
        let mut config = hangar_config::Config {
            data_dir: dir.path().join("data"),
            ..Default::default()
        };
        config.sandbox.tools_dir = Some(hangar_testkit::bin_dir());
        let runtime = LocalRuntime::open(&config).unwrap();
        let limits = runtime.default_limits();
        let spec = SandboxSpec {
            rootfs: Rootfs::HostRoot,
            limits,
            network: Network::None,
        };
        let provider = Provider::new(ProviderConfig {
            kind: ProviderKind::Anthropic,
            base_url: fake.url(),
            model: "test".into(),
            api_key: Some("k".into()),
            max_retries: 0,
            initial_backoff: Duration::from_millis(1),
        })
        .unwrap();
        let executor = AgentExecutor::new(Arc::new(runtime), provider, spec, "/workspace");
        executor.persist_conversations(dir.path().join("sessions"));
        let store = Arc::new(Store::open(&dir.path().join("index.db")).unwrap());
        let user = store
            .create_user(&NewUser {
                login: "alice".into(),
                name: "Alice".into(),
                ..NewUser::default()
            })
            .unwrap();
        let alice = Author {
            user_id: Some(user.id),
            login: "alice".into(),
            share_id: None,
        };
        let sessions = Sessions::new(
            SessionsConfig::new(dir.path().join("sessions")),
            store,
            Arc::new(executor.clone()),
        )
        .unwrap();
        World {
            _dir: dir,
            config,
            sessions,
            executor,
            alice,
        }
    }

    /// Waits until `n` prompts have finished and returns the session's events.
    async fn events_after_finished(&self, id: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let events: Vec<Value> = self
                .sessions
                .events(id, 0, 1000)
                .await
                .unwrap()
                .iter()
                .map(|e| serde_json::from_str(&e.json).unwrap())
                .collect();
            let finished = events
                .iter()
                .filter(|e| e["type"] == "prompt.finished")
                .count();
            if finished >= n || Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        hangar_testkit::remove_sandboxes(&self.config.data_dir);
    }
}

#[tokio::test]
async fn prompts_run_the_agent_in_the_sessions_sandbox_and_log_everything() {
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(
            &["Creating it."],
            &[(
                "t1",
                "write_file",
                &[r#"{"path": "notes.txt", "content": "alpha\n"}"#],
            )],
            "tool_use",
        )),
        Reply::sse(anthropic(&["Done."], &[], "end_turn")),
        // The second prompt, in the same conversation and sandbox.
        Reply::sse(anthropic(
            &[],
            &[("t2", "shell", &[r#"{"command": "cat notes.txt; pwd"}"#])],
            "tool_use",
        )),
        Reply::sse(anthropic(&["It says alpha."], &[], "end_turn")),
    ])
    .await;
    let w = World::new(&fake);
    let s = w
        .sessions
        .create(w.alice.user_id.unwrap(), "demo", "notes")
        .await
        .unwrap();
    w.sessions
        .prompt(&s.id, w.alice.clone(), "write notes".into())
        .await
        .unwrap();
    let events = w.events_after_finished(&s.id, 1).await;
    let sandbox = w
        .executor
        .sandbox_of(&s.id)
        .await
        .expect("the session got a sandbox");
    w.sessions
        .prompt(&s.id, w.alice.clone(), "what do they say?".into())
        .await
        .unwrap();
    let events2 = w.events_after_finished(&s.id, 2).await;
    assert_eq!(
        w.executor.sandbox_of(&s.id).await.as_deref(),
        Some(sandbox.as_str()),
        "same sandbox"
    );

    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let expected = [
        "prompt.queued",
        "prompt.started",
        "model.delta",
        "tool.started",
        "tool.output",
        "tool.finished",
        "model.delta",
        "prompt.finished",
    ];
    let filtered: Vec<&str> = types
        .iter()
        .copied()
        .filter(|t| expected.contains(t))
        .collect();
    assert_eq!(filtered, expected, "{types:?}");
    let finished = events
        .iter()
        .find(|e| e["type"] == "prompt.finished")
        .unwrap();
    assert_eq!(finished["data"]["outcome"], "done", "{finished}");

    let output: String = events2
        .iter()
        .filter(|e| {
            e["type"] == "tool.output" && e["data"]["call_id"].as_str().unwrap().ends_with("t2")
        })
        .map(|e| e["data"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(output, "alpha\n/workspace\n");
    // The model saw the whole conversation on the second prompt.
    let req = &fake.requests()[2].body;
    let msgs = req["messages"].as_array().unwrap();
    assert_eq!(
        msgs.len(),
        5,
        "user, assistant+call, result, assistant, new user: {msgs:?}"
    );
    assert_eq!(msgs[4]["content"][0]["text"], "what do they say?");
}

#[tokio::test]
async fn stop_ends_the_running_command_and_the_session_goes_on() {
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(
            &[],
            &[("t1", "shell", &[r#"{"command": "echo begun; sleep 60"}"#])],
            "tool_use",
        )),
        Reply::sse(anthropic(&["Back."], &[], "end_turn")),
    ])
    .await;
    let w = World::new(&fake);
    let s = w
        .sessions
        .create(w.alice.user_id.unwrap(), "demo", "stop")
        .await
        .unwrap();
    w.sessions
        .prompt(&s.id, w.alice.clone(), "long job".into())
        .await
        .unwrap();
    // Wait for the command to be running.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = w.sessions.events(&s.id, 0, 1000).await.unwrap();
        if events.iter().any(|e| e.json.contains("begun")) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped_at = Instant::now();
    w.sessions.stop(&s.id).await.unwrap();
    let events = w.events_after_finished(&s.id, 1).await;
    assert!(stopped_at.elapsed() < Duration::from_secs(5));
    let finished = events
        .iter()
        .find(|e| e["type"] == "prompt.finished")
        .unwrap();
    assert_eq!(finished["data"]["outcome"], "stopped", "{finished}");
    // The command is gone from the sandbox.
    let sandbox = w.executor.sandbox_of(&s.id).await.unwrap();
    let rt = LocalRuntime::open(&w.config).unwrap();
    let envd = rt.envd(&sandbox).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ps = envd
        .output(
            hangar_protocol::envd::ExecRequest {
                shell: Some("ps -eo args | grep -c '^sleep 60' || true".into()),
                ..Default::default()
            },
            1024,
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ps.stdout).trim(), "0");
    // The conversation is still valid: the next prompt gets an answer.
    w.sessions
        .prompt(&s.id, w.alice.clone(), "continue".into())
        .await
        .unwrap();
    let events = w.events_after_finished(&s.id, 2).await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "model.delta" && e["data"]["text"] == "Back.")
    );
    let req = &fake.requests()[1].body;
    let msgs = req["messages"].as_array().unwrap();
    let last_result = &msgs[2]["content"][0];
    assert_eq!(last_result["type"], "tool_result");
    assert_eq!(last_result["is_error"], true);
}

#[tokio::test]
async fn the_agent_spawns_a_sub_session_and_reads_its_result() {
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(
            &[],
            &[(
                "t1",
                "spawn_session",
                &[r#"{"repo": "docs", "prompt": "research the API"}"#],
            )],
            "tool_use",
        )),
        // The parent's next turn and the child's first turn, in either order.
        Reply::sse(anthropic(&["ok"], &[], "end_turn")),
        Reply::sse(anthropic(&["ok"], &[], "end_turn")),
    ])
    .await;
    let w = World::new(&fake);
    w.executor.enable_sub_sessions(w.sessions.clone());
    let parent = w
        .sessions
        .create(w.alice.user_id.unwrap(), "app", "parent")
        .await
        .unwrap();
    w.sessions
        .prompt(&parent.id, w.alice.clone(), "split the work".into())
        .await
        .unwrap();
    let events = w.events_after_finished(&parent.id, 1).await;
    let spawned = events
        .iter()
        .find(|e| e["type"] == "session.spawned")
        .expect("session.spawned in the parent's log");
    assert_eq!(spawned["data"]["repo"], "docs");
    let child = spawned["data"]["session_id"].as_str().unwrap().to_string();
    assert_eq!(
        w.executor.parent_of(&child).as_deref(),
        Some(parent.id.as_str()),
        "the child knows its parent"
    );
    let child_events = w.events_after_finished(&child, 1).await;
    let queued = child_events
        .iter()
        .find(|e| e["type"] == "prompt.queued")
        .unwrap();
    assert_eq!(queued["data"]["prompt"]["text"], "research the API");
    assert_eq!(
        queued["data"]["prompt"]["author"]["login"], "alice",
        "the child belongs to the prompt's author"
    );

    fake.push(Reply::sse(anthropic(
        &[],
        &[(
            "t2",
            "session_result",
            &[&format!(r#"{{"session_id": "{child}"}}"#)],
        )],
        "tool_use",
    )));
    fake.push(Reply::sse(anthropic(
        &["The child said ok."],
        &[],
        "end_turn",
    )));
    w.sessions
        .prompt(&parent.id, w.alice.clone(), "what did it find?".into())
        .await
        .unwrap();
    let events = w.events_after_finished(&parent.id, 2).await;
    let result: String = events
        .iter()
        .filter(|e| {
            e["type"] == "tool.output" && e["data"]["call_id"].as_str().unwrap().ends_with("t2")
        })
        .map(|e| e["data"]["text"].as_str().unwrap().to_string())
        .collect();
    let result: Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["answer"], "ok");
    assert_eq!(result["outcome"], "done");
}

#[tokio::test]
async fn a_session_takes_the_sandbox_reserved_while_its_author_typed() {
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(&["Warm."], &[], "end_turn")),
        Reply::sse(anthropic(&["Also warm."], &[], "end_turn")),
    ])
    .await;
    let w = World::new(&fake);
    w.executor.enable_sub_sessions(w.sessions.clone());
    let rt: Arc<dyn Runtime> = Arc::new(LocalRuntime::open(&w.config).unwrap());
    let pool = hangar_pool::Pool::new(
        rt.clone(),
        Arc::new(hangar_pool::AlreadySynced),
        hangar_pool::PoolConfig {
            min: 1,
            max: 2,
            ..Default::default()
        },
    );
    w.executor.use_pool(pool.clone());
    let spec = SandboxSpec {
        rootfs: Rootfs::HostRoot,
        limits: LocalRuntime::open(&w.config).unwrap().default_limits(),
        network: Network::None,
    };
    pool.set_image("acme/app", spec).await;
    // Alice starts typing: a sandbox is reserved for her draft.
    pool.typing("alice", "acme/app").await.unwrap();
    let reserved: Vec<String> = rt.list().await.unwrap().into_iter().map(|s| s.id).collect();
    let s = w
        .sessions
        .create(w.alice.user_id.unwrap(), "acme/app", "warm")
        .await
        .unwrap();
    w.sessions
        .prompt(&s.id, w.alice.clone(), "hello".into())
        .await
        .unwrap();
    let events = w.events_after_finished(&s.id, 1).await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "model.delta" && e["data"]["text"] == "Warm.")
    );
    let used = w.executor.sandbox_of(&s.id).await.unwrap();
    assert!(
        reserved.contains(&used),
        "the reserved sandbox {used} was used ({reserved:?})"
    );
    assert_eq!(pool.stats().await.reservations, 0);

    // Without a reservation, a session of a repository the pool has not seen gets one too.
    let other = w
        .sessions
        .create(w.alice.user_id.unwrap(), "acme/lib", "cold")
        .await
        .unwrap();
    w.sessions
        .prompt(&other.id, w.alice.clone(), "hi".into())
        .await
        .unwrap();
    w.events_after_finished(&other.id, 1).await;
    assert!(w.executor.sandbox_of(&other.id).await.is_some());
    assert!(
        pool.stats().await.idle.iter().any(|(r, _)| r == "acme/lib"),
        "acme/lib now has a pool"
    );
}

#[tokio::test]
async fn the_conversation_outlives_a_restart() {
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(&["First answer."], &[], "end_turn")),
        Reply::sse(anthropic(&["Second answer."], &[], "end_turn")),
    ])
    .await;
    let w = World::new(&fake);
    let s = w
        .sessions
        .create(w.alice.user_id.unwrap(), "demo", "memory")
        .await
        .unwrap();
    w.sessions
        .prompt(&s.id, w.alice.clone(), "remember 42".into())
        .await
        .unwrap();
    w.events_after_finished(&s.id, 1).await;

    // A new executor over the same directories, as after a server restart.
    let runtime = LocalRuntime::open(&w.config).unwrap();
    let limits = runtime.default_limits();
    let provider = Provider::new(ProviderConfig {
        kind: ProviderKind::Anthropic,
        base_url: fake.url(),
        model: "test".into(),
        api_key: None,
        max_retries: 0,
        initial_backoff: Duration::from_millis(1),
    })
    .unwrap();
    let spec = SandboxSpec {
        rootfs: Rootfs::HostRoot,
        limits,
        network: Network::None,
    };
    let restarted = AgentExecutor::new(Arc::new(runtime), provider, spec, "/workspace");
    restarted.persist_conversations(w._dir.path().join("sessions"));
    let store = w.sessions.store().clone();
    let sessions = Sessions::new(
        SessionsConfig::new(w._dir.path().join("sessions")),
        store,
        Arc::new(restarted),
    )
    .unwrap();
    sessions
        .prompt(&s.id, w.alice.clone(), "what number?".into())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.requests().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let msgs = fake.requests()[1].body["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert_eq!(msgs[0]["content"][0]["text"], "remember 42");
    assert_eq!(msgs[1]["content"][0]["text"], "First answer.");
}

#[tokio::test]
async fn the_agent_fixes_a_failing_test_and_the_log_holds_every_step() {
    // A small repository whose test fails: add() subtracts.
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(&["Let me run the tests."], &[("t1", "shell", &[r#"{"command": "sh test.sh", "read_only": true}"#])], "tool_use")),
        Reply::sse(anthropic(&[], &[("t2", "read_file", &[r#"{"path": "calc.sh"}"#])], "tool_use")),
        Reply::sse(anthropic(
            &["The operator is wrong."],
            &[("t3", "edit", &[r#"{"path": "calc.sh", "old_string": "$(($1 - $2))", "new_string": "$(($1 + $2))"}"#])],
            "tool_use",
        )),
        Reply::sse(anthropic(&[], &[("t4", "shell", &[r#"{"command": "sh test.sh"}"#])], "tool_use")),
        Reply::sse(anthropic(&["Fixed: add() now adds, and the test passes."], &[], "end_turn")),
    ])
    .await;
    let w = World::new(&fake);
    let s = w
        .sessions
        .create(w.alice.user_id.unwrap(), "calc", "fix add")
        .await
        .unwrap();
    // The session's sandbox, holding the repository.
    let rt = LocalRuntime::open(&w.config).unwrap();
    let sandbox = rt
        .create(SandboxSpec {
            rootfs: Rootfs::HostRoot,
            limits: rt.default_limits(),
            network: Network::None,
        })
        .await
        .unwrap();
    let envd = rt.envd(&sandbox.id).await.unwrap();
    envd.output(
        hangar_protocol::envd::ExecRequest {
            shell: Some(
                "mkdir -p /workspace && cd /workspace && \
                 printf 'add() { echo $(($1 - $2)); }\\n' > calc.sh && \
                 printf '. ./calc.sh\\nif [ \"$(add 2 3)\" = 5 ]; then echo PASS; else echo FAIL: add 2 3 = $(add 2 3); exit 1; fi\\n' > test.sh"
                    .into(),
            ),
            ..Default::default()
        },
        4096,
    )
    .await
    .unwrap();
    w.executor.adopt_sandbox(&s.id, &sandbox.id).await;
    w.sessions
        .prompt(&s.id, w.alice.clone(), "the add test fails; fix it".into())
        .await
        .unwrap();
    let events = w.events_after_finished(&s.id, 1).await;

    // The test passes in the sandbox now.
    let out = envd
        .output(
            hangar_protocol::envd::ExecRequest {
                shell: Some("cd /workspace && sh test.sh".into()),
                ..Default::default()
            },
            4096,
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PASS\n");
    // Every step is in the log, in order.
    let steps: Vec<String> = events
        .iter()
        .filter_map(|e| match e["type"].as_str() {
            Some("tool.started") => Some(format!(
                "{}:{}",
                e["data"]["tool"].as_str().unwrap(),
                e["data"]["call_id"]
                    .as_str()
                    .unwrap()
                    .rsplit('-')
                    .next()
                    .unwrap()
            )),
            Some("prompt.finished") => Some(format!(
                "finished:{}",
                e["data"]["outcome"].as_str().unwrap()
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        [
            "shell:t1",
            "read_file:t2",
            "edit:t3",
            "shell:t4",
            "finished:done"
        ]
    );
    let outputs: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "tool.output")
        .map(|e| e["data"]["text"].as_str().unwrap())
        .collect();
    assert!(
        outputs.iter().any(|o| o.contains("FAIL: add 2 3 = -1")),
        "{outputs:?}"
    );
    assert!(outputs.iter().any(|o| o.contains("PASS")), "{outputs:?}");
    let finished: Vec<bool> = events
        .iter()
        .filter(|e| e["type"] == "tool.finished")
        .map(|e| e["data"]["ok"].as_bool().unwrap())
        .collect();
    assert_eq!(
        finished,
        [false, true, true, true],
        "the first run failed, the last passed"
    );
}

#[tokio::test]
async fn a_runaway_agent_cannot_spawn_without_bound() {
    let calls: Vec<(String, String)> = (0..9)
        .map(|i| {
            (
                format!("s{i}"),
                format!(r#"{{"repo": "r", "prompt": "child {i}"}}"#),
            )
        })
        .collect();
    let call_refs: Vec<(&str, &str, Vec<&str>)> = calls
        .iter()
        .map(|(id, json)| (id.as_str(), "spawn_session", vec![json.as_str()]))
        .collect();
    let tool_calls: Vec<(&str, &str, &[&str])> = call_refs
        .iter()
        .map(|(a, b, c)| (*a, *b, c.as_slice()))
        .collect();
    let mut replies = vec![Reply::sse(anthropic(&[], &tool_calls, "tool_use"))];
    // The parent's next turn and the eight children's first turns, in any order.
    for _ in 0..9 {
        replies.push(Reply::sse(anthropic(&["ok"], &[], "end_turn")));
    }
    let fake = FakeModel::start(replies).await;
    let w = World::new(&fake);
    w.executor.enable_sub_sessions(w.sessions.clone());
    let parent = w
        .sessions
        .create(w.alice.user_id.unwrap(), "app", "fan out")
        .await
        .unwrap();
    w.sessions
        .prompt(&parent.id, w.alice.clone(), "split everything".into())
        .await
        .unwrap();
    let events = w.events_after_finished(&parent.id, 1).await;
    let spawned = events
        .iter()
        .filter(|e| e["type"] == "session.spawned")
        .count();
    assert_eq!(spawned, hangar_runner::MAX_CHILDREN);
    let refused: Vec<&str> = events
        .iter()
        .filter(|e| {
            e["type"] == "tool.output" && e["data"]["call_id"].as_str().unwrap().ends_with("s8")
        })
        .map(|e| e["data"]["text"].as_str().unwrap())
        .collect();
    assert!(
        refused.iter().any(|t| t.contains("at most 8 sub-sessions")),
        "{refused:?}"
    );
    // The children run on: each ends its prompt before the test ends, so none is still
    // starting a sandbox when the fixture removes them.
    for child in events.iter().filter(|e| e["type"] == "session.spawned") {
        w.events_after_finished(child["data"]["session_id"].as_str().unwrap(), 1)
            .await;
    }
}

#[tokio::test]
async fn after_a_restart_sessions_take_their_running_sandboxes_back_and_orphans_go() {
    let fake = FakeModel::start(vec![Reply::sse(anthropic(&["Here."], &[], "end_turn"))]).await;
    let w = World::new(&fake);
    w.executor.enable_sub_sessions(w.sessions.clone());
    let store = w.sessions.store().clone();
    let rt = LocalRuntime::open(&w.config).unwrap();
    let spec = SandboxSpec {
        rootfs: Rootfs::HostRoot,
        limits: rt.default_limits(),
        network: Network::None,
    };
    let s = w
        .sessions
        .create(w.alice.user_id.unwrap(), "acme/app", "t")
        .await
        .unwrap();
    // What an earlier process left: the session's sandbox (taken from its pool), another
    // that served a session that is gone, and an idle one of its pool.
    let mut left = Vec::new();
    for (purpose, session) in [
        ("pool", Some(s.id.as_str())),
        ("session", Some("ses-gone")),
        ("pool", None),
    ] {
        let sb = rt.create(spec.clone()).await.unwrap();
        store.record_sandbox(&sb.id, purpose, None, None).unwrap();
        if let Some(session) = session {
            store.sandbox_serves_session(&sb.id, session, None).unwrap();
        }
        left.push(sb.id);
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let started = hangar_store::now_ms();
    // This process's pool has started one too.
    let fresh = rt.create(spec).await.unwrap();
    store.record_sandbox(&fresh.id, "pool", None, None).unwrap();

    let adopted = w.executor.readopt_sandboxes(started).await.unwrap();
    assert_eq!(adopted, vec![(s.id.clone(), left[0].clone())]);
    assert_eq!(w.executor.sandbox_of(&s.id).await.as_ref(), Some(&left[0]));
    for gone in &left[1..] {
        assert!(
            !matches!(
                rt.get(gone).await.map(|sb| sb.status),
                Ok(hangar_sandbox::Status::Running)
            ),
            "{gone} was left running"
        );
    }
    assert_eq!(
        rt.get(&fresh.id).await.unwrap().status,
        hangar_sandbox::Status::Running,
        "this process's pool sandbox is left alone"
    );

    // The next prompt runs in the sandbox taken back.
    w.sessions
        .prompt(&s.id, w.alice.clone(), "hello again".into())
        .await
        .unwrap();
    let events = w.events_after_finished(&s.id, 1).await;
    assert!(
        events.iter().all(|e| e["type"] != "sandbox.restored"),
        "{events:#?}"
    );
    assert_eq!(w.executor.sandbox_of(&s.id).await.as_ref(), Some(&left[0]));
}
