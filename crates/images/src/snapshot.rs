//! Snapshots: a sandbox's writes sealed as one more layer on top of the image it was
//! started from, recorded as an image of its own; restoring is starting a sandbox from
//! that image. The session layer calls [`snapshot`] when an agent finishes a prompt and
//! before a sandbox is stopped, and [`rootfs`] to restore.

use hangar_config::Config;
use hangar_sandbox::{LocalRuntime, Rootfs, Runtime, SandboxError};

use crate::layer::Owners;
use crate::store::{ImageInfo, ImageMeta, Store, StoreError};

/// A snapshot that could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The sandbox could not be stopped or read.
    #[error("snapshot: {0}")]
    Sandbox(#[from] SandboxError),
    /// The store failed.
    #[error("snapshot: {0}")]
    Store(#[from] StoreError),
}

/// The root filesystem of a sandbox started from `image`: its layers unpacked (once),
/// top-most first, over the host's root for images built on the host base.
pub fn rootfs(store: &Store, image: &ImageInfo) -> Result<Rootfs, StoreError> {
    let mut layers = Vec::with_capacity(image.layers.len());
    for l in image.layers.iter().rev() {
        layers.push(store.layer_dir(&l.digest)?);
    }
    Ok(if image.on_host() {
        Rootfs::LayersOverHost { layers }
    } else {
        Rootfs::Layers { layers }
    })
}

/// Stops the sandbox, seals what it wrote into a layer on top of `image` (the image it
/// was started from) and destroys it. Returns the snapshot image, whose meta says which
/// image it continues; it is not made current for the repository.
pub async fn snapshot(
    runtime: &LocalRuntime,
    store: &Store,
    config: &Config,
    sandbox: &str,
    image: &ImageInfo,
) -> Result<ImageInfo, SnapshotError> {
    let _lock = store.lock_shared()?;
    runtime.stop(sandbox).await?;
    let upper = runtime.upper_dir(sandbox)?;
    let owners = Owners::Shift {
        base: config.sandbox.uid_base,
        count: config.sandbox.uid_count,
    };
    let s = store.clone();
    let sealed = tokio::task::spawn_blocking(move || s.seal_upper(&upper, owners, &[".hangar"]))
        .await
        .map_err(|e| StoreError::Invalid(format!("seal task: {e}")))?;
    let (layer, _) = sealed?;
    let mut layers = image.layers.clone();
    layers.push(layer);
    let meta = ImageMeta {
        snapshot_of: Some(image.digest.clone()),
        ..image.meta.clone()
    };
    let snap = store.add_image(&layers, &meta)?;
    runtime.destroy(sandbox).await?;
    Ok(snap)
}
