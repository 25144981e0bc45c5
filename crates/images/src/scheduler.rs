//! Scheduled rebuilds: per repository, on a cadence (default 30 minutes), resolve the
//! branch head and rebuild only when it or the recipe changed since the current image.
//! A successful build becomes current atomically (see [`crate::Builder`]) and every
//! listener hears about it (the warm pool drains sandboxes of the old image); a failed
//! build keeps the previous image and is reported too.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::build::{BuildError, BuildOutcome, BuildRequest, Builder};
use crate::git::{Git, normalize_repo};
use crate::store::{ImageInfo, sha256_digest};

/// The default cadence.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(30 * 60);

/// One repository to keep built.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The repository (path or URL).
    pub repo: String,
    /// The branch to follow; the remote's HEAD when unset.
    pub reference: Option<String>,
    /// A recipe registered outside the repository (text, origin).
    pub recipe: Option<(String, String)>,
    /// How often to look.
    pub every: Duration,
}

impl Schedule {
    /// Follows `repo`'s default branch every 30 minutes with its own recipe.
    pub fn new(repo: impl Into<String>) -> Schedule {
        Schedule {
            repo: repo.into(),
            reference: None,
            recipe: None,
            every: DEFAULT_EVERY,
        }
    }
}

/// What listeners hear.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageEvent {
    /// A new image is current for a repository.
    Current {
        /// The repository.
        repo: String,
        /// The new image.
        image: Box<ImageInfo>,
        /// The manifest digest of the image it replaced.
        previous: Option<String>,
    },
    /// A scheduled build failed; the previous image stays current.
    BuildFailed {
        /// The repository.
        repo: String,
        /// What failed (the step and its log tail for a failed step).
        error: String,
    },
}

/// Why a check did not build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unchanged {
    /// The current image is at the branch head with the same recipe, or the last
    /// scheduled build of exactly that head and recipe failed.
    UpToDate,
}

/// What a build of a schedule would build: the branch head and the recipe's digest (`None`
/// for the repository's own `hangar.toml`, which changes only with a commit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The commit.
    pub commit: String,
    /// The registered recipe's digest.
    pub recipe: Option<String>,
}

/// Runs schedules and tells listeners about new images.
pub struct Scheduler {
    builder: Arc<Builder>,
    events: broadcast::Sender<ImageEvent>,
    /// Per repository URL, the last scheduled build that failed: it is not tried again
    /// until the branch or the recipe moves (a build through the API still can).
    failed: std::sync::Mutex<std::collections::HashMap<String, Wanted>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler building with `builder`.
    pub fn new(builder: Arc<Builder>) -> Scheduler {
        let (events, _) = broadcast::channel(64);
        Scheduler {
            builder,
            events,
            failed: std::sync::Mutex::default(),
        }
    }

    /// Listens for new images and failed builds.
    pub fn subscribe(&self) -> broadcast::Receiver<ImageEvent> {
        self.events.subscribe()
    }

    /// Whether `s` needs a build: its repository has no image yet, or the branch head or
    /// the recipe changed since the current image.
    pub async fn needs_build(&self, s: &Schedule) -> Result<bool, BuildError> {
        Ok(self.next_build(s).await?.is_some())
    }

    /// What `s` should build now, if anything: nothing when the current image is at the
    /// branch head with the same recipe, or when a scheduled build of exactly that failed.
    pub async fn next_build(&self, s: &Schedule) -> Result<Option<Wanted>, BuildError> {
        let url = normalize_repo(&s.repo)?;
        let store = self.builder.store();
        let scratch = store.scratch("resolve")?;
        let head = async {
            let git = Git::new(&url, self.builder.credentials(), &scratch)?;
            git.resolve(s.reference.as_deref()).await
        }
        .await;
        let _ = std::fs::remove_dir_all(&scratch);
        let wanted = Wanted {
            commit: head?,
            recipe: s
                .recipe
                .as_ref()
                .map(|(text, _)| sha256_digest(text.as_bytes())),
        };
        if self.failed_before(&url, &wanted) {
            return Ok(None);
        }
        let Some(current) = store.current(&url)? else {
            return Ok(Some(wanted));
        };
        let same_recipe = match &wanted.recipe {
            // A recipe in the repository changes only with a commit.
            None => current.meta.recipe_digest.is_some(),
            Some(digest) => current.meta.recipe_digest.as_deref() == Some(digest.as_str()),
        };
        let same_commit = current.meta.commit.as_deref() == Some(wanted.commit.as_str());
        Ok((!same_commit || !same_recipe).then_some(wanted))
    }

    /// Remembers that a scheduled build of `wanted` for `s` failed, so the schedule waits
    /// for the branch or the recipe to move before trying again.
    pub fn build_failed(&self, s: &Schedule, wanted: Wanted) {
        if let Ok(url) = normalize_repo(&s.repo)
            && let Ok(mut failed) = self.failed.lock()
        {
            failed.insert(url, wanted);
        }
    }

    fn failed_before(&self, url: &str, wanted: &Wanted) -> bool {
        self.failed
            .lock()
            .map(|f| f.get(url) == Some(wanted))
            .unwrap_or(false)
    }

    /// Looks once: builds when the branch head or the recipe changed since the current
    /// image, and tells listeners.
    pub async fn check(&self, s: &Schedule) -> Result<Result<BuildOutcome, Unchanged>, BuildError> {
        let Some(wanted) = self.next_build(s).await? else {
            return Ok(Err(Unchanged::UpToDate));
        };
        let url = normalize_repo(&s.repo)?;
        let current = self.builder.store().current(&url)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // Scheduled builds have no one watching their progress; drain it.
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let result = self
            .builder
            .build(
                &BuildRequest {
                    repo: s.repo.clone(),
                    reference: s.reference.clone(),
                    recipe: s.recipe.clone(),
                    detached: false,
                },
                &tx,
            )
            .await;
        drop(tx);
        let _ = drain.await;
        match &result {
            Ok(outcome) => {
                if current.as_ref().map(|c| &c.digest) != Some(&outcome.image.digest) {
                    let _ = self.events.send(ImageEvent::Current {
                        repo: outcome.repo.clone(),
                        image: Box::new(outcome.image.clone()),
                        previous: current.map(|c| c.digest),
                    });
                }
            }
            Err(e) => {
                tracing::warn!(repo = %url, "scheduled build failed: {e}");
                self.build_failed(s, wanted);
                let _ = self.events.send(ImageEvent::BuildFailed {
                    repo: url.clone(),
                    error: e.to_string(),
                });
            }
        }
        result.map(Ok)
    }

    /// Checks every schedule at its cadence (the first time at once) until `shutdown`
    /// resolves. Schedules run one at a time: builds share the machine's cores.
    pub async fn run(
        &self,
        schedules: Vec<Schedule>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut due: Vec<tokio::time::Instant> = schedules
            .iter()
            .map(|_| tokio::time::Instant::now())
            .collect();
        tokio::pin!(shutdown);
        loop {
            let Some((i, at)) = due.iter().copied().enumerate().min_by_key(|(_, at)| *at) else {
                return;
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep_until(at) => {}
            }
            let s = &schedules[i];
            if let Err(e) = self.check(s).await {
                tracing::warn!(repo = %s.repo, "scheduled check failed: {e}");
            }
            due[i] = tokio::time::Instant::now() + s.every;
        }
    }
}
