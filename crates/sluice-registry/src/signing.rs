//! Signed manifests: Ed25519 signatures over `manifest.json`.
//!
//! A version is signed by a detached file beside its manifest:
//!
//! ```text
//! <root>/<model>/<version>/
//!   model.onnx
//!   manifest.json     sha256 and size of model.onnx, lineage...
//!   manifest.sig      {"schema":1,"algorithm":"ed25519","key_id":"...","signature":"<base64>"}
//! ```
//!
//! The signature covers `manifest.json` byte for byte, and the manifest
//! records the model file's SHA-256, so the model is covered too: changing
//! either (or swapping in another version's manifest) breaks the chain.
//!
//! Keys are in the formats every tool writes: a private key is PKCS#8 PEM
//! (`-----BEGIN PRIVATE KEY-----`, as `openssl genpkey -algorithm ed25519`
//! or `sluice models keygen` write it), a public key SPKI PEM
//! (`-----BEGIN PUBLIC KEY-----`, as `openssl pkey -pubout` writes it). A
//! key's id is the first 16 hex digits of SHA-256 over its 32 raw public
//! key bytes; the signature file names the key by that id.
//!
//! A trusted-keys file ([`TrustedKeys`]) is a bundle: any number of public
//! keys one after the other, each optionally preceded by a comment line
//! `# name: alice` that names it (otherwise its name is its id). Blank
//! lines and other `#` comments are allowed between keys; anything else is
//! an error, as is a private key or a key that is not Ed25519.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::spki::EncodePublicKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, KeypairBytes};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{MANIFEST_FILE, RegistryError, parse_manifest};

/// The signature file beside `manifest.json`.
pub const SIGNATURE_FILE: &str = "manifest.sig";

/// The schema of `manifest.sig` this crate writes and reads.
pub const SIGNATURE_SCHEMA: u32 = 1;

/// The only signature algorithm: Ed25519 (RFC 8032, pure, no pre-hash).
pub const SIGNATURE_ALGORITHM: &str = "ed25519";

/// A signature file is a few hundred bytes; anything much larger is not one
/// (and is not read into memory whole).
const MAX_SIGNATURE_FILE: u64 = 64 * 1024;

/// Key files (a private key, a bundle of public keys) are read up to this.
const MAX_KEY_FILE: u64 = 1024 * 1024;

/// Who signed a version: the key's id and its name in the trusted-keys
/// file (the id when it has none, or when the key signed and is not
/// looked up in a bundle).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signer {
    /// The first 16 hex digits of SHA-256 over the raw public key.
    pub key_id: String,
    /// From a `# name: ...` line before the key in the bundle, else the id.
    pub name: String,
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.name == self.key_id {
            write!(f, "key {}", self.key_id)
        } else {
            write!(f, "{} (key {})", self.name, self.key_id)
        }
    }
}

/// Why a version's signature was refused. Each message is the reason an
/// operator sees (in `POST /v2/repository/index` and the logs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// There is no `manifest.sig` (or no `manifest.json` to sign).
    #[error(
        "unsigned: {what} is missing and the server only loads versions signed by a trusted key"
    )]
    Unsigned { what: &'static str },
    /// `manifest.sig` names a key that is not in the trusted-keys file.
    #[error("signed by an untrusted key {key_id}")]
    UntrustedKey { key_id: String },
    /// The key is trusted, but the signature is not over these bytes.
    #[error("the signature by {signer} does not verify (manifest changed after signing?)")]
    DoesNotVerify { signer: Signer },
    /// `manifest.sig` is not a signature file this version of Sluice reads.
    #[error("malformed signature file: {reason}")]
    Malformed { reason: String },
}

/// The JSON of `manifest.sig`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    schema: u32,
    algorithm: String,
    key_id: String,
    /// Standard base64 (with padding) of the 64-byte signature.
    signature: String,
}

/// The id of a public key: the first 16 hex digits of SHA-256 over its 32
/// raw bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

