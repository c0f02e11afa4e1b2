//! `previous_response_id` in a request body: continuing another client's response would read
//! it through the model, so a body that names a previous response its client did not create is
//! refused, as the API refuses an unknown one. The body is read as it streams past (only the
//! top-level `previous_response_id` is kept), and the chunk that completes a foreign id is never
//! sent: the upstream sees a cut request and acts on nothing.

use std::sync::Arc;

use crate::access::owners::Owners;
use crate::telemetry::json_skim::JsonSkim;

const FIELD: &[u8] = b"previous_response_id";

/// Watches one request body for a `previous_response_id` its client may not use: every time
/// the key appears at the top level, however it is written (escaped, spaced, twice), since the
/// upstream's parser decides which one counts.
pub struct PreviousCheck {
    skim: JsonSkim,
    owners: Arc<Owners>,
    client: Arc<str>,
}

impl PreviousCheck {
    pub fn new(owners: Arc<Owners>, client: Arc<str>) -> Self {
        Self {
            skim: JsonSkim::watching(&[FIELD]),
            owners,
            client,
        }
    }

    /// The next bytes of the body; `Err(id)` once they name a previous response the client did
    /// not create.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        self.skim.feed(data);
        for value in self.skim.take_found() {
            // A value too long to keep is no id keyward knows: refused as an unknown one.
            let value = value.ok_or_else(|| "(an id over 64 KiB)".to_owned())?;
            match serde_json::from_slice::<Option<String>>(&value) {
                Ok(None) => {}
                Ok(Some(id)) if self.owners.permits(&id, &self.client) => {}
                Ok(Some(id)) => return Err(id),
                Err(_) => return Err(String::from_utf8_lossy(&value).into_owned()),
            }
        }
        Ok(())
    }

    /// A whole message (a WebSocket's `response.create`, a decoded body).
    pub fn check_whole(mut self, message: &[u8]) -> Result<(), String> {
        self.feed(message)
    }
}
