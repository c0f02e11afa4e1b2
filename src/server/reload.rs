//! SIGHUP: the settings that can change while keyward runs.

use std::sync::Arc;

use crate::access::gate::SharedPolicy;
use crate::config::Config;
use crate::server::tls::Tls;
use crate::telemetry::quota::Quotas;

/// Re-reads, on SIGHUP, the settings that can change while keyward runs.
#[derive(Clone)]
pub struct Reloader {
    pub(crate) tls: Option<Tls>,
    pub(crate) policy: Arc<SharedPolicy>,
    pub(crate) quotas: Option<Arc<Quotas>>,
}

impl Reloader {
    /// Puts a re-read configuration's access policy and quotas in force; connections and
    /// streams carry on. Settings that only take effect at start are reported.
    pub fn apply(&self, old: &Config, new: &Config) {
        self.policy.set(new.access.policy.clone());
        tracing::info!(
            "{}",
            new.access
                .policy
                .describe(new.access.client_tokens.is_some())
        );
        match &self.quotas {
            Some(quotas) => quotas.set_config(new.quotas.clone()),
            None if !new.quotas.is_empty() => tracing::warn!(
                "quotas take effect after a restart: keyward started without metrics, ledger or quotas"
            ),
            None => {}
        }
        let restart_only = [
            ("listen", old.listen != new.listen || old.unix != new.unix),
            ("upstream-url", old.upstream.uri != new.upstream.uri),
            ("credential", credential_names(old) != credential_names(new)),
            ("route", old.routes != new.routes),
            (
                "client-tokens",
                old.access.client_tokens != new.access.client_tokens,
            ),
            ("usage-log", old.usage_log != new.usage_log),
            ("metrics-listen", old.metrics_listen != new.metrics_listen),
            (
                "tls-cert",
                old.tls.as_ref().map(|t| (&t.cert, &t.key))
                    != new.tls.as_ref().map(|t| (&t.cert, &t.key)),
            ),
        ];
        for (setting, changed) in restart_only {
            if changed {
                tracing::warn!(
                    setting,
                    "this setting changed; it takes effect at the next start"
                );
            }
        }
    }

    /// Re-reads the TLS certificate and key. On error the old ones stay in use.
    pub fn reload(&self) {
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate and key re-read"),
                Err(err) => tracing::error!(
                    error = %err,
                    "TLS certificate or key not usable; the ones read before stay in use"
                ),
            }
        }
    }
}

/// What `--credential` names, where each is and where it sends.
fn credential_names(config: &Config) -> Vec<(String, String, String)> {
    config
        .credentials
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                format!("{:?}", c.source),
                c.upstream.uri.to_string(),
            )
        })
        .collect()
}
