//! `sluice models validate MODEL --version V --data golden.csv --label
//! COLUMN [--group COLUMN ...]`: a version's quality, fairness and latency
//! on a labelled dataset, checked against the thresholds of its
//! `model.toml`, before it takes traffic.
//!
//! The rows go through the runtime the gateway uses (`sluice-runtime`'s
//! executor, loaded with the model's session settings), the metrics are
//! `sluice-eval`'s, and the report is written atomically as
//! `<version dir>/validation.json` and recorded (sha256, passed, created)
//! in the version's `manifest.json`, which is rewritten atomically too. A
//! signed version (`manifest.sig`) is re-signed with `--sign KEY` and
//! otherwise refused before anything runs, since changing its manifest
//! would break its signature.
//!
//! Exit codes: 0 when every check passed, 1 when one failed (the report is
//! written either way), 2 on errors (nothing written).
//!
//! Only local directory registries: for one on object storage, validate a
//! local copy and publish that.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_registry::{ModelConfig, Task};
use sluice_runtime::{ModelExecutor, OrtRuntime, SessionOptions};
use sluice_tensor::{DataType, Tensor, TensorData};

/// The report's file name in the version directory.
pub const REPORT_FILE: &str = "validation.json";

/// The report's schema version.
const REPORT_SCHEMA: u32 = 1;

/// Rows per run when the model does not configure `max_batch_size`.
const DEFAULT_BATCH: usize = 64;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The model's name.
    pub model: String,
    /// The version to validate.
    #[arg(long)]
    pub version: u64,
    /// The labelled dataset: a CSV file with a header row.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// The column holding the true label (a class index 0..K for
    /// classification, a number for regression).
    #[arg(long, value_name = "COLUMN")]
    pub label: String,
    /// A column whose values form groups: metrics per group and fairness
    /// across them (repeatable; each column separately).
    #[arg(long = "group", value_name = "COLUMN")]
    pub groups: Vec<String>,
    /// The model repository (a local directory; for one on object storage,
    /// validate a local copy and publish it).
    #[arg(long, env = "SLUICE_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// Ed25519 private key (PKCS#8 PEM) to re-sign a signed version's
    /// manifest with after recording the report in it. Without it a signed
    /// version is refused.
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// Print the report's JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Rows timed one at a time for the batch-1 latency percentiles (the
    /// first N of the file).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub latency_rows: usize,
    /// The ONNX Runtime shared library [default: found as `serve` finds it].
    #[arg(long, env = "ORT_DYLIB_PATH", value_name = "FILE")]
    pub ort_lib: Option<PathBuf>,
}

/// Runs `sluice models validate` and exits: 0 when every check passed, 1
/// when one failed, 2 on an error.
pub fn run(args: ValidateArgs) -> anyhow::Result<()> {
    match validate(args) {
        Ok(true) => Ok(()),
        Ok(false) => exit(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            exit(2)
        }
    }
}

