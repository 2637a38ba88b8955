//! A bounded sample of the most different primary/shadow pairs.
//!
//! Counting agreement says how often a shadow differs; an operator also
//! wants to see *how*: the inputs and both outputs of the worst pairs.
//! [`DiffStore`] keeps the `capacity` highest-scoring [`DiffSample`]s and
//! drops the rest; [`DiffStore::would_keep`] lets a caller skip building a
//! sample (the previews are the expensive part) that would be dropped.

use std::sync::{Mutex, MutexGuard};

use half::{bf16, f16};
use serde::Serialize;
use serde_json::{Value, json};
use sluice_tensor::{DataType, Tensor, TensorData};

use crate::compare::OutputDiff;

/// One primary/shadow pair, as shown to an operator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffSample {
    /// When the pair was compared, RFC 3339 UTC, supplied by the caller.
    pub time: String,
    /// The request's id.
    pub request_id: String,
    /// The request's trace id, when traced.
    pub trace_id: Option<String>,
    /// How different the pair is ([`crate::compare::Comparison::score`]).
    pub score: f64,
    /// Whether the pair agreed.
    pub agree: bool,
    /// The version that answered the client.
    pub primary_version: u64,
    /// The shadow version.
    pub shadow_version: u64,
    /// The primary's inference latency, microseconds.
    pub primary_latency_us: u64,
    /// The shadow's inference latency, microseconds.
    pub shadow_latency_us: u64,
    /// One [`output_json`] per compared output.
    pub outputs: Vec<Value>,
    /// One [`tensor_preview`] per request input.
    pub inputs: Vec<Value>,
    /// One [`tensor_preview`] per primary output.
    pub primary_outputs: Vec<Value>,
    /// One [`tensor_preview`] per shadow output.
    pub shadow_outputs: Vec<Value>,
}

/// A JSON preview of a tensor: `{"name", "datatype", "shape", "data",
/// "truncated"}` with the first `max_elements` elements (row-major) as JSON
/// values, so a large tensor costs a bounded amount.
///
/// Numbers stay numbers (FP16, BF16 and FP32 in their shortest decimal
/// form); NaN and infinities, which JSON lacks, become the strings `"NaN"`,
/// `"inf"` and `"-inf"`; BOOL becomes `true`/`false`; BYTES elements become
/// strings, invalid UTF-8 replaced by U+FFFD.
pub fn tensor_preview(name: &str, t: &Tensor, max_elements: usize) -> Value {
    let total = t.len();
    let mut data = Vec::with_capacity(total.min(max_elements));
    match t.data() {
        TensorData::Raw(raw) => {
            let dtype = t.dtype();
            let size = dtype.element_size().unwrap_or(1).max(1);
            for e in raw.chunks_exact(size).take(max_elements) {
                data.push(element_json(dtype, e));
            }
        }
        TensorData::Bytes(elements) => {
            for e in elements.iter().take(max_elements) {
                data.push(Value::String(String::from_utf8_lossy(e).into_owned()));
            }
        }
    }
    json!({
        "name": name,
        "datatype": t.dtype().as_str(),
        "shape": t.shape(),
        "truncated": data.len() < total,
        "data": data,
    })
}

/// One little-endian element of a fixed-size datatype as JSON.
fn element_json(dtype: DataType, e: &[u8]) -> Value {
    fn arr<const N: usize>(e: &[u8]) -> [u8; N] {
        let mut a = [0u8; N];
        for (d, s) in a.iter_mut().zip(e) {
            *d = *s;
        }
        a
    }
    match dtype {
        DataType::Bool => Value::Bool(e.first().is_some_and(|&b| b != 0)),
        DataType::Uint8 => json!(u8::from_le_bytes(arr(e))),
        DataType::Uint16 => json!(u16::from_le_bytes(arr(e))),
        DataType::Uint32 => json!(u32::from_le_bytes(arr(e))),
        DataType::Uint64 => json!(u64::from_le_bytes(arr(e))),
        DataType::Int8 => json!(i8::from_le_bytes(arr(e))),
        DataType::Int16 => json!(i16::from_le_bytes(arr(e))),
        DataType::Int32 => json!(i32::from_le_bytes(arr(e))),
        DataType::Int64 => json!(i64::from_le_bytes(arr(e))),
        DataType::Fp16 => f32_json(f16::from_le_bytes(arr(e)).to_f32()),
        DataType::Bf16 => f32_json(bf16::from_le_bytes(arr(e)).to_f32()),
        DataType::Fp32 => f32_json(f32::from_le_bytes(arr(e))),
        DataType::Fp64 => f64_json(f64::from_le_bytes(arr(e))),
        DataType::Bytes => Value::Null,
    }
}

