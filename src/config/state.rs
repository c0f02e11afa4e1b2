//! `--state postgres://...`: the PostgreSQL database that several keyward replicas share their
//! state in (the ChatGPT login, client tokens, the ledger, quotas, response owners). The flags,
//! and the settings made of them. The database's password never comes from argv: from
//! `KEYWARD_STATE_PASSWORD`, or a file.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::config::error::ConfigError;

#[derive(Debug, Clone, Default, Args)]
pub struct StateArgs {
    /// Share state with other keyward replicas in this PostgreSQL database: the ChatGPT login,
    /// client tokens (`--client-tokens state`), the usage ledger, quota counts and response
    /// owners. `postgres://USER@HOST[:PORT]/DB[?sslmode=disable|require|verify-full]`; the
    /// password comes from KEYWARD_STATE_PASSWORD or --state-password-file, never from the URL.
    /// Without it, all of this stays in files.
    #[arg(long, global = true, value_name = "URL", env = "KEYWARD_STATE")]
    pub state: Option<String>,

    /// A file holding the state database's password (one line).
    #[arg(long, global = true, value_name = "FILE", requires = "state")]
    pub state_password_file: Option<PathBuf>,

    /// The 32-byte key the login is encrypted with in the state database (made by `keyward
    /// state init-key FILE`; e.g. a systemd credential). Every replica needs the same one.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "KEYWARD_STATE_KEY_FILE"
    )]
    pub state_key_file: Option<PathBuf>,

    /// Also trust these PEM CA certificates for the state database's TLS (Mozilla's roots are
    /// always trusted).
    #[arg(long, global = true, value_name = "FILE", requires = "state")]
    pub state_ca: Option<PathBuf>,
}

/// How `serve` takes part in the state database.
#[derive(Debug, Clone, Args)]
pub struct ReplicaArgs {
    /// With --state: this replica's name in the shared usage ledger. Default: the host name.
    #[arg(long, value_name = "NAME", env = "KEYWARD_REPLICA")]
    pub replica: Option<String>,

    /// With --state: how often client tokens are re-read, and quota counts and response owners
    /// exchanged with the other replicas. Each replica may admit up to this much of its own traffic beyond a
    /// quota before it sees the others' share.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::config::values::parse_duration)]
    pub state_sync: std::time::Duration,
}

/// `serve --state`: the database, and this replica's part in it.
#[derive(Debug, Clone)]
pub struct SharedState {
    pub db: StateConfig,
    /// This replica's name in the usage ledger.
    pub replica: String,
    pub sync: std::time::Duration,
    /// Where ledger rows that cannot reach the database wait (in the home).
    pub unsent: PathBuf,
    /// Whether the usage ledger goes to the database (not with --no-usage-log).
    pub ledger: bool,
}

impl SharedState {
    /// What `serve --state` shares, or `None` without `--state`.
    /// `home` is `--home`, if given; `ledger` is false with `--no-usage-log`.
    pub fn for_serve(
        state: &StateArgs,
        replica: &ReplicaArgs,
        home: Option<&Path>,
        ledger: bool,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(db) = settings(state)? else {
            return Ok(None);
        };
        let home = crate::config::values::home_dir(home)
            .ok_or_else(|| ConfigError::Home(crate::config::values::NO_HOME.into()))?;
        let mut shared = Self::from_args(db, replica, &home)?;
        shared.ledger = ledger;
        Ok(Some(shared))
    }

    fn from_args(db: StateConfig, args: &ReplicaArgs, home: &Path) -> Result<Self, ConfigError> {
        if args.state_sync.is_zero() {
            return Err(ConfigError::Zero { flag: "state-sync" });
        }
        let replica = match &args.replica {
            Some(name) => name.clone(),
            None => host_name(),
        };
        if replica.is_empty() || replica.len() > 128 || replica.chars().any(char::is_control) {
            return Err(ConfigError::BadState(
                "--replica must be 1 to 128 printable characters".into(),
            ));
        }
        Ok(Self {
            db,
            replica,
            sync: args.state_sync,
            unsent: home.join("usage-unsent.jsonl"),
            ledger: true,
        })
    }
}

/// The host's name (as `uname -n` says it), or `keyward` if it has none.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "keyward".into())
}

