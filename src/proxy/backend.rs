//! The ChatGPT backend's rules: what each endpoint becomes there, the headers a login adds, and
//! how a request is adapted. The backend is stricter than the public API: `store` is forced to
//! false, `instructions` supplied, refused parameters dropped, and a stream always requested; a
//! client that asked for no stream gets the final response object as JSON, assembled from the
//! stream as it passes ([`crate::proxy::assemble`]). Its model list is answered in the OpenAI
//! shape; it keeps no stored responses and counts no input tokens, so those endpoints get a 404
//! that says so. Sending is the pipeline's ([`crate::proxy::pipeline`]).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Map, Value, json};

use crate::config::{ChatGptConfig, Upstream};
use crate::credential::chatgpt::tokens::{AuthError, Session, TokenManager};
use crate::proxy::error::ProxyError;
use crate::proxy::plan::Plan;
use crate::proxy::routes::Endpoint;

const CHATGPT_ACCOUNT_ID: HeaderName = HeaderName::from_static("chatgpt-account-id");
const FEDRAMP: HeaderName = HeaderName::from_static("x-openai-fedramp");
const ORIGINATOR: HeaderName = HeaderName::from_static("originator");
const VERSION: HeaderName = HeaderName::from_static("version");

const NO_STORED_RESPONSES: &str = "the ChatGPT backend keeps no stored responses (store is \
    always false there), so there is nothing to retrieve, cancel, delete or list; serve with an \
    API key (--auth api-key) for stored responses";
const NO_INPUT_TOKENS: &str = "the ChatGPT backend does not count input tokens; serve with an \
    API key (--auth api-key) for POST /v1/responses/input_tokens";

/// The ChatGPT credential and the backend's rules.
pub struct Backend {
    pub tokens: Arc<TokenManager>,
    config: ChatGptConfig,
    /// What the ledger and the metrics call this credential.
    pub(crate) name: Arc<str>,
    /// The backend's Responses URL.
    pub(crate) upstream: Upstream,
}

impl Backend {
    /// The login `tokens` keeps, sending to `upstream`; `name` is what the ledger calls it.
    pub fn new(
        tokens: Arc<TokenManager>,
        config: ChatGptConfig,
        upstream: Upstream,
        name: Arc<str>,
    ) -> Self {
        Self {
            tokens,
            config,
            name,
            upstream,
        }
    }

    /// Where the login lives (its plan usage is written there).
    pub fn login_dir(&self) -> std::path::PathBuf {
        self.config.login_dir()
    }

    /// What `endpoint` becomes at the backend.
    pub(crate) fn plan(&self, endpoint: &Endpoint, client: &HeaderMap) -> Result<Plan, ProxyError> {
        let upstream = &self.upstream;
        let url = |suffix: &str, query: Option<&str>| {
            upstream.endpoint(suffix, query).ok_or(ProxyError::NotOffered(
                "--upstream-url does not end in /responses, so keyward cannot derive the backend's \
                 other endpoints from it",
            ))
        };
        Ok(match endpoint {
            Endpoint::Create => Plan::Adapted(upstream.uri.clone()),
            Endpoint::Compact => Plan::Whole(url("/responses/compact", None)?),
            Endpoint::Models | Endpoint::Model(_) => Plan::Models {
                uri: url("/models", Some(&self.models_query(client)))?,
                id: match endpoint {
                    Endpoint::Model(id) => Some(id.clone()),
                    _ => None,
                },
            },
            Endpoint::InputTokens => return Err(ProxyError::NotOffered(NO_INPUT_TOKENS)),
            _ => return Err(ProxyError::NotOffered(NO_STORED_RESPONSES)),
        })
    }

    /// `client_version=V` for the model list: the version keyward tells the backend of.
    fn models_query(&self, client: &HeaderMap) -> String {
        let version = self.client_version(client);
        format!(
            "client_version={}",
            url::form_urlencoded::byte_serialize(version.as_bytes()).collect::<String>()
        )
    }

