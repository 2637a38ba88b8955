//! The audit log of a model repository: an append-only, hash-chained record
//! of who changed what (policies, promotions, rollbacks) and why.
//!
//! The log is `<repo>/audit.log`, one JSON object per line (JSON Lines).
//! Each record carries a sequence number, the SHA-256 of its own canonical
//! form (`hash`) and the hash of the record before it (`prev`), so removing,
//! reordering or editing any line breaks the chain, and [`verify`] finds it.
//!
//! Several gateways may share one registry, so [`append`] holds an exclusive
//! `flock` on the file while it reads the last record and writes the next;
//! [`read`] and [`verify`] hold a shared one, so they never see half a line.
//!
//! # Canonical form
//!
//! A line is `serde_json::to_string` of an [`AuditRecord`]: no whitespace,
//! fields in declaration order, and the keys of every JSON object inside
//! `before`, `after` and `evidence` sorted (bytewise). serde_json sorts
//! object keys already when its `preserve_order` feature is off (it is, in
//! this workspace); the keys are sorted explicitly as well, so the log stays
//! the same if some other crate of a build turns that feature on. The hash is
//! the lowercase hex SHA-256 of the same serialisation without the `hash`
//! field. [`verify`] re-serialises every parsed record and requires the line
//! to be byte-identical to it, which is what makes any change to a line,
//! even whitespace the JSON parser would skip, detectable.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// File name of the audit log, at the root of the model repository.
pub const AUDIT_FILE: &str = "audit.log";

/// The `prev` of the first record: 64 zeros (no record before it).
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How many bytes [`append`] reads at a time while looking backwards from
/// the end of the log for the start of its last line.
const TAIL_CHUNK: u64 = 4096;

/// Attempts [`append`] makes at a line that survives a JSON round trip
/// unchanged (see [`AuditError::Unrepresentable`]).
const SETTLE_ROUNDS: usize = 4;

/// What a caller records: who did what to which model, the state before
/// and after, and the evidence the decision rested on (gate results,
/// comparison statistics, a free-form reason).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Who made the change (a user name, or the name of an automated gate).
    pub actor: String,
    /// What was done, as a dotted verb (e.g. `"policy.set"`, `"rollout.promote"`).
    pub action: String,
    /// The model the change applies to.
    pub model: String,
    /// The state before the change (`null` when there was none).
    pub before: Value,
    /// The state after the change.
    pub after: Value,
    /// Why: whatever supports the decision (`null` when nothing).
    pub evidence: Value,
}

/// One line of the audit log: an [`AuditEntry`] with its place in the chain.
///
/// Fields are serialised in declaration order, which is part of the
/// canonical form the hashes are computed over; do not reorder them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the log, 1 for the first record, each next one plus 1.
    pub seq: u64,
    /// When it was appended: RFC 3339, UTC, milliseconds
    /// (`2026-11-26T12:00:00.123Z`).
    pub time: String,
    /// See [`AuditEntry::actor`].
    pub actor: String,
    /// See [`AuditEntry::action`].
    pub action: String,
    /// See [`AuditEntry::model`].
    pub model: String,
    /// See [`AuditEntry::before`].
    pub before: Value,
    /// See [`AuditEntry::after`].
    pub after: Value,
    /// See [`AuditEntry::evidence`].
    pub evidence: Value,
    /// The `hash` of the previous record; [`GENESIS_PREV`] for the first.
    pub prev: String,
    /// Lowercase hex SHA-256 of this record's canonical form without this
    /// field (see the [module documentation](self)).
    pub hash: String,
}

/// The record without its hash: what the hash is computed over. Same field
/// names and order as [`AuditRecord`].
#[derive(Serialize)]
struct Unhashed<'a> {
    seq: u64,
    time: &'a str,
    actor: &'a str,
    action: &'a str,
    model: &'a str,
    before: &'a Value,
    after: &'a Value,
    evidence: &'a Value,
    prev: &'a str,
}

/// The outcome of a successful [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// How many records the log holds.
    pub records: u64,
    /// The hash of the last record (`None` for an empty or missing log).
    /// Keeping a copy elsewhere lets one detect a log truncated to an
    /// earlier, still consistent, state.
    pub last_hash: Option<String>,
}

