//! Responses over WebSocket through keyward: the credential on the upstream's handshake only,
//! headers both ways, messages one by one, close codes, limits, turns counted and charged, and
//! shutdown.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::keyward::{TEST_KEY, start_for};
use crate::support::within;
use crate::support::ws::{
    Answer, FakeWsUpstream, connect, create, events, next, next_text, send_text,
};

fn ledger(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn ledger_lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    within("ledger lines", async {
        loop {
            let lines = ledger(path);
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn two_turns_relayed_one_message_at_a_time_with_the_key_on_the_upstream_handshake_only() {
    let mut upstream = FakeWsUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let usage = dir.path().join("usage.jsonl");
    let (addr, _keyward) =
        start_for(&upstream.url(), &["--usage-log", usage.to_str().unwrap()]).await;
    let (mut client, response) = connect(
        addr,
        &[
            ("authorization", "Bearer client-placeholder"),
            ("cookie", "session=client"),
            ("openai-beta", "responses_websockets=2026-02-06"),
            ("session-id", "s-1"),
            ("x-codex-window-id", "w-1"),
            ("originator", "codex_exec"),
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            ),
        ],
    )
    .await
    .unwrap();
    // Compression is declined cleanly: the answer names no extension.
    assert!(response.headers().get("sec-websocket-extensions").is_none());
    // The upstream's handshake answer comes back.
    assert_eq!(response.headers()["x-codex-turn-state"], "ts-1");
    assert_eq!(response.headers()["x-models-etag"], "etag-7");
    assert_eq!(response.headers()["openai-model"], "gpt-5");

    let mut socket = upstream.next_socket().await;
    let handshake = &upstream.handshakes()[0];
    assert_eq!(
        handshake["authorization"],
        format!("Bearer {TEST_KEY}").as_str()
    );
    assert!(handshake.get("cookie").is_none());
    assert_eq!(handshake["openai-beta"], "responses_websockets=2026-02-06");
    assert_eq!(handshake["session-id"], "s-1");
    assert_eq!(handshake["x-codex-window-id"], "w-1");
    assert_eq!(handshake["originator"], "codex_exec");
    // keyward's own handshake: its key, not the client's; no compression offered.
    assert!(handshake.get("sec-websocket-extensions").is_none());

    for (turn, previous) in [("resp_1", None), ("resp_2", Some("resp_1"))] {
        send_text(&mut client, &create("hi", previous)).await;
        let sent: Value = serde_json::from_str(&next_text(&mut socket).await).unwrap();
        assert_eq!(sent["type"], "response.create");
        assert_eq!(
            sent["previous_response_id"],
            previous.map_or(Value::Null, Value::from)
        );
        // Each event goes on by itself: the next is sent only once the client has the last.
        for event in events(turn, "Hello through keyward!") {
            send_text(&mut socket, &event).await;
            assert_eq!(next_text(&mut client).await, event);
        }
    }
    let lines = ledger_lines(&usage, 2).await;
    for line in &lines {
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["end"], "completed", "{line}");
        assert_eq!(line["input_tokens"], 12, "{line}");
        assert_eq!(line["output_tokens"], 7, "{line}");
        assert_eq!(line["model"], "gpt-5", "{line}");
        assert_eq!(line["credential"], "api-key", "{line}");
    }
}

#[tokio::test]
async fn close_codes_and_reasons_pass_both_ways() {
    let mut upstream = FakeWsUpstream::start().await;
    let (addr, _keyward) = start_for(&upstream.url(), &[]).await;

    let (mut client, _) = connect(addr, &[]).await.unwrap();
    let mut socket = upstream.next_socket().await;
    client
        .close(Some(CloseFrame {
            code: CloseCode::Library(4000),
            reason: "bye from the client".into(),
        }))
        .await
        .unwrap();
    match next(&mut socket).await {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Library(4000));
            assert_eq!(frame.reason.as_str(), "bye from the client");
        }
        other => panic!("{other:?}"),
    }

    let (mut client, _) = connect(addr, &[]).await.unwrap();
    let mut socket = upstream.next_socket().await;
    socket
        .close(Some(CloseFrame {
            code: CloseCode::Policy,
            reason: "websocket_connection_limit_reached".into(),
        }))
        .await
        .unwrap();
    match next(&mut client).await {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Policy);
            assert_eq!(frame.reason.as_str(), "websocket_connection_limit_reached");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_upgrade_the_upstream_refuses_comes_back_as_its_http_answer() {
    let upstream = FakeWsUpstream::answering(vec![Answer::Refuse(
        http::StatusCode::FORBIDDEN,
        r#"{"error":{"message":"websockets are not enabled for this account"}}"#,
    )])
    .await;
    let (addr, _keyward) = start_for(&upstream.url(), &[]).await;
    match connect(addr, &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("websockets are not enabled"), "{body}");
        }
        other => panic!("expected the upstream's 403, got {other:?}"),
    }
}

