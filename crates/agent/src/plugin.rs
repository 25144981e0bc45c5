//! Plugins: hooks around every tool call (`tool.execute.before`, `tool.execute.after`) and
//! context injection into the system prompt. Built-in plugins implement [`Plugin`] in Rust.

use async_trait::async_trait;
use serde_json::Value;

use crate::tools::ToolOutcome;

/// A tool call as plugins see it.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// The call's id.
    pub id: String,
    /// The tool.
    pub name: String,
    /// Its arguments.
    pub input: Value,
}

/// What `tool.execute.before` decides.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Run it as it is.
    Allow,
    /// Do not run it; the model is told this reason.
    Block(String),
    /// Run it with these arguments instead.
    Rewrite(Value),
}

/// A plugin. Every hook has a default that does nothing.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// Its name, shown when it blocks a call.
    fn name(&self) -> &str;

    /// `tool.execute.before`: allow, block or rewrite a call. It may also wait (e.g. until
    /// the checkout is synced) before answering.
    async fn before_tool(&self, _call: &ToolCall) -> Decision {
        Decision::Allow
    }

    /// `tool.execute.after`: inspect or amend a result.
    async fn after_tool(&self, _call: &ToolCall, _outcome: &mut ToolOutcome) {}

    /// Text added to the system prompt.
    async fn context(&self) -> Option<String> {
        None
    }
}
