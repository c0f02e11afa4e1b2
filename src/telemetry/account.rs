//! One request's figures, collected as it passes through the pipeline's phases and written
//! once, when the pipeline's account phase closes them: the log line, the metrics, the ledger
//! and the quotas ([`Account::close`]). Nothing here runs on `Drop`: an account that is never
//! closed writes nothing (the pipeline's context closes every one, see
//! `crate::proxy::context`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use tokio::time::Instant;

use crate::access::owners::Owners;
use crate::telemetry::charge::{self, Bill, Charge, PlainSize};
use crate::telemetry::log_format::Escaped;
use crate::telemetry::metrics::Telemetry;
use crate::telemetry::record::{End, Record};
use crate::telemetry::usage::Tokens;
use crate::telemetry::usage::{EventName, Scanner, Seen};

/// One request's figures, from its head to its end.
pub struct Account {
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
    /// The credential it was sent with (none when keyward answered itself).
    credential: Option<Arc<str>>,
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
    /// What was called, and how its answer is charged.
    endpoint: &'static str,
    charge: Charge,
}

/// What a closed account charged, for the pipeline's account phase.
pub struct Settled {
    pub end: End,
    pub tokens: Option<Tokens>,
    pub estimated: bool,
    /// The id of the response the answer carried, when it was read.
    pub response_id: Option<String>,
}

impl Account {
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
            credential: None,
            telemetry: None,
            scanner: None,
            seen: Seen::default(),
            request_id: None,
            encoded: false,
            sent: None,
            upstream_wait: None,
            overhead: None,
            endpoint: "responses.create",
            charge: Charge::Generated,
        }
    }

    /// What was called (`responses.retrieve`, ...), and how its answer is charged.
    pub fn endpoint(&mut self, endpoint: &'static str, charge: Charge) {
        self.endpoint = endpoint;
        self.charge = charge;
    }

    /// How its answer is charged.
    pub fn charge(&self) -> Charge {
        self.charge
    }

    /// The metrics, ledger and quotas it goes to, when it is counted.
    pub fn telemetry(&self) -> Option<&Arc<Telemetry>> {
        self.telemetry.as_ref()
    }

    /// Who sent the request: the connection's uid and the client's name, as known.
    pub fn identify(&mut self, uid: Option<u32>, client: Option<Arc<str>>) {
        self.uid = uid;
        if client.is_some() {
            self.client = client;
        }
    }

    /// Who the request is counted for (`unknown` when the kernel could not name its user).
    pub fn client(&self) -> Arc<str> {
        self.client.clone().unwrap_or_else(|| Arc::from("unknown"))
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

    /// The request is being sent upstream now, with the credential named `credential`.
    pub fn sending(&mut self, credential: &Arc<str>) {
        self.sent = Some(Instant::now());
        self.credential = Some(credential.clone());
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

    /// The response head is handed to the client and its body starts relaying; with `claims`,
    /// a created response's id is wanted from it even when nothing else is.
    pub fn relaying(&mut self, sse: bool, claims: bool) {
        if let Some(wait) = self.upstream_wait {
            self.overhead = Some(self.started.elapsed().saturating_sub(wait));
        }
        if !self.encoded {
            if self.telemetry.is_some() {
                self.scanner = Some(Scanner::new(sse));
            } else if claims {
                self.scanner = Some(Scanner::id_only(sse));
            }
        }
    }

    /// A chunk of the upstream's body, on its way to the client, read for its usage.
    pub fn scan(&mut self, data: &[u8]) {
        if let Some(scanner) = &mut self.scanner {
            scanner.feed(data);
        }
    }

    /// The id of the response the answer carries, once it has passed.
    pub fn response_id(&self) -> Option<String> {
        self.scanner.as_ref().and_then(Scanner::response_id)
    }

    /// One message from the upstream on a WebSocket, read like an event of a stream; says which
    /// kind it was (a final one ends the turn).
    pub fn scan_event(&mut self, data: &[u8]) -> EventName {
        self.add_bytes_out(data.len());
        match &mut self.scanner {
            Some(scanner) => scanner.event(data),
            None => Scanner::new(true).event(data),
        }
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

    /// A response keyward made itself (an error), with no upstream body to wait for.
    pub fn local(&mut self, status: StatusCode, body_len: u64) {
        self.status = status;
        self.bytes_out = body_len;
    }

    pub fn add_bytes_out(&mut self, n: usize) {
        if self.first_byte.is_none() {
            self.first_byte = Some(self.started.elapsed());
        }
        self.bytes_out += n as u64;
    }

    /// How the request ended, if nothing said so before.
    pub fn end(&mut self, end: End) {
        self.end.get_or_insert(end);
    }

    /// Works out what the request is charged, as it ended (`end`): the usage read from its
    /// answer, or an estimate. `stored` is the record a stored response's usage is charged
    /// against (once); `read_body` is false when nothing more is wanted from the answer.
    pub fn settle(&mut self, end: End, stored: Option<&Owners>, read_body: bool) -> Settled {
        let mut end = self.end.unwrap_or(end);
        if let Some(scanner) = self.scanner.as_mut().filter(|_| read_body) {
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
            stored,
            answered: self.telemetry.is_some()
                && self.upstream_status.is_some_and(|s| s.is_success()),
            bytes_in,
            plain_in: &mut self.plain_size,
            output_bytes: match &self.scanner {
                Some(Scanner::Sse { .. }) => self.seen.text_bytes,
                _ => self.bytes_out,
            },
        });
        Settled {
            end,
            tokens,
            estimated,
            response_id: self.seen.id.take(),
        }
    }

    /// Writes the request's log line and hands its figures to the metrics, the ledger and the
    /// quotas: the end of its account.
    pub fn close(mut self, settled: Settled) {
        let Settled {
            end,
            tokens,
            estimated,
            ..
        } = settled;
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        // Milliseconds with microsecond precision.
        let millis = |d: Duration| d.as_micros() as f64 / 1000.0;
        let duration = self.started.elapsed();

        tracing::info!(
            method = %self.method,
            path = %Escaped(&self.path),
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
                credential: self.credential.take(),
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
