//! Benchmark measurements that a load generator does not make, printed as one JSON line.
//!
//! - `bench_client events ADDR EVENTS GAP_MS REQUESTS`: REQUESTS streamed requests one after
//!   another on one keep-alive connection; the time to the first body byte and the gaps between
//!   consecutive events as they arrive (microseconds).
//! - `bench_client streams ADDR COUNT SECONDS`: COUNT streams held open at once, one event a
//!   second for SECONDS; how many completed, and the errors.
//! - `bench_client turns ADDR TURNS EVENTS`: a session of TURNS turns of EVENTS events each, over
//!   one WebSocket (`response.create` out, events back until `response.completed`) and then as
//!   TURNS streamed POSTs on one keep-alive connection; the time per turn (microseconds).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

fn request(addr: SocketAddr, events: usize, gap_ms: f64) -> Request<Full<Bytes>> {
    Request::post("/v1/responses")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .header("x-bench-events", events.to_string())
        .header("x-bench-gap-ms", gap_ms.to_string())
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-5","input":"hi","stream":true}"#,
        )))
        .unwrap_or_else(|_| unreachable!())
}

/// Sends one streamed request; returns (time to first byte, arrival time of each event).
async fn one_stream(
    sender: &mut Sender,
    addr: SocketAddr,
    events: usize,
    gap_ms: f64,
) -> Result<(Duration, Vec<Instant>), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let start = Instant::now();
    let response = sender
        .send_request(request(addr, events, gap_ms))
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let mut body = response.into_body();
    let mut first = None;
    let mut arrivals = Vec::with_capacity(events);
    let mut tail: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let now = Instant::now();
        first.get_or_insert(now - start);
        tail.extend_from_slice(&data);
        while let Some(i) = tail.windows(2).position(|w| w == b"\n\n") {
            tail.drain(..i + 2);
            arrivals.push(now);
        }
    }
    let ttfb = first.ok_or("empty body")?;
    Ok((ttfb, arrivals))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(mut times: Vec<f64>) -> serde_json::Value {
    times.sort_by(f64::total_cmp);
    serde_json::json!({
        "p50": percentile(&times, 50.0),
        "p90": percentile(&times, 90.0),
        "max": times.last().copied().unwrap_or(f64::NAN),
    })
}

/// A session of `turns` turns over one WebSocket, then the same over HTTP.
async fn turns(addr: SocketAddr, turns: usize, events: usize) -> Result<serde_json::Value, String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/v1/responses")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "x-bench-events",
        events.to_string().parse().map_err(|_| "header")?,
    );
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut socket, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut ws = Vec::with_capacity(turns);
    for turn in 0..turns {
        let create = format!(
            r#"{{"type":"response.create","model":"gpt-5","input":"turn {turn}","store":false}}"#
        );
        let start = Instant::now();
        socket
            .send(Message::text(create))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) if text.contains("response.completed") => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the socket closed".into()),
            }
        }
        ws.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let _ = socket.close(None).await;

    let mut sender = connect(addr).await?;
    let mut http = Vec::with_capacity(turns);
    for _ in 0..turns {
        let start = Instant::now();
        one_stream(&mut sender, addr, events, 0.0).await?;
        http.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(serde_json::json!({
        "turns": turns,
        "events": events,
        "ws_turn_us": summary(ws),
        "http_turn_us": summary(http),
    }))
}

async fn events(
    addr: SocketAddr,
    events: usize,
    gap_ms: f64,
    requests: usize,
) -> Result<serde_json::Value, String> {
    let mut sender = connect(addr).await?;
    let mut ttfbs = Vec::new();
    let mut gaps = Vec::new();
    for _ in 0..requests {
        let (ttfb, arrivals) = one_stream(&mut sender, addr, events, gap_ms).await?;
        if arrivals.len() != events {
            return Err(format!("got {} events of {events}", arrivals.len()));
        }
        ttfbs.push(ttfb.as_secs_f64() * 1e6);
        gaps.extend(
            arrivals
                .windows(2)
                .map(|w| (w[1] - w[0]).as_secs_f64() * 1e6),
        );
    }
    ttfbs.sort_by(f64::total_cmp);
    let mut deviation: Vec<f64> = gaps.iter().map(|g| (g - gap_ms * 1000.0).abs()).collect();
    deviation.sort_by(f64::total_cmp);
    gaps.sort_by(f64::total_cmp);
    Ok(serde_json::json!({
        "requests": requests,
        "ttfb_us": { "p50": percentile(&ttfbs, 50.0), "p99": percentile(&ttfbs, 99.0) },
        "gap_us": { "p50": percentile(&gaps, 50.0), "p99": percentile(&gaps, 99.0) },
        "gap_deviation_us": { "p50": percentile(&deviation, 50.0), "p99": percentile(&deviation, 99.0), "max": deviation.last() },
    }))
}

async fn streams(addr: SocketAddr, count: usize, seconds: usize) -> serde_json::Value {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await?;
            one_stream(&mut sender, addr, seconds, 1000.0)
                .await
                .map(|(_, a)| a.len())
        }));
        // Open in bursts, as clients arrive, rather than 10,000 SYNs at once.
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (mut completed, mut errors) = (0usize, std::collections::BTreeMap::<String, usize>::new());
    for task in tasks {
        match task.await {
            Ok(Ok(n)) if n == seconds => completed += 1,
            Ok(Ok(n)) => {
                *errors
                    .entry(format!("short stream ({n} events)"))
                    .or_default() += 1
            }
            Ok(Err(e)) => *errors.entry(e).or_default() += 1,
            Err(e) => *errors.entry(e.to_string()).or_default() += 1,
        }
    }
    serde_json::json!({
        "streams": count, "completed": completed, "errors": errors,
        "elapsed_s": started.elapsed().as_secs_f64(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let addr: SocketAddr = match arg(2).parse() {
        Ok(addr) => addr,
        Err(_) => {
            eprintln!(
                "usage: bench_client events ADDR EVENTS GAP_MS REQUESTS | streams ADDR COUNT SECONDS | turns ADDR TURNS EVENTS"
            );
            std::process::exit(2);
        }
    };
    let result = match arg(1).as_str() {
        "events" => events(
            addr,
            arg(3).parse().unwrap_or(20),
            arg(4).parse().unwrap_or(5.0),
            arg(5).parse().unwrap_or(100),
        )
        .await
        .unwrap_or_else(|e| serde_json::json!({ "error": e })),
        "streams" => {
            streams(
                addr,
                arg(3).parse().unwrap_or(10_000),
                arg(4).parse().unwrap_or(30),
            )
            .await
        }
        "turns" => turns(
            addr,
            arg(3).parse().unwrap_or(20),
            arg(4).parse().unwrap_or(20),
        )
        .await
        .unwrap_or_else(|e| serde_json::json!({ "error": e })),
        other => {
            eprintln!("unknown measurement {other:?}");
            std::process::exit(2);
        }
    };
    println!("{result}");
}
