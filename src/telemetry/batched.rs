//! The one batched writer behind the log and the file ledger: a caller appends its bytes under a
//! short lock and goes on; a thread of its own writes what has gathered in batches, so a request
//! never waits on a file or a pipe, and a busy keyward writes many lines per system call.
//!
//! The thread is woken only when bytes arrive after a quiet spell (or a batch is full, when it
//! gathers): not once per line. What differs between the two users is in [`Settings`] and their
//! [`Output`]: the log gathers for a moment and drops (counted) what stderr cannot take; the
//! ledger writes at once and keeps everything, retrying, while saying it is behind.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A gathering batch this large is written without waiting longer.
pub const BATCH_BYTES: usize = 64 * 1024;

/// How a batched writer behaves.
pub struct Settings {
    /// The thread's name.
    pub thread: &'static str,
    /// How long the first bytes of a batch may wait for more; `None`: written at once.
    pub gather: Option<Duration>,
    /// How many bytes may wait.
    pub max_pending: usize,
    /// Past `max_pending`, appends are dropped and counted (the log); otherwise they are kept
    /// and the writer says it is behind (the ledger).
    pub drop_when_full: bool,
}

/// Where the batches go.
pub trait Output: Send + 'static {
    /// Writes one batch, reporting progress to `batch` as it goes.
    fn write_batch(&mut self, bytes: &[u8], batch: &Batch<'_>);
}

/// One batch being written.
pub struct Batch<'a> {
    shared: &'a Shared,
    /// Appends dropped (the writer was full) since the last batch.
    pub dropped: u64,
}

impl Batch<'_> {
    /// `left` bytes of the batch are still to be written.
    pub fn left(&self, left: usize) {
        self.shared.pending.lock().writing = left;
    }

    /// Whether the writer is being closed (keyward is stopping).
    pub fn closing(&self) -> bool {
        self.shared.pending.lock().closed
    }
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Bytes of the batch being written, not yet written.
    writing: usize,
    closed: bool,
    dropped: u64,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Signals the thread: bytes after a quiet spell, a full batch, or the end.
    wake: Condvar,
    settings: Settings,
}

/// Appends to a batched writer; cloned freely.
#[derive(Clone)]
pub struct Appender {
    shared: Arc<Shared>,
}

/// Writes what is left when dropped, then stops the thread.
pub struct Closer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the thread that writes to `output`.
pub fn spawn(settings: Settings, output: impl Output) -> io::Result<(Appender, Closer)> {
    let name = settings.thread;
    let shared = Arc::new(Shared {
        pending: Mutex::default(),
        wake: Condvar::new(),
        settings,
    });
    let thread = std::thread::Builder::new().name(name.into()).spawn({
        let shared = shared.clone();
        move || run(&shared, output)
    })?;
    Ok((
        Appender {
            shared: shared.clone(),
        },
        Closer {
            shared,
            thread: Some(thread),
        },
    ))
}

impl Appender {
    /// Adds `bytes` to be written; false when they were dropped (a full log).
    pub fn append(&self, bytes: &[u8]) -> bool {
        let settings = &self.shared.settings;
        let mut pending = self.shared.pending.lock();
        if settings.drop_when_full
            && pending.bytes.len() + bytes.len() > settings.max_pending
            && !pending.closed
        {
            pending.dropped += 1;
            return false;
        }
        let was_empty = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(bytes);
        let full = settings.gather.is_some() && pending.bytes.len() >= BATCH_BYTES;
        drop(pending);
        // The thread sleeps only when nothing was pending; a gathering one is woken when full.
        if was_empty || full {
            self.shared.wake.notify_one();
        }
        true
    }

    /// Bytes not yet written.
    pub fn backlog(&self) -> usize {
        let pending = self.shared.pending.lock();
        pending.bytes.len() + pending.writing
    }

    /// More is waiting than the writer should hold.
    pub fn is_behind(&self) -> bool {
        self.backlog() > self.shared.settings.max_pending
    }
}

fn run(shared: &Shared, mut output: impl Output) {
    let mut bytes = Vec::new();
    loop {
        let mut pending = shared.pending.lock();
        while pending.bytes.is_empty() && !pending.closed {
            shared.wake.wait(&mut pending);
        }
        if pending.bytes.is_empty() {
            return; // closed, and everything written
        }
        // Let the batch gather, unless it is already large or keyward is stopping.
        if let Some(gather) = shared.settings.gather {
            let deadline = Instant::now() + gather;
            while pending.bytes.len() < BATCH_BYTES && !pending.closed {
                if shared.wake.wait_until(&mut pending, deadline).timed_out() {
                    break;
                }
            }
        }
        std::mem::swap(&mut bytes, &mut pending.bytes);
        pending.writing = bytes.len();
        let dropped = std::mem::take(&mut pending.dropped);
        drop(pending);
        output.write_batch(&bytes, &Batch { shared, dropped });
        bytes.clear();
        shared.pending.lock().writing = 0;
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.shared.pending.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