/// An f32 as JSON in its shortest decimal form (`0.1`, not the widened
/// `0.10000000149011612`).
fn f32_json(x: f32) -> Value {
    if !x.is_finite() {
        return f64_json(f64::from(x));
    }
    let shortest = x.to_string().parse::<f64>().unwrap_or(f64::from(x));
    f64_json(shortest)
}

/// An f64 as JSON: a number, or `"NaN"`, `"inf"`, `"-inf"`.
fn f64_json(x: f64) -> Value {
    if x.is_nan() {
        Value::String("NaN".to_string())
    } else if x == f64::INFINITY {
        Value::String("inf".to_string())
    } else if x == f64::NEG_INFINITY {
        Value::String("-inf".to_string())
    } else {
        json!(x)
    }
}

/// One output's comparison as JSON: `{"name", "kind": "float", "max_abs",
/// "max_rel", "within_tolerance", "argmax_agree"}`, `{"name", "kind":
/// "exact", "equal", "differing"}` or `{"name", "kind": "mismatch",
/// "reason"}`. Infinite differences are the string `"inf"`.
pub fn output_json(d: &OutputDiff) -> Value {
    match d {
        OutputDiff::Float {
            name,
            max_abs,
            max_rel,
            within_tolerance,
            argmax_agree,
        } => json!({
            "name": name,
            "kind": "float",
            "max_abs": f64_json(*max_abs),
            "max_rel": f64_json(*max_rel),
            "within_tolerance": within_tolerance,
            "argmax_agree": argmax_agree,
        }),
        OutputDiff::Exact {
            name,
            equal,
            differing,
        } => json!({
            "name": name,
            "kind": "exact",
            "equal": equal,
            "differing": differing,
        }),
        OutputDiff::Mismatch { name, reason } => json!({
            "name": name,
            "kind": "mismatch",
            "reason": reason,
        }),
    }
}

/// A kept sample with its score (copied out so ordering never depends on
/// the caller's fields).
#[derive(Debug)]
struct Entry {
    score: f64,
    sample: DiffSample,
}

#[derive(Debug, Default)]
struct Inner {
    /// Highest score first; equal scores in arrival order (a newcomer is
    /// inserted after every equal score, and the last entry is dropped).
    entries: Vec<Entry>,
}

/// The `capacity` highest-scoring samples seen so far, safe to share
/// between threads.
///
/// A sample whose score is not above the lowest kept one is dropped when
/// the store is full, so among equal scores the earliest are kept. NaN
/// scores are never kept.
#[derive(Debug)]
pub struct DiffStore {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl DiffStore {
    /// An empty store keeping at most `capacity` samples (0 keeps none).
    pub fn new(capacity: usize) -> DiffStore {
        DiffStore {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The most samples kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether a sample scoring `score` would be kept now; cheap, so a
    /// caller can skip building one that would not. (Another thread may
    /// fill the store in between; [`DiffStore::offer`] checks again.)
    pub fn would_keep(&self, score: f64) -> bool {
        Self::keeps(&self.lock(), self.capacity, score)
    }

    /// Keeps `sample` if it is among the `capacity` highest scores so far,
    /// dropping the lowest kept one to make room.
    pub fn offer(&self, sample: DiffSample) {
        let score = sample.score;
        let mut inner = self.lock();
        if !Self::keeps(&inner, self.capacity, score) {
            return;
        }
        let at = inner.entries.partition_point(|e| e.score >= score);
        inner.entries.insert(at, Entry { score, sample });
        inner.entries.truncate(self.capacity);
    }

    /// The kept samples, highest score first (equal scores: earliest first).
    pub fn samples(&self) -> Vec<DiffSample> {
        let inner = self.lock();
        inner.entries.iter().map(|e| e.sample.clone()).collect()
    }

    /// How many samples are kept.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no sample is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn keeps(inner: &Inner, capacity: usize, score: f64) -> bool {
        if score.is_nan() || capacity == 0 {
            return false;
        }
        if inner.entries.len() < capacity {
            return true;
        }
        inner
            .entries
            .last()
            .is_none_or(|lowest| score > lowest.score)
    }

    /// The lock, recovered if a panicking thread poisoned it: the entries
    /// are always consistent between statements.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    fn sample(id: &str, score: f64) -> DiffSample {
        DiffSample {
            time: "2025-01-01T00:00:00Z".into(),
            request_id: id.into(),
            trace_id: None,
            score,
            agree: score < 1.0,
            primary_version: 1,
            shadow_version: 2,
            primary_latency_us: 10,
            shadow_latency_us: 12,
            outputs: vec![],
            inputs: vec![],
            primary_outputs: vec![],
            shadow_outputs: vec![],
        }
    }

