//! The providers against a fake model server speaking each provider's wire format.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hangar_agent::{
    Message, ModelEvent, ModelRequest, Provider, ProviderConfig, ProviderError, ProviderKind, Role,
    StopReason, ToolSpec,
};
use hangar_testkit::fake_model::{FakeModel, Reply, anthropic, anthropic_error, openai};
use serde_json::json;

fn provider(kind: ProviderKind, url: String) -> Provider {
    Provider::new(ProviderConfig {
        kind,
        base_url: url,
        model: "test-model".into(),
        api_key: Some("sk-test-key".into()),
        max_retries: 3,
        initial_backoff: Duration::from_millis(10),
    })
    .unwrap()
}

fn request() -> ModelRequest {
    ModelRequest {
        system: "be brief".into(),
        messages: vec![Message::text(Role::User, "hello")],
        tools: vec![ToolSpec {
            name: "read_file".into(),
            description: "read".into(),
            input_schema: json!({"type": "object"}),
        }],
        max_tokens: 100,
    }
}

async fn collect(p: &Provider) -> Vec<Result<ModelEvent, ProviderError>> {
    p.stream(&request()).collect().await
}

#[tokio::test]
async fn anthropic_streams_text_usage_and_stop() {
    let fake = FakeModel::start(vec![Reply::sse(anthropic(&["Hel", "lo"], &[], "end_turn"))]).await;
    let events: Vec<ModelEvent> = collect(&provider(ProviderKind::Anthropic, fake.url()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(events[0], ModelEvent::TextDelta("Hel".into()));
    assert_eq!(events[1], ModelEvent::TextDelta("lo".into()));
    assert!(events.iter().any(
        |e| matches!(e, ModelEvent::Usage(u) if u.input_tokens == 25 && u.output_tokens == 15)
    ));
    assert_eq!(events.last(), Some(&ModelEvent::Done(StopReason::EndTurn)));
    let req = &fake.requests()[0];
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.headers["x-api-key"], "sk-test-key");
    assert_eq!(req.headers["anthropic-version"], "2023-06-01");
    assert_eq!(req.body["stream"], true);
    assert_eq!(req.body["system"], "be brief");
    assert_eq!(
        req.body["messages"][0]["content"][0],
        json!({"type": "text", "text": "hello"})
    );
    assert_eq!(req.body["tools"][0]["name"], "read_file");
}

#[tokio::test]
async fn anthropic_parallel_tool_calls_and_malformed_arguments() {
    let fake = FakeModel::start(vec![Reply::sse(anthropic(
        &["Let me look."],
        &[
            ("toolu_1", "read_file", &["{\"pa", "th\": \"a.txt\"}"]),
            ("toolu_2", "shell", &["{\"command\": \"ls"]),
        ],
        "tool_use",
    ))])
    .await;
    let events: Vec<ModelEvent> = collect(&provider(ProviderKind::Anthropic, fake.url()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let calls: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ModelEvent::ToolCall { id, name, input } => {
                Some((id.clone(), name.clone(), input.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0],
        (
            "toolu_1".into(),
            "read_file".into(),
            Ok(json!({"path": "a.txt"}))
        )
    );
    assert_eq!(calls[1].1, "shell");
    assert!(
        calls[1].2.as_ref().unwrap_err().contains("not valid JSON"),
        "{:?}",
        calls[1].2
    );
    assert_eq!(events.last(), Some(&ModelEvent::Done(StopReason::ToolUse)));
}

#[tokio::test]
async fn rate_limit_then_success_honours_retry_after() {
    let fake = FakeModel::start(vec![
        Reply::Status {
            code: 429,
            retry_after: Some("0.3".into()),
            body: json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}).to_string(),
        },
        Reply::Status { code: 529, retry_after: None, body: json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).to_string() },
        Reply::sse(anthropic(&["ok"], &[], "end_turn")),
    ])
    .await;
    let started = Instant::now();
    let events = collect(&provider(ProviderKind::Anthropic, fake.url())).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "waited as retry-after asked"
    );
    assert_eq!(
        events[0].as_ref().unwrap(),
        &ModelEvent::TextDelta("ok".into())
    );
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn client_errors_are_not_retried_and_say_why() {
    let fake = FakeModel::start(vec![Reply::Status {
        code: 401,
        retry_after: None,
        body: json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}).to_string(),
    }])
    .await;
    let events = collect(&provider(ProviderKind::Anthropic, fake.url())).await;
    assert_eq!(events.len(), 1);
    let err = events[0].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("401") && err.contains("invalid x-api-key"),
        "{err}"
    );
    assert!(!err.contains("sk-test-key"));
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_stream_error_before_any_output_is_retried() {
    let fake = FakeModel::start(vec![
        Reply::sse(anthropic_error("overloaded_error", "Overloaded")),
        Reply::sse(anthropic(&["fine"], &[], "end_turn")),
    ])
    .await;
    let events = collect(&provider(ProviderKind::Anthropic, fake.url())).await;
    assert_eq!(
        events[0].as_ref().unwrap(),
        &ModelEvent::TextDelta("fine".into())
    );
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn a_disconnect_mid_stream_is_an_error_not_a_silent_retry() {
    let mut events = anthropic(&["a", "b", "c"], &[], "end_turn");
    let n = events.len();
    events.truncate(n);
    let fake = FakeModel::start(vec![Reply::Sse {
        events,
        ttft: Duration::ZERO,
        gap: Duration::ZERO,
        cut_after: Some(4),
    }])
    .await;
    let got = collect(&provider(ProviderKind::Anthropic, fake.url())).await;
    assert_eq!(got[0].as_ref().unwrap(), &ModelEvent::TextDelta("a".into()));
    let err = got.last().unwrap().as_ref().unwrap_err();
    assert!(matches!(err, ProviderError::Incomplete(_)), "{err:?}");
    assert_eq!(
        fake.requests().len(),
        1,
        "output already streamed: not retried"
    );
}

#[tokio::test]
async fn a_disconnect_before_any_event_is_retried() {
    let fake = FakeModel::start(vec![
        Reply::Sse {
            events: anthropic(&["x"], &[], "end_turn"),
            ttft: Duration::ZERO,
            gap: Duration::ZERO,
            cut_after: Some(0),
        },
        Reply::sse(anthropic(&["y"], &[], "end_turn")),
    ])
    .await;
    let got = collect(&provider(ProviderKind::Anthropic, fake.url())).await;
    assert_eq!(got[0].as_ref().unwrap(), &ModelEvent::TextDelta("y".into()));
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_request_at_once() {
    let fake = FakeModel::start(vec![Reply::Sse {
        events: anthropic(&["slow"], &[], "end_turn"),
        ttft: Duration::from_secs(30),
        gap: Duration::ZERO,
        cut_after: None,
    }])
    .await;
    let p = provider(ProviderKind::Anthropic, fake.url());
    let mut stream = p.stream(&request());
    let waited = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    assert!(waited.is_err(), "nothing before the slow first token");
    assert_eq!(fake.open_streams(), 1);
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(2);
    while fake.open_streams() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.open_streams(), 0, "the connection was closed");
}

#[tokio::test]
async fn openai_streams_text_tool_calls_and_usage() {
    let fake = FakeModel::start(vec![Reply::sse(openai(
        &["Checking"],
        &[
            ("call_1", "read_file", &["{\"path\":", "\"b.txt\"}"]),
            ("call_2", "git_status", &[]),
        ],
        "tool_calls",
    ))])
    .await;
    let events: Vec<ModelEvent> = collect(&provider(
        ProviderKind::OpenAi,
        format!("{}/v1", fake.url()),
    ))
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    assert_eq!(events[0], ModelEvent::TextDelta("Checking".into()));
    let calls: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, ModelEvent::ToolCall { .. }))
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        *calls[0],
        ModelEvent::ToolCall {
            id: "call_1".into(),
            name: "read_file".into(),
            input: Ok(json!({"path": "b.txt"}))
        }
    );
    assert_eq!(
        *calls[1],
        ModelEvent::ToolCall {
            id: "call_2".into(),
            name: "git_status".into(),
            input: Ok(json!({}))
        }
    );
    assert!(events.iter().any(
        |e| matches!(e, ModelEvent::Usage(u) if u.input_tokens == 30 && u.output_tokens == 12)
    ));
    assert_eq!(events.last(), Some(&ModelEvent::Done(StopReason::ToolUse)));
    let req = &fake.requests()[0];
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.headers["authorization"], "Bearer sk-test-key");
    assert_eq!(req.body["stream_options"]["include_usage"], true);
    assert_eq!(
        req.body["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(req.body["tools"][0]["type"], "function");
}

#[tokio::test]
async fn openai_error_status_is_reported_with_the_providers_message() {
    let fake = FakeModel::start(vec![Reply::Status {
        code: 400,
        retry_after: None,
        body: json!({"error": {"message": "model not found", "type": "invalid_request_error", "code": null}}).to_string(),
    }])
    .await;
    let got = collect(&provider(ProviderKind::OpenAi, fake.url())).await;
    let err = got[0].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("400") && err.contains("model not found"),
        "{err}"
    );
}
