//! `rebuild-bench`: how long an image rebuild takes after a one-file source change, beside
//! the full build of the same repository, on a real public Python project.
//!
//! The project is a source distribution from PyPI (by default python-dateutil 2.8.2, which
//! ships its test suite), fetched with `curl` from the PyPI simple index and committed into
//! a local git repository with a recipe: Debian bullseye (the test suite's rootfs tarball)
//! as the base, `python3-pip` from Debian, the test dependencies from PyPI (a setup step
//! whose only input is `requirements-dev.txt`), and the test suite as the warm step.
//! Measured:
//!
//! - **full**: the first build (base imported, packages and dependencies installed over
//!   the build sandbox's egress, checkout, tests);
//! - **rebuild**: after a commit that changes one source file, N times: only what depends
//!   on the source (checkout, tests) runs again; the rest comes from the step cache.
//!
//! Prints one JSON document on stdout; progress on stderr. Needs root, network access to
//! the Debian mirror and PyPI (through the host's CA store), `curl`, `git`, and
//! `hangar-jail` and `envd` next to this executable.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use hangar_bench::{Summary, round3};
use hangar_images::{BuildEvent, BuildOutcome, BuildRequest, Builder, Store};
use hangar_sandbox::LocalRuntime;
use serde_json::{Value, json};

/// Benchmarks a rebuild after a one-file change beside the full build.
#[derive(Parser, Debug)]
#[command(name = "rebuild-bench")]
struct Args {
    /// The PyPI project.
    #[arg(long, default_value = "python-dateutil")]
    project: String,
    /// Its version (the source distribution `<name>-<version>.tar.gz`).
    #[arg(long, default_value = "2.8.2")]
    version: String,
    /// The source file changed before each rebuild (relative to the project's root).
    #[arg(long, default_value = "dateutil/relativedelta.py")]
    change: String,
    /// Test dependencies installed in the setup step (pip requirement lines).
    #[arg(
        long,
        default_value = "six==1.16.0 pytest==6.2.5 pytest-cov==4.1.0 freezegun==1.2.2 hypothesis==6.82.0"
    )]
    requirements: String,
    /// The warm step: the project's test suite.
    #[arg(long, default_value = "python3 -m pytest -q dateutil/test")]
    tests: String,
    /// Rebuilds measured, each after its own one-file change.
    #[arg(long, default_value_t = 3)]
    rebuilds: usize,
    /// Directory under which the scratch data directory is made.
    #[arg(long, default_value = "/dev/shm")]
    scratch: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(run(&args))?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn git(repo: &Path, args: &[&str]) -> Result<String> {
    sh(Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=Bench",
            "-c",
            "user.email=bench@example.com",
        ])
        .args(args))
}

/// Downloads the project's source distribution from the PyPI simple index and unpacks it
/// into `repo` (its top directory stripped).
fn fetch_sdist(args: &Args, repo: &Path) -> Result<String> {
    let index = sh(Command::new("curl").args([
        "-fsS",
        &format!("https://pypi.org/simple/{}/", args.project),
    ]))?;
    let normalized = args.project.replace('-', "_");
    let wanted = [
        format!("{}-{}.tar.gz", args.project, args.version),
        format!("{normalized}-{}.tar.gz", args.version),
    ];
    let url = index
        .split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|href| {
            let file = href.split('#').next().unwrap_or_default();
            wanted.iter().any(|w| file.ends_with(&format!("/{w}")))
        })
        .with_context(|| format!("no {} in the PyPI index of {}", wanted[0], args.project))?
        .to_string();
    let tarball = repo.with_extension("tar.gz");
    sh(Command::new("curl")
        .args(["-fsS", "-o"])
        .arg(&tarball)
        .arg(url.split('#').next().unwrap_or_default()))?;
    std::fs::create_dir_all(repo)?;
    sh(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .args(["--strip-components=1", "-C"])
        .arg(repo))?;
    Ok(url)
}

