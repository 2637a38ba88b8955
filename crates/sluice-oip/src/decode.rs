//! Decoding request (and response) bodies.
//!
//! The JSON header is parsed in two steps. First the envelope: small fields
//! (`name`, `datatype`, `parameters`, ...) become `serde_json::Value`s, while
//! each tensor's `data` is kept as a borrowed [`RawValue`], i.e. just a
//! validated slice of the header text. Once the tensor's datatype and shape
//! are known, `data` is parsed a second time straight into little-endian
//! bytes (or BYTES elements), so no `Value` is ever built per element.

use std::collections::HashSet;
use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sluice_tensor::{DataType, Tensor, element_count};

use crate::error::{DecodeError, TensorRef};
use crate::{DecodedResponse, InferRequest, NamedTensor, RequestedOutput};

/// Decodes an inference request body.
///
/// `header_length` is the value of the `Inference-Header-Content-Length`
/// HTTP header, if the request had one: the body is then that many bytes of
/// JSON followed by the binary tensor data. Without it the whole body is JSON.
///
/// Binary input tensors are [`Bytes::slice`]s of `body`, never copies.
pub fn decode_infer_request(
    body: Bytes,
    header_length: Option<usize>,
) -> Result<InferRequest, DecodeError> {
    let (text, binary) = split_body(&body, header_length)?;
    check_object(text, "request body")?;
    let wire: WireRequest<'_> =
        serde_json::from_str(text).map_err(|e| json_error("the request", &e))?;

    let id = match wire.id {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => return Err(wrong_type("request", "id", "a string", &other)),
    };
    let parameters = match wire.parameters {
        None => Map::new(),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(wrong_type("request", "parameters", "an object", &other)),
    };
    let binary_data_output = match parameters.get("binary_data_output") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(wrong_type(
                "request",
                "parameters.binary_data_output",
                "a boolean",
                other,
            ));
        }
    };
    let inputs = wire.inputs.ok_or(DecodeError::MissingField {
        context: "request".into(),
        field: "inputs",
    })?;
    let inputs = decode_tensors(inputs, "input", binary, header_length.is_some())?;
    let outputs = match wire.outputs {
        None => None,
        Some(value) => decode_requested_outputs(value, binary_data_output)?,
    };
    Ok(InferRequest {
        id,
        parameters,
        inputs,
        outputs,
        binary_data_output,
    })
}

/// Decodes an inference response body (the client side of the protocol:
/// used by Sluice's own client and tests; the reference client is
/// tritonclient). Same rules as [`decode_infer_request`]; binary outputs
/// are slices of `body`.
pub fn decode_infer_response(
    body: Bytes,
    header_length: Option<usize>,
) -> Result<DecodedResponse, DecodeError> {
    let (text, binary) = split_body(&body, header_length)?;
    check_object(text, "response body")?;
    let wire: WireResponse<'_> =
        serde_json::from_str(text).map_err(|e| json_error("the response", &e))?;
    let model_name = match wire.model_name {
        None => {
            return Err(DecodeError::MissingField {
                context: "response".into(),
                field: "model_name",
            });
        }
        Some(Value::String(s)) => s,
        Some(other) => return Err(wrong_type("response", "model_name", "a string", &other)),
    };
    let model_version = match wire.model_version {
        None => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(wrong_type("response", "model_version", "a string", &other));
        }
    };
    let id = match wire.id {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => return Err(wrong_type("response", "id", "a string", &other)),
    };
    let parameters = match wire.parameters {
        None => None,
        Some(Value::Object(map)) => Some(map),
        Some(other) => return Err(wrong_type("response", "parameters", "an object", &other)),
    };
    let outputs = wire.outputs.ok_or(DecodeError::MissingField {
        context: "response".into(),
        field: "outputs",
    })?;
    let outputs = decode_tensors(outputs, "output", binary, header_length.is_some())?;
    Ok(DecodedResponse {
        model_name,
        model_version,
        id,
        parameters,
        outputs,
    })
}

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    parameters: Option<Value>,
    #[serde(borrow, default)]
    inputs: Option<&'a RawValue>,
    #[serde(default)]
    outputs: Option<Value>,
}

