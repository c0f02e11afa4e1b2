//! One header policy for every path and both credentials: for each endpoint keyward forwards
//! (create, a stream, the WebSocket handshake, compact, input tokens, the model list, retrieve),
//! with an API key and with a ChatGPT login, the client's own identity with the upstream and its
//! credentials never reach the upstream, and the headers Codex and the SDKs rely on pass the same
//! way. Endpoints the ChatGPT backend does not offer reach nothing.

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::chatgpt::{chatgpt_keyward, chatgpt_keyward_at};
use crate::support::chatgpt::{ACCOUNT, FakeIssuer, fake_backend, seed_login};
use crate::support::client;
use crate::support::keyward::{TEST_KEY, start_for};
use crate::support::upstream::FakeUpstream;
use crate::support::{api, ws};

/// What every request in the table carries besides its own headers.
const CLIENT_HEADERS: [(&str, &str); 11] = [
    // Never passes: the client's credentials and identity with the upstream.
    ("authorization", "Bearer sk-client-placeholder"),
    ("api-key", "client-api-key"),
    ("cookie", "session=another-local-app"),
    ("chatgpt-account-id", "acct_spoofed"),
    ("x-openai-fedramp", "true"),
    ("proxy-authorization", "Basic Y2xpZW50OnNlY3JldA=="),
    // Passes, as Codex and the SDKs send them.
    ("session-id", "sess-1"),
    ("x-client-request-id", "req-client-1"),
    ("x-codex-turn-metadata", "{\"turn\":1}"),
    ("openai-beta", "responses_websockets=2026-02-06"),
    ("x-stainless-lang", "python"),
];

const PASSING: [&str; 5] = [
    "session-id",
    "x-client-request-id",
    "x-codex-turn-metadata",
    "openai-beta",
    "x-stainless-lang",
];

#[derive(Clone, Copy, Debug)]
enum Mode {
    ApiKey,
    ChatGpt,
}

#[derive(Clone, Copy, Debug)]
enum Path {
    Create,
    Stream,
    WebSocket,
    Compact,
    InputTokens,
    Models,
    Retrieve,
}

const PATHS: [Path; 7] = [
    Path::Create,
    Path::Stream,
    Path::WebSocket,
    Path::Compact,
    Path::InputTokens,
    Path::Models,
    Path::Retrieve,
];

impl Path {
    /// Whether `mode`'s upstream serves it (the ChatGPT backend keeps no stored responses and
    /// counts no input tokens: keyward answers those itself).
    fn forwarded(self, mode: Mode) -> bool {
        !matches!(
            (self, mode),
            (Path::InputTokens | Path::Retrieve, Mode::ChatGpt)
        )
    }
}

/// The upstream's copy of what `path` sent, checked against the policy.
fn check(mode: Mode, path: Path, seen: &HeaderMap) {
    let at = format!("{path:?} with {mode:?}");
    for name in PASSING {
        let sent = CLIENT_HEADERS.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(
            seen.get(name).and_then(|v| v.to_str().ok()),
            Some(sent),
            "{at}: {name} did not pass as sent"
        );
    }
    for name in [
        "cookie",
        "api-key",
        "x-openai-fedramp",
        "proxy-authorization",
    ] {
        assert!(
            !seen.contains_key(name),
            "{at}: the client's {name} reached the upstream"
        );
    }
    match mode {
        Mode::ApiKey => {
            assert_eq!(
                seen["authorization"],
                format!("Bearer {TEST_KEY}").as_str(),
                "{at}"
            );
            assert!(
                !seen.contains_key("chatgpt-account-id"),
                "{at}: the client's chatgpt-account-id reached the upstream with a key"
            );
        }
        Mode::ChatGpt => {
            let auth = seen["authorization"].to_str().unwrap();
            assert!(
                auth.starts_with("Bearer ") && !auth.contains("sk-client-placeholder"),
                "{at}: {auth}"
            );
            assert_eq!(seen.get_all("chatgpt-account-id").iter().count(), 1, "{at}");
            assert_eq!(seen["chatgpt-account-id"], ACCOUNT, "{at}");
        }
    }
}

