//! Live snapshots on the real sandbox runtime (root): a running sandbox is frozen, its
//! writes sealed and the sandbox thawed; it keeps running with its files, a sandbox
//! restored from the snapshot sees exactly the files of that moment, and gc keeps what a
//! snapshot references.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use hangar_images::{Snapshots, Store};
use hangar_protocol::envd::ExecRequest;
use hangar_sandbox::{LocalRuntime, Network, Rootfs, Runtime, SandboxSpec, Status};

/// Destroys the test's sandboxes when it ends, also when it failed.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        hangar_testkit::remove_sandboxes(&self.0);
    }
}

async fn sh(runtime: &LocalRuntime, id: &str, script: &str) -> String {
    let out = runtime
        .envd(id)
        .await
        .unwrap()
        .output(
            ExecRequest {
                shell: Some(script.into()),
                ..Default::default()
            },
            1 << 16,
        )
        .await
        .unwrap();
    assert_eq!(
        out.status.code,
        Some(0),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_live_snapshot_leaves_the_sandbox_running_and_restores_that_moment() {
    hangar_testkit::require_root();
    let dir = hangar_testkit::scratch_dir();
    let mut config = hangar_config::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.sandbox.tools_dir = Some(hangar_testkit::bin_dir());
    let _cleanup = Cleanup(config.data_dir.clone());
    let runtime = Arc::new(LocalRuntime::open(&config).unwrap());
    let store = Store::open(&config.data_dir).unwrap();
    let snapshots = Snapshots::new(runtime.clone(), store.clone(), config.clone());
    let spec = SandboxSpec {
        rootfs: Rootfs::HostRoot,
        limits: runtime.default_limits(),
        network: Network::None,
    };
    let sb = runtime.create(spec.clone()).await.unwrap();
    sh(
        &runtime,
        &sb.id,
        "mkdir -p /workspace/src && cd /workspace && echo one > src/a.txt && \
         echo untracked > notes.txt && ln -s src/a.txt link && chmod 640 notes.txt && \
         mkfifo pipe",
    )
    .await;
    // A process busy writing while the snapshot is taken: frozen, then resumed.
    sh(
        &runtime,
        &sb.id,
        "setsid -f sh -c 'cd /workspace; i=0; while :; do i=$((i+1)); echo $i > n.tmp; \
         mv n.tmp counter; done' >/dev/null 2>&1; sleep 0.2",
    )
    .await;

    let snap = snapshots.take(&sb.id).await.unwrap();
    assert!(snap.meta.snapshot_of.is_some(), "{snap:?}");
    assert_eq!(
        snap.layers.len(),
        1,
        "the host root plus the sandbox's writes"
    );

    // The sandbox runs on with its files, and the writer with it.
    assert_eq!(runtime.get(&sb.id).await.unwrap().status, Status::Running);
    let before = sh(&runtime, &sb.id, "cat /workspace/counter").await;
    sh(
        &runtime,
        &sb.id,
        "cd /workspace && echo two > src/a.txt && echo later > later.txt && rm notes.txt",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let after = sh(&runtime, &sb.id, "cat /workspace/counter").await;
    assert_ne!(before, after, "the writer was thawed");

    // Nothing references the snapshot but the index: gc keeps it.
    store.gc(&[]).unwrap();
    let restored = runtime
        .create(snapshots.restore_spec(&snap.id, spec).unwrap())
        .await
        .unwrap();
    let seen = sh(
        &runtime,
        &restored.id,
        "cd /workspace && cat src/a.txt notes.txt link && stat -c '%a %F' notes.txt pipe && \
         test ! -e later.txt && echo no-later && test -e counter && echo counter",
    )
    .await;
    assert_eq!(
        seen,
        "one\nuntracked\none\n640 regular file\n644 fifo\nno-later\ncounter\n"
    );

    // The sandbox restored from a snapshot can be snapshotted in turn, and the first
    // snapshot released: its layer lives on in the second.
    sh(&runtime, &restored.id, "echo three > /workspace/third.txt").await;
    let second = snapshots.take(&restored.id).await.unwrap();
    assert_eq!(second.layers.len(), 2);
    assert_eq!(second.layers[0], snap.layers[0]);
    snapshots.release(&snap.id).unwrap();
    store.gc(&[]).unwrap();
    let third = runtime
        .create(
            snapshots
                .restore_spec(&second.id, runtime.get(&sb.id).await.unwrap().spec)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        sh(
            &runtime,
            &third.id,
            "cat /workspace/notes.txt /workspace/third.txt"
        )
        .await,
        "untracked\nthree\n"
    );
    let base = store
        .images()
        .unwrap()
        .into_iter()
        .find(|i| i.meta.snapshot_of.is_none())
        .unwrap();
    let err = snapshots.release(&base.id).unwrap_err().to_string();
    assert!(err.contains("not a snapshot"), "{err}");

    for id in [&sb.id, &restored.id, &third.id] {
        runtime.destroy(id).await.unwrap();
    }
}

#[tokio::test]
async fn a_stopped_sandbox_has_no_live_snapshot() {
    hangar_testkit::require_root();
    let dir = hangar_testkit::scratch_dir();
    let mut config = hangar_config::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.sandbox.tools_dir = Some(hangar_testkit::bin_dir());
    let _cleanup = Cleanup(config.data_dir.clone());
    let runtime = Arc::new(LocalRuntime::open(&config).unwrap());
    let store = Store::open(&config.data_dir).unwrap();
    let snapshots = Snapshots::new(runtime.clone(), store, config.clone());
    let sb = runtime
        .create(SandboxSpec {
            rootfs: Rootfs::HostRoot,
            limits: runtime.default_limits(),
            network: Network::None,
        })
        .await
        .unwrap();
    runtime.stop(&sb.id).await.unwrap();
    let err = snapshots.take(&sb.id).await.unwrap_err().to_string();
    assert!(err.contains("stopped"), "{err}");
    let err = snapshots
        .take("no-such-sandbox")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no sandbox"), "{err}");
    runtime.destroy(&sb.id).await.unwrap();
}
