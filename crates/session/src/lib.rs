//! Sessions: each session's state in its own SQLite file (`<dir>/<id>.db`: the append-only
//! event log with a monotonic `seq`, the prompts and their queue, metadata), one actor task
//! per loaded session that owns that file, live streaming to subscribers, and hibernation of
//! idle sessions. Prompts are driven by an [`Executor`]; the agent runtime is one, a later
//! crate, and [`ScriptedExecutor`] stands in for it.
//!
//! [`Sessions`] is the entry point: it creates sessions (recording them in the index,
//! `hangar-store`), loads a session's actor on the first request or subscription, and
//! forwards requests to it. An event is committed before anyone sees it. This crate knows
//! nothing about HTTP or WebSockets; the server maps its calls and errors onto them.
//!
//! **Invariants:** only a session's actor writes its file, and at most one actor per session
//! is registered at a time; an event reaches subscribers only after its transaction
//! committed; seqs have no gaps; a slow subscriber never slows the session (the broadcast
//! is bounded and lagging receivers resync from the log).

#![deny(missing_docs)]

mod actor;
mod executor;
mod log;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hangar_protocol::session::{Author, EventBody, Prompt, SessionStatus};
use hangar_store::{NewSession, SessionRecord, Store, StoreError};
use tokio::sync::{broadcast, mpsc, oneshot};

pub use actor::{Live, MAX_EVENTS_PAGE, MAX_PROMPT_BYTES};
pub use executor::{EventSink, Executor, PromptRun, RunFuture, Script, ScriptedExecutor};
pub use log::{Durability, LoggedEvent, SessionLog};

use actor::{Actor, Command};

/// How many commands may wait for a session's actor.
const COMMAND_BUFFER: usize = 1024;

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// No such session.
    #[error("no session with id {0}")]
    NotFound(String),
    /// No such prompt in the session.
    #[error("no prompt {prompt_id} in this session")]
    PromptNotFound {
        /// The id asked for.
        prompt_id: i64,
    },
    /// The prompt has started or ended: only queued prompts can be edited or cancelled.
    #[error(
        "prompt {prompt_id} is no longer queued; only queued prompts can be edited or cancelled"
    )]
    NotQueued {
        /// The prompt.
        prompt_id: i64,
    },
    /// Only a prompt's author may edit or cancel it.
    #[error("prompt {prompt_id} belongs to someone else; only its author may change it")]
    NotAuthor {
        /// The prompt.
        prompt_id: i64,
    },
    /// The request is unusable.
    #[error("{0}")]
    Invalid(String),
    /// The session's file failed.
    #[error("session file {}: {message}", path.display())]
    Storage {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The index failed.
    #[error(transparent)]
    Index(#[from] StoreError),
    /// The session could not be reached (the server is stopping).
    #[error("session {0} is unavailable; try again")]
    Unavailable(String),
}

/// Settings of the session service.
#[derive(Clone, Debug)]
pub struct SessionsConfig {
    /// Where session files live (`<data dir>/sessions`).
    pub dir: PathBuf,
    /// How long a session stays loaded without commands, runs or connections.
    pub idle_unload: Duration,
    /// Events buffered per session for live subscribers; a subscriber further behind
    /// resyncs from the log.
    pub live_buffer: usize,
    /// What a commit survives.
    pub durability: Durability,
}

impl SessionsConfig {
    /// Defaults for sessions under `dir`: unload after 5 minutes idle, 1024 live events
    /// (the broadcast preallocates its slots: ~56 bytes each per loaded session).
    pub fn new(dir: PathBuf) -> SessionsConfig {
        SessionsConfig {
            dir,
            idle_unload: Duration::from_secs(300),
            live_buffer: 1024,
            durability: Durability::Process,
        }
    }
}

/// A loaded session's state, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Its status.
    pub status: SessionStatus,
    /// The seq of its last event.
    pub last_seq: u64,
    /// The prompt the agent works on.
    pub running: Option<Prompt>,
    /// Prompts waiting, next first.
    pub queue: Vec<Prompt>,
    /// Open connections.
    pub connections: u32,
}

