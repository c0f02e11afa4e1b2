//! What reaches the upstream, what comes back, and the requests keyward refuses.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::support::client::{self, next_chunk};
use crate::support::keyward::{TEST_KEY, start_for};
use crate::support::upstream::{self, FakeUpstream, sse_event};
use crate::support::within;

#[tokio::test]
async fn credential_and_host_are_replaced_and_identity_headers_pass() {
    let upstream = FakeUpstream::ok_json().await;
    let (addr, _keyward) = start_for(&upstream.url(), &[]).await;

    let req = Request::post("/v1/responses")
        .header("host", "localhost:1")
        .header("authorization", "Bearer client-supplied")
        .header("api-key", "client-supplied")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Y2xpZW50")
        .header("te", "trailers")
        .header("session-id", "sess-1")
        .header("x-codex-window-id", "win-1")
        .header("originator", "codex_exec")
        .header("x-client-request-id", "creq-1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-5","input":"hi"}"#,
        )))
        .unwrap();
    let reply = client::read(client::send(addr, req).await).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers["x-request-id"], "req_fake",
        "response headers pass back"
    );

    let seen = upstream.next_request().await;
    let h = &seen.headers;
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/v1/responses");
    assert_eq!(h["authorization"], format!("Bearer {TEST_KEY}").as_str());
    assert_eq!(h.get_all("authorization").iter().count(), 1);
    assert_eq!(h["host"], upstream.addr.to_string().as_str());
    for gone in [
        "api-key",
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
    ] {
        assert!(!h.contains_key(gone), "{gone} must not be forwarded: {h:?}");
    }
    for (name, value) in [
        ("session-id", "sess-1"),
        ("x-codex-window-id", "win-1"),
        ("originator", "codex_exec"),
        ("x-client-request-id", "creq-1"),
        ("content-type", "application/json"),
    ] {
        assert_eq!(h[name], value);
    }
    assert_eq!(&seen.body[..], br#"{"model":"gpt-5","input":"hi"}"#);
}

#[tokio::test]
async fn azure_gets_the_api_key_header_and_keeps_its_query() {
    let upstream = FakeUpstream::ok_json().await;
    let url = format!(
        "http://{}/openai/v1/responses?api-version=preview",
        upstream.addr
    );
    let (addr, _keyward) = start_for(&url, &["--auth-header", "api-key"]).await;

    let reply = client::post_responses(addr, "{}").await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = upstream.next_request().await;
    assert_eq!(seen.uri, "/openai/v1/responses?api-version=preview");
    assert_eq!(seen.headers["api-key"], TEST_KEY);
    assert!(!seen.headers.contains_key("authorization"));
}

