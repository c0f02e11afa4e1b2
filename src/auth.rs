//! The ChatGPT sign-in: where the login lives, how it is obtained, and how it is kept fresh.

pub mod home;
pub mod issuer;
pub mod jwt;
pub mod login;
pub mod pkce;
pub mod record;
pub mod store;
pub mod tokens;

/// The public OAuth client of the Codex CLI, which the ChatGPT sign-in is issued to.
pub const CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
pub const DEFAULT_ISSUER: &str = "https://auth.openai.com";
