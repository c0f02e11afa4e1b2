//! End to end with clients nobody here wrote: the OpenAI Python SDK and the Codex CLI, through
//! the keyward binary, against a fake upstream that speaks the Responses API.
//!
//! The clients are installed by `e2e/setup` (the README's test command runs it first).

use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use crate::support::keyward::Process;
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
    let python = tool(".venv/bin/python");
    let upstream = responses_upstream().await;
    let keyward = keyward_for(&upstream, &["--max-body", "64KiB"]).await;

    let output = tokio::process::Command::new(python)
        .arg(tool("sdk_check.py"))
        .arg(format!("http://{}/v1", keyward.addr))
        .arg(TEXT)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codex_cli_works_through_keyward() {
    let codex = tool("node_modules/.bin/codex");
    let upstream = responses_upstream().await;
    let keyward = keyward_for(&upstream, &[]).await;
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let provider = format!(
        r#"model_providers.keyward={{name="keyward",base_url="http://{}/v1",wire_api="responses"}}"#,
        keyward.addr
    );

    let run = tokio::process::Command::new(codex)
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
        .args(["-m", "gpt-5", "Say hello"])
        .current_dir(work.path())
        .env("CODEX_HOME", home.path())
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("codex finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "codex exec failed:\nstdout: {stdout}\nstderr: {stderr}\nkeyward: {}",
        keyward.stderr()
    );
    assert!(
        stdout.contains(TEXT),
        "codex printed the streamed answer: {stdout}\n{stderr}"
    );

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
