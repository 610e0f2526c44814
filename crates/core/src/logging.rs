//! Diagnostics of n0m1's own processes: tracing to stderr (which managers and boot send to
//! their `.err` files), level from `RUST_LOG`, else `default_level` (`info` for daemons,
//! `warn` for commands a person runs, whose stderr is for problems only).

use std::str::FromStr;

use tracing_subscriber::filter::LevelFilter;

/// `RUST_LOG` is read as a single level (`debug`, `warn`, …): a full env-filter would pull a
/// regex engine into every resident supervisor, and its pages into their RSS, for no use here.
pub fn init(process_name: &str, default_level: &str) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|value| LevelFilter::from_str(value.trim()).ok())
        .or_else(|| LevelFilter::from_str(default_level).ok())
        .unwrap_or(LevelFilter::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        // On a full disk a failed log write would be reported with eprintln!, which panics
        // when stderr itself cannot be written: a log line must never kill a daemon.
        .log_internal_errors(false)
        .try_init();
    tracing::debug!(process_name, "logging initialised");
}
