//! The credentials a keyward holds and the routes that give each client one
//! (`--credential`, `--route`). Without them: one credential, for every client.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::config::credentials::{ClientMatch, RouteSpec};
use crate::credential::chatgpt::record::now;
use crate::proxy::credential::Credential;
use crate::proxy::error::ProxyError;

/// Every credential, and which clients use which.
pub struct Credentials {
    list: Vec<Credential>,
    routes: Vec<RouteSpec>,
    /// Until when (seconds since the epoch) each credential rests: its plan's limit was reached.
    spent: Vec<AtomicI64>,
}

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
        Self {
            list,
            routes,
            spent,
        }
    }

    pub fn get(&self, index: usize) -> &Credential {
        &self.list[index]
    }

    /// The credential at `index` rests for `seconds`: its plan's limit was reached.
    pub fn mark_spent(&self, index: usize, seconds: i64) {
        self.spent[index].store(now() + seconds, Ordering::Relaxed);
    }

    /// Whether the credential at `index` can take requests now: not resting, and usable (a login
    /// that has ended is not).
    fn usable(&self, index: usize, now: i64) -> bool {
        self.spent[index].load(Ordering::Relaxed) <= now && self.list[index].readiness().is_ok()
    }

    pub fn all(&self) -> &[Credential] {
        &self.list
    }

    /// The credential `/readyz` reports first, and the one a single-credential keyward has.
    pub fn first(&self) -> &Credential {
        &self.list[0]
    }

    /// Whether any route asks for a client's groups (they are then looked up per request).
    pub fn needs_groups(&self) -> bool {
        self.routes.iter().any(|route| {
            route
                .clients
                .iter()
                .any(|c| matches!(c, ClientMatch::Group { .. }))
        })
    }

    /// The credentials for `client`, in the order they are tried: those of the first route that
    /// names it (by name, one of its `groups`, or `*`), the usable ones first; a spent or ended
    /// credential goes last, so that a client whose credentials are all spent hears the
    /// upstream's own answer. `groups` is asked only when a route names a group.
    pub fn chain_for(
        &self,
        client: &Arc<str>,
        groups: impl FnOnce() -> Arc<[u32]>,
    ) -> Result<Vec<usize>, ProxyError> {
        let mut groups = Lazy(Some(groups), None);
        for route in &self.routes {
            let named = route.clients.iter().any(|pattern| match pattern {
                ClientMatch::Any => true,
                ClientMatch::Name(name) => **client == **name,
                ClientMatch::Group { gid, .. } => groups.get().contains(gid),
            });
            if named {
                if let [only] = route.credentials[..] {
                    return Ok(vec![only]);
                }
                let now = now();
                let (mut chain, resting): (Vec<usize>, Vec<usize>) = route
                    .credentials
                    .iter()
                    .partition(|&&index| self.usable(index, now));
                chain.extend(resting);
                return Ok(chain);
            }
        }
        Err(ProxyError::NoRoute {
            client: client.to_string(),
        })
    }
}

/// A value made on first use.
struct Lazy<F>(Option<F>, Option<Arc<[u32]>>);

impl<F: FnOnce() -> Arc<[u32]>> Lazy<F> {
    fn get(&mut self) -> &Arc<[u32]> {
        if let Some(make) = self.0.take() {
            self.1 = Some(make());
        }
        self.1.get_or_insert_with(|| Arc::from([]))
    }
}
