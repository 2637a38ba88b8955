//! A model repository on object storage (`s3://bucket/prefix`, and `gs://`,
//! `az://` behind the `gcs` and `azure` features), mirrored into a local
//! cache directory that the rest of Sluice reads like any repository.
//!
//! The bucket holds the same layout as a directory (see the crate docs),
//! plus `audit.log` at the prefix. [`RemoteRegistry::sync`] lists the
//! prefix and brings the cache in line with it:
//!
//! * a version is copied only once its `manifest.json` exists (publishers
//!   write it last), and only if the downloaded `model.onnx` has the size
//!   and SHA-256 the manifest records; otherwise it is left out and named
//!   in [`SyncReport::problems`] (an upload in progress, or a damaged
//!   version), and whatever the cache held for it stays;
//! * a version is staged in a hidden directory of the cache and renamed
//!   into place, so a scan of the cache sees a complete version or none;
//! * `model.toml`, `policy.toml` and `audit.log` are copied with an atomic
//!   rename; what disappeared from the bucket disappears from the cache.
//!
//! Objects are compared by ETag, so an unchanged registry costs one listing
//! per poll. The **revision** is a SHA-256 over the (key, ETag) pairs the
//! cache holds (the audit log aside): replicas that serve the same objects
//! report the same revision.
//!
//! Writes go to the bucket first and then to the cache: [`RemoteRegistry::put`]
//! (traffic policies), [`RemoteRegistry::update`] (a conditional
//! read-modify-write, for appending to the audit log from many replicas),
//! and [`RemoteRegistry::publish`] (claim the version, upload the model,
//! write the manifest last, refusing to overwrite one).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::files::{write_atomically, write_new};
use crate::publish::{Published, check_source, manifest_json, new_manifest};
use crate::{
    CONFIG_FILE, MANIFEST_FILE, MODEL_FILE, Manifest, PrivateKey, RegistryError, SIGNATURE_FILE,
    parse_manifest, parse_version, validate_model_name,
};

/// The traffic policy's file name in a model directory (read by
/// `sluice-rollout`; mirrored here like `model.toml`).
pub const POLICY_FILE: &str = "policy.toml";
/// The audit log's file name at the repository root.
pub const AUDIT_FILE: &str = "audit.log";

/// Prefix of the hidden staging entries the sync makes in the cache.
const STAGING_PREFIX: &str = ".sync-";
/// The object a publisher creates first to claim a version number.
const CLAIM_FILE: &str = ".publish-claim";
/// Attempts of a conditional update before giving up (each failure means
/// another writer got in between).
const UPDATE_ATTEMPTS: usize = 32;

/// Whether `models` names an object store rather than a directory.
pub fn is_remote(models: &str) -> bool {
    ["s3://", "s3a://", "gs://", "az://", "abfs://", "abfss://"]
        .iter()
        .any(|scheme| models.starts_with(scheme))
}

/// A registry on object storage and its local cache.
pub struct RemoteRegistry {
    url: String,
    store: Arc<dyn ObjectStore>,
    /// The registry's root inside the bucket ("" for the bucket's root).
    prefix: ObjectPath,
    cache: PathBuf,
    /// What the cache holds: relative key → ETag (for a version, one entry
    /// per file). Also serialises syncs and writes: the lock is held for a
    /// whole sync (a tokio mutex: it is held across awaits).
    applied: tokio::sync::Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for RemoteRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRegistry")
            .field("url", &self.url)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// What one [`RemoteRegistry::sync`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// SHA-256 (hex) over what the cache now holds.
    pub revision: String,
    /// Whether the cache changed (the caller should rescan it).
    pub changed: bool,
    /// Versions and files left out, with the reason (e.g. a model file that
    /// does not match its manifest yet).
    pub problems: Vec<String>,
}

/// One object of the listing, by its key relative to the prefix.
#[derive(Debug, Clone)]
struct Listed {
    tag: String,
}

