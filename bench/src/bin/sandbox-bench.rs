//! `sandbox-bench`: how fast Hangar's local runtime starts a sandbox and how many idle ones
//! a machine holds, measured beside bubblewrap and runc on the same unpacked rootfs.
//!
//! - `start`: per iteration, Hangar (create → `true` through envd → exit seen → destroy),
//!   `bwrap ... true` and `runc run` of a bundle running `true`, in rotating order, so
//!   machine noise falls on all three alike.
//! - `density`: N idle Hangar sandboxes; memory (MemAvailable before and after, RSS/PSS of
//!   their jail and init processes, cgroup usage), time to start them all, a sample still
//!   answering, and memory returning after they are destroyed.
//!
//! Prints one JSON document on stdout; progress on stderr. Needs root, `bwrap` and `runc`
//! on PATH, and `hangar-jail` and `envd` next to this executable
//! (`cargo build --release --workspace --bins`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hangar_bench::{Footprint, Summary, meminfo_kib, round3, spread, stat_ppid};
use hangar_protocol::envd::ExecRequest;
use hangar_sandbox::{LocalRuntime, Network, Rootfs, Runtime, SandboxSpec};
use serde_json::{Value, json};

/// Benchmarks Hangar's local sandbox runtime beside bubblewrap and runc.
#[derive(Parser, Debug)]
#[command(name = "sandbox-bench")]
struct Args {
    /// Measured start iterations per peer (0 skips the start benchmark).
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Peers of the start benchmark (a subset is for profiling one of them alone).
    #[arg(long, value_delimiter = ',', default_value = "hangar,bwrap,runc")]
    peers: Vec<Peer>,
    /// Unmeasured start iterations per peer first (page cache, dentries, lazy kernel state).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Idle sandboxes to hold at once (0 skips the density benchmark).
    #[arg(long, default_value_t = 1000)]
    density: usize,
    /// How many of the idle sandboxes must still run `true` before they are destroyed.
    #[arg(long, default_value_t = 50)]
    density_sample: usize,
    /// Seconds to wait, after destroying the idle sandboxes, for MemAvailable to come back:
    /// the kernel frees namespaces, mounts and cgroups through deferred (lazy RCU) work.
    #[arg(long, default_value_t = 30)]
    return_wait: u64,
    /// Rootfs tarball; by default the test suite's Debian bullseye one, built with
    /// mmdebstrap when missing.
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// Directory under which the scratch data directory is made; tmpfs keeps disk I/O out
    /// of the numbers.
    #[arg(long, default_value = "/dev/shm")]
    scratch: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let doc = rt.block_on(run(&args))?;
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

async fn run(args: &Args) -> Result<Value> {
    let scratch = args
        .scratch
        .join(format!("hangar-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let config = hangar_config::Config {
        data_dir: scratch.join("data"),
        ..Default::default()
    };
    let rt = LocalRuntime::open(&config).context("opening Hangar's local runtime")?;
    let result = bench(args, &rt, &scratch).await;
    // Whatever happened, leave no sandbox, runc state or scratch file behind.
    if let Ok(all) = rt.list().await {
        for sb in all {
            let _ = rt.destroy(&sb.id).await;
        }
    }
    // Dropping the runtime waits for the teardowns still under way.
    drop(rt);
    if let Err(e) = std::fs::remove_dir_all(&scratch) {
        eprintln!("removing {}: {e}", scratch.display());
    }
    result
}

async fn bench(args: &Args, rt: &LocalRuntime, scratch: &Path) -> Result<Value> {
    let tarball = match &args.rootfs {
        Some(p) => p.clone(),
        None => hangar_testkit::bullseye_tarball().map_err(anyhow::Error::msg)?,
    };
    eprintln!("unpacking {}", tarball.display());
    let rootfs = rt
        .prepare_rootfs(&tarball.display().to_string())
        .context("preparing the rootfs")?;
    let root = match &rootfs {
        Rootfs::Layers { layers } if layers.len() == 1 => layers[0].clone(),
        other => bail!("expected one unpacked rootfs directory, got {other:?}"),
    };
    let spec = SandboxSpec {
        rootfs,
        limits: rt.default_limits(),
        network: Network::None,
    };

    let start = if args.iterations > 0 {
        start_bench(args, rt, &spec, &root, scratch).await?
    } else {
        Value::Null
    };
    let density = if args.density > 0 {
        density_bench(args, rt, &spec).await?
    } else {
        Value::Null
    };

    Ok(json!({
        "benchmark": "sandbox",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "hangar": {
            "version": env!("CARGO_PKG_VERSION"),
            "commit": command_stdout("git", &["rev-parse", "--short", "HEAD"]).ok(),
            "cgroups": rt.cgroup_layout(),
            "limits": {
                "memory_bytes": spec.limits.memory_bytes,
                "pids": spec.limits.pids,
                "cpus": spec.limits.cpus,
            },
        },
        "peers": {
            "bwrap": command_stdout("bwrap", &["--version"]).ok(),
            "runc": command_stdout("runc", &["--version"]).ok(),
        },
        "machine": machine(),
        "rootfs": {
            "tarball": tarball.display().to_string(),
            "unpacked": root.display().to_string(),
        },
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "start": start,
        "density": density,
    }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Peer {
    Hangar,
    Bwrap,
    Runc,
}

/// Hangar's phases of one start, in milliseconds.
#[derive(Default)]
struct Phases {
    create: Vec<f64>,
    exec: Vec<f64>,
    destroy: Vec<f64>,
    teardown: Vec<f64>,
    ready_and_done: Vec<f64>,
    cycle: Vec<f64>,
    cycle_and_background: Vec<f64>,
}

async fn start_bench(
    args: &Args,
    rt: &LocalRuntime,
    spec: &SandboxSpec,
    root: &Path,
    scratch: &Path,
) -> Result<Value> {
    if args.peers.is_empty() {
        bail!("--peers names none");
    }
    let bundle = if args.peers.contains(&Peer::Runc) {
        runc_bundle(root, scratch)?
    } else {
        PathBuf::new()
    };
    let mut hangar = Phases::default();
    let mut bwrap = Vec::new();
    let mut runc = Vec::new();
    let total = args.warmup + args.iterations;
    eprintln!(
        "start: {} iterations (+{} warm-up) of hangar, bwrap, runc",
        args.iterations, args.warmup
    );
    let began = Instant::now();
    for i in 0..total {
        let measured = i >= args.warmup;
        // Rotate who goes first, so none always runs right after another's teardown.
        for k in 0..args.peers.len() {
            match args.peers[(i + k) % args.peers.len()] {
                Peer::Hangar => {
                    let (create, exec, destroy, teardown) = hangar_once(rt, spec).await?;
                    if measured {
                        hangar.create.push(create);
                        hangar.exec.push(exec);
                        hangar.destroy.push(destroy);
                        hangar.teardown.push(teardown);
                        hangar.ready_and_done.push(create + exec);
                        hangar.cycle.push(create + exec + destroy);
                        hangar
                            .cycle_and_background
                            .push(create + exec + destroy + teardown);
                    }
                }
                Peer::Bwrap => {
                    let ms = bwrap_once(root).await?;
                    if measured {
                        bwrap.push(ms);
                    }
                }
                Peer::Runc => {
                    let ms = runc_once(&bundle, i).await?;
                    if measured {
                        runc.push(ms);
                    }
                }
            }
        }
        if (i + 1) % 25 == 0 || i + 1 == total {
            eprintln!(
                "start: {}/{total} ({:.1}s)",
                i + 1,
                began.elapsed().as_secs_f64()
            );
        }
    }

    let summary = |v: &[f64]| Summary::of(v).map(|s| s.to_json());
    let (h, b, r) = (
        Summary::of(&hangar.cycle),
        Summary::of(&bwrap),
        Summary::of(&runc),
    );
    // A ratio only when both peers ran.
    let ratio = |num: Option<Summary>, den: Option<Summary>, p: fn(&Summary) -> f64| {
        Some(round3(p(&num?) / p(&den?)))
    };
    Ok(json!({
        "what": "create -> run `true` -> its exit seen -> destroy, per iteration; the peers interleaved in rotating order on the same unpacked rootfs",
        "iterations": args.iterations,
        "warmup": args.warmup,
        "peers": {
            "hangar": {
                "how": "LocalRuntime::create (jail, namespaces, id-mapped overlayfs, envd ready) -> EnvdClient::output([\"true\"]) -> LocalRuntime::destroy (returns once the sandbox is killed and unlisted; the teardown that follows, and the spare place (cgroups and a waiting jail) the runtime then makes for the next create, are timed apart and waited for outside the cycle; cycle_and_background_work adds them back)",
                "cycle": h.map(|s| s.to_json()),
                "create_to_first_command_done": summary(&hangar.ready_and_done),
                "cycle_and_background_work": summary(&hangar.cycle_and_background),
                "phases": {
                    "create": summary(&hangar.create),
                    "exec_true": summary(&hangar.exec),
                    "destroy": summary(&hangar.destroy),
                    "background_teardown_untimed": summary(&hangar.teardown),
                },
            },
            "bwrap": {
                "how": format!("bwrap --unshare-all --die-with-parent --ro-bind {} / --proc /proc --dev /dev --tmpfs /tmp true", root.display()),
                "cycle": b.map(|s| s.to_json()),
            },
            "runc": {
                "how": format!("runc run --bundle {} <fresh id> (config from `runc spec`: readonly root, args [\"true\"], no terminal)", bundle.display()),
                "cycle": r.map(|s| s.to_json()),
            },
        },
        "ratios": {
            "hangar_over_bwrap_p50": ratio(h, b, |s| s.p50),
            "hangar_over_bwrap_p99": ratio(h, b, |s| s.p99),
            "runc_over_hangar_p50": ratio(r, h, |s| s.p50),
            "runc_over_hangar_p99": ratio(r, h, |s| s.p99),
        },
    }))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn true_request() -> ExecRequest {
    ExecRequest {
        argv: vec!["true".into()],
        timeout_ms: Some(10_000),
        ..Default::default()
    }
}

/// One Hangar start: create, `true`, destroy; the three phase times in milliseconds, and
/// then (not part of the cycle) how long the background teardown took after destroy
/// returned. It is waited for before the next peer runs, so no peer's time includes it.
async fn hangar_once(rt: &LocalRuntime, spec: &SandboxSpec) -> Result<(f64, f64, f64, f64)> {
    let t0 = Instant::now();
    let sb = rt.create(spec.clone()).await.context("hangar: create")?;
    let t1 = Instant::now();
    let ran = async {
        let out = rt.envd(&sb.id).await?.output(true_request(), 4096).await?;
        anyhow::Ok(out.status.shell_code())
    }
    .await;
    let t2 = Instant::now();
    let destroyed = rt.destroy(&sb.id).await;
    let t3 = Instant::now();
    rt.teardowns_done().await;
    let t4 = Instant::now();
    match ran.context("hangar: running `true` through envd")? {
        0 => {}
        code => bail!("hangar: `true` exited with {code}"),
    }
    destroyed.context("hangar: destroy")?;
    Ok((ms(t1 - t0), ms(t2 - t1), ms(t3 - t2), ms(t4 - t3)))
}

async fn bwrap_once(root: &Path) -> Result<f64> {
    let t0 = Instant::now();
    let out = tokio::process::Command::new("bwrap")
        .args(["--unshare-all", "--die-with-parent", "--ro-bind"])
        .arg(root)
        .args([
            "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .await
        .context("running bwrap")?;
    let elapsed = t0.elapsed();
    if !out.status.success() {
        bail!(
            "bwrap failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms(elapsed))
}

/// runc keeps a container's state here while it exists.
const RUNC_STATE: &str = "/run/runc";

async fn runc_once(bundle: &Path, i: usize) -> Result<f64> {
    let id = format!("hangar-bench-{}-{i}", std::process::id());
    let t0 = Instant::now();
    let out = tokio::process::Command::new("runc")
        .arg("run")
        .arg("--bundle")
        .arg(bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .await
        .context("running runc")?;
    // `runc run` deletes its container on exit; anything left is part of the cost.
    if Path::new(RUNC_STATE).join(&id).exists() {
        runc_delete(&id).await?;
    }
    let elapsed = t0.elapsed();
    if !out.status.success() {
        bail!(
            "runc run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms(elapsed))
}

async fn runc_delete(id: &str) -> Result<()> {
    let out = tokio::process::Command::new("runc")
        .args(["delete", "--force", id])
        .stdin(Stdio::null())
        .output()
        .await
        .context("running runc delete")?;
    if !out.status.success() {
        bail!(
            "runc delete {id} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A runc bundle from `runc spec`, edited to run `true` on `root`, read-only.
fn runc_bundle(root: &Path, scratch: &Path) -> Result<PathBuf> {
    let bundle = scratch.join("runc-bundle");
    std::fs::create_dir_all(&bundle).with_context(|| format!("creating {}", bundle.display()))?;
    let out = std::process::Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .output()
        .context("running runc spec")?;
    if !out.status.success() {
        bail!(
            "runc spec failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let path = bundle.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut config: Value = serde_json::from_str(&text).context("parsing runc's config.json")?;
    config["root"] = json!({ "path": root.display().to_string(), "readonly": true });
    config["process"]["args"] = json!(["true"]);
    config["process"]["terminal"] = json!(false);
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(bundle)
}

/// One idle sandbox of the density run.
struct Idle {
    id: String,
    init: Option<u32>,
}

async fn density_bench(args: &Args, rt: &LocalRuntime, spec: &SandboxSpec) -> Result<Value> {
    let n = args.density;
    eprintln!("density: starting {n} idle sandboxes");
    let before = settled_meminfo().await?;
    let before_kib = before.available;
    let began = Instant::now();
    let mut idle: Vec<Idle> = Vec::with_capacity(n);
    let mut create_ms = Vec::with_capacity(n);
    let mut error = None;
    for i in 0..n {
        let t = Instant::now();
        match rt.create(spec.clone()).await {
            Ok(sb) => {
                create_ms.push(ms(t.elapsed()));
                idle.push(Idle {
                    id: sb.id,
                    init: sb.init_pid,
                });
            }
            Err(e) => {
                eprintln!("density: sandbox {} failed to start: {e}", i + 1);
                error = Some(e.to_string());
                break;
            }
        }
        if (i + 1) % 100 == 0 {
            eprintln!(
                "density: {}/{n} ({:.1}s)",
                i + 1,
                began.elapsed().as_secs_f64()
            );
        }
    }
    let start_all = began.elapsed();
    let started = idle.len();
    let with = settled_meminfo().await?;
    let after_kib = with.available;

    // Processes: each sandbox is its jail (the monitor, init's parent) and init (envd).
    let mut jails = Footprint::default();
    let mut inits = Footprint::default();
    let mut init_threads = 0u64;
    let mut cgroup_bytes = 0u64;
    for sb in &idle {
        if let Some(pid) = sb.init {
            inits += footprint(pid);
            init_threads += std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| meminfo_kib(&s, "Threads"))
                .unwrap_or(0);
            if let Some(jail) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| stat_ppid(&s))
            {
                jails += footprint(jail);
            }
        }
        if let Ok(u) = rt.stats(&sb.id).await {
            cgroup_bytes += u.memory_bytes;
        }
    }

    eprintln!("density: checking that a sample still answers");
    let mut answered = 0usize;
    let mut sample_ms = Vec::new();
    let sample = spread(started, args.density_sample);
    for &i in &sample {
        let t = Instant::now();
        let ok = async {
            let out = rt
                .envd(&idle[i].id)
                .await?
                .output(true_request(), 4096)
                .await?;
            anyhow::Ok(out.status.shell_code() == 0)
        }
        .await;
        sample_ms.push(ms(t.elapsed()));
        match ok {
            Ok(true) => answered += 1,
            Ok(false) => eprintln!("density: `true` failed in {}", idle[i].id),
            Err(e) => eprintln!("density: {} did not answer: {e:#}", idle[i].id),
        }
    }

    eprintln!("density: destroying {started}");
    let t = Instant::now();
    let mut destroy_errors = 0usize;
    for sb in &idle {
        if let Err(e) = rt.destroy(&sb.id).await {
            destroy_errors += 1;
            eprintln!("density: destroying {}: {e}", sb.id);
        }
    }
    let destroy_all = t.elapsed();
    let left = rt.list().await.map(|l| l.len()).unwrap_or(usize::MAX);
    rt.teardowns_done().await;
    let torn_down_all = t.elapsed();
    // Wait until memory is back within 5% of what the sandboxes took (or the time is up).
    let tolerance = before_kib.saturating_sub(after_kib) / 20;
    let t = Instant::now();
    let mut after_destroy = settled_meminfo().await?;
    let mut curve = vec![json!([
        round3(t.elapsed().as_secs_f64()),
        after_destroy.available
    ])];
    while after_destroy.available + tolerance < before_kib
        && t.elapsed() < Duration::from_secs(args.return_wait)
    {
        after_destroy = settled_meminfo().await?;
        curve.push(json!([
            round3(t.elapsed().as_secs_f64()),
            after_destroy.available
        ]));
    }
    let returned_after = t.elapsed();
    let after_destroy_kib = after_destroy.available;

    // Signed: other work on the machine can free memory meanwhile.
    let used_kib = before_kib as i64 - after_kib as i64;
    let per = |kib: u64| {
        if started == 0 {
            0.0
        } else {
            round3(kib as f64 / started as f64)
        }
    };
    Ok(json!({
        "what": "N idle sandboxes from the same rootfs, started one after another; memory from MemAvailable and from their processes; a sample runs `true`; all destroyed",
        "requested": n,
        "started": started,
        "error": error,
        "start_all_s": round3(start_all.as_secs_f64()),
        "create": Summary::of(&create_ms).map(|s| s.to_json()),
        "memory": {
            "mem_available_before_kib": before_kib,
            "mem_available_with_sandboxes_kib": after_kib,
            "mem_available_after_destroy_kib": after_destroy_kib,
            "used_kib": used_kib,
            "per_sandbox_kib": round3(used_kib as f64 / started.max(1) as f64),
            "not_returned_after_destroy_kib": before_kib as i64 - after_destroy_kib as i64,
            "returned_within_s": round3(returned_after.as_secs_f64()),
            "mem_available_after_destroy_curve_s_kib": curve,
            "kernel_breakdown_per_sandbox_kib": with.cost_per(&before, started),
            "processes": {
                "jail_rss_kib": jails.rss_kib,
                "jail_pss_kib": jails.pss_kib,
                "init_rss_kib": inits.rss_kib,
                "init_pss_kib": inits.pss_kib,
                "per_sandbox_rss_kib": per(jails.rss_kib + inits.rss_kib),
                "per_sandbox_pss_kib": per(jails.pss_kib + inits.pss_kib),
                "init_threads_per_sandbox": per(init_threads),
            },
            "cgroup_memory_usage_kib": cgroup_bytes / 1024,
            "per_sandbox_cgroup_kib": per(cgroup_bytes / 1024),
        },
        "sample_check": {
            "checked": sample.len(),
            "answered": answered,
            "latency": Summary::of(&sample_ms).map(|s| s.to_json()),
        },
        "destroy": {
            "all_s": round3(destroy_all.as_secs_f64()),
            "all_torn_down_s": round3(torn_down_all.as_secs_f64()),
            "errors": destroy_errors,
            "sandboxes_left": left,
        },
    }))
}

fn footprint(pid: u32) -> Footprint {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map(|t| Footprint::parse(&t))
        .unwrap_or_default()
}

/// `/proc/meminfo` fields that say where sandbox memory goes.
const MEMINFO_PARTS: [&str; 8] = [
    "AnonPages",
    "Shmem",
    "Slab",
    "SUnreclaim",
    "KernelStack",
    "PageTables",
    "Percpu",
    "Cached",
];

/// One reading of `/proc/meminfo`, KiB.
struct Meminfo {
    available: u64,
    parts: Vec<(&'static str, u64)>,
}

impl Meminfo {
    fn read() -> Result<Meminfo> {
        let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        Ok(Meminfo {
            available: meminfo_kib(&text, "MemAvailable")
                .context("no MemAvailable in /proc/meminfo")?,
            parts: MEMINFO_PARTS
                .iter()
                .map(|k| (*k, meminfo_kib(&text, k).unwrap_or(0)))
                .collect(),
        })
    }

    /// How much each field grew since `before`, per sandbox.
    fn cost_per(&self, before: &Meminfo, n: usize) -> Value {
        let mut out = serde_json::Map::new();
        for ((key, now), (_, then)) in self.parts.iter().zip(&before.parts) {
            let grew = *now as f64 - *then as f64;
            out.insert((*key).to_string(), json!(round3(grew / n.max(1) as f64)));
        }
        Value::Object(out)
    }
}

/// /proc/meminfo after a pause: freed namespaces, mounts and pages go back through RCU and
/// deferred work, so an immediate reading lags.
async fn settled_meminfo() -> Result<Meminfo> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    Meminfo::read()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).ok(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu_model": cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string())),
        "mem_total_kib": meminfo_kib(&meminfo, "MemTotal"),
    })
}

fn command_stdout(program: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
