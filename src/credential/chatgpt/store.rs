//! Where a login is kept: a private file (the default), the OS keyring, the state database
//! several replicas share (`--state`), or memory (tests).

mod database;
mod file;
#[cfg(feature = "keyring")]
mod keyring_store;
mod memory;

use std::path::PathBuf;

pub use database::{DatabaseStore, DbLock, KEY_LEN, LoginKey};
pub use file::FileStore;
#[cfg(feature = "keyring")]
pub use keyring_store::KeyringStore;
pub use memory::MemoryStore;

use crate::config::values::StoreKind;
use crate::credential::chatgpt::home::HomeError;
use crate::credential::chatgpt::record::Login;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the login store {} is corrupt ({detail}); keyward left it as it is: move it aside and \
         sign in again with `keyward login`",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error("could not {action} the login store {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the OS keyring: {0}")]
    Keyring(String),
    #[error(transparent)]
    State(#[from] crate::upstream::state_db::StateError),
    #[error("--state-key-file {}: {why}", path.display())]
    Key { path: PathBuf, why: String },
    #[error(
        "the login in the state database cannot be decrypted with --state-key-file {}: it was \
         stored with another key (every replica needs the same key file), or it was altered",
        path.display()
    )]
    WrongKey { path: PathBuf },
    #[error("the login in the state database could not be sealed or read: {0}")]
    Sealed(String),
}

/// Load, save and delete one login. Implementations are blocking; async callers use
/// `spawn_blocking`.
pub trait LoginStore: Send + Sync {
    fn load(&self) -> Result<Option<Login>, StoreError>;
    /// Replaces the stored login as one atomic step: afterwards the store holds either the old
    /// login or the new one, never a mix.
    fn save(&self, login: &Login) -> Result<(), StoreError>;
    /// Removes the login; `false` if there was none.
    fn delete(&self) -> Result<bool, StoreError>;
    /// Where the login is, for `keyward status`.
    fn describe(&self) -> String;
}

/// Opens the store of `kind` for the login in `home`.
pub fn open(
    kind: StoreKind,
    home: &crate::credential::chatgpt::home::Home,
) -> Result<std::sync::Arc<dyn LoginStore>, StoreError> {
    match kind {
        StoreKind::File => Ok(std::sync::Arc::new(FileStore::new(home))),
        #[cfg(feature = "keyring")]
        StoreKind::Keyring => Ok(std::sync::Arc::new(KeyringStore::new(home)?)),
        #[cfg(not(feature = "keyring"))]
        StoreKind::Keyring => Err(StoreError::Keyring(
            "this keyward was built without the `keyring` feature; use --store file, or rebuild with \
             `cargo build --release --features keyring`"
                .into(),
        )),
    }
}
