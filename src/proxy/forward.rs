//! Sending a request upstream with the credential, and relaying the answer back: the part of a
//! request both credentials share (bodies, limits, dumps, the upstream pool).

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use crate::access::owners::Owners;
use crate::config::{Config, Limits, Upstream};
use crate::proxy::assemble::read_limited;
use crate::proxy::body::{ProxyBody, RelayBody};
use crate::proxy::body::{UpstreamBody, UpstreamPool};
use crate::proxy::decode::{self, Kept};
use crate::proxy::dump::{DumpSink, Dumper, ExchangeId};
use crate::proxy::error::{ProxyError, classify_send};
use crate::proxy::headers;
use crate::proxy::previous::PreviousCheck;
use crate::proxy::request_body::{BodyFault, RequestBody};
use crate::proxy::routes::Endpoint;
use crate::secret::SecretHeader;
use crate::telemetry::log::ExchangeLog;
use crate::upstream::{ErrorChain, WsConnector};

/// An API-key request to one endpoint, from one client.
pub struct ApiKeyRequest<'a> {
    pub endpoint: &'a Endpoint,
    pub client: &'a Arc<str>,
    /// The record of response owners (`--endpoints responses`).
    pub owners: Option<&'a Arc<Owners>>,
    pub credential: (&'a HeaderName, &'a SecretHeader),
}

/// What forwarding needs, one per worker: its upstream connections, the limits, the dumper.
pub struct Forwarder {
    /// This worker's connections to the upstream.
    pool: Arc<UpstreamPool>,
    /// Connections for WebSockets to the upstream.
    ws: WsConnector,
    upstream: Upstream,
    limits: Limits,
    dumper: Option<Arc<Dumper>>,
}

