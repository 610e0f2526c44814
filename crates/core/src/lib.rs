//! n0m1-core: what every n0m1 binary shares (the original's `manager_utils`).
//!
//! Paths, the database and its schema, PID files, the lifecycle log, the access log, config
//! and process inspection. It knows nothing about supervision policy or models.

pub mod access_log;
pub mod components;
pub mod config;
pub mod db;
pub mod dependencies;
pub mod health;
pub mod home;
pub mod lifecycle;
pub mod logging;
pub mod logpipe;
pub mod notify;
pub mod pidfile;
pub mod process;
pub mod resources;
pub mod runtime;
pub mod schema;
pub mod state;
pub mod text;
pub mod writer;

pub use config::Config;
pub use home::Home;
pub use lifecycle::{LifecycleEvent, LifecycleRecord};
pub use pidfile::{PidFile, PidStatus};

/// The end of every binary's `main`: success, or the error and its causes printed once
/// (`text::error_chain`) and exit code 1.
pub fn exit_code<E: AsRef<dyn std::error::Error>>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", text::error_chain(error.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
