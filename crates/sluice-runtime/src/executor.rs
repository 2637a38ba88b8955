//! The executor of one model version: a bounded queue and `instances` worker
//! threads, each owning one ONNX Runtime session.
//!
//! ```text
//! async caller ── validate ── try_send(Job) ──► [bounded queue] ──► worker thread (Session)
//!      ▲                         │ full: 429                            │ waited too long: 504
//!      └──────────── oneshot ◄───┴──────────────────────────────────────┘
//! ```
//!
//! A version whose warm-up runs take at most `inline_max_run` (a tiny MLP: a
//! few microseconds) is *inline*: a caller may run a request on its own
//! thread, because handing a job to another thread and waking it costs more
//! than such a run (tens of microseconds on a VM). Only a request that finds
//! the version idle (nothing in flight, nothing answered in the last 50 µs)
//! runs inline, and only if it is no larger than the warm-up scaled to that
//! budget: under concurrent load the queue is
//! never empty, its workers never park, and a worker running request after
//! request keeps the model's code and data in its core's cache while the
//! async threads keep the HTTP path in theirs (measured on the tiny MLP at
//! concurrency 64: inline everywhere was 20% slower). Inline callers have a
//! session of their own (one more than `instances`), so they and the workers
//! never wait for each other; a caller that finds it taken queues the job.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use serde::{Deserialize, Serialize};
use sluice_tensor::Tensor;
use tokio::sync::oneshot;

use crate::batch::{self, BatchingOptions};
use crate::convert;
use crate::error::{InferError, LoadError};
use crate::library::OrtRuntime;
use crate::signature::Signature;
use crate::stats::VersionStats;
use sluice_telemetry::VersionMetrics;

/// ONNX Runtime's graph optimisation levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphOptimization {
    /// No rewriting at all.
    Disable,
    /// Semantics-preserving rewrites such as constant folding.
    Basic,
    /// `basic` plus fusions of common operator patterns.
    Extended,
    /// Everything, including layout optimisations.
    #[default]
    All,
}

/// An ONNX Runtime execution provider Sluice knows how to register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    /// NVIDIA CUDA.
    Cuda,
    /// NVIDIA TensorRT (falls back to CUDA/CPU for unsupported nodes).
    Tensorrt,
    /// The default CPU provider; always available.
    Cpu,
}

impl ExecutionProvider {
    /// The name used in `model.toml` (`"cuda"`, `"tensorrt"`, `"cpu"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::Tensorrt => "tensorrt",
            ExecutionProvider::Cpu => "cpu",
        }
    }
}

impl std::fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to run one model version.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionOptions {
    /// Sessions, each on its own thread, running in parallel.
    pub instances: usize,
    /// ONNX Runtime intra-op threads per session (0: ONNX Runtime decides).
    pub intra_op_threads: usize,
    /// ONNX Runtime inter-op threads per session (0: ONNX Runtime decides).
    pub inter_op_threads: usize,
    pub graph_optimization: GraphOptimization,
    pub execution_providers: Vec<ExecutionProvider>,
    /// Requests that may wait for a worker; one more gets `QueueFull`.
    pub max_queue_size: usize,
    /// A request that waited longer than this is answered `QueueTimeout`.
    pub queue_timeout: Duration,
    /// Run one synthetic inference per session before taking traffic.
    pub warmup: bool,
    /// Input shapes for the warm-up run, by input name; inputs not named
    /// get their dynamic dimensions as 1.
    pub warmup_shapes: BTreeMap<String, Vec<i64>>,
    /// Dynamic batching; ignored (with a warning) for a model whose inputs
    /// and outputs do not all have a dynamic first dimension.
    pub batching: Option<BatchingOptions>,
    /// A version whose warm-up runs take at most this long runs small
    /// requests on the caller's thread (see the module docs); zero turns it
    /// off. Never for batched versions or non-CPU execution providers.
    pub inline_max_run: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            instances: 1,
            intra_op_threads: 1,
            inter_op_threads: 1,
            graph_optimization: GraphOptimization::All,
            execution_providers: vec![ExecutionProvider::Cpu],
            max_queue_size: 128,
            queue_timeout: Duration::from_secs(10),
            warmup: true,
            warmup_shapes: BTreeMap::new(),
            batching: None,
            inline_max_run: Duration::from_micros(DEFAULT_INLINE_MAX_RUN_US),
        }
    }
}

/// The default of [`SessionOptions::inline_max_run`], in microseconds: well
/// under what a thread hand-off costs here, and short enough that an async
/// worker thread is never held up for long.
pub const DEFAULT_INLINE_MAX_RUN_US: u64 = 50;

