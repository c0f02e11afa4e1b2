//! What keyward served, to whom: Prometheus metrics, the usage ledger, and the quota counts.
//! Every request's figures arrive here once, when its response has ended ([`Record`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use parking_lot::RwLock;

use crate::credential::chatgpt::tokens::TokenManager;
use crate::telemetry::daily::{Daily, Line};
use crate::telemetry::families::StateMetrics;
use crate::telemetry::ledger::{Entry, LedgerStore};
use crate::telemetry::quota::Quotas;
use crate::telemetry::record::Record;
use crate::telemetry::usage_view::{self, ClientUsage, OpenNow, OperatorUsage, Sources};

/// At most this many distinct clients and models get labels of their own; the rest are `other`.
const MAX_CLIENTS: usize = 100;
const MAX_MODELS: usize = 50;

use crate::telemetry::families::{
    DirectionLabels, EndLabels, LoginLabels, Metrics, QuotaLabels, RequestLabels, ResultLabels,
    TokenLabels, WindowLabels,
};

/// A bounded set of label values: the first `cap` distinct ones keep their name, later ones are
/// `other`.
struct Capped {
    cap: usize,
    known: RwLock<HashSet<Arc<str>>>,
    other: Arc<str>,
}

impl Capped {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            known: RwLock::new(HashSet::new()),
            other: Arc::from("other"),
        }
    }

    fn label(&self, value: &str) -> Arc<str> {
        if let Some(known) = self.known.read().get(value) {
            return known.clone();
        }
        let mut known = self.known.write();
        if let Some(label) = known.get(value) {
            return label.clone();
        }
        if known.len() < self.cap {
            let label: Arc<str> = Arc::from(value);
            known.insert(label.clone());
            return label;
        }
        self.other.clone()
    }
}

/// Shared by every worker.
pub struct Telemetry {
    metrics: Metrics,
    clients: Capped,
    models: Capped,
    /// Where ledger lines go: the file, and with `--state` the database's table.
    ledgers: Vec<Box<dyn LedgerStore>>,
    pub quotas: Arc<Quotas>,
    /// Usage by day, for the usage views.
    pub daily: Arc<Daily>,
    /// The ChatGPT logins, by the name of their credential.
    logins: Vec<(Arc<str>, Arc<TokenManager>)>,
    /// With `--state`: the database's health, and its metrics.
    state: Option<SharedTelemetry>,
    /// Refresh counts already turned into metric increments, by login.
    refreshes_seen: Vec<[AtomicU64; 2]>,
    /// Dropped log lines already turned into metric increments.
    log_dropped_seen: AtomicU64,
}

/// What the telemetry does with the state database (`--state`).
pub struct SharedTelemetry {
    pub db: Arc<crate::upstream::state_db::StateDb>,
    /// The record of response owners, whose changes go to the database too.
    pub owners: Option<Arc<crate::access::owners::Owners>>,
    metrics: Option<StateMetrics>,
}

impl SharedTelemetry {
    pub fn new(
        db: Arc<crate::upstream::state_db::StateDb>,
        owners: Option<Arc<crate::access::owners::Owners>>,
    ) -> Self {
        Self {
            db,
            owners,
            metrics: None,
        }
    }
}

impl Telemetry {
    pub fn new(
        ledgers: Vec<Box<dyn LedgerStore>>,
        quotas: Arc<Quotas>,
        logins: Vec<(Arc<str>, Arc<TokenManager>)>,
        state: Option<SharedTelemetry>,
    ) -> Self {
        let mut metrics = Metrics::new(!logins.is_empty());
        let state = state.map(|mut state| {
            state.metrics = Some(StateMetrics::register(&mut metrics.registry));
            state
        });
        Self {
            metrics,
            clients: Capped::new(MAX_CLIENTS),
            models: Capped::new(MAX_MODELS),
            ledgers,
            quotas,
            daily: Arc::new(Daily::default()),
            refreshes_seen: logins
                .iter()
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            logins,
            state,
            log_dropped_seen: AtomicU64::new(0),
        }
    }

