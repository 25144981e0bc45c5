//! Sandbox lifecycle: create from each kind of rootfs, destroy without leaks, recovery
//! after a crash, death reporting, and clear errors for bad specs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Fixture, stdout};
use hangar_sandbox::{Limits, LocalRuntime, Rootfs, Runtime, SandboxError, SandboxSpec, Status};

fn host_mounts_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

fn cgroup_dirs_named(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if let Ok(entries) = std::fs::read_dir(root) {
            for e in entries.flatten() {
                let d = e.path().join("hangar").join(id);
                if d.exists() {
                    out.push(d);
                }
            }
            let d = Path::new(root).join("hangar").join(id);
            if d.exists() {
                out.push(d);
            }
        }
    }
    out
}

#[tokio::test]
async fn destroy_leaves_no_process_mount_cgroup_or_file() {
    let f = Fixture::new();
    let sb = f.host_sandbox().await;
    let init = sb.init_pid.expect("a running sandbox has an init pid");
    let dir = f.config.data_dir.join("sandboxes").join(&sb.id);
    assert!(dir.is_dir());
    assert!(
        !cgroup_dirs_named(&sb.id).is_empty(),
        "cgroups exist while it runs"
    );
    // Something running in the background must not survive either.
    let _ = f.sh(&sb.id, "sleep 1000 >/dev/null 2>&1 &").await;
    f.rt.destroy_wait(&sb.id).await.unwrap();
    assert!(
        !Path::new(&format!("/proc/{init}")).exists(),
        "init is gone"
    );
    assert!(!dir.exists(), "the sandbox directory is gone");
    assert_eq!(
        cgroup_dirs_named(&sb.id),
        Vec::<PathBuf>::new(),
        "cgroups are gone"
    );
    assert_eq!(
        host_mounts_mentioning(&dir),
        Vec::<String>::new(),
        "nothing mounted on the host"
    );
    assert!(matches!(
        f.rt.get(&sb.id).await,
        Err(SandboxError::NotFound(_))
    ));
    assert!(matches!(
        f.rt.destroy(&sb.id).await,
        Err(SandboxError::NotFound(_))
    ));
}

/// Polls (at most 5 s) until `/proc/<pid>` is gone.
async fn wait_for_exit(pid: u32) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

#[tokio::test]
async fn destroy_returns_with_the_sandbox_killed_and_gone_from_view_and_tears_down_after() {
    let f = Fixture::new();
    let sb = f.host_sandbox().await;
    let other = f.host_sandbox().await;
    let init = sb.init_pid.unwrap();
    let dir = f.config.data_dir.join("sandboxes").join(&sb.id);
    f.rt.destroy(&sb.id).await.unwrap();
    // At once: neither found, listed nor reachable, and destroying it again is an error.
    assert!(matches!(
        f.rt.get(&sb.id).await,
        Err(SandboxError::NotFound(_))
    ));
    assert!(matches!(
        f.rt.envd(&sb.id).await,
        Err(SandboxError::NotFound(_))
    ));
    let listed: Vec<String> =
        f.rt.list()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
    assert_eq!(listed, vec![other.id.clone()]);
    assert!(matches!(
        f.rt.destroy(&sb.id).await,
        Err(SandboxError::NotFound(_))
    ));
    assert!(wait_for_exit(init).await, "init was killed");
    // Then the teardown frees the rest; the other sandbox is untouched.
    f.rt.teardowns_done().await;
    assert!(!dir.exists(), "the sandbox directory is gone");
    assert_eq!(cgroup_dirs_named(&sb.id), Vec::<PathBuf>::new());
    assert_eq!(stdout(&f.sh(&other.id, "echo still").await).trim(), "still");
    f.rt.destroy_wait(&other.id).await.unwrap();
}

