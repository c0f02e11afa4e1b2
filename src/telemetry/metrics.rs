//! What keyward served, to whom: Prometheus metrics, the usage ledger, and the quota counts.
//! Every request's figures arrive here once, when its response has ended ([`Record`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::credential::chatgpt::tokens::TokenManager;
use crate::telemetry::ledger::Ledger;
use crate::telemetry::quota::Quotas;
use crate::telemetry::record::Record;

/// At most this many distinct clients and models get labels of their own; the rest are `other`.
const MAX_CLIENTS: usize = 100;
const MAX_MODELS: usize = 50;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    client: Arc<str>,
    status: u16,
    /// Empty when keyward answered itself.
    upstream_status: Option<u16>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    client: Arc<str>,
    model: Arc<str>,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub client: Arc<str>,
    pub quota: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 9 minutes.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

fn overhead_histogram() -> Histogram {
    // 10 µs to about 160 ms.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 15))
}

/// The metric families.
struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_ttfb: Histogram,
    duration: Histogram,
    overhead: Histogram,
    active_streams: Gauge,
    bytes: Family<DirectionLabels, Counter>,
    ends: Family<EndLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    quota_refusals: Family<QuotaLabels, Counter>,
    refreshes: Family<ResultLabels, Counter>,
    expires_in: Gauge<i64, AtomicI64>,
    log_lines_dropped: Counter,
    ledger_backlog: Gauge,
}

impl Metrics {
    fn new(chatgpt: bool) -> Self {
        let mut registry = Registry::with_prefix("keyward");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests to /v1/responses by client, keyward's status and the upstream's status (empty when keyward answered itself)",
            requests.clone(),
        );
        let upstream_ttfb = latency_histogram();
        registry.register(
            "upstream_first_byte_seconds",
            "Time from receiving a request to the upstream's response headers",
            upstream_ttfb.clone(),
        );
        let duration = latency_histogram();
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to the end of its response",
            duration.clone(),
        );
        let overhead = overhead_histogram();
        registry.register(
            "overhead_seconds",
            "keyward's own added latency: time to the response head minus the upstream's",
            overhead.clone(),
        );
        let active_streams = Gauge::default();
        registry.register(
            "active_streams",
            "Responses being relayed now",
            active_streams.clone(),
        );
        let bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "bytes",
            "Body bytes from clients (in) and to clients (out)",
            bytes.clone(),
        );
        let ends = Family::<EndLabels, Counter>::default();
        registry.register(
            "streams_ended",
            "Relayed responses by how they ended: completed, client_gone, upstream_stream_error, stream_idle_timeout, no_completed_event",
            ends.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens used, from the usage of response.completed, by client, model and kind (input, cached_input, output, reasoning)",
            tokens.clone(),
        );
        let quota_refusals = Family::<QuotaLabels, Counter>::default();
        registry.register(
            "quota_refusals",
            "Requests refused with 429 by client and quota",
            quota_refusals.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because stderr was not read fast enough (--log-buffer was full)",
            log_lines_dropped.clone(),
        );
        let ledger_backlog = Gauge::default();
        registry.register(
            "usage_ledger_backlog_bytes",
            "Bytes of usage ledger lines waiting for the disk (over --usage-log-buffer, requests get 503)",
            ledger_backlog.clone(),
        );
        let refreshes = Family::<ResultLabels, Counter>::default();
        let expires_in = Gauge::<i64, AtomicI64>::default();
        if chatgpt {
            registry.register(
                "chatgpt_refreshes",
                "ChatGPT access token refreshes by result (success, failure)",
                refreshes.clone(),
            );
            registry.register(
                "chatgpt_access_token_expires_in_seconds",
                "Seconds until the ChatGPT access token expires",
                expires_in.clone(),
            );
        }
        Self {
            registry,
            requests,
            upstream_ttfb,
            duration,
            overhead,
            active_streams,
            bytes,
            ends,
            tokens,
            quota_refusals,
            refreshes,
            expires_in,
            log_lines_dropped,
            ledger_backlog,
        }
    }
}

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
        if let Some(known) = self
            .known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(value)
        {
            return known.clone();
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
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
    ledger: Option<Ledger>,
    pub quotas: Arc<Quotas>,
    chatgpt: Option<Arc<TokenManager>>,
    /// Refresh counts already turned into metric increments.
    refreshes_seen: [AtomicU64; 2],
    /// Dropped log lines already turned into metric increments.
    log_dropped_seen: AtomicU64,
}

impl Telemetry {
    pub fn new(
        ledger: Option<Ledger>,
        quotas: Arc<Quotas>,
        chatgpt: Option<Arc<TokenManager>>,
    ) -> Self {
        Self {
            metrics: Metrics::new(chatgpt.is_some()),
            clients: Capped::new(MAX_CLIENTS),
            models: Capped::new(MAX_MODELS),
            ledger,
            quotas,
            chatgpt,
            refreshes_seen: [AtomicU64::new(0), AtomicU64::new(0)],
            log_dropped_seen: AtomicU64::new(0),
        }
    }

    /// A stream started relaying; the returned guard ends it.
    pub fn stream_started(self: &Arc<Self>) -> StreamGuard {
        self.metrics.active_streams.inc();
        StreamGuard(self.clone())
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
        m.requests
            .get_or_create(&RequestLabels {
                client: client.clone(),
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
                        model: model.clone(),
                        kind,
                    })
                    .inc_by(n);
            }
            self.quotas
                .add_tokens(&record.client, record.at, tokens.total());
        }
        if let Some(ledger) = &self.ledger {
            ledger.append(record);
        }
    }

    /// Whether the ledger's disk has fallen so far behind that new requests must wait.
    pub fn ledger_behind(&self) -> bool {
        self.ledger.as_ref().is_some_and(Ledger::is_behind)
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        if let Some(ledger) = &self.ledger {
            self.metrics
                .ledger_backlog
                .set(i64::try_from(ledger.backlog()).unwrap_or(i64::MAX));
        }
        let dropped = crate::telemetry::log_writer::dropped_lines();
        let before = self
            .log_dropped_seen
            .swap(dropped, std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .log_lines_dropped
            .inc_by(dropped.saturating_sub(before));
        if let Some(tokens) = &self.chatgpt {
            use std::sync::atomic::Ordering;
            let stats = &tokens.stats;
            for (i, (result, total)) in [
                ("success", stats.successes.load(Ordering::Relaxed)),
                ("failure", stats.failures.load(Ordering::Relaxed)),
            ]
            .into_iter()
            .enumerate()
            {
                let before = self.refreshes_seen[i].swap(total, Ordering::Relaxed);
                self.metrics
                    .refreshes
                    .get_or_create(&ResultLabels { result })
                    .inc_by(total.saturating_sub(before));
            }
            self.metrics
                .expires_in
                .set(tokens.expires_in().unwrap_or(0));
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

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.metrics.active_streams.dec();
    }
}
