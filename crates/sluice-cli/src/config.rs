//! `serve` settings: flags, `SLUICE_*` variables, an optional TOML file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

/// Options of `sluice serve`. Each flag is also an environment variable, and
/// a key of the same name (with `_` for `-`) in the `--config` file.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys: models, http_addr,
    /// max_body_bytes, require_manifests, trusted_keys, rescan_interval_ms, ort_lib,
    /// log_format, log, capture_url, capture_source, ...: each flag's name
    /// with `_` for `-`). Unknown keys are an error. Flags and environment
    /// variables override it.
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The model repository: a directory of <model>/<version>/model.onnx,
    /// or object storage, s3://BUCKET/PREFIX (gs://, az:// in builds with
    /// the gcs/azure features), credentials from the standard environment
    /// (AWS_*; AWS_ENDPOINT_URL and AWS_ALLOW_HTTP for S3-compatible
    /// servers) [default: models]
    #[arg(long, env = "SLUICE_MODELS", value_name = "DIR|URL")]
    pub models: Option<PathBuf>,
    /// Address to serve HTTP on; port 0 picks a free port (printed at start)
    /// [default: 127.0.0.1:8000]
    #[arg(long, env = "SLUICE_HTTP_ADDR", value_name = "HOST:PORT")]
    pub http_addr: Option<SocketAddr>,
    /// Largest request body accepted; larger ones get 413 [default: 67108864]
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Refuse model versions without a manifest.json (as `sluice models
    /// publish` writes) [default: false]
    #[arg(long, env = "SLUICE_REQUIRE_MANIFESTS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub require_manifests: Option<bool>,
    /// Rescan the repository at least this often, besides the file watcher
    /// [default: 2000]
    #[arg(long, env = "SLUICE_RESCAN_INTERVAL_MS", value_name = "MS")]
    pub rescan_interval_ms: Option<u64>,
    /// The ONNX Runtime shared library [default: .sluice/ort/libonnxruntime.so
    /// of the checkout, as fetched by `make ort`]
    #[arg(long, env = "ORT_DYLIB_PATH", value_name = "FILE")]
    pub ort_lib: Option<PathBuf>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Also serve /metrics on this address (it is always on the HTTP port
    /// too); port 0 picks a free port (printed at start)
    #[arg(long, env = "SLUICE_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// Also serve gRPC (inference.GRPCInferenceService, grpc.health.v1) on
    /// this address (it is always on the HTTP port too); port 0 picks a
    /// free port (printed at start)
    #[arg(long, env = "SLUICE_GRPC_ADDR", value_name = "HOST:PORT")]
    pub grpc_addr: Option<SocketAddr>,
    /// OTLP collector to export traces to, e.g. http://127.0.0.1:4317 (gRPC)
    /// or http://127.0.0.1:4318 (HTTP; /v1/traces is appended). Without it
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT are
    /// used; with none, traces are not exported
    #[arg(long, env = "SLUICE_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport: grpc or http/protobuf [default: grpc, or
    /// OTEL_EXPORTER_OTLP_PROTOCOL]
    #[arg(long, env = "SLUICE_OTLP_PROTOCOL", value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// Share of new traces to sample, 0 to 1; a caller's sampled traceparent
    /// is always followed (parent-based) [default: 1]
    #[arg(long, env = "SLUICE_TRACE_SAMPLE_RATIO", value_name = "RATIO")]
    pub trace_sample_ratio: Option<f64>,
    /// Log filter, tracing's EnvFilter syntax (e.g. info, sluice_serving=debug);
    /// RUST_LOG is used when this is not set
    /// [default: info,ort=warn]
    #[arg(long, env = "SLUICE_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// File of admin API keys, one `name:key` per line (keys of 16+
    /// characters). Without it, SLUICE_ADMIN_KEYS (`name:key,name:key`) is
    /// read; with neither, the admin API (/admin/...) refuses every call
    #[arg(long, env = "SLUICE_ADMIN_KEYS_FILE", value_name = "FILE")]
    pub admin_keys_file: Option<PathBuf>,
    /// File of keys the inference API requires, like --admin-keys-file;
    /// else SLUICE_API_KEYS; with neither, the inference API is open
    #[arg(long, env = "SLUICE_API_KEYS_FILE", value_name = "FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// File of Ed25519 public keys (SPKI PEM, one or more; `# name: NAME`
    /// before a key names it) trusted to sign manifests: only versions
    /// whose manifest.sig (from `sluice models publish --sign`) verifies
    /// with one of them load. Without it signatures are not checked
    #[arg(long, env = "SLUICE_TRUSTED_KEYS", value_name = "FILE")]
    pub trusted_keys: Option<PathBuf>,
    /// Shadow copies in flight per shadow version before more are dropped
    /// [default: 64]
    #[arg(long, env = "SLUICE_SHADOW_QUEUE", value_name = "N")]
    pub shadow_queue: Option<usize>,
    /// Cores each shadow version may use on average; copies beyond this
    /// compute budget are dropped and counted, so a slow shadow cannot take
    /// the primary's cores; 0 = no budget [default: 0.05]
    #[arg(long, env = "SLUICE_SHADOW_CPU", value_name = "CORES")]
    pub shadow_cpu: Option<f64>,
    /// Request capture (boxed: keeps `ServeArgs`, and the `Command` enum
    /// holding it, small).
    #[command(flatten)]
    pub capture: Box<CaptureArgs>,
    /// The drift collector in process (flags and environment only).
    #[command(flatten)]
    pub collector: Box<crate::collector::ServeCollectorArgs>,
    /// A registry on object storage.
    #[command(flatten)]
    pub registry: Box<RegistryArgs>,
}

