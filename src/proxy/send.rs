//! The pipeline's send phase: the one place a request goes upstream with the credential. The
//! headers are the header policy's ([`crate::proxy::headers`]) plus the credential's; the
//! response head must come within `--response-timeout`, and a failure is classified once
//! ([`classify_send`]); a 401 is shown to the credential, which may give something to retry
//! with, once. HTTP requests and WebSocket handshakes both come through here.

use std::future::Future;

use http::{HeaderMap, Response, StatusCode};

use crate::proxy::body::{OutgoingBody, UpstreamBody};
use crate::proxy::context::Context;
use crate::proxy::credential::{Credential, Grant};
use crate::proxy::error::{ProxyError, classify_send};
use crate::proxy::forward::Forwarder;
use crate::proxy::headers;
use crate::proxy::request_body::BodyFault;
use crate::upstream::ErrorChain;

/// An upstream's answer to an attempt: whether it refused the credential.
pub trait Answer {
    fn unauthorized(&self) -> bool;
}

impl Answer for Response<UpstreamBody> {
    fn unauthorized(&self) -> bool {
        self.status() == StatusCode::UNAUTHORIZED
    }
}

/// The headers an attempt goes with: the client's as the header policy lets them pass, then
/// the credential's.
pub fn upstream_headers(credential: &Credential, client: &HeaderMap, grant: &Grant) -> HeaderMap {
    let mut headers = headers::upstream_request_headers(client);
    credential.authorize(&mut headers, client, grant);
    headers
}

/// Sends with the credential: `attempt` sends once with what it is given; after a 401 the
/// credential is asked for something fresh, and `attempt` runs once more with it.
pub async fn with_credential<T, F, Fut>(
    credential: &Credential,
    ctx: &mut Context,
    mut attempt: F,
) -> Result<T, ProxyError>
where
    T: Answer,
    F: FnMut(Grant) -> Fut,
    Fut: Future<Output = Result<T, ProxyError>>,
{
    let grant = credential.grant().await?;
    ctx.sending(credential.name());
    let answer = attempt(grant.clone()).await?;
    if !answer.unauthorized() {
        return Ok(answer);
    }
    match credential.after_unauthorized(&grant).await? {
        Some(fresh) => attempt(fresh).await,
        None => Ok(answer),
    }
}

impl Forwarder {
    /// One HTTP request upstream: its response head within `--response-timeout`, a failure
    /// blamed on the right side (`fault`: what the client's streamed body noted).
    pub async fn send(
        &self,
        request: http::Request<OutgoingBody>,
        fault: Option<&BodyFault>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let timeout = self.limits().response_timeout;
        let limit = self.limits().max_body;
        // Boxed: the pool's future (connecting, TLS) is large, and each layer above would
        // otherwise copy it whole (measured: bench/results/2026-12-02-pipeline-ab.md).
        let sent = Box::pin(self.pool(request.uri()).send(request));
        match tokio::time::timeout(timeout, sent).await {
            Err(_) => Err(ProxyError::UpstreamTimeout(timeout)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(match fault {
                Some(fault) if fault.too_large() => ProxyError::BodyTooLarge { limit },
                Some(fault) if let Some(id) = fault.foreign_previous() => {
                    ProxyError::UnknownPrevious { id }
                }
                Some(fault) if fault.client_failed() => {
                    ProxyError::ClientBody(ErrorChain(&err).to_string())
                }
                _ => classify_send(err),
            }),
        }
    }
}
