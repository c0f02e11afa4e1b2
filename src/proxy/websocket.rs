//! Responses over WebSocket (`GET /v1/responses` with `Upgrade: websocket`), Codex's fast path:
//! the upstream's socket is opened first with the credential on its handshake (a refusal comes
//! back to the client as that HTTP answer), then the client's is accepted and messages are
//! relayed one by one, each way, as they arrive. Every `response.create` the client sends is a
//! turn: quota-checked, logged and charged like a POST ([`turns`]).

mod relay;
mod turns;

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

use crate::access::owners::Owners;
use crate::credential::chatgpt::plan::PlanUsage;
use crate::credential::chatgpt::record::now;
use crate::proxy::body::ProxyBody;
use crate::proxy::credential::Credential;
use crate::proxy::error::ProxyError;
use crate::proxy::forward::Forwarder;
use crate::proxy::headers;
use crate::proxy::open::OpenCount;
use crate::proxy::websocket::relay::Relay;
use crate::proxy::websocket::turns::Turns;
use crate::telemetry::log::ExchangeLog;
use crate::telemetry::metrics::Telemetry;
use crate::upstream::WsIo;

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

/// Who a socket belongs to, for its turns' quotas, logs and ledger lines.
pub struct Owner {
    pub uid: Option<u32>,
    pub client: Arc<str>,
    pub telemetry: Option<Arc<Telemetry>>,
    /// The record the socket's responses go in as the client's.
    pub owners: Option<Arc<Owners>>,
}

/// Everything a socket needs once accepted.
pub struct Accept<'a> {
    pub forwarder: &'a Forwarder,
    pub credential: &'a Credential,
    pub owner: Owner,
    pub shutdown: watch::Receiver<bool>,
    pub sockets: &'a OpenCount,
}

