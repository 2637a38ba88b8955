//! A real Sluice server on 127.0.0.1:0 over a temporary copy of fixture
//! models, and a real HTTP client.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_serving::{ManagerOptions, ModelManager};
use sluice_telemetry::Metrics;
use tokio::sync::oneshot;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Copies `fixtures/models/<model>/<version>` into `root/<as_model>/<version>`.
pub fn copy_version(root: &Path, model: &str, version: u64, as_model: &str) {
    let src = fixtures()
        .join("models")
        .join(model)
        .join(version.to_string());
    let dst = root.join(as_model).join(version.to_string());
    std::fs::create_dir_all(&dst).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
    }
}

pub struct TestServer {
    pub url: String,
    /// gRPC alone on a listener of its own (`start_with_grpc`); gRPC is
    /// also served on `url`.
    pub grpc_url: Option<String>,
    pub root: tempfile::TempDir,
    pub manager: ModelManager,
    pub metrics: Arc<Metrics>,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server over `root` (already populated) and waits until ready.
    pub async fn start(root: tempfile::TempDir, options: sluice_server::HttpOptions) -> TestServer {
        Self::launch(root, options, false).await
    }

    /// The same, with gRPC also on a listener of its own (`--grpc-addr`).
    pub async fn start_with_grpc(
        root: tempfile::TempDir,
        options: sluice_server::HttpOptions,
    ) -> TestServer {
        Self::launch(root, options, true).await
    }

    async fn launch(
        root: tempfile::TempDir,
        mut options: sluice_server::HttpOptions,
        separate_grpc: bool,
    ) -> TestServer {
        let runtime = sluice_runtime::OrtRuntime::init(None)
            .expect("ONNX Runtime (run scripts/fetch-ort.sh)");
        let repo = sluice_registry::Repository::open(root.path()).unwrap();
        let metrics = Arc::new(Metrics::new());
        options.metrics = Some(metrics.clone());
        let manager = ModelManager::start(
            repo,
            ManagerOptions {
                registry: None,
                runtime,
                require_manifests: false,
                trusted_keys: None,
                rescan_interval: Duration::from_millis(300),
                metrics: Some(metrics.clone()),
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let grpc_listener = match separate_grpc {
            true => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
            false => None,
        };
        let grpc_url = grpc_listener
            .as_ref()
            .map(|l| format!("http://{}", l.local_addr().unwrap()));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sluice_server::run_with_grpc(
            listener,
            grpc_listener,
            manager.clone(),
            options,
            async {
                let _ = stopped.await;
            },
        ));
        let task = tokio::spawn(async move {
            task.await.unwrap().unwrap();
        });
        let client = reqwest::Client::new();
        let server = TestServer {
            url,
            grpc_url,
            root,
            manager,
            metrics,
            client,
            stop: Some(stop),
            task: Some(task),
        };
        server.manager.reconcile().await.unwrap();
        let ready = server.get("/v2/health/ready").await;
        assert_eq!(ready.status(), 200);
        server
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs `body` as it is, with no Content-Type (as tritonclient's JSON
    /// mode does).
    pub async fn post_raw(&self, path: &str, body: &'static str) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.url))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs with no body (the repository extension's calls).
    pub async fn post_empty(&self, path: &str) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    /// Waits (bounded) until `check` holds for the repository index.
    pub async fn wait_index(&self, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let index: Vec<Value> = self
                .client
                .post(format!("{}/v2/repository/index", self.url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if check(&index) {
                return index;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; index: {index:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A server over a repository holding `scale` version 1 only.
    pub async fn scale_v1() -> TestServer {
        let root = tempfile::tempdir().unwrap();
        copy_version(root.path(), "scale", 1, "scale");
        TestServer::start(root, Default::default()).await
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// An FP32 [1, 4] request for the `scale` fixture.
pub fn scale_request(x: [f32; 4]) -> Value {
    json!({ "inputs": [{ "name": "x", "shape": [1, 4], "datatype": "FP32", "data": x }] })
}

pub fn index_state(index: &[Value], model: &str, version: &str) -> Option<(String, String)> {
    index
        .iter()
        .find(|e| e["name"] == model && e["version"] == version)
        .map(|e| {
            (
                e["state"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
            )
        })
}

/// Writes a `scale` model computing y = x * k into `dir/scale-<k>.onnx`: the
/// fixture `scale/1` with its one FP32 constant (1.0, the only such 4-byte
/// pattern in the file) replaced by k. Lets tests publish any number of
/// versions that each compute x * version, without Python.
pub fn scale_model(dir: &Path, k: f32) -> PathBuf {
    let mut bytes = std::fs::read(fixtures().join("models/scale/1/model.onnx")).unwrap();
    let one = 1.0f32.to_le_bytes();
    let at: Vec<usize> = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == one)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        at.len(),
        1,
        "the scale fixture must hold exactly one 1.0f32"
    );
    bytes[at[0]..at[0] + 4].copy_from_slice(&k.to_le_bytes());
    let path = dir.join(format!("scale-{k}.onnx"));
    std::fs::write(&path, bytes).unwrap();
    path
}
