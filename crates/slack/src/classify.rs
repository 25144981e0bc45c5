//! The repository classifier: which repository a Slack request is about.
//!
//! A repository named in the request (`acme/app`) is taken as said, without asking a
//! model. Otherwise a fast model, reached through the agent's provider layer, gets the
//! request, the thread's earlier messages, the channel's name and each repository's
//! description and hints, and answers with JSON: a repository or `"unknown"`, and a
//! confidence. Anything short of a confident, known answer (unknown, low confidence, an
//! unparseable answer, a failed request) makes the bot ask the person to choose; it never
//! guesses silently.

use std::time::Duration;

use futures_util::StreamExt;
use hangar_agent::{Message, ModelEvent, ModelRequest, Provider, Role};
use serde::Deserialize;

use crate::repos::Repository;

/// The most repositories offered as buttons.
pub const MAX_CHOICES: usize = 5;

/// How long the model may take.
const MODEL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the classifier is given.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// The request.
    pub message: &'a str,
    /// The thread's earlier messages, oldest first.
    pub thread: &'a [String],
    /// The channel's name (`None` for a direct message).
    pub channel: Option<&'a str>,
}

/// The classifier's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Work in this repository.
    Chosen {
        /// Its name.
        repo: String,
        /// How sure (1 when it was named).
        confidence: f64,
    },
    /// Ask the person; `choices` are the likeliest repositories first.
    Ask {
        /// Repository names to offer.
        choices: Vec<String>,
        /// Why the classifier could not decide, for the log.
        why: String,
    },
}

/// Picks repositories for requests.
#[derive(Debug, Clone)]
pub struct Classifier {
    model: Option<Provider>,
    min_confidence: f64,
}

impl Classifier {
    /// A classifier asking `model` (none: only named repositories are recognised), using
    /// answers at or above `min_confidence`.
    pub fn new(model: Option<Provider>, min_confidence: f64) -> Classifier {
        Classifier {
            model,
            min_confidence,
        }
    }

    /// Which of `repos` `request` is about.
    pub async fn classify(&self, request: &Request<'_>, repos: &[Repository]) -> Verdict {
        match repos {
            [] => {
                return Verdict::Ask {
                    choices: Vec::new(),
                    why: "no repositories are configured".into(),
                };
            }
            [only] => {
                return Verdict::Chosen {
                    repo: only.name.clone(),
                    confidence: 1.0,
                };
            }
            _ => {}
        }
        if let Some(repo) = named_repo(request.message, repos) {
            return Verdict::Chosen {
                repo,
                confidence: 1.0,
            };
        }
        let Some(model) = &self.model else {
            return ask(
                None,
                request,
                repos,
                "no classifier model is configured".into(),
            );
        };
        let model_request = ModelRequest {
            system: SYSTEM.to_string(),
            messages: vec![Message::text(Role::User, prompt(request, repos))],
            tools: Vec::new(),
            max_tokens: 200,
        };
        let text = match tokio::time::timeout(MODEL_TIMEOUT, answer(model, &model_request)).await {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => return ask(None, request, repos, format!("the classifier failed: {e}")),
            Err(_) => return ask(None, request, repos, "the classifier timed out".into()),
        };
        match parse_answer(&text, repos) {
            Some((Some(repo), confidence)) if confidence >= self.min_confidence => {
                Verdict::Chosen { repo, confidence }
            }
            Some((suggested, confidence)) => ask(
                suggested.as_deref(),
                request,
                repos,
                format!("the classifier was unsure ({suggested:?}, confidence {confidence})"),
            ),
            None => ask(
                None,
                request,
                repos,
                format!("the classifier's answer was not understood: {text:?}"),
            ),
        }
    }
}

const SYSTEM: &str = "You route requests from a team's Slack to the code repository they are about. \
Use the request, the earlier messages of its thread, the channel's name and each repository's \
description, keywords and channels. Answer with one JSON object and nothing else: \
{\"repo\": \"<one of the repository names, or unknown>\", \"confidence\": <0 to 1>}. \
Say unknown rather than guess.";

/// The classifier's question: everything it may use, in plain text.
pub fn prompt(request: &Request<'_>, repos: &[Repository]) -> String {
    let mut out = String::from("Repositories:\n");
    for r in repos {
        out.push_str(&format!("- {}: {}", r.name, one_line(&r.description)));
        if !r.keywords.is_empty() {
            out.push_str(&format!(" (keywords: {})", r.keywords.join(", ")));
        }
        if !r.channels.is_empty() {
            let channels: Vec<String> = r.channels.iter().map(|c| format!("#{c}")).collect();
            out.push_str(&format!(" (channels: {})", channels.join(", ")));
        }
        out.push('\n');
    }
    match request.channel {
        Some(c) => out.push_str(&format!("\nChannel: #{c}\n")),
        None => out.push_str("\nChannel: a direct message\n"),
    }
    if !request.thread.is_empty() {
        out.push_str("\nEarlier messages in the thread, oldest first:\n");
        for m in request.thread {
            out.push_str(&format!("> {}\n", one_line(m)));
        }
    }
    out.push_str(&format!("\nRequest: {}\n", request.message));
    out
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The one repository whose full name the text mentions, if exactly one is.
pub fn named_repo(text: &str, repos: &[Repository]) -> Option<String> {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| {
            c.is_whitespace()
                || matches!(
                    c,
                    ',' | ';' | '`' | '*' | '(' | ')' | '"' | '\'' | '<' | '>' | '|'
                )
        })
        .map(|w| w.trim_end_matches(['.', ':', '!', '?']))
        .collect();
    let mut found = repos
        .iter()
        .filter(|r| words.contains(&r.name.to_lowercase().as_str()));
    match (found.next(), found.next()) {
        (Some(r), None) => Some(r.name.clone()),
        _ => None,
    }
}

