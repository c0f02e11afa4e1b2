//! Starting, announcing and stopping: server-info, /shutdown, signals, graceful draining.

use std::os::unix::fs::PermissionsExt;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::support::client::{self, next_chunk};
use crate::support::keyward::{Process, start_for};
use crate::support::upstream::{self, FakeUpstream, sse_event};
use crate::support::within;

#[tokio::test]
async fn http_shutdown_lets_a_running_stream_finish_and_refuses_new_connections() {
    let (upstream, mut streams) = FakeUpstream::driven().await;
    let (addr, keyward) = start_for(&upstream.url(), &["--http-shutdown"]).await;

    let req = Request::post("/v1/responses")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let mut body = client::send(addr, req).await.into_body();
    let stream = within("the upstream stream", streams.recv()).await.unwrap();
    stream
        .send(sse_event("response.created", &json!({"n":1})))
        .await
        .unwrap();
    next_chunk(&mut body).await.unwrap();

    let reply = client::get(addr, "/shutdown").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["status"], "shutting down");

    // New connections are no longer accepted...
    within("the listener to close", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // ...while the stream in flight carries on to its end.
    let done = tokio::spawn(keyward.wait());
    stream
        .send(sse_event("response.completed", &json!({"n":2})))
        .await
        .unwrap();
    let got = next_chunk(&mut body).await.unwrap();
    assert!(String::from_utf8_lossy(&got).contains("response.completed"));
    assert!(!done.is_finished(), "keyward waits for the stream");
    drop(stream);
    assert_eq!(next_chunk(&mut body).await, None);
    within("keyward to stop after the last stream", done)
        .await
        .unwrap();
}

#[tokio::test]
async fn shutdown_grace_bounds_how_long_a_stream_may_run() {
    let (upstream, mut streams) = FakeUpstream::driven().await;
    let (addr, keyward) = start_for(&upstream.url(), &["--shutdown-grace", "1s"]).await;
    let req = Request::post("/v1/responses")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let _body = client::send(addr, req).await.into_body();
    let _stream = within("the upstream stream", streams.recv()).await.unwrap();

    keyward.shutdown();
    // The upstream never ends the stream; keyward stops anyway once the grace period is over.
    within("keyward to give up on the stream", keyward.wait()).await;
}

#[tokio::test]
async fn sigterm_and_sigint_stop_the_process_gracefully_with_exit_code_0() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let (upstream, mut streams) = FakeUpstream::driven().await;
        let mut keyward =
            Process::spawn(&["--upstream-url", &upstream.url()], b"sk-key\n", &[]).await;
        let req = Request::post("/v1/responses")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let mut body = client::send(keyward.addr, req).await.into_body();
        let stream = within("the upstream stream", streams.recv()).await.unwrap();

        keyward.signal(signal);
        stream
            .send(sse_event("response.completed", &json!({})))
            .await
            .unwrap();
        assert!(
            next_chunk(&mut body).await.is_some(),
            "the stream still flows after the signal"
        );
        drop(stream);
        assert_eq!(next_chunk(&mut body).await, None);
        assert_eq!(keyward.exit_code().await, Some(0), "{}", keyward.stderr());
        assert!(keyward.stderr().contains("shutting down on signal"));
    }
}

#[tokio::test]
async fn server_info_is_one_line_of_json_with_port_pid_and_addresses() {
    let upstream = FakeUpstream::ok_json().await;
    let mut keyward = Process::spawn(
        &[
            "--upstream-url",
            &upstream.url(),
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::1]:0",
        ],
        b"sk-key\n",
        &[],
    )
    .await;
    let text = std::fs::read_to_string(&keyward.server_info).unwrap();
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
    let info: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(info["pid"], keyward.pid());
    let listen: Vec<&str> = info["listen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(listen.len(), 2);
    assert!(
        listen[0].starts_with("127.0.0.1:") && listen[1].starts_with("[::1]:"),
        "{listen:?}"
    );
    assert_eq!(
        info["port"].as_u64().unwrap().to_string(),
        listen[0].rsplit(':').next().unwrap()
    );
    let mode = std::fs::metadata(&keyward.server_info)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644);

    // Both addresses serve.
    for addr in listen {
        let reply = client::post_responses(addr.parse().unwrap(), "{}").await;
        assert_eq!(reply.status, StatusCode::OK, "{addr}");
    }
    keyward.signal(libc::SIGTERM);
    assert_eq!(keyward.exit_code().await, Some(0));
}

