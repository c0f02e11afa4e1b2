//! One request, from the head the server read to the last byte relayed, through one pipeline
//! ([`pipeline`]): the admit phase ([`handler`]: Host check, routing by [`routes`], policy,
//! client token, quota), the credential and its plan ([`credential`], [`plan`], the ChatGPT
//! backend's rules in [`backend`]), building the upstream request (the header policy in
//! [`headers`], bodies in [`request_body`], [`decode`] and [`body`]), sending ([`send`]),
//! relaying ([`forward`], [`websocket`]) and accounting ([`context`]); dumps ([`dump`]) and the
//! one place an error becomes a response ([`error`]). Uses every layer below `server`.

pub mod assemble;
pub mod backend;
pub mod body;
pub mod context;
pub mod credential;
pub mod credentials;
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
