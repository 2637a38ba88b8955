//! The validation gate: a model whose `model.toml` sets
//! `require_validation = true` serves a version as stable, canary or shadow
//! only if the version has a passing validation report (`validation.json`,
//! written by `sluice models validate`) whose SHA-256 its `manifest.json`
//! records. A version without one still loads (it can be called by its
//! version number, and validated), but no traffic is routed to it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_runtime::ModelExecutor;

/// The report's file name in a version directory.
pub const REPORT_FILE: &str = "validation.json";

/// What the gate found for one version: the evidence it passed on, or why
/// it may not take traffic.
pub type Verdict = Result<Value, String>;

/// The verdicts of the gate for each ready version of a model (in
/// `model_dir`); empty when the model does not require validation.
pub fn verdicts(
    require: bool,
    model_dir: &Path,
    versions: &BTreeMap<u64, Arc<ModelExecutor>>,
) -> BTreeMap<u64, Verdict> {
    if !require {
        return BTreeMap::new();
    }
    versions
        .keys()
        .map(|v| (*v, verdict(&model_dir.join(v.to_string()))))
        .collect()
}

/// The gate's verdict on the version in `dir`: the report must exist, be
/// the one the manifest records (same SHA-256), and say it passed.
pub fn verdict(dir: &Path) -> Verdict {
    let manifest: Value = std::fs::read(dir.join(sluice_registry::MANIFEST_FILE))
        .map_err(|_| {
            "it has no manifest.json (publish it with `sluice models publish`)".to_string()
        })
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| format!("its manifest.json is not JSON: {e}"))
        })?;
    let Some(recorded) = manifest.get("validation").filter(|v| v.is_object()) else {
        return Err("it has no validation report (run `sluice models validate` on it)".to_string());
    };
    let report = std::fs::read(dir.join(REPORT_FILE)).map_err(|_| {
        format!("its manifest records a validation report, but {REPORT_FILE} is missing")
    })?;
    let sha256 = hex::encode(Sha256::digest(&report));
    let expected = recorded.get("sha256").and_then(Value::as_str).unwrap_or("");
    if !sha256.eq_ignore_ascii_case(expected) {
        return Err(format!(
            "{REPORT_FILE} (sha256 {sha256}) is not the report its manifest records ({expected})"
        ));
    }
    let report: Value =
        serde_json::from_slice(&report).map_err(|e| format!("{REPORT_FILE} is not JSON: {e}"))?;
    let evidence = json!({
        "report_sha256": sha256,
        "passed": report.get("passed"),
        "created": report.get("created"),
        "checks": report.get("checks"),
    });
    if report.get("passed").and_then(Value::as_bool) != Some(true)
        || recorded.get("passed").and_then(Value::as_bool) != Some(true)
    {
        let failing: Vec<String> = report
            .get("checks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c.get("passed").and_then(Value::as_bool) == Some(false))
            .map(|c| {
                c.get("check")
                    .or_else(|| c.get("name"))
                    .and_then(Value::as_str)
                    .map_or_else(|| c.to_string(), str::to_string)
            })
            .collect();
        return Err(format!(
            "its validation report failed{}",
            if failing.is_empty() {
                String::new()
            } else {
                format!(": {}", failing.join(", "))
            }
        ));
    }
    Ok(evidence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(dir: &Path, report: &str, record: Option<(&str, bool)>) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(REPORT_FILE), report).unwrap();
        let mut manifest = json!({ "schema": 1 });
        if let Some((sha, passed)) = record {
            manifest["validation"] = json!({ "sha256": sha, "passed": passed });
        }
        std::fs::write(
            dir.join(sluice_registry::MANIFEST_FILE),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn only_a_recorded_passing_report_opens_the_gate() {
        let root = tempfile::tempdir().unwrap();
        let passing = r#"{"passed":true,"checks":[]}"#;
        let sha = hex::encode(Sha256::digest(passing.as_bytes()));
        version(&root.path().join("1"), passing, Some((&sha, true)));
        assert!(verdict(&root.path().join("1")).is_ok());

        version(&root.path().join("2"), passing, None);
        assert!(
            verdict(&root.path().join("2"))
                .unwrap_err()
                .contains("no validation report")
        );

        // The report changed after it was recorded.
        version(
            &root.path().join("3"),
            passing,
            Some((&"0".repeat(64), true)),
        );
        assert!(
            verdict(&root.path().join("3"))
                .unwrap_err()
                .contains("is not the report")
        );

        let failing = r#"{"passed":false,"checks":[{"check":"accuracy >= 0.9","passed":false}]}"#;
        let sha = hex::encode(Sha256::digest(failing.as_bytes()));
        version(&root.path().join("4"), failing, Some((&sha, false)));
        let why = verdict(&root.path().join("4")).unwrap_err();
        assert!(why.contains("failed: accuracy >= 0.9"), "{why}");
    }
}
