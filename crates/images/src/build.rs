//! The builder: a repository at a commit plus its recipe → an image.
//!
//! The build is a chain of steps, each producing one or more layers:
//!
//! 1. **base** — nothing (`host`), a Debian rootfs built with mmdebstrap (the recipe's
//!    packages included), an imported rootfs tarball, or an OCI image's layers;
//! 2. **packages** — `apt-get install` in a sandbox, for bases that are not built with
//!    mmdebstrap;
//! 3. setup steps that declare `inputs`, run with only those files in the workdir;
//! 4. **checkout** — the repository at the commit, fetched on the host (credentials never
//!    enter a sandbox) and sealed as a layer at the workdir;
//! 5. the remaining setup steps, then the warm steps.
//!
//! Every step has a cache key: the parent step's key, the step's text and what it reads
//! (the commit for the checkout, the git object ids of declared inputs, the environment).
//! A step whose key is in the cache is not run; its layers are reused. So after a
//! source-only change, steps before the checkout are reused and the rest run again.
//!
//! A step runs in a fresh sandbox over the layers so far; when it succeeds the sandbox is
//! stopped and its upper directory is sealed into a layer (owners shifted back from the
//! sandbox's host uid range, overlay whiteouts turned into OCI ones). Only when every step
//! succeeded is the image recorded and made the repository's current image, so a failed
//! build leaves the previous image current.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_config::Config;
use hangar_envd_client::{ExecEvent, WriteOptions};
use hangar_protocol::envd::ExecRequest;
use hangar_sandbox::{Limits, LocalRuntime, Network, Rootfs, Runtime, SandboxError, SandboxSpec};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc::UnboundedSender;

use crate::git::{Credentials, Git, GitError, NoCredentials, normalize_repo};
use crate::layer::Owners;
use crate::recipe::{Base, NetworkMode, Recipe, RecipeError, Step};
use crate::store::{ImageInfo, ImageMeta, Layer, Store, StoreError, sha256_digest};

/// Top-level names in a sandbox's upper directory that are the jail's mount points, never
/// part of an image.
const UPPER_EXCLUDE: &[&str] = &[".hangar"];
/// How much of a step's output is kept for the failure message.
const TAIL_BYTES: usize = 16 * 1024;
/// Lines of output shown when a step fails.
const TAIL_LINES: usize = 20;

/// What to build.
#[derive(Clone, Debug, Default)]
pub struct BuildRequest {
    /// The repository: a local path, `file://` or `https://` URL.
    pub repo: String,
    /// Branch, tag or commit; the remote's HEAD when unset.
    pub reference: Option<String>,
    /// A recipe given outside the repository (its text and where it came from); the
    /// repository's `hangar.toml` otherwise.
    pub recipe: Option<(String, String)>,
    /// Leave the repository's current image as it is: the image is only for the caller
    /// (an environment's own image, built from its own recipe).
    pub detached: bool,
}

/// Progress of a build, in order, for the CLI's progress display and the event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildEvent {
    /// The ref was resolved.
    Resolved {
        /// The repository.
        repo: String,
        /// The commit being built.
        commit: String,
        /// How many steps the build has.
        steps: usize,
    },
    /// A step began (or was found in the cache).
    StepStarted {
        /// Its position, from 0.
        index: usize,
        /// How many steps the build has.
        total: usize,
        /// Its name.
        name: String,
        /// True when its layers come from the cache and nothing runs.
        cached: bool,
    },
    /// Output of the running step (stdout and stderr interleaved).
    Log {
        /// The step.
        index: usize,
        /// The text (lossy UTF-8).
        text: String,
    },
    /// A step ended.
    StepFinished {
        /// The step.
        index: usize,
        /// Its report.
        report: StepReport,
    },
    /// Something worth knowing that does not fail the build (e.g. a failing warm step).
    Warning {
        /// What happened.
        message: String,
    },
}

/// How one step went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// Its name.
    pub name: String,
    /// `base`, `packages`, `checkout`, `setup` or `warm`.
    pub kind: &'static str,
    /// True when it was reused from the cache.
    pub cached: bool,
    /// Wall time.
    pub elapsed_ms: u64,
    /// False for a warm step that failed (its layer is kept).
    pub ok: bool,
    /// The layers it contributed.
    pub layers: Vec<String>,
}

