//! The values flags take: the credential's header, the login store, the key's source, and the
//! parsers for modes, durations and sizes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;

/// Where the key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Stdin,
    File(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Stdin => f.write_str("stdin"),
            KeySource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// How the key is presented to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthHeader {
    /// `Authorization: Bearer KEY` (OpenAI, and Azure with Entra ID tokens).
    Bearer,
    /// `api-key: KEY` (Azure OpenAI API keys).
    ApiKey,
}

impl AuthHeader {
    pub fn name(self) -> http::HeaderName {
        match self {
            AuthHeader::Bearer => http::header::AUTHORIZATION,
            AuthHeader::ApiKey => http::HeaderName::from_static("api-key"),
        }
    }

    pub(crate) fn prefix(self) -> &'static [u8] {
        match self {
            AuthHeader::Bearer => b"Bearer ",
            AuthHeader::ApiKey => b"",
        }
    }
}

/// Which store to use, as chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// `login.json` in keyward's home (mode 0600, written atomically).
    File,
    /// The OS keyring (Linux kernel keyutils; lost at reboot). Needs the `keyring` build feature.
    Keyring,
}

/// An octal file mode such as `660` or `0600`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim(), 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| format!("`{text}` is not a file mode such as 660 or 0600"))
}

/// `90`, `90s`, `1500ms`, `5m`, `1h`, `7d`. A bare number is seconds.
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
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use ms, s, m, h or d"
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

/// What to say when no home can be found.
pub const NO_HOME: &str =
    "no home for keyward: pass --home DIR or set KEYWARD_HOME (HOME is not set either)";

/// keyward's home: `--home`, else `$KEYWARD_HOME`, else `~/.keyward`; `None` without `$HOME`.
pub fn home_dir(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = flag {
        return Some(dir.to_owned());
    }
    if let Some(dir) = std::env::var_os("KEYWARD_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").filter(|d| !d.is_empty())?;
    Some(PathBuf::from(home).join(".keyward"))
}
