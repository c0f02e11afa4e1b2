//! Listeners, connections, and graceful shutdown.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};

use crate::config::Config;
use crate::dump::{DumpError, Dumper};
use crate::forward::{Credential, Proxy};
use crate::upstream::{self, UpstreamError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("could not listen on {addr}: {error}")]
    Bind { addr: SocketAddr, error: io::Error },
    #[error("could not write --server-info {path}: {error}")]
    ServerInfo { path: String, error: io::Error },
    #[error(transparent)]
    Dump(#[from] DumpError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// A started keyward: its addresses, and the means to stop it. Dropping it starts the graceful
/// shutdown.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    /// One per worker thread, completed when the worker has stopped.
    stopped: Vec<oneshot::Receiver<()>>,
}

impl Running {
    /// Starts a graceful shutdown, as SIGTERM or `GET /shutdown` do.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// A handle that can start the shutdown from elsewhere (signal handlers).
    pub fn shutdown_sender(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Waits until keyward has stopped: shutdown was asked for and the in-flight requests have
    /// finished or run out of grace.
    pub async fn wait(mut self) {
        for stopped in std::mem::take(&mut self.stopped) {
            let _ = stopped.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// Binds every listener, writes `--server-info`, and starts one worker thread per core.
///
/// Each worker runs a single-threaded runtime with its own listening sockets (`SO_REUSEPORT`
/// on the same addresses; the kernel spreads connections over them, and only lets sockets of
/// keyward's own user join) and its own upstream connection pool, so a request and its upstream
/// connection are served on one thread, without cross-thread wake-ups.
pub async fn start(config: &Config, credential: Credential) -> Result<Running, ServeError> {
    let dumper = config
        .dump
        .as_ref()
        .map(Dumper::new)
        .transpose()?
        .map(Arc::new);
    let threads = config.threads.max(1);

    // The first socket of each address fixes its port (port 0 picks one); the other workers'
    // sockets join it.
    let mut addrs = Vec::with_capacity(config.listen.len());
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..threads).map(|_| Vec::new()).collect();
    for &wanted in &config.listen {
        let bind_err = |error| ServeError::Bind {
            addr: wanted,
            error,
        };
        let first = bind(wanted).map_err(bind_err)?;
        let actual = first.local_addr().map_err(bind_err)?;
        addrs.push(actual);
        per_worker[0].push(first.into_std().map_err(bind_err)?);
        for worker in per_worker.iter_mut().skip(1) {
            worker.push(
                bind(actual)
                    .and_then(TcpListener::into_std)
                    .map_err(bind_err)?,
            );
        }
    }

    if let Some(path) = &config.server_info {
        write_server_info(path, &addrs).map_err(|error| ServeError::ServerInfo {
            path: path.display().to_string(),
            error,
        })?;
    }

    let (shutdown, _) = watch::channel(false);
    let mut stopped = Vec::with_capacity(threads);
    for (index, listeners) in per_worker.into_iter().enumerate() {
        let proxy = Proxy::new(
            config,
            upstream::build(config)?,
            credential.clone(),
            dumper.clone(),
            shutdown.clone(),
        );
        let (done, finished) = oneshot::channel();
        let worker = Worker {
            listeners,
            proxy,
            builder: connection_builder(config),
            shutdown: shutdown.clone(),
            grace: config.limits.shutdown_grace,
        };
        std::thread::Builder::new()
            .name(format!("keyward-{index}"))
            .spawn(move || {
                worker.run();
                let _ = done.send(());
            })
            .map_err(|error| ServeError::Bind {
                addr: addrs[0],
                error,
            })?;
        stopped.push(finished);
    }

    tracing::info!(
        listen = ?addrs,
        upstream = %config.upstream.uri,
        threads,
        "keyward is listening; every local user who can reach these addresses can use the credential"
    );
    Ok(Running {
        addrs,
        shutdown,
        stopped,
    })
}

/// One worker thread: its listeners, its copy of the proxy, and its share of the shutdown.
struct Worker {
    listeners: Vec<std::net::TcpListener>,
    proxy: Proxy,
    builder: http1::Builder,
    shutdown: watch::Sender<bool>,
    grace: Duration,
}

impl Worker {
    fn run(self) {
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
                match TcpListener::from_std(listener) {
                    Ok(listener) => accept_loops.push(tokio::spawn(accept_loop(
                        listener,
                        proxy.clone(),
                        self.builder.clone(),
                        graceful.clone(),
                        self.shutdown.subscribe(),
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

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

fn connection_builder(config: &Config) -> http1::Builder {
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
    listener: TcpListener,
    proxy: Arc<Proxy>,
    builder: http1::Builder,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|&stop| stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
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

/// `{"port":..,"pid":..,"listen":[..]}` and a newline, replacing `path` atomically: written to a
/// temporary file beside it, then renamed over it (a symlink at `path` is replaced, not followed).
pub fn write_server_info(path: &Path, addrs: &[SocketAddr]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    let info = serde_json::json!({
        "port": addrs.first().map(SocketAddr::port),
        "pid": std::process::id(),
        "listen": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .prefix(".keyward-server-info")
        .tempfile_in(dir)?;
    writeln!(file, "{info}")?;
    // Other users read the port from it, as with codex-responses-api-proxy.
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}
