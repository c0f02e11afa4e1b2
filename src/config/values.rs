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
/// The login keyward uses when none is named.
pub const DEFAULT_LOGIN: &str = "default";

/// A login's name (`keyward login --name NAME`): 1 to 64 letters, digits, `.`, `_` or `-`, not
/// starting with `.` (it names a directory in the home).
pub fn parse_login_name(text: &str) -> Result<String, String> {
    let fits = (1..=64).contains(&text.len())
        && !text.starts_with('.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if fits {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a login name: use 1 to 64 letters, digits, '.', '_' or '-', not \
             starting with '.'"
        ))
    }
}

/// The directory in the home that holds the logins other than the default one.
pub const LOGINS_DIR: &str = "logins";

/// Where the login named `name` lives in `home`: the home itself for the default login (where it
/// has always been), else `logins/NAME` in it.
pub fn login_dir(home: &Path, name: &str) -> PathBuf {
    if name == DEFAULT_LOGIN {
        home.to_owned()
    } else {
        home.join(LOGINS_DIR).join(name)
    }
}

pub fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim(), 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| format!("`{text}` is not a file mode such as 660 or 0600"))
}

/// `90`, `90s`, `1500ms`, `5m`, `1h`, `7d` (humantime's units). A bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let with_unit = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        format!("{text}s")
    } else {
        text.to_owned()
    };
    humantime::parse_duration(&with_unit)
        .map_err(|err| format!("`{text}` is not a duration such as 30s, 1500ms, 5m or 1h ({err})"))
}

/// `1048576`, `64KiB`, `64MiB`, `1GiB` (also `KB`/`MB`/`GB` and `K`/`M`/`G`, all powers of 1024:
/// memory and buffer sizes, where nobody means 1000).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(text.trim())
        .map_err(|err| {
            format!(
                "`{}` is not a size such as 65536, 64KiB or 64MiB ({err})",
                text.trim()
            )
        })
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
