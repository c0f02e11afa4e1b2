//! The fallback when a plan is spent: a route's credentials in turn. The client's body is read
//! whole first, so that it can be sent again, each time adapted to the credential it goes with;
//! a `429` that says the plan's limit is reached marks that credential spent until the reset the
//! upstream gave, and the request goes to the next. Any other answer, other `429`s included,
//! reaches the client as it came.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::proxy::body::ProxyBody;
use crate::proxy::context::Context;
use crate::proxy::credentials::Credentials;
use crate::proxy::error::ProxyError;
use crate::proxy::pipeline::{Admitted, ClientBody, Pipeline, Reply};

/// The route's credentials in the order they are tried (usable ones first), by index.
pub struct Fallback<'a> {
    pub credentials: &'a Credentials,
    pub chain: Vec<usize>,
}

/// How much of a `429`'s body is read to learn whether it is a spent plan.
const LIMIT_ANSWER: usize = 64 * 1024;
/// How long a credential counts as spent when the upstream gives no reset time.
const DEFAULT_RESET_S: i64 = 300;

impl Pipeline<'_> {
    pub(super) async fn with_fallback(
        &self,
        fallback: &Fallback<'_>,
        parts: http::request::Parts,
        body: Incoming,
        admitted: &Admitted<'_>,
        ctx: &mut Context,
    ) -> Result<Reply, ProxyError> {
        let limit = self.forwarder.limits().max_body;
        let bytes = ClientBody::Streamed(body)
            .whole(&parts.headers, limit, ctx)
            .await?;
        let session = session_of(&parts.headers, &bytes);
        let mut chain = fallback.chain.clone();
        if let Some(session) = &session {
            fallback.credentials.sticky(&mut chain, session);
        }
        for (attempt, &index) in chain.iter().enumerate() {
            let last = attempt + 1 == chain.len();
            match fallback.credentials.admit(index) {
                Ok(permit) => ctx.hold_for_credential(permit),
                Err(err) if last => return Err(err),
                Err(err) => {
                    tracing::debug!(error = %err, "passed over: the credential is over its quota");
                    continue;
                }
            }
            let credential = fallback.credentials.get(index);
            let pipeline = Pipeline {
                forwarder: self.forwarder,
                credential,
                owners: self.owners,
                fallback: None,
            };
            let body = ClientBody::Read(bytes.clone());
            let reply = Box::pin(pipeline.answer(copy(&parts), body, admitted, ctx)).await?;
            let answered = |reply: Reply| {
                if let Some(session) = &session {
                    fallback.credentials.remember(session, index);
                }
                Ok(reply)
            };
            let Reply::Relay { response, .. } = &reply else {
                return answered(reply);
            };
            if last || response.status() != StatusCode::TOO_MANY_REQUESTS {
                return answered(reply);
            }
            let Reply::Relay { response, .. } = reply else {
                unreachable!("matched above")
            };
            let (head, body) = response.into_parts();
            let timeout = self.forwarder.limits().idle_timeout;
            let read = tokio::time::timeout(timeout, Limited::new(body, LIMIT_ANSWER).collect());
            let answer = match read.await {
                Ok(Ok(collected)) => collected.to_bytes(),
                // Unreadable: it reaches the client as the error it is.
                _ => Bytes::new(),
            };
            match spent_for(&head.headers, &answer) {
                Some(seconds) => {
                    fallback.credentials.mark_spent(index, seconds);
                    tracing::warn!(
                        credential = %credential.name(),
                        client = %admitted.client,
                        resets_in_s = seconds,
                        "the plan's limit is reached: this credential rests until its reset, and \
                         the request goes to the route's next"
                    );
                }
                None => {
                    // Another 429 (a rate limit): the client gets it, through the same header
                    // policy as any relayed answer.
                    let mut response = Response::new(ProxyBody::full(answer));
                    *response.status_mut() = head.status;
                    *response.headers_mut() =
                        crate::proxy::headers::client_response_headers(&head.headers);
                    response.headers_mut().remove(http::header::CONTENT_LENGTH);
                    return answered(Reply::Local(Box::new(response)));
                }
            }
        }
        Err(ProxyError::NoRoute {
            client: admitted.client.to_string(),
        })
    }
}

/// What ties requests of one conversation together: Codex's `session-id` header, else the
/// body's `prompt_cache_key`.
fn session_of(headers: &http::HeaderMap, body: &[u8]) -> Option<String> {
    if let Some(id) = ["session-id", "session_id"]
        .iter()
        .find_map(|name| headers.get(*name)?.to_str().ok())
    {
        return Some(id.to_owned());
    }
    #[derive(serde::Deserialize)]
    struct Keyed {
        prompt_cache_key: Option<String>,
    }
    serde_json::from_slice::<Keyed>(body).ok()?.prompt_cache_key
}

/// The request's head again, for another attempt.
fn copy(parts: &http::request::Parts) -> http::request::Parts {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request.into_parts().0
}

/// Whether a `429` says the plan is spent, and for how many seconds: its error type is
/// `usage_limit_reached`, or a plan window is at 100%. The reset comes from `resets_in_seconds`,
/// `resets_at` or the window's reset header.
pub(crate) fn spent_for(headers: &http::HeaderMap, body: &[u8]) -> Option<i64> {
    let header =
        |name: &str| -> Option<f64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    let error = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").cloned());
    let typed = error.as_ref().is_some_and(|e| {
        e.get("type").and_then(|t| t.as_str()) == Some("usage_limit_reached")
            || e.get("code").and_then(|t| t.as_str()) == Some("usage_limit_reached")
    });
    let full = [
        "x-codex-primary-used-percent",
        "x-codex-secondary-used-percent",
    ]
    .iter()
    .any(|name| header(name).is_some_and(|used| used >= 100.0));
    if !typed && !full {
        return None;
    }
    let now = crate::credential::chatgpt::record::now();
    let field = |name: &str| error.as_ref()?.get(name)?.as_i64();
    let seconds = field("resets_in_seconds")
        .or_else(|| field("resets_at").map(|at| at - now))
        .or_else(|| header("x-codex-primary-reset-after-seconds").map(|s| s as i64))
        .or_else(|| header("x-codex-primary-reset-at").map(|at| at as i64 - now))
        .unwrap_or(DEFAULT_RESET_S);
    Some(seconds.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_plan_is_told_from_other_429s() {
        let headers = http::HeaderMap::new();
        let spent = br#"{"error":{"type":"usage_limit_reached","message":"The usage limit has been reached","resets_in_seconds":1200}}"#;
        assert_eq!(spent_for(&headers, spent), Some(1200));
        let at = crate::credential::chatgpt::record::now() + 60;
        let by_time = format!(r#"{{"error":{{"type":"usage_limit_reached","resets_at":{at}}}}}"#);
        assert!(matches!(
            spent_for(&headers, by_time.as_bytes()),
            Some(59..=60)
        ));
        let rate = br#"{"error":{"type":"rate_limit_exceeded","message":"slow down"}}"#;
        assert_eq!(
            spent_for(&headers, rate),
            None,
            "a rate limit is not a spent plan"
        );
        let mut full = http::HeaderMap::new();
        full.insert("x-codex-primary-used-percent", "100".parse().unwrap());
        full.insert("x-codex-primary-reset-after-seconds", "90".parse().unwrap());
        assert_eq!(spent_for(&full, b"not json"), Some(90));
        assert_eq!(spent_for(&headers, b""), None);
    }
}
