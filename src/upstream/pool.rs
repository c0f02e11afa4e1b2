//! A worker's connections to the upstream API, and who drives them.
//!
//! An HTTP/1.1 connection has no task of its own: the task relaying a response polls the
//! connection that carries it, through the response's [`UpstreamBody`]. Bytes the upstream sent are read, decoded and handed
//! to the client in one task poll, and events that arrived together leave together — hyper's
//! server gathers the frames that are ready into one `writev`, where a connection task of its
//! own would hand them over one at a time and wake the relaying task for each. When the response
//! is done, the connection goes back to the pool for the next request.
//!
//! HTTP/2 (when TLS negotiates it) multiplexes one connection per worker, driven by a task of its
//! own as h2 needs; its response bodies are read straight from h2's buffers by the relaying task.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;

use parking_lot::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_service::Service;

use crate::upstream::{BoxError, Connector};

/// Idle connections older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many idle HTTP/1.1 connections are kept per worker.
const MAX_IDLE: usize = 256;

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
/// Boxed: the connection's state is large, and leases move.
type H1Connection<B> = Box<http1::Connection<Io, B>>;

/// What a request body sent upstream must be: bytes, failing with any error, movable between
/// tasks. The proxy's body type fills it in.
pub trait Outgoing:
    http_body::Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static
{
}

impl<T> Outgoing for T where
    T: http_body::Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static
{
}

/// Why a request did not get a response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("could not connect to the upstream: {0}")]
    Connect(#[source] BoxError),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// One worker's connections to the upstream.
pub struct Pool<B: Outgoing> {
    connector: HttpsConnector<Connector>,
    /// The upstream's full URL: what the connector takes, and the target of a request that
    /// names none.
    uri: Uri,
    /// `Host` for HTTP/1.1.
    host: HeaderValue,
    /// Oldest first: connections are checked in at the back and reused from the back.
    idle: Mutex<VecDeque<Idle<B>>>,
    h2: Mutex<Option<http2::SendRequest<B>>>,
}

struct Idle<B: Outgoing> {
    sender: http1::SendRequest<B>,
    connection: H1Connection<B>,
    since: Instant,
}

pin_project_lite::pin_project! {
    /// A response body from the upstream. Polling it drives the HTTP/1.1 connection it arrives
    /// on; when it has ended, the connection goes back to the pool. Dropped before its end, it
    /// closes the connection (the upstream sees the request abandoned).
    pub struct UpstreamBody<B: Outgoing> {
        #[pin]
        inner: Incoming,
        lease: Option<Lease<B>>,
    }
}

impl<B: Outgoing> http_body::Body for UpstreamBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        if let Some(lease) = this.lease.as_mut() {
            lease.poll_connection(cx);
        }
        let polled = this.inner.as_mut().poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            // A sized body is not polled again once its last byte is out.
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                *this.lease = None;
                false
            }
            Poll::Pending => false,
        };
        if ended && let Some(lease) = this.lease.take() {
            lease.release(cx);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An HTTP/1.1 connection carrying one exchange, polled whenever the response body is.
struct Lease<B: Outgoing> {
    sender: http1::SendRequest<B>,
    /// `None` once the connection has finished (closed or failed).
    connection: Option<H1Connection<B>>,
    pool: Arc<Pool<B>>,
}

impl<B: Outgoing> Pool<B> {
    /// Whether requests to `uri` go through this pool (the same scheme, host and port).
    pub fn serves(&self, uri: &Uri) -> bool {
        uri.scheme() == self.uri.scheme() && uri.authority() == self.uri.authority()
    }

    pub fn new(connector: HttpsConnector<Connector>, uri: Uri) -> Self {
        Self {
            connector,
            host: host_header(&uri),
            uri,
            idle: Mutex::new(VecDeque::new()),
            h2: Mutex::new(None),
        }
    }

    /// Sends `req` and waits for the response head. The request's path and query are the
    /// target (the scheme and host are always the upstream's); a request without a path goes
    /// to the upstream URL itself.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<B>,
    ) -> Result<Response<UpstreamBody<B>>, SendError> {
        let (response, lease) = self.send_on_some_connection(req).await?;
        Ok(response.map(|inner| UpstreamBody { inner, lease }))
    }

    async fn send_on_some_connection(
        self: &Arc<Self>,
        req: Request<B>,
    ) -> Result<(Response<Incoming>, Option<Lease<B>>), SendError> {
        let mut req = req;
        *req.uri_mut() = self.full_uri(req.uri());
        if let Some(sender) = self.h2_sender() {
            return Ok((Box::pin(self.send_h2(sender, req)).await?, None));
        }
        // HTTP/1.1 takes the path and query as the target, the host in `Host`.
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        let full = std::mem::replace(req.uri_mut(), target);
        req.headers_mut().insert(HOST, self.host.clone());
        // A reused connection the upstream closed while it sat idle hands the request back
        // unsent; it then goes on the next one, or on a new connection.
        while let Some(mut lease) = self.reuse().await {
            let sending = lease.sender.try_send_request(req);
            let sent = lease.drive(sending).await;
            match sent {
                Ok(response) => return Ok((response, Some(lease))),
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(failed.into_error().into()),
                },
            }
        }
        // Boxed: connecting is rare, and its future is large.
        match Box::pin(self.connect()).await? {
            Fresh::Http2(sender) => {
                req.headers_mut().remove(HOST);
                *req.uri_mut() = full;
                Ok((Box::pin(self.send_h2(sender, req)).await?, None))
            }
            Fresh::Http1(mut lease) => {
                let sending = lease.sender.send_request(req);
                let response = lease.drive(sending).await?;
                Ok((response, Some(lease)))
            }
        }
    }

    /// Sends on the worker's HTTP/2 connection: the target is the whole URL (h2 carries the
    /// authority itself).
    async fn send_h2(
        &self,
        mut sender: http2::SendRequest<B>,
        req: Request<B>,
    ) -> Result<Response<Incoming>, SendError> {
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }

    /// The upstream's scheme and host with the request's path and query; the upstream URL itself
    /// for a request that names no path.
    fn full_uri(&self, requested: &Uri) -> Uri {
        let Some(path) = requested
            .path_and_query()
            .filter(|_| requested.path() != "/")
        else {
            return self.uri.clone();
        };
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = Some(path.clone());
        Uri::from_parts(parts).unwrap_or_else(|_| self.uri.clone())
    }

    /// The worker's HTTP/2 connection, if one is open.
    fn h2_sender(&self) -> Option<http2::SendRequest<B>> {
        let mut h2 = self.h2.lock();
        if h2.as_ref().is_some_and(|sender| sender.is_closed()) {
            *h2 = None;
        }
        h2.clone()
    }

    /// The most recently used idle connection that is still open.
    async fn reuse(self: &Arc<Self>) -> Option<Lease<B>> {
        loop {
            let idle = {
                let mut idle = self.idle.lock();
                evict_expired(&mut idle, Instant::now());
                idle.pop_back()?
            };
            let mut lease = Lease {
                sender: idle.sender,
                connection: Some(idle.connection),
                pool: self.clone(),
            };
            // One poll notices a close the upstream sent while the connection sat idle.
            poll_fn(|cx| {
                lease.poll_connection(cx);
                Poll::Ready(())
            })
            .await;
            if lease.connection.is_some() && lease.sender.is_ready() {
                return Some(lease);
            }
        }
    }

    async fn connect(self: &Arc<Self>) -> Result<Fresh<B>, SendError> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(SendError::Connect)?;
        let io = connector
            .call(self.uri.clone())
            .await
            .map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .adaptive_window(true)
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "HTTP/2 connection to the upstream ended");
                }
            });
            *self.h2.lock() = Some(sender.clone());
            return Ok(Fresh::Http2(sender));
        }
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
        Ok(Fresh::Http1(Lease {
            sender,
            connection: Some(Box::new(connection)),
            pool: self.clone(),
        }))
    }

    fn check_in(&self, sender: http1::SendRequest<B>, connection: H1Connection<B>) {
        let mut idle = self.idle.lock();
        let now = Instant::now();
        evict_expired(&mut idle, now);
        if idle.len() >= MAX_IDLE {
            // The oldest goes: the newest are the likeliest still open at the upstream.
            idle.pop_front();
        }
        idle.push_back(Idle {
            sender,
            connection,
            since: now,
        });
    }
}

