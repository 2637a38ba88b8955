//! A model version's signature (its inputs and outputs, from the ONNX graph)
//! and the checks a request must pass against it before it is queued.

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;
use sluice_tensor::{DataType, Tensor};

use crate::error::{InferError, LoadError};

/// One input or output: name, datatype and shape (`-1` for a dynamic dim).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

/// The inputs and outputs of one model version, in graph order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

pub(crate) fn datatype_of(ty: ort::value::TensorElementType) -> Option<DataType> {
    use ort::value::TensorElementType as T;
    Some(match ty {
        T::Bool => DataType::Bool,
        T::Uint8 => DataType::Uint8,
        T::Uint16 => DataType::Uint16,
        T::Uint32 => DataType::Uint32,
        T::Uint64 => DataType::Uint64,
        T::Int8 => DataType::Int8,
        T::Int16 => DataType::Int16,
        T::Int32 => DataType::Int32,
        T::Int64 => DataType::Int64,
        T::Float16 => DataType::Fp16,
        T::Bfloat16 => DataType::Bf16,
        T::Float32 => DataType::Fp32,
        T::Float64 => DataType::Fp64,
        T::String => DataType::Bytes,
        _ => return None,
    })
}

pub(crate) fn element_type_of(dtype: DataType) -> ort::value::TensorElementType {
    use ort::value::TensorElementType as T;
    match dtype {
        DataType::Bool => T::Bool,
        DataType::Uint8 => T::Uint8,
        DataType::Uint16 => T::Uint16,
        DataType::Uint32 => T::Uint32,
        DataType::Uint64 => T::Uint64,
        DataType::Int8 => T::Int8,
        DataType::Int16 => T::Int16,
        DataType::Int32 => T::Int32,
        DataType::Int64 => T::Int64,
        DataType::Fp16 => T::Float16,
        DataType::Bf16 => T::Bfloat16,
        DataType::Fp32 => T::Float32,
        DataType::Fp64 => T::Float64,
        DataType::Bytes => T::String,
    }
}

fn specs(
    path: &Path,
    what: &'static str,
    outlets: &[ort::value::Outlet],
) -> Result<Vec<TensorSpec>, LoadError> {
    outlets
        .iter()
        .map(|outlet| {
            let unsupported = || LoadError::UnsupportedType {
                path: path.to_path_buf(),
                what,
                name: outlet.name().to_string(),
                onnx_type: format!("{:?}", outlet.dtype()),
            };
            let ty = outlet.dtype().tensor_type().ok_or_else(unsupported)?;
            let datatype = datatype_of(ty).ok_or_else(unsupported)?;
            let shape = outlet
                .dtype()
                .tensor_shape()
                .map(|s| s.iter().map(|&d| if d < 0 { -1 } else { d }).collect())
                .unwrap_or_default();
            Ok(TensorSpec {
                name: outlet.name().to_string(),
                datatype,
                shape,
            })
        })
        .collect()
}

