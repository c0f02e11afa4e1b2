//! `keyward login`, `status`, `logout` and `token`: what they print and how they exit.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::json;

use crate::config::command_args::{HomeArgs, LoginArgs, LogoutArgs, NetArgs, StatusArgs};
use crate::config::values::DEFAULT_LOGIN;
use crate::config::{Limits, UpstreamProxy};
use crate::credential::chatgpt::home::Home;
use crate::credential::chatgpt::issuer::Issuer;
use crate::credential::chatgpt::login::{self, BrowserOptions};
use crate::credential::chatgpt::plan::PlanUsage;
use crate::credential::chatgpt::record::{Login, now};
use crate::credential::chatgpt::store::LoginStore;
use crate::credential::chatgpt::{codex_import, device};
use crate::upstream::ClientSettings;

/// The home of the login named `name` (its lock and plan usage), and its store: the state
/// database with `--state`, else in that home.
fn open_store(
    args: &HomeArgs,
    name: &str,
) -> anyhow::Result<(Home, std::sync::Arc<dyn LoginStore>)> {
    let home = Home::open(&Home::resolve(args.home.as_deref())?)?;
    let state = crate::config::state::settings(&args.state)?;
    let (store, _lock) = crate::credential::chatgpt::refresh_lock::open_store(
        args.store,
        &home,
        name,
        state.as_ref(),
    )?;
    Ok((home.login(name)?, store))
}

/// The logins `status` reports: the one named, else every login there is (the default one when
/// there is none, to say it is signed out).
fn logins_to_show(args: &StatusArgs) -> anyhow::Result<Vec<String>> {
    if let Some(name) = &args.name {
        return Ok(vec![name.clone()]);
    }
    let home = Home::open(&Home::resolve(args.home.home.as_deref())?)?;
    let state = crate::config::state::settings(&args.home.state)?;
    let names = crate::credential::chatgpt::refresh_lock::login_names(
        args.home.store,
        &home,
        state.as_ref(),
    )?;
    Ok(if names.is_empty() {
        vec![DEFAULT_LOGIN.to_owned()]
    } else {
        names
    })
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
    let (home, store) = open_store(&args.home, &args.name)?;
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
    let named = if args.name == DEFAULT_LOGIN {
        String::new()
    } else {
        format!("login {}, ", args.name)
    };
    writeln!(
        out,
        "Signed in as {} ({named}account {}, plan {}). The login is stored in {}.",
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

/// `keyward status`: the login named, or every login. Returns whether every login shown is usable
/// (the exit status).
pub fn status(args: &StatusArgs) -> anyhow::Result<bool> {
    let names = logins_to_show(args)?;
    let several = names.len() > 1 || names[0] != DEFAULT_LOGIN;
    let mut usable = true;
    for (i, name) in names.iter().enumerate() {
        if several && !args.json {
            if i > 0 {
                writeln!(std::io::stdout())?;
            }
            writeln!(std::io::stdout(), "Login {name}:")?;
        }
        usable &= status_of(args, name, several)?;
    }
    Ok(usable)
}

/// One login's status; `named`: its name is shown (in the JSON).
fn status_of(args: &StatusArgs, name: &str, named: bool) -> anyhow::Result<bool> {
    let (home, store) = open_store(&args.home, name)?;
    let login = store.load()?;
    let plan_usage = PlanUsage::read(home.dir());
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
        let mut value = match &login {
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
                "plan_usage": plan_usage,
            }),
        };
        if named {
            value["name"] = name.into();
        }
        writeln!(out, "{value}")?;
        return Ok(usable);
    }
    match &login {
        None => writeln!(
            out,
            "Not signed in ({}). Sign in with `keyward login{}`.",
            store.describe(),
            login_flag(name)
        )?,
        Some(login) => {
            describe(&mut out, login, state, &store.describe(), name)?;
            describe_usage(&mut out, plan_usage.as_ref())?;
        }
    }
    Ok(usable)
}

fn describe(
    out: &mut impl Write,
    login: &Login,
    state: &str,
    store: &str,
    name: &str,
) -> std::io::Result<()> {
    match &login.dead {
        Some(dead) => writeln!(
            out,
            "The login has ended: the sign-in service refused its refresh token ({}) at {}. \
             Sign in again with `keyward login{}`.",
            dead.reason,
            when(dead.at),
            login_flag(name)
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

/// The plan's usage as `keyward serve` last heard it from the backend.
fn describe_usage(out: &mut impl Write, usage: Option<&PlanUsage>) -> std::io::Result<()> {
    let Some(usage) = usage else {
        return writeln!(
            out,
            "  plan usage:    not reported yet (keyward serve records it from the backend's answers)"
        );
    };
    for (name, window) in [("primary", &usage.primary), ("secondary", &usage.secondary)] {
        let Some(window) = window else { continue };
        let span_text = window.window_minutes.map_or(String::new(), |m| {
            format!(" of a {} window", span(m as i64 * 60))
        });
        let reset = window
            .reset_at
            .map_or(String::new(), |at| format!(", resets {}", when(at)));
        writeln!(
            out,
            "  plan usage:    {name} {:.1}% used{span_text}{reset}",
            window.used_percent
        )?;
    }
    writeln!(
        out,
        "                 (as the backend said at {})",
        when(usage.seen_at)
    )
}

/// ` --name NAME` for a login other than the default one, for the commands a message suggests.
fn login_flag(name: &str) -> String {
    if name == DEFAULT_LOGIN {
        String::new()
    } else {
        format!(" --name {name}")
    }
}

/// `keyward logout`.
pub fn logout(args: &LogoutArgs) -> anyhow::Result<()> {
    let (home, store) = open_store(&args.home, &args.name)?;
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

/// A time as `Tue, 24 Nov 2026 01:00:00 GMT`.
pub(crate) fn when(epoch_secs: i64) -> String {
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
