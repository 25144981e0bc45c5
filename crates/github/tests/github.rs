//! GitHub against the fake GitHub of the test kit: App tokens, sign-in, pull requests and
//! webhooks, with the fake checking JWT signatures and which token each call carries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};

use hangar_github::{
    Api, GitHub, GitHubApp, GitHubError, OAuthApp, Secret, TokenSeal, session_branch, sign,
};
use hangar_images::git::Credentials;
use hangar_protocol::session::EventBody;
use hangar_store::{NewSession, SessionRecord, Store};
use hangar_testkit::fake_github::{FakeGitHub, FakeUser, app_key_pair};
use serde_json::json;

const APP_ID: u64 = 4242;
const WEBHOOK_SECRET: &str = "webhook-secret";

fn keys() -> &'static (String, String) {
    static KEYS: OnceLock<(String, String)> = OnceLock::new();
    KEYS.get_or_init(app_key_pair)
}

struct Fixture {
    fake: FakeGitHub,
    store: Arc<Store>,
    github: GitHub,
    _dir: tempfile::TempDir,
}

fn app(fake: &FakeGitHub, private_pem: &str) -> GitHubApp {
    GitHubApp::new(
        Api::new(&fake.url()).unwrap(),
        APP_ID,
        private_pem,
        "github.com",
    )
    .unwrap()
}

async fn fixture() -> Fixture {
    let (private, public) = keys();
    let fake = FakeGitHub::start(APP_ID, public, "Iv1.client", "client-secret").await;
    let api = Api::new(&fake.url()).unwrap();
    let oauth = OAuthApp::new(
        Api::web(&fake.url()).unwrap(),
        api.clone(),
        "Iv1.client",
        Secret::new("client-secret"),
        None,
    );
    let store = Arc::new(Store::open_in_memory().unwrap());
    let dir = hangar_testkit::scratch_dir();
    let seal = TokenSeal::open_or_create(&dir.path().join("github-tokens.key")).unwrap();
    let github = GitHub::new(store.clone(), api, "github.com", seal)
        .with_app(app(&fake, private))
        .with_oauth(oauth)
        .with_webhook_secret(Secret::new(WEBHOOK_SECRET))
        .with_review_comment_prompts(["acme/app".to_string()]);
    Fixture {
        fake,
        store,
        github,
        _dir: dir,
    }
}

fn user(login: &str, id: i64) -> FakeUser {
    FakeUser {
        id,
        login: login.into(),
        name: Some(format!("{login} Example")),
        email: None,
        primary_email: format!("{login}@example.com"),
    }
}

fn state_of(url: &str) -> String {
    url.split(['?', '&'])
        .find_map(|p| p.strip_prefix("state="))
        .unwrap()
        .to_string()
}

impl Fixture {
    async fn sign_in(&self, login: &str, id: i64) -> hangar_github::SignedIn {
        let code = self.fake.add_user(user(login, id));
        let state = state_of(&self.github.login_url().unwrap());
        self.github.sign_in(&code, &state).await.unwrap()
    }

    fn session(&self, created_by: i64) -> SessionRecord {
        self.store
            .create_session(&NewSession {
                id: "ses-00000000000000a1".into(),
                repo: "acme/app".into(),
                title: "Fix the flaky test".into(),
                status: "idle".into(),
                created_by,
            })
            .unwrap()
    }

    fn webhook(
        &self,
        event: &str,
        delivery: &str,
        body: &serde_json::Value,
    ) -> Result<hangar_github::WebhookOutcome, GitHubError> {
        let body = serde_json::to_vec(body).unwrap();
        let sig = sign(WEBHOOK_SECRET.as_bytes(), &body);
        self.github
            .handle_webhook(Some(event), Some(delivery), Some(&sig), &body)
    }
}

