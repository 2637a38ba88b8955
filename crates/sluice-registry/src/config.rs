//! Per-model settings: `<root>/<model>/model.toml`.
//!
//! Every key is optional; a missing file means all defaults. Unknown keys are
//! an error (`deny_unknown_fields`), so `instacnes = 4` is reported rather than
//! silently ignored. A complete file with the defaults:
//!
//! ```toml
//! instances = 1                 # ONNX Runtime sessions per version (1..=64)
//! intra_op_threads = 1          # per session; 0 = ONNX Runtime's default
//! inter_op_threads = 1
//! graph_optimization = "all"    # "disable" | "basic" | "extended" | "all"
//! execution_providers = ["cpu"] # tried in order; CPU is always the last fallback
//! version_policy = "all"        # or { latest = 2 } or { specific = [1, 3] }
//! allow_signature_change = false
//! max_queue_size = 128          # waiting requests per version before 429 (>= 1)
//! queue_timeout_ms = 10000      # waiting longer than this gets 504 (>= 1)
//! max_batch_size = 0            # rows per execution when batching; reported in the Triton model config
//! warmup = true                 # one synthetic inference before taking traffic
//! warmup_shapes = {}            # e.g. { images = [1, 3, 320, 320] }: warm-up input shapes
//! inline_max_run_us = 50        # warm-up runs this short run small requests on the caller's thread; 0 = never
//!
//! [dynamic_batching]            # optional; needs max_batch_size >= 1
//! max_queue_delay_us = 100      # how long a batch's first request waits for more
//! preferred_batch_sizes = []    # dispatch at once at these sizes
//!
//! [capture]                     # optional: send sampled requests to `--capture-url`
//! sample_rate = 0.0             # share of successful requests captured, 0..=1; 0 = off
//! key_header = "x-user-id"      # optional: the same header value is always (or never) captured
//! what = "both"                 # "inputs" | "outputs" | "both"
//! queue_size = 1000             # records waiting for export before more are dropped (1..=1000000)
//!
//! task = "classification"       # optional: "classification" | "regression", for `sluice models validate`
//! require_validation = false    # a version needs a passing validation report to take traffic
//!
//! [validation]                  # optional: how `sluice models validate` reads the data and what must hold
//! features = []                 # CSV columns fed to the model, in order; default: all but label and groups
//! input = "x"                   # the input tensor; default: the model's only input
//! output = "probabilities"      # class scores/probabilities or the regression value; default: first float output
//! positive_class = 1            # the positive class of binary metrics and fairness rates
//! checks = ["accuracy >= 0.90", "demographic_parity_difference <= 0.10"]  # "METRIC OP NUMBER", OP one of >= <= > <
//!
//! [safety]                      # the check every model file passes before ONNX Runtime sees it
//! max_file_bytes = 2147483648   # model.onnx itself (a protobuf holds at most 2 GiB)
//! max_initializer_bytes = 2147483648  # any one tensor, by its declared size
//! min_opset = 7                 # ai.onnx opsets accepted (ONNX Runtime 1.31 loads 7..=26)
//! max_opset = 26
//! allowed_domains = []          # custom operator domains allowed, e.g. ["com.example"]
//! ```
//!
//! `[capture]` never reloads a version: it is read from the routing
//! snapshot by each request, so a change takes effect on the next snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use sluice_modelcheck::Safety;
pub use sluice_runtime::{ExecutionProvider, GraphOptimization};

use crate::RegistryError;

/// The most sessions one version may run in parallel.
pub const MAX_INSTANCES: usize = 64;

