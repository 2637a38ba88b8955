//! Every malformed body is a precise `DecodeError`, never a panic or a huge
//! allocation.

mod common;

use bytes::Bytes;
use common::body;
use sluice_oip::{DecodeError, decode_infer_request, decode_infer_response};

/// Decodes a pure-JSON request that must fail; returns the message.
fn err(text: &str) -> String {
    match decode_infer_request(Bytes::copy_from_slice(text.as_bytes()), None) {
        Ok(req) => panic!("{text} decoded to {req:?}"),
        Err(e) => e.to_string(),
    }
}

/// Decodes a JSON header + binary section that must fail.
fn err_bin(json: &str, binary: &[u8]) -> DecodeError {
    let (b, h) = body(json, binary);
    decode_infer_request(b, h).expect_err(json)
}

fn one_input(name: &str, shape: &str, dtype: &str, data: &str) -> String {
    format!(
        r#"{{"inputs":[{{"name":"{name}","shape":{shape},"datatype":"{dtype}","data":{data}}}]}}"#
    )
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should mention {p:?}");
    }
}

#[test]
fn integer_out_of_range_or_not_an_integer() {
    let cases = [
        (
            "UINT8",
            "[1,300]",
            &["input \"pix\"", "UINT8", "element 1", "300", "0..=255"][..],
        ),
        (
            "UINT32",
            "[-1]",
            &["input \"pix\"", "UINT32", "element 0", "-1", "out of range"],
        ),
        (
            "INT32",
            "[0,0,1.5]",
            &["input \"pix\"", "INT32", "element 2", "1.5", "integers"],
        ),
        (
            "INT32",
            "[1.0]",
            &["input \"pix\"", "element 0 is 1.0", "only integers"],
        ),
        (
            "INT32",
            "[1e3]",
            &["input \"pix\"", "element 0 is 1000.0", "only integers"],
        ),
        ("INT8", "[-129]", &["input \"pix\"", "-129", "-128..=127"]),
        (
            "INT64",
            "[9223372036854775808]",
            &["input \"pix\"", "9223372036854775808", "out of range"],
        ),
        (
            "INT64",
            "[18446744073709551616]",
            &[
                "input \"pix\"",
                "element 0",
                "1.8446744073709552e19",
                "out of range",
            ],
        ),
        (
            "UINT64",
            "[-9223372036854775809]",
            &["input \"pix\"", "element 0", "out of range"],
        ),
        (
            "UINT16",
            "[65536]",
            &["input \"pix\"", "65536", "0..=65535"],
        ),
        (
            "INT16",
            "[true]",
            &["input \"pix\"", "true", "INT16 accepts only numbers"],
        ),
        (
            "UINT8",
            "[\"7\"]",
            &["input \"pix\"", "\"7\"", "UINT8 accepts only numbers"],
        ),
    ];
    for (dtype, data, parts) in cases {
        let n = data.matches(',').count() + 1;
        let msg = err(&one_input("pix", &format!("[{n}]"), dtype, data));
        assert_mentions(&msg, parts);
    }
}

#[test]
fn wrong_element_kinds() {
    let cases = [
        (
            "BOOL",
            "[1]",
            &["input \"b\"", "BOOL element 0 is 1", "true or false"][..],
        ),
        ("BOOL", "[\"true\"]", &["input \"b\"", "true or false"]),
        (
            "FP32",
            "[\"x\"]",
            &["input \"b\"", "FP32 element 0", "\"x\"", "only numbers"],
        ),
        ("FP16", "[false]", &["input \"b\"", "FP16", "only numbers"]),
        (
            "BYTES",
            "[5]",
            &["input \"b\"", "BYTES element 0 is 5", "only strings"],
        ),
        ("BYTES", "[true]", &["input \"b\"", "only strings"]),
        ("FP64", "[null]", &["input \"b\"", "null"]),
        ("INT32", "[{}]", &["input \"b\"", "an object"]),
    ];
    for (dtype, data, parts) in cases {
        assert_mentions(&err(&one_input("b", "[1]", dtype, data)), parts);
    }
    // `data` must be an array.
    assert_mentions(
        &err(&one_input("b", "[1]", "INT32", "5")),
        &["input \"b\"", "`data` must be an array"],
    );
    assert_mentions(
        &err(&one_input("b", "[1]", "BYTES", "\"abc\"")),
        &["input \"b\"", "`data`", "a string"],
    );
}

