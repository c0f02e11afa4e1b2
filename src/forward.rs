//! The request handler: which requests are forwarded, and how.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::access::{Gate, HostCheck, Peer, SharedPolicy};
use crate::backend::Backend;
use crate::body::{ProxyBody, RelayBody, RequestBody};
use crate::clients::ClientTokens;
use crate::config::{Config, Limits, Upstream};
use crate::dump::{DumpSink, Dumper, ExchangeId};
use crate::error::{ProxyError, classify_send, json_response};
use crate::headers;
use crate::log::ExchangeLog;
use crate::secret::SecretHeader;
use crate::telemetry::Telemetry;
use crate::upstream::{Pool, UpstreamBody};

pub const RESPONSES_PATH: &str = "/v1/responses";

/// The credential keyward adds to forwarded requests.
#[derive(Clone)]
pub enum Credential {
    /// An API key, sent in `header` (`Authorization` or Azure's `api-key`).
    ApiKey {
        header: HeaderName,
        value: SecretHeader,
    },
    /// The ChatGPT login, sent to the Codex backend.
    ChatGpt(Arc<Backend>),
}

impl Credential {
    /// `api_key` or `chatgpt`, for health reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::ApiKey { .. } => "api_key",
            Credential::ChatGpt(_) => "chatgpt",
        }
    }
}

/// Everything a request needs, shared by all connections.
pub struct Proxy {
    /// This worker's connections to the upstream.
    pool: Arc<Pool>,
    upstream: Upstream,
    credential: Credential,
    limits: Limits,
    dumper: Option<Arc<Dumper>>,
    http_shutdown: bool,
    shutdown: watch::Sender<bool>,
    /// This worker's access decisions (its netlink socket and group cache).
    gate: Mutex<Gate>,
    tokens: Option<Arc<ClientTokens>>,
    hosts: HostCheck,
    /// Metrics, ledger and quotas, when any of them is on.
    telemetry: Option<Arc<Telemetry>>,
}

/// What every worker's [`Proxy`] shares.
#[derive(Clone)]
pub struct Shared {
    pub credential: Credential,
    pub dumper: Option<Arc<Dumper>>,
    pub policy: Arc<SharedPolicy>,
    pub tokens: Option<Arc<ClientTokens>>,
    pub telemetry: Option<Arc<Telemetry>>,
    pub shutdown: watch::Sender<bool>,
}

impl Proxy {
    /// One worker's proxy, with its own upstream connections.
    pub fn new(config: &Config, pool: Arc<Pool>, shared: Shared) -> Self {
        Self {
            pool,
            upstream: config.upstream.clone(),
            credential: shared.credential,
            limits: config.limits.clone(),
            dumper: shared.dumper,
            http_shutdown: config.http_shutdown,
            shutdown: shared.shutdown,
            gate: Mutex::new(Gate::new(shared.policy, shared.telemetry.is_some())),
            tokens: shared.tokens,
            hosts: config.access.hosts.clone(),
            telemetry: shared.telemetry,
        }
    }

    /// Runs `f` with this worker's access gate.
    pub fn with_gate<T>(&self, f: impl FnOnce(&mut Gate) -> T) -> T {
        match self.gate.lock() {
            Ok(mut gate) => f(&mut gate),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Arc<Peer>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let mut log = ExchangeLog::new(
            req.method().clone(),
            req.uri().path(),
            started,
            Arc::default(),
        );
        log.identify(peer.uid(), None);
        let outcome = match self.hosts.check(req.headers()) {
            Err(why) => Err(ProxyError::Browser(why)),
            Ok(()) => match self.route(&req) {
                Route::Forward => match self.admit(&req, &peer, &mut log) {
                    Ok(()) => return self.forward(req, log).await,
                    Err(err) => Err(err),
                },
                Route::Health => Ok(self.health(req.uri().path())),
                // Admin endpoints go by uid alone, whatever the access policy.
                Route::Shutdown => self.with_gate(|gate| gate.check_admin(&peer)).map_or_else(
                    |why| Err(ProxyError::NotAdmin(why)),
                    |uid| {
                        tracing::info!(uid, "shutdown requested over HTTP");
                        self.shutdown.send_replace(true);
                        Ok(json_response(
                            StatusCode::OK,
                            &serde_json::json!({ "status": "shutting down" }),
                        ))
                    },
                ),
                Route::Refuse(err) => Err(match &peer.refusal {
                    Some(refusal) => ProxyError::AccessDenied(refusal.message.clone()),
                    None => err,
                }),
            },
        };
        let response = outcome.unwrap_or_else(|err| {
            tracing::debug!(error = %err, "request refused");
            err.into_response()
        });
        log.finish_local(response.status(), body_len(&response));
        response
    }

    /// `GET /healthz` (alive) and `GET /readyz` (a credential is loaded and usable).
    fn health(&self, path: &str) -> Response<ProxyBody> {
        if path == "/healthz" {
            return json_response(StatusCode::OK, &serde_json::json!({ "status": "alive" }));
        }
        let ready = match &self.credential {
            Credential::ApiKey { .. } => Ok(()),
            Credential::ChatGpt(backend) => backend.tokens.readiness(),
        };
        match ready {
            Ok(()) => json_response(
                StatusCode::OK,
                &serde_json::json!({ "status": "ready", "credential": self.credential.kind() }),
            ),
            Err(reason) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({
                    "status": "not_ready",
                    "credential": self.credential.kind(),
                    "reason": reason,
                }),
            ),
        }
    }

