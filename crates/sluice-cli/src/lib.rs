//! The `sluice` command line: `serve` (with the drift collector in process),
//! `collector` (standalone), `models publish|list`, `rollout ...`,
//! `audit ...` and `drift compare|reference set`.
//!
//! Every `serve` setting comes, in order of precedence, from its flag, its
//! `SLUICE_*` environment variable, the `--config` TOML file, or its default.
//! `anyhow` lives here only: the library crates have typed errors.

mod check;
mod collector;
mod config;
mod drift;
mod inventory;
mod rollout;
mod signing;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

pub use config::{FileConfig, ServeArgs, ServeSettings};

/// Sluice: a model-serving gateway for ONNX models, speaking the Open
/// Inference Protocol (KServe v2) with Triton's extensions.
#[derive(Debug, Parser)]
#[command(name = "sluice", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve every model in a model repository over HTTP, reloading versions
    /// as they appear and disappear.
    Serve(ServeArgs),
    /// Manage the model repository.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Canary, shadow and progressive rollouts of a running gateway (its
    /// admin API; the key from SLUICE_ADMIN_KEY).
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// The registry's audit log of policy changes, promotions and rollbacks.
    #[command(subcommand)]
    Audit(rollout::AuditCommand),
    /// Distribution drift: between two samples of features (CSV files), and
    /// the collector's reference datasets.
    #[command(subcommand)]
    Drift(drift::DriftCommand),
    /// Run the drift collector alone; gateways send it their captured
    /// requests with --capture-url http://HOST:PORT/v1/events.
    Collector(collector::CollectorArgs),
    /// GET an http:// URL and exit 0 if it answers 200, 1 otherwise (a
    /// container health check needing no curl, e.g.
    /// `sluice probe http://127.0.0.1:8000/v2/health/ready`).
    Probe {
        /// The URL, http://HOST:PORT/PATH.
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Publish FILE as a new version of MODEL, atomically: a running server
    /// sees either nothing or the complete version with its manifest.
    Publish {
        /// Model name ([A-Za-z0-9_.-], not starting with '.').
        model: String,
        /// The ONNX file to publish.
        file: PathBuf,
        /// Version number; default: one more than the highest existing version.
        #[arg(long)]
        version: Option<u64>,
        /// The model repository: a directory, or s3://BUCKET/PREFIX
        /// (credentials from the standard AWS_* environment).
        #[arg(long, env = "SLUICE_MODELS", default_value = "models")]
        models: PathBuf,
        /// Lineage recorded in the manifest, as KEY=VALUE (repeatable), e.g.
        /// --lineage training_run=42 --lineage dataset=iris-2026-11.
        #[arg(long = "lineage", value_name = "KEY=VALUE")]
        lineage: Vec<String>,
        /// The governance facts an auditor asks for, recorded in the
        /// lineage under their own keys (and shown by `models inventory`).
        #[command(flatten)]
        governance: Governance,
        /// Sign the manifest with this Ed25519 private key (PKCS#8 PEM, from
        /// `sluice models keygen` or `openssl genpkey -algorithm ed25519`):
        /// manifest.sig appears with the version
        #[arg(long, env = "SLUICE_SIGNING_KEY", value_name = "KEY")]
        sign: Option<PathBuf>,
    },
    /// Make an Ed25519 key pair for `publish --sign`: PREFIX.key (private,
    /// PKCS#8 PEM, mode 0600) and PREFIX.pub (public, SPKI PEM, for the
    /// gateway's --trusted-keys file). Existing files are not overwritten.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
        /// A name written into PREFIX.pub (`# name: NAME`), which gateways
        /// report as the signer; default: the key id.
        #[arg(long)]
        name: Option<String>,
    },
    /// Every model and version a gateway serves or knows, with its hash,
    /// signer, lineage, validation result, current role, and when and by
    /// whom it took that role (its admin API; the key from SLUICE_ADMIN_KEY).
    Inventory {
        #[command(flatten)]
        target: rollout::Target,
        /// The gateway's JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Check an ONNX file for safety, as the gateway does before loading a
    /// version: external data leaving its directory, custom operator
    /// domains, opsets out of range, oversized tensors, undefined graph
    /// values. Prints each finding and exits non-zero if there is any.
    Check {
        /// The model file.
        file: PathBuf,
        /// A model.toml whose [safety] table sets the limits; default: the
        /// defaults.
        #[arg(long, value_name = "MODEL_TOML")]
        config: Option<PathBuf>,
    },
    /// Validate a version offline on a labelled CSV: quality, fairness
    /// across groups, latency and a comparison with the stable version,
    /// checked against model.toml's [validation] checks. Writes the report
    /// to the version's validation.json and records it in its manifest.
    /// Exits 0 when every check passes, 1 when one fails, 2 on errors.
    Validate(validate::ValidateArgs),
    /// List the models and versions in a repository, with manifest status.
    List {
        /// The model repository: a directory, or s3://BUCKET/PREFIX.
        #[arg(long, env = "SLUICE_MODELS", default_value = "models")]
        models: PathBuf,
    },
}

