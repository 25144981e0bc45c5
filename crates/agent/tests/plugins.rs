//! External plugins over stdio, with the example plugin in `examples/plugins/guard.py`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hangar_agent::external::{PluginError, ProcessPlugin};
use hangar_agent::{Decision, Plugin, ToolCall, ToolOutcome};
use serde_json::json;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/guard.py")
}

fn call(name: &str, input: serde_json::Value) -> ToolCall {
    ToolCall {
        id: "c1".into(),
        name: name.into(),
        input,
    }
}

async fn script_plugin(dir: &tempfile::TempDir, body: &str) -> Result<ProcessPlugin, PluginError> {
    let path = dir.path().join("plugin.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    ProcessPlugin::start(path, &[], Duration::from_millis(300)).await
}

#[tokio::test]
async fn the_example_plugin_blocks_rewrites_amends_and_adds_context() {
    let plugin = ProcessPlugin::start(example(), &[], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(plugin.name(), "guard");
    assert_eq!(
        plugin
            .before_tool(&call(
                "shell",
                json!({"command": "rm -rf / --no-preserve-root"})
            ))
            .await,
        Decision::Block("recursive deletes from / are not allowed".into())
    );
    assert_eq!(
        plugin
            .before_tool(&call("shell", json!({"command": "cargo test"})))
            .await,
        Decision::Rewrite(json!({"command": "cargo test", "timeout_secs": 300}))
    );
    assert_eq!(
        plugin
            .before_tool(&call("read_file", json!({"path": "a"})))
            .await,
        Decision::Allow
    );
    let mut leaked = ToolOutcome {
        output: "key AKIAABCDEFGHIJKLMNOP here".into(),
        is_error: false,
    };
    plugin
        .after_tool(&call("shell", json!({})), &mut leaked)
        .await;
    assert_eq!(
        leaked,
        ToolOutcome {
            output: "key [REDACTED] here".into(),
            is_error: true
        }
    );
    let mut clean = ToolOutcome {
        output: "fine".into(),
        is_error: false,
    };
    plugin
        .after_tool(&call("shell", json!({})), &mut clean)
        .await;
    assert_eq!(clean.output, "fine");
    assert_eq!(
        plugin.context().await.as_deref(),
        Some("House rule: run the tests before you say you are done.")
    );
}

#[tokio::test]
async fn a_plugin_that_stops_answering_blocks_calls() {
    let dir = tempfile::tempdir().unwrap();
    // Answers hello, then reads and ignores everything.
    let plugin = script_plugin(
        &dir,
        r#"read line; echo '{"id":1,"name":"mute","hooks":["tool.execute.before"]}'; while read line; do :; done"#,
    )
    .await
    .unwrap();
    let started = Instant::now();
    let d = plugin
        .before_tool(&call("shell", json!({"command": "ls"})))
        .await;
    assert_eq!(
        d,
        Decision::Block("the plugin did not answer in time".into())
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_plugin_that_died_blocks_calls() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = script_plugin(
        &dir,
        r#"read line; echo '{"id":1,"name":"brief","hooks":["tool.execute.before"]}'; exit 0"#,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(
        plugin.before_tool(&call("shell", json!({}))).await,
        Decision::Block(_)
    ));
}

#[tokio::test]
async fn bad_plugins_fail_to_start_with_a_clear_error() {
    let err = ProcessPlugin::start("/no/such/plugin".into(), &[], Duration::from_millis(200))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("cannot start plugin /no/such/plugin"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let err = script_plugin(&dir, "read line; echo 'not json'; sleep 5")
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("did not answer hello"), "{err}");
    let plugin = script_plugin(&dir, r#"read line; echo '{"id":1,"name":"odd","hooks":["tool.execute.before"]}'; read line; echo '{"id":2,"decision":"explode"}'; sleep 5"#)
        .await
        .unwrap();
    assert!(
        matches!(plugin.before_tool(&call("shell", json!({}))).await, Decision::Block(r) if r.contains("unknown decision"))
    );
}

#[tokio::test]
async fn plugins_that_ask_for_events_receive_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.log");
    let plugin = script_plugin(
        &dir,
        &format!(
            r#"read line; echo '{{"id":1,"name":"ears","hooks":["event"]}}'; while read line; do echo "$line" >> {}; done"#,
            log.display()
        ),
    )
    .await
    .unwrap();
    plugin
        .on_event(&json!({"type": "prompt.started", "prompt": "hi"}))
        .await;
    plugin
        .on_event(&json!({"type": "prompt.finished", "outcome": "done"}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(2);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 2 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let events: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        events[0],
        json!({"hook": "event", "event": {"type": "prompt.started", "prompt": "hi"}})
    );
    assert_eq!(events[1]["event"]["outcome"], "done");
    // A plugin that did not ask for events gets none (the example answers every request).
    let guard = ProcessPlugin::start(example(), &[], Duration::from_secs(5))
        .await
        .unwrap();
    guard
        .on_event(&json!({"type": "prompt.started", "prompt": "x"}))
        .await;
    assert_eq!(
        guard.before_tool(&call("read_file", json!({}))).await,
        Decision::Allow
    );
}
