//! Routes and handlers. Each handler reads the routing snapshot once and
//! answers from it; none holds a lock, and none runs inference itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_oip::{InferResponse, ResponseOutput};
use sluice_rollout::compare::Agreement;
use sluice_rollout::routing::{self, Variant};
use sluice_runtime::ModelExecutor;
use sluice_serving::{ModelSnapshot, Snapshot, VersionState};
use sluice_telemetry::Outcome;

use crate::AppState;
use crate::body::ChunksBody;
use crate::error::ApiError;
use crate::telemetry::{self, InferRecord};
use crate::triton;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const MODEL_VERSION: HeaderName = HeaderName::from_static("sluice-model-version");
pub const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");
/// Asks for a side of a canary rollout (`stable` or `canary`) and, on the
/// response, names the side that answered.
pub const VARIANT: HeaderName = HeaderName::from_static("x-sluice-variant");

pub fn routes(state: AppState) -> Router {
    // Models and the repository: behind the API keys when there are any.
    let protected = Router::new()
        .route("/v2/models/stats", get(all_stats))
        // Each model endpoint has a form with and without /versions/{version};
        // one handler serves both (ModelPath's version is None without it).
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
        .route("/v2/models/{model}/stats", get(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(model_stats),
        )
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .merge(protected)
        .merge(crate::admin::routes(state.clone()))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Inside the request id (it reads it), outside every handler: the
        // server span, the HTTP metric and the request log line.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            telemetry::observe,
        ))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// The inference API's key check, when keys are configured for it (an admin
/// key is accepted too). Health, server metadata and metrics stay open, for
/// probes and scrapers.
async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let keys = &state.options.api_keys;
    if keys.is_empty() {
        return next.run(request).await;
    }
    let headers = request.headers();
    match keys.check(headers) {
        Ok(_) => next.run(request).await,
        Err(_) if state.options.admin_keys.check(headers).is_ok() => next.run(request).await,
        Err(crate::auth::Denied::Missing | crate::auth::Denied::NotConfigured) => {
            ApiError::Unauthorized(
                "this server needs an API key: Authorization: Bearer <key>".into(),
            )
            .into_response()
        }
        Err(crate::auth::Denied::Wrong) => {
            ApiError::Unauthorized("that is not an API key of this server".into()).into_response()
        }
    }
}

/// Outermost layer: every response carries the request's id, taken from the
/// client's `x-request-id` or made here, so logs and clients agree on it.
async fn request_id(mut request: Request, next: Next) -> Response {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = match request.headers().get(&REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 128 => v.clone(),
        _ => {
            // The pid keeps ids of restarted processes apart; read once,
            // as it is a system call.
            static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let pid = *PID.get_or_init(std::process::id);
            HeaderValue::from_str(&format!("{pid:x}-{n:x}")).expect("hex is a valid header value")
        }
    };
    request.headers_mut().insert(REQUEST_ID, id.clone());
    let mut response = next.run(request).await;
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> Response {
    let body = json!({ "error": format!("method {} is not allowed on {}", request.method(), request.uri().path()) });
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    telemetry::render_metrics(state.options.metrics.as_deref(), &headers)
}

async fn server_metadata(State(state): State<AppState>) -> axum::Json<Value> {
    axum::Json(triton::server_metadata(&state.manager))
}

/// OIP health responses carry `{"live": true}` / `{"ready": bool}` bodies
/// (the KServe SDK reads them; tritonclient reads only the status).
async fn live() -> axum::Json<Value> {
    axum::Json(json!({ "live": true }))
}

/// Ready once the repository has been loaded at least once. (A repository
/// whose every model failed is still "ready": the server answers, and the
/// index says why each model is unavailable.) Not ready is a 503, which load
/// balancers and Kubernetes probes understand.
async fn ready(State(state): State<AppState>) -> Response {
    let ready = state.manager.snapshot().initialised;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({ "ready": ready }))).into_response()
}

/// Finds the version that answers: the one named, or the model's default.
/// A request's model, the version that answers it, and its side.
type Routed = (Arc<ModelSnapshot>, Arc<ModelExecutor>, Option<Variant>);

