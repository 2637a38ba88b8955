//! The routing decision: which executor answers a request.
//!
//! The server's `resolve` (in `sluice-server/src/handlers.rs`) is private, so
//! this bench runs the same public path it takes: one `ArcSwap` load of the
//! snapshot (`ModelManager::snapshot()`), `Snapshot::model()`, then
//! `ModelSnapshot::default_version()` or, for `/versions/{v}`, the canonical
//! parse of `v` and `versions.get()`, and the two `Arc` clones the handler
//! keeps. [`resolve`] below mirrors the server's function, minus the error
//! messages of the failure paths.
//!
//! The snapshot is a real one: a `ModelManager` over a temporary repository
//! of [`MODELS`] models (`scale-00` … `scale-09`), each a copy of the three
//! versions of `tests/fixtures/models/scale` (y = x * version), so 30
//! versions load (30 ONNX Runtime sessions, each on its own thread).
//!
//! Benches (group `routing`):
//! - `snapshot_load`: `manager.snapshot()` alone (the guard is dropped).
//! - `default_version`: load, then model `scale-07` and its default version.
//! - `explicit_version`: load, then model `scale-07` version `"2"`.
//!
//! Checked before measuring: every model is in the snapshot, its default
//! version is 3 and version "2" is 2; an unknown model and a non-canonical
//! version ("02") are not found.
//!
//! Environment (optional): `SLUICE_BENCH_MEASUREMENT_S` (default 3),
//! criterion's measurement time per bench, in seconds.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use sluice_runtime::ModelExecutor;
use sluice_serving::{ManagerOptions, ModelManager, ModelSnapshot, Snapshot};

/// Models in the repository, each with versions 1, 2 and 3.
const MODELS: usize = 10;

/// The model the benches look up.
const MODEL: &str = "scale-07";

/// The server's `resolve`: the version named, or the model's default.
/// `None` stands for each of its errors (not ready, not found).
fn resolve(
    snapshot: &Snapshot,
    model: &str,
    version: Option<&str>,
) -> Option<(Arc<ModelSnapshot>, Arc<ModelExecutor>)> {
    if !snapshot.initialised {
        return None;
    }
    let entry = snapshot.model(model)?;
    match version {
        None => entry
            .default_version()
            .map(|executor| (entry.clone(), executor.clone())),
        Some(v) => {
            let n = v.parse::<u64>().ok().filter(|n| n.to_string() == v)?;
            entry
                .versions
                .get(&n)
                .map(|executor| (entry.clone(), executor.clone()))
        }
    }
}

/// Copies the three versions of the `scale` fixture into `root/<name>`.
fn copy_scale(root: &Path, name: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/scale");
    for version in 1..=3 {
        let from = src.join(version.to_string());
        let to = root.join(name).join(version.to_string());
        std::fs::create_dir_all(&to).unwrap();
        for file in std::fs::read_dir(&from).expect("tests/fixtures/models/scale") {
            let file = file.unwrap();
            std::fs::copy(file.path(), to.join(file.file_name())).unwrap();
        }
    }
}

fn check(manager: &ModelManager) {
    let snapshot = manager.snapshot();
    assert!(snapshot.initialised);
    assert_eq!(
        snapshot.models.len(),
        MODELS,
        "models loaded: {:?}",
        snapshot.index
    );
    for i in 0..MODELS {
        let name = format!("scale-{i:02}");
        let entry = snapshot
            .model(&name)
            .unwrap_or_else(|| panic!("{name} not in the snapshot: {:?}", snapshot.index));
        assert_eq!(
            entry.versions.keys().copied().collect::<Vec<_>>(),
            [1, 2, 3],
            "{name}: {:?}",
            snapshot.index
        );
        let (model, executor) = resolve(&snapshot, &name, None).expect("default version");
        assert_eq!(
            (model.name.as_str(), executor.version()),
            (name.as_str(), 3)
        );
        let (_, executor) = resolve(&snapshot, &name, Some("2")).expect("version 2");
        assert_eq!((executor.model(), executor.version()), (name.as_str(), 2));
    }
    assert!(resolve(&snapshot, "scale-99", None).is_none());
    assert!(resolve(&snapshot, MODEL, Some("02")).is_none());
    assert!(resolve(&snapshot, MODEL, Some("4")).is_none());
}

fn main() {
    let root = tempfile::tempdir().expect("temp dir");
    for i in 0..MODELS {
        copy_scale(root.path(), &format!("scale-{i:02}"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ort = sluice_runtime::OrtRuntime::init(None)
        .expect("ONNX Runtime in .sluice/ort (run scripts/fetch-ort.sh)");
    let repo = sluice_registry::Repository::open(root.path()).expect("model repository");
    let manager = runtime.block_on(async {
        let manager = ModelManager::start(
            repo,
            ManagerOptions {
                registry: None,
                runtime: ort,
                require_manifests: false,
                trusted_keys: None,
                rescan_interval: Duration::from_secs(600),
                metrics: None,
            },
        );
        manager.reconcile().await.expect("first reconcile");
        manager
    });
    check(&manager);

    let mut criterion = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(sluice_benches::measurement_time())
        .configure_from_args();
    {
        let mut group = criterion.benchmark_group("routing");
        group.throughput(Throughput::Elements(1));
        group.bench_function("snapshot_load", |b| {
            b.iter(|| black_box(manager.snapshot()).initialised)
        });
        group.bench_function("default_version", |b| {
            b.iter(|| resolve(&manager.snapshot(), black_box(MODEL), black_box(None)))
        });
        group.bench_function("explicit_version", |b| {
            b.iter(|| resolve(&manager.snapshot(), black_box(MODEL), black_box(Some("2"))))
        });
        group.finish();
    }
    criterion.final_summary();

    drop(manager);
    runtime.shutdown_timeout(Duration::from_secs(5));
}
