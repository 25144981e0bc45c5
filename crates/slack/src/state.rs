//! What the Slack app remembers, in its own SQLite file (`<data dir>/slack.db`, WAL): which
//! thread follows which session, which deliveries and messages were already acted on,
//! which Slack user is which Hangar user, one-time link codes, and requests waiting for a
//! repository choice. Kept apart from the index so the core schema knows nothing of Slack.
//!
//! Link codes are stored only as their SHA-256 hash, like API tokens.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long delivery ids are remembered: Slack retries within minutes.
const SEEN_FOR: Duration = Duration::from_secs(24 * 3600);

/// How long a link code works.
pub const LINK_CODE_TTL: Duration = Duration::from_secs(3600);

/// How long a request waits for its repository to be chosen.
const PENDING_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

const MIGRATIONS: &[&str] = &[
    // 1: everything the Slack app keeps.
    "CREATE TABLE seen (key TEXT PRIMARY KEY, at INTEGER NOT NULL);
    CREATE INDEX seen_at ON seen(at);
    CREATE TABLE threads (
        team_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        thread_ts TEXT NOT NULL,
        session_id TEXT NOT NULL,
        repo TEXT NOT NULL,
        user_id INTEGER NOT NULL,
        progress_ts TEXT NOT NULL,
        last_seq INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (team_id, channel, thread_ts)
    );
    CREATE INDEX threads_session ON threads(session_id);
    CREATE TABLE links (
        team_id TEXT NOT NULL,
        slack_user TEXT NOT NULL,
        user_id INTEGER NOT NULL,
        linked_at INTEGER NOT NULL,
        PRIMARY KEY (team_id, slack_user)
    );
    CREATE TABLE link_codes (
        code_sha256 BLOB PRIMARY KEY,
        request TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE pending (
        id INTEGER PRIMARY KEY,
        request TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );",
];

/// Why the Slack state failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite failed.
    #[error("Slack state database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The file was written by a newer Hangar.
    #[error(
        "Slack state database has schema {found}, newer than this Hangar ({supported}); upgrade Hangar"
    )]
    TooNew {
        /// Found.
        found: i64,
        /// Supported.
        supported: i64,
    },
    /// The random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}

/// A request from Slack: who asked what, where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlackRequest {
    /// The workspace.
    pub team_id: String,
    /// The channel.
    pub channel: String,
    /// The thread the bot answers in.
    pub thread_ts: String,
    /// The message itself.
    pub ts: String,
    /// Who asked.
    pub slack_user: String,
    /// What they asked, mentions removed.
    pub text: String,
}

/// A thread that follows a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadLink {
    /// The workspace.
    pub team_id: String,
    /// The channel.
    pub channel: String,
    /// The thread's root.
    pub thread_ts: String,
    /// The session.
    pub session_id: String,
    /// Its repository.
    pub repo: String,
    /// The Hangar user who started it.
    pub user_id: i64,
    /// The bot's progress message, edited in place.
    pub progress_ts: String,
    /// The last session event shown in the thread.
    pub last_seq: u64,
}

