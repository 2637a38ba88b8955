//! The wire format of Open Inference Protocol (KServe v2) inference
//! requests and responses over HTTP, with Triton's binary tensor extension.
//!
//! # Wire format
//!
//! A body is a JSON object, optionally followed by binary tensor data:
//!
//! ```text
//! | JSON header (Inference-Header-Content-Length bytes) | blob 0 | blob 1 | ... |
//! ```
//!
//! * Request: `{"id"?, "parameters"?, "inputs": [tensor...], "outputs"?:
//!   [{"name", "parameters"?: {"binary_data": bool}}]}`. Request-level
//!   `parameters.binary_data_output` is the default `binary_data` of the
//!   outputs not listed.
//! * Response: `{"model_name", "model_version", "id"?, "parameters"?,
//!   "outputs": [tensor...]}`.
//! * A tensor is `{"name", "datatype", "shape", "parameters"?, "data"?}`.
//!   Its elements are either JSON `data` (a flat or nested array, flattened
//!   row-major) or, when `parameters.binary_data_size` is set, that many
//!   bytes of the binary section. Blobs follow the header in the order of
//!   the tensors that have one, back to back, and must fill the binary
//!   section exactly. A blob is the tensor's elements, little-endian,
//!   row-major (BOOL one byte, 0 or 1); for BYTES each element is a 4-byte
//!   little-endian length followed by its bytes.
//! * The HTTP header `Inference-Header-Content-Length` gives the length of
//!   the JSON part; without it the whole body is JSON.
//!
//! # Zero copy
//!
//! Decoding never copies binary tensor data: a binary input of fixed-size
//! elements is a [`Bytes::slice`] of the request body, and each element of a
//! binary BYTES input is a slice of it too. JSON `data` is parsed once its
//! datatype is known straight into little-endian bytes, without an
//! intermediate `serde_json::Value` per element. Nothing is ever allocated in
//! proportion to a declared shape before the data has been checked against
//! it, so a hostile shape such as `[2^40, 8]` is a clean error.
//!
//! Encoding writes the JSON header directly into one buffer.
//! [`encode_infer_response`] appends the binary outputs to it (one copy,
//! one contiguous body); [`encode_infer_response_chunks`] instead returns
//! the header and the outputs' own `Bytes` as separate chunks, copying
//! nothing.
//!
//! Every malformed body is a [`DecodeError`] (a client error, HTTP 400),
//! never a panic.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use sluice_oip::{InferResponse, ResponseOutput, decode_infer_request, encode_infer_response};
//!
//! // A JSON input and a binary one (two FP32 values after the header).
//! let json = r#"{"id":"7","inputs":[
//!     {"name":"a","shape":[2],"datatype":"INT32","data":[1,2]},
//!     {"name":"b","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}],
//!     "outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
//! let mut body = json.as_bytes().to_vec();
//! body.extend_from_slice(&[0, 0, 128, 63, 0, 0, 0, 64]); // 1.0f32, 2.0f32
//! let req = decode_infer_request(Bytes::from(body), Some(json.len())).unwrap();
//! assert_eq!(req.inputs[1].tensor.shape(), &[2]);
//! assert!(req.output_binary("y"));
//!
//! let encoded = encode_infer_response(&InferResponse {
//!     model_name: "m",
//!     model_version: "1",
//!     id: req.id.as_deref(),
//!     parameters: None,
//!     outputs: vec![ResponseOutput {
//!         name: "y".into(),
//!         tensor: req.inputs[1].tensor.clone(),
//!         binary_data: req.output_binary("y"),
//!     }],
//! });
//! let header_length = encoded.header_length.unwrap(); // send as Inference-Header-Content-Length
//! assert_eq!(&encoded.body[header_length..], &[0, 0, 128, 63, 0, 0, 0, 64]);
//! ```

mod decode;
mod encode;
mod error;

use bytes::Bytes;
use serde_json::{Map, Value};
use sluice_tensor::Tensor;

