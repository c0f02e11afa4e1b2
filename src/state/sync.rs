//! `serve --state`, every `--state-sync`: the client tokens read again (with
//! `--client-tokens state`), the quota counts exchanged, the response owners polled, the shared
//! login's change noticed, the usage views' days read. That work runs on the state database's own runtime: serving never
//! waits for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::access::clients::ClientTokens;
use crate::access::owners::Owners;
use crate::state::clients::SharedClients;
use crate::state::owners as owners_db;
use crate::state::quota::QuotaExchange;
use crate::state::usage_days::UsageDays;
use crate::upstream::state_db::StateDb;

/// What the sync does each interval.
pub struct Sync {
    pub db: Arc<StateDb>,
    pub every: Duration,
    /// With `--client-tokens state`.
    pub tokens: Option<Arc<ClientTokens>>,
    pub quotas: Option<QuotaExchange>,
    pub owners: Option<OwnersSync>,
    /// With the ledger in the database: the usage views' days.
    pub usage: Option<UsageDays>,
}

/// The record of response owners, as the sync keeps it up to date.
pub struct OwnersSync {
    owners: Arc<Owners>,
    /// Entries older than this are removed from the table (hourly).
    ttl: Duration,
    /// The last change of the table's read.
    seq: i64,
    expired_at: Option<Instant>,
}

impl OwnersSync {
    pub fn new(owners: Arc<Owners>, ttl: Duration) -> Self {
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
    pub fn spawn(mut self, mut stop: watch::Receiver<bool>) {
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
        if let Some(usage) = &mut self.usage {
            usage.read(&self.db).await;
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
