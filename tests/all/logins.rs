//! Several ChatGPT logins in one home: `keyward login --name`, `status`, `logout --name`, and
//! `serve --login NAME`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::support::chatgpt::{ACCOUNT, EMAIL, FakeIssuer, Minted, fake_backend};
use crate::support::client;
use crate::support::keyward::command;
use crate::support::within;

async fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let output = within(
        "keyward to finish",
        command(args, &[])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `keyward login --import-codex` of `minted` into `home`, under `name` if given.
async fn import(home: &Path, minted: &Minted, name: Option<&str>) -> String {
    let codex = home.with_extension(format!("codex-{}", name.unwrap_or("default")));
    std::fs::create_dir_all(&codex).unwrap();
    let auth = json!({"auth_mode": "chatgpt", "tokens": {"id_token": minted.id_token,
        "access_token": minted.access_token, "refresh_token": minted.refresh_token,
        "account_id": ACCOUNT}});
    std::fs::write(codex.join("auth.json"), auth.to_string()).unwrap();
    let mut args = vec!["login", "--import-codex", codex.to_str().unwrap()];
    args.extend(["--home", home.to_str().unwrap()]);
    if let Some(name) = name {
        args.extend(["--name", name]);
    }
    let (code, out, err) = run(&args).await;
    assert_eq!(code, Some(0), "{out}{err}");
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn named_logins_are_kept_apart_listed_served_and_signed_out_one_at_a_time() {
    let issuer = FakeIssuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("h");
    let home_arg = home.to_str().unwrap();
    let (first, team) = (issuer.mint(), issuer.mint());

    let said = import(&home, &first, None).await;
    assert!(said.contains(&format!("Signed in as {EMAIL}")), "{said}");
    let said = import(&home, &team, Some("team")).await;
    assert!(
        said.contains(&format!(
            "Signed in as {EMAIL} (login team, account {ACCOUNT}"
        )),
        "{said}"
    );
    // Each in its own private file; the default one where it has always been.
    let stored = |path: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let team_file = home.join("logins/team/login.json");
    assert_eq!(
        stored(&home.join("login.json"))["refresh_token"],
        first.refresh_token.as_str()
    );
    assert_eq!(
        stored(&team_file)["refresh_token"],
        team.refresh_token.as_str()
    );
    assert_eq!(mode(&team_file), 0o600);
    assert_eq!(mode(&home.join("logins/team")), 0o700);

    // `status` shows every login; `--name` one.
    let (code, text, _) = run(&["status", "--home", home_arg]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("Login default:\nSigned in to ChatGPT.")
            && text.contains("Login team:\nSigned in to ChatGPT.")
            && text.contains("logins/team/login.json"),
        "{text}"
    );
    let (code, lines, _) = run(&["status", "--home", home_arg, "--json"]).await;
    assert_eq!(code, Some(0));
    let shown: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(shown.len(), 2, "{lines}");
    assert_eq!(
        (&shown[0]["name"], &shown[0]["state"]),
        (&json!("default"), &json!("signed_in"))
    );
    assert_eq!(
        (&shown[1]["name"], &shown[1]["state"]),
        (&json!("team"), &json!("signed_in"))
    );
    for output in [&text, &lines] {
        assert!(!output.contains(&team.access_token) && !output.contains(&team.refresh_token));
    }

    // `serve --login team` sends the team login's token.
    let backend = fake_backend(issuer.state.clone()).await;
    let (addr, _keyward) =
        crate::chatgpt::chatgpt_keyward(&issuer, &backend, &home, &["--login", "team"]).await;
    let req = Request::post("/v1/responses")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(r#"{"model":"gpt-5","input":"hi"}"#)))
        .unwrap();
    let reply = client::read(client::send(addr, req).await).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = backend.next_request().await;
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {}", team.access_token).as_str()
    );
    // The ledger names the login that answered.
    let ledger = home.join("usage.jsonl");
    let line = within("the ledger line", async {
        loop {
            if let Some(line) = std::fs::read_to_string(&ledger)
                .ok()
                .and_then(|text| text.lines().next().map(str::to_owned))
            {
                return line;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["credential"], "chatgpt:team", "{line}");

    // Signing out of one leaves the other.
    let (code, out, err) = run(&[
        "logout",
        "--home",
        home_arg,
        "--name",
        "team",
        "--issuer",
        &issuer.url(),
    ])
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        issuer.state.lock().unwrap().revoked,
        vec![team.refresh_token.clone()]
    );
    assert!(!team_file.exists());
    let (code, text, _) = run(&["status", "--home", home_arg, "--name", "team"]).await;
    assert_eq!(code, Some(1));
    assert!(
        text.contains("Sign in with `keyward login --name team`"),
        "{text}"
    );
    let (code, _, _) = run(&["status", "--home", home_arg, "--name", "default"]).await;
    assert_eq!(code, Some(0), "the default login stays");

    // A name that is not one is refused before anything is touched.
    let (code, _, err) = run(&[
        "login",
        "--home",
        home_arg,
        "--name",
        "../x",
        "--device-code",
    ])
    .await;
    assert_eq!(code, Some(2));
    assert!(err.contains("is not a login name"), "{err}");
}

/// Two logins, each a credential of its own: the metrics and the usage page show each one's
/// token expiry and plan windows, by credential (not only the first login's).
#[tokio::test]
async fn each_logins_token_and_plan_show_in_the_metrics_and_the_usage_page() {
    use crate::support::keyward::{Process, add_client_token};
    let issuer = FakeIssuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("h");
    import(&home, &issuer.mint(), None).await;
    import(&home, &issuer.mint(), Some("team")).await;
    let backend = fake_backend(issuer.state.clone()).await;
    let tokens = tmp.path().join("tokens.json");
    let alice = add_client_token(&tokens, "alice").await;
    let bob = add_client_token(&tokens, "bob").await;
    let upstream = format!("http://{}/backend-api/codex/responses", backend.addr);
    let args = [
        "--home".to_owned(),
        home.to_str().unwrap().to_owned(),
        "--issuer".to_owned(),
        issuer.url(),
        "--client-tokens".to_owned(),
        tokens.to_str().unwrap().to_owned(),
        "--metrics-listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--credential".to_owned(),
        format!("mine:chatgpt=default,upstream-url={upstream}"),
        "--credential".to_owned(),
        format!("team:chatgpt=team,upstream-url={upstream}"),
        "--route".to_owned(),
        "alice=mine".to_owned(),
        "--route".to_owned(),
        "*=team".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let keyward = Process::spawn(&args, b"", &[]).await;
    for token in [&alice, &bob] {
        let reply = client::call(
            keyward.addr,
            "POST",
            "/v1/responses",
            token,
            Some(json!({"model": "gpt-5", "input": "hi"})),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(&keyward.server_info).unwrap()).unwrap();
    let metrics: std::net::SocketAddr = info["metrics"].as_str().unwrap().parse().unwrap();
    let text = client::get(metrics, "/metrics").await.text();
    for credential in ["mine", "team"] {
        assert!(
            text.contains(&format!(
                r#"keyward_chatgpt_limit_used_percent{{credential="{credential}",window="primary"}} 42.5"#
            )) && text.contains(&format!(
                r#"keyward_chatgpt_access_token_expires_in_seconds{{credential="{credential}"}}"#
            )),
            "{credential}: {text}"
        );
    }
    let page = client::get_json(metrics, "/usage").await.json();
    let whose: Vec<&str> = page["plan"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["window"] == "primary")
        .map(|w| w["credential"].as_str().unwrap())
        .collect();
    assert_eq!(whose, ["mine", "team"], "{page}");
    let html = client::get(metrics, "/usage").await.text();
    assert!(html.contains("team: primary"), "{html}");
}
