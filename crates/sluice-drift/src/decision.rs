//! Per-feature drift decisions: which method each feature gets, every
//! method's score, the multiple-testing correction across features, the
//! verdict, and the ranking.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::binning::{category_counts, category_counts_f64, histogram, quantile_bins};
use crate::chisq::chi_square;
use crate::correction::Correction;
use crate::distance::{wasserstein, wasserstein_normalised};
use crate::divergence::{js_distance, psi};
use crate::ks::ks_2samp;

/// What kind of values a feature holds, which decides the methods that
/// apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// Real values: KS, Wasserstein, and PSI / Jensen–Shannon over
    /// reference-quantile bins.
    Numeric,
    /// Labels (strings, or numbers used as codes): chi-square, and PSI /
    /// Jensen–Shannon over the categories.
    Categorical,
}

/// A drift method. The p-value methods ([`Method::Ks`],
/// [`Method::ChiSquare`]) flag drift when the (corrected) p-value is below
/// their threshold; the distance methods when the distance exceeds theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Two-sample Kolmogorov–Smirnov test ([`crate::ks_2samp`]); numeric.
    Ks,
    /// Population Stability Index ([`crate::psi`]); both kinds.
    Psi,
    /// Jensen–Shannon distance ([`crate::js_distance`]); both kinds.
    JensenShannon,
    /// Wasserstein distance normalised by the reference's standard
    /// deviation ([`crate::wasserstein_normalised`]); numeric.
    Wasserstein,
    /// Chi-square test of homogeneity ([`crate::chi_square`]);
    /// categorical.
    ChiSquare,
}

impl Method {
    /// Whether the method's score is judged through a p-value.
    pub fn is_p_value(self) -> bool {
        matches!(self, Method::Ks | Method::ChiSquare)
    }

    /// Whether the method can be computed for a feature of `kind`.
    pub fn applies_to(self, kind: FeatureKind) -> bool {
        match self {
            Method::Ks | Method::Wasserstein => kind == FeatureKind::Numeric,
            Method::ChiSquare => kind == FeatureKind::Categorical,
            Method::Psi | Method::JensenShannon => true,
        }
    }

    /// The method's name as the command line and JSON spell it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Ks => "ks",
            Method::Psi => "psi",
            Method::JensenShannon => "jensen_shannon",
            Method::Wasserstein => "wasserstein",
            Method::ChiSquare => "chi_square",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A method name that is not one of ks, psi, js (or jensen_shannon),
/// wasserstein, chi_square.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown drift method {0:?}: expected ks, psi, js, wasserstein or chi_square")]
pub struct UnknownMethod(pub String);

impl FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "ks" => Ok(Method::Ks),
            "psi" => Ok(Method::Psi),
            "js" | "jensen_shannon" | "jensenshannon" => Ok(Method::JensenShannon),
            "wasserstein" => Ok(Method::Wasserstein),
            "chi_square" | "chisquare" | "chi2" => Ok(Method::ChiSquare),
            _ => Err(UnknownMethod(s.to_string())),
        }
    }
}

/// The reference size up to which [`default_method`] picks a statistical
/// test, and above which a distance: Evidently's 1000 observations.
pub const SMALL_REFERENCE_MAX: usize = 1000;

/// The method a feature gets when none is asked for, following Evidently's
/// default data drift algorithm for tabular data
/// (docs: "Data drift algorithm", `_get_default_stattest` in
/// `evidently/legacy/calculations/stattests/registry.py`):
///
/// | reference size | numeric | categorical |
/// |---|---|---|
/// | ≤ 1000 | KS test (p < 0.05) | chi-square test (p < 0.05) |
/// | > 1000 | Wasserstein distance, normed (≥ 0.1) | Jensen–Shannon distance (≥ 0.1) |
///
/// Small samples get a test because it knows its own noise; large ones a
/// distance because with enough data every test rejects even trivial
/// shifts. Two simplifications: Evidently treats numeric columns with at
/// most 5 distinct values as categorical, which is left to the caller
/// (declare such a column categorical); and it uses a two-proportion z-test
/// for binary categorical columns, which [`crate::chi_square`] without
/// continuity correction equals exactly (χ² = z²).
pub fn default_method(kind: FeatureKind, reference_len: usize) -> Method {
    match (kind, reference_len <= SMALL_REFERENCE_MAX) {
        (FeatureKind::Numeric, true) => Method::Ks,
        (FeatureKind::Numeric, false) => Method::Wasserstein,
        (FeatureKind::Categorical, true) => Method::ChiSquare,
        (FeatureKind::Categorical, false) => Method::JensenShannon,
    }
}