impl Forwarder {
    pub fn new(
        config: &Config,
        pool: Arc<UpstreamPool>,
        ws: WsConnector,
        dumper: Option<Arc<Dumper>>,
    ) -> Self {
        Self {
            pool,
            ws,
            upstream: config.upstream.clone(),
            limits: config.limits.clone(),
            dumper,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// This worker's connections to the upstream.
    pub fn pool(&self) -> &Arc<UpstreamPool> {
        &self.pool
    }

    /// `serve` with an API key: the request goes to its endpoint's upstream URL, derived from
    /// `--upstream-url`, its body watched for another client's previous response.
    pub async fn forward_endpoint(
        &self,
        req: Request<Incoming>,
        ctx: ApiKeyRequest<'_>,
        log: ExchangeLog,
    ) -> Response<ProxyBody> {
        let target = match ctx.endpoint {
            Endpoint::Create => Some(self.upstream.uri.clone()),
            endpoint => self
                .upstream
                .endpoint(&endpoint.suffix(), req.uri().query()),
        };
        let Some(target) = target else {
            let path = req.uri().path().to_owned();
            let why = "keyward forwards only POST /v1/responses here: --upstream-url does not end \
                       in /responses, so the other endpoints' URLs cannot be derived from it";
            return self.fail(ProxyError::Forbidden { path, why }, log);
        };
        // Continuing a response reads it: only the client's own may be named.
        let previous = match (ctx.endpoint, ctx.owners) {
            (Endpoint::Create | Endpoint::Compact | Endpoint::InputTokens, Some(owners))
                if owners.enforced() =>
            {
                Some(PreviousCheck::new(owners.clone(), ctx.client.clone()))
            }
            _ => None,
        };
        self.forward_api_key(req, target, ctx.credential, previous, log)
            .await
    }

    /// `serve` with an API key: the request goes to `target` as it came (method, headers, body),
    /// with the key added; `previous` watches its body for another client's previous response.
    async fn forward_api_key(
        &self,
        req: Request<Incoming>,
        target: Uri,
        (header, value): (&HeaderName, &SecretHeader),
        previous: Option<PreviousCheck>,
        mut log: ExchangeLog,
    ) -> Response<ProxyBody> {
        let sent = self
            .send_upstream(req, target, (header, value), previous, &mut log)
            .await;
        let (upstream, exchange) = match sent {
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
            // The client's fault: worth a line, not an alarm.
            ProxyError::BodyTooLarge { .. }
            | ProxyError::BadJson(_)
            | ProxyError::ClientBody(_)
            | ProxyError::BadRequestBody(_)
            | ProxyError::Decode(_)
            | ProxyError::NotOffered(_)
            | ProxyError::UnknownResponse { .. } => {
                tracing::info!(error = %ErrorChain(&err), "request refused")
            }
            ProxyError::UnknownPrevious { id } => tracing::warn!(
                previous_response = id,
                "refused a request that continues a response its client did not create"
            ),
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

    /// This worker's connections for WebSockets.
    pub fn ws(&self) -> &WsConnector {
        &self.ws
    }

    /// The dump of a WebSocket's messages from the upstream (after its 101).
    pub fn open_ws_response_dump(&self, id: ExchangeId) -> Option<DumpSink> {
        let dumper = self.dumper.as_ref()?;
        let mut meta = Map::new();
        meta.insert("status".into(), Value::from(101));
        Some(dumper.open(id, "response", meta, &HeaderMap::new()))
    }

    /// Sends the request upstream with the credential and waits for the response headers.
    async fn send_upstream(
        &self,
        req: Request<Incoming>,
        target: Uri,
        (credential_header, credential): (&HeaderName, &SecretHeader),
        previous: Option<PreviousCheck>,
        log: &mut ExchangeLog,
    ) -> Result<(Response<UpstreamBody>, Option<ExchangeId>), ProxyError> {
        let (parts, body) = req.into_parts();
        let limit = self.limits.max_body;
        let declared = content_length(&parts.headers);
        // A body keyward answers before reading is logged at the size the client declared.
        let unread = |log: &mut ExchangeLog| {
            if log.bytes_in().load(std::sync::atomic::Ordering::Relaxed) == 0
                && let Some(len) = declared
            {
                log.add_bytes_in(usize::try_from(len).unwrap_or(usize::MAX));
            }
        };
        if declared.is_some_and(|len| len > limit) {
            unread(log);
            return Err(ProxyError::BodyTooLarge { limit });
        }

        let (exchange, request_dump) = match self.open_request_dump(&parts) {
            Some((id, sink)) => (Some(id), Some(sink)),
            None => (None, None),
        };

        let fault = Arc::new(BodyFault::default());
        let body = match previous {
            // A compressed body is read whole and decoded to be checked, then sent as it came.
            Some(previous) if !decode::encodings(&parts.headers).is_empty() => {
                let bytes = read_limited(body, &parts.headers, limit).await?;
                log.add_bytes_in(bytes.len());
                let plain = decode::decode(&parts.headers, bytes.clone(), limit)?;
                previous
                    .check_whole(&plain)
                    .map_err(|id| ProxyError::UnknownPrevious { id })?;
                let plain = plain.len() as u64;
                log.plain_size(Box::new(move || Some(plain)));
                if let Some(mut dump) = request_dump {
                    dump.append(&bytes);
                    dump.set_end("completed");
                }
                Either::Right(Full::new(bytes))
            }
            previous => {
                let kept = Kept::new(&parts.headers, limit).map(|(kept, size)| {
                    log.plain_size(size);
                    kept
                });
                Either::Left(RequestBody::new(
                    body,
                    limit,
                    fault.clone(),
                    log.bytes_in(),
                    request_dump,
                    kept,
                    previous,
                ))
            }
        };
        let mut upstream_req = Request::new(body);
        *upstream_req.method_mut() = parts.method.clone();
        *upstream_req.uri_mut() = target;
        let mut headers = headers::upstream_request_headers(&parts.headers);
        headers.insert(credential_header.clone(), credential.expose());
        *upstream_req.headers_mut() = headers;

        log.sending();
        let sent =
            tokio::time::timeout(self.limits.response_timeout, self.pool.send(upstream_req)).await;
        let result = match sent {
            Err(_) => Err(ProxyError::UpstreamTimeout(self.limits.response_timeout)),
            Ok(Err(_)) if fault.too_large() => Err(ProxyError::BodyTooLarge { limit }),
            Ok(Err(_)) if let Some(id) = fault.foreign_previous() => {
                Err(ProxyError::UnknownPrevious { id })
            }
            Ok(Err(err)) if fault.client_failed() => {
                Err(ProxyError::ClientBody(ErrorChain(&err).to_string()))
            }
            Ok(Err(err)) => Err(classify_send(err)),
            Ok(Ok(response)) => Ok((response, exchange)),
        };
        if result.is_err() {
            unread(log);
        }
        result
    }
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

pub fn body_len(response: &Response<ProxyBody>) -> u64 {
    http_body::Body::size_hint(response.body())
        .exact()
        .unwrap_or(0)
}
