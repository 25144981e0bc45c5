//! `hangar up` / `hangar serve`: the server on this machine with the local sandbox backend.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hangar_agent::{Provider, ProviderConfig, ProviderKind};
use hangar_config::{Config, ModelSettings};
use hangar_runner::{AgentExecutor, NoModel};
use hangar_sandbox::{LocalRuntime, Network, Rootfs, SandboxSpec};
use hangar_server::{AppState, Backend};
use hangar_session::{Durability, Executor, ScriptedExecutor, Sessions, SessionsConfig};
use hangar_slack::{
    BotConfig, Classifier, FixedRepos, RegistryRepos, SlackBot, SlackClient, SlackState,
};
use hangar_store::Store;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:7070 (port 0 picks a free port); overrides
    /// HANGAR_LISTEN and the config file.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

pub async fn run(args: ServeArgs, config: &Config) -> anyhow::Result<()> {
    // Settings that can be wrong are checked before anything is created.
    let credentials = git_credentials(config)?;
    if let Some(github) = &config.github {
        github.check()?;
    }
    let runtime = LocalRuntime::open(config)?;
    let recovery = runtime
        .recover()
        .context("recovering sandboxes left by an earlier run")?;
    for (what, ids) in [
        ("adopted running", &recovery.adopted),
        ("removed half-created", &recovery.reaped),
        ("marked dead", &recovery.dead),
    ] {
        if !ids.is_empty() {
            tracing::info!("{what} sandboxes: {}", ids.join(", "));
            eprintln!(
                "hangar: {what} {} sandbox(es) from an earlier run: {}",
                ids.len(),
                ids.join(", ")
            );
        }
    }

    let db = config.data_dir.join("index.db");
    let store = Store::open(&db)?;
    let listen = args.listen.as_deref().unwrap_or(&config.listen);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    let url = format!("http://{addr}");

    if let Some((admin, token)) = store.ensure_admin()? {
        println!(
            "Created the first user, {login}. Its API token is shown only this once:\n  {token}\nLog in with:\n  hangar login --server {url} --token {token}",
            login = admin.login,
            token = token.expose(),
        );
    }
    let store = Arc::new(store);
    let github = match &config.github {
        Some(settings) => Some(Arc::new(
            hangar_github::GitHub::from_settings(settings, &config.data_dir, Arc::clone(&store))
                .context("setting up GitHub ([github] in the configuration)")?,
        )),
        None => None,
    };
    let credentials: Arc<dyn hangar_images::Credentials> = Arc::new(GitCredentials {
        configured: credentials,
        github: github.as_ref().and_then(|g| g.app().cloned()),
    });
    let images = hangar_images::Store::open(&config.data_dir)?;
    let limits = runtime.default_limits();
    let specs: hangar_runner::SpecForRepo = {
        let (store, images) = (Arc::clone(&store), images.clone());
        Arc::new(move |repo: &str| {
            let image = current_image(&store, &images, repo)?;
            image_spec(&images, &image, limits)
        })
    };
    let repo_plugins: hangar_runner::PluginsForRepo = {
        let (store, images) = (Arc::clone(&store), images.clone());
        Arc::new(move |repo: &str| {
            current_image(&store, &images, repo)
                .and_then(|image| image.meta.recipe)
                .and_then(|text| hangar_images::Recipe::parse(&text, None).ok())
                .map(|recipe| recipe.plugins)
                .unwrap_or_default()
        })
    };
    let worktrees = Arc::new(
        hangar_runner::Worktrees::new(
            Arc::clone(&store),
            config.data_dir.join("git"),
            credentials.clone(),
            config.sessions.workdir.clone(),
        )
        .with_freshness(Duration::from_millis(config.pool.base_fresh_for_ms)),
    );
    let (sessions, pool) = open_sessions(
        config,
        Arc::clone(&store),
        worktrees.clone(),
        specs,
        repo_plugins,
    )
    .await?;
    let builder = Arc::new(
        hangar_images::Builder::new(
            Arc::new(LocalRuntime::open(config)?),
            images.clone(),
            config.clone(),
        )
        .with_credentials(credentials),
    );
    let on_image: hangar_server::builds::OnImage = {
        let (pool, images) = (pool.clone(), images.clone());
        Arc::new(move |repo: &str, image: &hangar_images::ImageInfo| {
            let (Some(pool), Some(spec)) = (pool.clone(), image_spec(&images, image, limits))
            else {
                return;
            };
            let repo = repo.to_string();
            tokio::spawn(async move { pool.set_image(&repo, spec).await });
        })
    };
    let builds = Arc::new(hangar_server::builds::Builds::new(builder, on_image));
    if config.images.rebuild_every_s > 0 {
        let every = Duration::from_secs(config.images.rebuild_every_s);
        tokio::spawn(Arc::clone(&builds).run_schedule(Arc::clone(&store), every));
    }
    if config.images.gc_every_s > 0 {
        let every = Duration::from_secs(config.images.gc_every_s);
        let gc_runtime = LocalRuntime::open(config)?;
        tokio::spawn(collect_garbage_every(every, images.clone(), gc_runtime));
    }
    let interrupted = sessions
        .recover()
        .await
        .context("recovering sessions left running by an earlier run")?;
    if !interrupted.is_empty() {
        eprintln!(
            "hangar: marked {} session(s) interrupted by the last stop: {}",
            interrupted.len(),
            interrupted.join(", ")
        );
    }
    let sessions_for_slack = sessions.clone();
    let envs = open_environments(config, Arc::clone(&store))?;
    let state = AppState::new(Backend::local(runtime), Arc::clone(&store), sessions)
        .context("setting up metrics")?
        .with_builds(builds)
        .with_git(worktrees)
        .with_envs(envs);
    let state = match pool {
        Some(pool) => state.with_pool(pool),
        None => state,
    };
    let state = match github {
        Some(github) => state.with_github(github),
        None => state,
    };
    let state = match open_slack(config, &sessions_for_slack, &url)? {
        Some(bot) => {
            bot.resume(&interrupted).await;
            state.with_slack(bot)
        }
        None => state,
    };
    println!("hangar listening on {url}");
    if hangar_server::web_ui_embedded() {
        println!("Open {url} in a browser and sign in with an API token.");
    } else {
        eprintln!(
            "hangar: this build has no web UI (build it with `cd web && npm ci && npm run build`, then rebuild hangar); the API is served"
        );
    }
    hangar_server::serve(state, listener, shutdown_signal())
        .await
        .context("serving HTTP")?;
    eprintln!("hangar: stopped (sandboxes keep running; the next start adopts them)");
    Ok(())
}

