//! Command-line arguments, as parsed: no I/O and no validation beyond syntax.
//! [`crate::config::Config::from_args`] turns them into settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::command_args::{
    ChatGptArgs, HomeArgs, IssuerArg, LoginArgs, LogoutArgs, NetArgs, StatusArgs, TokenArgs,
    UsageArgs,
};
use crate::config::responses::ResponsesArgs;
use crate::config::values::{AuthHeader, parse_bytes, parse_duration, parse_mode};

/// `keyward --version`: the release and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KEYWARD_COMMIT"),
    ")"
);

/// keyward: hold an OpenAI credential (an API key, or a ChatGPT sign-in) so that local users and
/// tools can use the Responses API without ever seeing it.
///
/// With no subcommand, keyward runs `serve`, so it takes the same flags as
/// codex-responses-api-proxy: `printenv OPENAI_API_KEY | env -u OPENAI_API_KEY keyward --port 8080`.
/// For a ChatGPT sign-in: `keyward login`, then `keyward serve --auth chatgpt`.
#[derive(Debug, Parser)]
#[command(name = "keyward", version = VERSION, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Forward the Responses API to the upstream with the credential (the default): an API key
    /// read from stdin or --api-key-file, or with --auth chatgpt the ChatGPT login.
    Serve(Box<ServeArgs>),
    /// Sign in to ChatGPT (the Codex subscription) and store the login for `serve --auth chatgpt`.
    Login(LoginArgs),
    /// Show who is signed in and when the access token expires; exits non-zero when not signed
    /// in or when the login has ended. Never prints a token.
    Status(StatusArgs),
    /// Revoke the refresh token at the sign-in service (best effort), then delete the login.
    Logout(LogoutArgs),
    /// Manage client tokens (`serve --client-tokens`): add a named client and print its token
    /// once, list the clients, or revoke one. A running keyward picks up changes within a second.
    Token(TokenArgs),
    /// Check a --config file: print the effective settings, or what is wrong (exit 1).
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Summarise the usage ledger (`serve --usage-log`): requests and tokens by client or model.
    Usage(UsageArgs),
    /// The state database several replicas share (`--state`): make the key the login is
    /// encrypted with, create the schema, import a login from the home.
    State(crate::config::command_args::StateCommandArgs),
    /// Print the settings that point this user's Codex CLI at keyward (a provider for
    /// ~/.codex/config.toml), or with --write add them there.
    CodexConfig(crate::config::command_args::CodexConfigArgs),
    /// Print a shell completion script: `keyward completions bash > /etc/bash_completion.d/keyward`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print keyward's manual page (roff): `keyward man | man -l -`.
    Man,
}

