//! The JSON shapes of Triton's extensions and the OIP metadata responses,
//! built from the routing snapshot.

use serde_json::{Value, json};
use sluice_registry::{ModelConfig, VersionPolicy};
use sluice_runtime::{ModelExecutor, StatDuration, TensorSpec};

/// The extensions this server really implements (listed in `GET /v2`).
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_repository",
    "statistics",
    "model_configuration",
];

/// What `GET /v2` and gRPC `ServerMetadata` answer: one source for both.
#[derive(Debug, Clone)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: &'static [&'static str],
    /// With a registry on object storage: the revision served and whether
    /// the replica is degraded (the registry unreachable: serving what it
    /// has). In `GET /v2` as `registry`; over gRPC, whose message has no
    /// field for it, as the `sluice-registry-revision` and
    /// `sluice-registry-degraded` response metadata.
    pub registry: Option<std::sync::Arc<sluice_serving::RegistryStatus>>,
}

pub fn server_metadata(manager: &sluice_serving::ModelManager) -> ServerMetadata {
    ServerMetadata {
        name: "sluice",
        version: env!("CARGO_PKG_VERSION"),
        extensions: EXTENSIONS,
        registry: manager.registry().map(|r| r.status()),
    }
}

impl ServerMetadata {
    /// The JSON of `GET /v2`.
    pub fn to_json(&self) -> Value {
        let mut out = json!({
            "name": self.name,
            "version": self.version,
            "extensions": self.extensions,
        });
        if let Some(registry) = &self.registry {
            out["registry"] = serde_json::to_value(&**registry).unwrap_or(Value::Null);
        }
        out
    }
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<Value> {
    specs
        .iter()
        .map(|s| json!({ "name": s.name, "datatype": s.datatype.as_str(), "shape": s.shape }))
        .collect()
}

/// OIP model metadata. `versions` lists every ready version.
pub fn model_metadata(name: &str, versions: &[u64], executor: &ModelExecutor) -> Value {
    json!({
        "name": name,
        "versions": versions.iter().map(u64::to_string).collect::<Vec<_>>(),
        "platform": "onnxruntime_onnx",
        "inputs": tensor_metadata(&executor.signature().inputs),
        "outputs": tensor_metadata(&executor.signature().outputs),
    })
}

/// Triton's model configuration (the subset that describes an ONNX model).
pub fn model_config(name: &str, config: &ModelConfig, executor: &ModelExecutor) -> Value {
    let io = |specs: &[TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| {
                // Triton's dims exclude the batch dimension when the model
                // batches; with max_batch_size 0 they are the full shape.
                let dims: &[i64] = if config.max_batch_size > 0 && !s.shape.is_empty() {
                    &s.shape[1..]
                } else {
                    &s.shape
                };
                json!({
                    "name": s.name,
                    "data_type": s.datatype.triton_config_name(),
                    "dims": dims,
                })
            })
            .collect()
    };
    let version_policy = match &config.version_policy {
        VersionPolicy::All => json!({ "all": {} }),
        VersionPolicy::Latest(n) => json!({ "latest": { "num_versions": n } }),
        VersionPolicy::Specific(v) => json!({ "specific": { "versions": v } }),
    };
    // What runs, from the executor: the options its sessions were built with.
    let run = executor.options();
    let providers: Vec<&str> = run.execution_providers.iter().map(|e| e.as_str()).collect();
    let kind = if providers.iter().any(|ep| *ep != "cpu") {
        "KIND_GPU"
    } else {
        "KIND_CPU"
    };
    let mut out = json!({
        "name": name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": version_policy,
        "max_batch_size": config.max_batch_size,
        "input": io(&executor.signature().inputs),
        "output": io(&executor.signature().outputs),
        "instance_group": [{ "name": format!("{name}_0"), "kind": kind, "count": run.instances }],
        "default_model_filename": "model.onnx",

        "parameters": {
            "execution_providers": { "string_value": providers.join(",") },
            "graph_optimization": { "string_value": format!("{:?}", run.graph_optimization).to_lowercase() },
            "max_queue_size": { "string_value": run.max_queue_size.to_string() },
            "queue_timeout_ms": { "string_value": run.queue_timeout.as_millis().to_string() },
        },
    });
    // Triton lists dynamic_batching only when the model batches.
    if let Some(b) = executor.batching() {
        out["dynamic_batching"] = json!({
            "preferred_batch_size": b.preferred_batch_sizes,
            "max_queue_delay_microseconds": b.max_queue_delay.as_micros() as u64,
        });
    }
    out
}

fn duration(d: StatDuration) -> Value {
    json!({ "count": d.count, "ns": d.ns })
}

/// One entry of Triton's `model_stats` array.
pub fn model_stats(name: &str, executor: &ModelExecutor) -> Value {
    let s = executor.stats().snapshot();
    json!({
        "name": name,
        "version": executor.version().to_string(),
        "last_inference": s.last_inference,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": duration(s.success),
            "fail": duration(s.fail),
            "queue": duration(s.queue),
            "compute_input": duration(s.compute_input),
            "compute_infer": duration(s.compute_infer),
            "compute_output": duration(s.compute_output),
            "cache_hit": duration(StatDuration::default()),
            "cache_miss": duration(StatDuration::default()),
        },
        "batch_stats": [],
    })
}