fn pull_payload(action: &str, number: i64, extra: serde_json::Value) -> serde_json::Value {
    let mut pr = json!({"number": number, "state": "open", "title": "Fix the flaky test",
        "html_url": format!("https://github.com/acme/app/pull/{number}"),
        "created_at": "2026-11-24T12:00:00Z", "updated_at": "2026-11-24T12:00:00Z",
        "head": {"ref": session_branch("ses-00000000000000a1"), "sha": "abc"},
        "base": {"ref": "main"}, "user": {"login": "alice", "id": 1}});
    for (k, v) in extra.as_object().unwrap() {
        pr[k] = v.clone();
    }
    json!({"action": action, "number": number, "pull_request": pr,
        "repository": {"full_name": "acme/app"}, "sender": {"login": "bob", "id": 2}})
}

#[tokio::test]
async fn installation_tokens_are_cached_then_refreshed_near_expiry() {
    let f = fixture().await;
    f.fake.install("acme/app");
    let app = f.github.app().unwrap();
    let a = app.token_for("acme/app").await.unwrap();
    let b = app
        .token_for("https://github.com/acme/app.git")
        .await
        .unwrap();
    assert_eq!(a, b, "cached");
    assert_eq!(f.fake.token_requests(), 1);
    // Tokens that expire within the refresh margin (5 minutes) are replaced on each use.
    f.fake.set_token_ttl(120);
    app.invalidate(&hangar_github::RepoName::parse("acme/app", "github.com").unwrap());
    let c = app.token_for("acme/app").await.unwrap();
    let d = app.token_for("acme/app").await.unwrap();
    assert_ne!(c, d, "a token about to expire is refreshed");
    assert_eq!(f.fake.token_requests(), 3);
    f.fake.set_token_ttl(3600);
    let e = app.token_for("acme/app").await.unwrap();
    assert_eq!(app.token_for("acme/app").await.unwrap(), e);
    assert_eq!(f.fake.token_requests(), 4);
    // Every App call carried a JWT (the fake checked its signature), never a token.
    for seen in f.fake.seen() {
        let auth = seen.authorization.unwrap();
        let jwt = auth.strip_prefix("Bearer ").unwrap();
        assert_eq!(jwt.split('.').count(), 3, "{}", seen.path);
    }
}

