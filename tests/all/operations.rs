//! What an administrator sees and caps: health, Prometheus metrics (scraped and parsed), the
//! usage ledger and `keyward usage`, and quotas (429 with Retry-After, counts that survive a
//! restart).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::support::client::{self, next_chunk};
use crate::support::keyward::{Process, TEST_KEY, start_for};
use crate::support::responses::{response_events, response_object};
use crate::support::upstream::{self, FakeUpstream, Seen, sse_event};
use crate::support::{me, within};

/// An upstream that answers by the request's `kind`: `sse` (a whole stream with usage 12 in / 7
/// out), `json` (the same as one object), `cut` (a stream that ends before response.completed),
/// `fail` (500), `slow` (one event, then nothing until the client leaves).
async fn responses_upstream() -> FakeUpstream {
    FakeUpstream::start(|seen: Seen| async move {
        let body: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        match body["kind"].as_str().unwrap_or("json") {
            kind @ ("sse" | "cut" | "slow") => {
                let (response, tx) = upstream::stream("text/event-stream");
                let kind = kind.to_owned();
                tokio::spawn(async move {
                    let events = response_events();
                    let take = match kind.as_str() {
                        "sse" => events.len(),
                        "cut" => 3,
                        _ => 1,
                    };
                    for event in events.into_iter().take(take) {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                    if kind == "slow" {
                        tx.closed().await;
                    }
                });
                response
            }
            "fail" => upstream::json(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"error":{"message":"boom","type":"server_error"}}"#,
            ),
            _ => upstream::json(
                StatusCode::OK,
                &response_object("resp_1", "completed", Some("hi")).to_string(),
            ),
        }
    })
    .await
}