/// Closes the connections idle past [`IDLE_TIMEOUT`]: they are at the front, so only those are
/// looked at.
fn evict_expired<B: Outgoing>(idle: &mut VecDeque<Idle<B>>, now: Instant) {
    while idle
        .front()
        .is_some_and(|conn| now.duration_since(conn.since) >= IDLE_TIMEOUT)
    {
        idle.pop_front();
    }
}

enum Fresh<B: Outgoing> {
    Http1(Lease<B>),
    Http2(http2::SendRequest<B>),
}

impl<B: Outgoing> Lease<B> {
    /// Lets the connection work: write the request body, read and decode what the upstream sent.
    fn poll_connection(&mut self, cx: &mut Context<'_>) {
        if let Some(connection) = self.connection.as_mut()
            && Pin::new(connection).poll(cx).is_ready()
        {
            // Closed or failed; an error reaches the response (or its body) as well.
            self.connection = None;
        }
    }

    /// The response body has ended: the connection goes back to the pool if it can carry
    /// another request.
    fn release(mut self, cx: &mut Context<'_>) {
        self.poll_connection(cx);
        if let Some(connection) = self.connection.take()
            && self.sender.is_ready()
        {
            self.pool.check_in(self.sender, connection);
        }
    }

    /// Runs `sending` (a request on this connection) while driving the connection.
    async fn drive<F: Future>(&mut self, sending: F) -> F::Output {
        let mut sending = pin!(sending);
        poll_fn(|cx| {
            self.poll_connection(cx);
            sending.as_mut().poll(cx)
        })
        .await
    }
}

/// `Host` for the upstream URL: the host, and the port unless it is the scheme's default.
fn host_header(uri: &Uri) -> HeaderValue {
    let host = uri.host().unwrap_or_default();
    let default_port = match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    let value = match uri.port_u16() {
        Some(port) if Some(port) != default_port => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_keeps_only_a_port_that_is_not_the_default() {
        let host = |s: &str| host_header(&s.parse().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(
            host("https://api.openai.com/v1/responses"),
            "api.openai.com"
        );
        assert_eq!(
            host("https://api.openai.com:443/v1/responses"),
            "api.openai.com"
        );
        assert_eq!(host("http://127.0.0.1:8080/v1/responses"), "127.0.0.1:8080");
        assert_eq!(host("http://[::1]:80/v1/responses"), "[::1]");
        assert_eq!(host("https://example.com:8443/x"), "example.com:8443");
    }
}
