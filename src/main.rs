use std::process::ExitCode;

use clap::Parser;
use keyward::config::args::{Cli, Command, LogFormat};
use keyward::secret::hardening::MemoryLock;
use keyward::telemetry::log_writer::DEFAULT_MAX_PENDING;

const DEFAULT_LOG_BUFFER: u64 = DEFAULT_MAX_PENDING as u64;

fn main() -> ExitCode {
    // First, before arguments are parsed or any thread exists: no core dumps, no ptrace.
    let hardening = keyward::secret::hardening::harden_process();
    let command = Cli::parse().into_command();
    // With --config, serve runs with the file's settings followed by the command line's.
    let (command, config_source) = match command {
        Command::Serve(args) if args.config.is_some() => {
            let source = keyward::config::file::ConfigSource {
                path: args.config.clone().unwrap_or_default(),
                argv: std::env::args_os().collect(),
            };
            match source.serve_args() {
                Ok(args) => (Command::Serve(Box::new(args)), Some(source)),
                Err(err) => {
                    eprintln!("keyward: {err}");
                    return ExitCode::FAILURE;
                }
            }
        }
        other => (other, None),
    };
    let (log_format, log_buffer) = match &command {
        Command::Serve(args) => (args.log_format, args.log_buffer),
        _ => (LogFormat::Text, DEFAULT_LOG_BUFFER),
    };
    let _log = match keyward::telemetry::log::init(log_format, log_buffer) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("keyward: could not start the log writer thread: {err}");
            return ExitCode::FAILURE;
        }
    };
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

    let outcome = match &command {
        Command::Serve(args) => {
            // Said once keyward serves: a start that fails says only why.
            let started = || match &hardening.memory {
                MemoryLock::All => tracing::info!(
                    "all of keyward's memory is locked: no copy of the credential can reach swap"
                ),
                MemoryLock::SecretOnly(why) => tracing::warn!(
                    "only the credential's own buffer is locked in memory; copies in HTTP buffers could reach swap: {why}"
                ),
            };
            let started = || {
                started();
                tracing::info!(
                    open_files = hardening.open_files,
                    max_streams = hardening.open_files.saturating_sub(64) / 2,
                    "open-file limit raised to its ceiling; each stream holds two sockets"
                );
            };
            let proxy_in_argv = std::env::args().any(|arg| arg.starts_with("--upstream-proxy"));
            if proxy_in_argv
                && args
                    .net
                    .upstream_proxy
                    .as_deref()
                    .is_some_and(|url| url.contains('@'))
            {
                tracing::warn!(
                    "--upstream-proxy carries credentials on the command line, where every local user can read them; set KEYWARD_UPSTREAM_PROXY instead"
                );
            }
            keyward::cli::serve(args, config_source.clone(), started).map(|()| true)
        }
        Command::Login(args) => keyward::cli::commands::login(args).map(|()| true),
        Command::Status(args) => keyward::cli::commands::status(args),
        Command::Logout(args) => keyward::cli::commands::logout(args).map(|()| true),
        Command::Token(args) => keyward::cli::operations::token(args).map(|()| true),
        Command::Usage(args) => keyward::cli::operations::usage(args).map(|()| true),
        Command::State(args) => keyward::cli::state::state(args).map(|()| true),
        Command::CheckConfig { file } => {
            keyward::cli::operations::check_config(file).map(|()| true)
        }
        Command::Completions { shell } => {
            keyward::cli::operations::completions(*shell).map(|()| true)
        }
        Command::CodexConfig(args) => keyward::cli::codex_config::codex_config(args).map(|()| true),
        Command::Man => keyward::cli::operations::man().map(|()| true),
    };
    // Write out buffered log lines before anything printed below.
    drop(_log);
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("keyward: {}", said_once(&err));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes in one line, each said once: a cause an error already quotes in its
/// own message is not repeated after it.
fn said_once(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
