//! The usage ledger: one JSON line per request, appended to a private file by a writer thread
//! ([`crate::telemetry::ledger_writer`]), so a slow disk never holds up an answer. Lines are
//! written as soon as the disk takes them; only a crash of keyward itself loses the few not yet
//! written. A torn last line (the host crashed mid-write) is skipped with a warning when the file
//! is read.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::secret::private_file;
use crate::telemetry::ledger_writer::Appender;
use crate::telemetry::record::Record;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("usage ledger {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("usage ledger {path} {why}")]
    Unsafe { path: PathBuf, why: String },
}

/// One line of the ledger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// RFC 3339, UTC.
    pub time: String,
    /// The same instant in seconds since the Unix epoch.
    pub ts: f64,
    pub client: String,
    /// The credential it was sent with (`api-key`, `chatgpt`, `chatgpt:NAME`); none when keyward
    /// answered itself, and on lines written before keyward named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// What was called (`responses.create`, `responses.retrieve`, `models.list`, ...); lines
    /// written before keyward forwarded more than create have none.
    #[serde(default = "create_endpoint")]
    pub endpoint: String,
    pub model: Option<String>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    /// How the response ended: completed, client_gone, upstream_stream_error,
    /// stream_idle_timeout, no_completed_event.
    pub end: String,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    /// The upstream reported no usage (the client left, or the stream broke, before it came):
    /// the tokens are keyward's estimate from the bytes sent and the text relayed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
    pub duration_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub request_id: Option<String>,
    /// keyward's own id of this line, unique (a random prefix per process, then a count): what
    /// makes sending it to the state database twice harmless. Older lines have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The next line id: this process's random prefix, then a count.
fn next_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 8];
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            // No randomness: the start time and the pid are unique enough on one host.
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes = (nanos ^ u64::from(std::process::id()).rotate_left(40)).to_be_bytes();
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    format!("{prefix}-{}", COUNT.fetch_add(1, Ordering::Relaxed))
}

fn create_endpoint() -> String {
    "responses.create".to_owned()
}

impl Entry {
    pub fn from_record(record: &Record) -> Self {
        let ts = record
            .at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let tokens = record.tokens.unwrap_or_default();
        let millis = |d: std::time::Duration| (d.as_micros() as f64) / 1000.0;
        Entry {
            time: rfc3339(record.at),
            ts,
            client: record.client.to_string(),
            credential: record.credential.as_deref().map(str::to_owned),
            endpoint: record.endpoint.to_owned(),
            model: record.model.clone(),
            status: record.status,
            upstream_status: record.upstream_status,
            end: record.end.as_str().to_owned(),
            input_tokens: tokens.input,
            cached_input_tokens: tokens.cached_input,
            output_tokens: tokens.output,
            reasoning_tokens: tokens.reasoning,
            estimated: record.estimated,
            duration_ms: millis(record.duration),
            ttfb_ms: record.ttfb.map(millis),
            request_id: record.request_id.clone(),
            id: Some(next_id()),
        }
    }
}

/// Where ledger lines are kept: the file ([`Ledger`]) and, with `--state`, the state database's
/// table (`crate::state::ledger::SharedLedger`). Handing a line over never waits; a store that
/// cannot keep up says so, and admission waits for it.
pub trait LedgerStore: Send + Sync {
    /// Hands one line over.
    fn append(&self, entry: &Entry);
    /// Lines (in bytes for the file, rows for the table) handed over and not yet kept.
    fn backlog(&self) -> usize;
    /// So far behind that new requests must wait.
    fn is_behind(&self) -> bool;
    /// For the table: rows stored in it, and rows put in the unsent file, since start.
    fn shipped(&self) -> Option<(u64, u64)> {
        None
    }
}

/// The ledger file, open for appending.
pub struct Ledger {
    path: PathBuf,
    appender: Appender,
}