#[derive(Deserialize)]
struct WireResponse<'a> {
    #[serde(default)]
    model_name: Option<Value>,
    #[serde(default)]
    model_version: Option<Value>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    parameters: Option<Value>,
    #[serde(borrow, default)]
    outputs: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireTensor<'a> {
    #[serde(default)]
    name: Option<Value>,
    #[serde(borrow, default)]
    shape: Option<&'a RawValue>,
    #[serde(default)]
    datatype: Option<Value>,
    #[serde(default)]
    parameters: Option<Value>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// The shared-memory extensions (system and CUDA) are not implemented: a
/// tensor that names a region is refused, never silently sent in the body
/// (the client would read a region nobody wrote).
fn reject_shared_memory(
    params: &serde_json::Map<String, Value>,
    context: &str,
) -> Result<(), DecodeError> {
    for name in [
        "shared_memory_region",
        "shared_memory_byte_size",
        "shared_memory_offset",
    ] {
        if params.get(name).is_some_and(|v| !v.is_null()) {
            return Err(DecodeError::UnsupportedParameter {
                context: context.to_string(),
                name: name.into(),
                hint: "; Sluice does not implement the shared-memory extensions, send the tensor in the request body",
            });
        }
    }
    Ok(())
}

/// Splits the body into the JSON header text and the binary section.
fn split_body(body: &Bytes, header_length: Option<usize>) -> Result<(&str, Bytes), DecodeError> {
    let json_len = match header_length {
        Some(h) if h > body.len() => {
            return Err(DecodeError::HeaderLengthTooLarge {
                header_length: h,
                body_len: body.len(),
            });
        }
        Some(h) => h,
        None => body.len(),
    };
    let text = std::str::from_utf8(&body[..json_len]).map_err(|e| DecodeError::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    Ok((text, body.slice(json_len..)))
}

/// What kind of JSON value `text` starts with (after whitespace), judged by
/// its first byte; `None` for empty text or a byte no JSON value starts with.
fn json_kind(text: &str) -> Option<&'static str> {
    let first = text
        .bytes()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))?;
    Some(match first {
        b'{' => "an object",
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        b'-' | b'0'..=b'9' => "a number",
        _ => return None,
    })
}

/// Refuses a header that is not a JSON object before serde sees it (serde
/// would happily read a struct from a JSON array).
fn check_object(text: &str, what: &'static str) -> Result<(), DecodeError> {
    match json_kind(text) {
        Some("an object") => Ok(()),
        Some(got) => Err(DecodeError::NotAnObject { what, got }),
        None if text.trim_ascii().is_empty() => Err(DecodeError::NotAnObject {
            what,
            got: "an empty header",
        }),
        // Not JSON at all: let serde say where.
        None => Ok(()),
    }
}

fn json_error(context: &str, e: &serde_json::Error) -> DecodeError {
    DecodeError::Json {
        context: context.to_string(),
        message: e.to_string(),
    }
}

fn describe(v: &Value) -> String {
    let kind = match v {
        Value::Null => return "null".into(),
        Value::Bool(b) => return b.to_string(),
        Value::Number(n) => return n.to_string(),
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    kind.into()
}

fn wrong_type(context: &str, field: &str, expected: &'static str, got: &Value) -> DecodeError {
    DecodeError::WrongType {
        context: context.to_string(),
        field: field.to_string(),
        expected,
        got: describe(got),
    }
}

fn decode_requested_outputs(
    value: Value,
    default_binary: bool,
) -> Result<Option<Vec<RequestedOutput>>, DecodeError> {
    let Value::Array(items) = value else {
        return Err(wrong_type("request", "outputs", "an array", &value));
    };
    // An empty list asks for no particular subset: like Triton, return all.
    if items.is_empty() {
        return Ok(None);
    }
    let mut seen = HashSet::with_capacity(items.len());
    let mut outputs = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let context = format!("outputs[{index}]");
        let Value::Object(mut obj) = item else {
            return Err(wrong_type("request", &context, "an object", &item));
        };
        let name = match obj.remove("name") {
            None => {
                return Err(DecodeError::MissingField {
                    context,
                    field: "name",
                });
            }
            Some(Value::String(s)) => s,
            Some(other) => return Err(wrong_type(&context, "name", "a string", &other)),
        };
        let context = format!("requested output {name:?}");
        let binary_data = match obj.remove("parameters") {
            None | Some(Value::Null) => default_binary,
            Some(Value::Object(params)) => {
                if let Some(class) = params.get("classification")
                    && class.as_u64() != Some(0)
                {
                    return Err(DecodeError::UnsupportedParameter {
                        context,
                        name: "classification".into(),
                        hint: "",
                    });
                }
                reject_shared_memory(&params, &context)?;
                match params.get("binary_data") {
                    None | Some(Value::Null) => default_binary,
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        return Err(wrong_type(
                            &context,
                            "parameters.binary_data",
                            "a boolean",
                            other,
                        ));
                    }
                }
            }
            Some(other) => return Err(wrong_type(&context, "parameters", "an object", &other)),
        };
        if !seen.insert(name.clone()) {
            return Err(DecodeError::DuplicateOutput { name });
        }
        outputs.push(RequestedOutput { name, binary_data });
    }
    Ok(Some(outputs))
}

