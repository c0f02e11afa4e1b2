//! Who may use keyward, as configured: the uid and gid policy (names resolved to numbers once)
//! and the `Host` names keyward answers to. [`crate::access`] applies them to each connection.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{HOST, HeaderName, ORIGIN};

use crate::config::error::{AccessConfigError, ConfigError};

/// The uid and gid policy, resolved to numbers at start.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub(crate) users: BTreeSet<u32>,
    pub(crate) groups: BTreeSet<u32>,
    /// Users who may call admin endpoints besides keyward's own user and root.
    admins: BTreeSet<u32>,
}

impl Policy {
    /// `users` and `groups` as given to `--allow-user` / `--allow-group`: names or numbers.
    pub fn resolve(
        users: &[String],
        groups: &[String],
        admins: &[String],
    ) -> Result<Self, AccessConfigError> {
        Ok(Self {
            users: users
                .iter()
                .map(|u| resolve_user(u, "allow-user"))
                .collect::<Result<_, _>>()?,
            groups: groups
                .iter()
                .map(|g| resolve_group(g))
                .collect::<Result<_, _>>()?,
            admins: admins
                .iter()
                .map(|u| resolve_user(u, "admin-user"))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether a policy restricts users at all. Without one, every local user is served.
    pub fn restricts_users(&self) -> bool {
        !self.users.is_empty() || !self.groups.is_empty()
    }

    pub fn is_admin(&self, uid: u32) -> bool {
        uid == 0 || uid == crate::secret::hardening::effective_uid() || self.admins.contains(&uid)
    }

    /// One line for the startup log: who may use the credential; `tokens`: client tokens are
    /// required as well.
    pub fn describe(&self, tokens: bool) -> String {
        if !self.restricts_users() {
            return if tokens {
                "access: any client with a valid client token (--client-tokens), from any local \
                 user (restrict users with --allow-user / --allow-group)"
            } else {
                "no access policy: every local user who can reach keyward's addresses can use \
                 the credential (restrict it with --allow-user / --allow-group, or require \
                 client tokens with --client-tokens)"
            }
            .into();
        }
        let users: Vec<String> = self.users.iter().map(|&u| user_label(u)).collect();
        let groups: Vec<String> = self.groups.iter().map(|&g| group_label(g)).collect();
        format!(
            "access policy: users [{}], groups [{}]",
            users.join(", "),
            groups.join(", ")
        )
    }
}

pub(crate) fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn user_label(uid: u32) -> String {
    user_name(uid).map_or(uid.to_string(), |n| format!("{n} ({uid})"))
}

fn group_label(gid: u32) -> String {
    nix::unistd::Group::from_gid(gid.into())
        .ok()
        .flatten()
        .map_or(gid.to_string(), |g| format!("{} ({gid})", g.name))
}

fn resolve_user(text: &str, flag: &'static str) -> Result<u32, AccessConfigError> {
    if let Ok(uid) = text.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(text) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(AccessConfigError::NoSuchUser(text.to_owned(), flag)),
        Err(err) => Err(AccessConfigError::Database(err.to_string())),
    }
}

pub fn resolve_group(text: &str) -> Result<u32, AccessConfigError> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(text) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(AccessConfigError::NoSuchGroup(text.to_owned())),
        Err(err) => Err(AccessConfigError::Database(err.to_string())),
    }
}

/// A name looked up in every request: built once (from text, it would be parsed each time).
static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Which `Host` values keyward answers to: loopback names and addresses, the addresses it listens
/// on, and those named with `--allowed-host`. Anything else may be a DNS-rebinding attack from a
/// web page.
#[derive(Debug, Clone, Default)]
pub struct HostCheck {
    allowed: Vec<String>,
}

impl HostCheck {
    pub fn new(allowed_hosts: &[String], listen: &[SocketAddr]) -> Self {
        let mut allowed: Vec<String> = allowed_hosts
            .iter()
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .collect();
        allowed.extend(listen.iter().map(|a| a.ip().to_string()));
        Self { allowed }
    }

    /// Accepts `Host: ip` for one more address keyward listens on (a socket systemd handed over).
    pub fn allow(&mut self, ip: std::net::IpAddr) {
        self.allowed.push(ip.to_string());
    }

