//! Durable file writes, shared by publishing, syncing from object storage,
//! signing and validation reports.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::RegistryError;

/// Creates `path` (it must not exist) with `bytes`, flushed to disk.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| RegistryError::io("create", path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| RegistryError::io("write", path, e))
}

/// Replaces (or creates) `path` with `bytes` atomically: a hidden file
/// beside it (`.NAME.tmp-PID-N`, which scans ignore), flushed, renamed over
/// it, then the directory flushed. Readers see the old content or the new,
/// never a part. The directory is created if missing.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| RegistryError::io("create directory", dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = write_new(&temp, bytes).and_then(|()| {
        fs::rename(&temp, path).map_err(|e| RegistryError::io("rename into", path, e))
    });
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RegistryError::io("fsync directory", dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("f.json");
        super::write_atomically(&path, b"one").unwrap();
        super::write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f.json"]);
        assert!(
            super::write_new(&path, b"x").is_err(),
            "write_new never replaces"
        );
    }
}
