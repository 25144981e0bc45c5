//! The one client of envd, the in-sandbox daemon: every crate that runs a command, moves a
//! file or waits for a sandbox to come up goes through [`EnvdClient`].
//!
//! It owns the client side of `hangar_protocol::envd` (connecting, framing, matching replies
//! to requests) and nothing else: it does not start sandboxes or know where their sockets
//! live; callers pass the socket path. Each operation opens its own connection, so a client
//! is cheap to create and to share, and one slow operation never blocks another.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hangar_envd_client::Error> {
//! use hangar_envd_client::{EnvdClient, ExecRequest};
//! let envd = EnvdClient::new("/run/sandbox/abc/envd.sock");
//! let out = envd
//!     .output(ExecRequest { shell: Some("ls /".into()), ..Default::default() }, 1 << 20)
//!     .await?;
//! println!("{} {}", out.status.shell_code(), String::from_utf8_lossy(&out.stdout));
//! # Ok(()) }
//! ```

mod conn;
mod error;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use error::Error;
use hangar_protocol::envd::{Bytes, ExecInput, Request, Response};
pub use hangar_protocol::envd::{
    ChangeKind, ErrorBody, ExecRequest, ExitStatus, FileInfo, FileKind, PtySize,
};
use tokio::sync::Mutex;

use crate::conn::{Conn, Sender};

/// A handle on one sandbox's envd socket.
#[derive(Debug, Clone)]
pub struct EnvdClient {
    socket: PathBuf,
}

/// What `health` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The protocol version envd speaks.
    pub protocol: u32,
    /// envd's version.
    pub version: String,
    /// envd's pid inside the sandbox (1 when it is the sandbox's init).
    pub pid: u32,
    /// Milliseconds since envd started.
    pub uptime_ms: u64,
}

/// A byte range of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileData {
    /// The bytes read.
    pub data: Vec<u8>,
    /// The file's size when read.
    pub size: u64,
    /// True when the range reached the end of the file.
    pub eof: bool,
}

/// How to write a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Permission bits; an existing file keeps its mode when `None`, a new one gets 0644.
    pub mode: Option<u32>,
    /// Create missing parent directories.
    pub create_parents: bool,
}

/// Everything a process printed (up to a limit) and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Standard output (or the terminal), at most the limit.
    pub stdout: Vec<u8>,
    /// Standard error, at most the limit.
    pub stderr: Vec<u8>,
    /// How the process ended.
    pub status: ExitStatus,
    /// True when output past the limit was dropped.
    pub truncated: bool,
}

/// One event of a running exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes on stdout (or the terminal).
    Stdout(Vec<u8>),
    /// Bytes on stderr.
    Stderr(Vec<u8>),
    /// The process ended; no event follows.
    Exit(ExitStatus),
}

/// A change under a watched path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The path inside the sandbox, starting with `/`.
    pub path: String,
    /// What happened.
    pub kind: ChangeKind,
}

