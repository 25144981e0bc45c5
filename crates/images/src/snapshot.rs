//! Snapshots: a sandbox's writes sealed as one more layer on top of the image it was
//! started from, recorded as an image of its own; restoring is starting a sandbox from
//! that image.
//!
//! Two ways to take one: [`snapshot`] stops the sandbox and moves its upper directory into
//! the store (before a sandbox is stopped for good); [`live_snapshot`] pauses a running
//! sandbox with the cgroup freezer, seals a copy of its upper directory into a blob and
//! lets it go on (when an agent finishes a prompt). [`Snapshots`] is what the session
//! layer holds: take, restore, release.

use hangar_config::Config;
use hangar_sandbox::{LocalRuntime, Rootfs, Runtime, SandboxError, SandboxSpec, Status};
use std::sync::Arc;

use crate::layer::Owners;
use crate::store::{ImageInfo, ImageMeta, Store, StoreError};

/// Top-level names of an upper directory that are the sandbox's mount points, not its
/// writes.
const UPPER_EXCLUDE: &[&str] = &[".hangar"];

/// A snapshot that could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The sandbox could not be stopped, frozen or read.
    #[error("snapshot: {0}")]
    Sandbox(#[from] SandboxError),
    /// The store failed.
    #[error("snapshot: {0}")]
    Store(#[from] StoreError),
    /// The sandbox's filesystem is not made of this store's layers.
    #[error("snapshot: {0}")]
    NotAnImage(String),
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

fn owners(config: &Config) -> Owners {
    Owners::Shift {
        base: config.sandbox.uid_base,
        count: config.sandbox.uid_count,
    }
}

/// Records `layer` on top of `image` as a snapshot image (not current for any repository).
fn record(
    store: &Store,
    image: &ImageInfo,
    layer: crate::store::Layer,
) -> Result<ImageInfo, StoreError> {
    let mut layers = image.layers.clone();
    layers.push(layer);
    let meta = ImageMeta {
        snapshot_of: Some(image.digest.clone()),
        ..image.meta.clone()
    };
    store.add_image(&layers, &meta)
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
    let (s, owners) = (store.clone(), owners(config));
    let sealed = tokio::task::spawn_blocking(move || s.seal_upper(&upper, owners, UPPER_EXCLUDE))
        .await
        .map_err(|e| StoreError::Invalid(format!("seal task: {e}")))?;
    let (layer, _) = sealed?;
    let snap = record(store, image, layer)?;
    runtime.destroy(sandbox).await?;
    Ok(snap)
}

/// Snapshots a running sandbox and leaves it running with everything it had: its
/// processes are frozen while its upper directory is sealed into a blob (read in place,
/// nothing moved), then thawed. The image it continues is found from its filesystem
/// ([`image_of`]). The layer is unpacked when a sandbox is first restored from it.
///
/// No `sync` is needed first: overlayfs writes into the upper directory's own files, so
/// reading them sees every write made before the freeze, flushed to disk or not.
pub async fn live_snapshot(
    runtime: &LocalRuntime,
    store: &Store,
    config: &Config,
    sandbox: &str,
) -> Result<ImageInfo, SnapshotError> {
    let _lock = store.lock_shared()?;
    let sb = runtime.get(sandbox).await?;
    if sb.status != Status::Running {
        return Err(SandboxError::NotRunning {
            id: sandbox.to_string(),
            state: format!("{:?}", sb.status).to_lowercase(),
        }
        .into());
    }
    let image = image_of(store, &sb.spec.rootfs)?;
    let frozen = runtime.freeze(sandbox).await?;
    let (s, owners) = (store.clone(), owners(config));
    let upper = frozen.upper_dir().to_path_buf();
    let sealed = tokio::task::spawn_blocking(move || s.seal_blob(&upper, owners, UPPER_EXCLUDE))
        .await
        .map_err(|e| StoreError::Invalid(format!("seal task: {e}")));
    drop(frozen);
    let (layer, _) = sealed??;
    Ok(record(store, &image, layer)?)
}

/// The image a sandbox with filesystem `rootfs` was started from: the host's root alone
/// (an image with no layers), or the image in the store whose layers are exactly the
/// sandbox's. A sandbox restored from a snapshot that was released since still has its
/// layers in a later snapshot of the same line; the image is then that later one's
/// prefix.
pub fn image_of(store: &Store, rootfs: &Rootfs) -> Result<ImageInfo, SnapshotError> {
    let (layers, on_host) = match rootfs {
        Rootfs::HostRoot => {
            let host = ImageMeta {
                base: "host".into(),
                ..Default::default()
            };
            return Ok(store.add_image(&[], &host)?);
        }
        Rootfs::Layers { layers } => (layers, false),
        Rootfs::LayersOverHost { layers } => (layers, true),
    };
    let layer_dirs = store.root().join("layers");
    // Bottom first, as images list them.
    let mut digests = Vec::with_capacity(layers.len());
    for dir in layers.iter().rev() {
        let name = (dir.parent() == Some(layer_dirs.as_path()))
            .then(|| dir.file_name().and_then(|n| n.to_str()))
            .flatten();
        match name {
            Some(hex) => digests.push(format!("sha256:{hex}")),
            None => {
                return Err(SnapshotError::NotAnImage(format!(
                    "the sandbox's layer {} is not in the image store, so the sandbox cannot be snapshotted",
                    dir.display()
                )));
            }
        }
    }
    let same = |i: &ImageInfo| {
        i.on_host() == on_host
            && i.layers.len() >= digests.len()
            && i.layers.iter().zip(&digests).all(|(l, d)| l.digest == *d)
    };
    let images = store.images()?;
    let found = images
        .iter()
        .filter(|i| same(i))
        .min_by_key(|i| i.layers.len())
        .ok_or_else(|| {
            SnapshotError::NotAnImage(
                "no image in the store has the sandbox's layers, so it cannot be snapshotted"
                    .into(),
            )
        })?;
    if found.layers.len() == digests.len() {
        return Ok(found.clone());
    }
    let layers = found.layers[..digests.len()].to_vec();
    Ok(ImageInfo {
        size: layers.iter().map(|l| l.size).sum(),
        layers,
        ..found.clone()
    })
}

/// Snapshots for the session layer: take a live one after a prompt, start a sandbox from
/// one when a session's sandbox is gone, release the ones a newer snapshot replaced (gc
/// then removes what nothing else uses).
#[derive(Clone)]
pub struct Snapshots {
    runtime: Arc<LocalRuntime>,
    store: Store,
    config: Config,
}

impl Snapshots {
    /// Snapshots of `runtime`'s sandboxes kept in `store`.
    pub fn new(runtime: Arc<LocalRuntime>, store: Store, config: Config) -> Snapshots {
        Snapshots {
            runtime,
            store,
            config,
        }
    }

    /// Takes a live snapshot of a running sandbox (see [`live_snapshot`]).
    pub async fn take(&self, sandbox: &str) -> Result<ImageInfo, SnapshotError> {
        live_snapshot(&self.runtime, &self.store, &self.config, sandbox).await
    }

    /// `spec` with its filesystem replaced by snapshot `image`'s (unpacking its layers
    /// first where needed, each checked against its digest).
    pub fn restore_spec(&self, image: &str, spec: SandboxSpec) -> Result<SandboxSpec, StoreError> {
        let image = self.store.image(image)?;
        Ok(SandboxSpec {
            rootfs: rootfs(&self.store, &image)?,
            ..spec
        })
    }

    /// Forgets snapshot `image`: the next gc removes its layers unless another image or a
    /// sandbox still uses them. Refuses an image that is not a snapshot.
    pub fn release(&self, image: &str) -> Result<(), StoreError> {
        let info = self.store.image(image)?;
        if info.meta.snapshot_of.is_none() {
            return Err(StoreError::Conflict(format!(
                "image {} is not a snapshot",
                info.id
            )));
        }
        self.store.remove_image(&info.id)?;
        Ok(())
    }

    /// The image store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}
