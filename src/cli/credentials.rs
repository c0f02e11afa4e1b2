//! The credentials `serve` holds: the one `--auth` names, or every `--credential`, each API key
//! read before any thread exists and each login opened and kept fresh in the background.

use std::sync::Arc;

use crate::config::credentials::Source;
use crate::config::values::DEFAULT_LOGIN;
use crate::config::{ChatGptConfig, Config, CredentialConfig, Upstream};
use crate::credential::api_key;
use crate::credential::chatgpt::home::Home;
use crate::credential::chatgpt::issuer::Issuer;
use crate::credential::chatgpt::tokens::TokenManager;
use crate::proxy::backend::Backend;
use crate::proxy::credential::Credential;
use crate::proxy::credentials::Credentials;
use crate::upstream::ClientSettings;

/// A credential once its key is read: ready, or a login still to be opened.
pub enum Pending {
    Ready(Credential),
    Login {
        name: Arc<str>,
        login: String,
        /// Its own issuer, if not `--issuer`'s.
        issuer: Option<String>,
        upstream: Upstream,
    },
}

/// Reads every API key (stdin or its file) and lists the logins to open.
pub fn read_keys(config: &Config) -> anyhow::Result<Vec<Pending>> {
    if config.credentials.is_empty() {
        return Ok(vec![match &config.credential {
            CredentialConfig::ApiKey { source, header } => Pending::Ready(Credential::api_key(
                Arc::from("api-key"),
                header.name(),
                api_key::load(source, *header)?,
                config.upstream.clone(),
            )),
            CredentialConfig::ChatGpt(chatgpt) => Pending::Login {
                name: cli_login_name(&chatgpt.login),
                login: chatgpt.login.clone(),
                issuer: None,
                upstream: config.upstream.clone(),
            },
        }]);
    }
    config
        .credentials
        .iter()
        .map(|spec| {
            Ok(match &spec.source {
                Source::Key { key, header } => Pending::Ready(Credential::api_key(
                    Arc::from(spec.name.as_str()),
                    header.name(),
                    api_key::load(key, *header)?,
                    spec.upstream.clone(),
                )),
                Source::Login { login, issuer } => Pending::Login {
                    name: Arc::from(spec.name.as_str()),
                    login: login.clone(),
                    issuer: issuer.clone(),
                    upstream: spec.upstream.clone(),
                },
            })
        })
        .collect()
}

/// Opens the logins; the credentials, with the routes that give each client one.
pub async fn open(config: &Config, pending: Vec<Pending>) -> anyhow::Result<Credentials> {
    let mut list = Vec::with_capacity(pending.len());
    for credential in pending {
        list.push(match credential {
            Pending::Ready(credential) => credential,
            Pending::Login {
                name,
                login,
                issuer,
                upstream,
            } => {
                let CredentialConfig::ChatGpt(shared) = &config.credential else {
                    anyhow::bail!("a login credential without ChatGPT settings");
                };
                let chatgpt = ChatGptConfig {
                    login,
                    issuer: issuer.unwrap_or_else(|| shared.issuer.clone()),
                    ..(**shared).clone()
                };
                login_credential(config, chatgpt, upstream, name).await?
            }
        });
    }
    for route in config.routes.iter().filter(|r| r.credentials.len() > 1) {
        let clients: Vec<String> = route.clients.iter().map(ToString::to_string).collect();
        let order: Vec<&str> = route
            .credentials
            .iter()
            .map(|&index| config.credentials[index].name.as_str())
            .collect();
        tracing::info!(
            route = clients.join(","),
            "credentials in turn when a plan's limit is reached: {}",
            order.join(", ")
        );
    }
    Ok(if config.credentials.is_empty() {
        Credentials::single(list.remove(0))
    } else {
        Credentials::new(list, config.routes.clone())
    })
}

/// What the ledger and the metrics call the login `--auth chatgpt` uses: `chatgpt`, or
/// `chatgpt:NAME` with `--login NAME`.
fn cli_login_name(login: &str) -> Arc<str> {
    if login == DEFAULT_LOGIN {
        Arc::from("chatgpt")
    } else {
        Arc::from(format!("chatgpt:{login}"))
    }
}

/// The ChatGPT credential for `serve --auth chatgpt` (tests build it in-process).
pub async fn chatgpt_credential(config: &Config) -> anyhow::Result<Credential> {
    let CredentialConfig::ChatGpt(chatgpt) = &config.credential else {
        anyhow::bail!("not configured for --auth chatgpt");
    };
    let name = cli_login_name(&chatgpt.login);
    login_credential(config, (**chatgpt).clone(), config.upstream.clone(), name).await
}

/// A ChatGPT login as a credential: the login in the home (or the state database), kept fresh
/// in the background. A missing or ended login is reported but does not stop keyward: requests
/// get 503 until `keyward login` stores a new one, which is picked up without a restart.
async fn login_credential(
    config: &Config,
    chatgpt: ChatGptConfig,
    upstream: Upstream,
    name: Arc<str>,
) -> anyhow::Result<Credential> {
    let home = Home::open(&chatgpt.home)?;
    // With --state, the login is shared in the database instead of the home.
    let state = config.state.as_ref().map(|shared| shared.db.clone());
    let (kind, login) = (chatgpt.store, chatgpt.login.clone());
    // Opening the state database connects to it: off the async threads.
    let (store, lock) = tokio::task::spawn_blocking(move || {
        crate::credential::chatgpt::refresh_lock::open_store(kind, &home, &login, state.as_ref())
    })
    .await??;
    let settings = ClientSettings::from_config(config);
    let issuer = Issuer::new(&chatgpt.issuer, &settings)?;
    let tokens = Arc::new(TokenManager::new(
        store,
        Some(lock),
        issuer,
        chatgpt.refresh_margin,
    ));
    match tokens.session().await {
        Ok(session) => tracing::info!(
            credential = %name,
            store = %tokens.store_description(),
            expires_at = session.expires_at,
            "using the ChatGPT login"
        ),
        Err(err) => tracing::warn!(credential = %name, "{err}; requests get 503 until then"),
    }
    tokio::spawn(tokens.clone().keep_fresh());
    tokio::spawn(
        // As often as the other shared state is read.
        tokens.clone().watch_shared(
            config
                .state
                .as_ref()
                .map_or(std::time::Duration::from_secs(1), |state| state.sync),
        ),
    );
    let backend = Backend::new(tokens, chatgpt, upstream, name);
    Ok(Credential::ChatGpt(Arc::new(backend)))
}
