//! The request's telemetry: its server span (child of the caller's W3C
//! `traceparent`), the OpenTelemetry HTTP server metric, the request log line,
//! and `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use sluice_telemetry::trace::{self, SPAN_TARGET};
use sluice_telemetry::{Format, Metrics, Outcome};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::AppState;
use crate::error::ErrorMessage;
use crate::handlers::REQUEST_ID;

/// What the infer handler tells the request log line and the span: which
/// model and version answered, and how it ended. A response extension.
#[derive(Debug, Clone)]
pub struct InferRecord {
    pub model: String,
    pub version: Option<u64>,
    pub outcome: Outcome,
}

/// When the request arrived (before routing and the body), so handlers can
/// time the request as the client sees it, and its trace id (its server
/// span's, or the one its log line and `traceparent` carry when it is not
/// traced). A request extension (one: each is an allocation).
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub at: Instant,
    pub trace_id: u128,
}

/// The attributes known once the response is ready.
fn record_span(span: &tracing::Span, status: axum::http::StatusCode, record: Option<&InferRecord>) {
    // i64: OpenTelemetry attributes have no unsigned integers.
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if let Some(r) = record {
        span.record("sluice.model", r.model.as_str());
        if let Some(v) = r.version {
            span.record("sluice.model_version", v as i64);
        }
    }
    if status.is_client_error() || status.is_server_error() {
        let error_type = record
            .map(|r| r.outcome.as_str())
            .unwrap_or(status.as_str());
        span.record("error.type", error_type);
    }
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The trace id of the current span when its trace is sampled (exemplars
/// link only to traces that exist in the backend).
pub fn sampled_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    (sc.is_valid() && sc.is_sampled()).then(|| sc.trace_id().to_string())
}

fn protocol_version(v: axum::http::Version) -> &'static str {
    match v {
        axum::http::Version::HTTP_09 => "0.9",
        axum::http::Version::HTTP_10 => "1.0",
        axum::http::Version::HTTP_11 => "1.1",
        axum::http::Version::HTTP_2 => "2",
        axum::http::Version::HTTP_3 => "3",
        _ => "",
    }
}

/// The method as a bounded label: the standard ones, else `_OTHER` (the
/// OpenTelemetry convention), so invented methods cannot grow the series.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

/// A request's trace: its server span when it is traced, and the ids its
/// log line and returned `traceparent` carry either way.
pub(crate) struct Trace {
    pub span: Option<tracing::Span>,
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: &'static str,
}

/// Decides whether a request is traced (the caller's `traceparent` in
/// `headers`, else a draw against the sample ratio) and, if it is, opens
/// its server span with `make_span` as a child of the caller's context.
/// Shared by HTTP and gRPC (whose metadata are headers too).
pub(crate) fn start_trace(
    state: &AppState,
    headers: &HeaderMap,
    make_span: impl FnOnce() -> tracing::Span,
) -> Trace {
    let parent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(trace::parse_traceparent);
    let traced = state
        .options
        .trace_sample_ratio
        .is_some_and(|ratio| trace::sample(parent.as_ref(), ratio));
    // The ids of this request's server span, known before the handler runs
    // (the infer handler puts the trace id in capture records): the real
    // ones when traced, else made up here, continuing the caller's trace id
    // when it sent one.
    if traced {
        let span = make_span();
        let cx = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(headers))
        });
        let _ = span.set_parent(cx);
        let cx = span.context();
        let otel_span = cx.span();
        let sc = otel_span.span_context();
        let flags = if sc.is_sampled() { "01" } else { "00" };
        let trace_id = u128::from_be_bytes(sc.trace_id().to_bytes());
        let span_id = u64::from_be_bytes(sc.span_id().to_bytes());
        Trace {
            span: Some(span),
            trace_id,
            span_id,
            flags,
        }
    } else {
        let trace_id = parent.map(|p| p.trace_id).unwrap_or_else(|| {
            (u128::from(trace::random_u64()) << 64) | u128::from(trace::random_u64() | 1)
        });
        // Not recorded here; a caller's sampled flag is passed on as is.
        let flags = if parent.is_some_and(|p| p.sampled) {
            "01"
        } else {
            "00"
        };
        Trace {
            span: None,
            trace_id,
            span_id: trace::random_u64() | 1,
            flags,
        }
    }
}

