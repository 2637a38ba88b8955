//! Signed versions end to end in the registry: publish with a key (to a
//! directory and to object storage), sync, and verify with trusted keys.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use object_store::memory::InMemory;
use sluice_registry::{
    MANIFEST_FILE, PrivateKey, RegistryError, RemoteRegistry, Repository, SIGNATURE_FILE,
    SignatureError, TrustedKeys, Verification, VersionEntry, sign_manifest_file, verify,
    verify_signed,
};

fn trusted(keys: &[(&PrivateKey, &str)]) -> TrustedKeys {
    let text: String = keys
        .iter()
        .map(|(key, name)| format!("# name: {name}\n{}", key.public_key_pem().unwrap()))
        .collect();
    TrustedKeys::parse(&text, Path::new("trusted.pem")).unwrap()
}

fn entry(repo: &Repository, model: &str, version: u64) -> VersionEntry {
    repo.scan().unwrap().models[model].versions[&version].clone()
}

fn signature_error(result: Result<Verification, RegistryError>) -> SignatureError {
    match result {
        Err(RegistryError::Signature { reason, .. }) => reason,
        other => panic!("expected a signature error, got {other:?}"),
    }
}

#[test]
fn a_published_signed_version_verifies_and_every_tampering_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    fs::create_dir(&root).unwrap();
    let repo = Repository::open(&root).unwrap();
    let source = dir.path().join("m.onnx");
    fs::write(&source, b"not really onnx").unwrap();
    let alice = PrivateKey::generate().unwrap();
    let mallory = PrivateKey::generate().unwrap();
    let keys = trusted(&[(&alice, "alice")]);

    let published = repo
        .publish_signed("m", &source, None, Default::default(), Some(&alice))
        .unwrap();
    assert!(published.dir.join(SIGNATURE_FILE).is_file());
    let verified = verify_signed(&entry(&repo, "m", 1), "m", Some(&keys)).unwrap();
    let signer = verified.signer().unwrap();
    assert_eq!(
        (signer.key_id.as_str(), signer.name.as_str()),
        (alice.key_id(), "alice")
    );
    assert_eq!(verified.manifest(), Some(&published.manifest));
    // Without trusted keys the signature is not read: plain Verified.
    assert!(matches!(
        verify(&entry(&repo, "m", 1), "m").unwrap(),
        Verification::Verified(_)
    ));

    // One byte of the manifest changed after signing (the fingerprint sees
    // it, and the signature no longer verifies).
    let before = entry(&repo, "m", 1).fingerprint;
    let manifest_path = published.dir.join(MANIFEST_FILE);
    let original = fs::read(&manifest_path).unwrap();
    let mut changed = original.clone();
    let at = changed.len() - 3;
    changed[at] = b' ';
    fs::write(&manifest_path, &changed).unwrap();
    assert_ne!(entry(&repo, "m", 1).fingerprint, before);
    let reason = signature_error(verify_signed(&entry(&repo, "m", 1), "m", Some(&keys)));
    assert!(
        matches!(&reason, SignatureError::DoesNotVerify { signer } if signer.name == "alice"),
        "{reason}"
    );
    assert!(
        reason
            .to_string()
            .contains("manifest changed after signing")
    );
    fs::write(&manifest_path, &original).unwrap();

    // Re-signed by an untrusted key; the fingerprint sees the new signature.
    let before = entry(&repo, "m", 1).fingerprint;
    let mallory_path = dir.path().join("mallory.key");
    fs::write(&mallory_path, mallory.to_pkcs8_pem().unwrap()).unwrap();
    sign_manifest_file(&published.dir, &mallory_path).unwrap();
    assert_ne!(entry(&repo, "m", 1).fingerprint, before);
    let err = verify_signed(&entry(&repo, "m", 1), "m", Some(&keys)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: signed by an untrusted key {}",
            published.dir.join(SIGNATURE_FILE).display(),
            mallory.key_id()
        )
    );

    // A garbled signature file.
    fs::write(published.dir.join(SIGNATURE_FILE), b"{\"schema\": 1").unwrap();
    assert!(matches!(
        signature_error(verify_signed(&entry(&repo, "m", 1), "m", Some(&keys))),
        SignatureError::Malformed { .. }
    ));

    // Unsigned: no manifest.sig, or no manifest at all.
    fs::remove_file(published.dir.join(SIGNATURE_FILE)).unwrap();
    assert_eq!(
        signature_error(verify_signed(&entry(&repo, "m", 1), "m", Some(&keys))),
        SignatureError::Unsigned {
            what: SIGNATURE_FILE
        }
    );
    fs::remove_file(&manifest_path).unwrap();
    assert_eq!(
        signature_error(verify_signed(&entry(&repo, "m", 1), "m", Some(&keys))),
        SignatureError::Unsigned {
            what: MANIFEST_FILE
        }
    );
    assert_eq!(
        verify(&entry(&repo, "m", 1), "m").unwrap(),
        Verification::Unverified
    );
}

#[test]
fn a_signed_manifest_does_not_vouch_for_a_changed_model() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    let source = dir.path().join("m.onnx");
    fs::write(&source, b"weights").unwrap();
    let key = PrivateKey::generate().unwrap();
    let published = repo
        .publish_signed("m", &source, None, Default::default(), Some(&key))
        .unwrap();
    fs::write(published.dir.join("model.onnx"), b"WEIGHTS").unwrap();
    let err = verify_signed(&entry(&repo, "m", 1), "m", Some(&trusted(&[(&key, "k")])));
    assert!(
        matches!(err, Err(RegistryError::HashMismatch { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn object_storage_publish_uploads_the_signature_and_sync_brings_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let cache = dir.path().join("cache");
    let registry =
        RemoteRegistry::with_store("memory://bucket/models", store, "models", &cache).unwrap();
    let source = dir.path().join("m.onnx");
    fs::write(&source, b"weights").unwrap();
    let key = PrivateKey::generate().unwrap();
    registry
        .publish_signed("m", &source, None, Default::default(), Some(&key))
        .await
        .unwrap();
    assert!(
        registry
            .read(&format!("m/1/{SIGNATURE_FILE}"))
            .await
            .unwrap()
            .is_some()
    );
    // An unsigned one beside it.
    registry
        .publish("m", &source, None, Default::default())
        .await
        .unwrap();

    registry.sync().await.unwrap();
    assert!(cache.join("m/1").join(SIGNATURE_FILE).is_file());
    assert!(!cache.join("m/2").join(SIGNATURE_FILE).exists());
    let repo = Repository::open(&cache).unwrap();
    let keys = trusted(&[(&key, "ci")]);
    let verified = verify_signed(&entry(&repo, "m", 1), "m", Some(&keys)).unwrap();
    assert_eq!(verified.signer().unwrap().name, "ci");
    assert!(matches!(
        signature_error(verify_signed(&entry(&repo, "m", 2), "m", Some(&keys))),
        SignatureError::Unsigned { .. }
    ));
}
