//! `hangar repo`: the server's repository registry (`/api/repos`).

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::session_cmd::{Client, Remote};

#[derive(Subcommand)]
pub enum RepoCommand {
    /// Register a repository sessions can work on.
    Add {
        /// Its name, owner/name.
        name: String,
        /// Where it is cloned from: https://, ssh://, file:// or a path on the server
        /// (no credentials in it).
        url: String,
        /// The branch sessions start from.
        #[arg(long, default_value = "main")]
        branch: String,
        /// What it is (helps people and the classifier pick it).
        #[arg(long, default_value = "")]
        description: String,
        /// A word or channel that points at it; repeatable.
        #[arg(long = "hint", value_name = "HINT")]
        hints: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List registered repositories.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one repository (with its registered recipe).
    Show {
        /// owner/name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a repository from the registry.
    Rm {
        /// owner/name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Register the recipe builds use for the repository (instead of its own
    /// hangar.toml), or remove it with --clear.
    Recipe {
        /// owner/name.
        name: String,
        /// The recipe file (TOML).
        #[arg(required_unless_present = "clear")]
        file: Option<std::path::PathBuf>,
        /// Remove the registered recipe.
        #[arg(long, conflicts_with = "file")]
        clear: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

pub async fn run(cmd: RepoCommand) -> anyhow::Result<std::process::ExitCode> {
    match cmd {
        RepoCommand::Add {
            name,
            url,
            branch,
            description,
            hints,
            json,
            remote,
        } => {
            let client = Client::new(&remote)?;
            let body = json!({"name": name, "url": url, "default_branch": branch,
                              "description": description, "hints": hints});
            let repo = client
                .call(reqwest::Method::POST, "/api/repos", Some(body))
                .await?;
            if json {
                println!("{repo}");
            } else {
                println!("registered {}", describe(&repo));
            }
        }
        RepoCommand::Ls { json, remote } => {
            let client = Client::new(&remote)?;
            let repos = client
                .call(reqwest::Method::GET, "/api/repos", None)
                .await?;
            if json {
                println!("{repos}");
            } else {
                let list = repos.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!(
                        "no repositories registered: add one with `hangar repo add OWNER/NAME URL`"
                    );
                }
                for r in &list {
                    println!("{}", describe(r));
                }
            }
        }
        RepoCommand::Show { name, json, remote } => {
            let client = Client::new(&remote)?;
            let repo = client
                .call(reqwest::Method::GET, &path_of(&name)?, None)
                .await?;
            if json {
                println!("{repo}");
            } else {
                println!("{}", describe(&repo));
                if let Some(d) = repo["description"].as_str().filter(|d| !d.is_empty()) {
                    println!("  {d}");
                }
                if let Some(h) = repo["hints"].as_array().filter(|h| !h.is_empty()) {
                    let hints: Vec<&str> = h.iter().filter_map(Value::as_str).collect();
                    println!("  hints: {}", hints.join(", "));
                }
                match repo["recipe"].as_str() {
                    Some(r) => println!("  registered recipe:\n{r}"),
                    None => println!("  recipe: the repository's own hangar.toml"),
                }
            }
        }
        RepoCommand::Rm { name, remote } => {
            let client = Client::new(&remote)?;
            client
                .call(reqwest::Method::DELETE, &path_of(&name)?, None)
                .await?;
            println!("removed {name}");
        }
        RepoCommand::Recipe {
            name,
            file,
            clear,
            remote,
        } => {
            let client = Client::new(&remote)?;
            let path = format!("{}/recipe", path_of(&name)?);
            match (file, clear) {
                (Some(file), false) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    let req = client
                        .request(reqwest::Method::PUT, &path)
                        .header(reqwest::header::CONTENT_TYPE, "application/toml")
                        .body(text);
                    client.send(req).await?;
                    println!("registered the recipe of {name}");
                }
                _ => {
                    client.call(reqwest::Method::DELETE, &path, None).await?;
                    println!("{name} builds from its own hangar.toml again");
                }
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The API path of a repository, refusing names that are not owner/name before any
/// request is made.
fn path_of(name: &str) -> anyhow::Result<String> {
    hangar_store::check_repo_name(name)?;
    Ok(format!("/api/repos/{name}"))
}

fn describe(r: &Value) -> String {
    format!(
        "{}  {}  (branch {})",
        r["name"].as_str().unwrap_or("?"),
        r["url"].as_str().unwrap_or("?"),
        r["default_branch"].as_str().unwrap_or("?"),
    )
}
