//! Which model versions serve, and the atomic swap between them.
//!
//! The [`ModelManager`] turns what the repository holds into a routing
//! [`Snapshot`]: an immutable map from model to its ready versions, published
//! through one `ArcSwap`. The request path reads it with a single atomic load
//! and never takes a lock; all changes (a new version, a removed one, a
//! `load`/`unload` call) go through one reconcile task, one at a time.
//!
//! Swap sequence for a new version: verify the manifest → load and warm up
//! its sessions (on a blocking thread) → compare its signature with the
//! version serving now → publish a new snapshot that includes it. A removed
//! version is left out of the next snapshot; requests already holding its
//! `Arc<ModelExecutor>` finish, and when the last one drops its workers exit.
//! A version that fails to load is recorded with its reason in the repository
//! index, and the versions serving before keep serving.
//!
//! A model's traffic policy (`policy.toml` beside its `model.toml`: stable,
//! canary and shadow versions) is read on every reconcile and put in the
//! snapshot only when it checks out whole against the versions loaded
//! ([`policy::validate`]); otherwise the policy in effect stays, and the
//! reason is kept in the snapshot. Changing it through the manager writes
//! the file (so every replica on the registry converges) and reconciles.
//!
//! With a registry on object storage ([`RegistryOptions`]) the repository is
//! its local cache: the bucket is polled and the cache rescanned when it
//! changed, and policy changes are written to the bucket first.

pub mod gate;
mod manager;
pub mod policy;
mod registry;
mod snapshot;

pub use manager::{ManagerOptions, ModelManager, PolicyChange, ServingError, session_options};
pub use registry::{RegistryHandle, RegistryOptions, RegistryStatus, revision_number};
pub use snapshot::{IndexEntry, ModelSnapshot, Snapshot, VersionState};
