//! The `sluice` command line: `serve` (with the drift collector in process),
//! `collector` (standalone), `models publish|list`, `rollout ...`,
//! `audit ...` and `drift compare|reference set`.
//!
//! Every `serve` setting comes, in order of precedence, from its flag, its
//! `SLUICE_*` environment variable, the `--config` TOML file, or its default.
//! `anyhow` lives here only: the library crates have typed errors.

mod collector;
mod config;
mod drift;
mod rollout;

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
        /// The model repository.
        #[arg(long, env = "SLUICE_MODELS", default_value = "models")]
        models: PathBuf,
        /// Lineage recorded in the manifest, as KEY=VALUE (repeatable), e.g.
        /// --lineage training_run=42 --lineage dataset=iris-2026-11.
        #[arg(long = "lineage", value_name = "KEY=VALUE")]
        lineage: Vec<String>,
    },
    /// List the models and versions in a repository, with manifest status.
    List {
        /// The model repository.
        #[arg(long, env = "SLUICE_MODELS", default_value = "models")]
        models: PathBuf,
    },
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
        }) => {
            let mut map = serde_json::Map::new();
            for pair in lineage {
                let (k, v) = pair
                    .split_once('=')
                    .with_context(|| format!("--lineage {pair:?} is not KEY=VALUE"))?;
                map.insert(k.to_string(), serde_json::Value::String(v.to_string()));
            }
            let repo = sluice_registry::Repository::open(&models)?;
            let published = repo.publish(&model, &file, version, map)?;
            println!(
                "published {} version {} ({}, sha256 {})",
                published.model,
                published.version,
                published.dir.display(),
                published.manifest.sha256
            );
            Ok(())
        }
        Command::Rollout(command) => rollout::run_rollout(command),
        Command::Audit(command) => rollout::run_audit(command),
        Command::Drift(command) => drift::run(command),
        Command::Collector(args) => collector::run_standalone(args),
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

/// `sluice serve`: load the ONNX Runtime library, start the model manager,
/// bind, print the address, serve until SIGINT/SIGTERM.
pub async fn serve(
    settings: ServeSettings,
    metrics: std::sync::Arc<sluice_telemetry::Metrics>,
) -> anyhow::Result<()> {
    let runtime = sluice_runtime::OrtRuntime::init(settings.ort_lib.as_deref())?;
    tracing::info!(library = %runtime.library().display(), "ONNX Runtime loaded");
    let repo = sluice_registry::Repository::open(&settings.models)?;
    let manager = sluice_serving::ModelManager::start(
        repo,
        sluice_serving::ManagerOptions {
            runtime,
            require_manifests: settings.require_manifests,
            rescan_interval: settings.rescan_interval,
            metrics: Some(metrics.clone()),
        },
    );
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.http_addr))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find the port when binding port 0.
    println!("listening on http://{addr}");
    tracing::info!(%addr, models = %settings.models.display(), "serving");
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
    if let Some(collector) = &settings.collector {
        // The collector in process: its routes on this port, and captured
        // requests sent to it over loopback like to any other collector.
        let store = collector.store_for(Some(&settings.models));
        let (collector, routes) = collector.open(store.clone())?;
        http.extra_routes = Some(routes);
        let port = addr.port();
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        let host = if addr.is_ipv6() && !addr.ip().is_unspecified() {
            format!("[{host}]")
        } else {
            host
        };
        http.capture.url = Some(format!("http://{host}:{port}/v1/events"));
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
    let mut stopped = stop.subscribe();
    let main = sluice_server::run_with_grpc(listener, grpc_listener, manager, http, async move {
        let _ = stopped.recv().await;
    });
    tokio::pin!(main);
    tokio::select! {
        result = &mut main => result?,
        _ = shutdown_signal() => {
            let _ = stop.send(());
            main.await?;
        }
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
