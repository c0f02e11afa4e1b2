//! The credential keyward adds: an API key in its header, or the ChatGPT login through the
//! Codex backend's rules.

use std::sync::Arc;

use http::HeaderName;

use crate::proxy::backend::Backend;
use crate::secret::SecretHeader;

/// The credential keyward adds to forwarded requests.
#[derive(Clone)]
pub enum Credential {
    /// An API key, sent in `header` (`Authorization` or Azure's `api-key`).
    ApiKey {
        header: HeaderName,
        value: SecretHeader,
    },
    /// The ChatGPT login, sent to the Codex backend.
    ChatGpt(Arc<Backend>),
}

impl Credential {
    /// The ChatGPT backend, with a ChatGPT login.
    pub fn chatgpt(&self) -> Option<&Arc<Backend>> {
        match self {
            Credential::ChatGpt(backend) => Some(backend),
            Credential::ApiKey { .. } => None,
        }
    }

    /// `api_key` or `chatgpt`, for health reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::ApiKey { .. } => "api_key",
            Credential::ChatGpt(_) => "chatgpt",
        }
    }
}
