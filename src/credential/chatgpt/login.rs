//! Obtaining a login with the browser flow (authorization code + PKCE, a callback server on
//! loopback); the device-code flow is in [`super::device`], taking over a Codex CLI login in
//! [`super::codex_import`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::credential::chatgpt::CLIENT_ID;
use crate::credential::chatgpt::issuer::{Issuer, IssuerError};
use crate::credential::chatgpt::pkce::{Pkce, RandomUnavailable, random_token};
use crate::credential::chatgpt::record::{Login, LoginError};
use crate::secret::SecretString;

/// The ports registered for the Codex client's redirect URI.
pub const CALLBACK_PORTS: [u16; 2] = [1455, 1457];
pub const CALLBACK_PATH: &str = "/auth/callback";
const SCOPE: &str = "openid profile email offline_access";

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error(
        "ports 1455 and 1457 on 127.0.0.1 are both in use (is another sign-in waiting?); stop it, \
         or pass --callback-port N and forward that port instead"
    )]
    PortsBusy,
    #[error("could not listen for the sign-in callback on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("no sign-in completed within {}; run `keyward login` again", human(.0))]
    TimedOut(Duration),
    #[error("the sign-in service reported an error: {0}")]
    Denied(String),
    #[error("the sign-in could not be completed: {0}")]
    Exchange(#[from] IssuerError),
    #[error("the sign-in service returned tokens keyward cannot use: {0}")]
    Tokens(#[from] LoginError),
    #[error(
        "device-code sign-in is not enabled for this account (the sign-in service answered 404). \
         Enable it in ChatGPT's security settings, or sign in with the browser flow, forwarding \
         port 1455 over SSH (`ssh -L 1455:127.0.0.1:1455 THIS-HOST`)"
    )]
    DeviceNotEnabled,
    #[error(transparent)]
    Random(#[from] RandomUnavailable),
    #[error("{0}")]
    Import(String),
}

pub(crate) fn human(d: &Duration) -> String {
    match d.as_secs() {
        s if s >= 60 && s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

/// How the browser flow runs.
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    /// `None`: 1455, else 1457. `Some(0)`: any free port (tests).
    pub callback_port: Option<u16>,
    pub open_browser: bool,
    pub timeout: Duration,
    pub originator: String,
}

/// The authorization URL the user opens.
pub fn authorize_url(
    issuer: &str,
    redirect_uri: &str,
    pkce: &Pkce,
    state: &SecretString,
    originator: &str,
) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", SCOPE)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("id_token_add_organizations", "true")
        .append_pair("codex_cli_simplified_flow", "true")
        .append_pair("state", state.expose())
        .append_pair("originator", originator)
        .finish();
    format!("{issuer}/oauth/authorize?{query}")
}

/// Runs the browser flow to a login. `out` gets the instructions for the user.
pub async fn browser(
    issuer: &Issuer,
    options: &BrowserOptions,
    out: &mut (dyn Write + Send),
) -> Result<Login, FlowError> {
    let listener = bind_callback(options.callback_port).await?;
    let port = listener.local_addr().map_err(|error| FlowError::Bind {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        error,
    })?;
    let redirect_uri = format!("http://localhost:{}{CALLBACK_PATH}", port.port());
    let pkce = Pkce::new()?;
    let state = random_token(32)?;
    let url = authorize_url(
        issuer.base(),
        &redirect_uri,
        &pkce,
        &state,
        &options.originator,
    );

    let _ = writeln!(
        out,
        "Sign in to ChatGPT by opening this address in a browser:\n\n  {url}\n"
    );
    if options.open_browser && open_in_browser(&url) {
        let _ = writeln!(out, "(Your browser should have opened it.)");
    }
    let _ = writeln!(
        out,
        "Waiting for the sign-in on {redirect_uri} (on another machine: `ssh -L {0}:127.0.0.1:{0} THIS-HOST`, \
         or use `keyward login --device-code`).",
        port.port()
    );
    let _ = out.flush();

    let callback = Arc::new(Callback {
        issuer: issuer.clone(),
        state,
        verifier: pkce.verifier,
        redirect_uri,
        done: Mutex::new(None),
    });
    let (tx, mut rx) = mpsc::channel::<Result<Login, FlowError>>(1);
    *callback.done.lock() = Some(tx);
    let server = tokio::spawn(serve_callback(listener, callback));
    let outcome = tokio::time::timeout(options.timeout, rx.recv()).await;
    server.abort();
    match outcome {
        Err(_) | Ok(None) => Err(FlowError::TimedOut(options.timeout)),
        Ok(Some(result)) => result,
    }
}

