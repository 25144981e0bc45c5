//! External plugins: a process per plugin speaking newline-delimited JSON over its stdin
//! and stdout (documented in `docs/plugins.md`). Requests carry an `id` the answer echoes;
//! event notifications carry none and get no answer. A deployment's plugins run on the
//! host; a repository's run inside the session's sandbox, through envd, so code from a
//! repository never runs outside a sandbox.
//!
//! A `tool.execute.before` hook that does not answer in time, or a plugin that died,
//! blocks the call (fail closed): a policy plugin that is down must not let everything
//! through.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hangar_envd_client::{EnvdClient, ExecControl, ExecEvent, ExecRequest};
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Mutex, oneshot};

use crate::plugin::{Decision, Plugin, ToolCall};
use crate::tools::ToolOutcome;

/// Version of the plugin protocol, sent in `hello`.
pub const PLUGIN_PROTOCOL: u32 = 1;

/// Longest line a plugin may send.
const MAX_LINE: usize = 4 << 20;

type Pending = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A running external plugin.
pub struct ProcessPlugin {
    name: String,
    hooks: Vec<String>,
    stdin: Mutex<Input>,
    pending: Pending,
    next_id: AtomicU64,
    timeout: Duration,
    process: Process,
}

/// Where requests are written.
enum Input {
    Host(ChildStdin),
    Sandbox(ExecControl),
}

impl Input {
    async fn write(&mut self, line: &[u8]) -> Result<(), String> {
        match self {
            Input::Host(stdin) => {
                stdin.write_all(line).await.map_err(|e| e.to_string())?;
                stdin.flush().await.map_err(|e| e.to_string())
            }
            Input::Sandbox(control) => control.send_stdin(line).await.map_err(|e| e.to_string()),
        }
    }
}

/// What keeps the plugin's process alive; dropping the plugin ends it.
enum Process {
    Host(Child),
    /// The task holding the envd exec: aborting it closes the exec, and envd kills the
    /// process group.
    Sandbox(tokio::task::AbortHandle),
}

