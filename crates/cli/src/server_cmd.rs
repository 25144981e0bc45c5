//! `hangar up` / `hangar serve`: the server on this machine with the local sandbox backend.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hangar_config::Config;
use hangar_sandbox::LocalRuntime;
use hangar_server::{AppState, Backend};
use hangar_session::{Durability, ScriptedExecutor, Sessions, SessionsConfig};
use hangar_store::Store;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:7070 (port 0 picks a free port); overrides
    /// HANGAR_LISTEN and the config file.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

pub async fn run(args: ServeArgs, config: &Config) -> anyhow::Result<()> {
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
    let sessions = open_sessions(config, Arc::clone(&store))?;
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
    let state =
        AppState::new(Backend::local(runtime), store, sessions).context("setting up metrics")?;
    println!("hangar listening on {url}");
    hangar_server::serve(state, listener, shutdown_signal())
        .await
        .context("serving HTTP")?;
    eprintln!("hangar: stopped (sandboxes keep running; the next start adopts them)");
    Ok(())
}

/// The session service, driven by the scripted stand-in agent until the agent runtime
/// lands.
fn open_sessions(config: &Config, store: Arc<Store>) -> anyhow::Result<Sessions> {
    let settings = &config.sessions;
    let mut sessions_config = SessionsConfig::new(config.data_dir.join("sessions"));
    sessions_config.idle_unload = Duration::from_millis(settings.idle_unload_ms);
    sessions_config.live_buffer = settings.live_buffer;
    sessions_config.durability = match settings.durability.as_str() {
        "full" => Durability::Full,
        _ => Durability::Process,
    };
    let executor = Arc::new(ScriptedExecutor {
        delay: Duration::from_millis(settings.scripted_delay_ms),
    });
    Ok(Sessions::new(sessions_config, store, executor)?)
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
