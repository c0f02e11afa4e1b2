//! The way to the upstream: TLS verification, HTTP/2 by ALPN, extra CAs, the CONNECT proxy.

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::support::client;
use crate::support::keyward::{Process, TEST_KEY, start_for};
use crate::support::upstream::{self, FakeUpstream};
use crate::support::within;

async fn tls_upstream() -> (FakeUpstream, std::path::PathBuf, tempfile::TempDir) {
    let (upstream, ca) = FakeUpstream::start_tls(|_| async {
        upstream::json(StatusCode::OK, r#"{"status":"completed"}"#)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca).unwrap();
    (upstream, ca_path, dir)
}

#[tokio::test]
async fn https_upstreams_are_verified_and_spoken_to_over_http2() {
    let (upstream, ca_path, _dir) = tls_upstream().await;
    let url = format!("https://localhost:{}/v1/responses", upstream.addr.port());

    // Trusted through --upstream-ca: served, over HTTP/2 (negotiated by ALPN).
    let (addr, _keyward) = start_for(&url, &["--upstream-ca", ca_path.to_str().unwrap()]).await;
    for _ in 0..3 {
        assert_eq!(
            client::post_responses(addr, "{}").await.status,
            StatusCode::OK
        );
    }
    let requests = upstream.requests();
    assert_eq!(requests.len(), 3);
    for request in &requests {
        assert_eq!(request.version, Version::HTTP_2);
        assert_eq!(
            request.headers["authorization"],
            format!("Bearer {TEST_KEY}").as_str()
        );
        assert_eq!(request.uri, url, "h2 carries the upstream's authority");
    }

    // Not trusted: the certificate is refused and nothing is sent.
    let (addr, _keyward) = start_for(&url, &[]).await;
    let reply = client::post_responses(addr, "{}").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        upstream.requests().len(),
        3,
        "no request went to an unverified upstream"
    );
}

#[tokio::test]
async fn a_bad_ca_file_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.pem");
    std::fs::write(&path, "not a certificate").unwrap();
    let (code, stderr) =
        crate::support::keyward::run_to_exit(&["--upstream-ca", path.to_str().unwrap()], b"sk-key")
            .await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("--upstream-ca") && stderr.contains("no PEM certificates"),
        "{stderr}"
    );
}

