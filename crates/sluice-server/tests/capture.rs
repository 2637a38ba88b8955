//! Request capture through the real server, to a real collector written
//! here (an HTTP server on 127.0.0.1:0 that keeps what it is sent and can
//! answer with an error, or be stopped and started again on its port):
//! sampling at a rate and by key, what a record holds, the CloudEvents
//! format, a collector that is down, refuses or fails and comes back, and
//! `[capture]` changes and mistakes in `model.toml`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use common::{TestServer, copy_version, scale_request};
use serde_json::{Value, json};
use sluice_server::{CaptureOptions, HttpOptions};

// ---------------------------------------------------------------------------
// The collector
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Received {
    /// Every event of every accepted batch, in arrival order.
    events: Mutex<Vec<Value>>,
    /// The Content-Type of every POST.
    content_types: Mutex<Vec<String>>,
    /// POSTs received, answered with success or not.
    posts: AtomicUsize,
    /// The status to answer with; 0 means 200.
    answer: AtomicU16,
}

/// A CloudEvents batch receiver on 127.0.0.1.
struct Collector {
    addr: SocketAddr,
    received: Arc<Received>,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn receive(State(r): State<Arc<Received>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.posts.fetch_add(1, Ordering::SeqCst);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    r.content_types.lock().unwrap().push(content_type);
    match r.answer.load(Ordering::SeqCst) {
        0 | 200 => {}
        status => return StatusCode::from_u16(status).unwrap(),
    }
    let Ok(Value::Array(events)) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    r.events.lock().unwrap().extend(events);
    StatusCode::OK
}

impl Collector {
    async fn start() -> Collector {
        let mut c = Collector {
            addr: "127.0.0.1:0".parse().unwrap(),
            received: Arc::default(),
            task: None,
        };
        c.listen().await;
        c
    }

    /// Listens on `self.addr` (port 0 the first time, then the same port).
    async fn listen(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        let listener = socket.listen(128).unwrap();
        self.addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/v1/events", axum::routing::post(receive))
            .with_state(self.received.clone());
        self.task = Some(tokio::spawn(async move {
            // The connections die with this task (the JoinSet aborts them
            // when dropped): a stopped collector answers nothing.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    /// Listens on the same port but never answers: connections are
    /// accepted and held, requests wait.
    async fn hang(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        let listener = socket.listen(128).unwrap();
        self.task = Some(tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                if let Ok((stream, _)) = listener.accept().await {
                    held.push(stream);
                }
            }
        }));
    }

    /// Stops listening and closes every connection: the port refuses.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/events", self.addr)
    }

    fn events(&self) -> Vec<Value> {
        self.received.events.lock().unwrap().clone()
    }

