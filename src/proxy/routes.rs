//! The endpoints keyward forwards, read from a request's method and path: the Responses family
//! and the model list, nothing else. Ids in a path are checked to be ids (letters, digits, `_`,
//! `-`; a model's also `.` and `:`), so no path can reach anything but the endpoint it names.

use http::Method;

use crate::proxy::RESPONSES_PATH;
use crate::proxy::error::ProxyError;
use crate::telemetry::charge::Charge;

/// An endpoint of the Responses API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/responses`
    Create,
    /// `GET /v1/responses/{id}` (with `?stream=true&starting_after=N`, a background stream
    /// resumed).
    Retrieve(String),
    /// `DELETE /v1/responses/{id}`
    Delete(String),
    /// `POST /v1/responses/{id}/cancel`
    Cancel(String),
    /// `GET /v1/responses/{id}/input_items`
    InputItems(String),
    /// `POST /v1/responses/input_tokens`
    InputTokens,
    /// `POST /v1/responses/compact`
    Compact,
    /// `GET /v1/models`
    Models,
    /// `GET /v1/models/{id}`
    Model(String),
}

impl Endpoint {
    /// The endpoint `method` and `path` name. `Ok(None)`: not a Responses or models path.
    pub fn parse(method: &Method, path: &str) -> Result<Option<Endpoint>, ProxyError> {
        let wrong_method = |allow: &'static str| ProxyError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_owned(),
            allow,
        };
        let endpoint = if path == RESPONSES_PATH {
            if *method != Method::POST {
                return Err(wrong_method("POST"));
            }
            Endpoint::Create
        } else if let Some(rest) = path.strip_prefix("/v1/responses/") {
            let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
            match (id, action) {
                ("input_tokens", "") => post(method, Endpoint::InputTokens, wrong_method)?,
                ("compact", "") => post(method, Endpoint::Compact, wrong_method)?,
                (id, _) if !is_id(id, false) => return Ok(None),
                (id, "") => match *method {
                    Method::GET => Endpoint::Retrieve(id.to_owned()),
                    Method::DELETE => Endpoint::Delete(id.to_owned()),
                    _ => return Err(wrong_method("GET, DELETE")),
                },
                (id, "cancel") => post(method, Endpoint::Cancel(id.to_owned()), wrong_method)?,
                (id, "input_items") => match *method {
                    Method::GET => Endpoint::InputItems(id.to_owned()),
                    _ => return Err(wrong_method("GET")),
                },
                _ => return Ok(None),
            }
        } else if path == "/v1/models" {
            get(method, Endpoint::Models, wrong_method)?
        } else if let Some(id) = path.strip_prefix("/v1/models/") {
            if !is_id(id, true) {
                return Ok(None);
            }
            get(method, Endpoint::Model(id.to_owned()), wrong_method)?
        } else {
            return Ok(None);
        };
        Ok(Some(endpoint))
    }

    /// The path after the upstream's base (`/v1` for OpenAI): `/responses/{id}/cancel`, ...
    pub fn suffix(&self) -> String {
        match self {
            Endpoint::Create => "/responses".into(),
            Endpoint::Retrieve(id) | Endpoint::Delete(id) => format!("/responses/{id}"),
            Endpoint::Cancel(id) => format!("/responses/{id}/cancel"),
            Endpoint::InputItems(id) => format!("/responses/{id}/input_items"),
            Endpoint::InputTokens => "/responses/input_tokens".into(),
            Endpoint::Compact => "/responses/compact".into(),
            Endpoint::Models => "/models".into(),
            Endpoint::Model(id) => format!("/models/{id}"),
        }
    }

    /// The stored response this request uses, which only its creator may.
    pub fn stored_response(&self) -> Option<&str> {
        match self {
            Endpoint::Retrieve(id)
            | Endpoint::Delete(id)
            | Endpoint::Cancel(id)
            | Endpoint::InputItems(id) => Some(id),
            _ => None,
        }
    }

    /// Its name in logs and the ledger, as the SDKs name the method.
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::Create => "responses.create",
            Endpoint::Retrieve(_) => "responses.retrieve",
            Endpoint::Delete(_) => "responses.delete",
            Endpoint::Cancel(_) => "responses.cancel",
            Endpoint::InputItems(_) => "responses.input_items",
            Endpoint::InputTokens => "responses.input_tokens",
            Endpoint::Compact => "responses.compact",
            Endpoint::Models => "models.list",
            Endpoint::Model(_) => "models.retrieve",
        }
    }

    pub fn charge(&self) -> Charge {
        match self {
            Endpoint::Create | Endpoint::Compact => Charge::Generated,
            Endpoint::Retrieve(_) | Endpoint::Cancel(_) => Charge::StoredOnce,
            _ => Charge::Free,
        }
    }
}

