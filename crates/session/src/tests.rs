//! The session service in-process: queue, stop, hibernation, recovery.

use std::time::Duration;

use hangar_protocol::session::{Event, PromptStatus};
use hangar_store::NewUser;

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    sessions: Sessions,
    alice: Author,
    bob: Author,
}

fn fixture(idle: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("index.db")).unwrap());
    let mut authors = Vec::new();
    for login in ["alice", "bob"] {
        let u = store
            .create_user(&NewUser {
                login: login.into(),
                name: login.into(),
                ..NewUser::default()
            })
            .unwrap();
        authors.push(Author {
            user_id: Some(u.id),
            login: login.into(),
            share_id: None,
        });
    }
    let mut config = SessionsConfig::new(dir.path().join("sessions"));
    config.idle_unload = idle;
    let executor = Arc::new(ScriptedExecutor {
        delay: Duration::from_millis(5),
    });
    let sessions = Sessions::new(config, store, executor).unwrap();
    let bob = authors.pop().unwrap();
    let alice = authors.pop().unwrap();
    Fixture {
        _dir: dir,
        sessions,
        alice,
        bob,
    }
}

async fn all_events(s: &Sessions, id: &str) -> Vec<Event> {
    s.events(id, 0, MAX_EVENTS_PAGE)
        .await
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str(&e.json).unwrap())
        .collect()
}

async fn wait_idle(s: &Sessions, id: &str) {
    for _ in 0..500 {
        let info = s.info(id).await.unwrap();
        if info.status == SessionStatus::Idle && info.running.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("session never became idle");
}

#[tokio::test]
async fn prompts_queue_behind_the_running_one_and_run_in_order() {
    let f = fixture(Duration::from_secs(60));
    let s = f.sessions.create(1, "acme/app", "t").await.unwrap();
    let p1 = f
        .sessions
        .prompt(&s.id, f.alice.clone(), "first delay_ms=20".into())
        .await
        .unwrap();
    let p2 = f
        .sessions
        .prompt(&s.id, f.bob.clone(), "second".into())
        .await
        .unwrap();
    let q = f.sessions.queue(&s.id).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!((q[0].id, &q[0].author), (p2.id, &f.bob));
    wait_idle(&f.sessions, &s.id).await;
    let events = all_events(&f.sessions, &s.id).await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "no gaps");
    }
    let started: Vec<i64> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::PromptStarted { prompt_id, .. } => Some(*prompt_id),
            _ => None,
        })
        .collect();
    assert_eq!(started, [p1.id, p2.id]);
    assert_eq!(f.sessions.record(&s.id).unwrap().status, "idle");
}

use hangar_protocol::session::{EventBody, PromptOutcome};

#[tokio::test]
async fn only_the_author_edits_or_cancels_a_queued_prompt() {
    let f = fixture(Duration::from_secs(60));
    let s = f.sessions.create(1, "acme/app", "t").await.unwrap();
    f.sessions
        .prompt(&s.id, f.alice.clone(), "long deltas=100 delay_ms=10".into())
        .await
        .unwrap();
    let p2 = f
        .sessions
        .prompt(&s.id, f.bob.clone(), "bobs".into())
        .await
        .unwrap();
    let err = f
        .sessions
        .edit_prompt(&s.id, p2.id, f.alice.clone(), "hijack".into())
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::NotAuthor { .. }), "{err}");
    let edited = f
        .sessions
        .edit_prompt(&s.id, p2.id, f.bob.clone(), "better".into())
        .await
        .unwrap();
    assert_eq!(edited.text, "better");
    assert_eq!(f.sessions.queue(&s.id).await.unwrap()[0].text, "better");
    let err = f
        .sessions
        .cancel_prompt(&s.id, 1, f.alice.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::NotQueued { .. }), "{err}");
    let err = f
        .sessions
        .cancel_prompt(&s.id, 99, f.alice.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::PromptNotFound { .. }), "{err}");
    let c = f
        .sessions
        .cancel_prompt(&s.id, p2.id, f.bob.clone())
        .await
        .unwrap();
    assert_eq!(c.status, PromptStatus::Cancelled);
    assert!(f.sessions.queue(&s.id).await.unwrap().is_empty());
    f.sessions.stop(&s.id).await.unwrap();
}

