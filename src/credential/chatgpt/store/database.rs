//! The login in the state database (`--state`), shared by every replica on it. It is sealed
//! with ChaCha20-Poly1305 under the key from `--state-key-file`, so a dump of the database or a
//! reader of the table gets no usable token. Refreshes take turns through [`DbLock`]: a
//! transaction holding an advisory lock, in which the row is re-read before anyone refreshes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use tokio_postgres::Client;
use zeroize::Zeroizing;

use super::{LoginStore, StoreError};
use crate::config::values::DEFAULT_LOGIN;
use crate::credential::chatgpt::record::Login;
use crate::secret::LockedSecret;
use crate::secret::private_file;
use crate::upstream::state_db::{StateDb, StateError};

/// What the default login's sealed bytes are bound to: a sealed login cannot pass for anything
/// else. Another login's are bound to its name too, so a row copied under another name does not
/// open.
const AAD: &str = "keyward login 1";
/// The advisory lock a refresh of the default login holds, in its transaction; another login's
/// lock is this one with a hash of its name mixed in.
const REFRESH_LOCK: i64 = 0x6b65_7977_6172_6402;
pub const KEY_LEN: usize = 32;

/// The key logins are sealed with: 32 bytes, locked in memory.
pub struct LoginKey {
    key: LockedSecret,
    path: PathBuf,
}

impl LoginKey {
    /// Reads the key file: exactly 32 bytes.
    pub fn read(path: &Path) -> Result<Self, StoreError> {
        let bad = |why: String| StoreError::Key {
            path: path.to_owned(),
            why,
        };
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| bad(e.to_string()))?);
        if bytes.len() != KEY_LEN {
            return Err(bad(format!(
                "it holds {} bytes, not {KEY_LEN}: make a key with `keyward state init-key FILE`",
                bytes.len()
            )));
        }
        Ok(Self {
            key: LockedSecret::copy_from(&bytes),
            path: path.to_owned(),
        })
    }

    /// Writes a new random key to `path` (created 0600, never over an existing file).
    pub fn create(path: &Path) -> Result<(), StoreError> {
        use std::io::Write;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(&mut key[..])
            .map_err(|_| StoreError::Key {
                path: path.to_owned(),
                why: "the system's random source failed".into(),
            })?;
        let mut file = private_file::options()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| f.write_all(&key[..]).map(|()| f))
            .map_err(|e| StoreError::Key {
                path: path.to_owned(),
                why: e.to_string(),
            })?;
        file.flush().map_err(|e| StoreError::Key {
            path: path.to_owned(),
            why: e.to_string(),
        })
    }

    fn cipher(&self) -> Result<LessSafeKey, StoreError> {
        UnboundKey::new(&CHACHA20_POLY1305, self.key.expose())
            .map(LessSafeKey::new)
            .map_err(|_| StoreError::Key {
                path: self.path.clone(),
                why: "not a usable key".into(),
            })
    }

    /// A fresh nonce, then the sealed JSON of `login`, bound to `aad`.
    fn seal(&self, login: &Login, aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| StoreError::Sealed("the system's random source failed".into()))?;
        let mut data = Zeroizing::new(
            serde_json::to_vec(login).map_err(|e| StoreError::Sealed(e.to_string()))?,
        );
        self.cipher()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut *data,
            )
            .map_err(|_| StoreError::Sealed("sealing failed".into()))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&data);
        Ok(sealed)
    }

    fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Login, StoreError> {
        let wrong_key = || StoreError::WrongKey {
            path: self.path.clone(),
        };
        if sealed.len() < NONCE_LEN {
            return Err(wrong_key());
        }
        let (nonce, data) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong_key())?;
        let mut data = Zeroizing::new(data.to_vec());
        let plain = self
            .cipher()?
            .open_in_place(nonce, Aad::from(aad), &mut data)
            .map_err(|_| wrong_key())?;
        serde_json::from_slice(plain).map_err(|e| StoreError::Sealed(e.to_string()))
    }
}

/// The login store in the state database.
pub struct DatabaseStore {
    db: Arc<StateDb>,
    key: LoginKey,
    /// The login's name: its row, its lock, and what its sealed bytes are bound to.
    name: String,
    aad: Vec<u8>,
    lock_id: i64,
}