#[tokio::test]
async fn a_restarted_runtime_finishes_a_destroy_cut_short() {
    let f = Fixture::new();
    let sb = f.host_sandbox().await;
    let init = sb.init_pid.unwrap();
    let dir = f.config.data_dir.join("sandboxes").join(&sb.id);
    // A destroy that crashed right after marking the record: init still runs.
    std::fs::rename(dir.join("sandbox.json"), dir.join("destroying.json")).unwrap();
    assert!(matches!(
        f.rt.get(&sb.id).await,
        Err(SandboxError::NotFound(_))
    ));
    assert!(Path::new(&format!("/proc/{init}")).exists());

    let rt = LocalRuntime::open(&f.config).unwrap();
    let rec = rt.recover().unwrap();
    assert_eq!(rec.reaped, vec![sb.id.clone()]);
    assert!(rec.adopted.is_empty() && rec.dead.is_empty(), "{rec:?}");
    assert!(wait_for_exit(init).await, "init was killed");
    assert!(!dir.exists(), "the sandbox directory is gone");
    assert_eq!(cgroup_dirs_named(&sb.id), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn a_frozen_sandbox_holds_still_until_thawed() {
    let f = Fixture::new();
    let sb = f.host_sandbox().await;
    f.sh(
        &sb.id,
        "mkdir -p /workspace && setsid -f sh -c 'i=0; while :; do i=$((i+1)); echo $i > /workspace/n.tmp && mv /workspace/n.tmp /workspace/n; done' >/dev/null 2>&1; sleep 0.2",
    )
    .await;
    let frozen = f.rt.freeze(&sb.id).await.unwrap();
    let counter = frozen.upper_dir().join("workspace/n");
    let first = std::fs::read_to_string(&counter).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap(),
        first,
        "nothing runs while frozen"
    );
    drop(frozen);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_ne!(
        std::fs::read_to_string(&counter).unwrap(),
        first,
        "it runs again once thawed"
    );
    assert_eq!(stdout(&f.sh(&sb.id, "echo alive").await), "alive\n");
    f.rt.stop(&sb.id).await.unwrap();
    let e = f.rt.freeze(&sb.id).await.unwrap_err();
    assert!(e.to_string().contains("stopped"), "{e}");
    f.rt.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn bullseye_rootfs_runs_envd_and_python_39_with_shifted_owners() {
    let f = Fixture::new();
    let rootfs =
        f.rt.prepare_rootfs(
            hangar_testkit::bullseye_tarball()
                .unwrap()
                .to_str()
                .unwrap(),
        )
        .unwrap();
    let sb = f.create(rootfs, f.limits()).await;
    let out = f.sh(&sb.id, "python3 --version; ldd --version | head -1; stat -c %u:%g /etc/passwd; echo x > /etc/written && cat /etc/written").await;
    let text = stdout(&out);
    assert!(text.contains("Python 3.9"), "{text}");
    assert!(text.contains("2.31"), "glibc 2.31: {text}");
    assert!(
        text.contains("0:0"),
        "image files belong to the sandbox's root: {text}"
    );
    assert!(
        text.trim_end().ends_with('x'),
        "the sandbox's root can write its image's /etc: {text}"
    );
    // The write landed in the sandbox's upper dir, owned by the mapped uid, not host root.
    let upper = f
        .config
        .data_dir
        .join("sandboxes")
        .join(&sb.id)
        .join("upper/etc/written");
    let meta = std::fs::metadata(&upper).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        meta.uid(),
        f.config.sandbox.uid_base,
        "owned by the sandbox's host uid"
    );
    f.rt.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn killed_init_is_reported_dead_with_the_signal() {
    let f = Fixture::new();
    let sb = f.host_sandbox().await;
    let init = sb.init_pid.unwrap();
    // SAFETY: kill has no memory effects; the pid is the sandbox's init.
    unsafe { libc::kill(init as i32, libc::SIGKILL) };
    let status = f.wait_until_not_running(&sb.id).await;
    assert_eq!(
        status,
        Status::Dead {
            reason: "init was killed by signal 9".into(),
            oom_killed: false
        }
    );
    let err = f.rt.envd(&sb.id).await.unwrap_err().to_string();
    assert!(err.contains("dead"), "{err}");
    assert_eq!(
        cgroup_dirs_named(&sb.id),
        Vec::<PathBuf>::new(),
        "a dead sandbox's cgroups are released"
    );
    f.rt.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn a_restarted_runtime_adopts_live_sandboxes_and_reaps_the_rest() {
    let f = Fixture::new();
    let live = f.host_sandbox().await;
    let doomed = f.host_sandbox().await;
    // A create that crashed half-way: a directory with a record still "creating".
    let half = f.config.data_dir.join("sandboxes/sb-halfmade0000");
    std::fs::create_dir_all(&half).unwrap();
    let orphan = f.config.data_dir.join("sandboxes/sb-norecord0000");
    std::fs::create_dir_all(orphan.join("upper")).unwrap();
    let mut record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            f.config
                .data_dir
                .join("sandboxes")
                .join(&live.id)
                .join("sandbox.json"),
        )
        .unwrap(),
    )
    .unwrap();
    record["id"] = "sb-halfmade0000".into();
    record["state"] = "creating".into();
    record["init"] = serde_json::Value::Null;
    record["jail"] = serde_json::Value::Null;
    std::fs::write(half.join("sandbox.json"), record.to_string()).unwrap();
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(doomed.init_pid.unwrap() as i32, libc::SIGKILL) };
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A new runtime over the same directory, as after a server restart.
    let rt = LocalRuntime::open(&f.config).unwrap();
    let mut rec = rt.recover().unwrap();
    rec.reaped.sort();
    assert_eq!(rec.adopted, vec![live.id.clone()]);
    assert_eq!(rec.dead, vec![doomed.id.clone()]);
    assert_eq!(
        rec.reaped,
        vec!["sb-halfmade0000".to_string(), "sb-norecord0000".to_string()]
    );
    assert!(!half.exists() && !orphan.exists());
    let out = rt.envd(&live.id).await.unwrap();
    assert_eq!(
        out.health().await.unwrap().pid,
        1,
        "the adopted sandbox still serves"
    );
    rt.destroy(&live.id).await.unwrap();
    rt.destroy(&doomed.id).await.unwrap();
}