/// Thresholds of the drift decision, per method, and the settings that go
/// with them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// KS: drift when the corrected p-value is below this. Default 0.05
    /// (Evidently: "all tests use a 0.95 confidence level by default").
    pub ks_p_value: f64,
    /// PSI: drift above this. Default 0.1, the usual "no significant
    /// change" bound of PSI and Evidently's default.
    pub psi: f64,
    /// Jensen–Shannon distance: drift above this. Default 0.1 (Evidently).
    pub js: f64,
    /// Normalised Wasserstein distance: drift above this. Default 0.1
    /// (Evidently): a tenth of a reference standard deviation.
    pub wasserstein: f64,
    /// Chi-square: drift when the corrected p-value is below this. Default
    /// 0.05 (Evidently).
    pub chi_square_p_value: f64,
    /// Number of reference-quantile bins for PSI and Jensen–Shannon on
    /// numeric features. Default 10 (deciles, the customary PSI binning).
    pub n_bins: usize,
    /// Correction of the p-values across the features of one comparison.
    /// Default Benjamini–Hochberg.
    pub correction: Correction,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            ks_p_value: 0.05,
            psi: 0.1,
            js: 0.1,
            wasserstein: 0.1,
            chi_square_p_value: 0.05,
            n_bins: 10,
            correction: Correction::BenjaminiHochberg,
        }
    }
}

impl Thresholds {
    /// The threshold of `method`.
    pub fn for_method(&self, method: Method) -> f64 {
        match method {
            Method::Ks => self.ks_p_value,
            Method::Psi => self.psi,
            Method::JensenShannon => self.js,
            Method::Wasserstein => self.wasserstein,
            Method::ChiSquare => self.chi_square_p_value,
        }
    }
}

/// The counts PSI and Jensen–Shannon were computed on, so that a reader
/// (or a test) can recompute them.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Bins {
    /// Numeric features: the interior bin edges ([`crate::quantile_bins`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<f64>,
    /// Categorical features: the category of each count.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// Reference count per bin or category.
    pub reference: Vec<u64>,
    /// Current count per bin or category.
    pub current: Vec<u64>,
}

/// The verdict on one feature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureDrift {
    /// The feature's name.
    pub feature: String,
    /// Numeric or categorical.
    pub kind: FeatureKind,
    /// The method the verdict is based on.
    pub method: Method,
    /// That method's score: the KS or chi-square statistic, or the
    /// distance. NaN (JSON null) when it could not be computed (an empty
    /// sample).
    pub score: f64,
    /// The p-value, for p-value methods.
    pub p_value: Option<f64>,
    /// The p-value after the correction across features, for p-value
    /// methods; this is what is compared with the threshold.
    pub adjusted_p_value: Option<f64>,
    /// The method's threshold.
    pub threshold: f64,
    /// Whether the feature drifted: for p-value methods the adjusted
    /// p-value is below the threshold, for distances the score is above it
    /// (Evidently uses ≥ for distances; equality has no weight for
    /// continuous scores). Never true for a NaN score or p-value.
    pub drifted: bool,
    /// Every applicable method's value for this feature: numeric
    /// `ks_statistic`, `ks_p_value`, `wasserstein`, `wasserstein_normed`,
    /// `psi`, `js`; categorical `chi_square`, `chi_square_p_value`,
    /// `chi_square_dof`, `psi`, `js`.
    pub all: BTreeMap<String, f64>,
    /// Observations in the reference after dropping missing values.
    pub n_reference: usize,
    /// Observations in the current window after dropping missing values.
    pub n_current: usize,
    /// The bins or categories PSI and Jensen–Shannon were computed on.
    pub bins: Bins,
}

impl FeatureDrift {
    /// How far past its threshold the feature is, on a scale where 1 is
    /// the threshold itself, comparable across methods: score / threshold
    /// for distances, ln p / ln threshold for p-values (so p = threshold²
    /// is 2); −inf when it could not be computed.
    pub fn severity(&self) -> f64 {
        if self.method.is_p_value() {
            let p = self.adjusted_p_value.or(self.p_value).unwrap_or(f64::NAN);
            if p.is_nan() {
                return f64::NEG_INFINITY;
            }
            if p <= 0.0 {
                return f64::INFINITY;
            }
            if self.threshold > 0.0 && self.threshold < 1.0 {
                p.ln() / self.threshold.ln()
            } else {
                1.0 - p
            }
        } else if self.score.is_nan() {
            f64::NEG_INFINITY
        } else if self.threshold > 0.0 {
            self.score / self.threshold
        } else {
            self.score
        }
    }
}

