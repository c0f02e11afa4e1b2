//! The metric families keyward serves and their registration, with their labels.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) client: Arc<str>,
    /// The credential the request was sent with; empty when keyward answered itself.
    pub(crate) credential: Arc<str>,
    pub(crate) status: u16,
    /// Empty when keyward answered itself.
    pub(crate) upstream_status: Option<u16>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TokenLabels {
    pub(crate) client: Arc<str>,
    pub(crate) credential: Arc<str>,
    pub(crate) model: Arc<str>,
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndLabels {
    pub(crate) cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabels {
    pub(crate) direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub client: Arc<str>,
    pub quota: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WindowLabels {
    /// The ChatGPT login's credential.
    pub(crate) credential: Arc<str>,
    pub(crate) window: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub(crate) credential: Arc<str>,
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LoginLabels {
    pub(crate) credential: Arc<str>,
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
pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) upstream_ttfb: Histogram,
    pub(crate) duration: Histogram,
    pub(crate) overhead: Histogram,
    pub(crate) active_streams: Gauge,
    pub(crate) websockets_open: Gauge,
    pub(crate) websocket_turns: Counter,
    pub(crate) websocket_messages: Family<DirectionLabels, Counter>,
    pub(crate) bytes: Family<DirectionLabels, Counter>,
    pub(crate) ends: Family<EndLabels, Counter>,
    pub(crate) tokens: Family<TokenLabels, Counter>,
    pub(crate) quota_refusals: Family<QuotaLabels, Counter>,
    pub(crate) quota_used: Family<QuotaLabels, Gauge>,
    pub(crate) quota_limit: Family<QuotaLabels, Gauge>,
    pub(crate) refreshes: Family<ResultLabels, Counter>,
    pub(crate) expires_in: Family<LoginLabels, Gauge<i64, AtomicI64>>,
    pub(crate) limit_used: Family<WindowLabels, Gauge<f64, AtomicU64>>,
    pub(crate) limit_resets_at: Family<WindowLabels, Gauge>,
    pub(crate) log_lines_dropped: Counter,
    pub(crate) ledger_backlog: Gauge,
}

impl Metrics {
    pub(crate) fn new(chatgpt: bool) -> Self {
        let mut registry = Registry::with_prefix("keyward");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by client, the credential they were sent with, keyward's status and the upstream's status (credential and upstream status empty when keyward answered itself)",
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
            "Tokens used, from the usage of response.completed, by client, credential, model and kind (input, cached_input, output, reasoning)",
            tokens.clone(),
        );
        let quota_refusals = Family::<QuotaLabels, Counter>::default();
        registry.register(
            "quota_refusals",
            "Requests refused with 429 by client and quota",
            quota_refusals.clone(),
        );
        let quota_used = Family::<QuotaLabels, Gauge>::default();
        registry.register(
            "quota_used",
            "What a client has used of a quota: streams open now (concurrent), requests of the last minute (requests_per_minute), tokens of the last 24 hours (tokens_per_day)",
            quota_used.clone(),
        );
        let quota_limit = Family::<QuotaLabels, Gauge>::default();
        registry.register(
            "quota_limit",
            "A client's quota limit, by quota (concurrent, requests_per_minute, tokens_per_day)",
            quota_limit.clone(),
        );
        let websockets_open = Gauge::default();
        registry.register(
            "websockets_open",
            "Responses WebSockets open now",
            websockets_open.clone(),
        );
        let websocket_turns = Counter::default();
        registry.register(
            "websocket_turns",
            "response.create messages received on WebSockets (each a turn)",
            websocket_turns.clone(),
        );
        let websocket_messages = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "websocket_messages",
            "WebSocket messages relayed, by direction (in: from clients, out: to clients)",
            websocket_messages.clone(),
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
        let expires_in = Family::<LoginLabels, Gauge<i64, AtomicI64>>::default();
        let limit_used = Family::<WindowLabels, Gauge<f64, AtomicU64>>::default();
        let limit_resets_at = Family::<WindowLabels, Gauge>::default();
        if chatgpt {
            registry.register(
                "chatgpt_refreshes",
                "ChatGPT access token refreshes by login (its credential) and result (success, failure)",
                refreshes.clone(),
            );
            registry.register(
                "chatgpt_limit_used_percent",
                "How much of the ChatGPT plan's limit window is used, as the backend last said",
                limit_used.clone(),
            );
            registry.register(
                "chatgpt_limit_resets_at_seconds",
                "When the ChatGPT plan's limit window resets (Unix time), as the backend last said",
                limit_resets_at.clone(),
            );
            registry.register(
                "chatgpt_access_token_expires_in_seconds",
                "Seconds until each ChatGPT login's access token expires",
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
            websockets_open,
            websocket_turns,
            websocket_messages,
            bytes,
            ends,
            tokens,
            quota_refusals,
            quota_used,
            quota_limit,
            refreshes,
            expires_in,
            limit_used,
            limit_resets_at,
            log_lines_dropped,
            ledger_backlog,
        }
    }
}

/// With `--state`: the state database's health, and the usage ledger's rows on their way to it.
pub(crate) struct StateMetrics {
    pub(crate) up: Gauge,
    pub(crate) errors: Counter,
    pub(crate) ledger_waiting: Gauge,
    pub(crate) ledger_sent: Counter,
    pub(crate) ledger_unsent: Counter,
    pub(crate) owners_unshared: Counter,
    /// The totals already turned into counter increments: errors, sent, unsent, unshared.
    pub(crate) seen: [AtomicU64; 4],
}

impl StateMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            up: Gauge::default(),
            errors: Counter::default(),
            ledger_waiting: Gauge::default(),
            ledger_sent: Counter::default(),
            ledger_unsent: Counter::default(),
            owners_unshared: Counter::default(),
            seen: Default::default(),
        };
        registry.register(
            "state_database_up",
            "1 if the state database answered the last background work (ledger rows, sync), else 0",
            metrics.up.clone(),
        );
        registry.register(
            "state_database_errors",
            "Background work on the state database that failed (unreachable, or no answer within 5 s)",
            metrics.errors.clone(),
        );
        registry.register(
            "usage_ledger_rows_waiting",
            "Usage ledger rows in memory waiting for the state database",
            metrics.ledger_waiting.clone(),
        );
        registry.register(
            "usage_ledger_rows_stored",
            "Usage ledger rows stored in the state database",
            metrics.ledger_sent.clone(),
        );
        registry.register(
            "usage_ledger_rows_unsent",
            "Usage ledger rows written to usage-unsent.jsonl in the home because the state database was unreachable (sent when it is back)",
            metrics.ledger_unsent.clone(),
        );
        registry.register(
            "response_owners_unshared",
            "Response owners the state database did not take in time (over 100,000 waiting): only the replica that relayed them knows them",
            metrics.owners_unshared.clone(),
        );
        metrics
    }

    /// Brings a counter up to `total`.
    pub(crate) fn catch_up(&self, which: usize, counter: &Counter, total: u64) {
        let before = self.seen[which].swap(total, std::sync::atomic::Ordering::Relaxed);
        counter.inc_by(total.saturating_sub(before));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The files under `contrib/` that query keyward's metrics.
    const CONTRIB: [(&str, &str); 2] = [
        (
            "contrib/grafana/keyward.json",
            include_str!("../../contrib/grafana/keyward.json"),
        ),
        (
            "contrib/prometheus/keyward-alerts.yml",
            include_str!("../../contrib/prometheus/keyward-alerts.yml"),
        ),
    ];

    #[test]
    fn the_dashboard_and_the_alerts_query_only_metrics_keyward_serves() {
        let mut metrics = Metrics::new(true);
        StateMetrics::register(&mut metrics.registry);
        // A family is written once it has a sample.
        let client: Arc<str> = Arc::from("alice");
        let _ = metrics.requests.get_or_create(&RequestLabels {
            client: client.clone(),
            credential: Arc::from("api-key"),
            status: 200,
            upstream_status: None,
        });
        let _ = metrics.tokens.get_or_create(&TokenLabels {
            client: client.clone(),
            credential: Arc::from("api-key"),
            model: Arc::from("gpt-5"),
            kind: "input",
        });
        let _ = metrics
            .ends
            .get_or_create(&EndLabels { cause: "completed" });
        for direction in [&metrics.bytes, &metrics.websocket_messages] {
            let _ = direction.get_or_create(&DirectionLabels { direction: "in" });
        }
        let quota = QuotaLabels {
            client,
            quota: "tokens_per_day",
        };
        let _ = metrics.quota_refusals.get_or_create(&quota);
        let _ = metrics.quota_used.get_or_create(&quota);
        let _ = metrics.quota_limit.get_or_create(&quota);
        let _ = metrics.refreshes.get_or_create(&ResultLabels {
            credential: "plan".into(),
            result: "failure",
        });
        let _ = metrics.expires_in.get_or_create(&LoginLabels {
            credential: "plan".into(),
        });
        let window = WindowLabels {
            credential: "plan".into(),
            window: "primary",
        };
        let _ = metrics.limit_used.get_or_create(&window);
        let _ = metrics.limit_resets_at.get_or_create(&window);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        let served: HashSet<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|line| line.split(' ').next())
            .collect();
        let mut queried = 0;
        for (file, content) in CONTRIB {
            for (at, _) in content.match_indices("keyward_") {
                let name: String = content[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                let family = ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name);
                assert!(
                    served.contains(family),
                    "{file} queries {name}, which keyward does not serve"
                );
                queried += 1;
            }
        }
        assert!(queried > 20, "the files query {queried} metrics");
    }
}