/// Decodes the `inputs` (or response `outputs`) array. `binary` is the
/// section after the JSON header; `has_header` says whether there was one.
fn decode_tensors(
    raw: &RawValue,
    kind: &'static str,
    binary: Bytes,
    has_header: bool,
) -> Result<Vec<NamedTensor>, DecodeError> {
    let field = if kind == "input" { "inputs" } else { "outputs" };
    let container = if kind == "input" {
        "request"
    } else {
        "response"
    };
    match json_kind(raw.get()) {
        Some("an array") => {}
        got => {
            return Err(DecodeError::WrongType {
                context: container.into(),
                field: field.into(),
                expected: "an array",
                got: got.unwrap_or("invalid JSON").into(),
            });
        }
    }
    let items: Vec<&RawValue> =
        serde_json::from_str(raw.get()).map_err(|e| json_error(field, &e))?;

    let mut seen: HashSet<String> = HashSet::with_capacity(items.len());
    let mut tensors = Vec::with_capacity(items.len());
    let mut offset = 0usize;
    for (index, item) in items.into_iter().enumerate() {
        let mut tref = TensorRef {
            kind,
            index,
            name: None,
        };
        match json_kind(item.get()) {
            Some("an object") => {}
            got => {
                return Err(DecodeError::WrongType {
                    context: container.into(),
                    field: format!("{field}[{index}]"),
                    expected: "an object",
                    got: got.unwrap_or("invalid JSON").into(),
                });
            }
        }
        let wire: WireTensor<'_> =
            serde_json::from_str(item.get()).map_err(|e| json_error(&tref.to_string(), &e))?;

        let name = match wire.name {
            None => {
                return Err(DecodeError::MissingField {
                    context: tref.to_string(),
                    field: "name",
                });
            }
            Some(Value::String(s)) => s,
            Some(other) => return Err(wrong_type(&tref.to_string(), "name", "a string", &other)),
        };
        if seen.contains(&name) {
            return Err(if kind == "input" {
                DecodeError::DuplicateInput { name }
            } else {
                DecodeError::DuplicateOutput { name }
            });
        }
        tref.name = Some(name.clone());

        let dtype = match wire.datatype {
            None => {
                return Err(DecodeError::MissingField {
                    context: tref.to_string(),
                    field: "datatype",
                });
            }
            Some(Value::String(s)) => match DataType::parse(&s) {
                Some(d) => d,
                None => {
                    return Err(DecodeError::UnknownDatatype {
                        tensor: tref,
                        got: s,
                    });
                }
            },
            Some(other) => {
                return Err(wrong_type(
                    &tref.to_string(),
                    "datatype",
                    "a string",
                    &other,
                ));
            }
        };
        let Some(shape_raw) = wire.shape else {
            return Err(DecodeError::MissingField {
                context: tref.to_string(),
                field: "shape",
            });
        };
        let shape = parse_shape(shape_raw, &tref)?;
        let expected = element_count(&shape).map_err(|e| DecodeError::InvalidShape {
            tensor: tref.clone(),
            shape: shape_raw.get().to_string(),
            reason: e.to_string(),
        })?;
        // The byte size must be representable too (it is never allocated
        // up front; data is checked against it before anything is built).
        let expected_bytes = match dtype.element_size() {
            Some(size) => {
                Some(
                    expected
                        .checked_mul(size)
                        .ok_or_else(|| DecodeError::InvalidShape {
                            tensor: tref.clone(),
                            shape: shape_raw.get().to_string(),
                            reason: format!("its size in bytes as {dtype} overflows"),
                        })?,
                )
            }
            None => None,
        };

        let binary_size = match wire.parameters {
            None | Some(Value::Null) => None,
            Some(Value::Object(params)) => match reject_shared_memory(&params, &tref.to_string())
                .map(|()| params.get("binary_data_size"))?
            {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                    Some(n) => Some(n),
                    None => {
                        return Err(wrong_type(
                            &tref.to_string(),
                            "parameters.binary_data_size",
                            "a non-negative integer",
                            v,
                        ));
                    }
                },
            },
            Some(other) => {
                return Err(wrong_type(
                    &tref.to_string(),
                    "parameters",
                    "an object",
                    &other,
                ));
            }
        };

        let tensor = match (wire.data, binary_size) {
            (Some(_), Some(_)) => return Err(DecodeError::DataAndBinary { tensor: tref }),
            (None, None) => return Err(DecodeError::NoData { tensor: tref }),
            (Some(data), None) => {
                decode_json_data(data, dtype, shape, expected, expected_bytes, &tref)?
            }
            (None, Some(size)) => {
                if !has_header && size > 0 {
                    return Err(DecodeError::NoBinarySection { tensor: tref, size });
                }
                if let Some(expected_bytes) = expected_bytes
                    && size != expected_bytes
                {
                    return Err(DecodeError::BinarySize {
                        tensor: tref,
                        dtype,
                        shape,
                        expected_bytes,
                        got: size,
                    });
                }
                let end = match offset.checked_add(size) {
                    Some(end) if end <= binary.len() => end,
                    _ => {
                        return Err(DecodeError::BinaryOverrun {
                            tensor: tref,
                            offset,
                            size,
                            available: binary.len(),
                        });
                    }
                };
                let blob = binary.slice(offset..end);
                offset = end;
                decode_binary_data(blob, dtype, shape, expected, &tref)?
            }
        };
        seen.insert(name.clone());
        tensors.push(NamedTensor { name, tensor });
    }
    if offset != binary.len() {
        return Err(DecodeError::BinaryTrailing {
            used: offset,
            available: binary.len(),
        });
    }
    Ok(tensors)
}