/// Decodes the model's answer: the repository (`None` for unknown) and the confidence.
/// `None` when it is not the JSON asked for or names a repository that does not exist.
pub fn parse_answer(text: &str, repos: &[Repository]) -> Option<(Option<String>, f64)> {
    #[derive(Deserialize)]
    struct Answer {
        repo: String,
        #[serde(default)]
        confidence: Option<f64>,
    }
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    let answer: Answer = serde_json::from_str(text.get(start..=end)?).ok()?;
    let confidence = answer.confidence.unwrap_or(0.0).clamp(0.0, 1.0);
    if answer.repo.eq_ignore_ascii_case("unknown") {
        return Some((None, confidence));
    }
    let repo = repos
        .iter()
        .find(|r| r.name.eq_ignore_ascii_case(answer.repo.trim()))?;
    Some((Some(repo.name.clone()), confidence))
}

/// An `Ask` verdict offering `suggested` first, then the repositories the request's words
/// and channel point to, then the rest, at most [`MAX_CHOICES`].
fn ask(
    suggested: Option<&str>,
    request: &Request<'_>,
    repos: &[Repository],
    why: String,
) -> Verdict {
    let text = format!("{} {}", request.message, request.thread.join(" ")).to_lowercase();
    let mut scored: Vec<(usize, usize, &Repository)> = repos
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut score = 0;
            if Some(r.name.as_str()) == suggested {
                score += 100;
            }
            if let Some(c) = request.channel
                && r.channels.iter().any(|h| h.trim_start_matches('#') == c)
            {
                score += 10;
            }
            score += r
                .keywords
                .iter()
                .filter(|k| !k.is_empty() && text.contains(&k.to_lowercase()))
                .count();
            (score, i, r)
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    Verdict::Ask {
        choices: scored
            .into_iter()
            .take(MAX_CHOICES)
            .map(|(_, _, r)| r.name.clone())
            .collect(),
        why,
    }
}

/// The model's whole text answer.
async fn answer(model: &Provider, request: &ModelRequest) -> Result<String, String> {
    let mut stream = model.stream(request);
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(ModelEvent::TextDelta(t)) => text.push_str(&t),
            Ok(ModelEvent::Done(_)) => break,
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn repo(name: &str, description: &str, keywords: &[&str], channels: &[&str]) -> Repository {
        Repository {
            name: name.into(),
            url: None,
            default_branch: "main".into(),
            description: description.into(),
            keywords: keywords.iter().map(|s| s.to_string()).collect(),
            channels: channels.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn repos() -> Vec<Repository> {
        vec![
            repo(
                "acme/app",
                "The web app",
                &["checkout", "frontend"],
                &["app-dev"],
            ),
            repo(
                "acme/api",
                "The REST API",
                &["billing", "endpoint"],
                &["api-dev"],
            ),
            repo("acme/infra", "Terraform", &["terraform"], &[]),
        ]
    }

    #[test]
    fn a_named_repository_is_recognised_once() {
        let r = repos();
        assert_eq!(
            named_repo("fix the footer in acme/app please", &r).as_deref(),
            Some("acme/app")
        );
        assert_eq!(
            named_repo("In `ACME/API`: add an endpoint.", &r).as_deref(),
            Some("acme/api")
        );
        assert_eq!(named_repo("move acme/app code to acme/api", &r), None);
        assert_eq!(named_repo("acme/apps is not a repo", &r), None);
    }

    #[test]
    fn answers_are_parsed_strictly() {
        let r = repos();
        assert_eq!(
            parse_answer("{\"repo\": \"acme/api\", \"confidence\": 0.9}", &r),
            Some((Some("acme/api".into()), 0.9))
        );
        assert_eq!(
            parse_answer(
                "Sure: {\"repo\":\"unknown\",\"confidence\":0.2} hope it helps",
                &r
            ),
            Some((None, 0.2))
        );
        assert_eq!(
            parse_answer("{\"repo\": \"acme/other\", \"confidence\": 1}", &r),
            None
        );
        assert_eq!(parse_answer("acme/app", &r), None);
        assert_eq!(
            parse_answer("{\"repo\": \"acme/app\", \"confidence\": 7}", &r),
            Some((Some("acme/app".into()), 1.0))
        );
    }

    #[test]
    fn the_prompt_carries_every_hint() {
        let thread = vec!["the checkout page is slow".to_string()];
        let p = prompt(
            &Request {
                message: "can you look at it?",
                thread: &thread,
                channel: Some("app-dev"),
            },
            &repos(),
        );
        for needle in [
            "acme/app: The web app (keywords: checkout, frontend) (channels: #app-dev)",
            "Channel: #app-dev",
            "> the checkout page is slow",
            "Request: can you look at it?",
        ] {
            assert!(p.contains(needle), "{needle:?} missing from {p}");
        }
    }

    #[tokio::test]
    async fn without_a_model_unnamed_requests_ask_with_hinted_repositories_first() {
        let c = Classifier::new(None, 0.7);
        let v = c
            .classify(
                &Request {
                    message: "the billing endpoint is broken",
                    thread: &[],
                    channel: Some("app-dev"),
                },
                &repos(),
            )
            .await;
        let Verdict::Ask { choices, .. } = v else {
            panic!("{v:?}")
        };
        // #app-dev points to acme/app (10), billing+endpoint to acme/api (2).
        assert_eq!(choices, ["acme/app", "acme/api", "acme/infra"]);
        let one = c
            .classify(
                &Request {
                    message: "anything",
                    ..Default::default()
                },
                &repos()[..1],
            )
            .await;
        assert_eq!(
            one,
            Verdict::Chosen {
                repo: "acme/app".into(),
                confidence: 1.0
            }
        );
    }
}
