//! `snapshot-bench`: how fast Hangar snapshots a sandbox's writes and restores them,
//! beside `tar | zstd -1` of the same files and its extraction.
//!
//! Per iteration: a sandbox is created (host root) and stopped, and a tree of N files
//! (default 10,000 files, 100 MB: half random bytes, half text, so it compresses about
//! 2:1) is copied into its upper directory with the sandbox's host owners, as if it had
//! written them. Then, measured:
//!
//! - **snapshot**: `hangar_images::snapshot` — seal the upper dir into an OCI layer blob
//!   (tar + sha256, written to the store), move the dir into the store as the layer's
//!   unpacked form (owners shifted back), record the snapshot image, destroy the sandbox;
//! - **restore**: a new sandbox from the snapshot image, until a first command (`true`)
//!   has run through envd;
//! - **restore_cold**: unpacking the snapshot's blob into a layer directory, digest
//!   checked (a restore after the unpacked form was collected, or on another machine);
//! - **live_snapshot**: `hangar_images::live_snapshot` of a running sandbox holding the
//!   same tree — freeze its processes, seal its upper dir into a blob in place, thaw;
//! - **tar_zstd**: `tar -cf - . | zstd -1` of the same tree to a file;
//! - **untar_zstd**: `zstd -dc | tar -xf -` of that file into an empty directory.
//!
//! Prints one JSON document on stdout; progress on stderr. Needs root, `tar` and `zstd`,
//! and `hangar-jail` and `envd` next to this executable.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use hangar_bench::{Summary, round3};
use hangar_images::{ImageMeta, Store};
use hangar_protocol::envd::ExecRequest;
use hangar_sandbox::{LocalRuntime, Network, Rootfs, Runtime, SandboxSpec};
use serde_json::{Value, json};

/// Benchmarks snapshot and restore beside tar | zstd.
#[derive(Parser, Debug)]
#[command(name = "snapshot-bench")]
struct Args {
    /// Measured iterations.
    #[arg(long, default_value_t = 5)]
    iterations: usize,
    /// Files changed in the sandbox.
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Total size of those files, in MB (10^6 bytes).
    #[arg(long, default_value_t = 100)]
    megabytes: u64,
    /// Directory under which the scratch data directory is made (tmpfs keeps the slow
    /// root filesystem out of the numbers, as Hangar's data dir should be).
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

/// xorshift64*: fast, deterministic bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The tree a sandbox "wrote": `files` files in directories of 100, `bytes` in total.
fn make_tree(dir: &Path, files: usize, bytes: u64, uid: u32) -> Result<()> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let per = (bytes / files as u64).max(1) as usize;
    let text: Vec<u8> = b"fn main() { println!(\"hello from a sandbox\"); } // "
        .iter()
        .cycle()
        .take(per)
        .copied()
        .collect();
    for i in 0..files {
        let d = dir.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&d)?;
            std::os::unix::fs::chown(&d, Some(uid), Some(uid))?;
        }
        let p = d.join(format!("f{i:05}.dat"));
        let mut f = std::fs::File::create(&p)?;
        let mut buf = Vec::with_capacity(per);
        while buf.len() < per / 2 {
            buf.extend_from_slice(&rng.next().to_le_bytes());
        }
        buf.truncate(per / 2);
        buf.extend_from_slice(&text[..per - per / 2]);
        f.write_all(&buf)?;
        drop(f);
        std::os::unix::fs::chown(&p, Some(uid), Some(uid))?;
    }
    std::os::unix::fs::chown(dir, Some(uid), Some(uid))?;
    Ok(())
}

