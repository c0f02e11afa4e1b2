//! The usage views: each client's own `GET /keyward/usage`, and the operator's `GET /usage` on
//! the metrics listener (JSON here; the page in a real browser, in `usage_page.rs`).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde_json::{Value, json};

use crate::support::client::{self, call};
use crate::support::keyward::{add_client_token, start_for};
use crate::support::upstream::{self, FakeUpstream, Seen};

/// An upstream that answers every create with a whole response and its usage: 100 input tokens
/// (40 cached) and 20 output (5 reasoning).
pub async fn usage_upstream() -> FakeUpstream {
    FakeUpstream::start(|seen: Seen| async move {
        let request: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        let body = json!({
            "id": format!("resp_{}", seen.headers.len()),
            "object": "response",
            "status": "completed",
            "model": request["model"],
            "output": [],
            "usage": {
                "input_tokens": 100,
                "input_tokens_details": { "cached_tokens": 40 },
                "output_tokens": 20,
                "output_tokens_details": { "reasoning_tokens": 5 },
                "total_tokens": 120
            }
        });
        upstream::json(StatusCode::OK, &body.to_string())
    })
    .await
}

/// A ledger line for `client`, `days_ago` days before now, written as keyward writes them.
pub fn ledger_line(client: &str, model: &str, days_ago: u64, input: u64, output: u64) -> String {
    let at = SystemTime::now() - Duration::from_secs(days_ago * 86_400);
    let ts = at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    json!({
        "time": humantime::format_rfc3339_millis(at).to_string(),
        "ts": ts,
        "client": client,
        "endpoint": "responses.create",
        "model": model,
        "status": 200,
        "upstream_status": 200,
        "end": "completed",
        "input_tokens": input,
        "cached_input_tokens": 0,
        "output_tokens": output,
        "reasoning_tokens": 0,
        "duration_ms": 12.5,
        "ttfb_ms": 3.0,
        "request_id": null,
        "id": format!("test-{client}-{days_ago}-{input}"),
    })
    .to_string()
}

