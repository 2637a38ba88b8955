//! Lock-free metric primitives.
//!
//! Recording is a few relaxed atomic operations and never takes a lock: the
//! hot path holds `Arc` handles resolved once per model version (see
//! [`crate::VersionMetrics`]), so no label lookup or allocation happens per
//! request. Reads (a scrape) see each atomic's latest value; a histogram's
//! count, sum and buckets may be a few observations apart, which Prometheus
//! tolerates.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Latency buckets: powers of two from 8 µs to about 33.5 s, so
/// sub-millisecond inference times are resolved (see the instrumentation spec).
pub const LATENCY_BUCKETS: [f64; 23] = {
    let mut b = [0.0; 23];
    let mut i = 0;
    let mut v = 8e-6;
    while i < 23 {
        b[i] = v;
        v *= 2.0;
        i += 1;
    }
    b
};

/// Differences between a shadow's outputs and the primary's (absolute or
/// relative): exact, then each decade from 1e-9 to 10.
pub const DIFF_BUCKETS: [f64; 12] = [
    0.0, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0,
];

/// A shadow's inference time over the primary's: fine around 1, then
/// coarser out to a hundred times either way. (A ratio, not a difference:
/// OpenMetrics histograms cannot have negative buckets and a sum.)
pub const LATENCY_RATIO_BUCKETS: [f64; 15] = [
    0.01, 0.1, 0.25, 0.5, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 10.0, 25.0, 100.0,
];

/// Batch-size buckets: 1, 2, 4, ... 4096.
pub const BATCH_BUCKETS: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// A sampled observation linked to a trace, shown in OpenMetrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    pub value: f64,
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
}

/// A histogram with fixed upper bounds. Buckets are stored non-cumulative and
/// summed when encoded.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus the overflow (+Inf) bucket.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum, as f64 bits, updated with a compare-and-swap loop.
    sum: AtomicU64,
    /// The latest exemplar per bucket; `None` for histograms without them.
    exemplars: Option<Box<[ArcSwapOption<Exemplar>]>>,
}

/// What an encoder reads from a histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, cumulative count), ending with (+Inf, count).
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
    /// Per bucket, the latest exemplar, if any (same length as `buckets`).
    pub exemplars: Vec<Option<Arc<Exemplar>>>,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
            exemplars: None,
        }
    }

    /// A histogram that also keeps one exemplar per bucket.
    pub fn with_exemplars(bounds: &'static [f64]) -> Histogram {
        Histogram {
            exemplars: Some((0..=bounds.len()).map(|_| ArcSwapOption::empty()).collect()),
            ..Histogram::new(bounds)
        }
    }

    fn bucket_of(&self, v: f64) -> usize {
        // Bounds are few and sorted; a linear scan from the low end is as fast
        // as a binary search for the small values that dominate.
        self.bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len())
    }

    pub fn observe(&self, v: f64) -> usize {
        let i = self.bucket_of(v);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut current = self.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + v).to_bits();
            match self.sum.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return i,
                Err(actual) => current = actual,
            }
        }
    }

    /// Observes `v` and, for histograms with exemplars, records it as its
    /// bucket's exemplar with this trace id.
    pub fn observe_with_exemplar(&self, v: f64, trace_id: Option<String>) {
        let i = self.observe(v);
        if let (Some(exemplars), Some(trace_id)) = (&self.exemplars, trace_id) {
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            exemplars[i].store(Some(Arc::new(Exemplar {
                trace_id,
                value: v,
                timestamp,
            })));
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The upper bounds and the per-bucket (not cumulative) counts, the last
    /// being the +Inf bucket: what a window's quantile is computed from, by
    /// subtracting the counts at its start from those at its end.
    pub fn bucket_counts(&self) -> (&'static [f64], Vec<u64>) {
        (
            self.bounds,
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        )
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative));
        }
        let exemplars = match &self.exemplars {
            Some(e) => e.iter().map(|x| x.load_full()).collect(),
            None => vec![None; buckets.len()],
        };
        HistogramSnapshot {
            count: cumulative,
            buckets,
            sum: f64::from_bits(self.sum.load(Ordering::Relaxed)),
            exemplars,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_resolve_microseconds() {
        assert_eq!(LATENCY_BUCKETS[0], 8e-6);
        const { assert!(LATENCY_BUCKETS[22] > 30.0) };
        assert!(LATENCY_BUCKETS.windows(2).all(|w| w[1] == 2.0 * w[0]));
        // At least six buckets below one millisecond.
        assert!(LATENCY_BUCKETS.iter().filter(|&&b| b < 1e-3).count() >= 6);
    }

    #[test]
    fn histogram_counts_cumulatively() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0, f64::NAN] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 2), (2.0, 3), (f64::INFINITY, 5)]);
        assert_eq!(s.count, 5);
        assert!(s.sum.is_nan());
        let h = Histogram::new(&[1.0]);
        h.observe(0.25);
        h.observe(0.5);
        assert_eq!(h.snapshot().sum, 0.75);
    }

    #[test]
    fn exemplars_are_kept_per_bucket() {
        let h = Histogram::with_exemplars(&[1.0, 2.0]);
        h.observe_with_exemplar(0.5, Some("a".repeat(32)));
        h.observe_with_exemplar(0.7, None);
        h.observe_with_exemplar(1.5, Some("b".repeat(32)));
        let s = h.snapshot();
        assert_eq!(s.exemplars[0].as_ref().unwrap().trace_id, "a".repeat(32));
        assert_eq!(s.exemplars[1].as_ref().unwrap().value, 1.5);
        assert!(s.exemplars[2].is_none());
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let h = Arc::new(Histogram::new(&LATENCY_BUCKETS));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        h.observe(1e-4);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = h.snapshot();
        assert_eq!(s.count, 40_000);
        assert!((s.sum - 4.0).abs() < 1e-6, "{}", s.sum);
    }
}
