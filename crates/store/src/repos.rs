//! The repository registry: the repositories sessions may work on, where each is cloned
//! from, its default branch, what people and classifiers need to pick it (a description
//! and hints), and a recipe registered outside the repository, if any.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{Store, StoreError, is_sqlite_code, now_ms};

/// A registered repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Repo {
    /// Its name, `owner/name`.
    pub name: String,
    /// Where it is cloned from: a local path, `file://`, `https://` or `ssh://` URL. Never
    /// holds credentials.
    pub url: String,
    /// The branch sessions start from and open pull requests against.
    pub default_branch: String,
    /// What it is, for people and for the repository classifier.
    pub description: String,
    /// Words, channels or paths that point at it (for the classifier).
    pub hints: Vec<String>,
    /// A recipe registered for it (TOML), used instead of the repository's `hangar.toml`.
    pub recipe: Option<String>,
    /// Who registered it.
    pub created_by: Option<i64>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Last change, likewise.
    pub updated_at_ms: i64,
}

/// What it takes to register a repository.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewRepo {
    /// `owner/name`.
    pub name: String,
    /// Clone URL or path.
    pub url: String,
    /// Default branch (`main` when empty).
    pub default_branch: String,
    /// Description.
    pub description: String,
    /// Hints.
    pub hints: Vec<String>,
    /// Who registers it.
    pub created_by: Option<i64>,
}

/// Checks a repository name: `owner/name`, each part 1–100 of `A-Z a-z 0-9 - _ .`, not
/// `.` or `..` (the names GitHub allows, and safe in paths and URLs).
pub fn check_repo_name(name: &str) -> Result<(), StoreError> {
    let bad = || {
        StoreError::Invalid(format!(
            "repository name {name:?} must be owner/name (letters, digits, '-', '_', '.')"
        ))
    };
    let (owner, repo) = name.split_once('/').ok_or_else(bad)?;
    for part in [owner, repo] {
        let ok = !part.is_empty()
            && part.len() <= 100
            && part != "."
            && part != ".."
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

/// Checks a branch name the way `git check-ref-format --branch` would, for the cases that
/// matter here: no spaces, control characters, `..`, `~^:?*[\`, leading `-` or `/`,
/// trailing `/`, `.lock` or `.`.
pub fn check_branch_name(branch: &str) -> Result<(), StoreError> {
    let ok = !branch.is_empty()
        && branch.len() <= 255
        && !branch.starts_with(['-', '/', '.'])
        && !branch.ends_with(['/', '.'])
        && !branch.ends_with(".lock")
        && !branch.contains("..")
        && !branch.contains("//")
        && !branch.contains("@{")
        && !branch
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{branch:?} is not a valid branch name"
        )))
    }
}

const REPO_COLUMNS: &str =
    "name, url, default_branch, description, hints, recipe, created_by, created_at, updated_at";

fn repo_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Repo> {
    let hints: String = row.get("hints")?;
    Ok(Repo {
        name: row.get("name")?,
        url: row.get("url")?,
        default_branch: row.get("default_branch")?,
        description: row.get("description")?,
        // Only this crate writes the column, as a JSON list.
        hints: serde_json::from_str(&hints).unwrap_or_default(),
        recipe: row.get("recipe")?,
        created_by: row.get("created_by")?,
        created_at_ms: row.get("created_at")?,
        updated_at_ms: row.get("updated_at")?,
    })
}

