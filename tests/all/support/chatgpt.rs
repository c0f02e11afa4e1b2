//! A fake OAuth issuer and a fake Codex backend, as strict as the real ones where it matters:
//! refresh tokens are single-use (a second use fails with `refresh_token_reused` and is
//! counted), and the backend accepts only access tokens the issuer currently considers valid.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use serde_json::{Value, json};

use super::responses::{response_events, response_object};
use super::upstream::{self, FakeUpstream, Seen};

pub const ACCOUNT: &str = "acct_test_123";
pub const EMAIL: &str = "user@example.com";

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An unsigned JWT with `payload`.
pub fn jwt(payload: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    format!(
        "{header}.{}.sig",
        URL_SAFE_NO_PAD.encode(payload.to_string())
    )
}

#[derive(Default)]
pub struct IssuerState {
    serial: u64,
    /// Refresh tokens that may still be used, and those already used.
    live_refresh: HashSet<String>,
    spent_refresh: HashSet<String>,
    /// Access tokens the backend accepts.
    pub live_access: HashSet<String>,
    /// Authorization codes waiting for their PKCE verifier: code -> challenge.
    codes: HashMap<String, String>,
    /// Refresh-token uses, in order, and how many were reuses.
    pub refreshes: Vec<String>,
    pub reuses: usize,
    pub revoked: Vec<String>,
    /// When set, every refresh fails with this error code (400).
    pub fail_refresh_with: Option<String>,
    /// How long new access tokens live, in seconds (negative: already expired).
    pub access_ttl: i64,
    /// Device flow: whether it is enabled, and how many polls stay pending.
    pub device_disabled: bool,
    pub device_pending: usize,
    /// Delay before answering a refresh, to widen races.
    pub refresh_delay: Duration,
    /// Whether minted tokens belong to a FedRAMP account.
    pub fedramp: bool,
    /// When set, the plan is spent: the backend answers 429 `usage_limit_reached`, resetting in
    /// this many seconds, as the real one does at its limit.
    pub plan_spent_for: Option<i64>,
}

pub struct FakeIssuer {
    pub server: FakeUpstream,
    pub state: Arc<Mutex<IssuerState>>,
}

/// Tokens as the token endpoint returns them.
pub struct Minted {
    pub id_token: String,
    pub access_token: String,
    pub refresh_token: String,
}

impl IssuerState {
    fn mint(&mut self) -> Minted {
        self.serial += 1;
        let n = self.serial;
        let auth = json!({
            "chatgpt_account_id": ACCOUNT, "chatgpt_plan_type": "plus", "chatgpt_account_is_fedramp": self.fedramp
        });
        let access_token = jwt(&json!({
            "exp": now() + self.access_ttl, "jti": format!("at-{n}"), "https://api.openai.com/auth": auth
        }));
        let id_token = jwt(
            &json!({ "email": EMAIL, "exp": now() + 3600, "https://api.openai.com/auth": auth }),
        );
        let refresh_token = format!("rt-{n}-{}", "x".repeat(20));
        self.live_refresh.insert(refresh_token.clone());
        self.live_access.insert(access_token.clone());
        Minted {
            id_token,
            access_token,
            refresh_token,
        }
    }
}

impl FakeIssuer {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(IssuerState {
            access_ttl: 3600,
            ..IssuerState::default()
        }));
        let shared = state.clone();
        let server = FakeUpstream::start(move |seen: Seen| {
            let state = shared.clone();
            async move { answer(&state, seen).await }
        })
        .await;
        Self { server, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Tokens for a login that starts out valid, for seeding a store.
    pub fn mint(&self) -> Minted {
        self.state.lock().unwrap().mint()
    }

    /// A login whose access token expired ten seconds ago (the issuer mints fresh ones after).
    pub fn mint_expired(&self) -> Minted {
        let mut state = self.state.lock().unwrap();
        let ttl = state.access_ttl;
        state.access_ttl = -10;
        let minted = state.mint();
        state.access_ttl = ttl;
        minted
    }

    /// The user approves a browser sign-in: returns the code the issuer redirects with.
    pub fn approve(&self, code_challenge: &str) -> String {
        let mut state = self.state.lock().unwrap();
        state.serial += 1;
        let code = format!("code-{}", state.serial);
        state.codes.insert(code.clone(), code_challenge.to_owned());
        code
    }

    /// Makes the backend refuse this access token (as after a revocation elsewhere).
    pub fn revoke_access(&self, access_token: &str) {
        self.state.lock().unwrap().live_access.remove(access_token);
    }

    pub fn refreshes(&self) -> usize {
        self.state.lock().unwrap().refreshes.len()
    }

    pub fn reuses(&self) -> usize {
        self.state.lock().unwrap().reuses
    }
}

