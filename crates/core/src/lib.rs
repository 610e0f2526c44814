//! n0m1-core: what every n0m1 binary shares (the original's `manager_utils`).
//!
//! The facts every binary must agree on, each in one place: table names (`schema`), the
//! default rows (`defaults`), event types (`lifecycle`), env variables and paths (`home`),
//! the configuration (`config`), the three metrics (`metric`), the model service's socket and
//! settings. And the mechanisms they share: the database, the runtime and its writer, PID
//! files, process inspection and the one door for spawning, sd_notify, log pipes. Each
//! supervision table has its one owner here (`components`, `state`, `health`,
//! `dependencies`, `resources`). It makes no supervision decision (n0m1-supervisor's
//! `machine` does) and runs no model (n0m1-llm and the model service do).

pub mod access_log;
pub mod actions;
pub mod alert_rules;
pub mod cgroup;
pub mod components;
pub mod config;
pub mod db;
pub mod defaults;
pub mod dependencies;
pub mod disk_report;
pub mod health;
pub mod home;
pub mod incidents;
pub mod lifecycle;
pub mod limits;
pub mod logging;
pub mod logpipe;
pub mod metric;
pub mod notify;
pub mod pidfile;
pub mod process;
pub mod resident_args;
pub mod resources;
pub mod runtime;
pub mod schedules;
pub mod schema;
pub mod stack;
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
