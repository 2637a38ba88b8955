//! The HTTP face of Sluice: the Open Inference Protocol (KServe v2) REST API
//! with Triton's binary tensor, model repository, statistics and model
//! configuration extensions.
//!
//! [`run`] owns the accept loop (hyper-util, HTTP/1.1 and HTTP/2 on one port,
//! graceful shutdown); axum only routes. The request path, in order:
//!
//! 1. accept: hyper-util's auto builder speaks HTTP/1.1 and h2c.
//! 2. request id: taken from `x-request-id` or made, echoed on the response,
//!    so a client can match logs to its call.
//! 3. body limit: `Content-Length` over the limit is refused with 413 before
//!    a byte of the body is read; a body without a length is read through a
//!    limit and refused the same way.
//! 4. route: one atomic load of the routing snapshot picks the version.
//! 5. decode (JSON or binary), validate against the version's signature,
//!    queue on the version's executor (429 when full), await the answer.
//! 6. encode and answer, naming the version that answered.
//! 7. after the answer: shadow copies and, for a sampled request, its capture
//!    record are handed to tasks of their own ([`capture`]); neither waits.
//!
//! The same port speaks the Open Inference Protocol over gRPC
//! (`inference.GRPCInferenceService`, and `grpc.health.v1.Health`): h2c
//! requests to those services go to the gRPC routes (`grpc`), which share
//! steps 4 to 7 with HTTP (`infer`). [`run_with_grpc`] also serves them on a
//! listener of their own.

mod admin;
mod auth;
mod body;
pub mod capture;
mod error;
mod grpc;
mod handlers;
mod infer;
mod inventory;
mod rollout;
mod shadow;
mod telemetry;
mod triton;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use sluice_serving::ModelManager;
use sluice_telemetry::Metrics;
use tokio::net::TcpListener;

pub use auth::KeySet;
pub use capture::CaptureOptions;
pub use error::ApiError;
/// The generated gRPC messages, server and client (`proto/grpc_service.proto`).
pub use grpc::proto as grpc_proto;

/// Settings of the HTTP server itself (per-model settings live in each
/// model's `model.toml`).
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Largest request body accepted; bigger ones get 413.
    pub max_body_bytes: u64,
    /// How long shutdown waits for in-flight requests before closing.
    pub shutdown_grace: Duration,
    /// Where request metrics go, and what `/metrics` shows; `None` turns
    /// metrics off (and `/metrics` answers 404).
    pub metrics: Option<Arc<Metrics>>,
    /// `Some(ratio)` when spans are exported: the share of requests without
    /// a caller's decision that are traced. `None`: no request is traced
    /// (requests still get trace ids for their logs and responses).
    pub trace_sample_ratio: Option<f64>,
    /// Keys of the admin API (`/admin/...`). Empty: the admin API refuses
    /// every call (403).
    pub admin_keys: KeySet,
    /// Keys the inference API (`/v2/models/...`, `/v2/repository/...`)
    /// requires. Empty: it is open.
    pub api_keys: KeySet,
    /// Shadow copies in flight per shadow version; more are dropped (and
    /// counted), so a slow shadow never builds a backlog.
    pub shadow_queue: usize,
    /// The most different (primary, shadow) pairs kept per shadow version.
    pub shadow_diffs_kept: usize,
    /// Cores of compute each shadow version may use on average (a token
    /// bucket charged with each copy's time); copies beyond it are dropped
    /// and counted. Not finite or not positive: no budget.
    pub shadow_cpu: f64,
    /// Request capture: where records go (`--capture-url`) and how they are
    /// exported. Without a URL nothing is captured.
    pub capture: CaptureOptions,
    /// More routes served on the same port (the in-process drift
    /// collector's), outside the gateway's request layers.
    pub extra_routes: Option<axum::Router>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            max_body_bytes: 64 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            metrics: None,
            trace_sample_ratio: None,
            admin_keys: KeySet::default(),
            api_keys: KeySet::default(),
            shadow_queue: 64,
            shadow_diffs_kept: 20,
            shadow_cpu: 0.05,
            capture: CaptureOptions::default(),
            extra_routes: None,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub manager: ModelManager,
    pub options: Arc<HttpOptions>,
    pub shadows: Arc<shadow::ShadowBook>,
    pub rollouts: Arc<rollout::Rollouts>,
    /// `None` when capture is off (no `--capture-url`).
    pub capture: Option<Arc<capture::CaptureHub>>,
}