/// The values of one feature in both samples.
#[derive(Debug, Clone, Copy)]
pub enum FeatureData<'a> {
    /// Real values; NaN means missing and is dropped.
    Numeric {
        /// Reference sample.
        reference: &'a [f64],
        /// Current window.
        current: &'a [f64],
    },
    /// Numbers used as category codes; NaN means missing and is dropped.
    NumericCategories {
        /// Reference sample.
        reference: &'a [f64],
        /// Current window.
        current: &'a [f64],
    },
    /// String categories (an empty string is a category like any other).
    Categories {
        /// Reference sample.
        reference: &'a [String],
        /// Current window.
        current: &'a [String],
    },
}

/// One named feature for [`drift_features`].
#[derive(Debug, Clone, Copy)]
pub struct Feature<'a> {
    /// The feature's name.
    pub name: &'a str,
    /// Its values.
    pub data: FeatureData<'a>,
}

struct Scored {
    kind: FeatureKind,
    method: Method,
    score: f64,
    p_value: Option<f64>,
    all: BTreeMap<String, f64>,
    n_reference: usize,
    n_current: usize,
    bins: Bins,
}

fn score_categorical(
    categories: Vec<String>,
    reference: Vec<u64>,
    current: Vec<u64>,
    asked: Option<Method>,
) -> Scored {
    let n_reference = reference.iter().sum::<u64>() as usize;
    let n_current = current.iter().sum::<u64>() as usize;
    let chi = chi_square(&reference, &current);
    let psi_v = psi(&reference, &current);
    let js_v = js_distance(&reference, &current);
    let mut all = BTreeMap::new();
    all.insert("chi_square".to_string(), chi.statistic);
    all.insert("chi_square_p_value".to_string(), chi.p_value);
    all.insert("chi_square_dof".to_string(), chi.dof as f64);
    all.insert("psi".to_string(), psi_v);
    all.insert("js".to_string(), js_v);
    let method = asked
        .filter(|m| m.applies_to(FeatureKind::Categorical))
        .unwrap_or_else(|| default_method(FeatureKind::Categorical, n_reference));
    let (score, p_value) = match method {
        Method::ChiSquare => (chi.statistic, Some(chi.p_value)),
        Method::Psi => (psi_v, None),
        _ => (js_v, None),
    };
    Scored {
        kind: FeatureKind::Categorical,
        method,
        score,
        p_value,
        all,
        n_reference,
        n_current,
        bins: Bins {
            edges: Vec::new(),
            categories,
            reference,
            current,
        },
    }
}

fn score_numeric(
    reference: &[f64],
    current: &[f64],
    thresholds: &Thresholds,
    asked: Option<Method>,
) -> Scored {
    let n_reference = reference.iter().filter(|v| !v.is_nan()).count();
    let n_current = current.iter().filter(|v| !v.is_nan()).count();
    let ks = ks_2samp(reference, current);
    let w = wasserstein(reference, current);
    let wn = wasserstein_normalised(reference, current);
    let edges = quantile_bins(reference, thresholds.n_bins);
    let rc = histogram(reference, &edges);
    let cc = histogram(current, &edges);
    let psi_v = psi(&rc, &cc);
    let js_v = js_distance(&rc, &cc);
    let mut all = BTreeMap::new();
    all.insert("ks_statistic".to_string(), ks.statistic);
    all.insert("ks_p_value".to_string(), ks.p_value);
    all.insert("wasserstein".to_string(), w);
    all.insert("wasserstein_normed".to_string(), wn);
    all.insert("psi".to_string(), psi_v);
    all.insert("js".to_string(), js_v);
    let method = asked
        .filter(|m| m.applies_to(FeatureKind::Numeric))
        .unwrap_or_else(|| default_method(FeatureKind::Numeric, n_reference));
    let (score, p_value) = match method {
        Method::Ks => (ks.statistic, Some(ks.p_value)),
        Method::Psi => (psi_v, None),
        Method::JensenShannon => (js_v, None),
        _ => (wn, None),
    };
    Scored {
        kind: FeatureKind::Numeric,
        method,
        score,
        p_value,
        all,
        n_reference,
        n_current,
        bins: Bins {
            edges,
            categories: Vec::new(),
            reference: rc,
            current: cc,
        },
    }
}

