//! What the operator asked for: the command line ([`args`], [`command_args`], [`values`]), the
//! `--config` file ([`file`]), and the validated settings the rest of keyward takes ([`Config`],
//! built from [`args::ServeArgs`]), including the access policy ([`access`]) and the quotas
//! ([`quota`]) as configured. Uses only `secret`; every other layer may use it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderValue;

pub mod access;
pub mod args;
pub mod command_args;
pub mod credentials;
mod error;
pub mod file;
pub mod quota;
pub mod responses;
mod sandbox;
pub mod state;
mod upstream;
pub mod values;

pub use crate::config::access::ClientTokenSource;
use crate::config::access::{HostCheck, Policy};
use crate::config::args::{AuthMode, LogFormat, ServeArgs};
pub use crate::config::error::{AccessConfigError, ConfigError};
use crate::config::quota::QuotaConfig;
use crate::config::responses::{Endpoints, Ownership};
use crate::config::upstream::parse_upstream;
pub use crate::config::upstream::{Upstream, UpstreamProxy, parse_proxy};
use crate::config::values::{AuthHeader, KeySource, StoreKind};

pub const OPENAI_UPSTREAM: &str = "https://api.openai.com/v1/responses";
pub const CHATGPT_UPSTREAM: &str = "https://chatgpt.com/backend-api/codex/responses";

/// Request and time limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body: u64,
    pub max_headers: usize,
    pub header_timeout: Duration,
    /// `None`: sized from the open-file limit at start.
    pub max_connections: Option<usize>,
    pub max_connections_per_user: usize,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl Limits {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
}

#[derive(Debug, Clone)]
pub struct DumpConfig {
    pub dir: PathBuf,
    pub max_body: u64,
}

/// Which credential keyward adds, and where it comes from.
#[derive(Debug, Clone)]
pub enum CredentialConfig {
    ApiKey {
        source: KeySource,
        header: AuthHeader,
    },
    ChatGpt(Box<ChatGptConfig>),
}

/// `serve --auth chatgpt`: the login's home and how requests are adapted to the Codex backend.
#[derive(Debug, Clone)]
pub struct ChatGptConfig {
    pub home: PathBuf,
    /// Which login in the home (`keyward login --name`).
    pub login: String,
    pub store: StoreKind,
    pub issuer: String,
    pub originator: HeaderValue,
    pub version: HeaderValue,
    pub user_agent: HeaderValue,
    pub default_instructions: String,
    pub drop_params: Vec<String>,
    pub refresh_margin: Duration,
}

impl ChatGptConfig {
    /// Where the login lives: the home, or its `logins/NAME`.
    pub fn login_dir(&self) -> PathBuf {
        values::login_dir(&self.home, &self.login)
    }
}

/// A unix socket to listen on (`--listen unix:PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixListen {
    pub path: PathBuf,
    pub mode: u32,
    pub group: Option<u32>,
}

/// Who may use keyward, and how they prove it.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    pub policy: Policy,
    pub client_tokens: Option<ClientTokenSource>,
    pub hosts: HostCheck,
}

/// The certificate for non-loopback listeners.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// TCP addresses; non-loopback ones only with client tokens.
    pub listen: Vec<SocketAddr>,
    /// `listen` is the default (127.0.0.1, any port): no --listen or --port was given. Sockets
    /// systemd hands over replace `listen` and `unix` either way.
    pub listen_implicit: bool,
    /// `--insecure-no-tls`: a non-loopback listener without TLS is allowed.
    pub insecure_no_tls: bool,
    pub unix: Vec<UnixListen>,
    pub access: AccessConfig,
    /// TLS for the non-loopback addresses in `listen`.
    pub tls: Option<TlsConfig>,
    pub metrics_listen: Option<SocketAddr>,
    pub usage_log: Option<PathBuf>,
    /// Ledger bytes that may wait for the disk before requests are refused.
    pub usage_log_buffer: u64,
    pub quotas: QuotaConfig,
    /// `--state`: what this replica shares with the others.
    pub state: Option<state::SharedState>,
    /// The --config file the settings came from, if any.
    pub config_file: Option<PathBuf>,
    pub server_info: Option<PathBuf>,
    pub http_shutdown: bool,
    pub upstream: Upstream,
    /// What is forwarded: the Responses family, or create alone.
    pub endpoints: Endpoints,
    /// The record of who created each response, when stored responses are served.
    pub ownership: Option<Ownership>,
    /// The credential `--auth` names; with `--credential`, the settings its logins share (or
    /// its first key, when it has no login).
    pub credential: CredentialConfig,
    /// `--credential`: named credentials that replace `credential`, and the routes that give
    /// each client one. Empty: `credential` serves every client.
    pub credentials: Vec<credentials::CredentialSpec>,
    pub routes: Vec<credentials::RouteSpec>,
    pub dump: Option<DumpConfig>,
    pub limits: Limits,
    pub upstream_proxy: Option<UpstreamProxy>,
    pub upstream_ca: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Worker threads serving connections.
    pub threads: usize,
}

