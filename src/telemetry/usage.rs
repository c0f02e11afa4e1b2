//! What a response used, read as it passes: the `usage` of `response.completed` (or
//! `response.incomplete` / `response.failed`) in an event stream, or of a JSON response. The
//! stream is never held back; only the one event that carries the usage is copied, and of a JSON
//! response only its `model`, `status` and `usage` ([`JsonSkim`]). The length of the text the
//! stream delivered is counted too, for an estimate when the usage never comes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::telemetry::json_skim::{JsonSkim, delta_len};

/// The most bytes of one event line kept to read the usage from.
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
    id: Option<String>,
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
            id: parts.id,
            model: parts.model,
            status: parts.status,
            text_bytes: 0,
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
    /// The response's id, from `response.created` or the final event, or a JSON answer.
    pub id: Option<String>,
    pub model: Option<String>,
    pub tokens: Option<Tokens>,
    /// The response's final status: `completed`, `incomplete` or `failed`.
    pub status: Option<String>,
    /// Bytes of text (the `delta`s) an event stream delivered.
    pub text_bytes: u64,
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
    /// An event stream: scanned line by line, each event read when its blank line ends it.
    Sse {
        /// The start of a line split across chunks.
        partial: Vec<u8>,
        /// What the current event's `event:` line named.
        event: EventName,
        /// The current event's `data:` lines, joined by newlines (pretty-printed JSON comes as
        /// several).
        data: Vec<u8>,
        seen: Seen,
    },
    /// A JSON response: only its `model`, `status` and `usage` are kept.
    Json(Box<JsonSkim>),
}

/// A message's `type`, read without building the rest.
#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(borrow, rename = "type")]
    kind: std::borrow::Cow<'a, str>,
}

/// The `type` of a JSON message (`response.create`, `response.completed`, ...).
pub fn message_type(data: &[u8]) -> Option<String> {
    serde_json::from_slice::<Typed>(data)
        .ok()
        .map(|typed| typed.kind.into_owned())
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
                event: EventName::Other,
                data: Vec::new(),
                seen: Seen::default(),
            }
        } else {
            Scanner::Json(Box::default())
        }
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        match self {
            Scanner::Json(skim) => skim.feed(chunk),
            Scanner::Sse {
                partial,
                event,
                data,
                seen,
            } => {
                while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
                    let (line, rest) = chunk.split_at(end);
                    chunk = &rest[1..];
                    if partial.is_empty() {
                        sse_line(line, event, data, seen);
                    } else {
                        partial.extend_from_slice(line);
                        let whole = std::mem::take(partial);
                        sse_line(&whole, event, data, seen);
                    }
                }
                if !chunk.is_empty() && partial.len() + chunk.len() <= MAX_KEPT {
                    partial.extend_from_slice(chunk);
                }
            }
        }
    }

    /// One whole event, as a WebSocket message carries it (its type inside the JSON); says
    /// which kind it was, so that the caller knows when a response has ended.
    pub fn event(&mut self, data: &[u8]) -> EventName {
        let name = match serde_json::from_slice::<Typed>(data) {
            Ok(typed) if FINAL_EVENTS.contains(&typed.kind.as_bytes()) => EventName::Final,
            Ok(typed) if typed.kind == "response.created" => EventName::Created,
            Ok(typed) if typed.kind == "error" => EventName::Error,
            _ => EventName::Other,
        };
        if let Scanner::Sse { seen, .. } = self {
            let mut event = name;
            sse_data(data, &mut event, seen);
        }
        name
    }

    /// A scanner that wants only the response's id: of a JSON answer nothing after it is read.
    pub fn id_only(sse: bool) -> Self {
        if sse {
            Scanner::new(true)
        } else {
            Scanner::Json(Box::new(JsonSkim::new(&[b"id"])))
        }
    }

    /// The response's id, as soon as the body has shown it.
    pub fn response_id(&self) -> Option<String> {
        match self {
            Scanner::Sse { seen, .. } => seen.id.clone(),
            Scanner::Json(skim) => skim.id(),
        }
    }

    /// What the body showed, once it has ended.
    pub fn finish(&mut self) -> Seen {
        match self {
            Scanner::Sse {
                event, data, seen, ..
            } => {
                // An event the stream ended inside, before its blank line.
                if !data.is_empty() {
                    sse_data(data, event, seen);
                }
                std::mem::take(seen)
            }
            Scanner::Json(skim) => serde_json::from_slice::<ResponseParts>(&skim.object())
                .map(Seen::from)
                .unwrap_or_default(),
        }
    }
}

