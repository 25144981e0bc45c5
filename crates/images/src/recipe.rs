//! The recipe: `hangar.toml` at a repository's root (or registered separately), which says
//! how to build the repository's image. The format is documented for people in
//! `docs/recipes.md`; this module parses and validates it and has no I/O.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the repository is checked out inside the image unless the recipe says otherwise.
pub const DEFAULT_WORKDIR: &str = "/workspace";
/// How long one step may run unless the recipe says otherwise.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A parsed, validated recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// What the image starts from.
    pub base: Base,
    /// Debian packages to add. With a `debian:` base they are part of the base
    /// (mmdebstrap `--include`); otherwise they are installed with apt in a build step.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Where the repository is checked out (absolute).
    #[serde(default = "default_workdir")]
    pub workdir: String,
    /// Environment of every step and of sessions.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Steps that install dependencies and build, in order.
    #[serde(default)]
    pub setup: Vec<Step>,
    /// Steps run once after setup to warm caches (e.g. the test suite). A failing warm
    /// step is reported but does not fail the build: its caches are kept.
    #[serde(default)]
    pub warm: Vec<Step>,
    /// Commands a session runs when its sandbox starts (e.g. a database in the
    /// background), in order.
    #[serde(default)]
    pub start: Vec<String>,
    /// Resource limits of build sandboxes and sessions.
    #[serde(default)]
    pub limits: RecipeLimits,
    /// Network policy.
    #[serde(default)]
    pub network: NetworkPolicy,
    /// Plugins for this repository's sessions (`docs/plugins.md`), run inside each
    /// session's sandbox, in the checkout, beside the deployment's plugins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<RecipePlugin>,
}

/// A repository's plugin: a program in the session's sandbox speaking the plugin protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipePlugin {
    /// The program and its arguments, run in the workdir (e.g.
    /// `["python3", ".hangar/guard.py"]`).
    pub command: Vec<String>,
    /// How long a hook may take (e.g. "5s"); 10 s otherwise.
    #[serde(default)]
    pub timeout: Option<String>,
}

impl RecipePlugin {
    /// How long a hook may take before it counts as unanswered.
    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(parse_duration)
            .unwrap_or(Duration::from_secs(10))
    }
}

fn default_workdir() -> String {
    DEFAULT_WORKDIR.into()
}

/// What an image starts from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Base {
    /// The host's root filesystem, read-only (fast; weaker isolation; tests and trusted
    /// setups only).
    Host,
    /// A minimal Debian of this suite, built once with mmdebstrap and cached.
    Debian {
        /// The suite, e.g. `bullseye`.
        suite: String,
    },
    /// A rootfs tarball on the host (plain, gzip, xz or zstd).
    Rootfs {
        /// The tarball.
        path: PathBuf,
    },
    /// An OCI image layout, as a directory or a tarball (e.g. `skopeo copy ...
    /// oci-archive:FILE`), optionally naming the image by its `ref.name`.
    Oci {
        /// The layout.
        path: PathBuf,
        /// The image's reference name inside the layout; the only image when unset.
        reference: Option<String>,
    },
}

impl TryFrom<String> for Base {
    type Error = String;

    fn try_from(s: String) -> Result<Base, String> {
        let expected =
            "expected \"host\", \"debian:<suite>\", \"rootfs:<tarball>\" or \"oci:<layout>[#ref]\"";
        if s == "host" {
            return Ok(Base::Host);
        }
        let Some((kind, rest)) = s.split_once(':') else {
            return Err(format!("unknown base {s:?}: {expected}"));
        };
        if rest.is_empty() {
            return Err(format!(
                "base {s:?} names nothing after the colon: {expected}"
            ));
        }
        match kind {
            "debian" => {
                if !rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                {
                    return Err(format!("{rest:?} is not a Debian suite name"));
                }
                Ok(Base::Debian {
                    suite: rest.to_string(),
                })
            }
            "rootfs" => Ok(Base::Rootfs { path: rest.into() }),
            "oci" => {
                let (path, reference) = match rest.split_once('#') {
                    Some((p, r)) => (p, Some(r.to_string())),
                    None => (rest, None),
                };
                Ok(Base::Oci {
                    path: path.into(),
                    reference,
                })
            }
            _ => Err(format!("unknown base {s:?}: {expected}")),
        }
    }
}