/// How the connection to the database is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateTls {
    /// Plain TCP (`sslmode=disable`): only for a database on loopback or a private network.
    Disable,
    /// TLS with the server's certificate and name verified (`require` and `verify-full` alike:
    /// keyward never encrypts without verifying).
    Verify,
}

/// The state database, as configured.
#[derive(Clone)]
pub struct StateConfig {
    /// The URL without `sslmode` (which `tls` says), and without a password.
    pub url: String,
    pub tls: StateTls,
    pub ca: Option<PathBuf>,
    /// The key the login is sealed with (needed by everything but `keyward state migrate`).
    pub key_file: Option<PathBuf>,
    /// Where the password comes from: the file, else `KEYWARD_STATE_PASSWORD`.
    pub password_file: Option<PathBuf>,
}

impl std::fmt::Debug for StateConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateConfig")
            .field("url", &self.url)
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .field("key_file", &self.key_file)
            .field("password_file", &self.password_file)
            .finish()
    }
}

/// The settings, or `None` without `--state`.
pub fn settings(args: &StateArgs) -> Result<Option<StateConfig>, ConfigError> {
    let Some(text) = &args.state else {
        return Ok(None);
    };
    let bad = |why: &str| ConfigError::BadState(why.to_owned());
    let mut url = url::Url::parse(text).map_err(|e| bad(&format!("it is not a URL: {e}")))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(bad("the URL must start with postgres://"));
    }
    if url.password().is_some() {
        return Err(bad(
            "the URL holds a password, which every local user can read in argv: remove it, and \
             give it in KEYWARD_STATE_PASSWORD or --state-password-file",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("the URL names no host"));
    }
    let mut tls = StateTls::Verify;
    let mut rest: Vec<(String, String)> = Vec::new();
    for (key, value) in url.query_pairs() {
        if key == "sslmode" {
            tls = match &*value {
                "disable" => StateTls::Disable,
                "require" | "verify-full" | "verify-ca" => StateTls::Verify,
                other => {
                    return Err(bad(&format!(
                        "sslmode={other} is not supported: use disable, require or verify-full"
                    )));
                }
            };
        } else {
            rest.push((key.into_owned(), value.into_owned()));
        }
    }
    url.set_query(None);
    if !rest.is_empty() {
        url.query_pairs_mut().extend_pairs(rest);
    }
    Ok(Some(StateConfig {
        url: url.to_string(),
        tls,
        ca: args.state_ca.clone(),
        key_file: args.state_key_file.clone(),
        password_file: args.state_password_file.clone(),
    }))
}

impl StateConfig {
    /// The database's password: the file's first line, else `KEYWARD_STATE_PASSWORD`.
    pub fn password(&self) -> Result<Option<zeroize::Zeroizing<String>>, ConfigError> {
        if let Some(path) = &self.password_file {
            return read_password(path).map(Some);
        }
        Ok(std::env::var("KEYWARD_STATE_PASSWORD")
            .ok()
            .map(zeroize::Zeroizing::new))
    }
}

fn read_password(path: &Path) -> Result<zeroize::Zeroizing<String>, ConfigError> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        ConfigError::BadState(format!("--state-password-file {}: {e}", path.display()))
    })?);
    let line = text.lines().next().unwrap_or_default();
    Ok(zeroize::Zeroizing::new(line.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> StateArgs {
        StateArgs {
            state: Some(url.into()),
            state_key_file: Some("/k".into()),
            ..StateArgs::default()
        }
    }

    #[test]
    fn the_url_is_read_and_a_password_in_it_is_refused() {
        let c = settings(&args(
            "postgres://kw@db.example:5433/keyward?sslmode=disable",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(c.url, "postgres://kw@db.example:5433/keyward");
        assert_eq!(c.tls, StateTls::Disable);
        let c = settings(&args("postgres://kw@db/keyward"))
            .unwrap()
            .unwrap();
        assert_eq!(
            c.tls,
            StateTls::Verify,
            "TLS, verified, unless told otherwise"
        );
        let err = settings(&args("postgres://kw:hunter2@db/keyward")).unwrap_err();
        assert!(err.to_string().contains("KEYWARD_STATE_PASSWORD"), "{err}");
        assert!(!err.to_string().contains("hunter2"));
        assert!(settings(&args("postgres://kw@db/k?sslmode=allow")).is_err());
        assert!(settings(&args("mysql://kw@db/k")).is_err());
    }
}
