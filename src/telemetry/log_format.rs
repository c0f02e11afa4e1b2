//! The text log's line, as tracing-subscriber's default writes it, for less: the fields
//! (`name=value`, strings quoted and escaped as `{:?}` does, the message bare) without its
//! per-field styling work when the log has no colours, a string that needs no escaping copied as
//! it is; and the time (RFC 3339, microseconds, UTC) with its date and second formatted once a
//! second. Every request writes one line of about fifteen fields; these were most of its cost
//! (`bench/results/2026-12-03-user-space.md`).

use std::cell::RefCell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::time::FormatTime;

/// The text log's clock: `2026-12-03T04:04:53.883479Z`, as the default's.
pub struct Time;

thread_local! {
    /// The second last written, and its text up to the seconds.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for Time {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write_time(w, SystemTime::now())
    }
}

fn write_time(w: &mut impl fmt::Write, at: SystemTime) -> fmt::Result {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let text = humantime::format_rfc3339_seconds(
                UNIX_EPOCH + std::time::Duration::from_secs(second),
            )
            .to_string();
            cached.1.clear();
            cached.1.push_str(text.trim_end_matches('Z'));
            cached.0 = second;
        }
        write!(w, "{}.{:06}Z", cached.1, since.subsec_micros())
    })
}

/// The text log's field formatter.
pub struct Fields;

impl<'writer> FormatFields<'writer> for Fields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            plain: !writer.has_ansi_escapes(),
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'writer> {
    writer: Writer<'writer>,
    /// No colours: a field's name is written as it is.
    plain: bool,
    is_empty: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    /// Whether this field is written here; if so, the separator and `name=` are.
    fn start(&mut self, field: &Field) -> bool {
        let name = field.name();
        if !self.plain || self.result.is_err() || name == "message" || name.starts_with("r#") {
            return false;
        }
        if name.starts_with("log.") {
            // Metadata of a `log` record: the default skips it too.
            return false;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.is_empty) {
                self.writer.write_char(' ')?;
            }
            self.writer.write_str(name)?;
            self.writer.write_char('=')
        })();
        true
    }

    /// The default's way, for everything not written here.
    fn default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut inner = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut inner);
        self.result = tracing_subscriber::field::VisitOutput::finish(inner);
        self.is_empty = false;
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let needs_escape = value
            .bytes()
            .any(|b| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\');
        if needs_escape || !self.start(field) {
            return self.default(|v| v.record_str(field, value));
        }
        self.result = (|| {
            self.writer.write_char('"')?;
            self.writer.write_str(value)?;
            self.writer.write_char('"')
        })();
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if !self.start(field) {
            return self.default(|v| v.record_u64(field, value));
        }
        self.result = write_decimal(&mut self.writer, false, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if !self.start(field) {
            return self.default(|v| v.record_i64(field, value));
        }
        self.result = write_decimal(&mut self.writer, value < 0, value.unsigned_abs());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if !self.start(field) {
            return self.default(|v| v.record_bool(field, value));
        }
        self.result = write!(self.writer, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if !self.start(field) {
            return self.default(|v| v.record_f64(field, value));
        }
        self.result = match thousandths(value) {
            Some(thousandths) => write_thousandths(&mut self.writer, thousandths),
            None => write!(self.writer, "{value:?}"),
        };
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.default(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.start(field) {
            return self.default(|v| v.record_debug(field, value));
        }
        self.result = write!(self.writer, "{value:?}");
    }
}

/// Text as `{}` of its `escape_debug()` writes it, copied whole when nothing in it needs
/// escaping (a request's path, nearly always) rather than one character at a time.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = self
            .0
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && !matches!(b, b'\\' | b'"' | b'\''));
        if plain {
            f.write_str(self.0)
        } else {
            fmt::Display::fmt(&self.0.escape_debug(), f)
        }
    }
}

/// A whole number as `{}` writes it, without the formatting machinery.
fn write_decimal(w: &mut impl fmt::Write, negative: bool, mut value: u64) -> fmt::Result {
    let mut digits = [0u8; 21];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    if negative {
        at -= 1;
        digits[at] = b'-';
    }
    // Only ASCII digits and a sign were written.
    w.write_str(std::str::from_utf8(&digits[at..]).unwrap_or_default())
}

/// `value` as a whole number of thousandths, when it is exactly the double nearest to one (a
/// duration in milliseconds with microseconds, as keyward logs them) and small enough that its
/// shortest decimal form is that number of thousandths: then `{:?}` writes
/// that decimal, and [`write_thousandths`] can too.
fn thousandths(value: f64) -> Option<u64> {
    if !(0.0..1e12).contains(&value) || value.is_sign_negative() {
        return None;
    }
    let thousandths = (value * 1000.0).round();
    (thousandths / 1000.0 == value).then_some(thousandths as u64)
}