/// A finished build.
#[derive(Clone, Debug, Serialize)]
pub struct BuildOutcome {
    /// The new image, now current for the repository.
    pub image: ImageInfo,
    /// The repository as recorded.
    pub repo: String,
    /// The commit built.
    pub commit: String,
    /// Each step, in order.
    pub steps: Vec<StepReport>,
}

/// Why a build failed. The previous image stays current.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The recipe is unusable.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// Git failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// The layer store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sandbox could not be created or used.
    #[error("build sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    /// The base could not be prepared.
    #[error("base {base}: {message}")]
    Base {
        /// The base.
        base: String,
        /// What failed.
        message: String,
    },
    /// A step failed.
    #[error("step {} ({step}) failed: {reason}\n{log_tail}", index + 1)]
    StepFailed {
        /// Its position, from 0.
        index: usize,
        /// Its name.
        step: String,
        /// `exited with code 2`, `timed out after 600s`, ...
        reason: String,
        /// The last lines of its output.
        log_tail: String,
    },
    /// Talking to envd in the build sandbox failed.
    #[error("step {step}: {message}")]
    Envd {
        /// The step.
        step: String,
        /// What failed.
        message: String,
    },
}

/// Builds images on the local sandbox runtime.
pub struct Builder {
    runtime: Arc<LocalRuntime>,
    store: Store,
    config: Config,
    credentials: Arc<dyn Credentials>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

enum Kind<'a> {
    Base,
    Packages(Step),
    Checkout,
    Run { step: &'a Step, warm: bool },
}

struct Planned<'a> {
    name: String,
    kind: Kind<'a>,
}

impl Planned<'_> {
    fn kind_word(&self) -> &'static str {
        match self.kind {
            Kind::Base => "base",
            Kind::Packages(_) => "packages",
            Kind::Checkout => "checkout",
            Kind::Run { warm: false, .. } => "setup",
            Kind::Run { warm: true, .. } => "warm",
        }
    }
}

fn key_of(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    format!("sha256:{}", hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last `TAIL_LINES` lines of a step's output.
fn tail_lines(buf: &[u8]) -> String {
    let text = String::from_utf8_lossy(buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// Removes the sandbox when dropped, so no error path leaks one.
struct SandboxGuard {
    runtime: Arc<LocalRuntime>,
    id: Option<String>,
}

impl SandboxGuard {
    /// Destroys the sandbox and waits until its files are gone: the next step may need
    /// the space (a nearly full disk).
    async fn destroy(mut self) -> Result<(), SandboxError> {
        match self.id.take() {
            Some(id) => self.runtime.destroy_wait(&id).await,
            None => Ok(()),
        }
    }
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let rt = self.runtime.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = rt.destroy(&id).await;
                });
            }
        }
    }
}

impl Builder {
    /// A builder over `runtime` that stores images in `store`.
    pub fn new(runtime: Arc<LocalRuntime>, store: Store, config: Config) -> Builder {
        Builder {
            runtime,
            store,
            config,
            credentials: Arc::new(NoCredentials),
        }
    }

    /// Uses `credentials` for HTTPS remotes.
    pub fn with_credentials(mut self, credentials: Arc<dyn Credentials>) -> Builder {
        self.credentials = credentials;
        self
    }