/// How many timed runs decide whether a version runs inline.
const INLINE_PROBE_RUNS: usize = 9;

/// How long a version must have had no request in flight before the next
/// one may run inline: by then its workers have stopped spinning for work
/// and parked, so a hand-off would pay for a wake-up. Under load requests
/// follow each other closer than this and go to the (awake) workers.
const IDLE_BEFORE_INLINE: Duration = Duration::from_micros(50);

/// Which requests of a version are in flight, to tell an idle version (the
/// next request may run inline) from a busy one.
struct Activity {
    /// Requests past validation and not yet answered (inline or queued).
    active: AtomicUsize,
    /// When the last request left, in nanoseconds since `epoch`.
    last_exit: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            active: AtomicUsize::new(0),
            last_exit: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Counts a request in; `idle` says no other was in flight and none
    /// left in the last [`IDLE_BEFORE_INLINE`].
    fn enter(&self) -> Active<'_> {
        let before = self.active.fetch_add(1, Ordering::Relaxed);
        let quiet = self
            .now()
            .saturating_sub(self.last_exit.load(Ordering::Relaxed))
            >= IDLE_BEFORE_INLINE.as_nanos() as u64;
        Active {
            activity: self,
            idle: before == 0 && quiet,
        }
    }
}

/// One request in flight, until dropped (answered, or its caller gone).
struct Active<'a> {
    activity: &'a Activity,
    idle: bool,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        let a = self.activity;
        a.last_exit.store(a.now(), Ordering::Relaxed);
        a.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The session of an inline version's callers (its workers have their own).
struct InlinePool {
    /// The session, when no caller is using it.
    put: Sender<Session>,
    take: Receiver<Session>,
    /// A request with more input elements than this goes to the queue: its
    /// run would exceed the inline budget.
    max_elements: usize,
    /// The median warm-up run that made this version inline.
    probe: Duration,
}

/// The outputs of one inference, in the order they were asked for.
#[derive(Debug)]
pub struct InferOutput {
    pub outputs: Vec<(String, Tensor)>,
    /// Time the session spent on it: converting the inputs, the run, and
    /// converting the outputs (for a batched run, the whole batch's). Queue
    /// waiting is not included.
    pub compute: Duration,
}

struct Job {
    inputs: Vec<(String, Tensor)>,
    outputs: Vec<String>,
    enqueued: Instant,
    /// The caller's span (the request's server span), entered on the worker
    /// so logs and the inference spans stay attached to the request.
    span: tracing::Span,
    /// `sluice.queue`: open from enqueue until a worker takes the job.
    queue_span: tracing::Span,
    /// Whether a runtime failure is worth a WARN line: not for shadow
    /// copies, which are counted instead (a failing shadow would otherwise
    /// write a line per request).
    log_failure: bool,
    reply: oneshot::Sender<Result<InferOutput, InferError>>,
}

