//! n0m1-supervisor: the generic component manager and boot.
//!
//! `Manager` reconciles `autorun_components` rows of one affinity with live processes;
//! `Boot` starts the managers and keeps the critical ones alive. Both are child subreapers
//! that reap on SIGCHLD, and both write to the database only through `Journal`.

pub mod boot;
pub mod cli;
pub mod events;
pub mod journal;
pub mod launch;
pub mod manager;

pub use boot::{Boot, BootOptions};
pub use manager::{Manager, ManagerOptions};
