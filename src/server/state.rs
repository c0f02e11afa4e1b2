//! `serve --state`: the state database at serve time. At start, the schema is brought up to date
//! and the client tokens read (with `--client-tokens state`); then, every `--state-sync`, the
//! tokens are read again and the quota counts exchanged. That work runs on the state database's
//! own runtime: serving never waits for it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::access::clients::ClientTokens;
use crate::access::clients_db::SharedClients;
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
}

impl Sync {
    /// Runs until keyward stops.
    pub(crate) fn spawn(self, mut stop: watch::Receiver<bool>) {
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

    async fn once(&self) {
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
        if let Some(quotas) = &self.quotas {
            let _ = quotas.exchange(&self.db, self.every).await;
        } else if self.tokens.is_none() {
            // Nothing else to do: a probe, so that /readyz and the metrics know.
            let _ = self
                .db
                .with_shared(|client| async move { client.simple_query("SELECT 1").await })
                .await;
        }
    }
}
