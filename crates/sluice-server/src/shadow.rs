//! Shadow traffic: after the primary has answered, a sampled copy of the
//! request runs on each shadow version, and its outputs are compared with the
//! primary's.
//!
//! Isolation from the primary, by construction:
//! - the copy is decided before the primary runs but sent only after it
//!   answered, from a task of its own; the response does not wait for it;
//! - it runs on the shadow version's own executor (its sessions and worker
//!   threads: a separate compute budget), always through its queue, never
//!   inline on the async threads ([`ModelExecutor::infer_background`]);
//! - at most `shadow_queue` copies per shadow version are in flight; one
//!   more, or a full executor queue, is dropped and counted, never waited for;
//! - each shadow version has a compute budget, `shadow_cpu` cores (a token
//!   bucket charged with each copy's time): a copy that finds it spent is
//!   dropped and counted, so a slow shadow cannot take the primary's cores,
//!   on a machine where they are shared.
//!
//! Comparison results go to the `sluice_shadow_*` metrics and, for the most
//! different pairs, to a bounded sample per shadow version
//! (`GET /admin/models/{m}/shadow/{v}/diffs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_rollout::compare::{self, Agreement, Tolerance};
use sluice_rollout::diffs::{self, DiffSample, DiffStore};
use sluice_runtime::{InferError, ModelExecutor};
use sluice_telemetry::{Metrics, ShadowMetrics, ShadowOutcome};
use sluice_tensor::Tensor;

/// Elements of each tensor kept in a diff sample.
const PREVIEW_ELEMENTS: usize = 32;

/// What one shadow version has accumulated.
pub struct ShadowState {
    pub diffs: DiffStore,
    metrics: Option<ShadowMetrics>,
    in_flight: AtomicUsize,
    budget: Mutex<Budget>,
}

/// A token bucket of compute time: it fills at `cores` seconds per second,
/// up to one second's worth, and each copy is charged the time it took.
struct Budget {
    /// Seconds of compute available now (negative after an expensive copy:
    /// the next ones wait until it is paid back).
    available: f64,
    refilled: Instant,
}

impl Budget {
    /// Whether a copy may run now, with `cores` the budget's rate.
    fn admit(&mut self, cores: f64) -> bool {
        if cores.is_infinite() {
            return true;
        }
        let now = Instant::now();
        let capacity = cores.max(0.001);
        self.available = (self.available + now.duration_since(self.refilled).as_secs_f64() * cores)
            .min(capacity);
        self.refilled = now;
        self.available > 0.0
    }

    fn charge(&mut self, spent: Duration) {
        self.available -= spent.as_secs_f64();
    }
}

impl ShadowState {
    /// (agreeing, compared) comparisons so far, when metrics are on.
    pub fn agreement(&self) -> Option<(u64, u64)> {
        self.metrics.as_ref().map(ShadowMetrics::agreement)
    }
}

/// Every shadow version's state, by (model, version). Looked up only from
/// shadow tasks and admin requests, never on a primary request's path.
pub struct ShadowBook {
    states: Mutex<HashMap<(String, u64), Arc<ShadowState>>>,
    metrics: Option<Arc<Metrics>>,
    /// Copies in flight per shadow version before more are dropped.
    capacity: usize,
    /// Pairs kept per shadow version.
    keep: usize,
    /// Cores of compute each shadow version may use, on average.
    cores: f64,
}

impl ShadowBook {
    pub fn new(
        metrics: Option<Arc<Metrics>>,
        capacity: usize,
        keep: usize,
        cores: f64,
    ) -> ShadowBook {
        ShadowBook {
            states: Mutex::new(HashMap::new()),
            metrics,
            capacity: capacity.max(1),
            keep: keep.max(1),
            cores: if cores.is_finite() && cores > 0.0 {
                cores
            } else {
                f64::INFINITY
            },
        }
    }

    /// The state of a shadow version, made on first use.
    pub fn state(&self, model: &str, version: u64) -> Arc<ShadowState> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states
            .entry((model.to_string(), version))
            .or_insert_with(|| {
                Arc::new(ShadowState {
                    diffs: DiffStore::new(self.keep),
                    metrics: self
                        .metrics
                        .as_ref()
                        .map(|m| ShadowMetrics::new(m, model, version)),
                    in_flight: AtomicUsize::new(0),
                    budget: Mutex::new(Budget {
                        available: self.cores.clamp(0.0, 1.0),
                        refilled: Instant::now(),
                    }),
                })
            })
            .clone()
    }

    /// The state of a shadow version if it ever received a copy.
    pub fn existing(&self, model: &str, version: u64) -> Option<Arc<ShadowState>> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.get(&(model.to_string(), version)).cloned()
    }
}

