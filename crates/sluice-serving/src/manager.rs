//! The reconcile task: the one place where the set of served versions changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::registry::{RegistryHandle, RegistryOptions};
use arc_swap::ArcSwap;
use sluice_registry::{Fingerprint, ModelConfig, Repository, Verification, VersionEntry};
use sluice_rollout::policy::TrafficPolicy;
use sluice_runtime::{ModelExecutor, OrtRuntime, SessionOptions};
use sluice_telemetry::{LiveState, Metrics, VersionMetrics};
use tokio::sync::{mpsc, oneshot};

use crate::snapshot::{IndexEntry, ModelSnapshot, Snapshot, VersionState};

/// What `load`/`unload` requests can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("model '{0}' is not in the model repository")]
    UnknownModel(String),
    #[error("model '{model}' has no version ready: {reason}")]
    NotReady { model: String, reason: String },
    #[error("the model manager has stopped")]
    Stopped,
    /// The policy does not check out against what is loaded.
    #[error("traffic policy of model '{model}' refused: {reason}")]
    InvalidPolicy { model: String, reason: String },
    /// The policy could not be written to the registry.
    #[error("cannot store the traffic policy of model '{model}': {reason}")]
    PolicyStore { model: String, reason: String },
}

/// A traffic policy change that took effect.
#[derive(Debug, Clone)]
pub struct PolicyChange {
    /// The policy in effect before (`None`: none, the highest version served).
    pub before: Option<TrafficPolicy>,
    pub after: TrafficPolicy,
}

/// How the manager runs.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    pub runtime: OrtRuntime,
    /// Refuse versions without a `manifest.json` (otherwise they load,
    /// reported as unverified).
    pub require_manifests: bool,
    /// Public keys trusted to sign manifests: with them, a version loads
    /// only when its `manifest.sig` verifies with one (refused otherwise,
    /// like any failed load). `None`: signatures are not checked.
    pub trusted_keys: Option<Arc<sluice_registry::TrustedKeys>>,
    /// Rescan the repository at least this often, whatever the file watcher
    /// reports (it can miss events on network filesystems).
    pub rescan_interval: Duration,
    /// Where load metrics and each version's request metrics go; `None`
    /// turns metrics off.
    pub metrics: Option<Arc<Metrics>>,
    /// A registry on object storage whose cache is the repository: polled,
    /// and written to for policy changes. `None`: the repository is a
    /// directory of its own.
    pub registry: Option<RegistryOptions>,
}

enum Command {
    Reconcile(oneshot::Sender<()>),
    Load(String, oneshot::Sender<Result<(), ServingError>>),
    Unload(String, oneshot::Sender<Result<(), ServingError>>),
    SetPolicy(
        String,
        Box<TrafficPolicy>,
        oneshot::Sender<Result<PolicyChange, ServingError>>,
    ),
}

/// Handle to the reconcile task and its routing snapshot. Cheap to clone.
#[derive(Clone)]
pub struct ModelManager {
    /// Read by every request with one atomic load; written only by the
    /// reconcile task.
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// Requests to the reconcile task. Bounded: callers are admin requests.
    commands: mpsc::Sender<Command>,
    root: PathBuf,
    registry: Option<Arc<RegistryHandle>>,
}

