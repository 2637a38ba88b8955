//! Evaluation metrics for `sluice models validate`: how good a model
//! version's answers are on a labelled dataset, how evenly that quality is
//! spread across groups of rows, and latency percentiles. Pure computation
//! in `f64`, no I/O; the CLI runs the model and feeds the answers here.
//!
//! The definitions follow scikit-learn's (1.9), which `tests/validation/`
//! checks end to end to 1e-9, and the textbook (Hardt et al. 2016,
//! fairlearn) definitions of the fairness metrics:
//!
//! * Classification ([`accuracy`], [`Confusion`], [`binary_prf`],
//!   [`macro_prf`], [`roc_auc`], [`roc_auc_ovr_macro`], [`log_loss`]).
//!   Classes are indices `0..K`; a prediction is the arg-max of a row of
//!   scores ([`argmax_rows`], the first on ties, like NumPy's `argmax`).
//!   Precision, recall and F1 are those of one positive class for a binary
//!   model, and their unweighted mean over the classes present in the
//!   labels or the predictions for a multiclass one (scikit-learn's
//!   `average="macro"`). A ratio whose denominator is 0 (no predicted
//!   positives for precision, no actual positives for recall) is 0, as with
//!   scikit-learn's default `zero_division`.
//! * Regression ([`mae`], [`rmse`], [`r2`]).
//! * Fairness across groups ([`GroupRates`], [`demographic_parity`],
//!   [`equalized_odds_difference`]).
//! * Latency ([`percentile`]).
//!
//! A metric that is undefined on its input (an empty sample, a single
//! class for ROC AUC, values that are not probabilities for log loss) is
//! `None` or NaN, never a panic; each function says which.

#![warn(missing_docs)]

/// The counts of a binary confusion matrix, for one positive class against
/// all others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Confusion {
    /// Positive and predicted positive.
    pub tp: u64,
    /// Negative but predicted positive.
    pub fp: u64,
    /// Negative and predicted negative.
    pub tn: u64,
    /// Positive but predicted negative.
    pub fn_: u64,
}

impl Confusion {
    /// Counts `positive` against every other class over the pairs of
    /// `y_true` and `y_pred` (the shorter length wins).
    pub fn of(y_true: &[usize], y_pred: &[usize], positive: usize) -> Confusion {
        let mut c = Confusion::default();
        for (&t, &p) in y_true.iter().zip(y_pred) {
            match (t == positive, p == positive) {
                (true, true) => c.tp += 1,
                (false, true) => c.fp += 1,
                (false, false) => c.tn += 1,
                (true, false) => c.fn_ += 1,
            }
        }
        c
    }

    /// Rows counted.
    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    /// `tp / (tp + fp)`; 0 when nothing was predicted positive.
    pub fn precision(&self) -> f64 {
        ratio_or_zero(self.tp, self.tp + self.fp)
    }

    /// `tp / (tp + fn)`; 0 when there are no actual positives.
    pub fn recall(&self) -> f64 {
        ratio_or_zero(self.tp, self.tp + self.fn_)
    }

