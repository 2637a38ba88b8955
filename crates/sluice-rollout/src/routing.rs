//! The routing decision of one request: stable or canary, and whether it is
//! mirrored to a shadow.
//!
//! Everything here is a pure function of its arguments, except
//! [`random_unit`], the cheap per-thread random draw that callers pass in
//! (tests pass fixed draws instead).

use std::cell::Cell;
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The side of a model's traffic split a request is served by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// The stable version (see [`crate::policy::TrafficPolicy::stable`]).
    Stable,
    /// The canary version (see [`crate::policy::TrafficPolicy::canary`]).
    Canary,
}

impl Variant {
    /// The lowercase name, as used in headers, metrics labels and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Stable => "stable",
            Variant::Canary => "canary",
        }
    }

    /// Parses a variant name as a caller would send it in the
    /// `x-sluice-variant` header: `"stable"` or `"canary"`, ignoring case and
    /// surrounding whitespace. Anything else is `None`.
    pub fn parse(s: &str) -> Option<Variant> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("stable") {
            Some(Variant::Stable)
        } else if s.eq_ignore_ascii_case("canary") {
            Some(Variant::Canary)
        } else {
            None
        }
    }
}

/// Why [`choose`] picked the variant it did, for logs, metrics and the
/// response header that tells a caller where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The caller asked for the variant explicitly.
    Header,
    /// The caller's sticky key hashed to this side.
    Sticky,
    /// A random draw against the canary weight.
    Random,
    /// The model has no canary, so everything goes to stable.
    NoCanary,
}

impl Reason {
    /// The snake_case name, as used in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Header => "header",
            Reason::Sticky => "sticky",
            Reason::Random => "random",
            Reason::NoCanary => "no_canary",
        }
    }
}

/// Maps a sticky key (e.g. a user id) onto `[0, 1)`.
///
/// The point is the first 8 bytes of the key's SHA-256, read as a big-endian
/// integer, keeping its top 53 bits and dividing by 2^53. It depends on the
/// key's bytes only, never on a process-specific seed, so every replica of
/// the gateway, on any machine and after any restart, sends a key to the same
/// side; and SHA-256 spreads keys uniformly, so the fraction of keys below
/// a weight is that weight.
pub fn sticky_point(key: &str) -> f64 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    unit_from_bits(u64::from_be_bytes(first))
}

/// Decides whether a request goes to the stable or the canary version.
///
/// In order:
/// 1. `!has_canary`: stable ([`Reason::NoCanary`]), whatever was requested,
///    since there is nothing else to go to.
/// 2. An explicit `requested` variant (the `x-sluice-variant` header) wins,
///    even at weight 0: that is how a canary is tried before it is given any
///    traffic ([`Reason::Header`]).
/// 3. With a `sticky_key`, canary iff `sticky_point(key) < canary_weight`
///    ([`Reason::Sticky`]). Because the rule is "below the weight", a key on
///    the canary stays on it as the weight grows; raising the weight only
///    moves more keys over, never back.
/// 4. Otherwise canary iff `draw() < canary_weight` ([`Reason::Random`]);
///    `draw` must return a uniform value in `[0, 1)` (see [`random_unit`])
///    and is only called in this case.
///
/// A weight of 0 (or NaN) never picks the canary in 3 and 4; a weight of 1
/// always does.
pub fn choose(
    has_canary: bool,
    canary_weight: f64,
    requested: Option<Variant>,
    sticky_key: Option<&str>,
    draw: impl FnOnce() -> f64,
) -> (Variant, Reason) {
    if !has_canary {
        return (Variant::Stable, Reason::NoCanary);
    }
    if let Some(variant) = requested {
        return (variant, Reason::Header);
    }
    let (point, reason) = match sticky_key {
        Some(key) => (sticky_point(key), Reason::Sticky),
        None => (draw(), Reason::Random),
    };
    let variant = if point < canary_weight {
        Variant::Canary
    } else {
        Variant::Stable
    };
    (variant, reason)
}