#[tokio::test]
async fn an_app_not_installed_or_a_wrong_key_is_a_clear_error() {
    let f = fixture().await;
    f.fake.install("acme/app");
    f.github.check_installed("acme/app").await.unwrap();
    let e = f.github.check_installed("acme/other").await.unwrap_err();
    assert!(matches!(e, GitHubError::NotInstalled { .. }), "{e:?}");
    assert!(e.to_string().contains("not installed on acme/other"), "{e}");
    let e = f.github.check_installed("not a repo").await.unwrap_err();
    assert!(matches!(e, GitHubError::Invalid(_)), "{e:?}");
    // A key GitHub does not know for this App: 401, naming what to check.
    let (other_private, _) = app_key_pair();
    let wrong = app(&f.fake, &other_private);
    let e = wrong.check_installed("acme/app").await.unwrap_err();
    assert!(matches!(e, GitHubError::Unauthorized { .. }), "{e:?}");
    assert!(e.to_string().contains("private_key_file"), "{e}");
    assert_eq!(f.fake.token_requests(), 0);
    let e = GitHubApp::new(
        Api::new(&f.fake.url()).unwrap(),
        1,
        "not a key",
        "github.com",
    )
    .unwrap_err();
    assert!(e.to_string().contains("PEM"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_gets_the_installation_token_as_its_credential() {
    let f = fixture().await;
    f.fake.install("acme/app");
    let app = f.github.app().unwrap().clone();
    let cred = app
        .credential("https://github.com/acme/app.git")
        .unwrap()
        .unwrap();
    assert_eq!(cred.username, "x-access-token");
    assert!(cred.password.starts_with("ghs_"));
    assert!(!format!("{cred:?}").contains(&cred.password));
    assert!(
        app.credential("https://gitlab.com/acme/app.git")
            .unwrap()
            .is_none()
    );
    assert!(app.credential("/srv/git/app").unwrap().is_none());
    let e = app
        .credential("https://github.com/acme/other.git")
        .unwrap_err();
    assert!(e.contains("not installed"), "{e}");
}

#[tokio::test]
async fn sign_in_links_the_account_and_refuses_bad_or_replayed_states() {
    let f = fixture().await;
    let code = f.fake.add_user(user("alice", 1));
    let url = f.github.login_url().unwrap();
    assert!(url.starts_with(&format!(
        "{}/login/oauth/authorize?client_id=Iv1.client",
        f.fake.url()
    )));
    let state = state_of(&url);
    let signed = f.github.sign_in(&code, &state).await.unwrap();
    assert!(signed.created);
    assert_eq!(signed.user.login, "alice");
    assert_eq!(signed.user.github_id, Some(1));
    assert_eq!(
        signed.user.email.as_deref(),
        Some("alice@example.com"),
        "primary email"
    );
    let (u, _) = f.store.verify_token(signed.token.expose()).unwrap();
    assert_eq!(u.id, signed.user.id);
    // The exchange asked for JSON; the user token is stored only sealed.
    let exchange = f
        .fake
        .seen()
        .into_iter()
        .find(|s| s.path == "/login/oauth/access_token")
        .unwrap();
    assert_eq!(exchange.accept.as_deref(), Some("application/json"));
    let gh_token = f.fake.tokens_of("alice").pop().unwrap();
    let sealed = f.store.github_token(u.id).unwrap().unwrap();
    assert!(
        !sealed
            .ciphertext
            .windows(gh_token.len())
            .any(|w| w == gh_token.as_bytes())
    );

    // The same state again, an unknown one, an empty one: refused before GitHub is asked.
    let asked = f.fake.seen().len();
    for bad in [state.as_str(), "hgo_00", ""] {
        let e = f
            .github
            .sign_in(&f.fake.code_for("alice"), bad)
            .await
            .unwrap_err();
        assert!(matches!(e, GitHubError::OAuth(_)), "{e:?}");
        assert!(e.to_string().contains("start again"), "{e}");
    }
    assert_eq!(f.fake.seen().len(), asked);
    // A bad code with a good state: GitHub's words.
    let state = state_of(&f.github.login_url().unwrap());
    let e = f.github.sign_in("nope", &state).await.unwrap_err();
    assert!(e.to_string().contains("incorrect or expired"), "{e}");

    // Signing in again finds the same user.
    let state = state_of(&f.github.login_url().unwrap());
    let again = f
        .github
        .sign_in(&f.fake.code_for("alice"), &state)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.user.id, signed.user.id);
}

#[tokio::test]
async fn a_github_login_never_takes_over_an_existing_hangar_user() {
    let f = fixture().await;
    let admin = f.store.ensure_admin().unwrap().unwrap().0;
    let signed = f.sign_in("admin", 77).await;
    assert_ne!(signed.user.id, admin.id);
    assert_eq!(signed.user.login, "admin-github");
    assert!(!signed.user.is_admin);
}

#[tokio::test]
async fn a_pr_is_opened_with_the_users_token_and_asking_twice_returns_it() {
    let f = fixture().await;
    f.fake.install("acme/app");
    let alice = f.sign_in("alice", 1).await.user;
    let session = f.session(alice.id);
    let (pr, record) = f
        .github
        .open_pull_request(&alice, &session, None, None, None)
        .await
        .unwrap();
    assert_eq!((pr.number, pr.existed), (1, false));
    assert_eq!(pr.head, "hangar/ses-00000000000000a1");
    assert_eq!(pr.base, "main", "the repository's default branch");
    assert_eq!(pr.title, "Fix the flaky test");
    assert_eq!(record.session_id.as_deref(), Some(session.id.as_str()));
    assert_eq!(record.author_user_id, Some(alice.id));
    let pulls = f.fake.pulls();
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].author, "alice", "opened as the user, not the App");
    let alice_token = f.fake.tokens_of("alice").pop().unwrap();
    let post = f
        .fake
        .seen()
        .into_iter()
        .find(|s| s.method == "POST" && s.path == "/repos/acme/app/pulls")
        .unwrap();
    assert_eq!(post.authorization, Some(format!("Bearer {alice_token}")));

    // 422 "already exists": the open one is returned.
    let (again, _) = f
        .github
        .open_pull_request(
            &alice,
            &session,
            Some("Other title".into()),
            None,
            Some("main".into()),
        )
        .await
        .unwrap();
    assert_eq!((again.number, again.existed), (1, true));
    assert_eq!(f.fake.pulls().len(), 1);
    assert_eq!(
        f.github
            .session_pull_request(&session.id)
            .unwrap()
            .unwrap()
            .number,
        1
    );
}

