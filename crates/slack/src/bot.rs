//! The bot: what Hangar does with what Slack sends. A mention, a direct message or a
//! `/hangar` command becomes a session (after the classifier picked the repository and the
//! Slack user is linked to a Hangar user); a reply in its thread becomes a follow-up prompt;
//! the Stop button stops the running prompt. A follower task per session turns the
//! session's events into the thread's progress message and results.
//!
//! Sessions are created, prompted, stopped and followed through [`Sessions`], exactly as
//! the HTTP API and the WebSocket do.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_protocol::session::{Author, Event};
use hangar_session::{SessionError, Sessions};
use hangar_store::User;
use serde_json::json;

use crate::api::{Post, SlackClient};
use crate::classify::{Classifier, Request, Verdict};
use crate::events::{
    BlockActions, Callback, DecodeError, Envelope, Event as SlackEvent, Interaction, Message,
    is_ssl_check, parse_command, parse_envelope, parse_interaction, request_text,
};
use crate::progress::{Progress, Shown, Throttle, escape};
use crate::repos::RepoDirectory;
use crate::state::{SlackRequest, SlackState, StateError, ThreadLink};
use crate::verify::{VerifyError, verify};

/// How the bot behaves.
#[derive(Clone)]
pub struct BotConfig {
    /// The workspaces served.
    pub team_ids: Vec<String>,
    /// The signing secret.
    pub signing_secret: String,
    /// Hangar's address for people (links to `<public_url>/sessions/<id>`).
    pub public_url: String,
    /// Least time between two edits of a progress message.
    pub update_interval: Duration,
    /// A follower with nothing to show for this long lets the session hibernate; the next
    /// request in its thread starts it again, catching up from where it stopped.
    pub follow_idle: Duration,
}

impl std::fmt::Debug for BotConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotConfig")
            .field("team_ids", &self.team_ids)
            .field("signing_secret", &"<redacted>")
            .field("public_url", &self.public_url)
            .finish()
    }
}

/// What to answer an Events API delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsAnswer {
    /// `url_verification`: echo the challenge.
    Challenge(String),
    /// Acknowledge (the work goes on in the background).
    Ack,
}

/// Why linking failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No such code, or it was used or expired.
    #[error("no such link code; codes work once, for an hour: ask the bot again for a new one")]
    UnknownCode,
    /// The state failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// What a successful link did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked {
    /// The workspace.
    pub team_id: String,
    /// The Slack user now linked.
    pub slack_user: String,
}

/// The Slack bot. Cheap to clone.
#[derive(Clone)]
pub struct SlackBot {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SlackBot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlackBot")
    }
}

