//! The inference path both protocols share: routing, the shadow and capture
//! plans, the executor call, the after-answer dispatch, and the request
//! metric. HTTP (`handlers`) and gRPC (`grpc`) only decode their request
//! into tensors and encode the answer; everything between is here, once.
//!
//! Headers are an `http::HeaderMap` for both: gRPC metadata is HTTP/2
//! headers, so `x-sluice-variant`, a sticky header or capture's key header
//! mean the same on either protocol.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderName};
use sluice_rollout::compare::Agreement;
use sluice_rollout::routing::{self, Variant};
use sluice_runtime::ModelExecutor;
use sluice_serving::{ModelSnapshot, Snapshot, VersionState};
use sluice_telemetry::{Outcome, Protocol};
use sluice_tensor::Tensor;

use crate::AppState;
use crate::error::ApiError;
use crate::telemetry::{self, InferRecord};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const MODEL_VERSION: HeaderName = HeaderName::from_static("sluice-model-version");
/// Asks for a side of a canary rollout (`stable` or `canary`) and, on the
/// response, names the side that answered.
pub const VARIANT: HeaderName = HeaderName::from_static("x-sluice-variant");

/// A request's model, the version that answers it, and its side.
type Routed = (Arc<ModelSnapshot>, Arc<ModelExecutor>, Option<Variant>);

/// Which version answers an inference request, and on which side of the
/// model's traffic policy: an explicit version (URL or `model_version`);
/// else the variant header (`x-sluice-variant`); else the policy's sticky
/// header, hashed onto [0, 1) against the canary weight; else a random
/// draw. `None` as variant for an explicit version that is neither the
/// stable nor the canary one.
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

/// The model and the version named (or the model's default version), or
/// why there is none: unknown (404) or not ready (503).
pub fn resolve(
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

/// When a request arrived, and its trace id.
#[derive(Debug, Clone, Copy)]
pub struct Arrived {
    pub at: Instant,
    pub trace_id: Option<u128>,
}

impl Arrived {
    /// From what the telemetry layer left on the request (now, and no trace
    /// id, without it).
    pub fn from_arrival(arrival: Option<telemetry::Arrival>) -> Arrived {
        Arrived {
            at: arrival.map(|a| a.at).unwrap_or_else(Instant::now),
            trace_id: arrival.map(|a| a.trace_id),
        }
    }
}

/// One inference request as a protocol hands it over.
pub struct Call<'a> {
    pub model: &'a str,
    /// `None`: the traffic policy picks.
    pub version: Option<&'a str>,
    /// HTTP headers, or gRPC metadata.
    pub headers: &'a HeaderMap,
    pub arrived: Arrived,
    pub protocol: Protocol,
}

/// A request's tensors, decoded by its protocol.
pub struct Decoded {
    pub inputs: Vec<(String, Tensor)>,
    /// The outputs asked for, in order; empty: all of them.
    pub outputs: Vec<String>,
}

/// What answered, and its outputs, for the protocol to encode.
pub struct Answer {
    pub executor: Arc<ModelExecutor>,
    /// The side of the rollout that answered (see [`route`]).
    pub variant: Option<Variant>,
    /// Whether the model has a traffic policy: the response body then names
    /// the side too (the headers always do).
    pub variant_in_body: bool,
    pub outputs: Vec<(String, Tensor)>,
}

/// How a request ended: the answer (with what the protocol's decoder kept
/// for encoding) or the error, and the record for the request's span and
/// log line.
pub struct Served<T> {
    pub record: InferRecord,
    pub result: Result<(Answer, T), ApiError>,
}

