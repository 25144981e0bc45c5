//! The repositories Slack requests may go to, behind [`RepoDirectory`]: the repository
//! registry (`hangar repo add`, in the index) and `[[slack.repos]]` in the configuration.

use hangar_config::RepoSettings;

/// A repository and what helps the classifier recognise it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// Its name, e.g. `acme/app`: what sessions are created for.
    pub name: String,
    /// Where it is cloned from.
    pub url: Option<String>,
    /// Its default branch.
    pub default_branch: String,
    /// What it is.
    pub description: String,
    /// Words that point to it.
    pub keywords: Vec<String>,
    /// Channel names (without `#`) where requests are usually about it.
    pub channels: Vec<String>,
}

/// Where the repositories come from.
pub trait RepoDirectory: Send + Sync {
    /// Every repository requests may go to.
    fn repositories(&self) -> Vec<Repository>;
}

/// A fixed list, e.g. from the configuration.
#[derive(Debug, Clone, Default)]
pub struct FixedRepos(pub Vec<Repository>);

impl RepoDirectory for FixedRepos {
    fn repositories(&self) -> Vec<Repository> {
        self.0.clone()
    }
}

impl From<&[RepoSettings]> for FixedRepos {
    fn from(settings: &[RepoSettings]) -> FixedRepos {
        FixedRepos(
            settings
                .iter()
                .map(|r| Repository {
                    name: r.name.trim().to_string(),
                    url: r.url.clone(),
                    default_branch: r.default_branch.clone(),
                    description: r.description.clone(),
                    keywords: r.keywords.clone(),
                    channels: r
                        .channels
                        .iter()
                        .map(|c| c.trim_start_matches('#').to_string())
                        .collect(),
                })
                .collect(),
        )
    }
}

/// The repository registry in the index (`hangar repo add`), plus any `[[slack.repos]]`
/// entries: a name in both takes the registry's URL and branch, and the hints of both.
/// Registry hints that start with `#` are channels; the others are keywords.
pub struct RegistryRepos {
    store: std::sync::Arc<hangar_store::Store>,
    configured: FixedRepos,
}

impl RegistryRepos {
    /// The registry in `store`, with `configured` added.
    pub fn new(
        store: std::sync::Arc<hangar_store::Store>,
        configured: FixedRepos,
    ) -> RegistryRepos {
        RegistryRepos { store, configured }
    }
}

impl RepoDirectory for RegistryRepos {
    fn repositories(&self) -> Vec<Repository> {
        let registered = self.store.repos().unwrap_or_else(|e| {
            tracing::error!("reading the repository registry: {e}");
            Vec::new()
        });
        let mut out: Vec<Repository> = registered
            .into_iter()
            .map(|r| {
                let (channels, keywords): (Vec<String>, Vec<String>) =
                    r.hints.into_iter().partition(|h| h.starts_with('#'));
                Repository {
                    name: r.name,
                    url: Some(r.url),
                    default_branch: r.default_branch,
                    description: r.description,
                    keywords,
                    channels: channels
                        .iter()
                        .map(|c| c.trim_start_matches('#').to_string())
                        .collect(),
                }
            })
            .collect();
        for c in self.configured.repositories() {
            match out.iter_mut().find(|r| r.name == c.name) {
                Some(r) => {
                    if r.description.is_empty() {
                        r.description = c.description;
                    }
                    r.keywords.extend(c.keywords);
                    r.channels.extend(c.channels);
                }
                None => out.push(c),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_registry_and_the_configuration_are_merged() {
        let store = std::sync::Arc::new(hangar_store::Store::open_in_memory().unwrap());
        store
            .add_repo(&hangar_store::NewRepo {
                name: "acme/app".into(),
                url: "https://git.example.com/acme/app.git".into(),
                default_branch: "trunk".into(),
                description: "The web app".into(),
                hints: vec!["#app-dev".into(), "checkout".into()],
                ..Default::default()
            })
            .unwrap();
        let configured = FixedRepos::from(
            &[
                RepoSettings {
                    name: "acme/app".into(),
                    url: None,
                    default_branch: "main".into(),
                    description: "ignored: the registry has one".into(),
                    keywords: vec!["cart".into()],
                    channels: vec!["#web".into()],
                },
                RepoSettings {
                    name: "acme/api".into(),
                    url: None,
                    default_branch: "main".into(),
                    description: "The API".into(),
                    keywords: vec![],
                    channels: vec![],
                },
            ][..],
        );
        let repos = RegistryRepos::new(store, configured).repositories();
        assert_eq!(repos.len(), 2);
        assert_eq!(repos[0].name, "acme/app");
        assert_eq!(repos[0].default_branch, "trunk");
        assert_eq!(repos[0].description, "The web app");
        assert_eq!(repos[0].keywords, ["checkout", "cart"]);
        assert_eq!(repos[0].channels, ["app-dev", "web"]);
        assert_eq!(repos[1].name, "acme/api");
    }
}
