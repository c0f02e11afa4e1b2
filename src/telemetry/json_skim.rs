//! Reads a few top-level fields of a JSON object as its bytes pass, without keeping the rest: a
//! 40 MiB response costs the bytes of `id`, `model`, `status` and `usage`, not 40 MiB. A key is
//! matched as a JSON parser reads it (`"previous\u005fresponse_id"` is `previous_response_id`),
//! and a watching reader ([`JsonSkim::watching`]) reports every time a field appears, since
//! parsers differ on which of two equal keys counts.

/// The most bytes kept of one field's value; a longer value is dropped.
const MAX_FIELD: usize = 64 * 1024;

/// The most bytes of a key read as written (escapes included); a longer key matches nothing.
const MAX_KEY: usize = 256;

/// The top-level fields of a response object kept by default.
const RESPONSE_FIELDS: &[&[u8]] = &[b"id", b"model", b"status", b"usage"];

/// A byte-at-a-time reader of one JSON document.
#[derive(Debug)]
pub struct JsonSkim {
    /// The top-level fields kept.
    fields: &'static [&'static [u8]],
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1, the next string is a key.
    expect_key: bool,
    /// The key being read, as written (only short ones are kept).
    key: Vec<u8>,
    key_too_long: bool,
    reading_key: bool,
    /// The last key read at depth 1, if it names a kept field.
    field: Option<usize>,
    /// The value being copied: its field and bytes so far.
    value: Option<(usize, Vec<u8>)>,
    kept: Vec<Option<Vec<u8>>>,
    /// Watching: every value of a kept field read since the last [`JsonSkim::take_found`], in
    /// order (`None`: one too long to keep), and the whole document is read.
    found: Option<Vec<Option<Vec<u8>>>>,
}

impl Default for JsonSkim {
    /// Keeps a response object's `id`, `model`, `status` and `usage`.
    fn default() -> Self {
        Self::new(RESPONSE_FIELDS)
    }
}

