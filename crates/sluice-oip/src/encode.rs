//! Encoding response (and request) bodies.
//!
//! JSON is written straight into one `Vec<u8>`: numbers with `itoa`/`ryu`,
//! strings through serde_json's escaper. No `serde_json::Value` is built for
//! tensor data.

use bytes::Bytes;
use half::{bf16, f16};
use serde_json::{Map, Value};
use sluice_tensor::{DataType, Tensor, TensorData};

use crate::{EncodedChunks, EncodedResponse, InferRequest, InferResponse, NamedTensor};

/// Encodes an inference response as one contiguous body: the JSON header,
/// then the blobs of the binary outputs in the order they appear in
/// `resp.outputs`.
///
/// Outputs are emitted in `resp.outputs` order. JSON `data` is always flat.
/// In JSON, NaN and ±infinity become `null` (JSON has no such numbers;
/// tritonclient reads `null` back as NaN for float outputs) and BYTES
/// elements become strings, with invalid UTF-8 replaced by U+FFFD; binary
/// outputs carry every value bit-exactly.
pub fn encode_infer_response(resp: &InferResponse<'_>) -> EncodedResponse {
    let mut out = Vec::with_capacity(256);
    let binaries = write_response_header(&mut out, resp);
    finish(out, &binaries)
}

/// Like [`encode_infer_response`] but without copying the binary outputs:
/// `chunks[0]` is the JSON header and each further chunk is one binary
/// output's blob (a clone of the tensor's `Bytes`, i.e. a reference-count
/// increment; BYTES outputs are serialised into a new buffer). Sending the
/// chunks one after the other gives exactly the body of
/// [`encode_infer_response`].
pub fn encode_infer_response_chunks(resp: &InferResponse<'_>) -> EncodedChunks {
    let mut out = Vec::with_capacity(256);
    let binaries = write_response_header(&mut out, resp);
    let header_length = (!binaries.is_empty()).then_some(out.len());
    let mut chunks = Vec::with_capacity(1 + binaries.len());
    chunks.push(Bytes::from(out));
    chunks.extend(binaries.iter().map(|t| t.to_binary()));
    EncodedChunks {
        chunks,
        header_length,
    }
}

/// Encodes an inference request (the client side of the protocol; used by
/// Sluice's own client and tests). Inputs for which `binary_input` returns
/// true are sent in Triton's binary layout after the JSON header, the rest
/// as JSON `data`. Requested outputs are sent with an explicit
/// `binary_data` flag; `binary_data_output` is sent as a request parameter
/// when true (or when `parameters` already carries it).
pub fn encode_infer_request(
    req: &InferRequest,
    binary_input: impl Fn(&NamedTensor) -> bool,
) -> EncodedResponse {
    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    let mut first = true;
    if let Some(id) = &req.id {
        key(&mut out, &mut first, "id");
        write_str(&mut out, id);
    }
    let wants_flag = req.binary_data_output || req.parameters.contains_key("binary_data_output");
    if wants_flag {
        let mut parameters = req.parameters.clone();
        parameters.insert(
            "binary_data_output".into(),
            Value::Bool(req.binary_data_output),
        );
        key(&mut out, &mut first, "parameters");
        write_map(&mut out, &parameters);
    } else if !req.parameters.is_empty() {
        key(&mut out, &mut first, "parameters");
        write_map(&mut out, &req.parameters);
    }
    key(&mut out, &mut first, "inputs");
    out.push(b'[');
    let mut binaries = Vec::new();
    for (i, input) in req.inputs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let binary = binary_input(input) && fits_binary(&input.tensor);
        write_tensor(&mut out, &input.name, &input.tensor, binary);
        if binary {
            binaries.push(&input.tensor);
        }
    }
    out.push(b']');
    if let Some(outputs) = &req.outputs {
        key(&mut out, &mut first, "outputs");
        out.push(b'[');
        for (i, o) in outputs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            write_str(&mut out, &o.name);
            out.extend_from_slice(if o.binary_data {
                b",\"parameters\":{\"binary_data\":true}}"
            } else {
                b",\"parameters\":{\"binary_data\":false}}"
            });
        }
        out.push(b']');
    }
    out.push(b'}');
    finish(out, &binaries)
}

/// Appends the binary blobs (if any) after the JSON header.
fn finish(mut out: Vec<u8>, binaries: &[&Tensor]) -> EncodedResponse {
    if binaries.is_empty() {
        return EncodedResponse {
            body: Bytes::from(out),
            header_length: None,
        };
    }
    let header_length = out.len();
    out.reserve(binaries.iter().map(|t| binary_len(t)).sum());
    for t in binaries {
        write_binary(&mut out, t);
    }
    EncodedResponse {
        body: Bytes::from(out),
        header_length: Some(header_length),
    }
}

/// Writes the response JSON; returns the outputs sent in binary, in order.
fn write_response_header<'r>(out: &mut Vec<u8>, resp: &'r InferResponse<'_>) -> Vec<&'r Tensor> {
    out.extend_from_slice(b"{\"model_name\":");
    write_str(out, resp.model_name);
    out.extend_from_slice(b",\"model_version\":");
    write_str(out, resp.model_version);
    if let Some(id) = resp.id {
        out.extend_from_slice(b",\"id\":");
        write_str(out, id);
    }
    if let Some(parameters) = resp.parameters {
        out.extend_from_slice(b",\"parameters\":");
        write_map(out, parameters);
    }
    out.extend_from_slice(b",\"outputs\":[");
    let mut binaries = Vec::new();
    for (i, o) in resp.outputs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let binary = o.binary_data && fits_binary(&o.tensor);
        write_tensor(out, &o.name, &o.tensor, binary);
        if binary {
            binaries.push(&o.tensor);
        }
    }
    out.extend_from_slice(b"]}");
    binaries
}

