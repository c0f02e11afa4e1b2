//! keyward under systemd's protocols, played by the test: notifications to `$NOTIFY_SOCKET`
//! (READY, STATUS, WATCHDOG, STOPPING) and sockets handed over (`$LISTEN_FDS`), served with the
//! same access policy, peer lookup and Host check as keyward's own.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::client;
use crate::support::keyward::{Process, command};
use crate::support::upstream::FakeUpstream;
use crate::support::within;

/// The next notification keyward sent, within a few seconds.
async fn next_notification(socket: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = within("a notification", socket.recv(&mut buf))
        .await
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn systemd_hears_ready_then_watchdogs_then_stopping() {
    let upstream = FakeUpstream::ok_json().await;
    let dir = tempfile::tempdir().unwrap();
    for target in ["path", "abstract"] {
        let (socket, env) = if target == "path" {
            let path = dir.path().join("notify.sock");
            let socket = UnixDatagram::bind(&path).unwrap();
            (socket, path.to_str().unwrap().to_owned())
        } else {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("keyward-test-{}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
            (UnixDatagram::bind_addr(&addr).unwrap(), format!("@{name}"))
        };
        socket.set_nonblocking(true).unwrap();
        let socket = tokio::net::UnixDatagram::from_std(socket).unwrap();
        let keyward = Process::spawn(
            &["--upstream-url", &upstream.url()],
            b"sk-key\n",
            &[("NOTIFY_SOCKET", &env), ("WATCHDOG_USEC", "200000")],
        )
        .await;
        let ready = next_notification(&socket).await;
        assert!(ready.contains("READY=1"), "{target}: {ready}");
        let port = keyward.addr.port();
        assert!(
            ready.contains(&format!("STATUS=serving on 127.0.0.1:{port}")),
            "{target}: {ready}"
        );
        // Every 100 ms (half of WATCHDOG_USEC).
        for _ in 0..3 {
            assert_eq!(next_notification(&socket).await, "WATCHDOG=1");
        }
        keyward.signal(libc::SIGTERM);
        let stopping = within("STOPPING=1", async {
            loop {
                let note = next_notification(&socket).await;
                if note != "WATCHDOG=1" {
                    return note;
                }
            }
        })
        .await;
        assert!(stopping.starts_with("STOPPING=1"), "{target}: {stopping}");
    }
}

/// A copy of `fd` at 100 or above, so that placing the handed-over sockets at 3 and 4 in the
/// child cannot overwrite one with the other.
fn high_copy(fd: RawFd) -> RawFd {
    #[allow(unsafe_code)]
    // SAFETY: duplicates a descriptor the test owns; the copy is closed on exec.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
    assert!(copy >= 100);
    copy
}

/// `keyward serve ARGS` started as systemd starts a socket-activated service: `tcp` at fd 3 and
/// `unix` at fd 4, `LISTEN_PID` its own pid, `LISTEN_FDS=2`, their names in `LISTEN_FDNAMES`.
async fn activated(
    tcp: &std::net::TcpListener,
    unix: &std::os::unix::net::UnixListener,
    args: &[&str],
) -> Process {
    let dir = tempfile::tempdir().unwrap();
    let server_info = dir.path().join("server-info.json");
    let (tcp, unix) = (high_copy(tcp.as_raw_fd()), high_copy(unix.as_raw_fd()));
    let mut cmd = command(&[], &[("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "web:local")]);
    // `sh` sets LISTEN_PID to its own pid, which exec gives keyward.
    let mut cmd = {
        let program = cmd.as_std().get_program().to_owned();
        let envs: Vec<_> = cmd
            .as_std()
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();
        cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
            .arg(program)
            .arg("serve")
            .args(args)
            .arg("--server-info")
            .arg(&server_info)
            .env("KEYWARD_HOME", dir.path().join("home"))
            .envs(envs)
            .stdout(std::process::Stdio::null());
        cmd
    };
    #[allow(unsafe_code)]
    // SAFETY: between fork and exec the child only calls dup2, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for (from, to) in [(tcp, 3), (unix, 4)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let process = Process::spawn_prepared(cmd, b"sk-key\n", dir, server_info).await;
    for fd in [tcp, unix] {
        #[allow(unsafe_code)]
        // SAFETY: closes the test's own copies, made above and used by nothing else.
        unsafe {
            libc::close(fd)
        };
    }
    process
}

/// One HTTP/1.1 request over the unix socket at `path`; the status and the whole answer.
async fn over_unix(path: &Path, request: &str) -> (u16, String) {
    let mut stream = tokio::net::UnixStream::connect(path).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    within(
        "an answer over the unix socket",
        stream.read_to_string(&mut answer),
    )
    .await
    .unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

fn post(host: &str) -> String {
    let body = r#"{"model":"gpt-5","input":"hi"}"#;
    format!(
        "POST /v1/responses HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn sockets_systemd_hands_over_are_served_with_the_same_policy() {
    let upstream = FakeUpstream::ok_json().await;
    let dir = tempfile::tempdir().unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let unix_path = dir.path().join("keyward.sock");
    let unix = std::os::unix::net::UnixListener::bind(&unix_path).unwrap();

    let keyward = activated(
        &tcp,
        &unix,
        &["--upstream-url", &upstream.url(), "--listen", "127.0.0.1:0"],
    )
    .await;
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&keyward.server_info).unwrap()).unwrap();
    assert_eq!(
        info["listen"],
        serde_json::json!([format!("127.0.0.1:{port}")]),
        "the handed-over sockets replace the listeners of the settings"
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let reply = client::post_responses(addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
    assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
    let (status, answer) = over_unix(&unix_path, &post("localhost")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(upstream.requests().len(), 2);
    // The Host check, as on keyward's own listeners.
    let (status, answer) = over_unix(&unix_path, &post("evil.example")).await;
    assert_eq!(status, 403, "{answer}");
    let stderr = keyward.stderr();
    assert!(
        stderr.contains("socket=web") && stderr.contains("socket=local"),
        "{stderr}"
    );
    drop(keyward);

    // The access policy, with the kernel's answer about the peer, on both.
    let refusing = activated(
        &tcp,
        &unix,
        &["--upstream-url", &upstream.url(), "--allow-user", "59999"],
    )
    .await;
    let reply = client::post_responses(addr, r#"{"model":"gpt-5","input":"hi"}"#).await;
    assert_eq!(
        reply.status,
        http::StatusCode::FORBIDDEN,
        "{}",
        reply.text()
    );
    let (status, answer) = over_unix(&unix_path, &post("localhost")).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(
        upstream.requests().len(),
        2,
        "nothing more reached the upstream"
    );
    drop(refusing);
}
