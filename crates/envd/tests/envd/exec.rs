//! Running processes: exit statuses, streaming, stdin, timeouts, signals, process groups.

use std::time::{Duration, Instant};

use hangar_envd_client::{ExecEvent, ExecRequest};

use crate::support::{Envd, argv, gone_within, sh, zombie_children};

#[tokio::test]
async fn exit_code_is_reported() {
    let envd = Envd::start().await;
    let out = envd
        .client
        .output(sh("echo out; echo err >&2; exit 3"), 1024)
        .await
        .unwrap();
    assert_eq!(out.status.code, Some(3));
    assert_eq!(out.status.signal, None);
    assert!(!out.status.timed_out);
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
}

#[tokio::test]
async fn killing_signal_is_reported() {
    let envd = Envd::start().await;
    let out = envd.client.output(sh("kill -9 $$"), 1024).await.unwrap();
    assert_eq!(out.status.code, None);
    assert_eq!(out.status.signal, Some(9));
    assert_eq!(out.status.shell_code(), 137);
}

#[tokio::test]
async fn output_streams_before_the_process_exits() {
    let envd = Envd::start().await;
    let started = Instant::now();
    let mut exec = envd
        .client
        .exec(sh("echo one; sleep 1.5; echo two"))
        .await
        .unwrap();
    assert!(exec.pid() > 1);
    let first = exec.next_event().await.unwrap().unwrap();
    assert_eq!(first, ExecEvent::Stdout(b"one\n".to_vec()));
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "first chunk came late"
    );
    let second = exec.next_event().await.unwrap().unwrap();
    assert_eq!(second, ExecEvent::Stdout(b"two\n".to_vec()));
    assert!(
        matches!(exec.next_event().await.unwrap(), Some(ExecEvent::Exit(s)) if s.code == Some(0))
    );
    assert_eq!(exec.next_event().await.unwrap(), None);
}

#[tokio::test]
async fn stdin_round_trips_through_cat() {
    let envd = Envd::start().await;
    let mut exec = envd
        .client
        .exec(ExecRequest {
            argv: vec!["cat".into()],
            stdin: true,
            ..Default::default()
        })
        .await
        .unwrap();
    exec.send_stdin(b"hello ").await.unwrap();
    exec.send_stdin(b"world").await.unwrap();
    exec.close_stdin().await.unwrap();
    let mut out = Vec::new();
    loop {
        match exec.next_event().await.unwrap().unwrap() {
            ExecEvent::Stdout(d) => out.extend(d),
            ExecEvent::Stderr(d) => panic!("stderr: {}", String::from_utf8_lossy(&d)),
            ExecEvent::Exit(s) => {
                assert_eq!(s.code, Some(0));
                break;
            }
        }
    }
    assert_eq!(out, b"hello world");
}

#[tokio::test]
async fn stdin_is_dev_null_unless_requested() {
    let envd = Envd::start().await;
    let out = envd.client.output(argv(&["cat"]), 1024).await.unwrap();
    assert_eq!(out.status.code, Some(0));
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn large_stdin_while_output_flows_does_not_deadlock() {
    let envd = Envd::start().await;
    let mut exec = envd
        .client
        .exec(ExecRequest {
            argv: vec!["cat".into()],
            stdin: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let control = exec.control();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..16 {
            control.send_stdin(&chunk).await.unwrap();
        }
        control.close_stdin().await.unwrap();
    });
    let mut total = 0usize;
    loop {
        match exec.next_event().await.unwrap().unwrap() {
            ExecEvent::Stdout(d) => total += d.len(),
            ExecEvent::Stderr(_) => {}
            ExecEvent::Exit(s) => {
                assert_eq!(s.code, Some(0));
                break;
            }
        }
    }
    writer.await.unwrap();
    assert_eq!(total, 16 << 20);
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let envd = Envd::start().await;
    let mut req = sh("sleep 60 & echo $!; wait");
    req.timeout_ms = Some(500);
    let started = Instant::now();
    let out = envd.client.output(req, 1024).await.unwrap();
    assert!(out.status.timed_out);
    assert_eq!(out.status.signal, Some(9));
    assert!(started.elapsed() < Duration::from_secs(5));
    let grandchild: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        gone_within(grandchild, Duration::from_secs(3)),
        "grandchild {grandchild} survived"
    );
}