    /// What a request to be forwarded must pass: a connection the policy allows, a valid client
    /// token when tokens are required, and the client's quotas.
    fn admit(
        &self,
        req: &Request<Incoming>,
        peer: &Peer,
        log: &mut ExchangeLog,
    ) -> Result<(), ProxyError> {
        // Refused requests are counted too, as the connecting user's.
        log.identify(peer.uid(), peer.name.clone());
        if let Some(telemetry) = &self.telemetry {
            log.track(telemetry.clone());
        }
        if let Some(refusal) = &peer.refusal {
            return Err(ProxyError::AccessDenied(refusal.message.clone()));
        }
        let client = self.check_token(req)?.or_else(|| peer.name.clone());
        log.identify(peer.uid(), client.clone());
        if let Some(telemetry) = &self.telemetry {
            // An owner the kernel could not name shares the `unknown` client's quotas.
            let client = client.unwrap_or_else(|| Arc::from("unknown"));
            match telemetry.quotas.admit(&client) {
                Ok(permit) => log.hold(permit),
                Err(exceeded) => {
                    telemetry.quota_refused(&client, exceeded.quota);
                    return Err(ProxyError::QuotaExceeded {
                        client: client.to_string(),
                        exceeded,
                    });
                }
            }
        }
        Ok(())
    }