/// The axum router with every endpoint; exposed for tests that drive it
/// without a socket. Must be called on a tokio runtime when capture is on
/// (its exporter is spawned here).
pub fn router(manager: ModelManager, options: HttpOptions) -> axum::Router {
    build(manager, options).0
}

/// Serves HTTP and gRPC on `listener` and, when given, gRPC alone on
/// `grpc_listener`, until `shutdown` resolves; then both stop accepting and
/// drain as [`run`] does.
pub async fn run_with_grpc(
    listener: TcpListener,
    grpc_listener: Option<TcpListener>,
    manager: ModelManager,
    options: HttpOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let grace = options.shutdown_grace;
    let (app, grpc, capture) = build(manager, options);
    let served = match grpc_listener {
        None => serve("http", listener, app, grace, shutdown).await,
        Some(grpc_listener) => {
            // One shutdown signal, seen by both accept loops.
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let http = serve("http", listener, app, grace, signal(stopped.clone()));
            let grpc = serve("grpc", grpc_listener, grpc, grace, signal(stopped));
            let trigger = async move {
                shutdown.await;
                let _ = stop.send(true);
            };
            let (_, http, grpc) = tokio::join!(trigger, http, grpc);
            http.and(grpc)
        }
    };
    // Records of the last requests are sent (one attempt each) before the
    // process goes.
    if let Some(capture) = capture {
        capture.close(grace.min(Duration::from_secs(5))).await;
    }
    served
}

/// The router (HTTP, and gRPC on the same port), the gRPC routes alone
/// (for `--grpc-addr`), and the capture exporter to close at shutdown.
fn build(
    manager: ModelManager,
    options: HttpOptions,
) -> (axum::Router, axum::Router, Option<capture::Exporting>) {
    let shadows = Arc::new(shadow::ShadowBook::new(
        options.metrics.clone(),
        options.shadow_queue,
        options.shadow_diffs_kept,
        options.shadow_cpu,
    ));
    let (capture, exporting) =
        match capture::CaptureHub::start(&options.capture, options.metrics.clone()) {
            Some((hub, exporting)) => (Some(hub), Some(exporting)),
            None => (None, None),
        };
    capture::announce(
        manager.clone(),
        capture.as_ref().and(options.capture.url.clone()),
    );
    let mut options = options;
    let extra = options.extra_routes.take();
    let state = AppState {
        manager,
        options: Arc::new(options),
        shadows,
        rollouts: Arc::default(),
        capture,
    };
    let grpc = grpc::routes(state.clone());
    // The gRPC routes keep their own layers: the HTTP ones (route metric,
    // HTTP log line, JSON errors) do not apply to them.
    let router = handlers::routes(state).merge(grpc.clone());
    let router = match extra {
        Some(extra) => router.merge(extra),
        None => router,
    };
    (router, grpc, exporting)
}

/// Serves HTTP (and gRPC) on `listener` until `shutdown` resolves, then stops accepting,
/// lets in-flight requests finish (up to `shutdown_grace`) and returns.
pub async fn run(
    listener: TcpListener,
    manager: ModelManager,
    options: HttpOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    run_with_grpc(listener, None, manager, options, shutdown).await
}

/// Serves `/metrics` alone on `listener` (the `--metrics-addr` port), until
/// `shutdown` resolves.
pub async fn run_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve(
        "metrics",
        listener,
        telemetry::metrics_router(metrics),
        Duration::from_secs(1),
        shutdown,
    )
    .await
}

/// Serves `router` alone on `listener` until `shutdown` resolves (the
/// in-process drift collector's loopback listener, which must outlive the
/// gateway's own so the last capture records reach it).
pub async fn run_router(
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve(name, listener, router, Duration::from_secs(5), shutdown).await
}

/// The accept loop: hyper-util's auto builder (HTTP/1.1 and h2c) per
/// connection, graceful shutdown.
async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: axum::Router,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client must send its request headers within 30 s, or the connection
    // is closed (hyper's timeout needs a timer to take effect): a slow or
    // stalled client cannot hold a connection open forever.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    // Close the socket now, not when this function returns: a connection
    // attempted during the drain is then refused (the client retries
    // elsewhere) instead of completed by the kernel and reset unanswered.
    drop(listener);
    tracing::info!(
        listener = name,
        "shutting down: draining in-flight requests"
    );
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(grace_s = grace.as_secs(), "in-flight requests did not finish in time");
        }
    }
    Ok(())
}
