//! Client tokens in the state database (`--state`): the `keyward token` commands change the
//! `keyward_clients` table, and every replica reads it each sync interval. Like the file, the
//! table holds names and SHA-256 hashes, never tokens.

use std::sync::Arc;

use crate::access::clients::{Client, ClientsError};
use crate::access::token_store::{TokenStore, new_client};
use crate::secret::SecretString;
use crate::upstream::state_db::{StateDb, StateError};

#[derive(Debug, thiserror::Error)]
pub enum SharedClientsError {
    #[error(transparent)]
    Clients(#[from] ClientsError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// The `keyward_clients` table.
pub struct SharedClients {
    db: Arc<StateDb>,
}

impl SharedClients {
    pub fn new(db: Arc<StateDb>) -> Self {
        Self { db }
    }

    pub fn describe(&self) -> String {
        format!("the state database {}", self.db.url())
    }

    /// Every client, oldest first.
    pub async fn list(&self) -> Result<Vec<Client>, StateError> {
        self.db
            .with_shared(|client| async move {
                let rows = client
                    .query(
                        "SELECT name, sha256, created, groups FROM keyward_clients \
                         ORDER BY created, name",
                        &[],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|row| Client {
                        name: row.get(0),
                        sha256: row.get(1),
                        created: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                        groups: row.get(3),
                    })
                    .collect())
            })
            .await
    }

    /// Adds a client and returns its new token (shown only this once).
    pub async fn add(
        &self,
        name: &str,
        groups: &[String],
    ) -> Result<SecretString, SharedClientsError> {
        let (token, stored) = new_client(name, groups)?;
        let created = i64::try_from(stored.created).unwrap_or(i64::MAX);
        let inserted = self
            .db
            .with_shared(|client| async move {
                client
                    .execute(
                        "INSERT INTO keyward_clients (name, sha256, created, groups) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
                        &[&stored.name, &stored.sha256, &created, &stored.groups],
                    )
                    .await
            })
            .await?;
        if inserted == 0 {
            return Err(ClientsError::Exists(name.to_owned()).into());
        }
        Ok(token)
    }

    /// Removes a client: every replica refuses its token after its next sync.
    pub async fn revoke(&self, name: &str) -> Result<(), SharedClientsError> {
        let owned = name.to_owned();
        let removed = self
            .db
            .with_shared(|client| async move {
                client
                    .execute("DELETE FROM keyward_clients WHERE name = $1", &[&owned])
                    .await
            })
            .await?;
        if removed == 0 {
            return Err(ClientsError::NoSuchClient(name.to_owned()).into());
        }
        Ok(())
    }
}

/// For the `keyward token` commands, which wait for each answer.
impl TokenStore for SharedClients {
    type Error = SharedClientsError;

    fn describe(&self) -> String {
        SharedClients::describe(self)
    }

    fn list(&self) -> Result<Vec<Client>, SharedClientsError> {
        Ok(self.db.block_on(SharedClients::list(self))?)
    }

    fn add(&self, name: &str, groups: &[String]) -> Result<SecretString, SharedClientsError> {
        self.db.block_on(SharedClients::add(self, name, groups))
    }

    fn revoke(&self, name: &str) -> Result<(), SharedClientsError> {
        self.db.block_on(SharedClients::revoke(self, name))
    }
}
