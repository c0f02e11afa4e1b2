//! Who may use keyward, per connection: the policy applied to the peer the kernel names, and
//! who may call the admin endpoints.
//!
//! The decision rests on what the kernel says about the peer ([`crate::access::peer`]), never on anything
//! the client claims. A connection's owner is looked up once, when it is accepted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access::peer::{OwnerError, OwnerLookup};
use crate::config::access::{Policy, user_name};

/// How long a user's group memberships are trusted before the user database is asked again.
const GROUP_CACHE_TTL: Duration = Duration::from_secs(10);

/// The policy in force, replaced whole when the configuration is re-read (SIGHUP).
#[derive(Debug, Default)]
pub struct SharedPolicy(parking_lot::RwLock<Arc<Policy>>);

impl SharedPolicy {
    pub fn new(policy: Policy) -> Self {
        Self(parking_lot::RwLock::new(Arc::new(policy)))
    }

    pub fn current(&self) -> Arc<Policy> {
        self.0.read().clone()
    }

    pub fn set(&self, policy: Policy) {
        *self.0.write() = Arc::new(policy);
    }
}

/// A connection's peer as the kernel reports it.
#[derive(Debug, Clone, Copy)]
pub enum PeerAddr {
    Tcp {
        local: SocketAddr,
        remote: SocketAddr,
    },
    Unix,
}

/// A connection's peer: where it is, who owns it when that was asked, and whether it may use
/// keyward.
#[derive(Debug)]
pub struct Peer {
    pub addr: PeerAddr,
    /// The uid the kernel reports, asked once at accept when a policy needs it (always for unix
    /// sockets, where it is free).
    pub owner: Option<Result<u32, String>>,
    /// The owner's user name, for counting its requests.
    pub name: Option<Arc<str>>,
    pub refusal: Option<Refusal>,
}

impl Peer {
    /// The uid to log with the connection's requests.
    pub fn uid(&self) -> Option<u32> {
        self.owner.as_ref().and_then(|o| o.as_ref().ok().copied())
    }
}

/// Why a connection may not use keyward; answered with 403 on each of its requests.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// What the client is told.
    pub message: String,
    pub uid: Option<u32>,
}

/// Decides connections for one worker thread: its netlink socket and its group cache.
pub struct Gate {
    policy: Arc<SharedPolicy>,
    /// Look up every connection's owner, policy or not, to count requests per user.
    identify: bool,
    lookup: Option<OwnerLookup>,
    /// Each user's groups, from the user database.
    groups: HashMap<u32, (Instant, Arc<[u32]>)>,
    names: HashMap<u32, (Instant, Arc<str>)>,
}

impl Gate {
    pub fn new(policy: Arc<SharedPolicy>, identify: bool) -> Self {
        Self {
            policy,
            identify,
            lookup: None,
            groups: HashMap::new(),
            names: HashMap::new(),
        }
    }

