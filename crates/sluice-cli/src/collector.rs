//! The drift collector from the command line: `sluice collector` runs it
//! standalone (gateways point `--capture-url` at it), `sluice serve` runs it
//! in process by default, and `sluice drift reference set` uploads a
//! reference dataset to either.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use sha2::Digest;
use sluice_collector::collector::{Collector, CollectorOptions};
use sluice_collector::server::{CollectorState, routes};

/// How the collector runs: shared by `sluice collector` and `sluice serve`.
#[derive(Debug, Clone, Args)]
pub struct CollectorSettings {
    /// The collector's store: one file, everything it accepted [default:
    /// .sluice/collector/<name of the model repository>-<hash of its path>.jsonl
    /// under `sluice serve`, .sluice/collector/standalone.jsonl otherwise]
    #[arg(long, env = "SLUICE_COLLECTOR_STORE")]
    pub collector_store: Option<PathBuf>,
    /// Rows (batch items) per drift window
    #[arg(long, env = "SLUICE_DRIFT_WINDOW_ROWS", default_value_t = 500)]
    pub drift_window_rows: usize,
    /// Rows that become a version's reference when none was uploaded
    #[arg(long, env = "SLUICE_DRIFT_REFERENCE_ROWS", default_value_t = 1000)]
    pub drift_reference_rows: usize,
    /// A window also closes when its first row is this many seconds old
    /// and it has --drift-min-window-rows rows (0: by rows only)
    #[arg(long, env = "SLUICE_DRIFT_WINDOW_SECONDS", default_value_t = 0.0)]
    pub drift_window_seconds: f64,
    /// The fewest rows of a window closed by time
    #[arg(long, env = "SLUICE_DRIFT_MIN_WINDOW_ROWS", default_value_t = 30)]
    pub drift_min_window_rows: usize,
    /// A drift threshold or setting, NAME=VALUE (repeatable): ks_p_value
    /// (0.05), chi_square_p_value (0.05), psi (0.1), js (0.1), wasserstein
    /// (0.1, normalised), n_bins (10), correction (bh, bonferroni or none)
    #[arg(
        long = "drift-threshold",
        value_name = "NAME=VALUE",
        env = "SLUICE_DRIFT_THRESHOLDS",
        value_delimiter = ','
    )]
    pub drift_thresholds: Vec<String>,
    /// URL to POST drift alerts to, as CloudEvents (repeatable)
    #[arg(
        long = "drift-webhook",
        env = "SLUICE_DRIFT_WEBHOOKS",
        value_delimiter = ','
    )]
    pub drift_webhooks: Vec<String>,
}

impl Default for CollectorSettings {
    fn default() -> Self {
        CollectorSettings {
            collector_store: None,
            drift_window_rows: 500,
            drift_reference_rows: 1000,
            drift_webhooks: Vec::new(),
            drift_window_seconds: 0.0,
            drift_min_window_rows: 30,
            drift_thresholds: Vec::new(),
        }
    }
}

/// The collector flags of `sluice serve`.
#[derive(Debug, Clone, Args, Default)]
pub struct ServeCollectorArgs {
    /// Do not run the drift collector in process (it runs by default,
    /// unless --capture-url sends captured requests elsewhere)
    #[arg(long, env = "SLUICE_NO_COLLECTOR")]
    pub no_collector: bool,
    #[command(flatten)]
    pub settings: CollectorSettings,
}

impl CollectorSettings {
    /// The store for a collector serving the repository `models` (its own
    /// file per repository, so two gateways in one directory do not share
    /// one), or the standalone collector's.
    pub fn store_for(&self, models: Option<&Path>) -> PathBuf {
        if let Some(path) = &self.collector_store {
            return path.clone();
        }
        let dir = PathBuf::from(".sluice/collector");
        let Some(models) = models else {
            return dir.join("standalone.jsonl");
        };
        let full = std::fs::canonicalize(models).unwrap_or_else(|_| models.to_path_buf());
        let digest = sha2::Sha256::digest(full.to_string_lossy().as_bytes());
        let name: String = full
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("models")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        dir.join(format!("{name}-{}.jsonl", hex::encode(&digest[..6])))
    }

