//! Property tests: decoding never panics, whatever the bytes; valid requests
//! of every datatype survive an encode/decode round trip exactly.

mod common;

use bytes::Bytes;
use proptest::prelude::*;
use sluice_oip::{
    InferRequest, InferResponse, NamedTensor, RequestedOutput, ResponseOutput,
    decode_infer_request, decode_infer_response, encode_infer_request, encode_infer_response,
};
use sluice_tensor::{DataType, Tensor};

/// A tensor of `dtype` and a small random shape. With `json_safe`, values
/// are ones JSON can carry (finite floats; BYTES as UTF-8 strings).
fn tensor(dtype: DataType, json_safe: bool) -> impl Strategy<Value = Tensor> {
    prop::collection::vec(0i64..4, 0..4).prop_flat_map(move |shape| {
        let n: usize = shape.iter().product::<i64>() as usize;
        let shape2 = shape.clone();
        match dtype.element_size() {
            None if json_safe => prop::collection::vec(any::<String>(), n)
                .prop_map(move |v| {
                    let e = v.into_iter().map(Bytes::from).collect();
                    Tensor::from_bytes_elements(shape.clone(), e).unwrap()
                })
                .boxed(),
            None => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), n)
                .prop_map(move |v| {
                    let e = v.into_iter().map(Bytes::from).collect();
                    Tensor::from_bytes_elements(shape.clone(), e).unwrap()
                })
                .boxed(),
            Some(size) => prop::collection::vec(any::<u8>(), n * size)
                .prop_map(move |mut raw| {
                    sanitize(dtype, json_safe, &mut raw);
                    Tensor::from_raw(dtype, shape2.clone(), Bytes::from(raw)).unwrap()
                })
                .boxed(),
        }
    })
}

/// Makes random bytes valid elements: BOOL 0/1, and (for JSON) no NaN or
/// infinity, which JSON cannot carry.
fn sanitize(dtype: DataType, json_safe: bool, raw: &mut [u8]) {
    match dtype {
        DataType::Bool => raw.iter_mut().for_each(|b| *b &= 1),
        DataType::Fp16 if json_safe => {
            for c in raw.chunks_mut(2) {
                if !half::f16::from_le_bytes([c[0], c[1]]).is_finite() {
                    c[1] &= 0x3f;
                }
            }
        }
        DataType::Bf16 if json_safe => {
            for c in raw.chunks_mut(2) {
                if !half::bf16::from_le_bytes([c[0], c[1]]).is_finite() {
                    c[1] &= 0x3f;
                }
            }
        }
        DataType::Fp32 if json_safe => {
            for c in raw.chunks_mut(4) {
                if !f32::from_le_bytes(c.try_into().unwrap()).is_finite() {
                    c[3] &= 0x3f;
                }
            }
        }
        DataType::Fp64 if json_safe => {
            for c in raw.chunks_mut(8) {
                if !f64::from_le_bytes(c.try_into().unwrap()).is_finite() {
                    c[7] &= 0x3f;
                }
            }
        }
        _ => {}
    }
}

/// One input: (tensor, sent in binary?).
fn input() -> impl Strategy<Value = (Tensor, bool)> {
    (prop::sample::select(DataType::ALL.to_vec()), any::<bool>())
        .prop_flat_map(|(dtype, binary)| (tensor(dtype, !binary), Just(binary)))
}

fn valid_request() -> impl Strategy<Value = (InferRequest, Vec<bool>)> {
    (
        prop::collection::vec(input(), 0..5),
        prop::option::of("[a-z0-9\"\\\\é-]{0,8}"),
        any::<bool>(),
        prop::option::of(prop::collection::vec(any::<bool>(), 1..4)),
    )
        .prop_map(|(inputs, id, binary_data_output, outputs)| {
            let mut parameters = serde_json::Map::new();
            if binary_data_output {
                parameters.insert("binary_data_output".into(), true.into());
            }
            let req = InferRequest {
                id,
                parameters,
                inputs: inputs
                    .iter()
                    .enumerate()
                    .map(|(i, (t, _))| NamedTensor {
                        name: format!("in{i}"),
                        tensor: t.clone(),
                    })
                    .collect(),
                outputs: outputs.map(|flags| {
                    flags
                        .into_iter()
                        .enumerate()
                        .map(|(i, binary_data)| RequestedOutput {
                            name: format!("out{i}"),
                            binary_data,
                        })
                        .collect()
                }),
                binary_data_output,
            };
            (req, inputs.into_iter().map(|(_, b)| b).collect())
        })
}

fn encode(req: &InferRequest, binary: &[bool]) -> (Bytes, Option<usize>) {
    let enc = encode_infer_request(req, |t| {
        let i: usize = t.name[2..].parse().unwrap();
        binary[i]
    });
    (enc.body, enc.header_length)
}