impl Signature {
    pub(crate) fn of_session(
        path: &Path,
        session: &ort::session::Session,
    ) -> Result<Signature, LoadError> {
        Ok(Signature {
            inputs: specs(path, "input", session.inputs())?,
            outputs: specs(path, "output", session.outputs())?,
        })
    }

    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|s| s.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|s| s.name == name)
    }

    /// Checks a request against this signature: every input present once,
    /// no unknown input, datatype and rank equal, fixed dimensions equal;
    /// every requested output exists. Messages name the offending tensor.
    pub fn validate<'a>(
        &self,
        inputs: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
        requested_outputs: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), InferError> {
        let mut seen = HashSet::new();
        for (name, tensor) in inputs {
            let Some(spec) = self.input(name) else {
                return Err(InferError::Invalid(format!(
                    "unexpected input '{name}'; the model's inputs are: {}",
                    names(&self.inputs)
                )));
            };
            if !seen.insert(name) {
                return Err(InferError::Invalid(format!(
                    "input '{name}' is given twice"
                )));
            }
            if tensor.dtype() != spec.datatype {
                return Err(InferError::Invalid(format!(
                    "input '{name}' has datatype {} but the model expects {}",
                    tensor.dtype(),
                    spec.datatype
                )));
            }
            let shape = tensor.shape();
            let fits = shape.len() == spec.shape.len()
                && shape
                    .iter()
                    .zip(&spec.shape)
                    .all(|(&got, &want)| want < 0 || got == want);
            if !fits {
                return Err(InferError::Invalid(format!(
                    "input '{name}' has shape {shape:?} but the model expects {:?} (-1 is any size)",
                    spec.shape
                )));
            }
        }
        if let Some(missing) = self.inputs.iter().find(|s| !seen.contains(s.name.as_str())) {
            return Err(InferError::Invalid(format!(
                "missing input '{}' ({} {:?})",
                missing.name, missing.datatype, missing.shape
            )));
        }
        for name in requested_outputs {
            if self.output(name).is_none() {
                return Err(InferError::Invalid(format!(
                    "unknown output '{name}'; the model's outputs are: {}",
                    names(&self.outputs)
                )));
            }
        }
        Ok(())
    }

    /// Whether a version with signature `next` can replace one with this
    /// signature without breaking callers: same input names, datatypes and
    /// ranks, every old output still present with the same datatype and rank.
    /// Returns the first difference found.
    pub fn incompatibility(&self, next: &Signature) -> Option<String> {
        let compare = |what: &str, old: &[TensorSpec], new: &[TensorSpec], exact: bool| {
            for o in old {
                match new.iter().find(|n| n.name == o.name) {
                    None => return Some(format!("{what} '{}' is gone", o.name)),
                    Some(n) if n.datatype != o.datatype || n.shape.len() != o.shape.len() => {
                        return Some(format!(
                            "{what} '{}' changed from {} {:?} to {} {:?}",
                            o.name, o.datatype, o.shape, n.datatype, n.shape
                        ));
                    }
                    Some(n) => {
                        let narrowed = o
                            .shape
                            .iter()
                            .zip(&n.shape)
                            .any(|(&a, &b)| b >= 0 && a != b);
                        if narrowed {
                            return Some(format!(
                                "{what} '{}' changed shape from {:?} to {:?}",
                                o.name, o.shape, n.shape
                            ));
                        }
                    }
                }
            }
            if exact && let Some(extra) = new.iter().find(|n| !old.iter().any(|o| o.name == n.name))
            {
                return Some(format!("new required {what} '{}'", extra.name));
            }
            None
        };
        compare("input", &self.inputs, &next.inputs, true)
            .or_else(|| compare("output", &self.outputs, &next.outputs, false))
    }
}

fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("'{}'", s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    fn sig() -> Signature {
        Signature {
            inputs: vec![spec("x", DataType::Fp32, &[-1, 4])],
            outputs: vec![spec("y", DataType::Fp32, &[-1, 4])],
        }
    }

    fn fp32(shape: &[i64]) -> Tensor {
        let n = sluice_tensor::element_count(shape).unwrap();
        Tensor::from_raw(
            DataType::Fp32,
            shape.to_vec(),
            Bytes::from(vec![0u8; n * 4]),
        )
        .unwrap()
    }

    #[test]
    fn validate_names_the_problem() {
        let s = sig();
        let ok = fp32(&[2, 4]);
        s.validate([("x", &ok)], ["y"]).unwrap();
        let err = |r: Result<(), InferError>| r.unwrap_err().to_string();
        assert!(err(s.validate([("z", &ok)], [])).contains("unexpected input 'z'"));
        assert!(err(s.validate([], [])).contains("missing input 'x'"));
        assert!(err(s.validate([("x", &fp32(&[2, 5]))], [])).contains("shape [2, 5]"));
        assert!(err(s.validate([("x", &fp32(&[8]))], [])).contains("shape [8]"));
        assert!(err(s.validate([("x", &ok)], ["nope"])).contains("unknown output 'nope'"));
        let int =
            Tensor::from_raw(DataType::Int32, vec![1, 4], Bytes::from(vec![0u8; 16])).unwrap();
        assert!(err(s.validate([("x", &int)], [])).contains("datatype INT32"));
    }

    #[test]
    fn compatibility() {
        let old = sig();
        assert_eq!(old.incompatibility(&sig()), None);
        let mut renamed = sig();
        renamed.inputs[0].name = "z".into();
        assert!(
            old.incompatibility(&renamed)
                .unwrap()
                .contains("input 'x' is gone")
        );
        let mut wider = sig();
        wider.inputs[0].shape = vec![-1, -1];
        assert_eq!(old.incompatibility(&wider), None);
        let mut narrower = sig();
        narrower.inputs[0].shape = vec![-1, 5];
        assert!(old.incompatibility(&narrower).is_some());
        let mut extra_out = sig();
        extra_out.outputs.push(spec("z", DataType::Int64, &[-1]));
        assert_eq!(old.incompatibility(&extra_out), None);
    }
}
