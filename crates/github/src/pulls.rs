//! Opening a pull request with a user's token
//! (<https://docs.github.com/en/rest/pulls/pulls#create-a-pull-request>). When GitHub
//! answers 422 "A pull request already exists", the existing one is looked up and returned:
//! asking twice is not an error.

use serde::{Deserialize, Serialize};

use crate::{Api, GitHubError, RepoName, Secret};

/// What to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenPullRequest {
    /// The repository.
    pub repo: RepoName,
    /// The branch with the changes (in the same repository).
    pub head: String,
    /// The branch to merge into; the repository's default branch when `None`.
    pub base: Option<String>,
    /// Title.
    pub title: String,
    /// Description.
    pub body: String,
}

/// A pull request on GitHub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PullRequestRef {
    /// Its number.
    pub number: i64,
    /// Its web address.
    pub url: String,
    /// Its title.
    pub title: String,
    /// `open` or `closed`.
    pub state: String,
    /// The branch it merges.
    pub head: String,
    /// The branch it merges into.
    pub base: String,
    /// True when it existed already (GitHub answered 422 and it was looked up).
    pub existed: bool,
}

#[derive(Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    name: String,
}

#[derive(Deserialize)]
struct Pull {
    number: i64,
    html_url: String,
    title: String,
    state: String,
    head: Branch,
    base: Branch,
}

impl Pull {
    fn into_ref(self, existed: bool) -> PullRequestRef {
        PullRequestRef {
            number: self.number,
            url: self.html_url,
            title: self.title,
            state: self.state,
            head: self.head.name,
            base: self.base.name,
            existed,
        }
    }
}

#[derive(Deserialize)]
struct Repository {
    default_branch: String,
}

fn user_error(answer: &crate::api::Answer, what: &str) -> GitHubError {
    if answer.status == 401 {
        GitHubError::SignInRequired(format!(
            "GitHub refused your token while {what} ({})",
            answer.message()
        ))
    } else {
        answer.error(what)
    }
}

/// Opens `req` as the owner of `token`, or finds the one already open for its branch.
pub(crate) async fn open(
    api: &Api,
    token: &Secret,
    req: &OpenPullRequest,
) -> Result<PullRequestRef, GitHubError> {
    let repo = &req.repo;
    let base = match &req.base {
        Some(b) => b.clone(),
        None => {
            let what = format!("reading {repo}");
            let answer = api
                .get(
                    token.expose(),
                    &format!("/repos/{}/{}", repo.owner, repo.name),
                    &what,
                )
                .await?;
            if answer.status != 200 {
                return Err(user_error(&answer, &what));
            }
            answer.decode::<Repository>(&what)?.default_branch
        }
    };
    let what = format!("opening a pull request from {} on {repo}", req.head);
    let body = serde_json::json!({
        "title": req.title,
        "head": req.head,
        "base": base,
        "body": req.body,
    });
    let answer = api
        .post(
            token.expose(),
            &format!("/repos/{}/{}/pulls", repo.owner, repo.name),
            &body,
            &what,
        )
        .await?;
    match answer.status {
        201 | 200 => Ok(answer.decode::<Pull>(&what)?.into_ref(false)),
        422 if answer.message().contains("already exists") => {
            existing(api, token, repo, &req.head, &base).await
        }
        _ => Err(user_error(&answer, &what)),
    }
}

async fn existing(
    api: &Api,
    token: &Secret,
    repo: &RepoName,
    head: &str,
    base: &str,
) -> Result<PullRequestRef, GitHubError> {
    let what = format!("finding the open pull request from {head} on {repo}");
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("head", &format!("{}:{head}", repo.owner))
        .append_pair("base", base)
        .append_pair("state", "open")
        .finish();
    let path = format!("/repos/{}/{}/pulls?{query}", repo.owner, repo.name);
    let answer = api.get(token.expose(), &path, &what).await?;
    if answer.status != 200 {
        return Err(user_error(&answer, &what));
    }
    let pulls: Vec<Pull> = answer.decode(&what)?;
    pulls
        .into_iter()
        .next()
        .map(|p| p.into_ref(true))
        .ok_or(GitHubError::NotFound { what })
}