#[tokio::test]
async fn signal_reaches_the_process_group() {
    let envd = Envd::start().await;
    let mut exec = envd
        .client
        .exec(sh("sleep 60 & echo $!; wait"))
        .await
        .unwrap();
    let Some(ExecEvent::Stdout(pid)) = exec.next_event().await.unwrap() else {
        panic!()
    };
    let grandchild: u32 = String::from_utf8_lossy(&pid).trim().parse().unwrap();
    exec.signal(15).await.unwrap();
    let status = exec.wait().await.unwrap();
    assert_eq!(status.signal, Some(15));
    assert!(!status.timed_out);
    assert!(gone_within(grandchild, Duration::from_secs(3)));
}

#[tokio::test]
async fn client_disconnect_kills_the_process_group() {
    let envd = Envd::start().await;
    let mut exec = envd
        .client
        .exec(sh("sleep 60 & echo $!; wait"))
        .await
        .unwrap();
    let pid = exec.pid();
    let Some(ExecEvent::Stdout(out)) = exec.next_event().await.unwrap() else {
        panic!()
    };
    let grandchild: u32 = String::from_utf8_lossy(&out).trim().parse().unwrap();
    drop(exec);
    assert!(
        gone_within(pid, Duration::from_secs(3)),
        "exec {pid} survived its client"
    );
    assert!(
        gone_within(grandchild, Duration::from_secs(3)),
        "grandchild survived"
    );
    envd.client.health().await.unwrap();
}

#[tokio::test]
async fn missing_program_is_not_found_with_errno() {
    let envd = Envd::start().await;
    let err = envd
        .client
        .exec(argv(&["no-such-program-hangar"]))
        .await
        .unwrap_err();
    let body = err.remote().unwrap();
    assert_eq!(body.code, "not_found");
    assert_eq!(body.errno, Some(2));
    assert!(
        body.message.contains("no-such-program-hangar"),
        "{}",
        body.message
    );
    assert!(err.is_not_found());
}

/// Writes an executable (or, with mode 0o644, a non-executable) shell script.
fn script(path: &std::path::Path, body: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn path_lookup_passes_over_files_that_cannot_run_as_execvp_does() {
    let envd = Envd::start().await;
    let (first, second) = (envd.root.join("first"), envd.root.join("second"));
    script(&first.join("hangar-tool"), "echo first", 0o644);
    std::fs::create_dir_all(second.join("hangar-tool")).unwrap();
    let with_path = |path: String| {
        let mut req = argv(&["hangar-tool"]);
        req.env.insert("PATH".into(), path);
        req
    };
    // Only a file without execute permission and a directory by that name: EACCES.
    let path = format!("{}:{}", first.display(), second.display());
    let err = envd.client.exec(with_path(path.clone())).await.unwrap_err();
    let body = err.remote().unwrap();
    assert_eq!(
        (body.code.as_str(), body.errno),
        ("permission_denied", Some(libc::EACCES)),
        "{}",
        body.message
    );
    assert!(body.message.contains("hangar-tool"), "{}", body.message);
    // An executable one further along PATH runs.
    let third = envd.root.join("third");
    script(&third.join("hangar-tool"), "echo third", 0o755);
    let out = envd
        .client
        .output(with_path(format!("{path}:{}", third.display())), 1024)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"third\n");
}

#[tokio::test]
async fn path_lookup_keeps_argv0_and_takes_relative_entries_from_the_working_directory() {
    let envd = Envd::start().await;
    script(
        &envd.root.join("work/bin/hangar-here"),
        "echo \"$0\" here",
        0o755,
    );
    let mut req = argv(&["hangar-here"]);
    req.env.insert("PATH".into(), "/nonexistent:bin".into());
    req.cwd = Some("/work".into());
    let out = envd.client.output(req, 1024).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "bin/hangar-here here\n"
    );
    // A program found on the default PATH sees the name it was asked for as argv[0].
    let out = envd
        .client
        .output(argv(&["sh", "-c", "echo $0"]), 1024)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"sh\n");
}

#[tokio::test]
async fn missing_working_directory_is_an_error() {
    let envd = Envd::start().await;
    let mut req = argv(&["true"]);
    req.cwd = Some("/no/such/dir".into());
    let err = envd.client.exec(req).await.unwrap_err();
    assert_eq!(err.code(), Some("not_found"));
    assert!(err.to_string().contains("/no/such/dir"), "{err}");
}

#[tokio::test]
async fn working_directory_resolves_inside_the_root() {
    let envd = Envd::start().await;
    std::fs::create_dir(envd.root.join("work")).unwrap();
    let mut req = argv(&["pwd"]);
    req.cwd = Some("/work".into());
    let out = envd.client.output(req, 1024).await.unwrap();
    let pwd = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        pwd.trim(),
        envd.root
            .join("work")
            .canonicalize()
            .unwrap()
            .to_str()
            .unwrap()
    );
    // Without a cwd, the process starts at the root.
    let out = envd.client.output(argv(&["pwd"]), 1024).await.unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        envd.root.canonicalize().unwrap().to_str().unwrap()
    );
}