async fn build(builder: &Builder, repo: &Path) -> Result<(BuildOutcome, f64)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let log = tokio::spawn(async move {
        let mut tail = String::new();
        while let Some(e) = rx.recv().await {
            if let BuildEvent::Log { text, .. } = e {
                tail.push_str(&text);
                if tail.len() > 8192 {
                    tail.drain(..tail.len() - 4096);
                }
            }
        }
        tail
    });
    let t = Instant::now();
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
    let ms = t.elapsed().as_secs_f64() * 1e3;
    drop(tx);
    let tail = log.await?;
    match result {
        Ok(outcome) => {
            if outcome.steps.iter().any(|s| !s.ok) {
                eprintln!("a warm step failed; the log's end:\n{tail}");
            }
            Ok((outcome, ms))
        }
        Err(e) => bail!("build failed: {e}\n{tail}"),
    }
}

fn steps_json(outcome: &BuildOutcome) -> Value {
    outcome
        .steps
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "kind": s.kind,
                "cached": s.cached,
                "ok": s.ok,
                "elapsed_ms": s.elapsed_ms,
            })
        })
        .collect()
}

async fn run(args: &Args) -> Result<Value> {
    let scratch = tempfile::Builder::new()
        .prefix("hangar-rebuild-bench-")
        .tempdir_in(&args.scratch)
        .with_context(|| format!("a scratch directory in {}", args.scratch.display()))?;
    let dir = scratch.path();
    let repo = dir.join("repo");
    let url = fetch_sdist(args, &repo)?;
    eprintln!("fetched {url}");
    let bullseye = hangar_testkit::bullseye_tarball().map_err(anyhow::Error::msg)?;
    std::fs::write(
        repo.join("requirements-dev.txt"),
        args.requirements
            .split_whitespace()
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    )?;
    std::fs::write(
        repo.join("hangar.toml"),
        format!(
            r#"base = "rootfs:{base}"
packages = ["python3-pip"]

[env]
PIP_DISABLE_PIP_VERSION_CHECK = "1"

[[setup]]
name = "test dependencies"
run = "pip3 install --no-cache-dir -r requirements-dev.txt"
inputs = ["requirements-dev.txt"]

[[warm]]
name = "tests"
run = "{tests}"
"#,
            base = bullseye.display(),
            tests = args.tests.replace('"', "\\\""),
        ),
    )?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "the source distribution"])?;

    let mut config = hangar_config::Config {
        data_dir: dir.join("data"),
        ..Default::default()
    };
    config.sandbox.tools_dir = std::env::current_exe()?.parent().map(Path::to_path_buf);
    let runtime = Arc::new(LocalRuntime::open(&config)?);
    let store = Store::open(&config.data_dir)?;
    let builder = Builder::new(runtime, store, config.clone());

    eprintln!("full build…");
    let (full, full_ms) = build(&builder, &repo).await?;
    eprintln!("full build: {full_ms:.0} ms");
    let mut rebuilds = Vec::new();
    let mut rebuild_steps = Value::Null;
    for i in 0..args.rebuilds {
        let file = repo.join(&args.change);
        let mut text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        text.push_str(&format!("\n# benchmark change {i}\n"));
        std::fs::write(&file, text)?;
        git(&repo, &["commit", "-qam", &format!("change {i}")])?;
        let (outcome, ms) = build(&builder, &repo).await?;
        eprintln!("rebuild {i}: {ms:.0} ms");
        let reran: Vec<&str> = outcome
            .steps
            .iter()
            .filter(|s| !s.cached)
            .map(|s| s.name.as_str())
            .collect();
        if reran
            .iter()
            .any(|n| *n == "test dependencies" || *n == "packages")
        {
            bail!("a source change rebuilt what does not depend on it: {reran:?}");
        }
        rebuilds.push(ms);
        rebuild_steps = steps_json(&outcome);
    }
    hangar_testkit::remove_sandboxes(&config.data_dir);
    let summary = Summary::of(&rebuilds).context("no rebuilds")?;
    Ok(json!({
        "benchmark": "rebuild",
        "project": format!("{}=={}", args.project, args.version),
        "sdist": url.split('#').next().unwrap_or_default(),
        "changed_file": args.change,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "full_build_ms": round3(full_ms),
        "full_build_steps": steps_json(&full),
        "rebuild": summary.to_json(),
        "last_rebuild_steps": rebuild_steps,
        "rebuild_over_full_p50": round3(summary.p50 / full_ms),
    }))
}
