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
use sluice_runtime::ModelExecutor;
use sluice_serving::VersionState;
use sluice_telemetry::Protocol;

use crate::AppState;
use crate::body::ChunksBody;
use crate::error::ApiError;
use crate::infer::{self, resolve};
use crate::telemetry;
use crate::triton;

pub use crate::infer::{MODEL_VERSION, REQUEST_ID, VARIANT};
pub const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

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
    match check_api_key(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Whether `headers` (HTTP headers or gRPC metadata) carry a key of the
/// inference API, or an admin key; always true when the inference API has
/// no keys.
pub(crate) fn check_api_key(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let keys = &state.options.api_keys;
    if keys.is_empty() {
        return Ok(());
    }
    match keys.check(headers) {
        Ok(_) => Ok(()),
        Err(_) if state.options.admin_keys.check(headers).is_ok() => Ok(()),
        Err(crate::auth::Denied::Missing | crate::auth::Denied::NotConfigured) => {
            Err(ApiError::Unauthorized(
                "this server needs an API key: Authorization: Bearer <key>".into(),
            ))
        }
        Err(crate::auth::Denied::Wrong) => Err(ApiError::Unauthorized(
            "that is not an API key of this server".into(),
        )),
    }
}

/// Outermost layer: every response carries the request's id, taken from the
/// client's `x-request-id` or made here, so logs and clients agree on it.
pub(crate) async fn request_id(mut request: Request, next: Next) -> Response {
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
    axum::Json(triton::server_metadata(&state.manager).to_json())
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
    let call = infer::Call {
        model: &p.model,
        version: p.version.as_deref(),
        headers: &headers,
        arrived: infer::Arrived::from_arrival(arrival.map(|a| a.0)),
        protocol: Protocol::Http,
    };
    let limit = state.options.max_body_bytes;
    let served = infer::infer(&state, call, |executor| {
        decode(executor, &headers, body, limit)
    })
    .await;
    let mut response = match served.result {
        Ok((answer, request)) => encode(answer, &request),
        Err(e) => e.into_response(),
    };
    response.extensions_mut().insert(served.record);
    response
}

/// Reads and decodes an HTTP inference body (JSON, or JSON and binary
/// tensors) into tensors. The rest of the request (its id, which outputs
/// go out binary) is kept for [`encode`].
async fn decode(
    executor: Arc<ModelExecutor>,
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<(infer::Decoded, sluice_oip::InferRequest), ApiError> {
    let body = read_body(headers, body, limit).await?;
    let header_length = match headers.get(&HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest("Inference-Header-Content-Length is not a number".into())
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
        sluice_oip::decode_infer_request(body, header_length)?
    };
    let outputs: Vec<String> = match &request.outputs {
        Some(outputs) => outputs.iter().map(|o| o.name.clone()).collect(),
        None => Vec::new(),
    };
    let inputs = std::mem::take(&mut request.inputs)
        .into_iter()
        .map(|named| (named.name, named.tensor))
        .collect();
    Ok((infer::Decoded { inputs, outputs }, request))
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

/// Encodes an answer as an HTTP response: JSON, with the outputs asked for
/// in binary after it, and the headers naming the version and side.
fn encode(answer: infer::Answer, request: &sluice_oip::InferRequest) -> Response {
    let infer::Answer {
        executor,
        variant,
        variant_in_body,
        outputs,
    } = answer;
    let encode_span = sluice_telemetry::child_span!(
        "sluice.encode",
        "sluice.model" = executor.model(),
        "sluice.model_version" = executor.version() as i64,
        "sluice.response_bytes" = tracing::field::Empty,
    )
    .entered();
    let outputs = outputs
        .into_iter()
        .map(|(name, tensor)| ResponseOutput {
            binary_data: request.output_binary(&name),
            name,
            tensor,
        })
        .collect();
    let version_text = executor.version().to_string();
    // Only a model with a canary names the side in the body too.
    let parameters = variant.filter(|_| variant_in_body).map(|v| {
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
    if let Some(v) = variant {
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
    response
}
