//! keyward under test: in-process (fast, most tests) or as the real binary (for what only a
//! process shows: stdin, signals, exit codes, /proc).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use clap::Parser;
use keyward::config::args::Cli;
use keyward::config::values::AuthHeader;
use keyward::config::{Config, CredentialConfig};
use keyward::proxy::credential::Credential;
use keyward::proxy::credentials::Credentials;
use keyward::secret::{LockedSecret, SecretHeader};
use keyward::server::{self, Running};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

pub const TEST_KEY: &str = "sk-test-0123456789";

/// An in-process keyward, and the home it was given (removed when it is dropped).
pub struct Started {
    running: Running,
    _home: Option<tempfile::TempDir>,
}

impl Started {
    /// Waits until keyward has stopped (see [`Running::wait`]).
    pub async fn wait(self) {
        self.running.wait().await;
    }
}

impl std::ops::Deref for Started {
    type Target = Running;

    fn deref(&self) -> &Running {
        &self.running
    }
}

/// Starts keyward in this process with `args` (as on the command line) and the test key. Without
/// `--home` in `args`, it gets a temporary one (its record of response owners goes there).
pub async fn start(args: &[&str]) -> (SocketAddr, Started) {
    let home = (!args.contains(&"--home")).then(|| tempfile::tempdir().unwrap());
    let home_path = home.as_ref().map(|h| h.path().join("home"));
    let mut args = args.to_vec();
    if let Some(path) = &home_path {
        args.extend(["--home", path.to_str().unwrap()]);
    }
    let cli = Cli::try_parse_from(std::iter::once("keyward").chain(args.iter().copied())).unwrap();
    let config = Config::from_args(&cli.into_serve().unwrap()).unwrap();
    let credential = match &config.credential {
        CredentialConfig::ApiKey { header, .. } => {
            let value = match header {
                AuthHeader::Bearer => format!("Bearer {TEST_KEY}"),
                AuthHeader::ApiKey => TEST_KEY.to_owned(),
            };
            Credential::api_key(
                std::sync::Arc::from("api-key"),
                header.name(),
                SecretHeader::new(LockedSecret::copy_from(value.as_bytes())).unwrap(),
                config.upstream.clone(),
            )
        }
        CredentialConfig::ChatGpt(_) => keyward::cli::chatgpt_credential(&config).await.unwrap(),
    };
    let running = server::start(&config, Credentials::single(credential))
        .await
        .unwrap();
    // With only unix sockets there is no TCP address: 0.0.0.0:0 stands in.
    let addr = running
        .addrs
        .first()
        .copied()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    (
        addr,
        Started {
            running,
            _home: home,
        },
    )
}

/// Starts keyward in-process in front of `upstream_url`.
pub async fn start_for(upstream_url: &str, extra: &[&str]) -> (SocketAddr, Started) {
    let mut args = vec!["--upstream-url", upstream_url];
    args.extend_from_slice(extra);
    start(&args).await
}

/// The real `keyward` binary, its stderr collected line by line.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    pub server_info: PathBuf,
    pub stderr: Arc<Mutex<String>>,
    /// Reads stderr until the process closes it.
    collector: Option<tokio::task::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

impl Process {
    /// Spawns `keyward serve` with `args`, `stdin` as its standard input, and waits until it
    /// says it is listening.
    pub async fn spawn(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let server_info = dir.path().join("server-info.json");
        let mut cmd = command(args, env);
        if !env.iter().any(|(k, _)| *k == "KEYWARD_HOME") {
            cmd.env("KEYWARD_HOME", dir.path().join("home"));
        }
        cmd.arg("--server-info").arg(&server_info);
        Self::spawn_prepared(cmd, stdin, dir, server_info).await
    }

    /// Spawns `cmd`, a `keyward serve` that writes `--server-info` to `server_info` (in `dir`),
    /// and waits until it says it is listening.
    pub async fn spawn_prepared(
        cmd: Command,
        stdin: &[u8],
        dir: tempfile::TempDir,
        server_info: PathBuf,
    ) -> Process {
        let mut child = spawn_fed(cmd, stdin).await;
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready) = oneshot::channel();
        let collector = collect(child.stderr.take().unwrap(), stderr.clone(), Some(ready_tx));
        if super::within("keyward to listen", ready).await.is_err() {
            panic!(
                "keyward exited before listening: {}",
                stderr.lock().unwrap()
            );
        }
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&server_info).unwrap()).unwrap();
        let port = info["port"]
            .as_u64()
            .map_or(0, |p| u16::try_from(p).unwrap());
        Process {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            server_info,
            stderr,
            collector: Some(collector),
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until keyward's log holds a line containing `needle` (log lines are written in
    /// batches, up to 50 ms after the event); returns the whole log so far.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        super::within(&format!("keyward to log {needle:?}"), async {
            loop {
                let stderr = self.stderr();
                if stderr.contains(needle) {
                    return stderr;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
    }

    pub fn signal(&self, signal: i32) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code; by then [`Process::stderr`]
    /// holds everything it wrote (its last log lines come at exit).
    pub async fn exit_code(&mut self) -> Option<i32> {
        let code = super::within("keyward to exit", self.child.wait())
            .await
            .unwrap()
            .code();
        if let Some(collector) = self.collector.take() {
            super::within("keyward's stderr to close", collector)
                .await
                .unwrap();
        }
        code
    }
}

pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward"));
    cmd.args(args).env_remove("RUST_LOG").stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the binary to completion with `stdin`; returns (exit code, stderr).
pub async fn run_to_exit(args: &[&str], stdin: &[u8]) -> (Option<i32>, String) {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = command(args, &[]);
    cmd.env("KEYWARD_HOME", home.path().join("home"));
    let child = spawn_fed(cmd, stdin).await;
    let output = super::within("keyward to exit", child.wait_with_output())
        .await
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Spawns `cmd` with `stdin` written to its standard input (then closed) and stderr piped.
pub async fn spawn_fed(mut cmd: Command, stdin: &[u8]) -> Child {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    child
}

/// Waits until a keyward child started with [`spawn_fed`] says it is listening.
pub async fn wait_listening(child: &mut Child) {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    super::within("keyward to listen", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("keyward is listening") {
                return;
            }
        }
        panic!("keyward exited before listening");
    })
    .await;
}

fn collect(
    stream: tokio::process::ChildStderr,
    into: Arc<Mutex<String>>,
    mut ready: Option<oneshot::Sender<()>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("keyward is listening")
                && let Some(ready) = ready.take()
            {
                let _ = ready.send(());
            }

            let mut all = into.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
    })
}

/// Adds a client with `keyward token add` to the tokens `file`; returns its token.
pub async fn add_client_token(file: &Path, name: &str) -> String {
    add_client_token_in(file, name, &[]).await
}

/// [`add_client_token`], the client in `groups` (`--group`).
pub async fn add_client_token_in(file: &Path, name: &str, groups: &[&str]) -> String {
    let added = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["token", "add", name])
        .args(groups.iter().flat_map(|group| ["--group", group]))
        .arg("--client-tokens")
        .arg(file)
        .output()
        .await
        .unwrap();
    assert!(
        added.status.success(),
        "keyward token add: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    let token = String::from_utf8(added.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("kw-"), "{token}");
    token
}

/// Every file under `dir`, with its contents.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}
