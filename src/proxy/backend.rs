//! `serve --auth chatgpt`: forwarding to the Codex backend with the ChatGPT login.
//!
//! The backend is stricter than the public API, so requests are adapted: `store` is forced to
//! false, `instructions` supplied, refused parameters dropped, and a stream always requested;
//! a client that asked for no stream gets the final response object as JSON, assembled from the
//! stream as it passes.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, CONTENT_LENGTH, CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use crate::config::ChatGptConfig;
use crate::credential::chatgpt::plan::PlanUsage;
use crate::credential::chatgpt::record::now;
use crate::credential::chatgpt::tokens::{AuthError, Session, TokenManager};
use crate::proxy::assemble::{assemble, read_limited};
use crate::proxy::body::ProxyBody;
use crate::proxy::body::UpstreamBody;
use crate::proxy::decode::decode;
use crate::proxy::dump::ExchangeId;
use crate::proxy::error::{ProxyError, classify_send, json_response};
use crate::proxy::forward::Forwarder;
use crate::proxy::headers;
use crate::telemetry::log::ExchangeLog;

const CHATGPT_ACCOUNT_ID: HeaderName = HeaderName::from_static("chatgpt-account-id");
const FEDRAMP: HeaderName = HeaderName::from_static("x-openai-fedramp");
const ORIGINATOR: HeaderName = HeaderName::from_static("originator");
const VERSION: HeaderName = HeaderName::from_static("version");

/// The ChatGPT credential and the backend's rules. Requests go through the worker's upstream
/// connections, like the API key's.
pub struct Backend {
    pub tokens: Arc<TokenManager>,
    config: ChatGptConfig,
}

impl Backend {
    pub fn new(tokens: Arc<TokenManager>, config: ChatGptConfig) -> Self {
        Self { tokens, config }
    }

    pub async fn forward(
        &self,
        proxy: &Forwarder,
        req: Request<Incoming>,
        mut log: ExchangeLog,
    ) -> Response<ProxyBody> {
        match self.try_forward(proxy, req, &mut log).await {
            Ok(Reply::Relay(parts, body, exchange)) => {
                let dump = exchange.and_then(|id| proxy.open_response_dump(id, &parts));
                proxy.relay(parts, body, log, dump, true)
            }
            Ok(Reply::Local(response)) => {
                log.finish_local(
                    response.status(),
                    crate::proxy::forward::body_len(&response),
                );
                *response
            }
            Err(err) => proxy.fail(err, log),
        }
    }

    async fn try_forward(
        &self,
        proxy: &Forwarder,
        req: Request<Incoming>,
        log: &mut ExchangeLog,
    ) -> Result<Reply, ProxyError> {
        let (parts, body) = req.into_parts();
        let limit = proxy.limits().max_body;
        let body = read_limited(body, &parts.headers, limit).await?;
        log.add_bytes_in(body.len());
        // The rules change the body, so it is read plain and goes on plain.
        let encoded_len = body.len();
        let body = decode(&parts.headers, body, limit)?;
        if body.len() != encoded_len {
            let plain = body.len() as u64;
            log.plain_size(Box::new(move || Some(plain)));
        }
        let (payload, wants_stream) = self.adapt(&body)?;
        // The dump shows the request as the backend receives it.
        let exchange = proxy.open_request_dump(&parts).map(|(id, mut sink)| {
            sink.append(&payload);
            sink.set_end("completed");
            id
        });

        let response = self
            .with_login(log, |session| {
                self.send(proxy, &parts.headers, &payload, session)
            })
            .await?;
        if let Some(usage) = PlanUsage::from_headers(response.headers(), now()) {
            self.tokens.plan.observe(usage);
        }

        if wants_stream || !response.status().is_success() {
            let (parts, body) = response.into_parts();
            return Ok(Reply::Relay(parts, body, exchange));
        }
        let idle = proxy.limits().idle_timeout;
        let (status, json) = assemble(response.into_body(), idle).await?;
        if status.is_success() {
            log.saw_response(&json);
        }
        let response = json_response(status, &json);
        if let Some(id) = exchange {
            let (parts, ()) = Response::builder()
                .status(status)
                .header(CONTENT_TYPE, "application/json")
                .body(())
                .unwrap_or_default()
                .into_parts();
            if let Some(mut sink) = proxy.open_response_dump(id, &parts) {
                sink.append(json.to_string().as_bytes());
                sink.set_end("completed");
            }
        }
        Ok(Reply::Local(Box::new(response)))
    }