/// Runs one inference: route (an unknown model is a 404 whatever the body
/// holds), plan shadows and capture, `decode` (the protocol's part, given
/// the version that will answer), run on the version's executor, hand the
/// answer to capture and the shadows, and count the request under its
/// protocol. `T` is whatever the decoder keeps for the encoder (the request
/// id, which outputs are binary, ...).
pub async fn infer<T, F, Fut>(state: &AppState, call: Call<'_>, decode: F) -> Served<T>
where
    F: FnOnce(Arc<ModelExecutor>) -> Fut,
    Fut: Future<Output = Result<(Decoded, T), ApiError>>,
{
    let Call {
        model,
        version,
        headers,
        arrived,
        protocol,
    } = call;
    let (executor, result) = run(state, model, version, headers, arrived, decode).await;
    let outcome = match &result {
        Ok(_) => Outcome::Success,
        Err(e) => e.outcome(),
    };
    let seconds = arrived.at.elapsed().as_secs_f64();
    // The model label only ever names a model the repository holds.
    let model = match &executor {
        Some(e) => e.model().to_string(),
        None if state.manager.snapshot().knows(model) => model.to_string(),
        None => String::new(),
    };
    match executor.as_ref().and_then(|e| e.metrics()) {
        Some(m) => m.record_request(protocol, outcome, seconds, telemetry::sampled_trace_id()),
        None => {
            if let Some(metrics) = &state.options.metrics {
                sluice_telemetry::record_unrouted(metrics, &model, protocol, outcome, seconds);
            }
        }
    }
    Served {
        record: InferRecord {
            model,
            version: executor.as_ref().map(|e| e.version()),
            outcome,
        },
        result,
    }
}

type Ran<T> = (Option<Arc<ModelExecutor>>, Result<(Answer, T), ApiError>);

async fn run<T, F, Fut>(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    arrived: Arrived,
    decode: F,
) -> Ran<T>
where
    F: FnOnce(Arc<ModelExecutor>) -> Fut,
    Fut: Future<Output = Result<(Decoded, T), ApiError>>,
{
    // Route first. The snapshot guard is dropped here, before any await.
    let (entry, executor, variant) = match route(&state.manager.snapshot(), model, version, headers)
    {
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
        .and_then(|hub| Some((&**hub, hub.plan(&entry.config.capture, headers)?)));
    let variant_in_body = entry.policy.is_some();
    drop(entry);
    let _in_flight = InFlight::new(&executor);

    // Failures before the executor sees the request count against the
    // version here; the executor counts its own.
    let started = Instant::now();
    let (decoded, kept) = match decode(executor.clone()).await {
        Ok(d) => d,
        Err(e) => {
            executor.stats().record_failure(started.elapsed());
            return (Some(executor), Err(e));
        }
    };
    let Decoded { inputs, outputs } = decoded;
    // Tensors are reference-counted buffers: the copy for shadows shares them.
    let shadow_copy = (!shadows.is_empty()).then(|| (inputs.clone(), outputs.clone()));
    let captured_inputs = capture
        .as_ref()
        .filter(|(_, plan)| plan.keeps_inputs())
        .map(|_| inputs.clone());
    let primary_started = Instant::now();
    let result = match executor.infer(inputs, outputs).await {
        Ok(result) => result,
        Err(e) => return (Some(executor), Err(e.into())),
    };
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
                executor: &executor,
                variant,
                request_id: request_id(),
                trace_id: arrived.trace_id,
                latency: arrived.at.elapsed(),
                inputs: captured_inputs,
                outputs: &result.outputs,
            },
        );
    }
    if let Some((inputs, requested)) = shadow_copy {
        crate::shadow::dispatch(
            &state.shadows,
            shadows,
            crate::shadow::Primary {
                version: executor.version(),
                inputs,
                requested,
                outputs: result.outputs.clone(),
                latency: primary_started.elapsed(),
                request_id: request_id().to_string(),
                trace_id: telemetry::sampled_trace_id(),
            },
        );
    }
    let answer = Answer {
        executor: executor.clone(),
        variant,
        variant_in_body,
        outputs: result.outputs,
    };
    (Some(executor), Ok((answer, kept)))
}
