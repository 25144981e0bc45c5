//! The agent's tools. Each runs inside the sandbox through envd; nothing here touches the
//! host. Outputs are kept whole for the session's event log and truncated (head and tail,
//! with a marker) for the model.

use std::time::Duration;

use hangar_envd_client::{EnvdClient, ExecEvent, WriteOptions};
use hangar_protocol::envd::ExecRequest;
use serde_json::{Value, json};

use crate::model::ToolSpec;

/// Most bytes of a tool's output the model sees.
pub const MODEL_OUTPUT_LIMIT: usize = 30_000;
/// Most bytes of a file `read_file` returns.
const READ_LIMIT: u64 = 4 * 1024 * 1024;
/// Default and longest time a shell command may run.
const SHELL_TIMEOUT: Duration = Duration::from_secs(600);
const SHELL_TIMEOUT_MAX: Duration = Duration::from_secs(3600);

/// What a tool produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolOutcome {
    /// The whole output (for the event log).
    pub output: String,
    /// True when the tool failed; the model is told so.
    pub is_error: bool,
}

impl ToolOutcome {
    fn ok(output: impl Into<String>) -> ToolOutcome {
        ToolOutcome {
            output: output.into(),
            is_error: false,
        }
    }

    fn error(output: impl Into<String>) -> ToolOutcome {
        ToolOutcome {
            output: output.into(),
            is_error: true,
        }
    }
}

