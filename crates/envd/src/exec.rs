//! `exec`: start a process, stream its output, feed its input, report how it ended.
//!
//! Each process is the leader of its own session and process group (`setsid` before
//! `exec`), so a timeout, a signal from the client, or the client going away reaches
//! everything it started, not just the first process.
//!
//! Output is read in chunks of at most [`CHUNK`] bytes and each chunk is written to the
//! client before the next read, so a slow client fills the pipe and the process blocks on
//! write: envd's memory stays bounded whatever the process prints.
//!
//! The `Exit` frame comes once the process has been reaped and its output pipes are at end
//! of file. A background process that inherited the pipes can hold them open long after
//! the process itself exited; envd keeps forwarding output until the pipes have been
//! quiet for [`GRACE`] (at most [`GRACE_MAX`] after the exit) and then sends `Exit` anyway.
//! It does not kill such processes (a dev server started with `&` is meant to outlive the
//! command); it keeps draining and discarding what they print until they close the pipes,
//! so they neither block on a full pipe nor die of SIGPIPE.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use hangar_protocol::envd::{Bytes, ExecInput, ExecRequest, ExitStatus, PtySize, Response};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::{Winsize, openpty};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until};

use crate::error::OpError;
use crate::files::Root;
use crate::frame::{FrameError, FrameReader, FrameWriter};
use crate::reaper::Reaper;

/// Largest output chunk per frame.
pub(crate) const CHUNK: usize = 64 * 1024;

/// How long output pipes may stay quiet after the process exited before `Exit` is sent.
pub(crate) const GRACE: Duration = Duration::from_millis(200);

/// Longest envd keeps forwarding output after the process exited (a background process
/// that keeps printing would otherwise hold the exec open forever).
pub(crate) const GRACE_MAX: Duration = Duration::from_secs(5);

/// The environment every process starts from; the request's `env` is added over it.
const BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
];

/// Variables from `--env`, set once at start-up.
static EXTRA_ENV: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Adds `--env` variables to the base environment of every exec (first call wins).
pub(crate) fn set_base_environment(extra: &[(String, String)]) {
    let _ = EXTRA_ENV.set(extra.to_vec());
}

/// The argv to run: the request's, or `/bin/sh -c` with its shell line.
pub(crate) fn command_line(req: &ExecRequest) -> Result<Vec<String>, OpError> {
    match (&req.shell, req.argv.is_empty()) {
        (Some(_), false) => Err(OpError::bad_request(
            "exec takes either argv or shell, not both",
        )),
        (None, true) => Err(OpError::bad_request(
            "exec needs a non-empty argv or a shell command",
        )),
        (Some(sh), true) => Ok(vec!["/bin/sh".into(), "-c".into(), sh.clone()]),
        (None, false) => {
            if req.argv[0].is_empty() {
                return Err(OpError::bad_request("exec argv[0] is empty"));
            }
            if req.argv.iter().any(|a| a.contains('\0')) {
                return Err(OpError::bad_request("exec argv contains a NUL byte"));
            }
            Ok(req.argv.clone())
        }
    }
}

/// The process's environment: the base, `TERM` on a terminal, then the request's variables.
pub(crate) fn environment(req: &ExecRequest) -> Result<BTreeMap<String, String>, OpError> {
    let mut env: BTreeMap<String, String> = BASE_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(EXTRA_ENV.get().into_iter().flatten().cloned())
        .collect();
    if req.pty.is_some() {
        env.insert("TERM".into(), "xterm-256color".into());
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(OpError::bad_request(format!(
                "invalid environment variable name or value: {k:?}"
            )));
        }
        env.insert(k.clone(), v.clone());
    }
    Ok(env)
}

