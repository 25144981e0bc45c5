//! Startup, health, readiness, shutdown and idle footprint.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use hangar_envd_client::EnvdClient;
use hangar_protocol::envd::PROTOCOL_VERSION;

use crate::support::{Envd, gone_within, sh};

#[tokio::test]
async fn health_reports_protocol_version_and_pid() {
    let envd = Envd::start().await;
    let h = envd.client.health().await.unwrap();
    assert_eq!(h.protocol, PROTOCOL_VERSION);
    assert_eq!(h.pid, envd.pid());
    assert!(!h.version.is_empty());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(envd.client.health().await.unwrap().uptime_ms >= 20);
}

#[tokio::test]
async fn ready_fd_gets_one_byte_once_listening_and_a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("envd.sock");
    // A stale socket file from an earlier run.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    // Close-on-exec, so that only the dup2'd copy reaches envd and EOF follows its byte.
    let (read_end, write_end): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let raw = write_end.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_envd"));
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--root")
        .arg(dir.path())
        .arg("--ready-fd")
        .arg("3");
    // SAFETY: dup2 in the child before exec, on descriptors open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    drop(write_end);
    let mut ready = std::fs::File::from(read_end);
    let mut buf = Vec::new();
    // EOF after the byte: envd closed its end.
    ready.read_to_end(&mut buf).unwrap();
    let took = started.elapsed();
    assert_eq!(buf.len(), 1);
    // Listening already: no retry needed.
    EnvdClient::new(&socket).health().await.unwrap();
    eprintln!("envd ready after {took:?}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn sigterm_kills_running_processes_and_exits_zero() {
    let mut envd = Envd::start().await;
    let mut exec = envd
        .client
        .exec(sh("sleep 60 & echo $!; wait"))
        .await
        .unwrap();
    let pid = exec.pid();
    let Some(hangar_envd_client::ExecEvent::Stdout(out)) = exec.next_event().await.unwrap() else {
        panic!()
    };
    let grandchild: u32 = String::from_utf8_lossy(&out).trim().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(envd.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = envd.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(gone_within(pid, Duration::from_secs(3)));
    assert!(gone_within(grandchild, Duration::from_secs(3)));
    assert!(!envd.socket.exists());
}

#[tokio::test]
async fn idle_envd_is_small() {
    let envd = Envd::start().await;
    // Some work first, so the number reflects a used daemon that went idle.
    for _ in 0..5 {
        envd.client.output(sh("echo hi"), 1024).await.unwrap();
        envd.client.list_dir("/").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss = envd.rss_kib();
    let threads = std::fs::read_dir(format!("/proc/{}/task", envd.pid()))
        .unwrap()
        .count();
    eprintln!("idle envd: RSS {rss} KiB, {threads} thread(s)");
    assert!(rss < 4 * 1024, "idle envd uses {rss} KiB");
    assert_eq!(threads, 1, "idle envd keeps threads");
}

#[tokio::test]
async fn client_errors_name_the_socket_and_wait_ready_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let client = EnvdClient::new(&socket);
    let err = client.health().await.unwrap_err();
    assert!(matches!(err, hangar_envd_client::Error::Connect { .. }));
    assert!(err.to_string().contains("absent.sock"), "{err}");
    assert_eq!(err.code(), None);
    let started = Instant::now();
    let err = client
        .wait_ready(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(err, hangar_envd_client::Error::NotReady { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn wait_ready_succeeds_once_envd_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("late.sock");
    let client = EnvdClient::new(&socket);
    let waiting = tokio::spawn(async move { client.wait_ready(Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_envd"))
        .arg("--socket")
        .arg(&socket)
        .arg("--root")
        .arg(dir.path())
        .spawn()
        .unwrap();
    let health = waiting.await.unwrap().unwrap();
    assert_eq!(health.pid, child.id());
    child.kill().unwrap();
    child.wait().unwrap();
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn as_pid_1_envd_reaps_orphans_and_sigterm_kills_everything() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("envd.sock");
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_envd"))
        .arg("--socket")
        .arg(&socket)
        .arg("--root")
        .arg(dir.path())
        .spawn()
        .expect("this test needs unshare(1) from util-linux and root");
    let client = EnvdClient::new(&socket);
    let health = client.wait_ready(Duration::from_secs(10)).await.unwrap();
    assert_eq!(health.pid, 1, "envd should be pid 1 in its pid namespace");
    let envd_pid = children_of(unshare.id())[0];

    // Orphans reparent to pid 1 and must not stay zombies.
    for _ in 0..5 {
        client
            .output(sh("(sleep 0.1 >/dev/null 2>&1 &); echo ok"), 64)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(crate::support::zombie_children(envd_pid).is_empty());

    // A background process outlives its command, as a child of envd.
    client
        .output(sh("sleep 60 >/dev/null 2>&1 &"), 64)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let survivors = children_of(envd_pid);
    assert_eq!(survivors.len(), 1, "{survivors:?}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(envd_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = unshare.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(gone_within(survivors[0], Duration::from_secs(3)));
}
