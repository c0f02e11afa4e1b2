//! With the ledger in the state database (`--state`), the usage views show every replica's
//! requests: the days are summed by the database from `keyward_usage` — all kept days at the
//! first sync, then today and yesterday every [`REFRESH`] — and replace what this replica counted
//! itself (its own lines reach the table within a sync or two).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::telemetry::daily::{self, DAYS_KEPT, Daily, Summed, Sums};
use crate::upstream::state_db::{StateDb, StateError};

/// How often today's and yesterday's sums are read again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// The usage views' days, as the sync keeps them up to date.
pub struct UsageDays {
    daily: Arc<Daily>,
    /// When the days were last read; none until the first whole read succeeded.
    read_at: Option<Instant>,
}

impl UsageDays {
    pub fn new(daily: Arc<Daily>) -> Self {
        Self {
            daily,
            read_at: None,
        }
    }

    /// Every kept day at the first call, then (every [`REFRESH`]) today and yesterday.
    pub async fn read(&mut self, db: &StateDb) {
        if self.read_at.is_some_and(|at| at.elapsed() < REFRESH) {
            return;
        }
        let today = daily::secs(SystemTime::now()) / 86_400;
        let from = match self.read_at {
            None => today + 1 - DAYS_KEPT,
            Some(_) => today - 1,
        };
        match sums_from(db, from).await {
            Ok((sums, refused)) => {
                self.daily.replace_from(from, sums, refused);
                self.read_at = Some(Instant::now());
            }
            // Reported by the database's health; the days read before stay.
            Err(err) => {
                tracing::debug!(error = %err, "usage by day not read from the state database")
            }
        }
    }
}

type Refused = Vec<(u64, u16, u64)>;

/// The table's rows from day `from` on, summed by day, client and model; and keyward's own
/// error answers by day and status.
async fn sums_from(db: &StateDb, from: u64) -> Result<(Vec<Summed>, Refused), StateError> {
    let since = (from * 86_400) as f64;
    let rows = db
        .with_shared(|client| async move {
            client
                .query(
                    "SELECT (floor(extract(epoch FROM time) / 86400))::int8, client, model, \
                     credential, \
                     count(*)::int8, \
                     count(*) FILTER (WHERE status >= 400 OR end_cause <> 'completed')::int8, \
                     count(*) FILTER (WHERE estimated)::int8, \
                     coalesce(sum(input_tokens), 0)::int8, \
                     coalesce(sum(cached_input_tokens), 0)::int8, \
                     coalesce(sum(output_tokens), 0)::int8, \
                     coalesce(sum(reasoning_tokens), 0)::int8 \
                     FROM keyward_usage WHERE time >= to_timestamp($1) GROUP BY 1, 2, 3, 4",
                    &[&since],
                )
                .await
        })
        .await?;
    let n = |row: &tokio_postgres::Row, i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    let sums = rows
        .iter()
        .map(|row| Summed {
            day: n(row, 0),
            client: row.get(1),
            model: row.get(2),
            credential: row.get(3),
            sums: Sums {
                requests: n(row, 4),
                errors: n(row, 5),
                estimated: n(row, 6),
                input_tokens: n(row, 7),
                cached_input_tokens: n(row, 8),
                output_tokens: n(row, 9),
                reasoning_tokens: n(row, 10),
            },
        })
        .collect();
    let rows = db
        .with_shared(|client| async move {
            client
                .query(
                    "SELECT (floor(extract(epoch FROM time) / 86400))::int8, status, count(*)::int8 \
                     FROM keyward_usage WHERE time >= to_timestamp($1) \
                     AND upstream_status IS NULL AND status >= 400 GROUP BY 1, 2",
                    &[&since],
                )
                .await
        })
        .await?;
    let refused = rows
        .iter()
        .map(|row| {
            let status = u16::try_from(row.get::<_, i16>(1)).unwrap_or(0);
            (n(row, 0), status, n(row, 2))
        })
        .collect();
    Ok((sums, refused))
}
