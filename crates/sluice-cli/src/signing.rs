//! `sluice models keygen`: a new Ed25519 key pair for signing manifests.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sluice_registry::PrivateKey;

/// Writes `PREFIX.key` (the private key, PKCS#8 PEM, mode 0600) and
/// `PREFIX.pub` (the public key, SPKI PEM: what goes into a server's
/// `--trusted-keys` file). Existing files are never overwritten. Returns
/// both paths and the key id.
pub fn keygen(prefix: &Path, name: Option<&str>) -> anyhow::Result<(PathBuf, PathBuf, String)> {
    let private_path = with_suffix(prefix, ".key");
    let public_path = with_suffix(prefix, ".pub");
    for path in [&private_path, &public_path] {
        if path.symlink_metadata().is_ok() {
            anyhow::bail!(
                "{} exists; not overwriting a key (choose another --out)",
                path.display()
            );
        }
    }
    let key = PrivateKey::generate()?;
    let private_pem = key.to_pkcs8_pem()?;
    let mut public_pem = String::new();
    if let Some(name) = name {
        let name = name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            anyhow::bail!("--name must be 1 to 128 printable characters");
        }
        // Read back by `--trusted-keys` as the key's name.
        public_pem.push_str(&format!("# name: {name}\n"));
    }
    public_pem.push_str(&key.public_key_pem()?);

    write_new(&private_path, private_pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&public_path, public_pem.as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&private_path);
        return Err(e);
    }
    Ok((private_path, public_path, key.key_id().to_owned()))
}

/// `PREFIX` + `suffix` (`keys/alice` → `keys/alice.key`).
fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Creates `path` with `mode` from the start (a private key is never
/// readable by others, not even briefly), writes and fsyncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // The umask may have taken bits away from `mode`; never added any.
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_key_only_its_owner_reads_and_a_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("alice");
        let (private, public, id) = keygen(&prefix, Some("alice")).unwrap();
        assert_eq!(private, dir.path().join("alice.key"));
        assert_eq!(public, dir.path().join("alice.pub"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&private).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let key = PrivateKey::load(&private).unwrap();
        assert_eq!(key.key_id(), id);
        let trusted = sluice_registry::TrustedKeys::load(&public).unwrap();
        let signer = trusted.signers().next().unwrap();
        assert_eq!(
            (signer.key_id.as_str(), signer.name.as_str()),
            (id.as_str(), "alice")
        );
        // Never overwritten.
        let err = keygen(&prefix, None).unwrap_err();
        assert!(err.to_string().contains("exists"), "{err}");
        assert_eq!(PrivateKey::load(&private).unwrap().key_id(), id);
    }
}
