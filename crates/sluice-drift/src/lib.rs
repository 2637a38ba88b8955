//! Drift statistics: how far a window of observed values is from a
//! reference, per feature, by the methods the drift literature uses. Pure
//! computation, no I/O; the collector feeds it.
//!
//! * Numeric features: the two-sample Kolmogorov–Smirnov test
//!   ([`ks_2samp`], agreeing with SciPy's `ks_2samp`, exact and
//!   asymptotic), the first Wasserstein distance ([`wasserstein`], raw and
//!   [normalised](wasserstein_normalised) by the reference's standard
//!   deviation), and PSI and the Jensen–Shannon distance over bins at the
//!   reference's quantiles ([`quantile_bins`], [`histogram`]).
//! * Categorical features: aligned counts ([`category_counts`]), the
//!   chi-square test of homogeneity ([`chi_square`]), PSI and
//!   Jensen–Shannon on the counts.
//! * Across features: Benjamini–Hochberg and Bonferroni corrections
//!   ([`benjamini_hochberg`], [`bonferroni`]).
//! * Decisions: [`drift`] / [`drift_categorical`] / [`drift_features`]
//!   pick each feature's method the way Evidently does by default
//!   ([`default_method`]), compute every method, correct the p-values,
//!   decide against [`Thresholds`] and rank the features.
//!
//! Every function takes any input without panicking: NaN values are
//! missing data and dropped; an empty sample gives NaN statistics and never
//! a drift verdict; constant samples and huge values are handled (see each
//! function). The agreement with SciPy 1.18.1 is checked end to end by
//! `tests/drift/` through `sluice drift compare`.

#![warn(missing_docs)]

mod binning;
mod chisq;
mod correction;
mod decision;
mod distance;
mod divergence;
pub mod kolmogorov;
mod ks;
pub mod special;

pub use binning::{CategoryCounts, category_counts, category_counts_f64, histogram, quantile_bins};
pub use chisq::{ChiSquare, chi_square};
pub use correction::{Correction, benjamini_hochberg, bonferroni};
pub use decision::{
    Bins, Feature, FeatureData, FeatureDrift, FeatureKind, Method, SMALL_REFERENCE_MAX, Thresholds,
    UnknownMethod, default_method, drift, drift_categorical, drift_features,
};
pub use distance::{WASSERSTEIN_STD_FLOOR, population_std, wasserstein, wasserstein_normalised};
pub use divergence::{PSI_EMPTY_BIN_PROPORTION, js_distance, psi};
pub use ks::{KS_MAX_EXACT_N, Ks, KsPValue, ks_2samp};
