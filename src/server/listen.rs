//! Listening sockets: TCP ones no other process can join, shared by the workers; unix sockets created with their mode
//! and group already set, accepting a connection and asking the gate about its peer, and the
//! `--server-info` file.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, TcpSocket, UnixListener};

use crate::access::gate::Peer;
use crate::config::UnixListen;
use crate::proxy::handler::Proxy;
use crate::server::tls::Tls;

/// A listening socket as bound, before a worker's runtime takes it.
pub(crate) enum StdListener {
    Tcp(std::net::TcpListener, Option<Tls>),
    Unix(std::os::unix::net::UnixListener),
}

/// A listening socket in a worker's runtime.
pub(crate) enum Listener {
    Tcp(TcpListener, Option<Tls>),
    Unix(UnixListener),
}

impl Listener {
    pub(crate) fn from_std(listener: StdListener) -> io::Result<Self> {
        Ok(match listener {
            StdListener::Tcp(listener, tls) => Listener::Tcp(TcpListener::from_std(listener)?, tls),
            StdListener::Unix(listener) => {
                listener.set_nonblocking(true)?;
                Listener::Unix(UnixListener::from_std(listener)?)
            }
        })
    }
}

/// Binds a TCP listener of keyward's own: `SO_REUSEADDR` (a restart is not held up by the last
/// run's closing connections) but never `SO_REUSEPORT`, so no other process — a second keyward,
/// a stale one with an old configuration — can join the port and take part of its traffic. Every
/// worker accepts on this one socket ([`std::net::TcpListener::try_clone`]).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr).map_err(|err| {
        if err.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "the address is already in use by another process (another keyward? \
                     `ss -ltnp 'sport = :{}'` names it)",
                    addr.port()
                ),
            )
        } else {
            err
        }
    })?;
    socket.listen(4096)
}

pub(crate) enum Accepted {
    Tcp(tokio::net::TcpStream, Option<Tls>),
    Unix(tokio::net::UnixStream),
}

/// Accepts one connection and decides, from what the kernel says about its peer, whether it may
/// use keyward.
pub(crate) async fn accept(listener: &Listener, proxy: &Proxy) -> io::Result<(Accepted, Peer)> {
    match listener {
        Listener::Tcp(listener, tls) => {
            let (stream, remote) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            // A connection reset at once may not say its address; the listener's is the same
            // unless it listens on a wildcard address.
            let local = match stream.local_addr() {
                Ok(local) => local,
                Err(_) => listener.local_addr()?,
            };
            let peer = proxy.with_gate(|gate| gate.admit_tcp(local, remote));
            Ok((Accepted::Tcp(stream, tls.clone()), peer))
        }
        Listener::Unix(listener) => {
            let (stream, _) = listener.accept().await?;
            let uid = stream.peer_cred().map(|cred| cred.uid());
            let peer = proxy.with_gate(|gate| gate.admit_unix(uid));
            Ok((Accepted::Unix(stream), peer))
        }
    }
}

/// A unix socket keyward created; removed when keyward stops, if it is still keyward's.
pub struct SocketFile {
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && meta.dev() == self.dev
            && meta.ino() == self.ino
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates a unix socket at `spec.path` with its mode and group set before it appears there: it
/// is bound inside a private (0700) directory, then renamed into place. A stale socket (nobody
/// listening) is replaced; a live one, or anything that is not a socket, is an error.
pub(crate) fn bind_unix(
    spec: &UnixListen,
) -> io::Result<(std::os::unix::net::UnixListener, SocketFile)> {
    let path = &spec.path;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match StdUnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on this socket (is keyward already running?)",
                ));
            }
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "replacing a stale socket nobody listens on");
            }
            Err(err) => return Err(err),
        },
        Ok(meta) => {
            let what = if meta.file_type().is_symlink() {
                "a symbolic link"
            } else {
                "not a socket"
            };
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("the path exists and is {what}; keyward replaces only a stale socket"),
            ));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let private = tempfile::Builder::new()
        .prefix(".keyward-socket-")
        .tempdir_in(dir)?;
    let staged = private.path().join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&staged)?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(spec.mode))?;
    if let Some(gid) = spec.group {
        std::os::unix::fs::lchown(&staged, None, Some(gid))?;
    }
    fs::rename(&staged, path)?;
    let meta = fs::symlink_metadata(path)?;
    Ok((
        listener,
        SocketFile {
            path: path.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    ))
}

/// temporary file beside it, then renamed over it (a symlink at `path` is replaced, not followed).
pub fn write_server_info(
    path: &Path,
    addrs: &[SocketAddr],
    unix: &[SocketFile],
    metrics: Option<SocketAddr>,
) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    let info = serde_json::json!({
        "port": addrs.first().map(SocketAddr::port),
        "pid": std::process::id(),
        "listen": addrs
            .iter()
            .map(ToString::to_string)
            .chain(unix.iter().map(|f| format!("unix:{}", f.path.display())))
            .collect::<Vec<_>>(),
        "metrics": metrics.map(|addr| addr.to_string()),
    });
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .prefix(".keyward-server-info")
        .tempfile_in(dir)?;
    writeln!(file, "{info}")?;
    // Other users read the port from it, as with codex-responses-api-proxy.
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}
