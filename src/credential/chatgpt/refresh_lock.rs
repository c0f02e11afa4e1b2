//! What keeps refreshes of one login one at a time across processes: the home's lock file, or,
//! with `--state`, a lock in the state database that every replica takes in turn. While it is
//! held, the login is read and written through it.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::state::StateConfig;
use crate::config::values::{DEFAULT_LOGIN, StoreKind};
use crate::upstream::state_db::StateDb;

use crate::credential::chatgpt::home::{Home, HomeLock};
use crate::credential::chatgpt::record::Login;
use crate::credential::chatgpt::store::{self, DatabaseStore, DbLock, LoginStore, StoreError};

/// The store of the login named `name` and the lock its refreshes take: in the state database
/// with `--state` (the schema brought up to date), else `kind` in the login's home
/// ([`Home::login`]) with that home's lock.
pub fn open_store(
    kind: StoreKind,
    home: &Home,
    name: &str,
    state: Option<&StateConfig>,
) -> Result<(Arc<dyn LoginStore>, RefreshLock), StoreError> {
    let Some(state) = state else {
        let home = home.login(name)?;
        return Ok((store::open(kind, &home)?, RefreshLock::Home(home)));
    };
    let key_file = state.key_file.as_deref().ok_or_else(|| StoreError::Key {
        path: PathBuf::from("(none)"),
        why: "--state needs --state-key-file FILE (or KEYWARD_STATE_KEY_FILE): the key the \
              login is encrypted with; `keyward state init-key FILE` makes one"
            .into(),
    })?;
    let db = StateDb::open(state)?;
    let store = Arc::new(DatabaseStore::open(db, key_file, name)?);
    Ok((store.clone(), RefreshLock::Database(store)))
}

/// The names of the logins there are: in the state database with `--state`, else in `home`.
pub fn login_names(
    kind: StoreKind,
    home: &Home,
    state: Option<&StateConfig>,
) -> Result<Vec<String>, StoreError> {
    match state {
        None => Ok(home.login_names()),
        Some(_) => {
            let (_, lock) = open_store(kind, home, DEFAULT_LOGIN, state)?;
            match lock {
                RefreshLock::Database(store) => store.names(),
                RefreshLock::Home(home) => Ok(home.login_names()),
            }
        }
    }
}

/// Where the cross-process refresh lock is.
pub enum RefreshLock {
    /// The home's lock file: processes on one host.
    Home(Home),
    /// The state database: replicas on any host.
    Database(Arc<DatabaseStore>),
}

/// The lock, taken.
pub enum Held {
    Home(Option<HomeLock>),
    Database(Arc<DbLock>),
}

impl RefreshLock {
    /// Waits for the lock (another process may be refreshing).
    pub async fn take(lock: Option<&RefreshLock>) -> Result<Held, StoreError> {
        match lock {
            None => Ok(Held::Home(None)),
            Some(RefreshLock::Home(home)) => Ok(Held::Home(Some(home.lock_async().await?))),
            Some(RefreshLock::Database(store)) => {
                let store = store.clone();
                let lock = blocking(move || store.lock()).await?;
                Ok(Held::Database(Arc::new(lock)))
            }
        }
    }
}

impl RefreshLock {
    /// With `--state`: when the shared login was last written (`Ok(None)`: there is none), or
    /// why the database does not answer; `None` without a state database.
    pub async fn shared_changed_at(&self) -> Option<Result<Option<f64>, StoreError>> {
        let RefreshLock::Database(store) = self else {
            return None;
        };
        let store = store.clone();
        Some(blocking(move || store.changed_at()).await)
    }
}

impl Held {
    /// The login as it is now: read under the lock.
    pub async fn load(&self, store: &Arc<dyn LoginStore>) -> Result<Option<Login>, StoreError> {
        match self {
            Held::Database(lock) => {
                let lock = lock.clone();
                blocking(move || lock.load()).await
            }
            Held::Home(_) => {
                let store = store.clone();
                blocking(move || store.load()).await
            }
        }
    }

    pub async fn save(&self, store: &Arc<dyn LoginStore>, login: Login) -> Result<(), StoreError> {
        match self {
            Held::Database(lock) => {
                let lock = lock.clone();
                blocking(move || lock.save(&login)).await
            }
            Held::Home(_) => {
                let store = store.clone();
                blocking(move || store.save(&login)).await
            }
        }
    }

    /// Releases the lock, committing what was saved under it.
    pub async fn release(self) -> Result<(), StoreError> {
        match self {
            Held::Database(lock) => blocking(move || lock.commit()).await,
            Held::Home(_) => Ok(()),
        }
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Sealed(format!("the store's thread failed: {e}")))?
}
