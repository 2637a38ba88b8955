//! The `sluice` binary as a user runs it.

use std::path::Path;
use std::process::{Command, Output};

fn sluice(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn help_explains_every_serve_option() {
    let out = sluice(&["serve", "--help"], &[]);
    assert!(out.status.success());
    let help = text(&out);
    for flag in [
        "--models",
        "--http-addr",
        "--config",
        "--max-body-bytes",
        "--require-manifests",
        "--rescan-interval-ms",
        "--ort-lib",
        "--log-format",
        "SLUICE_MODELS",
        "SLUICE_HTTP_ADDR",
        "ORT_DYLIB_PATH",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let out = sluice(&["models", "publish", "--help"], &[]);
    assert!(text(&out).contains("--version"));
}

#[test]
fn a_missing_onnx_runtime_names_the_command_that_fetches_it() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let out = sluice(
        &[
            "serve",
            "--models",
            models.to_str().unwrap(),
            "--http-addr",
            "127.0.0.1:0",
        ],
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
    );
    assert!(!out.status.success());
    let message = text(&out);
    assert!(message.contains("make ort"), "{message}");
    assert!(
        message.contains("/nonexistent/libonnxruntime.so"),
        "{message}"
    );
}

#[test]
fn an_unknown_config_key_stops_serve() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "http_adr = \"127.0.0.1:0\"\n").unwrap();
    let out = sluice(&["serve", "--config", config.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unknown field `http_adr`"),
        "{}",
        text(&out)
    );
}

#[test]
fn publish_then_list() {
    let dir = tempfile::tempdir().unwrap();
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models/scale/1/model.onnx");
    let repo = dir.path().to_str().unwrap();
    let out = sluice(
        &[
            "models",
            "publish",
            "scale",
            file.to_str().unwrap(),
            "--models",
            repo,
            "--lineage",
            "run=42",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("published scale version 1"),
        "{}",
        text(&out)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("scale/1/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["lineage"]["run"], "42");
    assert_eq!(manifest["sha256"].as_str().unwrap().len(), 64);
    let out = sluice(
        &[
            "models",
            "publish",
            "scale",
            file.to_str().unwrap(),
            "--models",
            repo,
            "--version",
            "1",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    let out = sluice(&["models", "list", "--models", repo], &[]);
    assert!(
        text(&out).contains("1  model.onnx, manifest"),
        "{}",
        text(&out)
    );
}