    /// The request body as the backend accepts it, and whether the client asked for a stream.
    fn adapt(&self, body: &[u8]) -> Result<(Bytes, bool), ProxyError> {
        let mut request: Map<String, Value> = match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(ProxyError::BadJson(
                    "the request body must be a JSON object".into(),
                ));
            }
            Err(e) => {
                return Err(ProxyError::BadJson(format!(
                    "the request body is not valid JSON ({e})"
                )));
            }
        };
        let wants_stream = request
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        request.insert("stream".into(), Value::Bool(true));
        self.apply_rules(&mut request);
        let bytes = serde_json::to_vec(&request).map_err(|e| ProxyError::BadJson(e.to_string()))?;
        Ok((Bytes::from(bytes), wants_stream))
    }

    /// The headers the backend gets for a client's request (HTTP or a WebSocket handshake): the
    /// client's own, less the ones keyward decides, with the login's credential and account. A
    /// Codex CLI's `originator`, `version` and `User-Agent` pass on as they are (the backend
    /// judges a model's availability by them); other clients get the configured ones.
    pub(crate) fn upstream_headers(
        &self,
        client_headers: &HeaderMap,
        session: &Session,
    ) -> HeaderMap {
        let mut headers = headers::upstream_request_headers(client_headers);
        for name in [CHATGPT_ACCOUNT_ID, header::COOKIE, FEDRAMP] {
            headers.remove(name);
        }
        headers.insert(header::AUTHORIZATION, session.authorization.expose());
        headers.insert(CHATGPT_ACCOUNT_ID, session.account_id.clone());
        if session.fedramp {
            headers.insert(FEDRAMP, HeaderValue::from_static("true"));
        }
        let codex = client_headers.contains_key(ORIGINATOR) && client_headers.contains_key(VERSION);
        if !codex {
            headers.insert(ORIGINATOR, self.config.originator.clone());
            headers.insert(VERSION, self.config.version.clone());
            headers.insert(header::USER_AGENT, self.config.user_agent.clone());
        } else if !client_headers.contains_key(header::USER_AGENT) {
            headers.insert(header::USER_AGENT, self.config.user_agent.clone());
        }
        headers
    }

    /// Sends a request with the login (`send` builds and sends it for a session): after a 401
    /// the token may have been replaced or revoked, so the store is re-read, the token refreshed
    /// if it is still the current one, and the request sent once more.
    pub(crate) async fn with_login<F, Fut>(
        &self,
        log: &mut ExchangeLog,
        send: F,
    ) -> Result<Response<UpstreamBody>, ProxyError>
    where
        F: Fn(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<UpstreamBody>, ProxyError>>,
    {
        let session = self.tokens.session().await.map_err(ProxyError::Auth)?;
        log.sending();
        let mut response = send(session.clone()).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            tracing::info!("the backend refused the access token; refreshing and retrying once");
            let fresh = self
                .tokens
                .after_unauthorized(&session)
                .await
                .map_err(ProxyError::Auth)?;
            response = send(fresh).await?;
        }
        log.upstream_head(response.status(), response.headers());
        Ok(response)
    }

    /// The Codex version the backend is told of: a Codex CLI's own, else `--codex-version`.
    pub(crate) fn client_version(&self, client_headers: &HeaderMap) -> String {
        let codex = client_headers.contains_key(ORIGINATOR);
        client_headers
            .get(VERSION)
            .filter(|_| codex)
            .unwrap_or(&self.config.version)
            .to_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The backend's rules for one `response.create` message on a WebSocket: `store: false`,
    /// instructions supplied, refused parameters dropped (a socket has no `stream` flag).
    pub(crate) fn adapt_ws_message(&self, message: &[u8]) -> Option<Vec<u8>> {
        let mut request: Map<String, Value> = match serde_json::from_slice(message) {
            Ok(Value::Object(map)) => map,
            _ => return None,
        };
        self.apply_rules(&mut request);
        serde_json::to_vec(&request).ok()
    }

    /// What the backend insists on in every request: nothing stored, instructions present, the
    /// parameters it refuses gone.
    fn apply_rules(&self, request: &mut Map<String, Value>) {
        request.insert("store".into(), Value::Bool(false));
        let has_instructions = request
            .get("instructions")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty());
        if !has_instructions {
            request.insert(
                "instructions".into(),
                Value::from(self.config.default_instructions.clone()),
            );
        }
        for name in &self.config.drop_params {
            request.remove(name);
        }
    }

    async fn send(
        &self,
        proxy: &Forwarder,
        client_headers: &HeaderMap,
        payload: &Bytes,
        session: Arc<Session>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let mut headers = self.upstream_headers(client_headers, &session);
        headers.remove(CONTENT_LENGTH);
        headers.remove(header::CONTENT_ENCODING);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));

        let mut request = Request::new(Either::Right(Full::new(payload.clone())));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = proxy.upstream().uri.clone();
        *request.headers_mut() = headers;
        let timeout = proxy.limits().response_timeout;
        match tokio::time::timeout(timeout, proxy.pool().send(request)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout(timeout)),
            Ok(Err(err)) => Err(classify_send(err)),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "returned once per request and matched at once; boxing would add an allocation"
)]
enum Reply {
    Relay(http::response::Parts, UpstreamBody, Option<ExchangeId>),
    Local(Box<Response<ProxyBody>>),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::NotSignedIn { .. } => "chatgpt_not_signed_in",
            AuthError::Dead { .. } => "chatgpt_login_expired",
            AuthError::RefreshFailed(_) => "chatgpt_refresh_failed",
            AuthError::Store(_) => "chatgpt_login_unreadable",
            AuthError::SharedUnreachable(_) => "state_database_unreachable",
        }
    }
}
