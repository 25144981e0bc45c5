//! The tool loop: send the conversation, stream the answer, run the tools it asks for
//! (through envd; reads side by side, writes in order), send their results, until the model ends its turn, the turn
//! budget is spent, or the prompt is stopped. Plugins see and may change every tool call.

use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::model::{Block, Message, ModelEvent, ModelRequest, Role, StopReason, Usage};
use crate::plugin::{Decision, ExtraTool, Plugin, ToolCall};
use crate::provider::{Provider, ProviderError};
use crate::tools::{MODEL_OUTPUT_LIMIT, ToolOutcome, Tools, is_read_only, truncate_for_model};

/// What the agent reports while it works, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentEvent {
    /// More of the model's text.
    TextDelta(String),
    /// A tool is about to run (after plugins had their say).
    ToolStarted {
        /// The call's id.
        id: String,
        /// The tool.
        name: String,
        /// Its arguments.
        input: Value,
    },
    /// Output of a running tool, as it comes.
    ToolOutput {
        /// The call's id.
        id: String,
        /// The bytes, as text.
        data: String,
    },
    /// A tool finished.
    ToolFinished {
        /// The call's id.
        id: String,
        /// The tool.
        name: String,
        /// Its whole output.
        output: String,
        /// True when it failed or was blocked.
        is_error: bool,
    },
    /// Token counts of the last model response.
    Usage(Usage),
}

/// How a prompt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The model ended its turn.
    Finished,
    /// It was stopped; the conversation is consistent (pending calls got a result).
    Stopped,
    /// It used up the turn budget.
    TurnLimit,
    /// The model stopped for another reason (e.g. max tokens).
    ModelStopped(StopReason),
}

/// Why a prompt failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The model request failed (after retries).
    #[error(transparent)]
    Model(#[from] ProviderError),
}

/// An agent: a model, the tools of one sandbox, and plugins.
pub struct Agent {
    provider: Provider,
    tools: Tools,
    plugins: Vec<Arc<dyn Plugin>>,
    extra_tools: Vec<Arc<dyn ExtraTool>>,
    system: String,
    /// Most tokens per model response.
    pub max_tokens: u32,
    /// Most model round trips per prompt.
    pub max_turns: usize,
    /// The model's context window in tokens; the conversation is compacted by summarising
    /// once a request used more than 80% of it.
    pub context_limit: u64,
}

/// Asked of the model when the conversation must shrink.
const SUMMARY_REQUEST: &str = "The conversation is getting long. Summarise it for yourself so the work can continue \
from the summary alone: the task and who asked, decisions made, files read and changed (with paths), \
commands run and their results, what is left to do. Be complete but terse.";

impl Agent {
    /// An agent with `system` as its system prompt.
    pub fn new(provider: Provider, tools: Tools, system: String) -> Agent {
        Agent {
            provider,
            tools,
            plugins: Vec::new(),
            extra_tools: Vec::new(),
            system,
            max_tokens: 8192,
            max_turns: 100,
            context_limit: 200_000,
        }
    }

    /// Adds a plugin; plugins run in the order added.
    pub fn with_plugin(mut self, plugin: Arc<dyn Plugin>) -> Agent {
        self.plugins.push(plugin);
        self
    }

    /// Offers the model another tool.
    pub fn with_tool(mut self, tool: Arc<dyn ExtraTool>) -> Agent {
        self.extra_tools.push(tool);
        self
    }

    fn extra(&self, name: &str) -> Option<&Arc<dyn ExtraTool>> {
        self.extra_tools.iter().find(|t| t.spec().name == name)
    }

    /// Runs one prompt to its end, appending to `conversation`; plugins hear it start and
    /// finish.
    pub async fn run(
        &self,
        conversation: &mut Vec<Message>,
        prompt: &str,
        events: &UnboundedSender<AgentEvent>,
        cancel: &CancellationToken,
    ) -> Result<Outcome, AgentError> {
        for plugin in &self.plugins {
            plugin
                .on_event(&serde_json::json!({"type": "prompt.started", "prompt": prompt}))
                .await;
        }
        let result = self.turns(conversation, prompt, events, cancel).await;
        let outcome = match &result {
            Ok(Outcome::Finished) => "done".to_string(),
            Ok(Outcome::Stopped) => "stopped".to_string(),
            Ok(Outcome::TurnLimit) => "turn_limit".to_string(),
            Ok(Outcome::ModelStopped(reason)) => format!("model_stopped: {reason:?}"),
            Err(e) => format!("failed: {e}"),
        };
        for plugin in &self.plugins {
            plugin
                .on_event(&serde_json::json!({"type": "prompt.finished", "outcome": outcome}))
                .await;
        }
        result
    }