#[test]
fn element_count_must_match_shape() {
    let msg = err(&one_input("t", "[2,3]", "FP32", "[1,2,3,4,5]"));
    assert_mentions(
        &msg,
        &["input \"t\"", "[2, 3]", "6 elements", "`data` has 5"],
    );
    let msg = err(&one_input("t", "[2,2]", "INT8", "[[1,2],[3,4],[5]]"));
    assert_mentions(&msg, &["input \"t\"", "4 elements", "has 5"]);
    let msg = err(&one_input("t", "[1]", "BYTES", "[\"a\",\"b\"]"));
    assert_mentions(&msg, &["input \"t\"", "1 elements", "has 2"]);
    let msg = err(&one_input("t", "[]", "BOOL", "[]"));
    assert_mentions(&msg, &["input \"t\"", "1 elements", "has 0"]);
}

#[test]
fn hostile_shapes_are_refused_without_allocating() {
    // 2^43 elements declared, 2 sent: an element-count error, not an
    // allocation of 32 TiB.
    let msg = err(&one_input("big", "[1099511627776,8]", "FP32", "[1,2]"));
    assert_mentions(
        &msg,
        &["input \"big\"", "8796093022208 elements", "`data` has 2"],
    );
    let msg = err(&one_input("big", "[1099511627776,8]", "BYTES", "[\"a\"]"));
    assert_mentions(&msg, &["input \"big\"", "has 1"]);
    // Element count overflows.
    let msg = err(&one_input(
        "big",
        "[1099511627776,1099511627776]",
        "FP32",
        "[1]",
    ));
    assert_mentions(&msg, &["input \"big\"", "too many elements"]);
    // Byte size overflows although the element count does not.
    let msg = err(&one_input("big", "[4611686018427387904]", "FP64", "[1]"));
    assert_mentions(&msg, &["input \"big\"", "overflows"]);
    // Binary: checked against binary_data_size before anything else.
    let e = err_bin(
        r#"{"inputs":[{"name":"big","shape":[1099511627776,8],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#,
        &[0; 4],
    );
    assert!(
        matches!(
            e,
            DecodeError::BinarySize {
                got: 4,
                expected_bytes: 35184372088832,
                ..
            }
        ),
        "{e}"
    );
    assert_mentions(&e.to_string(), &["input \"big\"", "35184372088832 bytes"]);
    let e = err_bin(
        r#"{"inputs":[{"name":"big","shape":[1099511627776,8],"datatype":"BYTES","parameters":{"binary_data_size":5}}]}"#,
        b"\x01\x00\x00\x00x",
    );
    assert_mentions(
        &e.to_string(),
        &[
            "input \"big\"",
            "8796093022208 elements",
            "binary data has 1",
        ],
    );
}

#[test]
fn invalid_shapes() {
    let cases = [
        ("[2,-1]", "negative"),
        ("[2.5]", "not an integer"),
        ("[\"2\"]", "a string"),
        ("[[2]]", "an array"),
        ("5", "must be an array"),
        ("{}", "must be an array"),
        ("[9223372036854775808]", "too large"),
        ("[1e3]", "not an integer"),
    ];
    for (shape, reason) in cases {
        let msg = err(&one_input("s", shape, "INT32", "[1]"));
        assert_mentions(&msg, &["input \"s\"", "shape", reason]);
    }
}

#[test]
fn unknown_datatypes_list_the_valid_ones() {
    for dtype in ["FP8", "STRING", "fp32", "", "TYPE_FP32"] {
        let msg = err(&one_input("d", "[1]", dtype, "[1]"));
        assert_mentions(
            &msg,
            &[
                "input \"d\"",
                &format!("unknown datatype {dtype:?}"),
                "BOOL, UINT8",
                "FP32",
                "BYTES",
            ],
        );
    }
    let msg = err(r#"{"inputs":[{"name":"d","shape":[1],"datatype":5,"data":[1]}]}"#);
    assert_mentions(&msg, &["input \"d\"", "`datatype` must be a string"]);
}

#[test]
fn duplicate_names() {
    let msg = err(
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[1]},{"name":"x","shape":[1],"datatype":"INT8","data":[1]}]}"#,
    );
    assert_mentions(&msg, &["duplicate input name \"x\""]);
    let msg = err(r#"{"inputs":[],"outputs":[{"name":"y"},{"name":"z"},{"name":"y"}]}"#);
    assert_mentions(&msg, &["duplicate output name \"y\""]);
}

