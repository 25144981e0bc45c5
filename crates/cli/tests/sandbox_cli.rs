//! `hangar sandbox …` end to end: the real binary against the local runtime.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Cli {
        hangar_testkit::require_root();
        Cli {
            dir: hangar_testkit::scratch_dir(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(args)
            .env("HANGAR_DATA_DIR", self.dir.path())
            .env_remove("HANGAR_CONFIG")
            .output()
            .expect("run hangar")
    }

    fn create(&self) -> String {
        let out = self.run(&["sandbox", "create", "--memory", "256MiB"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One line on stderr, starting with `hangar:`, and a failing exit code.
fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "should fail: {out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("hangar: "), "{err:?}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
}

#[test]
fn create_exec_ls_rm_round_trip() {
    let cli = Cli::new();
    let id = cli.create();
    assert!(id.starts_with("sb-"), "{id}");

    let out = cli.run(&[
        "sandbox",
        "exec",
        "--cwd",
        "/tmp",
        "--env",
        "GREETING=hi",
        &id,
        "--",
        "sh",
        "-c",
        "echo $GREETING from $(pwd); echo oops >&2; exit 7",
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "the command's exit code is ours"
    );
    assert_eq!(text(&out.stdout), "hi from /tmp\n");
    assert_eq!(text(&out.stderr), "oops\n");

    let out = cli.run(&["sandbox", "ls", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"]["state"], "running");

    let out = cli.run(&["sandbox", "ls"]);
    assert!(text(&out.stdout).contains(&id));

    assert!(cli.run(&["sandbox", "rm", &id]).status.success());
    let out = cli.run(&["sandbox", "ls", "--json"]);
    assert_eq!(text(&out.stdout).trim(), "[]");
}

#[test]
fn create_json_prints_one_document() {
    let cli = Cli::new();
    let out = cli.run(&["sandbox", "create", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "running");
    let id = v["id"].as_str().unwrap().to_string();
    assert!(cli.run(&["sandbox", "rm", &id]).status.success());
}

#[test]
fn exec_stdin_and_timeout() {
    let cli = Cli::new();
    let id = cli.create();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["sandbox", "exec", "-i", &id, "--", "tr", "a-z", "A-Z"])
        .env("HANGAR_DATA_DIR", cli.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "SHOUT\n");

    let out = cli.run(&[
        "sandbox",
        "exec",
        "--timeout",
        "0.2",
        &id,
        "--",
        "sleep",
        "30",
    ]);
    assert_eq!(out.status.code(), Some(137), "killed by SIGKILL");
    assert!(text(&out.stderr).contains("timed out"));
    cli.run(&["sandbox", "rm", &id]);
}

#[test]
fn a_command_killed_for_memory_is_reported_as_out_of_memory() {
    let cli = Cli::new();
    let out = cli.run(&["sandbox", "create", "--memory", "32MiB"]);
    let id = text(&out.stdout).trim().to_string();
    let out = cli.run(&[
        "sandbox",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "x=a; while :; do x=$x$x; done",
    ]);
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("out of memory"),
        "{}",
        text(&out.stderr)
    );
    cli.run(&["sandbox", "rm", &id]);
}

#[test]
fn bad_input_gets_one_clear_line() {
    let cli = Cli::new();
    assert_one_line_error(
        &cli.run(&["sandbox", "create", "--rootfs", "/no/such/rootfs"]),
        "No such file",
    );
    assert_one_line_error(
        &cli.run(&["sandbox", "create", "--memory", "lots"]),
        "--memory",
    );
    assert_one_line_error(
        &cli.run(&["sandbox", "create", "--network", "bogus"]),
        "--network",
    );
    assert_one_line_error(
        &cli.run(&["sandbox", "exec", "sb-nope", "--", "true"]),
        "no sandbox with id sb-nope",
    );
    assert_one_line_error(
        &cli.run(&["sandbox", "rm", "sb-nope"]),
        "no sandbox with id sb-nope",
    );
    // An unknown id among several: said, and the others are still removed.
    let doomed = cli.create();
    assert_one_line_error(
        &cli.run(&["sandbox", "rm", "sb-nope", &doomed]),
        "no sandbox with id sb-nope",
    );
    assert!(
        !text(&cli.run(&["sandbox", "ls"]).stdout).contains(&doomed),
        "{doomed} was removed despite the unknown id before it"
    );
    let id = cli.create();
    let out = cli.run(&["sandbox", "exec", &id, "--", "no-such-command"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "the shell convention for a missing command"
    );
    assert!(
        text(&out.stderr).contains("no-such-command"),
        "{}",
        text(&out.stderr)
    );
    assert_one_line_error(
        &cli.run(&["sandbox", "exec", "--env", "NOEQUALS", &id, "--", "true"]),
        "KEY=VALUE",
    );
    let out = cli.run(&[
        "sandbox",
        "exec",
        "--cwd",
        "/no/such/dir",
        &id,
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("/no/such/dir"),
        "{}",
        text(&out.stderr)
    );
    cli.run(&["sandbox", "rm", &id]);
    // A broken config file is named in the error.
    let cfg = cli.dir.path().join("bad.toml");
    std::fs::write(&cfg, "listen = 3").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["sandbox", "ls"])
        .env("HANGAR_CONFIG", &cfg)
        .env("HANGAR_DATA_DIR", cli.dir.path())
        .output()
        .unwrap();
    assert_one_line_error(&out, "bad.toml");
}

#[test]
fn a_closed_pipe_ends_the_command_quietly_not_with_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let cli = Cli::new();
    let id = cli.create();
    let (read, write) = std::io::pipe().unwrap();
    drop(read);
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["sandbox", "ls", "--json"])
        .env("HANGAR_DATA_DIR", cli.dir.path())
        .stdout(write)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{out:?}");
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
    cli.run(&["sandbox", "rm", &id]);
}