#[tokio::test]
async fn server_info_replaces_a_planted_symlink_instead_of_following_it() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let info = dir.path().join("info.json");
    std::os::unix::fs::symlink(&victim, &info).unwrap();

    keyward::server::write_server_info(&info, &["127.0.0.1:4242".parse().unwrap()], &[], None)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious",
        "the symlink's target is untouched"
    );
    assert!(
        !std::fs::symlink_metadata(&info)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&info).unwrap()).unwrap();
    assert_eq!(written["port"], 4242);
    assert_eq!(written["pid"], std::process::id());
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[tokio::test]
async fn startup_errors_are_clear_and_exit_non_zero() {
    use crate::support::keyward::run_to_exit;
    let cases: [(&[&str], &[u8], &[&str]); 6] = [
        (&[], b"", &["stdin", "--api-key-file"]),
        (&[], b"\n", &["stdin", "--api-key-file"]),
        (&[], b"sk-has a space\n", &["whitespace", "byte 6"]),
        (
            &["--listen", "0.0.0.0:0"],
            b"sk-key",
            &["not a loopback address"],
        ),
        (
            &["--api-key-file", "/nonexistent/key"],
            b"",
            &["/nonexistent/key", "No such file"],
        ),
        (
            &["--upstream-url", "ftp://x/"],
            b"sk-key",
            &["--upstream-url", "http or https"],
        ),
    ];
    for (args, stdin, expected) in cases {
        let (code, stderr) = run_to_exit(args, stdin).await;
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        for word in expected {
            assert!(
                stderr.contains(word),
                "{args:?}: expected {word:?} in {stderr}"
            );
        }
        assert!(
            !stderr.contains("has a space"),
            "the key is never printed: {stderr}"
        );
    }
    let (code, stderr) = run_to_exit(&["--no-such-flag"], b"").await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--no-such-flag"));
}

#[tokio::test]
async fn a_second_keyward_on_a_port_the_first_holds_exits_saying_it_is_in_use() {
    use crate::support::keyward::run_to_exit;
    let upstream = FakeUpstream::ok_json().await;
    let url = upstream.url();
    let first = Process::spawn(
        &["--upstream-url", &url, "--metrics-listen", "127.0.0.1:0"],
        b"sk-key\n",
        &[],
    )
    .await;
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&first.server_info).unwrap()).unwrap();
    let listen = first.addr.to_string();
    let metrics = info["metrics"].as_str().unwrap().to_owned();
    for args in [
        vec!["--upstream-url", &url, "--listen", &listen],
        vec!["--upstream-url", &url, "--metrics-listen", &metrics],
    ] {
        let (code, stderr) = run_to_exit(&args, b"sk-key\n").await;
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("already in use"), "{args:?}: {stderr}");
    }
    // Every request still reaches the first.
    for _ in 0..6 {
        let reply = client::post_responses(first.addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(upstream.requests().len(), 6);
}

#[tokio::test]
async fn a_start_that_fails_says_why_once_and_nothing_else() {
    use crate::support::keyward::run_to_exit;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyward.toml");
    std::fs::write(&config, "port = \"abc\"\n").unwrap();
    let config = config.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &["--allow-user", "nosuchuser"],
            "there is no user named `nosuchuser` on this host (--allow-user)",
        ),
        (
            &["--config", config],
            "invalid value 'abc' for '--port <N>'",
        ),
        (&["--listen", "bad"], "`bad` is not an address"),
    ];
    for (args, why) in cases {
        let (code, stderr) = run_to_exit(args, b"sk-key\n").await;
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert_eq!(
            stderr.matches(why).count(),
            1,
            "{args:?}: said once: {stderr}"
        );
        assert!(
            !stderr.contains(" INFO "),
            "{args:?}: no start-up logs: {stderr}"
        );
        assert!(!stderr.contains("--help"), "{args:?}: {stderr}");
    }
    let (_, stderr) = run_to_exit(&["--config", config], b"sk-key\n").await;
    assert!(stderr.contains(config), "the file is named: {stderr}");
    // A command's error too: a sign-in service that cannot be reached.
    let home = dir.path().join("home");
    let output = crate::support::keyward::command(
        &[
            "login",
            "--device-code",
            "--issuer",
            "http://127.0.0.1:9",
            "--home",
            home.to_str().unwrap(),
        ],
        &[],
    )
    .stderr(std::process::Stdio::piped())
    .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(30), output)
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr
            .matches("could not reach the sign-in service")
            .count(),
        1,
        "said once: {stderr}"
    );

    // A bad flag is reported at once, while stdin is still open.
    let mut cmd = crate::support::keyward::command(&["--listen", "bad"], &[]);
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _stdin = child.stdin.take();
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait())
        .await
        .expect("keyward waited for stdin before checking its flags")
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

