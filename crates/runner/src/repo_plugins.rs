//! A repository's own plugins (the `[[plugins]]` of its recipe): started inside the
//! session's sandbox, in the checkout, once per sandbox, and kept for the session's later
//! prompts. A plugin that cannot start blocks every tool call (fail closed, as a policy
//! plugin that is down must).

use std::sync::Arc;

use async_trait::async_trait;
use hangar_agent::external::ProcessPlugin;
use hangar_agent::{Decision, Plugin, ToolCall};
use hangar_envd_client::EnvdClient;
use hangar_images::RecipePlugin;

/// The plugins of a repository's current image's recipe.
pub type PluginsForRepo = Arc<dyn Fn(&str) -> Vec<RecipePlugin> + Send + Sync>;

/// Starts `configured` in the sandbox behind `envd`, in `workdir`.
pub async fn start(
    configured: &[RecipePlugin],
    envd: &EnvdClient,
    workdir: &str,
) -> Vec<Arc<dyn Plugin>> {
    let mut started: Vec<Arc<dyn Plugin>> = Vec::with_capacity(configured.len());
    for p in configured {
        match ProcessPlugin::start_in_sandbox(envd, &p.command, workdir, p.timeout()).await {
            Ok(plugin) => started.push(Arc::new(plugin)),
            Err(e) => {
                tracing::warn!("a repository plugin could not start: {e}");
                started.push(Arc::new(Unavailable {
                    name: p.command.join(" "),
                    reason: e.to_string(),
                }));
            }
        }
    }
    started
}

/// A configured plugin that could not start: every tool call is blocked, saying why.
struct Unavailable {
    name: String,
    reason: String,
}

#[async_trait]
impl Plugin for Unavailable {
    fn name(&self) -> &str {
        &self.name
    }

    async fn before_tool(&self, _call: &ToolCall) -> Decision {
        Decision::Block(format!(
            "the repository's plugin could not start, so no tool may run: {}",
            self.reason
        ))
    }
}
