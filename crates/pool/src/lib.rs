//! The warm pool: per repository, sandboxes already started from the current image, so a
//! session claims one in milliseconds instead of starting one; and predictive warm-up: when
//! someone starts typing a prompt, a sandbox is claimed for their draft and its checkout
//! starts syncing to the latest base commit before the prompt arrives.
//!
//! The pool's size per repository follows demand: `min` plus the claims of the last
//! `demand_window`, at most `max`. A background task refills it. When a repository's image
//! changes ([`Pool::set_image`]), idle sandboxes of the old image are destroyed and replaced;
//! claimed ones are not touched. Every idle sandbox is checked alive before it is handed out.
//!
//! Idle sandboxes are synced when they are started, and again whenever the base branch moves
//! (the refill task refreshes each repository's base every `refresh_every`). A claim whose
//! sandbox is at the base commit the syncer last saw, fetched no longer than its freshness
//! window ago, starts no git work at all: the prompt's first model request has the cores.
//!
//! The pool knows sandboxes and images only through the `Runtime` trait; how a checkout is
//! synced is a [`Syncer`] (git fetch of the base branch, in the git layer).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hangar_agent::SyncState;
use hangar_sandbox::{Runtime, SandboxError, SandboxSpec, Status};
use tokio::sync::{Mutex, Notify, watch};

/// Pool settings.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Idle sandboxes kept per repository at least.
    pub min: usize,
    /// ... and at most.
    pub max: usize,
    /// Claims within this window raise the target size.
    pub demand_window: Duration,
    /// A warm-up reservation no prompt followed is released after this long.
    pub reservation_timeout: Duration,
    /// Where the pool lists the sandboxes it holds unclaimed, so that the next process
    /// destroys them instead of leaking them (sandboxes outlive the server).
    pub state_file: Option<std::path::PathBuf>,
    /// How often the refill task asks the syncer for each repository's latest base (and
    /// re-syncs idle sandboxes left behind).
    pub refresh_every: Duration,
    /// How long the refill task (refills and refreshes) waits after a prompt's claim or
    /// [`Pool::hold_off_background`], so that the prompt's first model request, and the
    /// first token coming back (a model's time to first token is typically under a
    /// second), do not share the cores with it. A warm-up claim does not wait: the person
    /// is still typing.
    pub refill_delay: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min: 1,
            max: 4,
            demand_window: Duration::from_secs(600),
            reservation_timeout: Duration::from_secs(120),
            state_file: None,
            refresh_every: Duration::from_secs(20),
            refill_delay: Duration::from_secs(1),
        }
    }
}

/// Where a checkout stands after a sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Synced {
    /// There is nothing to sync (the repository has no git remote).
    Nothing,
    /// At this base commit.
    At(String),
}

/// Brings a sandbox's checkout up to the latest base commit.
#[async_trait::async_trait]
pub trait Syncer: Send + Sync {
    /// Syncs the checkout in sandbox `sandbox` of `repo` (fetching the base first); says
    /// where it now stands, or why it could not.
    async fn sync(&self, repo: &str, sandbox: &str) -> Result<Synced, String>;

    /// Where a sync of `repo` would bring a checkout now, when that is known without
    /// fetching (the base was fetched recently enough); `None` when a sync must fetch.
    async fn fresh(&self, _repo: &str) -> Option<Synced> {
        None
    }

    /// Fetches `repo`'s latest base, so that [`Syncer::fresh`] knows it.
    async fn refresh(&self, _repo: &str) -> Result<(), String> {
        Ok(())
    }
}

/// Starts bringing the checkout in `sandbox` up to date with `repo`'s base branch in the
/// background; the receiver says when it is done (every claim does this; so does a
/// session that takes a sandbox without a pool).
pub fn start_sync(
    syncer: Arc<dyn Syncer>,
    repo: &str,
    sandbox: &str,
) -> watch::Receiver<SyncState> {
    let (tx, rx) = watch::channel(SyncState::Syncing);
    let (sandbox, repo) = (sandbox.to_string(), repo.to_string());
    tokio::spawn(async move {
        let state = match syncer.sync(&repo, &sandbox).await {
            Ok(_) => SyncState::Synced,
            Err(why) => SyncState::Failed(why),
        };
        let _ = tx.send(state);
    });
    rx
}

