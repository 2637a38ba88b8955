//! Round trips through the encoders and decoders, and the exact wire text.

mod common;

use bytes::Bytes;
use common::{body, named, request, sample};
use serde_json::{Value, json};
use sluice_oip::{
    InferResponse, RequestedOutput, ResponseOutput, decode_infer_request, decode_infer_response,
    encode_infer_request, encode_infer_response, encode_infer_response_chunks,
};
use sluice_tensor::{DataType, Tensor, TensorData};

fn raw(t: &Tensor) -> &Bytes {
    match t.data() {
        TensorData::Raw(r) => r,
        TensorData::Bytes(_) => panic!("expected raw data"),
    }
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap()
}

#[test]
fn request_round_trips_every_datatype_as_json() {
    for dtype in DataType::ALL {
        let req = request(vec![named("x", sample(dtype, true))]);
        let enc = encode_infer_request(&req, |_| false);
        assert_eq!(enc.header_length, None, "{dtype}");
        let back = decode_infer_request(enc.body.clone(), enc.header_length)
            .unwrap_or_else(|e| panic!("{dtype}: {e}"));
        assert_eq!(back, req, "{dtype}: {}", String::from_utf8_lossy(&enc.body));
    }
}

#[test]
fn request_round_trips_every_datatype_as_binary() {
    for dtype in DataType::ALL {
        let req = request(vec![named("x", sample(dtype, false))]);
        let enc = encode_infer_request(&req, |_| true);
        let header_length = enc
            .header_length
            .expect("binary request has a header length");
        let header = json_of(&enc.body[..header_length]);
        assert_eq!(
            header["inputs"][0]["parameters"]["binary_data_size"],
            json!(enc.body.len() - header_length)
        );
        assert!(header["inputs"][0].get("data").is_none());
        let back = decode_infer_request(enc.body.clone(), enc.header_length)
            .unwrap_or_else(|e| panic!("{dtype}: {e}"));
        assert_eq!(back, req, "{dtype}");
    }
}

#[test]
fn response_round_trips_every_datatype_in_both_encodings() {
    for binary in [false, true] {
        let outputs: Vec<ResponseOutput> = DataType::ALL
            .iter()
            .map(|&d| ResponseOutput {
                name: format!("out_{d}"),
                tensor: sample(d, !binary),
                binary_data: binary,
            })
            .collect();
        let resp = InferResponse {
            model_name: "m",
            model_version: "3",
            id: Some("abc"),
            parameters: None,
            outputs: outputs.clone(),
        };
        let enc = encode_infer_response(&resp);
        assert_eq!(enc.header_length.is_some(), binary);
        let back = decode_infer_response(enc.body.clone(), enc.header_length).unwrap();
        assert_eq!(back.model_name, "m");
        assert_eq!(back.model_version, "3");
        assert_eq!(back.id.as_deref(), Some("abc"));
        assert_eq!(back.outputs.len(), outputs.len());
        for (got, want) in back.outputs.iter().zip(&outputs) {
            assert_eq!(got.name, want.name);
            assert_eq!(got.tensor, want.tensor, "{} binary={binary}", want.name);
        }
    }
}

