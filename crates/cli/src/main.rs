//! `hangar`: the one command people and scripts use. It parses arguments, loads the
//! configuration and hands off to the library crates; errors become one line on stderr
//! and a non-zero exit.

mod sandbox_cmd;

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
    /// Create, use and remove sandboxes on this machine.
    #[command(subcommand)]
    Sandbox(sandbox_cmd::SandboxCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HANGAR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
        let env = hangar_config::Env::from_process();
        let config = hangar_config::Config::load(&env, cli.data_dir.as_deref())?;
        match cli.command {
            Command::Sandbox(cmd) => sandbox_cmd::run(cmd, &config).await,
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