#[tokio::test]
async fn events_are_relayed_one_at_a_time() {
    // The upstream sends the next event only after the client has received the previous one.
    // Any buffering in keyward would hold event N back until N+1 came, and this would time out.
    let (upstream, mut streams) = FakeUpstream::driven().await;
    let (addr, _keyward) = start_for(&upstream.url(), &[]).await;

    let req = Request::post("/v1/responses")
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::from_static(br#"{"stream":true}"#)))
        .unwrap();
    let response = client::send(addr, req).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(!response.headers().contains_key("content-length"));
    let mut body = response.into_body();
    let tx = within("the upstream stream", streams.recv()).await.unwrap();

    for i in 0..20 {
        let event = sse_event(
            "response.output_text.delta",
            &json!({"type":"response.output_text.delta","delta":i}),
        );
        tx.send(event.clone()).await.unwrap();
        let got = next_chunk(&mut body).await.expect("an event");
        assert_eq!(got, event, "event {i} arrived whole and alone");
    }
    drop(tx);
    assert_eq!(
        next_chunk(&mut body).await,
        None,
        "the stream ends cleanly when the upstream's does"
    );
}

#[tokio::test]
async fn other_paths_and_methods_are_refused_without_reaching_the_upstream() {
    let upstream = FakeUpstream::ok_json().await;
    let (addr, _keyward) = start_for(&upstream.url(), &[]).await;

    let cases = [
        (
            "GET",
            "/v1/responses",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "POST",
            "/v1/responses?x=1",
            StatusCode::FORBIDDEN,
            "not_forwarded",
        ),
        (
            "POST",
            "/v1/chat/completions",
            StatusCode::FORBIDDEN,
            "not_forwarded",
        ),
        ("GET", "/v1/files", StatusCode::FORBIDDEN, "not_forwarded"),
        (
            "GET",
            "/v1/responses/resp_1/other",
            StatusCode::FORBIDDEN,
            "not_forwarded",
        ),
        (
            "GET",
            "/v1/responses/..%2Ffiles",
            StatusCode::FORBIDDEN,
            "not_forwarded",
        ),
        (
            "POST",
            "/v1/responses/",
            StatusCode::FORBIDDEN,
            "not_forwarded",
        ),
        ("GET", "/", StatusCode::NOT_FOUND, "not_found"),
        ("GET", "/shutdown", StatusCode::NOT_FOUND, "not_found"),
    ];
    for (method, path, status, code) in cases {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let reply = client::read(client::send(addr, req).await).await;
        assert_eq!(reply.status, status, "{method} {path}");
        let body = reply.json();
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().len() > 10);
        assert!(body["error"]["type"].is_string());
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(reply.headers.contains_key("allow"), "{method} {path}");
        }
    }
    assert!(
        upstream.requests().is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn a_declared_oversize_body_gets_413_before_it_is_sent() {
    let upstream = FakeUpstream::ok_json().await;
    let (addr, _keyward) = start_for(&upstream.url(), &["--max-body", "1KiB"]).await;

    // Only the head is written: keyward must answer without waiting for the body.
    let head = "POST /v1/responses HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 10000000\r\n\r\n";
    let (status, text) = client::raw(addr, head.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains("request_too_large") && text.contains("--max-body"),
        "{text}"
    );
    assert!(upstream.requests().is_empty());

    // At the limit it passes.
    let reply = client::post_responses(addr, &"x".repeat(1024)).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn a_chunked_body_that_grows_past_the_limit_is_cut_with_413() {
    let upstream = FakeUpstream::ok_json().await;
    let (addr, _keyward) = start_for(&upstream.url(), &["--max-body", "1KiB"]).await;

    let mut request =
        b"POST /v1/responses HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        request.extend_from_slice(format!("{:x}\r\n{}\r\n", 512, "a".repeat(512)).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let (status, text) = client::raw(addr, &request).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("request_too_large"), "{text}");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let upstream = FakeUpstream::ok_json().await;
    let (addr, _keyward) = start_for(&upstream.url(), &["--max-headers", "8KiB"]).await;

    let big = "a".repeat(10 * 1024);
    let request = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: localhost\r\nx-big: {big}\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    let (status, text) = client::raw(addr, request.as_bytes()).await;
    assert_eq!(status, 431, "{text}");
    assert!(
        text.contains("request_headers_too_large") && text.contains("--max-headers"),
        "{text}"
    );

    // Far beyond the limit, the HTTP parser itself refuses the head.
    let huge = "a".repeat(64 * 1024);
    let request =
        format!("POST /v1/responses HTTP/1.1\r\nhost: localhost\r\nx-big: {huge}\r\n\r\n");
    let (status, _) = client::raw(addr, request.as_bytes()).await;
    assert_eq!(status, 431);
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_with_an_actionable_message() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (addr, _keyward) = start_for(&format!("http://127.0.0.1:{port}/v1/responses"), &[]).await;
    let reply = client::post_responses(addr, "{}").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let body = reply.json();
    assert_eq!(body["error"]["code"], "upstream_unreachable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not reach the upstream")
    );
    assert!(
        !reply.text().contains(&port.to_string()),
        "internal detail stays in the log"
    );
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_a_504() {
    let upstream = FakeUpstream::start(|_| std::future::pending()).await;
    let (addr, _keyward) = start_for(&upstream.url(), &["--response-timeout", "1s"]).await;
    let reply = client::post_responses(addr, "{}").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.json()["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn a_silent_stream_ends_with_an_error_event_naming_the_cause() {
    let upstream = FakeUpstream::start(|_| {
        let (response, tx) = upstream::stream("text/event-stream");
        tokio::spawn(async move {
            tx.send(sse_event(
                "response.created",
                &json!({"type":"response.created"}),
            ))
            .await
            .unwrap();
            // Then silence, with the connection held open.
            tx.closed().await;
        });
        async move { response }
    })
    .await;
    let (addr, _keyward) = start_for(&upstream.url(), &["--idle-timeout", "1s"]).await;
    let req = Request::post("/v1/responses")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let mut body = client::send(addr, req).await.into_body();

    let first = next_chunk(&mut body).await.unwrap();
    assert!(String::from_utf8_lossy(&first).contains("response.created"));
    let last = next_chunk(&mut body)
        .await
        .expect("an error event, not a silent end");
    let text = String::from_utf8_lossy(&last);
    assert!(text.starts_with("event: error\ndata: "), "{text}");
    let data: serde_json::Value =
        serde_json::from_str(text.trim_start_matches("event: error\ndata: ").trim()).unwrap();
    assert_eq!(data["type"], "error");
    assert_eq!(data["code"], "stream_idle_timeout");
    assert_eq!(data["error"]["code"], "stream_idle_timeout");
    assert!(data["message"].as_str().unwrap().contains("--idle-timeout"));
    assert_eq!(next_chunk(&mut body).await, None);
}

#[tokio::test]
async fn events_that_arrived_together_are_relayed_together_and_whole() {
    // A plain-TCP upstream that writes 300 events, each its own chunk, in one write.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fast = listener.local_addr().unwrap();
    let events: Vec<String> = (0..300)
        .map(|i| format!("event: response.output_text.delta\ndata: {{\"delta\":{i}}}\n\n"))
        .collect();
    let sent = events.concat();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 65536];
        let _ = s.read(&mut buf).await;
        let mut reply = String::from(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        for event in &events {
            reply.push_str(&format!("{:x}\r\n{event}\r\n", event.len()));
        }
        reply.push_str("0\r\n\r\n");
        s.write_all(reply.as_bytes()).await.unwrap();
        let _ = s.read(&mut buf).await;
    });
    let (addr, _keyward) = start_for(&format!("http://{fast}/v1/responses"), &[]).await;
    let req = Request::post("/v1/responses")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let mut body = client::send(addr, req).await.into_body();
    let mut received = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = next_chunk(&mut body).await {
        chunks += 1;
        received.extend_from_slice(&chunk);
    }
    assert_eq!(
        String::from_utf8_lossy(&received),
        sent,
        "every event, whole and in order"
    );
    assert!(
        chunks < 30,
        "events already received leave together, not one chunk each: {chunks} chunks"
    );
}

#[tokio::test]
async fn a_stream_that_breaks_mid_event_ends_with_a_separate_error_event() {
    // A plain-TCP upstream whose connections die in the middle of their second event. Whether
    // keyward reads the data and the break together or apart varies, so it is tried ten times.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dying = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 65536];
            let _ = s.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            let whole = "event: a\ndata: 1\n\n";
            let partial = "event: b\ndata: {\"ty";
            let body = format!(
                "{:x}\r\n{whole}\r\n{:x}\r\n{partial}\r\n",
                whole.len(),
                partial.len()
            );
            let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
            // Dropped here: the chunked body never ends.
        }
    });
    let (addr, _keyward) = start_for(&format!("http://{dying}/v1/responses"), &[]).await;
    for attempt in 0..10 {
        let req = Request::post("/v1/responses")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let mut body = client::send(addr, req).await.into_body();
        let mut all = String::new();
        while let Some(chunk) = next_chunk(&mut body).await {
            all.push_str(&String::from_utf8_lossy(&chunk));
        }
        let events: Vec<&str> = all.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events[0], "event: a\ndata: 1", "attempt {attempt}: {all}");
        let last = events.last().unwrap();
        assert!(
            last.starts_with("event: error\ndata: {"),
            "attempt {attempt}: the error is an event of its own: {all:?}"
        );
        assert!(last.contains("upstream_stream_error"), "{all}");
    }
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_request() {
    let (upstream, mut streams) = FakeUpstream::driven().await;
    let (addr, _keyward) = start_for(&upstream.url(), &[]).await;
    let req = Request::post("/v1/responses")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let mut body = client::send(addr, req).await.into_body();
    let tx = within("the upstream stream", streams.recv()).await.unwrap();
    tx.send(Bytes::from_static(b"event: a\ndata: 1\n\n"))
        .await
        .unwrap();
    next_chunk(&mut body).await.unwrap();

    drop(body); // the client hangs up mid-stream
    within("the upstream to see its request dropped", tx.closed()).await;
}

