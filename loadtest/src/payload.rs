//! The request: one tensor of random-but-seeded data, encoded once.
//!
//! Every request of a run sends the same body. Generating it once keeps the
//! generator's per-request cost to building headers and cloning a `Bytes`
//! (a reference count), so what is measured is the server, not the encoder.
//! The data is random so that a server cannot shortcut on zeros, and seeded
//! so that two runs (and two targets of one `compare`) send identical bytes.

use anyhow::{Context, bail};
use bytes::Bytes;
use serde::Serialize;
use sluice_oip::{InferRequest, NamedTensor, encode_infer_request};
use sluice_tensor::{DataType, Tensor};

/// How the tensor travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// JSON `data` in the request; the server answers in JSON too.
    Json,
    /// Triton's binary tensor extension: the input's bytes after the JSON
    /// header, and `binary_data_output` so the outputs come back binary as
    /// well (as `perf_analyzer` and `tritonclient` do by default).
    Binary,
}

/// A ready-to-send request body.
#[derive(Debug, Clone)]
pub struct Payload {
    pub kind: PayloadKind,
    pub body: Bytes,
    /// The value of `Inference-Header-Content-Length` (binary only).
    pub header_length: Option<usize>,
}

impl Payload {
    /// The Content-Type to send the body with.
    pub fn content_type(&self) -> &'static str {
        if self.header_length.is_some() {
            "application/octet-stream"
        } else {
            "application/json"
        }
    }
}

/// Parses `1,16` (or `1x16`) into a shape. Every dimension must be concrete:
/// the generator sends real tensors, so `-1` has no meaning here.
pub fn parse_shape(text: &str) -> anyhow::Result<Vec<i64>> {
    let dims =
        text.split([',', 'x'])
            .map(|d| {
                let d = d.trim();
                d.parse::<i64>().ok().filter(|&n| n >= 0).with_context(|| {
                    format!("shape {text:?}: {d:?} is not a dimension (0 or more)")
                })
            })
            .collect::<anyhow::Result<Vec<i64>>>()?;
    if dims.is_empty() {
        bail!("shape {text:?} has no dimensions");
    }
    Ok(dims)
}

/// Parses a datatype's wire name (`FP32`, `INT64`, ...), case-insensitively.
pub fn parse_datatype(text: &str) -> anyhow::Result<DataType> {
    DataType::parse(&text.to_ascii_uppercase()).with_context(|| {
        let names: Vec<&str> = DataType::ALL.iter().map(|d| d.as_str()).collect();
        format!("unknown datatype {text:?}: one of {}", names.join(", "))
    })
}

/// SplitMix64: a tiny, good-enough generator, so the data needs no crate and
/// is the same on every platform for a given seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), with the 53 bits an f64 holds.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A tensor of `shape` filled with seeded random values: floats in [0, 1)
/// (finite, so JSON can carry them), integers in 0..100 (valid for every
/// integer type and any small embedding table), booleans, and 8-letter
/// lowercase strings for BYTES.
pub fn random_tensor(dtype: DataType, shape: &[i64], seed: u64) -> anyhow::Result<Tensor> {
    let count = sluice_tensor::element_count(shape)
        .with_context(|| format!("shape {shape:?} is too large"))?;
    let mut rng = SplitMix64::new(seed);
    let Some(size) = dtype.element_size() else {
        // BYTES: one buffer per element.
        let elements = (0..count)
            .map(|_| {
                let word: Vec<u8> = (0..8).map(|_| b'a' + (rng.next_u64() % 26) as u8).collect();
                Bytes::from(word)
            })
            .collect();
        return Ok(Tensor::from_bytes_elements(shape.to_vec(), elements)?);
    };
    let mut raw = Vec::with_capacity(count * size);
    for _ in 0..count {
        let small = rng.next_u64() % 100;
        let unit = rng.next_f64();
        match dtype {
            DataType::Bool => raw.push((small % 2) as u8),
            DataType::Uint8 | DataType::Int8 => raw.push(small as u8),
            DataType::Uint16 | DataType::Int16 => raw.extend((small as u16).to_le_bytes()),
            DataType::Uint32 | DataType::Int32 => raw.extend((small as u32).to_le_bytes()),
            DataType::Uint64 | DataType::Int64 => raw.extend(small.to_le_bytes()),
            DataType::Fp16 => raw.extend(half::f16::from_f64(unit).to_le_bytes()),
            DataType::Bf16 => raw.extend(half::bf16::from_f64(unit).to_le_bytes()),
            DataType::Fp32 => raw.extend((unit as f32).to_le_bytes()),
            DataType::Fp64 => raw.extend(unit.to_le_bytes()),
            DataType::Bytes => unreachable!("BYTES has no element size and returned above"),
        }
    }
    Ok(Tensor::from_raw(dtype, shape.to_vec(), Bytes::from(raw))?)
}

