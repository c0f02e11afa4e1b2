//! What a response used, read as it passes: the `usage` of `response.completed` (or
//! `response.incomplete` / `response.failed`) in an event stream, or of a JSON response. The
//! stream is never held back; only the one event that carries the usage is copied.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most bytes of one event line (or of a JSON response) kept to read the usage from.
const MAX_KEPT: usize = 16 << 20;

/// Tokens a response used, from its `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub input: u64,
    pub cached_input: u64,
    pub output: u64,
    pub reasoning: u64,
}

/// The parts of a response object read here; the rest is skipped without being built.
#[derive(Deserialize)]
struct ResponseParts {
    model: Option<String>,
    status: Option<String>,
    usage: Option<UsageParts>,
}

#[derive(Deserialize)]
struct UsageParts {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<Details>,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    output_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: u64,
    #[serde(default)]
    reasoning_tokens: u64,
}

#[derive(Deserialize)]
struct EventParts {
    response: Option<ResponseParts>,
}

impl From<ResponseParts> for Seen {
    fn from(parts: ResponseParts) -> Self {
        Seen {
            model: parts.model,
            status: parts.status,
            tokens: parts.usage.map(|u| Tokens {
                input: u.input_tokens,
                cached_input: u
                    .input_tokens_details
                    .as_ref()
                    .map_or(0, |d| d.cached_tokens),
                output: u.output_tokens,
                reasoning: u
                    .output_tokens_details
                    .as_ref()
                    .map_or(0, |d| d.reasoning_tokens),
            }),
        }
    }
}

impl Tokens {
    /// Input and output: what a token quota counts (cached and reasoning tokens are parts of
    /// them).
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// What was learnt from a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub model: Option<String>,
    pub tokens: Option<Tokens>,
    /// The response's final status: `completed`, `incomplete` or `failed`.
    pub status: Option<String>,
}

impl Seen {
    /// From a response object (`{"id","model","status","usage",...}`).
    pub fn from_response(response: &Value) -> Self {
        ResponseParts::deserialize(response)
            .map(Seen::from)
            .unwrap_or_default()
    }
}

/// Reads a response body chunk by chunk.
#[derive(Debug)]
pub enum Scanner {
    /// An event stream: scanned line by line.
    Sse {
        /// The start of a line split across chunks.
        partial: Vec<u8>,
        /// The current event's name is one that carries the final response.
        final_event: bool,
        seen: Seen,
    },
    /// A JSON response: kept (up to a limit) and read at the end.
    Json { kept: Vec<u8>, overflow: bool },
}

/// Event types whose `response` is the final one, with its usage.
const FINAL_EVENTS: [&[u8]; 3] = [
    b"response.completed",
    b"response.incomplete",
    b"response.failed",
];

impl Scanner {
    pub fn new(sse: bool) -> Self {
        if sse {
            Scanner::Sse {
                partial: Vec::new(),
                final_event: false,
                seen: Seen::default(),
            }
        } else {
            Scanner::Json {
                kept: Vec::new(),
                overflow: false,
            }
        }
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        match self {
            Scanner::Json { kept, overflow } => {
                if kept.len() + chunk.len() > MAX_KEPT {
                    *overflow = true;
                } else if !*overflow {
                    kept.extend_from_slice(chunk);
                }
            }
            Scanner::Sse {
                partial,
                final_event,
                seen,
            } => {
                while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
                    let (line, rest) = chunk.split_at(end);
                    chunk = &rest[1..];
                    if partial.is_empty() {
                        sse_line(line, final_event, seen);
                    } else {
                        partial.extend_from_slice(line);
                        let whole = std::mem::take(partial);
                        sse_line(&whole, final_event, seen);
                    }
                }
                if !chunk.is_empty() && partial.len() + chunk.len() <= MAX_KEPT {
                    partial.extend_from_slice(chunk);
                }
            }
        }
    }

    /// What the body showed, once it has ended.
    pub fn finish(&mut self) -> Seen {
        match self {
            Scanner::Sse { seen, .. } => std::mem::take(seen),
            Scanner::Json { kept, overflow } => {
                if *overflow {
                    return Seen::default();
                }
                serde_json::from_slice::<ResponseParts>(kept)
                    .map(Seen::from)
                    .unwrap_or_default()
            }
        }
    }
}

fn sse_line(line: &[u8], final_event: &mut bool, seen: &mut Seen) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        *final_event = false;
    } else if let Some(name) = line.strip_prefix(b"event:") {
        *final_event = FINAL_EVENTS.contains(&name.trim_ascii());
    } else if let Some(data) = line.strip_prefix(b"data:") {
        let data = data.trim_ascii_start();
        // Without an `event:` line, the type leads the data object.
        let typed_final = data.starts_with(br#"{"type":"response."#)
            && FINAL_EVENTS
                .iter()
                .any(|name| data.get(9..9 + name.len()) == Some(*name));
        if (*final_event || typed_final)
            && let Ok(EventParts {
                response: Some(response),
            }) = serde_json::from_slice::<EventParts>(data)
        {
            *seen = Seen::from(response);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPLETED: &str = r#"{"type":"response.completed","response":{"id":"resp_1","model":"gpt-5","status":"completed","usage":{"input_tokens":11,"input_tokens_details":{"cached_tokens":3},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":18}}}"#;

    #[test]
    fn usage_is_read_from_the_completed_event_however_the_stream_is_cut() {
        let stream = format!(
            "event: response.created\ndata: {{\"type\":\"response.created\"}}\n\n\
             event: response.output_text.delta\ndata: {{\"delta\":\"hi\"}}\n\n\
             event: response.completed\r\ndata: {COMPLETED}\r\n\r\n"
        );
        let want = Seen {
            model: Some("gpt-5".into()),
            tokens: Some(Tokens {
                input: 11,
                cached_input: 3,
                output: 7,
                reasoning: 2,
            }),
            status: Some("completed".into()),
        };
        for size in [1, 2, 7, 64, stream.len()] {
            let mut scanner = Scanner::new(true);
            for chunk in stream.as_bytes().chunks(size) {
                scanner.feed(chunk);
            }
            assert_eq!(scanner.finish(), want, "chunks of {size}");
        }
        // Without `event:` lines.
        let mut scanner = Scanner::new(true);
        scanner.feed(format!("data: {COMPLETED}\n\n").as_bytes());
        assert_eq!(scanner.finish(), want);
    }

    #[test]
    fn a_stream_without_a_final_event_shows_nothing_and_json_is_read_whole() {
        let mut scanner = Scanner::new(true);
        scanner.feed(b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"m\",\"usage\":null}}\n\n");
        assert_eq!(scanner.finish(), Seen::default());

        let mut scanner = Scanner::new(false);
        let response = r#"{"id":"resp_1","model":"gpt-5","status":"completed","usage":{"input_tokens":5,"output_tokens":1}}"#;
        for chunk in response.as_bytes().chunks(10) {
            scanner.feed(chunk);
        }
        let seen = scanner.finish();
        assert_eq!(seen.model.as_deref(), Some("gpt-5"));
        assert_eq!(seen.tokens.unwrap().total(), 6);
    }
}
