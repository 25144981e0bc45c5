//! Session client commands: `hangar run`, `sessions`, `attach`, `stop`, `share`, `slack link`. They talk
//! to a server (`--server`/`HANGAR_SERVER`, else the one `hangar login` saved) with a token
//! (`--token`/`HANGAR_TOKEN`, else the saved one), over the HTTP API and the session
//! WebSocket.

use std::io::Write;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::login_cmd::{Credentials, credentials_path};

/// Where the server is and how to authenticate.
#[derive(Args, Clone)]
pub struct Remote {
    /// The server's URL (default: the one `hangar login` saved, else http://127.0.0.1:7070).
    #[arg(long, env = "HANGAR_SERVER")]
    server: Option<String>,
    /// An API token or a share link's token (default: the one `hangar login` saved).
    #[arg(long, env = "HANGAR_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
pub enum SessionCommand {
    /// Start a session with a prompt and stream what the agent does until it finishes.
    Run {
        /// What to do.
        prompt: String,
        /// The repository to work on.
        #[arg(long)]
        repo: String,
        /// Print the session's id and return at once.
        #[arg(long)]
        detach: bool,
        /// Print one JSON document (the session, the prompt and how it ended).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List sessions, newest first.
    Sessions {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Follow a session's events live (from the start, or after a seq).
    Attach {
        /// The session.
        id: String,
        /// Only events after this seq.
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
        /// Print each event as one JSON line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop a session's running prompt at once; the queue goes on.
    Stop {
        /// The session.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Create a share link: a token that opens this session only.
    Share {
        /// The session.
        id: String,
        /// `view` (watch) or `prompt` (watch and prompt).
        #[arg(long, default_value = "view")]
        scope: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// The Slack app, from your side.
    #[command(subcommand)]
    Slack(SlackCommand),
}

#[derive(Subcommand)]
pub enum SlackCommand {
    /// Link your Slack account to your Hangar user with the code the bot sent you in
    /// Slack; the request you made there then starts as you.
    Link {
        /// The code from Slack.
        code: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub(crate) struct Client {
    http: reqwest::Client,
    pub(crate) server: String,
    token: String,
}

impl Client {
    pub(crate) fn new(remote: &Remote) -> anyhow::Result<Client> {
        let saved: Option<Credentials> = credentials_path()
            .ok()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| toml::from_str(&t).ok());
        let server = remote
            .server
            .clone()
            .or_else(|| saved.as_ref().map(|c| c.server.clone()))
            .unwrap_or_else(|| "http://127.0.0.1:7070".into());
        let token = remote
            .token
            .clone()
            .or_else(|| saved.map(|c| c.token))
            .context("no token: run `hangar login --token TOKEN` or set HANGAR_TOKEN")?;
        Ok(Client {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .context("setting up the HTTP client")?,
            server: server.trim_end_matches('/').to_string(),
            token,
        })
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    /// A request to `path` on the server, with the token.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.server))
            .bearer_auth(&self.token)
    }

    /// Sends `req`; a non-success answer becomes an error carrying the server's message.
    pub(crate) async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                anyhow::anyhow!(
                    "cannot reach the Hangar server at {}: is it running?",
                    self.server
                )
            } else {
                anyhow::anyhow!("talking to {}: {e}", self.server)
            }
        })?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value["error"]["message"].as_str().unwrap_or("no details");
            bail!("the server answered {status}: {message}");
        }
        Ok(value)
    }

    fn ws_url(&self, id: &str, after_seq: u64) -> String {
        let base = self
            .server
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        format!("{base}/api/sessions/{id}/ws?after_seq={after_seq}")
    }

    /// Follows a session's events, handing each to `on_event` until it returns false.
    async fn follow(
        &self,
        id: &str,
        after_seq: u64,
        mut on_event: impl FnMut(&Value) -> bool,
    ) -> anyhow::Result<()> {
        let mut req = self
            .ws_url(id, after_seq)
            .into_client_request()
            .context("building the WebSocket request")?;
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", self.token)
                .parse()
                .context("the token is not valid in a header")?,
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .with_context(|| format!("connecting to session {id}'s event stream"))?;
        while let Some(msg) = ws.next().await {
            match msg.context("reading the event stream")? {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .context("the server sent something that is not JSON")?;
                    if v["type"] == "presence" {
                        continue;
                    }
                    if !on_event(&v) {
                        return Ok(());
                    }
                }
                Message::Close(frame) => {
                    let why = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason));
                    bail!(
                        "the server closed the stream ({}); reconnect with `hangar attach {id} --after-seq N`",
                        why.unwrap_or_else(|| "no reason".into())
                    );
                }
                _ => {}
            }
        }
        bail!("the event stream ended")
    }
}

