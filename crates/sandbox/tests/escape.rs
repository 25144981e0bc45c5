//! The escape suite: from inside a sandbox, nothing reaches the host or another sandbox,
//! and the limits hold. Runs as root (CI is root); fails, never skips, where a kernel
//! feature is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Fixture, stdout};
use hangar_sandbox::Runtime;

const EPERM: &str = "err 1";

#[tokio::test]
async fn cannot_see_host_processes() {
    let f = Fixture::new();
    let sb = f.host_sandbox().await;
    let out = f
        .sh(&sb.id, "cat /proc/1/comm; ls /proc | grep -c '^[0-9]'")
        .await;
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("envd"), "pid 1 inside is envd: {text}");
    let count: u32 = lines.next().and_then(|l| l.parse().ok()).unwrap_or(999);
    assert!(
        count < 10,
        "only the sandbox's own processes are visible, saw {count}"
    );
    // The test process itself, by its host pid, cannot be signalled.
    assert_eq!(
        f.probe(&sb.id, &["kill", &std::process::id().to_string()])
            .await,
        "err 3"
    );
    assert_eq!(
        f.probe(&sb.id, &["ptrace", &std::process::id().to_string()])
            .await,
        "err 3"
    );
    f.rt.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn cannot_write_the_host_filesystem() {
    let f = Fixture::new();
    let sb = f.host_sandbox().await;
    let marker = format!("/etc/hangar-escape-{}", sb.id);
    let answer = f.probe(&sb.id, &["write", &marker]).await;
    assert_ne!(
        answer, "ok",
        "writing {marker} must fail in a host-root sandbox"
    );
    assert!(
        !std::path::Path::new(&marker).exists(),
        "{marker} appeared on the host"
    );
    // Files private to host root stay unreadable even though the host root is visible.
    assert_eq!(f.probe(&sb.id, &["read", "/etc/shadow"]).await, "err 13");
    // envd's binary is read-only.
    assert_ne!(f.probe(&sb.id, &["write", "/.hangar/envd"]).await, "ok");
    // What the sandbox may write (its scratch /tmp) stays inside it.
    assert_eq!(f.probe(&sb.id, &["write", "/tmp/inside"]).await, "ok");
    assert!(!std::path::Path::new("/tmp/inside").exists() || host_file_is_not(&sb.id));
    f.rt.destroy(&sb.id).await.unwrap();
}

fn host_file_is_not(_id: &str) -> bool {
    std::fs::read("/tmp/inside")
        .map(|b| b != b"escaped")
        .unwrap_or(true)
}

