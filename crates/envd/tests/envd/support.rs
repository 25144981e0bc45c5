//! Starting envd on a temporary root and talking to it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hangar_envd_client::{EnvdClient, ExecRequest};

/// A running envd with a temporary root (`<tmp>/root`) and socket.
pub struct Envd {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub client: EnvdClient,
}

impl Envd {
    /// Starts envd and waits until it answers `health`.
    pub async fn start() -> Envd {
        Envd::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> Envd {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        Envd::start_in(dir, root, extra).await
    }

    /// Starts envd with the host's `/` as its root (for read-only checks).
    pub async fn start_on_host_root() -> Envd {
        Envd::start_in(tempfile::tempdir().unwrap(), PathBuf::from("/"), &[]).await
    }

    async fn start_in(dir: tempfile::TempDir, root: PathBuf, extra: &[&str]) -> Envd {
        let socket = dir.path().join("envd.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_envd"))
            .arg("--socket")
            .arg(&socket)
            .arg("--root")
            .arg(&root)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let client = EnvdClient::new(&socket);
        client.wait_ready(Duration::from_secs(10)).await.unwrap();
        Envd {
            child,
            dir,
            root,
            socket,
            client,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends raw bytes on a fresh connection and returns every line envd answers with,
    /// parsed as JSON, until it closes.
    pub fn raw(&self, bytes: &[u8]) -> Vec<serde_json::Value> {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // envd may answer and close before all bytes are written (e.g. an oversized line).
        let _ = s.write_all(bytes);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// envd's peak resident memory in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        status_field(self.pid(), "VmHWM")
    }

    /// envd's current resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        status_field(self.pid(), "VmRSS")
    }
}

impl Drop for Envd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` field of /proc/PID/status.
pub fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        shell: Some(cmd.into()),
        ..Default::default()
    }
}

pub fn argv(args: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// True once `/proc/PID` is gone (the process exited and was reaped), polling up to `within`.
pub fn gone_within(pid: u32, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Children of `pid` that are zombies.
pub fn zombie_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.len() > 1 && fields[0] == "Z" && fields[1] == pid.to_string() {
            out.push(child);
        }
    }
    out
}

pub fn error_code(v: &serde_json::Value) -> &str {
    assert_eq!(v["type"], "error", "expected an error frame, got {v}");
    v["code"].as_str().unwrap()
}
