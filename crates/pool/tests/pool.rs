//! The warm pool on the real local runtime.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use hangar_agent::SyncState;
use hangar_pool::{AlreadySynced, Pool, PoolConfig, Synced, Syncer};
use hangar_sandbox::{LocalRuntime, Network, Rootfs, Runtime, SandboxSpec, Status};

struct Fixture {
    _dir: tempfile::TempDir,
    config: hangar_config::Config,
    rt: Arc<LocalRuntime>,
}

impl Fixture {
    fn new() -> Fixture {
        hangar_testkit::require_root();
        let dir = hangar_testkit::scratch_dir();
        let mut config = hangar_config::Config {
            data_dir: dir.path().join("data"),
            ..Default::default()
        };
        config.sandbox.tools_dir = Some(hangar_testkit::bin_dir());
        let rt = Arc::new(LocalRuntime::open(&config).unwrap());
        Fixture {
            _dir: dir,
            config,
            rt,
        }
    }

    fn spec(&self, memory: u64) -> SandboxSpec {
        let mut limits = self.rt.default_limits();
        limits.memory_bytes = memory;
        SandboxSpec {
            rootfs: Rootfs::HostRoot,
            limits,
            network: Network::None,
        }
    }

    async fn wait_idle(&self, pool: &Pool, repo: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            pool.refill_now().await;
            let idle = pool
                .stats()
                .await
                .idle
                .iter()
                .find(|(r, _)| r == repo)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            if idle >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the pool of {repo} never reached {n} idle sandboxes");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        hangar_testkit::remove_sandboxes(&self.config.data_dir);
    }
}

fn config(min: usize, max: usize) -> PoolConfig {
    PoolConfig {
        min,
        max,
        demand_window: Duration::from_secs(600),
        reservation_timeout: Duration::from_millis(400),
        state_file: None,
        refresh_every: Duration::from_secs(20),
        refill_delay: Duration::from_millis(100),
    }
}

#[tokio::test]
async fn a_warm_claim_is_a_hit_and_the_pool_refills_with_demand() {
    let f = Fixture::new();
    let pool = Pool::new(f.rt.clone(), Arc::new(AlreadySynced), config(1, 3));
    pool.set_image("acme/app", f.spec(512 << 20)).await;
    f.wait_idle(&pool, "acme/app", 1).await;
    let claim = pool.claim("acme/app").await.unwrap();
    assert!(claim.hit, "served warm");
    assert!(
        claim.latency < Duration::from_millis(50),
        "{:?}",
        claim.latency
    );
    let envd = f.rt.envd(&claim.sandbox).await.unwrap();
    assert_eq!(envd.health().await.unwrap().pid, 1);
    // One claim in the window: the target grows to min + 1.
    assert_eq!(pool.target("acme/app").await, 2);
    f.wait_idle(&pool, "acme/app", 2).await;
    let stats = pool.stats().await;
    assert_eq!((stats.hits, stats.misses), (1, 0));
}

#[tokio::test]
async fn an_empty_pool_starts_a_sandbox_and_an_unknown_repo_is_an_error() {
    let f = Fixture::new();
    let pool = Pool::new(f.rt.clone(), Arc::new(AlreadySynced), config(0, 0));
    pool.set_image("acme/app", f.spec(512 << 20)).await;
    let claim = pool.claim("acme/app").await.unwrap();
    assert!(!claim.hit);
    assert_eq!(
        f.rt.get(&claim.sandbox).await.unwrap().status,
        Status::Running
    );
    let err = pool.claim("acme/other").await.err().unwrap();
    assert!(
        err.to_string()
            .contains("no image is registered for repository acme/other")
    );
}