    /// Opens the store (`store`) and builds the collector's routes.
    pub fn open(&self, store: PathBuf) -> anyhow::Result<(Arc<Collector>, axum::Router)> {
        if self.drift_window_rows == 0 || self.drift_reference_rows == 0 {
            bail!("--drift-window-rows and --drift-reference-rows must be at least 1");
        }
        for url in &self.drift_webhooks {
            if !url.starts_with("http://") {
                bail!("--drift-webhook {url:?}: only http:// URLs are supported");
            }
        }
        if !(self.drift_window_seconds.is_finite() && self.drift_window_seconds >= 0.0) {
            bail!("--drift-window-seconds must be a number of seconds >= 0");
        }
        let options = CollectorOptions {
            window_rows: self.drift_window_rows,
            window_span: (self.drift_window_seconds > 0.0)
                .then(|| std::time::Duration::from_secs_f64(self.drift_window_seconds)),
            min_window_rows: self.drift_min_window_rows.max(1),
            thresholds: thresholds(&self.drift_thresholds)?,
            reference_rows: self.drift_reference_rows,
            ..CollectorOptions::new(store.clone())
        };
        let collector = Arc::new(Collector::open(options).with_context(|| {
            format!(
                "cannot open the collector's store {} (give another with --collector-store, or --no-collector)",
                store.display()
            )
        })?);
        let state = CollectorState {
            collector: collector.clone(),
            webhooks: Arc::new(self.drift_webhooks.clone()),
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()?,
        };
        sluice_collector::server::spawn_ticker(&state);
        Ok((collector, routes(state)))
    }
}

/// The drift thresholds, defaults overridden by NAME=VALUE pairs.
fn thresholds(pairs: &[String]) -> anyhow::Result<sluice_drift::Thresholds> {
    let mut t = sluice_drift::Thresholds::default();
    for pair in pairs {
        let Some((name, value)) = pair.split_once('=') else {
            bail!("--drift-threshold {pair:?} is not NAME=VALUE");
        };
        let (name, value) = (name.trim(), value.trim());
        let number = || -> anyhow::Result<f64> {
            let v: f64 = value
                .parse()
                .with_context(|| format!("--drift-threshold {name}: {value:?} is not a number"))?;
            if !v.is_finite() || v < 0.0 {
                bail!("--drift-threshold {name}: {value} must be a number >= 0");
            }
            Ok(v)
        };
        let p_value = || -> anyhow::Result<f64> {
            let v = number()?;
            if v > 1.0 {
                bail!("--drift-threshold {name}: a p-value threshold is between 0 and 1");
            }
            Ok(v)
        };
        match name {
            "ks_p_value" => t.ks_p_value = p_value()?,
            "chi_square_p_value" => t.chi_square_p_value = p_value()?,
            "psi" => t.psi = number()?,
            "js" => t.js = number()?,
            "wasserstein" => t.wasserstein = number()?,
            "n_bins" => {
                t.n_bins = value
                    .parse()
                    .ok()
                    .filter(|n| (2..=1000).contains(n))
                    .with_context(|| {
                        format!("--drift-threshold n_bins: {value:?} is not 2..=1000")
                    })?
            }
            "correction" => {
                t.correction = match value {
                    "bh" | "benjamini_hochberg" => sluice_drift::Correction::BenjaminiHochberg,
                    "bonferroni" => sluice_drift::Correction::Bonferroni,
                    "none" => sluice_drift::Correction::None,
                    other => bail!(
                        "--drift-threshold correction: {other:?} is not bh, bonferroni or none"
                    ),
                }
            }
            other => bail!(
                "--drift-threshold: unknown name {other:?} (ks_p_value, chi_square_p_value, psi, js, wasserstein, n_bins, correction)"
            ),
        }
    }
    Ok(t)
}

/// `sluice collector`.
#[derive(Debug, Args)]
pub struct CollectorArgs {
    /// Address to listen on
    #[arg(
        long,
        env = "SLUICE_COLLECTOR_LISTEN",
        default_value = "127.0.0.1:9000"
    )]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub settings: CollectorSettings,
}

/// Runs a standalone collector until SIGINT/SIGTERM.
pub fn run_standalone(args: CollectorArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-collector")
        .build()?;
    rt.block_on(async {
        let store = args.settings.store_for(None);
        let (collector, app) = args.settings.open(store.clone())?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        // Scripts and tests read this line to find the port.
        println!("collector on http://{addr}");
        tracing::info!(%addr, store = %store.display(),
            versions = collector.versions().len(), "drift collector serving");
        axum::serve(listener, app)
            .with_graceful_shutdown(crate::shutdown_signal())
            .await?;
        Ok(())
    })
}

/// `sluice drift reference set`.
#[derive(Debug, Args)]
pub struct ReferenceSetArgs {
    pub model: String,
    /// The model version the reference is for
    #[arg(long)]
    pub version: u64,
    /// The dataset: .csv (header row), .json (OIP tensors, as in an
    /// inference request) or .npy (a 2-D float array; needs --input)
    pub file: PathBuf,
    /// The input tensor a CSV's or .npy's columns are (they become
    /// INPUT[0], INPUT[1], ...); without it a CSV's header names are used
    #[arg(long)]
    pub input: Option<String>,
    /// The collector (or a gateway running one in process)
    #[arg(
        long,
        env = "SLUICE_COLLECTOR_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub url: String,
}

