//! Who is on the other end of a connection, as the kernel knows it — never as the client says.
//!
//! - Unix sockets: `SO_PEERCRED`, through tokio's `peer_cred`.
//! - Loopback TCP: the uid that owns the client's end of the connection, asked of the kernel with
//!   one netlink `sock_diag` query for the exact 4-tuple. The client's socket and keyward's
//!   accepted one form a pair that TCP keeps unique while keyward's end is open, so the answer
//!   cannot belong to another connection that happened to reuse the port.

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{
    AF_INET, AF_INET6, IPPROTO_TCP, TCP_LISTEN, TCP_SYN_RECV, TCP_TIME_WAIT,
};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

/// Why the owner of a connection is not known. Every one of these refuses the request when an
/// access policy asks who the client is: keyward fails closed.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("the kernel's socket table could not be asked (netlink sock_diag): {0}")]
    Lookup(#[source] io::Error),
    #[error(
        "no socket on this host is the client's end of the connection from {peer} (the client is \
         on another host, or has already closed its socket)"
    )]
    NotFound { peer: SocketAddr },
    #[error(
        "the client's end of the connection from {peer} is no longer owned by a process (it was \
         closed)"
    )]
    Unowned { peer: SocketAddr },
    #[error("the kernel did not report the peer's credentials: {0}")]
    PeerCred(#[source] io::Error),
}

/// Asks the kernel who owns the client end of loopback TCP connections. Holds one netlink socket;
/// keep one per thread.
pub struct OwnerLookup {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl OwnerLookup {
    pub fn new() -> Result<Self, OwnerError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(OwnerError::Lookup)?;
        socket.bind_auto().map_err(OwnerError::Lookup)?;
        socket
            .connect(&netlink_sys::SocketAddr::new(0, 0))
            .map_err(OwnerError::Lookup)?;
        // The kernel answers a sock_diag query before send() returns, so the answer is always
        // waiting; never block on a missing one.
        socket.set_non_blocking(true).map_err(OwnerError::Lookup)?;
        Ok(Self {
            socket,
            sequence: 0,
            buffer: vec![0; 8192],
        })
    }

