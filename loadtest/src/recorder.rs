//! What one worker saw: a latency histogram and counts of each outcome.
//!
//! Each worker owns one [`Recorder`] behind its own mutex. The worker is the
//! only writer, so the lock is uncontended (tens of nanoseconds) except once
//! a second, when the progress line merges all of them. At the end the
//! recorders are merged into one, which is what the report describes.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest latency the histograms hold: an hour, in µs. Longer ones are
/// clamped to it (and a run that sees them has bigger problems).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// HTTP 200 (or, in-process, a successful run).
    Ok,
    /// Any other HTTP status.
    Status(u16),
    /// No response: connection refused or reset, a malformed response, or an
    /// in-process error.
    Transport,
    /// No response within the request timeout.
    Timeout,
}

/// A worker's tally. Only successful requests go into the histogram: an
/// instant 503 is not a fast answer.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    /// Non-200 responses by status code.
    pub status: BTreeMap<u16, u64>,
    pub transport: u64,
    pub timeouts: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            // 3 significant digits: 0.1% resolution at every magnitude.
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant histogram bounds are valid"),
            ok: 0,
            status: BTreeMap::new(),
            transport: 0,
            timeouts: 0,
        }
    }
}

impl Recorder {
    pub fn record(&mut self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Ok => {
                self.ok += 1;
                // Sub-microsecond calls (possible in-process) count as 1 µs,
                // the histogram's lowest value.
                let us = (latency.as_nanos() as u64 / 1000).max(1);
                self.latency_us.saturating_record(us);
            }
            Outcome::Status(code) => *self.status.entry(code).or_default() += 1,
            Outcome::Transport => self.transport += 1,
            Outcome::Timeout => self.timeouts += 1,
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.ok += other.ok;
        for (code, n) in &other.status {
            *self.status.entry(*code).or_default() += n;
        }
        self.transport += other.transport;
        self.timeouts += other.timeouts;
    }

    /// Requests that failed in any way.
    pub fn errors(&self) -> u64 {
        self.status.values().sum::<u64>() + self.transport + self.timeouts
    }

    /// Requests that completed, successfully or not.
    pub fn completed(&self) -> u64 {
        self.ok + self.errors()
    }

    /// The latency percentiles, or `None` when nothing succeeded.
    pub fn summary(&self) -> Option<LatencySummary> {
        let h = &self.latency_us;
        (!h.is_empty()).then(|| LatencySummary {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        })
    }
}

/// Latency percentiles in microseconds. Each is the histogram's value at
/// that quantile, accurate to 3 significant digits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
    pub mean: f64,
}

/// Formats µs for humans: `850µs`, `2.41ms`, `1.20s`.
pub fn human_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_and_only_successes_timed() {
        let mut r = Recorder::default();
        for ms in 1..=100 {
            r.record(Outcome::Ok, Duration::from_millis(ms));
        }
        r.record(Outcome::Status(503), Duration::from_secs(100));
        r.record(Outcome::Status(503), Duration::ZERO);
        r.record(Outcome::Status(400), Duration::ZERO);
        r.record(Outcome::Transport, Duration::ZERO);
        r.record(Outcome::Timeout, Duration::ZERO);
        assert_eq!(r.ok, 100);
        assert_eq!(r.errors(), 5);
        assert_eq!(r.completed(), 105);
        assert_eq!(r.status[&503], 2);
        let s = r.summary().unwrap();
        // 3 significant digits: 50 ms is recorded as 50000 µs, within 0.1%.
        assert!((49_950..=50_050).contains(&s.p50), "{s:?}");
        assert!((98_900..=99_100).contains(&s.p99), "{s:?}");
        assert!((99_900..=100_100).contains(&s.max), "{s:?}");
    }

    #[test]
    fn merging_adds_everything() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        a.record(Outcome::Ok, Duration::from_micros(100));
        b.record(Outcome::Ok, Duration::from_micros(300));
        b.record(Outcome::Status(429), Duration::ZERO);
        a.merge(&b);
        assert_eq!(a.ok, 2);
        assert_eq!(a.status[&429], 1);
        assert_eq!(a.latency_us.len(), 2);
        assert_eq!(a.summary().unwrap().mean, 200.0);
    }

    #[test]
    fn no_successes_means_no_percentiles() {
        let mut r = Recorder::default();
        r.record(Outcome::Transport, Duration::ZERO);
        assert!(r.summary().is_none());
    }

    #[test]
    fn tiny_and_huge_latencies_are_clamped_not_lost() {
        let mut r = Recorder::default();
        r.record(Outcome::Ok, Duration::from_nanos(10));
        r.record(Outcome::Ok, Duration::from_secs(10_000));
        assert_eq!(r.latency_us.len(), 2);
        assert_eq!(r.latency_us.min(), 1);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_us(850), "850µs");
        assert_eq!(human_us(2_410), "2.41ms");
        assert_eq!(human_us(1_200_000), "1.20s");
    }
}