    /// A stream started relaying; the returned guard ends it.
    pub fn stream_started(self: &Arc<Self>) -> StreamGuard {
        self.metrics.active_streams.inc();
        StreamGuard(self.clone())
    }

    /// A Responses WebSocket opened; the returned guard closes it.
    pub fn websocket_opened(self: &Arc<Self>) -> WebSocketGuard {
        self.metrics.websockets_open.inc();
        WebSocketGuard(self.clone())
    }

    /// One message relayed on a WebSocket, `in` from the client or `out` to it.
    pub fn websocket_message(&self, direction: &'static str) {
        self.metrics
            .websocket_messages
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    /// A `response.create` arrived on a WebSocket.
    pub fn websocket_turn(&self) {
        self.metrics.websocket_turns.inc();
    }

    pub fn quota_refused(&self, client: &str, quota: &'static str) {
        self.metrics
            .quota_refusals
            .get_or_create(&QuotaLabels {
                client: self.clients.label(client),
                quota,
            })
            .inc();
    }

    /// Counts a finished request everywhere.
    pub fn record(&self, record: &Record) {
        let m = &self.metrics;
        let client = self.clients.label(&record.client);
        let credential = record.credential.clone().unwrap_or_else(no_credential);
        m.requests
            .get_or_create(&RequestLabels {
                client: client.clone(),
                credential: credential.clone(),
                status: record.status,
                upstream_status: record.upstream_status,
            })
            .inc();
        m.duration.observe(record.duration.as_secs_f64());
        if let Some(ttfb) = record.upstream_ttfb {
            m.upstream_ttfb.observe(ttfb.as_secs_f64());
        }
        if let Some(overhead) = record.overhead {
            m.overhead.observe(overhead.as_secs_f64());
        }
        for (direction, n) in [("in", record.bytes_in), ("out", record.bytes_out)] {
            m.bytes
                .get_or_create(&DirectionLabels { direction })
                .inc_by(n);
        }
        if record.upstream_status.is_some() {
            m.ends
                .get_or_create(&EndLabels {
                    cause: record.end.as_str(),
                })
                .inc();
        }
        if let Some(tokens) = record.tokens {
            let model = self
                .models
                .label(record.model.as_deref().unwrap_or("unknown"));
            for (kind, n) in [
                ("input", tokens.input),
                ("cached_input", tokens.cached_input),
                ("output", tokens.output),
                ("reasoning", tokens.reasoning),
            ] {
                m.tokens
                    .get_or_create(&TokenLabels {
                        client: client.clone(),
                        credential: credential.clone(),
                        model: model.clone(),
                        kind,
                    })
                    .inc_by(n);
            }
            self.quotas
                .add_tokens(&record.client, record.at, tokens.total());
            if let Some(credential) = &record.credential {
                self.quotas
                    .add_credential_tokens(credential, record.at, tokens.total());
            }
        }
        self.daily.add(&Line::from_record(record));
        if !self.ledgers.is_empty() {
            let entry = Entry::from_record(record);
            for ledger in &self.ledgers {
                ledger.append(&entry);
            }
        }
    }

    /// `GET /keyward/usage`: `client`'s own usage, quotas and (with a ChatGPT login) plan.
    pub fn client_usage(&self, client: &str) -> ClientUsage {
        usage_view::client_usage(&self.usage_sources(), client)
    }

    /// The operator's `GET /usage`: every client's.
    pub fn operator_usage(&self) -> OperatorUsage {
        let open_now = OpenNow {
            streams: self.metrics.active_streams.get(),
            websockets: self.metrics.websockets_open.get(),
        };
        usage_view::operator_usage(&self.usage_sources(), open_now)
    }

    fn usage_sources(&self) -> Sources<'_> {
        Sources {
            daily: &self.daily,
            quotas: &self.quotas,
            plans: self
                .logins
                .iter()
                .filter_map(|(name, tokens)| Some((name.clone(), tokens.plan.latest()?)))
                .collect(),
            now: std::time::SystemTime::now(),
        }
    }

