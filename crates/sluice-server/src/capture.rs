//! Request capture: a sample of successful requests, with their inputs and
//! outputs, sent as CloudEvents to a collector (`--capture-url`).
//!
//! The request path, for a model whose `model.toml` has a `[capture]` table
//! with `sample_rate > 0` (read from the routing snapshot the handler already
//! loaded), and only when a collector is configured:
//! 1. before the primary runs, [`CaptureHub::plan`] decides whether the
//!    request is captured: the `key_header`'s value hashed onto `[0, 1)`, or
//!    a random draw, against the rate. Not sampled: nothing else happens,
//!    and nothing was allocated. Sampled, and the queue is full already:
//!    the record will be dropped, so the inputs are not even cloned;
//! 2. the inputs the record keeps are cloned (reference counts: a
//!    [`Tensor`] shares its buffers) before the executor takes them;
//! 3. after the primary answered successfully, [`CaptureHub::submit`]
//!    reserves a place in the queue (an atomic compare-and-swap against the
//!    model's `queue_size`) and sends the record through an unbounded
//!    channel (lock-free); without a place, the record is dropped and
//!    counted. Never a wait, never a lock.
//!
//! One queue per process. Its depth counts the records captured and not yet
//! exported (waiting, or in the batch being sent); a model's record is
//! admitted while the depth is below that model's `queue_size`, so memory is
//! bounded by the largest `queue_size` of the models asking for capture.
//!
//! The exporter, a task of its own, takes up to `max_batch` (256) records or
//! what arrived within `max_batch_wait` (200 ms) of the first, encodes them
//! (on a blocking thread: tensors become OIP JSON here, never on the request
//! path) as a CloudEvents JSON batch, and POSTs it
//! (`application/cloudevents-batch+json`). A failed POST (no connection, a
//! timeout, 408, 429 or 5xx) is retried with exponential backoff (100 ms
//! doubling to 5 s) until it succeeds, `max_attempts` (8) have been made, or
//! the batch is older than `max_batch_age` (30 s); then its records count as
//! `failed`. Another 4xx is the collector refusing the batch: not retried.
//! While the collector is down the queue fills and further records are
//! dropped; once it answers again, export resumes by itself.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use sluice_registry::Capture;
use sluice_rollout::routing::{self, Variant};
use sluice_runtime::ModelExecutor;
use sluice_serving::ModelManager;
use sluice_telemetry::{CaptureCounters, CaptureOutcome, Metrics};
use sluice_tensor::Tensor;
use tokio::sync::{mpsc, watch};

/// The CloudEvents `type` of a capture record.
pub const EVENT_TYPE: &str = "dev.sluice.inference";
/// The Content-Type of a batch (CloudEvents JSON batch mode).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// Prefixed to a `key_header` value before it is hashed, so that capture
/// decisions are independent of the canary split, which hashes the same
/// kind of key ([`routing::sticky_point`]) with no prefix: without it, a
/// model whose `key_header` is its policy's `sticky_header` would capture
/// exactly the keys below both rates, i.e. mostly the canary's callers.
pub const KEY_SALT: &str = "sluice-capture\0";

/// Where capture records go and how they are exported (`sluice serve
/// --capture-url`, `--capture-source`). Without a `url`, nothing is
/// captured, whatever the models' `[capture]` tables say.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// The collector: batches are POSTed here, e.g.
    /// `http://127.0.0.1:9000/v1/events`. `http://` only.
    pub url: Option<String>,
    /// The host part of each record's `source`
    /// (`sluice://<source>/<model>`); default: this machine's host name.
    pub source: Option<String>,
    /// Most records in one POST.
    pub max_batch: usize,
    /// How long a batch waits for more records after its first.
    pub max_batch_wait: Duration,
    /// Timeout of one POST (connecting included).
    pub request_timeout: Duration,
    /// First wait before retrying a failed POST; it doubles each time...
    pub retry_initial: Duration,
    /// ...up to this.
    pub retry_max: Duration,
    /// POSTs of one batch at most (the first included) before its records
    /// count as failed.
    pub max_attempts: u32,
    /// A batch is not retried once this old (from when it was formed).
    pub max_batch_age: Duration,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            url: None,
            source: None,
            max_batch: 256,
            max_batch_wait: Duration::from_millis(200),
            request_timeout: Duration::from_secs(10),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            max_attempts: 8,
            max_batch_age: Duration::from_secs(30),
        }
    }
}

