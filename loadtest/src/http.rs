//! The HTTP side: one keep-alive HTTP/1.1 connection per worker, made with
//! hyper's low-level `client::conn::http1` handshake.
//!
//! No pool and no client middleware: a worker owns its connection, sends one
//! request at a time on it, and reconnects only after an error. That is the
//! shape of `perf_analyzer` and `wrk` too, and it keeps the generator's own
//! cost per request small and predictable.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::driver::Caller;
use crate::payload::Payload;
use crate::recorder::Outcome;

/// A server's base URL, parsed once: `http://HOST:PORT[/prefix]`.
#[derive(Debug, Clone)]
pub struct Server {
    /// As given, for reports.
    pub url: String,
    addr: SocketAddr,
    authority: HeaderValue,
    /// Path prefix without a trailing slash (usually empty).
    prefix: String,
}

impl Server {
    /// Parses `url` and resolves its host once (so no request pays for DNS).
    pub async fn resolve(url: &str) -> anyhow::Result<Server> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("{url:?}: only http:// URLs are supported");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("{url:?} has no host"))?
            .clone();
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((authority.host(), port))
            .await
            .with_context(|| format!("cannot resolve {}", authority.host()))?
            .next()
            .with_context(|| format!("{} resolves to no address", authority.host()))?;
        Ok(Server {
            url: url.trim_end_matches('/').to_string(),
            addr,
            authority: HeaderValue::from_str(authority.as_str())?,
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `path` under this server's prefix, as a request target.
    fn target(&self, path: &str) -> anyhow::Result<Uri> {
        Ok(format!("{}{path}", self.prefix).parse()?)
    }

    /// `GET path` on a fresh connection: for readiness checks, not load.
    pub async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut sender = connect::<Empty<Bytes>>(self.addr).await?;
        let request = Request::get(self.target(path)?)
            .header(HOST, self.authority.clone())
            .body(Empty::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        Ok((status, response.into_body().collect().await?.to_bytes()))
    }
}

/// Everything a worker needs to send the inference request, shared by all
/// workers of a run.
#[derive(Debug)]
pub struct InferTarget {
    pub server: Server,
    /// The request target: `/v2/models/{m}[/versions/{v}]/infer`.
    path: Uri,
    /// Host, Content-Type and (binary) Inference-Header-Content-Length,
    /// built once and cloned per request.
    headers: HeaderMap,
    pub payload: Payload,
}

impl InferTarget {
    pub fn new(
        server: Server,
        model: &str,
        version: Option<&str>,
        payload: Payload,
    ) -> anyhow::Result<Arc<InferTarget>> {
        let path = match version {
            Some(v) => format!("/v2/models/{model}/versions/{v}/infer"),
            None => format!("/v2/models/{model}/infer"),
        };
        let mut headers = HeaderMap::new();
        headers.insert(HOST, server.authority.clone());
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(payload.content_type()),
        );
        if let Some(n) = payload.header_length {
            headers.insert(sluice_oip::HEADER_LENGTH_HEADER, HeaderValue::from(n));
        }
        Ok(Arc::new(InferTarget {
            path: server.target(&path)?,
            server,
            headers,
            payload,
        }))
    }

    /// The full URL of the infer endpoint, for reports.
    pub fn url(&self) -> String {
        format!(
            "http://{}{}",
            self.server.authority.to_str().unwrap_or("?"),
            self.path
        )
    }

    fn request(&self) -> Request<Full<Bytes>> {
        // Cloning the body is a reference count; hyper sets Content-Length
        // from the body's exact size.
        let mut request = Request::new(Full::new(self.payload.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.path.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }

    /// Sends the request once and checks that the answer is a 200 carrying a
    /// well-formed inference response (decoded with `sluice-oip`), so a
    /// wrong model name, input name or shape fails before a run starts
    /// instead of producing a report full of fast 400s. Returns the response
    /// body's size.
    pub async fn preflight(&self) -> anyhow::Result<usize> {
        let mut sender = connect::<Full<Bytes>>(self.server.addr).await?;
        let response = sender
            .send_request(self.request())
            .await
            .with_context(|| format!("POST {}", self.url()))?;
        let status = response.status();
        let header_length = response
            .headers()
            .get(sluice_oip::HEADER_LENGTH_HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let body = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            bail!(
                "POST {} answered {status}: {}",
                self.url(),
                String::from_utf8_lossy(&body[..body.len().min(500)])
            );
        }
        sluice_oip::decode_infer_response(body.clone(), header_length).with_context(|| {
            format!(
                "POST {} answered 200 but not an inference response",
                self.url()
            )
        })?;
        Ok(body.len())
    }
}

/// Opens a TCP connection (Nagle off, as every HTTP client does) and runs
/// the HTTP/1.1 handshake; the connection's I/O runs on a task of its own.
async fn connect<B>(addr: SocketAddr) -> anyhow::Result<SendRequest<B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes; either way
        // the worker notices on its next request.
        let _ = connection.await;
    });
    Ok(sender)
}