    /// `2·tp / (2·tp + fp + fn)` (the harmonic mean of precision and
    /// recall); 0 when there are neither actual nor predicted positives.
    pub fn f1(&self) -> f64 {
        ratio_or_zero(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// True positive rate `tp / (tp + fn)`; `None` (undefined) when there
    /// are no actual positives.
    pub fn tpr(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// False positive rate `fp / (fp + tn)`; `None` (undefined) when there
    /// are no actual negatives.
    pub fn fpr(&self) -> Option<f64> {
        ratio(self.fp, self.fp + self.tn)
    }

    /// Share of rows predicted positive `(tp + fp) / n`; `None` for no rows.
    pub fn selection_rate(&self) -> Option<f64> {
        ratio(self.tp + self.fp, self.total())
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

fn ratio_or_zero(num: u64, den: u64) -> f64 {
    ratio(num, den).unwrap_or(0.0)
}

/// Share of rows whose prediction equals the label; NaN for no rows.
pub fn accuracy(y_true: &[usize], y_pred: &[usize]) -> f64 {
    let n = y_true.len().min(y_pred.len());
    if n == 0 {
        return f64::NAN;
    }
    let hits = y_true.iter().zip(y_pred).filter(|(t, p)| t == p).count();
    hits as f64 / n as f64
}

/// Precision, recall and F1 together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prf {
    /// See [`Confusion::precision`].
    pub precision: f64,
    /// See [`Confusion::recall`].
    pub recall: f64,
    /// See [`Confusion::f1`].
    pub f1: f64,
}

/// Precision, recall and F1 of the class `positive` (scikit-learn's
/// `average="binary"`, `pos_label=positive`).
pub fn binary_prf(y_true: &[usize], y_pred: &[usize], positive: usize) -> Prf {
    let c = Confusion::of(y_true, y_pred, positive);
    Prf {
        precision: c.precision(),
        recall: c.recall(),
        f1: c.f1(),
    }
}

/// The unweighted means of each class's precision, recall and F1, over
/// the classes that occur in `y_true` or `y_pred` (scikit-learn's
/// `average="macro"`: the macro F1 is the mean of the per-class F1s, not
/// the harmonic mean of the macro precision and recall). NaN for no rows.
pub fn macro_prf(y_true: &[usize], y_pred: &[usize]) -> Prf {
    let mut classes: Vec<usize> = y_true.iter().chain(y_pred).copied().collect();
    classes.sort_unstable();
    classes.dedup();
    if classes.is_empty() {
        return Prf {
            precision: f64::NAN,
            recall: f64::NAN,
            f1: f64::NAN,
        };
    }
    let (mut p, mut r, mut f) = (0.0, 0.0, 0.0);
    for &k in &classes {
        let c = Confusion::of(y_true, y_pred, k);
        p += c.precision();
        r += c.recall();
        f += c.f1();
    }
    let k = classes.len() as f64;
    Prf {
        precision: p / k,
        recall: r / k,
        f1: f / k,
    }
}

/// The arg-max of each row of a row-major `rows × classes` matrix: the
/// first index of the largest value (NaN is never the largest). An empty
/// result for `classes == 0`.
pub fn argmax_rows(scores: &[f64], classes: usize) -> Vec<usize> {
    if classes == 0 {
        return Vec::new();
    }
    scores
        .chunks_exact(classes)
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
                    best = i;
                }
            }
            best
        })
        .collect()
}

/// The area under the ROC curve of `scores` for telling `positive` rows
/// from the others: the probability that a random positive scores higher
/// than a random negative, ties counting one half (the Mann–Whitney U
/// statistic over `P·N`, computed with average ranks; equal to
/// scikit-learn's trapezoidal `roc_auc_score`). `None` when there are no
/// positives or no negatives, or a score is NaN.
pub fn roc_auc(positive: &[bool], scores: &[f64]) -> Option<f64> {
    let n = positive.len().min(scores.len());
    let (positive, scores) = (&positive[..n], &scores[..n]);
    if scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let pos = positive.iter().filter(|&&p| p).count();
    let neg = n - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the (1-based, tie-averaged) ranks of the positives, doubled
    // so that average ranks stay integers.
    let mut rank_sum_x2: u128 = 0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share the average (i + j + 2) / 2.
        let avg_x2 = (i + j + 2) as u128;
        let positives = order[i..=j].iter().filter(|&&k| positive[k]).count() as u128;
        rank_sum_x2 += avg_x2 * positives;
        i = j + 1;
    }
    let (p, q) = (pos as u128, neg as u128);
    // U = rank_sum - P(P+1)/2, all doubled.
    let u_x2 = rank_sum_x2 - p * (p + 1);
    Some(u_x2 as f64 / 2.0 / (p as f64 * q as f64))
}

/// The multiclass ROC AUC, one class against the rest, macro-averaged
/// (scikit-learn's `multi_class="ovr"`, `average="macro"`): the mean of
/// [`roc_auc`] of column `k` for telling class `k` from the others, over
/// the classes `k` for which it is defined (those present in `y_true`, if
/// not every row is of that class). `None` when it is defined for none.
/// `scores` is row-major, `y_true.len() × classes`.
pub fn roc_auc_ovr_macro(y_true: &[usize], scores: &[f64], classes: usize) -> Option<f64> {
    if classes == 0 || scores.len() != y_true.len() * classes {
        return None;
    }
    let mut sum = 0.0;
    let mut defined = 0usize;
    for k in 0..classes {
        let positive: Vec<bool> = y_true.iter().map(|&t| t == k).collect();
        let column: Vec<f64> = scores.chunks_exact(classes).map(|row| row[k]).collect();
        if let Some(auc) = roc_auc(&positive, &column) {
            sum += auc;
            defined += 1;
        }
    }
    (defined > 0).then(|| sum / defined as f64)
}

