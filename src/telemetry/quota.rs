//! Per-client quotas (and each credential's, counted as `credential:NAME`): concurrent streams,
//! requests per minute, and tokens in a rolling 24-hour window. Over a limit, a request gets 429
//! with `Retry-After`; a stream already running is never cut.
//!
//! With `--state`, the other replicas' counts ([`Remote`]) are added to this replica's own:
//! `crate::state::quota` exchanges them every sync interval, so admission never waits
//! for the database.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod remote;

pub use remote::{Outgoing, Remote};

const MINUTE: Duration = Duration::from_secs(60);
const DAY_SECS: u64 = 86_400;

use crate::config::quota::{Limits, QuotaConfig};

/// The name a credential's quotas are counted under: `credential:NAME` (no client's name has a
/// colon).
pub fn credential_quota(credential: &str) -> String {
    format!("{CREDENTIAL_PREFIX}{credential}")
}

pub use crate::config::quota::CREDENTIAL_PREFIX;

/// A request refused by a quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub quota: &'static str,
    pub limit: u64,
    pub retry_after: Duration,
}

/// Where one of a client's quotas stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QuotaStatus {
    /// `concurrent`, `requests_per_minute` or `tokens_per_day`.
    pub quota: &'static str,
    pub limit: u64,
    /// Streams open now; requests of the last minute; tokens (input plus output) of the last
    /// 24 hours.
    pub used: u64,
    pub left: u64,
    /// For the rolling windows: when the oldest of what is used leaves the window (`used` falls
    /// then), RFC 3339; none while nothing is used.
    pub resets_at: Option<String>,
}

#[derive(Default)]
struct ClientState {
    active: u32,
    /// When each of the requests of the last minute started.
    recent: VecDeque<Instant>,
    /// Tokens per minute (minutes since the epoch), the last 24 hours.
    tokens: VecDeque<(u64, u64)>,
    tokens_total: u64,
    /// The other replicas' share, as of the last exchange.
    remote: Remote,
}

#[derive(Default)]
struct States {
    clients: HashMap<Arc<str>, ClientState>,
    /// (client, minute) whose token count changed since the last exchange.
    dirty: HashSet<(Arc<str>, u64)>,
}

impl ClientState {
    /// The quota of `limits` this state is at, if any, and when to retry.
    fn over(&self, limits: &Limits, now: Instant, now_minute: u64) -> Option<Exceeded> {
        if let Some(limit) = limits.concurrent
            && self.active + self.remote.active >= limit
        {
            return Some(Exceeded {
                quota: "concurrent",
                limit: limit.into(),
                // A stream may run for minutes; ask again soon.
                retry_after: Duration::from_secs(5),
            });
        }
        if let Some(limit) = limits.requests_per_minute
            && self.recent.len() + self.remote.recent as usize >= limit as usize
        {
            // The others' requests are not timed here: when they alone are at the limit, a
            // minute; else when enough of this replica's oldest leave the window.
            let over = self.recent.len() + self.remote.recent as usize + 1 - limit as usize;
            let retry_after = match self.recent.get(over.saturating_sub(1)) {
                Some(&at) if over <= self.recent.len() => {
                    (at + MINUTE).saturating_duration_since(now)
                }
                _ => MINUTE,
            };
            return Some(Exceeded {
                quota: "requests_per_minute",
                limit: limit.into(),
                retry_after,
            });
        }
        if let Some(limit) = limits.tokens_per_day
            && self.tokens_total + self.remote.tokens >= limit
        {
            // When enough of the oldest minutes leave the window to fall below the limit (the
            // others' hours counted until their last minute leaves).
            let mut minutes: Vec<(u64, u64)> = self.tokens.iter().copied().collect();
            minutes.extend(self.remote.hours.iter().map(|&(hour, n)| (hour + 59, n)));
            minutes.sort_unstable();
            let mut left = self.tokens_total + self.remote.tokens;
            let mut until_minute = now_minute;
            for &(minute, n) in &minutes {
                left = left.saturating_sub(n);
                if left < limit {
                    until_minute = minute + DAY_SECS / 60;
                    break;
                }
            }
            let secs = (until_minute.saturating_sub(now_minute) * 60).max(1);
            return Some(Exceeded {
                quota: "tokens_per_day",
                limit,
                retry_after: Duration::from_secs(secs),
            });
        }
        None
    }

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
    state: Mutex<States>,
}

