//! Sessions in the index: the list of sessions with their status, who took part, and share
//! links. A session's own history (events, prompts) lives in its own file, owned by
//! `hangar-session`; this index is what lists sessions and authorises access to them.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{Store, StoreError, TokenSecret, new_secret_with, now_ms, sha256};

/// A session's entry in the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionRecord {
    /// Its id (`ses-` and 16 hex digits).
    pub id: String,
    /// The repository it works on.
    pub repo: String,
    /// A title for people.
    pub title: String,
    /// `idle`, `running` or `interrupted` (the session crate's words).
    pub status: String,
    /// The user who created it.
    pub created_by: i64,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Last status change, likewise.
    pub updated_at_ms: i64,
    /// The session whose agent started this one, for a sub-session.
    pub parent_id: Option<String>,
}

/// What it takes to create a session's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSession {
    /// Its id, chosen by the caller.
    pub id: String,
    /// Repository.
    pub repo: String,
    /// Title.
    pub title: String,
    /// Initial status.
    pub status: String,
    /// Creator.
    pub created_by: i64,
}

/// What a share link lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareScope {
    /// Watch the session (events, presence).
    View,
    /// Watch and prompt.
    Prompt,
}

impl ShareScope {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            ShareScope::View => "view",
            ShareScope::Prompt => "prompt",
        }
    }

    /// The scope a word names.
    pub fn parse(word: &str) -> Option<ShareScope> {
        match word {
            "view" => Some(ShareScope::View),
            "prompt" => Some(ShareScope::Prompt),
            _ => None,
        }
    }
}

/// A share link's record (never its token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShareLink {
    /// Its id.
    pub id: i64,
    /// The one session it opens.
    pub session_id: String,
    /// What it allows.
    pub scope: ShareScope,
    /// Who made it.
    pub created_by: i64,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
}

const SESSION_COLUMNS: &str =
    "id, repo, title, status, created_by, created_at, updated_at, parent_id";
const SHARE_COLUMNS: &str = "id, session_id, scope, created_by, created_at, revoked_at";

fn session_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: row.get("id")?,
        repo: row.get("repo")?,
        title: row.get("title")?,
        status: row.get("status")?,
        created_by: row.get("created_by")?,
        created_at_ms: row.get("created_at")?,
        updated_at_ms: row.get("updated_at")?,
        parent_id: row.get("parent_id")?,
    })
}

fn share_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ShareLink> {
    let scope: String = row.get("scope")?;
    Ok(ShareLink {
        id: row.get("id")?,
        session_id: row.get("session_id")?,
        // Only this crate writes the column, with `as_str`.
        scope: ShareScope::parse(&scope).unwrap_or(ShareScope::View),
        created_by: row.get("created_by")?,
        created_at_ms: row.get("created_at")?,
        revoked_at_ms: row.get("revoked_at")?,
    })
}

impl Store {
    /// Records a new session.
    pub fn create_session(&self, new: &NewSession) -> Result<SessionRecord, StoreError> {
        let now = now_ms();
        self.conn().execute(
            "INSERT INTO sessions (id, repo, title, status, created_by, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![new.id, new.repo, new.title, new.status, new.created_by, now],
        )?;
        Ok(SessionRecord {
            id: new.id.clone(),
            repo: new.repo.clone(),
            title: new.title.clone(),
            status: new.status.clone(),
            created_by: new.created_by,
            created_at_ms: now,
            updated_at_ms: now,
            parent_id: None,
        })
    }

