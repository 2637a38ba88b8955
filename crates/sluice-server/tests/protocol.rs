//! Open Inference Protocol endpoints against the demo models, with a real
//! HTTP client. (The broader suite, through tritonclient, is tests/oip/.)

mod common;

use common::TestServer;
use serde_json::{Value, json};

fn copy_demo_models(root: &std::path::Path) {
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    for model in ["iris", "mixed", "text"] {
        for entry in std::fs::read_dir(demo.join(model)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                let dst = root.join(model).join(entry.file_name());
                std::fs::create_dir_all(&dst).unwrap();
                for file in std::fs::read_dir(entry.path()).unwrap() {
                    let file = file.unwrap();
                    std::fs::copy(file.path(), dst.join(file.file_name())).unwrap();
                }
            }
        }
    }
}

async fn demo_server() -> TestServer {
    let root = tempfile::tempdir().unwrap();
    copy_demo_models(root.path());
    TestServer::start(root, Default::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_readiness_and_versions() {
    let server = demo_server().await;
    let meta: Value = server.get("/v2").await.json().await.unwrap();
    assert_eq!(meta["name"], "sluice");
    assert!(
        meta["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("binary_tensor_data"))
    );
    assert_eq!(server.get("/v2/health/live").await.status(), 200);

    let iris: Value = server.get("/v2/models/iris").await.json().await.unwrap();
    assert_eq!(iris["versions"], json!(["1", "2"]));
    assert_eq!(
        iris["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 4]}])
    );
    assert_eq!(
        iris["outputs"][0],
        json!({"name": "label", "datatype": "INT64", "shape": [-1]})
    );
    let v1: Value = server
        .get("/v2/models/iris/versions/1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v1["name"], "iris");
    assert_eq!(
        server
            .get("/v2/models/iris/versions/1/ready")
            .await
            .status(),
        200
    );
    assert_eq!(
        server
            .get("/v2/models/iris/versions/9/ready")
            .await
            .status(),
        404
    );
    assert_eq!(server.get("/v2/models/nope/ready").await.status(), 404);

    let config: Value = server
        .get("/v2/models/mixed/config")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(config["platform"], "onnxruntime_onnx");
    assert_eq!(
        config["input"][2],
        json!({"name": "mask", "data_type": "TYPE_BOOL", "dims": [-1, 3]})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_iris_versions_answer_differently_and_say_which_answered() {
    let server = demo_server().await;
    let request = json!({
        "id": "req-7",
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [[6.3, 2.5, 5.0, 1.9]]}]
    });
    let latest: Value = server
        .post_json("/v2/models/iris/infer", &request)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(latest["model_version"], "2");
    assert_eq!(latest["id"], "req-7");
    let v1 = server
        .post_json("/v2/models/iris/versions/1/infer", &request)
        .await;
    assert_eq!(v1.headers()["sluice-model-version"], "1");
    let v1: Value = v1.json().await.unwrap();
    assert_eq!(v1["model_version"], "1");
    assert_eq!(v1["outputs"][0]["data"], json!([2]));
    assert_eq!(latest["outputs"][0]["data"], json!([1]));

    let stats: Value = server
        .get("/v2/models/iris/versions/1/stats")
        .await
        .json()
        .await
        .unwrap();
    let s = &stats["model_stats"][0];
    assert_eq!(s["version"], "1");
    assert_eq!(s["inference_stats"]["success"]["count"], 1);
    assert!(
        s["inference_stats"]["compute_infer"]["ns"]
            .as_u64()
            .unwrap()
            > 0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_datatypes_in_one_model_and_bytes() {
    let server = demo_server().await;
    let request = json!({
        "inputs": [
            {"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 4.0]},
            {"name": "counts", "shape": [1, 2], "datatype": "INT64", "data": [123456789012i64, 5]},
            {"name": "mask", "shape": [1, 3], "datatype": "BOOL", "data": [true, false, true]}
        ],
        "outputs": [{"name": "counts_total"}, {"name": "any_masked"}]
    });
    let body: Value = server
        .post_json("/v2/models/mixed/infer", &request)
        .await
        .json()
        .await
        .unwrap();
    let outputs = body["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2, "only the requested outputs: {body}");
    assert_eq!(outputs[0]["name"], "counts_total");
    assert_eq!(outputs[0]["data"], json!([123456789017i64]));
    assert_eq!(outputs[1]["data"], json!([true]));

    let text = json!({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["HeLLo", "Été"]}]});
    let body: Value = server
        .post_json("/v2/models/text/infer", &text)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["outputs"][0]["data"], json!(["hello", "été"]));
    assert_eq!(body["outputs"][1]["data"], json!([true, false]));

    // Inputs ONNX Runtime refuses are the client's error, not a 500.
    let empty =
        json!({"inputs": [{"name": "text", "shape": [0], "datatype": "BYTES", "data": []}]});
    let response = server.post_json("/v2/models/text/infer", &empty).await;
    assert_eq!(response.status(), 400);
    let nul = json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a\u{0}b"]}]});
    let response = server.post_json("/v2/models/text/infer", &nul).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("NUL"), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_without_content_type_is_accepted() {
    let server = demo_server().await;
    let body =
        r#"{"inputs":[{"name":"input","shape":[4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#;
    // Rank 1 is the wrong rank for iris: a 400 naming the input.
    let response = server.post_raw("/v2/models/iris/infer", body).await;
    assert_eq!(response.status(), 400);
    let err: Value = response.json().await.unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("input 'input' has shape [4]"),
        "{err}"
    );
    let body =
        r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#;
    let response = server.post_raw("/v2/models/iris/infer", body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_cannot_warm_up_with_guessed_sizes_still_loads() {
    // `pairs` reshapes x into two rows: the warm-up's guessed length 1 fails.
    let root = tempfile::tempdir().unwrap();
    common::copy_version(root.path(), "pairs", 1, "pairs");
    common::copy_version(root.path(), "pairs", 1, "pairs_shaped");
    std::fs::write(
        root.path().join("pairs_shaped/model.toml"),
        "warmup_shapes = { x = [4] }\n",
    )
    .unwrap();
    let server = TestServer::start(root, Default::default()).await;
    for model in ["pairs", "pairs_shaped"] {
        assert_eq!(
            server
                .get(&format!("/v2/models/{model}/ready"))
                .await
                .status(),
            200,
            "{model}"
        );
        let body = json!({"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
        let answer: Value = server
            .post_json(&format!("/v2/models/{model}/infer"), &body)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(answer["outputs"][0]["shape"], json!([2, 2]), "{answer}");
    }
    server.stop().await;
}
