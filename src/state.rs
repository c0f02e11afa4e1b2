//! What replicas share in the state database (`--state`), in one place: each kind of state
//! behind the interface its layer defines, with the file (or memory) implementation beside it
//! there and the PostgreSQL one here.
//!
//! | state | interface | file | PostgreSQL |
//! |---|---|---|---|
//! | the usage ledger | [`crate::telemetry::ledger::LedgerStore`] | `telemetry::ledger::Ledger` | [`ledger::SharedLedger`] ([`ledger_rows`]) |
//! | response owners | [`crate::access::owners::OwnersStore`] | `access::owners_file::Writer` | [`owners::Outbox`] |
//! | client tokens | [`crate::access::token_store::TokenStore`] | `access::token_store::TokenFile` | [`clients::SharedClients`] |
//! | the ChatGPT login | `credential::chatgpt::store::LoginStore` | `FileStore` (and the keyring) | `DatabaseStore` (in `credential`: its refresh lock is the token manager's) |
//!
//! Besides: the quota counts exchanged between replicas ([`quota`]), the usage views' days summed
//! from the ledger's table ([`usage_days`]), and the sync that runs every
//! `--state-sync` ([`sync`]). The connection, schema and migrations are
//! [`crate::upstream::state_db`]'s. Uses `telemetry`, `access`, `credential`, `upstream`,
//! `config` and `secret`; `server` and `cli` use it.

pub mod clients;
pub mod ledger;
pub mod ledger_rows;
pub mod owners;
pub mod quota;
pub mod sync;
pub mod usage_days;