/// Removes what no image and no sandbox uses (released snapshots, removed images) every
/// `every`, the first time one period after start.
async fn collect_garbage_every(
    every: Duration,
    images: hangar_images::Store,
    runtime: LocalRuntime,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match hangar_images::collect_garbage(&images, &runtime).await {
            Ok(r) if r.blobs_removed + r.layers_removed + r.cache_entries_removed > 0 => {
                tracing::info!(
                    blobs = r.blobs_removed,
                    bytes = r.bytes_freed,
                    layers = r.layers_removed,
                    cache_entries = r.cache_entries_removed,
                    "image store garbage collected"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("image store garbage collection: {e}"),
        }
    }
}

/// Environments: sandboxes from images of this machine's layer store.
fn open_environments(
    config: &Config,
    index: Arc<Store>,
) -> anyhow::Result<hangar_envs::Environments> {
    let images = hangar_images::Store::open(&config.data_dir).context("opening the image store")?;
    let runtime = Arc::new(LocalRuntime::open(config)?);
    let builder = hangar_images::Builder::new(runtime.clone(), images, config.clone());
    Ok(hangar_envs::Environments::new(
        runtime,
        Arc::new(builder),
        index,
    ))
}

/// The session service, its prompts answered by the agent with the configured model (or,
/// when `sessions.executor = "scripted"`, by the stand-in used to test the machinery).
async fn open_sessions(
    config: &Config,
    store: Arc<Store>,
    worktrees: Arc<hangar_runner::Worktrees>,
    specs: hangar_runner::SpecForRepo,
    repo_plugins: hangar_runner::PluginsForRepo,
) -> anyhow::Result<(Sessions, Option<hangar_pool::Pool>)> {
    // Warm-pool sandboxes indexed before this are the previous process's.
    let started_at_ms = hangar_store::now_ms();
    let settings = &config.sessions;
    let mut sessions_config = SessionsConfig::new(config.data_dir.join("sessions"));
    sessions_config.idle_unload = Duration::from_millis(settings.idle_unload_ms);
    sessions_config.live_buffer = settings.live_buffer;
    sessions_config.durability = match settings.durability.as_str() {
        "full" => Durability::Full,
        _ => Durability::Process,
    };
    let mut agent = None;
    let mut warm_pool = None;
    let executor: Arc<dyn Executor> = match (settings.executor.as_str(), &config.model) {
        ("scripted", _) => Arc::new(ScriptedExecutor {
            delay: Duration::from_millis(settings.scripted_delay_ms),
        }),
        (_, Some(model)) => {
            let provider = provider(model, 4)?;
            let local = LocalRuntime::open(config)?;
            let spec = SandboxSpec {
                rootfs: Rootfs::HostRoot,
                limits: local.default_limits(),
                network: Network::None,
            };
            let local: Arc<dyn hangar_sandbox::Runtime> = Arc::new(local);
            let runtime: Arc<dyn hangar_sandbox::Runtime> = Arc::new(
                hangar_runner::IndexedRuntime::new(local.clone(), store.clone(), "session"),
            );
            let pool = hangar_pool::Pool::new(
                Arc::new(hangar_runner::IndexedRuntime::new(
                    local,
                    store.clone(),
                    "pool",
                )),
                Arc::new(hangar_runner::GitSyncer {
                    worktrees: worktrees.clone(),
                    runtime: runtime.clone(),
                }),
                hangar_pool::PoolConfig {
                    min: config.pool.min,
                    max: config.pool.max,
                    reservation_timeout: Duration::from_millis(config.pool.reservation_timeout_ms),
                    state_file: Some(config.data_dir.join("pool.state")),
                    refresh_every: Duration::from_millis(config.pool.refresh_every_ms),
                    refill_delay: Duration::from_millis(config.pool.refill_delay_ms),
                    ..Default::default()
                },
            );
            let executor = AgentExecutor::new(runtime, provider, spec, settings.workdir.clone())
                .with_limits(model.max_tokens, model.context_limit);
            executor.persist_conversations(config.data_dir.join("sessions"));
            executor.use_pool(pool.clone());
            executor.use_git(worktrees);
            executor.use_images(specs);
            executor.use_repo_plugins(repo_plugins);
            executor.use_snapshots(hangar_images::Snapshots::new(
                Arc::new(LocalRuntime::open(config)?),
                hangar_images::Store::open(&config.data_dir).context("opening the image store")?,
                config.clone(),
            ));
            warm_pool = Some(pool);
            executor.use_plugins(start_plugins(config).await?);
            agent = Some(executor.clone());
            Arc::new(executor)
        }
        (_, None) => {
            eprintln!("hangar: no [model] configured: prompts will fail until one is (see README)");
            Arc::new(NoModel)
        }
    };
    let sessions = Sessions::new(sessions_config, store, executor)?;
    if let Some(agent) = agent {
        agent.enable_sub_sessions(sessions.clone());
        match agent.readopt_sandboxes(started_at_ms).await {
            Ok(adopted) if !adopted.is_empty() => {
                let sessions: Vec<&str> = adopted.iter().map(|(s, _)| s.as_str()).collect();
                eprintln!(
                    "hangar: {} session(s) continue in their running sandboxes: {}",
                    adopted.len(),
                    sessions.join(", ")
                );
            }
            Ok(_) => {}
            Err(e) => eprintln!("hangar: could not take the sessions' sandboxes back: {e}"),
        }
    }
    Ok((sessions, warm_pool))
}

/// A provider for the configured model, retrying failures before anything streamed
/// `retries` times.
fn provider(model: &ModelSettings, retries: u32) -> anyhow::Result<Provider> {
    let kind = match model.provider.as_str() {
        "openai" => ProviderKind::OpenAi,
        _ => ProviderKind::Anthropic,
    };
    Ok(Provider::new(ProviderConfig {
        kind,
        base_url: model.base_url.clone(),
        model: model.model.clone(),
        api_key: model.api_key()?,
        max_retries: retries,
        initial_backoff: Duration::from_millis(500),
    })?)
}

/// The Slack bot, when `[slack]` is configured: its secrets, the Web API client, the
/// classifier (`[slack.classifier]`, else `[model]`), its state file and repositories.
fn open_slack(config: &Config, sessions: &Sessions, url: &str) -> anyhow::Result<Option<SlackBot>> {
    let Some(s) = &config.slack else {
        return Ok(None);
    };
    let client = SlackClient::new(&s.api_base_url, s.bot_token()?)?;
    let classifier_model = s.classifier.as_ref().or(config.model.as_ref());
    let model = classifier_model.map(|m| provider(m, 2)).transpose()?;
    if model.is_none() {
        eprintln!(
            "hangar: no [slack.classifier] or [model]: Slack requests that do not name a repository ask which one"
        );
    }
    let state_file = config.data_dir.join("slack.db");
    let state = SlackState::open(&state_file)
        .with_context(|| format!("opening {}", state_file.display()))?;
    let bot = SlackBot::new(
        BotConfig {
            team_ids: s.team_ids.clone(),
            signing_secret: s.signing_secret()?,
            public_url: s.public_url.clone().unwrap_or_else(|| url.to_string()),
            update_interval: Duration::from_millis(s.update_interval_ms),
            follow_idle: Duration::from_secs(30 * 60),
        },
        client,
        Classifier::new(model, s.min_confidence),
        Arc::new(RegistryRepos::new(
            sessions.store().clone(),
            FixedRepos::from(&s.repos[..]),
        )),
        state,
        sessions.clone(),
    );
    tracing::info!(teams = ?s.team_ids, "Slack app enabled at /slack/events, /slack/commands, /slack/interactivity");
    Ok(Some(bot))
}

/// The current image of a registered repository, if it has one.
fn current_image(
    store: &Store,
    images: &hangar_images::Store,
    repo: &str,
) -> Option<hangar_images::ImageInfo> {
    let url = hangar_images::git::normalize_repo(&store.repo(repo).ok()?.url).ok()?;
    images.current(&url).ok()?
}

/// The spec of a session sandbox started from `image`: its layers (over the host's root
/// for host-based images), the session network the recipe asked for.
fn image_spec(
    images: &hangar_images::Store,
    image: &hangar_images::ImageInfo,
    limits: hangar_sandbox::Limits,
) -> Option<SandboxSpec> {
    let rootfs = match hangar_images::rootfs(images, image) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(image = %image.id, "cannot use the image: {e}");
            return None;
        }
    };
    let network = match image.meta.session_network.as_deref() {
        Some("egress") => Network::Egress,
        _ => Network::None,
    };
    Some(SandboxSpec {
        rootfs,
        limits,
        network,
    })
}

