//! Who created each stored response. With one credential shared by many clients, anyone who
//! learnt a response id could read, cancel or delete another client's response; keyward records
//! which client (token name, else user name) each response id it relayed belongs to, and serves
//! retrieve, cancel, delete and input items only to that client.
//!
//! The record lives in memory, keyed by a 128-bit hash of the id (the ids themselves are not
//! kept), and in `response-owners` in keyward's home ([`crate::access::owners_file`]), so a
//! restart keeps it. Entries expire after `--ownership-ttl` (30 days, as long as the API keeps a
//! stored response). Size: about 60 bytes of file and 30 to 70 bytes of memory per response
//! (`bench/results/2026-12-01-ownership.md`).
//!
//! The same record says whether a response's usage has been charged yet: a background response
//! reports its usage only when it finishes, to whoever retrieves it then, and is charged once.

use std::sync::Arc;

use std::time::Duration;

use parking_lot::Mutex;

use crate::access::owners_file::IdHash;
use crate::access::owners_file::{
    Entry, Line, OwnersError, OwnersFile, Table, Writer, now, oldest,
};
use crate::config::responses::Ownership;
use crate::credential::chatgpt::home::HomeError;

/// Where the record's changes are kept: the file in keyward's home
/// ([`crate::access::owners_file::Writer`]) and, with `--state`, the state database's table
/// (`crate::state::owners::Outbox`). Neither may make a request wait.
pub trait OwnersStore: Send + Sync {
    /// A response recorded as its client's.
    fn record(&self, line: &Line);
    /// A response's usage marked charged.
    fn bill(&self, line: &Line);
    /// Changes it dropped because it could not keep up.
    fn dropped(&self) -> u64 {
        0
    }
    /// Its owner of `key` (client, when, charged): what another replica recorded.
    fn lookup(&self, _key: IdHash) -> Lookup<'_> {
        Box::pin(std::future::ready(None))
    }
}

/// The file: every change appended by its writer thread.
impl OwnersStore for Writer {
    fn record(&self, line: &Line) {
        self.append(line.clone());
    }

    fn bill(&self, line: &Line) {
        self.append(line.clone());
    }
}

/// A store's answer to [`OwnersStore::lookup`].
pub type Lookup<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<(String, u32, bool)>> + Send + 'a>>;

/// The record of response owners, shared by every worker.
pub struct Owners {
    table: Arc<Mutex<Table>>,
    ttl: Duration,
    enforce: bool,
    writer: Writer,
    /// With `--state`: where changes go to be shared with the other replicas.
    shared: std::sync::OnceLock<Box<dyn OwnersStore>>,
}

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owners")
            .field("responses", &self.len())
            .field("enforce", &self.enforce)
            .finish_non_exhaustive()
    }
}

impl Owners {
    /// Reads the record (creating it, 0600, in a home made 0700), drops expired entries, and
    /// starts the thread that appends to it.
    ///
    /// Where the record cannot be kept (no home, or one keyward may not create), it is kept in
    /// memory only, with a warning: a restart then forgets every owner, and their responses are
    /// refused to everyone. A record that exists but is unsafe (another owner, readable by
    /// others) or does not read is an error.
    pub fn open(settings: &Ownership) -> Result<Arc<Self>, OwnersError> {
        let opened = match &settings.file {
            Some(path) => OwnersFile::open(path, oldest(settings.ttl)).map(Some),
            None => {
                tracing::warn!(
                    "keyward has no home (no --home, KEYWARD_HOME or HOME): the record of who created each response is kept in memory only, and a restart forgets it"
                );
                Ok(None)
            }
        };
        let (file, table) = match opened {
            Ok(Some((file, table))) => (Some(file), table),
            Ok(None) => (None, Table::default()),
            Err(OwnersError::Home(HomeError::Io { path, error })) if cannot_create(&error) => {
                tracing::warn!(path = %path.display(), error = %error, "the record of who created each response cannot be kept here: it is kept in memory only, and a restart forgets it; give keyward a home it can write (--home DIR)");
                (None, Table::default())
            }
            Err(err) => return Err(err),
        };
        let table = Arc::new(Mutex::new(table));
        Ok(Arc::new(Owners {
            writer: Writer::spawn(file, Arc::downgrade(&table), settings.ttl),
            table,
            ttl: settings.ttl,
            enforce: settings.enforce,
            shared: std::sync::OnceLock::new(),
        }))
    }

