//! Models built here as protobuf bytes (our own messages, encoded with
//! prost), one per finding, and the real models of the repository.

use std::path::Path;

use super::proto::*;
use super::*;

fn value(name: &str) -> ValueInfoProto {
    ValueInfoProto { name: name.into() }
}

fn node(op: &str, domain: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: format!("{op}_0"),
        op_type: op.into(),
        domain: domain.into(),
        attribute: vec![],
    }
}

fn floats(name: &str, dims: &[i64], n: usize) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        raw_data: Bytes::from(vec![0u8; n * 4]),
        ..Default::default()
    }
}

fn opset(domain: &str, version: i64) -> OperatorSetIdProto {
    OperatorSetIdProto {
        domain: domain.into(),
        version,
    }
}

/// y = x + w: one input, one initializer, one node, one output.
fn clean() -> ModelProto {
    ModelProto {
        ir_version: 10,
        opset_import: vec![opset("", 21)],
        graph: Some(GraphProto {
            name: "g".into(),
            node: vec![node("Add", "", &["x", "w"], &["y"])],
            initializer: vec![floats("w", &[2, 2], 4)],
            input: vec![value("x")],
            output: vec![value("y")],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Writes `model` as `model.onnx` in a fresh directory and checks it.
fn check_in(dir: &Path, model: &ModelProto, safety: &Safety) -> Report {
    let path = dir.join("model.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    check_file(&path, safety)
}

fn check(model: &ModelProto) -> Report {
    let dir = tempfile::tempdir().unwrap();
    check_in(dir.path(), model, &Safety::default())
}

fn kinds(r: &Report) -> Vec<FindingKind> {
    r.findings.iter().map(|f| f.kind).collect()
}

#[track_caller]
fn assert_one(r: &Report, kind: FindingKind, needle: &str) {
    assert_eq!(kinds(r), vec![kind], "{}", r.reason());
    assert!(
        r.reason().contains(needle),
        "{:?} not in {}",
        needle,
        r.reason()
    );
}

fn main_graph(m: &mut ModelProto) -> &mut GraphProto {
    m.graph.as_mut().unwrap()
}

fn with_external(location: &str) -> ModelProto {
    let mut m = clean();
    let w = &mut main_graph(&mut m).initializer[0];
    w.raw_data = Bytes::new();
    w.data_location = 1;
    w.external_data = vec![StringStringEntryProto {
        key: "location".into(),
        value: location.into(),
    }];
    m
}

#[test]
fn a_clean_model_passes_with_a_summary() {
    let r = check(&clean());
    assert!(r.passed(), "{}", r.reason());
    assert_eq!(r.summary.nodes, 1);
    assert_eq!(r.summary.initializers, 1);
    assert_eq!(r.summary.initializer_bytes, 16);
    assert_eq!(r.summary.opsets.get(""), Some(&21));
    assert!(r.summary.domains.contains(""));
}

#[test]
fn external_data_with_parent_components_is_refused() {
    let r = check(&with_external("../../etc/passwd"));
    assert_one(&r, FindingKind::ExternalData, "\"..\" component");
    assert!(r.reason().contains("initializer \"w\""), "{}", r.reason());
}

#[test]
fn external_data_at_an_absolute_path_is_refused() {
    let r = check(&with_external("/etc/passwd"));
    assert_one(
        &r,
        FindingKind::ExternalData,
        "absolute path \"/etc/passwd\"",
    );
}

#[test]
fn external_data_at_ort_memory_marker_is_refused() {
    let r = check(&with_external("*/_ORT_MEM_ADDR_/*"));
    assert_one(&r, FindingKind::ExternalData, "memory address");
}

#[test]
fn external_data_that_is_missing_is_refused() {
    let r = check(&with_external("weights.bin"));
    assert_one(&r, FindingKind::ExternalData, "cannot be resolved");
}

#[test]
fn external_data_through_a_symlink_outside_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), [0u8; 16]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret"),
        dir.path().join("weights.bin"),
    )
    .unwrap();
    let r = check_in(
        dir.path(),
        &with_external("weights.bin"),
        &Safety::default(),
    );
    assert_one(
        &r,
        FindingKind::ExternalData,
        "outside the model's directory",
    );
}

#[test]
fn external_data_inside_the_directory_passes_and_is_sized() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/weights.bin"), [0u8; 16]).unwrap();
    let r = check_in(
        dir.path(),
        &with_external("data/weights.bin"),
        &Safety::default(),
    );
    assert!(r.passed(), "{}", r.reason());
    assert_eq!(r.summary.external_tensors, 1);

    // Shorter than the tensor claims.
    std::fs::write(dir.path().join("data/weights.bin"), [0u8; 8]).unwrap();
    let r = check_in(
        dir.path(),
        &with_external("data/weights.bin"),
        &Safety::default(),
    );
    assert_one(&r, FindingKind::Size, "has only 8 bytes");
}

#[test]
fn external_data_in_a_subgraph_is_found() {
    let mut m = clean();
    let bad = with_external("../secret");
    let inner = GraphProto {
        name: "then".into(),
        node: vec![node("Add", "", &["x", "w"], &["t"])],
        initializer: bad.graph.unwrap().initializer,
        output: vec![value("t")],
        ..Default::default()
    };
    let mut if_node = node("If", "", &["x"], &["z"]);
    if_node.attribute = vec![AttributeProto {
        name: "then_branch".into(),
        g: Some(inner),
        ..Default::default()
    }];
    main_graph(&mut m).node.push(if_node);
    let r = check(&m);
    assert_one(&r, FindingKind::ExternalData, "\"..\" component");
    assert!(r.reason().contains("graph \"then\""), "{}", r.reason());
}

#[test]
fn external_data_in_a_sparse_initializer_is_found() {
    let mut m = clean();
    let mut values = with_external("/abs/values.bin")
        .graph
        .unwrap()
        .initializer
        .remove(0);
    values.dims = vec![4];
    main_graph(&mut m)
        .sparse_initializer
        .push(SparseTensorProto {
            values: Some(values),
            indices: Some(TensorProto {
                dims: vec![4],
                data_type: 7,
                raw_data: Bytes::from(vec![0u8; 32]),
                ..Default::default()
            }),
            dims: vec![2, 2],
        });
    let r = check(&m);
    assert_one(&r, FindingKind::ExternalData, "sparse initializer");
}

#[test]
fn a_custom_domain_is_refused_unless_allowed() {
    let mut m = clean();
    m.opset_import.push(opset("com.example", 1));
    main_graph(&mut m).node[0].domain = "com.example".into();
    let r = check(&m);
    assert_eq!(
        kinds(&r),
        vec![FindingKind::Domain, FindingKind::Domain],
        "{}",
        r.reason()
    );
    assert!(r.reason().contains(
        "operator domain \"com.example\" is not allowed (1 node(s), first node \"Add_0\" (Add)"
    ));

    let dir = tempfile::tempdir().unwrap();
    let safety = Safety {
        allowed_domains: vec!["com.example".into()],
        ..Safety::default()
    };
    let r = check_in(dir.path(), &m, &safety);
    assert!(r.passed(), "{}", r.reason());
    assert!(r.summary.domains.contains("com.example"));
}

#[test]
fn contrib_and_ml_domains_are_allowed_by_default() {
    let mut m = clean();
    m.opset_import
        .extend([opset("com.microsoft", 1), opset("ai.onnx.ml", 3)]);
    main_graph(&mut m).node[0].domain = "com.microsoft".into();
    assert!(check(&m).passed());
}

#[test]
fn a_local_function_is_not_a_custom_operator() {
    let mut m = clean();
    m.opset_import.push(opset("local", 1));
    m.functions.push(FunctionProto {
        name: "MyAdd".into(),
        domain: "local".into(),
        input: vec!["a".into(), "b".into()],
        output: vec!["c".into()],
        node: vec![node("Add", "", &["a", "b"], &["c"])],
        opset_import: vec![opset("", 21)],
    });
    main_graph(&mut m).node[0].op_type = "MyAdd".into();
    main_graph(&mut m).node[0].domain = "local".into();
    let r = check(&m);
    assert!(r.passed(), "{}", r.reason());

    // A function whose body uses a custom domain is still refused.
    m.functions[0].node[0].domain = "com.evil".into();
    let r = check(&m);
    assert_one(&r, FindingKind::Domain, "com.evil");
}

#[test]
fn opsets_out_of_range_are_refused() {
    let mut m = clean();
    m.opset_import = vec![opset("", 99)];
    assert_one(
        &check(&m),
        FindingKind::Opset,
        "ai.onnx opset 99, outside the supported range 7..=26",
    );
    m.opset_import = vec![opset("", 5)];
    assert_one(&check(&m), FindingKind::Opset, "opset 5");
    m.opset_import = vec![opset("", 21), opset("ai.onnx.ml", 6)];
    assert_one(&check(&m), FindingKind::Opset, "ai.onnx.ml opset 6");

    let dir = tempfile::tempdir().unwrap();
    let safety = Safety {
        max_opset: 20,
        ..Safety::default()
    };
    m.opset_import = vec![opset("", 21)];
    assert_one(
        &check_in(dir.path(), &m, &safety),
        FindingKind::Opset,
        "7..=20",
    );
}

#[test]
fn ir_versions_out_of_range_are_refused() {
    let mut m = clean();
    m.ir_version = 14;
    assert_one(&check(&m), FindingKind::Opset, "IR version 14");
    m.ir_version = 0;
    assert_one(&check(&m), FindingKind::Opset, "IR version 0");
}

#[test]
fn a_file_over_the_limit_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let safety = Safety {
        max_file_bytes: 10,
        ..Safety::default()
    };
    let r = check_in(dir.path(), &clean(), &safety);
    assert_one(&r, FindingKind::Size, "max_file_bytes = 10");
    assert_eq!(r.summary.nodes, 0, "the model was not decoded");
}

