//! The tool loop end to end: a fake model drives real tools in a real sandbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hangar_agent::{
    Agent, AgentEvent, Block, Decision, Outcome, Plugin, Provider, ProviderConfig, ProviderKind,
    Role, ToolCall, Tools,
};
use hangar_protocol::envd::ExecRequest;
use hangar_sandbox::{LocalRuntime, Network, Rootfs, Runtime, SandboxSpec};
use hangar_testkit::fake_model::{FakeModel, Reply, anthropic, openai};
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Sandbox {
    _dir: tempfile::TempDir,
    config: hangar_config::Config,
    envd: hangar_envd_client::EnvdClient,
}

impl Sandbox {
    async fn new() -> Sandbox {
        hangar_testkit::require_root();
        let dir = hangar_testkit::scratch_dir();
        let mut config = hangar_config::Config {
            data_dir: dir.path().join("data"),
            ..Default::default()
        };
        config.sandbox.tools_dir = Some(hangar_testkit::bin_dir());
        let rt = LocalRuntime::open(&config).unwrap();
        let limits = rt.default_limits();
        let sb = rt
            .create(SandboxSpec {
                rootfs: Rootfs::HostRoot,
                limits,
                network: Network::None,
            })
            .await
            .unwrap();
        let envd = rt.envd(&sb.id).await.unwrap();
        envd.output(
            ExecRequest {
                shell: Some("mkdir -p /tmp/repo && printf 'one\\ntwo\\n' > /tmp/repo/a.txt".into()),
                ..Default::default()
            },
            1024,
        )
        .await
        .unwrap();
        Sandbox {
            _dir: dir,
            config,
            envd,
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        hangar_testkit::remove_sandboxes(&self.config.data_dir);
    }
}

fn provider(kind: ProviderKind, url: String) -> Provider {
    Provider::new(ProviderConfig {
        kind,
        base_url: url,
        model: "test-model".into(),
        api_key: Some("k".into()),
        max_retries: 0,
        initial_backoff: Duration::from_millis(1),
    })
    .unwrap()
}

fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<AgentEvent>) -> Vec<AgentEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

