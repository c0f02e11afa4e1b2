//! `--dump-dir`: each request and response written to a JSON file as it passes.
//!
//! Bodies are appended to their file chunk by chunk by one writer thread, so a long stream is
//! never held in memory and the proxy's tasks never wait on the disk.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use serde_json::{Map, Value};

use crate::config::DumpConfig;
use crate::proxy::headers;
use crate::secret::hardening;
use crate::secret::private_file;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("--dump-dir {}: {what}", path.display())]
    Unusable { path: PathBuf, what: String },
}

enum Message {
    Open {
        id: u64,
        path: PathBuf,
        head: String,
    },
    Append {
        id: u64,
        text: String,
    },
    Close {
        id: u64,
        tail: String,
    },
}

/// `(sequence number, unix milliseconds)`: the name shared by an exchange's two files.
pub type ExchangeId = (u64, u128);

/// Hands out [`DumpSink`]s and owns the writer thread.
pub struct Dumper {
    dir: PathBuf,
    max_body: u64,
    seq: AtomicU64,
    files: AtomicU64,
    tx: mpsc::Sender<Message>,
}

impl Dumper {
    pub fn new(config: &DumpConfig) -> Result<Self, DumpError> {
        prepare_dir(&config.dir)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("keyward-dump".into())
            .spawn(move || write_loop(rx))
            .map_err(|e| DumpError::Unusable {
                path: config.dir.clone(),
                what: format!("could not start the writer thread: {e}"),
            })?;
        Ok(Self {
            dir: config.dir.clone(),
            max_body: config.max_body,
            seq: AtomicU64::new(1),
            files: AtomicU64::new(0),
            tx,
        })
    }

    /// Numbers the next exchange: `(seq, unix milliseconds)`, which name its two files.
    pub fn next_exchange(&self) -> ExchangeId {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        (seq, ms)
    }

    /// Starts `{seq}-{ms}-{kind}.json` with `meta` (plus the redacted `headers`) and opens its
    /// `body` string, which the returned sink appends to.
    pub fn open(
        &self,
        (seq, ms): ExchangeId,
        kind: &str,
        mut meta: Map<String, Value>,
        headers: &HeaderMap,
    ) -> DumpSink {
        let id = self.files.fetch_add(1, Ordering::Relaxed);
        meta.insert("headers".into(), redacted_headers(headers));
        let mut head = Value::Object(meta).to_string();
        head.pop(); // reopen the object to add the body
        head.push_str(",\"body\":\"");
        let path = self.dir.join(format!("{seq}-{ms}-{kind}.json"));
        let _ = self.tx.send(Message::Open { id, path, head });
        DumpSink {
            id,
            tx: self.tx.clone(),
            budget: self.max_body,
            bytes: 0,
            carry: Vec::new(),
            end: None,
        }
    }
}

/// One body being written. Dropping it closes the file's JSON.
pub struct DumpSink {
    id: u64,
    tx: mpsc::Sender<Message>,
    budget: u64,
    bytes: u64,
    carry: Vec<u8>,
    end: Option<&'static str>,
}

impl DumpSink {
    pub fn append(&mut self, chunk: &[u8]) {
        let room = self.budget.saturating_sub(self.bytes);
        self.bytes += chunk.len() as u64;
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(chunk.len());
        if take == 0 {
            return;
        }
        let text = escape_utf8(&mut self.carry, &chunk[..take]);
        if !text.is_empty() {
            let _ = self.tx.send(Message::Append { id: self.id, text });
        }
    }

    /// Records how the body ended (`completed`, `idle_timeout`, ...), written when the sink drops.
    pub fn set_end(&mut self, end: &'static str) {
        self.end = Some(end);
    }
}

impl Drop for DumpSink {
    fn drop(&mut self) {
        let mut text = String::new();
        if !self.carry.is_empty() {
            text.push_str(&escape_str(&String::from_utf8_lossy(&self.carry)));
        }
        let tail = serde_json::json!({
            "body_bytes": self.bytes,
            "body_truncated": self.bytes > self.budget,
            "end": self.end.unwrap_or("client_gone"),
        })
        .to_string();
        let tail = format!("{text}\",{}\n", &tail[1..]);
        let _ = self.tx.send(Message::Close { id: self.id, tail });
    }
}