fn token_json(minted: &Minted) -> upstream::Body {
    let body = json!({
        "id_token": minted.id_token, "access_token": minted.access_token,
        "refresh_token": minted.refresh_token, "expires_in": 3600, "token_type": "Bearer"
    });
    upstream::json(StatusCode::OK, &body.to_string()).into_body()
}

fn reply(status: StatusCode, body: Value) -> http::Response<upstream::Body> {
    upstream::json(status, &body.to_string())
}

async fn answer(state: &Mutex<IssuerState>, seen: Seen) -> http::Response<upstream::Body> {
    let path = seen.uri.split('?').next().unwrap_or("").to_owned();
    match path.as_str() {
        "/oauth/token" => {
            let form: HashMap<String, String> = url::form_urlencoded::parse(&seen.body)
                .into_owned()
                .collect();
            let json: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
            if form.get("grant_type").map(String::as_str) == Some("authorization_code") {
                let mut state = state.lock().unwrap();
                let code = form.get("code").cloned().unwrap_or_default();
                let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
                    &ring::digest::SHA256,
                    verifier.as_bytes(),
                ));
                return match state.codes.remove(&code) {
                    Some(expected) if expected == challenge => {
                        let minted = state.mint();
                        http::Response::new(token_json(&minted))
                    }
                    _ => reply(
                        StatusCode::BAD_REQUEST,
                        json!({"error": "invalid_grant", "error_description": "bad code or verifier"}),
                    ),
                };
            }
            if json["grant_type"] == "refresh_token" {
                let delay = state.lock().unwrap().refresh_delay;
                tokio::time::sleep(delay).await;
                let mut state = state.lock().unwrap();
                let token = json["refresh_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                state.refreshes.push(token.clone());
                if let Some(code) = state.fail_refresh_with.clone() {
                    let status = if code == "temporarily_unavailable" {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::BAD_REQUEST
                    };
                    return reply(
                        status,
                        json!({"error": {"code": code, "message": "refused"}}),
                    );
                }
                if state.spent_refresh.contains(&token) {
                    state.reuses += 1;
                    return reply(
                        StatusCode::UNAUTHORIZED,
                        json!({"error": {"code": "refresh_token_reused", "message": "already used"}}),
                    );
                }
                if !state.live_refresh.remove(&token) {
                    return reply(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}));
                }
                state.spent_refresh.insert(token);
                let minted = state.mint();
                return http::Response::new(token_json(&minted));
            }
            reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "unsupported_grant_type"}),
            )
        }
        "/oauth/revoke" => {
            let json: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
            let mut state = state.lock().unwrap();
            if let Some(token) = json["token"].as_str() {
                state.revoked.push(token.to_owned());
                state.live_refresh.remove(token);
            }
            reply(StatusCode::OK, json!({}))
        }
        "/api/accounts/deviceauth/usercode" => {
            let state = state.lock().unwrap();
            if state.device_disabled {
                return reply(StatusCode::NOT_FOUND, json!({"error": "not_found"}));
            }
            reply(
                StatusCode::OK,
                json!({"device_auth_id": "dev-1", "user_code": "ABCD-1234", "interval": "1"}),
            )
        }
        "/api/accounts/deviceauth/token" => {
            let mut state = state.lock().unwrap();
            if state.device_pending > 0 {
                state.device_pending -= 1;
                return reply(
                    StatusCode::FORBIDDEN,
                    json!({"error": "authorization_pending"}),
                );
            }
            let verifier = "server-made-verifier-0123456789-0123456789";
            let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
                &ring::digest::SHA256,
                verifier.as_bytes(),
            ));
            state.serial += 1;
            let code = format!("devcode-{}", state.serial);
            state.codes.insert(code.clone(), challenge.clone());
            reply(
                StatusCode::OK,
                json!({"authorization_code": code, "code_challenge": challenge, "code_verifier": verifier}),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, json!({"error": "no such endpoint"})),
    }
}

