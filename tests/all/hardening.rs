//! What a hostile or careless neighbour must not be able to do: stall keyward through its side
//! channels (a stderr nobody reads, a ledger whose disk stalls), dodge usage accounting, or
//! exhaust its connections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::Child;

use crate::support::client;
use crate::support::keyward::{Process, TEST_KEY, command, spawn_fed, start_for};
use crate::support::responses::response_events;
use crate::support::upstream::{self, FakeUpstream, Seen};
use crate::support::users::python_as;
use crate::support::within;

/// A keyward child whose stderr is a pipe the test does not read until it chooses to.
struct Unread {
    child: Child,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

async fn spawn_unread(args: &[&str], env: &[(&str, &str)]) -> Unread {
    let dir = tempfile::tempdir().unwrap();
    let info: PathBuf = dir.path().join("server-info.json");
    let mut cmd = command(args, env);
    cmd.arg("--server-info").arg(&info).stderr(Stdio::piped());
    cmd.env("KEYWARD_HOME", dir.path().join("home"));
    let child = spawn_fed(cmd, format!("{TEST_KEY}\n").as_bytes()).await;
    let info: Value = within("keyward to write --server-info", async {
        loop {
            if let Ok(text) = std::fs::read_to_string(&info)
                && let Ok(value) = serde_json::from_str(&text)
            {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let port = u16::try_from(info["port"].as_u64().unwrap()).unwrap();
    let metrics = info["metrics"].as_str().map(|m| m.parse().unwrap());
    Unread {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        metrics,
        _dir: dir,
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test]
async fn a_stderr_nobody_reads_never_stops_the_proxy() {
    let upstream = FakeUpstream::ok_json().await;
    let url = upstream.url();
    let mut keyward = spawn_unread(
        &[
            "--upstream-url",
            &url,
            "--log-buffer",
            "16KiB",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[("RUST_LOG", "debug")],
    )
    .await;
    // The pipe holds 64 KiB and the log buffer 16 KiB; 1,500 requests log far more than that.
    for i in 0..1_500 {
        let reply = client::post_responses(keyward.addr, r#"{"model":"m","input":"hi"}"#).await;
        assert_eq!(reply.status, 200, "request {i}");
    }
    let text = client::get(keyward.metrics.unwrap(), "/metrics")
        .await
        .text();
    let dropped = metric(&text, "keyward_log_lines_dropped_total");
    assert!(dropped > 0.0, "{text}");

    // Once stderr is read again, one line says how many were lost.
    let mut stderr = keyward.child.stderr.take().unwrap();
    let mut seen = Vec::new();
    within("the line about dropped log lines", async {
        let mut chunk = vec![0u8; 65536];
        loop {
            let n = stderr.read(&mut chunk).await.unwrap();
            assert!(n > 0, "stderr closed");
            seen.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&seen).contains("log lines were dropped") {
                return;
            }
        }
    })
    .await;
    let _ = keyward.child.kill().await;
}

/// Makes a FIFO at `path` (mode 0600) and opens its reading end without reading: a ledger
/// "disk" that takes 64 KiB and then stalls.
fn stalled_fifo(path: &Path) -> std::fs::File {
    let made = std::process::Command::new("mkfifo")
        .args(["-m", "600"])
        .arg(path)
        .status()
        .unwrap();
    assert!(made.success());
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap()
}

/// Reads the FIFO from now on, in a thread; the text read so far.
fn drain_lines(mut fifo: std::fs::File) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::Read;
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let into = text.clone();
    std::thread::spawn(move || {
        let mut chunk = vec![0u8; 65536];
        // Until the test is over (the writer closes its end: a read of 0).
        loop {
            match fifo.read(&mut chunk) {
                Ok(0) if std::sync::Arc::strong_count(&into) == 1 => return,
                Ok(n) => into
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n])),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) => panic!("{err}"),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    text
}

#[tokio::test]
async fn a_stalled_ledger_disk_delays_lines_not_answers_and_loses_none() {
    let upstream = FakeUpstream::ok_json().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let fifo = stalled_fifo(&path);
    let (addr, _running) = start_for(
        &upstream.url(),
        &[
            "--usage-log",
            path.to_str().unwrap(),
            "--usage-log-buffer",
            "32KiB",
        ],
    )
    .await;
    // The FIFO takes 64 KiB and then nothing: every request is still answered at once, until
    // 32 KiB more wait; from then on new requests are refused, not held.
    let (mut served, mut refused) = (0, 0);
    for _ in 0..1_000 {
        let reply = client::post_responses(addr, r#"{"model":"m","input":"hi"}"#).await;
        match reply.status.as_u16() {
            200 => served += 1,
            503 => {
                assert_eq!(reply.json()["error"]["code"], "usage_ledger_behind");
                assert_eq!(reply.headers["retry-after"], "1");
                refused += 1;
            }
            other => panic!("{other}: {}", reply.text()),
        }
    }
    assert!(
        served > 100 && refused > 0,
        "{served} served, {refused} refused"
    );

    // The disk moves again: keyward serves again, and every request, served or refused, has its
    // line in the ledger.
    let mut reader = Some(fifo);
    let mut sent = 1_000;
    let drained = within("the ledger to catch up", async {
        let drained = drain_lines(reader.take().unwrap());
        loop {
            let reply = client::post_responses(addr, r#"{"model":"m","input":"hi"}"#).await;
            sent += 1;
            match reply.status.as_u16() {
                200 => return drained,
                503 => refused += 1,
                other => panic!("{other}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let text = within("the ledger's lines", async {
        loop {
            let text = drained.lock().unwrap().clone();
            if text.lines().count() >= sent {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let statuses: Vec<u64> = text
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["status"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(statuses.len(), sent);
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), refused);
}

/// An upstream that streams a response with usage 12 in / 7 out, and compresses it (says
/// `content-encoding` and scrambles the bytes) whenever the request allows an encoding, or
/// always with `always`.
async fn compressing_upstream(always: bool) -> FakeUpstream {
    FakeUpstream::start(move |seen: Seen| async move {
        let asked = seen
            .headers
            .get("accept-encoding")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let chosen = asked
            .split(',')
            .map(str::trim)
            .find(|e| !e.is_empty() && *e != "identity")
            .map(str::to_owned);
        let chosen = if always {
            Some("gzip".to_owned())
        } else {
            chosen
        };
        let (mut response, tx) = upstream::stream("text/event-stream");
        if let Some(encoding) = &chosen {
            response
                .headers_mut()
                .insert("content-encoding", encoding.parse().unwrap());
        }
        tokio::spawn(async move {
            for event in response_events() {
                let event = match chosen {
                    Some(_) => event.iter().map(|b| b ^ 0x5a).collect(),
                    None => event,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        response
    })
    .await
}

const STREAM_BODY: &str = r#"{"model":"gpt-5","input":"Say hello, please.","stream":true}"#;

async fn post_with(addr: SocketAddr, headers: &[(&str, &str)]) -> client::Reply {
    let mut req = Request::post("/v1/responses")
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    client::read(client::send(addr, req.body(Full::new(Bytes::from(STREAM_BODY))).unwrap()).await)
        .await
}

async fn ledger_line(path: &Path, n: usize) -> Value {
    within("the ledger line", async {
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if let Some(line) = text.lines().nth(n - 1) {
                return serde_json::from_str(line).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn usage_is_counted_whatever_encoding_the_client_accepts() {
    let upstream = compressing_upstream(false).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let (addr, _running) =
        start_for(&upstream.url(), &["--usage-log", ledger.to_str().unwrap()]).await;
    for (n, encoding) in ["gzip", "br", "deflate", "zstd", "gzip, deflate, br, zstd"]
        .into_iter()
        .enumerate()
    {
        let reply = post_with(addr, &[("accept-encoding", encoding)]).await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.headers.get("content-encoding").is_none(),
            "{encoding}"
        );
        assert!(reply.text().contains("response.completed"), "{encoding}");
        assert_eq!(
            upstream.next_request().await.headers["accept-encoding"],
            "identity"
        );
        let line = ledger_line(&ledger, n + 1).await;
        assert_eq!(line["input_tokens"], 12, "{encoding}: {line}");
        assert_eq!(line["output_tokens"], 7, "{encoding}: {line}");
        assert!(line.get("estimated").is_none(), "{line}");
    }
}

#[tokio::test]
async fn an_answer_compressed_anyway_is_charged_an_estimate() {
    let upstream = compressing_upstream(true).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let (addr, _running) =
        start_for(&upstream.url(), &["--usage-log", ledger.to_str().unwrap()]).await;
    let reply = post_with(addr, &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-encoding"], "gzip");
    let line = ledger_line(&ledger, 1).await;
    assert_eq!(line["estimated"], true, "{line}");
    assert_eq!(
        line["input_tokens"],
        STREAM_BODY.len().div_ceil(4),
        "{line}"
    );
    assert_eq!(
        line["output_tokens"],
        reply.body.len().div_ceil(4),
        "{line}"
    );
}

#[tokio::test]
async fn a_client_that_leaves_before_the_usage_pays_an_estimate_and_quotas_count_it() {
    let (upstream, mut streams) = FakeUpstream::driven().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let (addr, _running) = start_for(
        &upstream.url(),
        &[
            "--usage-log",
            ledger.to_str().unwrap(),
            "--quota",
            "default:tokens-per-day=40",
        ],
    )
    .await;
    let events: Vec<Bytes> = response_events();
    // Everything but the completion (and its usage): the deltas, word by word.
    let before_completed = &events[..events.len() - 1];
    let deltas: usize = before_completed
        .iter()
        .filter_map(|e| {
            let text = String::from_utf8_lossy(e);
            let data: Value = serde_json::from_str(text.split("data: ").nth(1)?.trim()).ok()?;
            Some(data["delta"].as_str()?.len())
        })
        .sum();
    let mut admitted = 0;
    for n in 1..=4 {
        let req = Request::post("/v1/responses")
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(STREAM_BODY)))
            .unwrap();
        let response = client::send(addr, req).await;
        if response.status() == 429 {
            break;
        }
        assert_eq!(response.status(), 200);
        admitted += 1;
        let sender = within("the upstream stream", streams.recv()).await.unwrap();
        for event in before_completed {
            sender.send(event.clone()).await.unwrap();
        }
        let mut body = response.into_body();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("response.output_item.done") {
            got.extend_from_slice(&client::next_chunk(&mut body).await.unwrap());
        }
        drop(body); // the client hangs up just before response.completed
        let line = ledger_line(&ledger, n).await;
        assert_eq!(line["end"], "client_gone", "{line}");
        assert_eq!(line["estimated"], true, "{line}");
        assert_eq!(
            line["input_tokens"],
            STREAM_BODY.len().div_ceil(4),
            "{line}"
        );
        assert_eq!(line["output_tokens"], deltas.div_ceil(4), "{line}");
    }
    // About 20 tokens a request against 40 a day: the third is refused.
    assert_eq!(admitted, 2);
}

/// Opens `n` connections to `addr` that start a request head and never finish it.
async fn half_open(addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /v1/responses HTTP/1.1\r\nhost: localhost\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    held
}

const REQUEST: &[u8] =
    b"POST /v1/responses HTTP/1.1\r\nhost: localhost\r\ncontent-length: 2\r\n\r\n{}";

/// Sends requests on fresh connections until one gets `status`; returns its answer.
async fn until_status(addr: SocketAddr, status: u16) -> String {
    within(&format!("a {status}"), async {
        loop {
            let (got, text) = client::raw(addr, REQUEST).await;
            if got == status {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Of `held` connections, the ones keyward answered (it turns connections away at once), with
/// the answers; the rest are still open, waiting for their heads.
async fn turned_away(held: &mut [tokio::net::TcpStream]) -> Vec<String> {
    use tokio::io::AsyncReadExt;
    let mut answers = Vec::new();
    for stream in held.iter_mut() {
        let mut buf = vec![0u8; 4096];
        // An answer is written at accept; a connection let in gets nothing for its unfinished head.
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await
        {
            answers.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    answers
}

#[tokio::test]
async fn a_user_over_its_connection_cap_is_turned_away_at_accept() {
    let upstream = FakeUpstream::ok_json().await;
    let (addr, _running) = start_for(&upstream.url(), &["--max-connections-per-user", "5"]).await;
    // Eight connections of one user, none finishing its head: five are let in, three turned
    // away at once (which three depends on the order keyward's workers accept them).
    let mut held = half_open(addr, 8).await;
    let answers = turned_away(&mut held).await;
    assert_eq!(answers.len(), 3, "{answers:?}");
    for answer in &answers {
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert!(answer.contains("too_many_connections"), "{answer}");
        assert!(answer.contains("--max-connections-per-user"), "{answer}");
    }
    // Its connections closed, the user is served again.
    drop(held);
    until_status(addr, 200).await;
}

#[tokio::test]
async fn connections_over_the_total_cap_are_turned_away_at_accept() {
    let upstream = FakeUpstream::ok_json().await;
    let (addr, _running) = start_for(
        &upstream.url(),
        &["--max-connections", "4", "--max-connections-per-user", "0"],
    )
    .await;
    let mut held = half_open(addr, 6).await;
    let answers = turned_away(&mut held).await;
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(answers[0].contains("(--max-connections)"), "{}", answers[0]);
    drop(held);
    until_status(addr, 200).await;
}

#[cfg_attr(
    not(keyward_root),
    ignore = "needs root (scripts/test in CI runs as root)"
)]
#[tokio::test]
async fn both_connections_of_a_relayed_stream_send_without_delay() {
    // Looking into another (non-dumpable) process's sockets takes root.
    crate::support::need_root();
    let (upstream, mut streams) = FakeUpstream::driven().await;
    let keyward = Process::spawn(&["--upstream-url", &upstream.url()], b"sk-key\n", &[]).await;
    let req = Request::post("/v1/responses")
        .header("host", keyward.addr.to_string())
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let _body = client::send(keyward.addr, req).await.into_body();
    let _stream = within("the upstream stream", streams.recv()).await.unwrap();

    let sockets = python_as(
        None,
        include_str!("support/sockets.py"),
        serde_json::json!({ "pid": keyward.pid() }),
    )
    .await;
    let port = |end: &Value| end[1].as_u64().unwrap();
    let sockets = sockets.as_array().unwrap();
    let to_client = sockets
        .iter()
        .find(|s| port(&s["local"]) == u64::from(keyward.addr.port()))
        .unwrap_or_else(|| panic!("no client connection among {sockets:?}"));
    let to_upstream = sockets
        .iter()
        .find(|s| port(&s["peer"]) == u64::from(upstream.addr.port()))
        .unwrap_or_else(|| panic!("no upstream connection among {sockets:?}"));
    assert_ne!(to_client["nodelay"], 0, "{to_client}");
    assert_ne!(to_upstream["nodelay"], 0, "{to_upstream}");
}

#[tokio::test]
async fn a_clients_broken_body_is_its_own_fault_400_not_an_upstream_502() {
    let (upstream, _streams) = FakeUpstream::driven().await;
    let (addr, _running) = start_for(&upstream.url(), &[]).await;
    // A chunk size that is not hexadecimal, after the head went upstream.
    let (status, text) = client::raw(
        addr,
        b"POST /v1/responses HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\nhello\r\nzz\r\n",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("bad_request_body"), "{text}");
}

#[tokio::test]
async fn a_request_answered_before_its_body_was_read_logs_the_bodys_size() {
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1/responses", listener.local_addr().unwrap())
    };
    let mut keyward = Process::spawn(
        &["--upstream-url", &unreachable, "--http-shutdown"],
        b"sk-key\n",
        &[],
    )
    .await;
    let body = r#"{"model":"gpt-5","input":"3b"}"#;
    assert_eq!(body.len(), 30);
    let reply = client::post_responses(keyward.addr, body).await;
    assert_eq!(reply.status, 502);
    client::get(keyward.addr, "/shutdown").await;
    assert_eq!(keyward.exit_code().await, Some(0));
    let log = keyward.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("status=502"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("bytes_in=30"), "{line}");
    // Each cause is said once ("dns error: dns error: …" was not).
    let failed = log
        .lines()
        .find(|l| l.contains("request failed"))
        .unwrap_or_else(|| panic!("{log}"));
    let parts: Vec<&str> = failed.split(": ").collect();
    for (i, part) in parts.iter().enumerate().skip(1) {
        assert_ne!(Some(part), parts.get(i + 1), "{failed}");
    }
}
