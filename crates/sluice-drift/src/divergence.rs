//! Distances between two binned distributions given as counts over the
//! same bins: the Population Stability Index and the Jensen–Shannon
//! distance.

/// NumPy's pairwise summation (`np.sum` of a contiguous float64 array):
/// plain below 8 values, eight interleaved partial sums up to 128, halves
/// (cut at a multiple of 8) above. Summing in the same order as SciPy makes
/// the Jensen–Shannon distance agree with it to the last bits even when the
/// two distributions are nearly equal and the sum cancels.
pub(crate) fn numpy_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut r = 0.0;
        for &x in a {
            r += x;
        }
        r
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for (j, acc) in r.iter_mut().enumerate() {
                *acc += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        numpy_sum(&a[..n2]) + numpy_sum(&a[n2..])
    }
}

/// Counts as proportions of their total; `None` when the total is 0.
fn proportions(counts: &[u64]) -> Option<Vec<f64>> {
    let as_f: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    let total = numpy_sum(&as_f);
    if total <= 0.0 {
        return None;
    }
    Some(as_f.into_iter().map(|c| c / total).collect())
}

/// The proportion that stands in for an empty bin in [`psi`]: 0.0001, or,
/// when the smallest non-empty proportion is itself at most 0.0001, that
/// proportion divided by 10⁶. This is Evidently's rule (`get_binned_data`
/// with `feel_zeroes=True`, `evidently/legacy/calculations/stattests/
/// utils.py`), applied to each distribution separately.
pub const PSI_EMPTY_BIN_PROPORTION: f64 = 1e-4;

fn fill_zeroes(p: &mut [f64]) {
    let min_nonzero = p
        .iter()
        .copied()
        .filter(|&x| x != 0.0)
        .fold(f64::INFINITY, f64::min);
    if !min_nonzero.is_finite() {
        return;
    }
    let fill = if min_nonzero <= PSI_EMPTY_BIN_PROPORTION {
        min_nonzero / 1e6
    } else {
        PSI_EMPTY_BIN_PROPORTION
    };
    for x in p.iter_mut() {
        if *x == 0.0 {
            *x = fill;
        }
    }
}

/// The Population Stability Index of the current distribution against the
/// reference over the same bins:
/// PSI = Σᵢ (rᵢ − cᵢ) · ln(rᵢ / cᵢ), rᵢ and cᵢ the proportions of the
/// reference and current counts in bin i (a symmetrised Kullback–Leibler
/// divergence, ≥ 0, 0 for identical proportions). Conventional reading:
/// < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 major shift.
///
/// An empty bin would make a term infinite, so zero proportions are
/// replaced first by [`PSI_EMPTY_BIN_PROPORTION`] (Evidently's rule, see
/// there). NaN when the slices differ in length or either has no counts.
pub fn psi(ref_counts: &[u64], cur_counts: &[u64]) -> f64 {
    if ref_counts.len() != cur_counts.len() {
        return f64::NAN;
    }
    let (Some(mut r), Some(mut c)) = (proportions(ref_counts), proportions(cur_counts)) else {
        return f64::NAN;
    };
    fill_zeroes(&mut r);
    fill_zeroes(&mut c);
    let terms: Vec<f64> = r
        .iter()
        .zip(&c)
        .map(|(&a, &b)| (a - b) * (a / b).ln())
        .collect();
    numpy_sum(&terms)
}

/// x·ln(x/y) with 0·ln(0/y) = 0 (SciPy's `scipy.special.rel_entr`, for the
/// non-negative arguments it gets here).
fn rel_entr(x: f64, y: f64) -> f64 {
    if x > 0.0 && y > 0.0 {
        x * (x / y).ln()
    } else if x == 0.0 && y >= 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// The Jensen–Shannon distance between the distributions of two count
/// vectors over the same bins, with natural logarithms:
/// JS = √(½ KL(p ‖ m) + ½ KL(q ‖ m)), m = (p + q)/2, p and q the counts
/// normalised to sum to 1. It is a metric, symmetric, 0 for identical
/// proportions and at most √ln 2 ≈ 0.8326 for disjoint ones; empty bins
/// need no smoothing (0·ln 0 = 0).
///
/// Computed as `scipy.spatial.distance.jensenshannon(ref_counts,
/// cur_counts)` (default base e) computes it, in the same order, so the two
/// agree to ~1e-15. NaN when the slices differ in length or either has no
/// counts. A divergence that rounds below zero gives 0 (SciPy would give
/// NaN).
pub fn js_distance(ref_counts: &[u64], cur_counts: &[u64]) -> f64 {
    if ref_counts.len() != cur_counts.len() {
        return f64::NAN;
    }
    let (Some(p), Some(q)) = (proportions(ref_counts), proportions(cur_counts)) else {
        return f64::NAN;
    };
    let m: Vec<f64> = p.iter().zip(&q).map(|(a, b)| (a + b) / 2.0).collect();
    let left: Vec<f64> = p.iter().zip(&m).map(|(&a, &b)| rel_entr(a, b)).collect();
    let right: Vec<f64> = q.iter().zip(&m).map(|(&a, &b)| rel_entr(a, b)).collect();
    let js = numpy_sum(&left) + numpy_sum(&right);
    (js / 2.0).max(0.0).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_sum_orders() {
        assert_eq!(numpy_sum(&[]), 0.0);
        assert_eq!(numpy_sum(&[1.0, 2.0, 3.0]), 6.0);
        let v: Vec<f64> = (0..1000).map(f64::from).collect();
        assert_eq!(numpy_sum(&v), 499_500.0);
    }

    #[test]
    fn psi_hand_computed() {
        // r = [0.5, 0.5], c = [0.25, 0.75]:
        // 0.25 ln 2 + (-0.25) ln(2/3) = 0.25 ln 3
        let v = psi(&[50, 50], &[25, 75]);
        assert!((v - 0.25 * 3f64.ln()).abs() < 1e-15);
        assert_eq!(psi(&[3, 4], &[30, 40]), 0.0);
        // An empty current bin uses 1e-4 in its place:
        // r = [0.5, 0.5], c = [1e-4, 1] (counts [0, 10]).
        let v = psi(&[5, 5], &[0, 10]);
        let want = (0.5 - 1e-4) * (0.5f64 / 1e-4).ln() + (0.5 - 1.0) * 0.5f64.ln();
        assert!((v - want).abs() < 1e-12, "{v} {want}");
        assert!(psi(&[1], &[1, 2]).is_nan());
        assert!(psi(&[0, 0], &[1, 2]).is_nan());
    }

    #[test]
    fn js_hand_computed() {
        // scipy.spatial.distance.jensenshannon([1, 0], [0.5, 0.5]) = 0.46450140402245893
        assert!((js_distance(&[2, 0], &[1, 1]) - 0.464_501_404_022_458_93).abs() < 1e-15);
        // Disjoint: sqrt(ln 2).
        assert!((js_distance(&[1, 0], &[0, 3]) - 2f64.ln().sqrt()).abs() < 1e-15);
        assert_eq!(js_distance(&[2, 4], &[1, 2]), 0.0);
        assert!(js_distance(&[], &[]).is_nan());
        assert!(js_distance(&[1, 2], &[0, 0]).is_nan());
    }
}
