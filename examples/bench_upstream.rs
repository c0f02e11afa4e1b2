//! A fast fake upstream for benchmarks: speaks enough of the Responses API, built on the same
//! stack as keyward (tokio + hyper).
//!
//! `bench_upstream [ADDR]` listens (default 127.0.0.1:0) and prints `listening on ADDR`. Each
//! `POST` is answered according to its headers, which pass through every proxy under test:
//! - `x-bench-events: N` — an SSE stream of N events (the first `response.created`, the last
//!   `response.completed`, text deltas between);
//!   without it (or 0), a small JSON response;
//! - `x-bench-gap-ms: G` — G milliseconds between events (fractions allowed; default 0).
//!
//! The request body is read whole (and discarded) before answering.
//!
//! A `GET` with `Upgrade: websocket` becomes a Responses WebSocket: every `response.create`
//! message is answered with `x-bench-events` (from the handshake, default 20) event messages, the
//! last one `response.completed`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const JSON: &str = r#"{"id":"resp_bench","object":"response","status":"completed","model":"gpt-5","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Hello!"}]}],"usage":{"input_tokens":12,"output_tokens":3,"total_tokens":15}}"#;

const CREATED: &str = r#"{"id":"resp_bench","object":"response","status":"in_progress","model":"gpt-5","output":[],"usage":null}"#;

fn event(n: usize, last: bool) -> Bytes {
    if n == 0 && !last {
        // As the API does, the stream opens with the response's id.
        Bytes::from(format!(
            "event: response.created\ndata: {{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{CREATED}}}\n\n"
        ))
    } else if last {
        Bytes::from(format!(
            "event: response.completed\ndata: {{\"type\":\"response.completed\",\"sequence_number\":{n},\"response\":{JSON}}}\n\n"
        ))
    } else {
        Bytes::from(format!(
            "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":{n},\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"token{n} \"}}\n\n"
        ))
    }
}

fn header<T: std::str::FromStr>(req: &Request<Incoming>, name: &str) -> Option<T> {
    req.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The Responses WebSocket: each `response.create` gets `events` messages.
fn websocket(mut req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let events: usize = header(&req, "x-bench-events").unwrap_or(20);
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            if !text.contains("response.create") {
                continue;
            }
            for n in 0..events {
                let event = event(n, n + 1 == events);
                let data = String::from_utf8_lossy(&event);
                let json = data.split("data: ").nth(1).unwrap_or("").trim().to_owned();
                if socket.send(Message::text(json)).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert("connection", http::HeaderValue::from_static("upgrade"));
    headers.insert("upgrade", http::HeaderValue::from_static("websocket"));
    if let Ok(accept) = http::HeaderValue::from_str(&key) {
        headers.insert("sec-websocket-accept", accept);
    }
    response
}

async fn answer(
    req: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    if req.headers().contains_key("upgrade") {
        return Ok(websocket(req));
    }
    let events: usize = header(&req, "x-bench-events").unwrap_or(0);
    let gap_ms: f64 = header(&req, "x-bench-gap-ms").unwrap_or(0.0);
    // Read the whole body, as a real API does before answering.
    let _ = req.into_body().collect().await;
    if events == 0 {
        let mut response = Response::new(Full::new(Bytes::from_static(JSON.as_bytes())).boxed());
        response.headers_mut().insert(
            "content-type",
            "application/json"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        return Ok(response);
    }
    let gap = Duration::from_secs_f64(gap_ms / 1000.0);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        for n in 0..events {
            if n > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            if tx.send(event(n, n + 1 == events)).await.is_err() {
                return;
            }
        }
    });
    let frames = futures_stream(rx);
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    response.headers_mut().insert(
        "content-type",
        "text/event-stream"
            .parse()
            .unwrap_or_else(|_| unreachable!()),
    );
    Ok(response)
}

fn futures_stream(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync + 'static {
    struct Rx<F>(F);
    impl<F> futures_core::Stream for Rx<F>
    where
        F: FnMut(
                &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>>
            + Unpin,
    {
        type Item = Result<Frame<Bytes>, Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            (self.0)(cx)
        }
    }
    Rx(move |cx: &mut std::task::Context<'_>| {
        rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .with_upgrades()
                .await;
        });
    }
}
