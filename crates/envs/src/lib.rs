//! Environments: isolated, shared sandboxes without an agent (`hangar env create`), for
//! people to work in together. An environment is a sandbox started from an image made by
//! the image machinery (`hangar-images`): a Debian base built with mmdebstrap whose suite
//! brings the Python asked for (bullseye → 3.9, bookworm → 3.11), plus the repository
//! checked out when one is given. Its entry (name, Python, image, sandbox) is kept in the
//! index (`hangar-store`).
//!
//! Leaves HTTP, terminals and presence to the server, and building to `hangar-images`.
//! **Invariant:** an environment is recorded only once its sandbox runs the Python it
//! promises; a failed creation leaves no sandbox behind.

#![deny(missing_docs)]

use std::sync::Arc;

use hangar_envd_client::EnvdClient;
use hangar_images::{BuildError, BuildRequest, Builder};
use hangar_protocol::envd::ExecRequest;
use hangar_sandbox::{LocalRuntime, Network, Runtime, SandboxError, SandboxSpec};
use hangar_store::{EnvironmentRecord, Store, StoreError};

/// A Python that an environment can have, and the Debian suite that brings it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Python {
    /// `major.minor`, as asked for.
    pub version: &'static str,
    /// The exact version the suite ships.
    pub release: &'static str,
    /// The Debian suite.
    pub suite: &'static str,
}

/// The Pythons available, oldest first.
pub const PYTHONS: &[Python] = &[
    Python {
        version: "3.9",
        release: "3.9.2",
        suite: "bullseye",
    },
    Python {
        version: "3.11",
        release: "3.11.2",
        suite: "bookworm",
    },
];

/// The Python used when none is asked for.
pub const DEFAULT_PYTHON: &str = "3.11";

/// Longest environment name.
const MAX_NAME: usize = 63;

/// Why an environment operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// The name is unusable.
    #[error(
        "environment name {0:?} must be 1-{MAX_NAME} letters, digits, '-', '_' or '.', starting with a letter or digit"
    )]
    InvalidName(String),
    /// No suite brings that Python.
    #[error("Python {asked} is not available; available: {}", available())]
    PythonUnavailable {
        /// What was asked for.
        asked: String,
    },
    /// The index failed, or has no such environment, or the name is taken.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Building the image failed.
    #[error("building the environment's image: {0}")]
    Build(#[from] BuildError),
    /// The sandbox failed.
    #[error("the environment's sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    /// The sandbox runs, but not the Python promised.
    #[error("the environment's sandbox does not run Python {expected}: {found}")]
    WrongPython {
        /// The version promised.
        expected: String,
        /// What `python3` said.
        found: String,
    },
    /// Talking to envd in the sandbox failed.
    #[error("the environment's sandbox: {0}")]
    Envd(#[from] hangar_envd_client::Error),
}

/// The list of available versions, for people.
fn available() -> String {
    PYTHONS
        .iter()
        .map(|p| format!("{} ({}, Debian {})", p.version, p.release, p.suite))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Python for `asked` (`3.9` or its exact release `3.9.2`).
pub fn python_for(asked: &str) -> Result<&'static Python, EnvError> {
    let asked = asked.trim();
    let asked = asked.strip_prefix("python").map(str::trim).unwrap_or(asked);
    PYTHONS
        .iter()
        .find(|p| p.version == asked || p.release == asked)
        .ok_or_else(|| EnvError::PythonUnavailable {
            asked: asked.to_string(),
        })
}

/// Checks an environment's name.
pub fn check_name(name: &str) -> Result<(), EnvError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(EnvError::InvalidName(name.to_string()))
    }
}

/// Where the repository is checked out, and where terminals start.
pub fn workdir(env: &EnvironmentRecord) -> &'static str {
    if env.repo.is_some() {
        "/workspace"
    } else {
        "/root"
    }
}

/// The image recipe of an environment with `python` (see docs/recipes.md): the suite's
/// minimal Debian with Python, venv and git, and a checkout at `/workspace`.
pub fn recipe(python: &Python) -> String {
    format!(
        "base = \"debian:{}\"\npackages = [\"python3\", \"python3-venv\", \"git\"]\nworkdir = \"/workspace\"\n",
        python.suite
    )
}

/// What to create.
#[derive(Clone, Debug, Default)]
pub struct NewEnvironment {
    /// Its unique name.
    pub name: String,
    /// `3.9`, `3.11`, or an exact release; [`DEFAULT_PYTHON`] when unset.
    pub python: Option<String>,
    /// A repository to check out (a local path, `file://` or `https://` URL).
    pub repo: Option<String>,
}

/// The environments of one server.
#[derive(Clone)]
pub struct Environments {
    runtime: Arc<LocalRuntime>,
    builder: Arc<Builder>,
    index: Arc<Store>,
}

impl Environments {
    /// Environments on `runtime`, with images from `builder`, listed in `index`.
    pub fn new(runtime: Arc<LocalRuntime>, builder: Arc<Builder>, index: Arc<Store>) -> Self {
        Environments {
            runtime,
            builder,
            index,
        }
    }

