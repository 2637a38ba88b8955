//! The null distributions behind the Kolmogorov–Smirnov tests: the
//! one-sample two-sided distribution of Dₙ (SciPy's `kstwo`, which the
//! two-sample test uses, with the effective sample size, for large samples)
//! and the one-sided Smirnov distribution of Dₙ⁺ (SciPy's
//! `scipy.special.smirnov`) that its upper tail is built on.
//!
//! The choice of algorithm by region follows Simard & L'Ecuyer, "Computing
//! the Two-Sided Kolmogorov-Smirnov Distribution", Journal of Statistical
//! Software 39(11), 2011, with the cut-offs SciPy 1.18 uses (measured
//! against it, see `tests/drift/`), because two of the algorithms are
//! approximations and agreeing with SciPy means approximating the same way:
//!
//! | region (t = n·x) | survival function |
//! |---|---|
//! | x ≥ 1; x ≤ 0; t ≤ ½ | 0; 1; 1 |
//! | ½ < t ≤ 1 | 1 − n!/nⁿ (2t − 1)ⁿ (Ruben & Gambino, exact) |
//! | t ≥ n − 1 | 2 (1 − x)ⁿ (exact) |
//! | x ≥ ½ | 2 · Smirnov(n, x) (exact there) |
//! | n ≤ 140, n·x² ≤ 4 | 1 − CDF, the CDF exact (Durbin's matrix, Marsaglia–Tsang–Wang) |
//! | n ≤ 140, n·x² > 4 | 2 · Smirnov(n, x) (Miller's approximation) |
//! | n > 140, n·x² ≥ 370 | 0 |
//! | n > 140, n·x² ≥ 2.2 | 2 · Smirnov(n, x) |
//! | n ≤ 100 000, n·x^1.5 ≤ 1.4 | 1 − CDF, Durbin's matrix |
//! | otherwise | 1 − CDF, the Pelz–Good asymptotic series |
//!
//! (Simard & L'Ecuyer use Pomeranz's recursion for part of the n ≤ 140
//! region; it and Durbin's matrix are both exact, so the results agree to
//! rounding.)

use std::f64::consts::PI;

use crate::special::ln_gamma;

/// Multiplies `x` by 2^`e` without overflowing on the way (the result may
/// still overflow or underflow).
fn ldexp(mut x: f64, mut e: i64) -> f64 {
    const STEP: i64 = 1000;
    while e > STEP {
        x *= 2f64.powi(STEP as i32);
        e -= STEP;
    }
    while e < -STEP {
        x *= 2f64.powi(-STEP as i32);
        e += STEP;
    }
    x * 2f64.powi(e as i32)
}

/// A square matrix scaled by a power of two: value = `m` · 2^`e`.
struct Scaled {
    size: usize,
    m: Vec<f64>,
    e: i64,
}

impl Scaled {
    fn identity(size: usize) -> Self {
        let mut m = vec![0.0; size * size];
        for i in 0..size {
            m[i * size + i] = 1.0;
        }
        Scaled { size, m, e: 0 }
    }

    fn mul(&self, other: &Scaled) -> Scaled {
        let s = self.size;
        let mut out = vec![0.0; s * s];
        for i in 0..s {
            for k in 0..s {
                let a = self.m[i * s + k];
                if a == 0.0 {
                    continue;
                }
                let row = &other.m[k * s..(k + 1) * s];
                let dst = &mut out[i * s..(i + 1) * s];
                for (d, b) in dst.iter_mut().zip(row) {
                    *d += a * b;
                }
            }
        }
        let mut r = Scaled {
            size: s,
            m: out,
            e: self.e + other.e,
        };
        r.normalise();
        r
    }

    /// Keeps the largest element within 2^±256 so that products of many
    /// factors neither overflow nor underflow.
    fn normalise(&mut self) {
        let max = self.m.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        if !max.is_finite() || max == 0.0 {
            return;
        }
        let big = 2f64.powi(256);
        let small = 2f64.powi(-256);
        let mut max = max;
        while max > big {
            for v in &mut self.m {
                *v *= small;
            }
            self.e += 256;
            max *= small;
        }
        while max < small {
            for v in &mut self.m {
                *v *= big;
            }
            self.e -= 256;
            max *= big;
        }
    }
}

