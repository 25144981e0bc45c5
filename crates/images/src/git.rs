//! Git on the host, through the `git` CLI: resolve a ref to a commit, fetch a commit into
//! a directory, list file hashes. Credentials come from a pluggable [`Credentials`]
//! source and reach git only through its askpass mechanism: a small script that prints
//! values from environment variables set on that one git process. They are never put in
//! a URL, a file, an argument, a layer or an error message.

use std::path::{Path, PathBuf};
use std::process::Stdio;

/// A username and password (or token) for one remote.
#[derive(Clone, PartialEq, Eq)]
pub struct GitCredential {
    /// The username (`x-access-token` for GitHub App installation tokens).
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for GitCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCredential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where credentials for a remote come from (a GitHub App, a user's OAuth token, ...).
pub trait Credentials: Send + Sync {
    /// The credential for `url`, or `None` to try without one.
    fn credential(&self, url: &str) -> Result<Option<GitCredential>, String>;
}

/// No credentials: public and local repositories.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCredentials;

impl Credentials for NoCredentials {
    fn credential(&self, _url: &str) -> Result<Option<GitCredential>, String> {
        Ok(None)
    }
}

/// The same credential for every HTTPS remote.
#[derive(Clone, Debug)]
pub struct StaticCredential(pub GitCredential);

impl Credentials for StaticCredential {
    fn credential(&self, url: &str) -> Result<Option<GitCredential>, String> {
        Ok(url.starts_with("https://").then(|| self.0.clone()))
    }
}

/// The credentials of `[[git.credentials]]`: the first entry whose URL prefix matches the
/// remote. Tokens are read from their file or variable at each use, so a token file can be
/// rotated under a running server.
#[derive(Clone, Debug, Default)]
pub struct ConfiguredCredentials(pub Vec<hangar_config::GitCredentialSettings>);

impl ConfiguredCredentials {
    /// Fails, naming the entry, if any configured token cannot be read now.
    pub fn check(&self) -> Result<(), String> {
        for c in &self.0 {
            c.password().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl Credentials for ConfiguredCredentials {
    fn credential(&self, url: &str) -> Result<Option<GitCredential>, String> {
        let Some(entry) = self.0.iter().find(|c| url.starts_with(&c.url_prefix)) else {
            return Ok(None);
        };
        Ok(Some(GitCredential {
            username: entry.username.clone(),
            password: entry.password().map_err(|e| e.to_string())?,
        }))
    }
}

/// A git operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The repository argument is unusable.
    #[error("{0}")]
    BadRepo(String),
    /// git could not be run.
    #[error("running git: {0}; install git (scripts/install-deps.sh)")]
    Spawn(std::io::Error),
    /// git failed.
    #[error("git {what} failed: {stderr}")]
    Failed {
        /// Which operation.
        what: String,
        /// git's message, with any credential removed.
        stderr: String,
    },
    /// The ref does not exist.
    #[error("{repo} has no ref {reference}")]
    NoSuchRef {
        /// The repository.
        repo: String,
        /// The ref.
        reference: String,
    },
    /// The remote refused a push (not a fast-forward, a protected branch, a hook, …).
    #[error("the push of {branch} was rejected: {reason}")]
    Rejected {
        /// The branch.
        branch: String,
        /// The remote's words.
        reason: String,
    },
    /// The credential source failed.
    #[error("credentials for {url}: {message}")]
    Credentials {
        /// The remote.
        url: String,
        /// Why.
        message: String,
    },
}

/// A remote: a local path (made absolute), `file://` or `https://` URL. Credentials in
/// the URL itself are refused: they would end up in `.git/config` and in logs.
pub fn normalize_repo(repo: &str) -> Result<String, GitError> {
    if let Some(rest) = repo
        .strip_prefix("https://")
        .or_else(|| repo.strip_prefix("http://"))
    {
        let host = rest.split('/').next().unwrap_or("");
        if host.contains('@') {
            return Err(GitError::BadRepo(format!(
                "{repo}: put no credentials in the URL; Hangar supplies them from its credential source"
            )));
        }
        return Ok(repo.to_string());
    }
    if repo.starts_with("file://") || repo.starts_with("ssh://") || repo.starts_with("git@") {
        return Ok(repo.to_string());
    }
    let p = std::fs::canonicalize(repo)
        .map_err(|e| GitError::BadRepo(format!("repository {repo}: {e}")))?;
    Ok(p.display().to_string())
}

/// The askpass helper: prints the username or password from the environment of the git
/// process that runs it, so neither is ever written anywhere.
const ASKPASS: &str = "#!/bin/sh\ncase \"$1\" in\n  Username*) printf '%s\\n' \"$HANGAR_GIT_USERNAME\" ;;\n  *) printf '%s\\n' \"$HANGAR_GIT_PASSWORD\" ;;\nesac\n";

/// Runs git commands for one remote.
pub struct Git {
    url: String,
    credential: Option<GitCredential>,
    askpass: PathBuf,
    /// Run git at a lower CPU priority (background work beside latency-critical work).
    background: bool,
}

impl std::fmt::Debug for Git {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Git")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Git {
    /// Prepares git for `url`; `scratch` is a private directory for the askpass helper.
    pub fn new(url: &str, credentials: &dyn Credentials, scratch: &Path) -> Result<Git, GitError> {
        let credential = credentials
            .credential(url)
            .map_err(|message| GitError::Credentials {
                url: url.to_string(),
                message,
            })?;
        let askpass = scratch.join("askpass");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o700)
                .open(&askpass)
                .map_err(GitError::Spawn)?;
            f.write_all(ASKPASS.as_bytes()).map_err(GitError::Spawn)?;
        }
        Ok(Git {
            url: url.to_string(),
            credential,
            askpass,
            background: false,
        })
    }

    /// Runs every git process of this value at nice 10: for work (a session's sync) that
    /// must not take the cores from the prompt's own path.
    pub fn in_background(mut self) -> Git {
        self.background = true;
        self
    }

    /// The remote.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn command(&self, dir: Option<&Path>) -> tokio::process::Command {
        // Background git goes through `nice` rather than a `setpriority` between fork and
        // exec: any code there makes std fork this (large, multi-threaded) process instead
        // of using posix_spawn, and a fork stalls every thread of the server that touches
        // its memory map while the page tables are copied.
        let mut c = if self.background {
            let mut c = tokio::process::Command::new("nice");
            c.args(["-n", "10", "git"]);
            c
        } else {
            tokio::process::Command::new("git")
        };
        if let Some(d) = dir {
            c.arg("-C").arg(d);
        }
        // No credential helpers or prompts from the host's configuration; a local source
        // repository owned by someone else is still readable.
        c.args([
            "-c",
            "credential.helper=",
            "-c",
            "safe.directory=*",
            "-c",
            "protocol.file.allow=always",
        ])
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", &self.askpass)
        .env_remove("SSH_ASKPASS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        if let Some(cred) = &self.credential {
            c.env("HANGAR_GIT_USERNAME", &cred.username)
                .env("HANGAR_GIT_PASSWORD", &cred.password);
        }
        c
    }

    async fn run(&self, what: &str, mut cmd: tokio::process::Command) -> Result<String, GitError> {
        let out = cmd.output().await.map_err(GitError::Spawn)?;
        if !out.status.success() {
            return Err(GitError::Failed {
                what: what.to_string(),
                stderr: self.scrub(String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Removes the password from text that may be shown or logged.
    fn scrub(&self, text: &str) -> String {
        match &self.credential {
            Some(c) if !c.password.is_empty() => text.replace(&c.password, "<redacted>"),
            _ => text.to_string(),
        }
    }

    /// The commit `reference` names on the remote (`HEAD` when `None`). A full commit id
    /// is taken as it is.
    pub async fn resolve(&self, reference: Option<&str>) -> Result<String, GitError> {
        let r = reference.unwrap_or("HEAD");
        if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(r.to_ascii_lowercase());
        }
        let mut cmd = self.command(None);
        cmd.arg("ls-remote").arg("--").arg(&self.url).arg(r);
        let out = self.run("ls-remote", cmd).await?;
        let refs: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once('\t')).collect();
        let find = |name: String| {
            refs.iter()
                .find(|(_, n)| **n == name)
                .map(|(c, _)| c.to_string())
        };
        find(format!("refs/tags/{r}^{{}}"))
            .or_else(|| find(r.to_string()))
            .or_else(|| find(format!("refs/heads/{r}")))
            .or_else(|| find(format!("refs/tags/{r}")))
            .ok_or_else(|| GitError::NoSuchRef {
                repo: self.url.clone(),
                reference: r.to_string(),
            })
    }

    /// Fetches `commit` (shallow when the remote allows it) into a new repository at
    /// `dest` and checks it out, detached. `origin` points at the remote, without
    /// credentials.
    pub async fn checkout(
        &self,
        commit: &str,
        reference: Option<&str>,
        dest: &Path,
    ) -> Result<(), GitError> {
        std::fs::create_dir_all(dest).map_err(GitError::Spawn)?;
        let mut c = self.command(Some(dest));
        c.args(["init", "-q"]);
        self.run("init", c).await?;
        let mut c = self.command(Some(dest));
        c.args(["remote", "add", "origin", "--"]).arg(&self.url);
        self.run("remote add", c).await?;
        let mut c = self.command(Some(dest));
        c.args(["fetch", "-q", "--depth=1", "origin", commit]);
        if self.run("fetch", c).await.is_err() {
            // Servers that refuse fetching by commit id: fetch the ref, then find it.
            let mut c = self.command(Some(dest));
            c.args(["fetch", "-q", "origin", reference.unwrap_or("HEAD")]);
            self.run("fetch", c).await?;
        }
        let mut c = self.command(Some(dest));
        c.args(["checkout", "-q", "--detach", commit]);
        self.run("checkout", c).await?;
        Ok(())
    }

    /// Brings the bare mirror at `dir` (created on first use) up to date with the remote's
    /// `branch`, kept as `refs/remotes/origin/<branch>`; returns its commit. Session
    /// branches live beside it as `refs/heads/...`.
    pub async fn fetch_mirror(&self, dir: &Path, branch: &str) -> Result<String, GitError> {
        if !dir.join("HEAD").is_file() {
            std::fs::create_dir_all(dir).map_err(GitError::Spawn)?;
            let mut c = self.command(Some(dir));
            c.args(["init", "-q", "--bare"]);
            self.run("init", c).await?;
        }
        let tracking = format!("refs/remotes/origin/{branch}");
        let mut c = self.command(Some(dir));
        c.args(["fetch", "-q", "--no-tags", "--"])
            .arg(&self.url)
            .arg(format!("+refs/heads/{branch}:{tracking}"));
        self.run("fetch", c).await.map_err(|e| match e {
            GitError::Failed { stderr, .. } if stderr.contains("couldn't find remote ref") => {
                GitError::NoSuchRef {
                    repo: self.url.clone(),
                    reference: branch.to_string(),
                }
            }
            other => other,
        })?;
        self.rev_parse(dir, &tracking)
            .await?
            .ok_or_else(|| GitError::NoSuchRef {
                repo: self.url.clone(),
                reference: branch.to_string(),
            })
    }

    /// The commit `rev` names in the repository at `dir`, if it names one.
    pub async fn rev_parse(&self, dir: &Path, rev: &str) -> Result<Option<String>, GitError> {
        let mut c = self.command(Some(dir));
        c.args(["rev-parse", "-q", "--verify", "--end-of-options"])
            .arg(format!("{rev}^{{commit}}"));
        let out = c.output().await.map_err(GitError::Spawn)?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }

    /// A bundle of `refname` in the repository at `dir`, without the history of `exclude`
    /// (a commit the receiver has) when given and known here.
    pub async fn bundle(
        &self,
        dir: &Path,
        refname: &str,
        exclude: Option<&str>,
    ) -> Result<Vec<u8>, GitError> {
        let exclude = match exclude {
            Some(e) => self.rev_parse(dir, e).await?,
            None => None,
        };
        let mut c = self.command(Some(dir));
        c.args(["bundle", "create", "-q", "-", refname]);
        if let Some(e) = &exclude {
            c.arg(format!("^{e}"));
        }
        let out = c.output().await.map_err(GitError::Spawn)?;
        if !out.status.success() {
            return Err(GitError::Failed {
                what: "bundle".into(),
                stderr: self.scrub(String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        Ok(out.stdout)
    }

    /// Fetches `refname` from the bundle file `bundle` into the repository at `dir` as
    /// the same ref, only as a fast-forward; returns its commit.
    pub async fn fetch_bundle(
        &self,
        dir: &Path,
        bundle: &Path,
        refname: &str,
    ) -> Result<String, GitError> {
        let mut c = self.command(Some(dir));
        c.args(["fetch", "-q", "--no-tags", "--"])
            .arg(bundle)
            .arg(format!("{refname}:{refname}"));
        self.run("fetch from the sandbox", c).await?;
        self.rev_parse(dir, refname)
            .await?
            .ok_or_else(|| GitError::NoSuchRef {
                repo: dir.display().to_string(),
                reference: refname.to_string(),
            })
    }

    /// Pushes `refs/heads/<branch>` of the repository at `dir` to the remote, as a
    /// fast-forward only: a rejection comes back as [`GitError::Rejected`] with the
    /// remote's reason, and is never retried.
    pub async fn push(&self, dir: &Path, branch: &str) -> Result<(), GitError> {
        let mut c = self.command(Some(dir));
        c.args(["push", "--porcelain", "--"])
            .arg(&self.url)
            .arg(format!("refs/heads/{branch}:refs/heads/{branch}"));
        let out = c.output().await.map_err(GitError::Spawn)?;
        if out.status.success() {
            return Ok(());
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = self.scrub(String::from_utf8_lossy(&out.stderr).trim());
        // Porcelain: "!\t<src>:<dst>\t[rejected] (<reason>)" for a refused ref.
        let refused = stdout
            .lines()
            .find(|l| l.starts_with('!'))
            .map(|l| l.rsplit('\t').next().unwrap_or(l).trim().to_string());
        let remote_says: Vec<&str> = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("remote: "))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        match refused {
            Some(why) => Err(GitError::Rejected {
                branch: branch.to_string(),
                reason: if remote_says.is_empty() {
                    why
                } else {
                    format!("{why}: {}", remote_says.join(" "))
                },
            }),
            None => Err(GitError::Failed {
                what: "push".into(),
                stderr,
            }),
        }
    }

    /// The changes from the merge base of `base` and `head` to `head` in the repository at
    /// `dir`: per file (path, lines added, lines removed; `None` for binary files) and the
    /// patch, cut at `limit` bytes (then the flag is set).
    pub async fn diff(
        &self,
        dir: &Path,
        base: &str,
        head: &str,
        limit: usize,
    ) -> Result<(Vec<(String, Option<u64>, Option<u64>)>, String, bool), GitError> {
        let range = format!("{base}...{head}");
        let mut c = self.command(Some(dir));
        c.args(["diff", "--numstat", "-z", "--no-renames", &range, "--"]);
        let numstat = self.run("diff", c).await?;
        let files = numstat
            .split('\0')
            .filter(|r| !r.is_empty())
            .filter_map(|r| {
                let mut it = r.splitn(3, '\t');
                let added = it.next()?.parse().ok();
                let removed = it.next()?.parse().ok();
                Some((it.next()?.to_string(), added, removed))
            })
            .collect();
        let mut c = self.command(Some(dir));
        c.args(["diff", "--no-renames", "--no-color", &range, "--"]);
        let mut patch = self.run("diff", c).await?;
        let truncated = patch.len() > limit;
        if truncated {
            let mut cut = limit;
            while !patch.is_char_boundary(cut) {
                cut -= 1;
            }
            patch.truncate(cut);
        }
        Ok((files, patch, truncated))
    }

    /// A file's content at `commit` in the repository at `dir`, `None` when absent.
    pub async fn show(
        &self,
        dir: &Path,
        commit: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, GitError> {
        let mut c = self.command(Some(dir));
        c.arg("cat-file")
            .arg("blob")
            .arg(format!("{commit}:{path}"));
        let out = c.output().await.map_err(GitError::Spawn)?;
        Ok(out.status.success().then_some(out.stdout))
    }

    /// `(mode, object id, path)` of every file at or below `paths` at `commit`.
    pub async fn ls_tree(
        &self,
        dir: &Path,
        commit: &str,
        paths: &[String],
    ) -> Result<Vec<(String, String, String)>, GitError> {
        let mut c = self.command(Some(dir));
        c.args(["ls-tree", "-r", "-z", "--full-tree", commit, "--"])
            .args(paths);
        let out = self.run("ls-tree", c).await?;
        Ok(out
            .split('\0')
            .filter_map(|rec| {
                let (meta, path) = rec.split_once('\t')?;
                let mut it = meta.split(' ');
                let mode = it.next()?.to_string();
                let _kind = it.next()?;
                let oid = it.next()?.to_string();
                Some((mode, oid, path.to_string()))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn credentials_in_urls_are_refused() {
        let e = normalize_repo("https://user:tok@example.com/r.git").unwrap_err();
        assert!(e.to_string().contains("no credentials in the URL"), "{e}");
        assert_eq!(
            normalize_repo("https://example.com/r.git").unwrap(),
            "https://example.com/r.git"
        );
        assert!(normalize_repo("/definitely/not/here").is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = GitCredential {
            username: "x-access-token".into(),
            password: "ghs_secret".into(),
        };
        assert!(!format!("{c:?}").contains("ghs_secret"));
    }

    #[tokio::test]
    async fn background_git_runs_ten_steps_nicer() {
        let dir = tempfile::tempdir().unwrap();
        let niceness = |git: Git| async move {
            // A shell alias runs `nice` as a child of git, so it reports git's own niceness.
            let out = git
                .command(None)
                .args(["-c", "alias.niceness=!nice", "niceness"])
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<i32>()
                .unwrap()
        };
        let git = || Git::new("https://example.invalid/r.git", &NoCredentials, dir.path()).unwrap();
        let normal = niceness(git()).await;
        assert_eq!(niceness(git().in_background()).await, (normal + 10).min(19));
    }

    #[tokio::test]
    async fn askpass_hands_the_token_over_the_environment_only() {
        let dir = tempfile::tempdir().unwrap();
        let cred = StaticCredential(GitCredential {
            username: "x-access-token".into(),
            password: "s3cret-token".into(),
        });
        let git = Git::new("https://example.invalid/r.git", &cred, dir.path()).unwrap();
        let script = std::fs::read_to_string(dir.path().join("askpass")).unwrap();
        assert!(!script.contains("s3cret"), "the script holds no secret");
        let out = git.command(None).arg("--version").output().await.unwrap();
        assert!(out.status.success());
        // What git would get when it asks.
        let pw = tokio::process::Command::new(&git.askpass)
            .arg("Password for 'https://x-access-token@example.invalid': ")
            .env("HANGAR_GIT_PASSWORD", "s3cret-token")
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&pw.stdout).trim(), "s3cret-token");
        assert_eq!(
            git.scrub("fatal: s3cret-token rejected"),
            "fatal: <redacted> rejected"
        );
    }
}
