//! A worker thread: its runtime, its accept loops, HTTP/1.1 on each connection, and the drain
//! at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::access::gate::Peer;
use crate::config::Config;
use crate::proxy::handler::Proxy;
use crate::proxy::open::OpenCount;
use crate::server::caps::{ConnectionCaps, Full, Slot};
use crate::server::listen::{Accepted, Listener, StdListener, accept};

/// One worker thread: its listeners, its copy of the proxy, and its share of the shutdown.
pub(crate) struct Worker {
    pub(crate) listeners: Vec<StdListener>,
    pub(crate) proxy: Proxy,
    pub(crate) builder: http1::Builder,
    /// For connections the access policy refused: one request, a short header budget, a small
    /// buffer; the answer is a 403.
    pub(crate) refused_builder: http1::Builder,
    pub(crate) caps: Arc<ConnectionCaps>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) grace: Duration,
    /// How long a TLS client may take over its handshake.
    pub(crate) tls_timeout: Duration,
}

impl Worker {
    /// Serves until shutdown; whether every request finished within the grace period.
    pub(crate) fn run(self) -> bool {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                tracing::error!(error = %err, "could not start a worker's runtime");
                return true;
            }
        };
        runtime.block_on(async move {
            let proxy = Arc::new(self.proxy);
            let connections = OpenCount::default();
            let mut accept_loops = Vec::with_capacity(self.listeners.len());
            for listener in self.listeners {
                match Listener::from_std(listener) {
                    Ok(listener) => accept_loops.push(tokio::spawn(accept_loop(
                        listener,
                        Serving {
                            proxy: proxy.clone(),
                            builder: self.builder.clone(),
                            refused_builder: self.refused_builder.clone(),
                            caps: self.caps.clone(),
                            connections: connections.clone(),
                            stop: self.shutdown.subscribe(),
                            tls_timeout: self.tls_timeout,
                        },
                        self.shutdown.subscribe(),
                    ))),
                    Err(err) => {
                        tracing::error!(error = %err, "a worker could not use its listener")
                    }
                }
            }
            // tokio's timer driver wakes its own thread through an eventfd (one write, one more
            // epoll_wait) whenever a timer is set to fire before the wake-up it planned when it
            // last slept. On a keep-alive connection that was every request: hyper's header-read
            // timer, set after the response, came before the planned wake of the response's own
            // 10-minute timer. A timer that fires every second keeps the planned wake within a
            // second, so the per-request timers (seconds to minutes) never write the eventfd
            // (bench/results/2026-12-03-timer-wakeups.md).
            let heartbeat = tokio::spawn(async {
                let mut tick = tokio::time::interval(HEARTBEAT);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                }
            });
            let mut stop = self.shutdown.subscribe();
            let _ = stop.wait_for(|&stop| stop).await;
            heartbeat.abort();
            for accept in accept_loops {
                let _ = accept.await;
            }
            let sockets = proxy.open_websockets();
            drop(proxy);
            let deadline = tokio::time::Instant::now() + self.grace;
            // Every accept loop has ended, so this is the last reference.
            let drained = drain(&connections, deadline).await;
            // WebSockets close when idle and once their running turn ends, within the grace.
            let closed = tokio::time::timeout_at(deadline, sockets.all_closed())
                .await
                .is_ok();
            drained && closed
        })
    }
}

pub(crate) fn connection_builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.limits.header_timeout)
        // keyward answers heads over --max-headers with its own JSON 431; hyper's bare 431 is the
        // backstop for heads beyond it plus a little. This also bounds what an unfinished head
        // can pin: --max-headers and 8 KiB, not hyper's default of 400 KiB.
        .max_buf_size(head_buffer(config.limits.max_headers))
        .keep_alive(true);
    builder
}

/// hyper's read buffer for a request head: --max-headers and 8 KiB (hyper's least is 8 KiB).
fn head_buffer(max_headers: usize) -> usize {
    max_headers.saturating_add(8 * 1024)
}