    /// Builds (or reuses) the image, starts the sandbox, checks its Python and records
    /// the environment. Slow the first time a suite is used (mmdebstrap), quick after.
    pub async fn create(
        &self,
        req: &NewEnvironment,
        created_by: i64,
    ) -> Result<EnvironmentRecord, EnvError> {
        check_name(&req.name)?;
        let python = python_for(req.python.as_deref().unwrap_or(DEFAULT_PYTHON))?;
        let repo = req.repo.as_deref().map(str::trim).filter(|r| !r.is_empty());
        match self.index.environment(&req.name) {
            Ok(_) => return Err(StoreError::DuplicateEnvironment(req.name.clone()).into()),
            Err(StoreError::EnvironmentNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let text = recipe(python);
        let origin = format!("environment {}", req.name);
        let image = match repo {
            Some(repo) => {
                // Progress is not shown: the caller waits for the answer.
                let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
                let req = BuildRequest {
                    repo: repo.to_string(),
                    reference: None,
                    recipe: Some((text, origin)),
                    detached: true,
                };
                self.builder.build(&req, &tx).await?.image
            }
            None => self.builder.build_base(&text, &origin).await?,
        };
        let rootfs = hangar_images::rootfs(self.builder.store(), &image)
            .map_err(|e| EnvError::Build(BuildError::Store(e)))?;
        let sandbox = self
            .runtime
            .create(SandboxSpec {
                rootfs,
                limits: self.runtime.default_limits(),
                network: Network::None,
            })
            .await?;
        self.index
            .record_sandbox(&sandbox.id, "environment", repo, Some(created_by))?;
        let record = EnvironmentRecord {
            id: new_id()?,
            name: req.name.clone(),
            python: String::new(),
            suite: python.suite.to_string(),
            repo: repo.map(str::to_string),
            image: image.id.clone(),
            sandbox: sandbox.id.clone(),
            created_by,
            created_at_ms: 0,
        };
        let result = async {
            let found = self.python_release(&sandbox.id).await?;
            if !found.starts_with(python.version) {
                return Err(EnvError::WrongPython {
                    expected: python.version.to_string(),
                    found,
                });
            }
            Ok(self.index.add_environment(&EnvironmentRecord {
                python: found,
                ..record
            })?)
        }
        .await;
        if result.is_err() {
            let _ = self.runtime.destroy(&sandbox.id).await;
            let _ = self.index.sandbox_ended(&sandbox.id);
        }
        result
    }

    /// What `python3` in the sandbox says its version is.
    async fn python_release(&self, sandbox: &str) -> Result<String, EnvError> {
        let envd = self.runtime.envd(sandbox).await?;
        let out = envd
            .output(
                ExecRequest {
                    argv: vec![
                        "python3".into(),
                        "-c".into(),
                        "import platform; print(platform.python_version())".into(),
                    ],
                    ..Default::default()
                },
                4096,
            )
            .await?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.code != Some(0) || text.is_empty() {
            return Err(EnvError::WrongPython {
                expected: "any".into(),
                found: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(text)
    }

    /// Every environment, newest first.
    pub fn list(&self) -> Result<Vec<EnvironmentRecord>, EnvError> {
        Ok(self.index.environments()?)
    }

    /// The environment with this id or name.
    pub fn get(&self, id_or_name: &str) -> Result<EnvironmentRecord, EnvError> {
        Ok(self.index.environment(id_or_name)?)
    }

    /// Whether the environment's sandbox is running.
    pub async fn running(&self, env: &EnvironmentRecord) -> bool {
        matches!(
            self.runtime.get(&env.sandbox).await,
            Ok(sb) if sb.status == hangar_sandbox::Status::Running
        )
    }

    /// envd in the environment's sandbox.
    pub async fn envd(&self, env: &EnvironmentRecord) -> Result<EnvdClient, EnvError> {
        Ok(self.runtime.envd(&env.sandbox).await?)
    }

    /// Destroys the environment's sandbox and forgets it.
    pub async fn remove(&self, id_or_name: &str) -> Result<EnvironmentRecord, EnvError> {
        let env = self.index.environment(id_or_name)?;
        match self.runtime.destroy(&env.sandbox).await {
            Ok(()) | Err(SandboxError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.index.sandbox_ended(&env.sandbox)?;
        self.index.remove_environment(&env.id)?;
        Ok(env)
    }
}

/// `env-` and 16 hex digits.
fn new_id() -> Result<String, EnvError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(format!(
        "env-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn python_versions_map_to_debian_suites() {
        assert_eq!(python_for("3.9").unwrap().suite, "bullseye");
        assert_eq!(python_for("3.9.2").unwrap().suite, "bullseye");
        assert_eq!(python_for(" python3.11 ").unwrap().suite, "bookworm");
        assert_eq!(python_for(DEFAULT_PYTHON).unwrap().release, "3.11.2");
    }

    #[test]
    fn an_unavailable_python_names_what_is_available() {
        for asked in ["3.8", "3.9.7", "2", "", "3.12"] {
            let e = python_for(asked).unwrap_err().to_string();
            assert!(
                e.contains("3.9 (3.9.2, Debian bullseye), 3.11 (3.11.2, Debian bookworm)"),
                "{e}"
            );
        }
    }

    #[test]
    fn names_are_checked() {
        for ok in ["collab-py", "a", "team_1.env"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "-x", ".x", "a b", "a/b", &"x".repeat(64), "é"] {
            assert!(
                matches!(check_name(bad), Err(EnvError::InvalidName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_recipe_parses_and_uses_the_suite() {
        let r = hangar_images::Recipe::parse(&recipe(python_for("3.9").unwrap()), None).unwrap();
        assert_eq!(r.base.to_string(), "debian:bullseye");
        assert!(r.packages.contains(&"python3".to_string()));
    }
}