impl Ledger {
    /// Opens (or creates, 0600) the ledger. An existing file must be keyward's user's own and
    /// private; a symlink is refused.
    /// Lines waiting beyond `buffer` bytes make [`Ledger::is_behind`] true.
    pub fn open(path: &Path, buffer: u64) -> Result<Self, LedgerError> {
        if fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink()) {
            return Err(LedgerError::Unsafe {
                path: path.to_owned(),
                why: "is a symbolic link; keyward writes only to a real file".into(),
            });
        }
        let io_err = |error| LedgerError::Io {
            path: path.to_owned(),
            error,
        };
        let file = private_file::options()
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        let me = crate::secret::hardening::effective_uid();
        if meta.uid() != me {
            return Err(LedgerError::Unsafe {
                path: path.to_owned(),
                why: format!(
                    "is owned by uid {}, not keyward's user (uid {me}); fix with: chown {me} {}",
                    meta.uid(),
                    path.display()
                ),
            });
        }
        if meta.mode() & 0o077 != 0 {
            return Err(LedgerError::Unsafe {
                path: path.to_owned(),
                why: format!(
                    "can be read by other users (mode {:o}); fix with: chmod 600 {}",
                    meta.mode() & 0o777,
                    path.display()
                ),
            });
        }
        let appender = Appender::spawn(
            file,
            path.display().to_string(),
            usize::try_from(buffer).unwrap_or(usize::MAX),
        )
        .map_err(io_err)?;
        Ok(Self {
            path: path.to_owned(),
            appender,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl LedgerStore for Ledger {
    /// Hands one line to the writer thread; never waits for the disk.
    fn append(&self, entry: &Entry) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        self.appender.append(&line);
    }

    /// Bytes of ledger lines not yet on disk.
    fn backlog(&self) -> usize {
        self.appender.backlog()
    }

    /// More waits for the disk than the buffer allows: new requests are refused until it drains.
    fn is_behind(&self) -> bool {
        self.appender.is_behind()
    }
}

/// What reading a ledger ran into.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadStats {
    pub lines: u64,
    /// A last line without its newline: the write was cut short.
    pub torn: u64,
    /// Lines that are not ledger entries.
    pub bad: u64,
}

/// Calls `each` for every entry at or after `since` (seconds since the epoch). Entries are in
/// time order, so the start is found by bisecting the file, and only its tail is read.
pub fn read_since(
    path: &Path,
    since: f64,
    mut each: impl FnMut(Entry),
) -> Result<ReadStats, LedgerError> {
    each_line_since(path, since, |line| {
        match serde_json::from_slice::<Entry>(line) {
            Ok(entry) if entry.ts >= since => {
                each(entry);
                true
            }
            Ok(_) => true,
            Err(_) => false,
        }
    })
}

/// What reading the ledger back at start needs of a line: its figures, its names borrowed from
/// the line where they can be (a million lines are read back in well under a second).
#[derive(Debug, Deserialize)]
pub struct Counted<'a> {
    pub ts: f64,
    #[serde(borrow)]
    pub client: Cow<'a, str>,
    #[serde(borrow, default)]
    pub credential: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    #[serde(borrow)]
    pub end: Cow<'a, str>,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    #[serde(default)]
    pub estimated: bool,
}

/// [`read_since`] for what is counted: `each` gets every line at or after `since`.
pub fn read_counted_since(
    path: &Path,
    since: f64,
    mut each: impl FnMut(&Counted),
) -> Result<ReadStats, LedgerError> {
    each_line_since(path, since, |line| {
        match serde_json::from_slice::<Counted>(line) {
            Ok(counted) if counted.ts >= since => {
                each(&counted);
                true
            }
            Ok(_) => true,
            Err(_) => false,
        }
    })
}

/// Calls `each` with every whole line from the first at or after `since` on; `each` says
/// whether the line was an entry.
fn each_line_since(
    path: &Path,
    since: f64,
    mut each: impl FnMut(&[u8]) -> bool,
) -> Result<ReadStats, LedgerError> {
    let io_err = |error| LedgerError::Io {
        path: path.to_owned(),
        error,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let start = if since > 0.0 {
        first_line_at_or_after(&mut file, len, since).map_err(io_err)?
    } else {
        0
    };
    file.seek(SeekFrom::Start(start)).map_err(io_err)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut stats = ReadStats::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_err)?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            stats.torn += 1;
            tracing::warn!(path = %path.display(), "the usage ledger's last line is incomplete (a write was cut short); skipped");
            break;
        }
        stats.lines += 1;
        if !each(&line) {
            stats.bad += 1;
        }
    }
    if stats.bad > 0 {
        tracing::warn!(path = %path.display(), lines = stats.bad, "usage ledger lines that are not entries were skipped");
    }
    Ok(stats)
}

