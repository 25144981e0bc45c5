//! `hangar login`: checks a token against a server and keeps both for the client commands
//! in `$XDG_CONFIG_HOME/hangar/credentials.toml` (else `~/.config/hangar/...`), mode 0600.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

#[derive(Args)]
pub struct LoginArgs {
    /// The server's URL.
    #[arg(long, env = "HANGAR_SERVER", default_value = "http://127.0.0.1:7070")]
    server: String,
    /// An API token (`hgr_...`), as printed by the server's first start.
    #[arg(long, env = "HANGAR_TOKEN", hide_env_values = true)]
    token: String,
}

/// What `hangar login` stores.
#[derive(Debug, Serialize, Deserialize)]
pub struct Credentials {
    /// The server's URL.
    pub server: String,
    /// The API token.
    pub token: String,
}

/// Where credentials live: `$XDG_CONFIG_HOME/hangar/credentials.toml`, else
/// `$HOME/.config/hangar/credentials.toml`.
pub fn credentials_path() -> anyhow::Result<PathBuf> {
    let var = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = match (var("XDG_CONFIG_HOME"), var("HOME")) {
        (Some(x), _) if x.is_absolute() => x,
        (_, Some(home)) => home.join(".config"),
        _ => bail!("cannot tell where to keep credentials: set HOME or XDG_CONFIG_HOME"),
    };
    Ok(base.join("hangar").join("credentials.toml"))
}

pub async fn run(args: LoginArgs) -> anyhow::Result<()> {
    let server = args.server.trim_end_matches('/').to_string();
    let token = args.token.trim().to_string();
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()
        .context("setting up the HTTP client")?;
    let resp = client
        .get(format!("{server}/api/me"))
        .bearer_auth(&token)
        .send()
        .await
        .map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                anyhow::anyhow!(
                    "cannot reach the Hangar server at {server}: is it running? (start one with `hangar up`)"
                )
            } else if e.is_builder() {
                anyhow::anyhow!("{server} is not a usable server URL (e.g. http://127.0.0.1:7070)")
            } else {
                anyhow::anyhow!("talking to {server}: {e}")
            }
        })?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    if status == reqwest::StatusCode::UNAUTHORIZED {
        bail!("the server at {server} refused the token: it is invalid or revoked");
    }
    if !status.is_success() {
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| "not a Hangar server?".into());
        bail!("the server at {server} answered {status}: {message}");
    }
    let Some(login) = body["login"].as_str() else {
        bail!("the server at {server} did not answer like a Hangar server");
    };
    let path = credentials_path()?;
    write_private(
        &path,
        &toml::to_string(&Credentials {
            server: server.clone(),
            token,
        })
        .context("encoding credentials")?,
    )?;
    println!(
        "Logged in to {server} as {login}; credentials saved in {}",
        path.display()
    );
    Ok(())
}

/// Writes `text` to `path` atomically (a temporary file renamed over it), readable by the
/// owner only from the first byte on.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().context("credentials path has no directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".credentials.toml.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}
