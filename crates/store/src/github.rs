//! GitHub in the index: users' GitHub tokens (only ever as ciphertext: `hangar-github`
//! encrypts them before they arrive here), OAuth sign-in states (stored hashed, single use,
//! expiring), pull requests opened for sessions with the figures the stats are made of, and
//! the webhook deliveries already applied (so a replayed delivery changes nothing).

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{
    Store, StoreError, USER_COLUMNS, User, new_secret_with, now_ms, sha256, user_from_row,
};

/// A pull request opened for a session, with what happened to it since.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PullRequest {
    /// `owner/name`.
    pub repo: String,
    /// Its number in the repository.
    pub number: i64,
    /// The session whose branch it merges, when known.
    pub session_id: Option<String>,
    /// The Hangar user who opened it, when known.
    pub author_user_id: Option<i64>,
    /// The branch it merges.
    pub head_branch: String,
    /// Its web address.
    pub url: String,
    /// Its title.
    pub title: String,
    /// `open`, `closed` or `merged`.
    pub state: String,
    /// Milliseconds since the Unix epoch.
    pub opened_at_ms: i64,
    /// When it was merged.
    pub merged_at_ms: Option<i64>,
    /// When it was closed (merged or not).
    pub closed_at_ms: Option<i64>,
    /// When its first review was submitted.
    pub first_review_at_ms: Option<i64>,
    /// Reviews submitted (approvals, change requests, comments).
    pub reviews: i64,
    /// Approving reviews.
    pub approvals: i64,
    /// Pushes to its branch after the first review (revisions).
    pub pushes_after_review: i64,
    /// Lines added by the agent's commits, when the git side reported them.
    pub agent_lines: Option<i64>,
    /// Lines added in total, when known (GitHub reports it).
    pub total_lines: Option<i64>,
}

/// What it takes to record a pull request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPullRequest {
    /// `owner/name`.
    pub repo: String,
    /// Its number.
    pub number: i64,
    /// The session, if any.
    pub session_id: Option<String>,
    /// Who opened it.
    pub author_user_id: Option<i64>,
    /// Its branch.
    pub head_branch: String,
    /// Its web address.
    pub url: String,
    /// Its title.
    pub title: String,
    /// When it was opened, milliseconds since the Unix epoch.
    pub opened_at_ms: i64,
}

/// A change to a pull request reported by a webhook delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrUpdate {
    /// It was opened; recorded when its branch belongs to a known session and it is not
    /// recorded yet.
    Opened {
        /// The session its branch belongs to.
        session_id: String,
        /// Its branch.
        head_branch: String,
        /// Its web address.
        url: String,
        /// Its title.
        title: String,
        /// When.
        at_ms: i64,
    },
    /// It was closed, merged or not.
    Closed {
        /// True when merged.
        merged: bool,
        /// When.
        at_ms: i64,
        /// Lines added in total, as GitHub counts them.
        total_lines: Option<i64>,
    },
    /// It was reopened.
    Reopened,
    /// Its branch got new commits.
    Pushed,
    /// A review was submitted.
    Reviewed {
        /// True for an approval.
        approved: bool,
        /// When.
        at_ms: i64,
    },
    /// Nothing to change (a review comment): only the delivery is recorded.
    Nothing,
}

/// Pull request figures, for one repository or all of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PrStats {
    /// Pull requests opened.
    pub opened: u64,
    /// ... of which merged.
    pub merged: u64,
    /// ... closed without merging.
    pub closed_unmerged: u64,
    /// Median time from opening to merging, in seconds.
    pub median_time_to_merge_secs: Option<f64>,
    /// Of the pull requests that were reviewed, the share approved at least once.
    pub approval_rate: Option<f64>,
    /// Pushes after the first review (revisions), summed.
    pub revisions: u64,
    /// In merged pull requests whose counts are known, lines added by the agent over all
    /// lines added.
    pub agent_code_share: Option<f64>,
}