#[tokio::test]
async fn a_new_image_drains_idle_sandboxes_and_leaves_claimed_ones_alone() {
    let f = Fixture::new();
    let pool = Pool::new(f.rt.clone(), Arc::new(AlreadySynced), config(2, 2));
    pool.set_image("acme/app", f.spec(512 << 20)).await;
    f.wait_idle(&pool, "acme/app", 2).await;
    let claimed = pool.claim("acme/app").await.unwrap();
    f.wait_idle(&pool, "acme/app", 2).await;
    let before: Vec<String> =
        f.rt.list()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .filter(|id| *id != claimed.sandbox)
            .collect();
    assert_eq!(before.len(), 2);
    pool.set_image("acme/app", f.spec(256 << 20)).await;
    f.wait_idle(&pool, "acme/app", 2).await;
    for id in &before {
        assert!(
            f.rt.get(id).await.is_err(),
            "idle sandbox {id} of the old image was destroyed"
        );
    }
    assert_eq!(
        f.rt.get(&claimed.sandbox).await.unwrap().status,
        Status::Running,
        "claimed one untouched"
    );
    let next = pool.claim("acme/app").await.unwrap();
    assert!(next.hit);
    assert_eq!(
        f.rt.get(&next.sandbox)
            .await
            .unwrap()
            .spec
            .limits
            .memory_bytes,
        256 << 20,
        "from the new image"
    );
}

