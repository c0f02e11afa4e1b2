//! keyward: a credential-isolating proxy for the OpenAI Responses API.
//!
//! A privileged user runs keyward with the credential; local users and tools send their
//! Responses requests to it on loopback, and keyward forwards them with the credential added.
//!
//! # Layout
//!
//! The code is in layers: top-level modules, each a folder with a front file saying what it
//! owns. Lowest first:
//!
//! | module | owns |
//! |---|---|
//! | [`secret`] | secret types (locked, zeroized, never printed), private files, process hardening |
//! | [`config`] | arguments, the config file, and the validated [`config::Config`] |
//! | [`upstream`] | connections to the upstream and the sign-in service: pool, TLS, proxy tunnel |
//! | [`credential`] | the API key and the ChatGPT login: stores, issuer client, token manager |
//! | [`access`] | who the peer is (kernel-checked), whether it may come in, client tokens, who owns each response |
//! | [`telemetry`] | what was used: a request's account, the log, metrics, ledger, usage scanning, quotas |
//! | [`state`] | what replicas share in PostgreSQL (`--state`): ledger, owners, client tokens, quota counts, the sync |
//! | [`proxy`] | one request through the pipeline (below) |
//! | [`server`] | listeners, worker threads, shutdown and reload, server TLS |
//! | [`cli`] | the subcommands: `serve`, `login`, `status`, `logout`, `token`, `usage`, `check-config` |
//!
//! Rules (checked by `tests/all/layout.rs`, so they survive later work):
//! - A module uses only layers above it in this table (`server → proxy → state → telemetry →
//!   access → credential → upstream → config → secret`), never one below: `credential` and `telemetry`
//!   never import `proxy` or `server`; `upstream` imports neither.
//! - Inside a folder, files import each other without a circle, the front file included: what
//!   the front file and its children share lives in a child (`config/error.rs`).
//! - No source file is longer than 400 lines outside its tests.
//! - `pub` where another module (or a test) needs it; the rest `pub(crate)` or private.
//!
//! # One request, from accept to ledger line
//!
//! 1. **Accept** ([`server::worker`], [`server::listen`]): a worker thread accepts the
//!    connection; the kernel names its user ([`access::peer`]) and the policy decides once
//!    ([`access::gate`]).
//! 2. **Admit** ([`proxy::handler`]): the Host check, the route ([`proxy::routes`]), the client
//!    token ([`access::clients`]), the ledger's health and the quotas ([`telemetry::quota`]). A
//!    [`proxy::context::Context`] is made here and goes through every later phase.
//! 3. **Choose the credential** ([`proxy::credential::Credential`]) and what the endpoint
//!    becomes with it ([`proxy::plan::Plan`]): sent as it came (an API key), adapted to the
//!    ChatGPT backend ([`proxy::backend`]), or answered from the backend's model list.
//! 4. **Build** ([`proxy::pipeline`]): the body streamed as it arrives ([`proxy::request_body`])
//!    or read whole; the headers by one policy for every path ([`proxy::headers`]) plus the
//!    credential's.
//! 5. **Send** ([`proxy::send`]): one timeout and error classification, one 401
//!    refresh-and-retry, for HTTP requests and WebSocket handshakes alike.
//! 6. **Relay** ([`proxy::forward::Forwarder::relay`], [`proxy::body::RelayBody`]): each chunk
//!    to the client as it arrives, read on the way for usage and for the created response's id
//!    ([`access::ownership`]). A WebSocket relays messages instead ([`proxy::websocket`]), each
//!    `response.create` a turn with a context of its own.
//! 7. **Account** ([`proxy::context::Context::finish`]): what the request is charged
//!    ([`telemetry::charge`]), the response recorded as its client's, then the log line, the
//!    metrics, the ledger line and the quota counts ([`telemetry::account`]).
//!
//! An error in any phase becomes the client's answer in one place ([`proxy::error`]), and is
//! accounted for like any answer.

pub mod access;
pub mod cli;
pub mod config;
pub mod credential;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod upstream;
