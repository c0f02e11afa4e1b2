//! Talking to the OAuth issuer (`auth.openai.com` or `--issuer`): code exchange, refresh,
//! revocation, and the device-code endpoints.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::credential::chatgpt::CLIENT_ID;
use crate::secret::SecretString;
use crate::upstream::{ClientSettings, Connector, UpstreamError, build_client};

type HttpClient = Client<HttpsConnector<Connector>, Full<Bytes>>;

/// Error codes with which the issuer refuses a refresh token for good.
pub const PERMANENT_REFRESH_ERRORS: [&str; 4] = [
    "refresh_token_expired",
    "refresh_token_reused",
    "refresh_token_invalidated",
    "invalid_grant",
];

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("could not reach the sign-in service at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the sign-in service answered {status}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Refused {
        status: StatusCode,
        /// The issuer's error code, if it gave one.
        code: Option<String>,
        message: Option<String>,
    },
    #[error("the sign-in service sent an unexpected answer: {0}")]
    BadResponse(String),
}

impl IssuerError {
    /// Whether this refresh failure means the login is dead (as opposed to worth retrying).
    pub fn is_permanent(&self) -> bool {
        matches!(self, IssuerError::Refused { code: Some(code), .. } if PERMANENT_REFRESH_ERRORS.contains(&code.as_str()))
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            IssuerError::Refused { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// Tokens from the token endpoint. Any of them may be missing from a refresh.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    pub id_token: Option<SecretString>,
    pub access_token: Option<SecretString>,
    pub refresh_token: Option<SecretString>,
}

/// The device-code flow's first answer.
#[derive(Debug)]
pub struct DeviceCode {
    pub device_auth_id: String,
    pub user_code: String,
    pub interval: Duration,
}

/// What the device-code poll returns once the user has approved.
#[derive(Debug, Deserialize)]
pub struct DeviceGrant {
    pub authorization_code: SecretString,
    pub code_verifier: SecretString,
}

#[derive(Clone)]
pub struct Issuer {
    base: String,
    client: HttpClient,
    timeout: Duration,
}

impl Issuer {
    pub fn new(base: &str, settings: &ClientSettings) -> Result<Self, UpstreamError> {
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            client: build_client(settings)?,
            timeout: Duration::from_secs(30),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Exchanges an authorization code (browser or device flow) for tokens.
    pub async fn exchange_code(
        &self,
        code: &SecretString,
        redirect_uri: &str,
        verifier: &SecretString,
    ) -> Result<TokenResponse, IssuerError> {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code.expose())
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("client_id", CLIENT_ID)
            .append_pair("code_verifier", verifier.expose())
            .finish();
        let form = SecretString::new(form);
        let body = self
            .post(
                "/oauth/token",
                "application/x-www-form-urlencoded",
                form.expose().as_bytes(),
            )
            .await?;
        parse(&body)
    }

    /// Uses the refresh token once. Refresh tokens are single-use: the caller must save what
    /// comes back before anything else.
    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
    ) -> Result<TokenResponse, IssuerError> {
        let payload = SecretString::new(
            json!({
                "client_id": CLIENT_ID,
                "grant_type": "refresh_token",
                "refresh_token": refresh_token.expose(),
            })
            .to_string(),
        );
        let body = self
            .post(
                "/oauth/token",
                "application/json",
                payload.expose().as_bytes(),
            )
            .await?;
        parse(&body)
    }

    /// Revokes a refresh token (logout).
    pub async fn revoke(&self, refresh_token: &SecretString) -> Result<(), IssuerError> {
        let payload = SecretString::new(
            json!({
                "token": refresh_token.expose(),
                "token_type_hint": "refresh_token",
                "client_id": CLIENT_ID,
            })
            .to_string(),
        );
        self.post(
            "/oauth/revoke",
            "application/json",
            payload.expose().as_bytes(),
        )
        .await
        .map(drop)
    }

    /// Starts the device-code flow.
    pub async fn device_code(&self) -> Result<DeviceCode, IssuerError> {
        let payload = json!({ "client_id": CLIENT_ID }).to_string();
        let body = self
            .post(
                "/api/accounts/deviceauth/usercode",
                "application/json",
                payload.as_bytes(),
            )
            .await?;
        let json: Value =
            serde_json::from_slice(&body).map_err(|e| IssuerError::BadResponse(e.to_string()))?;
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let device_auth_id = text(&json["device_auth_id"])
            .ok_or_else(|| IssuerError::BadResponse("no device_auth_id".into()))?;
        let user_code = text(&json["user_code"])
            .or_else(|| text(&json["usercode"]))
            .ok_or_else(|| IssuerError::BadResponse("no user_code".into()))?;
        // The interval comes as a string ("5"); accept a number too.
        let interval = json["interval"]
            .as_str()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .or_else(|| json["interval"].as_u64())
            .unwrap_or(5)
            .clamp(1, 60);
        Ok(DeviceCode {
            device_auth_id,
            user_code,
            interval: Duration::from_secs(interval),
        })
    }

    /// Polls the device-code flow once: `None` while the user has not approved yet.
    pub async fn device_poll(&self, code: &DeviceCode) -> Result<Option<DeviceGrant>, IssuerError> {
        let payload = json!({ "device_auth_id": code.device_auth_id, "user_code": code.user_code })
            .to_string();
        match self
            .post(
                "/api/accounts/deviceauth/token",
                "application/json",
                payload.as_bytes(),
            )
            .await
        {
            Ok(body) => parse(&body).map(Some),
            Err(IssuerError::Refused { status, .. })
                if status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND =>
            {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    async fn post(
        &self,
        path: &str,
        content_type: &'static str,
        body: &[u8],
    ) -> Result<Bytes, IssuerError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |detail: String| IssuerError::Unreachable {
            url: url.clone(),
            detail,
        };
        let request = Request::post(&url)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| unreachable(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(crate::upstream::ErrorChain(&e).to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), 1 << 20)
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, IssuerError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {}s", self.timeout.as_secs())))??;
        if status.is_success() {
            return Ok(body);
        }
        let (code, message) = error_fields(&body);
        Err(IssuerError::Refused {
            status,
            code,
            message,
        })
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, IssuerError> {
    serde_json::from_slice(body).map_err(|e| {
        IssuerError::BadResponse(format!("{} at column {}", e.classify_name(), e.column()))
    })
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Data => "JSON of the wrong shape",
            _ => "not JSON",
        }
    }
}

/// The error code and message from an error body, in either of the shapes issuers use:
/// `{"error":{"code","message"}}` or `{"error":"code","error_description":"..."}`. Nothing else
/// from the body is kept (it is never logged whole).
fn error_fields(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let error = &json["error"];
    let code = text(&error["code"])
        .or_else(|| text(error))
        .or_else(|| text(&error["type"]))
        .or_else(|| text(&json["code"]));
    let message = text(&error["message"]).or_else(|| text(&json["error_description"]));
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_found_in_both_shapes() {
        let nested = br#"{"error":{"code":"refresh_token_reused","message":"used"}}"#;
        assert_eq!(
            error_fields(nested).0.as_deref(),
            Some("refresh_token_reused")
        );
        let flat = br#"{"error":"invalid_grant","error_description":"bad"}"#;
        assert_eq!(
            error_fields(flat),
            (Some("invalid_grant".into()), Some("bad".into()))
        );
        assert_eq!(error_fields(b"<html>"), (None, None));
    }

    #[test]
    fn only_the_listed_codes_are_permanent() {
        let refused = |code: &str| IssuerError::Refused {
            status: StatusCode::BAD_REQUEST,
            code: Some(code.into()),
            message: None,
        };
        for code in PERMANENT_REFRESH_ERRORS {
            assert!(refused(code).is_permanent());
        }
        assert!(!refused("temporarily_unavailable").is_permanent());
        assert!(
            !IssuerError::Unreachable {
                url: String::new(),
                detail: String::new()
            }
            .is_permanent()
        );
    }
}
