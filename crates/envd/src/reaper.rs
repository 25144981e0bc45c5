//! The one place that waits for child processes.
//!
//! envd is the sandbox's init, so every orphan in the sandbox becomes its child and must be
//! reaped, not only the processes it started. One task reaps everything with
//! `waitpid(-1, WNOHANG)` on each SIGCHLD and hands the status to the exec that owns the pid,
//! if any. That is also why envd does not use `tokio::process`: its per-child `waitpid`
//! would race this loop.
//!
//! Registration cannot miss an exit: envd runs on a single-threaded runtime and an exec
//! registers its pid right after `fork`, with no `.await` in between, so the reaper cannot
//! run in that gap. A status that arrives later is kept in the channel until it is read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use hangar_protocol::envd::ExitStatus;
use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// Pids of running execs and who waits for them.
#[derive(Default)]
pub(crate) struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>,
}

impl Reaper {
    /// Starts reaping on SIGCHLD. Must be called inside the runtime.
    pub(crate) fn start() -> std::io::Result<Arc<Reaper>> {
        let reaper = Arc::new(Reaper::default());
        let mut sigchld = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    /// Announces interest in `pid`'s exit. Call right after spawning, before any `.await`.
    pub(crate) fn register(&self, pid: i32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid, tx);
        rx
    }

    /// Process groups of execs still running (each exec leads its own group).
    pub(crate) fn running(&self) -> Vec<i32> {
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    /// Reaps every child that has exited.
    fn reap(&self) {
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (
                    pid,
                    ExitStatus {
                        code: Some(code),
                        signal: None,
                        timed_out: false,
                    },
                ),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (
                    pid,
                    ExitStatus {
                        code: None,
                        signal: Some(sig as i32),
                        timed_out: false,
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Ok(_) => continue,
                Err(_) => return,
            };
            let waiter = self
                .waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&pid.as_raw());
            if let Some(tx) = waiter {
                // The exec may have gone (client disconnected); then nobody needs it.
                let _ = tx.send(status);
            }
        }
    }
}