    /// The credential source.
    pub fn credentials(&self) -> &dyn Credentials {
        self.credentials.as_ref()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Builds `req`, reporting progress on `events`. On success the new image is the
    /// repository's current image; on failure nothing changes but the build cache.
    pub async fn build(
        &self,
        req: &BuildRequest,
        events: &UnboundedSender<BuildEvent>,
    ) -> Result<BuildOutcome, BuildError> {
        let _lock = self.store.lock_shared()?;
        let url = normalize_repo(&req.repo)?;
        let work = self.store.scratch("build")?;
        let result = self.build_in(req, &url, &work, events).await;
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    async fn build_in(
        &self,
        req: &BuildRequest,
        url: &str,
        work: &Path,
        events: &UnboundedSender<BuildEvent>,
    ) -> Result<BuildOutcome, BuildError> {
        let git = Git::new(url, self.credentials.as_ref(), work)?;
        let commit = git.resolve(req.reference.as_deref()).await?;
        let (recipe_text, origin) = match &req.recipe {
            Some((text, origin)) => (text.clone(), origin.clone()),
            None => (String::new(), String::new()),
        };
        let recipe_from_repo = req.recipe.is_none();
        // The checkout is always fetched: it holds the recipe and the inputs, and is
        // cheap next to any step. It becomes a layer only when its step is not cached.
        let tree = work.join("tree");
        // The workdir is only known from the recipe; fetch into a holding directory and
        // move it into place once the recipe is read.
        let holding = work.join("src");
        git.checkout(&commit, req.reference.as_deref(), &holding)
            .await?;
        let (recipe_text, origin) = if recipe_from_repo {
            let text = git
                .show(&holding, &commit, "hangar.toml")
                .await?
                .ok_or_else(|| RecipeError::Invalid {
                    origin: None,
                    message: format!(
                        "{url} has no hangar.toml at {commit}; add one or pass --recipe FILE"
                    ),
                })?;
            (
                String::from_utf8_lossy(&text).into_owned(),
                "hangar.toml".to_string(),
            )
        } else {
            (recipe_text, origin)
        };
        let recipe = Recipe::parse(&recipe_text, Some(&origin))?;
        let checkout = tree.join(recipe.workdir.trim_start_matches('/'));
        if let Some(parent) = checkout.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Io {
                context: "preparing the checkout".into(),
                source: e,
            })?;
        }
        std::fs::rename(&holding, &checkout).map_err(|e| StoreError::Io {
            context: "preparing the checkout".into(),
            source: e,
        })?;

        let plan = plan(&recipe);
        let total = plan.len();
        let _ = events.send(BuildEvent::Resolved {
            repo: url.to_string(),
            commit: commit.clone(),
            steps: total,
        });
        let on_host = matches!(recipe.base, Base::Host);
        let mut layers: Vec<Layer> = Vec::new();
        let mut parent = String::new();
        let mut reports = Vec::new();
        let env: Vec<String> = recipe.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for (index, step) in plan.iter().enumerate() {
            let started = Instant::now();
            let key = match &step.kind {
                Kind::Base => key_of(&["base", &self.base_identity(&recipe)?]),
                Kind::Packages(s) => key_of(&[&parent, "packages", &s.run]),
                Kind::Checkout => key_of(&[&parent, "checkout", &commit, &recipe.workdir]),
                Kind::Run { step: s, .. } => {
                    let inputs = match &s.inputs {
                        Some(paths) if !paths.is_empty() => {
                            let listed = git.ls_tree(&checkout, &commit, paths).await?;
                            for p in paths {
                                let p = p.trim_end_matches('/');
                                if !listed
                                    .iter()
                                    .any(|(_, _, f)| f == p || f.starts_with(&format!("{p}/")))
                                {
                                    return Err(BuildError::StepFailed {
                                        index,
                                        step: step.name.clone(),
                                        reason: format!(
                                            "input {p} is not in the repository at {commit}"
                                        ),
                                        log_tail: String::new(),
                                    });
                                }
                            }
                            listed
                                .iter()
                                .map(|(m, o, p)| format!("{m} {o} {p}"))
                                .collect::<Vec<_>>()
                                .join("\n")
                        }
                        Some(_) => String::new(),
                        None => "whole-checkout".to_string(),
                    };
                    key_of(&[
                        &parent,
                        "run",
                        &s.run,
                        &recipe.workdir,
                        &env.join("\n"),
                        &inputs,
                        &format!("{:?}", recipe.network.build),
                    ])
                }
            };
            if let Some(cached) = self.store.cache_get(&key) {
                let _ = events.send(BuildEvent::StepStarted {
                    index,
                    total,
                    name: step.name.clone(),
                    cached: true,
                });
                let report = StepReport {
                    name: step.name.clone(),
                    kind: step.kind_word(),
                    cached: true,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    ok: true,
                    layers: cached.iter().map(|l| l.digest.clone()).collect(),
                };
                let _ = events.send(BuildEvent::StepFinished {
                    index,
                    report: report.clone(),
                });
                reports.push(report);
                layers.extend(cached);
                parent = key;
                continue;
            }
            let _ = events.send(BuildEvent::StepStarted {
                index,
                total,
                name: step.name.clone(),
                cached: false,
            });
            let mut ok = true;
            let produced: Vec<Layer> = match &step.kind {
                Kind::Base => self.base_layers(&recipe).await?,
                Kind::Checkout => {
                    let (layer, _) = self.store.seal_dir(&tree, Owners::AsIs, &[])?;
                    vec![layer]
                }
                Kind::Packages(s) => {
                    let (layer, _) = self
                        .run_step(
                            index, &step.name, s, false, &recipe, &layers, on_host, &checkout,
                            &commit, &git, events,
                        )
                        .await?;
                    vec![layer]
                }
                Kind::Run { step: s, warm } => {
                    let (layer, step_ok) = self
                        .run_step(
                            index, &step.name, s, *warm, &recipe, &layers, on_host, &checkout,
                            &commit, &git, events,
                        )
                        .await?;
                    ok = step_ok;
                    vec![layer]
                }
            };
            // A failing warm step's layer is kept in this image but not cached, so the
            // next build tries again.
            if ok {
                self.store.cache_put(&key, &produced)?;
            }
            let report = StepReport {
                name: step.name.clone(),
                kind: step.kind_word(),
                cached: false,
                elapsed_ms: started.elapsed().as_millis() as u64,
                ok,
                layers: produced.iter().map(|l| l.digest.clone()).collect(),
            };
            let _ = events.send(BuildEvent::StepFinished {
                index,
                report: report.clone(),
            });
            reports.push(report);
            layers.extend(produced);
            parent = key;
        }
        let meta = ImageMeta {
            repo: Some(url.to_string()),
            commit: Some(commit.clone()),
            base: recipe.base.to_string(),
            recipe_digest: Some(sha256_digest(recipe_text.as_bytes())),
            recipe: Some(recipe_text),
            workdir: Some(recipe.workdir.clone()),
            env,
            start: recipe.start.clone(),
            session_network: Some(match recipe.network.session {
                NetworkMode::None => "none".into(),
                NetworkMode::Egress => "egress".into(),
            }),
            snapshot_of: None,
        };
        // Nothing changed since the current image: keep it rather than minting an
        // identical image that differs only in its creation time.
        if let Some(current) = self.store.current(url)?
            && current.layers == layers
            && current.meta == meta
        {
            return Ok(BuildOutcome {
                image: current,
                repo: url.to_string(),
                commit,
                steps: reports,
            });
        }
        let image = self.store.add_image(&layers, &meta)?;
        if !req.detached {
            self.store.set_current(url, &image)?;
        }
        Ok(BuildOutcome {
            image,
            repo: url.to_string(),
            commit,
            steps: reports,
        })
    }

