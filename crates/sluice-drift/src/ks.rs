//! The two-sample, two-sided Kolmogorov–Smirnov test, agreeing with
//! `scipy.stats.ks_2samp(reference, current)` (its defaults:
//! `alternative='two-sided'`, `method='auto'`) of SciPy 1.18.

use serde::Serialize;

use crate::kolmogorov::kstwo_sf;

/// Above this many observations in either sample the p-value is
/// asymptotic; at or below it in both, exact. SciPy 1.18's `ks_2samp` with
/// `method='auto'` (its `MAX_AUTO_N`; established by comparing 'auto' with
/// 'exact' and 'asymp' at 9 999, 10 000 and 10 001 observations).
pub const KS_MAX_EXACT_N: usize = 10_000;

/// Which distribution gave a [`Ks`] p-value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KsPValue {
    /// The exact permutation distribution of the statistic (lattice-path
    /// counting).
    Exact,
    /// The one-sample Kolmogorov distribution at the effective sample size
    /// round(n·m/(n+m)).
    Asymptotic,
    /// No test was possible (a sample was empty after dropping NaN).
    None,
}

/// The result of [`ks_2samp`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ks {
    /// D = sup |F_ref(x) − F_cur(x)| over the empirical CDFs; NaN when a
    /// sample is empty.
    pub statistic: f64,
    /// P(D ≥ observed) under the null hypothesis that both samples come from
    /// the same continuous distribution; NaN when a sample is empty.
    pub p_value: f64,
    /// Which distribution the p-value came from.
    pub method: KsPValue,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Sorted copy without NaN.
pub(crate) fn sorted_finite_or_inf(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_unstable_by(f64::total_cmp);
    // -0.0 and 0.0 compare equal as values; total_cmp orders them, which is
    // fine for counting since the ECDF comparison below uses `<=`.
    v
}

/// The value i/n as SciPy computes its ECDF levels (`linspace(0, 1, n+1)`,
/// i.e. i · (1/n), with the last one exactly 1), so that the statistic
/// agrees to the last bit and lands on the same side of every region
/// boundary of the null distribution.
fn level(i: usize, n: usize) -> f64 {
    if i == n {
        1.0
    } else {
        i as f64 * (1.0 / n as f64)
    }
}

/// The statistic D and h = D · lcm(n₁, n₂) as an exact integer.
fn statistic(a: &[f64], b: &[f64]) -> (f64, u64) {
    let (n1, n2) = (a.len(), b.len());
    let g = gcd(n1 as u64, n2 as u64);
    let (n1g, n2g) = (n1 as u64 / g, n2 as u64 / g);
    let (mut i, mut j) = (0usize, 0usize);
    let mut max_pos = 0.0f64;
    let mut max_neg = 0.0f64;
    let mut h = 0u64;
    while i < n1 || j < n2 {
        // The next distinct value of the pooled sample.
        let v = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) => {
                if x <= y {
                    x
                } else {
                    y
                }
            }
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => break,
        };
        while i < n1 && a[i] <= v {
            i += 1;
        }
        while j < n2 && b[j] <= v {
            j += 1;
        }
        let diff = level(i, n1) - level(j, n2);
        if diff > max_pos {
            max_pos = diff;
        }
        if -diff > max_neg {
            max_neg = -diff;
        }
        // |i/n1 - j/n2| · lcm = |i·n2/g − j·n1/g|, exactly.
        let hi = (i as u64 * n2g).abs_diff(j as u64 * n1g);
        h = h.max(hi);
    }
    (max_pos.max(max_neg.clamp(0.0, 1.0)), h)
}

/// P(D ≥ h/n) for two samples of equal size n: the alternating series
/// 2 Σ_{k≥1} (−1)^{k+1} C(2n, n − kh) / C(2n, n) (Gnedenko–Korolyuk, as
/// treated by Hodges 1958), evaluated innermost term first in the nested
/// form 2 A₁(1 − A₂(1 − A₃(…))) with each ratio Aₖ a product of h simple
/// factors, in the order SciPy evaluates it, because SciPy checks the
/// result lies in [0, 1] and falls back to the asymptotic distribution when
/// rounding pushed it past 1 (it does for tiny h at n in the thousands), and
/// agreeing with SciPy means making the same decision.
fn exact_equal_sizes(n: u64, h: u64) -> f64 {
    let (n, h) = (n as i64, h as i64);
    let mut p = 0.0f64;
    let mut k = n / h;
    loop {
        let mut p1 = 1.0f64;
        for j in 0..h {
            p1 = (n - k * h - j) as f64 * p1 / (n + k * h + j + 1) as f64;
        }
        p = p1 * (1.0 - p);
        if k == 0 {
            break;
        }
        k -= 1;
    }
    2.0 * p
}