impl From<Base> for String {
    fn from(b: Base) -> String {
        b.to_string()
    }
}

impl std::fmt::Display for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Base::Host => f.write_str("host"),
            Base::Debian { suite } => write!(f, "debian:{suite}"),
            Base::Rootfs { path } => write!(f, "rootfs:{}", path.display()),
            Base::Oci { path, reference } => {
                write!(f, "oci:{}", path.display())?;
                if let Some(r) = reference {
                    write!(f, "#{r}")?;
                }
                Ok(())
            }
        }
    }
}

/// One build step: a shell command run in the workdir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A short name for logs and errors; defaults to the command's first line.
    #[serde(default)]
    pub name: Option<String>,
    /// The command, run with `/bin/sh -c` in the workdir.
    pub run: String,
    /// Repository files this step needs (paths relative to the repository root; a
    /// directory means everything under it). A step that declares inputs runs before the
    /// checkout with only those files in the workdir, and is rebuilt only when they
    /// change; a step without inputs sees the whole checkout.
    #[serde(default)]
    pub inputs: Option<Vec<String>>,
    /// This step's own time limit (e.g. "10m"); the recipe's `limits.step_timeout`
    /// otherwise.
    #[serde(default)]
    pub timeout: Option<String>,
}

impl Step {
    /// The name shown in logs: the given one, or the command's first line, shortened.
    pub fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let first = self.run.lines().next().unwrap_or("").trim();
        if first.chars().count() > 48 {
            format!("{}…", first.chars().take(47).collect::<String>())
        } else {
            first.to_string()
        }
    }
}

/// Resource limits from a recipe; unset ones take the deployment's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeLimits {
    /// Memory, e.g. "4GiB".
    pub memory: Option<String>,
    /// CPUs (fractions allowed).
    pub cpus: Option<f64>,
    /// Processes and threads.
    pub pids: Option<u64>,
    /// Time limit of one build step, e.g. "30m" (default 30 minutes).
    pub step_timeout: Option<String>,
}

/// Network access during builds and in sessions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    /// Build steps: `egress` (default) or `none`.
    #[serde(default = "egress")]
    pub build: NetworkMode,
    /// Sessions: `none` (default) or `egress`.
    #[serde(default)]
    pub session: NetworkMode,
}

impl Default for NetworkPolicy {
    fn default() -> Self {
        NetworkPolicy {
            build: NetworkMode::Egress,
            session: NetworkMode::None,
        }
    }
}

fn egress() -> NetworkMode {
    NetworkMode::Egress
}

/// A network mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Loopback only.
    #[default]
    None,
    /// Outbound access through NAT.
    Egress,
}

/// A recipe that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// Not valid TOML, an unknown key or a wrong type; the message names the line,
    /// column and key.
    #[error("invalid recipe{}: {message}", origin.as_deref().map(|o| format!(" {o}")).unwrap_or_default())]
    Syntax {
        /// Where the recipe came from, e.g. its file.
        origin: Option<String>,
        /// The parser's message with line, column and key.
        message: String,
    },
    /// Well-formed but unusable.
    #[error("invalid recipe{}: {message}", origin.as_deref().map(|o| format!(" {o}")).unwrap_or_default())]
    Invalid {
        /// Where the recipe came from.
        origin: Option<String>,
        /// What is wrong and what to do.
        message: String,
    },
}

impl Recipe {
    /// Parses and validates a recipe. `origin` (e.g. a file name) is named in errors.
    pub fn parse(text: &str, origin: Option<&str>) -> Result<Recipe, RecipeError> {
        let recipe: Recipe = toml::from_str(text).map_err(|e| RecipeError::Syntax {
            origin: origin.map(str::to_owned),
            message: syntax_message(text, &e),
        })?;
        recipe.validate().map_err(|message| RecipeError::Invalid {
            origin: origin.map(str::to_owned),
            message,
        })?;
        Ok(recipe)
    }

    /// The recipe as TOML (for storing beside an image and hashing).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Every step in build order: setup, then warm; `true` marks warm steps.
    pub fn steps(&self) -> impl Iterator<Item = (&Step, bool)> {
        self.setup
            .iter()
            .map(|s| (s, false))
            .chain(self.warm.iter().map(|s| (s, true)))
    }

    /// The time limit of a step.
    pub fn step_timeout(&self, step: &Step) -> Duration {
        step.timeout
            .as_deref()
            .or(self.limits.step_timeout.as_deref())
            .and_then(parse_duration)
            .unwrap_or(DEFAULT_STEP_TIMEOUT)
    }

