//! Opening the upstream's side of a WebSocket: the handshake through the send phase, with the
//! credential on it and the client's headers as the header policy lets them pass.

use http::header::{self, HeaderName};
use http::{HeaderMap, Request, StatusCode};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::config::Limits;
use crate::proxy::context::Context;
use crate::proxy::credential::Credential;
use crate::proxy::error::ProxyError;
use crate::proxy::send::{self, Answer};
use crate::upstream::{WsConnector, WsIo};

/// Headers of one side's handshake that the other side must not see.
pub(super) const HANDSHAKE: [HeaderName; 5] = [
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::HOST,
];

/// What opens a socket to an upstream: the worker's connector, its limits.
pub struct Dialer {
    pub ws: WsConnector,
    pub limits: Limits,
    pub config: WebSocketConfig,
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
