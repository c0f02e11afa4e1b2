//! A fake upstream with a Responses WebSocket endpoint (tokio-tungstenite, as keyward uses), and
//! a WebSocket client for talking to keyward.

// tungstenite's handshake callback returns its error response by value.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::{WebSocketStream, accept_hdr_async, client_async};

pub type UpstreamSocket = WebSocketStream<TcpStream>;
pub type ClientSocket = WebSocketStream<TcpStream>;

/// How the fake answers a handshake.
#[derive(Clone)]
pub enum Answer {
    Accept,
    Refuse(StatusCode, &'static str),
}

pub struct FakeWsUpstream {
    pub addr: SocketAddr,
    /// Sockets accepted so far.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    /// The request headers of every handshake, accepted or not.
    handshakes: Arc<Mutex<Vec<HeaderMap>>>,
    sockets: mpsc::UnboundedReceiver<UpstreamSocket>,
}

impl FakeWsUpstream {
    /// Accepts every handshake.
    pub async fn start() -> Self {
        Self::answering(Vec::new()).await
    }

    /// Answers the first handshakes as `answers` says, then accepts.
    pub async fn answering(answers: Vec<Answer>) -> Self {
        Self::serve(answers, None, None).await
    }

    /// Answers every `response.create` on its own, as the API would, with `text` (a warm-up,
    /// `"generate": false`, with an empty response); for real clients.
    pub async fn responding(text: &'static str) -> Self {
        Self::serve(Vec::new(), Some(text), None).await
    }

    /// Answers the first `answered` `response.create` messages (on all its sockets) as
    /// [`Self::responding`] does; every later one gets the error a spent plan gets.
    pub async fn responding_until_spent(text: &'static str, answered: usize) -> Self {
        Self::serve(Vec::new(), Some(text), Some(answered)).await
    }

    async fn serve(
        answers: Vec<Answer>,
        respond: Option<&'static str>,
        spent_after: Option<usize>,
    ) -> Self {
        let creates = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
        let (tx, sockets) = mpsc::unbounded_channel();
        let seen = handshakes.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, answers, tx) = (seen.clone(), answers.clone(), tx.clone());
                let counter = counter.clone();
                let creates = creates.clone();
                tokio::spawn(async move {
                    let answer = answers
                        .lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or(Answer::Accept);
                    let callback = |req: &Request, mut resp: Response| {
                        seen.lock().unwrap().push(req.headers().clone());
                        match answer {
                            Answer::Accept => {
                                let headers = resp.headers_mut();
                                headers
                                    .insert("x-codex-turn-state", HeaderValue::from_static("ts-1"));
                                headers.insert("x-models-etag", HeaderValue::from_static("etag-7"));
                                headers.insert("openai-model", HeaderValue::from_static("gpt-5"));
                                Ok(resp)
                            }
                            Answer::Refuse(status, body) => {
                                let mut refusal = ErrorResponse::new(Some(body.to_owned()));
                                *refusal.status_mut() = status;
                                refusal.headers_mut().insert(
                                    "content-type",
                                    HeaderValue::from_static("application/json"),
                                );
                                Err(refusal)
                            }
                        }
                    };
                    if let Ok(socket) = accept_hdr_async(stream, callback).await {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        match respond {
                            Some(text) => respond_to(socket, text, &creates, spent_after).await,
                            None => {
                                let _ = tx.send(socket);
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            accepted,
            handshakes,
            sockets,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/responses", self.addr)
    }

    pub fn handshakes(&self) -> Vec<HeaderMap> {
        self.handshakes.lock().unwrap().clone()
    }

    /// The next socket keyward opened.
    pub async fn next_socket(&mut self) -> UpstreamSocket {
        super::within("keyward's socket at the upstream", self.sockets.recv())
            .await
            .unwrap()
    }
}

/// Opens a WebSocket to keyward's `/v1/responses` with `headers`; the handshake's answer (101,
/// or the refusal as an error).
pub async fn connect(
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<
    (
        ClientSocket,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/v1/responses")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    super::within("the WebSocket handshake", client_async(request, stream)).await
}

/// The next message on a socket (a test fails rather than waits for ever).
pub async fn next(socket: &mut WebSocketStream<TcpStream>) -> Message {
    super::within("the next WebSocket message", socket.next())
        .await
        .expect("the socket ended")
        .expect("a WebSocket error")
}

/// The next text message, skipping pings and pongs.
pub async fn next_text(socket: &mut WebSocketStream<TcpStream>) -> String {
    loop {
        match next(socket).await {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

pub async fn send_text(socket: &mut WebSocketStream<TcpStream>, text: &str) {
    socket.send(Message::text(text.to_owned())).await.unwrap();
}

/// A `response.create` message.
pub fn create(input: &str, previous: Option<&str>) -> String {
    let mut message = serde_json::json!({
        "type": "response.create", "model": "gpt-5", "input": input, "store": false,
    });
    if let Some(previous) = previous {
        message["previous_response_id"] = previous.into();
    }
    message.to_string()
}

/// The upstream's events for one response, `"type"` first as the API sends them.
pub fn events(id: &str, text: &str) -> Vec<String> {
    let mut out = vec![format!(
        r#"{{"type":"response.created","response":{{"id":"{id}","object":"response","model":"gpt-5","status":"in_progress"}}}}"#
    )];
    for word in text.split_inclusive(' ') {
        out.push(format!(
            r#"{{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":{}}}"#,
            serde_json::Value::from(word)
        ));
    }
    out.push(format!(
        r#"{{"type":"response.completed","response":{{"id":"{id}","object":"response","model":"gpt-5","status":"completed","output":[{{"type":"message","id":"msg_1","role":"assistant","status":"completed","content":[{{"type":"output_text","text":{},"annotations":[]}}]}}],"usage":{{"input_tokens":12,"input_tokens_details":{{"cached_tokens":0}},"output_tokens":7,"output_tokens_details":{{"reasoning_tokens":0}},"total_tokens":19}}}}}}"#,
        serde_json::Value::from(text)
    ));
    out
}

/// The API's side of a socket: every `response.create` gets a whole response (past
/// `spent_after` of them, counted in `creates`, the error of a spent plan).
async fn respond_to(
    mut socket: UpstreamSocket,
    text: &str,
    creates: &std::sync::atomic::AtomicUsize,
    spent_after: Option<usize>,
) {
    let mut turn = 0;
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(message) = message else {
            continue;
        };
        let message: serde_json::Value = serde_json::from_str(message.as_str()).unwrap_or_default();
        if message["type"] != "response.create" {
            continue;
        }
        turn += 1;
        let created = creates.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if spent_after.is_some_and(|answered| created >= answered) {
            let spent = r#"{"type":"error","status":429,"error":{"type":"usage_limit_reached","message":"The usage limit has been reached","plan_type":"plus","resets_in_seconds":3600}}"#;
            if socket.send(Message::text(spent)).await.is_err() {
                return;
            }
            continue;
        }
        let id = format!("resp_ws_{turn}");
        let answer: Vec<String> = if message["generate"] == false {
            events(&id, "")
                .into_iter()
                .filter(|e| !e.contains("output_text.delta"))
                .collect()
        } else {
            // The whole sequence the API streams (items, parts, deltas, completion), one
            // event a message.
            let _ = text;
            super::responses::response_events()
                .iter()
                .filter_map(|event| {
                    let event = String::from_utf8_lossy(event);
                    Some(event.split("data: ").nth(1)?.trim().to_owned())
                })
                .collect()
        };
        for event in answer {
            if socket.send(Message::text(event)).await.is_err() {
                return;
            }
        }
    }
}
