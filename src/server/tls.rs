//! TLS for non-loopback listeners: the certificate and key, re-read on SIGHUP without dropping
//! connections.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {path}: {why}")]
    Cert { path: PathBuf, why: String },
    #[error("--tls-key {path}: {why}")]
    Key { path: PathBuf, why: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificate in use; replaced whole by [`Tls::reload`].
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// keyward's TLS server side.
#[derive(Clone)]
pub struct Tls {
    config: TlsConfig,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

impl Tls {
    pub fn new(config: &TlsConfig) -> Result<Self, TlsError> {
        let current = Arc::new(Current(RwLock::new(Arc::new(load(config)?))));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: config.clone(),
            current,
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Re-reads the certificate and key. On any error the old ones stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = Arc::new(load(&self.config)?);
        *self.current.0.write() = key;
        Ok(())
    }
}

fn load(config: &TlsConfig) -> Result<CertifiedKey, TlsError> {
    let cert_err = |why: String| TlsError::Cert {
        path: config.cert.clone(),
        why,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no PEM certificate in the file".into()));
    }
    let key = load_key(&config.key)?;
    let signing = any_supported_type(&key).map_err(|e| TlsError::Key {
        path: config.key.clone(),
        why: e.to_string(),
    })?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| TlsError::Key {
        path: config.key.clone(),
        why: format!("it does not belong to the certificate in --tls-cert: {e}"),
    })?;
    Ok(certified)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use std::os::unix::fs::MetadataExt;
    let key_err = |why: String| TlsError::Key {
        path: path.to_owned(),
        why,
    };
    let mode = std::fs::metadata(path)
        .map_err(|e| key_err(e.to_string()))?
        .mode();
    if mode & 0o077 != 0 {
        return Err(key_err(format!(
            "other users can read the private key (mode {:o}); fix with: chmod 600 {}",
            mode & 0o777,
            path.display()
        )));
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| key_err(e.to_string()))
}
