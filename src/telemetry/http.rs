//! The HTTP endpoints on `telemetry.listen`: `/metrics` (Prometheus text
//! format), `/healthz` (alive) and `/readyz` (ready to work; 503 with a JSON
//! reason otherwise).
//!
//! Served with hyper 1 directly: three fixed paths need no router, and hyper 1
//! with hyper-util is already in the build (rumqttd's axum 0.7 sits on it), so
//! this adds no crate. axum 0.8 would have added a second axum.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Health, Metrics};

/// Why the endpoints could not be served.
#[derive(Debug, thiserror::Error)]
#[error("telemetry: cannot listen on {addr}: {source}")]
pub struct ListenError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Open connections served at once; more are closed on arrival.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may stay open in all (keep-alive included).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the endpoints answer from.
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// A bound listener; `serve` answers on it until `stop` fires.
pub struct Server {
    listener: TcpListener,
}

impl Server {
    /// Binds now, so a taken port is a start-up error.
    pub async fn bind(addr: SocketAddr) -> Result<Server, ListenError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ListenError { addr, source })?;
        Ok(Server { listener })
    }

    /// The address actually bound (port 0 picks a free one).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Answers requests until `stop` fires. At most [`MAX_CONNECTIONS`] at
    /// once, each given [`HEADER_TIMEOUT`] to send its request and
    /// [`IDLE_TIMEOUT`] in all: a scraper or probe needs one request, and a
    /// slow or idle client must not pin tasks and file descriptors.
    pub async fn serve(self, endpoints: Arc<Endpoints>, stop: CancellationToken) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, typically: back off rather than spin.
                        tracing::warn!(error = %e, "telemetry: accept failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Too many open connections: this one is closed at once.
                continue;
            };
            let endpoints = endpoints.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |request| {
                    let endpoints = endpoints.clone();
                    async move { Ok::<_, Infallible>(answer(&endpoints, &request)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    _ = tokio::time::sleep(IDLE_TIMEOUT) => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    }
}

fn answer(endpoints: &Endpoints, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => {
            // Refresh the readiness gauge so a scrape shows what /readyz says.
            endpoints.health.readiness();
            reply(
                StatusCode::OK,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                endpoints.metrics.encode(),
            )
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let readiness = endpoints.health.readiness();
            let status = if readiness.is_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "application/json", readiness.to_json())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Why a GET did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("only http:// URLs with a host are supported")]
    Unsupported,
    #[error("cannot connect: {0}")]
    Connect(#[from] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
}

/// One plain-HTTP GET: the status and the body as text. What the
/// `healthcheck` subcommand asks the endpoints with.
pub async fn get(url: &url::Url) -> Result<(u16, String), GetError> {
    use http_body_util::{BodyExt, Empty};
    if url.scheme() != "http" {
        return Err(GetError::Unsupported);
    }
    let host = url.host_str().ok_or(GetError::Unsupported)?;
    let port = url.port_or_known_default().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let request = Request::get(path)
        .header(hyper::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|_| GetError::Unsupported)?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
