//! Request and response bodies of the HTTP API, and the pure functions that turn requests
//! into runtime calls (validation, defaults). No I/O here: everything is unit-testable.
//!
//! These types will move to `hangar-protocol` once a second consumer (the CLI's client
//! commands, the web UI's generated types) needs them.

use std::collections::BTreeMap;

use hangar_config::parse_size;
use hangar_protocol::envd::ExecRequest as EnvdExec;
use hangar_sandbox::{Limits, Network, Rootfs, Sandbox, SandboxSpec, Status};
use hangar_store::User;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

/// How much of each of stdout and stderr a collected exec returns.
pub const EXEC_OUTPUT_LIMIT: usize = 1 << 20;
/// The timeout of an exec that names none; a collected exec must end for its answer to be
/// sent.
pub const EXEC_DEFAULT_TIMEOUT_MS: u64 = 5 * 60 * 1000;
/// The longest timeout an exec may ask for.
pub const EXEC_MAX_TIMEOUT_MS: u64 = 60 * 60 * 1000;

/// More CPUs than any host has: a quota above this is a mistake, not a request.
const MAX_CPUS: f64 = 1024.0;
/// The kernel's largest `pid_max`.
const MAX_PIDS: u64 = 4 << 20;

/// `GET /healthz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the server answers.
    pub status: String,
}

/// `GET /api/me`: who the token belongs to.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    /// The user's id.
    pub id: i64,
    /// Unique short name.
    pub login: String,
    /// Display name.
    pub name: String,
    /// Email, if known.
    pub email: Option<String>,
    /// Admin rights.
    pub is_admin: bool,
    /// Linked GitHub login, if any.
    pub github_login: Option<String>,
    /// The name of the token used for this request.
    pub token_name: String,
}

impl Me {
    /// The view of a user, seen through one of their tokens.
    pub fn new(user: User, token_name: String) -> Me {
        Me {
            id: user.id,
            login: user.login,
            name: user.name,
            email: user.email,
            is_admin: user.is_admin,
            github_login: user.github_login,
            token_name,
        }
    }
}

/// `POST /api/sandboxes`. Every field is optional; the deployment's defaults fill in.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// `host` (the host's root read-only; weaker isolation), or an absolute path on the
    /// server to a rootfs directory or tarball. Default `host`.
    #[serde(default)]
    pub rootfs: Option<String>,
    /// Memory limit, e.g. `512MiB`.
    #[serde(default)]
    pub memory: Option<String>,
    /// CPU quota in CPUs, e.g. `0.5`.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Process and thread limit.
    #[serde(default)]
    pub pids: Option<u64>,
    /// `none` (loopback only, the default) or `egress` (outbound access through NAT) where
    /// the server supports it.
    #[serde(default)]
    pub network: Option<String>,
}

impl CreateSandbox {
    /// The limits and network asked for, over `defaults`; the rootfs is resolved by the
    /// backend (it may touch the disk).
    pub fn limits_and_network(&self, defaults: Limits) -> Result<(Limits, Network), ApiError> {
        let mut limits = defaults;
        if let Some(m) = &self.memory {
            limits.memory_bytes = parse_size(m)
                .map_err(|e| ApiError::invalid("invalid_spec", format!("memory: {e}")))?;
        }
        if let Some(c) = self.cpus {
            if !(c.is_finite() && c > 0.0 && c <= MAX_CPUS) {
                return Err(ApiError::invalid(
                    "invalid_spec",
                    format!("cpus: {c} is not a number of CPUs between 0 and {MAX_CPUS}"),
                ));
            }
            limits.cpus = c;
        }
        if let Some(p) = self.pids {
            if p > MAX_PIDS {
                return Err(ApiError::invalid(
                    "invalid_spec",
                    format!("pids: {p} is above the kernel's limit of {MAX_PIDS}"),
                ));
            }
            limits.pids = p;
        }
        // Parsed through the runtime's own names, so a mode the runtime adds is available
        // here without a second list to keep in step.
        let network = match &self.network {
            None => Network::default(),
            Some(name) => {
                serde_json::from_value(serde_json::Value::String(name.clone())).map_err(|_| {
                    ApiError::invalid(
                        "invalid_spec",
                        format!("network {name:?} is not a network mode this server knows"),
                    )
                })?
            }
        };
        Ok((limits, network))
    }

    /// The rootfs argument, `host` by default.
    pub fn rootfs_arg(&self) -> &str {
        self.rootfs.as_deref().unwrap_or("host")
    }
}

/// A sandbox's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Being set up.
    Creating,
    /// Serving.
    Running,
    /// Stopped on request; files kept.
    Stopped,
    /// Its init died; see `reason`.
    Dead,
}