/// Which version answers an inference request, and on which side of the
/// model's traffic policy: an explicit version in the URL; else the variant
/// header (`x-sluice-variant`); else the policy's sticky header, hashed onto
/// [0, 1) against the canary weight; else a random draw. `None` as variant
/// for an explicit version that is neither the stable nor the canary one.
fn route(
    snapshot: &Snapshot,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
) -> Result<Routed, ApiError> {
    let (entry, executor) = resolve(snapshot, model, version)?;
    let canary = entry.canary();
    if version.is_some() {
        let v = executor.version();
        let variant = if canary.is_some_and(|(c, _)| c.version() == v) {
            Some(Variant::Canary)
        } else if entry.default_version().is_some_and(|d| d.version() == v) {
            Some(Variant::Stable)
        } else {
            None
        };
        return Ok((entry, executor, variant));
    }
    let requested = match headers.get(&VARIANT) {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(Variant::parse).ok_or_else(|| {
            ApiError::BadRequest(
                "x-sluice-variant must be 'stable' or 'canary' (or leave it out)".into(),
            )
        })?),
    };
    let Some((canary_executor, weight)) = canary else {
        return Ok((entry, executor, Some(Variant::Stable)));
    };
    let sticky = entry
        .policy
        .as_ref()
        .and_then(|p| p.sticky_header.as_deref())
        .and_then(|h| headers.get(h))
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let (variant, _reason) = routing::choose(true, weight, requested, sticky, routing::random_unit);
    let executor = match variant {
        Variant::Canary => canary_executor.clone(),
        Variant::Stable => executor,
    };
    Ok((entry, executor, Some(variant)))
}

fn resolve(
    snapshot: &Snapshot,
    model: &str,
    version: Option<&str>,
) -> Result<(Arc<ModelSnapshot>, Arc<ModelExecutor>), ApiError> {
    if !snapshot.initialised {
        return Err(ApiError::NotReady(
            "the server is still loading the model repository".into(),
        ));
    }
    let Some(entry) = snapshot.model(model) else {
        return Err(if snapshot.knows(model) {
            ApiError::NotReady(format!(
                "model '{model}' is not ready: {}",
                snapshot.why_not_ready(model)
            ))
        } else {
            ApiError::NotFound(format!("unknown model '{model}'"))
        });
    };
    match version {
        None => match entry.default_version() {
            Some(executor) => Ok((entry.clone(), executor.clone())),
            None => Err(ApiError::NotReady(format!(
                "model '{model}' has no ready version: {}",
                snapshot.why_not_ready(model)
            ))),
        },
        Some(v) => {
            let parsed = v.parse::<u64>().ok().filter(|n| n.to_string() == v);
            let Some(n) = parsed else {
                return Err(ApiError::NotFound(format!(
                    "model '{model}' has no version '{v}' (versions are positive integers)"
                )));
            };
            if let Some(executor) = entry.versions.get(&n) {
                return Ok((entry.clone(), executor.clone()));
            }
            match snapshot.version_entry(model, n) {
                Some(row) if row.state != VersionState::Ready => Err(ApiError::NotReady(format!(
                    "model '{model}' version {n} is not ready: {}",
                    row.reason
                ))),
                _ => Err(ApiError::NotFound(format!(
                    "model '{model}' has no version {n}"
                ))),
            }
        }
    }
}

/// The path of a model endpoint: the model, and the version when the URL
/// has `/versions/{version}`.
#[derive(Debug, serde::Deserialize)]
struct ModelPath {
    model: String,
    version: Option<String>,
}

async fn model_metadata(
    State(state): State<AppState>,
    Path(p): Path<ModelPath>,
) -> Result<Response, ApiError> {
    let (entry, executor) = resolve(&state.manager.snapshot(), &p.model, p.version.as_deref())?;
    let versions: Vec<u64> = entry.versions.keys().copied().collect();
    Ok(axum::Json(triton::model_metadata(&p.model, &versions, &executor)).into_response())
}

/// OIP: 200 means ready; a 4xx means not ready (400), or unknown (404).
async fn model_ready(
    State(state): State<AppState>,
    Path(p): Path<ModelPath>,
) -> Result<axum::Json<Value>, ApiError> {
    match resolve(&state.manager.snapshot(), &p.model, p.version.as_deref()) {
        Ok(_) => Ok(axum::Json(json!({ "name": p.model, "ready": true }))),
        Err(ApiError::NotReady(message)) => Err(ApiError::BadRequest(message)),
        Err(e) => Err(e),
    }
}

async fn model_config(
    State(state): State<AppState>,
    Path(p): Path<ModelPath>,
) -> Result<Response, ApiError> {
    let (entry, executor) = resolve(&state.manager.snapshot(), &p.model, p.version.as_deref())?;
    Ok(axum::Json(triton::model_config(&p.model, &entry.config, &executor)).into_response())
}