fn post(
    method: &Method,
    endpoint: Endpoint,
    wrong: impl Fn(&'static str) -> ProxyError,
) -> Result<Endpoint, ProxyError> {
    if *method == Method::POST {
        Ok(endpoint)
    } else {
        Err(wrong("POST"))
    }
}

fn get(
    method: &Method,
    endpoint: Endpoint,
    wrong: impl Fn(&'static str) -> ProxyError,
) -> Result<Endpoint, ProxyError> {
    if *method == Method::GET {
        Ok(endpoint)
    } else {
        Err(wrong("GET"))
    }
}

/// An id as the API makes them: `resp_...`, `gpt-5.1`, `ft:gpt-4o:org::id`.
fn is_id(id: &str, model: bool) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && !id.starts_with('.')
        && id.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || b == b'_'
                || b == b'-'
                || (model && (b == b'.' || b == b':'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, path: &str) -> Option<Endpoint> {
        Endpoint::parse(&method, path).unwrap()
    }

    #[test]
    fn each_endpoint_is_read_and_nothing_else() {
        let id = || "resp_1".to_owned();
        assert_eq!(parse(Method::POST, "/v1/responses"), Some(Endpoint::Create));
        assert_eq!(
            parse(Method::GET, "/v1/responses/resp_1"),
            Some(Endpoint::Retrieve(id()))
        );
        assert_eq!(
            parse(Method::DELETE, "/v1/responses/resp_1"),
            Some(Endpoint::Delete(id()))
        );
        assert_eq!(
            parse(Method::POST, "/v1/responses/resp_1/cancel"),
            Some(Endpoint::Cancel(id()))
        );
        assert_eq!(
            parse(Method::GET, "/v1/responses/resp_1/input_items"),
            Some(Endpoint::InputItems(id()))
        );
        assert_eq!(
            parse(Method::POST, "/v1/responses/input_tokens"),
            Some(Endpoint::InputTokens)
        );
        assert_eq!(
            parse(Method::POST, "/v1/responses/compact"),
            Some(Endpoint::Compact)
        );
        assert_eq!(parse(Method::GET, "/v1/models"), Some(Endpoint::Models));
        assert_eq!(
            parse(Method::GET, "/v1/models/ft:gpt-4o:org::x1.2"),
            Some(Endpoint::Model("ft:gpt-4o:org::x1.2".into()))
        );
        for path in [
            "/v1/files",
            "/v1/responses/resp_1/other",
            "/v1/responses/../files",
            "/v1/responses/%2e%2e",
            "/v1/responses/a/b/c",
            "/v1/models/../files",
            "/v1/chat/completions",
        ] {
            assert_eq!(parse(Method::GET, path), None, "{path}");
        }
        let err = Endpoint::parse(&Method::PUT, "/v1/responses/resp_1").unwrap_err();
        assert!(matches!(
            err,
            ProxyError::MethodNotAllowed {
                allow: "GET, DELETE",
                ..
            }
        ));
    }
}