/// The settings of one model, parsed from its `model.toml`.
///
/// Build one with [`ModelConfig::load`] or [`ModelConfig::parse`], which both
/// [`validate`](ModelConfig::validate); `Default` gives the values documented
/// on each field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// ONNX Runtime sessions per version, each running requests on its own
    /// thread, in parallel. `1..=64`; default 1.
    pub instances: usize,
    /// Threads one session may use inside an operator; 0 lets ONNX Runtime
    /// choose. Default 1 (parallelism comes from `instances`).
    pub intra_op_threads: usize,
    /// Threads one session may use to run independent operators; 0 lets ONNX
    /// Runtime choose. Default 1.
    pub inter_op_threads: usize,
    /// How much ONNX Runtime may rewrite the graph when loading. Default `all`.
    pub graph_optimization: GraphOptimization,
    /// Execution providers to try, in order. CPU always works, so it is the
    /// implicit last fallback (see
    /// [`effective_execution_providers`](ModelConfig::effective_execution_providers)).
    /// Default `["cpu"]`.
    pub execution_providers: Vec<ExecutionProvider>,
    /// Which of the versions on disk are served. Default: all of them.
    pub version_policy: VersionPolicy,
    /// Whether a new version may be served when its inputs or outputs (names,
    /// datatypes, shapes) differ from those of the version serving now.
    /// Default false: such a version is refused, so clients are not broken.
    pub allow_signature_change: bool,
    /// Requests that may wait per version; the next one is refused with 429.
    /// `>= 1`; default 128.
    pub max_queue_size: usize,
    /// Milliseconds a request may wait for a session before it is answered
    /// with 504. `>= 1`; default 10000. See [`queue_timeout`](ModelConfig::queue_timeout).
    pub queue_timeout_ms: u64,
    /// Reported as `max_batch_size` in the Triton model configuration; 0 means
    /// the model does not batch. Default 0.
    pub max_batch_size: u32,
    /// Run one inference with synthetic inputs before a version takes traffic,
    /// so the first real request does not pay for lazy initialisation.
    /// Default true.
    pub warmup: bool,
    /// Triton-style dynamic batching: requests queued for a version are
    /// joined along their first dimension (up to `max_batch_size` rows) and
    /// run once. Off when absent. Needs `max_batch_size >= 1`.
    pub dynamic_batching: Option<DynamicBatching>,
    /// Input shapes for the warm-up run, e.g. `{ images = [1, 3, 320, 320] }`,
    /// for models whose dynamic dimensions cannot be 1. Inputs not named get
    /// their dynamic dimensions as 1. Default none.
    pub warmup_shapes: BTreeMap<String, Vec<i64>>,
    /// A version whose warm-up runs take at most this many microseconds runs
    /// a small request that is its only one in flight on the caller's thread
    /// instead of handing it to a worker thread, whose wake-up costs more
    /// than such a run. 0 never does. Ignored with dynamic batching, without warm-up, and for non-CPU
    /// execution providers. Default 50.
    pub inline_max_run_us: u64,
    /// `[capture]`: which requests are captured (their inputs and outputs
    /// sent to the capture collector). Off by default. Not a session
    /// setting: changing it reloads nothing.
    pub capture: Capture,
    /// `[safety]`: the limits of the safety check (`sluice_modelcheck`)
    /// that a version's `model.onnx` passes after its manifest is verified
    /// and before ONNX Runtime sees it. Default: the check's defaults.
    pub safety: Safety,
    /// What the model predicts, for `sluice models validate`'s metrics.
    /// Default none: validation refuses to guess.
    pub task: Option<Task>,
    /// Whether a version needs a passing validation report
    /// (`validation.json`, recorded in its manifest) before it may take
    /// traffic. Default false.
    pub require_validation: bool,
    /// `[validation]`: how `sluice models validate` maps a labelled CSV onto
    /// the model, and the checks its report must pass.
    pub validation: Validation,
}

/// What a model predicts (`task` in `model.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Classes `0..K`: the output holds a score or probability per class (or
    /// one probability of class 1).
    Classification,
    /// A number: the output holds one value per row.
    Regression,
}

/// `[validation]` in `model.toml`: see `sluice models validate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Validation {
    /// The CSV columns fed to the model, in this order. Default (empty):
    /// every column but the label and group columns, in file order.
    pub features: Vec<String>,
    /// The input tensor the features go to. Default: the model's only input.
    pub input: Option<String>,
    /// The output holding the class scores or probabilities, or the
    /// regression value. Default: the model's first floating-point output.
    pub output: Option<String>,
    /// The class whose precision, recall, ROC AUC and fairness rates binary
    /// metrics report. Default 1.
    pub positive_class: usize,
    /// Thresholds the report must pass, each `"METRIC OP NUMBER"` with OP
    /// one of `>=`, `<=`, `>`, `<` (checked by `sluice models validate`,
    /// which knows the metric names). Default none.
    pub checks: Vec<String>,
}

impl Default for Validation {
    fn default() -> Self {
        Validation {
            features: Vec::new(),
            input: None,
            output: None,
            positive_class: 1,
            checks: Vec::new(),
        }
    }
}

/// The most records [`Capture::queue_size`] may ask for.
pub const MAX_CAPTURE_QUEUE: usize = 1_000_000;