/// Shortens `text` to at most about `limit` bytes, keeping its head and its tail, which is
/// where commands put what matters (what ran; how it ended).
pub fn truncate_for_model(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let head_len = floor_char_boundary(text, limit * 2 / 5);
    let tail_start = ceil_char_boundary(text, text.len() - limit * 3 / 5);
    let omitted = tail_start - head_len;
    format!(
        "{}\n\n[... {omitted} bytes omitted; the full output is in the session log ...]\n\n{}",
        &text[..head_len],
        &text[tail_start..]
    )
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// The tools, bound to one sandbox's envd and a working directory inside it (the
/// repository's checkout).
#[derive(Clone, Debug)]
pub struct Tools {
    envd: EnvdClient,
    workdir: String,
}

fn schema(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

/// Which tools only read (they may run before the checkout is synced) and which write.
pub fn is_read_only(name: &str, input: &Value) -> bool {
    match name {
        "read_file" | "list_files" | "search" | "git_status" | "git_diff" => true,
        "shell" => input
            .get("read_only")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        _ => false,
    }
}

impl Tools {
    /// Tools for the sandbox behind `envd`, working in `workdir`.
    pub fn new(envd: EnvdClient, workdir: impl Into<String>) -> Tools {
        Tools {
            envd,
            workdir: workdir.into(),
        }
    }

    /// The tools on offer, for the model.
    pub fn specs() -> Vec<ToolSpec> {
        let spec = |name: &str, description: &str, input_schema: Value| ToolSpec {
            name: name.into(),
            description: description.into(),
            input_schema,
        };
        vec![
            spec(
                "read_file",
                "Read a text file, optionally a range of lines (1-based, inclusive). Lines are numbered in the output.",
                schema(
                    json!({"path": {"type": "string"}, "start_line": {"type": "integer", "minimum": 1}, "end_line": {"type": "integer", "minimum": 1}}),
                    &["path"],
                ),
            ),
            spec(
                "write_file",
                "Create or replace a whole file.",
                schema(
                    json!({"path": {"type": "string"}, "content": {"type": "string"}}),
                    &["path", "content"],
                ),
            ),
            spec(
                "edit",
                "Replace an exact string in a file. The string must occur exactly once unless replace_all is true.",
                schema(
                    json!({"path": {"type": "string"}, "old_string": {"type": "string"}, "new_string": {"type": "string"}, "replace_all": {"type": "boolean"}}),
                    &["path", "old_string", "new_string"],
                ),
            ),
            spec(
                "list_files",
                "List files under a directory (recursively, skipping .git), optionally only those whose name matches a glob such as *.rs.",
                schema(
                    json!({"path": {"type": "string"}, "glob": {"type": "string"}}),
                    &[],
                ),
            ),
            spec(
                "search",
                "Search file contents for a regular expression; prints path:line:text.",
                schema(
                    json!({"pattern": {"type": "string"}, "path": {"type": "string"}}),
                    &["pattern"],
                ),
            ),
            spec(
                "shell",
                "Run a shell command in the repository. Set read_only when it changes nothing.",
                schema(
                    json!({"command": {"type": "string"}, "cwd": {"type": "string"}, "timeout_secs": {"type": "integer", "minimum": 1}, "read_only": {"type": "boolean"}}),
                    &["command"],
                ),
            ),
            spec(
                "git_status",
                "Show the repository's git status.",
                schema(json!({}), &[]),
            ),
            spec(
                "git_diff",
                "Show the repository's uncommitted changes.",
                schema(json!({}), &[]),
            ),
        ]
    }

    fn path(&self, p: &str) -> String {
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("{}/{p}", self.workdir.trim_end_matches('/'))
        }
    }

    /// Runs tool `name`; `on_output` receives a shell command's output as it comes.
    pub async fn run(
        &self,
        name: &str,
        input: &Value,
        on_output: &mut (dyn FnMut(&[u8]) + Send),
    ) -> ToolOutcome {
        let str_arg = |k: &str| input.get(k).and_then(Value::as_str);
        let need = |k: &str| {
            str_arg(k).ok_or_else(|| ToolOutcome::error(format!("missing string argument `{k}`")))
        };
        let result = async {
            match name {
                "read_file" => self.read_file(need("path")?, input).await,
                "write_file" => {
                    let path = self.path(need("path")?);
                    let content = need("content")?;
                    self.envd
                        .write_file(
                            &path,
                            content.as_bytes(),
                            WriteOptions {
                                mode: None,
                                create_parents: true,
                            },
                        )
                        .await
                        .map(|()| {
                            ToolOutcome::ok(format!("wrote {} bytes to {path}", content.len()))
                        })
                        .map_err(|e| ToolOutcome::error(e.to_string()))
                }
                "edit" => {
                    self.edit(
                        need("path")?,
                        need("old_string")?,
                        need("new_string")?,
                        input,
                    )
                    .await
                }
                "list_files" => {
                    let dir = self.path(str_arg("path").unwrap_or("."));
                    let glob = str_arg("glob").unwrap_or("*");
                    self.sh(
                        "find \"$1\" -path '*/.git' -prune -o -type f -name \"$2\" -print | sort | head -n 2000",
                        &[&dir, glob],
                    )
                    .await
                }
                "search" => {
                    let dir = self.path(str_arg("path").unwrap_or("."));
                    self.sh(
                        "if command -v rg >/dev/null 2>&1; then rg -n --no-heading --color never -e \"$1\" -- \"$2\"; \
                         else grep -rnIE --exclude-dir=.git -e \"$1\" -- \"$2\"; fi; test $? -le 1",
                        &[need("pattern")?, &dir],
                    )
                    .await
                }
                "shell" => self.shell(need("command")?, input, on_output).await,
                "git_status" => {
                    self.sh("git -C \"$1\" status --short --branch", &[&self.workdir])
                        .await
                }
                "git_diff" => self.sh("git -C \"$1\" diff", &[&self.workdir]).await,
                other => Err(ToolOutcome::error(format!(
                    "there is no tool named `{other}`"
                ))),
            }
        };
        result.await.unwrap_or_else(|e| e)
    }

    async fn read_file(&self, path: &str, input: &Value) -> Result<ToolOutcome, ToolOutcome> {
        let path = self.path(path);
        let data = self
            .envd
            .read_file(&path, 0, Some(READ_LIMIT))
            .await
            .map_err(|e| ToolOutcome::error(e.to_string()))?;
        let text = String::from_utf8_lossy(&data.data);
        let start = input
            .get("start_line")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1) as usize;
        let end = input
            .get("end_line")
            .and_then(Value::as_u64)
            .map(|e| e as usize);
        let mut out = String::new();
        for (i, line) in text.lines().enumerate().skip(start - 1) {
            if end.is_some_and(|e| i + 1 > e) {
                break;
            }
            out.push_str(&format!("{:>6}\t{line}\n", i + 1));
        }
        if !data.eof {
            out.push_str(&format!(
                "[the file is {} bytes; only the first {READ_LIMIT} were read]\n",
                data.size
            ));
        }
        Ok(ToolOutcome::ok(out))
    }

    async fn edit(
        &self,
        path: &str,
        old: &str,
        new: &str,
        input: &Value,
    ) -> Result<ToolOutcome, ToolOutcome> {
        let path = self.path(path);
        if old.is_empty() {
            return Err(ToolOutcome::error(
                "old_string is empty; use write_file to create a file",
            ));
        }
        let bytes = self
            .envd
            .read_to_end(&path)
            .await
            .map_err(|e| ToolOutcome::error(e.to_string()))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| ToolOutcome::error(format!("{path} is not UTF-8 text")))?;
        let count = text.matches(old).count();
        let replace_all = input
            .get("replace_all")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        match count {
            0 => {
                return Err(ToolOutcome::error(format!(
                    "old_string was not found in {path}; nothing changed"
                )));
            }
            n if n > 1 && !replace_all => {
                return Err(ToolOutcome::error(format!(
                    "old_string occurs {n} times in {path}; include more context to make it unique, or set replace_all"
                )));
            }
            _ => {}
        }
        let updated = if replace_all {
            text.replace(old, new)
        } else {
            text.replacen(old, new, 1)
        };
        self.envd
            .write_file(&path, updated.as_bytes(), WriteOptions::default())
            .await
            .map_err(|e| ToolOutcome::error(e.to_string()))?;
        Ok(ToolOutcome::ok(format!(
            "replaced {count} occurrence(s) in {path}"
        )))
    }

    /// Runs a fixed script with positional arguments (never interpolated into the script).
    async fn sh(&self, script: &str, args: &[&str]) -> Result<ToolOutcome, ToolOutcome> {
        let mut argv = vec![
            "/bin/sh".to_string(),
            "-c".into(),
            script.into(),
            "sh".into(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        let req = ExecRequest {
            argv,
            cwd: Some(self.workdir.clone()),
            timeout_ms: Some(120_000),
            ..Default::default()
        };
        let out = self
            .envd
            .output(req, 8 << 20)
            .await
            .map_err(|e| ToolOutcome::error(e.to_string()))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(ToolOutcome {
            output: text,
            is_error: out.status.code != Some(0),
        })
    }

    async fn shell(
        &self,
        command: &str,
        input: &Value,
        on_output: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<ToolOutcome, ToolOutcome> {
        let timeout = input
            .get("timeout_secs")
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .unwrap_or(SHELL_TIMEOUT)
            .min(SHELL_TIMEOUT_MAX);
        let cwd = input
            .get("cwd")
            .and_then(Value::as_str)
            .map(|c| self.path(c))
            .unwrap_or_else(|| self.workdir.clone());
        let req = ExecRequest {
            shell: Some(command.to_string()),
            cwd: Some(cwd),
            timeout_ms: Some(timeout.as_millis() as u64),
            ..Default::default()
        };
        let mut exec = self
            .envd
            .exec(req)
            .await
            .map_err(|e| ToolOutcome::error(e.to_string()))?;
        let mut all = Vec::new();
        loop {
            match exec.next_event().await {
                Ok(Some(ExecEvent::Stdout(b) | ExecEvent::Stderr(b))) => {
                    on_output(&b);
                    all.extend_from_slice(&b);
                }
                Ok(Some(ExecEvent::Exit(status))) => {
                    let mut text = String::from_utf8_lossy(&all).into_owned();
                    let failed = status.code != Some(0);
                    if status.timed_out {
                        text.push_str(&format!(
                            "\n[killed after {}s: timed out]",
                            timeout.as_secs()
                        ));
                    } else if let Some(sig) = status.signal {
                        text.push_str(&format!("\n[killed by signal {sig}]"));
                    } else if failed {
                        text.push_str(&format!("\n[exit code {}]", status.shell_code()));
                    }
                    return Ok(ToolOutcome {
                        output: text,
                        is_error: failed,
                    });
                }
                Ok(None) => {
                    return Err(ToolOutcome::error(
                        "the command's output ended without an exit status",
                    ));
                }
                Err(e) => return Err(ToolOutcome::error(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_head_and_tail() {
        let text: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        let t = truncate_for_model(&text, 1000);
        assert!(t.len() < 1200, "{}", t.len());
        assert!(t.starts_with("line 0\n"));
        assert!(t.trim_end().ends_with("line 9999"));
        assert!(t.contains("bytes omitted"));
        assert_eq!(truncate_for_model("short", 1000), "short");
        let multibyte = "é".repeat(2000);
        let t = truncate_for_model(&multibyte, 101);
        assert!(t.contains("omitted"));
    }

    #[test]
    fn read_only_tools_are_known() {
        assert!(is_read_only("read_file", &json!({})));
        assert!(!is_read_only("edit", &json!({})));
        assert!(!is_read_only("shell", &json!({"command": "rm -rf x"})));
        assert!(is_read_only(
            "shell",
            &json!({"command": "ls", "read_only": true})
        ));
    }
}
