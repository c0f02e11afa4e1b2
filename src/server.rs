//! Listeners, connections, and graceful shutdown.

use std::convert::Infallible;
use std::fs;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, UnixListener};
use tokio::sync::{oneshot, watch};

use crate::access::{Peer, SharedPolicy};
use crate::clients::{ClientTokens, ClientsError};
use crate::config::{Config, UnixListen};
use crate::dump::{DumpError, Dumper};
use crate::forward::{Credential, Proxy, Shared};
use crate::ledger::{Ledger, LedgerError};
use crate::quota::Quotas;
use crate::telemetry::Telemetry;
use crate::tls::{Tls, TlsError};
use crate::upstream::{self, UpstreamError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("could not listen on {addr}: {error}")]
    Bind { addr: SocketAddr, error: io::Error },
    #[error("could not listen on unix:{path}: {error}")]
    BindUnix { path: PathBuf, error: io::Error },
    #[error("could not write --server-info {path}: {error}")]
    ServerInfo { path: String, error: io::Error },
    #[error("--client-tokens: {0}")]
    Clients(#[from] ClientsError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("could not listen on --metrics-listen {addr}: {error}")]
    Metrics { addr: SocketAddr, error: io::Error },
    #[error(transparent)]
    Dump(#[from] DumpError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// A started keyward: its addresses, and the means to stop it. Dropping it starts the graceful
/// shutdown.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    /// Where the Prometheus metrics are served, with --metrics-listen.
    pub metrics: Option<SocketAddr>,
    /// The unix sockets, removed when keyward stops.
    pub unix: Vec<SocketFile>,
    tls: Option<Tls>,
    policy: Arc<SharedPolicy>,
    telemetry: Option<Arc<Telemetry>>,
    shutdown: watch::Sender<bool>,
    /// One per worker thread, completed when the worker has stopped.
    stopped: Vec<oneshot::Receiver<()>>,
}

impl Running {
    /// Starts a graceful shutdown, as SIGTERM or `GET /shutdown` do.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// What SIGHUP re-reads.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            tls: self.tls.clone(),
            policy: self.policy.clone(),
            quotas: self.telemetry.as_ref().map(|t| t.quotas.clone()),
        }
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

/// Re-reads, on SIGHUP, the settings that can change while keyward runs.
#[derive(Clone)]
pub struct Reloader {
    tls: Option<Tls>,
    policy: Arc<SharedPolicy>,
    quotas: Option<Arc<Quotas>>,
}

impl Reloader {
    /// Puts a re-read configuration's access policy and quotas in force; connections and
    /// streams carry on. Settings that only take effect at start are reported.
    pub fn apply(&self, old: &Config, new: &Config) {
        self.policy.set(new.access.policy.clone());
        tracing::info!("{}", new.access.policy.describe());
        match &self.quotas {
            Some(quotas) => quotas.set_config(new.quotas.clone()),
            None if !new.quotas.is_empty() => tracing::warn!(
                "quotas take effect after a restart: keyward started without metrics, ledger or quotas"
            ),
            None => {}
        }
        let restart_only = [
            ("listen", old.listen != new.listen || old.unix != new.unix),
            ("upstream-url", old.upstream.uri != new.upstream.uri),
            (
                "client-tokens",
                old.access.client_tokens != new.access.client_tokens,
            ),
            ("usage-log", old.usage_log != new.usage_log),
            ("metrics-listen", old.metrics_listen != new.metrics_listen),
            (
                "tls-cert",
                old.tls.as_ref().map(|t| (&t.cert, &t.key))
                    != new.tls.as_ref().map(|t| (&t.cert, &t.key)),
            ),
        ];
        for (setting, changed) in restart_only {
            if changed {
                tracing::warn!(
                    setting,
                    "this setting changed; it takes effect at the next start"
                );
            }
        }
    }

    /// Re-reads the TLS certificate and key. On error the old ones stay in use.
    pub fn reload(&self) {
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate and key re-read"),
                Err(err) => tracing::error!(
                    error = %err,
                    "TLS certificate or key not usable; the ones read before stay in use"
                ),
            }
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
    let tokens = config
        .access
        .client_tokens
        .as_deref()
        .map(ClientTokens::open)
        .transpose()?
        .map(Arc::new);
    let tls = config.tls.as_ref().map(Tls::new).transpose()?;
    let telemetry = telemetry(config, &credential)?;
    let policy = Arc::new(SharedPolicy::new(config.access.policy.clone()));
    let telemetry_handle = telemetry.clone();
    let metrics = match (config.metrics_listen, &telemetry) {
        (Some(addr), Some(telemetry)) => {
            let metrics_err = |error| ServeError::Metrics { addr, error };
            let listener = bind(addr).map_err(metrics_err)?;
            let actual = listener.local_addr().map_err(metrics_err)?;
            Some((actual, listener, telemetry.clone()))
        }
        _ => None,
    };
    let metrics_addr = metrics.as_ref().map(|(addr, ..)| *addr);

    // The first socket of each address fixes its port (port 0 picks one); the other workers'
    // sockets join it.
    let mut addrs = Vec::with_capacity(config.listen.len());
    let mut per_worker: Vec<Vec<StdListener>> = (0..threads).map(|_| Vec::new()).collect();
    for &wanted in &config.listen {
        let bind_err = |error| ServeError::Bind {
            addr: wanted,
            error,
        };
        // Loopback listeners serve plain HTTP; others TLS unless --insecure-no-tls.
        let tls = tls.clone().filter(|_| !wanted.ip().is_loopback());
        let first = bind(wanted).map_err(bind_err)?;
        let actual = first.local_addr().map_err(bind_err)?;
        addrs.push(actual);
        per_worker[0].push(StdListener::Tcp(
            first.into_std().map_err(bind_err)?,
            tls.clone(),
        ));
        for worker in per_worker.iter_mut().skip(1) {
            let listener = bind(actual)
                .and_then(TcpListener::into_std)
                .map_err(bind_err)?;
            worker.push(StdListener::Tcp(listener, tls.clone()));
        }
    }
    let mut unix = Vec::with_capacity(config.unix.len());
    for spec in &config.unix {
        let bind_err = |error| ServeError::BindUnix {
            path: spec.path.clone(),
            error,
        };
        let (listener, file) = bind_unix(spec).map_err(bind_err)?;
        // Every worker accepts on the same socket.
        for worker in per_worker.iter_mut() {
            worker.push(StdListener::Unix(listener.try_clone().map_err(bind_err)?));
        }
        unix.push(file);
    }

    if let Some(path) = &config.server_info {
        write_server_info(path, &addrs, &unix, metrics_addr).map_err(|error| {
            ServeError::ServerInfo {
                path: path.display().to_string(),
                error,
            }
        })?;
    }

    let (shutdown, _) = watch::channel(false);
    if let Some((addr, listener, telemetry)) = metrics {
        tokio::spawn(serve_metrics(listener, telemetry, shutdown.subscribe()));
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    let mut stopped = Vec::with_capacity(threads);
    for (index, listeners) in per_worker.into_iter().enumerate() {
        let proxy = Proxy::new(
            config,
            upstream::build(config)?,
            Shared {
                credential: credential.clone(),
                dumper: dumper.clone(),
                policy: policy.clone(),
                tokens: tokens.clone(),
                telemetry: telemetry.clone(),
                shutdown: shutdown.clone(),
            },
        );
        let (done, finished) = oneshot::channel();
        let worker = Worker {
            listeners,
            proxy,
            builder: connection_builder(config),
            shutdown: shutdown.clone(),
            grace: config.limits.shutdown_grace,
            tls_timeout: config.limits.header_timeout,
        };
        std::thread::Builder::new()
            .name(format!("keyward-{index}"))
            .spawn(move || {
                worker.run();
                let _ = done.send(());
            })
            .map_err(|error| ServeError::Bind {
                addr: addrs
                    .first()
                    .copied()
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
                error,
            })?;
        stopped.push(finished);
    }

    let sockets: Vec<String> = unix.iter().map(|f| f.path.display().to_string()).collect();
    tracing::info!(
        listen = ?addrs,
        unix = ?sockets,
        upstream = %config.upstream.uri,
        threads,
        "keyward is listening"
    );
    tracing::info!("{}", config.access.policy.describe());
    if let Some(tokens) = &tokens {
        tracing::info!(
            clients = tokens.len(),
            "client tokens required: each request must carry one from --client-tokens"
        );
    }
    Ok(Running {
        addrs,
        metrics: metrics_addr,
        unix,
        tls,
        policy,
        telemetry: telemetry_handle,
        shutdown,
        stopped,
    })
}

/// A listening socket as bound, before a worker's runtime takes it.
enum StdListener {
    Tcp(std::net::TcpListener, Option<Tls>),
    Unix(std::os::unix::net::UnixListener),
}

/// A listening socket in a worker's runtime.
enum Listener {
    Tcp(TcpListener, Option<Tls>),
    Unix(UnixListener),
}

impl Listener {
    fn from_std(listener: StdListener) -> io::Result<Self> {
        Ok(match listener {
            StdListener::Tcp(listener, tls) => Listener::Tcp(TcpListener::from_std(listener)?, tls),
            StdListener::Unix(listener) => {
                listener.set_nonblocking(true)?;
                Listener::Unix(UnixListener::from_std(listener)?)
            }
        })
    }
}

/// One worker thread: its listeners, its copy of the proxy, and its share of the shutdown.
struct Worker {
    listeners: Vec<StdListener>,
    proxy: Proxy,
    builder: http1::Builder,
    shutdown: watch::Sender<bool>,
    grace: Duration,
    /// How long a TLS client may take over its handshake.
    tls_timeout: Duration,
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

enum Accepted {
    Tcp(tokio::net::TcpStream, Option<Tls>),
    Unix(tokio::net::UnixStream),
}

/// Accepts one connection and decides, from what the kernel says about its peer, whether it may
/// use keyward.
async fn accept(listener: &Listener, proxy: &Proxy) -> io::Result<(Accepted, Peer)> {
    match listener {
        Listener::Tcp(listener, tls) => {
            let (stream, remote) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            // A connection reset at once may not say its address; the listener's is the same
            // unless it listens on a wildcard address.
            let local = match stream.local_addr() {
                Ok(local) => local,
                Err(_) => listener.local_addr()?,
            };
            let peer = proxy.with_gate(|gate| gate.admit_tcp(local, remote));
            Ok((Accepted::Tcp(stream, tls.clone()), peer))
        }
        Listener::Unix(listener) => {
            let (stream, _) = listener.accept().await?;
            let uid = stream.peer_cred().map(|cred| cred.uid());
            let peer = proxy.with_gate(|gate| gate.admit_unix(uid));
            Ok((Accepted::Unix(stream), peer))
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

/// A unix socket keyward created; removed when keyward stops, if it is still keyward's.
pub struct SocketFile {
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && meta.dev() == self.dev
            && meta.ino() == self.ino
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates a unix socket at `spec.path` with its mode and group set before it appears there: it
/// is bound inside a private (0700) directory, then renamed into place. A stale socket (nobody
/// listening) is replaced; a live one, or anything that is not a socket, is an error.
fn bind_unix(spec: &UnixListen) -> io::Result<(std::os::unix::net::UnixListener, SocketFile)> {
    let path = &spec.path;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match StdUnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on this socket (is keyward already running?)",
                ));
            }
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "replacing a stale socket nobody listens on");
            }
            Err(err) => return Err(err),
        },
        Ok(meta) => {
            let what = if meta.file_type().is_symlink() {
                "a symbolic link"
            } else {
                "not a socket"
            };
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("the path exists and is {what}; keyward replaces only a stale socket"),
            ));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let private = tempfile::Builder::new()
        .prefix(".keyward-socket-")
        .tempdir_in(dir)?;
    let staged = private.path().join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&staged)?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(spec.mode))?;
    if let Some(gid) = spec.group {
        std::os::unix::fs::lchown(&staged, None, Some(gid))?;
    }
    fs::rename(&staged, path)?;
    let meta = fs::symlink_metadata(path)?;
    Ok((
        listener,
        SocketFile {
            path: path.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    ))
}

