//! Hangar's configuration: one typed struct with defaults, read from one TOML file, then
//! overridden by environment variables. Nothing else in Hangar reads the environment for
//! settings; it receives a [`Config`].
//!
//! Where the file is: `$HANGAR_CONFIG` if set, else `<data dir>/hangar.toml` if it exists.
//! Environment overrides: `HANGAR_DATA_DIR`, `HANGAR_LISTEN`.
//!
//! ```toml
//! data_dir = "/var/lib/hangar"     # state, layers, sandboxes (put it on a fast filesystem)
//! listen = "127.0.0.1:7070"
//!
//! [sandbox]
//! uid_base = 1000000000            # sandbox uid 0 is this host uid; never host root
//! uid_count = 65536
//! memory = "2GiB"                  # default limits for a sandbox
//! pids = 1024
//! cpus = 2.0
//! hidden_host_paths = ["/root", "/home"]   # hidden when the host root is the rootfs
//!
//! [sessions]
//! idle_unload_ms = 300000          # hibernate a session after this long without activity
//! durability = "process"           # "process": commits survive kill -9; "full": fsync each
//! live_buffer = 1024               # live events buffered per session before a client resyncs
//! scripted_delay_ms = 20           # pause between the stand-in agent's events
//!
//! [storage]
//! mode = "auto"                    # "loop": layers, sandboxes, mirrors on an ext4 image in
//! size = "64GiB"                   #   the data dir (sparse); "direct": on its filesystem
//!
//! [images]
//! rebuild_every_s = 1800           # rebuild registered repositories whose branch moved (0: off)
//! gc_every_s = 3600                # remove layers no image or sandbox uses (0: only `hangar image gc`)
//!
//! [[git.credentials]]              # for clone, fetch and push; never enters a sandbox
//! url_prefix = "https://git.example.com/acme/"
//! username = "x-access-token"
//! password_env = "ACME_GIT_TOKEN"  # or password_file = "/etc/hangar/git.token"
//!
//! [github]                         # optional; see docs/github.md
//! api_url = "https://api.github.com"
//! web_url = "https://github.com"
//! app_id = 123456
//! private_key_file = "/etc/hangar/github-app.pem"
//! client_id = "Iv1.0123456789abcdef"
//! client_secret_env = "HANGAR_GITHUB_CLIENT_SECRET"   # or client_secret_file
//! callback_url = "https://hangar.example.com/auth/github/callback"
//! webhook_secret_env = "HANGAR_GITHUB_WEBHOOK_SECRET" # or webhook_secret_file
//! review_comment_prompts = ["acme/app"]   # review comments become follow-up prompts
//! token_refresh_margin_secs = 300
//!
//! [slack]                          # the Slack app (docs/slack.md)
//! bot_token_env = "SLACK_BOT_TOKEN"            # or bot_token_file
//! signing_secret_env = "SLACK_SIGNING_SECRET"  # or signing_secret_file
//! team_ids = ["T012AB3C4"]         # workspaces served; others are ignored
//! public_url = "https://hangar.example.com"    # for links to sessions
//! min_confidence = 0.7             # below this the person chooses the repository
//! [slack.classifier]               # a fast model, like [model]; [model] when absent
//! provider = "anthropic"
//! base_url = "https://api.anthropic.com"
//! model = "claude-haiku-4-5"
//! api_key_env = "ANTHROPIC_API_KEY"
//! [[slack.repos]]
//! name = "acme/app"
//! description = "The customer web app"
//! keywords = ["checkout", "frontend"]
//! channels = ["app-dev"]
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything configurable, with defaults.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where Hangar keeps its state: databases, layers, sandboxes.
    pub data_dir: PathBuf,
    /// Address the server listens on.
    pub listen: String,
    /// Sandbox defaults.
    pub sandbox: SandboxConfig,
    /// Session service settings.
    pub sessions: SessionsSettings,
    /// The model the agent uses; without one, prompts are refused with a clear error.
    pub model: Option<ModelSettings>,
    /// External plugins every session's agent uses, in order (see docs/plugins.md).
    pub plugins: Vec<PluginSettings>,
    /// The warm pool of session sandboxes.
    pub pool: PoolSettings,
    /// Git remotes' credentials.
    pub git: GitSettings,
    /// Image builds.
    pub images: ImagesSettings,
    /// GitHub: the App (git credentials), sign-in, pull requests and webhooks. Without
    /// it, the GitHub routes answer that GitHub is not configured.
    pub github: Option<GitHubSettings>,
    /// The Slack app, when Hangar answers in Slack.
    pub slack: Option<SlackSettings>,
    /// Where layers, sandboxes and git mirrors are kept.
    pub storage: StorageSettings,
}

