//! The repositories Slack requests may go to, behind [`RepoDirectory`] so the source can
//! change (today the `[[slack.repos]]` configuration) without touching the bot.

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