/// One loaded model version. Dropping the last `Arc` to it closes the queue;
/// the workers finish what is queued, exit, and drop their sessions.
pub struct ModelExecutor {
    model: String,
    version: u64,
    path: PathBuf,
    signature: Signature,
    options: SessionOptions,
    /// Jobs in; bounded by `max_queue_size` so overload is refused, not queued.
    queue: Sender<Job>,
    stats: Arc<VersionStats>,
    /// Prometheus handles of this version, resolved once at load; `None`
    /// when telemetry is off.
    metrics: Option<VersionMetrics>,
    /// The dynamic batching in effect (`None` when off or not possible).
    batching: Option<BatchingOptions>,
    /// `Some` for an inline version: its sessions, free for the taking.
    inline: Option<Arc<InlinePool>>,
    /// Requests in flight: only a request that finds the version idle runs
    /// inline.
    activity: Activity,
    /// The background lane for shadow copies (see
    /// [`infer_background`](Self::infer_background)), started on first use; `None`
    /// inside when it could not start.
    background: OnceLock<Option<Sender<Job>>>,
    /// To build the background lane's session.
    runtime: OrtRuntime,
    /// Kept only so the threads are named in debuggers; never joined (the
    /// last drop may happen on an async thread, which must not block).
    _workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ModelExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelExecutor")
            .field("model", &self.model)
            .field("version", &self.version)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn build_session(
    rt: &OrtRuntime,
    path: &Path,
    options: &SessionOptions,
) -> Result<Session, LoadError> {
    let fail = |e: &dyn std::fmt::Display| LoadError::Session {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let level = match options.graph_optimization {
        GraphOptimization::Disable => GraphOptimizationLevel::Disable,
        GraphOptimization::Basic => GraphOptimizationLevel::Level1,
        GraphOptimization::Extended => GraphOptimizationLevel::Level2,
        GraphOptimization::All => GraphOptimizationLevel::All,
    };
    let mut providers = Vec::new();
    for ep in &options.execution_providers {
        match ep {
            ExecutionProvider::Cuda => providers.push(ort::ep::CUDA::default().build()),
            ExecutionProvider::Tensorrt => providers.push(ort::ep::TensorRT::default().build()),
            ExecutionProvider::Cpu => {}
        }
    }
    providers.push(ort::ep::CPU::default().build());
    let mut builder = Session::builder(rt.environment())
        .map_err(|e| fail(&e))?
        .with_optimization_level(level)
        .map_err(|e| fail(&e))?
        .with_execution_providers(providers)
        .map_err(|e| fail(&e))?;
    if options.intra_op_threads > 0 {
        builder = builder
            .with_intra_threads(options.intra_op_threads)
            .map_err(|e| fail(&e))?;
    }
    if options.inter_op_threads > 0 {
        builder = builder
            .with_inter_threads(options.inter_op_threads)
            .map_err(|e| fail(&e))?;
    }
    builder.commit_from_file(path).map_err(|e| fail(&e))
}

/// Inputs of the smallest shape the signature allows: dynamic dims are 1,
/// numbers are zero, strings are empty.
/// Inputs for the warm-up run: the shapes `model.toml` gives
/// (`warmup_shapes`), else the smallest the signature allows (dynamic
/// dimensions 1); numbers are zero, strings empty. Also says whether any
/// dimension was guessed.
fn warmup_inputs(
    signature: &Signature,
    shapes: &BTreeMap<String, Vec<i64>>,
) -> (Vec<(String, Tensor)>, bool) {
    let mut guessed = false;
    let inputs = signature
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<i64> = match shapes.get(&spec.name) {
                Some(given) => given.clone(),
                None => spec
                    .shape
                    .iter()
                    .map(|&d| {
                        if d < 0 {
                            guessed = true;
                            1
                        } else {
                            d
                        }
                    })
                    .collect(),
            };
            let n = sluice_tensor::element_count(&shape).unwrap_or(0);
            let tensor = match spec.datatype.element_size() {
                Some(size) => {
                    Tensor::from_raw(spec.datatype, shape, Bytes::from(vec![0u8; n * size]))
                }
                None => Tensor::from_bytes_elements(shape, vec![Bytes::new(); n]),
            }
            .expect("a warm-up tensor is consistent with its shape by construction");
            (spec.name.clone(), tensor)
        })
        .collect();
    (inputs, guessed)
}

/// Why one run failed: the input (a 400: the caller can fix it) or the
/// runtime (a 500).
#[derive(Debug)]
enum RunError {
    /// The input cannot be handed to ONNX Runtime (a BYTES element with a NUL
    /// byte), or ONNX Runtime refused it as an invalid argument (an empty
    /// batch for an operator that needs one, say).
    Input(String),
    Runtime(String),
}

impl RunError {
    fn message(self) -> String {
        match self {
            RunError::Input(m) | RunError::Runtime(m) => m,
        }
    }
}

/// Which model version a session belongs to, for span attributes.
#[derive(Clone, Copy)]
struct Ident<'a> {
    model: &'a str,
    version: u64,
}

