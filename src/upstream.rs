//! The clients that talk to the upstream: HTTP/1.1 or HTTP/2 (by ALPN) over rustls, plain HTTP
//! for test upstreams, and an optional CONNECT proxy. The environment's
//! `HTTP_PROXY`/`HTTPS_PROXY` are never read. Forwarded requests go through a worker's
//! [`Pool`]; keyward's other calls (signing in, refreshing) through hyper's pooled client.
//! The state database several replicas share (`--state`) is reached through [`state_db`].

mod pool;
pub mod state_db;

pub use pool::{Outgoing, Pool, SendError, UpstreamBody};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::config::{Config, UpstreamProxy};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("--upstream-ca {path}: {what}")]
    BadCa { path: String, what: String },
    #[error("could not set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// A TCP connection to the upstream, direct or through a CONNECT tunnel.
#[derive(Clone)]
pub enum Connector {
    Direct(HttpConnector),
    Tunnel(Tunnel<HttpConnector>),
}

impl Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Connector::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            Connector::Tunnel(c) => c.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self {
            Connector::Direct(c) => {
                let fut = c.call(dst);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
            Connector::Tunnel(c) => {
                let fut = c.call(dst);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
        }
    }
}

/// What every outgoing client of keyward needs, from the command line.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub proxy: Option<UpstreamProxy>,
    pub extra_ca: Option<PathBuf>,
}

impl ClientSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            connect_timeout: config.limits.connect_timeout,
            proxy: config.upstream_proxy.clone(),
            extra_ca: config.upstream_ca.clone(),
        }
    }
}

/// A worker's connections to each of `upstreams` (one pool per scheme, host and port).
pub fn build<B: Outgoing>(
    config: &Config,
    upstreams: &[http::Uri],
) -> Result<Vec<Arc<Pool<B>>>, UpstreamError> {
    let connector = connector(&ClientSettings::from_config(config))?;
    let mut pools: Vec<Arc<Pool<B>>> = Vec::new();
    for uri in upstreams {
        if !pools.iter().any(|pool| pool.serves(uri)) {
            pools.push(Arc::new(Pool::new(connector.clone(), uri.clone())));
        }
    }
    Ok(pools)
}

/// A pooled HTTP/1.1 + HTTP/2 client over rustls with the given settings, for any body type.
pub fn build_client<B>(
    settings: &ClientSettings,
) -> Result<Client<HttpsConnector<Connector>, B>, UpstreamError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_adaptive_window(true)
        .build(connector(settings)?))
}

/// A raw connection to the upstream for a WebSocket (TLS with ALPN `http/1.1` only: the upgrade
/// is an HTTP/1.1 request).
pub type WsIo = TokioIo<hyper_rustls::MaybeHttpsStream<TokioIo<TcpStream>>>;

/// Opens connections for WebSockets to the upstream, with the same TLS, proxy and timeouts as
/// forwarded requests.
#[derive(Clone)]
pub struct WsConnector(HttpsConnector<Connector>);

impl WsConnector {
    pub fn new(settings: &ClientSettings) -> Result<Self, UpstreamError> {
        Ok(Self(connector_for(settings, false)?))
    }

    /// A connection to `uri`'s host (`https` for TLS, `http` for plain), ready for the handshake.
    pub async fn connect(&self, uri: Uri) -> Result<WsIo, SendError> {
        let mut connector = self.0.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(SendError::Connect)?;
        let io = connector.call(uri).await.map_err(SendError::Connect)?;
        Ok(TokioIo::new(io))
    }
}

/// TCP (direct or tunnelled), then TLS with ALPN offering HTTP/2 and HTTP/1.1, or plain HTTP:
/// what every upstream pool of keyward dials with (public for `examples/bench_floor.rs`).
pub fn connector(settings: &ClientSettings) -> Result<HttpsConnector<Connector>, UpstreamError> {
    connector_for(settings, true)
}

fn connector_for(
    settings: &ClientSettings,
    http2: bool,
) -> Result<HttpsConnector<Connector>, UpstreamError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let connector = match &settings.proxy {
        None => Connector::Direct(http),
        Some(proxy) => {
            let mut tunnel = Tunnel::new(proxy.uri.clone(), http);
            if let Some(auth) = &proxy.authorization {
                tunnel = tunnel.with_auth(auth.clone());
            }
            Connector::Tunnel(tunnel)
        }
    };

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &settings.extra_ca {
        add_pem_roots(&mut roots, path)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    Ok(if http2 {
        builder.enable_all_versions().wrap_connector(connector)
    } else {
        builder.enable_http1().wrap_connector(connector)
    })
}

fn add_pem_roots(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), UpstreamError> {
    let bad = |what: String| UpstreamError::BadCa {
        path: path.display().to_string(),
        what,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificates found".into()));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

/// Any error, boxed: what bodies and connections fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Displays an error and its sources, `a: b: c`, for the log.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            let text = err.to_string();
            // Many errors already say their source's message ("dns error: failed to lookup"
            // over "failed to lookup"): each part is said once.
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            source = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod chain_tests {
    use super::ErrorChain;

    #[derive(Debug, thiserror::Error)]
    #[error("{message}")]
    struct Layer {
        message: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    #[test]
    fn each_part_of_a_cause_chain_is_said_once() {
        let inner = Layer {
            message: "failed to lookup address information",
            source: None,
        };
        let dns = Layer {
            message: "dns error: failed to lookup address information",
            source: Some(Box::new(inner)),
        };
        let outer = Layer {
            message: "client error (Connect)",
            source: Some(Box::new(dns)),
        };
        assert_eq!(
            ErrorChain(&outer).to_string(),
            "client error (Connect): dns error: failed to lookup address information"
        );
    }
}