/// Storage settings. Layers, sandboxes' upper directories and git mirrors create many
/// small files; on some disks (common with virtual disks) creating a file costs ten times
/// more than on a fresh ext4 filesystem, so Hangar can keep them on an ext4 image of its
/// own, loop-mounted inside the data directory.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// `auto` (an ext4 image unless the data directory is already on tmpfs), `loop`
    /// (always the image) or `direct` (the data directory's own filesystem).
    pub mode: String,
    /// The image's size (sparse: only what is used takes disk space), e.g. `64GiB`.
    pub size: String,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            mode: "auto".into(),
            size: "64GiB".into(),
        }
    }
}

/// Image build settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesSettings {
    /// How often each registered repository is looked at and rebuilt if its default
    /// branch or recipe changed (0 turns scheduled rebuilds off).
    pub rebuild_every_s: u64,
    /// How often the server removes blobs, unpacked layers and cache entries that no
    /// image and no sandbox uses: those of removed images and of released snapshots (0
    /// leaves it to `hangar image gc`).
    pub gc_every_s: u64,
}

impl Default for ImagesSettings {
    fn default() -> Self {
        ImagesSettings {
            rebuild_every_s: 30 * 60,
            gc_every_s: 60 * 60,
        }
    }
}

/// Warm pool settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSettings {
    /// Idle sandboxes kept per repository at least (once the repository had a session).
    pub min: usize,
    /// ... and at most, however busy it is.
    pub max: usize,
    /// A sandbox reserved when someone started typing is released after this long without
    /// a prompt.
    pub reservation_timeout_ms: u64,
    /// How often each repository's base branch is fetched, and idle sandboxes left behind
    /// re-synced.
    pub refresh_every_ms: u64,
    /// How long a fetched base counts as the latest: an idle sandbox synced to it is handed
    /// out without fetching again. Longer means fewer fetches and an older base at worst.
    pub base_fresh_for_ms: u64,
    /// How long the pool waits after a claim before refilling, so the claimer's first
    /// model request and first token do not share the cores with a sandbox start and sync.
    pub refill_delay_ms: u64,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            min: 1,
            max: 4,
            reservation_timeout_ms: 120_000,
            refresh_every_ms: 20_000,
            base_fresh_for_ms: 30_000,
            refill_delay_ms: 1_000,
        }
    }
}

/// An external plugin: a program speaking newline-delimited JSON on stdin/stdout.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// How long a hook may take before it counts as unanswered (a `tool.execute.before`
    /// then blocks the call).
    #[serde(default = "default_plugin_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_plugin_timeout_ms() -> u64 {
    10_000
}

/// How to reach the agent's model. The key never appears in the file itself: it is read
/// from the environment variable or the file named here, and never logged.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// `anthropic` (Messages API) or `openai` (Chat Completions, also Ollama, vLLM,
    /// llama.cpp's server).
    pub provider: String,
    /// API base, e.g. `https://api.anthropic.com` or `https://api.openai.com/v1`.
    pub base_url: String,
    /// Model name.
    pub model: String,
    /// Environment variable holding the API key, e.g. `ANTHROPIC_API_KEY`.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// File holding the API key (its first line).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// The model's context window in tokens.
    #[serde(default = "default_context_limit")]
    pub context_limit: u64,
    /// Most tokens per response.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
}

fn default_context_limit() -> u64 {
    200_000
}

fn default_max_tokens() -> u32 {
    8192
}

