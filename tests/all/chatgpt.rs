//! The ChatGPT sign-in: login flows, status, logout, and `serve --auth chatgpt` with refreshes
//! that cannot race.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout};

use crate::support::chatgpt::{
    ACCOUNT, EMAIL, FakeIssuer, completed_response, fake_backend, seed_login,
};
use crate::support::client;
use crate::support::keyward::{Process, command, start};
use crate::support::responses::TEXT;
use crate::support::within;

/// `keyward ARGS` with stdout piped and read line by line.
struct Cli {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    seen: String,
}

impl Cli {
    fn spawn(args: &[&str]) -> Self {
        let mut child = command(args, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            lines,
            seen: String::new(),
        }
    }

    /// Reads stdout until a line contains `needle`; returns that line.
    async fn line_with(&mut self, needle: &str) -> String {
        within("keyward to print it", async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                self.seen.push_str(&line);
                self.seen.push('\n');
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("keyward ended without printing {needle:?}: {}", self.seen);
        })
        .await
    }

    /// Waits for the exit; returns (code, all stdout, stderr).
    async fn finish(mut self) -> (Option<i32>, String, String) {
        while let Ok(Some(line)) = self.lines.next_line().await {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        let output = within("keyward to exit", self.child.wait_with_output())
            .await
            .unwrap();
        (
            output.status.code(),
            self.seen,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

async fn run(args: &[&str]) -> (Option<i32>, String, String) {
    Cli::spawn(args).finish().await
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn query(url: &str) -> std::collections::HashMap<String, String> {
    let query = url.split_once('?').unwrap().1;
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

#[tokio::test]
async fn browser_sign_in_checks_path_and_state_then_stores_the_login_privately() {
    let issuer = FakeIssuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let home_arg = home.to_str().unwrap();
    let issuer_url = issuer.url();
    let mut login = Cli::spawn(&[
        "login",
        "--no-browser",
        "--callback-port",
        "0",
        "--issuer",
        &issuer_url,
        "--home",
        home_arg,
    ]);
    let url = login.line_with("/oauth/authorize?").await.trim().to_owned();
    let params = query(&url);
    assert!(url.starts_with(&format!("{issuer_url}/oauth/authorize?")));
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], keyward::credential::chatgpt::CLIENT_ID);
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["scope"], "openid profile email offline_access");
    assert_eq!(params["codex_cli_simplified_flow"], "true");
    let redirect = params["redirect_uri"].clone();
    assert!(
        redirect.starts_with("http://localhost:") && redirect.ends_with("/auth/callback"),
        "{redirect}"
    );
    let port: u16 = redirect
        .trim_start_matches("http://localhost:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let callback = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    // Another path: not found. A wrong state: refused, and the wait goes on.
    assert_eq!(
        client::get(callback, "/elsewhere").await.status,
        StatusCode::NOT_FOUND
    );
    let code = issuer.approve(&params["code_challenge"]);
    let forged = client::get(
        callback,
        &format!("/auth/callback?code={code}&state=forged"),
    )
    .await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    assert!(forged.text().contains("state"));
    assert!(
        !home.join("login.json").exists(),
        "nothing was exchanged or stored"
    );

    let ok = client::get(
        callback,
        &format!("/auth/callback?code={code}&state={}", params["state"]),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(
        ok.text().contains("Signed in") && ok.text().contains(EMAIL),
        "{}",
        ok.text()
    );

    let (code, stdout, stderr) = login.finish().await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "Signed in as {EMAIL} (account {ACCOUNT}, plan plus)"
        )),
        "{stdout}"
    );
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join("login.json")), 0o600);
    let stored = std::fs::read_to_string(home.join("login.json")).unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    let access = stored["access_token"].as_str().unwrap();
    let refresh = stored["refresh_token"].as_str().unwrap();
    for output in [&stdout, &stderr] {
        assert!(
            !output.contains(access) && !output.contains(refresh),
            "a token was printed"
        );
    }
}

#[tokio::test]
async fn an_error_from_the_issuer_ends_the_sign_in_with_its_message() {
    let issuer = FakeIssuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let issuer_url = issuer.url();
    let mut login = Cli::spawn(&[
        "login",
        "--no-browser",
        "--callback-port",
        "0",
        "--issuer",
        &issuer_url,
        "--home",
        tmp.path().join("h").to_str().unwrap(),
    ]);
    let params = query(login.line_with("/oauth/authorize?").await.trim());
    let redirect = params["redirect_uri"].replace("localhost", "127.0.0.1");
    let addr: std::net::SocketAddr = redirect
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let path = format!(
        "/auth/callback?error=access_denied&error_description=user+said+no&state={}",
        params["state"]
    );
    let page = client::get(addr, &path).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.text().contains("user said no"));
    let (code, _, stderr) = login.finish().await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("access_denied: user said no"), "{stderr}");
}

