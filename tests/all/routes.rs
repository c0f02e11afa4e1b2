//! Several credentials, each client given one by the routes: `--credential` and `--route`, or
//! `[credential.NAME]` and `[[route]]` in the config file.

use std::path::Path;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use crate::support::client;
use crate::support::keyward::{Process, add_client_token, add_client_token_in};
use crate::support::upstream::FakeUpstream;
use crate::support::within;

async fn post_as(addr: std::net::SocketAddr, token: &str) -> client::Reply {
    let req = Request::post("/v1/responses")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-5","input":"hi"}"#,
        )))
        .unwrap();
    client::read(client::send(addr, req).await).await
}

/// Two key files (0600), for the credentials `a` and `b`.
pub(crate) fn key_files(dir: &Path) -> (String, String) {
    use std::os::unix::fs::PermissionsExt;
    let write = |name: &str, key: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{key}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    (write("key-a", "sk-route-a"), write("key-b", "sk-route-b"))
}

/// The `--credential` values of two keys (files in `dir`): `a` sending to `upstream_a`, `b` to
/// `upstream_b`.
fn key_credentials(
    dir: &Path,
    upstream_a: &FakeUpstream,
    upstream_b: &FakeUpstream,
) -> (String, String) {
    let (key_a, key_b) = key_files(dir);
    (
        format!("a:api-key-file={key_a},upstream-url={}", upstream_a.url()),
        format!("b:api-key-file={key_b},upstream-url={}", upstream_b.url()),
    )
}

/// keyward with the credentials `plan` (key a, to `plan`) and `key` (key b, to `key`), every
/// client routed to `plan` then `key`; `extra` flags after them.
async fn plan_then_key(
    dir: &Path,
    plan: &FakeUpstream,
    key: &FakeUpstream,
    extra: &[&str],
) -> Process {
    let (key_a, key_b) = key_files(dir);
    let credential_plan = format!("plan:api-key-file={key_a},upstream-url={}", plan.url());
    let credential_key = format!("key:api-key-file={key_b},upstream-url={}", key.url());
    let mut args = vec![
        "--credential",
        &credential_plan,
        "--credential",
        &credential_key,
        "--route",
        "*=plan,key",
    ];
    args.extend_from_slice(extra);
    Process::spawn(&args, b"", &[]).await
}

/// The next request `upstream` gets carries `key`.
async fn sent_with(upstream: &FakeUpstream, key: &str) {
    let seen = upstream.next_request().await;
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {key}").as_str()
    );
}