impl ModelSettings {
    /// The API key, from the file or the environment variable configured (none configured:
    /// no key, as local servers such as Ollama need none).
    pub fn api_key(&self) -> Result<Option<String>, ConfigError> {
        read_secret(
            ("model.api_key_file", self.api_key_file.as_deref()),
            ("model.api_key_env", self.api_key_env.as_deref()),
        )
    }
}

/// A secret named by configuration: the first line of a file (`file.1`), else an
/// environment variable (`env.1`), else none. The `.0`s are the keys named in errors. An
/// empty file or an unset variable is an error, not a silent "no secret".
pub fn read_secret(
    file: (&'static str, Option<&Path>),
    env: (&'static str, Option<&str>),
) -> Result<Option<String>, ConfigError> {
    if let Some(path) = file.1 {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let secret = text.lines().next().unwrap_or("").trim().to_string();
        if secret.is_empty() {
            return Err(ConfigError::Invalid {
                key: file.0,
                message: format!("{} is empty", path.display()),
            });
        }
        return Ok(Some(secret));
    }
    match env.1 {
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_string())),
            _ => Err(ConfigError::Invalid {
                key: env.0,
                message: format!("the environment variable {var} is not set"),
            }),
        },
        None => Ok(None),
    }
}

/// GitHub settings (see docs/github.md for creating the App). Secrets never appear in the
/// file itself: each is read from the environment variable or the file named here.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GitHubSettings {
    /// The REST API base: `https://api.github.com`, or `https://HOST/api/v3` for GitHub
    /// Enterprise Server.
    #[serde(default = "default_github_api_url")]
    pub api_url: String,
    /// The web host, for sign-in and repository URLs: `https://github.com`.
    #[serde(default = "default_github_web_url")]
    pub web_url: String,
    /// The GitHub App's id.
    #[serde(default)]
    pub app_id: Option<u64>,
    /// The App's private key, the PEM file GitHub generated.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// The OAuth client id used for sign-in (the App's "Client ID").
    #[serde(default)]
    pub client_id: Option<String>,
    /// Environment variable holding the OAuth client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// File holding the OAuth client secret (its first line).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Where GitHub sends people back after sign-in: this server's
    /// `/auth/github/callback`; GitHub's registered callback URL when unset.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Environment variable holding the webhook secret.
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
    /// File holding the webhook secret (its first line).
    #[serde(default)]
    pub webhook_secret_file: Option<PathBuf>,
    /// Repositories (`owner/name`) whose pull request review comments become follow-up
    /// prompts of the session, attributed to the commenter's Hangar user.
    #[serde(default)]
    pub review_comment_prompts: Vec<String>,
    /// An installation token is replaced this long before it expires.
    #[serde(default = "default_token_refresh_margin_secs")]
    pub token_refresh_margin_secs: i64,
}

fn default_github_api_url() -> String {
    "https://api.github.com".into()
}

fn default_github_web_url() -> String {
    "https://github.com".into()
}

fn default_token_refresh_margin_secs() -> i64 {
    300
}

impl GitHubSettings {
    /// The OAuth client secret, if one is configured.
    pub fn client_secret(&self) -> Result<Option<String>, ConfigError> {
        read_secret(
            (
                "github.client_secret_file",
                self.client_secret_file.as_deref(),
            ),
            (
                "github.client_secret_env",
                self.client_secret_env.as_deref(),
            ),
        )
    }

    /// The webhook secret, if one is configured.
    pub fn webhook_secret(&self) -> Result<Option<String>, ConfigError> {
        read_secret(
            (
                "github.webhook_secret_file",
                self.webhook_secret_file.as_deref(),
            ),
            (
                "github.webhook_secret_env",
                self.webhook_secret_env.as_deref(),
            ),
        )
    }

    /// The App's private key (PEM text), if one is configured.
    pub fn private_key(&self) -> Result<Option<String>, ConfigError> {
        match &self.private_key_file {
            Some(path) => {
                std::fs::read_to_string(path)
                    .map(Some)
                    .map_err(|source| ConfigError::Read {
                        path: path.clone(),
                        source,
                    })
            }
            None => Ok(None),
        }
    }