fn prepare_dir(dir: &Path) -> Result<(), DumpError> {
    let unusable = |what: String| DumpError::Unusable {
        path: dir.to_owned(),
        what,
    };
    match fs::symlink_metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(unusable("exists and is not a directory".into()));
            }
            if meta.uid() != hardening::effective_uid() {
                return Err(unusable(format!(
                    "is owned by uid {}, not by keyward's user; choose a directory keyward owns",
                    meta.uid()
                )));
            }
            if meta.mode() & 0o077 != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| unusable(format!("could not restrict it to mode 0700: {e}")))?;
                tracing::warn!(dir = %dir.display(), "dump directory was readable by others; changed its mode to 0700");
            }
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| unusable(format!("could not create it: {e}"))),
        Err(err) => Err(unusable(err.to_string())),
    }
}

fn write_loop(rx: mpsc::Receiver<Message>) {
    let mut open: HashMap<u64, File> = HashMap::new();
    for message in rx {
        match message {
            Message::Open { id, path, head } => {
                let file = private_file::options()
                    .write(true)
                    .create_new(true)
                    .open(&path);
                match file {
                    Ok(mut file) => {
                        if let Err(err) = file.write_all(head.as_bytes()) {
                            tracing::warn!(file = %path.display(), error = %err, "could not write dump file");
                        }
                        open.insert(id, file);
                    }
                    Err(err) => {
                        tracing::warn!(file = %path.display(), error = %err, "could not create dump file");
                    }
                }
            }
            Message::Append { id, text } => {
                if let Some(file) = open.get_mut(&id) {
                    let _ = file.write_all(text.as_bytes());
                }
            }
            Message::Close { id, tail } => {
                if let Some(mut file) = open.remove(&id) {
                    let _ = file.write_all(tail.as_bytes());
                }
            }
        }
    }
}

/// Headers as a JSON object, credentials replaced by `[redacted]`; repeated names become arrays.
pub fn redacted_headers(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for name in headers.keys() {
        let values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|v| {
                if headers::is_credential(name) {
                    Value::from("[redacted]")
                } else {
                    Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned())
                }
            })
            .collect();
        let value = if values.len() == 1 {
            values.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(values)
        };
        out.insert(name.as_str().to_owned(), value);
    }
    Value::Object(out)
}

/// JSON-escapes `chunk` for the inside of a string. A UTF-8 sequence split across chunks is kept
/// in `carry` until its end arrives; bytes that are not UTF-8 become U+FFFD.
fn escape_utf8(carry: &mut Vec<u8>, chunk: &[u8]) -> String {
    let joined;
    let mut rest: &[u8] = if carry.is_empty() {
        chunk
    } else {
        carry.extend_from_slice(chunk);
        joined = std::mem::take(carry);
        &joined
    };
    let mut out = String::new();
    loop {
        match std::str::from_utf8(rest) {
            Ok(text) => {
                out.push_str(&escape_str(text));
                return out;
            }
            Err(err) => {
                let (good, bad) = rest.split_at(err.valid_up_to());
                out.push_str(&escape_str(&String::from_utf8_lossy(good)));
                match err.error_len() {
                    None => {
                        carry.extend_from_slice(bad);
                        return out;
                    }
                    Some(n) => {
                        out.push_str("\\ufffd");
                        rest = &bad[n..];
                    }
                }
            }
        }
    }
}

fn escape_str(text: &str) -> String {
    let quoted = Value::from(text).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_utf8_is_joined_and_bad_bytes_replaced() {
        let mut carry = Vec::new();
        let e = "é".as_bytes();
        let mut out = escape_utf8(&mut carry, &[b'a', e[0]]);
        out += &escape_utf8(&mut carry, &[e[1], b'"', 0xff, b'\n']);
        assert_eq!(out, "aé\\\"\\ufffd\\n");
        assert!(carry.is_empty());
    }
}
