//! The credentials a keyward holds and the routes that give each client one
//! (`--credential`, `--route`). Without them: one credential, for every client.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::config::credentials::{ClientMatch, RouteSpec};
use crate::credential::chatgpt::record::now;
use crate::proxy::credential::Credential;
use crate::proxy::error::ProxyError;
use crate::telemetry::quota::{Exceeded, Permit, Quotas, credential_quota};

/// Every credential, and which clients use which.
pub struct Credentials {
    list: Vec<Credential>,
    routes: Vec<RouteSpec>,
    /// Until when (seconds since the epoch) each credential rests: its plan's limit was reached.
    spent: Vec<AtomicI64>,
    /// Sessions (routes with several credentials only): the credential that last answered each,
    /// and when.
    sessions: parking_lot::Mutex<HashMap<Box<str>, (usize, i64)>>,
    /// The quotas, once telemetry runs: a credential over its own is passed over.
    quotas: OnceLock<Arc<Quotas>>,
    /// What each credential's quotas are counted under (`credential:NAME`).
    quota_names: Vec<Arc<str>>,
}

/// How long a session is remembered after its last request.
const SESSION_TTL_S: i64 = 3600;
/// The most sessions remembered (past it, the expired ones go, or all).
const MAX_SESSIONS: usize = 10_000;

impl Credentials {
    /// One credential for every client (the command line's `--auth`).
    pub fn single(credential: Credential) -> Self {
        Self::new(
            vec![credential],
            vec![RouteSpec {
                clients: vec![ClientMatch::Any],
                credentials: vec![0],
            }],
        )
    }

    /// `list` in the order of the configuration, which `routes` index.
    pub fn new(list: Vec<Credential>, routes: Vec<RouteSpec>) -> Self {
        let spent = list.iter().map(|_| AtomicI64::new(0)).collect();
        let quota_names = list
            .iter()
            .map(|c| Arc::from(credential_quota(c.name())))
            .collect();
        Self {
            list,
            routes,
            spent,
            sessions: parking_lot::Mutex::new(HashMap::new()),
            quotas: OnceLock::new(),
            quota_names,
        }
    }

    /// Counts requests against each credential's quotas from now on.
    pub fn set_quotas(&self, quotas: Arc<Quotas>) {
        let _ = self.quotas.set(quotas);
    }

    /// Admits a request with the credential at `index` against its quotas: the permit to hold
    /// while it runs, or the quota it is over.
    pub fn admit(&self, index: usize) -> Result<Option<Permit>, ProxyError> {
        match self.quotas.get() {
            Some(quotas) => quotas
                .admit(&self.quota_names[index])
                .map_err(|exceeded| self.over_quota(index, exceeded)),
            None => Ok(None),
        }
    }

    /// Whether the credential at `index` is within its quotas now (a request not counted).
    pub fn within_quota(&self, index: usize) -> Result<(), ProxyError> {
        match self.quotas.get() {
            Some(quotas) => quotas
                .check(&self.quota_names[index])
                .map_err(|exceeded| self.over_quota(index, exceeded)),
            None => Ok(()),
        }
    }

    fn over_quota(&self, index: usize, exceeded: Exceeded) -> ProxyError {
        ProxyError::CredentialQuota {
            credential: self.list[index].name().to_string(),
            exceeded,
        }
    }

    pub fn get(&self, index: usize) -> &Credential {
        &self.list[index]
    }

    /// The credential at `index` rests for `seconds`: its plan's limit was reached.
    pub fn mark_spent(&self, index: usize, seconds: i64) {
        self.spent[index].store(now() + seconds, Ordering::Relaxed);
    }

    /// Until when the credential at `index` rests, RFC 3339, while it does: its plan's limit was
    /// reached.
    pub fn resting_until(&self, index: usize) -> Option<String> {
        let until = self.spent[index].load(Ordering::Relaxed);
        (until > now()).then(|| {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(until.unsigned_abs());
            crate::telemetry::ledger::rfc3339(at)
        })
    }

