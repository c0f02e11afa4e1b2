//! `keyward serve`: load the credentials, start the server, and wait for signals (SIGTERM and
//! SIGINT stop it, SIGHUP re-reads the settings).

use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::config::args::ServeArgs;
use crate::config::file::ConfigSource;
use crate::server::systemd::Notify;

/// `keyward serve`: load the credential, listen, forward until told to stop.
/// `started` is called once keyward serves (for what the log says only then).
pub fn serve(
    args: &ServeArgs,
    source: Option<ConfigSource>,
    started: impl FnOnce(),
) -> anyhow::Result<()> {
    let config = Config::from_args(args)?;
    // API keys are read before any thread or socket exists, so a missing key fails fast.
    let pending = crate::cli::credentials::read_keys(&config)?;
    // This runtime only watches for signals and keeps a ChatGPT login fresh; connections are
    // served by the workers `crate::server::start` spawns.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(async {
        let credentials = crate::cli::credentials::open(&config, pending).await?;
        let running = crate::server::start(&config, credentials).await?;
        started();
        // The key is read and the sockets are bound: from here keyward only reads and writes
        // where its configuration says, and runs no program.
        if args.no_sandbox {
            tracing::warn!("keyward runs without its sandbox (--no-sandbox)");
        } else {
            confine(&config);
        }
        let shutdown = running.shutdown_sender();
        tokio::spawn(reload_on_sighup(running.reloader(), source, config.clone()));
        // Under systemd (Type=notify): ready once every listener is up, a watchdog while this
        // runtime runs, stopping when asked to.
        let notify = Notify::from_env().map(Arc::new);
        if let Some(notify) = &notify {
            let listening: Vec<String> = running
                .addrs
                .iter()
                .map(ToString::to_string)
                .chain(
                    running
                        .unix
                        .iter()
                        .map(|f| format!("unix:{}", f.path.display())),
                )
                .collect();
            let status = if listening.is_empty() {
                "the sockets systemd handed over".to_owned()
            } else {
                listening.join(", ")
            };
            notify.send(&format!("READY=1\nSTATUS=serving on {status}"));
            if let Some(interval) = crate::server::systemd::watchdog_interval() {
                let notify = notify.clone();
                tokio::spawn(async move {
                    loop {
                        notify.send("WATCHDOG=1");
                        tokio::time::sleep(interval / 2).await;
                    }
                });
            }
        }
        let mut stopping = shutdown.subscribe();
        tokio::spawn(async move {
            let signal = wait_for_signal().await;
            tracing::info!(signal, "shutting down on signal");
            shutdown.send_replace(true);
        });
        if let Some(notify) = notify {
            tokio::spawn(async move {
                if stopping.wait_for(|&stop| stop).await.is_ok() {
                    notify.send("STOPPING=1\nSTATUS=stopping: finishing the streams in flight");
                }
            });
        }
        running.wait().await;
        Ok(())
    })
}

/// Puts keyward in its sandbox, saying what holds. A kernel without Landlock keeps the system
/// call filter; a sandbox that cannot be installed at all is reported and keyward serves on.
fn confine(config: &Config) {
    use crate::secret::sandbox::{self, Enforced};
    let paths = config.sandbox_paths();
    match sandbox::install(&paths) {
        Ok(installed) => match installed.files {
            Ok(Enforced::Yes(abi)) => tracing::info!(
                landlock_abi = abi,
                read = ?paths.read,
                write = ?paths.write,
                "sandbox on: files only where the configuration says, no programs, no new \
                 privileges; tracing other processes, mounting and loading kernel code are refused"
            ),
            Ok(Enforced::NoLandlock) => tracing::warn!(
                "sandbox on without file rules: this kernel has no Landlock (Linux 5.13 or \
                 later with lsm=landlock); programs, tracing, mounting and kernel code are refused"
            ),
            Err(err) => tracing::warn!(
                error = %err,
                "sandbox on without file rules; programs, tracing, mounting and kernel code are \
                 refused"
            ),
        },
        Err(err) => tracing::warn!(error = %err, "keyward runs without its sandbox"),
    }
}

/// On SIGHUP: re-reads the TLS files and, with --config, the file. An invalid file changes
/// nothing.
async fn reload_on_sighup(
    reloader: crate::server::Reloader,
    source: Option<ConfigSource>,
    mut in_force: Config,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!(
            "could not install the SIGHUP handler; restart keyward to re-read its settings"
        );
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: re-reading the settings");
        if let Some(source) = &source {
            match reread(source) {
                Ok(config) => {
                    reloader.apply(&in_force, &config);
                    tracing::info!(file = %source.path.display(), "configuration re-read");
                    in_force = config;
                }
                Err(err) => tracing::error!(
                    file = %source.path.display(),
                    "the configuration file was refused, the settings in force stay: {err:#}"
                ),
            }
        }
        reloader.reload();
    }
}

fn reread(source: &ConfigSource) -> anyhow::Result<Config> {
    Ok(Config::from_args(&source.serve_args()?)?)
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
