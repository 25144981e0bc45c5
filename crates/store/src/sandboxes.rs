//! Sandboxes in the index: what each sandbox serves (a session, the warm pool, an
//! environment, an image build, or a person through the API), for which repository and
//! session, who asked for it, and when it started and ended. The runtime's own records say
//! what state a sandbox is in; the index says why it exists, and keeps that after it is gone.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{Store, StoreError, now_ms};

/// A sandbox's entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SandboxRecord {
    /// Its id (the runtime's).
    pub id: String,
    /// What it serves: `session`, `pool`, `environment`, `build` or `api`.
    pub purpose: String,
    /// The repository it holds, if any.
    pub repo: Option<String>,
    /// The session it serves, once one took it.
    pub session_id: Option<String>,
    /// The user who asked for it, when a person did.
    pub created_by: Option<i64>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// When it was destroyed, if it was.
    pub ended_at_ms: Option<i64>,
}

const COLUMNS: &str = "id, purpose, repo, session_id, created_by, created_at, ended_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SandboxRecord> {
    Ok(SandboxRecord {
        id: r.get(0)?,
        purpose: r.get(1)?,
        repo: r.get(2)?,
        session_id: r.get(3)?,
        created_by: r.get(4)?,
        created_at_ms: r.get(5)?,
        ended_at_ms: r.get(6)?,
    })
}

impl Store {
    /// Records a sandbox just created for `purpose`.
    pub fn record_sandbox(
        &self,
        id: &str,
        purpose: &str,
        repo: Option<&str>,
        created_by: Option<i64>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO sandboxes (id, purpose, repo, created_by, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO UPDATE SET purpose = ?2, repo = ?3, created_by = ?4",
            params![id, purpose, repo, created_by, now_ms()],
        )?;
        Ok(())
    }

    /// A session took the sandbox (e.g. from the warm pool).
    pub fn sandbox_serves_session(
        &self,
        id: &str,
        session_id: &str,
        repo: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO sandboxes (id, purpose, repo, session_id, created_at)
             VALUES (?1, 'session', ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET purpose = 'session', session_id = ?3,
               repo = coalesce(?2, repo)",
            params![id, repo, session_id, now_ms()],
        )?;
        Ok(())
    }

    /// The sandbox was destroyed.
    pub fn sandbox_ended(&self, id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE sandboxes SET ended_at = ?2 WHERE id = ?1 AND ended_at IS NULL",
            params![id, now_ms()],
        )?;
        Ok(())
    }

    /// The sandbox's entry, if it has one.
    pub fn sandbox_record(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM sandboxes WHERE id = ?1"),
                [id],
                from_row,
            )
            .optional()?)
    }

    /// Entries, newest first: only live ones, or also those that ended (at most `limit`).
    pub fn sandbox_records(
        &self,
        include_ended: bool,
        limit: usize,
    ) -> Result<Vec<SandboxRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE ?1 OR ended_at IS NULL
             ORDER BY created_at DESC, id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![include_ended, limit as i64], from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_sandbox_taken_by_a_session_then_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("index.db")).unwrap();
        store
            .record_sandbox("sb-1", "pool", Some("acme/app"), None)
            .unwrap();
        let (admin, _) = store.ensure_admin().unwrap().unwrap();
        store
            .record_sandbox("sb-2", "api", None, Some(admin.id))
            .unwrap();
        store.sandbox_serves_session("sb-1", "ses-1", None).unwrap();
        let one = store.sandbox_record("sb-1").unwrap().unwrap();
        assert_eq!(one.purpose, "session");
        assert_eq!(one.session_id.as_deref(), Some("ses-1"));
        assert_eq!(one.repo.as_deref(), Some("acme/app"), "kept from the pool");
        store.sandbox_ended("sb-1").unwrap();
        let ended = store.sandbox_record("sb-1").unwrap().unwrap().ended_at_ms;
        assert!(ended.is_some());
        store.sandbox_ended("sb-1").unwrap();
        assert_eq!(
            store.sandbox_record("sb-1").unwrap().unwrap().ended_at_ms,
            ended,
            "the first end stays"
        );
        let live: Vec<String> = store
            .sandbox_records(false, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(live, ["sb-2"]);
        assert_eq!(store.sandbox_records(true, 10).unwrap().len(), 2);
        assert_eq!(store.sandbox_records(true, 1).unwrap().len(), 1);
        assert!(store.sandbox_record("sb-9").unwrap().is_none());
        // A session's sandbox the index never saw created (made before it existed).
        store
            .sandbox_serves_session("sb-3", "ses-2", Some("acme/app"))
            .unwrap();
        assert_eq!(
            store.sandbox_record("sb-3").unwrap().unwrap().purpose,
            "session"
        );
    }
}
