//! Tensors as Sluice moves them between the wire and ONNX Runtime.
//!
//! A [`Tensor`] is a datatype, a shape and its elements. Fixed-size elements
//! are kept as one contiguous little-endian byte buffer ([`bytes::Bytes`]), so
//! a tensor decoded from Triton's binary extension is a slice of the request
//! body, not a copy. BYTES elements (ONNX strings) are kept one buffer each.
//!
//! This crate knows nothing of HTTP or ONNX Runtime: the wire codecs live in
//! `sluice-oip`, the conversion to ONNX Runtime values in `sluice-runtime`.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The Open Inference Protocol datatypes that ONNX Runtime can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    /// Every datatype, in a stable order (used by tests and `--help` texts).
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The name on the wire (`"FP32"`, `"BYTES"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Parses a wire name. Names are case-sensitive, as in the protocol.
    pub fn parse(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Triton's model-configuration name (`TYPE_FP32`, `TYPE_STRING`, ...).
    pub fn triton_config_name(self) -> &'static str {
        match self {
            DataType::Bool => "TYPE_BOOL",
            DataType::Uint8 => "TYPE_UINT8",
            DataType::Uint16 => "TYPE_UINT16",
            DataType::Uint32 => "TYPE_UINT32",
            DataType::Uint64 => "TYPE_UINT64",
            DataType::Int8 => "TYPE_INT8",
            DataType::Int16 => "TYPE_INT16",
            DataType::Int32 => "TYPE_INT32",
            DataType::Int64 => "TYPE_INT64",
            DataType::Fp16 => "TYPE_FP16",
            DataType::Bf16 => "TYPE_BF16",
            DataType::Fp32 => "TYPE_FP32",
            DataType::Fp64 => "TYPE_FP64",
            DataType::Bytes => "TYPE_STRING",
        }
    }

    /// Bytes per element, or `None` for BYTES (variable length).
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The elements of a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Fixed-size elements, little-endian, contiguous, row-major.
    /// BOOL is one byte per element, 0 or 1.
    Raw(Bytes),
    /// BYTES elements, one buffer each.
    Bytes(Vec<Bytes>),
}

/// Why a tensor could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    #[error("shape {shape:?} has too many elements")]
    ShapeOverflow { shape: Vec<i64> },
    #[error("shape {shape:?} has a negative dimension")]
    NegativeDimension { shape: Vec<i64> },
    #[error(
        "shape {shape:?} holds {expected} elements of {dtype} ({expected_bytes} bytes) but {got} bytes were given"
    )]
    ByteCountMismatch {
        dtype: DataType,
        shape: Vec<i64>,
        expected: usize,
        expected_bytes: usize,
        got: usize,
    },
    #[error("shape {shape:?} holds {expected} elements but {got} were given")]
    ElementCountMismatch {
        shape: Vec<i64>,
        expected: usize,
        got: usize,
    },
    #[error("datatype {dtype} needs {want} data")]
    WrongDataKind { dtype: DataType, want: &'static str },
    #[error("BOOL element {index} is {value}, not 0 or 1")]
    BadBool { index: usize, value: u8 },
}

/// The number of elements a shape holds, refusing negative dimensions and
/// products that overflow (`[2^40, 2^40]` is an error, never a wrap).
pub fn element_count(shape: &[i64]) -> Result<usize, TensorError> {
    let mut n: usize = 1;
    for &d in shape {
        if d < 0 {
            return Err(TensorError::NegativeDimension {
                shape: shape.to_vec(),
            });
        }
        n = usize::try_from(d)
            .ok()
            .and_then(|d| n.checked_mul(d))
            .ok_or_else(|| TensorError::ShapeOverflow {
                shape: shape.to_vec(),
            })?;
    }
    Ok(n)
}

/// A named-less tensor: datatype, shape and elements, always consistent
/// (the constructors check the element count against the shape).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    dtype: DataType,
    shape: Vec<i64>,
    data: TensorData,
}

impl Tensor {
    /// A tensor of fixed-size elements from little-endian bytes.
    pub fn from_raw(dtype: DataType, shape: Vec<i64>, raw: Bytes) -> Result<Tensor, TensorError> {
        let Some(size) = dtype.element_size() else {
            return Err(TensorError::WrongDataKind {
                dtype,
                want: "one buffer per element",
            });
        };
        let expected = element_count(&shape)?;
        let expected_bytes =
            expected
                .checked_mul(size)
                .ok_or_else(|| TensorError::ShapeOverflow {
                    shape: shape.clone(),
                })?;
        if raw.len() != expected_bytes {
            return Err(TensorError::ByteCountMismatch {
                dtype,
                shape,
                expected,
                expected_bytes,
                got: raw.len(),
            });
        }
        if dtype == DataType::Bool
            && let Some(index) = raw.iter().position(|&b| b > 1)
        {
            return Err(TensorError::BadBool {
                index,
                value: raw[index],
            });
        }
        Ok(Tensor {
            dtype,
            shape,
            data: TensorData::Raw(raw),
        })
    }

    /// A BYTES tensor, one buffer per element.
    pub fn from_bytes_elements(
        shape: Vec<i64>,
        elements: Vec<Bytes>,
    ) -> Result<Tensor, TensorError> {
        let expected = element_count(&shape)?;
        if elements.len() != expected {
            return Err(TensorError::ElementCountMismatch {
                shape,
                expected,
                got: elements.len(),
            });
        }
        Ok(Tensor {
            dtype: DataType::Bytes,
            shape,
            data: TensorData::Bytes(elements),
        })
    }

    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    pub fn shape(&self) -> &[i64] {
        &self.shape
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn into_data(self) -> TensorData {
        self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::Raw(raw) => raw.len() / self.dtype.element_size().unwrap_or(1),
            TensorData::Bytes(elements) => elements.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tensor in Triton's binary layout: raw little-endian elements, or
    /// for BYTES each element as a 4-byte little-endian length and its bytes.
    pub fn to_binary(&self) -> Bytes {
        match &self.data {
            TensorData::Raw(raw) => raw.clone(),
            TensorData::Bytes(elements) => {
                let total = elements.iter().map(|e| 4 + e.len()).sum();
                let mut out = Vec::with_capacity(total);
                for e in elements {
                    out.extend_from_slice(&(e.len() as u32).to_le_bytes());
                    out.extend_from_slice(e);
                }
                Bytes::from(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.as_str()), Some(d));
        }
        assert_eq!(DataType::parse("fp32"), None);
        assert_eq!(DataType::parse("STRING"), None);
    }

    #[test]
    fn element_count_refuses_overflow_and_negatives() {
        assert_eq!(element_count(&[]).unwrap(), 1);
        assert_eq!(element_count(&[2, 0, 5]).unwrap(), 0);
        assert_eq!(element_count(&[3, 4]).unwrap(), 12);
        assert!(matches!(
            element_count(&[1 << 40, 1 << 40]),
            Err(TensorError::ShapeOverflow { .. })
        ));
        assert!(matches!(
            element_count(&[2, -1]),
            Err(TensorError::NegativeDimension { .. })
        ));
    }

    #[test]
    fn raw_tensor_checks_byte_count_and_bools() {
        let t = Tensor::from_raw(DataType::Fp32, vec![2], Bytes::from(vec![0u8; 8])).unwrap();
        assert_eq!(t.len(), 2);
        let err = Tensor::from_raw(DataType::Fp32, vec![3], Bytes::from(vec![0u8; 8])).unwrap_err();
        assert!(err.to_string().contains("12 bytes"), "{err}");
        let err = Tensor::from_raw(DataType::Bool, vec![2], Bytes::from(vec![1u8, 2])).unwrap_err();
        assert_eq!(err, TensorError::BadBool { index: 1, value: 2 });
        // A shape whose byte size overflows is refused, not wrapped.
        assert!(Tensor::from_raw(DataType::Fp64, vec![1 << 62], Bytes::new()).is_err());
    }

    #[test]
    fn bytes_tensor_serialises_with_length_prefixes() {
        let t = Tensor::from_bytes_elements(
            vec![2],
            vec![Bytes::from_static(b"ab"), Bytes::from_static(b"")],
        )
        .unwrap();
        assert_eq!(&t.to_binary()[..], &[2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        assert!(Tensor::from_bytes_elements(vec![3], vec![]).is_err());
    }
}
