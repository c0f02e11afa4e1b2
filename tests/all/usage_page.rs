//! The operator's usage page in a real browser: headless Chromium (Debian's `chromium`) renders
//! `GET /usage` of a keyward restarted over its ledger. The rendered DOM must hold the ledger's
//! numbers, no name a client chose may become markup, the page's own Content-Security-Policy
//! must not block anything it uses, and screenshots (desktop and phone widths) are kept under
//! `target/tmp/usage-page/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::support::client;
use crate::support::keyward::start_for;
use crate::usage::{ledger_line, usage_upstream, write_ledger};

const CHROMIUM: &str = "/usr/bin/chromium";

/// What Chromium rendered, and what it said on stderr.
struct Rendered {
    dom: String,
    log: String,
}

/// Runs headless Chromium on `url`: `--dump-dom`, or a screenshot to `png` at `width`.
async fn chromium(url: &str, profile: &Path, screenshot: Option<(&Path, u32)>) -> Rendered {
    let mut cmd = tokio::process::Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        // The test may run as root, where Chromium's own sandbox cannot start.
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .env("HOME", profile)
    .kill_on_drop(true);
    match screenshot {
        Some((png, width)) => {
            cmd.arg(format!("--window-size={width},2000"))
                .arg(format!("--screenshot={}", png.display()));
        }
        None => {
            cmd.arg("--dump-dom");
        }
    }
    cmd.arg(url);
    let output = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium did not finish within 90 s")
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Rendered {
        dom: String::from_utf8(output.stdout).unwrap(),
        log: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The number in the cell `data-k="{key}"` of the first element with `{anchor}` (an attribute
/// as the DOM writes it), commas removed.
fn cell(dom: &str, anchor: &str, key: &str) -> u64 {
    let start = dom
        .find(anchor)
        .unwrap_or_else(|| panic!("no {anchor} in the page: {dom}"));
    let rest = &dom[start..];
    let marker = format!("data-k=\"{key}\">");
    let at = rest
        .find(&marker)
        .unwrap_or_else(|| panic!("no {key} after {anchor}"))
        + marker.len();
    let text: String = rest[at..].chars().take_while(|&c| c != '<').collect();
    text.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("{key} after {anchor} is not a number: {text:?}"))
}

async fn start(
    upstream: &str,
    ledger: &Path,
) -> (SocketAddr, SocketAddr, crate::support::keyward::Started) {
    let quota = format!("{}:tokens-per-day=1000", crate::support::me());
    let (addr, keyward) = start_for(
        upstream,
        &[
            "--usage-log",
            ledger.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
            "--quota",
            &quota,
        ],
    )
    .await;
    let metrics = keyward.metrics.unwrap();
    (addr, metrics, keyward)
}

#[tokio::test]
#[cfg_attr(
    not(keyward_chromium),
    ignore = "needs Debian's chromium at /usr/bin/chromium (scripts/test installs it as root)"
)]
async fn the_usage_page_shows_the_ledgers_numbers_in_a_browser_after_a_restart() {
    let upstream = usage_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let hostile = "<script>alert(1)</script>";
    write_ledger(
        &ledger,
        &[
            ledger_line("bob", "o3", 3, 1000, 300),
            ledger_line(hostile, "<img src=x>", 0, 5, 5),
        ],
    );

    // A first run serves two requests and stops; the page is read from the second.
    let (addr, _, first) = start(&upstream.url(), &ledger).await;
    for _ in 0..2 {
        let body = json!({ "model": "gpt-5", "input": "hi" }).to_string();
        assert_eq!(
            client::post_responses(addr, &body).await.status,
            StatusCode::OK
        );
    }
    crate::support::within("both lines in the ledger", async {
        while std::fs::read_to_string(&ledger).unwrap().lines().count() < 4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    first.shutdown();
    first.wait().await;
    let (_, metrics, _second) = start(&upstream.url(), &ledger).await;

    let url = format!("http://{metrics}/usage");
    let profile = tempfile::tempdir().unwrap();
    let page = chromium(&url, profile.path(), None).await;
    let dom = &page.dom;
    let me = format!("data-client=\"{}\"", crate::support::me());
    // 100 input and 20 output tokens per request, as the upstream reported them.
    assert_eq!(cell(dom, &me, "tokens-today"), 240);
    assert_eq!(cell(dom, &me, "requests"), 2);
    assert_eq!(cell(dom, &me, "cached"), 80);
    assert_eq!(cell(dom, "data-client=\"bob\"", "tokens-30d"), 1300);
    assert_eq!(cell(dom, "data-client=\"bob\"", "tokens-today"), 0);
    assert_eq!(cell(dom, "id=\"total-today\"", "tokens"), 250);
    assert_eq!(cell(dom, "id=\"total-30d\"", "requests"), 4);
    let quota_row = format!("{me} data-quota=\"tokens_per_day\"");
    assert_eq!(cell(dom, &quota_row, "used"), 240);
    assert_eq!(cell(dom, &quota_row, "left"), 760);
    assert_eq!(cell(dom, "data-model=\"o3\"", "tokens"), 1300);
    assert!(dom.contains("<svg class=\"chart\""), "the per-day chart");
    // What a client named stays text.
    assert!(
        dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{dom}"
    );
    assert!(!dom.contains("<script") && !dom.contains("<img"), "{dom}");
    assert!(
        !page.log.contains("Content Security Policy") && !page.log.contains("Refused to"),
        "the page's own policy blocked part of it: {}",
        page.log
    );

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("usage-page");
    std::fs::create_dir_all(&shots).unwrap();
    for (name, width) in [("desktop.png", 1200), ("phone.png", 390)] {
        let png = shots.join(name);
        let _ = std::fs::remove_file(&png);
        let shot = chromium(&url, profile.path(), Some((&png, width))).await;
        let bytes = std::fs::read(&png).unwrap_or_else(|_| panic!("no screenshot: {}", shot.log));
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{name}"
        );
        eprintln!("usage page screenshot: {}", png.display());
    }
}
