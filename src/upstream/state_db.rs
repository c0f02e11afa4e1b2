//! The connection to the state database (`--state`): PostgreSQL over rustls (or plain TCP with
//! `sslmode=disable`), and the schema keyward creates and upgrades itself.
//!
//! The connections are driven by a runtime of their own (one thread, `keyward-state`), so that
//! the blocking callers (the login store, from `spawn_blocking` or a command) and the workers'
//! runtimes can all use them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::config::state::{StateConfig, StateTls};

mod schema;
use schema::MIGRATIONS;

/// How long one piece of background work (a batch of ledger rows, a sync) may take before the
/// database counts as unreachable.
const WORK_TIMEOUT: Duration = Duration::from_secs(5);

/// The advisory lock that serialises schema changes: replicas starting together take turns.
const SCHEMA_LOCK: i64 = 0x6b65_7977_6172_6401;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the state database {url} is unreachable: {why}")]
    Unreachable { url: String, why: String },
    #[error("the state database {url}: {why}")]
    Query { url: String, why: String },
    #[error(
        "the state database's schema is at version {found}, newer than this keyward knows \
         ({known}): upgrade keyward on this host"
    )]
    TooNew { found: i32, known: usize },
    #[error("--state-ca {path}: {why}")]
    Ca { path: String, why: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("could not start the state database's thread: {0}")]
    Runtime(std::io::Error),
}

/// The databases open in this process, by their settings.
static OPEN: parking_lot::Mutex<Vec<(String, std::sync::Weak<StateDb>)>> =
    parking_lot::Mutex::new(Vec::new());

/// The state database: how to reach it, and the runtime its connections run on.
pub struct StateDb {
    config: StateConfig,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// The state runtime, run by a thread of its own until the database is dropped (so that
    /// dropping it is allowed anywhere, even on an async thread).
    runtime: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
    /// The connection the background work (ledger, sync) shares, made again after a failure.
    shared: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// The last background work failed: serving is degraded.
    down: AtomicBool,
    /// Background work that failed, since start.
    errors: AtomicU64,
}

impl StateDb {
    /// Reads the settings (and the CA file); connects nothing yet.
    /// A database already open in this process with the same settings is shared (the login's
    /// store and the serving side use one runtime and one background connection).
    pub fn open(config: &StateConfig) -> Result<Arc<Self>, StateError> {
        // The settings' Debug form names everything but the password (read when connecting).
        let identity = format!("{config:?}");
        let mut open = OPEN.lock();
        open.retain(|(_, db)| db.strong_count() > 0);
        if let Some(db) = open
            .iter()
            .find(|(id, _)| *id == identity)
            .and_then(|(_, db)| db.upgrade())
        {
            return Ok(db);
        }
        let db = Self::open_new(config)?;
        open.push((identity, Arc::downgrade(&db)));
        Ok(db)
    }

    fn open_new(config: &StateConfig) -> Result<Arc<Self>, StateError> {
        let tls = match config.tls {
            StateTls::Disable => None,
            StateTls::Verify => Some(tls_connector(config)?),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keyward-state")
            .enable_all()
            .build()
            .map_err(StateError::Runtime)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("keyward-state-owner".into())
            .spawn(move || {
                runtime.block_on(async move { drop(stopped.await) });
                runtime.shutdown_background();
            })
            .map_err(StateError::Runtime)?;
        Ok(Arc::new(Self {
            config: config.clone(),
            tls,
            runtime: handle,
            _stop: stop,
            shared: tokio::sync::Mutex::new(None),
            down: AtomicBool::new(false),
            errors: AtomicU64::new(0),
        }))
    }

    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// Runs `work` on the state runtime and waits for it. Call it from a thread that is not
    /// running async code (a command, or `spawn_blocking`).
    pub fn block_on<F: Future>(&self, work: F) -> F::Output {
        self.runtime.block_on(work)
    }

    /// Runs background `work` on the state runtime.
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, work: F) {
        self.runtime.spawn(work);
    }

