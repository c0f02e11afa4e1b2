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
    if hardening
        .removed_env
        .iter()
        .any(|name| name == "OPENAI_API_KEY")
    {
        tracing::warn!(
            "OPENAI_API_KEY was set in keyward's environment; it was removed and is not used. Start keyward with `env -u OPENAI_API_KEY` and pass the key on stdin"
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
