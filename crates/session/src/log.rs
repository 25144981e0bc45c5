//! A session's own SQLite file: the append-only event log, the prompts, and the session's
//! metadata. Plain synchronous functions; only the session's actor calls them.
//!
//! Durability: WAL with `synchronous = NORMAL` by default. A commit has then written the
//! transaction to the WAL file (the kernel's page cache) before it returns, so it survives
//! the process being killed (`kill -9`, a panic, an OOM kill); only a power loss or kernel
//! crash can lose the last commits, and never corrupts the file. `Durability::Full` adds an
//! fsync per commit for deployments that want power-loss durability. Either way an event is
//! handed to clients only after its transaction committed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hangar_protocol::session::{
    Author, Event, EventBody, Prompt, PromptStatus, SessionStatus, rfc3339_ms,
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::SessionError;

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        type TEXT NOT NULL,
        at INTEGER NOT NULL,
        json TEXT NOT NULL
    );
    CREATE TABLE prompts (
        id INTEGER PRIMARY KEY,
        author_user_id INTEGER,
        author_login TEXT NOT NULL,
        author_share_id INTEGER,
        text TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER
    );
    CREATE INDEX prompts_status ON prompts(status);
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );";

/// How hard a commit works to survive a crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Survives the process dying (WAL, `synchronous = NORMAL`).
    #[default]
    Process,
    /// Also survives power loss (an fsync per commit, `synchronous = FULL`).
    Full,
}

/// An event as committed: its seq and its JSON form, serialized once and shared by every
/// subscriber.
#[derive(Debug, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Its sequence number.
    pub seq: u64,
    /// `{"seq", "type", "at", "data"}`.
    pub json: String,
}

/// A change to the prompts table, committed together with the events that report it.
#[derive(Debug)]
pub enum PromptChange {
    /// A new prompt.
    Insert(Prompt),
    /// A prompt moved on.
    Status(i64, PromptStatus),
    /// A queued prompt's text was edited.
    Text(i64, String),
}