pub(crate) async fn ledger_lines(path: &Path, n: usize) -> Vec<Value> {
    within("ledger lines", async {
        loop {
            let lines: Vec<Value> = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Which credential answered each ledger line, in order (`-` for none).
pub(crate) fn credentials_of(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["credential"].as_str().unwrap_or("-"))
        .collect()
}

#[tokio::test]
async fn each_client_is_served_with_the_credential_its_route_gives_and_others_are_refused() {
    let (upstream_a, upstream_b) = (FakeUpstream::ok_json().await, FakeUpstream::ok_json().await);
    let dir = tempfile::tempdir().unwrap();
    let (credential_a, credential_b) = key_credentials(dir.path(), &upstream_a, &upstream_b);
    let tokens = dir.path().join("tokens.json");
    let alice = add_client_token(&tokens, "alice").await;
    let bob = add_client_token(&tokens, "bob").await;
    let carol = add_client_token(&tokens, "carol").await;
    let ledger = dir.path().join("usage.jsonl");
    let args = [
        "--client-tokens",
        tokens.to_str().unwrap(),
        "--usage-log",
        ledger.to_str().unwrap(),
        "--credential",
        &credential_a,
        "--credential",
        &credential_b,
        "--route",
        "alice=a",
        "--route",
        "bob=b",
    ];
    // No key on stdin: the credentials are the files'.
    let keyward = Process::spawn(&args, b"", &[]).await;

    let reply = post_as(keyward.addr, &alice).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = upstream_a.next_request().await;
    assert_eq!(seen.headers["authorization"], "Bearer sk-route-a");

    let reply = post_as(keyward.addr, &bob).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = upstream_b.next_request().await;
    assert_eq!(seen.headers["authorization"], "Bearer sk-route-b");
    assert_eq!(
        upstream_a.requests().len(),
        1,
        "bob's request went to b alone"
    );

    // A client no route names is refused, and told why.
    let reply = post_as(keyward.addr, &carol).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    let error = &reply.json()["error"];
    assert_eq!(error["code"], "no_route", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("no credential for client `carol`"),
        "{error}"
    );
    assert_eq!(upstream_a.requests().len() + upstream_b.requests().len(), 2);

    // The ledger names each request's credential; /readyz each credential.
    let lines = ledger_lines(&ledger, 3).await;
    let by_client = |client: &str| {
        lines
            .iter()
            .find(|l| l["client"] == client)
            .unwrap_or_else(|| panic!("no line for {client}: {lines:?}"))
            .clone()
    };
    assert_eq!(by_client("alice")["credential"], "a");
    assert_eq!(by_client("bob")["credential"], "b");
    assert!(by_client("carol").get("credential").is_none());
    let ready = client::get(keyward.addr, "/readyz").await.json();
    assert_eq!(ready["credentials"]["a"]["ready"], true, "{ready}");
    assert_eq!(ready["credentials"]["b"]["kind"], "api_key", "{ready}");
    // Neither key reached the log, the ledger or /readyz.
    let ledger_text = std::fs::read_to_string(&ledger).unwrap();
    for text in [keyward.stderr(), ledger_text, ready.to_string()] {
        assert!(
            !text.contains("sk-route-a") && !text.contains("sk-route-b"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn credentials_and_routes_from_the_config_file_are_checked_and_served() {
    let (upstream_a, upstream_b) = (FakeUpstream::ok_json().await, FakeUpstream::ok_json().await);
    let dir = tempfile::tempdir().unwrap();
    let (key_a, key_b) = key_files(dir.path());
    let tokens = dir.path().join("tokens.json");
    let alice = add_client_token(&tokens, "alice").await;
    let bob = add_client_token(&tokens, "bob").await;
    let file = dir.path().join("keyward.toml");
    std::fs::write(
        &file,
        format!(
            "client-tokens = \"{}\"\n\n[credential.a]\napi-key-file = \"{key_a}\"\nupstream-url = \"{}\"\n\n\
             [credential.b]\napi-key-file = \"{key_b}\"\nupstream-url = \"{}\"\nrequests-per-minute = 600\n\n\
             [[route]]\nclients = [\"alice\"]\ncredentials = [\"a\", \"b\"]\n\n\
             [[route]]\nclients = [\"*\"]\ncredentials = [\"b\"]\n",
            tokens.display(),
            upstream_a.url(),
            upstream_b.url()
        ),
    )
    .unwrap();

    let checked = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["check-config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        text.contains(&format!(
            "a (an API key from {key_a}, to {}): alice",
            upstream_a.url()
        )) && text.contains("b (an API key from")
            && text.contains("): alice, every client")
            && text.contains("credential b: requests-per-minute=600"),
        "{text}"
    );

    let keyward = Process::spawn(&["--config", file.to_str().unwrap()], b"", &[]).await;
    // alice's route lists two credentials: the log says in which order they are tried.
    assert!(
        keyward
            .stderr()
            .contains("credentials in turn when a plan's limit is reached: a, b"),
        "{}",
        keyward.stderr()
    );
    assert_eq!(post_as(keyward.addr, &alice).await.status, StatusCode::OK);
    sent_with(&upstream_a, "sk-route-a").await;
    assert_eq!(post_as(keyward.addr, &bob).await.status, StatusCode::OK);
    sent_with(&upstream_b, "sk-route-b").await;

    // A route naming a credential there is not is refused at start, naming it.
    std::fs::write(
        &file,
        format!(
            "[credential.a]\napi-key-file = \"{key_a}\"\n\n[[route]]\nclients = [\"*\"]\ncredentials = [\"nope\"]\n"
        ),
    )
    .unwrap();
    let checked = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["check-config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!checked.status.success());
    let err = String::from_utf8_lossy(&checked.stderr);
    assert!(err.contains("there is no credential named `nope`"), "{err}");
}

/// A ChatGPT login for one client and an API key for the rest: each request goes to its own
/// upstream with its own credential, adapted for the backend only when it goes there.
#[tokio::test]
async fn a_login_and_a_key_serve_different_clients() {
    use crate::support::chatgpt::{
        ACCOUNT, FakeIssuer, fake_backend, plan_and_key_args, seed_login,
    };
    let issuer = FakeIssuer::start().await;
    let backend = fake_backend(issuer.state.clone()).await;
    let api = FakeUpstream::ok_json().await;
    let dir = tempfile::tempdir().unwrap();
    let (key_a, _) = key_files(dir.path());
    let home = dir.path().join("home");
    let team = issuer.mint();
    seed_login(&home.join("logins/team"), &team);
    std::fs::set_permissions(
        &home,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
    )
    .unwrap();
    let tokens = dir.path().join("tokens.json");
    let alice = add_client_token(&tokens, "alice").await;
    let bob = add_client_token(&tokens, "bob").await;
    let mut args = plan_and_key_args(&home, &issuer, backend.addr, "team", &key_a, &api.url());
    for arg in [
        "--client-tokens",
        tokens.to_str().unwrap(),
        "--route",
        "alice=plan",
        "--route",
        "*=key",
    ] {
        args.push(arg.to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let keyward = Process::spawn(&args, b"", &[]).await;

    let reply = post_as(keyward.addr, &alice).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = backend.next_request().await;
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {}", team.access_token).as_str()
    );
    assert_eq!(seen.headers["chatgpt-account-id"], ACCOUNT);
    // Adapted for the backend: it must not store.
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["store"], false, "{body}");

    let reply = post_as(keyward.addr, &bob).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = api.next_request().await;
    assert_eq!(seen.headers["authorization"], "Bearer sk-route-a");
    assert!(
        seen.headers.get("chatgpt-account-id").is_none(),
        "no login header with a key"
    );
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"model": "gpt-5", "input": "hi"}),
        "as the client sent it"
    );
}

/// `@GROUP` in a route: the members of that OS group (of the user the kernel names).
#[cfg_attr(
    not(keyward_root),
    ignore = "needs root (scripts/test in CI runs as root)"
)]
#[tokio::test]
async fn a_route_for_a_group_serves_its_members() {
    use crate::support::users::{GROUP, client_as, count, users};
    let users = users();
    let (upstream_a, upstream_b) = (FakeUpstream::ok_json().await, FakeUpstream::ok_json().await);
    let dir = tempfile::tempdir().unwrap();
    let (credential_a, credential_b) = key_credentials(dir.path(), &upstream_a, &upstream_b);
    let group_route = format!("@{GROUP}=a");
    let args = [
        "--credential",
        &credential_a,
        "--credential",
        &credential_b,
        "--route",
        &group_route,
        "--route",
        "*=b",
    ];
    let keyward = Process::spawn(&args, b"", &[]).await;
    let target = serde_json::json!({ "target": format!("tcp:{}", keyward.addr) });
    // alice is in the group, bob is not.
    let alice = client_as(Some(users.alice), target.clone()).await;
    assert_eq!(count(&alice, 200), 1, "{alice}");
    assert_eq!(upstream_a.requests().len(), 1);
    let bob = client_as(Some(users.bob), target).await;
    assert_eq!(count(&bob, 200), 1, "{bob}");
    assert_eq!(upstream_b.requests().len(), 1);
    assert_eq!(upstream_a.requests().len(), 1, "bob's went to b");
}

/// A plan that reaches its limit: its `429 usage_limit_reached` never reaches the client, which
/// is answered through the route's next credential; until the reset the requests go straight
/// there, then back to the plan. Other 429s reach the client as they came.
#[tokio::test]
async fn a_spent_plan_falls_back_to_the_next_credential_until_its_reset() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU8, Ordering};
    // 0: answers; 1: its plan is spent (reset in 2 s); 2: a per-minute rate limit.
    let mode = Arc::new(AtomicU8::new(1));
    let plan = {
        let mode = mode.clone();
        FakeUpstream::start(move |_| {
            let mode = mode.load(Ordering::SeqCst);
            async move {
                match mode {
                    1 => crate::support::upstream::json(
                        StatusCode::TOO_MANY_REQUESTS,
                        r#"{"error":{"type":"usage_limit_reached","message":"The usage limit has been reached","plan_type":"plus","resets_in_seconds":2}}"#,
                    ),
                    2 => crate::support::upstream::json(
                        StatusCode::TOO_MANY_REQUESTS,
                        r#"{"error":{"type":"rate_limit_exceeded","message":"slow down"}}"#,
                    ),
                    _ => crate::support::upstream::json(
                        StatusCode::OK,
                        r#"{"id":"resp_plan","object":"response","status":"completed"}"#,
                    ),
                }
            }
        })
        .await
    };
    let key = FakeUpstream::ok_json().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let keyward = plan_then_key(
        dir.path(),
        &plan,
        &key,
        &["--usage-log", ledger.to_str().unwrap()],
    )
    .await;
    let post = || async {
        client::post_responses(keyward.addr, r#"{"model":"gpt-5","input":"hi"}"#).await
    };

    // The plan is spent: the client sees one answer, the key's.
    let reply = post().await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(plan.requests().len(), 1);
    let seen = key.next_request().await;
    assert_eq!(seen.headers["authorization"], "Bearer sk-route-b");
    assert_eq!(
        seen.body,
        Bytes::from_static(br#"{"model":"gpt-5","input":"hi"}"#),
        "the client's body, sent again"
    );
    // /readyz says until when the plan rests.
    let ready = client::get(keyward.addr, "/readyz").await.json();
    assert!(
        ready["credentials"]["plan"]["resting_until"]
            .as_str()
            .is_some_and(|at| at.ends_with('Z')),
        "{ready}"
    );
    assert!(ready["credentials"]["key"].get("resting_until").is_none());
    // Until the reset, straight to the key.
    mode.store(0, Ordering::SeqCst);
    assert_eq!(post().await.status, StatusCode::OK);
    assert_eq!(
        plan.requests().len(),
        1,
        "the spent plan was not asked again"
    );
    assert_eq!(key.requests().len(), 2);
    // After it, back to the plan.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let reply = post().await;
    assert_eq!(reply.json()["id"], "resp_plan", "{}", reply.text());
    assert_eq!(key.requests().len(), 2);
    // A rate limit is not a spent plan: the client gets it.
    mode.store(2, Ordering::SeqCst);
    let reply = post().await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        reply.text().contains("rate_limit_exceeded"),
        "{}",
        reply.text()
    );
    assert_eq!(key.requests().len(), 2);

    // The ledger: who answered each.
    let lines = ledger_lines(&ledger, 4).await;
    assert_eq!(
        credentials_of(&lines),
        ["key", "key", "plan", "plan"],
        "{lines:?}"
    );
    assert!(keyward.stderr().contains("the plan's limit is reached"));
}