impl Store {
    /// Registers a repository; its name must be new.
    pub fn add_repo(&self, new: &NewRepo) -> Result<Repo, StoreError> {
        check_repo_name(&new.name)?;
        if new.url.trim().is_empty() {
            return Err(StoreError::Invalid(format!(
                "repository {}: a clone URL or path is needed",
                new.name
            )));
        }
        let branch = if new.default_branch.is_empty() {
            "main"
        } else {
            &new.default_branch
        };
        check_branch_name(branch)?;
        let hints = serde_json::to_string(&new.hints)
            .map_err(|e| StoreError::Invalid(format!("hints: {e}")))?;
        let now = now_ms();
        let inserted = self.conn().execute(
            "INSERT INTO repos (name, url, default_branch, description, hints, created_by,
                                created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![
                new.name,
                new.url,
                branch,
                new.description,
                hints,
                new.created_by,
                now
            ],
        );
        match inserted {
            Ok(_) => self.repo(&new.name),
            Err(e) if is_sqlite_code(&e, rusqlite::ErrorCode::ConstraintViolation) => {
                Err(StoreError::DuplicateRepo(new.name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One repository.
    pub fn repo(&self, name: &str) -> Result<Repo, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {REPO_COLUMNS} FROM repos WHERE name = ?1"),
                [name],
                repo_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::RepoNotFound(name.to_string()))
    }

    /// Every repository, by name.
    pub fn repos(&self) -> Result<Vec<Repo>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {REPO_COLUMNS} FROM repos ORDER BY name"))?;
        let rows = stmt.query_map([], repo_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets (or, with `None`, removes) the recipe registered for a repository.
    pub fn set_repo_recipe(&self, name: &str, recipe: Option<&str>) -> Result<Repo, StoreError> {
        let changed = self.conn().execute(
            "UPDATE repos SET recipe = ?2, updated_at = ?3 WHERE name = ?1",
            params![name, recipe, now_ms()],
        )?;
        if changed == 0 {
            return Err(StoreError::RepoNotFound(name.to_string()));
        }
        self.repo(name)
    }

    /// Removes a repository from the registry (its sessions stay listed).
    pub fn remove_repo(&self, name: &str) -> Result<Repo, StoreError> {
        let repo = self.repo(name)?;
        self.conn()
            .execute("DELETE FROM repos WHERE name = ?1", [name])?;
        Ok(repo)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn new(name: &str) -> NewRepo {
        NewRepo {
            name: name.into(),
            url: "https://example.com/acme/app.git".into(),
            description: "The app".into(),
            hints: vec!["billing".into(), "#app-dev".into()],
            ..Default::default()
        }
    }

    #[test]
    fn repos_are_registered_listed_and_removed() {
        let store = Store::open_in_memory().unwrap();
        let repo = store.add_repo(&new("acme/app")).unwrap();
        assert_eq!(repo.default_branch, "main");
        assert_eq!(repo.hints, ["billing", "#app-dev"]);
        assert_eq!(repo.recipe, None);
        store.add_repo(&new("acme/api")).unwrap();
        let names: Vec<String> = store.repos().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["acme/api", "acme/app"]);
        let with_recipe = store
            .set_repo_recipe("acme/app", Some("base = \"host\"\n"))
            .unwrap();
        assert_eq!(with_recipe.recipe.as_deref(), Some("base = \"host\"\n"));
        assert_eq!(store.repo("acme/app").unwrap().recipe, with_recipe.recipe);
        store.remove_repo("acme/app").unwrap();
        assert!(matches!(
            store.repo("acme/app"),
            Err(StoreError::RepoNotFound(_))
        ));
    }

    #[test]
    fn bad_names_duplicates_and_unknown_repos_are_refused() {
        let store = Store::open_in_memory().unwrap();
        for bad in [
            "app",
            "/app",
            "acme/",
            "acme/app/x",
            "acme/..",
            "ac me/app",
            "",
        ] {
            assert!(
                matches!(store.add_repo(&new(bad)), Err(StoreError::Invalid(_))),
                "{bad:?}"
            );
        }
        let mut no_url = new("acme/app");
        no_url.url = " ".into();
        assert!(matches!(
            store.add_repo(&no_url),
            Err(StoreError::Invalid(_))
        ));
        let mut bad_branch = new("acme/app");
        bad_branch.default_branch = "a..b".into();
        assert!(matches!(
            store.add_repo(&bad_branch),
            Err(StoreError::Invalid(_))
        ));
        store.add_repo(&new("acme/app")).unwrap();
        assert!(matches!(
            store.add_repo(&new("acme/app")),
            Err(StoreError::DuplicateRepo(_))
        ));
        assert!(matches!(
            store.set_repo_recipe("acme/nope", None),
            Err(StoreError::RepoNotFound(_))
        ));
        assert!(matches!(
            store.remove_repo("acme/nope"),
            Err(StoreError::RepoNotFound(_))
        ));
    }

    #[test]
    fn branch_names_follow_git_rules() {
        for good in ["main", "release/1.2", "hangar/ses-0123", "feature_x"] {
            assert!(check_branch_name(good).is_ok(), "{good}");
        }
        for bad in [
            "", "-x", "a b", "a..b", "x.lock", "a:b", "a/", "a~1", "a//b",
        ] {
            assert!(check_branch_name(bad).is_err(), "{bad:?}");
        }
    }
}
