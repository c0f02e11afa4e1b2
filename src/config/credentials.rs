//! Several credentials and the routes that give each client one: `--credential NAME:SETTINGS`
//! and `--route CLIENTS=CREDENTIALS` (in a config file, `[credential.NAME]` tables and
//! `[[route]]` entries). Without them keyward has one credential, the one `--auth` names, for
//! every client.

use std::path::PathBuf;

use crate::config::error::ConfigError;
use crate::config::quota::Limits;
use crate::config::upstream::{Upstream, parse_upstream};
use crate::config::values::{AuthHeader, KeySource, parse_login_name};
use crate::config::{CHATGPT_UPSTREAM, OPENAI_UPSTREAM};

/// One named credential.
#[derive(Debug, Clone)]
pub struct CredentialSpec {
    pub name: String,
    pub source: Source,
    /// Where requests with it go (default: OpenAI's API for a key, the Codex backend for a login).
    pub upstream: Upstream,
    /// Its quotas (`concurrent`, `requests-per-minute`, `tokens-per-day`): over one, the route's
    /// next credential is used.
    pub quota: Limits,
}

/// What a named credential is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An API key read at start, from a file or (one credential at most) standard input.
    Key { key: KeySource, header: AuthHeader },
    /// A ChatGPT login made with `keyward login --name LOGIN`, refreshed at `issuer` (default:
    /// `--issuer`'s).
    Login {
        login: String,
        issuer: Option<String>,
    },
}

/// Which clients a route is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMatch {
    Any,
    Name(String),
    /// The members of this group: with client tokens, the clients added with `--group NAME`;
    /// without, the users the kernel names for connections who are in the OS group (`gid`, when
    /// there is one of that name).
    Group {
        name: String,
        gid: Option<u32>,
    },
}

/// Clients, and the credentials they use, in order (indices into the credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub clients: Vec<ClientMatch>,
    pub credentials: Vec<usize>,
}

fn bad(flag: &'static str, text: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError::BadCredential(format!("--{flag} `{text}`: {why}"))
}

/// `NAME:KEY=VALUE,KEY=VALUE`: `api-key-file=PATH`, `api-key-stdin=true` or `chatgpt=LOGIN`,
/// and optionally `upstream-url=URL`, `auth-header=bearer|api-key` (a key), `issuer=URL` (a
/// login) and quotas.
pub fn parse_credential(text: &str) -> Result<CredentialSpec, ConfigError> {
    let err = |why: &str| bad("credential", text, why);
    let (name, settings) = text
        .split_once(':')
        .ok_or_else(|| err("expected NAME:api-key-file=PATH or NAME:chatgpt=LOGIN"))?;
    parse_login_name(name).map_err(|why| err(&why.replace("login name", "credential name")))?;
    let (mut file, mut login, mut upstream, mut header) = (None, None, None, AuthHeader::Bearer);
    let (mut stdin, mut issuer) = (false, None);
    let mut quota = Limits::default();
    for pair in settings.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| err(&format!("`{pair}` is not KEY=VALUE")))?;
        match key {
            "api-key-file" => file = Some(PathBuf::from(value)),
            "api-key-stdin" => {
                stdin = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(err("api-key-stdin is `true` or `false`")),
                }
            }
            "issuer" => issuer = Some(value.trim_end_matches('/').to_owned()),
            "chatgpt" => login = Some(parse_login_name(value).map_err(|why| err(&why))?),
            "upstream-url" => upstream = Some(value.to_owned()),
            "auth-header" => {
                header = match value {
                    "bearer" => AuthHeader::Bearer,
                    "api-key" => AuthHeader::ApiKey,
                    _ => return Err(err("auth-header is `bearer` or `api-key`")),
                }
            }
            _ if quota.set(key, value).map_err(|why| err(&why))? => {}
            _ => {
                return Err(err(&format!(
                    "unknown setting `{key}` (api-key-file, api-key-stdin, chatgpt, upstream-url, \
                     auth-header, issuer, concurrent, requests-per-minute, tokens-per-day)"
                )));
            }
        }
    }
    if issuer.is_some() && login.is_none() {
        return Err(err(
            "issuer is a setting of a ChatGPT login (chatgpt=LOGIN)",
        ));
    }
    let source = match (file, stdin, login) {
        (Some(file), false, None) => Source::Key {
            key: KeySource::File(file),
            header,
        },
        (None, true, None) => Source::Key {
            key: KeySource::Stdin,
            header,
        },
        (None, false, Some(login)) => Source::Login { login, issuer },
        _ => {
            return Err(err(
                "give exactly one of api-key-file=PATH, api-key-stdin=true and chatgpt=LOGIN",
            ));
        }
    };
    let default = match source {
        Source::Key { .. } => OPENAI_UPSTREAM,
        Source::Login { .. } => CHATGPT_UPSTREAM,
    };
    Ok(CredentialSpec {
        name: name.to_owned(),
        source,
        upstream: parse_upstream(upstream.as_deref().unwrap_or(default))?,
        quota,
    })
}