/// The file `execvp` would run for `program`, found with `stat` and `faccessat` rather
/// than by trying `execve` in every `PATH` directory in turn (each failed exec is a trip
/// through the kernel's exec path). A name with a `/` is used as it is. As with execvp:
/// the first executable regular file wins, `EACCES` when only files that cannot be run
/// were found, `ENOENT` when none was; relative `PATH` entries (and empty ones, meaning
/// the current directory) are taken from `cwd`, the process's working directory.
fn find_program(program: &str, path: Option<&str>, cwd: &OwnedFd) -> Result<String, Errno> {
    use nix::fcntl::AtFlags;
    use nix::sys::stat::{SFlag, fstatat};
    use nix::unistd::{AccessFlags, faccessat};
    if program.contains('/') {
        return Ok(program.to_string());
    }
    // glibc's default when PATH is unset.
    let path = path.unwrap_or("/bin:/usr/bin");
    let mut denied = false;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = format!("{}/{program}", dir.trim_end_matches('/'));
        match fstatat(cwd, candidate.as_str(), AtFlags::empty()) {
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG => {
                match faccessat(
                    cwd,
                    candidate.as_str(),
                    AccessFlags::X_OK,
                    AtFlags::AT_EACCESS,
                ) {
                    Ok(()) => return Ok(candidate),
                    Err(_) => denied = true,
                }
            }
            // A directory or device by that name: exec would refuse it with EACCES.
            Ok(_) | Err(Errno::EACCES) => denied = true,
            Err(_) => {}
        }
    }
    Err(if denied { Errno::EACCES } else { Errno::ENOENT })
}

/// A started process and envd's ends of its stdio.
struct Spawned {
    pid: i32,
    exit: tokio::sync::oneshot::Receiver<ExitStatus>,
    /// stdout, or the terminal.
    out: Option<AsyncFd<OwnedFd>>,
    err: Option<AsyncFd<OwnedFd>>,
    /// stdin, or the terminal (a second descriptor of it).
    input: Option<AsyncFd<OwnedFd>>,
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), Errno> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

fn async_fd(fd: impl Into<OwnedFd>) -> Result<AsyncFd<OwnedFd>, OpError> {
    let fd: OwnedFd = fd.into();
    set_nonblocking(&fd).map_err(|e| OpError::sys("set a pipe non-blocking", e))?;
    // SAFETY: an OwnedFd is a valid open descriptor and always returns the same number; it
    // is closed only when the AsyncFd drops it.
    unsafe { AsyncFd::register(fd) }.map_err(|e| OpError::io("watch a pipe", &e.into()))
}