/// Whether a request is mirrored to a shadow taking `percent` percent of the
/// traffic: `draw() * 100 < percent`, with `draw` uniform in `[0, 1)`. So 0
/// never samples, 100 always does, and NaN never does.
pub fn sampled(percent: f64, draw: impl FnOnce() -> f64) -> bool {
    draw() * 100.0 < percent
}

thread_local! {
    /// State of this thread's xorshift64* generator; 0 means "not seeded yet"
    /// (xorshift never reaches 0 from a non-zero state).
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// A uniform draw in `[0, 1)` with 53 random bits, for routing and sampling.
///
/// Not cryptographic: it is a per-thread xorshift64* generator, seeded once
/// per thread from the clock, the thread's id and a per-process random key,
/// so it takes no lock and allocates nothing on the request path. Use
/// [`sticky_point`] where the same input must give the same answer.
pub fn random_unit() -> f64 {
    RNG.with(|state| {
        let mut x = state.get();
        if x == 0 {
            x = seed();
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        unit_from_bits(x.wrapping_mul(0x2545_F491_4F6C_DD1D))
    })
}

/// The top 53 bits of `bits` as a float in `[0, 1)`.
fn unit_from_bits(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A non-zero seed that differs between threads and between runs.
fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // RandomState's keys are random per process (and differ per call), and
    // the thread id tells apart threads seeded in the same nanosecond.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    std::thread::current().id().hash(&mut hasher);
    nanos.hash(&mut hasher);
    let mixed = splitmix64(hasher.finish() ^ nanos);
    if mixed == 0 {
        0x9E37_79B9_7F4A_7C15
    } else {
        mixed
    }
}

/// One step of SplitMix64's output function: spreads the bits of `z`.
fn splitmix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> f64 {
        panic!("draw must not be called")
    }

    #[test]
    fn variant_names() {
        assert_eq!(Variant::parse(" Canary\t"), Some(Variant::Canary));
        assert_eq!(Variant::parse("STABLE"), Some(Variant::Stable));
        assert_eq!(Variant::parse("shadow"), None);
        assert_eq!(Variant::parse(""), None);
        for v in [Variant::Stable, Variant::Canary] {
            assert_eq!(Variant::parse(v.as_str()), Some(v));
            assert_eq!(
                serde_json::to_value(v).unwrap(),
                serde_json::Value::from(v.as_str())
            );
        }
        for r in [
            Reason::Header,
            Reason::Sticky,
            Reason::Random,
            Reason::NoCanary,
        ] {
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::Value::from(r.as_str())
            );
        }
    }

    #[test]
    fn sticky_point_deterministic_and_in_range() {
        assert_eq!(sticky_point("alice"), sticky_point("alice"));
        assert_ne!(sticky_point("alice"), sticky_point("bob"));
        // Pinned value: SHA-256("") starts e3b0c44298fc1c14, the same on every
        // machine and in every release.
        let expected = (0xe3b0_c442_98fc_1c14_u64 >> 11) as f64 / (1u64 << 53) as f64;
        assert_eq!(sticky_point(""), expected);
        for i in 0..1000 {
            let p = sticky_point(&format!("user-{i}"));
            assert!((0.0..1.0).contains(&p), "{p}");
        }
    }

    #[test]
    fn sticky_point_uniform() {
        let n = 20_000.0;
        let below = (0..20_000)
            .filter(|i| sticky_point(&format!("key-{i}")) < 0.3)
            .count() as f64;
        let sd = (n * 0.3 * 0.7_f64).sqrt();
        assert!((below - n * 0.3).abs() < 5.0 * sd, "{below} of {n}");
    }

    #[test]
    fn sticky_keys_stay_on_canary_as_weight_grows() {
        let weights = [0.05, 0.25, 0.5, 1.0];
        let mut on_canary = vec![0usize; weights.len()];
        for i in 0..5_000 {
            let key = format!("caller-{i}");
            let mut was_canary = false;
            for (w, &weight) in weights.iter().enumerate() {
                let (variant, reason) = choose(true, weight, None, Some(&key), never);
                assert_eq!(reason, Reason::Sticky);
                let is_canary = variant == Variant::Canary;
                assert!(
                    !was_canary || is_canary,
                    "{key} left the canary at {weight}"
                );
                was_canary = is_canary;
                on_canary[w] += usize::from(is_canary);
            }
        }
        assert!(on_canary[0] > 0 && on_canary[0] < on_canary[1]);
        assert!(on_canary[1] < on_canary[2]);
        assert_eq!(on_canary[3], 5_000);
    }

    #[test]
    fn extreme_weights() {
        for i in 0..1000 {
            let key = format!("k{i}");
            let draw = (i as f64) / 1000.0;
            assert_eq!(
                choose(true, 1.0, None, Some(&key), never),
                (Variant::Canary, Reason::Sticky)
            );
            assert_eq!(
                choose(true, 1.0, None, None, || draw),
                (Variant::Canary, Reason::Random)
            );
            assert_eq!(
                choose(true, 0.0, None, Some(&key), never),
                (Variant::Stable, Reason::Sticky)
            );
            assert_eq!(
                choose(true, 0.0, None, None, || draw),
                (Variant::Stable, Reason::Random)
            );
        }
        // The header still reaches a canary at weight 0.
        assert_eq!(
            choose(true, 0.0, Some(Variant::Canary), None, never),
            (Variant::Canary, Reason::Header)
        );
        // NaN weight never picks the canary.
        assert_eq!(
            choose(true, f64::NAN, None, None, || 0.0),
            (Variant::Stable, Reason::Random)
        );
    }

    #[test]
    fn random_draw_against_weight() {
        assert_eq!(
            choose(true, 0.3, None, None, || 0.29),
            (Variant::Canary, Reason::Random)
        );
        assert_eq!(
            choose(true, 0.3, None, None, || 0.3),
            (Variant::Stable, Reason::Random)
        );
    }

    #[test]
    fn header_wins_over_sticky() {
        let key = (0..)
            .map(|i| format!("u{i}"))
            .find(|k| sticky_point(k) < 0.5)
            .unwrap();
        assert_eq!(
            choose(true, 0.5, None, Some(&key), never).0,
            Variant::Canary
        );
        assert_eq!(
            choose(true, 0.5, Some(Variant::Stable), Some(&key), never),
            (Variant::Stable, Reason::Header)
        );
    }

    #[test]
    fn no_canary_is_stable_even_when_requested() {
        for requested in [None, Some(Variant::Canary), Some(Variant::Stable)] {
            assert_eq!(
                choose(false, 1.0, requested, Some("k"), never),
                (Variant::Stable, Reason::NoCanary)
            );
        }
    }

    #[test]
    fn random_unit_uniform() {
        let n = 100_000;
        let mut sum = 0.0;
        for _ in 0..n {
            let x = random_unit();
            assert!((0.0..1.0).contains(&x), "{x}");
            sum += x;
        }
        let mean = sum / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }

    #[test]
    fn random_unit_differs_between_threads() {
        let a: Vec<f64> = std::thread::spawn(|| (0..4).map(|_| random_unit()).collect())
            .join()
            .unwrap();
        let b: Vec<f64> = std::thread::spawn(|| (0..4).map(|_| random_unit()).collect())
            .join()
            .unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn sampling() {
        for i in 0..1000 {
            let draw = i as f64 / 1000.0;
            assert!(!sampled(0.0, || draw));
            assert!(sampled(100.0, || draw));
        }
        assert!(!sampled(0.0, random_unit));
        assert!(sampled(100.0, random_unit));
        assert!(sampled(10.0, || 0.0999));
        assert!(!sampled(10.0, || 0.1));
        assert!(!sampled(f64::NAN, || 0.0));
    }
}