#[test]
fn response_json_text_is_exact() {
    let params = serde_json::from_str(r#"{"sequence_id": 7}"#).unwrap();
    let f16s: Vec<u8> = [1.5f32, f32::NAN]
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let resp = InferResponse {
        model_name: "iris",
        model_version: "1",
        id: Some("q\"1"),
        parameters: Some(&params),
        outputs: vec![
            ResponseOutput {
                name: "label".into(),
                tensor: Tensor::from_raw(
                    DataType::Int64,
                    vec![2, 1],
                    Bytes::from(
                        [-1i64, 2]
                            .iter()
                            .flat_map(|v| v.to_le_bytes())
                            .collect::<Vec<_>>(),
                    ),
                )
                .unwrap(),
                binary_data: false,
            },
            ResponseOutput {
                name: "flags".into(),
                tensor: Tensor::from_raw(DataType::Bool, vec![2], Bytes::from_static(&[1, 0]))
                    .unwrap(),
                binary_data: false,
            },
            ResponseOutput {
                name: "h".into(),
                tensor: Tensor::from_raw(DataType::Fp16, vec![2], Bytes::from(f16s)).unwrap(),
                binary_data: false,
            },
            ResponseOutput {
                name: "f".into(),
                tensor: Tensor::from_raw(
                    DataType::Fp32,
                    vec![3],
                    Bytes::from(
                        [0.1f32, f32::INFINITY, -2.0]
                            .iter()
                            .flat_map(|v| v.to_le_bytes())
                            .collect::<Vec<_>>(),
                    ),
                )
                .unwrap(),
                binary_data: false,
            },
            ResponseOutput {
                name: "s".into(),
                tensor: Tensor::from_bytes_elements(
                    vec![2],
                    vec![Bytes::from_static(b"ok"), Bytes::from_static(b"\xffz")],
                )
                .unwrap(),
                binary_data: false,
            },
        ],
    };
    let enc = encode_infer_response(&resp);
    assert_eq!(enc.header_length, None);
    assert_eq!(enc.content_type(), "application/json");
    assert_eq!(
        std::str::from_utf8(&enc.body).unwrap(),
        concat!(
            r#"{"model_name":"iris","model_version":"1","id":"q\"1","parameters":{"sequence_id":7},"outputs":["#,
            r#"{"name":"label","datatype":"INT64","shape":[2,1],"data":[-1,2]},"#,
            r#"{"name":"flags","datatype":"BOOL","shape":[2],"data":[true,false]},"#,
            r#"{"name":"h","datatype":"FP16","shape":[2],"data":[1.5,null]},"#,
            r#"{"name":"f","datatype":"FP32","shape":[3],"data":[0.1,null,-2.0]},"#,
            "{\"name\":\"s\",\"datatype\":\"BYTES\",\"shape\":[2],\"data\":[\"ok\",\"\u{FFFD}z\"]}]}"
        )
    );
}

#[test]
fn response_binary_layout_and_chunks() {
    let f = Tensor::from_raw(
        DataType::Fp32,
        vec![2],
        Bytes::from(vec![0, 0, 128, 63, 0, 0, 0, 64]),
    )
    .unwrap();
    let s = Tensor::from_bytes_elements(vec![2], vec![Bytes::from_static(b"ab"), Bytes::new()])
        .unwrap();
    let resp = InferResponse {
        model_name: "m",
        model_version: "",
        id: None,
        parameters: None,
        outputs: vec![
            ResponseOutput {
                name: "f".into(),
                tensor: f.clone(),
                binary_data: true,
            },
            ResponseOutput {
                name: "j".into(),
                tensor: f.clone(),
                binary_data: false,
            },
            ResponseOutput {
                name: "s".into(),
                tensor: s,
                binary_data: true,
            },
        ],
    };
    let enc = encode_infer_response(&resp);
    let h = enc.header_length.unwrap();
    assert_eq!(enc.content_type(), "application/octet-stream");
    assert_eq!(
        std::str::from_utf8(&enc.body[..h]).unwrap(),
        concat!(
            r#"{"model_name":"m","model_version":"","outputs":["#,
            r#"{"name":"f","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}},"#,
            r#"{"name":"j","datatype":"FP32","shape":[2],"data":[1.0,2.0]},"#,
            r#"{"name":"s","datatype":"BYTES","shape":[2],"parameters":{"binary_data_size":10}}]}"#
        )
    );
    assert_eq!(
        &enc.body[h..],
        &[
            0, 0, 128, 63, 0, 0, 0, 64, 2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0
        ]
    );

    // The chunked form is the same body, and shares the tensor's buffer.
    let chunks = encode_infer_response_chunks(&resp);
    assert_eq!(chunks.header_length, Some(h));
    assert_eq!(chunks.chunks.len(), 3);
    assert_eq!(chunks.len(), enc.body.len());
    assert_eq!(chunks.chunks.concat(), enc.body.to_vec());
    let TensorData::Raw(f_raw) = f.data() else {
        unreachable!()
    };
    assert_eq!(chunks.chunks[1].as_ptr(), f_raw.as_ptr());
}

#[test]
fn nested_data_is_flattened_row_major() {
    let flat = r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"INT32","data":[1,2,3,4,5,6]}]}"#;
    let nested =
        r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"INT32","data":[[1,2,3],[4,5,6]]}]}"#;
    let deep = r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"INT32","data":[[[1],[2],[3]],[[4,5],[6]]]}]}"#;
    let want = decode_infer_request(Bytes::from(flat), None).unwrap();
    for text in [nested, deep] {
        let got = decode_infer_request(Bytes::from(text), None).unwrap();
        assert_eq!(got, want, "{text}");
    }
    let t = &want.inputs[0].tensor;
    assert_eq!(t.shape(), &[2, 3]);
    let ints: Vec<i32> = raw(t)
        .chunks(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(ints, [1, 2, 3, 4, 5, 6]);

    // Nested BYTES and BOOL too; empty arrays contribute nothing.
    let text = r#"{"inputs":[
        {"name":"s","shape":[2,2],"datatype":"BYTES","data":[["a","b"],[[],["c","d"]]]},
        {"name":"b","shape":[3],"datatype":"BOOL","data":[[true],[false,true]]}]}"#;
    let req = decode_infer_request(Bytes::from(text), None).unwrap();
    match req.inputs[0].tensor.data() {
        TensorData::Bytes(e) => assert_eq!(
            e,
            &["a", "b", "c", "d"].map(|s| Bytes::from_static(s.as_bytes()))
        ),
        TensorData::Raw(_) => panic!(),
    }
    assert_eq!(&raw(&req.inputs[1].tensor)[..], &[1, 0, 1]);
}

