//! Hot swap under load: versions published and removed while clients call,
//! with no failed request and every answer computed by the version it names.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{TestServer, fixtures, index_state, scale_model, scale_request};
use serde_json::Value;

/// Client loop: calls `scale` without a version and checks that y = x * v
/// for the version v the response names.
async fn client(
    url: String,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    wrong: Arc<AtomicU64>,
    seen_max: Arc<AtomicU64>,
) {
    let http = reqwest::Client::new();
    let x = [1.0f32, 2.0, 3.0, 4.0];
    while !stop.load(Ordering::Relaxed) {
        let response = http
            .post(format!("{url}/v2/models/scale/infer"))
            .json(&scale_request(x))
            .send()
            .await;
        let Ok(response) = response else {
            failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if response.status() != 200 {
            eprintln!(
                "failed: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
            failed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let body: Value = response.json().await.unwrap();
        let version: u64 = body["model_version"].as_str().unwrap().parse().unwrap();
        let y: Vec<f64> = body["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let expected: Vec<f64> = x.iter().map(|&v| f64::from(v) * version as f64).collect();
        if y != expected {
            wrong.fetch_add(1, Ordering::Relaxed);
        }
        seen_max.fetch_max(version, Ordering::Relaxed);
        ok.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_remove_versions_under_load_without_a_failed_request() {
    let server = TestServer::scale_v1().await;
    let repo = sluice_registry::Repository::open(server.root.path()).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = (0..4).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let (ok, failed, wrong, seen_max) = (
        counters[0].clone(),
        counters[1].clone(),
        counters[2].clone(),
        counters[3].clone(),
    );
    let clients: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(client(
                server.url.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                wrong.clone(),
                seen_max.clone(),
            ))
        })
        .collect();

    // Twenty swaps: publish version v (computing x * v), wait until it
    // answers, then delete version v - 1 while requests are in flight.
    let staging = tempfile::tempdir().unwrap();
    for version in 2..=21u64 {
        let file = scale_model(staging.path(), version as f32);
        let published = repo
            .publish("scale", &file, None, Default::default())
            .unwrap();
        assert_eq!(published.version, version);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while seen_max.load(Ordering::Relaxed) < version {
            assert!(
                tokio::time::Instant::now() < deadline,
                "version {version} never answered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::remove_dir_all(server.root.path().join(format!("scale/{}", version - 1))).unwrap();
        server
            .wait_index("old version gone", |index| {
                index_state(index, "scale", &(version - 1).to_string()).is_none()
            })
            .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed, wrong) = (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
    );
    eprintln!("hot swap: {ok} answered, {failed} failed, {wrong} wrong");
    assert!(ok > 0);
    assert_eq!(failed, 0, "requests failed during the swaps");
    assert_eq!(wrong, 0, "answers did not match the version they named");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_incompatible_version_is_refused_and_the_old_one_keeps_serving() {
    let server = TestServer::scale_v1().await;
    let repo = sluice_registry::Repository::open(server.root.path()).unwrap();

    repo.publish(
        "scale",
        &fixtures().join("corrupt.onnx"),
        Some(2),
        Default::default(),
    )
    .unwrap();
    let index = server
        .wait_index("corrupt version reported", |index| {
            index_state(index, "scale", "2").is_some_and(|(state, _)| state == "UNAVAILABLE")
        })
        .await;
    let (_, reason) = index_state(&index, "scale", "2").unwrap();
    // The model safety check reads the file before ONNX Runtime does, and
    // refuses what does not even decode.
    assert!(
        reason.contains("refused by the safety check") && reason.contains("not an ONNX model"),
        "{reason}"
    );

    let other = fixtures().join("models/scale_other_sig/1/model.onnx");
    repo.publish("scale", &other, Some(3), Default::default())
        .unwrap();
    let index = server
        .wait_index("incompatible version reported", |index| {
            index_state(index, "scale", "3").is_some_and(|(state, _)| state == "UNAVAILABLE")
        })
        .await;
    let (_, reason) = index_state(&index, "scale", "3").unwrap();
    assert!(reason.contains("signature is incompatible"), "{reason}");
    assert!(reason.contains("input 'x' is gone"), "{reason}");

    // Version 1 still answers requests without a version.
    let response = server
        .post_json(
            "/v2/models/scale/infer",
            &scale_request([1.0, 2.0, 3.0, 4.0]),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model_version"], "1");
    // And asking for the refused versions says why.
    let response = server
        .post_json(
            "/v2/models/scale/versions/3/infer",
            &scale_request([1.0, 2.0, 3.0, 4.0]),
        )
        .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("signature"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_and_load_through_the_repository_api() {
    let server = TestServer::scale_v1().await;
    let unload = server
        .post_empty("/v2/repository/models/scale/unload")
        .await;
    assert_eq!(unload.status(), 200);
    let ready = server.get("/v2/models/scale/ready").await;
    assert_eq!(ready.status(), 400);
    let infer = server
        .post_json("/v2/models/scale/infer", &scale_request([1.0; 4]))
        .await;
    assert_eq!(infer.status(), 503);
    // Survives rescans: still unloaded after the watcher's next pass.
    server.manager.reconcile().await.unwrap();
    assert_eq!(server.get("/v2/models/scale/ready").await.status(), 400);
    let load = server.post_empty("/v2/repository/models/scale/load").await;
    assert_eq!(load.status(), 200);
    assert_eq!(server.get("/v2/models/scale/ready").await.status(), 200);
    let missing = server.post_empty("/v2/repository/models/nope/load").await;
    assert_eq!(missing.status(), 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_manifest_does_not_match_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let staging = tempfile::tempdir().unwrap();
    let server = TestServer::start(root, Default::default()).await;
    let repo = sluice_registry::Repository::open(server.root.path()).unwrap();
    repo.publish(
        "scale",
        &scale_model(staging.path(), 2.0),
        Some(2),
        Default::default(),
    )
    .unwrap();
    server
        .wait_index("version 2 ready", |index| {
            index_state(index, "scale", "2").is_some_and(|(state, _)| state == "READY")
        })
        .await;

    // Version 3 arrives with version 2's manifest but another model file.
    let v3 = server.root.path().join("scale/.staging-3");
    std::fs::create_dir_all(&v3).unwrap();
    std::fs::copy(scale_model(staging.path(), 3.0), v3.join("model.onnx")).unwrap();
    let mut manifest: Value = serde_json::from_slice(
        &std::fs::read(server.root.path().join("scale/2/manifest.json")).unwrap(),
    )
    .unwrap();
    manifest["version"] = 3.into();
    std::fs::write(v3.join("manifest.json"), manifest.to_string()).unwrap();
    std::fs::rename(&v3, server.root.path().join("scale/3")).unwrap();
    let index = server
        .wait_index("version 3 refused", |index| {
            index_state(index, "scale", "3").is_some_and(|(state, _)| state == "UNAVAILABLE")
        })
        .await;
    let (_, reason) = index_state(&index, "scale", "3").unwrap();
    assert!(reason.contains("hashes to"), "{reason}");

    // Version 2's file is tampered with in place: the reload is refused and
    // version 2 keeps serving what it loaded (y = x * 2).
    std::fs::copy(
        scale_model(staging.path(), 7.0),
        server.root.path().join("scale/2/model.onnx"),
    )
    .unwrap();
    let index = server
        .wait_index("tampered version 2 reported", |index| {
            index_state(index, "scale", "2").is_some_and(|(_, reason)| reason.contains("hashes to"))
        })
        .await;
    assert_eq!(index_state(&index, "scale", "2").unwrap().0, "READY");
    let response = server
        .post_json(
            "/v2/models/scale/infer",
            &scale_request([1.0, 2.0, 3.0, 4.0]),
        )
        .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model_version"], "2");
    assert_eq!(
        body["outputs"][0]["data"],
        serde_json::json!([2.0, 4.0, 6.0, 8.0])
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_model_settings_reload_the_version() {
    let server = TestServer::scale_v1().await;
    let config: Value = server
        .get("/v2/models/scale/config")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(config["instance_group"][0]["count"], 1);
    std::fs::write(
        server.root.path().join("scale/model.toml"),
        "instances = 2\nmax_queue_size = 7\n",
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let config: Value = server
            .get("/v2/models/scale/config")
            .await
            .json()
            .await
            .unwrap();
        if config["instance_group"][0]["count"] == 2 {
            assert_eq!(config["parameters"]["max_queue_size"]["string_value"], "7");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "settings never applied: {config}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = server
        .post_json("/v2/models/scale/infer", &scale_request([1.0; 4]))
        .await;
    assert_eq!(response.status(), 200);
    // A model.toml that does not parse leaves the running version alone and
    // says why in the index.
    std::fs::write(
        server.root.path().join("scale/model.toml"),
        "instances = \"two\"\n",
    )
    .unwrap();
    let index = server
        .wait_index("invalid model.toml reported", |index| {
            index_state(index, "scale", "").is_some_and(|(state, _)| state == "UNAVAILABLE")
        })
        .await;
    assert!(
        index_state(&index, "scale", "")
            .unwrap()
            .1
            .contains("model.toml"),
        "{index:?}"
    );
    let response = server
        .post_json("/v2/models/scale/infer", &scale_request([1.0; 4]))
        .await;
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_version_takes_its_metric_series_with_it() {
    let server = TestServer::scale_v1().await;
    let v1 =
        r#"sluice_requests_total{model="scale",version="1",protocol="http",outcome="success"}"#;
    let v2 =
        r#"sluice_requests_total{model="scale",version="2",protocol="http",outcome="success"}"#;
    let metrics = |server: &TestServer| {
        let request = server.client.get(format!("{}/metrics", server.url));
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let infer = server
        .post_json("/v2/models/scale/infer", &scale_request([1.0; 4]))
        .await;
    assert_eq!(infer.status(), 200);
    assert!(metrics(&server).await.contains(v1));

    // Version 2 arrives, version 1 goes: once drained, its series go too.
    common::copy_version(server.root.path(), "scale", 2, "scale");
    server.manager.reconcile().await.unwrap();
    std::fs::remove_dir_all(server.root.path().join("scale/1")).unwrap();
    let mut text = String::new();
    for _ in 0..100 {
        server.manager.reconcile().await.unwrap();
        text = metrics(&server).await;
        if !text.contains(r#"version="1""#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !text.contains(r#"version="1""#),
        "series of the removed version are still exposed:\n{text}"
    );
    let infer = server
        .post_json("/v2/models/scale/infer", &scale_request([1.0; 4]))
        .await;
    assert_eq!(infer.status(), 200);
    assert!(metrics(&server).await.contains(v2));
    server.stop().await;
}