/// One line (or fragment) of text for an event.
fn render(e: &Value) -> Option<String> {
    let d = &e["data"];
    let login = |v: &Value| v["login"].as_str().unwrap_or("?").to_string();
    Some(match e["type"].as_str()? {
        "model.delta" => d["text"].as_str()?.to_string(),
        "prompt.queued" => format!(
            "\n[#{} queued by {}] {}\n",
            d["prompt"]["id"],
            login(&d["prompt"]["author"]),
            d["prompt"]["text"].as_str()?
        ),
        "prompt.started" => format!(
            "\n[#{} started, asked by {}]\n",
            d["prompt_id"],
            login(&d["author"])
        ),
        "prompt.finished" => match d["error"].as_str() {
            Some(err) => format!(
                "\n[#{} {}: {err}]\n",
                d["prompt_id"],
                d["outcome"].as_str()?
            ),
            None => format!("\n[#{} {}]\n", d["prompt_id"], d["outcome"].as_str()?),
        },
        "tool.started" => format!("\n[{} {}]\n", d["tool"].as_str()?, d["input"]),
        "tool.output" => d["text"].as_str()?.to_string(),
        "tool.finished" => format!(
            "[{} {}]\n",
            if d["ok"] == true { "ok" } else { "failed" },
            d["exit_code"]
        ),
        "status" => format!("[session {}]\n", d["status"].as_str()?),
        "participant.joined" => format!("[{} joined]\n", login(&d["participant"])),
        "participant.left" => format!("[{} left]\n", login(&d["participant"])),
        "queue.updated" => return None,
        "file.changed" => format!("[{} {}]\n", d["change"].as_str()?, d["path"].as_str()?),
        "git.committed" => format!(
            "[committed {} on {} as {}]\n",
            short(d["commit"].as_str()?),
            d["branch"].as_str()?,
            d["author"].as_str()?
        ),
        "git.pushed" => format!(
            "[pushed {} ({})]\n",
            d["branch"].as_str()?,
            short(d["commit"].as_str()?)
        ),
        "git.push_failed" => format!(
            "[push of {} failed: {}]\n",
            d["branch"].as_str()?,
            d["reason"].as_str()?
        ),
        "pr.opened" => format!(
            "[pull request #{} opened: {}]\n",
            d["number"],
            d["url"].as_str()?
        ),
        "pr.updated" => format!(
            "[pull request #{} {}: {}]\n",
            d["number"],
            d["state"].as_str()?,
            d["url"].as_str()?
        ),
        "pr.reviewed" => format!(
            "[pull request #{} {} by {}]{}\n",
            d["number"],
            d["state"].as_str()?.replace('_', " "),
            d["reviewer"].as_str()?,
            d["body"]
                .as_str()
                .map(|b| format!(" {b}"))
                .unwrap_or_default()
        ),
        "pr.review_comment" => format!(
            "[{} on {}{}] {}\n",
            d["author"].as_str()?,
            d["path"].as_str()?,
            d["line"]
                .as_i64()
                .map(|l| format!(":{l}"))
                .unwrap_or_default(),
            d["body"].as_str()?
        ),
        other => format!("[{other}] {d}\n"),
    })
}