async fn bind_callback(port: Option<u16>) -> Result<TcpListener, FlowError> {
    let bind = |port: u16| async move {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        TcpListener::bind(addr)
            .await
            .map_err(|error| FlowError::Bind { addr, error })
    };
    match port {
        Some(port) => bind(port).await,
        None => {
            for port in CALLBACK_PORTS {
                match bind(port).await {
                    Ok(listener) => return Ok(listener),
                    Err(FlowError::Bind { error, .. })
                        if error.kind() == std::io::ErrorKind::AddrInUse =>
                    {
                        continue;
                    }
                    Err(err) => return Err(err),
                }
            }
            Err(FlowError::PortsBusy)
        }
    }
}

fn open_in_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// The state one browser flow waits in.
struct Callback {
    issuer: Issuer,
    state: SecretString,
    verifier: SecretString,
    redirect_uri: String,
    done: Mutex<Option<mpsc::Sender<Result<Login, FlowError>>>>,
}

impl Callback {
    fn finish(&self, result: Result<Login, FlowError>) {
        if let Some(tx) = self.done.lock().take() {
            let _ = tx.try_send(result);
        }
    }

    /// Answers one request to the callback listener. Only a request on the callback path with
    /// the right `state` gets its code exchanged; anything else is refused and the wait goes on,
    /// except an `error=` from the issuer, which ends the sign-in.
    async fn handle(&self, req: &Request<Incoming>) -> (StatusCode, String) {
        if req.uri().path() != CALLBACK_PATH {
            return (
                StatusCode::NOT_FOUND,
                page(
                    "Not found",
                    "This is keyward's sign-in callback; nothing else is here.",
                ),
            );
        }
        let params: HashMap<String, String> = req
            .uri()
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        let state_ok = params
            .get("state")
            .is_some_and(|s| s.as_bytes() == self.state.expose().as_bytes());
        if !state_ok {
            return (
                StatusCode::BAD_REQUEST,
                page(
                    "Sign-in link mismatch",
                    "This answer does not belong to the sign-in keyward is waiting for (its state differs). \
                     Use the address keyward printed, from the same run.",
                ),
            );
        }
        if let Some(error) = params.get("error") {
            let detail = match params.get("error_description") {
                Some(description) => format!("{error}: {description}"),
                None => error.clone(),
            };
            self.finish(Err(FlowError::Denied(detail.clone())));
            return (
                StatusCode::BAD_REQUEST,
                page(
                    "Sign-in failed",
                    &format!("The sign-in service said: {detail}"),
                ),
            );
        }
        let Some(code) = params.get("code").filter(|c| !c.is_empty()) else {
            return (
                StatusCode::BAD_REQUEST,
                page(
                    "Sign-in incomplete",
                    "The answer carries no authorization code.",
                ),
            );
        };
        let code = SecretString::new(code.clone());
        let result = match self
            .issuer
            .exchange_code(&code, &self.redirect_uri, &self.verifier)
            .await
        {
            Ok(tokens) => login_from(tokens).map_err(FlowError::from),
            Err(err) => Err(FlowError::from(err)),
        };
        let answer = match &result {
            Ok(login) => (
                StatusCode::OK,
                page(
                    "Signed in",
                    &format!(
                        "keyward is signed in as {}. You can close this window.",
                        login.email.as_deref().unwrap_or(&login.account_id)
                    ),
                ),
            ),
            Err(err) => (
                StatusCode::BAD_GATEWAY,
                page("Sign-in failed", &err.to_string()),
            ),
        };
        self.finish(result);
        answer
    }
}

async fn serve_callback(listener: TcpListener, callback: Arc<Callback>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let callback = callback.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let callback = callback.clone();
                async move {
                    let (status, html) = callback.handle(&req).await;
                    let mut response = Response::new(Full::new(Bytes::from(html)));
                    *response.status_mut() = status;
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/html; charset=utf-8"),
                    );
                    response.headers_mut().insert(
                        header::CACHE_CONTROL,
                        http::HeaderValue::from_static("no-store"),
                    );
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn page(title: &str, text: &str) -> String {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>keyward: {0}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\"><h1>{0}</h1><p>{1}</p></body></html>",
        escape(title),
        escape(text)
    )
}

pub(crate) fn login_from(
    tokens: crate::credential::chatgpt::issuer::TokenResponse,
) -> Result<Login, LoginError> {
    let missing = |which: &'static str| {
        LoginError::Jwt(crate::credential::chatgpt::jwt::JwtError::Shape { which })
    };
    Login::from_tokens(
        tokens.id_token.ok_or_else(|| missing("ID token"))?,
        tokens.access_token.ok_or_else(|| missing("access token"))?,
        tokens
            .refresh_token
            .ok_or_else(|| missing("refresh token"))?,
    )
}
