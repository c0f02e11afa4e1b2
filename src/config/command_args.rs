//! The arguments of the subcommands other than `serve`, and the groups they share with it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::config::state::StateArgs;
use crate::config::values::{DEFAULT_LOGIN, StoreKind, parse_duration, parse_login_name};

/// The sign-in service keyward's logins come from.
pub const DEFAULT_ISSUER: &str = "https://auth.openai.com";

/// `keyward codex-config`.
#[derive(Debug, Clone, Args)]
pub struct CodexConfigArgs {
    /// keyward's base URL as Codex reaches it. Default: read from --server-info, else
    /// http://127.0.0.1:8080/v1.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The running keyward's --server-info file, to read its address from.
    #[arg(long, value_name = "FILE", conflicts_with = "url")]
    pub server_info: Option<PathBuf>,
    /// keyward requires client tokens: the environment variable Codex reads this user's token
    /// from (Codex's `env_key`), e.g. KEYWARD_TOKEN.
    #[arg(long, value_name = "NAME")]
    pub token_env: Option<String>,
    /// Add the settings to Codex's config.toml (replacing an earlier keyward provider) instead of
    /// printing them.
    #[arg(long)]
    pub write: bool,
    /// Codex's home. Default: $CODEX_HOME, else ~/.codex.
    #[arg(long, value_name = "DIR")]
    pub codex_home: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct UsageArgs {
    /// The ledger to read. Default: usage.jsonl in the home (--home, $KEYWARD_HOME, ~/.keyward).
    #[arg(long, value_name = "FILE")]
    pub usage_log: Option<PathBuf>,

    #[command(flatten)]
    pub home: HomeArgs,

    /// Only requests in this last span of time (e.g. 1h, 24h, 7d). Default: all.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,

    /// Group by `client`, `model` or `endpoint`.
    #[arg(long, value_name = "KEY", value_enum, default_value_t = UsageBy::Client)]
    pub by: UsageBy,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UsageBy {
    Client,
    Model,
    /// What was called: `responses.create`, `responses.retrieve`, `models.list`, ...
    Endpoint,
    /// The credential requests were sent with (`-`: keyward answered itself).
    Credential,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The client tokens file that `serve --client-tokens` reads (created 0600 if missing).
    #[arg(
        long,
        value_name = "FILE",
        env = "KEYWARD_CLIENT_TOKENS",
        global = true
    )]
    pub client_tokens: Option<PathBuf>,

    /// Change the client tokens in this state database's table instead (`serve --state URL
    /// --client-tokens state` reads them; every replica sees a change within --state-sync).
    #[command(flatten)]
    pub state: StateArgs,

    #[command(subcommand)]
    pub action: TokenAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenAction {
    /// Add a client and print its new token on stdout (shown only this once).
    Add {
        /// The client's name: letters, digits, `.`, `_`, `-`.
        name: String,
        /// A group the client is in (routes name it `@GROUP`); repeatable.
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
    },
    /// List the clients (names and creation times; tokens are not stored).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a client; its token stops working.
    Revoke { name: String },
}

/// How keyward reaches the outside: the upstream, and the sign-in service.
#[derive(Debug, Clone, Args)]
pub struct NetArgs {
    /// Reach the upstream (and the sign-in service) through this HTTP proxy (CONNECT tunnel),
    /// e.g. http://user:pass@proxy:3128. HTTP_PROXY and HTTPS_PROXY are ignored. A URL with a
    /// password belongs in the environment variable, not on the command line, which every local
    /// user can read.
    #[arg(
        long,
        value_name = "URL",
        env = "KEYWARD_UPSTREAM_PROXY",
        hide_env_values = true
    )]
    pub upstream_proxy: Option<String>,

    /// Also trust the CA certificates in this PEM file for TLS (for a private upstream or a
    /// TLS-inspecting proxy). Mozilla's root set is always trusted.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
}

/// Where the ChatGPT login lives.
#[derive(Debug, Clone, Args)]
pub struct HomeArgs {
    /// keyward's home directory (created 0700): the ChatGPT login and its lock, and the record
    /// of which client created each stored response. Default: $KEYWARD_HOME, else ~/.keyward.
    #[arg(long, value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Where the ChatGPT login is stored: `file` (login.json in the home, mode 0600) or
    /// `keyring` (the OS keyring; needs a build with the `keyring` feature).
    #[arg(long, value_name = "STORE", value_enum, default_value_t = StoreKind::File, env = "KEYWARD_STORE")]
    pub store: StoreKind,

    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Clone, Args)]
pub struct IssuerArg {
    /// The OAuth issuer of the ChatGPT sign-in.
    #[arg(long, value_name = "URL", env = "KEYWARD_ISSUER", default_value = DEFAULT_ISSUER)]
    pub issuer: String,
}

