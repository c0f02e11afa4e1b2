//! `--dump-dir`: what is written, when, with which modes, and what is never written.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::support::client::{self, next_chunk};
use crate::support::keyward::{TEST_KEY, start_for};
use crate::support::upstream::{self, FakeUpstream, sse_event};
use crate::support::within;

fn dump_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

async fn wait_for_file(dir: &Path, suffix: &str, containing: &str) -> String {
    within("the dump file to be written", async {
        loop {
            for path in dump_files(dir) {
                if path.to_string_lossy().ends_with(suffix) {
                    let text = std::fs::read_to_string(&path).unwrap();
                    if text.contains(containing) {
                        return text;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn exchanges_are_dumped_as_they_stream_with_credentials_redacted_and_private_modes() {
    let (tx, mut streams) = tokio::sync::mpsc::unbounded_channel();
    let upstream = FakeUpstream::start(move |_| {
        let (mut response, stream) = upstream::stream("text/event-stream");
        response
            .headers_mut()
            .insert("set-cookie", "session=upstream-cookie".parse().unwrap());
        let _ = tx.send(stream);
        async move { response }
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dumps");
    let (addr, _keyward) = start_for(&upstream.url(), &["--dump-dir", dir.to_str().unwrap()]).await;

    let req = Request::post("/v1/responses")
        .header("authorization", "Bearer client-token-xyz")
        .header("cookie", "client-cookie-xyz")
        .header("session-id", "sess-1")
        .body(Full::new(Bytes::from(r#"{"input":"café \"quoted\""}"#)))
        .unwrap();
    let mut body = client::send(addr, req).await.into_body();
    let stream = within("the upstream stream", streams.recv()).await.unwrap();
    let first = sse_event("response.created", &json!({"type":"response.created"}));
    stream.send(first.clone()).await.unwrap();
    next_chunk(&mut body).await.unwrap();

    // The response file holds the first event while the stream is still open.
    let partial = wait_for_file(&dir, "-response.json", "response.created").await;
    assert!(!partial.contains("response.completed"));

    let last = sse_event("response.completed", &json!({"type":"response.completed"}));
    stream.send(last.clone()).await.unwrap();
    drop(stream);
    while next_chunk(&mut body).await.is_some() {}
    let response_text = wait_for_file(&dir, "-response.json", "\"end\"").await;
    let request_text = wait_for_file(&dir, "-request.json", "\"end\"").await;

    let request: Value = serde_json::from_str(&request_text).unwrap();
    assert_eq!(request["method"], "POST");
    assert_eq!(request["path"], "/v1/responses");
    assert_eq!(request["body"], r#"{"input":"café \"quoted\""}"#);
    assert_eq!(request["headers"]["authorization"], "[redacted]");
    assert_eq!(request["headers"]["cookie"], "[redacted]");
    assert_eq!(request["headers"]["session-id"], "sess-1");
    assert_eq!(request["end"], "completed");

    let response: Value = serde_json::from_str(&response_text).unwrap();
    assert_eq!(response["status"], 200);
    assert_eq!(response["headers"]["set-cookie"], "[redacted]");
    let expected = format!(
        "{}{}",
        String::from_utf8_lossy(&first),
        String::from_utf8_lossy(&last)
    );
    assert_eq!(response["body"], expected.as_str());
    assert_eq!(response["end"], "completed");
    assert_eq!(response["body_truncated"], false);

    for secret in [
        "client-token-xyz",
        "client-cookie-xyz",
        "upstream-cookie",
        TEST_KEY,
    ] {
        assert!(
            !request_text.contains(secret) && !response_text.contains(secret),
            "{secret} leaked"
        );
    }

    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let files = dump_files(&dir);
    assert_eq!(files.len(), 2);
    for file in files {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("1-"), "{name}");
    }
}

#[tokio::test]
async fn dumped_bodies_stop_at_the_cap_but_the_client_gets_everything() {
    let upstream = FakeUpstream::start(|_| async {
        upstream::json(
            http::StatusCode::OK,
            &format!("{{\"text\":\"{}\"}}", "y".repeat(5000)),
        )
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (addr, _keyward) = start_for(
        &upstream.url(),
        &[
            "--dump-dir",
            dir.to_str().unwrap(),
            "--dump-max-body",
            "100",
        ],
    )
    .await;
    let reply = client::post_responses(addr, &"x".repeat(1000)).await;
    assert_eq!(reply.body.len(), 5000 + 11);

    let response: Value =
        serde_json::from_str(&wait_for_file(&dir, "-response.json", "\"end\"").await).unwrap();
    assert_eq!(response["body"].as_str().unwrap().len(), 100);
    assert_eq!(response["body_truncated"], true);
    assert_eq!(response["body_bytes"], 5011);
    let request: Value =
        serde_json::from_str(&wait_for_file(&dir, "-request.json", "\"end\"").await).unwrap();
    assert_eq!(request["body"].as_str().unwrap(), "x".repeat(100));
    assert_eq!(request["body_truncated"], true);
}

#[tokio::test]
async fn an_existing_dump_dir_is_made_private_and_a_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("open");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let upstream = FakeUpstream::ok_json().await;
    let (_addr, _keyward) =
        start_for(&upstream.url(), &["--dump-dir", dir.to_str().unwrap()]).await;
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let file = tmp.path().join("file");
    std::fs::write(&file, "").unwrap();
    let cli = <keyward::config::args::Cli as clap::Parser>::try_parse_from([
        "keyward",
        "--dump-dir",
        file.to_str().unwrap(),
    ])
    .unwrap();
    let config = keyward::config::Config::from_args(&cli.into_serve().unwrap()).unwrap();
    let err = keyward::proxy::dump::Dumper::new(config.dump.as_ref().unwrap())
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a directory"), "{err}");
}