impl Config {
    pub fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        let mut listen = Vec::new();
        if let Some(port) = args.port {
            listen.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
        let access = &args.access;
        let socket_group = access
            .socket_group
            .as_deref()
            .map(crate::config::access::resolve_group)
            .transpose()?;
        let mut unix = Vec::new();
        for text in &args.listen {
            if let Some(path) = text.strip_prefix("unix:") {
                if path.is_empty() {
                    return Err(ConfigError::BadListen(text.clone()));
                }
                unix.push(UnixListen {
                    path: PathBuf::from(path),
                    mode: access.socket_mode,
                    group: socket_group,
                });
                continue;
            }
            let addr: SocketAddr = text
                .parse()
                .map_err(|_| ConfigError::BadListen(text.clone()))?;
            if !addr.ip().is_loopback() {
                if access.client_tokens.is_none() {
                    return Err(ConfigError::NotLoopback(addr));
                }
                if access.tls_cert.is_none() && !access.insecure_no_tls {
                    return Err(ConfigError::NoTls(addr));
                }
            }
            listen.push(addr);
        }
        let listen_implicit = listen.is_empty() && unix.is_empty();
        if listen_implicit {
            listen.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
        }
        let tls = match (&access.tls_cert, &access.tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };

        for (flag, value) in [
            ("header-timeout", args.header_timeout),
            ("connect-timeout", args.connect_timeout),
            ("response-timeout", args.response_timeout),
            ("idle-timeout", args.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero { flag });
            }
        }
        if args.max_body == 0 {
            return Err(ConfigError::Zero { flag: "max-body" });
        }
        if args.threads == Some(0) {
            return Err(ConfigError::Zero { flag: "threads" });
        }

        let ops = &args.operations;
        let metrics_listen = ops
            .metrics_listen
            .as_deref()
            .map(|text| {
                text.parse::<SocketAddr>()
                    .map_err(|_| ConfigError::BadMetricsListen(text.to_owned()))
            })
            .transpose()?;
        let mut quotas = QuotaConfig::default();
        for spec in &ops.quota {
            quotas.add_spec(spec).map_err(ConfigError::Quota)?;
        }
        let (credentials, routes) = credentials::settings(&args.credentials, &args.routes)?;
        for credential in credentials.iter().filter(|c| !c.quota.is_empty()) {
            quotas
                .credentials
                .insert(credential.name.clone(), credential.quota);
        }
        let logins = credentials
            .iter()
            .any(|c| matches!(c.source, credentials::Source::Login { .. }));
        let keys = credentials.iter().find_map(|c| match &c.source {
            credentials::Source::Key { key, header } => Some((key, *header)),
            credentials::Source::Login { .. } => None,
        });
        let credential = match args.auth {
            // With --credential: the settings its logins share, or its first key.
            _ if logins => CredentialConfig::ChatGpt(Box::new(chatgpt_config(args)?)),
            _ if let Some((key, header)) = keys => CredentialConfig::ApiKey {
                source: key.clone(),
                header,
            },
            AuthMode::ApiKey => CredentialConfig::ApiKey {
                source: match &args.api_key_file {
                    Some(path) => KeySource::File(path.clone()),
                    None => KeySource::Stdin,
                },
                header: args.auth_header,
            },
            AuthMode::Chatgpt => CredentialConfig::ChatGpt(Box::new(chatgpt_config(args)?)),
        };
        let shared = state::SharedState::for_serve(
            &args.home.state,
            &args.replica,
            args.home.home.as_deref(),
            !ops.no_usage_log,
        )?;
        let client_tokens =
            access::client_token_source(access.client_tokens.as_deref(), shared.is_some())?;
        let (endpoints, ownership) = responses::settings(
            &args.responses,
            args.home.home.as_deref(),
            matches!(credential, CredentialConfig::ApiKey { .. }) || keys.is_some(),
        )?;
        let usage_log = match (&ops.usage_log, &credential) {
            _ if ops.no_usage_log => None,
            (Some(path), _) => Some(path.clone()),
            (None, CredentialConfig::ChatGpt(chatgpt)) => Some(chatgpt.home.join("usage.jsonl")),
            (None, CredentialConfig::ApiKey { .. }) => None,
        };

