//! Turning samples into counts: bins at reference quantiles for numeric
//! features, aligned category counts for categorical ones. PSI, the
//! Jensen–Shannon distance and the chi-square test work on these counts.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ks::sorted_finite_or_inf;

/// The q-quantile of sorted data by linear interpolation between order
/// statistics (Hyndman & Fan type 7, `numpy.quantile`'s default
/// `method='linear'`), with NumPy's arithmetic: virtual index
/// n·q + (1 − q) − 1 (NumPy's α + q(1 − α − β) with α = β = 1) and
/// interpolation a + t(b − a), or b − (b − a)(1 − t)
/// when t ≥ ½, so that the edges agree with NumPy's bit for bit in the
/// common cases.
fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let virtual_index = n as f64 * q + (1.0 - q) - 1.0;
    let below = virtual_index.floor();
    let t = virtual_index - below;
    let last = (n - 1) as f64;
    let lo = below.clamp(0.0, last) as usize;
    let hi = (below + 1.0).clamp(0.0, last) as usize;
    let (a, b) = (sorted[lo], sorted[hi]);
    if a == b {
        return a;
    }
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// Interior bin edges at the reference's quantiles 1/k, 2/k, …, (k−1)/k for
/// `n_bins` = k (linear interpolation, as `numpy.quantile`), NaN values
/// ignored, with repeated edges removed, so that heavily tied data gets
/// fewer, non-empty-by-construction bins instead of empty duplicates.
///
/// The bins these edges define are open-ended: (−∞, e₁), [e₁, e₂), …,
/// [e_last, +∞), so every value of either sample falls in exactly one bin
/// (see [`histogram`]). An empty reference or `n_bins` ≤ 1 gives no edges
/// (one bin holding everything).
pub fn quantile_bins(reference: &[f64], n_bins: usize) -> Vec<f64> {
    let sorted = sorted_finite_or_inf(reference);
    if sorted.is_empty() || n_bins <= 1 {
        return Vec::new();
    }
    let mut edges: Vec<f64> = Vec::with_capacity(n_bins - 1);
    for k in 1..n_bins {
        let e = quantile_sorted(&sorted, k as f64 / n_bins as f64);
        if e.is_nan() {
            continue;
        }
        if edges.last().is_none_or(|&last| e > last) {
            edges.push(e);
        }
    }
    edges
}

/// Counts of `values` in the bins defined by the interior `edges` (sorted
/// ascending, as [`quantile_bins`] makes them): `edges.len() + 1` counts,
/// bin i holding the values v with `edges[i−1] ≤ v < edges[i]` (the first bin
/// unbounded below, the last unbounded above), i.e. the bin index is the
/// number of edges ≤ v, NumPy's `searchsorted(edges, v, side='right')`.
/// NaN values are not counted.
pub fn histogram(values: &[f64], edges: &[f64]) -> Vec<u64> {
    let mut counts = vec![0u64; edges.len() + 1];
    for &v in values {
        if v.is_nan() {
            continue;
        }
        let i = edges.partition_point(|&e| e <= v);
        counts[i] += 1;
    }
    counts
}

/// Reference and current counts per category, aligned: `categories[i]` was
/// seen `reference[i]` times in the reference and `current[i]` times in the
/// current window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryCounts<T> {
    /// Every category seen in either sample, in ascending order.
    pub categories: Vec<T>,
    /// Reference count per category (0 for categories only the current
    /// window has).
    pub reference: Vec<u64>,
    /// Current count per category (0 for categories only the reference
    /// has).
    pub current: Vec<u64>,
}

/// Counts the categories of both samples on one shared list of categories,
/// the union of both, in ascending order. A category the reference never
/// saw is a category of its own with reference count 0 (that is how a new
/// value shows up as drift), not lumped into an "other" bucket.
pub fn category_counts<T: Ord + Clone>(reference: &[T], current: &[T]) -> CategoryCounts<T> {
    let mut map: BTreeMap<&T, (u64, u64)> = BTreeMap::new();
    for c in reference {
        map.entry(c).or_default().0 += 1;
    }
    for c in current {
        map.entry(c).or_default().1 += 1;
    }
    let mut out = CategoryCounts {
        categories: Vec::with_capacity(map.len()),
        reference: Vec::with_capacity(map.len()),
        current: Vec::with_capacity(map.len()),
    };
    for (c, (r, k)) in map {
        out.categories.push(c.clone());
        out.reference.push(r);
        out.current.push(k);
    }
    out
}