/// The flags of a registry on object storage (`--models s3://...`).
#[derive(Debug, Args, Default)]
pub struct RegistryArgs {
    /// Where versions from object storage are downloaded (and checked
    /// against their manifests) before loading; kept across restarts, so a
    /// replica that starts while the registry is unreachable serves what it
    /// had [default: .sluice/registry/<bucket and prefix>]
    #[arg(long, env = "SLUICE_REGISTRY_CACHE", value_name = "DIR")]
    pub registry_cache: Option<PathBuf>,
    /// How often object storage is polled for new versions, policies and
    /// model.toml changes; every replica converges within one interval
    /// [default: 10000]
    #[arg(long, env = "SLUICE_REGISTRY_POLL_MS", value_name = "MS")]
    pub registry_poll_ms: Option<u64>,
}

/// A registry on object storage, resolved.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub url: String,
    pub cache: PathBuf,
    pub poll_interval: Duration,
}

/// The default cache directory of the registry at `url`.
pub fn default_registry_cache(url: &str) -> PathBuf {
    let name: String = url
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    PathBuf::from(".sluice/registry").join(name)
}

/// The capture flags of `sluice serve`.
#[derive(Debug, Args, Default)]
pub struct CaptureArgs {
    /// Collector of captured requests: the models whose model.toml has a
    /// [capture] table send sampled requests' inputs and outputs here, as
    /// CloudEvents batches (POST, application/cloudevents-batch+json), e.g.
    /// http://127.0.0.1:9000/v1/events. Without it nothing is captured
    #[arg(long, env = "SLUICE_CAPTURE_URL", value_name = "URL")]
    pub capture_url: Option<String>,
    /// The host in captured records' CloudEvents source,
    /// sluice://<this>/<model> [default: the host name]
    #[arg(long, env = "SLUICE_CAPTURE_SOURCE", value_name = "NAME")]
    pub capture_source: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The `--config` file. Same names as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub models: Option<PathBuf>,
    pub http_addr: Option<SocketAddr>,
    pub max_body_bytes: Option<u64>,
    pub require_manifests: Option<bool>,
    pub rescan_interval_ms: Option<u64>,
    pub ort_lib: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub log: Option<String>,
    pub metrics_addr: Option<SocketAddr>,
    pub grpc_addr: Option<SocketAddr>,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    pub trace_sample_ratio: Option<f64>,
    pub admin_keys_file: Option<PathBuf>,
    pub api_keys_file: Option<PathBuf>,
    pub trusted_keys: Option<PathBuf>,
    pub shadow_queue: Option<usize>,
    pub shadow_cpu: Option<f64>,
    pub capture_url: Option<String>,
    pub capture_source: Option<String>,
    pub registry_cache: Option<PathBuf>,
    pub registry_poll_ms: Option<u64>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// The settings `serve` runs with, after precedence is applied.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// The repository read: the directory given, or the cache of
    /// `registry`.
    pub models: PathBuf,
    /// The registry on object storage `models` caches, if any.
    pub registry: Option<RemoteSettings>,
    pub http_addr: SocketAddr,
    pub require_manifests: bool,
    /// The keys manifests must be signed with (`--trusted-keys`), read
    /// at start; `None`: signatures are not checked.
    pub trusted_keys: Option<std::sync::Arc<sluice_registry::TrustedKeys>>,
    pub rescan_interval: Duration,
    pub ort_lib: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log: String,
    pub http: sluice_server::HttpOptions,
    pub metrics_addr: Option<SocketAddr>,
    pub grpc_addr: Option<SocketAddr>,
    pub trace: sluice_telemetry::trace::TraceConfig,
    /// The drift collector to run in process: `None` with --no-collector or
    /// when --capture-url sends records elsewhere.
    pub collector: Option<crate::collector::CollectorSettings>,
}

