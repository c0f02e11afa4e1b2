//! The operator's one-shot commands: `keyward token` (client tokens), `check-config` and
//! `usage` (the ledger summed).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::access::clients::TokenFile;
use crate::cli::commands::when;
use crate::config::command_args::{TokenAction, TokenArgs, UsageArgs, UsageBy};
use crate::credential::chatgpt::home::Home;

/// `keyward token add|list|revoke`.
pub fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let Some(path) = &args.client_tokens else {
        anyhow::bail!(
            "which client tokens file? Pass --client-tokens FILE or set KEYWARD_CLIENT_TOKENS \
             (the file `serve --client-tokens` reads)"
        );
    };
    let file = TokenFile::new(path.clone());
    let mut out = std::io::stdout();
    match &args.action {
        TokenAction::Add { name } => {
            let token = file.add(name)?;
            // The token alone on stdout, so that it can be captured; the advice on stderr.
            writeln!(out, "{}", token.expose())?;
            eprintln!(
                "Added client `{name}` to {}. This is the only time the token is shown: give it \
                 to the client, which sends it as `Authorization: Bearer <token>` (for the Codex \
                 CLI, in the environment variable its provider's env_key names).",
                path.display()
            );
        }
        TokenAction::List { json } => {
            let clients = file.list()?;
            if *json {
                writeln!(out, "{}", serde_json::to_string(&clients)?)?;
            } else if clients.is_empty() {
                writeln!(out, "No clients in {}.", path.display())?;
            } else {
                writeln!(out, "{:<32} CREATED", "NAME")?;
                for client in clients {
                    let created = i64::try_from(client.created).unwrap_or(i64::MAX);
                    writeln!(out, "{:<32} {}", client.name, when(created))?;
                }
            }
        }
        TokenAction::Revoke { name } => {
            file.revoke(name)?;
            writeln!(
                out,
                "Revoked client `{name}`; a running keyward refuses its token within a second."
            )?;
        }
    }
    Ok(())
}

/// `keyward check-config FILE`.
pub fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let source = crate::config::file::ConfigSource {
        path: file.to_owned(),
        argv: vec!["keyward".into(), "serve".into()],
    };
    let cli = <crate::config::args::Cli as clap::Parser>::try_parse_from(source.merged()?)
        .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.to_string().trim()))?;
    let args = cli
        .into_serve()
        .context("the file does not describe `keyward serve`")?;
    let config = crate::config::Config::from_args(&args)?;
    writeln!(std::io::stdout(), "{config:#?}")?;
    eprintln!(
        "{} is valid; the effective settings are above.",
        file.display()
    );
    Ok(())
}

/// One row of `keyward usage`.
#[derive(Debug, Default, serde::Serialize)]
struct UsageRow {
    key: String,
    requests: u64,
    errors: u64,
    input_tokens: u64,
    cached_input_tokens: u64,
    output_tokens: u64,
    reasoning_tokens: u64,
}

/// `keyward usage`.
pub fn usage(args: &UsageArgs) -> anyhow::Result<()> {
    let path = match &args.usage_log {
        Some(path) => path.clone(),
        None => Home::resolve(args.home.home.as_deref())?.join("usage.jsonl"),
    };
    let since = args.since.map_or(0.0, |span| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
            - span.as_secs_f64()
    });
    if !path.exists() {
        anyhow::bail!(
            "there is no usage ledger at {}: keyward serve writes one with --usage-log FILE (and \
             by default in the home with --auth chatgpt)",
            path.display()
        );
    }
    let mut rows: std::collections::BTreeMap<String, UsageRow> = Default::default();
    crate::telemetry::ledger::read_since(&path, since, |entry| {
        let key = match args.by {
            UsageBy::Client => entry.client,
            UsageBy::Model => entry.model.unwrap_or_else(|| "-".into()),
            UsageBy::Endpoint => entry.endpoint,
        };
        let row = rows.entry(key.clone()).or_insert_with(|| UsageRow {
            key,
            ..UsageRow::default()
        });
        row.requests += 1;
        row.errors += u64::from(entry.status >= 400 || entry.end != "completed");
        row.input_tokens += entry.input_tokens;
        row.cached_input_tokens += entry.cached_input_tokens;
        row.output_tokens += entry.output_tokens;
        row.reasoning_tokens += entry.reasoning_tokens;
    })?;
    let mut out = std::io::stdout();
    let rows: Vec<UsageRow> = rows.into_values().collect();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&rows)?)?;
        return Ok(());
    }
    let by = match args.by {
        UsageBy::Client => "CLIENT",
        UsageBy::Model => "MODEL",
        UsageBy::Endpoint => "ENDPOINT",
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
        writeln!(out, "(no requests in {})", path.display())?;
    }
    Ok(())
}
