//! Diagnostics of n0m1's own processes: tracing to stderr (which managers and boot send to
//! their `.err` files), level from `RUST_LOG`, else `default_level` (`info` for daemons,
//! `warn` for commands a person runs, whose stderr is for problems only).

use tracing_subscriber::EnvFilter;

pub fn init(process_name: &str, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    tracing::debug!(process_name, "logging initialised");
}