/// Middleware around every route: server span, HTTP metric, log line.
///
/// Whether the request is traced is decided here, first, from the caller's
/// `traceparent` or a draw against the sample ratio. Only a traced request
/// gets spans (the server span and, through `child_span!`, its children);
/// every request gets a trace id and a span id for its log line and the
/// `traceparent` it returns, at the cost of a random number.
pub async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map(MatchedPath::as_str).unwrap_or("");
    let version = protocol_version(request.version());
    let request_id = request_id(request.headers());
    let Trace {
        span,
        trace_id,
        span_id,
        flags,
    } = start_trace(&state, request.headers(), || {
        // Semantic-convention span name: the route template, never the raw path.
        let name = if route.is_empty() {
            method.to_string()
        } else {
            format!("{method} {route}")
        };
        tracing::trace_span!(
            target: SPAN_TARGET,
            "http.server",
            otel.name = %name,
            otel.kind = "server",
            otel.status_code = Empty,
            "http.request.method" = %method,
            "http.route" = route,
            "url.path" = request.uri().path(),
            "url.scheme" = "http",
            "network.protocol.version" = version,
            "http.response.status_code" = Empty,
            "sluice.request_id" = %request_id,
            "sluice.model" = Empty,
            "sluice.model_version" = Empty,
            "error.type" = Empty,
        )
    });
    request.extensions_mut().insert(Arrival {
        at: started,
        trace_id,
    });
    let mut response = match &span {
        Some(span) => next.run(request).instrument(span.clone()).await,
        None => next.run(request).await,
    };

    let status = response.status();
    let elapsed = started.elapsed();
    let record = response.extensions().get::<InferRecord>().cloned();
    if let Some(span) = &span {
        record_span(span, status, record.as_ref());
    }
    let (trace_id, span_id) = return_traceparent(&mut response, trace_id, span_id, flags);

    if let Some(metrics) = &state.options.metrics {
        metrics
            .http_duration
            .get(&[method, route, status.as_str(), "http", "http", version])
            .observe(elapsed.as_secs_f64());
    }

    let error = response
        .extensions()
        .get::<ErrorMessage>()
        .map(|e| e.0.as_str());
    let model = record.as_ref().map(|r| r.model.as_str());
    let model_version = record.as_ref().and_then(|r| r.version);
    let outcome = record.as_ref().map(|r| r.outcome.as_str());
    let duration_ms = elapsed.as_secs_f64() * 1e3;
    macro_rules! request_line {
        ($level:ident) => {
            tracing::$level!(
                target: "sluice::request",
                request_id = %request_id,
                trace_id = %trace_id,
                span_id = %span_id,
                method = %method,
                route,
                status = status.as_u16(),
                outcome,
                model,
                version = model_version,
                duration_ms,
                error,
                "request"
            )
        };
    }
    if status.is_server_error() {
        request_line!(warn);
    } else {
        request_line!(info);
    }
    response
}

/// The caller's `x-request-id` (made by the request-id layer when absent).
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Puts the request's `traceparent` on its response; returns the trace and
/// span ids as hex, for the log line.
fn return_traceparent(
    response: &mut Response,
    trace_id: u128,
    span_id: u64,
    flags: &str,
) -> (String, String) {
    let trace_id = format!("{trace_id:032x}");
    let span_id = format!("{span_id:016x}");
    if let Ok(v) = HeaderValue::from_str(&format!("00-{trace_id}-{span_id}-{flags}")) {
        response.headers_mut().insert("traceparent", v);
    }
    (trace_id, span_id)
}

/// `GET /metrics`: Prometheus text, or OpenMetrics when `Accept` asks.
pub fn render_metrics(metrics: Option<&Metrics>, headers: &HeaderMap) -> Response {
    let Some(metrics) = metrics else {
        return crate::ApiError::NotFound("metrics are turned off".into()).into_response();
    };
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = sluice_telemetry::encode(metrics, format);
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

/// The router of `--metrics-addr`: `/metrics` only.
pub fn metrics_router(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: HeaderMap| {
            let metrics = metrics.clone();
            async move { render_metrics(Some(&metrics), &headers) }
        }),
    )
}