/// The events whose data the scanner reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventName {
    /// `response.completed`, `.incomplete` or `.failed`: the final response, with its usage.
    Final,
    /// `response.created`: the model.
    Created,
    /// An `error` message (on a WebSocket: the response has ended).
    Error,
    /// Another event an `event:` line named (its data's type need not be read).
    Named,
    /// Not known yet, or none of the above.
    #[default]
    Other,
}

fn sse_line(line: &[u8], event: &mut EventName, data: &mut Vec<u8>, seen: &mut Seen) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        if !data.is_empty() {
            sse_data(data, event, seen);
            data.clear();
        }
        *event = EventName::Other;
    } else if let Some(name) = line.strip_prefix(b"event:") {
        let name = name.trim_ascii();
        *event = if FINAL_EVENTS.contains(&name) {
            EventName::Final
        } else if name == b"response.created" {
            EventName::Created
        } else {
            EventName::Named
        };
    } else if let Some(more) = line.strip_prefix(b"data:") {
        // One optional space after the colon is the field's own (the SSE rules).
        let more = more.strip_prefix(b" ").unwrap_or(more);
        if data.len() + more.len() < MAX_KEPT {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(more);
        }
    }
}

/// One event's data: the final response's usage, the model, or the length of its text.
fn sse_data(data: &[u8], event: &mut EventName, seen: &mut Seen) {
    // Without an `event:` line, the data's own `type` says what it is.
    if *event == EventName::Other {
        *event = match data_type(data).as_deref().map(str::as_bytes) {
            Some(name) if FINAL_EVENTS.contains(&name) => EventName::Final,
            Some(b"response.created") => EventName::Created,
            _ => EventName::Other,
        };
    }
    let response = || match serde_json::from_slice::<EventParts>(data) {
        Ok(EventParts { response }) => response,
        Err(_) => None,
    };
    if *event == EventName::Final {
        if let Some(response) = response() {
            let text_bytes = seen.text_bytes;
            *seen = Seen::from(response);
            seen.text_bytes = text_bytes;
        }
    } else if *event == EventName::Created {
        // The id and the model, for a stream that ends before it says its usage.
        if (seen.model.is_none() || seen.id.is_none())
            && let Some(response) = response()
        {
            seen.model = seen.model.take().or(response.model);
            seen.id = seen.id.take().or(response.id);
        }
    } else {
        seen.text_bytes += delta_len(data) as u64;
    }
}