/// Opens the upstream's socket, then answers the client's handshake and relays in a task of
/// its own; a refused upstream handshake is passed back as it came.
pub async fn accept(
    ctx: Accept<'_>,
    mut req: Request<Incoming>,
    mut log: ExchangeLog,
) -> Response<ProxyBody> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return ctx.forwarder.fail(ProxyError::NotWebSocket, log);
    };
    let config = config(ctx.forwarder.limits().max_body);
    log.sending();
    let (upstream, upstream_head) = match open_upstream(&ctx, req.headers(), config).await {
        Ok(opened) => opened,
        Err(Opened::Refused(response)) => {
            log.upstream_status(response.status());
            return *response;
        }
        Err(Opened::Failed(err)) => return ctx.forwarder.fail(err, log),
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
    let guard = ctx.sockets.enter();
    let telemetry = ctx.owner.telemetry.clone();
    let turns = Turns::new(ctx.owner, ctx.credential.chatgpt().cloned());
    let shutdown = ctx.shutdown;
    let limits = ctx.forwarder.limits().clone();
    let dumps = ctx
        .forwarder
        .open_request_dump(&req.into_parts().0)
        .map(|(id, sink)| (id, sink, ctx.forwarder.open_ws_response_dump(id)));
    // The handshake itself is logged, not charged: the turns are.
    log.untrack();
    log.upstream_status(StatusCode::SWITCHING_PROTOCOLS);
    drop(log);
    tokio::spawn(async move {
        let _guard = guard;
        let _open = telemetry.as_ref().map(|t| t.websocket_opened());
        let client = match on_upgrade.await {
            Ok(upgraded) => {
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                    .await
            }
            Err(err) => {
                tracing::debug!(error = %err, "the client's WebSocket upgrade did not complete");
                return;
            }
        };
        Relay::new(client, upstream, turns, limits, shutdown, telemetry, dumps)
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

enum Opened {
    /// The upstream answered the handshake with something other than 101.
    Refused(Box<Response<ProxyBody>>),
    Failed(ProxyError),
}

/// The upstream's socket, with the credential on its handshake; with a ChatGPT login, a 401
/// refreshes the login and tries once more.
async fn open_upstream(
    ctx: &Accept<'_>,
    client_headers: &HeaderMap,
    config: WebSocketConfig,
) -> Result<(WebSocketStream<WsIo>, HeaderMap), Opened> {
    let mut session = match ctx.credential {
        Credential::ChatGpt(backend) => Some(
            backend
                .tokens
                .session()
                .await
                .map_err(|e| Opened::Failed(ProxyError::Auth(e)))?,
        ),
        Credential::ApiKey { .. } => None,
    };
    let mut retried = false;
    loop {
        let mut headers = match (ctx.credential, &session) {
            (Credential::ChatGpt(backend), Some(session)) => {
                backend.upstream_headers(client_headers, session)
            }
            (Credential::ApiKey { header, value }, _) => {
                let mut headers = headers::upstream_request_headers(client_headers);
                // The client's own identity with the upstream never passes.
                headers.remove(header::COOKIE);
                headers.remove(HeaderName::from_static("chatgpt-account-id"));
                headers.insert(header.clone(), value.expose());
                headers
            }
            (Credential::ChatGpt(_), None) => HeaderMap::new(),
        };
        for name in HANDSHAKE {
            headers.remove(name);
        }
        match open_websocket(ctx.forwarder, headers, generate_key(), config).await {
            Ok(opened) => {
                if let Credential::ChatGpt(backend) = ctx.credential
                    && let Some(usage) = PlanUsage::from_headers(&opened.1, now())
                {
                    backend.tokens.plan.observe(usage);
                }
                return Ok(opened);
            }
            Err(Handshake::Refused(status, head, body))
                if status == StatusCode::UNAUTHORIZED && !retried =>
            {
                let (Credential::ChatGpt(backend), Some(failed)) = (ctx.credential, &session)
                else {
                    return Err(Opened::Refused(Box::new(refusal(status, &head, body))));
                };
                tracing::info!(
                    "the backend refused the access token on a WebSocket; refreshing and retrying once"
                );
                retried = true;
                session = Some(
                    backend
                        .tokens
                        .after_unauthorized(failed)
                        .await
                        .map_err(|e| Opened::Failed(ProxyError::Auth(e)))?,
                );
            }
            Err(Handshake::Refused(status, head, body)) => {
                return Err(Opened::Refused(Box::new(refusal(status, &head, body))));
            }
            Err(Handshake::Failed(err)) => return Err(Opened::Failed(err)),
        }
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

/// How opening the upstream's socket went wrong.
pub enum Handshake {
    Refused(StatusCode, HeaderMap, Vec<u8>),
    Failed(ProxyError),
}

/// Opens a WebSocket to the upstream URL with `headers` (the credential among them) and the
/// handshake's own; a refusal comes back with its status, headers and body.
pub(crate) async fn open_websocket(
    forwarder: &Forwarder,
    mut headers: HeaderMap,
    key: String,
    config: WebSocketConfig,
) -> Result<(WebSocketStream<WsIo>, HeaderMap), Handshake> {
    use http::header::{CONNECTION, HOST, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
    let uri = forwarder.upstream().uri.clone();
    let connect_timeout = forwarder.limits().connect_timeout;
    let io = match tokio::time::timeout(connect_timeout, forwarder.ws().connect(uri.clone())).await
    {
        Ok(Ok(io)) => io,
        Ok(Err(err)) => return Err(Handshake::Failed(crate::proxy::error::classify_send(err))),
        Err(_) => {
            return Err(Handshake::Failed(ProxyError::UpstreamConnectTimeout(
                "connecting for a WebSocket timed out".into(),
            )));
        }
    };
    let value = |text: &str| http::HeaderValue::from_str(text).ok();
    if let Some(host) = value(forwarder.upstream().authority.as_str()) {
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
    ws_uri.scheme = Some(if forwarder.upstream().scheme == http::uri::Scheme::HTTPS {
        "wss".parse().unwrap_or(http::uri::Scheme::HTTPS)
    } else {
        "ws".parse().unwrap_or(http::uri::Scheme::HTTP)
    });
    *request.uri_mut() = http::Uri::from_parts(ws_uri).unwrap_or_default();
    *request.headers_mut() = headers;
    let timeout = forwarder.limits().response_timeout;
    let handshake = client_async_with_config(request, io, Some(config));
    match tokio::time::timeout(timeout, handshake).await {
        Err(_) => Err(Handshake::Failed(ProxyError::UpstreamTimeout(timeout))),
        Ok(Ok((socket, response))) => Ok((socket, response.headers().clone())),
        Ok(Err(WsError::Http(response))) => {
            let (parts, body) = (*response).into_parts();
            Err(Handshake::Refused(
                parts.status,
                parts.headers,
                body.unwrap_or_default(),
            ))
        }
        Ok(Err(err)) => Err(Handshake::Failed(ProxyError::UpstreamFailed(Box::new(err)))),
    }
}
