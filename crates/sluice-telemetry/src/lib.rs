//! Telemetry: the metrics of `docs/specs/instrumentation.md`, their
//! exposition, and the tracing/OpenTelemetry pipeline.
//!
//! - [`metric`]: lock-free counters, gauges and histograms (with exemplars).
//! - [`metrics`]: every family Sluice exports, declared once, and the
//!   per-version handles the hot path records through.
//! - [`exposition`]: Prometheus text and OpenMetrics encoders.
//! - [`trace`]: logging and OTLP trace export setup, W3C propagation helpers.

pub mod exposition;
pub mod logwriter;
pub mod metric;
pub mod metrics;
pub mod trace;

pub use exposition::{Format, encode};
pub use metrics::{
    CaptureCounters, CaptureOutcome, LiveState, Metrics, Outcome, Protocol, RequestTotals,
    ShadowMetrics, ShadowOutcome, VersionMetrics, record_unrouted,
};