/// A syncer for repositories whose image is always current (nothing to fetch).
pub struct AlreadySynced;

#[async_trait::async_trait]
impl Syncer for AlreadySynced {
    async fn sync(&self, _repo: &str, _sandbox: &str) -> Result<Synced, String> {
        Ok(Synced::Nothing)
    }

    async fn fresh(&self, _repo: &str) -> Option<Synced> {
        Some(Synced::Nothing)
    }
}

/// Why the pool could not hand out a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No image is registered for the repository.
    #[error("no image is registered for repository {0}")]
    UnknownRepo(String),
    /// Starting a sandbox failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// A sandbox handed out by the pool.
#[derive(Clone, Debug)]
pub struct Claim {
    /// The sandbox.
    pub sandbox: String,
    /// True when it came warm from the pool, false when it had to be started.
    pub hit: bool,
    /// How long the claim took.
    pub latency: Duration,
    /// The sync of its checkout to the latest base commit: started by the claim, or
    /// already `Synced` when the sandbox was current.
    pub sync: watch::Receiver<SyncState>,
}

/// Pool figures for the API and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Idle sandboxes per repository.
    pub idle: Vec<(String, usize)>,
    /// Claims served warm.
    pub hits: u64,
    /// Claims that had to start a sandbox.
    pub misses: u64,
    /// Sum of claim latencies, microseconds (with `hits + misses`, the mean).
    pub claim_micros_total: u64,
    /// Warm-up reservations held now.
    pub reservations: usize,
    /// Each reservation: user, repository, and its sandbox once claimed.
    pub drafts: Vec<(String, String, Option<String>)>,
    /// Claims whose sandbox was already current, so no sync ran.
    pub presynced: u64,
}

/// Whether a claim fetches the base when its sandbox is at a base known to be fresh.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// Only when the sandbox is behind or the base's freshness is unknown.
    IfStale,
    /// Always.
    Always,
}

struct Warm {
    sandbox: String,
    generation: u64,
    /// Where its checkout stood after the last sync, `None` if that failed.
    synced: Option<Synced>,
}

struct RepoPool {
    spec: SandboxSpec,
    generation: u64,
    idle: VecDeque<Warm>,
    claims: VecDeque<Instant>,
    refreshed: Option<Instant>,
}

/// A draft's sandbox: being claimed (`None`), then claimed. The claim is delivered through
/// the channel so a prompt arriving mid-claim waits for it rather than starting another.
struct Reservation {
    claim: Arc<watch::Sender<Option<Claim>>>,
    deadline: Instant,
}

/// How long a prompt waits for a reservation still being claimed.
const RESERVATION_WAIT: Duration = Duration::from_secs(30);

struct Inner {
    runtime: Arc<dyn Runtime>,
    syncer: Arc<dyn Syncer>,
    config: PoolConfig,
    repos: Mutex<HashMap<String, RepoPool>>,
    reservations: Mutex<HashMap<(String, String), Reservation>>,
    wake: Arc<Notify>,
    /// One refill at a time, or two would both fill the same gap.
    refilling: Mutex<()>,
    /// The unclaimed sandboxes changed since the state file was written.
    dirty: std::sync::atomic::AtomicBool,
    /// No more refills (the pool is being closed).
    closed: std::sync::atomic::AtomicBool,
    /// When the last prompt started (refills wait `refill_delay` after it).
    last_foreground: std::sync::Mutex<Option<Instant>>,
    hits: AtomicU64,
    misses: AtomicU64,
    presynced: AtomicU64,
    claim_micros: AtomicU64,
}