/// Why the audit log could not be read, extended or verified.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Opening, locking, reading or writing the log failed.
    #[error("cannot access audit log {}: {source}", path.display())]
    Io {
        /// The log file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The log is damaged or has been tampered with at this line (1-based):
    /// it does not parse, is not in canonical form, or breaks the chain.
    /// Nothing is appended to a damaged log; restore it from a backup or
    /// move it aside (the old file remains evidence) and start a new one.
    #[error("audit log is damaged at line {line}: {reason}")]
    Broken {
        /// The 1-based number of the offending line.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// The entry's JSON values do not serialise to a form that reads back
    /// identically (in practice: a floating-point number that the JSON
    /// parser of this build cannot round-trip), so the record could never
    /// be verified. Nothing was written; record the number as a string.
    #[error("audit entry cannot be recorded: {reason}")]
    Unrepresentable {
        /// What could not be represented.
        reason: String,
    },
}

impl AuditRecord {
    /// The record of `entry` at `seq` after the record hashed `prev`,
    /// stamped now, its hash not yet computed (see `settle`).
    fn next(seq: u64, prev: String, entry: AuditEntry) -> AuditRecord {
        AuditRecord {
            seq,
            time: format_time(SystemTime::now()),
            actor: entry.actor,
            action: entry.action,
            model: entry.model,
            before: entry.before,
            after: entry.after,
            evidence: entry.evidence,
            prev,
            hash: String::new(),
        }
    }

    /// Computes the hash this record should carry: lowercase hex SHA-256
    /// of its canonical serialisation without the `hash` field.
    pub fn compute_hash(&self) -> String {
        let canonical = self.canonicalised();
        let unhashed = Unhashed {
            seq: canonical.seq,
            time: &canonical.time,
            actor: &canonical.actor,
            action: &canonical.action,
            model: &canonical.model,
            before: &canonical.before,
            after: &canonical.after,
            evidence: &canonical.evidence,
            prev: &canonical.prev,
        };
        // Serialising strings, integers and `Value`s (whose keys are always
        // strings) cannot fail; should it ever, the empty input gives a
        // hash that matches no record, so verification fails loudly.
        let bytes = serde_json::to_vec(&unhashed).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }

    /// The record as one line of the log, without the newline.
    pub fn to_line(&self) -> String {
        // As in `compute_hash`: cannot fail, and an empty line would be
        // caught by the round-trip check of `append` and by `verify`.
        serde_json::to_string(&self.canonicalised()).unwrap_or_default()
    }

    /// A copy with the keys of every object in `before`, `after` and
    /// `evidence` sorted.
    fn canonicalised(&self) -> AuditRecord {
        AuditRecord {
            before: canonical_value(&self.before),
            after: canonical_value(&self.after),
            evidence: canonical_value(&self.evidence),
            ..self.clone()
        }
    }
}

/// The path of the audit log of the repository at `repo_root`.
pub fn log_path(repo_root: &Path) -> PathBuf {
    repo_root.join(AUDIT_FILE)
}

/// Appends `entry` to `<repo_root>/audit.log` (creating the file) and
/// returns the record written.
///
/// Holds an exclusive `flock` on the log from reading its last record to
/// writing the new one, so concurrent appends, from threads or from other
/// gateways sharing the registry, form one chain. The line is written with
/// a single write and flushed to disk (`sync_data`) before returning.
///
/// Only the last line is read (backwards from the end, so the cost does not
/// grow with the log). If it does not parse, is not canonical, has a wrong
/// hash, or lacks its newline, nothing is written and
/// [`AuditError::Broken`] is returned: a damaged log is never extended
/// silently.
pub fn append(repo_root: &Path, entry: AuditEntry) -> Result<AuditRecord, AuditError> {
    let path = log_path(repo_root);
    let io_err = |source| AuditError::Io {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&path)
        .map_err(io_err)?;
    lock(&file, true).map_err(io_err)?;

    let len = file.metadata().map_err(io_err)?.len();
    let (seq, prev) = match read_last_line(&file, len).map_err(io_err)? {
        None => (1, GENESIS_PREV.to_owned()),
        Some(tail) => {
            let last = check_last_line(&tail).map_err(|reason| AuditError::Broken {
                line: count_lines_before(&file, tail.start).unwrap_or(0) + 1,
                reason,
            })?;
            (last.seq + 1, last.hash)
        }
    };

    let mut record = AuditRecord::next(seq, prev, entry);
    let line = settle(&mut record)?;

    let mut bytes = line.into_bytes();
    bytes.push(b'\n');
    file.write_all(&bytes).map_err(io_err)?;
    file.sync_data().map_err(io_err)?;
    // Dropping the file closes it, which releases the lock.
    Ok(record)
}

/// The log `existing` (`None`: no log yet) with `entry` appended, and the
/// record appended: [`append`] for a log held elsewhere than in a local
/// file (object storage, where the caller writes it back conditionally).
/// The last record must parse and carry its hash, as for [`append`].
pub fn append_to(
    existing: Option<&[u8]>,
    entry: AuditEntry,
) -> Result<(Vec<u8>, AuditRecord), AuditError> {
    let existing = existing.unwrap_or_default();
    let all = lines(existing)?;
    let (seq, prev) = match all.last() {
        None => (1, GENESIS_PREV.to_owned()),
        Some((index, line)) => {
            let last = parse_line(line).map_err(|reason| AuditError::Broken {
                line: *index,
                reason,
            })?;
            (last.seq + 1, last.hash)
        }
    };
    let mut record = AuditRecord::next(seq, prev, entry);
    let line = settle(&mut record)?;
    let mut bytes = Vec::with_capacity(existing.len() + line.len() + 1);
    bytes.extend_from_slice(existing);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    Ok((bytes, record))
}

/// Reads the last `limit` records of `<repo_root>/audit.log`, oldest first,
/// only those of `model` when given. A missing log reads as empty.
///
/// Every line is parsed (a line that does not is [`AuditError::Broken`]),
/// but the chain is not checked; that is [`verify`]'s job.
pub fn read(
    repo_root: &Path,
    model: Option<&str>,
    limit: usize,
) -> Result<Vec<AuditRecord>, AuditError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let path = log_path(repo_root);
    let Some(bytes) = read_locked(&path)? else {
        return Ok(Vec::new());
    };
    let mut kept: VecDeque<AuditRecord> = VecDeque::new();
    for (index, line) in lines(&bytes)? {
        let record = parse_line(line).map_err(|reason| AuditError::Broken {
            line: index,
            reason,
        })?;
        if model.is_some_and(|m| m != record.model) {
            continue;
        }
        if kept.len() == limit {
            kept.pop_front();
        }
        kept.push_back(record);
    }
    Ok(kept.into())
}

