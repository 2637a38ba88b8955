//! The HTTP ceiling: a minimal hyper server that reads each request and
//! answers with a fixed OIP-shaped JSON body, doing no other work.
//!
//! It uses what Sluice uses for HTTP (hyper-util's auto builder, HTTP/1.1
//! and h2c, a multi-thread tokio runtime), so the gap between it and Sluice
//! is what Sluice does per request beyond HTTP: routing, decoding,
//! validation, the queue hop to ONNX Runtime, inference, encoding and
//! telemetry.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// What every request gets: the size and shape of a real answer of a small
/// model (one row, two outputs), so the response path costs what a real one
/// costs in bytes on the wire.
pub const BODY: &str = r#"{"model_name":"mlp","model_version":"1","outputs":[{"name":"output","datatype":"FP32","shape":[1,4],"data":[0.11961522,0.38418746,0.27302715,0.22317016]},{"name":"label","datatype":"INT64","shape":[1],"data":[1]}]}"#;

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body as a real server must before answering (and so the
    // connection stays reusable); its content is ignored.
    let _ = request.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Serves `listener` until `shutdown` completes. Connections in progress are
/// simply dropped then: this server only ever serves a benchmark.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: keep serving.
                Err(_) => continue,
            },
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let _ = builder
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_a_valid_inference_response() {
        let decoded =
            sluice_oip::decode_infer_response(Bytes::from_static(BODY.as_bytes()), None).unwrap();
        assert_eq!(decoded.outputs.len(), 2);
    }
}
