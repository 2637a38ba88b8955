//! Why a request (or response) body could not be decoded.

use std::fmt;

use sluice_tensor::{DataType, TensorError};

/// Which tensor of a body an error is about: `input "x"`, or `inputs[3]`
/// when the tensor has no usable name yet. Responses say `output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// `"input"` or `"output"`.
    pub kind: &'static str,
    /// Position in the body's `inputs` (or `outputs`) array.
    pub index: usize,
    /// The tensor's name, once it is known.
    pub name: Option<String>,
}

impl fmt::Display for TensorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{} {name:?}", self.kind),
            None => write!(f, "{}s[{}]", self.kind, self.index),
        }
    }
}

/// Every way a body can be malformed. All of them are the client's fault
/// (HTTP 400); each message names the offending tensor or field and says
/// what was expected and what was found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error(
        "Inference-Header-Content-Length is {header_length} but the body has only {body_len} bytes"
    )]
    HeaderLengthTooLarge {
        header_length: usize,
        body_len: usize,
    },

    #[error("the JSON header is not valid UTF-8 (first invalid byte at offset {valid_up_to})")]
    InvalidUtf8 { valid_up_to: usize },

    #[error("the {what} must be a JSON object, got {got}")]
    NotAnObject {
        what: &'static str,
        got: &'static str,
    },

    #[error("invalid JSON in {context}: {message}")]
    Json { context: String, message: String },

    #[error("{context}: missing required field `{field}`")]
    MissingField {
        context: String,
        field: &'static str,
    },

    #[error("{context}: `{field}` must be {expected}, got {got}")]
    WrongType {
        context: String,
        field: String,
        expected: &'static str,
        got: String,
    },

    #[error("{context}: parameter `{name}` is not supported{hint}")]
    UnsupportedParameter {
        context: String,
        name: String,
        /// Empty, or text starting with "; " that says what to do instead.
        hint: &'static str,
    },

    #[error(
        "{tensor}: unknown datatype {got:?}; valid datatypes are BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, BF16, FP32, FP64, BYTES"
    )]
    UnknownDatatype { tensor: TensorRef, got: String },

    #[error("{tensor}: shape {shape:?} is invalid: {reason}")]
    InvalidShape {
        tensor: TensorRef,
        shape: String,
        reason: String,
    },

    #[error("duplicate input name {name:?}")]
    DuplicateInput { name: String },

    #[error("duplicate output name {name:?}")]
    DuplicateOutput { name: String },

    #[error("{tensor}: has both `data` and `parameters.binary_data_size`; send exactly one")]
    DataAndBinary { tensor: TensorRef },

    #[error("{tensor}: has neither `data` nor `parameters.binary_data_size`")]
    NoData { tensor: TensorRef },

    #[error("{tensor}: {dtype} element {index} is {value}: {reason}")]
    BadElement {
        tensor: TensorRef,
        dtype: DataType,
        index: usize,
        value: String,
        reason: String,
    },

    #[error("{tensor}: shape {shape:?} holds {expected} elements but {origin} has {got}")]
    ElementCount {
        tensor: TensorRef,
        shape: Vec<i64>,
        expected: usize,
        origin: &'static str,
        got: usize,
    },

    #[error(
        "{tensor}: shape {shape:?} of {dtype} needs {expected_bytes} bytes but `binary_data_size` is {got}"
    )]
    BinarySize {
        tensor: TensorRef,
        dtype: DataType,
        shape: Vec<i64>,
        expected_bytes: usize,
        got: usize,
    },

    #[error(
        "{tensor}: `binary_data_size` is {size} but the body has no binary section (no Inference-Header-Content-Length header)"
    )]
    NoBinarySection { tensor: TensorRef, size: usize },

    #[error(
        "{tensor}: `binary_data_size` {size} at offset {offset} runs past the end of the binary section ({available} bytes)"
    )]
    BinaryOverrun {
        tensor: TensorRef,
        offset: usize,
        size: usize,
        available: usize,
    },

    #[error(
        "the binary section holds {available} bytes but the tensors' `binary_data_size` add up to {used}"
    )]
    BinaryTrailing { used: usize, available: usize },

    #[error(
        "{tensor}: BYTES element {index} at offset {offset} of its binary data needs {need} bytes but only {remaining} remain"
    )]
    BytesElementTruncated {
        tensor: TensorRef,
        index: usize,
        offset: usize,
        need: usize,
        remaining: usize,
    },

    #[error("{tensor}: {source}")]
    Tensor {
        tensor: TensorRef,
        source: TensorError,
    },
}