fn exit(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// Validates; `Ok(passed)` once the report is written.
fn validate(args: ValidateArgs) -> anyhow::Result<bool> {
    if args.models.to_str().is_some_and(sluice_registry::is_remote) {
        bail!(
            "{}: validation needs a local model repository; validate a local copy (`sluice models publish` it there first) and publish it to object storage",
            args.models.display()
        );
    }
    let repo = sluice_registry::Repository::open(&args.models)?;
    let scan = repo.scan()?;
    let entry = scan
        .models
        .get(&args.model)
        .with_context(|| format!("no model {:?} in {}", args.model, args.models.display()))?;
    let config = entry.config.clone().map_err(|e| anyhow::anyhow!("{e}"))?;
    let task = config.task.with_context(|| {
        format!(
            "{}/model.toml has no task: set task = \"classification\" or \"regression\"",
            entry.dir.display()
        )
    })?;
    let version = entry
        .versions
        .get(&args.version)
        .filter(|v| v.model_present)
        .with_context(|| {
            format!(
                "model {} has no version {} with a model.onnx in {}",
                args.model,
                args.version,
                entry.dir.display()
            )
        })?;
    let checks = config
        .validation
        .checks
        .iter()
        .map(|c| Check::parse(c, task))
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(|| format!("{}/model.toml [validation] checks", entry.dir.display()))?;

    // A signed manifest is only changed when it can be signed again.
    let signed = version.dir.join(sluice_registry::SIGNATURE_FILE).exists();
    let key = match &args.sign {
        Some(path) => Some(sluice_registry::PrivateKey::load(path)?),
        None if signed => bail!(
            "{} is signed ({}): recording the report would change manifest.json and invalidate its signature; pass --sign KEY to re-sign it",
            version.dir.display(),
            sluice_registry::SIGNATURE_FILE
        ),
        None => None,
    };

    // The model file must match its manifest, if it has one.
    sluice_registry::verify(version, &args.model)?;
    let model_sha256 = sluice_registry::hash_file(&version.model_file)?.1;

    let bytes =
        fs::read(&args.data).with_context(|| format!("cannot read {}", args.data.display()))?;
    let data_sha256 = hex::encode(Sha256::digest(&bytes));
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("{} is not UTF-8 text", args.data.display()))?;
    let table = Table::read(text, &args, &config.validation.features, task)
        .with_context(|| format!("reading {}", args.data.display()))?;

    let runtime = OrtRuntime::init(args.ort_lib.as_deref())?;
    let target = evaluate_version(
        &runtime,
        &args.model,
        args.version,
        &version.model_file,
        &config,
        task,
        &table,
        args.latency_rows,
    )?;

    let stable = stable_version(&entry.dir, args.version, &entry.available_versions())?;
    let baseline = match stable {
        Stable::Version(v) => {
            let e = &entry.versions[&v];
            sluice_registry::verify(e, &args.model)?;
            Some((
                v,
                evaluate_version(
                    &runtime,
                    &args.model,
                    v,
                    &e.model_file,
                    &config,
                    task,
                    &table,
                    args.latency_rows,
                )
                .with_context(|| format!("validating the stable version {v} for comparison"))?,
            ))
        }
        _ => None,
    };

    // Every value a check may name.
    let mut values: BTreeMap<String, f64> = BTreeMap::new();
    values.extend(defined(&target.metrics));
    values.extend(defined(&target.fairness_flat));
    values.extend(defined(&target.latency_flat()));
    let mut comparison: BTreeMap<String, Option<f64>> = BTreeMap::new();
    if let Some((_, b)) = &baseline {
        for name in quality_metrics(task) {
            let delta = match (target.metrics.get(*name), b.metrics.get(*name)) {
                (Some(Some(a)), Some(Some(s))) => Some(a - s),
                _ => None,
            };
            comparison.insert(format!("{name}_delta_vs_stable"), delta);
        }
        let (t, s) = (target.latency_flat(), b.latency_flat());
        for name in LATENCY_METRICS {
            let ratio = match (t.get(*name), s.get(*name)) {
                (Some(Some(a)), Some(Some(s))) if *s > 0.0 => Some(a / s),
                _ => None,
            };
            let base = name.trim_end_matches("_ms");
            comparison.insert(format!("{base}_ratio_vs_stable"), ratio);
        }
        values.extend(defined(&comparison));
    }
    let results: Vec<CheckResult> = checks
        .iter()
        .map(|c| c.evaluate(&values, &stable, !args.groups.is_empty()))
        .collect();
    let passed = results.iter().all(|r| r.passed);

    let created = sluice_registry::format_rfc3339(SystemTime::now());
    let report = json!({
        "schema": REPORT_SCHEMA,
        "model": args.model,
        "version": args.version,
        "task": task_name(task),
        "passed": passed,
        "created": created,
        "sluice_version": env!("CARGO_PKG_VERSION"),
        "data": {
            "file": args.data.display().to_string(),
            "sha256": data_sha256,
            "rows": table.rows(),
            "label": args.label,
            "groups": args.groups,
            "features": table.features,
        },
        "model_file": {
            "file": sluice_registry::MODEL_FILE,
            "sha256": model_sha256,
        },
        "input": target.input,
        "output": target.output,
        "classes": target.classes,
        "positive_class": (task == Task::Classification).then_some(config.validation.positive_class),
        "metrics": numbers(&target.metrics),
        "per_group": target.per_group,
        "fairness": target.fairness,
        "latency": target.latency_json(),
        "stable": match (&stable, &baseline) {
            (_, Some((v, b))) => json!({
                "version": v,
                "model_sha256": b.model_sha256,
                "metrics": numbers(&b.metrics),
                "latency": b.latency_json(),
            }),
            (Stable::IsTarget, _) => json!({"version": args.version, "note": "the validated version is the stable version: nothing to compare with"}),
            _ => Value::Null,
        },
        "comparison": numbers(&comparison),
        "checks": results.iter().map(CheckResult::to_json).collect::<Vec<_>>(),
    });
    let mut report_bytes = serde_json::to_vec_pretty(&report)?;
    report_bytes.push(b'\n');
    let report_path = version.dir.join(REPORT_FILE);
    sluice_registry::write_atomically(&version.dir.join(REPORT_FILE), &report_bytes)?;
    let report_sha256 = hex::encode(Sha256::digest(&report_bytes));

    let recorded = record_in_manifest(&version.dir, &report_sha256, passed, &created)?;
    if let (true, Some(key)) = (recorded, &key) {
        let signer = sluice_registry::sign_manifest_with(&version.dir, key)?;
        eprintln!("manifest re-signed by {}", signer.key_id);
    }

    if args.json {
        println!("{}", String::from_utf8_lossy(&report_bytes).trim_end());
    } else {
        print_summary(
            &args,
            task,
            &target,
            baseline.as_ref(),
            &stable,
            &results,
            passed,
        );
        println!(
            "report: {} (sha256 {report_sha256}){}",
            report_path.display(),
            if recorded {
                ", recorded in manifest.json"
            } else {
                "; not recorded: the version has no manifest.json (publish it with `sluice models publish`)"
            }
        );
    }
    Ok(passed)
}

fn task_name(task: Task) -> &'static str {
    match task {
        Task::Classification => "classification",
        Task::Regression => "regression",
    }
}

/// The metrics of a task that are compared with the stable version.
fn quality_metrics(task: Task) -> &'static [&'static str] {
    match task {
        Task::Classification => &[
            "accuracy",
            "precision",
            "recall",
            "f1",
            "roc_auc",
            "log_loss",
        ],
        Task::Regression => &["mae", "rmse", "r2"],
    }
}

const LATENCY_METRICS: &[&str] = &[
    "p50_latency_ms",
    "p90_latency_ms",
    "p99_latency_ms",
    "batch_p50_latency_ms",
    "batch_p90_latency_ms",
    "batch_p99_latency_ms",
];

