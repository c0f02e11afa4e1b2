//! A fake of the Responses API's stored responses, for the endpoints besides create: it keeps
//! what it created, answers retrieve, cancel, delete, input items, input token counts, compact
//! and the model list as the API does, and runs background responses (queued, in progress on
//! the first poll, completed on the second, unless cancelled). Unknown ids get the API's 404.
//! Paths may have any prefix before `/v1/` (Azure's `/openai/v1/`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::responses::{TEXT, response_object};
use super::upstream::{Body, FakeUpstream, Seen, json as json_reply, sse_event, stream};

#[derive(Default)]
struct Stored {
    object: Value,
    background: bool,
    polls: u32,
}

#[derive(Default)]
struct State {
    next: u32,
    responses: HashMap<String, Stored>,
}

/// Starts the fake API on 127.0.0.1:0.
pub async fn start() -> FakeUpstream {
    let state = Arc::new(Mutex::new(State::default()));
    FakeUpstream::start(move |seen: Seen| {
        let state = state.clone();
        async move { answer(&state, &seen) }
    })
    .await
}

fn answer(state: &Mutex<State>, seen: &Seen) -> Response<Body> {
    let (path, query) = seen.uri.split_once('?').unwrap_or((&seen.uri, ""));
    let path = path.find("/v1/").map_or(path, |at| &path[at + 3..]);
    let body: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
    let mut state = state.lock().unwrap();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (seen.method.as_str(), parts.as_slice()) {
        ("POST", ["responses"]) => create(&mut state, &body),
        ("POST", ["responses", "input_tokens"]) => ok(json!({
            "object": "response.input_tokens", "input_tokens": 11
        })),
        ("POST", ["responses", "compact"]) => ok(json!({
            "id": "cmp_1", "object": "response.compaction", "created_at": 1_760_000_000,
            "output": [{"id": "cmpi_1", "type": "compaction", "encrypted_content": "opaque"}],
            "usage": usage(20, 5),
        })),
        ("GET", ["models"]) => ok(json!({"object": "list", "data": [model("gpt-5")]})),
        ("GET", ["models", id]) if *id == "gpt-5" => ok(model(id)),
        ("GET", ["models", id]) => not_found(&format!("The model '{id}' does not exist")),
        (method, ["responses", id, rest @ ..]) => {
            let Some(stored) = state.responses.get_mut(*id) else {
                return not_found(&format!("Response with id '{id}' not found."));
            };
            match (method, rest) {
                ("GET", []) => retrieve(stored, query),
                ("DELETE", []) => {
                    state.responses.remove(*id);
                    ok(json!({"id": id, "object": "response.deleted", "deleted": true}))
                }
                ("POST", ["cancel"]) => cancel(stored),
                ("GET", ["input_items"]) => ok(json!({
                    "object": "list", "first_id": "msg_in_1", "last_id": "msg_in_1",
                    "has_more": false,
                    "data": [{"id": "msg_in_1", "type": "message", "role": "user",
                              "status": "completed",
                              "content": [{"type": "input_text", "text": "Say hello"}]}],
                })),
                _ => not_found("no such endpoint"),
            }
        }
        _ => not_found("no such endpoint"),
    }
}

fn create(state: &mut State, body: &Value) -> Response<Body> {
    state.next += 1;
    let id = format!("resp_{:04}", state.next);
    let background = body["background"] == true;
    let mut object = response_object(&id, "completed", Some(TEXT));
    object["background"] = json!(background);
    object["store"] = json!(body["store"] != false);
    let answer = if background {
        let mut queued = object.clone();
        queued["status"] = json!("queued");
        queued["output"] = json!([]);
        queued["usage"] = Value::Null;
        queued
    } else {
        object.clone()
    };
    state.responses.insert(
        id.clone(),
        Stored {
            object,
            background,
            polls: 0,
        },
    );
    if body["stream"] == true {
        return events(&answer, 0);
    }
    ok(answer)
}

/// A background response runs as it is polled: in progress, then completed.
fn retrieve(stored: &mut Stored, query: &str) -> Response<Body> {
    stored.polls += 1;
    let mut object = stored.object.clone();
    if stored.background && object["status"] == "completed" && stored.polls < 2 {
        object["status"] = json!("in_progress");
        object["output"] = json!([]);
        object["usage"] = Value::Null;
    }
    if query.split('&').any(|pair| pair == "stream=true") {
        let after = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("starting_after="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        return events(&object, after);
    }
    ok(object)
}

fn cancel(stored: &mut Stored) -> Response<Body> {
    if !stored.background {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": "Only background responses can be cancelled.",
                             "type": "invalid_request_error", "param": null, "code": null}}),
        );
    }
    if stored.object["status"] != "cancelled" {
        stored.object["status"] = json!("cancelled");
        stored.object["output"] = json!([]);
        stored.object["usage"] = usage(12, 3);
    }
    ok(stored.object.clone())
}

/// The events of `object` as a stream, from sequence number `after` on: created, then the final
/// one (completed, cancelled, ...) when it has finished.
fn events(object: &Value, after: u64) -> Response<Body> {
    let mut created = object.clone();
    created["usage"] = Value::Null;
    let mut events = vec![(1, "response.created".to_owned(), created)];
    let status = object["status"].as_str().unwrap_or_default().to_owned();
    if !matches!(status.as_str(), "queued" | "in_progress") {
        events.push((2, "response.output_text.delta".to_owned(), json!(null)));
        events.push((3, format!("response.{status}"), object.clone()));
    }
    let (response, tx) = stream("text/event-stream");
    let chunks: Vec<Bytes> = events
        .into_iter()
        .filter(|(n, ..)| *n > after)
        .map(|(n, kind, response)| {
            let kind = kind.as_str();
            let data = if kind == "response.output_text.delta" {
                json!({"type": kind, "sequence_number": n, "item_id": "msg_1", "output_index": 0,
                       "content_index": 0, "delta": TEXT, "logprobs": []})
            } else {
                json!({"type": kind, "sequence_number": n, "response": response})
            };
            sse_event(kind, &data)
        })
        .collect();
    tokio::spawn(async move {
        for chunk in chunks {
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    response
}

fn usage(input: u64, output: u64) -> Value {
    json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
           "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
           "total_tokens": input + output})
}

fn model(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 1_754_000_000, "owned_by": "openai"})
}

fn ok(body: Value) -> Response<Body> {
    reply(StatusCode::OK, body)
}

fn not_found(message: &str) -> Response<Body> {
    reply(
        StatusCode::NOT_FOUND,
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null,
                         "code": null}}),
    )
}

fn reply(status: StatusCode, body: Value) -> Response<Body> {
    json_reply(status, &body.to_string())
}
