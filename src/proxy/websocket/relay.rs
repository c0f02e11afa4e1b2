//! One WebSocket relayed: each message goes on the moment it arrives, each way; pings, pongs
//! and close codes pass through; a silent upstream mid-turn gets the client an `error` message
//! and a close; shutdown closes an idle socket at once and lets a running turn finish.

use std::sync::Arc;

use futures_util::{FutureExt, SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::config::Limits;
use crate::proxy::dump::{DumpSink, ExchangeId};
use crate::proxy::error::ProxyError;
use crate::proxy::websocket::fallback::{SocketFallback, close_in_background};
use crate::proxy::websocket::turns::{FromClient, Turns, error_message};
use crate::telemetry::metrics::Telemetry;
use crate::telemetry::record::End;
use crate::upstream::WsIo;

type ClientSocket = WebSocketStream<TokioIo<Upgraded>>;
type UpstreamSocket = WebSocketStream<WsIo>;

/// How long a close handshake may take once one side has closed.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Relay {
    client: ClientSocket,
    upstream: UpstreamSocket,
    turns: Turns,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    telemetry: Option<Arc<Telemetry>>,
    /// The dumps of the client's and the upstream's messages.
    dumps: Option<(DumpSink, Option<DumpSink>)>,
    /// What the upstream sent behind a batch of text messages, not yet handled.
    held: Option<Option<Result<Message, WsError>>>,
    /// On a route with several credentials: what moves a turn refused for the plan's limit.
    fallback: Option<SocketFallback>,
}

/// Why the relay stopped.
enum Ended {
    ClientClosed(Option<CloseFrame>),
    UpstreamClosed(Option<CloseFrame>),
    ClientGone,
    UpstreamBroke,
    TooBig,
    Idle,
    Shutdown,
}

impl Relay {
    pub fn new(
        client: ClientSocket,
        upstream: UpstreamSocket,
        turns: Turns,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
        telemetry: Option<Arc<Telemetry>>,
        dumps: Option<(ExchangeId, DumpSink, Option<DumpSink>)>,
    ) -> Self {
        Self {
            client,
            upstream,
            turns,
            limits,
            shutdown,
            telemetry,
            dumps: dumps.map(|(_, request, response)| (request, response)),
            held: None,
            fallback: None,
        }
    }

    pub fn with_fallback(mut self, fallback: Option<SocketFallback>) -> Self {
        self.fallback = fallback;
        self
    }

    pub async fn run(mut self) {
        let ended = self.relay().await;
        self.finish(ended).await;
    }

    fn count(&self, direction: &'static str) {
        if let Some(telemetry) = &self.telemetry {
            telemetry.websocket_message(direction);
        }
    }

    fn dump(&mut self, from_client: bool, text: &str) {
        if let Some((request, response)) = &mut self.dumps {
            let sink = if from_client {
                Some(request)
            } else {
                response.as_mut()
            };
            if let Some(sink) = sink {
                sink.append(text.as_bytes());
                sink.append(b"\n");
            }
        }
    }

    async fn relay(&mut self) -> Ended {
        let mut draining = *self.shutdown.borrow();
        let mut grace_ends: Option<Instant> =
            draining.then(|| Instant::now() + self.limits.shutdown_grace);
        loop {
            // A message read ahead while sending a batch goes first.
            if let Some(held) = self.held.take() {
                if let Some(ended) = self.relay_upstream(held).await {
                    return ended;
                }
                continue;
            }
            if draining && !self.turns.running() {
                return Ended::Shutdown;
            }
            // Silence is a fault only while the upstream owes the client a response.
            let idle_deadline = self
                .turns
                .running()
                .then(|| Instant::now() + self.limits.idle_timeout);
            tokio::select! {
                message = self.client.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        self.count("in");
                        self.dump(true, text.as_str());
                        match self.turns.client_message(text.as_str()) {
                            FromClient::Forward(forwarded) => {
                                if let Some(fallback) = &mut self.fallback {
                                    fallback.client_message(text.as_str());
                                }
                                if self.upstream.send(Message::text(forwarded)).await.is_err() {
                                    return Ended::UpstreamBroke;
                                }
                            }
                            FromClient::OverCredentialQuota(err) => {
                                if let Some(fallback) = &mut self.fallback {
                                    fallback.client_message(text.as_str());
                                }
                                if !self.moved_on(None).await {
                                    let error = self.turns.refuse_running(&err);
                                    self.count("out");
                                    if self.client.send(Message::text(error)).await.is_err() {
                                        return Ended::ClientGone;
                                    }
                                }
                            }
                            FromClient::Refuse(error) => {
                                self.count("out");
                                if self.client.send(Message::text(error)).await.is_err() {
                                    return Ended::ClientGone;
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Close(frame))) => return Ended::ClientClosed(frame),
                    Some(Ok(Message::Frame(_))) => {}
                    Some(Ok(other)) => {
                        self.count("in");
                        if self.upstream.send(other).await.is_err() {
                            return Ended::UpstreamBroke;
                        }
                    }
                    // A message or frame over --max-body.
                    Some(Err(WsError::Capacity(_))) => return Ended::TooBig,
                    Some(Err(_)) | None => return Ended::ClientGone,
                },
                message = self.upstream.next() => {
                    if let Some(ended) = self.relay_upstream(message).await {
                        return ended;
                    }
                }
                () = sleep_until(idle_deadline.unwrap_or_else(far_future)), if idle_deadline.is_some() => {
                    return Ended::Idle;
                }
                () = sleep_until(grace_ends.unwrap_or_else(far_future)), if grace_ends.is_some() => {
                    return Ended::Shutdown;
                }
                changed = self.shutdown.changed(), if !draining => {
                    if changed.is_err() || *self.shutdown.borrow() {
                        draining = true;
                        grace_ends = Some(Instant::now() + self.limits.shutdown_grace);
                    }
                }
            }
        }
    }