/// The primary's side of one shadowed request.
pub struct Primary {
    pub version: u64,
    pub inputs: Vec<(String, Tensor)>,
    pub requested: Vec<String>,
    pub outputs: Vec<(String, Tensor)>,
    pub latency: Duration,
    pub request_id: String,
    pub trace_id: Option<String>,
}

/// Sends a copy of the primary's request to each shadow, each in a task of
/// its own; returns at once.
pub fn dispatch(
    book: &Arc<ShadowBook>,
    shadows: Vec<(Arc<ModelExecutor>, Agreement)>,
    primary: Primary,
) {
    let primary = Arc::new(primary);
    for (shadow, rule) in shadows {
        let book = book.clone();
        let primary = primary.clone();
        tokio::spawn(async move { run(&book, &shadow, rule, &primary).await });
    }
}

async fn run(book: &ShadowBook, shadow: &ModelExecutor, rule: Agreement, primary: &Primary) {
    let state = book.state(shadow.model(), shadow.version());
    let record = |outcome| {
        if let Some(m) = &state.metrics {
            m.record(outcome);
        }
    };
    let budget = || state.budget.lock().unwrap_or_else(|e| e.into_inner());
    if !budget().admit(book.cores) {
        record(ShadowOutcome::Dropped);
        return;
    }
    if state.in_flight.fetch_add(1, Ordering::Relaxed) >= book.capacity {
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
        record(ShadowOutcome::Dropped);
        return;
    }
    let started = Instant::now();
    let result = shadow
        .infer_background(primary.inputs.clone(), primary.requested.clone())
        .await;
    let latency = started.elapsed();
    state.in_flight.fetch_sub(1, Ordering::Relaxed);
    // Charged with the session's time; a failed copy (no timing comes back)
    // with its whole time, waiting included: more than it used, so the
    // budget errs on the primary's side.
    budget().charge(match &result {
        Ok(output) => output.compute,
        Err(_) => latency,
    });
    let output = match result {
        Ok(output) => output,
        Err(InferError::QueueFull { .. } | InferError::Stopped { .. }) => {
            record(ShadowOutcome::Dropped);
            return;
        }
        Err(e) => {
            tracing::debug!(model = shadow.model(), version = shadow.version(), error = %e, "shadow copy failed");
            record(ShadowOutcome::Failed);
            return;
        }
    };
    let comparison = compare::compare_by(
        &primary.outputs,
        &output.outputs,
        Tolerance::default(),
        rule,
    );
    record(ShadowOutcome::Compared {
        agree: comparison.agree,
    });
    // Both at least a microsecond: a ratio of clock readings near zero says
    // nothing.
    let latency_ratio = latency.as_secs_f64().max(1e-6) / primary.latency.as_secs_f64().max(1e-6);
    if let Some(m) = &state.metrics {
        m.abs_diff.observe(comparison.max_abs());
        m.rel_diff.observe(comparison.max_rel());
        m.latency_ratio.observe(latency_ratio);
    }
    let score = comparison.score();
    if !state.diffs.would_keep(score) {
        return;
    }
    let preview = |tensors: &[(String, Tensor)]| {
        tensors
            .iter()
            .map(|(name, t)| diffs::tensor_preview(name, t, PREVIEW_ELEMENTS))
            .collect()
    };
    state.diffs.offer(DiffSample {
        time: sluice_rollout::audit::format_time(std::time::SystemTime::now()),
        request_id: primary.request_id.clone(),
        trace_id: primary.trace_id.clone(),
        score,
        agree: comparison.agree,
        primary_version: primary.version,
        shadow_version: shadow.version(),
        primary_latency_us: primary.latency.as_micros() as u64,
        shadow_latency_us: latency.as_micros() as u64,
        outputs: comparison.outputs.iter().map(diffs::output_json).collect(),
        inputs: preview(&primary.inputs),
        primary_outputs: preview(&primary.outputs),
        shadow_outputs: preview(&output.outputs),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_admits_its_rate_of_compute_and_no_more() {
        let mut b = Budget {
            available: 0.25,
            refilled: Instant::now(),
        };
        // 0.25 cores: a 300 ms copy overdraws it...
        assert!(b.admit(0.25));
        b.charge(Duration::from_millis(300));
        assert!(!b.admit(0.25), "overdrawn: the next copy waits");
        // ...until 200 ms pay back the 50 ms of debt (at a quarter core).
        std::thread::sleep(Duration::from_millis(250));
        assert!(b.admit(0.25));
        // Never more than one second's worth in hand.
        b.refilled = Instant::now() - Duration::from_secs(100);
        assert!(b.admit(0.25));
        assert!(b.available <= 0.25 + 1e-9, "{}", b.available);
        // No budget: always admitted, whatever was spent.
        b.charge(Duration::from_secs(1000));
        assert!(b.admit(f64::INFINITY));
    }
}