    /// A new connection (its driving task on the state runtime). Dropping the client closes it;
    /// the server then rolls back whatever transaction it had open and releases its locks.
    pub async fn connect(&self) -> Result<Client, StateError> {
        let unreachable = |why: String| StateError::Unreachable {
            url: self.config.url.clone(),
            why,
        };
        let mut pg: tokio_postgres::Config = self
            .config
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| unreachable(e.to_string()))?;
        if let Some(password) = self.config.password()? {
            pg.password(password.as_bytes());
        }
        pg.application_name("keyward")
            .connect_timeout(std::time::Duration::from_secs(5));
        let tls = self.tls.clone();
        // Connected on the state runtime, which then drives the connection.
        let task = self.runtime.spawn(async move {
            let connected: Result<Client, tokio_postgres::Error> = async {
                match tls {
                    None => {
                        let (client, connection) = pg.connect(NoTls).await?;
                        tokio::spawn(async move { drop(connection.await) });
                        Ok(client)
                    }
                    Some(tls) => {
                        pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                        let (client, connection) = pg.connect(tls).await?;
                        tokio::spawn(async move { drop(connection.await) });
                        Ok(client)
                    }
                }
            }
            .await;
            connected
        });
        match task.await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(err)) => Err(unreachable(chain(&err))),
            Err(err) => Err(unreachable(err.to_string())),
        }
    }

    /// Runs background `work` on the shared connection (connecting first if need be), within
    /// [`WORK_TIMEOUT`]. A failure drops the connection, so the next work connects again, and
    /// marks the database unreachable until some work succeeds.
    pub async fn with_shared<T, F, Fut>(&self, work: F) -> Result<T, StateError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let attempt = async {
            let client = {
                let mut slot = self.shared.lock().await;
                match &*slot {
                    Some(client) if !client.is_closed() => client.clone(),
                    _ => {
                        let client = Arc::new(self.connect().await?);
                        *slot = Some(client.clone());
                        client
                    }
                }
            };
            work(client).await.map_err(|e| StateError::Query {
                url: self.config.url.clone(),
                why: chain(&e),
            })
        };
        let result = match tokio::time::timeout(WORK_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => Err(StateError::Unreachable {
                url: self.config.url.clone(),
                why: format!("no answer within {}s", WORK_TIMEOUT.as_secs()),
            }),
        };
        match &result {
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(url = %self.config.url, "the state database answers again");
                }
            }
            Err(err) => {
                *self.shared.lock().await = None;
                self.errors.fetch_add(1, Ordering::Relaxed);
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %err,
                        "the state database is unreachable: serving goes on with local counts, \
                         ledger rows wait (in memory, then in the home) and the last client \
                         tokens read stay in force"
                    );
                }
            }
        }
        result
    }

    /// Whether the last background work failed.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Background work that failed since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Creates or upgrades the schema, under an advisory lock so that replicas starting together
    /// take turns; says the version it is at.
    pub async fn migrate(&self) -> Result<usize, StateError> {
        let client = self.connect().await?;
        let query = |e: tokio_postgres::Error| StateError::Query {
            url: self.config.url.clone(),
            why: chain(&e),
        };
        client
            .execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(query)?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS keyward_schema (version integer NOT NULL);
                 INSERT INTO keyward_schema SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM keyward_schema)",
            )
            .await
            .map_err(query)?;
        let found: i32 = client
            .query_one("SELECT version FROM keyward_schema", &[])
            .await
            .map_err(query)?
            .get(0);
        let found_steps = usize::try_from(found).unwrap_or(0);
        if found_steps > MIGRATIONS.len() {
            return Err(StateError::TooNew {
                found,
                known: MIGRATIONS.len(),
            });
        }
        for (step, sql) in MIGRATIONS.iter().enumerate().skip(found_steps) {
            let version = i32::try_from(step + 1).unwrap_or(i32::MAX);
            client
                .batch_execute(&format!(
                    "BEGIN; {sql}; UPDATE keyward_schema SET version = {version}; COMMIT"
                ))
                .await
                .map_err(query)?;
            tracing::info!(version, "upgraded the state database's schema");
        }
        // The lock goes with the connection.
        Ok(MIGRATIONS.len())
    }
}

fn tls_connector(
    config: &StateConfig,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StateError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &config.ca {
        let ca_err = |why: String| StateError::Ca {
            path: path.display().to_string(),
            why,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let mut added = 0;
        for cert in rustls_pemfile_certs(&pem).map_err(ca_err)? {
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(ca_err("it holds no PEM certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StateError::Ca {
            path: String::new(),
            why: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
}

/// The certificates in a PEM file.
fn rustls_pemfile_certs(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// An error and its causes, each once.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    crate::upstream::ErrorChain(err).to_string()
}
