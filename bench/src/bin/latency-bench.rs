//! `latency-bench`: what Hangar adds to a prompt beyond the model's time-to-first-token.
//!
//! A fake model server (exact Anthropic streaming format) answers after a fixed TTFT. For
//! each case, a session is prompted and we measure from the prompt call to (a) the model
//! request arriving at the model server and (b) the first `model.delta` reaching a live
//! subscriber of the session; Hangar's overhead is (a), and (b) minus the TTFT. Cases:
//! a warm-pool hit, predictive warm-up (the typing signal one second before the prompt),
//! a cold start (a sandbox started for the prompt), and a warm-pool hit on a registered
//! repository (a real git remote: idle sandboxes are kept synced through the host mirror and
//! each prompt's end commits and pushes). In process: the session service, the runner, the
//! pool and the real local sandbox runtime. The same git case runs once more through the
//! HTTP server: the prompt is POSTed and the token read from a session WebSocket. One more
//! case times the pool alone: claim a warm sandbox → first command done.
//! Prints one JSON document.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;
use hangar_agent::{Provider, ProviderConfig, ProviderKind};
use hangar_pool::{AlreadySynced, Pool, PoolConfig};
use hangar_protocol::session::Author;
use hangar_runner::AgentExecutor;
use hangar_sandbox::{LocalRuntime, Network, Rootfs, Runtime, SandboxSpec};
use hangar_server::{AppState, Backend};
use hangar_session::{Live, Sessions, SessionsConfig};
use hangar_store::{NewUser, Store};
use hangar_testkit::fake_model::{FakeModel, Reply, anthropic};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Prompt → first model request and → first token, beyond the model's TTFT")]
struct Args {
    /// Prompts per case.
    #[arg(long, default_value_t = 30)]
    iterations: usize,
    /// The fake model's time to first token, milliseconds.
    #[arg(long, default_value_t = 200)]
    ttft_ms: u64,
    /// Run only these cases (comma-separated names; all by default).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
}

/// One prompt's timings.
struct Sample {
    /// Prompt call → the model request arriving at the model server: (a).
    to_request: Duration,
    /// Prompt call → first token at the subscriber, less the model's real TTFT: (b).
    overhead: Duration,
    /// The first event leaving the model server → the subscriber seeing the token: the way back.
    way_back: Duration,
    /// The model server's real TTFT (request arrival → first event out), timer overshoot included.
    model_ttft: Duration,
}

impl Sample {
    /// From the prompt call's start, the subscriber's sighting of the token, and the model
    /// server's record of the request.
    fn new(
        t0: Instant,
        seen: Instant,
        request: &hangar_testkit::fake_model::Recorded,
    ) -> anyhow::Result<Sample> {
        let first_event = *request
            .first_event
            .get()
            .context("the model server sent no event")?;
        let model_ttft = first_event.saturating_duration_since(request.at);
        Ok(Sample {
            to_request: request.at.saturating_duration_since(t0),
            overhead: seen
                .saturating_duration_since(t0)
                .saturating_sub(model_ttft),
            way_back: seen.saturating_duration_since(first_event),
            model_ttft,
        })
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    config: hangar_config::Config,
    sessions: Sessions,
    alice: Author,
    fake: FakeModel,
    /// The HTTP server's address and alice's token, when prompts go through HTTP.
    http: Option<(std::net::SocketAddr, String)>,
}

/// How prompts reach the session and tokens the subscriber.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// Calls on the session service.
    InProcess,
    /// `POST /api/sessions/{id}/prompts` and the session's WebSocket.
    Http,
}

/// A bare repository with a small tree and two commits, made with the git CLI.
fn remote_repo(root: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let remote = root.join("remote.git");
    let work = root.join("work");
    let git = |dir: &std::path::Path, args: &[&str]| -> anyhow::Result<()> {
        let ok = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "bench")
            .env("GIT_AUTHOR_EMAIL", "bench@example.com")
            .env("GIT_COMMITTER_NAME", "bench")
            .env("GIT_COMMITTER_EMAIL", "bench@example.com")
            .status()?
            .success();
        anyhow::ensure!(ok, "git {args:?} failed");
        Ok(())
    };
    let (r, w) = (remote.to_string_lossy(), work.to_string_lossy());
    git(root, &["init", "-q", "--bare", "-b", "main", &r])?;
    git(root, &["clone", "-q", &r, &w])?;
    for i in 0..200 {
        let dir = work.join(format!("src/m{}", i % 10));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join(format!("f{i}.py")),
            format!("x = {i}\n").repeat(20),
        )?;
    }
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-q", "-m", "first"])?;
    std::fs::write(work.join("README.md"), "# app\n")?;
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-q", "-m", "second"])?;
    git(&work, &["push", "-q", "origin", "HEAD:main"])?;
    Ok(remote)
}