/// Checks the whole log at `path` (normally `<repo>/audit.log`): every line
/// parses, is byte-identical to the canonical serialisation of its record
/// (see the [module documentation](self)), carries the right hash, has the
/// sequence number after the previous one (the first 1), and names the
/// previous record's hash as `prev` (the first [`GENESIS_PREV`]). Every line
/// ends with a newline; a final line without one is a truncated write.
///
/// Any change of a single byte anywhere in the file is detected, as is a
/// removed, duplicated or reordered line. A missing file is an empty log.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    match read_locked(path)? {
        Some(bytes) => verify_bytes(&bytes),
        None => Ok(VerifyReport {
            records: 0,
            last_hash: None,
        }),
    }
}

/// [`verify`] of a log's bytes (a log read from object storage).
pub fn verify_bytes(bytes: &[u8]) -> Result<VerifyReport, AuditError> {
    let mut records = 0u64;
    let mut last_hash: Option<String> = None;
    for (index, line) in lines(bytes)? {
        let broken = |reason: String| AuditError::Broken {
            line: index,
            reason,
        };
        let record = parse_line(line).map_err(broken)?;
        if record.seq != records + 1 {
            return Err(broken(format!(
                "sequence number {} where {} was expected",
                record.seq,
                records + 1
            )));
        }
        let expected_prev = last_hash.as_deref().unwrap_or(GENESIS_PREV);
        if record.prev != expected_prev {
            return Err(broken(format!(
                "prev is {} but the previous record's hash is {expected_prev}",
                record.prev
            )));
        }
        records += 1;
        last_hash = Some(record.hash);
    }
    Ok(VerifyReport { records, last_hash })
}

