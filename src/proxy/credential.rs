//! The credential keyward adds, and everything that differs between its kinds: which headers it
//! sets, whether a 401 is refreshed and retried once, how a request is adapted (the ChatGPT
//! backend's rules), what an endpoint becomes upstream, and what it reports to `/readyz`. The
//! pipeline ([`crate::proxy::pipeline`]) calls it and never asks which kind it has; a new kind of
//! credential is one more variant here, not a new path.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use serde_json::Value;

use crate::config::Upstream;
use crate::credential::chatgpt::plan::PlanUsage;
use crate::credential::chatgpt::record::now;
use crate::credential::chatgpt::tokens::{Session, TokenManager};
use crate::proxy::backend::Backend;
use crate::proxy::error::ProxyError;
use crate::proxy::plan::Plan;
use crate::proxy::routes::Endpoint;
use crate::secret::SecretHeader;

/// The credential keyward adds to forwarded requests.
#[derive(Clone)]
pub enum Credential {
    /// An API key, sent in `header` (`Authorization` or Azure's `api-key`).
    ApiKey(Arc<Key>),
    /// The ChatGPT login, sent to the Codex backend.
    ChatGpt(Arc<Backend>),
}

/// An API key and where it goes.
pub struct Key {
    /// What the ledger and the metrics call it.
    name: Arc<str>,
    header: HeaderName,
    value: SecretHeader,
    /// Where requests with it go.
    upstream: Upstream,
}

/// What one attempt is sent with: the key, or one access token of the login.
#[derive(Clone)]
pub enum Grant {
    Key,
    Login(Arc<Session>),
}

impl Credential {
    /// An API key named `name` (`api-key` for the one given on the command line), sent in
    /// `header` to `upstream`.
    pub fn api_key(
        name: Arc<str>,
        header: HeaderName,
        value: SecretHeader,
        upstream: Upstream,
    ) -> Self {
        Credential::ApiKey(Arc::new(Key {
            name,
            header,
            value,
            upstream,
        }))
    }

    /// Where requests with it go: the upstream's Responses URL.
    pub fn upstream(&self) -> &Upstream {
        match self {
            Credential::ApiKey(key) => &key.upstream,
            Credential::ChatGpt(backend) => &backend.upstream,
        }
    }

    /// The ChatGPT backend, with a ChatGPT login.
    pub fn chatgpt(&self) -> Option<&Arc<Backend>> {
        match self {
            Credential::ChatGpt(backend) => Some(backend),
            Credential::ApiKey(_) => None,
        }
    }

    /// The login's token manager (its refreshes are counted in the metrics).
    pub fn tokens(&self) -> Option<&Arc<TokenManager>> {
        self.chatgpt().map(|backend| &backend.tokens)
    }

    /// What the ledger and the metrics call it: `api-key` for the key given on the command line,
    /// `chatgpt` for the default login, `chatgpt:NAME` for another.
    pub fn name(&self) -> &Arc<str> {
        match self {
            Credential::ApiKey(key) => &key.name,
            Credential::ChatGpt(backend) => &backend.name,
        }
    }