    /// The accepted events, once `check` holds for them (bounded wait).
    async fn wait_for(&self, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let events = self.events();
            if check(&events) {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; the collector has {} events",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------

/// Capture settings with quick batches and retries, so tests do not wait
/// out the production schedule.
fn capture_to(url: &str) -> HttpOptions {
    HttpOptions {
        capture: CaptureOptions {
            url: Some(url.to_string()),
            source: Some("test-gw".into()),
            max_batch_wait: Duration::from_millis(20),
            retry_initial: Duration::from_millis(10),
            retry_max: Duration::from_millis(40),
            max_attempts: 3,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A server over `scale` with the given versions and `model.toml`.
async fn gateway(versions: &[u64], model_toml: &str, options: HttpOptions) -> TestServer {
    let root = tempfile::tempdir().unwrap();
    for &v in versions {
        copy_version(root.path(), "scale", v, "scale");
    }
    std::fs::write(root.path().join("scale/model.toml"), model_toml).unwrap();
    TestServer::start(root, options).await
}

async fn infer(server: &TestServer, path: &str, headers: &[(&str, &str)], x: [f32; 4]) -> Value {
    let mut request = server
        .client
        .post(format!("{}{path}", server.url))
        .json(&scale_request(x));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The value of one series in the text exposition (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

async fn scrape(server: &TestServer) -> String {
    server.get("/metrics").await.text().await.unwrap()
}

fn records(text: &str, outcome: &str) -> u64 {
    metric(
        text,
        &format!("sluice_capture_records_total{{model=\"scale\",outcome=\"{outcome}\"}}"),
    ) as u64
}

/// The exposition once the capture queue is empty: every record captured
/// so far has been counted as sent, dropped or failed.
async fn settled(server: &TestServer) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(server).await;
        if metric(&text, "sluice_capture_queue_depth") == 0.0 {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the capture queue did not drain:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn request_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["data"]["request_id"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sample_rate_captures_that_share_of_requests() {
    let collector = Collector::start().await;
    let server = gateway(
        &[1],
        "[capture]\nsample_rate = 0.3\n",
        capture_to(&collector.url()),
    )
    .await;
    let n = 1000;
    let mut workers = tokio::task::JoinSet::new();
    let server = Arc::new(server);
    for w in 0..8 {
        let server = server.clone();
        workers.spawn(async move {
            for i in (w..n).step_by(8) {
                let id = format!("rate-{i}");
                infer(
                    &server,
                    "/v2/models/scale/infer",
                    &[("x-request-id", id.as_str())],
                    [1.0; 4],
                )
                .await;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    let text = settled(&server).await;
    let (sent, dropped, failed) = (
        records(&text, "sent"),
        records(&text, "dropped"),
        records(&text, "failed"),
    );
    assert_eq!((dropped, failed), (0, 0), "{text}");
    // Binomial(1000, 0.3): mean 300, standard deviation 14.5; five of them.
    let sd = (n as f64 * 0.3 * 0.7).sqrt();
    assert!(
        (sent as f64 - 300.0).abs() < 5.0 * sd,
        "{sent} of {n} requests captured at sample_rate 0.3"
    );
    let events = collector
        .wait_for("every sent record", |e| e.len() as u64 == sent)
        .await;
    let ids: BTreeSet<String> = request_ids(&events).into_iter().collect();
    assert_eq!(ids.len() as u64, sent, "a request was captured twice");
    assert!(ids.iter().all(|id| id.starts_with("rate-")));
    let event_ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(event_ids.len(), events.len(), "event ids are not unique");
    assert!(
        metric(
            &text,
            "sluice_capture_export_duration_seconds_count{outcome=\"success\"}"
        ) >= 1.0
    );
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_header_captures_the_same_keys_every_time() {
    let collector = Collector::start().await;
    let server = gateway(
        &[1],
        "[capture]\nsample_rate = 0.5\nkey_header = \"X-User-Id\"\n",
        capture_to(&collector.url()),
    )
    .await;
    let keys: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    for round in 0..3 {
        for key in &keys {
            let id = format!("{key}/{round}");
            infer(
                &server,
                "/v2/models/scale/infer",
                &[("x-user-id", key.as_str()), ("x-request-id", id.as_str())],
                [1.0; 4],
            )
            .await;
        }
    }
    // Without the header: a random draw.
    for i in 0..40 {
        let id = format!("anonymous/{i}");
        infer(
            &server,
            "/v2/models/scale/infer",
            &[("x-request-id", id.as_str())],
            [1.0; 4],
        )
        .await;
    }
    let text = settled(&server).await;
    let sent = records(&text, "sent");
    let events = collector
        .wait_for("every record", |e| e.len() as u64 == sent)
        .await;
    let mut rounds: BTreeMap<String, usize> = BTreeMap::new();
    let mut anonymous = 0;
    for id in request_ids(&events) {
        let (key, _) = id.split_once('/').unwrap();
        if key == "anonymous" {
            anonymous += 1;
        } else {
            *rounds.entry(key.to_string()).or_default() += 1;
        }
    }
    for key in &keys {
        let captured = rounds.get(key).copied().unwrap_or(0);
        let expected = sluice_server::capture::key_point(key) < 0.5;
        assert_eq!(
            captured,
            if expected { 3 } else { 0 },
            "{key}: captured in {captured} of 3 rounds"
        );
    }
    // Some keys in, some out (each 2^-40 by chance), and some anonymous.
    assert!(
        !rounds.is_empty() && rounds.len() < keys.len(),
        "{rounds:?}"
    );
    assert!(anonymous > 0 && anonymous < 40, "{anonymous} of 40");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_cloudevents_with_the_tensors_sent_and_answered() {
    let collector = Collector::start().await;
    let server = gateway(
        &[1, 3],
        "[capture]\nsample_rate = 1.0\n",
        capture_to(&collector.url()),
    )
    .await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{trace_id}-b7ad6b7169203331-01");
    let x = [1.0, 2.5, -3.0, 4.0];
    // Version 3 (the highest: stable) answers y = 3x.
    let answered = infer(
        &server,
        "/v2/models/scale/infer",
        &[
            ("x-request-id", "rec-1"),
            ("traceparent", traceparent.as_str()),
        ],
        x,
    )
    .await;
    // An explicit version that is not the stable one: no variant.
    let pinned = infer(
        &server,
        "/v2/models/scale/versions/1/infer",
        &[("x-request-id", "rec-2")],
        x,
    )
    .await;
    // The same request id again: another event id.
    infer(
        &server,
        "/v2/models/scale/infer",
        &[("x-request-id", "rec-1")],
        x,
    )
    .await;
    let events = collector.wait_for("three records", |e| e.len() == 3).await;
    let content_types = collector.received.content_types.lock().unwrap().clone();
    assert!(
        content_types
            .iter()
            .all(|c| c == "application/cloudevents-batch+json"),
        "{content_types:?}"
    );
    let by_id = |id: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["data"]["request_id"] == id)
            .collect()
    };
    let first = by_id("rec-1")[0];
    let time = first["time"].as_str().unwrap();
    assert!(
        time.len() == 24
            && time.ends_with('Z')
            && time.as_bytes()[10] == b'T'
            && time[..4].parse::<u32>().unwrap() >= 2024,
        "not RFC 3339 UTC: {time}"
    );
    let sent_inputs = scale_request(x)["inputs"].clone();
    assert_eq!(
        sent_inputs,
        json!([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.5, -3.0, 4.0]}])
    );
    let latency = first["data"]["latency_us"].as_u64().unwrap();
    assert!(latency > 0);
    let expected = json!({
        "specversion": "1.0",
        "type": "dev.sluice.inference",
        "source": "sluice://test-gw/scale",
        "id": first["id"].clone(),
        "time": time,
        "subject": "scale/3",
        "datacontenttype": "application/json",
        "data": {
            "model": "scale",
            "version": 3,
            "variant": "stable",
            "request_id": "rec-1",
            "trace_id": trace_id,
            "latency_us": latency,
            "inputs": sent_inputs,
            "outputs": answered["outputs"].clone(),
        }
    });
    assert_eq!(*first, expected);
    assert!(first["id"].as_str().unwrap().starts_with("rec-1-"));
    assert_eq!(
        answered["outputs"][0]["data"],
        json!([3.0, 7.5, -9.0, 12.0]),
        "{answered}"
    );

    let second = by_id("rec-2")[0];
    assert_eq!(second["subject"], "scale/1");
    assert_eq!(second["data"]["version"], 1);
    assert_eq!(second["data"]["variant"], Value::Null);
    assert_eq!(second["data"]["outputs"], pinned["outputs"]);
    // Every request has a trace id (made up when the caller sent none),
    // the one of its log line and `traceparent`.
    let made_up = second["data"]["trace_id"].as_str().unwrap();
    assert!(made_up.len() == 32 && made_up != trace_id, "{made_up}");

    let again = by_id("rec-1");
    assert_eq!(again.len(), 2);
    assert_ne!(again[0]["id"], again[1]["id"]);
    assert_ne!(again[1]["data"]["trace_id"], trace_id);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_captured_follows_model_toml_without_reloading_the_model() {
    let collector = Collector::start().await;
    let server = gateway(
        &[1],
        "[capture]\nsample_rate = 1.0\nwhat = \"inputs\"\n",
        capture_to(&collector.url()),
    )
    .await;
    let loads = |text: &str| {
        metric(
            text,
            "sluice_model_loads_total{model=\"scale\",outcome=\"success\"}",
        )
    };
    let before = loads(&scrape(&server).await);
    assert_eq!(before, 1.0);
    infer(
        &server,
        "/v2/models/scale/infer",
        &[("x-request-id", "inputs-only")],
        [1.0; 4],
    )
    .await;
    let events = collector
        .wait_for("the first record", |e| e.len() == 1)
        .await;
    assert!(events[0]["data"].get("inputs").is_some());
    assert!(events[0]["data"].get("outputs").is_none(), "{}", events[0]);

    // Outputs only: takes effect on the next snapshot, the version stays.
    std::fs::write(
        server.root.path().join("scale/model.toml"),
        "[capture]\nsample_rate = 1.0\nwhat = \"outputs\"\n",
    )
    .unwrap();
    server.manager.reconcile().await.unwrap();
    infer(
        &server,
        "/v2/models/scale/infer",
        &[("x-request-id", "outputs-only")],
        [1.0; 4],
    )
    .await;
    let events = collector
        .wait_for("the second record", |e| e.len() == 2)
        .await;
    assert_eq!(events[1]["data"]["request_id"], "outputs-only");
    assert!(events[1]["data"].get("inputs").is_none());
    assert!(events[1]["data"].get("outputs").is_some());

    // Off: the next request is not captured (a record would be queued
    // before the response is sent).
    std::fs::write(
        server.root.path().join("scale/model.toml"),
        "[capture]\nsample_rate = 0.0\n",
    )
    .unwrap();
    server.manager.reconcile().await.unwrap();
    infer(&server, "/v2/models/scale/infer", &[], [1.0; 4]).await;
    let text = settled(&server).await;
    assert_eq!(records(&text, "sent"), 2);
    assert_eq!(
        records(&text, "sent") + records(&text, "dropped") + records(&text, "failed"),
        2
    );
    // No reload through all of it.
    assert_eq!(loads(&text), before, "[capture] changes reloaded the model");
    assert_eq!(collector.events().len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_records_not_requests_and_export_resumes() {
    let mut collector = Collector::start().await;
    collector.stop().await;
    let mut options = capture_to(&collector.url());
    // A POST to a collector that never answers waits out the test.
    options.capture.request_timeout = Duration::from_secs(300);
    let server = gateway(
        &[1],
        "[capture]\nsample_rate = 1.0\nqueue_size = 5\n",
        options,
    )
    .await;
    let counts = |text: &str| {
        (
            records(text, "sent"),
            records(text, "dropped"),
            records(text, "failed"),
        )
    };
    async fn traffic(server: &TestServer, prefix: &str, n: usize) {
        for i in 0..n {
            let id = format!("{prefix}-{i}");
            infer(
                server,
                "/v2/models/scale/infer",
                &[("x-request-id", id.as_str())],
                [1.0; 4],
            )
            .await;
            let depth = metric(&scrape(server).await, "sluice_capture_queue_depth");
            assert!(depth <= 5.0, "queue depth {depth} over queue_size 5");
        }
    }

    // Nothing listens: every request is answered; each record fails (its
    // batch ran out of attempts) or is dropped (the queue was full).
    traffic(&server, "down", 100).await;
    let text = settled(&server).await;
    let (sent, dropped, failed) = counts(&text);
    assert_eq!(sent, 0, "{text}");
    assert!(failed > 0, "{text}");
    assert_eq!(sent + dropped + failed, 100, "{text}");
    assert!(
        metric(
            &text,
            "sluice_capture_export_duration_seconds_count{outcome=\"failure\"}"
        ) >= 3.0,
        "{text}"
    );

    // A collector that accepts connections and never answers: the first
    // batch waits, the queue holds 5 records, and the 95 others are
    // dropped; requests do not notice.
    collector.hang().await;
    traffic(&server, "hung", 100).await;
    let text = scrape(&server).await;
    assert_eq!(metric(&text, "sluice_capture_queue_depth"), 5.0, "{text}");
    assert_eq!(counts(&text), (0, dropped + 95, failed), "{text}");
    // It goes away: the waiting batch fails, and the queued records after it.
    collector.stop().await;
    let text = settled(&server).await;
    assert_eq!(counts(&text), (0, dropped + 95, failed + 5), "{text}");
    assert!(
        text.contains(r#"sluice_requests_total{model="scale",version="1",protocol="http",outcome="success"} 200"#),
        "{text}"
    );

    // The collector is back on its port: the gateway, untouched, sends again.
    collector.listen().await;
    for i in 0..3 {
        let id = format!("back-{i}");
        infer(
            &server,
            "/v2/models/scale/infer",
            &[("x-request-id", id.as_str())],
            [1.0; 4],
        )
        .await;
        collector
            .wait_for(&id, |events| request_ids(events).contains(&id))
            .await;
    }
    let text = settled(&server).await;
    assert_eq!(records(&text, "sent"), 3, "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_batches_are_retried_and_refused_ones_are_not() {
    let collector = Collector::start().await;
    let server = gateway(
        &[1],
        "[capture]\nsample_rate = 1.0\n",
        capture_to(&collector.url()),
    )
    .await;
    let posts = || collector.received.posts.load(Ordering::SeqCst);

    // 503: retried, three attempts in all (max_attempts), then failed.
    collector.received.answer.store(503, Ordering::SeqCst);
    infer(&server, "/v2/models/scale/infer", &[], [1.0; 4]).await;
    let text = settled(&server).await;
    assert_eq!(records(&text, "failed"), 1, "{text}");
    assert_eq!(posts(), 3);

    // 400: the collector refuses the batch; no retry.
    collector.received.answer.store(400, Ordering::SeqCst);
    infer(&server, "/v2/models/scale/infer", &[], [1.0; 4]).await;
    let text = settled(&server).await;
    assert_eq!(records(&text, "failed"), 2, "{text}");
    assert_eq!(posts(), 4);

    // Healthy again.
    collector.received.answer.store(200, Ordering::SeqCst);
    infer(
        &server,
        "/v2/models/scale/infer",
        &[("x-request-id", "healthy")],
        [1.0; 4],
    )
    .await;
    let text = settled(&server).await;
    assert_eq!(records(&text, "sent"), 1, "{text}");
    assert_eq!(request_ids(&collector.events()), ["healthy"]);
    assert!(
        metric(
            &text,
            "sluice_capture_export_duration_seconds_count{outcome=\"failure\"}"
        ) == 4.0,
        "{text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_capture_url_nothing_is_captured() {
    let server = gateway(
        &[1],
        "[capture]\nsample_rate = 1.0\n",
        HttpOptions::default(),
    )
    .await;
    infer(&server, "/v2/models/scale/infer", &[], [1.0; 4]).await;
    let text = scrape(&server).await;
    for outcome in ["sent", "dropped", "failed"] {
        // The series exist, at zero.
        assert!(
            text.contains(&format!(
                "sluice_capture_records_total{{model=\"scale\",outcome=\"{outcome}\"}} 0\n"
            )),
            "{text}"
        );
    }
    assert_eq!(metric(&text, "sluice_capture_queue_depth"), 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_capture_table_is_refused_and_the_model_keeps_serving() {
    let collector = Collector::start().await;
    let server = gateway(
        &[1],
        "[capture]\nsample_rate = 1.0\n",
        capture_to(&collector.url()),
    )
    .await;
    std::fs::write(
        server.root.path().join("scale/model.toml"),
        "[capture]\nsample_rate = 2.0\n",
    )
    .unwrap();
    server.manager.reconcile().await.unwrap();
    let index = server
        .wait_index("the model.toml error", |index| {
            index.iter().any(|e| {
                e["name"] == "scale"
                    && e["version"] == ""
                    && e["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("capture.sample_rate = 2 is out of range"))
            })
        })
        .await;
    let reason = index
        .iter()
        .find(|e| e["version"] == "")
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .unwrap();
    assert!(reason.contains("must be between 0 and 1"), "{reason}");
    assert!(reason.contains("model.toml"), "{reason}");
    // The last good settings stay in effect: still served, still captured.
    infer(
        &server,
        "/v2/models/scale/infer",
        &[("x-request-id", "kept")],
        [1.0; 4],
    )
    .await;
    collector
        .wait_for("the record", |e| request_ids(e) == ["kept"])
        .await;

    // Unknown keys and values are refused the same way.
    for (text, wanted) in [
        ("[capture]\nrate = 0.5\n", "unknown field `rate`"),
        ("[capture]\nwhat = \"all\"\n", "unknown variant `all`"),
        (
            "[capture]\nqueue_size = 0\n",
            "capture.queue_size = 0 is out of range",
        ),
    ] {
        let err = sluice_registry::ModelConfig::parse(text, std::path::Path::new("m/model.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(wanted), "{text}: {err}");
    }
    server.stop().await;
}
