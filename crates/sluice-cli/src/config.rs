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
    /// max_body_bytes, require_manifests, rescan_interval_ms, ort_lib,
    /// log_format, log). Unknown keys are an error. Flags and environment
    /// variables override it.
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The model repository: <model>/<version>/model.onnx [default: models]
    #[arg(long, env = "SLUICE_MODELS", value_name = "DIR")]
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
    /// Log filter, tracing's EnvFilter syntax (e.g. info, sluice_serving=debug)
    /// [default: info,ort=warn]
    #[arg(long, env = "SLUICE_LOG", value_name = "FILTER")]
    pub log: Option<String>,
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
    pub models: PathBuf,
    pub http_addr: SocketAddr,
    pub require_manifests: bool,
    pub rescan_interval: Duration,
    pub ort_lib: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log: String,
    pub http: sluice_server::HttpOptions,
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
        Ok(ServeSettings {
            models: args
                .models
                .or_else(|| from_file(file.models))
                .unwrap_or_else(|| PathBuf::from("models")),
            http_addr: args
                .http_addr
                .or(file.http_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8000))),
            require_manifests: args
                .require_manifests
                .or(file.require_manifests)
                .unwrap_or(false),
            rescan_interval: Duration::from_millis(rescan_ms),
            ort_lib: args.ort_lib.or_else(|| from_file(file.ort_lib)),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            log: args
                .log
                .or(file.log)
                .unwrap_or_else(|| "info,ort=warn".into()),
            http: sluice_server::HttpOptions {
                max_body_bytes,
                ..Default::default()
            },
        })
    }
}

/// Structured logs to stderr (stdout carries only the `listening on` line).
pub fn init_logging(settings: &ServeSettings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
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
