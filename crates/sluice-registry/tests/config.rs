//! `model.toml` parsing, validation and version policies.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use sluice_registry::{
    Capture, CaptureWhat, DynamicBatching, ExecutionProvider, GraphOptimization, ModelConfig,
    RegistryError, Repository, VersionPolicy,
};

fn parse(text: &str) -> Result<ModelConfig, RegistryError> {
    ModelConfig::parse(text, Path::new("/repo/iris/model.toml"))
}

fn parse_err(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("expected {text:?} to be rejected, got {config:?}"),
        Err(e) => {
            assert!(
                matches!(e, RegistryError::InvalidConfig { .. }),
                "unexpected error kind: {e:?}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("/repo/iris/model.toml"),
                "message does not name the file: {msg}"
            );
            msg
        }
    }
}

fn set(versions: &[u64]) -> BTreeSet<u64> {
    versions.iter().copied().collect()
}

#[test]
fn empty_file_gives_the_documented_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config, ModelConfig::default());
    assert_eq!(config.instances, 1);
    assert_eq!(config.intra_op_threads, 1);
    assert_eq!(config.inter_op_threads, 1);
    assert_eq!(config.graph_optimization, GraphOptimization::All);
    assert_eq!(config.execution_providers, vec![ExecutionProvider::Cpu]);
    assert_eq!(config.version_policy, VersionPolicy::All);
    assert!(!config.allow_signature_change);
    assert_eq!(config.max_queue_size, 128);
    assert_eq!(config.queue_timeout_ms, 10_000);
    assert_eq!(config.queue_timeout(), std::time::Duration::from_secs(10));
    assert_eq!(config.max_batch_size, 0);
    assert!(config.warmup);
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn every_field_is_read() {
    let config = parse(
        r#"
        instances = 4
        intra_op_threads = 0
        inter_op_threads = 2
        graph_optimization = "extended"
        execution_providers = ["tensorrt", "cuda", "cpu"]
        version_policy = { latest = 2 }
        allow_signature_change = true
        max_queue_size = 7
        queue_timeout_ms = 250
        max_batch_size = 32
        warmup = false
        warmup_shapes = { images = [1, 3, 320, 320] }
        inline_max_run_us = 0

        [dynamic_batching]
        max_queue_delay_us = 250
        preferred_batch_sizes = [8, 16]

        [capture]
        sample_rate = 0.25
        key_header = "x-user-id"
        what = "inputs"
        queue_size = 50
        "#,
    )
    .unwrap();
    assert_eq!(
        config,
        ModelConfig {
            instances: 4,
            intra_op_threads: 0,
            inter_op_threads: 2,
            graph_optimization: GraphOptimization::Extended,
            execution_providers: vec![
                ExecutionProvider::Tensorrt,
                ExecutionProvider::Cuda,
                ExecutionProvider::Cpu
            ],
            version_policy: VersionPolicy::Latest(2),
            allow_signature_change: true,
            max_queue_size: 7,
            queue_timeout_ms: 250,
            max_batch_size: 32,
            warmup: false,
            dynamic_batching: Some(DynamicBatching {
                max_queue_delay_us: 250,
                preferred_batch_sizes: vec![8, 16],
            }),
            warmup_shapes: [("images".to_string(), vec![1, 3, 320, 320])].into(),
            inline_max_run_us: 0,
            capture: Capture {
                sample_rate: 0.25,
                key_header: Some("x-user-id".into()),
                what: CaptureWhat::Inputs,
                queue_size: 50,
            },
            safety: Default::default(),
            task: None,
            require_validation: false,
            validation: Default::default(),
        }
    );
}