    async fn turns(
        &self,
        conversation: &mut Vec<Message>,
        prompt: &str,
        events: &UnboundedSender<AgentEvent>,
        cancel: &CancellationToken,
    ) -> Result<Outcome, AgentError> {
        conversation.push(Message::text(Role::User, prompt));
        let mut system = self.system.clone();
        for plugin in &self.plugins {
            if let Some(extra) = plugin.context().await {
                system.push_str("\n\n");
                system.push_str(&extra);
            }
        }
        let mut last_input_tokens = 0u64;
        for _ in 0..self.max_turns {
            if last_input_tokens > self.context_limit / 10 * 8 {
                self.compact(conversation, &system, cancel).await?;
                last_input_tokens = 0;
            }
            let request = ModelRequest {
                system: system.clone(),
                messages: conversation.clone(),
                tools: Tools::specs()
                    .into_iter()
                    .chain(self.extra_tools.iter().map(|t| t.spec()))
                    .collect(),
                max_tokens: self.max_tokens,
            };
            let mut stream = self.provider.stream(&request);
            let mut text = String::new();
            let mut calls: Vec<(String, String, Result<Value, String>)> = Vec::new();
            let mut stop = None;
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => {
                        drop(stream);
                        if !text.is_empty() {
                            conversation.push(Message::text(Role::Assistant, text));
                        }
                        return Ok(Outcome::Stopped);
                    }
                    next = stream.next() => next,
                };
                match next {
                    Some(Ok(ModelEvent::TextDelta(t))) => {
                        let _ = events.send(AgentEvent::TextDelta(t.clone()));
                        text.push_str(&t);
                    }
                    Some(Ok(ModelEvent::ToolCall { id, name, input })) => {
                        calls.push((id, name, input))
                    }
                    Some(Ok(ModelEvent::Usage(u))) => {
                        last_input_tokens = u.input_tokens;
                        let _ = events.send(AgentEvent::Usage(u));
                    }
                    Some(Ok(ModelEvent::Done(reason))) => {
                        stop = Some(reason);
                        break;
                    }
                    Some(Ok(
                        ModelEvent::ToolCallStarted { .. } | ModelEvent::ToolCallDelta { .. },
                    )) => {}
                    Some(Err(e)) => {
                        if !text.is_empty() {
                            conversation.push(Message::text(Role::Assistant, text));
                        }
                        return Err(e.into());
                    }
                    None => break,
                }
            }
            let mut content = Vec::new();
            if !text.is_empty() {
                content.push(Block::Text { text });
            }
            for (id, name, input) in &calls {
                // A call whose arguments were malformed is kept with empty arguments, so the
                // conversation stays valid; its result tells the model what went wrong.
                let input = input
                    .clone()
                    .unwrap_or_else(|_| Value::Object(Default::default()));
                content.push(Block::ToolUse {
                    id: id.clone(),
                    name: name.clone(),
                    input,
                });
            }
            if !content.is_empty() {
                conversation.push(Message {
                    role: Role::Assistant,
                    content,
                });
            }
            if calls.is_empty() {
                return Ok(match stop {
                    Some(StopReason::EndTurn) | None => Outcome::Finished,
                    Some(other) => Outcome::ModelStopped(other),
                });
            }
            let results = tokio::select! {
                _ = cancel.cancelled() => None,
                results = self.run_calls(&calls, events) => Some(results),
            };
            let stopped = results.is_none();
            let results = results.unwrap_or_else(|| {
                calls
                    .iter()
                    .map(|_| ToolOutcome {
                        output: "stopped by the user before it finished".into(),
                        is_error: true,
                    })
                    .collect()
            });
            let blocks = calls
                .iter()
                .zip(results)
                .map(|((id, _, _), r)| Block::ToolResult {
                    tool_use_id: id.clone(),
                    content: truncate_for_model(&r.output, MODEL_OUTPUT_LIMIT),
                    is_error: r.is_error,
                })
                .collect();
            conversation.push(Message {
                role: Role::User,
                content: blocks,
            });
            if stopped {
                return Ok(Outcome::Stopped);
            }
        }
        Ok(Outcome::TurnLimit)
    }

    /// Replaces all but the last exchange (the assistant's tool calls and their results,
    /// which must stay paired) with the model's own summary, so the next request fits.
    async fn compact(
        &self,
        conversation: &mut Vec<Message>,
        system: &str,
        cancel: &CancellationToken,
    ) -> Result<(), AgentError> {
        let keep = if conversation.len() >= 3 { 2 } else { 0 };
        let split = conversation.len() - keep;
        let mut messages = conversation[..split].to_vec();
        // The summary request must follow an assistant turn or be merged into a user one.
        match messages.last_mut() {
            Some(m) if m.role == Role::User => m.content.push(Block::Text {
                text: SUMMARY_REQUEST.into(),
            }),
            _ => messages.push(Message::text(Role::User, SUMMARY_REQUEST)),
        }
        let request = ModelRequest {
            system: system.to_string(),
            messages,
            tools: Vec::new(),
            max_tokens: self.max_tokens,
        };
        let mut stream = self.provider.stream(&request);
        let mut summary = String::new();
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                next = stream.next() => next,
            };
            match next {
                Some(Ok(ModelEvent::TextDelta(t))) => summary.push_str(&t),
                Some(Ok(ModelEvent::Done(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
        let tail = conversation.split_off(split);
        conversation.clear();
        conversation.push(Message::text(
            Role::User,
            format!("Summary of the work so far:\n\n{summary}"),
        ));
        if tail.first().is_some_and(|m| m.role == Role::User) {
            // Keep alternation: fold the kept user turn into the summary turn.
            conversation[0]
                .content
                .extend(tail.into_iter().flat_map(|m| m.content));
        } else {
            conversation.extend(tail);
        }
        tracing::info!(messages = conversation.len(), "conversation compacted");
        Ok(())
    }

    /// Runs a response's tool calls in the order given; consecutive calls that only read
    /// run concurrently, a call that writes runs alone, so the model's order is respected.
    async fn run_calls(
        &self,
        calls: &[(String, String, Result<Value, String>)],
        events: &UnboundedSender<AgentEvent>,
    ) -> Vec<ToolOutcome> {
        let reads = |c: &(String, String, Result<Value, String>)| match self.extra(&c.1) {
            Some(tool) => tool.read_only(),
            None => c.2.as_ref().is_ok_and(|input| is_read_only(&c.1, input)),
        };
        let mut results = Vec::with_capacity(calls.len());
        let mut i = 0;
        while i < calls.len() {
            let end = if reads(&calls[i]) {
                i + calls[i..].iter().take_while(|c| reads(c)).count()
            } else {
                i + 1
            };
            let batch = calls[i..end]
                .iter()
                .map(|(id, name, input)| self.call(id, name, input, events));
            results.extend(futures_util::future::join_all(batch).await);
            i = end;
        }
        results
    }

    /// One tool call: plugins before, the tool, plugins after.
    async fn call(
        &self,
        id: &str,
        name: &str,
        input: &Result<Value, String>,
        events: &UnboundedSender<AgentEvent>,
    ) -> ToolOutcome {
        let finish = |outcome: ToolOutcome| {
            let _ = events.send(AgentEvent::ToolFinished {
                id: id.to_string(),
                name: name.to_string(),
                output: outcome.output.clone(),
                is_error: outcome.is_error,
            });
            outcome
        };
        let mut call = match input {
            Ok(v) => ToolCall {
                id: id.to_string(),
                name: name.to_string(),
                input: v.clone(),
            },
            Err(e) => {
                return finish(ToolOutcome {
                    output: e.clone(),
                    is_error: true,
                });
            }
        };
        for plugin in &self.plugins {
            match plugin.before_tool(&call).await {
                Decision::Allow => {}
                Decision::Block(reason) => {
                    return finish(ToolOutcome {
                        output: format!("blocked by plugin {}: {reason}", plugin.name()),
                        is_error: true,
                    });
                }
                Decision::Rewrite(input) => call.input = input,
            }
        }
        let _ = events.send(AgentEvent::ToolStarted {
            id: call.id.clone(),
            name: call.name.clone(),
            input: call.input.clone(),
        });
        let sink = events.clone();
        let call_id = call.id.clone();
        let mut on_output = move |bytes: &[u8]| {
            let _ = sink.send(AgentEvent::ToolOutput {
                id: call_id.clone(),
                data: String::from_utf8_lossy(bytes).into_owned(),
            });
        };
        let mut outcome = match self.extra(&call.name) {
            Some(tool) => tool.run(&call.input).await,
            None => {
                self.tools
                    .run(&call.name, &call.input, &mut on_output)
                    .await
            }
        };
        for plugin in &self.plugins {
            plugin.after_tool(&call, &mut outcome).await;
        }
        finish(outcome)
    }
}
