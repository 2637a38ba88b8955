//! Moving tensors between Sluice and ONNX Runtime.
//!
//! Inputs are copied once, into a tensor ONNX Runtime allocates (the request
//! buffer may be unaligned, being a slice of the body). Outputs are copied once,
//! out of ONNX Runtime's buffer into a `Bytes` the encoder can hand to hyper.

use bytes::Bytes;
use ort::memory::Allocator;
use ort::value::{DynTensor, DynTensorValueType, DynValue};
use sluice_tensor::{DataType, Tensor, TensorData};

use crate::signature::{datatype_of, element_type_of};

/// Builds an ONNX Runtime value holding a copy of `tensor`.
pub fn to_ort(tensor: &Tensor) -> Result<DynValue, String> {
    let shape: Vec<i64> = tensor.shape().to_vec();
    match tensor.data() {
        TensorData::Raw(raw) => {
            let mut value = DynTensor::new(
                &Allocator::default(),
                element_type_of(tensor.dtype()),
                shape,
            )
            .map_err(|e| e.to_string())?;
            if !raw.is_empty() {
                let dst = value.data_ptr_mut().cast::<u8>();
                // SAFETY: ONNX Runtime allocated a CPU buffer for exactly
                // element_count * element_size bytes, which `Tensor` guarantees
                // equals `raw.len()`; the two buffers cannot overlap.
                unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), dst, raw.len()) };
            }
            Ok(value.into_dyn())
        }
        TensorData::Bytes(elements) => {
            // ONNX strings are NUL-terminated C strings inside ONNX Runtime.
            let strings = elements
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    if e.contains(&0) {
                        return Err(format!(
                            "BYTES element {i} contains a NUL byte, which ONNX strings cannot hold"
                        ));
                    }
                    String::from_utf8(e.to_vec()).map_err(|_| {
                        format!("BYTES element {i} is not valid UTF-8, which ONNX strings require")
                    })
                })
                .collect::<Result<Vec<String>, String>>()?;
            let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            let array = ort::value::Tensor::from_string_array((shape, strings.as_slice()))
                .map_err(|e| e.to_string())?;
            Ok(array.into_dyn())
        }
    }
}

/// Copies an ONNX Runtime output into a Sluice tensor.
pub fn from_ort(value: &DynValue) -> Result<Tensor, String> {
    let ty = value
        .dtype()
        .tensor_type()
        .ok_or_else(|| format!("output is a {:?}, not a tensor", value.dtype()))?;
    let dtype = datatype_of(ty).ok_or_else(|| format!("output type {ty:?} is not servable"))?;
    let shape: Vec<i64> = value
        .dtype()
        .tensor_shape()
        .map(|s| s.to_vec())
        .unwrap_or_default();
    if dtype == DataType::Bytes {
        let (_, strings) = value.try_extract_strings().map_err(|e| e.to_string())?;
        let elements = strings.into_iter().map(Bytes::from).collect();
        return Tensor::from_bytes_elements(shape, elements).map_err(|e| e.to_string());
    }
    let size = dtype.element_size().unwrap_or(1);
    let count = sluice_tensor::element_count(&shape).map_err(|e| e.to_string())?;
    let len = count * size;
    let view = value
        .view()
        .downcast::<DynTensorValueType>()
        .map_err(|e| e.to_string())?;
    let raw = if len == 0 {
        Bytes::new()
    } else {
        let ptr = view.data_ptr().cast::<u8>();
        // SAFETY: a CPU tensor of `count` elements of `size` bytes each, owned
        // by `value`, which outlives this copy.
        Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(ptr, len) })
    };
    Tensor::from_raw(dtype, shape, raw).map_err(|e| e.to_string())
}
