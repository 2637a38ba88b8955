//! Dynamic batching: which requests may share one `Session::run`, and how
//! their tensors are joined along the first dimension and split back.
//!
//! Requests are batched only when the model's every input and output has a
//! dynamic first dimension (checked once, at load), and two requests are put
//! in one batch only when everything but that first dimension agrees: the
//! same input names, datatypes and remaining dimensions, and the same
//! requested outputs. Each request then gets exactly its own rows back.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_tensor::{Tensor, TensorData};

use crate::signature::Signature;

/// How a version batches (Triton's `dynamic_batching`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchingOptions {
    /// Most rows (first-dimension entries) in one execution.
    pub max_batch_size: usize,
    /// How long the first request of a batch may wait for others.
    pub max_queue_delay: Duration,
    /// Batch sizes to dispatch at as soon as they are reached (ascending).
    pub preferred_batch_sizes: Vec<usize>,
}

/// Whether a model's signature allows batching: every input and output has
/// rank ≥ 1 and a dynamic first dimension.
pub fn batchable(signature: &Signature) -> bool {
    signature
        .inputs
        .iter()
        .chain(&signature.outputs)
        .all(|s| s.shape.first() == Some(&-1))
}

/// What must be equal for two requests to share a batch: the requested
/// outputs, and per input (sorted by name) its datatype and its shape after
/// the first dimension. `None` when the request cannot be batched (an input
/// of rank 0, inputs that disagree on the first dimension, or no rows).
pub fn batch_key(inputs: &[(String, Tensor)], outputs: &[String]) -> Option<(String, usize)> {
    let rows = *inputs.first()?.1.shape().first()?;
    let mut parts: Vec<String> = Vec::with_capacity(inputs.len());
    for (name, t) in inputs {
        let (&first, rest) = t.shape().split_first()?;
        if first != rows {
            return None;
        }
        parts.push(format!("{name}:{}:{rest:?}", t.dtype()));
    }
    parts.sort();
    let key = format!("{}|{}", parts.join(","), outputs.join(","));
    // An empty request runs alone: some operators refuse an empty batch, and
    // it must fail (or not) the same way whatever else is queued.
    let rows = usize::try_from(rows).ok().filter(|&r| r > 0)?;
    Some((key, rows))
}

/// Joins the same-named inputs of several requests along the first
/// dimension, in request order. The requests must share a [`batch_key`].
pub fn concat(requests: &[&[(String, Tensor)]]) -> Result<Vec<(String, Tensor)>, String> {
    let first = requests.first().ok_or("empty batch")?;
    first
        .iter()
        .map(|(name, t0)| {
            let parts: Vec<&Tensor> = requests
                .iter()
                .map(|r| {
                    r.iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, t)| t)
                        .ok_or_else(|| format!("input '{name}' missing from a batched request"))
                })
                .collect::<Result<_, _>>()?;
            let rows: i64 = parts.iter().map(|t| t.shape()[0]).sum();
            let mut shape = t0.shape().to_vec();
            shape[0] = rows;
            let tensor = match t0.data() {
                TensorData::Raw(_) => {
                    let total = parts
                        .iter()
                        .map(|t| match t.data() {
                            TensorData::Raw(r) => r.len(),
                            TensorData::Bytes(_) => 0,
                        })
                        .sum();
                    let mut buf = BytesMut::with_capacity(total);
                    for t in &parts {
                        if let TensorData::Raw(r) = t.data() {
                            buf.extend_from_slice(r);
                        }
                    }
                    Tensor::from_raw(t0.dtype(), shape, buf.freeze())
                }
                TensorData::Bytes(_) => {
                    let elements = parts
                        .iter()
                        .flat_map(|t| match t.data() {
                            TensorData::Bytes(e) => e.clone(),
                            TensorData::Raw(_) => Vec::new(),
                        })
                        .collect();
                    Tensor::from_bytes_elements(shape, elements)
                }
            }
            .map_err(|e| format!("joining input '{name}': {e}"))?;
            Ok((name.clone(), tensor))
        })
        .collect()
}

