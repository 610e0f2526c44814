//! n0m1-protocol: the components that talk through the LLM tables — `config_daemon`,
//! `command_daemon`, and (behind the `Generator` trait, so this crate never compiles candle)
//! the processor and nano instance loops. `tables` guards every table name that comes from
//! data.

pub mod cli;
pub mod command_daemon;
pub mod config_daemon;
pub mod generator;
pub mod nano;
pub mod processor;
pub mod runtime;
pub mod tables;