    /// Where changes are kept: the file, and with `--state` the database.
    fn stores(&self) -> impl Iterator<Item = &dyn OwnersStore> {
        std::iter::once(&self.writer as &dyn OwnersStore).chain(self.shared.get().map(|s| &**s))
    }

    /// From now on, changes are also kept in `shared` (the state database's table).
    pub fn share(&self, shared: Box<dyn OwnersStore>) {
        let _ = self.shared.set(shared);
    }

    /// The state database's view of `id` (read by a replica's poll or lookup): kept in memory,
    /// not written to this replica's file or sent back.
    pub fn merge(&self, key: IdHash, client: &str, at: u32, billed: bool) {
        if at < self.oldest() {
            return;
        }
        let mut table = self.table.lock();
        let client = table.client_index(client);
        let entry = table
            .entries
            .entry(key)
            .or_insert(Entry { at, client, billed });
        entry.billed |= billed;
    }

    /// With `--state`: changes the database did not take in time, which only this replica knows.
    pub fn unshared(&self) -> u64 {
        self.shared.get().map_or(0, |shared| shared.dropped())
    }

    /// Whether `key` is remembered.
    pub fn knows(&self, key: &IdHash) -> bool {
        self.table.lock().entries.contains_key(key)
    }

    /// Records that `client` created the response `id`. An id already recorded keeps its owner.
    pub fn record(&self, id: &str, client: &str, billed: bool) {
        let key = hash(id);
        let line = {
            let mut table = self.table.lock();
            if table.entries.contains_key(&key) {
                return;
            }
            let entry = Entry {
                at: now(),
                client: table.client_index(client),
                billed,
            };
            table.entries.insert(key, entry);
            (key, entry, Arc::from(client))
        };
        for store in self.stores() {
            store.record(&line);
        }
    }

    /// Whether `client` may use the response `id`: it created it and the entry has not expired.
    /// Always true with `--no-ownership`.
    pub fn permits(&self, id: &str, client: &str) -> bool {
        !self.enforce || self.owner(id).is_some_and(|owner| &*owner == client)
    }

    /// [`Owners::permits`], asking the state database first when this replica does not know
    /// `id` (another replica may have created it a moment ago).
    pub async fn permits_shared(&self, id: &str, client: &str) -> bool {
        if !self.enforce || self.permits(id, client) {
            return true;
        }
        let key = hash(id);
        if let Some(shared) = self.shared.get()
            && !self.knows(&key)
            && let Some((owner, at, billed)) = shared.lookup(key).await
        {
            self.merge(key, &owner, at, billed);
            return self.permits(id, client);
        }
        false
    }

    /// Whether stored responses are refused to all but their creator (no `--no-ownership`).
    pub fn enforced(&self) -> bool {
        self.enforce
    }

    /// Who created `id`, if keyward relayed it within the time it remembers.
    pub fn owner(&self, id: &str) -> Option<Arc<str>> {
        let table = self.table.lock();
        let entry = table.entries.get(&hash(id))?;
        if entry.at < self.oldest() {
            return None;
        }
        table.clients.get(entry.client as usize).cloned()
    }

