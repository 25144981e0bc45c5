//! Environments in the index: shared sandboxes without an agent (`hangar env create`),
//! each with a unique name, the Python it was asked for, the image and the sandbox it
//! runs in. The sandbox itself is the runtime's; this is the list people see.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{Store, StoreError, now_ms};

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

    /// Forgets an environment (its sandbox is the caller's to destroy).
    pub fn remove_environment(&self, id: &str) -> Result<(), StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM environments WHERE id = ?1", [id])?;
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
        store.remove_environment("env-a").unwrap();
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