fn winsize(size: PtySize) -> Winsize {
    Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn spawn(root: &Root, reaper: &Reaper, req: &ExecRequest) -> Result<Spawned, OpError> {
    let argv = command_line(req)?;
    let env = environment(req)?;
    let cwd_path = req.cwd.as_deref().unwrap_or("/");
    let cwd = root
        .open_in(cwd_path, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
        .map_err(|e| match e.errno {
            Some(n) => OpError::sys(format!("working directory {cwd_path}"), Errno::from_raw(n)),
            None => e,
        })?;
    let cwd_raw: RawFd = cwd.as_raw_fd();
    let program =
        find_program(&argv[0], env.get("PATH").map(String::as_str), &cwd).map_err(|errno| {
            match errno {
                Errno::ENOENT => OpError {
                    code: "not_found",
                    message: format!("{}: command not found in the sandbox", argv[0]),
                    errno: Some(libc::ENOENT),
                },
                e => OpError::sys(format!("start {}", argv[0]), e),
            }
        })?;

    let mut cmd = Command::new(program);
    cmd.arg0(&argv[0]).args(&argv[1..]).env_clear().envs(&env);
    let pty = match req.pty {
        Some(size) => {
            let pty =
                openpty(&winsize(size), None).map_err(|e| OpError::sys("open a terminal", e))?;
            let dup = |fd: &OwnedFd| {
                fd.try_clone()
                    .map_err(|e| OpError::io("duplicate the terminal", &e))
            };
            cmd.stdin(Stdio::from(dup(&pty.slave)?))
                .stdout(Stdio::from(dup(&pty.slave)?))
                .stderr(Stdio::from(pty.slave));
            Some(pty.master)
        }
        None => {
            cmd.stdin(if req.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            None
        }
    };
    let with_tty = pty.is_some();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setsid, ioctl, fchdir) on descriptors that are open in
    // the child: stdin is the terminal's slave when `with_tty`, and `cwd_raw` stays open in
    // the parent until `spawn` returns, so the child's copy is valid until exec closes it
    // (it is O_CLOEXEC).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if with_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fchdir(cwd_raw) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // envd itself is shielded from the OOM killer by the sandbox runtime; what it
            // runs is not. Raising one's own score needs no privilege; failure (no /proc)
            // leaves the inherited score.
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| OpError::io(format!("start {}", argv[0]), &e))?;
    // Register before anything can yield to the reaper (see `reaper`).
    let pid = i32::try_from(child.id()).map_err(|_| OpError::bad_request("pid out of range"))?;
    let exit = reaper.register(pid);
    drop(cmd);
    drop(cwd);

    type Ends = (
        Option<AsyncFd<OwnedFd>>,
        Option<AsyncFd<OwnedFd>>,
        Option<AsyncFd<OwnedFd>>,
    );
    let stdio = (|| -> Result<Ends, OpError> {
        match pty {
            Some(master) => {
                let writer = master
                    .try_clone()
                    .map_err(|e| OpError::io("duplicate the terminal", &e))?;
                Ok((Some(async_fd(master)?), None, Some(async_fd(writer)?)))
            }
            None => {
                let out = child.stdout.take().map(async_fd).transpose()?;
                let err = child.stderr.take().map(async_fd).transpose()?;
                let input = child.stdin.take().map(async_fd).transpose()?;
                Ok((out, err, input))
            }
        }
    })();
    // `child` is dropped without waiting: the reaper owns waiting.
    drop(child);
    let (out, err, input) = stdio.inspect_err(|_| {
        // Nobody could talk to it: do not leave it running.
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    })?;
    Ok(Spawned {
        pid,
        exit,
        out,
        err,
        input,
    })
}

/// Reads what is available; `Ok(0)` is end of file. A terminal reports the end (all slave
/// descriptors closed) as EIO.
fn read_now(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    match nix::unistd::read(fd, buf) {
        Ok(n) => Ok(n),
        Err(Errno::EIO) => Ok(0),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

enum Event {
    Out(usize),
    Err(usize),
    OutDone,
    ErrDone,
}

async fn read_event(fd: &AsyncFd<OwnedFd>, buf: &mut [u8], is_err: bool) -> Event {
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(_) => {
                return if is_err {
                    Event::ErrDone
                } else {
                    Event::OutDone
                };
            }
        };
        match guard.try_io(|inner| read_now(inner.get_ref(), buf)) {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return if is_err {
                    Event::ErrDone
                } else {
                    Event::OutDone
                };
            }
            Ok(Ok(n)) => return if is_err { Event::Err(n) } else { Event::Out(n) },
            Err(_would_block) => continue,
        }
    }
}