impl EnvdClient {
    /// A client for the envd listening at `socket`. Does not connect.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        EnvdClient {
            socket: socket.into(),
        }
    }

    /// The socket this client connects to.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    async fn call(&self, req: &Request) -> Result<Response, Error> {
        let mut conn = Conn::open(&self.socket, req).await?;
        match conn.recv().await? {
            Response::Error(e) => Err(Error::Remote(e)),
            r => Ok(r),
        }
    }

    /// envd's identity and uptime.
    pub async fn health(&self) -> Result<Health, Error> {
        match self.call(&Request::Health).await? {
            Response::Health {
                protocol,
                version,
                pid,
                uptime_ms,
            } => Ok(Health {
                protocol,
                version,
                pid,
                uptime_ms,
            }),
            other => Err(Error::unexpected("health", &other)),
        }
    }

    /// Retries `health` until envd answers or `timeout` passes; returns the last error then.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Health, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            match self.health().await {
                Ok(h) => return Ok(h),
                Err(e) if tokio::time::Instant::now() + pause >= deadline => {
                    return Err(Error::NotReady {
                        path: self.socket.clone(),
                        waited: timeout,
                        last: Box::new(e),
                    });
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// Starts a process; returns once envd reports it started. Dropping the [`Exec`] (or
    /// the connection breaking) kills the process's whole group.
    pub async fn exec(&self, req: ExecRequest) -> Result<Exec, Error> {
        let mut conn = Conn::open(&self.socket, &Request::Exec(req)).await?;
        match conn.recv().await? {
            Response::Started { pid } => {
                let (reader, sender) = conn.split();
                Ok(Exec {
                    pid,
                    reader,
                    control: ExecControl {
                        sender: Arc::new(Mutex::new(sender)),
                    },
                    done: false,
                })
            }
            Response::Error(e) => Err(Error::Remote(e)),
            other => Err(Error::unexpected("exec", &other)),
        }
    }

    /// Runs a process to the end and collects up to `limit` bytes of each of stdout and
    /// stderr; the rest is read and dropped (and `truncated` set).
    pub async fn output(&self, req: ExecRequest, limit: usize) -> Result<Output, Error> {
        let mut exec = self.exec(req).await?;
        let (mut stdout, mut stderr, mut truncated) = (Vec::new(), Vec::new(), false);
        loop {
            let (buf, data) = match exec.next_event().await? {
                Some(ExecEvent::Stdout(d)) => (&mut stdout, d),
                Some(ExecEvent::Stderr(d)) => (&mut stderr, d),
                Some(ExecEvent::Exit(status)) => {
                    return Ok(Output {
                        stdout,
                        stderr,
                        status,
                        truncated,
                    });
                }
                None => return Err(Error::Protocol("exec ended without an exit frame".into())),
            };
            let room = limit.saturating_sub(buf.len());
            if data.len() > room {
                truncated = true;
            }
            buf.extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    /// Reads up to `length` bytes (at most `MAX_READ`, 16 MiB) from `offset`.
    pub async fn read_file(
        &self,
        path: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Result<FileData, Error> {
        let req = Request::ReadFile {
            path: path.into(),
            offset,
            length,
        };
        match self.call(&req).await? {
            Response::FileData { data, size, eof } => Ok(FileData {
                data: data.0,
                size,
                eof,
            }),
            other => Err(Error::unexpected("read_file", &other)),
        }
    }

    /// Reads a whole file, in as many requests as its size needs.
    pub async fn read_to_end(&self, path: &str) -> Result<Vec<u8>, Error> {
        let mut all = Vec::new();
        loop {
            let chunk = self.read_file(path, all.len() as u64, None).await?;
            let empty = chunk.data.is_empty();
            all.extend_from_slice(&chunk.data);
            if chunk.eof || empty {
                return Ok(all);
            }
        }
    }

    /// Replaces a file's contents atomically: readers see the old or the new file, never
    /// a mix.
    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
        options: WriteOptions,
    ) -> Result<(), Error> {
        let req = Request::WriteFile {
            path: path.into(),
            data: Bytes::from(data),
            mode: options.mode,
            create_parents: options.create_parents,
        };
        self.expect_ok("write_file", &req).await
    }

    /// A directory's entries, sorted by name.
    pub async fn list_dir(&self, path: &str) -> Result<Vec<FileInfo>, Error> {
        match self.call(&Request::ListDir { path: path.into() }).await? {
            Response::Entries { entries } => Ok(entries),
            other => Err(Error::unexpected("list_dir", &other)),
        }
    }

    /// One path's metadata; a final symlink is described, not followed.
    pub async fn stat(&self, path: &str) -> Result<FileInfo, Error> {
        match self.call(&Request::Stat { path: path.into() }).await? {
            Response::Stat(info) => Ok(info),
            other => Err(Error::unexpected("stat", &other)),
        }
    }

    /// Creates a directory; with `parents`, also its missing parents, and an existing
    /// directory is fine.
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<(), Error> {
        self.expect_ok(
            "mkdir",
            &Request::Mkdir {
                path: path.into(),
                parents,
            },
        )
        .await
    }

    /// Removes a file, symlink or directory; a non-empty directory only with `recursive`.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), Error> {
        self.expect_ok(
            "remove",
            &Request::Remove {
                path: path.into(),
                recursive,
            },
        )
        .await
    }

    /// Renames `from` to `to`, replacing a file at `to`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), Error> {
        self.expect_ok(
            "rename",
            &Request::Rename {
                from: from.into(),
                to: to.into(),
            },
        )
        .await
    }

    /// Starts watching `path`; returns once the watch is in place, so every change after
    /// this returns is reported.
    pub async fn watch(&self, path: &str, recursive: bool) -> Result<Watch, Error> {
        let req = Request::Watch {
            path: path.into(),
            recursive,
        };
        let mut conn = Conn::open(&self.socket, &req).await?;
        match conn.recv().await? {
            Response::Ok => Ok(Watch { conn }),
            Response::Error(e) => Err(Error::Remote(e)),
            other => Err(Error::unexpected("watch", &other)),
        }
    }

    async fn expect_ok(&self, op: &str, req: &Request) -> Result<(), Error> {
        match self.call(req).await? {
            Response::Ok => Ok(()),
            other => Err(Error::unexpected(op, &other)),
        }
    }
}