/// A minimal CONNECT proxy: records each request head, then tunnels bytes both ways.
async fn connect_proxy() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut client = BufReader::new(client);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if client.read_line(&mut line).await.unwrap() == 0 {
                        return;
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let target = head.split_whitespace().nth(1).unwrap().to_owned();
                let _ = tx.send(head);
                let mut server = TcpStream::connect(target).await.unwrap();
                let mut client = client.into_inner();
                client
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn upstream_proxy_tunnels_tls_with_its_credentials() {
    let (upstream, ca_path, _dir) = tls_upstream().await;
    let (proxy, mut heads) = connect_proxy().await;
    let url = format!("https://localhost:{}/v1/responses", upstream.addr.port());
    let proxy_url = format!("http://user:p%40ss@{proxy}");
    let (addr, _keyward) = start_for(
        &url,
        &[
            "--upstream-ca",
            ca_path.to_str().unwrap(),
            "--upstream-proxy",
            &proxy_url,
        ],
    )
    .await;

    assert_eq!(
        client::post_responses(addr, "{}").await.status,
        StatusCode::OK
    );
    let head = within("the proxy to be asked", heads.recv()).await.unwrap();
    assert!(
        head.starts_with(&format!(
            "CONNECT localhost:{} HTTP/1.1\r\n",
            upstream.addr.port()
        )),
        "{head}"
    );
    // user:p@ss
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authorization: basic dxnlcjpwqhnz"),
        "{head}"
    );
    assert!(
        !head.contains(TEST_KEY),
        "the key travels only inside the TLS tunnel"
    );
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn proxy_variables_in_the_environment_are_ignored() {
    let upstream = FakeUpstream::ok_json().await;
    let dead = "http://127.0.0.1:9";
    let keyward = Process::spawn(
        &["--upstream-url", &upstream.url()],
        b"sk-key\n",
        &[
            ("HTTP_PROXY", dead),
            ("HTTPS_PROXY", dead),
            ("ALL_PROXY", dead),
            ("http_proxy", dead),
        ],
    )
    .await;
    assert_eq!(
        client::post_responses(keyward.addr, "{}").await.status,
        StatusCode::OK
    );
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn proxy_credentials_can_stay_out_of_argv() {
    let upstream = FakeUpstream::ok_json().await;
    let (proxy, mut heads) = connect_proxy().await;
    let proxy_url = format!("http://user:secret@{proxy}");
    let keyward = Process::spawn(
        &["--upstream-url", &upstream.url()],
        b"sk-key\n",
        &[("KEYWARD_UPSTREAM_PROXY", proxy_url.as_str())],
    )
    .await;
    assert_eq!(
        client::post_responses(keyward.addr, "{}").await.status,
        StatusCode::OK
    );
    let head = within("the proxy to be asked", heads.recv()).await.unwrap();
    assert!(
        head.starts_with(&format!("CONNECT {} HTTP/1.1", upstream.addr)),
        "{head}"
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", keyward.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("secret"));
    assert!(!keyward.stderr().contains("secret"));
}

/// An upstream that streams `events` SSE events when the request body says `"stream":true`,
/// and answers with JSON otherwise.
async fn json_or_stream_upstream(events: usize) -> FakeUpstream {
    FakeUpstream::start(move |seen| async move {
        if !seen.body.windows(13).any(|w| w == br#""stream":true"#) {
            return upstream::json(StatusCode::OK, r#"{"status":"completed"}"#);
        }
        let (response, tx) = upstream::stream("text/event-stream");
        tokio::spawn(async move {
            for i in 0..events {
                let delta = serde_json::json!({"type": "response.output_text.delta", "delta": i});
                let _ = tx
                    .send(upstream::sse_event("response.output_text.delta", &delta))
                    .await;
            }
        });
        response
    })
    .await
}

#[tokio::test]
async fn one_upstream_connection_carries_request_after_request() {
    let upstream = json_or_stream_upstream(30).await;
    let (addr, _keyward) = start_for(&upstream.url(), &[]).await;

    // One keep-alive client connection: its requests are all served by one keyward worker.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..10 {
        let body = if i % 2 == 0 {
            r#"{"stream":true}"#
        } else {
            "{}"
        };
        let req = Request::post("/v1/responses")
            .header("host", addr.to_string())
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let reply = client::read(
            crate::support::within("a response head", sender.send_request(req))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        if i % 2 == 0 {
            assert_eq!(
                reply.text().matches("event: ").count(),
                30,
                "{}",
                reply.text()
            );
        } else {
            assert_eq!(reply.text(), r#"{"status":"completed"}"#);
        }
    }
    assert_eq!(upstream.requests().len(), 10);
    assert_eq!(
        upstream.connections(),
        1,
        "each response gave its upstream connection back for the next request"
    );
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_used_again() {
    // An upstream that answers one request per connection, keeps it open (HTTP/1.1 keep-alive)
    // and closes it a moment later, as servers do with idle connections.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/responses", listener.local_addr().unwrap());
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    stream.read_line(&mut line).await.unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                stream.read_exact(&mut body).await.unwrap();
                let answer = r#"{"status":"completed"}"#;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                stream.get_mut().write_all(reply.as_bytes()).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                drop(stream);
                let _ = closed_tx.send(());
            });
        }
    });
    let (addr, _keyward) = start_for(&url, &[]).await;

    for i in 0..3 {
        let reply = client::post_responses(addr, "{}").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {i}: {}",
            reply.text()
        );
        within("the upstream to close its connection", closed.recv()).await;
    }
}
