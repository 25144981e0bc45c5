//! Startup, the accept loop, and one connection's dispatch.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_protocol::envd::{PROTOCOL_VERSION, Request, Response};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};

use crate::error::OpError;
use crate::files::Root;
use crate::frame::{FrameError, FrameReader, FrameWriter};
use crate::reaper::Reaper;

/// envd's settings, from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where to listen.
    pub listen: Listen,
    /// The directory that stands for `/` in paths and is the default working directory
    /// (`--root`, default `/`).
    pub root: PathBuf,
    /// Write one byte here and close it once listening (`--ready-fd`).
    pub ready_fd: Option<RawFd>,
    /// How long a new connection may take to send its request before it is refused
    /// (`--request-timeout-ms`, default 10 s).
    pub request_timeout: Duration,
    /// Variables added to the base environment of everything envd runs (`--env K=V`),
    /// e.g. where the sandbox's CA bundle is.
    pub env: Vec<(String, String)>,
}

/// Where envd accepts connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A socket envd creates (`--socket PATH`); a stale socket file there is replaced.
    Socket(PathBuf),
    /// A listening socket handed over already bound (`--listen-fd N`). The sandbox
    /// runtime uses this so the socket's file lives only on the host, out of the
    /// sandbox's reach.
    Fd(RawFd),
}

/// A command line envd cannot run with.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The usage line printed with a [`ConfigError`].
pub const USAGE: &str = "usage: envd (--socket PATH | --listen-fd N) [--root DIR] [--ready-fd N] [--env K=V]... [--request-timeout-ms N]";

fn parse_fd(flag: &str, v: &OsString) -> Result<RawFd, ConfigError> {
    v.to_string_lossy()
        .parse()
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| ConfigError(format!("{flag} {v:?} is not a descriptor number")))
}

impl Config {
    /// Parses envd's arguments (without the program name).
    pub fn from_args(args: impl IntoIterator<Item = OsString>) -> Result<Config, ConfigError> {
        let mut socket = None;
        let mut root = PathBuf::from("/");
        let mut ready_fd = None;
        let mut request_timeout = Duration::from_secs(10);
        let mut listen_fd = None;
        let mut env = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let flag = arg.to_string_lossy().into_owned();
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(OsString::from(v))),
                None => (flag.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| ConfigError(format!("{name} needs a value")))
            };
            match name.as_str() {
                "--socket" => socket = Some(PathBuf::from(value()?)),
                "--root" => root = PathBuf::from(value()?),
                "--ready-fd" => ready_fd = Some(parse_fd("--ready-fd", &value()?)?),
                "--listen-fd" => listen_fd = Some(parse_fd("--listen-fd", &value()?)?),
                "--env" => {
                    let v = value()?.to_string_lossy().into_owned();
                    match v.split_once('=') {
                        Some((k, val)) if !k.is_empty() => {
                            env.push((k.to_string(), val.to_string()))
                        }
                        _ => return Err(ConfigError(format!("--env {v:?} is not KEY=VALUE"))),
                    }
                }
                "--request-timeout-ms" => {
                    let v = value()?;
                    let ms: u64 = v.to_string_lossy().parse().map_err(|_| {
                        ConfigError(format!("--request-timeout-ms {v:?} is not a number"))
                    })?;
                    request_timeout = Duration::from_millis(ms);
                }
                other => return Err(ConfigError(format!("unknown argument {other:?}"))),
            }
        }
        let listen = match (socket, listen_fd) {
            (Some(path), None) => Listen::Socket(path),
            (None, Some(fd)) => Listen::Fd(fd),
            _ => {
                return Err(ConfigError(
                    "exactly one of --socket and --listen-fd is required".into(),
                ));
            }
        };
        Ok(Config {
            listen,
            root,
            ready_fd,
            request_timeout,
            env,
        })
    }
}

struct State {
    root: Root,
    reaper: Arc<Reaper>,
    started: Instant,
    request_timeout: Duration,
}

/// Runs envd until SIGTERM or SIGINT, then kills every process it started (every process in
/// the sandbox when it is pid 1) and returns.
pub fn run(config: Config) -> std::io::Result<()> {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        // File operations run here; one thread is plenty and it exits when idle.
        .max_blocking_threads(1)
        .thread_keep_alive(Duration::from_secs(1))
        .build()?;
    rt.block_on(serve(config, started))
}

