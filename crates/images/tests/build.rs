//! The builder on the real sandbox runtime (root): a small local git repository built on
//! the host base with a dependency step (declared inputs) and a build step; a rebuild
//! after a source-only change reuses the dependency layer; a failing or hanging step
//! fails the build, names the step with its log tail and keeps the previous image.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use hangar_images::{BuildError, BuildEvent, BuildRequest, Builder, ImageInfo, Store};
use hangar_protocol::envd::ExecRequest;
use hangar_sandbox::{Limits, LocalRuntime, Network, Rootfs, Runtime, SandboxSpec};

struct Fixture {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    runtime: Arc<LocalRuntime>,
    builder: Builder,
    /// A small filesystem mounted for the data directory (unmounted on drop).
    small_disk: Option<PathBuf>,
}

fn git(repo: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .output()
        .expect("git is needed (scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn commit_files(repo: &Path, files: &[(&str, &str)], message: &str) {
    for (p, content) in files {
        let p = repo.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
}

const RECIPE: &str = r#"
base = "host"

[env]
GREETING = "hello"

[network]
build = "none"

[[setup]]
name = "deps"
run = "mkdir -p /deps && cp deps.txt /deps/ && echo installed deps $GREETING"
inputs = ["deps.txt"]

[[setup]]
name = "build"
run = "cat /deps/deps.txt src/main.txt > built.txt && echo built"
"#;

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_disk(None)
    }

    /// With the data directory (layer store, sandboxes) on a tmpfs of `size` when given.
    fn with_disk(size: Option<&str>) -> Fixture {
        hangar_testkit::require_root();
        let dir = hangar_testkit::scratch_dir();
        let data_dir = dir.path().join("data");
        let small_disk = size.map(|size| {
            std::fs::create_dir_all(&data_dir).unwrap();
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "hangar-test"])
                .arg(&data_dir)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mounting a tmpfs for the data directory");
            data_dir.clone()
        });
        let mut config = hangar_config::Config {
            data_dir,
            ..Default::default()
        };
        config.sandbox.tools_dir = Some(hangar_testkit::bin_dir());
        let runtime = Arc::new(LocalRuntime::open(&config).expect("open the local runtime"));
        let store = Store::open(&config.data_dir).unwrap();
        let builder = Builder::new(runtime.clone(), store, config);
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        commit_files(
            &repo,
            &[
                ("hangar.toml", RECIPE),
                ("deps.txt", "deps v1\n"),
                ("src/main.txt", "main v1\n"),
            ],
            "first",
        );
        Fixture {
            _dir: dir,
            repo,
            runtime,
            builder,
            small_disk,
        }
    }

    async fn build(
        &self,
    ) -> (
        Result<hangar_images::BuildOutcome, BuildError>,
        Vec<BuildEvent>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let result = self
            .builder
            .build(
                &BuildRequest {
                    repo: self.repo.display().to_string(),
                    reference: Some("main".into()),
                    recipe: None,
                    detached: false,
                },
                &tx,
            )
            .await;
        drop(tx);
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        (result, events)
    }

    /// Runs a command in a sandbox started from the image.
    async fn run_in(&self, image: &ImageInfo, cmd: &str) -> String {
        let store = self.builder.store();
        let layers = image
            .layers
            .iter()
            .rev()
            .map(|l| store.layer_dir(&l.digest).unwrap())
            .collect();
        let sb = self
            .runtime
            .create(SandboxSpec {
                rootfs: Rootfs::LayersOverHost { layers },
                limits: Limits {
                    memory_bytes: 256 << 20,
                    pids: 64,
                    cpus: 1.0,
                },
                network: Network::None,
            })
            .await
            .unwrap();
        let envd = self.runtime.envd(&sb.id).await.unwrap();
        let out = envd
            .output(
                ExecRequest {
                    shell: Some(cmd.into()),
                    cwd: Some("/workspace".into()),
                    timeout_ms: Some(30_000),
                    ..Default::default()
                },
                1 << 20,
            )
            .await
            .unwrap();
        self.runtime.destroy_wait(&sb.id).await.unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let rt = self.runtime.clone();
        let _ = std::thread::spawn(move || {
            let Ok(tokio) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            tokio.block_on(async {
                for sb in rt.list().await.unwrap_or_default() {
                    let _ = rt.destroy_wait(&sb.id).await;
                }
            });
        })
        .join();
        if let Some(mount) = &self.small_disk {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
    }
}

/// Free bytes on the filesystem holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    st.blocks_available() as u64 * st.fragment_size() as u64
}

