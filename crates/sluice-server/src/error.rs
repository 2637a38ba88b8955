//! The one mapping from what went wrong to an HTTP status.
//!
//! Every handler returns `Result<_, ApiError>`; every lower-layer error is
//! converted here, and nowhere else decides a status code. The body is always
//! `{"error": "<message>"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sluice_runtime::InferError;
use sluice_serving::ServingError;

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
        }
    }

    /// A short, bounded label for logs and (later) metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "validation",
            ApiError::NotFound(_) => "not_found",
            ApiError::PayloadTooLarge { .. } => "too_large",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::NotReady(_) => "not_ready",
            ApiError::Timeout(_) => "timeout",
            ApiError::Internal(_) => "runtime",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), reason = self.reason(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), reason = self.reason(), error = %self, "request refused");
        }
        let body = serde_json::json!({ "error": self.to_string() });
        (status, axum::Json(body)).into_response()
    }
}

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
        ];
        for (e, code) in cases {
            assert_eq!(e.status().as_u16(), code, "{e:?}");
        }
    }
}