fn is_key_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An Ed25519 private key, for signing manifests. Its `Debug` shows only
/// the key id.
pub struct PrivateKey {
    key: SigningKey,
    id: String,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey")
            .field("key_id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    fn from_signing_key(key: SigningKey) -> PrivateKey {
        let id = key_id(&key.verifying_key());
        PrivateKey { key, id }
    }

    /// A new key from the operating system's random source.
    pub fn generate() -> Result<PrivateKey, RegistryError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| RegistryError::KeyFile {
            path: PathBuf::from("<random source>"),
            reason: format!("cannot draw random bytes for a new key: {e}"),
        })?;
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(PrivateKey::from_signing_key(key))
    }

    /// Parses a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    /// The error says what is wrong (not the key's bytes).
    pub fn from_pem(pem: &str) -> Result<PrivateKey, String> {
        if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err("an encrypted private key; Sluice reads unencrypted PKCS#8 keys".into());
        }
        if pem.contains("-----BEGIN PUBLIC KEY-----") && !pem.contains("PRIVATE KEY-----") {
            return Err("a public key where a private key was expected".into());
        }
        SigningKey::from_pkcs8_pem(pem.trim())
            .map(PrivateKey::from_signing_key)
            .map_err(|e| format!("not an Ed25519 private key in PKCS#8 PEM: {e}"))
    }

    /// Reads a PKCS#8 PEM private key file.
    pub fn load(path: &Path) -> Result<PrivateKey, RegistryError> {
        let text = read_key_file(path)?;
        PrivateKey::from_pem(&text).map_err(|reason| RegistryError::KeyFile {
            path: path.to_owned(),
            reason,
        })
    }

    /// This key's id (see [`key_id`]).
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// The signer this key signs as (its name is its id).
    pub fn signer(&self) -> Signer {
        Signer {
            key_id: self.id.clone(),
            name: self.id.clone(),
        }
    }

    /// The private key as PKCS#8 PEM, as `openssl genpkey` writes it:
    /// version 1 (RFC 5208), the seed only. (Version 2 with the public key
    /// inside, as `SigningKey` would write it, is refused by some readers,
    /// Python's `cryptography` among them.)
    pub fn to_pkcs8_pem(&self) -> Result<String, RegistryError> {
        KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_pem(LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| RegistryError::KeyFile {
            path: PathBuf::from("<new key>"),
            reason: format!("cannot encode the private key: {e}"),
        })
    }

    /// The public key as SPKI PEM, as `openssl pkey -pubout` writes it.
    pub fn public_key_pem(&self) -> Result<String, RegistryError> {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| RegistryError::KeyFile {
                path: PathBuf::from("<new key>"),
                reason: format!("cannot encode the public key: {e}"),
            })
    }

    /// The contents of `manifest.sig` for these exact `manifest.json` bytes.
    pub fn sign_manifest(&self, manifest: &[u8]) -> Vec<u8> {
        let signature = self.key.sign(manifest);
        let file = SignatureFile {
            schema: SIGNATURE_SCHEMA,
            algorithm: SIGNATURE_ALGORITHM.to_owned(),
            key_id: self.id.clone(),
            signature: BASE64.encode(signature.to_bytes()),
        };
        // Four strings and an integer cannot fail to serialise.
        let mut json = serde_json::to_vec_pretty(&file).unwrap_or_default();
        json.push(b'\n');
        json
    }
}

/// The public keys a server trusts to sign manifests (`--trusted-keys`).
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    /// By key id.
    keys: BTreeMap<String, (VerifyingKey, String)>,
    source: PathBuf,
}

impl TrustedKeys {
    /// Reads a bundle of SPKI PEM public keys (see the module docs). An
    /// empty bundle is an error: trusting no key would refuse every
    /// version.
    pub fn load(path: &Path) -> Result<TrustedKeys, RegistryError> {
        let text = read_key_file(path)?;
        TrustedKeys::parse(&text, path)
    }

