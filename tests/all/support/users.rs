//! Real users for the access-control tests, and clients that run as them.
//!
//! The tests create (once, idempotently) two system users and a group with `useradd` and
//! `groupadd`, so they need root, as CI has. Without root they fail and say so; set
//! KEYWARD_SKIP_ROOT_TESTS=1 to skip them instead.

use std::process::Stdio;
use std::sync::OnceLock;

use tokio::process::Command;

pub const ALICE: &str = "kwtest-alice";
pub const BOB: &str = "kwtest-bob";
/// ALICE is a member; BOB is not.
pub const GROUP: &str = "kwtest-codex";

/// Debian's Python, which every user can run (a python3 found on root's PATH may not be).
const PYTHON: &str = "/usr/bin/python3";

#[derive(Debug, Clone, Copy)]
pub struct User {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
}

pub struct Users {
    pub alice: User,
    pub bob: User,
    pub group_gid: u32,
}

/// The test users, created on first use; `None` when the tests were asked to skip.
pub fn users() -> Option<&'static Users> {
    if std::env::var_os("KEYWARD_SKIP_ROOT_TESTS").is_some() {
        eprintln!("skipped: KEYWARD_SKIP_ROOT_TESTS is set");
        return None;
    }
    static USERS: OnceLock<Users> = OnceLock::new();
    Some(USERS.get_or_init(|| {
        assert_eq!(
            keyward::secret::hardening::effective_uid(),
            0,
            "the access-control tests create users and switch to them, so they need root (CI \
             runs as root); set KEYWARD_SKIP_ROOT_TESTS=1 to skip them"
        );
        run(&["groupadd", "--system", GROUP]);
        for name in [ALICE, BOB] {
            run(&[
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ]);
        }
        run(&["usermod", "--append", "--groups", GROUP, ALICE]);
        Users {
            alice: lookup(ALICE),
            bob: lookup(BOB),
            group_gid: nix::unistd::Group::from_name(GROUP)
                .unwrap()
                .unwrap()
                .gid
                .as_raw(),
        }
    }))
}

/// Runs an account command; "already exists" (9) is fine, as another test process may have
/// created it.
fn run(args: &[&str]) {
    let status = std::process::Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        status.success() || status.code() == Some(9),
        "{args:?} failed: {status}"
    );
}

fn lookup(name: &'static str) -> User {
    let user = nix::unistd::User::from_name(name).unwrap().unwrap();
    User {
        name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }
}

/// Runs `peer_client.py` as `user` (switched to with util-linux's `setpriv`, with the user's
/// groups from the user database, as a login would have them) or as this process's user with
/// `None`, and returns its JSON report: `statuses` (status → count), `bodies` (status → first
/// body), `ports` (local ports used), `errors`.
pub async fn client_as(user: Option<User>, config: serde_json::Value) -> serde_json::Value {
    let mut cmd = match user {
        Some(user) => {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={}", user.uid))
                .arg(format!("--regid={}", user.gid))
                .arg("--init-groups")
                .arg(PYTHON);
            cmd
        }
        None => Command::new(PYTHON),
    };
    cmd.arg("-c")
        .arg(include_str!("peer_client.py"))
        .arg(config.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("the peer client did not finish within 120 s")
        .unwrap();
    assert!(
        output.status.success(),
        "peer client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// How many requests got `status`.
pub fn count(report: &serde_json::Value, status: u16) -> u64 {
    report["statuses"][status.to_string()].as_u64().unwrap_or(0)
}
