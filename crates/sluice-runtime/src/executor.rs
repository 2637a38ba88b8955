//! The executor of one model version: a bounded queue and `instances` worker
//! threads, each owning one ONNX Runtime session.
//!
//! ```text
//! async caller ── validate ── try_send(Job) ──► [bounded queue] ──► worker thread (Session)
//!      ▲                         │ full: 429                            │ waited too long: 504
//!      └──────────── oneshot ◄───┴──────────────────────────────────────┘
//! ```

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use serde::{Deserialize, Serialize};
use sluice_tensor::Tensor;
use tokio::sync::oneshot;

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
        }
    }
}

/// The outputs of one inference, in the order they were asked for.
#[derive(Debug)]
pub struct InferOutput {
    pub outputs: Vec<(String, Tensor)>,
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
fn warmup_inputs(signature: &Signature) -> Vec<(String, Tensor)> {
    signature
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<i64> = spec
                .shape
                .iter()
                .map(|&d| if d < 0 { 1 } else { d })
                .collect();
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
        .collect()
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
        Ok((InferOutput { outputs }, [t1 - t0, t2 - t1, t3 - t2]))
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
}

impl Worker {
    fn run(mut self) {
        while let Ok(mut job) = self.queue.recv() {
            // Dequeued: the queue span ends here.
            drop(std::mem::replace(
                &mut job.queue_span,
                tracing::Span::none(),
            ));
            let _entered = job.span.enter();
            if job.reply.is_closed() {
                // The caller went away (client disconnected): skip the work.
                continue;
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
                continue;
            }
            let batch = job
                .inputs
                .first()
                .and_then(|(_, t)| t.shape().first())
                .copied()
                .unwrap_or(1)
                .max(1) as u64;
            let inference = sluice_telemetry::child_span!("sluice.inference",
                "sluice.model" = %self.model,
                "sluice.model_version" = self.version as i64,
                "sluice.batch_size" = batch as i64,
            );
            let result = inference.in_scope(|| {
                let ident = Ident {
                    model: &self.model,
                    version: self.version,
                };
                run_session(&mut self.session, ident, &job.inputs, &job.outputs)
            });
            drop(inference);
            let total = job.enqueued.elapsed();
            let reply = match result {
                Ok((output, [input, infer, out])) => {
                    self.stats.record_phases(waited, input, infer, out);
                    self.stats.record_success(total, batch);
                    if let Some(m) = &self.metrics {
                        m.queue_duration.observe(waited.as_secs_f64());
                        m.compute_input.observe(input.as_secs_f64());
                        m.compute_infer.observe(infer.as_secs_f64());
                        m.compute_output.observe(out.as_secs_f64());
                        m.batch_size.observe(batch as f64);
                    }
                    Ok(output)
                }
                Err(RunError::Input(message)) => {
                    self.stats.record_failure(total);
                    Err(InferError::Invalid(message))
                }
                Err(RunError::Runtime(message)) => {
                    self.stats.record_failure(total);
                    tracing::warn!(model = %self.model, version = self.version, error = %message, "inference failed");
                    Err(InferError::Runtime {
                        model: self.model.clone(),
                        version: self.version,
                        message,
                    })
                }
            };
            let _ = job.reply.send(reply);
        }
        tracing::debug!(model = %self.model, version = self.version, "worker stopped; session dropped");
    }
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
                let inputs = warmup_inputs(&sig);
                let outputs: Vec<String> = sig.outputs.iter().map(|o| o.name.clone()).collect();
                let ident = Ident { model, version };
                run_session(&mut session, ident, &inputs, &outputs).map_err(|e| {
                    LoadError::Warmup {
                        path: path.to_path_buf(),
                        message: e.message(),
                    }
                })?;
            }
            signature = Some(sig);
            sessions.push(session);
        }
        let signature = signature.expect("at least one instance");
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
            _workers: workers,
        })
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

    /// This version's metric handles, when telemetry is on.
    pub fn metrics(&self) -> Option<&VersionMetrics> {
        self.metrics.as_ref()
    }

    /// Requests waiting for a worker now.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Validates the request against the signature, queues it, and awaits
    /// the answer. `outputs` empty means every output, in graph order.
    pub async fn infer(
        &self,
        inputs: Vec<(String, Tensor)>,
        outputs: Vec<String>,
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
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs,
            outputs,
            enqueued: started,
            span: tracing::Span::current(),
            queue_span: sluice_telemetry::child_span!("sluice.queue",
                "sluice.model" = %self.model,
                "sluice.model_version" = self.version as i64,
            ),
            reply,
        };
        match self.queue.try_send(job) {
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
}
