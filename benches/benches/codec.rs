//! The wire format's own costs (`sluice-oip`): decoding and encoding of
//! inference requests and responses, in JSON and in Triton's binary
//! extension, at two sizes:
//!
//! - `mlp_1x16`: the tiny MLP's input, FP32 `[1, 16]` (64 bytes of data).
//! - `image_1x3x320x320`: a YOLO-style image input, FP32 `[1, 3, 320, 320]`
//!   (307,200 elements, 1,228,800 bytes of data).
//!
//! Per size, eight benches, each over a body made once before measuring:
//!
//! | bench | function | side |
//! |---|---|---|
//! | `decode_request_json` | `decode_infer_request` (FP32 JSON number parsing) | server |
//! | `decode_request_binary` | `decode_infer_request` (zero-copy slice) | server |
//! | `encode_response_json` | `encode_infer_response_chunks` (FP32 JSON number formatting) | server |
//! | `encode_response_binary` | `encode_infer_response_chunks` (no copy of the tensor) | server |
//! | `encode_request_json` | `encode_infer_request` (FP32 formatting) | client |
//! | `encode_request_binary` | `encode_infer_request` (one copy into the body) | client |
//! | `decode_response_json` | `decode_infer_response` (FP32 parsing) | client |
//! | `decode_response_binary` | `decode_infer_response` (zero-copy slice) | client |
//!
//! The server side is what `sluice-server` calls for every request
//! (`decode_infer_request`, then `encode_infer_response_chunks`); the client
//! side is what Sluice's own client and tests call. The response carries
//! the same tensor as the request (named `output`), so both directions move
//! the same bytes. Throughput is in bytes of the whole body on the wire
//! (JSON header plus binary section), so JSON and binary of one tensor
//! report different byte counts: compare their times, not their MB/s.
//!
//! Before measuring, every body is decoded back and the tensor compared with
//! the original, bit for bit: a bench that measures errors measures nothing.
//!
//! Environment (optional): `SLUICE_BENCH_MEASUREMENT_S` (default 3),
//! criterion's measurement time per bench, in seconds.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use serde_json::Map;
use sluice_oip::{
    EncodedResponse, InferRequest, InferResponse, NamedTensor, RequestedOutput, ResponseOutput,
    decode_infer_request, decode_infer_response, encode_infer_request, encode_infer_response,
    encode_infer_response_chunks,
};
use sluice_tensor::{DataType, Tensor};

