//! The full inference path on the tiny MLP (`models/mlp`: input FP32
//! `[-1, 16]`, output FP32 `[-1, 4]`), at batch 1 and concurrency 1, from
//! ONNX Runtime alone up to HTTP:
//!
//! - `ort_session_run`: the floor. `ort::session::Session::run` called
//!   directly on a session built as the executor builds its own (CPU, graph
//!   optimisation `All`, 1 intra-op and 1 inter-op thread), from this thread:
//!   a tensor view over the input (no copy), the run, and reading the output
//!   slice in place.
//! - `executor_infer`: `ModelExecutor::infer(inputs, vec![])` awaited on a
//!   current-thread tokio runtime; the version is loaded with
//!   `ModelExecutor::load(&rt, "mlp", 1, path, SessionOptions::default(),
//!   None)`. On top of the floor: validation against the signature, the
//!   bounded queue to the worker thread and the oneshot back (two thread
//!   hand-offs), copying the input into an ONNX Runtime tensor and the
//!   output out of one, and the bookkeeping (stats). Calls follow each other
//!   within 50 µs, so the version is never idle and none runs inline (the
//!   inline path is for a request that finds its version idle; its effect is
//!   measured over HTTP in `benches/RESULTS.md`).
//! - `http_json_c1` and `http_binary_c1`: a real server (`sluice_server::run`
//!   on 127.0.0.1:0, its own multi-thread tokio runtime and `ModelManager`
//!   over a temporary copy of `models/mlp`, metrics and tracing off) and a
//!   keep-alive reqwest client on a current-thread runtime, one request at a
//!   time. JSON: JSON request, JSON response. Binary: binary input and
//!   binary output (Triton's extension, `Inference-Header-Content-Length`).
//!   On top of the executor: TCP over loopback, HTTP/1.1 on both sides,
//!   routing, decoding and encoding, and the client's own work.
//!
//! Criterion measures each (group `infer_mlp_b1`; one iteration is one
//! inference, so the time is the latency of one call at concurrency 1).
//! Then an interleaved comparison runs rounds of all four back to back (the
//! order rotates every round) and prints, per path, the median over rounds
//! of its time divided by the floor's time in the same round: on a noisy
//! machine neighbouring runs share the noise. Nothing asserts a timing.
//!
//! Checked before measuring: the floor's output is `[1, 4]`; the executor's
//! output is `output`, `[1, 4]` FP32 and bit-identical to the floor's; both
//! HTTP paths answer 200 with that same tensor. Every measured call checks
//! its status or result too, and panics on a failure.
//!
//! Environment (all optional):
//! - `SLUICE_BENCH_MEASUREMENT_S` (default 3): criterion's measurement time
//!   per bench, in seconds.
//! - `SLUICE_BENCH_ROUNDS` (default 8): rounds of the interleaved
//!   comparison; 0 skips it.
//! - `SLUICE_BENCH_ROUND_CALLS` (default 1000): calls per path per round.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use serde_json::Map;
use sluice_benches::{Server, benchmark_mode, env_u64, median};
use sluice_oip::{InferRequest, NamedTensor, RequestedOutput};
use sluice_runtime::{ModelExecutor, OrtRuntime, SessionOptions};
use sluice_tensor::{DataType, Tensor};

const INFER_PATH: &str = "/v2/models/mlp/infer";

/// One row of the MLP's 16 features.
const INPUT: [f32; 16] = [
    0.12, -0.5, 0.33, 1.7, -0.25, 0.9, 0.05, -1.1, 0.6, 0.42, -0.8, 0.15, 1.2, -0.33, 0.71, -0.04,
];

fn mlp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/mlp")
}

fn input_tensor() -> Tensor {
    let raw: Vec<u8> = INPUT.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::from_raw(DataType::Fp32, vec![1, 16], Bytes::from(raw)).expect("FP32 [1, 16]")
}

