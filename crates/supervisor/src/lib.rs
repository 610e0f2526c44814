//! n0m1-supervisor: the generic component manager and boot.
//!
//! `machine` is the supervision policy as a pure state machine; `Manager` is the executor that
//! runs it for the `autorun_components` rows of one affinity; `Boot` starts the managers and
//! keeps the critical ones alive. Both are child subreapers that reap through `reaper`, run on
//! `n0m1_core::runtime` and write to the database only through `n0m1_core::writer`.

pub mod boot;
pub mod cli;
pub mod launch;
pub mod machine;
pub mod manager;
pub mod reaper;

pub use boot::{Boot, BootOptions};
pub use manager::{Manager, ManagerOptions};
