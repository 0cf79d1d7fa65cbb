//! The broker's HTTP side: a small router and a bounded HTTP/1.1 server on
//! hyper. It serves `/metrics` and `/health` (routes made in `metrics.rs`);
//! REST APIs (Kafka Connect's, a web console) are more routes on a `Router`.
//!
//! Every connection is bounded: how many are served at once, the size of a
//! request head, the time to send one (which is also how long a kept-alive
//! connection may sit idle), and a connection's whole life. The server stops
//! with the broker: it stops accepting, lets each connection finish the
//! request it is on, and waits for them at most `DRAIN_TIME`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub type HttpResponse = Response<Full<Bytes>>;
type Handler = Rc<dyn Fn(Request<Incoming>) -> LocalBoxFuture<'static, HttpResponse>>;

/// After the broker's shutdown, how long open connections get to finish.
const DRAIN_TIME: Duration = Duration::from_secs(5);
/// Sent to a connection over `max_connections`, which is then closed.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n";

/// What one client can hold of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Request line plus headers; a larger head is answered 431.
    pub max_header_bytes: usize,
    /// To send a request's head, and so also the longest a kept-alive
    /// connection may sit idle between requests; then it is closed.
    pub header_read_timeout: Duration,
    /// A connection's whole life, whatever it does (a client reading a
    /// response slowly included); then it is closed after its current request.
    pub max_connection_time: Duration,
}

impl Default for Limits {
    /// Scrapers and health checks: a few connections, small heads, quick requests.
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            max_header_bytes: 8 * 1024,
            header_read_timeout: Duration::from_secs(5),
            max_connection_time: Duration::from_secs(60),
        }
    }
}

/// Who may use the server: TLS (its certificates; no client certificates
/// are asked for) and a bearer token every request must carry.
#[derive(Clone, Default)]
pub struct Access {
    pub tls: Option<Arc<crate::security::tls::Tls>>,
    pub token: Option<Arc<str>>,
}

/// The first line of a token file, which must not be empty.
pub fn read_token(path: &std::path::Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} holds no token", path.display())));
    }
    Ok(token)
}

/// Whether `request` bears `token` (compared without an early exit).
fn bears(request: &Request<Incoming>, token: &str) -> bool {
    let Some(presented) = request.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(presented) = presented.strip_prefix("Bearer ") else { return false };
    crate::security::same_secret(presented.trim().as_bytes(), token.as_bytes())
}

/// Routes requests by method and exact path (the query is ignored). An
/// unknown path gets 404; a known path with another method gets 405 and
/// `Allow`. HEAD is served by the GET route (hyper sends no body for it).
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<(Method, &'static str, Handler)>,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    pub fn route<F, Fut>(mut self, method: Method, path: &'static str, handler: F) -> Router
    where
        F: Fn(Request<Incoming>) -> Fut + 'static,
        Fut: Future<Output = HttpResponse> + 'static,
    {
        self.routes.push((method, path, Rc::new(move |req| Box::pin(handler(req)))));
        self
    }

    pub fn get<F, Fut>(self, path: &'static str, handler: F) -> Router
    where
        F: Fn(Request<Incoming>) -> Fut + 'static,
        Fut: Future<Output = HttpResponse> + 'static,
    {
        self.route(Method::GET, path, handler)
    }

    fn dispatch(&self, req: Request<Incoming>) -> LocalBoxFuture<'static, HttpResponse> {
        let method = if req.method() == Method::HEAD { Method::GET } else { req.method().clone() };
        let on_path: Vec<&(Method, &'static str, Handler)> =
            self.routes.iter().filter(|(_, path, _)| *path == req.uri().path()).collect();
        if let Some((_, _, handler)) = on_path.iter().find(|(m, _, _)| *m == method) {
            return handler(req);
        }
        let response = if on_path.is_empty() {
            let paths: Vec<&str> = self.routes.iter().map(|(_, path, _)| *path).collect();
            text(StatusCode::NOT_FOUND, format!("not found; served here: {}\n", paths.join(", ")))
        } else {
            let allowed: Vec<&str> = on_path.iter().map(|(m, _, _)| m.as_str()).collect();
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, format!("use {}\n", allowed.join(", ")));
            if let Ok(allow) = HeaderValue::from_str(&allowed.join(", ")) {
                response.headers_mut().insert(ALLOW, allow);
            }
            response
        };
        Box::pin(std::future::ready(response))
    }
}

/// A response with a body of the given content type.
pub fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    respond(status, "text/plain; charset=utf-8", body)
}

/// Serves `router` on `addr` until `stop` turns true, then drains. Runs on
/// the current actix system (handlers need not be `Send`).
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    limits: Limits,
    access: Access,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, tls = access.tls.is_some(), token = access.token.is_some(), "HTTP listening");
    let router = Rc::new(router);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // A fresh socket's send buffer takes this at once; never wait on it.
            let _ = stream.try_write(BUSY);
            continue;
        };
        let (router, stop, access) = (router.clone(), stop.clone(), access.clone());
        actix::spawn(async move {
            match &access.tls {
                None => serve_connection(stream, router, limits, access.token, stop).await,
                Some(tls) => {
                    let handshake = tls.acceptor(false).accept(stream);
                    match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => serve_connection(stream, router, limits, access.token, stop).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "HTTPS handshake failed"),
                        Err(_) => tracing::debug!("HTTPS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    // Every connection holds a slot: all slots back means all connections ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(DRAIN_TIME, slots.acquire_many(all)).await;
    tracing::info!(addr = %addr, drained = drained.is_ok(), "HTTP stopped");
    Ok(())
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    stream: S,
    router: Rc<Router>,
    limits: Limits,
    token: Option<Arc<str>>,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| {
        let answer = match &token {
            Some(token) if !bears(&req, token) => {
                let mut refused = text(StatusCode::UNAUTHORIZED, "a bearer token is required (Authorization: Bearer)\n");
                refused.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Box::pin(std::future::ready(refused))
            }
            _ => router.dispatch(req),
        };
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .max_buf_size(limits.max_header_bytes.max(8 * 1024))
        .max_header_size(limits.max_header_bytes)
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => Some(ended),
        _ = stop.wait_for(|stopped| *stopped) => None,
        _ = tokio::time::sleep(limits.max_connection_time) => None,
    };
    let ended = match ended {
        Some(ended) => ended,
        None => {
            // Finish the request in progress (an idle connection closes at once).
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(DRAIN_TIME, conn.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}
