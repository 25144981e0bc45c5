//! `hangar image`: build, list, show, remove, collect garbage, export and import images
//! in this machine's layer store (`<data dir>/images`). Builds run here, on the local
//! sandbox runtime, with a progress display (step, elapsed time, log tail).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use hangar_config::Config;
use hangar_images::{BuildError, BuildEvent, BuildRequest, Builder, ImageInfo, Store};
use hangar_sandbox::LocalRuntime;
use indicatif::{ProgressBar, ProgressStyle};

/// Image subcommands.
#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build a repository's image from its recipe (hangar.toml) and make it current.
    Build(BuildArgs),
    /// List images (`*` marks each repository's current one).
    List {
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Show one image: repository, commit, layers, recipe.
    Show {
        /// Image id (or a unique prefix).
        id: String,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Remove images (their layers go at the next gc). A repository's current image
    /// cannot be removed.
    Rm {
        /// Image ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove layers no image uses; layers of existing sandboxes are always kept.
    Gc {
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Write an image as an OCI image layout tarball (for umoci, skopeo oci-archive:, ...).
    Export {
        /// Image id.
        id: String,
        /// The tarball to write.
        file: PathBuf,
        /// The image's ref.name in the layout (default: its id).
        #[arg(long)]
        tag: Option<String>,
    },
    /// Import the images of an OCI image layout (a tarball or a directory).
    Import {
        /// The layout.
        file: PathBuf,
        /// Only the image with this ref.name.
        #[arg(long = "ref")]
        reference: Option<String>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

/// `hangar image build`.
#[derive(Args)]
pub struct BuildArgs {
    /// The repository: a local path, file:// or https:// URL.
    repo: String,
    /// Branch, tag or commit (default: the remote's HEAD).
    #[arg(long = "ref")]
    reference: Option<String>,
    /// A recipe file to use instead of the repository's hangar.toml.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Print one JSON document (the image and each step) instead of progress.
    #[arg(long)]
    json: bool,
}

/// Runs an image subcommand.
pub async fn run(cmd: ImageCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let store = Store::open(&config.data_dir).context("opening the image store")?;
    match cmd {
        ImageCommand::Build(args) => build(args, store, config).await,
        ImageCommand::List { json } => {
            let images = store.images()?;
            let current: Vec<String> = store.repos()?.into_values().map(|s| s.current).collect();
            if json {
                let out: Vec<serde_json::Value> = images
                    .iter()
                    .map(|i| image_json(i, current.contains(&i.digest)))
                    .collect();
                println!("{}", serde_json::Value::Array(out));
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<13} {:<40} {:<12} {:<18} {:>6} {:>10}  CREATED",
                "ID", "REPO", "COMMIT", "BASE", "LAYERS", "SIZE"
            );
            for i in &images {
                let mark = if current.contains(&i.digest) {
                    "*"
                } else {
                    " "
                };
                println!(
                    "{}{:<12} {:<40} {:<12} {:<18} {:>6} {:>10}  {}",
                    mark,
                    i.id,
                    i.meta.repo.as_deref().unwrap_or("-"),
                    i.meta
                        .commit
                        .as_deref()
                        .map(|c| &c[..c.len().min(12)])
                        .unwrap_or("-"),
                    i.meta.base,
                    i.layers.len(),
                    human_size(i.size),
                    i.created.as_deref().unwrap_or("-")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Show { id, json } => {
            let image = store.image(&id)?;
            let current = store
                .repos()?
                .into_values()
                .any(|s| s.current == image.digest);
            if json {
                println!("{}", image_json(&image, current));
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "id        {}{}",
                image.id,
                if current { " (current)" } else { "" }
            );
            println!("digest    {}", image.digest);
            println!("repo      {}", image.meta.repo.as_deref().unwrap_or("-"));
            println!("commit    {}", image.meta.commit.as_deref().unwrap_or("-"));
            println!("base      {}", image.meta.base);
            println!("created   {}", image.created.as_deref().unwrap_or("-"));
            println!("workdir   {}", image.meta.workdir.as_deref().unwrap_or("-"));
            println!("size      {}", human_size(image.size));
            println!("layers");
            for l in &image.layers {
                println!("  {}  {:>10}", l.digest, human_size(l.size));
            }
            if let Some(r) = &image.meta.recipe {
                println!("recipe\n{}", indent(r));
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Rm { ids } => {
            for id in ids {
                let image = store.remove_image(&id)?;
                println!("{}", image.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Gc { json } => {
            let runtime = LocalRuntime::open(config)?;
            let report = hangar_images::collect_garbage(&store, &runtime).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "removed {} blobs ({}), {} unpacked layers, {} cache entries",
                    report.blobs_removed,
                    human_size(report.bytes_freed),
                    report.layers_removed,
                    report.cache_entries_removed
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Export { id, file, tag } => {
            let image = store.export(&id, &file, tag.as_deref())?;
            eprintln!("exported {} to {}", image.id, file.display());
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Import {
            file,
            reference,
            json,
        } => {
            let images = store.import(&file, reference.as_deref())?;
            if json {
                let out: Vec<serde_json::Value> =
                    images.iter().map(|i| image_json(i, false)).collect();
                println!("{}", serde_json::Value::Array(out));
            } else {
                for i in images {
                    println!("{}", i.id);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn image_json(i: &ImageInfo, current: bool) -> serde_json::Value {
    let mut v = serde_json::to_value(i).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("current".into(), current.into());
    }
    v
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Lines of the running step's output shown under the progress line.
const TAIL: usize = 5;

async fn build(args: BuildArgs, store: Store, config: &Config) -> anyhow::Result<ExitCode> {
    let recipe = match &args.recipe {
        Some(p) => Some((
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        )),
        None => None,
    };
    let runtime = Arc::new(LocalRuntime::open(config)?);
    let builder = Builder::new(runtime, store, config.clone())
        .with_credentials(crate::server_cmd::git_credentials(config)?);
    let req = BuildRequest {
        repo: args.repo.clone(),
        reference: args.reference.clone(),
        recipe,
        detached: false,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let show = !args.json;
    let display = tokio::spawn(async move {
        let bar = if show && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            Some(b)
        } else {
            None
        };
        let mut tail: VecDeque<String> = VecDeque::new();
        let mut partial = String::new();
        let mut step = String::new();
        let mut started = Instant::now();
        let mut total = 0;
        let mut index = 0;
        let mut last_tail: Vec<String> = Vec::new();
        let line = |s: &str| {
            if show {
                eprintln!("{s}");
            }
        };
        loop {
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = tokio::time::sleep(Duration::from_millis(200)), if bar.is_some() => {
                    if let Some(b) = &bar {
                        b.set_message(progress_message(index, total, &step, started, &tail));
                    }
                    continue;
                }
            };
            let Some(event) = event else { break };
            match event {
                BuildEvent::Resolved {
                    repo,
                    commit,
                    steps,
                } => {
                    total = steps;
                    let msg = format!("building {repo} at {}", &commit[..commit.len().min(12)]);
                    match &bar {
                        Some(b) => b.println(msg),
                        None => line(&msg),
                    }
                }
                BuildEvent::StepStarted {
                    index: i,
                    name,
                    cached,
                    ..
                } => {
                    index = i;
                    step = name;
                    started = Instant::now();
                    tail.clear();
                    partial.clear();
                    if !cached && bar.is_none() {
                        line(&format!("[{}/{total}] {step}", i + 1));
                    }
                }
                BuildEvent::Log { text, .. } => {
                    partial.push_str(&text);
                    while let Some(nl) = partial.find('\n') {
                        let l: String = partial.drain(..=nl).collect();
                        tail.push_back(l.trim_end().to_string());
                        if tail.len() > 20 {
                            tail.pop_front();
                        }
                    }
                    last_tail = tail.iter().cloned().collect();
                }
                BuildEvent::StepFinished { index: i, report } => {
                    let how = if report.cached {
                        "cached".to_string()
                    } else {
                        format!("{:.1}s", report.elapsed_ms as f64 / 1000.0)
                    };
                    let mark = if report.ok { "✓" } else { "!" };
                    let msg = format!("{mark} [{}/{total}] {} ({how})", i + 1, report.name);
                    match &bar {
                        Some(b) => b.println(msg),
                        None => line(&msg),
                    }
                }
                BuildEvent::Warning { message } => {
                    let msg = format!("warning: {message}");
                    match &bar {
                        Some(b) => b.println(msg),
                        None => line(&msg),
                    }
                }
            }
            if let Some(b) = &bar {
                b.set_message(progress_message(index, total, &step, started, &tail));
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        last_tail
    });
    let result = builder.build(&req, &tx).await;
    drop(tx);
    let _ = display.await;
    match result {
        Ok(outcome) => {
            if args.json {
                println!("{}", serde_json::to_string(&outcome)?);
            } else {
                eprintln!(
                    "image {} is now current for {}",
                    outcome.image.id, outcome.repo
                );
                println!("{}", outcome.image.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(BuildError::StepFailed {
            index,
            step,
            reason,
            log_tail,
        }) => {
            if !args.json {
                for l in log_tail.lines() {
                    eprintln!("  | {l}");
                }
            }
            let last = log_tail.lines().last().unwrap_or("").trim();
            anyhow::bail!(
                "build failed at step {} ({step}): {reason}{}; the previous image stays current",
                index + 1,
                if last.is_empty() {
                    String::new()
                } else {
                    format!(" (last output: {last})")
                }
            )
        }
        Err(e) => Err(e.into()),
    }
}

fn progress_message(
    index: usize,
    total: usize,
    step: &str,
    started: Instant,
    tail: &VecDeque<String>,
) -> String {
    let mut msg = format!(
        "[{}/{total}] {step} ({:.0}s)",
        index + 1,
        started.elapsed().as_secs_f64()
    );
    for l in tail.iter().skip(tail.len().saturating_sub(TAIL)) {
        let l: String = l.chars().take(120).collect();
        msg.push_str("\n    ");
        msg.push_str(&l);
    }
    msg
}
