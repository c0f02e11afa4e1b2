//! Quotas across replicas (`--state`): every sync interval, each running keyward writes its own
//! counts to the state database and reads the others' sum, which admission adds to its own
//! ([`crate::telemetry::quota::Remote`]). Nothing on the request path waits for this.
//!
//! The bound: a replica admits on what it knew at its last exchange, so a quota can be exceeded
//! by what the other replicas admitted since their last exchange — at most one sync interval of
//! each replica's traffic (for tokens, of the responses that ended in it).
//!
//! Counts belong to an *instance* (the replica's name and a random id per start): a restarted
//! keyward reads its earlier self's tokens as another's, so the day's count survives restarts,
//! and its streams stop counting once their row is older than a few intervals.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::telemetry::quota::{Quotas, Remote};
use crate::upstream::state_db::{StateDb, StateError};

/// Old rows are removed every this many exchanges.
const CLEAN_EVERY: u64 = 60;

pub struct QuotaExchange {
    quotas: Arc<Quotas>,
    instance: String,
    exchanges: AtomicU64,
}

impl QuotaExchange {
    pub fn new(quotas: Arc<Quotas>, replica: &str) -> Self {
        use ring::rand::SecureRandom;
        let mut random = [0u8; 6];
        let _ = ring::rand::SystemRandom::new().fill(&mut random);
        let id: String = random.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            quotas,
            instance: format!("{replica}/{}-{id}", std::process::id()),
            exchanges: AtomicU64::new(0),
        }
    }

    /// Sends this replica's counts and reads the others'. Rows of instances silent for more
    /// than three intervals no longer count for streams and requests.
    pub async fn exchange(&self, db: &StateDb, every: Duration) -> Result<(), StateError> {
        let out = self.quotas.outgoing();
        let now_minute = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 60);
        let window_start = i64::try_from(now_minute).unwrap_or(i64::MAX) - 24 * 60;
        let stale = (every * 3 + Duration::from_secs(2)).as_secs_f64();
        let clean = self
            .exchanges
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(CLEAN_EVERY);
        let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let small = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        let token_clients: Vec<&str> = out.tokens.iter().map(|(c, ..)| &**c).collect();
        let token_minutes: Vec<i64> = out.tokens.iter().map(|&(_, m, _)| big(m)).collect();
        let token_counts: Vec<i64> = out.tokens.iter().map(|&(.., n)| big(n)).collect();
        let live_clients: Vec<&str> = out.live.iter().map(|(c, ..)| &**c).collect();
        let live_active: Vec<i32> = out.live.iter().map(|&(_, a, _)| small(a)).collect();
        let live_recent: Vec<i32> = out.live.iter().map(|&(.., r)| small(r)).collect();
        let instance = &self.instance;
        let result = db
            .with_shared(|client| async move {
                if !token_clients.is_empty() {
                    client
                        .execute(
                            "INSERT INTO keyward_quota_tokens (instance, client, minute, tokens) \
                             SELECT $1, c, m, n FROM unnest($2::text[], $3::int8[], $4::int8[]) \
                             AS u(c, m, n) ON CONFLICT (instance, client, minute) \
                             DO UPDATE SET tokens = excluded.tokens",
                            &[instance, &token_clients, &token_minutes, &token_counts],
                        )
                        .await?;
                }
                if !live_clients.is_empty() {
                    client
                        .execute(
                            "INSERT INTO keyward_quota_live (instance, client, active, recent, seen) \
                             SELECT $1, c, a, r, now() FROM unnest($2::text[], $3::int4[], \
                             $4::int4[]) AS u(c, a, r) ON CONFLICT (instance, client) \
                             DO UPDATE SET active = excluded.active, recent = excluded.recent, \
                             seen = excluded.seen",
                            &[instance, &live_clients, &live_active, &live_recent],
                        )
                        .await?;
                }
                let live = client
                    .query(
                        "SELECT client, sum(active)::int8, sum(recent)::int8 \
                         FROM keyward_quota_live WHERE instance <> $1 \
                         AND seen > now() - make_interval(secs => $2) GROUP BY client",
                        &[instance, &stale],
                    )
                    .await?;
                let tokens = client
                    .query(
                        "SELECT client, minute / 60 * 60, sum(tokens)::int8 \
                         FROM keyward_quota_tokens WHERE instance <> $1 AND minute > $2 \
                         GROUP BY 1, 2 ORDER BY 1, 2",
                        &[instance, &window_start],
                    )
                    .await?;
                if clean {
                    client
                        .execute(
                            "DELETE FROM keyward_quota_tokens WHERE minute <= $1",
                            &[&window_start],
                        )
                        .await?;
                    client
                        .execute(
                            "DELETE FROM keyward_quota_live WHERE seen < now() - interval '1 hour'",
                            &[],
                        )
                        .await?;
                }
                Ok((live, tokens))
            })
            .await;
        let (live, tokens) = match result {
            Ok(rows) => rows,
            Err(err) => {
                self.quotas.unsent(out);
                self.quotas.forget_remote_live();
                return Err(err);
            }
        };
        let mut remote: HashMap<String, Remote> = HashMap::new();
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        for row in &live {
            let theirs = remote.entry(row.get(0)).or_default();
            theirs.active = u32::try_from(row.get::<_, i64>(1)).unwrap_or(u32::MAX);
            theirs.recent = u32::try_from(row.get::<_, i64>(2)).unwrap_or(u32::MAX);
        }
        for row in &tokens {
            let theirs = remote.entry(row.get(0)).or_default();
            let n = count(row.get(2));
            theirs.tokens += n;
            theirs.hours.push((count(row.get(1)), n));
        }
        self.quotas.set_remote(remote);
        Ok(())
    }
}
