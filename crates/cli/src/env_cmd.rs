//! `hangar env create|ls|rm`: environments, shared sandboxes without an agent, on a server
//! (the same `--server`/`--token` as the session commands). `env create` prints one JSON
//! document, `{"status": "success", "id", "name", "python", "url", "share_url", ...}` (the
//! share URL carries a token that opens this environment without an API token) or
//! `{"status": "error", "message"}` with a non-zero exit.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::session_cmd::{Client, Remote};

/// How long `env create` waits: the first use of a Debian suite builds its rootfs.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Subcommand)]
pub enum EnvCommand {
    /// Create an environment: a sandbox with the Python asked for (3.9: Debian bullseye,
    /// 3.11: bookworm) and, with --repo, the repository at /workspace. Prints JSON.
    Create {
        /// A unique name.
        #[arg(long)]
        name: String,
        /// The Python version (3.9 or 3.11; default 3.11).
        #[arg(long)]
        python: Option<String>,
        /// A repository to check out (a server path, file:// or https:// URL).
        #[arg(long)]
        repo: Option<String>,
        /// Accepted for symmetry with other commands: the output is always JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List environments, newest first.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove an environment (its sandbox and terminals go with it).
    Rm {
        /// Its name or id.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Runs an env subcommand.
pub async fn run(cmd: EnvCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EnvCommand::Create {
            name,
            python,
            repo,
            json: _,
            remote,
        } => Ok(create(&remote, name, python, repo).await),
        EnvCommand::Ls { json, remote } => {
            let client = Client::new(&remote)?;
            let list = client
                .call(reqwest::Method::GET, "/api/environments", None)
                .await?;
            if json {
                println!("{list}");
            } else if list.as_array().is_some_and(|l| l.is_empty()) {
                println!(
                    "no environments; create one with `hangar env create --name NAME --python 3.9`"
                );
            } else {
                println!(
                    "{:<20} {:<8} {:<10} {:<8} REPO",
                    "NAME", "PYTHON", "SUITE", "STATUS"
                );
                for e in list.as_array().into_iter().flatten() {
                    println!(
                        "{:<20} {:<8} {:<10} {:<8} {}",
                        e["name"].as_str().unwrap_or(""),
                        e["python"].as_str().unwrap_or(""),
                        e["suite"].as_str().unwrap_or(""),
                        e["status"].as_str().unwrap_or(""),
                        e["repo"].as_str().unwrap_or("-"),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        EnvCommand::Rm { name, remote } => {
            let client = Client::new(&remote)?;
            let path = format!("/api/environments/{}", urlencode(&name));
            client.call(reqwest::Method::DELETE, &path, None).await?;
            eprintln!("removed environment {name}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Creates the environment and prints the JSON answer either way.
async fn create(
    remote: &Remote,
    name: String,
    python: Option<String>,
    repo: Option<String>,
) -> ExitCode {
    let result = async {
        let client = Client::new(remote)?;
        let mut body = json!({"name": name});
        if let Some(p) = python {
            body["python"] = json!(p);
        }
        if let Some(r) = repo {
            body["repo"] = json!(r);
        }
        let req = client
            .request(reqwest::Method::POST, "/api/environments")
            .json(&body)
            .timeout(CREATE_TIMEOUT);
        let env = client.send(req).await?;
        anyhow::Ok(success(&client.server, &env))
    }
    .await;
    match result {
        Ok(doc) => {
            println!("{doc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let message = crate::one_line(&e);
            println!("{}", json!({"status": "error", "message": message}));
            eprintln!("hangar: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The success document for an environment as the server shows it.
fn success(server: &str, env: &Value) -> Value {
    let url = format!("{server}{}", env["path"].as_str().unwrap_or(""));
    let share_url = env["share_path"]
        .as_str()
        .map(|p| format!("{server}{p}"))
        .unwrap_or_else(|| url.clone());
    json!({
        "status": "success",
        "id": env["id"],
        "name": env["name"],
        "python": env["python"],
        "suite": env["suite"],
        "repo": env["repo"],
        "sandbox": env["sandbox"],
        "url": url,
        "share_url": share_url,
    })
}

/// Percent-encodes a path segment.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_names_the_environment_and_its_page() {
        let env = json!({"id": "env-1", "name": "collab-py", "python": "3.9.2", "suite": "bullseye",
            "repo": null, "sandbox": "sb-1", "path": "/envs/env-1", "share_path": "/envs/env-1#share=hgs_1"});
        let doc = success("http://h:7070", &env);
        assert_eq!(doc["status"], "success");
        assert_eq!(doc["python"], "3.9.2");
        assert_eq!(doc["url"], "http://h:7070/envs/env-1");
        assert_eq!(doc["share_url"], "http://h:7070/envs/env-1#share=hgs_1");
    }

    #[test]
    fn names_are_encoded_in_paths() {
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
    }
}
