use std::process::ExitCode;

use clap::Parser;
use keyward::cli::Cli;

fn main() -> ExitCode {
    // First, before arguments are parsed or any thread exists: no core dumps, no ptrace.
    let hardening = keyward::hardening::harden_process();
    let args = Cli::parse().into_serve();
    keyward::log::init(args.log_format);
    for failure in &hardening.failures {
        tracing::warn!("{failure}");
    }
    match &hardening.memory {
        keyward::hardening::MemoryLock::All => {
            tracing::info!(
                "all of keyward's memory is locked: no copy of the credential can reach swap"
            )
        }
        keyward::hardening::MemoryLock::SecretOnly(why) => {
            tracing::warn!(
                "only the credential's own buffer is locked in memory; copies in HTTP buffers could reach swap: {why}"
            )
        }
    }

    if hardening
        .removed_env
        .iter()
        .any(|name| name == "OPENAI_API_KEY")
    {
        tracing::warn!(
            "OPENAI_API_KEY was set in keyward's environment; it was removed and is not used. Start keyward with `env -u OPENAI_API_KEY` and pass the key on stdin"
        );
    }
    let proxy_in_argv = std::env::args().any(|arg| arg.starts_with("--upstream-proxy"));
    if proxy_in_argv
        && args
            .upstream_proxy
            .as_deref()
            .is_some_and(|url| url.contains('@'))
    {
        tracing::warn!(
            "--upstream-proxy carries credentials on the command line, where every local user can read them; set KEYWARD_UPSTREAM_PROXY instead"
        );
    }
    match keyward::serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("keyward: {err:#}");
            ExitCode::FAILURE
        }
    }
}