/// The metrics, the ledger and the quotas, when any of them is configured. Token counts for the
/// quotas are rebuilt from the last 24 hours of the ledger.
fn telemetry(
    config: &Config,
    credential: &Credential,
) -> Result<Option<Arc<Telemetry>>, ServeError> {
    if config.metrics_listen.is_none()
        && config.usage_log.is_none()
        && config.quotas.is_empty()
        && config.config_file.is_none()
    {
        return Ok(None);
    }
    let quotas = Arc::new(Quotas::new(config.quotas.clone()));
    let ledger = match &config.usage_log {
        Some(path) => {
            let ledger = Ledger::open(path)?;
            let started = std::time::Instant::now();
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
                - 86_400.0;
            let mut entries = 0u64;
            let stats = crate::ledger::read_since(path, since, |entry| {
                entries += 1;
                let at = std::time::UNIX_EPOCH + Duration::from_secs_f64(entry.ts.max(0.0));
                quotas.add_tokens(
                    &entry.client,
                    at,
                    entry.input_tokens.saturating_add(entry.output_tokens),
                );
            })?;
            tracing::info!(
                path = %path.display(),
                entries,
                lines_read = stats.lines,
                ms = started.elapsed().as_millis() as u64,
                "usage ledger: token counts of the last 24 hours rebuilt"
            );
            Some(ledger)
        }
        None => None,
    };
    let chatgpt = match credential {
        Credential::ChatGpt(backend) => Some(backend.tokens.clone()),
        Credential::ApiKey { .. } => None,
    };
    Ok(Some(Arc::new(Telemetry::new(ledger, quotas, chatgpt))))
}

