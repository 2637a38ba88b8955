//! From captured tensors to features: one row per item of the batch, each a
//! list of named values, numeric or categorical.
//!
//! The rules, per tensor (inputs and outputs alike; output features are
//! prefixed `output:`):
//! - numeric, `[batch]`: one feature, named after the tensor;
//! - numeric, `[batch, n]` with `n <= MAX_COLUMNS`: one feature per column,
//!   `name[j]` (tabular data: each column is a feature);
//! - any other numeric shape (images, sequences, wide vectors): three
//!   per-row summaries, `name.mean`, `name.std` (population) and `name.norm`
//!   (Euclidean), so a shift in level, spread or magnitude shows;
//! - BOOL and BYTES `[batch]` (or `[batch, 1]`): one categorical feature
//!   (BYTES as UTF-8, lossy); other BOOL/BYTES shapes are not features.
//!   Integer outputs `[batch]` are class labels: categorical too;
//! - a float output `[batch, c]` with `c > 1` holds class scores: its
//!   argmax is a categorical feature (`output:name.class`) and the top score
//!   a numeric one (`output:name.max`), i.e. the class distribution and the
//!   score distribution of prediction drift.

use std::fmt;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use sluice_tensor::{DataType, Tensor, TensorData};

/// Columns of a `[batch, n]` tensor beyond which it is summarised instead.
pub const MAX_COLUMNS: usize = 64;

/// One feature's value in one row.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FeatureValue {
    Numeric(f64),
    Category(String),
}

/// One item of a captured batch: its features, in a stable order.
pub type Row = Vec<(String, FeatureValue)>;

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureError(pub String);

impl fmt::Display for FeatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FeatureError {}

/// The rows of one record's `data` (`{"inputs": [...], "outputs": [...]}`,
/// either may be absent): one per batch item. All tensors of a record must
/// agree on the batch size (their first dimension).
pub fn rows_of(data: &Value) -> Result<Vec<Row>, FeatureError> {
    let mut tensors: Vec<(String, Tensor, bool)> = Vec::new();
    for (key, is_output) in [("inputs", false), ("outputs", true)] {
        match data.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for t in decode(list, key)? {
                    tensors.push((t.0, t.1, is_output));
                }
            }
            Some(_) => return Err(FeatureError(format!("`{key}` must be an array of tensors"))),
        }
    }
    let mut batch: Option<usize> = None;
    for (name, t, _) in &tensors {
        let b = t.shape().first().copied().unwrap_or(1).max(0) as usize;
        match batch {
            None => batch = Some(b),
            Some(prev) if prev != b => {
                return Err(FeatureError(format!(
                    "tensor '{name}' has {b} rows but an earlier one has {prev}"
                )));
            }
            Some(_) => {}
        }
    }
    let batch = batch.unwrap_or(0);
    let mut rows: Vec<Row> = vec![Vec::new(); batch];
    for (name, t, is_output) in &tensors {
        let prefix = if *is_output { "output:" } else { "" };
        add_features(&mut rows, &format!("{prefix}{name}"), t, *is_output);
    }
    Ok(rows)
}

/// Parses OIP JSON tensors with the protocol's own decoder (the same rules
/// as a response body's outputs). A float element written as `null` (how
/// responses and captured records write NaN and infinities, which JSON
/// cannot) is read as NaN: a missing value to the statistics, which drop it.
fn decode(list: &[Value], what: &str) -> Result<Vec<(String, Tensor)>, FeatureError> {
    let mut list = list.to_vec();
    let mut missing: Vec<Vec<usize>> = Vec::with_capacity(list.len());
    for t in &mut list {
        let float = t
            .get("datatype")
            .and_then(Value::as_str)
            .is_some_and(|d| matches!(d, "FP16" | "BF16" | "FP32" | "FP64"));
        let mut at = Vec::new();
        if float && let Some(data) = t.get_mut("data") {
            let mut index = 0;
            replace_nulls(data, &mut index, &mut at);
        }
        missing.push(at);
    }
    let body = serde_json::json!({ "model_name": "capture", "outputs": list });
    let decoded = sluice_oip::decode_infer_response(Bytes::from(body.to_string()), None)
        .map_err(|e| FeatureError(format!("`{what}`: {e}")))?;
    decoded
        .outputs
        .into_iter()
        .zip(missing)
        .map(|(n, at)| {
            let tensor = if at.is_empty() {
                n.tensor
            } else {
                with_nan(&n.tensor, &at)
                    .map_err(|e| FeatureError(format!("`{what}` tensor '{}': {e}", n.name)))?
            };
            Ok((n.name, tensor))
        })
        .collect()
}

/// Replaces every `null` leaf of a (nested) data array with 0, noting its
/// flat index.
fn replace_nulls(v: &mut Value, index: &mut usize, at: &mut Vec<usize>) {
    match v {
        Value::Array(items) => {
            for item in items {
                replace_nulls(item, index, at);
            }
        }
        Value::Null => {
            at.push(*index);
            *v = Value::from(0);
            *index += 1;
        }
        _ => *index += 1,
    }
}

