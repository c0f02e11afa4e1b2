//! `keyward usage`: the ledger summed by client, model or endpoint — from the JSONL file, or
//! with `--state` from the state database's table (summed by the database).

use std::collections::BTreeMap;

use crate::telemetry::ledger::Entry;
use crate::upstream::state_db::{StateDb, StateError};

/// What the rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Client,
    Model,
    Endpoint,
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

/// The same sums over the state database's `keyward_usage`, rows at or after `since` (seconds
/// since the epoch), every replica's.
pub async fn from_table(
    db: &StateDb,
    by: GroupBy,
    since: f64,
) -> Result<Vec<UsageRow>, StateError> {
    let column = match by {
        GroupBy::Client => "client",
        GroupBy::Model => "coalesce(model, '-')",
        GroupBy::Endpoint => "endpoint",
    };
    let sql = format!(
        "SELECT {column}, count(*)::int8, \
         count(*) FILTER (WHERE status >= 400 OR end_cause <> 'completed')::int8, \
         coalesce(sum(input_tokens), 0)::int8, coalesce(sum(cached_input_tokens), 0)::int8, \
         coalesce(sum(output_tokens), 0)::int8, coalesce(sum(reasoning_tokens), 0)::int8 \
         FROM keyward_usage WHERE time >= to_timestamp($1) GROUP BY 1 ORDER BY 1"
    );
    let rows = db
        .with_shared(|client| async move { client.query(&sql, &[&since]).await })
        .await?;
    let n = |row: &tokio_postgres::Row, i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    Ok(rows
        .iter()
        .map(|row| UsageRow {
            key: row.get(0),
            requests: n(row, 1),
            errors: n(row, 2),
            input_tokens: n(row, 3),
            cached_input_tokens: n(row, 4),
            output_tokens: n(row, 5),
            reasoning_tokens: n(row, 6),
        })
        .collect())
}