/// Parses `shape`: an array of integers in `0..=i64::MAX`.
fn parse_shape(raw: &RawValue, tref: &TensorRef) -> Result<Vec<i64>, DecodeError> {
    let invalid = |reason: String| DecodeError::InvalidShape {
        tensor: tref.clone(),
        shape: raw.get().to_string(),
        reason,
    };
    if json_kind(raw.get()) != Some("an array") {
        return Err(invalid(
            "it must be an array of non-negative integers".into(),
        ));
    }
    // Elements as `Number`s: arbitrary JSON numbers, no nested values.
    let dims: Vec<Value> = serde_json::from_str(raw.get()).map_err(|e| invalid(e.to_string()))?;
    dims.iter()
        .enumerate()
        .map(|(i, d)| match d {
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    i64::try_from(u)
                        .map_err(|_| invalid(format!("dimension {i} ({u}) is too large")))
                } else if n.is_i64() {
                    Err(invalid(format!("dimension {i} ({n}) is negative")))
                } else {
                    Err(invalid(format!("dimension {i} ({n}) is not an integer")))
                }
            }
            other => Err(invalid(format!(
                "dimension {i} is {}, not an integer",
                describe(other)
            ))),
        })
        .collect()
}

/// A tensor from Triton's binary layout: raw little-endian elements, or for
/// BYTES a 4-byte little-endian length before each element.
/// A tensor from its elements in the binary tensor layout (a
/// `binary_data_size` blob; also an entry of the gRPC protocol's
/// `raw_input_contents`), checked against its declared datatype and shape
/// the same way: the shape before anything is allocated from it, then the
/// bytes against the shape. BYTES elements are slices of `blob`.
pub fn decode_binary_tensor(
    tref: &TensorRef,
    datatype: &str,
    shape: Vec<i64>,
    blob: Bytes,
) -> Result<Tensor, DecodeError> {
    let Some(dtype) = DataType::parse(datatype) else {
        return Err(DecodeError::UnknownDatatype {
            tensor: tref.clone(),
            got: datatype.to_string(),
        });
    };
    let expected = element_count(&shape).map_err(|e| DecodeError::InvalidShape {
        tensor: tref.clone(),
        shape: format!("{shape:?}"),
        reason: e.to_string(),
    })?;
    decode_binary_data(blob, dtype, shape, expected, tref)
}

