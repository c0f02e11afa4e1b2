//! A canary key goes in; it must come out only at the upstream. Everything else keyward writes or
//! shows, at the most verbose log level, is searched for it.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::support::client::{self, next_chunk};
use crate::support::keyward::{Process, add_client_token, files_under};
use crate::support::upstream::{self, FakeUpstream, sse_event};

const CANARY: &str = "sk-CANARY-7d1e9b2c4a";

async fn exercise(addr: std::net::SocketAddr) -> String {
    let mut seen = String::new();
    let mut record = |reply: &client::Reply| {
        seen.push_str(&format!(
            "{} {:?} {}\n",
            reply.status,
            reply.headers,
            reply.text()
        ));
    };
    record(&client::post_responses(addr, r#"{"kind":"json"}"#).await);
    record(&client::post_responses(addr, r#"{"kind":"sse"}"#).await);
    record(&client::post_responses(addr, r#"{"kind":"silent"}"#).await);
    record(&client::post_responses(addr, r#"{"kind":"error"}"#).await);
    record(&client::get(addr, "/v1/models").await);
    record(&client::get(addr, "/v1/responses").await);
    // The other Responses endpoints: one of this client's responses, and one keyward never saw.
    for (method, path) in [
        ("GET", "/v1/responses/resp_canary?stream=true"),
        ("GET", "/v1/responses/resp_canary/input_items"),
        ("POST", "/v1/responses/resp_canary/cancel"),
        ("DELETE", "/v1/responses/resp_canary"),
        ("GET", "/v1/responses/resp_someone_elses"),
        ("POST", "/v1/responses/input_tokens"),
        ("POST", "/v1/responses/compact"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::new()))
            .unwrap();
        record(&client::read(client::send(addr, req).await).await);
    }
    record(&client::get(addr, "/nowhere").await);
    let big = "x".repeat(2048);
    record(&client::post_responses(addr, &big).await);
    let (_, text) = client::raw(
        addr,
        format!(
            "POST /v1/responses HTTP/1.1\r\nhost: localhost\r\nx-big: {}\r\n\r\n",
            "h".repeat(20_000)
        )
        .as_bytes(),
    )
    .await;
    seen.push_str(&text);
    // A client that hangs up mid-stream.
    let req = Request::post("/v1/responses")
        .body(Full::new(Bytes::from_static(br#"{"kind":"sse"}"#)))
        .unwrap();
    let mut body = client::send(addr, req).await.into_body();
    next_chunk(&mut body).await;
    drop(body);
    // A WebSocket upgrade: the key goes on the upstream's handshake; whatever comes back (a
    // refusal from this HTTP-only upstream, or a 502) must not carry it.
    match crate::support::ws::connect(addr, &[("authorization", "Bearer client")]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => seen.push_str(&format!(
            "{} {:?} {}\n",
            response.status(),
            response.headers(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
        )),
        Ok((mut socket, response)) => {
            seen.push_str(&format!("{:?}\n", response.headers()));
            let _ = futures_util::SinkExt::close(&mut socket).await;
        }
        Err(other) => seen.push_str(&format!("{other}\n")),
    }
    seen
}

fn assert_clean(place: &str, haystack: &[u8]) {
    let found = haystack
        .windows(CANARY.len())
        .any(|w| w == CANARY.as_bytes());
    assert!(!found, "the key leaked into {place}");
}

#[tokio::test]
async fn the_key_appears_nowhere_but_at_the_upstream() {
    let upstream = FakeUpstream::start(|seen| async move {
        let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        match body["kind"].as_str() {
            Some("sse") => {
                let (response, tx) = upstream::stream("text/event-stream");
                tokio::spawn(async move {
                    let _ = tx
                        .send(sse_event(
                            "response.created",
                            &json!({"type":"response.created"}),
                        ))
                        .await;
                    let _ = tx
                        .send(sse_event(
                            "response.completed",
                            &json!({"type":"response.completed"}),
                        ))
                        .await;
                });
                response
            }
            Some("silent") => {
                let (response, tx) = upstream::stream("text/event-stream");
                tokio::spawn(async move { tx.closed().await });
                response
            }
            Some("error") => upstream::json(
                StatusCode::UNAUTHORIZED,
                r#"{"error":{"message":"bad key"}}"#,
            ),
            _ => upstream::json(
                StatusCode::OK,
                r#"{"id":"resp_canary","object":"response","status":"completed"}"#,
            ),
        }
    })
    .await;
    let unreachable = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1/responses", l.local_addr().unwrap())
    };

    for (url, format) in [(upstream.url(), "text"), (unreachable, "json")] {
        let dumps = tempfile::tempdir().unwrap();
        let mut keyward = Process::spawn(
            &[
                "--upstream-url",
                &url,
                "--dump-dir",
                dumps.path().to_str().unwrap(),
                "--idle-timeout",
                "1s",
                "--max-body",
                "1KiB",
                "--max-headers",
                "8KiB",
                "--log-format",
                format,
                "--http-shutdown",
            ],
            format!("{CANARY}\n").as_bytes(),
            &[("RUST_LOG", "trace")],
        )
        .await;
        let replies = exercise(keyward.addr).await;
        let pid = keyward.pid();
        // A non-dumpable process's environ is root's to read.
        let environ = if keyward::secret::hardening::effective_uid() == 0 {
            Some(std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        } else {
            eprintln!("/proc/PID/environ not checked: needs root (keyward is not dumpable)");
            None
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert_eq!(
            client::get(keyward.addr, "/shutdown").await.status,
            StatusCode::OK
        );
        assert_eq!(keyward.exit_code().await, Some(0));

        let stderr = keyward.stderr();
        assert!(
            stderr.lines().count() > 20,
            "trace logging was on: {stderr}"
        );
        assert!(stderr.contains("request"), "{stderr}");
        assert_clean("stderr", stderr.as_bytes());
        assert_clean("the replies to clients", replies.as_bytes());
        if let Some(environ) = &environ {
            assert_clean("/proc/PID/environ", environ);
        }
        assert_clean("/proc/PID/cmdline", &cmdline);
        let mut files = files_under(dumps.path());
        // keyward's home: the record of response owners.
        files.extend(files_under(keyward.dir.path()));
        for (path, contents) in &files {
            assert_clean(&path.display().to_string(), contents);
        }
        if format == "text" {
            assert!(files.len() >= 8, "dumps were written: {}", files.len());
        }
    }

    let at_upstream = upstream.requests();
    assert!(!at_upstream.is_empty());
    for request in at_upstream {
        assert_eq!(
            request.headers["authorization"],
            format!("Bearer {CANARY}").as_str()
        );
    }
}

/// Each mapping of `pid` as (start, end, locked), from /proc/PID/smaps.
fn mappings(pid: u32) -> Vec<(u64, u64, bool)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
        {
            out.push((lo, hi, false));
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            out.last_mut().unwrap().2 = flags.split_whitespace().any(|f| f == "lo");
        }
    }
    out
}

/// Addresses where `needle` occurs in the readable memory of `pid`.
fn find_in_memory(pid: u32, needle: &[u8]) -> Vec<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut hits = Vec::new();
    for (lo, hi, _) in mappings(pid) {
        let mut data = vec![0u8; (hi - lo) as usize];
        if mem.seek(SeekFrom::Start(lo)).is_err() || mem.read_exact(&mut data).is_err() {
            continue; // guard pages and the like
        }
        hits.extend(
            data.windows(needle.len())
                .enumerate()
                .filter(|(_, w)| *w == needle)
                .map(|(i, _)| lo + i as u64),
        );
    }
    hits
}

#[cfg_attr(
    not(keyward_root),
    ignore = "needs root (scripts/test in CI runs as root)"
)]
#[tokio::test]
async fn every_copy_of_the_key_in_memory_is_in_locked_pages() {
    // Reading another process's memory needs root (keyward is not dumpable), and so does
    // locking all of it.
    crate::support::need_root();
    let upstream = FakeUpstream::ok_json().await;
    let keyward = Process::spawn(
        &["--upstream-url", &upstream.url()],
        format!("{CANARY}\n").as_bytes(),
        &[],
    )
    .await;
    assert!(
        keyward
            .stderr()
            .contains("all of keyward's memory is locked"),
        "{}",
        keyward.stderr()
    );
    for _ in 0..20 {
        client::post_responses(keyward.addr, "{}").await;
    }
    let pid = keyward.pid();
    let hits = find_in_memory(pid, CANARY.as_bytes());
    assert!(!hits.is_empty(), "the scan finds the key it holds");
    let maps = mappings(pid);
    for hit in hits {
        let (lo, hi, locked) = maps
            .iter()
            .find(|(lo, hi, _)| (*lo..*hi).contains(&hit))
            .unwrap();
        assert!(
            locked,
            "a copy of the key at {hit:#x} lies in unlocked memory {lo:#x}-{hi:#x}"
        );
    }
}

/// A client token is a secret too: it must reach neither the upstream nor any log, dump, reply
/// or the tokens file.
#[tokio::test]
async fn a_client_token_appears_nowhere_and_never_reaches_the_upstream() {
    let upstream = FakeUpstream::ok_json().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clients.json");
    let ledger = dir.path().join("usage.jsonl");
    let token = add_client_token(&file, "canary").await;
    let dumps = tempfile::tempdir().unwrap();
    let mut keyward = Process::spawn(
        &[
            "--upstream-url",
            &upstream.url(),
            "--client-tokens",
            file.to_str().unwrap(),
            "--dump-dir",
            dumps.path().to_str().unwrap(),
            "--http-shutdown",
            "--usage-log",
            ledger.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        format!("{CANARY}\n").as_bytes(),
        &[("RUST_LOG", "trace")],
    )
    .await;
    let mut replies = String::new();
    for presented in [token.clone(), format!("{token}x"), token[..20].to_owned()] {
        let req = Request::post("/v1/responses")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {presented}"))
            .body(Full::new(Bytes::from_static(br#"{"kind":"json"}"#)))
            .unwrap();
        let reply = client::read(client::send(keyward.addr, req).await).await;
        replies.push_str(&format!("{:?} {}", reply.headers, reply.text()));
    }
    // The usage views: the client's own, the operator's page and its JSON, the metrics.
    let own = client::call(keyward.addr, "GET", "/keyward/usage", &token, None).await;
    assert_eq!(own.json()["client"], "canary", "{}", own.text());
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&keyward.server_info).unwrap()).unwrap();
    let metrics: std::net::SocketAddr = info["metrics"].as_str().unwrap().parse().unwrap();
    for reply in [
        own,
        client::get(metrics, "/usage").await,
        client::get_json(metrics, "/usage").await,
        client::get(metrics, "/metrics").await,
    ] {
        replies.push_str(&format!("{:?} {}", reply.headers, reply.text()));
    }
    assert!(replies.contains("canary"), "the views name the client");
    assert!(!replies.contains(CANARY), "the key leaked into a view");
    assert_eq!(
        client::get(keyward.addr, "/shutdown").await.status,
        StatusCode::OK
    );
    assert_eq!(keyward.exit_code().await, Some(0));

    let leaked = |haystack: &[u8]| haystack.windows(token.len()).any(|w| w == token.as_bytes());
    let stderr = keyward.stderr();
    assert!(
        stderr.contains("client=canary") || stderr.contains("client=\"canary\""),
        "{stderr}"
    );
    assert!(!leaked(stderr.as_bytes()), "the token leaked into the log");
    assert!(!leaked(replies.as_bytes()), "the token leaked into a reply");
    assert!(
        !leaked(&std::fs::read(&file).unwrap()),
        "the tokens file holds the token"
    );
    assert!(
        !leaked(&std::fs::read(&ledger).unwrap()),
        "the token leaked into the ledger"
    );
    for (path, contents) in files_under(dumps.path()) {
        assert!(
            !leaked(&contents),
            "the token leaked into {}",
            path.display()
        );
    }
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1, "only the right token was forwarded");
    assert!(
        !requests
            .iter()
            .any(|r| leaked(format!("{:?}", r.headers).as_bytes()) || leaked(&r.body)),
        "the token reached the upstream"
    );
}

#[cfg_attr(
    not(keyward_root),
    ignore = "needs root (scripts/test in CI runs as root)"
)]
#[tokio::test]
async fn a_key_left_in_the_environment_is_wiped_from_proc_environ_and_from_memory() {
    // A non-dumpable process's environ and memory are readable by root only.
    crate::support::need_root();
    const IN_ENV: &str = "sk-env-canary-7f3a9c2e5b1d40680b";
    let upstream = FakeUpstream::ok_json().await;
    let keyward = Process::spawn(
        &["--upstream-url", &upstream.url()],
        format!("{CANARY}\n").as_bytes(),
        &[("OPENAI_API_KEY", IN_ENV), ("LD_KEYWARD_TEST", "1")],
    )
    .await;
    keyward.wait_for_log("OPENAI_API_KEY was set").await;
    client::post_responses(keyward.addr, "{}").await;
    let pid = keyward.pid();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains(IN_ENV), "{environ}");
    assert!(!environ.contains("OPENAI_API_KEY"), "{environ}");
    assert!(
        environ.contains("LD_KEYWARD_TEST"),
        "only the key is wiped: {environ}"
    );
    assert_eq!(find_in_memory(pid, IN_ENV.as_bytes()), Vec::<u64>::new());
    // The scan does see what keyward holds.
    assert!(!find_in_memory(pid, CANARY.as_bytes()).is_empty());
}
