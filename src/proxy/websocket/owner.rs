//! Who a WebSocket belongs to.

use std::sync::Arc;

use crate::access::owners::Owners;
use crate::telemetry::metrics::Telemetry;

/// Who a socket belongs to, for its turns' quotas, logs and ledger lines.
pub struct Owner {
    pub uid: Option<u32>,
    pub client: Arc<str>,
    pub telemetry: Option<Arc<Telemetry>>,
    /// The record the socket's responses go in as the client's.
    pub owners: Option<Arc<Owners>>,
}