/// The ChatGPT backend at its limit, as the real one answers (429 `usage_limit_reached`, the
/// window at 100%): the request goes to the API key instead, as the client wrote it, not as it was
/// adapted for the backend; the client never sees the 429.
#[tokio::test]
async fn a_login_at_its_limit_falls_back_to_the_key_with_the_clients_own_body() {
    use crate::support::chatgpt::{FakeIssuer, fake_backend, plan_and_key_args, seed_login};
    let issuer = FakeIssuer::start().await;
    issuer.state.lock().unwrap().plan_spent_for = Some(3600);
    let backend = fake_backend(issuer.state.clone()).await;
    let api = FakeUpstream::ok_json().await;
    let dir = tempfile::tempdir().unwrap();
    let (key_a, _) = key_files(dir.path());
    let home = dir.path().join("home");
    seed_login(&home, &issuer.mint());
    let ledger = dir.path().join("usage.jsonl");
    let mut args = plan_and_key_args(&home, &issuer, backend.addr, "default", &key_a, &api.url());
    for arg in [
        "--usage-log",
        ledger.to_str().unwrap(),
        "--route",
        "*=plan,key",
    ] {
        args.push(arg.to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let keyward = Process::spawn(&args, b"", &[]).await;
    let sent = r#"{"model":"gpt-5","input":"hi","store":true,"max_output_tokens":50}"#;
    let reply = client::post_responses(keyward.addr, sent).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.json()["id"],
        "resp_1",
        "the key's answer: {}",
        reply.text()
    );
    // The backend was asked once, with the body adapted for it; the API got the client's own.
    let at_backend = backend.requests();
    assert_eq!(at_backend.len(), 1);
    let adapted: Value = serde_json::from_slice(&at_backend[0].body).unwrap();
    assert_eq!(adapted["store"], false);
    assert!(adapted.get("max_output_tokens").is_none(), "{adapted}");
    let at_api = api.next_request().await;
    assert_eq!(at_api.body, Bytes::from(sent.to_owned()));
    assert_eq!(at_api.headers["authorization"], "Bearer sk-route-a");
    assert!(at_api.headers.get("chatgpt-account-id").is_none());
    // Resting an hour: the next goes straight to the key.
    let reply = client::post_responses(keyward.addr, sent).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(backend.requests().len(), 1);
    let lines = ledger_lines(&ledger, 2).await;
    assert!(lines.iter().all(|l| l["credential"] == "key"), "{lines:?}");
}

/// A conversation stays with the credential that answered it while that one is usable (the
/// upstream's prompt cache is there): after the plan's reset, new conversations go back to the
/// plan, the ones the key took over stay with the key.
#[tokio::test]
async fn a_session_stays_with_the_credential_that_answered_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let spent = Arc::new(AtomicBool::new(true));
    let plan = {
        let spent = spent.clone();
        FakeUpstream::start(move |_| {
            let spent = spent.load(Ordering::SeqCst);
            async move {
                if spent {
                    crate::support::upstream::json(
                        StatusCode::TOO_MANY_REQUESTS,
                        r#"{"error":{"type":"usage_limit_reached","resets_in_seconds":2}}"#,
                    )
                } else {
                    crate::support::upstream::json(StatusCode::OK, r#"{"id":"resp_plan"}"#)
                }
            }
        })
        .await
    };
    let key = FakeUpstream::ok_json().await;
    let dir = tempfile::tempdir().unwrap();
    let keyward = plan_then_key(dir.path(), &plan, &key, &[]).await;
    let answered_by = |session: Option<&'static str>, body: &'static str| {
        let addr = keyward.addr;
        async move {
            let mut req = Request::post("/v1/responses").header("content-type", "application/json");
            if let Some(session) = session {
                req = req.header("session-id", session);
            }
            let reply = client::read(
                client::send(addr, req.body(Full::new(Bytes::from(body))).unwrap()).await,
            )
            .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            reply.json()["id"].as_str().unwrap_or_default().to_owned()
        }
    };
    let plain = r#"{"model":"gpt-5","input":"hi"}"#;
    let keyed = r#"{"model":"gpt-5","input":"hi","prompt_cache_key":"conversation-p"}"#;
    // The plan is spent: both conversations go to the key.
    assert_eq!(answered_by(Some("s-1"), plain).await, "resp_1");
    assert_eq!(answered_by(None, keyed).await, "resp_1");
    // After the reset: they stay with the key; a new one and one without a session go to the plan.
    spent.store(false, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(answered_by(Some("s-1"), plain).await, "resp_1");
    assert_eq!(answered_by(None, keyed).await, "resp_1");
    assert_eq!(answered_by(Some("s-2"), plain).await, "resp_plan");
    assert_eq!(answered_by(None, plain).await, "resp_plan");
}

/// With client tokens, `@GROUP` names the clients added with `keyward token add --group GROUP`
/// (no OS group of that name is needed).
#[tokio::test]
async fn a_route_for_a_token_group_serves_the_clients_added_to_it() {
    let (upstream_a, upstream_b) = (FakeUpstream::ok_json().await, FakeUpstream::ok_json().await);
    let dir = tempfile::tempdir().unwrap();
    let (credential_a, credential_b) = key_credentials(dir.path(), &upstream_a, &upstream_b);
    let tokens = dir.path().join("tokens.json");
    let ci = add_client_token_in(&tokens, "ci", &["kw-robots"]).await;
    let alice = add_client_token(&tokens, "alice").await;
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["token", "list", "--client-tokens"])
        .arg(&tokens)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("ci ") && l.ends_with("kw-robots")),
        "{listed}"
    );
    let args = [
        "--client-tokens",
        tokens.to_str().unwrap(),
        "--credential",
        &credential_a,
        "--credential",
        &credential_b,
        "--route",
        "@kw-robots=b",
        "--route",
        "*=a",
    ];
    let keyward = Process::spawn(&args, b"", &[]).await;
    assert_eq!(post_as(keyward.addr, &ci).await.status, StatusCode::OK);
    sent_with(&upstream_b, "sk-route-b").await;
    assert_eq!(post_as(keyward.addr, &alice).await.status, StatusCode::OK);
    sent_with(&upstream_a, "sk-route-a").await;
    assert_eq!(upstream_b.requests().len(), 1);
}

