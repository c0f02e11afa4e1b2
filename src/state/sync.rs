//! `serve --state`: the state database at serve time. At start, the schema is brought up to date
//! and the client tokens read (with `--client-tokens state`); then, every `--state-sync`, the
//! tokens are read again and the quota counts exchanged. That work runs on the state database's
//! own runtime: serving never waits for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::access::clients::ClientTokens;
use crate::access::clients_db::SharedClients;
use crate::access::owners::Owners;
use crate::access::owners_db;
use crate::config::state::SharedState;
use crate::server::error::ServeError;
use crate::telemetry::quota_sync::QuotaExchange;
use crate::upstream::state_db::StateDb;

/// Connects and brings the schema up to date (replicas starting together take turns).
pub(crate) async fn open(shared: &SharedState) -> Result<Arc<StateDb>, ServeError> {
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
pub(crate) async fn client_tokens(db: &Arc<StateDb>) -> Result<Arc<ClientTokens>, ServeError> {
    let clients = SharedClients::new(db.clone()).list().await?;
    Ok(Arc::new(ClientTokens::shared(&clients)?))
}

/// What the sync does each interval.
pub(crate) struct Sync {
    pub db: Arc<StateDb>,
    pub every: Duration,
    /// With `--client-tokens state`.
    pub tokens: Option<Arc<ClientTokens>>,
    pub quotas: Option<QuotaExchange>,
    pub owners: Option<OwnersSync>,
}

/// The record of response owners, as the sync keeps it up to date.
pub(crate) struct OwnersSync {
    owners: Arc<Owners>,
    /// Entries older than this are removed from the table (hourly).
    ttl: Duration,
    /// The last change of the table's read.
    seq: i64,
    expired_at: Option<Instant>,
}

impl OwnersSync {
    pub(crate) fn new(owners: Arc<Owners>, ttl: Duration) -> Self {
        Self {
            owners,
            ttl,
            seq: 0,
            expired_at: None,
        }
    }

    /// The other replicas' response owners since the last read (all of them at the first), and
    /// once an hour, the expired ones removed from the table.
    async fn read(&mut self, db: &StateDb) {
        loop {
            let Ok((owned, last)) = owners_db::poll(db, self.seq).await else {
                return;
            };
            let full = owned.len() == owners_db::POLL_LIMIT;
            for owner in owned {
                self.owners
                    .merge(owner.key, &owner.client, owner.at, owner.billed);
            }
            self.seq = last;
            if !full {
                break;
            }
        }
        if self
            .expired_at
            .is_none_or(|at| at.elapsed() > Duration::from_secs(3600))
        {
            self.expired_at = Some(Instant::now());
            let oldest = crate::access::owners_file::oldest(self.ttl);
            let _ = owners_db::expire(db, oldest).await;
        }
    }
}

impl Sync {
    /// Runs until keyward stops.
    pub(crate) fn spawn(mut self, mut stop: watch::Receiver<bool>) {
        let db = self.db.clone();
        db.spawn(async move {
            loop {
                self.once().await;
                tokio::select! {
                    _ = tokio::time::sleep(self.every) => {}
                    _ = stop.wait_for(|&stop| stop) => return,
                }
            }
        });
    }

    async fn once(&mut self) {
        if let Some(tokens) = &self.tokens {
            // A failure is reported by the database's health (once per episode); the tokens
            // read before stay in force.
            if let Ok(clients) = SharedClients::new(self.db.clone()).list().await {
                match tokens.replace(&clients) {
                    Ok(true) => tracing::info!(
                        clients = clients.len(),
                        "client tokens changed in the state database"
                    ),
                    Ok(false) => {}
                    Err(err) => {
                        tracing::error!(error = %err, "the client tokens in the state database are not usable; the tokens read before stay in force")
                    }
                }
            }
        }
        if let Some(owners) = &mut self.owners {
            owners.read(&self.db).await;
        }
        if let Some(quotas) = &self.quotas {
            let _ = quotas.exchange(&self.db, self.every).await;
        } else if self.tokens.is_none() && self.owners.is_none() {
            // Nothing else to do: a probe, so that /readyz and the metrics know.
            let _ = self
                .db
                .with_shared(|client| async move { client.simple_query("SELECT 1").await })
                .await;
        }
    }
}
