//! One request, start to end: the Host check, routing, the pipeline's admit phase (policy,
//! client token, quota), the health endpoints, and the hand-off to the rest of the pipeline
//! ([`crate::proxy::pipeline`]) or the WebSocket ([`crate::proxy::websocket`]).

use std::borrow::Cow;
use std::sync::Arc;

use parking_lot::Mutex;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::access::clients::ClientTokens;
use crate::access::gate::{Gate, Peer, SharedPolicy};
use crate::access::owners::Owners;
use crate::config::Config;
use crate::config::access::HostCheck;
use crate::config::responses::Endpoints;
use crate::proxy::RESPONSES_PATH;
use crate::telemetry::metrics::Telemetry;

/// Where a client reads its own usage.
pub const USAGE_PATH: &str = "/keyward/usage";
use crate::proxy::body::ProxyBody;
use crate::proxy::body::UpstreamPool;
use crate::proxy::context::Context;
use crate::proxy::credentials::{Credentials, Groups};
use crate::proxy::dump::Dumper;
use crate::proxy::error::{ProxyError, json_response};
use crate::proxy::forward::{Forwarder, body_len};
use crate::proxy::open::OpenCount;
use crate::proxy::pipeline::Fallback;
use crate::proxy::pipeline::{Admitted, Pipeline};
use crate::proxy::routes::Endpoint;
use crate::proxy::websocket;
use crate::upstream::WsConnector;

mod health;

/// Everything a request needs, shared by all connections.
pub struct Proxy {
    /// This worker's connections to the upstream, limits and dumper.
    forwarder: Forwarder,
    /// The WebSockets this worker relays.
    sockets: OpenCount,
    credentials: Arc<Credentials>,
    max_headers: usize,
    http_shutdown: bool,
    shutdown: watch::Sender<bool>,
    /// This worker's access decisions (its netlink socket and group cache).
    gate: Mutex<Gate>,
    tokens: Option<Arc<ClientTokens>>,
    hosts: HostCheck,
    endpoints: Endpoints,
    /// Who created each stored response (API key, `--endpoints responses`).
    owners: Option<Arc<Owners>>,
    /// Metrics, ledger and quotas, when any of them is on.
    telemetry: Option<Arc<Telemetry>>,
}

/// What every worker's [`Proxy`] shares.
#[derive(Clone)]
pub struct Shared {
    pub credentials: Arc<Credentials>,
    pub dumper: Option<Arc<Dumper>>,
    pub policy: Arc<SharedPolicy>,
    pub tokens: Option<Arc<ClientTokens>>,
    pub owners: Option<Arc<Owners>>,
    pub telemetry: Option<Arc<Telemetry>>,
    pub shutdown: watch::Sender<bool>,
    /// Ask the kernel who owns every connection, policy or not (for per-user connection caps).
    pub identify_peers: bool,
    /// The Host names requests may carry: loopback, `--allowed-host`, the addresses listened on.
    pub hosts: HostCheck,
}

impl Proxy {
    /// One worker's proxy, with its own upstream connections.
    pub fn new(
        config: &Config,
        pools: Vec<Arc<UpstreamPool>>,
        ws: WsConnector,
        shared: Shared,
    ) -> Self {
        Self {
            forwarder: Forwarder::new(config, pools, ws, shared.dumper),
            sockets: OpenCount::default(),
            credentials: shared.credentials,
            max_headers: config.limits.max_headers,
            http_shutdown: config.http_shutdown,
            shutdown: shared.shutdown,
            gate: Mutex::new(Gate::new(
                shared.policy,
                shared.identify_peers || shared.telemetry.is_some(),
            )),
            tokens: shared.tokens,
            hosts: shared.hosts,
            endpoints: config.endpoints,
            owners: shared.owners,
            telemetry: shared.telemetry,
        }
    }

    /// This worker's open WebSockets, which shutdown waits for.
    pub fn open_websockets(&self) -> OpenCount {
        self.sockets.clone()
    }

