//! The Responses API beyond create: each endpoint forwarded to the URL derived from
//! `--upstream-url`, with the key; stored responses only to the client that created them (HTTP
//! and WebSocket), kept across a restart, forgotten once expired; `--endpoints create`;
//! background responses charged once.

use std::path::Path;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::support::client::{self, call};
use crate::support::keyward::{TEST_KEY, add_client_token, start, start_for};
use crate::support::upstream::FakeUpstream;
use crate::support::{api, within, ws};

fn created() -> Value {
    json!({"model": "gpt-5", "input": "Say hello"})
}

/// Two clients with tokens: alice and bob.
async fn two_clients(dir: &Path) -> (String, String, String) {
    let file = dir.join("clients");
    let alice = add_client_token(&file, "alice").await;
    let bob = add_client_token(&file, "bob").await;
    (file.to_str().unwrap().to_owned(), alice, bob)
}

#[tokio::test]
async fn each_endpoint_reaches_its_upstream_url_with_the_key() {
    let upstream = api::start().await;
    let (addr, _keyward) = start_for(&upstream.url(), &[]).await;
    let me = "sk-client-placeholder";

    let create = call(addr, "POST", "/v1/responses", me, Some(created())).await;
    assert_eq!(create.status, StatusCode::OK, "{}", create.text());
    let id = create.json()["id"].as_str().unwrap().to_owned();

    let cases = [
        ("GET", format!("/v1/responses/{id}"), None, "response"),
        (
            "GET",
            format!("/v1/responses/{id}?include[]=message.output_text.logprobs"),
            None,
            "response",
        ),
        (
            "GET",
            format!("/v1/responses/{id}/input_items?limit=5&order=asc"),
            None,
            "list",
        ),
        (
            "POST",
            "/v1/responses/input_tokens".to_owned(),
            Some(created()),
            "response.input_tokens",
        ),
        (
            "POST",
            "/v1/responses/compact".to_owned(),
            Some(created()),
            "response.compaction",
        ),
        ("GET", "/v1/models".to_owned(), None, "list"),
        ("GET", "/v1/models/gpt-5".to_owned(), None, "model"),
        (
            "DELETE",
            format!("/v1/responses/{id}"),
            None,
            "response.deleted",
        ),
    ];
    for (method, path, body, object) in cases {
        let before = upstream.requests().len();
        let reply = call(addr, method, &path, me, body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{method} {path}: {}",
            reply.text()
        );
        assert_eq!(reply.json()["object"], object, "{method} {path}");
        let seen = upstream.requests();
        assert_eq!(seen.len(), before + 1, "{method} {path} went upstream once");
        let seen = seen.last().unwrap();
        assert_eq!(seen.method, method);
        assert_eq!(seen.uri, path, "path and query as the client sent them");
        assert_eq!(seen.headers["authorization"], format!("Bearer {TEST_KEY}"));
        if let Some(body) = body {
            assert_eq!(serde_json::from_slice::<Value>(&seen.body).unwrap(), body);
        } else {
            assert!(seen.body.is_empty(), "{method} {path} has no body");
        }
    }
    // Deleted upstream: the API's own 404 comes back.
    let gone = call(addr, "GET", &format!("/v1/responses/{id}"), me, None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn azure_s_query_is_kept_and_the_client_s_follows_it() {
    let upstream = FakeUpstream::ok_json().await;
    let url = format!(
        "http://{}/openai/v1/responses?api-version=preview",
        upstream.addr
    );
    // Ids the fake never made: only --no-ownership lets them through.
    let (addr, _keyward) = start_for(&url, &["--no-ownership"]).await;
    let path = "/v1/responses/resp_9/input_items?limit=2&api-version=other";
    let reply = call(addr, "GET", path, "x", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let models = call(addr, "GET", "/v1/models", "x", None).await;
    assert_eq!(models.status, StatusCode::OK);
    let seen: Vec<String> = upstream.requests().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        seen,
        [
            "/openai/v1/responses/resp_9/input_items?api-version=preview&limit=2",
            "/openai/v1/models?api-version=preview",
        ]
    );
}

#[tokio::test]
async fn a_stored_response_is_its_creator_s_alone_and_the_record_survives_a_restart() {
    let upstream = api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (tokens, alice, bob) = two_clients(dir.path()).await;
    let home = dir.path().join("home");
    let args = [
        "--upstream-url",
        &upstream.url(),
        "--client-tokens",
        &tokens,
        "--home",
        home.to_str().unwrap(),
    ];
    let (addr, keyward) = start(&args).await;

    let plain = call(addr, "POST", "/v1/responses", &alice, Some(created())).await;
    let plain = plain.json()["id"].as_str().unwrap().to_owned();
    let mut streamed = created();
    streamed["stream"] = json!(true);
    let stream = call(addr, "POST", "/v1/responses", &alice, Some(streamed)).await;
    assert!(stream.text().contains("response.completed"));
    let streamed_id = "resp_0002";
    assert!(stream.text().contains(streamed_id));

    for id in [plain.as_str(), streamed_id] {
        let before = upstream.requests().len();
        for (method, path) in [
            ("GET", format!("/v1/responses/{id}")),
            ("GET", format!("/v1/responses/{id}/input_items")),
            ("POST", format!("/v1/responses/{id}/cancel")),
            ("DELETE", format!("/v1/responses/{id}")),
        ] {
            let reply = call(addr, method, &path, &bob, None).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "bob: {method} {path}");
            let error = &reply.json()["error"];
            assert_eq!(
                error["message"],
                format!("Response with id '{id}' not found.")
            );
            assert_eq!(error["type"], "invalid_request_error");
            assert!(error["code"].is_null(), "the API's own shape: {error}");
        }
        assert_eq!(
            upstream.requests().len(),
            before,
            "nothing of bob's went upstream"
        );
        let mine = call(addr, "GET", &format!("/v1/responses/{id}"), &alice, None).await;
        assert_eq!(mine.status, StatusCode::OK, "alice retrieves {id}");
        assert_eq!(mine.json()["id"], id);
    }
    // An id keyward never relayed is refused the same way, to everyone.
    let unknown = call(addr, "GET", "/v1/responses/resp_never", &alice, None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.json()["error"]["code"].is_null());

    // The record is private, holds no ids, and outlives the process.
    let record = home.join("response-owners");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&record).unwrap().permissions().mode() & 0o777,
        0o600
    );
    keyward.shutdown();
    within("keyward to stop", keyward.wait()).await;
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(
        !text.contains(&plain) && !text.contains("alice\nalice"),
        "{text}"
    );
    let (addr, _keyward) = start(&args).await;
    let after = call(addr, "GET", &format!("/v1/responses/{plain}"), &alice, None).await;
    assert_eq!(
        after.status,
        StatusCode::OK,
        "alice's response is hers after a restart"
    );
    let after = call(addr, "GET", &format!("/v1/responses/{plain}"), &bob, None).await;
    assert_eq!(after.status, StatusCode::NOT_FOUND, "and still not bob's");
}