impl ServeSettings {
    pub fn resolve(args: ServeArgs) -> anyhow::Result<ServeSettings> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        // A relative path in the config file is relative to that file.
        let base = args
            .config
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let from_file =
            |p: Option<PathBuf>| p.map(|p| if p.is_relative() { base.join(p) } else { p });
        let rescan_ms = args
            .rescan_interval_ms
            .or(file.rescan_interval_ms)
            .unwrap_or(2000);
        if rescan_ms == 0 {
            anyhow::bail!("rescan_interval_ms must be at least 1");
        }
        let max_body_bytes = args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(64 * 1024 * 1024);
        if max_body_bytes == 0 {
            anyhow::bail!("max_body_bytes must be at least 1");
        }
        let capture = sluice_server::CaptureOptions {
            url: args
                .capture
                .capture_url
                .or(file.capture_url)
                .filter(|u| !u.trim().is_empty()),
            source: args.capture.capture_source.or(file.capture_source),
            ..Default::default()
        };
        capture.check().map_err(|e| anyhow::anyhow!(e))?;
        let collector = (!args.collector.no_collector && capture.url.is_none())
            .then(|| args.collector.settings.clone());
        // A URL is a registry on object storage; a path in the config file
        // is relative to the file.
        let is_url = |p: &Path| p.to_str().is_some_and(sluice_registry::is_remote);
        let models = args.models.or_else(|| match file.models {
            Some(m) if is_url(&m) => Some(m),
            m => from_file(m),
        });
        let remote = models
            .as_deref()
            .and_then(Path::to_str)
            .filter(|m| sluice_registry::is_remote(m))
            .map(str::to_string);
        let registry = match remote {
            None => None,
            Some(url) => {
                let poll_ms = args
                    .registry
                    .registry_poll_ms
                    .or(file.registry_poll_ms)
                    .unwrap_or(10_000);
                if poll_ms == 0 {
                    anyhow::bail!("registry_poll_ms must be at least 1");
                }
                let cache = args
                    .registry
                    .registry_cache
                    .clone()
                    .or_else(|| from_file(file.registry_cache))
                    .unwrap_or_else(|| default_registry_cache(&url));
                Some(RemoteSettings {
                    url,
                    cache,
                    poll_interval: Duration::from_millis(poll_ms),
                })
            }
        };
        let models = match &registry {
            Some(remote) => remote.cache.clone(),
            None => models.unwrap_or_else(|| PathBuf::from("models")),
        };
        Ok(ServeSettings {
            collector,
            models,
            registry,
            http_addr: args
                .http_addr
                .or(file.http_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8000))),
            require_manifests: args
                .require_manifests
                .or(file.require_manifests)
                .unwrap_or(false),
            trusted_keys: args
                .trusted_keys
                .or_else(|| from_file(file.trusted_keys))
                .map(|path| sluice_registry::TrustedKeys::load(&path).map(std::sync::Arc::new))
                .transpose()?,
            rescan_interval: Duration::from_millis(rescan_ms),
            ort_lib: args.ort_lib.or_else(|| from_file(file.ort_lib)),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            log: args
                .log
                .or(file.log)
                .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()))
                .unwrap_or_else(|| "info,ort=warn".into()),
            metrics_addr: args.metrics_addr.or(file.metrics_addr),
            grpc_addr: args.grpc_addr.or(file.grpc_addr),
            trace: trace_config(
                args.otlp_endpoint.or(file.otlp_endpoint),
                args.otlp_protocol.or(file.otlp_protocol),
                args.trace_sample_ratio.or(file.trace_sample_ratio),
            )?,
            http: sluice_server::HttpOptions {
                max_body_bytes,
                admin_keys: keys(
                    "admin",
                    args.admin_keys_file
                        .or_else(|| from_file(file.admin_keys_file)),
                    "SLUICE_ADMIN_KEYS",
                )?,
                api_keys: keys(
                    "API",
                    args.api_keys_file.or_else(|| from_file(file.api_keys_file)),
                    "SLUICE_API_KEYS",
                )?,
                shadow_queue: args.shadow_queue.or(file.shadow_queue).unwrap_or(64).max(1),
                shadow_cpu: match args.shadow_cpu.or(file.shadow_cpu).unwrap_or(0.05) {
                    c if c.is_finite() && c >= 0.0 => c,
                    c => anyhow::bail!("shadow_cpu must be a number of cores >= 0, not {c}"),
                },
                capture,
                ..Default::default()
            },
        })
    }
}

