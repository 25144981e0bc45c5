//! `hangar`: the one command people and scripts use. It parses arguments, loads the
//! configuration and hands off to the library crates; errors become one line on stderr
//! and a non-zero exit.

mod image_cmd;
mod login_cmd;
mod repo_cmd;
mod sandbox_cmd;
mod server_cmd;
mod session_cmd;
mod user_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hangar",
    version,
    about = "Self-hosted background coding agents and sandboxes"
)]
struct Cli {
    /// State directory (databases, layers, sandboxes); overrides HANGAR_DATA_DIR and the
    /// config file.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start Hangar on this machine: the HTTP API with the local sandbox backend. Prints
    /// the URL (and, on first start, the admin's token and how to log in). The web UI is not
    /// built yet, so this serves the API only, exactly like `serve`.
    Up(server_cmd::ServeArgs),
    /// The same as `up`, headless: the HTTP API only. Stops cleanly on SIGINT or SIGTERM;
    /// sandboxes keep running and are adopted by the next start.
    Serve(server_cmd::ServeArgs),
    /// Check an API token against a server and save both for the client commands.
    Login(login_cmd::LoginArgs),
    /// Create, use and remove sandboxes on this machine.
    #[command(subcommand)]
    Sandbox(sandbox_cmd::SandboxCommand),
    /// Build, list, export and import images (this machine's layer store).
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
    /// Add and list users on this machine's server (its data directory).
    #[command(subcommand)]
    User(user_cmd::UserCommand),
    /// Register and list the repositories sessions work on (on a server).
    #[command(subcommand)]
    Repo(repo_cmd::RepoCommand),
    #[command(flatten)]
    Session(session_cmd::SessionCommand),
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`hangar … | head`) instead of failing on the write.
    // SAFETY: setting a signal's disposition to the default has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    // The server logs its own work (recovery, sandboxes created and destroyed); client
    // commands stay quiet unless HANGAR_LOG asks otherwise.
    let default_filter = match cli.command {
        Command::Up(_) | Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HANGAR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hangar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        if let Command::Login(args) = cli.command {
            login_cmd::run(args).await?;
            return Ok(ExitCode::SUCCESS);
        }
        if let Command::Session(cmd) = cli.command {
            return session_cmd::run(cmd).await;
        }
        if let Command::Repo(cmd) = cli.command {
            return repo_cmd::run(cmd).await;
        }
        let env = hangar_config::Env::from_process();
        let config = hangar_config::Config::load(&env, cli.data_dir.as_deref())?;
        match cli.command {
            Command::Up(args) | Command::Serve(args) => {
                server_cmd::run(args, &config).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Login(_) | Command::Session(_) | Command::Repo(_) => Ok(ExitCode::SUCCESS),
            Command::Sandbox(cmd) => sandbox_cmd::run(cmd, &config).await,
            Command::Image(cmd) => image_cmd::run(cmd, &config).await,
            Command::User(cmd) => user_cmd::run(cmd, &config).map(|()| ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hangar: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, without repeating a cause already in the message.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out.replace('\n', " ")
}
