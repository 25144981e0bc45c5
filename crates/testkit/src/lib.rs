//! Test support shared by Hangar's test suites. Never a dependency of product code.
//!
//! - `escape-probe`: a static binary run inside sandboxes that attempts one forbidden
//!   operation and prints `ok` or `err <errno>`, so escape tests assert on the kernel's
//!   answer rather than on what some shell tool printed.
//! - [`scratch_dir`]: test working directories on a fast filesystem.
//! - [`fake_model`]: a model server speaking the Anthropic and OpenAI streaming formats.
//! - [`fake_github`]: GitHub's App, OAuth, pull request endpoints, as documented.
//! - [`fake_slack`]: the Slack Web API methods Hangar calls, and request signing.
//! - [`git_http`]: a smart-HTTP git server (`git http-backend`) that requires a token.
//! - [`bullseye_tarball`]: a Debian bullseye rootfs (glibc 2.31, Python 3.9), built once.

pub mod fake_github;
pub mod fake_model;
pub mod fake_slack;
pub mod git_http;

use std::path::{Path, PathBuf};

/// A temporary directory on tmpfs (`/dev/shm`) when present: creating many small files on
/// a slow root filesystem would dominate test time.
pub fn scratch_dir() -> tempfile::TempDir {
    let base = Path::new("/dev/shm");
    let builder = tempfile::Builder::new()
        .prefix("hangar-test-")
        .tempdir_in(base);
    match builder {
        Ok(d) => d,
        Err(_) => tempfile::Builder::new()
            .prefix("hangar-test-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a scratch directory: {e}")),
    }
}

/// The directory of the workspace's built binaries (`target/<triple>/<profile>`), from a
/// test binary's location under `deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of a workspace binary, failing with a clear message when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// Fails the test unless it runs as root: the sandbox suites need it and must never skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (namespaces, mounts, cgroups); run the suite as root"
    );
}

/// A Debian bullseye rootfs tarball (glibc 2.31, Python 3.9), built with mmdebstrap on first
/// use and cached in `$HANGAR_TEST_CACHE` (default `/var/cache/hangar-test`); building needs
/// the Debian mirror.
pub fn bullseye_tarball() -> Result<PathBuf, String> {
    let cache = std::env::var_os("HANGAR_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hangar-test"));
    let tar = cache.join("bullseye.tar");
    if tar.is_file() {
        return Ok(tar);
    }
    std::fs::create_dir_all(&cache).map_err(|e| format!("creating {}: {e}", cache.display()))?;
    let partial = cache.join(format!("bullseye.{}.tar", std::process::id()));
    eprintln!("building {} with mmdebstrap", tar.display());
    let status = std::process::Command::new("mmdebstrap")
        .args([
            "--quiet",
            "--variant=minbase",
            "--include=python3",
            "bullseye",
        ])
        .arg(&partial)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("running mmdebstrap (apt-get install mmdebstrap): {e}"))?;
    if !status.success() {
        return Err(format!("mmdebstrap bullseye failed ({status})"));
    }
    std::fs::rename(&partial, &tar).map_err(|e| format!("renaming {}: {e}", partial.display()))?;
    Ok(tar)
}

/// Destroys every sandbox under `data_dir` with the real `hangar sandbox rm`. Sandboxes
/// outlive the process that made them, so a test's own must go when it ends (also when it
/// failed); a second pass catches one a warm pool was still starting.
/// Without the `hangar` binary the test fails (after saying which sandboxes are left): a
/// silent no-op would leak them, and with them their egress addresses.
pub fn remove_sandboxes(data_dir: &Path) {
    let hangar = bin_dir().join("hangar");
    for pass in 0..2 {
        let ids: Vec<String> = std::fs::read_dir(data_dir.join("sandboxes"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        if !ids.is_empty() && !hangar.is_file() {
            let why = format!(
                "{} is missing, so sandboxes {} are left running: build the workspace binaries first (cargo build --workspace --bins)",
                hangar.display(),
                ids.join(", ")
            );
            // A second panic while unwinding would abort the test binary and hide the first.
            if std::thread::panicking() {
                eprintln!("{why}");
                return;
            }
            panic!("{why}");
        }
        if !ids.is_empty() {
            let _ = std::process::Command::new(&hangar)
                .args(["sandbox", "rm"])
                .args(&ids)
                .env("HANGAR_DATA_DIR", data_dir)
                .env_remove("HANGAR_CONFIG")
                .output();
        }
        if pass == 0 {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }
}