/// P(Dₙ < d) for the one-sample two-sided statistic, exactly, by Durbin's
/// matrix formula as computed by Marsaglia, Tsang & Wang ("Evaluating
/// Kolmogorov's Distribution", Journal of Statistical Software 8(18), 2003):
/// with n·d = k − h (k a positive integer, 0 ≤ h < 1) and an m × m matrix H
/// (m = 2k − 1), P = n!/nⁿ · (Hⁿ)ₖₖ. Powers are taken by squaring, scaled by
/// powers of two. Cost O(m³ log n + n); for the small k where it is used.
/// NaN for n = 0, NaN d, or sizes where the cost would be unreasonable
/// (n·d > 2000 or n > 10⁸).
pub fn durbin_cdf(n: u64, d: f64) -> f64 {
    if d.is_nan() || n == 0 {
        return f64::NAN;
    }
    if d >= 1.0 {
        return 1.0;
    }
    let nd = n as f64 * d;
    if nd <= 0.5 {
        return 0.0;
    }
    if nd > 2000.0 || n > 100_000_000 {
        return f64::NAN;
    }
    let k = nd.ceil() as usize;
    let h = k as f64 - nd;
    let m = 2 * k - 1;
    // inv_fact[j] = 1/j!
    let mut inv_fact = vec![1.0f64; m + 1];
    for j in 1..=m {
        inv_fact[j] = inv_fact[j - 1] / j as f64;
    }
    let mut hm = vec![0.0f64; m * m];
    for i in 0..m {
        for j in 0..m {
            // H[i][j] = 1/(i-j+1)! where i-j+1 >= 0.
            if i + 1 >= j {
                hm[i * m + j] = inv_fact[i + 1 - j];
            }
        }
    }
    // First column and last row: (1 - h^p)/p! with p the distance to the
    // corner; the corner itself also gets (2h - 1)^m when 2h > 1.
    for i in 0..m {
        let p = i + 1;
        hm[i * m] = (1.0 - h.powi(p as i32)) * inv_fact[p];
    }
    for j in 0..m {
        let p = m - j;
        hm[(m - 1) * m + j] = (1.0 - h.powi(p as i32)) * inv_fact[p];
    }
    let corner = 1.0 - 2.0 * h.powi(m as i32) + (2.0 * h - 1.0).max(0.0).powi(m as i32);
    hm[(m - 1) * m] = corner * inv_fact[m];

    let mut base = Scaled {
        size: m,
        m: hm,
        e: 0,
    };
    base.normalise();
    let mut acc = Scaled::identity(m);
    let mut power = n;
    while power > 0 {
        if power & 1 == 1 {
            acc = acc.mul(&base);
        }
        power >>= 1;
        if power > 0 {
            base = base.mul(&base);
        }
    }
    let mut p = acc.m[(k - 1) * m + (k - 1)];
    let mut e = acc.e;
    // Multiply by n!/n^n = Π (i/n), rescaling as it shrinks.
    let nf = n as f64;
    let small = 2f64.powi(-256);
    let big = 2f64.powi(256);
    for i in 1..=n {
        p = p * i as f64 / nf;
        if p != 0.0 && p.abs() < small {
            p *= big;
            e -= 256;
        }
    }
    ldexp(p, e).clamp(0.0, 1.0)
}