impl CaptureOptions {
    /// Checks the URL and the source; the error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if let Some(url) = &self.url {
            check_url(url)?;
        }
        if let Some(source) = &self.source
            && (source.is_empty()
                || source
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '/'))
        {
            return Err(format!(
                "capture source {source:?} must be a host name: not empty, no spaces or '/'"
            ));
        }
        Ok(())
    }
}

/// Checks a collector URL: `http://host[:port]/path`.
pub fn check_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("capture URL {url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(format!(
                "capture URL {url:?}: https is not supported by this build; use http:// (e.g. a collector on the same host or network)"
            ));
        }
        other => {
            return Err(format!(
                "capture URL {url:?}: the scheme must be http, not {other}"
            ));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("capture URL {url:?} has no host"));
    }
    Ok(parsed)
}

/// Where `key` falls on `[0, 1)` for capture: [`routing::sticky_point`] of
/// [`KEY_SALT`] followed by the key, computed without building that string
/// (it runs for every request of a model with a `key_header`, sampled or
/// not).
pub fn key_point(key: &str) -> f64 {
    let digest = Sha256::new()
        .chain_update(KEY_SALT.as_bytes())
        .chain_update(key.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Whether a request with these headers is sampled at `capture`'s rate.
pub fn sampled(capture: &Capture, headers: &HeaderMap) -> bool {
    let rate = capture.sample_rate;
    if rate <= 0.0 || rate.is_nan() {
        return false;
    }
    let key = capture
        .key_header
        .as_deref()
        .and_then(|h| headers.get(h))
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let point = match key {
        Some(key) => key_point(key),
        None => routing::random_unit(),
    };
    point < rate
}

/// What to capture of one sampled request: decided before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    inputs: bool,
    outputs: bool,
    /// The queue was full when the request was sampled: the record will be
    /// dropped, so nothing is copied for it.
    full: bool,
    queue_size: usize,
}

impl Plan {
    /// Whether the request's inputs must be kept (cloned) for the record.
    pub fn keeps_inputs(&self) -> bool {
        self.inputs && !self.full
    }
}

/// One captured request, as the request path hands it to the exporter:
/// nothing is formatted or encoded yet.
pub(crate) struct Record {
    model: String,
    version: u64,
    variant: Option<Variant>,
    request_id: String,
    trace_id: Option<u128>,
    latency: Duration,
    time: SystemTime,
    seq: u64,
    inputs: Option<Vec<(String, Tensor)>>,
    outputs: Option<Vec<(String, Tensor)>>,
    counters: Option<Arc<CaptureCounters>>,
}

/// What the request path knows of a request when it submits its record.
pub(crate) struct Answered<'a> {
    pub executor: &'a ModelExecutor,
    pub variant: Option<Variant>,
    pub request_id: &'a str,
    pub trace_id: Option<u128>,
    /// From the request's arrival to the primary's answer.
    pub latency: Duration,
    /// The inputs kept per [`Plan::keeps_inputs`].
    pub inputs: Option<Vec<(String, Tensor)>>,
    pub outputs: &'a [(String, Tensor)],
}

/// The request path's side of capture: the queue's sender and its depth.
pub(crate) struct CaptureHub {
    tx: mpsc::UnboundedSender<Record>,
    depth: Arc<AtomicUsize>,
    seq: AtomicU64,
}