    fn ids(store: &DiffStore) -> Vec<String> {
        store.samples().into_iter().map(|s| s.request_id).collect()
    }

    #[test]
    fn keeps_the_highest_k_in_any_order() {
        let scores = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0];
        // Every rotation and the reverse of the scores.
        let mut orders: Vec<Vec<f64>> = (0..scores.len())
            .map(|r| {
                let mut v = scores.to_vec();
                v.rotate_left(r);
                v
            })
            .collect();
        orders.push(scores.iter().rev().copied().collect());
        for order in orders {
            let store = DiffStore::new(3);
            for s in &order {
                store.offer(sample(&s.to_string(), *s));
            }
            assert_eq!(store.len(), 3);
            assert_eq!(ids(&store), ["9", "8", "7"], "{order:?}");
        }
    }

    #[test]
    fn capacity_zero_and_nan() {
        let store = DiffStore::new(0);
        assert!(!store.would_keep(1e300));
        store.offer(sample("a", 1.0));
        assert!(store.is_empty());

        let store = DiffStore::new(2);
        assert!(!store.would_keep(f64::NAN));
        store.offer(sample("nan", f64::NAN));
        assert!(store.is_empty());
        store.offer(sample("inf", f64::INFINITY));
        store.offer(sample("neg", f64::NEG_INFINITY));
        assert_eq!(ids(&store), ["inf", "neg"]);
    }

    #[test]
    fn ties_keep_the_earliest() {
        let store = DiffStore::new(2);
        store.offer(sample("a", 1.0));
        store.offer(sample("b", 1.0));
        store.offer(sample("c", 1.0));
        assert_eq!(ids(&store), ["a", "b"]);
        store.offer(sample("d", 2.0));
        assert_eq!(ids(&store), ["d", "a"]);
    }

    #[test]
    fn would_keep_semantics() {
        let store = DiffStore::new(2);
        assert!(store.would_keep(0.0));
        store.offer(sample("a", 3.0));
        assert!(store.would_keep(-1.0), "room left");
        store.offer(sample("b", 5.0));
        assert!(!store.would_keep(2.0));
        assert!(!store.would_keep(3.0), "equal to the lowest is dropped");
        assert!(store.would_keep(3.5));
        assert_eq!(store.capacity(), 2);
    }

    #[test]
    fn shared_between_threads() {
        let store = Arc::new(DiffStore::new(5));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let score = f64::from(i * 4 + t);
                        store.offer(sample(&score.to_string(), score));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(ids(&store), ["399", "398", "397", "396", "395"]);
    }