#[test]
fn capture_is_off_by_default_and_partial_tables_keep_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config.capture, Capture::default());
    assert_eq!(config.capture.sample_rate, 0.0);
    assert!(!config.capture.enabled());
    assert_eq!(config.capture.key_header, None);
    assert_eq!(config.capture.what, CaptureWhat::Both);
    assert_eq!(config.capture.queue_size, 1000);
    // An integer is a rate too.
    assert_eq!(
        parse("[capture]\nsample_rate = 1\n")
            .unwrap()
            .capture
            .sample_rate,
        1.0
    );
    let config = parse("[capture]\nsample_rate = 1.0\nwhat = \"outputs\"\n").unwrap();
    assert!(config.capture.enabled());
    assert!(config.capture.what.outputs() && !config.capture.what.inputs());
    assert_eq!(config.capture.queue_size, 1000);
}

#[test]
fn invalid_capture_settings_are_refused_with_the_key_and_the_range() {
    for (text, wanted) in [
        (
            "sample_rate = 1.5",
            "capture.sample_rate = 1.5 is out of range: must be between 0 and 1",
        ),
        (
            "sample_rate = -0.1",
            "capture.sample_rate = -0.1 is out of range",
        ),
        (
            "sample_rate = nan",
            "capture.sample_rate = NaN is out of range",
        ),
        (
            "sample_rate = inf",
            "capture.sample_rate = inf is out of range",
        ),
        (
            "queue_size = 0",
            "capture.queue_size = 0 is out of range: must be between 1 and 1000000",
        ),
        (
            "queue_size = 1000001",
            "capture.queue_size = 1000001 is out of range",
        ),
        ("queue_size = -1", "queue_size"),
        ("what = \"everything\"", "unknown variant `everything`"),
        ("sample_rat = 0.5", "unknown field `sample_rat`"),
        (
            "key_header = \"x user\"",
            "capture.key_header = \"x user\" is not an HTTP header name",
        ),
        ("key_header = \"\"", "is not an HTTP header name"),
    ] {
        let msg = parse_err(&format!("[capture]\n{text}\n"));
        assert!(msg.contains(wanted), "{text}: {msg}");
    }
    // The bounds themselves are fine.
    for text in [
        "sample_rate = 0.0",
        "sample_rate = 1.0",
        "queue_size = 1",
        "queue_size = 1000000",
        "key_header = \"X-User-Id\"",
    ] {
        parse(&format!("[capture]\n{text}\n")).unwrap();
    }
}

#[test]
fn dynamic_batching_needs_a_max_batch_size_and_sane_sizes() {
    let err = parse("[dynamic_batching]\n").unwrap_err().to_string();
    assert!(err.contains("needs max_batch_size >= 1"), "{err}");
    let err = parse("max_batch_size = 8\n[dynamic_batching]\npreferred_batch_sizes = [4, 16]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("preferred_batch_sizes has 16"), "{err}");
    let err = parse("max_batch_size = 8\n[dynamic_batching]\nmax_delay_us = 5\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_delay_us"), "{err}");
    let ok = parse("max_batch_size = 8\n[dynamic_batching]\n").unwrap();
    assert_eq!(ok.dynamic_batching, Some(DynamicBatching::default()));
}

#[test]
fn partial_file_keeps_other_defaults() {
    let config = parse("instances = 3\n").unwrap();
    assert_eq!(
        config,
        ModelConfig {
            instances: 3,
            ..ModelConfig::default()
        }
    );
}

#[test]
fn graph_optimization_levels() {
    for (text, level) in [
        ("disable", GraphOptimization::Disable),
        ("basic", GraphOptimization::Basic),
        ("extended", GraphOptimization::Extended),
        ("all", GraphOptimization::All),
    ] {
        let config = parse(&format!("graph_optimization = \"{text}\"")).unwrap();
        assert_eq!(config.graph_optimization, level);
    }
    let msg = parse_err("graph_optimization = \"max\"");
    assert!(msg.contains("max"), "{msg}");
}

#[test]
fn unknown_key_is_rejected_naming_the_key() {
    let msg = parse_err("instancs = 2\n");
    assert!(msg.contains("instancs"), "{msg}");
    assert!(msg.contains("unknown field"), "{msg}");
}

