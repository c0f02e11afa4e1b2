//! The token manager: hands out a valid access token, refreshing it so that exactly one refresh
//! of a login happens at a time, in this process and across processes sharing the home (or, with
//! `--state`, across replicas sharing the state database).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use crate::credential::chatgpt::issuer::{Issuer, IssuerError};
use crate::credential::chatgpt::plan::PlanLimits;
use crate::credential::chatgpt::record::{Dead, Login, now};
use crate::credential::chatgpt::refresh_lock::{Held, RefreshLock};
use crate::credential::chatgpt::store::{LoginStore, StoreError};
use crate::secret::{SecretHeader, bearer_header};

/// What requests need from the login: built once per access token.
pub struct Session {
    pub authorization: SecretHeader,
    pub account_id: HeaderValue,
    pub fedramp: bool,
    pub expires_at: Option<i64>,
    /// Tells this access token from others without revealing it.
    pub fingerprint: String,
}

/// Why no access token can be had. Cloneable: every waiter on a refresh gets the same answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("keyward is not signed in ({store}): sign in with `keyward login`")]
    NotSignedIn { store: String },
    #[error("the ChatGPT login has ended ({reason}): sign in again with `keyward login`")]
    Dead { reason: String },
    #[error(
        "the access token has expired and could not be refreshed ({0}); keyward keeps retrying"
    )]
    RefreshFailed(String),
    #[error("the login store could not be used: {0}")]
    Store(String),
    #[error(
        "the ChatGPT sign-in cannot be refreshed: the state database is unreachable (a replica \
         never refreshes alone, which would race the others)"
    )]
    SharedUnreachable(String),
}

impl From<StoreError> for AuthError {
    fn from(err: StoreError) -> Self {
        AuthError::Store(err.to_string())
    }
}

/// Counters for tests and, later, metrics.
#[derive(Debug, Default)]
pub struct RefreshStats {
    /// Refresh-token uses sent to the issuer by this process.
    pub attempts: AtomicU64,
    pub successes: AtomicU64,
    pub failures: AtomicU64,
    /// Whether the latest refresh attempt failed.
    pub last_failed: std::sync::atomic::AtomicBool,
}

struct Gate {
    /// Bumped after each completed refresh attempt; a caller that waited through one shares it.
    generation: u64,
    last: Option<Result<Arc<Session>, AuthError>>,
    /// A login refreshed but not yet saved (the store failed): it holds the only valid refresh
    /// token, so it is used, and saved again, before the store is believed.
    unsaved: Option<Login>,
    /// When a missing or dead login was last looked for, so a flood of requests does not
    /// re-read the store for each one.
    last_miss: Option<Instant>,
}

mod background;

pub struct TokenManager {
    store: Arc<dyn LoginStore>,
    lock: Option<RefreshLock>,
    issuer: Issuer,
    margin: i64,
    current: RwLock<Option<Arc<Session>>>,
    generation: AtomicU64,
    gate: tokio::sync::Mutex<Gate>,
    dead: Mutex<Option<String>>,
    /// With `--state`: the state database did not answer when last asked.
    shared_down: std::sync::atomic::AtomicBool,
    pub stats: RefreshStats,
    /// How much of the plan's limits is used, as the backend last said.
    pub plan: PlanLimits,
}

impl TokenManager {
    /// `lock`, when given, serialises refreshes across processes.
    pub fn new(
        store: Arc<dyn LoginStore>,
        lock: Option<RefreshLock>,
        issuer: Issuer,
        margin: Duration,
    ) -> Self {
        Self {
            store,
            lock,
            issuer,
            margin: margin.as_secs() as i64,
            current: RwLock::new(None),
            plan: PlanLimits::default(),
            generation: AtomicU64::new(0),
            gate: tokio::sync::Mutex::new(Gate {
                generation: 0,
                last: None,
                unsaved: None,
                last_miss: None,
            }),
            dead: Mutex::new(None),
            shared_down: std::sync::atomic::AtomicBool::new(false),
            stats: RefreshStats::default(),
        }
    }

    pub fn store_description(&self) -> String {
        self.store.describe()
    }

