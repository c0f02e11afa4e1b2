//! The endpoints the ChatGPT backend serves besides create (compact, the model list) and the
//! clear refusal of those it does not; compressed request bodies in both modes.

use std::io::Write;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::chatgpt::chatgpt_keyward;
use crate::support::chatgpt::{FakeIssuer, fake_backend, seed_login};
use crate::support::client::{self, Reply};
use crate::support::keyward::start_for;
use crate::support::upstream::FakeUpstream;

async fn send(addr: std::net::SocketAddr, req: http::request::Builder, body: Bytes) -> Reply {
    client::read(client::send(addr, req.body(Full::new(body)).unwrap()).await).await
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn request() -> Value {
    json!({"model": "gpt-5", "input": "Say hello", "stream": true, "store": true})
}

#[tokio::test]
async fn chatgpt_mode_serves_compact_and_the_model_list_and_refuses_the_rest_clearly() {
    let issuer = FakeIssuer::start().await;
    let backend = fake_backend(issuer.state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    seed_login(tmp.path(), &issuer.mint());
    let (addr, _keyward) = chatgpt_keyward(&issuer, &backend, tmp.path(), &[]).await;

    let models = client::get(addr, "/v1/models").await;
    assert_eq!(models.status, StatusCode::OK, "{}", models.text());
    assert_eq!(
        models.json(),
        json!({"object": "list", "data": [
            {"id": "gpt-5.1-codex", "object": "model", "created": 0, "owned_by": "openai"},
            {"id": "gpt-5.1", "object": "model", "created": 0, "owned_by": "openai"},
        ]})
    );
    let seen = backend.next_request().await;
    assert_eq!(
        seen.uri,
        format!(
            "/backend-api/codex/models?client_version={}",
            keyward::config::command_args::CODEX_VERSION
        )
    );
    assert!(seen.headers.contains_key("chatgpt-account-id"));
    let one = client::get(addr, "/v1/models/gpt-5.1").await;
    assert_eq!(one.json()["id"], "gpt-5.1");
    let none = client::get(addr, "/v1/models/gpt-0").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert_eq!(none.json()["error"]["code"], "model_not_found");

    // Compact goes to the backend's compact endpoint, the body as it came, compressed or not.
    let body = zstd(
        json!({"model": "gpt-5", "input": "long talk"})
            .to_string()
            .as_bytes(),
    );
    let compact = send(
        addr,
        Request::post("/v1/responses/compact")
            .header("content-type", "application/json")
            .header("content-encoding", "zstd"),
        Bytes::from(body.clone()),
    )
    .await;
    assert_eq!(compact.status, StatusCode::OK, "{}", compact.text());
    assert_eq!(compact.json()["output"][0]["type"], "compaction");
    let seen = loop {
        let seen = backend.next_request().await;
        if seen.uri.contains("compact") {
            break seen;
        }
    };
    assert_eq!(seen.uri, "/backend-api/codex/responses/compact");
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.headers["content-encoding"], "zstd");
    assert_eq!(seen.body.as_ref(), body.as_slice());

    let before = backend.requests().len();
    for (method, path, says) in [
        ("GET", "/v1/responses/resp_1", "keeps no stored responses"),
        (
            "POST",
            "/v1/responses/resp_1/cancel",
            "keeps no stored responses",
        ),
        (
            "DELETE",
            "/v1/responses/resp_1",
            "keeps no stored responses",
        ),
        (
            "GET",
            "/v1/responses/resp_1/input_items",
            "keeps no stored responses",
        ),
        (
            "POST",
            "/v1/responses/input_tokens",
            "does not count input tokens",
        ),
    ] {
        let reply = send(
            addr,
            Request::builder().method(method).uri(path),
            Bytes::new(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(
            reply.json()["error"]["code"],
            "not_offered_by_chatgpt_backend"
        );
        assert!(
            reply.text().contains(says),
            "{method} {path}: {}",
            reply.text()
        );
    }
    assert_eq!(backend.requests().len(), before, "none reached the backend");
}

#[tokio::test]
async fn chatgpt_mode_decodes_a_compressed_body_and_sends_it_on_plain() {
    let issuer = FakeIssuer::start().await;
    let backend = fake_backend(issuer.state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    seed_login(tmp.path(), &issuer.mint());
    let (addr, _keyward) = chatgpt_keyward(&issuer, &backend, tmp.path(), &[]).await;
    let plain = request().to_string();

    for (encoding, body) in [
        ("zstd", zstd(plain.as_bytes())),
        ("gzip", gzip(plain.as_bytes())),
    ] {
        let reply = send(
            addr,
            Request::post("/v1/responses")
                .header("content-type", "application/json")
                .header("content-encoding", encoding),
            Bytes::from(body),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{encoding}: {}", reply.text());
        let seen = backend.next_request().await;
        assert!(!seen.headers.contains_key("content-encoding"), "{encoding}");
        let sent: Value = serde_json::from_slice(&seen.body).expect("plain JSON");
        assert_eq!(sent["store"], false, "the backend's rules were applied");
        assert_eq!(sent["input"], "Say hello");
    }

    let before = backend.requests().len();
    let refused = send(
        addr,
        Request::post("/v1/responses").header("content-encoding", "br"),
        Bytes::from_static(b"\x0b\x02\x80{}\x03"),
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        refused.json()["error"]["code"],
        "unsupported_content_encoding"
    );
    assert!(refused.text().contains("gzip, deflate or zstd"));
    let broken = send(
        addr,
        Request::post("/v1/responses").header("content-encoding", "gzip"),
        Bytes::from_static(b"not gzip at all"),
    )
    .await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);
    assert!(
        broken.text().contains("not valid gzip"),
        "{}",
        broken.text()
    );
    assert_eq!(
        backend.requests().len(),
        before,
        "neither reached the backend"
    );
}

#[tokio::test]
async fn api_key_mode_passes_a_compressed_body_on_untouched_and_estimates_from_its_text() {
    // The upstream answers with a stream that ends before its usage: the charge is an estimate.
    let upstream = FakeUpstream::start(|_| async {
        let (response, tx) = crate::support::upstream::stream("text/event-stream");
        drop(tx);
        response
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let ledger = tmp.path().join("usage.jsonl");
    let (addr, keyward) =
        start_for(&upstream.url(), &["--usage-log", ledger.to_str().unwrap()]).await;
    // 4,000 bytes of text that compress to far fewer.
    let text = "a".repeat(4000);
    let plain = json!({"model": "gpt-5", "input": text}).to_string();
    let body = gzip(plain.as_bytes());
    assert!(body.len() < 200);
    let reply = send(
        addr,
        Request::post("/v1/responses")
            .header("content-type", "application/json")
            .header("content-encoding", "gzip"),
        Bytes::from(body.clone()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = upstream.next_request().await;
    assert_eq!(seen.headers["content-encoding"], "gzip");
    assert_eq!(
        seen.body.as_ref(),
        body.as_slice(),
        "the bytes as the client sent them"
    );
    drop(keyward);
    let line: Value = crate::support::within("the ledger line", async {
        loop {
            if let Some(line) = std::fs::read_to_string(&ledger)
                .unwrap_or_default()
                .lines()
                .next()
            {
                return serde_json::from_str(line).unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(line["estimated"], true);
    assert_eq!(
        line["input_tokens"],
        (plain.len() as u64).div_ceil(4),
        "estimated from the decoded text, not the {} compressed bytes",
        body.len()
    );
}
