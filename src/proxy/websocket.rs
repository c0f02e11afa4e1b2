//! Responses over WebSocket (`GET /v1/responses` with `Upgrade: websocket`), Codex's fast path,
//! through the pipeline's phases: the socket is admitted like any request, the upstream's socket
//! is opened first through the send phase ([`crate::proxy::send`]: the header policy, the
//! credential on its handshake, one 401 refresh-and-retry; a refusal comes back to the client as
//! that HTTP answer), then the client's is accepted and messages are relayed one by one, each
//! way, as they arrive. Every `response.create` the client sends is a turn: admitted against the
//! quotas, adapted by the credential, and accounted for like a POST ([`turns`]). On a route with
//! several credentials, a socket opens with the first usable one, and a turn refused because the
//! plan is spent (or over the credential's quota) goes on with the next ([`fallback`]).

mod conversation;
mod dial;
mod fallback;
mod owner;
mod relay;
mod turns;

pub use crate::proxy::websocket::owner::Owner;

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::proxy::body::ProxyBody;
use crate::proxy::context::Context;
use crate::proxy::credentials::Credentials;
use crate::proxy::error::ProxyError;
use crate::proxy::forward::Forwarder;
use crate::proxy::headers;
use crate::proxy::open::OpenCount;
use crate::proxy::websocket::dial::{Dialer, HANDSHAKE, Handshake};
use crate::proxy::websocket::fallback::{Route, SocketFallback};
use crate::proxy::websocket::relay::Relay;
use crate::proxy::websocket::turns::Turns;

/// Whether a request asks to become a WebSocket.
pub fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && req.headers().contains_key(header::SEC_WEBSOCKET_KEY)
}

/// Everything a socket needs once accepted.
pub struct Accept<'a> {
    pub forwarder: &'a Forwarder,
    pub credentials: &'a Arc<Credentials>,
    /// The client's route: its credentials, by index, in the order they are tried.
    pub chain: Vec<usize>,
    pub owner: Owner,
    pub shutdown: watch::Receiver<bool>,
    pub sockets: &'a OpenCount,
}

/// Opens the upstream's socket (with the route's first usable credential), then answers the
/// client's handshake and relays in a task of its own; a refused upstream handshake is passed
/// back as it came.
pub async fn accept(
    accept: Accept<'_>,
    mut req: Request<Incoming>,
    mut ctx: Context,
) -> Response<ProxyBody> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return accept.forwarder.fail(ProxyError::NotWebSocket, ctx);
    };
    let limits = accept.forwarder.limits().clone();
    let dialer = Dialer {
        ws: accept.forwarder.ws().clone(),
        config: config(limits.max_body),
        limits: limits.clone(),
    };
    let route = Route::new(accept.credentials.clone(), accept.chain, req.headers());
    let (route, upstream, upstream_head) = match route.open(&dialer, req.headers(), &mut ctx).await
    {
        Ok((route, Handshake::Open(socket, head))) => (route, socket, head),
        Ok((_, Handshake::Refused(status, head, body))) => {
            ctx.upstream_status(status);
            return refusal(status, &head, body);
        }
        Err(err) => return accept.forwarder.fail(err, ctx),
    };
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let mut headers = headers::client_response_headers(&upstream_head);
    for name in HANDSHAKE {
        headers.remove(name);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    *response.headers_mut() = headers;

    let on_upgrade = hyper::upgrade::on(&mut req);
    let guard = accept.sockets.enter();
    let telemetry = accept.owner.telemetry.clone();
    let turns = Turns::new(accept.owner, accept.credentials.clone(), route.index());
    let shutdown = accept.shutdown;
    let (head, _) = req.into_parts();
    let dumps = accept
        .forwarder
        .open_request_dump(&head, route.credential().upstream())
        .map(|(id, sink)| (id, sink, accept.forwarder.open_ws_response_dump(id)));
    // Only a route with somewhere to go next keeps what moving a turn needs.
    let fallback = route
        .has_next()
        .then(|| SocketFallback::new(route, dialer, head.headers, limits.max_body));
    // The handshake itself is logged, not charged: the turns are.
    ctx.untrack();
    ctx.upstream_status(StatusCode::SWITCHING_PROTOCOLS);
    ctx.finish(crate::telemetry::record::End::ClientGone);
    tokio::spawn(async move {
        let _guard = guard;
        let _open = telemetry.as_ref().map(|t| t.websocket_opened());
        let client = match on_upgrade.await {
            Ok(upgraded) => {
                WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config(limits.max_body)),
                )
                .await
            }
            Err(err) => {
                tracing::debug!(error = %err, "the client's WebSocket upgrade did not complete");
                return;
            }
        };
        Relay::new(client, upstream, turns, limits, shutdown, telemetry, dumps)
            .with_fallback(fallback)
            .run()
            .await;
    });
    response
}

/// Message and frame size limits: `--max-body` for one message.
fn config(max_body: u64) -> WebSocketConfig {
    let max = usize::try_from(max_body).unwrap_or(usize::MAX);
    WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// The upstream's refusal of a handshake, as the client's answer: its status, body and headers.
fn refusal(status: StatusCode, head: &HeaderMap, body: Vec<u8>) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    *response.headers_mut() = headers::client_response_headers(head);
    response.headers_mut().remove(header::CONTENT_LENGTH);
    response
}
