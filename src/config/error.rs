//! How a configuration can be wrong: the errors every part of `config` returns, in a file of
//! their own so the front file and its children share them without importing each other.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("`{0}` is not an address such as 127.0.0.1:8080, [::1]:8080 or unix:/run/keyward.sock")]
    BadListen(String),
    #[error("--metrics-listen `{0}` is not an address such as 127.0.0.1:9464")]
    BadMetricsListen(String),
    #[error(
        "refusing to listen on {0}: it is not a loopback address, so other hosts could spend the \
         credential. Listen on 127.0.0.1 or [::1] (and reach it from elsewhere through an SSH \
         tunnel), or require client tokens with --client-tokens FILE"
    )]
    NotLoopback(SocketAddr),
    #[error(
        "refusing to listen on {0} without TLS: client tokens and prompts would cross the network \
         in the clear. Give --tls-cert and --tls-key, or --insecure-no-tls on a network you trust"
    )]
    NoTls(SocketAddr),
    #[error(transparent)]
    Access(#[from] AccessConfigError),
    #[error("{0}")]
    Quota(String),
    #[error("--upstream-url `{url}` is not usable: {why}")]
    BadUpstream { url: String, why: String },
    #[error("--state: {0}")]
    BadState(String),
    #[error("--upstream-proxy is not usable: {0}")]
    BadProxy(String),
    #[error("--{flag} must be greater than zero")]
    Zero { flag: &'static str },
    #[error("{0}")]
    Conflict(&'static str),
    #[error("--{flag} is not a valid HTTP header value")]
    BadHeader { flag: &'static str },
    #[error("{0}")]
    Home(String),
    #[error("{0}")]
    BadCredential(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AccessConfigError {
    #[error("there is no user named `{0}` on this host (--{1})")]
    NoSuchUser(String, &'static str),
    #[error("there is no group named `{0}` on this host (--allow-group)")]
    NoSuchGroup(String),
    #[error("the user database could not be read: {0}")]
    Database(String),
}
