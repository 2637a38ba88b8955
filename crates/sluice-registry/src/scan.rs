//! Listing the repository: [`Repository`], [`Repository::scan`] and what it returns.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use tracing::{debug, warn};

use crate::{ModelConfig, RegistryError};

/// The file name of a model's settings, in the model directory.
pub const CONFIG_FILE: &str = "model.toml";
/// The file name of the ONNX model, in each version directory.
pub const MODEL_FILE: &str = "model.onnx";
/// The file name of the manifest written by `publish`, in each version directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// A model repository on disk, laid out as Triton lays it out:
///
/// ```text
/// <root>/
///   <model>/            name: [A-Za-z0-9_.-]+, not starting with '.'
///     model.toml        optional, see ModelConfig
///     <version>/        positive integer, canonical decimal ("3", not "03")
///       model.onnx
///       manifest.json   optional, written by publish
/// ```
///
/// Anything else (hidden directories such as the `.tmp-publish-*` staging
/// directories, files next to model directories, `v2/`, `007/`) is ignored.
/// A `Repository` holds only the root path; every [`scan`](Repository::scan)
/// reads the disk afresh.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
}

impl Repository {
    /// Opens the repository at `root`, which must exist and be a directory
    /// (symbolic links to one are fine). Nothing else is checked: an empty
    /// directory is an empty repository.
    pub fn open(root: impl Into<PathBuf>) -> Result<Repository, RegistryError> {
        let root = root.into();
        check_root(&root)?;
        Ok(Repository { root })
    }

    /// The root directory, as given to [`open`](Repository::open).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of `model` (which may not exist).
    pub fn model_dir(&self, model: &str) -> PathBuf {
        self.root.join(model)
    }

    /// Lists models and versions.
    ///
    /// Cheap enough to call every few seconds: it lists directories, stats
    /// `model.onnx`/`manifest.json` and reads the small `model.toml` files,
    /// but never reads or hashes a model (that is [`verify`](crate::verify)).
    ///
    /// Only a failure to list the root itself is an error. A model whose
    /// `model.toml` is invalid is still listed, with the reason in
    /// [`ModelEntry::config`], so the caller can report it and keep serving
    /// what it has. Directories that vanish while scanning (a model being
    /// deleted) are skipped; ones that cannot be read are skipped with a
    /// warning.
    pub fn scan(&self) -> Result<RepositoryScan, RegistryError> {
        let entries = fs::read_dir(&self.root)
            .map_err(|e| RegistryError::io("read directory", &self.root, e))?;
        let mut models = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| RegistryError::io("read directory", &self.root, e))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                debug!(path = %path.display(), "ignoring entry with a non-UTF-8 name in the model repository");
                continue;
            };
            if let Err(e) = validate_model_name(&name) {
                debug!(path = %path.display(), "ignoring entry in the model repository: {e}");
                continue;
            }
            match fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    debug!(path = %path.display(), "ignoring file in the model repository: models are directories");
                    continue;
                }
                Err(e) => {
                    skip_vanished(&path, &e);
                    continue;
                }
            }
            match scan_model(name.clone(), path.clone()) {
                Ok(model) => {
                    models.insert(name, model);
                }
                Err(e) => skip_vanished(&path, &e),
            }
        }
        Ok(RepositoryScan { models })
    }
}

pub(crate) fn check_root(root: &Path) -> Result<(), RegistryError> {
    match fs::metadata(root) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(RegistryError::RootNotDirectory {
            path: root.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(RegistryError::RootMissing {
            path: root.to_owned(),
        }),
        Err(e) => Err(RegistryError::io("open model repository", root, e)),
    }
}

/// Logs a directory that could not be read during a scan: quietly if it was
/// deleted meanwhile, as a warning otherwise.
fn skip_vanished(path: &Path, e: &io::Error) {
    if e.kind() == io::ErrorKind::NotFound {
        debug!(path = %path.display(), "skipping {}: removed while scanning", path.display());
    } else {
        warn!(path = %path.display(), "skipping {}: {e}", path.display());
    }
}

fn scan_model(name: String, dir: PathBuf) -> io::Result<ModelEntry> {
    let entries = fs::read_dir(&dir)?;
    let config_path = dir.join(CONFIG_FILE);
    let config = match ModelConfig::load(&config_path) {
        Ok(config) => Ok(config),
        Err(RegistryError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(ModelConfig::default())
        }
        Err(e) => Err(e.to_string()),
    };
    let mut versions = BTreeMap::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let file_name = entry.file_name();
        let Some(version) = file_name.to_str().and_then(parse_version) else {
            if file_name != CONFIG_FILE {
                debug!(path = %path.display(), "ignoring entry in model {name:?}: not a version directory");
            }
            continue;
        };
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                debug!(path = %path.display(), "ignoring file in model {name:?}: versions are directories");
                continue;
            }
            Err(e) => {
                skip_vanished(&path, &e);
                continue;
            }
        }
        versions.insert(version, VersionEntry::stat(version, path));
    }
    Ok(ModelEntry {
        name,
        dir,
        config,
        versions,
    })
}