/// The exporter task, for a graceful shutdown.
pub(crate) struct Exporting {
    closing: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Exporting {
    /// Stops taking new records, sends what is queued (one attempt per
    /// batch) and waits for that, at most `grace`.
    pub async fn close(self, grace: Duration) {
        let _ = self.closing.send(true);
        if tokio::time::timeout(grace, self.task).await.is_err() {
            tracing::warn!(
                grace_s = grace.as_secs_f64(),
                "capture records still queued at shutdown were not all sent"
            );
        }
    }
}

impl CaptureHub {
    /// The hub and its exporter task (spawned on the current runtime), or
    /// `None` (and why, logged) when capture is off: no URL, an invalid
    /// one, or no runtime to run the exporter on.
    pub fn start(
        options: &CaptureOptions,
        metrics: Option<Arc<Metrics>>,
    ) -> Option<(Arc<CaptureHub>, Exporting)> {
        let url = options.url.as_deref()?;
        let url = match options.check().and_then(|()| check_url(url)) {
            Ok(url) => url,
            Err(e) => {
                tracing::error!(error = %e, "capture is off");
                return None;
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("capture is off: no async runtime to run its exporter on");
            return None;
        };
        let client = match reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.request_timeout.min(Duration::from_secs(5)))
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "capture is off: no HTTP client");
                return None;
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let depth = Arc::new(AtomicUsize::new(0));
        if let Some(m) = &metrics {
            let depth = depth.clone();
            m.set_capture_depth_source(move || depth.load(Ordering::Relaxed));
        }
        let (closing, closing_rx) = watch::channel(false);
        let source = options.source.clone().unwrap_or_else(hostname);
        let exporter = Exporter {
            rx,
            depth: depth.clone(),
            url,
            client,
            source,
            metrics,
            options: options.clone(),
            closing: closing_rx,
            failing: false,
        };
        let task = runtime.spawn(exporter.run());
        // Ids stay unique across restarts of a gateway whose callers reuse
        // request ids: the counter starts at the start time, in µs.
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let hub = CaptureHub {
            tx,
            depth,
            seq: AtomicU64::new(start),
        };
        Some((Arc::new(hub), Exporting { closing, task }))
    }

    /// Whether this request is captured, and what of it; `None` for the
    /// (common) requests that are not. Allocates nothing.
    pub fn plan(&self, capture: &Capture, headers: &HeaderMap) -> Option<Plan> {
        if !sampled(capture, headers) {
            return None;
        }
        Some(Plan {
            inputs: capture.what.inputs(),
            outputs: capture.what.outputs(),
            full: self.depth.load(Ordering::Relaxed) >= capture.queue_size,
            queue_size: capture.queue_size,
        })
    }

    /// Queues the record of a sampled request that succeeded, or drops it
    /// (counted) when the queue holds `queue_size` records already. Never
    /// waits.
    pub fn submit(&self, plan: Plan, answered: Answered<'_>) {
        let counters = answered.executor.metrics().map(|m| &m.capture);
        let dropped = || {
            if let Some(c) = counters {
                c.record(CaptureOutcome::Dropped, 1);
            }
        };
        if plan.full || !self.reserve(plan.queue_size) {
            dropped();
            return;
        }
        let executor = answered.executor;
        let record = Record {
            model: executor.model().to_string(),
            version: executor.version(),
            variant: answered.variant,
            request_id: answered.request_id.to_string(),
            trace_id: answered.trace_id,
            latency: answered.latency,
            time: SystemTime::now(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            inputs: answered.inputs.filter(|_| plan.inputs),
            outputs: plan.outputs.then(|| answered.outputs.to_vec()),
            counters: counters.cloned(),
        };
        if self.tx.send(record).is_err() {
            // The exporter is gone (shutting down).
            self.depth.fetch_sub(1, Ordering::Relaxed);
            dropped();
        }
    }

    /// Takes a place in the queue if fewer than `limit` are taken.
    fn reserve(&self, limit: usize) -> bool {
        self.depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                (d < limit).then_some(d + 1)
            })
            .is_ok()
    }
}