async fn all_stats(State(state): State<AppState>) -> axum::Json<Value> {
    let snapshot = state.manager.snapshot();
    let mut names: Vec<&String> = snapshot.models.keys().collect();
    names.sort();
    let stats: Vec<Value> = names
        .into_iter()
        .flat_map(|name| {
            snapshot.models[name]
                .versions
                .values()
                .map(|e| triton::model_stats(name, e))
                .collect::<Vec<_>>()
        })
        .collect();
    axum::Json(json!({ "model_stats": stats }))
}

/// Without a version, Triton reports every ready version of the model.
async fn model_stats(
    State(state): State<AppState>,
    Path(p): Path<ModelPath>,
) -> Result<Response, ApiError> {
    let (entry, executor) = resolve(&state.manager.snapshot(), &p.model, p.version.as_deref())?;
    let stats: Vec<Value> = match p.version {
        Some(_) => vec![triton::model_stats(&p.model, &executor)],
        None => entry
            .versions
            .values()
            .map(|e| triton::model_stats(&p.model, e))
            .collect(),
    };
    Ok(axum::Json(json!({ "model_stats": stats })).into_response())
}

async fn repository_index(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Optional body: {"ready": true} lists only ready versions.
    let ready_only = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("repository index body is not JSON: {e}")))?;
        v.get("ready").and_then(Value::as_bool).unwrap_or(false)
    };
    let snapshot = state.manager.snapshot();
    let rows: Vec<&sluice_serving::IndexEntry> = snapshot
        .index
        .iter()
        .filter(|e| !ready_only || e.state == VersionState::Ready)
        .collect();
    Ok(axum::Json(rows).into_response())
}

async fn repository_load(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    state.manager.load(&model).await?;
    Ok(axum::Json(json!({})).into_response())
}

async fn repository_unload(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    state.manager.unload(&model).await?;
    Ok(axum::Json(json!({})).into_response())
}

async fn infer(
    State(state): State<AppState>,
    Path(p): Path<ModelPath>,
    arrival: Option<axum::Extension<telemetry::Arrival>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let arrival = arrival.map(|a| a.0);
    let started = arrival
        .map(|a| a.at)
        .unwrap_or_else(std::time::Instant::now);
    let arrived = Arrived {
        at: started,
        trace_id: arrival.map(|a| a.trace_id),
    };
    let (executor, result) = infer_inner(
        &state,
        &p.model,
        p.version.as_deref(),
        arrived,
        headers,
        body,
    )
    .await;
    let outcome = match &result {
        Ok(_) => Outcome::Success,
        Err(e) => e.outcome(),
    };
    let seconds = started.elapsed().as_secs_f64();
    // The model label only ever names a model the repository holds.
    let model = match &executor {
        Some(e) => e.model().to_string(),
        None if state.manager.snapshot().knows(&p.model) => p.model.clone(),
        None => String::new(),
    };
    match executor.as_ref().and_then(|e| e.metrics()) {
        Some(m) => m.record_request(outcome, seconds, telemetry::sampled_trace_id()),
        None => {
            if let Some(metrics) = &state.options.metrics {
                sluice_telemetry::record_unrouted(metrics, &model, "http", outcome, seconds);
            }
        }
    }
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(InferRecord {
        model,
        version: executor.as_ref().map(|e| e.version()),
        outcome,
    });
    response
}

/// Counts a request in its version's in-flight gauge while it lives.
struct InFlight(Option<Arc<sluice_telemetry::metric::Gauge>>);

impl InFlight {
    fn new(executor: &ModelExecutor) -> InFlight {
        let gauge = executor.metrics().map(|m| m.in_flight.clone());
        if let Some(g) = &gauge {
            g.inc();
        }
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

/// Reads the body, refusing one over the limit before reading it when its
/// length is declared, and while reading it otherwise. A body sent with
/// `Content-Encoding: gzip` or `deflate` (as tritonclient's
/// `request_compression_algorithm` does) is decompressed, and the limit
/// applies to the decompressed size too.
async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<Bytes, ApiError> {
    let encoding = match headers.get(header::CONTENT_ENCODING) {
        None => Encoding::Identity,
        Some(v) => match v.to_str().map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            Ok("identity") | Ok("") => Encoding::Identity,
            Ok("gzip") | Ok("x-gzip") => Encoding::Gzip,
            Ok("deflate") => Encoding::Deflate,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "Content-Encoding {v:?} is not supported; send identity, gzip or deflate"
                )));
            }
        },
    };
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::BadRequest("Content-Length is not a number".into()))?;
        if length > limit {
            return Err(ApiError::PayloadTooLarge {
                size: length.to_string(),
                limit,
            });
        }
    }
    let limited = http_body_util::Limited::new(body, limit as usize);
    let raw = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::PayloadTooLarge {
                size: "more than that".into(),
                limit,
            });
        }
        Err(e) => {
            return Err(ApiError::BadRequest(format!(
                "could not read the request body: {e}"
            )));
        }
    };
    match encoding {
        Encoding::Identity => Ok(raw),
        // Decompression is CPU work: off the async workers.
        _ => tokio::task::spawn_blocking(move || decompress(encoding, &raw, limit))
            .await
            .map_err(|e| ApiError::Internal(format!("decompression task failed: {e}")))?,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Deflate,
}