/// The warm pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// A pool starting sandboxes through `runtime`; starts its refill task.
    pub fn new(runtime: Arc<dyn Runtime>, syncer: Arc<dyn Syncer>, config: PoolConfig) -> Pool {
        let inner = Arc::new(Inner {
            runtime,
            syncer,
            config,
            repos: Mutex::default(),
            reservations: Mutex::default(),
            wake: Arc::new(Notify::new()),
            refilling: Mutex::new(()),
            dirty: std::sync::atomic::AtomicBool::new(false),
            closed: std::sync::atomic::AtomicBool::new(false),
            last_foreground: std::sync::Mutex::new(None),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            presynced: AtomicU64::new(0),
            claim_micros: AtomicU64::new(0),
        });
        // The task holds the pool only while it works, so dropping the last `Pool` ends it.
        let weak = Arc::downgrade(&inner);
        let wake = inner.wake.clone();
        tokio::spawn(async move {
            if let Some(inner) = weak.upgrade() {
                inner.destroy_leftovers().await;
            }
            loop {
                {
                    let Some(inner) = weak.upgrade() else { return };
                    if let Some(wait) = inner.refill_holdoff() {
                        drop(inner);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    inner.refill().await;
                    inner.expire_reservations().await;
                    inner.save_state().await;
                }
                let _ = tokio::time::timeout(Duration::from_millis(500), wake.notified()).await;
            }
        });
        Pool { inner }
    }

    /// Stops refilling and destroys every sandbox the pool holds unclaimed (idle ones and
    /// reservations). Claimed sandboxes belong to their sessions and are left alone.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let _wait_for_a_running_refill = self.inner.refilling.lock().await;
        let idle: Vec<String> = {
            let mut repos = self.inner.repos.lock().await;
            repos
                .values_mut()
                .flat_map(|p| p.idle.drain(..).map(|w| w.sandbox))
                .collect()
        };
        let reserved: Vec<String> = {
            let mut r = self.inner.reservations.lock().await;
            r.drain()
                .filter_map(|(_, v)| v.claim.borrow().as_ref().map(|c| c.sandbox.clone()))
                .collect()
        };
        for id in idle.into_iter().chain(reserved) {
            let _ = self.inner.runtime.destroy(&id).await;
        }
        self.inner.dirty.store(true, Ordering::SeqCst);
        self.inner.save_state().await;
    }

    /// Makes `spec` the current image of `repo`: idle sandboxes of the previous image are
    /// destroyed and the pool refills from the new one.
    pub async fn set_image(&self, repo: &str, spec: SandboxSpec) {
        let stale: Vec<Warm> = {
            let mut repos = self.inner.repos.lock().await;
            let entry = repos.entry(repo.to_string()).or_insert_with(|| RepoPool {
                spec: spec.clone(),
                generation: 0,
                idle: VecDeque::new(),
                claims: VecDeque::new(),
                refreshed: None,
            });
            entry.spec = spec;
            entry.generation += 1;
            entry.idle.drain(..).collect()
        };
        for w in stale {
            let _ = self.inner.runtime.destroy(&w.sandbox).await;
        }
        self.inner.dirty.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
    }

    /// Hands out a sandbox of `repo`'s current image: a warm one if there is one alive,
    /// else a fresh one.
    pub async fn claim(&self, repo: &str) -> Result<Claim, PoolError> {
        self.hold_off_background();
        self.claim_with(repo, Fetch::IfStale).await
    }

    /// A prompt is starting: refills and refreshes wait `refill_delay`, so that the
    /// prompt's way to its first model request and first token has the cores.
    pub fn hold_off_background(&self) {
        if let Ok(mut last) = self.inner.last_foreground.lock() {
            *last = Some(Instant::now());
        }
    }

    async fn claim_with(&self, repo: &str, fetch: Fetch) -> Result<Claim, PoolError> {
        let started = Instant::now();
        loop {
            let (warm, spec) = {
                let mut repos = self.inner.repos.lock().await;
                let entry = repos
                    .get_mut(repo)
                    .ok_or_else(|| PoolError::UnknownRepo(repo.to_string()))?;
                entry.claims.push_back(started);
                let generation = entry.generation;
                let warm = loop {
                    match entry.idle.pop_front() {
                        Some(w) if w.generation == generation => break Some(w),
                        Some(_) => continue,
                        None => break None,
                    }
                };
                (warm, entry.spec.clone())
            };
            self.inner.dirty.store(true, Ordering::SeqCst);
            self.inner.wake.notify_one();
            let Some(warm) = warm else {
                let sb = self.inner.runtime.create(spec).await?;
                let latency = started.elapsed();
                self.inner.misses.fetch_add(1, Ordering::Relaxed);
                self.inner
                    .claim_micros
                    .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
                let sync = self.start_sync(repo, &sb.id);
                return Ok(Claim {
                    sandbox: sb.id,
                    hit: false,
                    latency,
                    sync,
                });
            };
            // Health check: an idle sandbox whose init died is thrown away.
            match self.inner.runtime.get(&warm.sandbox).await {
                Ok(sb) if sb.status == Status::Running => {
                    let latency = started.elapsed();
                    self.inner.hits.fetch_add(1, Ordering::Relaxed);
                    self.inner
                        .claim_micros
                        .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
                    let sync = self.sync_claimed(repo, &warm, fetch).await;
                    return Ok(Claim {
                        sandbox: warm.sandbox,
                        hit: true,
                        latency,
                        sync,
                    });
                }
                _ => {
                    tracing::warn!(sandbox = %warm.sandbox, "a warm sandbox had died; discarding it");
                    let _ = self.inner.runtime.destroy(&warm.sandbox).await;
                }
            }
        }
    }

    fn start_sync(&self, repo: &str, sandbox: &str) -> watch::Receiver<SyncState> {
        start_sync(self.inner.syncer.clone(), repo, sandbox)
    }

    /// A warm sandbox already at the base the syncer knows to be current needs no sync;
    /// any other starts one.
    async fn sync_claimed(
        &self,
        repo: &str,
        warm: &Warm,
        fetch: Fetch,
    ) -> watch::Receiver<SyncState> {
        if fetch == Fetch::IfStale
            && warm.synced.is_some()
            && self.inner.syncer.fresh(repo).await == warm.synced
        {
            self.inner.presynced.fetch_add(1, Ordering::Relaxed);
            return watch::channel(SyncState::Synced).1;
        }
        self.start_sync(repo, &warm.sandbox)
    }

    /// Predictive warm-up: `user` started typing a prompt for `repo`. Claims a sandbox for
    /// their draft and starts syncing its checkout (fetching the latest base whatever the
    /// pool knows: there is time while they type); calling again for the same draft only
    /// keeps the reservation alive.
    pub async fn typing(&self, user: &str, repo: &str) -> Result<(), PoolError> {
        let key = (user.to_string(), repo.to_string());
        let deadline = Instant::now() + self.inner.config.reservation_timeout;
        let slot = {
            let mut reservations = self.inner.reservations.lock().await;
            if let Some(r) = reservations.get_mut(&key) {
                r.deadline = deadline;
                return Ok(());
            }
            let slot = Arc::new(watch::channel(None).0);
            reservations.insert(
                key.clone(),
                Reservation {
                    claim: slot.clone(),
                    deadline,
                },
            );
            slot
        };
        let claim = match self.claim_with(repo, Fetch::Always).await {
            Ok(c) => c,
            Err(e) => {
                self.inner.reservations.lock().await.remove(&key);
                return Err(e);
            }
        };
        let still_wanted = {
            let reservations = self.inner.reservations.lock().await;
            reservations
                .get(&key)
                .is_some_and(|r| Arc::ptr_eq(&r.claim, &slot))
        };
        // Taken by a prompt while being claimed (it waits on the channel), or still reserved:
        // deliver. Expired meanwhile and nobody waiting: give the sandbox back.
        self.inner.dirty.store(true, Ordering::SeqCst);
        if still_wanted || slot.receiver_count() > 0 {
            slot.send_replace(Some(claim));
        } else {
            let _ = self.inner.runtime.destroy(&claim.sandbox).await;
        }
        Ok(())
    }

    /// The sandbox reserved for `user`'s draft on `repo`, if any (its sync may still run);
    /// waits for one still being claimed.
    pub async fn take_reservation(&self, user: &str, repo: &str) -> Option<Claim> {
        let key = (user.to_string(), repo.to_string());
        let slot = self.inner.reservations.lock().await.remove(&key)?.claim;
        self.inner.dirty.store(true, Ordering::SeqCst);
        let mut rx = slot.subscribe();
        drop(slot);
        let claimed = tokio::time::timeout(RESERVATION_WAIT, rx.wait_for(Option::is_some)).await;
        match claimed {
            Ok(Ok(claim)) => claim.clone(),
            _ => None,
        }
    }

    /// The pool's figures.
    pub async fn stats(&self) -> PoolStats {
        let mut drafts: Vec<(String, String, Option<String>)> = self
            .inner
            .reservations
            .lock()
            .await
            .iter()
            .map(|((user, repo), r)| {
                let sandbox = r.claim.borrow().as_ref().map(|c| c.sandbox.clone());
                (user.clone(), repo.clone(), sandbox)
            })
            .collect();
        drafts.sort();
        let idle = self
            .inner
            .repos
            .lock()
            .await
            .iter()
            .map(|(r, p)| (r.clone(), p.idle.len()))
            .collect();
        PoolStats {
            idle,
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            claim_micros_total: self.inner.claim_micros.load(Ordering::Relaxed),
            reservations: drafts.len(),
            drafts,
            presynced: self.inner.presynced.load(Ordering::Relaxed),
        }
    }

    /// How many idle sandboxes `repo` should have now.
    pub async fn target(&self, repo: &str) -> usize {
        let mut repos = self.inner.repos.lock().await;
        repos
            .get_mut(repo)
            .map(|p| self.inner.target_of(p))
            .unwrap_or(0)
    }

    /// Fills every repository's pool up to its target now (the background task does the
    /// same on its own).
    pub async fn refill_now(&self) {
        self.inner.refill().await;
    }
}