fn decode_binary_data(
    blob: Bytes,
    dtype: DataType,
    shape: Vec<i64>,
    expected: usize,
    tref: &TensorRef,
) -> Result<Tensor, DecodeError> {
    if dtype != DataType::Bytes {
        if dtype == DataType::Bool
            && let Some(index) = blob.iter().position(|&b| b > 1)
        {
            return Err(DecodeError::BadElement {
                tensor: tref.clone(),
                dtype,
                index,
                value: format!("byte {}", blob[index]),
                reason: "BOOL elements must be 0 or 1".into(),
            });
        }
        // The byte count was checked against the shape already.
        return Tensor::from_raw(dtype, shape, blob).map_err(|source| DecodeError::Tensor {
            tensor: tref.clone(),
            source,
        });
    }
    // Bounded by the data actually sent, never by the declared shape.
    let mut elements = Vec::with_capacity(expected.min(blob.len() / 4));
    let mut pos = 0usize;
    let mut count = 0usize;
    while pos < blob.len() {
        let remaining = blob.len() - pos;
        if remaining < 4 {
            return Err(DecodeError::BytesElementTruncated {
                tensor: tref.clone(),
                index: count,
                offset: pos,
                need: 4,
                remaining,
            });
        }
        let len =
            u32::from_le_bytes([blob[pos], blob[pos + 1], blob[pos + 2], blob[pos + 3]]) as usize;
        if len > remaining - 4 {
            return Err(DecodeError::BytesElementTruncated {
                tensor: tref.clone(),
                index: count,
                offset: pos,
                need: 4 + len,
                remaining,
            });
        }
        if count < expected {
            elements.push(blob.slice(pos + 4..pos + 4 + len));
        }
        count += 1;
        pos += 4 + len;
    }
    if count != expected {
        return Err(DecodeError::ElementCount {
            tensor: tref.clone(),
            shape,
            expected,
            origin: "its binary data",
            got: count,
        });
    }
    Tensor::from_bytes_elements(shape, elements).map_err(|source| DecodeError::Tensor {
        tensor: tref.clone(),
        source,
    })
}

