//! A fast fake upstream for benchmarks: speaks enough of the Responses API, built on the same
//! stack as keyward (tokio + hyper).
//!
//! `bench_upstream [ADDR]` listens (default 127.0.0.1:0) and prints `listening on ADDR`. Each
//! `POST` is answered according to its headers, which pass through every proxy under test:
//! - `x-bench-events: N` — an SSE stream of N events (the last one `response.completed`);
//!   without it (or 0), a small JSON response;
//! - `x-bench-gap-ms: G` — G milliseconds between events (fractions allowed; default 0).
//!
//! The request body is read whole (and discarded) before answering.

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

fn event(n: usize, last: bool) -> Bytes {
    if last {
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

async fn answer(
    req: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
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
                .await;
        });
    }
}
