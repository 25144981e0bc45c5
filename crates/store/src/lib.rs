//! The index database: one SQLite file (`<data dir>/index.db`, WAL mode) holding users, API
//! tokens, the repository registry, sessions, participants and share links, environments,
//! and sandboxes (`sandboxes.rs`: what each serves and for whom). Images are indexed by the
//! OCI layout itself (content-addressed, with an atomic current pointer), not duplicated
//! here. GitHub (`github.rs`): users' GitHub tokens as ciphertext, OAuth
//! states, pull requests with their review and merge figures, webhook deliveries seen.
//! Session event logs live in their own files, not here (see DESIGN.md), so no session can
//! slow another. Share links are scoped tokens (`hgs_…`, `view` or `prompt`, one session
//! each), stored hashed like API tokens and revocable.
//!
//! The schema evolves by numbered migrations recorded in SQLite's `user_version` pragma;
//! a database written by a newer Hangar is refused rather than guessed at.
//!
//! API tokens are `hgr_` followed by 32 random bytes in hex. They are shown once, when
//! created, and stored only as their SHA-256 hash; a lookup by hash needs no constant-time
//! comparison. This crate never logs a token. It knows nothing about HTTP: the server turns
//! its errors into responses.

#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The prefix of every API token, so leaked tokens are easy to recognise and scan for.
pub const TOKEN_PREFIX: &str = "hgr_";

/// How often a token's `last_used_at` is written at most: a write per request would turn
/// every read into a database write.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// Migrations, in order; migration `i` moves `user_version` from `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: users and API tokens. A GitHub identity can be linked to a user later.
    "CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        login TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        email TEXT,
        is_admin INTEGER NOT NULL DEFAULT 0,
        github_id INTEGER UNIQUE,
        github_login TEXT,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        token_sha256 BLOB NOT NULL UNIQUE,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER,
        revoked_at INTEGER
    );
    CREATE INDEX api_tokens_user ON api_tokens(user_id);",
    // 2: sessions, their participants and share links. A session's events live in its own
    // file; this is the index that lists sessions and authorises access to them.
    "CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        repo TEXT NOT NULL,
        title TEXT NOT NULL,
        status TEXT NOT NULL,
        created_by INTEGER NOT NULL REFERENCES users(id),
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX sessions_status ON sessions(status);
    CREATE TABLE participants (
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        joined_at INTEGER NOT NULL,
        PRIMARY KEY (session_id, user_id)
    );
    CREATE TABLE share_links (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        scope TEXT NOT NULL,
        token_sha256 BLOB NOT NULL UNIQUE,
        created_by INTEGER NOT NULL REFERENCES users(id),
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX share_links_session ON share_links(session_id);",
    // 3: the repository registry.
    "CREATE TABLE repos (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        default_branch TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        hints TEXT NOT NULL DEFAULT '[]',
        recipe TEXT,
        created_by INTEGER REFERENCES users(id) ON DELETE SET NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );",
    // 4: sub-sessions: the session whose agent started this one.
    "ALTER TABLE sessions ADD COLUMN parent_id TEXT REFERENCES sessions(id) ON DELETE SET NULL;
    CREATE INDEX sessions_parent ON sessions(parent_id);",
    // 5: environments: shared sandboxes without an agent.
    "CREATE TABLE environments (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        python TEXT NOT NULL,
        suite TEXT NOT NULL,
        repo TEXT,
        image TEXT NOT NULL,
        sandbox TEXT NOT NULL,
        created_by INTEGER NOT NULL REFERENCES users(id),
        created_at INTEGER NOT NULL
    );",
    // 6: share links of environments (`hgs_` tokens, like sessions' share links).
    "CREATE TABLE environment_shares (
        id INTEGER PRIMARY KEY,
        environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        token_sha256 BLOB NOT NULL UNIQUE,
        created_by INTEGER NOT NULL REFERENCES users(id),
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX environment_shares_env ON environment_shares(environment_id);",
    // 7: GitHub: users' tokens (ciphertext only), OAuth sign-in states (hashed, single
    // use), pull requests opened for sessions and the webhook deliveries already applied.
    "CREATE TABLE github_tokens (
        user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
        ciphertext BLOB NOT NULL,
        expires_at INTEGER,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE oauth_states (
        state_sha256 BLOB PRIMARY KEY,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE TABLE pull_requests (
        repo TEXT NOT NULL,
        number INTEGER NOT NULL,
        session_id TEXT REFERENCES sessions(id) ON DELETE SET NULL,
        author_user_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
        head_branch TEXT NOT NULL,
        url TEXT NOT NULL,
        title TEXT NOT NULL,
        state TEXT NOT NULL,
        opened_at INTEGER NOT NULL,
        merged_at INTEGER,
        closed_at INTEGER,
        first_review_at INTEGER,
        reviews INTEGER NOT NULL DEFAULT 0,
        approvals INTEGER NOT NULL DEFAULT 0,
        pushes_after_review INTEGER NOT NULL DEFAULT 0,
        agent_lines INTEGER,
        total_lines INTEGER,
        PRIMARY KEY (repo, number)
    );
    CREATE INDEX pull_requests_session ON pull_requests(session_id);
    CREATE TABLE webhook_deliveries (
        delivery_id TEXT PRIMARY KEY,
        event TEXT NOT NULL,
        received_at INTEGER NOT NULL
    );",
    // 8: sandboxes: what each serves, for whom, and when it started and ended.
    "CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        purpose TEXT NOT NULL,
        repo TEXT,
        session_id TEXT,
        created_by INTEGER REFERENCES users(id) ON DELETE SET NULL,
        created_at INTEGER NOT NULL,
        ended_at INTEGER
    );
    CREATE INDEX sandboxes_session ON sandboxes(session_id);",
    // 9: each session's latest snapshot (an image id in the layer store), which a session
    // whose sandbox is gone continues from.
    "CREATE TABLE session_snapshots (
        session_id TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
        image TEXT NOT NULL,
        taken_at INTEGER NOT NULL
    );",
];