    /// An image of `recipe`'s base alone (its Debian packages included), for uses without
    /// a repository such as an environment. Cached like a build's base step; belongs to
    /// no repository.
    pub async fn build_base(
        &self,
        recipe_text: &str,
        origin: &str,
    ) -> Result<ImageInfo, BuildError> {
        let _lock = self.store.lock_shared()?;
        let recipe = Recipe::parse(recipe_text, Some(origin))?;
        let key = key_of(&["base", &self.base_identity(&recipe)?]);
        let layers = match self.store.cache_get(&key) {
            Some(layers) => layers,
            None => {
                let layers = self.base_layers(&recipe).await?;
                self.store.cache_put(&key, &layers)?;
                layers
            }
        };
        let meta = ImageMeta {
            repo: None,
            commit: None,
            base: recipe.base.to_string(),
            recipe_digest: Some(sha256_digest(recipe_text.as_bytes())),
            recipe: Some(recipe_text.to_string()),
            workdir: Some(recipe.workdir.clone()),
            env: recipe.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            start: recipe.start.clone(),
            session_network: Some(match recipe.network.session {
                NetworkMode::None => "none".into(),
                NetworkMode::Egress => "egress".into(),
            }),
            snapshot_of: None,
        };
        Ok(self.store.add_image(&layers, &meta)?)
    }