#[tokio::test]
async fn a_refused_user_token_means_sign_in_again_and_403_names_the_permission() {
    let f = fixture().await;
    f.fake.install("acme/app");
    let alice = f.sign_in("alice", 1).await.user;
    let bob = f
        .store
        .create_user(&hangar_store::NewUser {
            login: "bob".into(),
            name: "Bob".into(),
            ..Default::default()
        })
        .unwrap();
    let session = f.session(alice.id);
    let e = f
        .github
        .open_pull_request(&bob, &session, None, None, None)
        .await
        .unwrap_err();
    assert!(matches!(e, GitHubError::SignInRequired(_)), "{e:?}");
    assert!(e.to_string().contains("/auth/github/login"), "{e}");

    f.fake.forbid_pulls("acme/app", "pull_requests=write");
    let e = f
        .github
        .open_pull_request(&alice, &session, None, None, Some("main".into()))
        .await
        .unwrap_err();
    assert!(matches!(e, GitHubError::Forbidden { .. }), "{e:?}");
    assert!(e.to_string().contains("pull_requests=write"), "{e}");

    f.fake.revoke_user_tokens("alice");
    let e = f
        .github
        .open_pull_request(&alice, &session, None, None, None)
        .await
        .unwrap_err();
    assert!(matches!(e, GitHubError::SignInRequired(_)), "{e:?}");
    assert!(
        f.store.github_token(alice.id).unwrap().is_none(),
        "forgotten"
    );
    assert!(f.fake.pulls().is_empty());
}

#[tokio::test]
async fn forged_or_replayed_webhooks_change_nothing_and_a_merge_is_recorded() {
    let f = fixture().await;
    f.fake.install("acme/app");
    let alice = f.sign_in("alice", 1).await.user;
    let session = f.session(alice.id);
    f.github
        .open_pull_request(&alice, &session, None, None, None)
        .await
        .unwrap();

    let merged = pull_payload(
        "closed",
        1,
        json!({"merged": true, "merged_at": "2026-11-24T13:00:00Z", "additions": 40}),
    );
    let body = serde_json::to_vec(&merged).unwrap();
    for sig in [
        None,
        Some("sha256=00".to_string()),
        Some(sign(b"wrong secret", &body)),
    ] {
        let e = f
            .github
            .handle_webhook(Some("pull_request"), Some("d-1"), sig.as_deref(), &body)
            .unwrap_err();
        assert!(matches!(e, GitHubError::BadSignature), "{e:?}");
    }
    assert_eq!(
        f.store.pull_request("acme/app", 1).unwrap().unwrap().state,
        "open"
    );

    // The same delivery id, now properly signed: it was never recorded, so it applies.
    let out = f.webhook("pull_request", "d-1", &merged).unwrap();
    assert_eq!(out.session_id.as_deref(), Some(session.id.as_str()));
    assert_eq!(
        out.events,
        vec![EventBody::PrUpdated {
            number: 1,
            url: out.pull_request.as_ref().unwrap().url.clone(),
            state: "merged".into()
        }]
    );
    let pr = f.store.pull_request("acme/app", 1).unwrap().unwrap();
    assert_eq!(pr.state, "merged");
    assert_eq!(pr.total_lines, Some(40));
    let (_, all) = f.github.stats().unwrap();
    assert_eq!((all.opened, all.merged), (1, 1));

    // Replayed: refused, and a reopen under the old id changes nothing.
    let e = f
        .webhook(
            "pull_request",
            "d-1",
            &pull_payload("reopened", 1, json!({})),
        )
        .unwrap_err();
    assert!(matches!(e, GitHubError::Replayed(_)), "{e:?}");
    assert_eq!(
        f.store.pull_request("acme/app", 1).unwrap().unwrap().state,
        "merged"
    );

    // Missing headers are bad requests.
    let body = serde_json::to_vec(&merged).unwrap();
    let sig = sign(WEBHOOK_SECRET.as_bytes(), &body);
    let e = f
        .github
        .handle_webhook(Some("pull_request"), None, Some(&sig), &body)
        .unwrap_err();
    assert!(matches!(e, GitHubError::Invalid(_)), "{e:?}");
}

