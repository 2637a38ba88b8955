//! Errors of the runtime layer. Each says who failed and whether the caller
//! can fix it by changing the request; the HTTP status is chosen in one place,
//! in `sluice-server`.

use std::path::PathBuf;

/// The ONNX Runtime library could not be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (looked for {looked}). Fetch it with `make ort` \
         (runs scripts/fetch-ort.sh, which takes it from the onnxruntime==1.31.1 wheel) \
         or point ORT_DYLIB_PATH at libonnxruntime.so"
    )]
    NotFound { looked: String },
    #[error(
        "ORT_DYLIB_PATH names {path}, which does not exist. Unset it, or fetch the library with `make ort`"
    )]
    ExplicitMissing { path: PathBuf },
    #[error("could not load ONNX Runtime from {path}: {message}")]
    Load { path: PathBuf, message: String },
}

/// A model version could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("ONNX Runtime could not load {path}: {message}")]
    Session { path: PathBuf, message: String },
    #[error("{path}: {what} `{name}` has ONNX type {onnx_type}, which Sluice cannot serve")]
    UnsupportedType {
        path: PathBuf,
        what: &'static str,
        name: String,
        onnx_type: String,
    },
    #[error("warm-up of {path} failed: {message}")]
    Warmup { path: PathBuf, message: String },
    #[error("could not start a worker thread: {0}")]
    Thread(std::io::Error),
}

/// One inference failed. Variants before `Runtime` are the client's doing or
/// the server's load; `Runtime` is ONNX Runtime failing on valid input.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the queue of model '{model}' version {version} is full ({capacity} waiting); retry later"
    )]
    QueueFull {
        model: String,
        version: u64,
        capacity: usize,
    },
    #[error(
        "request waited {waited_ms} ms in the queue of model '{model}' version {version}, past its timeout of {timeout_ms} ms"
    )]
    QueueTimeout {
        model: String,
        version: u64,
        waited_ms: u64,
        timeout_ms: u64,
    },
    #[error("model '{model}' version {version} is shutting down")]
    Stopped { model: String, version: u64 },
    #[error("ONNX Runtime failed running model '{model}' version {version}: {message}")]
    Runtime {
        model: String,
        version: u64,
        message: String,
    },
}