        Ok(Self {
            config_file: args.config.clone(),
            metrics_listen,
            usage_log,
            usage_log_buffer: ops.usage_log_buffer,
            quotas,
            state: shared,
            access: AccessConfig {
                policy: Policy::resolve(
                    &access.allow_user,
                    &access.allow_group,
                    &access.admin_user,
                )?,
                client_tokens,
                hosts: HostCheck::new(&access.allowed_host, &listen),
            },
            tls,
            listen,
            listen_implicit,
            insecure_no_tls: access.insecure_no_tls,
            unix,
            server_info: args.server_info.clone(),
            http_shutdown: args.http_shutdown,
            upstream: parse_upstream(args.upstream_url.as_deref().unwrap_or(match args.auth {
                AuthMode::ApiKey => OPENAI_UPSTREAM,
                AuthMode::Chatgpt => CHATGPT_UPSTREAM,
            }))?,
            endpoints,
            ownership,
            credential,
            credentials,
            routes,
            dump: args.dump_dir.as_ref().map(|dir| DumpConfig {
                dir: dir.clone(),
                max_body: args.dump_max_body,
            }),
            limits: Limits {
                max_body: args.max_body,
                max_headers: usize::try_from(args.max_headers).unwrap_or(usize::MAX),
                header_timeout: args.header_timeout,
                max_connections: args.max_connections,
                max_connections_per_user: args.max_connections_per_user,
                connect_timeout: args.connect_timeout,
                response_timeout: args.response_timeout,
                idle_timeout: args.idle_timeout,
                shutdown_grace: args.shutdown_grace,
            },
            upstream_proxy: args
                .net
                .upstream_proxy
                .as_deref()
                .map(parse_proxy)
                .transpose()?,
            upstream_ca: args.net.upstream_ca.clone(),
            log_format: args.log_format,
            threads: args.threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
        })
    }
}

fn chatgpt_config(args: &ServeArgs) -> Result<ChatGptConfig, ConfigError> {
    if args.api_key_file.is_some() {
        return Err(ConfigError::Conflict(
            "--api-key-file has no use with --auth chatgpt",
        ));
    }
    let header = |flag: &'static str, value: &str| {
        HeaderValue::from_str(value).map_err(|_| ConfigError::BadHeader { flag })
    };
    let chatgpt = &args.chatgpt;
    let user_agent = chatgpt.user_agent.clone().unwrap_or_else(|| {
        format!(
            "{}/{} (keyward {})",
            chatgpt.originator,
            chatgpt.codex_version,
            env!("CARGO_PKG_VERSION")
        )
    });
    if chatgpt.default_instructions.trim().is_empty() {
        return Err(ConfigError::Conflict(
            "--default-instructions must not be empty: the backend requires instructions",
        ));
    }
    Ok(ChatGptConfig {
        home: values::home_dir(args.home.home.as_deref())
            .ok_or_else(|| ConfigError::Home(values::NO_HOME.into()))?,
        login: args.login.clone(),
        store: args.home.store,
        issuer: args.issuer.issuer.trim_end_matches('/').to_owned(),
        originator: header("originator", &chatgpt.originator)?,
        version: header("codex-version", &chatgpt.codex_version)?,
        user_agent: header("user-agent", &user_agent)?,
        default_instructions: chatgpt.default_instructions.clone(),
        drop_params: chatgpt.drop_params.clone(),
        refresh_margin: chatgpt.refresh_margin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::args::Cli;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let cli =
            Cli::try_parse_from(std::iter::once("keyward").chain(args.iter().copied())).unwrap();
        Config::from_args(&cli.into_serve().unwrap())
    }

    #[test]
    fn defaults_listen_on_an_ephemeral_loopback_port() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:0".parse().unwrap()]);
        assert_eq!(c.upstream.uri, "https://api.openai.com/v1/responses");
        assert!(matches!(
            c.credential,
            CredentialConfig::ApiKey {
                source: KeySource::Stdin,
                ..
            }
        ));
    }

    #[test]
    fn port_and_listen_combine_and_ipv6_loopback_works() {
        let c = config(&["--port", "8080", "--listen", "[::1]:9090"]).unwrap();
        assert_eq!(
            c.listen,
            vec![
                "127.0.0.1:8080".parse().unwrap(),
                "[::1]:9090".parse().unwrap()
            ]
        );
    }

    #[test]
    fn non_loopback_is_refused_with_the_reason() {
        for addr in ["0.0.0.0:8080", "[::]:8080", "192.168.1.2:80"] {
            let msg = config(&["--listen", addr]).unwrap_err().to_string();
            assert!(msg.contains("not a loopback address"), "{msg}");
        }
        assert!(config(&["--listen", "localhost"]).is_err());
    }

    #[test]
    fn upstream_query_is_kept() {
        let c = config(&[
            "--upstream-url",
            "https://x.openai.azure.com/openai/v1/responses?api-version=preview",
        ])
        .unwrap();
        assert_eq!(c.upstream.uri.query(), Some("api-version=preview"));
        assert_eq!(c.upstream.authority.as_str(), "x.openai.azure.com");
        assert!(config(&["--upstream-url", "ftp://x/y"]).is_err());
        assert!(config(&["--upstream-url", "not a url"]).is_err());
    }

    #[test]
    fn proxy_credentials_become_a_redacted_basic_header() {
        let c = config(&[
            "--upstream-proxy",
            "http://al%40ice:s3cret@proxy.local:3128",
        ])
        .unwrap();
        let proxy = c.upstream_proxy.unwrap();
        assert_eq!(proxy.uri, "http://proxy.local:3128/");
        assert_eq!(
            proxy.authorization.as_ref().unwrap(),
            "Basic YWxAaWNlOnMzY3JldA=="
        );
        assert!(!format!("{proxy:?}").contains("Basic"));
        assert!(config(&["--upstream-proxy", "https://proxy:3128"]).is_err());
    }
}