impl Cli {
    /// The command to run: `serve` when none was named.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(Box::new(self.serve)))
    }

    /// The `serve` arguments, whether given after `serve` or on their own (`None` for the other
    /// commands).
    pub fn into_serve(self) -> Option<ServeArgs> {
        match self.into_command() {
            Command::Serve(args) => Some(*args),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Read settings from this TOML file: `serve` flags by name without the dashes
    /// (`listen = ["127.0.0.1:8080"]`, `allow-group = ["codex"]`, `[quota] default =
    /// "requests-per-minute=60"`). Flags on the command line win. SIGHUP re-reads it (the
    /// access policy, quotas and TLS files change at once; an invalid file is refused).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Port to listen on at 127.0.0.1. Without --port or --listen, an ephemeral port is chosen
    /// (see --server-info).
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,

    /// Address to listen on: 127.0.0.1:8080, [::1]:8080, or unix:/run/keyward/sock for a unix
    /// socket. Repeatable. A non-loopback address needs --client-tokens and --tls-cert/--tls-key.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,

    /// Write {"port":..,"pid":..,"listen":[..]} as one line of JSON to FILE once listening
    /// (replaced atomically; a symlink at FILE is replaced, never followed).
    #[arg(long, value_name = "FILE")]
    pub server_info: Option<PathBuf>,

    /// Serve GET /shutdown: answer 200, then shut down gracefully. Only keyward's own user,
    /// root and --admin-user may call it.
    #[arg(long)]
    pub http_shutdown: bool,

    /// Do not put keyward in its sandbox (on by default once it serves: files only where the
    /// configuration says (Landlock), only the system calls keyward makes (seccomp), no programs,
    /// no new privileges).
    #[arg(long)]
    pub no_sandbox: bool,

    /// Which credential to use: an OpenAI API key (`api-key`), or the ChatGPT login made with
    /// `keyward login` (`chatgpt`).
    #[arg(long, value_name = "KIND", value_enum, default_value_t = AuthMode::ApiKey)]
    pub auth: AuthMode,

    /// A named credential, instead of the one --auth names: `NAME:api-key-file=PATH`,
    /// `NAME:api-key-stdin=true` (one at most) or `NAME:chatgpt=LOGIN` (a `keyward login --name
    /// LOGIN`, with `,issuer=URL` if not --issuer's), with `,upstream-url=URL` and
    /// `,auth-header=api-key` if needed, and its own quotas (`,tokens-per-day=N`,
    /// `,requests-per-minute=N`, `,concurrent=N`: over one, a route's next credential is used);
    /// repeatable. In a config file: `[credential.NAME]`.
    #[arg(long = "credential", value_name = "NAME:SETTINGS")]
    pub credentials: Vec<String>,

    /// Which clients use which credentials: `CLIENT,...=CREDENTIAL,...`, clients by name,
    /// `@GROUP` or `*`; the first route that names a client decides, and a client no route names
    /// is refused. Repeatable. In a config file: `[[route]]` with `clients` and `credentials`.
    #[arg(long = "route", value_name = "CLIENTS=CREDENTIALS")]
    pub routes: Vec<String>,

    /// With --auth chatgpt: which login to use (`keyward login --name NAME`).
    #[arg(long, value_name = "NAME", default_value = crate::config::values::DEFAULT_LOGIN, value_parser = crate::config::values::parse_login_name)]
    pub login: String,

    /// Where requests are forwarded; its query string is kept (Azure's api-version). Default:
    /// https://api.openai.com/v1/responses, or with --auth chatgpt
    /// https://chatgpt.com/backend-api/codex/responses.
    #[arg(long, value_name = "URL")]
    pub upstream_url: Option<String>,

    /// How the key is sent upstream: `bearer` (Authorization: Bearer KEY) or `api-key`
    /// (api-key: KEY, for Azure OpenAI API keys).
    #[arg(long, value_name = "STYLE", value_enum, default_value_t = AuthHeader::Bearer)]
    pub auth_header: AuthHeader,

    /// Read the API key from FILE instead of stdin (for systemd's LoadCredential=).
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,

    /// Write each request and response to DIR as JSON (credentials and cookies redacted;
    /// directory 0700, files 0600). Responses are written as they stream.
    #[arg(long, value_name = "DIR")]
    pub dump_dir: Option<PathBuf>,

    /// With --dump-dir: the most body bytes written per request or response; the rest is
    /// forwarded but not written.
    #[arg(long, value_name = "BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub dump_max_body: u64,

    /// Largest request body accepted; larger ones get 413.
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub max_body: u64,

    /// Largest request head (request line and headers) accepted; larger ones get 431.
    #[arg(long, value_name = "BYTES", default_value = "64KiB", value_parser = parse_bytes)]
    pub max_headers: u64,

    /// How long a client may take to send its request headers (against slowloris); also how
    /// long an idle keep-alive connection is kept.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// How long to wait for a TCP (and proxy) connection to the upstream.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// How long to wait for the upstream's response headers (a non-streaming request may think
    /// for minutes before its answer starts).
    #[arg(long, value_name = "DURATION", default_value = "600s", value_parser = parse_duration)]
    pub response_timeout: Duration,

    /// Longest silence allowed between two chunks of a response; a stream that goes quiet longer
    /// ends with an SSE `error` event. A stream's total length is not capped.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// The most connections open at once, all users together; more are answered 503 and closed
    /// at accept. Default: what the open-file limit allows (two sockets a stream).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// The most connections one user (the uid the kernel names) may hold open; more are
    /// answered 503 and closed at accept, before any of their headers is read. 0: no cap.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections_per_user: usize,

    /// On SIGTERM, SIGINT or /shutdown: how long in-flight streams may run before keyward exits.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Worker threads, each serving its share of the connections on a runtime of its own.
    /// Default: one per CPU core.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    #[command(flatten)]
    pub access: AccessArgs,

    #[command(flatten)]
    pub operations: OperationsArgs,

    #[command(flatten)]
    pub net: NetArgs,

    #[command(flatten)]
    pub responses: ResponsesArgs,

    #[command(flatten)]
    pub home: HomeArgs,

    #[command(flatten)]
    pub replica: crate::config::state::ReplicaArgs,

    #[command(flatten)]
    pub issuer: IssuerArg,

    #[command(flatten)]
    pub chatgpt: ChatGptArgs,

    /// Log format on stderr. The level comes from RUST_LOG (default: info).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// How much log keyward holds while stderr is not being read (a stalled pipe or journald).
    /// Past it, log lines are dropped and counted (keyward_log_lines_dropped_total) rather than
    /// holding up requests; one line says how many once stderr moves again.
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = parse_bytes)]
    pub log_buffer: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Which credential `serve` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// An OpenAI API key, from stdin or --api-key-file.
    ApiKey,
    /// The ChatGPT login made with `keyward login`.
    Chatgpt,
}

