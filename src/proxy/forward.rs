//! A worker's way to the upstream: its connections, limits and dumper; relaying an answer back
//! (the pipeline's relay phase) and keyward's own answer for a request that failed.

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Response};
use serde_json::{Map, Value};

use crate::config::{Config, Limits, Upstream};
use crate::proxy::body::{ProxyBody, RelayBody};
use crate::proxy::body::{UpstreamBody, UpstreamPool};
use crate::proxy::context::Context;
use crate::proxy::dump::{DumpSink, Dumper, ExchangeId};
use crate::proxy::error::ProxyError;
use crate::proxy::headers;
use crate::upstream::{ErrorChain, WsConnector};

/// What forwarding needs, one per worker: its upstream connections, the limits, the dumper.
pub struct Forwarder {
    /// This worker's connections to each upstream its credentials send to.
    pools: Vec<Arc<UpstreamPool>>,
    /// Connections for WebSockets to the upstream.
    ws: WsConnector,
    limits: Limits,
    dumper: Option<Arc<Dumper>>,
}

impl Forwarder {
    pub fn new(
        config: &Config,
        pools: Vec<Arc<UpstreamPool>>,
        ws: WsConnector,
        dumper: Option<Arc<Dumper>>,
    ) -> Self {
        Self {
            pools,
            ws,
            limits: config.limits.clone(),
            dumper,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// This worker's connections to the upstream `uri` is on (one pool per upstream its
    /// credentials send to; a URI on none of them goes to the first).
    pub fn pool(&self, uri: &http::Uri) -> &Arc<UpstreamPool> {
        self.pools
            .iter()
            .find(|pool| pool.serves(uri))
            .unwrap_or(&self.pools[0])
    }

    /// Relays an upstream response to the client. With `backend_stream`, a successful answer is
    /// an event stream even when the upstream did not label it so (the Codex backend may not).
    pub fn relay(
        &self,
        parts: http::response::Parts,
        body: UpstreamBody,
        mut ctx: Context,
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
        let stream = labelled || unlabelled_stream;
        // An event stream sent whole with its length (a buffering gateway) is read as events
        // all the same, but keeps its framing: keyward adds no error event to it.
        let sse = stream && !parts.headers.contains_key(CONTENT_LENGTH);
        ctx.relaying(stream);
        let relay = RelayBody::new(body, self.limits.idle_timeout, sse, ctx, dump);
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
    pub fn fail(&self, err: ProxyError, ctx: Context) -> Response<ProxyBody> {
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
        ctx.finish_local(response.status(), body_len(&response));
        response
    }

    /// Starts the dump of a request going to `upstream`: its head now, its body through the
    /// returned sink.
    pub fn open_request_dump(
        &self,
        parts: &http::request::Parts,
        upstream: &Upstream,
    ) -> Option<(ExchangeId, DumpSink)> {
        let dumper = self.dumper.as_ref()?;
        let id = dumper.next_exchange();
        let mut meta = Map::new();
        meta.insert("method".into(), Value::from(parts.method.as_str()));
        meta.insert("path".into(), Value::from(parts.uri.path()));
        meta.insert("upstream_url".into(), Value::from(upstream.uri.to_string()));
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
}

pub fn body_len(response: &Response<ProxyBody>) -> u64 {
    http_body::Body::size_hint(response.body())
        .exact()
        .unwrap_or(0)
}