#[tokio::test]
async fn stop_aborts_the_running_prompt_and_the_queue_goes_on() {
    let f = fixture(Duration::from_secs(60));
    let s = f.sessions.create(1, "acme/app", "t").await.unwrap();
    let p1 = f
        .sessions
        .prompt(&s.id, f.alice.clone(), "deltas=1000 delay_ms=5".into())
        .await
        .unwrap();
    let p2 = f
        .sessions
        .prompt(&s.id, f.bob.clone(), "next delay_ms=1".into())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.sessions.stop(&s.id).await.unwrap(), Some(p1.id));
    wait_idle(&f.sessions, &s.id).await;
    let events = all_events(&f.sessions, &s.id).await;
    let finished: Vec<(i64, PromptOutcome)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::PromptFinished {
                prompt_id, outcome, ..
            } => Some((*prompt_id, *outcome)),
            _ => None,
        })
        .collect();
    assert_eq!(
        finished,
        [
            (p1.id, PromptOutcome::Stopped),
            (p2.id, PromptOutcome::Done)
        ]
    );
    // Nothing of the stopped run is logged after its prompt.finished.
    let stop_at = events
        .iter()
        .position(
            |e| matches!(e.body, EventBody::PromptFinished { prompt_id, .. } if prompt_id == p1.id),
        )
        .unwrap();
    assert!(!events[stop_at..].iter().any(
        |e| matches!(&e.body, EventBody::ModelDelta { prompt_id, .. } if *prompt_id == p1.id)
    ));
    assert_eq!(f.sessions.stop(&s.id).await.unwrap(), None);
}

#[tokio::test]
async fn idle_sessions_hibernate_and_reload_on_the_next_request() {
    let f = fixture(Duration::from_millis(100));
    let s = f.sessions.create(1, "acme/app", "t").await.unwrap();
    f.sessions
        .prompt(&s.id, f.alice.clone(), "hi delay_ms=1".into())
        .await
        .unwrap();
    wait_idle(&f.sessions, &s.id).await;
    let before = all_events(&f.sessions, &s.id).await;
    assert_eq!(f.sessions.loaded(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(f.sessions.loaded(), 0, "hibernated");
    assert_eq!(all_events(&f.sessions, &s.id).await, before);
    assert_eq!(f.sessions.loaded(), 0, "reading events does not wake it");
    f.sessions.info(&s.id).await.unwrap();
    assert_eq!(f.sessions.loaded(), 1, "reloaded");
    let (loads, unloads) = f.sessions.load_counts();
    assert!(loads >= 2 && unloads >= 1, "{loads} {unloads}");
    // A subscriber keeps the session loaded.
    let sub = f.sessions.subscribe(&s.id, f.bob.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.sessions.loaded(), 1);
    drop(sub);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(f.sessions.loaded(), 0);
}

#[tokio::test]
async fn subscribers_get_live_events_after_the_backlog_without_gaps() {
    let f = fixture(Duration::from_secs(60));
    let s = f.sessions.create(1, "acme/app", "t").await.unwrap();
    f.sessions
        .prompt(&s.id, f.alice.clone(), "deltas=20 delay_ms=2".into())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(15)).await;
    let mut sub = f.sessions.subscribe(&s.id, f.bob.clone()).await.unwrap();
    let mut seen: Vec<u64> = f
        .sessions
        .events(&s.id, 0, MAX_EVENTS_PAGE)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    let mut last = *seen.last().unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), sub.receiver.recv())
            .await
            .unwrap()
            .unwrap();
        if let Live::Event(e) = msg {
            if e.seq <= last {
                continue;
            }
            assert_eq!(e.seq, last + 1);
            last = e.seq;
            seen.push(e.seq);
            if e.json.contains("\"status\":\"idle\"") {
                break;
            }
        }
    }
    assert_eq!(seen, (1..=last).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_session_left_running_is_marked_interrupted_on_reload() {
    let f = fixture(Duration::from_secs(60));
    let s = f.sessions.create(1, "acme/app", "t").await.unwrap();
    // Simulate a crash: the file says a prompt runs, nothing runs it.
    {
        let mut log =
            SessionLog::open(&f.sessions.path(&s.id), Durability::Process, false).unwrap();
        let p = Prompt {
            id: 1,
            author: f.alice.clone(),
            text: "x".into(),
            status: PromptStatus::Running,
            created_at_ms: 1,
        };
        log.commit(
            &[log::PromptChange::Insert(p)],
            Some(SessionStatus::Running),
            vec![],
        )
        .unwrap();
        f.sessions
            .store()
            .set_session_status(&s.id, "running")
            .unwrap();
    }
    assert_eq!(f.sessions.recover().await.unwrap(), vec![s.id.clone()]);
    let info = f.sessions.info(&s.id).await.unwrap();
    assert_eq!(info.status, SessionStatus::Interrupted);
    assert_eq!(f.sessions.record(&s.id).unwrap().status, "interrupted");
    let events = all_events(&f.sessions, &s.id).await;
    assert!(events.iter().any(|e| matches!(
        e.body,
        EventBody::PromptFinished {
            prompt_id: 1,
            outcome: PromptOutcome::Interrupted,
            ..
        }
    )));
    // A new prompt resumes the session.
    f.sessions
        .prompt(&s.id, f.bob.clone(), "go on delay_ms=1".into())
        .await
        .unwrap();
    wait_idle(&f.sessions, &s.id).await;
}

#[tokio::test]
async fn unknown_sessions_and_bad_prompts_are_refused() {
    let f = fixture(Duration::from_secs(60));
    for id in ["ses-0000000000000000", "../x", "ses-ZZZZ"] {
        assert!(matches!(
            f.sessions.info(id).await,
            Err(SessionError::NotFound(_))
        ));
    }
    let s = f.sessions.create(1, "acme/app", "t").await.unwrap();
    for bad in ["", "   ", &"x".repeat(MAX_PROMPT_BYTES + 1)] {
        assert!(matches!(
            f.sessions
                .prompt(&s.id, f.alice.clone(), bad.to_string())
                .await,
            Err(SessionError::Invalid(_))
        ));
    }
}

/// Counts typing signals.
struct TypingProbe(std::sync::Mutex<Vec<(String, String)>>);

impl Executor for TypingProbe {
    fn run(&self, _run: PromptRun) -> RunFuture {
        Box::pin(async { Ok(()) })
    }
    fn typing(&self, session_id: &str, author: &Author) {
        self.0
            .lock()
            .unwrap()
            .push((session_id.to_string(), author.login.clone()));
    }
}

#[tokio::test]
async fn typing_reaches_the_executor_for_warm_up_and_presence() {
    let f = fixture(Duration::from_secs(60));
    let probe = Arc::new(TypingProbe(Default::default()));
    let sessions = Sessions::new(
        SessionsConfig::new(f._dir.path().join("other")),
        Arc::clone(f.sessions.store()),
        probe.clone(),
    )
    .unwrap();
    let s = sessions.create(1, "acme/app", "t").await.unwrap();
    let mut sub = sessions.subscribe(&s.id, f.alice.clone()).await.unwrap();
    sessions.typing(&s.id, f.alice.clone()).await.unwrap();
    assert_eq!(
        *probe.0.lock().unwrap(),
        [(s.id.clone(), "alice".to_string())]
    );
    let mut typing_seen = false;
    while let Ok(Ok(msg)) =
        tokio::time::timeout(Duration::from_millis(200), sub.receiver.recv()).await
    {
        if let Live::Presence(p) = msg {
            typing_seen |= p.contains("\"typing\":true");
        }
    }
    assert!(typing_seen);
    // Five seconds later presence says the typing stopped, without anyone saying so.
    let cleared = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            if let Ok(Live::Presence(p)) = sub.receiver.recv().await
                && p.contains("\"typing\":false")
            {
                return;
            }
        }
    })
    .await;
    assert!(cleared.is_ok(), "typing never cleared");
}