    /// Parses a bundle; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<TrustedKeys, RegistryError> {
        let error = |line: usize, reason: String| RegistryError::KeyFile {
            path: path.to_owned(),
            reason: format!("line {line}: {reason}"),
        };
        let mut keys = BTreeMap::new();
        let mut name: Option<String> = None;
        // (line number of BEGIN, lines of the block so far)
        let mut block: Option<(usize, Vec<&str>)> = None;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if let Some((begin, lines)) = &mut block {
                lines.push(line);
                if line.starts_with("-----END ") {
                    if line != "-----END PUBLIC KEY-----" {
                        return Err(error(n, format!("{line} does not close a public key")));
                    }
                    let pem = lines.join("\n");
                    let key = VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
                        error(
                            *begin,
                            format!("not an Ed25519 public key in SPKI PEM: {e}"),
                        )
                    })?;
                    let id = key_id(&key);
                    let name = name.take().unwrap_or_else(|| id.clone());
                    // A key listed twice (bundles concatenated) keeps its
                    // first name.
                    keys.entry(id).or_insert((key, name));
                    block = None;
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                if let Some(value) = comment.trim_start().strip_prefix("name:") {
                    let value = value.trim();
                    if value.is_empty() || value.len() > 128 || value.chars().any(char::is_control)
                    {
                        return Err(error(
                            n,
                            "a key name is 1 to 128 printable characters".into(),
                        ));
                    }
                    name = Some(value.to_owned());
                }
                continue;
            }
            if line.starts_with("-----BEGIN ") {
                if line.contains("PRIVATE KEY") {
                    return Err(error(
                        n,
                        "a private key; the trusted-keys file holds public keys only \
                         (`openssl pkey -pubout` or the .pub file of `sluice models keygen`)"
                            .into(),
                    ));
                }
                if line != "-----BEGIN PUBLIC KEY-----" {
                    return Err(error(
                        n,
                        format!("{line}: expected -----BEGIN PUBLIC KEY-----"),
                    ));
                }
                block = Some((n, vec![line]));
                continue;
            }
            return Err(error(
                n,
                "text outside a PEM block (only blank lines, # comments and \
                 -----BEGIN PUBLIC KEY----- blocks are allowed)"
                    .into(),
            ));
        }
        if let Some((begin, _)) = block {
            return Err(error(begin, "-----END PUBLIC KEY----- is missing".into()));
        }
        if keys.is_empty() {
            return Err(RegistryError::KeyFile {
                path: path.to_owned(),
                reason: "it holds no public key".into(),
            });
        }
        Ok(TrustedKeys {
            keys,
            source: path.to_owned(),
        })
    }

    /// The file the keys came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false for a loaded bundle (an empty one is refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted keys, by id.
    pub fn signers(&self) -> impl Iterator<Item = Signer> + '_ {
        self.keys.iter().map(|(id, (_, name))| Signer {
            key_id: id.clone(),
            name: name.clone(),
        })
    }

    /// Checks `signature_file` (the bytes of `manifest.sig`) against the
    /// exact bytes of `manifest.json`. Returns who signed it.
    pub fn verify(&self, manifest: &[u8], signature_file: &[u8]) -> Result<Signer, SignatureError> {
        let malformed = |reason: String| SignatureError::Malformed { reason };
        let file: SignatureFile =
            serde_json::from_slice(signature_file).map_err(|e| malformed(e.to_string()))?;
        if file.schema != SIGNATURE_SCHEMA {
            return Err(malformed(format!(
                "schema {} is not supported (only {SIGNATURE_SCHEMA})",
                file.schema
            )));
        }
        if file.algorithm != SIGNATURE_ALGORITHM {
            return Err(malformed(format!(
                "algorithm {:?} is not supported (only {SIGNATURE_ALGORITHM:?})",
                file.algorithm
            )));
        }
        if !is_key_id(&file.key_id) {
            return Err(malformed(
                "key_id is not 16 lowercase hex digits".to_string(),
            ));
        }
        let bytes = BASE64
            .decode(file.signature.as_bytes())
            .map_err(|e| malformed(format!("signature is not base64: {e}")))?;
        let bytes: [u8; 64] = bytes.as_slice().try_into().map_err(|_| {
            malformed(format!(
                "signature is {} bytes, an Ed25519 signature is 64",
                bytes.len()
            ))
        })?;
        let Some((key, name)) = self.keys.get(&file.key_id) else {
            return Err(SignatureError::UntrustedKey {
                key_id: file.key_id,
            });
        };
        let signer = Signer {
            key_id: file.key_id,
            name: name.clone(),
        };
        // verify_strict: no malleable or small-order edge cases accepted.
        key.verify_strict(manifest, &Signature::from_bytes(&bytes))
            .map_err(|_| SignatureError::DoesNotVerify {
                signer: signer.clone(),
            })?;
        Ok(signer)
    }
}