    /// The credentials the routes give `client`, in the order they are tried (its groups looked
    /// up only when a route names a group).
    fn chain_for(&self, client: &Arc<str>, peer: &Peer) -> Result<Cow<'_, [usize]>, ProxyError> {
        self.credentials
            .chain_for(client, || match (&self.tokens, peer.uid()) {
                (Some(tokens), _) => Groups::Tokens(tokens.groups_of(client)),
                (None, Some(uid)) => Groups::System(self.with_gate(|gate| gate.groups(uid))),
                (None, None) => Groups::System(Arc::from([])),
            })
    }

    /// A WebSocket: relayed to the upstream's, its turns counted as the client's.
    async fn websocket(
        &self,
        req: Request<Incoming>,
        peer: &Peer,
        client: Arc<str>,
        chain: Vec<usize>,
        ctx: Context,
    ) -> Response<ProxyBody> {
        let accept = websocket::Accept {
            forwarder: &self.forwarder,
            credentials: &self.credentials,
            chain,
            owner: websocket::Owner {
                uid: peer.uid(),
                client,
                telemetry: self.telemetry.clone(),
                owners: self.owners.clone(),
            },
            shutdown: self.shutdown.subscribe(),
            sockets: &self.sockets,
        };
        websocket::accept(accept, req, ctx).await
    }

    /// Runs `f` with this worker's access gate.
    pub fn with_gate<T>(&self, f: impl FnOnce(&mut Gate) -> T) -> T {
        f(&mut self.gate.lock())
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Arc<Peer>,
    ) -> Response<ProxyBody> {
        let mut ctx = Context::new(req.method().clone(), req.uri().path(), Instant::now());
        ctx.identify(peer.uid(), None);
        let outcome = match self.hosts.check(req.headers()) {
            Err(why) => Err(ProxyError::Browser(why)),
            Ok(()) => match self.route(&req) {
                Route::Forward(endpoint) => {
                    ctx.endpoint(endpoint.name(), endpoint.charge(), self.owners.clone());
                    match self.admit(&req, &peer, &mut ctx) {
                        Ok(client) => match self.chain_for(&client, &peer) {
                            Ok(chain) => {
                                return self.forward(req, endpoint, &client, chain, ctx).await;
                            }
                            Err(err) => Err(err),
                        },
                        Err(err) => Err(err),
                    }
                }
                Route::WebSocket => match self.admit(&req, &peer, &mut ctx) {
                    Ok(client) => match self.chain_for(&client, &peer) {
                        Ok(chain) => {
                            let chain = chain.into_owned();
                            return self.websocket(req, &peer, client, chain, ctx).await;
                        }
                        Err(err) => Err(err),
                    },
                    Err(err) => Err(err),
                },
                Route::Health => Ok(self.health(req.uri().path())),
                Route::Usage => self.own_usage(&req, &peer),
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
        ctx.finish_local(response.status(), body_len(&response));
        response
    }

    /// `GET /keyward/usage`: the caller's own usage and quotas, the caller identified and refused
    /// as any request is. Not itself counted.
    fn own_usage(
        &self,
        req: &Request<Incoming>,
        peer: &Peer,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if let Some(refusal) = &peer.refusal {
            return Err(ProxyError::AccessDenied(refusal.message.clone()));
        }
        let client = self
            .check_token(req)?
            .or_else(|| peer.name.clone())
            .unwrap_or_else(|| Arc::from("unknown"));
        let telemetry = self.telemetry.as_ref().ok_or(ProxyError::UsageNotKept)?;
        let usage = serde_json::to_value(telemetry.client_usage(&client))
            .map_err(|err| ProxyError::BadJson(err.to_string()))?;
        Ok(json_response(StatusCode::OK, &usage))
    }

    /// What a request to be forwarded must pass: a connection the policy allows, a valid client
    /// token when tokens are required, and the client's quotas.
    fn admit(
        &self,
        req: &Request<Incoming>,
        peer: &Peer,
        ctx: &mut Context,
    ) -> Result<Arc<str>, ProxyError> {
        // Refused requests are counted too, as the connecting user's.
        ctx.identify(peer.uid(), peer.name.clone());
        if let Some(telemetry) = &self.telemetry {
            ctx.track(telemetry.clone());
        }
        if let Some(refusal) = &peer.refusal {
            return Err(ProxyError::AccessDenied(refusal.message.clone()));
        }
        let client = self.check_token(req)?.or_else(|| peer.name.clone());
        ctx.identify(peer.uid(), client.clone());
        // An owner the kernel could not name shares the `unknown` client's quotas.
        let client = client.unwrap_or_else(|| Arc::from("unknown"));
        if let Some(telemetry) = &self.telemetry {
            if telemetry.ledger_behind() {
                return Err(ProxyError::LedgerBehind);
            }
            match telemetry.quotas.admit(&client) {
                Ok(permit) => ctx.hold(permit),
                Err(exceeded) => {
                    telemetry.quota_refused(&client, exceeded.quota);
                    return Err(ProxyError::QuotaExceeded {
                        client: client.to_string(),
                        exceeded,
                    });
                }
            }
        }
        Ok(client)
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
        if head_size > self.max_headers {
            return Route::Refuse(ProxyError::HeadersTooLarge {
                limit: self.max_headers,
            });
        }
        let path = req.uri().path();
        let method = req.method();
        if path == RESPONSES_PATH && req.uri().query().is_some() {
            return Route::Refuse(ProxyError::Forbidden {
                path: path.to_owned(),
                why: "keyward forwards /v1/responses only without a query string",
            });
        }
        if path == RESPONSES_PATH && method == Method::GET && websocket::is_upgrade(req) {
            return Route::WebSocket;
        }
        if path == "/shutdown" && self.http_shutdown && method == Method::GET {
            return Route::Shutdown;
        }
        if (path == "/healthz" || path == "/readyz") && method == Method::GET {
            return Route::Health;
        }
        if path == USAGE_PATH && method == Method::GET {
            return Route::Usage;
        }
        match Endpoint::parse(method, path) {
            Err(err) => Route::Refuse(err),
            Ok(Some(Endpoint::Create)) => Route::Forward(Endpoint::Create),
            Ok(Some(_)) if self.endpoints == Endpoints::Create => {
                Route::Refuse(ProxyError::Forbidden {
                    path: path.to_owned(),
                    why: "keyward forwards only POST /v1/responses (--endpoints create)",
                })
            }
            Ok(Some(endpoint)) => Route::Forward(endpoint),
            Ok(None) if path.starts_with("/v1/") => Route::Refuse(ProxyError::Forbidden {
                path: path.to_owned(),
                why: "keyward forwards only the Responses API (/v1/responses and the responses \
                      under it) and the model list; other OpenAI endpoints are not reachable \
                      through it",
            }),
            Ok(None) => Route::Refuse(ProxyError::NotFound {
                path: path.to_owned(),
            }),
        }
    }

    /// The rest of the pipeline, for an admitted request.
    async fn forward(
        &self,
        req: Request<Incoming>,
        endpoint: Endpoint,
        client: &Arc<str>,
        chain: Cow<'_, [usize]>,
        mut ctx: Context,
    ) -> Response<ProxyBody> {
        // With one credential, its quotas are part of admission; with several, each is asked
        // in turn (a credential over its quota is passed over).
        if let [index] = chain[..] {
            match self.credentials.admit(index) {
                Ok(permit) => ctx.hold_for_credential(permit),
                Err(err) => return self.forwarder.fail(err, ctx),
            }
        }
        let pipeline = Pipeline {
            forwarder: &self.forwarder,
            credential: self.credentials.get(chain[0]),
            owners: self.owners.as_ref(),
            // With more than one credential to try, the body is read whole to be sent again.
            fallback: (chain.len() > 1).then(|| Fallback {
                credentials: &self.credentials,
                chain: chain.into_owned(),
            }),
        };
        let admitted = Admitted {
            endpoint: &endpoint,
            client,
        };
        pipeline.forward(req, admitted, ctx).await
    }
}

enum Route {
    Forward(Endpoint),
    WebSocket,
    Shutdown,
    Health,
    /// `GET /keyward/usage`.
    Usage,
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
