//! Per-version counters in the shape of Triton's statistics extension.
//!
//! Plain relaxed atomics: each is updated once per request by whichever thread
//! finishes that step, and readers only need eventually-consistent totals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration as StdDuration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Default)]
struct Counter {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Counter {
    fn add(&self, elapsed: StdDuration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(
            elapsed.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    fn snapshot(&self) -> Duration {
        Duration {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

/// A count and the cumulative nanoseconds spent, as Triton reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Duration {
    pub count: u64,
    pub ns: u64,
}

/// Counters for one model version. `success`/`fail` cover the whole request
/// from arrival at the executor to the answer; the others are its parts.
#[derive(Debug, Default)]
pub struct VersionStats {
    success: Counter,
    fail: Counter,
    queue: Counter,
    compute_input: Counter,
    compute_infer: Counter,
    compute_output: Counter,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    last_inference_ms: AtomicU64,
}

/// A point-in-time copy of [`VersionStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub success: Duration,
    pub fail: Duration,
    pub queue: Duration,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
    pub inference_count: u64,
    pub execution_count: u64,
    /// Milliseconds since the Unix epoch of the last inference, 0 if none.
    pub last_inference: u64,
}

impl VersionStats {
    /// A request answered successfully, `total` after it reached the version.
    pub fn record_success(&self, total: StdDuration) {
        self.success.add(total);
    }

    /// One `Session::run` over `rows` rows (one request, or a dynamic batch
    /// of several: Triton's inference and execution counts).
    pub fn record_execution(&self, rows: u64) {
        self.inference_count.fetch_add(rows, Ordering::Relaxed);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last_inference_ms.store(now, Ordering::Relaxed);
    }

    /// A request that reached this version and failed (validation, timeout,
    /// runtime error).
    pub fn record_failure(&self, total: StdDuration) {
        self.fail.add(total);
    }

    pub(crate) fn record_phases(
        &self,
        queue: StdDuration,
        input: StdDuration,
        infer: StdDuration,
        output: StdDuration,
    ) {
        self.queue.add(queue);
        self.compute_input.add(input);
        self.compute_infer.add(infer);
        self.compute_output.add(output);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            success: self.success.snapshot(),
            fail: self.fail.snapshot(),
            queue: self.queue.snapshot(),
            compute_input: self.compute_input.snapshot(),
            compute_infer: self.compute_infer.snapshot(),
            compute_output: self.compute_output.snapshot(),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            last_inference: self.last_inference_ms.load(Ordering::Relaxed),
        }
    }
}
