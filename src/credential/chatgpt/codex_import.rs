//! `keyward login --import-codex`: a login taken over from a Codex CLI's `auth.json`.

use std::path::{Path, PathBuf};

use crate::credential::chatgpt::login::FlowError;
use crate::credential::chatgpt::record::Login;
use crate::secret::SecretString;

/// Where a Codex CLI keeps its login: `PATH` (a file, or a directory holding `auth.json`), else
/// `$CODEX_HOME/auth.json`, else `~/.codex/auth.json`.
pub fn codex_auth_path(given: Option<&Path>) -> Option<PathBuf> {
    let base = match given {
        Some(path) => path.to_owned(),
        None => match std::env::var_os("CODEX_HOME").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".codex"),
        },
    };
    Some(if base.is_dir() {
        base.join("auth.json")
    } else {
        base
    })
}

/// Reads a Codex CLI `auth.json` into a login.
pub fn import_codex(path: &Path) -> Result<Login, FlowError> {
    let bad = |what: String| FlowError::Import(format!("{}: {what}", path.display()));
    let text =
        zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?);
    #[derive(serde::Deserialize)]
    struct CodexAuth {
        tokens: Option<CodexTokens>,
    }
    #[derive(serde::Deserialize)]
    struct CodexTokens {
        id_token: SecretString,
        access_token: SecretString,
        refresh_token: SecretString,
        account_id: Option<String>,
    }
    let auth: CodexAuth = serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "not a Codex auth.json (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let tokens = auth
        .tokens
        .ok_or_else(|| bad("holds no ChatGPT login (it may be an API-key login)".into()))?;
    Login::from_tokens_or_account(
        tokens.id_token,
        tokens.access_token,
        tokens.refresh_token,
        tokens.account_id,
    )
    .map_err(|err| bad(err.to_string()))
}