/// Runs one inference on a session. Never panics: ONNX Runtime errors and
/// panics inside `ort` both come back as errors.
fn run_session(
    session: &mut Session,
    ident: Ident<'_>,
    inputs: &[(String, Tensor)],
    outputs: &[String],
) -> Result<(InferOutput, [Duration; 3]), RunError> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        // Span attributes are i64: OpenTelemetry has no unsigned integers.
        let (model, version) = (ident.model, ident.version as i64);
        let phase = |name: &'static str| match name {
            "input" => sluice_telemetry::child_span!(
                "sluice.compute_input",
                "sluice.model" = model,
                "sluice.model_version" = version
            ),
            "infer" => sluice_telemetry::child_span!(
                "sluice.compute_infer",
                "sluice.model" = model,
                "sluice.model_version" = version
            ),
            _ => sluice_telemetry::child_span!(
                "sluice.compute_output",
                "sluice.model" = model,
                "sluice.model_version" = version
            ),
        };
        let span = phase("input").entered();
        let t0 = Instant::now();
        let values = inputs
            .iter()
            .map(|(name, t)| {
                let value = convert::to_ort(t)
                    .map_err(|e| RunError::Input(format!("input '{name}': {e}")))?;
                Ok((name.as_str(), value))
            })
            .collect::<Result<Vec<_>, RunError>>()?;
        let t1 = Instant::now();
        drop(span);
        let span = phase("infer").entered();
        let mut result = session.run(values).map_err(|e| match e.code() {
            ort::error::ErrorCode::InvalidArgument => {
                RunError::Input(format!("ONNX Runtime refused the input: {e}"))
            }
            _ => RunError::Runtime(e.to_string()),
        })?;
        let t2 = Instant::now();
        drop(span);
        let _span = phase("output").entered();
        let outputs = outputs
            .iter()
            .map(|name| {
                let value = result.remove(name.as_str()).ok_or_else(|| {
                    RunError::Runtime(format!("ONNX Runtime returned no output '{name}'"))
                })?;
                Ok((
                    name.clone(),
                    convert::from_ort(&value).map_err(RunError::Runtime)?,
                ))
            })
            .collect::<Result<Vec<_>, RunError>>()?;
        let t3 = Instant::now();
        Ok((
            InferOutput {
                outputs,
                compute: t3 - t0,
            },
            [t1 - t0, t2 - t1, t3 - t2],
        ))
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(RunError::Runtime(format!(
            "panic inside ONNX Runtime binding: {what}"
        )))
    })
}

struct Worker {
    model: String,
    version: u64,
    timeout: Duration,
    session: Session,
    stats: Arc<VersionStats>,
    metrics: Option<VersionMetrics>,
    queue: Receiver<Job>,
    /// `Some` when the model batches (configured, and its signature allows).
    batching: Option<BatchingOptions>,
    /// A job taken from the queue that did not fit the batch being formed;
    /// it starts the next one.
    pending: Option<Job>,
}

/// Puts the calling thread at the lowest scheduling priority: Linux's
/// `SCHED_IDLE` policy, whose threads run only on cores that threads of the
/// normal policy leave idle and are preempted the moment one of those wakes
/// (a niced thread would keep its slice, milliseconds, first); `nice 19`
/// where that is refused. A thread's policy is its own. Best effort.
fn lower_own_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler and setpriority with id 0 change only the
    // calling thread's scheduling; the parameter outlives the call.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0
            && libc::setpriority(libc::PRIO_PROCESS, 0, 19) != 0
        {
            tracing::debug!("could not lower the background lane's priority");
        }
    }
}

/// Hands memory freed by a dropped session back to the system. A session's
/// allocations live in the arena of the thread that made them, and glibc
/// keeps freed arena pages mapped, so without this every retired version
/// would leave its footprint behind (issue 4's swap-cycle measurement).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it has no
    // preconditions and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The rows a job contributes to a batch (its first dimension), 1 for a job
/// that cannot be batched.
fn rows_of(inputs: &[(String, Tensor)]) -> usize {
    inputs
        .first()
        .and_then(|(_, t)| t.shape().first())
        .and_then(|&d| usize::try_from(d).ok())
        .unwrap_or(1)
        .max(1)
}

impl Worker {
    fn run(mut self) {
        loop {
            let job = match self.pending.take() {
                Some(job) => job,
                None => match self.queue.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            let Some(job) = self.admit(job) else { continue };
            let batch = self.collect(job);
            self.execute(batch);
        }
        tracing::debug!(model = %self.model, version = self.version, "worker stopped; session dropped");
        drop(self);
        release_freed_memory();
    }

    /// Takes a job off the queue: ends its queue span, and answers it now if
    /// its caller left or it waited past the timeout (only that request
    /// fails, batched or not).
    fn admit(&self, mut job: Job) -> Option<Job> {
        drop(std::mem::replace(
            &mut job.queue_span,
            tracing::Span::none(),
        ));
        if job.reply.is_closed() {
            // The caller went away (client disconnected): skip the work.
            return None;
        }
        let waited = job.enqueued.elapsed();
        if waited > self.timeout {
            self.stats.record_failure(waited);
            let _ = job.reply.send(Err(InferError::QueueTimeout {
                model: self.model.clone(),
                version: self.version,
                waited_ms: waited.as_millis() as u64,
                timeout_ms: self.timeout.as_millis() as u64,
            }));
            return None;
        }
        Some(job)
    }

    /// Forms a batch starting with `first`: while the batching window is open
    /// and the batch is below its maximum (and not at a preferred size), it
    /// takes queued requests that share `first`'s batch key. A request that
    /// does not fit waits in `pending` for the next batch.
    fn collect(&mut self, first: Job) -> Vec<Job> {
        let Some(options) = self.batching.clone() else {
            return vec![first];
        };
        let Some((key, mut rows)) = batch::batch_key(&first.inputs, &first.outputs) else {
            return vec![first];
        };
        let mut batch = vec![first];
        let deadline = Instant::now() + options.max_queue_delay;
        while rows < options.max_batch_size && !options.preferred_batch_sizes.contains(&rows) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            let next = match self.queue.recv_timeout(left) {
                Ok(job) => job,
                Err(_) => break,
            };
            let Some(next) = self.admit(next) else {
                continue;
            };
            match batch::batch_key(&next.inputs, &next.outputs) {
                Some((k, r)) if k == key && rows + r <= options.max_batch_size => {
                    rows += r;
                    batch.push(next);
                }
                _ => {
                    self.pending = Some(next);
                    break;
                }
            }
        }
        batch
    }