#[test]
fn json_numbers_convert_per_datatype() {
    let text = r#"{"inputs":[
        {"name":"h","shape":[3],"datatype":"FP16","data":[1, 0.1, 1e10]},
        {"name":"b","shape":[2],"datatype":"BF16","data":[-3, 0.1]},
        {"name":"f","shape":[2],"datatype":"FP32","data":[16777217, 1e-50]},
        {"name":"d","shape":[2],"datatype":"FP64","data":[18446744073709551615, -0.0]},
        {"name":"u","shape":[1],"datatype":"UINT64","data":[18446744073709551615]},
        {"name":"i","shape":[2],"datatype":"INT8","data":[-128, 127]}]}"#;
    let req = decode_infer_request(Bytes::from(text), None).unwrap();
    let t = |i: usize| raw(&req.inputs[i].tensor).to_vec();
    let f16s: Vec<u8> = [1.0f64, 0.1, 1e10]
        .iter()
        .flat_map(|&v| half::f16::from_f64(v).to_le_bytes())
        .collect();
    assert_eq!(t(0), f16s);
    assert_eq!(
        half::f16::from_le_bytes([t(0)[4], t(0)[5]]),
        half::f16::INFINITY
    );
    let bf16s: Vec<u8> = [-3.0f64, 0.1]
        .iter()
        .flat_map(|&v| half::bf16::from_f64(v).to_le_bytes())
        .collect();
    assert_eq!(t(1), bf16s);
    assert_eq!(
        t(2),
        [16_777_216f32.to_le_bytes(), 0f32.to_le_bytes()].concat()
    );
    assert_eq!(
        t(3),
        [
            18446744073709551615f64.to_le_bytes(),
            (-0.0f64).to_le_bytes()
        ]
        .concat()
    );
    assert_eq!(t(4), u64::MAX.to_le_bytes());
    assert_eq!(t(5), [0x80, 0x7f]);
}

