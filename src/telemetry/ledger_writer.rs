//! The ledger's writer thread: ledger lines are handed over in memory and written by a thread of
//! their own, so a slow or stalled disk delays ledger lines, never answers.
//!
//! Nothing is dropped: a failed write is retried every second (with one error logged per
//! episode) until it succeeds, and the lines wait meanwhile. How much may wait is bounded by
//! admission instead: while more than the buffer (`--usage-log-buffer`) waits, new requests are
//! refused with 503 (see [`Appender::is_behind`]) until the disk catches up; the requests already
//! running finish and are recorded.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// At shutdown, how long lines that cannot be written are retried before they are given up on
/// (with an error naming how many).
const GIVE_UP_AT_EXIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Bytes the thread took but has not yet written.
    writing: usize,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    max_pending: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Hands lines to the writer thread. Dropping it writes what is left, then stops the thread.
pub struct Appender {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Appender {
    /// Starts the thread that appends to `out`; `what` names it in error messages.
    pub fn spawn<W: Write + Send + 'static>(
        out: W,
        what: String,
        max_pending: usize,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            wake: Condvar::new(),
            max_pending,
        });
        let thread = std::thread::Builder::new()
            .name("keyward-ledger".into())
            .spawn({
                let shared = shared.clone();
                move || run(&shared, out, &what)
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues one line (with its newline); never waits for the disk.
    pub fn append(&self, line: &[u8]) {
        let mut pending = self.shared.lock();
        let was_empty = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(line);
        drop(pending);
        if was_empty {
            self.shared.wake.notify_one();
        }
    }

    /// Bytes handed over but not yet written.
    pub fn backlog(&self) -> usize {
        let pending = self.shared.lock();
        pending.bytes.len() + pending.writing
    }

    /// Whether more waits than the buffer allows: the disk is not keeping up.
    pub fn is_behind(&self) -> bool {
        self.backlog() > self.shared.max_pending
    }
}

fn run<W: Write>(shared: &Shared, mut out: W, what: &str) {
    let mut batch = Vec::new();
    loop {
        let mut pending = shared.lock();
        while pending.bytes.is_empty() && !pending.closed {
            pending = shared.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
        if pending.bytes.is_empty() {
            return; // closed, all written
        }
        std::mem::swap(&mut batch, &mut pending.bytes);
        pending.writing = batch.len();
        drop(pending);
        write_all_retrying(shared, &mut out, &batch, what);
        batch.clear();
        shared.lock().writing = 0;
    }
}

/// Writes `batch`, retrying after failures: while keyward runs, for as long as it takes; once it
/// is stopping, for [`GIVE_UP_AT_EXIT`].
fn write_all_retrying<W: Write>(shared: &Shared, out: &mut W, batch: &[u8], what: &str) {
    let mut done = 0;
    let mut failing_since: Option<Instant> = None;
    while done < batch.len() {
        match out.write(&batch[done..]).and_then(|n| {
            if n == 0 {
                Err(io::Error::from(io::ErrorKind::WriteZero))
            } else {
                Ok(n)
            }
        }) {
            Ok(n) => {
                done += n;
                shared.lock().writing = batch.len() - done;
                if failing_since.take().is_some() {
                    tracing::info!(ledger = what, "the usage ledger is written again");
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                let since = *failing_since.get_or_insert_with(|| {
                    tracing::error!(
                        ledger = what,
                        error = %err,
                        "could not append to the usage ledger; its lines wait in memory and the \
                         write is retried every second"
                    );
                    Instant::now()
                });
                if shared.lock().closed && since.elapsed() >= GIVE_UP_AT_EXIT {
                    let lost = batch[done..].iter().filter(|&&b| b == b'\n').count();
                    tracing::error!(
                        ledger = what,
                        error = %err,
                        lines = lost,
                        "keyward is stopping and these usage ledger lines could not be written"
                    );
                    return;
                }
                std::thread::sleep(RETRY);
            }
        }
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A disk that takes nothing until the test lets it go, then everything.
    struct Stalled(mpsc::Receiver<()>, Arc<Mutex<Vec<u8>>>, bool);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.2 {
                let _ = self.0.recv();
                self.2 = true;
            }
            self.1.lock().unwrap_or_else(|p| p.into_inner()).extend(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_disk_delays_lines_but_never_the_caller_and_loses_none() {
        let (release, stalled) = mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let appender = Appender::spawn(
            Stalled(stalled, written.clone(), false),
            "test".into(),
            1024,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let started = Instant::now();
        for i in 0..10_000 {
            appender.append(format!("line {i}\n").as_bytes());
        }
        // 10,000 appends against a disk that takes nothing: none of them waited for it.
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(appender.is_behind());
        drop(release);
        drop(appender);
        let text = String::from_utf8(written.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10_000);
        assert_eq!(lines[9_999], "line 9999");
    }

    /// A disk that fails its first writes, then works.
    struct Flaky(u32, Arc<Mutex<Vec<u8>>>);

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 > 0 {
                self.0 -= 1;
                return Err(io::Error::other("disk full"));
            }
            self.1.lock().unwrap_or_else(|p| p.into_inner()).extend(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_is_retried_not_lost() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let appender = Appender::spawn(Flaky(1, written.clone()), "test".into(), 1 << 20)
            .unwrap_or_else(|e| panic!("{e}"));
        appender.append(b"one\n");
        appender.append(b"two\n");
        drop(appender);
        assert_eq!(
            &*written.lock().unwrap_or_else(|p| p.into_inner()),
            b"one\ntwo\n"
        );
    }
}