#[tokio::test]
async fn the_browser_sign_in_gives_up_after_its_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(&[
        "login",
        "--no-browser",
        "--callback-port",
        "0",
        "--timeout",
        "1s",
        "--issuer",
        "http://127.0.0.1:9",
        "--home",
        tmp.path().join("h").to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("no sign-in completed within 1 seconds"),
        "{stderr}"
    );
}

#[tokio::test]
async fn device_code_sign_in_polls_until_approved_and_explains_a_404() {
    let issuer = FakeIssuer::start().await;
    issuer.state.lock().unwrap().device_pending = 2;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("h");
    let home = home.to_str().unwrap();
    let (code, stdout, stderr) = run(&[
        "login",
        "--device-code",
        "--issuer",
        &issuer.url(),
        "--home",
        home,
    ])
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("{}/codex/device", issuer.url())) && stdout.contains("ABCD-1234"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("Signed in as {EMAIL}")));
    let polls = issuer
        .server
        .requests()
        .iter()
        .filter(|r| r.uri.ends_with("/deviceauth/token"))
        .count();
    assert_eq!(polls, 3, "two pending answers, then the grant");
    let exchange = issuer
        .server
        .requests()
        .into_iter()
        .find(|r| r.uri == "/oauth/token")
        .unwrap();
    let form = String::from_utf8_lossy(&exchange.body).into_owned();
    assert!(
        form.contains("redirect_uri=http%3A%2F%2F127.0.0.1"),
        "{form}"
    );
    assert!(form.contains("deviceauth%2Fcallback"), "{form}");

    issuer.state.lock().unwrap().device_disabled = true;
    let other = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(&[
        "login",
        "--device-code",
        "--issuer",
        &issuer.url(),
        "--home",
        other.path().join("h").to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("not enabled") && stderr.contains("ssh -L 1455"),
        "{stderr}"
    );
}

#[tokio::test]
async fn status_and_logout_tell_what_they_see_and_do_without_printing_tokens() {
    let issuer = FakeIssuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("h");
    let home_arg = home.to_str().unwrap();
    let minted = issuer.mint();
    seed_login(&home, &minted);

    let (code, text, _) = run(&["status", "--home", home_arg]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(EMAIL)
            && text.contains(ACCOUNT)
            && text.contains("plus")
            && text.contains("expires"),
        "{text}"
    );
    let (code, json_text, _) = run(&["status", "--home", home_arg, "--json"]).await;
    assert_eq!(code, Some(0));
    let status: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(status["state"], "signed_in");
    assert_eq!(status["account_id"], ACCOUNT);
    assert!(status["expires_in_s"].as_i64().unwrap() > 3500);
    for output in [&text, &json_text] {
        assert!(!output.contains(&minted.access_token) && !output.contains(&minted.refresh_token));
    }

    let (code, out, err) = run(&["logout", "--home", home_arg, "--issuer", &issuer.url()]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("Revoked the refresh token") && out.contains("Deleted the login"),
        "{out}"
    );
    assert_eq!(
        issuer.state.lock().unwrap().revoked,
        vec![minted.refresh_token.clone()]
    );
    assert!(!home.join("login.json").exists());

    let (code, text, _) = run(&["status", "--home", home_arg]).await;
    assert_eq!(code, Some(1));
    assert!(
        text.contains("Not signed in") && text.contains("keyward login"),
        "{text}"
    );
    // Logging out with an unreachable issuer still deletes the login, and says so.
    seed_login(&home, &issuer.mint());
    let (code, out, _) = run(&[
        "logout",
        "--home",
        home_arg,
        "--issuer",
        "http://127.0.0.1:9",
    ])
    .await;
    assert_eq!(code, Some(0));
    assert!(
        out.contains("Could not revoke") && out.contains("Deleted the login"),
        "{out}"
    );
}