    /// One session's entry.
    pub fn session(&self, id: &str) -> Result<SessionRecord, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"),
                [id],
                session_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::SessionNotFound(id.to_string()))
    }

    /// Sessions, newest first, at most `limit`.
    pub fn sessions(&self, limit: u32) -> Result<Vec<SessionRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions ORDER BY created_at DESC, id LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], session_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The ids of sessions whose status is `status` (at start-up: those left `running`).
    pub fn session_ids_with_status(&self, status: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id FROM sessions WHERE status = ?1 ORDER BY id")?;
        let rows = stmt.query_map([status], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that `parent`'s agent started `child`.
    pub fn set_session_parent(&self, child: &str, parent: &str) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE sessions SET parent_id = ?1 WHERE id = ?2",
            params![parent, child],
        )?;
        if n == 0 {
            return Err(StoreError::SessionNotFound(child.to_string()));
        }
        Ok(())
    }

    /// The sub-sessions `parent`'s agent started, oldest first.
    pub fn session_children(&self, parent: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE parent_id = ?1 ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([parent], session_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records `image` as the session's latest snapshot; returns the one it replaces, so
    /// the caller can release it.
    pub fn set_session_snapshot(
        &self,
        session: &str,
        image: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let previous: Option<String> = tx
            .query_row(
                "SELECT image FROM session_snapshots WHERE session_id = ?1",
                [session],
                |r| r.get(0),
            )
            .optional()?;
        let n = tx.execute(
            "INSERT INTO session_snapshots (session_id, image, taken_at)
             SELECT id, ?2, ?3 FROM sessions WHERE id = ?1
             ON CONFLICT(session_id) DO UPDATE SET image = excluded.image,
                 taken_at = excluded.taken_at",
            params![session, image, now_ms()],
        )?;
        if n == 0 {
            return Err(StoreError::SessionNotFound(session.to_string()));
        }
        tx.commit()?;
        Ok(previous.filter(|p| p != image))
    }

    /// The session's latest snapshot, if one was taken.
    pub fn session_snapshot(&self, session: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT image FROM session_snapshots WHERE session_id = ?1",
                [session],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Sets a session's status.
    pub fn set_session_status(&self, id: &str, status: &str) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE sessions SET status = ?1, updated_at = ?2 WHERE id = ?3",
            params![status, now_ms(), id],
        )?;
        if n == 0 {
            return Err(StoreError::SessionNotFound(id.to_string()));
        }
        Ok(())
    }

    /// Records that a user took part in a session; true the first time.
    pub fn add_participant(&self, session_id: &str, user_id: i64) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO participants (session_id, user_id, joined_at)
             VALUES (?1, ?2, ?3)",
            params![session_id, user_id, now_ms()],
        )?;
        Ok(n == 1)
    }

    /// The ids of the users who took part in a session, in the order they joined.
    pub fn participants(&self, session_id: &str) -> Result<Vec<i64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT user_id FROM participants WHERE session_id = ?1 ORDER BY joined_at, user_id",
        )?;
        let rows = stmt.query_map([session_id], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Creates a share link for a session; its token is returned once and stored hashed.
    pub fn create_share(
        &self,
        session_id: &str,
        scope: ShareScope,
        created_by: i64,
    ) -> Result<(ShareLink, TokenSecret), StoreError> {
        self.session(session_id)?;
        let secret = new_secret_with(crate::SHARE_TOKEN_PREFIX)?;
        let now = now_ms();
        let conn = self.conn();
        conn.execute(
            "INSERT INTO share_links (session_id, scope, token_sha256, created_by, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                session_id,
                scope.as_str(),
                sha256(secret.expose()),
                created_by,
                now
            ],
        )?;
        let link = ShareLink {
            id: conn.last_insert_rowid(),
            session_id: session_id.to_string(),
            scope,
            created_by,
            created_at_ms: now,
            revoked_at_ms: None,
        };
        Ok((link, secret))
    }

    /// The share link a presented token belongs to, or [`StoreError::InvalidToken`] when it
    /// is malformed, unknown or revoked.
    pub fn verify_share(&self, presented: &str) -> Result<ShareLink, StoreError> {
        if !presented.starts_with(crate::SHARE_TOKEN_PREFIX) || presented.len() > 256 {
            return Err(StoreError::InvalidToken);
        }
        self.conn()
            .query_row(
                &format!(
                    "SELECT {SHARE_COLUMNS} FROM share_links
                     WHERE token_sha256 = ?1 AND revoked_at IS NULL"
                ),
                [sha256(presented)],
                share_from_row,
            )
            .optional()?
            .ok_or(StoreError::InvalidToken)
    }

    /// One share link.
    pub fn share(&self, id: i64) -> Result<ShareLink, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {SHARE_COLUMNS} FROM share_links WHERE id = ?1"),
                [id],
                share_from_row,
            )
            .optional()?
            .ok_or(StoreError::NotFound {
                kind: "share link",
                id,
            })
    }

    /// Revokes a share link; it stops working at once. Revoking twice is not an error.
    pub fn revoke_share(&self, id: i64) -> Result<ShareLink, StoreError> {
        let n = self.conn().execute(
            "UPDATE share_links SET revoked_at = coalesce(revoked_at, ?1) WHERE id = ?2",
            params![now_ms(), id],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "share link",
                id,
            });
        }
        self.share(id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::NewUser;

    fn setup() -> (Store, i64) {
        let store = Store::open_in_memory().unwrap();
        let u = store
            .create_user(&NewUser {
                login: "alice".into(),
                name: "Alice".into(),
                ..NewUser::default()
            })
            .unwrap();
        store
            .create_session(&NewSession {
                id: "ses-1".into(),
                repo: "acme/app".into(),
                title: "fix".into(),
                status: "idle".into(),
                created_by: u.id,
            })
            .unwrap();
        (store, u.id)
    }

    #[test]
    fn sessions_are_listed_found_and_updated() {
        let (store, uid) = setup();
        let s = store.session("ses-1").unwrap();
        assert_eq!((s.repo.as_str(), s.created_by), ("acme/app", uid));
        store.set_session_status("ses-1", "running").unwrap();
        assert_eq!(store.session_ids_with_status("running").unwrap(), ["ses-1"]);
        assert_eq!(store.sessions(10).unwrap().len(), 1);
        assert!(matches!(
            store.session("ses-2"),
            Err(StoreError::SessionNotFound(_))
        ));
        assert!(store.set_session_status("ses-2", "idle").is_err());
    }

    #[test]
    fn a_sessions_latest_snapshot_replaces_the_previous_one() {
        let (store, _) = setup();
        assert_eq!(store.session_snapshot("ses-1").unwrap(), None);
        assert_eq!(store.set_session_snapshot("ses-1", "aaa").unwrap(), None);
        assert_eq!(
            store
                .set_session_snapshot("ses-1", "bbb")
                .unwrap()
                .as_deref(),
            Some("aaa")
        );
        assert_eq!(store.set_session_snapshot("ses-1", "bbb").unwrap(), None);
        assert_eq!(
            store.session_snapshot("ses-1").unwrap().as_deref(),
            Some("bbb")
        );
        assert!(matches!(
            store.set_session_snapshot("ses-9", "ccc"),
            Err(StoreError::SessionNotFound(_))
        ));
    }

    #[test]
    fn sub_sessions_are_linked_to_their_parent() {
        let (store, uid) = setup();
        for id in ["ses-2", "ses-3"] {
            store
                .create_session(&NewSession {
                    id: id.into(),
                    repo: "acme/app".into(),
                    title: "child".into(),
                    status: "idle".into(),
                    created_by: uid,
                })
                .unwrap();
            store.set_session_parent(id, "ses-1").unwrap();
        }
        assert_eq!(
            store.session("ses-2").unwrap().parent_id.as_deref(),
            Some("ses-1")
        );
        assert_eq!(store.session("ses-1").unwrap().parent_id, None);
        let children: Vec<String> = store
            .session_children("ses-1")
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(children, ["ses-2", "ses-3"]);
        assert!(matches!(
            store.set_session_parent("ses-9", "ses-1"),
            Err(StoreError::SessionNotFound(_))
        ));
    }

    #[test]
    fn participants_are_recorded_once() {
        let (store, uid) = setup();
        assert!(store.add_participant("ses-1", uid).unwrap());
        assert!(!store.add_participant("ses-1", uid).unwrap());
        assert_eq!(store.participants("ses-1").unwrap(), [uid]);
    }

    #[test]
    fn share_tokens_are_scoped_hashed_and_revocable() {
        let (store, uid) = setup();
        let (link, secret) = store.create_share("ses-1", ShareScope::View, uid).unwrap();
        assert!(secret.expose().starts_with("hgs_"));
        assert_eq!(store.verify_share(secret.expose()).unwrap(), link);
        // A share token is not an API token, nor the other way round.
        assert!(matches!(
            store.verify_token(secret.expose()),
            Err(StoreError::InvalidToken)
        ));
        let revoked = store.revoke_share(link.id).unwrap();
        assert!(revoked.revoked_at_ms.is_some());
        assert!(matches!(
            store.verify_share(secret.expose()),
            Err(StoreError::InvalidToken)
        ));
        assert!(
            store
                .create_share("ses-9", ShareScope::Prompt, uid)
                .is_err()
        );
        assert!(store.revoke_share(99).is_err());
    }
}
