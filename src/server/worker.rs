//! A worker thread: its runtime, its accept loops, HTTP/1.1 on each connection, and the drain
//! at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::access::gate::Peer;
use crate::config::Config;
use crate::proxy::handler::Proxy;
use crate::server::listen::{Accepted, Listener, StdListener, accept};

/// One worker thread: its listeners, its copy of the proxy, and its share of the shutdown.
pub(crate) struct Worker {
    pub(crate) listeners: Vec<StdListener>,
    pub(crate) proxy: Proxy,
    pub(crate) builder: http1::Builder,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) grace: Duration,
    /// How long a TLS client may take over its handshake.
    pub(crate) tls_timeout: Duration,
}

impl Worker {
    pub(crate) fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                tracing::error!(error = %err, "could not start a worker's runtime");
                return;
            }
        };
        runtime.block_on(async move {
            let proxy = Arc::new(self.proxy);
            let graceful = Arc::new(GracefulShutdown::new());
            let mut accept_loops = Vec::with_capacity(self.listeners.len());
            for listener in self.listeners {
                match Listener::from_std(listener) {
                    Ok(listener) => accept_loops.push(tokio::spawn(accept_loop(
                        listener,
                        proxy.clone(),
                        self.builder.clone(),
                        graceful.clone(),
                        self.shutdown.subscribe(),
                        self.tls_timeout,
                    ))),
                    Err(err) => {
                        tracing::error!(error = %err, "a worker could not use its listener")
                    }
                }
            }
            let mut stop = self.shutdown.subscribe();
            let _ = stop.wait_for(|&stop| stop).await;
            for accept in accept_loops {
                let _ = accept.await;
            }
            drop(proxy);
            // Every accept loop has ended, so this is the last reference.
            if let Ok(graceful) = Arc::try_unwrap(graceful) {
                drain(graceful, self.grace).await;
            }
        });
    }
}

pub(crate) fn connection_builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.limits.header_timeout)
        // keyward answers heads over --max-headers with its own JSON 431; hyper's bare 431 is the
        // backstop for heads far beyond it.
        .max_buf_size(config.limits.max_headers.saturating_mul(2).max(16 * 1024))
        .keep_alive(true);
    builder
}

async fn accept_loop(
    listener: Listener,
    proxy: Arc<Proxy>,
    builder: http1::Builder,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
    tls_timeout: Duration,
) {
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener, &proxy) => accepted,
            _ = stop.wait_for(|&stop| stop) => return,
        };
        let (connection, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = Arc::new(peer);
        match connection {
            Accepted::Tcp(stream, None) => {
                tokio::spawn(serve(stream, peer, &proxy, &builder, &graceful));
            }
            Accepted::Tcp(stream, Some(tls)) => {
                let acceptor = tls.acceptor().clone();
                let (proxy, builder, graceful) = (proxy.clone(), builder.clone(), graceful.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(tls_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve(stream, peer, &proxy, &builder, &graceful).await,
                        Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
            Accepted::Unix(stream) => {
                tokio::spawn(serve(stream, peer, &proxy, &builder, &graceful));
            }
        }
    }
}

/// Serves HTTP/1.1 on one connection until it closes.
fn serve<I>(
    io: I,
    peer: Arc<Peer>,
    proxy: &Arc<Proxy>,
    builder: &http1::Builder,
    graceful: &GracefulShutdown,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let proxy = proxy.clone();
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
    });
    let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
    async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "connection ended with an error");
        }
    }
}

/// Lets in-flight requests finish, up to `grace`.
async fn drain(graceful: GracefulShutdown, grace: Duration) {
    let open = graceful.count();
    if open > 0 {
        tracing::info!(
            connections = open,
            grace_s = grace.as_secs_f64(),
            "shutting down: letting in-flight requests finish"
        );
    }
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("shut down"),
        Err(_) => tracing::warn!(
            "shut down with requests still running: the grace period (--shutdown-grace) ran out"
        ),
    }
}
