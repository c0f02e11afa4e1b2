//! Starting keyward: every listener bound, `--server-info` written, one worker thread per core.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::access::clients::ClientTokens;
use crate::access::gate::SharedPolicy;
use crate::access::owners::Owners;
use crate::config::ConfigError;
use crate::config::state::SharedState;
use crate::config::{ClientTokenSource, Config, UnixListen};
use crate::proxy::credential::Credential;
use crate::proxy::credentials::Credentials;
use crate::proxy::dump::Dumper;
use crate::proxy::handler::{Proxy, Shared};
use crate::server::caps::ConnectionCaps;
pub use crate::server::error::ServeError;
use crate::server::listen::{SocketFile, StdListener, bind, bind_unix, write_server_info};
use crate::server::metrics::{serve_metrics, telemetry};
use crate::server::reload::Reloader;
use crate::server::systemd::{Activated, ActivationError};
use crate::server::tls::Tls;
use crate::server::worker::{Worker, connection_builder, refused_connection_builder};
use crate::state::clients::SharedClients;
use crate::state::quota::QuotaExchange;
use crate::telemetry::metrics::Telemetry;
use crate::upstream;
use crate::upstream::state_db::StateDb;

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
    stopped: Vec<oneshot::Receiver<bool>>,
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
        let _ = self.shutdown.subscribe().wait_for(|&stop| stop).await;
        tracing::info!("shutting down: letting in-flight requests finish (--shutdown-grace)");
        let mut all_finished = true;
        for stopped in std::mem::take(&mut self.stopped) {
            all_finished &= stopped.await.unwrap_or(true);
        }
        if all_finished {
            tracing::info!("shut down");
        } else {
            tracing::warn!(
                "shut down with requests still running: the grace period (--shutdown-grace) ran out"
            );
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
/// Each worker runs a single-threaded runtime accepting on the same listening sockets (one per
/// address, which no other process can join: a second keyward fails with "already in use") and
/// has its own upstream connection pool, so a request and its upstream connection are served on
/// one thread, without cross-thread wake-ups.
pub async fn start(config: &Config, credentials: Credentials) -> Result<Running, ServeError> {
    let credentials = Arc::new(credentials);
    let dumper = config
        .dump
        .as_ref()
        .map(Dumper::new)
        .transpose()?
        .map(Arc::new);
    let threads = config.threads.max(1);
    let state_db = match &config.state {
        Some(shared) => Some(open_state(shared).await?),
        None => None,
    };
    let (tokens, shared_tokens) = match (&config.access.client_tokens, &state_db) {
        (Some(ClientTokenSource::File(path)), _) => {
            (Some(Arc::new(ClientTokens::open(path)?)), None)
        }
        (Some(ClientTokenSource::State), Some(db)) => {
            let tokens = shared_client_tokens(db).await?;
            (Some(tokens.clone()), Some(tokens))
        }
        (Some(ClientTokenSource::State), None) | (None, _) => (None, None),
    };
    let tls = config.tls.as_ref().map(Tls::new).transpose()?;
    let owners = config.ownership.as_ref().map(Owners::open).transpose()?;
    let telemetry = telemetry(config, &credentials, state_db.as_ref(), owners.as_ref())?;
    if let Some(telemetry) = &telemetry {
        credentials.set_quotas(telemetry.quotas.clone());
    }
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

    // Sockets systemd handed over (socket activation) replace the listeners of the settings:
    // systemd owns the addresses then.
    let activated = super::systemd::take_listen_fds()?;
    let (own_listen, own_unix): (&[SocketAddr], &[UnixListen]) = if activated.is_empty() {
        (&config.listen, &config.unix)
    } else {
        if !config.listen_implicit {
            tracing::info!(
                "serving the sockets systemd handed over; --listen and --port are not used"
            );
        }
        (&[], &[])
    };
    // One socket per address, which every worker accepts on.
    let mut addrs = Vec::with_capacity(config.listen.len());
    let mut per_worker: Vec<Vec<StdListener>> = (0..threads).map(|_| Vec::new()).collect();
    let mut hosts = config.access.hosts.clone();
    for (name, socket) in activated {
        let handed = |error| {
            ServeError::Activation(ActivationError::Socket {
                fd: -1,
                name: name.clone(),
                error,
            })
        };
        match socket {
            Activated::Tcp(listener) => {
                let addr = listener.local_addr().map_err(handed)?;
                // The same rules as --listen: beyond loopback, client tokens and TLS.
                let tls = tls.clone().filter(|_| !addr.ip().is_loopback());
                if !addr.ip().is_loopback() {
                    if config.access.client_tokens.is_none() {
                        return Err(ConfigError::NotLoopback(addr).into());
                    }
                    if tls.is_none() && !config.insecure_no_tls {
                        return Err(ConfigError::NoTls(addr).into());
                    }
                    hosts.allow(addr.ip());
                }
                tracing::info!(%addr, socket = %name, "serving a socket systemd handed over");
                addrs.push(addr);
                for worker in per_worker.iter_mut() {
                    let shared = listener.try_clone().map_err(handed)?;
                    worker.push(StdListener::Tcp(shared, tls.clone()));
                }
            }
            Activated::Unix(listener) => {
                tracing::info!(socket = %name, "serving a unix socket systemd handed over");
                for worker in per_worker.iter_mut() {
                    let shared = listener.try_clone().map_err(handed)?;
                    worker.push(StdListener::Unix(shared));
                }
            }
        }
    }
    for &wanted in own_listen {
        let bind_err = |error| ServeError::Bind {
            addr: wanted,
            error,
        };
        // Loopback listeners serve plain HTTP; others TLS unless --insecure-no-tls.
        let tls = tls.clone().filter(|_| !wanted.ip().is_loopback());
        let listener = bind(wanted)
            .and_then(TcpListener::into_std)
            .map_err(bind_err)?;
        addrs.push(listener.local_addr().map_err(bind_err)?);
        for worker in per_worker.iter_mut() {
            let shared = listener.try_clone().map_err(bind_err)?;
            worker.push(StdListener::Tcp(shared, tls.clone()));
        }
    }
    let mut unix = Vec::with_capacity(config.unix.len());
    for spec in own_unix {
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
    if let (Some(db), Some(shared)) = (&state_db, &config.state) {
        crate::state::sync::Sync {
            db: db.clone(),
            every: shared.sync,
            tokens: shared_tokens,
            quotas: telemetry
                .as_ref()
                .map(|t| QuotaExchange::new(t.quotas.clone(), &shared.replica)),
            owners: owners.clone().map(|owners| {
                owners.share(Box::new(crate::state::owners::Outbox::start(db.clone())));
                let ttl = config.ownership.as_ref().map_or(Duration::ZERO, |o| o.ttl);
                crate::state::sync::OwnersSync::new(owners, ttl)
            }),
            usage: telemetry
                .as_ref()
                .filter(|_| shared.ledger)
                .map(|t| crate::state::usage_days::UsageDays::new(t.daily.clone())),
        }
        .spawn(shutdown.subscribe());
    }
    for backend in credentials.all().iter().filter_map(Credential::chatgpt) {
        // What the backend says of the plan's usage, for `keyward status`, until keyward stops.
        let (tokens, home, stop) = (
            backend.tokens.clone(),
            backend.login_dir(),
            shutdown.subscribe(),
        );
        tokio::spawn(async move { tokens.plan.write_to(home, stop).await });
    }
    if let Some((addr, listener, telemetry)) = metrics {
        tokio::spawn(serve_metrics(listener, telemetry, shutdown.subscribe()));
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    let caps = Arc::new(ConnectionCaps::new(
        config
            .limits
            .max_connections
            .unwrap_or_else(default_max_connections),
        config.limits.max_connections_per_user,
    ));
    let upstreams: Vec<http::Uri> = credentials
        .all()
        .iter()
        .map(|c| c.upstream().uri.clone())
        .collect();
    let mut stopped = Vec::with_capacity(threads);
    for (index, listeners) in per_worker.into_iter().enumerate() {
        let proxy = Proxy::new(
            config,
            upstream::build(config, &upstreams)?,
            upstream::WsConnector::new(&upstream::ClientSettings::from_config(config))?,
            Shared {
                credentials: credentials.clone(),
                dumper: dumper.clone(),
                policy: policy.clone(),
                tokens: tokens.clone(),
                owners: owners.clone(),
                telemetry: telemetry.clone(),
                shutdown: shutdown.clone(),
                identify_peers: caps.counts_users(),
                hosts: hosts.clone(),
            },
        );
        let (done, finished) = oneshot::channel();
        let worker = Worker {
            listeners,
            proxy,
            builder: connection_builder(config),
            refused_builder: refused_connection_builder(config),
            caps: caps.clone(),
            shutdown: shutdown.clone(),
            grace: config.limits.shutdown_grace,
            tls_timeout: config.limits.header_timeout,
        };
        std::thread::Builder::new()
            .name(format!("keyward-{index}"))
            .spawn(move || {
                let _ = done.send(worker.run());
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
    tracing::info!(
        "{}",
        config
            .access
            .policy
            .describe(config.access.client_tokens.is_some())
    );
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

/// What the open-file limit allows: two sockets a connection (the client's and the upstream's),
/// less a reserve for listeners, files and the sign-in service.
fn default_max_connections() -> usize {
    let limit = crate::secret::hardening::open_files_limit();
    usize::try_from(limit.saturating_sub(64) / 2)
        .unwrap_or(usize::MAX)
        .max(16)
}

/// Connects and brings the schema up to date (replicas starting together take turns).
async fn open_state(shared: &SharedState) -> Result<Arc<StateDb>, ServeError> {
    if let Some(home) = shared.unsent.parent() {
        // Where ledger rows wait while the database is away.
        crate::credential::chatgpt::home::Home::open(home)
            .map_err(|e| ServeError::Home(e.to_string()))?;
    }
    let db = StateDb::open(&shared.db)?;
    let version = db.migrate().await?;
    tracing::info!(url = %db.url(), version, replica = %shared.replica, "using the state database");
    Ok(db)
}

/// The client tokens in the database's table, as they are now.
async fn shared_client_tokens(db: &Arc<StateDb>) -> Result<Arc<ClientTokens>, ServeError> {
    let clients = SharedClients::new(db.clone()).list().await?;
    Ok(Arc::new(ClientTokens::shared(&clients)?))
}