/// Encodes one input as an inference request body, with `sluice-oip`'s own
/// client-side encoder, so the bytes are exactly what the protocol says.
pub fn encode(input_name: &str, tensor: Tensor, kind: PayloadKind) -> Payload {
    let binary = kind == PayloadKind::Binary;
    let request = InferRequest {
        id: None,
        parameters: Default::default(),
        inputs: vec![NamedTensor {
            name: input_name.to_string(),
            tensor,
        }],
        // No `outputs`: the server returns all of them, as most clients ask.
        outputs: None,
        binary_data_output: binary,
    };
    let encoded = encode_infer_request(&request, |_| binary);
    Payload {
        kind,
        body: encoded.body,
        header_length: encoded.header_length,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_oip::decode_infer_request;

    #[test]
    fn shapes_parse_and_refuse_nonsense() {
        assert_eq!(parse_shape("1,16").unwrap(), vec![1, 16]);
        assert_eq!(parse_shape("8x4").unwrap(), vec![8, 4]);
        assert_eq!(parse_shape(" 3 ").unwrap(), vec![3]);
        assert!(parse_shape("1,-1").is_err());
        assert!(parse_shape("").is_err());
        assert!(parse_shape("a,b").is_err());
    }

    #[test]
    fn datatypes_parse_case_insensitively() {
        assert_eq!(parse_datatype("fp32").unwrap(), DataType::Fp32);
        assert_eq!(parse_datatype("INT64").unwrap(), DataType::Int64);
        assert!(parse_datatype("FLOAT").is_err());
    }

    #[test]
    fn the_same_seed_gives_the_same_data_and_another_seed_does_not() {
        let a = random_tensor(DataType::Fp32, &[2, 16], 7).unwrap();
        let b = random_tensor(DataType::Fp32, &[2, 16], 7).unwrap();
        let c = random_tensor(DataType::Fp32, &[2, 16], 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn every_datatype_round_trips_through_the_servers_decoder() {
        for dtype in DataType::ALL {
            let tensor = random_tensor(dtype, &[3, 5], 42).unwrap();
            for kind in [PayloadKind::Json, PayloadKind::Binary] {
                let payload = encode("input", tensor.clone(), kind);
                assert_eq!(
                    payload.header_length.is_some(),
                    kind == PayloadKind::Binary,
                    "{dtype} {kind:?}"
                );
                let decoded =
                    decode_infer_request(payload.body.clone(), payload.header_length).unwrap();
                assert_eq!(decoded.inputs.len(), 1);
                assert_eq!(decoded.inputs[0].name, "input");
                assert_eq!(decoded.inputs[0].tensor, tensor, "{dtype} {kind:?}");
                assert_eq!(decoded.binary_data_output, kind == PayloadKind::Binary);
                assert!(decoded.outputs.is_none());
            }
        }
    }

    #[test]
    fn binary_bodies_carry_the_raw_tensor_after_the_header() {
        let tensor = random_tensor(DataType::Fp32, &[1, 16], 1).unwrap();
        let payload = encode("input", tensor, PayloadKind::Binary);
        let header = payload.header_length.unwrap();
        assert_eq!(payload.body.len(), header + 16 * 4);
        assert_eq!(payload.content_type(), "application/octet-stream");
        let json: serde_json::Value = serde_json::from_slice(&payload.body[..header]).unwrap();
        assert_eq!(
            json["inputs"][0]["parameters"]["binary_data_size"],
            serde_json::json!(64)
        );
    }

    #[test]
    fn values_stay_in_their_documented_ranges() {
        let t = random_tensor(DataType::Fp64, &[1000], 3).unwrap();
        let sluice_tensor::TensorData::Raw(raw) = t.data() else {
            panic!("FP64 is raw")
        };
        for chunk in raw.chunks_exact(8) {
            let v = f64::from_le_bytes(chunk.try_into().unwrap());
            assert!((0.0..1.0).contains(&v), "{v}");
        }
        let t = random_tensor(DataType::Int64, &[1000], 3).unwrap();
        let sluice_tensor::TensorData::Raw(raw) = t.data() else {
            panic!("INT64 is raw")
        };
        for chunk in raw.chunks_exact(8) {
            assert!((0..100).contains(&i64::from_le_bytes(chunk.try_into().unwrap())));
        }
    }
}
