//! Admission control: 429 when a version's queue is full, 504 when a request
//! waited past its timeout, 413 for a body over the limit (refused from
//! Content-Length before the body is read). Outcomes depend on timing, so
//! each test repeats a bounded number of rounds until it has seen the refusal,
//! and always asserts that nothing else (no 500, no hang) happened.

mod common;

use std::time::Duration;

use common::{TestServer, copy_version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A binary-extension request for `identity_fp32` with `n` floats.
fn big_request(n: usize) -> (Vec<u8>, usize) {
    let header = format!(
        r#"{{"inputs":[{{"name":"INPUT0","shape":[1,{n}],"datatype":"FP32","parameters":{{"binary_data_size":{}}}}}],"outputs":[{{"name":"OUTPUT0","parameters":{{"binary_data":true}}}}]}}"#,
        n * 4
    );
    let mut body = header.clone().into_bytes();
    body.extend(std::iter::repeat_n(0u8, n * 4));
    (body, header.len())
}

async fn burst(server: &TestServer, concurrency: usize, n: usize) -> Vec<u16> {
    let (body, header_len) = big_request(n);
    let calls = (0..concurrency).map(|_| {
        let request = server
            .client
            .post(format!("{}/v2/models/big/infer", server.url))
            .header("Inference-Header-Content-Length", header_len)
            .body(body.clone());
        async move { request.send().await.unwrap().status().as_u16() }
    });
    futures_join_all(calls).await
}

async fn futures_join_all<F: std::future::Future<Output = u16> + Send + 'static>(
    calls: impl Iterator<Item = F>,
) -> Vec<u16> {
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

async fn server_with(config: &str) -> TestServer {
    let root = tempfile::tempdir().unwrap();
    copy_version(root.path(), "identity_fp32", 1, "big");
    std::fs::write(root.path().join("big/model.toml"), config).unwrap();
    TestServer::start(root, Default::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429() {
    let server = server_with("instances = 1\nmax_queue_size = 1\n").await;
    let mut seen = false;
    for _ in 0..20 {
        let statuses = burst(&server, 24, 1 << 20).await;
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 429),
            "{statuses:?}"
        );
        assert!(statuses.contains(&200), "{statuses:?}");
        if statuses.contains(&429) {
            seen = true;
            break;
        }
    }
    assert!(seen, "never saw a 429 with a queue of one");
    // The server still answers normally afterwards.
    assert_eq!(burst(&server, 1, 16).await, vec![200]);
    let stats: serde_json::Value = server
        .get("/v2/models/big/stats")
        .await
        .json()
        .await
        .unwrap();
    let fail = stats["model_stats"][0]["inference_stats"]["fail"]["count"]
        .as_u64()
        .unwrap();
    assert!(fail > 0, "refusals are counted as failures: {stats}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waited_too_long_answers_504() {
    let server = server_with("instances = 1\nmax_queue_size = 64\nqueue_timeout_ms = 1\n").await;
    let mut seen = false;
    for _ in 0..20 {
        let statuses = burst(&server, 16, 1 << 20).await;
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 504),
            "{statuses:?}"
        );
        if statuses.contains(&504) {
            seen = true;
            break;
        }
    }
    assert!(seen, "never saw a 504 with a 1 ms queue timeout");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    let root = tempfile::tempdir().unwrap();
    copy_version(root.path(), "identity_fp32", 1, "big");
    let server = TestServer::start(
        root,
        sluice_server::HttpOptions {
            max_body_bytes: 1024 * 1024,
            ..Default::default()
        },
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v2/models/big/infer HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        10 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // No body is sent: the answer must come from the header alone.
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("413 must not wait for the body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("over the limit of 1048576 bytes"), "{text}");

    // A chunked body (no Content-Length) over the limit is refused too.
    let chunks = futures_stream(vec![vec![b' '; 512 * 1024]; 4]);
    let response = server
        .client
        .post(format!("{}/v2/models/big/infer", server.url))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    server.stop().await;
}

fn futures_stream(
    chunks: Vec<Vec<u8>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    struct Chunks(std::vec::IntoIter<Vec<u8>>);
    impl futures_core::Stream for Chunks {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next().map(Ok))
        }
    }
    Chunks(chunks.into_iter())
}
