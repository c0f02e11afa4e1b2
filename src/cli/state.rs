//! `keyward state`: the key, the schema, and moving a single keyward's home into the state
//! database.

use std::io::Write;

use anyhow::Context;

use crate::config::command_args::{StateAction, StateCommandArgs};
use crate::credential::chatgpt::home::Home;
use crate::credential::chatgpt::store;
use crate::state::ledger::{Row, insert};
use crate::upstream::state_db::StateDb;

/// `keyward state ...`.
pub fn state(args: &StateCommandArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    match &args.action {
        StateAction::InitKey { file } => {
            store::LoginKey::create(file)?;
            writeln!(
                out,
                "Wrote a new {}-byte key to {} (mode 0600). Give every replica the same key \
                 (--state-key-file, or KEYWARD_STATE_KEY_FILE); without it the stored login \
                 cannot be read.",
                store::KEY_LEN,
                file.display()
            )?;
        }
        StateAction::Migrate { state } => {
            let config = crate::config::state::settings(state)?
                .context("keyward state migrate needs --state URL (or KEYWARD_STATE)")?;
            let db = StateDb::open(&config)?;
            let version = db.block_on(db.migrate())?;
            writeln!(
                out,
                "The state database {} is at schema version {version}.",
                db.url()
            )?;
        }
        StateAction::Import {
            home,
            usage_log,
            replica,
            ledger_only,
        } => {
            let config = crate::config::state::settings(&home.state)?
                .context("keyward state import needs --state URL (or KEYWARD_STATE)")?;
            // Only read from: opened (and checked) only when the login is imported.
            let dir = Home::resolve(home.home.as_deref())?;
            if !ledger_only {
                import_login(home, &Home::open(&dir)?, &config)?;
            }
            let ledger = usage_log.clone().unwrap_or_else(|| dir.join("usage.jsonl"));
            if ledger.exists() {
                let replica = replica
                    .clone()
                    .unwrap_or_else(crate::config::state::host_name);
                import_ledger(&config, &ledger, &replica)?;
            } else if usage_log.is_some() || *ledger_only {
                anyhow::bail!("there is no usage ledger at {}", ledger.display());
            }
        }
    }
    Ok(())
}

fn import_login(
    home: &crate::config::command_args::HomeArgs,
    dir: &Home,
    config: &crate::config::state::StateConfig,
) -> anyhow::Result<()> {
    // Every login in the home, each under its own name (`keyward login --name`); the default
    // one is looked for in the store even when it is not a file (--store keyring).
    let default = crate::config::values::DEFAULT_LOGIN.to_owned();
    let mut names = dir.login_names();
    if !names.contains(&default) {
        names.insert(0, default);
    }
    let mut copied = 0;
    for name in &names {
        let local = store::open(home.store, &dir.login(name)?)?;
        let Some(login) = local.load()? else {
            continue;
        };
        let (shared, _lock) = crate::credential::chatgpt::refresh_lock::open_store(
            home.store,
            dir,
            name,
            Some(config),
        )?;
        shared.save(&login)?;
        copied += 1;
        writeln!(
            std::io::stdout(),
            "Copied the login for {} from {} to {}. Replicas with --state use it now; the copy in \
             the home is left as it was: delete it (keyward logout would revoke the login itself) \
             once nothing uses it.",
            login.email.as_deref().unwrap_or("(no email)"),
            local.describe(),
            shared.describe()
        )?;
    }
    if copied == 0 {
        anyhow::bail!(
            "there is no login in {} to import (--ledger-only imports just the ledger)",
            store::open(home.store, dir)?.describe()
        );
    }
    Ok(())
}

/// Sends every line of `path` to the table, in batches; lines already there are kept once.
fn import_ledger(
    config: &crate::config::state::StateConfig,
    path: &std::path::Path,
    replica: &str,
) -> anyhow::Result<()> {
    let db = StateDb::open(config)?;
    db.block_on(db.migrate())?;
    let mut batch = Vec::new();
    let (mut read, mut added) = (0u64, 0u64);
    let mut failed = None;
    let stats = crate::telemetry::ledger::read_since(path, 0.0, |entry| {
        if failed.is_some() {
            return;
        }
        read += 1;
        batch.push(Row {
            replica: replica.to_owned(),
            entry,
        });
        if batch.len() == 1000 {
            match db.block_on(insert(&db, &batch)) {
                Ok(n) => added += n,
                Err(err) => failed = Some(err),
            }
            batch.clear();
        }
    })?;
    if let Some(err) = failed {
        return Err(err.into());
    }
    if !batch.is_empty() {
        added += db.block_on(insert(&db, &batch))?;
    }
    writeln!(
        std::io::stdout(),
        "Imported the usage ledger {} as replica `{replica}`: {read} rows read, {added} new in \
         {} ({} already there{}).",
        path.display(),
        db.url(),
        read - added,
        if stats.bad + stats.torn > 0 {
            format!(", {} lines skipped", stats.bad + stats.torn)
        } else {
            String::new()
        }
    )?;
    Ok(())
}
