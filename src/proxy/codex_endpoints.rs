//! `serve --auth chatgpt`: the endpoints besides create. The Codex backend serves compaction
//! (`.../codex/responses/compact`, forwarded as it came) and its model list
//! (`.../codex/models?client_version=V`, answered in the OpenAI list shape); it keeps no stored
//! responses (`store` is always false there) and counts no input tokens, so those endpoints get
//! a 404 that says so.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::credential::chatgpt::tokens::Session;
use crate::proxy::assemble::read_limited;
use crate::proxy::backend::Backend;
use crate::proxy::body::{ProxyBody, UpstreamBody};
use crate::proxy::error::{ProxyError, classify_send, json_response};
use crate::proxy::forward::{Forwarder, body_len};
use crate::proxy::routes::Endpoint;
use crate::telemetry::log::ExchangeLog;

/// The most of the model list keyward reads.
const MAX_MODELS: usize = 4 << 20;

const NO_STORED_RESPONSES: &str = "the ChatGPT backend keeps no stored responses (store is \
    always false there), so there is nothing to retrieve, cancel, delete or list; serve with an \
    API key (--auth api-key) for stored responses";
const NO_INPUT_TOKENS: &str = "the ChatGPT backend does not count input tokens; serve with an \
    API key (--auth api-key) for POST /v1/responses/input_tokens";

/// Forwards or answers one request to an endpoint other than create.
pub async fn forward(
    backend: &Backend,
    proxy: &Forwarder,
    req: Request<Incoming>,
    endpoint: &Endpoint,
    mut log: ExchangeLog,
) -> Response<ProxyBody> {
    let answered = match endpoint {
        Endpoint::Compact => compact(backend, proxy, req, &mut log).await,
        Endpoint::Models | Endpoint::Model(_) => models(backend, proxy, &req, endpoint, &mut log)
            .await
            .map(|response| Reply::Local(Box::new(response))),
        Endpoint::InputTokens => Err(ProxyError::NotOffered(NO_INPUT_TOKENS)),
        _ => Err(ProxyError::NotOffered(NO_STORED_RESPONSES)),
    };
    match answered {
        Ok(Reply::Relay(parts, body)) => proxy.relay(parts, body, log, None, false),
        Ok(Reply::Local(response)) => {
            log.finish_local(response.status(), body_len(&response));
            *response
        }
        Err(err) => proxy.fail(err, log),
    }
}

enum Reply {
    Relay(http::response::Parts, UpstreamBody),
    Local(Box<Response<ProxyBody>>),
}

/// `POST /v1/responses/compact` to `.../codex/responses/compact`, the body as it came (keyward
/// changes nothing in it, so an encoded body stays encoded).
async fn compact(
    backend: &Backend,
    proxy: &Forwarder,
    req: Request<Incoming>,
    log: &mut ExchangeLog,
) -> Result<Reply, ProxyError> {
    let (parts, body) = req.into_parts();
    let body = read_limited(body, &parts.headers, proxy.limits().max_body).await?;
    log.add_bytes_in(body.len());
    let target = backend_url(proxy, "/responses/compact", None)?;
    let response = send(
        backend,
        proxy,
        Method::POST,
        &target,
        &parts.headers,
        body,
        log,
    )
    .await?;
    let (parts, body) = response.into_parts();
    Ok(Reply::Relay(parts, body))
}