    fn validate(&self) -> Result<(), String> {
        if !self.workdir.starts_with('/') || self.workdir == "/" {
            return Err(format!(
                "workdir {:?} must be an absolute path below /",
                self.workdir
            ));
        }
        if self.workdir.split('/').any(|c| c == ".." || c == ".") {
            return Err(format!(
                "workdir {:?} must not contain . or ..",
                self.workdir
            ));
        }
        if matches!(self.base, Base::Host) && !self.packages.is_empty() {
            return Err(
                "packages cannot be installed on the host base; install them on the host or use base = \"debian:<suite>\"".into(),
            );
        }
        for p in &self.packages {
            if p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.:=~".contains(&b))
            {
                return Err(format!("{p:?} is not a Debian package name"));
            }
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!("env: {k:?} is not a variable name"));
            }
        }
        for (i, p) in self.plugins.iter().enumerate() {
            if p.command.first().is_none_or(|c| c.trim().is_empty()) {
                return Err(format!("plugin {}: command is empty", i + 1));
            }
            if let Some(t) = &p.timeout
                && parse_duration(t).is_none()
            {
                return Err(format!(
                    "plugin {}: timeout {t:?} is not a duration like \"5s\"",
                    i + 1
                ));
            }
        }
        let mut whole_source_seen = None;
        for (i, (step, warm)) in self.steps().enumerate() {
            let label = format!(
                "{} step {} ({})",
                if warm { "warm" } else { "setup" },
                i + 1,
                step.display_name()
            );
            if step.run.trim().is_empty() {
                return Err(format!("{label}: run is empty"));
            }
            if let Some(t) = &step.timeout
                && parse_duration(t).is_none()
            {
                return Err(format!(
                    "{label}: timeout {t:?} is not a duration like \"90s\", \"10m\" or \"1h\""
                ));
            }
            match &step.inputs {
                Some(inputs) => {
                    if let Some(earlier) = &whole_source_seen {
                        return Err(format!(
                            "{label} declares inputs but comes after {earlier}, which uses the whole checkout; move it before that step"
                        ));
                    }
                    for p in inputs {
                        if p.is_empty()
                            || p.starts_with('/')
                            || p.split('/').any(|c| c == ".." || c == ".")
                        {
                            return Err(format!(
                                "{label}: input {p:?} must be a path inside the repository, relative to its root"
                            ));
                        }
                    }
                }
                None => {
                    if whole_source_seen.is_none() {
                        whole_source_seen = Some(label);
                    }
                }
            }
        }
        if let Some(t) = &self.limits.step_timeout
            && parse_duration(t).is_none()
        {
            return Err(format!(
                "limits.step_timeout {t:?} is not a duration like \"90s\", \"10m\" or \"1h\""
            ));
        }
        if let Some(m) = &self.limits.memory
            && hangar_config::parse_size(m).is_err()
        {
            return Err(format!("limits.memory {m:?} is not a size like \"4GiB\""));
        }
        if let Some(c) = self.limits.cpus
            && !(c >= 0.01 && c.is_finite())
        {
            return Err("limits.cpus must be at least 0.01".into());
        }
        Ok(())
    }
}

/// The parser's message as one paragraph: `line L, column C: what` plus the offending line.
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            let source = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line}, column {column}: {what} (at `{source}`)")
        }
        None => what,
    }
}

/// Parses "90s", "10m", "1h", "500ms" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PYTHON: &str = r#"
base = "debian:bullseye"
packages = ["python3-pip"]

[env]
PIP_DISABLE_PIP_VERSION_CHECK = "1"

[[setup]]
name = "dependencies"
run = "pip install -r requirements.txt"
inputs = ["requirements.txt"]

[[setup]]
run = "python3 -m compileall -q ."

[[warm]]
run = "python3 -m pytest -q"
timeout = "10m"

[limits]
memory = "4GiB"
step_timeout = "20m"