/// What every actor shares.
pub(crate) struct Shared {
    pub(crate) config: SessionsConfig,
    pub(crate) store: Arc<Store>,
    pub(crate) executor: Arc<dyn Executor>,
    /// Loaded sessions: their generation and command channel.
    live: Mutex<HashMap<String, (u64, mpsc::Sender<Command>)>>,
    generation: AtomicU64,
    loads: AtomicU64,
    pub(crate) unloads: AtomicU64,
    /// Who added a prompt lately: login → when (ms), for [`Sessions::prompting_since`].
    /// Kept in memory only: a restart forgets who prompted a few minutes ago.
    prompters: Mutex<HashMap<String, i64>>,
}

impl Shared {
    pub(crate) fn lock_live(
        &self,
    ) -> MutexGuard<'_, HashMap<String, (u64, mpsc::Sender<Command>)>> {
        // The map stays consistent even if a holder panicked (single inserts and removes).
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every session of this server.
#[derive(Clone)]
pub struct Sessions {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions")
    }
}

/// A live subscription to a session: receive committed events and presence. Dropping it
/// closes the connection (the last one of a participant logs `participant.left`).
pub struct Subscription {
    /// Live events and presence, in commit order.
    pub receiver: broadcast::Receiver<Live>,
    /// The seq of the last event committed before the subscription began: the backlog to
    /// read from the log ends here (later events arrive on `receiver`).
    pub last_seq: u64,
    leave: LeaveGuard,
}

impl Subscription {
    /// Who subscribed.
    pub fn who(&self) -> &Author {
        &self.leave.who
    }
}

struct LeaveGuard {
    tx: mpsc::Sender<Command>,
    who: Author,
}

impl Drop for LeaveGuard {
    fn drop(&mut self) {
        let cmd = Command::Leave {
            who: self.who.clone(),
        };
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self.tx.try_send(cmd)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let tx = self.tx.clone();
            rt.spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }
}

/// Session ids: `ses-` and 16 lowercase hex digits. Anything else is unknown before it
/// can become a path.
pub fn valid_session_id(id: &str) -> bool {
    id.len() == 20
        && id.starts_with("ses-")
        && id[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn new_session_id() -> Result<String, SessionError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| SessionError::Unavailable(format!("random source failed: {e}")))?;
    let mut id = String::from("ses-");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    Ok(id)
}

impl Sessions {
    /// The session service over `config.dir`, recording sessions in `store`.
    pub fn new(
        config: SessionsConfig,
        store: Arc<Store>,
        executor: Arc<dyn Executor>,
    ) -> Result<Sessions, SessionError> {
        std::fs::create_dir_all(&config.dir).map_err(|e| SessionError::Storage {
            path: config.dir.clone(),
            message: format!("creating the sessions directory: {e}"),
        })?;
        Ok(Sessions {
            shared: Arc::new(Shared {
                config,
                store,
                executor,
                live: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
                loads: AtomicU64::new(0),
                unloads: AtomicU64::new(0),
                prompters: Mutex::default(),
            }),
        })
    }

    /// The index this service records sessions in.
    pub fn store(&self) -> &Arc<Store> {
        &self.shared.store
    }

    /// Sessions loaded now (the rest are hibernated).
    pub fn loaded(&self) -> usize {
        self.shared.lock_live().len()
    }

    /// How many times a session was loaded, and unloaded, since start.
    pub fn load_counts(&self) -> (u64, u64) {
        (
            self.shared.loads.load(Ordering::Relaxed),
            self.shared.unloads.load(Ordering::Relaxed),
        )
    }

    fn path(&self, id: &str) -> PathBuf {
        self.shared.config.dir.join(format!("{id}.db"))
    }

    /// Creates a session: its file, then its index entry.
    pub async fn create(
        &self,
        created_by: i64,
        repo: &str,
        title: &str,
    ) -> Result<SessionRecord, SessionError> {
        let id = new_session_id()?;
        let path = self.path(&id);
        let mut log = SessionLog::open(&path, self.shared.config.durability, true)?;
        log.set_meta(&[
            ("id", &id),
            ("repo", repo),
            ("title", title),
            ("created_by", &created_by.to_string()),
            ("status", SessionStatus::Idle.as_str()),
        ])?;
        drop(log);
        let record = self.shared.store.create_session(&NewSession {
            id,
            repo: repo.to_string(),
            title: title.to_string(),
            status: SessionStatus::Idle.as_str().to_string(),
            created_by,
        });
        if record.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        Ok(record?)
    }