#[test]
fn bytes_in_both_encodings() {
    // Binary: exact bytes, including invalid UTF-8 and empty elements.
    let bin: &[u8] = b"\x03\x00\x00\x00\xff\x00a\x00\x00\x00\x00\x01\x00\x00\x00z";
    let json = format!(
        r#"{{"inputs":[{{"name":"s","shape":[3],"datatype":"BYTES","parameters":{{"binary_data_size":{}}}}}]}}"#,
        bin.len()
    );
    let (b, h) = body(&json, bin);
    let req = decode_infer_request(b, h).unwrap();
    let TensorData::Bytes(e) = req.inputs[0].tensor.data() else {
        panic!()
    };
    assert_eq!(
        e,
        &[&b"\xff\x00a"[..], b"", b"z"].map(Bytes::copy_from_slice)
    );

    // JSON: strings with escapes become their UTF-8 bytes.
    let text = r#"{"inputs":[{"name":"s","shape":[3],"datatype":"BYTES","data":["a\"\\\n","\u00e9\ud83d\ude00",""]}]}"#;
    let req = decode_infer_request(Bytes::from(text), None).unwrap();
    let TensorData::Bytes(e) = req.inputs[0].tensor.data() else {
        panic!()
    };
    assert_eq!(
        e,
        &["a\"\\\n", "é😀", ""].map(|s| Bytes::copy_from_slice(s.as_bytes()))
    );
}

#[test]
fn mixed_json_and_binary_inputs_in_one_request() {
    let req = request(vec![
        named("a", sample(DataType::Fp32, true)),
        named("b", sample(DataType::Int64, true)),
        named("c", sample(DataType::Bytes, false)),
        named("d", sample(DataType::Bytes, true)),
        named(
            "e",
            Tensor::from_raw(DataType::Uint8, vec![0, 3], Bytes::new()).unwrap(),
        ),
        named("f", sample(DataType::Bool, true)),
    ]);
    let binary = |n: &sluice_oip::NamedTensor| matches!(n.name.as_str(), "a" | "c" | "e");
    let enc = encode_infer_request(&req, binary);
    let h = enc.header_length.unwrap();
    let header = json_of(&enc.body[..h]);
    for (i, is_binary) in [true, false, true, false, true, false]
        .into_iter()
        .enumerate()
    {
        let input = &header["inputs"][i];
        assert_eq!(input.get("data").is_none(), is_binary, "{input}");
        assert_eq!(
            input["parameters"]["binary_data_size"].is_u64(),
            is_binary,
            "{input}"
        );
    }
    assert_eq!(
        header["inputs"][4]["parameters"]["binary_data_size"],
        json!(0)
    );
    let back = decode_infer_request(enc.body, enc.header_length).unwrap();
    assert_eq!(back, req);
}

#[test]
fn binary_inputs_are_zero_copy_slices_of_the_body() {
    let f: Vec<u8> = (0..64u8).collect();
    let s: &[u8] = b"\x02\x00\x00\x00hi\x01\x00\x00\x00!";
    let json = format!(
        r#"{{"inputs":[
            {{"name":"j","shape":[1],"datatype":"INT8","data":[5]}},
            {{"name":"f","shape":[4,4],"datatype":"FP32","parameters":{{"binary_data_size":64}}}},
            {{"name":"s","shape":[2],"datatype":"BYTES","parameters":{{"binary_data_size":{}}}}}]}}"#,
        s.len()
    );
    let (b, h) = body(&json, &[&f[..], s].concat());
    let base = b.as_ptr() as usize + h.unwrap();
    let req = decode_infer_request(b.clone(), h).unwrap();

    let f_raw = raw(&req.inputs[1].tensor);
    assert_eq!(f_raw.as_ptr() as usize, base);
    assert_eq!(&f_raw[..], &f[..]);
    let TensorData::Bytes(e) = req.inputs[2].tensor.data() else {
        panic!()
    };
    assert_eq!(e[0].as_ptr() as usize, base + 64 + 4);
    assert_eq!(e[1].as_ptr() as usize, base + 64 + 4 + 2 + 4);
    assert_eq!(&e[0][..], b"hi");
    assert_eq!(&e[1][..], b"!");
}