/// A running process. Read its events with [`Exec::next_event`] (or [`Exec::wait`]);
/// dropping it closes the connection, which makes envd kill the process group.
#[derive(Debug)]
pub struct Exec {
    pid: u32,
    reader: conn::Reader,
    control: ExecControl,
    done: bool,
}

impl Exec {
    /// The process's pid inside the sandbox (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A handle for input and signals that can move to another task, so that input can be
    /// written while this one reads output (a process blocked on full output will not read
    /// its input).
    pub fn control(&self) -> ExecControl {
        self.control.clone()
    }

    /// The next output chunk or the exit; `None` after the exit was returned.
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, Error> {
        if self.done {
            return Ok(None);
        }
        let ev = match self.reader.recv().await? {
            Response::Stdout { data } => ExecEvent::Stdout(data.0),
            Response::Stderr { data } => ExecEvent::Stderr(data.0),
            Response::Exit(status) => {
                self.done = true;
                ExecEvent::Exit(status)
            }
            Response::Error(e) => {
                self.done = true;
                return Err(Error::Remote(e));
            }
            other => return Err(Error::unexpected("exec", &other)),
        };
        Ok(Some(ev))
    }

    /// Writes bytes to the process's stdin (or terminal).
    pub async fn send_stdin(&self, data: &[u8]) -> Result<(), Error> {
        self.control.send_stdin(data).await
    }

    /// Ends the process's input.
    pub async fn close_stdin(&self) -> Result<(), Error> {
        self.control.close_stdin().await
    }

    /// Sends a signal to the process's whole group.
    pub async fn signal(&self, signal: i32) -> Result<(), Error> {
        self.control.signal(signal).await
    }

    /// Resizes the terminal of a PTY exec.
    pub async fn resize(&self, size: PtySize) -> Result<(), Error> {
        self.control.resize(size).await
    }

    /// Discards output until the process ends and returns how it ended.
    pub async fn wait(mut self) -> Result<ExitStatus, Error> {
        loop {
            match self.next_event().await? {
                Some(ExecEvent::Exit(status)) => return Ok(status),
                Some(_) => {}
                None => return Err(Error::Protocol("exec already finished".into())),
            }
        }
    }
}

/// Input and signals for a running [`Exec`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct ExecControl {
    sender: Arc<Mutex<Sender>>,
}

impl ExecControl {
    async fn send(&self, input: &ExecInput) -> Result<(), Error> {
        self.sender.lock().await.send(input).await
    }

    /// Writes bytes to the process's stdin (or terminal).
    pub async fn send_stdin(&self, data: &[u8]) -> Result<(), Error> {
        self.send(&ExecInput::Stdin {
            data: Bytes::from(data),
        })
        .await
    }

    /// Ends the process's input (on a terminal: types ^D).
    pub async fn close_stdin(&self) -> Result<(), Error> {
        self.send(&ExecInput::CloseStdin).await
    }

    /// Sends a signal to the process's whole group.
    pub async fn signal(&self, signal: i32) -> Result<(), Error> {
        self.send(&ExecInput::Signal { signal }).await
    }

    /// Resizes the terminal of a PTY exec.
    pub async fn resize(&self, size: PtySize) -> Result<(), Error> {
        self.send(&ExecInput::Resize(size)).await
    }
}

/// Changes under a watched path, until dropped.
#[derive(Debug)]
pub struct Watch {
    conn: Conn,
}

impl Watch {
    /// The next change; waits until there is one.
    pub async fn next(&mut self) -> Result<Change, Error> {
        match self.conn.recv().await? {
            Response::Changed { path, kind } => Ok(Change { path, kind }),
            Response::Error(e) => Err(Error::Remote(e)),
            other => Err(Error::unexpected("watch", &other)),
        }
    }
}