impl RemoteRegistry {
    /// Opens the registry at `url` with credentials and settings from the
    /// standard environment of its store (`AWS_*` for S3: region, keys,
    /// `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP` for S3-compatible servers;
    /// `GOOGLE_*` for GCS; `AZURE_*` for Azure), caching under `cache`
    /// (created on the first sync). Nothing is contacted yet.
    pub fn open(url: &str, cache: &Path) -> Result<RemoteRegistry, RegistryError> {
        let bad = |reason: String| RegistryError::RemoteUrl {
            url: url.to_string(),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("not a URL".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket or container named".into()));
        }
        // Every store: settings from its environment, then the URL, then
        // short retries and timeouts (as configuration keys, so the rest of
        // the client's settings still come from the environment).
        macro_rules! store {
            ($builder:ty, $key:path) => {
                Arc::new(
                    <$builder>::from_env()
                        .with_url(url)
                        .with_retry(retry())
                        .with_config($key(CONNECT_TIMEOUT.0), CONNECT_TIMEOUT.1)
                        .with_config($key(REQUEST_TIMEOUT.0), REQUEST_TIMEOUT.1)
                        .build()
                        .map_err(|e| bad(e.to_string()))?,
                )
            };
        }
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" | "s3a" => store!(
                object_store::aws::AmazonS3Builder,
                object_store::aws::AmazonS3ConfigKey::Client
            ),
            #[cfg(feature = "gcs")]
            "gs" => store!(
                object_store::gcp::GoogleCloudStorageBuilder,
                object_store::gcp::GoogleConfigKey::Client
            ),
            #[cfg(feature = "azure")]
            "az" | "abfs" | "abfss" => store!(
                object_store::azure::MicrosoftAzureBuilder,
                object_store::azure::AzureConfigKey::Client
            ),
            #[cfg(not(feature = "gcs"))]
            "gs" => {
                return Err(bad(
                    "gs:// support is not built in; build with `--features gcs`".into(),
                ));
            }
            #[cfg(not(feature = "azure"))]
            "az" | "abfs" | "abfss" => {
                return Err(bad(format!(
                    "{scheme}:// support is not built in; build with `--features azure`"
                )));
            }
            other => return Err(bad(format!("unknown scheme {other}://"))),
        };
        Self::with_store(url, store, prefix, cache)
    }

    /// A registry over an object store built by the caller (tests use
    /// `object_store::memory::InMemory`), rooted at `prefix`.
    pub fn with_store(
        url: &str,
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        cache: &Path,
    ) -> Result<RemoteRegistry, RegistryError> {
        Ok(RemoteRegistry {
            url: url.to_string(),
            store,
            prefix: ObjectPath::from(prefix.trim_matches('/')),
            cache: cache.to_path_buf(),
            applied: tokio::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The local cache directory: a repository in the usual layout.
    pub fn cache(&self) -> &Path {
        &self.cache
    }

    fn object(&self, rel: &str) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in rel.split('/') {
            path = path.clone().join(part);
        }
        path
    }

    fn location(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url.trim_end_matches('/'))
    }

    /// Lists every object under the prefix, by relative key.
    async fn list(&self) -> Result<BTreeMap<String, Listed>, RegistryError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let mut stream = self.store.list(prefix);
        let mut out = BTreeMap::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| RegistryError::remote("list", &self.url, e))?;
            let Some(rel) = meta.location.prefix_match(&self.prefix) else {
                continue;
            };
            let rel: Vec<String> = rel.map(|p| p.as_ref().to_string()).collect();
            let rel = rel.join("/");
            // Without an ETag (some S3-compatible stores), the modification
            // time and size stand in for it.
            let tag = meta.e_tag.clone().unwrap_or_else(|| {
                format!("{}-{}", meta.last_modified.timestamp_millis(), meta.size)
            });
            out.insert(rel, Listed { tag });
        }
        Ok(out)
    }

    async fn get(&self, rel: &str) -> Result<Option<(Bytes, String)>, RegistryError> {
        match self.store.get(&self.object(rel)).await {
            Ok(got) => {
                let tag = got.meta.e_tag.clone().unwrap_or_default();
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| RegistryError::remote("read", self.location(rel), e))?;
                Ok(Some((bytes, tag)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(RegistryError::remote("read", self.location(rel), e)),
        }
    }

    /// Reads one object of the registry (`None`: it does not exist), e.g.
    /// `audit.log` for `sluice audit verify`.
    pub async fn read(&self, rel: &str) -> Result<Option<Bytes>, RegistryError> {
        Ok(self.get(rel).await?.map(|(bytes, _)| bytes))
    }

    /// Brings the cache in line with the bucket (see the module docs).
    /// Fails only when the store cannot be listed or read; the cache is
    /// then left as it was (a caller keeps serving it).
    pub async fn sync(&self) -> Result<SyncReport, RegistryError> {
        let mut applied = self.applied.lock().await;
        fs::create_dir_all(&self.cache)
            .map_err(|e| RegistryError::io("create the registry cache", &self.cache, e))?;
        let listing = self.list().await?;
        if listing.is_empty() {
            // An emptied bucket, or the wrong one (a typo in a prefix, other
            // credentials): not a reason to stop serving. Reported; to
            // retire a model, delete its versions, not the whole registry.
            let cached = cached_models(&self.cache)?;
            if cached > 0 {
                return Err(RegistryError::remote(
                    "sync",
                    &self.url,
                    format!(
                        "it lists no objects while {cached} model(s) are cached; \
                         keeping them until the registry holds models again"
                    ),
                ));
            }
        }
        let mut changed = false;
        let mut problems = Vec::new();

        // What the bucket holds, in the repository's terms.
        let mut singles: BTreeMap<String, Listed> = BTreeMap::new();
        let mut versions: BTreeMap<(String, u64), BTreeMap<String, Listed>> = BTreeMap::new();
        for (rel, listed) in &listing {
            let parts: Vec<&str> = rel.split('/').collect();
            match parts.as_slice() {
                [AUDIT_FILE] => {
                    singles.insert(rel.clone(), listed.clone());
                }
                [model, file]
                    if (*file == CONFIG_FILE || *file == POLICY_FILE)
                        && validate_model_name(model).is_ok() =>
                {
                    singles.insert(rel.clone(), listed.clone());
                }
                [model, version, file] if !file.starts_with('.') => {
                    if let (Ok(()), Some(v)) = (validate_model_name(model), parse_version(version))
                    {
                        versions
                            .entry((model.to_string(), v))
                            .or_default()
                            .insert(file.to_string(), listed.clone());
                    }
                }
                _ => {}
            }
        }
        // Only versions with a manifest are wanted: one without is an upload
        // in progress.
        versions.retain(|(model, version), files| {
            let complete = files.contains_key(MANIFEST_FILE);
            if !complete {
                debug!(model, version, "registry: no manifest yet, not synced");
            }
            complete
        });

        // Single files: model.toml, policy.toml, audit.log.
        for (rel, listed) in &singles {
            if applied.get(rel) == Some(&listed.tag) && self.cache.join(rel).is_file() {
                continue;
            }
            let Some((bytes, tag)) = self.get(rel).await? else {
                continue; // deleted since the listing: the next sync sees it
            };
            write_atomically(&self.cache.join(rel), &bytes)?;
            applied.insert(
                rel.clone(),
                if tag.is_empty() {
                    listed.tag.clone()
                } else {
                    tag
                },
            );
            changed = true;
        }

        // Versions.
        let mut kept_versions: BTreeSet<(String, u64)> = BTreeSet::new();
        for ((model, version), files) in &versions {
            let base = format!("{model}/{version}");
            // What the cache holds of this version: its keys are contiguous
            // in the sorted map, so a range, not a scan of every key.
            let prefix = format!("{base}/");
            let cached: Vec<(&str, &String)> = applied
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, tag)| (&k[prefix.len()..], tag))
                .collect();
            let up_to_date = cached.len() == files.len()
                && cached
                    .iter()
                    .all(|(file, tag)| files.get(*file).is_some_and(|l| &l.tag == *tag))
                && self.cache.join(&base).is_dir();
            if up_to_date {
                kept_versions.insert((model.clone(), *version));
                continue;
            }
            match self.fetch_version(model, *version, files).await? {
                Ok(tags) => {
                    applied.retain(|k, _| !k.starts_with(&format!("{base}/")));
                    for (file, tag) in tags {
                        applied.insert(format!("{base}/{file}"), tag);
                    }
                    kept_versions.insert((model.clone(), *version));
                    changed = true;
                    info!(model, version, registry = %self.url, "registry: version synced");
                }
                Err(problem) => {
                    // Keep what the cache had for it, if anything.
                    if self.cache.join(&base).is_dir() {
                        kept_versions.insert((model.clone(), *version));
                    }
                    problems.push(problem);
                }
            }
        }

        // Remove from the cache what the bucket no longer has.
        changed |= self.prune(&singles, &kept_versions, &mut applied)?;

        for problem in &problems {
            warn!(registry = %self.url, "registry: {problem}");
        }
        Ok(SyncReport {
            revision: revision(&applied),
            changed,
            problems,
        })
    }

    /// Downloads one version into a staging directory, checks it against
    /// its manifest, and renames it into the cache. The outer error is the
    /// store's; the inner one a version that is not (yet) consistent.
    async fn fetch_version(
        &self,
        model: &str,
        version: u64,
        files: &BTreeMap<String, Listed>,
    ) -> Result<Result<Vec<(String, String)>, String>, RegistryError> {
        let base = format!("{model}/{version}");
        let model_dir = self.cache.join(model);
        fs::create_dir_all(&model_dir)
            .map_err(|e| RegistryError::io("create directory", &model_dir, e))?;
        let staging = Staging::new(&model_dir)?;
        let Some((manifest_bytes, manifest_tag)) =
            self.get(&format!("{base}/{MANIFEST_FILE}")).await?
        else {
            return Ok(Err(format!(
                "model {model} version {version}: manifest.json disappeared while syncing"
            )));
        };
        let manifest_path = PathBuf::from(self.location(&format!("{base}/{MANIFEST_FILE}")));
        let manifest: Manifest = match parse_manifest(&manifest_bytes, &manifest_path) {
            Ok(m) => m,
            Err(e) => return Ok(Err(format!("model {model} version {version}: {e}"))),
        };
        if manifest.model != model || manifest.version != version || manifest.file != MODEL_FILE {
            return Ok(Err(format!(
                "model {model} version {version}: its manifest describes model {:?} version {} file {:?}",
                manifest.model, manifest.version, manifest.file
            )));
        }
        let mut tags = vec![(
            MANIFEST_FILE.to_string(),
            tag_or(manifest_tag, files, MANIFEST_FILE),
        )];
        for (file, listed) in files {
            if file == MANIFEST_FILE {
                continue;
            }
            let rel = format!("{base}/{file}");
            let target = staging.path().join(file);
            let Some((size, sha256, tag)) = self.download(&rel, &target).await? else {
                return Ok(Err(format!(
                    "model {model} version {version}: {file} disappeared while syncing"
                )));
            };
            if file == MODEL_FILE
                && (size != manifest.size_bytes || !sha256.eq_ignore_ascii_case(&manifest.sha256))
            {
                return Ok(Err(format!(
                    "model {model} version {version}: model.onnx ({size} bytes, sha256 {sha256}) \
                     does not match its manifest ({} bytes, sha256 {}); an upload in progress \
                     or a damaged version, not loaded",
                    manifest.size_bytes, manifest.sha256
                )));
            }
            tags.push((
                file.clone(),
                if tag.is_empty() {
                    listed.tag.clone()
                } else {
                    tag
                },
            ));
        }
        if !files.contains_key(MODEL_FILE) {
            return Ok(Err(format!(
                "model {model} version {version}: manifest.json but no model.onnx; not loaded"
            )));
        }
        write_new(&staging.path().join(MANIFEST_FILE), &manifest_bytes)?;
        staging.install(&model_dir.join(version.to_string()))?;
        Ok(Ok(tags))
    }

    /// Streams one object to `target`, hashing it on the way. `None`: gone.
    async fn download(
        &self,
        rel: &str,
        target: &Path,
    ) -> Result<Option<(u64, String, String)>, RegistryError> {
        let got = match self.store.get(&self.object(rel)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(RegistryError::remote("read", self.location(rel), e)),
        };
        let tag = got.meta.e_tag.clone().unwrap_or_default();
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(target)
            .map_err(|e| RegistryError::io("create", target, e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| RegistryError::remote("read", self.location(rel), e))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            out.write_all(&chunk)
                .map_err(|e| RegistryError::io("write", target, e))?;
        }
        out.sync_all()
            .map_err(|e| RegistryError::io("fsync", target, e))?;
        Ok(Some((size, hex::encode(hasher.finalize()), tag)))
    }

    /// Removes cached models, versions and files the bucket no longer has
    /// (and leftovers of interrupted syncs). Returns whether anything went.
    fn prune(
        &self,
        singles: &BTreeMap<String, Listed>,
        versions: &BTreeSet<(String, u64)>,
        applied: &mut BTreeMap<String, String>,
    ) -> Result<bool, RegistryError> {
        let mut changed = false;
        let models: BTreeSet<&str> = singles
            .keys()
            .filter_map(|k| k.split_once('/').map(|(m, _)| m))
            .chain(versions.iter().map(|(m, _)| m.as_str()))
            .collect();
        if !singles.contains_key(AUDIT_FILE) {
            changed |= remove_path(&self.cache.join(AUDIT_FILE))?;
        }
        let entries = fs::read_dir(&self.cache)
            .map_err(|e| RegistryError::io("read directory", &self.cache, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| RegistryError::io("read directory", &self.cache, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if !models.contains(name.as_str()) {
                changed |= remove_path(&path)?;
                continue;
            }
            for file in [CONFIG_FILE, POLICY_FILE] {
                if !singles.contains_key(&format!("{name}/{file}")) {
                    changed |= remove_path(&path.join(file))?;
                }
            }
            let inner =
                fs::read_dir(&path).map_err(|e| RegistryError::io("read directory", &path, e))?;
            for sub in inner {
                let sub = sub.map_err(|e| RegistryError::io("read directory", &path, e))?;
                let sub_name = sub.file_name().to_string_lossy().into_owned();
                if sub_name.starts_with(STAGING_PREFIX) {
                    remove_path(&sub.path())?;
                    continue;
                }
                if let Some(v) = parse_version(&sub_name)
                    && !versions.contains(&(name.clone(), v))
                {
                    changed |= remove_path(&sub.path())?;
                }
            }
        }
        applied.retain(|k, _| {
            let parts: Vec<&str> = k.split('/').collect();
            match parts.as_slice() {
                [_, _, _] => parts[1]
                    .parse::<u64>()
                    .is_ok_and(|v| versions.contains(&(parts[0].to_string(), v))),
                _ => singles.contains_key(k),
            }
        });
        Ok(changed)
    }

    /// Writes `bytes` to `rel` in the bucket, then to the cache (so this
    /// replica sees its own write before the next sync).
    pub async fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<(), RegistryError> {
        let mut applied = self.applied.lock().await;
        let result = self
            .store
            .put(&self.object(rel), PutPayload::from(bytes.clone()))
            .await
            .map_err(|e| RegistryError::remote("write", self.location(rel), e))?;
        write_atomically(&self.cache.join(rel), &bytes)?;
        if let Some(tag) = result.e_tag {
            applied.insert(rel.to_string(), tag);
        }
        Ok(())
    }

    /// Read-modify-write of `rel` that no concurrent writer can undo: reads
    /// the object (`None` if missing), lets `change` compute the new bytes,
    /// and writes them only if the object is still the one read (an ETag
    /// precondition; creation only if it still does not exist), retrying
    /// from a fresh read otherwise. The result is also written to the
    /// cache. Returns what `change` returned with the bytes written.
    pub async fn update<T, E>(
        &self,
        rel: &str,
        mut change: impl FnMut(Option<&[u8]>) -> Result<(Vec<u8>, T), E>,
    ) -> Result<Result<T, E>, RegistryError> {
        let mut applied = self.applied.lock().await;
        let path = self.object(rel);
        for attempt in 0..UPDATE_ATTEMPTS {
            let current = self.get(rel).await?;
            let (bytes, value) = match change(current.as_ref().map(|(b, _)| b.as_ref())) {
                Ok(changed) => changed,
                Err(e) => return Ok(Err(e)),
            };
            let mode = match &current {
                None => PutMode::Create,
                Some((_, tag)) => PutMode::Update(UpdateVersion {
                    e_tag: Some(tag.clone()),
                    version: None,
                }),
            };
            let put = self
                .store
                .put_opts(
                    &path,
                    PutPayload::from(bytes.clone()),
                    PutOptions::from(mode),
                )
                .await;
            match put {
                Ok(result) => {
                    write_atomically(&self.cache.join(rel), &bytes)?;
                    if let Some(tag) = result.e_tag {
                        applied.insert(rel.to_string(), tag);
                    }
                    return Ok(Ok(value));
                }
                Err(
                    object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. },
                ) => {
                    debug!(rel, attempt, "registry: concurrent update, retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(5 + 10 * attempt as u64))
                        .await;
                }
                Err(e) => return Err(RegistryError::remote("write", self.location(rel), e)),
            }
        }
        Err(RegistryError::remote(
            "write",
            self.location(rel),
            format!("{UPDATE_ATTEMPTS} concurrent writers got in first; try again"),
        ))
    }

    /// Publishes `file` as a version of `model` in the bucket: claims the
    /// version number (an object only one publisher can create), uploads
    /// `model.onnx`, then writes `manifest.json` last, so a gateway syncs
    /// either nothing or the complete version. `version`: as for the
    /// directory publish (default one more than the highest in the bucket).
    pub async fn publish(
        &self,
        model: &str,
        file: &Path,
        version: Option<u64>,
        lineage: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Published, RegistryError> {
        self.publish_signed(model, file, version, lineage, None)
            .await
    }

    /// [`publish`](RemoteRegistry::publish), signing the manifest with
    /// `key` when given: `manifest.sig` is uploaded after the model file
    /// and before `manifest.json`, which is still written last, so a
    /// gateway that syncs the manifest finds its signature already there.
    pub async fn publish_signed(
        &self,
        model: &str,
        file: &Path,
        version: Option<u64>,
        lineage: serde_json::Map<String, serde_json::Value>,
        key: Option<&PrivateKey>,
    ) -> Result<Published, RegistryError> {
        validate_model_name(model)?;
        check_source(file)?;
        if version == Some(0) {
            return Err(RegistryError::InvalidVersion {
                model: model.to_owned(),
            });
        }
        let (size_bytes, sha256) = hash_source(file)?;
        let mut candidate = match version {
            Some(v) => v,
            None => self.next_version(model).await?,
        };
        // Claim the number: creating the claim fails if another publisher
        // (or an existing version) has it.
        let claimed = loop {
            let existing = self.version_exists(model, candidate).await?;
            let claim = format!("{model}/{candidate}/{CLAIM_FILE}");
            let taken = existing
                || match self
                    .store
                    .put_opts(
                        &self.object(&claim),
                        PutPayload::from(format!("pid {}\n", std::process::id()).into_bytes()),
                        PutOptions::from(PutMode::Create),
                    )
                    .await
                {
                    Ok(_) => false,
                    Err(object_store::Error::AlreadyExists { .. }) => true,
                    Err(e) => return Err(RegistryError::remote("write", self.location(&claim), e)),
                };
            if !taken {
                break candidate;
            }
            if version.is_some() {
                return Err(RegistryError::VersionExists {
                    model: model.to_owned(),
                    version: candidate,
                    path: PathBuf::from(self.location(&format!("{model}/{candidate}"))),
                });
            }
            candidate = candidate
                .checked_add(1)
                .ok_or_else(|| RegistryError::VersionOverflow {
                    model: model.to_owned(),
                })?;
        };
        let base = format!("{model}/{claimed}");
        let model_rel = format!("{base}/{MODEL_FILE}");
        self.upload_file(file, &model_rel).await?;
        let manifest = new_manifest(model, claimed, file, sha256, size_bytes, lineage);
        let manifest_bytes = manifest_json(&manifest);
        if let Some(key) = key {
            let signature_rel = format!("{base}/{SIGNATURE_FILE}");
            self.store
                .put_opts(
                    &self.object(&signature_rel),
                    PutPayload::from(key.sign_manifest(&manifest_bytes)),
                    PutOptions::from(PutMode::Overwrite),
                )
                .await
                .map_err(|e| RegistryError::remote("write", self.location(&signature_rel), e))?;
        }
        let manifest_rel = format!("{base}/{MANIFEST_FILE}");
        self.store
            .put_opts(
                &self.object(&manifest_rel),
                PutPayload::from(manifest_bytes),
                PutOptions::from(PutMode::Create),
            )
            .await
            .map_err(|e| match e {
                object_store::Error::AlreadyExists { .. } => RegistryError::PublishRace {
                    model: model.to_owned(),
                    version: claimed,
                    path: PathBuf::from(self.location(&base)),
                },
                e => RegistryError::remote("write", self.location(&manifest_rel), e),
            })?;
        // The claim has done its job; a leftover one is harmless (hidden).
        let _ = self
            .store
            .delete(&self.object(&format!("{base}/{CLAIM_FILE}")))
            .await;
        info!(model, version = claimed, registry = %self.url, "published");
        Ok(Published {
            model: model.to_owned(),
            version: claimed,
            dir: PathBuf::from(self.location(&base)),
            manifest,
        })
    }

    /// Uploads a local file, in parts when it is large, with a progress
    /// line on stderr for files over 64 MiB.
    async fn upload_file(&self, file: &Path, rel: &str) -> Result<(), RegistryError> {
        use tokio::io::AsyncWriteExt;
        let total = fs::metadata(file)
            .map_err(|e| RegistryError::io("stat", file, e))?
            .len();
        let mut input = fs::File::open(file).map_err(|e| RegistryError::io("open", file, e))?;
        let mut writer =
            object_store::buffered::BufWriter::new(self.store.clone(), self.object(rel));
        let mut buf = vec![0u8; 8 * 1024 * 1024];
        let mut sent = 0u64;
        let loud = total > 64 * 1024 * 1024;
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|e| RegistryError::io("read", file, e))?;
            if n == 0 {
                break;
            }
            writer
                .write_all(&buf[..n])
                .await
                .map_err(|e| RegistryError::remote("upload to", self.location(rel), e))?;
            sent += n as u64;
            if loud {
                eprint!(
                    "\ruploading {}: {} of {} MiB ({:.0}%)",
                    file.display(),
                    sent >> 20,
                    total >> 20,
                    100.0 * sent as f64 / total.max(1) as f64
                );
            }
        }
        writer
            .shutdown()
            .await
            .map_err(|e| RegistryError::remote("upload to", self.location(rel), e))?;
        if loud {
            eprintln!();
        }
        Ok(())
    }

    async fn version_exists(&self, model: &str, version: u64) -> Result<bool, RegistryError> {
        let prefix = self.object(&format!("{model}/{version}"));
        let mut stream = self.store.list(Some(&prefix));
        match stream.next().await {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(RegistryError::remote("list", self.location(model), e)),
        }
    }

    async fn next_version(&self, model: &str) -> Result<u64, RegistryError> {
        let prefix = self.object(model);
        let listed = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| RegistryError::remote("list", self.location(model), e))?;
        let highest = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(parse_version))
            .max()
            .unwrap_or(0);
        highest
            .checked_add(1)
            .ok_or_else(|| RegistryError::VersionOverflow {
                model: model.to_owned(),
            })
    }

    /// The models and versions in the bucket, and whether each version has
    /// its manifest (for `sluice models list`).
    pub async fn listing(&self) -> Result<BTreeMap<String, BTreeMap<u64, bool>>, RegistryError> {
        let mut out: BTreeMap<String, BTreeMap<u64, bool>> = BTreeMap::new();
        for rel in self.list().await?.keys() {
            let parts: Vec<&str> = rel.split('/').collect();
            if let [model, version, file] = parts.as_slice()
                && let Some(v) = parse_version(version)
                && validate_model_name(model).is_ok()
            {
                let has = out
                    .entry(model.to_string())
                    .or_default()
                    .entry(v)
                    .or_default();
                *has |= *file == MANIFEST_FILE;
            }
        }
        Ok(out)
    }
}

