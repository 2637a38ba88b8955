//! `manifest.json`: what `publish` records about a version, and [`verify`].

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::signing::read_signature_file;
use crate::{
    MANIFEST_FILE, MODEL_FILE, RegistryError, SIGNATURE_FILE, SignatureError, Signer, TrustedKeys,
    VersionEntry,
};

/// The manifest schema this crate writes and reads.
pub const MANIFEST_SCHEMA: u32 = 1;

/// The contents of `<root>/<model>/<version>/manifest.json`.
///
/// Written by [`Repository::publish`](crate::Repository::publish) after the
/// model file is safely on disk; checked by [`verify`]. Unknown fields are an
/// error, so a manifest from a newer Sluice is refused rather than half-read.
///
/// ```json
/// {
///   "schema": 1,
///   "model": "iris",
///   "version": 3,
///   "file": "model.onnx",
///   "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
///   "size_bytes": 1337,
///   "created": "2026-11-26T08:44:17Z",
///   "source_file": "out/iris.onnx",
///   "lineage": { "git_commit": "4e1f0c2", "dataset": "iris-v2" }
/// }
/// ```
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_SCHEMA`] (1).
    pub schema: u32,
    /// The model this version belongs to.
    pub model: String,
    /// The version number, equal to the directory name.
    pub version: u64,
    /// The model file's name inside the version directory: `"model.onnx"`.
    pub file: String,
    /// SHA-256 of the model file, lowercase hex.
    pub sha256: String,
    /// Length of the model file in bytes.
    pub size_bytes: u64,
    /// When it was published, RFC 3339 UTC to the second (`2026-11-26T08:44:17Z`).
    pub created: String,
    /// The path `publish` was given, as given (relative paths stay relative).
    pub source_file: String,
    /// Free-form provenance from the publisher: training run, dataset, git
    /// commit... Sluice stores and reports it, and reads nothing in it.
    #[serde(default)]
    pub lineage: serde_json::Map<String, serde_json::Value>,
    /// The latest validation report of this version (`sluice models
    /// validate`), when there is one. Boxed: most manifests have none, and
    /// a manifest is held in enums whose variants should stay small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Box<ValidationRecord>>,
}

/// A validation report as a manifest records it: which file, its hash,
/// whether every check passed, and when it was made.
///
/// ```json
/// "validation": {
///   "file": "validation.json",
///   "sha256": "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
///   "passed": true,
///   "created": "2026-11-27T10:02:31Z"
/// }
/// ```
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ValidationRecord {
    /// The report's file name inside the version directory: `"validation.json"`.
    pub file: String,
    /// SHA-256 of the report file, lowercase hex.
    pub sha256: String,
    /// Whether every check of the report passed.
    pub passed: bool,
    /// When the report was made, RFC 3339 UTC to the second.
    pub created: String,
}

/// The outcome of a successful [`verify`].
#[derive(Debug, Clone, PartialEq)]
pub enum Verification {
    /// `manifest.json` exists, names this model and version, and `model.onnx`
    /// has exactly the size and SHA-256 it records.
    Verified(Manifest),
    /// There is no `manifest.json` (a version copied in by hand); `model.onnx`
    /// exists but nothing vouches for its content.
    Unverified,
    /// As `Verified`, and `manifest.sig` is a signature over the exact bytes
    /// of `manifest.json` by a trusted key (only from [`verify_signed`]).
    Signed { manifest: Manifest, signer: Signer },
}

impl Verification {
    /// The manifest, when there is one.
    pub fn manifest(&self) -> Option<&Manifest> {
        match self {
            Verification::Verified(manifest) | Verification::Signed { manifest, .. } => {
                Some(manifest)
            }
            Verification::Unverified => None,
        }
    }

    /// Who signed the version, when its signature was checked.
    pub fn signer(&self) -> Option<&Signer> {
        match self {
            Verification::Signed { signer, .. } => Some(signer),
            _ => None,
        }
    }
}

/// Checks a version's files against its manifest, reading and hashing
/// `model.onnx`. `model` is the name of the model the version belongs to.
///
/// The disk is read afresh; `entry` only supplies the paths, so a stale entry
/// is harmless. Returns:
///
/// * `Ok(Verified(manifest))` when `manifest.json` exists and its model,
///   version, file, size and sha256 all match;
/// * `Ok(Unverified)` when there is no `manifest.json` but `model.onnx` exists;
/// * `Err` otherwise, with a message naming the file and the mismatch:
///   [`ModelFileMissing`](RegistryError::ModelFileMissing),
///   [`ManifestMalformed`](RegistryError::ManifestMalformed),
///   [`ManifestSchema`](RegistryError::ManifestSchema),
///   [`ManifestWrongModel`](RegistryError::ManifestWrongModel),
///   [`ManifestWrongVersion`](RegistryError::ManifestWrongVersion),
///   [`ManifestWrongFile`](RegistryError::ManifestWrongFile),
///   [`SizeMismatch`](RegistryError::SizeMismatch),
///   [`HashMismatch`](RegistryError::HashMismatch) or an I/O error.
pub fn verify(entry: &VersionEntry, model: &str) -> Result<Verification, RegistryError> {
    verify_signed(entry, model, None)
}