/// P(D ≥ h / lcm(m, n)) for samples of sizes m ≠ n, by following the
/// probability mass of a uniformly random lattice path from (0, 0) to
/// (m, n) (each path is one interleaving of the pooled sorted samples): row
/// by row, the mass at (i, j) of paths that stayed strictly inside the band
/// |i/m − j/n| < h/lcm, and the sum of the mass that leaves the band. Every
/// quantity is a probability (a scaled path count) and the p-value is a sum
/// of positive terms, so there is neither overflow nor cancellation: tiny
/// p-values keep their relative accuracy. O(m·n) time in the worst case
/// (only the band is visited), O(m) memory.
fn exact_unequal_sizes(m: u64, n: u64, h: u64) -> f64 {
    let g = gcd(m, n);
    let (mg, ng) = ((m / g) as i128, (n / g) as i128);
    let h = h as i128;
    // The band in row j: i with |i·ng − j·mg| < h, as [lo, hi] (empty when
    // lo > hi).
    let lo = |j: usize| -> usize {
        let num = j as i128 * mg - h;
        (num.div_euclid(ng) + 1).max(0) as usize
    };
    let hi = |j: usize| -> Option<usize> {
        let num = j as i128 * mg + h;
        let ceil = -((-num).div_euclid(ng));
        let v = (ceil - 1).min(m as i128);
        (v >= 0).then_some(v as usize)
    };
    let (m, n) = (m as usize, n as usize);
    let total = m + n;
    // 1/s for the s steps left, and the step counts as floats.
    let recip: Vec<f64> = (0..=total)
        .map(|s| if s == 0 { 0.0 } else { 1.0 / s as f64 })
        .collect();
    let mut row = vec![0.0f64; m + 1];
    let mut outside = 0.0f64;
    // The previous row's band, as a half-open range.
    let (mut prev_lo, mut prev_end) = (0usize, 0usize);
    for j in 0..=n {
        let l = lo(j);
        let end = hi(j).map_or(0, |u| u + 1).max(l);
        // Mass arriving from below: (n − j + 1)/(steps left before the
        // step); from the left: (m − i + 1)/(same).
        let from_below = (n - j + 1) as f64;
        for i in l..end {
            let up = if i >= prev_lo && i < prev_end {
                row[i] * from_below
            } else {
                0.0
            };
            let left = if i > l {
                row[i - 1] * (m - i + 1) as f64
            } else {
                0.0
            };
            row[i] = if i == 0 && j == 0 {
                1.0
            } else {
                (up + left) * recip[total + 1 - i - j]
            };
        }
        // Cells of the previous row left of this row's band hold mass that
        // stepped out of the band upwards (counted with that row); clear
        // them.
        for cell in &mut row[prev_lo..prev_end.min(l)] {
            *cell = 0.0;
        }
        prev_lo = l;
        prev_end = end;
        if l == end {
            // Nothing stays inside: every path has left the band.
            continue;
        }
        let u = end - 1;
        // Right step out of the band from its last cell.
        if u < m {
            outside += row[u] * (m - u) as f64 * recip[total - u - j];
        }
        // Up steps into the next row, where the band has moved on.
        if j < n {
            let next_lo = lo(j + 1);
            let next_end = hi(j + 1).map_or(0, |v| v + 1).max(next_lo);
            for (i, &mass) in row.iter().enumerate().take(end).skip(l) {
                if i < next_lo || i >= next_end {
                    outside += mass * (n - j) as f64 * recip[total - i - j];
                }
            }
        }
    }
    outside
}

/// The exact p-value the way SciPy 1.18's `ks_2samp` obtains it, or `None`
/// where SciPy's exact computation fails and it falls back to the
/// asymptotic distribution (then with D rounded to h/lcm).
fn exact_p_value(n1: u64, n2: u64, h: u64) -> Option<f64> {
    if h == 0 {
        return Some(1.0);
    }
    let p = if n1 == n2 {
        exact_equal_sizes(n1, h)
    } else {
        exact_unequal_sizes(n1, n2, h)
    };
    if (0.0..=1.0).contains(&p) {
        Some(p)
    } else {
        None
    }
}