/// The tensor with NaN at the given flat indices.
fn with_nan(t: &Tensor, at: &[usize]) -> Result<Tensor, String> {
    let TensorData::Raw(raw) = t.data() else {
        return Err("not a numeric tensor".into());
    };
    let mut bytes = raw.to_vec();
    let nan: Vec<u8> = match t.dtype() {
        DataType::Fp16 => half::f16::NAN.to_le_bytes().to_vec(),
        DataType::Bf16 => half::bf16::NAN.to_le_bytes().to_vec(),
        DataType::Fp32 => f32::NAN.to_le_bytes().to_vec(),
        DataType::Fp64 => f64::NAN.to_le_bytes().to_vec(),
        other => return Err(format!("{other} has no NaN")),
    };
    for &i in at {
        let start = i * nan.len();
        let slot = bytes
            .get_mut(start..start + nan.len())
            .ok_or("an element past the end")?;
        slot.copy_from_slice(&nan);
    }
    Tensor::from_raw(t.dtype(), t.shape().to_vec(), Bytes::from(bytes)).map_err(|e| e.to_string())
}

/// Every element as f64, for numeric datatypes.
fn numbers(t: &Tensor) -> Option<Vec<f64>> {
    let TensorData::Raw(raw) = t.data() else {
        return None;
    };
    let v: Vec<f64> = match t.dtype() {
        DataType::Bool | DataType::Bytes => return None,
        DataType::Uint8 => raw.iter().map(|&b| f64::from(b)).collect(),
        DataType::Int8 => raw.iter().map(|&b| f64::from(b as i8)).collect(),
        DataType::Uint16 => chunks(raw, |b| f64::from(u16::from_le_bytes(b))),
        DataType::Int16 => chunks(raw, |b| f64::from(i16::from_le_bytes(b))),
        DataType::Uint32 => chunks(raw, |b| f64::from(u32::from_le_bytes(b))),
        DataType::Int32 => chunks(raw, |b| f64::from(i32::from_le_bytes(b))),
        DataType::Uint64 => chunks(raw, |b| u64::from_le_bytes(b) as f64),
        DataType::Int64 => chunks(raw, |b| i64::from_le_bytes(b) as f64),
        DataType::Fp16 => chunks(raw, |b| f64::from(half::f16::from_le_bytes(b))),
        DataType::Bf16 => chunks(raw, |b| f64::from(half::bf16::from_le_bytes(b))),
        DataType::Fp32 => chunks(raw, |b| f64::from(f32::from_le_bytes(b))),
        DataType::Fp64 => chunks(raw, f64::from_le_bytes),
    };
    Some(v)
}

fn chunks<const N: usize>(raw: &Bytes, f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
    raw.chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}

/// Every element as a category, for BOOL and BYTES.
fn categories(t: &Tensor) -> Option<Vec<String>> {
    match (t.dtype(), t.data()) {
        (DataType::Bool, TensorData::Raw(raw)) => Some(
            raw.iter()
                .map(|&b| if b != 0 { "true" } else { "false" }.to_string())
                .collect(),
        ),
        (DataType::Bytes, TensorData::Bytes(items)) => Some(
            items
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect(),
        ),
        _ => None,
    }
}

fn is_float(dtype: DataType) -> bool {
    matches!(
        dtype,
        DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64
    )
}

fn add_features(rows: &mut [Row], name: &str, t: &Tensor, is_output: bool) {
    let batch = rows.len();
    if batch == 0 {
        return;
    }
    let shape = t.shape();
    let per_row = t.len() / batch;
    if let Some(cats) = categories(t) {
        if per_row == 1 {
            for (row, c) in rows.iter_mut().zip(cats) {
                row.push((name.to_string(), FeatureValue::Category(c)));
            }
        }
        return;
    }
    let Some(values) = numbers(t) else {
        return;
    };
    if values.len() != batch * per_row || per_row == 0 {
        return;
    }
    let columns = if shape.len() == 2 {
        shape[1] as usize
    } else {
        0
    };
    if is_output && per_row == 1 && !is_float(t.dtype()) {
        // Class labels.
        for (row, v) in rows.iter_mut().zip(&values) {
            row.push((name.to_string(), FeatureValue::Category(label(*v))));
        }
    } else if is_output && is_float(t.dtype()) && shape.len() == 2 && columns > 1 {
        // Class scores: the predicted class and its score.
        for (row, scores) in rows.iter_mut().zip(values.chunks_exact(per_row)) {
            let (best, top) = argmax(scores);
            row.push((
                format!("{name}.class"),
                FeatureValue::Category(best.to_string()),
            ));
            row.push((format!("{name}.max"), FeatureValue::Numeric(top)));
        }
    } else if shape.len() == 1 || per_row == 1 {
        for (row, v) in rows.iter_mut().zip(&values) {
            row.push((name.to_string(), FeatureValue::Numeric(*v)));
        }
    } else if shape.len() == 2 && columns <= MAX_COLUMNS {
        for (row, items) in rows.iter_mut().zip(values.chunks_exact(per_row)) {
            for (j, v) in items.iter().enumerate() {
                row.push((format!("{name}[{j}]"), FeatureValue::Numeric(*v)));
            }
        }
    } else {
        for (row, items) in rows.iter_mut().zip(values.chunks_exact(per_row)) {
            let n = items.len() as f64;
            let mean = items.iter().sum::<f64>() / n;
            let var = items.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
            let norm = items.iter().map(|x| x * x).sum::<f64>().sqrt();
            row.push((format!("{name}.mean"), FeatureValue::Numeric(mean)));
            row.push((format!("{name}.std"), FeatureValue::Numeric(var.sqrt())));
            row.push((format!("{name}.norm"), FeatureValue::Numeric(norm)));
        }
    }
}

