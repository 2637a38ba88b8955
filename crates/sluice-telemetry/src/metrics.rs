//! Sluice's metrics, as written in `docs/specs/instrumentation.md`: every
//! family is declared here, once, with its name, help text and label names.

use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::metric::{
    BATCH_BUCKETS, Counter, DIFF_BUCKETS, Gauge, Histogram, LATENCY_BUCKETS, LATENCY_RATIO_BUCKETS,
};

/// How a request ended: the `outcome` label of `sluice_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    Validation,
    NotFound,
    TooLarge,
    Overloaded,
    NotReady,
    Timeout,
    Runtime,
    Unauthorized,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Success,
        Outcome::Validation,
        Outcome::NotFound,
        Outcome::TooLarge,
        Outcome::Overloaded,
        Outcome::NotReady,
        Outcome::Timeout,
        Outcome::Runtime,
        Outcome::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Validation => "validation",
            Outcome::NotFound => "not_found",
            Outcome::TooLarge => "too_large",
            Outcome::Overloaded => "overloaded",
            Outcome::NotReady => "not_ready",
            Outcome::Timeout => "timeout",
            Outcome::Runtime => "runtime",
            Outcome::Unauthorized => "unauthorized",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The protocol a request came in on: the `protocol` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The OIP REST API (HTTP/1.1 or HTTP/2).
    Http,
    /// `inference.GRPCInferenceService`.
    Grpc,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Http, Protocol::Grpc];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The kind of a family, as the exposition formats name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Series of one metric, keyed by label values.
///
/// Lookups are lock-free and allocation-free: the map is an immutable
/// `HashMap` behind an `ArcSwap`, keyed by a hash of the label values, read
/// with one atomic load. Adding a series (rare: a new version, a new status
/// code) copies the map under a mutex and swaps it in.
pub struct Family<M> {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    make: fn() -> M,
    series: ArcSwap<SeriesMap<M>>,
    /// Serialises writers; readers never take it.
    insert: Mutex<()>,
}

impl<M> std::fmt::Debug for Family<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Series by the hash of their label values; a collision shares the vector.
type SeriesMap<M> = HashMap<u64, Vec<(Vec<String>, Arc<M>)>>;

fn hash_values(values: &[&str]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    for v in values {
        h.write(v.as_bytes());
        h.write_u8(0xff);
    }
    h.finish()
}

