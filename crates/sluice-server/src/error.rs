//! The one mapping from what went wrong to an HTTP status, and to a gRPC
//! status code.
//!
//! Every handler returns `Result<_, ApiError>`; every lower-layer error is
//! converted here, and nowhere else decides a status code. The HTTP body is
//! always `{"error": "<message>"}`; over gRPC the message is the status's.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sluice_runtime::InferError;
use sluice_serving::ServingError;
use sluice_telemetry::Outcome;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or does not fit the model: fix it and retry.
    #[error("{0}")]
    BadRequest(String),
    /// No such model, version or route.
    #[error("{0}")]
    NotFound(String),
    /// The body is over `--max-body-bytes`.
    #[error("request body of {size} bytes is over the limit of {limit} bytes")]
    PayloadTooLarge { size: String, limit: u64 },
    /// The version's queue is full: retry after a short wait.
    #[error("{0}")]
    Overloaded(String),
    /// The model (or server) is not ready yet: retry later.
    #[error("{0}")]
    NotReady(String),
    /// The request waited in the queue past its timeout.
    #[error("{0}")]
    Timeout(String),
    /// ONNX Runtime failed on a valid request. Not the client's fault.
    #[error("{0}")]
    Internal(String),
    /// No key, or not a valid one: send `Authorization: Bearer <key>`.
    #[error("{0}")]
    Unauthorized(String),
    /// This API is switched off (no keys configured for it).
    #[error("{0}")]
    Forbidden(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The gRPC status code of the same failure. Overload (HTTP 429) is
    /// `UNAVAILABLE`, as Triton answers a full queue over gRPC: it is the
    /// code gRPC clients and retry policies treat as "try again shortly",
    /// while `RESOURCE_EXHAUSTED` reads as a quota, and is what gRPC itself
    /// answers for a message over the size limit (our 413).
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            ApiError::BadRequest(_) => tonic::Code::InvalidArgument,
            ApiError::NotFound(_) => tonic::Code::NotFound,
            ApiError::PayloadTooLarge { .. } => tonic::Code::ResourceExhausted,
            ApiError::Overloaded(_) => tonic::Code::Unavailable,
            ApiError::NotReady(_) => tonic::Code::Unavailable,
            ApiError::Timeout(_) => tonic::Code::DeadlineExceeded,
            ApiError::Internal(_) => tonic::Code::Internal,
            ApiError::Unauthorized(_) => tonic::Code::Unauthenticated,
            ApiError::Forbidden(_) => tonic::Code::PermissionDenied,
        }
    }

    /// The bounded `outcome` label of metrics and request logs.
    pub fn outcome(&self) -> Outcome {
        match self {
            ApiError::BadRequest(_) => Outcome::Validation,
            ApiError::NotFound(_) => Outcome::NotFound,
            ApiError::PayloadTooLarge { .. } => Outcome::TooLarge,
            ApiError::Overloaded(_) => Outcome::Overloaded,
            ApiError::NotReady(_) => Outcome::NotReady,
            ApiError::Timeout(_) => Outcome::Timeout,
            ApiError::Internal(_) => Outcome::Runtime,
            ApiError::Unauthorized(_) | ApiError::Forbidden(_) => Outcome::Unauthorized,
        }
    }
}

impl IntoResponse for ApiError {
    /// `{"error": "..."}` with the status. The failure is logged once, in the
    /// request's log line (see `telemetry::observe`), which reads the
    /// message from the response's [`ErrorMessage`] extension.
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        let body = serde_json::json!({ "error": message });
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response.extensions_mut().insert(ErrorMessage(message));
        response
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}

/// The error message of a failed response, for the request log line.
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub String);

impl From<sluice_oip::DecodeError> for ApiError {
    fn from(e: sluice_oip::DecodeError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        let message = e.to_string();
        match e {
            InferError::Invalid(_) => ApiError::BadRequest(message),
            InferError::QueueFull { .. } => ApiError::Overloaded(message),
            InferError::QueueTimeout { .. } => ApiError::Timeout(message),
            InferError::Stopped { .. } => ApiError::NotReady(message),
            InferError::Runtime { .. } => ApiError::Internal(message),
        }
    }
}

impl From<ServingError> for ApiError {
    fn from(e: ServingError) -> Self {
        let message = e.to_string();
        match e {
            ServingError::UnknownModel(_) => ApiError::NotFound(message),
            ServingError::NotReady { .. } => ApiError::BadRequest(message),
            ServingError::Stopped => ApiError::NotReady(message),
            ServingError::InvalidPolicy { .. } => ApiError::BadRequest(message),
            ServingError::PolicyStore { .. } => ApiError::Internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_status() {
        let cases = [
            (ApiError::BadRequest(String::new()), 400),
            (ApiError::NotFound(String::new()), 404),
            (
                ApiError::PayloadTooLarge {
                    size: "5".into(),
                    limit: 1,
                },
                413,
            ),
            (ApiError::Overloaded(String::new()), 429),
            (ApiError::NotReady(String::new()), 503),
            (ApiError::Timeout(String::new()), 504),
            (ApiError::Internal(String::new()), 500),
            (ApiError::Unauthorized(String::new()), 401),
            (ApiError::Forbidden(String::new()), 403),
        ];
        for (e, code) in cases {
            assert_eq!(e.status().as_u16(), code, "{e:?}");
        }
    }

    #[test]
    fn every_kind_has_its_grpc_code() {
        use tonic::Code;
        let cases = [
            (ApiError::BadRequest(String::new()), Code::InvalidArgument),
            (ApiError::NotFound(String::new()), Code::NotFound),
            (
                ApiError::PayloadTooLarge {
                    size: "5".into(),
                    limit: 1,
                },
                Code::ResourceExhausted,
            ),
            (ApiError::Overloaded(String::new()), Code::Unavailable),
            (ApiError::NotReady(String::new()), Code::Unavailable),
            (ApiError::Timeout(String::new()), Code::DeadlineExceeded),
            (ApiError::Internal(String::new()), Code::Internal),
            (ApiError::Unauthorized(String::new()), Code::Unauthenticated),
            (ApiError::Forbidden(String::new()), Code::PermissionDenied),
        ];
        for (e, code) in cases {
            assert_eq!(tonic::Status::from(e).code(), code);
        }
    }
}
