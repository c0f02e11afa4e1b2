//! A canary key goes in; it must come out only at the upstream. Everything else keyward writes or
//! shows, at the most verbose log level, is searched for it.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::support::client::{self, next_chunk};
use crate::support::keyward::{Process, files_under};
use crate::support::upstream::{self, FakeUpstream, sse_event};

const CANARY: &str = "sk-CANARY-7d1e9b2c4a";

async fn exercise(addr: std::net::SocketAddr) -> String {
    let mut seen = String::new();
    let mut record = |reply: &client::Reply| {
        seen.push_str(&format!(
            "{} {:?} {}\n",
            reply.status,
            reply.headers,
            reply.text()
        ));
    };
    record(&client::post_responses(addr, r#"{"kind":"json"}"#).await);
    record(&client::post_responses(addr, r#"{"kind":"sse"}"#).await);
    record(&client::post_responses(addr, r#"{"kind":"silent"}"#).await);
    record(&client::post_responses(addr, r#"{"kind":"error"}"#).await);
    record(&client::get(addr, "/v1/models").await);
    record(&client::get(addr, "/v1/responses").await);
    record(&client::get(addr, "/nowhere").await);
    let big = "x".repeat(2048);
    record(&client::post_responses(addr, &big).await);
    let (_, text) = client::raw(
        addr,
        format!(
            "POST /v1/responses HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "h".repeat(20_000)
        )
        .as_bytes(),
    )
    .await;
    seen.push_str(&text);
    // A client that hangs up mid-stream.
    let req = Request::post("/v1/responses")
        .body(Full::new(Bytes::from_static(br#"{"kind":"sse"}"#)))
        .unwrap();
    let mut body = client::send(addr, req).await.into_body();
    next_chunk(&mut body).await;
    drop(body);
    seen
}

fn assert_clean(place: &str, haystack: &[u8]) {
    let found = haystack
        .windows(CANARY.len())
        .any(|w| w == CANARY.as_bytes());
    assert!(!found, "the key leaked into {place}");
}

#[tokio::test]
async fn the_key_appears_nowhere_but_at_the_upstream() {
    let upstream = FakeUpstream::start(|seen| async move {
        let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        match body["kind"].as_str() {
            Some("sse") => {
                let (response, tx) = upstream::stream("text/event-stream");
                tokio::spawn(async move {
                    let _ = tx
                        .send(sse_event(
                            "response.created",
                            &json!({"type":"response.created"}),
                        ))
                        .await;
                    let _ = tx
                        .send(sse_event(
                            "response.completed",
                            &json!({"type":"response.completed"}),
                        ))
                        .await;
                });
                response
            }
            Some("silent") => {
                let (response, tx) = upstream::stream("text/event-stream");
                tokio::spawn(async move { tx.closed().await });
                response
            }
            Some("error") => upstream::json(
                StatusCode::UNAUTHORIZED,
                r#"{"error":{"message":"bad key"}}"#,
            ),
            _ => upstream::json(StatusCode::OK, r#"{"status":"completed"}"#),
        }
    })
    .await;
    let unreachable = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1/responses", l.local_addr().unwrap())
    };

    for (url, format) in [(upstream.url(), "text"), (unreachable, "json")] {
        let dumps = tempfile::tempdir().unwrap();
        let mut keyward = Process::spawn(
            &[
                "--upstream-url",
                &url,
                "--dump-dir",
                dumps.path().to_str().unwrap(),
                "--idle-timeout",
                "1s",
                "--max-body",
                "1KiB",
                "--max-headers",
                "8KiB",
                "--log-format",
                format,
                "--http-shutdown",
            ],
            format!("{CANARY}\n").as_bytes(),
            &[("RUST_LOG", "trace")],
        )
        .await;
        let replies = exercise(keyward.addr).await;
        let pid = keyward.pid();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert_eq!(
            client::get(keyward.addr, "/shutdown").await.status,
            StatusCode::OK
        );
        assert_eq!(keyward.exit_code().await, Some(0));

        let stderr = keyward.stderr();
        assert!(
            stderr.lines().count() > 20,
            "trace logging was on: {stderr}"
        );
        assert!(stderr.contains("request"), "{stderr}");
        assert_clean("stderr", stderr.as_bytes());
        assert_clean("the replies to clients", replies.as_bytes());
        assert_clean("/proc/PID/environ", &environ);
        assert_clean("/proc/PID/cmdline", &cmdline);
        let files = files_under(dumps.path());
        for (path, contents) in &files {
            assert_clean(&path.display().to_string(), contents);
        }
        if format == "text" {
            assert!(files.len() >= 8, "dumps were written: {}", files.len());
        }
    }

    let at_upstream = upstream.requests();
    assert!(!at_upstream.is_empty());
    for request in at_upstream {
        assert_eq!(
            request.headers["authorization"],
            format!("Bearer {CANARY}").as_str()
        );
    }
}
