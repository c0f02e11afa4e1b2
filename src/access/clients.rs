//! Client tokens: named clients, each with a token of its own that keyward swaps for the real
//! credential. The file holds only SHA-256 hashes of the tokens (a token is 256 random bits, so a
//! plain hash cannot be reversed or guessed); it must be private to keyward's user.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, Instant};

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::secret::private_file;

/// How often a running keyward looks at the file for tokens added or revoked since.
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ClientsError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{0}")]
    Unsafe(String),
    #[error("{path} is not a valid client tokens file: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error(
        "`{0}` is not a usable client name: use 1 to 64 letters, digits, `.`, `_` or `-`, \
         starting with a letter or digit"
    )]
    BadName(String),
    #[error("a client named `{0}` already exists; revoke it first to issue a new token")]
    Exists(String),
    #[error("there is no client named `{0}`")]
    NoSuchClient(String),
    #[error("no random numbers for a token: {0}")]
    Random(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Client {
    pub name: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The groups it is in (`keyward token add --group`), for routes that name `@GROUP`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct FileContents {
    pub(crate) version: u32,
    pub(crate) clients: Vec<Client>,
}

/// What identifies one version of the file, to notice changes without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    size: u64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            size: meta.size(),
        }
    }
}

/// Each client's name, the raw SHA-256 of its token, and its groups.
type Hashes = Vec<(Arc<str>, [u8; 32], Arc<[String]>)>;

struct Loaded {
    clients: Hashes,
    /// The file's version these came from (none for the state database's table).
    stamp: Option<Stamp>,
}

/// The tokens a running keyward accepts: re-read when the file changes, or replaced by the
/// state database's poller ([`ClientTokens::replace`]).
pub struct ClientTokens {
    /// The file; `None` when the tokens come from the state database.
    path: Option<PathBuf>,
    loaded: RwLock<Arc<Loaded>>,
    checked: Mutex<Instant>,
}

impl ClientTokens {
    /// Reads the file; at start, any problem with it is fatal.
    pub fn open(path: &Path) -> Result<Self, ClientsError> {
        let loaded = load(path)?;
        Ok(Self {
            path: Some(path.to_owned()),
            loaded: RwLock::new(Arc::new(loaded)),
            checked: Mutex::new(Instant::now()),
        })
    }

    /// Tokens kept in the state database: `clients` now, replaced as the table changes.
    pub fn shared(clients: &[Client]) -> Result<Self, ClientsError> {
        let tokens = Self {
            path: None,
            loaded: RwLock::new(Arc::new(Loaded {
                clients: Vec::new(),
                stamp: None,
            })),
            checked: Mutex::new(Instant::now()),
        };
        tokens.replace(clients)?;
        Ok(tokens)
    }

    /// Puts `clients` in force (the state database's table as read now); says whether anything
    /// changed.
    pub fn replace(&self, clients: &[Client]) -> Result<bool, ClientsError> {
        let parsed = parse(clients, Path::new("the state database's keyward_clients"))?;
        let current = self.current();
        if current.clients == parsed {
            return Ok(false);
        }
        *self.loaded.write() = Arc::new(Loaded {
            clients: parsed,
            stamp: None,
        });
        Ok(true)
    }

    pub fn len(&self) -> usize {
        self.current().clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The client whose token this is, compared in constant time against every known hash.
    pub fn verify(&self, token: &[u8]) -> Option<Arc<str>> {
        self.refresh();
        let presented = digest(&SHA256, token);
        let mut found = None;
        for (name, hash, _) in &self.current().clients {
            if bool::from(presented.as_ref().ct_eq(hash)) {
                found = Some(name.clone());
            }
        }
        found
    }

    /// The groups of the client `name` (`keyward token add --group`); none for a name no token
    /// has.
    pub fn groups_of(&self, name: &str) -> Arc<[String]> {
        self.current()
            .clients
            .iter()
            .find(|(client, _, _)| &**client == name)
            .map_or_else(|| Arc::from([]), |(_, _, groups)| groups.clone())
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().clone()
    }

    /// Re-reads the file if it changed, at most once per [`RECHECK`]. A file that became
    /// unusable is reported and the tokens read before stay in force.
    fn refresh(&self) {
        let Some(path) = &self.path else { return };
        {
            let mut checked = self.checked.lock();
            if checked.elapsed() < RECHECK {
                return;
            }
            *checked = Instant::now();
        }
        let stamp = match fs::metadata(path) {
            Ok(meta) => Stamp::of(&meta),
            Err(err) => {
                tracing::error!(path = %path.display(), error = %err, "the client tokens file cannot be read; the tokens read before stay in force");
                return;
            }
        };
        if Some(stamp) == self.current().stamp {
            return;
        }
        match load(path) {
            Ok(loaded) => {
                tracing::info!(clients = loaded.clients.len(), "client tokens file re-read");
                *self.loaded.write() = Arc::new(loaded);
            }
            Err(err) => {
                tracing::error!(error = %err, "the client tokens file changed but is not usable; the tokens read before stay in force")
            }
        }
    }
}

fn load(path: &Path) -> Result<Loaded, ClientsError> {
    let (clients, stamp) = read(path)?;
    Ok(Loaded {
        clients: parse(&clients, path)?,
        stamp: Some(stamp),
    })
}

/// The clients' names and raw hashes; `source` names where they came from in errors.
fn parse(clients: &[Client], source: &Path) -> Result<Hashes, ClientsError> {
    clients
        .iter()
        .map(|c| {
            let mut raw = [0u8; 32];
            let bytes = hex_decode(&c.sha256)
                .filter(|b| b.len() == 32)
                .ok_or_else(|| ClientsError::Corrupt {
                    path: source.to_owned(),
                    why: format!("the hash of client `{}` is not 64 hex digits", c.name),
                })?;
            raw.copy_from_slice(&bytes);
            Ok((
                Arc::from(c.name.as_str()),
                raw,
                Arc::from(c.groups.as_slice()),
            ))
        })
        .collect()
}

/// Reads the file after checking it is keyward's user's own and private.
pub(crate) fn read(path: &Path) -> Result<(Vec<Client>, Stamp), ClientsError> {
    let io_err = |error| ClientsError::Io {
        path: path.to_owned(),
        error,
    };
    let mut file = private_file::options()
        .read(true)
        .open(path)
        .map_err(io_err)?;
    private_file::check(path, false).map_err(|e| ClientsError::Unsafe(e.to_string()))?;
    let meta = file.metadata().map_err(io_err)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io_err)?;
    let contents: FileContents =
        serde_json::from_str(&text).map_err(|e| ClientsError::Corrupt {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    if contents.version != 1 {
        return Err(ClientsError::Corrupt {
            path: path.to_owned(),
            why: format!("version {} is not one this keyward reads", contents.version),
        });
    }
    Ok((contents.clients, Stamp::of(&meta)))
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
impl ClientTokens {
    /// The next check re-reads the file, as it would [`RECHECK`] from now.
    pub(crate) fn recheck_now(&self) {
        *self.checked.lock() = Instant::now() - RECHECK;
    }
}