/// Serves `GET /metrics` until shutdown.
async fn serve_metrics(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|&stop| stop) => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let telemetry = telemetry.clone();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let telemetry = telemetry.clone();
            async move {
                let response =
                    if req.uri().path() == "/metrics" && req.method() == http::Method::GET {
                        let mut response = http::Response::new(crate::body::ProxyBody::full(
                            bytes::Bytes::from(telemetry.encode()),
                        ));
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static(
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                        );
                        response
                    } else {
                        crate::error::ProxyError::NotFound {
                            path: req.uri().path().to_owned(),
                        }
                        .into_response()
                    };
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
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

/// `{"port":..,"pid":..,"listen":[..]}` (unix sockets as `unix:PATH`) and a newline, replacing `path` atomically: written to a
/// temporary file beside it, then renamed over it (a symlink at `path` is replaced, not followed).
pub fn write_server_info(
    path: &Path,
    addrs: &[SocketAddr],
    unix: &[SocketFile],
    metrics: Option<SocketAddr>,
) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    let info = serde_json::json!({
        "port": addrs.first().map(SocketAddr::port),
        "pid": std::process::id(),
        "listen": addrs
            .iter()
            .map(ToString::to_string)
            .chain(unix.iter().map(|f| format!("unix:{}", f.path.display())))
            .collect::<Vec<_>>(),
        "metrics": metrics.map(|addr| addr.to_string()),
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
