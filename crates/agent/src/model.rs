//! The conversation, provider-neutral: what the agent sends and what comes back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who said it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The person (and tool results, which answer the model's calls).
    User,
    /// The model.
    Assistant,
}

/// One part of a message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// The model asks for a tool to run.
    ToolUse {
        /// The call's id, echoed by its result.
        id: String,
        /// The tool.
        name: String,
        /// Its arguments.
        input: Value,
    },
    /// A tool's answer to a call.
    ToolResult {
        /// The call it answers.
        tool_use_id: String,
        /// What the tool returned (already truncated for the model).
        content: String,
        /// True when the tool failed.
        is_error: bool,
    },
}

/// One message of the conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: Vec<Block>,
}

impl Message {
    /// A plain-text message.
    pub fn text(role: Role, text: impl Into<String>) -> Message {
        Message {
            role,
            content: vec![Block::Text { text: text.into() }],
        }
    }
}

/// A tool the model may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Its name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of its arguments.
    pub input_schema: Value,
}

/// One request to a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRequest {
    /// System prompt.
    pub system: String,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Tools on offer.
    pub tools: Vec<ToolSpec>,
    /// Most tokens to generate.
    pub max_tokens: u32,
}

/// Token counts of one response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
}

/// Why the model stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It finished its turn.
    EndTurn,
    /// It wants tools to run.
    ToolUse,
    /// It hit `max_tokens`.
    MaxTokens,
    /// Anything else the provider said.
    Other(String),
}

impl StopReason {
    pub(crate) fn from_anthropic(s: &str) -> StopReason {
        match s {
            "end_turn" | "stop_sequence" => StopReason::EndTurn,
            "tool_use" => StopReason::ToolUse,
            "max_tokens" => StopReason::MaxTokens,
            other => StopReason::Other(other.to_string()),
        }
    }

    pub(crate) fn from_openai(s: &str) -> StopReason {
        match s {
            "stop" => StopReason::EndTurn,
            "tool_calls" | "function_call" => StopReason::ToolUse,
            "length" => StopReason::MaxTokens,
            other => StopReason::Other(other.to_string()),
        }
    }
}

/// What a streaming response yields, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelEvent {
    /// More of the model's text.
    TextDelta(String),
    /// A tool call has begun (its arguments follow as deltas).
    ToolCallStarted {
        /// Position of the call in this response.
        index: usize,
        /// Its id.
        id: String,
        /// The tool.
        name: String,
    },
    /// More of a tool call's JSON arguments.
    ToolCallDelta {
        /// Position of the call in this response.
        index: usize,
        /// A fragment of the arguments' JSON.
        json: String,
    },
    /// A tool call is complete. `input` is the parsed arguments, or the parse error when
    /// the model produced malformed JSON (the tool is then not run; the model is told).
    ToolCall {
        /// Its id.
        id: String,
        /// The tool.
        name: String,
        /// Its parsed arguments, or why they could not be parsed.
        input: Result<serde_json::Value, String>,
    },
    /// Token counts (may come more than once; later counts replace earlier ones).
    Usage(Usage),
    /// The response ended.
    Done(StopReason),
}