    /// Reads every key and secret configured, so a missing file or variable stops the
    /// start with its name rather than failing a sign-in or a webhook later.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.app_id.is_some() && self.private_key()?.is_none() {
            return Err(ConfigError::Invalid {
                key: "github.private_key_file",
                message: "github.app_id is set, so the App's private key file is needed".into(),
            });
        }
        if self.client_id.is_some() && self.client_secret()?.is_none() {
            return Err(ConfigError::Invalid {
                key: "github.client_secret_file",
                message:
                    "github.client_id is set, so client_secret_file or client_secret_env is needed"
                        .into(),
            });
        }
        self.webhook_secret()?;
        Ok(())
    }

    /// The web host's name (`github.com`), to recognise repository URLs.
    pub fn web_host(&self) -> &str {
        let rest = self
            .web_url
            .split_once("://")
            .map_or(self.web_url.as_str(), |(_, r)| r);
        rest.split('/').next().unwrap_or(rest)
    }
}

/// The Slack app (see docs/slack.md). Its bot token and signing secret never appear in the
/// file itself: they are read from the environment variables or files named here, and never
/// logged.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    /// Environment variable holding the bot token (`xoxb-…`), e.g. `SLACK_BOT_TOKEN`.
    #[serde(default)]
    pub bot_token_env: Option<String>,
    /// File holding the bot token (its first line).
    #[serde(default)]
    pub bot_token_file: Option<PathBuf>,
    /// Environment variable holding the app's signing secret, e.g. `SLACK_SIGNING_SECRET`.
    #[serde(default)]
    pub signing_secret_env: Option<String>,
    /// File holding the signing secret (its first line).
    #[serde(default)]
    pub signing_secret_file: Option<PathBuf>,
    /// The workspaces (team ids, `T…`) served; events from any other are ignored.
    pub team_ids: Vec<String>,
    /// The Slack Web API.
    #[serde(default = "default_slack_api")]
    pub api_base_url: String,
    /// Hangar's address as people open it, for links to sessions; by default the address
    /// the server listens on.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Least time between two edits of a thread's progress message.
    #[serde(default = "default_slack_update_ms")]
    pub update_interval_ms: u64,
    /// The classifier's choice of repository is used only at or above this confidence
    /// (0-1); below it, the person is asked to choose.
    #[serde(default = "default_min_confidence")]
    pub min_confidence: f64,
    /// The fast model that picks a request's repository; `[model]` when absent.
    #[serde(default)]
    pub classifier: Option<ModelSettings>,
    /// The repositories requests may go to, with what helps choose between them.
    #[serde(default)]
    pub repos: Vec<RepoSettings>,
}

fn default_slack_api() -> String {
    "https://slack.com/api".into()
}

fn default_slack_update_ms() -> u64 {
    1500
}

fn default_min_confidence() -> f64 {
    0.7
}

impl SlackSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.team_ids.is_empty() || self.team_ids.iter().any(|t| t.trim().is_empty()) {
            return invalid(
                "slack.team_ids",
                "name the workspaces served, e.g. team_ids = [\"T012AB3C4\"]".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return invalid("slack.min_confidence", "must be between 0 and 1".into());
        }
        if let Some(c) = &self.classifier
            && !matches!(c.provider.as_str(), "anthropic" | "openai")
        {
            return invalid(
                "slack.classifier.provider",
                format!("{:?} is not one of \"anthropic\", \"openai\"", c.provider),
            );
        }
        let mut names = std::collections::HashSet::new();
        for r in &self.repos {
            if r.name.trim().is_empty() || !names.insert(r.name.as_str()) {
                return invalid(
                    "slack.repos.name",
                    format!("{:?}: every repository needs a distinct name", r.name),
                );
            }
        }
        Ok(())
    }

    /// The bot token (`xoxb-…`).
    pub fn bot_token(&self) -> Result<String, ConfigError> {
        read_secret(
            ("slack.bot_token_file", self.bot_token_file.as_deref()),
            ("slack.bot_token_env", self.bot_token_env.as_deref()),
        )?
        .ok_or(ConfigError::Invalid {
            key: "slack.bot_token_env",
            message: "set bot_token_env or bot_token_file".into(),
        })
    }

    /// The signing secret that every request from Slack is verified with.
    pub fn signing_secret(&self) -> Result<String, ConfigError> {
        read_secret(
            (
                "slack.signing_secret_file",
                self.signing_secret_file.as_deref(),
            ),
            (
                "slack.signing_secret_env",
                self.signing_secret_env.as_deref(),
            ),
        )?
        .ok_or(ConfigError::Invalid {
            key: "slack.signing_secret_env",
            message: "set signing_secret_env or signing_secret_file".into(),
        })
    }
}

