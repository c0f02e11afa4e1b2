//! Tells the integration tests what this machine lets them do, so that a test that cannot run
//! here is counted as ignored by the test runner, not as passed:
//! - `keyward_root`: built as root. The access tests create users and connect as them, others
//!   start keyward as another user or read its memory.
//! - `keyward_postgres`: Debian's PostgreSQL server is installed. The replica and shared-state
//!   tests start one of their own.
//!
//! - `keyward_chromium`: Debian's Chromium is installed. The usage page's test renders it there.
//!
//! It also gives the build the commit it is built from (`KEYWARD_COMMIT`, for `--version`).
//!
//! `scripts/test` installs PostgreSQL and Chromium (as root) before it builds. Build and run the tests as the
//! same user: a build as root run by another user fails the root tests, saying so.

use std::path::Path;

/// Debian's Chromium, as the usage page's test runs it.
const CHROMIUM: &str = "/usr/bin/chromium";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(keyward_root)");
    println!("cargo::rustc-check-cfg=cfg(keyward_postgres)");
    println!("cargo::rustc-check-cfg=cfg(keyward_chromium)");
    println!("cargo::rerun-if-changed=build.rs");
    // A server installed (or removed) later changes /usr/lib/postgresql, or /usr/lib itself.
    for watched in ["/usr/lib/postgresql", "/usr/lib"] {
        if Path::new(watched).exists() {
            println!("cargo::rerun-if-changed={watched}");
            break;
        }
    }
    println!("cargo::rerun-if-env-changed=USER");
    // `keyward --version` names the commit it was built from.
    for git in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(git).exists() {
            println!("cargo::rerun-if-changed={git}");
        }
    }
    println!("cargo::rustc-env=KEYWARD_COMMIT={}", commit());
    if effective_uid() == Some(0) {
        println!("cargo::rustc-cfg=keyward_root");
    }
    if postgres_installed() {
        println!("cargo::rustc-cfg=keyward_postgres");
    }
    // Installing it adds a file to /usr/bin, which changes the directory.
    println!("cargo::rerun-if-changed=/usr/bin");
    if std::path::Path::new(CHROMIUM).exists() {
        println!("cargo::rustc-cfg=keyward_chromium");
    }
}

/// The commit being built (`git describe`-like: the short hash, `-dirty` with local changes),
/// or `unknown` outside a git checkout.
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(hash) if !hash.is_empty() => hash,
        _ => "unknown".into(),
    }
}

/// The effective uid, from /proc (no libc call: the build script has no dependencies).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// A `bin/postgres` and `bin/initdb` under some version in /usr/lib/postgresql, as the test
/// harness looks for them.
fn postgres_installed() -> bool {
    let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") else {
        return false;
    };
    versions.flatten().any(|version| {
        let bin = version.path().join("bin");
        bin.join("postgres").exists() && bin.join("initdb").exists()
    })
}