    /// The user's name (`uid:N` without one), cached like the groups.
    fn name_of(&mut self, uid: u32) -> Arc<str> {
        let now = Instant::now();
        if let Some((at, name)) = self.names.get(&uid)
            && now.duration_since(*at) < GROUP_CACHE_TTL
        {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(user_name(uid).unwrap_or_else(|| format!("uid:{uid}")));
        if self.names.len() > 4096 {
            self.names.clear();
        }
        self.names.insert(uid, (now, name.clone()));
        name
    }

    /// The uid that owns the client end of a TCP connection, asked of the kernel.
    pub fn tcp_owner(&mut self, local: SocketAddr, remote: SocketAddr) -> Result<u32, OwnerError> {
        let lookup = match &mut self.lookup {
            Some(lookup) => lookup,
            None => self.lookup.insert(OwnerLookup::new()?),
        };
        let owner = lookup.tcp_owner(local, remote);
        if let Err(OwnerError::Lookup(_)) = owner {
            // A broken netlink socket is replaced on the next query.
            self.lookup = None;
        }
        owner
    }

    /// Looks up who owns a TCP connection (when the policy needs to know) and decides it.
    pub fn admit_tcp(&mut self, local: SocketAddr, remote: SocketAddr) -> Peer {
        let addr = PeerAddr::Tcp { local, remote };
        if !self.policy.current().restricts_users() && !self.identify {
            return Peer {
                addr,
                owner: None,
                name: None,
                refusal: None,
            };
        }
        let owner = self.tcp_owner(local, remote);
        self.admit(addr, owner)
    }

    /// Decides a unix socket connection from its `SO_PEERCRED` uid.
    pub fn admit_unix(&mut self, uid: std::io::Result<u32>) -> Peer {
        self.admit(PeerAddr::Unix, uid.map_err(OwnerError::PeerCred))
    }

    fn admit(&mut self, addr: PeerAddr, owner: Result<u32, OwnerError>) -> Peer {
        let refusal = self.decide(&owner).err();
        if refusal.is_some() {
            match (&owner, &addr) {
                (Ok(uid), _) => tracing::warn!(uid, "connection refused: the user is not allowed"),
                (Err(err), PeerAddr::Tcp { remote, .. }) => tracing::warn!(
                    peer = %remote,
                    error = %err,
                    "connection refused: its owner could not be found"
                ),
                (Err(err), PeerAddr::Unix) => tracing::warn!(
                    error = %err,
                    "connection refused: its owner could not be found"
                ),
            }
        }
        let name = owner.as_ref().ok().map(|&uid| self.name_of(uid));
        Peer {
            addr,
            owner: Some(owner.map_err(|e| e.to_string())),
            name,
            refusal,
        }
    }

    /// Whether `peer` may call admin endpoints: keyward's own user, root, or an --admin-user.
    /// Its owner is looked up now if the accept did not.
    pub fn check_admin(&mut self, peer: &Peer) -> Result<u32, String> {
        let owner = match (&peer.owner, peer.addr) {
            (Some(owner), _) => owner.clone(),
            (None, PeerAddr::Tcp { local, remote }) => {
                self.tcp_owner(local, remote).map_err(|e| e.to_string())
            }
            (None, PeerAddr::Unix) => Err("the peer's credentials are unknown".into()),
        };
        let uid = owner.map_err(|why| {
            format!("admin endpoints need to know who is asking, and keyward could not: {why}")
        })?;
        if self.policy.current().is_admin(uid) {
            Ok(uid)
        } else {
            Err(format!(
                "uid {uid} may not use admin endpoints: they are served to keyward's own user, \
                 root, and users given with --admin-user"
            ))
        }
    }

    /// Whether a connection owned by `owner` may use keyward under the policy.
    pub fn decide(&mut self, owner: &Result<u32, OwnerError>) -> Result<(), Refusal> {
        let policy = self.policy.current();
        if !policy.restricts_users() {
            return Ok(());
        }
        let uid = match owner {
            Ok(uid) => *uid,
            Err(err) => {
                return Err(Refusal {
                    message: format!(
                        "keyward could not find out which user is connecting, so it refused the \
                         connection: {err}"
                    ),
                    uid: None,
                });
            }
        };
        if policy.users.contains(&uid) || self.in_allowed_group(&policy, uid) {
            return Ok(());
        }
        let name = user_name(uid);
        let who = name
            .as_deref()
            .map_or(uid.to_string(), |n| format!("{uid} ({n})"));
        let allow = name.unwrap_or_else(|| uid.to_string());
        Err(Refusal {
            message: format!(
                "keyward refused uid {who}: it is not an allowed user. An administrator can allow \
                 it with --allow-user {allow}, or by adding it to one of the groups given with \
                 --allow-group"
            ),
            uid: Some(uid),
        })
    }

    fn in_allowed_group(&mut self, policy: &Policy, uid: u32) -> bool {
        if policy.groups.is_empty() {
            return false;
        }
        self.groups(uid)
            .iter()
            .any(|gid| policy.groups.contains(gid))
    }

    /// The groups of `uid` (primary and supplementary), from the user database, cached.
    pub fn groups(&mut self, uid: u32) -> Arc<[u32]> {
        let now = Instant::now();
        match self.groups.get(&uid) {
            Some((at, groups)) if now.duration_since(*at) < GROUP_CACHE_TTL => groups.clone(),
            _ => {
                let groups: Arc<[u32]> = groups_of(uid).into();
                if self.groups.len() > 4096 {
                    self.groups.clear();
                }
                self.groups.insert(uid, (now, groups.clone()));
                groups
            }
        }
    }
}

/// The primary and supplementary groups of `uid` in the user database (empty when it has no
/// entry).
fn groups_of(uid: u32) -> Vec<u32> {
    use nix::unistd::{User, getgrouplist};
    let Ok(Some(user)) = User::from_uid(uid.into()) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name.as_bytes()) else {
        return vec![user.gid.as_raw()];
    };
    match getgrouplist(&name, user.gid) {
        Ok(groups) => groups.into_iter().map(|g| g.as_raw()).collect(),
        Err(_) => vec![user.gid.as_raw()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn an_unknown_owner_is_refused_when_a_policy_exists() {
        let policy = Policy::resolve(&["0".into()], &[], &[]).unwrap();
        let mut gate = Gate::new(Arc::new(SharedPolicy::new(policy)), false);
        let unknown = Err(OwnerError::NotFound {
            peer: "127.0.0.1:9".parse().unwrap(),
        });
        let refusal = gate.decide(&unknown).unwrap_err();
        assert!(refusal.message.contains("could not find out which user"));
        assert!(gate.decide(&Ok(0)).is_ok());
        let refusal = gate.decide(&Ok(4242)).unwrap_err();
        assert!(
            refusal.message.contains("refused uid 4242"),
            "{}",
            refusal.message
        );
        assert!(refusal.message.contains("--allow-user 4242"));
        // No policy: everyone, even an unknown owner.
        let mut open = Gate::new(Arc::default(), false);
        assert!(open.decide(&unknown).is_ok());
    }
}
