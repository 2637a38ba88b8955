//! Multiple-testing corrections across the features of one comparison.
//!
//! Testing 50 features at p < 0.05 flags about 2.5 of them on pure noise;
//! adjusting the p-values for the number of tests keeps the share of false
//! alarms at the stated level.

use serde::{Deserialize, Serialize};

/// Which correction [`crate::drift`] applies to the p-values of the
/// p-value methods (KS, chi-square) before comparing them with their
/// threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    /// Benjamini–Hochberg: controls the false discovery rate (the expected
    /// share of flagged features that did not drift). The default: it keeps
    /// far more power than Bonferroni with many features.
    #[default]
    BenjaminiHochberg,
    /// Bonferroni: controls the family-wise error rate (the probability of
    /// any false flag); conservative.
    Bonferroni,
    /// Each feature on its own p-value.
    None,
}

impl Correction {
    /// Applies this correction (see [`benjamini_hochberg`],
    /// [`bonferroni`]).
    pub fn adjust(self, p_values: &[f64]) -> Vec<f64> {
        match self {
            Correction::BenjaminiHochberg => benjamini_hochberg(p_values),
            Correction::Bonferroni => bonferroni(p_values),
            Correction::None => p_values.to_vec(),
        }
    }
}

/// Benjamini–Hochberg adjusted p-values ("q-values"), in the order given:
/// with the m p-values sorted ascending, p₍ᵢ₎ · m/i, made monotone from the
/// largest down (each the minimum of itself and every later one), capped
/// at 1. Rejecting where the adjusted value is below α controls the false
/// discovery rate at α (Benjamini & Hochberg 1995, for independent or
/// positively dependent tests). Same arithmetic as
/// `scipy.stats.false_discovery_control(ps, method='bh')`.
///
/// NaN entries stay NaN and are not counted in m; values are clamped into
/// [0, 1] first (SciPy rejects them instead).
pub fn benjamini_hochberg(p_values: &[f64]) -> Vec<f64> {
    let mut out: Vec<f64> = p_values.to_vec();
    let mut idx: Vec<usize> = (0..p_values.len())
        .filter(|&i| !p_values[i].is_nan())
        .collect();
    let m = idx.len();
    if m <= 1 {
        for i in idx {
            out[i] = p_values[i].clamp(0.0, 1.0);
        }
        return out;
    }
    idx.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mf = m as f64;
    let mut adjusted: Vec<f64> = idx
        .iter()
        .enumerate()
        .map(|(rank, &i)| p_values[i].clamp(0.0, 1.0) * (mf / (rank + 1) as f64))
        .collect();
    for r in (0..m - 1).rev() {
        adjusted[r] = adjusted[r].min(adjusted[r + 1]);
    }
    for (r, &i) in idx.iter().enumerate() {
        out[i] = adjusted[r].clamp(0.0, 1.0);
    }
    out
}

/// Bonferroni adjusted p-values: min(1, m · p) with m the number of
/// non-NaN p-values; NaN stays NaN. Rejecting where the adjusted value is
/// below α keeps the probability of any false rejection at most α.
pub fn bonferroni(p_values: &[f64]) -> Vec<f64> {
    let m = p_values.iter().filter(|p| !p.is_nan()).count() as f64;
    p_values
        .iter()
        .map(|&p| {
            if p.is_nan() {
                p
            } else {
                (p.clamp(0.0, 1.0) * m).min(1.0)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bh_matches_scipy_examples() {
        // scipy.stats.false_discovery_control([0.5, 0.6, 0.1, 0.001])
        assert_eq!(
            benjamini_hochberg(&[0.5, 0.6, 0.1, 0.001]),
            vec![0.6, 0.6, 0.2, 0.004]
        );
        let got = benjamini_hochberg(&[0.04, 0.01, 0.03, 0.9]);
        let want = [
            0.053_333_333_333_333_33,
            0.04,
            0.053_333_333_333_333_33,
            0.9,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-16, "{got:?}");
        }
        for v in benjamini_hochberg(&[0.01, 0.02, 0.03, 0.04, 0.05]) {
            assert!((v - 0.05).abs() < 1e-16);
        }
    }

    #[test]
    fn bh_edges() {
        assert!(benjamini_hochberg(&[]).is_empty());
        assert_eq!(benjamini_hochberg(&[0.3]), vec![0.3]);
        let v = benjamini_hochberg(&[f64::NAN, 0.01, 0.02]);
        assert!(v[0].is_nan());
        assert_eq!(&v[1..], &[0.02, 0.02]);
        assert_eq!(benjamini_hochberg(&[1.0, 1.0]), vec![1.0, 1.0]);
        assert_eq!(benjamini_hochberg(&[0.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn bonferroni_caps_at_one() {
        assert_eq!(bonferroni(&[0.01, 0.5]), vec![0.02, 1.0]);
        let v = bonferroni(&[f64::NAN, 0.01]);
        assert!(v[0].is_nan() && v[1] == 0.01);
        assert_eq!(Correction::None.adjust(&[0.2]), vec![0.2]);
    }
}