impl Quotas {
    pub fn new(config: QuotaConfig) -> Self {
        Self {
            config: RwLock::new(config),
            state: Mutex::new(States::default()),
        }
    }

    /// Replaces the limits (SIGHUP); the counts stay.
    pub fn set_config(&self, config: QuotaConfig) {
        *self.config.write() = config;
    }

    pub fn is_empty(&self) -> bool {
        self.config.read().is_empty()
    }

    /// Admits a request of `client`, or says which quota it is over and when to retry. The
    /// permit holds a concurrent-stream slot until it is dropped.
    pub fn admit(self: &Arc<Self>, client: &Arc<str>) -> Result<Option<Permit>, Exceeded> {
        let limits = self.config.read().for_client(client);
        if limits.is_empty() {
            return Ok(None);
        }
        let now = Instant::now();
        let now_minute = minute_of(SystemTime::now());
        let mut states = self.state.lock();
        let state = states.clients.entry(client.clone()).or_default();
        state.expire(now, now_minute);
        if let Some(exceeded) = state.over(&limits, now, now_minute) {
            return Err(exceeded);
        }
        state.recent.push_back(now);
        state.active += 1;
        Ok(Some(Permit {
            quotas: self.clone(),
            client: client.clone(),
        }))
    }

    /// Whether `name` is over one of its quotas now, without counting a request.
    pub fn check(&self, name: &str) -> Result<(), Exceeded> {
        let limits = self.config.read().for_client(name);
        if limits.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let now_minute = minute_of(SystemTime::now());
        let mut states = self.state.lock();
        match states.clients.get_mut(name) {
            Some(state) => {
                state.expire(now, now_minute);
                state.over(&limits, now, now_minute).map_or(Ok(()), Err)
            }
            None => Ok(()),
        }
    }

    /// Counts tokens a response sent with `credential` used, when that credential has a token
    /// quota.
    pub fn add_credential_tokens(&self, credential: &str, at: SystemTime, tokens: u64) {
        let counted = {
            let config = self.config.read();
            config
                .credentials
                .get(credential)
                .is_some_and(|limits| limits.tokens_per_day.is_some())
        };
        if counted {
            self.add_tokens(&credential_quota(credential), at, tokens);
        }
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
        let mut states = self.state.lock();
        let States { clients, dirty } = &mut *states;
        let name: Arc<str> = match clients.get_key_value(client) {
            Some((name, _)) => name.clone(),
            None => Arc::from(client),
        };
        let state = clients.entry(name.clone()).or_default();
        let counted_in = match state.tokens.back_mut() {
            Some((last, n)) if *last == minute => {
                *n += tokens;
                *last
            }
            // Ledger lines arrive in order; a late one joins the newest minute.
            Some((last, n)) if *last > minute => {
                *n += tokens;
                *last
            }
            _ => {
                state.tokens.push_back((minute, tokens));
                minute
            }
        };
        state.tokens_total += tokens;
        dirty.insert((name, counted_in));
    }

    /// Tokens `client` used in the last 24 hours, here and (as of the last exchange) elsewhere.
    pub fn tokens_used(&self, client: &str) -> u64 {
        let states = self.state.lock();
        states
            .clients
            .get(client)
            .map_or(0, |s| s.tokens_total + s.remote.tokens)
    }