/// `[capture]` in `model.toml`: request capture, for drift detection,
/// debugging and building datasets from live traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capture {
    /// Share of successful requests captured, `0..=1`. Default 0: off.
    pub sample_rate: f64,
    /// A request header whose value decides, deterministically, whether a
    /// request is captured (the value is hashed onto `[0, 1)` with SHA-256
    /// and compared with `sample_rate`), so a given key is always or never
    /// captured, on every replica. Requests without the header are drawn at
    /// random. Default none: every request is drawn at random.
    pub key_header: Option<String>,
    /// What a record holds besides its metadata. Default `both`.
    pub what: CaptureWhat,
    /// Records captured and not yet exported (waiting, or in the batch
    /// being sent) at which this model's further records are dropped and
    /// counted. `1..=1_000_000`; default 1000.
    pub queue_size: usize,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            sample_rate: 0.0,
            key_header: None,
            what: CaptureWhat::Both,
            queue_size: 1000,
        }
    }
}

impl Capture {
    /// Whether this model asks for any capture at all.
    pub fn enabled(&self) -> bool {
        self.sample_rate > 0.0
    }

    /// Checks the ranges serde cannot express.
    fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sample_rate) {
            return Err(format!(
                "capture.sample_rate = {} is out of range: must be between 0 and 1 (0 turns capture off)",
                self.sample_rate
            ));
        }
        if !(1..=MAX_CAPTURE_QUEUE).contains(&self.queue_size) {
            return Err(format!(
                "capture.queue_size = {} is out of range: must be between 1 and {MAX_CAPTURE_QUEUE}",
                self.queue_size
            ));
        }
        if let Some(h) = &self.key_header
            && !is_header_name(h)
        {
            return Err(format!(
                "capture.key_header = {h:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only, not empty)"
            ));
        }
        Ok(())
    }
}

/// An HTTP header name (RFC 9110 token), at most 256 bytes.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What a capture record holds: the request's inputs, the response's
/// outputs, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureWhat {
    Inputs,
    Outputs,
    Both,
}

impl CaptureWhat {
    pub fn inputs(self) -> bool {
        matches!(self, CaptureWhat::Inputs | CaptureWhat::Both)
    }

    pub fn outputs(self) -> bool {
        matches!(self, CaptureWhat::Outputs | CaptureWhat::Both)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CaptureWhat::Inputs => "inputs",
            CaptureWhat::Outputs => "outputs",
            CaptureWhat::Both => "both",
        }
    }
}

/// `[dynamic_batching]` in `model.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamicBatching {
    /// How long the first request of a batch may wait for more, in
    /// microseconds. Default 100.
    pub max_queue_delay_us: u64,
    /// Batch sizes (rows) at which a batch is dispatched at once, without
    /// waiting out the delay. Each `1..=max_batch_size`. Default none.
    pub preferred_batch_sizes: Vec<usize>,
}

impl Default for DynamicBatching {
    fn default() -> Self {
        DynamicBatching {
            max_queue_delay_us: 100,
            preferred_batch_sizes: Vec::new(),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            instances: 1,
            intra_op_threads: 1,
            inter_op_threads: 1,
            graph_optimization: GraphOptimization::All,
            execution_providers: vec![ExecutionProvider::Cpu],
            version_policy: VersionPolicy::All,
            allow_signature_change: false,
            max_queue_size: 128,
            queue_timeout_ms: 10_000,
            max_batch_size: 0,
            warmup: true,
            dynamic_batching: None,
            warmup_shapes: BTreeMap::new(),
            inline_max_run_us: sluice_runtime::DEFAULT_INLINE_MAX_RUN_US,
            capture: Capture::default(),
            safety: Safety::default(),
            task: None,
            require_validation: false,
            validation: Validation::default(),
        }
    }
}

/// Which versions of a model are served; Triton's version policies.
///
/// In TOML this is externally tagged: `"all"`, `{ latest = 2 }` or
/// `{ specific = [1, 3] }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionPolicy {
    /// Every version on disk.
    All,
    /// The N highest versions on disk (`>= 1`).
    Latest(usize),
    /// Exactly these versions, those of them that exist (non-empty, each `>= 1`).
    Specific(Vec<u64>),
}

