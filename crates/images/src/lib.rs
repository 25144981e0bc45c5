//! Images: the recipe format (`hangar.toml`), the layer store (an OCI image layout with
//! an unpacked directory per layer for overlayfs), sealing a sandbox's writes into a
//! layer, and the builder that turns a repository at a commit into an image, step by
//! step, reusing cached layers.
//!
//! Builds run in sandboxes of `hangar-sandbox` and reach them only through envd; this
//! crate never makes namespace or mount calls. Git runs on the host (`git` CLI) with
//! credentials handed over through the environment only, so tokens never enter a
//! sandbox, a layer or a log.

pub mod build;
pub mod gc;
pub mod git;
pub mod layer;
pub mod recipe;
pub mod scheduler;
pub mod snapshot;
pub mod store;

pub use build::{BuildError, BuildEvent, BuildOutcome, BuildRequest, Builder};
pub use gc::{GcError, collect_garbage};
pub use git::{ConfiguredCredentials, Credentials, GitCredential, NoCredentials};
pub use layer::Owners;
pub use recipe::{Base, Recipe, RecipeError, RecipePlugin};
pub use scheduler::{ImageEvent, Schedule, Scheduler, Unchanged, Wanted};
pub use snapshot::{SnapshotError, Snapshots, live_snapshot, rootfs, snapshot};
pub use store::{GcReport, ImageInfo, ImageMeta, Layer, Store, StoreError};