/// Retries of one request: a few, within seconds, so that a registry that
/// is down is reported (degraded) within a poll or two rather than after
/// the store client's default three minutes; the next poll tries again.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(10),
        ..Default::default()
    }
}

/// Connecting must be quick (a loopback or in-region endpoint); a request
/// as a whole may take long (a large model file).
const CONNECT_TIMEOUT: (object_store::ClientConfigKey, &str) =
    (object_store::ClientConfigKey::ConnectTimeout, "3s");
const REQUEST_TIMEOUT: (object_store::ClientConfigKey, &str) =
    (object_store::ClientConfigKey::Timeout, "600s");

/// Model directories in the cache.
fn cached_models(cache: &Path) -> Result<usize, RegistryError> {
    let entries = fs::read_dir(cache).map_err(|e| RegistryError::io("read directory", cache, e))?;
    Ok(entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.path().is_dir() && validate_model_name(&e.file_name().to_string_lossy()).is_ok()
        })
        .count())
}

fn tag_or(tag: String, files: &BTreeMap<String, Listed>, file: &str) -> String {
    if tag.is_empty() {
        files.get(file).map(|l| l.tag.clone()).unwrap_or_default()
    } else {
        tag
    }
}

/// SHA-256 over the sorted (key, ETag) pairs, the audit log aside.
fn revision(applied: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (key, tag) in applied {
        if key == AUDIT_FILE {
            continue;
        }
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(tag.as_bytes());
        hasher.update([b'\n']);
    }
    hex::encode(hasher.finalize())
}

