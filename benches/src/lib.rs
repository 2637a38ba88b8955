//! Benchmarks of Sluice, in `benches/` (see `README.md`). Cargo wants a
//! target besides the benches; this library holds what the benches share.

use std::time::Duration;

/// Criterion's measurement time per bench: `SLUICE_BENCH_MEASUREMENT_S`
/// seconds, 3 by default (every bench here is sized to run in minutes on a
/// 2-core machine).
pub fn measurement_time() -> Duration {
    let secs = match std::env::var("SLUICE_BENCH_MEASUREMENT_S") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("SLUICE_BENCH_MEASUREMENT_S={v:?} is not a whole number")),
        Err(_) => 3,
    };
    Duration::from_secs(secs.max(1))
}
