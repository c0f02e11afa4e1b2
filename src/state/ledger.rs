//! The usage ledger in the state database (`--state`): each replica's rows go to the
//! `keyward_usage` table, sent in batches by a thread of their own, so the database never holds
//! up an answer.
//!
//! Nothing is lost when the database goes away: rows wait in memory (up to `--usage-log-buffer`
//! worth of rows), and beyond that they are appended to `usage-unsent.jsonl` in the home. When the
//! database answers again, the file is sent and emptied. Every row carries an id unique to its
//! replica, and the table's key is (replica, id), so a row sent twice (an answer lost on the way
//! back, a crash before the file was emptied) is stored once.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::secret::private_file;
pub use crate::state::ledger_rows::{Row, from_table, insert};
use crate::telemetry::ledger::{Entry, LedgerStore};
use crate::upstream::state_db::{StateDb, StateError};

/// Rows per INSERT.
const BATCH: usize = 1000;
/// How long a row may wait for others to be sent with it.
const LINGER: Duration = Duration::from_millis(200);
/// How long a failed send waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// Roughly what one row takes in memory, to turn `--usage-log-buffer` into a row count.
const ROW_BYTES: u64 = 512;

#[derive(Default)]
struct Queue {
    rows: VecDeque<Entry>,
    /// When the oldest row waiting arrived.
    oldest: Option<Instant>,
    closed: bool,
}

struct Inner {
    db: Arc<StateDb>,
    replica: String,
    unsent: PathBuf,
    max_rows: usize,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Rows stored in the table, and rows put in the unsent file, since start.
    sent: AtomicU64,
    spilled: AtomicU64,
    /// The unsent file cannot be written either: memory is all that is left.
    spill_failing: AtomicBool,
}

/// Hands rows to the sending thread. Dropping it sends what it can and puts the rest in the
/// unsent file.
pub struct SharedLedger {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl SharedLedger {
    /// Starts the thread; it first sends what an earlier run left in `unsent`.
    pub fn spawn(
        db: Arc<StateDb>,
        replica: String,
        unsent: PathBuf,
        buffer: u64,
    ) -> std::io::Result<Self> {
        // Rows of the ledger wait here: it must be keyward's own and private, like the ledger.
        if fs::symlink_metadata(&unsent).is_ok() {
            private_file::check(&unsent, false)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        let inner = Arc::new(Inner {
            db,
            replica,
            unsent,
            max_rows: usize::try_from(buffer / ROW_BYTES)
                .unwrap_or(usize::MAX)
                .max(1),
            queue: Mutex::default(),
            wake: Condvar::new(),
            sent: AtomicU64::new(0),
            spilled: AtomicU64::new(0),
            spill_failing: AtomicBool::new(false),
        });
        let thread = std::thread::Builder::new()
            .name("keyward-ledger-db".into())
            .spawn({
                let inner = inner.clone();
                move || run(&inner)
            })?;
        Ok(Self {
            inner,
            thread: Some(thread),
        })
    }

    /// Queues one row; never waits for the database.
    fn push(&self, entry: Entry) {
        let mut queue = self.inner.queue.lock();
        let first = queue.rows.is_empty();
        if first {
            queue.oldest = Some(Instant::now());
        }
        queue.rows.push_back(entry);
        // The thread is woken to start lingering, and again when a batch is full.
        let full = queue.rows.len() == BATCH || queue.rows.len() == self.inner.max_rows + 1;
        drop(queue);
        if first || full {
            self.inner.wake.notify_one();
        }
    }

    /// Rows waiting in memory.
    fn rows_waiting(&self) -> usize {
        self.inner.queue.lock().rows.len()
    }

    /// Neither the database nor the unsent file takes rows and the buffer is full: new
    /// requests must wait.
    fn behind(&self) -> bool {
        self.inner.spill_failing.load(Ordering::Relaxed)
            && self.rows_waiting() > self.inner.max_rows
    }

    /// Rows stored in the table since start.
    pub fn sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    /// Rows put in the unsent file since start (the database was unreachable).
    pub fn spilled(&self) -> u64 {
        self.inner.spilled.load(Ordering::Relaxed)
    }
}

impl LedgerStore for SharedLedger {
    fn append(&self, entry: &Entry) {
        self.push(entry.clone());
    }

