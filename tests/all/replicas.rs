//! Several replicas sharing one ChatGPT login through a real PostgreSQL (`--state`): the login
//! stored encrypted, exactly one refresh at a time across replicas, a replica killed while it
//! holds the refresh lock. Skipped (with a line) where PostgreSQL is not installed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use http::StatusCode;

use crate::support::chatgpt::{FakeIssuer, Minted, fake_backend, seed_login};
use crate::support::client;
use crate::support::keyward::Process;
use crate::support::postgres::{PASSWORD, Postgres, keyward};
use crate::support::within;

/// A key file, and `minted` imported into the database from a home of its own.
async fn shared_login(pg: &Postgres, dir: &Path, minted: &Minted) -> String {
    let key = dir.join("state.key");
    let key_arg = key.to_str().unwrap().to_owned();
    let (ok, out, err) = keyward(&["state", "init-key", &key_arg]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(std::fs::metadata(&key).unwrap().len(), 32);
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (ok, _, err) = keyward(&["state", "init-key", &key_arg]).await;
    assert!(
        !ok && err.contains("exists"),
        "an existing key is never overwritten: {err}"
    );

    import_login(pg, &dir.join("importing-home"), minted, &key_arg).await;
    key_arg
}

/// `minted`, seeded in `home`, copied into the database with `keyward state import`.
async fn import_login(pg: &Postgres, home: &Path, minted: &Minted, key: &str) {
    seed_login(home, minted);
    let url = pg.url();
    let (ok, out, err) = keyward(&[
        "state",
        "import",
        "--home",
        home.to_str().unwrap(),
        "--state",
        &url,
        "--state-key-file",
        key,
    ])
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("Copied the login"), "{out}");
}

/// A replica: `serve --auth chatgpt --state` with a home of its own.
async fn replica(
    issuer: &FakeIssuer,
    backend: &crate::support::upstream::FakeUpstream,
    pg: &Postgres,
    key: &str,
    home: &Path,
) -> Process {
    replica_with(issuer, backend, pg, key, home, &[]).await
}

async fn replica_with(
    issuer: &FakeIssuer,
    backend: &crate::support::upstream::FakeUpstream,
    pg: &Postgres,
    key: &str,
    home: &Path,
    extra: &[&str],
) -> Process {
    let upstream = format!("http://{}/backend-api/codex/responses", backend.addr);
    let (issuer_url, url) = (issuer.url(), pg.url());
    let mut args = vec![
        "serve",
        "--auth",
        "chatgpt",
        "--upstream-url",
        &upstream,
        "--issuer",
        &issuer_url,
        "--home",
        home.to_str().unwrap(),
        "--state",
        &url,
        "--state-key-file",
        key,
    ];
    args.extend_from_slice(extra);
    Process::spawn(&args, b"", &[("KEYWARD_STATE_PASSWORD", PASSWORD)]).await
}

#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_refresh_a_shared_login_once() {
    let pg = Postgres::start();
    let issuer = FakeIssuer::start().await;
    issuer.state.lock().unwrap().refresh_delay = Duration::from_millis(300);
    let backend = fake_backend(issuer.state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let minted = issuer.mint();
    let key = shared_login(&pg, dir.path(), &minted).await;

    let mut replicas = Vec::new();
    for n in 0..3 {
        let home = dir.path().join(format!("replica-{n}"));
        replicas.push(replica(&issuer, &backend, &pg, &key, &home).await);
    }
    // The access token stops working everywhere at once, as at its expiry.
    issuer.revoke_access(&minted.access_token);
    let mut requests = Vec::new();
    for i in 0..60 {
        let addr = replicas[i % 3].addr;
        requests.push(tokio::spawn(async move {
            client::post_responses(addr, r#"{"model":"gpt-5","input":"hi"}"#).await
        }));
    }
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(issuer.reuses(), 0, "no refresh token was used twice");
    assert_eq!(
        issuer.refreshes(),
        1,
        "one replica refreshed; the others adopted its tokens"
    );

    // Stored encrypted: the table's bytes hold no token.
    let sealed = pg.psql("SELECT encode(sealed, 'escape') FROM keyward_login");
    assert!(!sealed.is_empty());
    for secret in [&minted.access_token, &minted.refresh_token] {
        assert!(
            !sealed.contains(secret.as_str()),
            "a token is readable in the table"
        );
    }
    let dump = pg.psql("SELECT encode(sealed, 'hex') FROM keyward_login");
    assert!(!dump.contains(&hex(&minted.refresh_token)));
    // status reads it through the database.
    let (ok, out, err) = keyward(&[
        "status",
        "--home",
        dir.path().join("replica-0").to_str().unwrap(),
        "--state",
        &pg.url(),
        "--state-key-file",
        &key,
    ])
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("state database"), "{out}");
}

