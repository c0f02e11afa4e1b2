//! The ownership record on disk: `response-owners` in keyward's home, 0600, one line per change
//! (`<seconds> <id hash> <charged 0|1> <client>`, a later line about an id replacing an earlier
//! one) under a header line. A thread of its own appends, so a slow disk never holds up a
//! request, and rewrites the file without the expired and replaced lines once they are more than
//! half of it (and at start).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::credential::chatgpt::home::{Home, HomeError};
use crate::secret::private_file;

const HEADER: &str = "keyward response owners 1";
/// How often the writer looks for expired entries when nothing else happens.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// Lines beyond the live entries tolerated before a rewrite.
const SLACK: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum OwnersError {
    #[error("the record of response owners: {0}")]
    Home(#[from] HomeError),
    #[error(
        "the record of response owners {}, line {line}: {why}; repair or remove the file \
         (removing it forgets who created which response: they are then refused to everyone)",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// A response id's hash: the first 128 bits of its SHA-256.
pub type IdHash = [u8; 16];

/// What is remembered of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// When keyward first saw it, in seconds since the epoch.
    pub at: u32,
    /// Index into the client names.
    pub client: u32,
    /// Its usage has been charged.
    pub billed: bool,
}

/// The table, as the file holds it and memory does.
#[derive(Debug, Default)]
pub struct Table {
    pub entries: HashMap<IdHash, Entry>,
    pub clients: Vec<Arc<str>>,
    index: HashMap<Arc<str>, u32>,
}

impl Table {
    /// The index of `client`'s name, added if new.
    pub fn client_index(&mut self, client: &str) -> u32 {
        if let Some(&i) = self.index.get(client) {
            return i;
        }
        let name: Arc<str> = Arc::from(client);
        let i = u32::try_from(self.clients.len()).unwrap_or(u32::MAX);
        self.clients.push(name.clone());
        self.index.insert(name, i);
        i
    }

    /// Drops the entries older than `oldest` (seconds since the epoch); says how many went.
    pub fn expire(&mut self, oldest: u32) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, entry| entry.at >= oldest);
        before - self.entries.len()
    }
}

/// Seconds since the epoch (fits in 32 bits until 2106).
pub fn now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// Seconds since the epoch before which an entry older than `ttl` has expired.
pub fn oldest(ttl: Duration) -> u32 {
    let ttl = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
    now().saturating_sub(ttl)
}

/// One change to append: the id's hash, its entry, and its client's name.
pub type Line = (IdHash, Entry, Arc<str>);

/// The open file and where it is.
pub struct OwnersFile {
    path: PathBuf,
    file: File,
    /// Lines in the file, header excluded.
    lines: usize,
}

impl OwnersFile {
    /// Opens (or creates) the record at `path` and reads it; entries older than `oldest` are
    /// dropped, and the file rewritten if any were.
    pub fn open(path: &Path, oldest: u32) -> Result<(Self, Table), OwnersError> {
        let io_err = |error| HomeError::Io {
            path: path.to_owned(),
            error,
        };
        if let Some(dir) = path.parent() {
            Home::open(dir)?;
        }
        let file = private_file::options()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err)?;
        private_file::check(path, false).map_err(HomeError::from)?;
        let (mut table, lines) = read(path, &file)?;
        let mut owners = Self {
            path: path.to_owned(),
            file,
            lines,
        };
        let expired = table.expire(oldest);
        if lines == 0 || expired > 0 || lines > table.entries.len() {
            owners
                .rewrite(&table.entries, &table.clients)
                .map_err(io_err)?;
        }
        Ok((owners, table))
    }

    fn append(&mut self, lines: &[Line]) -> io::Result<()> {
        let mut text = String::new();
        for line in lines {
            push_line(&mut text, line);
        }
        self.file.write_all(text.as_bytes())?;
        self.lines += lines.len();
        Ok(())
    }

    /// Replaces the file with `entries`, through a new file renamed over it.
    fn rewrite(
        &mut self,
        entries: &HashMap<IdHash, Entry>,
        clients: &[Arc<str>],
    ) -> io::Result<()> {
        let mut text = format!("{HEADER}\n");
        for (key, entry) in entries {
            let client = clients.get(entry.client as usize);
            push_line(
                &mut text,
                &(*key, *entry, client.cloned().unwrap_or_default()),
            );
        }
        let temporary = self.path.with_extension("new");
        let _ = fs::remove_file(&temporary);
        let mut new = private_file::options()
            .write(true)
            .create_new(true)
            .open(&temporary)?;
        new.write_all(text.as_bytes())?;
        new.sync_all()?;
        fs::rename(&temporary, &self.path)?;
        self.file = private_file::options().append(true).open(&self.path)?;
        self.lines = entries.len();
        Ok(())
    }
}

