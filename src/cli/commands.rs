//! `keyward login`, `status`, `logout` and `token`: what they print and how they exit.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::json;

use crate::access::clients::TokenFile;
use crate::config::command_args::{
    HomeArgs, LoginArgs, LogoutArgs, NetArgs, StatusArgs, TokenAction, TokenArgs, UsageArgs,
    UsageBy,
};
use crate::config::{Limits, UpstreamProxy};
use crate::credential::chatgpt::home::Home;
use crate::credential::chatgpt::issuer::Issuer;
use crate::credential::chatgpt::login::{self, BrowserOptions};
use crate::credential::chatgpt::record::{Login, now};
use crate::credential::chatgpt::store::{self, LoginStore};
use crate::credential::chatgpt::{codex_import, device};
use crate::upstream::ClientSettings;

fn open_store(args: &HomeArgs) -> anyhow::Result<(Home, std::sync::Arc<dyn LoginStore>)> {
    let home = Home::open(&Home::resolve(args.home.as_deref())?)?;
    let store = store::open(args.store, &home)?;
    Ok((home, store))
}

fn issuer(url: &str, net: &NetArgs) -> anyhow::Result<Issuer> {
    let proxy: Option<UpstreamProxy> = net
        .upstream_proxy
        .as_deref()
        .map(crate::config::parse_proxy)
        .transpose()?;
    let settings = ClientSettings {
        connect_timeout: Limits::DEFAULT_CONNECT_TIMEOUT,
        proxy,
        extra_ca: net.upstream_ca.clone(),
    };
    Ok(Issuer::new(url.trim_end_matches('/'), &settings)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

/// `keyward login`.
pub fn login(args: &LoginArgs) -> anyhow::Result<()> {
    let (home, store) = open_store(&args.home)?;
    let mut out = std::io::stdout();
    let (login, imported_from) = match &args.import_codex {
        Some(path) => {
            let path = codex_import::codex_auth_path(path.as_deref()).context(
                "no Codex home: pass --import-codex PATH (HOME and CODEX_HOME are not set)",
            )?;
            (codex_import::import_codex(&path)?, Some(path))
        }
        None => {
            let issuer = issuer(&args.issuer.issuer, &args.net)?;
            let flow = async {
                if args.device_code {
                    let timeout = args.timeout.unwrap_or(Duration::from_secs(15 * 60));
                    device::device(&issuer, timeout, &mut out).await
                } else {
                    let options = BrowserOptions {
                        callback_port: args.callback_port,
                        open_browser: !args.no_browser,
                        timeout: args.timeout.unwrap_or(Duration::from_secs(10 * 60)),
                        originator: args.originator.clone(),
                    };
                    login::browser(&issuer, &options, &mut out).await
                }
            };
            (runtime()?.block_on(flow)?, None)
        }
    };

    {
        // Replacing the login is a change to it: done under the home's lock, so a running
        // `keyward serve` is not refreshing the old one at the same moment.
        let _lock = home.lock()?;
        store.save(&login)?;
    }
    writeln!(
        out,
        "Signed in as {} (account {}, plan {}). The login is stored in {}.",
        login.email.as_deref().unwrap_or("an unknown email"),
        login.account_id,
        login.plan.as_deref().unwrap_or("unknown"),
        store.describe()
    )?;
    if let Some(path) = imported_from {
        writeln!(
            out,
            "\nImportant: keyward now refreshes this login, and refresh tokens work only once. The Codex \
             CLI that owns {} must stop using it, or the next refresh by either side will end the \
             login for both. Move that file away (do not run `codex logout`, which may revoke it), and \
             point Codex at keyward instead.",
            path.display()
        )?;
    }
    Ok(())
}

/// `keyward status`. Returns whether the login is usable (the exit status).
pub fn status(args: &StatusArgs) -> anyhow::Result<bool> {
    let (_home, store) = open_store(&args.home)?;
    let login = store.load()?;
    let state = match &login {
        None => "signed_out",
        Some(login) if login.dead.is_some() => "dead",
        Some(login) if login.expires_at.is_some_and(|exp| exp <= now()) => "expired",
        Some(_) => "signed_in",
    };
    // An expired access token is renewed by the next refresh: the login is still usable.
    let usable = matches!(state, "signed_in" | "expired");
    let mut out = std::io::stdout();
    if args.json {
        let value = match &login {
            None => json!({ "state": state, "signed_in": false, "store": store.describe() }),
            Some(login) => json!({
                "state": state,
                "signed_in": usable,
                "email": login.email,
                "account_id": login.account_id,
                "plan": login.plan,
                "fedramp": login.fedramp,
                "expires_at": login.expires_at,
                "expires_in_s": login.expires_at.map(|exp| exp - now()),
                "last_refresh": login.last_refresh,
                "dead": login.dead.as_ref().map(|d| json!({ "reason": d.reason, "at": d.at })),
                "store": store.describe(),
            }),
        };
        writeln!(out, "{value}")?;
        return Ok(usable);
    }
    match &login {
        None => writeln!(
            out,
            "Not signed in ({}). Sign in with `keyward login`.",
            store.describe()
        )?,
        Some(login) => describe(&mut out, login, state, &store.describe())?,
    }
    Ok(usable)
}

fn describe(out: &mut impl Write, login: &Login, state: &str, store: &str) -> std::io::Result<()> {
    match &login.dead {
        Some(dead) => writeln!(
            out,
            "The login has ended: the sign-in service refused its refresh token ({}) at {}. \
             Sign in again with `keyward login`.",
            dead.reason,
            when(dead.at)
        )?,
        None => writeln!(out, "Signed in to ChatGPT.")?,
    }
    writeln!(
        out,
        "  email:         {}",
        login.email.as_deref().unwrap_or("unknown")
    )?;
    writeln!(out, "  account:       {}", login.account_id)?;
    writeln!(
        out,
        "  plan:          {}",
        login.plan.as_deref().unwrap_or("unknown")
    )?;
    let expiry = match login.expires_at {
        Some(exp) if state == "expired" => format!(
            "{} (expired; the next request or refresh renews it)",
            when(exp)
        ),
        Some(exp) => format!("{} (in {})", when(exp), span(exp - now())),
        None => "unknown".into(),
    };
    writeln!(out, "  access token:  expires {expiry}")?;
    let refreshed = login.last_refresh.map_or("unknown".into(), when);
    writeln!(out, "  last refresh:  {refreshed}")?;
    writeln!(out, "  store:         {store}")
}

/// `keyward logout`.
pub fn logout(args: &LogoutArgs) -> anyhow::Result<()> {
    let (home, store) = open_store(&args.home)?;
    let _lock = home.lock()?;
    let mut out = std::io::stdout();
    let Some(login) = store.load()? else {
        writeln!(out, "Not signed in ({}); nothing to do.", store.describe())?;
        return Ok(());
    };
    let issuer = issuer(&args.issuer.issuer, &args.net)?;
    let revoke = async {
        tokio::time::timeout(Duration::from_secs(10), issuer.revoke(&login.refresh_token)).await
    };
    match runtime()?.block_on(revoke) {
        Ok(Ok(())) => writeln!(out, "Revoked the refresh token at {}.", issuer.base())?,
        Ok(Err(err)) => writeln!(
            out,
            "Could not revoke the refresh token ({err}); deleting the login anyway."
        )?,
        Err(_) => writeln!(
            out,
            "The sign-in service did not answer within 10s; deleting the login anyway."
        )?,
    }
    store.delete()?;
    writeln!(out, "Deleted the login from {}.", store.describe())?;
    Ok(())
}

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

/// A time as `Tue, 24 Nov 2026 01:00:00 GMT`.
fn when(epoch_secs: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(epoch_secs.max(0) as u64);
    httpdate::fmt_http_date(at.min(SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799)))
}

/// A rough duration: `3d 4h`, `57 min`, `40 s`.
fn span(secs: i64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {} min", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{} min", s / 60),
        s => format!("{} s", s.max(0)),
    }
}