/// `models publish` flags for the facts governance frameworks (ISO/IEC
/// 42001, the NIST AI RMF) ask to be traceable per model version.
#[derive(Debug, Clone, clap::Args)]
pub struct Governance {
    /// Who answers for the model (a team or person).
    #[arg(long)]
    pub owner: Option<String>,
    /// What the model is for, and what it must not be used for.
    #[arg(long, value_name = "TEXT")]
    pub intended_use: Option<String>,
    /// Its risk tier, e.g. minimal, limited, high (the EU AI Act's terms).
    #[arg(long, value_name = "TIER")]
    pub risk_tier: Option<String>,
    /// The revision of the code that trained it (a git commit).
    #[arg(long, value_name = "REV")]
    pub code_revision: Option<String>,
    /// The training data: its SHA-256 is recorded (as training_data_sha256).
    #[arg(long, value_name = "FILE", conflicts_with = "training_data_sha256")]
    pub training_data: Option<PathBuf>,
    /// The training data's SHA-256, when the data is not at hand.
    #[arg(long, value_name = "HEX")]
    pub training_data_sha256: Option<String>,
}

impl Governance {
    /// Adds the facts given to `lineage` (they win over `--lineage` pairs of
    /// the same name).
    fn record(
        &self,
        lineage: &mut serde_json::Map<String, serde_json::Value>,
    ) -> anyhow::Result<()> {
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                lineage.insert(k.to_string(), serde_json::Value::String(v.clone()));
            }
        };
        put("owner", &self.owner);
        put("intended_use", &self.intended_use);
        put("risk_tier", &self.risk_tier);
        put("code_revision", &self.code_revision);
        let data_sha256 = match (&self.training_data, &self.training_data_sha256) {
            (Some(path), _) => Some(
                sluice_registry::hash_file(path)
                    .with_context(|| format!("--training-data {}", path.display()))?
                    .1,
            ),
            (None, Some(hex)) => {
                anyhow::ensure!(
                    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                    "--training-data-sha256 must be 64 hex digits"
                );
                Some(hex.to_ascii_lowercase())
            }
            (None, None) => None,
        };
        put("training_data_sha256", &data_sha256);
        Ok(())
    }
}

