//! What a socket's conversation has been, kept on a route with several credentials so that a turn
//! can be sent again on another credential's socket. Later turns on a socket send only their new
//! input with `previous_response_id`, which only the socket they were answered on knows; the
//! turn sent elsewhere carries the whole conversation instead, as the Responses API builds it:
//! the last response's input and output, then the turn's new input.

use serde_json::Value;

use crate::telemetry::usage::message_type;

/// One socket's conversation, as far as keyward saw it.
pub struct Conversation {
    /// The last response's id and its whole context (its input, then its output); `None` when
    /// the context is not known (it continued a response keyward did not see, or grew past the
    /// limit).
    last: Option<(String, Vec<Value>, usize)>,
    /// The running turn.
    turn: Option<Turn>,
    /// The most bytes of conversation kept (`--max-body`: a whole turn must fit in one message).
    limit: usize,
}

struct Turn {
    /// The client's `response.create`, as it sent it.
    message: Value,
    /// The turn's whole input and its size, when known.
    input: Option<(Vec<Value>, usize)>,
    /// The output items the upstream has finished so far.
    output: Vec<Value>,
    /// The upstream has sent the client something of this turn's response.
    answered: bool,
}

impl Conversation {
    pub fn new(limit: u64) -> Self {
        Self {
            last: None,
            turn: None,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        }
    }

    /// The client sent `text`: a `response.create` starts a turn.
    pub fn client_message(&mut self, text: &str) {
        if message_type(text.as_bytes()).as_deref() != Some("response.create") {
            return;
        }
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            self.turn = None;
            return;
        };
        let new_input = match &message["input"] {
            Value::String(text) => {
                vec![serde_json::json!({"type": "message", "role": "user", "content": text})]
            }
            Value::Array(items) => items.clone(),
            _ => Vec::new(),
        };
        let input = match message["previous_response_id"].as_str() {
            None => Some((new_input, text.len())),
            Some(previous) => match self.last.take() {
                Some((id, mut context, size)) if id == previous => {
                    context.extend(new_input);
                    Some((context, size + text.len()))
                }
                _ => None,
            },
        };
        self.turn = Some(Turn {
            message,
            input: input.filter(|(_, size)| *size <= self.limit),
            output: Vec::new(),
            answered: false,
        });
    }

    /// The upstream sent `text`. Its seconds of rest when it refuses the running turn, before
    /// any of its response, because the plan's limit is reached.
    pub fn upstream_message(&mut self, text: &str) -> Option<i64> {
        let kind = message_type(text.as_bytes())?;
        let turn = self.turn.as_mut()?;
        match kind.as_str() {
            "error" if !turn.answered => spent_for(text),
            "response.output_item.done" => {
                turn.answered = true;
                let event: Value = serde_json::from_str(text).ok()?;
                turn.output.push(event.get("item")?.clone());
                None
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.last = None;
                let turn = self.turn.take()?;
                let event: Value = serde_json::from_str(text).ok()?;
                let response = event.get("response")?;
                let id = response.get("id")?.as_str()?.to_owned();
                let output = if turn.output.is_empty() {
                    response["output"].as_array().cloned().unwrap_or_default()
                } else {
                    turn.output
                };
                let (mut context, size) = turn.input?;
                let size = size
                    + output
                        .iter()
                        .map(|item| item.to_string().len())
                        .sum::<usize>();
                context.extend(output);
                self.last = (size <= self.limit).then_some((id, context, size));
                None
            }
            other => {
                turn.answered |= other.starts_with("response.");
                None
            }
        }
    }

    /// The running turn as a message another socket can answer: its whole input, no
    /// `previous_response_id`. `None` when its conversation is not known.
    pub fn replay(&self) -> Option<String> {
        let turn = self.turn.as_ref()?;
        let (input, _) = turn.input.as_ref()?;
        let mut message = turn.message.clone();
        let fields = message.as_object_mut()?;
        fields.remove("previous_response_id");
        fields.insert("input".into(), Value::Array(input.clone()));
        Some(message.to_string())
    }
}

