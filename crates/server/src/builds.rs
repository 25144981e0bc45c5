//! Image builds started through the API: each runs in the background with the repository's
//! registered URL and recipe, keeps its progress (steps, log tail, outcome) for clients to
//! poll, and on success hands the new image to whoever serves sessions (the warm pool).
//! One build per repository at a time. Build records live in memory: after a restart the
//! images remain, the records of past builds do not.
//!
//! Scheduled rebuilds ([`Builds::run_schedule`]): every registered repository is looked at
//! on a cadence and rebuilt, through the same path, when its default branch or its
//! recipe changed since its current image; builds the user never waits for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hangar_images::{BuildEvent, BuildRequest, Builder, ImageInfo};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiError;

/// How much of a build's output is kept for clients.
const LOG_TAIL_BYTES: usize = 64 * 1024;
/// How many finished builds are remembered.
const KEEP_FINISHED: usize = 200;

/// Called with a repository's name and its new current image.
pub type OnImage = Arc<dyn Fn(&str, &ImageInfo) + Send + Sync>;

/// A build, as clients see it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BuildView {
    /// Its id (`bld-…`).
    pub id: String,
    /// The repository (`owner/name`).
    pub repo: String,
    /// The branch, tag or commit asked for (the default branch when absent).
    pub reference: Option<String>,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// `api` (someone asked) or `schedule` (the branch or recipe changed).
    pub trigger: String,
    /// The commit being built, once resolved.
    pub commit: Option<String>,
    /// Steps so far: name, whether cached, elapsed ms, ok.
    pub steps: Vec<StepView>,
    /// The last 64 KiB of output.
    pub log_tail: String,
    /// Why it failed (the failing step and its last lines).
    pub error: Option<String>,
    /// The image made, on success (it is then the repository's current image).
    pub image: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// Likewise, once finished.
    pub finished_at_ms: Option<i64>,
}

/// One step of a build.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct StepView {
    /// Its name.
    pub name: String,
    /// Reused from the cache.
    pub cached: bool,
    /// Wall time, once finished.
    pub elapsed_ms: Option<u64>,
    /// False for a failed warm step; absent while running.
    pub ok: Option<bool>,
}

/// The builds of this server.
pub struct Builds {
    builder: Arc<Builder>,
    scheduler: hangar_images::Scheduler,
    on_image: OnImage,
    records: Mutex<HashMap<String, BuildView>>,
    /// Wakes the schedule early (a repository or recipe was registered).
    wake: tokio::sync::Notify,
    /// Repositories the schedule should look at on its next pass, due or not.
    forget_due: Mutex<Vec<String>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Builds {
    /// Builds with `builder`; `on_image` learns of each new current image.
    pub fn new(builder: Arc<Builder>, on_image: OnImage) -> Builds {
        Builds {
            scheduler: hangar_images::Scheduler::new(Arc::clone(&builder)),
            builder,
            on_image,
            records: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            forget_due: Mutex::default(),
        }
    }

    /// The layer store the builds write to.
    pub fn images(&self) -> &hangar_images::Store {
        self.builder.store()
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, BuildView>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut BuildView)) {
        if let Some(r) = self.records().get_mut(id) {
            f(r);
        }
    }

    /// Starts building `repo` (registered as `url`, with its registered recipe if any).
    pub fn start(
        self: &Arc<Self>,
        repo: &hangar_store::Repo,
        reference: Option<String>,
    ) -> Result<BuildView, ApiError> {
        self.start_as(repo, reference, "api")
    }

    /// Looks at every repository in `store` every `every` and rebuilds those whose
    /// default branch or recipe changed since their current image (or that have none),
    /// one at a time. Runs until the task is dropped.
    pub async fn run_schedule(
        self: Arc<Self>,
        store: Arc<hangar_store::Store>,
        every: std::time::Duration,
    ) {
        let mut due: HashMap<String, tokio::time::Instant> = HashMap::new();
        loop {
            let repos = store.repos().unwrap_or_else(|e| {
                tracing::warn!("scheduled rebuilds: cannot list repositories: {e}");
                Vec::new()
            });
            let now = tokio::time::Instant::now();
            for name in
                std::mem::take(&mut *self.forget_due.lock().unwrap_or_else(|p| p.into_inner()))
            {
                due.remove(&name);
            }
            for repo in repos {
                if due.get(&repo.name).is_some_and(|at| *at > now) {
                    continue;
                }
                due.insert(repo.name.clone(), now + every);
                let schedule = hangar_images::Schedule {
                    repo: repo.url.clone(),
                    reference: Some(repo.default_branch.clone()),
                    recipe: recipe_of(&repo),
                    every,
                };
                match self.scheduler.next_build(&schedule).await {
                    Ok(None) => {}
                    Ok(Some(wanted)) => match self.start_as(&repo, None, "schedule") {
                        Ok(b) => {
                            tracing::info!(repo = %repo.name, build = %b.id, "scheduled rebuild");
                            self.wait(&b.id).await;
                            if self.get(&b.id).is_some_and(|b| b.status == "failed") {
                                // Not again until the branch or the recipe moves.
                                self.scheduler.build_failed(&schedule, wanted);
                            }
                        }
                        Err(e) => {
                            tracing::debug!(repo = %repo.name, "no scheduled rebuild: {}", e.message)
                        }
                    },
                    Err(e) => tracing::warn!(repo = %repo.name, "scheduled check failed: {e}"),
                }
            }
            let tick = every.min(std::time::Duration::from_secs(60));
            let _ = tokio::time::timeout(tick, self.wake.notified()).await;
        }
    }