/// A repository that Slack requests may go to.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepoSettings {
    /// Its name, e.g. `acme/app`.
    pub name: String,
    /// Where it is cloned from.
    #[serde(default)]
    pub url: Option<String>,
    /// Its default branch.
    #[serde(default = "default_branch")]
    pub default_branch: String,
    /// What it is, in a sentence or two, for the classifier.
    #[serde(default)]
    pub description: String,
    /// Words that point to it (components, products, services).
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Slack channels (names without `#`) where requests are usually about it.
    #[serde(default)]
    pub channels: Vec<String>,
}

fn default_branch() -> String {
    "main".into()
}

/// Git settings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GitSettings {
    /// Credentials for remotes; the first whose `url_prefix` matches wins.
    pub credentials: Vec<GitCredentialSettings>,
}

/// A username and token for the remotes under one URL prefix. The token is read from a
/// file or the environment, handed to git through its askpass only, and never logged.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GitCredentialSettings {
    /// Remotes whose URL starts with this, e.g. `https://git.example.com/acme/`.
    pub url_prefix: String,
    /// The username (`x-access-token` for GitHub tokens).
    pub username: String,
    /// The environment variable holding the token.
    pub password_env: Option<String>,
    /// The file holding the token (its first line).
    pub password_file: Option<PathBuf>,
}

impl GitCredentialSettings {
    /// The token.
    pub fn password(&self) -> Result<String, ConfigError> {
        read_secret(
            (
                "git.credentials.password_file",
                self.password_file.as_deref(),
            ),
            ("git.credentials.password_env", self.password_env.as_deref()),
        )?
        .ok_or_else(|| ConfigError::Invalid {
            key: "git.credentials",
            message: format!(
                "the credential for {} needs password_env or password_file",
                self.url_prefix
            ),
        })
    }
}

/// Session service settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsSettings {
    /// A session with nothing running, nobody connected and no request for this long is
    /// unloaded (hibernated); the next request loads it again.
    pub idle_unload_ms: u64,
    /// `process` (WAL, synchronous=NORMAL: a commit survives the process being killed) or
    /// `full` (an fsync per commit: also survives power loss).
    pub durability: String,
    /// Live events buffered per session; a client further behind is resynced from the log.
    pub live_buffer: usize,
    /// What answers prompts: `agent` (the agent with the `[model]` configured; without a
    /// model, prompts fail saying so) or `scripted` (a stand-in that streams canned events,
    /// for tests and benchmarks of the session machinery only).
    pub executor: String,
    /// Pause between the events of the `scripted` stand-in.
    pub scripted_delay_ms: u64,
    /// Where the repository is checked out inside a session's sandbox.
    pub workdir: String,
}

impl Default for SessionsSettings {
    fn default() -> Self {
        SessionsSettings {
            idle_unload_ms: 300_000,
            durability: "process".into(),
            live_buffer: 1024,
            executor: "agent".into(),
            scripted_delay_ms: 20,
            workdir: "/workspace".into(),
        }
    }
}

