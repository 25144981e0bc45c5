//! Terminal execs: size, resize, echo.

use std::time::Duration;

use hangar_envd_client::{Exec, ExecEvent, ExecRequest, PtySize};

use crate::support::Envd;

/// Reads terminal output until it contains `needle`; returns everything read.
async fn read_until(exec: &mut Exec, seen: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(needle) {
        let ev = tokio::time::timeout_at(deadline, exec.next_event())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {seen:?}"))
            .unwrap();
        match ev {
            Some(ExecEvent::Stdout(d)) => seen.push_str(&String::from_utf8_lossy(&d)),
            Some(ExecEvent::Stderr(_)) => panic!("a terminal exec has no separate stderr"),
            Some(ExecEvent::Exit(s)) => panic!("exited {s:?} before {needle:?}; saw {seen:?}"),
            None => panic!("ended"),
        }
    }
}

#[tokio::test]
async fn stty_reports_the_requested_then_resized_size_and_input_echoes() {
    let envd = Envd::start().await;
    let req = ExecRequest {
        shell: Some("stty size; read line; stty size; echo \"got $line\"; echo $TERM".into()),
        pty: Some(PtySize { rows: 24, cols: 80 }),
        ..Default::default()
    };
    let mut exec = envd.client.exec(req).await.unwrap();
    let mut seen = String::new();
    read_until(&mut exec, &mut seen, "24 80").await;
    exec.resize(PtySize {
        rows: 40,
        cols: 132,
    })
    .await
    .unwrap();
    exec.send_stdin(b"hello\n").await.unwrap();
    // The terminal echoes what was typed.
    read_until(&mut exec, &mut seen, "hello").await;
    read_until(&mut exec, &mut seen, "40 132").await;
    read_until(&mut exec, &mut seen, "got hello").await;
    read_until(&mut exec, &mut seen, "xterm-256color").await;
    let status = exec.wait().await.unwrap();
    assert_eq!(status.code, Some(0));
}

#[tokio::test]
async fn terminal_is_the_controlling_tty() {
    let envd = Envd::start().await;
    let req = ExecRequest {
        shell: Some("tty; test -t 0 && test -t 1 && test -t 2 && echo all-tty".into()),
        pty: Some(PtySize { rows: 10, cols: 20 }),
        ..Default::default()
    };
    let out = envd.client.output(req, 4096).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("all-tty"), "{text}");
    assert!(out.stderr.is_empty());
    assert_eq!(out.status.code, Some(0));
}

#[tokio::test]
async fn close_stdin_ends_input_on_a_terminal() {
    let envd = Envd::start().await;
    let req = ExecRequest {
        argv: vec!["cat".into()],
        pty: Some(PtySize { rows: 10, cols: 40 }),
        ..Default::default()
    };
    let mut exec = envd.client.exec(req).await.unwrap();
    exec.send_stdin(b"abc\n").await.unwrap();
    let mut seen = String::new();
    read_until(&mut exec, &mut seen, "abc").await;
    exec.close_stdin().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), exec.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code, Some(0));
}
