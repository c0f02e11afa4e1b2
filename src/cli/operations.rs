//! The operator's one-shot commands: `keyward token` (client tokens), `check-config` and
//! `usage` (the ledger summed).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::access::token_store::{TokenFile, TokenStore};
use crate::cli::commands::when;
use crate::config::command_args::{TokenAction, TokenArgs, UsageArgs, UsageBy};
use crate::credential::chatgpt::home::Home;
use crate::state::clients::SharedClients;
use crate::telemetry::ledger_sum::{GroupBy, Summer};
use crate::upstream::state_db::StateDb;

/// `keyward token add|list|revoke`: in the file, or with `--state` in the database's table.
pub fn token(args: &TokenArgs) -> anyhow::Result<()> {
    if let Some(config) = crate::config::state::settings(&args.state)? {
        if args.client_tokens.is_some() {
            anyhow::bail!(
                "give either --client-tokens FILE or --state URL, not both (KEYWARD_CLIENT_TOKENS \
                 may be set in the environment)"
            );
        }
        return shared_token(args, &config);
    }
    let Some(path) = &args.client_tokens else {
        anyhow::bail!(
            "which client tokens? Pass --client-tokens FILE or set KEYWARD_CLIENT_TOKENS (the \
             file `serve --client-tokens` reads), or --state URL for the state database's table"
        );
    };
    token_in(&TokenFile::new(path.clone()), &args.action)
}

/// `keyward token --state ...`.
fn shared_token(
    args: &TokenArgs,
    config: &crate::config::state::StateConfig,
) -> anyhow::Result<()> {
    let db = StateDb::open(config)?;
    db.block_on(db.migrate())?;
    token_in(&SharedClients::new(db), &args.action)
}

/// One `keyward token` action on the tokens in `store`.
fn token_in<S: TokenStore>(store: &S, action: &TokenAction) -> anyhow::Result<()> {
    let place = store.describe();
    match action {
        TokenAction::Add { name, groups } => print_added(name, &store.add(name, groups)?, &place),
        TokenAction::List { json } => print_clients(&store.list()?, *json, &place),
        TokenAction::Revoke { name } => {
            store.revoke(name)?;
            print_revoked(name)
        }
    }
}

fn print_added(name: &str, token: &crate::secret::SecretString, place: &str) -> anyhow::Result<()> {
    // The token alone on stdout, so that it can be captured; the advice on stderr.
    writeln!(std::io::stdout(), "{}", token.expose())?;
    eprintln!(
        "Added client `{name}` to {place}. This is the only time the token is shown: give it to \
         the client, which sends it as `Authorization: Bearer <token>` (for the Codex CLI, in the \
         environment variable its provider's env_key names)."
    );
    Ok(())
}

fn print_clients(
    clients: &[crate::access::clients::Client],
    json: bool,
    place: &str,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    if json {
        writeln!(out, "{}", serde_json::to_string(clients)?)?;
    } else if clients.is_empty() {
        writeln!(out, "No clients in {place}.")?;
    } else {
        writeln!(out, "{:<32} {:<30} GROUPS", "NAME", "CREATED")?;
        for client in clients {
            let created = i64::try_from(client.created).unwrap_or(i64::MAX);
            let groups = if client.groups.is_empty() {
                "-".to_owned()
            } else {
                client.groups.join(",")
            };
            writeln!(out, "{:<32} {:<30} {groups}", client.name, when(created))?;
        }
    }
    Ok(())
}

fn print_revoked(name: &str) -> anyhow::Result<()> {
    writeln!(
        std::io::stdout(),
        "Revoked client `{name}`; a running keyward refuses its token within a second (with \
         --state, within its --state-sync)."
    )?;
    Ok(())
}

/// `keyward check-config FILE`.
pub fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let source = crate::config::file::ConfigSource {
        path: file.to_owned(),
        argv: vec!["keyward".into(), "serve".into()],
    };
    let args = source.serve_args()?;
    let config =
        crate::config::Config::from_args(&args).with_context(|| format!("{}", file.display()))?;
    write!(std::io::stdout(), "{}", summary(&config))?;
    eprintln!(
        "{} is valid; the settings keyward would serve with are above.",
        file.display()
    );
    Ok(())
}

