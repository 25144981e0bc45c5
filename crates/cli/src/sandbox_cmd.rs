//! `hangar sandbox …`: direct use of the local runtime on this machine.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hangar_config::{Config, parse_size};
use hangar_protocol::envd::{ExecRequest, PtySize};
use hangar_sandbox::{LocalRuntime, Network, Runtime, Sandbox, SandboxError, SandboxSpec, Status};

#[derive(Subcommand)]
pub enum SandboxCommand {
    /// Start a sandbox and print its id.
    Create(CreateArgs),
    /// Run a command in a sandbox; exits with the command's exit code.
    Exec(ExecArgs),
    /// Open an interactive shell in a sandbox.
    Shell {
        /// The sandbox.
        id: String,
    },
    /// List sandboxes.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop sandboxes, keeping their files.
    Stop {
        /// The sandboxes.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove sandboxes and everything they had.
    Rm {
        /// The sandboxes.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// `host` (the host's root, read-only; weaker isolation), a rootfs directory, or a
    /// rootfs tarball.
    #[arg(long, default_value = "host")]
    rootfs: String,
    /// Memory limit, e.g. 512MiB (default from the config).
    #[arg(long)]
    memory: Option<String>,
    /// CPU quota in CPUs, e.g. 0.5.
    #[arg(long)]
    cpus: Option<f64>,
    /// Process limit.
    #[arg(long)]
    pids: Option<u64>,
    /// Network: `none` (loopback only) or `egress` (outbound through NAT; the host's
    /// services and other sandboxes stay unreachable).
    #[arg(long, default_value = "none")]
    network: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ExecArgs {
    /// Keep stdin open and forward it.
    #[arg(short, long)]
    interactive: bool,
    /// Run on a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Working directory inside the sandbox.
    #[arg(long)]
    cwd: Option<String>,
    /// Environment variable K=V (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Kill the command after this many seconds.
    #[arg(long)]
    timeout: Option<f64>,
    /// The sandbox.
    id: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub async fn run(cmd: SandboxCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let rt = LocalRuntime::open(config)?;
    match cmd {
        SandboxCommand::Create(a) => create(&rt, a).await,
        SandboxCommand::Exec(a) => exec(&rt, a).await,
        SandboxCommand::Shell { id } => {
            let a = ExecArgs {
                interactive: true,
                tty: true,
                cwd: Some("/".into()),
                env: Vec::new(),
                timeout: None,
                id,
                command: vec!["/bin/sh".into(), "-l".into()],
            };
            exec(&rt, a).await
        }
        SandboxCommand::Ls { json } => {
            let list = rt.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<16} {:<10} {:<10} {:<9} ROOTFS",
                    "ID", "STATUS", "MEMORY", "PIDS"
                );
                for sb in list {
                    let usage = rt.stats(&sb.id).await.unwrap_or_default();
                    println!(
                        "{:<16} {:<10} {:<10} {:<9} {}",
                        sb.id,
                        status_word(&sb.status),
                        format!("{}MiB", usage.memory_bytes >> 20),
                        usage.pids,
                        rootfs_word(&sb)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SandboxCommand::Stop { ids } => {
            let mut failed = false;
            for id in ids {
                failed |= said_failure(rt.stop(&id).await);
            }
            Ok(exit_code(failed))
        }
        SandboxCommand::Rm { ids } => {
            // One sandbox that cannot go does not keep the others.
            let mut failed = false;
            for id in ids {
                failed |= said_failure(rt.destroy_wait(&id).await);
            }
            Ok(exit_code(failed))
        }
    }
}

/// Prints a failure on its own line; true when there was one.
fn said_failure(result: Result<(), SandboxError>) -> bool {
    match result {
        Ok(()) => false,
        Err(e) => {
            eprintln!("hangar: {e}");
            true
        }
    }
}

fn exit_code(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn status_word(s: &Status) -> String {
    match s {
        Status::Creating => "creating".into(),
        Status::Running => "running".into(),
        Status::Stopped => "stopped".into(),
        Status::Dead { reason, .. } => format!("dead ({reason})"),
    }
}

fn rootfs_word(sb: &Sandbox) -> String {
    match &sb.spec.rootfs {
        hangar_sandbox::Rootfs::HostRoot => "host".into(),
        hangar_sandbox::Rootfs::Layers { layers }
        | hangar_sandbox::Rootfs::LayersOverHost { layers } => layers
            .iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(":"),
    }
}

async fn create(rt: &LocalRuntime, a: CreateArgs) -> anyhow::Result<ExitCode> {
    let mut limits = rt.default_limits();
    if let Some(m) = &a.memory {
        limits.memory_bytes = parse_size(m).map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
    }
    if let Some(c) = a.cpus {
        limits.cpus = c;
    }
    if let Some(p) = a.pids {
        limits.pids = p;
    }
    let network = match a.network.as_str() {
        "none" => Network::None,
        "egress" => Network::Egress,
        other => bail!("--network {other}: expected `none` or `egress`"),
    };
    let rootfs = rt.prepare_rootfs(&a.rootfs)?;
    let sb = rt
        .create(SandboxSpec {
            rootfs,
            limits,
            network,
        })
        .await?;
    if a.json {
        let mut v = serde_json::to_value(&sb)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("status".into(), "running".into());
        }
        println!("{v}");
    } else {
        println!("{}", sb.id);
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--env {kv}: expected KEY=VALUE"),
        })
        .collect()
}

async fn exec(rt: &LocalRuntime, a: ExecArgs) -> anyhow::Result<ExitCode> {
    let envd = rt.envd(&a.id).await?;
    let pty = if a.tty { Some(terminal_size()) } else { None };
    let req = ExecRequest {
        argv: a.command.clone(),
        shell: None,
        cwd: a.cwd.clone(),
        env: parse_env(&a.env)?,
        stdin: a.interactive,
        timeout_ms: a.timeout.map(|t| (t * 1000.0) as u64),
        pty,
    };
    let oom_before = rt.stats(&a.id).await.map(|u| u.oom_kills).unwrap_or(0);
    let status = stream_exec(&envd, req, a.tty)
        .await
        .with_context(|| format!("running {} in {}", a.command[0], a.id))?;
    let _ = std::io::stdout().flush();
    // SIGKILL alone does not say why; the sandbox's OOM counter does.
    let oom_after = rt.stats(&a.id).await.map(|u| u.oom_kills).unwrap_or(0);
    if status == 128 + libc::SIGKILL && oom_after > oom_before {
        eprintln!("hangar: the command was killed: out of memory (the sandbox's memory limit)");
    }
    Ok(ExitCode::from(status.clamp(0, 255) as u8))
}

/// Runs an exec, copying its output to ours (and our stdin to it when asked); returns the
/// shell-style exit code.
pub async fn stream_exec(
    envd: &hangar_sandbox::EnvdClient,
    req: ExecRequest,
    raw_terminal: bool,
) -> anyhow::Result<i32> {
    use hangar_envd_client::ExecEvent;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let forward_stdin = req.stdin;
    let mut exec = match envd.exec(req).await {
        Ok(exec) => exec,
        // The shell convention for a missing command (or working directory).
        Err(e) if e.code() == Some("not_found") => {
            let message = e.remote().map(|b| b.message.clone()).unwrap_or_default();
            eprintln!("hangar: in the sandbox: {message}");
            return Ok(127);
        }
        Err(e) => return Err(e.into()),
    };
    let _raw = if raw_terminal {
        RawTerminal::enter()
    } else {
        None
    };
    let control = exec.control();
    if forward_stdin {
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = control.close_stdin().await;
                        break;
                    }
                    Ok(n) => {
                        if control.send_stdin(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    if raw_terminal {
        let control = exec.control();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if control.resize(terminal_size()).await.is_err() {
                    break;
                }
            }
        });
    }
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    loop {
        match exec.next_event().await? {
            Some(ExecEvent::Stdout(b)) => {
                out.write_all(&b).await?;
                out.flush().await?;
            }
            Some(ExecEvent::Stderr(b)) => {
                err.write_all(&b).await?;
                err.flush().await?;
            }
            Some(ExecEvent::Exit(status)) => {
                if status.timed_out {
                    eprintln!("hangar: the command timed out and was killed");
                }
                return Ok(status.shell_code());
            }
            None => bail!("envd closed the connection before the command ended"),
        }
    }
}

/// The size of our terminal, or 24x80 when stdout is not one.
fn terminal_size() -> PtySize {
    // SAFETY: TIOCGWINSZ writes a winsize into the zeroed struct we pass.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: see above; fd 1 may not be a terminal, in which case the call fails.
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 0 && ws.ws_col > 0 {
        PtySize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        }
    } else {
        PtySize { rows: 24, cols: 80 }
    }
}

/// Puts our terminal in raw mode (keys go straight to the sandbox's terminal) and restores
/// it when dropped.
struct RawTerminal(nix::sys::termios::Termios);

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use nix::sys::termios::{SetArg, tcsetattr};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.0);
    }
}
