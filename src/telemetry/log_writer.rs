//! Where log lines go: the batched writer ([`crate::telemetry::batched`]) to stderr.
//!
//! A request appends its line under a short lock and goes on; it never waits on stderr and never
//! wakes another thread, except to start a batch after a quiet spell. The thread writes what has
//! gathered at most [`BATCH_DELAY`] after its first line, or at once when a batch reaches
//! [`BATCH_BYTES`].
//!
//! The log never holds up a request: should stderr stall (a pipe nobody reads, a paused pager, a
//! stuck journald) until the buffer is full (`--log-buffer`, 8 MiB by default), further lines are
//! dropped and counted ([`dropped_lines`], `keyward_log_lines_dropped_total`), and once stderr
//! takes lines again one line says how many were lost.
//!
//! (tracing-appender's non-blocking writer woke its thread for every line: a futex wake and a
//! context switch per request, about a sixth of keyward's added latency on one connection.)

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

pub use crate::telemetry::batched::BATCH_BYTES;
use crate::telemetry::batched::{self, Appender, Batch, Closer, Output, Settings};

/// How long the first line of a batch may wait for others.
pub const BATCH_DELAY: Duration = Duration::from_millis(50);
/// How much may wait for stderr by default; past it, lines are dropped.
pub const DEFAULT_MAX_PENDING: usize = 8 * 1024 * 1024;

/// Lines dropped since the process started, every writer together.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// How many log lines were dropped because stderr did not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The [`MakeWriter`] handed to the log subscriber.
#[derive(Clone)]
pub struct BatchWriter {
    appender: Appender,
}

/// Writes what is left when dropped, then stops the thread. Keep it until the process ends.
pub struct FlushGuard {
    _closer: Closer,
}

/// stderr, or what stands in for it.
struct Stderr<W>(W);

impl<W: Write + Send + 'static> Output for Stderr<W> {
    fn write_batch(&mut self, bytes: &[u8], batch: &Batch<'_>) {
        // Nothing to do about a failed write to stderr: the lines are lost either way.
        let _ = self.0.write_all(bytes).and_then(|()| self.0.flush());
        if batch.dropped > 0 {
            // stderr moves again. Logged like any line (it reaches the buffer, not `out`).
            tracing::warn!(
                dropped = batch.dropped,
                "log lines were dropped: stderr was not read fast enough (see --log-buffer)"
            );
        }
    }
}

/// Starts the thread that writes batches to `out`, holding at most `max_pending` bytes for it.
pub fn spawn<W: Write + Send + 'static>(
    out: W,
    max_pending: usize,
) -> io::Result<(BatchWriter, FlushGuard)> {
    let settings = Settings {
        thread: "keyward-log",
        gather: Some(BATCH_DELAY),
        max_pending,
        drop_when_full: true,
    };
    let (appender, closer) = batched::spawn(settings, Stderr(out))?;
    Ok((BatchWriter { appender }, FlushGuard { _closer: closer }))
}

impl Write for &BatchWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.appender.append(buf) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = &'a BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use parking_lot::Mutex;
    use std::time::Instant;

    /// An output the test can read while the thread writes to it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().extend(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock()).into_owned()
        }
    }

    #[test]
    fn a_lone_line_is_written_soon_and_all_lines_by_the_end() {
        let sink = Sink::default();
        let (writer, guard) =
            spawn(sink.clone(), DEFAULT_MAX_PENDING).unwrap_or_else(|e| panic!("{e}"));
        (&writer)
            .write_all(b"first\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let start = Instant::now();
        while !sink.text().contains("first") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "line never written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        let line = format!("thread {t} line {i}\n");
                        (&writer)
                            .write_all(line.as_bytes())
                            .unwrap_or_else(|e| panic!("{e}"));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread
                .join()
                .unwrap_or_else(|_| panic!("writer thread panicked"));
        }
        drop(guard);
        let text = sink.text();
        assert_eq!(text.lines().count(), 40_001);
        for t in 0..4 {
            // Each thread's lines arrive whole and in its order.
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            assert_eq!(mine.len(), 10_000);
            for (i, line) in mine.iter().enumerate() {
                assert_eq!(*line, format!("thread {t} line {i}"));
            }
        }
    }

    /// Stderr that blocks until the test lets it go.
    struct Stalled(std::sync::mpsc::Receiver<()>, Sink);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            self.1.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_stderr_never_holds_writers_back_and_drops_what_does_not_fit() {
        let sink = Sink::default();
        let (release, stalled) = std::sync::mpsc::channel();
        let max_pending = 64 * 1024;
        let (writer, guard) =
            spawn(Stalled(stalled, sink.clone()), max_pending).unwrap_or_else(|e| panic!("{e}"));
        let line = [b'x'; 1023]
            .iter()
            .chain(b"\n")
            .copied()
            .collect::<Vec<u8>>();
        let lines = 3 * max_pending / line.len();
        let dropped_before = dropped_lines();
        let (done_tx, done) = std::sync::mpsc::channel();
        let producer = std::thread::spawn(move || {
            for _ in 0..lines {
                (&writer).write_all(&line).unwrap_or_else(|e| panic!("{e}"));
            }
            let _ = done_tx.send(());
        });
        // Three times the buffer, while stderr takes nothing: the writer still goes on at once.
        done.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("the writer was held back by a stalled stderr: {e}"));
        producer
            .join()
            .unwrap_or_else(|_| panic!("writer thread panicked"));
        // The thread holds one batch while stalled; the buffer holds the rest it could.
        let lost = dropped_lines() - dropped_before;
        assert!(
            lost >= (lines - 2 * max_pending / 1024) as u64,
            "only {lost} of {lines} lines were dropped"
        );
        drop(release);
        drop(guard);
        let written = sink.0.lock().len();
        assert!(written > 0 && written <= 2 * max_pending, "{written}");
    }
}
