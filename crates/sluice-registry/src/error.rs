//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong reading, publishing to or watching a model
/// repository.
///
/// Every message names what failed and where (the path, the model, the
/// version), so it can be shown to an operator as it is. I/O failures keep the
/// underlying [`io::Error`] as their [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The repository root given to [`Repository::open`](crate::Repository::open) or
    /// [`watch`](crate::watch) does not exist.
    #[error("model repository {} does not exist", path.display())]
    RootMissing { path: PathBuf },

    /// The repository root exists but is a file (or something else), not a directory.
    #[error("model repository {} is not a directory", path.display())]
    RootNotDirectory { path: PathBuf },

    /// A filesystem operation failed. `op` says which ("read directory",
    /// "create", "fsync", ...), `path` on what.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A model name that is not `[A-Za-z0-9_.-]+` or that starts with `.`.
    #[error("invalid model name {name:?}: {reason}")]
    InvalidModelName { name: String, reason: &'static str },

    /// Version numbers start at 1.
    #[error("invalid version 0 for model {model:?}: versions are positive integers")]
    InvalidVersion { model: String },

    /// `publish --version N` for a version directory that already exists.
    #[error("version {version} of model {model:?} already exists at {}", path.display())]
    VersionExists {
        model: String,
        version: u64,
        path: PathBuf,
    },

    /// The version directory appeared between choosing the version and
    /// renaming the staged copy into place: someone else published at the same
    /// time. Nothing was changed; publishing again picks the next free version.
    #[error(
        "version {version} of model {model:?} appeared at {} while publishing (concurrent publish?); nothing was changed",
        path.display()
    )]
    PublishRace {
        model: String,
        version: u64,
        path: PathBuf,
    },

    /// The highest existing version is `u64::MAX`; there is no next one.
    #[error(
        "model {model:?} has no next version: version {} is the highest possible",
        u64::MAX
    )]
    VersionOverflow { model: String },

    /// A registry URL (`--models s3://...`) that cannot be used: unknown
    /// scheme, a scheme whose support is not built in, bad syntax or
    /// settings.
    #[error("cannot use the registry {url}: {reason}")]
    RemoteUrl { url: String, reason: String },

    /// An operation on the object store failed (unreachable, refused,
    /// credentials...). `location` is the object or prefix.
    #[error("cannot {op} {location}: {reason}")]
    Remote {
        op: &'static str,
        location: String,
        reason: String,
    },

    /// The file given to publish does not exist.
    #[error("cannot publish {}: no such file", path.display())]
    SourceMissing { path: PathBuf },

    /// The file given to publish is a directory or something else that is not a regular file.
    #[error("cannot publish {}: not a regular file", path.display())]
    SourceNotAFile { path: PathBuf },

    /// The file given to publish is empty (no ONNX model is zero bytes long).
    #[error("cannot publish {}: the file is empty", path.display())]
    SourceEmpty { path: PathBuf },

    /// `model.toml` does not parse, has an unknown key, or a value out of range.
    /// `reason` is the TOML/serde message (with line and column) or the range
    /// that was violated.
    #[error("invalid model config {}: {reason}", path.display())]
    InvalidConfig { path: PathBuf, reason: String },

    /// The version directory has no `model.onnx`.
    #[error("version {version} of model {model:?} has no model file: {} is missing", path.display())]
    ModelFileMissing {
        model: String,
        version: u64,
        path: PathBuf,
    },

    /// `manifest.json` is not valid JSON, or has missing or unknown fields.
    #[error("malformed manifest {}: {reason}", path.display())]
    ManifestMalformed { path: PathBuf, reason: String },

    /// `manifest.json` has a `schema` this version of Sluice does not know.
    #[error("manifest {} has schema {schema}, but only schema {} is supported", path.display(), crate::MANIFEST_SCHEMA)]
    ManifestSchema { path: PathBuf, schema: u32 },

    /// `manifest.json` was written for another model (copied from elsewhere?).
    #[error("manifest {} is for model {found:?}, but it lives in model {expected:?}", path.display())]
    ManifestWrongModel {
        path: PathBuf,
        expected: String,
        found: String,
    },

    /// `manifest.json` was written for another version (copied from elsewhere?).
    #[error("manifest {} is for version {found}, but it lives in version {expected}", path.display())]
    ManifestWrongVersion {
        path: PathBuf,
        expected: u64,
        found: u64,
    },

    /// `manifest.json` describes a file other than `model.onnx`.
    #[error("manifest {} describes file {found:?}, but the model file is always \"model.onnx\"", path.display())]
    ManifestWrongFile { path: PathBuf, found: String },

    /// `model.onnx` is not as long as the manifest says.
    #[error("{} says size_bytes {expected} but model.onnx is {actual} bytes", path.display())]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    /// `model.onnx` does not hash to what the manifest says: it was modified
    /// or replaced after publishing, or corrupted.
    #[error("{} says sha256 {expected} but model.onnx hashes to {actual}", path.display())]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    /// With trusted keys configured, a version whose signature is missing,
    /// by an untrusted key, not over its manifest, or malformed. `path` is
    /// the version's `manifest.sig`.
    #[error("{}: {reason}", path.display())]
    Signature {
        path: PathBuf,
        reason: crate::SignatureError,
    },

    /// A key file (a private key, a trusted-keys bundle) that cannot be
    /// used: not PEM, not Ed25519, the wrong kind of key.
    #[error("cannot use key file {}: {reason}", path.display())]
    KeyFile { path: PathBuf, reason: String },

    /// [`watch`](crate::watch) was asked to rescan every zero seconds.
    #[error("the rescan interval of the repository watcher must be positive")]
    ZeroRescanInterval,
}

impl RegistryError {
    /// Shorthand for [`RegistryError::Remote`].
    pub(crate) fn remote(
        op: &'static str,
        location: impl Into<String>,
        reason: impl std::fmt::Display,
    ) -> Self {
        RegistryError::Remote {
            op,
            location: location.into(),
            reason: reason.to_string(),
        }
    }

    /// Shorthand for [`RegistryError::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        RegistryError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
