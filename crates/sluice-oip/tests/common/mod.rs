//! Helpers shared by the integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use half::{bf16, f16};
use sluice_oip::{InferRequest, NamedTensor};
use sluice_tensor::{DataType, Tensor};

/// Interesting values of every datatype, as a tensor of shape [2, n/2] or [n].
/// `json_safe`: BYTES elements are valid UTF-8 (JSON carries only strings).
pub fn sample(dtype: DataType, json_safe: bool) -> Tensor {
    fn le<const N: usize, T: Copy>(vals: &[T], f: impl Fn(T) -> [u8; N]) -> Bytes {
        Bytes::from(vals.iter().flat_map(|&v| f(v)).collect::<Vec<u8>>())
    }
    let raw = match dtype {
        DataType::Bool => Bytes::from_static(&[1, 0, 1, 1, 0, 0]),
        DataType::Uint8 => le(&[0u8, 1, 127, 128, 254, 255], u8::to_le_bytes),
        DataType::Uint16 => le(&[0u16, 1, 65535, 256], u16::to_le_bytes),
        DataType::Uint32 => le(&[0u32, u32::MAX, 1 << 31, 12345], u32::to_le_bytes),
        DataType::Uint64 => le(&[0u64, u64::MAX, 1 << 63, 1 << 53 | 1], u64::to_le_bytes),
        DataType::Int8 => le(&[i8::MIN, -1, 0, i8::MAX], i8::to_le_bytes),
        DataType::Int16 => le(&[i16::MIN, -1, 0, i16::MAX], i16::to_le_bytes),
        DataType::Int32 => le(&[i32::MIN, -1, 0, i32::MAX], i32::to_le_bytes),
        DataType::Int64 => le(&[i64::MIN, -1, 0, i64::MAX], i64::to_le_bytes),
        DataType::Fp16 => le(
            &[
                f16::from_f32(0.1),
                f16::MAX,
                f16::MIN,
                f16::from_bits(1), // smallest subnormal
                f16::NEG_ZERO,
                f16::from_f32(-2.5),
            ],
            f16::to_le_bytes,
        ),
        DataType::Bf16 => le(
            &[
                bf16::from_f32(0.1),
                bf16::MAX,
                bf16::MIN_POSITIVE,
                bf16::from_bits(1),
                bf16::NEG_ZERO,
                bf16::from_f32(3.0e38),
            ],
            bf16::to_le_bytes,
        ),
        DataType::Fp32 => le(
            &[
                0.1f32,
                -1e30,
                f32::MAX,
                f32::MIN_POSITIVE,
                f32::from_bits(1),
                -0.0,
                16_777_217.0,
                1.0 / 3.0,
            ],
            f32::to_le_bytes,
        ),
        DataType::Fp64 => le(
            &[
                0.1f64,
                -1e300,
                f64::MAX,
                f64::MIN_POSITIVE,
                f64::from_bits(1),
                -0.0,
                9_007_199_254_740_993.0,
                1.0 / 3.0,
            ],
            f64::to_le_bytes,
        ),
        DataType::Bytes => {
            let mut elements: Vec<Bytes> =
                ["hello", "", "wörld", "quote\" back\\ nl\n \u{1}", "日本"]
                    .iter()
                    .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                    .collect();
            elements.push(if json_safe {
                Bytes::from_static(b"tab\t")
            } else {
                Bytes::from_static(b"\x00\xff\xfe")
            });
            return Tensor::from_bytes_elements(vec![2, 3], elements).unwrap();
        }
    };
    let n = (raw.len() / dtype.element_size().unwrap()) as i64;
    let shape = if n % 2 == 0 { vec![2, n / 2] } else { vec![n] };
    Tensor::from_raw(dtype, shape, raw).unwrap()
}

pub fn named(name: &str, tensor: Tensor) -> NamedTensor {
    NamedTensor {
        name: name.to_string(),
        tensor,
    }
}

pub fn request(inputs: Vec<NamedTensor>) -> InferRequest {
    InferRequest {
        id: None,
        parameters: serde_json::Map::new(),
        inputs,
        outputs: None,
        binary_data_output: false,
    }
}

pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A body of JSON header plus binary section, with its header length.
pub fn body(json: &str, binary: &[u8]) -> (Bytes, Option<usize>) {
    let mut b = json.as_bytes().to_vec();
    b.extend_from_slice(binary);
    (Bytes::from(b), Some(json.len()))
}
