//! Scanning, publishing and verifying against a real filesystem.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;
use sluice_registry::{
    MANIFEST_FILE, MODEL_FILE, Manifest, RegistryError, Repository, Verification, VersionEntry,
    parse_version, validate_model_name, verify,
};
use tempfile::TempDir;

/// SHA-256 of `b"abc"`.
const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

/// A repository at `<tempdir>/repo`; source files go to `<tempdir>/src`.
fn repo() -> (TempDir, Repository) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    fs::create_dir(&root).unwrap();
    let repo = Repository::open(root).unwrap();
    (dir, repo)
}

/// A source file outside the repository.
fn source(dir: &TempDir, name: &str, content: &[u8]) -> PathBuf {
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let path = src.join(name);
    fs::write(&path, content).unwrap();
    path
}

fn versions(repo: &Repository, model: &str) -> BTreeSet<u64> {
    repo.scan().unwrap().models[model].available_versions()
}

fn temp_dirs_left(model_dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(model_dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-publish-"))
        .collect()
}

fn entry(repo: &Repository, model: &str, version: u64) -> VersionEntry {
    repo.scan().unwrap().models[model].versions[&version].clone()
}

// ---------------------------------------------------------------- open/scan

#[test]
fn open_requires_an_existing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let err = Repository::open(&missing).unwrap_err();
    assert!(matches!(err, RegistryError::RootMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("missing"), "{err}");

    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    let err = Repository::open(&file).unwrap_err();
    assert!(
        matches!(err, RegistryError::RootNotDirectory { .. }),
        "{err:?}"
    );

    let repo = Repository::open(dir.path()).unwrap();
    assert_eq!(repo.root(), dir.path());
}

#[test]
fn scan_of_an_empty_repository_is_empty() {
    let (_dir, repo) = repo();
    assert!(repo.scan().unwrap().models.is_empty());
}

#[test]
fn scan_lists_models_and_versions_and_ignores_everything_else() {
    let (_dir, repo) = repo();
    let root = repo.root();
    let mkdir = |p: &str| fs::create_dir_all(root.join(p)).unwrap();
    let touch = |p: &str| fs::write(root.join(p), b"onnx").unwrap();

    // A good model with two versions, one of them published by hand.
    mkdir("iris/1");
    touch("iris/1/model.onnx");
    mkdir("iris/12");
    touch("iris/12/model.onnx");
    touch("iris/12/manifest.json");
    // A version directory without its model file is still listed.
    mkdir("iris/3");
    // Not versions: hidden, non-numeric, zero, leading zeros, signs, overflow, files.
    for ignored in [
        "iris/.tmp-publish-1-2",
        "iris/.5",
        "iris/v2",
        "iris/latest",
        "iris/0",
        "iris/00",
        "iris/007",
        "iris/+4",
        "iris/-4",
        "iris/4a",
        "iris/99999999999999999999999",
    ] {
        mkdir(ignored);
        touch(&format!("{ignored}/model.onnx"));
    }
    touch("iris/5"); // a file named like a version
    touch("iris/README.md");
    // Other models, with names at the edge of the rules.
    mkdir("resnet-50_v1.2/2");
    // Not models: hidden, invalid names, files.
    mkdir(".git/1");
    mkdir(".hidden-model/1");
    mkdir("bad name/1");
    mkdir("ünïcode/1");
    mkdir("semi;colon/1");
    touch("notes.txt");
    touch("model.onnx");

    let scan = repo.scan().unwrap();
    let names: Vec<&str> = scan.models.keys().map(String::as_str).collect();
    assert_eq!(names, ["iris", "resnet-50_v1.2"]);

    let iris = &scan.models["iris"];
    assert_eq!(iris.name, "iris");
    assert_eq!(iris.dir, root.join("iris"));
    assert_eq!(iris.available_versions(), [1, 3, 12].into());

    let v1 = &iris.versions[&1];
    assert_eq!(v1.version, 1);
    assert_eq!(v1.dir, root.join("iris/1"));
    assert_eq!(v1.model_file, root.join("iris/1").join(MODEL_FILE));
    assert!(v1.model_present);
    assert_eq!(v1.manifest_file, None);

    let v12 = &iris.versions[&12];
    assert!(v12.model_present);
    assert_eq!(
        v12.manifest_file,
        Some(root.join("iris/12").join(MANIFEST_FILE))
    );

    let v3 = &iris.versions[&3];
    assert!(!v3.model_present);
    assert_eq!(v3.model_file, root.join("iris/3/model.onnx"));

    assert_eq!(
        scan.models["resnet-50_v1.2"].available_versions(),
        [2].into()
    );
}

#[test]
fn a_directory_named_model_onnx_is_not_a_model_file() {
    let (_dir, repo) = repo();
    fs::create_dir_all(repo.root().join("m/1/model.onnx")).unwrap();
    assert!(!entry(&repo, "m", 1).model_present);
}

#[test]
fn model_names_and_version_names() {
    for good in ["iris", "a", "A-b_c.d", "resnet50", "x.", "1"] {
        validate_model_name(good).unwrap();
    }
    for bad in [
        "", ".", "..", ".iris", "a b", "a/b", "a\\b", "ä", "a:b", "a\n",
    ] {
        let err = validate_model_name(bad).unwrap_err();
        assert!(
            matches!(err, RegistryError::InvalidModelName { .. }),
            "{bad:?}: {err:?}"
        );
    }
    assert_eq!(parse_version("1"), Some(1));
    assert_eq!(parse_version("42"), Some(42));
    assert_eq!(parse_version("18446744073709551615"), Some(u64::MAX));
    for bad in [
        "",
        "0",
        "01",
        "+1",
        "-1",
        " 1",
        "1 ",
        "1.0",
        "x",
        "18446744073709551616",
    ] {
        assert_eq!(parse_version(bad), None, "{bad:?}");
    }
}

// ------------------------------------------------------------------ publish

#[test]
fn publish_creates_version_1_then_2() {
    let (dir, repo) = repo();
    let file = source(&dir, "iris.onnx", b"abc");

    let first = repo
        .publish("iris", &file, None, Default::default())
        .unwrap();
    assert_eq!(first.model, "iris");
    assert_eq!(first.version, 1);
    assert_eq!(first.dir, repo.root().join("iris/1"));
    assert_eq!(fs::read(first.dir.join(MODEL_FILE)).unwrap(), b"abc");

    let second = repo
        .publish("iris", &file, None, Default::default())
        .unwrap();
    assert_eq!(second.version, 2);
    assert_eq!(versions(&repo, "iris"), [1, 2].into());
    assert!(temp_dirs_left(&repo.root().join("iris")).is_empty());
}

#[test]
fn publish_writes_a_complete_manifest() {
    let (dir, repo) = repo();
    let file = source(&dir, "iris.onnx", b"abc");
    let mut lineage = serde_json::Map::new();
    lineage.insert("git_commit".into(), json!("4e1f0c2"));
    lineage.insert("metrics".into(), json!({ "accuracy": 0.97 }));

    let published = repo.publish("iris", &file, None, lineage.clone()).unwrap();
    let m = &published.manifest;
    assert_eq!(m.schema, 1);
    assert_eq!(m.model, "iris");
    assert_eq!(m.version, 1);
    assert_eq!(m.file, "model.onnx");
    assert_eq!(m.sha256, ABC_SHA256);
    assert_eq!(m.size_bytes, 3);
    assert_eq!(m.source_file, file.to_string_lossy());
    assert_eq!(m.lineage, lineage);
    // RFC 3339 UTC to the second: 2026-11-26T08:44:17Z
    let c = m.created.as_bytes();
    assert_eq!(c.len(), 20, "{}", m.created);
    for (i, b) in c.iter().enumerate() {
        match i {
            4 | 7 => assert_eq!(*b, b'-'),
            10 => assert_eq!(*b, b'T'),
            13 | 16 => assert_eq!(*b, b':'),
            19 => assert_eq!(*b, b'Z'),
            _ => assert!(b.is_ascii_digit(), "{}", m.created),
        }
    }
    assert!(
        m.created.as_str() >= "2025-01-01T00:00:00Z",
        "{}",
        m.created
    );

    // What is on disk is what was returned.
    let on_disk: Manifest =
        serde_json::from_slice(&fs::read(published.dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(&on_disk, m);

    assert_eq!(
        verify(&entry(&repo, "iris", 1), "iris").unwrap(),
        Verification::Verified(m.clone())
    );
}

#[test]
fn publish_honors_an_explicit_version_and_continues_from_the_highest() {
    let (dir, repo) = repo();
    let file = source(&dir, "m.onnx", b"abc");
    assert_eq!(
        repo.publish("m", &file, Some(7), Default::default())
            .unwrap()
            .version,
        7
    );
    assert_eq!(
        repo.publish("m", &file, Some(3), Default::default())
            .unwrap()
            .version,
        3
    );
    assert_eq!(
        repo.publish("m", &file, None, Default::default())
            .unwrap()
            .version,
        8
    );
    assert_eq!(versions(&repo, "m"), [3, 7, 8].into());
}

#[test]
fn next_version_ignores_non_version_entries() {
    let (dir, repo) = repo();
    for d in ["m/2", "m/0100", "m/v9", "m/.tmp-publish-1-1"] {
        fs::create_dir_all(repo.root().join(d)).unwrap();
    }
    let file = source(&dir, "m.onnx", b"abc");
    let published = repo.publish("m", &file, None, Default::default()).unwrap();
    assert_eq!(published.version, 3);
}

#[test]
fn publish_refuses_an_existing_version() {
    let (dir, repo) = repo();
    let old = source(&dir, "old.onnx", b"old");
    let new = source(&dir, "new.onnx", b"new");
    repo.publish("m", &old, None, Default::default()).unwrap();
    // An empty directory counts as existing too.
    fs::create_dir(repo.root().join("m/2")).unwrap();

    for version in [1, 2] {
        let err = repo
            .publish("m", &new, Some(version), Default::default())
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::VersionExists { version: v, .. } if v == version),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&format!("version {version}")), "{msg}");
        assert!(msg.contains("\"m\""), "{msg}");
    }
    assert_eq!(
        fs::read(repo.root().join("m/1/model.onnx")).unwrap(),
        b"old"
    );
    assert!(temp_dirs_left(&repo.root().join("m")).is_empty());
}