/// This machine's host name, for the records' `source`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|s| !s.trim().is_empty())
        })
        .unwrap_or_else(|| "localhost".into())
}

/// Logs, once the repository has loaded, which models ask for capture: where
/// their records go, or that they go nowhere (no `--capture-url`).
pub(crate) fn announce(manager: ModelManager, url: Option<String>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        loop {
            let models: Option<Vec<String>> = {
                let snapshot = manager.snapshot();
                snapshot.initialised.then(|| {
                    let mut names: Vec<String> = snapshot
                        .models
                        .values()
                        .filter(|m| m.config.capture.enabled())
                        .map(|m| m.name.clone())
                        .collect();
                    names.sort();
                    names
                })
            };
            let Some(models) = models else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            match (&url, models.is_empty()) {
                (_, true) => {}
                (Some(url), false) => {
                    tracing::info!(?models, %url, "capturing sampled requests")
                }
                (None, false) => tracing::warn!(
                    ?models,
                    "these models ask for capture in model.toml, but capture is off (no valid --capture-url to send it to): nothing is captured"
                ),
            }
            return;
        }
    });
}

/// Takes batches off the queue and POSTs them.
struct Exporter {
    rx: mpsc::UnboundedReceiver<Record>,
    depth: Arc<AtomicUsize>,
    url: reqwest::Url,
    client: reqwest::Client,
    source: String,
    metrics: Option<Arc<Metrics>>,
    options: CaptureOptions,
    closing: watch::Receiver<bool>,
    /// Whether the last batch failed (logged once per change).
    failing: bool,
}

/// How one POST went.
enum Attempt {
    Delivered,
    /// Worth retrying: no connection, a timeout, 408, 429 or 5xx.
    Retry(String),
    /// The collector refused the batch (another 4xx): not retried.
    Refused(String),
}

