//! The fallback over a WebSocket: a socket opens with the route's first usable credential, and a
//! turn refused because the plan is spent goes on, whole, on a socket to the route's next.

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::routes::{credentials_of, key_files, ledger_lines};
use crate::support::keyward::Process;
use crate::support::ws::{
    Answer, FakeWsUpstream, connect, create, events, next, next_text, send_text,
};

const SPENT: &str = r#"{"error":{"type":"usage_limit_reached","message":"The usage limit has been reached","plan_type":"plus","resets_in_seconds":3600}}"#;

/// keyward with the credentials `plan` (key a, to `plan`) and `key` (key b, to `key`), every
/// client routed to `plan` then `key`, its ledger in `dir`.
pub(crate) async fn plan_then_key(
    dir: &std::path::Path,
    plan: &FakeWsUpstream,
    key: &FakeWsUpstream,
) -> Process {
    plan_with_then_key(dir, plan, "", key).await
}

/// [`plan_then_key`], with `settings` added to the plan's (`,KEY=VALUE...`).
async fn plan_with_then_key(
    dir: &std::path::Path,
    plan: &FakeWsUpstream,
    settings: &str,
    key: &FakeWsUpstream,
) -> Process {
    let (key_a, key_b) = key_files(dir);
    let ledger = dir.join("usage.jsonl");
    let args = [
        "--usage-log".to_owned(),
        ledger.to_str().unwrap().to_owned(),
        "--credential".to_owned(),
        format!(
            "plan:api-key-file={key_a},upstream-url={}{settings}",
            plan.url()
        ),
        "--credential".to_owned(),
        format!("key:api-key-file={key_b},upstream-url={}", key.url()),
        "--route".to_owned(),
        "*=plan,key".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Process::spawn(&args, b"", &[]).await
}

/// The client's first turn ("hi"), answered on `upstream` as `resp_1` with `text`, each event
/// reaching the client as it was sent.
async fn first_turn(
    client: &mut crate::support::ws::ClientSocket,
    upstream: &mut crate::support::ws::UpstreamSocket,
    text: &str,
) {
    send_text(client, &create("hi", None)).await;
    next_text(upstream).await;
    for event in events("resp_1", text) {
        send_text(upstream, &event).await;
        assert_eq!(next_text(client).await, event);
    }
}

/// A later turn, which names the response before it and carries only its new input, is refused
/// mid-socket because the plan is spent: it goes to a socket of the key with the whole
/// conversation; the client sees the key's answer and never the refusal, and its next turns go
/// on there. A new socket goes straight to the key while the plan rests.
#[tokio::test]
async fn a_turn_refused_for_the_plans_limit_goes_on_with_the_next_credentials_socket() {
    let mut plan = FakeWsUpstream::start().await;
    let mut key = FakeWsUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keyward = plan_then_key(dir.path(), &plan, &key).await;
    let (mut client, _) = connect(keyward.addr, &[("session-id", "s-9")])
        .await
        .unwrap();
    let mut at_plan = plan.next_socket().await;
    assert_eq!(plan.handshakes()[0]["authorization"], "Bearer sk-route-a");

    first_turn(&mut client, &mut at_plan, "Hello there").await;
    send_text(&mut client, &create("again", Some("resp_1"))).await;
    let sent: Value = serde_json::from_str(&next_text(&mut at_plan).await).unwrap();
    assert_eq!(sent["previous_response_id"], "resp_1");
    send_text(
        &mut at_plan,
        &format!(r#"{{"type":"error","status":429,{}"#, &SPENT[1..]),
    )
    .await;

    // The same turn, whole, on the key's socket.
    let mut at_key = key.next_socket().await;
    let handshake = &key.handshakes()[0];
    assert_eq!(handshake["authorization"], "Bearer sk-route-b");
    assert_eq!(handshake["session-id"], "s-9");
    let moved: Value = serde_json::from_str(&next_text(&mut at_key).await).unwrap();
    assert_eq!(moved["type"], "response.create");
    assert!(moved.get("previous_response_id").is_none(), "{moved}");
    let input = moved["input"].as_array().unwrap();
    assert_eq!(input.len(), 3, "{moved}");
    assert_eq!(input[0]["content"], "hi");
    assert_eq!(input[1]["role"], "assistant");
    assert_eq!(input[1]["content"][0]["text"], "Hello there");
    assert_eq!(input[2]["content"], "again");
    for event in events("resp_2", "From the key") {
        send_text(&mut at_key, &event).await;
        assert_eq!(
            next_text(&mut client).await,
            event,
            "the refusal never reaches the client"
        );
    }
    // The plan's socket is closed; the next turn goes on with the key, as the client wrote it.
    assert!(matches!(next(&mut at_plan).await, Message::Close(_)));
    send_text(&mut client, &create("more", Some("resp_2"))).await;
    let sent: Value = serde_json::from_str(&next_text(&mut at_key).await).unwrap();
    assert_eq!(sent["previous_response_id"], "resp_2");
    assert_eq!(sent["input"], "more");
    for event in events("resp_3", "Still the key") {
        send_text(&mut at_key, &event).await;
        assert_eq!(next_text(&mut client).await, event);
    }
    let lines = ledger_lines(&dir.path().join("usage.jsonl"), 3).await;
    assert_eq!(credentials_of(&lines), ["plan", "key", "key"], "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["status"] == 200 && l["end"] == "completed"),
        "{lines:?}"
    );
    assert!(keyward.stderr().contains("the plan's limit is reached"));

    // While the plan rests, a new socket goes straight to the key.
    let (_client, _) = connect(keyward.addr, &[]).await.unwrap();
    key.next_socket().await;
    assert_eq!(plan.handshakes().len(), 1);
}

/// A handshake the plan refuses because it is spent: the socket opens with the key instead.
#[tokio::test]
async fn a_handshake_refused_for_the_plans_limit_opens_with_the_next_credential() {
    let plan = FakeWsUpstream::answering(vec![Answer::Refuse(
        http::StatusCode::TOO_MANY_REQUESTS,
        SPENT,
    )])
    .await;
    let mut key = FakeWsUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keyward = plan_then_key(dir.path(), &plan, &key).await;
    let (mut client, response) = connect(keyward.addr, &[]).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    let mut at_key = key.next_socket().await;
    assert_eq!(key.handshakes()[0]["authorization"], "Bearer sk-route-b");
    send_text(&mut client, &create("hi", None)).await;
    next_text(&mut at_key).await;
    assert_eq!(plan.handshakes().len(), 1);
}

/// The plan's own quota (one request a minute) reached at a later turn: that turn goes, whole, to
/// the key's socket before the plan is asked; the client sees the key's answer.
#[tokio::test]
async fn a_turn_over_the_credentials_quota_goes_to_the_next_credential() {
    let mut plan = FakeWsUpstream::start().await;
    let mut key = FakeWsUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keyward = plan_with_then_key(dir.path(), &plan, ",requests-per-minute=1", &key).await;
    let (mut client, _) = connect(keyward.addr, &[]).await.unwrap();
    let mut at_plan = plan.next_socket().await;
    first_turn(&mut client, &mut at_plan, "Hello").await;
    send_text(&mut client, &create("again", Some("resp_1"))).await;
    let mut at_key = key.next_socket().await;
    let moved: Value = serde_json::from_str(&next_text(&mut at_key).await).unwrap();
    assert!(moved.get("previous_response_id").is_none(), "{moved}");
    assert_eq!(moved["input"].as_array().unwrap().len(), 3, "{moved}");
    for event in events("resp_2", "From the key") {
        send_text(&mut at_key, &event).await;
        assert_eq!(next_text(&mut client).await, event);
    }
    // The plan was not asked for the second turn.
    assert!(matches!(next(&mut at_plan).await, Message::Close(_)));
    let lines = ledger_lines(&dir.path().join("usage.jsonl"), 2).await;
    assert_eq!(credentials_of(&lines), ["plan", "key"], "{lines:?}");
}