#[test]
fn absurd_declared_sizes_are_refused_without_allocating() {
    let mut m = clean();
    // A terabyte of floats, carried in 16 bytes.
    main_graph(&mut m).initializer[0].dims = vec![1 << 20, 1 << 20];
    assert_one(
        &check(&m),
        FindingKind::Size,
        "declares 4398046511104 bytes",
    );
    // Overflowing dims.
    main_graph(&mut m).initializer[0].dims = vec![i64::MAX, i64::MAX];
    assert_one(&check(&m), FindingKind::Size, "overflows 64 bits");
    main_graph(&mut m).initializer[0].dims = vec![-1, 4];
    assert_one(&check(&m), FindingKind::Size, "negative dimension");
}

#[test]
fn data_shorter_than_declared_is_a_lie() {
    let mut m = clean();
    main_graph(&mut m).initializer[0].dims = vec![4, 4];
    assert_one(
        &check(&m),
        FindingKind::Size,
        "declares 64 bytes (dims [4, 4]) but its raw data is 16 bytes",
    );

    // Typed data: 3 packed floats for 4 elements.
    let w = &mut main_graph(&mut m).initializer[0];
    w.dims = vec![4];
    w.raw_data = Bytes::new();
    w.float_data = vec![Bytes::from(vec![0u8; 12])];
    assert_one(
        &check(&m),
        FindingKind::Size,
        "declares 4 elements (dims [4]) but carries 3 values",
    );

    // Varint-packed int64: 4 values, one of them two bytes long.
    let w = &mut main_graph(&mut m).initializer[0];
    w.data_type = 7;
    w.float_data.clear();
    w.int64_data = vec![Bytes::from_static(&[1, 0x80, 0x01, 2, 3])];
    assert!(check(&m).passed());

    // No data at all.
    main_graph(&mut m).initializer[0].int64_data.clear();
    assert_one(&check(&m), FindingKind::Size, "carries 0 values");
}

