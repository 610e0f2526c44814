//! `boot_system`: starts the managers and keeps the critical ones alive. Runs in the
//! foreground (for systemd); `n0m1ctl start` runs it in the background.

use std::process::ExitCode;

use anyhow::Context;
use n0m1_core::resident_args::{self, Usage};

const USAGE: Usage = Usage {
    name: "boot_system",
    about: "Start the n0m1 managers and keep them alive",
    options: &[],
};

fn run(home: n0m1_core::home::HomeArg) -> anyhow::Result<()> {
    let home = home.resolve()?;
    let bin_dir = n0m1_core::process::own_bin_dir()
        .context("cannot find the folder of the boot_system executable")?;
    n0m1_supervisor::Boot::run(n0m1_supervisor::BootOptions { home, bin_dir })?;
    Ok(())
}

fn main() -> ExitCode {
    n0m1_core::logging::init("boot_system", "info");
    match resident_args::parse(&USAGE, std::env::args_os().skip(1), |_, _| Ok(false)) {
        Ok(home) => n0m1_core::exit_code(run(home)),
        Err(code) => code,
    }
}