/// Inflates `raw`, refusing output over `limit` (a small body can inflate to
/// gigabytes). `deflate` is zlib-wrapped per HTTP; a raw deflate stream, which
/// some clients send instead, is accepted too.
fn decompress(encoding: Encoding, raw: &[u8], limit: u64) -> Result<Bytes, ApiError> {
    use std::io::Read;
    let inflate = |reader: &mut dyn Read| -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        reader.take(limit + 1).read_to_end(&mut out)?;
        Ok(out)
    };
    let result = match encoding {
        Encoding::Gzip => inflate(&mut flate2::read::MultiGzDecoder::new(raw)),
        Encoding::Deflate => inflate(&mut flate2::read::ZlibDecoder::new(raw))
            .or_else(|_| inflate(&mut flate2::read::DeflateDecoder::new(raw))),
        Encoding::Identity => Ok(raw.to_vec()),
    };
    let out = result.map_err(|e| {
        ApiError::BadRequest(format!(
            "the {encoding:?} request body does not decompress: {e}"
        ))
    })?;
    if out.len() as u64 > limit {
        return Err(ApiError::PayloadTooLarge {
            size: "more than that once decompressed".into(),
            limit,
        });
    }
    Ok(Bytes::from(out))
}

/// Routes, decodes, runs and encodes one inference. Returns the version
/// that was chosen (if routing got that far) with the result, so the caller
/// can count the request against it.
async fn infer_inner(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    arrived: Arrived,
    headers: HeaderMap,
    body: Body,
) -> (Option<Arc<ModelExecutor>>, Result<Response, ApiError>) {
    // Route first: an unknown model is a 404 whatever the body holds. The
    // snapshot guard is dropped here, before any await.
    let (entry, executor, variant) =
        match route(&state.manager.snapshot(), model, version, &headers) {
            Ok(routed) => routed,
            Err(e) => return (None, Err(e)),
        };
    // Shadow copies are decided now (a draw per shadow) and sent after the
    // primary answered; the common case (no shadows) costs nothing more.
    // A request pinned to a shadow version is not copied to itself.
    let shadows: Vec<(Arc<ModelExecutor>, Agreement)> = entry
        .shadows()
        .filter(|(e, _)| e.version() != executor.version())
        .filter(|(_, s)| routing::sampled(s.percent, routing::random_unit))
        .map(|(e, s)| (e.clone(), s.agreement))
        .collect();
    // Capture is decided now too, from the model's `[capture]` in this
    // snapshot; a request that is not sampled costs a draw (or a hash of its
    // key header) and nothing else.
    let capture = state
        .capture
        .as_ref()
        .filter(|_| entry.config.capture.enabled())
        .and_then(|hub| Some((&**hub, hub.plan(&entry.config.capture, &headers)?)));
    let has_policy = entry.policy.is_some();
    drop(entry);
    let _in_flight = InFlight::new(&executor);
    let side = Side {
        variant,
        in_body: has_policy,
    };
    let after = After {
        shadows,
        capture,
        arrived,
    };
    let result = run_inference(state, &executor, side, after, headers, body).await;
    (Some(executor), result)
}

/// When a request arrived, and its trace id.
#[derive(Debug, Clone, Copy)]
struct Arrived {
    at: std::time::Instant,
    trace_id: Option<u128>,
}

/// What happens after the primary answered: shadow copies, capture.
struct After<'a> {
    shadows: Vec<(Arc<ModelExecutor>, Agreement)>,
    capture: Option<(&'a crate::capture::CaptureHub, crate::capture::Plan)>,
    arrived: Arrived,
}