impl Inner {
    /// How much longer the refill task should leave the cores to the last prompt.
    fn refill_holdoff(&self) -> Option<Duration> {
        let last = (*self.last_foreground.lock().ok()?)?;
        self.config
            .refill_delay
            .checked_sub(last.elapsed())
            .filter(|d| !d.is_zero())
    }

    fn target_of(&self, p: &mut RepoPool) -> usize {
        let horizon = Instant::now().checked_sub(self.config.demand_window);
        while p
            .claims
            .front()
            .is_some_and(|t| horizon.is_some_and(|h| *t < h))
        {
            p.claims.pop_front();
        }
        (self.config.min + p.claims.len())
            .clamp(self.config.min, self.config.max.max(self.config.min))
    }

    /// Destroys the sandboxes an earlier process's pool held unclaimed.
    async fn destroy_leftovers(&self) {
        let Some(path) = &self.config.state_file else {
            return;
        };
        let Ok(text) = tokio::fs::read_to_string(path).await else {
            return;
        };
        let ids: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        for id in ids {
            if self.runtime.destroy(&id).await.is_ok() {
                tracing::info!(sandbox = %id, "destroyed a warm sandbox left by an earlier run");
            }
        }
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Writes the unclaimed sandboxes' ids, one per line, atomically.
    async fn save_state(&self) {
        let Some(path) = &self.config.state_file else {
            return;
        };
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return;
        }
        let mut ids: Vec<String> = {
            let repos = self.repos.lock().await;
            repos
                .values()
                .flat_map(|p| p.idle.iter().map(|w| w.sandbox.clone()))
                .collect()
        };
        {
            let r = self.reservations.lock().await;
            ids.extend(
                r.values()
                    .filter_map(|v| v.claim.borrow().as_ref().map(|c| c.sandbox.clone())),
            );
        }
        let tmp = path.with_extension("tmp");
        let text = ids.join("\n");
        let result = async {
            tokio::fs::write(&tmp, text).await?;
            tokio::fs::rename(&tmp, path).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), "could not write the pool's state: {e}");
            self.dirty.store(true, Ordering::SeqCst);
        }
    }

    async fn refill(&self) {
        let _one_at_a_time = self.refilling.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let wanted: Vec<(String, SandboxSpec, u64, usize)> = {
            let mut repos = self.repos.lock().await;
            let mut out = Vec::new();
            for (repo, p) in repos.iter_mut() {
                let target = self.target_of(p);
                if p.idle.len() < target {
                    out.push((
                        repo.clone(),
                        p.spec.clone(),
                        p.generation,
                        target - p.idle.len(),
                    ));
                }
            }
            out
        };
        for (repo, spec, generation, missing) in wanted {
            for _ in 0..missing {
                let sb = match self.runtime.create(spec.clone()).await {
                    Ok(sb) => sb,
                    Err(e) => {
                        tracing::warn!(%repo, "refilling the warm pool failed: {e}");
                        break;
                    }
                };
                let synced = self.sync_idle(&repo, &sb.id).await;
                if !self.keep_idle(&repo, generation, sb.id, synced).await {
                    break;
                }
            }
        }
        self.resync_stale().await;
    }

    /// Syncs an idle sandbox's checkout; `None` (and a warning) when that failed, so its
    /// claim syncs again.
    async fn sync_idle(&self, repo: &str, sandbox: &str) -> Option<Synced> {
        match self.syncer.sync(repo, sandbox).await {
            Ok(s) => Some(s),
            Err(why) => {
                tracing::warn!(%repo, %sandbox, "syncing a warm sandbox failed: {why}");
                None
            }
        }
    }

    /// Puts a sandbox back among `repo`'s idle ones if it is still of the current image
    /// and the pool is open; destroys it otherwise (and says so with `false`).
    async fn keep_idle(
        &self,
        repo: &str,
        generation: u64,
        sandbox: String,
        synced: Option<Synced>,
    ) -> bool {
        let mut repos = self.repos.lock().await;
        match repos.get_mut(repo) {
            Some(p) if p.generation == generation && !self.closed.load(Ordering::SeqCst) => {
                p.idle.push_back(Warm {
                    sandbox,
                    generation,
                    synced,
                });
                self.dirty.store(true, Ordering::SeqCst);
                true
            }
            _ => {
                drop(repos);
                let _ = self.runtime.destroy(&sandbox).await;
                false
            }
        }
    }

    /// Every `refresh_every`, fetches each repository's base and re-syncs the idle
    /// sandboxes it left behind (taken out while syncing, so no claim gets one mid-way).
    async fn resync_stale(&self) {
        let due: Vec<String> = {
            let mut repos = self.repos.lock().await;
            let now = Instant::now();
            repos
                .iter_mut()
                .filter(|(_, p)| !p.idle.is_empty())
                .filter(|(_, p)| {
                    p.refreshed
                        .is_none_or(|t| now.duration_since(t) >= self.config.refresh_every)
                })
                .map(|(repo, p)| {
                    p.refreshed = Some(now);
                    repo.clone()
                })
                .collect()
        };
        for repo in due {
            if let Err(why) = self.syncer.refresh(&repo).await {
                tracing::warn!(%repo, "refreshing the base branch failed: {why}");
                continue;
            }
            let Some(current) = self.syncer.fresh(&repo).await else {
                continue;
            };
            let stale: VecDeque<Warm> = {
                let mut repos = self.repos.lock().await;
                let Some(p) = repos.get_mut(&repo) else {
                    continue;
                };
                let (stale, fresh) = p
                    .idle
                    .drain(..)
                    .partition(|w| w.synced.as_ref() != Some(&current));
                p.idle = fresh;
                stale
            };
            for w in stale {
                let synced = self.sync_idle(&repo, &w.sandbox).await;
                self.keep_idle(&repo, w.generation, w.sandbox, synced).await;
            }
        }
    }

    async fn expire_reservations(&self) {
        let now = Instant::now();
        let expired: Vec<Reservation> = {
            let mut r = self.reservations.lock().await;
            let keys: Vec<_> = r
                .iter()
                .filter(|(_, v)| v.deadline <= now)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter().filter_map(|k| r.remove(&k)).collect()
        };
        if !expired.is_empty() {
            self.dirty.store(true, Ordering::SeqCst);
        }
        for r in expired {
            // One still being claimed is given back by its claimer.
            let claimed = r.claim.borrow().clone();
            if let Some(claim) = claimed {
                tracing::info!(sandbox = %claim.sandbox, "no prompt followed the typing signal; releasing");
                let _ = self.runtime.destroy(&claim.sandbox).await;
            }
        }
    }
}
