//! The open-loop arrival schedule, as plain arithmetic on offsets from the
//! start of a run (no clock here, so it is tested exactly).
//!
//! Request `i` is *intended* to be sent at `i / rate` seconds. The generator
//! does not sleep once per request (tokio's timer has millisecond
//! granularity, and a late wake-up would shift every later request): it
//! wakes up, asks [`Schedule::due`] how many requests should have been sent
//! by now, and issues all of them, each stamped with its own intended time.
//! Latency is then measured from that intended time, not from when the
//! request actually left. That is the correction for coordinated omission:
//! when the server (or the generator itself) stalls, the requests that
//! should have gone out meanwhile are charged for the wait, as real users
//! arriving at a fixed rate would be, instead of silently not existing.

use std::time::Duration;

/// Arrival times at a fixed rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Requests per second; finite and positive.
    rate: f64,
}

impl Schedule {
    /// `rate` requests per second. Refuses rates that are not a finite
    /// positive number.
    pub fn new(rate: f64) -> anyhow::Result<Schedule> {
        if !(rate.is_finite() && rate > 0.0) {
            anyhow::bail!("the rate must be a positive number of requests per second, not {rate}");
        }
        Ok(Schedule { rate })
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// When request `i` is intended to be sent, from the start of the run.
    /// Computed from `i` directly (never by adding intervals), so rounding
    /// does not accumulate over a long run.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_nanos((i as f64 * 1e9 / self.rate).floor() as u64)
    }

    /// How many requests are due by `elapsed`: those with
    /// `offset(i) <= elapsed`. Request 0 is due at once.
    pub fn due(&self, elapsed: Duration) -> u64 {
        // The float estimate can be one off either way at exact boundaries;
        // settle it against `offset`, which is the definition.
        let mut n = (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1;
        while n > 0 && self.offset(n - 1) > elapsed {
            n -= 1;
        }
        while self.offset(n) <= elapsed {
            n += 1;
        }
        n
    }

    /// How many requests fall strictly before `end`: the whole run's count.
    pub fn count_before(&self, end: Duration) -> u64 {
        if end.is_zero() {
            return 0;
        }
        self.due(end - Duration::from_nanos(1))
    }
}

/// The latency of a request intended at `intended` and answered at `done`:
/// queueing in the generator (between `intended` and the actual send) is
/// part of it. Saturates at zero rather than panicking should the clocks
/// ever disagree.
pub fn corrected_latency(intended: Duration, done: Duration) -> Duration {
    done.saturating_sub(intended)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn offsets_are_multiples_of_the_interval() {
        let s = Schedule::new(1000.0).unwrap();
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), MS);
        assert_eq!(s.offset(2500), 2500 * MS);
        let s = Schedule::new(3.0).unwrap();
        assert_eq!(s.offset(1), Duration::from_nanos(333_333_333));
        assert_eq!(s.offset(3), Duration::from_secs(1));
        // No drift after a long run: a billion requests at 3/s end exactly
        // where they should.
        assert_eq!(s.offset(3_000_000_000), Duration::from_secs(1_000_000_000));
    }

    #[test]
    fn due_counts_requests_whose_time_has_come() {
        let s = Schedule::new(1000.0).unwrap();
        assert_eq!(s.due(Duration::ZERO), 1, "request 0 is due at once");
        assert_eq!(s.due(Duration::from_micros(999)), 1);
        assert_eq!(s.due(MS), 2, "request 1 is due exactly at 1 ms");
        assert_eq!(s.due(Duration::from_micros(1001)), 2);
        assert_eq!(s.due(Duration::from_secs(1)), 1001);
        let s = Schedule::new(3.0).unwrap();
        assert_eq!(s.due(Duration::from_nanos(333_333_332)), 1);
        assert_eq!(s.due(Duration::from_nanos(333_333_333)), 2);
    }

    #[test]
    fn due_agrees_with_offset_everywhere() {
        for rate in [1.0, 7.0, 333.3, 1000.0, 20_000.0, 123_456.7] {
            let s = Schedule::new(rate).unwrap();
            for ns in (0..2_000_000_000u64).step_by(7_919_177) {
                let t = Duration::from_nanos(ns);
                let n = s.due(t);
                assert!(s.offset(n - 1) <= t, "rate {rate}, t {t:?}");
                assert!(s.offset(n) > t, "rate {rate}, t {t:?}");
            }
        }
    }

    #[test]
    fn a_run_has_rate_times_duration_requests() {
        let s = Schedule::new(1000.0).unwrap();
        assert_eq!(s.count_before(Duration::from_secs(5)), 5000);
        assert_eq!(s.count_before(Duration::ZERO), 0);
        let s = Schedule::new(3.0).unwrap();
        assert_eq!(s.count_before(Duration::from_secs(1)), 3);
        assert_eq!(s.count_before(Duration::from_nanos(1_000_000_001)), 4);
    }

    #[test]
    fn bad_rates_are_refused() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(Schedule::new(rate).is_err(), "{rate}");
        }
    }

    #[test]
    fn latency_counts_from_the_intended_time() {
        // Intended at 10 ms, actually sent at 40 ms (the generator was
        // behind), answered at 45 ms: the latency is 35 ms, not 5 ms.
        assert_eq!(corrected_latency(10 * MS, 45 * MS), 35 * MS);
        assert_eq!(corrected_latency(10 * MS, 5 * MS), Duration::ZERO);
    }
}