fn body(kind: &str) -> String {
    json!({ "model": "gpt-5", "input": "hi", "kind": kind }).to_string()
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let reply = client::get(addr, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.text()
}

/// The value of the sample `name{labels...}` in a scrape (0 when absent).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.split(['{', ' ']).next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Waits until the metrics show `want` for the sample.
async fn wait_metric(addr: std::net::SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if metric(&scrape(addr).await, name, labels) == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if waited.is_err() {
        panic!(
            "{name}{labels:?} never reached {want}:\n{}",
            scrape(addr).await
        );
    }
}

#[tokio::test]
async fn metrics_count_requests_tokens_bytes_and_how_streams_ended() {
    let upstream = responses_upstream().await;
    let (addr, keyward) = start_for(&upstream.url(), &["--metrics-listen", "127.0.0.1:0"]).await;
    let metrics = keyward.metrics.unwrap();

    let mut sent = 0;
    for kind in ["sse", "json", "cut", "fail"] {
        let body = body(kind);
        sent += body.len();
        client::post_responses(addr, &body).await;
    }
    // Not a forwarded request: not counted.
    client::get(addr, "/nowhere").await;

    let root = ("client", me());
    wait_metric(
        metrics,
        "keyward_requests_total",
        &[root, ("status", "200"), ("upstream_status", "200")],
        3.0,
    )
    .await;
    wait_metric(
        metrics,
        "keyward_requests_total",
        &[root, ("status", "500")],
        1.0,
    )
    .await;
    let text = scrape(metrics).await;
    let tokens = |kind| {
        metric(
            &text,
            "keyward_tokens_total",
            &[
                root,
                ("credential", "api-key"),
                ("model", "gpt-5"),
                ("kind", kind),
            ],
        )
    };
    // sse and json carry usage (12 in, 7 out); the failure carries none; the cut stream (the
    // upstream's 200, no usage) is charged an estimate: its body at 4 bytes a token, no text.
    let cut_estimate = body("cut").len().div_ceil(4) as f64;
    assert_eq!(tokens("input"), 24.0 + cut_estimate, "{text}");
    assert_eq!(tokens("output"), 14.0);
    assert_eq!(tokens("cached_input"), 0.0);
    let ended = |cause| metric(&text, "keyward_streams_ended_total", &[("cause", cause)]);
    assert_eq!(ended("completed"), 3.0, "{text}");
    assert_eq!(ended("no_completed_event"), 1.0, "{text}");
    assert_eq!(metric(&text, "keyward_active_streams", &[]), 0.0);
    assert_eq!(
        metric(&text, "keyward_bytes_total", &[("direction", "in")]),
        sent as f64
    );
    assert!(metric(&text, "keyward_bytes_total", &[("direction", "out")]) > 1000.0);
    for histogram in [
        "keyward_overhead_seconds_count",
        "keyward_upstream_first_byte_seconds_count",
        "keyward_request_duration_seconds_count",
    ] {
        assert_eq!(metric(&text, histogram, &[]), 4.0, "{histogram}");
    }
    assert!(!text.contains(TEST_KEY), "no secret in the metrics");
}

#[tokio::test]
async fn a_stream_being_relayed_is_an_active_stream() {
    let upstream = responses_upstream().await;
    let (addr, keyward) = start_for(&upstream.url(), &["--metrics-listen", "127.0.0.1:0"]).await;
    let metrics = keyward.metrics.unwrap();
    let req = Request::post("/v1/responses")
        .body(Full::new(Bytes::from(body("slow"))))
        .unwrap();
    let mut stream = client::send(addr, req).await.into_body();
    next_chunk(&mut stream).await;
    wait_metric(metrics, "keyward_active_streams", &[], 1.0).await;
    drop(stream);
    wait_metric(metrics, "keyward_active_streams", &[], 0.0).await;
    wait_metric(
        metrics,
        "keyward_streams_ended_total",
        &[("cause", "client_gone")],
        1.0,
    )
    .await;
}

fn ledger_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn wait_lines(path: &Path, n: usize) -> Vec<Value> {
    within("ledger lines", async {
        loop {
            let lines = ledger_lines(path);
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn the_ledger_has_a_line_per_request_and_keyward_usage_sums_it() {
    use std::os::unix::fs::PermissionsExt;
    let upstream = responses_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let (addr, _keyward) =
        start_for(&upstream.url(), &["--usage-log", ledger.to_str().unwrap()]).await;

    client::post_responses(addr, &body("sse")).await;
    client::post_responses(addr, &body("fail")).await;
    let req = Request::post("/v1/responses")
        .body(Full::new(Bytes::from(body("slow"))))
        .unwrap();
    let mut stream = client::send(addr, req).await.into_body();
    next_chunk(&mut stream).await;
    drop(stream);

    let lines = wait_lines(&ledger, 3).await;
    assert_eq!(
        std::fs::metadata(&ledger).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (ok, failed, gone) = (&lines[0], &lines[1], &lines[2]);
    for line in &lines {
        assert_eq!(line["client"], me());
        assert_eq!(line["credential"], "api-key");
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
        assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(ok["model"], "gpt-5");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["end"], "completed");
    assert_eq!(ok["input_tokens"], 12);
    assert_eq!(ok["output_tokens"], 7);
    assert!(ok["ttfb_ms"].as_f64().is_some());
    assert_eq!(failed["status"], 500);
    assert_eq!(failed["output_tokens"], 0);
    assert_eq!(gone["end"], "client_gone");
    // The upstream had answered 200 and started: an estimate, from the body (no text yet).
    assert_eq!(gone["estimated"], true);
    let gone_input = body("slow").len().div_ceil(4);
    assert_eq!(gone["input_tokens"], gone_input);
    assert_eq!(gone["output_tokens"], 0);
    assert!(ok.get("estimated").is_none());

    // A write cut short by a crash: skipped with a warning, the rest still read.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&ledger)
        .unwrap()
        .write_all(b"{\"time\":\"2026-11-")
        .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["usage", "--json", "--since", "1h", "--usage-log"])
        .arg(&ledger)
        .output()
        .unwrap();
    assert!(output.status.success());
    let rows: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        rows,
        json!([{
            "key": me(), "requests": 3, "errors": 2, "input_tokens": 12 + gone_input,
            "cached_input_tokens": 0, "output_tokens": 7, "reasoning_tokens": 0
        }])
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("incomplete"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["usage", "--json", "--by", "credential", "--usage-log"])
        .arg(&ledger)
        .output()
        .unwrap();
    let rows: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows[0]["key"], "api-key", "{rows}");
    assert_eq!(rows[0]["requests"], 3, "{rows}");

    let table = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["usage", "--by", "model", "--usage-log"])
        .arg(&ledger)
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("MODEL"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("gpt-5") && l.contains(&format!(" {} ", 12 + gone_input))),
        "{table}"
    );
}

use std::io::Write;

fn retry_after(reply: &client::Reply) -> u64 {
    reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn over_the_concurrent_quota_a_request_gets_429_and_the_running_stream_goes_on() {
    let (upstream, mut streams) = FakeUpstream::driven().await;
    let quota = format!("{}:concurrent=1", me());
    let (addr, _keyward) = start_for(&upstream.url(), &["--quota", &quota]).await;
    let req = Request::post("/v1/responses")
        .body(Full::new(Bytes::from(body("sse"))))
        .unwrap();
    let mut first = client::send(addr, req).await.into_body();
    let events = response_events();
    let tx = within("the first stream", streams.recv()).await.unwrap();
    tx.send(events[0].clone()).await.unwrap();
    next_chunk(&mut first).await.unwrap();

    let refused = client::post_responses(addr, &body("sse")).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json()["error"]["code"], "rate_limit_exceeded");
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 1 streams at once"),
        "{}",
        refused.text()
    );
    assert!(retry_after(&refused) >= 1);
    assert_eq!(
        upstream.requests().len(),
        1,
        "the refused one never went upstream"
    );

    // The running stream is not cut.
    for event in &events[1..] {
        tx.send(event.clone()).await.unwrap();
    }
    drop(tx);
    let mut rest = Vec::new();
    while let Some(chunk) = next_chunk(&mut first).await {
        rest.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8_lossy(&rest).contains("response.completed"));

    // Its slot is free again.
    let after = async {
        loop {
            let req = Request::post("/v1/responses")
                .body(Full::new(Bytes::from(body("sse"))))
                .unwrap();
            let response = client::send(addr, req).await;
            if response.status() == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within("a slot to free up", after).await;
}

#[tokio::test]
async fn over_the_requests_per_minute_quota_a_request_gets_429_with_retry_after() {
    let upstream = responses_upstream().await;
    let (addr, keyward) = start_for(
        &upstream.url(),
        &[
            "--quota",
            "default:requests-per-minute=2",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            client::post_responses(addr, &body("json")).await.status,
            StatusCode::OK
        );
    }
    let refused = client::post_responses(addr, &body("json")).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&refused);
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(upstream.requests().len(), 2);
    wait_metric(
        keyward.metrics.unwrap(),
        "keyward_quota_refusals_total",
        &[("client", me()), ("quota", "requests_per_minute")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn token_quota_counts_survive_a_restart_through_the_ledger() {
    let upstream = responses_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let quota = format!("{}:tokens-per-day=30", me());
    let args = ["--quota", &quota, "--usage-log", ledger.to_str().unwrap()];
    {
        let (addr, _keyward) = start_for(&upstream.url(), &args).await;
        // Each answer uses 19 tokens: the first two are under 30 when they start.
        for n in 1..=2 {
            assert_eq!(
                client::post_responses(addr, &body("json")).await.status,
                StatusCode::OK
            );
            wait_lines(&ledger, n).await;
        }
        let refused = client::post_responses(addr, &body("json")).await;
        assert_eq!(
            refused.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            refused.text()
        );
        assert!(refused.text().contains("tokens in 24 hours"));
        assert!(retry_after(&refused) > 23 * 3600);
    }
    let (addr, _keyward) = start_for(&upstream.url(), &args).await;
    let refused = client::post_responses(addr, &body("json")).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the count was rebuilt from the ledger"
    );
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn health_answers_every_local_client_and_readiness_reports_the_credential() {
    let upstream = responses_upstream().await;
    // A policy that refuses this test's user does not apply to health.
    let (addr, _keyward) = start_for(&upstream.url(), &["--allow-user", "4242"]).await;
    let alive = client::get(addr, "/healthz").await;
    assert_eq!(alive.status, StatusCode::OK);
    assert_eq!(alive.json()["status"], "alive");
    let ready = client::get(addr, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(
        ready.json(),
        json!({"status": "ready", "credential": "api_key", "sandbox": "off", "sandbox_files": "off"}),
        "in this test's own process keyward puts itself in no sandbox"
    );
    assert_eq!(
        client::post_responses(addr, &body("json")).await.status,
        StatusCode::FORBIDDEN
    );

    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let keyward = Process::spawn(
        &[
            "--auth",
            "chatgpt",
            "--home",
            home.to_str().unwrap(),
            "--upstream-url",
            &upstream.url(),
        ],
        b"",
        &[],
    )
    .await;
    let not_ready = client::get(keyward.addr, "/readyz").await;
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready.json()["status"], "not_ready");
    assert!(
        not_ready.json()["reason"]
            .as_str()
            .unwrap()
            .contains("keyward login"),
        "{}",
        not_ready.text()
    );
    assert_eq!(
        client::get(keyward.addr, "/healthz").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn sse_usage_is_read_even_when_events_arrive_split_across_chunks() {
    // One byte at a time: the usage event spans hundreds of chunks.
    let upstream = FakeUpstream::start(|_| async {
        let (response, tx) = upstream::stream("text/event-stream");
        tokio::spawn(async move {
            let completed = sse_event(
                "response.completed",
                &json!({"type": "response.completed",
                        "response": response_object("resp_9", "completed", Some("x"))}),
            );
            for byte in completed.iter() {
                if tx.send(Bytes::copy_from_slice(&[*byte])).await.is_err() {
                    return;
                }
            }
        });
        response
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let (addr, _keyward) =
        start_for(&upstream.url(), &["--usage-log", ledger.to_str().unwrap()]).await;
    client::post_responses(addr, &body("sse")).await;
    let line = &wait_lines(&ledger, 1).await[0];
    assert_eq!(line["input_tokens"], 12);
    assert_eq!(line["end"], "completed");
}

#[tokio::test]
async fn check_config_prints_the_settings_or_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keyward.toml");
    let check = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, err) = check(
        "port = 8080\nallow-user = [\"root\"]\nidle-timeout = \"90s\"\n[quota]\nci = \"tokens-per-day=5000\"\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("127.0.0.1:8080") && out.contains("90s"),
        "{out}"
    );
    assert!(out.contains("5000"), "{out}");
    assert!(err.contains("is valid"));

    let (code, _, err) = check("prot = 8080\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown setting `prot`"), "{err}");
    let (code, _, err) = check("listen = [\"0.0.0.0:80\"]\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("not a loopback address"), "{err}");
    let (code, _, err) = check("idle-timeout = \"soon\"\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("soon"), "{err}");
}

#[tokio::test]
async fn sighup_applies_a_good_file_and_refuses_a_bad_one_while_a_stream_runs() {
    let (upstream, mut streams) = FakeUpstream::driven().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keyward.toml");
    let write = |policy: &str, rpm: u32| {
        std::fs::write(
            &file,
            format!(
                "upstream-url = \"{}\"\nallow-user = [\"{policy}\"]\n[quota]\ndefault = \"requests-per-minute={rpm}\"\n",
                upstream.url()
            ),
        )
        .unwrap();
    };
    write(me(), 1000);
    let keyward = Process::spawn(
        &["--config", file.to_str().unwrap()],
        TEST_KEY.as_bytes(),
        &[],
    )
    .await;
    let reloads = |n: usize| {
        let keyward = &keyward;
        async move {
            within("the reload", async {
                while keyward.stderr().matches("configuration re-read").count() < n {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
        }
    };

    // A stream runs through every reload.
    let req = Request::post("/v1/responses")
        .body(Full::new(Bytes::from(body("sse"))))
        .unwrap();
    let mut stream = client::send(keyward.addr, req).await.into_body();
    let events = response_events();
    let tx = within("the stream", streams.recv()).await.unwrap();
    tx.send(events[0].clone()).await.unwrap();
    next_chunk(&mut stream).await.unwrap();

    // One request a minute: the running stream was it.
    write(me(), 1);
    keyward.signal(libc::SIGHUP);
    reloads(1).await;
    let reply = client::post_responses(keyward.addr, &body("sse")).await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.text()
    );

    // Another user only: this one is refused.
    write("4242", 1000);
    keyward.signal(libc::SIGHUP);
    reloads(2).await;
    let reply = client::post_responses(keyward.addr, &body("sse")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());

    // A broken file changes nothing.
    std::fs::write(&file, "allow-user = [\n").unwrap();
    keyward.signal(libc::SIGHUP);
    keyward
        .wait_for_log("the configuration file was refused")
        .await;
    let reply = client::post_responses(keyward.addr, &body("sse")).await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "the policy in force stays"
    );

    for event in &events[1..] {
        tx.send(event.clone()).await.unwrap();
    }
    drop(tx);
    let mut rest = Vec::new();
    while let Some(chunk) = next_chunk(&mut stream).await {
        rest.extend_from_slice(&chunk);
    }
    assert!(
        String::from_utf8_lossy(&rest).contains("response.completed"),
        "the stream outlived three reloads"
    );
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn refused_requests_are_counted_and_logged_for_the_user_who_sent_them() {
    let upstream = responses_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let (addr, keyward) = start_for(
        &upstream.url(),
        &[
            "--allow-user",
            "4242",
            "--metrics-listen",
            "127.0.0.1:0",
            "--usage-log",
            ledger.to_str().unwrap(),
        ],
    )
    .await;
    let reply = client::post_responses(addr, &body("json")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    wait_metric(
        keyward.metrics.unwrap(),
        "keyward_requests_total",
        &[("client", me()), ("status", "403"), ("upstream_status", "")],
        1.0,
    )
    .await;
    let line = &wait_lines(&ledger, 1).await[0];
    assert_eq!(line["client"], me());
    assert_eq!(line["status"], 403);
    assert_eq!(line["upstream_status"], Value::Null);
    assert!(upstream.requests().is_empty());
}