async fn setup(
    pool: Option<PoolConfig>,
    with_git: bool,
    transport: Transport,
) -> anyhow::Result<(Setup, Option<Pool>)> {
    let dir = tempfile::Builder::new()
        .prefix("hangar-latency-")
        .tempdir_in("/dev/shm")?;
    let mut config = hangar_config::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.sandbox.tools_dir = std::env::current_exe()?.parent().map(|p| p.to_path_buf());
    let local = LocalRuntime::open(&config)?;
    let spec = SandboxSpec {
        rootfs: Rootfs::HostRoot,
        limits: local.default_limits(),
        network: Network::None,
    };
    let runtime: Arc<dyn Runtime> = Arc::new(local);
    let fake = FakeModel::start(Vec::new()).await;
    let provider = Provider::new(ProviderConfig {
        kind: ProviderKind::Anthropic,
        base_url: fake.url(),
        model: "bench".into(),
        api_key: Some("k".into()),
        max_retries: 0,
        initial_backoff: Duration::from_millis(1),
    })?;
    let executor = AgentExecutor::new(runtime.clone(), provider, spec.clone(), "/workspace");
    let store = Arc::new(Store::open(&dir.path().join("index.db"))?);
    let mut syncer: Arc<dyn hangar_pool::Syncer> = Arc::new(AlreadySynced);
    if with_git {
        let remote = remote_repo(dir.path())?;
        store.add_repo(&hangar_store::NewRepo {
            name: "acme/app".into(),
            url: remote.to_string_lossy().into_owned(),
            ..Default::default()
        })?;
        let worktrees = Arc::new(hangar_runner::Worktrees::new(
            store.clone(),
            dir.path().join("git"),
            Arc::new(hangar_images::NoCredentials),
            "/workspace",
        ));
        executor.use_git(worktrees.clone());
        syncer = Arc::new(hangar_runner::GitSyncer {
            worktrees,
            runtime: runtime.clone(),
        });
    }
    let user = store.create_user(&NewUser {
        login: "alice".into(),
        name: "Alice".into(),
        ..NewUser::default()
    })?;
    let alice = Author {
        user_id: Some(user.id),
        login: "alice".into(),
        share_id: None,
    };
    let sessions = Sessions::new(
        SessionsConfig::new(dir.path().join("sessions")),
        store.clone(),
        Arc::new(executor.clone()),
    )?;
    executor.enable_sub_sessions(sessions.clone());
    let pool = match pool {
        Some(pc) => {
            let pool = Pool::new(runtime, syncer, pc);
            pool.set_image("acme/app", spec).await;
            executor.use_pool(pool.clone());
            Some(pool)
        }
        None => None,
    };
    let http = match transport {
        Transport::InProcess => None,
        Transport::Http => {
            let (_, token) = store.create_token(user.id, "bench")?;
            let mut state = AppState::new(
                Backend::local(LocalRuntime::open(&config)?),
                store,
                sessions.clone(),
            )?;
            if let Some(p) = &pool {
                state = state.with_pool(p.clone());
            }
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            tokio::spawn(hangar_server::serve(
                state,
                listener,
                std::future::pending::<()>(),
            ));
            Some((addr, token.expose().to_string()))
        }
    };
    Ok((
        Setup {
            _dir: dir,
            config,
            sessions,
            alice,
            fake,
            http,
        },
        pool,
    ))
}