    /// The index entry of a session.
    pub fn record(&self, id: &str) -> Result<SessionRecord, SessionError> {
        if !valid_session_id(id) {
            return Err(SessionError::NotFound(id.to_string()));
        }
        self.shared.store.session(id).map_err(|e| match e {
            StoreError::SessionNotFound(id) => SessionError::NotFound(id),
            e => e.into(),
        })
    }

    /// The command channel of a loaded session, loading it if needed.
    fn handle(&self, id: &str) -> Result<mpsc::Sender<Command>, SessionError> {
        if !valid_session_id(id) {
            return Err(SessionError::NotFound(id.to_string()));
        }
        if let Some((_, tx)) = self.shared.lock_live().get(id) {
            return Ok(tx.clone());
        }
        let path = self.path(id);
        if !path.exists() {
            return Err(SessionError::NotFound(id.to_string()));
        }
        // Opened outside the registry's lock; the actor does every write (recovery too),
        // so a loser of a race to load just drops its file handle.
        let log = SessionLog::open(&path, self.shared.config.durability, false)?;
        let mut live = self.shared.lock_live();
        if let Some((_, tx)) = live.get(id) {
            return Ok(tx.clone());
        }
        let generation = self.shared.generation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(COMMAND_BUFFER);
        let actor = Actor::new(
            id.to_string(),
            generation,
            log,
            tx.downgrade(),
            Arc::clone(&self.shared),
        )?;
        live.insert(id.to_string(), (generation, tx.clone()));
        drop(live);
        self.shared.loads.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(actor.run(rx));
        Ok(tx)
    }

    /// Sends a command built by `make` and waits for its answer, loading the session again
    /// if it hibernated in between.
    async fn call<T>(
        &self,
        id: &str,
        make: impl Fn(oneshot::Sender<Result<T, SessionError>>) -> Command,
    ) -> Result<T, SessionError> {
        for _ in 0..8 {
            let tx = self.handle(id)?;
            let (reply, answer) = oneshot::channel();
            if tx.send(make(reply)).await.is_err() {
                continue;
            }
            if let Ok(result) = answer.await {
                return result;
            }
        }
        Err(SessionError::Unavailable(id.to_string()))
    }

    /// A session's live state (loads it).
    pub async fn info(&self, id: &str) -> Result<SessionInfo, SessionError> {
        self.call(id, |reply| Command::Info { reply }).await
    }

    /// Adds a prompt: it starts at once, or queues while the agent works.
    pub async fn prompt(
        &self,
        id: &str,
        author: Author,
        text: String,
    ) -> Result<Prompt, SessionError> {
        let prompt = self
            .call(id, |reply| Command::Prompt {
                author: author.clone(),
                text: text.clone(),
                reply,
            })
            .await?;
        let mut prompters = self
            .shared
            .prompters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = log::now_ms();
        // Forget anyone idle for an hour, so the map stays as small as the team.
        prompters.retain(|_, at| now - *at < 3_600_000);
        prompters.insert(author.login, now);
        Ok(prompt)
    }

    /// The logins that added a prompt at or after `since_ms` (milliseconds since the Unix
    /// epoch, at most an hour ago), sorted. Sub-sessions an agent starts prompt in their
    /// requester's name, so they count as that person.
    pub fn prompting_since(&self, since_ms: i64) -> Vec<String> {
        let prompters = self
            .shared
            .prompters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut logins: Vec<String> = prompters
            .iter()
            .filter(|(_, at)| **at >= since_ms)
            .map(|(login, _)| login.clone())
            .collect();
        logins.sort();
        logins
    }

    /// The prompts waiting, next first.
    pub async fn queue(&self, id: &str) -> Result<Vec<Prompt>, SessionError> {
        Ok(self.info(id).await?.queue)
    }