#[tokio::test]
async fn unsafe_or_corrupt_stores_are_refused_with_the_fix_and_left_alone() {
    let issuer = FakeIssuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("h");
    let home_arg = home.to_str().unwrap();
    seed_login(&home, &issuer.mint());
    let file = home.join("login.json");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, stderr) = run(&["status", "--home", home_arg]).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("other users can read or write it") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();

    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, _, stderr) = run(&["status", "--home", home_arg]).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("chmod 700"), "{stderr}");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();

    if keyward::secret::hardening::effective_uid() == 0 {
        // Another user's home: refused, even though root could read it.
        std::os::unix::fs::chown(&home, Some(65534), None).unwrap();
        let (code, _, stderr) = run(&["status", "--home", home_arg]).await;
        assert_eq!(code, Some(1));
        assert!(
            stderr.contains("is owned by uid 65534") && stderr.contains("chown 0"),
            "{stderr}"
        );
        std::os::unix::fs::chown(&home, Some(0), None).unwrap();
    }

    std::fs::write(&file, "{\"access_token\": \"tok\", ").unwrap();
    let (code, _, stderr) = run(&["status", "--home", home_arg]).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("corrupt") && stderr.contains(file.to_str().unwrap()),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "{\"access_token\": \"tok\", ",
        "never replaced"
    );
}

#[tokio::test]
async fn a_codex_login_can_be_imported_with_a_warning_about_sharing_it() {
    let issuer = FakeIssuer::start().await;
    let minted = issuer.mint();
    let tmp = tempfile::tempdir().unwrap();
    let codex = tmp.path().join("codex");
    std::fs::create_dir(&codex).unwrap();
    let auth = json!({"auth_mode": "chatgpt", "OPENAI_API_KEY": null, "last_refresh": "2026-05-01T12:00:00Z",
        "tokens": {"id_token": minted.id_token, "access_token": minted.access_token,
                   "refresh_token": minted.refresh_token, "account_id": ACCOUNT}});
    std::fs::write(codex.join("auth.json"), auth.to_string()).unwrap();
    let home = tmp.path().join("h");
    let (code, out, err) = run(&[
        "login",
        "--import-codex",
        codex.to_str().unwrap(),
        "--home",
        home.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("Signed in as {EMAIL}")));
    assert!(
        out.contains("must stop using it") && out.contains("auth.json"),
        "{out}"
    );
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("login.json")).unwrap()).unwrap();
    assert_eq!(stored["refresh_token"], minted.refresh_token.as_str());
}

/// keyward in-process with `--auth chatgpt` against the fakes.
pub(crate) async fn chatgpt_keyward(
    issuer: &FakeIssuer,
    backend: &crate::support::upstream::FakeUpstream,
    home: &Path,
    extra: &[&str],
) -> (std::net::SocketAddr, crate::support::keyward::Started) {
    chatgpt_keyward_at(issuer, backend.addr, home, extra).await
}

/// The same against a backend at `backend` (a WebSocket upstream, say).
pub(crate) async fn chatgpt_keyward_at(
    issuer: &FakeIssuer,
    backend: std::net::SocketAddr,
    home: &Path,
    extra: &[&str],
) -> (std::net::SocketAddr, crate::support::keyward::Started) {
    let upstream = format!("http://{backend}/backend-api/codex/responses");
    let issuer_url = issuer.url();
    let mut args = vec![
        "--auth",
        "chatgpt",
        "--upstream-url",
        &upstream,
        "--issuer",
        &issuer_url,
        "--home",
        home.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    start(&args).await
}

#[tokio::test]
async fn a_non_streaming_client_gets_the_assembled_response_and_the_backend_gets_its_rules() {
    let issuer = FakeIssuer::start().await;
    let backend = fake_backend(issuer.state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let minted = issuer.mint();
    seed_login(tmp.path(), &minted);
    let (addr, _keyward) = chatgpt_keyward(&issuer, &backend, tmp.path(), &[]).await;

    let req = Request::post("/v1/responses")
        .header("authorization", "Bearer sk-client-placeholder")
        .header("chatgpt-account-id", "acct_spoofed")
        .header("cookie", "session=client")
        .header("session-id", "s-1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"model": "gpt-5", "input": "hi", "max_output_tokens": 100, "store": true})
                .to_string(),
        )))
        .unwrap();
    let reply = client::read(client::send(addr, req).await).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.json(), completed_response());
    assert_eq!(reply.json()["output"][0]["content"][0]["text"], TEXT);

    let seen = backend.next_request().await;
    let h = &seen.headers;
    assert_eq!(seen.uri, "/backend-api/codex/responses");
    assert_eq!(
        h["authorization"],
        format!("Bearer {}", minted.access_token).as_str()
    );
    assert_eq!(h["chatgpt-account-id"], ACCOUNT);
    assert_eq!(h["originator"], "codex_cli_rs");
    assert_eq!(h["version"], keyward::config::command_args::CODEX_VERSION);
    assert!(
        h["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("codex_cli_rs/")
    );
    assert_eq!(h["accept"], "text/event-stream");
    assert_eq!(h["session-id"], "s-1");
    assert!(!h.contains_key("cookie") && !h.contains_key("x-openai-fedramp"));
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["store"], false);
    assert_eq!(body["instructions"], "You are a helpful assistant.");
    assert!(body.get("max_output_tokens").is_none());
    assert_eq!(body["input"], "hi");

    // A streaming client gets the events, labelled as a stream even though the backend did not.
    let stream = client::read(client::send(addr, Request::post("/v1/responses")
        .body(Full::new(Bytes::from(json!({"model": "gpt-5", "input": "hi", "stream": true, "instructions": "Be brief."}).to_string())))
        .unwrap()).await).await;
    assert_eq!(stream.status, StatusCode::OK);
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    assert!(
        stream.text().starts_with("event: response.created")
            && stream.text().contains("event: response.completed")
    );
    let body: Value = serde_json::from_slice(&backend.next_request().await.body).unwrap();
    assert_eq!(body["instructions"], "Be brief.");

    // Not JSON: a 400, nothing sent.
    let bad = client::post_responses(addr, "{not json").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"]["code"], "invalid_json");
    assert_eq!(backend.requests().len(), 2);
}