/// A sandbox, as the API shows it (no host paths or pids).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SandboxView {
    /// Its id.
    pub id: String,
    /// Its state.
    pub status: SandboxState,
    /// Why it died, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// True when the kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// `host`, or the rootfs layers (top first) joined by `:`.
    pub rootfs: String,
    /// Memory limit in bytes.
    pub memory_bytes: u64,
    /// CPU quota in CPUs.
    pub cpus: f64,
    /// Process limit.
    pub pids: u64,
    /// Network mode.
    pub network: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// What it serves (`session`, `pool`, `environment`, `api`), from the index; absent
    /// for sandboxes the server did not start (e.g. `hangar sandbox create`, builds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The repository it holds, if the index knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// The session it serves, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The user who asked for it, when a person did through the API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<i64>,
}

impl SandboxView {
    /// Adds what the index says the sandbox serves.
    pub fn with_record(mut self, record: Option<hangar_store::SandboxRecord>) -> SandboxView {
        if let Some(r) = record {
            self.purpose = Some(r.purpose);
            self.repo = r.repo;
            self.session_id = r.session_id;
            self.created_by = r.created_by;
        }
        self
    }
}

impl From<&Sandbox> for SandboxView {
    fn from(sb: &Sandbox) -> Self {
        let (status, reason, oom_killed) = match &sb.status {
            Status::Creating => (SandboxState::Creating, None, false),
            Status::Running => (SandboxState::Running, None, false),
            Status::Stopped => (SandboxState::Stopped, None, false),
            Status::Dead { reason, oom_killed } => {
                (SandboxState::Dead, Some(reason.clone()), *oom_killed)
            }
        };
        SandboxView {
            id: sb.id.clone(),
            status,
            reason,
            oom_killed,
            rootfs: rootfs_word(&sb.spec),
            memory_bytes: sb.spec.limits.memory_bytes,
            cpus: sb.spec.limits.cpus,
            pids: sb.spec.limits.pids,
            network: network_word(sb.spec.network),
            created_at_ms: sb.created_at_ms,
            purpose: None,
            repo: None,
            session_id: None,
            created_by: None,
        }
    }
}

fn network_word(n: Network) -> String {
    match serde_json::to_value(n) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{n:?}").to_lowercase(),
    }
}

fn rootfs_word(spec: &SandboxSpec) -> String {
    match &spec.rootfs {
        Rootfs::HostRoot => "host".into(),
        Rootfs::Layers { layers } | Rootfs::LayersOverHost { layers } => layers
            .iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(":"),
    }
}

/// `POST /api/sandboxes/{id}/exec`: exactly one of `argv` and `shell`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// The program and its arguments.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// A command line for `/bin/sh -c`.
    #[serde(default)]
    pub shell: Option<String>,
    /// Working directory inside the sandbox; `/` by default.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Environment variables added to the sandbox's base environment.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Kill the command's whole process group after this long (default 5 minutes, at most
    /// an hour).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl ExecBody {
    /// The envd request, or why this body cannot be one.
    pub fn to_envd(&self) -> Result<EnvdExec, ApiError> {
        let bad = |m: String| ApiError::invalid("invalid_request", m);
        let (argv, shell) = match (&self.argv, &self.shell) {
            (Some(a), None) if !a.is_empty() => (a.clone(), None),
            (Some(_), None) => return Err(bad("argv must name a program".into())),
            (None, Some(s)) => (Vec::new(), Some(s.clone())),
            _ => return Err(bad("give exactly one of argv and shell".into())),
        };
        let env = self.env.clone().unwrap_or_default();
        let strings = argv
            .iter()
            .chain(shell.iter())
            .chain(self.cwd.iter())
            .chain(env.iter().flat_map(|(k, v)| [k, v]));
        for s in strings {
            if s.contains('\0') {
                return Err(bad(
                    "arguments, cwd and env must not contain NUL bytes".into()
                ));
            }
        }
        if let Some(k) = env.keys().find(|k| k.is_empty() || k.contains('=')) {
            return Err(bad(format!(
                "environment variable name {k:?} must be non-empty and without '='"
            )));
        }
        let timeout_ms = self.timeout_ms.unwrap_or(EXEC_DEFAULT_TIMEOUT_MS);
        if timeout_ms == 0 || timeout_ms > EXEC_MAX_TIMEOUT_MS {
            return Err(bad(format!(
                "timeout_ms must be between 1 and {EXEC_MAX_TIMEOUT_MS}"
            )));
        }
        Ok(EnvdExec {
            argv,
            shell,
            cwd: self.cwd.clone(),
            env,
            timeout_ms: Some(timeout_ms),
            ..EnvdExec::default()
        })
    }
}

/// How an exec ended and what it printed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// Exit code when it exited normally.
    pub exit_code: Option<i32>,
    /// Signal number when a signal ended it.
    pub signal: Option<i32>,
    /// True when it was killed for running past `timeout_ms`.
    pub timed_out: bool,
    /// Standard output (UTF-8, invalid bytes replaced), at most 1 MiB.
    pub stdout: String,
    /// Standard error, likewise.
    pub stderr: String,
    /// True when output past the limit was dropped.
    pub truncated: bool,
}

