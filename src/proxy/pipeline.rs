//! The one path every forwarded request takes, in phases, with one [`Context`]:
//!
//! 1. **admit** ([`crate::proxy::handler`]): the Host check, the route, the access policy, the
//!    client token, the ledger's health and the quotas; here, a stored response only to the
//!    client that created it.
//! 2. **choose the credential** and what the endpoint becomes with it ([`Credential::plan`]).
//! 3. **build** the upstream request: the body streamed as it comes, or read whole (adapted to
//!    the ChatGPT backend, or checked for another client's `previous_response_id`); the headers
//!    by the one header policy plus the credential's ([`send::upstream_headers`]).
//! 4. **send** ([`crate::proxy::send`]): one timeout and error classification, one 401
//!    refresh-and-retry.
//! 5. **relay** the answer ([`Forwarder::relay`], [`crate::proxy::body::RelayBody`]), or answer
//!    locally (a response assembled from the backend's stream, the model list, an error).
//! 6. **account** ([`Context::finish`]): the ledger line, metrics, quota counts and the record
//!    of who created the response.
//!
//! A WebSocket takes the same phases per socket and per turn ([`crate::proxy::websocket`]).

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::access::owners::Owners;
use crate::proxy::assemble::read_limited;
use crate::proxy::body::{OutgoingBody, ProxyBody, UpstreamBody};
use crate::proxy::context::Context;
use crate::proxy::credential::Credential;
use crate::proxy::decode::{self, Kept};
use crate::proxy::dump::{DumpSink, ExchangeId};
use crate::proxy::error::ProxyError;
use crate::proxy::forward::{Forwarder, body_len};
use crate::proxy::plan::Plan;
use crate::proxy::previous::PreviousCheck;
use crate::proxy::request_body::{BodyFault, RequestBody};
use crate::proxy::routes::Endpoint;
use crate::proxy::send;

mod fallback;
mod whole;

pub use fallback::Fallback;
pub(crate) use fallback::spent_for;

/// What a worker's requests go through: its upstream connections, the credential, the record
/// of response owners.
pub struct Pipeline<'a> {
    pub forwarder: &'a Forwarder,
    pub credential: &'a Credential,
    pub owners: Option<&'a Arc<Owners>>,
    /// The route's other credentials, tried in turn when a plan's limit is reached.
    pub fallback: Option<Fallback<'a>>,
}

/// The client's body: as it arrives, or already read (to be sent again).
pub(crate) enum ClientBody {
    Streamed(Incoming),
    Read(Bytes),
}

impl ClientBody {
    /// The body whole: read now (and counted), or as read before.
    async fn whole(
        self,
        headers: &HeaderMap,
        limit: u64,
        ctx: &mut Context,
    ) -> Result<Bytes, ProxyError> {
        match self {
            ClientBody::Streamed(body) => {
                let bytes = read_limited(body, headers, limit).await?;
                ctx.add_bytes_in(bytes.len());
                Ok(bytes)
            }
            ClientBody::Read(bytes) => Ok(bytes),
        }
    }
}

/// One admitted request to `endpoint` from `client`.
pub struct Admitted<'a> {
    pub endpoint: &'a Endpoint,
    pub client: &'a Arc<str>,
}

/// How the answer reaches the client.
#[expect(
    clippy::large_enum_variant,
    reason = "Relay is every API-key request's case (about 200 bytes); boxing it would add an \
              allocation to each"
)]
enum Reply {
    /// The upstream's answer, relayed as it arrives. With `backend_stream`, a successful answer
    /// without a Content-Type is an event stream (the Codex backend may not label it).
    Relay {
        response: Response<UpstreamBody>,
        dump: Option<ExchangeId>,
        backend_stream: bool,
    },
    /// An answer keyward made (assembled, translated). Boxed: a `ProxyBody` can hold a whole
    /// relay, and every request's reply would be copied at that size.
    Local(Box<Response<ProxyBody>>),
}

/// The request body as it goes upstream.
#[expect(
    clippy::large_enum_variant,
    reason = "made once per request and taken apart at once; boxing would add an allocation"
)]
enum Outgoing {
    /// The client's, streamed as it arrives; `fault` says what went wrong with it.
    Streamed(RequestBody, Arc<BodyFault>),
    /// Read whole (and perhaps changed): can be sent twice.
    Whole(Bytes),
}