/// The length and SHA-256 of a file to publish, which must not be empty.
fn hash_source(file: &Path) -> Result<(u64, String), RegistryError> {
    let (size, sha256) = crate::hash_file(file)?;
    if size == 0 {
        return Err(RegistryError::SourceEmpty {
            path: file.to_owned(),
        });
    }
    Ok((size, sha256))
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(name: &str) -> String {
    format!(
        "{STAGING_PREFIX}{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes a file or directory if present; whether it was.
fn remove_path(path: &Path) -> Result<bool, RegistryError> {
    let result = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(RegistryError::io("stat", path, e)),
        Ok(meta) if meta.is_dir() => {
            // Out of the scanned names first, then gone.
            let parent = path.parent().unwrap_or(Path::new("."));
            let hidden = parent.join(unique("removed"));
            fs::rename(path, &hidden).and_then(|()| fs::remove_dir_all(&hidden))
        }
        Ok(_) => fs::remove_file(path),
    };
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(RegistryError::io("remove", path, e)),
    }
}

/// A hidden directory in a model directory where a version is assembled;
/// removed on drop unless installed.
struct Staging {
    path: Option<PathBuf>,
}

impl Staging {
    fn new(model_dir: &Path) -> Result<Staging, RegistryError> {
        let path = model_dir.join(unique("version"));
        fs::create_dir(&path).map_err(|e| RegistryError::io("create directory", &path, e))?;
        Ok(Staging { path: Some(path) })
    }

    fn path(&self) -> &Path {
        self.path.as_deref().expect("not installed yet")
    }

    /// Renames the staged version to `target`, replacing what was there
    /// (moved aside first, removed after).
    fn install(mut self, target: &Path) -> Result<(), RegistryError> {
        let staged = self.path.take().expect("not installed yet");
        let parent = target.parent().unwrap_or(Path::new("."));
        let old = parent.join(unique("old"));
        let had_old = match fs::rename(target, &old) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(RegistryError::io("move aside", target, e)),
        };
        fs::rename(&staged, target).map_err(|e| RegistryError::io("rename into", target, e))?;
        if had_old {
            let _ = fs::remove_dir_all(&old);
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = fs::remove_dir_all(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn registry(store: Arc<InMemory>, cache: &Path) -> RemoteRegistry {
        RemoteRegistry::with_store("memory://bucket/models", store, "models", cache).unwrap()
    }

    async fn put(store: &InMemory, key: &str, bytes: &[u8]) {
        store
            .put(&ObjectPath::from(key), PutPayload::from(bytes.to_vec()))
            .await
            .unwrap();
    }

    fn manifest_for(model: &str, version: u64, bytes: &[u8]) -> Vec<u8> {
        let m = new_manifest(
            model,
            version,
            Path::new("model.onnx"),
            hex::encode(Sha256::digest(bytes)),
            bytes.len() as u64,
            Default::default(),
        );
        manifest_json(&m)
    }

    #[tokio::test]
    async fn a_version_is_synced_only_once_its_manifest_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(InMemory::new());
        let reg = registry(store.clone(), dir.path());
        put(&store, "models/m/1/model.onnx", b"one").await;
        let first = reg.sync().await.unwrap();
        assert!(!dir.path().join("m/1").exists(), "no manifest: not synced");
        assert!(!first.changed);

        // A manifest that does not match yet (e.g. the upload is replacing
        // the file): refused with a reason, nothing in the cache.
        put(
            &store,
            "models/m/1/manifest.json",
            &manifest_for("m", 1, b"uno"),
        )
        .await;
        let mismatch = reg.sync().await.unwrap();
        assert_eq!(mismatch.problems.len(), 1, "{mismatch:?}");
        assert!(mismatch.problems[0].contains("does not match its manifest"));
        assert!(!dir.path().join("m/1").exists());

        put(&store, "models/m/1/model.onnx", b"uno").await;
        let ok = reg.sync().await.unwrap();
        assert!(ok.changed && ok.problems.is_empty(), "{ok:?}");
        assert_eq!(fs::read(dir.path().join("m/1/model.onnx")).unwrap(), b"uno");
        assert!(dir.path().join("m/1/manifest.json").is_file());

        // Nothing changed: same revision, nothing written.
        let again = reg.sync().await.unwrap();
        assert!(!again.changed);
        assert_eq!(again.revision, ok.revision);

        // Deleted in the bucket: gone from the cache, revision changes.
        store
            .delete(&ObjectPath::from("models/m/1/manifest.json"))
            .await
            .unwrap();
        let gone = reg.sync().await.unwrap();
        assert!(gone.changed);
        assert!(!dir.path().join("m").exists());
        assert_ne!(gone.revision, ok.revision);
    }

    #[tokio::test]
    async fn a_damaged_update_keeps_the_cached_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(InMemory::new());
        let reg = registry(store.clone(), dir.path());
        put(&store, "models/m/1/model.onnx", b"good").await;
        put(
            &store,
            "models/m/1/manifest.json",
            &manifest_for("m", 1, b"good"),
        )
        .await;
        put(&store, "models/m/model.toml", b"max_batch_size = 0\n").await;
        reg.sync().await.unwrap();
        put(&store, "models/m/1/model.onnx", b"evil").await;
        let report = reg.sync().await.unwrap();
        assert_eq!(report.problems.len(), 1);
        assert_eq!(
            fs::read(dir.path().join("m/1/model.onnx")).unwrap(),
            b"good"
        );
        assert!(dir.path().join("m/model.toml").is_file());
    }

    #[tokio::test]
    async fn two_replicas_agree_on_the_revision_and_see_each_others_writes() {
        let store = Arc::new(InMemory::new());
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (
            registry(store.clone(), a_dir.path()),
            registry(store.clone(), b_dir.path()),
        );
        let src = a_dir.path().join("src.onnx");
        fs::write(&src, b"model bytes").unwrap();
        let published = a
            .publish("m", &src, None, Default::default())
            .await
            .unwrap();
        assert_eq!(published.version, 1);
        let second = a
            .publish("m", &src, None, Default::default())
            .await
            .unwrap();
        assert_eq!(second.version, 2);
        assert!(matches!(
            a.publish("m", &src, Some(2), Default::default()).await,
            Err(RegistryError::VersionExists { .. })
        ));
        a.put("m/policy.toml", b"stable = 1\n".to_vec())
            .await
            .unwrap();
        let (ra, rb) = (a.sync().await.unwrap(), b.sync().await.unwrap());
        assert_eq!(ra.revision, rb.revision);
        assert_eq!(
            fs::read(b_dir.path().join("m/policy.toml")).unwrap(),
            b"stable = 1\n"
        );
        assert_eq!(
            fs::read(b_dir.path().join("m/2/model.onnx")).unwrap(),
            b"model bytes"
        );
    }

    #[tokio::test]
    async fn concurrent_updates_all_land() {
        let store = Arc::new(InMemory::new());
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let regs: Vec<_> = dirs
            .iter()
            .map(|d| Arc::new(registry(store.clone(), d.path())))
            .collect();
        let mut tasks = Vec::new();
        for (i, reg) in regs.iter().enumerate() {
            let reg = reg.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..10 {
                    reg.update("audit.log", |old| {
                        let mut bytes = old.map(<[u8]>::to_vec).unwrap_or_default();
                        bytes.extend_from_slice(format!("{i}-{j}\n").as_bytes());
                        Ok::<_, ()>((bytes, ()))
                    })
                    .await
                    .unwrap()
                    .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let log = regs[0].read("audit.log").await.unwrap().unwrap();
        assert_eq!(
            log.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(),
            40
        );
    }
}