    /// What identifies the base's content for the cache.
    fn base_identity(&self, recipe: &Recipe) -> Result<String, BuildError> {
        Ok(match &recipe.base {
            Base::Host => "host".into(),
            Base::Debian { suite } => format!("debian:{suite}:{}", recipe.packages.join(",")),
            Base::Rootfs { path } | Base::Oci { path, .. } => {
                let meta = std::fs::metadata(path).map_err(|e| BuildError::Base {
                    base: recipe.base.to_string(),
                    message: e.to_string(),
                })?;
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                format!("{}:{}:{mtime}", recipe.base, meta.len())
            }
        })
    }

    async fn base_layers(&self, recipe: &Recipe) -> Result<Vec<Layer>, BuildError> {
        let base_err = |message: String| BuildError::Base {
            base: recipe.base.to_string(),
            message,
        };
        match &recipe.base {
            Base::Host => Ok(Vec::new()),
            Base::Debian { suite } => {
                let tarball = self
                    .debian_tarball(suite, &recipe.packages)
                    .await
                    .map_err(base_err)?;
                Ok(vec![self.import_tarball(&tarball).await.map_err(base_err)?])
            }
            Base::Rootfs { path } => Ok(vec![self.import_tarball(path).await.map_err(base_err)?]),
            Base::Oci { path, reference } => {
                let images = self.store.import(path, reference.as_deref())?;
                match images.as_slice() {
                    [one] => Ok(one.layers.clone()),
                    _ => Err(base_err(format!(
                        "the layout holds {} images; name one with oci:PATH#REF",
                        images.len()
                    ))),
                }
            }
        }
    }