/// A number of thousandths as `{:?}` writes the double nearest to it: `2.0`, `2.5`, `0.001`.
fn write_thousandths(w: &mut impl fmt::Write, thousandths: u64) -> fmt::Result {
    write_decimal(w, false, thousandths / 1000)?;
    let mut fraction = thousandths % 1000;
    let mut places = 3;
    while places > 1 && fraction.is_multiple_of(10) {
        fraction /= 10;
        places -= 1;
    }
    w.write_char('.')?;
    if places == 3 && fraction < 100 {
        w.write_char('0')?;
    }
    if places >= 2 && fraction < 10 {
        w.write_char('0')?;
    }
    write_decimal(w, false, fraction)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn lines(fast: bool) -> String {
        let buffer = Buffer::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false);
        let emit = || {
            let none: Option<u64> = None;
            tracing::info!(
                method = %"POST",
                path = %"/v1/responses".escape_debug(),
                uid = 1000u32,
                client = "alice",
                quoted = "say \"hi\"\n\u{1b}[31m",
                unicode = "café",
                status = 200u16,
                delta = -3i64,
                none,
                estimated = true,
                whole = 2.0f64,
                duration_ms = 2.425f64,
                error = ?std::io::Error::other("broken"),
                r#type = "x",
                "request \u{1b}[2J done"
            );
            let span = tracing::info_span!("turn", n = 2u64, who = "bob");
            let _entered = span.enter();
            tracing::warn!(reason = "spent", "moved");
        };
        if fast {
            tracing::subscriber::with_default(builder.fmt_fields(Fields).finish(), emit);
        } else {
            tracing::subscriber::with_default(builder.finish(), emit);
        }
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn the_time_is_written_as_the_default_writes_it() {
        for at in [
            UNIX_EPOCH,
            UNIX_EPOCH + std::time::Duration::from_micros(1_795_000_000_123_456),
            UNIX_EPOCH + std::time::Duration::from_micros(1_795_000_000_999_999),
            UNIX_EPOCH + std::time::Duration::from_micros(1_795_000_001_000_001),
            SystemTime::now(),
        ] {
            let mut ours = String::new();
            write_time(&mut ours, at).unwrap();
            assert_eq!(ours, humantime::format_rfc3339_micros(at).to_string());
        }
        // The default's own clock writes the same shape.
        let mut theirs = String::new();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        let mut ours = String::new();
        write_time(&mut ours, SystemTime::now()).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ours} {theirs}");
        assert_eq!(ours[..15], theirs[..15], "{ours} {theirs}");
    }

    #[test]
    fn numbers_are_written_as_the_default_writes_them() {
        let mut random = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random
        };
        let mut whole = vec![0, 1, 9, 10, 99, 100, u64::MAX, u64::MAX / 10, 1 << 53];
        whole.extend((0..2_000).map(|_| next() >> (next() % 64)));
        for value in whole {
            let mut ours = String::new();
            write_decimal(&mut ours, false, value).unwrap();
            assert_eq!(ours, value.to_string());
            let signed = value as i64;
            let mut ours = String::new();
            write_decimal(&mut ours, signed < 0, signed.unsigned_abs()).unwrap();
            assert_eq!(ours, signed.to_string());
        }
        let mut millis: Vec<f64> = vec![0.0, 0.001, 0.01, 0.1, 0.5, 1.0, 2.425, 10.1, 999.999];
        millis.extend((0..20_000).map(|_| (next() % 1_000_000_000_000_000) as f64 / 1000.0));
        millis.extend((0..2_000).map(|_| (next() % 100_000) as f64 / 1000.0));
        // Not thousandths, or out of the range: written the default's way.
        millis.extend([
            -0.0,
            -1.5,
            0.0001,
            1.0 / 3.0,
            1e12,
            1e300,
            f64::NAN,
            f64::INFINITY,
        ]);
        for value in millis {
            let mut ours = String::new();
            match thousandths(value) {
                Some(n) => write_thousandths(&mut ours, n).unwrap(),
                None => ours = format!("{value:?}"),
            }
            assert_eq!(ours, format!("{value:?}"), "{value}");
        }
        assert_eq!(thousandths(2.425), Some(2_425));
    }

    #[test]
    fn text_is_escaped_as_escape_debug_escapes_it() {
        let every_ascii: String = (0u8..0x80).map(char::from).collect();
        for text in [
            "/v1/responses",
            "/a b?c=d&e=%22",
            "/x\"y",
            "/it's",
            "/\\",
            "/é",
            &every_ascii,
        ] {
            assert_eq!(Escaped(text).to_string(), text.escape_debug().to_string());
        }
        assert_eq!(thousandths(1.0 / 3.0), None);
    }

    #[test]
    fn lines_are_as_the_default_writes_them() {
        let ours = lines(true);
        assert_eq!(ours, lines(false));
        assert!(
            ours.contains(r#"client="alice" quoted="say \"hi\"\n\u{1b}[31m""#),
            "{ours}"
        );
        assert!(ours.contains("whole=2.0 duration_ms=2.425"), "{ours}");
        assert!(ours.contains("turn{n=2 who=\"bob\"}"), "{ours}");
    }
}
