//! Dynamic batching through the real server: each request gets exactly its
//! own rows, requests of other shapes are never joined, a request that waits
//! too long fails alone, and models with a fixed first dimension never batch.

mod common;

use std::time::Duration;

use common::{TestServer, copy_version};
use serde_json::{Value, json};

async fn batching_server(model: &str, as_model: &str, config: &str) -> TestServer {
    let root = tempfile::tempdir().unwrap();
    copy_version(root.path(), model, 1, as_model);
    std::fs::write(root.path().join(as_model).join("model.toml"), config).unwrap();
    TestServer::start(root, Default::default()).await
}

/// Sends all `bodies` at once to `path`, returning (status, body) in order.
async fn concurrently(server: &TestServer, path: &str, bodies: Vec<Value>) -> Vec<(u16, Value)> {
    let calls: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let request = server
                .client
                .post(format!("{}{path}", server.url))
                .json(&body);
            tokio::spawn(async move {
                let r = request.send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            })
        })
        .collect();
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.unwrap());
    }
    out
}

fn stats(v: &Value) -> (u64, u64) {
    let s = &v["model_stats"][0];
    (
        s["inference_count"].as_u64().unwrap(),
        s["execution_count"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_exactly_its_own_rows() {
    let server = batching_server(
        "scale",
        "scale",
        "instances = 1\nmax_batch_size = 16\n[dynamic_batching]\nmax_queue_delay_us = 20000\n",
    )
    .await;
    let config: Value = server
        .get("/v2/models/scale/config")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        config["dynamic_batching"]["max_queue_delay_microseconds"],
        20000
    );
    // 40 requests of 1 to 3 rows, every value distinct.
    let mut bodies = Vec::new();
    let mut expected = Vec::new();
    let mut rows_sent = 0;
    for i in 0..40u32 {
        let rows = 1 + (i % 3) as usize;
        rows_sent += rows as u64;
        let x: Vec<f32> = (0..rows * 4).map(|j| (i * 100 + j as u32) as f32).collect();
        expected.push(x.clone());
        bodies.push(
            json!({"inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": x}]}),
        );
    }
    let answers = concurrently(&server, "/v2/models/scale/infer", bodies).await;
    for ((status, body), x) in answers.iter().zip(&expected) {
        assert_eq!(*status, 200, "{body}");
        let y: Vec<f32> = body["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(
            &y, x,
            "scale v1 is the identity: each request must get its own rows back"
        );
        assert_eq!(body["outputs"][0]["shape"][0], x.len() / 4);
    }
    let s: Value = server
        .get("/v2/models/scale/versions/1/stats")
        .await
        .json()
        .await
        .unwrap();
    let (inferences, executions) = stats(&s);
    // Warm-up runs once outside the counters; every row is counted once.
    assert_eq!(inferences, rows_sent);
    assert!(
        executions < 40,
        "40 concurrent requests in {executions} executions: nothing was batched"
    );
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("sluice_batch_size_sum{model=\"scale\""))
        .unwrap();
    assert!(line.ends_with(&format!(" {rows_sent}")), "{line}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_other_shapes_are_never_joined() {
    let server = batching_server(
        "identity_fp32",
        "id",
        "instances = 1\nmax_batch_size = 64\n[dynamic_batching]\nmax_queue_delay_us = 20000\n",
    )
    .await;
    let mut bodies = Vec::new();
    for i in 0..30 {
        let width = if i % 2 == 0 { 3 } else { 5 };
        let data: Vec<f32> = (0..width).map(|j| (i * 10 + j) as f32).collect();
        bodies.push(json!({"inputs": [{"name": "INPUT0", "shape": [1, width], "datatype": "FP32", "data": data}]}));
    }
    let answers = concurrently(&server, "/v2/models/id/infer", bodies.clone()).await;
    for ((status, body), sent) in answers.iter().zip(&bodies) {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["outputs"][0]["shape"], sent["inputs"][0]["shape"]);
        assert_eq!(body["outputs"][0]["data"], sent["inputs"][0]["data"]);
    }
    let s: Value = server
        .get("/v2/models/id/stats")
        .await
        .json()
        .await
        .unwrap();
    let (inferences, executions) = stats(&s);
    assert_eq!(inferences, 30);
    assert!(executions >= 2, "two widths need at least two executions");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waits_too_long_fails_alone() {
    // A long batching window and a short queue timeout: requests that wait
    // behind a running batch time out; the others answer with their rows.
    let server = batching_server(
        "identity_fp32",
        "id",
        "instances = 1\nmax_batch_size = 8\nqueue_timeout_ms = 2\n[dynamic_batching]\nmax_queue_delay_us = 1000\n",
    )
    .await;
    let mut seen_timeout = false;
    for round in 0..20 {
        let bodies: Vec<Value> = (0..32)
            .map(|i| {
                let data: Vec<f32> = (0..20000).map(|j| (round * 1000 + i * 7 + j) as f32).collect();
                json!({"inputs": [{"name": "INPUT0", "shape": [1, 20000], "datatype": "FP32", "data": data}]})
            })
            .collect();
        let answers = concurrently(&server, "/v2/models/id/infer", bodies.clone()).await;
        for ((status, body), sent) in answers.iter().zip(&bodies) {
            match status {
                200 => assert_eq!(body["outputs"][0]["data"], sent["inputs"][0]["data"]),
                504 => {
                    seen_timeout = true;
                    assert!(
                        body["error"].as_str().unwrap().contains("past its timeout"),
                        "{body}"
                    );
                }
                other => panic!("unexpected status {other}: {body}"),
            }
        }
        if seen_timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        seen_timeout,
        "no request ever timed out with a 2 ms queue timeout"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_a_fixed_first_dimension_never_batches() {
    let server = batching_server(
        "fixed_shape",
        "fixed",
        "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 20000\n",
    )
    .await;
    let config: Value = server
        .get("/v2/models/fixed/config")
        .await
        .json()
        .await
        .unwrap();
    assert!(config.get("dynamic_batching").is_none(), "{config}");
    let body = json!({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]});
    let answers = concurrently(&server, "/v2/models/fixed/infer", vec![body; 10]).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(
            body["outputs"][0]["data"],
            json!([3.0, 6.0, 9.0, 12.0, 15.0, 18.0])
        );
    }
    let s: Value = server
        .get("/v2/models/fixed/stats")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats(&s).1, 10, "each request ran alone");
    server.stop().await;
}