/// Parses the command line and runs it; the exit code says whether it worked.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let settings = ServeSettings::resolve(args)?;
            let metrics = std::sync::Arc::new(sluice_telemetry::Metrics::new());
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("sluice-async")
                .build()
                .context("cannot start the async runtime")?;
            let guard = {
                let _context = rt.enter();
                config::init_telemetry(&settings, metrics.clone())?
            };
            let served = rt.block_on(serve(settings, metrics));
            // Flush pending spans outside the async runtime (it blocks).
            drop(rt);
            guard.shutdown();
            served
        }
        Command::Models(ModelsCommand::Publish {
            model,
            file,
            version,
            models,
            lineage,
            governance,
            sign,
        }) => {
            let mut map = serde_json::Map::new();
            for pair in lineage {
                let (k, v) = pair
                    .split_once('=')
                    .with_context(|| format!("--lineage {pair:?} is not KEY=VALUE"))?;
                map.insert(k.to_string(), serde_json::Value::String(v.to_string()));
            }
            governance.record(&mut map)?;
            // Read the key first: a bad key publishes nothing.
            let key = sign
                .as_deref()
                .map(sluice_registry::PrivateKey::load)
                .transpose()?;
            let published = match models.to_str().filter(|m| sluice_registry::is_remote(m)) {
                Some(url) => {
                    let registry = open_remote(url)?;
                    block_on(registry.publish_signed(&model, &file, version, map, key.as_ref()))??
                }
                None => sluice_registry::Repository::open(&models)?.publish_signed(
                    &model,
                    &file,
                    version,
                    map,
                    key.as_ref(),
                )?,
            };
            println!(
                "published {} version {} ({}, sha256 {})",
                published.model,
                published.version,
                published.dir.display(),
                published.manifest.sha256
            );
            if let Some(key) = &key {
                println!("signed with key {}", key.key_id());
            }
            Ok(())
        }
        Command::Models(ModelsCommand::Keygen { out, name }) => {
            let (private, public, id) = signing::keygen(&out, name.as_deref())?;
            println!(
                "key {id}: private key {} (keep it secret), public key {} (add it to the gateway's --trusted-keys file)",
                private.display(),
                public.display()
            );
            Ok(())
        }
        Command::Models(ModelsCommand::Check { file, config }) => {
            check::run(&file, config.as_ref())
        }
        Command::Models(ModelsCommand::Validate(args)) => validate::run(args),
        Command::Rollout(command) => rollout::run_rollout(command),
        Command::Audit(command) => rollout::run_audit(command),
        Command::Drift(command) => drift::run(command),
        Command::Collector(args) => collector::run_standalone(args),
        Command::Probe { url, timeout } => {
            let status = probe(&url, std::time::Duration::from_secs_f64(timeout.max(0.01)))?;
            if status == 200 {
                println!("{url}: 200");
                Ok(())
            } else {
                anyhow::bail!("{url}: {status}")
            }
        }
        Command::Models(ModelsCommand::Inventory { target, json }) => inventory::run(&target, json),
        Command::Models(ModelsCommand::List { models })
            if models.to_str().is_some_and(sluice_registry::is_remote) =>
        {
            let url = models.to_str().unwrap_or_default();
            let listing = block_on(open_remote(url)?.listing())??;
            for (name, versions) in &listing {
                println!("{name}");
                for (v, manifest) in versions {
                    let state = if *manifest {
                        "manifest"
                    } else {
                        "no manifest (upload in progress?)"
                    };
                    println!("  {v}  {state}");
                }
            }
            Ok(())
        }
        Command::Models(ModelsCommand::List { models }) => {
            let repo = sluice_registry::Repository::open(&models)?;
            let scan = repo.scan()?;
            for (name, entry) in &scan.models {
                let config = match &entry.config {
                    Ok(_) => "".to_string(),
                    Err(e) => format!("  (invalid model.toml: {e})"),
                };
                println!("{name}{config}");
                for (v, e) in &entry.versions {
                    let manifest = if e.manifest_file.is_some() {
                        "manifest"
                    } else {
                        "no manifest"
                    };
                    let file = if e.model_present {
                        "model.onnx"
                    } else {
                        "no model.onnx"
                    };
                    println!("  {v}  {file}, {manifest}");
                }
            }
            Ok(())
        }
    }
}

/// GETs `url` (http:// only) and returns the status code of the answer.
fn probe(url: &str, timeout: std::time::Duration) -> anyhow::Result<u16> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs can be probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("{url}: cannot resolve {authority} (HOST:PORT)"))?
        .next()
        .with_context(|| format!("{url}: {authority} resolves to no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("{url}: cannot connect"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: sluice-probe\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") && head.len() < 1024 {
        if stream
            .read(&mut byte)
            .with_context(|| format!("{url}: no answer"))?
            == 0
        {
            break;
        }
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{url}: not an HTTP answer: {:?}", line.trim()))
}

/// Opens a registry on object storage for a one-off command (publish,
/// list, audit verify): nothing is cached.
pub(crate) fn open_remote(url: &str) -> anyhow::Result<sluice_registry::RemoteRegistry> {
    Ok(sluice_registry::RemoteRegistry::open(
        url,
        &config::default_registry_cache(url),
    )?)
}

/// Runs one future to completion on a small runtime of its own.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(rt.block_on(future))
}

