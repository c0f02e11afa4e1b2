//! The server: listeners, worker threads, graceful shutdown and SIGHUP reload, and the TLS they
//! serve with. It accepts connections and hands each request to [`crate::proxy`]; it may use
//! every layer below it, and nothing but `cli` uses it.

mod caps;
mod error;
mod listen;
mod metrics;
mod reload;
mod start;
pub mod systemd;
pub mod tls;
mod usage_page;
mod worker;

pub use listen::{SocketFile, write_server_info};
pub use reload::Reloader;
pub use start::{Running, ServeError, start};