/// One prompt.
async fn measure(s: &Setup, ttft: Duration, warm_up: bool) -> anyhow::Result<Sample> {
    let session = s
        .sessions
        .create(s.alice.user_id.context("user")?, "acme/app", "bench")
        .await?;
    let mut sub = s.sessions.subscribe(&session.id, s.alice.clone()).await?;
    if warm_up {
        s.sessions.typing(&session.id, s.alice.clone()).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    s.fake.push(Reply::Sse {
        events: anthropic(&["hi"], &[], "end_turn"),
        ttft,
        gap: Duration::ZERO,
        cut_after: None,
    });
    if let Some((addr, token)) = &s.http {
        return measure_http(s, *addr, token, &session.id).await;
    }
    let before = s.fake.requests().len();
    let t0 = Instant::now();
    s.sessions
        .prompt(&session.id, s.alice.clone(), "go".into())
        .await?;
    let first_token = loop {
        match tokio::time::timeout(Duration::from_secs(30), sub.receiver.recv()).await {
            Ok(Ok(Live::Event(e))) if e.json.contains("\"model.delta\"") => break Instant::now(),
            Ok(Ok(_)) => continue,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(e)) => anyhow::bail!("subscription ended: {e}"),
            Err(_) => anyhow::bail!("no token within 30 s"),
        }
    };
    // The prompt's end (its commit and push, in the git case) is not measured, but it is
    // over before the next prompt, as it would be between people.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), sub.receiver.recv()).await {
            Ok(Ok(Live::Event(e))) if e.json.contains("\"prompt.finished\"") => break,
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => anyhow::bail!("subscription ended: {e}"),
            Err(_) => anyhow::bail!("the prompt did not finish within 30 s"),
        }
    }
    let reqs = s.fake.requests();
    let request = reqs
        .get(before)
        .context("the model request was not recorded")?;
    Sample::new(t0, first_token, request)
}

/// One prompt through the HTTP server: POSTed, its first token read from a WebSocket that
/// subscribed before (as a browser's session view does).
async fn measure_http(
    s: &Setup,
    addr: std::net::SocketAddr,
    token: &str,
    session: &str,
) -> anyhow::Result<Sample> {
    let url = format!("ws://{addr}/api/sessions/{session}/ws?after_seq=0&token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let client = reqwest::Client::new();
    let before = s.fake.requests().len();
    let t0 = Instant::now();
    let resp = client
        .post(format!("http://{addr}/api/sessions/{session}/prompts"))
        .bearer_auth(token)
        .json(&json!({"text": "go"}))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "prompt POST: {}", resp.status());
    let first_token = loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(msg))) => {
                if msg.to_text().is_ok_and(|t| t.contains("\"model.delta\"")) {
                    break Instant::now();
                }
            }
            Ok(Some(Err(e))) => anyhow::bail!("websocket: {e}"),
            Ok(None) => anyhow::bail!("the websocket closed"),
            Err(_) => anyhow::bail!("no token within 30 s"),
        }
    };
    // As in process: the prompt ends before the next one.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(msg))) => {
                if msg
                    .to_text()
                    .is_ok_and(|t| t.contains("\"prompt.finished\""))
                {
                    break;
                }
            }
            Ok(Some(Err(e))) => anyhow::bail!("websocket: {e}"),
            Ok(None) => anyhow::bail!("the websocket closed"),
            Err(_) => anyhow::bail!("the prompt did not finish within 30 s"),
        }
    }
    let reqs = s.fake.requests();
    let request = reqs
        .get(before)
        .context("the model request was not recorded")?;
    Sample::new(t0, first_token, request)
}

