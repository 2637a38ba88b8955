//! [`Repository::publish`]: adding a version atomically.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use crate::files::write_new;
use crate::manifest::{CopyError, format_rfc3339, hash_reader};
use crate::{
    MANIFEST_FILE, MANIFEST_SCHEMA, MODEL_FILE, Manifest, PrivateKey, RegistryError, Repository,
    SIGNATURE_FILE, parse_version, validate_model_name,
};

/// The prefix of the staging directories `publish` creates inside a model
/// directory. Scans ignore them (they are hidden and not numeric).
pub const PUBLISH_TEMP_PREFIX: &str = ".tmp-publish-";

/// What [`Repository::publish`] created.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub model: String,
    pub version: u64,
    /// `<root>/<model>/<version>`.
    pub dir: PathBuf,
    /// The manifest written next to `model.onnx`.
    pub manifest: Manifest,
}

impl Repository {
    /// Publishes `file` as a new version of `model`.
    ///
    /// The version is `version` if given (an error if that version directory
    /// exists already), else one more than the highest existing version
    /// (1 for a new model). `lineage` is stored in the manifest as given.
    ///
    /// The version appears atomically: the file is copied (and hashed in the
    /// same pass) into a hidden staging directory
    /// `<root>/<model>/.tmp-publish-<pid>-<nanos>/`, flushed to disk, then
    /// `manifest.json` is written and flushed, and only then is the staging
    /// directory renamed to `<root>/<model>/<version>/`. A watcher or a
    /// concurrent scan therefore sees either no version or a complete one, and
    /// a crash leaves at most a hidden staging directory, which scans ignore.
    /// On any error the staging directory is removed.
    ///
    /// Errors: an invalid model name, a `file` that is missing, not a regular
    /// file or empty, an existing version, a version that appeared during the
    /// publish ([`PublishRace`](RegistryError::PublishRace)), or I/O.
    pub fn publish(
        &self,
        model: &str,
        file: &Path,
        version: Option<u64>,
        lineage: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Published, RegistryError> {
        self.publish_signed(model, file, version, lineage, None)
    }

    /// [`publish`](Repository::publish), signing the manifest with `key`
    /// when given: `manifest.sig` is written into the staging directory
    /// after `manifest.json`, so the version appears with its signature or
    /// not at all.
    pub fn publish_signed(
        &self,
        model: &str,
        file: &Path,
        version: Option<u64>,
        lineage: serde_json::Map<String, serde_json::Value>,
        key: Option<&PrivateKey>,
    ) -> Result<Published, RegistryError> {
        validate_model_name(model)?;
        check_source(file)?;
        let model_dir = self.model_dir(model);

        let version = match version {
            Some(0) => {
                return Err(RegistryError::InvalidVersion {
                    model: model.to_owned(),
                });
            }
            Some(v) => {
                let dir = model_dir.join(v.to_string());
                if exists(&dir)? {
                    return Err(RegistryError::VersionExists {
                        model: model.to_owned(),
                        version: v,
                        path: dir,
                    });
                }
                v
            }
            None => next_version(model, &model_dir)?,
        };
        let version_dir = model_dir.join(version.to_string());

        create_model_dir(self.root(), &model_dir)?;

        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let temp = TempDir::create(model_dir.join(format!(
            "{PUBLISH_TEMP_PREFIX}{}-{nanos}",
            std::process::id()
        )))?;

        let manifest = stage(temp.path(), model, version, file, lineage, key)?;

        // `rename` onto an existing non-empty directory fails, but onto an
        // empty one it succeeds (and replaces it), so look right before.
        if exists(&version_dir)? {
            return Err(RegistryError::PublishRace {
                model: model.to_owned(),
                version,
                path: version_dir,
            });
        }
        if let Err(e) = fs::rename(temp.path(), &version_dir) {
            return Err(
                if matches!(
                    e.kind(),
                    io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty
                ) {
                    RegistryError::PublishRace {
                        model: model.to_owned(),
                        version,
                        path: version_dir,
                    }
                } else {
                    RegistryError::io("rename staged version into", &version_dir, e)
                },
            );
        }
        temp.disarm();
        sync_dir(&model_dir)?;

        info!(
            model,
            version,
            sha256 = %manifest.sha256,
            size_bytes = manifest.size_bytes,
            "published {}", version_dir.display()
        );
        Ok(Published {
            model: model.to_owned(),
            version,
            dir: version_dir,
            manifest,
        })
    }
}

pub(crate) fn check_source(file: &Path) -> Result<(), RegistryError> {
    match fs::metadata(file) {
        Ok(meta) if !meta.is_file() => Err(RegistryError::SourceNotAFile {
            path: file.to_owned(),
        }),
        Ok(meta) if meta.len() == 0 => Err(RegistryError::SourceEmpty {
            path: file.to_owned(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(RegistryError::SourceMissing {
            path: file.to_owned(),
        }),
        Err(e) => Err(RegistryError::io("stat", file, e)),
    }
}

/// Whether anything (even a dangling symlink) is at `path`.
fn exists(path: &Path) -> Result<bool, RegistryError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(RegistryError::io("stat", path, e)),
    }
}

/// 1 + the highest canonical numeric entry in `model_dir`; 1 if there is
/// none or the directory does not exist yet.
fn next_version(model: &str, model_dir: &Path) -> Result<u64, RegistryError> {
    let entries = match fs::read_dir(model_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(1),
        Err(e) => return Err(RegistryError::io("read directory", model_dir, e)),
    };
    let mut highest = 0;
    for entry in entries {
        let entry = entry.map_err(|e| RegistryError::io("read directory", model_dir, e))?;
        if let Some(v) = entry.file_name().to_str().and_then(parse_version) {
            highest = highest.max(v);
        }
    }
    highest
        .checked_add(1)
        .ok_or_else(|| RegistryError::VersionOverflow {
            model: model.to_owned(),
        })
}

/// Creates `<root>/<model>` if it does not exist, making the new entry durable.
fn create_model_dir(root: &Path, model_dir: &Path) -> Result<(), RegistryError> {
    match fs::create_dir(model_dir) {
        Ok(()) => sync_dir(root),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if fs::metadata(model_dir).is_ok_and(|m| m.is_dir()) {
                Ok(())
            } else {
                Err(RegistryError::io(
                    "use as model directory",
                    model_dir,
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "it exists but is not a directory",
                    ),
                ))
            }
        }
        Err(e) => Err(RegistryError::io("create directory", model_dir, e)),
    }
}