/// For a connection the policy refused: its first request gets the 403, within a short budget
/// and a small buffer, and the connection is closed.
pub(crate) fn refused_connection_builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.limits.header_timeout.min(REFUSED_HEADER_TIMEOUT))
        .max_buf_size(head_buffer(0))
        .keep_alive(false);
    builder
}

/// How often a worker's heartbeat timer fires (see [`Worker::run`]).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a refused connection may take over the request head its 403 answers.
const REFUSED_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// What an accept loop hands each connection.
#[derive(Clone)]
struct Serving {
    proxy: Arc<Proxy>,
    builder: http1::Builder,
    refused_builder: http1::Builder,
    caps: Arc<ConnectionCaps>,
    /// The connections open, which shutdown waits for; and the signal to end them.
    connections: OpenCount,
    stop: watch::Receiver<bool>,
    /// How long a TLS client may take over its handshake.
    tls_timeout: Duration,
}

async fn accept_loop(listener: Listener, serving: Serving, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener, &serving.proxy) => accepted,
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
        let slot = match serving.caps.take(peer.uid()) {
            Ok(slot) => slot,
            Err(full) => {
                turn_away(connection, full);
                continue;
            }
        };
        let peer = Arc::new(peer);
        match connection {
            Accepted::Tcp(stream, None) => {
                tokio::spawn(serve(stream, peer, slot, &serving));
            }
            Accepted::Tcp(stream, Some(tls)) => {
                let acceptor = tls.acceptor().clone();
                let serving = serving.clone();
                tokio::spawn(async move {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(serving.tls_timeout, handshake).await {
                        Ok(Ok(stream)) => serve(stream, peer, slot, &serving).await,
                        Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
            Accepted::Unix(stream) => {
                tokio::spawn(serve(stream, peer, slot, &serving));
            }
        }
    }
}

/// Answers a connection over a cap with a 503 and closes it, without waiting for anything: the
/// answer goes out in one non-blocking write (a TLS connection is just closed).
fn turn_away(connection: Accepted, full: Full) {
    tracing::debug!(?full, "connection turned away at accept");
    let answer = full.response();
    match connection {
        Accepted::Tcp(stream, None) => {
            let _ = stream.try_write(&answer);
        }
        Accepted::Unix(stream) => {
            let _ = stream.try_write(&answer);
        }
        Accepted::Tcp(_, Some(_)) => {}
    }
}

/// Serves HTTP/1.1 on one connection until it closes; `slot` is given back then.
fn serve<I>(
    io: I,
    peer: Arc<Peer>,
    slot: Slot,
    serving: &Serving,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = match peer.refusal {
        Some(_) => &serving.refused_builder,
        None => &serving.builder,
    };
    let proxy = serving.proxy.clone();
    // Each request's future is boxed on its own: hyper keeps the future's slot for the whole
    // connection, so inline, the several kilobytes a request's state took stayed with every
    // held stream (and were copied into the slot for each request). The box is allocated
    // first so that the future is built in it rather than built and then copied whole.
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        let peer = peer.clone();
        let slot = Box::new_uninit();
        Box::into_pin(Box::write(slot, async move {
            Ok::<_, Infallible>(proxy.handle(req, peer).await)
        }))
    });
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let open = serving.connections.enter();
    let mut stop = serving.stop.clone();
    async move {
        let mut connection = std::pin::pin!(connection);
        // At shutdown: finish the request in flight, take no other on this connection.
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            () = async { let _ = stop.wait_for(|&stop| stop).await; } => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(err) = ended {
            tracing::debug!(error = %err, "connection ended with an error");
        }
        drop(open);
        drop(slot);
    }
}

/// Lets this worker's in-flight requests finish, until `deadline`; whether they all did.
async fn drain(connections: &OpenCount, deadline: tokio::time::Instant) -> bool {
    let open = connections.count();
    if open > 0 {
        tracing::debug!(
            connections = open,
            "a worker waits for its open connections"
        );
    }
    tokio::time::timeout_at(deadline, connections.all_closed())
        .await
        .is_ok()
}
