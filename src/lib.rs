//! keyward: a credential-isolating proxy for the OpenAI Responses API.
//!
//! A privileged user runs keyward with the credential; local users and tools send their
//! Responses requests to it on loopback, and keyward forwards them with the credential added.
//!
//! # Layout
//!
//! The code lives in rooms (top-level modules), each a folder with a front file saying what it
//! owns. Lowest first:
//!
//! | room | owns |
//! |---|---|
//! | [`secret`] | secret types (locked, zeroized, never printed) and process hardening |
//! | [`config`] | arguments, the config file, and the validated [`config::Config`] |
//! | [`upstream`] | connections to the upstream and the sign-in service: pool, TLS, proxy tunnel |
//! | [`credential`] | the API key and the ChatGPT login: stores, issuer client, token manager |
//! | [`access`] | who the peer is (kernel-checked), whether it may come in, client tokens |
//! | [`telemetry`] | what was used: request log, metrics, ledger, usage scanning, quotas |
//! | [`proxy`] | one request: routing, admission, header policy, bodies, errors, ChatGPT adaptation, dumps |
//! | [`server`] | listeners, worker threads, shutdown and reload, server TLS |
//! | [`cli`] | the subcommands: `serve`, `login`, `status`, `logout`, `token`, `usage`, `check-config` |
//!
//! Rules (checked by `tests/all/layout.rs`, so they survive later work):
//! - A room uses only rooms above it in this table (`server → proxy → telemetry → access →
//!   credential → upstream → config → secret`), never one below: `credential` and `telemetry`
//!   never import `proxy` or `server`; `upstream` imports neither.
//! - Inside a folder, files import each other without a circle. A folder's front file declares
//!   its files and may re-export from them.
//! - No source file is longer than 400 lines outside its tests.
//! - `pub` where another room (or a test) needs it; the rest `pub(crate)` or private.

pub mod access;
pub mod cli;
pub mod config;
pub mod credential;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod upstream;