impl PrStats {
    /// The figures of these pull requests.
    pub fn of<'a>(prs: impl IntoIterator<Item = &'a PullRequest>) -> PrStats {
        let mut s = PrStats::default();
        let mut merge_times = Vec::new();
        let (mut reviewed, mut approved) = (0u64, 0u64);
        let (mut agent, mut total) = (0i64, 0i64);
        for pr in prs {
            s.opened += 1;
            match pr.merged_at_ms {
                Some(m) => {
                    s.merged += 1;
                    merge_times.push((m - pr.opened_at_ms).max(0) as f64 / 1000.0);
                    if let (Some(a), Some(t)) = (pr.agent_lines, pr.total_lines) {
                        agent += a.min(t);
                        total += t;
                    }
                }
                None if pr.state == "closed" => s.closed_unmerged += 1,
                None => {}
            }
            if pr.reviews > 0 {
                reviewed += 1;
                approved += u64::from(pr.approvals > 0);
            }
            s.revisions += pr.pushes_after_review.max(0) as u64;
        }
        s.median_time_to_merge_secs = median(&mut merge_times);
        s.approval_rate = (reviewed > 0).then(|| approved as f64 / reviewed as f64);
        s.agent_code_share = (total > 0).then(|| agent as f64 / total as f64);
        s
    }
}

/// How the team uses Hangar: the way from sessions to merged pull requests, and activity
/// per UTC day.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Sessions ever started.
    pub sessions: u64,
    /// ... of which opened a pull request.
    pub sessions_with_pr: u64,
    /// ... of which had a pull request merged.
    pub sessions_merged: u64,
    /// One entry per UTC day of the window asked for, oldest first, days without
    /// activity included.
    pub days: Vec<UsageDay>,
}

/// One UTC day's activity.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UsageDay {
    /// The day's start, milliseconds since the Unix epoch (a multiple of 86 400 000).
    pub day_ms: i64,
    /// Sessions started.
    pub sessions: u64,
    /// Pull requests opened.
    pub prs_opened: u64,
    /// Pull requests merged.
    pub prs_merged: u64,
}

const DAY_MS: i64 = 86_400_000;

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// A user's stored GitHub token: ciphertext only.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedGitHubToken {
    /// The encrypted token (the encryption's nonce included).
    pub ciphertext: Vec<u8>,
    /// When the token expires, if GitHub said.
    pub expires_at_ms: Option<i64>,
}

impl std::fmt::Debug for SealedGitHubToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedGitHubToken")
            .field(
                "ciphertext",
                &format_args!("{} bytes", self.ciphertext.len()),
            )
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

const PR_COLUMNS: &str = "repo, number, session_id, author_user_id, head_branch, url, title, \
    state, opened_at, merged_at, closed_at, first_review_at, reviews, approvals, \
    pushes_after_review, agent_lines, total_lines";

fn pr_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PullRequest> {
    Ok(PullRequest {
        repo: row.get("repo")?,
        number: row.get("number")?,
        session_id: row.get("session_id")?,
        author_user_id: row.get("author_user_id")?,
        head_branch: row.get("head_branch")?,
        url: row.get("url")?,
        title: row.get("title")?,
        state: row.get("state")?,
        opened_at_ms: row.get("opened_at")?,
        merged_at_ms: row.get("merged_at")?,
        closed_at_ms: row.get("closed_at")?,
        first_review_at_ms: row.get("first_review_at")?,
        reviews: row.get("reviews")?,
        approvals: row.get("approvals")?,
        pushes_after_review: row.get("pushes_after_review")?,
        agent_lines: row.get("agent_lines")?,
        total_lines: row.get("total_lines")?,
    })
}

fn pr(
    conn: &rusqlite::Connection,
    repo: &str,
    number: i64,
) -> Result<Option<PullRequest>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {PR_COLUMNS} FROM pull_requests WHERE repo = ?1 AND number = ?2"),
            params![repo, number],
            pr_from_row,
        )
        .optional()?)
}

/// The prefix of OAuth `state` values.
const STATE_PREFIX: &str = "hgo_";