impl<M> Family<M> {
    fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        make: fn() -> M,
    ) -> Self {
        Family {
            name,
            help,
            labels,
            make,
            series: ArcSwap::from_pointee(HashMap::new()),
            insert: Mutex::new(()),
        }
    }

    fn find(map: &SeriesMap<M>, hash: u64, values: &[&str]) -> Option<Arc<M>> {
        map.get(&hash)?
            .iter()
            .find(|(k, _)| k.len() == values.len() && k.iter().zip(values).all(|(a, b)| a == b))
            .map(|(_, m)| m.clone())
    }

    /// The series with these label values (in the family's label order),
    /// created on first use.
    pub fn get(&self, values: &[&str]) -> Arc<M> {
        debug_assert_eq!(
            values.len(),
            self.labels.len(),
            "{}: wrong number of label values",
            self.name
        );
        let hash = hash_values(values);
        if let Some(m) = Self::find(&self.series.load(), hash, values) {
            return m;
        }
        let _writer = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.series.load_full();
        if let Some(m) = Self::find(&current, hash, values) {
            return m;
        }
        let metric = Arc::new((self.make)());
        let mut next = HashMap::clone(&current);
        next.entry(hash).or_default().push((
            values.iter().map(|v| v.to_string()).collect(),
            metric.clone(),
        ));
        self.series.store(Arc::new(next));
        metric
    }

    /// Drops every series whose label `label` has the value `value` for
    /// each `(label, value)` given; returns how many went. Handles held
    /// elsewhere keep working but are no longer exported.
    pub fn remove_where(&self, matching: &[(&str, &str)]) -> usize {
        let positions: Option<Vec<(usize, &str)>> = matching
            .iter()
            .map(|(label, value)| {
                let at = self.labels.iter().position(|l| l == label)?;
                Some((at, *value))
            })
            .collect();
        let Some(positions) = positions else {
            return 0;
        };
        let matches = |values: &[String]| positions.iter().all(|(at, v)| values[*at] == *v);
        let _writer = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.series.load_full();
        let mut removed = 0;
        let mut next = SeriesMap::with_capacity(current.len());
        for (hash, series) in current.iter() {
            let kept: Vec<_> = series
                .iter()
                .filter(|(values, _)| {
                    let gone = matches(values);
                    removed += usize::from(gone);
                    !gone
                })
                .cloned()
                .collect();
            if !kept.is_empty() {
                next.insert(*hash, kept);
            }
        }
        if removed > 0 {
            self.series.store(Arc::new(next));
        }
        removed
    }

    /// Every series, sorted by label values (for a stable exposition).
    pub fn series(&self) -> Vec<(Vec<String>, Arc<M>)> {
        let mut all: Vec<_> = self
            .series
            .load()
            .values()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Gauges read at scrape time from whoever owns the state (the model
/// manager), so nothing on the request path maintains them.
#[derive(Debug, Clone, Default)]
pub struct LiveState {
    /// (model, version, requests waiting in its queue), for ready versions.
    pub queues: Vec<(String, String, usize)>,
    /// (model, ready versions), for every model in the repository.
    pub versions_loaded: Vec<(String, usize)>,
    /// (model, version, role, share of traffic in [0, 1]) for every version
    /// a traffic policy names: role `stable`, `canary` or `shadow`.
    pub traffic: Vec<(String, String, &'static str, f64)>,
}

type LiveSource = Box<dyn Fn() -> LiveState + Send + Sync>;
type DepthSource = Box<dyn Fn() -> usize + Send + Sync>;

/// How a captured record ended: the `outcome` label of
/// `sluice_capture_records_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureOutcome {
    /// The collector accepted the batch holding it.
    Sent,
    /// Not queued: the capture queue was full.
    Dropped,
    /// Queued, but its batch was refused or could not be delivered within
    /// the exporter's retries.
    Failed,
}

impl CaptureOutcome {
    pub const ALL: [CaptureOutcome; 3] = [
        CaptureOutcome::Sent,
        CaptureOutcome::Dropped,
        CaptureOutcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CaptureOutcome::Sent => "sent",
            CaptureOutcome::Dropped => "dropped",
            CaptureOutcome::Failed => "failed",
        }
    }
}

/// The state of a registry on object storage, as gauges.
#[derive(Debug, Default)]
pub struct RegistryGauges {
    /// 1 while the registry cannot be reached (the replica serves what it has).
    pub degraded: Gauge,
    /// The first 52 bits of the revision served, as an integer.
    pub revision: Gauge,
    /// Unix time of the last successful poll, in seconds.
    pub last_success_seconds: Gauge,
}

/// Every metric family of the process.
pub struct Metrics {
    pub requests: Family<Counter>,
    pub request_duration: Family<Histogram>,
    pub queue_duration: Family<Histogram>,
    pub compute_input: Family<Histogram>,
    pub compute_infer: Family<Histogram>,
    pub compute_output: Family<Histogram>,
    pub batch_size: Family<Histogram>,
    pub in_flight: Family<Gauge>,
    pub load_duration: Family<Histogram>,
    pub loads: Family<Counter>,
    pub spans_exported: Family<Counter>,
    pub http_duration: Family<Histogram>,
    pub shadow_requests: Family<Counter>,
    pub shadow_comparisons: Family<Counter>,
    pub shadow_abs_diff: Family<Histogram>,
    pub shadow_rel_diff: Family<Histogram>,
    pub shadow_latency_ratio: Family<Histogram>,
    pub rollout_decisions: Family<Counter>,
    pub capture_records: Family<Counter>,
    /// One POST of a batch of capture records, `outcome` = `success` or
    /// `failure`.
    pub capture_export_duration: Family<Histogram>,
    /// Polls of a registry on object storage, `outcome` = `success` or
    /// `failure`; no series with a registry on local disk.
    pub registry_syncs: Family<Counter>,
    /// Set once a registry on object storage is in use.
    registry: std::sync::OnceLock<RegistryGauges>,
    live: ArcSwapOption<LiveSource>,
    capture_depth: ArcSwapOption<DepthSource>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

const REQUEST_LABELS: &[&str] = &["model", "version", "protocol", "outcome"];
const VERSION_LABELS: &[&str] = &["model", "version"];
/// The OpenTelemetry HTTP semantic convention attributes, with `.` as `_`.
pub const HTTP_LABELS: &[&str] = &[
    "http_request_method",
    "http_route",
    "http_response_status_code",
    "url_scheme",
    "network_protocol_name",
    "network_protocol_version",
];

fn latency() -> Histogram {
    Histogram::new(&LATENCY_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            requests: Family::new(
                "sluice_requests_total",
                "Inference requests answered, by outcome.",
                REQUEST_LABELS,
                Counter::default,
            ),
            request_duration: Family::new(
                "sluice_request_duration_seconds",
                "From the request's arrival to its response being ready.",
                REQUEST_LABELS,
                || Histogram::with_exemplars(&LATENCY_BUCKETS),
            ),
            queue_duration: Family::new(
                "sluice_queue_duration_seconds",
                "Time a request waited in its version's queue for a session.",
                VERSION_LABELS,
                latency,
            ),
            compute_input: Family::new(
                "sluice_compute_input_duration_seconds",
                "Converting the request's tensors into ONNX Runtime values.",
                VERSION_LABELS,
                latency,
            ),
            compute_infer: Family::new(
                "sluice_compute_infer_duration_seconds",
                "ONNX Runtime's Session::run.",
                VERSION_LABELS,
                latency,
            ),
            compute_output: Family::new(
                "sluice_compute_output_duration_seconds",
                "Copying ONNX Runtime's outputs into the response's tensors.",
                VERSION_LABELS,
                latency,
            ),
            batch_size: Family::new(
                "sluice_batch_size",
                "Size of the first dimension of each execution's inputs.",
                VERSION_LABELS,
                || Histogram::new(&BATCH_BUCKETS),
            ),
            in_flight: Family::new(
                "sluice_requests_in_flight",
                "Requests routed to a version and not yet answered.",
                VERSION_LABELS,
                Gauge::default,
            ),
            load_duration: Family::new(
                "sluice_model_load_duration_seconds",
                "Loading a version: manifest check, sessions, warm-up and signature check.",
                &["model"],
                latency,
            ),
            loads: Family::new(
                "sluice_model_loads_total",
                "Version loads, by outcome.",
                &["model", "outcome"],
                Counter::default,
            ),
            spans_exported: Family::new(
                "sluice_trace_spans_exported_total",
                "Spans handed to the OTLP exporter, by outcome.",
                &["outcome"],
                Counter::default,
            ),
            http_duration: Family::new(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests (OpenTelemetry semantic conventions).",
                HTTP_LABELS,
                latency,
            ),
            shadow_requests: Family::new(
                "sluice_shadow_requests_total",
                "Copies of requests sent to a shadow version, by outcome.",
                &["model", "version", "outcome"],
                Counter::default,
            ),
            shadow_comparisons: Family::new(
                "sluice_shadow_comparisons_total",
                "Shadow answers compared with the primary's, by agreement.",
                &["model", "version", "agreement"],
                Counter::default,
            ),
            shadow_abs_diff: Family::new(
                "sluice_shadow_max_abs_difference",
                "Largest absolute difference between a shadow's float outputs and the primary's, per compared request.",
                VERSION_LABELS,
                || Histogram::new(&DIFF_BUCKETS),
            ),
            shadow_rel_diff: Family::new(
                "sluice_shadow_max_relative_difference",
                "Largest relative difference between a shadow's float outputs and the primary's, per compared request.",
                VERSION_LABELS,
                || Histogram::new(&DIFF_BUCKETS),
            ),
            shadow_latency_ratio: Family::new(
                "sluice_shadow_latency_ratio",
                "A shadow's inference time over the primary's, per compared request.",
                VERSION_LABELS,
                || Histogram::new(&LATENCY_RATIO_BUCKETS),
            ),
            rollout_decisions: Family::new(
                "sluice_rollout_decisions_total",
                "Decisions of the progressive rollout controller.",
                &["model", "decision"],
                Counter::default,
            ),
            capture_records: Family::new(
                "sluice_capture_records_total",
                "Captured inference records, by outcome.",
                &["model", "outcome"],
                Counter::default,
            ),
            capture_export_duration: Family::new(
                "sluice_capture_export_duration_seconds",
                "One POST of a batch of capture records to the collector, by outcome.",
                &["outcome"],
                latency,
            ),
            registry_syncs: Family::new(
                "sluice_registry_syncs_total",
                "Polls of the registry on object storage, by outcome.",
                &["outcome"],
                Counter::default,
            ),
            registry: std::sync::OnceLock::new(),
            live: ArcSwapOption::empty(),
            capture_depth: ArcSwapOption::empty(),
        }
        .with_capture_export_series()
    }

    /// Both outcomes of the export histogram exist from the start, at zero,
    /// so that dashboards see zeros rather than gaps.
    fn with_capture_export_series(self) -> Metrics {
        for outcome in ["success", "failure"] {
            self.capture_export_duration.get(&[outcome]);
        }
        self
    }

    /// The gauges of a registry on object storage, created (and from then
    /// on exposed) on first use.
    pub fn registry_gauges(&self) -> &RegistryGauges {
        self.registry.get_or_init(RegistryGauges::default)
    }

    /// The registry gauges if a registry on object storage is in use.
    pub fn registry_gauges_if_used(&self) -> Option<&RegistryGauges> {
        self.registry.get()
    }

    /// Drops the series of a version that is gone (unloaded and drained),
    /// so that a repository that publishes a version an hour does not
    /// accumulate dead series, in memory and in every scrape.
    pub fn remove_version(&self, model: &str, version: u64) -> usize {
        let v = version.to_string();
        let labels = [("model", model), ("version", v.as_str())];
        self.requests.remove_where(&labels)
            + self.request_duration.remove_where(&labels)
            + self.queue_duration.remove_where(&labels)
            + self.compute_input.remove_where(&labels)
            + self.compute_infer.remove_where(&labels)
            + self.compute_output.remove_where(&labels)
            + self.batch_size.remove_where(&labels)
            + self.in_flight.remove_where(&labels)
            + self.shadow_requests.remove_where(&labels)
            + self.shadow_comparisons.remove_where(&labels)
            + self.shadow_abs_diff.remove_where(&labels)
            + self.shadow_rel_diff.remove_where(&labels)
            + self.shadow_latency_ratio.remove_where(&labels)
    }

    /// Sets where the scrape-time gauges come from (the model manager).
    pub fn set_live_source(&self, source: impl Fn() -> LiveState + Send + Sync + 'static) {
        self.live.store(Some(Arc::new(Box::new(source))));
    }

    pub fn live_state(&self) -> LiveState {
        match self.live.load_full() {
            Some(f) => f(),
            None => LiveState::default(),
        }
    }

    /// Sets where `sluice_capture_queue_depth` is read from at scrape time
    /// (the capture queue).
    pub fn set_capture_depth_source(&self, source: impl Fn() -> usize + Send + Sync + 'static) {
        self.capture_depth.store(Some(Arc::new(Box::new(source))));
    }

    /// Capture records waiting for export now; 0 without capture.
    pub fn capture_queue_depth(&self) -> usize {
        match self.capture_depth.load_full() {
            Some(f) => f(),
            None => 0,
        }
    }
}

/// The capture counters of one model (`sluice_capture_records_total`),
/// resolved off the request path: with a version's handles when it loads,
/// so that every model has them, at zero, and a captured record carries its
/// model's handles to the exporter.
#[derive(Debug)]
pub struct CaptureCounters {
    sent: Arc<Counter>,
    dropped: Arc<Counter>,
    failed: Arc<Counter>,
}

impl CaptureCounters {
    pub fn new(metrics: &Metrics, model: &str) -> CaptureCounters {
        let get = |o: CaptureOutcome| metrics.capture_records.get(&[model, o.as_str()]);
        CaptureCounters {
            sent: get(CaptureOutcome::Sent),
            dropped: get(CaptureOutcome::Dropped),
            failed: get(CaptureOutcome::Failed),
        }
    }

    pub fn record(&self, outcome: CaptureOutcome, n: u64) {
        match outcome {
            CaptureOutcome::Sent => self.sent.inc_by(n),
            CaptureOutcome::Dropped => self.dropped.inc_by(n),
            CaptureOutcome::Failed => self.failed.inc_by(n),
        }
    }

    pub fn get(&self, outcome: CaptureOutcome) -> u64 {
        match outcome {
            CaptureOutcome::Sent => self.sent.get(),
            CaptureOutcome::Dropped => self.dropped.get(),
            CaptureOutcome::Failed => self.failed.get(),
        }
    }
}

/// The handles of one model version, resolved once when it loads, so that
/// recording a request takes no lookup, lock or allocation.
#[derive(Debug, Clone)]
pub struct VersionMetrics {
    pub queue_duration: Arc<Histogram>,
    pub compute_input: Arc<Histogram>,
    pub compute_infer: Arc<Histogram>,
    pub compute_output: Arc<Histogram>,
    pub batch_size: Arc<Histogram>,
    pub in_flight: Arc<Gauge>,
    /// The model's capture counters (no version label: shared by its
    /// versions).
    pub capture: Arc<CaptureCounters>,
    requests: Vec<Arc<Counter>>,
    durations: Vec<Arc<Histogram>>,
}

impl VersionMetrics {
    /// Resolves the handles of `model` version `version`, for every
    /// protocol (a version answers HTTP and gRPC alike).
    pub fn new(metrics: &Metrics, model: &str, version: u64) -> VersionMetrics {
        let v = version.to_string();
        let labels = [model, v.as_str()];
        // Indexed by protocol, then outcome (see `slot`).
        fn per_outcome<M>(family: &Family<M>, model: &str, version: &str) -> Vec<Arc<M>> {
            Protocol::ALL
                .iter()
                .flat_map(|p| {
                    Outcome::ALL
                        .iter()
                        .map(move |o| family.get(&[model, version, p.as_str(), o.as_str()]))
                })
                .collect()
        }
        VersionMetrics {
            queue_duration: metrics.queue_duration.get(&labels),
            compute_input: metrics.compute_input.get(&labels),
            compute_infer: metrics.compute_infer.get(&labels),
            compute_output: metrics.compute_output.get(&labels),
            batch_size: metrics.batch_size.get(&labels),
            in_flight: metrics.in_flight.get(&labels),
            capture: Arc::new(CaptureCounters::new(metrics, model)),
            requests: per_outcome(&metrics.requests, model, &v),
            durations: per_outcome(&metrics.request_duration, model, &v),
        }
    }

    fn slot(protocol: Protocol, outcome: Outcome) -> usize {
        protocol.index() * Outcome::ALL.len() + outcome.index()
    }

    /// Counts one request answered over `protocol` and its duration;
    /// `trace_id` (of a sampled trace) becomes the duration's exemplar.
    pub fn record_request(
        &self,
        protocol: Protocol,
        outcome: Outcome,
        seconds: f64,
        trace_id: Option<String>,
    ) {
        let slot = Self::slot(protocol, outcome);
        self.requests[slot].inc();
        self.durations[slot].observe_with_exemplar(seconds, trace_id);
    }
}

/// What a version answered so far, for the rollout controller's windows
/// (it subtracts one reading from the next).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestTotals {
    pub requests: u64,
    /// Requests that failed on the server's side: runtime errors, timeouts,
    /// overload and not ready. Client errors (400, 404, 413) are not the
    /// version's fault and do not count.
    pub errors: u64,
    /// Upper bounds of the latency buckets.
    pub latency_bounds: &'static [f64],
    /// Latencies of successful requests, per bucket (not cumulative; the
    /// last is +Inf).
    pub latency_buckets: Vec<u64>,
}

