//! A created response's id goes in the record of owners as its client's: as soon as it passes
//! in the answer (the client may retrieve or cancel it before its stream ends), or when the
//! request is accounted for, marked charged when it was. Called by the pipeline as the answer
//! is relayed and in its account phase.

use std::sync::Arc;

use crate::access::owners::Owners;

/// One request's claim to the response it creates.
pub struct Claim {
    owners: Arc<Owners>,
    client: Arc<str>,
    recorded: bool,
}

impl Claim {
    pub fn new(owners: Arc<Owners>, client: Arc<str>) -> Self {
        Self {
            owners,
            client,
            recorded: false,
        }
    }

    /// The response's id is in the record.
    pub fn recorded(&self) -> bool {
        self.recorded
    }

    /// The answer showed the response's id: it is the client's from now on.
    pub fn saw(&mut self, id: &str) {
        if !self.recorded {
            self.owners.record(id, &self.client, false);
            self.recorded = true;
        }
    }

    /// The request ended with the response `id` (when its answer showed one), `charged` or
    /// not: recorded if it was not yet, and marked charged.
    pub fn settle(&mut self, id: Option<&str>, charged: bool) {
        let Some(id) = id else {
            return;
        };
        if !self.recorded {
            self.owners.record(id, &self.client, charged);
            self.recorded = true;
        } else if charged {
            self.owners.bill(id);
        }
    }
}