/// `GET /v1/models` and `/v1/models/{id}`, from the backend's model list.
async fn models(
    backend: &Backend,
    proxy: &Forwarder,
    req: &Request<Incoming>,
    endpoint: &Endpoint,
    log: &mut ExchangeLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let version = backend.client_version(req.headers());
    let query = format!(
        "client_version={}",
        url::form_urlencoded::byte_serialize(version.as_bytes()).collect::<String>()
    );
    let target = backend_url(proxy, "/models", Some(&query))?;
    let mut headers = req.headers().clone();
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    let response = send(
        backend,
        proxy,
        Method::GET,
        &target,
        &headers,
        Bytes::new(),
        log,
    )
    .await?;
    let status = response.status();
    let body = read_answer(response.into_body(), proxy).await?;
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !status.is_success() {
        // The backend's own error, as it gave it.
        return Ok(json_response(status, &answer));
    }
    let list = openai_model_list(&answer);
    let Endpoint::Model(id) = endpoint else {
        return Ok(json_response(StatusCode::OK, &list));
    };
    let found = list["data"]
        .as_array()
        .and_then(|models| models.iter().find(|m| m["id"] == id.as_str()));
    Ok(match found {
        Some(model) => json_response(StatusCode::OK, model),
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": {
                "message": format!("The model '{id}' does not exist or you do not have access to it."),
                "type": "invalid_request_error",
                "param": null,
                "code": "model_not_found",
            }}),
        ),
    })
}

/// The backend's `{"models":[{"slug",...}]}` as OpenAI's list:
/// `{"object":"list","data":[{"id","object":"model","created","owned_by"}]}`. The backend gives
/// no creation time: `created` is 0.
pub fn openai_model_list(codex: &Value) -> Value {
    let data: Vec<Value> = codex["models"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|model| model["slug"].as_str().or(model["id"].as_str()))
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "openai"}))
        .collect();
    json!({"object": "list", "data": data})
}

fn backend_url(proxy: &Forwarder, suffix: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    proxy
        .upstream()
        .endpoint(suffix, query)
        .ok_or(ProxyError::NotOffered(
            "--upstream-url does not end in /responses, so keyward cannot derive the backend's \
             other endpoints from it",
        ))
}

/// Sends a request to the backend with the login, refreshing and retrying once on a 401.
async fn send(
    backend: &Backend,
    proxy: &Forwarder,
    method: Method,
    target: &Uri,
    client_headers: &HeaderMap,
    body: Bytes,
    log: &mut ExchangeLog,
) -> Result<Response<UpstreamBody>, ProxyError> {
    backend
        .with_login(log, |session: Arc<Session>| {
            let mut headers = backend.upstream_headers(client_headers, &session);
            headers.remove(CONTENT_LENGTH);
            if body.is_empty() {
                headers.remove(CONTENT_TYPE);
            }
            let mut request = Request::new(Either::Right(Full::new(body.clone())));
            *request.method_mut() = method.clone();
            *request.uri_mut() = target.clone();
            *request.headers_mut() = headers;
            let timeout = proxy.limits().response_timeout;
            async move {
                match tokio::time::timeout(timeout, proxy.pool().send(request)).await {
                    Err(_) => Err(ProxyError::UpstreamTimeout(timeout)),
                    Ok(Err(err)) => Err(classify_send(err)),
                    Ok(Ok(response)) => Ok(response),
                }
            }
        })
        .await
}

/// A small answer read whole, within the idle timeout and [`MAX_MODELS`].
async fn read_answer(body: UpstreamBody, proxy: &Forwarder) -> Result<Bytes, ProxyError> {
    use http_body_util::{BodyExt, Limited};
    let read = Limited::new(body, MAX_MODELS).collect();
    match tokio::time::timeout(proxy.limits().idle_timeout, read).await {
        Err(_) => Err(ProxyError::BackendStream(
            "the backend did not finish its model list in time".into(),
        )),
        Ok(Err(err)) => Err(ProxyError::BackendStream(format!(
            "the backend's model list could not be read: {err}"
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_model_list_becomes_openai_s() {
        let codex = json!({"models": [
            {"slug": "gpt-5.1-codex", "display_name": "GPT-5.1 Codex", "priority": 1},
            {"slug": "gpt-5.1"},
            {"display_name": "no slug"}
        ]});
        assert_eq!(
            openai_model_list(&codex),
            json!({"object": "list", "data": [
                {"id": "gpt-5.1-codex", "object": "model", "created": 0, "owned_by": "openai"},
                {"id": "gpt-5.1", "object": "model", "created": 0, "owned_by": "openai"}
            ]})
        );
        assert_eq!(
            openai_model_list(&json!({})),
            json!({"object": "list", "data": []})
        );
    }
}