#[tokio::test]
async fn one_backend_connection_carries_streamed_and_assembled_answers_in_turn() {
    let issuer = FakeIssuer::start().await;
    let backend = fake_backend(issuer.state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    seed_login(tmp.path(), &issuer.mint());
    let (addr, _keyward) = chatgpt_keyward(&issuer, &backend, tmp.path(), &[]).await;

    // One keep-alive client connection, so one keyward worker serves every request.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..10 {
        let wants_stream = i % 2 == 0;
        let req = Request::post("/v1/responses")
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                json!({"model": "gpt-5", "input": "hi", "stream": wants_stream}).to_string(),
            )))
            .unwrap();
        let reply = client::read(
            crate::support::within("a response head", sender.send_request(req))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        if wants_stream {
            assert!(
                reply.text().contains("event: response.completed"),
                "{}",
                reply.text()
            );
        } else {
            assert_eq!(reply.json(), completed_response());
        }
    }
    assert_eq!(backend.requests().len(), 10);
    // Normally 1. The end of an assembled answer's stream is read after the answer has gone, so
    // a request that comes in before it may take a second connection; one that is never given
    // back would make 5 or more.
    assert!(
        backend.connections() <= 3,
        "each answer gave its backend connection back for the next request: {} connections",
        backend.connections()
    );
}

#[tokio::test]
async fn concurrent_requests_at_expiry_share_one_refresh() {
    // The token manager itself: 50 callers find the access token expired at once.
    let issuer = FakeIssuer::start().await;
    let minted = issuer.mint_expired();
    issuer.state.lock().unwrap().refresh_delay = Duration::from_millis(200);
    let tmp = tempfile::tempdir().unwrap();
    seed_login(tmp.path(), &minted);
    let home = keyward::credential::chatgpt::home::Home::open(tmp.path()).unwrap();
    let store =
        keyward::credential::chatgpt::store::open(keyward::config::values::StoreKind::File, &home)
            .unwrap();
    let settings = keyward::upstream::ClientSettings {
        connect_timeout: Duration::from_secs(5),
        proxy: None,
        extra_ca: None,
    };
    let issuer_client =
        keyward::credential::chatgpt::issuer::Issuer::new(&issuer.url(), &settings).unwrap();
    let tokens = Arc::new(keyward::credential::chatgpt::tokens::TokenManager::new(
        store,
        Some(keyward::credential::chatgpt::refresh_lock::RefreshLock::Home(home)),
        issuer_client,
        Duration::from_secs(300),
    ));

    let callers: Vec<_> = (0..50)
        .map(|_| {
            let t = tokens.clone();
            tokio::spawn(async move { t.session().await })
        })
        .collect();
    let mut fingerprints = std::collections::HashSet::new();
    for caller in callers {
        fingerprints.insert(caller.await.unwrap().unwrap().fingerprint.clone());
    }
    assert_eq!(
        issuer.refreshes(),
        1,
        "exactly one refresh for fifty callers"
    );
    assert_eq!(fingerprints.len(), 1, "everyone got the refreshed token");
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("login.json")).unwrap())
            .unwrap();
    assert_ne!(
        stored["refresh_token"],
        minted.refresh_token.as_str(),
        "the rotated refresh token was saved"
    );
}

