//! The device-code flow, for a headless server: the user opens an address on any device and
//! enters a code; keyward polls the issuer until the sign-in is done.

use std::io::Write;
use std::time::Duration;

use http::StatusCode;

use crate::credential::chatgpt::issuer::{Issuer, IssuerError};
use crate::credential::chatgpt::login::{FlowError, human, login_from};
use crate::credential::chatgpt::record::Login;

/// Runs the device-code flow to a login, polling at the issuer's interval for up to `timeout`.
pub async fn device(
    issuer: &Issuer,
    timeout: Duration,
    out: &mut (dyn Write + Send),
) -> Result<Login, FlowError> {
    let code = match issuer.device_code().await {
        Err(IssuerError::Refused { status, .. }) if status == StatusCode::NOT_FOUND => {
            return Err(FlowError::DeviceNotEnabled);
        }
        other => other?,
    };
    let _ = writeln!(
        out,
        "To sign in, open this address on any device:\n\n  {}/codex/device\n\nand enter the code:\n\n  {}\n\n\
         (The code expires in {}. Waiting...)",
        issuer.base(),
        code.user_code,
        human(&timeout)
    );
    let _ = out.flush();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::time::sleep(code.interval).await;
        if tokio::time::Instant::now() >= deadline {
            return Err(FlowError::TimedOut(timeout));
        }
        if let Some(grant) = issuer.device_poll(&code).await? {
            let redirect_uri = format!("{}/deviceauth/callback", issuer.base());
            let tokens = issuer
                .exchange_code(
                    &grant.authorization_code,
                    &redirect_uri,
                    &grant.code_verifier,
                )
                .await?;
            return Ok(login_from(tokens)?);
        }
    }
}