/// Formats a time as RFC 3339 in UTC with milliseconds
/// (`2026-11-26T12:00:00.123Z`). Times before 1970 are written as the epoch.
pub fn format_time(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian (year, month, day) of a day counted from
/// 1970-01-01 (day 0).
///
/// Counts from 0000-03-01, so that the leap day is the last day of a
/// shifted year; then splits off whole 400-year cycles (146 097 days each),
/// whole years within the cycle (correcting for the 4-, 100- and 400-year
/// leap rules) and whole shifted months (March..February, whose lengths
/// follow `(153 * m + 2) / 5`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // 0000-03-01 is 719 468 days before 1970-01-01.
    let shifted = days + 719_468;
    let cycle = shifted / 146_097;
    let day_of_cycle = shifted % 146_097; // 0..=146_096
    let year_of_cycle = (day_of_cycle - day_of_cycle / 1_460 + day_of_cycle / 36_524
        - day_of_cycle / 146_096)
        / 365; // 0..=399
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100); // 0..=365
    let shifted_month = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = cycle * 400 + year_of_cycle + u64::from(month <= 2);
    (year, month, day)
}

/// The value with the keys of every object, at any depth, sorted.
fn canonical_value(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let sorted: Map<String, Value> = entries
                .into_iter()
                .map(|(k, v)| (k.clone(), canonical_value(v)))
                .collect();
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical_value).collect()),
        other => other.clone(),
    }
}

/// Fills in `record.hash` and returns its line, making sure the line reads
/// back as exactly the same record. A float the JSON parser reads back as a
/// neighbouring value is replaced by that value (which then round-trips);
/// if that does not settle, the entry is refused.
fn settle(record: &mut AuditRecord) -> Result<String, AuditError> {
    *record = record.canonicalised();
    for _ in 0..SETTLE_ROUNDS {
        record.hash = record.compute_hash();
        let line = record.to_line();
        let back: AuditRecord =
            serde_json::from_str(&line).map_err(|e| AuditError::Unrepresentable {
                reason: format!("the record does not read back: {e}"),
            })?;
        if back.to_line() == line {
            return Ok(line);
        }
        record.before = back.before;
        record.after = back.after;
        record.evidence = back.evidence;
    }
    Err(AuditError::Unrepresentable {
        reason: format!(
            "the values of the {:?} entry for model {:?} change each time they are \
             written and read back as JSON",
            record.action, record.model
        ),
    })
}

/// Parses one line (without its newline) and checks it is canonical and
/// carries its own hash. The error is the reason, for [`AuditError::Broken`].
fn parse_line(line: &[u8]) -> Result<AuditRecord, String> {
    let record: AuditRecord =
        serde_json::from_slice(line).map_err(|e| format!("not a valid record: {e}"))?;
    if record.to_line().as_bytes() != line {
        return Err("the line differs from its record's canonical form (edited?)".to_owned());
    }
    let hash = record.compute_hash();
    if record.hash != hash {
        return Err(format!(
            "hash is {} but the record hashes to {hash}",
            record.hash
        ));
    }
    Ok(record)
}

/// Splits the log into its lines, numbered from 1. Every line must end with
/// a newline: an unterminated final line is a truncated write.
fn lines(bytes: &[u8]) -> Result<Vec<(usize, &[u8])>, AuditError> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let line_no = out.len() + 1;
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(AuditError::Broken {
                line: line_no,
                reason: "the last line has no newline (truncated write?)".to_owned(),
            });
        };
        out.push((line_no, &rest[..end]));
        rest = &rest[end + 1..];
    }
    Ok(out)
}

/// Reads the whole log under a shared lock; `None` if it does not exist.
fn read_locked(path: &Path) -> Result<Option<Vec<u8>>, AuditError> {
    let io_err = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    lock(&file, false).map_err(io_err)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err)?;
    Ok(Some(bytes))
}