/// Resolves once `closing` says so; never if its sender is gone (the hub
/// was made by [`crate::router`], without a shutdown to wait for).
async fn closed(closing: &mut watch::Receiver<bool>) {
    if closing.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Exporter {
    async fn run(mut self) {
        while let Some(batch) = self.next_batch().await {
            self.deliver(batch, false).await;
        }
        // Closing (or every sender is gone): what is queued now gets one
        // attempt per batch.
        let mut batch = Vec::new();
        while let Ok(record) = self.rx.try_recv() {
            batch.push(record);
            if batch.len() >= self.options.max_batch.max(1) {
                self.deliver(std::mem::take(&mut batch), true).await;
            }
        }
        if !batch.is_empty() {
            self.deliver(batch, true).await;
        }
    }

    /// The next batch: the first record, then what arrives within
    /// `max_batch_wait`, up to `max_batch`. `None` once closing or when no
    /// sender is left.
    async fn next_batch(&mut self) -> Option<Vec<Record>> {
        let first = tokio::select! {
            biased;
            _ = closed(&mut self.closing) => return None,
            record = self.rx.recv() => record?,
        };
        let max = self.options.max_batch.max(1);
        let mut batch = Vec::with_capacity(max.min(256));
        batch.push(first);
        let deadline = tokio::time::Instant::now() + self.options.max_batch_wait;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(record)) => batch.push(record),
                Ok(None) | Err(_) => break,
            }
        }
        Some(batch)
    }

    /// Encodes and POSTs one batch, retrying as configured (`once`: a
    /// single attempt), then counts its records and frees their places in
    /// the queue.
    async fn deliver(&mut self, batch: Vec<Record>, once: bool) {
        let formed = Instant::now();
        let n = batch.len();
        let counters: Vec<Option<Arc<CaptureCounters>>> =
            batch.iter().map(|r| r.counters.clone()).collect();
        // Encoding is CPU work proportional to the tensors: off the async
        // workers.
        let source = self.source.clone();
        let body = match tokio::task::spawn_blocking(move || encode_batch(&source, &batch)).await {
            Ok(body) => Some(body),
            Err(e) => {
                tracing::error!(error = %e, "encoding a capture batch failed");
                None
            }
        };
        let mut outcome = Err("the batch could not be encoded".to_string());
        if let Some(body) = body {
            let mut delay = self.options.retry_initial;
            let mut attempts = 0u32;
            outcome = loop {
                attempts += 1;
                match self.post(body.clone()).await {
                    Attempt::Delivered => break Ok(()),
                    Attempt::Refused(why) => break Err(why),
                    Attempt::Retry(why) => {
                        let out_of_time = formed.elapsed() + delay > self.options.max_batch_age;
                        if once || attempts >= self.options.max_attempts || out_of_time {
                            break Err(format!("{why} (after {attempts} attempts)"));
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = closed(&mut self.closing) => {
                                break Err(format!("{why} (shutting down)"));
                            }
                        }
                        delay = (delay * 2).min(self.options.retry_max);
                    }
                }
            };
        }
        let counted = if outcome.is_ok() {
            CaptureOutcome::Sent
        } else {
            CaptureOutcome::Failed
        };
        for c in counters.iter().flatten() {
            c.record(counted, 1);
        }
        // Counted first, then freed: once the depth is back to zero, every
        // record it held has been counted.
        self.depth.fetch_sub(n, Ordering::AcqRel);
        match outcome {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!(url = %self.url, "capture export recovered");
            }
            Ok(()) => {}
            Err(error) if !self.failing => {
                self.failing = true;
                tracing::warn!(
                    url = %self.url,
                    %error,
                    records = n,
                    "capture export failing: records are counted as failed or dropped until the collector accepts them again"
                );
            }
            Err(error) => {
                tracing::debug!(url = %self.url, %error, records = n, "capture batch failed");
            }
        }
    }

    /// One POST of an encoded batch.
    async fn post(&self, body: Bytes) -> Attempt {
        let started = Instant::now();
        let result = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, BATCH_CONTENT_TYPE)
            .body(body)
            .send()
            .await;
        let attempt = match result {
            Err(e) => Attempt::Retry(error_chain(&e)),
            Ok(response) => {
                let status = response.status();
                // Read the (small) answer, so the connection can be reused.
                let _ = response.bytes().await;
                if status.is_success() {
                    Attempt::Delivered
                } else if status.is_server_error()
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                {
                    Attempt::Retry(format!("the collector answered {status}"))
                } else {
                    Attempt::Refused(format!("the collector refused the batch: {status}"))
                }
            }
        };
        if let Some(m) = &self.metrics {
            let outcome = match attempt {
                Attempt::Delivered => "success",
                _ => "failure",
            };
            m.capture_export_duration
                .get(&[outcome])
                .observe(started.elapsed().as_secs_f64());
        }
        attempt
    }
}

/// An error with its causes ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// The CloudEvents JSON batch (a JSON array of events) of `records`.
fn encode_batch(source: &str, records: &[Record]) -> Bytes {
    let mut out = Vec::with_capacity(512 * records.len());
    out.push(b'[');
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        encode_event(source, r, &mut out);
    }
    out.push(b']');
    Bytes::from(out)
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing a str into a Vec cannot fail");
}

