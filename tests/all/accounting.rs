//! What a request is charged does not depend on how the upstream writes its JSON: a client that
//! hangs up before `response.completed` is charged the text it received, and a whole answer its
//! usage, whether the events, bodies and messages come compact (as OpenAI writes them), spaced
//! (Python's `json.dumps`, many gateways), pretty-printed (over several `data:` lines), with their
//! keys in another order, or with `\u` escapes; over HTTP and WebSocket.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::support::client::{self, next_chunk};
use crate::support::keyward::start_for;
use crate::support::upstream::FakeUpstream;
use crate::support::within;

/// The text the stream delivers, in four deltas; the last one is how the client knows it has
/// everything.
const DELTAS: [&str; 4] = ["Hello", " w\u{f6}rld,", " \"quoted\" \\ text", " END"];

/// How an upstream writes one event's data.
#[derive(Clone, Copy, Debug)]
enum Format {
    Compact,
    Spaced,
    Pretty,
    Escaped,
    /// Every object's keys in reverse order (`usage` before `id`, `delta` before `type`).
    Reordered,
}

const EVERY_OTHER_FORMAT: [Format; 4] = [
    Format::Spaced,
    Format::Pretty,
    Format::Escaped,
    Format::Reordered,
];

/// `value` written with every object's keys in reverse order.
fn reordered(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .rev()
                .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), reordered(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(reordered).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

/// `value` as `format` writes it.
fn written(format: Format, value: &Value) -> String {
    let compact = serde_json::to_string(value).unwrap();
    match format {
        Format::Compact => compact,
        // As Python's json.dumps writes it.
        Format::Spaced => compact.replace("\":", "\": ").replace(",\"", ", \""),
        Format::Pretty => serde_json::to_string_pretty(value).unwrap(),
        Format::Escaped => compact
            .chars()
            .map(|c| {
                if c.is_ascii() {
                    c.to_string()
                } else {
                    format!("\\u{:04x}", c as u32)
                }
            })
            .collect(),
        Format::Reordered => reordered(value),
    }
}

fn data_lines(format: Format, event: &Value) -> String {
    let text = written(format, event);
    text.lines().map(|line| format!("data: {line}\n")).collect()
}

/// The events before the completion, which never comes.
fn events(format: Format) -> Vec<Bytes> {
    let created = json!({"type": "response.created", "response":
        {"id": "resp_fmt", "object": "response", "model": "gpt-5", "status": "in_progress"}});
    let mut out = vec![format!(
        "event: response.created\n{}\n",
        data_lines(format, &created)
    )];
    for (n, delta) in DELTAS.iter().enumerate() {
        let event = json!({"type": "response.output_text.delta", "item_id": "msg_1",
                           "output_index": 0, "content_index": 0, "sequence_number": n + 1,
                           "delta": delta});
        out.push(format!(
            "event: response.output_text.delta\n{}\n",
            data_lines(format, &event)
        ));
    }
    out.into_iter().map(Bytes::from).collect()
}

/// The ledger's first line, once it is written.
async fn first_line(ledger: &std::path::Path) -> Value {
    within("the ledger line", async {
        loop {
            let text = std::fs::read_to_string(ledger).unwrap_or_default();
            if let Some(line) = text.lines().next() {
                return serde_json::from_str(line).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// What `format`'s request was charged is what the compact one's was.
fn assert_charged_alike(format: Format, line: &Value, compact: &Value) {
    for field in ["output_tokens", "input_tokens", "estimated", "model", "end"] {
        assert_eq!(line[field], compact[field], "{format:?}: {field} in {line}");
    }
}

/// The ledger line of a streamed request whose client hangs up once it has all the text.
async fn charged_after_hang_up(format: Format) -> Value {
    let upstream = FakeUpstream::start(move |_| async move {
        let (response, tx) = crate::support::upstream::stream("text/event-stream");
        tokio::spawn(async move {
            for event in events(format) {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            // No completion: the stream stays open until keyward lets it go.
            tx.closed().await;
        });
        response
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let (addr, _keyward) =
        start_for(&upstream.url(), &["--usage-log", ledger.to_str().unwrap()]).await;
    let req = Request::post("/v1/responses")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            r#"{"model":"gpt-5","input":"Say hello","stream":true}"#,
        )))
        .unwrap();
    let mut body = client::send(addr, req).await.into_body();
    let mut received = Vec::new();
    while !String::from_utf8_lossy(&received).contains("END") {
        let chunk = next_chunk(&mut body).await.expect("the stream ended early");
        received.extend_from_slice(&chunk);
    }
    drop(body);
    first_line(&ledger).await
}

#[tokio::test]
async fn a_hang_up_is_charged_the_text_it_received_however_the_json_is_spaced() {
    let text: usize = DELTAS.iter().map(|d| d.len()).sum();
    let compact = charged_after_hang_up(Format::Compact).await;
    assert_eq!(compact["end"], "client_gone", "{compact}");
    assert_eq!(compact["estimated"], true, "{compact}");
    assert_eq!(compact["output_tokens"], text.div_ceil(4), "{compact}");
    assert_eq!(compact["model"], "gpt-5", "{compact}");
    for format in EVERY_OTHER_FORMAT {
        assert_charged_alike(format, &charged_after_hang_up(format).await, &compact);
    }
}

/// A keyward with a ledger in front of a WebSocket upstream, and one socket through it, its
/// first `response.create` (`create`) already at the upstream.
struct Socket {
    client: crate::support::ws::ClientSocket,
    upstream: crate::support::ws::UpstreamSocket,
    ledger: std::path::PathBuf,
    _keyward: crate::support::keyward::Started,
    _fake: crate::support::ws::FakeWsUpstream,
    _dir: tempfile::TempDir,
}

impl Socket {
    async fn open(create: &str) -> Socket {
        use crate::support::ws::{FakeWsUpstream, connect, next_text, send_text};
        let mut fake = FakeWsUpstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("usage.jsonl");
        let (addr, keyward) =
            start_for(&fake.url(), &["--usage-log", ledger.to_str().unwrap()]).await;
        let (mut client, _) = connect(addr, &[]).await.unwrap();
        let mut upstream = fake.next_socket().await;
        send_text(&mut client, create).await;
        next_text(&mut upstream).await;
        Socket {
            client,
            upstream,
            ledger,
            _keyward: keyward,
            _fake: fake,
            _dir: dir,
        }
    }

    /// The upstream sends `message`; the client gets it.
    async fn relay(&mut self, message: &str) {
        use crate::support::ws::{next_text, send_text};
        send_text(&mut self.upstream, message).await;
        next_text(&mut self.client).await;
    }
}

/// The same over a WebSocket: the events as messages, each written as `format` says.
async fn charged_after_socket_hang_up(format: Format) -> Value {
    let mut socket = Socket::open(&crate::support::ws::create("Say hello", None)).await;
    for event in events(format) {
        // A message is the event's JSON alone: its data lines, without `data: ` and `event:`.
        let text = String::from_utf8(event.to_vec()).unwrap();
        let json: String = text
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .collect::<Vec<_>>()
            .join("\n");
        socket.relay(&json).await;
    }
    let Socket { client, ledger, .. } = socket;
    drop(client);
    first_line(&ledger).await
}

#[tokio::test]
async fn a_socket_hang_up_is_charged_the_text_it_received_however_the_json_is_spaced() {
    let text: usize = DELTAS.iter().map(|d| d.len()).sum();
    let compact = charged_after_socket_hang_up(Format::Compact).await;
    assert_eq!(compact["estimated"], true, "{compact}");
    assert_eq!(compact["output_tokens"], text.div_ceil(4), "{compact}");
    for format in EVERY_OTHER_FORMAT {
        assert_charged_alike(
            format,
            &charged_after_socket_hang_up(format).await,
            &compact,
        );
    }
}

/// The response as the upstream ends it, with its usage: 11 input tokens (3 cached), 7 output
/// (2 reasoning).
fn final_response(status: &str) -> Value {
    json!({"id": "resp_fmt", "object": "response", "model": "gpt-5", "status": status,
           "output": [{"type": "message", "id": "msg_1", "role": "assistant",
                       "content": [{"type": "output_text", "text": "Hello w\u{f6}rld"}]}],
           "usage": {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 3},
                     "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 2},
                     "total_tokens": 18}})
}

/// What a whole answer is charged: the upstream's usage, to the token.
fn assert_charged_usage(format: Format, answer: impl std::fmt::Debug, line: &Value) {
    let charged = [
        &line["input_tokens"],
        &line["cached_input_tokens"],
        &line["output_tokens"],
        &line["reasoning_tokens"],
    ];
    let what = format!("{answer:?} written {format:?}: {line}");
    assert_eq!(charged, [11, 3, 7, 2], "{what}");
    assert_eq!(line["estimated"], Value::Null, "{what}");
    assert_eq!(line["model"], "gpt-5", "{what}");
    assert_eq!(line["end"], "completed", "{what}");
}

/// How the upstream sends its answer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    /// A JSON body.
    Json,
    /// An event stream, as it is generated (no length).
    Stream,
    /// An event stream sent whole with a Content-Length (a buffering gateway).
    WholeStream,
}

/// The ledger line of a request the upstream answers as `answer` says, written as `format`.
async fn charged_for(format: Format, answer: Answer) -> Value {
    let upstream = FakeUpstream::start(move |_| async move {
        if answer == Answer::Json {
            return crate::support::upstream::json(
                http::StatusCode::OK,
                &written(format, &final_response("completed")),
            );
        }
        let done = json!({"type": "response.completed", "response": final_response("completed")});
        let mut events = events(format);
        events.push(Bytes::from(format!(
            "event: response.completed\n{}\n",
            data_lines(format, &done)
        )));
        if answer == Answer::WholeStream {
            let body: Vec<u8> = events.concat();
            let mut response = crate::support::upstream::json(
                http::StatusCode::OK,
                std::str::from_utf8(&body).unwrap(),
            );
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            return response;
        }
        let (response, tx) = crate::support::upstream::stream("text/event-stream");
        tokio::spawn(async move {
            for event in events {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        response
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let (addr, _keyward) =
        start_for(&upstream.url(), &["--usage-log", ledger.to_str().unwrap()]).await;
    let stream = answer != Answer::Json;
    let body = json!({"model": "gpt-5", "input": "Say hello", "stream": stream}).to_string();
    let reply = client::post_responses(addr, &body).await;
    assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
    first_line(&ledger).await
}

#[tokio::test]
async fn a_whole_answer_is_charged_its_usage_however_the_json_is_written() {
    for format in [Format::Compact].into_iter().chain(EVERY_OTHER_FORMAT) {
        for answer in [Answer::Json, Answer::Stream, Answer::WholeStream] {
            let line = charged_for(format, answer).await;
            assert_charged_usage(format, answer, &line);
        }
    }
}

#[tokio::test]
async fn a_socket_turn_is_counted_and_charged_however_its_messages_are_written() {
    for format in [Format::Compact].into_iter().chain(EVERY_OTHER_FORMAT) {
        // The client's own message is written the same way: still a turn.
        let create = json!({"type": "response.create", "model": "gpt-5",
                            "input": "Say h\u{e9}llo", "store": false});
        let mut socket = Socket::open(&written(format, &create)).await;
        let done = json!({"type": "response.completed", "response": final_response("completed")});
        socket.relay(&written(format, &done)).await;
        assert_charged_usage(
            format,
            "a WebSocket turn",
            &first_line(&socket.ledger).await,
        );
    }
}