    /// Runs a batch (one request, or several joined along the first
    /// dimension) and answers each request with its own rows. If a joined
    /// run fails, each request is run alone, so only a faulty one fails.
    fn execute(&mut self, batch: Vec<Job>) {
        let ident = Ident {
            model: &self.model,
            version: self.version,
        };
        let rows: Vec<usize> = batch.iter().map(|j| rows_of(&j.inputs)).collect();
        let total_rows: usize = rows.iter().sum();
        // A batched execution's spans belong to its first request's trace.
        let _entered = batch[0].span.enter();
        let inference = sluice_telemetry::child_span!("sluice.inference",
            "sluice.model" = %self.model,
            "sluice.model_version" = self.version as i64,
            "sluice.batch_size" = total_rows as i64,
            "sluice.batch_requests" = batch.len() as i64,
        );
        let result = inference.in_scope(|| {
            if batch.len() == 1 {
                return run_session(
                    &mut self.session,
                    ident,
                    &batch[0].inputs,
                    &batch[0].outputs,
                )
                .map(|(out, phases)| (vec![out.outputs], phases));
            }
            let parts: Vec<&[(String, Tensor)]> =
                batch.iter().map(|j| j.inputs.as_slice()).collect();
            let joined = batch::concat(&parts).map_err(RunError::Runtime)?;
            let (out, phases) = run_session(&mut self.session, ident, &joined, &batch[0].outputs)?;
            let mut per_job: Vec<Vec<(String, Tensor)>> = vec![Vec::new(); batch.len()];
            for (name, tensor) in out.outputs {
                let pieces = batch::split(&tensor, &rows).map_err(|e| {
                    RunError::Runtime(format!("output '{name}' cannot be split per request: {e}"))
                })?;
                for (i, piece) in pieces.into_iter().enumerate() {
                    per_job[i].push((name.clone(), piece));
                }
            }
            Ok((per_job, phases))
        });
        drop(inference);
        drop(_entered);
        match result {
            Ok((outputs, phases)) => {
                record_execution(&self.stats, self.metrics.as_ref(), total_rows, phases);
                for (job, outputs) in batch.into_iter().zip(outputs) {
                    record_answer(&self.stats, self.metrics.as_ref(), job.enqueued, phases);
                    let _ = job.reply.send(Ok(InferOutput {
                        outputs,
                        compute: phases.iter().sum(),
                    }));
                }
            }
            Err(_) if batch.len() > 1 => {
                for job in batch {
                    self.execute(vec![job]);
                }
            }
            Err(e) => {
                let job = batch.into_iter().next().expect("a batch has a job");
                self.stats.record_failure(job.enqueued.elapsed());
                let _ = job.reply.send(Err(run_failure(
                    &self.model,
                    self.version,
                    e,
                    job.log_failure,
                )));
            }
        }
    }
}

/// Counts one execution (one session run, of `rows` rows).
fn record_execution(
    stats: &VersionStats,
    metrics: Option<&VersionMetrics>,
    rows: usize,
    [input, infer, out]: [Duration; 3],
) {
    stats.record_execution(rows as u64);
    if let Some(m) = metrics {
        m.compute_input.observe(input.as_secs_f64());
        m.compute_infer.observe(infer.as_secs_f64());
        m.compute_output.observe(out.as_secs_f64());
        m.batch_size.observe(rows as f64);
    }
}

/// Counts one answered request: the time it waited is what its execution's
/// phases do not explain.
fn record_answer(
    stats: &VersionStats,
    metrics: Option<&VersionMetrics>,
    enqueued: Instant,
    [input, infer, out]: [Duration; 3],
) {
    let total = enqueued.elapsed();
    let waited = total.saturating_sub(input + infer + out);
    stats.record_phases(waited, input, infer, out);
    stats.record_success(total);
    if let Some(m) = metrics {
        m.queue_duration.observe(waited.as_secs_f64());
    }
}