    /// Asks the schedule to look at `repo` now (it was just registered, or its recipe
    /// changed), so its image is built before anyone asks for a session.
    pub fn look_now(&self, repo: &str) {
        self.forget_due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(repo.to_string());
        self.wake.notify_one();
    }

    /// Waits until build `id` is no longer running.
    async fn wait(&self, id: &str) {
        while self.get(id).is_some_and(|b| b.status == "running") {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    fn start_as(
        self: &Arc<Self>,
        repo: &hangar_store::Repo,
        reference: Option<String>,
        trigger: &str,
    ) -> Result<BuildView, ApiError> {
        let id = {
            let mut bytes = [0u8; 6];
            getrandom::fill(&mut bytes)
                .map_err(|e| ApiError::internal(format!("random id: {e}")))?;
            format!(
                "bld-{}",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        };
        let view = BuildView {
            id: id.clone(),
            repo: repo.name.clone(),
            reference: reference.clone(),
            status: "running".into(),
            trigger: trigger.into(),
            commit: None,
            steps: Vec::new(),
            log_tail: String::new(),
            error: None,
            image: None,
            started_at_ms: now_ms(),
            finished_at_ms: None,
        };
        {
            let mut records = self.records();
            if let Some(running) = records
                .values()
                .find(|b| b.repo == repo.name && b.status == "running")
            {
                return Err(ApiError::new(
                    axum::http::StatusCode::CONFLICT,
                    "build_running",
                    format!("{} is being built already ({})", repo.name, running.id),
                ));
            }
            forget_oldest(&mut records);
            records.insert(id.clone(), view.clone());
        }
        let req = BuildRequest {
            repo: repo.url.clone(),
            reference: reference.or_else(|| Some(repo.default_branch.clone())),
            recipe: recipe_of(repo),
            detached: false,
        };
        let this = Arc::clone(self);
        let name = repo.name.clone();
        tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let progress = {
                let this = Arc::clone(&this);
                let id = id.clone();
                tokio::spawn(async move {
                    while let Some(event) = rx.recv().await {
                        this.update(&id, |r| record(r, event));
                    }
                })
            };
            let result = this.builder.build(&req, &tx).await;
            drop(tx);
            let _ = progress.await;
            match result {
                Ok(outcome) => {
                    tracing::info!(repo = %name, image = %outcome.image.id, "image built");
                    (this.on_image)(&name, &outcome.image);
                    this.update(&id, |r| {
                        r.status = "succeeded".into();
                        r.image = Some(outcome.image.id.clone());
                        r.finished_at_ms = Some(now_ms());
                    });
                }
                Err(e) => {
                    tracing::warn!(repo = %name, "image build failed: {e}");
                    this.update(&id, |r| {
                        r.status = "failed".into();
                        r.error = Some(e.to_string());
                        r.finished_at_ms = Some(now_ms());
                    });
                }
            }
        });
        Ok(view)
    }

    /// One build.
    pub fn get(&self, id: &str) -> Option<BuildView> {
        self.records().get(id).cloned()
    }

    /// Every remembered build, newest first.
    pub fn list(&self) -> Vec<BuildView> {
        let mut all: Vec<BuildView> = self.records().values().cloned().collect();
        all.sort_by(|a, b| b.started_at_ms.cmp(&a.started_at_ms).then(b.id.cmp(&a.id)));
        all
    }
}

/// The recipe registered for `repo`, with where it came from.
fn recipe_of(repo: &hangar_store::Repo) -> Option<(String, String)> {
    repo.recipe
        .clone()
        .map(|text| (text, format!("the registered recipe of {}", repo.name)))
}

/// Drops the oldest finished builds beyond [`KEEP_FINISHED`].
fn forget_oldest(records: &mut HashMap<String, BuildView>) {
    let mut finished: Vec<(i64, String)> = records
        .values()
        .filter(|b| b.status != "running")
        .map(|b| (b.started_at_ms, b.id.clone()))
        .collect();
    if finished.len() < KEEP_FINISHED {
        return;
    }
    finished.sort();
    for (_, id) in finished.iter().take(finished.len() + 1 - KEEP_FINISHED) {
        records.remove(id);
    }
}

/// Applies one progress event to a build's record.
fn record(r: &mut BuildView, event: BuildEvent) {
    match event {
        BuildEvent::Resolved { commit, .. } => r.commit = Some(commit),
        BuildEvent::StepStarted { name, cached, .. } => r.steps.push(StepView {
            name,
            cached,
            elapsed_ms: None,
            ok: None,
        }),
        BuildEvent::Log { text, .. } => {
            r.log_tail.push_str(&text);
            if r.log_tail.len() > LOG_TAIL_BYTES {
                let mut cut = r.log_tail.len() - LOG_TAIL_BYTES;
                while !r.log_tail.is_char_boundary(cut) {
                    cut += 1;
                }
                r.log_tail.drain(..cut);
            }
        }
        BuildEvent::StepFinished { report, .. } => {
            if let Some(s) = r.steps.iter_mut().rev().find(|s| s.name == report.name) {
                s.elapsed_ms = Some(report.elapsed_ms);
                s.ok = Some(report.ok);
            }
        }
        BuildEvent::Warning { message } => {
            r.log_tail.push_str(&format!("\nwarning: {message}\n"));
        }
    }
}
