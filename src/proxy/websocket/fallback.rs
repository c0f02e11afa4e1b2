//! The fallback over a WebSocket. A socket opens with the first usable credential of the
//! client's route; a handshake refused because the plan is spent goes to the next. On a route
//! with somewhere to go next, a turn the upstream refuses for the plan's limit, before any of its
//! answer, is sent again on a socket to the route's next usable credential — with the whole
//! conversation, since that socket never saw the responses the turn continues. The client's
//! socket stays as it is and sees one answer; that turn and the ones after it go on with the new
//! credential.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::proxy::context::Context;
use crate::proxy::credential::Credential;
use crate::proxy::credentials::Credentials;
use crate::proxy::error::ProxyError;
use crate::proxy::pipeline::spent_for;
use crate::proxy::websocket::conversation::Conversation;
use crate::proxy::websocket::dial::{Dialer, Handshake};
use crate::proxy::websocket::turns::Turns;
use crate::upstream::WsIo;

type UpstreamSocket = WebSocketStream<WsIo>;

/// A socket's route: its credentials in the order they are tried, and the one in use.
pub struct Route {
    credentials: Arc<Credentials>,
    chain: Vec<usize>,
    at: usize,
    /// The client's `session-id`: the session stays with the credential that last answered it.
    session: Option<String>,
}

impl Route {
    pub fn new(credentials: Arc<Credentials>, mut chain: Vec<usize>, headers: &HeaderMap) -> Self {
        let session = (chain.len() > 1)
            .then(|| headers.get("session-id")?.to_str().ok().map(str::to_owned))
            .flatten();
        if let Some(session) = &session {
            credentials.sticky(&mut chain, session);
        }
        Self {
            credentials,
            chain,
            at: 0,
            session,
        }
    }

    /// The credential in use.
    pub fn credential(&self) -> &Credential {
        self.credentials.get(self.index())
    }

    /// The credential in use, by index.
    pub fn index(&self) -> usize {
        self.chain[self.at]
    }

    /// Whether another credential comes after the one in use.
    pub fn has_next(&self) -> bool {
        self.at + 1 < self.chain.len()
    }

    /// Opens the upstream's socket: with the first credential within its quotas, and while a
    /// handshake is refused because the plan is spent, the next. The last answer is the
    /// client's.
    pub async fn open(
        mut self,
        dialer: &Dialer,
        client_headers: &HeaderMap,
        ctx: &mut Context,
    ) -> Result<(Self, Handshake), ProxyError> {
        loop {
            if let Err(err) = self.credentials.within_quota(self.chain[self.at]) {
                if !self.has_next() {
                    return Err(err);
                }
                self.at += 1;
                continue;
            }
            let opened = dialer.open(self.credential(), client_headers, ctx).await?;
            if let Handshake::Refused(StatusCode::TOO_MANY_REQUESTS, head, body) = &opened
                && self.has_next()
                && let Some(seconds) = spent_for(head, body)
            {
                self.rest(seconds);
                self.at += 1;
                continue;
            }
            if matches!(opened, Handshake::Open(..)) {
                self.answered();
            }
            return Ok((self, opened));
        }
    }

    /// The credential in use rests for `seconds`: its plan's limit is reached.
    fn rest(&self, seconds: i64) {
        self.credentials.mark_spent(self.chain[self.at], seconds);
        tracing::warn!(
            credential = %self.credential().name(),
            resets_in_s = seconds,
            "the plan's limit is reached: this credential rests until its reset, and the \
             WebSocket goes to the route's next"
        );
    }

    /// The credential in use answered the socket's session.
    fn answered(&self) {
        if let Some(session) = &self.session {
            self.credentials.remember(session, self.chain[self.at]);
        }
    }
}

/// What a socket on a route with several credentials keeps to move a turn.
pub struct SocketFallback {
    route: Route,
    dialer: Dialer,
    /// The client's handshake headers, for the handshakes of sockets opened later.
    client_headers: HeaderMap,
    conversation: Conversation,
}

impl SocketFallback {
    /// `limit`: the most bytes of conversation kept (`--max-body`).
    pub fn new(route: Route, dialer: Dialer, client_headers: HeaderMap, limit: u64) -> Self {
        Self {
            route,
            dialer,
            client_headers,
            conversation: Conversation::new(limit),
        }
    }

    /// A message the client sent on, as it sent it.
    pub fn client_message(&mut self, text: &str) {
        self.conversation.client_message(text);
    }

    /// A message from the upstream: the seconds the credential rests when it refuses the running
    /// turn because the plan is spent.
    pub fn refused(&mut self, text: &str) -> Option<i64> {
        self.conversation.upstream_message(text)
    }

    /// The running turn cannot be answered with the credential in use: its plan is spent (it
    /// rests for `spent` seconds) or it is over its quota. The turn goes, whole, to a socket of
    /// the route's next usable credential within its quotas, which is returned. `None`: nowhere
    /// to go (none usable, none answered, or the conversation is not known).
    pub async fn move_turn(
        &mut self,
        spent: Option<i64>,
        turns: &mut Turns,
    ) -> Option<UpstreamSocket> {
        if let Some(seconds) = spent {
            self.route.rest(seconds);
        }
        let Some(replay) = self.conversation.replay() else {
            tracing::warn!(
                client = %turns.client(),
                "a turn refused for the plan's limit stays refused: it continues a response \
                 keyward did not see whole, so it cannot be sent on another credential's socket"
            );
            return None;
        };
        let from = self.route.at;
        let now = crate::credential::chatgpt::record::now();
        while self.route.has_next() {
            self.route.at += 1;
            let index = self.route.chain[self.route.at];
            if !self.route.credentials.usable(index, now) {
                continue;
            }
            let ctx = turns.context()?;
            match self.route.credentials.admit(index) {
                Ok(permit) => ctx.hold_for_credential(permit),
                Err(_) => continue,
            }
            let credential = self.route.credential().clone();
            match self
                .dialer
                .open(&credential, &self.client_headers, ctx)
                .await
            {
                Ok(Handshake::Open(mut socket, _)) => {
                    let message = credential.adapt_message(&replay);
                    if socket.send(Message::text(message)).await.is_ok() {
                        tracing::info!(
                            client = %turns.client(),
                            credential = %credential.name(),
                            "a WebSocket turn moved to the route's next credential"
                        );
                        turns.switch(index);
                        self.route.answered();
                        return Some(socket);
                    }
                }
                Ok(Handshake::Refused(status, head, body)) => {
                    match spent_for(&head, &body).filter(|_| status.as_u16() == 429) {
                        Some(seconds) => self.route.rest(seconds),
                        None => tracing::warn!(
                            credential = %credential.name(),
                            status = status.as_u16(),
                            "the route's next credential refused a WebSocket"
                        ),
                    }
                }
                Err(err) => tracing::warn!(
                    credential = %credential.name(),
                    error = %err,
                    "could not open a WebSocket with the route's next credential"
                ),
            }
        }
        self.route.at = from;
        None
    }
}

/// Closes a socket keyward no longer uses, in the background, within `wait`.
pub fn close_in_background(mut socket: UpstreamSocket, wait: std::time::Duration) {
    tokio::spawn(async move {
        let close = async {
            let frame = CloseFrame {
                code: CloseCode::Away,
                reason: "the conversation moved to another credential".into(),
            };
            let _ = socket.close(Some(frame)).await;
            while let Some(Ok(_)) = socket.next().await {}
        };
        let _ = tokio::time::timeout(wait, close).await;
    });
}