/// The error a failed run answers its request with.
fn run_failure(model: &str, version: u64, error: RunError, log: bool) -> InferError {
    match error {
        RunError::Input(message) => InferError::Invalid(message),
        RunError::Runtime(message) => {
            if log {
                tracing::warn!(model, version, error = %message, "inference failed");
            } else {
                tracing::debug!(model, version, error = %message, "inference failed");
            }
            InferError::Runtime {
                model: model.to_string(),
                version,
                message,
            }
        }
    }
}

/// Decides whether a version runs inline: times a few runs of the warm-up
/// inputs on `session` and, when their median is within
/// `options.inline_max_run`, returns it with the most input elements a
/// request may have to run inline (the warm-up's, scaled to the budget).
fn inline_probe(
    session: &mut Session,
    model: &str,
    version: u64,
    signature: &Signature,
    options: &SessionOptions,
) -> Option<(Duration, usize)> {
    let budget = options.inline_max_run;
    if budget.is_zero()
        || !options.warmup
        || options.batching.is_some()
        || options
            .execution_providers
            .iter()
            .any(|ep| *ep != ExecutionProvider::Cpu)
    {
        return None;
    }
    let (inputs, _) = warmup_inputs(signature, &options.warmup_shapes);
    let outputs: Vec<String> = signature.outputs.iter().map(|o| o.name.clone()).collect();
    let ident = Ident { model, version };
    let mut runs = Vec::with_capacity(INLINE_PROBE_RUNS);
    for _ in 0..INLINE_PROBE_RUNS {
        let started = Instant::now();
        run_session(session, ident, &inputs, &outputs).ok()?;
        runs.push(started.elapsed());
    }
    runs.sort_unstable();
    let median = runs[runs.len() / 2];
    if median > budget {
        return None;
    }
    let elements: usize = inputs.iter().map(|(_, t)| t.len()).sum();
    let scale = (budget.as_nanos() / median.as_nanos().max(1)).clamp(1, 64) as usize;
    Some((median, elements.max(1).saturating_mul(scale)))
}