/// Splits one output of a batched execution into each request's rows.
/// Raw outputs are split without copying (slices of one buffer).
pub fn split(output: &Tensor, rows: &[usize]) -> Result<Vec<Tensor>, String> {
    let total: usize = rows.iter().sum();
    let shape = output.shape();
    if shape.first().copied() != Some(total as i64) {
        return Err(format!(
            "its output has shape {shape:?}, whose first dimension is not the batch's {total} rows"
        ));
    }
    let per_row = |len: usize| len.checked_div(total).unwrap_or(0);
    let mut out = Vec::with_capacity(rows.len());
    let mut start = 0;
    for &n in rows {
        let mut part_shape = shape.to_vec();
        part_shape[0] = n as i64;
        let tensor = match output.data() {
            TensorData::Raw(raw) => {
                let w = per_row(raw.len());
                let slice: Bytes = raw.slice(start * w..(start + n) * w);
                Tensor::from_raw(output.dtype(), part_shape, slice)
            }
            TensorData::Bytes(elements) => {
                let w = per_row(elements.len());
                Tensor::from_bytes_elements(
                    part_shape,
                    elements[start * w..(start + n) * w].to_vec(),
                )
            }
        }
        .map_err(|e| e.to_string())?;
        out.push(tensor);
        start += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_tensor::DataType;

    fn f32s(shape: &[i64], values: &[f32]) -> Tensor {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_raw(DataType::Fp32, shape.to_vec(), Bytes::from(raw)).unwrap()
    }

    #[test]
    fn keys_separate_what_cannot_share_a_batch() {
        let a = vec![("x".to_string(), f32s(&[1, 2], &[1.0, 2.0]))];
        let b = vec![("x".to_string(), f32s(&[3, 2], &[0.0; 6]))];
        let c = vec![("x".to_string(), f32s(&[1, 3], &[0.0; 3]))];
        let (ka, ra) = batch_key(&a, &[]).unwrap();
        let (kb, rb) = batch_key(&b, &[]).unwrap();
        let (kc, _) = batch_key(&c, &[]).unwrap();
        assert_eq!((ka.as_str(), ra), (kb.as_str(), 1));
        assert_eq!(rb, 3);
        assert_ne!(ka, kc, "other trailing dimensions never batch together");
        let (kd, _) = batch_key(&a, &["y".to_string()]).unwrap();
        assert_ne!(ka, kd, "other requested outputs never batch together");
        let scalar = vec![("x".to_string(), f32s(&[], &[1.0]))];
        assert!(batch_key(&scalar, &[]).is_none());
    }

    #[test]
    fn concat_then_split_gives_each_request_its_rows() {
        let a = vec![("x".to_string(), f32s(&[1, 2], &[1.0, 2.0]))];
        let b = vec![("x".to_string(), f32s(&[2, 2], &[3.0, 4.0, 5.0, 6.0]))];
        let joined = concat(&[&a, &b]).unwrap();
        assert_eq!(joined[0].1.shape(), &[3, 2]);
        let parts = split(&joined[0].1, &[1, 2]).unwrap();
        assert_eq!(parts[0], a[0].1);
        assert_eq!(parts[1], b[0].1);
        assert!(split(&joined[0].1, &[1, 1]).is_err());

        let s1 = Tensor::from_bytes_elements(vec![1], vec![Bytes::from_static(b"a")]).unwrap();
        let s2 = Tensor::from_bytes_elements(
            vec![2],
            vec![Bytes::from_static(b"b"), Bytes::from_static(b"c")],
        )
        .unwrap();
        let joined = concat(&[
            &[("t".to_string(), s1.clone())],
            &[("t".to_string(), s2.clone())],
        ])
        .unwrap();
        let parts = split(&joined[0].1, &[1, 2]).unwrap();
        assert_eq!((parts[0].clone(), parts[1].clone()), (s1, s2));
    }
}
