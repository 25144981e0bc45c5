//! Shared set-up for the sandbox suites: a runtime on a scratch tmpfs directory and
//! helpers to run commands and the escape probe inside a sandbox.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use hangar_envd_client::Output;
use hangar_protocol::envd::ExecRequest;
use hangar_sandbox::{Limits, LocalRuntime, Network, Rootfs, Runtime, Sandbox, SandboxSpec};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: hangar_config::Config,
    pub rt: LocalRuntime,
}

impl Fixture {
    pub fn new() -> Fixture {
        hangar_testkit::require_root();
        let dir = hangar_testkit::scratch_dir();
        let mut config = hangar_config::Config {
            data_dir: dir.path().join("data"),
            ..Default::default()
        };
        config.sandbox.tools_dir = Some(hangar_testkit::bin_dir());
        let rt = LocalRuntime::open(&config).expect("open the local runtime");
        Fixture { dir, config, rt }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            memory_bytes: 256 << 20,
            pids: 256,
            cpus: 1.0,
        }
    }

    pub async fn host_sandbox(&self) -> Sandbox {
        self.create(Rootfs::HostRoot, self.limits()).await
    }

    /// A host-root sandbox with changed limits.
    pub async fn host_sandbox_with(&self, change: impl FnOnce(&mut Limits)) -> Sandbox {
        let mut limits = self.limits();
        change(&mut limits);
        self.create(Rootfs::HostRoot, limits).await
    }

    /// Polls until the sandbox is no longer running (at most 10 s) and returns its status.
    pub async fn wait_until_not_running(&self, id: &str) -> hangar_sandbox::Status {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let s = self.rt.get(id).await.expect("get").status;
            if s != hangar_sandbox::Status::Running || std::time::Instant::now() > deadline {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub async fn create(&self, rootfs: Rootfs, limits: Limits) -> Sandbox {
        self.rt
            .create(SandboxSpec {
                rootfs,
                limits,
                network: Network::None,
            })
            .await
            .expect("create a sandbox")
    }

    /// Runs a shell command in the sandbox and collects its output.
    pub async fn sh(&self, id: &str, cmd: &str) -> Output {
        let envd = self.rt.envd(id).await.expect("envd client");
        envd.output(
            ExecRequest {
                shell: Some(cmd.into()),
                timeout_ms: Some(60_000),
                ..Default::default()
            },
            1 << 20,
        )
        .await
        .expect("exec")
    }

    /// Copies the escape probe into the sandbox (once) and runs one operation; returns
    /// its answer: `ok` or `err <errno>`.
    pub async fn probe(&self, id: &str, args: &[&str]) -> String {
        let envd = self.rt.envd(id).await.expect("envd client");
        if envd.stat("/tmp/escape-probe").await.is_err() {
            let bin = std::fs::read(hangar_testkit::bin("escape-probe")).expect("read probe");
            envd.write_file(
                "/tmp/escape-probe",
                &bin,
                hangar_envd_client::WriteOptions {
                    mode: Some(0o755),
                    create_parents: false,
                },
            )
            .await
            .expect("copy the probe in");
        }
        let mut argv = vec!["/tmp/escape-probe".to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        let out = envd
            .output(
                ExecRequest {
                    argv,
                    timeout_ms: Some(60_000),
                    ..Default::default()
                },
                1 << 16,
            )
            .await
            .expect("run the probe");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Sandboxes outlive the process that made them, so a failed test would leak its own:
/// whatever is left is destroyed when the fixture goes.
impl Drop for Fixture {
    fn drop(&mut self) {
        hangar_testkit::remove_sandboxes(&self.config.data_dir);
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