#[tokio::test]
async fn without_a_client_token_the_upgrade_is_refused() {
    let upstream = FakeWsUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("clients.json");
    crate::support::keyward::add_client_token(&tokens, "ci").await;
    let (addr, _keyward) = start_for(
        &upstream.url(),
        &["--client-tokens", tokens.to_str().unwrap()],
    )
    .await;
    match connect(addr, &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected 401, got {other:?}"),
    }
    assert!(
        upstream.handshakes().is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn a_turn_over_the_quota_gets_an_error_message_and_the_socket_stays_open() {
    let mut upstream = FakeWsUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let usage = dir.path().join("usage.jsonl");
    let (addr, _keyward) = start_for(
        &upstream.url(),
        &[
            "--quota",
            "default:requests-per-minute=2",
            "--usage-log",
            usage.to_str().unwrap(),
        ],
    )
    .await;
    let (mut client, _) = connect(addr, &[]).await.unwrap();
    let mut socket = upstream.next_socket().await;
    // The handshake was the first request of the minute; this turn is the second.
    send_text(&mut client, &create("one", None)).await;
    next_text(&mut socket).await;
    for event in events("resp_1", "ok") {
        send_text(&mut socket, &event).await;
        next_text(&mut client).await;
    }
    send_text(&mut client, &create("two", Some("resp_1"))).await;
    let refusal: Value = serde_json::from_str(&next_text(&mut client).await).unwrap();
    assert_eq!(refusal["type"], "error");
    assert_eq!(refusal["status"], 429);
    assert_eq!(refusal["error"]["code"], "rate_limit_exceeded");
    // Still open: a message that is not a turn goes through.
    send_text(&mut client, r#"{"type":"response.processed"}"#).await;
    assert_eq!(
        next_text(&mut socket).await,
        r#"{"type":"response.processed"}"#
    );
    let lines = ledger_lines(&usage, 2).await;
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[1]["status"], 429);
}

#[tokio::test]
async fn a_message_over_the_size_limit_closes_the_socket_with_1009() {
    let mut upstream = FakeWsUpstream::start().await;
    let (addr, _keyward) = start_for(&upstream.url(), &["--max-body", "1KiB"]).await;
    let (mut client, _) = connect(addr, &[]).await.unwrap();
    let _socket = upstream.next_socket().await;
    client.send(Message::text("x".repeat(4096))).await.unwrap();
    loop {
        match next(&mut client).await {
            Message::Close(Some(frame)) => {
                assert_eq!(frame.code, CloseCode::Size);
                assert!(frame.reason.contains("--max-body"), "{}", frame.reason);
                break;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn an_upstream_silent_mid_turn_gets_the_client_an_error_then_a_close() {
    let mut upstream = FakeWsUpstream::start().await;
    let (addr, _keyward) = start_for(&upstream.url(), &["--idle-timeout", "1s"]).await;
    let (mut client, _) = connect(addr, &[]).await.unwrap();
    let mut socket = upstream.next_socket().await;
    // Idle between turns: no timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send_text(&mut client, &create("hi", None)).await;
    next_text(&mut socket).await;
    send_text(&mut socket, &events("resp_1", "hi")[0]).await;
    next_text(&mut client).await;
    // Then nothing.
    let error: Value = serde_json::from_str(&next_text(&mut client).await).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["code"], "stream_idle_timeout");
    assert!(matches!(next(&mut client).await, Message::Close(Some(_))));
}

#[tokio::test]
async fn shutdown_closes_an_idle_socket_normally_and_lets_a_running_turn_finish() {
    let mut upstream = FakeWsUpstream::start().await;
    let (addr, keyward) = start_for(&upstream.url(), &["--shutdown-grace", "10s"]).await;
    let (mut idle, _) = connect(addr, &[]).await.unwrap();
    let _idle_upstream = upstream.next_socket().await;
    let (mut busy, _) = connect(addr, &[]).await.unwrap();
    let mut busy_upstream = upstream.next_socket().await;
    send_text(&mut busy, &create("hi", None)).await;
    next_text(&mut busy_upstream).await;

    keyward.shutdown();
    match next(&mut idle).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("{other:?}"),
    }
    // The running turn still gets its events, then the socket closes.
    for event in events("resp_1", "still here") {
        send_text(&mut busy_upstream, &event).await;
        assert_eq!(next_text(&mut busy).await, event);
    }
    match next(&mut busy).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("{other:?}"),
    }
    within("keyward to stop", keyward.wait()).await;
}

#[tokio::test]
async fn pings_pass_and_metrics_and_dumps_see_each_message() {
    let mut upstream = FakeWsUpstream::start().await;
    let dumps = tempfile::tempdir().unwrap();
    let (addr, keyward) = start_for(
        &upstream.url(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--dump-dir",
            dumps.path().to_str().unwrap(),
        ],
    )
    .await;
    let (mut client, _) = connect(addr, &[("authorization", "Bearer client-secret")])
        .await
        .unwrap();
    let mut socket = upstream.next_socket().await;
    client
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    // The upstream sees the client's ping (and answers it itself).
    match next(&mut socket).await {
        Message::Ping(data) => assert_eq!(&data[..], b"are you there"),
        other => panic!("{other:?}"),
    }
    send_text(&mut client, &create("hi", None)).await;
    next_text(&mut socket).await;
    for event in events("resp_1", "counted") {
        send_text(&mut socket, &event).await;
        next_text(&mut client).await;
    }
    let metrics = keyward.metrics.unwrap();
    let text = within("the metrics", async {
        loop {
            let text = crate::support::client::get(metrics, "/metrics")
                .await
                .text();
            if text.contains("keyward_websocket_turns_total 1") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(text.contains("keyward_websockets_open 1"), "{text}");
    // In: the ping and the turn; out: the upstream's pong and the three events.
    assert!(
        text.contains(r#"keyward_websocket_messages_total{direction="in"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"keyward_websocket_messages_total{direction="out"} 4"#),
        "{text}"
    );
    drop(client);
    // The dumps hold the handshake (its credential redacted) and every message.
    let files = within("the dumps", async {
        loop {
            let files = crate::support::keyward::files_under(dumps.path());
            let all: String = files
                .iter()
                .map(|(_, c)| String::from_utf8_lossy(c).into_owned())
                .collect();
            if all.contains("response.completed") && all.contains("response.create") {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(!files.contains("client-secret"), "{files}");
    assert!(files.contains("[redacted]"), "{files}");
}

#[tokio::test]
async fn a_socket_that_ends_mid_turn_is_charged_an_estimate() {
    let mut upstream = FakeWsUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let usage = dir.path().join("usage.jsonl");
    let (addr, _keyward) =
        start_for(&upstream.url(), &["--usage-log", usage.to_str().unwrap()]).await;
    let (mut client, _) = connect(addr, &[]).await.unwrap();
    let mut socket = upstream.next_socket().await;
    let turn = create("Say hello, please.", None);
    send_text(&mut client, &turn).await;
    next_text(&mut socket).await;
    // The text, but not the completion, then the client hangs up.
    let events = events("resp_1", "Hello there friend");
    for event in &events[..events.len() - 1] {
        send_text(&mut socket, event).await;
        next_text(&mut client).await;
    }
    drop(client);
    let line = &ledger_lines(&usage, 1).await[0];
    assert_eq!(line["estimated"], true, "{line}");
    assert_eq!(line["end"], "client_gone", "{line}");
    assert_eq!(line["input_tokens"], turn.len().div_ceil(4), "{line}");
    assert_eq!(
        line["output_tokens"],
        "Hello there friend".len().div_ceil(4),
        "{line}"
    );
}

#[tokio::test]
async fn a_user_the_policy_refuses_gets_403_for_the_upgrade() {
    let upstream = FakeWsUpstream::start().await;
    // Nobody runs as uid 4242: this test's own user is refused.
    let (addr, _keyward) = start_for(&upstream.url(), &["--allow-user", "4242"]).await;
    match connect(addr, &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("access_denied"), "{body}");
        }
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(
        upstream.handshakes().is_empty(),
        "nothing reached the upstream"
    );
}