struct Inner {
    config: BotConfig,
    client: SlackClient,
    classifier: Classifier,
    repos: Arc<dyn RepoDirectory>,
    state: SlackState,
    sessions: Sessions,
    following: Mutex<HashSet<String>>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl SlackBot {
    /// A bot answering through `client`, creating sessions in `sessions`.
    pub fn new(
        config: BotConfig,
        client: SlackClient,
        classifier: Classifier,
        repos: Arc<dyn RepoDirectory>,
        state: SlackState,
        sessions: Sessions,
    ) -> SlackBot {
        SlackBot {
            inner: Arc::new(Inner {
                config,
                client,
                classifier,
                repos,
                state,
                sessions,
                following: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Checks a request's signature (see [`crate::verify`]) against the current time.
    pub fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        verify(
            &self.inner.config.signing_secret,
            timestamp,
            signature,
            body,
            unix_now(),
        )
    }

    fn serves(&self, team_id: &str) -> bool {
        self.inner.config.team_ids.iter().any(|t| t == team_id)
    }

    /// An Events API delivery (already verified). A delivery seen before (Slack retries
    /// with `X-Slack-Retry-Num` when the answer was slow) is acknowledged and dropped.
    pub async fn on_events(&self, body: &[u8]) -> Result<EventsAnswer, DecodeError> {
        let callback = match parse_envelope(body)? {
            Envelope::UrlVerification { challenge } => {
                return Ok(EventsAnswer::Challenge(challenge));
            }
            Envelope::Other => return Ok(EventsAnswer::Ack),
            Envelope::EventCallback(cb) => *cb,
        };
        if !self.serves(&callback.team_id) {
            tracing::warn!(team = %callback.team_id, event = %callback.event_id, "Slack event from an unknown workspace ignored");
            return Ok(EventsAnswer::Ack);
        }
        match self
            .inner
            .state
            .first_sighting(&format!("event:{}", callback.event_id))
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(event = %callback.event_id, "Slack event delivered again; already handled");
                return Ok(EventsAnswer::Ack);
            }
            Err(e) => {
                tracing::error!("Slack event {}: {e}", callback.event_id);
                return Ok(EventsAnswer::Ack);
            }
        }
        let bot = self.clone();
        tokio::spawn(async move { bot.on_callback(callback).await });
        Ok(EventsAnswer::Ack)
    }

    async fn on_callback(&self, cb: Callback) {
        let (message, mentioned) = match cb.event {
            SlackEvent::AppMention(m) => (m, true),
            SlackEvent::Message(m) => (m, false),
            SlackEvent::Other => return,
        };
        if let Err(e) = self.on_message(&cb.team_id, message, mentioned).await {
            tracing::error!("Slack event {}: {e}", cb.event_id);
        }
    }

    async fn on_message(
        &self,
        team_id: &str,
        m: Message,
        mentioned: bool,
    ) -> Result<(), StateError> {
        let Some(user) = m.user.clone().filter(|_| m.is_from_person()) else {
            return Ok(());
        };
        let state = &self.inner.state;
        let followed = match m.is_reply() {
            true => state.thread(team_id, &m.channel, m.thread())?,
            false => None,
        };
        if followed.is_none() && !mentioned && !m.is_direct() {
            // Channel chatter, or a mention whose own `app_mention` event will come.
            return Ok(());
        }
        // A mention in a channel arrives twice (`app_mention` and `message`), with
        // different event ids: act on the message once.
        if !state.first_sighting(&format!("message:{}:{}", m.channel, m.ts))? {
            return Ok(());
        }
        let request = SlackRequest {
            team_id: team_id.to_string(),
            channel: m.channel.clone(),
            thread_ts: m.thread().to_string(),
            ts: m.ts.clone(),
            slack_user: user,
            text: request_text(&m.text),
        };
        if request.text.is_empty() {
            self.say(&request, HELP).await;
            return Ok(());
        }
        let Some(hangar_user) = self.user_of(&request).await? else {
            return Ok(());
        };
        match followed {
            Some(thread) => self.follow_up(&thread, &request, &hangar_user).await,
            None => self.start(request, hangar_user).await,
        }
        Ok(())
    }

    /// The Hangar user behind the request's Slack user; an unlinked one is sent a link
    /// code (only they see it) and the request waits for it.
    async fn user_of(&self, request: &SlackRequest) -> Result<Option<User>, StateError> {
        let state = &self.inner.state;
        if let Some(id) = state.linked_user(&request.team_id, &request.slack_user)? {
            let store = self.inner.sessions.store().clone();
            match tokio::task::spawn_blocking(move || store.user(id)).await {
                Ok(Ok(user)) => return Ok(Some(user)),
                Ok(Err(e)) => tracing::warn!("linked Hangar user {id} is gone: {e}"),
                Err(e) => tracing::error!("looking up Hangar user {id}: {e}"),
            }
        }
        let name = match self.inner.client.user(&request.slack_user).await {
            Ok(u) if u.is_bot || u.deleted => return Ok(None),
            Ok(u) => format!(" {}", u.name),
            Err(e) => {
                tracing::warn!("{e}");
                String::new()
            }
        };
        let code = state.new_link_code(request)?;
        let text = format!(
            "Hi{name}, I don't know your Hangar account yet. Link it once: run `hangar slack link {code}` (or `POST {}/api/slack/link` with `{{\"code\": \"{code}\"}}` and your Hangar token). I'll start this request as soon as you do; the code works once, for an hour.",
            self.inner.config.public_url
        );
        let body = json!({
            "channel": request.channel,
            "user": request.slack_user,
            "thread_ts": request.thread_ts,
            "text": text,
        });
        if let Err(e) = self.inner.client.post_ephemeral(&body).await {
            tracing::warn!("cannot send a link code to {}: {e}", request.slack_user);
        }
        Ok(None)
    }

    /// Links the Slack user of `code` to `user`, then starts the request that waited.
    pub async fn link(&self, code: &str, user: User) -> Result<Linked, LinkError> {
        let request = self
            .inner
            .state
            .use_link_code(code, user.id)?
            .ok_or(LinkError::UnknownCode)?;
        tracing::info!(slack_user = %request.slack_user, user = %user.login, "Slack user linked");
        let linked = Linked {
            team_id: request.team_id.clone(),
            slack_user: request.slack_user.clone(),
        };
        let bot = self.clone();
        tokio::spawn(async move {
            let followed =
                bot.inner
                    .state
                    .thread(&request.team_id, &request.channel, &request.thread_ts);
            match followed {
                Ok(Some(thread)) if request.ts != request.thread_ts => {
                    bot.follow_up(&thread, &request, &user).await
                }
                Ok(_) => bot.start(request, user).await,
                Err(e) => tracing::error!("{e}"),
            }
        });
        Ok(linked)
    }

    /// After a restart: follows the threads of `session_ids` again (the sessions the last
    /// stop interrupted), so each thread shows how its session ended.
    pub async fn resume(&self, session_ids: &[String]) {
        for id in session_ids {
            let thread = match self.inner.state.thread_of_session(id) {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(session = %id, "{e}");
                    continue;
                }
            };
            let store = self.inner.sessions.store().clone();
            let user_id = thread.user_id;
            match tokio::task::spawn_blocking(move || store.user(user_id)).await {
                Ok(Ok(user)) => self.follow(thread, user),
                Ok(Err(e)) => tracing::warn!(session = %id, "cannot follow in Slack: {e}"),
                Err(e) => tracing::error!(session = %id, "{e}"),
            }
        }
    }

    /// A new request: pick the repository (or ask), then start a session.
    async fn start(&self, request: SlackRequest, user: User) {
        let client = &self.inner.client;
        if let Err(e) = client.react(&request.channel, &request.ts, "eyes").await {
            tracing::warn!("{e}");
        }
        let channel = if request.channel.starts_with('D') {
            None
        } else {
            client
                .channel_name(&request.channel)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!("{e}");
                    None
                })
        };
        let thread: Vec<String> = if request.thread_ts != request.ts {
            match client.thread(&request.channel, &request.thread_ts).await {
                Ok(messages) => messages
                    .into_iter()
                    .filter(|m| m.ts != request.ts && m.bot_id.is_none())
                    .map(|m| request_text(&m.text))
                    .collect(),
                Err(e) => {
                    tracing::warn!("{e}");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let repos = self.inner.repos.repositories();
        let verdict = self
            .inner
            .classifier
            .classify(
                &Request {
                    message: &request.text,
                    thread: &thread,
                    channel: channel.as_deref(),
                },
                &repos,
            )
            .await;
        match verdict {
            Verdict::Chosen { repo, confidence } => {
                tracing::info!(%repo, confidence, "Slack request classified");
                self.create_session(&request, &user, &repo).await;
            }
            Verdict::Ask { choices, why } => {
                tracing::info!("asking for the repository: {why}");
                self.ask_repo(&request, &choices).await;
            }
        }
    }

    async fn ask_repo(&self, request: &SlackRequest, choices: &[String]) {
        if choices.is_empty() {
            self.say(
                request,
                "No repositories are configured for Slack yet (`[[slack.repos]]` in hangar.toml).",
            )
            .await;
            return;
        }
        let id = match self.inner.state.add_pending(request) {
            Ok(id) => id,
            Err(e) => {
                tracing::error!("{e}");
                return self
                    .say(
                        request,
                        "Something went wrong on Hangar's side; please try again.",
                    )
                    .await;
            }
        };
        let buttons: Vec<_> = choices
            .iter()
            .enumerate()
            .map(|(i, repo)| {
                json!({
                    "type": "button",
                    "action_id": format!("choose_repo_{i}"),
                    "text": {"type": "plain_text", "text": repo},
                    "value": format!("{id}:{repo}"),
                })
            })
            .collect();
        let text = "Which repository is this about?";
        let post = Post {
            channel: request.channel.clone(),
            thread_ts: Some(request.thread_ts.clone()),
            text: text.into(),
            blocks: Some(json!([
                {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                {"type": "actions", "elements": buttons},
            ])),
        };
        if let Err(e) = self.inner.client.post_message(&post).await {
            tracing::warn!("{e}");
        }
    }

    async fn create_session(&self, request: &SlackRequest, user: &User, repo: &str) {
        let sessions = &self.inner.sessions;
        let title: String = request
            .text
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        let created = async {
            let record = sessions.create(user.id, repo, &title).await?;
            sessions
                .prompt(&record.id, author(user), request.text.clone())
                .await?;
            Ok::<_, SessionError>(record)
        }
        .await;
        let record = match created {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot start a session from Slack: {e}");
                return self
                    .say(
                        request,
                        &format!(":x: Could not start a session: {}", escape(&e.to_string())),
                    )
                    .await;
            }
        };
        tracing::info!(session = %record.id, user = %user.login, repo, "session started from Slack");
        let mut progress = Progress::new(&record.id, repo, &self.session_url(&record.id));
        progress.apply(&hangar_protocol::session::EventBody::PromptStarted {
            prompt_id: 0,
            author: author(user),
        });
        let (text, blocks) = progress.render();
        let post = Post {
            channel: request.channel.clone(),
            thread_ts: Some(request.thread_ts.clone()),
            text,
            blocks: Some(blocks),
        };
        let progress_ts = match self.inner.client.post_message(&post).await {
            Ok(ts) => ts,
            Err(e) => {
                // The session runs anyway; the web UI shows it.
                tracing::warn!(session = %record.id, "cannot answer in Slack: {e}");
                return;
            }
        };
        let link = ThreadLink {
            team_id: request.team_id.clone(),
            channel: request.channel.clone(),
            thread_ts: request.thread_ts.clone(),
            session_id: record.id.clone(),
            repo: repo.to_string(),
            user_id: user.id,
            progress_ts,
            last_seq: 0,
        };
        if let Err(e) = self.inner.state.save_thread(&link) {
            tracing::error!("{e}");
        }
        self.follow(link, user.clone());
    }

    async fn follow_up(&self, thread: &ThreadLink, request: &SlackRequest, user: &User) {
        let client = &self.inner.client;
        match self
            .inner
            .sessions
            .prompt(&thread.session_id, author(user), request.text.clone())
            .await
        {
            Ok(p) => {
                tracing::info!(session = %thread.session_id, prompt = p.id, "follow-up from Slack");
                if let Err(e) = client.react(&request.channel, &request.ts, "eyes").await {
                    tracing::warn!("{e}");
                }
                self.follow(thread.clone(), user.clone());
            }
            Err(e) => {
                self.say(
                    request,
                    &format!(":x: Could not add that prompt: {}", escape(&e.to_string())),
                )
                .await;
            }
        }
    }

    /// Posts `text` in the request's thread; failures are logged, never retried in a loop.
    async fn say(&self, request: &SlackRequest, text: &str) {
        let post = Post {
            channel: request.channel.clone(),
            thread_ts: Some(request.thread_ts.clone()),
            text: text.to_string(),
            blocks: None,
        };
        if let Err(e) = self.inner.client.post_message(&post).await {
            tracing::warn!("cannot answer in Slack: {e}");
        }
    }

    fn session_url(&self, id: &str) -> String {
        format!(
            "{}/sessions/{id}",
            self.inner.config.public_url.trim_end_matches('/')
        )
    }

    /// A slash command (already verified): the text to show its author (only them).
    pub async fn on_command(&self, body: &[u8]) -> Result<String, DecodeError> {
        if is_ssl_check(body) {
            return Ok(String::new());
        }
        let cmd = parse_command(body)?;
        if !self.serves(&cmd.team_id) {
            tracing::warn!(team = %cmd.team_id, "Slack command from an unknown workspace ignored");
            return Ok("This workspace is not connected to this Hangar.".into());
        }
        let text = cmd.text.trim();
        if text.is_empty() || text == "help" {
            return Ok(HELP.into());
        }
        // The command has no message of its own to answer under: post one in the channel,
        // and its thread becomes the session's.
        let post = Post {
            channel: cmd.channel_id.clone(),
            thread_ts: None,
            text: format!("<@{}> asked: {}", cmd.user_id, escape(text)),
            blocks: None,
        };
        let ts = match self.inner.client.post_message(&post).await {
            Ok(ts) => ts,
            Err(e) => {
                tracing::warn!("{e}");
                return Ok(format!(
                    "I cannot post in this channel ({e}); invite me first, or DM me."
                ));
            }
        };
        let message = Message {
            user: Some(cmd.user_id.clone()),
            text: text.to_string(),
            channel: cmd.channel_id.clone(),
            ts,
            ..Message::default()
        };
        let bot = self.clone();
        let team = cmd.team_id.clone();
        tokio::spawn(async move {
            if let Err(e) = bot.on_message(&team, message, true).await {
                tracing::error!("Slack command: {e}");
            }
        });
        Ok("On it: follow the thread.".into())
    }

    /// An interactivity payload (already verified): button clicks.
    pub async fn on_interaction(&self, body: &[u8]) -> Result<(), DecodeError> {
        let actions = match parse_interaction(body)? {
            Interaction::BlockActions(a) => a,
            Interaction::Other(kind) => {
                tracing::info!(kind, "Slack interaction ignored");
                return Ok(());
            }
        };
        if !self.serves(&actions.team.id) {
            tracing::warn!(team = %actions.team.id, "Slack interaction from an unknown workspace ignored");
            return Ok(());
        }
        let bot = self.clone();
        tokio::spawn(async move {
            if let Err(e) = bot.on_actions(actions).await {
                tracing::error!("Slack interaction: {e}");
            }
        });
        Ok(())
    }

    async fn on_actions(&self, a: BlockActions) -> Result<(), StateError> {
        let state = &self.inner.state;
        for action in &a.actions {
            let value = action.value.as_deref().unwrap_or_default();
            if action.action_id == "stop" {
                let Some(thread) = state.thread_of_session(value)? else {
                    continue;
                };
                if thread.team_id != a.team.id {
                    continue;
                }
                if state.linked_user(&a.team.id, &a.user.id)?.is_none() {
                    tracing::info!(slack_user = %a.user.id, "Stop from an unlinked Slack user ignored");
                    continue;
                }
                match self.inner.sessions.stop(value).await {
                    Ok(stopped) => {
                        tracing::info!(session = value, ?stopped, slack_user = %a.user.id, "stopped from Slack")
                    }
                    Err(e) => tracing::warn!(session = value, "stop from Slack: {e}"),
                }
            } else if action.action_id.starts_with("choose_repo") {
                let Some((id, repo)) = value.split_once(':') else {
                    continue;
                };
                let Ok(id) = id.parse::<i64>() else { continue };
                if !self
                    .inner
                    .repos
                    .repositories()
                    .iter()
                    .any(|r| r.name == repo)
                {
                    continue;
                }
                if state.linked_user(&a.team.id, &a.user.id)?.is_none() {
                    tracing::info!(slack_user = %a.user.id, "repository choice from an unlinked Slack user ignored");
                    continue;
                }
                let Some(request) = state.take_pending(id)? else {
                    continue; // chosen already
                };
                if let (Some(channel), Some(message)) = (&a.channel, &a.message) {
                    let post = Post {
                        channel: channel.id.clone(),
                        thread_ts: message.thread_ts.clone(),
                        text: format!("Repository: *{repo}* (chosen by <@{}>)", a.user.id),
                        blocks: None,
                    };
                    if let Err(e) = self.inner.client.update(&post, &message.ts).await {
                        tracing::warn!("{e}");
                    }
                }
                if let Some(user) = self.user_of(&request).await? {
                    self.create_session(&request, &user, repo).await;
                }
            }
        }
        Ok(())
    }

    /// Starts following a session in its thread, unless a follower already does.
    fn follow(&self, thread: ThreadLink, user: User) {
        {
            let mut following = self
                .inner
                .following
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !following.insert(thread.session_id.clone()) {
                return;
            }
        }
        let bot = self.clone();
        tokio::spawn(async move {
            let id = thread.session_id.clone();
            if let Err(e) = bot.run_follower(thread, user).await {
                tracing::warn!(session = %id, "following the session in Slack ended: {e}");
            }
            bot.inner
                .following
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    }

    async fn run_follower(&self, thread: ThreadLink, user: User) -> Result<(), SessionError> {
        let sessions = &self.inner.sessions;
        let id = &thread.session_id;
        let mut sub = sessions.subscribe(id, author(&user)).await?;
        let mut progress = Progress::new(id, &thread.repo, &self.session_url(id));
        let mut throttle = Throttle::new(self.inner.config.update_interval);
        // Replay from the start to rebuild the view, showing only what is new.
        let mut seq = 0;
        while seq < sub.last_seq {
            let page = sessions
                .events(id, seq, hangar_session::MAX_EVENTS_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            seq = last.seq;
            for e in page.iter().filter(|e| e.seq <= sub.last_seq) {
                self.show(&thread, &mut progress, &mut throttle, e.seq, &e.json)
                    .await;
            }
        }
        let mut seen = sub.last_seq;
        loop {
            let due = throttle.due();
            let idle = !progress.busy() && due.is_none();
            tokio::select! {
                live = sub.receiver.recv() => match live {
                    Ok(hangar_session::Live::Event(e)) if e.seq > seen => {
                        seen = e.seq;
                        self.show(&thread, &mut progress, &mut throttle, e.seq, &e.json).await;
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Too far behind: catch up from the log.
                        let page = sessions.events(id, seen, hangar_session::MAX_EVENTS_PAGE).await?;
                        for e in page.iter() {
                            seen = e.seq;
                            self.show(&thread, &mut progress, &mut throttle, e.seq, &e.json).await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        // The session unloaded; a new request resumes following.
                        break;
                    }
                },
                _ = sleep_until(due) => {
                    self.edit_progress(&thread, &progress).await;
                    throttle.sent(std::time::Instant::now());
                    let _ = self.inner.state.set_last_seq(id, seen);
                }
                _ = tokio::time::sleep(self.inner.config.follow_idle), if idle => break,
            }
        }
        if throttle.due().is_some() {
            self.edit_progress(&thread, &progress).await;
        }
        let _ = self.inner.state.set_last_seq(id, seen);
        Ok(())
    }

    /// Takes one logged event into the view; posts results of events not shown before.
    async fn show(
        &self,
        thread: &ThreadLink,
        progress: &mut Progress,
        throttle: &mut Throttle,
        seq: u64,
        json: &str,
    ) {
        let Ok(event) = serde_json::from_str::<Event>(json) else {
            return;
        };
        match progress.apply(&event.body) {
            Shown::Nothing => {}
            Shown::Progress => throttle.touch(),
            Shown::Post(text) => {
                throttle.touch();
                if seq <= thread.last_seq {
                    return; // shown before this follower started
                }
                // The progress message first, so the thread reads in order.
                self.edit_progress(thread, progress).await;
                throttle.sent(std::time::Instant::now());
                let post = Post {
                    channel: thread.channel.clone(),
                    thread_ts: Some(thread.thread_ts.clone()),
                    text,
                    blocks: None,
                };
                if let Err(e) = self.inner.client.post_message(&post).await {
                    tracing::warn!(session = %thread.session_id, "cannot post a result in Slack: {e}");
                }
                let _ = self.inner.state.set_last_seq(&thread.session_id, seq);
            }
        }
    }

    async fn edit_progress(&self, thread: &ThreadLink, progress: &Progress) {
        let (text, blocks) = progress.render();
        let post = Post {
            channel: thread.channel.clone(),
            thread_ts: Some(thread.thread_ts.clone()),
            text,
            blocks: Some(blocks),
        };
        if let Err(e) = self.inner.client.update(&post, &thread.progress_ts).await {
            tracing::warn!(session = %thread.session_id, "cannot update progress in Slack: {e}");
        }
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

fn author(user: &User) -> Author {
    Author {
        user_id: Some(user.id),
        login: user.login.clone(),
        share_id: None,
    }
}

const HELP: &str = "Mention me (or DM me, or use `/hangar`) with what you want done, e.g. _fix the flaky login test in acme/app_. I pick the repository (or ask), start a session and report here; reply in the thread to add to it.";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_signing_secret_never_shows_in_debug_output() {
        let config = BotConfig {
            team_ids: vec!["T1".into()],
            signing_secret: "very-secret-signing-key".into(),
            public_url: "https://h".into(),
            update_interval: Duration::from_secs(1),
            follow_idle: Duration::from_secs(1),
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("very-secret-signing-key"), "{shown}");
        assert!(shown.contains("T1"));
    }
}
