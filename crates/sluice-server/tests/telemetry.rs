//! The exposition against the instrumentation spec: after traffic of every
//! kind, every metric in `docs/specs/instrumentation.md` is exposed, and
//! nothing is exposed that the spec does not list. Also the formats.

mod common;

use std::collections::BTreeSet;

use common::{TestServer, copy_version, scale_request};
use serde_json::json;

/// Metric names and kinds from the spec's metrics table.
/// (name, type, exposed only with a registry on object storage) of every
/// row of the spec's metrics table.
fn spec_metrics() -> Vec<(String, String, bool)> {
    let spec = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/specs/instrumentation.md"),
    )
    .unwrap();
    let section = spec
        .split("## Metrics")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (
                cells[1].trim_matches('`').to_string(),
                cells[2].to_string(),
                cells[5].contains("with a registry on local disk"),
            )
        })
        .collect()
}

/// The sample names a family of this kind exposes in the text format.
fn sample_names(name: &str, kind: &str) -> Vec<String> {
    match kind {
        "histogram" => ["_bucket", "_sum", "_count"]
            .iter()
            .map(|s| format!("{name}{s}"))
            .collect(),
        _ => vec![name.to_string()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exposition_matches_the_spec_after_traffic() {
    let root = tempfile::tempdir().unwrap();
    copy_version(root.path(), "scale", 1, "scale");
    copy_version(root.path(), "scale", 3, "scale");
    let server = TestServer::start(root, Default::default()).await;
    // A span exporter is not configured here; its counter is still part of
    // the contract, so give it the series a configured exporter would have.
    server.metrics.spans_exported.get(&["success"]);
    // Version 1 answers; version 3 shadows every request (the shadow
    // metrics, and the traffic weights of a policy).
    server
        .manager
        .set_policy(
            "scale",
            sluice_rollout::policy::TrafficPolicy {
                stable: Some(1),
                shadows: vec![sluice_rollout::policy::Shadow {
                    version: 3,
                    percent: 100.0,
                    agreement: Default::default(),
                }],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Success, validation, not_found, a load failure, a non-inference route.
    assert_eq!(
        server
            .post_json("/v2/models/scale/infer", &scale_request([1.0; 4]))
            .await
            .status(),
        200
    );
    let bad =
        json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    assert_eq!(
        server
            .post_json("/v2/models/scale/infer", &bad)
            .await
            .status(),
        400
    );
    assert_eq!(
        server
            .post_json("/v2/models/nope/infer", &bad)
            .await
            .status(),
        404
    );
    std::fs::create_dir_all(server.root.path().join("scale/2")).unwrap();
    std::fs::copy(
        common::fixtures().join("corrupt.onnx"),
        server.root.path().join("scale/2/model.onnx"),
    )
    .unwrap();
    server.manager.reconcile().await.unwrap();
    assert_eq!(server.get("/v2/models/scale").await.status(), 200);
    // The shadow copy of the one success runs after it answered. (Its
    // series exist from the start of the copy's task, before it ran: wait
    // for the comparison itself.)
    for _ in 0..200 {
        let text = server.get("/metrics").await.text().await.unwrap();
        if text.contains(
            r#"sluice_shadow_requests_total{model="scale",version="3",outcome="compared"} 1"#,
        ) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }

    let text = server.get("/metrics").await;
    assert_eq!(
        text.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = text.text().await.unwrap();
    let exposed: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let spec = spec_metrics();
    assert!(spec.len() >= 15, "the spec table was not parsed: {spec:?}");
    let mut expected = BTreeSet::new();
    for (name, kind, remote_only) in &spec {
        for sample in sample_names(name, kind) {
            // This server's registry is a directory: the metrics of a
            // registry on object storage have no sample (tests/registry
            // checks them).
            assert!(
                *remote_only || exposed.contains(&sample),
                "spec metric {sample} is not exposed:\n{text}"
            );
            expected.insert(sample);
        }
    }
    let extra: Vec<&String> = exposed.difference(&expected).collect();
    assert!(extra.is_empty(), "exposed but not in the spec: {extra:?}");

    // Per-version series carry what happened.
    assert!(text.contains(
        r#"sluice_requests_total{model="scale",version="1",protocol="http",outcome="success"} 1"#
    ));
    assert!(text.contains(
        r#"sluice_requests_total{model="scale",version="1",protocol="http",outcome="validation"} 1"#
    ));
    assert!(text.contains(
        r#"sluice_requests_total{model="",version="",protocol="http",outcome="not_found"} 1"#
    ));
    assert!(
        text.contains(r#"sluice_model_loads_total{model="scale",outcome="failure"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"sluice_model_versions_loaded{model="scale"} 2"#));
    assert!(text.contains(r#"sluice_traffic_weight{model="scale",version="3",role="shadow"} 1"#));
    assert!(text.contains(
        r#"sluice_shadow_requests_total{model="scale",version="3",outcome="compared"} 1"#
    ));
    assert!(text.contains(r#"sluice_queue_duration_seconds_count{model="scale",version="1"} 1"#));
    // Capture is off here (no collector): its series exist, at zero.
    assert!(text.contains(r#"sluice_capture_records_total{model="scale",outcome="dropped"} 0"#));
    assert!(text.contains("sluice_capture_queue_depth 0\n"));
    assert!(text.contains(r#"sluice_capture_export_duration_seconds_count{outcome="success"} 0"#));
    assert!(text.contains(r#"http_route="/v2/models/{model}/infer""#));
    // The route template, never the raw path.
    assert!(
        !text.contains("/v2/models/scale/infer"),
        "a raw path leaked into a label"
    );

    let om = server
        .client
        .get(format!("{}/metrics", server.url))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(
        om.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = om.text().await.unwrap();
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE sluice_requests counter\n"));
    server.stop().await;
}
