//! `session-bench`: the session service's throughput, fan-out latency and capacity.
//!
//! - `appends`: durable event appends per second into one session's log, (a) one event per
//!   transaction straight into the session file and (b) through the session's actor with a
//!   flood of executor events (group commit), each with `synchronous=NORMAL` (survives
//!   `kill -9`) and `FULL` (an fsync per commit, survives power loss).
//! - `fanout`: the real HTTP/WebSocket server in-process on loopback, N WebSocket clients
//!   on one session, an executor emitting timestamped events at a fixed rate; latency from
//!   the executor's emit (before the append) to each client's receipt.
//! - `hibernated`: N sessions with a few events each, all hibernated; process memory, bytes
//!   on disk per session, and wake-up latency (first request to a hibernated session).
//! - `active`: N sessions all running prompts at once (the scripted agent, one event every
//!   `--active-delay-ms`); events committed per second, memory, and request latency meanwhile.
//!
//! Prints one JSON document on stdout; progress on stderr. No root needed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use hangar_bench::Summary;
use hangar_protocol::session::{Author, EventBody};
use hangar_sandbox::{
    EnvdClient, Limits, Rootfs, Runtime, Sandbox, SandboxError, SandboxSpec, Usage,
};
use hangar_server::{AppState, Backend};
use hangar_session::{
    Durability, Executor, PromptRun, RunFuture, ScriptedExecutor, SessionLog, Sessions,
    SessionsConfig,
};
use hangar_store::Store;
use serde_json::{Value, json};

/// Benchmarks the session service.
#[derive(Parser, Debug)]
#[command(name = "session-bench")]
struct Args {
    /// Which parts to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "appends,fanout,hibernated,active"
    )]
    run: Vec<String>,
    /// Events per append measurement.
    #[arg(long, default_value_t = 50_000)]
    appends: u64,
    /// WebSocket clients on one session.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Events emitted during the fan-out measurement.
    #[arg(long, default_value_t = 2000)]
    fanout_events: u64,
    /// Pause between fan-out events, in microseconds.
    #[arg(long, default_value_t = 1000)]
    fanout_gap_us: u64,
    /// Hibernated sessions.
    #[arg(long, default_value_t = 10_000)]
    hibernated: usize,
    /// Wake-ups measured.
    #[arg(long, default_value_t = 1000)]
    wakeups: usize,
    /// Concurrently active sessions.
    #[arg(long, default_value_t = 300)]
    active: usize,
    /// Pause between one active session's events.
    #[arg(long, default_value_t = 10)]
    active_delay_ms: u64,
    /// Seconds the active sessions run.
    #[arg(long, default_value_t = 10)]
    active_secs: u64,
    /// Directory for the session files; its filesystem decides what an fsync costs.
    #[arg(long, default_value = "/dev/shm")]
    dir: PathBuf,
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn since_epoch_ns() -> u128 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos()
}

/// Emits `count` model deltas, `gap` apart (none: as fast as the session takes them), each
/// carrying the time it was emitted.
struct TimedExecutor {
    count: u64,
    gap: Duration,
}