    /// The client token's name, when tokens are required and the request has a valid one.
    fn check_token(&self, req: &Request<Incoming>) -> Result<Option<Arc<str>>, ProxyError> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        let presented = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .ok_or(ProxyError::ClientToken(
                "keyward requires a client token: send `Authorization: Bearer <token>` with a \
                 token from `keyward token add`",
            ))?;
        let client = tokens.verify(presented.trim_ascii()).ok_or(ProxyError::ClientToken(
            "the client token is not valid (unknown or revoked); ask keyward's administrator for \
             one made with `keyward token add`",
        ))?;
        Ok(Some(client))
    }

    fn route(&self, req: &Request<Incoming>) -> Route {
        let head_size = head_size(req);
        if head_size > self.limits.max_headers {
            return Route::Refuse(ProxyError::HeadersTooLarge {
                limit: self.limits.max_headers,
            });
        }
        let path = req.uri().path();
        let method = req.method();
        if path == RESPONSES_PATH {
            if req.uri().query().is_some() {
                return Route::Refuse(ProxyError::Forbidden {
                    path: path.to_owned(),
                    why: "keyward forwards POST /v1/responses only without a query string",
                });
            }
            if method != Method::POST {
                return Route::Refuse(ProxyError::MethodNotAllowed {
                    method: method.to_string(),
                    path: path.to_owned(),
                });
            }
            return Route::Forward;
        }
        if path == "/shutdown" && self.http_shutdown && method == Method::GET {
            return Route::Shutdown;
        }
        if (path == "/healthz" || path == "/readyz") && method == Method::GET {
            return Route::Health;
        }
        if path.starts_with("/v1/") {
            return Route::Refuse(ProxyError::Forbidden {
                path: path.to_owned(),
                why: "keyward forwards only POST /v1/responses; other OpenAI endpoints are not reachable through it",
            });
        }
        Route::Refuse(ProxyError::NotFound {
            path: path.to_owned(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// This worker's connections to the upstream.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    async fn forward(&self, req: Request<Incoming>, mut log: ExchangeLog) -> Response<ProxyBody> {
        let (header, value) = match &self.credential {
            // Boxed: the ChatGPT path's future is large, and would make every request's so.
            Credential::ChatGpt(backend) => return Box::pin(backend.forward(self, req, log)).await,
            Credential::ApiKey { header, value } => (header, value),
        };
        let (upstream, exchange) = match self.send_upstream(req, header, value, &mut log).await {
            Ok(sent) => sent,
            Err(err) => return self.fail(err, log),
        };
        let (parts, body) = upstream.into_parts();
        log.upstream_head(parts.status, &parts.headers);
        let dump = exchange.and_then(|id| self.open_response_dump(id, &parts));
        self.relay(parts, body, log, dump, false)
    }

    /// Relays an upstream response to the client. With `backend_stream`, a successful answer is
    /// an event stream even when the upstream did not label it so (the Codex backend may not).
    pub fn relay(
        &self,
        parts: http::response::Parts,
        body: UpstreamBody,
        log: ExchangeLog,
        dump: Option<DumpSink>,
        backend_stream: bool,
    ) -> Response<ProxyBody> {
        let labelled = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        let unlabelled_stream = backend_stream
            && parts.status.is_success()
            && !parts.headers.contains_key(CONTENT_TYPE);
        let sse = (labelled || unlabelled_stream) && !parts.headers.contains_key(CONTENT_LENGTH);
        let mut log = log;
        log.relaying(sse);
        let relay = RelayBody::new(body, self.limits.idle_timeout, sse, log, dump);
        let mut response = Response::new(ProxyBody::relay(relay));
        *response.status_mut() = parts.status;
        *response.headers_mut() = headers::client_response_headers(&parts.headers);
        if unlabelled_stream {
            response.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
        }
        response
    }

    /// keyward's own answer for a request that failed, logged once.
    pub fn fail(&self, err: ProxyError, log: ExchangeLog) -> Response<ProxyBody> {
        match &err {
            ProxyError::BodyTooLarge { .. } | ProxyError::BadJson(_) => {
                tracing::info!(error = %err, "request refused")
            }
            _ => tracing::warn!(error = %ErrorChain(&err), "request failed"),
        }
        let response = err.into_response();
        log.finish_local(response.status(), body_len(&response));
        response
    }

    /// Starts the dump of a request: its head now, its body through the returned sink.
    pub fn open_request_dump(
        &self,
        parts: &http::request::Parts,
    ) -> Option<(ExchangeId, DumpSink)> {
        let dumper = self.dumper.as_ref()?;
        let id = dumper.next_exchange();
        let mut meta = Map::new();
        meta.insert("method".into(), Value::from(parts.method.as_str()));
        meta.insert("path".into(), Value::from(parts.uri.path()));
        meta.insert(
            "upstream_url".into(),
            Value::from(self.upstream.uri.to_string()),
        );
        Some((id, dumper.open(id, "request", meta, &parts.headers)))
    }

    pub fn open_response_dump(
        &self,
        id: ExchangeId,
        parts: &http::response::Parts,
    ) -> Option<DumpSink> {
        let dumper = self.dumper.as_ref()?;
        let mut meta = Map::new();
        meta.insert("status".into(), Value::from(parts.status.as_u16()));
        Some(dumper.open(id, "response", meta, &parts.headers))
    }

    /// Sends the request upstream with the credential and waits for the response headers.
    async fn send_upstream(
        &self,
        req: Request<Incoming>,
        credential_header: &HeaderName,
        credential: &SecretHeader,
        log: &mut ExchangeLog,
    ) -> Result<(Response<UpstreamBody>, Option<ExchangeId>), ProxyError> {
        let (parts, body) = req.into_parts();
        let limit = self.limits.max_body;
        if content_length(&parts.headers).is_some_and(|len| len > limit) {
            return Err(ProxyError::BodyTooLarge { limit });
        }

        let (exchange, request_dump) = match self.open_request_dump(&parts) {
            Some((id, sink)) => (Some(id), Some(sink)),
            None => (None, None),
        };

        let exceeded = Arc::new(AtomicBool::new(false));
        let body = RequestBody::new(body, limit, exceeded.clone(), log.bytes_in(), request_dump);
        let mut upstream_req = Request::new(Either::Left(body));
        *upstream_req.method_mut() = Method::POST;
        let mut headers = headers::upstream_request_headers(&parts.headers);
        headers.insert(credential_header.clone(), credential.expose());
        *upstream_req.headers_mut() = headers;

        log.sending();
        let sent =
            tokio::time::timeout(self.limits.response_timeout, self.pool.send(upstream_req)).await;
        match sent {
            Err(_) => Err(ProxyError::UpstreamTimeout(self.limits.response_timeout)),
            Ok(Err(_)) if exceeded.load(Ordering::Relaxed) => {
                Err(ProxyError::BodyTooLarge { limit })
            }
            Ok(Err(err)) => Err(classify_send(err)),
            Ok(Ok(response)) => Ok((response, exchange)),
        }
    }
}

enum Route {
    Forward,
    Shutdown,
    Health,
    Refuse(ProxyError),
}

/// The request head's size as the client sent it, near enough: request line and header lines.
fn head_size(req: &Request<Incoming>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + target + 12;

    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Displays an error and its sources, `a: b: c`, for the log.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

pub fn body_len(response: &Response<ProxyBody>) -> u64 {
    http_body::Body::size_hint(response.body())
        .exact()
        .unwrap_or(0)
}
