//! Garbage collection of the layer store with the sandboxes in mind: what no image
//! references goes, except the layers existing sandboxes run on, whatever references them.

use std::path::PathBuf;

use hangar_sandbox::{Rootfs, Runtime, SandboxError};

use crate::store::{GcReport, Store, StoreError};

/// Why a collection did not run.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The sandboxes could not be listed, so nothing was removed.
    #[error("gc: listing sandboxes: {0}")]
    Sandboxes(#[from] SandboxError),
    /// The store failed.
    #[error("gc: {0}")]
    Store(#[from] StoreError),
}

/// Removes blobs, unpacked layers and cache entries that no image in `store` references
/// and no sandbox of `runtime` runs on (the layers of removed images and released
/// snapshots). Waits for running builds and snapshots (the store's lock).
pub async fn collect_garbage(store: &Store, runtime: &dyn Runtime) -> Result<GcReport, GcError> {
    let in_use: Vec<PathBuf> = runtime
        .list()
        .await?
        .into_iter()
        .flat_map(|sb| match sb.spec.rootfs {
            Rootfs::Layers { layers } | Rootfs::LayersOverHost { layers } => layers,
            _ => Vec::new(),
        })
        .collect();
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || store.gc(&in_use))
        .await
        .map_err(|e| StoreError::Invalid(format!("gc task: {e}")))??)
}