fn summary(mut xs: Vec<Duration>) -> serde_json::Value {
    xs.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
    let at = |q: f64| {
        xs.get(((xs.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    json!({"n": xs.len(), "p50_ms": ms(at(0.5)), "p90_ms": ms(at(0.9)), "p99_ms": ms(at(0.99)), "max_ms": ms(at(1.0))})
}

async fn case(
    name: &str,
    pool: Option<PoolConfig>,
    warm_up: bool,
    with_git: bool,
    transport: Transport,
    args: &Args,
) -> anyhow::Result<serde_json::Value> {
    let ttft = Duration::from_millis(args.ttft_ms);
    let (s, pool) = setup(pool, with_git, transport).await?;
    let (mut to_request, mut overhead) = (Vec::new(), Vec::new());
    let (mut way_back, mut model_ttft) = (Vec::new(), Vec::new());
    for i in 0..args.iterations {
        if let Some(p) = &pool {
            // Let the pool refill between prompts, as it would between people.
            for _ in 0..100 {
                p.refill_now().await;
                if p.stats().await.idle.iter().any(|(_, n)| *n > 0) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let m = measure(&s, ttft, warm_up).await?;
        eprintln!(
            "{name} {i}: request {:?}, overhead {:?}, way back {:?}, model ttft {:?}",
            m.to_request, m.overhead, m.way_back, m.model_ttft
        );
        to_request.push(m.to_request);
        overhead.push(m.overhead);
        way_back.push(m.way_back);
        model_ttft.push(m.model_ttft);
    }
    let (hits, presynced) = match &pool {
        Some(p) => {
            let stats = p.stats().await;
            (stats.hits, stats.presynced)
        }
        None => (0, 0),
    };
    if let Some(p) = &pool {
        // No refill or refresh may start while the scratch directory goes.
        p.close().await;
    }
    let rt = LocalRuntime::open(&s.config)?;
    for sb in rt.list().await? {
        let _ = rt.destroy(&sb.id).await;
    }
    Ok(json!({
        "case": name,
        "pool_hits": hits,
        "presynced_hits": presynced,
        "prompt_to_model_request": summary(to_request),
        "prompt_to_first_token_minus_ttft": summary(overhead),
        "first_event_sent_to_token_seen": summary(way_back),
        "model_ttft": summary(model_ttft),
    }))
}

/// Claim a warm sandbox → first command done (`true` through envd): the pool's own target
/// (DESIGN.md: p50 ≤ 5 ms), without a session around it. The claimed sandbox is destroyed
/// after each iteration, untimed, and the pool refills before the next.
async fn warm_claim(args: &Args, pool_config: PoolConfig) -> anyhow::Result<serde_json::Value> {
    let (s, pool) = setup(Some(pool_config), false, Transport::InProcess).await?;
    let pool = pool.context("the claim case needs a pool")?;
    let rt = LocalRuntime::open(&s.config)?;
    let (mut claim, mut total) = (Vec::new(), Vec::new());
    for i in 0..args.iterations {
        for _ in 0..100 {
            pool.refill_now().await;
            if pool.stats().await.idle.iter().any(|(_, n)| *n > 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t0 = Instant::now();
        let c = pool.claim("acme/app").await?;
        let claimed = t0.elapsed();
        let envd = rt.envd(&c.sandbox).await?;
        let out = envd
            .output(
                hangar_protocol::envd::ExecRequest {
                    argv: vec!["true".into()],
                    ..Default::default()
                },
                1024,
            )
            .await?;
        let done = t0.elapsed();
        anyhow::ensure!(
            out.status.code == Some(0),
            "`true` failed in {}: {:?}",
            c.sandbox,
            out.status
        );
        anyhow::ensure!(c.hit, "iteration {i} was not a pool hit");
        eprintln!("warm_claim {i}: claim {claimed:?}, first command done {done:?}");
        claim.push(claimed);
        total.push(done);
        rt.destroy(&c.sandbox).await?;
    }
    pool.close().await;
    Ok(json!({
        "case": "warm_claim_to_first_command",
        "claim": summary(claim),
        "claim_to_first_command_done": summary(total),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = PoolConfig {
        min: 1,
        max: 2,
        ..Default::default()
    };
    let claim_pool = pool.clone();
    use Transport::{Http, InProcess};
    // (name, pool, typing signal first, registered repository with git, transport)
    let all = [
        ("warm_pool_hit", Some(pool.clone()), false, false, InProcess),
        (
            "predictive_warm_up",
            Some(pool.clone()),
            true,
            false,
            InProcess,
        ),
        ("cold_start", None, false, false, InProcess),
        (
            "warm_pool_hit_with_git",
            Some(pool.clone()),
            false,
            true,
            InProcess,
        ),
        (
            "warm_pool_hit_with_git_over_http",
            Some(pool),
            false,
            true,
            Http,
        ),
    ];
    const CLAIM: &str = "warm_claim_to_first_command";
    let known = |c: &str| c == CLAIM || all.iter().any(|a| a.0 == c);
    if let Some(unknown) = args.cases.iter().find(|c| !known(c)) {
        let names: Vec<_> = all.iter().map(|a| a.0).chain([CLAIM]).collect();
        anyhow::bail!(
            "unknown case {unknown:?}; the cases are {}",
            names.join(", ")
        );
    }
    let wanted = |name: &str| args.cases.is_empty() || args.cases.iter().any(|c| c == name);
    let mut cases = Vec::new();
    if wanted(CLAIM) {
        cases.push(warm_claim(&args, claim_pool).await?);
    }
    for (name, pool, warm_up, with_git, transport) in all {
        if wanted(name) {
            cases.push(case(name, pool, warm_up, with_git, transport, &args).await?);
        }
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "benchmark": "latency",
            "ttft_ms": args.ttft_ms,
            "iterations": args.iterations,
            "kernel": kernel.trim(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "cases": cases,
        }))?
    );
    Ok(())
}
