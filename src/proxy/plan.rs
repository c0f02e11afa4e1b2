//! What a request to an endpoint becomes upstream, as the credential decides
//! ([`crate::proxy::credential::Credential::plan`]) and the pipeline carries out.

use http::Uri;

/// What a request to an endpoint becomes upstream, as the credential decides.
pub enum Plan {
    /// Sent as it came (method, headers, body streamed) to `uri`.
    AsItCame(Uri),
    /// The ChatGPT backend's create: the body read, decoded and adapted to its rules, a stream
    /// always asked for; a client that asked for none gets the response assembled.
    Adapted(Uri),
    /// The body read whole and sent as it came (the backend's compaction).
    Whole(Uri),
    /// The backend's model list, answered in the OpenAI list shape (one model with an id).
    Models { uri: Uri, id: Option<String> },
}