/// A deterministic xorshift64 generator: the same data on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The MLP's input: full-precision values in [-1, 1), as a model's
/// features are (most print with 8 or 9 significant digits).
fn mlp_values(n: usize) -> Vec<f32> {
    let mut rng = Rng(0x5eed_0001);
    (0..n)
        .map(|_| (rng.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        .collect()
}

/// An image as a detector's preprocessing leaves it: 8-bit pixels / 255.
fn image_values(n: usize) -> Vec<f32> {
    let mut rng = Rng(0x5eed_0002);
    (0..n)
        .map(|_| (rng.next() >> 56) as u8 as f32 / 255.0)
        .collect()
}

fn fp32_tensor(shape: &[i64], values: &[f32]) -> Tensor {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::from_raw(DataType::Fp32, shape.to_vec(), Bytes::from(raw)).expect("FP32 tensor")
}

/// One size's inputs, made and checked once.
struct Case {
    name: &'static str,
    tensor: Tensor,
    /// With `binary`, the request asks for its one output in binary.
    request_json: InferRequest,
    request_binary: InferRequest,
    /// Request bodies, as a client sends them.
    request_json_body: EncodedResponse,
    request_binary_body: EncodedResponse,
    /// Response bodies, as the server sends them (contiguous).
    response_json_body: EncodedResponse,
    response_binary_body: EncodedResponse,
}

fn request(tensor: &Tensor, binary: bool) -> InferRequest {
    let mut parameters = Map::new();
    if binary {
        parameters.insert("binary_data_output".into(), true.into());
    }
    InferRequest {
        id: None,
        parameters,
        inputs: vec![NamedTensor {
            name: "input".into(),
            tensor: tensor.clone(),
        }],
        outputs: Some(vec![RequestedOutput {
            name: "output".into(),
            binary_data: binary,
        }]),
        binary_data_output: binary,
    }
}

fn response<'a>(tensor: &Tensor, binary: bool) -> InferResponse<'a> {
    InferResponse {
        model_name: "model",
        model_version: "1",
        id: None,
        parameters: None,
        outputs: vec![ResponseOutput {
            name: "output".into(),
            tensor: tensor.clone(),
            binary_data: binary,
        }],
    }
}

impl Case {
    fn new(name: &'static str, shape: &[i64], values: &[f32]) -> Case {
        let tensor = fp32_tensor(shape, values);
        let request_json = request(&tensor, false);
        let request_binary = request(&tensor, true);
        let case = Case {
            name,
            request_json_body: encode_infer_request(&request_json, |_| false),
            request_binary_body: encode_infer_request(&request_binary, |_| true),
            response_json_body: encode_infer_response(&response(&tensor, false)),
            response_binary_body: encode_infer_response(&response(&tensor, true)),
            request_json,
            request_binary,
            tensor,
        };
        case.check();
        case
    }

    /// Every body decodes back to exactly the tensor it was made from, and
    /// the chunked encoding the server uses is the same body.
    fn check(&self) {
        let name = self.name;
        assert_eq!(self.request_json_body.header_length, None, "{name}");
        assert!(self.request_binary_body.header_length.is_some(), "{name}");
        assert_eq!(self.response_json_body.header_length, None, "{name}");
        assert!(self.response_binary_body.header_length.is_some(), "{name}");

        for (what, body, want_binary) in [
            ("JSON request", &self.request_json_body, false),
            ("binary request", &self.request_binary_body, true),
        ] {
            let decoded = decode_infer_request(body.body.clone(), body.header_length)
                .unwrap_or_else(|e| panic!("{name}: decoding the {what}: {e}"));
            assert_eq!(decoded.inputs.len(), 1, "{name}: {what}");
            assert_eq!(decoded.inputs[0].name, "input", "{name}: {what}");
            assert_eq!(
                decoded.inputs[0].tensor, self.tensor,
                "{name}: the {what} does not decode to the tensor encoded"
            );
            assert_eq!(decoded.output_binary("output"), want_binary, "{name}");
        }
        for (what, body, binary) in [
            ("JSON response", &self.response_json_body, false),
            ("binary response", &self.response_binary_body, true),
        ] {
            let decoded = decode_infer_response(body.body.clone(), body.header_length)
                .unwrap_or_else(|e| panic!("{name}: decoding the {what}: {e}"));
            assert_eq!(decoded.model_name, "model", "{name}: {what}");
            assert_eq!(decoded.outputs.len(), 1, "{name}: {what}");
            assert_eq!(
                decoded.outputs[0].tensor, self.tensor,
                "{name}: the {what} does not decode to the tensor encoded"
            );
            let chunks = encode_infer_response_chunks(&response(&self.tensor, binary));
            assert_eq!(chunks.header_length, body.header_length, "{name}: {what}");
            assert_eq!(
                chunks.chunks.concat(),
                body.body.as_ref(),
                "{name}: the chunked {what} is not the contiguous one"
            );
        }
        println!(
            "codec {name}: {} elements; request body JSON {} bytes, binary {} bytes; \
             response body JSON {} bytes, binary {} bytes",
            self.tensor.len(),
            self.request_json_body.body.len(),
            self.request_binary_body.body.len(),
            self.response_json_body.body.len(),
            self.response_binary_body.body.len(),
        );
    }
}

fn bench_case(c: &mut Criterion, case: &Case, large: bool) {
    let mut group = c.benchmark_group(format!("codec/{}", case.name));
    if large {
        // Milliseconds per iteration: same-sized samples fit the time.
        group.sampling_mode(SamplingMode::Flat);
    }
    let bytes = |e: &EncodedResponse| Throughput::Bytes(e.body.len() as u64);

    // Server side: decode the request, encode the response.
    for (id, body) in [
        ("decode_request_json", &case.request_json_body),
        ("decode_request_binary", &case.request_binary_body),
    ] {
        group.throughput(bytes(body));
        group.bench_function(id, |b| {
            b.iter(|| {
                decode_infer_request(black_box(body.body.clone()), black_box(body.header_length))
                    .expect("decodes")
            })
        });
    }
    for (id, body, binary) in [
        ("encode_response_json", &case.response_json_body, false),
        ("encode_response_binary", &case.response_binary_body, true),
    ] {
        let resp = response(&case.tensor, binary);
        group.throughput(bytes(body));
        group.bench_function(id, |b| {
            b.iter(|| encode_infer_response_chunks(black_box(&resp)))
        });
    }

    // Client side: encode the request, decode the response.
    for (id, body, req, binary) in [
        (
            "encode_request_json",
            &case.request_json_body,
            &case.request_json,
            false,
        ),
        (
            "encode_request_binary",
            &case.request_binary_body,
            &case.request_binary,
            true,
        ),
    ] {
        group.throughput(bytes(body));
        group.bench_function(id, |b| {
            b.iter(|| encode_infer_request(black_box(req), |_| binary))
        });
    }
    for (id, body) in [
        ("decode_response_json", &case.response_json_body),
        ("decode_response_binary", &case.response_binary_body),
    ] {
        group.throughput(bytes(body));
        group.bench_function(id, |b| {
            b.iter(|| {
                decode_infer_response(black_box(body.body.clone()), black_box(body.header_length))
                    .expect("decodes")
            })
        });
    }
    group.finish();
}

fn codec(c: &mut Criterion) {
    let mlp = Case::new("mlp_1x16", &[1, 16], &mlp_values(16));
    bench_case(c, &mlp, false);
    let image = Case::new(
        "image_1x3x320x320",
        &[1, 3, 320, 320],
        &image_values(3 * 320 * 320),
    );
    bench_case(c, &image, true);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(sluice_benches::measurement_time());
    targets = codec
}
criterion_main!(benches);
