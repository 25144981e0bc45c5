//! Environments in the index: shared sandboxes without an agent (`hangar env create`),
//! each with a unique name, the Python it was asked for, the image and the sandbox it
//! runs in, and its share links: `hgs_` tokens that open that one environment (its page and
//! terminals), stored hashed. The sandbox itself is the runtime's; this is the list people
//! see.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{Store, StoreError, TokenSecret, new_secret_with, now_ms, sha256};

/// An environment's entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnvironmentRecord {
    /// Its id (`env-` and 16 hex digits).
    pub id: String,
    /// Its unique name.
    pub name: String,
    /// The Python version it provides (e.g. `3.9.2`).
    pub python: String,
    /// The Debian suite of its image.
    pub suite: String,
    /// The repository checked out in it, if any.
    pub repo: Option<String>,
    /// The image it was started from.
    pub image: String,
    /// Its sandbox.
    pub sandbox: String,
    /// The user who created it.
    pub created_by: i64,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

const COLUMNS: &str = "id, name, python, suite, repo, image, sandbox, created_by, created_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EnvironmentRecord> {
    Ok(EnvironmentRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        python: r.get(2)?,
        suite: r.get(3)?,
        repo: r.get(4)?,
        image: r.get(5)?,
        sandbox: r.get(6)?,
        created_by: r.get(7)?,
        created_at_ms: r.get(8)?,
    })
}

impl Store {
    /// Records an environment; its `created_at_ms` is set here. A name in use is
    /// [`StoreError::DuplicateEnvironment`].
    pub fn add_environment(
        &self,
        env: &EnvironmentRecord,
    ) -> Result<EnvironmentRecord, StoreError> {
        let now = now_ms();
        let r = self.conn().execute(
            &format!(
                "INSERT INTO environments ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ),
            params![
                env.id,
                env.name,
                env.python,
                env.suite,
                env.repo,
                env.image,
                env.sandbox,
                env.created_by,
                now
            ],
        );
        match r {
            Ok(_) => Ok(EnvironmentRecord {
                created_at_ms: now,
                ..env.clone()
            }),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::DuplicateEnvironment(env.name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The environment with this id or name.
    pub fn environment(&self, id_or_name: &str) -> Result<EnvironmentRecord, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM environments WHERE id = ?1 OR name = ?1"),
                [id_or_name],
                from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::EnvironmentNotFound(id_or_name.to_string()))
    }

    /// Every environment, newest first.
    pub fn environments(&self) -> Result<Vec<EnvironmentRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM environments ORDER BY created_at DESC, id"
        ))?;
        let rows = stmt.query_map([], from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A share link for environment `id`: returns its id and its token (shown once).
    pub fn create_environment_share(
        &self,
        id: &str,
        created_by: i64,
    ) -> Result<(i64, TokenSecret), StoreError> {
        let env = self.environment(id)?;
        let secret = new_secret_with(crate::SHARE_TOKEN_PREFIX)?;
        let conn = self.conn();
        conn.execute(
            "INSERT INTO environment_shares (environment_id, token_sha256, created_by, created_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![env.id, sha256(secret.expose()), created_by, now_ms()],
        )?;
        Ok((conn.last_insert_rowid(), secret))
    }

    /// The share link `presented` belongs to: its id and its environment's id.
    /// [`StoreError::InvalidToken`] for anything else.
    pub fn verify_environment_share(&self, presented: &str) -> Result<(i64, String), StoreError> {
        if !presented.starts_with(crate::SHARE_TOKEN_PREFIX) || presented.len() > 256 {
            return Err(StoreError::InvalidToken);
        }
        self.conn()
            .query_row(
                "SELECT id, environment_id FROM environment_shares
                 WHERE token_sha256 = ?1 AND revoked_at IS NULL",
                [sha256(presented)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or(StoreError::InvalidToken)
    }

    /// Forgets an environment and its share links (its sandbox is the caller's to
    /// destroy).
    pub fn remove_environment(&self, id: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM environment_shares WHERE environment_id = ?1",
            [id],
        )?;
        let n = conn.execute("DELETE FROM environments WHERE id = ?1", [id])?;
        if n == 0 {
            return Err(StoreError::EnvironmentNotFound(id.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(id: &str, name: &str, by: i64) -> EnvironmentRecord {
        EnvironmentRecord {
            id: id.into(),
            name: name.into(),
            python: "3.9.2".into(),
            suite: "bullseye".into(),
            repo: None,
            image: "img".into(),
            sandbox: "sb-1".into(),
            created_by: by,
            created_at_ms: 0,
        }
    }

    #[test]
    fn environments_are_found_by_id_or_name_and_names_are_unique() {
        let store = Store::open_in_memory().unwrap();
        let (admin, _) = store.ensure_admin().unwrap().unwrap();
        let a = store
            .add_environment(&record("env-a", "collab-py", admin.id))
            .unwrap();
        assert!(a.created_at_ms > 0);
        assert_eq!(store.environment("env-a").unwrap(), a);
        assert_eq!(store.environment("collab-py").unwrap(), a);
        assert!(matches!(
            store.add_environment(&record("env-b", "collab-py", admin.id)),
            Err(StoreError::DuplicateEnvironment(n)) if n == "collab-py"
        ));
        store
            .add_environment(&record("env-c", "other", admin.id))
            .unwrap();
        assert_eq!(store.environments().unwrap().len(), 2);
        let (_, token) = store
            .create_environment_share("collab-py", admin.id)
            .unwrap();
        assert_eq!(
            store.verify_environment_share(token.expose()).unwrap().1,
            "env-a"
        );
        assert!(matches!(
            store.verify_share(token.expose()),
            Err(StoreError::InvalidToken)
        ));
        store.remove_environment("env-a").unwrap();
        assert!(matches!(
            store.verify_environment_share(token.expose()),
            Err(StoreError::InvalidToken)
        ));
        assert!(matches!(
            store.environment("collab-py"),
            Err(StoreError::EnvironmentNotFound(_))
        ));
        assert!(matches!(
            store.remove_environment("env-a"),
            Err(StoreError::EnvironmentNotFound(_))
        ));
    }
}