#[tokio::test]
async fn a_response_created_over_a_websocket_is_its_creator_s() {
    let mut upstream = ws::FakeWsUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (tokens, alice, bob) = two_clients(dir.path()).await;
    let (addr, _keyward) = start_for(&upstream.url(), &["--client-tokens", &tokens]).await;
    let auth = format!("Bearer {alice}");
    let (mut socket, _) = ws::connect(addr, &[("authorization", &auth)])
        .await
        .unwrap();
    let mut up = upstream.next_socket().await;
    ws::send_text(&mut socket, &ws::create("hi", None)).await;
    let _ = ws::next_text(&mut up).await;
    // The response is its creator's from `response.created` on: a background or long turn may
    // be retrieved or cancelled before it ends.
    let mut events = ws::events("resp_ws_7", "Hello there").into_iter();
    ws::send_text(&mut up, &events.next().unwrap()).await;
    assert!(
        ws::next_text(&mut socket)
            .await
            .contains("response.created")
    );
    let bobs = call(addr, "GET", "/v1/responses/resp_ws_7", &bob, None).await;
    assert_eq!(bobs.status, StatusCode::NOT_FOUND, "{}", bobs.text());
    let alices = call(addr, "GET", "/v1/responses/resp_ws_7", &alice, None).await;
    assert_ne!(
        alices.status,
        StatusCode::NOT_FOUND,
        "mid-turn: {}",
        alices.text()
    );
    for event in events {
        ws::send_text(&mut up, &event).await;
    }
    loop {
        if ws::next_text(&mut socket)
            .await
            .contains("response.completed")
        {
            break;
        }
    }
    let bobs = call(addr, "GET", "/v1/responses/resp_ws_7", &bob, None).await;
    assert_eq!(bobs.status, StatusCode::NOT_FOUND, "{}", bobs.text());
    assert!(bobs.json()["error"]["code"].is_null());
    // Alice's goes upstream (this fake speaks only WebSocket, so it fails there: not keyward's
    // 404).
    let alices = call(addr, "GET", "/v1/responses/resp_ws_7", &alice, None).await;
    assert_ne!(alices.status, StatusCode::NOT_FOUND, "{}", alices.text());
}