impl JsonSkim {
    /// Keeps the top-level `fields` (names of at most 32 bytes).
    pub fn new(fields: &'static [&'static [u8]]) -> Self {
        Self {
            fields,
            depth: 0,
            in_string: false,
            escaped: false,
            expect_key: false,
            key: Vec::new(),
            key_too_long: false,
            reading_key: false,
            field: None,
            value: None,
            kept: vec![None; fields.len()],
            found: None,
        }
    }

    /// Reads the whole document and reports every value of the `fields`, each time one appears
    /// ([`JsonSkim::take_found`]): for a check that must see every occurrence.
    pub fn watching(fields: &'static [&'static [u8]]) -> Self {
        Self {
            found: Some(Vec::new()),
            ..Self::new(fields)
        }
    }

    /// Watching: the values read since the last call, in order; `None` for one too long to keep.
    pub fn take_found(&mut self) -> Vec<Option<Vec<u8>>> {
        self.found.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Every kept field has been read (a watching reader is never done).
    fn complete(&self) -> bool {
        self.found.is_none() && self.kept.iter().all(Option::is_some)
    }

    /// The value of the top-level field `name` (one of those kept), once read whole.
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        let at = self.fields.iter().position(|f| *f == name)?;
        self.kept[at].as_deref()
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        // Once every kept field has been read, the rest is not looked at.
        while let Some((&b, rest)) = chunk.split_first().filter(|_| !self.complete()) {
            self.byte(b);
            chunk = rest;
            // Bytes that change nothing are passed over in a tight loop: the inside of a string
            // that is not kept, and anything below the top level but the brackets and quotes.
            if self.value.is_none() && !self.reading_key && !self.escaped {
                let next = if self.in_string {
                    // Strings are where the bytes are (a prompt, a file): searched for their
                    // end many bytes at a time.
                    memchr::memchr2(b'"', b'\\', chunk)
                } else if self.depth > 1 {
                    chunk
                        .iter()
                        .position(|&b| matches!(b, b'"' | b'{' | b'}' | b'[' | b']'))
                } else {
                    Some(0)
                };
                chunk = &chunk[next.unwrap_or(chunk.len())..];
            }
        }
    }

    fn byte(&mut self, b: u8) {
        if self.in_string {
            self.copy(b);
            let closing = !self.escaped && b == b'"';
            self.escaped = !self.escaped && b == b'\\';
            if closing {
                self.in_string = false;
                if self.reading_key {
                    self.reading_key = false;
                    self.field = self.key_field();
                }
            } else if self.reading_key {
                if self.key.len() < MAX_KEY {
                    self.key.push(b);
                } else {
                    self.key_too_long = true;
                }
            }
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                if self.depth == 1 && self.expect_key {
                    self.expect_key = false;
                    self.reading_key = true;
                    self.key.clear();
                    self.key_too_long = false;
                } else {
                    self.copy(b);
                }
            }
            b'{' | b'[' => {
                self.copy(b);
                self.depth += 1;
                if self.depth == 1 {
                    self.expect_key = b == b'{';
                }
            }
            b'}' | b']' => {
                if self.depth == 1 {
                    self.end_value();
                } else {
                    self.copy(b);
                }
                self.depth = self.depth.saturating_sub(1);
            }
            b',' if self.depth == 1 => {
                self.end_value();
                self.expect_key = true;
            }
            b':' if self.depth == 1 && self.value.is_none() => {
                if let Some(field) = self.field.take() {
                    self.value = Some((field, Vec::new()));
                }
            }
            // Space between tokens is no part of a value (and cannot pad one past the limit).
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => self.copy(b),
        }
    }

    /// The kept field the key just read names, as a JSON parser reads it.
    fn key_field(&self) -> Option<usize> {
        if self.key_too_long {
            return None;
        }
        let decoded;
        let key = if self.key.contains(&b'\\') {
            let mut quoted = Vec::with_capacity(self.key.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(&self.key);
            quoted.push(b'"');
            decoded = serde_json::from_slice::<String>(&quoted).ok()?;
            decoded.as_bytes()
        } else {
            self.key.as_slice()
        };
        self.fields.iter().position(|f| *f == key)
    }

    /// Copies a byte of a kept field's value.
    fn copy(&mut self, b: u8) {
        if let Some((_, bytes)) = &mut self.value
            && bytes.len() < MAX_FIELD
        {
            bytes.push(b);
        }
    }

    fn end_value(&mut self) {
        self.field = None;
        let Some((field, bytes)) = self.value.take() else {
            return;
        };
        let whole = bytes.len() < MAX_FIELD;
        if let Some(found) = &mut self.found {
            found.push(whole.then(|| bytes.clone()));
        }
        if whole {
            self.kept[field] = Some(bytes);
        }
    }

    /// The top-level `id`, once its value has been read whole.
    pub fn id(&self) -> Option<String> {
        serde_json::from_slice(self.field(b"id")?).ok()
    }

    /// The kept fields as one small JSON object, e.g. `{"model":"gpt-5","usage":{...}}`.
    pub fn object(&self) -> Vec<u8> {
        let mut out = b"{".to_vec();
        for (name, value) in self.fields.iter().zip(&self.kept) {
            let Some(value) = value else { continue };
            if out.len() > 1 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(name);
            out.extend_from_slice(b"\":");
            out.extend_from_slice(value);
        }
        out.push(b'}');
        out
    }
}