/// Tokens that steer mutated JSON into the decoder's corners.
const TOKENS: &[&[u8]] = &[
    b"-1",
    b"0",
    b"1.5",
    b"1e400",
    b"-0",
    b"18446744073709551616",
    b"9223372036854775808",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"[[",
    b"]]",
    b"\"",
    b"\\u0000",
    b"\\ud800",
    b",",
    b":",
    b"\"binary_data_size\":",
    b"\"data\":[1]",
    b"\"shape\":[1099511627776,8]",
    b"\"datatype\":\"FP8\"",
    b"\"name\":\"in0\"",
    b"\xc3\xa9",
    b"\x00",
    b"\xff",
];

#[derive(Debug, Clone)]
enum Mutation {
    SetByte(usize, u8),
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    InsertToken(usize, usize),
    Truncate(usize),
    HeaderLength(i64),
    DropHeaderLength,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(i, t)| Mutation::InsertToken(i, t)),
        any::<usize>().prop_map(Mutation::Truncate),
        (-16i64..16).prop_map(Mutation::HeaderLength),
        Just(Mutation::DropHeaderLength),
    ]
}

fn mutate(body: &mut Vec<u8>, header_length: &mut Option<usize>, m: &Mutation) {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
    match m {
        Mutation::SetByte(i, b) => {
            if !body.is_empty() {
                let i = i % body.len();
                body[i] = *b;
            }
        }
        Mutation::Delete(i, n) => {
            let i = at(*i, body.len());
            let end = (i + n).min(body.len());
            body.drain(i..end);
        }
        Mutation::Insert(i, v) => {
            let i = at(*i, body.len());
            body.splice(i..i, v.iter().copied());
        }
        Mutation::InsertToken(i, t) => {
            let i = at(*i, body.len());
            body.splice(i..i, TOKENS[*t].iter().copied());
        }
        Mutation::Truncate(i) => body.truncate(at(*i, body.len())),
        Mutation::HeaderLength(d) => {
            let h = header_length.unwrap_or(body.len()) as i64 + d;
            *header_length = Some(h.max(0) as usize);
        }
        Mutation::DropHeaderLength => *header_length = None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..512),
        header in prop::option::of(0usize..600),
    ) {
        let body = Bytes::from(body);
        let _ = decode_infer_request(body.clone(), header);
        let _ = decode_infer_response(body, header);
    }

    #[test]
    fn arbitrary_json_never_panics(text in "[\\[\\]{}\",:0-9a-z.eE+\\-\\\\ ]{0,200}") {
        let _ = decode_infer_request(Bytes::from(text.clone()), None);
        let wrapped = format!(r#"{{"inputs":[{{"name":"x","shape":[2],"datatype":"FP32","data":{text}}}]}}"#);
        let _ = decode_infer_request(Bytes::from(wrapped), None);
    }

    #[test]
    fn valid_requests_round_trip((req, binary) in valid_request()) {
        let (body, header_length) = encode(&req, &binary);
        let back = decode_infer_request(body.clone(), header_length);
        prop_assert!(back.is_ok(), "{:?} for {}", back, String::from_utf8_lossy(&body));
        prop_assert_eq!(back.unwrap(), req);
    }

    #[test]
    fn mutated_requests_never_panic(
        (req, binary) in valid_request(),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let (body, mut header_length) = encode(&req, &binary);
        let mut body = body.to_vec();
        for m in &mutations {
            mutate(&mut body, &mut header_length, m);
        }
        // Any outcome but a panic is fine; a success must be self-consistent.
        if let Ok(decoded) = decode_infer_request(Bytes::from(body), header_length) {
            for input in &decoded.inputs {
                prop_assert!(sluice_tensor::element_count(input.tensor.shape()).unwrap() == input.tensor.len());
            }
        }
    }

    #[test]
    fn responses_round_trip(
        outputs in prop::collection::vec(input(), 0..5),
    ) {
        let outputs: Vec<ResponseOutput> = outputs
            .into_iter()
            .enumerate()
            .map(|(i, (tensor, binary_data))| ResponseOutput { name: format!("o{i}"), tensor, binary_data })
            .collect();
        let resp = InferResponse { model_name: "m", model_version: "1", id: None, parameters: None, outputs: outputs.clone() };
        let enc = encode_infer_response(&resp);
        let back = decode_infer_response(enc.body, enc.header_length).unwrap();
        prop_assert_eq!(back.outputs.len(), outputs.len());
        for (got, want) in back.outputs.iter().zip(&outputs) {
            prop_assert_eq!(&got.tensor, &want.tensor);
        }
    }

    #[test]
    fn float_bits_survive_json(bits32 in any::<u32>(), bits64 in any::<u64>()) {
        let f = f32::from_bits(bits32);
        let d = f64::from_bits(bits64);
        prop_assume!(f.is_finite() && d.is_finite());
        let t32 = Tensor::from_raw(DataType::Fp32, vec![1], Bytes::copy_from_slice(&f.to_le_bytes())).unwrap();
        let t64 = Tensor::from_raw(DataType::Fp64, vec![1], Bytes::copy_from_slice(&d.to_le_bytes())).unwrap();
        let req = common::request(vec![common::named("a", t32), common::named("b", t64)]);
        let enc = encode_infer_request(&req, |_| false);
        prop_assert_eq!(decode_infer_request(enc.body, None).unwrap(), req);
    }
}
