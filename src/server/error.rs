//! Why keyward could not start serving.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::access::clients::ClientsError;
use crate::access::owners_file::OwnersError;
use crate::proxy::dump::DumpError;
use crate::server::tls::TlsError;
use crate::telemetry::ledger::LedgerError;
use crate::upstream::UpstreamError;

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
    #[error(transparent)]
    Owners(#[from] OwnersError),
    #[error("{0}")]
    Home(String),
    #[error("--state: {0}")]
    State(#[from] crate::upstream::state_db::StateError),
    #[error(transparent)]
    Activation(#[from] crate::server::systemd::ActivationError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}