    /// Changes a queued prompt's text; only its author may.
    pub async fn edit_prompt(
        &self,
        id: &str,
        prompt_id: i64,
        author: Author,
        text: String,
    ) -> Result<Prompt, SessionError> {
        self.call(id, |reply| Command::Edit {
            prompt_id,
            author: author.clone(),
            text: text.clone(),
            reply,
        })
        .await
    }

    /// Cancels a queued prompt; only its author may.
    pub async fn cancel_prompt(
        &self,
        id: &str,
        prompt_id: i64,
        author: Author,
    ) -> Result<Prompt, SessionError> {
        self.call(id, |reply| Command::Cancel {
            prompt_id,
            author: author.clone(),
            reply,
        })
        .await
    }

    /// Stops the running prompt at once; the queue goes on. Returns the stopped prompt.
    pub async fn stop(&self, id: &str) -> Result<Option<i64>, SessionError> {
        self.call(id, |reply| Command::Stop { reply }).await
    }

    /// Up to `limit` (at most [`MAX_EVENTS_PAGE`]) events after `after`, as logged. Read
    /// from the file beside the session's actor, so it neither waits for the actor nor
    /// loads a hibernated session.
    pub async fn events(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<LoggedEvent>>, SessionError> {
        if !valid_session_id(id) {
            return Err(SessionError::NotFound(id.to_string()));
        }
        let path = self.path(id);
        let missing = SessionError::NotFound(id.to_string());
        tokio::task::spawn_blocking(move || {
            if !path.exists() {
                return Err(missing);
            }
            log::LogReader::open(&path)?.events_after(after, limit.min(MAX_EVENTS_PAGE))
        })
        .await
        .map_err(|e| SessionError::Storage {
            path: self.path(id),
            message: format!("reading events: {e}"),
        })?
    }

    /// Appends an event from outside the agent (a pull request opened, reviewed, merged)
    /// to the session's log; returns its seq.
    pub async fn append_event(&self, id: &str, body: EventBody) -> Result<u64, SessionError> {
        self.call(id, |reply| Command::Record {
            body: body.clone(),
            reply,
        })
        .await
    }

    /// Opens a connection to a session for `who`: live events from now on (read the
    /// backlog up to [`Subscription::last_seq`] with [`Sessions::events`]).
    pub async fn subscribe(&self, id: &str, who: Author) -> Result<Subscription, SessionError> {
        for _ in 0..8 {
            let tx = self.handle(id)?;
            let (reply, answer) = oneshot::channel();
            let cmd = Command::Join {
                who: who.clone(),
                reply,
            };
            if tx.send(cmd).await.is_err() {
                continue;
            }
            match answer.await {
                Ok(Ok((receiver, last_seq))) => {
                    return Ok(Subscription {
                        receiver,
                        last_seq,
                        leave: LeaveGuard {
                            tx,
                            who: who.clone(),
                        },
                    });
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => continue,
            }
        }
        Err(SessionError::Unavailable(id.to_string()))
    }

    /// `who` is typing (shown in presence for a few seconds).
    pub async fn typing(&self, id: &str, who: Author) -> Result<(), SessionError> {
        self.call(id, |reply| Command::Typing {
            who: who.clone(),
            reply,
        })
        .await
    }

    /// `who` says what they are doing (`viewing`, `away`, …), shown in presence.
    pub async fn presence(
        &self,
        id: &str,
        who: Author,
        state: Option<String>,
    ) -> Result<(), SessionError> {
        self.call(id, |reply| Command::Presence {
            who: who.clone(),
            state: state.clone(),
            reply,
        })
        .await
    }

    /// At start-up: loads every session the index says was running, which marks what was
    /// running as interrupted. Returns their ids. (A session whose index entry missed the
    /// last status change is recovered the same way when it is next loaded.)
    pub async fn recover(&self) -> Result<Vec<String>, SessionError> {
        let ids = self.shared.store.session_ids_with_status("running")?;
        for id in &ids {
            if let Err(e) = self.info(id).await {
                tracing::error!(session = %id, "recovering: {e}");
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