    /// A session whose access token is not within the margin of expiring, refreshing first if
    /// needed. Concurrent callers share one refresh.
    pub async fn session(&self) -> Result<Arc<Session>, AuthError> {
        let current = self.current();
        if let Some(session) = &current
            && !self.expiring(session)
        {
            return Ok(session.clone());
        }
        self.refresh(current.map(|s| s.fingerprint.clone()), false)
            .await
    }

    /// After the backend refused `failed` with 401: re-read the store and refresh, unless another
    /// refresh (here or in another process) has already replaced that token.
    pub async fn after_unauthorized(&self, failed: &Session) -> Result<Arc<Session>, AuthError> {
        self.refresh(Some(failed.fingerprint.clone()), true).await
    }

    /// Seconds until the current access token expires, if known.
    pub fn expires_in(&self) -> Option<i64> {
        self.current()?.expires_at.map(|exp| exp - now())
    }

    /// The reason the login is dead, if it is.
    pub fn dead_reason(&self) -> Option<String> {
        self.dead.lock().clone()
    }

    fn current(&self) -> Option<Arc<Session>> {
        self.current.read().clone()
    }

    fn expiring(&self, session: &Session) -> bool {
        session
            .expires_at
            .is_some_and(|exp| exp - self.margin <= now())
    }

    async fn refresh(&self, stale: Option<String>, force: bool) -> Result<Arc<Session>, AuthError> {
        let seen = self.generation.load(Ordering::Acquire);
        let mut gate = self.gate.lock().await;
        if gate.generation != seen
            && let Some(last) = gate.last.clone()
        {
            // A refresh attempt finished while this caller waited for it: share its outcome.
            return last;
        }
        if let (Some(at), Some(Err(err @ (AuthError::NotSignedIn { .. } | AuthError::Dead { .. })))) =
            (gate.last_miss, &gate.last)
            && at.elapsed() < Duration::from_secs(2)
        {
            return Err(err.clone());
        }
        let result = match self.refresh_locked(&mut gate, stale, force).await {
            // Refreshing alone would race the other replicas: the cached token serves until it
            // expires.
            Err(AuthError::SharedUnreachable(why)) => match self
                .current()
                .filter(|session| session.expires_at.is_some_and(|exp| exp > now()))
            {
                Some(session) => {
                    tracing::warn!(error = %why, "the state database is unreachable: serving with the cached access token until it expires");
                    Ok(session)
                }
                None => Err(AuthError::SharedUnreachable(why)),
            },
            other => other,
        };
        if matches!(
            result,
            Err(AuthError::NotSignedIn { .. } | AuthError::Dead { .. })
        ) {
            gate.last_miss = Some(Instant::now());
        }
        gate.last = Some(result.clone());
        gate.generation += 1;
        self.generation.store(gate.generation, Ordering::Release);
        result
    }

    async fn refresh_locked(
        &self,
        gate: &mut Gate,
        stale: Option<String>,
        force: bool,
    ) -> Result<Arc<Session>, AuthError> {
        let held = RefreshLock::take(self.lock.as_ref())
            .await
            .map_err(|err| match err {
                StoreError::State(err) => AuthError::SharedUnreachable(err.to_string()),
                other => AuthError::from(other),
            })?;
        let result = self.refresh_held(&held, gate, stale, force).await;
        if let Err(err) = held.release().await {
            tracing::error!(error = %err, "could not store the refreshed login");
        }
        result
    }

