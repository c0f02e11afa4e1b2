//! Reading identity claims from the tokens the issuer returns. Signatures are not checked: the
//! tokens come straight from the issuer over TLS, and keyward only reads who they name.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("the {which} is not a JWT (expected three dot-separated parts)")]
    Shape { which: &'static str },
    #[error("the {which}'s payload is not base64url-encoded JSON")]
    Payload { which: &'static str },
}

/// The claims keyward uses.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Claims {
    pub email: Option<String>,
    pub account_id: Option<String>,
    pub plan: Option<String>,
    pub fedramp: bool,
    /// `exp`, seconds since the epoch.
    pub expires_at: Option<i64>,
}

const AUTH_CLAIM: &str = "https://api.openai.com/auth";

/// Decodes a token's payload. `which` names the token in errors ("ID token", "access token").
pub fn claims(token: &str, which: &'static str) -> Result<Claims, JwtError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Shape { which });
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| JwtError::Payload { which })?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|_| JwtError::Payload { which })?;
    let auth = &json[AUTH_CLAIM];
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    Ok(Claims {
        email: text(&json["email"])
            .or_else(|| text(&json["https://api.openai.com/profile"]["email"])),
        account_id: text(&auth["chatgpt_account_id"]),
        plan: text(&auth["chatgpt_plan_type"]),
        fedramp: auth["chatgpt_account_is_fedramp"]
            .as_bool()
            .unwrap_or(false),
        expires_at: json["exp"].as_i64(),
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// An unsigned JWT with `payload`, as the fake issuer in the tests makes them.
    pub fn make(payload: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        format!(
            "{header}.{}.sig",
            URL_SAFE_NO_PAD.encode(payload.to_string())
        )
    }

    #[test]
    fn identity_claims_are_read() {
        let token = make(&serde_json::json!({
            "email": "a@example.com", "exp": 1_900_000_000,
            "https://api.openai.com/auth": {
                "chatgpt_account_id": "acct_1", "chatgpt_plan_type": "pro",
                "chatgpt_account_is_fedramp": true
            }
        }));
        let c = claims(&token, "ID token").unwrap();
        assert_eq!(c.email.as_deref(), Some("a@example.com"));
        assert_eq!(c.account_id.as_deref(), Some("acct_1"));
        assert_eq!(c.plan.as_deref(), Some("pro"));
        assert!(c.fedramp);
        assert_eq!(c.expires_at, Some(1_900_000_000));
    }

    #[test]
    fn malformed_tokens_are_errors_that_name_the_token() {
        assert!(
            claims("a.b", "access token")
                .unwrap_err()
                .to_string()
                .contains("access token")
        );
        assert!(claims("a.b.c.d", "ID token").is_err());
        assert!(
            claims("a.!!!.c", "ID token")
                .unwrap_err()
                .to_string()
                .contains("base64url")
        );
        let missing = claims(&make(&serde_json::json!({"sub": "x"})), "ID token").unwrap();
        assert_eq!(missing, Claims::default());
    }
}
