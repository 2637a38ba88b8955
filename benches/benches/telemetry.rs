//! What telemetry costs on the HTTP inference path, under full load.
//!
//! Two real servers run in this process over one temporary copy of
//! `models/iris`, each with its own tokio runtime and its own
//! `ModelManager` (so each has its own ONNX Runtime sessions):
//!
//! - OFF: no metrics (`HttpOptions.metrics` and `ManagerOptions.metrics` are
//!   `None`), and no tracing dispatcher on any of its threads: the runtime's
//!   workers, its blocking pool (where versions load), and so the executor
//!   workers, which take the dispatcher current when the version loads.
//! - ON: metrics on, and every thread of its runtime (and the thread that
//!   starts the manager and waits for the first load) has as default the
//!   dispatcher of `sluice_telemetry::trace::build`: JSON logs at
//!   `info,ort=warn` into `io::sink` (the request log line is formatted, then
//!   thrown away), and trace ids for every request; no OTLP endpoint, so, as
//!   in `sluice serve` without one, no request is traced (spans are made
//!   only for traced requests, which exporting and the sample ratio decide).
//!
//! A third runtime (one thread, no dispatcher) is the client: reqwest over
//! keep-alive HTTP/1.1, [`CONCURRENCY`] requests in flight at all times.
//!
//! First criterion measures both (group `infer_iris_http_c16`), then an
//! interleaved comparison runs rounds of OFF and ON back to back, in ABBA
//! order, and prints the median on/off ratio of per-request time: on a noisy
//! machine, neighbouring runs share the noise, so their ratio is steadier
//! than two numbers measured a minute apart. Nothing here asserts a timing.
//!
//! Every response must be a 200, or the bench panics: a bench that measures
//! errors measures nothing.
//!
//! Environment (all optional):
//! - `SLUICE_BENCH_ROUNDS` (default 8): rounds of the interleaved comparison;
//!   0 skips it.
//! - `SLUICE_BENCH_ROUND_REQUESTS` (default 3000): requests per server per
//!   round.
//! - `SLUICE_BENCH_MEASUREMENT_S` (default 5): criterion's measurement time
//!   per bench, in seconds.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use sluice_benches::{Server, benchmark_mode, env_u64, median};
use sluice_telemetry::Metrics;
use sluice_telemetry::trace::{LogFormat, TelemetryGuard, TraceConfig};

/// Requests in flight at once, each on its own keep-alive connection.
const CONCURRENCY: usize = 16;

/// One iris row: setosa, the first row of Fisher's data.
const REQUEST: &str =
    r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#;

const INFER_PATH: &str = "/v2/models/iris/infer";

/// Copies `models/iris` (both versions, with their manifests) into `root`.
fn copy_iris(root: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/iris");
    for version in std::fs::read_dir(&src).expect("models/iris") {
        let version = version.unwrap();
        if !version.file_type().unwrap().is_dir() {
            continue;
        }
        let dst = root.join("iris").join(version.file_name());
        std::fs::create_dir_all(&dst).unwrap();
        for file in std::fs::read_dir(version.path()).unwrap() {
            let file = file.unwrap();
            std::fs::copy(file.path(), dst.join(file.file_name())).unwrap();
        }
    }
}

/// The load generator: a one-thread runtime (no dispatcher) and a
/// keep-alive HTTP/1.1 client.
struct Load {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    body: Bytes,
}

impl Load {
    fn new() -> Load {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("bench-client")
            .build()
            .expect("client runtime");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(CONCURRENCY * 2)
            .tcp_nodelay(true)
            .build()
            .expect("HTTP client");
        Load {
            runtime,
            client,
            body: Bytes::from_static(REQUEST.as_bytes()),
        }
    }

    /// Sends `n` inference requests to `server`, `CONCURRENCY` at a time,
    /// and returns the wall time they took. Panics on any non-200.
    fn run(&self, server: &Server, n: u64) -> Duration {
        let next = Arc::new(AtomicU64::new(0));
        let url: Arc<str> = server.url(INFER_PATH).into();
        let label = server.label;
        self.runtime.block_on(async {
            let start = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..(CONCURRENCY as u64).min(n) {
                let client = self.client.clone();
                let body = self.body.clone();
                let url = url.clone();
                let next = next.clone();
                tasks.spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let response = client
                            .post(&*url)
                            .header(reqwest::header::CONTENT_TYPE, "application/json")
                            .body(body.clone())
                            .send()
                            .await
                            .unwrap_or_else(|e| panic!("telemetry {label}: request failed: {e}"));
                        let status = response.status();
                        // Read the whole body: the response is complete and
                        // the connection goes back to the pool.
                        let answer = response.bytes().await.unwrap_or_else(|e| {
                            panic!("telemetry {label}: reading the response failed: {e}")
                        });
                        if status != reqwest::StatusCode::OK {
                            panic!(
                                "telemetry {label}: status {status}: {}",
                                String::from_utf8_lossy(&answer)
                            );
                        }
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                if let Err(e) = done {
                    match e.try_into_panic() {
                        Ok(panic) => std::panic::resume_unwind(panic),
                        Err(e) => panic!("telemetry {label}: load task failed: {e}"),
                    }
                }
            }
            start.elapsed()
        })
    }