/// An integer label as text (`3`, not `3.0`).
fn label(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The index and value of the largest element; NaN counts as smallest and
/// the first maximum wins.
fn argmax(scores: &[f64]) -> (usize, f64) {
    let mut best = (0, f64::NAN);
    for (i, &s) in scores.iter().enumerate() {
        if best.1.is_nan() || s > best.1 {
            best = (i, s);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(row: &Row) -> Vec<&str> {
        row.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn tabular_inputs_are_columns_and_class_outputs_are_predictions() {
        let data = json!({
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3],
                        "data": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}],
            "outputs": [
                {"name": "label", "datatype": "INT64", "shape": [2], "data": [2, 0]},
                {"name": "probabilities", "datatype": "FP32", "shape": [2, 3],
                 "data": [0.1, 0.2, 0.7, 0.8, 0.15, 0.05]}
            ]
        });
        let rows = rows_of(&data).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            names(&rows[0]),
            [
                "input[0]",
                "input[1]",
                "input[2]",
                "output:label",
                "output:probabilities.class",
                "output:probabilities.max"
            ]
        );
        assert_eq!(rows[1][0].1, FeatureValue::Numeric(4.0));
        assert_eq!(rows[0][3].1, FeatureValue::Category("2".into()));
        assert_eq!(rows[1][4].1, FeatureValue::Category("0".into()));
        let FeatureValue::Numeric(top) = rows[0][5].1 else {
            panic!("a numeric top score")
        };
        assert!((top - 0.7).abs() < 1e-6);
    }

    #[test]
    fn wide_tensors_are_summarised_per_row() {
        let image: Vec<f64> = (0..2 * 3 * 4 * 4).map(|i| (i % 5) as f64).collect();
        let data = json!({"inputs": [{"name": "images", "datatype": "FP32",
                                      "shape": [2, 3, 4, 4], "data": image}]});
        let rows = rows_of(&data).unwrap();
        assert_eq!(
            names(&rows[0]),
            ["images.mean", "images.std", "images.norm"]
        );
        let first: Vec<f64> = image[..48].to_vec();
        let mean = first.iter().sum::<f64>() / 48.0;
        let norm = first.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert_eq!(rows[0][0].1, FeatureValue::Numeric(mean));
        assert_eq!(rows[0][2].1, FeatureValue::Numeric(norm));
    }

    #[test]
    fn strings_and_booleans_are_categories() {
        let data = json!({"inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a b", "c"]},
            {"name": "flag", "datatype": "BOOL", "shape": [2, 1], "data": [true, false]}
        ]});
        let rows = rows_of(&data).unwrap();
        assert_eq!(
            rows[0][0],
            ("text".to_string(), FeatureValue::Category("a b".into()))
        );
        assert_eq!(
            rows[1][1],
            ("flag".to_string(), FeatureValue::Category("false".into()))
        );
    }

    #[test]
    fn null_floats_are_missing_values() {
        let data = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2],
                                      "data": [[1.0, null], [null, 4.0]]}]});
        let rows = rows_of(&data).unwrap();
        let value = |r: usize, c: usize| match rows[r][c].1 {
            FeatureValue::Numeric(v) => v,
            _ => panic!("numeric"),
        };
        assert_eq!(value(0, 0), 1.0);
        assert!(value(0, 1).is_nan());
        assert!(value(1, 0).is_nan());
        assert_eq!(value(1, 1), 4.0);
        // Integers have no NaN: null stays an error there.
        let ints =
            json!({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [null]}]});
        assert!(rows_of(&ints).is_err());
    }

    #[test]
    fn bad_records_are_refused_with_a_reason() {
        let mismatch = json!({"inputs": [
            {"name": "a", "datatype": "FP32", "shape": [2], "data": [1, 2]},
            {"name": "b", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}
        ]});
        assert!(rows_of(&mismatch).unwrap_err().0.contains("rows"));
        let wrong = json!({"inputs": {"name": "a"}});
        assert!(rows_of(&wrong).is_err());
        let bad_tensor =
            json!({"inputs": [{"name": "a", "datatype": "FP32", "shape": [2], "data": [1]}]});
        assert!(rows_of(&bad_tensor).is_err());
        assert_eq!(rows_of(&json!({})).unwrap(), Vec::<Row>::new());
    }
}