#[test]
fn publish_refuses_missing_empty_and_non_file_sources() {
    let (dir, repo) = repo();

    let missing = dir.path().join("src/missing.onnx");
    let err = repo
        .publish("m", &missing, None, Default::default())
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::SourceMissing { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("missing.onnx"), "{err}");

    let empty = source(&dir, "empty.onnx", b"");
    let err = repo
        .publish("m", &empty, None, Default::default())
        .unwrap_err();
    assert!(matches!(err, RegistryError::SourceEmpty { .. }), "{err:?}");
    assert!(err.to_string().contains("empty.onnx"), "{err}");

    let err = repo
        .publish("m", &dir.path().join("src"), None, Default::default())
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::SourceNotAFile { .. }),
        "{err:?}"
    );

    // Nothing was created.
    assert!(!repo.root().join("m").exists());
    assert!(repo.scan().unwrap().models.is_empty());
}

#[test]
fn publish_refuses_invalid_names_and_version_zero() {
    let (dir, repo) = repo();
    let file = source(&dir, "m.onnx", b"abc");
    for name in ["", ".m", "../escape", "a/b", "a b"] {
        let err = repo
            .publish(name, &file, None, Default::default())
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::InvalidModelName { .. }),
            "{name:?}: {err:?}"
        );
    }
    let err = repo
        .publish("m", &file, Some(0), Default::default())
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::InvalidVersion { .. }),
        "{err:?}"
    );
    assert!(!repo.root().join("m").exists());
    assert!(!dir.path().join("escape").exists());
}