/// The offset of a line whose entry is at or after `since`, such that no earlier line is
/// (found by bisection over byte offsets; lines that do not parse count as earlier).
fn first_line_at_or_after(file: &mut File, len: u64, since: f64) -> io::Result<u64> {
    let (mut lo, mut hi) = (0u64, len);
    // Invariant: every line starting before `lo` is before `since`; the line starting at or
    // after `hi` (if any) is at or after it.
    while hi - lo > 64 * 1024 {
        let mid = lo + (hi - lo) / 2;
        let Some((line_start, ts)) = next_line_ts(file, mid)? else {
            hi = mid;
            continue;
        };
        if ts.is_some_and(|ts| ts >= since) {
            hi = mid;
        } else {
            lo = line_start.max(mid);
        }
    }
    // Back up to the start of the line `lo` is in.
    if lo == 0 {
        return Ok(0);
    }
    let back = lo.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(back))?;
    let mut buf = vec![0; (lo - back) as usize];
    file.read_exact(&mut buf)?;
    Ok(match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => back + i as u64 + 1,
        None => back,
    })
}

/// The first whole line starting after `offset`: its start and its `ts`.
fn next_line_ts(file: &mut File, offset: u64) -> io::Result<Option<(u64, Option<f64>)>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::new(file);
    let mut skipped = Vec::new();
    let n = reader.read_until(b'\n', &mut skipped)?;
    if n == 0 {
        return Ok(None);
    }
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    let ts = serde_json::from_slice::<Entry>(&line).ok().map(|e| e.ts);
    Ok(Some((offset + n as u64, ts)))
}

/// `2026-11-24T03:04:05.678Z`.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::record::End;
    use crate::telemetry::usage::Tokens;
    use std::io::Write;
    use std::sync::Arc;
    use std::time::Duration;

    fn record(at: SystemTime, output: u64) -> Record {
        Record {
            endpoint: "responses.create",
            at,
            client: Arc::from("alice"),
            credential: Some(Arc::from("api-key")),
            model: Some("gpt-5".into()),
            status: 200,
            upstream_status: Some(200),
            end: End::Completed,
            tokens: Some(Tokens {
                input: 10,
                cached_input: 0,
                output,
                reasoning: 0,
            }),
            estimated: false,
            duration: Duration::from_millis(12),
            ttfb: Some(Duration::from_millis(3)),
            upstream_ttfb: None,
            overhead: None,
            bytes_in: 1,
            bytes_out: 2,
            request_id: Some("req_1".into()),
        }
    }

    #[test]
    fn a_symlink_or_a_loose_mode_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "").unwrap();
        let link = dir.path().join("usage.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = Ledger::open(&link, 1 << 20).err().unwrap().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Ledger::open(&target, 1 << 20).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let at = UNIX_EPOCH + Duration::from_millis(1_795_489_445_678);
        assert_eq!(rfc3339(at), "2026-11-24T03:04:05.678Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_are_read_back_from_a_point_in_time_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.jsonl");
        let ledger = Ledger::open(&path, 1 << 20).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        // Enough lines that the bisection has work to do.
        for i in 0..5000u64 {
            ledger.append(&Entry::from_record(&record(t0 + Duration::from_secs(i), i)));
        }
        // Every line is on disk once the ledger is closed.
        drop(ledger);
        // A write cut short.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"time\":\"2026-")
            .unwrap();

        let since = 1_795_000_000.0 + 4000.0;
        let mut outputs = Vec::new();
        let stats = read_since(&path, since, |e| outputs.push(e.output_tokens)).unwrap();
        assert_eq!(outputs, (4000..5000).collect::<Vec<_>>());
        assert_eq!(stats.torn, 1);
        assert!(
            stats.lines < 5000,
            "only the tail was read: {}",
            stats.lines
        );

        let mut all = 0;
        read_since(&path, 0.0, |_| all += 1).unwrap();
        assert_eq!(all, 5000);
    }
}