#[tokio::test]
async fn events_from_outside_the_agent_are_appended_in_order() {
    let f = fixture(Duration::from_secs(60));
    let s = f.sessions.create(1, "acme/app", "t").await.unwrap();
    let body = EventBody::PrUpdated {
        number: 7,
        url: "https://github.com/acme/app/pull/7".into(),
        state: "merged".into(),
    };
    let seq = f.sessions.append_event(&s.id, body.clone()).await.unwrap();
    let events = all_events(&f.sessions, &s.id).await;
    assert_eq!(events.last().map(|e| (e.seq, &e.body)), Some((seq, &body)));
    assert!(matches!(
        f.sessions.append_event("ses-ffffffffffffffff", body).await,
        Err(SessionError::NotFound(_))
    ));
}

#[tokio::test]
async fn prompting_since_names_who_prompted_in_the_window() {
    let f = fixture(Duration::from_secs(60));
    let s = f.sessions.create(1, "acme/app", "t").await.unwrap();
    let before = log::now_ms();
    assert!(f.sessions.prompting_since(before - 300_000).is_empty());
    for who in [&f.bob, &f.alice, &f.bob] {
        f.sessions
            .prompt(&s.id, who.clone(), "hello".into())
            .await
            .unwrap();
    }
    // A refused prompt (unknown session) does not count.
    let carol = Author {
        user_id: None,
        login: "carol".into(),
        share_id: None,
    };
    assert!(
        f.sessions
            .prompt("ses-0000000000000000", carol, "x".into())
            .await
            .is_err()
    );
    assert_eq!(
        f.sessions.prompting_since(before - 300_000),
        ["alice", "bob"]
    );
    assert!(f.sessions.prompting_since(log::now_ms() + 1_000).is_empty());
    wait_idle(&f.sessions, &s.id).await;
}
