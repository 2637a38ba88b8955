//! Logs and traces: one `tracing` subscriber with two layers.
//!
//! - a `fmt` layer (text or JSON) filtered by `RUST_LOG`-style directives;
//! - an OpenTelemetry layer that turns the spans of target
//!   [`SPAN_TARGET`] into OpenTelemetry spans, sampled parent-based with a
//!   ratio, and exported over OTLP when an endpoint is configured.
//!
//! Spans are created at TRACE level under [`SPAN_TARGET`], so the `fmt`
//! layer's usual `info` filter never pays for them, while the OpenTelemetry
//! layer (with its own filter) sees all of them.
//!
//! Export is batched on the SDK's own thread and never blocks a request. The
//! gRPC exporter needs a Tokio reactor on that thread, so it gets a small
//! runtime of its own; spans that could not be delivered are counted in
//! `sluice_trace_spans_exported_total{outcome="dropped"}`.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
};
use tracing::Level;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;

use crate::metrics::Metrics;

/// The target of every span that becomes an OpenTelemetry span.
pub const SPAN_TARGET: &str = "sluice::trace";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl OtlpProtocol {
    /// Parses the values of `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn parse(s: &str) -> Option<OtlpProtocol> {
        match s.trim() {
            "grpc" => Some(OtlpProtocol::Grpc),
            "http/protobuf" | "http" => Some(OtlpProtocol::HttpProtobuf),
            _ => None,
        }
    }
}

/// Where and how traces go.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// Base URL of the collector (`http://host:4317` for gRPC,
    /// `http://host:4318` for HTTP, where `/v1/traces` is appended); `None`:
    /// spans are made (for trace ids in logs and responses) but not exported.
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    /// Probability that a trace started here is sampled (root spans); a
    /// remote parent's decision is always followed.
    pub sample_ratio: f64,
    pub service_name: String,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            endpoint: None,
            protocol: OtlpProtocol::Grpc,
            sample_ratio: 1.0,
            service_name: "sluice".into(),
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {message}")]
    Filter { filter: String, message: String },
    #[error("cannot build the OTLP exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
    #[error("--trace-sample-ratio must be between 0 and 1, not {0}")]
    Ratio(f64),
    #[error("cannot start the exporter's runtime: {0}")]
    Runtime(std::io::Error),
}

/// An OTLP exporter that counts what it delivers and what it drops. The
/// gRPC transport runs on its own current-thread runtime.
struct CountingExporter {
    inner: opentelemetry_otlp::SpanExporter,
    runtime: Option<tokio::runtime::Runtime>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CountingExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingExporter").finish_non_exhaustive()
    }
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = match &self.runtime {
            Some(rt) => rt.block_on(self.inner.export(batch)),
            None => self.inner.export(batch).await,
        };
        let outcome = if result.is_ok() { "success" } else { "dropped" };
        self.metrics.spans_exported.get(&[outcome]).inc_by(n);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match &self.runtime {
            Some(rt) => {
                let _guard = rt.enter();
                self.inner.shutdown_with_timeout(timeout)
            }
            None => self.inner.shutdown_with_timeout(timeout),
        }
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Keeps the tracer provider; [`TelemetryGuard::shutdown`] flushes pending
/// spans. Call it outside the async runtime (it blocks).
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    /// Flushes the log buffer when dropped.
    log_writer: Option<crate::logwriter::FlushGuard>,
}

impl TelemetryGuard {
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("flushing traces at shutdown failed: {e}");
        }
        drop(self.log_writer);
    }
}

fn exporter(
    config: &TraceConfig,
    endpoint: &str,
    metrics: Arc<Metrics>,
) -> Result<CountingExporter, TelemetryError> {
    let fail = |message: String| TelemetryError::Exporter {
        endpoint: endpoint.to_string(),
        message,
    };
    let timeout = Duration::from_secs(5);
    match config.protocol {
        OtlpProtocol::Grpc => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(TelemetryError::Runtime)?;
            let inner = {
                let _guard = runtime.enter();
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .with_timeout(timeout)
                    .build()
                    .map_err(|e| fail(e.to_string()))?
            };
            Ok(CountingExporter {
                inner,
                runtime: Some(runtime),
                metrics,
            })
        }
        OtlpProtocol::HttpProtobuf => {
            // A base URL gets the signal path, as OTEL_EXPORTER_OTLP_ENDPOINT does.
            let url = if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
                endpoint.to_string()
            } else {
                format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            };
            let inner = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .with_timeout(timeout)
                .build()
                .map_err(|e| fail(e.to_string()))?;
            Ok(CountingExporter {
                inner,
                runtime: None,
                metrics,
            })
        }
    }
}

