//! A real PostgreSQL server for a test: Debian's `postgresql` package, `initdb` into a temporary
//! directory and started on a free loopback port, as an unprivileged user (`nobody` when the
//! tests run as root: PostgreSQL refuses to run as root), with password authentication. Stopped
//! and removed when dropped.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "kw-test-db-password";

pub struct Postgres {
    pub port: u16,
    child: Option<Child>,
    data: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    uid: Option<u32>,
    /// Serving TLS too, with a certificate for `localhost` from a CA of its own.
    tls: bool,
    _dir: tempfile::TempDir,
}

/// The newest installed server's `bin` directory.
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists() && bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

impl Postgres {
    /// A running server. The tests that call it are ignored where PostgreSQL was not installed
    /// when they were built (`keyward_postgres`, see build.rs).
    pub fn start() -> Self {
        Self::start_with(false).0
    }

    /// The same, also serving TLS with a certificate for `localhost`; with the CA's PEM.
    pub fn start_tls() -> (Self, String) {
        let (pg, ca) = Self::start_with(true);
        (pg, ca.unwrap())
    }

    fn start_with(tls: bool) -> (Self, Option<String>) {
        let bin = server_bin()
            .expect("PostgreSQL is not installed: apt-get install postgresql (scripts/test does)");
        let root = keyward::secret::hardening::effective_uid() == 0;
        let uid = root.then_some(65534);
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = dir.path().join("server.log");
        std::fs::write(&log, "").unwrap();
        if let Some(uid) = uid {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
            std::os::unix::fs::chown(&log, Some(uid), Some(uid)).unwrap();
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-U",
                "keyward",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
            ])
            .args(["-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut initdb, uid);
        let out = initdb.output().unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ca = tls.then(|| {
            let (ca, cert, key) = super::localhost_certificate();
            for (name, pem, mode) in [("server.crt", cert, 0o644), ("server.key", key, 0o600)] {
                let path = data.join(name);
                std::fs::write(&path, pem).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
                if let Some(uid) = uid {
                    std::os::unix::fs::chown(&path, Some(uid), Some(uid)).unwrap();
                }
            }
            ca
        });
        let mut pg = Self {
            port: 0,
            child: None,
            data,
            log,
            bin,
            uid,
            tls,
            _dir: dir,
        };
        pg.port = free_port();
        pg.run();
        (pg, ca)
    }

    /// `--state` for this server (plain TCP on loopback).
    pub fn url(&self) -> String {
        format!(
            "postgres://keyward@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// Starts the server (again, after [`Postgres::stop`]) and waits until it takes connections.
    pub fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut postgres = Command::new(self.bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.data.parent().unwrap())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "max_connections=200"])
            .args(if self.tls {
                &["-c", "ssl=on"][..]
            } else {
                &[][..]
            })
            .stdout(Stdio::null())
            .stderr(log);
        as_user(&mut postgres, self.uid);
        self.child = Some(postgres.spawn().unwrap());
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let runs = text.matches("ready to accept connections").count();
            let wanted = text.matches("starting PostgreSQL").count();
            if wanted > 0 && runs >= wanted {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "PostgreSQL did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: open connections are closed).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).unwrap();
            // SIGINT: PostgreSQL's fast shutdown.
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
            let started = Instant::now();
            while child.try_wait().unwrap().is_none() {
                if started.elapsed() > Duration::from_secs(15) {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Runs SQL through psql as the superuser; returns what it printed.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "keyward", "-d", "postgres", "-At", "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn as_user(command: &mut Command, uid: Option<u32>) {
    if let Some(uid) = uid {
        command.uid(uid).gid(uid).env("HOME", "/tmp");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `keyward ARGS` to its end, with the database's password in the environment.
pub async fn keyward(args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(args)
        .env("KEYWARD_STATE_PASSWORD", PASSWORD)
        .env_remove("RUST_LOG")
        .env_remove("KEYWARD_CLIENT_TOKENS")
        .kill_on_drop(true)
        .output();
    let output = super::within("keyward to finish", output).await.unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
