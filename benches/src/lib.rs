//! Benchmarks of Sluice, in `benches/` (see `README.md`). Cargo wants a
//! target besides the benches; this library holds what the benches share.

use std::time::Duration;

/// Criterion's measurement time per bench: `SLUICE_BENCH_MEASUREMENT_S`
/// seconds, 3 by default (every bench here is sized to run in minutes on a
/// 2-core machine).
pub fn measurement_time() -> Duration {
    Duration::from_secs(env_u64("SLUICE_BENCH_MEASUREMENT_S", 3).max(1))
}

/// A whole number from the environment variable `name`, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// The median (sorts `values`).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Whether this is a real benchmark run (`cargo bench`), not a test or list.
pub fn benchmark_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| {
        args.iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    has("--bench") && !has("--test") && !has("--list") && !has("--profile-time")
}

use std::path::Path;
use std::sync::Arc;

use sluice_serving::{ManagerOptions, ModelManager};
use sluice_telemetry::Metrics;
use tokio::sync::oneshot;

/// A real Sluice server on 127.0.0.1:0 in this process, on a tokio runtime
/// of its own (so benchmarks can run two side by side).
pub struct Server {
    /// Names the server in messages and its runtime's threads.
    pub label: &'static str,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    // Dropped after the accept loop has stopped: keeps the versions loaded.
    _manager: ModelManager,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    /// `base` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Starts a server over `root` and waits until its models are loaded.
    /// With `dispatch`, every thread of the server's runtime, and this
    /// thread while the models load, has it as default dispatcher.
    pub fn start(
        label: &'static str,
        root: &Path,
        metrics: Option<Arc<Metrics>>,
        dispatch: Option<tracing::Dispatch>,
    ) -> Server {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().thread_name(format!("sluice-{label}"));
        if let Some(dispatch) = dispatch.clone() {
            builder.on_thread_start(move || {
                // For the thread's whole life: the guard would reset it.
                let guard = tracing::dispatcher::set_default(&dispatch);
                std::mem::forget(guard);
            });
        }
        let runtime = builder.build().expect("server runtime");
        let ort = sluice_runtime::OrtRuntime::init(None)
            .expect("ONNX Runtime in .sluice/ort (run scripts/fetch-ort.sh)");
        let repo = sluice_registry::Repository::open(root).expect("model repository");
        let options = sluice_server::HttpOptions {
            metrics: metrics.clone(),
            ..Default::default()
        };
        let setup = || {
            runtime.block_on(async {
                let manager = ModelManager::start(
                    repo,
                    ManagerOptions {
                        registry: None,
                        runtime: ort,
                        require_manifests: false,
                        trusted_keys: None,
                        rescan_interval: Duration::from_secs(60),
                        metrics,
                    },
                );
                // The executors' workers start here, inside this runtime,
                // and keep the dispatcher current on the loading thread.
                manager.reconcile().await.expect("first reconcile");
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1:0");
                let base = format!("http://{}", listener.local_addr().unwrap());
                let (stop, stopped) = oneshot::channel::<()>();
                let task = tokio::spawn(sluice_server::run(
                    listener,
                    manager.clone(),
                    options,
                    async {
                        let _ = stopped.await;
                    },
                ));
                (manager, base, stop, task)
            })
        };
        let (manager, base, stop, task) = match &dispatch {
            Some(dispatch) => tracing::dispatcher::with_default(dispatch, setup),
            None => setup(),
        };
        Server {
            label,
            base,
            stop: Some(stop),
            task: Some(task),
            _manager: manager,
            runtime: Some(runtime),
        }
    }

    /// Stops accepting, waits for the accept loop, and shuts the runtime down.
    pub fn stop(mut self) {
        let runtime = self.runtime.take().unwrap();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            runtime
                .block_on(task)
                .expect("server task")
                .expect("server");
        }
        drop(self);
        runtime.shutdown_timeout(Duration::from_secs(5));
    }
}