    /// Whether the credential at `index` can take requests now: not resting, and usable (a login
    /// that has ended is not).
    pub fn usable(&self, index: usize, now: i64) -> bool {
        self.spent[index].load(Ordering::Relaxed) <= now && self.list[index].readiness().is_ok()
    }

    pub fn all(&self) -> &[Credential] {
        &self.list
    }

    /// The credential `/readyz` reports first, and the one a single-credential keyward has.
    pub fn first(&self) -> &Credential {
        &self.list[0]
    }

    /// Puts first in `chain` the credential that last answered `session`, while it is usable: a
    /// session stays where the upstream's prompt cache has it.
    pub fn sticky(&self, chain: &mut [usize], session: &str) {
        let now = now();
        let held = self
            .sessions
            .lock()
            .get(session)
            .filter(|(_, seen)| now - seen < SESSION_TTL_S)
            .map(|(index, _)| *index);
        if let Some(index) = held
            && self.usable(index, now)
            && let Some(at) = chain.iter().position(|&i| i == index)
        {
            chain[..=at].rotate_right(1);
        }
    }

    /// `session` was answered through the credential at `index`.
    pub fn remember(&self, session: &str, index: usize) {
        let now = now();
        let mut sessions = self.sessions.lock();
        if sessions.len() >= MAX_SESSIONS && !sessions.contains_key(session) {
            sessions.retain(|_, (_, seen)| now - *seen < SESSION_TTL_S);
            if sessions.len() >= MAX_SESSIONS {
                sessions.clear();
            }
        }
        sessions.insert(session.into(), (index, now));
    }

    /// The credentials for `client`, in the order they are tried: those of the first route that
    /// names it (by name, one of its `groups`, or `*`), the usable ones first; a spent or ended
    /// credential goes last, so that a client whose credentials are all spent hears the
    /// upstream's own answer. The client's groups (`Groups::Tokens` with client tokens, else the
    /// connection's user's OS groups) are looked up only when a route names a group; a route of
    /// one credential costs no allocation.
    pub fn chain_for(
        &self,
        client: &Arc<str>,
        groups: impl FnOnce() -> Groups,
    ) -> Result<Cow<'_, [usize]>, ProxyError> {
        let mut groups = Lazy(Some(groups), None);
        for route in &self.routes {
            let named = route.clients.iter().any(|pattern| match pattern {
                ClientMatch::Any => true,
                ClientMatch::Name(name) => **client == **name,
                ClientMatch::Group { name, gid } => match groups.get() {
                    Groups::Tokens(of_token) => of_token.iter().any(|g| g == name),
                    Groups::System(of_user) => gid.is_some_and(|gid| of_user.contains(&gid)),
                },
            });
            if named {
                if let [_] = route.credentials[..] {
                    return Ok(Cow::Borrowed(&route.credentials));
                }
                let now = now();
                let (mut chain, resting): (Vec<usize>, Vec<usize>) = route
                    .credentials
                    .iter()
                    .partition(|&&index| self.usable(index, now));
                chain.extend(resting);
                return Ok(Cow::Owned(chain));
            }
        }
        Err(ProxyError::NoRoute {
            client: client.to_string(),
        })
    }
}

/// The groups a client is in, for routes that name `@GROUP`.
pub enum Groups {
    /// A client token's (`keyward token add --group`).
    Tokens(Arc<[String]>),
    /// The OS groups of the user the kernel names for the connection.
    System(Arc<[u32]>),
}

/// A value made on first use.
struct Lazy<F>(Option<F>, Option<Groups>);

impl<F: FnOnce() -> Groups> Lazy<F> {
    fn get(&mut self) -> &Groups {
        if let Some(make) = self.0.take() {
            self.1 = Some(make());
        }
        self.1.get_or_insert_with(|| Groups::System(Arc::from([])))
    }
}