#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_refreshing_leaves_the_lock_and_the_login_to_the_others() {
    let pg = Postgres::start();
    let issuer = FakeIssuer::start().await;
    let backend = fake_backend(issuer.state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let minted = issuer.mint();
    let key = shared_login(&pg, dir.path(), &minted).await;
    let mut first = replica(&issuer, &backend, &pg, &key, &dir.path().join("a")).await;
    let second = replica(&issuer, &backend, &pg, &key, &dir.path().join("b")).await;

    // The first replica takes the lock and waits on a slow issuer; it dies there.
    issuer.state.lock().unwrap().refresh_delay = Duration::from_secs(3);
    issuer.revoke_access(&minted.access_token);
    let addr = first.addr;
    let stuck = tokio::spawn(async move {
        let req = http::Request::post("/v1/responses")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"model":"gpt-5","input":"hi"}"#,
            )))
            .unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let _ = sender.send_request(req).await;
    });
    within("the first replica to ask the issuer", async {
        while !issuer
            .server
            .requests()
            .iter()
            .any(|r| r.uri.starts_with("/oauth/token"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    first.signal(libc::SIGKILL);
    let _ = first.exit_code().await;
    stuck.abort();
    issuer.state.lock().unwrap().refresh_delay = Duration::ZERO;

    // The second replica gets the lock, refreshes, and serves.
    let reply = client::post_responses(second.addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(issuer.reuses(), 0, "no refresh token was used twice");
    // And the login is still valid: a third replica starts on it and serves too.
    let third = replica(&issuer, &backend, &pg, &key, &dir.path().join("c")).await;
    let reply = client::post_responses(third.addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_key_is_a_clear_error() {
    let pg = Postgres::start();
    let issuer = FakeIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _key = shared_login(&pg, dir.path(), &issuer.mint()).await;
    let other = dir.path().join("other.key");
    let (ok, _, err) = keyward(&["state", "init-key", other.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = keyward(&[
        "status",
        "--home",
        dir.path().join("h").to_str().unwrap(),
        "--state",
        &pg.url(),
        "--state-key-file",
        other.to_str().unwrap(),
    ])
    .await;
    assert!(!ok);
    assert!(
        err.contains("cannot be decrypted with --state-key-file"),
        "{err}"
    );
    assert!(
        err.contains("every replica needs the same key file"),
        "{err}"
    );

    // A password in the URL is refused before anything connects.
    let url = pg
        .url()
        .replace("keyward@", &format!("keyward:{PASSWORD}@"));
    let (ok, _, err) = keyward(&["state", "migrate", "--state", &url]).await;
    assert!(!ok);
    assert!(
        err.contains("KEYWARD_STATE_PASSWORD") && !err.contains(PASSWORD),
        "{err}"
    );
    // The schema is made once, whoever asks.
    let (ok, out, err) = keyward(&["state", "migrate", "--state", &pg.url()]).await;
    assert!(ok, "{err}");
    let version = pg.psql("SELECT version FROM keyward_schema");
    assert!(
        out.contains(&format!("schema version {}.", version.trim())),
        "{out}"
    );
    assert!(version.trim().parse::<u32>().unwrap() >= 5, "{version}");
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_the_cached_token_serves_until_it_expires() {
    let mut pg = Postgres::start();
    let issuer = FakeIssuer::start().await;
    let backend = fake_backend(issuer.state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    // An access token that lives 8 s, refreshed when 3 s are left.
    issuer.state.lock().unwrap().access_ttl = 8;
    let minted = issuer.mint();
    let born = std::time::Instant::now();
    issuer.state.lock().unwrap().access_ttl = 3600;
    let key = shared_login(&pg, dir.path(), &minted).await;
    let home = dir.path().join("r");
    let replica = replica_with(
        &issuer,
        &backend,
        &pg,
        &key,
        &home,
        &["--refresh-margin", "3s"],
    )
    .await;
    let readyz = |addr| async move { client::get(addr, "/readyz").await.json() };
    assert_eq!(readyz(replica.addr).await["status"], "ready");

    pg.stop();
    within("/readyz to say degraded", async {
        while readyz(replica.addr).await["status"] != "degraded" {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(
        readyz(replica.addr).await["reason"],
        "state database unreachable"
    );
    let served = client::post_responses(replica.addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
    assert_eq!(
        served.status,
        StatusCode::OK,
        "the cached token serves: {}",
        served.text()
    );
    // Within the refresh margin the refresh cannot take the shared lock: the token still serves.
    tokio::time::sleep(Duration::from_millis(6000).saturating_sub(born.elapsed())).await;
    assert!(
        born.elapsed() < Duration::from_millis(7500),
        "the test ran too slowly to tell"
    );
    let served = client::post_responses(replica.addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
    assert_eq!(
        served.status,
        StatusCode::OK,
        "inside the margin: {}",
        served.text()
    );

    // Past its expiry, nobody refreshes alone: 503, saying why.
    tokio::time::sleep(Duration::from_secs(9).saturating_sub(born.elapsed())).await;
    let refused = client::post_responses(replica.addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert_eq!(
        refused.json()["error"]["code"],
        "state_database_unreachable"
    );
    assert!(
        refused.text().contains("state database is unreachable"),
        "{}",
        refused.text()
    );
    assert_eq!(
        issuer.refreshes(),
        0,
        "no replica refreshed without the shared lock"
    );

    pg.run();
    let served = within("serving again once the database is back", async {
        loop {
            let reply =
                client::post_responses(replica.addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
            if reply.status == StatusCode::OK {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!((issuer.refreshes(), issuer.reuses()), (1, 0));
    within("/readyz to say ready", async {
        while readyz(replica.addr).await["status"] != "ready" {
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
async fn the_state_database_is_reached_over_verified_tls() {
    let (pg, ca) = Postgres::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let url = |mode: &str| {
        format!(
            "postgres://keyward@localhost:{}/postgres?sslmode={mode}",
            pg.port
        )
    };
    let ca_arg = ca_file.to_str().unwrap();
    let (ok, out, err) = keyward(&[
        "state",
        "migrate",
        "--state",
        &url("verify-full"),
        "--state-ca",
        ca_arg,
    ])
    .await;
    assert!(ok, "{out}{err}");
    // `require` verifies too: a server whose certificate nobody vouches for is refused.
    let (ok, _, err) = keyward(&["state", "migrate", "--state", &url("require")]).await;
    assert!(!ok);
    assert!(
        err.contains("unreachable") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    // With the CA, `require` connects too.
    let (ok, _, err) = keyward(&[
        "state",
        "migrate",
        "--state",
        &url("require"),
        "--state-ca",
        ca_arg,
    ])
    .await;
    assert!(ok, "{err}");
}

#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_through_the_database_revokes_and_deletes_the_shared_login() {
    let pg = Postgres::start();
    let issuer = FakeIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let minted = issuer.mint();
    let key = shared_login(&pg, dir.path(), &minted).await;
    let home = dir.path().join("h");
    let common = [
        "--home",
        home.to_str().unwrap(),
        "--state",
        &pg.url(),
        "--state-key-file",
        &key,
    ];
    let (ok, out, err) = keyward(&[&["status"][..], &common].concat()).await;
    assert!(ok, "{out}{err}");
    let issuer_url = issuer.url();
    let (ok, out, err) =
        keyward(&[&["logout", "--issuer", &issuer_url][..], &common].concat()).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("state database"), "{out}");
    assert_eq!(
        issuer.state.lock().unwrap().revoked,
        [minted.refresh_token.as_str()]
    );
    assert_eq!(pg.psql("SELECT count(*) FROM keyward_login").trim(), "0");
    let (ok, out, _) = keyward(&[&["status"][..], &common].concat()).await;
    assert!(!ok, "status says not signed in: {out}");
}

#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_login_stored_in_the_database_is_used_by_every_replica_within_a_sync() {
    let pg = Postgres::start();
    let issuer = FakeIssuer::start().await;
    let backend = fake_backend(issuer.state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let first = issuer.mint();
    let key = shared_login(&pg, dir.path(), &first).await;
    let a = replica(&issuer, &backend, &pg, &key, &dir.path().join("a")).await;
    let b = replica(&issuer, &backend, &pg, &key, &dir.path().join("b")).await;
    let bearer = |replica: &Process| {
        let addr = replica.addr;
        let backend = &backend;
        async move {
            let reply = client::post_responses(addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            let seen = backend.requests().last().unwrap().headers["authorization"].clone();
            seen.to_str().unwrap().to_owned()
        }
    };
    assert_eq!(bearer(&a).await, format!("Bearer {}", first.access_token));
    assert_eq!(bearer(&b).await, format!("Bearer {}", first.access_token));

    // Another login stored (as `keyward login --state` or `state import` do), while the first's
    // token still works: both replicas switch at their next sync, without a 401 or a restart.
    let second = issuer.mint();
    import_login(&pg, &dir.path().join("second-home"), &second, &key).await;
    for replica in [&a, &b] {
        within("the replica to use the new login", async {
            while bearer(replica).await != format!("Bearer {}", second.access_token) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
    }
    assert_eq!(issuer.refreshes(), 0, "picked up, not refreshed");
}

#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_logins_in_the_database_are_rows_of_their_own_that_cannot_stand_in_for_each_other() {
    let pg = Postgres::start();
    let issuer = FakeIssuer::start().await;
    let backend = fake_backend(issuer.state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (first, team) = (issuer.mint(), issuer.mint());
    let key = shared_login(&pg, dir.path(), &first).await;
    let home = dir.path().join("h");
    let url = pg.url();
    let common = [
        "--home",
        home.to_str().unwrap(),
        "--state",
        &url,
        "--state-key-file",
        &key,
    ];
    // The team's login, signed in straight into the database under its name.
    let codex = dir.path().join("codex");
    std::fs::create_dir(&codex).unwrap();
    let auth = serde_json::json!({"tokens": {"id_token": team.id_token,
        "access_token": team.access_token, "refresh_token": team.refresh_token,
        "account_id": crate::support::chatgpt::ACCOUNT}});
    std::fs::write(codex.join("auth.json"), auth.to_string()).unwrap();
    let import = [
        "login",
        "--name",
        "team",
        "--import-codex",
        codex.to_str().unwrap(),
    ];
    let (ok, out, err) = keyward(&[&import[..], &common].concat()).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("(login team)"), "{out}");
    assert_eq!(
        pg.psql("SELECT name FROM keyward_login ORDER BY name")
            .trim(),
        "default\nteam"
    );
    assert!(
        !home.join("logins/team/login.json").exists(),
        "not in the home"
    );

    let (ok, lines, err) = keyward(&[&["status", "--json"][..], &common].concat()).await;
    assert!(ok, "{lines}{err}");
    let names: Vec<String> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["name"].to_string())
        .collect();
    assert_eq!(names, ["\"default\"", "\"team\""]);

    // A replica serving the team's login sends its token.
    let replica = replica_with(&issuer, &backend, &pg, &key, &home, &["--login", "team"]).await;
    let reply = client::post_responses(replica.addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = backend.next_request().await;
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {}", team.access_token).as_str()
    );
    // The table's row names the login, and `keyward usage --by credential` sums by it.
    let usage = [&["usage", "--json", "--by", "credential", "--state", &url][..]].concat();
    within("the row in the table", async {
        loop {
            let (ok, out, err) = keyward(&usage).await;
            assert!(ok, "{out}{err}");
            if out.contains("chatgpt:team") {
                let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
                assert_eq!(rows[0]["requests"], 1, "{rows}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    drop(replica);

    // The team's sealed row copied over the default one does not open as the default login.
    pg.psql(
        "UPDATE keyward_login SET sealed = (SELECT sealed FROM keyward_login WHERE name = 'team') \
         WHERE name = 'default'",
    );
    let (ok, out, err) = keyward(&[&["status", "--name", "default"][..], &common].concat()).await;
    assert!(!ok, "{out}");
    assert!(err.contains("cannot be decrypted"), "{err}");
    let (ok, out, err) = keyward(&[&["status", "--name", "team"][..], &common].concat()).await;
    assert!(ok, "{out}{err}");
}

#[cfg_attr(
    not(keyward_postgres),
    ignore = "needs PostgreSQL (apt-get install postgresql; scripts/test installs it as root)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_import_copies_every_login_of_the_home_under_its_name() {
    let pg = Postgres::start();
    let issuer = FakeIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("state.key");
    let key_arg = key.to_str().unwrap();
    let (ok, out, err) = keyward(&["state", "init-key", key_arg]).await;
    assert!(ok, "{out}{err}");
    let home = dir.path().join("h");
    let (first, team) = (issuer.mint(), issuer.mint());
    seed_login(&home, &first);
    seed_login(&home.join("logins/team"), &team);
    let url = pg.url();
    let common = [
        "--home",
        home.to_str().unwrap(),
        "--state",
        &url,
        "--state-key-file",
        key_arg,
    ];
    let (ok, out, err) = keyward(&[&["state", "import"][..], &common].concat()).await;
    assert!(ok, "{out}{err}");
    assert_eq!(out.matches("Copied the login").count(), 2, "{out}");
    assert_eq!(
        pg.psql("SELECT name FROM keyward_login ORDER BY name")
            .trim(),
        "default\nteam"
    );
    // Each row is its own login: status through the database names each.
    let (ok, lines, err) = keyward(&[&["status", "--json"][..], &common].concat()).await;
    assert!(ok, "{lines}{err}");
    assert_eq!(lines.lines().count(), 2, "{lines}");
}