impl DatabaseStore {
    /// Reads the key and brings the schema up to date; the store of the login named `name`.
    pub fn open(db: Arc<StateDb>, key_file: &Path, name: &str) -> Result<Self, StoreError> {
        let key = LoginKey::read(key_file)?;
        db.block_on(db.migrate())?;
        let (aad, lock_id) = if name == DEFAULT_LOGIN {
            (AAD.as_bytes().to_vec(), REFRESH_LOCK)
        } else {
            let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
            let mixed = i64::from_be_bytes(digest.as_ref()[..8].try_into().unwrap_or_default());
            (format!("{AAD} {name}").into_bytes(), REFRESH_LOCK ^ mixed)
        };
        Ok(Self {
            db,
            key,
            name: name.to_owned(),
            aad,
            lock_id,
        })
    }

    /// The names of the logins in the database.
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let rows = self.db.block_on(async {
            let client = self.db.connect().await?;
            client
                .query("SELECT name FROM keyward_login ORDER BY name", &[])
                .await
                .map_err(|e| query(&self.db, &e))
        })?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Takes the refresh lock: until the returned lock is saved through or dropped, no other
    /// replica can take it. A replica that dies holding it releases it with its connection.
    pub fn lock(self: &Arc<Self>) -> Result<DbLock, StoreError> {
        let store = self.clone();
        self.db.block_on(async move {
            let client = store.db.connect().await?;
            client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| query(&store.db, &e))?;
            client
                .execute("SELECT pg_advisory_xact_lock($1)", &[&store.lock_id])
                .await
                .map_err(|e| query(&store.db, &e))?;
            Ok(DbLock { client, store })
        })
    }

    /// When the login was last written (seconds since the epoch), if there is one: on the
    /// background connection, so it also tells whether the database answers.
    pub fn changed_at(&self) -> Result<Option<f64>, StoreError> {
        let row = self.db.block_on(self.db.with_shared(|client| async move {
            client
                .query_opt(
                    "SELECT extract(epoch FROM updated_at)::float8 FROM keyward_login \
                     WHERE name = $1",
                    &[&self.name],
                )
                .await
        }))?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn read(&self, client: &Client) -> Result<Option<Login>, StoreError> {
        let row = client
            .query_opt(
                "SELECT sealed FROM keyward_login WHERE name = $1",
                &[&self.name],
            )
            .await
            .map_err(|e| query(&self.db, &e))?;
        row.map(|row| self.key.open(row.get::<_, &[u8]>(0), &self.aad))
            .transpose()
    }

    async fn write(&self, client: &Client, login: &Login) -> Result<(), StoreError> {
        let sealed = self.key.seal(login, &self.aad)?;
        client
            .execute(
                "INSERT INTO keyward_login (name, sealed, updated_at) VALUES ($1, $2, now())
                 ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, updated_at = now()",
                &[&self.name, &sealed],
            )
            .await
            .map_err(|e| query(&self.db, &e))?;
        Ok(())
    }
}

impl LoginStore for DatabaseStore {
    fn load(&self) -> Result<Option<Login>, StoreError> {
        self.db.block_on(async {
            let client = self.db.connect().await?;
            self.read(&client).await
        })
    }

    fn save(&self, login: &Login) -> Result<(), StoreError> {
        self.db.block_on(async {
            let client = self.db.connect().await?;
            self.write(&client, login).await
        })
    }

    fn delete(&self) -> Result<bool, StoreError> {
        self.db.block_on(async {
            let client = self.db.connect().await?;
            let deleted = client
                .execute("DELETE FROM keyward_login WHERE name = $1", &[&self.name])
                .await
                .map_err(|e| query(&self.db, &e))?;
            Ok(deleted > 0)
        })
    }

    fn describe(&self) -> String {
        if self.name == DEFAULT_LOGIN {
            format!("the state database {}", self.db.url())
        } else {
            format!("the state database {} (login {})", self.db.url(), self.name)
        }
    }
}

/// The refresh lock, held in an open transaction: read the login, save the refreshed one, and
/// commit, which releases the lock. Dropped uncommitted, its connection closes and the server
/// rolls back.
pub struct DbLock {
    client: Client,
    store: Arc<DatabaseStore>,
}

impl DbLock {
    pub fn load(&self) -> Result<Option<Login>, StoreError> {
        self.store.db.block_on(self.store.read(&self.client))
    }

    /// Saves `login`, within the transaction: it is stored at [`DbLock::commit`].
    pub fn save(&self, login: &Login) -> Result<(), StoreError> {
        self.store
            .db
            .block_on(self.store.write(&self.client, login))
    }

    /// Commits what was saved, and releases the lock.
    pub fn commit(&self) -> Result<(), StoreError> {
        self.store.db.block_on(async {
            self.client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| query(&self.store.db, &e))
        })
    }
}

fn query(db: &StateDb, err: &tokio_postgres::Error) -> StoreError {
    StoreError::State(StateError::Query {
        url: db.url().to_owned(),
        why: crate::upstream::ErrorChain(err).to_string(),
    })
}