#[test]
fn unknown_key_inside_a_policy_is_rejected() {
    let msg = parse_err("version_policy = { newest = 2 }");
    assert!(msg.contains("newest"), "{msg}");
}

#[test]
fn wrong_type_is_rejected() {
    let msg = parse_err("instances = \"two\"");
    assert!(msg.contains("instances"), "{msg}");
    let msg = parse_err("warmup = 1");
    assert!(msg.contains("warmup"), "{msg}");
}

#[test]
fn syntax_error_is_rejected() {
    let msg = parse_err("instances = ");
    assert!(msg.contains("line 1"), "{msg}");
}

#[test]
fn version_policies_parse() {
    assert_eq!(
        parse("version_policy = \"all\"").unwrap().version_policy,
        VersionPolicy::All
    );
    assert_eq!(
        parse("version_policy = { latest = 2 }")
            .unwrap()
            .version_policy,
        VersionPolicy::Latest(2)
    );
    assert_eq!(
        parse("version_policy = { specific = [1, 3] }")
            .unwrap()
            .version_policy,
        VersionPolicy::Specific(vec![1, 3])
    );
    // A table section is the same thing as an inline table.
    assert_eq!(
        parse("[version_policy]\nlatest = 1\n")
            .unwrap()
            .version_policy,
        VersionPolicy::Latest(1)
    );
    parse_err("version_policy = \"newest\"");
    parse_err("version_policy = { latest = 1, specific = [1] }");
}

#[test]
fn execution_providers_known_and_unknown() {
    let config = parse("execution_providers = [\"cuda\"]").unwrap();
    assert_eq!(config.execution_providers, vec![ExecutionProvider::Cuda]);
    assert_eq!(
        config.effective_execution_providers(),
        vec![ExecutionProvider::Cuda, ExecutionProvider::Cpu]
    );
    let config = parse("execution_providers = []").unwrap();
    assert_eq!(
        config.effective_execution_providers(),
        vec![ExecutionProvider::Cpu]
    );

    let msg = parse_err("execution_providers = [\"cuda\", \"rocm\"]");
    assert!(msg.contains("rocm"), "{msg}");
    let msg = parse_err("execution_providers = [\"CUDA\"]");
    assert!(msg.contains("CUDA"), "{msg}");
}

#[test]
fn execution_provider_order_mistakes_are_rejected() {
    let msg = parse_err("execution_providers = [\"cpu\", \"cuda\"]");
    assert!(msg.contains("\"cuda\" after \"cpu\""), "{msg}");
    let msg = parse_err("execution_providers = [\"cuda\", \"cuda\"]");
    assert!(msg.contains("\"cuda\" twice"), "{msg}");
}

#[test]
fn ranges_are_validated() {
    let cases = [
        ("instances = 0", "instances = 0"),
        ("instances = 65", "instances = 65"),
        ("max_queue_size = 0", "max_queue_size = 0"),
        ("queue_timeout_ms = 0", "queue_timeout_ms = 0"),
        ("version_policy = { latest = 0 }", "latest = 0"),
        ("version_policy = { specific = [] }", "specific = []"),
        ("version_policy = { specific = [0, 2] }", "version 0"),
    ];
    for (text, needle) in cases {
        let msg = parse_err(text);
        assert!(msg.contains(needle), "{text}: {msg}");
    }
    assert_eq!(parse("instances = 64").unwrap().instances, 64);
    assert_eq!(parse("instances = 1").unwrap().instances, 1);
    parse_err("instances = -1");
}

#[test]
fn selected_versions_all() {
    let config = ModelConfig::default();
    assert_eq!(config.selected_versions(&set(&[1, 2, 5])), set(&[1, 2, 5]));
    assert_eq!(config.selected_versions(&set(&[])), set(&[]));
}