/// Fills the staging directory: `model.onnx` (copied and hashed in one pass,
/// fsynced), then `manifest.json` (fsynced), then fsyncs the directory.
fn stage(
    temp: &Path,
    model: &str,
    version: u64,
    source: &Path,
    lineage: serde_json::Map<String, serde_json::Value>,
    key: Option<&PrivateKey>,
) -> Result<Manifest, RegistryError> {
    let input = File::open(source).map_err(|e| RegistryError::io("open", source, e))?;
    let model_path = temp.join(MODEL_FILE);
    let mut output = create_new(&model_path)?;
    let (size_bytes, sha256) = hash_reader(input, &mut output).map_err(|e| match e {
        CopyError::Read(e) => RegistryError::io("read", source, e),
        CopyError::Write(e) => RegistryError::io("write", &model_path, e),
    })?;
    if size_bytes == 0 {
        // It was truncated between the check and the copy.
        return Err(RegistryError::SourceEmpty {
            path: source.to_owned(),
        });
    }
    output
        .sync_all()
        .map_err(|e| RegistryError::io("fsync", &model_path, e))?;
    drop(output);

    let manifest = new_manifest(model, version, source, sha256, size_bytes, lineage);
    let manifest_path = temp.join(MANIFEST_FILE);
    let json = manifest_json(&manifest);
    write_new(&manifest_path, &json)?;
    if let Some(key) = key {
        write_new(&temp.join(SIGNATURE_FILE), &key.sign_manifest(&json))?;
    }

    sync_dir(temp)?;
    Ok(manifest)
}

/// The manifest of a version being published now.
pub(crate) fn new_manifest(
    model: &str,
    version: u64,
    source: &Path,
    sha256: String,
    size_bytes: u64,
    lineage: serde_json::Map<String, serde_json::Value>,
) -> Manifest {
    Manifest {
        schema: MANIFEST_SCHEMA,
        model: model.to_owned(),
        version,
        file: MODEL_FILE.to_owned(),
        sha256,
        size_bytes,
        created: format_rfc3339(SystemTime::now()),
        source_file: source.to_string_lossy().into_owned(),
        lineage,
        validation: None,
    }
}

/// `manifest.json` as written: pretty JSON and a newline.
pub(crate) fn manifest_json(manifest: &Manifest) -> Vec<u8> {
    // A struct of strings, integers and a JSON map cannot fail to serialise.
    let mut json = serde_json::to_vec_pretty(manifest).unwrap_or_default();
    json.push(b'\n');
    json
}

fn create_new(path: &Path) -> Result<File, RegistryError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| RegistryError::io("create", path, e))
}

/// Flushes a directory's entries to disk (so a rename or a new file in it
/// survives a crash). Directories cannot be opened as files on Windows; there
/// this is a no-op.
fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| RegistryError::io("fsync directory", dir, e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// A staging directory removed on drop unless [`disarm`](TempDir::disarm)ed.
struct TempDir {
    path: PathBuf,
    armed: bool,
}

impl TempDir {
    fn create(path: PathBuf) -> Result<TempDir, RegistryError> {
        fs::create_dir(&path).map_err(|e| RegistryError::io("create directory", &path, e))?;
        Ok(TempDir { path, armed: true })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %self.path.display(), "cannot remove staging directory {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy that fails half-way must not leave the staging directory behind.
    #[cfg(unix)]
    #[test]
    fn a_failed_stage_removes_the_staging_directory() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join(format!("{PUBLISH_TEMP_PREFIX}test"));
        let temp = TempDir::create(staging.clone()).unwrap();
        // A directory opens fine on Unix but reading it fails (EISDIR), so the
        // failure comes after model.onnx was created.
        let err = stage(temp.path(), "m", 1, dir.path(), Default::default(), None).unwrap_err();
        assert!(
            matches!(&err, RegistryError::Io { op: "read", path, .. } if path == dir.path()),
            "{err:?}"
        );
        assert!(staging.join(MODEL_FILE).exists());
        drop(temp);
        assert!(!staging.exists());
    }

    #[test]
    fn a_disarmed_staging_directory_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("kept");
        TempDir::create(staging.clone()).unwrap().disarm();
        assert!(staging.is_dir());
    }
}