#[test]
fn publish_where_the_model_path_is_a_file_fails_cleanly() {
    let (dir, repo) = repo();
    fs::write(repo.root().join("m"), b"not a directory").unwrap();
    let file = source(&dir, "m.onnx", b"abc");
    let err = repo
        .publish("m", &file, None, Default::default())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&repo.root().join("m").display().to_string()),
        "{err}"
    );
    assert_eq!(fs::read(repo.root().join("m")).unwrap(), b"not a directory");
}

#[test]
fn publish_copies_large_files_exactly() {
    let (dir, repo) = repo();
    // Several copy buffers long, not a multiple of the buffer size.
    let content: Vec<u8> = (0..1_234_567u32).map(|i| (i * 31 % 251) as u8).collect();
    let file = source(&dir, "big.onnx", &content);
    let published = repo
        .publish("big", &file, None, Default::default())
        .unwrap();
    assert_eq!(fs::read(published.dir.join(MODEL_FILE)).unwrap(), content);
    assert_eq!(published.manifest.size_bytes, content.len() as u64);
    assert!(matches!(
        verify(&entry(&repo, "big", 1), "big").unwrap(),
        Verification::Verified(_)
    ));
}

// ------------------------------------------------------------------- verify

#[test]
fn verify_without_manifest_is_unverified() {
    let (_dir, repo) = repo();
    fs::create_dir_all(repo.root().join("m/1")).unwrap();
    fs::write(repo.root().join("m/1/model.onnx"), b"abc").unwrap();
    assert_eq!(
        verify(&entry(&repo, "m", 1), "m").unwrap(),
        Verification::Unverified
    );
}

