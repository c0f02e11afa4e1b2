//! `serve --auth chatgpt`: forwarding to the Codex backend with the ChatGPT login.
//!
//! The backend is stricter than the public API, so requests are adapted: `store` is forced to
//! false, `instructions` supplied, refused parameters dropped, and a stream always requested;
//! a client that asked for no stream gets the final response object as JSON, assembled from the
//! stream as it passes.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, CONTENT_LENGTH, CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use crate::config::ChatGptConfig;
use crate::credential::chatgpt::tokens::{AuthError, Session, TokenManager};
use crate::proxy::body::ProxyBody;
use crate::proxy::body::UpstreamBody;
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
        let (payload, wants_stream) = self.adapt(&body)?;
        // The dump shows the request as the backend receives it.
        let exchange = proxy.open_request_dump(&parts).map(|(id, mut sink)| {
            sink.append(&payload);
            sink.set_end("completed");
            id
        });

        let session = self.tokens.session().await.map_err(ProxyError::Auth)?;
        log.sending();
        let mut response = self.send(proxy, &parts.headers, &payload, &session).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            // The token may have been replaced or revoked: reload, refresh if it is still the
            // current one, and try once more.
            tracing::info!("the backend refused the access token; refreshing and retrying once");
            let fresh = self
                .tokens
                .after_unauthorized(&session)
                .await
                .map_err(ProxyError::Auth)?;
            response = self.send(proxy, &parts.headers, &payload, &fresh).await?;
        }
        log.upstream_head(response.status(), response.headers());

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
        let bytes = serde_json::to_vec(&request).map_err(|e| ProxyError::BadJson(e.to_string()))?;
        Ok((Bytes::from(bytes), wants_stream))
    }

    async fn send(
        &self,
        proxy: &Forwarder,
        client_headers: &HeaderMap,
        payload: &Bytes,
        session: &Session,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let mut headers = headers::upstream_request_headers(client_headers);
        for name in [CHATGPT_ACCOUNT_ID, header::COOKIE, FEDRAMP, CONTENT_LENGTH] {
            headers.remove(name);
        }
        headers.insert(header::AUTHORIZATION, session.authorization.expose());
        headers.insert(CHATGPT_ACCOUNT_ID, session.account_id.clone());
        if session.fedramp {
            headers.insert(FEDRAMP, HeaderValue::from_static("true"));
        }
        headers.insert(ORIGINATOR, self.config.originator.clone());
        headers.insert(VERSION, self.config.version.clone());
        headers.insert(header::USER_AGENT, self.config.user_agent.clone());
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

/// Reads a whole request body, refusing more than `limit` bytes.
async fn read_limited(
    body: Incoming,
    headers: &HeaderMap,
    limit: u64,
) -> Result<Bytes, ProxyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, cap).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(err) => Err(ProxyError::ClientBody(err.to_string())),
    }
}

/// Reads the backend's event stream to its end and returns what a non-streaming call to the
/// Responses API returns: the final response object (or the error).
async fn assemble(
    mut body: UpstreamBody,
    idle: std::time::Duration,
) -> Result<(StatusCode, Value), ProxyError> {
    let mut buffer = BytesMut::new();
    let mut items: Vec<Value> = Vec::new();
    let answer = 'read: loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(ProxyError::BackendStream(format!(
                    "the backend sent nothing for {}s",
                    idle.as_secs()
                )));
            }
            Ok(None) => {
                return Err(ProxyError::BackendStream(
                    "the backend ended the stream without response.completed".into(),
                ));
            }
            Ok(Some(Err(err))) => {
                return Err(ProxyError::BackendStream(format!(
                    "the backend stream broke: {err}"
                )));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        while let Some(end) = find_event_end(&buffer) {
            let event = buffer.split_to(end.0);
            let _ = buffer.split_to(end.1);
            let Some(json) = event_data(&event) else {
                continue;
            };
            match json["type"].as_str().unwrap_or("") {
                "response.output_item.done" => items.push(json["item"].clone()),
                "response.completed" | "response.incomplete" => {
                    let mut response = json["response"].clone();
                    let empty = response["output"].as_array().is_none_or(|o| o.is_empty());
                    if empty && !items.is_empty() {
                        response["output"] = Value::Array(items);
                    }
                    break 'read (StatusCode::OK, response);
                }
                "response.failed" => {
                    let error = &json["response"]["error"];
                    break 'read (
                        StatusCode::BAD_GATEWAY,
                        openai_error(error, "response_failed"),
                    );
                }
                "error" => {
                    let error = if json["error"].is_object() {
                        &json["error"]
                    } else {
                        &json
                    };
                    break 'read (
                        StatusCode::BAD_GATEWAY,
                        openai_error(error, "upstream_error"),
                    );
                }
                _ => {}
            }
        }
    };
    finish_in_background(body);
    Ok(answer)
}

/// Reads what follows the final event (normally just the stream's end) after the answer has gone,
/// so that the connection can carry another request. A backend still talking after 5 s loses the
/// connection instead.
fn finish_in_background(mut body: UpstreamBody) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
    });
}

/// Position of the end of the first complete event in `buf`: (event length, separator length).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The JSON in an SSE event's `data:` lines.
fn event_data(event: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(event).ok()?;
    let data: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        return None;
    }
    serde_json::from_str(&data.join("\n")).ok()
}

fn openai_error(error: &Value, default_code: &str) -> Value {
    serde_json::json!({
        "error": {
            "message": error["message"].as_str().unwrap_or("the backend reported a failure"),
            "type": error["type"].as_str().unwrap_or("upstream_error"),
            "code": error["code"].as_str().unwrap_or(default_code),
            "param": null,
        }
    })
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::NotSignedIn { .. } => "chatgpt_not_signed_in",
            AuthError::Dead { .. } => "chatgpt_login_expired",
            AuthError::RefreshFailed(_) => "chatgpt_refresh_failed",
            AuthError::Store(_) => "chatgpt_login_unreadable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_either_separator() {
        assert_eq!(find_event_end(b"data: 1\n\ndata: 2"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: 1\r\n\r\nx"), Some((7, 4)));
        assert_eq!(find_event_end(b"data: 1\n"), None);
        assert_eq!(
            event_data(b"event: x\ndata: {\"a\":\ndata: 1}").unwrap()["a"],
            1
        );
        assert_eq!(event_data(b": comment"), None);
    }
}
