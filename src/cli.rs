//! The subcommands as a user runs them: `serve` (the credential loaded, the server started,
//! signals watched) and the one-shot commands (`login`, `status`, `logout`, `token`, `usage`,
//! `check-config`, `state`) with what they print and how they exit. The top layer: it may use every other,
//! and none uses it.

pub mod codex_config;
pub mod commands;
pub mod credentials;
pub mod operations;
mod serve;
pub mod state;

pub use credentials::chatgpt_credential;
pub use serve::serve;
