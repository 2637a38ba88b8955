//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`,
//! as Triton and `tritonclient.grpc` speak it) and gRPC health checking
//! (`grpc.health.v1.Health`).
//!
//! Served by the same accept loop as HTTP (h2c), on the HTTP port and
//! optionally on a port of its own (`--grpc-addr`). Only decoding and
//! encoding are gRPC's own: an inference goes through the path HTTP uses
//! ([`crate::infer::infer`]), metadata and statistics are read from the same
//! snapshot, and every failure is an [`ApiError`] turned into a status in
//! `error.rs`.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sluice_oip::TensorRef;
use sluice_runtime::{ModelExecutor, StatDuration, TensorSpec};
use sluice_serving::VersionState;
use sluice_telemetry::Protocol;
use sluice_tensor::{DataType, Tensor, element_count};
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::AppState;
use crate::error::ApiError;
use crate::infer::{self, Decoded, resolve};
use crate::telemetry::{Arrival, RecordSlot};
use crate::triton;

/// The generated messages, server and client of `proto/grpc_service.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::model_infer_request::InferInputTensor;
use proto::model_infer_response::InferOutputTensor;
use proto::*;

/// The gRPC services as axum routes, behind their own layers (request id,
/// span and log line, API keys): merged into the HTTP router for the shared
/// port, served alone on `--grpc-addr`.
pub fn routes(state: AppState) -> axum::Router {
    let limit = usize::try_from(state.options.max_body_bytes).unwrap_or(usize::MAX);
    let inference = GrpcInferenceServiceServer::new(Inference {
        state: state.clone(),
    })
    // The request size limit of HTTP bodies is the gRPC message limit too.
    // tonic refuses a bigger message itself, before any handler runs, with
    // OUT_OF_RANGE in the trailers (not RESOURCE_EXHAUSTED, which the
    // ApiError mapping would give).
    .max_decoding_message_size(limit)
    .max_encoding_message_size(usize::MAX);
    let health = HealthServer::new(HealthCheck {
        state: state.clone(),
    });
    axum::Router::new()
        .route_service(
            &format!(
                "/{}/{{*rpc}}",
                proto::grpc_inference_service_server::SERVICE_NAME
            ),
            inference,
        )
        .route_service("/grpc.health.v1.Health/{*rpc}", health)
        // Inside the span: the key check, so a refused call is still logged.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .layer(middleware::from_fn_with_state(
            state,
            crate::telemetry::observe_grpc,
        ))
        .layer(middleware::from_fn(crate::handlers::request_id))
}

/// Calls that stay open when the inference API needs keys: the same as over
/// HTTP (liveness, readiness, server metadata), and health checking.
fn open_rpc(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || matches!(
            path,
            "/inference.GRPCInferenceService/ServerLive"
                | "/inference.GRPCInferenceService/ServerReady"
                | "/inference.GRPCInferenceService/ServerMetadata"
        )
}

/// The inference API's keys (`authorization: Bearer <key>` metadata), as
/// over HTTP.
async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if open_rpc(request.uri().path()) {
        return next.run(request).await;
    }
    match crate::handlers::check_api_key(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => Status::from(e)
            .into_http::<axum::body::Body>()
            .into_response(),
    }
}

struct Inference {
    state: AppState,
}

/// `""` means "not given" in proto3.
fn given(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not implemented by Sluice over gRPC (it has no shared memory, trace or log settings API, and no streaming inference yet); use ModelInfer, or the HTTP API"
    ))
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<model_metadata_response::TensorMetadata> {
    specs
        .iter()
        .map(|s| model_metadata_response::TensorMetadata {
            name: s.name.clone(),
            datatype: s.datatype.as_str().to_string(),
            shape: s.shape.clone(),
        })
        .collect()
}