/// Writes `lines` as a private ledger file.
pub fn write_ledger(path: &Path, lines: &[String]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn create() -> Value {
    json!({ "model": "gpt-5", "input": "hi" })
}

/// The JSON `fetch` answers, once `ready` says it holds what the test waits for (usage is
/// counted as a request's account phase ends, just after its answer).
pub async fn json_when<F, Fut>(what: &str, mut fetch: F, ready: impl Fn(&Value) -> bool) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = client::Reply>,
{
    crate::support::within(what, async {
        loop {
            let reply = fetch().await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            let value = reply.json();
            if ready(&value) {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// `GET /keyward/usage` with `token`, once the answer says `requests` today.
async fn own_usage_once(addr: std::net::SocketAddr, token: &str, requests: u64) -> Value {
    let fetch = || call(addr, "GET", "/keyward/usage", token, None);
    json_when("the usage to count every request", fetch, |usage| {
        usage["today"]["requests"] == requests
    })
    .await
}

#[tokio::test]
async fn each_client_reads_its_own_usage_and_quota_headroom_and_no_one_elses() {
    let upstream = usage_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    // Before this start: bob three days ago, carol today.
    write_ledger(
        &ledger,
        &[
            ledger_line("bob", "o3", 3, 1000, 300),
            ledger_line("carol", "gpt-5", 0, 7, 7),
        ],
    );
    let tokens = dir.path().join("clients.json");
    let alice = add_client_token(&tokens, "alice").await;
    let bob = add_client_token(&tokens, "bob").await;
    let (addr, _keyward) = start_for(
        &upstream.url(),
        &[
            "--client-tokens",
            tokens.to_str().unwrap(),
            "--usage-log",
            ledger.to_str().unwrap(),
            "--quota",
            "alice:tokens-per-day=1000,requests-per-minute=10",
        ],
    )
    .await;
    for _ in 0..2 {
        let reply = call(addr, "POST", "/v1/responses", &alice, Some(create())).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }

    let mine = own_usage_once(addr, &alice, 2).await;
    assert_eq!(mine["client"], "alice");
    let today = &mine["today"];
    assert_eq!(
        [
            &today["input_tokens"],
            &today["cached_input_tokens"],
            &today["output_tokens"],
            &today["reasoning_tokens"],
            &today["estimated"],
            &today["errors"]
        ],
        [200, 80, 40, 10, 0, 0],
        "{today}"
    );
    assert_eq!(mine["this_month"]["requests"], 2);
    assert_eq!(mine["last_30_days"]["output_tokens"], 40);
    let days = mine["days"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    assert_eq!(days[29]["requests"], 2, "today is the last day");
    assert_eq!(mine["by_model"][0]["model"], "gpt-5");
    assert_eq!(mine["by_model"][0]["requests"], 2);
    let quotas = mine["quotas"].as_array().unwrap();
    let tokens_quota = quotas
        .iter()
        .find(|q| q["quota"] == "tokens_per_day")
        .unwrap();
    assert_eq!(
        [
            &tokens_quota["limit"],
            &tokens_quota["used"],
            &tokens_quota["left"]
        ],
        [1000, 240, 760]
    );
    assert!(tokens_quota["resets_at"].is_string(), "{tokens_quota}");
    let per_minute = quotas
        .iter()
        .find(|q| q["quota"] == "requests_per_minute")
        .unwrap();
    assert_eq!(
        per_minute["used"], 2,
        "reading one's usage is not a request that counts"
    );
    let text = mine.to_string();
    assert!(
        !text.contains("bob") && !text.contains("carol"),
        "another client's name: {text}"
    );

    // Bob's line from before the start, read back from the ledger.
    let theirs = own_usage_once(addr, &bob, 0).await;
    assert_eq!(theirs["last_30_days"]["requests"], 1);
    assert_eq!(theirs["last_30_days"]["input_tokens"], 1000);
    assert_eq!(theirs["days"][26]["output_tokens"], 300, "three days ago");
    assert_eq!(theirs["quotas"], json!([]), "no quota applies to bob");
    assert!(!theirs.to_string().contains("alice"));

    // Identified and refused like any request.
    let none = client::get(addr, "/keyward/usage").await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{}", none.text());
    let wrong = call(addr, "GET", "/keyward/usage", "kw-not-a-token", None).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_client_the_access_policy_refuses_cannot_read_usage() {
    let upstream = usage_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let (addr, _keyward) = start_for(
        &upstream.url(),
        &[
            "--usage-log",
            ledger.to_str().unwrap(),
            "--allow-user",
            "59999",
        ],
    )
    .await;
    let refused = client::get(addr, "/keyward/usage").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());
}

#[tokio::test]
async fn without_a_ledger_or_metrics_usage_is_not_kept_and_says_how_to_keep_it() {
    let upstream = usage_upstream().await;
    let (addr, _keyward) = start_for(&upstream.url(), &[]).await;
    let reply = client::get(addr, "/keyward/usage").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.text().contains("--usage-log"), "{}", reply.text());
}

#[tokio::test]
async fn the_operators_usage_holds_every_client_with_the_ledgers_numbers() {
    let upstream = usage_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    write_ledger(
        &ledger,
        &[
            ledger_line("bob", "o3", 3, 1000, 300),
            ledger_line("carol", "gpt-5", 0, 7, 7),
            // Older than the page's 30 days: in no period.
            ledger_line("dave", "gpt-5", 45, 5, 5),
            // A line that names its credential.
            {
                let mut line: serde_json::Value =
                    serde_json::from_str(&ledger_line("erin", "gpt-5", 2, 40, 4)).unwrap();
                line["credential"] = "plan".into();
                line.to_string()
            },
        ],
    );
    let (addr, keyward) = start_for(
        &upstream.url(),
        &[
            "--usage-log",
            ledger.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let metrics = keyward.metrics.unwrap();
    let reply = client::post_responses(addr, &create().to_string()).await;
    assert_eq!(reply.status, StatusCode::OK);
    let fetch = || client::get_json(metrics, "/usage");
    let usage = json_when("the request to be counted", fetch, |usage| {
        usage["today"]["requests"] == 2
    })
    .await;
    let me = crate::support::me();
    let row = |name: &str| {
        usage["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["client"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no row for {name}: {usage}"))
    };
    assert_eq!(row(me)["today"]["input_tokens"], 100);
    assert_eq!(row("bob")["last_30_days"]["output_tokens"], 300);
    assert_eq!(row("bob")["today"]["requests"], 0);
    assert_eq!(row("carol")["today"]["requests"], 1);
    assert!(
        !usage.to_string().contains("dave"),
        "45 days back is outside every period"
    );
    assert_eq!(usage["last_30_days"]["input_tokens"], 1000 + 7 + 40 + 100);
    // By credential: erin's line read back, and the request made here (the older lines name
    // none); the most tokens first.
    let credentials = usage["by_credential"].as_array().unwrap();
    assert_eq!(credentials.len(), 2, "{usage}");
    assert_eq!(credentials[0]["credential"], "api-key");
    assert_eq!(credentials[0]["input_tokens"], 100);
    assert_eq!(credentials[1]["credential"], "plan");
    assert_eq!(credentials[1]["requests"], 1);
    let days = usage["days"].as_array().unwrap();
    assert_eq!(days[26]["by_client"]["bob"]["input_tokens"], 1000);
    // Without Accept: application/json, the page (the browser test reads it).
    let page = client::get(metrics, "/usage").await;
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert!(page.text().contains("By credential"), "{}", page.text());
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-"),
        "{csp}"
    );
    let elsewhere = client::get(metrics, "/nowhere").await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    assert!(
        elsewhere.text().contains("GET /usage"),
        "{}",
        elsewhere.text()
    );
}