/// Each `--credential` and who uses it, for `check-config`: `plan (the ChatGPT login team, to
/// https://…): alice, @codex; key (an API key from /etc/…, to https://…): alice, @codex, every
/// client`, clients in route order.
fn credentials_summary(config: &crate::config::Config) -> String {
    use crate::config::credentials::Source;
    config
        .credentials
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let what = match &spec.source {
                Source::Key { key, .. } => format!("an API key from {key}"),
                Source::Login { login, .. } => format!("the ChatGPT login {login}"),
            };
            let users: Vec<String> = config
                .routes
                .iter()
                .filter(|route| route.credentials.contains(&index))
                .flat_map(|route| route.clients.iter().map(ToString::to_string))
                .collect();
            let users = if users.is_empty() {
                "no route uses it".to_owned()
            } else {
                users.join(", ")
            };
            format!("{} ({what}, to {}): {users}", spec.name, spec.upstream.uri)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The settings as `keyward check-config` shows them: one line each, in words.
fn summary(config: &crate::config::Config) -> String {
    use crate::config::{ClientTokenSource, CredentialConfig};
    let or_none = |value: Option<String>| value.unwrap_or_else(|| "none".into());
    let mut listen: Vec<String> = config.listen.iter().map(ToString::to_string).collect();
    listen.extend(
        config
            .unix
            .iter()
            .map(|u| format!("unix:{} (mode {:o})", u.path.display(), u.mode)),
    );
    let tokens = match &config.access.client_tokens {
        Some(ClientTokenSource::File(path)) => format!("required, from {}", path.display()),
        Some(ClientTokenSource::State) => "required, from the state database".into(),
        None => "not required".into(),
    };
    let credential = match &config.credential {
        _ if !config.credentials.is_empty() => credentials_summary(config),
        CredentialConfig::ApiKey { source, .. } => format!("an API key, from {source}"),
        CredentialConfig::ChatGpt(chatgpt) => {
            format!("the ChatGPT login in {}", chatgpt.home.display())
        }
    };
    let limits = |l: &crate::config::quota::Limits| {
        let mut parts = Vec::new();
        if let Some(n) = l.concurrent {
            parts.push(format!("concurrent={n}"));
        }
        if let Some(n) = l.requests_per_minute {
            parts.push(format!("requests-per-minute={n}"));
        }
        if let Some(n) = l.tokens_per_day {
            parts.push(format!("tokens-per-day={n}"));
        }
        parts.join(",")
    };
    let mut quotas: Vec<String> = config
        .quotas
        .clients
        .iter()
        .map(|(client, l)| format!("{client}: {}", limits(l)))
        .chain(
            config
                .quotas
                .credentials
                .iter()
                .map(|(name, l)| format!("credential {name}: {}", limits(l))),
        )
        .collect();
    quotas.sort();
    if !config.quotas.default.is_empty() {
        quotas.insert(0, format!("default: {}", limits(&config.quotas.default)));
    }
    let l = &config.limits;
    let lines = [
        ("listen", listen.join(", ")),
        (
            "access",
            config
                .access
                .policy
                .describe(config.access.client_tokens.is_some()),
        ),
        ("client tokens", tokens),
        (
            "TLS",
            or_none(
                config
                    .tls
                    .as_ref()
                    .map(|t| format!("certificate {}, key {}", t.cert.display(), t.key.display())),
            ),
        ),
        ("credential", credential),
        (
            "upstream",
            if config.credentials.is_empty() {
                config.upstream.uri.to_string()
            } else {
                "each credential's (above)".into()
            },
        ),
        (
            "metrics and usage page",
            or_none(
                config
                    .metrics_listen
                    .map(|a| format!("http://{a}/metrics, /usage")),
            ),
        ),
        (
            "usage ledger",
            or_none(config.usage_log.as_ref().map(|p| p.display().to_string())),
        ),
        (
            "quotas",
            if quotas.is_empty() {
                "none".into()
            } else {
                quotas.join("; ")
            },
        ),
        (
            "state database",
            or_none(config.state.as_ref().map(|s| {
                let mut url = url::Url::parse(&s.db.url).ok();
                if let Some(url) = &mut url {
                    // A password written into the URL is never shown.
                    let _ = url.set_password(None);
                }
                let url = url.map_or_else(|| "(not a URL)".into(), String::from);
                format!("{url} (replica {}, sync every {:?})", s.replica, s.sync)
            })),
        ),
        (
            "limits",
            format!(
                "body {} bytes, headers {} bytes, {} connections per user, upstream answer within \
                 {:?}, silent at most {:?}",
                l.max_body,
                l.max_headers,
                l.max_connections_per_user,
                l.response_timeout,
                l.idle_timeout
            ),
        ),
    ];
    lines
        .iter()
        .map(|(name, value)| format!("{name:>23}: {value}\n"))
        .collect()
}

/// `keyward usage`: the ledger file, or with `--state` the database's table.
pub fn usage(args: &UsageArgs) -> anyhow::Result<()> {
    let since = args.since.map_or(0.0, |span| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
            - span.as_secs_f64()
    });
    let by = match args.by {
        UsageBy::Client => GroupBy::Client,
        UsageBy::Model => GroupBy::Model,
        UsageBy::Endpoint => GroupBy::Endpoint,
        UsageBy::Credential => GroupBy::Credential,
    };
    let (rows, place) = match crate::config::state::settings(&args.home.state)? {
        Some(config) => {
            let db = StateDb::open(&config)?;
            db.block_on(db.migrate())?;
            let rows = db.block_on(crate::state::ledger::from_table(&db, by, since))?;
            (rows, format!("the state database {}", db.url()))
        }
        None => {
            let path = match &args.usage_log {
                Some(path) => path.clone(),
                None => Home::resolve(args.home.home.as_deref())?.join("usage.jsonl"),
            };
            if !path.exists() {
                anyhow::bail!(
                    "there is no usage ledger at {}: keyward serve writes one with --usage-log \
                     FILE (and by default in the home with --auth chatgpt); with --state, give \
                     --state URL to read the database's",
                    path.display()
                );
            }
            let mut summer = Summer::default();
            crate::telemetry::ledger::read_since(&path, since, |entry| summer.add(by, entry))?;
            (summer.rows(), path.display().to_string())
        }
    };
    let mut out = std::io::stdout();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&rows)?)?;
        return Ok(());
    }
    let by = match args.by {
        UsageBy::Client => "CLIENT",
        UsageBy::Model => "MODEL",
        UsageBy::Endpoint => "ENDPOINT",
        UsageBy::Credential => "CREDENTIAL",
    };
    writeln!(
        out,
        "{by:<24} {:>9} {:>7} {:>13} {:>13} {:>13} {:>13}",
        "REQUESTS", "ERRORS", "INPUT", "CACHED", "OUTPUT", "REASONING"
    )?;
    for row in &rows {
        writeln!(
            out,
            "{:<24} {:>9} {:>7} {:>13} {:>13} {:>13} {:>13}",
            row.key,
            row.requests,
            row.errors,
            row.input_tokens,
            row.cached_input_tokens,
            row.output_tokens,
            row.reasoning_tokens
        )?;
    }
    if rows.is_empty() {
        writeln!(out, "(no requests in {place})")?;
    }
    Ok(())
}

/// `keyward completions SHELL`: the completion script, on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut command = crate::config::args::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "keyward", &mut script);
    print_all(&script)
}

/// `keyward man`: the manual page, in roff, on stdout.
pub fn man() -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut page = Vec::new();
    clap_mangen::Man::new(crate::config::args::Cli::command()).render(&mut page)?;
    print_all(&page)
}

/// Writes `text` to stdout; a reader that stopped early (`| head`) is not an error.
fn print_all(text: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(err.into()),
        _ => Ok(()),
    }
}