fn push_line(text: &mut String, (key, entry, client): &Line) {
    use std::fmt::Write as _;
    // A name that would break the line is not written (it cannot come from a token or a user
    // name); the entry still holds in memory.
    if client.contains(['\n', '\r']) {
        return;
    }
    let _ = write!(text, "{} ", entry.at);
    for byte in key {
        let _ = write!(text, "{byte:02x}");
    }
    let _ = writeln!(text, " {} {client}", u8::from(entry.billed));
}

/// The table in the file, and how many lines it had. A last line cut short (keyward stopped
/// mid-write) is skipped; any other line that does not read is an error.
fn read(path: &Path, file: &File) -> Result<(Table, usize), OwnersError> {
    let corrupt = |line: usize, why: &str| OwnersError::Corrupt {
        path: path.to_owned(),
        line,
        why: why.to_owned(),
    };
    let mut table = Table::default();
    let mut reader = BufReader::new(file);
    let mut lines = 0;
    let mut number = 0;
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf).map_err(|error| {
            OwnersError::Home(HomeError::Io {
                path: path.to_owned(),
                error,
            })
        })?;
        if n == 0 {
            break;
        }
        number += 1;
        let Some(line) = buf.strip_suffix('\n') else {
            tracing::warn!(path = %path.display(), line = number, "the record of response owners ends in a cut line; skipped");
            break;
        };
        if number == 1 {
            if line != HEADER {
                return Err(corrupt(1, "it does not start with keyward's header"));
            }
            continue;
        }
        let (key, entry, client) = parse(line).ok_or_else(|| {
            corrupt(
                number,
                "expected `<seconds> <32 hex digits> <0|1> <client>`",
            )
        })?;
        let entry = Entry {
            client: table.client_index(client),
            ..entry
        };
        table.entries.insert(key, entry);
        lines += 1;
    }
    Ok((table, lines))
}

fn parse(line: &str) -> Option<(IdHash, Entry, &str)> {
    let mut fields = line.splitn(4, ' ');
    let at = fields.next()?.parse().ok()?;
    let hex = fields.next()?;
    let billed = match fields.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    let client = fields.next().filter(|c| !c.is_empty())?;
    if hex.len() != 32 {
        return None;
    }
    let mut key = [0; 16];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let entry = Entry {
        at,
        client: 0,
        billed,
    };
    Some((key, entry, client))
}

/// The appending thread's handle: dropping it writes what is queued, then stops the thread.
pub struct Writer {
    sender: Option<mpsc::Sender<Line>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread that appends to `file`; it rewrites the file from `owners`' table when
    /// needed. Without a file, changes are kept in memory only.
    pub fn spawn(file: Option<OwnersFile>, table: Weak<Mutex<Table>>, ttl: Duration) -> Self {
        let Some(file) = file else {
            return Self {
                sender: None,
                thread: None,
            };
        };
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("keyward-owners".into())
            .spawn(move || run(file, &receiver, &table, ttl))
            .map_err(|err| tracing::error!(error = %err, "could not start the writer of the record of response owners; it is kept in memory only"))
            .ok();
        Self {
            sender: thread.as_ref().map(|_| sender),
            thread,
        }
    }

    pub fn append(&self, line: Line) {
        if let Some(sender) = &self.sender {
            let _ = sender.send(line);
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    mut file: OwnersFile,
    receiver: &mpsc::Receiver<Line>,
    table: &Weak<Mutex<Table>>,
    ttl: Duration,
) {
    let mut failing = false;
    let mut swept = Instant::now();
    loop {
        let first = match receiver.recv_timeout(SWEEP_EVERY.saturating_sub(swept.elapsed())) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let batch: Vec<Line> = first.into_iter().chain(receiver.try_iter()).collect();
        let sweep = swept.elapsed() >= SWEEP_EVERY;
        if sweep {
            swept = Instant::now();
        }
        let result = file
            .append(&batch)
            .and_then(|()| maintain(&mut file, table, ttl, sweep));
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(path = %file.path.display(), "the record of response owners is written again");
            }
            Ok(()) => {}
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(path = %file.path.display(), error = %err, "could not write the record of response owners; owners are kept in memory, and lost at a restart until it can be written");
            }
            Err(_) => {}
        }
    }
}

/// Hourly (`sweep`), drops expired entries; rewrites the file when that dropped any, or when
/// superseded lines have made it more than twice the table. The table is held only while it is
/// swept or copied, never while the disk writes.
fn maintain(
    file: &mut OwnersFile,
    table: &Weak<Mutex<Table>>,
    ttl: Duration,
    sweep: bool,
) -> io::Result<()> {
    let Some(table) = table.upgrade() else {
        return Ok(());
    };
    let snapshot = {
        let mut table = table.lock();
        let expired = if sweep { table.expire(oldest(ttl)) } else { 0 };
        (expired > 0 || file.lines > 2 * table.entries.len() + SLACK)
            .then(|| (table.entries.clone(), table.clients.clone()))
    };
    match snapshot {
        Some((entries, clients)) => file.rewrite(&entries, &clients),
        None => Ok(()),
    }
}