impl Store {
    /// The user linked to a GitHub account, if any.
    pub fn user_by_github_id(&self, github_id: i64) -> Result<Option<User>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE github_id = ?1"),
                [github_id],
                user_from_row,
            )
            .optional()?)
    }

    /// Links a GitHub account to a user (or updates its login after a rename).
    pub fn link_github(
        &self,
        user_id: i64,
        github_id: i64,
        github_login: &str,
    ) -> Result<User, StoreError> {
        let n = self.conn().execute(
            "UPDATE users SET github_id = ?1, github_login = ?2 WHERE id = ?3",
            params![github_id, github_login, user_id],
        );
        match n {
            Ok(0) => Err(StoreError::NotFound {
                kind: "user",
                id: user_id,
            }),
            Ok(_) => self.user(user_id),
            Err(e) if crate::is_sqlite_code(&e, rusqlite::ErrorCode::ConstraintViolation) => {
                Err(StoreError::Invalid(format!(
                    "GitHub account {github_login} is linked to another user already"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stores a user's GitHub token (already encrypted), replacing any earlier one.
    pub fn set_github_token(
        &self,
        user_id: i64,
        token: &SealedGitHubToken,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO github_tokens (user_id, ciphertext, expires_at, updated_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user_id) DO UPDATE SET ciphertext = excluded.ciphertext,
                 expires_at = excluded.expires_at, updated_at = excluded.updated_at",
            params![user_id, token.ciphertext, token.expires_at_ms, now_ms()],
        )?;
        Ok(())
    }

    /// A user's GitHub token (encrypted), if they signed in with GitHub.
    pub fn github_token(&self, user_id: i64) -> Result<Option<SealedGitHubToken>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT ciphertext, expires_at FROM github_tokens WHERE user_id = ?1",
                [user_id],
                |r| {
                    Ok(SealedGitHubToken {
                        ciphertext: r.get(0)?,
                        expires_at_ms: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Forgets a user's GitHub token (GitHub refused it: they must sign in again).
    pub fn delete_github_token(&self, user_id: i64) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM github_tokens WHERE user_id = ?1", [user_id])?;
        Ok(())
    }

    /// A new OAuth `state`, valid once within `ttl_ms`; stored only hashed.
    pub fn create_oauth_state(&self, ttl_ms: i64) -> Result<String, StoreError> {
        let state = new_secret_with(STATE_PREFIX)?;
        let now = now_ms();
        let conn = self.conn();
        // Expired states are of no use to anyone: drop them while here.
        conn.execute("DELETE FROM oauth_states WHERE expires_at <= ?1", [now])?;
        conn.execute(
            "INSERT INTO oauth_states (state_sha256, created_at, expires_at) VALUES (?1, ?2, ?3)",
            params![sha256(state.expose()), now, now + ttl_ms],
        )?;
        Ok(state.expose().to_string())
    }

    /// Consumes an OAuth `state`: true when it was issued here, unused and unexpired. It
    /// cannot be used again either way.
    pub fn take_oauth_state(&self, state: &str) -> Result<bool, StoreError> {
        if !state.starts_with(STATE_PREFIX) || state.len() > 256 {
            return Ok(false);
        }
        let expires: Option<i64> = self
            .conn()
            .query_row(
                "DELETE FROM oauth_states WHERE state_sha256 = ?1 RETURNING expires_at",
                [sha256(state)],
                |r| r.get(0),
            )
            .optional()?;
        Ok(expires.is_some_and(|e| e > now_ms()))
    }

    /// Records a pull request (or refreshes the record of one already known: the session,
    /// author and title are kept when known, the rest updated).
    pub fn record_pull_request(&self, new: &NewPullRequest) -> Result<PullRequest, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO pull_requests (repo, number, session_id, author_user_id, head_branch,
                 url, title, state, opened_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'open', ?8)
             ON CONFLICT (repo, number) DO UPDATE SET
                 session_id = coalesce(pull_requests.session_id, excluded.session_id),
                 author_user_id = coalesce(pull_requests.author_user_id, excluded.author_user_id),
                 url = excluded.url",
            params![
                new.repo,
                new.number,
                new.session_id,
                new.author_user_id,
                new.head_branch,
                new.url,
                new.title,
                new.opened_at_ms
            ],
        )?;
        pr(&conn, &new.repo, new.number)?
            .ok_or_else(|| StoreError::Invalid("pull request vanished".into()))
    }

    /// One pull request.
    pub fn pull_request(&self, repo: &str, number: i64) -> Result<Option<PullRequest>, StoreError> {
        pr(&self.conn(), repo, number)
    }

    /// The latest pull request of a session, if it has one.
    pub fn session_pull_request(
        &self,
        session_id: &str,
    ) -> Result<Option<PullRequest>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {PR_COLUMNS} FROM pull_requests WHERE session_id = ?1
                     ORDER BY opened_at DESC, number DESC LIMIT 1"
                ),
                [session_id],
                pr_from_row,
            )
            .optional()?)
    }

    /// Records how many of a pull request's added lines the agent wrote (from the git
    /// side, which knows the agent's commits) and, when known, the total.
    pub fn set_pr_lines(
        &self,
        repo: &str,
        number: i64,
        agent_lines: i64,
        total_lines: Option<i64>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE pull_requests SET agent_lines = ?3, total_lines = coalesce(?4, total_lines)
             WHERE repo = ?1 AND number = ?2",
            params![repo, number, agent_lines, total_lines],
        )?;
        Ok(())
    }

    /// Applies one webhook delivery: records its id and the change in one transaction.
    /// A delivery seen before is refused with [`StoreError::DuplicateDelivery`] and changes
    /// nothing. Returns the pull request after the change, when it is one Hangar knows.
    pub fn apply_webhook(
        &self,
        delivery_id: &str,
        event: &str,
        repo: &str,
        number: i64,
        update: &PrUpdate,
    ) -> Result<Option<PullRequest>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO webhook_deliveries (delivery_id, event, received_at)
             VALUES (?1, ?2, ?3)",
            params![delivery_id, event, now_ms()],
        )?;
        if inserted == 0 {
            return Err(StoreError::DuplicateDelivery(delivery_id.to_string()));
        }
        match update {
            PrUpdate::Opened {
                session_id,
                head_branch,
                url,
                title,
                at_ms,
            } => {
                tx.execute(
                    "INSERT OR IGNORE INTO pull_requests (repo, number, session_id,
                         author_user_id, head_branch, url, title, state, opened_at)
                     SELECT ?1, ?2, id, created_by, ?4, ?5, ?6, 'open', ?7
                     FROM sessions WHERE id = ?3",
                    params![repo, number, session_id, head_branch, url, title, at_ms],
                )?;
            }
            PrUpdate::Closed {
                merged,
                at_ms,
                total_lines,
            } => {
                tx.execute(
                    "UPDATE pull_requests SET state = ?3, closed_at = ?4,
                         merged_at = CASE WHEN ?5 THEN ?4 ELSE NULL END,
                         total_lines = coalesce(?6, total_lines)
                     WHERE repo = ?1 AND number = ?2",
                    params![
                        repo,
                        number,
                        if *merged { "merged" } else { "closed" },
                        at_ms,
                        merged,
                        total_lines
                    ],
                )?;
            }
            PrUpdate::Reopened => {
                tx.execute(
                    "UPDATE pull_requests SET state = 'open', closed_at = NULL, merged_at = NULL
                     WHERE repo = ?1 AND number = ?2",
                    params![repo, number],
                )?;
            }
            PrUpdate::Pushed => {
                tx.execute(
                    "UPDATE pull_requests SET pushes_after_review = pushes_after_review + 1
                     WHERE repo = ?1 AND number = ?2 AND first_review_at IS NOT NULL",
                    params![repo, number],
                )?;
            }
            PrUpdate::Reviewed { approved, at_ms } => {
                tx.execute(
                    "UPDATE pull_requests SET reviews = reviews + 1,
                         approvals = approvals + CASE WHEN ?3 THEN 1 ELSE 0 END,
                         first_review_at = coalesce(first_review_at, ?4)
                     WHERE repo = ?1 AND number = ?2",
                    params![repo, number, approved, at_ms],
                )?;
            }
            PrUpdate::Nothing => {}
        }
        let after = pr(&tx, repo, number)?;
        tx.commit()?;
        Ok(after)
    }

    /// Pull request figures per repository and overall.
    pub fn pr_stats(&self) -> Result<(BTreeMap<String, PrStats>, PrStats), StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {PR_COLUMNS} FROM pull_requests"))?;
        let all: Vec<PullRequest> = stmt.query_map([], pr_from_row)?.collect::<Result<_, _>>()?;
        let mut by_repo: BTreeMap<String, Vec<&PullRequest>> = BTreeMap::new();
        for pr in &all {
            by_repo.entry(pr.repo.clone()).or_default().push(pr);
        }
        let per_repo = by_repo
            .into_iter()
            .map(|(repo, prs)| (repo, PrStats::of(prs)))
            .collect();
        Ok((per_repo, PrStats::of(&all)))
    }

    /// The funnel from sessions to merged pull requests, and activity per UTC day for the
    /// `days` days up to and including the one holding `now_ms`.
    pub fn usage(&self, days: u32, now_ms: i64) -> Result<Usage, StoreError> {
        let conn = self.conn();
        let count = |sql: &str| -> Result<u64, StoreError> {
            Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))?.max(0) as u64)
        };
        let mut usage = Usage {
            sessions: count("SELECT COUNT(*) FROM sessions")?,
            sessions_with_pr: count(
                "SELECT COUNT(DISTINCT session_id) FROM pull_requests WHERE session_id IS NOT NULL",
            )?,
            sessions_merged: count(
                "SELECT COUNT(DISTINCT session_id) FROM pull_requests \
                 WHERE session_id IS NOT NULL AND merged_at IS NOT NULL",
            )?,
            days: Vec::new(),
        };
        let last = now_ms.div_euclid(DAY_MS);
        let first = last - i64::from(days.max(1)) + 1;
        usage.days = (first..=last)
            .map(|d| UsageDay {
                day_ms: d * DAY_MS,
                ..UsageDay::default()
            })
            .collect();
        let per_day = |sql: &str| -> Result<Vec<(i64, u64)>, StoreError> {
            let mut stmt = conn.prepare(sql)?;
            let rows = stmt
                .query_map([first * DAY_MS], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        };
        let mut add = |rows: Vec<(i64, u64)>, field: fn(&mut UsageDay) -> &mut u64| {
            for (day, n) in rows {
                if let Some(d) = usize::try_from(day - first)
                    .ok()
                    .and_then(|i| usage.days.get_mut(i))
                {
                    *field(d) += n;
                }
            }
        };
        add(
            per_day(
                "SELECT created_at / 86400000, COUNT(*) FROM sessions \
                 WHERE created_at >= ?1 GROUP BY 1",
            )?,
            |d| &mut d.sessions,
        );
        add(
            per_day(
                "SELECT opened_at / 86400000, COUNT(*) FROM pull_requests \
                 WHERE opened_at >= ?1 GROUP BY 1",
            )?,
            |d| &mut d.prs_opened,
        );
        add(
            per_day(
                "SELECT merged_at / 86400000, COUNT(*) FROM pull_requests \
                 WHERE merged_at >= ?1 GROUP BY 1",
            )?,
            |d| &mut d.prs_merged,
        );
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::{NewSession, NewUser};

    fn setup() -> (Store, User) {
        let store = Store::open_in_memory().unwrap();
        let alice = store
            .create_user(&NewUser {
                login: "alice".into(),
                name: "Alice".into(),
                ..NewUser::default()
            })
            .unwrap();
        store
            .create_session(&NewSession {
                id: "ses-0000000000000001".into(),
                repo: "acme/app".into(),
                title: "t".into(),
                status: "idle".into(),
                created_by: alice.id,
            })
            .unwrap();
        (store, alice)
    }

    fn new_pr(number: i64, opened: i64) -> NewPullRequest {
        NewPullRequest {
            repo: "acme/app".into(),
            number,
            session_id: Some("ses-0000000000000001".into()),
            author_user_id: None,
            head_branch: "hangar/ses-0000000000000001".into(),
            url: format!("https://github.com/acme/app/pull/{number}"),
            title: "Fix".into(),
            opened_at_ms: opened,
        }
    }

    #[test]
    fn usage_counts_sessions_to_merged_prs_per_day() {
        let (store, alice) = setup();
        let day = 86_400_000;
        // setup() made one session now; two more sessions, one with a merged PR.
        for id in ["ses-0000000000000002", "ses-0000000000000003"] {
            store
                .create_session(&NewSession {
                    id: id.into(),
                    repo: "acme/app".into(),
                    title: "t".into(),
                    status: "idle".into(),
                    created_by: alice.id,
                })
                .unwrap();
        }
        let now = crate::now_ms();
        store
            .record_pull_request(&new_pr(1, now - 2 * day))
            .unwrap();
        let mut second = new_pr(2, now);
        second.session_id = Some("ses-0000000000000002".into());
        store.record_pull_request(&second).unwrap();
        let merged = PrUpdate::Closed {
            merged: true,
            at_ms: now,
            total_lines: None,
        };
        store
            .apply_webhook("d1", "pull_request", "acme/app", 1, &merged)
            .unwrap();

        let u = store.usage(7, now).unwrap();
        assert_eq!(
            (u.sessions, u.sessions_with_pr, u.sessions_merged),
            (3, 2, 1)
        );
        assert_eq!(u.days.len(), 7);
        let today = u.days.last().unwrap();
        assert_eq!(today.day_ms, now - now % day);
        assert_eq!(
            (today.sessions, today.prs_opened, today.prs_merged),
            (3, 1, 1)
        );
        let two_days_ago = &u.days[4];
        assert_eq!((two_days_ago.sessions, two_days_ago.prs_opened), (0, 1));
        assert_eq!(u.days.iter().map(|d| d.prs_opened).sum::<u64>(), 2);
        // A window that ended before anything happened counts no days' activity.
        let old = store.usage(1, now - 10 * day).unwrap();
        assert_eq!(old.days.len(), 1);
        assert_eq!(old.days[0].sessions, 0);
    }

    #[test]
    fn oauth_states_are_single_use_and_unknown_ones_refused() {
        let (store, _) = setup();
        let s = store.create_oauth_state(60_000).unwrap();
        assert!(store.take_oauth_state(&s).unwrap());
        assert!(!store.take_oauth_state(&s).unwrap(), "replayed");
        assert!(!store.take_oauth_state("hgo_nope").unwrap());
        assert!(!store.take_oauth_state("").unwrap());
        let expired = store.create_oauth_state(-1).unwrap();
        assert!(!store.take_oauth_state(&expired).unwrap());
    }

    #[test]
    fn a_replayed_delivery_changes_nothing() {
        let (store, _) = setup();
        store.record_pull_request(&new_pr(7, 1_000)).unwrap();
        let merged = PrUpdate::Closed {
            merged: true,
            at_ms: 61_000,
            total_lines: Some(10),
        };
        let pr = store
            .apply_webhook("d1", "pull_request", "acme/app", 7, &merged)
            .unwrap()
            .unwrap();
        assert_eq!(pr.state, "merged");
        let reopen = store.apply_webhook("d1", "pull_request", "acme/app", 7, &PrUpdate::Reopened);
        assert!(matches!(reopen, Err(StoreError::DuplicateDelivery(_))));
        assert_eq!(
            store.pull_request("acme/app", 7).unwrap().unwrap().state,
            "merged"
        );
    }

    #[test]
    fn stats_count_merges_reviews_revisions_and_agent_share() {
        let (store, _) = setup();
        store.record_pull_request(&new_pr(1, 0)).unwrap();
        store.record_pull_request(&new_pr(2, 0)).unwrap();
        store.record_pull_request(&new_pr(3, 0)).unwrap();
        let apply = |d: &str, n: i64, u: PrUpdate| {
            store.apply_webhook(d, "x", "acme/app", n, &u).unwrap();
        };
        apply("a", 1, PrUpdate::Pushed); // before any review: not a revision
        apply(
            "b",
            1,
            PrUpdate::Reviewed {
                approved: false,
                at_ms: 5,
            },
        );
        apply("c", 1, PrUpdate::Pushed);
        apply(
            "d",
            1,
            PrUpdate::Reviewed {
                approved: true,
                at_ms: 9,
            },
        );
        apply(
            "e",
            1,
            PrUpdate::Closed {
                merged: true,
                at_ms: 10_000,
                total_lines: Some(100),
            },
        );
        apply(
            "f",
            2,
            PrUpdate::Reviewed {
                approved: false,
                at_ms: 5,
            },
        );
        apply(
            "g",
            2,
            PrUpdate::Closed {
                merged: true,
                at_ms: 30_000,
                total_lines: Some(100),
            },
        );
        apply(
            "h",
            3,
            PrUpdate::Closed {
                merged: false,
                at_ms: 1,
                total_lines: None,
            },
        );
        store.set_pr_lines("acme/app", 1, 80, None).unwrap();
        store.set_pr_lines("acme/app", 2, 20, None).unwrap();
        let (per_repo, all) = store.pr_stats().unwrap();
        assert_eq!(per_repo["acme/app"], all);
        assert_eq!(all.opened, 3);
        assert_eq!(all.merged, 2);
        assert_eq!(all.closed_unmerged, 1);
        assert_eq!(all.median_time_to_merge_secs, Some(20.0));
        assert_eq!(all.approval_rate, Some(0.5));
        assert_eq!(all.revisions, 1);
        assert_eq!(all.agent_code_share, Some(0.5));
        let pr1 = store.pull_request("acme/app", 1).unwrap().unwrap();
        assert_eq!(pr1.first_review_at_ms, Some(5));
        assert_eq!((pr1.reviews, pr1.approvals), (2, 1));
    }

    #[test]
    fn an_opened_webhook_records_prs_of_known_sessions_only() {
        let (store, alice) = setup();
        let opened = |session: &str| PrUpdate::Opened {
            session_id: session.into(),
            head_branch: format!("hangar/{session}"),
            url: "u".into(),
            title: "t".into(),
            at_ms: 1,
        };
        let pr = store
            .apply_webhook(
                "1",
                "pull_request",
                "acme/app",
                4,
                &opened("ses-0000000000000001"),
            )
            .unwrap()
            .unwrap();
        assert_eq!(pr.author_user_id, Some(alice.id));
        assert!(
            store
                .apply_webhook(
                    "2",
                    "pull_request",
                    "acme/app",
                    5,
                    &opened("ses-ffffffffffffffff")
                )
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn github_tokens_and_links() {
        let (store, alice) = setup();
        assert!(store.github_token(alice.id).unwrap().is_none());
        let sealed = SealedGitHubToken {
            ciphertext: vec![1, 2, 3],
            expires_at_ms: None,
        };
        store.set_github_token(alice.id, &sealed).unwrap();
        assert_eq!(store.github_token(alice.id).unwrap(), Some(sealed));
        store.delete_github_token(alice.id).unwrap();
        assert!(store.github_token(alice.id).unwrap().is_none());
        let linked = store.link_github(alice.id, 42, "alice-gh").unwrap();
        assert_eq!(linked.github_id, Some(42));
        assert_eq!(store.user_by_github_id(42).unwrap(), Some(linked));
        let bob = store
            .create_user(&NewUser {
                login: "bob".into(),
                name: "Bob".into(),
                ..NewUser::default()
            })
            .unwrap();
        assert!(matches!(
            store.link_github(bob.id, 42, "alice-gh"),
            Err(StoreError::Invalid(_))
        ));
    }
}