impl From<hangar_envd_client::Output> for ExecResult {
    fn from(o: hangar_envd_client::Output) -> Self {
        ExecResult {
            exit_code: o.status.code,
            signal: o.status.signal,
            timed_out: o.status.timed_out,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            truncated: o.truncated,
        }
    }
}

/// Sandbox ids as the runtime makes them; anything else is answered 404 before it reaches
/// the runtime (a percent-encoded `/` must never become a path).
pub fn valid_sandbox_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Limits = Limits {
        memory_bytes: 1 << 30,
        pids: 100,
        cpus: 1.0,
    };

    #[test]
    fn create_fills_defaults_and_checks_values() {
        let (l, n) = CreateSandbox::default()
            .limits_and_network(DEFAULTS)
            .unwrap();
        assert_eq!((l, n), (DEFAULTS, Network::None));
        let req = CreateSandbox {
            memory: Some("256MiB".into()),
            cpus: Some(0.5),
            pids: Some(64),
            ..Default::default()
        };
        let (l, _) = req.limits_and_network(DEFAULTS).unwrap();
        assert_eq!((l.memory_bytes, l.cpus, l.pids), (256 << 20, 0.5, 64));
        for bad in [
            CreateSandbox {
                memory: Some("lots".into()),
                ..Default::default()
            },
            CreateSandbox {
                cpus: Some(-1.0),
                ..Default::default()
            },
            CreateSandbox {
                network: Some("carrier-pigeon".into()),
                ..Default::default()
            },
        ] {
            let e = bad.limits_and_network(DEFAULTS).unwrap_err();
            assert_eq!(e.status, 422, "{bad:?}");
        }
    }

    #[test]
    fn exec_needs_exactly_one_of_argv_and_shell() {
        let ok = ExecBody {
            argv: Some(vec!["echo".into(), "hi".into()]),
            ..Default::default()
        };
        let r = ok.to_envd().unwrap();
        assert_eq!(r.argv, ["echo", "hi"]);
        assert_eq!(r.timeout_ms, Some(EXEC_DEFAULT_TIMEOUT_MS));
        for bad in [
            ExecBody::default(),
            ExecBody {
                argv: Some(vec![]),
                ..Default::default()
            },
            ExecBody {
                argv: Some(vec!["a".into()]),
                shell: Some("b".into()),
                ..Default::default()
            },
            ExecBody {
                shell: Some("a\0b".into()),
                ..Default::default()
            },
            ExecBody {
                shell: Some("true".into()),
                env: Some([("A=B".to_string(), "c".to_string())].into()),
                ..Default::default()
            },
            ExecBody {
                shell: Some("true".into()),
                timeout_ms: Some(0),
                ..Default::default()
            },
        ] {
            assert_eq!(bad.to_envd().unwrap_err().status, 422, "{bad:?}");
        }
    }

    #[test]
    fn sandbox_ids_cannot_be_paths() {
        assert!(valid_sandbox_id("sb-0123456789ab"));
        for bad in ["", "..", "../etc", "a/b", "sb-1%2F", &"a".repeat(65)] {
            assert!(!valid_sandbox_id(bad), "{bad}");
        }
    }
}

/// The warm pool's figures.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PoolView {
    /// Idle sandboxes per repository.
    pub idle: Vec<PoolRepoView>,
    /// Claims served by a warm sandbox.
    pub hits: u64,
    /// Claims that had to start one.
    pub misses: u64,
    /// Hits whose sandbox was already synced to the latest base, so no sync ran.
    pub presynced: u64,
    /// Mean time to claim, milliseconds.
    pub mean_claim_ms: f64,
    /// Drafts holding a reserved sandbox (predictive warm-up).
    pub reservations: usize,
    /// Those drafts: whose, for which repository, and the sandbox once claimed.
    pub drafts: Vec<DraftView>,
}

/// A draft's reservation (predictive warm-up).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DraftView {
    /// Who is typing.
    pub user: String,
    /// The repository.
    pub repo: String,
    /// The reserved sandbox; absent while it is still being claimed.
    pub sandbox: Option<String>,
}

/// One repository's idle sandboxes.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PoolRepoView {
    /// The repository.
    pub repo: String,
    /// Idle sandboxes.
    pub idle: usize,
}

impl From<&hangar_pool::PoolStats> for PoolView {
    fn from(s: &hangar_pool::PoolStats) -> PoolView {
        let claims = s.hits + s.misses;
        PoolView {
            idle: s
                .idle
                .iter()
                .map(|(repo, idle)| PoolRepoView {
                    repo: repo.clone(),
                    idle: *idle,
                })
                .collect(),
            hits: s.hits,
            misses: s.misses,
            presynced: s.presynced,
            mean_claim_ms: if claims == 0 {
                0.0
            } else {
                s.claim_micros_total as f64 / claims as f64 / 1000.0
            },
            reservations: s.reservations,
            drafts: s
                .drafts
                .iter()
                .map(|(user, repo, sandbox)| DraftView {
                    user: user.clone(),
                    repo: repo.clone(),
                    sandbox: sandbox.clone(),
                })
                .collect(),
        }
    }
}