/// The asymptotic two-sided p-value of SciPy's `ks_2samp`: the exact
/// one-sample Kolmogorov distribution (`scipy.stats.kstwo`) of size
/// round(en), en = n₁n₂/(n₁ + n₂) (rounded half to even, as `np.round`),
/// at d; see [`crate::kolmogorov`].
fn asymptotic_p_value(n1: usize, n2: usize, d: f64) -> f64 {
    let (a, b) = if n1 >= n2 {
        (n1 as f64, n2 as f64)
    } else {
        (n2 as f64, n1 as f64)
    };
    let en = a * b / (a + b);
    let n = en.round_ties_even();
    if n < 1.0 {
        return f64::NAN;
    }
    kstwo_sf(n as u64, d)
}

/// The two-sided two-sample Kolmogorov–Smirnov test of `reference` against
/// `current`, agreeing with `scipy.stats.ks_2samp(reference, current)`
/// (SciPy 1.18.1, `method='auto'`) to about 1e-12 relative in the statistic
/// and 1e-9 in the p-value.
///
/// * Statistic: D = max over the pooled values v of |F_ref(v) − F_cur(v)|,
///   F the right-continuous empirical CDFs, so ties (within and across the
///   samples) are handled exactly.
/// * p-value, exact when both samples have at most [`KS_MAX_EXACT_N`]
///   observations: P(D' ≥ D) over all C(n₁+n₂, n₁) equally likely
///   interleavings (the permutation null; with ties it is the continuous
///   null and conservative, as in SciPy). Equal sizes use the closed
///   alternating series, unequal ones the lattice-path recursion; where the
///   series rounds outside [0, 1] (SciPy's "exact calculation
///   unsuccessful"), the asymptotic value at D = h/lcm is used, as SciPy
///   does.
/// * Otherwise asymptotic: `kstwo.sf(D, round(n₁n₂/(n₁+n₂)))`, the exact
///   finite-n one-sample distribution at the effective size, not the
///   limiting Kolmogorov distribution.
///
/// NaN observations are dropped first (SciPy would propagate them into a
/// NaN result). When a sample is empty after that the statistic and
/// p-value are NaN and the method is [`KsPValue::None`]. ±inf are ordinary
/// (extreme) observations.
pub fn ks_2samp(reference: &[f64], current: &[f64]) -> Ks {
    let a = sorted_finite_or_inf(reference);
    let b = sorted_finite_or_inf(current);
    if a.is_empty() || b.is_empty() {
        return Ks {
            statistic: f64::NAN,
            p_value: f64::NAN,
            method: KsPValue::None,
        };
    }
    let (n1, n2) = (a.len(), b.len());
    let (d, h) = statistic(&a, &b);
    if n1.max(n2) <= KS_MAX_EXACT_N {
        if let Some(p) = exact_p_value(n1 as u64, n2 as u64, h) {
            return Ks {
                statistic: d,
                p_value: p.clamp(0.0, 1.0),
                method: KsPValue::Exact,
            };
        }
        let g = gcd(n1 as u64, n2 as u64);
        let lcm = (n1 as u64 / g) * n2 as u64;
        let rounded = h as f64 / lcm as f64;
        return Ks {
            statistic: d,
            p_value: asymptotic_p_value(n1, n2, rounded).clamp(0.0, 1.0),
            method: KsPValue::Asymptotic,
        };
    }
    Ks {
        statistic: d,
        p_value: asymptotic_p_value(n1, n2, d).clamp(0.0, 1.0),
        method: KsPValue::Asymptotic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    /// The exact p-value by brute force over all interleavings, for tiny
    /// samples: count sign sequences whose running difference reaches h.
    fn brute_force(m: u64, n: u64, h: u64) -> f64 {
        let g = gcd(m, n);
        let (mg, ng) = (m / g, n / g);
        let total = m + n;
        let mut hit = 0u64;
        let mut all = 0u64;
        for mask in 0u64..(1 << total) {
            if mask.count_ones() as u64 != m {
                continue;
            }
            all += 1;
            let (mut i, mut j) = (0u64, 0u64);
            let mut out = false;
            for bit in 0..total {
                if mask >> bit & 1 == 1 {
                    i += 1;
                } else {
                    j += 1;
                }
                if (i * ng).abs_diff(j * mg) >= h {
                    out = true;
                }
            }
            if out {
                hit += 1;
            }
        }
        hit as f64 / all as f64
    }

    #[test]
    fn exact_distribution_matches_brute_force() {
        for (m, n) in [(3u64, 5u64), (4, 6), (5, 7), (2, 9), (6, 6), (7, 7), (1, 4)] {
            let lcm = m / gcd(m, n) * n;
            for h in 1..=lcm {
                let want = brute_force(m, n, h);
                let got = if m == n {
                    exact_equal_sizes(m, h)
                } else {
                    exact_unequal_sizes(m, n, h)
                };
                assert!(
                    (got - want).abs() <= 1e-13 * want.max(1e-300) + 1e-15,
                    "m={m} n={n} h={h}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn hand_computed_small_case() {
        // ref = [1, 2, 3], cur = [4, 5]: complete separation, D = 1;
        // P = 2 / C(5, 2) = 0.2 (both orders are as extreme).
        let r = ks_2samp(&[1.0, 2.0, 3.0], &[4.0, 5.0]);
        assert_eq!(r.statistic, 1.0);
        assert!(close(r.p_value, 0.2, 1e-14));
        assert_eq!(r.method, KsPValue::Exact);
        // Identical samples: D = 0, p = 1.
        let r = ks_2samp(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]);
        assert_eq!((r.statistic, r.p_value), (0.0, 1.0));
    }

    #[test]
    fn ties_are_evaluated_after_the_whole_tie() {
        // ref = [0, 0, 1, 1], cur = [0, 1, 1, 1]: at 0, 2/4 vs 1/4 → 0.25.
        let r = ks_2samp(&[0.0, 0.0, 1.0, 1.0], &[0.0, 1.0, 1.0, 1.0]);
        assert!(close(r.statistic, 0.25, 1e-15));
        // scipy.stats.ks_2samp([0,0,1,1],[0,1,1,1]).pvalue == 1.0
        assert_eq!(r.p_value, 1.0);
    }

    #[test]
    fn scipy_reference_values() {
        // scipy.stats.ks_2samp(a, b), SciPy 1.18.1, a = [0..9], b = a + 3.5.
        let a: Vec<f64> = (0..10).map(f64::from).collect();
        let b: Vec<f64> = (0..12).map(|x| f64::from(x) + 3.5).collect();
        let r = ks_2samp(&a, &b);
        assert!(close(r.statistic, 0.5, 1e-15), "{}", r.statistic);
        assert!(
            close(r.p_value, 0.092_702_962_672_002_93, 1e-12),
            "{}",
            r.p_value
        );
    }

    #[test]
    fn empty_and_nan_inputs() {
        let r = ks_2samp(&[], &[1.0]);
        assert!(r.statistic.is_nan() && r.p_value.is_nan());
        assert_eq!(r.method, KsPValue::None);
        let r = ks_2samp(&[f64::NAN, f64::NAN], &[1.0]);
        assert!(r.p_value.is_nan());
        // NaN dropped: same as without it.
        let with = ks_2samp(&[1.0, f64::NAN, 2.0], &[3.0, 4.0]);
        let without = ks_2samp(&[1.0, 2.0], &[3.0, 4.0]);
        assert_eq!(with, without);
    }

    #[test]
    fn constant_and_extreme_values() {
        let r = ks_2samp(&[5.0; 100], &[5.0; 50]);
        assert_eq!((r.statistic, r.p_value), (0.0, 1.0));
        let r = ks_2samp(
            &[f64::MAX, f64::MIN, f64::INFINITY],
            &[f64::NEG_INFINITY, 0.0],
        );
        assert!(r.statistic > 0.0 && (0.0..=1.0).contains(&r.p_value));
        // Large complete separation: p underflows towards 0 but stays a
        // probability.
        let a: Vec<f64> = (0..3000).map(f64::from).collect();
        let b: Vec<f64> = (0..4000).map(|x| f64::from(x) + 1e6).collect();
        let r = ks_2samp(&a, &b);
        assert_eq!(r.statistic, 1.0);
        assert!((0.0..1e-300).contains(&r.p_value));
    }

    #[test]
    fn asymptotic_above_the_exact_limit() {
        let a: Vec<f64> = (0..10_001).map(|x| f64::from(x) * 0.5).collect();
        let b: Vec<f64> = (0..200).map(|x| f64::from(x) * 25.0 + 0.25).collect();
        let r = ks_2samp(&a, &b);
        assert_eq!(r.method, KsPValue::Asymptotic);
        assert!((0.0..=1.0).contains(&r.p_value));
    }
}
