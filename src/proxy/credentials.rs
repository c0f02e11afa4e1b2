//! The credentials a keyward holds and the routes that give each client one
//! (`--credential`, `--route`). Without them: one credential, for every client.

use std::sync::Arc;

use crate::config::credentials::{ClientMatch, RouteSpec};
use crate::proxy::credential::Credential;
use crate::proxy::error::ProxyError;

/// Every credential, and which clients use which.
pub struct Credentials {
    list: Vec<Credential>,
    routes: Vec<RouteSpec>,
}

impl Credentials {
    /// One credential for every client (the command line's `--auth`).
    pub fn single(credential: Credential) -> Self {
        Self {
            list: vec![credential],
            routes: vec![RouteSpec {
                clients: vec![ClientMatch::Any],
                credentials: vec![0],
            }],
        }
    }

    /// `list` in the order of the configuration, which `routes` index.
    pub fn new(list: Vec<Credential>, routes: Vec<RouteSpec>) -> Self {
        Self { list, routes }
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

    /// The credential for `client`: the first of the first route that names it (by name, one of
    /// its `groups`, or `*`). `groups` is asked only when a route names a group.
    pub fn for_client(
        &self,
        client: &Arc<str>,
        groups: impl FnOnce() -> Arc<[u32]>,
    ) -> Result<&Credential, ProxyError> {
        let mut groups = Lazy(Some(groups), None);
        for route in &self.routes {
            let named = route.clients.iter().any(|pattern| match pattern {
                ClientMatch::Any => true,
                ClientMatch::Name(name) => **client == **name,
                ClientMatch::Group { gid, .. } => groups.get().contains(gid),
            });
            if named && let Some(&first) = route.credentials.first() {
                return Ok(&self.list[first]);
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