/// Spare cgroups this process's runtimes made (see `SpareCgroups` in the local runtime).
fn own_spare_cgroups() -> Vec<String> {
    let h = hangar_sandbox::cgroup::Hierarchies::detect().unwrap();
    hangar_sandbox::cgroup::names_starting_with(&h, &format!("spare-{}-", std::process::id()))
}

/// The value of a limit file in whichever of the sandbox's groups has it.
fn cgroup_file(id: &str, file: &str) -> String {
    let h = hangar_sandbox::cgroup::Hierarchies::detect().unwrap();
    hangar_sandbox::cgroup::SandboxCgroup::new(&h, id)
        .dirs()
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
        .unwrap_or_else(|| panic!("no {file} for {id}"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn sandboxes_get_their_own_limits_whether_from_spare_cgroups_or_not() {
    let f = Fixture::new();
    let defaults = f.rt.default_limits();
    // The runtime makes a spare set of groups (where the host's groups can be renamed) on
    // its teardown thread after each teardown; the next two creates take them, the third
    // makes its own.
    for _ in 0..2 {
        let gone = f.create(Rootfs::HostRoot, defaults).await;
        f.rt.destroy(&gone.id).await.unwrap();
    }
    f.rt.teardowns_done().await;
    let h = hangar_sandbox::cgroup::Hierarchies::detect().unwrap();
    let renamable = hangar_sandbox::cgroup::SandboxCgroup::new(&h, "x").renamable();
    if renamable {
        assert_eq!(own_spare_cgroups().len(), 2, "two spare sets are ready");
    }
    let first = f.create(Rootfs::HostRoot, defaults).await;
    let other = Limits {
        memory_bytes: 100 << 20,
        pids: 77,
        cpus: 0.5,
    };
    let second = f.create(Rootfs::HostRoot, other).await;
    if renamable {
        assert_eq!(own_spare_cgroups().len(), 0, "both were taken");
    }
    let third = f.create(Rootfs::HostRoot, defaults).await;
    for (sb, limits) in [(&first, &defaults), (&second, &other), (&third, &defaults)] {
        assert_eq!(cgroup_file(&sb.id, "pids.max"), limits.pids.to_string());
        let memory = if std::path::Path::new("/sys/fs/cgroup/memory/hangar").is_dir() {
            cgroup_file(&sb.id, "memory.limit_in_bytes")
        } else {
            cgroup_file(&sb.id, "memory.max")
        };
        assert_eq!(memory, limits.memory_bytes.to_string());
        assert_eq!(
            stdout(&f.sh(&sb.id, "echo up").await).trim(),
            "up",
            "{}",
            sb.id
        );
    }
    for sb in [first, second, third] {
        f.rt.destroy_wait(&sb.id).await.unwrap();
    }
}

#[tokio::test]
async fn spare_cgroups_go_with_their_runtime_and_recover_removes_a_dead_ones() {
    let f = Fixture::new();
    {
        let rt = LocalRuntime::open(&f.config).unwrap();
        let sb = rt
            .create(SandboxSpec {
                rootfs: Rootfs::HostRoot,
                limits: f.limits(),
                network: hangar_sandbox::Network::None,
            })
            .await
            .unwrap();
        rt.destroy_wait(&sb.id).await.unwrap();
        rt.teardowns_done().await;
        let h = hangar_sandbox::cgroup::Hierarchies::detect().unwrap();
        if hangar_sandbox::cgroup::SandboxCgroup::new(&h, "x").renamable() {
            assert!(!own_spare_cgroups().is_empty(), "spares were made");
        }
    }
    assert_eq!(
        own_spare_cgroups(),
        Vec::<String>::new(),
        "a dropped runtime removes its spares"
    );

    // Spares left by a process that died (a crash) are removed by `recover`; a live
    // process's are kept.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let h = hangar_sandbox::cgroup::Hierarchies::detect().unwrap();
    let dead = format!("spare-{dead_pid}-1-0-0");
    let start = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start = start[start.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(19)
        .unwrap()
        .to_string();
    let live = format!("spare-{}-{start}-999-0", std::process::id());
    for name in [&dead, &live] {
        hangar_sandbox::cgroup::SandboxCgroup::new(&h, name)
            .create(&f.limits())
            .unwrap();
    }
    f.rt.recover().unwrap();
    let left = hangar_sandbox::cgroup::names_starting_with(&h, "spare-");
    assert!(!left.contains(&dead), "{left:?}");
    assert!(left.contains(&live), "{left:?}");
    hangar_sandbox::cgroup::SandboxCgroup::new(&h, &live)
        .remove()
        .unwrap();
}

#[tokio::test]
async fn bad_specs_get_clear_errors_and_leave_nothing() {
    let f = Fixture::new();
    let spec = |rootfs, limits| SandboxSpec {
        rootfs,
        limits,
        network: Default::default(),
    };
    let cases = [
        (
            Rootfs::Layers {
                layers: vec!["/nonexistent/rootfs".into()],
            },
            f.limits(),
            "does not exist",
        ),
        (
            Rootfs::Layers { layers: vec![] },
            f.limits(),
            "at least one layer",
        ),
        (
            Rootfs::Layers {
                layers: vec!["relative".into()],
            },
            f.limits(),
            "absolute",
        ),
        (
            Rootfs::HostRoot,
            Limits {
                memory_bytes: 1024,
                ..f.limits()
            },
            "memory",
        ),
        (
            Rootfs::HostRoot,
            Limits {
                pids: 0,
                ..f.limits()
            },
            "pids",
        ),
        (
            Rootfs::HostRoot,
            Limits {
                cpus: f64::NAN,
                ..f.limits()
            },
            "cpus",
        ),
    ];
    for (rootfs, limits, needle) in cases {
        let err = f.rt.create(spec(rootfs, limits)).await.unwrap_err();
        assert!(matches!(err, SandboxError::InvalidSpec(_)), "{err:?}");
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle}"
        );
    }
    let file = f.dir.path().join("not-a-tarball");
    std::fs::write(&file, "hello").unwrap();
    let err =
        f.rt.prepare_rootfs(file.to_str().unwrap())
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("neither a directory nor a readable tarball"),
        "{err}"
    );
    assert!(
        f.rt.prepare_rootfs("/no/such/path")
            .unwrap_err()
            .to_string()
            .contains("No such file")
    );
    assert_eq!(f.rt.list().await.unwrap(), vec![]);
    assert!(matches!(
        f.rt.get("../../etc").await,
        Err(SandboxError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_rootfs_without_a_shell_fails_to_exec_with_enoent_not_a_panic() {
    let f = Fixture::new();
    let empty = f.dir.path().join("empty-rootfs");
    std::fs::create_dir_all(&empty).unwrap();
    let sb = f
        .create(
            Rootfs::Layers {
                layers: vec![empty],
            },
            f.limits(),
        )
        .await;
    let envd = f.rt.envd(&sb.id).await.unwrap();
    let err = envd
        .output(
            hangar_protocol::envd::ExecRequest {
                argv: vec!["python3".into()],
                ..Default::default()
            },
            1024,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("not_found"), "{err}");
    f.rt.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn a_rootfs_whose_dev_is_a_symlink_is_refused() {
    let f = Fixture::new();
    let layer = f.dir.path().join("dev-symlink-rootfs");
    std::fs::create_dir_all(&layer).unwrap();
    std::os::unix::fs::symlink("/etc", layer.join("dev")).unwrap();
    let err =
        f.rt.create(SandboxSpec {
            rootfs: Rootfs::Layers {
                layers: vec![layer],
            },
            limits: f.limits(),
            network: hangar_sandbox::Network::None,
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/dev is not a directory"), "{err}");
    assert!(
        f.rt.list().await.unwrap().is_empty(),
        "nothing is left of it"
    );
}

#[tokio::test]
async fn a_data_dir_only_root_can_enter_works() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    for dir in [f.dir.path(), f.config.data_dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let sb = f.host_sandbox().await;
    assert_eq!(stdout(&f.sh(&sb.id, "echo ok").await).trim(), "ok");
    f.rt.destroy(&sb.id).await.unwrap();
}