#[tokio::test]
async fn a_dead_warm_sandbox_is_never_handed_out() {
    let f = Fixture::new();
    let pool = Pool::new(f.rt.clone(), Arc::new(AlreadySynced), config(1, 1));
    pool.set_image("acme/app", f.spec(512 << 20)).await;
    f.wait_idle(&pool, "acme/app", 1).await;
    let all = f.rt.list().await.unwrap();
    assert_eq!(all.len(), 1, "exactly the target: {all:?}");
    let warm = all.into_iter().next().unwrap();
    kill9(warm.init_pid.unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let claim = pool.claim("acme/app").await.unwrap();
    assert_ne!(claim.sandbox, warm.id);
    assert_eq!(
        f.rt.get(&claim.sandbox).await.unwrap().status,
        Status::Running
    );
}

fn kill9(pid: u32) {
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
}

struct SlowSync(Duration);

#[async_trait::async_trait]
impl Syncer for SlowSync {
    async fn sync(&self, _repo: &str, _sandbox: &str) -> Result<Synced, String> {
        tokio::time::sleep(self.0).await;
        Ok(Synced::At("tip".into()))
    }
}

/// A remote whose base moves when the test says so; records every sync. Like git, a sync
/// reaches the remote's tip, and `fresh` knows the tip only after a fetch (sync or refresh).
#[derive(Default)]
struct MovingBase {
    remote: std::sync::Mutex<u32>,
    fetched: std::sync::Mutex<Option<u32>>,
    synced: std::sync::Mutex<Vec<(String, u32)>>,
    /// Cannot tell whether the last fetch is recent enough.
    unsure: std::sync::atomic::AtomicBool,
}

impl MovingBase {
    fn push(&self) {
        *self.remote.lock().unwrap() += 1;
    }

    fn syncs_of(&self, sandbox: &str) -> Vec<u32> {
        let synced = self.synced.lock().unwrap();
        synced
            .iter()
            .filter(|(s, _)| s == sandbox)
            .map(|(_, t)| *t)
            .collect()
    }
}

#[async_trait::async_trait]
impl Syncer for MovingBase {
    async fn sync(&self, _repo: &str, sandbox: &str) -> Result<Synced, String> {
        let tip = *self.remote.lock().unwrap();
        *self.fetched.lock().unwrap() = Some(tip);
        self.synced.lock().unwrap().push((sandbox.to_string(), tip));
        Ok(Synced::At(tip.to_string()))
    }

    async fn fresh(&self, _repo: &str) -> Option<Synced> {
        if self.unsure.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let fetched = *self.fetched.lock().unwrap();
        fetched.map(|t| Synced::At(t.to_string()))
    }

    async fn refresh(&self, _repo: &str) -> Result<(), String> {
        *self.fetched.lock().unwrap() = Some(*self.remote.lock().unwrap());
        Ok(())
    }
}

#[tokio::test]
async fn idle_sandboxes_are_synced_ahead_so_a_claim_starts_no_sync_until_the_base_moves() {
    let f = Fixture::new();
    let base = Arc::new(MovingBase::default());
    let pool = Pool::new(
        f.rt.clone(),
        base.clone(),
        PoolConfig {
            refresh_every: Duration::from_millis(100),
            ..config(1, 1)
        },
    );
    pool.set_image("acme/app", f.spec(512 << 20)).await;
    f.wait_idle(&pool, "acme/app", 1).await;

    // Synced when it was started: the claim finds it current and runs no sync.
    let first = pool.claim("acme/app").await.unwrap();
    assert!(first.hit);
    assert_eq!(*first.sync.borrow(), SyncState::Synced);
    assert_eq!(
        base.syncs_of(&first.sandbox),
        vec![0],
        "one sync, at refill"
    );
    assert_eq!(pool.stats().await.presynced, 1);

    // The base moves: the idle replacement, synced to 0, is re-synced by the refill task
    // after its next refresh, and handed out current again.
    f.wait_idle(&pool, "acme/app", 1).await;
    base.push();
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        assert!(
            Instant::now() < deadline,
            "the idle sandbox was never re-synced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let resynced = base
            .synced
            .lock()
            .unwrap()
            .iter()
            .any(|(s, t)| *t == 1 && s != &first.sandbox);
        if resynced && pool.stats().await.idle.iter().any(|(_, n)| *n == 1) {
            break pool.claim("acme/app").await.unwrap();
        }
    };
    assert!(second.hit);
    assert_eq!(base.syncs_of(&second.sandbox), vec![0, 1]);
    assert_eq!(*second.sync.borrow(), SyncState::Synced);
    assert_eq!(pool.stats().await.presynced, 2);

    // A base that moved since the last fetch is not known to the pool: with the syncer
    // unable to vouch for freshness, the claim syncs.
    f.wait_idle(&pool, "acme/app", 1).await;
    base.unsure.store(true, std::sync::atomic::Ordering::SeqCst);
    let third = pool.claim("acme/app").await.unwrap();
    let mut sync = third.sync.clone();
    sync.wait_for(|s| *s == SyncState::Synced).await.unwrap();
    assert_eq!(base.syncs_of(&third.sandbox).len(), 2, "refill and claim");
    assert_eq!(pool.stats().await.presynced, 2);

    // A typing signal fetches the latest base even for a current sandbox: there is time.
    base.unsure
        .store(false, std::sync::atomic::Ordering::SeqCst);
    f.wait_idle(&pool, "acme/app", 1).await;
    pool.typing("alice", "acme/app").await.unwrap();
    let draft = pool.take_reservation("alice", "acme/app").await.unwrap();
    let mut sync = draft.sync.clone();
    sync.wait_for(|s| *s == SyncState::Synced).await.unwrap();
    assert_eq!(base.syncs_of(&draft.sandbox).len(), 2, "refill and typing");
    assert_eq!(pool.stats().await.presynced, 2);
    for c in [first, second, third, draft] {
        f.rt.destroy(&c.sandbox).await.unwrap();
    }
}

#[tokio::test]
async fn typing_reserves_a_syncing_sandbox_once_per_draft_and_releases_it_if_no_prompt_follows() {
    let f = Fixture::new();
    let pool = Pool::new(
        f.rt.clone(),
        Arc::new(SlowSync(Duration::from_millis(200))),
        config(1, 1),
    );
    pool.set_image("acme/app", f.spec(512 << 20)).await;
    f.wait_idle(&pool, "acme/app", 1).await;
    pool.typing("alice", "acme/app").await.unwrap();
    pool.typing("alice", "acme/app").await.unwrap();
    assert_eq!(pool.stats().await.reservations, 1, "idempotent per draft");
    let claim = pool.take_reservation("alice", "acme/app").await.unwrap();
    assert!(claim.hit, "the reservation came from the warm pool");
    let mut sync = claim.sync.clone();
    assert_eq!(*sync.borrow(), SyncState::Syncing);
    sync.wait_for(|s| *s == SyncState::Synced).await.unwrap();
    assert!(pool.take_reservation("alice", "acme/app").await.is_none());

    // A draft nobody sends is released after the timeout.
    pool.typing("bob", "acme/app").await.unwrap();
    let reserved: Vec<String> =
        f.rt.list()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(pool.stats().await.reservations, 0);
    let alive: Vec<String> =
        f.rt.list()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
    assert!(
        reserved.iter().any(|id| !alive.contains(id)),
        "bob's sandbox was destroyed"
    );
}

/// Idle sandboxes of `repo` right now (the background refill task alone fills the pool here).
async fn idle(pool: &Pool, repo: &str) -> usize {
    let stats = pool.stats().await;
    stats
        .idle
        .iter()
        .find(|(r, _)| r == repo)
        .map_or(0, |(_, n)| *n)
}

#[tokio::test]
async fn a_prompt_holds_the_refill_off_while_a_warm_up_claim_refills_at_once() {
    let f = Fixture::new();
    let mut config = config(1, 1);
    config.refill_delay = Duration::from_secs(3);
    let pool = Pool::new(f.rt.clone(), Arc::new(AlreadySynced), config);
    pool.set_image("acme/app", f.spec(512 << 20)).await;
    f.wait_idle(&pool, "acme/app", 1).await;

    // The person is still typing: the replacement starts while they do.
    pool.typing("alice", "acme/app").await.unwrap();
    let typed = Instant::now();
    while idle(&pool, "acme/app").await == 0 {
        assert!(
            typed.elapsed() < Duration::from_secs(2),
            "no refill after a warm-up claim"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A prompt's claim leaves the cores to the prompt for `refill_delay`.
    let claim = pool.claim("acme/app").await.unwrap();
    assert!(claim.hit);
    let claimed = Instant::now();
    while claimed.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            idle(&pool, "acme/app").await,
            0,
            "refilled during the hold-off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while idle(&pool, "acme/app").await == 0 {
        assert!(
            claimed.elapsed() < Duration::from_secs(10),
            "no refill after the hold-off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(claimed.elapsed() >= Duration::from_secs(3));

    // Any prompt holds it off, also one whose session already has its sandbox: then even
    // a warm-up claim's replacement waits.
    pool.hold_off_background();
    pool.typing("bob", "acme/app").await.unwrap();
    let held = Instant::now();
    while held.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            idle(&pool, "acme/app").await,
            0,
            "refilled during the hold-off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_restarted_pool_destroys_the_warm_sandboxes_of_the_previous_one() {
    let f = Fixture::new();
    let state = f.config.data_dir.join("pool-state");
    let cfg = PoolConfig {
        state_file: Some(state.clone()),
        ..config(2, 2)
    };
    let first = Pool::new(f.rt.clone(), Arc::new(AlreadySynced), cfg.clone());
    first.set_image("acme/app", f.spec(512 << 20)).await;
    f.wait_idle(&first, "acme/app", 2).await;
    let claimed = first.claim("acme/app").await.unwrap();
    // Let the state file catch up, then "crash": the pool goes, its sandboxes stay.
    let deadline = Instant::now() + Duration::from_secs(5);
    let idle_before: Vec<String> = loop {
        first.refill_now().await;
        let listed: Vec<String> = std::fs::read_to_string(&state)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if listed.len() == 2 || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        idle_before.len(),
        2,
        "the state file lists the idle sandboxes"
    );
    assert!(
        !idle_before.contains(&claimed.sandbox),
        "a claimed sandbox is not the pool's"
    );
    drop(first);
    let second = Pool::new(f.rt.clone(), Arc::new(AlreadySynced), cfg);
    let deadline = Instant::now() + Duration::from_secs(5);
    while idle_before
        .iter()
        .any(|id| matches!(f.rt.get(id).now_or_never(), Some(Ok(_))))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &idle_before {
        assert!(
            f.rt.get(id).await.is_err(),
            "{id} of the previous pool was destroyed"
        );
    }
    assert_eq!(
        f.rt.get(&claimed.sandbox).await.unwrap().status,
        Status::Running,
        "the claimed one lives"
    );
    second.close().await;
}

#[tokio::test]
async fn close_destroys_unclaimed_sandboxes_and_stops_refilling() {
    let f = Fixture::new();
    let pool = Pool::new(f.rt.clone(), Arc::new(AlreadySynced), config(2, 2));
    pool.set_image("acme/app", f.spec(512 << 20)).await;
    f.wait_idle(&pool, "acme/app", 2).await;
    let claimed = pool.claim("acme/app").await.unwrap();
    pool.close().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let left: Vec<String> =
        f.rt.list()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
    assert_eq!(
        left,
        vec![claimed.sandbox],
        "only the claimed sandbox remains"
    );
}