#[tokio::test]
async fn cannot_mount_remount_or_unshare() {
    let f = Fixture::new();
    let sb = f.host_sandbox().await;
    for op in [
        "mount",
        "remount-root",
        "umount-proc",
        "unshare-user",
        "unshare-net",
    ] {
        assert_eq!(f.probe(&sb.id, &[op]).await, EPERM, "{op} must be refused");
    }
    let out = f
        .sh(&sb.id, "awk '$5 == \"/\"' /proc/self/mountinfo | wc -l")
        .await;
    assert_eq!(stdout(&out).trim(), "1", "the root mount is unchanged");
    f.rt.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn cannot_touch_kernel_global_state() {
    let f = Fixture::new();
    let sb = f.host_sandbox().await;
    for op in ["load-module", "reboot", "set-clock", "bpf", "keyctl"] {
        assert_eq!(f.probe(&sb.id, &[op]).await, EPERM, "{op} must be refused");
    }
    assert_eq!(
        f.probe(&sb.id, &["mknod"]).await,
        EPERM,
        "device nodes cannot be created"
    );
    f.rt.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn dev_holds_the_hosts_device_nodes_and_nothing_more() {
    let f = Fixture::new();
    let sb = f.host_sandbox().await;
    let nodes =
        "for d in null zero full random urandom tty; do stat -c '%n %F %t:%T %a' /dev/$d; done";
    let host = std::process::Command::new("sh")
        .args(["-c", nodes])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&f.sh(&sb.id, nodes).await),
        String::from_utf8_lossy(&host.stdout),
        "the same devices with the same modes as the host's"
    );
    let out = f
        .sh(
            &sb.id,
            "ls -A /dev | tr '\\n' ' '; echo; stat -c '%u %a' /dev; \
             echo x > /dev/null && echo null ok; head -c 3 /dev/zero | od -An -tx1; \
             head -c 16 /dev/urandom | wc -c; echo x 2>/dev/null > /dev/full || echo full refused",
        )
        .await;
    assert_eq!(
        stdout(&out).lines().map(str::trim).collect::<Vec<_>>(),
        [
            "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero",
            "0 755",
            "null ok",
            "00 00 00",
            "16",
            "full refused",
        ],
        "{out:?}"
    );
    f.rt.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn proc_and_sys_are_masked_and_read_only() {
    let f = Fixture::new();
    let sb = f.host_sandbox().await;
    assert_ne!(
        f.probe(&sb.id, &["write", "/proc/sys/kernel/hostname"])
            .await,
        "ok"
    );
    assert_ne!(
        f.probe(&sb.id, &["write", "/proc/sysrq-trigger"]).await,
        "ok"
    );
    assert_ne!(
        f.probe(&sb.id, &["write", "/sys/kernel/uevent_helper"])
            .await,
        "ok"
    );
    let out = f
        .sh(&sb.id, "wc -c < /proc/keys; ls /sys/firmware | wc -l")
        .await;
    assert_eq!(
        stdout(&out).split_whitespace().collect::<Vec<_>>(),
        ["0", "0"]
    );
    f.rt.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn no_network_when_networking_is_off() {
    let f = Fixture::new();
    // A server on the host's loopback that the sandbox must not reach.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sb = f.host_sandbox().await;
    // The sandbox's own loopback: nothing listens there.
    assert_eq!(
        f.probe(&sb.id, &["connect-tcp", &format!("127.0.0.1:{port}")])
            .await,
        "err 111"
    );
    // Anything else: no route.
    assert_eq!(
        f.probe(&sb.id, &["connect-tcp", "10.0.0.1:80"]).await,
        "err 101"
    );
    let out = f
        .sh(
            &sb.id,
            "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '",
        )
        .await;
    assert_eq!(stdout(&out).trim(), "lo", "only loopback exists");
    f.rt.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn cannot_reach_another_sandboxs_envd() {
    let f = Fixture::new();
    let a = f.host_sandbox().await;
    let b = f.host_sandbox().await;
    let b_socket = b.socket.display().to_string();
    assert_eq!(
        f.probe(&a.id, &["connect-unix", &b_socket]).await,
        "err 2",
        "{b_socket} is not visible"
    );
    // Not even its own envd's socket is inside it: envd got the listening descriptor.
    let out = f
        .sh(
            &a.id,
            "ls -A /.hangar; find / -xdev -type s 2>/dev/null | wc -l",
        )
        .await;
    assert_eq!(
        stdout(&out).split_whitespace().collect::<Vec<_>>(),
        ["envd", "0"]
    );
    f.rt.destroy(&a.id).await.unwrap();
    f.rt.destroy(&b.id).await.unwrap();
}

#[tokio::test]
async fn fork_bomb_is_stopped_by_the_pids_limit() {
    let f = Fixture::new();
    let sb = f.host_sandbox_with(|l| l.pids = 32).await;
    let envd = f.rt.envd(&sb.id).await.unwrap();
    let bomb = hangar_protocol::envd::ExecRequest {
        shell: Some("for i in $(seq 100); do sleep 2 & done; wait".into()),
        timeout_ms: Some(30_000),
        ..Default::default()
    };
    let exec = envd.exec(bomb).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let usage = f.rt.stats(&sb.id).await.unwrap();
    assert!(
        usage.pids > 20 && usage.pids <= 32,
        "the limit of 32 holds: {usage:?}"
    );
    let out = exec.wait().await.unwrap();
    // dash gives up with "Cannot fork" (exit 2) when the limit refuses a fork.
    assert_eq!(out.code, Some(2), "the shell's forks were refused: {out:?}");
    // Once the sleeps end the sandbox is usable again.
    assert_eq!(stdout(&f.sh(&sb.id, "echo alive").await).trim(), "alive");
    f.rt.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn memory_bomb_is_oom_killed_and_reported() {
    let f = Fixture::new();
    let sb = f.host_sandbox_with(|l| l.memory_bytes = 64 << 20).await;
    let answer = f.probe(&sb.id, &["alloc", "1024"]).await;
    assert_eq!(answer, "", "the bomb was killed before it could answer");
    let usage = f.rt.stats(&sb.id).await.unwrap();
    assert!(
        usage.oom_kills >= 1,
        "the kernel's OOM killer acted: {usage:?}"
    );
    // The sandbox itself survives its process being killed.
    assert_eq!(stdout(&f.sh(&sb.id, "echo alive").await).trim(), "alive");
    f.rt.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn init_killed_by_oom_is_reported_dead_as_oom() {
    let f = Fixture::new();
    let sb = f.host_sandbox_with(|l| l.memory_bytes = 64 << 20).await;
    // A process started before envd's OOM score is raised keeps the default score; then
    // envd is made the OOM killer's first choice and the process exhausts memory.
    let envd = f.rt.envd(&sb.id).await.unwrap();
    let _ = f.probe(&sb.id, &["read", "/dev/null"]).await;
    let bomb = envd
        .exec(hangar_protocol::envd::ExecRequest {
            shell: Some("read go; exec /tmp/escape-probe alloc 1024".into()),
            stdin: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let _ = f.sh(&sb.id, "echo 1000 > /proc/1/oom_score_adj").await;
    bomb.control().send_stdin(b"go\n").await.unwrap();
    let status = f.wait_until_not_running(&sb.id).await;
    match status {
        hangar_sandbox::Status::Dead { oom_killed, reason } => {
            assert!(oom_killed, "reason: {reason}");
            assert!(reason.contains("OOM"), "{reason}");
        }
        other => panic!("expected dead, got {other:?}"),
    }
    f.rt.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn busy_loop_is_held_to_its_cpu_quota() {
    let f = Fixture::new();
    let sb = f.host_sandbox_with(|l| l.cpus = 0.2).await;
    let before = f.rt.stats(&sb.id).await.unwrap().cpu_usec;
    let started = Instant::now();
    let _ = f.sh(&sb.id, "timeout 1 sh -c 'while :; do :; done'").await;
    let wall = started.elapsed().as_micros() as f64;
    let used = (f.rt.stats(&sb.id).await.unwrap().cpu_usec - before) as f64;
    let share = used / wall;
    assert!(share < 0.35, "a 0.2-CPU sandbox used {share:.2} CPUs");
    assert!(share > 0.05, "the loop did run ({share:.2} CPUs)");
    f.rt.destroy(&sb.id).await.unwrap();
}
