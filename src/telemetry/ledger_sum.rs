//! `keyward usage`: the ledger summed by client, model, endpoint or credential — from the JSONL file, or
//! with `--state` from the state database's table (summed by the database).

use std::collections::BTreeMap;

use crate::telemetry::ledger::Entry;

/// What the rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Client,
    Model,
    Endpoint,
    Credential,
}

/// One group's sums.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UsageRow {
    pub key: String,
    pub requests: u64,
    /// Refused, failed, or not ended with a whole response.
    pub errors: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
}

/// Sums entries as they are read from a file.
#[derive(Default)]
pub struct Summer {
    rows: BTreeMap<String, UsageRow>,
}

impl Summer {
    pub fn add(&mut self, by: GroupBy, entry: Entry) {
        let key = match by {
            GroupBy::Client => entry.client,
            GroupBy::Model => entry.model.unwrap_or_else(|| "-".into()),
            GroupBy::Endpoint => entry.endpoint,
            GroupBy::Credential => entry.credential.unwrap_or_else(|| "-".into()),
        };
        let row = self.rows.entry(key.clone()).or_insert_with(|| UsageRow {
            key,
            ..UsageRow::default()
        });
        row.requests += 1;
        row.errors += u64::from(entry.status >= 400 || entry.end != "completed");
        row.input_tokens += entry.input_tokens;
        row.cached_input_tokens += entry.cached_input_tokens;
        row.output_tokens += entry.output_tokens;
        row.reasoning_tokens += entry.reasoning_tokens;
    }

    /// The groups, in key order.
    pub fn rows(self) -> Vec<UsageRow> {
        self.rows.into_values().collect()
    }
}