/// The length of the text in one event's `delta`, decoded (as the client reads it): the text a
/// stream delivered, for an estimate when no usage comes. Compact JSON with a delta free of
/// escapes (as OpenAI writes it) is measured where it lies; anything else (spacing, escapes, a
/// reformatting proxy) is parsed, so that the same text counts the same however it is written.
pub fn delta_len(data: &[u8]) -> usize {
    const COMPACT: &[u8] = br#""delta":""#;
    match find(data, COMPACT) {
        Some(at) => {
            let rest = &data[at + COMPACT.len()..];
            if let Some(end) = rest.iter().position(|&b| b == b'"' || b == b'\\')
                && rest[end] == b'"'
            {
                return end;
            }
        }
        // Most events carry no delta at all.
        None if find(data, br#""delta""#).is_none() => return 0,
        None => {}
    }
    #[derive(serde::Deserialize)]
    struct Delta<'a> {
        #[serde(borrow, default)]
        delta: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Delta>(data)
        .ok()
        .and_then(|event| event.delta)
        .map_or(0, |text| text.len())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kept_fields_are_copied_whatever_the_chunks() {
        let doc = br#"{"id":"resp_1","output":[{"type":"message","content":[{"text":"a \"usage\": {} , model"}]}],"model":"gpt-5","status":"completed","usage":{"input_tokens":5,"output_tokens":1},"extra":[1,{"usage":2}]}"#;
        for size in [1, 3, 17, doc.len()] {
            let mut skim = JsonSkim::default();
            for chunk in doc.chunks(size) {
                skim.feed(chunk);
            }
            let object: serde_json::Value = serde_json::from_slice(&skim.object()).unwrap();
            assert_eq!(
                object,
                serde_json::json!({"id":"resp_1","model":"gpt-5","status":"completed","usage":{"input_tokens":5,"output_tokens":1}}),
                "chunks of {size}"
            );
            assert_eq!(skim.id().as_deref(), Some("resp_1"));
        }
    }

    #[test]
    fn keys_are_read_as_a_parser_reads_them() {
        for doc in [
            br#"{"\u0069d":"resp_1"}"#.as_slice(),
            br#"{ "i\u0064" :  "resp_1" }"#,
            b"{\n  \"id\":\n    \"resp_1\"\n}",
        ] {
            for size in [1, 2, doc.len()] {
                let mut skim = JsonSkim::default();
                doc.chunks(size).for_each(|chunk| skim.feed(chunk));
                assert_eq!(
                    skim.id().as_deref(),
                    Some("resp_1"),
                    "{}",
                    String::from_utf8_lossy(doc)
                );
            }
        }
        // Not the key: a longer one, another one, one that only looks alike.
        for doc in [
            br#"{"idx":"resp_1"}"#.as_slice(),
            br#"{"i\\d":"resp_1"}"#,
            br#"{"nested":{"id":"resp_1"}}"#,
        ] {
            let mut skim = JsonSkim::default();
            skim.feed(doc);
            assert_eq!(skim.id(), None, "{}", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn a_watching_reader_sees_every_occurrence_and_no_padding() {
        let mut skim = JsonSkim::watching(&[b"previous_response_id"]);
        let padding = " ".repeat(MAX_FIELD * 2);
        let doc = format!(
            r#"{{"previous_response_id":null,"input":"x","previous\u005fresponse_id":"resp_2"{padding},"previous_response_id":"{}"}}"#,
            "y".repeat(MAX_FIELD)
        );
        for chunk in doc.as_bytes().chunks(4096) {
            skim.feed(chunk);
        }
        assert_eq!(
            skim.take_found(),
            vec![Some(b"null".to_vec()), Some(br#""resp_2""#.to_vec()), None]
        );
        assert!(skim.take_found().is_empty());
    }

    #[test]
    fn a_key_written_inside_a_string_is_no_key_whatever_the_chunks() {
        // Escaped quotes and backslashes inside a string: the string goes on past them, and
        // only the real key counts.
        for doc in [
            br#"{"input":"a\"","previous_response_id":"resp_real"}"#.as_slice(),
            br#"{"input":"x\",\"previous_response_id\":\"resp_evil\\\"","previous_response_id":"resp_real"}"#,
        ] {
            for size in [1, 2, 5, doc.len()] {
                let mut skim = JsonSkim::watching(&[b"previous_response_id"]);
                for chunk in doc.chunks(size) {
                    skim.feed(chunk);
                }
                assert_eq!(
                    skim.take_found(),
                    [Some(br#""resp_real""#.to_vec())],
                    "chunks of {size}"
                );
            }
        }
    }

    #[test]
    fn a_huge_field_is_dropped_and_memory_stays_small() {
        let mut skim = JsonSkim::default();
        skim.feed(br#"{"model":""#);
        let filler = vec![b'x'; 1 << 20];
        for _ in 0..8 {
            skim.feed(&filler);
        }
        skim.feed(br#"","usage":{"input_tokens":1}}"#);
        assert_eq!(skim.object(), br#"{"usage":{"input_tokens":1}}"#.to_vec());
    }

    #[test]
    fn delta_text_is_measured_decoded_however_it_is_written() {
        assert_eq!(
            delta_len(br#"{"type":"response.output_text.delta","delta":"he said \"hi\"","x":1}"#),
            12
        );
        // However it is written: spaced, keys in another order, escaped.
        for data in [
            br#"{"type": "response.output_text.delta", "delta": "caf\u00e9"}"#.as_slice(),
            br#"{"delta":"caf\u00e9","type":"response.output_text.delta"}"#,
            "{\"delta\":\"caf\u{e9}\"}".as_bytes(),
            b"{\n  \"type\": \"response.output_text.delta\",\n  \"delta\" : \"caf\xc3\xa9\"\n}",
        ] {
            assert_eq!(delta_len(data), 5, "{}", String::from_utf8_lossy(data));
        }
        assert_eq!(delta_len(br#"{"type":"response.created"}"#), 0);
    }
}