/// The credentials for git remotes from `[[git.credentials]]`, each checked now so a
/// missing token file stops the start with its name rather than failing a session later.
pub fn git_credentials(config: &Config) -> anyhow::Result<Arc<dyn hangar_images::Credentials>> {
    let configured = hangar_images::ConfiguredCredentials(config.git.credentials.clone());
    configured.check().map_err(anyhow::Error::msg)?;
    Ok(Arc::new(configured))
}

/// git's credentials: `[[git.credentials]]` first (an explicit setting wins), then the
/// GitHub App's installation token for repositories on GitHub.
struct GitCredentials {
    configured: Arc<dyn hangar_images::Credentials>,
    github: Option<Arc<hangar_github::GitHubApp>>,
}

impl hangar_images::Credentials for GitCredentials {
    fn credential(&self, url: &str) -> Result<Option<hangar_images::git::GitCredential>, String> {
        if let Some(c) = self.configured.credential(url)? {
            return Ok(Some(c));
        }
        match &self.github {
            Some(app) => app.credential(url),
            None => Ok(None),
        }
    }
}

/// Starts the external plugins configured, failing clearly if one cannot start.
async fn start_plugins(config: &Config) -> anyhow::Result<Vec<Arc<dyn hangar_agent::Plugin>>> {
    let mut out: Vec<Arc<dyn hangar_agent::Plugin>> = Vec::new();
    for p in &config.plugins {
        let (program, args) = p
            .command
            .split_first()
            .context("a plugin needs a command")?;
        let plugin = hangar_agent::external::ProcessPlugin::start(
            program.into(),
            args,
            Duration::from_millis(p.timeout_ms),
        )
        .await?;
        tracing::info!(
            plugin = hangar_agent::Plugin::name(&plugin),
            "plugin started"
        );
        out.push(Arc::new(plugin));
    }
    Ok(out)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still dies on the default action.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
