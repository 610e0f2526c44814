//! The command line shared by the three manager binaries, which differ only in affinity.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::manager::{Manager, ManagerOptions};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Supervise the autorun_components rows of one manager affinity"
)]
struct ManagerArgs {
    #[command(flatten)]
    home: n0m1_core::home::HomeArg,
    /// How often to check the database for changes, in milliseconds.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    watch_interval_ms: u64,
}

fn run(manager: &str, args: ManagerArgs) -> anyhow::Result<()> {
    let home = args.home.resolve()?;
    let bin_dir = n0m1_core::process::own_bin_dir()
        .with_context(|| format!("cannot find the folder of the {manager} executable"))?;
    Manager::run(ManagerOptions {
        home,
        manager: manager.to_owned(),
        bin_dir,
        watch_interval: Duration::from_millis(args.watch_interval_ms),
    })
    .with_context(|| format!("{manager} stopped with an error"))
}

/// `main` of `daemon_manager`, `nano_manager` and `main_llm_manager`.
pub fn manager_main(manager: &str) -> ExitCode {
    n0m1_core::logging::init(manager, "info");
    let args = ManagerArgs::parse_from(std::env::args_os());
    n0m1_core::exit_code(run(manager, args))
}