fn ran(outcome: &hangar_images::BuildOutcome) -> Vec<(String, bool)> {
    outcome
        .steps
        .iter()
        .map(|s| (s.name.clone(), s.cached))
        .collect()
}

#[tokio::test]
async fn a_source_only_change_reuses_the_dependency_layer() {
    let f = Fixture::new();
    let (first, events) = f.build().await;
    let first = first.unwrap();
    assert_eq!(
        ran(&first),
        [
            ("base host".to_string(), false),
            ("deps".to_string(), false),
            ("checkout".to_string(), false),
            ("build".to_string(), false),
        ]
    );
    let logs: String = events
        .iter()
        .filter_map(|e| match e {
            BuildEvent::Log { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert!(logs.contains("installed deps hello"), "{logs}");
    assert!(matches!(
        events.first(),
        Some(BuildEvent::Resolved { steps: 4, .. })
    ));
    let store = f.builder.store();
    assert_eq!(
        store.current(&first.repo).unwrap().unwrap().digest,
        first.image.digest
    );
    assert_eq!(
        f.run_in(
            &first.image,
            "cat built.txt; cat /deps/deps.txt; git log --format=%s"
        )
        .await,
        "deps v1\nmain v1\ndeps v1\nfirst\n"
    );
    // Layers hold the sandbox's own ids, not the host range.
    assert_eq!(
        f.run_in(&first.image, "stat -c %u:%g built.txt /deps")
            .await,
        "0:0\n0:0\n"
    );

    // A source-only change: deps is reused, the checkout and build run again.
    commit_files(&f.repo, &[("src/main.txt", "main v2\n")], "second");
    let second = f.build().await.0.unwrap();
    assert_eq!(
        ran(&second),
        [
            ("base host".to_string(), true),
            ("deps".to_string(), true),
            ("checkout".to_string(), false),
            ("build".to_string(), false),
        ]
    );
    assert_eq!(
        second.steps[1].layers, first.steps[1].layers,
        "the same deps layer"
    );
    assert_eq!(
        f.run_in(&second.image, "cat built.txt").await,
        "deps v1\nmain v2\n"
    );
    assert_eq!(
        store.current(&second.repo).unwrap().unwrap().digest,
        second.image.digest
    );

    // A dependency change reruns everything after the base.
    commit_files(&f.repo, &[("deps.txt", "deps v2\n")], "third");
    let third = f.build().await.0.unwrap();
    let cached: Vec<bool> = third.steps.iter().map(|s| s.cached).collect();
    assert_eq!(cached, [true, false, false, false]);
    assert_eq!(
        f.run_in(&third.image, "cat built.txt").await,
        "deps v2\nmain v2\n"
    );

    // Nothing changed: everything comes from the cache.
    let fourth = f.build().await.0.unwrap();
    assert!(fourth.steps.iter().all(|s| s.cached), "{:?}", ran(&fourth));
    assert_eq!(
        fourth.image.digest, third.image.digest,
        "the same image, not a copy"
    );
    assert_eq!(store.images().unwrap().len(), 3);
}

#[tokio::test]
async fn a_failing_step_keeps_the_previous_image_and_names_the_step() {
    let f = Fixture::new();
    let good = f.build().await.0.unwrap();
    let broken = format!(
        "{RECIPE}\n[[setup]]\nname = \"explode\"\nrun = \"echo boom-output; echo on-stderr >&2; exit 3\"\n"
    );
    commit_files(&f.repo, &[("hangar.toml", &broken)], "break it");
    let (result, events) = f.build().await;
    let err = result.unwrap_err();
    match &err {
        BuildError::StepFailed {
            step,
            reason,
            log_tail,
            ..
        } => {
            assert_eq!(step, "explode");
            assert_eq!(reason, "exited with code 3");
            assert!(log_tail.contains("boom-output"), "{log_tail}");
            assert!(log_tail.contains("on-stderr"), "{log_tail}");
        }
        other => panic!("expected a step failure, got {other}"),
    }
    assert!(err.to_string().contains("explode"), "{err}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, BuildEvent::StepStarted { name, .. } if name == "explode"))
    );
    let store = f.builder.store();
    assert_eq!(
        store.current(&good.repo).unwrap().unwrap().digest,
        good.image.digest,
        "the previous image stays current"
    );
    assert_eq!(store.images().unwrap().len(), 1, "no half image recorded");
    assert!(
        f.runtime.list().await.unwrap().is_empty(),
        "no build sandbox left"
    );

    // A step that hangs is stopped by its timeout.
    let hanging = format!(
        "{RECIPE}\n[[setup]]\nname = \"hang\"\nrun = \"echo waiting; sleep 600\"\ntimeout = \"1s\"\n"
    );
    commit_files(&f.repo, &[("hangar.toml", &hanging)], "hang");
    let err = f.build().await.0.unwrap_err();
    match &err {
        BuildError::StepFailed { step, reason, .. } => {
            assert_eq!(step, "hang");
            assert!(reason.contains("timed out after 1s"), "{reason}");
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert_eq!(
        store.current(&good.repo).unwrap().unwrap().digest,
        good.image.digest
    );
}

#[tokio::test]
async fn a_full_disk_fails_the_build_cleanly_and_leaves_the_store_intact() {
    let f = Fixture::with_disk(Some("48m"));
    let data = f.small_disk.clone().unwrap();
    let good = f.build().await.0.unwrap();
    let free_after_good = free_bytes(&data);
    let store = f.builder.store();

    // A step that fills the disk itself, and a step whose output fits but whose sealed
    // layer does not: both fail the build, and everything they wrote is gone.
    for (name, run, expect) in [
        (
            "fill",
            "head -c 100000000 /dev/zero > /big.bin",
            "No space left",
        ),
        (
            "seal",
            "head -c 30000000 /dev/urandom > /random.bin",
            "No space left",
        ),
    ] {
        let recipe = format!("{RECIPE}\n[[setup]]\nname = \"{name}\"\nrun = \"{run}\"\n");
        commit_files(&f.repo, &[("hangar.toml", &recipe)], name);
        let err = f.build().await.0.unwrap_err();
        let message = err.to_string();
        assert!(message.contains(expect), "{name}: {message}");
        assert_eq!(
            store.current(&good.repo).unwrap().unwrap().digest,
            good.image.digest,
            "{name}: the previous image stays current"
        );
        assert_eq!(store.images().unwrap().len(), 1, "{name}: no half image");
        assert!(
            f.runtime.list().await.unwrap().is_empty(),
            "{name}: no build sandbox left"
        );
        let free = free_bytes(&data);
        assert!(
            free + (2 << 20) >= free_after_good,
            "{name}: the failed build's files were removed ({free} free, {free_after_good} before)"
        );
    }

    // The store is intact: the old image still runs, and a build that fits succeeds.
    assert_eq!(
        f.run_in(&good.image, "cat built.txt").await,
        "deps v1\nmain v1\n"
    );
    commit_files(
        &f.repo,
        &[("hangar.toml", RECIPE), ("src/main.txt", "main v2\n")],
        "fits",
    );
    let next = f.build().await.0.unwrap();
    assert_eq!(
        f.run_in(&next.image, "cat built.txt").await,
        "deps v1\nmain v2\n"
    );
}

#[tokio::test]
async fn a_repository_without_a_recipe_is_a_clear_error() {
    let f = Fixture::new();
    git(&f.repo, &["rm", "-q", "hangar.toml"]);
    git(&f.repo, &["commit", "-q", "-m", "no recipe"]);
    let err = f.build().await.0.unwrap_err().to_string();
    assert!(err.contains("no hangar.toml"), "{err}");
    assert!(err.contains("--recipe"), "{err}");
}

#[tokio::test]
async fn a_snapshot_restores_a_sandboxs_writes_and_deletions() {
    let f = Fixture::new();
    let image = f.build().await.0.unwrap().image;
    let store = f.builder.store();
    let sb = f
        .runtime
        .create(SandboxSpec {
            rootfs: hangar_images::rootfs(store, &image).unwrap(),
            limits: Limits {
                memory_bytes: 256 << 20,
                pids: 64,
                cpus: 1.0,
            },
            network: Network::None,
        })
        .await
        .unwrap();
    let envd = f.runtime.envd(&sb.id).await.unwrap();
    let out = envd
        .output(
            ExecRequest {
                shell: Some(
                    "echo edited > src/main.txt && rm built.txt && mkdir -p notes && echo hi > notes/n && ln -s notes/n link && chmod 600 notes/n"
                        .into(),
                ),
                cwd: Some("/workspace".into()),
                ..Default::default()
            },
            1 << 16,
        )
        .await
        .unwrap();
    assert_eq!(out.status.code, Some(0));
    let config = hangar_config::Config {
        data_dir: store.root().parent().unwrap().to_path_buf(),
        ..Default::default()
    };
    let snap = hangar_images::snapshot(&f.runtime, store, &config, &sb.id, &image)
        .await
        .unwrap();
    assert_eq!(snap.layers.len(), image.layers.len() + 1);
    assert_eq!(
        snap.meta.snapshot_of.as_deref(),
        Some(image.digest.as_str())
    );
    assert!(
        f.runtime.list().await.unwrap().is_empty(),
        "the sandbox is gone"
    );
    assert_eq!(
        store
            .current(snap.meta.repo.as_deref().unwrap())
            .unwrap()
            .unwrap()
            .digest,
        image.digest,
        "a snapshot is not the repository's current image"
    );
    assert_eq!(
        f.run_in(
            &snap,
            "cat src/main.txt; test -e built.txt || echo deleted; cat link; stat -c '%a %u' notes/n"
        )
        .await,
        "edited\ndeleted\nhi\n600 0\n"
    );
}

#[tokio::test]
async fn the_scheduler_rebuilds_only_when_the_branch_moves_and_tells_listeners() {
    let f = Fixture::new();
    let fixture = Arc::new(f);
    // The builder is shared with the scheduler; a second one over the same store.
    let store = fixture.builder.store().clone();
    let mut config = hangar_config::Config {
        data_dir: store.root().parent().unwrap().to_path_buf(),
        ..Default::default()
    };
    config.sandbox.tools_dir = Some(hangar_testkit::bin_dir());
    let builder = Arc::new(Builder::new(fixture.runtime.clone(), store.clone(), config));
    let scheduler = Arc::new(hangar_images::Scheduler::new(builder));
    let mut events = scheduler.subscribe();
    let schedule = hangar_images::Schedule {
        reference: Some("main".into()),
        every: std::time::Duration::from_millis(300),
        ..hangar_images::Schedule::new(fixture.repo.display().to_string())
    };

    // First look: no image yet, so it builds and announces it.
    let first = scheduler.check(&schedule).await.unwrap().unwrap();
    match events.try_recv().unwrap() {
        hangar_images::ImageEvent::Current {
            image, previous, ..
        } => {
            assert_eq!(image.digest, first.image.digest);
            assert_eq!(previous, None);
        }
        other => panic!("{other:?}"),
    }
    // Nothing moved: no build.
    assert!(matches!(
        scheduler.check(&schedule).await.unwrap(),
        Err(hangar_images::Unchanged::UpToDate)
    ));
    assert!(events.try_recv().is_err());

    // The loop notices a new commit on its own.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let s2 = scheduler.clone();
    let sched = schedule.clone();
    let task = tokio::spawn(async move {
        s2.run(vec![sched], async {
            let _ = stop_rx.await;
        })
        .await
    });
    commit_files(&fixture.repo, &[("src/main.txt", "main v3\n")], "moved");
    let event = tokio::time::timeout(std::time::Duration::from_secs(30), events.recv())
        .await
        .expect("an event within 30 s")
        .unwrap();
    let _ = stop_tx.send(());
    task.await.unwrap();
    match event {
        hangar_images::ImageEvent::Current {
            image, previous, ..
        } => {
            assert_eq!(previous.as_deref(), Some(first.image.digest.as_str()));
            assert_eq!(
                store.current(&first.repo).unwrap().unwrap().digest,
                image.digest
            );
            assert_eq!(
                fixture.run_in(&image, "cat built.txt").await,
                "deps v1\nmain v3\n"
            );
        }
        other => panic!("{other:?}"),
    }
    while events.try_recv().is_ok() {}

    // A commit that breaks the build fails once and is not retried while nothing moves.
    git(&fixture.repo, &["rm", "-q", "src/main.txt"]);
    git(&fixture.repo, &["commit", "-q", "-m", "broken"]);
    assert!(scheduler.check(&schedule).await.is_err());
    assert!(matches!(
        events.try_recv().unwrap(),
        hangar_images::ImageEvent::BuildFailed { .. }
    ));
    assert!(matches!(
        scheduler.check(&schedule).await.unwrap(),
        Err(hangar_images::Unchanged::UpToDate)
    ));
    assert!(
        events.try_recv().is_err(),
        "the failed build was not retried"
    );
    // The fix moves the branch: built again.
    commit_files(&fixture.repo, &[("src/main.txt", "main v4\n")], "fixed");
    let fixed = scheduler.check(&schedule).await.unwrap().unwrap();
    assert_eq!(
        fixture.run_in(&fixed.image, "cat built.txt").await,
        "deps v1\nmain v4\n"
    );
}
