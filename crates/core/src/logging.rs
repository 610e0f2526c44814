//! Diagnostics of n0m1's own processes: tracing to stderr (which managers and boot send to
//! their `.err` files), level from `RUST_LOG`, `info` by default.

use tracing_subscriber::EnvFilter;

pub fn init(process_name: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    tracing::debug!(process_name, "logging initialised");
}