impl VersionMetrics {
    /// The counts so far of this version's answered requests.
    pub fn totals(&self) -> RequestTotals {
        let mut requests = 0;
        let mut errors = 0;
        for (protocol, outcome) in Protocol::ALL
            .iter()
            .flat_map(|&p| Outcome::ALL.iter().map(move |&o| (p, o)))
        {
            let n = self.requests[Self::slot(protocol, outcome)].get();
            requests += n;
            if matches!(
                outcome,
                Outcome::Runtime | Outcome::Timeout | Outcome::Overloaded | Outcome::NotReady
            ) {
                errors += n;
            }
        }
        // Both protocols' successes, bucket by bucket.
        let mut latency_bounds: &'static [f64] = &[];
        let mut latency_buckets: Vec<u64> = Vec::new();
        for protocol in Protocol::ALL {
            let (bounds, buckets) =
                self.durations[Self::slot(protocol, Outcome::Success)].bucket_counts();
            latency_bounds = bounds;
            if latency_buckets.is_empty() {
                latency_buckets = buckets;
            } else {
                for (sum, n) in latency_buckets.iter_mut().zip(buckets) {
                    *sum += n;
                }
            }
        }
        RequestTotals {
            requests,
            errors,
            latency_bounds,
            latency_buckets,
        }
    }
}