/// The Slack app's state.
pub struct SlackState {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SlackState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlackState")
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn sha256(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

fn thread_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ThreadLink> {
    Ok(ThreadLink {
        team_id: row.get(0)?,
        channel: row.get(1)?,
        thread_ts: row.get(2)?,
        session_id: row.get(3)?,
        repo: row.get(4)?,
        user_id: row.get(5)?,
        progress_ts: row.get(6)?,
        last_seq: row.get::<_, i64>(7)? as u64,
    })
}

const THREAD_COLUMNS: &str =
    "team_id, channel, thread_ts, session_id, repo, user_id, progress_ts, last_seq";

impl SlackState {
    /// Opens (creating or migrating) the state file.
    pub fn open(path: &Path) -> Result<SlackState, StateError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        SlackState::init(conn)
    }

    /// A state that lives in memory (tests).
    pub fn open_in_memory() -> Result<SlackState, StateError> {
        SlackState::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<SlackState, StateError> {
        let supported = MIGRATIONS.len() as i64;
        let tx = conn.transaction()?;
        let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if found > supported {
            return Err(StateError::TooNew { found, supported });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(SlackState {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // Each use is one statement or one transaction: a panicking holder leaves it whole.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `key` (an event id, a message); true the first time only. Keys older than a
    /// day are forgotten.
    pub fn first_sighting(&self, key: &str) -> Result<bool, StateError> {
        let conn = self.conn();
        let now = now_ms();
        conn.execute(
            "DELETE FROM seen WHERE at < ?1",
            params![now - SEEN_FOR.as_millis() as i64],
        )?;
        let n = conn.execute(
            "INSERT OR IGNORE INTO seen (key, at) VALUES (?1, ?2)",
            params![key, now],
        )?;
        Ok(n == 1)
    }

    /// The session a thread follows.
    pub fn thread(
        &self,
        team_id: &str,
        channel: &str,
        thread_ts: &str,
    ) -> Result<Option<ThreadLink>, StateError> {
        let sql = format!(
            "SELECT {THREAD_COLUMNS} FROM threads WHERE team_id = ?1 AND channel = ?2 AND thread_ts = ?3"
        );
        Ok(self
            .conn()
            .query_row(&sql, params![team_id, channel, thread_ts], thread_from_row)
            .optional()?)
    }

    /// The thread that follows a session.
    pub fn thread_of_session(&self, session_id: &str) -> Result<Option<ThreadLink>, StateError> {
        let sql = format!("SELECT {THREAD_COLUMNS} FROM threads WHERE session_id = ?1");
        Ok(self
            .conn()
            .query_row(&sql, params![session_id], thread_from_row)
            .optional()?)
    }

    /// Records that a thread follows a session.
    pub fn save_thread(&self, t: &ThreadLink) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO threads (team_id, channel, thread_ts, session_id, repo, user_id, progress_ts, last_seq, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                t.team_id,
                t.channel,
                t.thread_ts,
                t.session_id,
                t.repo,
                t.user_id,
                t.progress_ts,
                t.last_seq as i64,
                now_ms()
            ],
        )?;
        Ok(())
    }

    /// The last event of `session_id` shown in its thread.
    pub fn set_last_seq(&self, session_id: &str, seq: u64) -> Result<(), StateError> {
        self.conn().execute(
            "UPDATE threads SET last_seq = MAX(last_seq, ?2) WHERE session_id = ?1",
            params![session_id, seq as i64],
        )?;
        Ok(())
    }

    /// The Hangar user a Slack user linked.
    pub fn linked_user(&self, team_id: &str, slack_user: &str) -> Result<Option<i64>, StateError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT user_id FROM links WHERE team_id = ?1 AND slack_user = ?2",
                params![team_id, slack_user],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// A one-time code that links `request`'s Slack user to whoever presents it with their
    /// Hangar token; `request` runs once it is used.
    pub fn new_link_code(&self, request: &SlackRequest) -> Result<String, StateError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| StateError::Random(e.to_string()))?;
        let code: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let json = serde_json::to_string(request).unwrap_or_default();
        self.conn().execute(
            "INSERT INTO link_codes (code_sha256, request, created_at) VALUES (?1, ?2, ?3)",
            params![sha256(&code), json, now_ms()],
        )?;
        Ok(code)
    }

    /// Uses a link code: links its Slack user to `user_id` and returns the request that
    /// waited for it. `None` for an unknown, used or expired code.
    pub fn use_link_code(
        &self,
        code: &str,
        user_id: i64,
    ) -> Result<Option<SlackRequest>, StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let oldest = now_ms() - LINK_CODE_TTL.as_millis() as i64;
        tx.execute(
            "DELETE FROM link_codes WHERE created_at < ?1",
            params![oldest],
        )?;
        let json: Option<String> = tx
            .query_row(
                "DELETE FROM link_codes WHERE code_sha256 = ?1 RETURNING request",
                params![sha256(code.trim())],
                |r| r.get(0),
            )
            .optional()?;
        let Some(request) = json.and_then(|j| serde_json::from_str::<SlackRequest>(&j).ok()) else {
            tx.commit()?;
            return Ok(None);
        };
        tx.execute(
            "INSERT OR REPLACE INTO links (team_id, slack_user, user_id, linked_at) VALUES (?1, ?2, ?3, ?4)",
            params![request.team_id, request.slack_user, user_id, now_ms()],
        )?;
        tx.commit()?;
        Ok(Some(request))
    }

    /// Keeps a request until its repository is chosen; returns its id.
    pub fn add_pending(&self, request: &SlackRequest) -> Result<i64, StateError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM pending WHERE created_at < ?1",
            params![now_ms() - PENDING_FOR.as_millis() as i64],
        )?;
        conn.execute(
            "INSERT INTO pending (request, created_at) VALUES (?1, ?2)",
            params![serde_json::to_string(request).unwrap_or_default(), now_ms()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Takes a waiting request (once: a second click finds nothing).
    pub fn take_pending(&self, id: i64) -> Result<Option<SlackRequest>, StateError> {
        let json: Option<String> = self
            .conn()
            .query_row(
                "DELETE FROM pending WHERE id = ?1 RETURNING request",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn request() -> SlackRequest {
        SlackRequest {
            team_id: "T1".into(),
            channel: "C1".into(),
            thread_ts: "1.0".into(),
            ts: "1.0".into(),
            slack_user: "U1".into(),
            text: "fix it".into(),
        }
    }

    #[test]
    fn a_key_is_new_only_once() {
        let s = SlackState::open_in_memory().unwrap();
        assert!(s.first_sighting("Ev1").unwrap());
        assert!(!s.first_sighting("Ev1").unwrap());
        assert!(s.first_sighting("Ev2").unwrap());
    }

    #[test]
    fn link_codes_work_once_and_are_stored_hashed() {
        let s = SlackState::open_in_memory().unwrap();
        let code = s.new_link_code(&request()).unwrap();
        assert_eq!(s.linked_user("T1", "U1").unwrap(), None);
        let stored: Vec<u8> = s
            .conn()
            .query_row("SELECT code_sha256 FROM link_codes", [], |r| r.get(0))
            .unwrap();
        assert_ne!(stored, code.as_bytes());
        assert_eq!(s.use_link_code(&code, 7).unwrap(), Some(request()));
        assert_eq!(s.linked_user("T1", "U1").unwrap(), Some(7));
        assert_eq!(s.use_link_code(&code, 8).unwrap(), None);
        assert_eq!(s.use_link_code("nonsense", 8).unwrap(), None);
        assert_eq!(s.linked_user("T1", "U1").unwrap(), Some(7));
    }

    #[test]
    fn threads_and_pending_requests_round_trip() {
        let s = SlackState::open_in_memory().unwrap();
        let t = ThreadLink {
            team_id: "T1".into(),
            channel: "C1".into(),
            thread_ts: "1.0".into(),
            session_id: "ses-0123456789abcdef".into(),
            repo: "acme/app".into(),
            user_id: 1,
            progress_ts: "2.0".into(),
            last_seq: 0,
        };
        s.save_thread(&t).unwrap();
        s.set_last_seq(&t.session_id, 9).unwrap();
        s.set_last_seq(&t.session_id, 4).unwrap();
        let got = s.thread("T1", "C1", "1.0").unwrap().unwrap();
        assert_eq!(got.last_seq, 9);
        assert_eq!(
            s.thread_of_session(&t.session_id)
                .unwrap()
                .unwrap()
                .thread_ts,
            "1.0"
        );
        assert_eq!(s.thread("T1", "C1", "3.0").unwrap(), None);
        let id = s.add_pending(&request()).unwrap();
        assert_eq!(s.take_pending(id).unwrap(), Some(request()));
        assert_eq!(s.take_pending(id).unwrap(), None);
    }

    #[test]
    fn a_newer_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slack.db");
        drop(SlackState::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(
            SlackState::open(&path),
            Err(StateError::TooNew { .. })
        ));
    }
}