/// `CLIENT,CLIENT=CREDENTIAL,CREDENTIAL`: clients are names, `@GROUP` or `*`.
pub fn parse_route(text: &str, credentials: &[CredentialSpec]) -> Result<RouteSpec, ConfigError> {
    let err = |why: String| bad("route", text, why);
    let (clients, names) = text
        .split_once('=')
        .ok_or_else(|| err("expected CLIENTS=CREDENTIALS, e.g. alice,@codex=plan,key".into()))?;
    let clients = clients
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|client| match client.strip_prefix('@') {
            _ if client == "*" => Ok(ClientMatch::Any),
            Some("") => Err(err("`@` needs a group name".into())),
            Some(group) => Ok(ClientMatch::Group {
                name: group.to_owned(),
                // A group of client tokens need not be an OS group.
                gid: crate::config::access::resolve_group(group).ok(),
            }),
            None => Ok(ClientMatch::Name(client.to_owned())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let credentials = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|name| {
            credentials
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| err(format!("there is no credential named `{name}`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if clients.is_empty() || credentials.is_empty() {
        return Err(err(
            "a route needs at least one client and one credential".into()
        ));
    }
    Ok(RouteSpec {
        clients,
        credentials,
    })
}

/// The credentials and routes from their flags. With credentials but no route, one credential
/// serves every client; several need routes.
pub fn settings(
    credential_flags: &[String],
    route_flags: &[String],
) -> Result<(Vec<CredentialSpec>, Vec<RouteSpec>), ConfigError> {
    let mut credentials: Vec<CredentialSpec> = Vec::new();
    for text in credential_flags {
        let spec = parse_credential(text)?;
        if credentials.iter().any(|c| c.name == spec.name) {
            return Err(bad(
                "credential",
                text,
                "a credential of that name is given twice",
            ));
        }
        let stdin = |c: &CredentialSpec| {
            matches!(
                c.source,
                Source::Key {
                    key: KeySource::Stdin,
                    ..
                }
            )
        };
        if stdin(&spec) && credentials.iter().any(stdin) {
            return Err(bad(
                "credential",
                text,
                "only one credential can read its key from standard input",
            ));
        }
        credentials.push(spec);
    }
    if credentials.is_empty() && !route_flags.is_empty() {
        return Err(ConfigError::BadCredential(
            "--route needs credentials to route to (--credential, or [credential.NAME])".into(),
        ));
    }
    let mut routes = route_flags
        .iter()
        .map(|text| parse_route(text, &credentials))
        .collect::<Result<Vec<_>, _>>()?;
    match credentials.len() {
        0 => {}
        1 if routes.is_empty() => routes.push(RouteSpec {
            clients: vec![ClientMatch::Any],
            credentials: vec![0],
        }),
        _ if routes.is_empty() => {
            return Err(ConfigError::BadCredential(
                "several credentials need routes that say which clients use which \
                 (--route CLIENTS=CREDENTIALS, or [[route]])"
                    .into(),
            ));
        }
        _ => {}
    }
    Ok((credentials, routes))
}

impl std::fmt::Display for ClientMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientMatch::Any => f.write_str("every client"),
            ClientMatch::Name(name) => f.write_str(name),
            ClientMatch::Group { name, .. } => write!(f, "@{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_routes_are_read_and_checked() {
        let (creds, routes) = settings(
            &[
                "plan:chatgpt=team,issuer=https://auth.example.com/".into(),
                "key:api-key-file=/etc/keyward/openai-key,upstream-url=http://127.0.0.1:9/v1/responses"
                    .into(),
            ],
            &["alice,bob=plan,key".into(), "*=key".into()],
        )
        .unwrap();
        assert_eq!(
            creds[0].source,
            Source::Login {
                login: "team".into(),
                issuer: Some("https://auth.example.com".into()),
            }
        );
        assert_eq!(creds[0].upstream.uri, CHATGPT_UPSTREAM);
        assert_eq!(creds[1].upstream.uri, "http://127.0.0.1:9/v1/responses");
        assert_eq!(routes[0].credentials, [0, 1]);
        assert_eq!(routes[1].clients, [ClientMatch::Any]);

        let refused = |c: &[&str], r: &[&str]| {
            let c: Vec<String> = c.iter().map(|s| s.to_string()).collect();
            let r: Vec<String> = r.iter().map(|s| s.to_string()).collect();
            settings(&c, &r).unwrap_err().to_string()
        };
        assert!(
            refused(&["k:api-key-file=/x"], &["*=nope"]).contains("no credential named `nope`")
        );
        assert!(refused(&["k:chatgpt=a,api-key-file=/x"], &[]).contains("exactly one"));
        assert!(refused(&["k:api-key-file=/x", "j:chatgpt=a"], &[]).contains("need routes"));
        assert!(refused(&["k:api-key-file=/x", "k:chatgpt=a"], &[]).contains("twice"));
        assert!(refused(&["../k:chatgpt=a"], &[]).contains("credential name"));
        assert!(refused(&["k:colour=red"], &[]).contains("unknown setting `colour`"));
        assert!(
            refused(&["k:api-key-stdin=true", "j:api-key-stdin=true"], &["*=k"])
                .contains("only one credential can read its key from standard input")
        );
        assert!(
            refused(&["k:api-key-file=/x,issuer=https://a"], &[])
                .contains("issuer is a setting of a ChatGPT login")
        );
        assert!(
            refused(&["k:api-key-file=/x,tokens-per-day=lots"], &[])
                .contains("tokens-per-day: `lots` is not a whole number")
        );
        let (quoted, _) = settings(
            &["k:api-key-file=/x,tokens-per-day=500,concurrent=2".to_owned()],
            &[],
        )
        .unwrap();
        assert_eq!(quoted[0].quota.tokens_per_day, Some(500));
        assert_eq!(quoted[0].quota.concurrent, Some(2));
        assert!(refused(&[], &["*=k"]).contains("needs credentials"));
    }
}
