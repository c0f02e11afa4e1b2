//! keyward's integration tests: one binary, each test with its own keyward and fake upstream on
//! 127.0.0.1:0.

// A test that finds something wrong panics; that is its job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod access;
mod accounting;
mod bench_floor;
mod canary;
mod chatgpt;
mod compressed;
mod contrib;
mod dump;
mod e2e;
mod forwarding;
mod hardening;
mod headers;
mod layout;
mod lifecycle;
mod logins;
mod operations;
mod readme;
mod replicas;
mod responses_api;
mod routes;
mod routes_websocket;
mod sandbox;
mod shared_state;
mod systemd;
mod upstream;
mod usage;
mod usage_page;
mod websocket;