/// The prefix of share-link tokens, distinct from API tokens so each is checked only where
/// it may be used.
pub const SHARE_TOKEN_PREFIX: &str = "hgs_";

/// A person (or a bot) who can use Hangar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct User {
    /// Its id.
    pub id: i64,
    /// Unique short name.
    pub login: String,
    /// Display name.
    pub name: String,
    /// Email, used for commit attribution.
    pub email: Option<String>,
    /// May manage users and the deployment.
    pub is_admin: bool,
    /// Linked GitHub account id, once linked.
    pub github_id: Option<i64>,
    /// Linked GitHub login, once linked.
    pub github_login: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// What it takes to create a user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewUser {
    /// Unique short name: 1–64 of `a-z A-Z 0-9 - _ .`.
    pub login: String,
    /// Display name.
    pub name: String,
    /// Email.
    pub email: Option<String>,
    /// Admin rights.
    pub is_admin: bool,
}

/// An API token's record (never its value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiToken {
    /// Its id.
    pub id: i64,
    /// Whose it is.
    pub user_id: i64,
    /// What it is for, for people.
    pub name: String,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Last successful use (to the minute), if any.
    pub last_used_at_ms: Option<i64>,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
}

/// A token's value, shown once. Its `Debug` form hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl TokenSecret {
    /// The value to hand to the person, exactly once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(hgr_…)")
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file is not a SQLite database (or is damaged).
    #[error(
        "index database {} is not a SQLite database or is corrupted ({message}); move it aside to start with an empty one (users and tokens will be lost)",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// SQLite's words.
        message: String,
    },
    /// The database was written by a newer Hangar.
    #[error(
        "index database {} has schema version {found}, newer than this Hangar's {supported}; upgrade Hangar",
        path.display()
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        supported: i64,
    },
    /// A user with this login exists already.
    #[error("a user with login {0:?} already exists")]
    DuplicateLogin(String),
    /// The input is unusable.
    #[error("{0}")]
    Invalid(String),
    /// The token is unknown, malformed or revoked. Deliberately says no more.
    #[error("invalid or revoked API token")]
    InvalidToken,
    /// No such user or token.
    #[error("no {kind} with id {id}")]
    NotFound {
        /// `user` or `token`.
        kind: &'static str,
        /// The id asked for.
        id: i64,
    },
    /// No such session.
    #[error("no session with id {0}")]
    SessionNotFound(String),
    /// No environment with this id or name.
    #[error("no environment {0:?}; `hangar env ls` lists them")]
    EnvironmentNotFound(String),
    /// An environment with this name exists already.
    #[error(
        "an environment named {0:?} exists already; choose another name or remove it with `hangar env rm {0}`"
    )]
    DuplicateEnvironment(String),
    /// No such repository.
    #[error("no repository {0} is registered (add it with `hangar repo add`)")]
    RepoNotFound(String),
    /// A repository with this name is registered already.
    #[error("repository {0} is registered already")]
    DuplicateRepo(String),
    /// This webhook delivery was applied before.
    #[error("webhook delivery {0} was received before")]
    DuplicateDelivery(String),
    /// The system's random source failed.
    #[error("cannot generate a token: {0}")]
    Random(String),
    /// Creating the database's directory failed.
    #[error("creating {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Any other SQLite failure.
    #[error("index database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// The index database. Cheap to share behind an `Arc`; calls are short and serialised on
