//! Replicas with an API key sharing state through a real PostgreSQL (`--state`): client tokens
//! changed through one host and seen by every replica, the usage ledger in a table (exactly one
//! row per request, with the database stopped for 10 s under load), and a tokens-per-day quota
//! counted over all replicas. Skipped (with a line) where PostgreSQL is not installed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::client::{self, Reply, call};
use crate::support::keyward::Process;
use crate::support::postgres::{PASSWORD, Postgres, keyward};
use crate::support::upstream::{FakeUpstream, json};
use crate::support::within;
use crate::usage::json_when;

/// Every answer uses 10 input and 9 output tokens: 19 against a tokens-per-day quota.
async fn upstream_with_usage() -> FakeUpstream {
    FakeUpstream::start(|_| async {
        json(
            StatusCode::OK,
            r#"{"id":"resp_1","object":"response","status":"completed","model":"gpt-5",
               "usage":{"input_tokens":10,"output_tokens":9,"total_tokens":19}}"#,
        )
    })
    .await
}

/// `serve --state` in front of `upstream`, as replica `name`.
fn replica_args(pg: &Postgres, upstream: &FakeUpstream, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve",
        "--upstream-url",
        &upstream.url(),
        "--state",
        &pg.url(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(["--replica".to_owned(), name.to_owned()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// `serve` with an API key on stdin, sharing state in `pg`.
async fn replica(pg: &Postgres, upstream: &FakeUpstream, name: &str, extra: &[&str]) -> Process {
    let args = replica_args(pg, upstream, name, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Process::spawn(
        &args,
        b"sk-test-shared-state\n",
        &[("KEYWARD_STATE_PASSWORD", PASSWORD)],
    )
    .await
}

/// A 429 whose message says `what`.
fn refused_saying(reply: &Reply, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.text()
    );
    assert!(reply.text().contains(what), "{}", reply.text());
}

async fn post_with(addr: SocketAddr, token: Option<&str>) -> Reply {
    let body = r#"{"model":"gpt-5","input":"hi"}"#;
    match token {
        Some(token) => {
            let body = serde_json::from_str(body).unwrap();
            call(addr, "POST", "/v1/responses", token, Some(body)).await
        }
        None => client::post_responses(addr, body).await,
    }
}

/// Waits until every replica answers `token` with `want`; says how long that took.
async fn until_all(replicas: &[&Process], token: &str, want: StatusCode) -> Duration {
    let started = Instant::now();
    for replica in replicas {
        within("the replicas to see the change", async {
            while post_with(replica.addr, Some(token)).await.status != want {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
    started.elapsed()
}

#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_added_or_revoked_through_one_host_holds_on_every_replica() {
    let pg = Postgres::start();
    let upstream = upstream_with_usage().await;
    let tokens = ["--client-tokens", "state"];
    let a = replica(&pg, &upstream, "a", &tokens).await;
    let b = replica(&pg, &upstream, "b", &tokens).await;
    assert_eq!(
        post_with(a.addr, None).await.status,
        StatusCode::UNAUTHORIZED
    );

    let url = pg.url();
    let (ok, token, err) = keyward(&["token", "add", "ci", "--state", &url]).await;
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    assert!(
        token.starts_with("kw-") && err.contains("the state database"),
        "{err}"
    );
    // A second host's view: the table lists it, and holds no token.
    let (ok, list, _) = keyward(&["token", "list", "--json", "--state", &url]).await;
    assert!(ok && list.contains("\"ci\""), "{list}");
    let stored = pg.psql("SELECT name || ' ' || sha256 FROM keyward_clients");
    assert!(
        stored.starts_with("ci ") && !stored.contains(&token),
        "{stored}"
    );

    // --state-sync is 1 s: each replica sees the change at its next sync.
    let took = until_all(&[&a, &b], &token, StatusCode::OK).await;
    assert!(took < Duration::from_secs(3), "added: seen after {took:?}");
    let (ok, _, err) = keyward(&["token", "add", "ci", "--state", &url]).await;
    assert!(!ok && err.contains("already exists"), "{err}");
    // A client's groups are kept in the table too.
    let add_grouped = ["token", "add", "bot", "--group", "robots", "--state", &url];
    let (ok, _, err) = keyward(&add_grouped).await;
    assert!(ok, "{err}");
    let (ok, list, _) = keyward(&["token", "list", "--json", "--state", &url]).await;
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert!(ok && list[1]["name"] == "bot", "{list}");
    assert_eq!(list[1]["groups"], serde_json::json!(["robots"]), "{list}");

    let (ok, out, err) = keyward(&["token", "revoke", "ci", "--state", &url]).await;
    assert!(ok, "{out}{err}");
    let took = until_all(&[&a, &b], &token, StatusCode::UNAUTHORIZED).await;
    assert!(
        took < Duration::from_secs(3),
        "revoked: refused after {took:?}"
    );
    let (ok, _, err) = keyward(&["token", "revoke", "ci", "--state", &url]).await;
    assert!(!ok && err.contains("no client named"), "{err}");

    // A single keyward's ledger moves in; importing it again adds nothing.
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let line = |id: &str| {
        format!(
            r#"{{"time":"2026-11-30T10:00:00.000Z","ts":1795960800.0,"client":"old","model":"gpt-5","status":200,"upstream_status":200,"end":"completed","input_tokens":5,"cached_input_tokens":0,"output_tokens":7,"reasoning_tokens":0,"duration_ms":12.0,"ttfb_ms":3.0,"request_id":null{id}}}"#
        )
    };
    let text = format!("{}\n{}\n", line(""), line(r#","id":"abc-1""#));
    std::fs::write(&ledger, text).unwrap();
    for round in 0..2 {
        let (ok, out, err) = keyward(&[
            "state",
            "import",
            "--ledger-only",
            "--usage-log",
            ledger.to_str().unwrap(),
            "--replica",
            "old-host",
            "--state",
            &url,
        ])
        .await;
        assert!(ok, "{err}");
        let added = if round == 0 { "2 new" } else { "0 new" };
        assert!(out.contains("2 rows read") && out.contains(added), "{out}");
    }
    let imported = pg.psql(
        "SELECT replica, client, output_tokens FROM keyward_usage WHERE replica = 'old-host'",
    );
    assert_eq!(imported, "old-host|old|7\nold-host|old|7\n");

    // Giving both places is refused rather than guessed.
    let (ok, _, err) = keyward(&[
        "token",
        "list",
        "--state",
        &url,
        "--client-tokens",
        "/tmp/x",
    ])
    .await;
    assert!(!ok && err.contains("either"), "{err}");
}

/// Every keyward table's rows, as text.
fn dump(pg: &Postgres) -> String {
    let tables = pg.psql("SELECT tablename FROM pg_tables WHERE tablename LIKE 'keyward_%'");
    let mut text = String::new();
    for table in tables.lines() {
        text.push_str(&pg.psql(&format!("SELECT t::text FROM {table} t")));
    }
    text
}

/// Rows in the ledger's table.
fn rows(pg: &Postgres) -> u64 {
    pg.psql("SELECT count(*) FROM keyward_usage")
        .trim()
        .parse()
        .unwrap()
}

#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_for_10s_every_request_is_served_and_recorded_once() {
    let mut pg = Postgres::start();
    let upstream = upstream_with_usage().await;
    // Replica b keeps at most a few rows in memory: the rest wait in its home's unsent file.
    let a = replica(&pg, &upstream, "a", &[]).await;
    let b = replica(&pg, &upstream, "b", &["--usage-log-buffer", "2KiB"]).await;
    let readyz = |addr| async move { client::get(addr, "/readyz").await.json() };
    assert_eq!(readyz(a.addr).await["status"], "ready");

    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn({
        let (addrs, sent) = ([a.addr, b.addr], sent.clone());
        async move {
            let mut i = 0usize;
            while !*stopped.borrow_and_update() {
                let reply = post_with(addrs[i % 2], None).await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.stop();
    let down_at = sent.load(std::sync::atomic::Ordering::SeqCst);
    within("/readyz to say degraded", async {
        while readyz(a.addr).await["status"] != "degraded"
            || readyz(b.addr).await["status"] != "degraded"
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(readyz(b.addr).await["reason"], "state database unreachable");
    tokio::time::sleep(Duration::from_secs(9)).await;
    let while_down = sent.load(std::sync::atomic::Ordering::SeqCst) - down_at;
    assert!(
        while_down > 50,
        "requests were served meanwhile: {while_down}"
    );
    let unsent = b.dir.path().join("home/usage-unsent.jsonl");
    assert!(
        std::fs::metadata(&unsent).is_ok_and(|m| m.len() > 0),
        "beyond its buffer, replica b kept rows in its home"
    );
    pg.run();
    within("/readyz to say ready", async {
        while readyz(a.addr).await["status"] != "ready" || readyz(b.addr).await["status"] != "ready"
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send_replace(true);
    load.await.unwrap();
    let total = sent.load(std::sync::atomic::Ordering::SeqCst);

    within("every row to reach the table", async {
        while rows(&pg) < total {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    // Give a duplicate time to show up, then count again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rows(&pg), total, "exactly one row per request");
    let per_replica = pg.psql("SELECT replica, count(*) FROM keyward_usage GROUP BY 1 ORDER BY 1");
    assert!(
        per_replica.starts_with("a|") && per_replica.contains("\nb|"),
        "{per_replica}"
    );
    assert_eq!(
        std::fs::metadata(&unsent).unwrap().len(),
        0,
        "the unsent file was emptied"
    );
    // The key is in no row.
    let everything = dump(&pg);
    assert!(everything.contains("gpt-5"), "the dump reads the rows");
    assert!(!everything.contains("sk-test-shared-state"));

    // Rows still waiting when keyward is told to stop are sent before it exits.
    let mut c = replica(&pg, &upstream, "c", &[]).await;
    for _ in 0..3 {
        assert_eq!(post_with(c.addr, None).await.status, StatusCode::OK);
    }
    c.signal(libc::SIGTERM);
    assert_eq!(c.exit_code().await, Some(0));
    let from_c = pg.psql("SELECT count(*) FROM keyward_usage WHERE replica = 'c'");
    assert_eq!(from_c.trim(), "3", "sent at shutdown");
    let total = total + 3;

    // keyward usage reads the table: every replica's requests, with their tokens.
    let url = pg.url();
    let (ok, out, err) = keyward(&["usage", "--state", &url, "--json"]).await;
    assert!(ok, "{err}");
    let summed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summed[0]["requests"], total, "{out}");
    assert_eq!(summed[0]["output_tokens"], total * 9, "{out}");
}

#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_per_day_quota_holds_across_replicas() {
    let pg = Postgres::start();
    let upstream = upstream_with_usage().await;
    let quota = [
        "--quota",
        "default:tokens-per-day=100",
        "--state-sync",
        "200ms",
    ];
    let replicas = [
        replica(&pg, &upstream, "a", &quota).await,
        replica(&pg, &upstream, "b", &quota).await,
        replica(&pg, &upstream, "c", &quota).await,
    ];
    // One request at a time, turn by turn, each after the others have had two syncs to hear of
    // the last: the bound (one sync interval of each replica's traffic) is then zero, so the
    // quota stops the sixth request's successor (5 x 19 = 95 < 100 <= 6 x 19) everywhere.
    // Counted per replica, each would admit six of its own: eighteen.
    let mut admitted = 0;
    let mut refused_by = None;
    for i in 0..20 {
        let reply = post_with(replicas[i % 3].addr, None).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            refused_by = Some(i % 3);
            assert_eq!(
                reply.json()["error"]["code"],
                "rate_limit_exceeded",
                "{}",
                reply.text()
            );
            break;
        }
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        admitted += 1;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(
        admitted, 6,
        "admitted {admitted} requests of 19 tokens under 100 a day"
    );
    assert!(refused_by.is_some());
    for replica in &replicas {
        assert_eq!(
            post_with(replica.addr, None).await.status,
            StatusCode::TOO_MANY_REQUESTS,
            "every replica refuses once the total is over"
        );
    }
    // A replica started now learns the day's count from the database.
    let late = replica(&pg, &upstream, "d", &quota).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        post_with(late.addr, None).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "its first request is already over the day's quota"
    );
}

/// A credential's own quota counts what every replica sent with it.
#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_quota_holds_across_replicas() {
    let pg = Postgres::start();
    let upstream = upstream_with_usage().await;
    let dir = tempfile::tempdir().unwrap();
    let (key_a, _) = crate::routes::key_files(dir.path());
    let credential = format!(
        "a:api-key-file={key_a},upstream-url={},tokens-per-day=30",
        upstream.url()
    );
    let args = ["--credential", &credential, "--state-sync", "200ms"];
    let a = replica(&pg, &upstream, "a", &args).await;
    let b = replica(&pg, &upstream, "b", &args).await;
    // 19 tokens through a, then 19 through b (under 30 as far as b knows): 38, over.
    for replica in [&a, &b] {
        let reply = post_with(replica.addr, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    for replica in [&a, &b] {
        refused_saying(&post_with(replica.addr, None).await, "the credential `a`");
    }
    assert_eq!(upstream.requests().len(), 2);
}

#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_created_through_one_replica_is_its_creator_s_on_every_replica() {
    let pg = Postgres::start();
    let upstream = crate::support::api::start().await;
    let url = pg.url();
    let mut tokens = Vec::new();
    for name in ["alice", "bob"] {
        let (ok, token, err) = keyward(&["token", "add", name, "--state", &url]).await;
        assert!(ok, "{err}");
        tokens.push(token.trim().to_owned());
    }
    let (alice, bob) = (&tokens[0], &tokens[1]);
    let args = ["--client-tokens", "state"];
    let a = replica(&pg, &upstream, "a", &args).await;
    let b = replica(&pg, &upstream, "b", &args).await;

    // Created through a, polled through b at once: b asks the table about an id it does not know.
    let created = call(
        a.addr,
        "POST",
        "/v1/responses",
        alice,
        Some(serde_json::json!({"model": "gpt-5", "input": "hi", "background": true})),
    )
    .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/responses/{id}");
    let polled = call(b.addr, "GET", &path, alice, None).await;
    assert_eq!(polled.status, StatusCode::OK, "{}", polled.text());
    let before = upstream.requests().len();
    for replica in [&a, &b] {
        let refused = call(replica.addr, "GET", &path, bob, None).await;
        assert_eq!(
            refused.status,
            StatusCode::NOT_FOUND,
            "bob may not read alice's"
        );
        let refused = call(replica.addr, "POST", &format!("{path}/cancel"), bob, None).await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "nor cancel it");
    }
    assert_eq!(
        upstream.requests().len(),
        before,
        "nothing of bob's went upstream"
    );

    // Another created through a and never asked about through b: continued through b once b's
    // poll has seen it (one sync interval).
    let other = call(
        a.addr,
        "POST",
        "/v1/responses",
        alice,
        Some(serde_json::json!({"model": "gpt-5", "input": "hi"})),
    )
    .await;
    let other = other.json()["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let next = |previous: &str| {
        Some(
            serde_json::json!({"model": "gpt-5", "input": "more", "previous_response_id": previous}),
        )
    };
    let continued = call(b.addr, "POST", "/v1/responses", alice, next(&other)).await;
    assert_eq!(continued.status, StatusCode::OK, "{}", continued.text());
    let refused = call(b.addr, "POST", "/v1/responses", bob, next(&other)).await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "{}",
        refused.text()
    );
    assert_eq!(
        refused.json()["error"]["code"],
        "previous_response_not_found"
    );

    // No table holds a client token or the key; the owners' table holds hashes of ids, never
    // the ids.
    let everything = dump(&pg);
    assert!(everything.contains("alice"), "the dump reads the rows");
    for secret in [alice.as_str(), bob.as_str(), "sk-test-shared-state"] {
        assert!(!everything.contains(secret));
    }
    let table = pg.psql("SELECT encode(hash, 'hex') || ' ' || client FROM keyward_owners");
    assert!(table.contains(" alice") && !table.contains(&id), "{table}");
}

#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_held_on_one_replica_counts_against_a_concurrent_quota_on_another() {
    let pg = Postgres::start();
    let (upstream, mut streams) = FakeUpstream::driven().await;
    let quota = ["--quota", "default:concurrent=1", "--state-sync", "200ms"];
    let a = replica(&pg, &upstream, "a", &quota).await;
    let b = replica(&pg, &upstream, "b", &quota).await;

    // The upstream's streams stay open until the test drops them: what is told is the head.
    let open = |addr: SocketAddr| {
        client::send(
            addr,
            http::Request::post("/v1/responses")
                .header("host", addr.to_string())
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    br#"{"stream":true}"#,
                )))
                .unwrap(),
        )
    };
    // A stream open through a: its slot is the client's one.
    let held = open(a.addr).await;
    assert_eq!(held.status(), StatusCode::OK);
    let tx = within("the upstream stream", streams.recv()).await.unwrap();
    // Two syncs later, b knows.
    tokio::time::sleep(Duration::from_millis(700)).await;
    refused_saying(&post_with(b.addr, None).await, "streams at once");

    // The stream ends: after the next syncs, b admits again.
    drop(tx);
    drop(held);
    within("b to admit again", async {
        loop {
            if open(b.addr).await.status() == StatusCode::OK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loose_or_unreadable_unsent_file_is_refused_or_set_aside_and_loses_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let pg = Postgres::start();
    let upstream = upstream_with_usage().await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let unsent = home.join("usage-unsent.jsonl");
    let row = r#"{"replica":"a","time":"2026-11-30T10:00:00.000Z","ts":1795960800.0,"client":"left-over","model":"gpt-5","status":200,"upstream_status":200,"end":"completed","input_tokens":5,"cached_input_tokens":0,"output_tokens":7,"reasoning_tokens":0,"duration_ms":12.0,"ttfb_ms":3.0,"request_id":null,"id":"old-1"}"#;
    std::fs::write(&unsent, format!("{row}\n{{\"replica\":\"a\",\"ti")).unwrap();

    // Readable by others: refused at start, with the fix.
    std::fs::set_permissions(&unsent, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = replica_args(&pg, &upstream, "a", &["--home", home.to_str().unwrap()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cmd = crate::support::keyward::command(&args, &[("KEYWARD_STATE_PASSWORD", PASSWORD)]);
    let child = crate::support::keyward::spawn_fed(cmd, b"sk-test-shared-state\n").await;
    let output = within("keyward to exit", child.wait_with_output())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("chmod 600"), "{stderr}");

    // Private again: the row that reads is sent; the file, with the line that does not, is set
    // aside under another name rather than emptied.
    std::fs::set_permissions(&unsent, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _a = replica(&pg, &upstream, "a", &["--home", home.to_str().unwrap()]).await;
    within("the readable row to reach the table", async {
        while pg
            .psql("SELECT count(*) FROM keyward_usage WHERE client = 'left-over'")
            .trim()
            != "1"
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let aside: Vec<_> = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("usage-unsent.jsonl.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let kept = std::fs::read_to_string(home.join(&aside[0])).unwrap();
    assert!(
        kept.contains("left-over") && kept.ends_with("\"ti"),
        "kept as it was: {kept}"
    );
}

#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_s_usage_page_shows_the_requests_of_all_of_them() {
    let pg = Postgres::start();
    let upstream = upstream_with_usage().await;
    let extra = ["--metrics-listen", "127.0.0.1:0", "--state-sync", "200ms"];
    let a = replica(&pg, &upstream, "a", &extra).await;
    let b = replica(&pg, &upstream, "b", &extra).await;
    for addr in [a.addr, a.addr, b.addr] {
        assert_eq!(post_with(addr, None).await.status, StatusCode::OK);
    }
    let me = crate::support::me();
    // Each replica's page and each client's own usage: the three requests, 19 tokens each.
    let started = replica(&pg, &upstream, "c", &extra).await;
    for replica in [&a, &b, &started] {
        let metrics = metrics_addr(replica);
        let fetch = || client::get_json(metrics, "/usage");
        let page = json_when("every replica's requests on the page", fetch, |page| {
            page["today"]["requests"] == 3
        })
        .await;
        assert_eq!(page["clients"][0]["client"], me, "{page}");
        assert_eq!(page["clients"][0]["today"]["output_tokens"], 27);
        let own = client::get(replica.addr, "/keyward/usage").await.json();
        assert_eq!(own["today"]["input_tokens"], 30, "{own}");
    }
}

/// Where `replica` serves its metrics and usage page.
fn metrics_addr(replica: &Process) -> SocketAddr {
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&replica.server_info).unwrap()).unwrap();
    info["metrics"].as_str().unwrap().parse().unwrap()
}
