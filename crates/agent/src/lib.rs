//! The agent runtime: it runs in the control plane, never in a sandbox.
//!
//! - [`provider`]: streaming clients for the Anthropic Messages API and OpenAI-compatible
//!   Chat Completions (OpenAI, Ollama, vLLM, llama.cpp's server), with retries and
//!   cancellation. Credentials stay here: they are never logged and never reach a sandbox.
//! - [`model`]: the conversation as the agent keeps it, provider-neutral.
//! - [`tools`]: the agent's tools, run inside the sandbox through envd.
//! - [`agent`]: the tool loop; [`plugin`]: hooks around every tool call; [`external`]:
//!   plugins as processes speaking newline-delimited JSON.
//!
//! The agent's tools run inside the sandbox through envd; sessions drive the loop and
//! persist what it produces.

pub mod agent;
pub mod external;
pub mod model;
pub mod plugin;
pub mod provider;
pub mod tools;

pub use agent::{Agent, AgentError, AgentEvent, Outcome};
pub use model::{Block, Message, ModelEvent, ModelRequest, Role, StopReason, ToolSpec, Usage};
pub use plugin::{Decision, ExtraTool, Plugin, RepoContext, SyncGate, SyncState, ToolCall};
pub use provider::{Provider, ProviderConfig, ProviderError, ProviderKind};
pub use tools::{ToolOutcome, Tools};
