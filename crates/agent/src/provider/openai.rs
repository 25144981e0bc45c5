//! OpenAI-compatible Chat Completions, streaming
//! (<https://platform.openai.com/docs/api-reference/chat/streaming>): `data:` chunks with
//! `choices[0].delta` (`content`, `tool_calls[{index, id, function{name, arguments}}]`),
//! `finish_reason`, a final usage chunk (`stream_options.include_usage`), then `[DONE]`.
//! Ollama, vLLM and llama.cpp's server speak the same.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::anthropic::parse_arguments;
use super::{Failure, Provider, ProviderError, Sink, open_events};
use crate::model::{Block, Message, ModelEvent, ModelRequest, Role, StopReason, Usage};

/// The conversation in Chat Completions form: tool results become `tool` messages, tool
/// calls go in the assistant message's `tool_calls` with their arguments as a JSON string.
pub(super) fn messages(system: &str, messages: &[Message]) -> Vec<Value> {
    let mut out = Vec::new();
    if !system.is_empty() {
        out.push(json!({"role": "system", "content": system}));
    }
    for m in messages {
        let mut text = String::new();
        let mut calls = Vec::new();
        for block in &m.content {
            match block {
                Block::Text { text: t } => text.push_str(t),
                Block::ToolUse { id, name, input } => calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                })),
                Block::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                } => {
                    let content = if *is_error {
                        format!("error: {content}")
                    } else {
                        content.clone()
                    };
                    out.push(
                        json!({"role": "tool", "tool_call_id": tool_use_id, "content": content}),
                    );
                }
            }
        }
        match m.role {
            Role::Assistant => {
                let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
                if !calls.is_empty() {
                    msg["tool_calls"] = json!(calls);
                }
                out.push(msg);
            }
            Role::User if !text.is_empty() => out.push(json!({"role": "user", "content": text})),
            Role::User => {}
        }
    }
    out
}

pub(super) fn body(model: &str, req: &ModelRequest) -> Value {
    let mut body = json!({
        "model": model,
        "messages": messages(&req.system, &req.messages),
        "max_tokens": req.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}))
            .collect();
    }
    body
}

#[derive(Default)]
struct Call {
    id: String,
    name: String,
    json: String,
}

pub(super) async fn attempt(p: &Provider, req: &ModelRequest, sink: &Sink) -> Result<(), Failure> {
    let url = format!(
        "{}/chat/completions",
        p.config.base_url.trim_end_matches('/')
    );
    let headers: Vec<(&str, String)> = p
        .config
        .api_key
        .iter()
        .map(|k| ("authorization", format!("Bearer {k}")))
        .collect();
    let mut events = open_events(p, &url, &headers, &body(&p.config.model, req)).await?;
    let mut sent = false;
    let fail = |error: ProviderError, sent: bool| Failure {
        error,
        after_events: sent,
    };
    let mut calls: BTreeMap<usize, Call> = BTreeMap::new();
    let mut stop: Option<StopReason> = None;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| fail(ProviderError::Incomplete(e), sent))?;
        if event.data.trim() == "[DONE]" {
            for (_, call) in std::mem::take(&mut calls) {
                let input = parse_arguments(&call.json);
                sink.send(ModelEvent::ToolCall {
                    id: call.id,
                    name: call.name,
                    input,
                })
                .await;
            }
            sink.send(ModelEvent::Done(stop.unwrap_or(StopReason::EndTurn)))
                .await;
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(&event.data).map_err(|e| {
            fail(
                ProviderError::Protocol(format!("a chunk is not JSON: {e}")),
                sent,
            )
        })?;
        if let Some(err) = chunk.get("error") {
            let kind = err["type"]
                .as_str()
                .or(err["code"].as_str())
                .unwrap_or("error");
            let message = err["message"].as_str().unwrap_or_default();
            return Err(fail(
                ProviderError::Stream {
                    kind: kind.to_string(),
                    message: message.to_string(),
                },
                sent,
            ));
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            let usage = Usage {
                input_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
                output_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
            };
            sink.send(ModelEvent::Usage(usage)).await;
            sent = true;
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            continue;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            sink.send(ModelEvent::TextDelta(text.to_string())).await;
            sent = true;
        }
        if let Some(parts) = delta["tool_calls"].as_array() {
            for part in parts {
                let index = part["index"].as_u64().unwrap_or(0) as usize;
                let call = calls.entry(index).or_default();
                if let Some(id) = part["id"].as_str() {
                    call.id = id.to_string();
                }
                if let Some(name) = part.pointer("/function/name").and_then(Value::as_str) {
                    call.name.push_str(name);
                    sink.send(ModelEvent::ToolCallStarted {
                        index,
                        id: call.id.clone(),
                        name: call.name.clone(),
                    })
                    .await;
                    sent = true;
                }
                if let Some(args) = part
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .filter(|a| !a.is_empty())
                {
                    call.json.push_str(args);
                    sink.send(ModelEvent::ToolCallDelta {
                        index,
                        json: args.to_string(),
                    })
                    .await;
                    sent = true;
                }
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            stop = Some(StopReason::from_openai(reason));
        }
    }
    Err(fail(
        ProviderError::Incomplete("the stream ended before [DONE]".into()),
        sent,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_results_become_tool_messages() {
        let msgs = vec![
            Message::text(Role::User, "hi"),
            Message {
                role: Role::Assistant,
                content: vec![Block::ToolUse {
                    id: "c1".into(),
                    name: "read".into(),
                    input: json!({"path": "a"}),
                }],
            },
            Message {
                role: Role::User,
                content: vec![Block::ToolResult {
                    tool_use_id: "c1".into(),
                    content: "A".into(),
                    is_error: false,
                }],
            },
        ];
        let out = messages("sys", &msgs);
        assert_eq!(out[0], json!({"role": "system", "content": "sys"}));
        assert_eq!(out[1], json!({"role": "user", "content": "hi"}));
        assert_eq!(
            out[2]["tool_calls"][0]["function"]["arguments"],
            json!("{\"path\":\"a\"}")
        );
        assert_eq!(out[2]["content"], Value::Null);
        assert_eq!(
            out[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "A"})
        );
        assert_eq!(out.len(), 4);
    }
}