impl ModelConfig {
    /// Reads and validates `path` (a `model.toml`).
    ///
    /// Errors name the file: [`RegistryError::Io`] if it cannot be read,
    /// [`RegistryError::InvalidConfig`] if it does not parse or is out of range.
    pub fn load(path: &Path) -> Result<ModelConfig, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => RegistryError::InvalidConfig {
                path: path.to_owned(),
                reason: "the file is not valid UTF-8".to_owned(),
            },
            _ => RegistryError::io("read", path, e),
        })?;
        ModelConfig::parse(&text, path)
    }

    /// Parses and validates the TOML text of a `model.toml`; `path` is only
    /// used to name the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ModelConfig, RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidConfig {
            path: path.to_owned(),
            reason,
        };
        let config: ModelConfig =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// Checks the ranges serde cannot express. The error says which key is
    /// wrong, what it was and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if let Some((name, shape)) = self
            .warmup_shapes
            .iter()
            .find(|(_, s)| s.iter().any(|&d| d < 0))
        {
            return Err(format!(
                "warmup_shapes.{name} = {shape:?} has a negative dimension"
            ));
        }
        if let Some(b) = &self.dynamic_batching {
            if self.max_batch_size == 0 {
                return Err("[dynamic_batching] needs max_batch_size >= 1 (the most rows one execution may take)".into());
            }
            if let Some(bad) = b
                .preferred_batch_sizes
                .iter()
                .find(|&&p| p == 0 || p > self.max_batch_size as usize)
            {
                return Err(format!(
                    "dynamic_batching.preferred_batch_sizes has {bad}: each must be between 1 and max_batch_size = {}",
                    self.max_batch_size
                ));
            }
            if b.max_queue_delay_us > 1_000_000 {
                return Err(format!(
                    "dynamic_batching.max_queue_delay_us = {} is over one second",
                    b.max_queue_delay_us
                ));
            }
        }
        if !(1..=MAX_INSTANCES).contains(&self.instances) {
            return Err(format!(
                "instances = {} is out of range: must be between 1 and {MAX_INSTANCES}",
                self.instances
            ));
        }
        if self.max_queue_size == 0 {
            return Err("max_queue_size = 0 is out of range: must be at least 1".to_owned());
        }
        if self.queue_timeout_ms == 0 {
            return Err("queue_timeout_ms = 0 is out of range: must be at least 1".to_owned());
        }
        let mut seen = Vec::new();
        for &ep in &self.execution_providers {
            if seen.contains(&ep) {
                return Err(format!("execution_providers lists \"{ep}\" twice"));
            }
            if seen.contains(&ExecutionProvider::Cpu) {
                return Err(format!(
                    "execution_providers lists \"{ep}\" after \"cpu\", which never fails, so \"{ep}\" would never be tried"
                ));
            }
            seen.push(ep);
        }
        self.capture.validate()?;
        self.safety.validate()?;
        match &self.version_policy {
            VersionPolicy::All => {}
            VersionPolicy::Latest(0) => {
                return Err(
                    "version_policy = { latest = 0 } would serve nothing: must be at least 1"
                        .to_owned(),
                );
            }
            VersionPolicy::Latest(_) => {}
            VersionPolicy::Specific(list) if list.is_empty() => {
                return Err(
                    "version_policy = { specific = [] } would serve nothing: list at least one version"
                        .to_owned(),
                );
            }
            VersionPolicy::Specific(list) => {
                if list.contains(&0) {
                    return Err(
                        "version_policy = { specific = [...] } lists version 0: versions start at 1"
                            .to_owned(),
                    );
                }
            }
        }
        Ok(())
    }

    /// The versions to serve out of those `available` on disk, per
    /// [`version_policy`](ModelConfig::version_policy): all of them, the N
    /// highest, or those of the listed ones that exist.
    pub fn selected_versions(&self, available: &BTreeSet<u64>) -> BTreeSet<u64> {
        match &self.version_policy {
            VersionPolicy::All => available.clone(),
            VersionPolicy::Latest(n) => available.iter().rev().take(*n).copied().collect(),
            VersionPolicy::Specific(list) => list
                .iter()
                .filter(|v| available.contains(v))
                .copied()
                .collect(),
        }
    }

    /// The execution providers to register, in order, always ending with CPU:
    /// `["cuda"]` gives `[Cuda, Cpu]`, `[]` gives `[Cpu]`.
    pub fn effective_execution_providers(&self) -> Vec<ExecutionProvider> {
        let mut eps = Vec::with_capacity(self.execution_providers.len() + 1);
        for &ep in &self.execution_providers {
            if !eps.contains(&ep) {
                eps.push(ep);
            }
        }
        if !eps.contains(&ExecutionProvider::Cpu) {
            eps.push(ExecutionProvider::Cpu);
        }
        eps
    }

    /// [`queue_timeout_ms`](ModelConfig::queue_timeout_ms) as a [`Duration`].
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms)
    }
}
