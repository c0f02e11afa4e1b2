//! keyward: a credential-isolating proxy for the OpenAI Responses API.
//!
//! A privileged user runs keyward with the credential; local users and tools send their
//! Responses requests to it on loopback, and keyward forwards them with the credential added.

pub mod api_key;
pub mod body;
pub mod cli;
pub mod config;
pub mod dump;
pub mod error;
pub mod forward;
pub mod hardening;
pub mod headers;
pub mod log;
pub mod secret;
pub mod server;
pub mod upstream;

use anyhow::Context;

use crate::cli::ServeArgs;
use crate::config::Config;

/// `keyward serve`: read the key, listen, forward until told to stop.
pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = Config::from_args(args)?;
    // The key is read before any thread or socket exists, so a missing key fails fast.
    let credential = api_key::load(&config.key_source, config.auth_header)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(async {
        let running = server::start(&config, credential).await?;
        let shutdown = running.shutdown_sender();
        tokio::spawn(async move {
            let signal = wait_for_signal().await;
            tracing::info!(signal, "shutting down on signal");
            shutdown.send_replace(true);
        });
        running.wait().await;
        Ok(())
    })
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!(
            "could not install signal handlers; use --http-shutdown or SIGKILL to stop keyward"
        );
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
