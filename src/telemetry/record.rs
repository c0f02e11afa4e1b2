//! One finished request, as the metrics, the ledger and the quotas see it, and how its response
//! ended.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::telemetry::usage::Tokens;

/// One finished request, as the metrics, the ledger and the quotas see it.
#[derive(Debug, Clone)]
pub struct Record {
    pub at: SystemTime,
    pub client: Arc<str>,
    /// The credential it was sent with; none when keyward answered itself.
    pub credential: Option<Arc<str>>,
    /// What was called: `responses.create`, `responses.retrieve`, `models.list`, ...
    pub endpoint: &'static str,
    pub model: Option<String>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub end: End,
    pub tokens: Option<Tokens>,
    /// `tokens` is keyward's estimate: the upstream reported no usage.
    pub estimated: bool,
    pub duration: Duration,
    pub ttfb: Option<Duration>,
    pub upstream_ttfb: Option<Duration>,
    /// keyward's own share of the time to the response head.
    pub overhead: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub request_id: Option<String>,
}

/// How a relayed response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The upstream finished the body.
    Completed,
    /// The client went away first; the upstream request was dropped with it.
    ClientGone,
    /// The upstream was silent longer than `--idle-timeout`.
    IdleTimeout,
    /// The upstream connection broke mid-body.
    UpstreamError,
    /// An event stream ended cleanly but without `response.completed` (or `.incomplete` /
    /// `.failed`): the client did not get a whole response.
    NoCompletedEvent,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Completed => "completed",
            End::ClientGone => "client_gone",
            End::IdleTimeout => "stream_idle_timeout",
            End::UpstreamError => "upstream_stream_error",
            End::NoCompletedEvent => "no_completed_event",
        }
    }

    /// What the client is told when keyward cuts its stream.
    pub fn client_message(self, idle_limit: Duration) -> String {
        match self {
            End::IdleTimeout => format!(
                "the upstream API sent nothing for {}s, so keyward ended the stream (--idle-timeout)",
                idle_limit.as_secs()
            ),
            End::UpstreamError => {
                "the connection to the upstream API broke in the middle of the response".into()
            }
            End::Completed | End::ClientGone | End::NoCompletedEvent => String::new(),
        }
    }
}