/// The handles of one shadow version's comparison metrics. Resolved off the
/// request path (in the task that runs the shadow copy).
#[derive(Debug, Clone)]
pub struct ShadowMetrics {
    compared: Arc<Counter>,
    failed: Arc<Counter>,
    dropped: Arc<Counter>,
    agree: Arc<Counter>,
    disagree: Arc<Counter>,
    pub abs_diff: Arc<Histogram>,
    pub rel_diff: Arc<Histogram>,
    pub latency_ratio: Arc<Histogram>,
}

/// How a copy of a request sent to a shadow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowOutcome {
    /// It ran and its outputs were compared with the primary's.
    Compared { agree: bool },
    /// The shadow version failed it.
    Failed,
    /// Not run: the shadow's queue was full, or the version was gone.
    Dropped,
}

impl ShadowMetrics {
    pub fn new(metrics: &Metrics, model: &str, version: u64) -> ShadowMetrics {
        let v = version.to_string();
        let labels = [model, v.as_str()];
        let outcome = |o: &str| metrics.shadow_requests.get(&[model, &v, o]);
        let agreement = |a: &str| metrics.shadow_comparisons.get(&[model, &v, a]);
        ShadowMetrics {
            compared: outcome("compared"),
            failed: outcome("failed"),
            dropped: outcome("dropped"),
            agree: agreement("agree"),
            disagree: agreement("disagree"),
            abs_diff: metrics.shadow_abs_diff.get(&labels),
            rel_diff: metrics.shadow_rel_diff.get(&labels),
            latency_ratio: metrics.shadow_latency_ratio.get(&labels),
        }
    }