/// How `serve --auth chatgpt` presents itself to the Codex backend and adapts requests to it.
#[derive(Debug, Clone, Args)]
pub struct ChatGptArgs {
    /// With --auth chatgpt: the `originator` header sent to the backend.
    #[arg(long, value_name = "NAME", default_value = "codex_cli_rs")]
    pub originator: String,

    /// With --auth chatgpt: the `version` header (a Codex version; the backend refuses old ones
    /// for new models).
    #[arg(long, value_name = "VERSION", default_value = CODEX_VERSION)]
    pub codex_version: String,

    /// With --auth chatgpt: the `User-Agent` header. Default: `codex_cli_rs/VERSION (keyward)`.
    #[arg(long, value_name = "UA")]
    pub user_agent: Option<String>,

    /// With --auth chatgpt: the `instructions` sent when a request has none (the backend
    /// requires a non-empty string).
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "You are a helpful assistant."
    )]
    pub default_instructions: String,

    /// With --auth chatgpt: a request parameter to remove because the backend refuses it.
    /// Repeatable; giving it replaces the default list.
    #[arg(long = "drop-param", value_name = "NAME", default_values_t = vec!["max_output_tokens".to_owned()])]
    pub drop_params: Vec<String>,

    /// With --auth chatgpt: refresh the access token when it expires within this margin (also
    /// in the background while idle).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub refresh_margin: Duration,
}

/// The Codex CLI version keyward is tested with, sent as `version` by default.
pub const CODEX_VERSION: &str = "0.171.0";

#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub home: HomeArgs,

    /// The login's name: a keyward can hold several (`[credential.NAME]` in the config file uses
    /// them). Signing in again under a name replaces that login.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_LOGIN, value_parser = parse_login_name)]
    pub name: String,

    #[command(flatten)]
    pub issuer: IssuerArg,

    #[command(flatten)]
    pub net: NetArgs,

    /// Print the sign-in address without opening a browser.
    #[arg(long)]
    pub no_browser: bool,

    /// Port for the browser's callback on 127.0.0.1 (default 1455, else 1457: the only ports the
    /// sign-in service redirects to; 0 picks any free port, for tests).
    #[arg(long, value_name = "N")]
    pub callback_port: Option<u16>,

    /// Sign in with a code entered on another device (for headless servers).
    #[arg(long, conflicts_with_all = ["no_browser", "callback_port", "import_codex"])]
    pub device_code: bool,

    /// Take over the login of a Codex CLI: its auth.json, or the directory holding it (default
    /// $CODEX_HOME, else ~/.codex). That Codex must not use the login afterwards.
    #[arg(long, value_name = "PATH", num_args = 0..=1, conflicts_with_all = ["no_browser", "callback_port"])]
    pub import_codex: Option<Option<PathBuf>>,

    /// Give up if the sign-in is not completed within this time. Default: 10m for the browser,
    /// 15m (the code's lifetime) for --device-code.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// The `originator` the sign-in is made for.
    #[arg(long, value_name = "NAME", default_value = "codex_cli_rs")]
    pub originator: String,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub home: HomeArgs,

    /// Only this login. Default: every login in the home (or the state database).
    #[arg(long, value_name = "NAME", value_parser = parse_login_name)]
    pub name: Option<String>,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct LogoutArgs {
    #[command(flatten)]
    pub home: HomeArgs,

    /// The login to sign out of (its refresh token is revoked and it is deleted).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_LOGIN, value_parser = parse_login_name)]
    pub name: String,

    #[command(flatten)]
    pub issuer: IssuerArg,

    #[command(flatten)]
    pub net: NetArgs,
}

/// `keyward state ...`.
#[derive(Debug, Clone, Args)]
pub struct StateCommandArgs {
    #[command(subcommand)]
    pub action: StateAction,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum StateAction {
    /// Write a new random 32-byte key for --state-key-file to FILE (created 0600; an existing
    /// file is never overwritten).
    InitKey {
        /// Where the key goes.
        file: PathBuf,
    },
    /// Create or upgrade the state database's schema now (keyward also does it at start).
    Migrate {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Copy what a single keyward kept in its home into the state database: the login
    /// (login.json, or --store keyring; encrypted; every login of `keyward login --name`
    /// under its name) and the usage ledger (usage.jsonl, or
    /// --usage-log). The home's copies are left as they are. Importing again adds nothing twice.
    Import {
        #[command(flatten)]
        home: HomeArgs,

        /// The ledger to import. Default: usage.jsonl in the home, if there is one.
        #[arg(long, value_name = "FILE")]
        usage_log: Option<PathBuf>,

        /// The replica the imported ledger rows are filed under. Default: the host name.
        #[arg(long, value_name = "NAME")]
        replica: Option<String>,

        /// Import only the ledger (no login, so no --state-key-file needed).
        #[arg(long)]
        ledger_only: bool,
    },
}