#[tokio::test]
async fn expired_entries_are_refused_and_leave_the_record() {
    let upstream = api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (addr, keyward) = start_for(
        &upstream.url(),
        &["--home", home.to_str().unwrap(), "--ownership-ttl", "1s"],
    )
    .await;
    let me = "x";
    let old = call(addr, "POST", "/v1/responses", me, Some(created())).await;
    let old = old.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        call(addr, "GET", &format!("/v1/responses/{old}"), me, None)
            .await
            .status,
        StatusCode::OK
    );
    // Entries are timed to the second: past one second, at most three have gone by.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let expired = call(addr, "GET", &format!("/v1/responses/{old}"), me, None).await;
    assert_eq!(expired.status, StatusCode::NOT_FOUND, "{}", expired.text());
    keyward.shutdown();
    within("keyward to stop", keyward.wait()).await;

    // At start, expired entries are dropped from the file.
    let record = home.join("response-owners");
    let lines = || std::fs::read_to_string(&record).unwrap().lines().count();
    assert!(lines() > 1, "the header and the entry's lines");
    let (_addr, _keyward) = start_for(
        &upstream.url(),
        &["--home", home.to_str().unwrap(), "--ownership-ttl", "1s"],
    )
    .await;
    assert_eq!(lines(), 1, "only the header is left");
}

#[tokio::test]
async fn endpoints_create_forwards_create_alone() {
    let upstream = api::start().await;
    let (addr, _keyward) = start_for(&upstream.url(), &["--endpoints", "create"]).await;
    let create = call(addr, "POST", "/v1/responses", "x", Some(created())).await;
    assert_eq!(create.status, StatusCode::OK);
    for (method, path) in [
        ("GET", "/v1/responses/resp_0001"),
        ("DELETE", "/v1/responses/resp_0001"),
        ("POST", "/v1/responses/resp_0001/cancel"),
        ("GET", "/v1/responses/resp_0001/input_items"),
        ("POST", "/v1/responses/input_tokens"),
        ("POST", "/v1/responses/compact"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/gpt-5"),
    ] {
        let reply = call(addr, method, path, "x", None).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(reply.json()["error"]["code"], "not_forwarded");
        assert!(reply.text().contains("--endpoints create"));
    }
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the create went upstream"
    );
}