fn duration(d: StatDuration) -> Option<StatisticDuration> {
    Some(StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

/// One entry of Triton's statistics (the same numbers as HTTP's
/// `triton::model_stats`).
fn model_stats(name: &str, executor: &ModelExecutor) -> ModelStatistics {
    let s = executor.stats().snapshot();
    ModelStatistics {
        name: name.to_string(),
        version: executor.version().to_string(),
        last_inference: s.last_inference,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(InferStatistics {
            success: duration(s.success),
            fail: duration(s.fail),
            queue: duration(s.queue),
            compute_input: duration(s.compute_input),
            compute_infer: duration(s.compute_infer),
            compute_output: duration(s.compute_output),
            cache_hit: duration(StatDuration::default()),
            cache_miss: duration(StatDuration::default()),
        }),
        batch_stats: Vec::new(),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: GrpcRequest<ServerLiveRequest>,
    ) -> Result<GrpcResponse<ServerLiveResponse>, Status> {
        Ok(GrpcResponse::new(ServerLiveResponse { live: true }))
    }

    /// Ready once the repository has been loaded at least once (as HTTP's
    /// `/v2/health/ready`).
    async fn server_ready(
        &self,
        _: GrpcRequest<ServerReadyRequest>,
    ) -> Result<GrpcResponse<ServerReadyResponse>, Status> {
        let ready = self.state.manager.snapshot().initialised;
        Ok(GrpcResponse::new(ServerReadyResponse { ready }))
    }

    /// `ready: false` for a model (or version) that is not ready or not
    /// known, as Triton answers; an error only for a refused call.
    async fn model_ready(
        &self,
        request: GrpcRequest<ModelReadyRequest>,
    ) -> Result<GrpcResponse<ModelReadyResponse>, Status> {
        let r = request.get_ref();
        let ready = resolve(&self.state.manager.snapshot(), &r.name, given(&r.version)).is_ok();
        Ok(GrpcResponse::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: GrpcRequest<ServerMetadataRequest>,
    ) -> Result<GrpcResponse<ServerMetadataResponse>, Status> {
        let m = triton::server_metadata(&self.state.manager);
        let mut response = GrpcResponse::new(ServerMetadataResponse {
            name: m.name.to_string(),
            version: m.version.to_string(),
            extensions: m.extensions.iter().map(|e| e.to_string()).collect(),
        });
        if let Some(registry) = &m.registry {
            let meta = response.metadata_mut();
            if let Some(Ok(revision)) = registry.revision.as_deref().map(str::parse) {
                meta.insert("sluice-registry-revision", revision);
            }
            meta.insert(
                "sluice-registry-degraded",
                if registry.degraded {
                    tonic::metadata::MetadataValue::from_static("true")
                } else {
                    tonic::metadata::MetadataValue::from_static("false")
                },
            );
        }
        Ok(response)
    }

    async fn model_metadata(
        &self,
        request: GrpcRequest<ModelMetadataRequest>,
    ) -> Result<GrpcResponse<ModelMetadataResponse>, Status> {
        let r = request.get_ref();
        let (entry, executor) =
            resolve(&self.state.manager.snapshot(), &r.name, given(&r.version))?;
        let signature = executor.signature();
        Ok(GrpcResponse::new(ModelMetadataResponse {
            name: r.name.clone(),
            versions: entry.versions.keys().map(u64::to_string).collect(),
            platform: "onnxruntime_onnx".into(),
            inputs: tensor_metadata(&signature.inputs),
            outputs: tensor_metadata(&signature.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: GrpcRequest<ModelInferRequest>,
    ) -> Result<GrpcResponse<ModelInferResponse>, Status> {
        let (metadata, extensions, mut message) = request.into_parts();
        let headers: HeaderMap = metadata.into_headers();
        let model = std::mem::take(&mut message.model_name);
        let version = std::mem::take(&mut message.model_version);
        let call = infer::Call {
            model: &model,
            version: given(&version),
            headers: &headers,
            arrived: infer::Arrived::from_arrival(extensions.get::<Arrival>().copied()),
            protocol: Protocol::Grpc,
        };
        let served = infer::infer(&self.state, call, |executor| async move {
            let _span = sluice_telemetry::child_span!(
                "sluice.decode",
                "sluice.model" = executor.model(),
                "sluice.model_version" = executor.version() as i64,
            )
            .entered();
            decode(message)
        })
        .await;
        if let Some(slot) = extensions.get::<RecordSlot>() {
            let _ = slot.0.set(served.record);
        }
        let (answer, id) = served.result?;
        Ok(encode(answer, id))
    }

    type ModelStreamInferStream = tokio_stream::Empty<Result<ModelStreamInferResponse, Status>>;

    async fn model_stream_infer(
        &self,
        _: GrpcRequest<tonic::Streaming<ModelInferRequest>>,
    ) -> Result<GrpcResponse<Self::ModelStreamInferStream>, Status> {
        Err(unimplemented("ModelStreamInfer"))
    }

    async fn model_config(
        &self,
        _: GrpcRequest<ModelConfigRequest>,
    ) -> Result<GrpcResponse<ModelConfigResponse>, Status> {
        Err(Status::unimplemented(
            "ModelConfig is not implemented by Sluice over gRPC yet; GET /v2/models/{model}/config answers it over HTTP",
        ))
    }

    /// Without a name, every ready version of every model; without a
    /// version, every ready version of the model (as Triton).
    async fn model_statistics(
        &self,
        request: GrpcRequest<ModelStatisticsRequest>,
    ) -> Result<GrpcResponse<ModelStatisticsResponse>, Status> {
        let r = request.get_ref();
        let snapshot = self.state.manager.snapshot();
        let model_stats = match given(&r.name) {
            None => {
                let mut names: Vec<&String> = snapshot.models.keys().collect();
                names.sort();
                names
                    .into_iter()
                    .flat_map(|name| {
                        snapshot.models[name]
                            .versions
                            .values()
                            .map(|e| model_stats(name, e))
                    })
                    .collect()
            }
            Some(name) => {
                let (entry, executor) = resolve(&snapshot, name, given(&r.version))?;
                match given(&r.version) {
                    Some(_) => vec![model_stats(name, &executor)],
                    None => entry
                        .versions
                        .values()
                        .map(|e| model_stats(name, e))
                        .collect(),
                }
            }
        };
        Ok(GrpcResponse::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        request: GrpcRequest<RepositoryIndexRequest>,
    ) -> Result<GrpcResponse<RepositoryIndexResponse>, Status> {
        let ready_only = request.get_ref().ready;
        let snapshot = self.state.manager.snapshot();
        let models = snapshot
            .index
            .iter()
            .filter(|e| !ready_only || e.state == VersionState::Ready)
            .map(|e| repository_index_response::ModelIndex {
                name: e.name.clone(),
                version: e.version.clone(),
                state: match e.state {
                    VersionState::Ready => "READY",
                    VersionState::Loading => "LOADING",
                    VersionState::Unavailable => "UNAVAILABLE",
                }
                .into(),
                reason: e.reason.clone(),
            })
            .collect();
        Ok(GrpcResponse::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: GrpcRequest<RepositoryModelLoadRequest>,
    ) -> Result<GrpcResponse<RepositoryModelLoadResponse>, Status> {
        let r = request.get_ref();
        if !r.parameters.is_empty() {
            return Err(ApiError::BadRequest(
                "load parameters (a config override, files) are not supported; publish the version into the repository instead".into(),
            )
            .into());
        }
        self.state
            .manager
            .load(&r.model_name)
            .await
            .map_err(ApiError::from)?;
        Ok(GrpcResponse::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: GrpcRequest<RepositoryModelUnloadRequest>,
    ) -> Result<GrpcResponse<RepositoryModelUnloadResponse>, Status> {
        self.state
            .manager
            .unload(&request.get_ref().model_name)
            .await
            .map_err(ApiError::from)?;
        Ok(GrpcResponse::new(RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        _: GrpcRequest<SystemSharedMemoryStatusRequest>,
    ) -> Result<GrpcResponse<SystemSharedMemoryStatusResponse>, Status> {
        Err(unimplemented("SystemSharedMemoryStatus"))
    }

    async fn system_shared_memory_register(
        &self,
        _: GrpcRequest<SystemSharedMemoryRegisterRequest>,
    ) -> Result<GrpcResponse<SystemSharedMemoryRegisterResponse>, Status> {
        Err(unimplemented("SystemSharedMemoryRegister"))
    }

    async fn system_shared_memory_unregister(
        &self,
        _: GrpcRequest<SystemSharedMemoryUnregisterRequest>,
    ) -> Result<GrpcResponse<SystemSharedMemoryUnregisterResponse>, Status> {
        Err(unimplemented("SystemSharedMemoryUnregister"))
    }

    async fn cuda_shared_memory_status(
        &self,
        _: GrpcRequest<CudaSharedMemoryStatusRequest>,
    ) -> Result<GrpcResponse<CudaSharedMemoryStatusResponse>, Status> {
        Err(unimplemented("CudaSharedMemoryStatus"))
    }

    async fn cuda_shared_memory_register(
        &self,
        _: GrpcRequest<CudaSharedMemoryRegisterRequest>,
    ) -> Result<GrpcResponse<CudaSharedMemoryRegisterResponse>, Status> {
        Err(unimplemented("CudaSharedMemoryRegister"))
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: GrpcRequest<CudaSharedMemoryUnregisterRequest>,
    ) -> Result<GrpcResponse<CudaSharedMemoryUnregisterResponse>, Status> {
        Err(unimplemented("CudaSharedMemoryUnregister"))
    }

    async fn trace_setting(
        &self,
        _: GrpcRequest<TraceSettingRequest>,
    ) -> Result<GrpcResponse<TraceSettingResponse>, Status> {
        Err(unimplemented("TraceSetting"))
    }

    async fn log_settings(
        &self,
        _: GrpcRequest<LogSettingsRequest>,
    ) -> Result<GrpcResponse<LogSettingsResponse>, Status> {
        Err(unimplemented("LogSettings"))
    }
}

/// Parameters of extensions Sluice does not implement are refused, not
/// ignored (as over HTTP).
fn reject_unsupported(
    params: &HashMap<String, InferParameter>,
    context: &str,
) -> Result<(), ApiError> {
    for name in [
        "shared_memory_region",
        "shared_memory_byte_size",
        "shared_memory_offset",
        "classification",
    ] {
        if params.contains_key(name) {
            return Err(ApiError::BadRequest(format!(
                "{context}: parameter `{name}` is not supported"
            )));
        }
    }
    Ok(())
}

/// A `ModelInferRequest`'s tensors: each input's elements from its
/// `raw_input_contents` entry (the binary tensor layout, decoded by the
/// same code as HTTP's binary inputs) or from its typed `contents`. The
/// request id is kept for the answer.
fn decode(message: ModelInferRequest) -> Result<(Decoded, String), ApiError> {
    reject_unsupported(&message.parameters, "request")?;
    let raw = message.raw_input_contents;
    if !raw.is_empty() && raw.len() != message.inputs.len() {
        return Err(ApiError::BadRequest(format!(
            "raw_input_contents has {} entries for {} inputs; send one per input, in order, or none",
            raw.len(),
            message.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut inputs: Vec<(String, Tensor)> = Vec::with_capacity(message.inputs.len());
    for (index, input) in message.inputs.into_iter().enumerate() {
        let tref = TensorRef {
            kind: "input",
            index,
            name: Some(input.name.clone()).filter(|n| !n.is_empty()),
        };
        if tref.name.is_none() {
            return Err(ApiError::BadRequest(format!("{tref}: has no name")));
        }
        if inputs.iter().any(|(n, _)| *n == input.name) {
            return Err(ApiError::BadRequest(format!(
                "duplicate input name {:?}",
                input.name
            )));
        }
        reject_unsupported(&input.parameters, &tref.to_string())?;
        let tensor = match raw.next() {
            Some(blob) => {
                if input.contents.is_some() {
                    return Err(ApiError::BadRequest(format!(
                        "{tref}: has both contents and raw_input_contents; send one"
                    )));
                }
                sluice_oip::decode_binary_tensor(&tref, &input.datatype, input.shape, blob)?
            }
            None => typed(&tref, input)?,
        };
        inputs.push((tref.name.unwrap_or_default(), tensor));
    }
    let mut outputs = Vec::with_capacity(message.outputs.len());
    for o in message.outputs {
        reject_unsupported(&o.parameters, &format!("output {:?}", o.name))?;
        if outputs.contains(&o.name) {
            return Err(ApiError::BadRequest(format!(
                "duplicate output name {:?}",
                o.name
            )));
        }
        outputs.push(o.name);
    }
    Ok((Decoded { inputs, outputs }, message.id))
}

/// A tensor from typed `contents`: the field of its datatype, each element
/// checked against the datatype's range, the count against the shape.
fn typed(tref: &TensorRef, input: InferInputTensor) -> Result<Tensor, ApiError> {
    let bad = |m: String| ApiError::BadRequest(format!("{tref}: {m}"));
    let dtype = DataType::parse(&input.datatype)
        .ok_or_else(|| bad(format!("unknown datatype {:?}", input.datatype)))?;
    let shape = input.shape;
    let expected = element_count(&shape).map_err(|e| bad(e.to_string()))?;
    let c = input.contents.unwrap_or_default();
    // Only the field of the datatype may hold elements.
    let lengths = [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ];
    let field = match dtype {
        DataType::Bool => "bool_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => "uint_contents",
        DataType::Uint64 => "uint64_contents",
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
        DataType::Fp16 | DataType::Bf16 => {
            return Err(bad(format!(
                "{dtype} has no typed contents field; send it in raw_input_contents"
            )));
        }
    };
    if let Some((other, _)) = lengths.iter().find(|(f, n)| *f != field && *n > 0) {
        return Err(bad(format!(
            "{dtype} elements go in contents.{field}, but contents.{other} was given"
        )));
    }
    let got = lengths.iter().find(|(f, _)| *f == field).map_or(0, |l| l.1);
    if got != expected {
        return Err(bad(format!(
            "shape {shape:?} holds {expected} elements but contents.{field} has {got}"
        )));
    }
    fn narrow<T, U: TryFrom<T> + Copy>(
        values: Vec<T>,
        put: impl Fn(U, &mut Vec<u8>),
    ) -> Result<Vec<u8>, usize>
    where
        T: Copy,
    {
        let mut out = Vec::with_capacity(values.len() * std::mem::size_of::<U>());
        for (i, v) in values.into_iter().enumerate() {
            put(U::try_from(v).map_err(|_| i)?, &mut out);
        }
        Ok(out)
    }
    let out_of_range = |i: usize| bad(format!("element {i} is out of the range of {dtype}"));
    let raw: Vec<u8> = match dtype {
        DataType::Bool => c.bool_contents.iter().map(|&b| u8::from(b)).collect(),
        DataType::Int8 => {
            narrow(c.int_contents, |v: i8, o| o.extend(v.to_le_bytes())).map_err(out_of_range)?
        }
        DataType::Int16 => {
            narrow(c.int_contents, |v: i16, o| o.extend(v.to_le_bytes())).map_err(out_of_range)?
        }
        DataType::Int32 => c
            .int_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Int64 => c
            .int64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Uint8 => narrow(c.uint_contents, |v: u8, o| o.push(v)).map_err(out_of_range)?,
        DataType::Uint16 => {
            narrow(c.uint_contents, |v: u16, o| o.extend(v.to_le_bytes())).map_err(out_of_range)?
        }
        DataType::Uint32 => c
            .uint_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Uint64 => c
            .uint64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Fp32 => c
            .fp32_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Fp64 => c
            .fp64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Bytes => {
            return Tensor::from_bytes_elements(shape, c.bytes_contents)
                .map_err(|e| bad(e.to_string()));
        }
        DataType::Fp16 | DataType::Bf16 => unreachable!("refused above"),
    };
    Tensor::from_raw(dtype, shape, Bytes::from(raw)).map_err(|e| bad(e.to_string()))
}

/// The answer as `tritonclient.grpc` reads it: every output's elements in
/// `raw_output_contents` (the binary tensor layout; fixed-size outputs are
/// the executor's buffers, not copies), the version in `model_version` and
/// the `sluice-model-version` metadata, the side in `x-sluice-variant` (the
/// names of `infer::MODEL_VERSION` and `infer::VARIANT`; tonic wants them
/// `'static`).
fn encode(answer: infer::Answer, id: String) -> GrpcResponse<ModelInferResponse> {
    let infer::Answer {
        executor,
        variant,
        variant_in_body,
        outputs: answered,
    } = answer;
    let _span = sluice_telemetry::child_span!(
        "sluice.encode",
        "sluice.model" = executor.model(),
        "sluice.model_version" = executor.version() as i64,
    )
    .entered();
    let mut outputs = Vec::with_capacity(answered.len());
    let mut raw_output_contents = Vec::with_capacity(answered.len());
    for (name, tensor) in answered {
        outputs.push(InferOutputTensor {
            name,
            datatype: tensor.dtype().as_str().to_string(),
            shape: tensor.shape().to_vec(),
            parameters: HashMap::new(),
            contents: None,
        });
        raw_output_contents.push(tensor.to_binary());
    }
    let mut parameters = HashMap::new();
    if let Some(v) = variant.filter(|_| variant_in_body) {
        parameters.insert(
            "variant".to_string(),
            InferParameter {
                parameter_choice: Some(infer_parameter::ParameterChoice::StringParam(
                    v.as_str().to_string(),
                )),
            },
        );
    }
    let version = executor.version().to_string();
    let mut response = GrpcResponse::new(ModelInferResponse {
        model_name: executor.model().to_string(),
        model_version: version.clone(),
        id,
        parameters,
        outputs,
        raw_output_contents,
    });
    let metadata = response.metadata_mut();
    if let Ok(v) = version.parse() {
        metadata.insert("sluice-model-version", v);
    }
    if let Some(v) = variant {
        metadata.insert(
            "x-sluice-variant",
            tonic::metadata::MetadataValue::from_static(v.as_str()),
        );
    }
    response
}

/// `grpc.health.v1.Health`, read from the routing snapshot: `""` (and the
/// inference service's name) is SERVING once the repository has been loaded
/// (HTTP's readiness); a model's name is SERVING while it has a ready
/// version, NOT_SERVING while it is known but not ready; other names are
/// unknown (NOT_FOUND from Check, SERVICE_UNKNOWN from Watch).
#[derive(Clone)]
struct HealthCheck {
    state: AppState,
}

impl HealthCheck {
    fn status(&self, service: &str) -> Option<ServingStatus> {
        let snapshot = self.state.manager.snapshot();
        let serving = |yes: bool| {
            if yes {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        if service.is_empty() || service == proto::grpc_inference_service_server::SERVICE_NAME {
            return Some(serving(snapshot.initialised));
        }
        if snapshot.knows(service) || snapshot.model(service).is_some() {
            let ready = snapshot
                .model(service)
                .is_some_and(|m| m.default_version().is_some());
            return Some(serving(ready));
        }
        None
    }
}

fn health(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

/// How often a Watch looks at the snapshot (a load of an `ArcSwap`).
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

#[tonic::async_trait]
impl Health for HealthCheck {
    async fn check(
        &self,
        request: GrpcRequest<HealthCheckRequest>,
    ) -> Result<GrpcResponse<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        match self.status(service) {
            Some(s) => Ok(GrpcResponse::new(health(s))),
            None => Err(Status::not_found(format!(
                "unknown service {service:?}: ask for \"\" (the server) or a model's name"
            ))),
        }
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<HealthCheckResponse, Status>>;

    /// Sends the status now and again each time it changes, until the
    /// client goes away.
    async fn watch(
        &self,
        request: GrpcRequest<HealthCheckRequest>,
    ) -> Result<GrpcResponse<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now = this
                    .status(&service)
                    .unwrap_or(ServingStatus::ServiceUnknown);
                if last != Some(now) {
                    if tx.send(Ok(health(now))).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                }
            }
        });
        Ok(GrpcResponse::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}