    /// Checks that `server` answers the request as expected, and that its
    /// telemetry is on or off as claimed (trace context in the response,
    /// `/metrics` served or 404).
    fn check(&self, server: &Server, telemetry: bool) {
        self.runtime.block_on(async {
            let response = self
                .client
                .post(server.url(INFER_PATH))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(self.body.clone())
                .send()
                .await
                .expect("first request");
            assert_eq!(response.status(), 200, "{}: first request", server.label);
            let traceparent = response
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_string());
            let answer: serde_json::Value = response.json().await.expect("JSON response");
            assert_eq!(answer["model_name"], "iris", "{answer}");
            let outputs = answer["outputs"].as_array().expect("outputs");
            assert_eq!(outputs.len(), 2, "{answer}");
            // Every request gets a trace id (returned in `traceparent`), traced
            // or not; without an OTLP endpoint none is traced (flags 00).
            if telemetry {
                let tp = traceparent.unwrap_or_else(|| panic!("{}: no traceparent", server.label));
                assert!(
                    tp.starts_with("00-") && tp.len() == 55,
                    "{}: traceparent {tp}",
                    server.label
                );
            }
            let metrics = self
                .client
                .get(format!("{}/metrics", server.base))
                .send()
                .await
                .expect("/metrics");
            let status = metrics.status();
            let text = metrics.text().await.unwrap();
            if telemetry {
                assert_eq!(status, 200, "{}: /metrics", server.label);
                assert!(
                    text.contains("sluice_requests_total{model=\"iris\""),
                    "{}: no request counted:\n{text}",
                    server.label
                );
            } else {
                assert_eq!(status, 404, "{}: /metrics should be off", server.label);
            }
        });
    }
}

/// Rounds of OFF and ON back to back, ABBA order (OFF ON, ON OFF, OFF ON,
/// ...), `requests` each; prints the median per-round on/off ratio.
fn interleaved(load: &Load, off: &Server, on: &Server, rounds: u64, requests: u64, smoke: bool) {
    // Warm both (connections open, caches hot) before counting.
    load.run(off, requests.min(500));
    load.run(on, requests.min(500));
    let per_request = |elapsed: Duration| elapsed.as_secs_f64() / requests as f64;
    let (mut off_s, mut on_s, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (t_off, t_on) = if round % 2 == 0 {
            let t_off = load.run(off, requests);
            (t_off, load.run(on, requests))
        } else {
            let t_on = load.run(on, requests);
            (load.run(off, requests), t_on)
        };
        let (t_off, t_on) = (per_request(t_off), per_request(t_on));
        println!(
            "  round {}: {:<3} off {:7.2} µs, on {:7.2} µs per request, on/off {:.3}",
            round + 1,
            if round % 2 == 0 { "AB" } else { "BA" },
            t_off * 1e6,
            t_on * 1e6,
            t_on / t_off
        );
        off_s.push(t_off);
        on_s.push(t_on);
        ratios.push(t_on / t_off);
    }
    let ratio = median(&mut ratios);
    let (off_m, on_m) = (median(&mut off_s), median(&mut on_s));
    let note = if smoke {
        " [test mode: a smoke run, not a measurement]"
    } else {
        ""
    };
    println!(
        "telemetry overhead: on/off per-request time ratio = {ratio:.3} (median of {rounds} rounds; \
         on {:.1} µs, off {:.1} µs per request, concurrency {CONCURRENCY}){note}",
        on_m * 1e6,
        off_m * 1e6,
    );
    println!(
        "throughput: off {:.0} requests/s, on {:.0} requests/s (medians; {requests} requests per server per round){note}",
        1.0 / off_m,
        1.0 / on_m,
    );
}

fn main() {
    let root = tempfile::tempdir().expect("temp dir");
    copy_iris(root.path());

    // tracing caches each callsite's interest when it is first hit. With
    // exactly one dispatcher registered in the process, that interest is
    // taken from the dispatcher of the thread that hits it first: a callsite
    // first hit on an OFF thread would then be off on ON threads too (the
    // request log line and the server span were, before this). A second,
    // no-op dispatcher makes tracing combine all of them ("sometimes") and
    // ask each thread's own dispatcher at every hit.
    let _second_dispatcher = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());

    let off = Server::start("off", root.path(), None, None);

    let metrics = Arc::new(Metrics::new());
    let (dispatch, guard): (tracing::Dispatch, TelemetryGuard) = sluice_telemetry::trace::build(
        LogFormat::Json,
        "info,ort=warn",
        &TraceConfig::default(),
        metrics.clone(),
        std::io::sink,
    )
    .expect("telemetry");
    let on = Server::start("on", root.path(), Some(metrics), Some(dispatch));

    let load = Load::new();
    load.check(&off, false);
    load.check(&on, true);

    let measurement = Duration::from_secs(env_u64("SLUICE_BENCH_MEASUREMENT_S", 5).max(1));
    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(measurement)
        .configure_from_args();
    {
        let mut group = criterion.benchmark_group(format!("infer_iris_http_c{CONCURRENCY}"));
        group.throughput(criterion::Throughput::Elements(1));
        for (name, server) in [("telemetry_off", &off), ("telemetry_on", &on)] {
            group.bench_function(name, |b| b.iter_custom(|iters| load.run(server, iters)));
        }
        group.finish();
    }
    criterion.final_summary();

    let smoke = !benchmark_mode();
    let (rounds, requests) = if smoke {
        (2, 50)
    } else {
        (
            env_u64("SLUICE_BENCH_ROUNDS", 8),
            env_u64("SLUICE_BENCH_ROUND_REQUESTS", 3000).max(1),
        )
    };
    if rounds > 0 {
        println!(
            "\ninterleaved comparison: {rounds} rounds x {requests} requests per server, \
             concurrency {CONCURRENCY}, ABBA order"
        );
        interleaved(&load, &off, &on, rounds, requests, smoke);
    }

    drop(load);
    on.stop();
    off.stop();
    guard.shutdown();
}
