//! A closed window against its reference, feature by feature, with the
//! statistics of `sluice-drift`: the method each feature's kind and size
//! call for (or the one configured), the multiple-testing correction across
//! the features of a window, and the thresholds.

use serde::{Deserialize, Serialize};
use sluice_drift as drift;

use crate::store::{Column, Columns};

/// The thresholds and method choices of the collector.
pub type Thresholds = drift::Thresholds;

/// One feature's drift in one window, as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureResult {
    pub feature: String,
    /// `numeric` or `categorical`.
    pub kind: String,
    /// The method that decided (`ks`, `psi`, `jensen_shannon`,
    /// `wasserstein`, `chi_square`).
    pub method: String,
    /// NaN (stored as null) when it could not be computed.
    #[serde(deserialize_with = "nan_if_null")]
    pub score: f64,
    pub p_value: Option<f64>,
    pub adjusted_p_value: Option<f64>,
    pub threshold: f64,
    pub drifted: bool,
    /// Every method's value for this feature (for the API and the charts).
    #[serde(default)]
    pub all: std::collections::BTreeMap<String, f64>,
}

/// Reads a number written as `null` (JSON has no NaN) back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The names of the drifted features, most drifted first.
pub fn drifted_names(features: &[FeatureResult]) -> Vec<String> {
    features
        .iter()
        .filter(|f| f.drifted)
        .map(|f| f.feature.clone())
        .collect()
}

/// Compares every feature present in both the reference and the window
/// (with the same kind), most drifted first.
pub fn compare(
    reference: &Columns,
    window: &Columns,
    thresholds: &Thresholds,
) -> Vec<FeatureResult> {
    let mut features = Vec::new();
    for (name, r) in reference {
        let data = match (r, window.get(name)) {
            (Column::Numeric(r), Some(Column::Numeric(w))) if !r.is_empty() && !w.is_empty() => {
                drift::FeatureData::Numeric {
                    reference: r,
                    current: w,
                }
            }
            (Column::Categorical(r), Some(Column::Categorical(w)))
                if !r.is_empty() && !w.is_empty() =>
            {
                drift::FeatureData::Categories {
                    reference: r,
                    current: w,
                }
            }
            _ => continue,
        };
        features.push(drift::Feature { name, data });
    }
    drift::drift_features(&features, thresholds, None)
        .into_iter()
        .map(from_drift)
        .collect()
}

fn from_drift(d: drift::FeatureDrift) -> FeatureResult {
    let value = serde_json::to_value(&d).unwrap_or_default();
    let text = |key: &str| {
        value
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    FeatureResult {
        kind: text("kind"),
        method: text("method"),
        feature: d.feature,
        score: d.score,
        p_value: d.p_value,
        adjusted_p_value: d.adjusted_p_value,
        threshold: d.threshold,
        drifted: d.drifted,
        all: d.all,
    }
}
