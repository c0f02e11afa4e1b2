//! Command-line arguments, as parsed: no I/O and no validation beyond syntax.
//! [`crate::config::Config::from_args`] turns them into settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::api_key::AuthHeader;

/// keyward: hold an OpenAI credential so that local users and tools can use the Responses API
/// without ever seeing it.
///
/// With no subcommand, keyward runs `serve`, so it takes the same flags as
/// codex-responses-api-proxy: `printenv OPENAI_API_KEY | env -u OPENAI_API_KEY keyward --port 8080`.
#[derive(Debug, Parser)]
#[command(name = "keyward", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read the API key, then forward POST /v1/responses to the upstream with it (the default).
    Serve(ServeArgs),
}

impl Cli {
    /// The `serve` arguments, whether given after `serve` or on their own.
    pub fn into_serve(self) -> ServeArgs {
        match self.command {
            Some(Command::Serve(args)) => args,
            None => self.serve,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Port to listen on at 127.0.0.1. Without --port or --listen, an ephemeral port is chosen
    /// (see --server-info).
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,

    /// Address to listen on, such as 127.0.0.1:8080 or [::1]:8080. Repeatable. Only loopback
    /// addresses are accepted: keyward does not authenticate clients yet.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,

    /// Write {"port":..,"pid":..,"listen":[..]} as one line of JSON to FILE once listening
    /// (replaced atomically; a symlink at FILE is replaced, never followed).
    #[arg(long, value_name = "FILE")]
    pub server_info: Option<PathBuf>,

    /// Serve GET /shutdown: answer 200, then shut down gracefully.
    #[arg(long)]
    pub http_shutdown: bool,

    /// Where requests are forwarded. Its query string is kept (Azure's api-version).
    #[arg(
        long,
        value_name = "URL",
        default_value = "https://api.openai.com/v1/responses"
    )]
    pub upstream_url: String,

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

    /// On SIGTERM, SIGINT or /shutdown: how long in-flight streams may run before keyward exits.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Reach the upstream through this HTTP proxy (CONNECT tunnel), e.g.
    /// http://user:pass@proxy:3128. HTTP_PROXY and HTTPS_PROXY are ignored. A URL with a
    /// password belongs in the environment variable, not on the command line, which every local
    /// user can read.
    #[arg(
        long,
        value_name = "URL",
        env = "KEYWARD_UPSTREAM_PROXY",
        hide_env_values = true
    )]
    pub upstream_proxy: Option<String>,

    /// Also trust the CA certificates in this PEM file for the upstream's TLS (for a private
    /// upstream or a TLS-inspecting proxy). Mozilla's root set is always trusted.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,

    /// Log format on stderr. The level comes from RUST_LOG (default: info).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `90`, `90s`, `1500ms`, `5m`, `1h`. A bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 30s, 1500ms, 5m or 1h"))?;
    let duration = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use ms, s, m or h"
            ));
        }
    };
    Ok(duration)
}

/// `1048576`, `64KiB`, `64MiB`, `1GiB` (also `KB`/`MB`/`GB` and `K`/`M`/`G`, all powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 65536, 64KiB or 64MiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
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
        for args in [bare.into_serve(), serve.into_serve()] {
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