impl ModelExecutor {
    /// Loads `path` into `options.instances` sessions, warms each up, and
    /// starts their worker threads. Blocking (seconds for a large model):
    /// call it from `spawn_blocking`.
    pub fn load(
        rt: &OrtRuntime,
        model: &str,
        version: u64,
        path: &Path,
        options: SessionOptions,
        metrics: Option<VersionMetrics>,
    ) -> Result<ModelExecutor, LoadError> {
        let instances = options.instances.max(1);
        let mut sessions = Vec::with_capacity(instances);
        let mut signature = None;
        for _ in 0..instances {
            let mut session = build_session(rt, path, &options)?;
            let sig = match &signature {
                Some(sig) => Signature::clone(sig),
                None => Signature::of_session(path, &session)?,
            };
            if options.warmup {
                let (inputs, guessed) = warmup_inputs(&sig, &options.warmup_shapes);
                let outputs: Vec<String> = sig.outputs.iter().map(|o| o.name.clone()).collect();
                let ident = Ident { model, version };
                match run_session(&mut session, ident, &inputs, &outputs) {
                    Ok(_) => {}
                    // Guessed sizes (dynamic dimensions as 1) may simply be
                    // too small for the model (a detector needs a real image
                    // size): that says nothing about the model, so it loads
                    // without a warm-up. `warmup_shapes` in model.toml fixes it.
                    Err(e) if guessed => tracing::warn!(
                        model,
                        version,
                        error = %e.message(),
                        "warm-up with guessed input sizes failed; serving without a warm-up (set warmup_shapes in model.toml)"
                    ),
                    Err(e) => {
                        return Err(LoadError::Warmup {
                            path: path.to_path_buf(),
                            message: e.message(),
                        });
                    }
                }
            }
            signature = Some(sig);
            sessions.push(session);
        }
        let signature = signature.expect("at least one instance");
        let batching = match &options.batching {
            Some(b) if batch::batchable(&signature) => Some(b.clone()),
            Some(_) => {
                tracing::warn!(
                    model,
                    version,
                    "dynamic_batching ignored: not every input and output has a dynamic first dimension"
                );
                None
            }
            None => None,
        };
        let inline = match inline_probe(&mut sessions[0], model, version, &signature, &options) {
            Some((probe, max_elements)) => {
                tracing::info!(
                    model,
                    version,
                    warmup_run_us = probe.as_micros() as u64,
                    max_elements,
                    "small requests run inline: a warm-up run is shorter than a thread hand-off"
                );
                // A session of its own, so that inline callers and the
                // workers never wait for each other's session.
                let mut session = build_session(rt, path, &options)?;
                let (inputs, _) = warmup_inputs(&signature, &options.warmup_shapes);
                let outputs: Vec<String> =
                    signature.outputs.iter().map(|o| o.name.clone()).collect();
                run_session(&mut session, Ident { model, version }, &inputs, &outputs).map_err(
                    |e| LoadError::Warmup {
                        path: path.to_path_buf(),
                        message: e.message(),
                    },
                )?;
                let (put, take) = crossbeam_channel::bounded(1);
                put.send(session)
                    .expect("the pool has room for its session");
                Some(Arc::new(InlinePool {
                    put,
                    take,
                    max_elements,
                    probe,
                }))
            }
            None => None,
        };
        let (tx, rx) = crossbeam_channel::bounded(options.max_queue_size.max(1));
        let stats = Arc::new(VersionStats::default());
        let mut workers = Vec::with_capacity(instances);
        for (i, session) in sessions.into_iter().enumerate() {
            let worker = Worker {
                model: model.to_string(),
                version,
                timeout: options.queue_timeout,
                session,
                stats: stats.clone(),
                metrics: metrics.clone(),
                queue: rx.clone(),
                batching: batching.clone(),
                pending: None,
            };
            // Workers log and trace through the subscriber that was current
            // when the version loaded (the global one, in the server).
            let dispatch = tracing::dispatcher::get_default(Clone::clone);
            let handle = std::thread::Builder::new()
                .name(format!("ort-{model}-v{version}-{i}"))
                .spawn(move || tracing::dispatcher::with_default(&dispatch, || worker.run()))
                .map_err(LoadError::Thread)?;
            workers.push(handle);
        }
        Ok(ModelExecutor {
            model: model.to_string(),
            version,
            path: path.to_path_buf(),
            signature,
            options,
            queue: tx,
            stats,
            metrics,
            batching,
            inline,
            activity: Activity::new(),
            background: OnceLock::new(),
            runtime: rt.clone(),
            _workers: workers,
        })
    }