/// One worker's connection to an [`InferTarget`].
pub struct HttpCaller {
    target: Arc<InferTarget>,
    /// `None` before the first request and after any failure: the next
    /// request reconnects. Taken out for the duration of a request, so a
    /// request abandoned at its timeout drops its connection with it.
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl HttpCaller {
    pub fn new(target: Arc<InferTarget>) -> HttpCaller {
        HttpCaller {
            target,
            connection: None,
        }
    }
}

impl Caller for HttpCaller {
    async fn call(&mut self) -> Outcome {
        let mut sender = match self.connection.take() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(self.target.server.addr).await {
                Ok(s) => s,
                Err(_) => return Outcome::Transport,
            },
        };
        if sender.ready().await.is_err() {
            return Outcome::Transport;
        }
        let response = match sender.send_request(self.target.request()).await {
            Ok(r) => r,
            Err(_) => return Outcome::Transport,
        };
        let status = response.status();
        // Read the whole body: the response is not complete (and the
        // connection not reusable) until it is.
        if response.into_body().collect().await.is_err() {
            return Outcome::Transport;
        }
        self.connection = Some(sender);
        if status == StatusCode::OK {
            Outcome::Ok
        } else {
            Outcome::Status(status.as_u16())
        }
    }
}

#[cfg(test)]
mod tests {
    //! Real sockets on 127.0.0.1 and the real clock, for a fraction of a
    //! second; nothing here asserts on timing, only on what was counted.

    use std::time::Duration;

    use super::*;
    use crate::driver::{Load, Plan, drive};
    use crate::payload::{PayloadKind, encode, random_tensor};
    use crate::system::CpuProbe;

    fn payload(kind: PayloadKind) -> Payload {
        let tensor = random_tensor(sluice_tensor::DataType::Fp32, &[1, 4], 1).unwrap();
        encode("input", tensor, kind)
    }

    fn plan(load: Load) -> Plan {
        Plan {
            load,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
            progress: None,
            probe: CpuProbe { server_pid: None },
            // The real thing: a pacer thread on the real clock.
            pacing: crate::driver::Pacing::Thread,
        }
    }

    /// Starts the hello server in this runtime; returns its URL.
    async fn hello() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(crate::hello::serve(listener, std::future::pending()));
        url
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loads_a_real_server_over_keep_alive_connections() {
        let server = Server::resolve(&hello().await).await.unwrap();
        assert_eq!(server.get("/v2/health/ready").await.unwrap().0, 200);
        for kind in [PayloadKind::Json, PayloadKind::Binary] {
            let target = InferTarget::new(server.clone(), "m", Some("2"), payload(kind)).unwrap();
            assert!(target.url().ends_with("/v2/models/m/versions/2/infer"));
            assert_eq!(target.preflight().await.unwrap(), crate::hello::BODY.len());
            for load in [
                Load::Closed { concurrency: 4 },
                Load::Open {
                    rate: 200.0,
                    max_in_flight: 8,
                    max_backlog: 100,
                },
            ] {
                let make = |_| HttpCaller::new(target.clone());
                let r = drive(&plan(load), make).await.unwrap();
                assert!(r.recorder.ok > 0, "{load:?}");
                assert_eq!(r.recorder.errors(), 0, "{load:?}");
                if let Load::Open { .. } = load {
                    // Every request of the 200 ms window at 200/s is
                    // accounted for, however the machine was doing.
                    let accounted = r.recorder.completed() + r.dropped + r.unfinished;
                    assert_eq!(accounted, 40);
                    assert!(r.schedule_lag.is_some());
                }
            }
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_transport_errors_and_a_failed_preflight() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let server = Server::resolve(&url).await.unwrap();
        let target = InferTarget::new(server, "m", None, payload(PayloadKind::Json)).unwrap();
        assert!(target.preflight().await.is_err());
        let mut caller = HttpCaller::new(target);
        assert_eq!(caller.call().await, Outcome::Transport);
    }

    #[tokio::test]
    async fn only_http_urls_are_accepted() {
        assert!(Server::resolve("https://127.0.0.1:1").await.is_err());
        assert!(Server::resolve("not a url").await.is_err());
        let s = Server::resolve("http://127.0.0.1:9/prefix/").await.unwrap();
        assert_eq!(s.target("/v2").unwrap(), "/prefix/v2");
    }
}