/// Why a plugin could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The program could not be run.
    #[error("cannot start plugin {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The program could not be run in the sandbox.
    #[error("cannot start plugin {program} in the sandbox: {message}")]
    SandboxSpawn {
        /// The program.
        program: PathBuf,
        /// Why.
        message: String,
    },
    /// It did not answer `hello` properly.
    #[error("plugin {program} did not answer hello: {message}")]
    Handshake {
        /// The program.
        program: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl ProcessPlugin {
    /// Starts `program` with `args` and exchanges `hello`.
    pub async fn start(
        program: PathBuf,
        args: &[String],
        timeout: Duration,
    ) -> Result<ProcessPlugin, PluginError> {
        let mut child = Command::new(&program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group, so whatever it starts goes when it goes.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| PluginError::Spawn {
                program: program.clone(),
                source,
            })?;
        let handshake = |message: &str| PluginError::Handshake {
            program: program.clone(),
            message: message.into(),
        };
        let stdin = child.stdin.take().ok_or_else(|| handshake("no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| handshake("no stdout"))?;
        let pending: Pending = Arc::default();
        tokio::spawn(dispatch_answers(BufReader::new(stdout), pending.clone()));
        Self::hello(
            program,
            Input::Host(stdin),
            Process::Host(child),
            pending,
            timeout,
        )
        .await
    }

    /// Starts `argv` inside a sandbox through its envd, in `cwd`, and exchanges `hello`.
    /// The process lives until the plugin is dropped (or the sandbox goes).
    pub async fn start_in_sandbox(
        envd: &EnvdClient,
        argv: &[String],
        cwd: &str,
        timeout: Duration,
    ) -> Result<ProcessPlugin, PluginError> {
        let program = PathBuf::from(argv.first().map(String::as_str).unwrap_or_default());
        let mut exec = envd
            .exec(ExecRequest {
                argv: argv.to_vec(),
                cwd: Some(cwd.to_string()),
                stdin: true,
                ..Default::default()
            })
            .await
            .map_err(|e| PluginError::SandboxSpawn {
                program: program.clone(),
                message: e.to_string(),
            })?;
        let control = exec.control();
        let (mut to_reader, from_exec) = tokio::io::duplex(64 << 10);
        let name = program.display().to_string();
        let pump = tokio::spawn(async move {
            loop {
                match exec.next_event().await {
                    Ok(Some(ExecEvent::Stdout(data))) => {
                        if to_reader.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    Ok(Some(ExecEvent::Stderr(data))) => {
                        tracing::debug!(plugin = %name, "{}", String::from_utf8_lossy(&data).trim_end());
                    }
                    Ok(Some(ExecEvent::Exit(status))) => {
                        tracing::warn!(plugin = %name, ?status, "a repository plugin exited");
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        });
        let pending: Pending = Arc::default();
        tokio::spawn(dispatch_answers(BufReader::new(from_exec), pending.clone()));
        Self::hello(
            program,
            Input::Sandbox(control),
            Process::Sandbox(pump.abort_handle()),
            pending,
            timeout,
        )
        .await
    }

    async fn hello(
        program: PathBuf,
        input: Input,
        process: Process,
        pending: Pending,
        timeout: Duration,
    ) -> Result<ProcessPlugin, PluginError> {
        let mut plugin = ProcessPlugin {
            name: program.display().to_string(),
            hooks: Vec::new(),
            stdin: Mutex::new(input),
            pending,
            next_id: AtomicU64::new(1),
            timeout,
            process,
        };
        let hello = plugin
            .request(json!({"hook": "hello", "protocol": PLUGIN_PROTOCOL}))
            .await
            .ok_or_else(|| PluginError::Handshake {
                program: program.clone(),
                message: "no answer".into(),
            })?;
        if let Some(name) = hello.get("name").and_then(Value::as_str) {
            plugin.name = name.to_string();
        }
        plugin.hooks = hello
            .get("hooks")
            .and_then(Value::as_array)
            .map(|h| {
                h.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(plugin)
    }

    fn wants(&self, hook: &str) -> bool {
        self.hooks.iter().any(|h| h == hook)
    }

    /// Sends a request and waits for its answer; `None` when the plugin did not answer.
    async fn request(&self, mut msg: Value) -> Option<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        msg["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().ok()?.insert(id, tx);
        let mut line = msg.to_string();
        line.push('\n');
        if self
            .stdin
            .lock()
            .await
            .write(line.as_bytes())
            .await
            .is_err()
        {
            self.pending.lock().ok()?.remove(&id);
            return None;
        }
        let answer = tokio::time::timeout(self.timeout, rx).await.ok()?.ok();
        if answer.is_none()
            && let Ok(mut p) = self.pending.lock()
        {
            p.remove(&id);
        }
        answer
    }

    /// Sends an event notification (no answer expected).
    pub async fn notify(&self, event: Value) {
        if !self.wants("event") {
            return;
        }
        let line = format!("{}\n", json!({"hook": "event", "event": event}));
        let _ = self.stdin.lock().await.write(line.as_bytes()).await;
    }
}

/// Hands each answer line to the request waiting for its `id`; when the plugin's output
/// ends, every waiting request fails.
async fn dispatch_answers(mut lines: impl AsyncBufRead + Unpin, pending: Pending) {
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(n) if n > MAX_LINE => break,
            Ok(_) => {}
        }
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!("plugin sent a line that is not JSON; ignored");
            continue;
        };
        let id = msg.get("id").and_then(Value::as_u64);
        let waiter = id.and_then(|id| pending.lock().ok()?.remove(&id));
        if let Some(tx) = waiter {
            let _ = tx.send(msg);
        }
    }
    if let Ok(mut p) = pending.lock() {
        p.clear();
    }
}

impl Drop for ProcessPlugin {
    fn drop(&mut self) {
        match &self.process {
            Process::Host(child) => {
                if let Some(pid) = child.id() {
                    // SAFETY: kill has no memory effects; the group is the plugin's own.
                    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                }
            }
            Process::Sandbox(pump) => pump.abort(),
        }
    }
}

fn call_json(call: &ToolCall) -> Value {
    json!({"id": call.id, "name": call.name, "input": call.input})
}

#[async_trait]
impl Plugin for ProcessPlugin {
    fn name(&self) -> &str {
        &self.name
    }

    async fn before_tool(&self, call: &ToolCall) -> Decision {
        if !self.wants("tool.execute.before") {
            return Decision::Allow;
        }
        let Some(answer) = self
            .request(json!({"hook": "tool.execute.before", "call": call_json(call)}))
            .await
        else {
            return Decision::Block("the plugin did not answer in time".into());
        };
        match answer.get("decision").and_then(Value::as_str) {
            Some("allow") | None => Decision::Allow,
            Some("block") => Decision::Block(
                answer
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
                    .to_string(),
            ),
            Some("rewrite") => match answer.get("input") {
                Some(input) if input.is_object() => Decision::Rewrite(input.clone()),
                _ => Decision::Block("the plugin's rewrite had no object `input`".into()),
            },
            Some(other) => {
                Decision::Block(format!("the plugin answered an unknown decision {other:?}"))
            }
        }
    }

    async fn after_tool(&self, call: &ToolCall, outcome: &mut ToolOutcome) {
        if !self.wants("tool.execute.after") {
            return;
        }
        let msg = json!({
            "hook": "tool.execute.after",
            "call": call_json(call),
            "result": {"output": outcome.output, "is_error": outcome.is_error},
        });
        let Some(answer) = self.request(msg).await else {
            return;
        };
        if let Some(result) = answer.get("result") {
            if let Some(output) = result.get("output").and_then(Value::as_str) {
                outcome.output = output.to_string();
            }
            if let Some(is_error) = result.get("is_error").and_then(Value::as_bool) {
                outcome.is_error = is_error;
            }
        }
    }

    async fn on_event(&self, event: &Value) {
        self.notify(event.clone()).await;
    }

    async fn context(&self) -> Option<String> {
        if !self.wants("context") {
            return None;
        }
        let answer = self.request(json!({"hook": "context"})).await?;
        answer
            .get("context")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}