/// Who may use keyward.
#[derive(Debug, Clone, Args)]
pub struct AccessArgs {
    /// Serve only this user (a name or a uid); repeatable. The user is the one the kernel says
    /// owns the connecting socket (SO_PEERCRED on unix sockets, sock_diag on loopback TCP). With
    /// no --allow-user or --allow-group, every local user is served.
    #[arg(long, value_name = "USER")]
    pub allow_user: Vec<String>,

    /// Serve the members of this group (a name or a gid; primary or supplementary, from the user
    /// database); repeatable.
    #[arg(long, value_name = "GROUP")]
    pub allow_group: Vec<String>,

    /// Also let this user (a name or a uid) call admin endpoints such as /shutdown, which are
    /// otherwise served only to keyward's own user and root; repeatable.
    #[arg(long, value_name = "USER")]
    pub admin_user: Vec<String>,

    /// Require a client token (`keyward token add`) in `Authorization: Bearer` on every
    /// request; keyward checks it and replaces it with the real credential. FILE must be 0600
    /// and owned by keyward's user. `state`: the tokens in the --state database's table, which
    /// `keyward token --state URL` changes.
    #[arg(long, value_name = "FILE", env = "KEYWARD_CLIENT_TOKENS")]
    pub client_tokens: Option<PathBuf>,

    /// Also answer requests whose Host is NAME (besides loopback names and addresses, and the
    /// addresses keyward listens on); repeatable. Other Host values are refused, against DNS
    /// rebinding.
    #[arg(long, value_name = "NAME")]
    pub allowed_host: Vec<String>,

    /// Mode of unix sockets given with --listen unix:PATH (octal).
    #[arg(long, value_name = "MODE", default_value = "660", value_parser = parse_mode)]
    pub socket_mode: u32,

    /// Group of unix sockets given with --listen unix:PATH (a name or a gid).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,

    /// TLS certificate chain (PEM) for non-loopback listeners; re-read on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for non-loopback listeners; re-read on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve non-loopback listeners over plain HTTP: client tokens, prompts and answers cross the
    /// network readable by anyone on the path. Only for a network you trust completely.
    #[arg(long)]
    pub insecure_no_tls: bool,
}

/// What keyward reports about its use, and how it limits it.
#[derive(Debug, Clone, Args)]
pub struct OperationsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics and the usage page (every client's usage,
    /// quotas, the plan) at http://ADDR/usage, on a listener of its own; give a loopback address
    /// unless they may be read from elsewhere.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// Append one JSON line per request to FILE (created 0600): time, client, model, status, how
    /// the stream ended, tokens, duration. Read back at start (its last 62 days) for the quotas
    /// and the usage views (GET /keyward/usage, GET /usage). Default with --auth chatgpt:
    /// usage.jsonl in the home.
    #[arg(long, value_name = "FILE")]
    pub usage_log: Option<PathBuf>,

    /// Keep no usage ledger, not even the default one.
    #[arg(long, conflicts_with = "usage_log")]
    pub no_usage_log: bool,

    /// How many bytes of ledger lines may wait for a slow disk. Lines are never dropped: while
    /// more than this waits, new requests are refused with 503 (`usage_ledger_behind`) until the
    /// disk catches up; requests already running finish and are recorded.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_bytes)]
    pub usage_log_buffer: u64,

    /// A quota: `CLIENT:KEY=N[,KEY=N]`, CLIENT a client (token name or user name) or `default`
    /// for every client; KEY `concurrent` (streams at once), `requests-per-minute`, or
    /// `tokens-per-day` (input + output tokens in a rolling 24 hours). Repeatable. Over a quota,
    /// requests get 429 with Retry-After; running streams are never cut.
    #[arg(long, value_name = "SPEC")]
    pub quota: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::{parse_bytes, parse_duration};
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_work_with_and_without_the_serve_subcommand() {
        let bare = Cli::try_parse_from(["keyward", "--port", "9", "--http-shutdown"]).unwrap();
        let serve =
            Cli::try_parse_from(["keyward", "serve", "--port", "9", "--http-shutdown"]).unwrap();
        for args in [bare.into_serve().unwrap(), serve.into_serve().unwrap()] {
            assert_eq!(args.port, Some(9));
            assert!(args.http_shutdown);
        }
    }

    #[test]
    fn units_parse() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_bytes("64KiB").unwrap(), 65536);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
    }
}
