//! The Anthropic Messages API, streaming
//! (<https://docs.anthropic.com/en/api/messages-streaming>): `message_start`,
//! `content_block_start|delta|stop` (text and `tool_use` blocks, arguments as
//! `input_json_delta`), `message_delta` (stop reason, usage), `message_stop`, `ping`, `error`.

use std::collections::HashMap;

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{Failure, Provider, ProviderError, Sink, open_events};
use crate::model::{ModelEvent, ModelRequest, StopReason, Usage};

const API_VERSION: &str = "2023-06-01";

pub(super) fn body(model: &str, req: &ModelRequest) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": req.max_tokens,
        "messages": req.messages,
        "stream": true,
    });
    if !req.system.is_empty() {
        body["system"] = json!(req.system);
    }
    if !req.tools.is_empty() {
        body["tools"] = json!(req.tools);
    }
    body
}

struct ToolBlock {
    id: String,
    name: String,
    json: String,
}

pub(super) async fn attempt(p: &Provider, req: &ModelRequest, sink: &Sink) -> Result<(), Failure> {
    let url = format!("{}/v1/messages", p.config.base_url.trim_end_matches('/'));
    let mut headers = vec![("anthropic-version", API_VERSION.to_string())];
    if let Some(key) = &p.config.api_key {
        headers.push(("x-api-key", key.clone()));
    }
    let mut events = open_events(p, &url, &headers, &body(&p.config.model, req)).await?;
    let mut sent = false;
    let fail = |error: ProviderError, sent: bool| Failure {
        error,
        after_events: sent,
    };
    let mut tools: HashMap<usize, ToolBlock> = HashMap::new();
    let mut usage = Usage::default();
    let mut stop: Option<StopReason> = None;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| fail(ProviderError::Incomplete(e), sent))?;
        let data: Value = serde_json::from_str(&event.data).map_err(|e| {
            fail(
                ProviderError::Protocol(format!("{} event is not JSON: {e}", event.event)),
                sent,
            )
        })?;
        let kind = data["type"].as_str().unwrap_or(event.event.as_str());
        let index = data["index"].as_u64().unwrap_or(0) as usize;
        match kind {
            "message_start" => {
                usage.input_tokens = data
                    .pointer("/message/usage/input_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
            }
            "content_block_start" => {
                let block = &data["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") => {
                        let id = block["id"].as_str().unwrap_or_default().to_string();
                        let name = block["name"].as_str().unwrap_or_default().to_string();
                        sink.send(ModelEvent::ToolCallStarted {
                            index,
                            id: id.clone(),
                            name: name.clone(),
                        })
                        .await;
                        sent = true;
                        tools.insert(
                            index,
                            ToolBlock {
                                id,
                                name,
                                json: String::new(),
                            },
                        );
                    }
                    Some("text") => {
                        if let Some(text) = block["text"].as_str().filter(|t| !t.is_empty()) {
                            sink.send(ModelEvent::TextDelta(text.to_string())).await;
                            sent = true;
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        let text = delta["text"].as_str().unwrap_or_default().to_string();
                        sink.send(ModelEvent::TextDelta(text)).await;
                        sent = true;
                    }
                    Some("input_json_delta") => {
                        let part = delta["partial_json"].as_str().unwrap_or_default();
                        if let Some(tool) = tools.get_mut(&index) {
                            tool.json.push_str(part);
                        }
                        sink.send(ModelEvent::ToolCallDelta {
                            index,
                            json: part.to_string(),
                        })
                        .await;
                        sent = true;
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                if let Some(tool) = tools.remove(&index) {
                    let input = parse_arguments(&tool.json);
                    sink.send(ModelEvent::ToolCall {
                        id: tool.id,
                        name: tool.name,
                        input,
                    })
                    .await;
                    sent = true;
                }
            }
            "message_delta" => {
                if let Some(reason) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    stop = Some(StopReason::from_anthropic(reason));
                }
                if let Some(out) = data.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    usage.output_tokens = out;
                }
                sink.send(ModelEvent::Usage(usage)).await;
                sent = true;
            }
            "message_stop" => {
                sink.send(ModelEvent::Done(stop.unwrap_or(StopReason::EndTurn)))
                    .await;
                return Ok(());
            }
            "error" => {
                let kind = data
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                let message = data
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                return Err(fail(
                    ProviderError::Stream {
                        kind: kind.to_string(),
                        message: message.to_string(),
                    },
                    sent,
                ));
            }
            // `ping`, and event types added later: ignored, as the API asks.
            _ => {}
        }
    }
    Err(fail(
        ProviderError::Incomplete("the stream ended before message_stop".into()),
        sent,
    ))
}

/// A tool call's accumulated argument JSON; an empty string means no arguments.
pub(super) fn parse_arguments(json: &str) -> Result<Value, String> {
    if json.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(json)
        .map_err(|e| format!("the tool arguments are not valid JSON ({e}): {json}"))
}