/// Where a gRPC handler leaves its [`InferRecord`] for the request's span
/// and log line: a failed call is a `tonic::Status`, which carries no
/// extensions, so the record cannot travel on the response as it does over
/// HTTP. A request extension, set once.
#[derive(Debug, Clone, Default)]
pub struct RecordSlot(pub Arc<std::sync::OnceLock<InferRecord>>);

/// gRPC codes that are the server's failure (OpenTelemetry's RPC
/// conventions): the span's status is then an error, and the log line a
/// warning.
fn grpc_server_error(code: i32) -> bool {
    use tonic::Code;
    [
        Code::Unknown,
        Code::DeadlineExceeded,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
    ]
    .iter()
    .any(|c| *c as i32 == code)
}

/// `grpc-message` is percent-encoded on the wire.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The gRPC counterpart of [`observe`], around every gRPC call: the server
/// span (`{service}/{method}`, child of the caller's `traceparent` in the
/// metadata), the `traceparent` returned in the response metadata, and the
/// one log line per call with its gRPC status. The HTTP server metric is
/// not recorded: a gRPC call is not an HTTP route (inference calls are
/// counted in `sluice_requests_total` with `protocol="grpc"`).
pub async fn observe_grpc(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let rpc = request.uri().path().trim_start_matches('/').to_string();
    let (service, method) = rpc.split_once('/').unwrap_or((rpc.as_str(), ""));
    let request_id = request_id(request.headers());
    let Trace {
        span,
        trace_id,
        span_id,
        flags,
    } = start_trace(&state, request.headers(), || {
        tracing::trace_span!(
            target: SPAN_TARGET,
            "grpc.server",
            otel.name = %rpc,
            otel.kind = "server",
            otel.status_code = Empty,
            "rpc.system" = "grpc",
            "rpc.service" = service,
            "rpc.method" = method,
            "rpc.grpc.status_code" = Empty,
            "sluice.request_id" = %request_id,
            "sluice.model" = Empty,
            "sluice.model_version" = Empty,
            "error.type" = Empty,
        )
    });
    let slot = RecordSlot::default();
    request.extensions_mut().insert(Arrival {
        at: started,
        trace_id,
    });
    request.extensions_mut().insert(slot.clone());
    let mut response = match &span {
        Some(span) => next.run(request).instrument(span.clone()).await,
        None => next.run(request).await,
    };

    let status = response.status();
    let elapsed = started.elapsed();
    // A failed unary call is a trailers-only response: its status is in the
    // headers. A success's status (0) comes in the trailers.
    let code: i32 = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(if status.is_success() { 0 } else { 2 });
    let error = response
        .headers()
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode);
    let record = slot.0.get().cloned();
    if let Some(span) = &span {
        span.record("rpc.grpc.status_code", i64::from(code));
        if let Some(r) = &record {
            span.record("sluice.model", r.model.as_str());
            if let Some(v) = r.version {
                span.record("sluice.model_version", v as i64);
            }
        }
        if code != 0 {
            let error_type = record
                .as_ref()
                .map(|r| r.outcome.as_str().to_string())
                .unwrap_or_else(|| format!("{:?}", tonic::Code::from(code)));
            span.record("error.type", error_type.as_str());
        }
        if grpc_server_error(code) {
            span.record("otel.status_code", "ERROR");
        }
    }
    let (trace_id, span_id) = return_traceparent(&mut response, trace_id, span_id, flags);

    let model = record.as_ref().map(|r| r.model.as_str());
    let model_version = record.as_ref().and_then(|r| r.version);
    let outcome = record.as_ref().map(|r| r.outcome.as_str());
    let duration_ms = elapsed.as_secs_f64() * 1e3;
    let error = error.as_deref();
    macro_rules! request_line {
        ($level:ident) => {
            tracing::$level!(
                target: "sluice::request",
                request_id = %request_id,
                trace_id = %trace_id,
                span_id = %span_id,
                protocol = "grpc",
                rpc = %rpc,
                status = status.as_u16(),
                grpc_status = code,
                outcome,
                model,
                version = model_version,
                duration_ms,
                error,
                "request"
            )
        };
    }
    if grpc_server_error(code) {
        request_line!(warn);
    } else {
        request_line!(info);
    }
    response
}