/// Keys from `file`, else from the environment variable `var`, else none.
/// Errors never show a key.
fn keys(what: &str, file: Option<PathBuf>, var: &str) -> anyhow::Result<sluice_server::KeySet> {
    let text = match &file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the {what} keys file {}", path.display()))?,
        None => std::env::var(var).unwrap_or_default(),
    };
    sluice_server::KeySet::parse(&text).map_err(|e| match &file {
        Some(path) => anyhow::anyhow!("{what} keys file {}: {e}", path.display()),
        None => anyhow::anyhow!("{var}: {e}"),
    })
}

/// The trace settings: flags (or the config file) first, then the standard
/// OpenTelemetry variables.
fn trace_config(
    endpoint: Option<String>,
    protocol: Option<String>,
    ratio: Option<f64>,
) -> anyhow::Result<sluice_telemetry::trace::TraceConfig> {
    use sluice_telemetry::trace::{OtlpProtocol, TraceConfig};
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let protocol_text = protocol
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
    let protocol = match protocol_text {
        None => OtlpProtocol::Grpc,
        Some(p) => OtlpProtocol::parse(&p)
            .with_context(|| format!("unknown OTLP protocol {p:?}: use grpc or http/protobuf"))?,
    };
    let endpoint = endpoint
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let sample_ratio = ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        anyhow::bail!("trace_sample_ratio must be between 0 and 1, not {sample_ratio}");
    }
    Ok(TraceConfig {
        endpoint,
        protocol,
        sample_ratio,
        service_name: env("OTEL_SERVICE_NAME").unwrap_or_else(|| "sluice".into()),
    })
}

/// Structured logs to stderr (stdout carries only the `listening on` /
/// `metrics on` lines) and the trace pipeline; the guard flushes spans at exit.
pub fn init_telemetry(
    settings: &ServeSettings,
    metrics: std::sync::Arc<sluice_telemetry::Metrics>,
) -> anyhow::Result<sluice_telemetry::trace::TelemetryGuard> {
    let format = match settings.log_format {
        LogFormat::Json => sluice_telemetry::trace::LogFormat::Json,
        LogFormat::Text => sluice_telemetry::trace::LogFormat::Text,
    };
    Ok(sluice_telemetry::trace::init(
        format,
        &settings.log,
        &settings.trace,
        metrics,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "models = \"repo\"\nhttp_addr = \"127.0.0.1:9000\"\nmax_body_bytes = 10\n",
        )
        .unwrap();
        let s = ServeSettings::resolve(ServeArgs {
            config: Some(path.clone()),
            max_body_bytes: Some(20),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.models, dir.path().join("repo"));
        assert_eq!(s.http_addr.port(), 9000);
        assert_eq!(s.http.max_body_bytes, 20);
        assert!(!s.require_manifests);
        assert_eq!(s.rescan_interval, Duration::from_secs(2));
    }

    #[test]
    fn capture_url_from_the_file_or_the_flag_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "capture_url = \"http://127.0.0.1:9000/v1/events\"\ncapture_source = \"gw-1\"\n",
        )
        .unwrap();
        let s = ServeSettings::resolve(ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            s.http.capture.url.as_deref(),
            Some("http://127.0.0.1:9000/v1/events")
        );
        assert_eq!(s.http.capture.source.as_deref(), Some("gw-1"));
        let s = ServeSettings::resolve(ServeArgs {
            config: Some(path),
            capture: Box::new(CaptureArgs {
                capture_url: Some("http://collector:9000/e".into()),
                capture_source: None,
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            s.http.capture.url.as_deref(),
            Some("http://collector:9000/e")
        );
        // Off by default.
        let s = ServeSettings::resolve(ServeArgs::default()).unwrap();
        assert_eq!(s.http.capture.url, None);
        let err = ServeSettings::resolve(ServeArgs {
            capture: Box::new(CaptureArgs {
                capture_url: Some("https://collector/e".into()),
                capture_source: None,
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("https is not supported"),
            "{err:#}"
        );
    }

    #[test]
    fn unknown_config_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "modles = \"repo\"\n").unwrap();
        let err = ServeSettings::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("unknown field `modles`"), "{text}");
    }
}
