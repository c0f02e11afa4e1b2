//! keyward's own sandbox, as a serving keyward shows it: the system call filter and
//! `no_new_privs` in `/proc`, `/readyz`, and files outside what its configuration names out of
//! reach even to keyward itself.

use std::path::Path;

use http::StatusCode;

use crate::support::client;
use crate::support::keyward::{Process, TEST_KEY};
use crate::support::upstream::FakeUpstream;

#[tokio::test]
async fn a_serving_keyward_is_in_its_sandbox_unless_told_not_to_be() {
    let upstream = FakeUpstream::ok_json().await;
    for (extra, seccomp, nnp, said) in [
        (None, "2", "1", "on"),
        (Some("--no-sandbox"), "0", "0", "off"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("keyward.sock");
        let mut args = vec!["--upstream-url".to_owned(), upstream.url()];
        args.extend(["--port".to_owned(), "0".to_owned(), "--listen".to_owned()]);
        args.push(format!("unix:{}", sock.display()));
        args.extend(extra.map(str::to_owned));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut keyward = Process::spawn(&args, b"sk-key\n", &[]).await;
        let ready = client::get(keyward.addr, "/readyz").await.json();
        assert_eq!(ready["sandbox"], said, "{extra:?}: {ready}");
        assert_eq!(ready["sandbox_files"], said, "{extra:?}: {ready}");
        let status = std::fs::read_to_string(format!("/proc/{}/status", keyward.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        assert_eq!(field("Seccomp:"), seccomp, "{extra:?}: {status}");
        assert_eq!(field("NoNewPrivs:"), nnp, "{extra:?}: {status}");
        // It serves as before.
        let reply = client::post_responses(keyward.addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
        assert_eq!(reply.status, StatusCode::OK);
        // And stops as before, removing the socket it made.
        assert!(sock.exists());
        keyward.signal(libc::SIGTERM);
        assert_eq!(keyward.exit_code().await, Some(0), "{}", keyward.stderr());
        assert!(!sock.exists(), "{extra:?}: the socket is removed at exit");
    }
}

/// The configuration file is re-read on SIGHUP from its directory. Replaced there by a new file
/// (as an editor saves), it is read; turned into a link to a file elsewhere, the sandboxed
/// keyward cannot open it and keeps its settings, where an unsandboxed one follows the link.
#[tokio::test]
async fn a_sandboxed_keyward_cannot_open_a_file_outside_what_its_configuration_names() {
    let upstream = FakeUpstream::ok_json().await;
    let root = tempfile::tempdir().unwrap();
    let (named, elsewhere) = (root.path().join("etc"), root.path().join("elsewhere"));
    std::fs::create_dir(&named).unwrap();
    std::fs::create_dir(&elsewhere).unwrap();
    let file = named.join("keyward.toml");
    let settings = |policy: &str| {
        format!(
            "upstream-url = \"{}\"\nallow-user = [\"{policy}\"]\n",
            upstream.url()
        )
    };
    let me = nix::unistd::getuid().to_string();
    // Another user's policy, out of reach of the sandboxed keyward.
    std::fs::write(elsewhere.join("other.toml"), settings("4242")).unwrap();

    for sandboxed in [true, false] {
        replace(&file, &settings(&me));
        let mut args = vec!["--config", file.to_str().unwrap()];
        if !sandboxed {
            args.push("--no-sandbox");
        }
        let keyward = Process::spawn(&args, TEST_KEY.as_bytes(), &[]).await;
        let served = || async {
            client::post_responses(keyward.addr, r#"{"model":"gpt-5","input":"hi"}"#)
                .await
                .status
        };
        assert_eq!(served().await, StatusCode::OK);

        // Saved as an editor saves it: a new file renamed over the old one.
        replace(&file, &settings("4242"));
        keyward.signal(libc::SIGHUP);
        keyward.wait_for_log("configuration re-read").await;
        assert_eq!(
            served().await,
            StatusCode::FORBIDDEN,
            "the new file is in force"
        );
        replace(&file, &settings(&me));
        keyward.signal(libc::SIGHUP);
        within_log_count(&keyward, "configuration re-read", 2).await;
        assert_eq!(served().await, StatusCode::OK);

        // A link to a file outside.
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("other.toml"), &file).unwrap();
        keyward.signal(libc::SIGHUP);
        if sandboxed {
            let log = keyward
                .wait_for_log("the configuration file was refused")
                .await;
            assert!(log.contains("Permission denied"), "{log}");
            assert_eq!(served().await, StatusCode::OK, "the settings in force stay");
        } else {
            within_log_count(&keyward, "configuration re-read", 3).await;
            assert_eq!(served().await, StatusCode::FORBIDDEN, "without the sandbox");
        }
        std::fs::remove_file(&file).unwrap();
    }
}

/// Writes `text` to a new file beside `path` and renames it over `path`.
fn replace(path: &Path, text: &str) {
    let new = path.with_extension("new");
    std::fs::write(&new, text).unwrap();
    std::fs::rename(&new, path).unwrap();
}

async fn within_log_count(keyward: &Process, needle: &str, count: usize) {
    crate::support::within(&format!("keyward to log {needle:?} {count} times"), async {
        while keyward.stderr().matches(needle).count() < count {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// The packaged unit runs keyward as its own user with no capabilities, no new privileges and
/// `ProtectProc=invisible` (other users' processes are hidden in `/proc`), and without
/// `PrivateUsers=`. Under that confinement (a mount namespace whose `/proc` is mounted with
/// `hidepid=invisible`, `setpriv` to an unprivileged user with an empty capability bounding set),
/// and its own sandbox on, keyward still names the real user of a loopback TCP connection and of a
/// unix socket connection, and serves or refuses them by name.
#[cfg_attr(
    not(keyward_root),
    ignore = "needs root (scripts/test in CI runs as root)"
)]
#[tokio::test]
async fn under_the_units_confinement_keyward_still_names_the_real_user_of_a_connection() {
    use std::os::unix::fs::PermissionsExt;

    use crate::support::users::{ALICE, client_as, count, users};

    let users = users();
    let upstream = FakeUpstream::ok_json().await;
    // keyward runs as kwtest-bob, the service's user here: its home and sockets are BOB's.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(dir.path(), Some(users.bob.uid), Some(users.bob.gid)).unwrap();
    let sock = dir.path().join("keyward.sock");
    let unix = format!("unix:{}", sock.display());
    let server_info = dir.path().join("server-info.json");
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "mount -t proc -o hidepid=invisible proc /proc && exec setpriv --reuid=\"$KW_UID\" \
             --regid=\"$KW_GID\" --clear-groups --bounding-set=-all --inh-caps=-all \
             --no-new-privs \"$@\"",
        )
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_keyward"))
        .args(["serve", "--upstream-url", &upstream.url()])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--listen",
            &unix,
            "--socket-mode",
            "666",
        ])
        .args(["--allow-user", ALICE, "--server-info"])
        .arg(&server_info)
        .env("KW_UID", users.bob.uid.to_string())
        .env("KW_GID", users.bob.gid.to_string())
        .env("KEYWARD_HOME", dir.path().join("home"))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null());
    let keyward = Process::spawn_prepared(
        cmd,
        TEST_KEY.as_bytes(),
        tempfile::tempdir().unwrap(),
        server_info,
    )
    .await;
    // It is confined as the unit confines it.
    let status = std::fs::read_to_string(format!("/proc/{}/status", keyward.pid())).unwrap();
    assert!(
        status.contains(&format!("Uid:\t{0}\t{0}", users.bob.uid)),
        "{status}"
    );
    assert!(status.contains("CapBnd:\t0000000000000000"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", keyward.pid())).unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(" /proc ") && l.contains("hidepid=invisible")),
        "{mounts}"
    );

    for target in [format!("tcp:{}", keyward.addr), unix] {
        let alice = client_as(Some(users.alice), serde_json::json!({ "target": target })).await;
        assert_eq!(count(&alice, 200), 1, "{target}: {alice}");
        let root = client_as(None, serde_json::json!({ "target": target })).await;
        assert_eq!(count(&root, 403), 1, "{target}: {root}");
        let refusal = root["bodies"]["403"].as_str().unwrap_or_default();
        assert!(
            refusal.contains("refused uid 0 (root)"),
            "{target}: {refusal}"
        );
    }
    assert_eq!(
        upstream.requests().len(),
        2,
        "alice's requests, named as hers"
    );
    let log = keyward.stderr();
    assert!(log.contains("sandbox on: files only"), "{log}");
}