    /// Whether the ledger's disk (or, with `--state`, the database and the unsent file) has
    /// fallen so far behind that new requests must wait.
    pub fn ledger_behind(&self) -> bool {
        self.ledgers.iter().any(|ledger| ledger.is_behind())
    }

    /// With `--state`: the state database did not answer the last background work.
    pub fn state_down(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.db.is_down())
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        let state_metrics = self.state.as_ref().and_then(|s| s.metrics.as_ref());
        for ledger in &self.ledgers {
            let backlog = i64::try_from(ledger.backlog()).unwrap_or(i64::MAX);
            match (ledger.shipped(), state_metrics) {
                (None, _) => {
                    self.metrics.ledger_backlog.set(backlog);
                }
                (Some((sent, spilled)), Some(metrics)) => {
                    metrics.ledger_waiting.set(backlog);
                    metrics.catch_up(1, &metrics.ledger_sent, sent);
                    metrics.catch_up(2, &metrics.ledger_unsent, spilled);
                }
                (Some(_), None) => {}
            }
        }
        if let Some(state) = &self.state
            && let Some(metrics) = &state.metrics
        {
            metrics.up.set(i64::from(!state.db.is_down()));
            metrics.catch_up(0, &metrics.errors, state.db.errors());
            if let Some(owners) = &state.owners {
                metrics.catch_up(3, &metrics.owners_unshared, owners.unshared());
            }
        }
        for client in self.quotas.clients() {
            let label = self.clients.label(&client);
            for quota in self.quotas.status(&client) {
                let labels = QuotaLabels {
                    client: label.clone(),
                    quota: quota.quota,
                };
                let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                self.metrics
                    .quota_used
                    .get_or_create(&labels)
                    .set(gauge(quota.used));
                self.metrics
                    .quota_limit
                    .get_or_create(&labels)
                    .set(gauge(quota.limit));
            }
        }
        let dropped = crate::telemetry::log_writer::dropped_lines();
        let before = self
            .log_dropped_seen
            .swap(dropped, std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .log_lines_dropped
            .inc_by(dropped.saturating_sub(before));
        for ((credential, tokens), seen) in self.logins.iter().zip(&self.refreshes_seen) {
            use std::sync::atomic::Ordering;
            let stats = &tokens.stats;
            for (i, (result, total)) in [
                ("success", stats.successes.load(Ordering::Relaxed)),
                ("failure", stats.failures.load(Ordering::Relaxed)),
            ]
            .into_iter()
            .enumerate()
            {
                let before = seen[i].swap(total, Ordering::Relaxed);
                let labels = ResultLabels {
                    credential: credential.clone(),
                    result,
                };
                self.metrics
                    .refreshes
                    .get_or_create(&labels)
                    .inc_by(total.saturating_sub(before));
            }
            let login = LoginLabels {
                credential: credential.clone(),
            };
            self.metrics
                .expires_in
                .get_or_create(&login)
                .set(tokens.expires_in().unwrap_or(0));
            if let Some(usage) = tokens.plan.latest() {
                for (window, limit) in [("primary", usage.primary), ("secondary", usage.secondary)]
                {
                    let Some(limit) = limit else { continue };
                    let labels = WindowLabels {
                        credential: credential.clone(),
                        window,
                    };
                    self.metrics
                        .limit_used
                        .get_or_create(&labels)
                        .set(limit.used_percent);
                    if let Some(at) = limit.reset_at {
                        self.metrics.limit_resets_at.get_or_create(&labels).set(at);
                    }
                }
            }
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.metrics.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// Held while a response is relayed.
pub struct StreamGuard(Arc<Telemetry>);

/// An open WebSocket, counted until dropped.
pub struct WebSocketGuard(Arc<Telemetry>);

impl Drop for WebSocketGuard {
    fn drop(&mut self) {
        self.0.metrics.websockets_open.dec();
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.metrics.active_streams.dec();
    }
}

/// The `credential` label of a request keyward answered itself: empty, made once.
fn no_credential() -> Arc<str> {
    static EMPTY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Arc::from("")).clone()
}
