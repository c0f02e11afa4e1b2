//! The ledger's writer: ledger lines are handed over in memory and written by the batched
//! writer's thread ([`crate::telemetry::batched`]), so a slow or stalled disk delays ledger
//! lines, never answers.
//!
//! Nothing is dropped: a failed write is retried every second (with one error logged per
//! episode) until it succeeds, and the lines wait meanwhile. How much may wait is bounded by
//! admission instead: while more than the buffer (`--usage-log-buffer`) waits, new requests are
//! refused with 503 (see [`Appender::is_behind`]) until the disk catches up; the requests already
//! running finish and are recorded.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::telemetry::batched::{self, Batch, Closer, Output, Settings};

/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// At shutdown, how long lines that cannot be written are retried before they are given up on
/// (with an error naming how many).
const GIVE_UP_AT_EXIT: Duration = Duration::from_secs(10);

/// Hands ledger lines to the writer thread. Dropping it writes what waits (retrying as above),
/// then stops the thread.
pub struct Appender {
    appender: batched::Appender,
    _closer: Closer,
}

impl Appender {
    /// Starts the thread that appends to `out` (`what` names the ledger in log lines); more than
    /// `max_pending` bytes waiting makes the ledger [behind](Self::is_behind).
    pub fn spawn<W: Write + Send + 'static>(
        out: W,
        what: String,
        max_pending: usize,
    ) -> io::Result<Self> {
        let settings = Settings {
            thread: "keyward-ledger",
            gather: None,
            max_pending,
            drop_when_full: false,
        };
        let (appender, closer) = batched::spawn(settings, Ledger { out, what })?;
        Ok(Self {
            appender,
            _closer: closer,
        })
    }

    /// Queues whole lines; never blocks on the disk.
    pub fn append(&self, line: &[u8]) {
        self.appender.append(line);
    }

    /// Bytes handed over and not yet written.
    pub fn backlog(&self) -> usize {
        self.appender.backlog()
    }

    /// More than the buffer waits: the disk is not keeping up.
    pub fn is_behind(&self) -> bool {
        self.appender.is_behind()
    }
}

/// The ledger's file: every batch written whole, retried until it is.
struct Ledger<W> {
    out: W,
    what: String,
}

impl<W: Write + Send + 'static> Output for Ledger<W> {
    fn write_batch(&mut self, bytes: &[u8], batch: &Batch<'_>) {
        let what = self.what.as_str();
        let mut done = 0;
        let mut failing_since: Option<Instant> = None;
        while done < bytes.len() {
            match self.out.write(&bytes[done..]).and_then(|n| {
                if n == 0 {
                    Err(io::Error::from(io::ErrorKind::WriteZero))
                } else {
                    Ok(n)
                }
            }) {
                Ok(n) => {
                    done += n;
                    batch.left(bytes.len() - done);
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
                            "could not append to the usage ledger; its lines wait in memory and \
                             the write is retried every second"
                        );
                        Instant::now()
                    });
                    if batch.closing() && since.elapsed() >= GIVE_UP_AT_EXIT {
                        let lost = bytes[done..].iter().filter(|&&b| b == b'\n').count();
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use parking_lot::Mutex;
    use std::sync::mpsc;

    /// A disk that takes nothing until the test lets it go, then everything.
    struct Stalled(mpsc::Receiver<()>, Arc<Mutex<Vec<u8>>>, bool);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.2 {
                let _ = self.0.recv();
                self.2 = true;
            }
            self.1.lock().extend(buf);
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
        let text = String::from_utf8(written.lock().clone()).unwrap_or_default();
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
            self.1.lock().extend(buf);
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
        assert_eq!(&*written.lock(), b"one\ntwo\n");
    }
}