/// A tensor from its JSON `data`: a flat or nested array of elements,
/// flattened in row-major order.
fn decode_json_data(
    data: &RawValue,
    dtype: DataType,
    shape: Vec<i64>,
    expected: usize,
    expected_bytes: Option<usize>,
    tref: &TensorRef,
) -> Result<Tensor, DecodeError> {
    let text = data.get();
    if json_kind(text) != Some("an array") {
        return Err(DecodeError::WrongType {
            context: tref.to_string(),
            field: "data".into(),
            expected: "an array",
            got: json_kind(text).unwrap_or("invalid JSON").into(),
        });
    }
    // Every element takes at least two bytes of JSON ("1,"), so this bounds
    // the buffer by the data actually sent as well as by the shape.
    let max_elements = expected.min(text.len().div_ceil(2));
    if let Some((raw, count)) = scan_floats(text, dtype, expected, max_elements) {
        if count != expected {
            return Err(DecodeError::ElementCount {
                tensor: tref.clone(),
                shape,
                expected,
                origin: "`data`",
                got: count,
            });
        }
        return Tensor::from_raw(dtype, shape, Bytes::from(raw)).map_err(|source| {
            DecodeError::Tensor {
                tensor: tref.clone(),
                source,
            }
        });
    }
    let mut sink = Sink {
        tref,
        dtype,
        expected,
        count: 0,
        raw: match dtype.element_size() {
            Some(size) => {
                Vec::with_capacity((max_elements * size).min(expected_bytes.unwrap_or(0)))
            }
            None => Vec::with_capacity(text.len().min(1 << 20)),
        },
        ends: Vec::new(),
        error: None,
    };
    if dtype == DataType::Bytes {
        sink.ends.reserve(max_elements);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Level(&mut sink)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    if let Some(err) = sink.error.take() {
        return Err(err);
    }
    parsed.map_err(|e| json_error(&format!("{tref} `data`"), &e))?;

    if sink.count != expected {
        return Err(DecodeError::ElementCount {
            tensor: tref.clone(),
            shape,
            expected,
            origin: "`data`",
            got: sink.count,
        });
    }
    let result = if dtype == DataType::Bytes {
        let buf = Bytes::from(sink.raw);
        let mut start = 0;
        let elements = sink
            .ends
            .iter()
            .map(|&end| {
                let e = buf.slice(start..end);
                start = end;
                e
            })
            .collect();
        Tensor::from_bytes_elements(shape, elements)
    } else {
        Tensor::from_raw(dtype, shape, Bytes::from(sink.raw))
    };
    result.map_err(|source| DecodeError::Tensor {
        tensor: tref.clone(),
        source,
    })
}

/// The fast path for FP32 and FP64 `data`: one pass over the text, numbers
/// parsed straight from their digits into the little-endian buffer, without
/// serde's per-element dispatch (a large image as JSON is 300,000 numbers).
/// Returns the buffer and the number of elements (also those past
/// `expected`, which are not stored), or `None` for anything but a
/// well-formed, possibly nested, array of finite JSON numbers: that text
/// takes the general path, which accepts the same valid inputs and words
/// every error.
fn scan_floats(
    text: &str,
    dtype: DataType,
    expected: usize,
    max_elements: usize,
) -> Option<(Vec<u8>, usize)> {
    let size = match dtype {
        DataType::Fp32 => 4,
        DataType::Fp64 => 8,
        _ => return None,
    };
    let bytes = text.as_bytes();
    let mut raw = Vec::with_capacity(max_elements * size);
    let mut count = 0usize;
    let mut depth = 0usize;
    // After '[' or ',': a value must come ('[' may also be closed at once).
    let mut want_value = true;
    let mut just_opened = false;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\n' | b'\r' | b'\t' => i += 1,
            // Deeper nesting than any real tensor has is left to the general
            // path, which refuses it past serde's recursion limit.
            b'[' if want_value && depth < SCAN_MAX_DEPTH => {
                depth += 1;
                just_opened = true;
                i += 1;
            }
            b']' if depth > 0 && (!want_value || just_opened) => {
                depth -= 1;
                want_value = false;
                just_opened = false;
                i += 1;
                if depth == 0 {
                    // Only whitespace may follow the outer array.
                    return bytes[i..]
                        .iter()
                        .all(|b| b.is_ascii_whitespace())
                        .then_some((raw, count));
                }
            }
            b',' if depth > 0 && !want_value => {
                want_value = true;
                just_opened = false;
                i += 1;
            }
            b'-' | b'0'..=b'9' if want_value && depth > 0 => {
                let end = i + json_number_len(&bytes[i..])?;
                let number = &text[i..end];
                count += 1;
                if count <= expected {
                    if size == 4 {
                        let v: f32 = number.parse().ok()?;
                        if !v.is_finite() {
                            return None;
                        }
                        raw.extend_from_slice(&v.to_le_bytes());
                    } else {
                        let v: f64 = number.parse().ok()?;
                        if !v.is_finite() {
                            return None;
                        }
                        raw.extend_from_slice(&v.to_le_bytes());
                    }
                }
                want_value = false;
                just_opened = false;
                i = end;
            }
            _ => return None,
        }
    }
    None
}

/// The deepest nesting of `data` the fast path reads (tensors of rank up to
/// this, nested one array per dimension).
const SCAN_MAX_DEPTH: usize = 32;

/// The length of the JSON number at the start of `b`
/// (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`), or `None` if it is
/// not one.
fn json_number_len(b: &[u8]) -> Option<usize> {
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = usize::from(b.first() == Some(&b'-'));
    match b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i += digits(i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let n = digits(i + 1);
        if n == 0 {
            return None;
        }
        i += 1 + n;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let n = digits(i);
        if n == 0 {
            return None;
        }
        i += n;
    }
    Some(i)
}

/// Where the elements of a JSON `data` array go.
struct Sink<'t> {
    tref: &'t TensorRef,
    dtype: DataType,
    expected: usize,
    /// Elements seen so far (also past `expected`, which are not stored).
    count: usize,
    /// Little-endian elements, or for BYTES all strings back to back.
    raw: Vec<u8>,
    /// For BYTES: where each string ends in `raw`.
    ends: Vec<usize>,
    /// The precise error, when a visitor fails (serde's own error then
    /// only carries a position).
    error: Option<DecodeError>,
}