async fn write_some(fd: &AsyncFd<OwnedFd>, data: &[u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.writable().await?;
        match guard
            .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(std::io::Error::from))
        {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// Waits for the fd to become readable, then reads and discards until end of file.
async fn drain(fd: AsyncFd<OwnedFd>) {
    let mut buf = vec![0u8; 4096];
    while let Event::Out(_) = read_event(&fd, &mut buf, false).await {}
}

fn signal_group(pid: i32, sig: i32) {
    match Signal::try_from(sig) {
        Ok(s) => {
            let _ = killpg(Pid::from_raw(pid), s);
        }
        Err(_) => {
            // Not a signal nix knows (e.g. a real-time one); the kernel decides.
            // SAFETY: kill(2) with a negative pid signals a process group; no memory is
            // involved.
            unsafe {
                libc::kill(-pid, sig);
            }
        }
    }
}

/// Runs one `exec` connection to its end.
pub(crate) async fn run<R, W>(
    root: &Root,
    reaper: &Reaper,
    req: ExecRequest,
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Spawned {
        pid,
        mut exit,
        mut out,
        mut err,
        mut input,
    } = match spawn(root, reaper, &req) {
        Ok(s) => s,
        Err(e) => {
            let _ = writer.send(&Response::Error(e.into_body())).await;
            return;
        }
    };
    let kill_group = || {
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    };
    if writer
        .send(&Response::Started {
            pid: pid.unsigned_abs(),
        })
        .await
        .is_err()
    {
        kill_group();
        return;
    }

    let is_pty = req.pty.is_some();
    let mut status: Option<ExitStatus> = None;
    let mut timed_out = false;
    let mut deadline = req
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut grace: Option<Instant> = None;
    let mut exited_at: Option<Instant> = None;
    // After the exit, each chunk of output moves the end of the grace period.
    let extend =
        |exited_at: Option<Instant>| exited_at.map(|t| (Instant::now() + GRACE).min(t + GRACE_MAX));
    let mut pending: Vec<u8> = Vec::new();
    let mut close_after_pending = false;
    let mut buf = vec![0u8; CHUNK];
    let mut err_buf = if err.is_some() {
        vec![0u8; CHUNK]
    } else {
        Vec::new()
    };

    loop {
        if status.is_some() && out.is_none() && err.is_none() {
            break;
        }
        let far = Instant::now() + Duration::from_secs(3600 * 24 * 365);
        tokio::select! {
            ev = async {
                match &out {
                    Some(fd) => read_event(fd, &mut buf, false).await,
                    None => std::future::pending().await,
                }
            }, if out.is_some() => {
                match ev {
                    Event::Out(n) => {
                        if forward(writer, &mut buf, n, false).await.is_err() { kill_group(); return; }
                        if exited_at.is_some() { grace = extend(exited_at); }
                    }
                    _ => out = None,
                }
            }
            ev = async {
                match &err {
                    Some(fd) => read_event(fd, &mut err_buf, true).await,
                    None => std::future::pending().await,
                }
            }, if err.is_some() => {
                match ev {
                    Event::Err(n) => {
                        if forward(writer, &mut err_buf, n, true).await.is_err() { kill_group(); return; }
                        if exited_at.is_some() { grace = extend(exited_at); }
                    }
                    _ => err = None,
                }
            }
            st = &mut exit, if status.is_none() => {
                let mut st = st.unwrap_or(ExitStatus { code: None, signal: None, timed_out: false });
                st.timed_out = timed_out;
                status = Some(st);
                exited_at = Some(Instant::now());
                grace = extend(exited_at);
                // Nothing reads stdin any more.
                input = None;
                pending.clear();
            }
            _ = sleep_until(deadline.unwrap_or(far)), if deadline.is_some() && status.is_none() => {
                kill_group();
                timed_out = true;
                deadline = None;
            }
            _ = sleep_until(grace.unwrap_or(far)), if grace.is_some() => {
                // The select may have picked this arm while output was waiting; forward
                // what is there before giving up on the pipes.
                let mut more = false;
                if let Some(fd) = &out {
                    match read_now(fd.get_ref(), &mut buf) {
                        Ok(0) => out = None,
                        Ok(n) => {
                            if forward(writer, &mut buf, n, false).await.is_err() { kill_group(); return; }
                            more = true;
                        }
                        Err(_) => {}
                    }
                }
                if let Some(fd) = &err {
                    match read_now(fd.get_ref(), &mut err_buf) {
                        Ok(0) => err = None,
                        Ok(n) => {
                            if forward(writer, &mut err_buf, n, true).await.is_err() { kill_group(); return; }
                            more = true;
                        }
                        Err(_) => {}
                    }
                }
                let capped = exited_at.is_some_and(|t| Instant::now() >= t + GRACE_MAX);
                if !more || capped {
                    break;
                }
                grace = extend(exited_at);
            }
            w = async {
                match &input {
                    Some(fd) => write_some(fd, &pending).await,
                    None => std::future::pending().await,
                }
            }, if !pending.is_empty() && input.is_some() => {
                match w {
                    Ok(n) => {
                        pending.drain(..n);
                        if pending.is_empty() && close_after_pending {
                            close_input(&mut input, is_pty).await;
                        }
                    }
                    // The process closed its stdin; further input is dropped.
                    Err(_) => { input = None; pending.clear(); }
                }
            }
            frame = reader.next(), if pending.is_empty() => {
                let line = match frame {
                    Ok(Some(line)) => line,
                    // The client went away: nobody will read the output.
                    Ok(None) | Err(FrameError::Io(_)) => { kill_group(); return; }
                    Err(FrameError::TooLarge) => {
                        kill_group();
                        let e = OpError::too_large("input frame longer than the protocol's limit");
                        let _ = writer.send(&Response::Error(e.into_body())).await;
                        return;
                    }
                };
                match serde_json::from_slice::<ExecInput>(&line) {
                    Ok(ExecInput::Stdin { data }) => {
                        if input.is_some() { pending = data.0; }
                    }
                    Ok(ExecInput::CloseStdin) => {
                        if pending.is_empty() { close_input(&mut input, is_pty).await; } else { close_after_pending = true; }
                    }
                    Ok(ExecInput::Signal { signal }) => {
                        if status.is_none() { signal_group(pid, signal); }
                    }
                    Ok(ExecInput::Resize(size)) => {
                        if let (true, Some(fd)) = (is_pty, &input) {
                            let ws = winsize(size);
                            // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which
                            // points to a live local.
                            unsafe { libc::ioctl(fd.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws); }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        kill_group();
                        let e = OpError::bad_request(format!("malformed exec input: {e}"));
                        let _ = writer.send(&Response::Error(e.into_body())).await;
                        return;
                    }
                }
            }
        }
    }

    // Output still open after the grace period: a background process holds the pipes.
    for fd in [out.take(), err.take()].into_iter().flatten() {
        tokio::spawn(drain(fd));
    }
    let st = status.unwrap_or(ExitStatus {
        code: None,
        signal: None,
        timed_out,
    });
    let _ = writer.send(&Response::Exit(st)).await;
}

/// Sends `buf[..n]` as one output frame, reusing `buf`'s allocation for the frame.
async fn forward<W: AsyncWrite + Unpin>(
    writer: &mut FrameWriter<W>,
    buf: &mut Vec<u8>,
    n: usize,
    is_err: bool,
) -> std::io::Result<()> {
    buf.truncate(n);
    let data = Bytes(std::mem::take(buf));
    let frame = if is_err {
        Response::Stderr { data }
    } else {
        Response::Stdout { data }
    };
    let sent = writer.send(&frame).await;
    if let Response::Stdout { data } | Response::Stderr { data } = frame {
        *buf = data.0;
    }
    buf.resize(CHUNK, 0);
    sent
}

/// Ends the process's input: closes the pipe, or on a terminal types the EOF character.
async fn close_input(input: &mut Option<AsyncFd<OwnedFd>>, is_pty: bool) {
    if is_pty {
        if let Some(fd) = input.as_ref() {
            // ^D at the start of a line is end of input in canonical mode.
            let _ = write_some(fd, &[4]).await;
        }
    } else {
        *input = None;
    }
}

/// Kills every running exec's process group (used on SIGTERM when envd is not pid 1).
pub(crate) fn kill_all(reaper: &Reaper) {
    for pid in reaper.running() {
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_needs_exactly_one_of_argv_and_shell() {
        let both = ExecRequest {
            argv: vec!["ls".into()],
            shell: Some("ls".into()),
            ..Default::default()
        };
        assert_eq!(command_line(&both).unwrap_err().code, "bad_request");
        assert_eq!(
            command_line(&ExecRequest::default()).unwrap_err().code,
            "bad_request"
        );
        let empty0 = ExecRequest {
            argv: vec![String::new()],
            ..Default::default()
        };
        assert_eq!(command_line(&empty0).unwrap_err().code, "bad_request");
        let sh = ExecRequest {
            shell: Some("echo hi".into()),
            ..Default::default()
        };
        assert_eq!(command_line(&sh).unwrap(), ["/bin/sh", "-c", "echo hi"]);
    }

    #[test]
    fn environment_adds_request_over_base() {
        let mut req = ExecRequest {
            argv: vec!["env".into()],
            ..Default::default()
        };
        req.env.insert("HOME".into(), "/home/agent".into());
        req.env.insert("FOO".into(), "bar".into());
        let env = environment(&req).unwrap();
        assert_eq!(env["HOME"], "/home/agent");
        assert_eq!(env["FOO"], "bar");
        assert!(env["PATH"].starts_with("/usr/local/sbin"));
        assert!(!env.contains_key("TERM"));
        req.pty = Some(PtySize { rows: 1, cols: 1 });
        assert_eq!(environment(&req).unwrap()["TERM"], "xterm-256color");
        req.env.insert("A=B".into(), "x".into());
        assert_eq!(environment(&req).unwrap_err().code, "bad_request");
    }
}
