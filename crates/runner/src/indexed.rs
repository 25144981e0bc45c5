//! A runtime that writes what its sandboxes serve into the index: each sandbox it creates
//! is recorded with its purpose (the warm pool's, or a session's), and its end when it is
//! destroyed. Index writes never fail a sandbox operation: they are logged.

use std::sync::Arc;

use hangar_envd_client::EnvdClient;
use hangar_sandbox::{Runtime, Sandbox, SandboxError, SandboxSpec, Usage};
use hangar_store::Store;

/// `inner`, with its creates and destroys recorded in the index under `purpose`.
pub struct IndexedRuntime {
    inner: Arc<dyn Runtime>,
    store: Arc<Store>,
    purpose: &'static str,
}

impl IndexedRuntime {
    /// Records the sandboxes `inner` creates as serving `purpose` (`pool`, `session`).
    pub fn new(inner: Arc<dyn Runtime>, store: Arc<Store>, purpose: &'static str) -> Self {
        IndexedRuntime {
            inner,
            store,
            purpose,
        }
    }
}

#[async_trait::async_trait]
impl Runtime for IndexedRuntime {
    async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, SandboxError> {
        let sb = self.inner.create(spec).await?;
        if let Err(e) = self.store.record_sandbox(&sb.id, self.purpose, None, None) {
            tracing::warn!(sandbox = %sb.id, "could not index the sandbox: {e}");
        }
        Ok(sb)
    }

    async fn envd(&self, id: &str) -> Result<EnvdClient, SandboxError> {
        self.inner.envd(id).await
    }

    async fn stop(&self, id: &str) -> Result<(), SandboxError> {
        self.inner.stop(id).await
    }

    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        let result = self.inner.destroy(id).await;
        if matches!(result, Ok(()) | Err(SandboxError::NotFound(_)))
            && let Err(e) = self.store.sandbox_ended(id)
        {
            tracing::warn!(sandbox = %id, "could not index the sandbox's end: {e}");
        }
        result
    }

    async fn get(&self, id: &str) -> Result<Sandbox, SandboxError> {
        self.inner.get(id).await
    }

    async fn list(&self) -> Result<Vec<Sandbox>, SandboxError> {
        self.inner.list().await
    }

    async fn stats(&self, id: &str) -> Result<Usage, SandboxError> {
        self.inner.stats(id).await
    }
}