    /// Marks the response's usage charged; true if it was not before (so the caller charges it
    /// now). An id keyward does not know is never charged here: its creation was.
    pub fn bill(&self, id: &str) -> bool {
        let key = hash(id);
        let line = {
            let mut table = self.table.lock();
            let Some(entry) = table.entries.get_mut(&key) else {
                return false;
            };
            if entry.billed {
                return false;
            }
            entry.billed = true;
            let entry = *entry;
            let client = table.clients.get(entry.client as usize).cloned();
            (key, entry, client.unwrap_or_else(|| Arc::from("unknown")))
        };
        for store in self.stores() {
            store.bill(&line);
        }
        true
    }

    /// How many responses are remembered.
    pub fn len(&self) -> usize {
        self.table.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Seconds since the epoch before which an entry has expired.
    fn oldest(&self) -> u32 {
        oldest(self.ttl)
    }
}

/// A home or record keyward may not create or open: not a fault in them, just not usable.
fn cannot_create(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::PermissionDenied
            | ErrorKind::NotFound
            | ErrorKind::NotADirectory
            | ErrorKind::ReadOnlyFilesystem
    )
}

/// The first 128 bits of the id's SHA-256.
pub fn hash(id: &str) -> IdHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut key = [0; 16];
    key.copy_from_slice(&digest.as_ref()[..16]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn settings(dir: &std::path::Path, ttl: Duration) -> Ownership {
        Ownership {
            file: Some(dir.join("home").join("response-owners")),
            ttl,
            enforce: true,
        }
    }

    #[test]
    fn the_creator_alone_is_permitted_and_a_reopened_record_remembers() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path(), Duration::from_secs(86_400));
        let owners = Owners::open(&settings).unwrap();
        owners.record("resp_a", "alice", false);
        owners.record("resp_a", "bob", false);
        assert!(owners.permits("resp_a", "alice"));
        assert!(!owners.permits("resp_a", "bob"));
        assert!(!owners.permits("resp_unknown", "alice"));
        assert!(owners.bill("resp_a"));
        assert!(!owners.bill("resp_a"));
        drop(owners);

        let file = settings.file.as_ref().unwrap();
        let meta = std::fs::metadata(file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(file).unwrap();
        assert!(!text.contains("resp_a"), "ids are stored hashed: {text}");

        let owners = Owners::open(&settings).unwrap();
        assert_eq!(owners.owner("resp_a").as_deref(), Some("alice"));
        assert!(!owners.bill("resp_a"), "the charge survives a restart");
        let open = Owners::open(&Ownership {
            enforce: false,
            ..settings
        })
        .unwrap();
        assert!(open.permits("resp_a", "bob"), "--no-ownership");
    }

    #[test]
    fn a_corrupt_or_unsafe_record_is_refused_with_the_fix_and_a_cut_last_line_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path(), Duration::from_secs(86_400));
        let file = settings.file.clone().unwrap();
        Owners::open(&settings)
            .unwrap()
            .record("resp_a", "alice", false);
        let good = std::fs::read_to_string(&file).unwrap();

        std::fs::write(&file, format!("{good}garbage line\n")).unwrap();
        let err = Owners::open(&settings).unwrap_err().to_string();
        assert!(
            err.contains("line 3") && err.contains("repair or remove"),
            "{err}"
        );

        // keyward stopped mid-line: that line is skipped, the rest is kept.
        std::fs::write(&file, format!("{good}1764000000 00ff")).unwrap();
        let owners = Owners::open(&settings).unwrap();
        assert_eq!(owners.owner("resp_a").as_deref(), Some("alice"));
        drop(owners);

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Owners::open(&settings).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn without_a_usable_home_the_record_is_kept_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("not-a-dir");
        std::fs::write(&blocked, "").unwrap();
        for file in [None, Some(blocked.join("home").join("response-owners"))] {
            let owners = Owners::open(&Ownership {
                file,
                ttl: Duration::from_secs(60),
                enforce: true,
            })
            .unwrap();
            owners.record("resp_a", "alice", false);
            assert!(owners.permits("resp_a", "alice") && !owners.permits("resp_a", "bob"));
        }
    }
}