[network]
session = "egress"
"#;

    #[test]
    fn a_full_recipe_parses() {
        let r = Recipe::parse(PYTHON, Some("hangar.toml")).unwrap();
        assert_eq!(
            r.base,
            Base::Debian {
                suite: "bullseye".into()
            }
        );
        assert_eq!(r.workdir, "/workspace");
        assert_eq!(r.setup.len(), 2);
        assert_eq!(r.setup[0].display_name(), "dependencies");
        assert_eq!(r.setup[1].display_name(), "python3 -m compileall -q .");
        assert_eq!(r.network.build, NetworkMode::Egress);
        assert_eq!(r.network.session, NetworkMode::Egress);
        assert_eq!(r.step_timeout(&r.setup[0]), Duration::from_secs(1200));
        assert_eq!(r.step_timeout(&r.warm[0]), Duration::from_secs(600));
        // The stored form parses back to the same recipe.
        assert_eq!(Recipe::parse(&r.to_toml(), None).unwrap(), r);
    }

    #[test]
    fn the_smallest_recipe_is_a_base() {
        let r = Recipe::parse("base = \"host\"", None).unwrap();
        assert!(r.setup.is_empty());
        assert_eq!(r.network, NetworkPolicy::default());
    }

    #[test]
    fn bases_parse_and_print_back() {
        for s in [
            "host",
            "debian:bookworm",
            "rootfs:/srv/rootfs.tar.zst",
            "oci:/srv/img.tar",
            "oci:/srv/layout#v1",
        ] {
            let b = Base::try_from(s.to_string()).unwrap();
            assert_eq!(b.to_string(), s);
        }
        assert!(Base::try_from("ubuntu".to_string()).is_err());
        assert!(Base::try_from("debian:".to_string()).is_err());
        assert!(Base::try_from("debian:Bad Suite".to_string()).is_err());
    }

    #[test]
    fn an_unknown_key_names_its_line_column_and_key() {
        let e = Recipe::parse(
            "base = \"host\"\n\n[[setup]]\nrun = \"make\"\nrn = \"x\"\n",
            Some("hangar.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("hangar.toml"), "{e}");
        assert!(e.contains("line 5, column 1"), "{e}");
        assert!(e.contains("unknown field `rn`"), "{e}");
    }

    #[test]
    fn a_wrong_type_names_its_line_and_key() {
        let e = Recipe::parse("base = \"host\"\n[limits]\ncpus = \"two\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("cpus"), "{e}");
    }

    #[test]
    fn a_missing_base_and_bad_toml_are_reported() {
        let e = Recipe::parse("packages = []", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `base`"), "{e}");
        let e = Recipe::parse("base = \"host\"\n[[setup]\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = Recipe::parse("base = \"centos:7\"", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown base"), "{e}");
    }

    #[test]
    fn unusable_recipes_say_what_to_do() {
        let cases = [
            (
                "base = \"host\"\npackages = [\"git\"]",
                "cannot be installed on the host",
            ),
            ("base = \"host\"\nworkdir = \"rel\"", "absolute"),
            ("base = \"host\"\n[[setup]]\nrun = \" \"", "run is empty"),
            (
                "base = \"host\"\n[[setup]]\nrun = \"x\"\ntimeout = \"soon\"",
                "not a duration",
            ),
            (
                "base = \"host\"\n[[setup]]\nrun = \"x\"\ninputs = [\"../etc\"]",
                "inside the repository",
            ),
            (
                "base = \"host\"\n[[setup]]\nrun = \"make\"\n[[setup]]\nrun = \"pip\"\ninputs = [\"a\"]",
                "move it before",
            ),
            ("base = \"host\"\n[limits]\nmemory = \"lots\"", "not a size"),
            (
                "base = \"debian:bullseye\"\npackages = [\"a b\"]",
                "not a Debian package",
            ),
            (
                "base = \"host\"\n[[plugins]]\ncommand = []",
                "command is empty",
            ),
            (
                "base = \"host\"\n[[plugins]]\ncommand = [\"x\"]\ntimeout = \"later\"",
                "not a duration",
            ),
            ("base = \"host\"\n[[plugins]]\ncmd = [\"x\"]", "cmd"),
        ];
        for (text, want) in cases {
            let e = Recipe::parse(text, None).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn every_example_in_the_docs_parses() {
        let doc = include_str!("../../../docs/recipes.md");
        let mut n = 0;
        for block in doc.split("```toml").skip(1) {
            let text = block.split("```").next().unwrap();
            Recipe::parse(text, Some("docs/recipes.md")).unwrap();
            n += 1;
        }
        assert_eq!(n, 4, "the reference and the Python, Rust and Node examples");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("x"), None);
    }
}
