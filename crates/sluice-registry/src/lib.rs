//! The on-disk model repository of Sluice.
//!
//! A repository is a directory laid out as Triton lays it out:
//!
//! ```text
//! <root>/
//!   <model>/              name: [A-Za-z0-9_.-]+, not starting with '.'
//!     model.toml          optional per-model settings (ModelConfig)
//!     <version>/          positive integer, canonical decimal
//!       model.onnx
//!       manifest.json     optional; written by `publish`
//! ```
//!
//! This crate reads and writes that layout and nothing more; loading models
//! into ONNX Runtime and serving them is `sluice-runtime`'s and
//! `sluice-server`'s job. What it offers:
//!
//! * [`Repository::scan`]: a cheap listing (directory reads and `stat`s, no
//!   hashing) of models, their [`ModelConfig`] and versions, with a
//!   [`Fingerprint`] per version so a caller can tell which versions changed
//!   between two scans;
//! * [`verify`]: hashes a version's `model.onnx` and checks it against its
//!   [`Manifest`];
//! * [`Repository::publish`]: adds a version atomically (staged in a hidden
//!   directory, renamed into place), with a manifest recording its SHA-256 and
//!   lineage;
//! * [`RemoteRegistry`]: the same layout on object storage (`s3://...`),
//!   mirrored into a local cache directory that is then read as above;
//! * [`watch`]: wakes the caller when something under the root changed
//!   (debounced) or a periodic rescan is due.
//!
//! A serving loop looks like this:
//!
//! ```no_run
//! # async fn serve() -> Result<(), sluice_registry::RegistryError> {
//! use std::time::Duration;
//! use sluice_registry::{Repository, verify};
//!
//! let repo = Repository::open("/models")?;
//! let mut watcher = repo.watch(Duration::from_secs(5))?;
//! loop {
//!     let scan = repo.scan()?;
//!     for (name, model) in &scan.models {
//!         let Ok(config) = &model.config else { continue };
//!         for version in config.selected_versions(&model.available_versions()) {
//!             let entry = &model.versions[&version];
//!             // Compare entry.fingerprint with the one last loaded; if it
//!             // differs, verify(entry, name)? and (re)load entry.model_file.
//!             # let _ = (entry, name);
//!         }
//!     }
//!     watcher.changed().await;
//! }
//! # }
//! ```

mod config;
mod error;
mod files;
mod manifest;
mod publish;
mod remote;
mod scan;
mod signing;
mod watch;

/// `[safety]` of `model.toml`: the limits of the model safety check.
pub use config::Safety;
pub use config::{
    Capture, CaptureWhat, DynamicBatching, ExecutionProvider, GraphOptimization, MAX_CAPTURE_QUEUE,
    MAX_INSTANCES, ModelConfig, Task, Validation, VersionPolicy,
};
pub use error::RegistryError;
pub use files::{write_atomically, write_new};
pub use manifest::{
    MANIFEST_SCHEMA, Manifest, ValidationRecord, Verification, format_rfc3339, hash_file,
    parse_manifest, verify, verify_signed,
};
pub use publish::{PUBLISH_TEMP_PREFIX, Published};
pub use remote::{AUDIT_FILE, POLICY_FILE, RemoteRegistry, SyncReport, is_remote};
pub use scan::{
    CONFIG_FILE, Fingerprint, MANIFEST_FILE, MODEL_FILE, ModelEntry, Repository, RepositoryScan,
    VersionEntry, parse_version, validate_model_name,
};
pub use signing::{
    PrivateKey, SIGNATURE_ALGORITHM, SIGNATURE_FILE, SIGNATURE_SCHEMA, SignatureError, Signer,
    TrustedKeys, key_id, sign_manifest_file, sign_manifest_with,
};
pub use watch::{DEBOUNCE, MAX_DEBOUNCE_DELAY, RepositoryWatcher, Wake, watch};
