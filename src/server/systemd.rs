//! systemd's protocols, spoken without libsystemd: readiness, status, stopping and watchdog
//! notifications over `$NOTIFY_SOCKET` (sd_notify(3)), and listening sockets systemd opened and
//! handed over (`$LISTEN_PID`, `$LISTEN_FDS`, `$LISTEN_FDNAMES`; sd_listen_fds(3)). Without
//! those variables nothing here does anything.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::time::Duration;

use crate::secret::inherited::{self, Listening};

/// The first file descriptor systemd passes.
const FIRST_FD: RawFd = 3;

/// Where notifications go: `$NOTIFY_SOCKET`, a path or `@name` in the abstract namespace.
pub struct Notify {
    socket: UnixDatagram,
    to: UnixAddr,
}

impl Notify {
    /// From `$NOTIFY_SOCKET`; none when it is unset or unusable (said once in the log).
    pub fn from_env() -> Option<Self> {
        let target = std::env::var_os("NOTIFY_SOCKET")?;
        let to = match target.as_encoded_bytes() {
            [b'@', name @ ..] => {
                use std::os::linux::net::SocketAddrExt;
                UnixAddr::from_abstract_name(name)
            }
            _ => UnixAddr::from_pathname(&target),
        };
        match to.and_then(|to| Ok((UnixDatagram::unbound()?, to))) {
            Ok((socket, to)) => Some(Self { socket, to }),
            Err(err) => {
                tracing::warn!(error = %err, "NOTIFY_SOCKET is set but unusable; systemd will not hear from keyward");
                None
            }
        }
    }

    /// Sends `state` (`READY=1`, `STATUS=...`, newline-separated); a failure is logged, never
    /// fatal.
    pub fn send(&self, state: &str) {
        if let Err(err) = self.socket.send_to_addr(state.as_bytes(), &self.to) {
            tracing::debug!(error = %err, "a notification to systemd was not delivered");
        }
    }
}

/// How often systemd wants `WATCHDOG=1`: `$WATCHDOG_USEC`, when `$WATCHDOG_PID` (if set) is
/// this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// A listening socket systemd handed over.
pub enum Activated {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("LISTEN_FDS is {0:?}, not a number of sockets")]
    Count(String),
    #[error("socket {name} (fd {fd}) handed over by systemd: {error}")]
    Socket {
        fd: RawFd,
        name: String,
        error: io::Error,
    },
    #[error(
        "socket {name} (fd {fd}) handed over by systemd is not a listening TCP or unix stream \
         socket; keyward serves only those (ListenStream= in the .socket unit)"
    )]
    Kind { fd: RawFd, name: String },
}

/// The sockets systemd handed to this process, in order, with their names (`$LISTEN_FDNAMES`,
/// else `fd3`, `fd4`...). Empty when `$LISTEN_PID` is not this process. Each is taken once: a
/// second call finds them gone (their descriptors are owned by what this returns, and closed on
/// exec).
pub fn take_listen_fds() -> Result<Vec<(String, Activated)>, ActivationError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    if !ours || TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let count = std::env::var("LISTEN_FDS").unwrap_or_default();
    let count: RawFd = count.parse().map_err(|_| ActivationError::Count(count))?;
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names.split(':');
    let mut sockets = Vec::new();
    for fd in FIRST_FD..FIRST_FD.saturating_add(count) {
        let name = names
            .next()
            .filter(|n| !n.is_empty())
            .map_or_else(|| format!("fd{fd}"), str::to_owned);
        let socket = inherited::adopt_listener(fd).map_err(|error| ActivationError::Socket {
            fd,
            name: name.clone(),
            error,
        })?;
        let socket = match socket {
            Some(Listening::Tcp(listener)) => Activated::Tcp(listener),
            Some(Listening::Unix(listener)) => Activated::Unix(listener),
            None => return Err(ActivationError::Kind { fd, name }),
        };
        sockets.push((name, socket));
    }
    Ok(sockets)
}