/// `sluice serve`: load the ONNX Runtime library, start the model manager,
/// bind, print the address, serve until SIGINT/SIGTERM.
pub async fn serve(
    settings: ServeSettings,
    metrics: std::sync::Arc<sluice_telemetry::Metrics>,
) -> anyhow::Result<()> {
    let runtime = sluice_runtime::OrtRuntime::init(settings.ort_lib.as_deref())?;
    tracing::info!(library = %runtime.library().display(), "ONNX Runtime loaded");
    let registry = match &settings.registry {
        Some(remote) => {
            let registry = sluice_registry::RemoteRegistry::open(&remote.url, &remote.cache)?;
            std::fs::create_dir_all(&remote.cache).with_context(|| {
                format!(
                    "cannot create the registry cache {}",
                    remote.cache.display()
                )
            })?;
            tracing::info!(
                registry = %remote.url,
                cache = %remote.cache.display(),
                poll_ms = remote.poll_interval.as_millis() as u64,
                "model registry on object storage"
            );
            Some(sluice_serving::RegistryOptions {
                remote: std::sync::Arc::new(registry),
                poll_interval: remote.poll_interval,
            })
        }
        None => None,
    };
    let repo = sluice_registry::Repository::open(&settings.models)?;
    if let Some(keys) = &settings.trusted_keys {
        tracing::info!(
            keys = keys.len(),
            file = %keys.source().display(),
            "only versions signed by a trusted key load"
        );
    }
    let manager = sluice_serving::ModelManager::start(
        repo,
        sluice_serving::ManagerOptions {
            runtime,
            require_manifests: settings.require_manifests,
            trusted_keys: settings.trusted_keys.clone(),
            rescan_interval: settings.rescan_interval,
            metrics: Some(metrics.clone()),
            registry,
        },
    );
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.http_addr))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find the port when binding port 0.
    println!("listening on http://{addr}");
    let models = match &settings.registry {
        Some(remote) => remote.url.clone(),
        None => settings.models.display().to_string(),
    };
    tracing::info!(%addr, %models, "serving");
    tracing::info!(
        admin_keys = settings.http.admin_keys.len(),
        api_keys = settings.http.api_keys.len(),
        "admin API {}; inference API {}",
        if settings.http.admin_keys.is_empty() {
            "off (no admin keys)"
        } else {
            "on"
        },
        if settings.http.api_keys.is_empty() {
            "open"
        } else {
            "needs an API key"
        },
    );
    // One shutdown signal for both listeners.
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let metrics_server = match settings.metrics_addr {
        Some(metrics_addr) => {
            let listener = tokio::net::TcpListener::bind(metrics_addr)
                .await
                .with_context(|| format!("cannot listen on {metrics_addr} for metrics"))?;
            println!("metrics on http://{}", listener.local_addr()?);
            let mut stopped = stop.subscribe();
            let metrics = metrics.clone();
            Some(tokio::spawn(async move {
                sluice_server::run_metrics(listener, metrics, async move {
                    let _ = stopped.recv().await;
                })
                .await
            }))
        }
        None => None,
    };
    let mut http = settings.http.clone();
    // The in-process collector: its routes on the gateway's port for users,
    // and on a loopback port of its own for the capture exporter. That one
    // stays open until the gateway has drained and flushed its last capture
    // records (the gateway's own port closes first, at shutdown).
    let mut capture_listener = None;
    if let Some(collector) = &settings.collector {
        let store = collector.store_for(Some(&settings.models));
        let (collector, routes) = collector.open(store.clone())?;
        let internal = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .context("cannot listen on 127.0.0.1 for the in-process collector")?;
        http.capture.url = Some(format!("http://{}/v1/events", internal.local_addr()?));
        let mut stopped = stop.subscribe();
        capture_listener = Some(tokio::spawn(sluice_server::run_router(
            "collector",
            internal,
            routes.clone(),
            async move {
                let _ = stopped.recv().await;
            },
        )));
        http.extra_routes = Some(routes);
        tracing::info!(
            store = %store.display(),
            versions = collector.versions().len(),
            "drift collector in process: captured requests go to /v1/events, drift at / and /v1/models/{{m}}/drift"
        );
    }
    http.metrics = Some(metrics);
    http.trace_sample_ratio = settings
        .trace
        .endpoint
        .is_some()
        .then_some(settings.trace.sample_ratio);
    let grpc_listener = match settings.grpc_addr {
        Some(grpc_addr) => {
            let listener = tokio::net::TcpListener::bind(grpc_addr)
                .await
                .with_context(|| format!("cannot listen on {grpc_addr} for gRPC"))?;
            println!("grpc on http://{}", listener.local_addr()?);
            Some(listener)
        }
        None => None,
    };
    // The signal stops the gateway's listeners first (they drain, then
    // capture flushes its records); the collector's loopback listener and
    // the metrics listener are stopped after that, below.
    let (main_stop, main_stopped) = tokio::sync::oneshot::channel::<()>();
    let main = sluice_server::run_with_grpc(listener, grpc_listener, manager, http, async move {
        let _ = main_stopped.await;
    });
    tokio::pin!(main);
    tokio::select! {
        result = &mut main => result?,
        _ = shutdown_signal() => {
            let _ = main_stop.send(());
            main.await?;
        }
    }
    let _ = stop.send(());
    if let Some(task) = capture_listener {
        task.await.context("collector listener task")??;
    }
    if let Some(task) = metrics_server {
        let _ = stop.send(());
        task.await.context("metrics server task")??;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