/// one connection (SQLite allows one writer at a time anyway).
pub struct Store {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// Milliseconds since the Unix epoch: the clock of every time the index records.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn sha256(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn new_secret() -> Result<TokenSecret, StoreError> {
    new_secret_with(TOKEN_PREFIX)
}

fn new_secret_with(prefix: &str) -> Result<TokenSecret, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Random(e.to_string()))?;
    let mut s = String::with_capacity(prefix.len() + 64);
    s.push_str(prefix);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(TokenSecret(s))
}

mod envs;
mod github;
mod repos;
mod sandboxes;
mod sessions;
pub use envs::EnvironmentRecord;
pub use github::{
    NewPullRequest, PrStats, PrUpdate, PullRequest, SealedGitHubToken, Usage, UsageDay,
};
pub use repos::{NewRepo, Repo, check_branch_name, check_repo_name};
pub use sandboxes::SandboxRecord;
pub use sessions::{NewSession, SessionRecord, ShareLink, ShareScope};

fn is_sqlite_code(e: &rusqlite::Error, code: rusqlite::ErrorCode) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == code)
}

fn user_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get("id")?,
        login: row.get("login")?,
        name: row.get("name")?,
        email: row.get("email")?,
        is_admin: row.get("is_admin")?,
        github_id: row.get("github_id")?,
        github_login: row.get("github_login")?,
        created_at_ms: row.get("created_at")?,
    })
}

fn token_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApiToken> {
    Ok(ApiToken {
        id: row.get("id")?,
        user_id: row.get("user_id")?,
        name: row.get("name")?,
        created_at_ms: row.get("created_at")?,
        last_used_at_ms: row.get("last_used_at")?,
        revoked_at_ms: row.get("revoked_at")?,
    })
}

