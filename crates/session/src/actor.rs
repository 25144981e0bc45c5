//! The actor of one loaded session: a task that owns the session's file and is the only
//! writer of its log. Everything that changes the session arrives as a [`Command`] on one
//! bounded channel and is handled in order; committed events go to subscribers through a
//! bounded broadcast, which never waits for a slow receiver (it lags instead, and the
//! subscriber resyncs from the log).
//!
//! Hibernation: after `idle_unload` without commands, with nothing running, nobody
//! connected and nothing runnable queued, the actor removes itself from the registry,
//! closes its channel and drops the file. A command that raced with the unload finds the
//! channel closed (or its reply dropped) and the caller loads the session again.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use hangar_protocol::session::{
    Author, EventBody, Presence, PresenceEntry, PresenceUpdate, Prompt, PromptOutcome,
    PromptStatus, SessionStatus, rfc3339_ms,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::executor::{EventSink, PromptRun};
use crate::log::{LoggedEvent, PromptChange, SessionLog, now_ms};
use crate::{SessionError, SessionInfo, Shared};

/// Longest prompt text accepted, in bytes.
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;
/// Most events one read returns.
pub const MAX_EVENTS_PAGE: usize = 1000;
/// Most executor events committed in one transaction (group commit).
const MAX_BATCH: usize = 512;
/// How long a `typing` signal counts.
const TYPING_MS: i64 = 5000;

/// What subscribers receive: committed events (with seq) and presence (live only).
#[derive(Clone, Debug)]
pub enum Live {
    /// A committed event, serialized once.
    Event(Arc<LoggedEvent>),
    /// A presence update, serialized once.
    Presence(Arc<str>),
}

type Reply<T> = oneshot::Sender<Result<T, SessionError>>;

/// A request to a session's actor.
pub(crate) enum Command {
    Emit {
        prompt_id: i64,
        body: EventBody,
    },
    RunEnded {
        prompt_id: i64,
        result: Result<(), String>,
    },
    Prompt {
        author: Author,
        text: String,
        reply: Reply<Prompt>,
    },
    Edit {
        prompt_id: i64,
        author: Author,
        text: String,
        reply: Reply<Prompt>,
    },
    Cancel {
        prompt_id: i64,
        author: Author,
        reply: Reply<Prompt>,
    },
    Stop {
        reply: Reply<Option<i64>>,
    },
    Info {
        reply: Reply<SessionInfo>,
    },
    Record {
        body: EventBody,
        reply: Reply<u64>,
    },
    Join {
        who: Author,
        reply: Reply<(broadcast::Receiver<Live>, u64)>,
    },
    Leave {
        who: Author,
    },
    Typing {
        who: Author,
        reply: Reply<()>,
    },
    Presence {
        who: Author,
        state: Option<String>,
        reply: Reply<()>,
    },
}

/// Identity of a participant: a user, or a share link's guest.
fn key(a: &Author) -> String {
    match (a.user_id, a.share_id) {
        (Some(u), _) => format!("u{u}"),
        (None, Some(s)) => format!("s{s}"),
        (None, None) => format!("l{}", a.login),
    }
}

struct Connected {
    who: Author,
    connections: u32,
    typing_until_ms: i64,
    state: Option<String>,
}

struct Running {
    prompt: Prompt,
    task: JoinHandle<()>,
}

pub(crate) struct Actor {
    id: String,
    /// Distinguishes this load of the session from later ones in the registry.
    generation: u64,
    log: SessionLog,
    status: SessionStatus,
    queue: VecDeque<Prompt>,
    next_prompt_id: i64,
    running: Option<Running>,
    live: broadcast::Sender<Live>,
    tx: mpsc::WeakSender<Command>,
    shared: Arc<Shared>,
    connected: BTreeMap<String, Connected>,
    /// When the next typing signal runs out, if anyone is typing.
    typing_ends: Option<Instant>,
}