impl Pipeline<'_> {
    /// Phases 2 to 6 for an admitted HTTP request.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        admitted: Admitted<'_>,
        mut ctx: Context,
    ) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        let answered = match &self.fallback {
            Some(fallback) => {
                Box::pin(self.with_fallback(fallback, parts, body, &admitted, &mut ctx)).await
            }
            None => {
                self.answer(parts, ClientBody::Streamed(body), &admitted, &mut ctx)
                    .await
            }
        };
        match answered {
            Ok(Reply::Relay {
                response,
                dump,
                backend_stream,
            }) => {
                let (parts, body) = response.into_parts();
                let dump = dump.and_then(|id| self.forwarder.open_response_dump(id, &parts));
                self.forwarder.relay(parts, body, ctx, dump, backend_stream)
            }
            Ok(Reply::Local(response)) => {
                ctx.finish_local(response.status(), body_len(&response));
                *response
            }
            Err(err) => self.forwarder.fail(err, ctx),
        }
    }

    async fn answer(
        &self,
        parts: http::request::Parts,
        body: ClientBody,
        admitted: &Admitted<'_>,
        ctx: &mut Context,
    ) -> Result<Reply, ProxyError> {
        let Admitted { endpoint, client } = *admitted;
        self.admit_stored(endpoint, client).await?;
        let plan = self
            .credential
            .plan(endpoint, parts.uri.query(), &parts.headers)?;
        // Continuing a response reads it: only the client's own may be named.
        let previous = match (endpoint, self.owners) {
            (Endpoint::Create | Endpoint::Compact | Endpoint::InputTokens, Some(owners))
                if owners.enforced() =>
            {
                Some(PreviousCheck::new(owners.clone(), client.clone()))
            }
            _ => None,
        };
        match plan {
            Plan::AsItCame(uri) => {
                let declared = content_length(&parts.headers);
                let sent = self
                    .as_it_came(parts, body, uri, previous, declared, ctx)
                    .await;
                // A body keyward refused before reading is logged at the size declared.
                if sent.is_err()
                    && let Some(len) = declared
                    && ctx.bytes_in().load(std::sync::atomic::Ordering::Relaxed) == 0
                {
                    ctx.add_bytes_in(usize::try_from(len).unwrap_or(usize::MAX));
                }
                sent
            }
            // Boxed: assembling a response makes this branch's future large, and it would make
            // every request's so.
            Plan::Adapted(uri) => Box::pin(self.adapted(parts, body, uri, ctx)).await,
            // The ChatGPT backend's: boxed, so that their futures do not make every request's
            // larger.
            Plan::Whole(uri) => Box::pin(self.whole(parts, body, uri, ctx)).await,
            Plan::Models { uri, id } => Box::pin(self.models(parts, uri, id, ctx)).await,
        }
    }

    /// A stored response only to the client that created it.
    async fn admit_stored(&self, endpoint: &Endpoint, client: &Arc<str>) -> Result<(), ProxyError> {
        if let Some(id) = endpoint.stored_response()
            && let Some(owners) = self.owners
            && !owners.permits_shared(id, client).await
        {
            tracing::warn!(
                client = %client,
                response = id,
                known = owners.owner(id).is_some(),
                "refused a stored response to a client that did not create it"
            );
            return Err(ProxyError::UnknownResponse { id: id.to_owned() });
        }
        Ok(())
    }

    /// The request as it came: the body streamed up as it arrives, watched for another client's
    /// previous response; a compressed one is read whole and decoded to be checked, then sent
    /// as it came.
    async fn as_it_came(
        &self,
        parts: http::request::Parts,
        body: ClientBody,
        uri: Uri,
        previous: Option<PreviousCheck>,
        declared: Option<u64>,
        ctx: &mut Context,
    ) -> Result<Reply, ProxyError> {
        let limit = self.forwarder.limits().max_body;
        if declared.is_some_and(|len| len > limit) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        let upstream = self.credential.upstream();
        let (exchange, request_dump) = match self.forwarder.open_request_dump(&parts, upstream) {
            Some((id, sink)) => (Some(id), Some(sink)),
            None => (None, None),
        };
        let body = match body {
            // Read before (to be sent again with another credential): checked whole.
            ClientBody::Read(bytes) => Err(bytes),
            ClientBody::Streamed(body) => Ok(body),
        };
        let outgoing = match (previous, body) {
            (previous, Err(bytes)) => {
                let plain = decode::decode(&parts.headers, bytes.clone(), limit)?;
                if let Some(previous) = previous {
                    previous
                        .check_whole(&plain)
                        .map_err(|id| ProxyError::UnknownPrevious { id })?;
                }
                if plain.len() != bytes.len() {
                    let plain = plain.len() as u64;
                    ctx.plain_size(Box::new(move || Some(plain)));
                }
                finish_dump(request_dump, &bytes);
                Outgoing::Whole(bytes)
            }
            (Some(previous), Ok(body)) if !decode::encodings(&parts.headers).is_empty() => {
                let bytes = read_limited(body, &parts.headers, limit).await?;
                ctx.add_bytes_in(bytes.len());
                let plain = decode::decode(&parts.headers, bytes.clone(), limit)?;
                previous
                    .check_whole(&plain)
                    .map_err(|id| ProxyError::UnknownPrevious { id })?;
                let plain = plain.len() as u64;
                ctx.plain_size(Box::new(move || Some(plain)));
                finish_dump(request_dump, &bytes);
                Outgoing::Whole(bytes)
            }
            (previous, Ok(body)) => {
                let kept = Kept::new(&parts.headers, limit).map(|(kept, size)| {
                    ctx.plain_size(size);
                    kept
                });
                let fault = Arc::new(BodyFault::default());
                let body = RequestBody::new(
                    body,
                    limit,
                    fault.clone(),
                    ctx.bytes_in(),
                    request_dump,
                    kept,
                    previous,
                );
                Outgoing::Streamed(body, fault)
            }
        };
        let response = self.send(&parts, uri, outgoing, ctx, |_| {}).await?;
        Ok(relay(response, exchange, false))
    }

    /// The send phase for an HTTP request: `adjust` fits the headers to the body as built.
    async fn send(
        &self,
        parts: &http::request::Parts,
        uri: Uri,
        outgoing: Outgoing,
        ctx: &mut Context,
        adjust: impl Fn(&mut HeaderMap),
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let (mut streamed, whole, fault) = match outgoing {
            Outgoing::Streamed(body, fault) => (Some(body), None, Some(fault)),
            Outgoing::Whole(bytes) => (None, Some(bytes), None),
        };
        let forwarder = self.forwarder;
        let response = send::with_credential(self.credential, ctx, |grant| {
            let mut headers = send::upstream_headers(self.credential, &parts.headers, &grant);
            adjust(&mut headers);
            // A streamed body goes once: only a credential that has nothing to retry with
            // (an API key) sends one.
            let body: Option<OutgoingBody> = match (&whole, streamed.take()) {
                (Some(bytes), _) => Some(Either::Right(Full::new(bytes.clone()))),
                (None, streamed) => streamed.map(Either::Left),
            };
            let request = body.map(|body| {
                let mut request = Request::new(body);
                *request.method_mut() = parts.method.clone();
                *request.uri_mut() = uri.clone();
                *request.headers_mut() = headers;
                request
            });
            let fault = fault.clone();
            async move {
                let request = request.ok_or(ProxyError::BodyGone)?;
                forwarder.send(request, fault.as_deref()).await
            }
        })
        .await?;
        ctx.upstream_head(response.status(), response.headers());
        self.credential.observe_head(response.headers());
        Ok(response)
    }

    /// The dump of a request whose body keyward holds whole: head and body now.
    fn dump_whole(&self, parts: &http::request::Parts, body: &[u8]) -> Option<ExchangeId> {
        let upstream = self.credential.upstream();
        self.forwarder
            .open_request_dump(parts, upstream)
            .map(|(id, sink)| {
                finish_dump(Some(sink), body);
                id
            })
    }
}

fn relay(
    response: Response<UpstreamBody>,
    dump: Option<ExchangeId>,
    backend_stream: bool,
) -> Reply {
    Reply::Relay {
        response,
        dump,
        backend_stream,
    }
}

fn finish_dump(sink: Option<DumpSink>, body: &[u8]) {
    if let Some(mut sink) = sink {
        sink.append(body);
        sink.set_end("completed");
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