/// One CloudEvent (structured JSON): the CloudEvents attributes, then
/// `data` with the record.
fn encode_event(source: &str, r: &Record, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"specversion\":\"1.0\",\"type\":");
    push_str(out, EVENT_TYPE);
    out.extend_from_slice(b",\"source\":");
    push_str(out, &format!("sluice://{source}/{}", r.model));
    out.extend_from_slice(b",\"id\":");
    push_str(out, &format!("{}-{}", r.request_id, r.seq));
    out.extend_from_slice(b",\"time\":");
    push_str(out, &sluice_rollout::audit::format_time(r.time));
    out.extend_from_slice(b",\"subject\":");
    push_str(out, &format!("{}/{}", r.model, r.version));
    out.extend_from_slice(b",\"datacontenttype\":\"application/json\",\"data\":{\"model\":");
    push_str(out, &r.model);
    let _ = write!(VecWriter(out), ",\"version\":{},\"variant\":", r.version);
    match r.variant {
        Some(v) => push_str(out, v.as_str()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"request_id\":");
    push_str(out, &r.request_id);
    match r.trace_id {
        Some(t) => {
            let _ = write!(VecWriter(out), ",\"trace_id\":\"{t:032x}\"");
        }
        None => out.extend_from_slice(b",\"trace_id\":null"),
    }
    let _ = write!(VecWriter(out), ",\"latency_us\":{}", r.latency.as_micros());
    if let Some(inputs) = &r.inputs {
        out.extend_from_slice(b",\"inputs\":");
        tensors_json(inputs, out);
    }
    if let Some(outputs) = &r.outputs {
        out.extend_from_slice(b",\"outputs\":");
        tensors_json(outputs, out);
    }
    out.extend_from_slice(b"}}");
}

/// `fmt::Write` into a byte vector.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The start of a response body that [`tensors_json`] has the OIP encoder
/// write: an empty model name and version, no id or parameters.
const OUTPUTS_PREFIX: &[u8] = b"{\"model_name\":\"\",\"model_version\":\"\",\"outputs\":";