    async fn refresh_held(
        &self,
        held: &Held,
        gate: &mut Gate,
        stale: Option<String>,
        force: bool,
    ) -> Result<Arc<Session>, AuthError> {
        if let Some(unsaved) = gate.unsaved.clone() {
            match held.save(&self.store, unsaved.clone()).await {
                Ok(()) => gate.unsaved = None,
                Err(err) => {
                    tracing::error!(error = %err, "still cannot save the refreshed login; it exists only in this process")
                }
            }
        }
        let login = match gate.unsaved.clone() {
            Some(login) => login,
            None => held
                .load(&self.store)
                .await?
                .ok_or_else(|| AuthError::NotSignedIn {
                    store: self.store.describe(),
                })?,
        };
        if let Some(dead) = &login.dead {
            return Err(self.mark_dead_locally(&dead.reason));
        }
        self.dead.lock().take();

        let stored = login.access_token.fingerprint();
        let replaced_elsewhere = stale.as_deref() != Some(stored.as_str());
        if !login.needs_refresh(self.margin) && (!force || replaced_elsewhere) {
            // Fresh enough, or another process refreshed it already: adopt it.
            return self.adopt(&login);
        }

        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        match self.issuer.refresh(&login.refresh_token).await {
            Ok(tokens) => {
                self.stats.successes.fetch_add(1, Ordering::Relaxed);
                self.stats.last_failed.store(false, Ordering::Relaxed);
                let Some(access_token) = tokens.access_token else {
                    return Err(AuthError::RefreshFailed(
                        "the sign-in service returned no access token".into(),
                    ));
                };
                let id_token = tokens.id_token.unwrap_or_else(|| login.id_token.clone());
                let refresh_token = tokens
                    .refresh_token
                    .unwrap_or_else(|| login.refresh_token.clone());
                let refreshed = match Login::from_tokens(
                    id_token.clone(),
                    access_token.clone(),
                    refresh_token.clone(),
                ) {
                    Ok(fresh) => fresh,
                    Err(err) => {
                        tracing::warn!(error = %err, "the refreshed tokens could not be read; keeping the known identity");
                        Login {
                            id_token,
                            access_token,
                            refresh_token,
                            last_refresh: Some(now()),
                            expires_at: None,
                            ..login.clone()
                        }
                    }
                };
                // The old refresh token is spent: the new one is saved before anything uses the
                // new access token.
                if let Err(err) = held.save(&self.store, refreshed.clone()).await {
                    tracing::error!(error = %err, "could not save the refreshed login; keeping it in memory and retrying the save");
                    gate.unsaved = Some(refreshed.clone());
                }
                tracing::info!(
                    expires_at = refreshed.expires_at,
                    "refreshed the ChatGPT access token"
                );
                self.adopt(&refreshed)
            }
            Err(err) if err.is_permanent() => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                self.stats.last_failed.store(true, Ordering::Relaxed);
                let reason = err.code().unwrap_or("invalid_grant").to_owned();
                tracing::error!(
                    reason,
                    "the sign-in service refused the refresh token for good; run `keyward login`"
                );
                let mut dead = login;
                dead.dead = Some(Dead {
                    reason: reason.clone(),
                    at: now(),
                });
                if let Err(err) = held.save(&self.store, dead).await {
                    tracing::warn!(error = %err, "could not record the dead login in the store");
                }
                Err(self.mark_dead_locally(&reason))
            }
            Err(err) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                self.stats.last_failed.store(true, Ordering::Relaxed);
                tracing::warn!(error = %err, "refreshing the ChatGPT access token failed; will retry");
                // Within the margin the old token still works: keep serving with it.
                if !force && login.expires_at.is_some_and(|exp| exp > now()) {
                    return self.adopt(&login);
                }
                Err(AuthError::RefreshFailed(transient_summary(&err)))
            }
        }
    }

    fn adopt(&self, login: &Login) -> Result<Arc<Session>, AuthError> {
        let authorization = bearer_header(&login.access_token).map_err(|_| {
            AuthError::Store("the stored access token is not a valid header value".into())
        })?;
        let account_id = HeaderValue::from_str(&login.account_id).map_err(|_| {
            AuthError::Store("the stored account id is not a valid header value".into())
        })?;
        let session = Arc::new(Session {
            authorization,
            account_id,
            fedramp: login.fedramp,
            expires_at: login.expires_at,
            fingerprint: login.access_token.fingerprint(),
        });
        *self.current.write() = Some(session.clone());
        Ok(session)
    }

    fn mark_dead_locally(&self, reason: &str) -> AuthError {
        *self.current.write() = None;
        *self.dead.lock() = Some(reason.to_owned());
        AuthError::Dead {
            reason: reason.to_owned(),
        }
    }
}

/// A short description of a transient refresh failure, safe for clients to see.
fn transient_summary(err: &IssuerError) -> String {
    match err {
        IssuerError::Unreachable { .. } => "the sign-in service is unreachable".into(),
        IssuerError::Refused { status, code, .. } => match code {
            Some(code) => format!("the sign-in service answered {status} ({code})"),
            None => format!("the sign-in service answered {status}"),
        },
        IssuerError::BadResponse(_) => "the sign-in service sent an unexpected answer".into(),
    }
}
