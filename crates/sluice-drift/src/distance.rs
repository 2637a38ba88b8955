//! The first Wasserstein distance between two samples, raw and normalised
//! by the reference's spread.

use crate::ks::sorted_finite_or_inf;

/// The floor under the reference standard deviation in
/// [`wasserstein_normalised`]: Evidently's "Wasserstein distance (normed)"
/// divides by `max(np.std(reference), 0.001)`
/// (`evidently/legacy/calculations/stattests/wasserstein_distance_norm.py`).
pub const WASSERSTEIN_STD_FLOOR: f64 = 0.001;

/// The first Wasserstein (earth mover's) distance between the empirical
/// distributions of `reference` and `current`:
/// W₁ = ∫ |F_ref(x) − F_cur(x)| dx, the area between the two empirical
/// CDFs, computed exactly over the sorted pooled values (what
/// `scipy.stats.wasserstein_distance(reference, current)` computes, in the
/// units of the data).
///
/// NaN observations are dropped; NaN if a sample is then empty. Infinite
/// observations give +inf when mass has to move to infinity (a stretch of
/// infinite length where the CDFs agree contributes 0, where SciPy would
/// give NaN).
pub fn wasserstein(reference: &[f64], current: &[f64]) -> f64 {
    let a = sorted_finite_or_inf(reference);
    let b = sorted_finite_or_inf(current);
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut total = 0.0f64;
    let mut prev: Option<f64> = None;
    let mut cdf_gap = 0.0f64;
    while i < a.len() || j < b.len() {
        let v = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) => x.min(y),
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => break,
        };
        if let Some(p) = prev
            && cdf_gap != 0.0
        {
            total += cdf_gap * (v - p);
        }
        while i < a.len() && a[i] <= v {
            i += 1;
        }
        while j < b.len() && b[j] <= v {
            j += 1;
        }
        cdf_gap = (i as f64 / na - j as f64 / nb).abs();
        prev = Some(v);
    }
    total
}

/// The population standard deviation (ddof = 0, as `np.std`) of the
/// non-NaN values, computed in two passes on values scaled by their largest
/// magnitude so that huge values neither overflow nor lose the spread.
/// NaN for an empty sample; 0 for a constant one; NaN when a value is
/// infinite.
pub fn population_std(values: &[f64]) -> f64 {
    let v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    let scale = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    if scale.is_infinite() {
        return f64::NAN;
    }
    if scale == 0.0 {
        return 0.0;
    }
    let n = v.len() as f64;
    let mean = v.iter().map(|x| x / scale).sum::<f64>() / n;
    let var = v
        .iter()
        .map(|x| {
            let d = x / scale - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    var.sqrt() * scale
}

/// [`wasserstein`] divided by the reference's spread, so that one threshold
/// (0.1 by default) means the same for every feature whatever its units:
/// W₁(ref, cur) / max(σ_ref, 0.001), σ_ref the population standard
/// deviation (ddof = 0) of the reference.
///
/// This is Evidently's "Wasserstein distance (normed)", its default drift
/// method for numeric columns with more than 1000 reference observations,
/// including its floor of 0.001 under σ_ref ([`WASSERSTEIN_STD_FLOOR`]):
/// for a constant reference the result is the raw distance times 1000
/// rather than an infinity or a 0/0, and any move away from the constant
/// counts as drift once it exceeds a ten-thousandth of a unit at the
/// default threshold. NaN where [`wasserstein`] is NaN.
pub fn wasserstein_normalised(reference: &[f64], current: &[f64]) -> f64 {
    let w = wasserstein(reference, current);
    if w.is_nan() {
        return w;
    }
    let std = population_std(reference);
    let norm = if std.is_nan() {
        WASSERSTEIN_STD_FLOOR
    } else {
        std.max(WASSERSTEIN_STD_FLOOR)
    };
    w / norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_distances() {
        // Moving a point mass by 3.
        assert_eq!(wasserstein(&[0.0], &[3.0]), 3.0);
        // [0, 1] vs [0, 2]: CDFs differ by 1/2 on [1, 2): 0.5.
        assert_eq!(wasserstein(&[0.0, 1.0], &[0.0, 2.0]), 0.5);
        // scipy.stats.wasserstein_distance([0, 1, 3], [5, 6, 8]) == 5.0
        assert_eq!(wasserstein(&[0.0, 1.0, 3.0], &[5.0, 6.0, 8.0]), 5.0);
        // Different sizes: [1, 2, 3] vs [2]: ∫|F - G| = 1/3 + 1/3 = 2/3.
        assert!((wasserstein(&[1.0, 2.0, 3.0], &[2.0]) - 2.0 / 3.0).abs() < 1e-15);
        // Symmetric.
        assert_eq!(
            wasserstein(&[0.0, 1.0, 3.0], &[2.0, 7.0]),
            wasserstein(&[2.0, 7.0], &[0.0, 1.0, 3.0])
        );
    }

    #[test]
    fn normalised_by_reference_std_with_evidently_floor() {
        // reference [0, 2]: std 1; W([0,2],[1,3]) = 1.
        assert_eq!(wasserstein_normalised(&[0.0, 2.0], &[1.0, 3.0]), 1.0);
        // Constant reference: divided by the 0.001 floor.
        let w = wasserstein_normalised(&[5.0; 10], &[5.001; 10]);
        assert!((w - 1.0).abs() < 1e-9, "{w}");
        assert_eq!(wasserstein_normalised(&[5.0; 10], &[5.0; 3]), 0.0);
    }

    #[test]
    fn edge_inputs() {
        assert!(wasserstein(&[], &[1.0]).is_nan());
        assert!(wasserstein(&[f64::NAN], &[1.0]).is_nan());
        assert_eq!(wasserstein(&[1.0, f64::NAN], &[1.0]), 0.0);
        assert_eq!(wasserstein(&[f64::INFINITY], &[f64::INFINITY]), 0.0);
        assert_eq!(wasserstein(&[0.0], &[f64::INFINITY]), f64::INFINITY);
        let w = wasserstein(&[1e300, -1e300], &[1e300, -1e300]);
        assert_eq!(w, 0.0);
        assert!(population_std(&[]).is_nan());
        assert_eq!(population_std(&[7.0, 7.0]), 0.0);
        assert!((population_std(&[1e300, -1e300]) - 1e300).abs() < 1e286);
        assert!(wasserstein_normalised(&[], &[]).is_nan());
    }
}