/// Shortest text that reads back as the same number (for numeric category
/// labels).
fn label(v: f64) -> String {
    format!("{v}")
}

/// Drift of every feature, ranked most drifted first: each feature gets
/// `method` where it applies to its kind (KS and Wasserstein only to
/// numeric features, chi-square only to categorical ones; PSI and
/// Jensen–Shannon to both) and [`default_method`] otherwise or when
/// `method` is `None`; every applicable method's value is reported in
/// [`FeatureDrift::all`]. The p-values of the features judged by a p-value
/// method are corrected together ([`Thresholds::correction`]) before the
/// decision. Order: drifted first, then by [`FeatureDrift::severity`],
/// then by name.
pub fn drift_features(
    features: &[Feature<'_>],
    thresholds: &Thresholds,
    method: Option<Method>,
) -> Vec<FeatureDrift> {
    let scored: Vec<(String, Scored)> = features
        .iter()
        .map(|f| {
            let s = match f.data {
                FeatureData::Numeric { reference, current } => {
                    score_numeric(reference, current, thresholds, method)
                }
                FeatureData::NumericCategories { reference, current } => {
                    let c = category_counts_f64(reference, current);
                    let labels = c.categories.iter().map(|&v| label(v)).collect();
                    score_categorical(labels, c.reference, c.current, method)
                }
                FeatureData::Categories { reference, current } => {
                    let c = category_counts(reference, current);
                    score_categorical(c.categories, c.reference, c.current, method)
                }
            };
            (f.name.to_string(), s)
        })
        .collect();
    // Correct the p-values of the p-value methods together.
    let tested: Vec<usize> = (0..scored.len())
        .filter(|&i| scored[i].1.p_value.is_some())
        .collect();
    let raw: Vec<f64> = tested
        .iter()
        .map(|&i| scored[i].1.p_value.unwrap_or(f64::NAN))
        .collect();
    let adjusted = thresholds.correction.adjust(&raw);
    let mut adjusted_of: Vec<Option<f64>> = vec![None; scored.len()];
    for (k, &i) in tested.iter().enumerate() {
        adjusted_of[i] = adjusted.get(k).copied();
    }
    let mut out: Vec<FeatureDrift> = scored
        .into_iter()
        .zip(adjusted_of)
        .map(|((feature, s), adjusted_p_value)| {
            let threshold = thresholds.for_method(s.method);
            let drifted = match adjusted_p_value {
                Some(p) => p < threshold,
                None => s.score > threshold,
            };
            FeatureDrift {
                feature,
                kind: s.kind,
                method: s.method,
                score: s.score,
                p_value: s.p_value,
                adjusted_p_value,
                threshold,
                drifted,
                all: s.all,
                n_reference: s.n_reference,
                n_current: s.n_current,
                bins: s.bins,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.drifted
            .cmp(&a.drifted)
            .then_with(|| b.severity().total_cmp(&a.severity()))
            .then_with(|| a.feature.cmp(&b.feature))
    });
    out
}

/// [`drift_features`] with every feature's default method, for features
/// given as f64 samples: `(name, kind, reference, current)`. A
/// categorical feature here holds numeric category codes.
pub fn drift(
    features: &[(String, FeatureKind, &[f64], &[f64])],
    thresholds: &Thresholds,
) -> Vec<FeatureDrift> {
    let fs: Vec<Feature<'_>> = features
        .iter()
        .map(|(name, kind, reference, current)| Feature {
            name,
            data: match kind {
                FeatureKind::Numeric => FeatureData::Numeric { reference, current },
                FeatureKind::Categorical => FeatureData::NumericCategories { reference, current },
            },
        })
        .collect();
    drift_features(&fs, thresholds, None)
}

/// [`drift_features`] with every feature's default method, for
/// categorical features with string categories: `(name, reference,
/// current)`.
pub fn drift_categorical(
    features: &[(String, &[String], &[String])],
    thresholds: &Thresholds,
) -> Vec<FeatureDrift> {
    let fs: Vec<Feature<'_>> = features
        .iter()
        .map(|(name, reference, current)| Feature {
            name,
            data: FeatureData::Categories { reference, current },
        })
        .collect();
    drift_features(&fs, thresholds, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic, roughly normal sample (sum of uniforms from an
    /// xorshift generator), so the tests need no random-number crate.
    fn sample(seed: u64, n: usize, shift: f64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| (0..12).map(|_| next()).sum::<f64>() - 6.0 + shift)
            .collect()
    }

    #[test]
    fn default_methods_follow_evidently() {
        assert_eq!(default_method(FeatureKind::Numeric, 1000), Method::Ks);
        assert_eq!(
            default_method(FeatureKind::Numeric, 1001),
            Method::Wasserstein
        );
        assert_eq!(
            default_method(FeatureKind::Categorical, 10),
            Method::ChiSquare
        );
        assert_eq!(
            default_method(FeatureKind::Categorical, 5000),
            Method::JensenShannon
        );
        assert_eq!(default_method(FeatureKind::Numeric, 0), Method::Ks);
    }

    #[test]
    fn method_names_round_trip() {
        for m in [
            Method::Ks,
            Method::Psi,
            Method::JensenShannon,
            Method::Wasserstein,
            Method::ChiSquare,
        ] {
            assert_eq!(m.name().parse::<Method>(), Ok(m));
            assert_eq!(
                serde_json::to_value(m).unwrap(),
                serde_json::Value::String(m.name().to_string())
            );
        }
        assert_eq!("js".parse::<Method>(), Ok(Method::JensenShannon));
        assert!("auto".parse::<Method>().is_err());
    }

    #[test]
    fn shifted_feature_is_flagged_and_ranked_first() {
        let base: Vec<Vec<f64>> = (0..6).map(|i| sample(i + 1, 500, 0.0)).collect();
        let cur: Vec<Vec<f64>> = (0..6).map(|i| sample(i + 100, 500, 0.0)).collect();
        let shifted = sample(999, 500, 0.5);
        let mut features: Vec<(String, FeatureKind, &[f64], &[f64])> = (0..6)
            .map(|i| {
                (
                    format!("f{i}"),
                    FeatureKind::Numeric,
                    base[i].as_slice(),
                    cur[i].as_slice(),
                )
            })
            .collect();
        features.push((
            "moved".to_string(),
            FeatureKind::Numeric,
            base[0].as_slice(),
            shifted.as_slice(),
        ));
        let out = drift(&features, &Thresholds::default());
        assert_eq!(out.len(), 7);
        assert_eq!(out[0].feature, "moved");
        assert!(out[0].drifted);
        assert_eq!(out[0].method, Method::Ks);
        assert!(out[0].adjusted_p_value.unwrap() >= out[0].p_value.unwrap());
        assert!(out.iter().filter(|f| f.drifted).count() <= 2);
        for f in &out {
            for key in [
                "ks_statistic",
                "ks_p_value",
                "wasserstein_normed",
                "psi",
                "js",
            ] {
                assert!(f.all.contains_key(key));
            }
            assert_eq!(f.bins.reference.iter().sum::<u64>(), 500);
        }
    }

    #[test]
    fn large_reference_uses_wasserstein() {
        let r = sample(1, 2000, 0.0);
        let c = sample(2, 2000, 1.0);
        let out = drift(
            &[("x".to_string(), FeatureKind::Numeric, &r, &c)],
            &Thresholds::default(),
        );
        assert_eq!(out[0].method, Method::Wasserstein);
        assert!(out[0].drifted);
        assert!(out[0].p_value.is_none());
        assert_eq!(out[0].score, out[0].all["wasserstein_normed"]);
    }

    #[test]
    fn categorical_features() {
        let r: Vec<String> = ["a", "b", "a", "c"].iter().map(|s| s.to_string()).collect();
        let c: Vec<String> = ["a", "d", "d", "d"].iter().map(|s| s.to_string()).collect();
        let out = drift_categorical(&[("cat".to_string(), &r, &c)], &Thresholds::default());
        assert_eq!(out[0].method, Method::ChiSquare);
        assert_eq!(out[0].bins.categories, vec!["a", "b", "c", "d"]);
        assert_eq!(out[0].bins.current, vec![1, 0, 0, 3]);
        assert_eq!(out[0].all["chi_square_dof"], 3.0);
        let codes = drift(
            &[(
                "code".to_string(),
                FeatureKind::Categorical,
                &[1.0, 2.0, 2.0][..],
                &[1.0, 1.0, 3.0][..],
            )],
            &Thresholds::default(),
        );
        assert_eq!(codes[0].bins.categories, vec!["1", "2", "3"]);
    }

    #[test]
    fn method_override_applies_where_it_can() {
        let r = sample(1, 100, 0.0);
        let c = sample(2, 100, 0.0);
        let labels: Vec<String> = (0..100).map(|i| (i % 3).to_string()).collect();
        let fs = [
            Feature {
                name: "num",
                data: FeatureData::Numeric {
                    reference: &r,
                    current: &c,
                },
            },
            Feature {
                name: "cat",
                data: FeatureData::Categories {
                    reference: &labels,
                    current: &labels,
                },
            },
        ];
        let out = drift_features(&fs, &Thresholds::default(), Some(Method::Ks));
        let by = |n: &str| out.iter().find(|f| f.feature == n).unwrap().method;
        assert_eq!(by("num"), Method::Ks);
        assert_eq!(by("cat"), Method::ChiSquare);
        let out = drift_features(&fs, &Thresholds::default(), Some(Method::Psi));
        assert!(
            out.iter()
                .all(|f| f.method == Method::Psi && f.p_value.is_none())
        );
    }

    #[test]
    fn empty_and_nan_features_never_drift_or_panic() {
        let nan = [f64::NAN; 4];
        let out = drift(
            &[
                ("empty".to_string(), FeatureKind::Numeric, &[][..], &[][..]),
                (
                    "nan".to_string(),
                    FeatureKind::Numeric,
                    &nan[..],
                    &[1.0][..],
                ),
                (
                    "cat".to_string(),
                    FeatureKind::Categorical,
                    &[][..],
                    &[1.0][..],
                ),
                (
                    "const".to_string(),
                    FeatureKind::Numeric,
                    &[2.0; 5][..],
                    &[2.0; 5][..],
                ),
            ],
            &Thresholds::default(),
        );
        assert!(out.iter().all(|f| !f.drifted));
        let json = serde_json::to_string(&out).unwrap();
        assert!(json.contains("\"score\":null"));
        assert!(drift(&[], &Thresholds::default()).is_empty());
    }

    #[test]
    fn hostile_inputs_never_panic() {
        let samples: Vec<Vec<f64>> = vec![
            vec![],
            vec![f64::NAN],
            vec![0.0],
            vec![-0.0, 0.0],
            vec![f64::INFINITY, f64::NEG_INFINITY],
            vec![f64::MAX, f64::MIN, f64::MIN_POSITIVE, -f64::MIN_POSITIVE],
            vec![1e308, -1e308, 1e308, f64::NAN, 5.0],
            vec![3.0; 1001],
            (0..1500).map(|i| f64::from(i % 7)).collect(),
            sample(3, 50, 1e300),
        ];
        let thresholds = [
            Thresholds::default(),
            Thresholds {
                n_bins: 0,
                correction: Correction::Bonferroni,
                ..Thresholds::default()
            },
            Thresholds {
                n_bins: 1000,
                ks_p_value: 0.0,
                psi: -1.0,
                correction: Correction::None,
                ..Thresholds::default()
            },
        ];
        for t in &thresholds {
            for a in &samples {
                for b in &samples {
                    for kind in [FeatureKind::Numeric, FeatureKind::Categorical] {
                        for method in [None, Some(Method::Psi), Some(Method::JensenShannon)] {
                            let f = [Feature {
                                name: "x",
                                data: match kind {
                                    FeatureKind::Numeric => FeatureData::Numeric {
                                        reference: a,
                                        current: b,
                                    },
                                    FeatureKind::Categorical => FeatureData::NumericCategories {
                                        reference: a,
                                        current: b,
                                    },
                                },
                            }];
                            let out = drift_features(&f, t, method);
                            assert_eq!(out.len(), 1);
                            if let Some(p) = out[0].p_value {
                                assert!(p.is_nan() || (0.0..=1.0).contains(&p));
                            }
                            serde_json::to_string(&out).unwrap();
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn serialises_snake_case() {
        let r = [1.0, 2.0, 3.0];
        let out = drift(
            &[("x".to_string(), FeatureKind::Numeric, &r[..], &r[..])],
            &Thresholds::default(),
        );
        let v = serde_json::to_value(&out[0]).unwrap();
        assert_eq!(v["kind"], "numeric");
        assert_eq!(v["method"], "ks");
        assert_eq!(v["drifted"], false);
        let t = serde_json::to_value(Thresholds::default()).unwrap();
        assert_eq!(t["correction"], "benjamini_hochberg");
    }
}