/// The last line of the log, found by reading backwards from the end.
struct Tail {
    /// Offset of the line's first byte.
    start: u64,
    /// The line without its newline.
    bytes: Vec<u8>,
    /// Whether the file ends with a newline.
    terminated: bool,
}

/// Reads the last line of a `len`-byte file; `None` if the file is empty.
fn read_last_line(mut file: &File, len: u64) -> io::Result<Option<Tail>> {
    if len == 0 {
        return Ok(None);
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    let terminated = last[0] == b'\n';
    let end = if terminated { len - 1 } else { len };

    // Chunks read so far, last chunk first.
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut pos = end;
    let mut start = 0;
    while pos > 0 {
        let size = TAIL_CHUNK.min(pos);
        let mut chunk = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(pos - size))?;
        file.read_exact(&mut chunk)?;
        if let Some(newline) = chunk.iter().rposition(|&b| b == b'\n') {
            start = pos - size + newline as u64 + 1;
            chunks.push(chunk.split_off(newline + 1));
            break;
        }
        chunks.push(chunk);
        pos -= size;
    }
    let bytes = chunks.into_iter().rev().flatten().collect();
    Ok(Some(Tail {
        start,
        bytes,
        terminated,
    }))
}

/// Checks the last line of the log before appending after it.
fn check_last_line(tail: &Tail) -> Result<AuditRecord, String> {
    if !tail.terminated {
        return Err("the last line has no newline (truncated write?)".to_owned());
    }
    if tail.bytes.is_empty() {
        return Err("the last line is empty".to_owned());
    }
    parse_line(&tail.bytes)
}

/// How many newlines precede `offset`: the 0-based number of the line that
/// starts there. Only used to report where a damaged log is damaged.
fn count_lines_before(mut file: &File, offset: u64) -> io::Result<usize> {
    file.seek(SeekFrom::Start(0))?;
    let mut head = Vec::new();
    file.take(offset).read_to_end(&mut head)?;
    Ok(head.iter().filter(|&&b| b == b'\n').count())
}