fn fairness_metrics(task: Task) -> &'static [&'static str] {
    match task {
        Task::Classification => &[
            "demographic_parity_difference",
            "demographic_parity_ratio",
            "equalized_odds_difference",
            "worst_group_accuracy",
            "best_group_accuracy",
            "group_accuracy_difference",
        ],
        Task::Regression => &["worst_group_mae", "best_group_mae", "group_mae_difference"],
    }
}

/// Every metric name a check may use for `task`.
fn known_metrics(task: Task) -> Vec<String> {
    let mut names: Vec<String> = quality_metrics(task)
        .iter()
        .chain(fairness_metrics(task))
        .chain(LATENCY_METRICS)
        .map(|s| s.to_string())
        .collect();
    names.extend(
        quality_metrics(task)
            .iter()
            .map(|m| format!("{m}_delta_vs_stable")),
    );
    names.extend(
        LATENCY_METRICS
            .iter()
            .map(|m| format!("{}_ratio_vs_stable", m.trim_end_matches("_ms"))),
    );
    names
}

fn defined(map: &BTreeMap<String, Option<f64>>) -> impl Iterator<Item = (String, f64)> + '_ {
    map.iter()
        .filter_map(|(k, v)| v.filter(|v| v.is_finite()).map(|v| (k.clone(), v)))
}

fn numbers(map: &BTreeMap<String, Option<f64>>) -> Value {
    Value::Object(map.iter().map(|(k, v)| (k.clone(), num(*v))).collect())
}

/// A JSON number, or null for an undefined (absent or NaN) value.
fn num(v: Option<f64>) -> Value {
    v.filter(|v| v.is_finite()).map_or(Value::Null, Value::from)
}

fn opt(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

// ------------------------------------------------------------------ checks

/// `"METRIC OP NUMBER"` from `[validation] checks`.
#[derive(Debug, Clone)]
struct Check {
    text: String,
    metric: String,
    op: &'static str,
    threshold: f64,
}

impl Check {
    fn parse(text: &str, task: Task) -> anyhow::Result<Check> {
        let t = text.trim();
        let bad = || {
            anyhow::anyhow!(
                "{text:?} is not METRIC OP NUMBER (OP one of >=, <=, >, <), e.g. \"accuracy >= 0.9\""
            )
        };
        let at = t.find(['<', '>']).ok_or_else(bad)?;
        let op = match &t[at..] {
            s if s.starts_with(">=") => ">=",
            s if s.starts_with("<=") => "<=",
            s if s.starts_with('>') => ">",
            _ => "<",
        };
        let metric = t[..at].trim();
        let threshold: f64 = t[at + op.len()..].trim().parse().map_err(|_| bad())?;
        if metric.is_empty() || !threshold.is_finite() {
            return Err(bad());
        }
        let known = known_metrics(task);
        if !known.iter().any(|k| k == metric) {
            bail!(
                "{text:?}: unknown metric {metric:?} for a {} model; known: {}",
                task_name(task),
                known.join(", ")
            );
        }
        Ok(Check {
            text: t.to_string(),
            metric: metric.to_string(),
            op,
            threshold,
        })
    }

    fn evaluate(
        &self,
        values: &BTreeMap<String, f64>,
        stable: &Stable,
        grouped: bool,
    ) -> CheckResult {
        let value = values.get(&self.metric).copied();
        let (passed, reason) = match value {
            Some(v) => {
                let ok = match self.op {
                    ">=" => v >= self.threshold,
                    "<=" => v <= self.threshold,
                    ">" => v > self.threshold,
                    _ => v < self.threshold,
                };
                (ok, None)
            }
            None => {
                let why = if self.metric.ends_with("_vs_stable") {
                    match stable {
                        Stable::IsTarget => {
                            "absent: the validated version is the stable version, there is nothing to compare with"
                        }
                        _ => "absent: there is no other version to compare with",
                    }
                } else if !grouped
                    && (self.metric.contains("group")
                        || self.metric.contains("parity")
                        || self.metric.contains("odds"))
                {
                    "absent: no --group column was given"
                } else {
                    "undefined on this data"
                };
                (false, Some(why))
            }
        };
        CheckResult {
            check: self.clone(),
            value,
            passed,
            reason,
        }
    }
}

struct CheckResult {
    check: Check,
    value: Option<f64>,
    passed: bool,
    reason: Option<&'static str>,
}

impl CheckResult {
    fn to_json(&self) -> Value {
        json!({
            "check": self.check.text,
            "metric": self.check.metric,
            "op": self.check.op,
            "threshold": self.check.threshold,
            "value": num(self.value),
            "passed": self.passed,
            "reason": self.reason,
        })
    }
}

// -------------------------------------------------------------------- data

/// The dataset: features row-major, labels, and the group columns.
struct Table {
    features: Vec<String>,
    x: Vec<f64>,
    /// Class indices (classification).
    classes: Vec<usize>,
    /// Values (regression).
    targets: Vec<f64>,
    /// Per `--group` column: (name, each row's value).
    groups: Vec<(String, Vec<String>)>,
}

impl Table {
    fn rows(&self) -> usize {
        self.classes.len().max(self.targets.len())
    }

    fn read(
        text: &str,
        args: &ValidateArgs,
        features: &[String],
        task: Task,
    ) -> anyhow::Result<Table> {
        let records = sluice_collector::csv::records(text).map_err(anyhow::Error::msg)?;
        let (header, rows) = records.split_first().context("the file is empty")?;
        let column = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .with_context(|| format!("no column {name:?} (columns: {})", header.join(", ")))
        };
        let label = column(&args.label)?;
        let group_cols = args
            .groups
            .iter()
            .map(|g| column(g))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let feature_cols: Vec<usize> = if features.is_empty() {
            (0..header.len())
                .filter(|i| *i != label && !group_cols.contains(i))
                .collect()
        } else {
            features
                .iter()
                .map(|f| column(f))
                .collect::<anyhow::Result<_>>()?
        };
        if feature_cols.is_empty() {
            bail!("no feature columns: every column is the label or a group");
        }
        if rows.is_empty() {
            bail!("no rows after the header");
        }
        let mut table = Table {
            features: feature_cols.iter().map(|&i| header[i].clone()).collect(),
            x: Vec::with_capacity(rows.len() * feature_cols.len()),
            classes: Vec::new(),
            targets: Vec::new(),
            groups: args
                .groups
                .iter()
                .map(|g| (g.clone(), Vec::with_capacity(rows.len())))
                .collect(),
        };
        for (r, row) in rows.iter().enumerate() {
            let line = r + 2;
            if row.len() != header.len() {
                bail!(
                    "row {line} has {} fields, the header {}",
                    row.len(),
                    header.len()
                );
            }
            for &c in &feature_cols {
                let v: f64 = row[c].trim().parse().map_err(|_| {
                    anyhow::anyhow!(
                        "row {line}, column {:?}: {:?} is not a number",
                        header[c],
                        row[c]
                    )
                })?;
                table.x.push(v);
            }
            let raw = row[label].trim();
            let bad_label = || {
                anyhow::anyhow!(
                    "row {line}, label column {:?}: {raw:?} is not {}",
                    args.label,
                    match task {
                        Task::Classification => "a class index (0, 1, 2, ...)",
                        Task::Regression => "a number",
                    }
                )
            };
            let value: f64 = raw.parse().map_err(|_| bad_label())?;
            match task {
                Task::Classification => {
                    if !(value >= 0.0 && value.fract() == 0.0 && value < 1e9) {
                        return Err(bad_label());
                    }
                    table.classes.push(value as usize);
                }
                Task::Regression => {
                    if !value.is_finite() {
                        return Err(bad_label());
                    }
                    table.targets.push(value);
                }
            }
            for ((_, values), &c) in table.groups.iter_mut().zip(&group_cols) {
                values.push(row[c].clone());
            }
        }
        Ok(table)
    }
}