#[tokio::test]
async fn reviews_count_and_a_review_comment_becomes_a_prompt_of_a_linked_user() {
    let f = fixture().await;
    f.fake.install("acme/app");
    let alice = f.sign_in("alice", 1).await.user;
    let carol = f.sign_in("carol", 3).await.user;
    let session = f.session(alice.id);
    f.github
        .open_pull_request(&alice, &session, None, None, None)
        .await
        .unwrap();
    let review = |state: &str| {
        let mut p = pull_payload("submitted", 1, json!({}));
        p["review"] = json!({"id": 9, "user": {"login": "carol", "id": 3}, "body": "Looks good",
            "state": state, "submitted_at": "2026-11-24T12:30:00Z"});
        p
    };
    let out = f
        .webhook("pull_request_review", "r-1", &review("changes_requested"))
        .unwrap();
    assert!(
        matches!(&out.events[..], [EventBody::PrReviewed { state, reviewer, .. }]
        if state == "changes_requested" && reviewer == "carol")
    );
    f.webhook(
        "pull_request",
        "p-1",
        &pull_payload("synchronize", 1, json!({})),
    )
    .unwrap();
    f.webhook("pull_request_review", "r-2", &review("approved"))
        .unwrap();
    let pr = f.store.pull_request("acme/app", 1).unwrap().unwrap();
    assert_eq!(
        (pr.reviews, pr.approvals, pr.pushes_after_review),
        (2, 1, 1)
    );

    let mut comment = pull_payload("created", 1, json!({}));
    comment["comment"] = json!({"id": 11, "user": {"login": "carol", "id": 3},
        "body": "Please use a constant here", "path": "src/lib.rs", "line": 12,
        "html_url": "https://github.com/acme/app/pull/1#discussion_r11",
        "created_at": "2026-11-24T12:31:00Z"});
    let out = f
        .webhook("pull_request_review_comment", "c-1", &comment)
        .unwrap();
    assert!(
        matches!(&out.events[..], [EventBody::PrReviewComment { path, line: Some(12), .. }] if path == "src/lib.rs")
    );
    let (author, text) = out.follow_up.unwrap();
    assert_eq!(author.user_id, Some(carol.id));
    assert!(
        text.contains("Please use a constant here") && text.contains("src/lib.rs line 12"),
        "{text}"
    );

    // A commenter without a Hangar account: the event, but no prompt.
    comment["comment"]["user"] = json!({"login": "dave", "id": 4});
    let out = f
        .webhook("pull_request_review_comment", "c-2", &comment)
        .unwrap();
    assert_eq!(out.events.len(), 1);
    assert!(out.follow_up.is_none());
}