impl Actor {
    pub(crate) fn new(
        id: String,
        generation: u64,
        log: SessionLog,
        tx: mpsc::WeakSender<Command>,
        shared: Arc<Shared>,
    ) -> Result<Actor, SessionError> {
        let (live, _) = broadcast::channel(shared.config.live_buffer.max(16));
        Ok(Actor {
            status: log.status()?,
            queue: log.prompts_with(&[PromptStatus::Queued])?.into(),
            next_prompt_id: log.next_prompt_id()?,
            id,
            generation,
            log,
            running: None,
            live,
            tx,
            shared,
            connected: BTreeMap::new(),
            typing_ends: None,
        })
    }

    /// Marks what was running when the process died as interrupted. Interrupted sessions
    /// keep their queue until someone prompts again (or stops), so nothing starts by
    /// itself after a crash.
    fn recover(&mut self) -> Result<(), SessionError> {
        let running = self.log.prompts_with(&[PromptStatus::Running])?;
        if running.is_empty() && self.status != SessionStatus::Running {
            return Ok(());
        }
        let changes: Vec<PromptChange> = running
            .iter()
            .map(|p| PromptChange::Status(p.id, PromptStatus::Interrupted))
            .collect();
        let mut bodies: Vec<EventBody> = running
            .iter()
            .map(|p| EventBody::PromptFinished {
                prompt_id: p.id,
                outcome: PromptOutcome::Interrupted,
                error: Some("the server stopped while this prompt ran".into()),
            })
            .collect();
        bodies.push(EventBody::Status {
            status: SessionStatus::Interrupted,
        });
        self.commit(&changes, Some(SessionStatus::Interrupted), bodies)?;
        tracing::info!(session = %self.id, prompts = running.len(), "marked interrupted");
        Ok(())
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        if let Err(e) = self.recover() {
            tracing::error!(session = %self.id, "recovering the session: {e}");
        }
        let idle = self.shared.config.idle_unload;
        let mut deadline = Instant::now() + idle;
        let mut pending: Option<Command> = None;
        loop {
            let cmd = match pending.take() {
                Some(c) => c,
                None => {
                    tokio::select! {
                        c = rx.recv() => match c {
                            Some(c) => c,
                            None => break,
                        },
                        _ = tokio::time::sleep_until(deadline) => {
                            if self.idle() && self.unload(&mut rx) {
                                return;
                            }
                            deadline = Instant::now() + idle;
                            continue;
                        }
                        // Someone's typing signal ran out: presence says so.
                        _ = tokio::time::sleep_until(self.typing_ends.unwrap_or(deadline)), if self.typing_ends.is_some() => {
                            self.typing_ends = None;
                            self.send_presence();
                            continue;
                        }
                    }
                }
            };
            deadline = Instant::now() + idle;
            if let Command::Emit { prompt_id, body } = cmd {
                // Group commit: every event already waiting goes into one transaction.
                let mut batch = Vec::new();
                self.keep_if_current(prompt_id, body, &mut batch);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Command::Emit { prompt_id, body }) => {
                            self.keep_if_current(prompt_id, body, &mut batch)
                        }
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if !batch.is_empty()
                    && let Err(e) = self.commit(&[], None, batch)
                {
                    self.fail_running(e);
                }
                continue;
            }
            self.handle(cmd);
        }
        self.unregister();
    }

    fn keep_if_current(&self, prompt_id: i64, body: EventBody, batch: &mut Vec<EventBody>) {
        // Events of a stopped run may still sit in the channel: they are dropped.
        if self
            .running
            .as_ref()
            .is_some_and(|r| r.prompt.id == prompt_id)
        {
            batch.push(body);
        }
    }

    fn idle(&self) -> bool {
        self.running.is_none()
            && self.connected.is_empty()
            && (self.queue.is_empty() || self.status == SessionStatus::Interrupted)
    }

    /// Leaves the registry if nothing is waiting; true when the actor should end.
    fn unload(&mut self, rx: &mut mpsc::Receiver<Command>) -> bool {
        let mut live = self.shared.lock_live();
        if !rx.is_empty() {
            return false;
        }
        if live.get(&self.id).is_some_and(|h| h.0 == self.generation) {
            live.remove(&self.id);
        }
        rx.close();
        drop(live);
        // Commands sent after the check are dropped unanswered; their callers see the
        // reply channel close and load the session again.
        while rx.try_recv().is_ok() {}
        self.shared
            .unloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(session = %self.id, "hibernated");
        true
    }

    fn unregister(&self) {
        let mut live = self.shared.lock_live();
        if live.get(&self.id).is_some_and(|h| h.0 == self.generation) {
            live.remove(&self.id);
        }
    }

    fn commit(
        &mut self,
        changes: &[PromptChange],
        status: Option<SessionStatus>,
        bodies: Vec<EventBody>,
    ) -> Result<(), SessionError> {
        let events = self.log.commit(changes, status, bodies)?;
        if let Some(s) = status
            && s != self.status
        {
            self.status = s;
            if let Err(e) = self.shared.store.set_session_status(&self.id, s.as_str()) {
                tracing::warn!(session = %self.id, "updating the index: {e}");
            }
        }
        for ev in events {
            // An error only means nobody listens.
            let _ = self.live.send(Live::Event(ev));
        }
        Ok(())
    }

    fn fail_running(&mut self, e: SessionError) {
        tracing::error!(session = %self.id, "recording events: {e}");
        if let Some(r) = self.running.take() {
            r.task.abort();
            let _ = self.commit(
                &[PromptChange::Status(r.prompt.id, PromptStatus::Failed)],
                None,
                vec![EventBody::PromptFinished {
                    prompt_id: r.prompt.id,
                    outcome: PromptOutcome::Failed,
                    error: Some(format!("recording its events failed: {e}")),
                }],
            );
        }
    }

    fn queue_updated(&self) -> EventBody {
        EventBody::QueueUpdated {
            queue: self.queue.iter().cloned().collect(),
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Emit { .. } => {}
            Command::RunEnded { prompt_id, result } => {
                if self
                    .running
                    .as_ref()
                    .is_some_and(|r| r.prompt.id == prompt_id)
                {
                    self.running = None;
                    let (outcome, error) = match result {
                        Ok(()) => (PromptOutcome::Done, None),
                        Err(e) => (PromptOutcome::Failed, Some(e)),
                    };
                    let r = self.commit(
                        &[PromptChange::Status(prompt_id, outcome.status())],
                        None,
                        vec![EventBody::PromptFinished {
                            prompt_id,
                            outcome,
                            error,
                        }],
                    );
                    if let Err(e) = r {
                        tracing::error!(session = %self.id, "recording a finished prompt: {e}");
                    }
                    self.start_next();
                }
            }
            Command::Prompt {
                author,
                text,
                reply,
            } => {
                let _ = reply.send(self.prompt(author, text));
            }
            Command::Edit {
                prompt_id,
                author,
                text,
                reply,
            } => {
                let _ = reply.send(self.edit(prompt_id, &author, Some(text)));
            }
            Command::Cancel {
                prompt_id,
                author,
                reply,
            } => {
                let _ = reply.send(self.edit(prompt_id, &author, None));
            }
            Command::Stop { reply } => {
                let _ = reply.send(self.stop());
            }
            Command::Info { reply } => {
                let _ = reply.send(Ok(SessionInfo {
                    status: self.status,
                    last_seq: self.log.last_seq(),
                    running: self.running.as_ref().map(|r| r.prompt.clone()),
                    queue: self.queue.iter().cloned().collect(),
                    connections: self.connected.values().map(|c| c.connections).sum(),
                }));
            }
            Command::Record { body, reply } => {
                let r = self
                    .commit(&[], None, vec![body])
                    .map(|()| self.log.last_seq());
                let _ = reply.send(r);
            }
            Command::Join { who, reply } => {
                let _ = reply.send(self.join(who));
            }
            Command::Leave { who } => self.leave(&who),
            Command::Typing { who, reply } => {
                self.shared.executor.typing(&self.id, &who);
                if let Some(c) = self.connected.get_mut(&key(&who)) {
                    c.typing_until_ms = now_ms() + TYPING_MS;
                }
                self.send_presence();
                let _ = reply.send(Ok(()));
            }
            Command::Presence { who, state, reply } => {
                if let Some(c) = self.connected.get_mut(&key(&who)) {
                    c.state = state;
                }
                self.send_presence();
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn prompt(&mut self, author: Author, text: String) -> Result<Prompt, SessionError> {
        if text.trim().is_empty() {
            return Err(SessionError::Invalid("a prompt needs some text".into()));
        }
        if text.len() > MAX_PROMPT_BYTES {
            return Err(SessionError::Invalid(format!(
                "a prompt may be at most {MAX_PROMPT_BYTES} bytes"
            )));
        }
        let prompt = Prompt {
            id: self.next_prompt_id,
            author,
            text,
            status: PromptStatus::Queued,
            created_at_ms: now_ms(),
        };
        self.queue.push_back(prompt.clone());
        let queued = EventBody::PromptQueued {
            prompt: prompt.clone(),
        };
        let r = self.commit(
            &[PromptChange::Insert(prompt.clone())],
            None,
            vec![queued, self.queue_updated()],
        );
        if let Err(e) = r {
            self.queue.pop_back();
            return Err(e);
        }
        self.next_prompt_id += 1;
        if let Some(user_id) = prompt.author.user_id
            && let Err(e) = self.shared.store.add_participant(&self.id, user_id)
        {
            tracing::warn!(session = %self.id, "recording a participant: {e}");
        }
        // A prompt resumes an interrupted session's queue.
        self.start_next();
        Ok(prompt)
    }

    fn edit(
        &mut self,
        prompt_id: i64,
        author: &Author,
        text: Option<String>,
    ) -> Result<Prompt, SessionError> {
        let Some(pos) = self.queue.iter().position(|p| p.id == prompt_id) else {
            if prompt_id > 0 && prompt_id < self.next_prompt_id {
                return Err(SessionError::NotQueued { prompt_id });
            }
            return Err(SessionError::PromptNotFound { prompt_id });
        };
        if key(&self.queue[pos].author) != key(author) {
            return Err(SessionError::NotAuthor { prompt_id });
        }
        let change = match &text {
            Some(t) if t.trim().is_empty() => {
                return Err(SessionError::Invalid("a prompt needs some text".into()));
            }
            Some(t) if t.len() > MAX_PROMPT_BYTES => {
                return Err(SessionError::Invalid(format!(
                    "a prompt may be at most {MAX_PROMPT_BYTES} bytes"
                )));
            }
            Some(t) => PromptChange::Text(prompt_id, t.clone()),
            None => PromptChange::Status(prompt_id, PromptStatus::Cancelled),
        };
        let before = self.queue.clone();
        let mut prompt = match &text {
            Some(t) => {
                self.queue[pos].text = t.clone();
                self.queue[pos].clone()
            }
            None => self
                .queue
                .remove(pos)
                .unwrap_or_else(|| before[pos].clone()),
        };
        if text.is_none() {
            prompt.status = PromptStatus::Cancelled;
        }
        if let Err(e) = self.commit(&[change], None, vec![self.queue_updated()]) {
            self.queue = before;
            return Err(e);
        }
        Ok(prompt)
    }

    fn stop(&mut self) -> Result<Option<i64>, SessionError> {
        let Some(r) = self.running.take() else {
            if self.status == SessionStatus::Interrupted {
                // Stopping an interrupted session settles it without running its queue.
                self.commit(
                    &[],
                    Some(SessionStatus::Idle),
                    vec![EventBody::Status {
                        status: SessionStatus::Idle,
                    }],
                )?;
            }
            return Ok(None);
        };
        // Cancels the run at its next await: the model stream and the tool it waits on are
        // dropped with it.
        r.task.abort();
        let id = r.prompt.id;
        self.commit(
            &[PromptChange::Status(id, PromptStatus::Stopped)],
            None,
            vec![EventBody::PromptFinished {
                prompt_id: id,
                outcome: PromptOutcome::Stopped,
                error: None,
            }],
        )?;
        self.start_next();
        Ok(Some(id))
    }

    /// Starts the next queued prompt when nothing runs, or settles the session as idle.
    fn start_next(&mut self) {
        if self.running.is_some() {
            return;
        }
        let Some(mut prompt) = self.queue.pop_front() else {
            if self.status != SessionStatus::Idle
                && let Err(e) = self.commit(
                    &[],
                    Some(SessionStatus::Idle),
                    vec![EventBody::Status {
                        status: SessionStatus::Idle,
                    }],
                )
            {
                tracing::error!(session = %self.id, "recording idle: {e}");
            }
            return;
        };
        let Some(tx) = self.tx.upgrade() else {
            self.queue.push_front(prompt);
            return;
        };
        prompt.status = PromptStatus::Running;
        let mut bodies = Vec::new();
        if self.status != SessionStatus::Running {
            bodies.push(EventBody::Status {
                status: SessionStatus::Running,
            });
        }
        bodies.push(EventBody::PromptStarted {
            prompt_id: prompt.id,
            author: prompt.author.clone(),
        });
        bodies.push(self.queue_updated());
        let r = self.commit(
            &[PromptChange::Status(prompt.id, PromptStatus::Running)],
            Some(SessionStatus::Running),
            bodies,
        );
        if let Err(e) = r {
            tracing::error!(session = %self.id, "starting a prompt: {e}");
            prompt.status = PromptStatus::Queued;
            self.queue.push_front(prompt);
            return;
        }
        let run = PromptRun {
            session_id: self.id.clone(),
            prompt: prompt.clone(),
            events: EventSink {
                prompt_id: prompt.id,
                tx: tx.clone(),
            },
        };
        let work = self.shared.executor.run(run);
        let prompt_id = prompt.id;
        let task = tokio::spawn(async move {
            let result = work.await;
            let _ = tx.send(Command::RunEnded { prompt_id, result }).await;
        });
        self.running = Some(Running { prompt, task });
    }

    fn join(&mut self, who: Author) -> Result<(broadcast::Receiver<Live>, u64), SessionError> {
        // Subscribe first: the caller reads the backlog after this and drops duplicates,
        // so nothing committed from here on can be missed.
        let rx = self.live.subscribe();
        let k = key(&who);
        let first = !self.connected.contains_key(&k);
        let entry = self.connected.entry(k).or_insert(Connected {
            who: who.clone(),
            connections: 0,
            typing_until_ms: 0,
            state: None,
        });
        entry.connections += 1;
        if first {
            if let Some(user_id) = who.user_id
                && let Err(e) = self.shared.store.add_participant(&self.id, user_id)
            {
                tracing::warn!(session = %self.id, "recording a participant: {e}");
            }
            self.commit(
                &[],
                None,
                vec![EventBody::ParticipantJoined { participant: who }],
            )?;
        }
        self.send_presence();
        Ok((rx, self.log.last_seq()))
    }

    fn leave(&mut self, who: &Author) {
        let k = key(who);
        let Some(c) = self.connected.get_mut(&k) else {
            return;
        };
        c.connections = c.connections.saturating_sub(1);
        if c.connections == 0 {
            self.connected.remove(&k);
            let r = self.commit(
                &[],
                None,
                vec![EventBody::ParticipantLeft {
                    participant: who.clone(),
                }],
            );
            if let Err(e) = r {
                tracing::error!(session = %self.id, "recording a participant leaving: {e}");
            }
        }
        self.send_presence();
    }

    /// Broadcasts presence, and schedules the next one for when a typing signal runs out.
    fn send_presence(&mut self) {
        let now = now_ms();
        self.typing_ends = self
            .connected
            .values()
            .map(|c| c.typing_until_ms)
            .filter(|t| *t > now)
            .min()
            .map(|t| Instant::now() + std::time::Duration::from_millis((t - now) as u64));
        if self.live.receiver_count() == 0 {
            return;
        }
        let update = PresenceUpdate {
            at: rfc3339_ms(now),
            data: Presence {
                participants: self
                    .connected
                    .values()
                    .map(|c| PresenceEntry {
                        participant: c.who.clone(),
                        connections: c.connections,
                        typing: c.typing_until_ms > now,
                        state: c.state.clone(),
                    })
                    .collect(),
            },
        };
        if let Ok(json) = serde_json::to_string(&update) {
            let _ = self.live.send(Live::Presence(json.into()));
        }
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        // The server is stopping or the actor ended: the run must not outlive its session.
        if let Some(r) = self.running.take() {
            r.task.abort();
        }
    }
}