    /// The uid that owns the socket at `peer` connected to keyward's `local` address.
    pub fn tcp_owner(&mut self, local: SocketAddr, peer: SocketAddr) -> Result<u32, OwnerError> {
        let (local, peer) = (unmap(local), unmap(peer));
        match (local.ip(), peer.ip()) {
            (IpAddr::V4(local_ip), IpAddr::V4(peer_ip)) => {
                match self.query(AF_INET, local, peer) {
                    // A v6 socket connected to `::ffff:127.0.0.1`: the client's end is in the v6
                    // table, under the mapped addresses, while keyward's is a v4 socket.
                    Err(OwnerError::NotFound { .. }) => {
                        let mapped = |ip: std::net::Ipv4Addr, port| {
                            SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), port)
                        };
                        self.query(
                            AF_INET6,
                            mapped(local_ip, local.port()),
                            mapped(peer_ip, peer.port()),
                        )
                        .map_err(|err| match err {
                            OwnerError::NotFound { .. } => OwnerError::NotFound { peer },
                            other => other,
                        })
                    }
                    other => other,
                }
            }
            (IpAddr::V6(_), IpAddr::V6(_)) => self.query(AF_INET6, local, peer),
            _ => Err(OwnerError::NotFound { peer }),
        }
    }

    /// One exact lookup in the `family` table.
    fn query(
        &mut self,
        family: u8,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Result<u32, OwnerError> {
        // The client's socket: its source is the peer, its destination keyward's address.
        let wanted = SocketId {
            source_port: peer.port(),
            destination_port: local.port(),
            source_address: peer.ip(),
            destination_address: local.ip(),
            interface_id: 0,
            // INET_DIAG_NOCOOKIE: match by address, not by a cookie we do not have.
            cookie: [0xff; 8],
        };
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        // No NLM_F_DUMP: an exact lookup of one socket.
        header.flags = NLM_F_REQUEST;
        header.sequence_number = self.sequence;
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
                socket_id: wanted.clone(),
            })
            .into(),
        );
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);

        // Drop any answer left over from an earlier query that failed half-way.
        while self.socket.recv(&mut &mut self.buffer[..], 0).is_ok() {}
        self.socket.send(&bytes, 0).map_err(OwnerError::Lookup)?;

        loop {
            let size = self
                .socket
                .recv(&mut &mut self.buffer[..], 0)
                .map_err(OwnerError::Lookup)?;
            let mut offset = 0;
            while offset < size {
                let message =
                    NetlinkMessage::<SockDiagMessage>::deserialize(&self.buffer[offset..size])
                        .map_err(|e| OwnerError::Lookup(io::Error::other(e.to_string())))?;
                let length = message.header.length as usize;
                if message.header.sequence_number == self.sequence {
                    match message.payload {
                        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                            let header = &response.header;
                            // Some kernels fall back to a listening socket when no connection
                            // matches; only the exact connection counts.
                            if header.socket_id.source_port != wanted.source_port
                                || header.socket_id.destination_port != wanted.destination_port
                                || header.socket_id.source_address != wanted.source_address
                                || header.socket_id.destination_address
                                    != wanted.destination_address
                                || matches!(header.state, TCP_LISTEN | TCP_SYN_RECV)
                            {
                                return Err(OwnerError::NotFound { peer });
                            }
                            // TIME_WAIT sockets report uid 0, and a closed (orphaned) socket
                            // has no inode: neither is a process's socket any more.
                            if header.state == TCP_TIME_WAIT || header.inode == 0 {
                                return Err(OwnerError::Unowned { peer });
                            }
                            return Ok(header.uid);
                        }
                        NetlinkPayload::Error(err)
                            if err.raw_code() == -libc::ENOENT
                                || err.raw_code() == -libc::ESTALE =>
                        {
                            return Err(OwnerError::NotFound { peer });
                        }
                        NetlinkPayload::Error(err) => return Err(OwnerError::Lookup(err.to_io())),
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

/// `::ffff:127.0.0.1` as `127.0.0.1`: the kernel keeps a v4 client's socket as a v4 one.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_the_owner_of_a_loopback_connection_on_v4_and_v6() {
        let mut lookup = OwnerLookup::new().unwrap();
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let listener = TcpListener::bind(addr).unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (accepted, peer) = listener.accept().unwrap();
            let uid = lookup
                .tcp_owner(accepted.local_addr().unwrap(), peer)
                .unwrap();
            assert_eq!(uid, crate::secret::hardening::effective_uid(), "{addr}");
            drop(client);
        }
    }

    #[test]
    fn finds_the_owner_of_a_v6_socket_connected_to_a_v4_mapped_address() {
        let mut lookup = OwnerLookup::new().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // An AF_INET6 socket, talking to the v4 listener through `::ffff:127.0.0.1`.
        let client = match TcpStream::connect(("::ffff:127.0.0.1", port)) {
            Ok(client) => client,
            Err(err) => {
                eprintln!("skipped: this host has no IPv6 sockets ({err})");
                return;
            }
        };
        assert!(client.local_addr().unwrap().is_ipv6());
        let (accepted, peer) = listener.accept().unwrap();
        assert!(peer.is_ipv4(), "{peer}");
        let uid = lookup
            .tcp_owner(accepted.local_addr().unwrap(), peer)
            .unwrap();
        assert_eq!(uid, crate::secret::hardening::effective_uid());
    }

    #[test]
    fn a_connection_nobody_holds_is_not_found() {
        let mut lookup = OwnerLookup::new().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        // A port nobody connected from: the kernel's fallback to the listener must not count.
        let err = lookup
            .tcp_owner(local, "127.0.0.1:9".parse().unwrap())
            .unwrap_err();
        assert!(matches!(err, OwnerError::NotFound { .. }), "{err}");
        // A "client" at the listener's own address: kernels whose exact lookup falls back to
        // listening sockets answer with the listener, which owns no connection.
        let err = lookup
            .tcp_owner("127.0.0.1:9".parse().unwrap(), local)
            .unwrap_err();
        assert!(matches!(err, OwnerError::NotFound { .. }), "{err}");
    }

    #[test]
    fn a_client_that_closed_its_socket_is_unowned() {
        let mut lookup = OwnerLookup::new().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        drop(client);
        let err = lookup
            .tcp_owner(accepted.local_addr().unwrap(), peer)
            .unwrap_err();
        assert!(matches!(err, OwnerError::Unowned { .. }), "{err}");
    }
}