/// [`verify`], and with `trusted` keys the signature too: the version
/// verifies only if `manifest.json` and `manifest.sig` exist and the
/// signature, by a key in `trusted`, is over the exact bytes of the
/// manifest; it is checked before the manifest is parsed or the model
/// hashed. Otherwise [`Signature`](RegistryError::Signature) says why
/// (unsigned, untrusted key, does not verify, malformed). Success is
/// [`Verification::Signed`], naming the signer.
///
/// Without trusted keys (`None`) `manifest.sig` is not read: there is no
/// key to check it with, so it vouches for nothing, and a version that
/// has one verifies (or not) exactly as one without.
pub fn verify_signed(
    entry: &VersionEntry,
    model: &str,
    trusted: Option<&TrustedKeys>,
) -> Result<Verification, RegistryError> {
    let model_file = entry.dir.join(MODEL_FILE);
    let missing = || RegistryError::ModelFileMissing {
        model: model.to_owned(),
        version: entry.version,
        path: model_file.clone(),
    };
    match std::fs::metadata(&model_file) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(missing()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(RegistryError::io("stat", &model_file, e)),
    }

    let manifest_path = entry.dir.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&manifest_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return match trusted {
                Some(_) => Err(RegistryError::Signature {
                    path: manifest_path,
                    reason: SignatureError::Unsigned {
                        what: MANIFEST_FILE,
                    },
                }),
                None => Ok(Verification::Unverified),
            };
        }
        Err(e) => return Err(RegistryError::io("read", &manifest_path, e)),
    };
    let signer = match trusted {
        Some(trusted) => Some(check_signature(&entry.dir, &bytes, trusted)?),
        None => None,
    };
    let manifest = parse_manifest(&bytes, &manifest_path)?;
    if manifest.model != model {
        return Err(RegistryError::ManifestWrongModel {
            path: manifest_path,
            expected: model.to_owned(),
            found: manifest.model,
        });
    }
    if manifest.version != entry.version {
        return Err(RegistryError::ManifestWrongVersion {
            path: manifest_path,
            expected: entry.version,
            found: manifest.version,
        });
    }
    if manifest.file != MODEL_FILE {
        return Err(RegistryError::ManifestWrongFile {
            path: manifest_path,
            found: manifest.file,
        });
    }

    let (size, sha256) = hash_file(&model_file)?;
    if size != manifest.size_bytes {
        return Err(RegistryError::SizeMismatch {
            path: manifest_path,
            expected: manifest.size_bytes,
            actual: size,
        });
    }
    if !sha256.eq_ignore_ascii_case(&manifest.sha256) {
        return Err(RegistryError::HashMismatch {
            path: manifest_path,
            expected: manifest.sha256,
            actual: sha256,
        });
    }
    Ok(match signer {
        Some(signer) => Verification::Signed { manifest, signer },
        None => Verification::Verified(manifest),
    })
}

/// Checks `manifest.sig` in `dir` against the manifest's bytes.
fn check_signature(
    dir: &Path,
    manifest: &[u8],
    trusted: &TrustedKeys,
) -> Result<Signer, RegistryError> {
    let path = dir.join(SIGNATURE_FILE);
    let reason = match read_signature_file(dir)? {
        None => SignatureError::Unsigned {
            what: SIGNATURE_FILE,
        },
        Some(signature) => match trusted.verify(manifest, &signature) {
            Ok(signer) => return Ok(signer),
            Err(reason) => reason,
        },
    };
    Err(RegistryError::Signature { path, reason })
}

/// Parses `manifest.json` bytes; `path` names the file in errors.
pub fn parse_manifest(bytes: &[u8], path: &Path) -> Result<Manifest, RegistryError> {
    // Look at the schema first, so a manifest from a future Sluice gets
    // "schema 2 is not supported" instead of "unknown field".
    #[derive(Deserialize)]
    struct SchemaOnly {
        schema: u32,
    }
    let malformed = |e: serde_json::Error| RegistryError::ManifestMalformed {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let SchemaOnly { schema } = serde_json::from_slice(bytes).map_err(malformed)?;
    if schema != MANIFEST_SCHEMA {
        return Err(RegistryError::ManifestSchema {
            path: path.to_owned(),
            schema,
        });
    }
    serde_json::from_slice(bytes).map_err(malformed)
}

/// The length and SHA-256 (lowercase hex) of the file at `path`, read in
/// one streaming pass.
pub fn hash_file(path: &Path) -> Result<(u64, String), RegistryError> {
    let file = File::open(path).map_err(|e| RegistryError::io("open", path, e))?;
    hash_reader(file, io::sink()).map_err(|e| match e {
        CopyError::Read(e) | CopyError::Write(e) => RegistryError::io("read", path, e),
    })
}

/// Which end of a [`hash_reader`] copy failed.
#[derive(Debug)]
pub(crate) enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `reader` to `writer` in one pass, hashing what goes through.
/// Returns the byte count and the lowercase hex SHA-256.
pub(crate) fn hash_reader(
    mut reader: impl Read,
    mut writer: impl io::Write,
) -> Result<(u64, String), CopyError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
    Ok((total, hex::encode(hasher.finalize())))
}

/// Formats `t` as RFC 3339 UTC to the second: `2026-11-26T08:44:17Z`.
/// Times before 1970 are clamped to the epoch.
pub fn format_rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), after
/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of (March-based) year
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> String {
        format_rfc3339(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(1_798_274_657), "2026-12-26T08:44:17Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(
            format_rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn hash_reader_copies_and_hashes() {
        let mut out = Vec::new();
        let (n, h) = hash_reader(&b"abc"[..], &mut out).unwrap();
        assert_eq!(n, 3);
        assert_eq!(out, b"abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