    pub fn record(&self, outcome: ShadowOutcome) {
        match outcome {
            ShadowOutcome::Compared { agree } => {
                self.compared.inc();
                if agree {
                    self.agree.inc();
                } else {
                    self.disagree.inc();
                }
            }
            ShadowOutcome::Failed => self.failed.inc(),
            ShadowOutcome::Dropped => self.dropped.inc(),
        }
    }

    /// (agreeing, compared) so far: the rollout controller's agreement gate.
    pub fn agreement(&self) -> (u64, u64) {
        (self.agree.get(), self.agree.get() + self.disagree.get())
    }
}

/// Records a request that failed before any version was chosen (unknown
/// model, model not ready, ...). Rare, so labels are looked up here.
pub fn record_unrouted(
    metrics: &Metrics,
    model: &str,
    protocol: Protocol,
    outcome: Outcome,
    seconds: f64,
) {
    let labels = [model, "", protocol.as_str(), outcome.as_str()];
    metrics.requests.get(&labels).inc();
    metrics.request_duration.get(&labels).observe(seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_handles_share_the_family_series() {
        let m = Metrics::new();
        let v = VersionMetrics::new(&m, "iris", 2);
        v.record_request(Protocol::Http, Outcome::Success, 0.001, None);
        v.record_request(Protocol::Http, Outcome::Timeout, 0.5, None);
        assert_eq!(m.requests.get(&["iris", "2", "http", "success"]).get(), 1);
        assert_eq!(m.requests.get(&["iris", "2", "http", "timeout"]).get(), 1);
        v.record_request(Protocol::Grpc, Outcome::Success, 0.001, None);
        assert_eq!(m.requests.get(&["iris", "2", "grpc", "success"]).get(), 1);
        assert_eq!(m.requests.get(&["iris", "2", "http", "success"]).get(), 1);
        // The rollout controller's totals count both protocols.
        assert_eq!(v.totals().requests, 3);
        assert_eq!(v.totals().latency_buckets.iter().sum::<u64>(), 2);
        assert_eq!(
            m.request_duration
                .get(&["iris", "2", "http", "success"])
                .count(),
            1
        );
        // Resolving again gives the same series.
        let again = VersionMetrics::new(&m, "iris", 2);
        again.queue_duration.observe(1e-5);
        assert_eq!(v.queue_duration.count(), 1);
    }

    #[test]
    fn removing_a_version_drops_its_series_and_only_its() {
        let m = Metrics::new();
        let v2 = VersionMetrics::new(&m, "iris", 2);
        let v3 = VersionMetrics::new(&m, "iris", 3);
        let other = VersionMetrics::new(&m, "mlp", 2);
        for v in [&v2, &v3, &other] {
            v.record_request(Protocol::Http, Outcome::Success, 0.001, None);
        }
        let per_version = m.requests.series().len() / 3;
        assert_eq!(per_version, Protocol::ALL.len() * Outcome::ALL.len());
        // Outcomes x protocols x 2 request families + 6 per-version families.
        assert_eq!(
            m.remove_version("iris", 2),
            2 * Protocol::ALL.len() * Outcome::ALL.len() + 6
        );
        assert_eq!(m.remove_version("iris", 2), 0);
        let left: Vec<(String, String)> = m
            .requests
            .series()
            .into_iter()
            .map(|(k, _)| (k[0].clone(), k[1].clone()))
            .collect();
        assert!(!left.contains(&("iris".to_string(), "2".to_string())));
        assert!(left.contains(&("iris".to_string(), "3".to_string())));
        assert!(left.contains(&("mlp".to_string(), "2".to_string())));
        // A family without those labels is untouched.
        m.loads.get(&["iris", "success"]).inc();
        m.remove_version("iris", 3);
        assert_eq!(m.loads.series().len(), 1);
    }
}
