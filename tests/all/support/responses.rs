//! What the Responses API sends: a completed response object, and the events of a streamed one.

use bytes::Bytes;
use serde_json::{Value, json};

use super::upstream::sse_event;

pub const TEXT: &str = "Hello through keyward!";

/// The completed response object the fake upstream answers with.
pub fn response_object(id: &str, status: &str, text: Option<&str>) -> Value {
    let output = match text {
        Some(text) => json!([{
            "id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]
        }]),
        None => json!([]),
    };
    json!({
        "id": id, "object": "response", "created_at": 1_760_000_000, "status": status,
        "model": "gpt-5", "output": output, "parallel_tool_calls": true, "tool_choice": "auto",
        "tools": [], "store": false, "error": null, "incomplete_details": null,
        "instructions": null, "metadata": {}, "temperature": 1.0, "top_p": 1.0,
        "usage": if status == "completed" { json!({
            "input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 19
        }) } else { Value::Null },
    })
}

/// The event sequence of a one-message streamed response, as the Responses API sends it.
pub fn response_events() -> Vec<Bytes> {
    let item = |status: &str, text: &str| {
        json!({"id": "msg_1", "type": "message", "role": "assistant", "status": status,
               "content": if text.is_empty() { json!([]) } else {
                   json!([{"type": "output_text", "text": text, "annotations": []}]) }})
    };
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
    let mut events = vec![
        (
            "response.created",
            json!({"response": response_object("resp_1", "in_progress", None)}),
        ),
        (
            "response.in_progress",
            json!({"response": response_object("resp_1", "in_progress", None)}),
        ),
        (
            "response.output_item.added",
            json!({"output_index": 0, "item": item("in_progress", "")}),
        ),
        (
            "response.content_part.added",
            json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "part": part("")}),
        ),
    ];
    for word in TEXT.split_inclusive(' ') {
        events.push(("response.output_text.delta", json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": word, "logprobs": []})));
    }
    events.extend([
        ("response.output_text.done", json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "text": TEXT, "logprobs": []})),
        ("response.content_part.done", json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "part": part(TEXT)})),
        ("response.output_item.done", json!({"output_index": 0, "item": item("completed", TEXT)})),
        ("response.completed", json!({"response": response_object("resp_1", "completed", Some(TEXT))})),
    ]);
    events
        .into_iter()
        .enumerate()
        .map(|(n, (kind, mut data))| {
            data["type"] = json!(kind);
            data["sequence_number"] = json!(n);
            sse_event(kind, &data)
        })
        .collect()
}