/// What [`log_loss`] clips probabilities to: `[EPS, 1 − EPS]`, with the
/// machine epsilon of `f64` (scikit-learn uses the epsilon of its input's
/// dtype; Sluice computes in `f64`).
pub const LOG_LOSS_EPS: f64 = f64::EPSILON;

/// Cross-entropy: the mean over rows of `−ln p`, `p` the probability the
/// row gives its true class, clipped to `[ε, 1 − ε]` ([`LOG_LOSS_EPS`]) as
/// scikit-learn's `log_loss` does (rows are not renormalised). `probs` is
/// row-major, `y_true.len() × classes`. `None` for no rows, a
/// probability outside `[0, 1]` or NaN (the outputs are scores, not
/// probabilities), or a label `>= classes`.
pub fn log_loss(y_true: &[usize], probs: &[f64], classes: usize) -> Option<f64> {
    if y_true.is_empty() || classes == 0 || probs.len() != y_true.len() * classes {
        return None;
    }
    if probs.iter().any(|p| !(0.0..=1.0).contains(p)) {
        return None;
    }
    let mut sum = 0.0;
    for (&t, row) in y_true.iter().zip(probs.chunks_exact(classes)) {
        let p = *row.get(t)?;
        sum -= p.clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS).ln();
    }
    Some(sum / y_true.len() as f64)
}

/// Mean absolute error; NaN for no rows.
pub fn mae(y_true: &[f64], y_pred: &[f64]) -> f64 {
    mean(y_true.iter().zip(y_pred).map(|(t, p)| (t - p).abs()))
}

/// Root mean squared error, `sqrt(mean((y − ŷ)²))`; NaN for no rows.
pub fn rmse(y_true: &[f64], y_pred: &[f64]) -> f64 {
    mean(y_true.iter().zip(y_pred).map(|(t, p)| (t - p) * (t - p))).sqrt()
}

/// The coefficient of determination `1 − SS_res / SS_tot`, `SS_res =
/// Σ(y − ŷ)²`, `SS_tot = Σ(y − ȳ)²`. As scikit-learn's `r2_score`: when
/// the labels are constant (`SS_tot = 0`) it is 1 for a perfect fit and 0
/// otherwise; NaN for fewer than two rows.
pub fn r2(y_true: &[f64], y_pred: &[f64]) -> f64 {
    let n = y_true.len().min(y_pred.len());
    if n < 2 {
        return f64::NAN;
    }
    let y_mean = mean(y_true[..n].iter().copied());
    let ss_res: f64 = y_true
        .iter()
        .zip(y_pred)
        .map(|(t, p)| (t - p) * (t - p))
        .sum();
    let ss_tot: f64 = y_true[..n]
        .iter()
        .map(|t| (t - y_mean) * (t - y_mean))
        .sum();
    if ss_tot == 0.0 {
        return if ss_res == 0.0 { 1.0 } else { 0.0 };
    }
    1.0 - ss_res / ss_tot
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

/// One group's rates for the fairness metrics, from its [`Confusion`] for
/// the positive class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupRates {
    /// Share of the group's rows predicted positive.
    pub selection_rate: f64,
    /// True positive rate; `None` when the group has no actual positives.
    pub tpr: Option<f64>,
    /// False positive rate; `None` when the group has no actual negatives.
    pub fpr: Option<f64>,
}

impl GroupRates {
    /// The rates of a group's confusion matrix; `None` for an empty group.
    pub fn of(c: &Confusion) -> Option<GroupRates> {
        Some(GroupRates {
            selection_rate: c.selection_rate()?,
            tpr: c.tpr(),
            fpr: c.fpr(),
        })
    }
}

/// Demographic parity across groups: the difference `max − min` and the
/// ratio `min / max` of their selection rates (the share of each group's
/// rows predicted positive). The ratio is 1 when every rate is 0 (no group
/// is selected more than another). `None` for no groups.
pub fn demographic_parity(selection_rates: &[f64]) -> Option<(f64, f64)> {
    let (min, max) = spread(selection_rates.iter().copied())?;
    let ratio = if max == 0.0 { 1.0 } else { min / max };
    Some((max - min, ratio))
}

