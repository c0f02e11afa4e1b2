//! Logging: the subscriber and its batching writer. The one line written for each request is
//! [`crate::telemetry::account`]'s.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::args::LogFormat;
use crate::telemetry::log_writer::{self, FlushGuard};

/// Installs the stderr logger. The level comes from `RUST_LOG`, `info` by default.
///
/// Lines are written by a background thread in batches ([`crate::telemetry::log_writer`]): requests never
/// wait on stderr, a busy keyward writes many lines per syscall, and a quiet one shows each line
/// within 50 ms. Past `buffer` bytes waiting (stderr stalled), lines are dropped and counted. Keep
/// the returned guard until the process ends: dropping it
/// writes out what is left.
pub fn init(format: LogFormat, buffer: u64) -> std::io::Result<FlushGuard> {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The WebSocket library logs whole handshake requests at trace, the upstream's credential
    // among them: it never logs below info, whatever RUST_LOG says.
    for quiet in ["tungstenite=info", "tokio_tungstenite=info"] {
        if let Ok(directive) = quiet.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let (writer, guard) = log_writer::spawn(
        std::io::stderr(),
        usize::try_from(buffer).unwrap_or(usize::MAX),
    )?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .fmt_fields(crate::telemetry::log_format::Fields)
            .with_timer(crate::telemetry::log_format::Time)
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    Ok(guard)
}
