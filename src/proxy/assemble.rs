//! For a client that asked for no stream, the ChatGPT backend's stream (it always streams) read
//! to its end and assembled into the one response object the client expects; and the request
//! body read whole, as the backend's rules need it.

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use crate::config::Limits;
use crate::proxy::body::UpstreamBody;
use crate::proxy::error::ProxyError;

/// Reads a whole request body, refusing more than `limit` bytes.
pub(crate) async fn read_limited(
    body: Incoming,
    headers: &HeaderMap,
    limit: u64,
) -> Result<Bytes, ProxyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, cap).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(err) => Err(ProxyError::ClientBody(err.to_string())),
    }
}

/// The most of a small answer keyward reads whole (the backend's model list).
const MAX_ANSWER: usize = 4 << 20;

/// A small answer read whole, within the idle timeout and [`MAX_ANSWER`].
pub(crate) async fn read_answer(body: UpstreamBody, limits: &Limits) -> Result<Bytes, ProxyError> {
    let read = Limited::new(body, MAX_ANSWER).collect();
    match tokio::time::timeout(limits.idle_timeout, read).await {
        Err(_) => Err(ProxyError::BackendStream(
            "the backend did not finish its model list in time".into(),
        )),
        Ok(Err(err)) => Err(ProxyError::BackendStream(format!(
            "the backend's model list could not be read: {err}"
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Reads the backend's event stream to its end and returns what a non-streaming call to the
/// Responses API returns: the final response object (or the error).
pub(crate) async fn assemble(
    mut body: UpstreamBody,
    idle: std::time::Duration,
) -> Result<(StatusCode, Value), ProxyError> {
    let mut buffer = BytesMut::new();
    let mut items: Vec<Value> = Vec::new();
    let answer = 'read: loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(ProxyError::BackendStream(format!(
                    "the backend sent nothing for {}s",
                    idle.as_secs()
                )));
            }
            Ok(None) => {
                return Err(ProxyError::BackendStream(
                    "the backend ended the stream without response.completed".into(),
                ));
            }
            Ok(Some(Err(err))) => {
                return Err(ProxyError::BackendStream(format!(
                    "the backend stream broke: {err}"
                )));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        while let Some(end) = find_event_end(&buffer) {
            let event = buffer.split_to(end.0);
            let _ = buffer.split_to(end.1);
            let Some(json) = event_data(&event) else {
                continue;
            };
            match json["type"].as_str().unwrap_or("") {
                "response.output_item.done" => items.push(json["item"].clone()),
                "response.completed" | "response.incomplete" => {
                    let mut response = json["response"].clone();
                    let empty = response["output"].as_array().is_none_or(|o| o.is_empty());
                    if empty && !items.is_empty() {
                        response["output"] = Value::Array(items);
                    }
                    break 'read (StatusCode::OK, response);
                }
                "response.failed" => {
                    let error = &json["response"]["error"];
                    break 'read (
                        StatusCode::BAD_GATEWAY,
                        openai_error(error, "response_failed"),
                    );
                }
                "error" => {
                    let error = if json["error"].is_object() {
                        &json["error"]
                    } else {
                        &json
                    };
                    break 'read (
                        StatusCode::BAD_GATEWAY,
                        openai_error(error, "upstream_error"),
                    );
                }
                _ => {}
            }
        }
    };
    finish_in_background(body);
    Ok(answer)
}

/// Reads what follows the final event (normally just the stream's end) after the answer has gone,
/// so that the connection can carry another request. A backend still talking after 5 s loses the
/// connection instead.
fn finish_in_background(mut body: UpstreamBody) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
    });
}

/// Position of the end of the first complete event in `buf`: (event length, separator length).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The JSON in an SSE event's `data:` lines.
fn event_data(event: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(event).ok()?;
    let data: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        return None;
    }
    serde_json::from_str(&data.join("\n")).ok()
}

fn openai_error(error: &Value, default_code: &str) -> Value {
    serde_json::json!({
        "error": {
            "message": error["message"].as_str().unwrap_or("the backend reported a failure"),
            "type": error["type"].as_str().unwrap_or("upstream_error"),
            "code": error["code"].as_str().unwrap_or(default_code),
            "param": null,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_either_separator() {
        assert_eq!(find_event_end(b"data: 1\n\ndata: 2"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: 1\r\n\r\nx"), Some((7, 4)));
        assert_eq!(find_event_end(b"data: 1\n"), None);
        assert_eq!(
            event_data(b"event: x\ndata: {\"a\":\ndata: 1}").unwrap()["a"],
            1
        );
        assert_eq!(event_data(b": comment"), None);
    }
}