// ----------------------------------------------------------------- running

/// One version's answers on the dataset and what they score.
struct Evaluation {
    model_sha256: Option<String>,
    input: String,
    output: String,
    /// Classes the output distinguishes (classification).
    classes: Option<usize>,
    metrics: BTreeMap<String, Option<f64>>,
    per_group: Value,
    fairness: Value,
    /// The flat fairness values checks use: the worst over the group
    /// columns.
    fairness_flat: BTreeMap<String, Option<f64>>,
    single: Vec<f64>,
    batched: Vec<f64>,
    batch_size: usize,
    rows: usize,
}

impl Evaluation {
    fn latency_flat(&self) -> BTreeMap<String, Option<f64>> {
        let mut m = BTreeMap::new();
        for (prefix, runs) in [("", &self.single), ("batch_", &self.batched)] {
            for q in [50, 90, 99] {
                m.insert(
                    format!("{prefix}p{q}_latency_ms"),
                    sluice_eval::percentile(runs, q as f64),
                );
            }
        }
        m
    }

    fn latency_json(&self) -> Value {
        let block = |runs: &[f64], batch: usize| {
            json!({
                "batch_size": batch,
                "runs": runs.len(),
                "p50_ms": num(sluice_eval::percentile(runs, 50.0)),
                "p90_ms": num(sluice_eval::percentile(runs, 90.0)),
                "p99_ms": num(sluice_eval::percentile(runs, 99.0)),
            })
        };
        json!({
            "single": block(&self.single, 1),
            "batch": block(&self.batched, self.batch_size),
        })
    }
}

/// The model's session settings, as the gateway's manager loads it, but
/// without dynamic batching: validation sends whole batches itself, and a
/// batching window would only add its delay to each run.
fn session_options(config: &ModelConfig) -> SessionOptions {
    SessionOptions {
        batching: None,
        ..sluice_serving::session_options(config)
    }
}

