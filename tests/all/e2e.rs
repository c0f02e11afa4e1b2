//! End to end with clients nobody here wrote: the OpenAI Python and Node SDKs and the Codex CLI, through
//! the keyward binary, against a fake upstream that speaks the Responses API.
//!
//! The clients are installed by `e2e/setup` (the README's test command runs it first).

use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use crate::support::keyward::{Process, add_client_token};
use crate::support::responses::{TEXT, response_events, response_object};
use crate::support::upstream::{self, FakeUpstream, Seen};

const KEY: &str = "sk-e2e-real-key-5f3a";

fn tool(relative: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("e2e")
        .join(relative);
    assert!(
        path.exists(),
        "{} is missing: run `e2e/setup` first (the README's test command does)",
        path.display()
    );
    path
}

async fn responses_upstream() -> FakeUpstream {
    FakeUpstream::start(|seen: Seen| async move {
        let body: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        if body["stream"] == true {
            let (response, tx) = upstream::stream("text/event-stream");
            tokio::spawn(async move {
                for event in response_events() {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
            response
        } else {
            upstream::json(
                StatusCode::OK,
                &response_object("resp_1", "completed", Some(TEXT)).to_string(),
            )
        }
    })
    .await
}

async fn keyward_for(upstream: &FakeUpstream, extra: &[&str]) -> Process {
    let mut args = vec!["--upstream-url".to_owned(), upstream.url()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Process::spawn(&args, format!("{KEY}\n").as_bytes(), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_through_keyward() {
    let upstream = responses_upstream().await;
    let keyward = keyward_for(&upstream, &["--max-body", "64KiB"]).await;
    sdk_check(
        &upstream,
        &keyward,
        &format!("http://{}/v1", keyward.addr),
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_over_a_unix_socket() {
    let upstream = responses_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("keyward.sock");
    let listen = format!("unix:{}", sock.display());
    let keyward = keyward_for(
        &upstream,
        &[
            "--max-body",
            "64KiB",
            "--listen",
            &listen,
            "--socket-mode",
            "600",
        ],
    )
    .await;
    sdk_check(&upstream, &keyward, "http://localhost/v1", Some(&sock)).await;
}

/// Runs e2e/sdk_check.py against keyward at `base_url` (through `socket` when given) and checks
/// what the SDK saw and what reached the upstream.
async fn sdk_check(
    upstream: &FakeUpstream,
    keyward: &Process,
    base_url: &str,
    socket: Option<&std::path::Path>,
) {
    let python = tool(".venv/bin/python");
    let mut command = tokio::process::Command::new(python);
    command.arg(tool("sdk_check.py")).arg(base_url).arg(TEXT);
    if let Some(socket) = socket {
        command.arg(socket);
    }
    let output = command
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK check failed:\n{stdout}\n{stderr}\nkeyward:\n{}",
        keyward.stderr()
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["plain"], TEXT);
    assert!(seen["stream_events"].as_array().unwrap().len() >= 8);

    let requests = upstream.requests();
    assert_eq!(
        requests.len(),
        2,
        "the oversized request never reached the upstream"
    );
    for request in requests {
        assert_eq!(
            request.headers["authorization"],
            format!("Bearer {KEY}").as_str()
        );
        assert!(
            request.headers["user-agent"]
                .to_str()
                .unwrap()
                .starts_with("OpenAI/Python")
        );
    }
}

/// `codex exec` through keyward, with its home in `home` and working directory `work`:
/// `provider_extra` is added to the provider's table, `args` follow the common flags.
fn codex_command(
    keyward: &Process,
    provider_extra: &str,
    home: &std::path::Path,
    work: &std::path::Path,
    args: &[&str],
) -> tokio::process::Command {
    let provider = format!(
        r#"model_providers.keyward={{name="keyward",base_url="http://{}/v1",wire_api="responses"{provider_extra}}}"#,
        keyward.addr
    );
    let mut command = tokio::process::Command::new(tool("node_modules/.bin/codex"));
    command
        .args([
            "exec",
            "--skip-git-repo-check",
            "--color",
            "never",
            "-c",
            "model_provider=\"keyward\"",
            "-c",
        ])
        .arg(provider)
        .args(["-m", "gpt-5"])
        .args(args)
        .current_dir(work)
        .env("CODEX_HOME", home)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `codex exec "Say hello"` with a provider for keyward; `provider_extra` is added to the
/// provider's table, `env` to codex's environment.
async fn run_codex(
    keyward: &Process,
    provider_extra: &str,
    env: &[(&str, &str)],
) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut command = codex_command(
        keyward,
        provider_extra,
        home.path(),
        work.path(),
        &["Say hello"],
    );
    for (key, value) in env {
        command.env(key, value);
    }
    tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("codex finished")
        .unwrap()
}

/// Asserts `codex exec` succeeded and printed the streamed answer; its stdout and stderr.
fn codex_printed_the_answer(output: &std::process::Output, keyward: &Process) -> (String, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "codex exec failed:\nstdout: {stdout}\nstderr: {stderr}\nkeyward: {}",
        keyward.stderr()
    );
    assert!(
        stdout.contains(TEXT),
        "codex printed the streamed answer: {stdout}\n{stderr}"
    );
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codex_cli_works_through_keyward() {
    let upstream = responses_upstream().await;
    let keyward = keyward_for(&upstream, &[]).await;
    let output = run_codex(&keyward, "", &[]).await;
    codex_printed_the_answer(&output, &keyward);

    let requests = upstream.requests();
    assert!(!requests.is_empty());
    let request = &requests[0];
    assert_eq!(
        request.headers["authorization"],
        format!("Bearer {KEY}").as_str()
    );
    assert_eq!(request.headers["accept"], "text/event-stream");
    for identity in [
        "originator",
        "session-id",
        "thread-id",
        "x-client-request-id",
        "x-codex-window-id",
        "x-codex-turn-metadata",
    ] {
        assert!(
            request.headers.contains_key(identity),
            "{identity} reached the upstream: {:?}",
            request.headers
        );
    }
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["model"], "gpt-5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codex_cli_sends_its_client_token_and_a_wrong_one_is_refused() {
    let upstream = responses_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clients.json");
    let token = add_client_token(&file, "codex").await;
    let me = keyward::secret::hardening::effective_uid().to_string();
    let keyward = keyward_for(
        &upstream,
        &[
            "--client-tokens",
            file.to_str().unwrap(),
            "--allow-user",
            &me,
        ],
    )
    .await;
    // The provider's env_key names the variable holding the token; codex sends it as Bearer.
    let provider = r#",env_key="KEYWARD_TOKEN",request_max_retries=0,stream_max_retries=0"#;

    let output = run_codex(&keyward, provider, &[("KEYWARD_TOKEN", &token)]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(TEXT),
        "codex exec with its token failed:\n{stdout}\n{}\nkeyward: {}",
        String::from_utf8_lossy(&output.stderr),
        keyward.stderr()
    );
    let requests = upstream.requests();
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .all(|r| r.headers["authorization"] == format!("Bearer {KEY}").as_str()),
        "the token was swapped for the key"
    );
    // Logged with the client's name.
    keyward.wait_for_log("client=\"codex\"").await;

    let before = upstream.requests().len();
    let output = run_codex(&keyward, provider, &[("KEYWARD_TOKEN", "kw-wrong")]).await;
    assert!(
        !output.status.success(),
        "codex with a wrong token must fail: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(upstream.requests().len(), before, "nothing was forwarded");
    keyward.wait_for_log("status=401").await;
}

/// `codex exec` then `codex exec resume` through `keyward` over WebSocket: each succeeds and
/// prints the answer without reconnecting; `each` is shown the turn and Codex's stderr.
async fn codex_two_websocket_turns(keyward: &Process, mut each: impl FnMut(usize, &str)) {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let codex = |args: &[&str]| {
        codex_command(
            keyward,
            ",supports_websockets=true",
            home.path(),
            work.path(),
            args,
        )
    };
    let first = codex(&["Say hello"]);
    let second = codex(&["resume", "--last", "Say it again"]);
    for (turn, mut command) in [first, second].into_iter().enumerate() {
        let output = tokio::time::timeout(Duration::from_secs(120), command.output())
            .await
            .expect("codex finished")
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "codex exec (turn {turn}) failed:\nstdout: {stdout}\nstderr: {stderr}\nkeyward: {}",
            keyward.stderr()
        );
        assert!(stdout.contains(TEXT), "{stdout}\n{stderr}");
        assert!(!stderr.contains("Reconnecting"), "{stderr}");
        each(turn, &stderr);
    }
}

/// [`codex_two_websocket_turns`] through keyward (started with `args`, `stdin`) against an
/// upstream that speaks only WebSocket: one socket per process, none fell back to HTTP.
async fn codex_websocket_session(
    upstream: &crate::support::ws::FakeWsUpstream,
    args: &[&str],
    stdin: &[u8],
) {
    let keyward = Process::spawn(args, stdin, &[]).await;
    codex_two_websocket_turns(&keyward, |turn, stderr| {
        assert_eq!(
            upstream.accepted.load(std::sync::atomic::Ordering::SeqCst),
            turn + 1,
            "{stderr}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codex_cli_runs_a_two_turn_session_over_one_websocket_each() {
    let upstream = crate::support::ws::FakeWsUpstream::responding(TEXT).await;
    let url = upstream.url();
    codex_websocket_session(
        &upstream,
        &["--upstream-url", &url],
        format!("{KEY}\n").as_bytes(),
    )
    .await;
    let handshake = &upstream.handshakes()[0];
    assert_eq!(handshake["authorization"], format!("Bearer {KEY}").as_str());
}

/// The real Codex CLI over WebSocket, routed to a plan whose limit is reached after its first
/// answer, with a key behind it: the refused turn goes on with the key's socket (whole, if it
/// continued a response on the plan's), and Codex sees no error in either process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codex_cli_over_websocket_sees_no_error_when_the_plan_is_spent_mid_session() {
    use std::sync::atomic::Ordering;
    let plan = crate::support::ws::FakeWsUpstream::responding_until_spent(TEXT, 1).await;
    let key = crate::support::ws::FakeWsUpstream::responding(TEXT).await;
    let dir = tempfile::tempdir().unwrap();
    let keyward = crate::routes_websocket::plan_then_key(dir.path(), &plan, &key).await;
    codex_two_websocket_turns(&keyward, |_, stderr| {
        assert!(!stderr.contains("usage limit"), "{stderr}");
    })
    .await;
    assert_eq!(
        plan.accepted.load(Ordering::SeqCst),
        1,
        "the plan rests after its limit"
    );
    assert_eq!(
        key.accepted.load(Ordering::SeqCst),
        2,
        "{}",
        keyward.stderr()
    );
    assert!(
        keyward
            .stderr()
            .contains("a WebSocket turn moved to the route's next credential")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codex_cli_runs_a_websocket_session_through_a_chatgpt_sign_in() {
    use crate::support::chatgpt::{FakeIssuer, seed_login};
    let issuer = FakeIssuer::start().await;
    let minted = issuer.mint();
    let tmp = tempfile::tempdir().unwrap();
    seed_login(tmp.path(), &minted);
    let upstream = crate::support::ws::FakeWsUpstream::responding(TEXT).await;
    let url = format!("http://{}/backend-api/codex/responses", upstream.addr);
    let issuer_url = issuer.url();
    codex_websocket_session(
        &upstream,
        &[
            "serve",
            "--auth",
            "chatgpt",
            "--upstream-url",
            &url,
            "--issuer",
            &issuer_url,
            "--home",
            tmp.path().to_str().unwrap(),
        ],
        b"",
    )
    .await;
    let handshake = &upstream.handshakes()[0];
    assert_eq!(
        handshake["authorization"],
        format!("Bearer {}", minted.access_token).as_str()
    );
    assert!(handshake.contains_key("chatgpt-account-id"));
    // The Codex CLI's own version reached the backend, not keyward's default.
    let package: Value =
        serde_json::from_str(&std::fs::read_to_string(tool("package.json")).unwrap()).unwrap();
    let pinned = package["dependencies"]["@openai/codex"].as_str().unwrap();
    assert_eq!(handshake["version"], pinned);
}

/// Runs an SDK script against keyward in front of the fake API, with two client tokens; returns
/// what it printed.
async fn sdk_endpoints(program: &str, script: &str) -> (Value, Vec<Seen>) {
    let upstream = crate::support::api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("clients");
    let alice = add_client_token(&tokens, "alice").await;
    let bob = add_client_token(&tokens, "bob").await;
    let keyward = keyward_for(&upstream, &["--client-tokens", tokens.to_str().unwrap()]).await;
    let base_url = format!("http://{}/v1", keyward.addr);
    let output = tokio::process::Command::new(program)
        .arg(tool(script))
        .args([&base_url, &alice, &bob, TEXT])
        .current_dir(tool(""))
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the SDK script finished within a minute")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}\nkeyward:\n{}",
        keyward.stderr()
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    (seen, upstream.requests())
}

/// What both SDKs must have seen: every method answered, Bob refused all four uses of Alice's
/// response, a background response polled to its end and another cancelled.
fn check_sdk_endpoints(seen: &Value, requests: &[Seen]) {
    assert_eq!(seen["input_items"], serde_json::json!(["message"]));
    assert_eq!(seen["input_tokens"], 11);
    assert_eq!(seen["compacted"], serde_json::json!(["compaction"]));
    assert_eq!(seen["models"], serde_json::json!(["gpt-5"]));
    assert_eq!(seen["model"], "gpt-5");
    assert_eq!(
        seen["bob_refused"],
        serde_json::json!(["retrieve", "input_items", "cancel", "delete"])
    );
    assert_eq!(
        seen["background_polls"],
        serde_json::json!(["queued", "in_progress", "completed"])
    );
    assert_eq!(seen["cancelled"], "cancelled");
    assert_eq!(seen["deleted"], true);
    for request in requests {
        assert_eq!(
            request.headers["authorization"],
            format!("Bearer {KEY}").as_str(),
            "{} {}",
            request.method,
            request.uri
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_responses_method_of_the_python_sdk_works_through_keyward() {
    let (seen, requests) = sdk_endpoints(
        tool(".venv/bin/python").to_str().unwrap(),
        "sdk_endpoints.py",
    )
    .await;
    check_sdk_endpoints(&seen, &requests);
    assert_eq!(
        seen["resumed_events"],
        serde_json::json!(["response.output_text.delta", "response.completed"])
    );
    let resumed = requests
        .iter()
        .find(|r| r.uri.contains("stream=true"))
        .expect("the resumed stream went upstream");
    assert!(resumed.uri.contains("starting_after=1"), "{}", resumed.uri);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_responses_method_of_the_node_sdk_works_through_keyward() {
    let (seen, requests) = sdk_endpoints("node", "sdk_endpoints.mjs").await;
    check_sdk_endpoints(&seen, &requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyward_codex_config_writes_what_the_codex_cli_needs() {
    let upstream = responses_upstream().await;
    let keyward = keyward_for(&upstream, &[]).await;
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // A user's own settings, which must survive.
    std::fs::write(
        home.path().join("config.toml"),
        "# mine\nmodel = \"gpt-5\"\n\n[profiles.fast]\nmodel = \"gpt-5-mini\"\n",
    )
    .unwrap();
    let info = keyward.server_info.to_str().unwrap().to_owned();
    let codex_home = home.path().to_str().unwrap().to_owned();
    let written = crate::support::keyward::command(
        &[
            "codex-config",
            "--server-info",
            &info,
            "--write",
            "--codex-home",
            &codex_home,
        ],
        &[],
    )
    .stdout(std::process::Stdio::piped())
    .output()
    .await
    .unwrap();
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let config = std::fs::read_to_string(home.path().join("config.toml")).unwrap();
    assert!(
        config.contains("# mine") && config.contains("[profiles.fast]"),
        "{config}"
    );

    // The real Codex CLI, with nothing but that file to go by.
    let mut codex = tokio::process::Command::new(tool("node_modules/.bin/codex"));
    codex
        .args(["exec", "--skip-git-repo-check", "--color", "never"])
        .arg("Say hello")
        .current_dir(work.path())
        .env("CODEX_HOME", home.path())
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), codex.output())
        .await
        .expect("codex finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(TEXT),
        "codex exec with the written settings failed:\n{stdout}\n{}\n{config}\nkeyward: {}",
        String::from_utf8_lossy(&output.stderr),
        keyward.stderr()
    );
    let requests = upstream.requests();
    assert!(!requests.is_empty());
    assert_eq!(
        requests[0].headers["authorization"],
        format!("Bearer {KEY}").as_str()
    );
}

/// The real Codex CLI, routed to a ChatGPT plan that is spent (the fake backend answers 429
/// `usage_limit_reached` as the real one does) with an API key behind it: Codex sees no error and
/// prints the answer the key's upstream streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codex_cli_sees_no_error_when_the_plan_is_spent_and_the_key_answers() {
    use crate::support::chatgpt::{FakeIssuer, fake_backend, plan_and_key_args, seed_login};
    let issuer = FakeIssuer::start().await;
    issuer.state.lock().unwrap().plan_spent_for = Some(3600);
    let backend = fake_backend(issuer.state.clone()).await;
    let api = responses_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("openai-key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(
        &key_file,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    let home = dir.path().join("home");
    seed_login(&home, &issuer.mint());
    let key_file = key_file.to_str().unwrap();
    let mut args = plan_and_key_args(
        &home,
        &issuer,
        backend.addr,
        "default",
        key_file,
        &api.url(),
    );
    args.extend(["--route".to_owned(), "*=plan,key".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let keyward = Process::spawn(&args, b"", &[]).await;
    let output = run_codex(&keyward, "", &[]).await;
    let (stdout, stderr) = codex_printed_the_answer(&output, &keyward);
    assert!(
        !stderr.contains("usage limit") && !stdout.contains("usage limit"),
        "{stderr}"
    );
    assert!(!backend.requests().is_empty(), "the plan was tried first");
    let at_api = api.requests();
    assert!(!at_api.is_empty());
    assert_eq!(
        at_api[0].headers["authorization"],
        format!("Bearer {KEY}").as_str()
    );
    assert!(keyward.stderr().contains("the plan's limit is reached"));
}