async fn serve(config: Config, started: Instant) -> std::io::Result<()> {
    let root = Root::open(&config.root).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot open root {}: {e}", config.root.display()),
        )
    })?;
    let listener = match &config.listen {
        Listen::Socket(path) => {
            // A socket file left by an earlier envd would make bind fail.
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            UnixListener::bind(path).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on {}: {e}", path.display()),
                )
            })?
        }
        Listen::Fd(fd) => {
            // SAFETY: the caller handed this listening socket to envd for exactly this
            // use; nothing else in envd owns it.
            let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(*fd) };
            std_listener.set_nonblocking(true)?;
            UnixListener::from_std(std_listener).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on descriptor {fd}: {e}"))
            })?
        }
    };
    crate::exec::set_base_environment(&config.env);
    let is_init = std::process::id() == 1;
    if !is_init {
        // Orphans of our children should still come to us to be reaped.
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer argument and touches no memory.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
    }
    // As pid 1 a signal without a handler is ignored, so these handlers are what make
    // SIGTERM work at all.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let reaper = Reaper::start()?;
    if let Some(fd) = config.ready_fd {
        // SAFETY: the caller handed this descriptor to envd for exactly this use, and
        // nothing else in envd opens or owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut ready = std::fs::File::from(fd);
        let _ = ready.write_all(b"1");
    }

    let state = Arc::new(State {
        root,
        reaper,
        started,
        request_timeout: config.request_timeout,
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(state.clone(), stream));
                }
                // Out of descriptors or similar: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    if is_init {
        // SAFETY: kill(2) with pid -1 signals every process envd may signal; as the
        // sandbox's init that is the whole sandbox, which is what stopping it means.
        unsafe {
            libc::kill(-1, libc::SIGKILL);
        }
    } else {
        crate::exec::kill_all(&state.reaper);
    }
    if let Listen::Socket(path) = &config.listen {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

async fn connection(state: Arc<State>, stream: UnixStream) {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w);
    let line = match tokio::time::timeout(state.request_timeout, reader.next()).await {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) | Ok(Err(FrameError::Io(_))) => return,
        Ok(Err(FrameError::TooLarge)) => {
            refuse(
                &mut writer,
                OpError::too_large("request line longer than the protocol's limit"),
            )
            .await;
            return;
        }
        Err(_) => {
            let ms = state.request_timeout.as_millis();
            refuse(
                &mut writer,
                OpError::bad_request(format!("no request within {ms} ms")),
            )
            .await;
            return;
        }
    };
    let req: Request = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => {
            refuse(
                &mut writer,
                OpError::bad_request(format!("malformed request: {e}")),
            )
            .await;
            return;
        }
    };
    match req {
        Request::Health => {
            let health = Response::Health {
                protocol: PROTOCOL_VERSION,
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id(),
                uptime_ms: u64::try_from(state.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            };
            let _ = writer.send(&health).await;
        }
        Request::Exec(req) => {
            crate::exec::run(&state.root, &state.reaper, req, &mut reader, &mut writer).await;
        }
        Request::Watch { path, recursive } => {
            crate::watch::run(&state.root, &path, recursive, &mut reader, &mut writer).await;
        }
        file_op => {
            let st = state.clone();
            let resp = tokio::task::spawn_blocking(move || st.root.handle(file_op))
                .await
                .unwrap_or_else(|_| {
                    Response::Error(
                        OpError::bad_request("file operation failed unexpectedly").into_body(),
                    )
                });
            let _ = writer.send(&resp).await;
        }
    }
    writer.shutdown().await;
}

async fn refuse<W: tokio::io::AsyncWrite + Unpin>(writer: &mut FrameWriter<W>, e: OpError) {
    let _ = writer.send(&Response::Error(e.into_body())).await;
    writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_the_documented_command_line() {
        let c = Config::from_args(args(&[
            "--socket",
            "/run/envd.sock",
            "--root=/r",
            "--ready-fd",
            "3",
        ]))
        .unwrap();
        assert_eq!(c.listen, Listen::Socket(PathBuf::from("/run/envd.sock")));
        assert_eq!(c.root, PathBuf::from("/r"));
        assert_eq!(c.ready_fd, Some(3));
        let d = Config::from_args(args(&["--socket", "s"])).unwrap();
        assert_eq!(d.root, PathBuf::from("/"));
        assert_eq!(d.ready_fd, None);
        let e =
            Config::from_args(args(&["--listen-fd", "4", "--env", "A=b=c", "--env=X="])).unwrap();
        assert_eq!(e.listen, Listen::Fd(4));
        assert_eq!(
            e.env,
            vec![("A".into(), "b=c".into()), ("X".into(), String::new())]
        );
    }

    #[test]
    fn refuses_a_missing_socket_or_unknown_flag() {
        assert!(Config::from_args(args(&[])).is_err());
        assert!(Config::from_args(args(&["--socket", "s", "--verbose"])).is_err());
        assert!(Config::from_args(args(&["--socket", "s", "--ready-fd", "-1"])).is_err());
        assert!(Config::from_args(args(&["--socket"])).is_err());
        assert!(Config::from_args(args(&["--socket", "s", "--listen-fd", "4"])).is_err());
        assert!(Config::from_args(args(&["--listen-fd", "x"])).is_err());
        assert!(Config::from_args(args(&["--socket", "s", "--env", "=v"])).is_err());
        assert!(Config::from_args(args(&["--socket", "s", "--env", "novalue"])).is_err());
    }
}
