//! Responses over WebSocket (`GET /v1/responses` with `Upgrade: websocket`), Codex's fast path,
//! through the pipeline's phases: the socket is admitted like any request, the upstream's socket
//! is opened first through the send phase ([`crate::proxy::send`]: the header policy, the
//! credential on its handshake, one 401 refresh-and-retry; a refusal comes back to the client as
//! that HTTP answer), then the client's is accepted and messages are relayed one by one, each
//! way, as they arrive. Every `response.create` the client sends is a turn: admitted against the
//! quotas, adapted by the credential, and accounted for like a POST ([`turns`]).

mod conversation;
mod fallback;
mod owner;
mod relay;
mod turns;

pub use crate::proxy::websocket::owner::Owner;

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::config::Limits;
use crate::proxy::body::ProxyBody;
use crate::proxy::context::Context;
use crate::proxy::credential::Credential;
use crate::proxy::credentials::Credentials;
use crate::proxy::error::ProxyError;
use crate::proxy::forward::Forwarder;
use crate::proxy::headers;
use crate::proxy::open::OpenCount;
use crate::proxy::send::{self, Answer};
use crate::proxy::websocket::fallback::{Route, SocketFallback};
use crate::proxy::websocket::relay::Relay;
use crate::proxy::websocket::turns::Turns;
use crate::upstream::{WsConnector, WsIo};

/// Headers of one side's handshake that the other side must not see.
const HANDSHAKE: [HeaderName; 5] = [
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::HOST,
];

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
    let turns = Turns::new(accept.owner, route.credential().clone());
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

/// What opens a socket to an upstream: the worker's connector, its limits.
pub struct Dialer {
    ws: WsConnector,
    limits: Limits,
    config: WebSocketConfig,
}

impl Dialer {
    /// The upstream's socket for `credential`, opened through the send phase with the
    /// credential on its handshake and the client's headers as the header policy lets them pass.
    pub async fn open(
        &self,
        credential: &Credential,
        client_headers: &HeaderMap,
        ctx: &mut Context,
    ) -> Result<Handshake, ProxyError> {
        let opened = send::with_credential(credential, ctx, |grant| {
            let mut headers = send::upstream_headers(credential, client_headers, &grant);
            for name in HANDSHAKE {
                headers.remove(name);
            }
            open_websocket(
                &self.ws,
                &self.limits,
                credential.upstream(),
                headers,
                generate_key(),
                self.config,
            )
        })
        .await?;
        if let Handshake::Open(_, head) = &opened {
            credential.observe_head(head);
        }
        Ok(opened)
    }
}

/// The upstream's refusal of a handshake, as the client's answer: its status, body and headers.
fn refusal(status: StatusCode, head: &HeaderMap, body: Vec<u8>) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    *response.headers_mut() = headers::client_response_headers(head);
    response.headers_mut().remove(header::CONTENT_LENGTH);
    response
}

/// How the upstream answered a handshake: its socket, or its refusal (status, head, body).
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per socket and taken apart at once"
)]
pub enum Handshake {
    Open(WebSocketStream<WsIo>, HeaderMap),
    Refused(StatusCode, HeaderMap, Vec<u8>),
}

impl Answer for Handshake {
    fn unauthorized(&self) -> bool {
        matches!(self, Handshake::Refused(StatusCode::UNAUTHORIZED, ..))
    }
}

/// Opens a WebSocket to the upstream URL with `headers` (the credential among them) and the
/// handshake's own; a refusal comes back with its status, headers and body.
async fn open_websocket(
    ws: &WsConnector,
    limits: &Limits,
    upstream: &crate::config::Upstream,
    mut headers: HeaderMap,
    key: String,
    config: WebSocketConfig,
) -> Result<Handshake, ProxyError> {
    use http::header::{CONNECTION, HOST, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
    let uri = upstream.uri.clone();
    let io = match tokio::time::timeout(limits.connect_timeout, ws.connect(uri.clone())).await {
        Ok(Ok(io)) => io,
        Ok(Err(err)) => return Err(crate::proxy::error::classify_send(err)),
        Err(_) => {
            return Err(ProxyError::UpstreamConnectTimeout(
                "connecting for a WebSocket timed out".into(),
            ));
        }
    };
    let value = |text: &str| http::HeaderValue::from_str(text).ok();
    if let Some(host) = value(upstream.authority.as_str()) {
        headers.insert(HOST, host);
    }
    headers.insert(CONNECTION, http::HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, http::HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_VERSION, http::HeaderValue::from_static("13"));
    if let Some(key) = value(&key) {
        headers.insert(SEC_WEBSOCKET_KEY, key);
    }
    let mut request = Request::new(());
    // The handshake names the socket's own scheme: `wss` over TLS, `ws` in the clear.
    let mut ws_uri = http::uri::Parts::from(uri);
    ws_uri.scheme = Some(if upstream.scheme == http::uri::Scheme::HTTPS {
        "wss".parse().unwrap_or(http::uri::Scheme::HTTPS)
    } else {
        "ws".parse().unwrap_or(http::uri::Scheme::HTTP)
    });
    *request.uri_mut() = http::Uri::from_parts(ws_uri).unwrap_or_default();
    *request.headers_mut() = headers;
    let timeout = limits.response_timeout;
    let handshake = client_async_with_config(request, io, Some(config));
    match tokio::time::timeout(timeout, handshake).await {
        Err(_) => Err(ProxyError::UpstreamTimeout(timeout)),
        Ok(Ok((socket, response))) => Ok(Handshake::Open(socket, response.headers().clone())),
        Ok(Err(WsError::Http(response))) => {
            let (parts, body) = (*response).into_parts();
            Ok(Handshake::Refused(
                parts.status,
                parts.headers,
                body.unwrap_or_default(),
            ))
        }
        Ok(Err(err)) => Err(ProxyError::UpstreamFailed(Box::new(err))),
    }
}