#[tokio::test]
async fn a_storm_of_401s_is_recovered_with_one_refresh_and_one_retry_each() {
    let issuer = FakeIssuer::start().await;
    issuer.state.lock().unwrap().refresh_delay = Duration::from_millis(200);
    let backend = fake_backend(issuer.state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let minted = issuer.mint();
    seed_login(tmp.path(), &minted);
    let (addr, _keyward) = chatgpt_keyward(&issuer, &backend, tmp.path(), &[]).await;
    // The access token is revoked upstream while keyward still holds it.
    issuer.revoke_access(&minted.access_token);

    let requests: Vec<_> = (0..30)
        .map(|_| {
            tokio::spawn(async move {
                client::post_responses(addr, r#"{"model":"gpt-5","input":"hi"}"#).await
            })
        })
        .collect();
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(issuer.refreshes(), 1);
    assert_eq!(issuer.reuses(), 0);
    // Each request was tried at most twice: once with the old token, once with the new.
    assert!(backend.requests().len() <= 60);
}

#[tokio::test]
async fn two_keyward_processes_on_one_home_never_use_a_refresh_token_twice() {
    let issuer = FakeIssuer::start().await;
    issuer.state.lock().unwrap().refresh_delay = Duration::from_millis(300);
    let backend = fake_backend(issuer.state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let minted = issuer.mint();
    seed_login(tmp.path(), &minted);
    let upstream = format!("http://{}/backend-api/codex/responses", backend.addr);
    let issuer_url = issuer.url();
    let args = [
        "serve",
        "--auth",
        "chatgpt",
        "--upstream-url",
        &upstream,
        "--issuer",
        &issuer_url,
        "--home",
        tmp.path().to_str().unwrap(),
    ];
    let first = Process::spawn(&args, b"", &[]).await;
    let second = Process::spawn(&args, b"", &[]).await;
    issuer.revoke_access(&minted.access_token);

    let mut requests = Vec::new();
    for i in 0..20 {
        let addr = if i % 2 == 0 { first.addr } else { second.addr };
        requests.push(tokio::spawn(async move {
            client::post_responses(addr, r#"{"model":"gpt-5","input":"hi"}"#).await
        }));
    }
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(issuer.reuses(), 0, "no refresh token was used twice");
    assert_eq!(
        issuer.refreshes(),
        1,
        "the second process adopted the first one's refresh"
    );
}

#[tokio::test]
async fn a_login_refused_for_good_gets_503_and_status_says_sign_in_again() {
    let issuer = FakeIssuer::start().await;
    let minted = issuer.mint_expired();
    issuer.state.lock().unwrap().fail_refresh_with = Some("refresh_token_invalidated".into());
    let backend = fake_backend(issuer.state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    seed_login(tmp.path(), &minted);
    let (addr, _keyward) = chatgpt_keyward(&issuer, &backend, tmp.path(), &[]).await;

    for _ in 0..5 {
        let reply = client::post_responses(addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        let error = &reply.json()["error"];
        assert_eq!(error["code"], "chatgpt_login_expired");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("sign in again with `keyward login`"),
            "{error}"
        );
    }
    assert_eq!(issuer.refreshes(), 1, "a dead login is not retried");
    assert!(backend.requests().is_empty());

    let (code, text, _) = run(&["status", "--home", tmp.path().to_str().unwrap()]).await;
    assert_eq!(code, Some(1));
    assert!(
        text.contains("has ended")
            && text.contains("refresh_token_invalidated")
            && text.contains("Sign in again"),
        "{text}"
    );

    // A new login is picked up without restarting keyward.
    issuer.state.lock().unwrap().fail_refresh_with = None;
    issuer.state.lock().unwrap().access_ttl = 3600;
    seed_login(tmp.path(), &issuer.mint());
    within("the new login to be used", async {
        loop {
            if client::post_responses(addr, r#"{"model":"gpt-5","input":"hi"}"#)
                .await
                .status
                == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn not_signed_in_is_a_503_that_says_how_to_sign_in() {
    let issuer = FakeIssuer::start().await;
    let backend = fake_backend(issuer.state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let (addr, _keyward) = chatgpt_keyward(&issuer, &backend, &tmp.path().join("h"), &[]).await;
    let reply = client::post_responses(addr, "{}").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["error"]["code"], "chatgpt_not_signed_in");
    assert!(reply.text().contains("keyward login"));
}

#[tokio::test]
async fn the_background_refresher_keeps_an_idle_login_fresh() {
    let issuer = FakeIssuer::start().await;
    issuer.state.lock().unwrap().access_ttl = 3;
    let minted = issuer.mint();
    let backend = fake_backend(issuer.state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    seed_login(tmp.path(), &minted);
    // With a 2 s margin, a 3 s token is due for refresh about a second after start.
    let (_addr, _keyward) =
        chatgpt_keyward(&issuer, &backend, tmp.path(), &["--refresh-margin", "2s"]).await;
    within("a refresh with no request", async {
        while issuer.refreshes() == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(issuer.reuses(), 0);
}

#[tokio::test]
async fn tokens_never_reach_logs_status_or_dumps() {
    let issuer = FakeIssuer::start().await;
    let minted = issuer.mint_expired();
    let backend = fake_backend(issuer.state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("h");
    seed_login(&home, &minted);
    let dumps = tmp.path().join("dumps");
    let upstream = format!("http://{}/backend-api/codex/responses", backend.addr);
    let issuer_url = issuer.url();
    let mut keyward = Process::spawn(
        &[
            "serve",
            "--auth",
            "chatgpt",
            "--upstream-url",
            &upstream,
            "--issuer",
            &issuer_url,
            "--home",
            home.to_str().unwrap(),
            "--dump-dir",
            dumps.to_str().unwrap(),
            "--http-shutdown",
        ],
        b"",
        &[("RUST_LOG", "trace")],
    )
    .await;
    let reply = client::post_responses(keyward.addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut replies = String::new();
    // The other endpoints the backend serves, and one it does not.
    for (method, path) in [
        ("GET", "/v1/models"),
        ("POST", "/v1/responses/compact"),
        ("GET", "/v1/responses/resp_1"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::from_static(
                br#"{"model":"gpt-5","input":"hi"}"#,
            )))
            .unwrap();
        let reply = client::read(client::send(keyward.addr, req).await).await;
        replies.push_str(&format!("{:?} {}\n", reply.headers, reply.text()));
    }
    client::get(keyward.addr, "/shutdown").await;
    assert_eq!(keyward.exit_code().await, Some(0));

    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("login.json")).unwrap()).unwrap();
    let secrets = [
        minted.access_token.clone(),
        minted.refresh_token.clone(),
        stored["access_token"].as_str().unwrap().to_owned(),
        stored["refresh_token"].as_str().unwrap().to_owned(),
    ];
    let (_, status_text, _) = run(&["status", "--home", home.to_str().unwrap()]).await;
    let (_, status_json, _) = run(&["status", "--home", home.to_str().unwrap(), "--json"]).await;
    let mut places = vec![
        ("stderr".to_owned(), keyward.stderr()),
        ("the replies".into(), replies),
        ("status".into(), status_text),
        ("status --json".into(), status_json),
    ];
    for (path, contents) in crate::support::keyward::files_under(&dumps) {
        places.push((
            path.display().to_string(),
            String::from_utf8_lossy(&contents).into_owned(),
        ));
    }
    assert!(places.len() >= 5, "dumps were written");
    let line = keyward
        .stderr()
        .lines()
        .find(|l| l.contains(" request ") || l.contains("request method"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("status=200") && line.contains("upstream_status=200"),
        "{line}"
    );
    assert!(
        !line.contains("bytes_out=0 "),
        "the assembled answer's size is logged: {line}"
    );
    assert!(
        keyward
            .stderr()
            .contains("refreshed the ChatGPT access token")
    );
    for (place, text) in &places {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a token leaked into {place}"
            );
        }
    }
}

#[tokio::test]
async fn fedramp_accounts_get_the_fedramp_header() {
    let issuer = FakeIssuer::start().await;
    issuer.state.lock().unwrap().fedramp = true;
    let backend = fake_backend(issuer.state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    seed_login(tmp.path(), &issuer.mint());
    let (addr, _keyward) = chatgpt_keyward(&issuer, &backend, tmp.path(), &[]).await;
    assert_eq!(
        client::post_responses(addr, r#"{"input":"hi"}"#)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        backend.next_request().await.headers["x-openai-fedramp"],
        "true"
    );
}

#[tokio::test]
async fn metrics_readiness_and_the_default_ledger_cover_the_chatgpt_login() {
    let issuer = FakeIssuer::start().await;
    // The stored access token has expired: the first request refreshes it.
    let minted = issuer.mint_expired();
    let backend = fake_backend(issuer.state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    seed_login(tmp.path(), &minted);
    let (addr, keyward) = chatgpt_keyward(
        &issuer,
        &backend,
        tmp.path(),
        &["--metrics-listen", "127.0.0.1:0"],
    )
    .await;
    let reply = client::post_responses(addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let ready = client::get(addr, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["credential"], "chatgpt");

    // The ledger is kept in the home by default; its line has the assembled answer's usage.
    let ledger = tmp.path().join("usage.jsonl");
    let line: Value = within("the ledger line", async {
        loop {
            if let Some(line) = std::fs::read_to_string(&ledger)
                .ok()
                .and_then(|t| t.lines().next().map(str::to_owned))
            {
                return serde_json::from_str(&line).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(line["input_tokens"], 12);
    assert_eq!(line["output_tokens"], 7);
    assert_eq!(line["model"], "gpt-5");

    let text = client::get(keyward.metrics.unwrap(), "/metrics")
        .await
        .text();
    let value = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    assert_eq!(
        value("keyward_chatgpt_refreshes_total{credential=\"chatgpt\",result=\"success\"}"),
        1.0
    );
    let expires_in =
        value("keyward_chatgpt_access_token_expires_in_seconds{credential=\"chatgpt\"}");
    assert!((3000.0..=3600.0).contains(&expires_in), "{expires_in}");
    assert!(
        !text.contains(&minted.access_token) && !text.contains(&minted.refresh_token),
        "no token in the metrics"
    );
}

#[tokio::test]
async fn the_browser_opener_inherits_neither_ld_variables_nor_a_key() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let seen = tmp.path().join("opener-env");
    let opener = bin.join("xdg-open");
    std::fs::write(
        &opener,
        format!(
            "#!/bin/sh\nenv > {}.tmp && mv {0}.tmp {0}\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&opener, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let home = tmp.path().join("h");
    let child = command(
        &[
            "login",
            "--callback-port",
            "0",
            "--timeout",
            "1s",
            "--issuer",
            "http://127.0.0.1:9",
            "--home",
            home.to_str().unwrap(),
        ],
        &[
            ("PATH", &path),
            ("LD_KEYWARD_TEST", "1"),
            ("OPENAI_API_KEY", "sk-env-canary-for-the-opener"),
            ("KEYWARD_TEST_MARK", "passed-on"),
        ],
    )
    .stdin(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .unwrap();
    let _ = within("keyward login to give up", child.wait_with_output()).await;
    let env = within("the opener to run", async {
        loop {
            if let Ok(env) = std::fs::read_to_string(&seen) {
                return env;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(env.contains("KEYWARD_TEST_MARK=passed-on"), "{env}");
    assert!(!env.contains("LD_KEYWARD_TEST"), "{env}");
    assert!(!env.contains("OPENAI_API_KEY"), "{env}");
}

#[tokio::test]
async fn a_websocket_refused_with_401_refreshes_the_login_once_and_gets_the_backend_rules() {
    use crate::support::ws::{Answer, FakeWsUpstream, connect, create, next_text, send_text};
    let issuer = FakeIssuer::start().await;
    let mut backend = FakeWsUpstream::answering(vec![Answer::Refuse(
        StatusCode::UNAUTHORIZED,
        r#"{"error":{"message":"token revoked"}}"#,
    )])
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let minted = issuer.mint();
    seed_login(tmp.path(), &minted);
    let upstream = format!("http://{}/backend-api/codex/responses", backend.addr);
    let issuer_url = issuer.url();
    let (addr, _keyward) = start(&[
        "--auth",
        "chatgpt",
        "--upstream-url",
        &upstream,
        "--issuer",
        &issuer_url,
        "--home",
        tmp.path().to_str().unwrap(),
    ])
    .await;
    let (mut client, _) = connect(
        addr,
        &[("originator", "codex_exec"), ("version", "0.171.0")],
    )
    .await
    .unwrap();
    let mut socket = backend.next_socket().await;
    assert_eq!(issuer.refreshes(), 1);
    let handshakes = backend.handshakes();
    assert_eq!(handshakes.len(), 2, "refused once, then accepted");
    let bearer = |h: &http::HeaderMap| h["authorization"].to_str().unwrap().to_owned();
    assert_eq!(
        bearer(&handshakes[0]),
        format!("Bearer {}", minted.access_token)
    );
    assert_ne!(bearer(&handshakes[1]), bearer(&handshakes[0]));
    assert_eq!(handshakes[1]["chatgpt-account-id"], ACCOUNT);
    // A Codex CLI's own version passes on, not keyward's default.
    assert_eq!(handshakes[1]["originator"], "codex_exec");
    assert_eq!(handshakes[1]["version"], "0.171.0");

    send_text(&mut client, &create("hi", None)).await;
    let sent: Value = serde_json::from_str(&next_text(&mut socket).await).unwrap();
    assert_eq!(sent["store"], false);
    assert!(sent["instructions"].as_str().is_some_and(|i| !i.is_empty()));
    send_text(
        &mut socket,
        r#"{"type":"response.created","response":{"id":"r"}}"#,
    )
    .await;
    assert!(next_text(&mut client).await.contains("response.created"));
    // The plan's usage, as the backend reports it on a socket, passes on and is read.
    let limits = r#"{"type":"codex.rate_limits","rate_limits":{"primary":{"used_percent":12.5,"window_minutes":300}}}"#;
    send_text(&mut socket, limits).await;
    assert_eq!(next_text(&mut client).await, limits);
    let ready = client::get(addr, "/readyz").await.json();
    assert_eq!(
        ready["plan_usage"]["primary"]["used_percent"], 12.5,
        "{ready}"
    );
}

#[tokio::test]
async fn a_codex_clis_own_version_reaches_the_backend() {
    let issuer = FakeIssuer::start().await;
    let backend = fake_backend(issuer.state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    seed_login(tmp.path(), &issuer.mint());
    let (addr, _keyward) = chatgpt_keyward(&issuer, &backend, tmp.path(), &[]).await;
    let req = Request::post("/v1/responses")
        .header("originator", "codex_exec")
        .header("version", "0.172.0")
        .header("user-agent", "codex_exec/0.172.0 (Debian 12; x86_64)")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"model": "gpt-5", "input": "hi", "stream": true}).to_string(),
        )))
        .unwrap();
    let reply = client::read(client::send(addr, req).await).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = backend.next_request().await;
    assert_eq!(seen.headers["originator"], "codex_exec");
    assert_eq!(seen.headers["version"], "0.172.0");
    assert_eq!(
        seen.headers["user-agent"],
        "codex_exec/0.172.0 (Debian 12; x86_64)"
    );
}

#[tokio::test]
async fn the_plans_usage_shows_in_readyz_metrics_and_status_and_reaches_the_client() {
    let issuer = FakeIssuer::start().await;
    let backend = fake_backend(issuer.state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    seed_login(tmp.path(), &issuer.mint());
    let upstream = format!("http://{}/backend-api/codex/responses", backend.addr);
    let issuer_url = issuer.url();
    let home = tmp.path().to_str().unwrap();
    let keyward = Process::spawn(
        &[
            "serve",
            "--auth",
            "chatgpt",
            "--upstream-url",
            &upstream,
            "--issuer",
            &issuer_url,
            "--home",
            home,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        b"",
        &[],
    )
    .await;
    let reply = client::post_responses(
        keyward.addr,
        r#"{"model":"gpt-5","input":"hi","stream":true}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    // The client gets the headers as they came.
    assert_eq!(reply.headers["x-codex-primary-used-percent"], "42.5");

    let ready = client::get(keyward.addr, "/readyz").await.json();
    assert_eq!(
        ready["plan_usage"]["primary"]["used_percent"], 42.5,
        "{ready}"
    );
    assert_eq!(ready["plan_usage"]["primary"]["window_minutes"], 300);
    assert_eq!(ready["plan_usage"]["secondary"]["used_percent"], 7.0);

    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(&keyward.server_info).unwrap()).unwrap();
    let metrics: std::net::SocketAddr = info["metrics"].as_str().unwrap().parse().unwrap();
    let text = client::get(metrics, "/metrics").await.text();
    assert!(
        text.contains(
            r#"keyward_chatgpt_limit_used_percent{credential="chatgpt",window="primary"} 42.5"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"keyward_chatgpt_limit_resets_at_seconds{credential="chatgpt",window="primary"} 1795000000"#),
        "{text}"
    );
    // The usage views show the windows: the operator's page and each client's own usage.
    let page = client::get_json(metrics, "/usage").await.json();
    assert_eq!(page["plan"][0]["window"], "primary", "{page}");
    assert_eq!(page["plan"][0]["used_percent"], 42.5);
    assert_eq!(page["plan"][0]["window_minutes"], 300);
    assert_eq!(page["plan"][0]["resets_at"], "2026-11-18T11:06:40.000Z");
    assert_eq!(page["plan"][1]["used_percent"], 7.0);
    let html = client::get(metrics, "/usage").await.text();
    assert!(
        html.contains("primary (5 hours)") && html.contains(">42.5%<"),
        "{html}"
    );
    let own = client::get(keyward.addr, "/keyward/usage").await.json();
    assert_eq!(own["plan"][0]["used_percent"], 42.5, "{own}");

    // `keyward status`, another process, shows what serve last heard.
    let out = within("the plan usage file", async {
        loop {
            let (_, out, _) = run(&["status", "--home", home]).await;
            if out.contains("plan usage:    primary") {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        out.contains("primary 42.5% used of a 5h 0 min window"),
        "{out}"
    );
    assert!(out.contains("secondary 7.0% used"), "{out}");
    let (_, json_out, _) = run(&["status", "--home", home, "--json"]).await;
    let status: Value = serde_json::from_str(json_out.trim()).unwrap();
    assert_eq!(status["plan_usage"]["primary"]["used_percent"], 42.5);
}
