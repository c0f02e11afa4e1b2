//! Every way a request can fail, and the one place each becomes an HTTP response.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::credential::chatgpt::tokens::AuthError;
use crate::proxy::body::ProxyBody;
use crate::proxy::decode::DecodeError;
use crate::upstream::BoxError;

/// Why keyward answered a request itself instead of relaying the upstream's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for {path}")]
    NotFound { path: String },
    #[error("{path} is not forwarded")]
    Forbidden { path: String, why: &'static str },
    #[error(
        "keyward has no credential for client `{client}`: no route names it (--route, or \
         [[route]] in the config file)"
    )]
    NoRoute { client: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        method: String,
        path: String,
        /// The methods the path takes, for `Allow`.
        allow: &'static str,
    },
    #[error("response {id} was not created by this client, or is unknown to keyward")]
    UnknownResponse { id: String },
    #[error("previous response {id} was not created by this client, or is unknown to keyward")]
    UnknownPrevious { id: String },
    #[error("{0}")]
    NotOffered(&'static str),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("request headers larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("the request body could not be read: {0}")]
    BadRequestBody(#[source] hyper::Error),
    #[error("could not connect to the upstream: {0}")]
    UpstreamUnreachable(#[source] BoxError),
    #[error("connecting to the upstream timed out")]
    UpstreamConnectTimeout(#[source] BoxError),
    #[error("the upstream sent no response headers within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("the upstream request failed: {0}")]
    UpstreamFailed(#[source] BoxError),
    #[error("the request body was sent upstream already and cannot be sent again")]
    BodyGone,
    #[error("no usable ChatGPT login: {0}")]
    Auth(#[source] AuthError),
    #[error("{0}")]
    BadJson(String),
    #[error("the request body could not be read: {0}")]
    ClientBody(String),
    #[error("{0}")]
    BackendStream(String),
    /// The access policy refused the connection's user, or could not find it.
    #[error("{0}")]
    AccessDenied(String),
    /// A web page's request (Origin, Sec-Fetch-Site) or a foreign Host.
    #[error("{0}")]
    Browser(String),
    #[error("{0}")]
    NotAdmin(String),
    #[error("{0}")]
    ClientToken(&'static str),
    #[error("a WebSocket upgrade without its handshake headers")]
    NotWebSocket,
    #[error("the usage ledger is behind: its disk is not keeping up")]
    LedgerBehind,
    #[error("keyward keeps no usage")]
    UsageNotKept,
    #[error("client {client} is over its {} quota", exceeded.quota)]
    QuotaExceeded {
        client: String,
        exceeded: crate::telemetry::quota::Exceeded,
    },
    #[error("credential {credential} is over its {} quota", exceeded.quota)]
    CredentialQuota {
        credential: String,
        exceeded: crate::telemetry::quota::Exceeded,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NotFound { .. } => StatusCode::NOT_FOUND,
            ProxyError::Forbidden { .. } | ProxyError::NoRoute { .. } => StatusCode::FORBIDDEN,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::UnknownResponse { .. }
            | ProxyError::NotOffered(_)
            | ProxyError::UsageNotKept => StatusCode::NOT_FOUND,
            ProxyError::UnknownPrevious { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Decode(DecodeError::Unsupported(_)) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProxyError::Decode(DecodeError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Decode(DecodeError::Invalid { .. }) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadRequestBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::UpstreamUnreachable(_) | ProxyError::UpstreamFailed(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamConnectTimeout(_) | ProxyError::UpstreamTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Auth(_) | ProxyError::LedgerBehind => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadJson(_) | ProxyError::ClientBody(_) | ProxyError::NotWebSocket => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::BackendStream(_) | ProxyError::BodyGone => StatusCode::BAD_GATEWAY,
            ProxyError::AccessDenied(_) | ProxyError::Browser(_) | ProxyError::NotAdmin(_) => {
                StatusCode::FORBIDDEN
            }
            ProxyError::ClientToken(_) => StatusCode::UNAUTHORIZED,
            ProxyError::QuotaExceeded { .. } | ProxyError::CredentialQuota { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
        }
    }

    /// The machine-readable `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NotFound { .. } => "not_found",
            ProxyError::Forbidden { .. } => "not_forwarded",
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::UnknownResponse { .. } => "response_not_found",
            ProxyError::UnknownPrevious { .. } => "previous_response_not_found",
            ProxyError::NotOffered(_) => "not_offered_by_chatgpt_backend",
            ProxyError::Decode(DecodeError::Unsupported(_)) => "unsupported_content_encoding",
            ProxyError::Decode(DecodeError::TooLarge(_)) => "request_too_large",
            ProxyError::Decode(DecodeError::Invalid { .. }) => "bad_request_body",
            ProxyError::BodyTooLarge { .. } => "request_too_large",
            ProxyError::HeadersTooLarge { .. } => "request_headers_too_large",
            ProxyError::BadRequestBody(_) => "bad_request_body",
            ProxyError::UpstreamUnreachable(_) => "upstream_unreachable",
            ProxyError::UpstreamConnectTimeout(_) => "upstream_connect_timeout",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::UpstreamFailed(_) => "upstream_error",
            ProxyError::Auth(err) => err.code(),
            ProxyError::BadJson(_) => "invalid_json",
            ProxyError::ClientBody(_) => "bad_request_body",
            ProxyError::BackendStream(_) => "upstream_stream_error",
            ProxyError::BodyGone => "upstream_error",
            ProxyError::AccessDenied(_) => "access_denied",
            ProxyError::Browser(_) => "browser_request_refused",
            ProxyError::NotAdmin(_) => "admin_only",
            ProxyError::ClientToken(_) => "invalid_client_token",
            ProxyError::QuotaExceeded { .. } | ProxyError::CredentialQuota { .. } => {
                "rate_limit_exceeded"
            }
            ProxyError::LedgerBehind => "usage_ledger_behind",
            ProxyError::UsageNotKept => "usage_not_kept",
            ProxyError::NotWebSocket => "bad_websocket_handshake",
        }
    }

    /// What the client is told: enough to act on, no internal detail (that goes to the log).
    pub fn client_message(&self) -> String {
        match self {
            ProxyError::NotFound { .. } => {
                "keyward serves the Responses API under /v1/responses, /v1/models, GET /healthz, \
                 GET /readyz, GET /keyward/usage (and GET /shutdown when enabled)"
                    .into()
            }
            ProxyError::Forbidden { why, .. } => (*why).into(),
            ProxyError::NoRoute { .. } => self.to_string(),
            ProxyError::MethodNotAllowed { allow, path, .. } => {
                format!("use {allow} for {path}")
            }
            // The API's own answer for an id it does not know: nothing tells another client's
            // response from one that does not exist.
            ProxyError::UnknownResponse { id } => format!("Response with id '{id}' not found."),
            ProxyError::UnknownPrevious { id } => {
                format!("Previous response with id '{id}' not found.")
            }
            ProxyError::NotOffered(why) => (*why).into(),
            ProxyError::Decode(DecodeError::Unsupported(encoding)) => format!(
                "keyward cannot read a request body with Content-Encoding `{encoding}` (it must, \
                 to apply the ChatGPT backend's rules); send it plain, or with gzip, deflate or \
                 zstd"
            ),
            ProxyError::Decode(DecodeError::TooLarge(limit)) => format!(
                "the request body is larger than keyward's limit of {limit} bytes (--max-body) \
                 once decoded"
            ),
            ProxyError::Decode(err) => err.to_string(),
            ProxyError::BodyTooLarge { limit } => format!(
                "the request body is larger than keyward's limit of {limit} bytes (--max-body)"
            ),
            ProxyError::HeadersTooLarge { limit } => format!(
                "the request headers are larger than keyward's limit of {limit} bytes (--max-headers)"
            ),
            ProxyError::BadRequestBody(_) => "the request body could not be read".into(),
            ProxyError::UpstreamUnreachable(_) => {
                "keyward could not reach the upstream API; see keyward's log for the cause".into()
            }
            ProxyError::UpstreamConnectTimeout(_) => {
                "connecting to the upstream API timed out (--connect-timeout)".into()
            }
            ProxyError::UpstreamTimeout(after) => format!(
                "the upstream API did not start answering within {}s (--response-timeout)",
                after.as_secs()
            ),
            ProxyError::UpstreamFailed(_) => {
                "the request to the upstream API failed; see keyward's log for the cause".into()
            }
            ProxyError::Auth(AuthError::Store(_)) => {
                "keyward could not read its ChatGPT login; see keyward's log for the cause".into()
            }
            ProxyError::Auth(err) => err.to_string(),
            ProxyError::BadJson(why) => why.clone(),
            ProxyError::ClientBody(_) => "the request body could not be read".into(),
            ProxyError::BackendStream(why) => why.clone(),
            ProxyError::BodyGone => self.to_string(),
            ProxyError::AccessDenied(why)
            | ProxyError::Browser(why)
            | ProxyError::NotAdmin(why) => why.clone(),
            ProxyError::ClientToken(why) => (*why).into(),
            ProxyError::NotWebSocket => {
                "a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13".into()
            }
            ProxyError::LedgerBehind => {
                "keyward's usage ledger is behind (its disk is not keeping up), so keyward takes no \
                 new requests for now; retry in a second"
                    .into()
            }
            ProxyError::UsageNotKept => {
                "keyward keeps no usage here: its operator turns it on with --usage-log (or \
                 --metrics-listen, --quota, --config, --state)"
                    .into()
            }
            ProxyError::QuotaExceeded { client, exceeded } => format!(
                "keyward quota reached for client `{client}`: {}",
                at_most(exceeded)
            ),
            ProxyError::CredentialQuota {
                credential,
                exceeded,
            } => format!(
                "keyward quota reached for the credential `{credential}` your requests are sent \
                 with: {}",
                at_most(exceeded)
            ),
        }
    }

    /// `type` in OpenAI's error shape.
    fn kind(&self) -> &'static str {
        if self.status().is_server_error() {
            "keyward_upstream_error"
        } else {
            "invalid_request_error"
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        // The API's own answers for ids it does not know, to the letter.
        let api_answer = match self {
            ProxyError::UnknownResponse { .. } => Some((None, None)),
            ProxyError::UnknownPrevious { .. } => {
                Some((Some("previous_response_id"), Some(self.code())))
            }
            _ => None,
        };
        if let Some((param, code)) = api_answer {
            let body = serde_json::json!({
                "error": {
                    "message": self.client_message(),
                    "type": "invalid_request_error",
                    "param": param,
                    "code": code,
                }
            });
            return json_response(self.status(), &body);
        }
        let mut response = error_response(
            self.status(),
            self.kind(),
            self.code(),
            &self.client_message(),
        );
        match self {
            ProxyError::MethodNotAllowed { allow, .. } => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ProxyError::ClientToken(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"keyward\""),
                );
            }
            ProxyError::LedgerBehind => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            ProxyError::QuotaExceeded { exceeded, .. }
            | ProxyError::CredentialQuota { exceeded, .. } => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(&exceeded.retry_after)),
                );
            }
            _ => {}
        }
        response
    }
}

/// What a quota allows, and when to retry.
fn at_most(exceeded: &crate::telemetry::quota::Exceeded) -> String {
    let what = match exceeded.quota {
        "concurrent" => "streams at once",
        "requests_per_minute" => "requests per minute",
        _ => "tokens in 24 hours",
    };
    format!(
        "at most {} {what}; retry in {}s",
        exceeded.limit,
        retry_after_secs(&exceeded.retry_after)
    )
}

/// Whole seconds, rounded up, at least 1.
fn retry_after_secs(after: &Duration) -> u64 {
    (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1)
}

/// A JSON error in OpenAI's shape: `{"error":{"message","type","code","param"}}`.
pub fn error_response(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: &str,
) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "code": code, "param": null }
    });
    json_response(status, &body)
}

pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Sorts a failed upstream call into the error the client sees.
pub fn classify_upstream(err: hyper_util::client::legacy::Error) -> ProxyError {
    if err.is_connect() {
        classify_connect(Box::new(err))
    } else {
        ProxyError::UpstreamFailed(Box::new(err))
    }
}

/// The same for a worker's own upstream connections.
pub fn classify_send(err: crate::upstream::SendError) -> ProxyError {
    match err {
        crate::upstream::SendError::Connect(err) => classify_connect(err),
        crate::upstream::SendError::Http(err) => ProxyError::UpstreamFailed(Box::new(err)),
    }
}

/// A connection that could not be made: timed out, or refused / unreachable.
fn classify_connect(err: BoxError) -> ProxyError {
    let timed_out = std::iter::successors(Some(&*err as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || e.to_string().contains("timed out")
    });
    if timed_out {
        ProxyError::UpstreamConnectTimeout(err)
    } else {
        ProxyError::UpstreamUnreachable(err)
    }
}