/// Takes an exclusive or shared `flock` on the whole file, retrying when
/// interrupted by a signal. The lock is released when the file is closed.
#[cfg(unix)]
fn lock(file: &File, exclusive: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let operation = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    loop {
        // SAFETY: the descriptor belongs to `file`, which outlives the call;
        // flock only changes the lock state of the open file description.
        let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Takes an exclusive or shared lock on the whole file (the platform's
/// equivalent of `flock`). The lock is released when the file is closed.
#[cfg(not(unix))]
fn lock(file: &File, exclusive: bool) -> io::Result<()> {
    if exclusive {
        file.lock()
    } else {
        file.lock_shared()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;
    use std::time::Duration;

    fn entry(model: &str, n: u64) -> AuditEntry {
        AuditEntry {
            actor: "alice".into(),
            action: "policy.set".into(),
            model: model.into(),
            before: json!({"stable": n, "canary": null}),
            after: json!({"stable": n + 1, "zeta": [1, {"b": 2, "a": 1.5}], "alpha": "x y"}),
            evidence: json!({"reason": "gates passed", "p99_ms": 12.25}),
        }
    }

    fn three_record_log() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), entry("iris", 1)).unwrap();
        append(dir.path(), entry("mnist", 2)).unwrap();
        append(dir.path(), entry("iris", 3)).unwrap();
        let path = log_path(dir.path());
        let bytes = fs::read(&path).unwrap();
        (dir, path, bytes)
    }

    #[test]
    fn append_three_and_verify() {
        let (dir, path, bytes) = three_record_log();
        let report = verify(&path).unwrap();
        assert_eq!(report.records, 3);
        let all = read(dir.path(), None, 10).unwrap();
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(all[0].prev, GENESIS_PREV);
        assert_eq!(all[1].prev, all[0].hash);
        assert_eq!(all[2].prev, all[1].hash);
        assert_eq!(report.last_hash.as_deref(), Some(all[2].hash.as_str()));
        assert!(bytes.ends_with(b"}\n"));
        // Keys inside the values are sorted, and the line has no spaces
        // outside strings.
        let first = std::str::from_utf8(&bytes).unwrap().lines().next().unwrap();
        assert!(first.starts_with(r#"{"seq":1,"time":""#), "{first}");
        assert!(first.contains(r#""after":{"alpha":"x y","stable":2,"zeta":[1,{"a":1.5,"b":2}]}"#));
        assert_eq!(all[0].hash.len(), 64);
        assert_eq!(all[0].hash, all[0].compute_hash());
    }

    #[test]
    fn returned_record_matches_log() {
        let dir = tempfile::tempdir().unwrap();
        let written = append(dir.path(), entry("iris", 1)).unwrap();
        let read_back = read(dir.path(), None, 1).unwrap();
        assert_eq!(read_back, vec![written]);
    }

    #[test]
    fn read_filters_and_limits() {
        let (dir, _, _) = three_record_log();
        let iris = read(dir.path(), Some("iris"), 10).unwrap();
        assert_eq!(iris.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 3]);
        let last_iris = read(dir.path(), Some("iris"), 1).unwrap();
        assert_eq!(last_iris.len(), 1);
        assert_eq!(last_iris[0].seq, 3);
        let last_two = read(dir.path(), None, 2).unwrap();
        assert_eq!(
            last_two.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(read(dir.path(), Some("other"), 10).unwrap().is_empty());
        assert!(read(dir.path(), None, 0).unwrap().is_empty());
    }

    #[test]
    fn missing_log_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path(), None, 5).unwrap().is_empty());
        assert_eq!(
            verify(&log_path(dir.path())).unwrap(),
            VerifyReport {
                records: 0,
                last_hash: None
            }
        );
    }

    #[test]
    fn every_single_byte_change_is_detected() {
        let (_dir, path, original) = three_record_log();
        for pos in 0..original.len() {
            for replacement in [original[pos] ^ 0x01, b' '] {
                if replacement == original[pos] {
                    continue;
                }
                let mut damaged = original.clone();
                damaged[pos] = replacement;
                fs::write(&path, &damaged).unwrap();
                match verify(&path) {
                    Err(AuditError::Broken { .. }) => {}
                    other => panic!(
                        "byte {pos} ({:?} -> {:?}) not detected: {other:?}",
                        original[pos] as char, replacement as char
                    ),
                }
            }
        }
        fs::write(&path, &original).unwrap();
        verify(&path).unwrap();
    }

    #[test]
    fn removed_or_reordered_lines_are_detected() {
        let (_dir, path, original) = three_record_log();
        let text = String::from_utf8(original).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let rebuild = |picked: &[usize]| -> String {
            picked.iter().map(|&i| format!("{}\n", lines[i])).collect()
        };
        for picked in [&[1, 2][..], &[0, 2], &[0, 2, 1], &[0, 1, 1, 2], &[1, 0, 2]] {
            fs::write(&path, rebuild(picked)).unwrap();
            assert!(
                matches!(verify(&path), Err(AuditError::Broken { .. })),
                "{picked:?}"
            );
        }
        // Removing the last line leaves a consistent, shorter log: only a
        // copy of the last hash kept elsewhere reveals that.
        fs::write(&path, rebuild(&[0, 1])).unwrap();
        assert_eq!(verify(&path).unwrap().records, 2);
        // A truncated last line and a blank line are damage.
        fs::write(&path, &text[..text.len() - 1]).unwrap();
        assert!(matches!(
            verify(&path),
            Err(AuditError::Broken { line: 3, .. })
        ));
        fs::write(&path, format!("{text}\n")).unwrap();
        assert!(matches!(
            verify(&path),
            Err(AuditError::Broken { line: 4, .. })
        ));
    }

    #[test]
    fn reformatted_line_is_detected() {
        let (_dir, path, original) = three_record_log();
        let text = String::from_utf8(original).unwrap();
        let mut out = String::new();
        for (i, line) in text.lines().enumerate() {
            if i == 1 {
                // Same record, different bytes: pretty-printed keys order.
                let value: Value = serde_json::from_str(line).unwrap();
                out.push_str(&serde_json::to_string(&value).unwrap().replace(":", ": "));
            } else {
                out.push_str(line);
            }
            out.push('\n');
        }
        fs::write(&path, out).unwrap();
        assert!(matches!(
            verify(&path),
            Err(AuditError::Broken { line: 2, .. })
        ));
    }

    #[test]
    fn append_refuses_damaged_last_line() {
        let (dir, path, original) = three_record_log();
        let damages: [Vec<u8>; 4] = [
            // Edited value in the last line.
            {
                let mut d = original.clone();
                let at = d.len() - 10;
                d[at] ^= 0x01;
                d
            },
            // Truncated last line.
            original[..original.len() - 5].to_vec(),
            // Missing final newline.
            original[..original.len() - 1].to_vec(),
            // Garbage appended as a line.
            [original.as_slice(), b"not json\n"].concat(),
        ];
        for damaged in damages {
            fs::write(&path, &damaged).unwrap();
            match append(dir.path(), entry("iris", 9)) {
                Err(AuditError::Broken { line, .. }) => assert!(line >= 3, "{line}"),
                other => panic!("expected Broken, got {other:?}"),
            }
            assert_eq!(fs::read(&path).unwrap(), damaged, "log must be unchanged");
        }
    }

    #[test]
    fn long_last_line_is_found_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let mut big = entry("iris", 1);
        big.evidence = json!({"blob": "z".repeat(3 * TAIL_CHUNK as usize + 17)});
        append(dir.path(), entry("iris", 0)).unwrap();
        append(dir.path(), big.clone()).unwrap();
        append(dir.path(), big).unwrap();
        let record = append(dir.path(), entry("iris", 2)).unwrap();
        assert_eq!(record.seq, 4);
        assert_eq!(verify(&log_path(dir.path())).unwrap().records, 4);
    }

    #[test]
    fn first_line_of_single_record_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut big = entry("iris", 1);
        big.evidence = json!({"blob": "q".repeat(2 * TAIL_CHUNK as usize)});
        append(dir.path(), big).unwrap();
        assert_eq!(append(dir.path(), entry("iris", 2)).unwrap().seq, 2);
        assert_eq!(verify(&log_path(dir.path())).unwrap().records, 2);
    }

    #[test]
    fn concurrent_appends_form_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let root = root.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        append(&root, entry(&format!("m{t}"), i)).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let report = verify(&log_path(&root)).unwrap();
        assert_eq!(report.records, 100);
        let all = read(&root, None, 1000).unwrap();
        assert_eq!(
            all.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=100).collect::<Vec<_>>()
        );
        for t in 0..4 {
            assert_eq!(read(&root, Some(&format!("m{t}")), 1000).unwrap().len(), 25);
        }
    }

    #[test]
    fn awkward_values_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = entry("iris", 1);
        e.actor = "bob \"the\" builder\nüñí\u{1F600}\u{7}".into();
        e.before = json!([
            1e300,
            -0.0,
            5e-324,
            0.1,
            1.7976931348623157e308,
            u64::MAX,
            i64::MIN
        ]);
        e.after = json!({"\u{e9}": 1, "e": 2, "E": 3, "": null});
        e.evidence = Value::Null;
        append(dir.path(), e.clone()).unwrap();
        append(dir.path(), e).unwrap();
        assert_eq!(verify(&log_path(dir.path())).unwrap().records, 2);
    }

    #[test]
    fn time_format() {
        let at = |secs: u64, millis: u64| {
            format_time(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_795_694_400, 0), "2026-11-26T12:00:00.000Z");
        assert_eq!(at(1_795_694_400, 123), "2026-11-26T12:00:00.123Z");
        assert_eq!(at(951_868_799, 999), "2000-02-29T23:59:59.999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
        assert_eq!(at(1_709_164_800, 0), "2024-02-29T00:00:00.000Z");
        assert_eq!(at(946_684_799, 5), "1999-12-31T23:59:59.005Z");
        assert_eq!(
            format_time(UNIX_EPOCH - Duration::from_secs(10)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn civil_dates_match_day_by_day_count() {
        // Walk day by day from 1970 through 2500 and compare.
        let leap =
            |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
        let month_len = |y: u64, m: u64| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for days in 0..(531 * 366) {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            d += 1;
            if d > month_len(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