/// Triton's binary layout gives each BYTES element a 32-bit length; a
/// (theoretical) element of 4 GiB or more is sent as JSON instead.
fn fits_binary(t: &Tensor) -> bool {
    match t.data() {
        TensorData::Raw(_) => true,
        TensorData::Bytes(elements) => elements.iter().all(|e| u32::try_from(e.len()).is_ok()),
    }
}

fn binary_len(t: &Tensor) -> usize {
    match t.data() {
        TensorData::Raw(raw) => raw.len(),
        TensorData::Bytes(elements) => elements.iter().map(|e| 4 + e.len()).sum(),
    }
}

fn write_binary(out: &mut Vec<u8>, t: &Tensor) {
    match t.data() {
        TensorData::Raw(raw) => out.extend_from_slice(raw),
        TensorData::Bytes(elements) => {
            for e in elements {
                // `fits_binary` was checked.
                out.extend_from_slice(&(e.len() as u32).to_le_bytes());
                out.extend_from_slice(e);
            }
        }
    }
}

fn key(out: &mut Vec<u8>, first: &mut bool, name: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("serialising a str into a Vec cannot fail");
}

fn write_map(out: &mut Vec<u8>, map: &Map<String, Value>) {
    serde_json::to_writer(out, map).expect("serialising a JSON map into a Vec cannot fail");
}

/// One tensor object: `{"name","datatype","shape"}` plus either
/// `"parameters":{"binary_data_size":N}` or `"data":[...]`.
fn write_tensor(out: &mut Vec<u8>, name: &str, t: &Tensor, binary: bool) {
    let mut ints = itoa::Buffer::new();
    out.extend_from_slice(b"{\"name\":");
    write_str(out, name);
    out.extend_from_slice(b",\"datatype\":\"");
    out.extend_from_slice(t.dtype().as_str().as_bytes());
    out.extend_from_slice(b"\",\"shape\":[");
    for (i, d) in t.shape().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(ints.format(*d).as_bytes());
    }
    out.push(b']');
    if binary {
        out.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
        out.extend_from_slice(ints.format(binary_len(t)).as_bytes());
        out.extend_from_slice(b"}}");
    } else {
        out.extend_from_slice(b",\"data\":");
        write_data(out, t);
        out.push(b'}');
    }
}

/// A flat JSON array of the tensor's elements.
fn write_data(out: &mut Vec<u8>, t: &Tensor) {
    let raw = match t.data() {
        TensorData::Bytes(elements) => {
            out.push(b'[');
            for (i, e) in elements.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, &String::from_utf8_lossy(e));
            }
            out.push(b']');
            return;
        }
        TensorData::Raw(raw) => &raw[..],
    };
    match t.dtype() {
        DataType::Bool => {
            out.reserve(raw.len() * 6 + 2);
            out.push(b'[');
            for (i, &b) in raw.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(if b != 0 { b"true" } else { b"false" });
            }
            out.push(b']');
        }
        DataType::Uint8 => write_ints(out, raw, u8::from_le_bytes),
        DataType::Uint16 => write_ints(out, raw, u16::from_le_bytes),
        DataType::Uint32 => write_ints(out, raw, u32::from_le_bytes),
        DataType::Uint64 => write_ints(out, raw, u64::from_le_bytes),
        DataType::Int8 => write_ints(out, raw, i8::from_le_bytes),
        DataType::Int16 => write_ints(out, raw, i16::from_le_bytes),
        DataType::Int32 => write_ints(out, raw, i32::from_le_bytes),
        DataType::Int64 => write_ints(out, raw, i64::from_le_bytes),
        DataType::Fp16 => write_f32s(out, raw, |b| f16::from_le_bytes(b).to_f32()),
        DataType::Bf16 => write_f32s(out, raw, |b| bf16::from_le_bytes(b).to_f32()),
        DataType::Fp32 => write_f32s(out, raw, f32::from_le_bytes),
        DataType::Fp64 => write_f64s(out, raw),
        // BYTES is never raw (sluice-tensor guarantees it).
        DataType::Bytes => out.extend_from_slice(b"[]"),
    }
}

fn write_ints<const N: usize, T: itoa::Integer>(
    out: &mut Vec<u8>,
    raw: &[u8],
    conv: impl Fn([u8; N]) -> T,
) {
    let (elements, _) = raw.as_chunks::<N>();
    let mut buf = itoa::Buffer::new();
    out.reserve(elements.len() * 4 + 2);
    out.push(b'[');
    for (i, e) in elements.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(buf.format(conv(*e)).as_bytes());
    }
    out.push(b']');
}

fn write_f32s<const N: usize>(out: &mut Vec<u8>, raw: &[u8], conv: impl Fn([u8; N]) -> f32) {
    let (elements, _) = raw.as_chunks::<N>();
    let mut buf = ryu::Buffer::new();
    out.reserve(elements.len() * 10 + 2);
    out.push(b'[');
    for (i, e) in elements.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let v = conv(*e);
        if v.is_finite() {
            out.extend_from_slice(buf.format_finite(v).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
    }
    out.push(b']');
}

fn write_f64s(out: &mut Vec<u8>, raw: &[u8]) {
    let (elements, _) = raw.as_chunks::<8>();
    let mut buf = ryu::Buffer::new();
    out.reserve(elements.len() * 18 + 2);
    out.push(b'[');
    for (i, e) in elements.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let v = f64::from_le_bytes(*e);
        if v.is_finite() {
            out.extend_from_slice(buf.format_finite(v).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
    }
    out.push(b']');
}