impl Sink<'_> {
    fn fail<E: de::Error>(&mut self, value: String, reason: impl Into<String>) -> E {
        self.error = Some(DecodeError::BadElement {
            tensor: self.tref.clone(),
            dtype: self.dtype,
            index: self.count,
            value,
            reason: reason.into(),
        });
        E::custom("invalid element")
    }

    /// Counts one element; `false` when it is past the shape and must not
    /// be stored (it is still counted, for the error message).
    fn admit(&mut self) -> bool {
        self.count += 1;
        self.count <= self.expected
    }

    fn int<E: de::Error>(&mut self, v: i128) -> Result<(), E> {
        let Some((lo, hi)) = int_range(self.dtype) else {
            return match self.dtype {
                DataType::Bool => Err(self.fail(v.to_string(), "BOOL accepts only true or false")),
                DataType::Bytes => Err(self.fail(v.to_string(), "BYTES accepts only strings")),
                // Integers are valid floats (with the precision the type has).
                _ => self.float(v as f64),
            };
        };
        if v < lo || v > hi {
            return Err(self.fail(
                v.to_string(),
                format!("out of range for {} ({lo}..={hi})", self.dtype),
            ));
        }
        if !self.admit() {
            return Ok(());
        }
        // Two's complement little-endian, truncated to the element size:
        // exact, since `v` is in range.
        let size = self.dtype.element_size().unwrap_or(0);
        self.raw.extend_from_slice(&v.to_le_bytes()[..size]);
        Ok(())
    }

    fn float<E: de::Error>(&mut self, v: f64) -> Result<(), E> {
        let bytes: &[u8] = match self.dtype {
            DataType::Fp16 => &half::f16::from_f64(v).to_le_bytes(),
            DataType::Bf16 => &half::bf16::from_f64(v).to_le_bytes(),
            DataType::Fp32 => &(v as f32).to_le_bytes(),
            DataType::Fp64 => &v.to_le_bytes(),
            DataType::Bool => {
                return Err(self.fail(format!("{v:?}"), "BOOL accepts only true or false"));
            }
            DataType::Bytes => {
                return Err(self.fail(format!("{v:?}"), "BYTES accepts only strings"));
            }
            _ => {
                let reason = match int_range(self.dtype) {
                    // JSON integers too large for 64 bits arrive as floats.
                    Some((lo, hi)) if v.fract() == 0.0 && (v < lo as f64 || v > hi as f64) => {
                        format!("out of range for {} ({lo}..={hi})", self.dtype)
                    }
                    _ => format!(
                        "{} accepts only integers (no fraction or exponent)",
                        self.dtype
                    ),
                };
                return Err(self.fail(format!("{v:?}"), reason));
            }
        };
        if self.admit() {
            self.raw.extend_from_slice(bytes);
        }
        Ok(())
    }
}

/// The range of an integer datatype; `None` for the others.
fn int_range(dtype: DataType) -> Option<(i128, i128)> {
    Some(match dtype {
        DataType::Uint8 => (0, u8::MAX.into()),
        DataType::Uint16 => (0, u16::MAX.into()),
        DataType::Uint32 => (0, u32::MAX.into()),
        DataType::Uint64 => (0, u64::MAX.into()),
        DataType::Int8 => (i8::MIN.into(), i8::MAX.into()),
        DataType::Int16 => (i16::MIN.into(), i16::MAX.into()),
        DataType::Int32 => (i32::MIN.into(), i32::MAX.into()),
        DataType::Int64 => (i64::MIN.into(), i64::MAX.into()),
        _ => return None,
    })
}

/// One level of (possibly nested) `data` array, or one element.
struct Level<'s, 't>(&'s mut Sink<'t>);

