//! Special functions the tests need: the log-gamma function, the
//! regularised upper incomplete gamma function and, from it, the chi-square
//! survival function. Written for accuracy near 1e-13 relative over the
//! arguments drift statistics produce (degrees of freedom up to millions,
//! statistics up to 1e300), never panicking: a bad argument gives NaN.

use std::f64::consts::PI;

/// ln(2π)/2.
const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

/// The Stirling series correction `ln Γ(x) − ((x − ½) ln x − x + ½ ln 2π)`
/// for `x >= 10`: Σ B₂ₖ / (2k (2k − 1) x^(2k−1)), truncated where the next
/// term is below 1e-17 of the result.
fn stirling_correction(x: f64) -> f64 {
    // B2k / (2k (2k-1)) for k = 1..=7.
    const C: [f64; 7] = [
        1.0 / 12.0,
        -1.0 / 360.0,
        1.0 / 1260.0,
        -1.0 / 1680.0,
        1.0 / 1188.0,
        -691.0 / 360_360.0,
        1.0 / 156.0,
    ];
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    let mut sum = 0.0;
    for c in C.iter().rev() {
        sum = sum * inv2 + c;
    }
    sum * inv
}

/// The natural logarithm of the gamma function, ln Γ(x), for `x > 0`
/// (NaN for `x <= 0` or NaN, +inf for +inf).
///
/// Stirling's series for `x >= 10`; below, the recurrence
/// Γ(x) = Γ(x + k) / (x (x + 1) … (x + k − 1)) shifts the argument up first.
/// Relative error about 1e-15 of |ln Γ(x)|, absolute error below 1e-14 near
/// the zeros at 1 and 2.
pub fn ln_gamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    if x >= 10.0 {
        return (x - 0.5) * x.ln() - x + HALF_LN_2PI + stirling_correction(x);
    }
    let mut shift = 1.0;
    let mut y = x;
    while y < 10.0 {
        shift *= y;
        y += 1.0;
    }
    (y - 0.5) * y.ln() - y + HALF_LN_2PI + stirling_correction(y) - shift.ln()
}

/// ln(1 + t) − t, accurate also for small |t| where the two terms cancel
/// (a power series for |t| ≤ 0.3). NaN for t < −1.
fn log1p_minus(t: f64) -> f64 {
    if t.is_nan() || t < -1.0 {
        return f64::NAN;
    }
    if t.abs() > 0.3 {
        return t.ln_1p() - t;
    }
    // -t^2/2 + t^3/3 - t^4/4 + ...
    let mut term = t;
    let mut sum = 0.0;
    let mut k = 2.0;
    loop {
        term *= -t;
        let add = term / k;
        sum += add;
        if add.abs() <= 1e-18 * sum.abs() || k > 200.0 {
            break;
        }
        k += 1.0;
    }
    sum
}

/// ln of the common factor x^a e^(−x) / Γ(a) of both incomplete gamma
/// functions. For large `a` it is computed as
/// −a·(t − ln(1 + t)) + ½ ln(a / 2π) − stirling(a) with t = (x − a)/a, which
/// keeps the cancellation between a ln x, x and ln Γ(a) out of the result.
fn ln_gamma_prefactor(a: f64, x: f64) -> f64 {
    if a < 10.0 {
        return a * x.ln() - x - ln_gamma(a);
    }
    let t = (x - a) / a;
    a * log1p_minus(t) + 0.5 * (a / (2.0 * PI)).ln() - stirling_correction(a)
}

