//! What keyward served, to whom: the one log line per request and the batched log writer, the
//! Prometheus metrics, the usage ledger, usage read out of responses, and the quota counts.
//! Every request's figures arrive once, when it has ended ([`record::Record`]). Uses `credential`
//! (refresh counts for the metrics), `upstream` (the state database: the ledger's table and the
//! quota exchange), `config` and `secret`; never `proxy` or `server`.

pub mod account;
pub mod batched;
pub mod charge;
pub mod daily;
pub mod families;
pub mod json_skim;
pub mod ledger;
pub mod ledger_sum;
pub mod ledger_writer;
pub mod log;
pub mod log_format;
pub mod log_writer;
pub mod metrics;
pub mod quota;
pub mod record;
pub mod usage;
pub mod usage_view;