/// What [`Repository::scan`] found: every model, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct RepositoryScan {
    pub models: BTreeMap<String, ModelEntry>,
}

/// One model directory.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// The directory name, which is the model name.
    pub name: String,
    /// `<root>/<name>`.
    pub dir: PathBuf,
    /// The parsed `model.toml`, or the defaults if there is none.
    /// `Err(message)` when `model.toml` exists but is unreadable or invalid;
    /// the message names the file and says what is wrong (e.g. the unknown
    /// key, with line and column).
    pub config: Result<ModelConfig, String>,
    /// The version directories, by number.
    pub versions: BTreeMap<u64, VersionEntry>,
}

impl ModelEntry {
    /// The version numbers on disk, for [`ModelConfig::selected_versions`].
    pub fn available_versions(&self) -> BTreeSet<u64> {
        self.versions.keys().copied().collect()
    }
}

/// One version directory, as seen by a scan (nothing has been read yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionEntry {
    pub version: u64,
    /// `<root>/<model>/<version>`.
    pub dir: PathBuf,
    /// `dir/model.onnx`, whether or not it exists.
    pub model_file: PathBuf,
    /// Whether `model_file` exists and is a regular file.
    pub model_present: bool,
    /// `Some(dir/manifest.json)` if it exists.
    pub manifest_file: Option<PathBuf>,
    /// Changes whenever `model.onnx` or `manifest.json` is replaced or
    /// modified, so a caller comparing two scans can reload a version whose
    /// files changed in place.
    pub fingerprint: Fingerprint,
}

impl VersionEntry {
    /// Stats the files of the version directory `dir`.
    pub(crate) fn stat(version: u64, dir: PathBuf) -> VersionEntry {
        let model_file = dir.join(MODEL_FILE);
        let manifest_path = dir.join(MANIFEST_FILE);
        let model_meta = fs::metadata(&model_file).ok().filter(Metadata::is_file);
        let manifest_meta = fs::metadata(&manifest_path).ok();
        let signature_meta = fs::metadata(dir.join(crate::SIGNATURE_FILE)).ok();
        VersionEntry {
            version,
            model_present: model_meta.is_some(),
            manifest_file: manifest_meta.as_ref().map(|_| manifest_path),
            fingerprint: Fingerprint {
                model: model_meta.as_ref().map(FileStamp::of),
                manifest: manifest_meta.as_ref().map(FileStamp::of),
                signature: signature_meta.as_ref().map(FileStamp::of),
            },
            model_file,
            dir,
        }
    }
}

/// A cheap identity of a version's files, taken from their metadata only.
///
/// Two scans give equal fingerprints for a version unless `model.onnx`,
/// `manifest.json` or `manifest.sig` appeared, disappeared, was replaced (new inode, as with
/// `mv` or an editor's save) or was written to (size, modification or change
/// time). Comparing fingerprints is how a caller notices a version that was
/// changed in place without hashing anything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Fingerprint {
    model: Option<FileStamp>,
    manifest: Option<FileStamp>,
    signature: Option<FileStamp>,
}

/// The metadata of one file that changes when its content does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileStamp {
    size: u64,
    /// Modification time, nanoseconds since the Unix epoch (negative before).
    mtime_ns: i128,
    /// Status change time in nanoseconds (Unix only): changes even when a
    /// writer restores the modification time.
    ctime_ns: i128,
    device: u64,
    inode: u64,
}

impl FileStamp {
    fn of(meta: &Metadata) -> FileStamp {
        let mtime_ns = match meta.modified() {
            Ok(t) => match t.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_nanos() as i128,
                Err(e) => -(e.duration().as_nanos() as i128),
            },
            Err(_) => 0,
        };
        #[cfg(unix)]
        let (ctime_ns, device, inode) = {
            use std::os::unix::fs::MetadataExt;
            (
                i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
                meta.dev(),
                meta.ino(),
            )
        };
        #[cfg(not(unix))]
        let (ctime_ns, device, inode) = (0, 0, 0);
        FileStamp {
            size: meta.len(),
            mtime_ns,
            ctime_ns,
            device,
            inode,
        }
    }
}

/// Checks a model name: `[A-Za-z0-9_.-]+`, not starting with `.`.
///
/// The name is a directory name and part of URLs (`/v2/models/<name>`), so
/// nothing else is allowed.
pub fn validate_model_name(name: &str) -> Result<(), RegistryError> {
    let reason = if name.is_empty() {
        "the name is empty"
    } else if name.starts_with('.') {
        "it starts with '.'"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        "only ASCII letters, digits, '_', '.' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(RegistryError::InvalidModelName {
        name: name.to_owned(),
        reason,
    })
}

/// Parses a version directory name: a positive integer in canonical decimal
/// (`"3"`, not `"03"`, `"+3"`, `"0"` or `" 3"`). `None` for anything else.
pub fn parse_version(name: &str) -> Option<u64> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes[0] == b'0' || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    name.parse().ok()
}