fn fp32_values(tensor: &Tensor) -> Vec<f32> {
    tensor
        .to_binary()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The floor: a session of its own, built with the executor's settings.
struct Floor {
    session: Session,
}

impl Floor {
    fn new(rt: &OrtRuntime, path: &Path) -> Floor {
        let fail = |e: &dyn std::fmt::Display| -> ! {
            panic!("ONNX Runtime session for {}: {e}", path.display())
        };
        let mut builder = Session::builder(rt.environment())
            .unwrap_or_else(|e| fail(&e))
            .with_optimization_level(GraphOptimizationLevel::All)
            .unwrap_or_else(|e| fail(&e))
            .with_intra_threads(1)
            .unwrap_or_else(|e| fail(&e))
            .with_inter_threads(1)
            .unwrap_or_else(|e| fail(&e));
        let session = builder.commit_from_file(path).unwrap_or_else(|e| fail(&e));
        Floor { session }
    }

    /// One run; returns the first output value (read in place).
    fn run(&mut self) -> f32 {
        let input = TensorRef::from_array_view(([1usize, 16], &INPUT[..])).expect("input view");
        let outputs = self.session.run(ort::inputs![input]).expect("Session::run");
        let (_, data) = outputs[0].try_extract_tensor::<f32>().expect("FP32 output");
        data[0]
    }

    fn output(&mut self) -> (Vec<i64>, Vec<f32>) {
        let input = TensorRef::from_array_view(([1usize, 16], &INPUT[..])).expect("input view");
        let outputs = self.session.run(ort::inputs![input]).expect("Session::run");
        let (shape, data) = outputs["output"]
            .try_extract_tensor::<f32>()
            .expect("FP32 output");
        (shape.to_vec(), data.to_vec())
    }
}

/// The executor, and the current-thread runtime its callers run on.
struct Executor {
    runtime: tokio::runtime::Runtime,
    executor: ModelExecutor,
    input: Tensor,
}

impl Executor {
    fn new(rt: &OrtRuntime, path: &Path) -> Executor {
        let executor = ModelExecutor::load(rt, "mlp", 1, path, SessionOptions::default(), None)
            .expect("ModelExecutor::load(models/mlp/1)");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Executor {
            runtime,
            executor,
            input: input_tensor(),
        }
    }

    /// `n` inferences, one after the other; their wall time.
    fn run(&self, n: u64) -> Duration {
        self.runtime.block_on(async {
            let start = Instant::now();
            for _ in 0..n {
                let inputs = vec![("input".to_string(), self.input.clone())];
                let out = self
                    .executor
                    .infer(inputs, Vec::new())
                    .await
                    .expect("ModelExecutor::infer");
                black_box(out);
            }
            start.elapsed()
        })
    }

    fn output(&self) -> Vec<(String, Tensor)> {
        let inputs = vec![("input".to_string(), self.input.clone())];
        self.runtime
            .block_on(self.executor.infer(inputs, Vec::new()))
            .expect("ModelExecutor::infer")
            .outputs
    }
}

/// One way of sending the inference request over HTTP.
#[derive(Clone, Copy, Debug)]
enum Wire {
    Json,
    Binary,
}

/// The client: a current-thread runtime, a keep-alive HTTP/1.1 client, and
/// the two request bodies.
struct Client {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    url: String,
    json: Bytes,
    binary: Bytes,
    binary_header_length: usize,
}

impl Client {
    fn new(server: &Server) -> Client {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .expect("HTTP client");
        let request = |binary: bool| {
            let mut parameters = Map::new();
            if binary {
                parameters.insert("binary_data_output".into(), true.into());
            }
            let req = InferRequest {
                id: None,
                parameters,
                inputs: vec![NamedTensor {
                    name: "input".into(),
                    tensor: input_tensor(),
                }],
                outputs: binary.then(|| {
                    vec![RequestedOutput {
                        name: "output".into(),
                        binary_data: true,
                    }]
                }),
                binary_data_output: binary,
            };
            sluice_oip::encode_infer_request(&req, |_| binary)
        };
        let json = request(false);
        let binary = request(true);
        assert_eq!(json.header_length, None);
        Client {
            runtime,
            client,
            url: server.url(INFER_PATH),
            json: json.body,
            binary: binary.body,
            binary_header_length: binary.header_length.expect("a binary request"),
        }
    }

    fn request(&self, wire: Wire) -> reqwest::RequestBuilder {
        let post = self.client.post(&self.url);
        match wire {
            Wire::Json => post
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(self.json.clone()),
            Wire::Binary => post
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .header(sluice_oip::HEADER_LENGTH_HEADER, self.binary_header_length)
                .body(self.binary.clone()),
        }
    }

    /// `n` requests, one after the other; their wall time. Panics on any
    /// status but 200.
    fn run(&self, wire: Wire, n: u64) -> Duration {
        self.runtime.block_on(async {
            let start = Instant::now();
            for _ in 0..n {
                let response = self
                    .request(wire)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{wire:?}: request failed: {e}"));
                let status = response.status();
                // The whole body: the response is complete and the
                // connection goes back to the pool.
                let body = response
                    .bytes()
                    .await
                    .unwrap_or_else(|e| panic!("{wire:?}: reading the response failed: {e}"));
                if status != reqwest::StatusCode::OK {
                    panic!(
                        "{wire:?}: status {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                black_box(body);
            }
            start.elapsed()
        })
    }

    /// One request, decoded: the response's one output.
    fn output(&self, wire: Wire) -> NamedTensor {
        self.runtime.block_on(async {
            let response = self.request(wire).send().await.expect("request");
            assert_eq!(response.status(), 200, "{wire:?}");
            let header_length = response
                .headers()
                .get(sluice_oip::HEADER_LENGTH_HEADER)
                .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
            match wire {
                Wire::Json => assert_eq!(header_length, None, "JSON response"),
                Wire::Binary => assert!(header_length.is_some(), "binary response"),
            }
            let body = response.bytes().await.expect("body");
            let decoded = sluice_oip::decode_infer_response(body, header_length)
                .unwrap_or_else(|e| panic!("{wire:?}: the response does not decode: {e}"));
            assert_eq!(decoded.model_name, "mlp");
            assert_eq!(decoded.model_version, "1");
            assert_eq!(decoded.outputs.len(), 1, "{wire:?}: {decoded:?}");
            decoded.outputs.into_iter().next().unwrap()
        })
    }
}

/// Copies `models/mlp` (its one version, with its manifest) into `root`.
fn copy_mlp(root: &Path) {
    let src = mlp_dir().join("1");
    let dst = root.join("mlp").join("1");
    std::fs::create_dir_all(&dst).unwrap();
    for file in std::fs::read_dir(&src).expect("models/mlp/1") {
        let file = file.unwrap();
        std::fs::copy(file.path(), dst.join(file.file_name())).unwrap();
    }
}

fn check(floor: &mut Floor, executor: &Executor, client: &Client) {
    let (shape, want) = floor.output();
    assert_eq!(shape, [1, 4], "ONNX Runtime's output shape");
    let outputs = executor.output();
    assert_eq!(outputs.len(), 1);
    let (name, tensor) = &outputs[0];
    assert_eq!(name, "output");
    assert_eq!(tensor.dtype(), DataType::Fp32);
    assert_eq!(tensor.shape(), [1, 4], "the executor's output shape");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&fp32_values(tensor)),
        bits(&want),
        "the executor and ONNX Runtime disagree"
    );
    for wire in [Wire::Json, Wire::Binary] {
        let out = client.output(wire);
        assert_eq!(out.name, "output", "{wire:?}");
        assert_eq!(out.tensor.shape(), [1, 4], "{wire:?}: output shape");
        assert_eq!(
            bits(&fp32_values(&out.tensor)),
            bits(&want),
            "{wire:?}: the server and ONNX Runtime disagree"
        );
    }
    println!("infer check: output {want:?} from ONNX Runtime, the executor and both HTTP paths");
}

const PATHS: [&str; 4] = [
    "ort_session_run",
    "executor_infer",
    "http_json",
    "http_binary",
];

fn interleaved(
    floor: &mut Floor,
    executor: &Executor,
    client: &Client,
    rounds: u64,
    calls: u64,
    smoke: bool,
) {
    let mut run = |path: usize, n: u64| -> Duration {
        match path {
            0 => {
                let start = Instant::now();
                for _ in 0..n {
                    black_box(floor.run());
                }
                start.elapsed()
            }
            1 => executor.run(n),
            2 => client.run(Wire::Json, n),
            _ => client.run(Wire::Binary, n),
        }
    };
    // Warm every path before counting.
    for path in 0..PATHS.len() {
        run(path, calls.min(200));
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); PATHS.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); PATHS.len()];
    for round in 0..rounds {
        let mut t = [0.0f64; PATHS.len()];
        for k in 0..PATHS.len() {
            let path = (k + round as usize) % PATHS.len();
            t[path] = run(path, calls).as_secs_f64() / calls as f64;
        }
        println!(
            "  round {}: ort {:6.2} µs, executor {:6.2} µs, http json {:6.2} µs, http binary {:6.2} µs",
            round + 1,
            t[0] * 1e6,
            t[1] * 1e6,
            t[2] * 1e6,
            t[3] * 1e6,
        );
        for path in 0..PATHS.len() {
            times[path].push(t[path]);
            ratios[path].push(t[path] / t[0]);
        }
    }
    let note = if smoke {
        " [test mode: a smoke run, not a measurement]"
    } else {
        ""
    };
    let floor_m = median(&mut times[0]);
    println!(
        "floor: ort_session_run {:.2} µs per call (median of {rounds} rounds of {calls} calls){note}",
        floor_m * 1e6
    );
    for path in 1..PATHS.len() {
        let ratio = median(&mut ratios[path]);
        let time = median(&mut times[path]);
        println!(
            "{}: {:.2} µs per call, {ratio:.2}x ONNX Runtime alone (+{:.2} µs; medians of {rounds} rounds){note}",
            PATHS[path],
            time * 1e6,
            (time - floor_m) * 1e6,
        );
    }
}

