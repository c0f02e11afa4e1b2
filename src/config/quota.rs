//! Quota settings: `--quota CLIENT:KEY=N,...` and the `[quota]` table, per client with a
//! default. [`crate::telemetry::quota`] counts against them.

use std::collections::HashMap;

/// One client's limits; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub concurrent: Option<u32>,
    pub requests_per_minute: Option<u32>,
    /// Input plus output tokens in any 24 hours (a rolling window, not a calendar day).
    pub tokens_per_day: Option<u64>,
}

impl Limits {
    pub(crate) fn or(self, fallback: Limits) -> Limits {
        Limits {
            concurrent: self.concurrent.or(fallback.concurrent),
            requests_per_minute: self.requests_per_minute.or(fallback.requests_per_minute),
            tokens_per_day: self.tokens_per_day.or(fallback.tokens_per_day),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// Sets the quota `key` (`concurrent`, `requests-per-minute`, `tokens-per-day`) to `value`;
    /// `false` for another key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        if !["concurrent", "requests-per-minute", "tokens-per-day"].contains(&key) {
            return Ok(false);
        }
        let number: u64 = value
            .trim()
            .parse()
            .map_err(|_| format!("{key}: `{value}` is not a whole number"))?;
        let small = || u32::try_from(number).map_err(|_| format!("{key}: {number} is too large"));
        match key {
            "concurrent" => self.concurrent = Some(small()?),
            "requests-per-minute" => self.requests_per_minute = Some(small()?),
            "tokens-per-day" => self.tokens_per_day = Some(number),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// What a credential's quotas are counted under begins with this: `credential:NAME`.
pub const CREDENTIAL_PREFIX: &str = "credential:";

/// The limits for every client (`default`) and for named ones, and for credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaConfig {
    pub default: Limits,
    pub clients: HashMap<String, Limits>,
    /// By credential name (`--credential NAME:...,tokens-per-day=N`); `default` does not apply.
    pub credentials: HashMap<String, Limits>,
}

impl QuotaConfig {
    pub fn is_empty(&self) -> bool {
        self.default.is_empty()
            && self.clients.values().all(Limits::is_empty)
            && self.credentials.values().all(Limits::is_empty)
    }

    /// The limits of a client, or of a credential by its quota name (`credential:NAME`).
    pub(crate) fn for_client(&self, client: &str) -> Limits {
        if let Some(credential) = client.strip_prefix(CREDENTIAL_PREFIX) {
            return self
                .credentials
                .get(credential)
                .copied()
                .unwrap_or_default();
        }
        self.clients
            .get(client)
            .copied()
            .unwrap_or_default()
            .or(self.default)
    }

    /// `--quota CLIENT:KEY=N[,KEY=N...]`, CLIENT a client name or `default`; KEY one of
    /// `concurrent`, `requests-per-minute`, `tokens-per-day`.
    pub fn add_spec(&mut self, spec: &str) -> Result<(), String> {
        let (client, settings) = spec.split_once(':').ok_or_else(|| {
            format!("--quota `{spec}`: expected CLIENT:KEY=N, e.g. default:requests-per-minute=60")
        })?;
        let client = client.trim();
        if client.is_empty() {
            return Err(format!("--quota `{spec}`: the client name is empty"));
        }
        let limits = if client == "default" {
            &mut self.default
        } else {
            self.clients.entry(client.to_owned()).or_default()
        };
        for setting in settings.split(',') {
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| format!("--quota `{spec}`: `{setting}` is not KEY=N"))?;
            if !limits
                .set(key.trim(), value)
                .map_err(|why| format!("--quota `{spec}`: {why}"))?
            {
                return Err(format!(
                    "--quota `{spec}`: unknown quota `{}`; use concurrent, requests-per-minute \
                     or tokens-per-day",
                    key.trim()
                ));
            }
        }
        Ok(())
    }
}