/// Sandbox runtime settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// First host uid (and gid) of the range sandboxes map their uids 0.. onto.
    pub uid_base: u32,
    /// Size of that range.
    pub uid_count: u32,
    /// Default memory limit, e.g. "2GiB".
    pub memory: String,
    /// Default limit on processes and threads.
    pub pids: u64,
    /// Default CPU quota in CPUs (0.5 = half of one CPU).
    pub cpus: f64,
    /// Host paths hidden (covered by an empty read-only tmpfs) when a sandbox uses the
    /// host's root as its rootfs. The data directory is always hidden too, and `/tmp`,
    /// `/var/tmp` and `/run` are always fresh, empty tmpfs.
    pub hidden_host_paths: Vec<PathBuf>,
    /// CA certificates trusted inside sandboxes with network egress (bound read-only at
    /// `/.hangar/ca-certificates.crt`, with `SSL_CERT_FILE`, `PIP_CERT`, ... pointing
    /// there), so installs work behind a TLS-intercepting proxy whose CA the host trusts.
    pub ca_bundle: PathBuf,
    /// Directory holding the `envd` and `hangar-jail` binaries; by default the directory
    /// of the running executable.
    pub tools_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("/var/lib/hangar"),
            listen: "127.0.0.1:7070".into(),
            sandbox: SandboxConfig::default(),
            sessions: SessionsSettings::default(),
            model: None,
            plugins: Vec::new(),
            pool: PoolSettings::default(),
            git: GitSettings::default(),
            github: None,
            images: ImagesSettings::default(),
            slack: None,
            storage: StorageSettings::default(),
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            uid_base: 1_000_000_000,
            uid_count: 65536,
            memory: "2GiB".into(),
            pids: 1024,
            cpus: 2.0,
            hidden_host_paths: [
                "/root",
                "/home",
                "/etc/ssh",
                "/var/lib/hangar",
                "/srv",
                "/mnt",
                "/media",
            ]
            .iter()
            .map(PathBuf::from)
            .collect(),
            ca_bundle: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            tools_dir: None,
        }
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid setting {key}: {message}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The environment variables Hangar reads, gathered in one place.
#[derive(Clone, Debug, Default)]
pub struct Env {
    /// `HANGAR_CONFIG`.
    pub config: Option<PathBuf>,
    /// `HANGAR_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `HANGAR_LISTEN`.
    pub listen: Option<String>,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        let var = |k| std::env::var_os(k).filter(|v| !v.is_empty());
        Env {
            config: var("HANGAR_CONFIG").map(PathBuf::from),
            data_dir: var("HANGAR_DATA_DIR").map(PathBuf::from),
            listen: var("HANGAR_LISTEN").and_then(|v| v.into_string().ok()),
        }
    }
}

impl Config {
    /// Loads the configuration: the file (if any), then environment overrides, then
    /// `data_dir_flag` (a command-line `--data-dir`), which wins over everything.
    pub fn load(env: &Env, data_dir_flag: Option<&Path>) -> Result<Config, ConfigError> {
        let data_dir_hint = data_dir_flag
            .map(Path::to_path_buf)
            .or_else(|| env.data_dir.clone())
            .unwrap_or_else(|| Config::default().data_dir);
        let (path, required) = match &env.config {
            Some(p) => (p.clone(), true),
            None => (data_dir_hint.join("hangar.toml"), false),
        };
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&text, &path)?,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Config::default(),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        if let Some(d) = &env.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(l) = &env.listen {
            config.listen = l.clone();
        }
        if let Some(d) = data_dir_flag {
            config.data_dir = d.to_path_buf();
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.plugins.iter().any(|p| p.command.is_empty()) {
            return Err(ConfigError::Invalid {
                key: "plugins.command",
                message: "a plugin needs a command (the program and its arguments)".into(),
            });
        }
        if !matches!(self.sessions.executor.as_str(), "agent" | "scripted") {
            return Err(ConfigError::Invalid {
                key: "sessions.executor",
                message: format!(
                    "{:?} is not one of \"agent\", \"scripted\"",
                    self.sessions.executor
                ),
            });
        }
        if let Some(m) = &self.model
            && !matches!(m.provider.as_str(), "anthropic" | "openai")
        {
            return Err(ConfigError::Invalid {
                key: "model.provider",
                message: format!("{:?} is not one of \"anthropic\", \"openai\"", m.provider),
            });
        }
        if let Some(slack) = &self.slack {
            slack.validate()?;
        }
        let s = &self.sandbox;
        if s.uid_base == 0 {
            return Err(ConfigError::Invalid {
                key: "sandbox.uid_base",
                message: "must not be 0: sandbox root must never be host root".into(),
            });
        }
        if s.uid_count == 0 || s.uid_base.checked_add(s.uid_count).is_none() {
            return Err(ConfigError::Invalid {
                key: "sandbox.uid_count",
                message: "must be positive and keep the range below 2^32".into(),
            });
        }
        parse_size(&s.memory).map_err(|message| ConfigError::Invalid {
            key: "sandbox.memory",
            message,
        })?;
        if !(s.cpus > 0.0 && s.cpus.is_finite()) {
            return Err(ConfigError::Invalid {
                key: "sandbox.cpus",
                message: "must be a positive number".into(),
            });
        }
        if !matches!(self.sessions.durability.as_str(), "process" | "full") {
            return Err(ConfigError::Invalid {
                key: "sessions.durability",
                message: format!(
                    "must be \"process\" or \"full\", got {:?}",
                    self.sessions.durability
                ),
            });
        }
        if !matches!(self.storage.mode.as_str(), "auto" | "loop" | "direct") {
            return Err(ConfigError::Invalid {
                key: "storage.mode",
                message: format!(
                    "must be \"auto\", \"loop\" or \"direct\", got {:?}",
                    self.storage.mode
                ),
            });
        }
        parse_size(&self.storage.size).map_err(|message| ConfigError::Invalid {
            key: "storage.size",
            message,
        })?;
        if !self.data_dir.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "data_dir",
                message: format!("must be an absolute path, got {}", self.data_dir.display()),
            });
        }
        Ok(())
    }
}