/// Installs the global subscriber (logs and spans) and the W3C trace-context
/// propagator. `metrics` receives the exporter's counts.
pub fn init(
    log_format: LogFormat,
    log_filter: &str,
    config: &TraceConfig,
    metrics: Arc<Metrics>,
) -> Result<TelemetryGuard, TelemetryError> {
    // Log lines go through a buffer that a thread flushes to stderr: a
    // request never waits on stderr, and no thread is woken per line.
    let (writer, log_writer) = crate::logwriter::buffered(std::io::stderr());
    let (dispatch, mut guard) = build(log_format, log_filter, config, metrics, writer)?;
    guard.log_writer = Some(log_writer);
    let _ = tracing::dispatcher::set_global_default(dispatch);
    Ok(guard)
}

/// Builds the subscriber without installing it (benchmarks and tests run
/// one server with it and one without, in one process), writing logs to
/// `writer`. Also sets the W3C trace-context propagator.
pub fn build<W>(
    log_format: LogFormat,
    log_filter: &str,
    config: &TraceConfig,
    metrics: Arc<Metrics>,
    writer: W,
) -> Result<(tracing::Dispatch, TelemetryGuard), TelemetryError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    if !(0.0..=1.0).contains(&config.sample_ratio) {
        return Err(TelemetryError::Ratio(config.sample_ratio));
    }
    let filter = EnvFilter::try_new(log_filter).map_err(|e| TelemetryError::Filter {
        filter: log_filter.to_string(),
        message: e.to_string(),
    })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    // Sampling is decided per request before any span is made (see
    // [`sample`]); a span that exists is one that was chosen.
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource);
    if let Some(endpoint) = &config.endpoint {
        // Pre-create both series so dashboards see zeros, not gaps.
        metrics.spans_exported.get(&["success"]);
        metrics.spans_exported.get(&["dropped"]);
        let processor = BatchSpanProcessor::builder(exporter(config, endpoint, metrics)?)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(8192)
                    .with_scheduled_delay(Duration::from_millis(500))
                    .build(),
            )
            .build();
        builder = builder.with_span_processor(processor);
    }
    let provider = builder.build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = provider.tracer("sluice");
    // Without an exporter there is no OpenTelemetry layer at all: spans would
    // go nowhere, and requests still get trace ids (see `sluice-server`).
    let otel = config.endpoint.is_some().then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Targets::new().with_target(SPAN_TARGET, Level::TRACE))
    });
    let registry = tracing_subscriber::registry().with(otel);
    // Colours only for a person at a terminal: escape codes in a file or a
    // log pipeline are noise, and formatting them costs time per line.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let dispatch = match log_format {
        LogFormat::Json => tracing::Dispatch::new(
            registry.with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_filter(filter),
            ),
        ),
        LogFormat::Text => tracing::Dispatch::new(registry.with(fmt.with_filter(filter))),
    };
    Ok((
        dispatch,
        TelemetryGuard {
            provider,
            log_writer: None,
        },
    ))
}

/// A span of target [`SPAN_TARGET`] that is a child of the current span, or
/// `Span::none()` when there is no current span (the request is not traced):
/// untraced requests pay for no span at all.
#[macro_export]
macro_rules! child_span {
    ($($arg:tt)*) => {
        if ::tracing::Span::current().is_none() {
            ::tracing::Span::none()
        } else {
            ::tracing::trace_span!(target: $crate::trace::SPAN_TARGET, $($arg)*)
        }
    };
}

/// The caller's W3C trace context, parsed from `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

/// Parses a version-00 `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`);
/// `None` for anything malformed or all-zero ids, as the W3C spec says.
pub fn parse_traceparent(value: &str) -> Option<RemoteParent> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !(hex(version) && hex(trace) && hex(span) && hex(flags)) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok()?;
    let span_id = u64::from_str_radix(span, 16).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace_id != 0 && span_id != 0).then_some(RemoteParent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// A fast, non-cryptographic random `u64` (xorshift64*, per thread), for
/// trace and span ids of requests that are not traced and for sampling.
pub fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            let local = 0u8;
            (nanos ^ (&local as *const u8 as u64).rotate_left(32)) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// Whether a request whose caller sent `parent` is traced: the caller's
/// decision when there is one, else a draw against `ratio`
/// (parent-based ratio sampling, decided before any span exists).
pub fn sample(parent: Option<&RemoteParent>, ratio: f64) -> bool {
    match parent {
        Some(p) => p.sampled,
        None => ratio >= 1.0 || ((random_u64() >> 11) as f64 / (1u64 << 53) as f64) < ratio,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let p =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(p.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(p.span_id, 0xb7ad6b7169203331);
        assert!(p.sampled);
        assert!(
            !parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
                .unwrap()
                .sampled
        );
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A future version may carry more fields.
        assert!(
            parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x")
                .is_some()
        );
    }

    #[test]
    fn sampling_follows_the_parent_then_the_ratio() {
        let parent =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        assert!(!sample(Some(&parent), 1.0));
        assert!(sample(None, 1.0));
        assert!(!sample(None, 0.0));
        let hits = (0..10_000).filter(|_| sample(None, 0.25)).count();
        assert!((2000..3000).contains(&hits), "{hits}");
    }
}
