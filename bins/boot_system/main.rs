//! `boot_system`: starts the managers and keeps the critical ones alive. Runs in the
//! foreground (for systemd); `n0m1ctl start` runs it in the background.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "boot_system",
    version,
    about = "Start the n0m1 managers and keep them alive"
)]
struct Args {
    #[command(flatten)]
    home: n0m1_core::home::HomeArg,
}

fn run(args: Args) -> anyhow::Result<()> {
    let home = args.home.resolve()?;
    let bin_dir = n0m1_core::process::own_bin_dir()
        .context("cannot find the folder of the boot_system executable")?;
    n0m1_supervisor::Boot::run(n0m1_supervisor::BootOptions { home, bin_dir })?;
    Ok(())
}

fn main() -> ExitCode {
    n0m1_core::logging::init("boot_system", "info");
    n0m1_core::exit_code(run(Args::parse()))
}