impl std::fmt::Debug for ModelManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelManager")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl ModelManager {
    /// Starts the reconcile task on the current tokio runtime. It loads the
    /// repository in the background: until that first pass finishes the
    /// snapshot is empty and not `initialised` (the server answers not
    /// ready). The task stops when every handle is dropped.
    pub fn start(repo: Repository, options: ManagerOptions) -> ModelManager {
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let (commands, rx) = mpsc::channel(64);
        let root = repo.root().to_path_buf();
        if let Some(metrics) = &options.metrics {
            // Queue depths and loaded versions are read from the snapshot at
            // scrape time, so the request path maintains no gauge for them.
            let snapshot = snapshot.clone();
            metrics.set_live_source(move || live_state(&snapshot.load()));
        }
        let registry = options
            .registry
            .clone()
            .map(|r| Arc::new(RegistryHandle::new(r, options.metrics.clone())));
        let task = Reconciler {
            repo,
            options,
            registry: registry.clone(),
            snapshot: snapshot.clone(),
            loaded: HashMap::new(),
            failed: HashMap::new(),
            unloaded: HashSet::new(),
            draining: Vec::new(),
            policies: HashMap::new(),
            initialised: false,
        };
        tokio::spawn(task.run(rx));
        if let Some(registry) = &registry {
            tokio::spawn(poll_registry(registry.clone(), commands.downgrade()));
        }
        ModelManager {
            snapshot,
            commands,
            root,
            registry,
        }
    }

    /// The registry on object storage, when the repository is its cache.
    pub fn registry(&self) -> Option<&Arc<RegistryHandle>> {
        self.registry.as_ref()
    }

    /// The current routing snapshot: one atomic load, no lock.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The current routing snapshot, owned (to keep across an await or
    /// hand to another thread; the request path uses [`snapshot`](Self::snapshot)).
    pub fn snapshot_full(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn repository_root(&self) -> &std::path::Path {
        &self.root
    }

    /// Sends a command to the reconcile task and waits for its answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ServingError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(command(tx))
            .await
            .map_err(|_| ServingError::Stopped)?;
        rx.await.map_err(|_| ServingError::Stopped)
    }

    /// Rescans the repository now and waits until the snapshot reflects it.
    pub async fn reconcile(&self) -> Result<(), ServingError> {
        self.ask(Command::Reconcile).await
    }

    /// Triton's repository `load`: serve `model` again if it was unloaded,
    /// rescan it now, and report whether a version is ready.
    pub async fn load(&self, model: &str) -> Result<(), ServingError> {
        self.ask(|tx| Command::Load(model.to_string(), tx)).await?
    }

    /// Triton's repository `unload`: stop routing to `model` (in-flight
    /// requests finish) until `load` is called for it.
    pub async fn unload(&self, model: &str) -> Result<(), ServingError> {
        self.ask(|tx| Command::Unload(model.to_string(), tx))
            .await?
    }

    /// Puts `policy` in effect for `model`: checked whole against the
    /// versions loaded now, written to the registry (`policy.toml`, atomically,
    /// so replicas sharing it converge), and swapped into the snapshot. The
    /// next request routes by it.
    pub async fn set_policy(
        &self,
        model: &str,
        policy: TrafficPolicy,
    ) -> Result<PolicyChange, ServingError> {
        self.ask(|tx| Command::SetPolicy(model.to_string(), Box::new(policy), tx))
            .await?
    }
}

