//! Logging: the subscriber, and the one line written for each request.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use tokio::time::Instant;
use tracing_subscriber::EnvFilter;

use crate::access::owners::Owners;
use crate::config::args::LogFormat;
use crate::telemetry::charge::{self, Bill, Charge, PlainSize};
use crate::telemetry::log_writer::{self, FlushGuard};
use crate::telemetry::metrics::{StreamGuard, Telemetry};
use crate::telemetry::quota::Permit;
use crate::telemetry::record::{End, Record};
use crate::telemetry::usage::{EventName, Scanner, Seen};

/// Installs the stderr logger. The level comes from `RUST_LOG`, `info` by default.
///
/// Lines are written by a background thread in batches ([`crate::telemetry::log_writer`]): requests never
/// wait on stderr, a busy keyward writes many lines per syscall, and a quiet one shows each line
/// within 50 ms. Past `buffer` bytes waiting (stderr stalled), lines are dropped and counted. Keep
/// the returned guard until the process ends: dropping it
/// writes out what is left.
pub fn init(format: LogFormat, buffer: u64) -> std::io::Result<FlushGuard> {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The WebSocket library logs whole handshake requests at trace, the upstream's credential
    // among them: it never logs below info, whatever RUST_LOG says.
    for quiet in ["tungstenite=info", "tokio_tungstenite=info"] {
        if let Ok(directive) = quiet.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let (writer, guard) = log_writer::spawn(
        std::io::stderr(),
        usize::try_from(buffer).unwrap_or(usize::MAX),
    )?;
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
    Ok(guard)
}

/// Collects one request's figures and, when dropped (the response body finished or was
/// abandoned), writes its log line and hands them to the metrics, the ledger and the quotas.
pub struct ExchangeLog {
    method: Method,
    path: String,
    started: Instant,
    at: SystemTime,
    status: StatusCode,
    upstream_status: Option<StatusCode>,
    bytes_in: Arc<AtomicU64>,
    /// How to learn the request body's size decoded, when it came compressed.
    plain_size: Option<PlainSize>,
    bytes_out: u64,
    first_byte: Option<Duration>,
    end: Option<End>,
    /// The connection's owner, when the kernel was asked.
    uid: Option<u32>,
    /// Who the request is counted for: the client token's name, else the user's name.
    client: Option<Arc<str>>,
    telemetry: Option<Arc<Telemetry>>,
    /// Reads the usage from the response as it passes (only when telemetry wants it).
    scanner: Option<Scanner>,
    seen: Seen,
    request_id: Option<String>,
    /// The upstream's answer is compressed (though keyward asked for it plain): its usage
    /// cannot be read, only estimated.
    encoded: bool,
    /// When the request went upstream, and how long its response head took.
    sent: Option<Instant>,
    upstream_wait: Option<Duration>,
    overhead: Option<Duration>,
    /// The concurrent-stream quota slot and the active-stream count, held to the end.
    permit: Option<Permit>,
    stream: Option<StreamGuard>,
    /// What was called, and how its answer is charged.
    endpoint: &'static str,
    charge: Charge,
    /// The record of response owners: a created response's id goes in as the client's.
    owners: Option<Arc<Owners>>,
    /// The response's id is in the record.
    recorded: bool,
}

impl ExchangeLog {
    pub fn new(method: Method, path: &str, started: Instant, bytes_in: Arc<AtomicU64>) -> Self {
        Self {
            method,
            path: path.to_owned(),
            started,
            at: SystemTime::now(),
            status: StatusCode::OK,
            upstream_status: None,
            bytes_in,
            plain_size: None,
            bytes_out: 0,
            first_byte: None,
            end: None,
            uid: None,
            client: None,
            telemetry: None,
            scanner: None,
            seen: Seen::default(),
            request_id: None,
            encoded: false,
            sent: None,
            upstream_wait: None,
            overhead: None,
            permit: None,
            stream: None,
            endpoint: "responses.create",
            charge: Charge::Generated,
            owners: None,
            recorded: false,
        }
    }

    /// What was called (`responses.retrieve`, ...), how its answer is charged, and the record
    /// its response id goes in (or is charged against, for a stored response).
    pub fn endpoint(
        &mut self,
        endpoint: &'static str,
        charge: Charge,
        owners: Option<Arc<Owners>>,
    ) {
        self.endpoint = endpoint;
        self.charge = charge;
        self.owners = owners;
    }

    /// Who sent the request: the connection's uid and the client's name, as known.
    pub fn identify(&mut self, uid: Option<u32>, client: Option<Arc<str>>) {
        self.uid = uid;
        if client.is_some() {
            self.client = client;
        }
    }

    /// Counts this request in the metrics, the ledger and the quotas when it ends.
    pub fn track(&mut self, telemetry: Arc<Telemetry>) {
        self.telemetry = Some(telemetry);
    }

    /// Not counted in the metrics, ledger or quotas after all (a WebSocket handshake: its turns
    /// are); the log line is still written.
    pub fn untrack(&mut self) {
        self.telemetry = None;
    }

    /// Holds a concurrent-stream quota slot until the response ends.
    pub fn hold(&mut self, permit: Option<Permit>) {
        self.permit = permit;
    }

    /// The request is being sent upstream now.
    pub fn sending(&mut self) {
        self.sent = Some(Instant::now());
    }

    /// The upstream's response head arrived.
    pub fn upstream_head(&mut self, status: StatusCode, headers: &http::HeaderMap) {
        self.upstream_status(status);
        self.upstream_wait = self.sent.map(|sent| sent.elapsed());
        self.encoded = headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        self.request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
    }

    /// The response head is handed to the client and its body starts relaying.
    pub fn relaying(&mut self, sse: bool) {
        if let Some(wait) = self.upstream_wait {
            self.overhead = Some(self.started.elapsed().saturating_sub(wait));
        }
        if let Some(telemetry) = &self.telemetry {
            self.stream = Some(telemetry.stream_started());
        }
        // Without telemetry the body is read only for a created response's id.
        let claims = self.owners.is_some() && self.charge == Charge::Generated;
        if !self.encoded {
            if self.telemetry.is_some() {
                self.scanner = Some(Scanner::new(sse));
            } else if claims {
                self.scanner = Some(Scanner::id_only(sse));
            }
        }
    }

    /// A chunk of the upstream's body, on its way to the client.
    pub fn scan(&mut self, data: &[u8]) {
        if self.recorded && self.telemetry.is_none() {
            // The id is in the record, and nothing else is wanted from the body.
            return;
        }
        if let Some(scanner) = &mut self.scanner {
            scanner.feed(data);
            self.claim_id();
        }
    }

    /// A created response's id goes in the record as soon as it passes: the client may retrieve
    /// or cancel it before its stream ends.
    fn claim_id(&mut self) {
        if self.recorded || self.charge != Charge::Generated {
            return;
        }
        let (Some(owners), Some(scanner)) = (&self.owners, &self.scanner) else {
            return;
        };
        if let Some(id) = scanner.response_id() {
            owners.record(&id, self.client.as_deref().unwrap_or("unknown"), false);
            self.recorded = true;
        }
    }

    /// One message from the upstream on a WebSocket, read like an event of a stream; says which
    /// kind it was (a final one ends the turn).
    pub fn scan_event(&mut self, data: &[u8]) -> EventName {
        self.add_bytes_out(data.len());
        let name = match &mut self.scanner {
            Some(scanner) => scanner.event(data),
            None => Scanner::new(true).event(data),
        };
        self.claim_id();
        name
    }

    /// A whole response object keyward assembled itself (the ChatGPT backend, for a client that
    /// did not ask for a stream).
    pub fn saw_response(&mut self, response: &serde_json::Value) {
        self.seen = Seen::from_response(response);
    }
    /// For bodies keyward reads whole before forwarding.
    pub fn add_bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The counter the request body adds to as it is forwarded.
    pub fn bytes_in(&self) -> Arc<AtomicU64> {
        self.bytes_in.clone()
    }

    /// How to learn the size of a compressed request body, decoded: an estimate counts the
    /// text, not its compressed bytes. Asked only when an estimate is made.
    pub fn plain_size(&mut self, size: PlainSize) {
        self.plain_size = Some(size);
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
        let mut end = self.end.unwrap_or(End::ClientGone);
        // Read for its id alone, a body that showed it has nothing more to give.
        let wanted = self.telemetry.is_some() || !self.recorded;
        if let Some(scanner) = self.scanner.as_mut().filter(|_| wanted) {
            let sse = matches!(scanner, Scanner::Sse { .. });
            self.seen = scanner.finish();
            if sse
                && end == End::Completed
                && self.status.is_success()
                && self.seen.status.is_none()
            {
                end = End::NoCompletedEvent;
            }
        }
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let (tokens, estimated) = charge::settle(Bill {
            charge: self.charge,
            seen: &self.seen,
            owners: self.owners.as_deref(),
            client: self.client.as_deref().unwrap_or("unknown"),
            recorded: self.recorded,
            answered: self.telemetry.is_some()
                && self.upstream_status.is_some_and(|s| s.is_success()),
            bytes_in,
            plain_in: &mut self.plain_size,
            output_bytes: match &self.scanner {
                Some(Scanner::Sse { .. }) => self.seen.text_bytes,
                _ => self.bytes_out,
            },
        });
        // Milliseconds with microsecond precision.
        let millis = |d: Duration| d.as_micros() as f64 / 1000.0;
        let duration = self.started.elapsed();

        tracing::info!(
            method = %self.method,
            path = %self.path.escape_debug(),
            uid = self.uid,
            client = self.client.as_deref(),
            status = self.status.as_u16(),
            upstream_status = self.upstream_status.map(|s| s.as_u16()),
            model = self.seen.model.as_deref(),
            input_tokens = tokens.map(|t| t.input),
            output_tokens = tokens.map(|t| t.output),
            estimated = estimated.then_some(true),
            bytes_in,
            bytes_out = self.bytes_out,
            ttfb_ms = self.first_byte.map(millis),
            duration_ms = millis(duration),
            end = end.as_str(),
            "request"
        );

        if let Some(telemetry) = &self.telemetry {
            telemetry.record(&Record {
                at: self.at,
                client: self.client.clone().unwrap_or_else(|| Arc::from("unknown")),
                endpoint: self.endpoint,
                model: self.seen.model.take(),
                status: self.status.as_u16(),
                upstream_status: self.upstream_status.map(|s| s.as_u16()),
                end,
                tokens,
                estimated,
                duration,
                ttfb: self.first_byte,
                upstream_ttfb: self
                    .sent
                    .zip(self.upstream_wait)
                    .map(|(sent, wait)| sent.duration_since(self.started) + wait),
                overhead: self.overhead,
                bytes_in,
                bytes_out: self.bytes_out,
                request_id: self.request_id.take(),
            });
        }
    }
}