#[test]
fn missing_and_mistyped_fields() {
    assert_mentions(
        &err(r#"{"id":"x"}"#),
        &["request", "missing required field `inputs`"],
    );
    assert_mentions(
        &err(r#"{"inputs":{}}"#),
        &["`inputs` must be an array", "an object"],
    );
    assert_mentions(
        &err(r#"{"inputs":[5]}"#),
        &["`inputs[0]` must be an object", "a number"],
    );
    assert_mentions(
        &err(r#"{"inputs":[{"shape":[1],"datatype":"INT8","data":[1]}]}"#),
        &["inputs[0]", "missing required field `name`"],
    );
    assert_mentions(
        &err(r#"{"inputs":[{"name":7,"shape":[1],"datatype":"INT8","data":[1]}]}"#),
        &["inputs[0]", "`name` must be a string, got 7"],
    );
    assert_mentions(
        &err(r#"{"inputs":[{"name":"n","datatype":"INT8","data":[1]}]}"#),
        &["input \"n\"", "missing required field `shape`"],
    );
    assert_mentions(
        &err(r#"{"inputs":[{"name":"n","shape":[1],"data":[1]}]}"#),
        &["input \"n\"", "missing required field `datatype`"],
    );
    assert_mentions(
        &err(r#"{"inputs":[{"name":"n","name":"m","shape":[1],"datatype":"INT8","data":[1]}]}"#),
        &["inputs[0]", "duplicate field `name`"],
    );
    assert_mentions(
        &err(r#"{"id":5,"inputs":[]}"#),
        &["`id` must be a string, got 5"],
    );
    assert_mentions(
        &err(r#"{"id":["a"],"inputs":[]}"#),
        &["`id` must be a string, got an array"],
    );
    assert_mentions(
        &err(r#"{"parameters":[],"inputs":[]}"#),
        &["`parameters` must be an object"],
    );
    assert_mentions(
        &err(r#"{"parameters":{"binary_data_output":"yes"},"inputs":[]}"#),
        &["`parameters.binary_data_output` must be a boolean"],
    );
    assert_mentions(
        &err(
            r#"{"inputs":[{"name":"n","shape":[1],"datatype":"INT8","parameters":[],"data":[1]}]}"#,
        ),
        &["input \"n\"", "`parameters` must be an object"],
    );
    assert_mentions(
        &err(
            r#"{"inputs":[{"name":"n","shape":[1],"datatype":"INT8","parameters":{"binary_data_size":-1}}]}"#,
        ),
        &[
            "input \"n\"",
            "`parameters.binary_data_size` must be a non-negative integer, got -1",
        ],
    );
    assert_mentions(
        &err(r#"{"inputs":[],"outputs":{}}"#),
        &["`outputs` must be an array"],
    );
    assert_mentions(
        &err(r#"{"inputs":[],"outputs":["y"]}"#),
        &["`outputs[0]` must be an object"],
    );
    assert_mentions(
        &err(r#"{"inputs":[],"outputs":[{}]}"#),
        &["outputs[0]", "missing required field `name`"],
    );
    assert_mentions(
        &err(r#"{"inputs":[],"outputs":[{"name":"y","parameters":{"binary_data":1}}]}"#),
        &[
            "requested output \"y\"",
            "`parameters.binary_data` must be a boolean, got 1",
        ],
    );
    assert_mentions(
        &err(r#"{"inputs":[],"outputs":[{"name":"y","parameters":{"classification":3}}]}"#),
        &[
            "requested output \"y\"",
            "`classification` is not supported",
        ],
    );
}

#[test]
fn data_and_binary_both_or_neither() {
    let e = err_bin(
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","parameters":{"binary_data_size":1},"data":[1]}]}"#,
        &[1],
    );
    assert!(matches!(e, DecodeError::DataAndBinary { .. }));
    assert_mentions(
        &e.to_string(),
        &[
            "input \"x\"",
            "both `data` and `parameters.binary_data_size`",
        ],
    );
    let msg = err(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8"}]}"#);
    assert_mentions(
        &msg,
        &[
            "input \"x\"",
            "neither `data` nor `parameters.binary_data_size`",
        ],
    );
    let msg = err(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":null}]}"#);
    assert_mentions(&msg, &["input \"x\"", "neither"]);
}

const TWO_FP32: &str = r#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"b","shape":[1],"datatype":"INT16","parameters":{"binary_data_size":2}}]}"#;

#[test]
fn binary_section_must_match_sizes_exactly() {
    // Exactly right decodes.
    let (b, h) = body(TWO_FP32, &[0; 10]);
    decode_infer_request(b, h).unwrap();
    // One byte short: the last input runs past the end.
    let e = err_bin(TWO_FP32, &[0; 9]);
    assert!(
        matches!(
            e,
            DecodeError::BinaryOverrun {
                offset: 8,
                size: 2,
                available: 9,
                ..
            }
        ),
        "{e}"
    );
    assert_mentions(
        &e.to_string(),
        &["input \"b\"", "runs past the end", "9 bytes"],
    );
    // One byte too many.
    let e = err_bin(TWO_FP32, &[0; 11]);
    assert!(
        matches!(
            e,
            DecodeError::BinaryTrailing {
                used: 10,
                available: 11
            }
        ),
        "{e}"
    );
    assert_mentions(&e.to_string(), &["11 bytes", "add up to 10"]);
    // A size that disagrees with the shape.
    let json = TWO_FP32.replace("\"binary_data_size\":8", "\"binary_data_size\":4");
    let e = err_bin(&json, &[0; 6]);
    assert_mentions(
        &e.to_string(),
        &["input \"a\"", "needs 8 bytes", "`binary_data_size` is 4"],
    );
    // A size near usize::MAX must not overflow the offset arithmetic.
    let json = r#"{"inputs":[{"name":"a","shape":[1],"datatype":"UINT8","parameters":{"binary_data_size":1}},{"name":"z","shape":[9223372036854775807],"datatype":"BYTES","parameters":{"binary_data_size":18446744073709551615}}]}"#;
    let e = err_bin(json, &[0; 3]);
    assert_mentions(&e.to_string(), &["input \"z\"", "runs past the end"]);
    // Binary sizes without any binary section (no header length).
    let msg = err(TWO_FP32);
    assert_mentions(
        &msg,
        &[
            "input \"a\"",
            "no binary section",
            "Inference-Header-Content-Length",
        ],
    );
}

#[test]
fn lying_header_length() {
    let mut whole = TWO_FP32.as_bytes().to_vec();
    whole.extend_from_slice(&[0; 10]);
    let whole = Bytes::from(whole);
    let h = TWO_FP32.len();
    // Larger than the body.
    let e = decode_infer_request(whole.clone(), Some(whole.len() + 1)).unwrap_err();
    assert_eq!(
        e,
        DecodeError::HeaderLengthTooLarge {
            header_length: whole.len() + 1,
            body_len: whole.len()
        }
    );
    // Too long: binary bytes are read as JSON.
    let e = decode_infer_request(whole.clone(), Some(h + 3)).unwrap_err();
    assert_mentions(&e.to_string(), &["invalid JSON", "trailing characters"]);
    let mut bad = whole.to_vec();
    bad[h] = 0xff;
    let e = decode_infer_request(Bytes::from(bad), Some(h + 1)).unwrap_err();
    assert_eq!(e, DecodeError::InvalidUtf8 { valid_up_to: h });
    // Too short: the JSON is cut off.
    let e = decode_infer_request(whole.clone(), Some(h - 1)).unwrap_err();
    assert_mentions(&e.to_string(), &["invalid JSON", "EOF"]);
    let e = decode_infer_request(whole.clone(), Some(0)).unwrap_err();
    assert_mentions(&e.to_string(), &["must be a JSON object", "empty"]);
    // No header length at all: the binary bytes are trailing garbage.
    let e = decode_infer_request(whole, None).unwrap_err();
    assert_mentions(&e.to_string(), &["invalid JSON"]);
}

#[test]
fn bytes_binary_layout_is_validated() {
    let json = |size: usize, n: usize| {
        format!(
            r#"{{"inputs":[{{"name":"s","shape":[{n}],"datatype":"BYTES","parameters":{{"binary_data_size":{size}}}}}]}}"#
        )
    };
    // Length runs past the blob.
    let blob = b"\x05\x00\x00\x00abc";
    let e = err_bin(&json(blob.len(), 1), blob);
    assert!(
        matches!(
            e,
            DecodeError::BytesElementTruncated {
                index: 0,
                offset: 0,
                need: 9,
                remaining: 7,
                ..
            }
        ),
        "{e}"
    );
    assert_mentions(
        &e.to_string(),
        &["input \"s\"", "element 0", "needs 9 bytes", "only 7 remain"],
    );
    // Truncated length prefix.
    let blob = b"\x01\x00\x00\x00a\x01\x00";
    let e = err_bin(&json(blob.len(), 2), blob);
    assert_mentions(
        &e.to_string(),
        &[
            "input \"s\"",
            "element 1",
            "offset 5",
            "needs 4 bytes",
            "only 2 remain",
        ],
    );
    // A huge length must not overflow.
    let blob = b"\xff\xff\xff\xffa";
    let e = err_bin(&json(blob.len(), 1), blob);
    assert_mentions(&e.to_string(), &["input \"s\"", "needs 4294967299 bytes"]);
    // Element count differs from the shape, either way.
    let blob = b"\x01\x00\x00\x00a\x00\x00\x00\x00";
    let e = err_bin(&json(blob.len(), 3), blob);
    assert_mentions(
        &e.to_string(),
        &["input \"s\"", "3 elements", "binary data has 2"],
    );
    let e = err_bin(&json(blob.len(), 1), blob);
    assert_mentions(
        &e.to_string(),
        &["input \"s\"", "1 elements", "binary data has 2"],
    );
}

#[test]
fn binary_bools_must_be_zero_or_one() {
    let e = err_bin(
        r#"{"inputs":[{"name":"flags","shape":[3],"datatype":"BOOL","parameters":{"binary_data_size":3}}]}"#,
        &[1, 0, 2],
    );
    assert_mentions(
        &e.to_string(),
        &["input \"flags\"", "BOOL element 2", "byte 2", "0 or 1"],
    );
}

#[test]
fn malformed_bodies() {
    let cases: [(&[u8], &str); 11] = [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"[]", "got an array"),
        (b"[{\"inputs\":[]}]", "got an array"),
        (b"5", "got a number"),
        (b"\"inputs\"", "got a string"),
        (b"null", "got null"),
        (b"true", "got a boolean"),
        (b"{\"inputs\":[", "EOF"),
        (b"{\"inputs\":[]} x", "trailing characters"),
        (b"<html>", "invalid JSON"),
    ];
    for (text, want) in cases {
        let e = decode_infer_request(Bytes::copy_from_slice(text), None).unwrap_err();
        assert_mentions(&e.to_string(), &[want]);
    }
    let e = decode_infer_request(Bytes::from_static(b"{\"id\":\"\xc3\x28\"}"), None).unwrap_err();
    assert_eq!(e, DecodeError::InvalidUtf8 { valid_up_to: 7 });
    // Invalid escapes / lone surrogates inside data strings.
    let msg = err(&one_input("s", "[1]", "BYTES", r#"["\ud800"]"#));
    assert_mentions(&msg, &["invalid JSON", "input \"s\" `data`"]);
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for depth in [200, 100_000] {
        let data = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let msg = err(&one_input("deep", "[1]", "INT32", &data));
        assert_mentions(&msg, &["recursion limit"]);
        let nested_params = format!(
            r#"{{"parameters":{{"p":{}{}}},"inputs":[]}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_mentions(&err(&nested_params), &["recursion limit"]);
    }
}

#[test]
fn response_decoding_errors() {
    let e = decode_infer_response(Bytes::from_static(b"{\"outputs\":[]}"), None).unwrap_err();
    assert_mentions(&e.to_string(), &["missing required field `model_name`"]);
    let e = decode_infer_response(
        Bytes::from_static(b"{\"model_name\":\"m\",\"outputs\":[{\"name\":\"o\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[true]}]}"),
        None,
    )
    .unwrap_err();
    assert_mentions(&e.to_string(), &["output \"o\"", "only numbers"]);
}