/// A commit id's first 12 digits.
fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// How `hangar run` ended when the person pressed Ctrl-C.
enum Interrupted {
    /// They stopped the agent.
    Stopped,
    /// They left it working.
    Detached,
}

/// Asks, on a terminal, whether Ctrl-C means stop the agent or detach; without one,
/// detaches (the agent keeps working).
async fn ask_stop_or_detach(client: &Client, id: &str) -> anyhow::Result<Interrupted> {
    use std::io::IsTerminal;
    let stop = if std::io::stdin().is_terminal() {
        eprint!("\nStop the agent (s) or detach and leave it working (d)? [d] ");
        let answer = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await
        .context("reading the answer")?
        .unwrap_or_default();
        answer.trim().eq_ignore_ascii_case("s")
    } else {
        false
    };
    if stop {
        client
            .call(
                reqwest::Method::POST,
                &format!("/api/sessions/{id}/stop"),
                Some(json!({})),
            )
            .await?;
        eprintln!("stopped; the session keeps its history: `hangar attach {id}`");
        Ok(Interrupted::Stopped)
    } else {
        eprintln!("detached; the agent keeps working. Follow it with `hangar attach {id}`");
        Ok(Interrupted::Detached)
    }
}

/// Prints what the session changed (its branch against the base), when it has git.
fn print_diff(diff: &Value) {
    let files = diff["files"].as_array().cloned().unwrap_or_default();
    if files.is_empty() {
        return;
    }
    println!(
        "\n{} file(s) changed on {}:",
        files.len(),
        diff["branch"].as_str().unwrap_or("?")
    );
    for f in &files {
        let count = |v: &Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
        println!(
            "  {:<50} +{} -{}",
            f["path"].as_str().unwrap_or("?"),
            count(&f["additions"]),
            count(&f["deletions"])
        );
    }
}

fn print_event(e: &Value, json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{e}");
    } else if let Some(text) = render(e) {
        let _ = write!(out, "{text}");
    }
    let _ = out.flush();
}