/// The open file.
pub struct SessionLog {
    conn: Connection,
    path: PathBuf,
    next_seq: u64,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn prompt_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Prompt> {
    let status: String = row.get("status")?;
    Ok(Prompt {
        id: row.get("id")?,
        author: Author {
            user_id: row.get("author_user_id")?,
            login: row.get("author_login")?,
            share_id: row.get("author_share_id")?,
        },
        text: row.get("text")?,
        // Only this module writes the column, with `as_str`.
        status: PromptStatus::parse(&status).unwrap_or(PromptStatus::Failed),
        created_at_ms: row.get("created_at")?,
    })
}

impl SessionLog {
    /// Opens (creating when `create`) the session file at `path`.
    pub fn open(path: &Path, durability: Durability, create: bool) -> Result<Self, SessionError> {
        let flags = if create {
            rusqlite::OpenFlags::default()
        } else {
            rusqlite::OpenFlags::default() - rusqlite::OpenFlags::SQLITE_OPEN_CREATE
        };
        let wrap = |e: rusqlite::Error| SessionError::Storage {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let conn = Connection::open_with_flags(path, flags).map_err(wrap)?;
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(wrap)?;
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.execute_batch(&format!("PRAGMA synchronous = {sync};"))
            .map_err(wrap)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(wrap)?;
        if version == 0 {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(wrap)?;
        } else if version > SCHEMA_VERSION {
            return Err(SessionError::Storage {
                path: path.to_path_buf(),
                message: format!(
                    "schema version {version} is newer than this Hangar's {SCHEMA_VERSION}; upgrade Hangar"
                ),
            });
        }
        let last: Option<u64> = conn
            .query_row("SELECT max(seq) FROM events", [], |r| r.get(0))
            .map_err(wrap)?;
        Ok(SessionLog {
            conn,
            path: path.to_path_buf(),
            next_seq: last.unwrap_or(0) + 1,
        })
    }

    fn err(&self, e: rusqlite::Error) -> SessionError {
        SessionError::Storage {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// The seq of the last event, 0 when there is none.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<String>, SessionError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Sets metadata values in one transaction.
    pub fn set_meta(&mut self, pairs: &[(&str, &str)]) -> Result<(), SessionError> {
        let tx = self.conn.transaction().map_err(|e| SessionError::Storage {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        for (k, v) in pairs {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![k, v],
            )
            .map_err(|e| SessionError::Storage {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// The session's status as last recorded.
    pub fn status(&self) -> Result<SessionStatus, SessionError> {
        Ok(self
            .meta("status")?
            .and_then(|s| SessionStatus::parse(&s))
            .unwrap_or(SessionStatus::Idle))
    }

    /// Prompts with one of these statuses, oldest first.
    pub fn prompts_with(&self, statuses: &[PromptStatus]) -> Result<Vec<Prompt>, SessionError> {
        let words: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, author_user_id, author_login, author_share_id, text, status, created_at
                 FROM prompts WHERE status IN (SELECT value FROM json_each(?1)) ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let list = serde_json::to_string(&words).unwrap_or_else(|_| "[]".into());
        let rows = stmt
            .query_map([list], prompt_from_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The next prompt id.
    pub fn next_prompt_id(&self) -> Result<i64, SessionError> {
        let max: Option<i64> = self
            .conn
            .query_row("SELECT max(id) FROM prompts", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(max.unwrap_or(0) + 1)
    }

    /// Commits prompt changes, an optional status and events in one transaction, and returns
    /// the events as logged. Nothing is visible to anyone before this returns.
    pub fn commit(
        &mut self,
        changes: &[PromptChange],
        status: Option<SessionStatus>,
        bodies: Vec<EventBody>,
    ) -> Result<Vec<Arc<LoggedEvent>>, SessionError> {
        let now = now_ms();
        let at = rfc3339_ms(now);
        let mut out = Vec::with_capacity(bodies.len());
        let mut seq = self.next_seq;
        let path = self.path.clone();
        let wrap = move |e: rusqlite::Error| SessionError::Storage {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(&wrap)?;
        for change in changes {
            match change {
                PromptChange::Insert(p) => {
                    tx.prepare_cached(
                        "INSERT INTO prompts (id, author_user_id, author_login, author_share_id,
                            text, status, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            p.id,
                            p.author.user_id,
                            p.author.login,
                            p.author.share_id,
                            p.text,
                            p.status.as_str(),
                            p.created_at_ms
                        ])
                    })
                    .map_err(&wrap)?;
                }
                PromptChange::Status(id, status) => {
                    let column = if *status == PromptStatus::Running {
                        "started_at"
                    } else {
                        "finished_at"
                    };
                    tx.execute(
                        &format!("UPDATE prompts SET status = ?1, {column} = ?2 WHERE id = ?3"),
                        params![status.as_str(), now, id],
                    )
                    .map_err(&wrap)?;
                }
                PromptChange::Text(id, text) => {
                    tx.execute(
                        "UPDATE prompts SET text = ?1 WHERE id = ?2",
                        params![text, id],
                    )
                    .map_err(&wrap)?;
                }
            }
        }
        if let Some(status) = status {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('status', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [status.as_str()],
            )
            .map_err(&wrap)?;
        }
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO events (seq, type, at, json) VALUES (?1, ?2, ?3, ?4)")
                .map_err(&wrap)?;
            for body in bodies {
                let kind = body.type_name();
                let event = Event {
                    seq,
                    at: at.clone(),
                    body,
                };
                let json = serde_json::to_string(&event).map_err(|e| SessionError::Storage {
                    path: self.path.clone(),
                    message: format!("encoding a {kind} event: {e}"),
                })?;
                insert
                    .execute(params![seq, kind, now, json])
                    .map_err(&wrap)?;
                out.push(Arc::new(LoggedEvent { seq, json }));
                seq += 1;
            }
        }
        tx.commit().map_err(&wrap)?;
        self.next_seq = seq;
        Ok(out)
    }

    /// Up to `limit` events with a seq above `after`, in order.
    pub fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<LoggedEvent>>, SessionError> {
        events_after(&self.conn, after, limit).map_err(|e| self.err(e))
    }

    /// Checks the file's integrity (`PRAGMA integrity_check`).
    pub fn integrity_ok(&self) -> Result<bool, SessionError> {
        let r: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(r == "ok")
    }
}

fn events_after(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<Arc<LoggedEvent>>> {
    let mut stmt =
        conn.prepare_cached("SELECT seq, json FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
    let rows = stmt.query_map(params![after, limit as i64], |r| {
        Ok(Arc::new(LoggedEvent {
            seq: r.get(0)?,
            json: r.get(1)?,
        }))
    })?;
    rows.collect()
}

/// A read-only view of a session's file, beside its actor's connection: catch-up reads
/// (a client's backlog) neither queue behind the actor's writes nor wake a hibernated
/// session. WAL lets them read committed events while the actor appends.
pub struct LogReader {
    conn: Connection,
    path: PathBuf,
}

impl LogReader {
    /// Opens the existing session file at `path` for reading.
    pub fn open(path: &Path) -> Result<LogReader, SessionError> {
        let wrap = |e: rusqlite::Error| SessionError::Storage {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        // Read-write without create: a read-only connection could not make the WAL's
        // shared-memory file of a session that is not loaded. `query_only` keeps it a reader.
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(wrap)?;
        conn.execute_batch("PRAGMA query_only = ON;")
            .map_err(wrap)?;
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(wrap)?;
        Ok(LogReader {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Up to `limit` events with a seq above `after`, in order (none from a file whose
    /// schema is not written yet).
    pub fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<LoggedEvent>>, SessionError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if version == 0 {
            return Ok(Vec::new());
        }
        events_after(&self.conn, after, limit).map_err(|e| self.err(e))
    }

    fn err(&self, e: rusqlite::Error) -> SessionError {
        SessionError::Storage {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn delta(text: &str) -> EventBody {
        EventBody::ModelDelta {
            prompt_id: 1,
            text: text.into(),
        }
    }

    #[test]
    fn seqs_continue_across_reopen_and_reads_page() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut log = SessionLog::open(&path, Durability::Process, true).unwrap();
        let evs = log.commit(&[], None, vec![delta("a"), delta("b")]).unwrap();
        assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        drop(log);
        let mut log = SessionLog::open(&path, Durability::Full, false).unwrap();
        assert_eq!(log.last_seq(), 2);
        log.commit(&[], Some(SessionStatus::Running), vec![delta("c")])
            .unwrap();
        let page = log.events_after(1, 1).unwrap();
        assert_eq!(page.len(), 1);
        let ev: Event = serde_json::from_str(&page[0].json).unwrap();
        assert_eq!((ev.seq, ev.body), (2, delta("b")));
        assert_eq!(log.events_after(0, 100).unwrap().len(), 3);
        // A reader beside the writer sees every committed event, and a later commit.
        let reader = LogReader::open(&path).unwrap();
        assert_eq!(reader.events_after(0, 100).unwrap().len(), 3);
        log.commit(&[], None, vec![delta("d")]).unwrap();
        let after = reader.events_after(2, 100).unwrap();
        assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
        assert!(
            reader.conn.execute("DELETE FROM events", []).is_err(),
            "the reader cannot write"
        );
        assert_eq!(log.status().unwrap(), SessionStatus::Running);
        assert!(log.integrity_ok().unwrap());
    }

    #[test]
    fn opening_a_missing_file_without_create_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(SessionLog::open(&dir.path().join("none.db"), Durability::Process, false).is_err());
        assert!(LogReader::open(&dir.path().join("none.db")).is_err());
        assert!(!dir.path().join("none.db").exists(), "nothing was created");
    }

    #[test]
    fn prompts_change_with_their_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut log =
            SessionLog::open(&dir.path().join("s.db"), Durability::Process, true).unwrap();
        let p = Prompt {
            id: log.next_prompt_id().unwrap(),
            author: Author {
                user_id: Some(1),
                login: "a".into(),
                share_id: None,
            },
            text: "x".into(),
            status: PromptStatus::Queued,
            created_at_ms: 1,
        };
        log.commit(&[PromptChange::Insert(p.clone())], None, vec![])
            .unwrap();
        log.commit(
            &[
                PromptChange::Text(1, "y".into()),
                PromptChange::Status(1, PromptStatus::Running),
            ],
            None,
            vec![],
        )
        .unwrap();
        let running = log.prompts_with(&[PromptStatus::Running]).unwrap();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].text, "y");
        assert!(
            log.prompts_with(&[PromptStatus::Queued])
                .unwrap()
                .is_empty()
        );
        assert_eq!(log.next_prompt_id().unwrap(), 2);
    }
}