    /// Where each of `client`'s quotas stands, here and (as of the last exchange) elsewhere.
    pub fn status(&self, client: &str) -> Vec<QuotaStatus> {
        let limits = self.config.read().for_client(client);
        if limits.is_empty() {
            return Vec::new();
        }
        let (now, wall) = (Instant::now(), SystemTime::now());
        let now_minute = minute_of(wall);
        let mut states = self.state.lock();
        let state = states.clients.get_mut(client);
        let mut quotas = Vec::new();
        let mut push = |quota, limit: u64, used: u64, resets_at: Option<SystemTime>| {
            quotas.push(QuotaStatus {
                quota,
                limit,
                used,
                left: limit.saturating_sub(used),
                resets_at: resets_at.map(crate::telemetry::ledger::rfc3339),
            });
        };
        let state = state.map(|state| {
            state.expire(now, now_minute);
            &*state
        });
        if let Some(limit) = limits.concurrent {
            let used = state.map_or(0, |s| s.active + s.remote.active);
            push("concurrent", limit.into(), used.into(), None);
        }
        if let Some(limit) = limits.requests_per_minute {
            let used = state.map_or(0, |s| s.recent.len() as u64 + u64::from(s.remote.recent));
            let oldest = state.and_then(|s| s.recent.front());
            let resets_at = oldest.map(|&at| wall + (at + MINUTE).saturating_duration_since(now));
            push("requests_per_minute", limit.into(), used, resets_at);
        }
        if let Some(limit) = limits.tokens_per_day {
            let used = state.map_or(0, |s| s.tokens_total + s.remote.tokens);
            let oldest = state.and_then(|s| {
                let here = s.tokens.front().map(|&(minute, _)| minute);
                let there = s.remote.hours.iter().map(|&(hour, _)| hour + 59).min();
                here.into_iter().chain(there).min()
            });
            let resets_at = oldest
                .map(|minute| UNIX_EPOCH + Duration::from_secs((minute + DAY_SECS / 60) * 60));
            push("tokens_per_day", limit, used, resets_at);
        }
        quotas
    }

    /// The clients some quota applies to: those named in the limits, and (with a default limit)
    /// every client counted since start; then the credentials with quotas (`credential:NAME`).
    pub fn clients(&self) -> Vec<Arc<str>> {
        let config = self.config.read();
        let mut names: HashSet<Arc<str>> = config
            .clients
            .iter()
            .filter(|(_, limits)| !limits.or(config.default).is_empty())
            .map(|(name, _)| Arc::from(name.as_str()))
            .collect();
        if !config.default.is_empty() {
            names.extend(
                self.state
                    .lock()
                    .clients
                    .keys()
                    .filter(|name| !name.starts_with(CREDENTIAL_PREFIX))
                    .cloned(),
            );
        }
        let mut names: Vec<_> = names.into_iter().collect();
        names.sort();
        let mut credentials: Vec<Arc<str>> = config
            .credentials
            .iter()
            .filter(|(_, limits)| !limits.is_empty())
            .map(|(name, _)| Arc::from(credential_quota(name)))
            .collect();
        credentials.sort();
        names.extend(credentials);
        names
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
        let mut states = self.quotas.state.lock();
        if let Some(state) = states.clients.get_mut(&self.client) {
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

    #[test]
    fn the_other_replicas_counts_are_added_to_this_ones() {
        let alice: Arc<str> = Arc::from("alice");
        let q = quotas(&["default:concurrent=2,requests-per-minute=5,tokens-per-day=100"]);
        let _mine = q.admit(&alice).unwrap();
        let others = |active, recent, tokens| {
            HashMap::from([(
                "alice".to_owned(),
                Remote {
                    active,
                    recent,
                    tokens,
                    hours: vec![(minute_of(SystemTime::now()) / 60 * 60, tokens)],
                },
            )])
        };
        q.set_remote(others(1, 0, 0));
        assert_eq!(q.admit(&alice).err().unwrap().quota, "concurrent");
        q.set_remote(others(0, 4, 0));
        assert_eq!(q.admit(&alice).err().unwrap().quota, "requests_per_minute");
        q.set_remote(others(0, 0, 100));
        let refused = q.admit(&alice).err().unwrap();
        assert_eq!(refused.quota, "tokens_per_day");
        assert!(refused.retry_after > Duration::from_secs(22 * 3600));
        // Unreachable: the others' streams and requests stop counting, their tokens do not.
        q.set_remote(others(1, 4, 50));
        q.forget_remote_live();
        assert!(q.admit(&alice).is_ok());
        assert_eq!(q.tokens_used("alice"), 50);

        // What is sent: this replica's changed minutes, once, unless given back.
        q.add_tokens("alice", SystemTime::now(), 7);
        let out = q.outgoing();
        assert_eq!(out.tokens.len(), 1);
        assert_eq!(out.tokens[0].2, 7);
        assert!(
            out.live
                .iter()
                .any(|(c, active, recent)| &**c == "alice" && *active == 1 && *recent == 2)
        );
        assert!(q.outgoing().tokens.is_empty());
        q.unsent(out);
        assert_eq!(q.outgoing().tokens.len(), 1);
    }
}