    /// One item from the upstream. Text messages that have already arrived behind it leave with
    /// it: they are fed to the client and flushed once (no waiting for more, as with events
    /// that arrived together over HTTP).
    async fn relay_upstream(&mut self, message: Option<Result<Message, WsError>>) -> Option<Ended> {
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => return Some(Ended::UpstreamClosed(frame)),
            Some(Ok(Message::Frame(_))) => return None,
            Some(Ok(other)) => {
                self.count("out");
                return self
                    .client
                    .send(other)
                    .await
                    .err()
                    .map(|_| Ended::ClientGone);
            }
            Some(Err(_)) | None => return Some(Ended::UpstreamBroke),
        };
        let mut text = text;
        loop {
            if self.moved(text.as_str()).await {
                break;
            }
            self.dump(false, text.as_str());
            self.turns.upstream_message(text.as_str());
            self.count("out");
            if self.client.feed(Message::Text(text)).await.is_err() {
                return Some(Ended::ClientGone);
            }
            match self.upstream.next().now_or_never() {
                Some(Some(Ok(Message::Text(next)))) => text = next,
                Some(other) => {
                    self.held = Some(other);
                    break;
                }
                None => break,
            }
        }
        self.client.flush().await.err().map(|_| Ended::ClientGone)
    }

    /// Whether `text` refused the running turn for the plan's limit and the turn went to the
    /// route's next credential: the socket goes on with that credential's upstream, and the
    /// client never sees the refusal.
    async fn moved(&mut self, text: &str) -> bool {
        let Some(seconds) = self.fallback.as_mut().and_then(|f| f.refused(text)) else {
            return false;
        };
        self.moved_on(Some(seconds)).await
    }

    /// Whether the running turn went to the route's next credential (the one in use resting for
    /// `spent` seconds when its plan is spent): the socket goes on with that credential's
    /// upstream.
    async fn moved_on(&mut self, spent: Option<i64>) -> bool {
        let Some(fallback) = &mut self.fallback else {
            return false;
        };
        let Some(socket) = fallback.move_turn(spent, &mut self.turns).await else {
            return false;
        };
        let old = std::mem::replace(&mut self.upstream, socket);
        close_in_background(old, CLOSE_WAIT);
        true
    }

    /// Closes both sides as `ended` says, and ends the running turn.
    async fn finish(mut self, ended: Ended) {
        let going_away = |reason: &str| {
            Some(CloseFrame {
                code: CloseCode::Away,
                reason: reason.to_owned().into(),
            })
        };
        let (to_client, to_upstream, turn_end) = match ended {
            Ended::ClientClosed(frame) => (None, Some(frame), End::ClientGone),
            Ended::UpstreamClosed(frame) => (Some(frame), None, End::UpstreamError),
            Ended::ClientGone => (
                None,
                Some(going_away("the client went away")),
                End::ClientGone,
            ),
            Ended::UpstreamBroke => {
                let message = error_message(&ProxyError::BackendStream(
                    "the connection to the upstream API broke in the middle of the response".into(),
                ));
                let _ = self.client.send(Message::text(message)).await;
                (
                    Some(Some(CloseFrame {
                        code: CloseCode::Error,
                        reason: "upstream connection broke".into(),
                    })),
                    None,
                    End::UpstreamError,
                )
            }
            Ended::TooBig => (
                Some(Some(CloseFrame {
                    code: CloseCode::Size,
                    reason: format!(
                        "a message is larger than keyward's limit of {} bytes (--max-body)",
                        self.limits.max_body
                    )
                    .into(),
                })),
                Some(going_away("the client sent a message too large")),
                End::ClientGone,
            ),
            Ended::Idle => {
                let message = serde_json::json!({
                    "type": "error",
                    "status": 504,
                    "error": {
                        "type": "keyward_stream_error",
                        "code": "stream_idle_timeout",
                        "message": format!(
                            "the upstream API sent nothing for {}s, so keyward ended the socket (--idle-timeout)",
                            self.limits.idle_timeout.as_secs()
                        ),
                        "param": null,
                    }
                });
                let _ = self.client.send(Message::text(message.to_string())).await;
                (
                    Some(Some(CloseFrame {
                        code: CloseCode::Again,
                        reason: "the upstream was silent (--idle-timeout)".into(),
                    })),
                    Some(going_away("keyward ended the socket")),
                    End::IdleTimeout,
                )
            }
            Ended::Shutdown => (
                Some(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "keyward is shutting down".into(),
                })),
                Some(going_away("keyward is shutting down")),
                End::ClientGone,
            ),
        };
        self.turns.end(turn_end);
        let client = &mut self.client;
        let upstream = &mut self.upstream;
        let close_both = async {
            if let Some(frame) = to_client {
                let _ = client.close(frame).await;
                // Let the close handshake finish: read until the client's reply.
                while let Some(Ok(_)) = client.next().await {}
            }
            if let Some(frame) = to_upstream {
                let _ = upstream.close(frame).await;
                while let Some(Ok(_)) = upstream.next().await {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, close_both).await;
        if let Some((mut request, response)) = self.dumps.take() {
            request.set_end("completed");
            if let Some(mut response) = response {
                response.set_end("completed");
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}