    /// A Debian rootfs tarball of `suite` with `packages`, built with mmdebstrap once.
    async fn debian_tarball(&self, suite: &str, packages: &[String]) -> Result<PathBuf, String> {
        let mut include: Vec<String> = vec!["ca-certificates".into()];
        include.extend(packages.iter().cloned());
        include.sort();
        include.dedup();
        let name = format!(
            "debian-{suite}-{}.tar",
            &key_of(&[&include.join(",")])["sha256:".len()..][..12]
        );
        let tarball = self.store.bases_dir().join(name);
        if tarball.is_file() {
            return Ok(tarball);
        }
        let partial = tarball.with_extension(format!("{}.tar", uuid::Uuid::new_v4().simple()));
        let out = tokio::process::Command::new("mmdebstrap")
            .args(["--quiet", "--variant=minbase"])
            .arg(format!("--include={}", include.join(",")))
            .arg(suite)
            .arg(&partial)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                format!("running mmdebstrap: {e}; install it (scripts/install-deps.sh)")
            })?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&partial);
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(5).collect();
            return Err(format!(
                "mmdebstrap failed: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ));
        }
        std::fs::rename(&partial, &tarball).map_err(|e| format!("storing the rootfs: {e}"))?;
        Ok(tarball)
    }

    /// Stores a rootfs tarball (plain, gzip, xz or zstd) as a layer.
    async fn import_tarball(&self, path: &Path) -> Result<Layer, String> {
        let path = path.to_path_buf();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || import_tarball(&store, &path))
            .await
            .map_err(|e| format!("import task: {e}"))?
    }

    /// Runs one step in a fresh sandbox over `layers` and seals what it wrote. Returns
    /// the layer and whether the step succeeded (a failing warm step still yields one).
    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        index: usize,
        name: &str,
        step: &Step,
        warm: bool,
        recipe: &Recipe,
        layers: &[Layer],
        on_host: bool,
        checkout: &Path,
        commit: &str,
        git: &Git,
        events: &UnboundedSender<BuildEvent>,
    ) -> Result<(Layer, bool), BuildError> {
        let mut lower = Vec::with_capacity(layers.len());
        for l in layers.iter().rev() {
            lower.push(self.store.layer_dir(&l.digest)?);
        }
        let rootfs = if on_host {
            Rootfs::LayersOverHost { layers: lower }
        } else {
            Rootfs::Layers { layers: lower }
        };
        let defaults = self.runtime.default_limits();
        let limits = Limits {
            memory_bytes: recipe
                .limits
                .memory
                .as_deref()
                .and_then(|m| hangar_config::parse_size(m).ok())
                .unwrap_or(defaults.memory_bytes),
            pids: recipe.limits.pids.unwrap_or(defaults.pids),
            cpus: recipe.limits.cpus.unwrap_or(defaults.cpus),
        };
        let network = match recipe.network.build {
            NetworkMode::Egress => Network::Egress,
            NetworkMode::None => Network::None,
        };
        let sb = self
            .runtime
            .create(SandboxSpec {
                rootfs,
                limits,
                network,
            })
            .await?;
        let guard = SandboxGuard {
            runtime: self.runtime.clone(),
            id: Some(sb.id.clone()),
        };
        let envd_err = |e: hangar_envd_client::Error| BuildError::Envd {
            step: name.to_string(),
            message: e.to_string(),
        };
        let envd = self.runtime.envd(&sb.id).await?;
        envd.mkdir(&recipe.workdir, true).await.map_err(envd_err)?;
        if let Some(inputs) = &step.inputs
            && !inputs.is_empty()
        {
            for (mode, _, path) in git.ls_tree(checkout, commit, inputs).await? {
                // Symlinks and submodules are not copied as inputs.
                let mode = match mode.as_str() {
                    "100755" => 0o755,
                    "100644" => 0o644,
                    _ => continue,
                };
                let data = std::fs::read(checkout.join(&path)).map_err(|e| StoreError::Io {
                    context: format!("reading input {path}"),
                    source: e,
                })?;
                envd.write_file(
                    &format!("{}/{path}", recipe.workdir),
                    &data,
                    WriteOptions {
                        mode: Some(mode),
                        create_parents: true,
                    },
                )
                .await
                .map_err(envd_err)?;
            }
        }
        let timeout = recipe.step_timeout(step);
        let env: BTreeMap<String, String> = recipe.env.clone().into_iter().collect();
        let mut exec = envd
            .exec(ExecRequest {
                shell: Some(step.run.clone()),
                cwd: Some(recipe.workdir.clone()),
                env,
                timeout_ms: Some(timeout.as_millis() as u64),
                ..Default::default()
            })
            .await
            .map_err(envd_err)?;
        let mut tail: Vec<u8> = Vec::new();
        let status = loop {
            match exec.next_event().await.map_err(envd_err)? {
                Some(ExecEvent::Stdout(b)) | Some(ExecEvent::Stderr(b)) => {
                    tail.extend_from_slice(&b);
                    if tail.len() > 2 * TAIL_BYTES {
                        tail.drain(..tail.len() - TAIL_BYTES);
                    }
                    let _ = events.send(BuildEvent::Log {
                        index,
                        text: String::from_utf8_lossy(&b).into_owned(),
                    });
                }
                Some(ExecEvent::Exit(status)) => break status,
                None => {
                    return Err(BuildError::Envd {
                        step: name.to_string(),
                        message: "envd ended the step without an exit status".into(),
                    });
                }
            }
        };
        let failure = if status.timed_out {
            Some(format!("timed out after {}", fmt_duration(timeout)))
        } else if status.shell_code() != 0 {
            Some(match (status.code, status.signal) {
                (Some(c), _) => format!("exited with code {c}"),
                (None, Some(s)) => format!("killed by signal {s}"),
                _ => "ended without a status".into(),
            })
        } else {
            None
        };
        if let Some(reason) = &failure
            && !warm
        {
            guard.destroy().await?;
            return Err(BuildError::StepFailed {
                index,
                step: name.to_string(),
                reason: reason.clone(),
                log_tail: tail_lines(&tail),
            });
        }
        if let Some(reason) = &failure {
            let _ = events.send(BuildEvent::Warning {
                message: format!("warm step {name} {reason}; its caches are kept"),
            });
        }
        drop(exec);
        self.runtime.stop(&sb.id).await?;
        let upper = self.runtime.upper_dir(&sb.id)?;
        let owners = Owners::Shift {
            base: self.config.sandbox.uid_base,
            count: self.config.sandbox.uid_count,
        };
        let store = self.store.clone();
        // The seal owns the guard: should this build be dropped while the seal runs, the
        // sandbox (and the upper directory being read) goes only once the seal is done.
        let sealed = tokio::task::spawn_blocking(move || {
            (store.seal_upper(&upper, owners, UPPER_EXCLUDE), guard)
        })
        .await
        .map_err(|e| BuildError::Envd {
            step: name.to_string(),
            message: format!("seal task: {e}"),
        })?;
        let (sealed, guard) = sealed;
        // The sandbox goes before the result is looked at: a failed seal (a full disk)
        // must not leave it behind.
        let destroyed = guard.destroy().await;
        let (layer, _) = sealed?;
        destroyed?;
        Ok((layer, failure.is_none()))
    }
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The build's steps, in order (see the module docs).
fn plan(recipe: &Recipe) -> Vec<Planned<'_>> {
    let mut out = vec![Planned {
        name: format!("base {}", recipe.base),
        kind: Kind::Base,
    }];
    if !recipe.packages.is_empty() && !matches!(recipe.base, Base::Debian { .. }) {
        out.push(Planned {
            name: "packages".into(),
            kind: Kind::Packages(Step {
                name: Some("packages".into()),
                run: format!(
                    "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq --no-install-recommends {} && rm -rf /var/lib/apt/lists/*",
                    recipe.packages.join(" ")
                ),
                inputs: Some(Vec::new()),
                timeout: None,
            }),
        });
    }
    let mut checked_out = false;
    for (step, warm) in recipe.steps() {
        if step.inputs.is_none() && !checked_out {
            out.push(Planned {
                name: "checkout".into(),
                kind: Kind::Checkout,
            });
            checked_out = true;
        }
        out.push(Planned {
            name: step.display_name(),
            kind: Kind::Run { step, warm },
        });
    }
    if !checked_out {
        out.push(Planned {
            name: "checkout".into(),
            kind: Kind::Checkout,
        });
    }
    out
}