pub use decode::{decode_binary_tensor, decode_infer_request, decode_infer_response};
pub use encode::{encode_infer_request, encode_infer_response, encode_infer_response_chunks};
pub use error::{DecodeError, TensorRef};

/// The name of the HTTP header that carries the length of the JSON part.
pub const HEADER_LENGTH_HEADER: &str = "Inference-Header-Content-Length";

/// A decoded inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    /// Request-level parameters, passed through as sent (including
    /// `binary_data_output`, which is also decoded into
    /// [`InferRequest::binary_data_output`]).
    pub parameters: Map<String, Value>,
    pub inputs: Vec<NamedTensor>,
    /// None: the client asked for no subset (all outputs); an empty
    /// `outputs` array means the same, as in Triton. Some: exactly these, in
    /// this order (names are unique).
    pub outputs: Option<Vec<RequestedOutput>>,
    /// Request-level `parameters.binary_data_output` (default for outputs
    /// not listed).
    pub binary_data_output: bool,
}

impl InferRequest {
    /// Whether output `name` should be sent in binary: its own
    /// `binary_data` flag if it was requested explicitly, otherwise the
    /// request-level `binary_data_output`.
    pub fn output_binary(&self, name: &str) -> bool {
        self.outputs
            .as_ref()
            .and_then(|outs| outs.iter().find(|o| o.name == name))
            .map_or(self.binary_data_output, |o| o.binary_data)
    }
}

/// A tensor with its name, as it appears in `inputs` (or response `outputs`).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: Tensor,
}

/// One entry of a request's `outputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    /// `parameters.binary_data`, defaulting to the request-level
    /// `binary_data_output`.
    pub binary_data: bool,
}

/// An inference response to encode.
#[derive(Debug, Clone)]
pub struct InferResponse<'a> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    /// The request's `id`; emitted only when `Some`.
    pub id: Option<&'a str>,
    /// Emitted only when `Some`.
    pub parameters: Option<&'a Map<String, Value>>,
    /// In the order to emit them.
    pub outputs: Vec<ResponseOutput>,
}

/// One output of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseOutput {
    pub name: String,
    pub tensor: Tensor,
    /// Send in Triton's binary layout after the JSON header (exact bytes)
    /// rather than as JSON `data`.
    pub binary_data: bool,
}

/// An encoded body (response, or request from [`encode_infer_request`]).
///
/// The body is one contiguous [`Bytes`]: the JSON header followed by the
/// binary blobs. Use [`encode_infer_response_chunks`] to avoid copying the
/// blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedResponse {
    /// JSON header followed by the binary output blobs (if any), ready to
    /// send as one body.
    pub body: Bytes,
    /// Some(length of the JSON part) when any tensor is binary: send it as
    /// `Inference-Header-Content-Length`, with Content-Type
    /// `application/octet-stream`. None: the body is pure JSON
    /// (`application/json`).
    pub header_length: Option<usize>,
}

impl EncodedResponse {
    /// The Content-Type to send the body with.
    pub fn content_type(&self) -> &'static str {
        content_type(self.header_length)
    }
}

/// An encoded request; same layout as a response.
pub type EncodedRequest = EncodedResponse;

/// A response body as separate chunks, copying no tensor data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedChunks {
    /// `chunks[0]` is the JSON header; each further chunk is the blob of one
    /// binary output, in order. Their concatenation is the body.
    pub chunks: Vec<Bytes>,
    /// As [`EncodedResponse::header_length`].
    pub header_length: Option<usize>,
}

impl EncodedChunks {
    /// The Content-Type to send the body with.
    pub fn content_type(&self) -> &'static str {
        content_type(self.header_length)
    }

    /// Total body length (the `Content-Length`).
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn content_type(header_length: Option<usize>) -> &'static str {
    if header_length.is_some() {
        "application/octet-stream"
    } else {
        "application/json"
    }
}

/// A decoded inference response (see [`decode_infer_response`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedResponse {
    pub model_name: String,
    /// `""` when the response had none.
    pub model_version: String,
    pub id: Option<String>,
    pub parameters: Option<Map<String, Value>>,
    pub outputs: Vec<NamedTensor>,
}