    /// Refuses requests a web browser sent: a cross-site `fetch` carries `Origin` or
    /// `Sec-Fetch-Site`, and a DNS-rebound one carries the attacker's host name in `Host`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        if headers.contains_key(ORIGIN) {
            return Err(
                "keyward does not serve requests from web pages (the request has an Origin header)"
                    .into(),
            );
        }
        if let Some(site) = headers.get(&SEC_FETCH_SITE)
            && site.as_bytes() != b"none"
        {
            return Err(
                "keyward does not serve requests from web pages (Sec-Fetch-Site is not `none`)"
                    .into(),
            );
        }
        let Some(host) = headers.get(HOST) else {
            return Ok(());
        };
        let host = host.to_str().unwrap_or("");
        let name = host_name(host).trim_end_matches('.');
        if is_loopback_name(name) || self.allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
            return Ok(());
        }
        Err(format!(
            "keyward does not answer to Host `{}`: it is not a loopback name or address. If this \
             name is meant to reach keyward, start it with --allowed-host {}",
            host.escape_debug(),
            name.escape_debug()
        ))
    }
}

/// `example.com:8080` → `example.com`, `[::1]:80` → `::1`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// `localhost`, a name under it, or a loopback address, in any case.
fn is_loopback_name(name: &str) -> bool {
    let under_localhost = name.len() > ".localhost".len()
        && name.is_char_boundary(name.len() - ".localhost".len())
        && name[name.len() - ".localhost".len()..].eq_ignore_ascii_case(".localhost");
    name.eq_ignore_ascii_case("localhost")
        || under_localhost
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Where the client tokens every request must carry are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientTokenSource {
    /// A file `keyward token --client-tokens FILE` changes.
    File(std::path::PathBuf),
    /// The state database's table (`--client-tokens state`).
    State,
}

/// `--client-tokens`: a file, or `state` for the state database's table (which needs `--state`).
pub fn client_token_source(
    flag: Option<&std::path::Path>,
    shared: bool,
) -> Result<Option<ClientTokenSource>, ConfigError> {
    match flag {
        None => Ok(None),
        Some(path) if path.as_os_str() == "state" => {
            if !shared {
                return Err(ConfigError::BadState(
                    "--client-tokens state reads the tokens from the state database: give \
                     --state URL too (or ./state for a file named state)"
                        .into(),
                ));
            }
            Ok(Some(ClientTokenSource::State))
        }
        Some(path) => Ok(Some(ClientTokenSource::File(path.to_owned()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn browsers_and_foreign_hosts_are_refused() {
        let check = HostCheck::new(&["Proxy.Example.".into()], &[]);
        for ok in [
            &[][..],
            &[("host", "127.0.0.1:8080")],
            &[("host", "localhost")],
            &[("host", "[::1]:9")],
            &[("host", "proxy.example:443")],
            &[("host", "PROXY.Example.:443")],
            &[("host", "LocalHost.")],
            &[("host", "codex.LOCALHOST:8080")],
            &[("host", "[0:0:0:0:0:0:0:1]:9")],
            &[("host", "127.0.0.1"), ("sec-fetch-site", "none")],
        ] {
            assert!(check.check(&headers(ok)).is_ok(), "{ok:?}");
        }
        for bad in [
            &[("host", "evil.example")][..],
            &[("host", "localhost.evil.example:8080")],
            &[("host", "evillocalhost")],
            &[("host", "x.localhostx")],
            &[("host", "127.0.0.1"), ("origin", "null")],
            &[("host", "127.0.0.1"), ("sec-fetch-site", "cross-site")],
            &[("host", "127.0.0.1"), ("sec-fetch-site", "same-origin")],
        ] {
            assert!(check.check(&headers(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_and_numbers_resolve_and_unknown_names_are_errors() {
        let policy = Policy::resolve(&["root".into(), "4242".into()], &["0".into()], &[]).unwrap();
        assert_eq!(policy.users, BTreeSet::from([0, 4242]));
        assert!(policy.restricts_users());
        let err = Policy::resolve(&["no-such-user-kw".into()], &[], &[]).unwrap_err();
        assert!(err.to_string().contains("no user named `no-such-user-kw`"));
        let err = Policy::resolve(&[], &["no-such-group-kw".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("no group named"));
        assert!(!Policy::default().restricts_users());
    }

    #[test]
    fn client_tokens_state_needs_the_state_database() {
        use std::path::Path;
        let err = client_token_source(Some(Path::new("state")), false).unwrap_err();
        assert!(err.to_string().contains("give --state URL"), "{err}");
        assert_eq!(
            client_token_source(Some(Path::new("state")), true).unwrap(),
            Some(ClientTokenSource::State)
        );
        assert_eq!(
            client_token_source(Some(Path::new("./state")), false).unwrap(),
            Some(ClientTokenSource::File("./state".into()))
        );
    }
}
