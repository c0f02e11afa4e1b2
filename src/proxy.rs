//! One request, from the head the server read to the last byte relayed: the Host check, routing
//! ([`routes`]: the endpoints forwarded) and admission ([`handler`]), the header policy ([`headers`]), request and response bodies
//! ([`body`]), sending upstream with the credential and relaying back ([`forward`]), the ChatGPT
//! backend's rules ([`backend`]), dumps ([`dump`]), and the one place an error becomes a response
//! ([`error`]). Uses every room below `server`.

pub mod assemble;
pub mod backend;
pub mod body;
pub mod context;
pub mod credential;
pub mod decode;
pub mod dump;
pub mod error;
pub mod forward;
pub mod handler;
pub mod headers;
pub mod open;
pub mod pipeline;
pub mod plan;
pub mod previous;
pub mod request_body;
pub mod routes;
pub mod send;
pub mod websocket;

/// Where responses are created (POST, and GET for a WebSocket); the other endpoints are under it
/// and `/v1/models`.
pub const RESPONSES_PATH: &str = "/v1/responses";