#[test]
fn requested_outputs_and_binary_flags() {
    let text = r#"{"id":"r1","parameters":{"binary_data_output":true,"priority":2},
        "inputs":[],
        "outputs":[{"name":"y","parameters":{"binary_data":false}},{"name":"z"},
                   {"name":"w","parameters":{"binary_data":true,"classification":0}}]}"#;
    let req = decode_infer_request(Bytes::from(text), None).unwrap();
    assert_eq!(req.id.as_deref(), Some("r1"));
    assert!(req.binary_data_output);
    assert_eq!(req.parameters["priority"], json!(2));
    assert_eq!(req.parameters["binary_data_output"], json!(true));
    assert_eq!(
        req.outputs,
        Some(vec![
            RequestedOutput {
                name: "y".into(),
                binary_data: false
            },
            RequestedOutput {
                name: "z".into(),
                binary_data: true
            },
            RequestedOutput {
                name: "w".into(),
                binary_data: true
            },
        ])
    );
    assert!(!req.output_binary("y"));
    assert!(req.output_binary("z"));
    assert!(req.output_binary("unlisted"));

    // Without binary_data_output, outputs default to JSON.
    let text =
        r#"{"inputs":[],"outputs":[{"name":"y"}, {"name":"z","parameters":{"binary_data":true}}]}"#;
    let req = decode_infer_request(Bytes::from(text), None).unwrap();
    assert!(!req.binary_data_output);
    assert!(!req.outputs.as_ref().unwrap()[0].binary_data);
    assert!(req.outputs.as_ref().unwrap()[1].binary_data);
    assert!(!req.output_binary("other"));

    // No outputs, or an empty list: all outputs.
    let req = decode_infer_request(Bytes::from(r#"{"inputs":[]}"#), None).unwrap();
    assert_eq!(req.outputs, None);
    let req = decode_infer_request(Bytes::from(r#"{"inputs":[],"outputs":[]}"#), None).unwrap();
    assert_eq!(req.outputs, None);

    // And they survive a round trip through the request encoder.
    let mut req = request(vec![named("x", sample(DataType::Uint8, true))]);
    req.id = Some("abc".into());
    req.binary_data_output = true;
    req.parameters
        .insert("binary_data_output".into(), json!(true));
    req.parameters.insert("custom".into(), json!({"k": [1, 2]}));
    req.outputs = Some(vec![
        RequestedOutput {
            name: "p".into(),
            binary_data: false,
        },
        RequestedOutput {
            name: "q".into(),
            binary_data: true,
        },
    ]);
    let enc = encode_infer_request(&req, |_| true);
    assert_eq!(
        decode_infer_request(enc.body, enc.header_length).unwrap(),
        req
    );
}

#[test]
fn null_optional_fields_and_unknown_fields_are_tolerated() {
    let text = r#"{"id":null,"parameters":null,"extra":{"x":[1,2]},"inputs":[
        {"name":"x","shape":[1],"datatype":"UINT16","parameters":{"binary_data_size":null,"other":1},"data":[7],"more":true}],
        "outputs":[{"name":"y","parameters":null}]}"#;
    let req = decode_infer_request(Bytes::from(text), None).unwrap();
    assert_eq!(req.id, None);
    assert!(req.parameters.is_empty());
    assert_eq!(&raw(&req.inputs[0].tensor)[..], &[7, 0]);
}

#[test]
fn scalars_and_empty_tensors() {
    let text = r#"{"inputs":[
        {"name":"s","shape":[],"datatype":"FP64","data":[2.5]},
        {"name":"e","shape":[0,4],"datatype":"INT32","data":[]},
        {"name":"eb","shape":[3,0],"datatype":"BYTES","parameters":{"binary_data_size":0}}]}"#;
    let (b, h) = body(text, b"");
    let req = decode_infer_request(b, h).unwrap();
    assert_eq!(req.inputs[0].tensor.shape(), &[] as &[i64]);
    assert_eq!(&raw(&req.inputs[0].tensor)[..], &2.5f64.to_le_bytes());
    assert!(req.inputs[1].tensor.is_empty());
    assert!(req.inputs[2].tensor.is_empty());
    // binary_data_size 0 is fine without any binary section at all.
    let req = decode_infer_request(Bytes::from(text), None).unwrap();
    assert!(req.inputs[2].tensor.is_empty());
}
