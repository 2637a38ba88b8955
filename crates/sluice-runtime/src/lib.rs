//! ONNX Runtime, behind a queue, on threads of its own.
//!
//! This crate turns one model file into a [`ModelExecutor`]: a bounded queue
//! and `instances` worker threads, each owning one ONNX Runtime session
//! (`Session::run` needs `&mut self`, so parallelism comes from several
//! sessions, never from sharing one). Async callers hand in a job with
//! [`ModelExecutor::infer`] and await a oneshot answer; inference never runs
//! on an async worker thread.
//!
//! Draining is ownership: a request holds an `Arc<ModelExecutor>` until it is
//! answered, and the executor's queue closes when the last `Arc` goes, so a
//! version taken out of routing finishes its in-flight requests and then its
//! workers exit and its sessions drop, with no extra bookkeeping.
//!
//! - [`library`] finds and loads the ONNX Runtime shared library.
//! - [`signature`] is a model's inputs and outputs, and request validation.
//! - [`convert`] moves [`sluice_tensor::Tensor`]s in and out of ORT values.
//! - [`executor`] is the queue, the workers and warm-up.
//! - [`stats`] counts what Triton's statistics extension reports.

pub mod batch;
pub mod convert;
pub mod error;
pub mod executor;
pub mod library;
pub mod signature;
pub mod stats;

pub use batch::BatchingOptions;
pub use error::{InferError, LoadError, RuntimeError};
pub use executor::{
    DEFAULT_INLINE_MAX_RUN_US, ExecutionProvider, GraphOptimization, InferOutput, ModelExecutor,
    SessionOptions,
};
pub use library::{OrtRuntime, locate_library};
pub use signature::{Signature, TensorSpec};
pub use stats::{Duration as StatDuration, StatsSnapshot, VersionStats};