/// The regularised upper incomplete gamma function
/// Q(a, x) = Γ(a, x) / Γ(a) = 1 − P(a, x), for `a > 0`, `x >= 0`.
///
/// P by its power series when `x < a + 1` (then Q = 1 − P, which is not
/// small there), Q by its continued fraction (modified Lentz) otherwise, so
/// a tiny Q keeps its relative accuracy. Returns NaN for a bad argument,
/// 1 at x = 0 and 0 at x = +inf.
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if a.is_nan() || x.is_nan() || a <= 0.0 || x < 0.0 || a.is_infinite() {
        return f64::NAN;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    let ln_pre = ln_gamma_prefactor(a, x);
    if x < a + 1.0 {
        // P(a, x) = x^a e^-x / Γ(a+1) · Σ x^n / ((a+1)…(a+n))
        let mut term = 1.0 / a;
        let mut sum = term;
        let mut n = 1.0;
        while n < 100_000.0 {
            term *= x / (a + n);
            sum += term;
            if term < sum * 1e-17 {
                break;
            }
            n += 1.0;
        }
        let p = (ln_pre + sum.ln()).exp();
        return (1.0 - p).clamp(0.0, 1.0);
    }
    // Continued fraction for Γ(a, x) e^x x^-a:
    // 1 / (x + 1 − a − 1(1 − a) / (x + 3 − a − 2(2 − a) / (x + 5 − a − …)))
    const TINY: f64 = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    let mut i = 1.0;
    while i < 100_000.0 {
        let an = -i * (i - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
        i += 1.0;
    }
    if h <= 0.0 || !h.is_finite() {
        return 0.0;
    }
    (ln_pre + h.ln()).exp().clamp(0.0, 1.0)
}

/// The chi-square survival function P(χ²_dof ≥ x) = Q(dof/2, x/2) (the
/// quantity SciPy's `scipy.stats.chi2.sf` and `scipy.special.chdtrc`
/// compute). 1 for `x <= 0`; NaN for `dof <= 0` or NaN arguments.
pub fn chi2_sf(x: f64, dof: f64) -> f64 {
    if x.is_nan() || dof.is_nan() || dof <= 0.0 {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    gamma_q(dof / 2.0, x / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(f64::MIN_POSITIVE)
    }

    #[test]
    fn ln_gamma_matches_factorials_and_half_integers() {
        let mut fact: f64 = 1.0;
        for n in 1..=30u32 {
            // Γ(n) = (n-1)!
            assert!(close(ln_gamma(n as f64), fact.ln(), 1e-14) || fact == 1.0);
            fact *= n as f64;
        }
        assert!(ln_gamma(1.0).abs() < 1e-14);
        assert!(ln_gamma(2.0).abs() < 1e-14);
        assert!(close(ln_gamma(0.5), PI.sqrt().ln(), 1e-14));
        // Γ(100) = 99!
        assert!(close(ln_gamma(100.0), 359.134_205_369_575_4, 1e-14));
        assert!(ln_gamma(0.0).is_nan());
        assert!(ln_gamma(-1.0).is_nan());
        assert!(ln_gamma(f64::NAN).is_nan());
    }

    #[test]
    fn chi2_sf_known_values() {
        // dof 2: sf = exp(-x/2) exactly.
        for x in [0.1, 1.0, 5.0, 30.0, 300.0, 1400.0] {
            assert!(close(chi2_sf(x, 2.0), (-x / 2.0).exp(), 1e-13), "{x}");
        }
        // dof 1: sf = erfc(sqrt(x/2)); at x = 3.841458820694124 it is 0.05.
        assert!(close(chi2_sf(3.841_458_820_694_128_5, 1.0), 0.05, 1e-12));
        // dof 10 at the 0.95 quantile 18.307038053275146.
        assert!(close(chi2_sf(18.307_038_053_275_15, 10.0), 0.05, 1e-12));
        // Values from SciPy 1.18.1's scipy.stats.chi2.sf.
        assert!(close(
            chi2_sf(1000.0, 900.0),
            0.010_994_608_942_135_844,
            1e-11
        ));
        assert!(close(chi2_sf(50.0, 3.0), 7.989_179_244_951_495e-11, 1e-11));
        assert!(close(
            chi2_sf(3000.0, 2000.0),
            2.204_698_611_389_594e-43,
            1e-10
        ));
        assert!(close(chi2_sf(12.5, 7.0), 0.085_269_275_158_269_25, 1e-12));
        assert!(close(chi2_sf(0.3, 0.5), 0.333_171_802_315_356_5, 1e-12));
        assert!(close(chi2_sf(1e6, 1e6), 0.499_811_936_803_394_5, 1e-10));
    }

    #[test]
    fn chi2_sf_edges_never_panic() {
        assert_eq!(chi2_sf(0.0, 3.0), 1.0);
        assert_eq!(chi2_sf(-1.0, 3.0), 1.0);
        assert!(chi2_sf(1.0, 0.0).is_nan());
        assert!(chi2_sf(f64::NAN, 1.0).is_nan());
        assert_eq!(chi2_sf(f64::INFINITY, 4.0), 0.0);
        assert_eq!(chi2_sf(1e300, 4.0), 0.0);
    }

    #[test]
    fn log1p_minus_is_accurate_for_small_arguments() {
        assert!(close(log1p_minus(1e-8), -5e-17 + 1e-24 / 3.0, 1e-12));
        assert!(close(log1p_minus(0.5), 1.5f64.ln() - 0.5, 1e-14));
        assert!(log1p_minus(-2.0).is_nan());
    }
}
