//! The usage ledger's rows in the state database's `keyward_usage` table: a JSONL line's fields,
//! the replica, and the line's id. Sent many at once (one array per column); a row already there
//! (same replica and id) is left alone, so sending one twice stores it once. Summed for
//! `keyward usage --state` ([`from_table`]).

use serde::{Deserialize, Serialize};

use crate::telemetry::ledger::Entry;
use crate::telemetry::ledger_sum::{GroupBy, UsageRow};
use crate::upstream::state_db::{StateDb, StateError};

/// A row as it waits in the unsent file: the entry and the replica it belongs to.
#[derive(Serialize, Deserialize)]
pub struct Row {
    pub replica: String,
    #[serde(flatten)]
    pub entry: Entry,
}

/// Stores `rows` in one statement; rows already there (same replica and id) are left alone.
pub async fn insert(db: &StateDb, rows: &[Row]) -> Result<u64, StateError> {
    let mut cols = Columns::default();
    for row in rows {
        cols.push(row);
    }
    db.with_shared(|client| async move {
        client
            .execute(
                "INSERT INTO keyward_usage (replica, id, time, client, endpoint, model, status, \
                 upstream_status, end_cause, input_tokens, cached_input_tokens, output_tokens, \
                 reasoning_tokens, estimated, duration_ms, ttfb_ms, request_id, credential) \
                 SELECT r, i, to_timestamp(t), c, e, m, s, us, ec, it, ct, ot, rt, es, d, tt, q, \
                 cr \
                 FROM unnest($1::text[], $2::text[], $3::float8[], $4::text[], $5::text[], \
                 $6::text[], $7::int2[], $8::int2[], $9::text[], $10::int8[], $11::int8[], \
                 $12::int8[], $13::int8[], $14::bool[], $15::float8[], $16::float8[], $17::text[], \
                 $18::text[]) \
                 AS u(r, i, t, c, e, m, s, us, ec, it, ct, ot, rt, es, d, tt, q, cr) \
                 ON CONFLICT (replica, id) DO NOTHING",
                &[
                    &cols.replica,
                    &cols.id,
                    &cols.ts,
                    &cols.client,
                    &cols.endpoint,
                    &cols.model,
                    &cols.status,
                    &cols.upstream_status,
                    &cols.end,
                    &cols.input,
                    &cols.cached,
                    &cols.output,
                    &cols.reasoning,
                    &cols.estimated,
                    &cols.duration_ms,
                    &cols.ttfb_ms,
                    &cols.request_id,
                    &cols.credential,
                ],
            )
            .await
    })
    .await
}

/// The rows as one array per column, for `unnest`.
#[derive(Default)]
struct Columns {
    replica: Vec<String>,
    id: Vec<String>,
    ts: Vec<f64>,
    client: Vec<String>,
    endpoint: Vec<String>,
    model: Vec<Option<String>>,
    status: Vec<i16>,
    upstream_status: Vec<Option<i16>>,
    end: Vec<String>,
    input: Vec<i64>,
    cached: Vec<i64>,
    output: Vec<i64>,
    reasoning: Vec<i64>,
    estimated: Vec<bool>,
    duration_ms: Vec<f64>,
    ttfb_ms: Vec<Option<f64>>,
    request_id: Vec<Option<String>>,
    credential: Vec<Option<String>>,
}

impl Columns {
    fn push(&mut self, row: &Row) {
        let e = &row.entry;
        let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let status = |n: u16| i16::try_from(n).unwrap_or(i16::MAX);
        self.replica.push(row.replica.clone());
        // A line without an id (written before lines had one) is named by its content, so
        // importing it twice stores it once.
        self.id.push(e.id.clone().unwrap_or_else(|| content_id(e)));
        self.ts.push(e.ts);
        self.client.push(e.client.clone());
        self.endpoint.push(e.endpoint.clone());
        self.model.push(e.model.clone());
        self.status.push(status(e.status));
        self.upstream_status.push(e.upstream_status.map(status));
        self.end.push(e.end.clone());
        self.input.push(big(e.input_tokens));
        self.cached.push(big(e.cached_input_tokens));
        self.output.push(big(e.output_tokens));
        self.reasoning.push(big(e.reasoning_tokens));
        self.estimated.push(e.estimated);
        self.duration_ms.push(e.duration_ms);
        self.ttfb_ms.push(e.ttfb_ms);
        self.request_id.push(e.request_id.clone());
        self.credential.push(e.credential.clone());
    }
}

/// An id for a line that has none: a hash of what it says.
fn content_id(entry: &Entry) -> String {
    let text = serde_json::to_vec(entry).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &text);
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("line-{hex}")
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
        GroupBy::Credential => "coalesce(credential, '-')",
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
