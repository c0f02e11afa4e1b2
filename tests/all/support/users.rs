//! Real users for the access-control tests, and clients that run as them.
//!
//! The tests create (once, idempotently: a later run reuses them) two system users and a group
//! with `useradd` and `groupadd`, so they need root, as CI has; without root they are ignored and say
//! so. `scripts/test` removes the users and the group again if the run created them.

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

/// The test users, created on first use. Creating them needs root: the tests that call this are
/// ignored when not built as root (`keyward_root`, see build.rs).
pub fn users() -> &'static Users {
    super::need_root();
    static USERS: OnceLock<Users> = OnceLock::new();
    USERS.get_or_init(|| {
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
    })
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
    python_as(user, include_str!("peer_client.py"), config).await
}

/// Runs the Python `source` as `user` (or as this process's user with `None`) with `config` as
/// its argument, and returns the JSON it prints last.
pub async fn python_as(
    user: Option<User>,
    source: &str,
    config: serde_json::Value,
) -> serde_json::Value {
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        python_command(user, source, config).output(),
    )
    .await
    .expect("the peer client did not finish within 120 s")
    .unwrap();
    assert!(
        output.status.success(),
        "peer client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

/// The command [`python_as`] runs, for a test that reads its output as it comes.
pub fn python_command(user: Option<User>, source: &str, config: serde_json::Value) -> Command {
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
        .arg(source)
        .arg(config.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// How many requests got `status`.
pub fn count(report: &serde_json::Value, status: u16) -> u64 {
    report["statuses"][status.to_string()].as_u64().unwrap_or(0)
}