impl<'de> DeserializeSeed<'de> for Level<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} elements or arrays of them", self.0.dtype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Level(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        let sink = self.0;
        if sink.dtype != DataType::Bool {
            let reason = if sink.dtype == DataType::Bytes {
                "BYTES accepts only strings".to_string()
            } else {
                format!("{} accepts only numbers", sink.dtype)
            };
            return Err(sink.fail(v.to_string(), reason));
        }
        if sink.admit() {
            sink.raw.push(u8::from(v));
        }
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.int(v.into())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.int(v.into())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.float(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let sink = self.0;
        if sink.dtype != DataType::Bytes {
            let shown = if v.len() > 64 {
                format!("a string of {} bytes", v.len())
            } else {
                format!("the string {v:?}")
            };
            let reason = if sink.dtype == DataType::Bool {
                "BOOL accepts only true or false".to_string()
            } else {
                format!("{} accepts only numbers", sink.dtype)
            };
            return Err(sink.fail(shown, reason));
        }
        if sink.admit() {
            sink.raw.extend_from_slice(v.as_bytes());
            sink.ends.push(sink.raw.len());
        }
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.0.fail("null".into(), "elements cannot be null"))
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        Err(self
            .0
            .fail("an object".into(), "elements must be values or arrays"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(raw: &[u8]) -> Vec<f32> {
        raw.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn the_float_scanner_reads_flat_and_nested_arrays_exactly() {
        let (raw, n) = scan_floats(
            " [[1, -2.5e0 ,0.1],\n[ 3E2,-0, 0.000001] , [] ] ",
            DataType::Fp32,
            6,
            6,
        )
        .unwrap();
        assert_eq!(n, 6);
        let got = f32s(&raw);
        assert_eq!(got, vec![1.0, -2.5, 0.1, 300.0, -0.0, 0.000001]);
        assert!(got[4].is_sign_negative());
        let (raw, n) = scan_floats("[0.1, 1e300]", DataType::Fp64, 2, 2).unwrap();
        assert_eq!(n, 2);
        assert_eq!(f64::from_le_bytes(raw[..8].try_into().unwrap()), 0.1);
        // Elements past the shape are counted, not stored.
        let (raw, n) = scan_floats("[1,2,3]", DataType::Fp32, 2, 2).unwrap();
        assert_eq!((raw.len(), n), (8, 3));
    }

    #[test]
    fn the_float_scanner_leaves_everything_else_to_the_general_path() {
        for text in [
            "[1,]",
            "[,1]",
            "[1 2]",
            "[1,2",
            "[1]]",
            "[1] x",
            "[01]",
            "[1.]",
            "[.5]",
            "[+1]",
            "[1e]",
            "[1e+]",
            "[-]",
            "[NaN]",
            "[Infinity]",
            "[1e999]",
            "[\"1\"]",
            "[true]",
            "[null]",
            "[{}]",
            "[[1],2,]",
            "[]]",
            "",
        ] {
            assert!(
                scan_floats(text, DataType::Fp32, 4, 4).is_none(),
                "{text:?} should take the general path"
            );
        }
        let deep = format!("{}1{}", "[".repeat(33), "]".repeat(33));
        assert!(scan_floats(&deep, DataType::Fp32, 1, 1).is_none());
        let ok = format!("{}1{}", "[".repeat(32), "]".repeat(32));
        assert!(scan_floats(&ok, DataType::Fp32, 1, 1).is_some());
        // Only FP32 and FP64 take this path.
        assert!(scan_floats("[1]", DataType::Int32, 1, 1).is_none());
        assert!(scan_floats("[1]", DataType::Fp16, 1, 1).is_none());
    }

    proptest::proptest! {
        /// Whatever floats a client sends, formatted the shortest way (as
        /// Sluice and most JSON libraries do) or with 17 digits (as Python
        /// does for doubles), come back bit for bit.
        #[test]
        fn the_float_scanner_round_trips(values in proptest::collection::vec(proptest::num::f32::NORMAL | proptest::num::f32::SUBNORMAL | proptest::num::f32::ZERO, 0..64)) {
            let shortest = format!("[{}]", values.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(","));
            let (raw, n) = scan_floats(&shortest, DataType::Fp32, values.len(), values.len()).unwrap();
            proptest::prop_assert_eq!(n, values.len());
            proptest::prop_assert_eq!(f32s(&raw), values.clone());
            let long = format!("[{}]", values.iter().map(|v| format!("{:.17e}", *v as f64)).collect::<Vec<_>>().join(", "));
            let (raw, _) = scan_floats(&long, DataType::Fp32, values.len(), values.len()).unwrap();
            proptest::prop_assert_eq!(f32s(&raw), values);
        }
    }
}
