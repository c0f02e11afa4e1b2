//! Logging: the subscriber, and the one line written for each request.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::time::Instant;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the stderr logger. The level comes from `RUST_LOG`, `info` by default.
///
/// Lines are written by a background thread, through a buffer it flushes whenever it has no
/// more lines waiting: requests never wait on stderr, a busy keyward writes many lines per
/// syscall, and a quiet one shows each line at once. No line is dropped. Keep the returned guard
/// until the process ends: dropping it writes out what is left.
pub fn init(format: LogFormat) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("keyward-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    guard
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
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Completed => "completed",
            End::ClientGone => "client_gone",
            End::IdleTimeout => "stream_idle_timeout",
            End::UpstreamError => "upstream_stream_error",
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
            End::Completed | End::ClientGone => String::new(),
        }
    }
}

/// Collects one forwarded request's figures and writes its log line when dropped, that is when
/// the response body is finished or abandoned.
pub struct ExchangeLog {
    method: Method,
    path: String,
    started: Instant,
    status: StatusCode,
    upstream_status: Option<StatusCode>,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
    first_byte: Option<Duration>,
    end: Option<End>,
    /// The connection's owner, when the kernel was asked.
    uid: Option<u32>,
    /// The client token's name, with --client-tokens.
    client: Option<Arc<str>>,
}

impl ExchangeLog {
    pub fn new(method: Method, path: &str, started: Instant, bytes_in: Arc<AtomicU64>) -> Self {
        Self {
            method,
            path: path.to_owned(),
            started,
            status: StatusCode::OK,
            upstream_status: None,
            bytes_in,
            bytes_out: 0,
            first_byte: None,
            end: None,
            uid: None,
            client: None,
        }
    }

    /// Who sent the request: the connection's uid and the client token's name, as known.
    pub fn identify(&mut self, uid: Option<u32>, client: Option<Arc<str>>) {
        self.uid = uid;
        if client.is_some() {
            self.client = client;
        }
    }

    /// For bodies keyward reads whole before forwarding.
    pub fn add_bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The counter the request body adds to as it is forwarded.
    pub fn bytes_in(&self) -> Arc<AtomicU64> {
        self.bytes_in.clone()
    }

    pub fn upstream_status(&mut self, status: StatusCode) {
        self.status = status;
        self.upstream_status = Some(status);
    }

    /// A response keyward made itself (an error): logged now, with no upstream body to wait for.
    pub fn finish_local(mut self, status: StatusCode, body_len: u64) {
        self.status = status;
        self.bytes_out = body_len;
        self.end = Some(End::Completed);
    }

    pub fn add_bytes_out(&mut self, n: usize) {
        if self.first_byte.is_none() {
            self.first_byte = Some(self.started.elapsed());
        }
        self.bytes_out += n as u64;
    }

    pub fn end(&mut self, end: End) {
        self.end.get_or_insert(end);
    }
}

impl Drop for ExchangeLog {
    fn drop(&mut self) {
        let end = self.end.unwrap_or(End::ClientGone);
        // Milliseconds with microsecond precision.
        let millis = |d: Duration| d.as_micros() as f64 / 1000.0;

        tracing::info!(
            method = %self.method,
            path = %self.path.escape_debug(),
            uid = self.uid,
            client = self.client.as_deref(),
            status = self.status.as_u16(),
            upstream_status = self.upstream_status.map(|s| s.as_u16()),
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out,
            ttfb_ms = self.first_byte.map(millis),
            duration_ms = millis(self.started.elapsed()),
            end = end.as_str(),
            "request"
        );
    }
}
