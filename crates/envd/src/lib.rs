//! envd, the in-sandbox daemon: it runs processes (with pipes or a terminal), reads and
//! writes files and watches paths for the control plane, over one Unix socket.
//!
//! envd owns the sandbox-side end of the protocol in `hangar_protocol::envd` and nothing
//! else: it makes no namespace, mount, cgroup or seccomp calls (the sandbox crate sets
//! those up before envd starts) and holds no credentials. It is the sandbox's init, so it
//! also reaps every orphaned process and kills everything on SIGTERM.
//!
//! It must stay small: a machine hosts a thousand idle sandboxes, so envd runs on a
//! single-threaded runtime, keeps no idle threads and uses small buffers. Blocking file
//! work runs on a short-lived helper thread so a slow disk does not stall output streams.

mod error;
mod exec;
mod files;
mod frame;
mod reaper;
mod server;
mod watch;

pub use files::Root;
pub use server::{Config, ConfigError, Listen, USAGE, run};