#[allow(clippy::too_many_arguments)]
fn evaluate_version(
    runtime: &OrtRuntime,
    model: &str,
    version: u64,
    file: &Path,
    config: &ModelConfig,
    task: Task,
    table: &Table,
    latency_rows: usize,
) -> anyhow::Result<Evaluation> {
    let executor =
        ModelExecutor::load(runtime, model, version, file, session_options(config), None)
            .with_context(|| format!("cannot load {model} version {version}"))?;
    let sig = executor.signature();
    let v = &config.validation;
    let input = match &v.input {
        Some(name) => sig
            .input(name)
            .with_context(|| format!("version {version} has no input {name:?} ([validation] input)"))?,
        None if sig.inputs.len() == 1 => &sig.inputs[0],
        None => bail!(
            "version {version} has {} inputs ({}): name the one the features go to with [validation] input",
            sig.inputs.len(),
            sig.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
    .clone();
    let output = match &v.output {
        Some(name) => sig
            .output(name)
            .with_context(|| format!("version {version} has no output {name:?} ([validation] output)"))?,
        None => sig
            .outputs
            .iter()
            .find(|o| matches!(o.datatype, DataType::Fp32 | DataType::Fp64))
            .with_context(|| format!("version {version} has no FP32 or FP64 output; name one with [validation] output"))?,
    }
    .clone();
    if !matches!(output.datatype, DataType::Fp32 | DataType::Fp64) {
        bail!(
            "output {:?} is {}, not FP32 or FP64",
            output.name,
            output.datatype.as_str()
        );
    }
    let features = table.features.len();
    if input.shape.len() != 2 || !(input.shape[1] == -1 || input.shape[1] == features as i64) {
        bail!(
            "input {:?} has shape {:?}: validation feeds [rows, {features}] ({} feature columns)",
            input.name,
            input.shape,
            features
        );
    }
    if !matches!(
        input.datatype,
        DataType::Fp32 | DataType::Fp64 | DataType::Int32 | DataType::Int64
    ) {
        bail!(
            "input {:?} is {}: validation feeds FP32, FP64, INT32 or INT64",
            input.name,
            input.datatype.as_str()
        );
    }
    let batch_size = match input.shape[0] {
        -1 if config.max_batch_size > 0 => config.max_batch_size as usize,
        -1 => DEFAULT_BATCH,
        _ => 1,
    };
    let rows = table.rows();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let run = |start: usize, end: usize| -> anyhow::Result<(Vec<f64>, f64)> {
        let tensor = input_tensor(
            input.datatype,
            &table.x[start * features..end * features],
            end - start,
            features,
        )?;
        let started = Instant::now();
        let out = rt
            .block_on(executor.infer(
                vec![(input.name.clone(), tensor)],
                vec![output.name.clone()],
            ))
            .with_context(|| {
                format!(
                    "version {version} failed on rows {}..{}",
                    start + 2,
                    end + 1
                )
            })?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let (_, t) = out
            .outputs
            .into_iter()
            .next()
            .context("no output returned")?;
        Ok((floats(&t)?, ms))
    };

    // Predictions, in batches; each run's time is a batch latency.
    let mut progress = Progress::new(format!("{model} v{version}: predicting"), rows);
    let mut out = Vec::new();
    let mut batched = Vec::new();
    let mut width = None;
    for start in (0..rows).step_by(batch_size) {
        let end = (start + batch_size).min(rows);
        let (values, ms) = run(start, end)?;
        let w = values.len() / (end - start);
        if w == 0 || values.len() % (end - start) != 0 || width.is_some_and(|x| x != w) {
            bail!(
                "output {:?} gave {} values for {} rows",
                output.name,
                values.len(),
                end - start
            );
        }
        width = Some(w);
        out.extend(values);
        batched.push(ms);
        progress.advance(end - start);
    }
    progress.finish();
    let width = width.unwrap_or(1);

    // Batch-1 latency over the first rows.
    let n_single = rows.min(latency_rows);
    let mut progress = Progress::new(format!("{model} v{version}: timing single rows"), n_single);
    let mut single = Vec::with_capacity(n_single);
    for r in 0..n_single {
        single.push(run(r, r + 1)?.1);
        progress.advance(1);
    }
    progress.finish();
    drop(executor);

    let mut e = Evaluation {
        model_sha256: Some(sluice_registry::hash_file(file)?.1),
        input: input.name,
        output: output.name,
        classes: None,
        metrics: BTreeMap::new(),
        per_group: Value::Null,
        fairness: Value::Null,
        fairness_flat: BTreeMap::new(),
        single,
        batched,
        batch_size,
        rows,
    };
    match task {
        Task::Classification => {
            score_classification(&mut e, table, out, width, config.validation.positive_class)?
        }
        Task::Regression => {
            if width != 1 {
                bail!(
                    "output {:?} has {width} values per row; a regression model gives one",
                    e.output
                );
            }
            score_regression(&mut e, table, &out);
        }
    }
    Ok(e)
}

/// Features as the input's datatype, shape `[rows, features]`.
fn input_tensor(
    dtype: DataType,
    x: &[f64],
    rows: usize,
    features: usize,
) -> anyhow::Result<Tensor> {
    let raw: Vec<u8> = match dtype {
        DataType::Fp32 => x.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect(),
        DataType::Fp64 => x.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        DataType::Int32 => x.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
        _ => x.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect(),
    };
    Ok(Tensor::from_raw(
        dtype,
        vec![rows as i64, features as i64],
        bytes::Bytes::from(raw),
    )?)
}

/// An FP32 or FP64 tensor's elements as `f64`.
fn floats(t: &Tensor) -> anyhow::Result<Vec<f64>> {
    let TensorData::Raw(raw) = t.data() else {
        bail!("the output is not numeric");
    };
    Ok(match t.dtype() {
        DataType::Fp32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            .collect(),
        DataType::Fp64 => raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
        other => bail!("the output is {}, not FP32 or FP64", other.as_str()),
    })
}

fn score_classification(
    e: &mut Evaluation,
    table: &Table,
    out: Vec<f64>,
    width: usize,
    positive: usize,
) -> anyhow::Result<()> {
    // One value per row is the probability of class 1: as scikit-learn,
    // make it the two columns [1 - p, p].
    let (probs, k) = if width == 1 {
        (
            out.iter().flat_map(|&p| [1.0 - p, p]).collect::<Vec<_>>(),
            2,
        )
    } else {
        (out, width)
    };
    e.classes = Some(k);
    if positive >= k {
        bail!(
            "[validation] positive_class = {positive}, but output {:?} has {k} classes",
            e.output
        );
    }
    if let Some((r, &c)) = table.classes.iter().enumerate().find(|(_, c)| **c >= k) {
        bail!(
            "row {}: label {c} is not a class of output {:?} (0..{k})",
            r + 2,
            e.output
        );
    }
    let pred = sluice_eval::argmax_rows(&probs, k);
    e.metrics = classification_metrics(&table.classes, &pred, &probs, k, positive);

    let mut per_group = serde_json::Map::new();
    let mut fairness = serde_json::Map::new();
    let mut flat: BTreeMap<String, Option<f64>> = BTreeMap::new();
    for (column, values) in &table.groups {
        let members = group_rows(values);
        let mut groups = serde_json::Map::new();
        let mut rates = Vec::new();
        let mut accuracies = Vec::new();
        for (value, rows) in &members {
            let t: Vec<usize> = rows.iter().map(|&i| table.classes[i]).collect();
            let p: Vec<usize> = rows.iter().map(|&i| pred[i]).collect();
            let pr: Vec<f64> = rows
                .iter()
                .flat_map(|&i| probs[i * k..(i + 1) * k].iter().copied())
                .collect();
            let m = classification_metrics(&t, &p, &pr, k, positive);
            let c = sluice_eval::Confusion::of(&t, &p, positive);
            let r = sluice_eval::GroupRates::of(&c).expect("a group has rows");
            accuracies.push((value.to_string(), sluice_eval::accuracy(&t, &p)));
            rates.push(r);
            groups.insert(
                value.to_string(),
                json!({
                    "rows": rows.len(),
                    "metrics": numbers(&m),
                    "selection_rate": r.selection_rate,
                    "true_positive_rate": r.tpr,
                    "false_positive_rate": r.fpr,
                }),
            );
        }
        let selection: Vec<f64> = rates.iter().map(|r| r.selection_rate).collect();
        let (dpd, dpr) = sluice_eval::demographic_parity(&selection).unzip();
        let eod = sluice_eval::equalized_odds_difference(&rates);
        let (worst, best) = extremes(&accuracies, true);
        let f = json!({
            "groups": members.len(),
            "demographic_parity_difference": num(dpd),
            "demographic_parity_ratio": num(dpr),
            "equalized_odds_difference": num(eod),
            "worst_group": worst.map(|w| w.0.clone()),
            "worst_group_accuracy": num(worst.map(|w| w.1)),
            "best_group": best.map(|b| b.0.clone()),
            "best_group_accuracy": num(best.map(|b| b.1)),
            "group_accuracy_difference": num(worst.zip(best).map(|(w, b)| b.1 - w.1)),
        });
        // The flat values: the worst over the group columns.
        merge_worst(&mut flat, "demographic_parity_difference", dpd, true);
        merge_worst(&mut flat, "demographic_parity_ratio", dpr, false);
        merge_worst(&mut flat, "equalized_odds_difference", eod, true);
        merge_worst(&mut flat, "worst_group_accuracy", worst.map(|w| w.1), false);
        merge_worst(&mut flat, "best_group_accuracy", best.map(|b| b.1), false);
        merge_worst(
            &mut flat,
            "group_accuracy_difference",
            worst.zip(best).map(|(w, b)| b.1 - w.1),
            true,
        );
        per_group.insert(column.clone(), Value::Object(groups));
        fairness.insert(column.clone(), f);
    }
    if !table.groups.is_empty() {
        e.per_group = Value::Object(per_group);
        e.fairness = Value::Object(fairness);
        e.fairness_flat = flat;
    }
    Ok(())
}

fn classification_metrics(
    t: &[usize],
    p: &[usize],
    probs: &[f64],
    k: usize,
    positive: usize,
) -> BTreeMap<String, Option<f64>> {
    let prf = if k == 2 {
        sluice_eval::binary_prf(t, p, positive)
    } else {
        sluice_eval::macro_prf(t, p)
    };
    let auc = if k == 2 {
        let is_pos: Vec<bool> = t.iter().map(|&c| c == positive).collect();
        let scores: Vec<f64> = probs.chunks_exact(k).map(|r| r[positive]).collect();
        sluice_eval::roc_auc(&is_pos, &scores)
    } else {
        sluice_eval::roc_auc_ovr_macro(t, probs, k)
    };
    BTreeMap::from([
        ("accuracy".to_string(), opt(sluice_eval::accuracy(t, p))),
        ("precision".to_string(), opt(prf.precision)),
        ("recall".to_string(), opt(prf.recall)),
        ("f1".to_string(), opt(prf.f1)),
        ("roc_auc".to_string(), auc),
        ("log_loss".to_string(), sluice_eval::log_loss(t, probs, k)),
    ])
}

/// The rows of each value of a group column.
fn group_rows(values: &[String]) -> BTreeMap<&str, Vec<usize>> {
    let mut members: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, v) in values.iter().enumerate() {
        members.entry(v).or_default().push(i);
    }
    members
}

fn score_regression(e: &mut Evaluation, table: &Table, out: &[f64]) {
    e.metrics = regression_metrics(&table.targets, out);
    let mut per_group = serde_json::Map::new();
    let mut fairness = serde_json::Map::new();
    let mut flat: BTreeMap<String, Option<f64>> = BTreeMap::new();
    for (column, values) in &table.groups {
        let members = group_rows(values);
        let mut groups = serde_json::Map::new();
        let mut maes = Vec::new();
        for (value, rows) in &members {
            let t: Vec<f64> = rows.iter().map(|&i| table.targets[i]).collect();
            let p: Vec<f64> = rows.iter().map(|&i| out[i]).collect();
            let m = regression_metrics(&t, &p);
            maes.push((value.to_string(), sluice_eval::mae(&t, &p)));
            groups.insert(
                value.to_string(),
                json!({"rows": rows.len(), "metrics": numbers(&m)}),
            );
        }
        // For MAE the worst group is the one with the largest error.
        let (worst, best) = extremes(&maes, false);
        fairness.insert(
            column.clone(),
            json!({
                "groups": members.len(),
                "worst_group": worst.map(|w| w.0.clone()),
                "worst_group_mae": num(worst.map(|w| w.1)),
                "best_group": best.map(|b| b.0.clone()),
                "best_group_mae": num(best.map(|b| b.1)),
                "group_mae_difference": num(worst.zip(best).map(|(w, b)| w.1 - b.1)),
            }),
        );
        merge_worst(&mut flat, "worst_group_mae", worst.map(|w| w.1), true);
        merge_worst(&mut flat, "best_group_mae", best.map(|b| b.1), true);
        merge_worst(
            &mut flat,
            "group_mae_difference",
            worst.zip(best).map(|(w, b)| w.1 - b.1),
            true,
        );
        per_group.insert(column.clone(), Value::Object(groups));
    }
    if !table.groups.is_empty() {
        e.per_group = Value::Object(per_group);
        e.fairness = Value::Object(fairness);
        e.fairness_flat = flat;
    }
}

fn regression_metrics(t: &[f64], p: &[f64]) -> BTreeMap<String, Option<f64>> {
    BTreeMap::from([
        ("mae".to_string(), opt(sluice_eval::mae(t, p))),
        ("rmse".to_string(), opt(sluice_eval::rmse(t, p))),
        ("r2".to_string(), opt(sluice_eval::r2(t, p))),
    ])
}

/// A group's name and its value of a metric.
type GroupValue = (String, f64);

/// The worst and the best (group, value); `higher_is_better` says which
/// end is best. NaN values are left out.
fn extremes(
    values: &[GroupValue],
    higher_is_better: bool,
) -> (Option<&GroupValue>, Option<&GroupValue>) {
    let finite = || values.iter().filter(|(_, v)| v.is_finite());
    let min = finite().min_by(|a, b| a.1.total_cmp(&b.1));
    let max = finite().max_by(|a, b| a.1.total_cmp(&b.1));
    if higher_is_better {
        (min, max)
    } else {
        (max, min)
    }
}

/// Keeps the worse of the value already in `flat` and `value`: the larger
/// when `larger_is_worse`, else the smaller.
fn merge_worst(
    flat: &mut BTreeMap<String, Option<f64>>,
    name: &str,
    value: Option<f64>,
    larger_is_worse: bool,
) {
    let slot = flat.entry(name.to_string()).or_insert(None);
    *slot = match (*slot, value.filter(|v| v.is_finite())) {
        (Some(a), Some(b)) => Some(if larger_is_worse { a.max(b) } else { a.min(b) }),
        (a, b) => a.or(b),
    };
}

// ---------------------------------------------------------- stable version

/// What the validated version is compared with.
enum Stable {
    /// This other version.
    Version(u64),
    /// The validated version is itself the stable one.
    IsTarget,
    /// There is no other version.
    None,
}

/// `policy.toml`'s `stable`, else the highest version other than `target`.
fn stable_version(
    model_dir: &Path,
    target: u64,
    available: &BTreeSet<u64>,
) -> anyhow::Result<Stable> {
    let policy = sluice_rollout::policy::load(model_dir)?;
    match policy.and_then(|p| p.stable) {
        Some(v) if v == target => Ok(Stable::IsTarget),
        Some(v) if available.contains(&v) => Ok(Stable::Version(v)),
        Some(v) => bail!(
            "{}/policy.toml names stable version {v}, which is not on disk",
            model_dir.display()
        ),
        None => Ok(available
            .iter()
            .rev()
            .find(|&&v| v != target)
            .map_or(Stable::None, |&v| Stable::Version(v))),
    }
}

// ------------------------------------------------------------------- files

/// Records the report in `manifest.json` (rewritten atomically); false
/// when the version has no manifest.
fn record_in_manifest(
    dir: &Path,
    sha256: &str,
    passed: bool,
    created: &str,
) -> anyhow::Result<bool> {
    let path = dir.join(sluice_registry::MANIFEST_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut manifest = sluice_registry::parse_manifest(&bytes, &path)?;
    manifest.validation = Some(Box::new(sluice_registry::ValidationRecord {
        file: REPORT_FILE.to_string(),
        sha256: sha256.to_string(),
        passed,
        created: created.to_string(),
    }));
    // As `publish` writes it: pretty JSON and a newline.
    let mut json = serde_json::to_vec_pretty(&manifest)?;
    json.push(b'\n');
    sluice_registry::write_atomically(&dir.join(sluice_registry::MANIFEST_FILE), &json)?;
    Ok(true)
}

// ---------------------------------------------------------------- progress

/// Progress on stderr: a bar redrawn in place on a terminal, otherwise a
/// plain line at most every few seconds.
struct Progress {
    label: String,
    total: usize,
    done: usize,
    started: Instant,
    last: Option<Instant>,
    tty: bool,
}

impl Progress {
    fn new(label: String, total: usize) -> Progress {
        let tty = std::io::stderr().is_terminal();
        Progress {
            label,
            total,
            done: 0,
            started: Instant::now(),
            // A bar is drawn at once; plain lines only for a long phase.
            last: (!tty).then(Instant::now),
            tty,
        }
    }

    fn advance(&mut self, n: usize) {
        self.done += n;
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if self.last.is_none_or(|t| t.elapsed() >= every) {
            self.draw();
        }
    }

    fn draw(&mut self) {
        self.last = Some(Instant::now());
        let share = if self.total == 0 {
            1.0
        } else {
            self.done as f64 / self.total as f64
        };
        let secs = self.started.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        if self.tty {
            let filled = (share * 30.0).round() as usize;
            let _ = write!(
                err,
                "\r{} [{}{}] {}/{} rows {:.1}s",
                self.label,
                "#".repeat(filled),
                ".".repeat(30 - filled.min(30)),
                self.done,
                self.total,
                secs
            );
        } else {
            let _ = writeln!(
                err,
                "{}: {}/{} rows ({:.0}%, {secs:.1}s)",
                self.label,
                self.done,
                self.total,
                share * 100.0
            );
        }
        let _ = err.flush();
    }

    fn finish(&mut self) {
        self.draw();
        if self.tty {
            eprintln!();
        }
    }
}

// ----------------------------------------------------------------- summary

fn print_summary(
    args: &ValidateArgs,
    task: Task,
    target: &Evaluation,
    baseline: Option<&(u64, Evaluation)>,
    stable: &Stable,
    results: &[CheckResult],
    passed: bool,
) {
    let failed = results.iter().filter(|r| !r.passed).count();
    println!(
        "{} version {} ({}) on {} ({} rows): {}",
        args.model,
        args.version,
        task_name(task),
        args.data.display(),
        target.rows,
        if passed {
            format!("PASSED ({} checks)", results.len())
        } else {
            format!("FAILED ({failed} of {} checks)", results.len())
        }
    );
    let fmt = |v: Option<f64>| {
        v.filter(|v| v.is_finite())
            .map_or("-".to_string(), |v| format!("{v:.4}"))
    };
    match baseline {
        Some((v, _)) => println!(
            "\n  {:<12} {:>10} {:>10} {:>10}",
            "metric",
            "value",
            format!("v{v}"),
            "delta"
        ),
        None => println!("\n  {:<12} {:>10}", "metric", "value"),
    }
    for name in quality_metrics(task) {
        let value = target.metrics.get(*name).copied().flatten();
        match baseline {
            Some((_, b)) => {
                let s = b.metrics.get(*name).copied().flatten();
                println!(
                    "  {name:<12} {:>10} {:>10} {:>10}",
                    fmt(value),
                    fmt(s),
                    fmt(value.zip(s).map(|(a, s)| a - s))
                );
            }
            None => println!("  {name:<12} {:>10}", fmt(value)),
        }
    }
    if let Value::Object(columns) = &target.fairness {
        for (column, f) in columns {
            println!("\n  groups by {column}:");
            if let Some(Value::Object(groups)) = target.per_group.get(column) {
                for (g, v) in groups {
                    let main = match task {
                        Task::Classification => ("accuracy", &v["metrics"]["accuracy"]),
                        Task::Regression => ("mae", &v["metrics"]["mae"]),
                    };
                    println!(
                        "    {g:<16} {:>7} rows  {} {}",
                        v["rows"],
                        main.0,
                        fmt(main.1.as_f64())
                    );
                }
            }
            let keys: &[&str] = match task {
                Task::Classification => &[
                    "demographic_parity_difference",
                    "demographic_parity_ratio",
                    "equalized_odds_difference",
                    "group_accuracy_difference",
                ],
                Task::Regression => &["group_mae_difference"],
            };
            for k in keys {
                println!("    {k}: {}", fmt(f[*k].as_f64()));
            }
        }
    }
    let lat = target.latency_flat();
    println!(
        "\n  latency  batch 1: p50 {} ms, p90 {} ms, p99 {} ms ({} runs); batch {}: p50 {} ms, p99 {} ms ({} runs)",
        fmt(lat["p50_latency_ms"]),
        fmt(lat["p90_latency_ms"]),
        fmt(lat["p99_latency_ms"]),
        target.single.len(),
        target.batch_size,
        fmt(lat["batch_p50_latency_ms"]),
        fmt(lat["batch_p99_latency_ms"]),
        target.batched.len()
    );
    match (baseline, stable) {
        (Some((v, b)), _) => println!(
            "  compared with version {v}: p99 latency ratio {}",
            fmt(lat["p99_latency_ms"]
                .zip(b.latency_flat()["p99_latency_ms"])
                .map(|(a, s)| a / s))
        ),
        (None, Stable::IsTarget) => println!(
            "  version {} is the stable version: nothing to compare with",
            args.version
        ),
        (None, _) => println!("  no other version to compare with"),
    }
    if !results.is_empty() {
        println!("\n  checks:");
        for r in results {
            println!(
                "    {} {:<48} {}{}",
                if r.passed { "pass" } else { "FAIL" },
                r.check.text,
                fmt(r.value),
                r.reason.map(|s| format!("  ({s})")).unwrap_or_default()
            );
        }
    }
    println!();
}
