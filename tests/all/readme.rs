//! The README's "Try it", run as a new user would (with this build's binaries, free ports and a
//! temporary ledger): the stream, the ledger line, the metrics and the client's own usage appear.

use std::time::Duration;

#[tokio::test]
async fn the_readme_s_try_it_works_as_written() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("## Try it")
        .expect("the README has a Try it section");
    let block = &readme[start..];
    let block = &block[block.find("```sh\n").unwrap() + 6..];
    let block = &block[..block.find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string()
    };
    let keyward = env!("CARGO_BIN_EXE_keyward");
    let upstream = std::path::Path::new(keyward)
        .parent()
        .unwrap()
        .join("examples/bench_upstream");
    assert!(upstream.exists(), "cargo test builds the examples");
    let script: String = block
        .lines()
        .filter(|line| !line.starts_with("cargo build"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "target/release/examples/bench_upstream",
            upstream.to_str().unwrap(),
        )
        .replace("target/release/keyward", keyward)
        .replace("/tmp/keyward-usage.jsonl", ledger.to_str().unwrap())
        .replace("9999", &free())
        .replace("8080", &free())
        .replace("9464", &free());
    let output = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!("trap 'kill $(jobs -p) 2>/dev/null' EXIT\n{script}"))
        .env("KEYWARD_HOME", dir.path().join("home"))
        .env_remove("OPENAI_API_KEY")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the Try it commands finished within a minute")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("event: response.completed"),
        "the stream: {stdout}"
    );
    assert!(
        stdout.contains(r#""end":"completed""#),
        "the ledger line: {stdout}"
    );
    assert!(
        stdout.contains("keyward_requests_total{client="),
        "the metrics: {stdout}"
    );
    assert!(
        stdout.contains(r#""today":{"#),
        "the client's own usage: {stdout}"
    );
}