#[test]
fn verify_rejects_a_missing_model_file() {
    let (dir, repo) = repo();
    fs::create_dir_all(repo.root().join("m/4")).unwrap();
    let err = verify(&entry(&repo, "m", 4), "m").unwrap_err();
    assert!(
        matches!(err, RegistryError::ModelFileMissing { version: 4, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("m/4/model.onnx"), "{msg}");

    // Also when it disappears after the scan.
    let file = source(&dir, "m.onnx", b"abc");
    repo.publish("m", &file, Some(5), Default::default())
        .unwrap();
    let e = entry(&repo, "m", 5);
    fs::remove_file(&e.model_file).unwrap();
    assert!(matches!(
        verify(&e, "m").unwrap_err(),
        RegistryError::ModelFileMissing { .. }
    ));
}

#[test]
fn verify_rejects_a_tampered_model_file() {
    let (dir, repo) = repo();
    let file = source(&dir, "m.onnx", b"abc");
    let published = repo.publish("m", &file, None, Default::default()).unwrap();
    // Same size, different content.
    fs::write(published.dir.join(MODEL_FILE), b"abd").unwrap();

    let err = verify(&entry(&repo, "m", 1), "m").unwrap_err();
    let RegistryError::HashMismatch {
        path,
        expected,
        actual,
    } = &err
    else {
        panic!("expected a hash mismatch, got {err:?}");
    };
    assert_eq!(path, &published.dir.join(MANIFEST_FILE));
    assert_eq!(expected, ABC_SHA256);
    assert_ne!(actual, ABC_SHA256);
    let msg = err.to_string();
    assert!(msg.contains("m/1/manifest.json"), "{msg}");
    assert!(msg.contains(ABC_SHA256), "{msg}");
    assert!(msg.contains(actual.as_str()), "{msg}");
    assert!(msg.contains("model.onnx"), "{msg}");
}

#[test]
fn verify_rejects_a_model_file_of_the_wrong_size() {
    let (dir, repo) = repo();
    let file = source(&dir, "m.onnx", b"abc");
    let published = repo.publish("m", &file, None, Default::default()).unwrap();
    fs::write(published.dir.join(MODEL_FILE), b"abcd").unwrap();
    let err = verify(&entry(&repo, "m", 1), "m").unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::SizeMismatch {
                expected: 3,
                actual: 4,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("manifest.json"), "{err}");
}

#[test]
fn verify_rejects_a_malformed_manifest() {
    let (dir, repo) = repo();
    let file = source(&dir, "m.onnx", b"abc");
    let published = repo.publish("m", &file, None, Default::default()).unwrap();
    let manifest_path = published.dir.join(MANIFEST_FILE);

    fs::write(&manifest_path, b"{ \"schema\": 1, ").unwrap();
    let err = verify(&entry(&repo, "m", 1), "m").unwrap_err();
    assert!(
        matches!(err, RegistryError::ManifestMalformed { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&manifest_path.display().to_string()),
        "{err}"
    );

    // Valid JSON, but a field is missing.
    fs::write(&manifest_path, br#"{ "schema": 1, "model": "m" }"#).unwrap();
    let err = verify(&entry(&repo, "m", 1), "m").unwrap_err();
    assert!(err.to_string().contains("missing field"), "{err}");

    // An unknown field.
    let mut value: serde_json::Value = serde_json::to_value(&published.manifest).unwrap();
    value["signed_by"] = json!("me");
    fs::write(&manifest_path, serde_json::to_vec(&value).unwrap()).unwrap();
    let err = verify(&entry(&repo, "m", 1), "m").unwrap_err();
    assert!(err.to_string().contains("signed_by"), "{err}");

    // A schema from the future.
    value = serde_json::to_value(&published.manifest).unwrap();
    value["schema"] = json!(2);
    fs::write(&manifest_path, serde_json::to_vec(&value).unwrap()).unwrap();
    let err = verify(&entry(&repo, "m", 1), "m").unwrap_err();
    assert!(
        matches!(err, RegistryError::ManifestSchema { schema: 2, .. }),
        "{err:?}"
    );
}

#[test]
fn verify_rejects_a_manifest_for_another_model_or_version() {
    let (dir, repo) = repo();
    let file = source(&dir, "m.onnx", b"abc");
    let published = repo
        .publish("iris", &file, None, Default::default())
        .unwrap();

    // Copied into another model.
    fs::create_dir_all(repo.root().join("other")).unwrap();
    let copy = repo.root().join("other/1");
    fs::create_dir(&copy).unwrap();
    for f in [MODEL_FILE, MANIFEST_FILE] {
        fs::copy(published.dir.join(f), copy.join(f)).unwrap();
    }
    let err = verify(&entry(&repo, "other", 1), "other").unwrap_err();
    assert!(
        matches!(&err, RegistryError::ManifestWrongModel { expected, found, .. } if expected == "other" && found == "iris"),
        "{err:?}"
    );
    assert!(err.to_string().contains("other/1/manifest.json"), "{err}");

    // Renamed to another version.
    fs::rename(&published.dir, repo.root().join("iris/9")).unwrap();
    let err = verify(&entry(&repo, "iris", 9), "iris").unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::ManifestWrongVersion {
                expected: 9,
                found: 1,
                ..
            }
        ),
        "{err:?}"
    );

    // Pointing at another file.
    let mut manifest = published.manifest.clone();
    manifest.file = "weights.bin".into();
    fs::write(
        repo.root().join("iris/9/manifest.json"),
        serde_json::to_vec(&Manifest {
            version: 9,
            ..manifest
        })
        .unwrap(),
    )
    .unwrap();
    let err = verify(&entry(&repo, "iris", 9), "iris").unwrap_err();
    assert!(
        matches!(err, RegistryError::ManifestWrongFile { .. }),
        "{err:?}"
    );
}

// -------------------------------------------------------------- fingerprint

#[test]
fn fingerprint_is_stable_without_changes() {
    let (dir, repo) = repo();
    let file = source(&dir, "m.onnx", b"abc");
    repo.publish("m", &file, None, Default::default()).unwrap();
    let a = entry(&repo, "m", 1);
    // Reading the files (verify) is not a change.
    verify(&a, "m").unwrap();
    let b = entry(&repo, "m", 1);
    assert_eq!(a.fingerprint, b.fingerprint);
    assert_eq!(a, b);
}

#[test]
fn fingerprint_changes_when_model_onnx_is_replaced() {
    let (dir, repo) = repo();
    let file = source(&dir, "m.onnx", b"abc");
    let published = repo.publish("m", &file, None, Default::default()).unwrap();
    let before = entry(&repo, "m", 1).fingerprint;

    // Replaced by rename (new inode), same size.
    let staged = published.dir.join("model.onnx.new");
    fs::write(&staged, b"xyz").unwrap();
    fs::rename(&staged, published.dir.join(MODEL_FILE)).unwrap();
    let after_replace = entry(&repo, "m", 1).fingerprint;
    assert_ne!(before, after_replace);

    // Rewritten in place, same size.
    fs::write(published.dir.join(MODEL_FILE), b"uvw").unwrap();
    let after_rewrite = entry(&repo, "m", 1).fingerprint;
    assert_ne!(after_replace, after_rewrite);

    // Manifest removed.
    fs::remove_file(published.dir.join(MANIFEST_FILE)).unwrap();
    assert_ne!(after_rewrite, entry(&repo, "m", 1).fingerprint);
}

#[test]
fn fingerprint_changes_when_the_manifest_changes() {
    let (dir, repo) = repo();
    let file = source(&dir, "m.onnx", b"abc");
    let published = repo.publish("m", &file, None, Default::default()).unwrap();
    let before = entry(&repo, "m", 1).fingerprint;
    let path = published.dir.join(MANIFEST_FILE);
    let mut text = fs::read_to_string(&path).unwrap();
    text.push(' ');
    fs::write(&path, text).unwrap();
    assert_ne!(before, entry(&repo, "m", 1).fingerprint);
}