/// [`category_counts`] for numeric category codes (e.g. integer-coded
/// classes stored as f64): NaN values are dropped, −0 and +0 are one
/// category, and categories are ordered numerically.
pub fn category_counts_f64(reference: &[f64], current: &[f64]) -> CategoryCounts<f64> {
    // Keys as ordered bit patterns of canonical values.
    fn key(v: f64) -> Option<i64> {
        if v.is_nan() {
            return None;
        }
        let v = if v == 0.0 { 0.0 } else { v };
        let bits = v.to_bits() as i64;
        // Order-preserving transform of IEEE 754 bits.
        Some(if bits < 0 { bits ^ i64::MAX } else { bits })
    }
    let mut map: BTreeMap<i64, (f64, u64, u64)> = BTreeMap::new();
    for &v in reference {
        if let Some(k) = key(v) {
            map.entry(k)
                .or_insert((if v == 0.0 { 0.0 } else { v }, 0, 0))
                .1 += 1;
        }
    }
    for &v in current {
        if let Some(k) = key(v) {
            map.entry(k)
                .or_insert((if v == 0.0 { 0.0 } else { v }, 0, 0))
                .2 += 1;
        }
    }
    let mut out = CategoryCounts {
        categories: Vec::with_capacity(map.len()),
        reference: Vec::with_capacity(map.len()),
        current: Vec::with_capacity(map.len()),
    };
    for (_, (v, r, c)) in map {
        out.categories.push(v);
        out.reference.push(r);
        out.current.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_edges_like_numpy() {
        let r: Vec<f64> = (1..=10).map(f64::from).collect();
        // np.quantile(1..10, [0.25, 0.5, 0.75]) = [3.25, 5.5, 7.75]
        assert_eq!(quantile_bins(&r, 4), vec![3.25, 5.5, 7.75]);
        // Deciles of 0..=100 are exactly 10, 20, ... 90.
        let r: Vec<f64> = (0..=100).map(f64::from).collect();
        let e = quantile_bins(&r, 10);
        assert_eq!(e.len(), 9);
        for (k, v) in e.iter().enumerate() {
            assert!((v - 10.0 * (k + 1) as f64).abs() < 1e-12);
        }
    }

    #[test]
    fn ties_deduplicate_edges() {
        let r = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 3.0, 3.0];
        let e = quantile_bins(&r, 5);
        // np.quantile(r, [0.2, 0.4, 0.6, 0.8]) = [1, 1, 1, 2.2]
        assert_eq!(e.len(), 2);
        assert_eq!(e[0], 1.0);
        assert!((e[1] - 2.2).abs() < 1e-12);
        assert!(quantile_bins(&[4.0; 20], 10) == vec![4.0]);
        assert!(quantile_bins(&[], 10).is_empty());
        assert!(quantile_bins(&[1.0, 2.0], 1).is_empty());
        assert!(quantile_bins(&[f64::NAN], 3).is_empty());
    }

    #[test]
    fn histogram_is_open_ended_and_right_closed_at_edges() {
        let edges = [1.0, 2.0];
        let c = histogram(
            &[-1e300, 0.5, 1.0, 1.5, 2.0, 9.0, f64::INFINITY, f64::NAN],
            &edges,
        );
        assert_eq!(c, vec![2, 2, 3]);
        assert_eq!(histogram(&[1.0, 2.0], &[]), vec![2]);
    }

    #[test]
    fn categories_align_and_keep_unseen_ones() {
        let c = category_counts(&["a", "b", "a"], &["b", "c", "c"]);
        assert_eq!(c.categories, vec!["a", "b", "c"]);
        assert_eq!(c.reference, vec![2, 1, 0]);
        assert_eq!(c.current, vec![0, 1, 2]);
        let c = category_counts::<String>(&[], &[]);
        assert!(c.categories.is_empty());
        let c = category_counts_f64(&[1.0, -0.0, f64::NAN, 2.0], &[0.0, -3.0]);
        assert_eq!(c.categories, vec![-3.0, 0.0, 1.0, 2.0]);
        assert_eq!(c.reference, vec![0, 1, 1, 1]);
        assert_eq!(c.current, vec![1, 1, 0, 0]);
    }
}
