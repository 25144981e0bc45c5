//! Sub-sessions: tools that let the agent start sessions of its own (research in another
//! repository, a large change split into several pull requests) and check on them. A
//! spawned session belongs to the prompt's author, like any other; the parent's log records
//! a `session.spawned` event.

use std::sync::Arc;

use async_trait::async_trait;
use hangar_agent::{ExtraTool, ToolOutcome, ToolSpec};
use hangar_protocol::session::{Author, EventBody};
use hangar_session::{EventSink, Sessions};
use hangar_store::Store;
use serde_json::{Value, json};

fn outcome(result: Result<String, String>) -> ToolOutcome {
    match result {
        Ok(output) => ToolOutcome {
            output,
            is_error: false,
        },
        Err(output) => ToolOutcome {
            output,
            is_error: true,
        },
    }
}

/// `spawn_session`: starts a session with a first prompt.
pub struct SpawnSession {
    pub(crate) sessions: Sessions,
    pub(crate) author: Author,
    pub(crate) parent: String,
    pub(crate) parent_events: EventSink,
    pub(crate) family: Arc<Family>,
}

/// Most sessions one session may spawn.
pub const MAX_CHILDREN: usize = 8;
/// Most levels of sessions spawning sessions.
pub const MAX_DEPTH: usize = 3;

/// Who spawned whom, so a runaway agent cannot spawn without bound. The links live in the
/// index (`sessions.parent_id`), so the limits hold across restarts and clients can list a
/// session's sub-sessions; spawns are serialised so two at once cannot both take the last
/// place.
#[derive(Default)]
pub struct Family {
    spawning: tokio::sync::Mutex<()>,
}

impl Family {
    /// The session that spawned `id`, if any.
    pub fn parent_of(store: &Store, id: &str) -> Option<String> {
        store.session(id).ok()?.parent_id
    }

    fn depth_of(store: &Store, id: &str) -> usize {
        let mut depth = 0;
        let mut at = id.to_string();
        while let Some(p) = Family::parent_of(store, &at) {
            depth += 1;
            at = p;
            if depth > MAX_DEPTH {
                break;
            }
        }
        depth
    }

    /// Whether the limits allow `parent` one more child.
    fn admit(store: &Store, parent: &str) -> Result<(), String> {
        if Family::depth_of(store, parent) + 1 > MAX_DEPTH {
            return Err(format!("sub-sessions may nest at most {MAX_DEPTH} deep"));
        }
        let children = store
            .session_children(parent)
            .map_err(|e| e.to_string())?
            .len();
        if children >= MAX_CHILDREN {
            return Err(format!(
                "a session may start at most {MAX_CHILDREN} sub-sessions"
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl ExtraTool for SpawnSession {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "spawn_session".into(),
            description: "Start another agent session on a repository with a first prompt; it runs in parallel. \
                          Use session_status and session_result to follow it."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "repo": {"type": "string"},
                    "prompt": {"type": "string"},
                    "title": {"type": "string"}
                },
                "required": ["repo", "prompt"],
                "additionalProperties": false
            }),
        }
    }

    async fn run(&self, input: &Value) -> ToolOutcome {
        outcome(
            async {
                let repo = input["repo"]
                    .as_str()
                    .filter(|r| !r.is_empty())
                    .ok_or("missing `repo`")?;
                let prompt = input["prompt"]
                    .as_str()
                    .filter(|p| !p.trim().is_empty())
                    .ok_or("missing `prompt`")?;
                let title = input["title"].as_str().unwrap_or(prompt);
                let title: String = title.chars().take(80).collect();
                let user = self
                    .author
                    .user_id
                    .ok_or("a guest (share link) cannot start sessions")?;
                let store = self.sessions.store();
                let child = {
                    let _one_at_a_time = self.family.spawning.lock().await;
                    Family::admit(store, &self.parent)?;
                    let child = self
                        .sessions
                        .create(user, repo, &title)
                        .await
                        .map_err(|e| e.to_string())?;
                    store
                        .set_session_parent(&child.id, &self.parent)
                        .map_err(|e| e.to_string())?;
                    child
                };
                self.sessions
                    .prompt(&child.id, self.author.clone(), prompt.to_string())
                    .await
                    .map_err(|e| e.to_string())?;
                self.parent_events
                    .emit(EventBody::SessionSpawned {
                        session_id: child.id.clone(),
                        repo: repo.to_string(),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(json!({"session_id": child.id, "repo": repo, "status": "started"}).to_string())
            }
            .await
            .map_err(|e: String| e),
        )
    }
}

/// `session_status` and `session_result`: what a session is doing, and what it answered.
pub struct SessionReport {
    pub(crate) sessions: Sessions,
    pub(crate) result: bool,
}

#[async_trait]
impl ExtraTool for SessionReport {
    fn spec(&self) -> ToolSpec {
        let (name, description) = if self.result {
            (
                "session_result",
                "The final answer of a session's last finished prompt.",
            )
        } else {
            (
                "session_status",
                "Whether a session is running, its queue, and how far it got.",
            )
        };
        ToolSpec {
            name: name.into(),
            description: description.into(),
            input_schema: json!({
                "type": "object",
                "properties": {"session_id": {"type": "string"}},
                "required": ["session_id"],
                "additionalProperties": false
            }),
        }
    }

    fn read_only(&self) -> bool {
        true
    }

    async fn run(&self, input: &Value) -> ToolOutcome {
        outcome(
            async {
                let id = input["session_id"].as_str().ok_or("missing `session_id`")?;
                let info = self.sessions.info(id).await.map_err(|e| e.to_string())?;
                if !self.result {
                    return Ok(json!({
                        "session_id": id,
                        "status": info.status.as_str(),
                        "running_prompt": info.running.as_ref().map(|p| p.id),
                        "queued": info.queue.len(),
                        "events": info.last_seq,
                    })
                    .to_string());
                }
                // The model's text of the last finished prompt.
                let events = self
                    .sessions
                    .events(id, 0, hangar_session::MAX_EVENTS_PAGE)
                    .await
                    .map_err(|e| e.to_string())?;
                let parsed: Vec<Value> = events
                    .iter()
                    .filter_map(|e| serde_json::from_str(&e.json).ok())
                    .collect();
                let Some(finished) = parsed.iter().rev().find(|e| e["type"] == "prompt.finished")
                else {
                    return Ok(format!(
                        "session {id} has not finished a prompt yet (status: {})",
                        info.status.as_str()
                    ));
                };
                let prompt_id = finished["data"]["prompt_id"].clone();
                let text: String = parsed
                    .iter()
                    .filter(|e| e["type"] == "model.delta" && e["data"]["prompt_id"] == prompt_id)
                    .filter_map(|e| e["data"]["text"].as_str())
                    .collect();
                Ok(json!({
                    "session_id": id,
                    "outcome": finished["data"]["outcome"],
                    "answer": text,
                })
                .to_string())
            }
            .await
            .map_err(|e: String| e),
        )
    }
}
