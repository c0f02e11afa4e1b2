//! The ChatGPT sign-in: where the login lives (home, stores), how it is obtained (login, issuer
//! client, PKCE) and how it is kept fresh (the token manager, which holds the refresh lock).

pub mod codex_import;
pub mod device;
pub mod home;
pub mod issuer;
pub mod jwt;
pub mod login;
pub mod pkce;
pub mod plan;
pub mod record;
pub mod refresh_lock;
pub mod store;
pub mod tokens;

/// The public OAuth client of the Codex CLI, which the ChatGPT sign-in is issued to.
pub const CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