#[tokio::test]
async fn version_names_the_commit_and_the_log_says_who_may_use_keyward() {
    let output = crate::support::keyward::command(&["--version"], &[])
        .stdout(std::process::Stdio::piped())
        .output()
        .await
        .unwrap();
    let version = String::from_utf8_lossy(&output.stdout);
    assert!(
        version.starts_with(&format!("keyward {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let upstream = FakeUpstream::ok_json().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("clients.json");
    crate::support::keyward::add_client_token(&tokens, "ci").await;
    let keyward = Process::spawn(
        &[
            "--upstream-url",
            &upstream.url(),
            "--client-tokens",
            tokens.to_str().unwrap(),
        ],
        b"sk-key\n",
        &[],
    )
    .await;
    let log = keyward.stderr();
    assert!(
        log.contains("any client with a valid client token") && !log.contains("no access policy"),
        "{log}"
    );
    assert!(
        log.contains("open-file limit raised"),
        "said once serving: {log}"
    );
}

#[tokio::test]
async fn the_key_can_come_from_a_file() {
    let upstream = FakeUpstream::ok_json().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("openai-key");
    std::fs::write(&key_file, "sk-from-file\r\n").unwrap();
    let keyward = Process::spawn(
        &[
            "--upstream-url",
            &upstream.url(),
            "--api-key-file",
            key_file.to_str().unwrap(),
        ],
        b"",
        &[],
    )
    .await;
    client::post_responses(keyward.addr, "{}").await;
    assert_eq!(
        upstream.next_request().await.headers["authorization"],
        "Bearer sk-from-file"
    );
}

#[tokio::test]
async fn core_dumps_are_off() {
    let upstream = FakeUpstream::ok_json().await;
    let keyward = Process::spawn(&["--upstream-url", &upstream.url()], b"sk-key\n", &[]).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", keyward.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(
        &fields[4..6],
        ["0", "0"],
        "soft and hard limits are 0: {core}"
    );
}

#[cfg_attr(
    not(keyward_root),
    ignore = "needs root (scripts/test in CI runs as root)"
)]
#[tokio::test]
async fn the_process_is_not_dumpable_so_its_own_user_cannot_read_its_memory() {
    // The kernel makes /proc/PID/{mem,environ,...} of a non-dumpable process owned by root, so
    // another process of the same user cannot read or ptrace it. Seen from outside: run keyward
    // as `nobody` and look at who owns those files. Needs root to switch users.
    crate::support::need_root();
    use std::os::unix::fs::MetadataExt;
    let upstream = FakeUpstream::ok_json().await;
    let mut cmd = crate::support::keyward::command(&["--upstream-url", &upstream.url()], &[]);
    // A home nobody may create: the record of response owners stays in memory.
    let unreachable = tempfile::tempdir().unwrap();
    cmd.env("KEYWARD_HOME", unreachable.path().join("home"));
    cmd.uid(65534).gid(65534);
    let mut child = crate::support::keyward::spawn_fed(cmd, b"sk-key\n").await;

    crate::support::keyward::wait_listening(&mut child).await;
    let pid = child.id().unwrap();
    for file in ["environ", "mem", "maps"] {
        let meta = std::fs::metadata(format!("/proc/{pid}/{file}")).unwrap();
        assert_eq!(
            meta.uid(),
            0,
            "non-dumpable: /proc/{pid}/{file} belongs to root"
        );
    }
    let real_uid = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        real_uid.lines().any(|l| l.starts_with("Uid:\t65534")),
        "keyward runs as nobody"
    );
}

fn completed() -> serde_json::Value {
    json!({"type": "response.completed", "response": {"id": "resp_1", "status": "completed"}})
}

