//! The login keyward holds, as it is stored.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::credential::chatgpt::jwt::{self, JwtError};
use crate::secret::SecretString;

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A ChatGPT login. Tokens are [`SecretString`]s: never printed, wiped when dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Login {
    pub id_token: SecretString,
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub account_id: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub fedramp: bool,
    /// When the access token expires (its `exp`), seconds since the epoch.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// When keyward last refreshed (or obtained) the tokens.
    #[serde(default)]
    pub last_refresh: Option<i64>,
    /// Set when the issuer refused the refresh token for good: only `keyward login` helps.
    #[serde(default)]
    pub dead: Option<Dead>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Dead {
    /// The issuer's error code, such as `refresh_token_reused`.
    pub reason: String,
    pub at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error("the tokens name no ChatGPT account (no chatgpt_account_id claim)")]
    NoAccount,
}

impl Login {
    /// Builds a login from freshly issued tokens, reading who they belong to.
    pub fn from_tokens(
        id_token: SecretString,
        access_token: SecretString,
        refresh_token: SecretString,
    ) -> Result<Self, LoginError> {
        Self::from_tokens_or_account(id_token, access_token, refresh_token, None)
    }

    /// As [`Login::from_tokens`], with an account id to use when the tokens name none.
    pub fn from_tokens_or_account(
        id_token: SecretString,
        access_token: SecretString,
        refresh_token: SecretString,
        fallback_account: Option<String>,
    ) -> Result<Self, LoginError> {
        let id = jwt::claims(id_token.expose(), "ID token")?;
        let access = jwt::claims(access_token.expose(), "access token")?;
        let account_id = id
            .account_id
            .clone()
            .or_else(|| access.account_id.clone())
            .or(fallback_account)
            .ok_or(LoginError::NoAccount)?;
        Ok(Self {
            id_token,
            access_token,
            refresh_token,
            account_id,
            email: id.email.or(access.email),
            plan: id.plan.or(access.plan),
            fedramp: id.fedramp || access.fedramp,
            expires_at: access.expires_at,
            last_refresh: Some(now()),
            dead: None,
        })
    }

    /// Whether the access token expires within `margin_secs` (or has no known expiry and is
    /// older than a day, which keyward treats the same).
    pub fn needs_refresh(&self, margin_secs: i64) -> bool {
        match self.expires_at {
            Some(exp) => exp - margin_secs <= now(),
            None => self.last_refresh.is_none_or(|at| at + 24 * 3600 <= now()),
        }
    }
}