#[tokio::test]
async fn environment_is_the_base_plus_the_request() {
    let envd = Envd::start().await;
    let mut req = argv(&["env"]);
    req.env.insert("GREETING".into(), "hi there".into());
    let out = envd.client.output(req, 1 << 16).await.unwrap();
    let env = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<&str> = env.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "GREETING=hi there",
            "HOME=/root",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ]
    );
}

#[tokio::test]
async fn orphaned_grandchildren_are_reaped() {
    let envd = Envd::start().await;
    // The subshell exits at once, so `sleep` is orphaned and reparented to envd.
    let out = envd
        .client
        .output(sh("(sleep 0.3 >/dev/null 2>&1 & echo $!)"), 1024)
        .await
        .unwrap();
    let orphan: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        gone_within(orphan, Duration::from_secs(3)),
        "orphan {orphan} left a zombie or survived"
    );
    assert!(zombie_children(envd.pid()).is_empty());
}

#[tokio::test]
async fn exit_is_not_held_up_by_a_background_process_holding_the_pipes() {
    let envd = Envd::start().await;
    let started = Instant::now();
    let out = envd
        .client
        .output(sh("sleep 30 & echo started"), 1024)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"started\n");
    assert_eq!(out.status.code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // The background process is left running (it was meant to outlive the command).
    envd.client.health().await.unwrap();
}

#[tokio::test]
async fn output_limit_truncates_but_still_reports_exit() {
    let envd = Envd::start().await;
    let out = envd
        .client
        .output(sh("head -c 100000 /dev/zero"), 1000)
        .await
        .unwrap();
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.truncated);
    assert_eq!(out.status.code, Some(0));
}

#[tokio::test]
async fn huge_output_streams_with_bounded_memory() {
    let envd = Envd::start().await;
    let size: u64 = 1 << 30;
    let mut exec = envd
        .client
        .exec(sh(&format!("head -c {size} /dev/zero")))
        .await
        .unwrap();
    let mut total: u64 = 0;
    let mut biggest = 0;
    loop {
        match exec.next_event().await.unwrap().unwrap() {
            ExecEvent::Stdout(d) => {
                biggest = biggest.max(d.len());
                total += d.len() as u64;
            }
            ExecEvent::Stderr(_) => {}
            ExecEvent::Exit(s) => {
                assert_eq!(s.code, Some(0));
                break;
            }
        }
    }
    assert_eq!(total, size);
    assert!(biggest <= 64 * 1024);
    let peak = envd.peak_rss_kib();
    assert!(peak < 64 * 1024, "envd peaked at {peak} KiB");
    eprintln!("envd peak RSS while streaming {size} bytes: {peak} KiB");
}

#[tokio::test]
async fn many_concurrent_execs_each_get_their_own_output() {
    let envd = Envd::start().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = envd.client.clone();
        tasks.push(tokio::spawn(async move {
            let out = client
                .output(sh(&format!("echo {i}; exit {i}")), 64)
                .await
                .unwrap();
            assert_eq!(out.stdout, format!("{i}\n").as_bytes());
            assert_eq!(out.status.code, Some(i));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(zombie_children(envd.pid()).is_empty());
}

#[tokio::test]
async fn shell_and_argv_are_exclusive() {
    let envd = Envd::start().await;
    let mut req = sh("true");
    req.argv = vec!["true".into()];
    let err = envd.client.exec(req).await.unwrap_err();
    assert_eq!(err.code(), Some("bad_request"));
    let err = envd.client.exec(ExecRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Some("bad_request"));
}

#[tokio::test]
async fn a_slow_client_still_gets_all_output_after_the_exit() {
    let envd = Envd::start().await;
    for _ in 0..3 {
        let mut exec = envd
            .client
            .exec(sh("head -c 3000000 /dev/zero"))
            .await
            .unwrap();
        // The process finishes while envd is blocked on this client; what is still in the
        // pipe then must not be dropped by the grace period.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut total = 0;
        loop {
            match exec.next_event().await.unwrap().unwrap() {
                ExecEvent::Stdout(d) => total += d.len(),
                ExecEvent::Stderr(_) => {}
                ExecEvent::Exit(s) => {
                    assert_eq!(s.code, Some(0));
                    break;
                }
            }
        }
        assert_eq!(total, 3_000_000);
    }
}

#[tokio::test]
async fn children_get_the_default_sigpipe() {
    let envd = Envd::start().await;
    let out = envd
        .client
        .output(sh("yes | head -n 1"), 1024)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"y\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(out.status.code, Some(0));
}
