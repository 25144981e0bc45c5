//! The sandbox runtime: the [`Runtime`] trait every backend implements, and [`LocalRuntime`],
//! the embedded Linux backend (user, mount, pid, net, ipc, uts and cgroup namespaces;
//! overlayfs over read-only layers; pivot_root; masked /proc and /sys; dropped capabilities;
//! no_new_privs; seccomp; cgroup v1/v2 limits; no network).
//!
//! This crate is the only one that makes namespace, mount, cgroup or seccomp calls, and
//! those happen in a separate small executable (`hangar-jail`, see [`jail`]) so the server
//! never forks while multi-threaded. It never talks to the network or a database. What
//! runs inside a sandbox is reached only through envd (`hangar-envd-client`).

pub mod cgroup;
pub mod jail;
mod local;
pub mod network;
pub mod policy;
pub mod storage;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use cgroup::Usage;
pub use hangar_envd_client::EnvdClient;
pub use jail::InitExit;
pub use local::{Frozen, LocalRuntime, Recovery};

/// What a sandbox's filesystem is made of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rootfs {
    /// The host's root filesystem as the read-only bottom layer. Convenient and fast, but
    /// weaker isolation: host files are visible (those private to host root stay
    /// unreadable; configured secret paths are hidden).
    HostRoot,
    /// Read-only directory layers, top-most first (e.g. an unpacked Debian rootfs).
    Layers {
        /// Host directories.
        layers: Vec<PathBuf>,
    },
    /// Read-only directory layers (top-most first, id-mapped like [`Rootfs::Layers`]) over
    /// the host's root as the bottom layer: an image built on the host base. The host
    /// root keeps [`Rootfs::HostRoot`]'s rules (not id-mapped, secrets hidden, fresh
    /// scratch directories).
    LayersOverHost {
        /// Host directories.
        layers: Vec<PathBuf>,
    },
}

/// Resource limits, enforced by cgroups.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes (swap is not granted on top).
    pub memory_bytes: u64,
    /// Processes and threads at most.
    pub pids: u64,
    /// CPU quota in CPUs.
    pub cpus: f64,
}

/// Network access of a sandbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// Loopback only.
    #[default]
    None,
    /// Outbound access through NAT (see [`network`]); the host's own services and other
    /// sandboxes stay unreachable. The host's CA certificates are trusted inside.
    Egress,
}

/// What to create.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The filesystem.
    pub rootfs: Rootfs,
    /// Limits.
    pub limits: Limits,
    /// Network.
    pub network: Network,
}

/// Where a sandbox is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    /// Being set up.
    Creating,
    /// envd is serving.
    Running,
    /// Stopped on request; its files are kept until it is destroyed.
    Stopped,
    /// Its init died without being asked to.
    Dead {
        /// Why, for people: `out of memory (OOM-killed)`, `exited with code 1`, ...
        reason: String,
        /// True when the kernel's OOM killer ended it.
        oom_killed: bool,
    },
}

/// A sandbox as the runtime reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    /// Its id (also its hostname).
    pub id: String,
    /// Its state.
    pub status: Status,
    /// What it was created from.
    pub spec: SandboxSpec,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Host pid of its init (envd), while it runs.
    pub init_pid: Option<u32>,
    /// Host path of envd's socket.
    pub socket: PathBuf,
}

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// No sandbox has this id.
    #[error("no sandbox with id {0}")]
    NotFound(String),
    /// The sandbox exists but cannot serve the request in its state.
    #[error("sandbox {id} is {state}")]
    NotRunning {
        /// Its id.
        id: String,
        /// Its state, in words.
        state: String,
    },
    /// The spec is unusable (e.g. a missing rootfs).
    #[error("{0}")]
    InvalidSpec(String),
    /// The host lacks something the runtime needs (a kernel feature, a binary, root).
    #[error("{0}")]
    Unsupported(String),
    /// Starting the sandbox failed.
    #[error("starting sandbox {id} failed: {message}")]
    StartFailed {
        /// Its id.
        id: String,
        /// What the jail reported, and its log's tail.
        message: String,
    },
    /// A filesystem or process operation on the host failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl SandboxError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
        let context = context.into();
        move |source| SandboxError::Io { context, source }
    }
}

/// A sandbox backend. Implementations: [`LocalRuntime`]; later Kubernetes.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// Creates and starts a sandbox; returns once envd is serving.
    async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, SandboxError>;
    /// The envd client of a running sandbox: exec, PTY, files, watch.
    async fn envd(&self, id: &str) -> Result<EnvdClient, SandboxError>;
    /// Stops a sandbox's processes, keeping its files.
    async fn stop(&self, id: &str) -> Result<(), SandboxError>;
    /// Kills a sandbox and removes everything it had: processes, cgroups, mounts, files.
    /// Returns once it is killed and can no longer be found, listed or reached; freeing
    /// what it had may finish in the background ([`LocalRuntime::destroy_wait`] waits).
    async fn destroy(&self, id: &str) -> Result<(), SandboxError>;
    /// One sandbox.
    async fn get(&self, id: &str) -> Result<Sandbox, SandboxError>;
    /// All sandboxes, oldest first.
    async fn list(&self) -> Result<Vec<Sandbox>, SandboxError>;
    /// Resource usage of a sandbox.
    async fn stats(&self, id: &str) -> Result<Usage, SandboxError>;
}
