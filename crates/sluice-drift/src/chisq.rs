//! Pearson's chi-square test of homogeneity for a categorical feature.

use serde::Serialize;

use crate::special::chi2_sf;

/// The result of [`chi_square`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ChiSquare {
    /// Pearson's statistic Σ (O − E)² / E over the 2 × k table.
    pub statistic: f64,
    /// Degrees of freedom, k − 1 for the k categories kept.
    pub dof: u64,
    /// P(χ²_dof ≥ statistic); 1 when dof = 0.
    pub p_value: f64,
}

/// Pearson's chi-square test that the reference and current counts come
/// from the same categorical distribution: the 2 × k contingency table with
/// the two count vectors as rows, expected counts E = row total × column
/// total / grand total, statistic Σ (O − E)² / E, k − 1 degrees of freedom,
/// p-value from the chi-square survival function (see
/// [`crate::special::chi2_sf`]). This is
/// `scipy.stats.chi2_contingency(np.array([ref, cur]), correction=False)`.
///
/// * Categories where both counts are 0 are dropped first (they carry no
///   information, and SciPy refuses a table with a zero expected count).
/// * No continuity correction: SciPy's default `correction=True` applies
///   Yates' correction only when dof = 1 (two categories), which would make
///   binary features use a different, more conservative, test than the
///   others; without it the 2 × 2 case is exactly the two-proportion z-test
///   with pooled variance (z² = χ²), Evidently's default for binary
///   features.
/// * With a single category left (dof = 0) the statistic is 0 and the
///   p-value 1, as in SciPy.
/// * The slices are paired by position; if they differ in length the
///   missing counts are taken as 0. When either sample has no counts at all
///   there is nothing to compare: statistic and p-value NaN, dof 0.
pub fn chi_square(ref_counts: &[u64], cur_counts: &[u64]) -> ChiSquare {
    let k = ref_counts.len().max(cur_counts.len());
    let mut cols: Vec<(f64, f64)> = Vec::with_capacity(k);
    for i in 0..k {
        let r = ref_counts.get(i).copied().unwrap_or(0);
        let c = cur_counts.get(i).copied().unwrap_or(0);
        if r == 0 && c == 0 {
            continue;
        }
        cols.push((r as f64, c as f64));
    }
    let rt: f64 = cols.iter().map(|c| c.0).sum();
    let ct: f64 = cols.iter().map(|c| c.1).sum();
    if rt == 0.0 || ct == 0.0 {
        return ChiSquare {
            statistic: f64::NAN,
            dof: 0,
            p_value: f64::NAN,
        };
    }
    let dof = cols.len() as u64 - 1;
    if dof == 0 {
        return ChiSquare {
            statistic: 0.0,
            dof: 0,
            p_value: 1.0,
        };
    }
    let total = rt + ct;
    let mut stat = 0.0f64;
    for &(r, c) in &cols {
        let col = r + c;
        let er = rt * col / total;
        let ec = ct * col / total;
        stat += (r - er) * (r - er) / er + (c - ec) * (c - ec) / ec;
    }
    ChiSquare {
        statistic: stat,
        dof,
        p_value: chi2_sf(stat, dof as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_by_two_by_hand() {
        // [[10, 20], [20, 10]]: E = 15 everywhere, χ² = 4·25/15 = 20/3.
        let r = chi_square(&[10, 20], &[20, 10]);
        assert!((r.statistic - 20.0 / 3.0).abs() < 1e-13);
        assert_eq!(r.dof, 1);
        // chi2.sf(20/3, 1) = 0.009823274507519235
        assert!((r.p_value - 0.009_823_274_507_519_235).abs() < 1e-15);
    }

    #[test]
    fn zero_columns_dropped_and_degenerate_cases() {
        let a = chi_square(&[10, 0, 20, 5], &[20, 0, 10, 5]);
        let b = chi_square(&[10, 20, 5], &[20, 10, 5]);
        assert_eq!(a, b);
        assert_eq!(a.dof, 2);
        let one = chi_square(&[5, 0], &[7, 0]);
        assert_eq!((one.statistic, one.dof, one.p_value), (0.0, 0, 1.0));
        let empty = chi_square(&[0, 0], &[1, 2]);
        assert!(empty.statistic.is_nan() && empty.p_value.is_nan());
        let none = chi_square(&[], &[]);
        assert!(none.p_value.is_nan());
        // Identical proportions: χ² = 0, p = 1.
        let same = chi_square(&[10, 20, 30], &[20, 40, 60]);
        assert!(same.statistic.abs() < 1e-12 && (same.p_value - 1.0).abs() < 1e-12);
        // A category new in the current window.
        let new = chi_square(&[50, 50, 0], &[40, 40, 20]);
        assert!(new.p_value < 1e-4);
    }
}