#[test]
fn selected_versions_latest() {
    let config = ModelConfig {
        version_policy: VersionPolicy::Latest(2),
        ..ModelConfig::default()
    };
    assert_eq!(
        config.selected_versions(&set(&[1, 2, 10, 3])),
        set(&[3, 10])
    );
    assert_eq!(config.selected_versions(&set(&[4])), set(&[4]));
    assert_eq!(config.selected_versions(&set(&[])), set(&[]));
    let one = ModelConfig {
        version_policy: VersionPolicy::Latest(1),
        ..ModelConfig::default()
    };
    assert_eq!(one.selected_versions(&set(&[1, 2, 9])), set(&[9]));
}

#[test]
fn selected_versions_specific() {
    let config = ModelConfig {
        version_policy: VersionPolicy::Specific(vec![1, 3, 7]),
        ..ModelConfig::default()
    };
    assert_eq!(config.selected_versions(&set(&[1, 2, 3, 4])), set(&[1, 3]));
    assert_eq!(config.selected_versions(&set(&[2, 4])), set(&[]));
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.toml");
    fs::write(&path, "instances = 2\n").unwrap();
    assert_eq!(ModelConfig::load(&path).unwrap().instances, 2);

    fs::write(&path, "instances = 2\nbatch = 4\n").unwrap();
    let msg = ModelConfig::load(&path).unwrap_err().to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("batch"), "{msg}");

    let missing = dir.path().join("nope.toml");
    let err = ModelConfig::load(&missing).unwrap_err();
    assert!(matches!(err, RegistryError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.toml"), "{err}");
}

#[test]
fn scan_reports_config_per_model() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for model in ["plain", "tuned", "typo"] {
        fs::create_dir_all(root.join(model).join("1")).unwrap();
    }
    fs::write(root.join("tuned/model.toml"), "instances = 3\n").unwrap();
    fs::write(
        root.join("typo/model.toml"),
        "instances = 3\nmax_qeue_size = 5\n",
    )
    .unwrap();

    let scan = Repository::open(root).unwrap().scan().unwrap();
    assert_eq!(scan.models["plain"].config, Ok(ModelConfig::default()));
    assert_eq!(scan.models["tuned"].config.as_ref().unwrap().instances, 3);
    let msg = scan.models["typo"].config.as_ref().unwrap_err();
    assert!(msg.contains("max_qeue_size"), "{msg}");
    assert!(
        msg.contains(&root.join("typo/model.toml").display().to_string()),
        "{msg}"
    );
    // The broken model is still listed with its versions.
    assert_eq!(scan.models["typo"].available_versions(), [1].into());
}

#[test]
fn task_and_validation_table() {
    let config = parse(
        r#"
        task = "classification"
        require_validation = true

        [validation]
        features = ["age", "income"]
        input = "x"
        output = "probabilities"
        positive_class = 0
        checks = ["accuracy >= 0.9", "demographic_parity_difference <= 0.1"]
        "#,
    )
    .unwrap();
    assert_eq!(config.task, Some(sluice_registry::Task::Classification));
    assert!(config.require_validation);
    assert_eq!(
        config.validation,
        sluice_registry::Validation {
            features: vec!["age".into(), "income".into()],
            input: Some("x".into()),
            output: Some("probabilities".into()),
            positive_class: 0,
            checks: vec![
                "accuracy >= 0.9".into(),
                "demographic_parity_difference <= 0.1".into()
            ],
        }
    );
    let defaults = parse("task = \"regression\"\n").unwrap();
    assert_eq!(defaults.task, Some(sluice_registry::Task::Regression));
    assert!(!defaults.require_validation);
    assert_eq!(defaults.validation.positive_class, 1);
    assert!(parse_err("task = \"ranking\"\n").contains("ranking"));
    assert!(parse_err("[validation]\nthreshold = 1\n").contains("threshold"));
}