/// Polls the registry every interval and has the reconcile task rescan
/// when the cache changed. Ends when the manager is gone.
async fn poll_registry(registry: Arc<RegistryHandle>, commands: mpsc::WeakSender<Command>) {
    let mut tick = tokio::time::interval(registry.poll_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the reconcile task did the first sync.
    tick.tick().await;
    loop {
        tick.tick().await;
        if commands.upgrade().is_none() {
            break;
        }
        let changed = registry.sync().await;
        let Some(commands) = commands.upgrade() else {
            break;
        };
        if changed {
            let (tx, rx) = oneshot::channel();
            if commands.send(Command::Reconcile(tx)).await.is_err() {
                break;
            }
            drop(commands);
            let _ = rx.await;
        }
    }
}

/// A version that is loaded, with the files it was loaded from.
struct Loaded {
    executor: Arc<ModelExecutor>,
    fingerprint: Fingerprint,
    verified: bool,
    /// The manifest's signer, when trusted keys verified it.
    signer: Option<String>,
}

struct Reconciler {
    repo: Repository,
    options: ManagerOptions,
    registry: Option<Arc<RegistryHandle>>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// What serves now, per model and version.
    loaded: HashMap<String, BTreeMap<u64, Loaded>>,
    /// Versions that failed to load, with the files that failed: not retried
    /// until those files change.
    failed: HashMap<(String, u64), (Fingerprint, String)>,
    /// Models unloaded through the API; the watcher leaves them alone.
    unloaded: HashSet<String>,
    /// Versions taken out of routing whose in-flight requests may still run.
    draining: Vec<(String, u64, Weak<ModelExecutor>)>,
    /// The policy in effect per model, and the last policy error logged (to
    /// log each problem once, not on every rescan).
    policies: HashMap<String, (Option<Arc<TrafficPolicy>>, Option<String>)>,
    initialised: bool,
}

/// The ONNX Runtime session settings a model's `model.toml` asks for, as
/// the manager loads its versions (also used by `sluice models validate`).
pub fn session_options(config: &ModelConfig) -> SessionOptions {
    SessionOptions {
        instances: config.instances,
        intra_op_threads: config.intra_op_threads,
        inter_op_threads: config.inter_op_threads,
        graph_optimization: config.graph_optimization,
        execution_providers: config.effective_execution_providers(),
        max_queue_size: config.max_queue_size,
        queue_timeout: config.queue_timeout(),
        warmup: config.warmup,
        warmup_shapes: config.warmup_shapes.clone(),
        inline_max_run: Duration::from_micros(config.inline_max_run_us),
        batching: config
            .dynamic_batching
            .as_ref()
            .map(|b| sluice_runtime::BatchingOptions {
                max_batch_size: config.max_batch_size as usize,
                max_queue_delay: Duration::from_micros(b.max_queue_delay_us),
                preferred_batch_sizes: {
                    let mut sizes = b.preferred_batch_sizes.clone();
                    sizes.sort_unstable();
                    sizes
                },
            }),
    }
}

impl Reconciler {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut watcher = match sluice_registry::watch(
            self.repo.root(),
            self.options.rescan_interval,
        ) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the model repository; rescanning periodically");
                None
            }
        };
        let mut tick = tokio::time::interval(self.options.rescan_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A registry on object storage is synced once before the first pass,
        // so the server does not report ready over an empty or stale cache
        // when the bucket can be read. When it cannot, the cache serves.
        if let Some(registry) = &self.registry {
            registry.sync().await;
        }
        self.reconcile().await;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None => break,
                    Some(Command::Reconcile(reply)) => {
                        self.reconcile().await;
                        let _ = reply.send(());
                    }
                    Some(Command::Load(model, reply)) => {
                        self.unloaded.remove(&model);
                        // An explicit load retries versions that failed before.
                        self.failed.retain(|(m, _), _| *m != model);
                        self.reconcile().await;
                        let _ = reply.send(self.readiness(&model));
                    }
                    Some(Command::SetPolicy(model, policy, reply)) => {
                        let result = self.set_policy(&model, *policy).await;
                        let _ = reply.send(result);
                    }
                    Some(Command::Unload(model, reply)) => {
                        let known = self.snapshot.load().knows(&model);
                        if known {
                            self.unloaded.insert(model);
                            self.reconcile().await;
                            let _ = reply.send(Ok(()));
                        } else {
                            let _ = reply.send(Err(ServingError::UnknownModel(model)));
                        }
                    }
                },
                // A file change, or the watcher's periodic rescan; without a
                // watcher (the root could not be watched), the plain timer.
                _ = async {
                    match watcher.as_mut() {
                        Some(w) => { w.changed().await; }
                        None => { tick.tick().await; }
                    }
                } => {
                    self.reconcile().await;
                }
            }
        }
        tracing::debug!("model manager stopped");
    }

    fn readiness(&self, model: &str) -> Result<(), ServingError> {
        let snap = self.snapshot.load();
        if snap.model(model).is_some_and(|m| !m.versions.is_empty()) {
            return Ok(());
        }
        if !snap.knows(model) {
            return Err(ServingError::UnknownModel(model.to_string()));
        }
        let reason = snap.why_not_ready(model);
        Err(ServingError::NotReady {
            model: model.to_string(),
            reason,
        })
    }

    async fn reconcile(&mut self) {
        let scan = match self.repo.scan() {
            Ok(scan) => scan,
            Err(e) => {
                tracing::error!(error = %e, "cannot scan the model repository; serving what was loaded");
                return;
            }
        };
        let mut index = Vec::new();
        let mut models = HashMap::new();
        let mut keep: HashSet<String> = HashSet::new();
        for (name, entry) in &scan.models {
            keep.insert(name.clone());
            if self.unloaded.contains(name) {
                self.retire_model(name);
                index.push(IndexEntry {
                    name: name.clone(),
                    version: String::new(),
                    state: VersionState::Unavailable,
                    reason: "unloaded through the repository API; load it to serve it again".into(),
                    verified: None,
                    signer: None,
                });
                continue;
            }
            let config = match &entry.config {
                Ok(config) => config.clone(),
                Err(message) => {
                    tracing::error!(model = %name, error = %message, "invalid model.toml; keeping what serves");
                    index.push(IndexEntry {
                        name: name.clone(),
                        version: String::new(),
                        state: VersionState::Unavailable,
                        reason: message.clone(),
                        verified: None,
                        signer: None,
                    });
                    // Keep serving the versions loaded under the last good config.
                    if let Some(previous) = self.snapshot.load().model(name) {
                        models.insert(name.clone(), previous.clone());
                        self.index_loaded(name, &mut index);
                    }
                    continue;
                }
            };
            self.reconcile_model(name, entry.versions.clone(), &config, &mut index)
                .await;
            let versions = self
                .loaded
                .get(name)
                .map(|l| l.iter().map(|(v, l)| (*v, l.executor.clone())).collect())
                .unwrap_or_default();
            let gate = crate::gate::verdicts(
                config.require_validation,
                &self.repo.model_dir(name),
                &versions,
            );
            let (policy, policy_error) = self.resolve_policy(name, &versions, &gate);
            models.insert(
                name.clone(),
                Arc::new(ModelSnapshot {
                    name: name.clone(),
                    config,
                    versions,
                    policy,
                    policy_error,
                    gate,
                }),
            );
        }
        if let Some(metrics) = &self.options.metrics {
            // The controller's decision counters exist, at zero, for every
            // model, so dashboards and alerts see zeros rather than gaps.
            for name in models.keys() {
                for decision in ["hold", "advance", "promote", "rollback"] {
                    metrics.rollout_decisions.get(&[name, decision]);
                }
            }
        }
        let gone: Vec<String> = self
            .loaded
            .keys()
            .filter(|m| !keep.contains(*m))
            .cloned()
            .collect();
        for model in gone {
            tracing::info!(model = %model, "model removed from the repository");
            self.retire_model(&model);
        }
        self.failed.retain(|(m, v), _| {
            scan.models
                .get(m)
                .is_some_and(|e| e.versions.contains_key(v))
        });
        self.initialised = true;
        let next = Arc::new(Snapshot {
            models,
            index,
            initialised: true,
        });
        let previous = self.snapshot.swap(next.clone());
        log_swaps(&previous, &next);
        self.report_drained();
    }

    fn index_loaded(&self, name: &str, index: &mut Vec<IndexEntry>) {
        for (v, l) in self.loaded.get(name).into_iter().flatten() {
            index.push(IndexEntry {
                name: name.to_string(),
                version: v.to_string(),
                state: VersionState::Ready,
                reason: String::new(),
                verified: Some(l.verified),
                signer: l.signer.clone(),
            });
        }
    }

    /// Brings one model's loaded versions in line with its directory.
    async fn reconcile_model(
        &mut self,
        name: &str,
        on_disk: BTreeMap<u64, VersionEntry>,
        config: &ModelConfig,
        index: &mut Vec<IndexEntry>,
    ) {
        let present: std::collections::BTreeSet<u64> = on_disk
            .values()
            .filter(|e| e.model_present)
            .map(|e| e.version)
            .collect();
        let wanted = config.selected_versions(&present);
        let mut current = self.loaded.remove(name).unwrap_or_default();
        let mut next: BTreeMap<u64, Loaded> = BTreeMap::new();
        let mut rows: BTreeMap<u64, IndexEntry> = BTreeMap::new();

        // Settings that shape the sessions (instances, threads, providers,
        // queue): a loaded version built with other settings is reloaded.
        let options = session_options(config);
        for &version in &wanted {
            let entry = &on_disk[&version];
            if let Some(loaded) = current.get(&version)
                && loaded.fingerprint == entry.fingerprint
                && *loaded.executor.options() == options
            {
                next.insert(version, current.remove(&version).expect("checked above"));
                continue;
            }
            if let Some((fingerprint, reason)) = self.failed.get(&(name.to_string(), version))
                && *fingerprint == entry.fingerprint
            {
                rows.insert(version, unavailable(name, version, reason.clone()));
                continue;
            }
            // The version serving now is the reference for the new
            // signature: the highest loaded version, new or kept.
            let reference = next
                .values()
                .chain(current.values())
                .max_by_key(|l| l.executor.version())
                .map(|l| l.executor.clone());
            match self
                .load_version(name, entry, config, reference.as_deref())
                .await
            {
                Ok(loaded) => {
                    self.failed.remove(&(name.to_string(), version));
                    if let Some(old) = current.remove(&version) {
                        self.retire(name, old);
                    }
                    next.insert(version, loaded);
                }
                Err(reason) => {
                    tracing::error!(model = %name, version, %reason, "version not loaded");
                    self.failed.insert(
                        (name.to_string(), version),
                        (entry.fingerprint.clone(), reason.clone()),
                    );
                    // A version whose files changed in place and fail to load
                    // keeps serving from what was loaded before.
                    if let Some(old) = current.remove(&version) {
                        next.insert(version, old);
                    }
                    rows.insert(version, unavailable(name, version, reason));
                }
            }
        }

        // If none of the wanted versions could load, the versions serving
        // before keep serving (as long as their files are still there).
        if next.is_empty() {
            let survivors: Vec<u64> = current
                .keys()
                .copied()
                .filter(|v| on_disk.get(v).is_some_and(|e| e.model_present))
                .collect();
            for v in survivors {
                if let Some(l) = current.remove(&v) {
                    tracing::warn!(model = %name, version = v, "no wanted version loaded; the serving version keeps serving");
                    next.insert(v, l);
                }
            }
        }
        for (_, old) in std::mem::take(&mut current) {
            self.retire(name, old);
        }
        for (v, l) in &next {
            // A ready version with a failure row is one whose files changed
            // in place and failed to reload: it serves what it loaded before.
            let reason = rows
                .remove(v)
                .map(|failed| {
                    format!(
                        "serving the files loaded before; the changed files failed to load: {}",
                        failed.reason
                    )
                })
                .unwrap_or_default();
            rows.insert(
                *v,
                IndexEntry {
                    name: name.to_string(),
                    version: v.to_string(),
                    state: VersionState::Ready,
                    reason,
                    verified: Some(l.verified),
                    signer: l.signer.clone(),
                },
            );
        }
        for (v, e) in &on_disk {
            if rows.contains_key(v) {
                continue;
            }
            let reason = if !e.model_present {
                "no model.onnx in the version directory".to_string()
            } else {
                "not selected by the model's version_policy".to_string()
            };
            rows.insert(*v, unavailable(name, *v, reason));
        }
        if rows.is_empty() {
            index.push(IndexEntry {
                name: name.to_string(),
                version: String::new(),
                state: VersionState::Unavailable,
                reason: "no version directory".into(),
                verified: None,
                signer: None,
            });
        }
        index.extend(rows.into_values());
        if !next.is_empty() {
            self.loaded.insert(name.to_string(), next);
        }
    }

    /// Loads a version, recording its duration and outcome in the metrics.
    async fn load_version(
        &self,
        name: &str,
        entry: &VersionEntry,
        config: &ModelConfig,
        reference: Option<&ModelExecutor>,
    ) -> Result<Loaded, String> {
        let started = std::time::Instant::now();
        let result = self
            .load_version_unmetered(name, entry, config, reference)
            .await;
        if let Some(metrics) = &self.options.metrics {
            metrics
                .load_duration
                .get(&[name])
                .observe(started.elapsed().as_secs_f64());
            let success = metrics.loads.get(&[name, "success"]);
            let failure = metrics.loads.get(&[name, "failure"]);
            if result.is_ok() {
                success.inc()
            } else {
                failure.inc()
            }
        }
        result
    }

    async fn load_version_unmetered(
        &self,
        name: &str,
        entry: &VersionEntry,
        config: &ModelConfig,
        reference: Option<&ModelExecutor>,
    ) -> Result<Loaded, String> {
        let version_metrics = self
            .options
            .metrics
            .as_ref()
            .map(|m| VersionMetrics::new(m, name, entry.version));
        let runtime = self.options.runtime.clone();
        let require = self.options.require_manifests;
        let trusted_keys = self.options.trusted_keys.clone();
        let model = name.to_string();
        let version_entry = entry.clone();
        let options = session_options(config);
        tracing::info!(model = %name, version = entry.version, "loading version");
        let safety = config.safety.clone();
        let started = std::time::Instant::now();
        // Hashing and session creation are blocking work.
        let result = tokio::task::spawn_blocking(move || {
            let (verified, signer) = match sluice_registry::verify_signed(&version_entry, &model, trusted_keys.as_deref()).map_err(|e| e.to_string())? {
                Verification::Signed { signer, .. } => {
                    tracing::info!(model = %model, version = version_entry.version, key_id = %signer.key_id, signer = %signer.name, "manifest signature verified");
                    (true, Some(signer.to_string()))
                }
                Verification::Verified(_) => (true, None),
                Verification::Unverified if require => {
                    return Err(format!(
                        "{} has no manifest.json and the server requires manifests (publish it with `sluice models publish`)",
                        version_entry.dir.display()
                    ));
                }
                Verification::Unverified => (false, None),
            };
            // The safety check reads the file itself; ONNX Runtime sees it
            // only if nothing was found (`sluice_modelcheck`, `[safety]`).
            let report = sluice_modelcheck::check_file(&version_entry.model_file, &safety);
            if !report.passed() {
                let reason = format!("refused by the safety check: {}", report.reason());
                tracing::warn!(model = %model, version = version_entry.version, %reason, "model file refused by the safety check; not handed to ONNX Runtime");
                return Err(reason);
            }
            tracing::info!(
                model = %model,
                version = version_entry.version,
                nodes = report.summary.nodes,
                initializer_bytes = report.summary.initializer_bytes,
                "safety check passed; handing the model file to ONNX Runtime"
            );
            let executor = ModelExecutor::load(
                &runtime,
                &model,
                version_entry.version,
                &version_entry.model_file,
                options,
                version_metrics,
            )
                .map_err(|e| e.to_string())?;
            Ok((executor, verified, signer))
        })
        .await
        .map_err(|e| format!("loader thread failed: {e}"))?;
        let (executor, verified, signer) = result?;
        if let Some(reference) = reference
            && reference.version() != entry.version
            && let Some(difference) = reference.signature().incompatibility(executor.signature())
        {
            if config.allow_signature_change {
                tracing::warn!(model = %name, version = entry.version, %difference, "signature changed (allowed by model.toml)");
            } else {
                return Err(format!(
                    "its signature is incompatible with serving version {}: {difference}; \
                     set allow_signature_change = true in model.toml to allow it",
                    reference.version()
                ));
            }
        }
        tracing::info!(
            model = %name,
            version = entry.version,
            verified,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "version ready"
        );
        Ok(Loaded {
            executor: Arc::new(executor),
            fingerprint: entry.fingerprint.clone(),
            verified,
            signer,
        })
    }

    fn retire_model(&mut self, name: &str) {
        if let Some(versions) = self.loaded.remove(name) {
            for (_, l) in versions {
                self.retire(name, l);
            }
        }
    }

    /// The policy to put in the snapshot for `name`: its `policy.toml` when
    /// that checks out against `versions`; otherwise the policy in effect
    /// before, if it still does, with the reason the file was refused.
    fn resolve_policy(
        &mut self,
        name: &str,
        versions: &BTreeMap<u64, Arc<ModelExecutor>>,
        gate: &BTreeMap<u64, crate::gate::Verdict>,
    ) -> (Option<Arc<TrafficPolicy>>, Option<String>) {
        let (previous, logged) = self.policies.remove(name).unwrap_or((None, None));
        let from_file = sluice_rollout::policy::load(&self.repo.model_dir(name))
            .map_err(|e| e.to_string())
            .and_then(|p| match p {
                None => Ok(None),
                Some(p) => crate::policy::validate(&p, versions, gate).map(|()| Some(p)),
            });
        let (policy, error) = match from_file {
            Ok(None) => (None, None),
            Ok(Some(p)) => match &previous {
                Some(prev) if **prev == p => (previous.clone(), None),
                _ => {
                    tracing::info!(model = %name, policy = %serde_json::to_string(&p).unwrap_or_default(), "traffic policy in effect");
                    (Some(Arc::new(p)), None)
                }
            },
            Err(reason) => {
                let kept = previous.filter(|p| crate::policy::validate(p, versions, gate).is_ok());
                if logged.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(
                        model = %name,
                        error = %reason,
                        kept = kept.is_some(),
                        "traffic policy not applied; the policy in effect before stays"
                    );
                }
                (kept, Some(reason))
            }
        };
        self.policies
            .insert(name.to_string(), (policy.clone(), error.clone()));
        (policy, error)
    }

    /// Checks, stores and applies a policy (see [`ModelManager::set_policy`]).
    async fn set_policy(
        &mut self,
        model: &str,
        policy: TrafficPolicy,
    ) -> Result<PolicyChange, ServingError> {
        let invalid = |reason: String| ServingError::InvalidPolicy {
            model: model.to_string(),
            reason,
        };
        // As it will read back from the file (header names lowercased).
        let policy = policy.normalised();
        let snapshot = self.snapshot.load_full();
        let Some(current) = snapshot.model(model) else {
            return Err(if snapshot.knows(model) {
                ServingError::NotReady {
                    model: model.to_string(),
                    reason: snapshot.why_not_ready(model),
                }
            } else {
                ServingError::UnknownModel(model.to_string())
            });
        };
        crate::policy::validate(&policy, &current.versions, &current.gate).map_err(invalid)?;
        let before = current.policy.as_deref().cloned();
        let store_error = |reason: String| ServingError::PolicyStore {
            model: model.to_string(),
            reason,
        };
        match &self.registry {
            // The bucket first (every replica converges on it), then the cache.
            Some(registry) => {
                policy.check().map_err(|e| invalid(e.to_string()))?;
                registry
                    .remote()
                    .put(
                        &format!("{model}/{}", sluice_registry::POLICY_FILE),
                        policy.to_toml().into_bytes(),
                    )
                    .await
                    .map_err(|e| store_error(e.to_string()))?;
            }
            None => sluice_rollout::policy::store(&self.repo.model_dir(model), &policy)
                .map_err(|e| store_error(e.to_string()))?,
        }
        self.reconcile().await;
        let applied = self
            .snapshot
            .load()
            .model(model)
            .and_then(|m| m.policy.as_deref().cloned());
        match applied {
            Some(p) if p == policy => Ok(PolicyChange {
                before,
                after: policy,
            }),
            // A version went away between the check and the reconcile.
            _ => Err(invalid(
                self.snapshot
                    .load()
                    .model(model)
                    .and_then(|m| m.policy_error.clone())
                    .unwrap_or_else(|| "the repository changed while applying it".into()),
            )),
        }
    }

    /// Takes a version out of routing (the caller leaves it out of the next
    /// snapshot); requests holding it finish before its sessions drop.
    fn retire(&mut self, name: &str, loaded: Loaded) {
        let version = loaded.executor.version();
        tracing::info!(model = %name, version, "version retired; draining in-flight requests");
        self.draining
            .push((name.to_string(), version, Arc::downgrade(&loaded.executor)));
    }

    fn report_drained(&mut self) {
        let mut gone = Vec::new();
        self.draining.retain(|(model, version, weak)| {
            let alive = weak.strong_count() > 0;
            if !alive {
                tracing::info!(model = %model, version, "version unloaded");
                gone.push((model.clone(), *version));
            }
            alive
        });
        // Its metric series go with it, unless the same version number was
        // loaded again meanwhile (then the series are the new one's).
        if let Some(metrics) = &self.options.metrics {
            for (model, version) in gone {
                let reloaded = self
                    .loaded
                    .get(&model)
                    .is_some_and(|versions| versions.contains_key(&version));
                if !reloaded {
                    metrics.remove_version(&model, version);
                }
            }
        }
    }
}

