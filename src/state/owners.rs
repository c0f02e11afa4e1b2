//! Response owners in the state database (`--state`), so a response created through one replica
//! can be retrieved, cancelled or continued through another by its creator, and by no one else.
//!
//! Each replica keeps its own in-memory record (and file), and also:
//! - hands every change to a writer task ([`Outbox`]) that stores it in `keyward_owners` in
//!   batches, off the request path (at most [`OUTBOX`] changes wait while the database is away;
//!   beyond that they are dropped, counted, and only this replica knows them);
//! - reads the other replicas' changes every sync interval ([`poll`]);
//! - when asked about an id it does not know (retrieve, cancel, delete, input items), looks it
//!   up in the table first ([`Outbox::lookup`]), since it may have been created a moment ago.
//!
//! A `previous_response_id` is checked against the record in memory only: a response created
//! through another replica can be continued here once this replica's poll has seen it (within
//! one sync interval). A background response polled through two replicas within one sync
//! interval of its end may be charged by both.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::access::owners::{Lookup, OwnersStore};
use crate::access::owners_file::{IdHash, Line};
use crate::upstream::state_db::{StateDb, StateError};

/// Changes that may wait for the database.
const OUTBOX: usize = 100_000;
/// A lookup that finds nothing is tried once more after this (the creating replica's write may
/// still be on its way).
const LOOKUP_AGAIN: Duration = Duration::from_millis(250);
/// The most changes one poll reads.
pub const POLL_LIMIT: usize = 5000;
/// How far back each poll reads again, in changes: a change whose transaction committed after a
/// later one was read is still seen.
const POLL_OVERLAP: i64 = 256;

/// One change to the table.
enum Change {
    Record {
        key: IdHash,
        client: Arc<str>,
        at: u32,
        billed: bool,
    },
    Bill(IdHash),
}

/// Hands changes to the writer; looks ids up.
pub struct Outbox {
    tx: mpsc::Sender<Change>,
    db: Arc<StateDb>,
    dropped: AtomicU64,
}

impl Outbox {
    /// The outbox, and its writer started on the database's runtime.
    pub fn start(db: Arc<StateDb>) -> Self {
        let (tx, rx) = mpsc::channel(OUTBOX);
        db.spawn(write(db.clone(), rx));
        Self {
            tx,
            db,
            dropped: AtomicU64::new(0),
        }
    }

    fn send(&self, change: Change) {
        if self.tx.try_send(change).is_err()
            && self
                .dropped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(10_000)
        {
            tracing::warn!(
                waiting = OUTBOX,
                "the state database is not taking response owners: this replica keeps them, \
                 the others will not see them"
            );
        }
    }

    /// The table's owner of `key` (client, when, charged), asked twice a moment apart.
    async fn find(&self, key: IdHash) -> Option<(String, u32, bool)> {
        for attempt in 0..2 {
            if attempt > 0 {
                tokio::time::sleep(LOOKUP_AGAIN).await;
            }
            let found = self
                .db
                .with_shared(|client| async move {
                    client
                        .query_opt(
                            "SELECT client, at, billed FROM keyward_owners WHERE hash = $1",
                            &[&&key[..]],
                        )
                        .await
                })
                .await;
            match found {
                Ok(Some(row)) => {
                    let at = u32::try_from(row.get::<_, i64>(1)).unwrap_or(0);
                    return Some((row.get(0), at, row.get(2)));
                }
                Ok(None) => {}
                // Unreachable: only what this replica knows counts.
                Err(_) => return None,
            }
        }
        None
    }
}

/// The table: changes sent by the writer task, lookups asked of the database.
impl OwnersStore for Outbox {
    fn record(&self, line: &Line) {
        let (key, entry, client) = line;
        self.send(Change::Record {
            key: *key,
            client: client.clone(),
            at: entry.at,
            billed: entry.billed,
        });
    }

    fn bill(&self, line: &Line) {
        self.send(Change::Bill(line.0));
    }

    /// Changes dropped because the database did not keep up.
    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn lookup(&self, key: IdHash) -> Lookup<'_> {
        Box::pin(self.find(key))
    }
}

/// Stores changes as they come, many at once; while the database is away, they wait.
async fn write(db: Arc<StateDb>, mut rx: mpsc::Receiver<Change>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 1000).await > 0 {
        let mut records = Records::default();
        let mut bills: Vec<Vec<u8>> = Vec::new();
        for change in batch.drain(..) {
            match change {
                Change::Record {
                    key,
                    client,
                    at,
                    billed,
                } => records.push(key, &client, at, billed),
                Change::Bill(key) => bills.push(key.to_vec()),
            }
        }
        let mut delay = Duration::from_secs(1);
        while store(&db, &records, &bills).await.is_err() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

#[derive(Default)]
struct Records {
    keys: Vec<Vec<u8>>,
    clients: Vec<String>,
    ats: Vec<i64>,
    billed: Vec<bool>,
}

impl Records {
    fn push(&mut self, key: IdHash, client: &str, at: u32, billed: bool) {
        self.keys.push(key.to_vec());
        self.clients.push(client.to_owned());
        self.ats.push(i64::from(at));
        self.billed.push(billed);
    }
}

async fn store(db: &StateDb, records: &Records, bills: &[Vec<u8>]) -> Result<(), StateError> {
    db.with_shared(|client| async move {
        if !records.keys.is_empty() {
            client
                .execute(
                    "INSERT INTO keyward_owners (hash, client, at, billed) \
                     SELECT * FROM unnest($1::bytea[], $2::text[], $3::int8[], $4::bool[]) \
                     ON CONFLICT (hash) DO NOTHING",
                    &[
                        &records.keys,
                        &records.clients,
                        &records.ats,
                        &records.billed,
                    ],
                )
                .await?;
        }
        if !bills.is_empty() {
            client
                .execute(
                    "UPDATE keyward_owners SET billed = true, \
                     seq = nextval('keyward_owners_seq') WHERE hash = ANY($1) AND NOT billed",
                    &[&bills],
                )
                .await?;
        }
        Ok(())
    })
    .await
}

/// One owner as the table has it.
pub struct Owned {
    pub key: IdHash,
    pub client: String,
    pub at: u32,
    pub billed: bool,
}

/// The changes after `seq` (less an overlap), oldest first, at most [`POLL_LIMIT`]; and the highest
/// `seq` read.
pub async fn poll(db: &StateDb, seq: i64) -> Result<(Vec<Owned>, i64), StateError> {
    let rows = db
        .with_shared(|client| async move {
            client
                .query(
                    "SELECT hash, client, at, billed, seq FROM keyward_owners \
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&(seq - POLL_OVERLAP).max(0), &(POLL_LIMIT as i64)],
                )
                .await
        })
        .await?;
    let mut last = seq;
    let mut owned = Vec::with_capacity(rows.len());
    for row in &rows {
        let bytes: &[u8] = row.get(0);
        let Ok(key) = IdHash::try_from(bytes) else {
            continue;
        };
        owned.push(Owned {
            key,
            client: row.get(1),
            at: u32::try_from(row.get::<_, i64>(2)).unwrap_or(0),
            billed: row.get(3),
        });
        last = last.max(row.get(4));
    }
    Ok((owned, last))
}

/// Removes the owners older than `oldest` (seconds since the epoch).
pub async fn expire(db: &StateDb, oldest: u32) -> Result<u64, StateError> {
    db.with_shared(|client| async move {
        client
            .execute(
                "DELETE FROM keyward_owners WHERE at < $1",
                &[&i64::from(oldest)],
            )
            .await
    })
    .await
}