fn main() {
    let rt =
        OrtRuntime::init(None).expect("ONNX Runtime in .sluice/ort (run scripts/fetch-ort.sh)");
    let model = mlp_dir().join("1/model.onnx");
    let mut floor = Floor::new(&rt, &model);
    let executor = Executor::new(&rt, &model);

    let root = tempfile::tempdir().expect("temp dir");
    copy_mlp(root.path());
    let server = Server::start("server", root.path(), None, None);
    let client = Client::new(&server);

    check(&mut floor, &executor, &client);

    let measurement = Duration::from_secs(env_u64("SLUICE_BENCH_MEASUREMENT_S", 3).max(1));
    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(measurement)
        .configure_from_args();
    {
        let mut group = criterion.benchmark_group("infer_mlp_b1");
        group.throughput(criterion::Throughput::Elements(1));
        group.bench_function("ort_session_run", |b| b.iter(|| floor.run()));
        group.bench_function("executor_infer", |b| {
            b.iter_custom(|iters| executor.run(iters))
        });
        group.bench_function("http_json_c1", |b| {
            b.iter_custom(|iters| client.run(Wire::Json, iters))
        });
        group.bench_function("http_binary_c1", |b| {
            b.iter_custom(|iters| client.run(Wire::Binary, iters))
        });
        group.finish();
    }
    criterion.final_summary();

    let smoke = !benchmark_mode();
    let (rounds, calls) = if smoke {
        (2, 20)
    } else {
        (
            env_u64("SLUICE_BENCH_ROUNDS", 8),
            env_u64("SLUICE_BENCH_ROUND_CALLS", 1000).max(1),
        )
    };
    if rounds > 0 {
        println!(
            "\ninterleaved comparison: {rounds} rounds x {calls} calls per path, \
             batch 1, concurrency 1, order rotated every round"
        );
        interleaved(&mut floor, &executor, &client, rounds, calls, smoke);
    }

    drop(client);
    server.stop();
}