/// Reads `manifest.sig` in `dir`: `None` when there is none. Larger than
/// a signature file can be: an error of its own, not read whole.
pub(crate) fn read_signature_file(dir: &Path) -> Result<Option<Vec<u8>>, RegistryError> {
    let path = dir.join(SIGNATURE_FILE);
    match read_bounded(&path, MAX_SIGNATURE_FILE) {
        Ok(Some(bytes)) => Ok(Some(bytes)),
        Ok(None) => Err(RegistryError::Signature {
            path,
            reason: SignatureError::Malformed {
                reason: format!("larger than {MAX_SIGNATURE_FILE} bytes"),
            },
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RegistryError::io("read", &path, e)),
    }
}

/// Reads at most `limit` bytes; `Ok(None)` when the file is longer.
fn read_bounded(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    File::open(path)?.take(limit + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

fn read_key_file(path: &Path) -> Result<String, RegistryError> {
    let bytes = match read_bounded(path, MAX_KEY_FILE) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return Err(RegistryError::KeyFile {
                path: path.to_owned(),
                reason: format!("larger than {MAX_KEY_FILE} bytes; not a key file"),
            });
        }
        Err(e) => return Err(RegistryError::io("read key file", path, e)),
    };
    String::from_utf8(bytes).map_err(|_| RegistryError::KeyFile {
        path: path.to_owned(),
        reason: "not text (PEM expected)".into(),
    })
}

/// Signs (or re-signs) a version in place: reads `manifest.json` in
/// `version_dir`, checks that it is a manifest, and replaces `manifest.sig`
/// atomically (written beside it under a hidden name, flushed, renamed over
/// it). For a version already published; [`Repository::publish`] signs a
/// new one before it appears.
///
/// Call it after the last change to `manifest.json`: a signature covers the
/// bytes it was made over. A server with trusted keys that sees the new
/// manifest before the new signature refuses the version until the
/// signature lands (the signature file is part of a version's
/// [`Fingerprint`](crate::Fingerprint), so it is then tried again).
///
/// [`Repository::publish`]: crate::Repository::publish
pub fn sign_manifest_file(version_dir: &Path, key_path: &Path) -> Result<Signer, RegistryError> {
    let key = PrivateKey::load(key_path)?;
    sign_manifest_with(version_dir, &key)
}

/// [`sign_manifest_file`] with a key already loaded.
pub fn sign_manifest_with(version_dir: &Path, key: &PrivateKey) -> Result<Signer, RegistryError> {
    let manifest_path = version_dir.join(MANIFEST_FILE);
    let manifest =
        fs::read(&manifest_path).map_err(|e| RegistryError::io("read", &manifest_path, e))?;
    parse_manifest(&manifest, &manifest_path)?;
    let signature = key.sign_manifest(&manifest);
    crate::files::write_atomically(&version_dir.join(SIGNATURE_FILE), &signature)?;
    Ok(key.signer())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &[u8] = br#"{
  "schema": 1,
  "model": "iris",
  "version": 3,
  "file": "model.onnx",
  "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
  "size_bytes": 1337,
  "created": "2026-11-26T08:44:17Z",
  "source_file": "out/iris.onnx",
  "lineage": {}
}
"#;

    fn bundle(keys: &[(&PrivateKey, Option<&str>)]) -> TrustedKeys {
        let mut text = String::new();
        for (key, name) in keys {
            if let Some(name) = name {
                text.push_str(&format!("# name: {name}\n"));
            }
            text.push_str(&key.public_key_pem().unwrap());
            text.push('\n');
        }
        TrustedKeys::parse(&text, Path::new("bundle.pem")).unwrap()
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let key = PrivateKey::generate().unwrap();
        let trusted = bundle(&[(&key, Some("alice"))]);
        let sig = key.sign_manifest(MANIFEST);
        let signer = trusted.verify(MANIFEST, &sig).unwrap();
        assert_eq!(signer.key_id, key.key_id());
        assert_eq!(signer.name, "alice");
        assert_eq!(signer.to_string(), format!("alice (key {})", key.key_id()));
        // The file is the documented JSON.
        let v: serde_json::Value = serde_json::from_slice(&sig).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["algorithm"], "ed25519");
        assert_eq!(v["key_id"], key.key_id());
        assert_eq!(
            BASE64
                .decode(v["signature"].as_str().unwrap())
                .unwrap()
                .len(),
            64
        );
    }

    #[test]
    fn every_single_byte_change_of_the_manifest_is_refused() {
        let key = PrivateKey::generate().unwrap();
        let trusted = bundle(&[(&key, None)]);
        let sig = key.sign_manifest(MANIFEST);
        for i in 0..MANIFEST.len() {
            for delta in [1u8, 0x80] {
                let mut changed = MANIFEST.to_vec();
                changed[i] ^= delta;
                assert!(
                    matches!(
                        trusted.verify(&changed, &sig),
                        Err(SignatureError::DoesNotVerify { .. })
                    ),
                    "byte {i} ^ {delta:#x} was accepted"
                );
            }
        }
        // Appending or dropping a byte too.
        let mut longer = MANIFEST.to_vec();
        longer.push(b'\n');
        assert!(trusted.verify(&longer, &sig).is_err());
        assert!(
            trusted
                .verify(&MANIFEST[..MANIFEST.len() - 1], &sig)
                .is_err()
        );
        // And a change to the signature itself.
        let mut file: serde_json::Value = serde_json::from_slice(&sig).unwrap();
        let mut raw = BASE64.decode(file["signature"].as_str().unwrap()).unwrap();
        raw[10] ^= 1;
        file["signature"] = BASE64.encode(&raw).into();
        let tampered = serde_json::to_vec(&file).unwrap();
        assert!(matches!(
            trusted.verify(MANIFEST, &tampered),
            Err(SignatureError::DoesNotVerify { .. })
        ));
    }

    #[test]
    fn a_key_not_in_the_bundle_is_refused() {
        let alice = PrivateKey::generate().unwrap();
        let bob = PrivateKey::generate().unwrap();
        let mallory = PrivateKey::generate().unwrap();
        let trusted = bundle(&[(&alice, Some("alice")), (&bob, Some("bob"))]);
        assert_eq!(trusted.len(), 2);
        assert_eq!(
            trusted
                .verify(MANIFEST, &bob.sign_manifest(MANIFEST))
                .unwrap()
                .name,
            "bob"
        );
        assert_eq!(
            trusted.verify(MANIFEST, &mallory.sign_manifest(MANIFEST)),
            Err(SignatureError::UntrustedKey {
                key_id: mallory.key_id().to_owned()
            })
        );
        // Claiming a trusted key's id does not help mallory.
        let mut file: serde_json::Value =
            serde_json::from_slice(&mallory.sign_manifest(MANIFEST)).unwrap();
        file["key_id"] = alice.key_id().into();
        assert!(matches!(
            trusted.verify(MANIFEST, &serde_json::to_vec(&file).unwrap()),
            Err(SignatureError::DoesNotVerify { signer }) if signer.name == "alice"
        ));
    }

    #[test]
    fn keygen_pem_round_trips_and_names_default_to_the_id() {
        let key = PrivateKey::generate().unwrap();
        let pem = key.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        // PKCS#8 v1, as openssl writes it: 48 bytes of DER, one base64 line.
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert_eq!(BASE64.decode(body).unwrap().len(), 48);
        let again = PrivateKey::from_pem(&pem).unwrap();
        assert_eq!(again.key_id(), key.key_id());
        let public = key.public_key_pem().unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let trusted = TrustedKeys::parse(&public, Path::new("k.pub")).unwrap();
        let signer = trusted
            .verify(MANIFEST, &again.sign_manifest(MANIFEST))
            .unwrap();
        assert_eq!(signer.name, signer.key_id);
        assert_eq!(signer.to_string(), format!("key {}", key.key_id()));
        assert!(is_key_id(key.key_id()));
    }

    /// A key pair made by `openssl` loads: the private key for signing, the
    /// public key in a bundle. Skipped where there is no `openssl`.
    #[test]
    fn openssl_keys_load() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("k.pem");
        let public = dir.path().join("k.pub");
        let ok = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&private)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: no openssl on PATH");
            return;
        }
        assert!(
            std::process::Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&private)
                .arg("-out")
                .arg(&public)
                .status()
                .unwrap()
                .success()
        );
        let key = PrivateKey::load(&private).unwrap();
        let text = format!(
            "# our release key\n# name: release\n\n{}",
            fs::read_to_string(&public).unwrap()
        );
        let trusted = TrustedKeys::parse(&text, &public).unwrap();
        let signer = trusted
            .verify(MANIFEST, &key.sign_manifest(MANIFEST))
            .unwrap();
        assert_eq!(signer.name, "release");
        assert_eq!(signer.key_id, key.key_id());
    }

    #[test]
    fn malformed_keys_and_bundles_are_errors() {
        let key = PrivateKey::generate().unwrap();
        let public = key.public_key_pem().unwrap();
        let private = key.to_pkcs8_pem().unwrap();
        let cut = &public[..public.len() / 2];
        let bad_base64 = public.replacen("MCow", "M!ow", 1);
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no public key"),
            ("# name: x\n\n".into(), "no public key"),
            (private.clone(), "private key"),
            (cut.to_owned(), "END PUBLIC KEY----- is missing"),
            (bad_base64, "not an Ed25519 public key"),
            (format!("hello\n{public}"), "text outside a PEM block"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
                "expected -----BEGIN PUBLIC KEY-----",
            ),
            (format!("# name:\n{public}"), "key name"),
            (
                public.replace("END PUBLIC KEY", "END PRIVATE KEY"),
                "does not close a public key",
            ),
        ];
        for (text, expected) in cases {
            let err = TrustedKeys::parse(&text, Path::new("b.pem")).unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{text:?}: {err} (expected {expected:?})"
            );
        }
        // An RSA public key is SPKI PEM but not Ed25519.
        let rsa = "-----BEGIN PUBLIC KEY-----\nMFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAMJ3Bz0Bx0R5m4X4rJ7LkV2t2h7c0x2G\n4bQyC5y3p0Xy3C1s5H4K8ZC8n4Vb6l2Hf6l4Z5i3Yb5Q3lY5gFz9yq0CAwEAAQ==\n-----END PUBLIC KEY-----\n";
        assert!(TrustedKeys::parse(rsa, Path::new("rsa.pem")).is_err());

        for bad in [
            "",
            "garbage",
            public.as_str(),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        ] {
            assert!(PrivateKey::from_pem(bad).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("bin");
        fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        assert!(PrivateKey::load(&binary).is_err());
        assert!(PrivateKey::load(&dir.path().join("missing")).is_err());
        assert!(TrustedKeys::load(&binary).is_err());
        // Duplicates keep the first name.
        let twice = format!("# name: a\n{public}# name: b\n{public}");
        let trusted = TrustedKeys::parse(&twice, Path::new("b.pem")).unwrap();
        assert_eq!(trusted.len(), 1);
        assert_eq!(trusted.signers().next().unwrap().name, "a");
    }

    #[test]
    fn malformed_signature_files_are_errors_not_panics() {
        let key = PrivateKey::generate().unwrap();
        let trusted = bundle(&[(&key, None)]);
        let good: serde_json::Value = serde_json::from_slice(&key.sign_manifest(MANIFEST)).unwrap();
        let with = |field: &str, value: serde_json::Value| {
            let mut v = good.clone();
            v[field] = value;
            serde_json::to_vec(&v).unwrap()
        };
        let mut extra = good.clone();
        extra["comment"] = "hi".into();
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"{".to_vec(),
            b"null".to_vec(),
            vec![0xff; 100],
            b"{\"schema\":1}".to_vec(),
            serde_json::to_vec(&extra).unwrap(),
            with("schema", 2.into()),
            with("schema", "1".into()),
            with("algorithm", "rsa".into()),
            with("key_id", "ABC".into()),
            with("key_id", "0123456789ABCDEF".into()),
            with("signature", "!!!".into()),
            with("signature", BASE64.encode([0u8; 63]).into()),
            with("signature", BASE64.encode([0u8; 65]).into()),
        ];
        for case in cases {
            assert!(
                matches!(
                    trusted.verify(MANIFEST, &case),
                    Err(SignatureError::Malformed { .. })
                ),
                "{}",
                String::from_utf8_lossy(&case)
            );
        }
        // A well-formed signature of zeros verifies with nothing.
        assert!(matches!(
            trusted.verify(
                MANIFEST,
                &with("signature", BASE64.encode([0u8; 64]).into())
            ),
            Err(SignatureError::DoesNotVerify { .. })
        ));
    }

    #[test]
    fn sign_manifest_file_replaces_the_signature_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate().unwrap();
        let key_path = dir.path().join("k.key");
        fs::write(&key_path, key.to_pkcs8_pem().unwrap()).unwrap();
        let trusted = bundle(&[(&key, Some("ci"))]);

        let version = dir.path().join("3");
        fs::create_dir(&version).unwrap();
        // No manifest: an error, nothing written.
        assert!(sign_manifest_file(&version, &key_path).is_err());
        assert!(!version.join(SIGNATURE_FILE).exists());
        // Not a manifest: an error too.
        fs::write(version.join(MANIFEST_FILE), b"{}").unwrap();
        assert!(sign_manifest_file(&version, &key_path).is_err());

        fs::write(version.join(MANIFEST_FILE), MANIFEST).unwrap();
        let signer = sign_manifest_file(&version, &key_path).unwrap();
        assert_eq!(signer.key_id, key.key_id());
        let sig = fs::read(version.join(SIGNATURE_FILE)).unwrap();
        assert!(trusted.verify(MANIFEST, &sig).is_ok());

        // Re-signing after a change replaces it; no temporary file stays.
        let changed = String::from_utf8(MANIFEST.to_vec())
            .unwrap()
            .replace("\"lineage\": {}", "\"lineage\": {\"run\": \"7\"}");
        fs::write(version.join(MANIFEST_FILE), &changed).unwrap();
        assert!(trusted.verify(changed.as_bytes(), &sig).is_err());
        sign_manifest_file(&version, &key_path).unwrap();
        let sig = fs::read(version.join(SIGNATURE_FILE)).unwrap();
        assert!(trusted.verify(changed.as_bytes(), &sig).is_ok());
        let names: Vec<_> = fs::read_dir(&version)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn oversized_signature_files_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(SIGNATURE_FILE),
            vec![b' '; MAX_SIGNATURE_FILE as usize + 1],
        )
        .unwrap();
        let err = read_signature_file(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("malformed signature file"),
            "{err}"
        );
        assert_eq!(read_signature_file(&dir.path().join("none")).unwrap(), None);
    }
}