/// The equalized odds difference: the larger of the spread (`max − min`
/// across groups) of the true positive rates and that of the false
/// positive rates. A group whose rate is undefined (no actual positives
/// for the TPR, no actual negatives for the FPR) is left out of that
/// rate's spread; a spread over a single group is 0. `None` when neither
/// rate is defined for any group.
pub fn equalized_odds_difference(groups: &[GroupRates]) -> Option<f64> {
    let tpr = spread(groups.iter().filter_map(|g| g.tpr)).map(|(lo, hi)| hi - lo);
    let fpr = spread(groups.iter().filter_map(|g| g.fpr)).map(|(lo, hi)| hi - lo);
    match (tpr, fpr) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The smallest and largest value; `None` when there is none (NaN values
/// are left out).
fn spread(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| !v.is_nan())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((f64::min(lo, v), f64::max(hi, v))),
        })
}

/// The `q`-th percentile (`0..=100`) of `values`, interpolating linearly
/// between the two nearest ranks (NumPy's default `percentile`). `None`
/// for no values; NaN values are left out.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let q = q.clamp(0.0, 100.0) / 100.0;
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn confusion_and_binary_scores() {
        let t = [1, 1, 1, 0, 0, 0, 0, 1];
        let p = [1, 0, 1, 1, 0, 0, 0, 1];
        let c = Confusion::of(&t, &p, 1);
        assert_eq!(
            c,
            Confusion {
                tp: 3,
                fp: 1,
                tn: 3,
                fn_: 1
            }
        );
        close(accuracy(&t, &p), 6.0 / 8.0);
        let prf = binary_prf(&t, &p, 1);
        close(prf.precision, 0.75);
        close(prf.recall, 0.75);
        close(prf.f1, 0.75);
        close(c.tpr().unwrap(), 0.75);
        close(c.fpr().unwrap(), 0.25);
        close(c.selection_rate().unwrap(), 0.5);
        // Class 0 as the positive one.
        let prf0 = binary_prf(&t, &p, 0);
        close(prf0.precision, 0.75);
    }

    #[test]
    fn zero_denominators_are_zero_or_undefined() {
        let c = Confusion::of(&[0, 0], &[0, 0], 1);
        assert_eq!(c.precision(), 0.0);
        assert_eq!(c.recall(), 0.0);
        assert_eq!(c.f1(), 0.0);
        assert_eq!(c.tpr(), None);
        assert_eq!(c.fpr(), Some(0.0));
        assert!(accuracy(&[], &[]).is_nan());
    }

    #[test]
    fn macro_averages_over_classes_seen() {
        // Classes 0, 1, 2 in the labels, 3 only predicted.
        let t = [0, 0, 1, 1, 2, 2];
        let p = [0, 1, 1, 1, 2, 3];
        // precision: c0 1/1, c1 2/3, c2 1/1, c3 0/1 -> (1 + 2/3 + 1 + 0)/4
        // recall:    c0 1/2, c1 2/2, c2 1/2, c3 0 (no positives) -> 2/4
        // f1:        c0 2/3, c1 4/5, c2 2/3, c3 0
        let m = macro_prf(&t, &p);
        close(m.precision, (1.0 + 2.0 / 3.0 + 1.0) / 4.0);
        close(m.recall, 0.5);
        close(m.f1, (2.0 / 3.0 + 0.8 + 2.0 / 3.0) / 4.0);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(
            argmax_rows(&[0.2, 0.8, 0.5, 0.5, f64::NAN, 0.1], 2),
            vec![1, 0, 1]
        );
    }

    #[test]
    fn auc_counts_ties_as_half() {
        // Positives 0.8, 0.4; negatives 0.4, 0.1, 0.9.
        // Pairs (pos > neg): 0.8 beats 0.4 and 0.1 (2), loses to 0.9;
        // 0.4 ties 0.4 (0.5), beats 0.1 (1), loses 0.9 -> 3.5 / 6.
        let pos = [true, true, false, false, false];
        let s = [0.8, 0.4, 0.4, 0.1, 0.9];
        close(roc_auc(&pos, &s).unwrap(), 3.5 / 6.0);
        assert_eq!(roc_auc(&[true, true], &[0.1, 0.2]), None);
        assert_eq!(roc_auc(&[true, false], &[f64::NAN, 0.2]), None);
        close(roc_auc(&[false, true], &[0.1, 0.2]).unwrap(), 1.0);
    }

    #[test]
    fn ovr_auc_is_the_mean_over_defined_classes() {
        let y = [0, 1, 2, 0];
        #[rustfmt::skip]
        let s = [
            0.7, 0.2, 0.1,
            0.2, 0.5, 0.3,
            0.3, 0.3, 0.4,
            0.4, 0.4, 0.2,
        ];
        // class 0: pos {0.7, 0.4} vs neg {0.2, 0.3}: 4/4 = 1
        // class 1: pos {0.5} vs {0.2, 0.3, 0.4}: 1
        // class 2: pos {0.4} vs {0.1, 0.3, 0.2}: 1
        close(roc_auc_ovr_macro(&y, &s, 3).unwrap(), 1.0);
        // Class 2 absent from the labels: left out.
        let y = [0, 1, 1, 0];
        // class 0: pos {0.7, 0.4} vs neg {0.2, 0.3} -> 1
        // class 1: pos {0.5, 0.3} vs neg {0.2, 0.4} -> (1 + 1 + 0 + 1... )
        //   0.5>0.2, 0.5>0.4, 0.3>0.2, 0.3<0.4 -> 3/4
        close(roc_auc_ovr_macro(&y, &s, 3).unwrap(), (1.0 + 0.75) / 2.0);
    }

    #[test]
    fn log_loss_clips_like_scikit_learn() {
        let y = [1, 0];
        let p = [0.2, 0.8, 0.6, 0.4];
        close(
            log_loss(&y, &p, 2).unwrap(),
            -(0.8f64.ln() + 0.6f64.ln()) / 2.0,
        );
        // A zero probability on the true class costs -ln(eps), not infinity.
        let loss = log_loss(&[0], &[0.0, 1.0], 2).unwrap();
        close(loss, -f64::EPSILON.ln());
        assert_eq!(log_loss(&[0], &[1.5, -0.5], 2), None);
        assert_eq!(log_loss(&[2], &[0.5, 0.5], 2), None);
        assert_eq!(log_loss(&[], &[], 2), None);
    }

    #[test]
    fn regression_metrics() {
        let y = [3.0, -0.5, 2.0, 7.0];
        let p = [2.5, 0.0, 2.0, 8.0];
        close(mae(&y, &p), 0.5);
        close(rmse(&y, &p), (0.375f64).sqrt());
        // scikit-learn's documented example: 0.948...
        // SS_res = 0.25 + 0.25 + 0 + 1 = 1.5; mean 2.875;
        // SS_tot = 0.015625 + 11.390625 + 0.765625 + 17.015625 = 29.1875
        close(r2(&y, &p), 1.0 - 1.5 / 29.1875);
        assert_eq!(r2(&[1.0, 1.0], &[1.0, 1.0]), 1.0);
        assert_eq!(r2(&[1.0, 1.0], &[1.0, 2.0]), 0.0);
        assert!(r2(&[1.0], &[1.0]).is_nan());
        assert!(mae(&[], &[]).is_nan());
    }

    #[test]
    fn demographic_parity_of_rates() {
        let (d, r) = demographic_parity(&[0.5, 0.2, 0.4]).unwrap();
        close(d, 0.3);
        close(r, 0.4);
        assert_eq!(demographic_parity(&[0.0, 0.0]), Some((0.0, 1.0)));
        assert_eq!(demographic_parity(&[]), None);
    }

    #[test]
    fn equalized_odds_skips_undefined_rates() {
        let g = |tpr, fpr| GroupRates {
            selection_rate: 0.0,
            tpr,
            fpr,
        };
        let groups = [
            g(Some(0.9), Some(0.1)),
            g(Some(0.6), Some(0.15)),
            g(None, Some(0.5)),
        ];
        // TPR spread 0.3 (the third group has no positives); FPR spread 0.4.
        close(equalized_odds_difference(&groups).unwrap(), 0.4);
        close(
            equalized_odds_difference(&groups[..2]).unwrap(),
            0.3_f64.max(0.05),
        );
        assert_eq!(equalized_odds_difference(&[g(None, None)]), None);
        assert_eq!(equalized_odds_difference(&[g(Some(0.2), None)]), Some(0.0));
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [4.0, 1.0, 3.0, 2.0];
        close(percentile(&v, 50.0).unwrap(), 2.5);
        close(percentile(&v, 90.0).unwrap(), 3.7);
        close(percentile(&v, 0.0).unwrap(), 1.0);
        close(percentile(&v, 100.0).unwrap(), 4.0);
        assert_eq!(percentile(&[], 50.0), None);
    }
}