#[tokio::test]
async fn the_model_edits_files_and_runs_commands_in_the_sandbox() {
    let sb = Sandbox::new().await;
    let fake = FakeModel::start(vec![
        // Turn 1: two calls in parallel.
        Reply::sse(anthropic(
            &["I will write and list."],
            &[
                (
                    "t1",
                    "write_file",
                    &[r#"{"path": "b.txt", "content": "hello\n"}"#],
                ),
                (
                    "t2",
                    "shell",
                    &[r#"{"command": "echo out; echo err >&2; ls"}"#],
                ),
            ],
            "tool_use",
        )),
        // Turn 2: an ambiguous edit is refused, a precise one works.
        Reply::sse(anthropic(
            &[],
            &[
                (
                    "t3",
                    "edit",
                    &[r#"{"path": "a.txt", "old_string": "o", "new_string": "0"}"#],
                ),
                (
                    "t4",
                    "edit",
                    &[r#"{"path": "a.txt", "old_string": "two", "new_string": "2"}"#],
                ),
                (
                    "t5",
                    "read_file",
                    &[r#"{"path": "a.txt", "start_line": 2}"#],
                ),
            ],
            "tool_use",
        )),
        Reply::sse(anthropic(&["Done."], &[], "end_turn")),
    ])
    .await;
    let agent = Agent::new(
        provider(ProviderKind::Anthropic, fake.url()),
        Tools::new(sb.envd.clone(), "/tmp/repo"),
        "sys".into(),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut conversation = Vec::new();
    let outcome = agent
        .run(&mut conversation, "please", &tx, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Finished);
    assert_eq!(
        sb.envd.read_to_end("/tmp/repo/b.txt").await.unwrap(),
        b"hello\n"
    );
    assert_eq!(
        sb.envd.read_to_end("/tmp/repo/a.txt").await.unwrap(),
        b"one\n2\n"
    );

    // What the model was told, turn by turn.
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3);
    let results = &reqs[1].body["messages"][2]["content"];
    assert_eq!(results[0]["tool_use_id"], "t1");
    assert_eq!(results[1]["tool_use_id"], "t2");
    let shell_out = results[1]["content"].as_str().unwrap();
    assert!(
        shell_out.contains("out") && shell_out.contains("err") && shell_out.contains("b.txt"),
        "{shell_out}"
    );
    let results = &reqs[2].body["messages"][4]["content"];
    assert_eq!(results[0]["is_error"], true, "ambiguous edit refused");
    assert!(
        results[0]["content"]
            .as_str()
            .unwrap()
            .contains("occurs 2 times")
    );
    assert_eq!(results[1]["is_error"], false);
    assert_eq!(results[2]["content"], "     2\t2\n");

    let events = drain(&mut rx);
    assert!(matches!(&events[0], AgentEvent::TextDelta(t) if t == "I will write and list."));
    assert!(events.iter().any(
        |e| matches!(e, AgentEvent::ToolOutput { id, data } if id == "t2" && data.contains("out"))
    ));
    let finished: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, AgentEvent::ToolFinished { .. }))
        .collect();
    assert_eq!(finished.len(), 5);
    let last_text = events.iter().rev().find_map(|e| match e {
        AgentEvent::TextDelta(t) => Some(t.as_str()),
        _ => None,
    });
    assert_eq!(last_text, Some("Done."));
    assert_eq!(
        conversation.len(),
        6,
        "user, assistant, results, assistant, results, assistant"
    );
}

#[derive(Default)]
struct NoShell {
    events: std::sync::Mutex<Vec<serde_json::Value>>,
}

#[async_trait]
impl Plugin for NoShell {
    fn name(&self) -> &str {
        "no-shell"
    }
    async fn before_tool(&self, call: &ToolCall) -> Decision {
        match call.name.as_str() {
            "shell" => Decision::Block("shell is disabled here".into()),
            "read_file" => Decision::Rewrite(json!({"path": "a.txt"})),
            _ => Decision::Allow,
        }
    }
    async fn context(&self) -> Option<String> {
        Some("Repository facts: a.txt holds two lines.".into())
    }
    async fn on_event(&self, event: &serde_json::Value) {
        self.events.lock().unwrap().push(event.clone());
    }
}

#[tokio::test]
async fn plugins_block_rewrite_and_add_context_over_openai() {
    let sb = Sandbox::new().await;
    let fake = FakeModel::start(vec![
        Reply::sse(openai(
            &[],
            &[
                ("c1", "shell", &[r#"{"command":"rm -rf /tmp/repo"}"#]),
                ("c2", "read_file", &[r#"{"path":"nope.txt"}"#]),
            ],
            "tool_calls",
        )),
        Reply::sse(openai(&["ok"], &[], "stop")),
    ])
    .await;
    let plugin = Arc::new(NoShell::default());
    let agent = Agent::new(
        provider(ProviderKind::OpenAi, fake.url()),
        Tools::new(sb.envd.clone(), "/tmp/repo"),
        "sys".into(),
    )
    .with_plugin(plugin.clone());
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut conversation = Vec::new();
    agent
        .run(&mut conversation, "go", &tx, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        *plugin.events.lock().unwrap(),
        vec![
            json!({"type": "prompt.started", "prompt": "go"}),
            json!({"type": "prompt.finished", "outcome": "done"})
        ],
        "plugins hear the prompt start and finish"
    );
    assert!(
        sb.envd.stat("/tmp/repo/a.txt").await.is_ok(),
        "the blocked command did not run"
    );
    let reqs = fake.requests();
    assert!(
        reqs[0].body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("Repository facts")
    );
    let msgs = reqs[1].body["messages"].as_array().unwrap();
    let tool_msgs: Vec<_> = msgs.iter().filter(|m| m["role"] == "tool").collect();
    assert!(
        tool_msgs[0]["content"]
            .as_str()
            .unwrap()
            .contains("blocked by plugin no-shell: shell is disabled here")
    );
    assert!(
        tool_msgs[1]["content"].as_str().unwrap().contains("one"),
        "the rewritten read ran"
    );
}

#[tokio::test]
async fn stop_kills_the_running_command_and_leaves_the_conversation_consistent() {
    let sb = Sandbox::new().await;
    let fake = FakeModel::start(vec![Reply::sse(anthropic(
        &[],
        &[("t1", "shell", &[r#"{"command": "echo started; sleep 30"}"#])],
        "tool_use",
    ))])
    .await;
    let agent = Agent::new(
        provider(ProviderKind::Anthropic, fake.url()),
        Tools::new(sb.envd.clone(), "/tmp/repo"),
        "sys".into(),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let stopper = cancel.clone();
    tokio::spawn(async move {
        // Stop once the command has printed.
        while let Some(e) = rx.recv().await {
            if matches!(e, AgentEvent::ToolOutput { .. }) {
                stopper.cancel();
            }
        }
    });
    let mut conversation = Vec::new();
    let started = std::time::Instant::now();
    let outcome = agent
        .run(&mut conversation, "go", &tx, &cancel)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Stopped);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped at once"
    );
    // Every tool call has its result, so the next prompt can continue the conversation.
    let last = conversation.last().unwrap();
    assert_eq!(last.role, Role::User);
    assert!(
        matches!(&last.content[0], Block::ToolResult { tool_use_id, is_error: true, .. } if tool_use_id == "t1")
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ps = sb
        .envd
        .output(
            ExecRequest {
                shell: Some("ps -eo args | grep -c '^sleep 30' || true".into()),
                ..Default::default()
            },
            1024,
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ps.stdout).trim(),
        "0",
        "the command was killed"
    );
}

#[tokio::test]
async fn a_long_conversation_is_compacted_by_summarising() {
    let sb = Sandbox::new().await;
    // Turn 1 reports a huge prompt; the agent then asks for a summary before turn 2.
    let mut turn1 = anthropic(
        &[],
        &[("t1", "read_file", &[r#"{"path": "a.txt"}"#])],
        "tool_use",
    );
    for (_, data) in turn1.iter_mut() {
        *data = data.replace("\"input_tokens\":25", "\"input_tokens\":190000");
    }
    let fake = FakeModel::start(vec![
        Reply::sse(turn1),
        Reply::sse(anthropic(
            &["Task: read a.txt. It holds one and two."],
            &[],
            "end_turn",
        )),
        Reply::sse(anthropic(&["All done."], &[], "end_turn")),
    ])
    .await;
    let mut agent = Agent::new(
        provider(ProviderKind::Anthropic, fake.url()),
        Tools::new(sb.envd.clone(), "/tmp/repo"),
        "sys".into(),
    );
    agent.context_limit = 200_000;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut conversation = vec![
        hangar_agent::Message::text(Role::User, "earlier prompt"),
        hangar_agent::Message::text(Role::Assistant, "earlier answer"),
    ];
    let outcome = agent
        .run(&mut conversation, "read it", &tx, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Finished);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3);
    // The summary request: no tools, ends by asking for a summary.
    assert!(reqs[1].body.get("tools").is_none());
    let last = reqs[1].body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(
        last.to_string().contains("Summarise it for yourself"),
        "{last}"
    );
    // The next turn starts from the summary and keeps the pending call with its result.
    let msgs = reqs[2].body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert!(
        msgs[0]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Summary of the work so far:")
    );
    assert_eq!(msgs[1]["content"][0]["type"], "tool_use");
    assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
    assert!(!reqs[2].body.to_string().contains("earlier prompt"));
}

#[tokio::test]
async fn agents_md_and_repo_facts_reach_the_system_prompt() {
    let sb = Sandbox::new().await;
    sb.envd
        .output(
            ExecRequest {
                shell: Some("cd /tmp/repo && git init -q -b main && echo 'Use tabs.' > AGENTS.md && echo 'Be kind.' > CLAUDE.md && git add -A && git -c user.name=t -c user.email=t@e commit -qm 'first commit'".into()),
                ..Default::default()
            },
            4096,
        )
        .await
        .unwrap();
    let fake = FakeModel::start(vec![Reply::sse(anthropic(&["ok"], &[], "end_turn"))]).await;
    let agent = Agent::new(
        provider(ProviderKind::Anthropic, fake.url()),
        Tools::new(sb.envd.clone(), "/tmp/repo"),
        "base".into(),
    )
    .with_plugin(Arc::new(hangar_agent::RepoContext::new(
        sb.envd.clone(),
        "/tmp/repo",
    )));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    agent
        .run(&mut Vec::new(), "hi", &tx, &CancellationToken::new())
        .await
        .unwrap();
    let system = fake.requests()[0].body["system"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(system.starts_with("base"), "{system}");
    let head = sb
        .envd
        .output(
            ExecRequest {
                shell: Some("git -C /tmp/repo rev-parse --short=12 HEAD".into()),
                ..Default::default()
            },
            1024,
        )
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert!(
        system.contains(&format!("Branch main, at commit {head}.")),
        "{system}"
    );
    assert!(
        system.contains("Top-level entries: .git AGENTS.md CLAUDE.md a.txt."),
        "{system}"
    );
    assert!(system.contains("AGENTS.md:\nUse tabs."), "{system}");
    assert!(system.contains("CLAUDE.md:\nBe kind."), "{system}");
}

#[tokio::test]
async fn reads_run_before_the_sync_and_a_write_waits_for_it() {
    use hangar_agent::{SyncGate, SyncState};
    let sb = Sandbox::new().await;
    // One response: a read, a write, then another read, in that order.
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(
            &[],
            &[
                ("r1", "read_file", &[r#"{"path": "a.txt"}"#]),
                (
                    "w1",
                    "write_file",
                    &[r#"{"path": "a.txt", "content": "new\n"}"#],
                ),
            ],
            "tool_use",
        )),
        Reply::sse(anthropic(&["ok"], &[], "end_turn")),
    ])
    .await;
    let (sync_tx, sync_rx) = tokio::sync::watch::channel(SyncState::Syncing);
    let agent = Agent::new(
        provider(ProviderKind::Anthropic, fake.url()),
        Tools::new(sb.envd.clone(), "/tmp/repo"),
        "sys".into(),
    )
    .with_plugin(Arc::new(SyncGate::new(sync_rx)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let run = tokio::spawn(async move {
        let mut conversation = Vec::new();
        agent
            .run(&mut conversation, "go", &tx, &CancellationToken::new())
            .await
    });
    // The read finishes while the (slow) sync is still running; the write does not start.
    let mut seen = Vec::new();
    let read_done = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = rx.recv().await {
            seen.push(e.clone());
            if matches!(&e, AgentEvent::ToolFinished { id, .. } if id == "r1") {
                break;
            }
        }
    })
    .await;
    assert!(read_done.is_ok(), "the read ran before the sync finished");
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(e) = rx.try_recv() {
        seen.push(e);
    }
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, AgentEvent::ToolStarted { id, .. } if id == "w1")),
        "the write waits"
    );
    assert_eq!(
        sb.envd.read_to_end("/tmp/repo/a.txt").await.unwrap(),
        b"one\ntwo\n"
    );
    // The sync completes: the write proceeds.
    sync_tx.send(SyncState::Synced).unwrap();
    let outcome = run.await.unwrap().unwrap();
    assert_eq!(outcome, Outcome::Finished);
    assert_eq!(
        sb.envd.read_to_end("/tmp/repo/a.txt").await.unwrap(),
        b"new\n"
    );
}

#[tokio::test]
async fn a_failed_sync_refuses_writes_with_the_reason() {
    use hangar_agent::{SyncGate, SyncState};
    let sb = Sandbox::new().await;
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic(
            &[],
            &[(
                "w1",
                "edit",
                &[r#"{"path": "a.txt", "old_string": "one", "new_string": "1"}"#],
            )],
            "tool_use",
        )),
        Reply::sse(anthropic(&["I cannot edit."], &[], "end_turn")),
    ])
    .await;
    let (_sync_tx, sync_rx) = tokio::sync::watch::channel(SyncState::Failed(
        "git fetch: could not resolve host".into(),
    ));
    let agent = Agent::new(
        provider(ProviderKind::Anthropic, fake.url()),
        Tools::new(sb.envd.clone(), "/tmp/repo"),
        "sys".into(),
    )
    .with_plugin(Arc::new(SyncGate::new(sync_rx)));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    agent
        .run(&mut Vec::new(), "go", &tx, &CancellationToken::new())
        .await
        .unwrap();
    let result = &fake.requests()[1].body["messages"][2]["content"][0];
    assert_eq!(result["is_error"], true);
    assert!(
        result["content"]
            .as_str()
            .unwrap()
            .contains("could not be synced"),
        "{result}"
    );
    assert!(
        result["content"]
            .as_str()
            .unwrap()
            .contains("could not resolve host")
    );
    assert_eq!(
        sb.envd.read_to_end("/tmp/repo/a.txt").await.unwrap(),
        b"one\ntwo\n"
    );
}

#[tokio::test]
async fn a_plugin_runs_inside_the_sandbox_and_one_that_cannot_start_says_why() {
    use hangar_agent::external::{PluginError, ProcessPlugin};
    use hangar_agent::{Decision, Plugin, ToolCall};
    let sb = Sandbox::new().await;
    // The example plugin, put into the sandbox (the checkout may sit where the sandbox
    // cannot see, e.g. under the host's /tmp).
    let example = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/guard.py"),
    )
    .unwrap();
    sb.envd
        .write_file("/tmp/repo/guard.py", &example, Default::default())
        .await
        .unwrap();
    let argv = vec!["python3".to_string(), "guard.py".to_string()];
    let guard =
        ProcessPlugin::start_in_sandbox(&sb.envd, &argv, "/tmp/repo", Duration::from_secs(5))
            .await
            .unwrap();
    assert_eq!(guard.name(), "guard");
    let call = ToolCall {
        id: "c1".into(),
        name: "shell".into(),
        input: json!({"command": "rm -rf /"}),
    };
    assert!(matches!(guard.before_tool(&call).await, Decision::Block(_)));
    // It runs in the sandbox: envd sees it; dropping the plugin ends it there.
    let running = |envd: hangar_envd_client::EnvdClient| async move {
        let out = envd
            .output(
                ExecRequest {
                    shell: Some(
                        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null \\
                         | grep -q '[g]uard.py' && echo $p; done | wc -l"
                            .into(),
                    ),
                    ..Default::default()
                },
                1024,
            )
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(running(sb.envd.clone()).await, "1");
    drop(guard);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while running(sb.envd.clone()).await != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "the plugin outlived its handle"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let missing = vec!["/no/such/plugin".to_string()];
    let err = ProcessPlugin::start_in_sandbox(&sb.envd, &missing, "/", Duration::from_millis(500))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            PluginError::SandboxSpawn { .. } | PluginError::Handshake { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("/no/such/plugin"), "{err}");
}