    /// Rows waiting in memory for the database.
    fn backlog(&self) -> usize {
        self.rows_waiting()
    }

    /// Neither the database nor the unsent file takes rows, and memory holds all it may.
    fn is_behind(&self) -> bool {
        self.behind()
    }

    fn shipped(&self) -> Option<(u64, u64)> {
        Some((self.sent(), self.spilled()))
    }
}

impl Drop for SharedLedger {
    fn drop(&mut self) {
        self.inner.queue.lock().closed = true;
        self.inner.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(inner: &Inner) {
    let mut unsent_waiting = fs::metadata(&inner.unsent).is_ok_and(|m| m.len() > 0);
    // Set while the database is away: nothing is sent before then.
    let mut retry_at: Option<Instant> = None;
    loop {
        let mut queue = inner.queue.lock();
        loop {
            if queue.closed {
                break;
            }
            match retry_at {
                Some(at) if Instant::now() < at => {
                    if queue.rows.len() > inner.max_rows {
                        break;
                    }
                    let wait = at.saturating_duration_since(Instant::now());
                    inner.wake.wait_for(&mut queue, wait);
                }
                _ => {
                    if unsent_waiting || queue.rows.len() >= BATCH {
                        break;
                    }
                    // Rows linger a moment, so that a busy replica sends few, large batches
                    // (each commit costs the database a WAL flush).
                    let wait = match queue.oldest {
                        Some(at) if at.elapsed() >= LINGER => break,
                        Some(at) => LINGER - at.elapsed(),
                        None if !queue.rows.is_empty() => break,
                        None => Duration::from_secs(3600),
                    };
                    inner.wake.wait_for(&mut queue, wait);
                }
            }
        }
        let closed = queue.closed;
        if !closed && retry_at.is_some_and(|at| Instant::now() < at) {
            // Over the buffer while the database is away: the excess goes to the file.
            let excess = queue.rows.len() - inner.max_rows;
            let over: Vec<Entry> = queue.rows.drain(..excess).collect();
            drop(queue);
            unsent_waiting |= spill_or_keep(inner, over);
            continue;
        }
        drop(queue);
        if unsent_waiting && !closed {
            if send_unsent(inner).is_err() {
                retry_at = Some(Instant::now() + RETRY);
                continue;
            }
            unsent_waiting = false;
        }
        let mut queue = inner.queue.lock();
        if queue.rows.is_empty() {
            if closed {
                return;
            }
            continue;
        }
        let n = queue.rows.len().min(BATCH);
        queue.oldest = (queue.rows.len() > n).then(Instant::now);
        let batch: Vec<Row> = queue
            .rows
            .drain(..n)
            .map(|entry| Row {
                replica: inner.replica.clone(),
                entry,
            })
            .collect();
        drop(queue);
        if inner.db.block_on(insert(&inner.db, &batch)).is_ok() {
            inner.sent.fetch_add(n as u64, Ordering::Relaxed);
            retry_at = None;
            continue;
        }
        retry_at = Some(Instant::now() + RETRY);
        let mut queue = inner.queue.lock();
        for row in batch.into_iter().rev() {
            queue.rows.push_front(row.entry);
        }
        if closed {
            // Stopping with the database away: everything goes to the file.
            let all: Vec<Entry> = queue.rows.drain(..).collect();
            drop(queue);
            if !spill_or_keep(inner, all) {
                tracing::error!(
                    rows = inner.queue.lock().rows.len(),
                    "keyward is stopping and these usage ledger rows could not be kept"
                );
            }
            return;
        }
    }
}

/// Puts `over` in the unsent file; if that fails too, back at the front of the queue. Says
/// whether the file now holds them.
fn spill_or_keep(inner: &Inner, over: Vec<Entry>) -> bool {
    match spill(inner, &over) {
        Ok(()) => {
            inner.spill_failing.store(false, Ordering::Relaxed);
            true
        }
        Err(err) => {
            if !inner.spill_failing.swap(true, Ordering::Relaxed) {
                tracing::error!(path = %inner.unsent.display(), error = %err, rows = over.len(), "could not write ledger rows the state database did not take; they wait in memory");
            }
            let mut queue = inner.queue.lock();
            for entry in over.into_iter().rev() {
                queue.rows.push_front(entry);
            }
            false
        }
    }
}

/// Appends rows to the unsent file (created 0600).
fn spill(inner: &Inner, entries: &[Entry]) -> std::io::Result<()> {
    let mut text = Vec::with_capacity(entries.len() * 400);
    for entry in entries {
        let row = Row {
            replica: inner.replica.clone(),
            entry: entry.clone(),
        };
        serde_json::to_writer(&mut text, &row).map_err(std::io::Error::other)?;
        text.push(b'\n');
    }
    let mut file = private_file::options()
        .append(true)
        .create(true)
        .open(&inner.unsent)?;
    file.write_all(&text)?;
    file.sync_data()?;
    inner
        .spilled
        .fetch_add(entries.len() as u64, Ordering::Relaxed);
    tracing::warn!(
        path = %inner.unsent.display(),
        rows = entries.len(),
        "the state database is unreachable: usage ledger rows beyond the buffer are kept in the \
         home until it is back"
    );
    Ok(())
}

/// Sends the unsent file, then empties it.
fn send_unsent(inner: &Inner) -> Result<(), StateError> {
    let file = match fs::File::open(&inner.unsent) {
        Ok(file) => file,
        Err(_) => return Ok(()),
    };
    let (mut sent, mut bad) = (0u64, 0u64);
    let mut batch = Vec::with_capacity(BATCH);
    for line in BufReader::new(file).split(b'\n') {
        let Ok(line) = line else {
            bad += 1;
            break;
        };
        match serde_json::from_slice::<Row>(&line) {
            Ok(row) => batch.push(row),
            Err(_) if line.is_empty() => {}
            Err(_) => bad += 1,
        }
        if batch.len() == BATCH {
            inner.db.block_on(insert(&inner.db, &batch))?;
            sent += batch.len() as u64;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        inner.db.block_on(insert(&inner.db, &batch))?;
        sent += batch.len() as u64;
    }
    inner.sent.fetch_add(sent, Ordering::Relaxed);
    tracing::info!(rows = sent, path = %inner.unsent.display(), "usage ledger rows kept while the state database was unreachable are now in it");
    if bad > 0 {
        // Lines that do not read are kept, not emptied away: set aside for the operator.
        set_aside(inner, bad);
    } else if let Err(err) = private_file::options()
        .write(true)
        .open(&inner.unsent)
        .and_then(|f| f.set_len(0))
    {
        // Sent but not emptied: the next run sends them again, and the table keeps each once.
        tracing::warn!(path = %inner.unsent.display(), error = %err, "could not empty the unsent ledger file");
    }
    Ok(())
}

/// Renames an unsent file with lines that do not read (a write cut short, damage) out of the way,
/// and says how to import what it holds.
fn set_aside(inner: &Inner, bad: u64) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = inner.unsent.clone().into_os_string();
    aside.push(format!(".unreadable-{secs}"));
    let aside = PathBuf::from(aside);
    match fs::rename(&inner.unsent, &aside) {
        Ok(()) => tracing::error!(
            path = %aside.display(),
            lines = bad,
            "lines of the unsent usage ledger file could not be read; the rows that could are in \
             the state database, and the file is kept as it was under this name: repair it, then \
             `keyward state import --ledger-only --usage-log FILE --replica {}` (rows already \
             there are not added twice)",
            inner.replica
        ),
        Err(err) => {
            tracing::error!(path = %inner.unsent.display(), error = %err, "could not set aside the unsent usage ledger file, whose lines could not all be read")
        }
    }
}