    #[test]
    fn previews_truncate() {
        let t = Tensor::from_raw(
            DataType::Int32,
            vec![2, 3],
            Bytes::from(
                (0..6i32)
                    .flat_map(|x| (x - 2).to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
        )
        .unwrap();
        let v = tensor_preview("x", &t, 4);
        assert_eq!(
            v,
            json!({"name": "x", "datatype": "INT32", "shape": [2, 3], "data": [-2, -1, 0, 1], "truncated": true})
        );
        let v = tensor_preview("x", &t, 6);
        assert_eq!(v["truncated"], json!(false));
        assert_eq!(v["data"].as_array().unwrap().len(), 6);
        let v = tensor_preview("x", &t, 0);
        assert_eq!(v["data"], json!([]));
        assert_eq!(v["truncated"], json!(true));

        let empty = Tensor::from_raw(DataType::Fp32, vec![0, 4], Bytes::new()).unwrap();
        let v = tensor_preview("e", &empty, 0);
        assert_eq!(v["data"], json!([]));
        assert_eq!(v["truncated"], json!(false));
    }

    #[test]
    fn previews_of_floats_bools_and_bytes() {
        let f = Tensor::from_raw(
            DataType::Fp32,
            vec![5],
            Bytes::from(
                [0.1f32, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -2.5]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
        )
        .unwrap();
        assert_eq!(
            tensor_preview("f", &f, 10)["data"],
            json!([0.1, "NaN", "inf", "-inf", -2.5])
        );
        let h = Tensor::from_raw(
            DataType::Fp16,
            vec![2],
            Bytes::from(
                [f16::from_f32(1.5), f16::NAN]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
        )
        .unwrap();
        assert_eq!(tensor_preview("h", &h, 10)["data"], json!([1.5, "NaN"]));
        let b = Tensor::from_raw(
            DataType::Bf16,
            vec![1],
            Bytes::copy_from_slice(&bf16::from_f32(-3.0).to_le_bytes()),
        )
        .unwrap();
        assert_eq!(tensor_preview("b", &b, 10)["data"], json!([-3.0]));
        let d = Tensor::from_raw(
            DataType::Fp64,
            vec![1],
            Bytes::copy_from_slice(&f64::NAN.to_le_bytes()),
        )
        .unwrap();
        assert_eq!(tensor_preview("d", &d, 10)["data"], json!(["NaN"]));
        let u = Tensor::from_raw(
            DataType::Uint64,
            vec![1],
            Bytes::copy_from_slice(&u64::MAX.to_le_bytes()),
        )
        .unwrap();
        assert_eq!(tensor_preview("u", &u, 10)["data"], json!([u64::MAX]));
        let bools = Tensor::from_raw(DataType::Bool, vec![2], Bytes::from_static(&[1, 0])).unwrap();
        assert_eq!(
            tensor_preview("b", &bools, 10)["data"],
            json!([true, false])
        );
        let s = Tensor::from_bytes_elements(
            vec![2],
            vec![Bytes::from_static(b"ok"), Bytes::from_static(b"a\xffb")],
        )
        .unwrap();
        let v = tensor_preview("s", &s, 10);
        assert_eq!(v["datatype"], json!("BYTES"));
        assert_eq!(v["data"], json!(["ok", "a\u{fffd}b"]));
    }

    #[test]
    fn output_json_forms() {
        let f = OutputDiff::Float {
            name: "y".into(),
            max_abs: f64::INFINITY,
            max_rel: 0.5,
            within_tolerance: false,
            argmax_agree: Some(true),
        };
        assert_eq!(
            output_json(&f),
            json!({"name": "y", "kind": "float", "max_abs": "inf", "max_rel": 0.5, "within_tolerance": false, "argmax_agree": true})
        );
        let e = OutputDiff::Exact {
            name: "ids".into(),
            equal: false,
            differing: 3,
        };
        assert_eq!(
            output_json(&e),
            json!({"name": "ids", "kind": "exact", "equal": false, "differing": 3})
        );
        let m = OutputDiff::Mismatch {
            name: "z".into(),
            reason: "shape".into(),
        };
        assert_eq!(
            output_json(&m),
            json!({"name": "z", "kind": "mismatch", "reason": "shape"})
        );
    }

    #[test]
    fn sample_serialises() {
        let v = serde_json::to_value(sample("r", 0.5)).unwrap();
        assert_eq!(v["request_id"], json!("r"));
        assert_eq!(v["trace_id"], json!(null));
        assert_eq!(v["score"], json!(0.5));
    }
}