fn sh(script: &str) -> Result<()> {
    let out = Command::new("sh").arg("-c").arg(script).output()?;
    if !out.status.success() {
        bail!("{script}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn version(cmd: &str) -> String {
    Command::new(cmd)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

async fn run(args: &Args) -> Result<Value> {
    let dir = tempfile::Builder::new()
        .prefix("hangar-snapshot-bench-")
        .tempdir_in(&args.scratch)
        .context("scratch directory")?;
    let mut config = hangar_config::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.sandbox.tools_dir = None;
    let runtime = LocalRuntime::open(&config)?;
    let store = Store::open(&config.data_dir)?;
    let uid = config.sandbox.uid_base;
    let base = store.add_image(
        &[],
        &ImageMeta {
            base: "host".into(),
            ..Default::default()
        },
    )?;
    let template = dir.path().join("template");
    std::fs::create_dir(&template)?;
    eprintln!("making {} files, {} MB", args.files, args.megabytes);
    make_tree(&template, args.files, args.megabytes * 1_000_000, uid)?;
    let limits = runtime.default_limits();
    let mut samples: [Vec<f64>; 6] = Default::default();
    let mut blob_bytes = 0;
    let mut zst_bytes = 0;
    for i in 0..args.iterations {
        eprintln!("iteration {}/{}", i + 1, args.iterations);
        // The sandbox and what it "wrote".
        let sb = runtime
            .create(SandboxSpec {
                rootfs: Rootfs::HostRoot,
                limits,
                network: Network::None,
            })
            .await?;
        runtime.stop(&sb.id).await?;
        let upper = runtime.upper_dir(&sb.id)?;
        sh(&format!(
            "cp -a {}/. {}/",
            template.display(),
            upper.display()
        ))?;
        // Unique content per iteration, so no layer is found already made.
        std::fs::write(upper.join("iteration"), format!("{i}\n"))?;
        sh("sync")?;

        let t = Instant::now();
        let snap = hangar_images::snapshot(&runtime, &store, &config, &sb.id, &base).await?;
        samples[0].push(ms(t));
        let layer = snap.layers.last().context("snapshot layer")?.clone();
        blob_bytes = layer.size;

        let t = Instant::now();
        let restored = runtime
            .create(SandboxSpec {
                rootfs: hangar_images::rootfs(&store, &snap)?,
                limits,
                network: Network::None,
            })
            .await?;
        let out = runtime
            .envd(&restored.id)
            .await?
            .output(
                ExecRequest {
                    shell: Some("test -f /d099/f09999.dat || test -f /d000/f00000.dat".into()),
                    ..Default::default()
                },
                1 << 10,
            )
            .await?;
        samples[1].push(ms(t));
        if out.status.code != Some(0) {
            bail!("the restored sandbox does not see the snapshot's files");
        }
        runtime.destroy(&restored.id).await?;

        let unpacked = store.layer_dir(&layer.digest)?;
        std::fs::remove_dir_all(&unpacked)?;
        let t = Instant::now();
        store.layer_dir(&layer.digest)?;
        samples[2].push(ms(t));

        let zst = dir.path().join("peer.tar.zst");
        let t = Instant::now();
        sh(&format!(
            "tar -C {} -cf - . | zstd -1 -q -f -o {}",
            template.display(),
            zst.display()
        ))?;
        samples[3].push(ms(t));
        zst_bytes = std::fs::metadata(&zst)?.len();
        let dest = dir.path().join("peer-out");
        std::fs::create_dir(&dest)?;
        let t = Instant::now();
        sh(&format!(
            "zstd -dc -q {} | tar -C {} -xf - --numeric-owner",
            zst.display(),
            dest.display()
        ))?;
        samples[4].push(ms(t));

        let live = runtime
            .create(SandboxSpec {
                rootfs: Rootfs::HostRoot,
                limits,
                network: Network::None,
            })
            .await?;
        let live_upper = config
            .data_dir
            .join("sandboxes")
            .join(&live.id)
            .join("upper");
        sh(&format!(
            "cp -a {}/. {}/",
            template.display(),
            live_upper.display()
        ))?;
        std::fs::write(live_upper.join("iteration"), format!("live {i}\n"))?;
        sh("sync")?;
        let t = Instant::now();
        let live_snap = hangar_images::live_snapshot(&runtime, &store, &config, &live.id).await?;
        samples[5].push(ms(t));
        runtime.destroy(&live.id).await?;
        store.remove_image(&live_snap.id)?;

        // Clean up, unmeasured.
        std::fs::remove_dir_all(&dest)?;
        std::fs::remove_file(&zst)?;
        store.remove_image(&snap.id)?;
        store.gc(&[])?;
    }
    let names = [
        "snapshot",
        "restore",
        "restore_cold",
        "tar_zstd",
        "untar_zstd",
        "live_snapshot",
    ];
    let mut results = serde_json::Map::new();
    let mut p50 = [0.0; 6];
    for (k, (name, s)) in names.iter().zip(&samples).enumerate() {
        let summary = Summary::of(s).context("no samples")?;
        p50[k] = summary.p50;
        results.insert(name.to_string(), summary.to_json());
    }
    let under_500ms = [0, 1, 2, 5].iter().all(|&k| p50[k] <= 500.0);
    Ok(json!({
        "benchmark": "snapshot",
        "files": args.files,
        "megabytes": args.megabytes,
        "iterations": args.iterations,
        "peers": { "tar": version("tar"), "zstd": version("zstd") },
        "ms": results,
        "bytes": { "layer_blob": blob_bytes, "tar_zstd": zst_bytes },
        "ratios": {
            "snapshot_vs_tar_zstd": round3(p50[0] / p50[3]),
            "restore_cold_vs_untar_zstd": round3(p50[2] / p50[4]),
            "live_snapshot_vs_tar_zstd": round3(p50[5] / p50[3]),
        },
        "targets": {
            "each_under_500ms": under_500ms,
            "snapshot_within_1_2x_tar_zstd": p50[0] <= 1.2 * p50[3],
            "live_snapshot_within_1_2x_tar_zstd": p50[5] <= 1.2 * p50[3],
            "restore_cold_within_1_2x_untar_zstd": p50[2] <= 1.2 * p50[4],
        },
    }))
}