    /// The request body for create as the backend accepts it, and whether the client asked for
    /// a stream.
    pub(crate) fn adapt(&self, body: &[u8]) -> Result<(Bytes, bool), ProxyError> {
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
        self.apply_rules(&mut request);
        let bytes = serde_json::to_vec(&request).map_err(|e| ProxyError::BadJson(e.to_string()))?;
        Ok((Bytes::from(bytes), wants_stream))
    }

    /// The login's headers on a request the header policy made from the client's (`client`):
    /// its access token and account. A Codex CLI's `originator`, `version` and `User-Agent`
    /// pass on as they are (the backend judges a model's availability by them); other clients
    /// get the configured ones.
    pub(crate) fn authorize(&self, headers: &mut HeaderMap, client: &HeaderMap, session: &Session) {
        headers.insert(header::AUTHORIZATION, session.authorization.expose());
        headers.insert(CHATGPT_ACCOUNT_ID, session.account_id.clone());
        if session.fedramp {
            headers.insert(FEDRAMP, HeaderValue::from_static("true"));
        }
        let codex = client.contains_key(ORIGINATOR) && client.contains_key(VERSION);
        if !codex {
            headers.insert(ORIGINATOR, self.config.originator.clone());
            headers.insert(VERSION, self.config.version.clone());
            headers.insert(header::USER_AGENT, self.config.user_agent.clone());
        } else if !client.contains_key(header::USER_AGENT) {
            headers.insert(header::USER_AGENT, self.config.user_agent.clone());
        }
    }

    /// The Codex version the backend is told of: a Codex CLI's own, else `--codex-version`.
    fn client_version(&self, client_headers: &HeaderMap) -> String {
        let codex = client_headers.contains_key(ORIGINATOR);
        client_headers
            .get(VERSION)
            .filter(|_| codex)
            .unwrap_or(&self.config.version)
            .to_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The backend's rules for one `response.create` message on a WebSocket: `store: false`,
    /// instructions supplied, refused parameters dropped (a socket has no `stream` flag).
    pub(crate) fn adapt_ws_message(&self, message: &[u8]) -> Option<Vec<u8>> {
        let mut request: Map<String, Value> = match serde_json::from_slice(message) {
            Ok(Value::Object(map)) => map,
            _ => return None,
        };
        self.apply_rules(&mut request);
        serde_json::to_vec(&request).ok()
    }

    /// What the backend insists on in every request: nothing stored, instructions present, the
    /// parameters it refuses gone.
    fn apply_rules(&self, request: &mut Map<String, Value>) {
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
    }
}

/// The answer to `GET /v1/models` (`id` None) or `/v1/models/{id}` from the backend's answer to
/// its model list: its error as it gave it, the list in the OpenAI shape, the one model, or a
/// 404 in the API's words.
pub(crate) fn models_answer(
    status: StatusCode,
    body: &[u8],
    id: Option<&str>,
) -> (StatusCode, Value) {
    let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if !status.is_success() {
        return (status, answer);
    }
    let list = openai_model_list(&answer);
    let Some(id) = id else {
        return (StatusCode::OK, list);
    };
    let found = list["data"]
        .as_array()
        .and_then(|models| models.iter().find(|m| m["id"] == id));
    match found {
        Some(model) => (StatusCode::OK, model.clone()),
        None => (
            StatusCode::NOT_FOUND,
            json!({"error": {
                "message": format!("The model '{id}' does not exist or you do not have access to it."),
                "type": "invalid_request_error",
                "param": null,
                "code": "model_not_found",
            }}),
        ),
    }
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

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::NotSignedIn { .. } => "chatgpt_not_signed_in",
            AuthError::Dead { .. } => "chatgpt_login_expired",
            AuthError::RefreshFailed(_) => "chatgpt_refresh_failed",
            AuthError::Store(_) => "chatgpt_login_unreadable",
            AuthError::SharedUnreachable(_) => "state_database_unreachable",
        }
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