/// The Codex backend: answers with a streamed response when the access token is live, 401
/// otherwise. It sends no Content-Type, as the real one sometimes does not.
pub async fn fake_backend(issuer: Arc<Mutex<IssuerState>>) -> FakeUpstream {
    FakeUpstream::start(move |seen: Seen| {
        let issuer = issuer.clone();
        async move {
            let token = seen
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_owned();
            if !issuer.lock().unwrap().live_access.contains(&token) {
                return reply(StatusCode::UNAUTHORIZED, json!({"error": {"message": "token expired or revoked", "code": "token_invalid"}}));
            }
            let spent = issuer.lock().unwrap().plan_spent_for;
            if let Some(seconds) = spent {
                let mut response = reply(StatusCode::TOO_MANY_REQUESTS, json!({"error": {
                    "type": "usage_limit_reached", "message": "The usage limit has been reached",
                    "plan_type": "plus", "resets_at": now() + seconds, "resets_in_seconds": seconds,
                }}));
                for (name, value) in [
                    ("x-codex-primary-used-percent", "100".to_owned()),
                    ("x-codex-primary-window-minutes", "300".to_owned()),
                    ("x-codex-primary-reset-after-seconds", seconds.to_string()),
                ] {
                    response.headers_mut().insert(name, value.parse().unwrap());
                }
                return response;
            }
            // The backend's model list, in Codex's own shape, and compaction.
            if seen.uri.starts_with("/backend-api/codex/models?") {
                return reply(StatusCode::OK, json!({"models": [
                    {"slug": "gpt-5.1-codex", "display_name": "GPT-5.1 Codex", "visibility": "list"},
                    {"slug": "gpt-5.1", "display_name": "GPT-5.1", "visibility": "list"},
                ]}));
            }
            if seen.uri == "/backend-api/codex/responses/compact" {
                return reply(StatusCode::OK, json!({"output": [
                    {"type": "compaction", "encrypted_content": "opaque"}
                ]}));
            }
            let (mut response, tx) = upstream::stream("text/event-stream");
            response.headers_mut().remove("content-type");
            // The plan's usage, as the real backend reports it on every answer.
            for (name, value) in [
                ("x-codex-primary-used-percent", "42.5"),
                ("x-codex-primary-window-minutes", "300"),
                ("x-codex-primary-reset-at", "1795000000"),
                ("x-codex-secondary-used-percent", "7"),
            ] {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            tokio::spawn(async move {
                for event in response_events() {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            });
            response
        }
    })
    .await
}

/// Writes a login for `minted` to the file store in `home` (made 0700), as `keyward login` would.
pub fn seed_login(home: &std::path::Path, minted: &Minted) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(home).unwrap();
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let login = keyward::credential::chatgpt::record::Login::from_tokens(
        minted.id_token.clone().into(),
        minted.access_token.clone().into(),
        minted.refresh_token.clone().into(),
    )
    .unwrap();
    let store = keyward::credential::chatgpt::store::FileStore::new(
        &keyward::credential::chatgpt::home::Home::open(home).unwrap(),
    );
    keyward::credential::chatgpt::store::LoginStore::save(&store, &login).unwrap();
}

/// `response_object` re-exported for assertions on assembled answers.
pub fn completed_response() -> Value {
    response_object("resp_1", "completed", Some(super::responses::TEXT))
}

/// `serve` flags for two credentials: `plan`, the login `login` in `home` at the fake `backend`
/// (signing in at `issuer`), and `key`, the API key in `key_file` sent to `api` (a Responses URL).
pub fn plan_and_key_args(
    home: &std::path::Path,
    issuer: &FakeIssuer,
    backend: std::net::SocketAddr,
    login: &str,
    key_file: &str,
    api: &str,
) -> Vec<String> {
    vec![
        "--home".into(),
        home.to_str().unwrap().into(),
        "--issuer".into(),
        issuer.url(),
        "--credential".into(),
        format!("plan:chatgpt={login},upstream-url=http://{backend}/backend-api/codex/responses"),
        "--credential".into(),
        format!("key:api-key-file={key_file},upstream-url={api}"),
    ]
}