/// A login that cannot be used (here: never signed in) is passed over for the route's next
/// credential, and `/readyz` says `degraded`, naming it, while the key serves.
#[tokio::test]
async fn a_login_that_cannot_be_used_is_passed_over_and_readyz_names_it() {
    use crate::support::chatgpt::{FakeIssuer, fake_backend, plan_and_key_args};
    let issuer = FakeIssuer::start().await;
    let backend = fake_backend(issuer.state.clone()).await;
    let api = FakeUpstream::ok_json().await;
    let dir = tempfile::tempdir().unwrap();
    let (key_a, _) = key_files(dir.path());
    let home = dir.path().join("home");
    let mut args = plan_and_key_args(&home, &issuer, backend.addr, "team", &key_a, &api.url());
    args.extend(["--route".to_owned(), "*=plan,key".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let keyward = Process::spawn(&args, b"", &[]).await;

    let reply = client::post_responses(keyward.addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(api.requests().len(), 1);
    assert!(
        backend.requests().is_empty(),
        "the login that is not signed in was passed over"
    );

    let ready = client::get(keyward.addr, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    let ready = ready.json();
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert!(
        ready["reason"]
            .as_str()
            .unwrap()
            .starts_with("credential plan: "),
        "{ready}"
    );
    assert_eq!(ready["credentials"]["plan"]["ready"], false, "{ready}");
    assert_eq!(ready["credentials"]["key"]["ready"], true, "{ready}");
}

/// A credential's own quota: over it, the route's next credential takes the requests (and with
/// no other, the client gets 429 naming the credential, with `Retry-After`). Tokens count from
/// the ledger across a restart.
#[tokio::test]
async fn a_credential_over_its_quota_is_passed_over_for_the_next() {
    let used = || async {
        crate::support::upstream::json(
            StatusCode::OK,
            r#"{"id":"resp_1","object":"response","status":"completed","usage":{"input_tokens":10,"output_tokens":5,"total_tokens":15}}"#,
        )
    };
    let (upstream_a, upstream_b) = (
        FakeUpstream::start(move |_| used()).await,
        FakeUpstream::ok_json().await,
    );
    let dir = tempfile::tempdir().unwrap();
    let (key_a, key_b) = key_files(dir.path());
    let ledger = dir.path().join("usage.jsonl");
    let a = format!(
        "a:api-key-file={key_a},upstream-url={},tokens-per-day=20",
        upstream_a.url()
    );
    let b = format!("b:api-key-file={key_b},upstream-url={}", upstream_b.url());
    let spawn = |route: &'static str| {
        let (a, b, ledger) = (a.clone(), b.clone(), ledger.clone());
        async move {
            let args = [
                "--usage-log",
                ledger.to_str().unwrap(),
                "--credential",
                &a,
                "--credential",
                &b,
                "--route",
                route,
                "--metrics-listen",
                "127.0.0.1:0",
            ];
            Process::spawn(&args, b"", &[]).await
        }
    };
    let post = |addr| async move {
        client::post_responses(addr, r#"{"model":"gpt-5","input":"hi"}"#).await
    };
    let keyward = spawn("*=a,b").await;
    // 15 tokens of 20: a takes the next too, which puts it over; then b.
    for _ in 0..3 {
        assert_eq!(post(keyward.addr).await.status, StatusCode::OK);
    }
    assert_eq!(upstream_a.requests().len(), 2);
    assert_eq!(upstream_b.requests().len(), 1);
    let lines = ledger_lines(&ledger, 3).await;
    assert_eq!(credentials_of(&lines), ["a", "a", "b"], "{lines:?}");
    drop(keyward);

    // Restarted, a is still over (its tokens read back from the ledger); alone on its route,
    // the client hears why.
    let keyward = spawn("*=a").await;
    let reply = post(keyward.addr).await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.text()
    );
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("the credential `a`") && message.contains("at most 20 tokens in 24 hours"),
        "{message}"
    );
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry > 3600,
        "the tokens leave the window in about a day: {retry}"
    );
    assert_eq!(
        upstream_a.requests().len(),
        2,
        "nothing more was sent with a"
    );
}

/// `[credential.NAME]` with `api-key-stdin = true` takes its key from standard input, another
/// its key from a file; a login's own `issuer` is where it is refreshed, not `--issuer`.
#[tokio::test]
async fn a_key_from_stdin_and_a_login_with_its_own_issuer() {
    use crate::support::chatgpt::{FakeIssuer, fake_backend, seed_login};
    let (upstream_a, upstream_b) = (FakeUpstream::ok_json().await, FakeUpstream::ok_json().await);
    let (elsewhere, own) = (FakeIssuer::start().await, FakeIssuer::start().await);
    let backend = fake_backend(own.state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (_, key_b) = key_files(dir.path());
    let home = dir.path().join("home");
    seed_login(&home, &own.mint_expired());
    let tokens = dir.path().join("tokens.json");
    let alice = add_client_token(&tokens, "alice").await;
    let bob = add_client_token(&tokens, "bob").await;
    let carol = add_client_token(&tokens, "carol").await;
    let file = dir.path().join("keyward.toml");
    std::fs::write(
        &file,
        format!(
            "client-tokens = \"{}\"\nhome = \"{}\"\nissuer = \"{}\"\n\n\
             [credential.a]\napi-key-stdin = true\nupstream-url = \"{}\"\n\n\
             [credential.b]\napi-key-file = \"{key_b}\"\nupstream-url = \"{}\"\n\n\
             [credential.plan]\nchatgpt = \"default\"\nissuer = \"{}\"\n\
             upstream-url = \"http://{}/backend-api/codex/responses\"\n\n\
             [[route]]\nclients = [\"alice\"]\ncredentials = [\"a\"]\n\n\
             [[route]]\nclients = [\"bob\"]\ncredentials = [\"b\"]\n\n\
             [[route]]\nclients = [\"*\"]\ncredentials = [\"plan\"]\n",
            tokens.display(),
            home.display(),
            elsewhere.url(),
            upstream_a.url(),
            upstream_b.url(),
            own.url(),
            backend.addr,
        ),
    )
    .unwrap();
    let keyward = Process::spawn(
        &["--config", file.to_str().unwrap()],
        b"sk-from-stdin\n",
        &[],
    )
    .await;
    assert_eq!(post_as(keyward.addr, &alice).await.status, StatusCode::OK);
    sent_with(&upstream_a, "sk-from-stdin").await;
    assert_eq!(post_as(keyward.addr, &bob).await.status, StatusCode::OK);
    sent_with(&upstream_b, "sk-route-b").await;
    let reply = post_as(keyward.addr, &carol).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(own.refreshes() >= 1, "the login's own issuer refreshed it");
    assert_eq!(elsewhere.refreshes(), 0, "--issuer was not asked");
}