/// An event's `type`: read straight from compact JSON that starts with it (as OpenAI writes
/// it), else parsed (any spacing, any key order).
fn data_type(data: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    const COMPACT: &[u8] = br#"{"type":""#;
    if let Some(rest) = data.strip_prefix(COMPACT)
        && let Some(end) = rest.iter().position(|&b| b == b'"' || b == b'\\')
        && rest[end] == b'"'
    {
        return std::str::from_utf8(&rest[..end])
            .ok()
            .map(std::borrow::Cow::Borrowed);
    }
    if !data.trim_ascii_start().starts_with(b"{") {
        return None;
    }
    serde_json::from_slice::<Typed>(data)
        .ok()
        .map(|typed| typed.kind)
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
            id: Some("resp_1".into()),
            model: Some("gpt-5".into()),
            tokens: Some(Tokens {
                input: 11,
                cached_input: 3,
                output: 7,
                reasoning: 2,
            }),
            status: Some("completed".into()),
            text_bytes: 2,
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
        assert_eq!(
            scanner.finish(),
            Seen {
                text_bytes: 0,
                ..want
            }
        );
    }

    #[test]
    fn a_stream_without_a_final_event_shows_its_model_and_text_only_and_json_is_read_whole() {
        let mut scanner = Scanner::new(true);
        scanner.feed(b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"m\",\"usage\":null}}\n\n");
        scanner.feed(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hello\"}\n\n");
        assert_eq!(
            scanner.finish(),
            Seen {
                model: Some("m".into()),
                text_bytes: 5,
                ..Seen::default()
            }
        );

        let mut scanner = Scanner::new(false);
        let response = r#"{"id":"resp_1","model":"gpt-5","status":"completed","usage":{"input_tokens":5,"output_tokens":1}}"#;
        for chunk in response.as_bytes().chunks(10) {
            scanner.feed(chunk);
        }
        let seen = scanner.finish();
        assert_eq!(seen.model.as_deref(), Some("gpt-5"));
        assert_eq!(seen.tokens.unwrap().total(), 6);
    }

    /// One recorded stream (the text has quotes, a backslash and non-ASCII letters), written as
    /// keyward's upstream would write it in each way.
    fn recorded() -> Vec<(&'static str, Value)> {
        let response = |status: &str, usage: Value| {
            serde_json::json!({"id": "resp_7", "object": "response", "model": "gpt-5",
                               "status": status, "usage": usage})
        };
        let mut events = vec![(
            "response.created",
            serde_json::json!({"type": "response.created", "sequence_number": 0,
                               "response": response("in_progress", Value::Null)}),
        )];
        for (n, delta) in [
            "Cr\u{e8}me ",
            "br\u{fb}l\u{e9}e, ",
            "\"s\\il ",
            "vous pla\u{ee}t\"",
        ]
        .iter()
        .enumerate()
        {
            events.push((
                "response.output_text.delta",
                serde_json::json!({"type": "response.output_text.delta", "sequence_number": n + 1,
                                   "item_id": "msg_1", "output_index": 0, "content_index": 0,
                                   "delta": delta, "logprobs": []}),
            ));
        }
        events.push((
            "response.completed",
            serde_json::json!({"type": "response.completed", "sequence_number": 9,
                               "response": response("completed", serde_json::json!({
                                   "input_tokens": 12, "output_tokens": 9,
                                   "input_tokens_details": {"cached_tokens": 4},
                                   "output_tokens_details": {"reasoning_tokens": 0}}))}),
        ));
        events
    }

    /// `type` first and no spaces, as OpenAI writes it.
    fn compact(event: &Value) -> String {
        // serde_json sorts the keys: the rest, then `type` put in front.
        let mut rest = event.clone();
        let kind = rest
            .as_object_mut()
            .and_then(|map| map.remove("type"))
            .unwrap_or_default();
        let rest = serde_json::to_string(&rest).unwrap_or_default();
        format!(r#"{{"type":{kind},{}"#, &rest[1..])
    }

    fn escaped(text: &str) -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii() {
                    c.to_string()
                } else {
                    format!("\\u{:04x}", c as u32)
                }
            })
            .collect()
    }

    fn read(stream: &str, chunk: usize) -> Seen {
        let mut scanner = Scanner::new(true);
        for part in stream.as_bytes().chunks(chunk) {
            scanner.feed(part);
        }
        scanner.finish()
    }

    #[test]
    fn a_stream_counts_the_same_however_its_json_is_written() {
        let events = recorded();
        let write = |with_names: bool, data: &dyn Fn(&Value) -> String| -> String {
            events
                .iter()
                .map(|(name, event)| {
                    let lines: String = data(event)
                        .lines()
                        .map(|line| format!("data: {line}\n"))
                        .collect();
                    if with_names {
                        format!("event: {name}\n{lines}\n")
                    } else {
                        format!("{lines}\n")
                    }
                })
                .collect()
        };
        let want = read(&write(true, &compact), 4096);
        let text = "Cr\u{e8}me br\u{fb}l\u{e9}e, \"s\\il vous pla\u{ee}t\"";
        assert_eq!(want.text_bytes, text.len() as u64);
        assert_eq!(want.tokens.map(|t| (t.input, t.output)), Some((12, 9)));
        assert_eq!(want.id.as_deref(), Some("resp_7"));
        let sorted = |event: &Value| serde_json::to_string(event).unwrap_or_default();
        let spaced = |event: &Value| compact(event).replace("\":", "\": ").replace(",\"", ", \"");
        let pretty = |event: &Value| serde_json::to_string_pretty(event).unwrap_or_default();
        let escape = |event: &Value| escaped(&compact(event));
        for (how, stream) in [
            ("compact, no event lines", write(false, &compact)),
            ("keys sorted", write(true, &sorted)),
            ("keys sorted, no event lines", write(false, &sorted)),
            ("spaced", write(true, &spaced)),
            ("spaced, no event lines", write(false, &spaced)),
            ("pretty-printed over many data lines", write(true, &pretty)),
            ("pretty-printed, no event lines", write(false, &pretty)),
            ("non-ASCII escaped", write(true, &escape)),
            ("escaped, no event lines", write(false, &escape)),
        ] {
            for chunk in [1, 7, 64, 4096] {
                assert_eq!(read(&stream, chunk), want, "{how}, chunks of {chunk}");
            }
        }
    }

    #[test]
    fn a_cut_stream_still_counts_the_text_it_delivered_however_written() {
        let events = recorded();
        // The completion never comes: only the text counts, spaced or not.
        let cut = |data: &dyn Fn(&Value) -> String| -> Seen {
            let stream: String = events[..events.len() - 1]
                .iter()
                .map(|(_, event)| format!("data: {}\n\n", data(event)))
                .collect();
            read(&stream, 5)
        };
        let compact_cut = cut(&compact);
        assert!(compact_cut.tokens.is_none());
        assert!(compact_cut.text_bytes > 0);
        let spaced = |event: &Value| {
            serde_json::to_string_pretty(event)
                .unwrap_or_default()
                .replace('\n', " ")
        };
        assert_eq!(cut(&spaced), compact_cut);
    }
}