/// Whether an `error` message says the plan is spent, and for how many seconds: the same test as
/// an HTTP answer's ([`crate::proxy::pipeline::spent_for`]), on the message's status, body and
/// the headers it may carry.
fn spent_for(text: &str) -> Option<i64> {
    let message: Value = serde_json::from_str(text).ok()?;
    let status = message
        .get("status")
        .or_else(|| message.get("status_code"))
        .and_then(Value::as_u64);
    if status.is_some_and(|status| status != 429) {
        return None;
    }
    let mut headers = http::HeaderMap::new();
    if let Some(fields) = message.get("headers").and_then(Value::as_object) {
        for (name, value) in fields {
            let value = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(&value),
            ) {
                headers.insert(name, value);
            }
        }
    }
    crate::proxy::pipeline::spent_for(&headers, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed(id: &str, text: &str) -> String {
        serde_json::json!({"type": "response.completed", "response": {"id": id, "output": [
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
        ]}})
        .to_string()
    }

    #[test]
    fn a_later_turn_is_replayed_with_the_whole_conversation() {
        let mut conversation = Conversation::new(1 << 20);
        conversation.client_message(
            r#"{"type":"response.create","model":"gpt-5","input":"hi","store":false}"#,
        );
        assert_eq!(
            conversation.upstream_message(r#"{"type":"response.created","response":{"id":"r1"}}"#),
            None
        );
        conversation.upstream_message(&completed("r1", "hello"));
        conversation.client_message(
            r#"{"type":"response.create","model":"gpt-5","previous_response_id":"r1","input":[{"type":"message","role":"user","content":"again"}]}"#,
        );
        let spent = r#"{"type":"error","status":429,"error":{"type":"usage_limit_reached","resets_in_seconds":60}}"#;
        assert_eq!(conversation.upstream_message(spent), Some(60));
        let replay: Value = serde_json::from_str(&conversation.replay().unwrap()).unwrap();
        assert!(replay.get("previous_response_id").is_none(), "{replay}");
        assert_eq!(replay["model"], "gpt-5");
        let texts: Vec<String> = replay["input"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["content"].to_string())
            .collect();
        assert_eq!(texts.len(), 3, "{replay}");
        assert!(texts[0].contains("hi") && texts[1].contains("hello"));
        assert!(texts[2].contains("again"));
    }

    #[test]
    fn a_turn_is_not_moved_once_answered_or_when_its_conversation_is_unknown() {
        let spent = r#"{"type":"error","status":429,"error":{"type":"usage_limit_reached"}}"#;
        let mut conversation = Conversation::new(1 << 20);
        conversation.client_message(r#"{"type":"response.create","input":"hi"}"#);
        conversation.upstream_message(r#"{"type":"response.created","response":{"id":"r1"}}"#);
        assert_eq!(conversation.upstream_message(spent), None, "answered");
        // Continuing a response keyward never saw: nothing to send elsewhere.
        conversation.client_message(
            r#"{"type":"response.create","previous_response_id":"elsewhere","input":"x"}"#,
        );
        assert!(conversation.upstream_message(spent).is_some());
        assert_eq!(conversation.replay(), None);
        // A rate limit is not a spent plan.
        conversation.client_message(r#"{"type":"response.create","input":"hi"}"#);
        let rate = r#"{"type":"error","status":429,"error":{"type":"rate_limit_exceeded"}}"#;
        assert_eq!(conversation.upstream_message(rate), None);
        // Past the limit, the conversation is not kept.
        let mut small = Conversation::new(40);
        small.client_message(r#"{"type":"response.create","input":"a longer message than forty"}"#);
        assert!(small.upstream_message(spent).is_some());
        assert_eq!(small.replay(), None);
    }
}