/// The side of a rollout a request was routed to, and whether the response
/// body names it too (models with a traffic policy).
#[derive(Debug, Clone, Copy)]
struct Side {
    variant: Option<Variant>,
    in_body: bool,
}

async fn run_inference(
    state: &AppState,
    executor: &ModelExecutor,
    side: Side,
    after: After<'_>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let After {
        shadows,
        capture,
        arrived,
    } = after;
    // Failures before the executor sees the request count against the
    // version here; the executor counts its own.
    let started = std::time::Instant::now();
    let failed = |e: ApiError| {
        executor.stats().record_failure(started.elapsed());
        e
    };
    let body = read_body(&headers, body, state.options.max_body_bytes)
        .await
        .map_err(failed)?;
    let header_length = match headers.get(&HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    failed(ApiError::BadRequest(
                        "Inference-Header-Content-Length is not a number".into(),
                    ))
                })?,
        ),
    };
    let mut request = {
        let _span = sluice_telemetry::child_span!(
            "sluice.decode",
            "sluice.model" = executor.model(),
            "sluice.model_version" = executor.version() as i64,
            "sluice.request_bytes" = body.len() as i64,
        )
        .entered();
        sluice_oip::decode_infer_request(body, header_length).map_err(|e| failed(e.into()))?
    };
    let names: Vec<String> = match &request.outputs {
        Some(outputs) => outputs.iter().map(|o| o.name.clone()).collect(),
        None => Vec::new(),
    };
    let inputs: Vec<(String, sluice_tensor::Tensor)> = std::mem::take(&mut request.inputs)
        .into_iter()
        .map(|named| (named.name, named.tensor))
        .collect();
    // Tensors are reference-counted buffers: the copy for shadows shares them.
    let shadow_copy = (!shadows.is_empty()).then(|| (inputs.clone(), names.clone()));
    let captured_inputs = capture
        .filter(|(_, plan)| plan.keeps_inputs())
        .map(|_| inputs.clone());
    let primary_started = std::time::Instant::now();
    let result = executor.infer(inputs, names).await?;
    let request_id = || {
        headers
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    if let Some((hub, plan)) = capture {
        hub.submit(
            plan,
            crate::capture::Answered {
                executor,
                variant: side.variant,
                request_id: request_id(),
                trace_id: arrived.trace_id,
                latency: arrived.at.elapsed(),
                inputs: captured_inputs,
                outputs: &result.outputs,
            },
        );
    }
    if let Some((inputs, requested)) = shadow_copy {
        let request_id = request_id().to_string();
        crate::shadow::dispatch(
            &state.shadows,
            shadows,
            crate::shadow::Primary {
                version: executor.version(),
                inputs,
                requested,
                outputs: result.outputs.clone(),
                latency: primary_started.elapsed(),
                request_id,
                trace_id: telemetry::sampled_trace_id(),
            },
        );
    }
    let encode_span = sluice_telemetry::child_span!(
        "sluice.encode",
        "sluice.model" = executor.model(),
        "sluice.model_version" = executor.version() as i64,
        "sluice.response_bytes" = tracing::field::Empty,
    )
    .entered();
    let outputs = result
        .outputs
        .into_iter()
        .map(|(name, tensor)| ResponseOutput {
            binary_data: request.output_binary(&name),
            name,
            tensor,
        })
        .collect();
    let version_text = executor.version().to_string();
    // Only a model with a canary names the side in the body too.
    let parameters = side.variant.filter(|_| side.in_body).map(|v| {
        let mut p = serde_json::Map::new();
        p.insert("variant".into(), Value::from(v.as_str()));
        p
    });
    // Chunks: the binary outputs go out as the buffers they already are.
    let encoded = sluice_oip::encode_infer_response_chunks(&InferResponse {
        model_name: executor.model(),
        model_version: &version_text,
        id: request.id.as_deref(),
        parameters: parameters.as_ref(),
        outputs,
    });
    let header_length = encoded.header_length;
    let body = ChunksBody::new(encoded.chunks);
    encode_span.record("sluice.response_bytes", body.len() as i64);
    drop(encode_span);
    let mut response = Response::new(Body::new(body));
    let h = response.headers_mut();
    h.insert(
        MODEL_VERSION,
        HeaderValue::from_str(&version_text).expect("digits are a valid header value"),
    );
    if let Some(v) = side.variant {
        h.insert(VARIANT, HeaderValue::from_static(v.as_str()));
    }
    match header_length {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok(response)
}