/// Logs each model whose default version (the one requests without a
/// version go to) changed with this snapshot: the swap itself.
fn log_swaps(previous: &Snapshot, next: &Snapshot) {
    let default = |s: &Snapshot, name: &str| {
        s.model(name)
            .and_then(|m| m.default_version())
            .map(|e| e.version())
    };
    for name in next.models.keys() {
        let (from, to) = (default(previous, name), default(next, name));
        if from != to {
            tracing::info!(
                model = %name,
                from = from.map(|v| v.to_string()).unwrap_or_default(),
                to = to.map(|v| v.to_string()).unwrap_or_default(),
                "default version swapped"
            );
        }
    }
}

/// The scrape-time gauges: each ready version's queue depth, and each
/// model's number of ready versions.
fn live_state(snapshot: &Snapshot) -> LiveState {
    let mut state = LiveState::default();
    for (name, model) in &snapshot.models {
        state
            .versions_loaded
            .push((name.clone(), model.versions.len()));
        for (v, executor) in &model.versions {
            state
                .queues
                .push((name.clone(), v.to_string(), executor.queued()));
        }
    }
    state.versions_loaded.sort();
    state.queues.sort();
    for (name, model) in &snapshot.models {
        let Some(policy) = &model.policy else {
            continue;
        };
        let canary = model.canary().map(|(e, w)| (e.version(), w));
        if let Some(stable) = model.default_version() {
            let share = 1.0 - canary.map_or(0.0, |(_, w)| w);
            let v = stable.version().to_string();
            state.traffic.push((name.clone(), v, "stable", share));
        }
        if let Some((v, w)) = canary {
            state
                .traffic
                .push((name.clone(), v.to_string(), "canary", w));
        }
        for shadow in &policy.shadows {
            let v = shadow.version.to_string();
            state
                .traffic
                .push((name.clone(), v, "shadow", shadow.percent / 100.0));
        }
    }
    state
        .traffic
        .sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    state
}

fn unavailable(name: &str, version: u64, reason: String) -> IndexEntry {
    IndexEntry {
        name: name.to_string(),
        version: version.to_string(),
        state: VersionState::Unavailable,
        reason,
        verified: None,
        signer: None,
    }
}