fn request(method: &str, path: &str, body: Option<serde_json::Value>) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri(path);
    for (name, value) in CLIENT_HEADERS {
        req = req.header(name, value);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    req.body(Full::new(body)).unwrap()
}

/// Sends `path` through keyward at `addr`; the status keyward answered with.
async fn send(addr: std::net::SocketAddr, path: Path, id: &str) -> StatusCode {
    let create = json!({"model": "gpt-5", "input": "Say hello"});
    let stream = json!({"model": "gpt-5", "input": "Say hello", "stream": true});
    let req = match path {
        Path::Create => request("POST", "/v1/responses", Some(create)),
        Path::Stream => request("POST", "/v1/responses", Some(stream)),
        Path::Compact => request("POST", "/v1/responses/compact", Some(create)),
        Path::InputTokens => request("POST", "/v1/responses/input_tokens", Some(create)),
        Path::Models => request("GET", "/v1/models", None),
        Path::Retrieve => request("GET", &format!("/v1/responses/{id}"), None),
        Path::WebSocket => unreachable!("sent by the WebSocket client"),
    };
    let reply = client::read(client::send(addr, req).await).await;
    reply.status
}

/// Each path through one keyward whose HTTP upstream is `http` and WebSocket upstream `ws`.
async fn each_path(
    mode: Mode,
    http: (std::net::SocketAddr, &FakeUpstream),
    ws: (std::net::SocketAddr, &ws::FakeWsUpstream),
) {
    let (addr, upstream) = http;
    // A stored response of this client's, to retrieve.
    let created = client::read(
        client::send(
            addr,
            request(
                "POST",
                "/v1/responses",
                Some(json!({"model": "gpt-5", "input": "hi"})),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let mut checked = 0;
    for path in PATHS {
        if let Path::WebSocket = path {
            let (ws_addr, ws_upstream) = ws;
            let before = ws_upstream.handshakes().len();
            let (_socket, response) = ws::connect(ws_addr, &CLIENT_HEADERS).await.unwrap();
            assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
            let handshakes = ws_upstream.handshakes();
            assert_eq!(handshakes.len(), before + 1);
            check(mode, path, &handshakes[before]);
            checked += 1;
            continue;
        }
        let before = upstream.requests().len();
        let status = send(addr, path, &id).await;
        let seen = upstream.requests();
        if path.forwarded(mode) {
            assert!(status.is_success(), "{path:?} with {mode:?}: {status}");
            assert_eq!(seen.len(), before + 1, "{path:?} with {mode:?}");
            check(mode, path, &seen[before].headers);
            checked += 1;
        } else {
            assert_eq!(status, StatusCode::NOT_FOUND, "{path:?} with {mode:?}");
            assert_eq!(
                seen.len(),
                before,
                "{path:?} with {mode:?} reached the upstream"
            );
        }
    }
    let expected = PATHS.iter().filter(|p| p.forwarded(mode)).count();
    assert_eq!(checked, expected);
}

#[tokio::test]
async fn one_header_policy_for_every_path_with_an_api_key() {
    let upstream = api::start().await;
    let (addr, _keyward) = start_for(&upstream.url(), &[]).await;
    let ws_upstream = ws::FakeWsUpstream::start().await;
    let (ws_addr, _ws_keyward) = start_for(&ws_upstream.url(), &[]).await;
    each_path(Mode::ApiKey, (addr, &upstream), (ws_addr, &ws_upstream)).await;
}

#[tokio::test]
async fn one_header_policy_for_every_path_with_a_chatgpt_login() {
    let issuer = FakeIssuer::start().await;
    let backend = fake_backend(issuer.state.clone()).await;
    let home = tempfile::tempdir().unwrap();
    seed_login(home.path(), &issuer.mint());
    let (addr, _keyward) = chatgpt_keyward(&issuer, &backend, home.path(), &[]).await;

    let ws_upstream = ws::FakeWsUpstream::start().await;
    let ws_home = tempfile::tempdir().unwrap();
    seed_login(ws_home.path(), &issuer.mint());
    let (ws_addr, _ws_keyward) =
        chatgpt_keyward_at(&issuer, ws_upstream.addr, ws_home.path(), &[]).await;
    each_path(Mode::ChatGpt, (addr, &backend), (ws_addr, &ws_upstream)).await;
}