#[tokio::test]
async fn a_client_that_goes_away_before_the_answer_cancels_the_upstream_request() {
    // The upstream never answers; it reports when its request future is dropped, which happens
    // when keyward closes the upstream connection.
    let (dropped_tx, dropped) = tokio::sync::mpsc::unbounded_channel::<()>();
    let upstream = FakeUpstream::start(move |_| {
        let guard = DropSignal(dropped_tx.clone());
        async move {
            let _guard = guard;
            std::future::pending().await
        }
    })
    .await;
    let (addr, _keyward) = start_for(&upstream.url(), &[]).await;

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(b"POST /v1/responses HTTP/1.1\r\nhost: localhost\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    upstream.next_request().await;
    drop(stream);

    let mut dropped = dropped;
    within("the upstream request to be cancelled", dropped.recv()).await;
}

struct DropSignal(tokio::sync::mpsc::UnboundedSender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[tokio::test]
async fn too_many_headers_get_431() {
    let upstream = FakeUpstream::ok_json().await;
    let (addr, _keyward) = start_for(&upstream.url(), &[]).await;
    let headers: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let request = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: localhost\r\n{headers}content-length: 2\r\n\r\n{{}}"
    );
    let (status, _) = client::raw(addr, request.as_bytes()).await;
    assert_eq!(status, 431);
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn a_client_too_slow_to_send_its_headers_is_disconnected() {
    use tokio::io::AsyncWriteExt;
    let upstream = FakeUpstream::ok_json().await;
    let (addr, _keyward) = start_for(&upstream.url(), &["--header-timeout", "1s"]).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /v1/responses HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
    // ...and never the rest. keyward closes the connection (hyper may first say 408).
    assert_closed_by_keyward(&mut stream).await;
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn an_upstream_that_cannot_be_connected_to_in_time_is_a_504() {
    // A listener that never accepts, its backlog filled: the kernel drops further SYNs, so a
    // connection attempt hangs the way it does to a host that has gone away.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let full = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            tokio::net::TcpStream::connect(full),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let (addr, _keyward) = start_for(
        &format!("http://{full}/v1/responses"),
        &["--connect-timeout", "500ms"],
    )
    .await;
    let reply = client::post_responses(addr, "{}").await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    assert_eq!(reply.json()["error"]["code"], "upstream_connect_timeout");
    drop(listener);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = FakeUpstream::ok_json().await;
    let (addr, _keyward) = start_for(&upstream.url(), &["--header-timeout", "1s"]).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /v1/responses HTTP/1.1\r\nhost: localhost\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = stream.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    // The connection is kept alive, then closed once it has been idle past the limit.
    assert_closed_by_keyward(&mut stream).await;
}

/// Reads until keyward closes the connection; all it may send first is a 408.
async fn assert_closed_by_keyward(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    within(
        "keyward to close the connection",
        stream.read_to_end(&mut rest),
    )
    .await
    .ok();
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}