#[test]
fn attribute_tensors_are_checked() {
    let mut m = clean();
    let mut c = node("Constant", "", &[], &["k"]);
    c.attribute = vec![AttributeProto {
        name: "value".into(),
        t: Some(TensorProto {
            dims: vec![1 << 40],
            data_type: 11,
            ..Default::default()
        }),
        ..Default::default()
    }];
    main_graph(&mut m).node.insert(0, c);
    assert_one(
        &check(&m),
        FindingKind::Size,
        "attribute \"value\" of node \"Constant_0\"",
    );
}

#[test]
fn an_output_nothing_produces_is_refused() {
    let mut m = clean();
    main_graph(&mut m).output.push(value("ghost"));
    assert_one(
        &check(&m),
        FindingKind::Graph,
        "output \"ghost\" of graph \"g\"",
    );
}

#[test]
fn a_node_input_naming_nothing_is_refused() {
    let mut m = clean();
    main_graph(&mut m).node[0].input[1] = "nowhere".into();
    assert_one(&check(&m), FindingKind::Graph, "takes input \"nowhere\"");
    // The empty name is an omitted optional input.
    main_graph(&mut m).node[0].input[1] = String::new();
    assert!(check(&m).passed());
}

#[test]
fn subgraphs_may_name_outer_values_but_not_unknown_ones() {
    let mut m = clean();
    let inner = GraphProto {
        name: "body".into(),
        // "w" and "y" come from the outer graph.
        node: vec![node("Add", "", &["w", "y"], &["t"])],
        output: vec![value("t")],
        ..Default::default()
    };
    let mut if_node = node("If", "", &["x"], &["z"]);
    if_node.attribute = vec![AttributeProto {
        name: "then_branch".into(),
        g: Some(inner),
        ..Default::default()
    }];
    main_graph(&mut m).node.push(if_node);
    assert!(check(&m).passed(), "{}", check(&m).reason());

    let g = main_graph(&mut m).node[1].attribute[0].g.as_mut().unwrap();
    g.node[0].input[1] = "elsewhere".into();
    assert_one(&check(&m), FindingKind::Graph, "takes input \"elsewhere\"");
}

