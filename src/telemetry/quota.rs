//! Per-client quotas: concurrent streams, requests per minute, and tokens in a rolling 24-hour
//! window. Over a limit, a request gets 429 with `Retry-After`; a stream already running is
//! never cut.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MINUTE: Duration = Duration::from_secs(60);
const DAY_SECS: u64 = 86_400;

use crate::config::quota::QuotaConfig;

/// A request refused by a quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub quota: &'static str,
    pub limit: u64,
    pub retry_after: Duration,
}

#[derive(Default)]
struct ClientState {
    active: u32,
    /// When each of the requests of the last minute started.
    recent: VecDeque<Instant>,
    /// Tokens per minute (minutes since the epoch), the last 24 hours.
    tokens: VecDeque<(u64, u64)>,
    tokens_total: u64,
}

impl ClientState {
    fn expire(&mut self, now: Instant, now_minute: u64) {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= MINUTE)
        {
            self.recent.pop_front();
        }
        while let Some(&(minute, n)) = self.tokens.front() {
            if minute + DAY_SECS / 60 > now_minute {
                break;
            }
            self.tokens.pop_front();
            self.tokens_total -= n;
        }
    }
}

/// The counts behind the quotas, shared by every worker.
pub struct Quotas {
    config: RwLock<QuotaConfig>,
    state: Mutex<HashMap<Arc<str>, ClientState>>,
}

impl Quotas {
    pub fn new(config: QuotaConfig) -> Self {
        Self {
            config: RwLock::new(config),
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the limits (SIGHUP); the counts stay.
    pub fn set_config(&self, config: QuotaConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    pub fn is_empty(&self) -> bool {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Admits a request of `client`, or says which quota it is over and when to retry. The
    /// permit holds a concurrent-stream slot until it is dropped.
    pub fn admit(self: &Arc<Self>, client: &Arc<str>) -> Result<Option<Permit>, Exceeded> {
        let limits = self
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .for_client(client);
        if limits.is_empty() {
            return Ok(None);
        }
        let now = Instant::now();
        let now_minute = minute_of(SystemTime::now());
        let mut states = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = states.entry(client.clone()).or_default();
        state.expire(now, now_minute);

        if let Some(limit) = limits.concurrent
            && state.active >= limit
        {
            return Err(Exceeded {
                quota: "concurrent",
                limit: limit.into(),
                // A stream may run for minutes; ask again soon.
                retry_after: Duration::from_secs(5),
            });
        }
        if let Some(limit) = limits.requests_per_minute
            && state.recent.len() >= limit as usize
        {
            let oldest = state.recent[state.recent.len() - limit as usize];
            return Err(Exceeded {
                quota: "requests_per_minute",
                limit: limit.into(),
                retry_after: (oldest + MINUTE).saturating_duration_since(now),
            });
        }
        if let Some(limit) = limits.tokens_per_day
            && state.tokens_total >= limit
        {
            // When enough of the oldest minutes leave the window to fall below the limit.
            let mut left = state.tokens_total;
            let mut until_minute = now_minute;
            for &(minute, n) in &state.tokens {
                left -= n;
                if left < limit {
                    until_minute = minute + DAY_SECS / 60;
                    break;
                }
            }
            let secs = (until_minute.saturating_sub(now_minute) * 60).max(1);
            return Err(Exceeded {
                quota: "tokens_per_day",
                limit,
                retry_after: Duration::from_secs(secs),
            });
        }
        state.recent.push_back(now);
        state.active += 1;
        Ok(Some(Permit {
            quotas: self.clone(),
            client: client.clone(),
        }))
    }

    /// Counts tokens a response of `client` used, at `at`.
    pub fn add_tokens(&self, client: &str, at: SystemTime, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let minute = minute_of(at);
        if minute + DAY_SECS / 60 <= minute_of(SystemTime::now()) {
            return;
        }
        let mut states = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = states.entry(Arc::from(client)).or_default();
        match state.tokens.back_mut() {
            Some((last, n)) if *last == minute => *n += tokens,
            // Ledger lines arrive in order; a late one joins the newest minute.
            Some((last, n)) if *last > minute => *n += tokens,
            _ => state.tokens.push_back((minute, tokens)),
        }
        state.tokens_total += tokens;
    }

    /// Tokens `client` used in the last 24 hours.
    pub fn tokens_used(&self, client: &str) -> u64 {
        let states = self.state.lock().unwrap_or_else(|p| p.into_inner());
        states.get(client).map_or(0, |s| s.tokens_total)
    }
}

fn minute_of(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

/// A concurrent-stream slot, released when the response ends.
pub struct Permit {
    quotas: Arc<Quotas>,
    client: Arc<str>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut states = self.quotas.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = states.get_mut(&self.client) {
            state.active = state.active.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(specs: &[&str]) -> Arc<Quotas> {
        let mut config = QuotaConfig::default();
        for spec in specs {
            config.add_spec(spec).unwrap();
        }
        Arc::new(Quotas::new(config))
    }

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let mut config = QuotaConfig::default();
        config
            .add_spec("default:requests-per-minute=60,concurrent=4")
            .unwrap();
        config.add_spec("ci:tokens-per-day=1000000").unwrap();
        assert_eq!(config.default.requests_per_minute, Some(60));
        assert_eq!(config.for_client("ci").concurrent, Some(4));
        assert_eq!(config.for_client("ci").tokens_per_day, Some(1_000_000));
        for bad in [
            "nocolon",
            ":concurrent=1",
            "a:speed=3",
            "a:concurrent=x",
            "a:concurrent",
        ] {
            assert!(config.add_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_quota_refuses_with_a_retry_time_and_permits_free_slots() {
        let client: Arc<str> = Arc::from("alice");
        let q = quotas(&["alice:concurrent=2"]);
        let a = q.admit(&client).unwrap();
        let _b = q.admit(&client).unwrap();
        let refused = q.admit(&client).err().unwrap();
        assert_eq!(refused.quota, "concurrent");
        drop(a);
        assert!(q.admit(&client).is_ok(), "a finished stream frees its slot");
        assert!(
            q.admit(&Arc::from("bob")).unwrap().is_none(),
            "bob has no limits"
        );

        let q = quotas(&["default:requests-per-minute=3"]);
        for _ in 0..3 {
            drop(q.admit(&client).unwrap());
        }
        let refused = q.admit(&client).err().unwrap();
        assert_eq!(refused.quota, "requests_per_minute");
        assert!(refused.retry_after > Duration::from_secs(50));

        let q = quotas(&["default:tokens-per-day=100"]);
        q.add_tokens("alice", SystemTime::now() - Duration::from_secs(3600), 60);
        q.add_tokens("alice", SystemTime::now(), 50);
        assert_eq!(q.tokens_used("alice"), 110);
        let refused = q.admit(&client).err().unwrap();
        assert_eq!(refused.quota, "tokens_per_day");
        // Below the limit once the older 60 leave the window, 23 hours from now.
        let hours = refused.retry_after.as_secs() / 3600;
        assert_eq!(hours, 23, "{:?}", refused.retry_after);
        // Usage older than a day does not count.
        q.add_tokens(
            "carol",
            SystemTime::now() - Duration::from_secs(DAY_SECS + 60),
            500,
        );
        assert_eq!(q.tokens_used("carol"), 0);
    }
}