#[tokio::test]
async fn a_background_response_is_charged_once_when_it_has_finished() {
    let upstream = api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let (addr, keyward) =
        start_for(&upstream.url(), &["--usage-log", ledger.to_str().unwrap()]).await;
    let mut body = created();
    body["background"] = json!(true);
    let queued = call(addr, "POST", "/v1/responses", "x", Some(body)).await;
    assert_eq!(queued.json()["status"], "queued");
    let id = queued.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/responses/{id}");
    let statuses: Vec<Value> = [
        call(addr, "GET", &path, "x", None).await,
        call(addr, "GET", &path, "x", None).await,
        call(addr, "GET", &path, "x", None).await,
    ]
    .iter()
    .map(|r| r.json()["status"].clone())
    .collect();
    assert_eq!(statuses, ["in_progress", "completed", "completed"]);
    drop(keyward);

    let lines: Vec<Value> = within("the ledger", async {
        loop {
            let text = std::fs::read_to_string(&ledger).unwrap_or_default();
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if lines.len() == 4 {
                return lines;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let charged: Vec<(String, u64, bool)> = lines
        .iter()
        .map(|l| {
            let tokens = l["input_tokens"].as_u64().unwrap() + l["output_tokens"].as_u64().unwrap();
            (
                l["endpoint"].as_str().unwrap().to_owned(),
                tokens,
                l["estimated"] == true,
            )
        })
        .collect();
    assert_eq!(
        charged,
        [
            ("responses.create".to_owned(), 0, false),
            ("responses.retrieve".to_owned(), 0, false),
            ("responses.retrieve".to_owned(), 19, false),
            ("responses.retrieve".to_owned(), 0, false),
        ],
        "queued: nothing yet; the first finished answer: its usage; later ones: nothing"
    );
    let summary = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args([
            "usage",
            "--usage-log",
            ledger.to_str().unwrap(),
            "--by",
            "endpoint",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        summary.status.success(),
        "{}",
        String::from_utf8_lossy(&summary.stderr)
    );
    let rows: Value = serde_json::from_slice(&summary.stdout).unwrap();
    let rows: Vec<(String, u64, u64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let key = r["key"].as_str().unwrap().to_owned();
            (
                key,
                r["requests"].as_u64().unwrap(),
                r["output_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("responses.create".to_owned(), 1, 0),
            ("responses.retrieve".to_owned(), 3, 7)
        ]
    );
}

#[tokio::test]
async fn a_corrupt_record_of_owners_stops_keyward_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let record = home.join("response-owners");
    std::fs::write(&record, "keyward response owners 1\nnot a line\n").unwrap();
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, stderr) = crate::support::keyward::run_to_exit(
        &[
            "--home",
            home.to_str().unwrap(),
            "--upstream-url",
            "http://127.0.0.1:9/v1/responses",
        ],
        b"sk-key\n",
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("response-owners, line 2"), "{stderr}");
    assert!(stderr.contains("repair or remove the file"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        "keyward response owners 1\nnot a line\n",
        "the file is left as it was"
    );
}

#[tokio::test]
async fn continuing_another_client_s_response_is_refused_over_http_and_websocket() {
    let upstream = api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (tokens, alice, bob) = two_clients(dir.path()).await;
    let (addr, _keyward) = start_for(&upstream.url(), &["--client-tokens", &tokens]).await;
    let first = call(addr, "POST", "/v1/responses", &alice, Some(created())).await;
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let continuing =
        |input: &str| json!({"model": "gpt-5", "input": input, "previous_response_id": id});

    let before = upstream.requests().len();
    // A short body, and one whose id comes after a megabyte of input, in many chunks.
    let long = "x".repeat(1 << 20);
    for body in [continuing("what did I say?"), continuing(&long)] {
        for path in [
            "/v1/responses",
            "/v1/responses/input_tokens",
            "/v1/responses/compact",
        ] {
            let reply = call(addr, "POST", path, &bob, Some(body.clone())).await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{path}: {}",
                reply.text()
            );
            let error = &reply.json()["error"];
            assert_eq!(
                error["message"],
                format!("Previous response with id '{id}' not found.")
            );
            assert_eq!(error["param"], "previous_response_id");
            assert_eq!(error["code"], "previous_response_not_found");
        }
    }
    // Compressed, it is decoded to be checked.
    let gzipped = {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder
            .write_all(continuing("hi").to_string().as_bytes())
            .unwrap();
        encoder.finish().unwrap()
    };
    let req = Request::post("/v1/responses")
        .header("authorization", format!("Bearer {bob}"))
        .header("content-encoding", "gzip")
        .body(Full::new(Bytes::from(gzipped.clone())))
        .unwrap();
    let reply = client::read(client::send(addr, req).await).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    // A long body is already on its way when its last chunk shows the id: that chunk is never
    // sent, so the upstream gets a cut request, which it cannot act on.
    for cut in &upstream.requests()[before..] {
        assert!(
            serde_json::from_slice::<Value>(&cut.body).is_err(),
            "bob's request reached the upstream whole: {} bytes",
            cut.body.len()
        );
    }
    let before = upstream.requests().len();

    // Alice continues her own, compressed or not.
    let mine = call(
        addr,
        "POST",
        "/v1/responses",
        &alice,
        Some(continuing("go on")),
    )
    .await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.text());
    assert_eq!(upstream.requests().len(), before + 1);
    let req = Request::post("/v1/responses")
        .header("authorization", format!("Bearer {alice}"))
        .header("content-encoding", "gzip")
        .body(Full::new(Bytes::from(gzipped.clone())))
        .unwrap();
    let mine = client::read(client::send(addr, req).await).await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.text());
    let seen = upstream.requests();
    assert_eq!(
        seen.last().unwrap().body.as_ref(),
        gzipped.as_slice(),
        "sent as it came"
    );
}

/// Ways of naming a previous response that a JSON parser reads as `previous_response_id` (the
/// upstream's does) though the bytes differ: the key escaped, the key twice (parsers keep the
/// last), spaced.
fn disguised_continuations(id: &str) -> Vec<String> {
    vec![
        format!(r#"{{"model":"gpt-5","input":"hi","previous\u005fresponse_id":"{id}"}}"#),
        format!(r#"{{"model":"gpt-5","input":"hi","\u0070revious_response_id":"{id}"}}"#),
        format!(
            r#"{{"model":"gpt-5","previous_response_id":null,"input":"hi","previous_response_id":"{id}"}}"#
        ),
        format!(r#"{{ "model" : "gpt-5" , "previous_response_id" :  "{id}" , "input": "hi" }}"#),
    ]
}

#[tokio::test]
async fn another_client_s_response_named_in_disguise_is_refused_too() {
    let upstream = api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (tokens, alice, bob) = two_clients(dir.path()).await;
    let (addr, _keyward) = start_for(&upstream.url(), &["--client-tokens", &tokens]).await;
    let first = call(addr, "POST", "/v1/responses", &alice, Some(created())).await;
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let before = upstream.requests().len();
    for body in disguised_continuations(&id) {
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["previous_response_id"],
            id.as_str(),
            "what a parser reads: {body}"
        );
        let req = Request::post("/v1/responses")
            .header("authorization", format!("Bearer {bob}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let reply = client::read(client::send(addr, req).await).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.text()
        );
        assert_eq!(
            reply.json()["error"]["code"],
            "previous_response_not_found",
            "{body}"
        );
    }
    for cut in &upstream.requests()[before..] {
        assert!(
            serde_json::from_slice::<Value>(&cut.body).is_err(),
            "bob's request reached the upstream whole: {}",
            String::from_utf8_lossy(&cut.body)
        );
    }
}

#[tokio::test]
async fn a_websocket_turn_may_continue_only_its_client_s_responses() {
    let mut upstream = ws::FakeWsUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (tokens, alice, bob) = two_clients(dir.path()).await;
    let (addr, _keyward) = start_for(&upstream.url(), &["--client-tokens", &tokens]).await;
    let (mut socket, _) = ws::connect(addr, &[("authorization", &format!("Bearer {alice}"))])
        .await
        .unwrap();
    let mut up = upstream.next_socket().await;
    ws::send_text(&mut socket, &ws::create("hi", None)).await;
    let _ = ws::next_text(&mut up).await;
    for event in ws::events("resp_ws_alice", "Hello") {
        ws::send_text(&mut up, &event).await;
    }
    while !ws::next_text(&mut socket)
        .await
        .contains("response.completed")
    {}
    // Her next turn continues it, as Codex does.
    ws::send_text(&mut socket, &ws::create("more", Some("resp_ws_alice"))).await;
    assert!(ws::next_text(&mut up).await.contains("resp_ws_alice"));

    let (mut bobs, _) = ws::connect(addr, &[("authorization", &format!("Bearer {bob}"))])
        .await
        .unwrap();
    let mut bobs_up = upstream.next_socket().await;
    ws::send_text(
        &mut bobs,
        &ws::create("what did she say?", Some("resp_ws_alice")),
    )
    .await;
    let refusal: Value = serde_json::from_str(&ws::next_text(&mut bobs).await).unwrap();
    assert_eq!(refusal["type"], "error");
    assert_eq!(refusal["status"], 400);
    assert_eq!(refusal["error"]["code"], "previous_response_not_found");
    // However he writes its name.
    for body in disguised_continuations("resp_ws_alice") {
        let message = body.replacen('{', r#"{"type":"response.create","#, 1);
        ws::send_text(&mut bobs, &message).await;
        let refusal: Value = serde_json::from_str(&ws::next_text(&mut bobs).await).unwrap();
        assert_eq!(
            refusal["error"]["code"], "previous_response_not_found",
            "{message}: {refusal}"
        );
    }
    // The socket stays open, and a turn of his own goes through.
    ws::send_text(&mut bobs, &ws::create("hello", None)).await;
    let forwarded = ws::next_text(&mut bobs_up).await;
    assert!(
        !forwarded.contains("resp_ws_alice"),
        "only bob's own turn reached the upstream"
    );
}

#[tokio::test]
async fn a_refused_use_of_another_client_s_response_is_logged_with_who_tried() {
    let upstream = api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (tokens, alice, bob) = two_clients(dir.path()).await;
    let keyward = crate::support::keyward::Process::spawn(
        &[
            "--upstream-url",
            &upstream.url(),
            "--client-tokens",
            &tokens,
        ],
        b"sk-key\n",
        &[],
    )
    .await;
    let created = call(
        keyward.addr,
        "POST",
        "/v1/responses",
        &alice,
        Some(created()),
    )
    .await;
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let refused = call(
        keyward.addr,
        "DELETE",
        &format!("/v1/responses/{id}"),
        &bob,
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    let line = keyward
        .wait_for_log("refused a stored response to a client that did not create it")
        .await;
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("client=bob") && line.contains(&id), "{line}");
    assert!(line.contains("known=true"), "{line}");
}