/// A JSON array of OIP tensors (`{"name","datatype","shape","data"}`, data
/// flat), written by the protocol's own encoder, exactly as a response's
/// JSON outputs: a record's tensors read back with the decoder a client
/// uses.
fn tensors_json(tensors: &[(String, Tensor)], out: &mut Vec<u8>) {
    let body = sluice_oip::encode_infer_response(&sluice_oip::InferResponse {
        model_name: "",
        model_version: "",
        id: None,
        parameters: None,
        outputs: tensors
            .iter()
            .map(|(name, tensor)| sluice_oip::ResponseOutput {
                name: name.clone(),
                tensor: tensor.clone(),
                binary_data: false,
            })
            .collect(),
    })
    .body;
    match body
        .strip_prefix(OUTPUTS_PREFIX)
        .and_then(|rest| rest.strip_suffix(b"}"))
    {
        Some(array) => out.extend_from_slice(array),
        // The encoder's layout changed: take the array out the slow way.
        None => {
            let value: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            let array = value
                .get("outputs")
                .cloned()
                .unwrap_or(serde_json::Value::Array(Vec::new()));
            serde_json::to_writer(&mut *out, &array).expect("writing JSON into a Vec cannot fail");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use sluice_tensor::DataType;

    #[test]
    fn the_key_point_is_sticky_point_of_the_salted_key() {
        for key in ["", "alice", "user-42", "ünïcode"] {
            assert_eq!(
                key_point(key),
                routing::sticky_point(&format!("{KEY_SALT}{key}"))
            );
            assert_eq!(key_point(key), key_point(key));
            assert!((0.0..1.0).contains(&key_point(key)));
        }
        // Independent of the canary split's point for the same key.
        assert_ne!(key_point("alice"), routing::sticky_point("alice"));
        let n = 20_000;
        let both = (0..n)
            .filter(|i| {
                let k = format!("k{i}");
                key_point(&k) < 0.3 && routing::sticky_point(&k) < 0.3
            })
            .count() as f64;
        // 0.09 of the keys if independent (0.3 if the same point).
        let sd = (n as f64 * 0.09 * 0.91).sqrt();
        assert!((both - n as f64 * 0.09).abs() < 5.0 * sd, "{both}");
    }

    #[test]
    fn sampling_by_rate_and_by_key() {
        let mut capture = Capture::default();
        let headers = HeaderMap::new();
        assert!(!sampled(&capture, &headers), "rate 0 is off");
        capture.sample_rate = 1.0;
        assert!(sampled(&capture, &headers));
        capture.sample_rate = 0.5;
        capture.key_header = Some("x-user-id".into());
        let mut with_key = HeaderMap::new();
        for i in 0..200 {
            let key = format!("user-{i}");
            with_key.insert("x-user-id", key.parse().unwrap());
            let expected = key_point(&key) < 0.5;
            for _ in 0..3 {
                assert_eq!(sampled(&capture, &with_key), expected, "{key}");
            }
        }
        // Without the header (or with an empty one): a random draw.
        let drawn = (0..2000).filter(|_| sampled(&capture, &headers)).count();
        assert!((800..1200).contains(&drawn), "{drawn}");
        with_key.insert("x-user-id", "".parse().unwrap());
        let drawn = (0..2000).filter(|_| sampled(&capture, &with_key)).count();
        assert!((800..1200).contains(&drawn), "{drawn}");
    }

    fn fp32(values: &[f32], shape: Vec<i64>) -> Tensor {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_raw(DataType::Fp32, shape, Bytes::from(raw)).unwrap()
    }

    #[test]
    fn tensors_are_oip_json() {
        let mut out = Vec::new();
        tensors_json(
            &[
                ("x".into(), fp32(&[1.5, -2.0], vec![1, 2])),
                (
                    "s".into(),
                    Tensor::from_bytes_elements(vec![1], vec![Bytes::from_static(b"hi\"")])
                        .unwrap(),
                ),
            ],
            &mut out,
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!([
                {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2.0]},
                {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["hi\""]},
            ])
        );
        let mut empty = Vec::new();
        tensors_json(&[], &mut empty);
        assert_eq!(empty, b"[]");
    }

    #[test]
    fn a_batch_is_an_array_of_cloudevents() {
        let record = |seq, variant, inputs: bool, outputs: bool| Record {
            model: "scale".into(),
            version: 3,
            variant,
            request_id: "req\"1".into(),
            trace_id: Some(0x0af7651916cd43dd8448eb211c80319c),
            latency: Duration::from_micros(1234),
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            seq,
            inputs: inputs.then(|| vec![("x".into(), fp32(&[1.0], vec![1, 1]))]),
            outputs: outputs.then(|| vec![("y".into(), fp32(&[3.0], vec![1, 1]))]),
            counters: None,
        };
        let body = encode_batch(
            "host-a",
            &[
                record(7, Some(Variant::Canary), true, true),
                Record {
                    trace_id: None,
                    ..record(8, None, true, false)
                },
            ],
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v[0],
            json!({
                "specversion": "1.0",
                "type": "dev.sluice.inference",
                "source": "sluice://host-a/scale",
                "id": "req\"1-7",
                "time": "2023-11-14T22:13:20.123Z",
                "subject": "scale/3",
                "datacontenttype": "application/json",
                "data": {
                    "model": "scale",
                    "version": 3,
                    "variant": "canary",
                    "request_id": "req\"1",
                    "trace_id": "0af7651916cd43dd8448eb211c80319c",
                    "latency_us": 1234,
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}],
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 1], "data": [3.0]}],
                }
            })
        );
        assert_eq!(v[1]["id"], "req\"1-8");
        assert_eq!(v[1]["data"]["variant"], Value::Null);
        assert_eq!(v[1]["data"]["trace_id"], Value::Null);
        assert!(v[1]["data"].get("outputs").is_none());
        assert_eq!(v.as_array().unwrap().len(), 2);
    }

    #[test]
    fn urls_and_sources_are_checked() {
        assert!(check_url("http://127.0.0.1:9000/v1/events").is_ok());
        let e = check_url("https://collector/v1/events").unwrap_err();
        assert!(e.contains("https is not supported"), "{e}");
        let e = check_url("ftp://collector/").unwrap_err();
        assert!(e.contains("the scheme must be http"), "{e}");
        let e = check_url("collector:9000").unwrap_err();
        assert!(e.contains("scheme") || e.contains("not a URL"), "{e}");
        let bad = CaptureOptions {
            source: Some("a/b".into()),
            ..Default::default()
        };
        assert!(bad.check().unwrap_err().contains("host name"));
        assert!(!hostname().is_empty());
    }
}
