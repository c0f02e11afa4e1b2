//! Descriptors a process inherits at exec: a listening socket systemd passed (socket
//! activation) taken into keyward's ownership. Unsafe, as taking ownership of a descriptor
//! number is; kept here beside the other code that touches what exec hands over.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A listening stream socket taken over.
pub enum Listening {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Takes the listening socket at `fd` (marked close-on-exec and non-blocking). `None` when `fd`
/// is not a listening TCP or unix stream socket: then it is left as it was. The caller must own
/// `fd` (systemd passed it to this process) and take it only once.
pub fn adopt_listener(fd: RawFd) -> io::Result<Option<Listening>> {
    let int = |option| -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writing and describe an int; an fd that is
        // not a socket fails with ENOTSOCK.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(value)
    };
    let (domain, kind, listening) = (
        int(libc::SO_DOMAIN)?,
        int(libc::SO_TYPE)?,
        int(libc::SO_ACCEPTCONN)?,
    );
    let known = matches!(domain, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX);
    if kind != libc::SOCK_STREAM || listening == 0 || !known {
        return Ok(None);
    }
    // SAFETY: fcntl on a descriptor only sets its flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the caller owns `fd` and hands it over once (see above).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(Some(if domain == libc::AF_UNIX {
        let listener = std::os::unix::net::UnixListener::from(owned);
        listener.set_nonblocking(true)?;
        Listening::Unix(listener)
    } else {
        let listener = std::net::TcpListener::from(owned);
        listener.set_nonblocking(true)?;
        Listening::Tcp(listener)
    }))
}