/// Parses a size such as `512MiB`, `2G`, `1048576` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a size like 512MiB or 2G"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{text}' (use K, M, G or T)"
            ));
        }
    };
    let bytes = n * mult as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("'{text}' is not a positive size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env {
            data_dir: Some(dir.path().into()),
            ..Env::default()
        };
        let c = Config::load(&env, None).unwrap();
        assert_eq!(c.data_dir, dir.path());
        assert_eq!(c.sandbox.pids, 1024);
    }

    #[test]
    fn file_then_env_then_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:1\"\ndata_dir = \"/a\"\n[sandbox]\npids = 7\n",
        )
        .unwrap();
        let env = Env {
            config: Some(file),
            data_dir: Some("/b".into()),
            listen: None,
        };
        let c = Config::load(&env, None).unwrap();
        assert_eq!(
            (c.listen.as_str(), c.data_dir.as_path(), c.sandbox.pids),
            ("0.0.0.0:1", Path::new("/b"), 7)
        );
        let c = Config::load(&env, Some(Path::new("/c"))).unwrap();
        assert_eq!(c.data_dir, Path::new("/c"));
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        for (text, needle) in [
            ("listen = 3", "invalid config file"),
            ("nonsense = 1", "unknown field"),
            ("[sandbox]\nuid_base = 0", "sandbox.uid_base"),
            ("[sandbox]\nmemory = \"lots\"", "sandbox.memory"),
            ("data_dir = \"relative\"", "absolute"),
        ] {
            std::fs::write(&file, text).unwrap();
            let env = Env {
                config: Some(file.clone()),
                ..Env::default()
            };
            let err = Config::load(&env, None).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} gave {err:?}");
        }
        let env = Env {
            config: Some(dir.path().join("missing.toml")),
            ..Env::default()
        };
        assert!(
            Config::load(&env, None)
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
    }

    #[test]
    fn model_keys_come_from_a_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "sk-from-file\n").unwrap();
        let text = format!(
            "[model]\nprovider = \"anthropic\"\nbase_url = \"http://m\"\nmodel = \"c\"\napi_key_file = {:?}\n",
            key_file
        );
        let c = Config::parse(&text, Path::new("x")).unwrap();
        let m = c.model.unwrap();
        assert_eq!(m.api_key().unwrap().as_deref(), Some("sk-from-file"));
        assert_eq!(m.context_limit, 200_000);
        let missing = ModelSettings {
            api_key_file: None,
            api_key_env: Some("HANGAR_TEST_SURELY_UNSET_KEY".into()),
            ..m.clone()
        };
        assert!(
            missing
                .api_key()
                .unwrap_err()
                .to_string()
                .contains("HANGAR_TEST_SURELY_UNSET_KEY")
        );
        let none = ModelSettings {
            api_key_file: None,
            api_key_env: None,
            ..m
        };
        assert_eq!(none.api_key().unwrap(), None);
        let bad = "[model]\nprovider = \"gemini\"\nbase_url = \"x\"\nmodel = \"m\"\n";
        std::fs::write(dir.path().join("c.toml"), bad).unwrap();
        let env = Env {
            config: Some(dir.path().join("c.toml")),
            ..Env::default()
        };
        assert!(
            Config::load(&env, None)
                .unwrap_err()
                .to_string()
                .contains("model.provider")
        );
    }

    #[test]
    fn github_settings_have_defaults_and_read_secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("webhook");
        std::fs::write(&secret, "whsec\n").unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let text = format!(
            "[github]\napp_id = 7\nwebhook_secret_file = {secret:?}\nclient_secret_file = {empty:?}\nreview_comment_prompts = [\"acme/app\"]\n"
        );
        let g = Config::parse(&text, Path::new("x"))
            .unwrap()
            .github
            .unwrap();
        assert_eq!(g.api_url, "https://api.github.com");
        assert_eq!(g.web_host(), "github.com");
        assert_eq!(g.app_id, Some(7));
        assert_eq!(g.token_refresh_margin_secs, 300);
        assert_eq!(g.webhook_secret().unwrap().as_deref(), Some("whsec"));
        let e = g.client_secret().unwrap_err().to_string();
        assert!(
            e.contains("github.client_secret_file") && e.contains("empty"),
            "{e}"
        );
        assert_eq!(g.private_key().unwrap(), None);
        let e = g.check().unwrap_err().to_string();
        assert!(e.contains("github.private_key_file"), "{e}");
        let unknown = Config::parse("[github]\nsecret = \"x\"\n", Path::new("x")).unwrap_err();
        assert!(unknown.to_string().contains("secret"), "{unknown}");
        let ghes = GitHubSettings {
            web_url: "https://ghe.example.com/".into(),
            ..g
        };
        assert_eq!(ghes.web_host(), "ghe.example.com");
    }

    #[test]
    fn slack_settings_read_secrets_and_refuse_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let text = format!(
            "[slack]\nbot_token_env = \"HANGAR_TEST_SURELY_UNSET_TOKEN\"\nsigning_secret_file = {secret:?}\nteam_ids = [\"T1\"]\n[[slack.repos]]\nname = \"acme/app\"\nchannels = [\"app-dev\"]\n"
        );
        let c = Config::parse(&text, Path::new("x")).unwrap();
        c.validate().unwrap();
        let s = c.slack.unwrap();
        assert_eq!(s.signing_secret().unwrap(), "s3cret");
        assert!(
            s.bot_token()
                .unwrap_err()
                .to_string()
                .contains("HANGAR_TEST_SURELY_UNSET_TOKEN")
        );
        assert_eq!(s.api_base_url, "https://slack.com/api");
        assert_eq!((s.min_confidence, s.update_interval_ms), (0.7, 1500));
        assert_eq!(s.repos[0].default_branch, "main");
        let none = SlackSettings {
            signing_secret_file: None,
            ..s.clone()
        };
        assert!(
            none.signing_secret()
                .unwrap_err()
                .to_string()
                .contains("signing_secret")
        );
        for (toml, key) in [
            ("[slack]\nteam_ids = []", "slack.team_ids"),
            (
                "[slack]\nteam_ids = [\"T1\"]\nmin_confidence = 2.0",
                "slack.min_confidence",
            ),
            (
                "[slack]\nteam_ids = [\"T1\"]\n[[slack.repos]]\nname = \"a\"\n[[slack.repos]]\nname = \"a\"",
                "slack.repos.name",
            ),
            (
                "[slack]\nteam_ids = [\"T1\"]\n[slack.classifier]\nprovider = \"x\"\nbase_url = \"u\"\nmodel = \"m\"",
                "slack.classifier.provider",
            ),
        ] {
            let err = Config::parse(toml, Path::new("x"))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{toml:?} gave {err:?}");
        }
        assert!(
            Config::parse(
                "[slack]\nteam_ids = [\"T1\"]\ntoken = \"xoxb\"",
                Path::new("x")
            )
            .is_err()
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert!(parse_size("").is_err());
    }
}