pub async fn run(cmd: SessionCommand) -> anyhow::Result<std::process::ExitCode> {
    use reqwest::Method;
    match cmd {
        SessionCommand::Run {
            prompt,
            repo,
            detach,
            json,
            remote,
        } => {
            let client = Client::new(&remote)?;
            let session = client
                .call(
                    Method::POST,
                    "/api/sessions",
                    Some(json!({"repo": repo, "prompt": prompt})),
                )
                .await?;
            let id = session["id"]
                .as_str()
                .context("the server sent no session id")?
                .to_string();
            if detach {
                if json {
                    println!("{}", json!({"id": id, "status": session["status"]}));
                } else {
                    println!("{id}");
                }
                return Ok(std::process::ExitCode::SUCCESS);
            }
            if !json {
                eprintln!("session {id} (follow it elsewhere with `hangar attach {id}`)");
            }
            // A spinner until the agent's first output, on a terminal only.
            let spinner =
                (!json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
                    let b = indicatif::ProgressBar::new_spinner();
                    b.set_message("waiting for the agent…");
                    b.enable_steady_tick(std::time::Duration::from_millis(120));
                    b
                });
            let mut outcome = Value::Null;
            let mut error = Value::Null;
            let mut text = String::new();
            let mut last_seq = 0;
            let mut pr = Value::Null;
            let mut spinner = spinner;
            let followed = client.follow(&id, 0, |e| {
                last_seq = e["seq"].as_u64().unwrap_or(last_seq);
                let quiet = matches!(
                    e["type"].as_str(),
                    Some(
                        "status"
                            | "queue.updated"
                            | "prompt.queued"
                            | "prompt.started"
                            | "participant.joined"
                    )
                );
                if !quiet && let Some(b) = spinner.take() {
                    b.finish_and_clear();
                }
                if !json {
                    print_event(e, false);
                }
                match e["type"].as_str() {
                    Some("model.delta") => {
                        text.push_str(e["data"]["text"].as_str().unwrap_or_default())
                    }
                    Some("pr.opened" | "pr.updated") => pr = e["data"].clone(),
                    Some("prompt.finished") => {
                        outcome = e["data"]["outcome"].clone();
                        error = e["data"]["error"].clone();
                        return false;
                    }
                    _ => {}
                }
                true
            });
            tokio::select! {
                r = followed => r?,
                _ = tokio::signal::ctrl_c() => {
                    return Ok(match ask_stop_or_detach(&client, &id).await? {
                        Interrupted::Stopped => std::process::ExitCode::FAILURE,
                        Interrupted::Detached => std::process::ExitCode::SUCCESS,
                    });
                }
            }
            // The session's changes, when its repository has git.
            let diff = client
                .call(Method::GET, &format!("/api/sessions/{id}/diff"), None)
                .await
                .unwrap_or(Value::Null);
            if json {
                println!(
                    "{}",
                    json!({"id": id, "outcome": outcome, "error": error, "text": text,
                           "last_seq": last_seq, "diff": diff, "pr": pr})
                );
            } else {
                print_diff(&diff);
                if let Some(url) = pr["url"].as_str() {
                    println!("pull request: {url}");
                }
            }
            Ok(if outcome == "done" {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            })
        }
        SessionCommand::Sessions { json, remote } => {
            let list = Client::new(&remote)?
                .call(Method::GET, "/api/sessions", None)
                .await?;
            if json {
                println!("{list}");
            } else if list.as_array().is_none_or(Vec::is_empty) {
                eprintln!("no sessions yet: start one with `hangar run \"PROMPT\" --repo REPO`");
            } else {
                for s in list.as_array().into_iter().flatten() {
                    println!(
                        "{}\t{}\t{}\t{}",
                        s["id"].as_str().unwrap_or_default(),
                        s["status"].as_str().unwrap_or_default(),
                        s["repo"].as_str().unwrap_or_default(),
                        s["title"].as_str().unwrap_or_default()
                    );
                }
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        SessionCommand::Attach {
            id,
            after_seq,
            json,
            remote,
        } => {
            Client::new(&remote)?
                .follow(&id, after_seq, |e| {
                    print_event(e, json);
                    true
                })
                .await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        SessionCommand::Slack(SlackCommand::Link { code, remote }) => {
            let r = Client::new(&remote)?
                .call(Method::POST, "/api/slack/link", Some(json!({"code": code})))
                .await?;
            println!(
                "linked Slack user {} to you; your request in Slack starts now",
                r["slack_user"].as_str().unwrap_or("?")
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        SessionCommand::Stop { id, remote } => {
            let r = Client::new(&remote)?
                .call(
                    Method::POST,
                    &format!("/api/sessions/{id}/stop"),
                    Some(json!({})),
                )
                .await?;
            match r["stopped"].as_i64() {
                Some(p) => println!("stopped prompt #{p}"),
                None => println!("nothing was running"),
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        SessionCommand::Share {
            id,
            scope,
            json,
            remote,
        } => {
            let client = Client::new(&remote)?;
            let link = client
                .call(
                    Method::POST,
                    &format!("/api/sessions/{id}/shares"),
                    Some(json!({"scope": scope})),
                )
                .await?;
            let token = link["token"].as_str().context("the server sent no token")?;
            let url = format!("{}&token={token}", client.ws_url(&id, 0));
            if json {
                println!(
                    "{}",
                    json!({"id": link["id"], "scope": link["scope"], "token": token, "ws_url": url})
                );
            } else {
                println!(
                    "Share link #{} ({}), shown only this once:\n  token: {token}\n  stream: {url}\nRevoke it with DELETE /api/shares/{}",
                    link["id"],
                    link["scope"].as_str().unwrap_or_default(),
                    link["id"]
                );
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}