    /// The background lane's queue: one more session of this version, on a
    /// thread of the lowest scheduling priority (`SCHED_IDLE`), so that its
    /// work only takes cores that requests at normal priority leave idle. Built
    /// on first use, on that thread; copies sent before it is ready wait in
    /// its queue (or are refused when it is full).
    fn background(&self) -> Option<&Sender<Job>> {
        self.background
            .get_or_init(|| {
                let (tx, rx) = crossbeam_channel::bounded(self.options.max_queue_size.max(1));
                let rt = self.runtime.clone();
                let path = self.path.clone();
                let mut options = self.options.clone();
                options.batching = None;
                let (model, version) = (self.model.clone(), self.version);
                let stats = self.stats.clone();
                let metrics = self.metrics.clone();
                let dispatch = tracing::dispatcher::get_default(Clone::clone);
                let spawned = std::thread::Builder::new()
                    .name(format!("ort-{model}-v{version}-bg"))
                    .spawn(move || {
                        tracing::dispatcher::with_default(&dispatch, || {
                            lower_own_priority();
                            let session = match build_session(&rt, &path, &options) {
                                Ok(s) => s,
                                Err(e) => {
                                    tracing::warn!(model, version, error = %e, "background lane could not load its session; shadow copies are dropped");
                                    return;
                                }
                            };
                            Worker {
                                model,
                                version,
                                timeout: options.queue_timeout,
                                session,
                                stats,
                                metrics,
                                queue: rx,
                                batching: None,
                                pending: None,
                            }
                            .run();
                        })
                    });
                match spawned {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        tracing::warn!(model = %self.model, version = self.version, error = %e, "cannot start the background lane; shadow copies are dropped");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// The median warm-up run, when this version runs small requests on the
    /// caller's thread (see the module docs); `None` when it always queues.
    pub fn inline_run(&self) -> Option<Duration> {
        self.inline.as_ref().map(|p| p.probe)
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    pub fn options(&self) -> &SessionOptions {
        &self.options
    }

    pub fn stats(&self) -> &VersionStats {
        &self.stats
    }

    /// The dynamic batching in effect: configured, and possible for this
    /// model's signature.
    pub fn batching(&self) -> Option<&BatchingOptions> {
        self.batching.as_ref()
    }

    /// This version's metric handles, when telemetry is on.
    pub fn metrics(&self) -> Option<&VersionMetrics> {
        self.metrics.as_ref()
    }

    /// Requests waiting for a worker now.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Validates the request against the signature, queues it (or runs it
    /// inline, see the module docs), and awaits the answer. `outputs` empty
    /// means every output, in graph order.
    pub async fn infer(
        &self,
        inputs: Vec<(String, Tensor)>,
        outputs: Vec<String>,
    ) -> Result<InferOutput, InferError> {
        self.infer_on(inputs, outputs, true).await
    }

    /// As [`infer`](Self::infer), but in the version's background lane: a
    /// session of its own on a thread of the lowest priority, never on the
    /// caller's thread, never in the queue requests use. For shadow copies,
    /// which must take neither the async threads' time nor the version's
    /// sessions nor, when the machine is busy, its cores. A full queue is
    /// refused at once (`QueueFull`), so a slow shadow sheds copies instead
    /// of piling them up. Failures are logged at debug level only: the
    /// caller counts them.
    pub async fn infer_background(
        &self,
        inputs: Vec<(String, Tensor)>,
        outputs: Vec<String>,
    ) -> Result<InferOutput, InferError> {
        self.infer_on(inputs, outputs, false).await
    }

    async fn infer_on(
        &self,
        inputs: Vec<(String, Tensor)>,
        outputs: Vec<String>,
        may_inline: bool,
    ) -> Result<InferOutput, InferError> {
        let started = Instant::now();
        if let Err(e) = self.signature.validate(
            inputs.iter().map(|(n, t)| (n.as_str(), t)),
            outputs.iter().map(String::as_str),
        ) {
            self.stats.record_failure(started.elapsed());
            return Err(e);
        }
        let outputs = if outputs.is_empty() {
            self.signature
                .outputs
                .iter()
                .map(|o| o.name.clone())
                .collect()
        } else {
            outputs
        };
        let queue_span = sluice_telemetry::child_span!("sluice.queue",
            "sluice.model" = %self.model,
            "sluice.model_version" = self.version as i64,
        );
        let active = self.activity.enter();
        if let Some(pool) = &self.inline
            && may_inline
            && active.idle
        {
            let elements: usize = inputs.iter().map(|(_, t)| t.len()).sum();
            if elements <= pool.max_elements
                && let Ok(mut session) = pool.take.try_recv()
            {
                drop(queue_span);
                let result = self.run_inline(&mut session, &inputs, &outputs, started);
                let _ = pool.put.send(session);
                return result;
            }
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs,
            outputs,
            enqueued: started,
            span: tracing::Span::current(),
            queue_span,
            log_failure: may_inline,
            reply,
        };
        let queue = if may_inline {
            &self.queue
        } else {
            match self.background() {
                Some(queue) => queue,
                None => {
                    return Err(InferError::Stopped {
                        model: self.model.clone(),
                        version: self.version,
                    });
                }
            }
        };
        match queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.record_failure(started.elapsed());
                return Err(InferError::QueueFull {
                    model: self.model.clone(),
                    version: self.version,
                    capacity: self.options.max_queue_size,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(InferError::Stopped {
                    model: self.model.clone(),
                    version: self.version,
                });
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(InferError::Stopped {
                model: self.model.clone(),
                version: self.version,
            })
        })
    }

    /// Runs one request on a session taken from the inline pool, on the
    /// caller's thread: the same spans, statistics and errors as a worker.
    fn run_inline(
        &self,
        session: &mut Session,
        inputs: &[(String, Tensor)],
        outputs: &[String],
        started: Instant,
    ) -> Result<InferOutput, InferError> {
        let rows = rows_of(inputs);
        let inference = sluice_telemetry::child_span!("sluice.inference",
            "sluice.model" = %self.model,
            "sluice.model_version" = self.version as i64,
            "sluice.batch_size" = rows as i64,
            "sluice.batch_requests" = 1i64,
        );
        let ident = Ident {
            model: &self.model,
            version: self.version,
        };
        let result = inference.in_scope(|| run_session(session, ident, inputs, outputs));
        drop(inference);
        match result {
            Ok((output, phases)) => {
                record_execution(&self.stats, self.metrics.as_ref(), rows, phases);
                record_answer(&self.stats, self.metrics.as_ref(), started, phases);
                Ok(output)
            }
            Err(e) => {
                self.stats.record_failure(started.elapsed());
                Err(run_failure(&self.model, self.version, e, true))
            }
        }
    }
}
