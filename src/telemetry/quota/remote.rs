//! The quotas' side of the exchange between replicas (`--state`, [`crate::state::quota`]): what
//! this replica tells the others, and what they counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::{Quotas, minute_of};

/// What the other replicas counted for one client, as of the last exchange.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Remote {
    /// Streams they are relaying.
    pub active: u32,
    /// Requests they admitted in the last minute.
    pub recent: u32,
    /// Tokens of the last 24 hours...
    pub tokens: u64,
    /// ...by the hour (the minute each hour starts at), for Retry-After.
    pub hours: Vec<(u64, u64)>,
}

/// What this replica tells the others: its token counts per minute that changed since the last
/// exchange, and for every client with a quota, its streams and requests of the last minute.
#[derive(Debug, Default)]
pub struct Outgoing {
    pub tokens: Vec<(Arc<str>, u64, u64)>,
    pub live: Vec<(Arc<str>, u32, u32)>,
}

impl Quotas {
    /// What to tell the other replicas now; the changed token counts are taken (give them back
    /// with [`Quotas::unsent`] if they could not be sent).
    pub fn outgoing(&self) -> Outgoing {
        let mut states = self.state.lock();
        let now = Instant::now();
        let now_minute = minute_of(SystemTime::now());
        let dirty = std::mem::take(&mut states.dirty);
        let mut out = Outgoing::default();
        for (client, minute) in dirty {
            let n = states.clients.get(&client).map_or(0, |s| {
                s.tokens
                    .iter()
                    .find(|&&(m, _)| m == minute)
                    .map_or(0, |&(_, n)| n)
            });
            out.tokens.push((client, minute, n));
        }
        for (client, state) in &mut states.clients {
            state.expire(now, now_minute);
            let recent = u32::try_from(state.recent.len()).unwrap_or(u32::MAX);
            out.live.push((client.clone(), state.active, recent));
        }
        out
    }

    /// Token counts that could not be sent: sent with the next exchange.
    pub fn unsent(&self, out: Outgoing) {
        let mut states = self.state.lock();
        states.dirty.extend(
            out.tokens
                .into_iter()
                .map(|(client, minute, _)| (client, minute)),
        );
    }

    /// The other replicas' counts, as just read; clients missing from `remote` have none.
    pub fn set_remote(&self, mut remote: HashMap<String, Remote>) {
        let mut states = self.state.lock();
        for (client, state) in &mut states.clients {
            state.remote = remote.remove(&**client).unwrap_or_default();
        }
        for (client, theirs) in remote {
            states.clients.entry(Arc::from(client)).or_default().remote = theirs;
        }
    }

    /// The database is unreachable: the others' streams and requests are no longer known and
    /// stop counting; their tokens (which only leave the window slowly) still count.
    pub fn forget_remote_live(&self) {
        let mut states = self.state.lock();
        for state in states.clients.values_mut() {
            state.remote.active = 0;
            state.remote.recent = 0;
        }
    }
}
