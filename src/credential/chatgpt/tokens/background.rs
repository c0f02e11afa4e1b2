//! The token manager seen from outside and over time: whether it can serve (for `/readyz`), and
//! the background tasks that keep the login fresh and watch the state database.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{AuthError, TokenManager};
use crate::credential::chatgpt::record::now;

impl TokenManager {
    /// Whether requests can be served now: signed in, the login not ended, and the access token
    /// not expiring while refreshes fail. `Err` says why not.
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(reason) = self.dead_reason() {
            return Err(format!(
                "the ChatGPT login has ended ({reason}): run `keyward login`"
            ));
        }
        let Some(session) = self.current() else {
            return Err("not signed in to ChatGPT: run `keyward login`".into());
        };
        let failing = self.stats.last_failed.load(Ordering::Relaxed);
        match session.expires_at {
            Some(exp) if exp <= now() => Err("the access token has expired".into()),
            Some(_) if failing && self.expiring(&session) => {
                Err("the access token expires soon and refreshing it keeps failing".into())
            }
            _ => Ok(()),
        }
    }

    /// With `--state`: why serving is degraded (the state database is unreachable: the cached
    /// token serves until it expires, and nothing is refreshed meanwhile).
    pub fn degraded(&self) -> Option<&'static str> {
        self.shared_down
            .load(Ordering::Relaxed)
            .then_some("state database unreachable")
    }

    /// With `--state`: asks the state database every `every` when the login was last written,
    /// which also says whether it answers (for [`TokenManager::degraded`]); when another replica
    /// or a command changed it (a refresh, a new `keyward login`, a logout), reads it again.
    pub async fn watch_shared(self: Arc<Self>, every: Duration) {
        let Some(lock) = &self.lock else { return };
        let mut seen: Option<Option<f64>> = None;
        loop {
            let Some(answer) = lock.shared_changed_at().await else {
                return;
            };
            let reachable = answer.is_ok();
            let was_down = self.shared_down.swap(!reachable, Ordering::Relaxed);
            if was_down == reachable {
                if reachable {
                    tracing::info!("the state database answers again");
                } else {
                    tracing::warn!(
                        "the state database is unreachable: serving with the cached login; nothing is refreshed until it is back"
                    );
                }
            }
            if let Ok(changed) = answer {
                if seen.is_some_and(|before| before != changed) {
                    self.reload().await;
                }
                seen = Some(changed);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Reads the stored login again and uses it, unless a refresh here is under way (it reads
    /// the store itself): a new token is adopted, an ended login ends here, a removed one leaves
    /// this replica signed out.
    async fn reload(&self) {
        let Ok(_gate) = self.gate.try_lock() else {
            return;
        };
        let store = self.store.clone();
        let loaded = match tokio::task::spawn_blocking(move || store.load()).await {
            Ok(Ok(loaded)) => loaded,
            _ => return,
        };
        match loaded {
            Some(login) if login.dead.is_some() => {
                let reason = login.dead.map(|d| d.reason).unwrap_or_default();
                drop(self.mark_dead_locally(&reason));
            }
            Some(login) => {
                let current = self.current().map(|s| s.fingerprint.clone());
                if current.as_deref() != Some(login.access_token.fingerprint().as_str())
                    && self.adopt(&login).is_ok()
                {
                    self.dead.lock().take();
                    tracing::info!("the shared ChatGPT login changed: using the new access token");
                }
            }
            None => {
                if self.current.write().take().is_some() {
                    tracing::warn!(
                        "the shared ChatGPT login was removed (keyward logout): requests get 503 until `keyward login --state` stores a new one"
                    );
                }
            }
        }
    }

    /// Keeps the login fresh while keyward is idle: refreshes ahead of expiry, backs off on
    /// transient failures, and stops once the login is dead (a new `keyward login` revives it on
    /// the next request).
    pub async fn keep_fresh(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(5);
        loop {
            let wait = match self.session().await {
                Ok(session) => {
                    backoff = Duration::from_secs(5);
                    match session.expires_at {
                        Some(exp) => Duration::from_secs((exp - self.margin - now()).max(1) as u64),
                        None => Duration::from_secs(3600),
                    }
                }
                Err(AuthError::Dead { .. } | AuthError::NotSignedIn { .. }) => {
                    Duration::from_secs(60)
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_s = backoff.as_secs(), "background refresh failed");
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}