const USER_COLUMNS: &str = "id, login, name, email, is_admin, github_id, github_login, created_at";
const TOKEN_COLUMNS: &str = "id, user_id, name, created_at, last_used_at, revoked_at";

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|e| classify(path, e))?;
        Store::init(conn, path).map_err(|e| match e {
            StoreError::Sqlite(e) => classify(path, e),
            e => e,
        })
    }

    /// An empty database in memory, for tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory()?, Path::new(":memory:"))
    }

    fn init(mut conn: Connection, path: &Path) -> Result<Store, StoreError> {
        // The first statement that reads the file is where a non-database shows itself.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
        migrate(&mut conn, path)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (its transactions
        // roll back), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The schema version this build writes.
    pub fn schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    /// Creates a user.
    pub fn create_user(&self, new: &NewUser) -> Result<User, StoreError> {
        create_user(&self.conn(), new)
    }

    /// One user.
    pub fn user(&self, id: i64) -> Result<User, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
                [id],
                user_from_row,
            )
            .optional()?
            .ok_or(StoreError::NotFound { kind: "user", id })
    }

    /// All users, oldest first.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"))?;
        let rows = stmt.query_map([], user_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// On a fresh database, creates the first admin (`admin`) and a token for it, and
    /// returns both; the token's value exists nowhere else, so show it now. Returns `None`
    /// when any user exists already, so restarts never mint a second admin.
    pub fn ensure_admin(&self) -> Result<Option<(User, TokenSecret)>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let users: i64 = tx.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
        if users > 0 {
            return Ok(None);
        }
        let user = create_user(
            &tx,
            &NewUser {
                login: "admin".into(),
                name: "Administrator".into(),
                email: None,
                is_admin: true,
            },
        )?;
        let (_, secret) = create_token(&tx, user.id, "created on first start")?;
        tx.commit()?;
        Ok(Some((user, secret)))
    }

    /// Creates a token for a user; the value is returned once and stored only hashed.
    pub fn create_token(
        &self,
        user_id: i64,
        name: &str,
    ) -> Result<(ApiToken, TokenSecret), StoreError> {
        create_token(&self.conn(), user_id, name)
    }

    /// The user and token record for a presented token, or [`StoreError::InvalidToken`]
    /// when it is malformed, unknown or revoked. Records the use (to the minute).
    pub fn verify_token(&self, presented: &str) -> Result<(User, ApiToken), StoreError> {
        if !presented.starts_with(TOKEN_PREFIX) || presented.len() > 256 {
            return Err(StoreError::InvalidToken);
        }
        let conn = self.conn();
        let found = conn
            .query_row(
                &format!(
                    "SELECT {TOKEN_COLUMNS} FROM api_tokens
                     WHERE token_sha256 = ?1 AND revoked_at IS NULL"
                ),
                [sha256(presented)],
                token_from_row,
            )
            .optional()?;
        let Some(mut token) = found else {
            return Err(StoreError::InvalidToken);
        };
        let now = now_ms();
        if token
            .last_used_at_ms
            .is_none_or(|t| now - t >= LAST_USED_RESOLUTION_MS)
        {
            conn.execute(
                "UPDATE api_tokens SET last_used_at = ?1 WHERE id = ?2",
                params![now, token.id],
            )?;
            token.last_used_at_ms = Some(now);
        }
        let user = conn.query_row(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
            [token.user_id],
            user_from_row,
        )?;
        Ok((user, token))
    }

    /// A user's tokens (records only), oldest first.
    pub fn tokens(&self, user_id: i64) -> Result<Vec<ApiToken>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE user_id = ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([user_id], token_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes a token; it stops working at once. Revoking twice is not an error.
    pub fn revoke_token(&self, token_id: i64) -> Result<(), StoreError> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?1) WHERE id = ?2",
            params![now_ms(), token_id],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "token",
                id: token_id,
            });
        }
        Ok(())
    }
}

fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    if is_sqlite_code(&e, rusqlite::ErrorCode::NotADatabase)
        || is_sqlite_code(&e, rusqlite::ErrorCode::DatabaseCorrupt)
    {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    } else {
        StoreError::Sqlite(e)
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let supported = MIGRATIONS.len() as i64;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > supported {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
}

fn valid_login(login: &str) -> bool {
    (1..=64).contains(&login.len())
        && login
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn create_user(conn: &Connection, new: &NewUser) -> Result<User, StoreError> {
    if !valid_login(&new.login) {
        return Err(StoreError::Invalid(format!(
            "login {:?} must be 1-64 letters, digits, '-', '_' or '.'",
            new.login
        )));
    }
    let now = now_ms();
    let res = conn.execute(
        "INSERT INTO users (login, name, email, is_admin, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![new.login, new.name, new.email, new.is_admin, now],
    );
    match res {
        Ok(_) => {}
        Err(e) if is_sqlite_code(&e, rusqlite::ErrorCode::ConstraintViolation) => {
            return Err(StoreError::DuplicateLogin(new.login.clone()));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(User {
        id: conn.last_insert_rowid(),
        login: new.login.clone(),
        name: new.name.clone(),
        email: new.email.clone(),
        is_admin: new.is_admin,
        github_id: None,
        github_login: None,
        created_at_ms: now,
    })
}

fn create_token(
    conn: &Connection,
    user_id: i64,
    name: &str,
) -> Result<(ApiToken, TokenSecret), StoreError> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM users WHERE id = ?1)",
        [user_id],
        |r| r.get(0),
    )?;
    if !exists {
        return Err(StoreError::NotFound {
            kind: "user",
            id: user_id,
        });
    }
    let secret = new_secret()?;
    let now = now_ms();
    conn.execute(
        "INSERT INTO api_tokens (user_id, token_sha256, name, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![user_id, sha256(secret.expose()), name, now],
    )?;
    let token = ApiToken {
        id: conn.last_insert_rowid(),
        user_id,
        name: name.to_string(),
        created_at_ms: now,
        last_used_at_ms: None,
        revoked_at_ms: None,
    };
    Ok((token, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(login: &str) -> NewUser {
        NewUser {
            login: login.into(),
            name: login.into(),
            ..NewUser::default()
        }
    }

    #[test]
    fn first_start_creates_one_admin_whose_token_works() {
        let store = Store::open_in_memory().unwrap();
        let (admin, secret) = store.ensure_admin().unwrap().unwrap();
        assert!(admin.is_admin);
        assert!(secret.expose().starts_with("hgr_"));
        assert_eq!(secret.expose().len(), 4 + 64);
        assert!(!format!("{secret:?}").contains(&secret.expose()[4..]));
        let (u, t) = store.verify_token(secret.expose()).unwrap();
        assert_eq!(u, admin);
        assert!(t.last_used_at_ms.is_some());
        assert!(
            store.ensure_admin().unwrap().is_none(),
            "never a second admin"
        );
        assert_eq!(store.users().unwrap().len(), 1);
    }

    #[test]
    fn ensure_admin_does_nothing_once_any_user_exists() {
        let store = Store::open_in_memory().unwrap();
        store.create_user(&user("alice")).unwrap();
        assert!(store.ensure_admin().unwrap().is_none());
    }

    #[test]
    fn duplicate_and_invalid_logins_are_refused() {
        let store = Store::open_in_memory().unwrap();
        store.create_user(&user("alice")).unwrap();
        assert!(matches!(
            store.create_user(&user("alice")),
            Err(StoreError::DuplicateLogin(l)) if l == "alice"
        ));
        for bad in ["", "a b", "../x", &"x".repeat(65)] {
            assert!(
                matches!(store.create_user(&user(bad)), Err(StoreError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unknown_malformed_and_revoked_tokens_are_invalid() {
        let store = Store::open_in_memory().unwrap();
        let alice = store.create_user(&user("alice")).unwrap();
        let (tok, secret) = store.create_token(alice.id, "laptop").unwrap();
        let (_, other) = store.create_token(alice.id, "ci").unwrap();
        assert_ne!(secret, other, "tokens are random");
        for bad in [
            "",
            "hgr_",
            "not-a-token",
            &format!("{}0", secret.expose()),
            &"hgr_x".repeat(100),
        ] {
            assert!(
                matches!(store.verify_token(bad), Err(StoreError::InvalidToken)),
                "{bad:?}"
            );
        }
        store.verify_token(secret.expose()).unwrap();
        store.revoke_token(tok.id).unwrap();
        store.revoke_token(tok.id).unwrap();
        assert!(matches!(
            store.verify_token(secret.expose()),
            Err(StoreError::InvalidToken)
        ));
        store.verify_token(other.expose()).unwrap();
        let tokens = store.tokens(alice.id).unwrap();
        assert!(tokens[0].revoked_at_ms.is_some() && tokens[1].revoked_at_ms.is_none());
        assert!(matches!(
            store.revoke_token(999),
            Err(StoreError::NotFound { kind: "token", .. })
        ));
        assert!(matches!(
            store.create_token(999, "x"),
            Err(StoreError::NotFound { kind: "user", .. })
        ));
    }

    #[test]
    fn tokens_are_stored_only_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        let store = Store::open(&path).unwrap();
        let (_, secret) = store.ensure_admin().unwrap().unwrap();
        drop(store);
        let mut all = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            all.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        let needle = &secret.expose().as_bytes()[4..];
        assert!(!all.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn reopening_keeps_users_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/index.db");
        let (_, secret) = Store::open(&path).unwrap().ensure_admin().unwrap().unwrap();
        let store = Store::open(&path).unwrap();
        assert!(store.ensure_admin().unwrap().is_none());
        store.verify_token(secret.expose()).unwrap();
    }

    #[test]
    fn a_corrupted_file_gives_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("index.db") && msg.contains("not a SQLite database"),
            "{msg}"
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::TooNew { found: 99, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("upgrade Hangar"));
    }

    #[test]
    fn wal_mode_is_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        let store = Store::open(&path).unwrap();
        let mode: String = store
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(Store::schema_version(), MIGRATIONS.len() as i64);
        let on_disk: i64 = store
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(on_disk, Store::schema_version());
    }
}