/// The Pelz–Good asymptotic approximation (Pelz & Good, "Approximating the
/// Lower Tail-Areas of the Kolmogorov-Smirnov One-Sample Statistic", JRSS B
/// 38(2), 1976) of P(Dₙ ≤ x): K₀(z) + K₁(z)/√n + K₂(z)/n + K₃(z)/n^{3/2} with
/// z = x√n, each Kᵢ written as theta-function series that converge quickly
/// for the small z where it is used, summed over the same number of terms,
/// ⌈16z/π⌉, as SciPy.
pub fn pelz_good_cdf(n: u64, x: f64) -> f64 {
    if x.is_nan() || n == 0 {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let nf = n as f64;
    let z = nf.sqrt() * x;
    let z2 = z * z;
    let z3 = z2 * z;
    let z4 = z2 * z2;
    let z6 = z4 * z2;
    let ln_q = -PI * PI / 8.0 / z2;
    if ln_q < -708.0 {
        return 0.0;
    }
    let pi2 = PI * PI;
    let pi4 = pi2 * pi2;
    let pi6 = pi4 * pi2;
    // Polynomials in m = 2k - 1 multiplying q^((2k-1)^2) in K1..K3.
    let k1 = |m2: f64| -z2 + pi2 / 4.0 * m2;
    let k2 = |m2: f64| {
        6.0 * z6
            + 2.0 * z4
            + (2.0 * z4 - 5.0 * z2) * pi2 / 4.0 * m2
            + pi4 * (1.0 - 2.0 * z2) / 16.0 * m2 * m2
    };
    let k3 = |m2: f64| {
        -30.0 * z6 - 90.0 * z4 * z4
            + pi2 * (135.0 * z4 - 96.0 * z6) / 4.0 * m2
            + pi4 * (-60.0 * z2 + 212.0 * z4) / 16.0 * m2 * m2
            + pi6 * (5.0 - 30.0 * z2) / 64.0 * m2 * m2 * m2
    };
    let terms = ((16.0 * z / PI).ceil() as u64).max(1);
    let mut sums = [0.0f64; 4];
    for k in 1..=terms {
        let m = (2 * k - 1) as f64;
        let m2 = m * m;
        let w = (ln_q * m2).exp();
        sums[0] += w;
        sums[1] += k1(m2) * w;
        sums[2] += k2(m2) * w;
        sums[3] += k3(m2) * w;
    }
    let sqrt_2pi = (2.0 * PI).sqrt();
    let k0 = sums[0] * sqrt_2pi / z;
    let mut k1v = sums[1] * sqrt_2pi / (6.0 * z4);
    let mut k2v = sums[2] * sqrt_2pi / (72.0 * z3 * z4);
    let mut k3v = sums[3] * sqrt_2pi / (6480.0 * z4 * z6);
    // The sums over all integers k of q2^(k^2), q2 = exp(-pi^2 / (2 z^2)).
    let ln_q2 = -pi2 / 2.0 / z2;
    let mut extra2 = 0.0;
    let mut extra3 = 0.0;
    for k in 1..=terms {
        let kf = k as f64;
        let k2f = kf * kf;
        let w = (ln_q2 * k2f).exp();
        extra2 += k2f * w;
        extra3 += (3.0 * z2 - pi2 * k2f) * k2f * w;
    }
    k2v += extra2 * pi2 * sqrt_2pi / (-36.0 * z3);
    k3v += extra3 * pi2 * sqrt_2pi / (216.0 * z6);
    k1v /= nf.sqrt();
    k2v /= nf;
    k3v /= nf * nf.sqrt();
    k0 + k1v + k2v + k3v
}

/// ln C(n, v).
fn ln_binomial(n: f64, v: f64) -> f64 {
    ln_gamma(n + 1.0) - ln_gamma(v + 1.0) - ln_gamma(n - v + 1.0)
}

/// Above this n, `smirnov_sf` uses the approximation
/// exp(−(6nx + 1)² / 18n), as SciPy (`xsf`, `SMIRNOV_MAX_COMPUTE_N`) does.
const SMIRNOV_MAX_EXACT_N: u64 = 1_000_000;

/// P(Dₙ⁺ ≥ x), the one-sided Smirnov survival function (SciPy's
/// `scipy.special.smirnov(n, x)`), by the Birnbaum–Tingey / Smirnov sum
/// x Σ_{v=0}^{⌊n(1−x)⌋} C(n,v) (x + v/n)^{v−1} (1 − x − v/n)^{n−v}, each term
/// evaluated in logarithms (exact up to rounding, ~1e-10 relative for n in
/// the tens of thousands); closed forms for x ≤ 1/n and x ≥ 1 − 1/n; and,
/// as SciPy does, the approximation exp(−(6nx+1)²/18n) for n > 10⁶.
pub fn smirnov_sf(n: u64, x: f64) -> f64 {
    if x.is_nan() || n == 0 || !(0.0..=1.0).contains(&x) {
        return f64::NAN;
    }
    let nf = n as f64;
    if n == 1 {
        return 1.0 - x;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x == 1.0 {
        return 0.0;
    }
    let nx = nf * x;
    if nx <= 1.0 {
        // sf = 1 - x (1 + x)^(n-1)
        let cdf = x * ((nf - 1.0) * x.ln_1p()).exp();
        return (1.0 - cdf).clamp(0.0, 1.0);
    }
    if -2.0 * nf * x * x < -708.396_418_532_264_1 {
        return 0.0;
    }
    if nx >= nf - 1.0 {
        return ((nf * (-x).ln_1p()).exp()).clamp(0.0, 1.0);
    }
    if n > SMIRNOV_MAX_EXACT_N {
        let lnp = -(6.0 * nx + 1.0).powi(2) / 18.0 / nf;
        return if lnp < -std::f64::consts::LN_2 {
            lnp.exp()
        } else {
            1.0 + lnp.exp_m1()
        }
        .clamp(0.0, 1.0);
    }
    let last = (nf * (1.0 - x)).floor() as u64;
    let ln_x = x.ln();
    let mut sum = 0.0f64;
    let mut max_ln = f64::NEG_INFINITY;
    // First pass finds the largest term so that the sum is taken relative
    // to it (no underflow of every term for large n).
    let ln_term = |v: u64| -> f64 {
        let vf = v as f64;
        let a = x + vf / nf; // x + v/n
        let b = (nf - vf) / nf - x; // 1 - x - v/n
        if b <= 0.0 {
            return f64::NEG_INFINITY;
        }
        ln_binomial(nf, vf) + (vf - 1.0) * a.ln() + (nf - vf) * b.ln()
    };
    let mut terms = Vec::with_capacity((last + 1).min(1 << 20) as usize);
    for v in 0..=last {
        let t = ln_term(v);
        if t > max_ln {
            max_ln = t;
        }
        terms.push(t);
    }
    if !max_ln.is_finite() {
        return 0.0;
    }
    for t in &terms {
        sum += (t - max_ln).exp();
    }
    ((ln_x + max_ln + sum.ln()).exp()).clamp(0.0, 1.0)
}

/// log(n!/nⁿ) through ln Γ.
fn ln_nfact_over_npow(n: f64) -> f64 {
    ln_gamma(n + 1.0) - n * n.ln()
}

/// P(Dₙ ≥ x) for the one-sample two-sided Kolmogorov–Smirnov statistic of a
/// sample of size `n` (SciPy's `scipy.stats.kstwo.sf(x, n)`), by the regions
/// in the module documentation. NaN for n = 0 or x NaN.
pub fn kstwo_sf(n: u64, x: f64) -> f64 {
    if x.is_nan() || n == 0 {
        return f64::NAN;
    }
    if x >= 1.0 {
        return 0.0;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let nf = n as f64;
    let t = nf * x;
    if t <= 1.0 {
        if t <= 0.5 {
            return 1.0;
        }
        let cdf = if n <= 140 {
            let f = 2.0 * t - 1.0;
            (1..=n).fold(1.0, |acc, i| acc * (i as f64 * (1.0 / nf) * f))
        } else {
            (ln_nfact_over_npow(nf) + nf * (2.0 * t - 1.0).ln()).exp()
        };
        return (1.0 - cdf).clamp(0.0, 1.0);
    }
    if t >= nf - 1.0 {
        return (2.0 * (1.0 - x).powf(nf)).clamp(0.0, 1.0);
    }
    if x >= 0.5 {
        return (2.0 * smirnov_sf(n, x)).clamp(0.0, 1.0);
    }
    let nxx = t * x;
    if n <= 140 {
        if nxx <= 4.0 {
            return (1.0 - durbin_cdf(n, x)).clamp(0.0, 1.0);
        }
        return (2.0 * smirnov_sf(n, x)).clamp(0.0, 1.0);
    }
    if nxx >= 370.0 {
        return 0.0;
    }
    if nxx >= 2.2 {
        return (2.0 * smirnov_sf(n, x)).clamp(0.0, 1.0);
    }
    let cdf = if n <= 100_000 && nf * x.powf(1.5) <= 1.4 {
        durbin_cdf(n, x)
    } else {
        pelz_good_cdf(n, x)
    };
    (1.0 - cdf).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn durbin_small_cases_by_hand() {
        // n = 1: D_1 = max(U, 1-U); P(D_1 < d) = 2d - 1 for 1/2 <= d <= 1.
        assert!(close(durbin_cdf(1, 0.75), 0.5, 1e-14));
        // n = 2: P(D_2 < d) = 2 (2d - 1/2)^2 for 1/4 <= d <= 1/2
        // (Kolmogorov's distribution for n = 2), at d = 0.4: 2 * 0.09 = 0.18
        assert!(close(durbin_cdf(2, 0.4), 0.18, 1e-13));
        assert_eq!(durbin_cdf(5, 0.05), 0.0);
        assert_eq!(durbin_cdf(5, 1.0), 1.0);
        assert!(durbin_cdf(1_000_000_000, 0.5).is_nan());
    }

    #[test]
    fn kstwo_sf_agrees_with_scipy_values() {
        // scipy.stats.kstwo.sf(x, n), SciPy 1.18.1.
        let cases = [
            (10u64, 0.3, 0.270_535_574_799_999_46),
            (50, 0.2, 0.031_438_777_769_532_41),
            (100, 0.1, 0.252_692_757_006_387_4),
            (100, 0.25, 5.408_871_776_434_847e-6),
            (200, 0.09, 0.073_589_251_399_535_87),
            (1000, 0.03, 0.322_690_214_391_463_6),
            (1000, 0.08, 5.154_189_384_789_824e-6),
            (12_000, 0.012, 0.062_603_735_151_662_95),
            (12_000, 0.005, 0.923_583_863_856_766),
            (500_000, 0.001, 0.698_980_144_366_366_1),
            (2_000_000, 0.0008, 0.154_455_759_173_816_38),
        ];
        for (n, x, want) in cases {
            let got = kstwo_sf(n, x);
            assert!(close(got, want, 1e-9), "n={n} x={x}: {got} vs {want}");
        }
    }

    #[test]
    fn smirnov_matches_closed_forms() {
        // n = 1: sf = 1 - x.
        assert!(close(smirnov_sf(1, 0.3), 0.7, 1e-15));
        // x >= 1 - 1/n: (1 - x)^n.
        assert!(close(smirnov_sf(10, 0.95), 0.05f64.powi(10), 1e-12));
        // n = 2, 1/2 <= x < 1: sf = (1 - x)^2; 0 < x < 1/2: 1 - x(1 + x).
        assert!(close(smirnov_sf(2, 0.3), 1.0 - 0.3 * 1.3, 1e-14));
        // scipy.special.smirnov, SciPy 1.18.1.
        assert!(close(
            smirnov_sf(1000, 0.05),
            0.006_506_037_390_545_166,
            1e-10
        ));
        assert!(close(smirnov_sf(20, 0.3), 0.021_533_604_376_327_058, 1e-12));
        assert!(smirnov_sf(3, f64::NAN).is_nan());
        assert!(smirnov_sf(3, 1.5).is_nan());
    }

    #[test]
    fn extreme_arguments_never_panic() {
        for n in [1u64, 2, 139, 140, 141, 100_000, 100_001, 2_000_000] {
            for x in [
                0.0, 1e-300, 1e-9, 0.001, 0.01, 0.1, 0.49, 0.5, 0.9, 1.0, 2.0,
            ] {
                let p = kstwo_sf(n, x);
                assert!((0.0..=1.0).contains(&p), "n={n} x={x} p={p}");
            }
        }
        assert!(kstwo_sf(0, 0.5).is_nan());
        assert!(kstwo_sf(5, f64::NAN).is_nan());
    }
}