fn import_tarball(store: &Store, path: &Path) -> Result<Layer, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut magic = [0u8; 6];
    let n = f
        .read(&mut magic)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    drop(f);
    let tool = if magic[..n.min(2)] == [0x1f, 0x8b] {
        Some(("gzip", false))
    } else if n >= 4 && magic[..4] == [0x28, 0xb5, 0x2f, 0xfd] {
        Some(("zstd", true))
    } else if n >= 6 && magic == [0xfd, b'7', b'z', b'X', b'Z', 0] {
        Some(("xz", true))
    } else {
        None
    };
    match tool {
        None => {
            let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            store.put_layer(f, false).map_err(|e| e.to_string())
        }
        Some((_, false)) => {
            let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            store.put_layer(f, true).map_err(|e| e.to_string())
        }
        Some((tool, true)) => {
            let mut child = std::process::Command::new(tool)
                .arg("-dc")
                .arg(path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| {
                    format!("running {tool}: {e}; install it (scripts/install-deps.sh)")
                })?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| format!("{tool} has no stdout"))?;
            let layer = store.put_layer(stdout, false);
            let status = child.wait().map_err(|e| format!("{tool}: {e}"))?;
            if !status.success() {
                return Err(format!("{tool} could not decompress {}", path.display()));
            }
            layer.map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_checkout_comes_before_the_first_step_that_needs_the_whole_source() {
        let r = Recipe::parse(
            "base = \"rootfs:/x.tar\"\npackages = [\"git\"]\n[[setup]]\nname = \"deps\"\nrun = \"pip install -r requirements.txt\"\ninputs = [\"requirements.txt\"]\n[[setup]]\nname = \"build\"\nrun = \"make\"\n[[warm]]\nname = \"test\"\nrun = \"make test\"\n",
            None,
        )
        .unwrap();
        let names: Vec<String> = plan(&r).iter().map(|p| p.name.clone()).collect();
        assert_eq!(
            names,
            [
                "base rootfs:/x.tar",
                "packages",
                "deps",
                "checkout",
                "build",
                "test"
            ]
        );
        let kinds: Vec<&str> = plan(&r).iter().map(|p| p.kind_word()).collect();
        assert_eq!(
            kinds,
            ["base", "packages", "setup", "checkout", "setup", "warm"]
        );
    }

    #[test]
    fn a_recipe_without_steps_still_checks_out() {
        let r = Recipe::parse("base = \"host\"", None).unwrap();
        let names: Vec<String> = plan(&r).iter().map(|p| p.name.clone()).collect();
        assert_eq!(names, ["base host", "checkout"]);
    }

    #[test]
    fn tails_keep_the_last_lines() {
        let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
        let t = tail_lines(text.as_bytes());
        assert!(t.starts_with("line 10"), "{t}");
        assert!(t.ends_with("line 29"), "{t}");
    }
}