pub fn reference_set(args: ReferenceSetArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let ext = args
        .file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (content_type, body) = match ext.as_str() {
        "csv" => ("text/csv", bytes),
        "json" => ("application/json", bytes),
        "npy" => {
            let Some(input) = &args.input else {
                bail!("a .npy file needs --input NAME: the input tensor its columns are");
            };
            let body = npy_as_tensors(&bytes, input, &args.file)?;
            ("application/json", body.to_string().into_bytes())
        }
        _ => bail!(
            "{}: a reference is a .csv, .json or .npy file",
            args.file.display()
        ),
    };
    let source = args
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("reference")
        .to_string();
    let mut url = format!(
        "{}/v1/models/{}/versions/{}/reference?source={}",
        args.url.trim_end_matches('/'),
        args.model,
        args.version,
        source
    );
    if let (Some(input), "csv") = (&args.input, ext.as_str()) {
        url.push_str(&format!("&input={input}"));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer: Value = rt.block_on(async {
        let r = reqwest::Client::new()
            .put(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the collector at {}", args.url))?;
        let status = r.status();
        let value: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "{status}: {}",
                value["error"]
                    .as_str()
                    .unwrap_or("the collector refused it")
            );
        }
        Ok(value)
    })?;
    println!(
        "reference of {} version {} set: {} rows from {}",
        args.model, args.version, answer["reference"]["rows"], answer["reference"]["source"]
    );
    Ok(())
}

/// A 2-D float .npy (version 1 or 2, little-endian f4 or f8, C order) as
/// `{"inputs": [{"name": input, "datatype": "FP64", "shape": [n, m], "data": [...]}]}`.
fn npy_as_tensors(bytes: &[u8], input: &str, path: &Path) -> anyhow::Result<Value> {
    let bad = |why: &str| anyhow::anyhow!("{}: not a readable .npy file: {why}", path.display());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no NUMPY magic"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unknown format version")),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + header_len)
            .ok_or_else(|| bad("header cut short"))?,
    )
    .map_err(|_| bad("header is not text"))?;
    let size = if header.contains("'<f8'") {
        8
    } else if header.contains("'<f4'") {
        4
    } else {
        return Err(bad(
            "only little-endian float32/float64 arrays are supported",
        ));
    };
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran order is not supported"));
    }
    let shape_text = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape_text
        .trim_start()
        .trim_start_matches('(')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_, _>>()?;
    let [rows, cols] = dims[..] else {
        return Err(bad("the array must be 2-D: [rows, features]"));
    };
    let data = &bytes[start + header_len..];
    if data.len() != rows * cols * size {
        return Err(bad("the data does not match the shape"));
    }
    let values: Vec<f64> = if size == 8 {
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    } else {
        data.chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4 bytes"))))
            .collect()
    };
    Ok(
        json!({"inputs": [{"name": input, "datatype": "FP64", "shape": [rows, cols], "data": values}]}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_set_by_name_and_checked() {
        let t = thresholds(&[
            "ks_p_value=0.01".into(),
            "psi=0.2".into(),
            "correction=bonferroni".into(),
            "n_bins=20".into(),
        ])
        .unwrap();
        assert_eq!((t.ks_p_value, t.psi, t.n_bins), (0.01, 0.2, 20));
        assert_eq!(t.correction, sluice_drift::Correction::Bonferroni);
        assert_eq!(t.js, sluice_drift::Thresholds::default().js);
        for bad in [
            "ks_p_value=2",
            "psi=-1",
            "psi=x",
            "nope=1",
            "n_bins=1",
            "correction=max",
            "psi",
        ] {
            assert!(thresholds(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn npy_arrays_become_tensors() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut padded = header.to_string();
        while !(10 + padded.len() + 1).is_multiple_of(64) {
            padded.push(' ');
        }
        padded.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((padded.len() as u16).to_le_bytes());
        bytes.extend(padded.as_bytes());
        for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.5] {
            bytes.extend(v.to_le_bytes());
        }
        let t = npy_as_tensors(&bytes, "input", Path::new("x.npy")).unwrap();
        assert_eq!(t["inputs"][0]["shape"], json!([2, 3]));
        assert_eq!(t["inputs"][0]["data"][5], 6.5);
        assert!(npy_as_tensors(&bytes[..20], "input", Path::new("x.npy")).is_err());
        assert!(npy_as_tensors(b"not numpy", "input", Path::new("x.npy")).is_err());
    }
}