#[test]
fn garbage_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, b"\xff\xff\xff\xff not protobuf").unwrap();
    let r = check_file(&path, &Safety::default());
    assert_one(&r, FindingKind::Format, "not an ONNX model");
}

#[test]
fn findings_are_capped() {
    let mut m = clean();
    for i in 0..(MAX_FINDINGS + 5) {
        main_graph(&mut m).output.push(value(&format!("ghost{i}")));
    }
    let r = check(&m);
    assert_eq!(r.findings.len(), MAX_FINDINGS);
    assert_eq!(r.more, 5);
    assert!(r.reason().ends_with("and 5 more"));
}

#[test]
fn safety_settings_parse_and_validate() {
    let s: Safety = toml::from_str("allowed_domains = [\"com.example\"]\nmax_opset = 21").unwrap();
    assert_eq!(s.max_opset, 21);
    assert_eq!(s.min_opset, DEFAULT_MIN_OPSET);
    assert!(s.validate().is_ok());
    assert!(toml::from_str::<Safety>("max_opsett = 3").is_err());
    let bad = Safety {
        min_opset: 30,
        ..Safety::default()
    };
    assert!(bad.validate().unwrap_err().contains("min_opset"));
    let bad = Safety {
        allowed_domains: vec![String::new()],
        ..Safety::default()
    };
    assert!(bad.validate().is_err());
}

/// Every model the repository ships (demo models and test fixtures) passes.
#[test]
fn the_repository_models_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut checked = 0;
    for base in ["models", "tests/fixtures/models"] {
        for model in std::fs::read_dir(root.join(base)).unwrap() {
            let model = model.unwrap().path();
            let Ok(versions) = std::fs::read_dir(&model) else {
                continue;
            };
            for version in versions {
                let file = version.unwrap().path().join("model.onnx");
                if !file.is_file() {
                    continue;
                }
                let r = check_file(&file, &Safety::default());
                assert!(r.passed(), "{}: {}", file.display(), r.reason());
                assert!(r.summary.nodes > 0, "{}", file.display());
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} models found");
}
