//! A real image (root, network): Debian bullseye as an imported rootfs, python3-pip
//! installed with apt in a build sandbox and a package installed from PyPI with pip, both
//! over the sandbox's egress (the host's CA bundle trusted, so this works behind a
//! TLS-intercepting proxy); a session sandbox from the image imports it without network.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use hangar_images::{BuildRequest, Builder, Store};
use hangar_protocol::envd::ExecRequest;
use hangar_sandbox::{Limits, LocalRuntime, Network, Rootfs, Runtime, SandboxSpec};

fn git(repo: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .status()
        .expect("git is needed")
        .success();
    assert!(ok, "git {args:?}");
}

/// Builds `repo` with its own recipe; the outcome and the build's whole log.
async fn build(builder: &Builder, repo: &Path) -> (hangar_images::BuildOutcome, String) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let collect = tokio::spawn(async move {
        let mut log = String::new();
        while let Some(e) = rx.recv().await {
            if let hangar_images::BuildEvent::Log { text, .. } = e {
                log.push_str(&text);
            }
        }
        log
    });
    let result = builder
        .build(
            &BuildRequest {
                repo: repo.display().to_string(),
                reference: None,
                recipe: None,
                detached: false,
            },
            &tx,
        )
        .await;
    drop(tx);
    let log = collect.await.unwrap();
    let outcome = result.unwrap_or_else(|e| panic!("build failed: {e}\n{log}"));
    (outcome, log)
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (install umoci: scripts/install-deps.sh)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_oci_image_made_by_umoci_is_a_base_that_steps_build_on() {
    hangar_testkit::require_root();
    let dir = hangar_testkit::scratch_dir();
    let s = dir.path();
    // An OCI layout holding Debian bullseye, made by umoci (an independent OCI tool).
    let layout = s.join("layout");
    let bundle = s.join("bundle");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci")
        .args(["new", "--image"])
        .arg(format!("{}:bullseye", layout.display())));
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:bullseye", layout.display()))
        .arg(&bundle));
    let tarball = hangar_testkit::bullseye_tarball().unwrap_or_else(|e| panic!("{e}"));
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(bundle.join("rootfs")));
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(format!("{}:bullseye", layout.display()))
        .arg(&bundle));

    let mut config = hangar_config::Config {
        data_dir: s.join("data"),
        ..Default::default()
    };
    config.sandbox.tools_dir = Some(hangar_testkit::bin_dir());
    let runtime = Arc::new(LocalRuntime::open(&config).unwrap());
    let store = Store::open(&config.data_dir).unwrap();
    let builder = Builder::new(runtime.clone(), store.clone(), config);
    let repo = s.join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(
        repo.join("hangar.toml"),
        format!(
            "base = \"oci:{}#bullseye\"\n[network]\nbuild = \"none\"\n[[setup]]\nname = \"version\"\nrun = \"python3 --version > python-version && cat /etc/debian_version\"\n",
            layout.display()
        ),
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "recipe"]);
    let (outcome, log) = build(&builder, &repo).await;
    assert!(
        outcome.steps.iter().all(|st| st.ok),
        "{:?}\n{log}",
        outcome.steps
    );
    assert!(log.contains("11."), "the step ran on bullseye: {log}");
    assert_eq!(
        outcome.image.meta.base,
        format!("oci:{}#bullseye", layout.display())
    );
    // The image's layers: umoci's base, then what the build added on it.
    let layers: Vec<_> = outcome
        .image
        .layers
        .iter()
        .rev()
        .map(|l| store.layer_dir(&l.digest).unwrap())
        .collect();
    assert!(layers.len() >= 2, "{:?}", outcome.image.layers);
    let version = layers
        .iter()
        .find_map(|l| std::fs::read_to_string(l.join("workspace/python-version")).ok())
        .unwrap_or_else(|| panic!("python-version is in no layer: {log}"));
    assert!(version.starts_with("Python 3.9"), "{version}");

    // A base that is not an OCI layout fails the build, naming it.
    std::fs::write(
        repo.join("hangar.toml"),
        format!("base = \"oci:{}#bullseye\"\n", s.join("nothing").display()),
    )
    .unwrap();
    git(&repo, &["commit", "-qam", "bad base"]);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let err = builder
        .build(
            &BuildRequest {
                repo: repo.display().to_string(),
                reference: None,
                recipe: None,
                detached: false,
            },
            &tx,
        )
        .await
        .expect_err("a missing layout fails the build")
        .to_string();
    assert!(err.contains("nothing"), "{err}");
    hangar_testkit::remove_sandboxes(&s.join("data"));
}

#[tokio::test]
async fn bullseye_image_with_apt_and_pip_over_egress() {
    hangar_testkit::require_root();
    let dir = hangar_testkit::scratch_dir();
    let mut config = hangar_config::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.sandbox.tools_dir = Some(hangar_testkit::bin_dir());
    let runtime = Arc::new(LocalRuntime::open(&config).unwrap());
    let store = Store::open(&config.data_dir).unwrap();
    let builder = Builder::new(runtime.clone(), store.clone(), config);

    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("requirements.txt"), "six==1.16.0\n").unwrap();
    std::fs::write(
        repo.join("app.py"),
        "import six\nprint('six', six.__version__)\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("hangar.toml"),
        format!(
            r#"
base = "rootfs:{}"
packages = ["python3-pip"]

[env]
PIP_DISABLE_PIP_VERSION_CHECK = "1"

[[setup]]
name = "dependencies"
run = "pip3 install --no-cache-dir -r requirements.txt"
inputs = ["requirements.txt"]

[[warm]]
name = "smoke"
run = "python3 app.py"
"#,
            hangar_testkit::bullseye_tarball()
                .unwrap_or_else(|e| panic!("{e}"))
                .display()
        ),
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "python app"]);

    let (outcome, log) = build(&builder, &repo).await;
    let names: Vec<&str> = outcome.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names[1..],
        ["packages", "dependencies", "checkout", "smoke"]
    );
    assert!(outcome.steps.iter().all(|s| s.ok), "{:?}", outcome.steps);
    assert!(log.contains("Successfully installed six-1.16.0"), "{log}");
    assert!(log.contains("six 1.16.0"), "{log}");

    // A session from the image: no network, the package is there, files are root's.
    let layers = outcome
        .image
        .layers
        .iter()
        .rev()
        .map(|l| store.layer_dir(&l.digest).unwrap())
        .collect();
    let sb = runtime
        .create(SandboxSpec {
            rootfs: Rootfs::Layers { layers },
            limits: Limits {
                memory_bytes: 512 << 20,
                pids: 128,
                cpus: 1.0,
            },
            network: Network::None,
        })
        .await
        .unwrap();
    let envd = runtime.envd(&sb.id).await.unwrap();
    let out = envd
        .output(
            ExecRequest {
                shell: Some(
                    "python3 app.py && stat -c %u /usr/local/lib/python3.9/dist-packages/six.py && pip3 --version".into(),
                ),
                cwd: Some("/workspace".into()),
                timeout_ms: Some(60_000),
                ..Default::default()
            },
            1 << 20,
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    runtime.destroy(&sb.id).await.unwrap();
    assert_eq!(
        out.status.code,
        Some(0),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("six 1.16.0\n0\n"), "{text}");
    assert!(text.contains("python 3.9"), "{text}");
}
