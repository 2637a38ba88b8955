//! The collector's embedded store: one file of JSON lines, appended to and
//! synced before anything is acknowledged, replayed when the collector
//! starts. Everything it accepted survives a restart: the rows of records
//! (so a window half full when it stopped goes on filling), references,
//! closed windows with their drift, and alerts.
//!
//! A line cut short by a crash in the middle of an append was never
//! acknowledged: replay drops it (and says so) and the next append starts
//! on a fresh line. Any other unreadable line is an error: the file was
//! damaged, and silently skipping it would lose data.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::features::{FeatureValue, Row};

/// Values of one feature over many rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Column {
    Numeric(Vec<f64>),
    Categorical(Vec<String>),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::Numeric(v) => v.len(),
            Column::Categorical(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Feature name → its values. Rows lose their grouping here on purpose:
/// drift is computed feature by feature.
pub type Columns = BTreeMap<String, Column>;

/// Adds rows to columns. A feature seen as numeric stays numeric: a value
/// of the other kind for it is skipped (and counted in the return value);
/// a missing numeric value (NaN, infinite) is left out, uncounted.
pub fn append_rows(columns: &mut Columns, rows: &[Row]) -> usize {
    let mut skipped = 0;
    for row in rows {
        for (name, value) in row {
            let column = columns.entry(name.clone()).or_insert_with(|| match value {
                FeatureValue::Numeric(_) => Column::Numeric(Vec::new()),
                FeatureValue::Category(_) => Column::Categorical(Vec::new()),
            });
            match (column, value) {
                // A missing value (NaN, or an infinity) is left out: the
                // statistics would drop it, and JSON cannot hold it.
                (Column::Numeric(v), FeatureValue::Numeric(x)) => {
                    if x.is_finite() {
                        v.push(*x)
                    }
                }
                (Column::Categorical(v), FeatureValue::Category(c)) => v.push(c.clone()),
                _ => skipped += 1,
            }
        }
    }
    skipped
}

/// One line of the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// Features of accepted records of a model version.
    Rows {
        model: String,
        version: u64,
        records: u64,
        columns: Columns,
    },
    /// A version's reference data, replacing any earlier one.
    Reference {
        model: String,
        version: u64,
        time: String,
        /// Where it came from: an uploaded file's name, or "first N records".
        source: String,
        /// Rows it took from those waiting for a reference (an automatic
        /// reference); the rest of them start the first window.
        #[serde(default)]
        consumed: u64,
        columns: Columns,
    },
    /// A window that was closed and compared with the reference.
    Window {
        model: String,
        version: u64,
        index: u64,
        time: String,
        records: u64,
        rows: u64,
        /// The per-feature drift results, as computed then.
        drift: serde_json::Value,
    },
    /// An alert raised or cleared.
    Alert {
        model: String,
        version: u64,
        time: String,
        raised: bool,
        window: u64,
        features: Vec<String>,
    },
}

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is in use by another collector (one store, one collector)")]
    InUse { path: PathBuf },
    #[error("{path} line {line} is damaged ({reason}); refusing to start rather than lose it")]
    Damaged {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// The open store. Appends are serialised by a mutex (ingest is not the
/// gateway's request path: it is the collector's own).
pub struct Store {
    path: PathBuf,
    file: Mutex<File>,
}

impl Store {
    /// Opens (creating) the store at `path` and returns every entry in it,
    /// oldest first.
    pub fn open(path: &Path) -> Result<(Store, Vec<Entry>), StoreError> {
        let io = |action: &'static str| {
            let path = path.to_path_buf();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io("create the directory of"))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io("open"))?;
        lock_exclusively(&file, path)?;
        let mut entries = Vec::new();
        let mut good_len = 0u64;
        let mut torn = false;
        {
            let mut reader = BufReader::new(&mut file);
            let mut line = String::new();
            let mut n = 0;
            loop {
                line.clear();
                let read = reader.read_line(&mut line).map_err(io("read"))?;
                if read == 0 {
                    break;
                }
                n += 1;
                if !line.ends_with('\n') {
                    // The last append did not finish: never acknowledged.
                    torn = true;
                    break;
                }
                match serde_json::from_str::<Entry>(line.trim_end()) {
                    Ok(e) => entries.push(e),
                    Err(e) => {
                        return Err(StoreError::Damaged {
                            path: path.to_path_buf(),
                            line: n,
                            reason: e.to_string(),
                        });
                    }
                }
                good_len += read as u64;
            }
        }
        if torn {
            file.set_len(good_len)
                .map_err(io("truncate the torn end of"))?;
            file.seek(SeekFrom::End(0)).map_err(io("seek"))?;
        }
        Ok((
            Store {
                path: path.to_path_buf(),
                file: Mutex::new(file),
            },
            entries,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` and syncs it to disk before returning: when this
    /// returns Ok, a restart will replay it.
    pub fn append(&self, entry: &Entry) -> Result<(), StoreError> {
        let mut line = serde_json::to_string(entry).expect("entries serialise");
        line.push('\n');
        let io = |action: &'static str| {
            let path = self.path.clone();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(line.as_bytes()).map_err(io("append to"))?;
        file.sync_data().map_err(io("sync"))
    }
}

/// Takes the store for this process: two collectors appending to one file
/// would each replay only their own view of it. The lock goes with the file.
fn lock_exclusively(file: &File, path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function borrows; no memory is
        // shared with the kernel.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return Err(if err.kind() == std::io::ErrorKind::WouldBlock {
                StoreError::InUse {
                    path: path.to_path_buf(),
                }
            } else {
                StoreError::Io {
                    action: "lock",
                    path: path.to_path_buf(),
                    source: err,
                }
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_entry(records: u64, x: &[f64]) -> Entry {
        let mut columns = Columns::new();
        columns.insert("x".into(), Column::Numeric(x.to_vec()));
        columns.insert("c".into(), Column::Categorical(vec!["a".into(); x.len()]));
        Entry::Rows {
            model: "iris".into(),
            version: 2,
            records,
            columns,
        }
    }

    #[test]
    fn what_was_appended_is_replayed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.jsonl");
        let (store, entries) = Store::open(&path).unwrap();
        assert!(entries.is_empty());
        let a = rows_entry(1, &[1.0, 2.5]);
        let b = Entry::Alert {
            model: "iris".into(),
            version: 2,
            time: "t".into(),
            raised: true,
            window: 3,
            features: vec!["x".into()],
        };
        store.append(&a).unwrap();
        store.append(&b).unwrap();
        drop(store);
        let (store, entries) = Store::open(&path).unwrap();
        assert_eq!(entries, vec![a.clone(), b.clone()]);
        store.append(&a).unwrap();
        drop(store);
        assert_eq!(Store::open(&path).unwrap().1, vec![a.clone(), b, a]);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_damage_elsewhere_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.jsonl");
        let (store, _) = Store::open(&path).unwrap();
        let a = rows_entry(1, &[1.0]);
        store.append(&a).unwrap();
        drop(store);
        // A crash in the middle of the next append.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"kind\":\"rows\",\"mod").unwrap();
        drop(f);
        let (store, entries) = Store::open(&path).unwrap();
        assert_eq!(entries, vec![a.clone()]);
        store.append(&a).unwrap();
        drop(store);
        assert_eq!(Store::open(&path).unwrap().1, vec![a.clone(), a.clone()]);
        // A damaged line in the middle is not skipped.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"rows\"", "\"rowz\"", 1)).unwrap();
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::Damaged { line: 1, .. })
        ));
    }

    #[test]
    fn one_store_one_collector() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.jsonl");
        let (first, _) = Store::open(&path).unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::InUse { .. })));
        drop(first);
        assert!(Store::open(&path).is_ok());
    }

    #[test]
    fn rows_become_columns_of_one_kind() {
        let mut columns = Columns::new();
        let rows = vec![
            vec![
                ("x".to_string(), FeatureValue::Numeric(1.0)),
                ("c".to_string(), FeatureValue::Category("a".into())),
            ],
            vec![
                ("x".to_string(), FeatureValue::Category("oops".into())),
                ("c".to_string(), FeatureValue::Category("b".into())),
            ],
        ];
        assert_eq!(append_rows(&mut columns, &rows), 1);
        assert_eq!(columns["x"], Column::Numeric(vec![1.0]));
        assert_eq!(
            columns["c"],
            Column::Categorical(vec!["a".into(), "b".into()])
        );
    }
}
