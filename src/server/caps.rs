//! How many connections keyward keeps open, in all and per user: checked at accept, once the
//! kernel has named the peer and before a byte of its request is read, so that no user (allowed
//! or refused) can take every file descriptor or pin unbounded memory with idle connections.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

/// The caps, shared by every worker.
#[derive(Debug)]
pub(crate) struct ConnectionCaps {
    max_total: usize,
    /// 0: no per-user cap.
    max_per_user: usize,
    total: AtomicUsize,
    per_user: Mutex<HashMap<u32, usize>>,
}

/// An open connection's place under the caps; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    caps: Arc<ConnectionCaps>,
    uid: Option<u32>,
}

/// Why a connection was turned away at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    Total(usize),
    User { uid: u32, limit: usize },
}

impl ConnectionCaps {
    pub(crate) fn new(max_total: usize, max_per_user: usize) -> Self {
        Self {
            max_total: max_total.max(1),
            max_per_user,
            total: AtomicUsize::new(0),
            per_user: Mutex::default(),
        }
    }

    /// Whether the owner of every connection must be known (to count it against its user).
    pub(crate) fn counts_users(&self) -> bool {
        self.max_per_user > 0
    }

    /// A place for a new connection of `uid` (`None`: its owner is not known, and only the
    /// total counts it), or why there is none.
    pub(crate) fn take(self: &Arc<Self>, uid: Option<u32>) -> Result<Slot, Full> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Total(self.max_total));
        }
        if let (Some(uid), true) = (uid, self.counts_users()) {
            let mut per_user = self.per_user.lock();
            let open = per_user.entry(uid).or_insert(0);
            if *open >= self.max_per_user {
                drop(per_user);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Full::User {
                    uid,
                    limit: self.max_per_user,
                });
            }
            *open += 1;
        }
        Ok(Slot {
            caps: self.clone(),
            uid: uid.filter(|_| self.counts_users()),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(uid) = self.uid {
            let mut per_user = self.caps.per_user.lock();
            if let Some(open) = per_user.get_mut(&uid) {
                *open -= 1;
                if *open == 0 {
                    per_user.remove(&uid);
                }
            }
        }
        self.caps.total.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Full {
    /// The whole answer written to a connection turned away: a 503 in OpenAI's error shape,
    /// then the connection is closed. Written without waiting, so it costs one syscall.
    pub(crate) fn response(self) -> Vec<u8> {
        let message = match self {
            Full::Total(limit) => format!(
                "keyward has {limit} connections open, its limit (--max-connections); retry shortly"
            ),
            Full::User { uid, limit } => format!(
                "uid {uid} already has {limit} connections open to keyward, its limit \
                 (--max-connections-per-user); close some or retry shortly"
            ),
        };
        let body = serde_json::json!({
            "error": {
                "message": message,
                "type": "keyward_upstream_error",
                "code": "too_many_connections",
                "param": null,
            }
        })
        .to_string();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_and_the_whole_are_capped_and_slots_come_back() {
        let caps = Arc::new(ConnectionCaps::new(5, 2));
        let a1 = caps.take(Some(1)).unwrap_or_else(|e| panic!("{e:?}"));
        let _a2 = caps.take(Some(1)).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            caps.take(Some(1)).err(),
            Some(Full::User { uid: 1, limit: 2 })
        );
        let _b = caps.take(Some(2)).unwrap_or_else(|e| panic!("{e:?}"));
        let _unknown = caps.take(None).unwrap_or_else(|e| panic!("{e:?}"));
        let _c = caps.take(Some(3)).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(caps.take(Some(4)).err(), Some(Full::Total(5)));
        drop(a1);
        assert!(caps.take(Some(1)).is_ok());
        let text = String::from_utf8(Full::Total(5).response()).unwrap_or_default();
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(
            text.ends_with('}') && text.contains("too_many_connections"),
            "{text}"
        );
    }
}