impl Executor for TimedExecutor {
    fn run(&self, run: PromptRun) -> RunFuture {
        let (count, gap) = (self.count, self.gap);
        Box::pin(async move {
            let mut next = tokio::time::Instant::now();
            for _ in 0..count {
                if !gap.is_zero() {
                    next += gap;
                    tokio::time::sleep_until(next).await;
                }
                run.events
                    .emit(EventBody::ModelDelta {
                        prompt_id: run.prompt.id,
                        text: since_epoch_ns().to_string(),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }
}

/// No sandboxes: the session benchmarks never touch one.
struct NoSandboxes;

#[async_trait::async_trait]
impl Runtime for NoSandboxes {
    async fn create(&self, _: SandboxSpec) -> Result<Sandbox, SandboxError> {
        Err(SandboxError::Unsupported(
            "no sandboxes in this benchmark".into(),
        ))
    }
    async fn envd(&self, id: &str) -> Result<EnvdClient, SandboxError> {
        Err(SandboxError::NotFound(id.into()))
    }
    async fn stop(&self, id: &str) -> Result<(), SandboxError> {
        Err(SandboxError::NotFound(id.into()))
    }
    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        Err(SandboxError::NotFound(id.into()))
    }
    async fn get(&self, id: &str) -> Result<Sandbox, SandboxError> {
        Err(SandboxError::NotFound(id.into()))
    }
    async fn list(&self) -> Result<Vec<Sandbox>, SandboxError> {
        Ok(Vec::new())
    }
    async fn stats(&self, id: &str) -> Result<Usage, SandboxError> {
        Err(SandboxError::NotFound(id.into()))
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    sessions: Sessions,
    author: Author,
    token: String,
}

fn setup(
    base: &Path,
    executor: Arc<dyn Executor>,
    durability: Durability,
    idle: Duration,
) -> Result<Setup> {
    let dir = tempfile::Builder::new()
        .prefix("session-bench-")
        .tempdir_in(base)
        .with_context(|| format!("scratch directory in {}", base.display()))?;
    let store = Arc::new(Store::open(&dir.path().join("index.db"))?);
    let (admin, token) = store
        .ensure_admin()?
        .context("a fresh index has no admin")?;
    let mut config = SessionsConfig::new(dir.path().join("sessions"));
    config.durability = durability;
    config.idle_unload = idle;
    let sessions = Sessions::new(config, Arc::clone(&store), executor)?;
    Ok(Setup {
        _dir: dir,
        store,
        sessions,
        author: Author {
            user_id: Some(admin.id),
            login: admin.login,
            share_id: None,
        },
        token: token.expose().to_string(),
    })
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| hangar_bench::meminfo_kib(&s, "VmRSS"))
        .unwrap_or(0)
}

async fn wait_until_idle(sessions: &Sessions, id: &str) -> Result<()> {
    loop {
        let info = sessions.info(id).await?;
        if info.running.is_none() && info.queue.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn appends(args: &Args) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for (name, durability) in [("normal", Durability::Process), ("full", Durability::Full)] {
        // One event per transaction, straight into the file.
        let n = if durability == Durability::Full {
            (args.appends / 10).max(100)
        } else {
            args.appends
        };
        let dir = tempfile::tempdir_in(&args.dir)?;
        let mut log = SessionLog::open(&dir.path().join("s.db"), durability, true)?;
        let t = Instant::now();
        for i in 0..n {
            log.commit(
                &[],
                None,
                vec![EventBody::ModelDelta {
                    prompt_id: 1,
                    text: format!("delta {i}"),
                }],
            )?;
        }
        let single = n as f64 / t.elapsed().as_secs_f64();
        // Through the actor: the executor floods, the actor group-commits.
        let s = setup(
            &args.dir,
            Arc::new(TimedExecutor {
                count: args.appends,
                gap: Duration::ZERO,
            }),
            durability,
            Duration::from_secs(600),
        )?;
        let rec = s.sessions.create(1, "bench/app", "appends").await?;
        let t = Instant::now();
        s.sessions
            .prompt(&rec.id, s.author.clone(), "flood".into())
            .await?;
        wait_until_idle(&s.sessions, &rec.id).await?;
        let secs = t.elapsed().as_secs_f64();
        let last = s.sessions.info(&rec.id).await?.last_seq;
        eprintln!(
            "appends {name}: {single:.0}/s one per transaction, {:.0}/s through the actor",
            last as f64 / secs
        );
        out.insert(
            name.into(),
            json!({
                "one_event_per_transaction_per_s": single.round(),
                "one_event_per_transaction_n": n,
                "through_actor_per_s": (last as f64 / secs).round(),
                "through_actor_events": last,
            }),
        );
    }
    Ok(Value::Object(out))
}

async fn fanout(args: &Args) -> Result<Value> {
    let s = setup(
        &args.dir,
        Arc::new(TimedExecutor {
            count: args.fanout_events,
            gap: Duration::from_micros(args.fanout_gap_us),
        }),
        Durability::Process,
        Duration::from_secs(600),
    )?;
    let backend = Backend::new(
        Arc::new(NoSandboxes),
        Limits {
            memory_bytes: 1 << 30,
            pids: 1024,
            cpus: 1.0,
        },
        Arc::new(|_: &str| Ok(Rootfs::HostRoot)),
    );
    let state = AppState::new(backend, Arc::clone(&s.store), s.sessions.clone())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(hangar_server::serve(
        state,
        listener,
        std::future::pending::<()>(),
    ));
    let rec = s.sessions.create(1, "bench/app", "fanout").await?;
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let url = format!(
            "ws://{addr}/api/sessions/{}/ws?after_seq=0&token={}",
            rec.id, s.token
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        clients.push(ws);
    }
    let expected = args.fanout_events;
    let mut tasks = Vec::new();
    for mut ws in clients {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(expected as usize);
            while let Ok(Some(Ok(msg))) =
                tokio::time::timeout(Duration::from_secs(30), ws.next()).await
            {
                let now = since_epoch_ns();
                let Ok(text) = msg.to_text() else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                if v["type"] == "model.delta"
                    && let Some(sent) = v["data"]["text"]
                        .as_str()
                        .and_then(|t| t.parse::<u128>().ok())
                {
                    lat.push((now.saturating_sub(sent)) as f64 / 1e6);
                }
                if v["type"] == "prompt.finished" {
                    break;
                }
            }
            lat
        }));
    }
    let t = Instant::now();
    s.sessions
        .prompt(&rec.id, s.author.clone(), "fan out".into())
        .await?;
    let mut all = Vec::new();
    let mut complete = 0;
    for task in tasks {
        let lat = task.await?;
        if lat.len() as u64 == expected {
            complete += 1;
        }
        all.extend(lat);
    }
    let secs = t.elapsed().as_secs_f64();
    let summary = Summary::of(&all).context("no events received")?;
    eprintln!(
        "fanout: {} clients, p50 {:.3} ms p99 {:.3} ms",
        args.clients, summary.p50, summary.p99
    );
    Ok(json!({
        "clients": args.clients,
        "events": expected,
        "emit_gap_us": args.fanout_gap_us,
        "clients_with_every_event": complete,
        "deliveries_per_s": (all.len() as f64 / secs).round(),
        "emit_to_receipt": summary.to_json(),
    }))
}

async fn hibernated(args: &Args) -> Result<Value> {
    let s = setup(
        &args.dir,
        Arc::new(ScriptedExecutor::default()),
        Durability::Process,
        Duration::from_millis(500),
    )?;
    let rss_before = rss_kib();
    let t = Instant::now();
    let mut ids = Vec::with_capacity(args.hibernated);
    for i in 0..args.hibernated {
        let rec = s.sessions.create(1, "bench/app", &format!("s{i}")).await?;
        // A short history, written as a finished session would have left it.
        let path = args_path(&s, &rec.id);
        let mut log = SessionLog::open(&path, Durability::Process, false)?;
        log.commit(
            &[],
            None,
            (0..20)
                .map(|j| EventBody::ModelDelta {
                    prompt_id: 1,
                    text: format!("event {j} of session {i}"),
                })
                .collect(),
        )?;
        ids.push(rec.id);
    }
    let create_secs = t.elapsed().as_secs_f64();
    let loaded_while_hibernated = s.sessions.loaded();
    let rss_after = rss_kib();
    let disk: u64 = std::fs::read_dir(s._dir.path().join("sessions"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "hibernated: {} sessions in {create_secs:.1} s, {} loaded",
        ids.len(),
        s.sessions.loaded()
    );
    let mut wake = Vec::new();
    let step = (ids.len() / args.wakeups.max(1)).max(1);
    for id in ids.iter().step_by(step).take(args.wakeups) {
        let t = Instant::now();
        let info = s.sessions.info(id).await?;
        wake.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(info.last_seq == 20, "woke with the wrong log");
    }
    let woken = s.sessions.loaded();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let summary = Summary::of(&wake).context("no wake-ups")?;
    eprintln!(
        "wake-up: p50 {:.3} ms p99 {:.3} ms",
        summary.p50, summary.p99
    );
    Ok(json!({
        "sessions": ids.len(),
        "create_per_s": (ids.len() as f64 / create_secs).round(),
        "loaded_while_hibernated": loaded_while_hibernated,
        "rss_kib_before": rss_before,
        "rss_kib_with_all_hibernated": rss_after,
        "disk_bytes_per_session": disk / ids.len().max(1) as u64,
        "wakeup": summary.to_json(),
        "loaded_after_wakeups": woken,
        "loaded_after_idle_unload": s.sessions.loaded(),
    }))
}

fn args_path(s: &Setup, id: &str) -> PathBuf {
    s._dir.path().join("sessions").join(format!("{id}.db"))
}

async fn active(args: &Args) -> Result<Value> {
    let s = setup(
        &args.dir,
        Arc::new(ScriptedExecutor {
            delay: Duration::from_millis(args.active_delay_ms),
        }),
        Durability::Process,
        Duration::from_secs(600),
    )?;
    let rss_before = rss_kib();
    let mut ids = Vec::new();
    for i in 0..args.active {
        ids.push(
            s.sessions
                .create(1, "bench/app", &format!("a{i}"))
                .await?
                .id,
        );
    }
    for id in &ids {
        s.sessions
            .prompt(id, s.author.clone(), "deltas=100000000 tools=0".into())
            .await?;
    }
    let start_seq: u64 = sum_seqs(&s.sessions, &ids).await?;
    let t = Instant::now();
    let mut probe = Vec::new();
    let mut n = 0usize;
    while t.elapsed() < Duration::from_secs(args.active_secs) {
        let id = &ids[n % ids.len()];
        n += 1;
        let q = Instant::now();
        s.sessions.info(id).await?;
        probe.push(q.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let end_seq = sum_seqs(&s.sessions, &ids).await?;
    let rss = rss_kib();
    let running = {
        let mut r = 0;
        for id in &ids {
            if s.sessions.info(id).await?.running.is_some() {
                r += 1;
            }
        }
        r
    };
    for id in &ids {
        s.sessions.stop(id).await?;
    }
    let rate = (end_seq - start_seq) as f64 / secs;
    let summary = Summary::of(&probe).context("no probes")?;
    eprintln!(
        "active: {} sessions, {running} running, {rate:.0} events/s, request p99 {:.3} ms",
        ids.len(),
        summary.p99
    );
    Ok(json!({
        "sessions": ids.len(),
        "running_at_end": running,
        "event_gap_ms_per_session": args.active_delay_ms,
        "ideal_events_per_s": (ids.len() as f64 * 1000.0 / args.active_delay_ms.max(1) as f64).round(),
        "events_per_s": rate.round(),
        "rss_kib_before": rss_before,
        "rss_kib_active": rss,
        "request_latency_while_active": summary.to_json(),
    }))
}

async fn sum_seqs(sessions: &Sessions, ids: &[String]) -> Result<u64> {
    let mut total = 0;
    for id in ids {
        total += sessions.info(id).await?.last_seq;
    }
    Ok(total)
}

fn main() -> Result<()> {
    let args = Args::parse();
    EPOCH.get_or_init(Instant::now);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut out = serde_json::Map::new();
        out.insert("dir".into(), json!(args.dir));
        out.insert(
            "cpus".into(),
            json!(
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            ),
        );
        for part in &args.run {
            let t = Instant::now();
            let v = match part.as_str() {
                "appends" => appends(&args).await?,
                "fanout" => fanout(&args).await?,
                "hibernated" => hibernated(&args).await?,
                "active" => active(&args).await?,
                other => anyhow::bail!("unknown part {other:?}"),
            };
            eprintln!("{part}: {:.1} s", t.elapsed().as_secs_f64());
            out.insert(part.clone(), v);
        }
        println!("{}", serde_json::to_string_pretty(&Value::Object(out))?);
        Ok(())
    })
}