#[tokio::test]
async fn each_request_gets_one_log_line_with_its_figures() {
    let upstream = FakeUpstream::start(|seen| async move {
        if seen.body.as_ref() == b"sse" {
            let (response, tx) = upstream::stream("text/event-stream");
            tokio::spawn(async move {
                tx.send(sse_event("response.completed", &completed()))
                    .await
                    .unwrap();
            });
            response
        } else {
            upstream::json(StatusCode::CREATED, r#"{"ok":true}"#)
        }
    })
    .await;
    let mut keyward = Process::spawn(
        &[
            "--upstream-url",
            &upstream.url(),
            "--log-format",
            "json",
            "--http-shutdown",
        ],
        b"sk-key\n",
        &[],
    )
    .await;
    client::post_responses(keyward.addr, "json").await;
    client::post_responses(keyward.addr, "sse").await;
    client::get(keyward.addr, "/elsewhere").await;
    client::get(keyward.addr, "/shutdown").await;
    assert_eq!(keyward.exit_code().await, Some(0));

    let lines: Vec<serde_json::Value> = keyward
        .stderr()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|l: &serde_json::Value| l["message"] == "request")
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let (json_line, sse_line, refused) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(json_line["status"], 201);
    assert_eq!(json_line["upstream_status"], 201);
    assert_eq!(json_line["bytes_in"], 4);
    assert_eq!(json_line["bytes_out"], 11);
    assert_eq!(json_line["end"], "completed");
    assert!(json_line["ttfb_ms"].as_f64().unwrap() <= json_line["duration_ms"].as_f64().unwrap());
    assert_eq!(sse_line["end"], "completed");
    assert_eq!(
        sse_line["bytes_out"],
        sse_event("response.completed", &completed()).len()
    );
    assert_eq!(refused["status"], 404);
    assert_eq!(refused["path"], "/elsewhere");
    assert!(refused["upstream_status"].is_null());
    assert!(refused["bytes_out"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn the_open_file_limit_is_raised_to_its_ceiling() {
    // Started with a soft limit of 256 under a higher hard limit, keyward lifts the soft one.
    let upstream = FakeUpstream::ok_json().await;
    let home = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args([
        "-c",
        "ulimit -Sn 256 && exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_keyward"),
    ])
    .args(["--upstream-url", &upstream.url()])
    .env_remove("RUST_LOG")
    // A home of the test's own (keyward records response owners there).
    .env("KEYWARD_HOME", home.path().join("home"))
    .stdout(std::process::Stdio::null());
    let mut child = crate::support::keyward::spawn_fed(cmd, b"sk-key\n").await;
    crate::support::keyward::wait_listening(&mut child).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id().unwrap())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        open_files[3], open_files[4],
        "soft limit raised to the hard limit: {open_files:?}"
    );
    assert_ne!(open_files[3], "256");
}

#[cfg_attr(
    not(keyward_root),
    ignore = "needs root (scripts/test in CI runs as root)"
)]
#[tokio::test]
async fn without_the_right_to_lock_all_memory_the_key_is_locked_on_its_own() {
    // An unprivileged keyward under a finite memlock limit cannot lock all its memory; the key's
    // own pages are still locked (VmLck). Needs root to start keyward as `nobody`.
    crate::support::need_root();
    let upstream = FakeUpstream::ok_json().await;
    let mut cmd = tokio::process::Command::new("prlimit");
    cmd.arg("--memlock=1048576:1048576")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_keyward"))
        .args(["--upstream-url", &upstream.url()])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .uid(65534)
        .gid(65534);
    let mut child = crate::support::keyward::spawn_fed(cmd, b"sk-key\n").await;
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stderr.take().unwrap()));
    let mut log = String::new();
    within("keyward to listen", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            log.push_str(&line);
            log.push('\n');
            // Said once it serves, after "listening".
            if line.contains("open-file limit raised") {
                return;
            }
        }
        panic!("keyward exited: {log}");
    })
    .await;
    assert!(
        log.contains("only the credential's own buffer is locked"),
        "{log}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id().unwrap())).unwrap();
    let locked_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(locked_kb > 0, "the key's pages are locked: {status}");
    let _ = child.kill().await;
}

#[tokio::test]
async fn after_sigterm_a_stream_gets_the_grace_period_then_keyward_exits_0_saying_so_once() {
    let (upstream, mut streams) = upstream::FakeUpstream::driven().await;
    let mut keyward = Process::spawn(
        &[
            "--upstream-url",
            &upstream.url(),
            "--shutdown-grace",
            "1s",
            "--threads",
            "2",
        ],
        b"sk-key\n",
        &[],
    )
    .await;
    let req = Request::post("/v1/responses")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let _body = client::send(keyward.addr, req).await.into_body();
    // The upstream never ends this stream.
    let _stream = within("the upstream stream", streams.recv()).await.unwrap();

    let signalled = std::time::Instant::now();
    keyward.signal(libc::SIGTERM);
    assert_eq!(keyward.exit_code().await, Some(0), "{}", keyward.stderr());
    let took = signalled.elapsed();
    // Not before the grace period is over, and not much after (generous: a shared machine).
    assert!(
        took >= std::time::Duration::from_millis(900),
        "exited after {took:?}"
    );
    assert!(took < crate::support::SOON, "exited after {took:?}");
    let log = keyward.stderr();
    // Said once, whatever the number of worker threads.
    assert_eq!(
        log.matches("the grace period (--shutdown-grace) ran out")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("shutting down: letting").count(), 1, "{log}");
}