    /// `api_key` or `chatgpt`, for health reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::ApiKey(_) => "api_key",
            Credential::ChatGpt(_) => "chatgpt",
        }
    }

    /// Whether requests can be sent with it now; the reason when not.
    pub fn readiness(&self) -> Result<(), String> {
        match self {
            Credential::ApiKey(_) => Ok(()),
            Credential::ChatGpt(backend) => backend.tokens.readiness(),
        }
    }

    /// Why it serves, but not as it should (a login whose shared store is away).
    pub fn degraded(&self) -> Option<&'static str> {
        self.tokens().and_then(|tokens| tokens.degraded())
    }

    /// What `/readyz` adds about it: the plan's latest usage windows, with a login.
    pub fn report(&self, answer: &mut Value) {
        if let Some(tokens) = self.tokens() {
            answer["plan_usage"] = serde_json::json!(tokens.plan.latest());
        }
    }

    /// What `endpoint` becomes upstream; `query` and `client` are the client's query string and
    /// headers.
    pub fn plan(
        &self,
        endpoint: &Endpoint,
        query: Option<&str>,
        client: &HeaderMap,
    ) -> Result<Plan, ProxyError> {
        match self {
            Credential::ApiKey(key) => {
                let upstream = &key.upstream;
                let uri = match endpoint {
                    Endpoint::Create => Some(upstream.uri.clone()),
                    endpoint => upstream.endpoint(&endpoint.suffix(), query),
                };
                uri.map(Plan::AsItCame)
                    .ok_or_else(|| ProxyError::Forbidden {
                        path: format!("/v1{}", endpoint.suffix()),
                        why: "keyward forwards only POST /v1/responses here: --upstream-url does \
                              not end in /responses, so the other endpoints' URLs cannot be \
                              derived from it",
                    })
            }
            Credential::ChatGpt(backend) => backend.plan(endpoint, client),
        }
    }

    /// A create request's body as the upstream takes it ([`Plan::Adapted`]), and whether the
    /// client asked for a stream.
    pub fn adapt(&self, body: &Bytes) -> Result<(Bytes, bool), ProxyError> {
        match self {
            Credential::ChatGpt(backend) => backend.adapt(body),
            // A key's upstream takes the client's body as it is.
            Credential::ApiKey(_) => Ok((body.clone(), true)),
        }
    }

    /// What the first attempt is sent with.
    pub async fn grant(&self) -> Result<Grant, ProxyError> {
        match self {
            Credential::ApiKey(_) => Ok(Grant::Key),
            Credential::ChatGpt(backend) => {
                // Boxed, as below: a session may mean a refresh at the issuer, a large future
                // that would make every request's so, the API key's included.
                let session = Box::pin(backend.tokens.session())
                    .await
                    .map_err(ProxyError::Auth)?;
                Ok(Grant::Login(session))
            }
        }
    }

    /// After the upstream refused `failed` with a 401: what to try once more with, or `None`
    /// when a retry cannot help (an API key is what it is). A login may have been replaced or
    /// revoked: the store is re-read, and the token refreshed if it is still the current one.
    pub async fn after_unauthorized(&self, failed: &Grant) -> Result<Option<Grant>, ProxyError> {
        match (self, failed) {
            (Credential::ChatGpt(backend), Grant::Login(session)) => {
                tracing::info!(
                    "the backend refused the access token; refreshing and retrying once"
                );
                let fresh = Box::pin(backend.tokens.after_unauthorized(session))
                    .await
                    .map_err(ProxyError::Auth)?;
                Ok(Some(Grant::Login(fresh)))
            }
            _ => Ok(None),
        }
    }

    /// Adds the credential's headers to `headers`, which the header policy has already made
    /// from the client's (`client`).
    pub fn authorize(&self, headers: &mut HeaderMap, client: &HeaderMap, grant: &Grant) {
        match (self, grant) {
            (Credential::ApiKey(key), _) => {
                let (header, value) = (&key.header, &key.value);
                headers.insert(header.clone(), value.expose());
            }
            (Credential::ChatGpt(backend), Grant::Login(session)) => {
                backend.authorize(headers, client, session);
            }
            // A login is always sent with a session: `grant` gives one.
            (Credential::ChatGpt(_), Grant::Key) => {}
        }
    }

    /// Learns from an upstream answer's head: the plan's usage windows, with a login.
    pub fn observe_head(&self, headers: &HeaderMap) {
        if let Some(tokens) = self.tokens()
            && let Some(usage) = PlanUsage::from_headers(headers, now())
        {
            tokens.plan.observe(usage);
        }
    }

    /// Learns from a WebSocket message: the backend's `codex.rate_limits` event, with a login.
    pub fn observe_message(&self, text: &str) {
        if let Some(tokens) = self.tokens()
            && text.contains("codex.rate_limits")
            && let Ok(event) = serde_json::from_str(text)
            && let Some(usage) = PlanUsage::from_event(&event, now())
        {
            tokens.plan.observe(usage);
        }
    }

    /// A `response.create` message on a WebSocket as the upstream accepts it: the ChatGPT
    /// backend's rules for a login, the client's own message for a key.
    pub fn adapt_message(&self, text: &str) -> String {
        self.chatgpt()
            .and_then(|backend| backend.adapt_ws_message(text.as_bytes()))
            .and_then(|adapted| String::from_utf8(adapted).ok())
            .unwrap_or_else(|| text.to_owned())
    }
}
